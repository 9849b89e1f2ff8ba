//! Repository locks. Backups, restores, checks and forgets take shared locks; prune takes an
//! exclusive one, so that it never deletes a blob a running backup has just deduplicated against.
//!
//! A lock is an encrypted object in `locks/`, rewritten every few minutes while held. Whether a
//! lock is abandoned is judged by the store's clock alone, never by comparing a writer's clock
//! with a reader's: the judge writes an object of its own first and compares the LastModified the
//! store gave each lock with the one it gave that object. A lock the store has not seen rewritten
//! for [`LockTiming::stale_after`] is stale; so is one whose process is gone, when the judge runs
//! in the same boot and pid namespace as its holder (a SIGKILLed backup on this machine).
//!
//! A lock that cannot be read is not a stale one: a read that fails for any reason but "not found"
//! stops the judge, and a lock object that is there but cannot be decoded counts as held by
//! somebody until the store has not seen it rewritten for `stale_after`.
//!
//! A holder that cannot rewrite its lock keeps trying, and once its lock has gone unrefreshed for
//! [`LockTiming::give_up_after`] (well before anyone may judge it stale) [`RepoLock::check_held`]
//! fails, so that no snapshot is written under a lock a prune may already have ignored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::backend::{Kind, ObjectInfo};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::Repository;

/// How often locks are rewritten and when they count as abandoned. Every process sharing a
/// repository must use the same `stale_after`; the others are the holder's own business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTiming {
    /// A held lock is rewritten this often.
    pub refresh_every: Duration,
    /// After a failed rewrite, the next attempt comes this soon.
    pub retry_every: Duration,
    /// A lock the store has not seen rewritten for this long is abandoned.
    pub stale_after: Duration,
    /// A holder whose lock has gone this long without a successful rewrite stops: well before
    /// `stale_after`, so that nobody can have judged it abandoned yet.
    pub give_up_after: Duration,
}

impl Default for LockTiming {
    fn default() -> Self {
        LockTiming {
            refresh_every: Duration::from_secs(5 * 60),
            retry_every: Duration::from_secs(20),
            stale_after: Duration::from_secs(30 * 60),
            give_up_after: Duration::from_secs(15 * 60),
        }
    }
}

/// What a lock object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    /// The holder's clock when it last wrote the lock: shown to people, never used to judge age.
    pub time: jiff::Timestamp,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: u32,
    /// The kernel boot and pid namespace the pid belongs to. A pid says whether its process still
    /// runs only to a judge in the same boot and namespace (two containers may share a host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_scope: Option<String>,
}

impl LockInfo {
    fn of_this_process(exclusive: bool) -> LockInfo {
        LockInfo {
            time: jiff::Timestamp::now(),
            exclusive,
            hostname: crate::util::hostname(),
            username: crate::util::username(),
            pid: std::process::id(),
            process_scope: process_scope(),
        }
    }

    /// Decodes a lock object's plaintext.
    pub fn decode(bytes: &[u8]) -> Result<LockInfo> {
        serde_json::from_slice(bytes).map_err(|error| Error::Format(format!("lock: {error}")))
    }

    /// Whether the holder is known to be gone: it ran in this very boot and pid namespace, and
    /// its pid runs no more.
    fn holder_is_gone(&self) -> bool {
        self.process_scope.is_some()
            && self.process_scope == process_scope()
            && self.hostname == crate::util::hostname()
            && !process_exists(self.pid)
    }

    fn describe(&self) -> String {
        format!(
            "{} lock of pid {} on {} (user {}, written at {} by its clock)",
            if self.exclusive {
                "an exclusive"
            } else {
                "a shared"
            },
            self.pid,
            self.hostname,
            self.username,
            self.time
        )
    }
}

/// `<boot id>/<pid namespace>` of this process, when the kernel tells.
fn process_scope() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}/{}", boot.trim(), namespace.display()))
}

fn process_exists(pid: u32) -> bool {
    match rustix::process::Pid::from_raw(pid as i32) {
        Some(pid) => match rustix::process::test_kill_process(pid) {
            Ok(()) => true,
            Err(errno) => errno != rustix::io::Errno::SRCH,
        },
        None => false,
    }
}

