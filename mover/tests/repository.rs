//! Repository tests: backup, restore, incremental work, damage, maintenance. Each runs on the
//! local backend and on S3 (the test environment's MinIO).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use common::*;
use ferry_mover::backend::Kind;
use ferry_mover::compression::Compressor;
use ferry_mover::{BackupOptions, Error, ParentChoice, Repository, RestoreOptions};

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[test] fn $name() { super::$name("local", stringify!($name)); })*
        }
        mod s3 {
            $(#[test] fn $name() { super::$name("s3", stringify!($name)); })*
        }
    };
}

on_both_backends!(
    every_file_type_and_its_metadata_round_trips,
    identical_and_shifted_content_is_stored_once,
    an_incremental_backup_reads_no_unchanged_file,
    a_wrong_password_is_refused_and_changes_nothing,
    a_flipped_byte_is_found_by_check_and_restore_names_the_file,
    a_crafted_tree_with_path_traversal_is_refused,
    incremental_restore_downloads_only_what_the_target_lacks,
    incremental_restore_of_a_file_whose_content_shifted_is_exact,
    forget_and_prune_keep_what_snapshots_need,
    backup_and_prune_at_once_leave_a_consistent_repository,
    key_slots_add_remove_and_change_passwords,
    a_large_file_spanning_many_packs_restores_exactly_with_its_zeros_as_a_hole,
);

/// Repositories written by earlier ferries (`tests/fixtures/repository-v1`, before format
/// version 2, and `repository-v2`, before version 3; each made with `ferry repo init` and `ferry
/// volume backup --host fixture` of a directory holding `a.txt`, `dir/numbers.txt` and the
/// symlink `link -> a.txt`) still open, restore, take new backups and pass check, and keep their
/// version: a version 2 repository gets no dictionary, however much it is given (a ferry that
/// reads version 2 would not know how to open its blobs).
#[test]
fn a_version_1_repository_is_still_read_and_written() {
    an_older_repository_is_still_read_and_written("repository-v1", b"version-one-fixture", 1);
}

#[test]
fn a_version_2_repository_is_still_read_and_written_without_a_dictionary() {
    an_older_repository_is_still_read_and_written("repository-v2", b"version-two-fixture", 2);
}

