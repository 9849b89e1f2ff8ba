//! Fault tests: the data mover on S3 through [`FaultProxy`], a proxy in front of the test
//! environment's MinIO that answers 503 SlowDown, resets connections in the middle of requests and
//! answers, stalls them and swallows requests whole.
//!
//! Under faults every operation must either complete (the S3 backend retries) or fail cleanly with
//! an error, within a bounded time; afterwards, read through a direct (fault-free) backend, the
//! repository checks clean with `read_data` and every snapshot that existed before restores
//! exactly. Prune in particular must never delete data because something could not be read.
//!
//! Fault decisions come from a seeded generator: the seed is printed (set `FERRY_FAULT_SEED` to
//! replay a run's sequence of decisions; which request gets which still depends on timing).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ferry_mover::backend::Kind;
use ferry_mover::{
    Backend, BackupOptions, CheckOptions, Error, Id, ParentChoice, PruneOptions, Repository,
    RestoreOptions, RetentionPolicy, S3Backend, S3Options,
};
use ferry_tests::{FaultConfig, FaultKind, FaultProxy, RequestHead};

/// The S3 options of the backend behind the proxy: timeouts short enough that a stall or a black
/// hole costs a second or two, not minutes; attempts many enough that a fault rate of 25 % fails
/// an operation once in 65,000 (0.25^8).
fn faulty_options(endpoint: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_owned()),
        max_attempts: 8,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(1),
        attempt_timeout: Duration::from_secs(2),
        min_throughput: 1024 * 1024,
        stall_timeout: Duration::from_secs(1),
        operation_timeout: Duration::from_secs(15),
        ..direct_options()
    }
}

fn direct_options() -> S3Options {
    let env = ferry_tests::TestEnv::get();
    S3Options {
        endpoint: Some(env.s3_endpoint().to_owned()),
        region: env.s3_region().to_owned(),
        path_style: true,
        credentials: Some(env.s3_credentials()),
        multipart_threshold: 5 * 1024 * 1024,
        part_size: 5 * 1024 * 1024,
        ..S3Options::default()
    }
}

