//! Writing a restore plan into the target: directories and files first (files sized at once, so
//! that holes stay holes), then the data, copied from within the target where the plan found it
//! there and fetched from the repository otherwise. Every path goes through the [`RootDir`].

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rustix::fs::{AtFlags, FileType, Mode};
use rustix::io::Errno;
use tracing::warn;

use super::plan::{BlobPlan, Destination, RestorePlan};
use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::BlobLocation;
use crate::progress::Tracker;
use crate::repository::Repository;
use crate::root_dir::{AtRoot, RootDir, remove_entry};

/// A merge of nearby blobs of one pack into one ranged read never spans a gap larger than this,
/// nor grows beyond [`MAX_READ`].
const MAX_GAP: u64 = 256 * 1024;
const MAX_READ: u64 = 4 * 1024 * 1024;

#[derive(Default)]
pub(super) struct Counters {
    pub written: AtomicU64,
    pub downloaded: AtomicU64,
    pub reused: AtomicU64,
}

/// Makes the directories (moving aside a regular file the plan displaces, replacing anything
/// else that is not a directory), then creates or sizes every file to write. A file that cannot
/// be created is marked damaged; a directory that cannot be made stops the restore.
pub(super) fn prepare(root: &RootDir, plan: &mut RestorePlan) -> Result<()> {
    let displaced: HashMap<&Path, &Path> = plan
        .displaced
        .iter()
        .map(|(rel, aside)| (rel.as_path(), aside.as_path()))
        .collect();
    for (rel, _) in &plan.dirs {
        make_dir(root, rel, displaced.get(rel.as_path()).copied())?;
    }
    for (position, file) in plan.files.iter().enumerate() {
        if file.unchanged || plan.damaged.contains(&(position as u32)) {
            continue;
        }
        let result = (|| -> std::io::Result<()> {
            let fd = root.open_regular_for_write(&file.write_rel, true, !file.in_place)?;
            if !file.moves.is_empty() {
                // Its moves read what a shrink or a hole would take: both wait for them
                // (`finish_moves`); growing first gives the moves their room.
                if fd.metadata()?.len() < file.node.size {
                    fd.set_len(file.node.size)?;
                }
                return Ok(());
            }
            fd.set_len(file.node.size)?;
            if file.in_place {
                for &(offset, length) in &file.holes {
                    punch_hole(&fd, offset, length);
                }
            }
            Ok(())
        })();
        if let Err(error) = result {
            warn!(message = "cannot create a file", path = %root.display(&file.write_rel).display(), %error);
            plan.damaged.insert(position as u32);
        }
    }
    Ok(())
}

fn make_dir(root: &RootDir, rel: &Path, aside: Option<&Path>) -> Result<()> {
    let (parent, name) = root.parent(rel).at_root(root, rel)?;
    match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => return Ok(()),
        Ok(stat) => match aside {
            // A file the scan read, where the snapshot has a directory: it may still hold
            // chunks other files need.
            Some(aside) if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile => {
                let aside_name = aside.file_name().expect("a file name");
                rustix::fs::renameat(&parent, name, &parent, aside_name)
                    .map_err(Into::into)
                    .at_root(root, rel)?;
            }
            // A symlink, FIFO or file: replaced, never followed.
            _ => remove_entry(parent.as_fd(), name, root.device(), &root.display(rel))?,
        },
        Err(Errno::NOENT) => {}
        Err(errno) => return Err(Error::io(root.display(rel), errno.into())),
    }
    match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(errno) => Err(Error::io(root.display(rel), errno.into())),
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

