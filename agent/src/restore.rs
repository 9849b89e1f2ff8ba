//! Restore of a snapshot into a directory.
//!
//! The plan: every blob the snapshot needs, and every place it goes. Blobs are fetched pack by
//! pack, nearby blobs of one pack coalesced into one ranged read, by several workers at once;
//! each blob is verified against its id and written with positioned writes, so one huge file is
//! restored by every worker in parallel. Runs of zeros are never written: files are sized first,
//! so they stay holes.
//!
//! An incremental restore first looks at what the target holds: every chunk found there, at any
//! offset of any file, is copied locally instead of downloaded. Files are patched in place when
//! that cannot clobber data some other file still needs, else written to a temp file renamed at
//! the end.
//!
//! Nothing is written outside the target: names are single path components (`..`, `/` and empty
//! names are refused), files are opened with `O_NOFOLLOW`, and a symlink found where the
//! snapshot has a directory is replaced, never followed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tracing::warn;

use crate::backend::Kind;
use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::progress::{ProgressEvent, ProgressSink, Tracker};
use crate::repository::Repository;
use crate::tree::{Extent, Node, NodeKind, Tree};
use crate::util::available_cores;

#[derive(Clone, Default)]
pub struct RestoreOptions {
    /// Reuse what the target already holds; download only what is missing.
    pub incremental: bool,
    /// Remove what the target holds that the snapshot does not.
    pub delete: bool,
    pub workers: Option<usize>,
    pub progress: Option<Arc<dyn ProgressSink>>,
    /// Set to stop the restore between its steps (scanning the target, copying what it holds,
    /// downloading); it ends with [`Error::Cancelled`], leaving the target partly restored.
    pub cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RestoreSummary {
    pub files_restored: u64,
    pub dirs: u64,
    pub bytes_written: u64,
    pub bytes_downloaded: u64,
    /// File content already in the target (in place, or copied from elsewhere in it).
    pub bytes_reused: u64,
    pub files_unchanged: u64,
    pub files_deleted: u64,
    pub errors: u64,
    /// Files whose content could not be restored (damaged or missing blobs), relative to the target.
    pub damaged_files: Vec<String>,
}

/// A merge of nearby blobs of one pack into one ranged read never spans a gap larger than this,
/// nor grows beyond [`MAX_READ`].
const MAX_GAP: u64 = 256 * 1024;
const MAX_READ: u64 = 4 * 1024 * 1024;

pub fn restore(
    repo: &Arc<Repository>,
    snapshot: &str,
    target: &Path,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    let (_, snapshot) = repo.find_snapshot(snapshot)?;
    restore_tree(repo, &snapshot.tree, target, options)
}

/// Offset, length, and for a blob its id and whether the target already holds it at that offset.
type PlannedExtent = (u64, u64, Option<(Id, bool)>);

/// A regular file to write.
struct FilePlan {
    rel: PathBuf,
    node: Node,
    /// Where the data goes while being written: the final path, or a temp file renamed at the end.
    write_path: PathBuf,
    in_place: bool,
    /// Offsets of the written (not already in place) ranges, for in-place files.
    written: Vec<(u64, u64)>,
    holes: Vec<(u64, u64)>,
    /// Every extent of the file. Empty for unchanged and damaged files.
    layout: Vec<PlannedExtent>,
    unchanged: bool,
}

impl FilePlan {
    /// The blobs this file still needs written, with their lengths.
    fn blobs_to_write(&self) -> impl Iterator<Item = (Id, u64)> + '_ {
        self.layout
            .iter()
            .filter_map(|(_, length, blob)| match blob {
                Some((id, here)) if !(self.in_place && *here) => Some((*id, *length)),
                _ => None,
            })
    }
}

struct Destination {
    file: u32,
    offset: u64,
}

struct BlobPlan {
    length: u64,
    destinations: Vec<Destination>,
}

struct LocalSource {
    file: u32,
    offset: u64,
}

