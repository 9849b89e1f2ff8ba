//! Repository locks. Backups and checks take shared locks; prune takes an exclusive one, so that
//! it never deletes a blob a running backup has just deduplicated against.
//!
//! A lock is an encrypted object in `locks/`, refreshed every few minutes while held. One that has
//! not been refreshed for [`STALE_AFTER`], or whose process is gone from this same host (a
//! SIGKILLed backup), is stale and ignored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::Repository;

pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub time: jiff::Timestamp,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: u32,
}

impl LockInfo {
    fn is_stale(&self) -> bool {
        let age = jiff::Timestamp::now().duration_since(self.time);
        if age > jiff::SignedDuration::try_from(STALE_AFTER).expect("small duration") {
            return true;
        }
        self.hostname == crate::util::hostname() && !process_exists(self.pid)
    }

    fn describe(&self) -> String {
        format!(
            "{} lock of pid {} on {} (user {}, since {})",
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

fn process_exists(pid: u32) -> bool {
    match rustix::process::Pid::from_raw(pid as i32) {
        Some(pid) => match rustix::process::test_kill_process(pid) {
            Ok(()) => true,
            Err(errno) => errno != rustix::io::Errno::SRCH,
        },
        None => false,
    }
}

/// A held lock; released when dropped.
pub struct RepoLock {
    repo: Arc<Repository>,
    name: String,
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
        conflicting(repo, exclusive, None)?;
        let name = Id::random().to_hex();
        let info = LockInfo {
            time: jiff::Timestamp::now(),
            exclusive,
            hostname: crate::util::hostname(),
            username: crate::util::username(),
            pid: std::process::id(),
        };
        repo.put_json(Kind::Lock, &name, &info)?;
        // Two writers may have checked at the same moment; both see each other now, and both back
        // off rather than both proceed.
        if let Err(error) = conflicting(repo, exclusive, Some(&name)) {
            let _ = repo.backend().delete(Kind::Lock, &name);
            return Err(error);
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let refresher = {
            let repo = repo.clone();
            let name = name.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (stopped, signal) = &*stop;
                let mut guard = stopped.lock().expect("lock refresher");
                loop {
                    // Checked before every wait: a release that came before this thread first
                    // took the mutex has already notified, and must not be waited for again.
                    if *guard {
                        return;
                    }
                    let (next, timeout) = signal
                        .wait_timeout(guard, REFRESH_EVERY)
                        .expect("lock refresher");
                    guard = next;
                    if *guard {
                        return;
                    }
                    if timeout.timed_out() {
                        let info = LockInfo {
                            time: jiff::Timestamp::now(),
                            ..info.clone()
                        };
                        if let Err(error) = repo.put_json(Kind::Lock, &name, &info) {
                            warn!(message = "cannot refresh the repository lock", %error);
                        }
                    }
                }
            })
        };
        Ok(RepoLock {
            repo: repo.clone(),
            name,
            stop,
            refresher: Some(refresher),
            released: AtomicBool::new(false),
        })
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

fn conflicting(repo: &Repository, exclusive: bool, own: Option<&str>) -> Result<()> {
    for object in repo.backend().list(Kind::Lock)? {
        if Some(object.name.as_str()) == own {
            continue;
        }
        let info: LockInfo = match repo.get_object(Kind::Lock, &object.name).and_then(|bytes| {
            serde_json::from_slice(&bytes).map_err(|error| Error::Format(format!("lock: {error}")))
        }) {
            Ok(info) => info,
            Err(Error::NotFound { .. }) => continue,
            Err(error) => {
                warn!(message = "ignoring an unreadable lock", lock = %object.name, %error);
                continue;
            }
        };
        if info.is_stale() {
            debug!(message = "ignoring a stale lock", lock = %object.name);
            continue;
        }
        if exclusive || info.exclusive {
            return Err(Error::Locked {
                holder: info.describe(),
                advice: "try again when it finishes, or pass a longer --retry-lock".into(),
            });
        }
    }
    Ok(())
}

/// Removes stale locks (`ferry repo unlock`); returns how many.
pub fn remove_stale_locks(repo: &Repository) -> Result<usize> {
    let mut removed = 0;
    for object in repo.backend().list(Kind::Lock)? {
        let stale = match repo.get_object(Kind::Lock, &object.name) {
            Ok(bytes) => serde_json::from_slice::<LockInfo>(&bytes)
                .map(|info| info.is_stale())
                .unwrap_or(true),
            Err(Error::NotFound { .. }) => false,
            Err(_) => true,
        };
        if stale {
            repo.backend().delete(Kind::Lock, &object.name)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;
    use crate::crypto::KdfParams;
    use crate::repository::InitOptions;

    fn repository() -> Arc<Repository> {
        let options = InitOptions {
            kdf: KdfParams {
                memory_kib: 256,
                iterations: 1,
                parallelism: 1,
            },
            ..InitOptions::default()
        };
        Arc::new(Repository::init(Arc::new(MemoryBackend::new()), b"a password", &options).unwrap())
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
            .recv_timeout(REFRESH_EVERY / 2)
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
    }
}
