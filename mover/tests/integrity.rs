//! The repository never loses data because something could not be read, never works from an
//! index older than its lock, and two racing creators never leave two master keys (issue 12,
//! items 1, 2, 5 and the key-slot part of 10). Each runs on a local directory and on MinIO.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ferry_mover::backend::{Kind, ObjectInfo};
use ferry_mover::{
    Backend, BackupOptions, CheckOptions, Error, Id, PruneOptions, Repository, RestoreOptions,
    RetentionPolicy,
};

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
    prune_refuses_to_sweep_when_a_snapshot_cannot_be_read,
    forget_refuses_to_decide_without_every_snapshot,
    a_backup_whose_index_predates_a_prune_stores_what_it_needs,
    racing_creators_on_a_store_ignoring_if_none_match_keep_one_master_key,
    planted_and_oversized_key_slots_are_skipped,
    a_snapshot_or_index_copied_over_another_is_refused,
);

/// A backend whose reads of chosen objects fail on demand, and which may ignore `put_new`'s
/// condition (as some S3-compatible stores do).
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn Backend>,
    /// (kind, name) pairs whose reads fail with a transient error.
    unreadable: Mutex<HashSet<(Kind, String)>>,
    ignore_if_none_match: AtomicBool,
    settle: Duration,
}

impl Faulty {
    fn new(inner: Arc<dyn Backend>) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            unreadable: Mutex::default(),
            ignore_if_none_match: AtomicBool::new(false),
            settle: Duration::ZERO,
        })
    }

    fn fail_reads_of(&self, kind: Kind, name: &str) {
        self.unreadable
            .lock()
            .unwrap()
            .insert((kind, name.to_owned()));
    }

    fn heal(&self) {
        self.unreadable.lock().unwrap().clear();
    }

    fn check(&self, kind: Kind, name: &str) -> ferry_mover::Result<()> {
        if self
            .unreadable
            .lock()
            .unwrap()
            .contains(&(kind, name.to_owned()))
        {
            return Err(Error::BackendTransient {
                message: format!("{}: 503 Slow Down (injected)", kind.path_of(name)),
            });
        }
        Ok(())
    }
}

impl Backend for Faulty {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, kind: Kind, name: &str, bytes: &[u8]) -> ferry_mover::Result<()> {
        self.inner.put(kind, name, bytes)
    }
    fn put_new(&self, kind: Kind, name: &str, bytes: &[u8]) -> ferry_mover::Result<bool> {
        if self.ignore_if_none_match.load(Ordering::SeqCst) {
            self.inner.put(kind, name, bytes)?;
            return Ok(true);
        }
        self.inner.put_new(kind, name, bytes)
    }
    fn get(&self, kind: Kind, name: &str) -> ferry_mover::Result<Vec<u8>> {
        self.check(kind, name)?;
        self.inner.get(kind, name)
    }
    fn get_range(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        length: u64,
    ) -> ferry_mover::Result<Vec<u8>> {
        self.check(kind, name)?;
        self.inner.get_range(kind, name, offset, length)
    }
    fn list(&self, kind: Kind) -> ferry_mover::Result<Vec<ObjectInfo>> {
        self.inner.list(kind)
    }
    fn delete(&self, kind: Kind, name: &str) -> ferry_mover::Result<()> {
        self.inner.delete(kind, name)
    }
    fn exists(&self, kind: Kind, name: &str) -> ferry_mover::Result<bool> {
        self.inner.exists(kind, name)
    }
    fn settle_time(&self) -> Duration {
        self.settle
    }
}

fn backup_dir(repo: &Arc<Repository>, source: &Path, tag: &str) -> Id {
    ferry_mover::backup(
        repo,
        source,
        &BackupOptions {
            tags: vec![tag.to_owned()],
            parent: ferry_mover::ParentChoice::None,
            ..Default::default()
        },
    )
    .unwrap()
    .snapshot_id
}

fn restores_exactly(repo: &Arc<Repository>, snapshot: &Id, source: &Path) {
    let target = tempfile::tempdir().unwrap();
    let summary = ferry_mover::restore(
        repo,
        &snapshot.to_hex(),
        target.path(),
        &RestoreOptions::default(),
    )
    .unwrap();
    assert_eq!(summary.errors, 0, "{summary:?}");
    assert_same_tree(source, target.path());
}

fn check_clean(repo: &Arc<Repository>) {
    let report = ferry_mover::check(
        repo,
        &CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.is_clean(), "check: {:?}", report.errors);
}

/// Two snapshots of different data, the second on `faulty`.
fn two_snapshots(
    kind: &str,
    name: &str,
) -> (
    Arc<Faulty>,
    Arc<Repository>,
    [tempfile::TempDir; 2],
    [Id; 2],
    Store,
) {
    let (inner, store) = backend(kind, name);
    let faulty = Faulty::new(inner);
    let repo = init(faulty.clone());
    let sources = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for (n, source) in sources.iter().enumerate() {
        write(
            &source.path().join("data.bin"),
            &noise(n as u64 + 1, 400_000),
        );
        write(
            &source.path().join(format!("only-in-{n}")),
            &noise(n as u64 + 10, 50_000),
        );
    }
    let ids = [
        backup_dir(&repo, sources[0].path(), "first"),
        backup_dir(&repo, sources[1].path(), "second"),
    ];
    (faulty, repo, sources, ids, store)
}