pub fn restore_tree(
    repo: &Arc<Repository>,
    tree: &Id,
    target: &Path,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    let _lock = crate::lock::RepoLock::acquire(repo, false, Duration::ZERO)?;
    std::fs::create_dir_all(target).at(target)?;
    let target = std::fs::canonicalize(target).at(target)?;
    let tracker = Tracker::new(options.progress.clone());
    let ticker = tracker.start_ticker(Duration::from_millis(250));
    let mut summary = RestoreSummary::default();

    // 1. The snapshot's entries.
    let mut entries = Vec::new();
    collect(repo, tree, PathBuf::new(), &mut entries, 0)?;
    let wanted: HashSet<PathBuf> = entries.iter().map(|(rel, _)| rel.clone()).collect();
    tracker
        .total_files
        .store(entries.len() as u64, Ordering::Relaxed);
    tracker.total_bytes.store(
        entries
            .iter()
            .filter(|(_, n)| n.kind == NodeKind::File)
            .map(|(_, n)| n.size)
            .sum(),
        Ordering::Relaxed,
    );

    // 2. What the target holds (incremental restores only).
    let scan = if options.incremental {
        scan_target(repo, &target, &entries, options)?
    } else {
        TargetScan::default()
    };
    let scanned_paths = Mutex::new(scan.paths.clone());

    // 3. Directories, and the plan of every regular file.
    let mut files: Vec<FilePlan> = Vec::new();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut specials: Vec<(PathBuf, Node)> = Vec::new();
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let mut first_of_inode: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut displaced: Vec<PathBuf> = Vec::new();
    for (rel, node) in &entries {
        let path = target.join(rel);
        match node.kind {
            NodeKind::Dir => {
                make_dir(&target, rel, &scan, &scanned_paths, &mut displaced)?;
                dirs.push((rel.clone(), node.clone()));
                summary.dirs += 1;
            }
            NodeKind::File => {
                if node.links > 1 {
                    if let Some(first) = first_of_inode.get(&(node.device, node.inode)) {
                        links.push((rel.clone(), first.clone()));
                        continue;
                    }
                    first_of_inode.insert((node.device, node.inode), rel.clone());
                }
                files.push(FilePlan {
                    rel: rel.clone(),
                    node: node.clone(),
                    write_path: path,
                    in_place: false,
                    written: Vec::new(),
                    holes: Vec::new(),
                    layout: Vec::new(),
                    unchanged: false,
                });
            }
            _ => specials.push((rel.clone(), node.clone())),
        }
    }

    // 4. Which blob goes where; which come from the target itself.
    let index = repo.index();
    let mut blobs: HashMap<Id, BlobPlan> = HashMap::new();
    let mut damaged: HashSet<u32> = HashSet::new();
    for (position, plan) in files.iter_mut().enumerate() {
        let position = position as u32;
        let existing = scan.files.get(&plan.rel);
        let mut offset = 0u64;
        let mut layout = Vec::with_capacity(plan.node.content.len());
        for extent in &plan.node.content {
            match extent {
                Extent::Hole { hole } => {
                    layout.push((offset, *hole, None));
                    offset += hole;
                }
                Extent::Blob(id) => match index.get(id) {
                    Some(location) => {
                        let length = location.raw_length as u64;
                        let in_place = existing.is_some_and(|e| e.chunks.get(&offset) == Some(id));
                        layout.push((offset, length, Some((*id, in_place))));
                        offset += length;
                    }
                    None => {
                        damaged.insert(position);
                        break;
                    }
                },
            }
        }
        if damaged.contains(&position) || offset != plan.node.size {
            damaged.insert(position);
            continue;
        }
        if let Some(existing) = existing {
            let all_in_place = layout
                .iter()
                .all(|(_, _, blob)| blob.is_none_or(|(_, here)| here));
            let holes_fine = layout
                .iter()
                .all(|(o, l, blob)| blob.is_some() || existing.zero_ranges_cover(*o, *l));
            if existing.size == plan.node.size && all_in_place && holes_fine {
                plan.unchanged = true;
                summary.files_unchanged += 1;
                summary.bytes_reused += plan.node.size;
                continue;
            }
            plan.in_place = true;
            for (o, l, blob) in &layout {
                if blob.is_none_or(|(_, here)| !here) {
                    plan.written.push((*o, *l));
                }
            }
            if existing.size > plan.node.size {
                plan.written
                    .push((plan.node.size, existing.size - plan.node.size));
            }
        }
        plan.holes = layout
            .iter()
            .filter(|(_, _, blob)| blob.is_none())
            .map(|(o, l, _)| (*o, *l))
            .collect();
        plan.layout = layout;
    }

    // A file patched in place must not overwrite bytes that some blob is copied from. Such a file
    // is written to a temp file instead, which then needs all of its chunks, and those may come
    // from yet another file patched in place: repeat until nothing changes.
    let path_to_plan: HashMap<PathBuf, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.rel.clone(), i))
        .collect();
    loop {
        let mut clobbered = Vec::new();
        for plan in &files {
            for (id, length) in plan.blobs_to_write() {
                let Some(source) = scan.sources.get(&id) else {
                    continue;
                };
                let source_rel = &scan.paths[source.file as usize];
                if let Some(&other) = path_to_plan.get(source_rel)
                    && files[other].in_place
                    && files[other]
                        .written
                        .iter()
                        .any(|(o, l)| *o < source.offset + length && source.offset < o + l)
                {
                    clobbered.push(other);
                }
            }
        }
        if clobbered.is_empty() {
            break;
        }
        for position in clobbered {
            files[position].in_place = false;
        }
    }
    for (position, plan) in files.iter().enumerate() {
        if plan.in_place {
            summary.bytes_reused += plan
                .layout
                .iter()
                .filter(|(_, _, blob)| blob.is_some_and(|(_, here)| here))
                .map(|(_, length, _)| length)
                .sum::<u64>();
        }
        for (offset, length, blob) in &plan.layout {
            let Some((id, here)) = blob else { continue };
            if plan.in_place && *here {
                continue;
            }
            blobs
                .entry(*id)
                .or_insert_with(|| BlobPlan {
                    length: *length,
                    destinations: Vec::new(),
                })
                .destinations
                .push(Destination {
                    file: position as u32,
                    offset: *offset,
                });
        }
    }
    for plan in &mut files {
        let occupied = std::fs::symlink_metadata(&plan.write_path).is_ok();
        if !plan.in_place && !plan.unchanged && options.incremental && occupied {
            let name = plan
                .write_path
                .file_name()
                .expect("a file name")
                .as_bytes()
                .to_vec();
            let mut temp_name = b".".to_vec();
            temp_name.extend_from_slice(&name);
            temp_name
                .extend_from_slice(format!(".ferry-{}", &Id::random().to_hex()[..8]).as_bytes());
            plan.write_path = plan
                .write_path
                .with_file_name(std::ffi::OsStr::from_bytes(&temp_name));
        }
    }
    drop(index);

    // 5. Create (or size) every file to write, so that holes stay holes.
    for (position, plan) in files.iter().enumerate() {
        if plan.unchanged || damaged.contains(&(position as u32)) {
            continue;
        }
        let result = (|| -> Result<()> {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(!plan.in_place)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&plan.write_path)
                .at(&plan.write_path)?;
            file.set_len(plan.node.size).at(&plan.write_path)?;
            if plan.in_place {
                for &(offset, length) in &plan.holes {
                    punch_hole(&file, offset, length);
                }
            }
            Ok(())
        })();
        if let Err(error) = result {
            warn!(message = "cannot create a file", path = %plan.write_path.display(), %error);
            damaged.insert(position as u32);
        }
    }

    // 6. The data: copies from within the target, then downloads. No write touches a range a copy
    // reads from (ensured above), so the order between them does not matter.
    let workers = options
        .workers
        .unwrap_or_else(|| (2 * available_cores()).max(4));
    let write_paths: Vec<PathBuf> = files.iter().map(|f| f.write_path.clone()).collect();
    let scanned_paths = scanned_paths.into_inner().expect("scan paths");
    let mut local_jobs: Vec<(Id, &LocalSource, BlobPlan)> = Vec::new();
    let mut remote: HashMap<Id, BlobPlan> = HashMap::new();
    for (id, plan) in blobs {
        match scan.sources.get(&id) {
            Some(source) => local_jobs.push((id, source, plan)),
            None => {
                remote.insert(id, plan);
            }
        }
    }
    let cancelled = || {
        options
            .cancel
            .as_ref()
            .is_some_and(|cancel| cancel.load(Ordering::Relaxed))
    };
    if cancelled() {
        return Err(Error::Cancelled);
    }
    let counters = Counters::default();
    let failed_local: Mutex<Vec<(Id, BlobPlan)>> = Mutex::new(Vec::new());
    let damaged = Mutex::new(damaged);
    {
        let next = AtomicUsize::new(0);
        let local_jobs = &local_jobs;
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let Some((id, source, plan)) = local_jobs.get(n) else {
                            return;
                        };
                        let source_path = target.join(&scanned_paths[source.file as usize]);
                        match read_local(repo, &source_path, source.offset, plan.length, id) {
                            Ok(data) => {
                                counters.reused.fetch_add(
                                    plan.length * plan.destinations.len() as u64,
                                    Ordering::Relaxed,
                                );
                                write_destinations(
                                    &data,
                                    &plan.destinations,
                                    &write_paths,
                                    &counters,
                                    &damaged,
                                    &tracker,
                                );
                            }
                            Err(_) => failed_local.lock().expect("lock").push((
                                *id,
                                BlobPlan {
                                    length: plan.length,
                                    destinations: plan
                                        .destinations
                                        .iter()
                                        .map(|d| Destination {
                                            file: d.file,
                                            offset: d.offset,
                                        })
                                        .collect(),
                                },
                            )),
                        }
                    }
                });
            }
        });
    }
    if cancelled() {
        return Err(Error::Cancelled);
    }
    for (id, plan) in failed_local.into_inner().expect("lock") {
        remote.insert(id, plan);
    }
    let reads = plan_reads(repo, remote);
    let damaged_blobs: Mutex<Vec<Id>> = Mutex::new(Vec::new());
    {
        let next = AtomicUsize::new(0);
        let reads = &reads;
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let Some(read) = reads.get(n) else { return };
                        fetch_and_write(
                            repo,
                            read,
                            &write_paths,
                            &counters,
                            &damaged,
                            &damaged_blobs,
                            &tracker,
                        );
                    }
                });
            }
        });
    }
    let damaged = damaged.into_inner().expect("lock");

    // 7. Temp files into place, links, special files, metadata, deletions.
    for (position, plan) in files.iter().enumerate() {
        let final_path = target.join(&plan.rel);
        if damaged.contains(&(position as u32)) {
            // A file this restore created (or truncated) is removed rather than left looking
            // restored; one patched in place keeps what the target held.
            if !plan.in_place {
                let _ = std::fs::remove_file(&plan.write_path);
            }
            summary.errors += 1;
            summary.damaged_files.push(plan.rel.display().to_string());
            tracker.emit(ProgressEvent::Error {
                path: plan.rel.display().to_string(),
                message: "damaged or missing data".into(),
            });
            continue;
        }
        if plan.write_path != final_path {
            remove_any(&final_path)?;
            std::fs::rename(&plan.write_path, &final_path).at(&final_path)?;
        }
        if let Err(error) = apply_metadata(&final_path, &plan.node) {
            warn!(message = "cannot restore metadata", path = %final_path.display(), %error);
            summary.errors += 1;
        }
        summary.files_restored += 1;
        if plan.unchanged {
            tracker.file_done(plan.node.size);
        } else {
            tracker.files_done.fetch_add(1, Ordering::Relaxed);
        }
    }
    for (rel, first) in &links {
        let path = target.join(rel);
        remove_any(&path)?;
        match std::fs::hard_link(target.join(first), &path) {
            Ok(()) => summary.files_restored += 1,
            Err(error) => {
                warn!(message = "cannot create a hard link", path = %path.display(), %error);
                summary.errors += 1;
            }
        }
    }
    for (rel, node) in &specials {
        let path = target.join(rel);
        match create_special(&path, node).and_then(|()| apply_metadata(&path, node)) {
            Ok(()) => summary.files_restored += 1,
            Err(error) => {
                warn!(message = "cannot create a special file", path = %path.display(), %error);
                summary.errors += 1;
            }
        }
    }
    for path in displaced {
        let _ = std::fs::remove_file(path);
    }
    if options.delete {
        summary.files_deleted = delete_extra(&target, Path::new(""), &wanted)?;
    }
    // Deepest first, so that restoring a directory's mtime is not undone by work inside it.
    dirs.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
    for (rel, node) in &dirs {
        let path = target.join(rel);
        if let Err(error) = apply_metadata(&path, node) {
            warn!(message = "cannot restore metadata", path = %path.display(), %error);
            summary.errors += 1;
        }
    }
    summary.bytes_written = counters.written.load(Ordering::Relaxed);
    summary.bytes_downloaded = counters.downloaded.load(Ordering::Relaxed);
    summary.bytes_reused += counters.reused.load(Ordering::Relaxed);
    for id in damaged_blobs.into_inner().expect("lock") {
        warn!(message = "damaged blob", blob = %id.short());
    }
    summary.damaged_files.sort();
    tracker.finish(ticker);
    Ok(summary)
}

