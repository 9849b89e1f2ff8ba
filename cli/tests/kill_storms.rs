//! Kill storms (issue 12): `ferry volume backup`, `ferry repo prune` (alone, and as `ferry repo
//! forget --prune`) and `ferry volume restore` SIGKILLed at 50 or more moments each, on a local
//! repository and on S3 (the test environment's MinIO). The moments are spread uniformly over the
//! duration of an unkilled run of the same operation (measured before the storm, then followed
//! through it as the median of every run that was not killed, since other work on the machine
//! changes the pace), with three within the first 5 ms, three from 95 % to 105 % of a run, and
//! one as soon as the operation's lock is stored. After every kill:
//! - `ferry repo check --read-data` is clean;
//! - no snapshot is lost: every snapshot that existed before the killed operation is still stored
//!   and readable (but those a killed `forget` was removing), and restores exactly its source;
//! - the same operation run again succeeds, with no `ferry repo unlock` in between although the
//!   killed process may have left its lock behind, and leaves no lock of its own;
//! - a killed restore's target, partial, is completed exactly by the next restore, a plain one or
//!   an `--incremental --delete` one that reuses what the killed run wrote.
//!
//! At the end `ferry repo unlock` removes every lock the killed processes left, and each storm
//! prints what it saw (kills, locks left, leftovers, the pace) on stderr (`--nocapture`).
//!
//! Every assertion names the storm, its seed, the round and the moment of the kill.
//! `FERRY_KILL_STORM_SEED=<seed>` replays a storm's kill schedule (the process's own pace varies
//! from run to run); `FERRY_KILL_STORM_ROUNDS` changes the number of rounds (default 50).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Fixture, noise};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// The storms, on each backend.

#[test]
fn backup_kill_storm_local() {
    backup_storm(&Fixture::new());
}

#[test]
fn prune_kill_storm_local() {
    prune_storm(&Fixture::new());
}

#[test]
fn restore_kill_storm_local() {
    restore_storm(&Fixture::new());
}

#[test]
fn backup_kill_storm_s3() {
    backup_storm(&Fixture::s3("kill-storm-backup"));
}

#[test]
fn prune_kill_storm_s3() {
    prune_storm(&Fixture::s3("kill-storm-prune"));
}

#[test]
fn restore_kill_storm_s3() {
    restore_storm(&Fixture::s3("kill-storm-restore"));
}

/// SIGKILL of `ferry volume backup` while the source changes between rounds. A killed backup may
/// leave a complete snapshot or none, never a broken one; the next backup succeeds; every
/// snapshot restores exactly the source it was taken of.
fn backup_storm(fx: &Fixture) {
    let mut storm = Storm::new("backup", fx);
    fx.init();
    let source = fx.path("source");
    let source_arg = source.to_str().unwrap();
    let backup: [&str; 5] = ["-o", "json", "volume", "backup", source_arg];
    make_source(&source);
    // Every snapshot there must be, and what it was taken of.
    let mut sources: BTreeMap<String, Manifest> = BTreeMap::new();
    let setup = storm.setup();
    let first = snapshot_id(&ok(fx, &backup, &setup));
    sources.insert(first, manifest(&source));

    // Every backup after the first reads only what changed: measure one of those.
    change_source(&source, 1);
    let expected = manifest(&source);
    let started = Instant::now();
    let id = snapshot_id(&ok(fx, &backup, &setup));
    let mut pace = Pace::new(started.elapsed());
    sources.insert(id.clone(), expected.clone());
    // A chain of incremental restores follows the snapshots round after round.
    let chain = fx.path("chain");
    Verify::new(fx)
        .restore(&id, &chain, &[], &expected)
        .assert(&setup);

    for (round, point) in storm.schedule(rounds()).into_iter().enumerate() {
        change_source(&source, round as u64 + 2);
        let expected = manifest(&source);
        let before: BTreeSet<String> = sources.keys().cloned().collect();
        let locks_before = fx.objects("locks");
        let run = kill_at(fx, &backup, point, &pace);
        let ctx = storm.round(round, point, &pace, &run, "volume backup");
        storm.record(&run, &mut pace, &ctx);
        let after = Verify::new(fx).check().snapshots().assert(&ctx).unwrap();
        assert_kept(&before, &after, &ctx);
        let new: Vec<&String> = after.difference(&before).collect();
        assert!(
            new.len() <= 1,
            "{ctx}: one backup left {} new snapshots: {new:?}",
            new.len()
        );
        if !run.killed {
            assert_eq!(
                new.len(),
                1,
                "{ctx}: the backup ended but saved no snapshot"
            );
        }
        // The snapshot a killed backup saved, if it had come that far, is whole.
        if let Some(id) = new.first() {
            storm.killed_left_snapshot += 1;
            let target = fx.path("killed-run");
            Verify::new(fx)
                .restore(id, &target, &[], &expected)
                .assert(&ctx);
            std::fs::remove_dir_all(&target).unwrap();
            sources.insert((*id).clone(), expected.clone());
        }
        let locks_after_kill = fx.objects("locks");
        storm.count_locks_left(&locks_before, &locks_after_kill);

        // The same again.
        let ctx = ctx.then("volume backup, run again");
        let started = Instant::now();
        let output = fx.run(&backup);
        pace.observe(started.elapsed());
        assert_rerun_succeeded(&output, &ctx);
        let id = snapshot_id(&json(&output, &ctx));
        sources.insert(id.clone(), expected.clone());
        assert_no_lock_added(fx, &locks_after_kill, &ctx);
        Verify::new(fx)
            .restore(&id, &chain, &["--incremental", "--delete"], &expected)
            .assert(&ctx);
    }

    // Every snapshot is still there and restores exactly, after every kill (four restores at a
    // time, each into a directory of its own).
    let end = storm.end();
    let ids = Verify::new(fx).check().snapshots().assert(&end).unwrap();
    let expected_ids: BTreeSet<String> = sources.keys().cloned().collect();
    assert_eq!(
        ids, expected_ids,
        "{end}: the snapshots stored are not those the storm made"
    );
    let all: Vec<(&String, &Manifest)> = sources.iter().collect();
    for batch in all.chunks(4) {
        let mut verify = Verify::new(fx);
        for (n, (id, expected)) in batch.iter().enumerate() {
            verify = verify.restore(id, &fx.path(&format!("every{n}")), &[], expected);
        }
        verify.assert(&end);
        for n in 0..batch.len() {
            std::fs::remove_dir_all(fx.path(&format!("every{n}"))).unwrap();
        }
    }
    storm.note_pace("backup", &pace);
    storm.unlock_and_report(fx);
}

