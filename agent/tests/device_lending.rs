//! Block volumes (issue 18): a pod lends its block device, open, to the agent over a Unix socket
//! (`ferry lend-device`); the agent backs it up as one file and restores into it. Here a loop
//! device stands in for the pod's volume and threads of this test for the lending pod.
//!
//! Needs root and a free loop device (`losetup`); fails saying so when either is missing.

#[path = "../../mover/tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::*;
use ferry_agent::device_lending::{borrow, lend};
use ferry_agent::service::restore_device;
use ferry_mover::BackupOptions;

/// A file attached to a loop device; detached when dropped.
struct Loop {
    device: PathBuf,
}

impl Loop {
    fn new(image: &Path) -> Loop {
        let output = Command::new("losetup")
            .args(["--find", "--show", image.to_str().unwrap()])
            .output()
            .unwrap_or_else(|error| {
                panic!("losetup could not run ({error}); this test needs root with util-linux")
            });
        assert!(
            output.status.success(),
            "losetup failed: {}; this test needs root and a free loop device",
            String::from_utf8_lossy(&output.stderr)
        );
        Loop {
            device: PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// Lends `device` at `<exchange>/<volume>.sock` from a thread, as a pod's `ferry lend-device`
/// does, and waits until the socket is there.
fn lend_in_background(device: &Path, exchange: &Path, volume: &str, writable: bool) {
    let socket = exchange.join(ferry_protocol::agent::device_socket(volume));
    let (device, lent_at) = (device.to_owned(), socket.clone());
    std::thread::spawn(move || lend(&device, &lent_at, writable));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the lender made no socket at {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_lent_block_device_is_backed_up_whole_and_restored_into() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (loop devices)"
    );
    let work = tempfile::tempdir().unwrap();
    let backing = work.path().join("disk.img");
    let size = 24u64 << 20;
    File::create(&backing).unwrap().set_len(size).unwrap();
    let attached = Loop::new(&backing);
    let exchange = work.path().join("exchange");
    std::fs::create_dir(&exchange).unwrap();
    lend_in_background(&attached.device, &exchange, "raw", true);
    let exchange_dir = File::open(&exchange).unwrap();

    // What an application wrote on its device: data at both ends, zeros between.
    let head = noise(7, 5 << 20);
    let tail = noise(8, 1 << 20);
    let device = borrow(exchange_dir.as_fd(), "raw", true).unwrap();
    device.write_all_at(&head, 0).unwrap();
    device
        .write_all_at(&tail, size - tail.len() as u64)
        .unwrap();
    device.sync_all().unwrap();
    drop(device);

    let (backend, _store) = local_backend();
    let repo = init(backend);
    let device = borrow(exchange_dir.as_fd(), "raw", false).unwrap();
    let outcome = ferry_mover::backup::backup_image(
        &repo,
        device,
        "raw",
        "ns/pod/raw",
        &BackupOptions::default(),
    )
    .unwrap();
    assert_eq!(
        outcome.snapshot.summary.total_bytes, size,
        "the whole device is the image"
    );

    // The device is overwritten, then restored from the repository.
    let device = borrow(exchange_dir.as_fd(), "raw", true).unwrap();
    device.write_all_at(&vec![0xee; size as usize], 0).unwrap();
    let summary = restore_device(
        &repo,
        &outcome.snapshot_id.to_hex(),
        &device,
        None,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(summary.files_restored, 1);
    let mut restored = vec![0u8; size as usize];
    File::open(&attached.device)
        .unwrap()
        .read_exact_at(&mut restored, 0)
        .unwrap();
    let middle = &restored[head.len()..(size as usize - tail.len())];
    assert!(
        restored[..head.len()] == head[..],
        "the device's head differs after the restore"
    );
    assert!(
        middle.iter().all(|&b| b == 0),
        "the zeros between were not restored"
    );
    assert!(
        restored[size as usize - tail.len()..] == tail[..],
        "the device's tail differs"
    );
}

#[test]
fn the_agent_takes_only_a_block_device_open_as_the_task_needs() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (loop devices)"
    );
    let work = tempfile::tempdir().unwrap();
    let backing = work.path().join("disk.img");
    File::create(&backing).unwrap().set_len(1 << 20).unwrap();
    let attached = Loop::new(&backing);
    let exchange = work.path().join("exchange");
    std::fs::create_dir(&exchange).unwrap();
    lend_in_background(&attached.device, &exchange, "ro", false);
    let exchange_dir = File::open(&exchange).unwrap();

    // Lent read-only: enough for a backup, refused for a restore.
    assert!(borrow(exchange_dir.as_fd(), "ro", false).is_ok());
    let error = borrow(exchange_dir.as_fd(), "ro", true).unwrap_err();
    assert!(error.to_string().contains("read-only"), "{error}");
    // No lender: says what to look at.
    let error = borrow(exchange_dir.as_fd(), "none", false).unwrap_err();
    assert!(error.to_string().contains("lend-device"), "{error}");
    // A file, or a symlink to a socket elsewhere, where the socket should be: refused, not
    // followed.
    std::fs::write(exchange.join("file.sock"), b"").unwrap();
    let error = borrow(exchange_dir.as_fd(), "file", false).unwrap_err();
    assert!(error.to_string().contains("not a socket"), "{error}");
    std::os::unix::fs::symlink(exchange.join("ro.sock"), exchange.join("link.sock")).unwrap();
    let error = borrow(exchange_dir.as_fd(), "link", false).unwrap_err();
    assert!(error.to_string().contains("not a socket"), "{error}");
    // A lender of something that is not a block device is refused by the lender itself.
    let error = lend(&backing, &exchange.join("plain.sock"), false).unwrap_err();
    assert!(error.to_string().contains("not a block device"), "{error}");
}