fn seed(default: u64) -> u64 {
    let seed = std::env::var("FERRY_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("fault proxy seed: {seed} (FERRY_FAULT_SEED={seed} replays it)");
    seed
}

/// A repository prefix in MinIO reached two ways: directly, and through a fault proxy.
struct Rig {
    proxy: FaultProxy,
    direct: Arc<dyn Backend>,
    faulty: Arc<dyn Backend>,
    work: tempfile::TempDir,
    store: Store,
}

impl Rig {
    fn new(name: &str, seed: u64) -> Rig {
        Rig::with_options(name, seed, faulty_options)
    }

    fn with_options(name: &str, seed: u64, options: impl Fn(&str) -> S3Options) -> Rig {
        let (direct, store) = s3_backend(name);
        let Store::S3(prefix) = &store else {
            unreachable!("an S3 store")
        };
        let proxy = FaultProxy::in_front_of_minio(seed);
        let faulty: Arc<dyn Backend> = Arc::new(
            S3Backend::new(
                prefix.bucket(),
                prefix.prefix().trim_end_matches('/'),
                &options(&proxy.endpoint()),
            )
            .unwrap(),
        );
        Rig {
            proxy,
            direct,
            faulty,
            work: tempfile::tempdir().unwrap(),
            store,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn direct_repo(&self) -> Arc<Repository> {
        reopen(self.direct.clone())
    }

    /// Checks the repository through the direct backend: clean, every pack read and verified.
    fn assert_clean(&self) {
        let report = ferry_mover::check(
            &self.direct_repo(),
            &CheckOptions {
                read_data: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(report.is_clean(), "check found damage: {:?}", report.errors);
    }

    /// Restores `snapshot` through the direct backend and compares it with `expected`.
    fn assert_restores(&self, snapshot: &Id, expected: &Path) {
        let target = self.path(&format!("restored-{}", snapshot.short()));
        let summary = ferry_mover::restore(
            &self.direct_repo(),
            &snapshot.to_hex(),
            &target,
            &RestoreOptions {
                workers: Some(2),
                ..Default::default()
            },
        )
        .unwrap_or_else(|error| panic!("restoring snapshot {}: {error}", snapshot.short()));
        assert_eq!(summary.errors, 0, "{summary:?}");
        assert_same_tree(expected, &target);
        std::fs::remove_dir_all(&target).unwrap();
    }
}

/// Runs `work` on a thread of its own and waits at most `limit` for it: an operation that hangs
/// fails the test instead of holding it forever.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let started = Instant::now();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(work());
    });
    match receiver.recv_timeout(limit) {
        Ok(value) => (value, started.elapsed()),
        Err(_) => panic!("{what} did not end within {limit:?}: it hangs on a fault"),
    }
}

/// A tree of about `mib` MiB in a few files and directories, with small files too; `variant`
/// changes its content.
fn make_tree(root: &Path, variant: u64, mib: usize) {
    for i in 0..mib as u64 {
        write(
            &root.join(format!("d{}/big{i}", i % 3)),
            &noise(variant * 1000 + i, 1024 * 1024),
        );
    }
    for i in 0..20u64 {
        write(
            &root.join(format!("small/{i}.txt")),
            format!("file {i} of variant {variant}\n").as_bytes(),
        );
    }
}

fn backup_options() -> BackupOptions {
    BackupOptions {
        workers: Some(2),
        parent: ParentChoice::None,
        ..Default::default()
    }
}

/// Backs up `state` as the directory `source` (one path, so that the snapshots form one group
/// for forget): `state` is renamed there for the backup and back after.
fn backup_as(repo: &Arc<Repository>, state: &Path, source: &Path) -> Id {
    std::fs::rename(state, source).unwrap();
    let outcome = ferry_mover::backup(repo, source, &backup_options());
    std::fs::rename(source, state).unwrap();
    outcome.unwrap().snapshot_id
}

/// Every kind of fault on a fraction `rate` of the requests; stalls last until the client gives
/// up.
fn every_fault(rate: f64) -> FaultConfig {
    FaultConfig::new(rate, &FaultKind::ALL)
}

/// How long an operation under faults may take before the test calls it hung.
const BOUND: Duration = Duration::from_secs(90);

#[test]
fn backup_under_faults_completes_and_the_repository_stays_sound() {
    let rig = Rig::new("faults-backup", seed(11));
    let repo = init(rig.direct.clone());
    let (first, second) = (rig.path("first"), rig.path("second"));
    make_tree(&first, 1, 2);
    make_tree(&second, 2, 3);
    let source = rig.path("source");
    let existing = backup_as(&repo, &first, &source);

    rig.proxy.set(every_fault(0.25));
    let faulty = rig.faulty.clone();
    let (state, target) = (second.clone(), source.clone());
    let (result, took) = within(BOUND, "backup", move || {
        let repo = Arc::new(Repository::open(faulty, PASSWORD)?);
        std::fs::rename(&state, &target).unwrap();
        let outcome = ferry_mover::backup(&repo, &target, &backup_options());
        std::fs::rename(&target, &state).unwrap();
        outcome
    });
    rig.proxy.clear();
    let counts = rig.proxy.counts();
    eprintln!("backup under faults took {took:?}: {counts:?}");
    let outcome = result.unwrap_or_else(|error| panic!("backup under faults failed: {error}"));
    assert!(counts.faults() > 0, "no fault was injected: {counts:?}");

    rig.assert_clean();
    rig.assert_restores(&existing, &first);
    rig.assert_restores(&outcome.snapshot_id, &second);
}

#[test]
fn restore_under_faults_is_exact() {
    let rig = Rig::new("faults-restore", seed(12));
    let repo = init(rig.direct.clone());
    let state = rig.path("state");
    make_tree(&state, 3, 3);
    let snapshot = backup_as(&repo, &state, &rig.path("source"));

    rig.proxy.set(every_fault(0.25));
    let faulty = rig.faulty.clone();
    let target = rig.path("target");
    let into = target.clone();
    let (result, took) = within(BOUND, "restore", move || {
        let repo = Arc::new(Repository::open(faulty, PASSWORD)?);
        ferry_mover::restore(
            &repo,
            &snapshot.to_hex(),
            &into,
            &RestoreOptions {
                workers: Some(2),
                ..Default::default()
            },
        )
    });
    rig.proxy.clear();
    let counts = rig.proxy.counts();
    eprintln!("restore under faults took {took:?}: {counts:?}");
    let summary = result.unwrap_or_else(|error| panic!("restore under faults failed: {error}"));
    assert!(counts.faults() > 0, "no fault was injected: {counts:?}");
    assert_eq!(summary.errors, 0, "{summary:?}");
    assert_same_tree(&state, &target);
    rig.assert_clean();
}

/// Three snapshots of one source, the states they hold, oldest first.
fn three_snapshots(rig: &Rig) -> Vec<(Id, PathBuf)> {
    let repo = init(rig.direct.clone());
    let source = rig.path("source");
    (1..=3)
        .map(|variant| {
            let state = rig.path(&format!("state{variant}"));
            make_tree(&state, 10 + variant, 1);
            (backup_as(&repo, &state, &source), state)
        })
        .collect()
}

#[test]
fn forget_under_faults_removes_exactly_what_the_policy_says() {
    let rig = Rig::new("faults-forget", seed(13));
    let snapshots = three_snapshots(&rig);

    rig.proxy.set(every_fault(0.25));
    let faulty = rig.faulty.clone();
    let (result, took) = within(BOUND, "forget", move || {
        let repo = Arc::new(Repository::open(faulty, PASSWORD)?);
        ferry_mover::forget(
            &repo,
            &RetentionPolicy {
                keep_last: 1,
                ..Default::default()
            },
            Duration::ZERO,
        )
    });
    rig.proxy.clear();
    let counts = rig.proxy.counts();
    eprintln!("forget under faults took {took:?}: {counts:?}");
    let removed = result.unwrap_or_else(|error| panic!("forget under faults failed: {error}"));
    assert!(counts.faults() > 0, "no fault was injected: {counts:?}");
    assert_eq!(
        removed.iter().collect::<BTreeSet<_>>(),
        snapshots[..2].iter().map(|(id, _)| id).collect(),
        "forget removed other snapshots than the two oldest"
    );
    let left: Vec<Id> = rig
        .direct_repo()
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, [snapshots[2].0]);
    rig.assert_clean();
    rig.assert_restores(&snapshots[2].0, &snapshots[2].1);
}

#[test]
fn prune_under_faults_completes_or_aborts_and_keeps_what_snapshots_need() {
    let rig = Rig::new("faults-prune", seed(14));
    let snapshots = three_snapshots(&rig);
    rig.direct
        .delete(Kind::Snapshot, &snapshots[0].0.to_hex())
        .unwrap();

    rig.proxy.set(every_fault(0.25));
    let faulty = rig.faulty.clone();
    let (result, took) = within(BOUND, "prune", move || {
        let repo = Arc::new(Repository::open(faulty, PASSWORD)?);
        ferry_mover::prune(&repo, &PruneOptions::default())
    });
    rig.proxy.clear();
    let counts = rig.proxy.counts();
    eprintln!("prune under faults took {took:?}: {counts:?}; {result:?}");
    assert!(counts.faults() > 0, "no fault was injected: {counts:?}");
    if let Ok(report) = &result {
        assert!(
            report.blobs_removed > 0,
            "prune completed without removing the forgotten snapshot's data: {report:?}"
        );
    }
    rig.assert_clean();
    for (id, state) in &snapshots[1..] {
        rig.assert_restores(id, state);
    }
}

/// The property that matters most: a snapshot prune cannot read (here, every read of it fails in
/// one way) keeps its data. Prune must abort, or complete having kept that data.
fn prune_keeps_the_data_of_a_snapshot_it_cannot_read(fault: FaultKind, seed_value: u64) {
    let rig = Rig::new("faults-prune-unreadable", seed(seed_value));
    let snapshots = three_snapshots(&rig);
    rig.direct
        .delete(Kind::Snapshot, &snapshots[0].0.to_hex())
        .unwrap();
    let unreadable = format!("/snapshots/{}", snapshots[2].0.to_hex());

    let faulty = rig.faulty.clone();
    let repo = Arc::new(Repository::open(faulty, PASSWORD).unwrap());
    rig.proxy.set(
        FaultConfig::new(1.0, &[fault])
            .stall_for(None)
            .only(move |head: &RequestHead| {
                head.method == "GET" && head.target.contains(&unreadable)
            }),
    );
    let (result, took) = within(BOUND, "prune", move || {
        ferry_mover::prune(&repo, &PruneOptions::default())
    });
    rig.proxy.clear();
    let counts = rig.proxy.counts();
    eprintln!(
        "prune with snapshot {} unreadable ({fault:?}) took {took:?}: {counts:?}; {result:?}",
        snapshots[2].0.short()
    );
    assert!(counts.faults() > 0, "no fault was injected: {counts:?}");
    rig.assert_clean();
    for (id, state) in &snapshots[1..] {
        rig.assert_restores(id, state);
    }
}

#[test]
fn prune_keeps_the_data_of_a_snapshot_answered_with_slow_down() {
    prune_keeps_the_data_of_a_snapshot_it_cannot_read(FaultKind::SlowDown, 15);
}

#[test]
fn prune_keeps_the_data_of_a_snapshot_whose_answers_are_reset() {
    prune_keeps_the_data_of_a_snapshot_it_cannot_read(FaultKind::ResetResponse, 16);
}

#[test]
fn prune_keeps_the_data_of_a_snapshot_whose_reads_stall() {
    prune_keeps_the_data_of_a_snapshot_it_cannot_read(FaultKind::Stall, 17);
}

/// With no answer at all, an operation gives up within its deadline, with a transient backend
/// error; the repository is left as it was.
fn an_operation_fails_cleanly_when_the_store_never_answers(fault: FaultKind, seed_value: u64) {
    let rig = Rig::new("faults-no-answer", seed(seed_value));
    let repo = init(rig.direct.clone());
    let state = rig.path("state");
    make_tree(&state, 20, 1);
    let existing = backup_as(&repo, &state, &rig.path("source"));
    let faulty = Arc::new(Repository::open(rig.faulty.clone(), PASSWORD).unwrap());

    rig.proxy
        .set(FaultConfig::new(1.0, &[fault]).stall_for(None));
    let source = rig.path("state");
    let (result, took) = within(BOUND, "backup", move || {
        ferry_mover::backup(&faulty, &source, &backup_options())
    });
    rig.proxy.clear();
    let counts = rig.proxy.counts();
    eprintln!("backup with no answer ({fault:?}) took {took:?}: {counts:?}");
    match result {
        Err(Error::BackendTransient { message }) => assert!(
            message.contains(&rig.faulty.location()),
            "the error does not name the repository: {message}"
        ),
        Err(other) => panic!("expected a transient backend error, got {other:?}"),
        Ok(_) => panic!("a backup succeeded with a store that never answers"),
    }
    assert!(
        counts.faults() > 1,
        "the request was not retried: {counts:?}"
    );
    assert!(took < Duration::from_secs(30), "giving up took {took:?}");
    rig.assert_clean();
    rig.assert_restores(&existing, &state);
}

#[test]
fn a_backup_fails_cleanly_when_every_request_is_black_holed() {
    an_operation_fails_cleanly_when_the_store_never_answers(FaultKind::BlackHole, 18);
}

#[test]
fn a_backup_fails_cleanly_when_every_request_stalls() {
    an_operation_fails_cleanly_when_the_store_never_answers(FaultKind::Stall, 19);
}

#[test]
fn a_backup_fails_cleanly_when_every_request_is_throttled() {
    an_operation_fails_cleanly_when_the_store_never_answers(FaultKind::SlowDown, 20);
}

/// Only conditional PUTs (If-None-Match), the first `budget` of them.
fn conditional_puts(kind: FaultKind, budget: u64) -> FaultConfig {
    FaultConfig::new(1.0, &[kind])
        .only(|head: &RequestHead| head.method == "PUT" && head.header("if-none-match").is_some())
        .budget(budget)
}

#[test]
fn put_new_that_created_its_object_says_so_when_the_answer_was_lost() {
    let rig = Rig::new("faults-put-new", seed(21));
    // The object is created, the answer reset: the retry gets 412, yet this call created it.
    rig.proxy.set(conditional_puts(FaultKind::ResetResponse, 1));
    let (created, _) = within(BOUND, "put_new", {
        let faulty = rig.faulty.clone();
        move || faulty.put_new(Kind::Lock, "mine", b"my bytes")
    });
    assert_eq!(rig.proxy.counts().response_resets, 1);
    assert!(
        created.unwrap(),
        "put_new created the object but said it did not"
    );
    assert_eq!(rig.direct.get(Kind::Lock, "mine").unwrap(), b"my bytes");

    // Another writer's object, found on a retry after a throttled attempt: not created.
    assert!(
        rig.direct
            .put_new(Kind::Lock, "theirs", b"their bytes")
            .unwrap()
    );
    rig.proxy.set(conditional_puts(FaultKind::SlowDown, 1));
    let (created, _) = within(BOUND, "put_new", {
        let faulty = rig.faulty.clone();
        move || faulty.put_new(Kind::Lock, "theirs", b"my bytes")
    });
    assert_eq!(rig.proxy.counts().slow_downs, 1);
    assert!(!created.unwrap(), "put_new claims another writer's object");
    assert_eq!(
        rig.direct.get(Kind::Lock, "theirs").unwrap(),
        b"their bytes"
    );

    // And with no fault, the plain answers.
    rig.proxy.clear();
    assert!(!rig.faulty.put_new(Kind::Lock, "mine", b"other").unwrap());
    assert!(rig.faulty.put_new(Kind::Lock, "new", b"bytes").unwrap());
}

#[test]
fn a_repository_created_through_a_lost_answer_opens() {
    let rig = Rig::new("faults-init", seed(22));
    rig.proxy.set(conditional_puts(FaultKind::ResetResponse, 1));
    let faulty = rig.faulty.clone();
    let (result, _) = within(BOUND, "init", move || {
        Repository::init(faulty, PASSWORD, &test_options()).map(|_| ())
    });
    assert_eq!(rig.proxy.counts().response_resets, 1);
    result.unwrap_or_else(|error| panic!("init through a lost answer failed: {error}"));
    Repository::open(rig.direct.clone(), PASSWORD)
        .unwrap_or_else(|error| panic!("the repository does not open: {error}"));
}

/// A file of `len` bytes to upload, and its content.
fn upload_source(rig: &Rig, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let path = rig.path(name);
    let bytes = noise(len as u64, len);
    write(&path, &bytes);
    (path, bytes)
}

/// Uploads in progress for `key` (relative to the rig's prefix), straight from MinIO.
fn uploads_of(rig: &Rig, key: &str) -> Vec<String> {
    let Store::S3(prefix) = &rig.store else {
        unreachable!()
    };
    let client = ferry_tests::TestEnv::get().s3_client();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        client
            .list_multipart_uploads()
            .bucket(prefix.bucket())
            .prefix(prefix.key(key))
            .send()
            .await
            .unwrap()
            .uploads()
            .iter()
            .filter_map(|u| u.upload_id().map(str::to_owned))
            .collect()
    })
}