/// SIGKILL of `ferry repo prune` after a forget (and, one round in four, of `ferry repo forget
/// --prune`), with new garbage before every round: a backup, and a forget of every snapshot but
/// the newest two. The source keeps data that outlives some snapshots and not others, so that
/// packs mix live and dead blobs and prune repacks them. Every surviving snapshot restores
/// exactly; the prune run again succeeds and leaves the repository clean.
fn prune_storm(fx: &Fixture) {
    let mut storm = Storm::new("prune", fx);
    fx.init();
    let source = fx.path("source");
    let source_arg = source.to_str().unwrap();
    let backup: [&str; 5] = ["-o", "json", "volume", "backup", source_arg];
    let prune: [&str; 4] = ["-o", "json", "repo", "prune"];
    let forget: [&str; 6] = ["-o", "json", "repo", "forget", "--keep-last", "2"];
    let forget_prune: [&str; 7] = [
        "-o",
        "json",
        "repo",
        "forget",
        "--keep-last",
        "2",
        "--prune",
    ];
    make_source(&source);
    // The snapshots there must be, in the order they were taken, with what each was taken of.
    let mut taken: Vec<(String, Manifest)> = Vec::new();
    let mut step = 0;
    let mut take = |ctx: &dyn fmt::Display, taken: &mut Vec<(String, Manifest)>| {
        step += 1;
        change_source(&source, step);
        let expected = manifest(&source);
        let id = snapshot_id(&ok(fx, &backup, ctx));
        taken.push((id, expected));
    };
    let setup = storm.setup();
    for _ in 0..4 {
        take(&setup, &mut taken);
    }
    ok(fx, &forget, &setup);
    let started = Instant::now();
    let report = ok(fx, &prune, &setup);
    let mut prune_pace = Pace::new(started.elapsed());
    storm.add_prune_report(&report);
    for _ in 0..2 {
        take(&setup, &mut taken);
    }
    let started = Instant::now();
    let report = ok(fx, &forget_prune, &setup);
    let mut forget_pace = Pace::new(started.elapsed());
    storm.add_prune_report(&report["prune"]);
    let stored = Verify::new(fx).check().snapshots().assert(&setup).unwrap();
    taken.retain(|(id, _)| stored.contains(id));
    assert_eq!(
        taken.len(),
        2,
        "{setup}: forget --keep-last 2 kept {stored:?}"
    );

    // One round in four kills forget --prune; the others kill prune, 50 of them by default.
    let prune_rounds = rounds();
    let forget_rounds = prune_rounds.div_ceil(3).max(3);
    let mut prune_schedule = storm.schedule(prune_rounds).into_iter();
    let mut forget_schedule = storm.schedule(forget_rounds).into_iter();
    for round in 0..prune_rounds + forget_rounds {
        let with_forget = round % 4 == 3 && forget_schedule.len() > 0 || prune_schedule.len() == 0;
        let (point, pace, args, name): (_, _, &[&str], _) = if with_forget {
            (
                forget_schedule.next().unwrap(),
                &mut forget_pace,
                &forget_prune,
                "repo forget --keep-last 2 --prune",
            )
        } else {
            (
                prune_schedule.next().unwrap(),
                &mut prune_pace,
                &prune,
                "repo prune",
            )
        };
        let setup = storm.setup();
        take(&setup, &mut taken);
        if !with_forget {
            let removed = ok(fx, &forget, &setup)["removed"].as_array().map(Vec::len);
            assert_eq!(
                removed,
                Some(1),
                "{setup}: forget --keep-last 2 after one more backup"
            );
            taken.remove(0);
        }
        let before: BTreeSet<String> = taken.iter().map(|(id, _)| id.clone()).collect();
        // keep-last 2: the two newest stay; a killed forget may have removed the others or not.
        let survivors: BTreeSet<String> = taken[taken.len() - 2..]
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        let doomed: BTreeSet<String> = before.difference(&survivors).cloned().collect();
        let locks_before = fx.objects("locks");

        let run = kill_at(fx, args, point, pace);
        let ctx = storm.round(round, point, pace, &run, name);
        storm.record(&run, pace, &ctx);
        if !run.killed {
            let report = json(&run.output, &ctx);
            storm.add_prune_report(if with_forget {
                &report["prune"]
            } else {
                &report
            });
        }
        // Every survivor restores exactly what it was taken of.
        let mut verify = Verify::new(fx).check().snapshots();
        for (n, (id, expected)) in taken.iter().enumerate() {
            if survivors.contains(id) {
                verify = verify.restore(id, &fx.path(&format!("survivor{n}")), &[], expected);
            }
        }
        let after = verify.assert(&ctx).unwrap();
        for n in 0..taken.len() {
            let _ = std::fs::remove_dir_all(fx.path(&format!("survivor{n}")));
        }
        assert_kept(&survivors, &after, &ctx);
        assert!(
            after.is_subset(&before),
            "{ctx}: snapshots appeared: {:?}",
            after.difference(&before).collect::<Vec<_>>()
        );
        if !run.killed {
            assert_eq!(
                after, survivors,
                "{ctx}: the operation ended but kept {after:?}"
            );
        }
        let locks_after_kill = fx.objects("locks");
        storm.count_locks_left(&locks_before, &locks_after_kill);

        // The same again: it succeeds, finishes the forget, and leaves the repository clean.
        let ctx = ctx.then(&format!("{name}, run again"));
        let started = Instant::now();
        let output = fx.run(args);
        pace.observe(started.elapsed());
        assert_rerun_succeeded(&output, &ctx);
        let report = json(&output, &ctx);
        if with_forget {
            let removed: BTreeSet<String> = report["removed"]
                .as_array()
                .unwrap_or_else(|| panic!("{ctx}: forget printed no removed list: {report}"))
                .iter()
                .map(|id| id.as_str().unwrap().to_owned())
                .collect();
            let left: BTreeSet<String> = after.intersection(&doomed).cloned().collect();
            assert_eq!(
                removed, left,
                "{ctx}: the forget after the kill removed other snapshots than those the killed one had left"
            );
            storm.add_prune_report(&report["prune"]);
        } else {
            storm.add_prune_report(&report);
        }
        assert_no_lock_added(fx, &locks_after_kill, &ctx);
        let stored = Verify::new(fx).check().snapshots().assert(&ctx).unwrap();
        assert_eq!(
            stored, survivors,
            "{ctx}: the snapshots after the second run"
        );
        taken.retain(|(id, _)| survivors.contains(id));
    }

    let end = storm.end();
    storm.note_pace("prune", &prune_pace);
    storm.note_pace("forget --prune", &forget_pace);
    assert!(
        storm.blobs_removed > 0 && storm.packs_deleted > 0 && storm.packs_repacked > 0,
        "{end}: the prunes never had the work the storm means to interrupt: {} blobs removed, {} packs deleted, {} repacked",
        storm.blobs_removed,
        storm.packs_deleted,
        storm.packs_repacked
    );
    storm.unlock_and_report(fx);
}

