//! Backup of a directory.
//!
//! The walker (the calling thread) lists directories and stats entries; a file whose size, mtime,
//! ctime and inode match the parent snapshot is not read at all. Other files go to reader threads
//! that chunk and hash them; chunks the repository lacks go to sealing threads (compression and
//! encryption); sealed blobs go to the packer, whose threads upload finished packs. A byte budget
//! between readers and sealers bounds memory whatever the data size, and one huge file is sealed
//! by every core at once since its chunks are sealed independently.

use std::collections::{HashMap, VecDeque};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use crate::blob::{self, BlobKind};
use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::lock::RepoLock;
use crate::packer::Packer;
use crate::progress::{ProgressEvent, ProgressSink, Tracker};
use crate::repository::Repository;
use crate::snapshot::{BackupSummary, Snapshot};
use crate::tree::{Extent, Node, NodeKind, Tree, Xattr};
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
    /// Set to stop the backup: it ends with [`Error::Cancelled`] at the next file, writing no
    /// snapshot (the packs already written are reclaimed by prune).
    pub cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
}

#[derive(Debug, Clone)]
pub struct BackupOutcome {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
}

/// Nodes held for directories whose files are still being read; past this, the walker waits for
/// readers rather than run ahead, so memory stays bounded on huge trees.
const MAX_PENDING_NODES: usize = 50_000;

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
    let _lock = RepoLock::acquire(repo, false, Duration::ZERO)?;
    let hostname = options.host.clone().unwrap_or_else(crate::util::hostname);
    let source_text = source.to_string_lossy().into_owned();
    let parent = match &options.parent {
        ParentChoice::None => None,
        ParentChoice::Snapshot(spec) => Some(repo.find_snapshot(spec)?),
        ParentChoice::Latest => repo
            .snapshots()?
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
    if tracker.wants_events() {
        spawn_scanner(source.clone(), tracker.clone(), !options.cross_filesystems);
    }

    let packer = Arc::new(Packer::new(repo.clone())?);
    let mut pipeline = Pipeline::start(repo, &packer, workers, &tracker);
    let mut walker = Walker {
        repo,
        packer: &packer,
        pipeline: &pipeline,
        tracker: &tracker,
        options,
        root_device: root_meta.dev(),
        queue: VecDeque::new(),
        finished: HashMap::new(),
        next_number: 0,
        pending_nodes: 0,
        summary: BackupSummary::default(),
    };
    let walked = walker
        .walk_dir(&source, parent_tree.as_ref())
        .and_then(|root| {
            walker.finish_ready(true)?;
            walker
                .finished
                .remove(&root)
                .ok_or_else(|| Error::Other("the root tree was not saved".into()))
        });
    let mut summary = std::mem::take(&mut walker.summary);
    let pipeline_result = pipeline.stop();
    let root_tree = walked?;
    pipeline_result?;
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
        source: source_text,
        hostname,
        username: crate::util::username(),
        tags: options.tags.clone(),
        parent: parent.map(|(id, _)| id),
        summary,
    };
    let snapshot_id = repo.save_snapshot(&snapshot)?;
    Ok(BackupOutcome {
        snapshot_id,
        snapshot,
    })
}

/// Counts files and bytes ahead of the backup so that progress can show an ETA; only when
/// someone listens.
fn spawn_scanner(root: PathBuf, tracker: Arc<Tracker>, one_file_system: bool) {
    std::thread::spawn(move || {
        let device = std::fs::symlink_metadata(&root)
            .map(|m| m.dev())
            .unwrap_or(0);
        let (mut files, mut bytes) = (0u64, 0u64);
        let mut dirs = vec![root];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    if !one_file_system || meta.dev() == device {
                        dirs.push(entry.path());
                    }
                } else {
                    files += 1;
                    if meta.is_file() {
                        bytes += meta.len();
                    }
                }
            }
        }
        tracker.total_files.store(files, Ordering::Relaxed);
        tracker.total_bytes.store(bytes, Ordering::Relaxed);
        tracker.emit(ProgressEvent::Totals { files, bytes });
    });
}

/// The file's content and how many bytes it held when read.
type FileOutcome = Result<(Vec<Extent>, u64)>;