#[test]
fn a_multipart_upload_completes_when_the_answer_to_its_completion_is_lost() {
    let rig = Rig::new("faults-multipart-complete", seed(23));
    let (path, bytes) = upload_source(&rig, "pack", 11 * 1024 * 1024);
    rig.proxy.set(
        FaultConfig::new(1.0, &[FaultKind::ResetResponse])
            .only(|head: &RequestHead| head.method == "POST" && head.target.contains("uploadId="))
            .budget(1),
    );
    let name = "ab".repeat(32);
    let (result, _) = within(BOUND, "multipart upload", {
        let (faulty, name) = (rig.faulty.clone(), name.clone());
        move || faulty.put_file(Kind::Pack, &name, &path)
    });
    assert_eq!(rig.proxy.counts().response_resets, 1);
    result.unwrap_or_else(|error| panic!("the upload failed: {error}"));
    assert!(
        rig.direct.get(Kind::Pack, &name).unwrap() == bytes,
        "the stored pack differs"
    );
    assert_eq!(
        uploads_of(&rig, &Kind::Pack.path_of(&name)),
        Vec::<String>::new()
    );
}

#[test]
fn a_multipart_upload_retries_its_parts() {
    let rig = Rig::new("faults-multipart-parts", seed(24));
    let (path, bytes) = upload_source(&rig, "pack", 16 * 1024 * 1024);
    rig.proxy.set(
        FaultConfig::new(
            0.5,
            &[
                FaultKind::SlowDown,
                FaultKind::ResetRequest,
                FaultKind::ResetResponse,
                FaultKind::Stall,
            ],
        )
        .only(|head: &RequestHead| head.method == "PUT" && head.target.contains("partNumber=")),
    );
    let name = "cd".repeat(32);
    let (result, took) = within(BOUND, "multipart upload", {
        let (faulty, name) = (rig.faulty.clone(), name.clone());
        move || faulty.put_file(Kind::Pack, &name, &path)
    });
    let counts = rig.proxy.counts();
    eprintln!("multipart upload under faults took {took:?}: {counts:?}");
    result.unwrap_or_else(|error| panic!("the upload failed: {error}"));
    assert!(counts.faults() > 0, "no fault was injected: {counts:?}");
    assert!(
        rig.direct.get(Kind::Pack, &name).unwrap() == bytes,
        "the stored pack differs"
    );
    assert_eq!(
        uploads_of(&rig, &Kind::Pack.path_of(&name)),
        Vec::<String>::new()
    );
}