/// SIGKILL of `ferry volume restore`. Three kinds of rounds in turn: a plain restore into an empty
/// directory killed and run again; the same completed by `--incremental --delete`; and an
/// `--incremental --delete` restore over another snapshot's files killed and run again. The second
/// run must leave exactly the snapshot's source.
fn restore_storm(fx: &Fixture) {
    let mut storm = Storm::new("restore", fx);
    fx.init();
    let source = fx.path("source");
    let source_arg = source.to_str().unwrap();
    let backup: [&str; 5] = ["-o", "json", "volume", "backup", source_arg];
    make_source(&source);
    let setup = storm.setup();
    change_source(&source, 1);
    let old = snapshot_id(&ok(fx, &backup, &setup));
    let old_source = manifest(&source);
    for step in 2..5 {
        change_source(&source, step);
    }
    let new = snapshot_id(&ok(fx, &backup, &setup));
    let expected = manifest(&source);
    // The files of the older snapshot, which the in-place rounds restore the newer one over.
    let old_files = fx.path("old-files");
    let snapshots = Verify::new(fx)
        .snapshots()
        .restore(&old, &old_files, &[], &old_source)
        .assert(&setup)
        .unwrap();

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Kind {
        /// Into an empty directory, then the same again.
        Plain,
        /// Into an empty directory, then `--incremental --delete`.
        PlainThenIncremental,
        /// `--incremental --delete` over the older snapshot's files, then the same again.
        InPlace,
    }
    let kinds = [Kind::Plain, Kind::PlainThenIncremental, Kind::InPlace];
    let target = fx.path("target");
    let target_arg = target.to_str().unwrap();
    let restore = |incremental: bool| -> Vec<&str> {
        let mut args = vec!["-o", "json", "volume", "restore", &new, target_arg];
        if incremental {
            args.extend(["--incremental", "--delete"]);
        }
        args
    };
    let prepare = |kind: Kind| {
        let _ = std::fs::remove_dir_all(&target);
        if kind == Kind::InPlace {
            copy_tree(&old_files, &target);
        }
    };

    // One schedule per kind, over the duration of the restore it kills: a plain one into an
    // empty directory (the first two kinds), or an incremental one over the older files.
    let per_kind = rounds().div_ceil(3).max(3);
    let mut schedules: Vec<_> = kinds
        .iter()
        .map(|_| storm.schedule(per_kind).into_iter())
        .collect();
    let mut paces = Vec::new();
    for kind in [Kind::Plain, Kind::InPlace] {
        prepare(kind);
        let started = Instant::now();
        ok(fx, &restore(kind == Kind::InPlace), &setup);
        paces.push(Pace::new(started.elapsed()));
        assert_same(&expected, &target, &setup, "the unkilled restore");
    }

    let mut partial = 0;
    let mut reused = 0;
    // What each incremental run after a killed plain one found: the kill, the files the killed
    // run had left, and the run's summary.
    let mut reuses = Vec::new();
    for round in 0..per_kind * 3 {
        let kind = kinds[round % 3];
        let point = schedules[round % 3].next().unwrap();
        let pace = &mut paces[usize::from(kind == Kind::InPlace)];
        prepare(kind);
        let killed = restore(kind == Kind::InPlace);
        let locks_before = fx.objects("locks");
        let run = kill_at(fx, &killed, point, pace);
        let ctx = storm.round(round, point, pace, &run, &killed[2..].join(" "));
        storm.record(&run, pace, &ctx);
        let left_by_kill = manifest(&target);
        if run.killed && left_by_kill != expected {
            partial += 1;
        }
        let after = Verify::new(fx).check().snapshots().assert(&ctx).unwrap();
        assert_eq!(after, snapshots, "{ctx}: a restore changed the snapshots");
        let locks_after_kill = fx.objects("locks");
        storm.count_locks_left(&locks_before, &locks_after_kill);

        let again = restore(kind != Kind::Plain);
        let ctx = ctx.then(&again[2..].join(" "));
        let started = Instant::now();
        let output = fx.run(&again);
        if kind != Kind::PlainThenIncremental {
            // The same restore as the one killed (over what it left).
            pace.observe(started.elapsed());
        }
        assert_rerun_succeeded(&output, &ctx);
        let summary = json(&output, &ctx);
        if kind == Kind::PlainThenIncremental {
            reused += summary["bytes_reused"].as_u64().unwrap_or(0);
            reuses.push(format!(
                "round {round}, {}: {} files left, then {summary}",
                run.describe(),
                left_by_kill.len()
            ));
        }
        assert_same(&expected, &target, &ctx, "the restore after the kill");
        assert_no_lock_added(fx, &locks_after_kill, &ctx);
    }

    let end = storm.end();
    storm.note_pace("plain restore", &paces[0]);
    storm.note_pace("incremental restore over the older files", &paces[1]);
    assert!(
        partial > 0,
        "{end}: no kill left a partial target: the kills missed the restores' work"
    );
    // A short storm (FERRY_KILL_STORM_ROUNDS) may kill every plain restore before it wrote data.
    assert!(
        reused > 0 || per_kind < 10,
        "{end}: no incremental restore after a killed one reused what the killed one wrote ({partial} kills left a partial target):\n  {}",
        reuses.join("\n  ")
    );
    storm.notes.push(format!(
        "{partial} kills left a partial target; incremental runs after a killed plain one reused {reused} bytes"
    ));
    storm.unlock_and_report(fx);
}

