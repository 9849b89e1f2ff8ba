//! Attack tests (issue 12): a hostile pod controls the contents of its volume while the root
//! agent backs it up or restores into it in place. Each test plays that pod, swapping
//! directories and files for symlinks, FIFOs and device nodes in a loop, planting huge sparse
//! files, growing files and deep trees, and checks only what anyone can observe from outside the
//! data mover: nothing outside the volume is written, created, chmod/chowned, truncated, linked
//! or deleted; nothing from outside the volume ends up in a snapshot; nothing hangs or crashes.
//!
//! Each test runs its body in a child process (this binary re-executed for that one test), so
//! that a hang or a crash fails that test instead of stalling the whole binary, and one at a time,
//! since the races and the time bounds depend on the CPU they get. Races run for
//! `FERRY_ATTACK_SECONDS` (default 2.5) seconds each; layouts and the attacker's choices follow a
//! seed, printed, which `FERRY_ATTACK_SEED` fixes.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, UNIX_EPOCH};

use std::os::unix::ffi::OsStrExt;

use common::*;
use ferry_mover::tree::{Extent, Node};
use ferry_mover::{BackupOptions, Error, Id, LocalBackend, Repository, RestoreOptions};

// ---------------------------------------------------------------------------------------------
// Running each attack in a child process.

const CHILD_VAR: &str = "FERRY_ATTACK_CHILD";
const WORK_VAR: &str = "FERRY_ATTACK_WORK";
const CHILD_DONE: &str = "ferry-attack-child-done";

/// One attack at a time: they race threads against each other and measure time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Declares a test whose body, `fn(work_dir, test_name)`, runs in a child process that is killed
/// (and the test failed) if it has not finished within `limit`.
macro_rules! attack {
    ($(#[$meta:meta])* $name:ident, limit = $limit:expr, $body:expr $(,)?) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            isolated(stringify!($name), $limit, |work| ($body)(work, stringify!($name)));
        }
    };
}

fn isolated(test: &str, limit: Duration, body: impl FnOnce(&Path)) {
    if std::env::var(CHILD_VAR).as_deref() == Ok(test) {
        let work = PathBuf::from(std::env::var(WORK_VAR).expect("the parent names a work dir"));
        body(&work);
        println!("{CHILD_DONE}");
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, test)
        .env(WORK_VAR, work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    detach_loop_devices(work.path());
    // `rm -rf` copes with trees deeper than std's remove_dir_all has file descriptors for.
    let _ = Command::new("rm").arg("-rf").arg(work.path()).status();
    print!("{stdout}");
    eprint!("{stderr}");
    match status {
        None => panic!(
            "{test}: killed after {limit:?}: the data mover hung (the child's output is above)"
        ),
        Some(status) if !status.success() => panic!(
            "{test}: the child process failed ({status}) after {elapsed:.1?} (its output is above)"
        ),
        Some(_) => assert!(
            stdout.contains(CHILD_DONE),
            "{test}: the child process ran no test of that name"
        ),
    }
    println!("{test}: {elapsed:.1?}");
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn race_time() -> Duration {
    let seconds = std::env::var("FERRY_ATTACK_SECONDS")
        .ok()
        .map(|s| s.parse::<f64>().expect("FERRY_ATTACK_SECONDS is a number"))
        .unwrap_or(2.5);
    Duration::from_secs_f64(seconds)
}

/// How long a racing test may take in all: the race, then a margin that only a hang exceeds.
fn race_limit() -> Duration {
    race_time() + Duration::from_secs(30)
}

fn seed(test: &str) -> u64 {
    let seed = match std::env::var("FERRY_ATTACK_SEED") {
        Ok(text) => text.parse().expect("FERRY_ATTACK_SEED is a number"),
        Err(_) => test.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        }),
    };
    println!(
        "{test}: seed {seed} (FERRY_ATTACK_SEED={seed} repeats the layout and the attacker's choices)"
    );
    seed
}

/// splitmix64: deterministic choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn micros(&mut self, max: u64) -> Duration {
        Duration::from_micros(self.below(max + 1))
    }
}

// ---------------------------------------------------------------------------------------------
// The repository and the data mover.

fn repository(work: &Path) -> Arc<Repository> {
    init(Arc::new(LocalBackend::new(work.join("repo"))))
}

fn backup_options() -> BackupOptions {
    BackupOptions {
        workers: Some(2),
        host: Some("attacked-node".into()),
        ..Default::default()
    }
}

/// What the agent does for `inPlaceVolumes`.
fn in_place() -> RestoreOptions {
    RestoreOptions {
        incremental: true,
        delete: true,
        workers: Some(2),
        ..Default::default()
    }
}

fn snapshot_of(repo: &Arc<Repository>, source: &Path) -> String {
    let outcome = ferry_mover::backup(repo, source, &backup_options()).unwrap();
    assert_eq!(outcome.snapshot.summary.errors, 0, "backing up {source:?}");
    outcome.snapshot_id.to_hex()
}

/// Every node of a snapshot's tree, with its path.
fn walk_tree(repo: &Repository, tree: &Id, prefix: &Path, visit: &mut dyn FnMut(&Path, &Node)) {
    for node in repo.load_tree(tree).unwrap().nodes {
        let path = prefix.join(std::ffi::OsStr::from_bytes(&node.name));
        visit(&path, &node);
        if let Some(subtree) = &node.subtree {
            walk_tree(repo, subtree, &path, visit);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files, safely: the test's own operations on a volume under attack never follow a symlink.

fn open_nofollow(path: &Path) -> std::io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

fn write_nofollow(path: &Path, bytes: &[u8], truncate: bool) -> std::io::Result<()> {
    not_special(path)?;
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(truncate)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .mode(0o644)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    file.write_all_at(bytes, 0)
}

fn patch_nofollow(path: &Path, bytes: &[u8], rng: &mut Rng) -> std::io::Result<()> {
    not_special(path)?;
    let file = File::options()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(());
    }
    file.write_all_at(bytes, rng.below(meta.len()))
}

/// Refuses to go on if `path` is a FIFO or a device node: the test itself never opens one (so
/// that an open seen on one is the data mover's). Missing is fine (it is then created).
fn not_special(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() && !meta.is_dir() => {
            Err(std::io::Error::other("not a regular file"))
        }
        _ => Ok(()),
    }
}

/// Whether every component of `rel` below `root` is a real directory (no symlink).
fn real_dir(root: &Path, rel: &Path) -> bool {
    let mut path = root.to_owned();
    for component in rel.components() {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            _ => return false,
        }
    }
    true
}

fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

fn set_times(path: &Path, seconds: u64, nanos: u32) {
    let time = UNIX_EPOCH + Duration::new(seconds, nanos);
    let times = std::fs::FileTimes::new()
        .set_accessed(time)
        .set_modified(time);
    open_nofollow(path).unwrap().set_times(times).unwrap();
}

fn mkfifo(path: &Path) -> bool {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        0o644.into(),
        0,
    )
    .is_ok()
}

fn mknod(path: &Path, kind: rustix::fs::FileType, rdev: u64) -> bool {
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, 0o666.into(), rdev).is_ok()
}

fn spin(duration: Duration) {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        std::thread::yield_now();
    }
}

// ---------------------------------------------------------------------------------------------
// What another pod's volume looks like, to the byte and to the metadata.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    inode: u64,
    links: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    rdev: u64,
    content: Option<Vec<u8>>,
    link: Option<PathBuf>,
}

fn seen(path: &Path) -> Option<Seen> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let kind = file_kind(&meta);
    let content = (kind == "file").then(|| {
        let mut bytes = Vec::new();
        if let Ok(mut file) = open_nofollow(path) {
            let _ = file.read_to_end(&mut bytes);
        }
        bytes
    });
    Some(Seen {
        kind,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size(),
        inode: meta.ino(),
        links: meta.nlink(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
        rdev: meta.rdev(),
        content,
        link: (kind == "symlink").then(|| std::fs::read_link(path).unwrap_or_default()),
    })
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "char device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "socket"
    }
}

/// Everything under `root` (itself included, as ""), never following a symlink.
fn record(root: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.as_os_str().is_empty() {
            root.to_owned()
        } else {
            root.join(&rel)
        };
        let Some(seen) = seen(&path) else { continue };
        if seen.kind == "dir"
            && let Ok(listing) = std::fs::read_dir(&path)
        {
            for entry in listing.flatten() {
                stack.push(rel.join(entry.file_name()));
            }
        }
        out.insert(rel, seen);
    }
    out
}