#[test]
fn remove_leftovers_aborts_the_old_multipart_uploads_of_the_repository_only() {
    let rig = Rig::new("faults-leftovers", seed(25));
    let Store::S3(prefix) = &rig.store else {
        unreachable!()
    };
    let client = ferry_tests::TestEnv::get().s3_client();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let start = |key: &str| {
        runtime.block_on(async {
            client
                .create_multipart_upload()
                .bucket(prefix.bucket())
                .key(prefix.key(key))
                .send()
                .await
                .unwrap()
                .upload_id()
                .unwrap()
                .to_owned()
        })
    };
    let old = Kind::Pack.path_of(&"ab".repeat(32));
    let young = Kind::Pack.path_of(&"cd".repeat(32));
    // Not an object of the repository, if under its prefix: never touched.
    let foreign = "elsewhere/file".to_owned();
    start(&old);
    let foreign_id = start(&foreign);
    assert_eq!(
        rig.direct
            .remove_leftovers(Duration::from_secs(3600))
            .unwrap(),
        0,
        "an upload younger than the limit was aborted"
    );

    // Ages are read in whole seconds of the store's clock: 3 s make the first upload 2 s old at
    // least.
    std::thread::sleep(Duration::from_secs(3));
    let young_id = start(&young);
    assert_eq!(
        rig.direct.remove_leftovers(Duration::from_secs(2)).unwrap(),
        1
    );
    assert_eq!(uploads_of(&rig, &old), Vec::<String>::new());
    assert_eq!(uploads_of(&rig, &young), std::slice::from_ref(&young_id));
    assert_eq!(
        uploads_of(&rig, &foreign),
        std::slice::from_ref(&foreign_id)
    );

    for (key, id) in [(young, young_id), (foreign, foreign_id)] {
        runtime.block_on(async {
            client
                .abort_multipart_upload()
                .bucket(prefix.bucket())
                .key(prefix.key(&key))
                .upload_id(id)
                .send()
                .await
                .unwrap()
        });
    }
}