// ---------------------------------------------------------------------------------------------
// The storm: its seed, its schedule, what it saw.

fn rounds() -> usize {
    std::env::var("FERRY_KILL_STORM_ROUNDS")
        .ok()
        .map(|n| n.parse().expect("FERRY_KILL_STORM_ROUNDS is a number"))
        .unwrap_or(50)
        .max(3)
}

/// The seed of this test process: `FERRY_KILL_STORM_SEED`, else one from the clock.
fn base_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("FERRY_KILL_STORM_SEED") {
        Ok(text) => {
            let text = text.trim();
            match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            }
            .expect("FERRY_KILL_STORM_SEED is a number (decimal or 0x-hex)")
        }
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        }
    })
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How long unkilled runs of one operation took: the first, measured before the storm, then
/// every run after a kill and every run that ended before its kill. Kills land at fractions of
/// their median, because the pace changes through a storm with what else the machine does (the
/// local store's fsyncs wait for the disk).
struct Pace {
    runs: Vec<Duration>,
}

impl Pace {
    fn new(unkilled: Duration) -> Pace {
        Pace {
            runs: vec![unkilled],
        }
    }

    fn observe(&mut self, run: Duration) {
        self.runs.push(run);
    }

    fn median(&self) -> Duration {
        let mut runs = self.runs.clone();
        runs.sort();
        runs[runs.len() / 2]
    }
}

