//! Backup of a directory.
//!
//! The walker (the calling thread) lists directories and stats entries; a file whose size, mtime,
//! ctime and inode match the parent snapshot is not read at all. Other files go to reader threads
//! that chunk and hash them; chunks the repository lacks go to sealing threads (compression and
//! encryption); sealed blobs go to the packer, whose threads upload finished packs. A byte budget
//! between readers and sealers bounds memory whatever the data size, and one huge file is sealed
//! by every core at once since its chunks are sealed independently.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use rustix::fs::{AtFlags, FileType, Stat, statat};
use rustix::io::Errno;

use crate::blob::{self, BlobKind};
use crate::chunker::Piece;
use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::lock::RepoLock;
use crate::packer::Packer;
use crate::progress::{ProgressEvent, ProgressSink, Tracker};
use crate::repository::Repository;
use crate::root_dir::{RootDir, open_regular, read_names};
use crate::snapshot::{BackupSummary, Snapshot};
use crate::tree::{Extent, MAX_DEPTH, MAX_PATH, Node, NodeKind, Tree, Xattr};
use crate::util::{ByteBudget, available_cores};

/// Which snapshot a backup compares against to skip unchanged files.
#[derive(Debug, Clone, Default)]
pub enum ParentChoice {
    /// The latest snapshot of the same host and path.
    #[default]
    Latest,
    Snapshot(String),
    None,
}

#[derive(Clone, Default)]
pub struct BackupOptions {
    pub tags: Vec<String>,
    /// Defaults to this machine's hostname.
    pub host: Option<String>,
    pub parent: ParentChoice,
    /// Descend into other filesystems mounted below the source (by default they are recorded as
    /// empty directories).
    pub cross_filesystems: bool,
    /// Abort on the first unreadable file instead of reporting it and going on.
    pub fail_on_unreadable: bool,
    pub progress: Option<Arc<dyn ProgressSink>>,
    /// Reader and sealing threads each; defaults to the number of cores.
    pub workers: Option<usize>,
    /// Set to stop the backup: it ends with [`Error::Cancelled`] at the next entry or chunk,
    /// writing no snapshot (the packs already written are reclaimed by prune).
    pub cancel: Option<Arc<AtomicBool>>,
    /// How long to wait for another process's conflicting lock (a prune's exclusive one) before
    /// giving up; none by default.
    pub lock_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct BackupOutcome {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
}

/// Nodes held for directories whose files are still being read; past this, the walker waits for
/// readers rather than run ahead, so memory stays bounded on huge trees.
const MAX_PENDING_NODES: usize = 50_000;

/// The walk's stack: room for [`MAX_DEPTH`] levels of recursion even unoptimised. Reserved, not
/// used: only the pages a deep tree touches are ever allocated.
const WALK_STACK: usize = 256 << 20;

/// Backs up the directory at `source`.
pub fn backup(
    repo: &Arc<Repository>,
    source: &Path,
    options: &BackupOptions,
) -> Result<BackupOutcome> {
    let source = std::path::absolute(source).at(source)?;
    let root_meta = std::fs::symlink_metadata(&source).at(&source)?;
    if !root_meta.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a directory; ferry backs up directories",
            source.display()
        )));
    }
    backup_root(repo, &RootDir::open(&source)?, options)
}