/// Every entry of the tree, parents before children, with paths relative to the target.
fn collect(
    repo: &Repository,
    tree: &Id,
    prefix: PathBuf,
    out: &mut Vec<(PathBuf, Node)>,
    depth: usize,
) -> Result<()> {
    if depth > 512 {
        return Err(Error::UnsafePath(
            "directories nested more than 512 deep".into(),
        ));
    }
    let tree: Tree = repo.load_tree(tree)?;
    let mut seen = HashSet::new();
    for node in tree.nodes {
        node.check_name()?;
        if !seen.insert(node.name.clone()) {
            return Err(Error::UnsafePath(format!(
                "entry {:?} appears twice in one directory",
                node.name_lossy()
            )));
        }
        let rel = prefix.join(std::ffi::OsStr::from_bytes(&node.name));
        let subtree = node.subtree;
        let kind = node.kind;
        out.push((rel.clone(), node));
        if kind == NodeKind::Dir {
            let subtree = subtree.ok_or_else(|| {
                Error::corrupt(format!("directory {}", rel.display()), "no subtree")
            })?;
            collect(repo, &subtree, rel, out, depth + 1)?;
        }
    }
    Ok(())
}

#[derive(Default)]
struct ExistingFile {
    size: u64,
    /// Chunk id at each chunk offset (zero chunks are not listed).
    chunks: HashMap<u64, Id>,
    zero_ranges: Vec<(u64, u64)>,
}