/// Writes every planned blob: local copies first, then downloads. No write touches a range a
/// copy reads from (the plan ensured it), so the order between them does not matter. Files a
/// write failed for are added to the plan's damaged set.
pub(super) fn write_data(
    repo: &Repository,
    root: &RootDir,
    plan: &mut RestorePlan,
    workers: usize,
    tracker: &Tracker,
    stop: &(dyn Fn() -> Result<()> + Sync),
) -> Result<Counters> {
    let counters = Counters::default();
    let damaged = Mutex::new(std::mem::take(&mut plan.damaged));
    let writer = Writer {
        target: Target::Files {
            root,
            paths: plan.files.iter().map(|f| f.write_rel.clone()).collect(),
        },
        counters: &counters,
        damaged: &damaged,
        tracker,
    };
    let failed_local: Mutex<Vec<(Id, BlobPlan)>> = Mutex::new(Vec::new());
    // Moves within files first, before any other write can cover what they read.
    let moving: Vec<u32> = (0..plan.files.len() as u32)
        .filter(|&position| {
            !plan.files[position as usize].moves.is_empty() && !writer.is_damaged(position)
        })
        .collect();
    run_parallel(workers, &moving, |&position| {
        let file = &plan.files[position as usize];
        match move_within(repo, root, file, &writer, position) {
            Ok(unread) => failed_local.lock().expect("lock").extend(unread),
            Err(error) => {
                warn!(message = "cannot restore a file in place", path = %root.display(&file.write_rel).display(), %error);
                writer.mark_damaged(position);
            }
        }
    });
    stop()?;
    let local = std::mem::take(&mut plan.local);
    run_parallel(workers, &local, |(id, source, blob)| {
        let source_rel = &plan.source_paths[source.file as usize];
        match read_local(repo, root, source_rel, source.offset, blob.length, id) {
            Ok(data) => {
                counters.reused.fetch_add(
                    blob.length * blob.destinations.len() as u64,
                    Ordering::Relaxed,
                );
                writer.write(&data, &blob.destinations);
            }
            // Changed since it was scanned, or not readable: fetched instead.
            Err(_) => failed_local.lock().expect("lock").push((
                *id,
                BlobPlan {
                    length: blob.length,
                    destinations: blob
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
    });
    stop()?;
    let mut remote = std::mem::take(&mut plan.remote);
    remote.extend(failed_local.into_inner().expect("lock"));
    let reads = plan_reads(repo, remote);
    run_parallel(workers, &reads, |read| fetch_and_write(repo, read, &writer));
    plan.damaged = damaged.into_inner().expect("lock");
    Ok(counters)
}

/// Carries out a file's moves in their order ([`super::plan::FilePlan::order_moves`]): each
/// blob read from its old place, checked against its id, and written to its new places; then the
/// file's holes punched and its size set. A blob whose old place no longer holds it is returned,
/// to be fetched like the others once the moves are done (what it would have written is then
/// written by the fetch; nothing it was to read has been covered by then).
fn move_within(
    repo: &Repository,
    root: &RootDir,
    file: &super::plan::FilePlan,
    writer: &Writer<'_>,
    position: u32,
) -> std::io::Result<Vec<(Id, BlobPlan)>> {
    let fd = root.open_regular_for_update(&file.write_rel)?;
    let mut unread = Vec::new();
    let mut data = Vec::new();
    for moved in &file.moves {
        data.resize(moved.length as usize, 0);
        let read = fd.read_exact_at(&mut data, moved.source);
        if read.is_err() || repo.key().blob_id(&data) != moved.id {
            unread.push((
                moved.id,
                BlobPlan {
                    length: moved.length,
                    destinations: moved
                        .destinations
                        .iter()
                        .map(|&offset| Destination {
                            file: position,
                            offset,
                        })
                        .collect(),
                },
            ));
            continue;
        }
        for &offset in &moved.destinations {
            fd.write_all_at(&data, offset)?;
            for counter in [&writer.counters.written, &writer.counters.reused] {
                counter.fetch_add(moved.length, Ordering::Relaxed);
            }
            writer
                .tracker
                .bytes_done
                .fetch_add(moved.length, Ordering::Relaxed);
        }
    }
    fd.set_len(file.node.size)?;
    for &(offset, length) in &file.holes {
        punch_hole(&fd, offset, length);
    }
    Ok(unread)
}

/// Runs `work` on every item, `workers` threads taking the next one as they go.
fn run_parallel<T: Sync>(workers: usize, items: &[T], work: impl Fn(&T) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            scope.spawn(|| {
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    work(item);
                }
            });
        }
    });
}

/// Reads a blob from a file of the target and checks it is still what the scan found there.
fn read_local(
    repo: &Repository,
    root: &RootDir,
    rel: &Path,
    offset: u64,
    length: u64,
    id: &Id,
) -> Result<Vec<u8>> {
    let (file, _) = root.open_regular(rel)?;
    let mut data = vec![0u8; length as usize];
    file.read_exact_at(&mut data, offset)
        .map_err(|error| Error::io(root.display(rel), error))?;
    if repo.key().blob_id(&data) != *id {
        return Err(Error::corrupt(
            root.display(rel).display().to_string(),
            "changed since it was scanned",
        ));
    }
    Ok(data)
}