/// What a judge concluded about one lock object.
enum Verdict {
    /// Deleted since it was listed.
    Gone,
    /// Abandoned: no live holder can be relying on it.
    Stale,
    /// Held. `None` when the object cannot be decoded: held by somebody unknown, which conflicts
    /// with every lock.
    Held(Option<LockInfo>),
}

fn judge(
    repo: &Repository,
    object: &ObjectInfo,
    store_now: SystemTime,
    timing: &LockTiming,
) -> Result<Verdict> {
    // A LastModified ahead of the judge's own object (or missing) is not old.
    let abandoned = object
        .modified
        .and_then(|modified| store_now.duration_since(modified).ok())
        .is_some_and(|age| age > timing.stale_after);
    let decoded = repo
        .get_object(Kind::Lock, &object.name)
        .and_then(|bytes| LockInfo::decode(&bytes));
    Ok(match decoded {
        Err(Error::NotFound { .. }) => Verdict::Gone,
        Err(error @ (Error::Corrupt { .. } | Error::Format(_))) => {
            if abandoned {
                Verdict::Stale
            } else {
                warn!(message = "a lock object cannot be decoded; it counts as held until the store has not seen it rewritten for the stale period", lock = %object.name, %error);
                Verdict::Held(None)
            }
        }
        Err(error) => {
            return Err(error.context(format!(
                "reading lock {} (an unreadable lock is not a stale one)",
                Kind::Lock.path_of(&object.name)
            )));
        }
        Ok(info) if abandoned || info.holder_is_gone() => Verdict::Stale,
        Ok(info) => Verdict::Held(Some(info)),
    })
}

/// The store's clock: the LastModified it gave the object `own` that this process has just
/// written, found in `listing`.
fn store_time_of(listing: &[ObjectInfo], own: &str) -> SystemTime {
    match listing
        .iter()
        .find(|object| object.name == own)
        .and_then(|o| o.modified)
    {
        Some(modified) => modified,
        None => {
            // The store lists no time for an object just written: fall back to this clock; a
            // lock then looks younger or older by the skew, which only `stale_after` absorbs.
            warn!(
                message = "the store gave no modification time for a lock just written; judging lock ages by this machine's clock"
            );
            SystemTime::now()
        }
    }
}

/// Liveness of a held lock, shared with its refresher thread.
struct Health {
    last_refresh: Mutex<Instant>,
    lost: Mutex<Option<String>>,
}

/// A held lock; released when dropped.
pub struct RepoLock {
    repo: Arc<Repository>,
    name: String,
    timing: LockTiming,
    /// The store's clock when the lock was taken, and this process's clock at the same moment.
    store_time_at_acquire: SystemTime,
    acquired: Instant,
    health: Arc<Health>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    refresher: Option<std::thread::JoinHandle<()>>,
    released: AtomicBool,
}

impl RepoLock {
    /// Takes a lock, waiting up to `wait` for conflicting ones to go away.
    pub fn acquire(repo: &Arc<Repository>, exclusive: bool, wait: Duration) -> Result<RepoLock> {
        let deadline = Instant::now() + wait;
        loop {
            match RepoLock::try_acquire(repo, exclusive) {
                Err(error @ Error::Locked { .. }) if Instant::now() < deadline => {
                    debug!(message = "waiting for a lock", %error);
                    std::thread::sleep(Duration::from_millis(500).min(deadline - Instant::now()));
                }
                other => return other,
            }
        }
    }

    fn try_acquire(repo: &Arc<Repository>, exclusive: bool) -> Result<RepoLock> {
        let timing = repo.lock_timing();
        let name = Id::random().to_hex();
        let info = LockInfo::of_this_process(exclusive);
        let acquired = Instant::now();
        repo.put_json(Kind::Lock, &name, &info)?;
        // Written first, then every other lock judged against the time the store gave ours. Two
        // writers checking at once each see the other's lock and both back off, rather than both
        // proceed.
        let store_time = match conflicting(repo, exclusive, &name, &timing) {
            Ok(store_time) => store_time,
            Err(error) => {
                if let Err(delete_error) = repo.backend().delete(Kind::Lock, &name) {
                    warn!(message = "cannot remove a lock just given up", lock = %name, error = %delete_error);
                }
                return Err(error);
            }
        };
        let health = Arc::new(Health {
            last_refresh: Mutex::new(acquired),
            lost: Mutex::new(None),
        });
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let refresher = {
            let repo = repo.clone();
            let name = name.clone();
            let stop = stop.clone();
            let health = health.clone();
            std::thread::Builder::new()
                .name("ferry-lock".into())
                .spawn(move || refresh_loop(&repo, &name, info, timing, &stop, &health))
                .map_err(|error| Error::Other(format!("starting the lock refresher: {error}")))?
        };
        Ok(RepoLock {
            repo: repo.clone(),
            name,
            timing,
            store_time_at_acquire: store_time,
            acquired,
            health,
            stop,
            refresher: Some(refresher),
            released: AtomicBool::new(false),
        })
    }

