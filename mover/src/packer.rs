//! Saving blobs: sealed blobs go into per-kind packs streamed to temp files; finished packs are
//! uploaded by dedicated threads; their index entries are written only after the upload, in
//! index objects, so a crash never leaves an index naming a missing pack.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tracing::debug;

use crate::backend::Kind;
use crate::blob::{BlobKind, SealedBlob};
use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::index::{IndexFile, IndexPack};
use crate::pack::{FinishedPack, PackWriter};
use crate::repository::Repository;

/// Index objects are written every this many packs, so that a long backup that is interrupted
/// still leaves most of its work indexed and reusable.
const PACKS_PER_INDEX: usize = 32;

#[derive(Debug, Default)]
pub struct PackerStats {
    pub bytes_added: AtomicU64,
    pub data_blobs_added: AtomicU64,
    pub tree_blobs_added: AtomicU64,
}

struct Shared {
    repo: Arc<Repository>,
    pending: Mutex<Vec<IndexPack>>,
    failure: Mutex<Option<Error>>,
    stats: PackerStats,
}

pub struct Packer {
    shared: Arc<Shared>,
    writers: [Mutex<Option<PackWriter>>; 2],
    claimed: Mutex<HashSet<Id>>,
    temp_dir: PathBuf,
    _temp_holder: Option<tempfile::TempDir>,
    upload_queue: Option<SyncSender<FinishedPack>>,
    uploaders: Vec<JoinHandle<()>>,
}

impl Packer {
    pub fn new(repo: Arc<Repository>) -> Result<Packer> {
        let (temp_dir, holder) = match repo.backend().temp_dir() {
            Some(dir) => (dir, None),
            None => {
                let holder = tempfile::Builder::new()
                    .prefix("ferry-packs-")
                    .tempdir()
                    .at(std::env::temp_dir())?;
                (holder.path().to_owned(), Some(holder))
            }
        };
        let shared = Arc::new(Shared {
            repo,
            pending: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            stats: PackerStats::default(),
        });
        // A short queue: finished packs wait on disk, not in memory, and not many of them.
        let (sender, receiver) = sync_channel::<FinishedPack>(2);
        let receiver = Arc::new(Mutex::new(receiver));
        let uploaders = (0..2)
            .map(|n| {
                let shared = shared.clone();
                let receiver = receiver.clone();
                std::thread::Builder::new()
                    .name(format!("ferry-upload-{n}"))
                    .spawn(move || upload_loop(&shared, &receiver))
                    .expect("spawning an upload thread")
            })
            .collect();
        Ok(Packer {
            shared,
            writers: [Mutex::new(None), Mutex::new(None)],
            claimed: Mutex::new(HashSet::new()),
            temp_dir,
            _temp_holder: holder,
            upload_queue: Some(sender),
            uploaders,
        })
    }

    pub fn repo(&self) -> &Arc<Repository> {
        &self.shared.repo
    }

    pub fn stats(&self) -> &PackerStats {
        &self.shared.stats
    }

    /// True when the caller should store blob `id`: neither the repository nor this packer has it
    /// yet. A true answer is given once per id, so concurrent workers never store a blob twice.
    pub fn claim(&self, id: &Id) -> bool {
        if self.shared.repo.index().contains(id) {
            return false;
        }
        self.claimed.lock().expect("claim lock").insert(*id)
    }

    pub fn add(&self, blob: SealedBlob) -> Result<()> {
        self.check_failure()?;
        let slot = match blob.kind {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        };
        let full = {
            let mut writer = self.writers[slot].lock().expect("pack writer lock");
            if writer.is_none() {
                *writer = Some(PackWriter::new(&self.temp_dir, blob.kind)?);
            }
            let current = writer.as_mut().expect("just created");
            current.add(&blob)?;
            let stats = &self.shared.stats;
            stats
                .bytes_added
                .fetch_add(blob.bytes.len() as u64, Ordering::Relaxed);
            match blob.kind {
                BlobKind::Data => stats.data_blobs_added.fetch_add(1, Ordering::Relaxed),
                BlobKind::Tree => stats.tree_blobs_added.fetch_add(1, Ordering::Relaxed),
            };
            if current.size() >= self.shared.repo.config().pack_size {
                writer.take()
            } else {
                None
            }
        };
        if let Some(writer) = full {
            self.send(writer)?;
        }
        Ok(())
    }

    fn send(&self, writer: PackWriter) -> Result<()> {
        let finished = writer.finish(self.shared.repo.key())?;
        let queue = self.upload_queue.as_ref().expect("the packer is open");
        queue
            .send(finished)
            .map_err(|_| Error::Other("the upload threads stopped".into()))?;
        self.check_failure()
    }

    fn check_failure(&self) -> Result<()> {
        match self.shared.failure.lock().expect("failure lock").take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Uploads what is left and writes the remaining index entries. Returns once every blob added
    /// is stored and indexed.
    pub fn finish(mut self) -> Result<()> {
        for slot in &self.writers {
            let writer = slot.lock().expect("pack writer lock").take();
            if let Some(writer) = writer.filter(|w| !w.is_empty()) {
                self.send(writer)?;
            }
        }
        drop(self.upload_queue.take());
        for uploader in self.uploaders.drain(..) {
            uploader
                .join()
                .map_err(|_| Error::Other("an upload thread panicked".into()))?;
        }
        self.check_failure()?;
        flush_index(&self.shared, true)
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        drop(self.upload_queue.take());
        for uploader in self.uploaders.drain(..) {
            let _ = uploader.join();
        }
    }
}

fn upload_loop(shared: &Shared, receiver: &Mutex<Receiver<FinishedPack>>) {
    loop {
        let next = receiver.lock().expect("upload queue lock").recv();
        let Ok(pack) = next else { return };
        let result = upload(shared, &pack);
        if let Err(error) = result {
            let _ = std::fs::remove_file(&pack.path);
            let mut failure = shared.failure.lock().expect("failure lock");
            failure.get_or_insert(error);
        }
    }
}

fn upload(shared: &Shared, pack: &FinishedPack) -> Result<()> {
    shared
        .repo
        .backend()
        .put_file(Kind::Pack, &pack.id.to_hex(), &pack.path)?;
    debug!(message = "pack stored", pack = %pack.id.short(), size = pack.size, blobs = pack.entries.len());
    shared.stats.bytes_added.fetch_add(
        pack.size - pack.entries.iter().map(|e| e.length as u64).sum::<u64>(),
        Ordering::Relaxed,
    );
    let index_pack = IndexPack::new(pack.id, pack.size, &pack.entries);
    shared
        .repo
        .index
        .write()
        .expect("index lock")
        .add_pack(&index_pack)?;
    shared
        .pending
        .lock()
        .expect("pending lock")
        .push(index_pack);
    flush_index(shared, false)
}

fn flush_index(shared: &Shared, everything: bool) -> Result<()> {
    let packs = {
        let mut pending = shared.pending.lock().expect("pending lock");
        if pending.is_empty() || (!everything && pending.len() < PACKS_PER_INDEX) {
            return Ok(());
        }
        std::mem::take(&mut *pending)
    };
    shared
        .repo
        .save_index_file(&IndexFile { version: 1, packs })?;
    Ok(())
}
