//! The Schedule reconciler: takes a Backup from the schedule's template at each cron time, read in
//! the schedule's time zone. Cron times missed while the controller was down (or the schedule
//! paused) are caught up with one backup, for the latest of them, never one per missed time.
//!
//! A backup is named after its cron time (`<schedule>-<YYYYMMDDHHMMSS>`, UTC, as Velero names
//! them) and records that time in an annotation, so creating it again after a crash, or from a
//! stale cached copy of the schedule, finds it there instead of taking another.

use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use ferry_protocol::crd::{
    Backup, Phase, SCHEDULE_LABEL, SCHEDULED_FOR_ANNOTATION, Schedule, SchedulePhase,
    ScheduleStatus,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use crate::context::Context;
use crate::error::Result;

/// The longest a schedule goes unlooked-at: a clock that jumps (a manual one in tests, a
/// corrected system clock) is noticed within this.
const MAX_REQUEUE: Duration = Duration::from_secs(60);
/// Kubernetes caps label values at 63 characters, and every backup carries the schedule's name
/// in one.
const MAX_NAME_LENGTH: usize = 63;

/// A cron expression read in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    zone: Tz,
}

impl CronSchedule {
    /// Parses a schedule's cron expression and time zone (default UTC); the error lists every
    /// problem with what to write instead.
    pub fn parse(expression: &str, time_zone: Option<&str>) -> Result<CronSchedule, Vec<String>> {
        let mut problems = Vec::new();
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(expression)
            .map_err(|error| {
                problems.push(format!(
                    "schedule {expression:?} is not a cron expression ({error}); write five fields, \
                     minute hour day-of-month month day-of-week, e.g. \"0 1 * * *\" for 01:00 every day"
                ))
            })
            .ok();
        let zone = match time_zone.filter(|zone| !zone.is_empty()) {
            None => Some(Tz::UTC),
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| {
                    problems.push(format!(
                        "timeZone {name:?} is not an IANA time zone; write e.g. Europe/Paris, \
                         America/New_York or UTC"
                    ))
                })
                .ok(),
        };
        let (Some(cron), Some(zone)) = (cron, zone) else {
            return Err(problems);
        };
        let schedule = CronSchedule { cron, zone };
        // Rejects expressions that parse but name no real time, such as 30 February.
        if schedule.next_after(Timestamp::UNIX_EPOCH).is_none() {
            return Err(vec![format!(
                "schedule {expression:?} never occurs; check its day-of-month and month fields"
            )]);
        }
        Ok(schedule)
    }

    fn local(&self, at: Timestamp) -> Option<chrono::DateTime<Tz>> {
        chrono::DateTime::from_timestamp(at.as_second(), 0).map(|utc| utc.with_timezone(&self.zone))
    }

    /// The first cron time strictly after `at`.
    pub fn next_after(&self, at: Timestamp) -> Option<Timestamp> {
        let mut from = at;
        // In the hour a daylight-saving change repeats, croner can answer with the first pass of
        // a wall-clock time that is already behind `at`; search on from after that hour.
        for _ in 0..3 {
            let next = self
                .cron
                .find_next_occurrence(&self.local(from)?, false)
                .ok()?;
            let next = Timestamp::from_second(next.timestamp()).ok()?;
            if next > at {
                return Some(next);
            }
            from = from.checked_add(jiff::SignedDuration::from_hours(1)).ok()?;
        }
        None
    }

    /// The latest cron time at or before `at`.
    pub fn latest_at_or_before(&self, at: Timestamp) -> Option<Timestamp> {
        let mut before = at;
        // Searching backwards, croner resolves a time that a daylight-saving change skips to the
        // second before the change, where the forward search (which decides when backups are
        // taken) runs it after the change. The forward view of the occurrence is the one that
        // counts; when it is still ahead of `at`, the occurrence before it is the latest.
        for _ in 0..3 {
            let previous = self
                .cron
                .find_previous_occurrence(&self.local(before)?, true)
                .ok()?;
            let previous = Timestamp::from_second(previous.timestamp()).ok()?;
            let canonical = self
                .cron
                .find_next_occurrence(&self.local(previous)?, true)
                .ok()
                .and_then(|t| Timestamp::from_second(t.timestamp()).ok())
                .unwrap_or(previous);
            if canonical <= at {
                return Some(canonical);
            }
            before = previous
                .checked_sub(jiff::SignedDuration::from_secs(1))
                .ok()?;
        }
        None
    }
}

