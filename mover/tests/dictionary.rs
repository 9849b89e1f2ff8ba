//! Compression dictionaries (format version 3): trained once per repository on the first
//! compressible chunks, stored before any pack needs them, used by every later writer and read
//! back by every reader; a missing one is damage, reported, never a silent loss.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use ferry_mover::backend::Kind;
use ferry_mover::blob::{BlobKind, seal};
use ferry_mover::compression::Compressor;
use ferry_mover::{BackupOptions, CheckOptions, ParentChoice, Repository, RestoreOptions};

fn make_source(dir: &Path, seed: u64, files: u64) {
    for n in 0..files {
        write(
            &dir.join(format!("table-{n}.csv")),
            &ferry_tests::text(seed * 1000 + n, 1 << 20),
        );
    }
}

fn backup(repo: &Arc<Repository>, source: &Path) {
    ferry_mover::backup(
        repo,
        source,
        &BackupOptions {
            workers: Some(2),
            parent: ParentChoice::None,
            ..Default::default()
        },
    )
    .unwrap();
}

fn restore(repo: &Arc<Repository>, target: &Path) -> ferry_mover::RestoreSummary {
    ferry_mover::restore(repo, "latest", target, &RestoreOptions::default()).unwrap()
}

fn dictionaries(backend: &Arc<dyn ferry_mover::Backend>) -> Vec<String> {
    let mut names: Vec<String> = backend
        .list(Kind::Dictionary)
        .unwrap()
        .into_iter()
        .map(|object| object.name)
        .collect();
    names.sort();
    names
}

/// Data blobs by compression code.
fn data_blobs_by_compression(repo: &Repository) -> [Vec<ferry_mover::Id>; 3] {
    repo.load_index().unwrap();
    let mut by_code: [Vec<ferry_mover::Id>; 3] = Default::default();
    for (id, location) in repo.index().blobs() {
        if location.kind == BlobKind::Data {
            by_code[location.compression as usize].push(*id);
        }
    }
    by_code
}

fn check_read_data(repo: &Arc<Repository>) -> ferry_mover::CheckReport {
    ferry_mover::check(
        repo,
        &CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn a_repository_trains_one_dictionary_and_compresses_later_chunks_smaller_with_it() {
    let (backend, _store) = local_backend();
    let repo = init(backend.clone());
    assert_eq!(repo.config().version, 3);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    make_source(&source, 1, 24);
    write(&source.join("photo.jpg"), &noise(1, 1 << 20));
    backup(&repo, &source);

    let names = dictionaries(&backend);
    assert_eq!(names.len(), 1, "one dictionary trained: {names:?}");
    let [raw, alone, with_dictionary] = data_blobs_by_compression(&repo);
    // The random file's chunks are stored as they are, with or without a dictionary.
    assert!(!raw.is_empty());
    // The first 8 MiB of samples are compressed alone, everything after with the dictionary.
    assert!(!alone.is_empty());
    assert!(
        with_dictionary.len() > alone.len(),
        "{} blobs with the dictionary, {} alone",
        with_dictionary.len(),
        alone.len()
    );

    // Smaller than the same chunks compressed alone at the same level.
    let (mut stored, mut stored_alone) = (0usize, 0usize);
    for id in &with_dictionary {
        let plaintext = repo.read_blob(id).unwrap();
        stored += repo.index().get(id).unwrap().length as usize;
        stored_alone += seal(
            repo.key(),
            BlobKind::Data,
            *id,
            &plaintext,
            &Compressor::Zstd(repo.config().zstd_level),
        )
        .bytes
        .len();
    }
    assert!(
        stored * 100 < stored_alone * 97,
        "with the dictionary {stored} bytes, alone {stored_alone}"
    );

    // Another process (no dictionary in memory) restores it exactly, and check reads it clean.
    let repo = reopen(backend.clone());
    let restored = work.path().join("restored");
    let summary = restore(&repo, &restored);
    assert_eq!(summary.errors, 0, "{summary:?}");
    assert_same_tree(&source, &restored);
    let report = check_read_data(&repo);
    assert!(report.is_clean(), "{:?}", report.errors);

    // A later backup, by yet another process, uses the stored dictionary from its first chunk.
    let repo = reopen(backend.clone());
    let before: std::collections::HashSet<_> = data_blobs_by_compression(&repo)
        .into_iter()
        .flatten()
        .collect();
    let second = work.path().join("second");
    make_source(&second, 2, 4);
    backup(&repo, &second);
    assert_eq!(dictionaries(&backend), names, "no second dictionary");
    let [_, alone, _] = data_blobs_by_compression(&repo);
    let new_alone: Vec<_> = alone.iter().filter(|id| !before.contains(id)).collect();
    assert!(
        new_alone.is_empty(),
        "{} new blobs compressed without the dictionary",
        new_alone.len()
    );
    let again = work.path().join("again");
    restore(&reopen(backend), &again);
    assert_same_tree(&second, &again);
}

#[test]
fn a_small_backup_trains_nothing_and_the_next_one_does() {
    let (backend, _store) = local_backend();
    let repo = init(backend.clone());
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    make_source(&source, 3, 2);
    backup(&repo, &source);
    assert!(
        dictionaries(&backend).is_empty(),
        "2 MiB is too few samples"
    );
    let [_, alone, with_dictionary] = data_blobs_by_compression(&repo);
    assert!(with_dictionary.is_empty() && !alone.is_empty());

    let repo = reopen(backend.clone());
    make_source(&source, 4, 16);
    backup(&repo, &source);
    assert_eq!(dictionaries(&backend).len(), 1);
    let restored = work.path().join("restored");
    restore(&reopen(backend), &restored);
    assert_same_tree(&source, &restored);
}

#[test]
fn a_missing_dictionary_is_reported_as_damage_naming_it() {
    let (backend, _store) = local_backend();
    let repo = init(backend.clone());
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    make_source(&source, 5, 16);
    backup(&repo, &source);
    let names = dictionaries(&backend);
    assert_eq!(names.len(), 1);
    backend.delete(Kind::Dictionary, &names[0]).unwrap();

    let repo = reopen(backend.clone());
    let report = check_read_data(&repo);
    assert!(!report.is_clean());
    assert!(
        report
            .errors
            .iter()
            .any(|error| error.contains(&format!("dictionary {}", names[0]))
                && error.contains("does not hold it")),
        "{:?}",
        report.errors
    );
    let summary = restore(&repo, &work.path().join("restored"));
    assert!(
        summary.errors > 0 && !summary.damaged_files.is_empty(),
        "{summary:?}"
    );
}