impl ExistingFile {
    fn zero_ranges_cover(&self, offset: u64, length: u64) -> bool {
        let mut position = offset;
        for &(start, len) in &self.zero_ranges {
            if start <= position && position < start + len {
                position = start + len;
            }
        }
        position >= offset + length
    }
}

#[derive(Default)]
struct TargetScan {
    /// Paths (relative to the target) of the regular files found.
    paths: Vec<PathBuf>,
    /// Files at the snapshot's paths.
    files: HashMap<PathBuf, ExistingFile>,
    /// One place in the target where each needed blob can be read.
    sources: HashMap<Id, LocalSource>,
}

fn scan_target(
    repo: &Repository,
    target: &Path,
    entries: &[(PathBuf, Node)],
    options: &RestoreOptions,
) -> Result<TargetScan> {
    let snapshot_nodes: HashMap<&Path, &Node> = entries
        .iter()
        .map(|(rel, node)| (rel.as_path(), node))
        .collect();
    let needed: HashSet<Id> = entries
        .iter()
        .flat_map(|(_, node)| node.content.iter())
        .filter_map(|extent| match extent {
            Extent::Blob(id) => Some(*id),
            Extent::Hole { .. } => None,
        })
        .collect();
    let mut paths = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let Ok(listing) = std::fs::read_dir(target.join(&rel)) else {
            continue;
        };
        for entry in listing.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let child = rel.join(entry.file_name());
            if file_type.is_dir() {
                dirs.push(child);
            } else if file_type.is_file() {
                paths.push(child);
            }
        }
    }
    let results: Mutex<Vec<(usize, ExistingFile)>> = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let workers = options.workers.unwrap_or_else(available_cores).max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(rel) = paths.get(n) else { return };
                    let path = target.join(rel);
                    let Ok(meta) = std::fs::symlink_metadata(&path) else {
                        continue;
                    };
                    let existing = match snapshot_nodes.get(rel.as_path()) {
                        // Quick check, as rsync's: same size and mtime means the snapshot's content
                        // is there, and it need not be read.
                        Some(node)
                            if node.kind == NodeKind::File
                                && node.size == meta.len()
                                && node.mtime == meta.mtime()
                                && node.mtime_nsec == meta.mtime_nsec() as u32 =>
                        {
                            from_snapshot(node, &repo.index())
                                .or_else(|| chunk_existing(repo, &path).ok())
                        }
                        _ => chunk_existing(repo, &path).ok(),
                    };
                    if let Some(existing) = existing {
                        results.lock().expect("scan lock").push((n, existing));
                    }
                }
            });
        }
    });
    let mut scan = TargetScan::default();
    let mut results = results.into_inner().expect("scan lock");
    results.sort_by_key(|(n, _)| *n);
    for (n, existing) in results {
        for (offset, id) in &existing.chunks {
            if needed.contains(id) {
                scan.sources.entry(*id).or_insert(LocalSource {
                    file: n as u32,
                    offset: *offset,
                });
            }
        }
        if snapshot_nodes.contains_key(paths[n].as_path()) {
            scan.files.insert(paths[n].clone(), existing);
        }
    }
    scan.paths = paths;
    Ok(scan)
}

