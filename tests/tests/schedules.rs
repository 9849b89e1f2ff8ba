//! Schedules against the test environment's API server and MinIO, with the controller reading a
//! manual clock that each test moves: a schedule takes one backup per cron time, a paused one
//! takes none, cron times missed while the controller was down are caught up with one backup,
//! and `skipImmediately` waits for the first cron time. Every backup taken must complete.
//!
//! The controller looks at a schedule at least once a minute of real time. After moving the
//! clock, a test prompts it at once by touching an annotation of the Schedule ([`poke`]): any
//! change to the object is an event the controller reconciles.

use std::time::Duration;

use ferry_controller::Clock;
use ferry_protocol::crd::{
    Phase, SCHEDULE_LABEL, SCHEDULED_FOR_ANNOTATION, Schedule, SchedulePhase, ScheduleStatus,
};
use ferry_tests::{
    CONVERGENCE_TIMEOUT, HasPhase, RunningController, TestNamespace, finished, summary,
};
use jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

/// Where every test's clock starts: half a minute past a cron time of `*/1 * * * *`.
const START: &str = "2026-11-26T10:00:30Z";
/// How long a test lets the controller act before it says that nothing happened.
const SETTLE: Duration = Duration::from_secs(3);

struct Setup {
    controller: RunningController,
    /// The application the schedules back up: one ConfigMap.
    app: TestNamespace,
}

async fn setup(test: &str) -> Setup {
    let clock = Clock::manual(START.parse().unwrap());
    let controller = RunningController::start_with_clock(test, true, clock).await;
    let app = TestNamespace::create(&controller.client, "sched-app").await;
    ferry_tests::create_object(
        &controller.client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
               "data": {"greeting": "hello"}}),
    )
    .await;
    Setup { controller, app }
}

impl Setup {
    fn schedules(&self) -> Api<Schedule> {
        Api::namespaced(
            self.controller.client.clone(),
            self.controller.namespace.name(),
        )
    }

