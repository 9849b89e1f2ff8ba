//! A pod volume's restore is durable before its completion marker (issue 12, item 4).
//!
//! A node that crashes after the agent wrote the marker must not come back with a marker saying
//! "restored" over files that never reached the disk: the pod would start on empty data. The
//! test restores, as the agent does, into an ext4 filesystem on a loop device, then copies the
//! loop device's backing file at once. The copy holds exactly what ext4 had sent to the disk: a
//! crash image. Mounted (its journal replayed), it must hold every restored file whole wherever
//! it holds the marker. ext4 is mounted `noauto_da_alloc`, so that its heuristics for programs
//! that forget to fsync cannot hide a missing sync.
//!
//! Needs root and a free loop device (`losetup`, `mkfs.ext4`, `mount`); fails saying so when
//! either is missing.

#[path = "../../mover/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use common::*;
use ferry_agent::service::restore_volume;
use ferry_mover::root_dir::RootDir;

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("{program} could not run ({error}); this test needs root with util-linux and e2fsprogs")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}; this test needs root and a free loop device",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// An ext4 image attached to a loop device and mounted; detached and unmounted when dropped.
struct Mounted {
    device: String,
    mount: PathBuf,
}

impl Mounted {
    fn new(image: &Path, mount: &Path, options: &str) -> Mounted {
        std::fs::create_dir_all(mount).unwrap();
        let device = run("losetup", &["--find", "--show", image.to_str().unwrap()]);
        let mounted = Mounted {
            device,
            mount: mount.to_owned(),
        };
        run(
            "mount",
            &["-o", options, &mounted.device, mount.to_str().unwrap()],
        );
        mounted
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

#[test]
fn a_restored_volume_is_on_disk_before_its_marker() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (loop devices and mounts)"
    );
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);

    let source = work.path().join("source");
    for n in 0..24u64 {
        write(
            &source.join(format!("dir{}/file{n}", n % 4)),
            &noise(n + 1, 150_000 + n as usize * 1000),
        );
    }
    let (backend, _store) = local_backend();
    let repo = init(backend);
    let snapshot = ferry_mover::backup(&repo, &source, &Default::default())
        .unwrap()
        .snapshot_id;

    let crash_image = work.path().join("crash.img");
    {
        let disk = Mounted::new(&image, &work.path().join("disk"), "noauto_da_alloc");
        let volume = disk.mount.join("volume");
        std::fs::create_dir(&volume).unwrap();
        // Settle what mkfs and mkdir wrote, so that only the restore is in flight.
        run("sync", &[]);
        restore_volume(
            &Arc::clone(&repo),
            &snapshot.to_hex(),
            &RootDir::open(&volume).unwrap(),
            "r1.done",
            false,
            None,
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
        // The crash: what the disk holds right now.
        run(
            "cp",
            &[
                "--sparse=always",
                image.to_str().unwrap(),
                crash_image.to_str().unwrap(),
            ],
        );
    }

    let after = Mounted::new(&crash_image, &work.path().join("after-crash"), "rw");
    let volume = after.mount.join("volume");
    assert!(
        volume.join(".ferry/r1.done").exists(),
        "the marker itself did not survive: it is written with fsync"
    );
    assert_same_tree(&source, &volume_without_marker(&volume, work.path()));
}

/// The restored volume as a tree of its own, without the marker directory the agent added.
fn volume_without_marker(volume: &Path, work: &Path) -> PathBuf {
    let copy = work.join("restored-copy");
    run(
        "cp",
        &["-a", volume.to_str().unwrap(), copy.to_str().unwrap()],
    );
    std::fs::remove_dir_all(copy.join(".ferry")).unwrap();
    copy
}