/// What a file that passed the quick check holds: the snapshot's content. `None` when the index
/// lacks one of its blobs (the file is then read instead).
fn from_snapshot(node: &Node, index: &crate::index::MasterIndex) -> Option<ExistingFile> {
    let mut existing = ExistingFile {
        size: node.size,
        ..Default::default()
    };
    let mut offset = 0;
    for extent in &node.content {
        match extent {
            Extent::Hole { hole } => {
                existing.zero_ranges.push((offset, *hole));
                offset += hole;
            }
            Extent::Blob(id) => {
                existing.chunks.insert(offset, *id);
                offset += index.get(id)?.raw_length as u64;
            }
        }
    }
    (offset == node.size).then_some(existing)
}

fn chunk_existing(repo: &Repository, path: &Path) -> Result<ExistingFile> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at(path)?;
    let size = file.metadata().at(path)?.len();
    let mut existing = ExistingFile {
        size,
        ..Default::default()
    };
    for chunk in repo
        .config()
        .chunker
        .chunks(std::io::BufReader::with_capacity(256 * 1024, file))
    {
        let chunk = chunk.at(path)?;
        if chunk.data.iter().all(|&b| b == 0) {
            existing
                .zero_ranges
                .push((chunk.offset, chunk.data.len() as u64));
        } else {
            existing
                .chunks
                .insert(chunk.offset, repo.key().blob_id(&chunk.data));
        }
    }
    Ok(existing)
}

