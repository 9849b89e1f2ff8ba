//! Running a tool as a child process and measuring it: wall time, user and system CPU time and
//! peak RSS from `wait4`'s rusage of that child (and of any children it waited for), and the I/O
//! it did from `/proc/<pid>/io`, read while the child is a zombie (exited, not yet reaped), so the
//! figures are complete.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// What one run of a child process cost.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub wall: Duration,
    pub user: Duration,
    pub sys: Duration,
    /// Peak resident set size, bytes (`ru_maxrss`).
    pub max_rss: u64,
    /// Bytes passed to read-like syscalls (`rchar`): files, pipes, everything. For a restore from
    /// a local repository this is, in practice, what the tool read from the repository and its
    /// cache: the nearest thing to "downloaded" that can be measured from outside for a peer.
    pub rchar: u64,
    /// Bytes passed to write-like syscalls (`wchar`).
    pub wchar: u64,
    /// Bytes the child caused to be fetched from storage (`read_bytes`).
    pub read_bytes: u64,
    /// Bytes the child caused to be sent to storage (`write_bytes`).
    pub write_bytes: u64,
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Measured {
    pub fn cpu(&self) -> Duration {
        self.user + self.sys
    }
}

/// Runs `cmd` to completion and measures it. A non-zero exit is an error (with its stderr).
pub fn run(cmd: &mut Command) -> anyhow::Result<Measured> {
    let m = run_unchecked(cmd)?;
    if m.exit_code != 0 {
        bail!(
            "{:?} exited with {}:\n{}\n{}",
            cmd,
            m.exit_code,
            tail(&m.stderr, 3000),
            tail(&m.stdout, 1000)
        );
    }
    Ok(m)
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// Runs `cmd` to completion and measures it, whatever its exit status.
pub fn run_unchecked(cmd: &mut Command) -> anyhow::Result<Measured> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let pid = child.id();
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });

    sys::wait_exited_no_reap(pid).context("waitid")?;
    let wall = start.elapsed();
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let (exit_code, ru) = sys::reap(pid).context("wait4")?;
    // `child` is reaped by us; std's Child does not wait on drop, so dropping it is harmless.
    drop(child);

    let field = |name: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    };
    Ok(Measured {
        wall,
        user: ru.user,
        sys: ru.sys,
        max_rss: ru.max_rss_kib * 1024,
        rchar: field("rchar:"),
        wchar: field("wchar:"),
        read_bytes: field("read_bytes:"),
        write_bytes: field("write_bytes:"),
        exit_code,
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
    })
}

/// Drops the page cache (dentries, inodes and pages) so that every measured phase starts cold.
/// Returns whether it worked (it needs root and a writable /proc/sys, which a sandbox may deny).
pub fn drop_caches() -> bool {
    let synced = Command::new("sync")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    synced && std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

#[allow(unsafe_code)]
mod sys {
    //! The two libc calls std does not offer: waiting for exit without reaping, and reaping with
    //! the child's resource usage.

    use std::io;
    use std::time::Duration;

    pub struct Usage {
        pub user: Duration,
        pub sys: Duration,
        pub max_rss_kib: u64,
    }

    /// Blocks until `pid` has exited, leaving it a zombie so that `/proc/<pid>/io` stays readable.
    pub fn wait_exited_no_reap(pid: u32) -> io::Result<()> {
        loop {
            // SAFETY: siginfo_t is plain old data for which all-zero bytes are a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a valid, writable siginfo_t that outlives the call; waitid does not
            // retain the pointer.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Reaps `pid`, returning its exit code (128 + signal if killed) and resource usage.
    pub fn reap(pid: u32) -> io::Result<(i32, Usage)> {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: rusage is plain old data for which all-zero bytes are a valid value.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: `status` and `ru` are valid, writable and outlive the call; wait4 does not
            // retain the pointers.
            let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
            if rc == pid as libc::pid_t {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else if libc::WIFSIGNALED(status) {
                    128 + libc::WTERMSIG(status)
                } else {
                    -1
                };
                let tv = |t: libc::timeval| {
                    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
                };
                return Ok((
                    code,
                    Usage {
                        user: tv(ru.ru_utime),
                        sys: tv(ru.ru_stime),
                        max_rss_kib: ru.ru_maxrss as u64,
                    },
                ));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_child() {
        let m =
            run(Command::new("sh")
                .args(["-c", "head -c 3000000 /dev/zero | cat > /dev/null; echo hi"]))
            .unwrap();
        assert_eq!(m.stdout.trim(), "hi");
        assert!(m.max_rss > 0);
        assert!(m.wall > Duration::ZERO);
        let m = run(Command::new("dd").args(["if=/dev/zero", "of=/dev/null", "bs=1M", "count=8"]))
            .unwrap();
        assert!(m.rchar >= 8 << 20, "rchar {}", m.rchar);
        assert!(run(&mut Command::new("false")).is_err());
    }
}
