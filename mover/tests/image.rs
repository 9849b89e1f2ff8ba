//! Images (issue 18): a block volume is backed up as one file read from its device, and
//! restored into a device. A regular file stands in for the device here; the node agent's tests
//! use real block devices.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

use common::*;
use ferry_mover::restore::restore_image;
use ferry_mover::{BackupOptions, Error, RestoreOptions, backup::backup_image};

/// 9 MiB of data with a 3 MiB run of zeros in the middle and pseudo-random bytes around it.
fn image_bytes() -> Vec<u8> {
    let mut bytes = noise(18, 9 << 20);
    bytes[3 << 20..6 << 20].fill(0);
    bytes
}

fn file_with(path: &std::path::Path, bytes: &[u8]) -> File {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    file.write_all(bytes).unwrap();
    file
}

#[test]
fn an_image_round_trips_into_a_larger_dirty_target_and_its_zeros_are_holes() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _store) = local_backend();
    let repo = init(backend);
    let source = image_bytes();
    let image = file_with(&dir.path().join("source.img"), &source);
    let outcome =
        backup_image(&repo, image, "raw", "volume raw", &BackupOptions::default()).unwrap();
    let tree = repo.load_tree(&outcome.snapshot.tree).unwrap();
    assert_eq!(tree.nodes.len(), 1);
    assert_eq!(tree.nodes[0].name, b"raw");
    assert_eq!(tree.nodes[0].size, source.len() as u64);
    // The zeros cost nothing in the repository.
    assert!(
        outcome.snapshot.summary.bytes_added < 7 << 20,
        "{} bytes added for 6 MiB of data",
        outcome.snapshot.summary.bytes_added
    );

    // A target that held other data, and is larger: the image's bytes, zeros included, then the
    // target's own tail untouched.
    let mut dirty = vec![0xa5u8; source.len() + 4096];
    dirty[source.len()..].fill(0x5a);
    let target = file_with(&dir.path().join("target.img"), &dirty);
    let options = RestoreOptions {
        sync: true,
        ..Default::default()
    };
    let summary = restore_image(&repo, &outcome.snapshot.tree, &target, &options).unwrap();
    assert_eq!(summary.files_restored, 1);
    let mut restored = vec![0u8; dirty.len()];
    target.read_exact_at(&mut restored, 0).unwrap();
    assert!(
        restored[..source.len()] == source[..],
        "the image differs after its restore"
    );
    assert!(
        restored[source.len()..].iter().all(|&b| b == 0x5a),
        "bytes past the image were written"
    );

    // Backed up again unchanged, it adds no data.
    let again = backup_image(
        &repo,
        File::open(dir.path().join("source.img")).unwrap(),
        "raw",
        "volume raw",
        &BackupOptions::default(),
    )
    .unwrap();
    assert_eq!(again.snapshot.summary.data_blobs_added, 0);
}

#[test]
fn an_image_is_refused_by_a_smaller_target_and_a_directory_snapshot_by_an_image_target() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _store) = local_backend();
    let repo = init(backend);
    let image = file_with(&dir.path().join("source.img"), &image_bytes());
    let outcome =
        backup_image(&repo, image, "raw", "volume raw", &BackupOptions::default()).unwrap();
    let small = file_with(&dir.path().join("small.img"), &vec![7u8; 1 << 20]);
    let error = restore_image(
        &repo,
        &outcome.snapshot.tree,
        &small,
        &RestoreOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
    assert!(
        error.to_string().contains("fewer than the image's"),
        "{error}"
    );
    let mut untouched = vec![0u8; 1 << 20];
    small.read_exact_at(&mut untouched, 0).unwrap();
    assert!(
        untouched.iter().all(|&b| b == 7),
        "a refused restore wrote into the target"
    );

    let tree_dir = dir.path().join("tree");
    std::fs::create_dir_all(tree_dir.join("a")).unwrap();
    std::fs::write(tree_dir.join("a/f"), b"x").unwrap();
    std::fs::write(tree_dir.join("g"), b"y").unwrap();
    let directory = ferry_mover::backup(&repo, &tree_dir, &BackupOptions::default()).unwrap();
    let target = file_with(&dir.path().join("target.img"), &vec![7u8; 16 << 20]);
    let error = restore_image(
        &repo,
        &directory.snapshot.tree,
        &target,
        &RestoreOptions::default(),
    )
    .unwrap_err();
    assert!(error.to_string().contains("is not an image"), "{error}");

    let error = backup_image(
        &repo,
        File::open(dir.path().join("source.img")).unwrap(),
        "../escape",
        "volume raw",
        &BackupOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
}
