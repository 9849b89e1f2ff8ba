//! A directory the data mover works in (a backup's source, a restore's target), opened once and
//! then only ever reached through its file descriptor.
//!
//! The node agent runs as root in volumes that the pods using them can change while it works. A
//! path rebuilt from the root for every operation can be steered elsewhere by swapping one of its
//! directories for a symlink between two system calls. So every path below the root is resolved
//! by the kernel in one step with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV)`: no component may be a symlink, leave the root, or cross onto another
//! filesystem (a nested mount). Where `openat2` is missing (kernels before 5.6, or a seccomp
//! profile that refuses it) the same rules are applied by opening one component at a time with
//! `O_NOFOLLOW` and comparing devices. What is then done to an entry is done through a
//! descriptor of it or of its parent directory (`fchown`, `fchmod`, `futimens`, `unlinkat`,
//! `renameat`, `linkat`, ...), never through a path again.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};

/// Set once `openat2` turned out to be unavailable; the component walk is used from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

pub struct RootDir {
    fd: OwnedFd,
    device: u64,
    /// For messages only: never opened again.
    path: PathBuf,
}

impl std::fmt::Debug for RootDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootDir({})", self.path.display())
    }
}

impl RootDir {
    /// Opens the directory at `path` (following symlinks in `path` itself: that is the caller's
    /// choice of directory).
    pub fn open(path: &Path) -> Result<RootDir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| Error::io(path, errno.into()))?;
        RootDir::from_fd(fd, path)
    }

    /// A root from a directory descriptor opened by the caller; `path` names it in messages.
    pub fn from_fd(fd: OwnedFd, path: impl Into<PathBuf>) -> Result<RootDir> {
        let path = path.into();
        let stat = rustix::fs::fstat(&fd).map_err(|errno| Error::io(&path, errno.into()))?;
        if !is_dir(&stat) {
            return Err(Error::InvalidArgument(format!(
                "{} is not a directory",
                path.display()
            )));
        }
        Ok(RootDir {
            fd,
            device: stat.st_dev,
            path,
        })
    }

    pub fn device(&self) -> u64 {
        self.device
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `rel` under the root, for messages.
    pub fn display(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens `rel`, resolved beneath the root with no symlink in any component and no other
    /// filesystem. `rel` is relative and made of plain names; the empty path is the root.
    pub fn open_at(&self, rel: &Path, flags: OFlags, mode: Mode) -> std::io::Result<OwnedFd> {
        self.resolve(rel, flags, mode, true)
    }

    /// The directory `rel`, resolved beneath the root with no symlink in any component, but
    /// allowed onto other filesystems: how the kubelet's pods directory leads to a volume's
    /// mount point.
    pub fn dir_across_mounts(&self, rel: &Path) -> std::io::Result<OwnedFd> {
        self.resolve(
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
            false,
        )
    }

    fn resolve(
        &self,
        rel: &Path,
        flags: OFlags,
        mode: Mode,
        same_filesystem: bool,
    ) -> std::io::Result<OwnedFd> {
        check_relative(rel)?;
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let target: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            match rustix::fs::openat2(
                &self.fd,
                target,
                flags,
                mode,
                if same_filesystem {
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV
                } else {
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS
                },
            ) {
                Err(Errno::NOSYS | Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
                other => return other.map_err(Into::into),
            }
        }
        self.open_by_components(rel, flags, mode, same_filesystem)
    }

    /// What `openat2` does, one component at a time: every directory on the way opened with
    /// `O_NOFOLLOW` relative to the previous one and checked to be on the root's filesystem.
    fn open_by_components(
        &self,
        rel: &Path,
        flags: OFlags,
        mode: Mode,
        same_filesystem: bool,
    ) -> std::io::Result<OwnedFd> {
        let names: Vec<&OsStr> = rel.iter().collect();
        let Some((last, dirs)) = names.split_last() else {
            return Ok(rustix::fs::openat(&self.fd, ".", flags, mode)?);
        };
        let mut dir: Option<OwnedFd> = None;
        for name in dirs {
            let parent = dir.as_ref().map_or(self.fd.as_fd(), |d| d.as_fd());
            let next = rustix::fs::openat(
                parent,
                *name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(symlink_as_loop)?;
            if same_filesystem && rustix::fs::fstat(&next)?.st_dev != self.device {
                return Err(Errno::XDEV.into());
            }
            dir = Some(next);
        }
        let parent = dir.as_ref().map_or(self.fd.as_fd(), |d| d.as_fd());
        let opened = rustix::fs::openat(parent, *last, flags, mode)?;
        let stat = rustix::fs::fstat(&opened)?;
        if same_filesystem && is_dir(&stat) && stat.st_dev != self.device {
            return Err(Errno::XDEV.into());
        }
        Ok(opened)
    }

    /// The directory `rel`, opened for reading its entries and for `*at` calls.
    pub fn dir(&self, rel: &Path) -> std::io::Result<OwnedFd> {
        self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
    }

    /// The parent directory of `rel` and its last component: what `*at` calls take.
    pub fn parent<'a>(&self, rel: &'a Path) -> std::io::Result<(OwnedFd, &'a OsStr)> {
        let name = rel
            .file_name()
            .ok_or_else(|| std::io::Error::from(Errno::INVAL))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((self.dir(parent)?, name))
    }

    /// Makes every write to the root's filesystem durable (`syncfs`): the data, metadata and
    /// directory entries of everything a restore wrote, in one call.
    pub fn sync_filesystem(&self) -> Result<()> {
        rustix::fs::syncfs(&self.fd).map_err(|errno| Error::io(&self.path, errno.into()))
    }
}

impl AsFd for RootDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn symlink_as_loop(errno: Errno) -> Errno {
    // `O_PATH | O_NOFOLLOW | O_DIRECTORY` on a symlink says ENOTDIR; openat2 says ELOOP.
    if errno == Errno::NOTDIR {
        Errno::LOOP
    } else {
        errno
    }
}

fn check_relative(rel: &Path) -> std::io::Result<()> {
    if rel.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a plain relative path", rel.display()),
        ))
    }
}