    /// Creates a schedule every minute that backs up the application; `extra` adds to its spec.
    async fn create_schedule(&self, name: &str, extra: Value) {
        let mut spec = json!({
            "schedule": "*/1 * * * *",
            "template": {"includedNamespaces": [self.app.name()]},
        });
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        self.controller
            .create(
                json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Schedule",
                           "metadata": {"name": name}, "spec": spec}),
            )
            .await;
    }

    fn set_clock(&self, to: &str) {
        self.controller.clock.set(to.parse().unwrap());
    }

    /// Prompts the controller to look at the schedule now rather than within the minute.
    async fn poke(&self, name: &str) {
        let patch = json!({"metadata": {"annotations": {
            "ferry.dev/test-poke": uuid::Uuid::new_v4().to_string(),
        }}});
        self.schedules()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// The names of the schedule's backups, sorted (which is by their cron time).
    async fn backup_names(&self, schedule: &str) -> Vec<String> {
        let selector = format!("{SCHEDULE_LABEL}={schedule}");
        let mut names: Vec<String> = self
            .controller
            .backups()
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items
            .iter()
            .map(|backup| backup.name_any())
            .collect();
        names.sort();
        names
    }

    /// Waits until the schedule has taken exactly `expected` (by name), then until each of them
    /// has Completed; after a moment, checks that no other backup followed.
    async fn expect_backups(&self, schedule: &str, expected: &[&str]) {
        let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
        loop {
            let names = self.backup_names(schedule).await;
            if names.len() >= expected.len() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "schedule {schedule} took {names:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for name in expected {
            let backup = finished(&self.controller.backups(), name).await;
            assert_eq!(
                backup.phase(),
                Some(Phase::Completed),
                "{name}: {}",
                summary(&backup)
            );
        }
        tokio::time::sleep(SETTLE).await;
        assert_eq!(self.backup_names(schedule).await, expected);
    }

    /// Waits until the schedule's status satisfies `done`.
    async fn status_until(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&ScheduleStatus) -> bool,
    ) -> ScheduleStatus {
        let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
        loop {
            let schedule = self.schedules().get(name).await.unwrap();
            let status = schedule.status.clone().unwrap_or_default();
            if done(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "schedule {name} never showed {what}: {}",
                summary(&schedule)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn stop(self) {
        self.controller.stop().await;
        self.app.delete_and_wait().await;
    }
}

fn time(text: &str) -> Timestamp {
    text.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_takes_one_backup_per_cron_time() {
    let setup = setup("schedule-fires").await;
    setup.create_schedule("every-minute", json!({})).await;
    // A new schedule backs up at once, named after the time it did.
    setup
        .expect_backups("every-minute", &["every-minute-20261126100030"])
        .await;
    let first = setup
        .controller
        .backups()
        .get("every-minute-20261126100030")
        .await
        .unwrap();
    assert_eq!(
        first.labels().get(SCHEDULE_LABEL).map(String::as_str),
        Some("every-minute")
    );
    assert_eq!(
        first
            .annotations()
            .get(SCHEDULED_FOR_ANNOTATION)
            .map(String::as_str),
        Some(START)
    );
    let status = setup
        .status_until("every-minute", "its completed backup", |s| {
            s.last_successful_backup.is_some()
        })
        .await;
    assert_eq!(status.phase, Some(SchedulePhase::Enabled));
    assert_eq!(status.last_backup.map(|t| t.0), Some(time(START)));
    assert_eq!(
        status.next_run.map(|t| t.0),
        Some(time("2026-11-26T10:01:00Z"))
    );

    // Before the next cron time, nothing.
    setup.set_clock("2026-11-26T10:00:59Z");
    setup.poke("every-minute").await;
    setup
        .expect_backups("every-minute", &["every-minute-20261126100030"])
        .await;

    // At it, and half a minute past the one after: one backup each.
    setup.set_clock("2026-11-26T10:01:00Z");
    setup.poke("every-minute").await;
    setup
        .expect_backups(
            "every-minute",
            &["every-minute-20261126100030", "every-minute-20261126100100"],
        )
        .await;
    setup.set_clock("2026-11-26T10:02:30Z");
    setup.poke("every-minute").await;
    setup
        .expect_backups(
            "every-minute",
            &[
                "every-minute-20261126100030",
                "every-minute-20261126100100",
                "every-minute-20261126100200",
            ],
        )
        .await;
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_schedule_takes_no_backup() {
    let setup = setup("schedule-paused").await;
    setup
        .create_schedule("paused", json!({"paused": true}))
        .await;
    setup
        .status_until("paused", "phase Paused", |s| {
            s.phase == Some(SchedulePhase::Paused)
        })
        .await;
    for _ in 0..5 {
        setup.controller.clock.advance(SignedDuration::from_mins(1));
        setup.poke("paused").await;
    }
    setup.expect_backups("paused", &[]).await;

    // Unpaused, it takes its first backup at once, as a new schedule does.
    let patch = json!({"spec": {"paused": false}});
    setup
        .schedules()
        .patch("paused", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let now = setup.controller.clock.now();
    let name = format!("paused-{}", now.strftime("%Y%m%d%H%M%S"));
    setup.expect_backups("paused", &[&name]).await;
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_times_missed_while_the_controller_was_down_are_caught_up_once() {
    let mut setup = setup("schedule-catch-up").await;
    setup.create_schedule("nightly", json!({})).await;
    setup
        .expect_backups("nightly", &["nightly-20261126100030"])
        .await;

    setup.controller.crash().await;
    // Ten cron times go by (10:01 to 10:10) while no controller runs.
    setup
        .controller
        .clock
        .advance(SignedDuration::from_mins(10));
    setup.controller.restart();
    setup
        .expect_backups(
            "nightly",
            &["nightly-20261126100030", "nightly-20261126101000"],
        )
        .await;
    // Looking again changes nothing: the latest cron time is taken.
    setup.poke("nightly").await;
    setup
        .expect_backups(
            "nightly",
            &["nightly-20261126100030", "nightly-20261126101000"],
        )
        .await;
    let status = setup
        .status_until("nightly", "the catch-up backup", |s| {
            s.last_backup.as_ref().map(|t| t.0) == Some(time("2026-11-26T10:10:00Z"))
        })
        .await;
    assert_eq!(
        status.next_run.map(|t| t.0),
        Some(time("2026-11-26T10:11:00Z"))
    );
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_immediately_waits_for_the_first_cron_time() {
    let setup = setup("schedule-skip").await;
    setup
        .create_schedule("later", json!({"skipImmediately": true}))
        .await;
    let status = setup
        .status_until("later", "that it skipped its creation", |s| {
            s.last_skipped.is_some()
        })
        .await;
    assert_eq!(status.last_skipped.map(|t| t.0), Some(time(START)));
    setup.expect_backups("later", &[]).await;

    setup.set_clock("2026-11-26T10:00:59Z");
    setup.poke("later").await;
    setup.expect_backups("later", &[]).await;

    setup.set_clock("2026-11-26T10:01:00Z");
    setup.poke("later").await;
    setup
        .expect_backups("later", &["later-20261126100100"])
        .await;
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_schedule_says_what_to_write_instead() {
    let setup = setup("schedule-invalid").await;
    setup
        .create_schedule(
            "broken",
            json!({"schedule": "0 25 * * *", "timeZone": "Mars/Olympus_Mons"}),
        )
        .await;
    let status = setup
        .status_until("broken", "phase FailedValidation", |s| {
            s.phase == Some(SchedulePhase::FailedValidation)
        })
        .await;
    let problems = status.validation_errors.join("\n");
    assert!(problems.contains("five fields"), "{problems}");
    assert!(problems.contains("Europe/Paris"), "{problems}");
    setup.expect_backups("broken", &[]).await;
    setup.stop().await;
}