    /// Fails when the lock can no longer be relied on: it went unrefreshed for
    /// [`LockTiming::give_up_after`], or somebody removed it. Called before every write that
    /// depends on the lock (a snapshot, a prune's deletions).
    pub fn check_held(&self) -> Result<()> {
        if let Some(reason) = self.health.lost.lock().expect("lock health").clone() {
            return Err(Error::LockLost { reason });
        }
        let unrefreshed = self
            .health
            .last_refresh
            .lock()
            .expect("lock health")
            .elapsed();
        if unrefreshed > self.timing.give_up_after {
            return Err(Error::LockLost {
                reason: format!(
                    "it could not be rewritten for {} s (the store refused or did not answer); another process may judge it abandoned",
                    unrefreshed.as_secs()
                ),
            });
        }
        Ok(())
    }

    /// The store's clock now, as far as this process can tell: the time the store gave the lock
    /// when it was taken, plus the time elapsed here since.
    pub fn store_time(&self) -> SystemTime {
        self.store_time_at_acquire + self.acquired.elapsed()
    }

    pub fn release(&self) {
        if self.released.swap(true, Ordering::SeqCst) {
            return;
        }
        *self.stop.0.lock().expect("lock refresher") = true;
        self.stop.1.notify_all();
        if let Err(error) = self.repo.backend().delete(Kind::Lock, &self.name) {
            warn!(message = "cannot remove the repository lock", %error);
        }
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        self.release();
        if let Some(refresher) = self.refresher.take() {
            let _ = refresher.join();
        }
    }
}

/// Rewrites the lock every `refresh_every` (every `retry_every` after a failure) until stopped;
/// marks it lost when its object disappeared.
fn refresh_loop(
    repo: &Repository,
    name: &str,
    info: LockInfo,
    timing: LockTiming,
    stop: &(Mutex<bool>, Condvar),
    health: &Health,
) {
    let (stopped, signal) = stop;
    let mut guard = stopped.lock().expect("lock refresher");
    let mut wait = timing.refresh_every;
    loop {
        // Checked before every wait: a release that came before this thread first took the mutex
        // has already notified, and must not be waited for again.
        if *guard {
            return;
        }
        let (next, timeout) = signal.wait_timeout(guard, wait).expect("lock refresher");
        guard = next;
        if *guard {
            return;
        }
        if !timeout.timed_out() {
            continue;
        }
        // Only an abandoned-looking lock is ever removed by others, and this holder gives up long
        // before that; a lock gone anyway means somebody may be pruning: never write it back.
        match repo.backend().exists(Kind::Lock, name) {
            Ok(true) => {}
            Ok(false) => {
                warn!(message = "the repository lock was removed by another process", lock = %name);
                *health.lost.lock().expect("lock health") =
                    Some("another process removed it".into());
                return;
            }
            Err(error) => {
                warn!(message = "cannot check the repository lock", %error);
                wait = timing.retry_every;
                continue;
            }
        }
        let refreshed = LockInfo {
            time: jiff::Timestamp::now(),
            ..info.clone()
        };
        match repo.put_json(Kind::Lock, name, &refreshed) {
            Ok(()) => {
                *health.last_refresh.lock().expect("lock health") = Instant::now();
                wait = timing.refresh_every;
            }
            Err(error) => {
                warn!(message = "cannot refresh the repository lock", %error);
                wait = timing.retry_every;
            }
        }
    }
}