/// Backs up a directory opened by the caller (the node agent opens a pod volume's directory
/// itself). Everything below it is reached through directory descriptors, never by path.
pub fn backup_root(
    repo: &Arc<Repository>,
    root: &RootDir,
    options: &BackupOptions,
) -> Result<BackupOutcome> {
    let lock = RepoLock::acquire(repo, false, options.lock_wait)?;
    // Deduplicating against an index read before the lock could reference packs a prune has
    // deleted since.
    repo.refresh_index()?;
    let hostname = options.host.clone().unwrap_or_else(crate::util::hostname);
    let source_text = root.path().to_string_lossy().into_owned();
    let parent = match &options.parent {
        ParentChoice::None => None,
        ParentChoice::Snapshot(spec) => Some(repo.find_snapshot(spec)?),
        ParentChoice::Latest => repo
            .list_snapshots()?
            .snapshots
            .into_iter()
            .rev()
            .find(|(_, s)| s.hostname == hostname && s.source == source_text),
    };
    let parent_tree = match &parent {
        Some((_, snapshot)) => Some(repo.load_tree(&snapshot.tree)?),
        None => None,
    };

    let workers = options.workers.unwrap_or_else(available_cores).max(1);
    let tracker = Tracker::new(options.progress.clone());
    let ticker = tracker.start_ticker(Duration::from_millis(250));
    // Stopped and joined on every way out, so that nothing keeps working in the source after
    // the backup returns.
    let _scanner = if tracker.wants_events() {
        Some(Scanner::start(
            root,
            tracker.clone(),
            !options.cross_filesystems,
        )?)
    } else {
        None
    };

    let packer = Arc::new(Packer::new(repo.clone())?);
    let mut pipeline = Pipeline::start(repo, &packer, workers, &tracker, options.cancel.clone());
    let mut walker = Walker {
        repo,
        packer: &packer,
        pipeline: &pipeline,
        tracker: &tracker,
        options,
        root,
        queue: VecDeque::new(),
        finished: HashMap::new(),
        next_number: 0,
        pending_nodes: 0,
        summary: BackupSummary::default(),
    };
    let root_fd = root.dir(Path::new("")).at(root.path())?;
    // The walk recurses once per directory level (up to MAX_DEPTH): on a stack of its own,
    // whatever stack the caller runs on (the agent's tasks get 2 MiB).
    let walked = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("ferry-walk".into())
            .stack_size(WALK_STACK)
            .spawn_scoped(scope, || {
                walker
                    .walk_dir(root_fd, PathBuf::new(), 0, parent_tree.as_ref())
                    .and_then(|root| {
                        walker.finish_ready(true)?;
                        walker
                            .finished
                            .remove(&root)
                            .ok_or_else(|| Error::Other("the root tree was not saved".into()))
                    })
            })
            .map_err(|error| Error::Other(format!("starting the walk: {error}")))?
            .join()
            .map_err(|_| Error::Other("the walk panicked".into()))?
    });
    let summary = std::mem::take(&mut walker.summary);
    let pipeline_result = pipeline.stop();
    let root_tree = walked?;
    pipeline_result?;
    let parent = parent.map(|(id, _)| id);
    let source = SnapshotSource {
        source: source_text,
        hostname,
        parent,
    };
    save_snapshot(
        repo, &lock, packer, &pipeline, &tracker, ticker, root_tree, source, summary, options,
    )
}

/// What a snapshot records of where its data came from.
struct SnapshotSource {
    source: String,
    hostname: String,
    parent: Option<Id>,
}

/// Ends a backup whose pipeline has stopped: every pack uploaded and indexed, then the snapshot
/// of `root_tree`, written while the lock is still held.
#[allow(clippy::too_many_arguments)]
fn save_snapshot(
    repo: &Arc<Repository>,
    lock: &RepoLock,
    packer: Arc<Packer>,
    pipeline: &Pipeline,
    tracker: &Arc<Tracker>,
    ticker: Option<std::thread::JoinHandle<()>>,
    root_tree: Id,
    source: SnapshotSource,
    mut summary: BackupSummary,
    options: &BackupOptions,
) -> Result<BackupOutcome> {
    let packer = Arc::into_inner(packer).expect("the pipeline released the packer");
    let stats = (
        packer.stats().bytes_added.load(Ordering::Relaxed),
        packer.stats().data_blobs_added.load(Ordering::Relaxed),
        packer.stats().tree_blobs_added.load(Ordering::Relaxed),
    );
    // Every pack uploaded and indexed before the snapshot that needs it.
    packer.finish()?;
    summary.bytes_added = stats.0;
    summary.data_blobs_added = stats.1;
    summary.tree_blobs_added = stats.2;
    summary.bytes_read = pipeline.bytes_read.load(Ordering::Relaxed);
    tracker.finish(ticker);

    let snapshot = Snapshot {
        version: 1,
        time: jiff::Timestamp::now(),
        tree: root_tree,
        source: source.source,
        hostname: source.hostname,
        username: crate::util::username(),
        tags: options.tags.clone(),
        parent: source.parent,
        summary,
    };
    // The snapshot makes its blobs live; under a lock others may have judged abandoned, a prune
    // could have deleted some of them meanwhile.
    lock.check_held()?;
    let snapshot_id = repo.save_snapshot(&snapshot)?;
    Ok(BackupOutcome {
        snapshot_id,
        snapshot,
    })
}

/// The size of an image to back up or restore into: a block device's capacity (its `st_size` is
/// 0), or a regular file's length.
pub fn image_size(image: &File) -> Result<u64> {
    let end = rustix::fs::seek(image, rustix::fs::SeekFrom::End(0))
        .map_err(|errno| Error::Other(format!("finding the image's size: {errno}")))?;
    Ok(end)
}