/// What a schedule does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Take the backup of this cron time (or of now, for a new schedule's first backup).
    Take(Timestamp),
    /// Let the due time pass: only cron times after this one are taken.
    Skip(Timestamp),
    Wait,
}

/// What a schedule that is not paused does at `now`, given the cron time of its latest backup
/// and the last time it skipped. `just_unpaused` is true on the first look after a pause.
pub fn decide(
    cron: &CronSchedule,
    now: Timestamp,
    last_backup: Option<Timestamp>,
    last_skipped: Option<Timestamp>,
    skip_immediately: bool,
    just_unpaused: bool,
) -> Decision {
    let Some(since) = last_backup.max(last_skipped) else {
        return match skip_immediately {
            true => Decision::Skip(now),
            false => Decision::Take(now),
        };
    };
    match cron.latest_at_or_before(now) {
        // However many cron times went by since, one backup, for the latest.
        Some(due) if due > since && just_unpaused && skip_immediately => Decision::Skip(now),
        Some(due) if due > since => Decision::Take(due),
        _ => Decision::Wait,
    }
}

/// The name of the backup a schedule takes for the cron time `due`.
pub fn backup_name(schedule: &str, due: Timestamp) -> String {
    format!("{schedule}-{}", due.strftime("%Y%m%d%H%M%S"))
}

/// `at` without its fraction of a second, as Kubernetes keeps times.
fn whole_seconds(at: Timestamp) -> Timestamp {
    Timestamp::from_second(at.as_second()).unwrap_or(at)
}

pub async fn reconcile(schedule: Arc<Schedule>, ctx: Arc<Context>) -> Result<Action> {
    let name = schedule.name_any();
    let now = whole_seconds(ctx.now());
    let previous = schedule.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    let backups: Api<Backup> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let taken = backups
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
        .await?
        .items;
    status.last_successful_backup = newest_completion(&taken).map(Time);

    let mut problems = Vec::new();
    if name.len() > MAX_NAME_LENGTH {
        problems.push(format!(
            "the name {name:?} is longer than {MAX_NAME_LENGTH} characters, which the label \
             {SCHEDULE_LABEL} on its backups cannot hold; create the schedule under a shorter name"
        ));
    }
    let cron =
        match CronSchedule::parse(&schedule.spec.schedule, schedule.spec.time_zone.as_deref()) {
            Ok(cron) if problems.is_empty() => cron,
            Ok(_) => return failed_validation(&schedule, &ctx, status, problems).await,
            Err(more) => {
                problems.extend(more);
                return failed_validation(&schedule, &ctx, status, problems).await;
            }
        };
    status.validation_errors.clear();

    if schedule.spec.paused {
        status.phase = Some(SchedulePhase::Paused);
        status.next_run = None;
        if status != previous {
            ctx.apply_status(schedule.as_ref(), &status).await?;
            tracing::info!(message = "schedule paused", schedule = %name);
        }
        return Ok(Action::await_change());
    }
    let just_unpaused = previous.phase == Some(SchedulePhase::Paused);
    status.phase = Some(SchedulePhase::Enabled);
    // The backups themselves say which cron times were taken, even when the status write that
    // followed a backup's creation was lost, or this copy of the schedule is older than it.
    let last_backup = status
        .last_backup
        .as_ref()
        .map(|t| t.0)
        .max(newest_scheduled_for(&taken));
    status.last_backup = last_backup.map(Time);

    match decide(
        &cron,
        now,
        last_backup,
        status.last_skipped.as_ref().map(|t| t.0),
        schedule.spec.skip_immediately,
        just_unpaused,
    ) {
        Decision::Take(due) => {
            take_backup(&schedule, &ctx, &backups, due).await?;
            status.last_backup = Some(Time(due));
        }
        Decision::Skip(at) => {
            tracing::info!(message = "schedule skips its due time (skipImmediately)", schedule = %name, at = %at);
            status.last_skipped = Some(Time(at));
        }
        Decision::Wait => {}
    }
    let next = cron.next_after(now);
    status.next_run = next.map(Time);
    if status != previous {
        ctx.apply_status(schedule.as_ref(), &status).await?;
    }
    let until_next = next
        .and_then(|next| Duration::try_from(next.duration_since(now)).ok())
        .unwrap_or(MAX_REQUEUE);
    Ok(Action::requeue(
        until_next.clamp(Duration::from_secs(1), MAX_REQUEUE),
    ))
}