/// Writes every blob of `blobs` into `image` (their destinations name file 0) with `workers`
/// threads; returns the counters and whether any blob could not be read or written.
pub(super) fn write_image(
    repo: &Repository,
    image: &File,
    blobs: HashMap<Id, BlobPlan>,
    workers: usize,
    tracker: &Tracker,
) -> (Counters, bool) {
    let counters = Counters::default();
    let damaged = Mutex::new(HashSet::new());
    let writer = Writer {
        target: Target::Image(image),
        counters: &counters,
        damaged: &damaged,
        tracker,
    };
    let reads = plan_reads(repo, blobs);
    run_parallel(workers, &reads, |read| fetch_and_write(repo, read, &writer));
    let damaged = !damaged.into_inner().expect("lock").is_empty();
    (counters, damaged)
}

/// Where a [`Writer`] writes: the plan's files below the target directory, by position, or one
/// open image (a block device), file 0.
enum Target<'a> {
    Files {
        root: &'a RootDir,
        paths: Vec<PathBuf>,
    },
    Image(&'a File),
}

/// Writes blobs into the files being restored.
struct Writer<'a> {
    target: Target<'a>,
    counters: &'a Counters,
    damaged: &'a Mutex<HashSet<u32>>,
    tracker: &'a Tracker,
}

impl Writer<'_> {
    fn write(&self, data: &[u8], destinations: &[Destination]) {
        let mut open: Option<(u32, File)> = None;
        for destination in destinations {
            let file = match &self.target {
                Target::Image(image) => *image,
                Target::Files { root, paths } => {
                    if open
                        .as_ref()
                        .is_none_or(|(file, _)| *file != destination.file)
                    {
                        let rel = &paths[destination.file as usize];
                        match root.open_regular_for_write(rel, false, false) {
                            Ok(file) => open = Some((destination.file, file)),
                            Err(error) => {
                                warn!(message = "cannot open a file to restore", path = %root.display(rel).display(), %error);
                                self.mark_damaged(destination.file);
                                open = None;
                                continue;
                            }
                        }
                    }
                    &open.as_ref().expect("opened").1
                }
            };
            if let Err(error) = file.write_all_at(data, destination.offset) {
                warn!(message = "cannot write a restored file", path = %self.shown(destination.file), %error);
                self.mark_damaged(destination.file);
                continue;
            }
            self.counters
                .written
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            self.tracker
                .bytes_done
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    }

    /// The file at position `file`, for messages.
    fn shown(&self, file: u32) -> String {
        match &self.target {
            Target::Files { root, paths } => {
                root.display(&paths[file as usize]).display().to_string()
            }
            Target::Image(_) => "the image".to_owned(),
        }
    }

    fn mark_damaged(&self, file: u32) {
        self.damaged.lock().expect("lock").insert(file);
    }

    fn is_damaged(&self, file: u32) -> bool {
        self.damaged.lock().expect("lock").contains(&file)
    }
}

/// One ranged read of a pack and the blobs it covers.
struct PackRead {
    pack: Id,
    offset: u64,
    length: u64,
    blobs: Vec<(Id, BlobLocation, BlobPlan)>,
}

fn plan_reads(repo: &Repository, blobs: HashMap<Id, BlobPlan>) -> Vec<PackRead> {
    let index = repo.index();
    let mut by_pack: HashMap<Id, Vec<(Id, BlobLocation, BlobPlan)>> = HashMap::new();
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

fn fetch_and_write(repo: &Repository, read: &PackRead, writer: &Writer<'_>) {
    let mark_damaged = |plan: &BlobPlan, id: &Id| {
        warn!(message = "damaged or missing blob", blob = %id.short(), pack = %read.pack.short());
        for destination in &plan.destinations {
            writer.mark_damaged(destination.file);
        }
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
    writer
        .counters
        .downloaded
        .fetch_add(read.length, Ordering::Relaxed);
    for (id, location, plan) in &read.blobs {
        let start = (location.offset as u64 - read.offset) as usize;
        let stored = &bytes[start..start + location.length as usize];
        let what = format!("blob {} in pack {}", id.short(), read.pack.short());
        match repo.open_blob(id, location.compression, location.raw_length, stored, &what) {
            Ok(data) => writer.write(&data, &plan.destinations),
            Err(error) => {
                warn!(message = "damaged blob", %error);
                mark_damaged(plan, id);
            }
        }
    }
}