pub fn is_dir(stat: &Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory
}

pub fn is_regular(stat: &Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile
}

/// Opens the regular file `name` of directory `dir` for reading, or says what else it is. The
/// entry is first pinned with `O_PATH` (which never runs a driver's open or blocks on a FIFO),
/// checked to be a regular file on `device`, and only then reopened for reading through
/// `/proc/self/fd`, which reaches that very inode whatever has been renamed meanwhile.
pub fn open_regular(dir: BorrowedFd<'_>, name: &OsStr, device: u64) -> Result<(File, Stat)> {
    let what = || PathBuf::from(name);
    let pinned = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| Error::io(what(), errno.into()))?;
    let stat = regular_on(&pinned, device).map_err(|error| Error::io(what(), error))?;
    let file = reopen(&pinned, OFlags::RDONLY).map_err(|error| Error::io(what(), error))?;
    Ok((file, stat))
}

/// The stat of a pinned entry that must be a regular file on `device`.
fn regular_on(pinned: &OwnedFd, device: u64) -> std::io::Result<Stat> {
    let stat = rustix::fs::fstat(pinned)?;
    if !is_regular(&stat) {
        return Err(std::io::Error::other(
            "not a regular file (replaced while being worked on?)",
        ));
    }
    if stat.st_dev != device {
        return Err(Errno::XDEV.into());
    }
    Ok(stat)
}

/// Opens the inode a pinned (`O_PATH`) descriptor refers to, through `/proc/self/fd`: never a
/// different entry swapped in at its name since. Never blocks (`O_NONBLOCK`), never becomes a
/// controlling terminal.
fn reopen(pinned: &OwnedFd, flags: OFlags) -> std::io::Result<File> {
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(pinned));
    let fd = rustix::fs::open(
        proc_path.as_str(),
        flags | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| {
        if errno == Errno::NOENT {
            std::io::Error::other("/proc is not mounted: the data mover needs /proc/self/fd")
        } else {
            errno.into()
        }
    })?;
    Ok(File::from(fd))
}