fn make_dir(
    target: &Path,
    rel: &Path,
    scan: &TargetScan,
    scanned: &Mutex<Vec<PathBuf>>,
    displaced: &mut Vec<PathBuf>,
) -> Result<()> {
    let path = target.join(rel);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(meta) if meta.is_file() && scan.paths.iter().any(|p| p == rel) => {
            // A file where the snapshot has a directory; it may still hold chunks other files
            // need, so it is moved aside and removed at the end.
            let aside_name = format!(".ferry-displaced-{}", &Id::random().to_hex()[..12]);
            let aside = path.with_file_name(&aside_name);
            std::fs::rename(&path, &aside).at(&path)?;
            let mut scanned = scanned.lock().expect("scan paths");
            for known in scanned.iter_mut().filter(|known| known.as_path() == rel) {
                *known = known.with_file_name(&aside_name);
            }
            displaced.push(aside);
        }
        // A symlink, fifo, or file: replaced, never followed.
        Ok(_) => std::fs::remove_file(&path).at(&path)?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(Error::io(&path, error)),
    }
    std::fs::create_dir(&path).at(&path)
}

fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).at(path),
        Ok(_) => std::fs::remove_file(path).at(path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(Error::io(path, error)),
    }
}

fn punch_hole(file: &File, offset: u64, length: u64) {
    let _ = rustix::fs::fallocate(
        file,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        offset,
        length,
    );
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    downloaded: AtomicU64,
    reused: AtomicU64,
}