async fn failed_validation(
    schedule: &Schedule,
    ctx: &Context,
    mut status: ScheduleStatus,
    problems: Vec<String>,
) -> Result<Action> {
    let previous = schedule.status.clone().unwrap_or_default();
    status.phase = Some(SchedulePhase::FailedValidation);
    status.next_run = None;
    status.validation_errors = problems;
    if status != previous {
        ctx.apply_status(schedule, &status).await?;
    }
    if previous.phase != status.phase || previous.validation_errors != status.validation_errors {
        let note = status.validation_errors.join("; ");
        tracing::warn!(message = "schedule failed validation", schedule = %schedule.name_any(), problems = %note);
        ctx.event(schedule, EventType::Warning, "FailedValidation", note)
            .await;
    }
    // Nothing changes until the spec does.
    Ok(Action::await_change())
}

/// Creates the schedule's backup for the cron time `due`; one that exists already was created
/// by an earlier look at the same time and counts as done.
async fn take_backup(
    schedule: &Schedule,
    ctx: &Context,
    backups: &Api<Backup>,
    due: Timestamp,
) -> Result<()> {
    let schedule_name = schedule.name_any();
    let name = backup_name(&schedule_name, due);
    let backup = Backup {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ctx.namespace.clone()),
            labels: Some([(SCHEDULE_LABEL.to_owned(), schedule_name.clone())].into()),
            annotations: Some([(SCHEDULED_FOR_ANNOTATION.to_owned(), due.to_string())].into()),
            ..Default::default()
        },
        spec: schedule.spec.template.clone(),
        status: None,
    };
    match backups.create(&PostParams::default(), &backup).await {
        Ok(_) => {
            tracing::info!(message = "schedule created a backup", schedule = %schedule_name, backup = %name, due = %due);
            ctx.event(
                schedule,
                EventType::Normal,
                "BackupCreated",
                format!("created backup {name} for the cron time {due}"),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::info!(message = "the schedule's backup exists already", schedule = %schedule_name, backup = %name);
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// The latest cron time any of `backups` was taken for.
fn newest_scheduled_for(backups: &[Backup]) -> Option<Timestamp> {
    backups
        .iter()
        .filter_map(|backup| backup.annotations().get(SCHEDULED_FOR_ANNOTATION))
        .filter_map(|text| text.parse::<Timestamp>().ok())
        .max()
}

/// When the newest of `backups` that Completed finished.
fn newest_completion(backups: &[Backup]) -> Option<Timestamp> {
    backups
        .iter()
        .filter_map(|backup| backup.status.as_ref())
        .filter(|status| status.phase == Some(Phase::Completed))
        .filter_map(|status| status.completion_timestamp.as_ref().map(|t| t.0))
        .max()
}

/// Whether a Backup event can change what a schedule shows: only finished backups can.
pub fn backup_finished(backup: &Backup) -> bool {
    backup
        .status
        .as_ref()
        .and_then(|status| status.phase)
        .is_some_and(Phase::is_terminal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn cron(expression: &str, zone: Option<&str>) -> CronSchedule {
        CronSchedule::parse(expression, zone).unwrap()
    }

    #[test]
    fn invalid_expressions_and_zones_say_what_to_write() {
        let problems = CronSchedule::parse("61 * * * *", Some("Europe/Atlantis")).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("five fields"), "{}", problems[0]);
        assert!(problems[1].contains("Europe/Paris"), "{}", problems[1]);
        assert!(CronSchedule::parse("0 1 * *", None).is_err());
        assert!(
            CronSchedule::parse("*/10 * * * * *", None).is_err(),
            "seconds are refused"
        );
        assert!(CronSchedule::parse("@daily", Some("America/New_York")).is_ok());
        assert!(CronSchedule::parse("0 3 * * MON-FRI", Some("")).is_ok());
    }

    #[test]
    fn due_times_are_read_in_the_time_zone() {
        let paris = cron("0 1 * * *", Some("Europe/Paris"));
        // 01:00 in Paris is 00:00 UTC in winter (CET) and 23:00 UTC the day before in summer.
        assert_eq!(
            paris.latest_at_or_before(at("2026-01-15T12:00:00Z")),
            Some(at("2026-01-15T00:00:00Z"))
        );
        assert_eq!(
            paris.latest_at_or_before(at("2026-07-15T12:00:00Z")),
            Some(at("2026-07-14T23:00:00Z"))
        );
        assert_eq!(
            paris.next_after(at("2026-07-15T12:00:00Z")),
            Some(at("2026-07-15T23:00:00Z"))
        );
        let utc = cron("0 1 * * *", None);
        assert_eq!(
            utc.latest_at_or_before(at("2026-07-15T01:00:00Z")),
            Some(at("2026-07-15T01:00:00Z")),
            "a cron time counts once it is reached"
        );
    }

    #[test]
    fn daylight_saving_changes_neither_lose_nor_repeat_a_backup() {
        let paris = cron("30 2 * * *", Some("Europe/Paris"));
        // 2026-03-29: clocks go from 02:00 CET to 03:00 CEST; 02:30 does not exist and the
        // backup runs right after the change, at 03:00 CEST (01:00 UTC).
        let spring = at("2026-03-29T01:00:00Z");
        assert_eq!(paris.next_after(at("2026-03-28T12:00:00Z")), Some(spring));
        assert_eq!(
            paris.latest_at_or_before(at("2026-03-29T01:30:00Z")),
            Some(spring)
        );
        assert_eq!(
            paris.latest_at_or_before(at("2026-03-29T00:59:59Z")),
            Some(at("2026-03-28T01:30:00Z"))
        );
        // 2026-10-25: 02:30 happens twice (CEST, then CET); the backup runs at the first only.
        let autumn = at("2026-10-25T00:30:00Z");
        assert_eq!(paris.next_after(at("2026-10-24T12:00:00Z")), Some(autumn));
        let after_second_pass = at("2026-10-25T01:45:00Z");
        assert_eq!(paris.latest_at_or_before(after_second_pass), Some(autumn));
        assert_eq!(
            decide(&paris, after_second_pass, Some(autumn), None, false, false),
            Decision::Wait
        );
        assert_eq!(
            paris.next_after(autumn),
            Some(at("2026-10-26T01:30:00Z")),
            "the next one is the next day's, in CET"
        );
    }

    #[test]
    fn missed_cron_times_are_caught_up_with_one_backup() {
        let every_minute = cron("*/1 * * * *", None);
        let last = at("2026-11-26T10:00:00Z");
        // Ten minutes and a half later: ten cron times went by, one backup for the latest.
        let now = at("2026-11-26T10:10:30Z");
        let decision = decide(&every_minute, now, Some(last), None, false, false);
        assert_eq!(decision, Decision::Take(at("2026-11-26T10:10:00Z")));
        // Once taken, nothing until the next minute.
        assert_eq!(
            decide(
                &every_minute,
                now,
                Some(at("2026-11-26T10:10:00Z")),
                None,
                false,
                false
            ),
            Decision::Wait
        );
    }

    #[test]
    fn a_new_schedule_backs_up_at_once_unless_it_skips_immediately() {
        let nightly = cron("0 1 * * *", None);
        let created = at("2026-11-26T10:00:00Z");
        assert_eq!(
            decide(&nightly, created, None, None, false, false),
            Decision::Take(created)
        );
        assert_eq!(
            decide(&nightly, created, None, None, true, false),
            Decision::Skip(created)
        );
        // Skipped at creation: nothing until the first cron time after it, then that one.
        assert_eq!(
            decide(
                &nightly,
                at("2026-11-27T00:59:59Z"),
                None,
                Some(created),
                true,
                false
            ),
            Decision::Wait
        );
        assert_eq!(
            decide(
                &nightly,
                at("2026-11-27T01:00:00Z"),
                None,
                Some(created),
                true,
                false
            ),
            Decision::Take(at("2026-11-27T01:00:00Z"))
        );
    }

    #[test]
    fn an_unpaused_schedule_catches_up_once_or_skips() {
        let nightly = cron("0 1 * * *", None);
        let last = Some(at("2026-11-20T01:00:00Z"));
        let now = at("2026-11-26T10:00:00Z");
        assert_eq!(
            decide(&nightly, now, last, None, false, true),
            Decision::Take(at("2026-11-26T01:00:00Z"))
        );
        assert_eq!(
            decide(&nightly, now, last, None, true, true),
            Decision::Skip(now)
        );
    }

    #[test]
    fn backups_are_named_after_their_cron_time_in_utc() {
        assert_eq!(
            backup_name("nightly", at("2026-07-14T23:00:00Z")),
            "nightly-20260714230000"
        );
        assert_eq!(
            whole_seconds(at("2026-11-26T10:00:00.75Z")),
            at("2026-11-26T10:00:00Z")
        );
    }
}