/// When a round kills: within the first 5 ms, at a fraction of an unkilled run, or as soon as the
/// operation's lock is stored (so that every storm has a kill that leaves its lock behind).
#[derive(Clone, Copy, Debug)]
enum KillPoint {
    Early(Duration),
    Fraction(f64),
    WhenLocked,
}

impl KillPoint {
    /// When to kill; `None` for "as soon as the lock is stored".
    fn at(self, pace: &Pace) -> Option<Duration> {
        match self {
            KillPoint::Early(at) => Some(at),
            KillPoint::Fraction(fraction) => Some(pace.median().mul_f64(fraction)),
            KillPoint::WhenLocked => None,
        }
    }

    fn describe(self, pace: &Pace) -> String {
        let at = self.at(pace).unwrap_or_default().as_secs_f64() * 1000.0;
        match self {
            KillPoint::WhenLocked => "once its lock was stored".to_owned(),
            KillPoint::Early(_) => format!("at {at:.2} ms (an early kill)"),
            KillPoint::Fraction(fraction) => format!(
                "at {at:.1} ms ({:.1} % of the median unkilled run, {:.0} ms)",
                fraction * 100.0,
                pace.median().as_secs_f64() * 1000.0
            ),
        }
    }
}

struct Storm {
    operation: &'static str,
    backend: &'static str,
    seed: u64,
    rng: Rng,
    started: Instant,
    rounds: usize,
    killed: usize,
    finished_first: usize,
    killed_left_snapshot: usize,
    locks_left: usize,
    kill_times: Vec<Duration>,
    blobs_removed: u64,
    packs_deleted: u64,
    packs_repacked: u64,
    notes: Vec<String>,
}

impl Storm {
    fn new(operation: &'static str, fx: &Fixture) -> Storm {
        let seed = base_seed();
        let mut name_hash = std::hash::DefaultHasher::new();
        (operation, fx.backend_name()).hash(&mut name_hash);
        let storm = Storm {
            operation,
            backend: fx.backend_name(),
            seed,
            rng: Rng(seed ^ name_hash.finish()),
            started: Instant::now(),
            rounds: 0,
            killed: 0,
            finished_first: 0,
            killed_left_snapshot: 0,
            locks_left: 0,
            kill_times: Vec::new(),
            blobs_removed: 0,
            packs_deleted: 0,
            packs_repacked: 0,
            notes: Vec::new(),
        };
        eprintln!(
            "{} kill storm on {}: seed {:#x} (FERRY_KILL_STORM_SEED)",
            storm.operation, storm.backend, storm.seed
        );
        storm
    }

    /// `n` moments to kill at: three in the first 5 ms, three around the end of an unkilled run
    /// (from 95 % to 105 % of it: some come after the operation has ended), one as soon as the
    /// operation's lock is stored, and the rest one in each of equal slices of what lies
    /// between; shuffled, so that early and late kills meet every state of the repository.
    fn schedule(&mut self, n: usize) -> Vec<KillPoint> {
        assert!(n >= 3, "a storm needs rounds");
        let (early, late) = if n >= 10 { (3, 3) } else { (1, 1) };
        let mut points = vec![KillPoint::WhenLocked];
        for _ in 0..early {
            points.push(KillPoint::Early(Duration::from_secs_f64(
                self.rng.unit() * 0.005,
            )));
        }
        for _ in 0..late {
            points.push(KillPoint::Fraction(0.95 + self.rng.unit() * 0.1));
        }
        let middle = n - early - late - 1;
        for i in 0..middle {
            points.push(KillPoint::Fraction(
                (i as f64 + self.rng.unit()) * 0.95 / middle as f64,
            ));
        }
        for i in (1..points.len()).rev() {
            let j = (self.rng.next() % (i as u64 + 1)) as usize;
            points.swap(i, j);
        }
        points
    }

    fn setup(&self) -> Ctx {
        Ctx {
            storm: format!(
                "{} kill storm on {}, seed {:#x}, setting up",
                self.operation, self.backend, self.seed
            ),
            round: None,
            doing: String::new(),
        }
    }

    fn end(&self) -> Ctx {
        Ctx {
            storm: format!(
                "{} kill storm on {}, seed {:#x}, after the last round",
                self.operation, self.backend, self.seed
            ),
            round: None,
            doing: String::new(),
        }
    }

    fn round(&self, round: usize, point: KillPoint, pace: &Pace, run: &Run, command: &str) -> Ctx {
        Ctx {
            storm: format!(
                "{} kill storm on {}, seed {:#x}",
                self.operation, self.backend, self.seed
            ),
            round: Some((
                round,
                command.to_owned(),
                point.describe(pace),
                run.describe(),
            )),
            doing: String::new(),
        }
    }

    /// Counts a round's run; one that ended before its kill must have succeeded.
    fn record(&mut self, run: &Run, pace: &mut Pace, ctx: &Ctx) {
        assert!(
            run.killed || run.output.status.success(),
            "{ctx}: it failed before it could be killed: {}",
            text(&run.output)
        );
        self.rounds += 1;
        if run.killed {
            self.killed += 1;
            self.kill_times.push(run.lived);
        } else {
            self.finished_first += 1;
            pace.observe(run.lived);
        }
    }