fn read_local(
    repo: &Repository,
    path: &Path,
    offset: u64,
    length: u64,
    id: &Id,
) -> Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at(path)?;
    let mut data = vec![0u8; length as usize];
    file.read_exact_at(&mut data, offset).at(path)?;
    if repo.key().blob_id(&data) != *id {
        return Err(Error::corrupt(
            path.display().to_string(),
            "changed since it was scanned",
        ));
    }
    Ok(data)
}

fn write_destinations(
    data: &[u8],
    destinations: &[Destination],
    paths: &[PathBuf],
    counters: &Counters,
    damaged: &Mutex<HashSet<u32>>,
    tracker: &Tracker,
) {
    let mut open: Option<(u32, File)> = None;
    for destination in destinations {
        if open
            .as_ref()
            .is_none_or(|(file, _)| *file != destination.file)
        {
            let path = &paths[destination.file as usize];
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
            {
                Ok(file) => open = Some((destination.file, file)),
                Err(error) => {
                    warn!(message = "cannot open a file to restore", path = %path.display(), %error);
                    damaged.lock().expect("lock").insert(destination.file);
                    open = None;
                    continue;
                }
            }
        }
        let (_, file) = open.as_ref().expect("opened");
        if let Err(error) = file.write_all_at(data, destination.offset) {
            warn!(message = "cannot write a restored file", path = %paths[destination.file as usize].display(), %error);
            damaged.lock().expect("lock").insert(destination.file);
            continue;
        }
        counters
            .written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        tracker
            .bytes_done
            .fetch_add(data.len() as u64, Ordering::Relaxed);
    }
}

/// One ranged read of a pack and the blobs it covers.
struct PackRead {
    pack: Id,
    offset: u64,
    length: u64,
    blobs: Vec<(Id, crate::index::BlobLocation, BlobPlan)>,
}

fn plan_reads(repo: &Repository, blobs: HashMap<Id, BlobPlan>) -> Vec<PackRead> {
    let index = repo.index();
    let mut by_pack: HashMap<Id, Vec<(Id, crate::index::BlobLocation, BlobPlan)>> = HashMap::new();
    for (id, plan) in blobs {
        let location = *index.get(&id).expect("planned blobs are indexed");
        by_pack
            .entry(index.pack_id(&location))
            .or_default()
            .push((id, location, plan));
    }
    let mut reads = Vec::new();
    for (pack, mut blobs) in by_pack {
        blobs.sort_by_key(|(_, location, _)| location.offset);
        let mut current: Option<PackRead> = None;
        for (id, location, plan) in blobs {
            let start = location.offset as u64;
            let end = start + location.length as u64;
            if let Some(read) = current.as_mut()
                && start <= read.offset + read.length + MAX_GAP
                && end - read.offset <= MAX_READ
            {
                read.length = end - read.offset;
                read.blobs.push((id, location, plan));
                continue;
            }
            if let Some(read) = current.take() {
                reads.push(read);
            }
            current = Some(PackRead {
                pack,
                offset: start,
                length: end - start,
                blobs: vec![(id, location, plan)],
            });
        }
        reads.extend(current);
    }
    // Big reads first, so that the last workers do not wait on one long tail.
    reads.sort_by_key(|read| std::cmp::Reverse(read.length));
    reads
}