/// Backs up `image` (a block device, or any file read whole) as one file named `name`: the
/// snapshot's tree holds that single regular file, its content the image's bytes from first to
/// last, runs of zeros stored as holes. The caller opened and checked the image; `source` is
/// what the snapshot records as its path. Every chunk is read (a device has no mtime that could
/// tell what changed), and only chunks the repository lacks are stored.
pub fn backup_image(
    repo: &Arc<Repository>,
    image: File,
    name: &str,
    source: &str,
    options: &BackupOptions,
) -> Result<BackupOutcome> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::InvalidArgument(format!(
            "{name:?} cannot name the image's file: a single path component is needed"
        )));
    }
    let lock = RepoLock::acquire(repo, false, options.lock_wait)?;
    repo.refresh_index()?;
    let size = image_size(&image)?;
    let stat = rustix::fs::fstat(&image)
        .map_err(|errno| Error::Other(format!("reading the image's status: {errno}")))?;
    let tracker = Tracker::new(options.progress.clone());
    tracker.total_files.store(1, Ordering::Relaxed);
    tracker.total_bytes.store(size, Ordering::Relaxed);
    tracker.emit(ProgressEvent::Totals {
        files: 1,
        bytes: size,
    });
    let ticker = tracker.start_ticker(Duration::from_millis(250));
    let workers = options.workers.unwrap_or_else(available_cores).max(1);
    let packer = Arc::new(Packer::new(repo.clone())?);
    let mut pipeline = Pipeline::start(repo, &packer, workers, &tracker, options.cancel.clone());
    let read = pipeline
        .submit(image, size, PathBuf::from(source))
        .and_then(|outcome| {
            outcome
                .recv()
                .unwrap_or_else(|_| Err(Error::Other("a reader thread stopped".into())))
        });
    let pipeline_result = pipeline.stop();
    let (content, covered) = read?;
    pipeline_result?;
    if covered != size {
        return Err(Error::Other(format!(
            "{source}: {covered} of its {size} bytes could be read; the image shrank while being backed up"
        )));
    }
    let now = jiff::Timestamp::now();
    let node = Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::File,
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime: now.as_second(),
        mtime_nsec: now.subsec_nanosecond().max(0) as u32,
        ctime: stat.st_ctime,
        ctime_nsec: stat.st_ctime_nsec as u32,
        inode: stat.st_ino,
        device: stat.st_dev,
        links: 1,
        size,
        content,
        subtree: None,
        link_target: Vec::new(),
        rdev: 0,
        xattrs: Vec::new(),
    };
    let mut tree = Tree { nodes: vec![node] };
    let root_tree = save_tree(repo, &packer, &mut tree)?;
    let summary = BackupSummary {
        files_new: 1,
        total_files: 1,
        total_bytes: size,
        ..Default::default()
    };
    let source = SnapshotSource {
        source: source.to_owned(),
        hostname: options.host.clone().unwrap_or_else(crate::util::hostname),
        parent: None,
    };
    save_snapshot(
        repo, &lock, packer, &pipeline, &tracker, ticker, root_tree, source, summary, options,
    )
}

