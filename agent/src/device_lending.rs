//! How a block volume reaches the agent. The kubelet gives a pod its block device, and the
//! container runtime's device cgroup lets only that pod's containers open it: the agent, which
//! runs unprivileged, would be refused. So the pod that holds the device (a data mover's pod, or
//! a restore's fill pod, both Ferry's image) opens it and lends the open descriptor over a Unix
//! socket in an emptyDir of its own (`ferry lend-device`); the agent reaches the socket through
//! the pod's volume directory, receives the descriptor (`SCM_RIGHTS`) and reads or writes the
//! device through it. A pod can only lend what it could open itself, and the agent takes nothing
//! but one block device, open for what the task needs.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use rustix::fs::{FileType, OFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The byte sent beside the descriptor; a peer that sends anything else is not a lender.
const LENT: u8 = b'F';

/// Opens `device` (for reading, or reading and writing when `writable`) and lends it to every
/// connection on a socket made at `socket`, for ever. The socket is made readable by root only.
pub fn lend(
    device: &Path,
    socket: &Path,
    writable: bool,
) -> std::io::Result<std::convert::Infallible> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(device)
        .map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("opening {}: {error}", device.display()),
            )
        })?;
    let kind = FileType::from_raw_mode(rustix::fs::fstat(&file)?.st_mode);
    if kind != FileType::BlockDevice {
        return Err(std::io::Error::other(format!(
            "{} is not a block device",
            device.display()
        )));
    }
    // A socket left by an earlier run of this container is replaced.
    match std::fs::remove_file(socket) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let listener = UnixListener::bind(socket).map_err(|error| {
        std::io::Error::new(
            error.kind(),
            format!("listening at {}: {error}", socket.display()),
        )
    })?;
    eprintln!(
        "ferry: lending {} ({}) at {}",
        device.display(),
        if writable { "read-write" } else { "read-only" },
        socket.display()
    );
    loop {
        let (stream, _) = listener.accept()?;
        let fds = [file.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        if let Err(error) = rustix::net::sendmsg(
            &stream,
            &[IoSlice::new(&[LENT])],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            eprintln!("ferry: lending the device to a connection failed: {error}");
        }
    }
}

/// Borrows the block device that the pod lends in its exchange directory `dir` (opened by the
/// caller, with no symlink on the way) for pod volume `volume`; `writable` when the task writes
/// into it.
pub fn borrow(dir: BorrowedFd<'_>, volume: &str, writable: bool) -> std::io::Result<File> {
    let socket = ferry_protocol::agent::device_socket(volume);
    // The socket is pinned without following a symlink, and connected to through that pin: a
    // name swapped for a symlink (to another pod's lender, say) between a check and the connect
    // cannot aim the agent elsewhere.
    let pinned = match rustix::fs::openat(
        dir,
        socket.as_str(),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(pinned) => pinned,
        Err(errno) => {
            return Err(std::io::Error::new(
                std::io::Error::from(errno).kind(),
                format!(
                    "the pod lends no device for volume {volume} ({socket}: {errno}); is its lender (`ferry lend-device`) running?"
                ),
            ));
        }
    };
    if FileType::from_raw_mode(rustix::fs::fstat(&pinned)?.st_mode) != FileType::Socket {
        return Err(std::io::Error::other(format!(
            "{socket} in the pod's device exchange is not a socket"
        )));
    }
    let path = format!("/proc/self/fd/{}", pinned.as_raw_fd());
    let stream = UnixStream::connect(&path)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    // Every descriptor received is owned (and so closed) whether or not it is the one wanted.
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if received.bytes != 1 || byte[0] != LENT || fds.len() != 1 {
        return Err(std::io::Error::other(format!(
            "the pod's lender for volume {volume} sent {} descriptors and {} bytes, not one device",
            fds.len(),
            received.bytes
        )));
    }
    let file = File::from(fds.pop().expect("one descriptor"));
    let stat = rustix::fs::fstat(&file)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::BlockDevice {
        return Err(std::io::Error::other(format!(
            "the pod lent something other than a block device for volume {volume}"
        )));
    }
    let access = rustix::fs::fcntl_getfl(&file)? & OFlags::RWMODE;
    if writable && access == OFlags::RDONLY {
        return Err(std::io::Error::other(format!(
            "the pod lent volume {volume}'s device read-only, and the restore writes into it"
        )));
    }
    Ok(file)
}