fn differences(before: &BTreeMap<PathBuf, Seen>, after: &BTreeMap<PathBuf, Seen>) -> Vec<String> {
    let mut out = Vec::new();
    for (path, old) in before {
        let Some(new) = after.get(path) else {
            out.push(format!("{path:?}: deleted"));
            continue;
        };
        let mut changed = Vec::new();
        if old.kind != new.kind {
            changed.push(format!("{} became a {}", old.kind, new.kind));
        }
        if old.inode != new.inode {
            changed.push("replaced (new inode)".to_owned());
        }
        if old.mode != new.mode {
            changed.push(format!("mode {:o} -> {:o}", old.mode, new.mode));
        }
        if (old.uid, old.gid) != (new.uid, new.gid) {
            changed.push(format!(
                "owner {}:{} -> {}:{}",
                old.uid, old.gid, new.uid, new.gid
            ));
        }
        if old.size != new.size {
            changed.push(format!("size {} -> {}", old.size, new.size));
        }
        if old.content != new.content {
            changed.push("content changed".to_owned());
        }
        if old.links != new.links {
            changed.push(format!("link count {} -> {}", old.links, new.links));
        }
        if old.mtime != new.mtime {
            changed.push("mtime changed".to_owned());
        }
        if old.ctime != new.ctime {
            changed.push("ctime changed (its inode was modified)".to_owned());
        }
        if old.link != new.link || old.rdev != new.rdev {
            changed.push("symlink target or device changed".to_owned());
        }
        if !changed.is_empty() {
            out.push(format!("{path:?}: {}", changed.join(", ")));
        }
    }
    for (path, new) in after {
        if !before.contains_key(path) {
            out.push(format!("{path:?}: new {} created", new.kind));
        }
    }
    out
}

/// Entries of `target` that are hard links of files in `outside` (linked into the volume).
fn linked_in(target: &Path, outside: &BTreeMap<PathBuf, Seen>) -> Vec<String> {
    let inodes: BTreeMap<u64, &PathBuf> = outside
        .iter()
        .filter(|(_, seen)| seen.kind == "file")
        .map(|(path, seen)| (seen.inode, path))
        .collect();
    record(target)
        .into_iter()
        .filter(|(_, seen)| seen.kind == "file")
        .filter_map(|(path, seen)| {
            inodes.get(&seen.inode).map(|other| {
                format!("target {path:?} is a hard link of the other volume's {other:?}")
            })
        })
        .collect()
}