/// Counts files and bytes ahead of the backup so that progress can show an ETA; only when
/// someone listens. Walks like the backup itself (nothing outside counted), one directory open
/// at a time, and is stopped and joined when dropped.
struct Scanner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scanner {
    fn start(root: &RootDir, tracker: Arc<Tracker>, one_file_system: bool) -> Result<Scanner> {
        let root = root.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-scan".into())
            .spawn(move || {
                let (mut files, mut bytes) = (0u64, 0u64);
                let mut dirs = vec![PathBuf::new()];
                while let Some(rel) = dirs.pop() {
                    if stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    let opened = if one_file_system {
                        root.dir(&rel)
                    } else {
                        root.dir_across_mounts(&rel)
                    };
                    let Ok(dir) = opened else { continue };
                    let Ok(names) = read_names(dir.as_fd(), Path::new("")) else {
                        continue;
                    };
                    for name in names {
                        let name = OsStr::from_bytes(&name);
                        let Ok(stat) = statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                            continue;
                        };
                        match FileType::from_raw_mode(stat.st_mode) {
                            FileType::Directory
                                if !one_file_system || stat.st_dev == root.device() =>
                            {
                                dirs.push(rel.join(name));
                            }
                            FileType::Directory => {}
                            FileType::RegularFile => {
                                files += 1;
                                bytes += stat.st_size as u64;
                            }
                            _ => files += 1,
                        }
                    }
                }
                tracker.total_files.store(files, Ordering::Relaxed);
                tracker.total_bytes.store(bytes, Ordering::Relaxed);
                tracker.emit(ProgressEvent::Totals { files, bytes });
            })
            .map_err(|error| Error::Other(format!("starting the scan: {error}")))?;
        Ok(Scanner {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The file's content and how many bytes it held when read.
type FileOutcome = Result<(Vec<Extent>, u64)>;

struct FileJob {
    /// Opened by the walker, checked to be the regular file it listed.
    file: File,
    /// The size it was listed with: no more is read.
    size: u64,
    /// For messages.
    path: PathBuf,
    reply: std::sync::mpsc::Sender<FileOutcome>,
}

struct SealJob {
    id: Id,
    data: Vec<u8>,
}

/// The reader and sealing threads.
struct Pipeline {
    files: Option<SyncSender<FileJob>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    failure: Arc<Mutex<Option<Error>>>,
    bytes_read: Arc<AtomicU64>,
}

impl Pipeline {
    fn start(
        repo: &Arc<Repository>,
        packer: &Arc<Packer>,
        workers: usize,
        tracker: &Arc<Tracker>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Pipeline {
        let max_chunk = repo.config().chunker.max_size as u64;
        // Enough for every sealing thread to have work queued, and little more.
        let budget = Arc::new(ByteBudget::new(
            (4 * workers as u64 * max_chunk).max(8 * 1024 * 1024),
        ));
        // Each queued job holds an open file: the queue bounds how many.
        let (file_sender, file_receiver) = sync_channel::<FileJob>(256);
        let (seal_sender, seal_receiver) = sync_channel::<SealJob>(4 * workers);
        let file_receiver = Arc::new(Mutex::new(file_receiver));
        let seal_receiver = Arc::new(Mutex::new(seal_receiver));
        let failure = Arc::new(Mutex::new(None));
        let bytes_read = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for n in 0..workers {
            let reader = Reader {
                repo: repo.clone(),
                packer: packer.clone(),
                budget: budget.clone(),
                seal: seal_sender.clone(),
                tracker: tracker.clone(),
                bytes_read: bytes_read.clone(),
                cancel: cancel.clone(),
            };
            let receiver = file_receiver.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ferry-read-{n}"))
                    .spawn(move || {
                        loop {
                            let job = receiver.lock().expect("file queue lock").recv();
                            let Ok(job) = job else { return };
                            let outcome = reader.read_file(&job);
                            let _ = job.reply.send(outcome);
                        }
                    })
                    .expect("spawning a reader thread"),
            );
        }
        drop(seal_sender);
        for n in 0..workers {
            let receiver = seal_receiver.clone();
            let packer = packer.clone();
            let budget = budget.clone();
            let failure = failure.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ferry-seal-{n}"))
                    .spawn(move || {
                        loop {
                            let job = receiver.lock().expect("seal queue lock").recv();
                            let Ok(job) = job else { return };
                            let length = job.data.len() as u64;
                            let sealed = packer.repo().seal_blob(BlobKind::Data, job.id, &job.data);
                            drop(job);
                            let result = packer.add(sealed);
                            budget.release(length);
                            if let Err(error) = result {
                                failure.lock().expect("failure lock").get_or_insert(error);
                            }
                        }
                    })
                    .expect("spawning a sealing thread"),
            );
        }
        Pipeline {
            files: Some(file_sender),
            threads,
            failure,
            bytes_read,
        }
    }

    fn submit(&self, file: File, size: u64, path: PathBuf) -> Result<Receiver<FileOutcome>> {
        if let Some(error) = self.failure.lock().expect("failure lock").take() {
            return Err(error);
        }
        let (reply, outcome) = channel();
        let job = FileJob {
            file,
            size,
            path,
            reply,
        };
        self.files
            .as_ref()
            .expect("pipeline running")
            .send(job)
            .map_err(|_| Error::Other("the reader threads stopped".into()))?;
        Ok(outcome)
    }

    /// Waits for every queued chunk to be sealed and handed to the packer.
    fn stop(&mut self) -> Result<()> {
        // Closing the file queue ends the readers, whose exit closes the seal queue.
        self.files.take();
        for thread in self.threads.drain(..) {
            thread
                .join()
                .map_err(|_| Error::Other("a backup thread panicked".into()))?;
        }
        match self.failure.lock().expect("failure lock").take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.files.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

struct Reader {
    repo: Arc<Repository>,
    packer: Arc<Packer>,
    budget: Arc<ByteBudget>,
    seal: SyncSender<SealJob>,
    tracker: Arc<Tracker>,
    bytes_read: Arc<AtomicU64>,
    cancel: Option<Arc<AtomicBool>>,
}

impl Reader {
    /// Chunks the file's data ranges up to its listed size (holes are never read), stopping at
    /// the next chunk when cancelled.
    fn read_file(&self, job: &FileJob) -> FileOutcome {
        let key = self.repo.key();
        let mut extents: Vec<Extent> = Vec::new();
        let stop = || match &self.cancel {
            Some(cancel) if cancel.load(Ordering::Relaxed) => Err(Error::Cancelled),
            _ => Ok(()),
        };
        let hole = |extents: &mut Vec<Extent>, length: u64| match extents.last_mut() {
            Some(Extent::Hole { hole }) => *hole += length,
            _ => extents.push(Extent::Hole { hole: length }),
        };
        let covered = self
            .repo
            .config()
            .chunker
            .chunk_file(&job.file, job.size, &stop, &mut |piece| {
                let chunk = match piece {
                    Piece::Hole { length, .. } => {
                        hole(&mut extents, length);
                        return Ok(());
                    }
                    Piece::Data(chunk) => chunk,
                };
                let length = chunk.data.len() as u64;
                self.bytes_read.fetch_add(length, Ordering::Relaxed);
                self.tracker.bytes_done.fetch_add(length, Ordering::Relaxed);
                if is_zero(&chunk.data) {
                    // Zeros that may as well be a hole: nothing stored, restored sparse.
                    hole(&mut extents, length);
                    return Ok(());
                }
                let id = key.blob_id(&chunk.data);
                extents.push(Extent::Blob(id));
                if self.packer.claim(&id) {
                    self.budget.acquire(length);
                    if self
                        .seal
                        .send(SealJob {
                            id,
                            data: chunk.data,
                        })
                        .is_err()
                    {
                        self.budget.release(length);
                        return Err(Error::Other("the sealing threads stopped".into()));
                    }
                }
                Ok(())
            })
            .map_err(|error| match error {
                Error::Other(message) => Error::io(&job.path, std::io::Error::other(message)),
                other => other,
            })?;
        self.tracker.files_done.fetch_add(1, Ordering::Relaxed);
        if covered != job.size {
            warn!(message = "file changed size while being backed up", path = %job.path.display(), listed = job.size, covered);
        }
        Ok((extents, covered))
    }
}

fn is_zero(data: &[u8]) -> bool {
    // OR-folding fixed blocks vectorises; an early exit per block still stops soon on data.
    data.chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

struct PendingFile {
    node: usize,
    outcome: Receiver<FileOutcome>,
    result: Option<FileOutcome>,
    path: PathBuf,
    is_new: bool,
}

struct PendingDir {
    number: usize,
    nodes: Vec<Node>,
    files: Vec<PendingFile>,
    subdirs: Vec<(usize, usize)>,
}

impl PendingDir {
    fn ready(&mut self) -> bool {
        self.files.iter_mut().all(|file| {
            if file.result.is_none() {
                match file.outcome.try_recv() {
                    Ok(outcome) => file.result = Some(outcome),
                    Err(TryRecvError::Empty) => return false,
                    Err(TryRecvError::Disconnected) => {
                        file.result = Some(Err(Error::Other("a reader thread stopped".into())));
                    }
                }
            }
            true
        })
    }
}

struct Walker<'a> {
    repo: &'a Arc<Repository>,
    packer: &'a Arc<Packer>,
    pipeline: &'a Pipeline,
    tracker: &'a Arc<Tracker>,
    options: &'a BackupOptions,
    root: &'a RootDir,
    queue: VecDeque<PendingDir>,
    finished: HashMap<usize, Id>,
    next_number: usize,
    pending_nodes: usize,
    summary: BackupSummary,
}

impl Walker<'_> {
    fn report(&mut self, path: &Path, error: &Error) -> Result<()> {
        self.summary.errors += 1;
        warn!(message = "skipping an unreadable entry", path = %path.display(), %error);
        self.tracker.emit(ProgressEvent::Error {
            path: path.display().to_string(),
            message: error.to_string(),
        });
        if self.options.fail_on_unreadable {
            return Err(Error::Other(format!(
                "{}: {error} (and unreadable files are fatal by request)",
                path.display()
            )));
        }
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.options
            .cancel
            .as_ref()
            .is_some_and(|cancel| cancel.load(Ordering::Relaxed))
    }

    /// Lists the directory `dir` (at `rel` below the root, `depth` levels down) and queues its
    /// files, then walks its subdirectories; returns the number under which its tree id will be
    /// recorded in `finished`. The directory's descriptor is closed before its subdirectories
    /// are walked, so that however deep or wide the tree, the walk holds one at a time.
    fn walk_dir(
        &mut self,
        dir: OwnedFd,
        rel: PathBuf,
        depth: usize,
        parent: Option<&Tree>,
    ) -> Result<usize> {
        let number = self.next_number;
        self.next_number += 1;
        let shown = self.root.display(&rel);
        let names = read_names(dir.as_fd(), &shown)?;
        let mut pending = PendingDir {
            number,
            nodes: Vec::new(),
            files: Vec::new(),
            subdirs: Vec::new(),
        };
        let mut subdirs: Vec<(Vec<u8>, Stat)> = Vec::new();
        for name in names {
            if self.cancelled() {
                return Err(Error::Cancelled);
            }
            let child_rel = rel.join(OsStr::from_bytes(&name));
            let path = self.root.display(&child_rel);
            if child_rel.as_os_str().len() > MAX_PATH {
                let error = std::io::Error::other(format!(
                    "a path longer than {MAX_PATH} bytes, which no restore could create; left out"
                ));
                self.report(&path, &Error::io(&path, error))?;
                continue;
            }
            let os_name = OsStr::from_bytes(&name);
            let stat = match statat(&dir, os_name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::NOENT) => continue, // deleted meanwhile
                Err(errno) => {
                    self.report(&path, &Error::io(&path, errno.into()))?;
                    continue;
                }
            };
            let old = parent.and_then(|tree| {
                tree.nodes
                    .binary_search_by(|n| n.name.as_slice().cmp(&name))
                    .ok()
                    .map(|i| &tree.nodes[i])
            });
            let kind = kind_of(&stat);
            match kind {
                NodeKind::Dir => {
                    self.summary.dirs += 1;
                    if !self.options.cross_filesystems && stat.st_dev != self.root.device() {
                        // A mount point: recorded as an empty directory, not descended into.
                        let mut node = node_from(&name, &stat, kind);
                        node.xattrs = xattrs_at(dir.as_fd(), os_name);
                        let mut empty = Tree::default();
                        node.subtree = Some(self.save_tree(&mut empty)?);
                        pending.nodes.push(node);
                        continue;
                    }
                    if depth + 1 > MAX_DEPTH {
                        let error = std::io::Error::other(format!(
                            "directories nested more than {MAX_DEPTH} deep; left out"
                        ));
                        self.report(&path, &Error::io(&path, error))?;
                        continue;
                    }
                    subdirs.push((name, stat));
                }
                NodeKind::File => {
                    let unchanged = old.filter(|old| {
                        old.kind == NodeKind::File
                            && old.size == stat.st_size as u64
                            && old.mtime == stat.st_mtime
                            && old.mtime_nsec == stat.st_mtime_nsec as u32
                            && old.ctime == stat.st_ctime
                            && old.ctime_nsec == stat.st_ctime_nsec as u32
                            && old.inode == stat.st_ino
                            && self.all_stored(&old.content)
                    });
                    if let Some(old) = unchanged {
                        // Same size, times and inode: not read again. ctime changes with any
                        // change of xattrs, owner or mode, so the old node is still exact.
                        let mut node = old.clone();
                        node.links = stat.st_nlink;
                        node.device = stat.st_dev;
                        let size = stat.st_size as u64;
                        self.summary.files_unmodified += 1;
                        self.summary.total_files += 1;
                        self.summary.total_bytes += size;
                        self.tracker.file_done(size);
                        pending.nodes.push(node);
                        continue;
                    }
                    // Opened here, checked to be the very file listed (not a FIFO, device or
                    // symlink swapped in since), and read by a reader thread.
                    let (file, opened) = match open_regular(dir.as_fd(), os_name, stat.st_dev) {
                        Ok(opened)
                            if (opened.1.st_dev, opened.1.st_ino) == (stat.st_dev, stat.st_ino) =>
                        {
                            opened
                        }
                        Ok(_) => {
                            let error = std::io::Error::other(
                                "replaced by another file while being backed up",
                            );
                            self.report(&path, &Error::io(&path, error))?;
                            continue;
                        }
                        Err(Error::Io { source, .. })
                            if source.kind() == std::io::ErrorKind::NotFound =>
                        {
                            continue;
                        }
                        Err(error) => {
                            let error = match error {
                                Error::Io { source, .. } => Error::io(&path, source),
                                other => other,
                            };
                            self.report(&path, &error)?;
                            continue;
                        }
                    };
                    let mut node = node_from(&name, &opened, kind);
                    node.xattrs = xattrs_of(file.as_fd());
                    let outcome =
                        self.pipeline
                            .submit(file, opened.st_size as u64, path.clone())?;
                    pending.files.push(PendingFile {
                        node: pending.nodes.len(),
                        outcome,
                        result: None,
                        path,
                        is_new: old.is_none(),
                    });
                    pending.nodes.push(node);
                }
                _ => {
                    let mut node = node_from(&name, &stat, kind);
                    if kind == NodeKind::Symlink {
                        match rustix::fs::readlinkat(&dir, os_name, Vec::new()) {
                            Ok(target) => node.link_target = target.into_bytes(),
                            Err(Errno::NOENT) => continue,
                            Err(errno) => {
                                self.report(&path, &Error::io(&path, errno.into()))?;
                                continue;
                            }
                        }
                    }
                    node.xattrs = xattrs_at(dir.as_fd(), os_name);
                    self.tracker.file_done(0);
                    pending.nodes.push(node);
                }
            }
        }
        drop(dir);
        for (name, stat) in subdirs {
            if self.cancelled() {
                return Err(Error::Cancelled);
            }
            let child_rel = rel.join(OsStr::from_bytes(&name));
            let path = self.root.display(&child_rel);
            let child = match self.open_subdir(&child_rel, &stat) {
                Ok(child) => child,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    self.report(&path, &Error::io(&path, error))?;
                    continue;
                }
            };
            let mut node = node_from(&name, &stat, NodeKind::Dir);
            node.xattrs = xattrs_of(child.as_fd());
            let old_subtree = match parent
                .and_then(|tree| {
                    tree.nodes
                        .binary_search_by(|n| n.name.as_slice().cmp(&name))
                        .ok()
                        .map(|i| &tree.nodes[i])
                })
                .filter(|n| n.kind == NodeKind::Dir)
                .and_then(|n| n.subtree)
            {
                Some(id) => match self.repo.load_tree(&id) {
                    Ok(tree) => Some(tree),
                    Err(error) => {
                        warn!(message = "cannot read the parent snapshot's tree; reading the directory afresh", path = %path.display(), %error);
                        None
                    }
                },
                None => None,
            };
            match self.walk_dir(child, child_rel, depth + 1, old_subtree.as_ref()) {
                Ok(child) => {
                    pending.subdirs.push((pending.nodes.len(), child));
                    pending.nodes.push(node);
                }
                Err(error @ Error::Io { .. }) => self.report(&path, &error)?,
                Err(error) => return Err(error),
            }
        }
        self.pending_nodes += pending.nodes.len();
        self.queue.push_back(pending);
        self.finish_ready(self.pending_nodes > MAX_PENDING_NODES)?;
        Ok(number)
    }

    /// Opens the subdirectory `rel` from the root (no symlink on the way, nor another filesystem
    /// unless crossing them is asked for) and makes sure it is the directory `listed` described,
    /// not one swapped in since.
    fn open_subdir(&self, rel: &Path, listed: &Stat) -> std::io::Result<OwnedFd> {
        let child = if self.options.cross_filesystems {
            self.root.dir_across_mounts(rel)?
        } else {
            self.root.dir(rel)?
        };
        let opened = rustix::fs::fstat(&child)?;
        if (opened.st_dev, opened.st_ino) != (listed.st_dev, listed.st_ino) {
            return Err(std::io::Error::other(
                "replaced by another directory while being backed up",
            ));
        }
        Ok(child)
    }

    fn all_stored(&self, content: &[Extent]) -> bool {
        let index = self.repo.index();
        content.iter().all(|extent| match extent {
            Extent::Blob(id) => index.contains(id),
            Extent::Hole { .. } => true,
        })
    }

    /// Saves the trees of directories whose files are all read, in walk order (children before
    /// parents). With `wait`, waits for readers until the queue is empty.
    fn finish_ready(&mut self, wait: bool) -> Result<()> {
        while let Some(front) = self.queue.front_mut() {
            if !wait && !front.ready() {
                return Ok(());
            }
            let mut dir = self.queue.pop_front().expect("a front");
            self.pending_nodes -= dir.nodes.len();
            let mut dropped = Vec::new();
            for file in dir.files.drain(..) {
                let outcome = match file.result {
                    Some(outcome) => outcome,
                    None => file
                        .outcome
                        .recv()
                        .unwrap_or_else(|_| Err(Error::Other("a reader thread stopped".into()))),
                };
                match outcome {
                    Ok((content, size)) => {
                        if file.is_new {
                            self.summary.files_new += 1;
                        } else {
                            self.summary.files_changed += 1;
                        }
                        self.summary.total_files += 1;
                        self.summary.total_bytes += size;
                        dir.nodes[file.node].content = content;
                        dir.nodes[file.node].size = size;
                    }
                    Err(error @ Error::Io { .. }) => {
                        self.report(&file.path, &error)?;
                        dropped.push(file.node);
                    }
                    Err(error) => return Err(error),
                }
            }
            for (node, child) in dir.subdirs.drain(..) {
                let id = self
                    .finished
                    .remove(&child)
                    .ok_or_else(|| Error::Other("a subtree was not saved".into()))?;
                dir.nodes[node].subtree = Some(id);
            }
            let mut tree = Tree {
                nodes: Vec::with_capacity(dir.nodes.len()),
            };
            for (position, node) in dir.nodes.into_iter().enumerate() {
                if !dropped.contains(&position) {
                    tree.nodes.push(node);
                }
            }
            let id = self.save_tree(&mut tree)?;
            self.finished.insert(dir.number, id);
        }
        Ok(())
    }

    fn save_tree(&self, tree: &mut Tree) -> Result<Id> {
        save_tree(self.repo, self.packer, tree)
    }
}

/// Stores a directory's tree (unless the repository has it) and returns its id.
fn save_tree(repo: &Repository, packer: &Packer, tree: &mut Tree) -> Result<Id> {
    let bytes = tree.encode();
    if bytes.len() > blob::MAX_BLOB_LENGTH as usize {
        return Err(Error::Other(format!(
            "a directory of {} entries lists {} bytes, more than a blob may hold ({} bytes)",
            tree.nodes.len(),
            bytes.len(),
            blob::MAX_BLOB_LENGTH
        )));
    }
    let key = repo.key();
    let id = key.blob_id(&bytes);
    if packer.claim(&id) {
        packer.add(repo.seal_blob(BlobKind::Tree, id, &bytes))?;
    }
    Ok(id)
}

fn kind_of(stat: &Stat) -> NodeKind {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => NodeKind::Dir,
        FileType::Symlink => NodeKind::Symlink,
        FileType::Fifo => NodeKind::Fifo,
        FileType::Socket => NodeKind::Socket,
        FileType::CharacterDevice => NodeKind::CharDevice,
        FileType::BlockDevice => NodeKind::BlockDevice,
        _ => NodeKind::File,
    }
}