/// Fails with [`Error::Locked`] when a lock other than `own` conflicts; returns the store's time
/// of `own`.
fn conflicting(
    repo: &Repository,
    exclusive: bool,
    own: &str,
    timing: &LockTiming,
) -> Result<SystemTime> {
    let listing = repo.backend().list(Kind::Lock)?;
    let store_now = store_time_of(&listing, own);
    for object in listing.iter().filter(|object| object.name != own) {
        match judge(repo, object, store_now, timing)? {
            Verdict::Gone => {}
            Verdict::Stale => debug!(message = "ignoring a stale lock", lock = %object.name),
            Verdict::Held(Some(info)) if !exclusive && !info.exclusive => {}
            Verdict::Held(held) => {
                return Err(Error::Locked {
                    holder: match held {
                        Some(info) => info.describe(),
                        None => format!(
                            "lock {} (which cannot be decoded; it counts as held until it is {} min old)",
                            object.name,
                            timing.stale_after.as_secs() / 60
                        ),
                    },
                    advice: "try again when it finishes, or pass a longer --retry-lock".into(),
                });
            }
        }
    }
    Ok(store_now)
}

/// Removes stale locks (`ferry repo unlock`); returns how many. Fails, removing nothing more,
/// when a lock cannot be read.
pub fn remove_stale_locks(repo: &Repository) -> Result<usize> {
    let timing = repo.lock_timing();
    // A shared lock of this process for a moment: the store's clock, read off its LastModified.
    let probe = Id::random().to_hex();
    repo.put_json(Kind::Lock, &probe, &LockInfo::of_this_process(false))?;
    let removed = (|| {
        let listing = repo.backend().list(Kind::Lock)?;
        let store_now = store_time_of(&listing, &probe);
        let mut removed = 0;
        for object in listing.iter().filter(|object| object.name != probe) {
            if let Verdict::Stale = judge(repo, object, store_now, &timing)? {
                repo.backend().delete(Kind::Lock, &object.name)?;
                removed += 1;
            }
        }
        Ok(removed)
    })();
    if let Err(error) = repo.backend().delete(Kind::Lock, &probe) {
        warn!(message = "cannot remove the probe lock", %error);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, MemoryBackend};
    use crate::crypto::KdfParams;
    use crate::repository::InitOptions;

    fn repository_on(backend: Arc<dyn Backend>) -> Arc<Repository> {
        let options = InitOptions {
            kdf: KdfParams {
                memory_kib: 256,
                iterations: 1,
                parallelism: 1,
            },
            ..InitOptions::default()
        };
        Arc::new(Repository::init(backend, b"a password", &options).unwrap())
    }

    fn repository() -> Arc<Repository> {
        repository_on(Arc::new(MemoryBackend::new()))
    }

    /// A lock released at once (before its refresher thread first waits) must not keep the
    /// release waiting for the refresh interval.
    #[test]
    fn a_lock_released_at_once_is_released_at_once() {
        let repo = repository();
        let (done, finished) = std::sync::mpsc::channel();
        let worker = {
            let repo = repo.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    drop(RepoLock::acquire(&repo, false, Duration::ZERO).unwrap());
                }
                done.send(()).unwrap();
            })
        };
        finished
            .recv_timeout(LockTiming::default().refresh_every / 2)
            .expect("releasing a lock waited for its refresher's interval");
        worker.join().unwrap();
        assert!(repo.backend().list(Kind::Lock).unwrap().is_empty());
    }

    #[test]
    fn an_exclusive_lock_excludes_and_a_shared_one_shares() {
        let repo = repository();
        let shared = RepoLock::acquire(&repo, false, Duration::ZERO).unwrap();
        let another_shared = RepoLock::acquire(&repo, false, Duration::ZERO).unwrap();
        let refused = RepoLock::acquire(&repo, true, Duration::ZERO)
            .err()
            .unwrap();
        assert!(matches!(refused, Error::Locked { .. }), "{refused}");
        drop((shared, another_shared));
        let exclusive = RepoLock::acquire(&repo, true, Duration::ZERO).unwrap();
        let refused = RepoLock::acquire(&repo, false, Duration::ZERO)
            .err()
            .unwrap();
        assert!(refused.to_string().contains("exclusive"), "{refused}");
        drop(exclusive);
        // A refused attempt leaves no lock of its own behind.
        assert!(repo.backend().list(Kind::Lock).unwrap().is_empty());
    }

    fn lock_names(repo: &Repository) -> Vec<String> {
        let mut names: Vec<String> = repo
            .backend()
            .list(Kind::Lock)
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        names.sort();
        names
    }

    /// A live backup on a machine whose clock is two hours behind writes lock times two hours in
    /// the past. The store saw it written a moment ago: prune must wait for it, not ignore it.
    #[test]
    fn a_live_lock_from_a_skewed_clock_is_not_stale() {
        let repo = repository();
        let skewed = LockInfo {
            time: jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2),
            exclusive: false,
            hostname: "another-node".into(),
            username: "root".into(),
            pid: 1,
            process_scope: None,
        };
        repo.put_json(Kind::Lock, &Id::random().to_hex(), &skewed)
            .unwrap();
        let refused = RepoLock::acquire(&repo, true, Duration::ZERO)
            .err()
            .expect("prune ignored a live lock written by a skewed clock");
        assert!(matches!(refused, Error::Locked { .. }), "{refused}");
        assert_eq!(remove_stale_locks(&repo).unwrap(), 0);
        assert_eq!(lock_names(&repo).len(), 1);
    }

    /// A lock the store has not seen rewritten for the stale period is abandoned, whatever time
    /// its holder wrote into it.
    #[test]
    fn a_lock_the_store_has_not_seen_rewritten_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = Arc::try_unwrap(repository_on(Arc::new(crate::backend::LocalBackend::new(
            dir.path(),
        ))))
        .unwrap();
        repo.set_lock_timing(LockTiming {
            stale_after: Duration::from_secs(60),
            ..LockTiming::default()
        });
        let repo = Arc::new(repo);
        // Written "now" by a clock an hour ahead, but last modified two minutes ago by the
        // store's (the local filesystem's) clock.
        let ahead = LockInfo {
            time: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
            exclusive: true,
            hostname: "another-node".into(),
            username: "root".into(),
            pid: 1,
            process_scope: None,
        };
        let name = Id::random().to_hex();
        repo.put_json(Kind::Lock, &name, &ahead).unwrap();
        let path = dir.path().join(Kind::Lock.path_of(&name));
        let two_minutes_ago = SystemTime::now() - Duration::from_secs(120);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(two_minutes_ago)
            .unwrap();
        drop(RepoLock::acquire(&repo, true, Duration::ZERO).expect("a stale lock blocked prune"));
        assert_eq!(remove_stale_locks(&repo).unwrap(), 1);
        assert!(lock_names(&repo).is_empty());
    }

    /// A lock whose process died on this machine (same boot and pid namespace) is stale at once;
    /// one from a pid namespace of its own is judged by time only.
    #[test]
    fn a_dead_pid_counts_only_in_its_own_pid_namespace() {
        let repo = repository();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let mut info = LockInfo::of_this_process(true);
        info.pid = dead_pid;
        assert!(
            info.process_scope.is_some(),
            "this kernel tells no pid namespace"
        );
        repo.put_json(Kind::Lock, "a", &info).unwrap();
        info.process_scope = Some("another-boot/pid:[1]".into());
        repo.put_json(Kind::Lock, "b", &info).unwrap();
        assert_eq!(remove_stale_locks(&repo).unwrap(), 1);
        assert_eq!(lock_names(&repo), ["b"]);
    }

    /// A backend whose lock reads or writes fail on demand.
    #[derive(Debug)]
    struct FlakyLocks {
        inner: MemoryBackend,
        fail_reads: AtomicBool,
        fail_writes: AtomicBool,
    }

    impl FlakyLocks {
        fn fault(&self, kind: Kind, flag: &AtomicBool) -> Result<()> {
            if kind == Kind::Lock && flag.load(Ordering::SeqCst) {
                return Err(Error::BackendTransient {
                    message: "503 Slow Down (injected)".into(),
                });
            }
            Ok(())
        }
    }

    impl Backend for FlakyLocks {
        fn location(&self) -> String {
            "flaky".into()
        }
        fn put(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<()> {
            self.fault(kind, &self.fail_writes)?;
            self.inner.put(kind, name, bytes)
        }
        fn put_new(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<bool> {
            self.inner.put_new(kind, name, bytes)
        }
        fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>> {
            self.fault(kind, &self.fail_reads)?;
            self.inner.get(kind, name)
        }
        fn get_range(&self, kind: Kind, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
            self.fault(kind, &self.fail_reads)?;
            self.inner.get_range(kind, name, offset, length)
        }
        fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
            self.inner.list(kind)
        }
        fn delete(&self, kind: Kind, name: &str) -> Result<()> {
            self.inner.delete(kind, name)
        }
    }

    fn flaky() -> (Arc<FlakyLocks>, Arc<Repository>) {
        let backend = Arc::new(FlakyLocks {
            inner: MemoryBackend::new(),
            fail_reads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
        });
        let repo = repository_on(backend.clone());
        (backend, repo)
    }

    /// An unreadable lock is not a stale one: neither prune's lock nor `unlock` may act as if it
    /// were absent.
    #[test]
    fn a_lock_that_cannot_be_read_stops_prune_and_unlock() {
        let (backend, repo) = flaky();
        let held = RepoLock::acquire(&repo, false, Duration::ZERO).unwrap();
        backend.fail_reads.store(true, Ordering::SeqCst);
        let refused = RepoLock::acquire(&repo, true, Duration::ZERO)
            .err()
            .expect("prune took its lock past a lock it could not read");
        assert!(
            refused
                .to_string()
                .contains("unreadable lock is not a stale one"),
            "{refused}"
        );
        let refused = remove_stale_locks(&repo).unwrap_err();
        assert!(refused.to_string().contains("503"), "{refused}");
        backend.fail_reads.store(false, Ordering::SeqCst);
        assert_eq!(lock_names(&repo).len(), 1, "the held lock was removed");
        drop(held);
    }

    /// A lock object that is there but cannot be decoded counts as held (by somebody unknown)
    /// until the store has not seen it rewritten for the stale period.
    #[test]
    fn a_damaged_fresh_lock_counts_as_held() {
        let repo = repository();
        repo.backend()
            .put(Kind::Lock, &Id::random().to_hex(), b"not a lock")
            .unwrap();
        let refused = RepoLock::acquire(&repo, false, Duration::ZERO)
            .err()
            .unwrap();
        assert!(
            refused.to_string().contains("cannot be decoded"),
            "{refused}"
        );
        assert_eq!(remove_stale_locks(&repo).unwrap(), 0);
    }

    /// A holder that cannot rewrite its lock stops before others could judge it abandoned.
    #[test]
    fn a_lock_that_cannot_be_refreshed_is_given_up() {
        let (backend, repo) = flaky();
        let mut repo = Arc::try_unwrap(repo).unwrap();
        repo.set_lock_timing(LockTiming {
            refresh_every: Duration::from_millis(50),
            retry_every: Duration::from_millis(20),
            stale_after: Duration::from_secs(3),
            give_up_after: Duration::from_millis(400),
        });
        let repo = Arc::new(repo);
        let lock = RepoLock::acquire(&repo, false, Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        lock.check_held().expect("a refreshed lock is held");
        backend.fail_writes.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(600));
        let lost = lock.check_held().unwrap_err();
        assert!(matches!(lost, Error::LockLost { .. }), "{lost}");
        assert!(lost.is_retryable());
        backend.fail_writes.store(false, Ordering::SeqCst);
    }

    /// A lock removed by somebody else is lost for good, never silently written back.
    #[test]
    fn a_lock_removed_by_another_process_is_lost() {
        let mut repo = Arc::try_unwrap(repository()).unwrap();
        repo.set_lock_timing(LockTiming {
            refresh_every: Duration::from_millis(30),
            ..LockTiming::default()
        });
        let repo = Arc::new(repo);
        let lock = RepoLock::acquire(&repo, false, Duration::ZERO).unwrap();
        for name in lock_names(&repo) {
            repo.backend().delete(Kind::Lock, &name).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let lost = lock.check_held().unwrap_err();
        assert!(lost.to_string().contains("removed"), "{lost}");
        assert!(lock_names(&repo).is_empty(), "the lock was written back");
    }
}