/// Another pod's volume: `files` (relative paths) and the directories they need, each with its
/// own content, mode 0640 (dirs 0750), owner 4242:4343 and times.
fn build_other_volume(root: &Path, files: &[PathBuf], rng: &mut Rng) {
    std::fs::create_dir_all(root).unwrap();
    let mut dirs = vec![root.to_owned()];
    for rel in files {
        let path = root.join(rel);
        let parent = path.parent().unwrap();
        if !dirs.iter().any(|d| d == parent) {
            std::fs::create_dir_all(parent).unwrap();
            dirs.push(parent.to_owned());
        }
        let mut content = format!("another pod's file {}\n", rel.display()).into_bytes();
        content.extend(noise(rng.next(), 1000 + rng.below(20_000) as usize));
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::lchown(&path, Some(4242), Some(4343)).unwrap();
        set_times(&path, 1_500_000_000, 123);
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in dirs {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::lchown(&dir, Some(4242), Some(4343)).unwrap();
        set_times(&dir, 1_500_000_000, 456);
    }
}

// ---------------------------------------------------------------------------------------------
// The hostile pod: a thread that swaps entries of its volume in a loop.

struct Attacker {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Attacker {
    /// Runs `cycle` in a loop; each call makes one swap, puts everything back before returning,
    /// and says whether it swapped.
    fn start(seed: u64, mut cycle: impl FnMut(&mut Rng) -> bool + Send + 'static) -> Attacker {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, pause, paused, swaps) =
                (stop.clone(), pause.clone(), paused.clone(), swaps.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(seed);
                while !stop.load(Ordering::SeqCst) {
                    if pause.load(Ordering::SeqCst) {
                        paused.store(true, Ordering::SeqCst);
                        while pause.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        paused.store(false, Ordering::SeqCst);
                        continue;
                    }
                    if cycle(&mut rng) {
                        swaps.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Attacker {
            stop,
            pause,
            paused,
            swaps,
            thread: Some(thread),
        }
    }

    /// Waits until the attacker has put everything back and stands still.
    fn pause(&self) {
        self.pause.store(true, Ordering::SeqCst);
        while !self.paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
        while self.paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Stops the attacker; returns how many swaps it made.
    fn finish(mut self) -> u64 {
        self.halt();
        self.swaps.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Moves `real` aside (out of the volume), plants something in its place with `plant`, holds it
/// for `hold`, then puts the original back whatever the data mover did meanwhile. Returns whether
/// it planted.
fn swap(real: &Path, aside: &Path, hold: Duration, plant: impl FnOnce(&Path) -> bool) -> bool {
    if std::fs::rename(real, aside).is_err() {
        return false;
    }
    let planted = plant(real);
    spin(hold);
    remove_any(real);
    if std::fs::rename(aside, real).is_err() {
        remove_any(aside);
    }
    planted
}

/// Tells when someone opens one of some directories (as the backup does to list them), through
/// inotify watches on their parents, as any process may watch its own files.
struct OpenWatcher {
    inotify: std::os::fd::OwnedFd,
    /// Watch descriptor of each directory's parent, the directory's name, and its path.
    watched: Vec<(i32, std::ffi::CString, PathBuf)>,
    buffer: Vec<std::mem::MaybeUninit<u8>>,
}

impl OpenWatcher {
    fn new(dirs: &[PathBuf]) -> OpenWatcher {
        use rustix::fs::inotify;
        let fd =
            inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC).unwrap();
        let watched = dirs
            .iter()
            .map(|dir| {
                let parent = dir.parent().unwrap();
                let wd = inotify::add_watch(&fd, parent, inotify::WatchFlags::OPEN).unwrap();
                let name = std::ffi::CString::new(dir.file_name().unwrap().as_bytes()).unwrap();
                (wd, name, dir.clone())
            })
            .collect();
        OpenWatcher {
            inotify: fd,
            watched,
            buffer: vec![std::mem::MaybeUninit::uninit(); 4096],
        }
    }

    /// The directory opened since the last call, if any (the last one, if several).
    fn opened(&mut self) -> Option<PathBuf> {
        let mut reader = rustix::fs::inotify::Reader::new(&self.inotify, &mut self.buffer);
        let mut opened = None;
        while let Ok(event) = reader.next() {
            for (wd, name, dir) in &self.watched {
                if event.wd() == *wd && event.file_name() == Some(name.as_c_str()) {
                    opened = Some(dir.clone());
                }
            }
            if reader.is_buffer_empty() {
                break;
            }
        }
        opened
    }
}

/// [`swap`] for several entries at once (a pod may have many processes): moves each of `reals`
/// aside into `stash` (under names starting with `tag`), plants in its place, holds, puts all
/// back. Returns whether it planted anything.
fn swap_several(
    reals: &[PathBuf],
    stash: &Path,
    tag: u64,
    hold: Duration,
    mut plant: impl FnMut(&Path) -> bool,
) -> bool {
    let mut moved = Vec::new();
    let mut planted = false;
    for (i, real) in reals.iter().enumerate() {
        let aside = stash.join(format!("{tag}-{i}"));
        if moved.iter().any(|(r, _)| r == real) || std::fs::rename(real, &aside).is_err() {
            continue;
        }
        planted |= plant(real);
        moved.push((real.clone(), aside));
    }
    spin(hold);
    for (real, aside) in moved {
        remove_any(&real);
        if std::fs::rename(&aside, &real).is_err() {
            remove_any(&aside);
        }
    }
    planted
}

// ---------------------------------------------------------------------------------------------
// A volume with every kind of entry in nested directories.

const TOP: [&str; 4] = ["d0", "d1", "d2", "d3"];
const SUB: [&str; 3] = ["s0", "s1", "s2"];
/// Name, size and mode of each regular file of every directory.
const FILES: [(&str, usize, u32); 6] = [
    ("f0", 0, 0o644),
    ("f1", 33, 0o600),
    ("f2", 5_000, 0o755),
    ("f3", 30_000, 0o640),
    ("f4", 70_000, 0o750),
    ("f5", 20_000, 0o664),
];
/// Every name the snapshot has in each directory: the files, a hard link (of f2), a symlink and
/// a FIFO.
const ENTRIES: [&str; 9] = ["f0", "f1", "f2", "f3", "f4", "f5", "h0", "l0", "p0"];

fn volume_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for top in TOP {
        dirs.push(PathBuf::from(top));
        for sub in SUB {
            dirs.push(Path::new(top).join(sub));
        }
    }
    dirs
}

fn build_volume(root: &Path, rng: &mut Rng) {
    write(&root.join("top.txt"), b"the volume's own top-level file\n");
    for (d, rel) in volume_dirs().iter().enumerate() {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, (name, size, mode)) in FILES.iter().enumerate() {
            let path = dir.join(name);
            std::fs::write(&path, noise(rng.next(), *size)).unwrap();
            std::os::unix::fs::lchown(&path, Some(1000 + i as u32), Some(2000 + d as u32)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
            set_times(&path, 1_600_000_000 + i as u64, 7);
        }
        std::fs::hard_link(dir.join("f2"), dir.join("h0")).unwrap();
        std::os::unix::fs::symlink("f0", dir.join("l0")).unwrap();
        assert!(mkfifo(&dir.join("p0")));
    }
}

/// What a running pod does to its volume between two restores: rewrites and patches files,
/// changes modes and owners, deletes entries (files, links, symlinks, FIFOs, whole directories),
/// adds files and directories, puts directories where files were. The restore must then write,
/// chmod, chown, create, delete, rename, hard-link and make symlinks and FIFOs everywhere.
fn disturb(root: &Path, rng: &mut Rng) {
    for rel in volume_dirs() {
        if !real_dir(root, &rel) {
            continue;
        }
        let dir = root.join(&rel);
        let file = |rng: &mut Rng| dir.join(rng.pick(&FILES).0);
        if rng.percent(40) {
            let size = rng.below(50_000) as usize;
            let _ = write_nofollow(&file(rng), &noise(rng.next(), size), true);
        }
        if rng.percent(40) {
            let _ = patch_nofollow(&file(rng), &noise(rng.next(), 64), rng);
        }
        if rng.percent(25)
            && let Ok(f) = open_nofollow(&file(rng))
        {
            let _ = f.set_permissions(std::fs::Permissions::from_mode(0o777));
        }
        if rng.percent(25)
            && let Ok(f) = open_nofollow(&file(rng))
        {
            let _ = std::os::unix::fs::fchown(&f, Some(7), Some(7));
        }
        if rng.percent(30) {
            let _ = std::fs::remove_file(dir.join(rng.pick(&ENTRIES)));
        }
        if rng.percent(25) {
            let name = format!("x-{}", rng.below(1000));
            let _ = write_nofollow(&dir.join(name), &noise(rng.next(), 3000), true);
        }
        if rng.percent(10) {
            let extra = dir.join(format!("xd-{}", rng.below(1000)));
            if std::fs::create_dir(&extra).is_ok() {
                let _ = write_nofollow(&extra.join("inner"), b"extra", true);
            }
        }
        if rng.percent(5) {
            let path = dir.join("f3");
            if std::fs::remove_file(&path).is_ok() && std::fs::create_dir(&path).is_ok() {
                let _ = write_nofollow(&path.join("inner"), b"a dir where a file was", true);
            }
        }
        if rel.components().count() == 2 && rng.percent(5) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A hostile pod racing an in-place restore.

#[derive(Clone, Copy)]
enum Swap {
    /// Directories of the volume for symlinks to the other volume.
    Dirs,
    /// Files, FIFOs and links of the volume for symlinks to the other volume's files.
    Files,
}

fn restore_race(work: &Path, test: &str, swap_kind: Swap) {
    let mut rng = Rng(seed(test));
    let repo = repository(work);
    let source = work.join("source");
    build_volume(&source, &mut rng);
    let snapshot = snapshot_of(&repo, &source);
    let target = work.join("volume");
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    assert_same_tree(&source, &target);

    // The other pod's volume mirrors this one's names, and has more, so that a path followed
    // through a swapped directory lands on its files.
    let other = work.join("other-volume");
    let other_files: Vec<PathBuf> = match swap_kind {
        Swap::Dirs => {
            let mut files = Vec::new();
            for dir in ["", "s0", "s1", "s2"] {
                for name in ["f0", "f1", "f2", "f3", "f4", "f5", "h0", "keep-a", "keep-b"] {
                    files.push(Path::new(dir).join(name));
                }
            }
            files
        }
        Swap::Files => (0..8)
            .map(|i| PathBuf::from(format!("secret-{i}")))
            .collect(),
    };
    let layout_seed = rng.next();
    build_other_volume(&other, &other_files, &mut Rng(layout_seed));
    let mut pristine = record(&other);
    let stash = work.join("stash");
    std::fs::create_dir(&stash).unwrap();

    let attacker = {
        let (target, other, stash) = (target.clone(), other.clone(), stash.clone());
        let dirs = volume_dirs();
        let mut n = 0u64;
        Attacker::start(rng.next(), move |rng| {
            n += 1;
            let aside = stash.join(n.to_string());
            let hold = rng.micros(300);
            let planted = match swap_kind {
                Swap::Dirs => {
                    let real = target.join(rng.pick(&dirs));
                    swap(&real, &aside, hold, |at| {
                        std::os::unix::fs::symlink(&other, at).is_ok()
                    })
                }
                Swap::Files => {
                    // Eight at once: the restore reaches each entry only briefly.
                    let reals: Vec<PathBuf> = (0..8)
                        .map(|_| target.join(rng.pick(&dirs)).join(rng.pick(&ENTRIES)))
                        .collect();
                    swap_several(&reals, &stash, n, hold, |at| {
                        let victim = other.join(format!("secret-{}", rng.below(8)));
                        std::os::unix::fs::symlink(&victim, at).is_ok()
                    })
                }
            };
            spin(rng.micros(100));
            planted
        })
    };

    let started = Instant::now();
    let (mut restores, mut failed) = (0u64, 0u64);
    let mut harmed: Vec<u64> = Vec::new();
    let mut first_harm: Option<Vec<String>> = None;
    let mut check = |restores: u64, pristine: &mut BTreeMap<PathBuf, Seen>| {
        let now = record(&other);
        let mut harm = differences(pristine, &now);
        harm.extend(linked_in(&target, &now));
        if !harm.is_empty() {
            harmed.push(restores);
            first_harm.get_or_insert(harm);
            // Make the other volume whole again, to count the next restore that harms it.
            remove_any(&other);
            build_other_volume(&other, &other_files, &mut Rng(layout_seed));
            *pristine = record(&other);
        }
    };
    while started.elapsed() < race_time() {
        attacker.pause();
        check(restores, &mut pristine);
        disturb(&target, &mut rng);
        attacker.resume();
        if ferry_mover::restore(&repo, &snapshot, &target, &in_place()).is_err() {
            failed += 1;
        }
        restores += 1;
    }
    attacker.pause();
    check(restores, &mut pristine);
    let swaps = attacker.finish();
    println!(
        "{test}: {restores} in-place restores ({failed} ended in an error) raced {swaps} swaps; \
         {} of them changed the other pod's volume{}",
        harmed.len(),
        if harmed.is_empty() {
            String::new()
        } else {
            format!(" (after restores {harmed:?})")
        }
    );
    assert!(
        harmed.is_empty(),
        "{test}: in-place restores wrote outside the volume {} times in {restores}; the first time:\n  {}",
        harmed.len(),
        first_harm.unwrap_or_default().join("\n  ")
    );
    // Once the pod stops, its volume comes back exactly.
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    assert_same_tree(&source, &target);
}

attack!(
    /// A pod swaps directories of its volume for symlinks to another pod's volume (renames a
    /// directory aside, symlinks in, swaps back) while the agent restores it in place over and
    /// over: the other volume must stay bit for bit and metadata for metadata as it was, gain no
    /// entry and no hard link into this volume.
    in_place_restore_racing_directory_swaps_leaves_other_volumes_untouched,
    limit = race_limit(),
    |work: &Path, test: &str| restore_race(work, test, Swap::Dirs),
);

attack!(
    /// The same with the last component: files, hard links, symlinks and FIFOs of the volume
    /// swapped for symlinks to another pod's files (chmod, chown, utimes, xattrs, writes and
    /// renames must not follow them).
    in_place_restore_racing_file_swaps_leaves_other_volumes_untouched,
    limit = race_limit(),
    |work: &Path, test: &str| restore_race(work, test, Swap::Files),
);

// ---------------------------------------------------------------------------------------------
// 2. A hostile pod racing a backup.

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn backup_race(work: &Path, test: &str) {
    let seed = seed(test);
    let mut rng = Rng(seed);
    let repo = repository(work);
    let source = work.join("volume");
    // Directories with many entries and xattrs: between the walker's lstat of a directory and
    // its listing lie reading the directory's xattrs and loading its tree in the parent
    // snapshot, and a pod decides how long those take.
    let dirs: Vec<PathBuf> = (0..4)
        .flat_map(|d| {
            let top = PathBuf::from(format!("d{d}"));
            [top.clone(), top.join("sub")]
        })
        .collect();
    for dir in &dirs {
        for f in 0..150 {
            let size = 10 + rng.below(200) as usize;
            write(
                &source.join(dir).join(format!("f{f}")),
                &noise(rng.next(), size),
            );
        }
        for x in 0..64 {
            xattr::set(
                source.join(dir),
                format!("user.pad{x}"),
                b"0123456789abcdef",
            )
            .unwrap();
        }
    }
    // Another pod's volume (a Secret volume, say) with the same names as this one (the same
    // application, or names the pod chose to match), the marker in its names, content, xattrs
    // and symlink targets, and its own owner, 4242:4343.
    let marker = format!("FERRY-SECRET-{seed:016x}");
    let other = work.join("other-volume");
    let secret = format!("{marker}\n").repeat(20);
    for dir in ["", "sub"] {
        for f in 0..150 {
            write(&other.join(dir).join(format!("f{f}")), secret.as_bytes());
        }
        write(
            &other.join(dir).join(format!("secret-{marker}")),
            secret.as_bytes(),
        );
        xattr::set(other.join(dir).join("f0"), "user.secret", marker.as_bytes()).unwrap();
        std::os::unix::fs::symlink(&marker, other.join(dir).join("link")).unwrap();
    }
    for (path, _) in record(&other) {
        std::os::unix::fs::lchown(other.join(path), Some(4242), Some(4343)).unwrap();
    }
    let stash = work.join("stash");
    std::fs::create_dir(&stash).unwrap();
    snapshot_of(&repo, &source);

    // The pod watches its volume with inotify and swaps two directories (at two levels) for
    // symlinks to the other volume the moment the backup opens them to list them, for as long
    // as the backup takes to look at their entries.
    let attacker = {
        let (source, other, stash) = (source.clone(), other.clone(), stash.clone());
        let mut watcher = OpenWatcher::new(&[source.join("d1"), source.join("d2/sub")]);
        let mut n = 0u64;
        Attacker::start(rng.next(), move |rng| {
            let Some(real) = watcher.opened() else {
                std::thread::yield_now();
                return false;
            };
            n += 1;
            let hold = Duration::from_micros(300) + rng.micros(3000);
            swap(&real, &stash.join(n.to_string()), hold, |at| {
                std::os::unix::fs::symlink(&other, at).is_ok()
            })
        })
    };
    let started = Instant::now();
    let mut snapshots = Vec::new();
    let mut failed = 0;
    while started.elapsed() < race_time() {
        match ferry_mover::backup(&repo, &source, &backup_options()) {
            Ok(outcome) => snapshots.push(outcome.snapshot.tree),
            Err(_) => failed += 1,
        }
    }
    let swaps = attacker.finish();

    let marker = marker.as_bytes();
    let repo = reopen(repo.backend().clone());
    let mut read_blobs = HashSet::new();
    let mut leaks: Vec<(usize, Vec<String>)> = Vec::new();
    for (n, tree) in snapshots.iter().enumerate() {
        let mut found = Vec::new();
        walk_tree(&repo, tree, Path::new(""), &mut |path, node| {
            let what = |why: &str| format!("{}: {why}", path.display());
            if contains(&node.name, marker) {
                found.push(what("another volume's entry"));
            }
            if (node.uid, node.gid) == (4242, 4343) {
                found.push(what("another volume's entry's metadata"));
            }
            if node
                .xattrs
                .iter()
                .any(|x| contains(&x.value, marker) || contains(&x.name, marker))
            {
                found.push(what("another volume's xattr"));
            }
            if contains(&node.link_target, marker) {
                found.push(what("another volume's symlink"));
            }
            for extent in &node.content {
                if let Extent::Blob(id) = extent
                    && read_blobs.insert(*id)
                    && contains(&repo.read_blob(id).unwrap(), marker)
                {
                    found.push(what("another volume's data"));
                }
            }
        });
        if !found.is_empty() {
            leaks.push((n, found));
        }
    }
    println!(
        "{test}: {} backups ({failed} ended in an error) raced {swaps} swaps; {} snapshots hold \
         another volume's secret",
        snapshots.len(),
        leaks.len()
    );
    assert!(
        leaks.is_empty(),
        "{test}: {} of {} snapshots hold what only another pod's volume has; the first ({}th):\n  {}",
        leaks.len(),
        snapshots.len(),
        leaks[0].0,
        leaks[0].1.join("\n  ")
    );
}

attack!(
    /// A pod swaps directories of its volume for symlinks to another pod's volume while the agent
    /// backs it up over and over: no snapshot may hold a name, a byte, an xattr or a symlink of
    /// the other volume.
    backup_racing_directory_swaps_reads_nothing_from_other_volumes,
    limit = race_limit(),
    backup_race,
);

// ---------------------------------------------------------------------------------------------
// 3. FIFOs.

/// A volume of `dirs` directories of `files` files of `size` bytes each, for the FIFO and device
/// races.
fn plain_volume(
    root: &Path,
    dirs: usize,
    files: usize,
    size: usize,
    rng: &mut Rng,
) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for d in 0..dirs {
        for f in 0..files {
            let rel = PathBuf::from(format!("d{d}/f{f}"));
            write(&root.join(&rel), &noise(rng.next(), size));
            paths.push(rel);
        }
    }
    paths
}

fn fifo_restore_race(work: &Path, test: &str) {
    let mut rng = Rng(seed(test));
    let repo = repository(work);
    let source = work.join("source");
    let files = plain_volume(&source, 4, 8, 64 * 1024, &mut rng);
    let snapshot = snapshot_of(&repo, &source);
    let target = work.join("volume");
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    let stash = work.join("stash");
    std::fs::create_dir(&stash).unwrap();
    // Files the snapshot has, and as many it has not (which the restore scans, then deletes).
    let mut victims = files.clone();
    victims.extend(files.iter().map(|f| {
        let name = f.file_name().unwrap().to_string_lossy();
        f.with_file_name(format!("x-{name}"))
    }));

    let attacker = {
        let (target, stash, victims) = (target.clone(), stash.clone(), victims.clone());
        let mut n = 0u64;
        Attacker::start(rng.next(), move |rng| {
            n += 1;
            let real = target.join(rng.pick(&victims));
            let planted = swap(&real, &stash.join(n.to_string()), rng.micros(2000), mkfifo);
            spin(rng.micros(200));
            planted
        })
    };
    let started = Instant::now();
    let mut restores = 0;
    while started.elapsed() < race_time() {
        attacker.pause();
        for rel in &victims {
            let path = target.join(rel);
            if rng.percent(50) || std::fs::symlink_metadata(&path).is_err() {
                let _ = write_nofollow(&path, &noise(rng.next(), 64 * 1024), true);
            } else {
                let _ = patch_nofollow(&path, &noise(rng.next(), 100), &mut rng);
            }
        }
        attacker.resume();
        println!("restore {restores} starts at {:.2?}", started.elapsed());
        let _ = ferry_mover::restore(&repo, &snapshot, &target, &in_place());
        restores += 1;
    }
    let swaps = attacker.finish();
    println!("{test}: {restores} in-place restores raced {swaps} FIFOs swapped in; none hung");
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    assert_same_tree(&source, &target);
}

attack!(
    /// Files of the volume (ones the snapshot has and ones it has not) swapped for FIFOs while
    /// the agent restores in place, scanning and patching them: no restore may hang on a FIFO.
    in_place_restore_with_fifos_swapped_in_does_not_hang,
    limit = race_limit(),
    fifo_restore_race,
);

attack!(
    /// FIFOs planted, with no race, where the snapshot has a regular file (changed or not), a
    /// directory, a FIFO, and nothing: the in-place restore neither hangs nor leaves one.
    in_place_restore_over_planted_fifos_does_not_hang_and_is_exact,
    limit = Duration::from_secs(30),
    in_place_restore_over_planted_fifos_does_not_hang_and_is_exact_attack,
);

fn in_place_restore_over_planted_fifos_does_not_hang_and_is_exact_attack(work: &Path, test: &str) {
    let mut rng = Rng(seed(test));
    let repo = repository(work);
    let source = work.join("source");
    plain_volume(&source, 2, 4, 64 * 1024, &mut rng);
    assert!(mkfifo(&source.join("d0/fifo")));
    let snapshot = snapshot_of(&repo, &source);
    let target = work.join("volume");
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    for replaced in ["d0/f0", "d0/f1", "d1/f3", "d0/fifo"] {
        std::fs::remove_file(target.join(replaced)).unwrap();
        assert!(mkfifo(&target.join(replaced)));
    }
    std::fs::remove_dir_all(target.join("d1")).unwrap();
    assert!(mkfifo(&target.join("d1")));
    assert!(mkfifo(&target.join("extra-fifo")));
    std::fs::create_dir(target.join("d0/extra-dir")).unwrap();
    assert!(mkfifo(&target.join("d0/extra-dir/fifo")));
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    assert_same_tree(&source, &target);
}

fn fifo_backup_race(work: &Path, test: &str) {
    let mut rng = Rng(seed(test));
    let repo = repository(work);
    let source = work.join("volume");
    let files = plain_volume(&source, 4, 8, 32 * 1024, &mut rng);
    let stash = work.join("stash");
    std::fs::create_dir(&stash).unwrap();
    let attacker = {
        let (source, stash) = (source.clone(), stash.clone());
        let mut n = 0u64;
        Attacker::start(rng.next(), move |rng| {
            n += 1;
            let real = source.join(rng.pick(&files));
            let planted = swap(&real, &stash.join(n.to_string()), rng.micros(2000), mkfifo);
            spin(rng.micros(200));
            planted
        })
    };
    let started = Instant::now();
    let mut backups = 0;
    while started.elapsed() < race_time() {
        attacker.pause();
        // New content, so that the next backup reads every file again.
        plain_volume(&source, 4, 8, 32 * 1024, &mut rng);
        attacker.resume();
        println!("backup {backups} starts at {:.2?}", started.elapsed());
        let _ = ferry_mover::backup(&repo, &source, &backup_options());
        backups += 1;
    }
    let swaps = attacker.finish();
    println!("{test}: {backups} backups raced {swaps} FIFOs swapped in; none hung");
}

attack!(
    /// Regular files of the volume swapped for FIFOs after the backup listed them: no backup may
    /// hang.
    backup_with_fifos_swapped_in_does_not_hang,
    limit = race_limit(),
    fifo_backup_race,
);

// ---------------------------------------------------------------------------------------------
// 4. Huge, sparse, growing files, and cancellation.

/// The largest size the filesystem of `path` accepts for a file: 8 EiB - 1 (`i64::MAX`, what
/// `truncate -s 8E` means) where it can, else (ext4: 16 TiB - 4 KiB) the largest below.
fn size_to_the_limit(file: &File) -> u64 {
    let mut ok = 0u64;
    let mut refused = i64::MAX as u64 + 1;
    while refused - ok > 1 {
        let mid = ok + (refused - ok) / 2;
        if file.set_len(mid).is_ok() {
            ok = mid;
        } else {
            refused = mid;
        }
    }
    file.set_len(ok).unwrap();
    ok
}

/// A sparse file of the largest size the filesystem allows with 64 KiB of data at its start, in
/// its middle and at its end; returns the size and the data's offsets.
fn huge_sparse_file(path: &Path, rng: &mut Rng) -> (u64, Vec<(u64, Vec<u8>)>) {
    let file = File::create(path).unwrap();
    let size = size_to_the_limit(&file);
    let note = if size == i64::MAX as u64 {
        "8 EiB - 1, the largest off_t".to_owned()
    } else {
        format!(
            "the filesystem refuses 8 EiB; {} TiB is its largest",
            size as f64 / (1u64 << 40) as f64
        )
    };
    println!("a sparse file of {size} bytes ({note})");
    let mut data = Vec::new();
    for offset in [0, (size / 2) & !4095, (size - 65536) & !4095] {
        let bytes = noise(rng.next(), 65536);
        file.write_all_at(&bytes, offset).unwrap();
        data.push((offset, bytes));
    }
    (size, data)
}

attack!(
    /// A pod truncates a file to 8 EiB (or its filesystem's limit): the backup must neither read
    /// exabytes of zeros nor take longer than a few seconds, and the snapshot must restore the
    /// file exactly, as sparse as it was.
    backup_of_a_maximal_sparse_file_is_prompt_and_exact,
    limit = Duration::from_secs(40),
    backup_of_a_maximal_sparse_file_is_prompt_and_exact_attack,
);

fn backup_of_a_maximal_sparse_file_is_prompt_and_exact_attack(work: &Path, test: &str) {
    let mut rng = Rng(seed(test));
    let repo = repository(work);
    let source = work.join("volume");
    write(&source.join("small"), b"small\n");
    let (size, data) = huge_sparse_file(&source.join("huge.img"), &mut rng);
    let started = Instant::now();
    let outcome = ferry_mover::backup(&repo, &source, &backup_options()).unwrap();
    let took = started.elapsed();
    println!("{test}: backed up in {took:.2?}");
    assert!(took < Duration::from_secs(15), "the backup took {took:?}");
    assert_eq!(outcome.snapshot.summary.errors, 0);
    let target = work.join("restored");
    ferry_mover::restore(
        &repo,
        &outcome.snapshot_id.to_hex(),
        &target,
        &RestoreOptions::default(),
    )
    .unwrap();
    let restored = File::open(target.join("huge.img")).unwrap();
    let meta = restored.metadata().unwrap();
    assert_eq!(meta.len(), size);
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "restored sparse: {} blocks",
        meta.blocks()
    );
    for (offset, bytes) in data {
        let mut read = vec![0; bytes.len()];
        restored.read_exact_at(&mut read, offset).unwrap();
        assert!(read == bytes, "the data at {offset} differs");
    }
}

attack!(
    /// The same file planted in a volume restored in place (where the snapshot has a small file,
    /// and where it has nothing): the restore scans the target for reusable data, and must not
    /// read exabytes of zeros either.
    in_place_restore_over_a_maximal_sparse_file_is_prompt,
    limit = Duration::from_secs(40),
    in_place_restore_over_a_maximal_sparse_file_is_prompt_attack,
);

fn in_place_restore_over_a_maximal_sparse_file_is_prompt_attack(work: &Path, test: &str) {
    let mut rng = Rng(seed(test));
    let repo = repository(work);
    let source = work.join("source");
    plain_volume(&source, 1, 4, 100_000, &mut rng);
    let snapshot = snapshot_of(&repo, &source);
    let target = work.join("volume");
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    huge_sparse_file(&target.join("d0/f1"), &mut rng);
    huge_sparse_file(&target.join("planted.img"), &mut rng);
    let started = Instant::now();
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    let took = started.elapsed();
    println!("{test}: restored in place in {took:.2?}");
    assert!(took < Duration::from_secs(15), "the restore took {took:?}");
    assert_same_tree(&source, &target);
}

attack!(
    /// A file that grows while it is backed up (a log written fast, here with holes between its
    /// records so that it grows faster than any reader without filling the disk): the backup
    /// reads at most the size it listed, and ends.
    backup_of_a_growing_file_ends,
    limit = Duration::from_secs(40),
    backup_of_a_growing_file_ends_attack,
);

fn backup_of_a_growing_file_ends_attack(work: &Path, test: &str) {
    let mut rng = Rng(seed(test));
    let repo = repository(work);
    let source = work.join("volume");
    write(&source.join("small"), b"small\n");
    let log = File::create(source.join("growing.log")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let record = noise(rng.next(), 16 * 1024);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let end = log.metadata().unwrap().len();
                log.write_all_at(&record, end).unwrap();
                log.set_len(end + record.len() as u64 + (16 << 20)).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            log.metadata().unwrap().len()
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let outcome = ferry_mover::backup(&repo, &source, &backup_options());
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let final_size = writer.join().unwrap();
    println!("{test}: backed up in {took:.2?}; the log grew to {final_size} bytes");
    let outcome = outcome.unwrap();
    assert!(took < Duration::from_secs(15), "the backup took {took:?}");
    let mut recorded = None;
    walk_tree(
        &repo,
        &outcome.snapshot.tree,
        Path::new(""),
        &mut |path, node| {
            if path == Path::new("growing.log") {
                recorded = Some(node.size);
            }
        },
    );
    let recorded = recorded.expect("the log is in the snapshot");
    assert!(
        recorded > 0 && recorded <= final_size,
        "recorded {recorded} of {final_size}"
    );
}

attack!(
    /// A backup cancelled while it reads one large file (a stream that does not look sparse)
    /// stops within a second or two, not when the file ends.
    a_cancelled_backup_of_a_large_file_stops_promptly,
    limit = Duration::from_secs(60),
    a_cancelled_backup_of_a_large_file_stops_promptly_attack,
);

fn a_cancelled_backup_of_a_large_file_stops_promptly_attack(work: &Path, test: &str) {
    let seed = seed(test);
    let repo = repository(work);
    let source = work.join("volume");
    std::fs::create_dir_all(&source).unwrap();
    // 512 MiB of distinct data, written from one 4 MiB block stamped differently each time.
    let big = File::create(source.join("big.bin")).unwrap();
    let base = noise(seed, 4 << 20);
    for block in 0..128u64 {
        let mut bytes = base.clone();
        for stamp in bytes.chunks_mut(512) {
            stamp[..8].copy_from_slice(&block.to_le_bytes());
        }
        big.write_all_at(&bytes, block * (4 << 20)).unwrap();
    }
    drop(big);
    let cancel = Arc::new(AtomicBool::new(false));
    let canceller = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            cancel.store(true, Ordering::SeqCst);
            Instant::now()
        })
    };
    let options = BackupOptions {
        cancel: Some(cancel),
        ..backup_options()
    };
    let result = ferry_mover::backup(&repo, &source, &options);
    let ended = Instant::now();
    let cancelled_at = canceller.join().unwrap();
    let after = ended.saturating_duration_since(cancelled_at);
    println!(
        "{test}: the backup ended {after:.2?} after it was cancelled: {:?}",
        result.as_ref().map(|o| o.snapshot_id)
    );
    assert!(
        matches!(result, Err(Error::Cancelled)),
        "a cancelled backup must end cancelled, not {:?}",
        result.map(|o| o.snapshot_id)
    );
    assert!(
        after < Duration::from_secs(2),
        "the backup ended {after:?} after it was cancelled"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Device nodes, deep trees.

/// Loop devices the device test attached to its "host disk" image, detached whatever happened.
fn detach_loop_devices(work: &Path) {
    let image = work.join("host-disk.img");
    if !image.exists() {
        return;
    }
    let Ok(out) = Command::new("losetup").arg("-j").arg(&image).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((device, _)) = line.split_once(':') {
            let _ = Command::new("losetup").arg("-d").arg(device).status();
        }
    }
}

/// A loop device over a file standing for the node's disk; `None` where there are no loop
/// devices.
fn host_disk(work: &Path) -> Option<(PathBuf, u64)> {
    let image = work.join("host-disk.img");
    std::fs::write(
        &image,
        b"the node's own disk; nobody writes here\n".repeat(100_000),
    )
    .unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&image)
        .output()
        .ok()?;
    if !out.status.success() {
        println!("no loop device: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let rdev = std::fs::metadata(&device).unwrap().rdev();
    Some((device, rdev))
}

fn read_device(device: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    File::open(device).unwrap().read_to_end(&mut bytes).unwrap();
    bytes
}

/// What the device race swaps in for files the restore patches in place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Device {
    /// Character devices 1:5, like /dev/zero: endless to read.
    Endless,
    /// A block device of the node's disk: a loop device over a file here.
    Disk,
}

fn device_restore_race(work: &Path, test: &str, kind: Device) {
    let mut rng = Rng(seed(test));
    let repo = repository(work);
    let source = work.join("source");
    let files = plain_volume(&source, 2, 10, 128 * 1024, &mut rng);
    let snapshot = snapshot_of(&repo, &source);
    let target = work.join("volume");
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    let stash = work.join("stash");
    std::fs::create_dir(&stash).unwrap();
    let disk = match kind {
        Device::Endless => None,
        Device::Disk => match host_disk(work) {
            Some(disk) => Some(disk),
            None => {
                println!("{test}: SKIPPED, no loop device to stand for the node's disk");
                return;
            }
        },
    };
    let pristine = disk.as_ref().map(|(device, _)| read_device(device));
    let (node_kind, rdev) = match &disk {
        Some((_, rdev)) => (rustix::fs::FileType::BlockDevice, *rdev),
        None => (
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::makedev(1, 5),
        ),
    };

    let attacker = {
        let (target, stash, files) = (target.clone(), stash.clone(), files.clone());
        let mut n = 0u64;
        Attacker::start(rng.next(), move |rng| {
            n += 1;
            let real = target.join(rng.pick(&files));
            let planted = swap(&real, &stash.join(n.to_string()), rng.micros(3000), |at| {
                mknod(at, node_kind, rdev)
            });
            spin(rng.micros(200));
            planted
        })
    };
    let written = |disk: &Option<(PathBuf, u64)>| match (disk, &pristine) {
        (Some((device, _)), Some(pristine)) => read_device(device) != *pristine,
        _ => false,
    };
    let started = Instant::now();
    let mut restores = 0;
    let mut harmed = Vec::new();
    while started.elapsed() < race_time() {
        attacker.pause();
        if written(&disk) {
            harmed.push(restores);
            let (device, _) = disk.as_ref().unwrap();
            std::fs::write(device, pristine.as_ref().unwrap()).unwrap();
        }
        // Patched in the middle: the restore patches them in place.
        for rel in &files {
            let _ = patch_nofollow(&target.join(rel), &noise(rng.next(), 4096), &mut rng);
        }
        attacker.resume();
        println!("restore {restores} starts at {:.2?}", started.elapsed());
        let _ = ferry_mover::restore(&repo, &snapshot, &target, &in_place());
        restores += 1;
    }
    let swaps = attacker.finish();
    if written(&disk) {
        harmed.push(restores);
    }
    println!(
        "{test}: {restores} in-place restores raced {swaps} device nodes swapped in; none hung; \
         {} of them wrote into the node's disk",
        harmed.len(),
    );
    assert!(
        harmed.is_empty(),
        "{test}: restores {harmed:?} wrote into the node's disk through a device node of the volume"
    );
}

attack!(
    /// Files the in-place restore scans and patches swapped for character devices like
    /// /dev/zero: no restore may hang reading one.
    in_place_restore_with_endless_devices_swapped_in_does_not_hang,
    limit = race_limit(),
    |work: &Path, test: &str| device_restore_race(work, test, Device::Endless),
);

attack!(
    /// Files the in-place restore patches swapped for a block device node of the node's own disk
    /// (the pod has CAP_MKNOD by default; its device cgroup keeps it from opening the node, the
    /// agent has no such limit): no restore may write a byte into the disk.
    in_place_restore_never_writes_into_a_block_device_swapped_in,
    limit = race_limit(),
    |work: &Path, test: &str| device_restore_race(work, test, Device::Disk),
);

attack!(
    /// Block device nodes of the node's disk planted, with no race, where the snapshot has a
    /// regular file and where it has nothing: the in-place restore replaces or deletes them
    /// without writing into the disk.
    in_place_restore_over_planted_block_devices_writes_nothing_into_them,
    limit = Duration::from_secs(30),
    in_place_restore_over_planted_block_devices_writes_nothing_into_them_attack,
);

fn in_place_restore_over_planted_block_devices_writes_nothing_into_them_attack(
    work: &Path,
    test: &str,
) {
    let mut rng = Rng(seed(test));
    let repo = repository(work);
    let source = work.join("source");
    plain_volume(&source, 1, 4, 128 * 1024, &mut rng);
    let snapshot = snapshot_of(&repo, &source);
    let target = work.join("volume");
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    let Some((device, rdev)) = host_disk(work) else {
        println!("{test}: SKIPPED, no loop device to stand for the node's disk");
        return;
    };
    let pristine = read_device(&device);
    for planted in ["d0/f0", "d0/f1", "d0/planted"] {
        remove_any(&target.join(planted));
        assert!(mknod(
            &target.join(planted),
            rustix::fs::FileType::BlockDevice,
            rdev
        ));
    }
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    assert!(
        read_device(&device) == pristine,
        "the restore wrote into the node's disk"
    );
    assert_same_tree(&source, &target);
}

/// Watches device nodes planted in a volume, with inotify, for being opened: an open runs the
/// driver's open (a watchdog arms, a tape rewinds, a modem hangs up) whatever the opener does
/// next. An `O_PATH` descriptor (which the data mover may use to look at an entry) is not an
/// open: Linux reports none for it since 6.5; where it still does, the test is skipped.
struct OpenDetector {
    inotify: std::os::fd::OwnedFd,
    buffer: Vec<std::mem::MaybeUninit<u8>>,
    opens: u64,
}

impl OpenDetector {
    fn new(work: &Path) -> Option<OpenDetector> {
        use rustix::fs::inotify;
        let fd =
            inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC).unwrap();
        let mut detector = OpenDetector {
            inotify: fd,
            buffer: vec![std::mem::MaybeUninit::uninit(); 4096],
            opens: 0,
        };
        let probe = work.join("o_path-probe");
        assert!(detector.plant(&probe));
        drop(
            rustix::fs::open(&probe, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap(),
        );
        std::fs::remove_file(&probe).unwrap();
        (detector.opened() == 0).then_some(detector)
    }

    /// A character device 1:3 (what /dev/null is: harmless to open) at `at`, watched.
    fn plant(&self, at: &Path) -> bool {
        let kind = rustix::fs::FileType::CharacterDevice;
        mknod(at, kind, rustix::fs::makedev(1, 3))
            && rustix::fs::inotify::add_watch(
                &self.inotify,
                at,
                rustix::fs::inotify::WatchFlags::OPEN,
            )
            .is_ok()
    }

    /// How many opens of planted nodes there have been so far.
    fn opened(&mut self) -> u64 {
        let mut reader = rustix::fs::inotify::Reader::new(&self.inotify, &mut self.buffer);
        while let Ok(event) = reader.next() {
            if event
                .events()
                .contains(rustix::fs::inotify::ReadFlags::OPEN)
            {
                self.opens += 1;
            }
            if reader.is_buffer_empty() {
                break;
            }
        }
        self.opens
    }
}

#[derive(Clone, Copy)]
enum Operation {
    Backup,
    InPlaceRestore,
}

fn device_open_race(work: &Path, test: &str, operation: Operation) {
    let mut rng = Rng(seed(test));
    let Some(detector) = OpenDetector::new(work) else {
        println!("{test}: SKIPPED, this kernel reports O_PATH descriptors as opens");
        return;
    };
    let detector = Arc::new(Mutex::new(detector));
    let repo = repository(work);
    let source = work.join("source");
    let files = plain_volume(&source, 2, 10, 64 * 1024, &mut rng);
    let snapshot = snapshot_of(&repo, &source);
    let volume = match operation {
        Operation::Backup => source.clone(),
        Operation::InPlaceRestore => {
            let target = work.join("volume");
            ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
            target
        }
    };
    let stash = work.join("stash");
    std::fs::create_dir(&stash).unwrap();
    let attacker = {
        let (volume, stash, files, detector) = (
            volume.clone(),
            stash.clone(),
            files.clone(),
            detector.clone(),
        );
        let mut n = 0u64;
        Attacker::start(rng.next(), move |rng| {
            n += 1;
            let reals: Vec<PathBuf> = (0..4).map(|_| volume.join(rng.pick(&files))).collect();
            let planted = swap_several(&reals, &stash, n, rng.micros(3000), |at| {
                detector.lock().unwrap().plant(at)
            });
            spin(rng.micros(200));
            planted
        })
    };
    let started = Instant::now();
    let (mut runs, mut opened_during) = (0u64, Vec::new());
    while started.elapsed() < race_time() {
        attacker.pause();
        let before = detector.lock().unwrap().opened();
        for rel in &files {
            let _ = patch_nofollow(&volume.join(rel), &noise(rng.next(), 4096), &mut rng);
        }
        attacker.resume();
        let _ = match operation {
            Operation::Backup => ferry_mover::backup(&repo, &volume, &backup_options()).map(|_| ()),
            Operation::InPlaceRestore => {
                ferry_mover::restore(&repo, &snapshot, &volume, &in_place()).map(|_| ())
            }
        };
        attacker.pause();
        if detector.lock().unwrap().opened() > before {
            opened_during.push(runs);
        }
        attacker.resume();
        runs += 1;
    }
    let swaps = attacker.finish();
    let opens = detector.lock().unwrap().opened();
    println!(
        "{test}: {runs} runs raced {swaps} device nodes swapped in; {opens} opens of them, \
         during {} runs",
        opened_during.len()
    );
    assert_eq!(
        opens, 0,
        "{test}: the data mover opened device nodes of the volume {opens} times (during runs \
         {opened_during:?}); it must look at an entry without opening it (O_PATH) before opening \
         it for reading or writing"
    );
}

attack!(
    /// Files of the volume swapped for device nodes while the agent backs it up: the backup may
    /// look at them but must never open one (which runs the driver's open).
    backup_never_opens_a_device_node_swapped_in,
    limit = race_limit(),
    |work: &Path, test: &str| device_open_race(work, test, Operation::Backup),
);

attack!(
    /// Files the in-place restore patches swapped for device nodes: it must never open one, for
    /// reading or for writing.
    in_place_restore_never_opens_a_device_node_swapped_in,
    limit = race_limit(),
    |work: &Path, test: &str| device_open_race(work, test, Operation::InPlaceRestore),
);

/// Descriptors this process holds open on entries below `dir`.
fn descriptors_below(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| target.starts_with(dir))
        .collect()
}

attack!(
    /// A pod with a large tree, and a backup that watches progress (as the agent's does) and is
    /// cancelled at once: once `backup` has returned, nothing of it may still work in the volume
    /// (a descriptor held there keeps the kubelet from unmounting it, and the work outlives the
    /// task's slot and deadline).
    a_cancelled_backup_leaves_nothing_working_in_the_volume,
    limit = Duration::from_secs(60),
    a_cancelled_backup_leaves_nothing_working_in_the_volume_attack,
);

fn a_cancelled_backup_leaves_nothing_working_in_the_volume_attack(work: &Path, _test: &str) {
    let repo = repository(work);
    let source = work.join("volume");
    for a in 0..100 {
        for b in 0..100 {
            std::fs::create_dir_all(source.join(format!("{a}/{b}"))).unwrap();
        }
    }
    let sink: Arc<dyn ferry_mover::ProgressSink> = Arc::new(|_: ferry_mover::ProgressEvent| {});
    let options = BackupOptions {
        progress: Some(sink),
        cancel: Some(Arc::new(AtomicBool::new(true))),
        ..backup_options()
    };
    let result = ferry_mover::backup(&repo, &source, &options);
    let source = std::fs::canonicalize(&source).unwrap();
    let held = descriptors_below(&source);
    println!(
        "backup: {:?}; descriptors held in the volume right after: {}",
        result.as_ref().map(|o| o.snapshot_id),
        held.len()
    );
    assert!(matches!(result, Err(Error::Cancelled)));
    assert!(
        held.is_empty(),
        "the backup returned but still holds descriptors in the volume: {held:?}"
    );
}

/// A volume of 1,500 sibling directories of one file each, under a soft limit of 1,024 open
/// descriptors (what containers get by default).
fn wide_volume(work: &Path, test: &str) -> PathBuf {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let mut rng = Rng(seed(test));
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(1024),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let source = work.join("volume");
    for d in 0..1500 {
        write(&source.join(format!("w{d:04}/f")), &noise(rng.next(), 64));
    }
    source
}

attack!(
    /// A pod makes 1,500 sibling directories; the agent runs, as containers do by default, with
    /// a soft limit of 1,024 open descriptors. The backup (watching progress, as the agent's
    /// does) must still back up every file without an error: the data mover's descriptors must
    /// not grow with a directory's width.
    wide_directories_are_backed_up_whole_under_the_agent_descriptor_limit,
    limit = Duration::from_secs(60),
    wide_backup_attack,
);

fn wide_backup_attack(work: &Path, test: &str) {
    let source = wide_volume(work, test);
    let repo = repository(work);
    let sink: Arc<dyn ferry_mover::ProgressSink> = Arc::new(|_: ferry_mover::ProgressEvent| {});
    let options = BackupOptions {
        progress: Some(sink),
        ..backup_options()
    };
    let outcome = ferry_mover::backup(&repo, &source, &options).unwrap();
    let mut files = 0;
    walk_tree(
        &repo,
        &outcome.snapshot.tree,
        Path::new(""),
        &mut |_, node| {
            files += u64::from(node.name == b"f");
        },
    );
    println!(
        "{test}: {} errors, {files} of 1500 files backed up",
        outcome.snapshot.summary.errors
    );
    assert_eq!(
        (outcome.snapshot.summary.errors, files),
        (0, 1500),
        "(errors, files backed up)"
    );
}

attack!(
    /// The same 1,500 directories, each with a file the snapshot lacks, restored in place under
    /// the same limit: everything the snapshot lacks must go.
    wide_directories_are_restored_whole_under_the_agent_descriptor_limit,
    limit = Duration::from_secs(60),
    wide_restore_attack,
);

fn wide_restore_attack(work: &Path, test: &str) {
    let source = wide_volume(work, test);
    let repo = repository(work);
    let snapshot = snapshot_of(&repo, &source);
    let target = work.join("restored");
    ferry_mover::restore(&repo, &snapshot, &target, &RestoreOptions::default()).unwrap();
    for d in 0..1500 {
        write(
            &target.join(format!("w{d:04}/extra")),
            b"the snapshot lacks this",
        );
    }
    let summary = ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    println!(
        "{test}: {} of 1500 extra files deleted, {} errors",
        summary.files_deleted, summary.errors
    );
    assert_same_tree(&source, &target);
}

attack!(
    /// A pod (root in its container, with CAP_SETFCAP as containers get by default) gives a
    /// program of its volume file capabilities (`security.capability`, here CAP_SYS_ADMIN). Like
    /// setuid bits, they must not come back by default from a restore, which the agent runs as
    /// root outside the pod's namespaces.
    file_capabilities_are_not_restored_by_default,
    limit = Duration::from_secs(30),
    file_capabilities_attack,
);

fn file_capabilities_attack(work: &Path, _test: &str) {
    let repo = repository(work);
    let source = work.join("volume");
    let program = source.join("program");
    write(&program, b"#!/bin/sh\necho privileged\n");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    // struct vfs_cap_data, revision 2, effective: CAP_SYS_ADMIN (21) permitted.
    let mut capability = Vec::new();
    for word in [0x0200_0001u32, 1 << 21, 0, 0, 0] {
        capability.extend_from_slice(&word.to_le_bytes());
    }
    xattr::set(&program, "security.capability", &capability).unwrap();
    let snapshot = snapshot_of(&repo, &source);
    for (what, options) in [
        ("a restore", RestoreOptions::default()),
        ("an in-place restore", in_place()),
    ] {
        let target = work.join("restored");
        ferry_mover::restore(&repo, &snapshot, &target, &options).unwrap();
        let restored = xattr::get(target.join("program"), "security.capability").unwrap();
        assert!(
            restored.is_none(),
            "{what} gave the program back its file capabilities: {restored:?}"
        );
    }
}

attack!(
    /// Names a pod may pick (255 bytes, the longest a name can be; not UTF-8; with a newline),
    /// restored in place over a volume where each is now a directory, so that the restore cannot
    /// patch it where it is: the volume must come back exactly.
    names_a_pod_picks_are_restored_in_place_exactly,
    limit = Duration::from_secs(30),
    names_attack,
);

fn names_attack(work: &Path, test: &str) {
    let mut rng = Rng(seed(test));
    let repo = repository(work);
    let source = work.join("volume");
    let names: Vec<std::ffi::OsString> = vec![
        "n".repeat(255).into(),
        std::ffi::OsStr::from_bytes(b"not-utf8-\xff\xfe").to_owned(),
        "line\nbreak".into(),
    ];
    for name in &names {
        write(&source.join(name), &noise(rng.next(), 10_000));
    }
    let snapshot = snapshot_of(&repo, &source);
    let target = work.join("restored");
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    assert_same_tree(&source, &target);
    for name in &names {
        std::fs::remove_file(target.join(name)).unwrap();
        write(&target.join(name).join("inner"), b"a directory now");
    }
    let summary = ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    println!("{test}: {summary:?}");
    assert_same_tree(&source, &target);
}

fn nest(root: &Path, depth: usize) {
    use rustix::fs::{CWD, Mode, OFlags};
    std::fs::create_dir_all(root).unwrap();
    let mut dir =
        rustix::fs::openat(CWD, root, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    for _ in 0..depth {
        rustix::fs::mkdirat(&dir, "d", Mode::from_raw_mode(0o755)).unwrap();
        dir = rustix::fs::openat(
            &dir,
            "d",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .unwrap();
    }
    let file = rustix::fs::openat(
        &dir,
        "bottom",
        OFlags::CREATE | OFlags::WRONLY,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&file, b"at the bottom\n").unwrap();
}

/// Removes what [`nest`] made below `root` (and whatever is at its bottom), quickly: `rm -rf`
/// takes seconds on a chain thousands deep, so the chain is pulled up one level at a time.
fn unnest(root: &Path) {
    let top = root.join("d");
    let up = root.join("d-up");
    while std::fs::symlink_metadata(top.join("d")).is_ok_and(|meta| meta.is_dir()) {
        if std::fs::rename(top.join("d"), &up).is_err() {
            break;
        }
        let _ = std::fs::remove_dir_all(&top);
        if std::fs::rename(&up, &top).is_err() {
            break;
        }
    }
    remove_any(&top);
}

/// Runs `f` on a thread with the stack the agent's tasks get (tokio's blocking threads: 2 MiB).
fn on_agent_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    on_stack(2 << 20, f)
}

fn on_stack<T: Send + 'static>(size: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(size)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

attack!(
    /// A pod nests directories 5,000 deep (mkdirat needs no path longer than PATH_MAX): backup
    /// and restore, on a thread with the stack the agent's tasks get, may refuse it but must not
    /// overflow the stack, which aborts the whole agent with every task it runs.
    a_very_deep_tree_crashes_neither_backup_nor_restore,
    limit = Duration::from_secs(60),
    a_very_deep_tree_crashes_neither_backup_nor_restore_attack,
);

fn a_very_deep_tree_crashes_neither_backup_nor_restore_attack(work: &Path, _test: &str) {
    let repo = repository(work);
    let source = work.join("volume");
    nest(&source, 5_000);
    let (r, s) = (repo.clone(), source.clone());
    let outcome = on_agent_stack(move || ferry_mover::backup(&r, &s, &backup_options()));
    println!(
        "backup: {:?}",
        outcome.as_ref().map(|o| &o.snapshot.summary)
    );
    let target = work.join("restored");
    if let Ok(outcome) = outcome {
        let snapshot = outcome.snapshot_id.to_hex();
        let into = target.clone();
        let restored =
            on_agent_stack(move || ferry_mover::restore(&repo, &snapshot, &into, &in_place()));
        println!("restore: {:?}", restored.map(|s| s.files_restored));
    }
    unnest(&source);
    unnest(&target);
}

attack!(
    /// A pod nests directories 5,000 deep in its volume, where the snapshot has nothing: the
    /// in-place restore, on a thread with the agent's stack, removes them or fails, but must not
    /// overflow the stack.
    an_in_place_restore_over_a_very_deep_planted_tree_does_not_crash,
    limit = Duration::from_secs(60),
    an_in_place_restore_over_a_very_deep_planted_tree_does_not_crash_attack,
);

fn an_in_place_restore_over_a_very_deep_planted_tree_does_not_crash_attack(
    work: &Path,
    test: &str,
) {
    let mut rng = Rng(seed(test));
    let repo = repository(work);
    let source = work.join("source");
    plain_volume(&source, 1, 2, 1000, &mut rng);
    let snapshot = snapshot_of(&repo, &source);
    let target = work.join("volume");
    ferry_mover::restore(&repo, &snapshot, &target, &in_place()).unwrap();
    nest(&target.join("planted"), 5_000);
    let into = target.clone();
    let restored = on_agent_stack(move || {
        ferry_mover::restore(&repo, &snapshot, &into, &in_place()).map(|s| s.files_deleted)
    });
    println!("restore: {restored:?}");
    unnest(&target.join("planted"));
}

attack!(
    /// A tree 600 directories deep (well within PATH_MAX): a backup that reports no error must
    /// be a snapshot that restores. (Run on a large stack: crashing is the test above's.)
    a_deep_tree_backed_up_without_error_restores,
    limit = Duration::from_secs(60),
    a_deep_tree_backed_up_without_error_restores_attack,
);

fn a_deep_tree_backed_up_without_error_restores_attack(work: &Path, _test: &str) {
    let repo = repository(work);
    let source = work.join("volume");
    nest(&source, 600);
    let target = work.join("restored");
    let copy = source.clone();
    let (outcome, restored) = on_stack(256 << 20, move || {
        let outcome = ferry_mover::backup(&repo, &copy, &backup_options()).unwrap();
        let restored = (outcome.snapshot.summary.errors == 0).then(|| {
            let snapshot = outcome.snapshot_id.to_hex();
            ferry_mover::restore(&repo, &snapshot, &target, &RestoreOptions::default())
        });
        (outcome, restored)
    });
    println!("backup: {:?}", outcome.snapshot.summary);
    if let Some(restored) = restored {
        let summary = restored.expect("a snapshot backed up without error restores");
        println!("restore: {summary:?}");
        assert_same_tree(&source, &work.join("restored"));
    }
}