impl RootDir {
    /// The regular file `rel`, opened for reading (see [`open_regular`]).
    pub fn open_regular(&self, rel: &Path) -> Result<(File, Stat)> {
        let (dir, name) = self
            .parent(rel)
            .map_err(|error| Error::io(self.display(rel), error))?;
        open_regular(dir.as_fd(), name, self.device)
            .map_err(|error| error.context(self.display(rel).display()))
    }

    /// The regular file `rel`, opened for writing: created (mode 0600) when `create` and
    /// missing; otherwise pinned first and checked to be a regular file, so that nothing else
    /// swapped in at its name (a FIFO, a device) is ever opened. `truncate` empties it.
    pub fn open_regular_for_write(
        &self,
        rel: &Path,
        create: bool,
        truncate: bool,
    ) -> std::io::Result<File> {
        if create {
            match self.open_at(
                rel,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => return Ok(File::from(fd)),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(error),
            }
        }
        let pinned = self.open_at(rel, OFlags::PATH, Mode::empty())?;
        regular_on(&pinned, self.device)?;
        let mut flags = OFlags::WRONLY;
        if truncate {
            flags |= OFlags::TRUNC;
        }
        reopen(&pinned, flags)
    }

    /// Opens the existing regular file `rel` for reading and writing (a file patched in place
    /// whose content moves within it), checked as [`RootDir::open_regular_for_write`] does.
    pub fn open_regular_for_update(&self, rel: &Path) -> std::io::Result<File> {
        let pinned = self.open_at(rel, OFlags::PATH, Mode::empty())?;
        regular_on(&pinned, self.device)?;
        reopen(&pinned, OFlags::RDWR)
    }

    /// A second handle on the same directory (its own descriptor), for another thread.
    pub fn try_clone(&self) -> Result<RootDir> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|error| Error::io(&self.path, error))?;
        Ok(RootDir {
            fd,
            device: self.device,
            path: self.path.clone(),
        })
    }
}

/// Lists the entry names of an open directory (without `.` and `..`), sorted by bytes.
pub fn read_names(dir: BorrowedFd<'_>, path: &Path) -> Result<Vec<Vec<u8>>> {
    // Dir reads from its own duplicate of the descriptor, from the start.
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| Error::io(path, errno.into()))?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::new(fd).map_err(|errno| Error::io(path, errno.into()))? {
        let entry = entry.map_err(|errno| Error::io(path, errno.into()))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes `name` from directory `dir`, a whole directory tree included, through descriptors and
/// never leaving `device`: a mount point below is not descended into (and its removal fails).
///
/// However deep the tree (a pod can nest directories far deeper than any stack or descriptor
/// limit), it holds two descriptors and no recursion: every subdirectory found is first moved up
/// into `dir` under a temporary name, then removed in turn.
pub fn remove_entry(dir: BorrowedFd<'_>, name: &OsStr, device: u64, path: &Path) -> Result<()> {
    let io = |errno: Errno| Error::io(path, errno.into());
    let stat = match rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(()),
        Err(errno) => return Err(io(errno)),
    };
    if !is_dir(&stat) {
        return match rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(errno) => Err(io(errno)),
        };
    }
    let mut pending: Vec<std::ffi::OsString> = vec![name.to_owned()];
    while let Some(current) = pending.pop() {
        let child = match rustix::fs::openat(
            dir,
            current.as_os_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(child) => child,
            Err(Errno::NOENT) => continue,
            Err(errno) => return Err(io(errno)),
        };
        if rustix::fs::fstat(&child).map_err(io)?.st_dev != device {
            return Err(Error::io(
                path,
                std::io::Error::other("a mount point below; not removed"),
            ));
        }
        for entry in read_names(child.as_fd(), path)? {
            let entry = OsStr::from_bytes(&entry);
            let entry_stat =
                match rustix::fs::statat(&child, entry, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => stat,
                    Err(Errno::NOENT) => continue,
                    Err(errno) => return Err(io(errno)),
                };
            if is_dir(&entry_stat) {
                let hoisted = format!(".ferry-removing-{}", &crate::Id::random().to_hex()[..16]);
                rustix::fs::renameat(&child, entry, dir, hoisted.as_str()).map_err(io)?;
                pending.push(hoisted.into());
            } else {
                match rustix::fs::unlinkat(&child, entry, rustix::fs::AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(errno) => return Err(io(errno)),
                }
            }
        }
        drop(child);
        match rustix::fs::unlinkat(dir, current.as_os_str(), rustix::fs::AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(errno) => return Err(io(errno)),
        }
    }
    Ok(())
}