fn an_older_repository_is_still_read_and_written(fixture: &str, password: &[u8], version: u32) {
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("repo");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture),
        &copy,
    );
    let backend: Arc<dyn ferry_mover::Backend> = Arc::new(ferry_mover::LocalBackend::new(&copy));
    let repo = Arc::new(Repository::open(backend.clone(), password).unwrap());
    assert_eq!(repo.config().version, version);

    let numbers: String = (1..=2000).map(|n| format!("{n}\n")).collect();
    let restored = work.path().join("restored");
    let summary = restore(&repo, "latest", &restored);
    assert_eq!(summary.errors, 0, "{summary:?}");
    assert_eq!(
        std::fs::read_to_string(restored.join("a.txt")).unwrap(),
        format!("hello from format version {version}\n")
    );
    assert_eq!(
        std::fs::read_to_string(restored.join("dir/numbers.txt")).unwrap(),
        numbers
    );
    assert_eq!(
        std::fs::read_link(restored.join("link")).unwrap(),
        Path::new("a.txt")
    );

    // Enough compressible data that a version 3 repository would train a dictionary on it.
    let lines: String = (0..400_000u64)
        .map(|n| format!("{n:08} row {} of table {}\n", n * 7919 % 100_003, n % 97))
        .collect();
    std::fs::write(restored.join("added.txt"), b"written by a later ferry").unwrap();
    std::fs::write(restored.join("table.csv"), &lines).unwrap();
    backup(&repo, &restored);
    let repo = Arc::new(Repository::open(backend.clone(), password).unwrap());
    assert_eq!(repo.config().version, version);
    assert!(backend.list(Kind::Dictionary).unwrap().is_empty());
    repo.load_index().unwrap();
    assert!(
        repo.index()
            .blobs()
            .all(|(_, location)| location.compression <= 1)
    );
    assert_eq!(repo.snapshots().unwrap().len(), 2);
    let again = work.path().join("again");
    restore(&repo, "latest", &again);
    assert_same_tree(&restored, &again);
    let report = ferry_mover::check(
        &repo,
        &ferry_mover::CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn backup(repo: &Arc<Repository>, source: &Path) -> ferry_mover::BackupOutcome {
    ferry_mover::backup(
        repo,
        source,
        &BackupOptions {
            workers: Some(2),
            ..Default::default()
        },
    )
    .unwrap()
}

fn restore(repo: &Arc<Repository>, snapshot: &str, target: &Path) -> ferry_mover::RestoreSummary {
    restore_with(repo, snapshot, target, RestoreOptions::default())
}

fn restore_with(
    repo: &Arc<Repository>,
    snapshot: &str,
    target: &Path,
    options: RestoreOptions,
) -> ferry_mover::RestoreSummary {
    ferry_mover::restore(
        repo,
        snapshot,
        target,
        &RestoreOptions {
            workers: Some(3),
            ..options
        },
    )
    .unwrap()
}

fn set_mtime(path: &Path, seconds: i64, nanos: u32) {
    let time = std::time::UNIX_EPOCH + std::time::Duration::new(seconds as u64, nanos);
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(time).unwrap();
}

fn every_file_type_and_its_metadata_round_trips(backend_kind: &str, name: &str) {
    let (backend, _store) = backend(backend_kind, name);
    let repo = init(backend);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    write(&source.join("plain.txt"), b"hello, world\n");
    write(&source.join("empty"), b"");
    write(&source.join("dir/nested/deep.bin"), &noise(1, 200_000));
    std::fs::set_permissions(
        source.join("plain.txt"),
        std::fs::Permissions::from_mode(0o4751),
    )
    .unwrap();
    std::os::unix::fs::chown(source.join("plain.txt"), Some(1234), Some(5678)).unwrap();
    // (chown cleared plain.txt's setuid bit; this one keeps both.)
    write(&source.join("setid-program"), b"#!/bin/sh\n");
    std::fs::set_permissions(
        source.join("setid-program"),
        std::fs::Permissions::from_mode(0o6755),
    )
    .unwrap();
    // An attribute of the kind that grants or labels (trusted.*: root only).
    xattr::set(
        source.join("setid-program"),
        "trusted.ferry.test",
        b"granted",
    )
    .expect("the temp filesystem supports trusted xattrs");
    set_mtime(
        &source.join("dir/nested/deep.bin"),
        1_600_000_000,
        123_456_789,
    );
    std::os::unix::fs::symlink("../plain.txt", source.join("dir/link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/absolute", source.join("dangling")).unwrap();
    std::fs::hard_link(source.join("plain.txt"), source.join("dir/hardlink")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        source.join("fifo"),
        rustix::fs::FileType::Fifo,
        0o640.into(),
        0,
    )
    .unwrap();
    // A character device like /dev/null (1, 3): we run as root.
    assert!(
        rustix::process::geteuid().is_root(),
        "this test creates devices and must run as root"
    );
    rustix::fs::mknodat(
        rustix::fs::CWD,
        source.join("null"),
        rustix::fs::FileType::CharacterDevice,
        0o666.into(),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    xattr::set(
        source.join("plain.txt"),
        "user.ferry.test",
        b"value \x00\xff",
    )
    .expect("the temp filesystem supports user xattrs");
    // A sparse file: 8 MiB with 64 KiB of data in the middle.
    let sparse = source.join("sparse.img");
    let file = std::fs::File::create(&sparse).unwrap();
    file.set_len(8 * 1024 * 1024).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &noise(2, 65536), 4 * 1024 * 1024).unwrap();
    drop(file);

    let outcome = backup(&repo, &source);
    assert_eq!(outcome.snapshot.summary.errors, 0);
    let target = work.path().join("restored");
    // Device nodes and setuid bits only when asked for (see the end of this test).
    let everything = RestoreOptions {
        devices: true,
        privileges: true,
        ..Default::default()
    };
    let summary = restore_with(
        &reopen(repo.backend().clone()),
        "latest",
        &target,
        everything,
    );
    assert_eq!(summary.errors, 0, "{summary:?}");
    assert_same_tree(&source, &target);
    let (a, b) = (
        std::fs::metadata(target.join("plain.txt")).unwrap(),
        std::fs::metadata(target.join("dir/hardlink")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hard links are restored as hard links");
    let sparse = std::fs::metadata(target.join("sparse.img")).unwrap();
    assert!(
        sparse.blocks() * 512 < 1024 * 1024,
        "the sparse file took {} blocks",
        sparse.blocks()
    );

    // By default, no device node is created and no privilege restored (setuid/setgid bits,
    // trusted and security attributes): a snapshot of a pod's volume must not hand whoever can
    // write it a device or a privileged program on a node.
    let plain = work.path().join("plain-restore");
    let summary = restore(&repo, "latest", &plain);
    assert_eq!(summary.errors, 0, "{summary:?}");
    assert_eq!(summary.skipped, 3, "{summary:?}");
    assert!(std::fs::symlink_metadata(plain.join("null")).is_err());
    let mode = std::fs::metadata(plain.join("setid-program"))
        .unwrap()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
    assert_eq!(
        xattr::get(plain.join("setid-program"), "trusted.ferry.test").unwrap(),
        None
    );
    assert_eq!(
        std::fs::read(plain.join("dir/nested/deep.bin")).unwrap(),
        noise(1, 200_000)
    );
}

fn identical_and_shifted_content_is_stored_once(backend_kind: &str, name: &str) {
    let (backend, _store) = backend(backend_kind, name);
    let repo = init(backend);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let data = noise(3, 2 * 1024 * 1024);
    write(&source.join("a"), &data);
    let first = backup(&repo, &source).snapshot.summary;

    write(&source.join("b"), &data);
    let mut shifted = b"a few bytes inserted at the start".to_vec();
    shifted.extend_from_slice(&data);
    write(&source.join("c"), &shifted);
    let second = backup(&repo, &source).snapshot.summary;
    assert_eq!(second.files_new, 2);
    // The identical copy adds nothing; the shifted one only its first chunk or two.
    assert!(
        second.bytes_added < first.bytes_added / 10,
        "{} bytes added for content already stored (first backup added {})",
        second.bytes_added,
        first.bytes_added
    );
    assert!(
        second.data_blobs_added <= 2,
        "{} data blobs added",
        second.data_blobs_added
    );
    let target = work.path().join("restored");
    restore(&repo, "latest", &target);
    assert_same_tree(&source, &target);
}

fn an_incremental_backup_reads_no_unchanged_file(backend_kind: &str, name: &str) {
    let (backend, _store) = backend(backend_kind, name);
    let repo = init(backend);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    for i in 0..50 {
        write(
            &source.join(format!("d{}/f{i}", i % 5)),
            &noise(i, 10_000 + i as usize),
        );
    }
    let first = backup(&repo, &source);
    assert_eq!(first.snapshot.summary.files_new, 50);
    let source_bytes: u64 = (0..50).map(|i| 10_000 + i).sum();
    assert_eq!(
        (
            first.snapshot.summary.total_files,
            first.snapshot.summary.total_bytes
        ),
        (50, source_bytes)
    );

    let second = backup(&repo, &source);
    let summary = &second.snapshot.summary;
    assert_eq!(second.snapshot.parent, Some(first.snapshot_id));
    assert_eq!(
        (
            summary.files_unmodified,
            summary.bytes_read,
            summary.bytes_added
        ),
        (50, 0, 0)
    );
    assert_eq!(
        second.snapshot.tree, first.snapshot.tree,
        "an unchanged directory yields the same tree"
    );

    write(&source.join("d1/f1"), b"changed");
    let third = backup(&repo, &source).snapshot.summary;
    assert_eq!(
        (
            third.files_changed,
            third.files_unmodified,
            third.bytes_read
        ),
        (1, 49, 7)
    );
    // The totals count every file, read again or not.
    assert_eq!(
        (third.total_files, third.total_bytes),
        (50, source_bytes - 10_001 + 7)
    );

    // Without a parent, everything is read again (but nothing new is stored).
    let forced = ferry_mover::backup(
        &repo,
        &source,
        &BackupOptions {
            parent: ParentChoice::None,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(forced.snapshot.summary.files_new, 50);
    assert_eq!(forced.snapshot.summary.data_blobs_added, 0);
}

fn a_wrong_password_is_refused_and_changes_nothing(backend_kind: &str, name: &str) {
    let (backend, _store) = backend(backend_kind, name);
    init(backend.clone());
    let before: Vec<_> = [Kind::Key, Kind::Config, Kind::Lock, Kind::Index]
        .iter()
        .map(|k| backend.list(*k).unwrap().len())
        .collect();
    let error = Repository::open(backend.clone(), b"not the password").unwrap_err();
    assert!(matches!(error, Error::WrongPassword), "{error}");
    assert!(error.to_string().contains("wrong password"));
    let after: Vec<_> = [Kind::Key, Kind::Config, Kind::Lock, Kind::Index]
        .iter()
        .map(|k| backend.list(*k).unwrap().len())
        .collect();
    assert_eq!(before, after);
}

fn a_flipped_byte_is_found_by_check_and_restore_names_the_file(backend_kind: &str, name: &str) {
    let (backend, _store) = backend(backend_kind, name);
    let repo = init(backend.clone());
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    write(&source.join("victim"), &noise(7, 30_000));
    write(&source.join("bystander"), &noise(8, 30_000));
    backup(&repo, &source);
    assert!(
        ferry_mover::check(
            &repo,
            &ferry_mover::CheckOptions {
                read_data: true,
                ..Default::default()
            }
        )
        .unwrap()
        .is_clean()
    );

    // Flip a byte inside the victim's blob.
    let victim_blob = {
        let tree = repo
            .load_tree(&repo.find_snapshot("latest").unwrap().1.tree)
            .unwrap();
        let node = tree.nodes.iter().find(|n| n.name == b"victim").unwrap();
        match &node.content[0] {
            ferry_mover::tree::Extent::Blob(id) => *id,
            other => panic!("unexpected {other:?}"),
        }
    };
    let (pack, location) = {
        let index = repo.index();
        let location = *index.get(&victim_blob).unwrap();
        (index.pack_id(&location), location)
    };
    let mut bytes = backend.get(Kind::Pack, &pack.to_hex()).unwrap();
    bytes[location.offset as usize + 100] ^= 0x20;
    backend.delete(Kind::Pack, &pack.to_hex()).unwrap();
    backend.put(Kind::Pack, &pack.to_hex(), &bytes).unwrap();

    let structure = ferry_mover::check(
        &repo,
        &ferry_mover::CheckOptions {
            read_data: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        structure.is_clean(),
        "the structure is intact: {:?}",
        structure.errors
    );
    let report = ferry_mover::check(
        &repo,
        &ferry_mover::CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!report.is_clean());
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains(&victim_blob.to_hex())),
        "{:?}",
        report.errors
    );

    let target = work.path().join("restored");
    let summary =
        ferry_mover::restore(&repo, "latest", &target, &RestoreOptions::default()).unwrap();
    assert_eq!(summary.damaged_files, vec!["victim".to_owned()]);
    assert_eq!(summary.errors, 1);
    assert_eq!(
        std::fs::read(target.join("bystander")).unwrap(),
        noise(8, 30_000)
    );
    assert!(
        !target.join("victim").exists(),
        "a damaged file is not left looking restored"
    );
}

fn a_crafted_tree_with_path_traversal_is_refused(backend_kind: &str, name: &str) {
    use ferry_mover::blob::{BlobKind, seal};
    use ferry_mover::tree::{Node, NodeKind, Tree};
    let (backend, _store) = backend(backend_kind, name);
    let repo = init(backend.clone());
    let work = tempfile::tempdir().unwrap();
    let key = repo.key();
    let escape = work.path().join("escaped");
    for evil in [
        &b".."[..],
        b"../escaped",
        b"/tmp/escaped",
        b"a/../../escaped",
    ] {
        let content = b"should never be written".to_vec();
        let blob_id = key.blob_id(&content);
        let mut tree = Tree {
            nodes: vec![Node {
                name: evil.to_vec(),
                kind: NodeKind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_nsec: 0,
                ctime: 0,
                ctime_nsec: 0,
                inode: 1,
                device: 1,
                links: 1,
                size: content.len() as u64,
                content: vec![ferry_mover::tree::Extent::Blob(blob_id)],
                subtree: None,
                link_target: vec![],
                rdev: 0,
                xattrs: vec![],
            }],
        };
        let tree_bytes = tree.encode();
        let tree_id = key.blob_id(&tree_bytes);
        let temp = tempfile::tempdir().unwrap();
        let mut writer = ferry_mover::pack::PackWriter::new(temp.path(), BlobKind::Data).unwrap();
        writer
            .add(&seal(
                key,
                BlobKind::Data,
                blob_id,
                &content,
                &Compressor::Zstd(3),
            ))
            .unwrap();
        writer
            .add(&seal(
                key,
                BlobKind::Tree,
                tree_id,
                &tree_bytes,
                &Compressor::Zstd(3),
            ))
            .unwrap();
        let pack = writer.finish(key).unwrap();
        backend
            .put_file(Kind::Pack, &pack.id.to_hex(), &pack.path)
            .unwrap();
        repo.save_index_file(&ferry_mover::index::IndexFile {
            version: 1,
            packs: vec![ferry_mover::index::IndexPack::new(
                pack.id,
                pack.size,
                &pack.entries,
            )],
        })
        .unwrap();
        repo.load_index().unwrap();
        let target = work.path().join("target/inner");
        let error = ferry_mover::restore_tree(&repo, &tree_id, &target, &RestoreOptions::default())
            .unwrap_err();
        assert!(
            matches!(error, Error::UnsafePath(_)),
            "{:?} gave {error}",
            String::from_utf8_lossy(evil)
        );
        assert!(!escape.exists() && !Path::new("/tmp/escaped").exists());
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            0,
            "nothing was written for {evil:?}"
        );
    }
}

fn incremental_restore_downloads_only_what_the_target_lacks(backend_kind: &str, name: &str) {
    let (backend, _store) = backend(backend_kind, name);
    let repo = init(backend);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let database = noise(10, 1024 * 1024);
    write(&source.join("db/data.bin"), &database);
    write(&source.join("docs/a.txt"), &noise(11, 50_000));
    write(&source.join("docs/b.txt"), &noise(12, 50_000));
    write(&source.join("moved-later"), &noise(13, 200_000));
    let v1 = backup(&repo, &source);
    let target = work.path().join("target");
    restore(&repo, &v1.snapshot_id.to_hex(), &target);

    // The next version of the source: 4 KiB pages rewritten, a file renamed, a file added.
    let mut database2 = database.clone();
    for page in [10usize, 100, 200] {
        database2[page * 4096..page * 4096 + 4096].copy_from_slice(&noise(page as u64, 4096));
    }
    write(&source.join("db/data.bin"), &database2);
    std::fs::rename(source.join("moved-later"), source.join("docs/renamed")).unwrap();
    write(&source.join("docs/new.txt"), &noise(14, 30_000));
    let v2 = backup(&repo, &source);

    // The target drifted too: a file is damaged, an extra file appeared.
    let mut drifted = std::fs::read(target.join("docs/a.txt")).unwrap();
    drifted[0..10].copy_from_slice(b"0123456789");
    write(&target.join("docs/a.txt"), &drifted);
    write(&target.join("junk"), b"not in the snapshot");

    let options = RestoreOptions {
        incremental: true,
        delete: true,
        workers: Some(2),
        ..Default::default()
    };
    let summary = ferry_mover::restore(&repo, &v2.snapshot_id.to_hex(), &target, &options).unwrap();
    assert_eq!(summary.errors, 0);
    assert_same_tree(&source, &target);
    // Needed from the repository: the 3 changed pages' chunks, new.txt, and a.txt's first chunk.
    let lacking = 3 * 65536 + 30_000 + 65536;
    assert!(
        summary.bytes_downloaded < lacking as u64 * 2,
        "downloaded {} bytes; the target lacked at most about {lacking}",
        summary.bytes_downloaded
    );
    assert!(
        summary.bytes_reused >= 200_000 + 900_000,
        "reused only {}",
        summary.bytes_reused
    );
    // `junk`, and `moved-later`, which the new version has under another name.
    assert_eq!(summary.files_deleted, 2);

    // Restoring the same snapshot again changes nothing and downloads nothing: not even the
    // metadata of what is already right (its ctime stays), but a mode changed meanwhile is put
    // back.
    std::fs::set_permissions(
        target.join("docs/b.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let ctimes = |root: &Path| -> Vec<(String, i64, i64)> {
        [
            "db",
            "db/data.bin",
            "docs",
            "docs/a.txt",
            "docs/b.txt",
            "docs/new.txt",
        ]
        .iter()
        .map(|rel| {
            let meta = std::fs::symlink_metadata(root.join(rel)).unwrap();
            (rel.to_string(), meta.ctime(), meta.ctime_nsec())
        })
        .collect()
    };
    let before = ctimes(&target);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = ferry_mover::restore(&repo, "latest", &target, &options).unwrap();
    assert_eq!(again.bytes_downloaded, 0);
    assert_eq!(again.bytes_written, 0);
    assert_same_tree(&source, &target);
    let changed: Vec<String> = before
        .iter()
        .zip(ctimes(&target))
        .filter(|(before, after)| **before != *after)
        .map(|(before, _)| before.0.clone())
        .collect();
    assert_eq!(
        changed,
        ["docs/b.txt"],
        "only the file whose mode was changed is touched"
    );
}

/// Content that moved within one file (an insert shifts everything after it) is copied from its
/// old offset while the file is patched: the copy must read the old bytes, not ones already
/// overwritten. Both directions: restoring the newer version over the older one and back.
fn incremental_restore_of_a_file_whose_content_shifted_is_exact(backend_kind: &str, name: &str) {
    let (backend, _store) = backend(backend_kind, name);
    let repo = init(backend);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let disk = noise(20, 6 * 1024 * 1024);
    write(&source.join("vm-disk.img"), &disk);
    let v1 = backup(&repo, &source);

    let mut shifted = disk[..2 * 1024 * 1024].to_vec();
    shifted.extend_from_slice(&noise(21, 10_000));
    shifted.extend_from_slice(&disk[2 * 1024 * 1024..]);
    for page in [7usize, 300, 900, 1400] {
        shifted[page * 4096..page * 4096 + 4096].copy_from_slice(&noise(page as u64 + 100, 4096));
    }
    write(&source.join("vm-disk.img"), &shifted);
    let v2 = backup(&repo, &source);

    let options = RestoreOptions {
        incremental: true,
        workers: Some(3),
        ..Default::default()
    };
    let target = work.path().join("target");
    restore(&repo, &v1.snapshot_id.to_hex(), &target);
    let forward = ferry_mover::restore(&repo, &v2.snapshot_id.to_hex(), &target, &options).unwrap();
    assert_eq!(forward.errors, 0);
    assert!(
        std::fs::read(target.join("vm-disk.img")).unwrap() == shifted,
        "the newer version restored over the older one differs from the source"
    );
    assert!(
        forward.bytes_downloaded < shifted.len() as u64 / 2,
        "downloaded {} of {} bytes although most of them were in the target",
        forward.bytes_downloaded,
        shifted.len()
    );

    let back = ferry_mover::restore(&repo, &v1.snapshot_id.to_hex(), &target, &options).unwrap();
    assert_eq!(back.errors, 0);
    assert!(
        std::fs::read(target.join("vm-disk.img")).unwrap() == disk,
        "the older version restored over the newer one differs from it"
    );
}

fn forget_and_prune_keep_what_snapshots_need(backend_kind: &str, name: &str) {
    let (backend, _store) = backend(backend_kind, name);
    let repo = init(backend.clone());
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    for round in 0..3u64 {
        write(
            &source.join(format!("round{round}")),
            &noise(100 + round, 3 * 1024 * 1024),
        );
        if round > 0 {
            std::fs::remove_file(source.join(format!("round{}", round - 1))).unwrap();
        }
        backup(&repo, &source);
    }
    let packs_before: u64 = backend
        .list(Kind::Pack)
        .unwrap()
        .iter()
        .map(|p| p.size)
        .sum();
    let removed = ferry_mover::forget(
        &repo,
        &ferry_mover::RetentionPolicy {
            keep_last: 1,
            ..Default::default()
        },
        std::time::Duration::ZERO,
    )
    .unwrap();
    assert_eq!(removed.len(), 2);
    let report = ferry_mover::prune(&repo, &ferry_mover::PruneOptions::default()).unwrap();
    assert!(report.blobs_removed > 0);
    let packs_after: u64 = backend
        .list(Kind::Pack)
        .unwrap()
        .iter()
        .map(|p| p.size)
        .sum();
    assert!(
        packs_after < packs_before / 2,
        "{packs_after} bytes of packs left of {packs_before}"
    );
    let repo = reopen(backend);
    assert!(
        ferry_mover::check(
            &repo,
            &ferry_mover::CheckOptions {
                read_data: true,
                ..Default::default()
            }
        )
        .unwrap()
        .is_clean()
    );
    let target = work.path().join("restored");
    restore(&repo, "latest", &target);
    assert_same_tree(&source, &target);
}

fn backup_and_prune_at_once_leave_a_consistent_repository(backend_kind: &str, name: &str) {
    let (backend, _store) = backend(backend_kind, name);
    let repo = init(backend.clone());
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    write(&source.join("base"), &noise(20, 2 * 1024 * 1024));
    backup(&repo, &source);
    let backups = {
        let repo = repo.clone();
        let source = source.clone();
        std::thread::spawn(move || {
            for round in 0..4u64 {
                write(
                    &source.join(format!("f{round}")),
                    &noise(200 + round, 1024 * 1024),
                );
                let options = BackupOptions {
                    workers: Some(2),
                    ..Default::default()
                };
                // A backup meeting prune's exclusive lock fails cleanly; it is then retried.
                loop {
                    match ferry_mover::backup(&repo, &source, &options) {
                        Ok(_) => break,
                        Err(Error::Locked { .. }) => {
                            std::thread::sleep(std::time::Duration::from_millis(50))
                        }
                        Err(error) => panic!("backup failed: {error}"),
                    }
                }
            }
        })
    };
    let prune_repo = reopen(backend.clone());
    for _ in 0..4 {
        ferry_mover::forget(
            &prune_repo,
            &ferry_mover::RetentionPolicy {
                keep_last: 2,
                ..Default::default()
            },
            std::time::Duration::ZERO,
        )
        .unwrap();
        let options = ferry_mover::PruneOptions {
            lock_wait: std::time::Duration::from_secs(60),
            ..Default::default()
        };
        ferry_mover::prune(&prune_repo, &options).unwrap();
    }
    backups.join().unwrap();
    let repo = reopen(backend);
    let report = ferry_mover::check(
        &repo,
        &ferry_mover::CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    let target = work.path().join("restored");
    restore(&repo, "latest", &target);
    assert_same_tree(&source, &target);
}

fn key_slots_add_remove_and_change_passwords(backend_kind: &str, name: &str) {
    let (backend, _store) = backend(backend_kind, name);
    init(backend.clone());
    let mut repo = Repository::open_without_index(backend.clone(), PASSWORD).unwrap();
    let second = repo.add_key(b"second password").unwrap();
    assert_eq!(repo.list_keys().unwrap().len(), 2);
    Repository::open(backend.clone(), b"second password").unwrap();
    let error = repo
        .remove_key(
            &repo
                .list_keys()
                .unwrap()
                .iter()
                .find(|k| k.current)
                .unwrap()
                .id
                .clone(),
        )
        .unwrap_err();
    assert!(error.to_string().contains("in use"), "{error}");
    repo.change_password(b"third password").unwrap();
    assert!(matches!(
        Repository::open(backend.clone(), PASSWORD),
        Err(Error::WrongPassword)
    ));
    Repository::open(backend.clone(), b"third password").unwrap();
    repo.remove_key(&second[..10]).unwrap();
    assert!(matches!(
        Repository::open(backend.clone(), b"second password"),
        Err(Error::WrongPassword)
    ));
    assert_eq!(repo.list_keys().unwrap().len(), 1);
}

fn a_large_file_spanning_many_packs_restores_exactly_with_its_zeros_as_a_hole(
    backend_kind: &str,
    name: &str,
) {
    let (backend, _store) = backend(backend_kind, name);
    let repo = init(backend);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    // Many packs' worth of one file (packs are 1 MiB in tests).
    let mut data = noise(30, 6 * 1024 * 1024);
    data[1_000_000..3_000_000].fill(0);
    write(&source.join("big"), &data);
    let outcome = backup(&repo, &source);
    assert!(outcome.snapshot.summary.data_blobs_added > 50);
    let target = work.path().join("restored");
    let summary = restore(&repo, "latest", &target);
    // The zeros are not written: they stay a hole.
    assert!(
        summary.bytes_written < (data.len() - 1_500_000) as u64,
        "wrote {}",
        summary.bytes_written
    );
    assert_eq!(std::fs::read(target.join("big")).unwrap(), data);
    let blocks = std::fs::metadata(target.join("big")).unwrap().blocks() * 512;
    assert!(
        blocks < (data.len() - 1_500_000) as u64,
        "{blocks} bytes allocated"
    );
}

/// A file changed behind the snapshot's back with its size and mtime put back passes the quick
/// check of an incremental restore, which trusts it as rsync does; `verify` reads it back and
/// repairs it.
#[test]
fn verify_reads_back_what_the_quick_check_trusts() {
    let (backend, _store) = local_backend();
    let repo = init(backend);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    write(&source.join("data.bin"), &noise(21, 300_000));
    write(&source.join("other.bin"), &noise(22, 40_000));
    let snapshot = backup(&repo, &source).snapshot_id.to_hex();
    let target = work.path().join("target");
    restore(&repo, &snapshot, &target);

    let meta = std::fs::metadata(target.join("data.bin")).unwrap();
    let (mtime, mtime_nsec) = (meta.mtime(), meta.mtime_nsec() as u32);
    let mut tampered = std::fs::read(target.join("data.bin")).unwrap();
    tampered[1000..1010].copy_from_slice(b"tampered!!");
    std::fs::write(target.join("data.bin"), &tampered).unwrap();
    set_mtime(&target.join("data.bin"), mtime, mtime_nsec);

    let quick = RestoreOptions {
        incremental: true,
        ..Default::default()
    };
    let summary = ferry_mover::restore(&repo, &snapshot, &target, &quick).unwrap();
    assert_eq!(summary.bytes_written, 0, "the quick check read the file");
    assert_eq!(std::fs::read(target.join("data.bin")).unwrap(), tampered);

    let verify = RestoreOptions {
        verify: true,
        ..quick
    };
    let summary = ferry_mover::restore(&repo, &snapshot, &target, &verify).unwrap();
    assert!(summary.bytes_written > 0, "{summary:?}");
    assert_same_tree(&source, &target);
    assert_eq!(
        summary.files_unchanged, 1,
        "other.bin was read back and found exact"
    );
}

/// A file whose content shifted (bytes inserted or removed before most of it) is patched where
/// it is: its chunks moved within it in an order that reads each before anything covers it, no
/// temp copy of the whole file (the inode stays). Content shifted both ways at once cannot always
/// be ordered, and goes to a temp file. Every result is exact.
#[test]
fn shifted_content_is_moved_in_place_when_it_moves_one_way() {
    use std::os::unix::fs::MetadataExt;
    let (backend, _store) = local_backend();
    let repo = init(backend);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let disk = noise(30, 4 * 1024 * 1024);
    let at = |n: usize| n * 1024 * 1024 + 1237;
    let inserted = {
        let mut v = disk[..at(1)].to_vec();
        v.extend_from_slice(&noise(31, 5333));
        v.extend_from_slice(&disk[at(1)..]);
        v
    };
    let removed = {
        let mut v = disk[..at(1)].to_vec();
        v.extend_from_slice(&disk[at(1) + 7777..]);
        v
    };
    let both_ways = {
        let mut v = disk[..at(1)].to_vec();
        v.extend_from_slice(&noise(32, 5333));
        v.extend_from_slice(&disk[at(1)..at(2)]);
        v.extend_from_slice(&disk[at(2) + 20_000..]);
        v
    };
    let mut snapshots = Vec::new();
    for version in [&disk, &inserted, &removed, &both_ways] {
        write(&source.join("disk.img"), version);
        snapshots.push(backup(&repo, &source).snapshot_id.to_hex());
    }
    let options = RestoreOptions {
        incremental: true,
        workers: Some(3),
        ..Default::default()
    };
    let target = work.path().join("target");
    let file = target.join("disk.img");
    let inode = || std::fs::metadata(&file).unwrap().ino();
    for (from, to, content, in_place) in [
        (0, 1, &inserted, true),
        (1, 0, &disk, true),
        (0, 2, &removed, true),
        (2, 0, &disk, true),
        (0, 3, &both_ways, false),
    ] {
        restore(&repo, &snapshots[from], &target);
        let before = inode();
        let summary = ferry_mover::restore(&repo, &snapshots[to], &target, &options).unwrap();
        assert_eq!(summary.errors, 0, "{from} -> {to}");
        assert!(
            std::fs::read(&file).unwrap() == *content,
            "version {to} restored over version {from} differs from it"
        );
        assert_eq!(
            inode() == before,
            in_place,
            "version {to} over version {from}: patched in place should be {in_place}"
        );
        assert!(
            summary.bytes_downloaded < content.len() as u64 / 4,
            "{from} -> {to}: downloaded {} of {} bytes",
            summary.bytes_downloaded,
            content.len()
        );
    }
}
