//! What the target of an incremental restore holds: every entry's path, and for regular files
//! their chunks, so that a chunk found anywhere in the target is copied rather than downloaded.
//!
//! The walk goes by directory descriptors and stays on the target's filesystem (a nested mount
//! is neither scanned nor, later, written into). Files are opened only once known to be regular
//! (a FIFO swapped in is never opened for reading) and read up to the size they were listed
//! with, holes skipped.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::fs::{AtFlags, FileType};

use super::plan::LocalSource;
use crate::chunker::Piece;
use crate::error::Result;
use crate::id::Id;
use crate::index::MasterIndex;
use crate::repository::Repository;
use crate::root_dir::{RootDir, read_names};
use crate::tree::{Extent, Node, NodeKind};

#[derive(Default)]
pub(super) struct ExistingFile {
    pub size: u64,
    /// Chunk id at each chunk offset (zero chunks are not listed).
    pub chunks: HashMap<u64, Id>,
    pub zero_ranges: Vec<(u64, u64)>,
}

impl ExistingFile {
    pub fn zero_ranges_cover(&self, offset: u64, length: u64) -> bool {
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
pub(super) struct TargetScan {
    /// Paths (relative to the target) of the regular files found.
    pub paths: Vec<PathBuf>,
    /// Every path found, of any kind.
    pub occupied: HashSet<PathBuf>,
    /// Files at the snapshot's paths.
    pub files: HashMap<PathBuf, ExistingFile>,
    /// One place in the target where each needed blob can be read.
    pub sources: HashMap<Id, LocalSource>,
}

pub(super) fn scan_target(
    repo: &Repository,
    root: &RootDir,
    entries: &[(PathBuf, Node)],
    workers: usize,
    verify: bool,
    stop: &(dyn Fn() -> Result<()> + Sync),
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
    let (paths, occupied) = list_target(root, stop)?;

    let results: Mutex<Vec<(usize, ExistingFile)>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<crate::Error>> = Mutex::new(None);
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(rel) = paths.get(n) else { return };
                    // Verifying: no file is taken on its size and mtime.
                    let node = snapshot_nodes
                        .get(rel.as_path())
                        .copied()
                        .filter(|_| !verify);
                    match examine(repo, root, rel, node, stop) {
                        Ok(Some(existing)) => {
                            results.lock().expect("scan lock").push((n, existing))
                        }
                        Ok(None) => {}
                        Err(error @ crate::Error::Cancelled) => {
                            failure.lock().expect("scan lock").get_or_insert(error);
                            return;
                        }
                        // Unreadable, or gone or replaced meanwhile: not a source.
                        Err(_) => {}
                    }
                }
            });
        }
    });
    if let Some(error) = failure.into_inner().expect("scan lock") {
        return Err(error);
    }
    let mut scan = TargetScan {
        occupied,
        ..Default::default()
    };
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

/// The regular files below the root, and every path found, on the root's filesystem only. Only
/// one directory is open at a time, however wide or deep the target: each is reached from the
/// root by its path when its turn comes (a path too long to resolve is left unscanned).
fn list_target(
    root: &RootDir,
    stop: &dyn Fn() -> Result<()>,
) -> Result<(Vec<PathBuf>, HashSet<PathBuf>)> {
    let mut paths = Vec::new();
    let mut occupied = HashSet::new();
    let mut dirs: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        stop()?;
        let Ok(dir) = root.dir(&rel) else { continue };
        let Ok(names) = read_names(dir.as_fd(), &root.display(&rel)) else {
            continue;
        };
        for name in names {
            let name = OsStr::from_bytes(&name);
            let child = rel.join(name);
            let Ok(stat) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            occupied.insert(child.clone());
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory if stat.st_dev == root.device() => dirs.push(child),
                FileType::RegularFile => paths.push(child),
                _ => {}
            }
        }
    }
    Ok((paths, occupied))
}

/// What the file at `rel` holds, if it is (still) a regular file.
fn examine(
    repo: &Repository,
    root: &RootDir,
    rel: &Path,
    node: Option<&Node>,
    stop: &dyn Fn() -> Result<()>,
) -> Result<Option<ExistingFile>> {
    let (file, stat) = root.open_regular(rel)?;
    let size = stat.st_size as u64;
    // Quick check, as rsync's: same size and mtime means the snapshot's content is there, and
    // it need not be read.
    if let Some(node) = node
        && node.kind == NodeKind::File
        && node.size == size
        && node.mtime == stat.st_mtime
        && node.mtime_nsec == stat.st_mtime_nsec as u32
        && let Some(existing) = from_snapshot(node, &repo.index())
    {
        return Ok(Some(existing));
    }
    let mut existing = ExistingFile {
        size,
        ..Default::default()
    };
    let covered = repo
        .config()
        .chunker
        .chunk_file(&file, size, stop, &mut |piece| {
            match piece {
                Piece::Hole { offset, length } => existing.zero_ranges.push((offset, length)),
                Piece::Data(chunk) if chunk.data.iter().all(|&b| b == 0) => existing
                    .zero_ranges
                    .push((chunk.offset, chunk.data.len() as u64)),
                Piece::Data(chunk) => {
                    existing
                        .chunks
                        .insert(chunk.offset, repo.key().blob_id(&chunk.data));
                }
            }
            Ok(())
        })?;
    existing.size = covered;
    Ok(Some(existing))
}

/// What a file that passed the quick check holds: the snapshot's content. `None` when the index
/// lacks one of its blobs (the file is then read instead).
fn from_snapshot(node: &Node, index: &MasterIndex) -> Option<ExistingFile> {
    let mut existing = ExistingFile {
        size: node.size,
        ..Default::default()
    };
    let mut offset = 0u64;
    for extent in &node.content {
        match extent {
            Extent::Hole { hole } => {
                existing.zero_ranges.push((offset, *hole));
                offset = offset.saturating_add(*hole);
            }
            Extent::Blob(id) => {
                existing.chunks.insert(offset, *id);
                offset = offset.saturating_add(index.get(id)?.raw_length as u64);
            }
        }
    }
    (offset == node.size).then_some(existing)
}