/// One transient error reading a snapshot must not make its data garbage: prune stops, naming
/// the snapshot, and deletes nothing. A damaged snapshot stops it too, until it is forgotten by
/// name.
fn prune_refuses_to_sweep_when_a_snapshot_cannot_be_read(kind: &str, name: &str) {
    let (faulty, repo, sources, ids, _store) = two_snapshots(kind, name);
    let packs_before = faulty.list(Kind::Pack).unwrap().len();
    faulty.fail_reads_of(Kind::Snapshot, &ids[1].to_hex());
    let refused = ferry_mover::prune(&repo, &PruneOptions::default())
        .expect_err("prune swept with a snapshot it could not read");
    assert!(
        refused.to_string().contains(&ids[1].to_hex()),
        "the error names no snapshot: {refused}"
    );
    faulty.heal();
    assert_eq!(faulty.list(Kind::Pack).unwrap().len(), packs_before);
    check_clean(&repo);
    restores_exactly(&repo, &ids[1], sources[1].path());

    // A damaged snapshot object: refused the same way; removed by name, prune goes on and keeps
    // the other snapshot's data.
    faulty
        .put(
            Kind::Snapshot,
            &ids[1].to_hex(),
            b"garbage, not a sealed object",
        )
        .unwrap();
    let refused = ferry_mover::prune(&repo, &PruneOptions::default()).unwrap_err();
    assert!(
        refused.to_string().contains("ferry repo forget"),
        "{refused}"
    );
    let report = ferry_mover::check(&repo, &CheckOptions::default()).unwrap();
    assert!(
        report.errors.iter().any(|e| e.contains(&ids[1].to_hex())),
        "check did not report the damaged snapshot: {:?}",
        report.errors
    );
    let removed = ferry_mover::forget_snapshots(&repo, &[ids[1].short()], Duration::ZERO).unwrap();
    assert_eq!(removed, vec![ids[1]]);
    let report = ferry_mover::prune(&repo, &PruneOptions::default()).unwrap();
    assert!(report.blobs_removed > 0, "{report:?}");
    check_clean(&repo);
    restores_exactly(&repo, &ids[0], sources[0].path());
}

/// Whoever can write to the store but holds no key cannot pass one sealed object off as another:
/// each is bound to its name (format version 2), so a snapshot copied over another snapshot, or
/// an index over another index, fails authentication and is named, rather than read as the
/// other. Before version 2 the copy was read as the snapshot it replaced.
fn a_snapshot_or_index_copied_over_another_is_refused(kind: &str, name: &str) {
    let (faulty, repo, sources, ids, _store) = two_snapshots(kind, name);
    let older = faulty.get(Kind::Snapshot, &ids[0].to_hex()).unwrap();
    faulty
        .put(Kind::Snapshot, &ids[1].to_hex(), &older)
        .unwrap();
    let listing = repo.list_snapshots().unwrap();
    assert_eq!(
        listing
            .snapshots
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        vec![ids[0]],
        "the copy was read as a snapshot"
    );
    assert_eq!(listing.damaged.len(), 1);
    assert_eq!(listing.damaged[0].0, ids[1]);
    let refused = repo.load_snapshot(&ids[1]).unwrap_err();
    assert!(
        matches!(refused, Error::Corrupt { .. })
            && refused.to_string().contains(&ids[1].to_hex())
            && refused.to_string().contains("moved from another name"),
        "{refused}"
    );
    let target = tempfile::tempdir().unwrap();
    assert!(
        ferry_mover::restore(
            &repo,
            &ids[1].to_hex(),
            target.path(),
            &RestoreOptions::default()
        )
        .is_err(),
        "the swapped snapshot was restored"
    );
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);

    let indexes = faulty.list(Kind::Index).unwrap();
    assert!(indexes.len() >= 2, "{indexes:?}");
    let first = faulty.get(Kind::Index, &indexes[0].name).unwrap();
    let second = faulty.get(Kind::Index, &indexes[1].name).unwrap();
    faulty.put(Kind::Index, &indexes[1].name, &first).unwrap();
    let refused = repo.load_index_file(&indexes[1].name).unwrap_err();
    assert!(
        matches!(refused, Error::Corrupt { .. }) && refused.to_string().contains(&indexes[1].name),
        "{refused}"
    );
    assert!(
        Repository::open(faulty.clone(), PASSWORD).is_err(),
        "the index was read with a copy in it"
    );
    // Put back, the untouched first snapshot restores.
    faulty.put(Kind::Index, &indexes[1].name, &second).unwrap();
    restores_exactly(&repo, &ids[0], sources[0].path());
}