fn fetch_and_write(
    repo: &Repository,
    read: &PackRead,
    paths: &[PathBuf],
    counters: &Counters,
    damaged: &Mutex<HashSet<u32>>,
    damaged_blobs: &Mutex<Vec<Id>>,
    tracker: &Tracker,
) {
    let mark_damaged = |plan: &BlobPlan, id: &Id| {
        let mut damaged = damaged.lock().expect("lock");
        for destination in &plan.destinations {
            damaged.insert(destination.file);
        }
        damaged_blobs.lock().expect("lock").push(*id);
    };
    let bytes =
        match repo
            .backend()
            .get_range(Kind::Pack, &read.pack.to_hex(), read.offset, read.length)
        {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!(message = "cannot read a pack", pack = %read.pack.short(), %error);
                for (id, _, plan) in &read.blobs {
                    mark_damaged(plan, id);
                }
                return;
            }
        };
    counters
        .downloaded
        .fetch_add(read.length, Ordering::Relaxed);
    for (id, location, plan) in &read.blobs {
        let start = (location.offset as u64 - read.offset) as usize;
        let stored = &bytes[start..start + location.length as usize];
        let what = format!("blob {} in pack {}", id.short(), read.pack.short());
        match crate::blob::open(
            repo.key(),
            id,
            location.compression,
            location.raw_length,
            stored,
            &what,
        ) {
            Ok(data) => {
                write_destinations(&data, &plan.destinations, paths, counters, damaged, tracker)
            }
            Err(error) => {
                warn!(message = "damaged blob", %error);
                mark_damaged(plan, id);
            }
        }
    }
}

fn create_special(path: &Path, node: &Node) -> Result<()> {
    remove_any(path)?;
    let mode = rustix::fs::Mode::from_raw_mode(node.mode & 0o7777);
    match node.kind {
        NodeKind::Symlink => {
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&node.link_target), path)
                .at(path)
        }
        NodeKind::Fifo => {
            rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, mode, 0)
                .map_err(|e| Error::io(path, e.into()))
        }
        NodeKind::CharDevice => rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            mode,
            node.rdev,
        )
        .map_err(|e| Error::io(path, e.into())),
        NodeKind::BlockDevice => rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::BlockDevice,
            mode,
            node.rdev,
        )
        .map_err(|e| Error::io(path, e.into())),
        // A socket belongs to a process; there is nothing to restore.
        NodeKind::Socket => Ok(()),
        NodeKind::File | NodeKind::Dir => unreachable!("not a special file"),
    }
}

/// Owner, mode, xattrs and times, in that order: chown clears setuid bits, and every change
/// before the times would bump the mtime again.
fn apply_metadata(path: &Path, node: &Node) -> Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
    if node.kind == NodeKind::Socket {
        return Ok(());
    }
    let as_root = rustix::process::geteuid().is_root();
    if as_root {
        rustix::fs::chownat(
            CWD,
            path,
            Some(rustix::fs::Uid::from_raw(node.uid)),
            Some(rustix::fs::Gid::from_raw(node.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::io(path, e.into()))?;
    }
    if node.kind != NodeKind::Symlink {
        rustix::fs::chmodat(
            CWD,
            path,
            rustix::fs::Mode::from_raw_mode(node.mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(|e| Error::io(path, e.into()))?;
        for xattr in &node.xattrs {
            let name = std::ffi::OsStr::from_bytes(&xattr.name);
            if let Err(error) = xattr::set(path, name, &xattr.value) {
                warn!(message = "cannot restore an extended attribute", path = %path.display(), name = %name.to_string_lossy(), %error);
            }
        }
    }
    let mtime = Timespec {
        tv_sec: node.mtime,
        tv_nsec: node.mtime_nsec as _,
    };
    let times = Timestamps {
        last_access: mtime,
        last_modification: mtime,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io(path, e.into()))?;
    Ok(())
}

/// Removes what the target holds beyond `wanted`; returns how many entries went.
fn delete_extra(target: &Path, rel: &Path, wanted: &HashSet<PathBuf>) -> Result<u64> {
    let dir = target.join(rel);
    let mut removed = 0;
    let Ok(listing) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    for entry in listing {
        let entry = entry.at(&dir)?;
        let child = rel.join(entry.file_name());
        if !wanted.contains(&child) {
            remove_any(&entry.path())?;
            removed += 1;
        } else if entry.file_type().at(entry.path())?.is_dir() {
            removed += delete_extra(target, &child, wanted)?;
        }
    }
    Ok(removed)
}
