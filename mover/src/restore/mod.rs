//! Restore of a snapshot into a directory, in four steps, each in its own file:
//!
//! 1. [`plan`]: the snapshot's entries, and (for an incremental restore) [`scan`] of what the
//!    target holds, make a [`plan::RestorePlan`]: every directory to make, every file to write
//!    (in place, or to a temp file renamed at the end), every blob and every place it goes,
//!    which blobs come from the target itself and which from the repository. Planning changes
//!    nothing.
//! 2. [`write`] prepares the target (directories, files sized first so that holes stay holes)
//!    and writes the data: chunks found in the target are copied locally, the others fetched
//!    pack by pack, nearby blobs of one pack coalesced into one ranged read, by several workers
//!    at once; each blob is verified against its id and written with positioned writes.
//! 3. [`finish`] moves temp files into place, makes hard links and special files, restores
//!    metadata (directories deepest first) and removes what the snapshot lacks (`delete`); then
//!    it is all made durable (`syncfs`) before returning.
//!
//! Nothing is written outside the target, and nothing outside it is read: the target is opened
//! once ([`RootDir`]) and every path below it is resolved by the kernel with no symlink, no `..`
//! and no other filesystem on the way; names from the snapshot are single path components
//! (`..`, `/` and empty names are refused); files are opened with `O_NOFOLLOW`, scanned files
//! only once they are known to be regular files; a symlink found where the snapshot has a
//! directory is replaced, never followed. Device nodes and privileges (setuid/setgid bits,
//! `security.*` and `trusted.*` attributes) are restored only when asked for.

mod finish;
mod image;
mod plan;
mod scan;
mod write;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::lock::RepoLock;
use crate::progress::{ProgressSink, Tracker};
use crate::repository::Repository;
use crate::root_dir::RootDir;
use crate::tree::NodeKind;
use crate::util::available_cores;

pub use image::restore_image;

#[derive(Clone, Default)]
pub struct RestoreOptions {
    /// Reuse what the target already holds; download only what is missing.
    pub incremental: bool,
    /// Remove what the target holds that the snapshot does not.
    pub delete: bool,
    /// With `incremental`: read back and hash every file of the target, even one whose size and
    /// mtime match the snapshot's (which is otherwise trusted to hold the snapshot's content, as
    /// rsync trusts it). For a target whose files may have been changed with their mtime put
    /// back.
    pub verify: bool,
    pub workers: Option<usize>,
    pub progress: Option<Arc<dyn ProgressSink>>,
    /// Set to stop the restore: it ends with [`Error::Cancelled`] between its steps or at the
    /// next chunk it scans, leaving the target partly restored.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Create the snapshot's device nodes. Off by default: a device node from a pod's volume,
    /// created on a node, would give whoever can open it that device.
    pub devices: bool,
    /// Restore privileges: setuid and setgid bits, and the extended attributes that grant or
    /// label (file capabilities and every other `security.*` and `trusted.*` attribute). Off by
    /// default, for the same reason: a pod could otherwise plant a privileged program, or a label
    /// of its choosing, on a node.
    pub privileges: bool,
    /// Make everything written durable (`syncfs` of the target's filesystem) before returning,
    /// so that a completion marker written afterwards never outlives the data after a crash.
    pub sync: bool,
    /// How long to wait for another process's conflicting lock (a prune's exclusive one) before
    /// giving up; none by default.
    pub lock_wait: Duration,
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
    /// Device nodes not created, and privileges (setuid/setgid bits, security and trusted
    /// attributes) not restored, because not asked for.
    pub skipped: u64,
    /// Files whose content could not be restored (damaged or missing blobs), relative to the target.
    pub damaged_files: Vec<String>,
}

/// How long each step of a restore took, logged at debug level at its end (`RUST_LOG=debug`):
/// where a restore's time goes, for the benchmarks.
struct Phases {
    last: std::time::Instant,
    took: Vec<(&'static str, f64)>,
}

impl Phases {
    fn start() -> Phases {
        Phases {
            last: std::time::Instant::now(),
            took: Vec::new(),
        }
    }

    fn end(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.took
            .push((phase, now.duration_since(self.last).as_secs_f64()));
        self.last = now;
    }

    fn log(&self) {
        let phases: Vec<String> = self
            .took
            .iter()
            .map(|(phase, seconds)| format!("{phase}={seconds:.3}s"))
            .collect();
        tracing::debug!(message = "restore phases", phases = %phases.join(" "));
    }
}

pub fn restore(
    repo: &Arc<Repository>,
    snapshot: &str,
    target: &Path,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    let (_, snapshot) = repo.find_snapshot(snapshot)?;
    restore_tree(repo, &snapshot.tree, target, options)
}

/// Restores `tree` into the directory `target`, created if missing.
pub fn restore_tree(
    repo: &Arc<Repository>,
    tree: &Id,
    target: &Path,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    std::fs::create_dir_all(target).at(target)?;
    restore_into(repo, tree, &RootDir::open(target)?, options)
}

/// Restores `tree` into a directory opened by the caller (the node agent opens a pod volume's
/// directory itself).
pub fn restore_into(
    repo: &Arc<Repository>,
    tree: &Id,
    root: &RootDir,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    let lock = RepoLock::acquire(repo, false, options.lock_wait)?;
    // Packs may have been repacked by a prune since the index was read.
    repo.refresh_index()?;
    let tracker = Tracker::new(options.progress.clone());
    let ticker = tracker.start_ticker(Duration::from_millis(250));
    let workers = options.workers.unwrap_or_else(available_cores).max(1);
    let cancelled = || {
        if options
            .cancel
            .as_ref()
            .is_some_and(|cancel| cancel.load(Ordering::Relaxed))
        {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    };

    let mut phases = Phases::start();
    let entries = plan::collect(repo, tree)?;
    phases.end("read_trees");
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
    let scan = if options.incremental {
        scan::scan_target(repo, root, &entries, workers, options.verify, &cancelled)?
    } else {
        scan::TargetScan::default()
    };
    phases.end("scan");
    let mut plan = plan::RestorePlan::new(entries, scan, &repo.index(), options.incremental);
    cancelled()?;
    phases.end("plan");

    let mut summary = RestoreSummary {
        dirs: plan.dirs.len() as u64,
        files_unchanged: plan.files_unchanged,
        bytes_reused: plan.bytes_reused,
        ..Default::default()
    };
    write::prepare(root, &mut plan)?;
    phases.end("prepare");
    // Downloads run with twice as many workers as cores: they mostly wait for the store.
    let io_workers = options
        .workers
        .unwrap_or_else(|| (2 * available_cores()).max(4));
    let counters = write::write_data(repo, root, &mut plan, io_workers, &tracker, &cancelled)?;
    phases.end("write");
    finish::finish(root, &plan, options, &mut summary, &tracker)?;
    phases.end("finish");
    if options.sync {
        root.sync_filesystem()?;
    }
    phases.end("sync");
    phases.log();
    summary.bytes_written = counters.written.load(Ordering::Relaxed);
    summary.bytes_downloaded = counters.downloaded.load(Ordering::Relaxed);
    summary.bytes_reused += counters.reused.load(Ordering::Relaxed);
    summary.damaged_files.sort();
    // A restore reads packs; a prune that ignored this lock could have deleted some under it.
    lock.check_held()?;
    tracker.finish(ticker);
    Ok(summary)
}