/// forget decides from every snapshot or from none.
fn forget_refuses_to_decide_without_every_snapshot(kind: &str, name: &str) {
    let (faulty, repo, _sources, ids, _store) = two_snapshots(kind, name);
    faulty.fail_reads_of(Kind::Snapshot, &ids[0].to_hex());
    let policy = RetentionPolicy {
        keep_last: 1,
        ..Default::default()
    };
    assert!(ferry_mover::forget(&repo, &policy, Duration::ZERO).is_err());
    assert!(ferry_mover::forget_tagged(&repo, "second", Duration::ZERO).is_err());
    faulty.heal();
    let snapshots: Vec<Id> = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(snapshots, ids.to_vec());
}

/// A backup whose repository handle loaded the index before a prune deleted the blobs it would
/// deduplicate against (the window between opening and locking) must store them again.
fn a_backup_whose_index_predates_a_prune_stores_what_it_needs(kind: &str, name: &str) {
    let (backend, _store) = backend(kind, name);
    let repo = init(backend.clone());
    let source = tempfile::tempdir().unwrap();
    write(&source.path().join("a"), &noise(7, 300_000));
    write(&source.path().join("b"), &noise(8, 300_000));
    backup_dir(&repo, source.path(), "old");

    // The agent opens the repository (index loaded)...
    let stale = reopen(backend.clone());
    assert!(stale.index().blob_count() > 0);
    // ...meanwhile another process forgets everything and prunes...
    let other = reopen(backend.clone());
    ferry_mover::forget_tagged(&other, "old", Duration::ZERO).unwrap();
    let pruned = ferry_mover::prune(&other, &PruneOptions::default()).unwrap();
    assert!(pruned.blobs_removed > 0);
    // ...then the agent's backup runs, of the same data.
    let id = backup_dir(&stale, source.path(), "new");
    check_clean(&reopen(backend.clone()));
    restores_exactly(&reopen(backend), &id, source.path());
}

/// On a store that ignores `If-None-Match`, racing creators each believe their conditional write
/// won; reading the config back after the store's settle time leaves exactly one repository.
fn racing_creators_on_a_store_ignoring_if_none_match_keep_one_master_key(kind: &str, name: &str) {
    let (inner, _store) = backend(kind, name);
    let faulty = Arc::new(Faulty {
        inner,
        unreadable: Mutex::default(),
        ignore_if_none_match: AtomicBool::new(true),
        settle: Duration::from_millis(500),
    });
    let backend: Arc<dyn Backend> = faulty.clone();
    let results: Vec<ferry_mover::Result<Repository>> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| Repository::init(backend.clone(), PASSWORD, &test_options())))
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let created: Vec<&Repository> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        created.len(),
        1,
        "{} creators each kept a master key",
        created.len()
    );
    for result in &results {
        if let Err(error) = result {
            assert!(matches!(error, Error::RepositoryExists { .. }), "{error}");
        }
    }
    assert_eq!(
        backend.list(Kind::Key).unwrap().len(),
        1,
        "losers' key slots remain"
    );
    let opened = Repository::open(backend, PASSWORD).unwrap();
    assert_eq!(opened.config().id, created[0].config().id);
    assert_eq!(opened.key().blob_id(b"x"), created[0].key().blob_id(b"x"));
}

/// A key slot is read before anything in it is authenticated. One asking for absurd Argon2 costs
/// (which would abort the process allocating them), or of an unknown kind, or not JSON at all,
/// is skipped; the password still opens the repository through its own slot.
fn planted_and_oversized_key_slots_are_skipped(kind: &str, name: &str) {
    let (backend, _store) = backend(kind, name);
    let repo = init(backend.clone());
    let slot_name = repo.list_keys().unwrap()[0].id.clone();
    let genuine_bytes = backend.get(Kind::Key, &slot_name).unwrap();
    let genuine: serde_json::Value = serde_json::from_slice(&genuine_bytes).unwrap();
    // The genuine slot under a name every store lists last, so that the planted ones are met
    // first.
    backend
        .put(Kind::Key, &"f".repeat(64), &genuine_bytes)
        .unwrap();
    backend.delete(Kind::Key, &slot_name).unwrap();
    let mut huge = genuine.clone();
    huge["params"]["memory_kib"] = serde_json::json!(u32::MAX);
    let mut unknown = genuine.clone();
    unknown["kdf"] = serde_json::json!("scrypt");
    for (name, bytes) in [
        ("00000000a", serde_json::to_vec(&huge).unwrap()),
        ("00000000b", serde_json::to_vec(&unknown).unwrap()),
        ("00000000c", b"{not json".to_vec()),
    ] {
        backend.put(Kind::Key, name, &bytes).unwrap();
    }
    let opened =
        Repository::open(backend.clone(), PASSWORD).expect("a planted slot stopped opening");
    assert_eq!(opened.config().id, repo.config().id);
    assert!(matches!(
        Repository::open(backend, b"not the password"),
        Err(Error::WrongPassword)
    ));
}