fn node_from(name: &[u8], stat: &Stat, kind: NodeKind) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        mtime: stat.st_mtime,
        mtime_nsec: stat.st_mtime_nsec as u32,
        ctime: stat.st_ctime,
        ctime_nsec: stat.st_ctime_nsec as u32,
        inode: stat.st_ino,
        device: stat.st_dev,
        links: stat.st_nlink,
        size: if kind == NodeKind::File {
            stat.st_size as u64
        } else {
            0
        },
        content: Vec::new(),
        subtree: None,
        link_target: Vec::new(),
        rdev: if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
            stat.st_rdev
        } else {
            0
        },
        xattrs: Vec::new(),
    }
}

/// The extended attributes of an open file or directory.
fn xattrs_of(fd: BorrowedFd<'_>) -> Vec<Xattr> {
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    read_xattrs(Path::new(&proc_path), false)
}

/// The extended attributes of entry `name` of directory `dir` (a symlink, FIFO, socket or
/// device, which cannot be opened for reading), never following it: the directory is reached
/// through its descriptor's `/proc/self/fd` link, the entry with the `l*` calls.
fn xattrs_at(dir: BorrowedFd<'_>, name: &OsStr) -> Vec<Xattr> {
    let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    read_xattrs(&path, true)
}

fn read_xattrs(path: &Path, no_follow: bool) -> Vec<Xattr> {
    let names = if no_follow {
        xattr::list(path)
    } else {
        xattr::list_deref(path)
    };
    let Ok(names) = names else {
        return Vec::new();
    };
    let mut xattrs: Vec<Xattr> = names
        .filter_map(|name| {
            let value = if no_follow {
                xattr::get(path, &name)
            } else {
                xattr::get_deref(path, &name)
            };
            Some(Xattr {
                name: name.as_bytes().to_vec(),
                value: value.ok().flatten()?,
            })
        })
        .collect();
    xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    xattrs
}