    /// Counts the locks the killed run left: those stored after the kill and not before it.
    fn count_locks_left(&mut self, before: &[String], after: &[String]) {
        self.locks_left += after.iter().filter(|l| !before.contains(l)).count();
    }

    fn note_pace(&mut self, what: &str, pace: &Pace) {
        self.notes.push(format!(
            "unkilled {what} runs took {:.0} ms (median of {})",
            pace.median().as_secs_f64() * 1000.0,
            pace.runs.len()
        ));
    }

    fn add_prune_report(&mut self, report: &Value) {
        let field = |name: &str| report[name].as_u64().unwrap_or(0);
        self.blobs_removed += field("blobs_removed");
        self.packs_deleted += field("packs_deleted");
        self.packs_repacked += field("packs_repacked");
    }

    /// The locks the killed processes left stay (judged stale, never removed but by `ferry repo
    /// unlock`); unlock removes them all, and the report says what the storm saw.
    fn unlock_and_report(mut self, fx: &Fixture) {
        let end = self.end();
        // A third of the kills at least must land inside the operation (typically four in five
        // do; on a loaded machine one run takes twice as long as the next, and a kill near the
        // median comes after a quick run's end).
        assert!(
            self.killed * 3 >= self.rounds,
            "{end}: only {} of {} runs were killed before they ended: the schedule misses the operation",
            self.killed,
            self.rounds
        );
        assert!(
            self.locks_left > 0,
            "{end}: no killed run left its lock behind, so the storm never showed that the next operation works past a dead process's lock"
        );
        let check = ok(fx, &["-o", "json", "repo", "check"], &end);
        let warnings = check["warnings"].as_array().map_or(0, Vec::len);
        self.notes.push(format!(
            "check warns of {warnings} leftovers (unindexed packs) at the end"
        ));
        if fx.backend_name() == "local" {
            let temp = temp_files(&fx.repo());
            self.notes.push(format!(
                "{} temp files left in the local repository {:?}",
                temp.len(),
                temp.iter()
                    .take(5)
                    .map(|path| path.strip_prefix(fx.repo()).unwrap_or(path))
                    .collect::<Vec<_>>()
            ));
        }
        let locks = fx.objects("locks").len();
        let unlock = ok(fx, &["-o", "json", "repo", "unlock"], &end);
        assert_eq!(
            unlock["removed"].as_u64(),
            Some(locks as u64),
            "{end}: {locks} locks were left, all of dead processes, and unlock removed {unlock}"
        );
        assert!(
            fx.objects("locks").is_empty(),
            "{end}: locks remain after ferry repo unlock: {:?}",
            fx.objects("locks")
        );
        if self.operation == "prune" {
            self.notes.push(format!(
                "prunes removed {} blobs, deleted {} packs, repacked {}",
                self.blobs_removed, self.packs_deleted, self.packs_repacked
            ));
        }
        if self.operation == "backup" {
            self.notes.push(format!(
                "{} killed backups had saved their snapshot",
                self.killed_left_snapshot
            ));
        }
        self.kill_times.sort();
        eprintln!(
            "{} kill storm on {}: seed {:#x}, {} rounds in {:.1} s: {} killed (after {:.1} to {:.0} ms), {} had ended first; the killed left {} locks, all judged stale, {locks} removed by unlock at the end; {}",
            self.operation,
            self.backend,
            self.seed,
            self.rounds,
            self.started.elapsed().as_secs_f64(),
            self.killed,
            self.kill_times
                .first()
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            self.kill_times
                .last()
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            self.finished_first,
            self.locks_left,
            self.notes.join("; ")
        );
    }
}

/// What an assertion message says about where the storm was.
#[derive(Clone)]
struct Ctx {
    storm: String,
    /// The round, the command killed, when, and what became of it.
    round: Option<(usize, String, String, String)>,
    /// What came after the kill, or what the storm was doing outside its rounds.
    doing: String,
}

impl Ctx {
    fn then(mut self, what: &str) -> Ctx {
        self.doing = what.to_owned();
        self
    }
}

