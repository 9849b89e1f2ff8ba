//! The end of a restore: temp files moved into place, hard links and special files made,
//! metadata restored (directories last, deepest first, so that work inside a directory does not
//! undo its times), what the snapshot lacks removed, and everything made durable.
//!
//! Metadata goes through descriptors: every entry but a symlink is pinned with an `O_PATH`
//! descriptor (which opens nothing: no FIFO wait, no driver, no permission check), checked to be
//! of the kind restored, and changed through `/proc/self/fd/<n>`, which reaches exactly that
//! inode; a symlink through its parent's descriptor with `AT_SYMLINK_NOFOLLOW`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use tracing::warn;

use super::plan::RestorePlan;
use super::{RestoreOptions, RestoreSummary};
use crate::error::{Error, Result};
use crate::progress::{ProgressEvent, Tracker};
use crate::root_dir::{AtRoot, RootDir, read_names, remove_entry};
use crate::tree::{Node, NodeKind};

pub(super) fn finish(
    root: &RootDir,
    plan: &RestorePlan,
    options: &RestoreOptions,
    summary: &mut RestoreSummary,
    tracker: &Tracker,
) -> Result<()> {
    let metadata = Metadata {
        as_root: rustix::process::geteuid().is_root(),
        privileges: options.privileges,
    };
    for (position, file) in plan.files.iter().enumerate() {
        if plan.damaged.contains(&(position as u32)) {
            // A file this restore created (or truncated) is removed rather than left looking
            // restored; one patched in place keeps what the target held.
            if !file.in_place
                && let Ok((parent, name)) = root.parent(&file.write_rel)
            {
                let _ = rustix::fs::unlinkat(&parent, name, AtFlags::empty());
            }
            summary.errors += 1;
            summary.damaged_files.push(file.rel.display().to_string());
            tracker.emit(ProgressEvent::Error {
                path: file.rel.display().to_string(),
                message: "damaged or missing data".into(),
            });
            continue;
        }
        if file.write_rel != file.rel {
            move_into_place(root, &file.write_rel, &file.rel)?;
        }
        let applied = root
            .open_at(&file.rel, OFlags::PATH, Mode::empty())
            .and_then(|pinned| metadata.apply(&pinned, FileType::RegularFile, &file.node, summary));
        if let Err(error) = applied {
            warn!(message = "cannot restore metadata", path = %root.display(&file.rel).display(), %error);
            summary.errors += 1;
        }
        summary.files_restored += 1;
        if file.unchanged {
            tracker.file_done(file.node.size);
        } else {
            tracker.files_done.fetch_add(1, Ordering::Relaxed);
        }
    }
    for (rel, first) in &plan.links {
        match link(root, first, rel) {
            Ok(()) => summary.files_restored += 1,
            Err(error) => {
                warn!(message = "cannot create a hard link", path = %root.display(rel).display(), %error);
                summary.errors += 1;
            }
        }
    }
    for (rel, node) in &plan.specials {
        match create_special(root, rel, node, options, &metadata, summary) {
            Ok(true) => summary.files_restored += 1,
            Ok(false) => {}
            Err(error) => {
                warn!(message = "cannot create a special file", path = %root.display(rel).display(), %error);
                summary.errors += 1;
            }
        }
    }
    for (_, aside) in &plan.displaced {
        if let Ok((parent, name)) = root.parent(aside) {
            let _ = rustix::fs::unlinkat(&parent, name, AtFlags::empty());
        }
    }
    if options.delete {
        summary.files_deleted = delete_extra(root, plan, summary)?;
    }
    let mut dirs: Vec<&(PathBuf, Node)> = plan.dirs.iter().collect();
    dirs.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
    for (rel, node) in dirs {
        let applied = root
            .open_at(rel, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .and_then(|pinned| metadata.apply(&pinned, FileType::Directory, node, summary));
        if let Err(error) = applied {
            warn!(message = "cannot restore metadata", path = %root.display(rel).display(), %error);
            summary.errors += 1;
        }
    }
    Ok(())
}

/// Renames the temp file `from` over `to` (a directory there is removed first).
fn move_into_place(root: &RootDir, from: &Path, to: &Path) -> Result<()> {
    let (parent, temp_name) = root.parent(from).at_root(root, from)?;
    let name = to.file_name().expect("a file name");
    if let Ok(stat) = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
        && FileType::from_raw_mode(stat.st_mode) == FileType::Directory
    {
        remove_entry(parent.as_fd(), name, root.device(), &root.display(to))?;
    }
    rustix::fs::renameat(&parent, temp_name, &parent, name)
        .map_err(|errno| Error::io(root.display(to), errno.into()))
}

fn link(root: &RootDir, first: &Path, rel: &Path) -> Result<()> {
    let (first_parent, first_name) = root.parent(first).at_root(root, first)?;
    let (parent, name) = root.parent(rel).at_root(root, rel)?;
    remove_entry(parent.as_fd(), name, root.device(), &root.display(rel))?;
    // No AT_SYMLINK_FOLLOW: links the entry itself, never what a symlink swapped in points to.
    rustix::fs::linkat(&first_parent, first_name, &parent, name, AtFlags::empty())
        .map_err(|errno| Error::io(root.display(rel), errno.into()))
}

/// Creates a symlink, FIFO or device node and restores its metadata; `false` when it was not
/// created (a socket, or a device not asked for).
fn create_special(
    root: &RootDir,
    rel: &Path,
    node: &Node,
    options: &RestoreOptions,
    metadata: &Metadata,
    summary: &mut RestoreSummary,
) -> Result<bool> {
    let (parent, name) = root.parent(rel).at_root(root, rel)?;
    let io = |errno: Errno| Error::io(root.display(rel), errno.into());
    let device_type = match node.kind {
        // A socket belongs to a process; there is nothing to restore.
        NodeKind::Socket => return Ok(false),
        NodeKind::CharDevice => Some(FileType::CharacterDevice),
        NodeKind::BlockDevice => Some(FileType::BlockDevice),
        _ => None,
    };
    if device_type.is_some() && !options.devices {
        warn!(message = "not creating a device node (restore devices only when asked to)", path = %root.display(rel).display());
        summary.skipped += 1;
        return Ok(false);
    }
    remove_entry(parent.as_fd(), name, root.device(), &root.display(rel))?;
    let private = Mode::from_raw_mode(0o600);
    match (node.kind, device_type) {
        (NodeKind::Symlink, _) => {
            rustix::fs::symlinkat(OsStr::from_bytes(&node.link_target), &parent, name)
                .map_err(io)?;
            if metadata.as_root {
                rustix::fs::chownat(
                    &parent,
                    name,
                    Some(Uid::from_raw(node.uid)),
                    Some(Gid::from_raw(node.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io)?;
            }
            rustix::fs::utimensat(&parent, name, &times_of(node), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io)?;
            return Ok(true);
        }
        (_, Some(device)) => {
            rustix::fs::mknodat(&parent, name, device, private, node.rdev).map_err(io)?
        }
        _ => rustix::fs::mknodat(&parent, name, FileType::Fifo, private, 0).map_err(io)?,
    }
    let pinned = rustix::fs::openat(
        &parent,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io)?;
    metadata
        .apply(
            &pinned,
            device_type.unwrap_or(FileType::Fifo),
            node,
            summary,
        )
        .map_err(|error| Error::io(root.display(rel), error))?;
    Ok(true)
}

fn expect_kind(fd: &OwnedFd, kind: FileType) -> std::io::Result<rustix::fs::Stat> {
    let stat = rustix::fs::fstat(fd)?;
    if FileType::from_raw_mode(stat.st_mode) != kind {
        return Err(std::io::Error::other(
            "replaced by something else meanwhile",
        ));
    }
    Ok(stat)
}

fn times_of(node: &Node) -> Timestamps {
    let mtime = Timespec {
        tv_sec: node.mtime,
        tv_nsec: node.mtime_nsec as _,
    };
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

/// Attributes that grant or label: `security.capability` (file capabilities),
/// `security.selinux` and the other LSMs' labels, and `trusted.*`.
fn is_privileged_attribute(name: &[u8]) -> bool {
    name.starts_with(b"security.") || name.starts_with(b"trusted.")
}

/// How metadata is restored.
struct Metadata {
    /// Owners are restored only by root (anyone else cannot give files away).
    as_root: bool,
    /// Keep setuid and setgid bits, and security and trusted attributes.
    privileges: bool,
}

impl Metadata {
    /// The node's permission bits, less setuid and setgid unless they are to be kept.
    fn mode(&self, node: &Node, summary: &mut RestoreSummary) -> u32 {
        let mode = node.mode & 0o7777;
        if !self.privileges && mode & 0o6000 != 0 {
            summary.skipped += 1;
            return mode & !0o6000;
        }
        mode
    }

    /// Whether the entry already has the node's owner, mode and mtime (and the node no extended
    /// attributes to set): an incremental restore then changes nothing, which spares the four
    /// system calls of each of the thousands of files it left alone, and their ctime. The atime
    /// is not compared: a snapshot does not record it (a restore sets it to the mtime), and
    /// reading a restored file moves it.
    fn already_applied(&self, stat: &rustix::fs::Stat, node: &Node, mode: u32) -> bool {
        node.xattrs.is_empty()
            && stat.st_mode & 0o7777 == mode
            && (!self.as_root || (stat.st_uid, stat.st_gid) == (node.uid, node.gid))
            && (stat.st_mtime, stat.st_mtime_nsec as i64) == (node.mtime, node.mtime_nsec as i64)
    }

    /// Owner, mode, xattrs and times of the entry `pinned` (an `O_PATH` descriptor), once it is
    /// known to be of `kind`; in that order: chown clears setuid bits, and every change before
    /// the times would bump the mtime again.
    fn apply(
        &self,
        pinned: &OwnedFd,
        kind: FileType,
        node: &Node,
        summary: &mut RestoreSummary,
    ) -> std::io::Result<()> {
        let stat = expect_kind(pinned, kind)?;
        let mode = self.mode(node, summary);
        if self.already_applied(&stat, node, mode) {
            return Ok(());
        }
        let path = PathBuf::from(format!("/proc/self/fd/{}", pinned.as_raw_fd()));
        if self.as_root {
            rustix::fs::chownat(
                pinned,
                "",
                Some(Uid::from_raw(node.uid)),
                Some(Gid::from_raw(node.gid)),
                AtFlags::EMPTY_PATH,
            )?;
        }
        rustix::fs::chmod(&path, Mode::from_raw_mode(mode))?;
        for xattr in &node.xattrs {
            let name = OsStr::from_bytes(&xattr.name);
            if !self.privileges && is_privileged_attribute(&xattr.name) {
                // File capabilities are setuid's finer form, labels decide what a program may do:
                // not given back unless asked for.
                summary.skipped += 1;
                continue;
            }
            if let Err(error) = rustix::fs::setxattr(&path, name, &xattr.value, XattrFlags::empty())
            {
                warn!(message = "cannot restore an extended attribute", name = %name.to_string_lossy(), %error);
            }
        }
        Ok(rustix::fs::utimensat(
            rustix::fs::CWD,
            &path,
            &times_of(node),
            AtFlags::empty(),
        )?)
    }
}

/// Removes what the target holds beyond what the snapshot has, never into another filesystem;
/// returns how many entries went. One directory is open at a time, reached from the root by its
/// path when its turn comes.
fn delete_extra(root: &RootDir, plan: &RestorePlan, summary: &mut RestoreSummary) -> Result<u64> {
    let mut removed = 0;
    let mut dirs: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let dir = match root.dir(&rel) {
            Ok(dir) => dir,
            Err(error) => {
                warn!(message = "cannot look for what the snapshot lacks", path = %root.display(&rel).display(), %error);
                summary.errors += 1;
                continue;
            }
        };
        for name in read_names(dir.as_fd(), &root.display(&rel))? {
            let name = OsStr::from_bytes(&name);
            let child = rel.join(name);
            if !plan.wanted.contains(&child) {
                match remove_entry(dir.as_fd(), name, root.device(), &root.display(&child)) {
                    Ok(()) => removed += 1,
                    Err(error) => {
                        warn!(message = "cannot remove what the snapshot lacks", path = %root.display(&child).display(), %error);
                        summary.errors += 1;
                    }
                }
                continue;
            }
            if let Ok(stat) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                && FileType::from_raw_mode(stat.st_mode) == FileType::Directory
                && stat.st_dev == root.device()
            {
                dirs.push(child);
            }
        }
    }
    Ok(removed)
}