/// `rel` as a path error's subject under `root`.
pub trait AtRoot<T> {
    fn at_root(self, root: &RootDir, rel: &Path) -> Result<T>;
}

impl<T> AtRoot<T> for std::io::Result<T> {
    fn at_root(self, root: &RootDir, rel: &Path) -> Result<T> {
        self.at(root.display(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_refusals(root: &RootDir) {
        for rel in ["link/file", "link", "dir/../file", "/etc/passwd"] {
            let refused = root
                .open_at(Path::new(rel), OFlags::RDONLY, Mode::empty())
                .expect_err(rel);
            assert!(
                matches!(
                    Errno::from_io_error(&refused),
                    Some(Errno::LOOP | Errno::XDEV | Errno::NOTDIR)
                ) || refused.kind() == std::io::ErrorKind::InvalidInput,
                "{rel}: {refused}"
            );
        }
        root.open_at(Path::new("dir/file"), OFlags::RDONLY, Mode::empty())
            .unwrap();
        root.dir(Path::new("")).unwrap();
    }

    #[test]
    fn paths_never_follow_symlinks_nor_leave_the_root() {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        let inside = base.path().join("root");
        std::fs::create_dir_all(inside.join("dir")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(inside.join("dir/file"), b"in").unwrap();
        std::fs::write(outside.join("file"), b"out").unwrap();
        std::os::unix::fs::symlink(&outside, inside.join("link")).unwrap();
        let root = RootDir::open(&inside).unwrap();
        check_refusals(&root);
        // The fallback walk applies the same rules.
        let refused = root
            .open_by_components(Path::new("link/file"), OFlags::RDONLY, Mode::empty(), true)
            .unwrap_err();
        assert_eq!(Errno::from_io_error(&refused), Some(Errno::LOOP));
        root.open_by_components(Path::new("dir/file"), OFlags::RDONLY, Mode::empty(), true)
            .unwrap();
    }

    #[test]
    fn only_regular_files_are_opened_for_reading() {
        let base = tempfile::tempdir().unwrap();
        std::fs::write(base.path().join("file"), b"data").unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, base.path().join("fifo"), Mode::RUSR).unwrap();
        let root = RootDir::open(base.path()).unwrap();
        let (mut file, stat) =
            open_regular(root.as_fd(), OsStr::new("file"), root.device()).unwrap();
        assert_eq!(stat.st_size, 4);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text, "data");
        // A FIFO is refused without blocking on its open, for reading and for writing.
        assert!(open_regular(root.as_fd(), OsStr::new("fifo"), root.device()).is_err());
        assert!(
            root.open_regular_for_write(Path::new("fifo"), true, false)
                .is_err()
        );
        let mut created = root
            .open_regular_for_write(Path::new("new"), true, false)
            .unwrap();
        std::io::Write::write_all(&mut created, b"new").unwrap();
        assert_eq!(std::fs::read(base.path().join("new")).unwrap(), b"new");
    }

    /// A tree far deeper than any stack or descriptor limit is removed with two descriptors.
    #[test]
    fn a_very_deep_tree_is_removed_without_recursion() {
        let base = tempfile::tempdir().unwrap();
        let root = RootDir::open(base.path()).unwrap();
        rustix::fs::mkdirat(&root, "deep", Mode::from_raw_mode(0o755)).unwrap();
        let mut dir = root.dir(Path::new("deep")).unwrap();
        for _ in 0..5000 {
            rustix::fs::mkdirat(&dir, "d", Mode::from_raw_mode(0o755)).unwrap();
            rustix::fs::openat(&dir, "f", OFlags::CREATE | OFlags::WRONLY, Mode::RUSR).unwrap();
            dir = rustix::fs::openat(&dir, "d", OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())
                .unwrap();
        }
        drop(dir);
        remove_entry(root.as_fd(), OsStr::new("deep"), root.device(), base.path()).unwrap();
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
    }
}