impl fmt::Display for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.storm)?;
        if let Some((round, command, at, outcome)) = &self.round {
            write!(
                f,
                ", round {round}: `ferry {command}` SIGKILLed {at} ({outcome})"
            )?;
        }
        if !self.doing.is_empty() {
            write!(f, "; then `ferry {}`", self.doing)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Running ferry.

struct Run {
    killed: bool,
    lived: Duration,
    output: Output,
}

impl Run {
    fn describe(&self) -> String {
        if self.killed {
            format!("killed after {:.1} ms", self.lived.as_secs_f64() * 1000.0)
        } else {
            format!("it had ended first: {}", self.output.status)
        }
    }
}

/// Starts `ferry args` and SIGKILLs it at `point` (unless it has ended by then).
fn kill_at(fx: &Fixture, args: &[&str], point: KillPoint, pace: &Pace) -> Run {
    let locks_before = fx.objects("locks");
    let started = Instant::now();
    let mut child = fx
        .ferry()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    match point.at(pace) {
        Some(at) => {
            let deadline = started + at;
            let now = Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            }
        }
        None => {
            while child.try_wait().unwrap().is_none()
                && fx
                    .objects("locks")
                    .iter()
                    .all(|lock| locks_before.contains(lock))
                && started.elapsed() < Duration::from_secs(120)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    // std sends SIGKILL; to a process that has ended, nothing.
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    Run {
        killed: output.status.signal() == Some(libc::SIGKILL),
        lived: started.elapsed(),
        output,
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

fn json(output: &Output, ctx: &dyn fmt::Display) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{ctx}: ferry printed no JSON ({error}): {}", text(output)))
}

fn ok(fx: &Fixture, args: &[&str], ctx: &dyn fmt::Display) -> Value {
    let output = fx.run(args);
    assert!(
        output.status.success(),
        "{ctx}: `ferry {}` failed: {}",
        args.join(" "),
        text(&output)
    );
    json(&output, ctx)
}

fn snapshot_id(output: &Value) -> String {
    output["snapshot_id"]
        .as_str()
        .unwrap_or_else(|| panic!("backup printed no snapshot id: {output}"))
        .to_owned()
}

fn assert_rerun_succeeded(output: &Output, ctx: &Ctx) {
    if output.status.success() {
        return;
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lock = if stderr.contains("lock") {
        " on the lock the killed process left behind (no `ferry repo unlock` was run)"
    } else {
        ""
    };
    panic!("{ctx}: it failed{lock}: {}", text(output));
}

fn assert_kept(before: &BTreeSet<String>, after: &BTreeSet<String>, ctx: &Ctx) {
    let lost: Vec<_> = before.difference(after).collect();
    assert!(lost.is_empty(), "{ctx}: snapshots lost: {lost:?}");
}

/// An operation that ended left no lock of its own (the killed one's may stay).
fn assert_no_lock_added(fx: &Fixture, before: &[String], ctx: &Ctx) {
    let locks = fx.objects("locks");
    let added: Vec<&String> = locks.iter().filter(|l| !before.contains(l)).collect();
    assert!(
        added.is_empty(),
        "{ctx}: it ended and left a lock: {added:?} (before it: {before:?})"
    );
}

/// Verifications that only read the repository, run as concurrent `ferry` processes (each takes
/// a shared lock, as any reader): `check --read-data`, the list of snapshots, restores.
struct Verify<'a> {
    fx: &'a Fixture,
    check: Option<Child>,
    snapshots: Option<Child>,
    restores: Vec<(String, PathBuf, &'a Manifest, Child)>,
}

impl<'a> Verify<'a> {
    fn new(fx: &'a Fixture) -> Verify<'a> {
        Verify {
            fx,
            check: None,
            snapshots: None,
            restores: Vec::new(),
        }
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.fx
            .ferry()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `ferry repo check --read-data` finds no error.
    fn check(mut self) -> Self {
        self.check = Some(self.spawn(&["-o", "json", "repo", "check", "--read-data"]));
        self
    }

    /// `ferry repo snapshots` lists every snapshot object the store holds (one it could not read
    /// would be skipped, and lost all the same); [`Verify::assert`] returns their ids.
    fn snapshots(mut self) -> Self {
        self.snapshots = Some(self.spawn(&["-o", "json", "repo", "snapshots"]));
        self
    }

    /// Restoring `snapshot` into `target` (with `flags`) gives exactly `expected`.
    fn restore(
        mut self,
        snapshot: &str,
        target: &Path,
        flags: &[&str],
        expected: &'a Manifest,
    ) -> Self {
        let mut args = vec![
            "-o",
            "json",
            "volume",
            "restore",
            snapshot,
            target.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let child = self.spawn(&args);
        self.restores
            .push((snapshot.to_owned(), target.to_owned(), expected, child));
        self
    }

    fn assert(self, ctx: &dyn fmt::Display) -> Option<BTreeSet<String>> {
        if let Some(check) = self.check {
            let output = check.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "{ctx}: ferry repo check --read-data is not clean: {}",
                text(&output)
            );
            let report = json(&output, ctx);
            assert_eq!(
                report["errors"],
                serde_json::json!([]),
                "{ctx}: ferry repo check --read-data: {report}"
            );
        }
        let ids = self.snapshots.map(|listing| {
            let output = listing.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "{ctx}: ferry repo snapshots failed: {}",
                text(&output)
            );
            let listed: BTreeSet<String> = json(&output, ctx)
                .as_array()
                .unwrap_or_else(|| panic!("{ctx}: ferry repo snapshots printed no list"))
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_owned())
                .collect();
            let stored: BTreeSet<String> = self.fx.objects("snapshots").into_iter().collect();
            assert_eq!(
                listed,
                stored,
                "{ctx}: ferry repo snapshots does not list every snapshot stored: {}",
                text(&output)
            );
            listed
        });
        for (snapshot, target, expected, child) in self.restores {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "{ctx}: ferry volume restore {snapshot} failed: {}",
                text(&output)
            );
            assert_same(
                expected,
                &target,
                ctx,
                &format!("snapshot {snapshot} restored"),
            );
        }
        ids
    }
}

// ---------------------------------------------------------------------------------------------
// The data: a source tree that changes step by step, and what a restore must reproduce of it.

/// `cold/` never changes, so that every snapshot shares it: files from empty to a few chunks,
/// one with a hole, one of zeros only, modes, a hard link, symlinks (one dangling), an empty
/// directory. `hot/` and `warm/` come with [`change_source`].
fn make_source(root: &Path) {
    let cold = root.join("cold");
    let sizes = [
        0usize, 1, 4095, 4096, 20_000, 65_537, 90_000, 130_000, 33, 70_001,
    ];
    for (i, size) in sizes.iter().enumerate() {
        write(
            &cold.join(format!("d{}/f{i}", i % 3)),
            &noise(1000 + i as u64, *size),
        );
    }
    let mut holey = noise(2000, 40_000);
    holey.extend(std::iter::repeat_n(0, 200_000));
    holey.extend(noise(2001, 30_000));
    write(&cold.join("d0/holey"), &holey);
    write(&cold.join("d1/zeros"), &vec![0; 100_000]);
    write(&cold.join("deep/a/b/c/d/leaf"), b"deep\n");
    std::fs::create_dir_all(cold.join("empty")).unwrap();
    std::fs::set_permissions(cold.join("d1/f1"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(cold.join("d2/f2"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::hard_link(cold.join("d0/f3"), cold.join("d2/hard")).unwrap();
    std::os::unix::fs::symlink("../d0/f0", cold.join("d1/link")).unwrap();
    std::os::unix::fs::symlink("../../nowhere", cold.join("d2/dangling")).unwrap();
}

/// Step `step` of the source's life: `hot/` rewritten whole (its data lives in one snapshot
/// only), a new file in `warm/` and the one of three steps before gone (data that outlives some
/// snapshots and not others), a mode changed.
fn change_source(root: &Path, step: u64) {
    let hot = root.join("hot");
    for i in 0..4u64 {
        let size = 230_000 + ((step * 7919 + i * 104_729) % 60_000) as usize;
        write(&hot.join(format!("h{i}")), &noise(step * 100 + i, size));
    }
    write(
        &root.join(format!("warm/w{step}")),
        &noise(1_000_000 + step, 120_000 + step as usize),
    );
    if step >= 3 {
        let _ = std::fs::remove_file(root.join(format!("warm/w{}", step - 3)));
    }
    std::fs::set_permissions(
        hot.join("h0"),
        std::fs::Permissions::from_mode(if step.is_multiple_of(2) { 0o644 } else { 0o640 }),
    )
    .unwrap();
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The files of a local repository that are no objects: temp files (`tmp/`, or names starting
/// with `.`) a killed process left.
fn temp_files(repo: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![repo.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else if name.to_string_lossy().starts_with('.')
                || entry.path().starts_with(repo.join("tmp"))
            {
                found.push(entry.path());
            }
        }
    }
    found
}

/// Copies a tree with its modes, times, hard links and symlinks.
fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// What a restore must reproduce of each entry below the root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    /// Octal.
    mode: String,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    /// Regular files only: hard links are restored as such.
    nlink: u64,
    /// A hash of a file's bytes.
    content: u64,
    link: Option<PathBuf>,
}

type Manifest = BTreeMap<PathBuf, Entry>;

/// What `root` holds; nothing when it does not exist (a restore killed before it made it).
fn manifest(root: &Path) -> Manifest {
    let mut out = Manifest::new();
    if !root.exists() {
        return out;
    }
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let file_type = meta.file_type();
            let kind = if file_type.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if file_type.is_symlink() {
                "symlink"
            } else if file_type.is_file() {
                "file"
            } else {
                "other"
            };
            let content = if file_type.is_file() {
                let mut hasher = std::hash::DefaultHasher::new();
                std::fs::read(&path).unwrap().hash(&mut hasher);
                hasher.finish()
            } else {
                0
            };
            out.insert(
                path.strip_prefix(root).unwrap().to_owned(),
                Entry {
                    kind,
                    mode: if file_type.is_symlink() {
                        String::new()
                    } else {
                        format!("{:o}", meta.mode() & 0o7777)
                    },
                    uid: meta.uid(),
                    gid: meta.gid(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    size: if file_type.is_file() { meta.len() } else { 0 },
                    nlink: if file_type.is_file() { meta.nlink() } else { 0 },
                    content,
                    link: file_type
                        .is_symlink()
                        .then(|| std::fs::read_link(&path).unwrap()),
                },
            );
        }
    }
    out
}

fn assert_same(expected: &Manifest, target: &Path, ctx: &dyn fmt::Display, what: &str) {
    let actual = manifest(target);
    if &actual == expected {
        return;
    }
    let mut differences = Vec::new();
    for (path, entry) in expected {
        match actual.get(path) {
            None => differences.push(format!("{} is missing", path.display())),
            Some(found) if found != entry => differences.push(format!(
                "{}: expected {entry:?}, found {found:?}",
                path.display()
            )),
            Some(_) => {}
        }
    }
    for path in actual.keys().filter(|path| !expected.contains_key(*path)) {
        differences.push(format!("{} should not be there", path.display()));
    }
    panic!(
        "{ctx}: {what} into {} differs from its source in {} entries:\n  {}",
        target.display(),
        differences.len(),
        differences
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