struct FileJob {
    path: PathBuf,
    expected_inode: u64,
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
    ) -> Pipeline {
        let max_chunk = repo.config().chunker.max_size as u64;
        // Enough for every sealing thread to have work queued, and little more.
        let budget = Arc::new(ByteBudget::new(
            (4 * workers as u64 * max_chunk).max(8 * 1024 * 1024),
        ));
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
            };
            let receiver = file_receiver.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ferry-read-{n}"))
                    .spawn(move || {
                        loop {
                            let job = receiver.lock().expect("file queue lock").recv();
                            let Ok(job) = job else { return };
                            let outcome = reader.read_file(&job.path, job.expected_inode);
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
            let level = repo.config().zstd_level;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ferry-seal-{n}"))
                    .spawn(move || {
                        loop {
                            let job = receiver.lock().expect("seal queue lock").recv();
                            let Ok(job) = job else { return };
                            let length = job.data.len() as u64;
                            let sealed = blob::seal(
                                packer.repo().key(),
                                BlobKind::Data,
                                job.id,
                                &job.data,
                                level,
                            );
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

    fn submit(&self, path: PathBuf, expected_inode: u64) -> Result<Receiver<FileOutcome>> {
        if let Some(error) = self.failure.lock().expect("failure lock").take() {
            return Err(error);
        }
        let (reply, outcome) = channel();
        let job = FileJob {
            path,
            expected_inode,
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
}

impl Reader {
    fn read_file(&self, path: &Path, expected_inode: u64) -> FileOutcome {
        // O_NOFOLLOW: a file swapped for a symlink since it was listed is not followed.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .at(path)?;
        let meta = file.metadata().at(path)?;
        if !meta.is_file() || meta.ino() != expected_inode {
            return Err(Error::io(
                path,
                std::io::Error::other("replaced by another file while being backed up"),
            ));
        }
        let key = self.repo.key();
        let mut extents: Vec<Extent> = Vec::new();
        let mut read = 0u64;
        for chunk in self
            .repo
            .config()
            .chunker
            .chunks(std::io::BufReader::with_capacity(256 * 1024, file))
        {
            let chunk = chunk.at(path)?;
            let length = chunk.data.len() as u64;
            read += length;
            self.bytes_read.fetch_add(length, Ordering::Relaxed);
            self.tracker.bytes_done.fetch_add(length, Ordering::Relaxed);
            if is_zero(&chunk.data) {
                // A hole, or zeros that may as well be one: nothing stored, restored sparse.
                match extents.last_mut() {
                    Some(Extent::Hole { hole }) => *hole += length,
                    _ => extents.push(Extent::Hole { hole: length }),
                }
                continue;
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
        }
        self.tracker.files_done.fetch_add(1, Ordering::Relaxed);
        if read != meta.len() {
            warn!(message = "file changed size while being backed up", path = %path.display(), listed = meta.len(), read);
        }
        Ok((extents, read))
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
    root_device: u64,
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

    /// Lists `dir` and queues its files; returns the number under which its tree id will be
    /// recorded in `finished`.
    fn walk_dir(&mut self, dir: &Path, parent: Option<&Tree>) -> Result<usize> {
        let number = self.next_number;
        self.next_number += 1;
        let mut entries: Vec<(Vec<u8>, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            entries.push((entry.file_name().as_bytes().to_vec(), entry.path()));
        }
        entries.sort();
        let mut pending = PendingDir {
            number,
            nodes: Vec::new(),
            files: Vec::new(),
            subdirs: Vec::new(),
        };
        for (name, path) in entries {
            if self
                .options
                .cancel
                .as_ref()
                .is_some_and(|cancel| cancel.load(Ordering::Relaxed))
            {
                return Err(Error::Cancelled);
            }
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue, // deleted meanwhile
                Err(error) => {
                    self.report(&path, &Error::io(&path, error))?;
                    continue;
                }
            };
            let old = parent.and_then(|tree| {
                tree.nodes
                    .binary_search_by(|n| n.name.as_slice().cmp(&name))
                    .ok()
                    .map(|i| &tree.nodes[i])
            });
            let kind = kind_of(&meta);
            match kind {
                NodeKind::Dir => {
                    let mut node = node_from(&name, &meta, kind, &path);
                    self.summary.dirs += 1;
                    if !self.options.cross_filesystems && meta.dev() != self.root_device {
                        // A mount point: recorded as an empty directory, not descended into.
                        let mut empty = Tree::default();
                        node.subtree = Some(self.save_tree(&mut empty)?);
                        pending.nodes.push(node);
                        continue;
                    }
                    let old_subtree = match old
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
                    match self.walk_dir(&path, old_subtree.as_ref()) {
                        Ok(child) => {
                            pending.subdirs.push((pending.nodes.len(), child));
                            pending.nodes.push(node);
                        }
                        Err(error @ Error::Io { .. }) => self.report(&path, &error)?,
                        Err(error) => return Err(error),
                    }
                }
                NodeKind::File => {
                    let unchanged = old.filter(|old| {
                        old.kind == NodeKind::File
                            && old.size == meta.len()
                            && old.mtime == meta.mtime()
                            && old.mtime_nsec == meta.mtime_nsec() as u32
                            && old.ctime == meta.ctime()
                            && old.ctime_nsec == meta.ctime_nsec() as u32
                            && old.inode == meta.ino()
                            && self.all_stored(&old.content)
                    });
                    if let Some(old) = unchanged {
                        // Same size, times and inode: not read again. ctime changes with any
                        // change of xattrs, owner or mode, so the old node is still exact.
                        let mut node = old.clone();
                        node.links = meta.nlink();
                        node.device = meta.dev();
                        self.summary.files_unmodified += 1;
                        self.summary.total_files += 1;
                        self.summary.total_bytes += meta.len();
                        self.tracker.file_done(meta.len());
                        pending.nodes.push(node);
                        continue;
                    }
                    let node = node_from(&name, &meta, kind, &path);
                    let outcome = self.pipeline.submit(path.clone(), meta.ino())?;
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
                    let mut node = node_from(&name, &meta, kind, &path);
                    if kind == NodeKind::Symlink {
                        match std::fs::read_link(&path) {
                            Ok(target) => node.link_target = target.as_os_str().as_bytes().to_vec(),
                            Err(error) => {
                                self.report(&path, &Error::io(&path, error))?;
                                continue;
                            }
                        }
                    }
                    self.tracker.file_done(0);
                    pending.nodes.push(node);
                }
            }
        }
        self.pending_nodes += pending.nodes.len();
        self.queue.push_back(pending);
        self.finish_ready(self.pending_nodes > MAX_PENDING_NODES)?;
        Ok(number)
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
        let bytes = tree.encode();
        let key = self.repo.key();
        let id = key.blob_id(&bytes);
        if self.packer.claim(&id) {
            self.packer.add(blob::seal(
                key,
                BlobKind::Tree,
                id,
                &bytes,
                self.repo.config().zstd_level,
            ))?;
        }
        Ok(id)
    }
}

fn kind_of(meta: &Metadata) -> NodeKind {
    use std::os::unix::fs::FileTypeExt;
    let file_type = meta.file_type();
    if file_type.is_dir() {
        NodeKind::Dir
    } else if file_type.is_symlink() {
        NodeKind::Symlink
    } else if file_type.is_fifo() {
        NodeKind::Fifo
    } else if file_type.is_socket() {
        NodeKind::Socket
    } else if file_type.is_char_device() {
        NodeKind::CharDevice
    } else if file_type.is_block_device() {
        NodeKind::BlockDevice
    } else {
        NodeKind::File
    }
}

fn node_from(name: &[u8], meta: &Metadata, kind: NodeKind, path: &Path) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec() as u32,
        ctime: meta.ctime(),
        ctime_nsec: meta.ctime_nsec() as u32,
        inode: meta.ino(),
        device: meta.dev(),
        links: meta.nlink(),
        size: if kind == NodeKind::File {
            meta.len()
        } else {
            0
        },
        content: Vec::new(),
        subtree: None,
        link_target: Vec::new(),
        rdev: if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
            meta.rdev()
        } else {
            0
        },
        xattrs: read_xattrs(path),
    }
}

fn read_xattrs(path: &Path) -> Vec<Xattr> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut xattrs: Vec<Xattr> = names
        .filter_map(|name| {
            let value = xattr::get(path, &name).ok().flatten()?;
            Some(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            })
        })
        .collect();
    xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    xattrs
}
