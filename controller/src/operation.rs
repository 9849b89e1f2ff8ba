//! The lifecycle Backup and Restore share. What a reconcile does next is decided by the pure
//! [`decide`] from the object, what the reconciler observed and the time, so that every branch
//! (deletion, expiry, a run cut short by a restart, a stale cached copy) is tested without an API
//! server; [`reconcile`] is the one executor that carries a [`Step`] out. An operation starts
//! through [`start`] and ends through [`end`] (or [`reject`], [`fail`]): the one place that writes
//! the status, records the metrics and emits the Event of a start or an ending.
//!
//! What differs between the two kinds (how they run, follow their volumes, are deleted) is the
//! [`Operation`] trait, implemented in `backup/mod.rs` and `restore/mod.rs`.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::crd::Phase;
use ferry_protocol::volume::VolumeRecord;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::context::Context;
use crate::error::{Error, Result};

/// The longest an ended operation goes without a look at its expiry, so that a clock that jumps is
/// noticed.
const EXPIRY_RECHECK: Duration = Duration::from_secs(3600);
/// How soon a stale cached copy is looked at again.
const STALE_COPY_RECHECK: Duration = Duration::from_secs(1);

/// A Backup or a Restore, as the lifecycle sees it.
pub trait Operation:
    kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// "backup" or "restore": the key of a run in this process.
    const NOUN: &'static str;

    type Status: Status;

    fn status(&self) -> Option<&Self::Status>;

    fn phase(&self) -> Option<Phase> {
        self.status().and_then(Status::phase)
    }

    /// Whether the user (or its expiry) asked for it to be deleted.
    fn deletion_requested(&self) -> bool {
        false
    }

    /// When an ended operation expires; a running one never does.
    fn expiration(&self) -> Option<Timestamp> {
        None
    }

    /// Whether it describes work done elsewhere (a backup synced from the bucket): it never runs
    /// here.
    fn synced(&self) -> bool {
        false
    }

    /// Runs it from the start; the action is what the reconciler does after a run that ended
    /// without error.
    fn run(&self, ctx: &Context) -> impl Future<Output = Result<Action>> + Send;

    /// Follows its volumes (phase WaitingForVolumes), ending it once every volume has.
    fn follow_volumes(&self, ctx: &Context) -> impl Future<Output = Result<Action>> + Send;

    /// Why a run cut short by a controller restart failed, after cleaning up what it can.
    fn interrupted(&self, ctx: &Context) -> impl Future<Output = String> + Send;

    /// Does what it owes before it ends as Failed, whatever ended it (a backup's post hooks, which
    /// undo what its pre hooks did); says how that went, for the failure reason.
    fn settle(&self, _ctx: &Context) -> impl Future<Output = Option<String>> + Send {
        async { None }
    }

    /// Deletes it; `running_here` when this process still runs it (the deletion is queued).
    fn delete(
        &self,
        _ctx: &Context,
        _running_here: bool,
    ) -> impl Future<Output = Result<Action>> + Send {
        async { Ok(Action::await_change()) }
    }

    /// Marks an expired operation for deletion.
    fn expire(&self, _ctx: &Context) -> impl Future<Output = Result<Action>> + Send {
        async { Ok(Action::await_change()) }
    }

    /// Its status ended as Failed with `reason` at `now`; applied by [`fail`].
    fn failed_status(&self, reason: &str, now: Timestamp) -> Self::Status {
        let mut status = self.status().cloned().unwrap_or_default();
        status.end(Phase::Failed, Some(reason.to_owned()), now);
        status
    }

    /// Records the metrics of an operation that started.
    fn record_started(&self, ctx: &Context);

    /// Records the metrics of an operation that ended with `status`, and `volumes`.
    fn record_finished(&self, ctx: &Context, status: &Self::Status, volumes: &[VolumeRecord]);
}

/// What the lifecycle reads and writes of a Backup's or a Restore's status.
pub trait Status: Clone + Default + serde::Serialize + Send + Sync {
    fn phase(&self) -> Option<Phase>;

    /// Ends it in `phase` at `at`, with the reason when there is one.
    fn end(&mut self, phase: Phase, reason: Option<String>, at: Timestamp);

    /// Errors it counted.
    fn errors(&self) -> u32;

    /// Ends a run that went to its end at `at`: Completed, or PartiallyFailed when it counted
    /// errors; the failure reason, if any, stays.
    fn conclude(&mut self, at: Timestamp) -> Phase;

    /// The status of an operation whose spec is invalid: FailedValidation with the problems.
    fn rejected(problems: Vec<String>, at: Timestamp) -> Self;
}

/// The statuses share these fields by name, not by type.
macro_rules! status_of_an_operation {
    ($($status:ty),*) => {$(
        impl Status for $status {
            fn phase(&self) -> Option<Phase> {
                self.phase
            }

            fn end(&mut self, phase: Phase, reason: Option<String>, at: Timestamp) {
                self.phase = Some(phase);
                self.failure_reason = reason;
                self.completion_timestamp = Some(Time(at));
            }

            fn errors(&self) -> u32 {
                self.errors
            }

            fn conclude(&mut self, at: Timestamp) -> Phase {
                let phase = if self.errors == 0 {
                    Phase::Completed
                } else {
                    Phase::PartiallyFailed
                };
                let reason = self.failure_reason.take();
                self.end(phase, reason, at);
                phase
            }

            fn rejected(problems: Vec<String>, at: Timestamp) -> Self {
                Self {
                    phase: Some(Phase::FailedValidation),
                    validation_errors: problems,
                    completion_timestamp: Some(Time(at)),
                    ..Default::default()
                }
            }
        }
    )*};
}

status_of_an_operation!(
    ferry_protocol::crd::BackupStatus,
    ferry_protocol::crd::RestoreStatus
);

/// What the reconciler knows of an operation besides its cached copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// This process is running the operation now.
    pub running_here: bool,
    /// The phase on the API server, once read ([`Step::ReadServerPhase`] asks for it).
    pub server_phase: Option<Option<Phase>>,
}

/// What a reconcile does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Delete,
    Expire,
    Run,
    FollowVolumes,
    /// The cached copy is InProgress while nothing in this process runs it: either a restart cut
    /// the run short or the cache is behind; only the API server's copy tells which.
    ReadServerPhase,
    /// A controller restart cut the run short.
    FailInterrupted,
    /// Nothing to do until the object changes or, when given, this long has passed.
    Wait(Option<Duration>),
}

/// The next step for `operation`, from its cached copy, what was observed, and the time.
pub fn decide<O: Operation>(operation: &O, observed: &Observed, now: Timestamp) -> Step {
    if operation.deletion_requested() {
        return Step::Delete;
    }
    let expiration = operation.expiration();
    if expiration.is_some_and(|expiration| expiration <= now) {
        return Step::Expire;
    }
    let until_expiry = Step::Wait(expiration.map(|expiration| {
        let left = u64::try_from(expiration.as_second() - now.as_second()).unwrap_or(0);
        Duration::from_secs(left.max(1)).min(EXPIRY_RECHECK)
    }));
    if operation.synced() {
        return until_expiry;
    }
    match operation.phase() {
        None | Some(Phase::New) => Step::Run,
        Some(Phase::WaitingForVolumes) => Step::FollowVolumes,
        Some(Phase::InProgress) if !observed.running_here => match observed.server_phase {
            None => Step::ReadServerPhase,
            Some(Some(Phase::InProgress)) => Step::FailInterrupted,
            // The cache was behind: the next event (or this requeue) brings the current copy.
            Some(_) => Step::Wait(Some(STALE_COPY_RECHECK)),
        },
        Some(_) => until_expiry,
    }
}

/// The one reconcile of Backups and Restores: decides, then carries the step out.
pub async fn reconcile<O: Operation>(operation: Arc<O>, ctx: Arc<Context>) -> Result<Action> {
    let key = format!("{}/{}", O::NOUN, operation.name_any());
    let mut observed = Observed {
        running_here: ctx.is_running(&key),
        server_phase: None,
    };
    loop {
        return match decide(&*operation, &observed, ctx.now()) {
            Step::ReadServerPhase => {
                observed.server_phase = Some(server_phase(&*operation, &ctx).await?);
                continue;
            }
            Step::Wait(None) => Ok(Action::await_change()),
            Step::Wait(Some(after)) => Ok(Action::requeue(after)),
            Step::Delete => operation.delete(&ctx, observed.running_here).await,
            Step::Expire => operation.expire(&ctx).await,
            Step::FollowVolumes => match operation.follow_volumes(&ctx).await {
                // Its volume state is gone, or a file it reads back from the bucket is not what
                // this installation wrote: no later poll makes either trustworthy again.
                Err(error @ (Error::Unsealed { .. } | Error::VolumeStateLost { .. })) => {
                    fail(&*operation, &ctx, &error.to_string()).await?;
                    Ok(Action::await_change())
                }
                other => other,
            },
            Step::FailInterrupted => {
                // What it owes first (an application may be frozen), then the cleaning up.
                let settled = operation.settle(&ctx).await;
                let reason = operation.interrupted(&ctx).await;
                end_failed(&*operation, &ctx, &with_note(reason, settled)).await?;
                Ok(Action::await_change())
            }
            Step::Run => {
                if !ctx.start_running(key.clone()) {
                    return Ok(Action::await_change());
                }
                let outcome = operation.run(&ctx).await;
                ctx.stop_running(&key);
                match outcome {
                    Ok(action) => Ok(action),
                    // Nothing was written yet: the whole operation can simply run again.
                    Err(error) if error.is_retryable() && !has_started(&*operation, &ctx).await => {
                        Err(error)
                    }
                    // One that started cannot resume mid-way; it ends with what went wrong.
                    Err(error) => {
                        fail(&*operation, &ctx, &error.to_string()).await?;
                        Ok(Action::await_change())
                    }
                }
            }
        };
    }
}

/// Starts `operation` with `status` (InProgress): writes it, records the metrics, and emits the
/// `<Kind>Started` Event with `note`.
pub async fn start<O: Operation>(
    operation: &O,
    ctx: &Context,
    status: &O::Status,
    note: String,
) -> Result<()> {
    ctx.apply_status(operation, status).await?;
    ctx.event(
        operation,
        EventType::Normal,
        &format!("{}Started", O::kind(&())),
        note,
    )
    .await;
    operation.record_started(ctx);
    Ok(())
}

/// Ends `operation` with `status`, whose phase is final: writes it, records the metrics (with the
/// `volumes` it followed), and emits the Event its phase calls for, with `note`.
pub async fn end<O: Operation>(
    operation: &O,
    ctx: &Context,
    status: &O::Status,
    volumes: &[VolumeRecord],
    note: String,
) -> Result<()> {
    ctx.apply_status(operation, status).await?;
    operation.record_finished(ctx, status, volumes);
    let (type_, reason) = ending_event(&O::kind(&()), status.phase());
    ctx.event(operation, type_, &reason, note).await;
    Ok(())
}

/// The Event of an ending: `BackupCompleted`, `RestorePartiallyFailed`, `BackupFailed`,
/// `FailedValidation`...
fn ending_event(kind: &str, phase: Option<Phase>) -> (EventType, String) {
    match phase {
        Some(Phase::Completed) => (EventType::Normal, format!("{kind}Completed")),
        Some(Phase::PartiallyFailed) => (EventType::Warning, format!("{kind}PartiallyFailed")),
        Some(Phase::FailedValidation) => (EventType::Warning, "FailedValidation".to_owned()),
        _ => (EventType::Warning, format!("{kind}Failed")),
    }
}

/// Ends `operation` as FailedValidation, naming every problem of its spec.
pub async fn reject<O: Operation>(
    operation: &O,
    ctx: &Context,
    problems: Vec<String>,
) -> Result<()> {
    let note = problems.join("; ");
    let status = O::Status::rejected(problems, ctx.now());
    end(operation, ctx, &status, &[], note).await
}

/// Ends `operation` as Failed with `reason`, once it has done what it owes ([`Operation::settle`]).
pub async fn fail<O: Operation>(operation: &O, ctx: &Context, reason: &str) -> Result<()> {
    let settled = operation.settle(ctx).await;
    end_failed(operation, ctx, &with_note(reason.to_owned(), settled)).await
}

fn with_note(reason: String, note: Option<String>) -> String {
    match note {
        Some(note) => format!("{reason}; {note}"),
        None => reason,
    }
}

/// Ends `operation` as Failed with `reason`, as it is.
async fn end_failed<O: Operation>(operation: &O, ctx: &Context, reason: &str) -> Result<()> {
    let status = operation.failed_status(reason, ctx.now());
    end(operation, ctx, &status, &[], reason.to_owned()).await
}

/// The operation's phase as the API server has it now, not as the reconciler's cache had it.
async fn server_phase<O: Operation>(operation: &O, ctx: &Context) -> Result<Option<Phase>> {
    let api: kube::Api<O> = kube::Api::namespaced(ctx.client.clone(), &ctx.namespace);
    Ok(api.get(&operation.name_any()).await?.phase())
}

/// Whether the operation has gone past New (so it has begun writing); when that cannot be read,
/// it is assumed to have, so that it fails with the reason instead of running twice.
async fn has_started<O: Operation>(operation: &O, ctx: &Context) -> bool {
    match server_phase(operation, ctx).await {
        Ok(phase) => phase.is_some_and(|phase| phase != Phase::New),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation reduced to what [`decide`] reads.
    #[derive(Debug, Clone, Default, serde::Deserialize)]
    struct Fake {
        #[serde(skip)]
        phase: Option<Phase>,
        #[serde(skip)]
        deletion_requested: bool,
        #[serde(skip)]
        expiration: Option<Timestamp>,
        #[serde(skip)]
        synced: bool,
        metadata: kube::api::ObjectMeta,
    }

    impl kube::Resource for Fake {
        type DynamicType = ();
        type Scope = kube::core::NamespaceResourceScope;
        fn kind(_: &()) -> std::borrow::Cow<'_, str> {
            "Fake".into()
        }
        fn group(_: &()) -> std::borrow::Cow<'_, str> {
            "ferry.dev".into()
        }
        fn version(_: &()) -> std::borrow::Cow<'_, str> {
            "v1".into()
        }
        fn plural(_: &()) -> std::borrow::Cow<'_, str> {
            "fakes".into()
        }
        fn meta(&self) -> &kube::api::ObjectMeta {
            &self.metadata
        }
        fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
            &mut self.metadata
        }
    }

    impl Operation for Fake {
        const NOUN: &'static str = "fake";
        type Status = ferry_protocol::crd::BackupStatus;
        fn status(&self) -> Option<&Self::Status> {
            None
        }
        fn phase(&self) -> Option<Phase> {
            self.phase
        }
        fn deletion_requested(&self) -> bool {
            self.deletion_requested
        }
        fn expiration(&self) -> Option<Timestamp> {
            self.expiration
        }
        fn synced(&self) -> bool {
            self.synced
        }
        async fn run(&self, _: &Context) -> Result<Action> {
            unreachable!("decide never runs anything")
        }
        async fn follow_volumes(&self, _: &Context) -> Result<Action> {
            unreachable!("decide never runs anything")
        }
        async fn interrupted(&self, _: &Context) -> String {
            unreachable!("decide never runs anything")
        }
        fn record_started(&self, _: &Context) {}
        fn record_finished(&self, _: &Context, _: &Self::Status, _: &[VolumeRecord]) {}
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn fake(phase: Option<Phase>) -> Fake {
        Fake {
            phase,
            ..Fake::default()
        }
    }

    const HERE: Observed = Observed {
        running_here: true,
        server_phase: None,
    };
    const ELSEWHERE: Observed = Observed {
        running_here: false,
        server_phase: None,
    };

    fn on_server(phase: Option<Phase>) -> Observed {
        Observed {
            running_here: false,
            server_phase: Some(phase),
        }
    }

    #[test]
    fn phases_decide_the_step() {
        use Phase::*;
        let cases: &[(Option<Phase>, Observed, Step)] = &[
            (None, ELSEWHERE, Step::Run),
            (Some(New), ELSEWHERE, Step::Run),
            // Running here already: the executor's start_running refuses a second run.
            (Some(New), HERE, Step::Run),
            (Some(WaitingForVolumes), ELSEWHERE, Step::FollowVolumes),
            (Some(WaitingForVolumes), HERE, Step::FollowVolumes),
            // InProgress and running here: its run ends it.
            (Some(InProgress), HERE, Step::Wait(None)),
            // InProgress and nothing here runs it: ask the API server first.
            (Some(InProgress), ELSEWHERE, Step::ReadServerPhase),
            (
                Some(InProgress),
                on_server(Some(InProgress)),
                Step::FailInterrupted,
            ),
            // The cache was behind the API server.
            (
                Some(InProgress),
                on_server(Some(Completed)),
                Step::Wait(Some(STALE_COPY_RECHECK)),
            ),
            (
                Some(InProgress),
                on_server(Some(WaitingForVolumes)),
                Step::Wait(Some(STALE_COPY_RECHECK)),
            ),
            (
                Some(InProgress),
                on_server(None),
                Step::Wait(Some(STALE_COPY_RECHECK)),
            ),
            (Some(Completed), ELSEWHERE, Step::Wait(None)),
            (Some(PartiallyFailed), ELSEWHERE, Step::Wait(None)),
            (Some(Failed), ELSEWHERE, Step::Wait(None)),
            (Some(FailedValidation), ELSEWHERE, Step::Wait(None)),
            (Some(Deleting), ELSEWHERE, Step::Wait(None)),
        ];
        for (phase, observed, step) in cases {
            assert_eq!(
                decide(&fake(*phase), observed, at(0)),
                *step,
                "phase {phase:?}, observed {observed:?}"
            );
        }
    }

    #[test]
    fn deletion_comes_before_everything() {
        for phase in [
            None,
            Some(Phase::InProgress),
            Some(Phase::WaitingForVolumes),
            Some(Phase::Completed),
        ] {
            for observed in [HERE, ELSEWHERE] {
                let operation = Fake {
                    phase,
                    deletion_requested: true,
                    expiration: Some(at(-10)),
                    synced: true,
                    ..Fake::default()
                };
                assert_eq!(decide(&operation, &observed, at(0)), Step::Delete);
            }
        }
    }

    #[test]
    fn an_ended_operation_expires_at_its_expiration() {
        let ended = |expiration| Fake {
            phase: Some(Phase::Completed),
            expiration: Some(expiration),
            ..Fake::default()
        };
        assert_eq!(decide(&ended(at(0)), &ELSEWHERE, at(0)), Step::Expire);
        assert_eq!(decide(&ended(at(-5)), &ELSEWHERE, at(0)), Step::Expire);
        // Not yet: looked at again when it expires, at least hourly, never sooner than a second.
        assert_eq!(
            decide(&ended(at(90)), &ELSEWHERE, at(0)),
            Step::Wait(Some(Duration::from_secs(90)))
        );
        assert_eq!(
            decide(&ended(at(30 * 24 * 3600)), &ELSEWHERE, at(0)),
            Step::Wait(Some(EXPIRY_RECHECK))
        );
        assert_eq!(
            decide(&ended(at(0)), &ELSEWHERE, at(-1)),
            Step::Wait(Some(Duration::from_secs(1)))
        );
    }

    #[test]
    fn a_synced_operation_never_runs_and_still_expires() {
        let synced = |phase, expiration| Fake {
            phase,
            expiration,
            synced: true,
            ..Fake::default()
        };
        assert_eq!(
            decide(&synced(None, None), &ELSEWHERE, at(0)),
            Step::Wait(None)
        );
        assert_eq!(
            decide(&synced(Some(Phase::InProgress), None), &ELSEWHERE, at(0)),
            Step::Wait(None)
        );
        assert_eq!(
            decide(
                &synced(Some(Phase::Completed), Some(at(60))),
                &ELSEWHERE,
                at(0)
            ),
            Step::Wait(Some(Duration::from_secs(60)))
        );
        assert_eq!(
            decide(
                &synced(Some(Phase::Completed), Some(at(0))),
                &ELSEWHERE,
                at(0)
            ),
            Step::Expire
        );
    }

    #[test]
    fn a_run_that_counted_errors_ends_partially_failed_and_keeps_its_reason() {
        use ferry_protocol::crd::BackupStatus;
        let mut clean = BackupStatus {
            phase: Some(Phase::InProgress),
            ..Default::default()
        };
        assert_eq!(clean.conclude(at(5)), Phase::Completed);
        assert_eq!(clean.phase, Some(Phase::Completed));
        assert_eq!(clean.completion_timestamp, Some(Time(at(5))));

        let mut errors = BackupStatus {
            phase: Some(Phase::WaitingForVolumes),
            errors: 2,
            failure_reason: Some("volumes not backed up: pv-1".to_owned()),
            ..Default::default()
        };
        assert_eq!(errors.conclude(at(9)), Phase::PartiallyFailed);
        assert_eq!(
            errors.failure_reason.as_deref(),
            Some("volumes not backed up: pv-1")
        );

        let rejected = BackupStatus::rejected(vec!["ttl: not a duration".to_owned()], at(1));
        assert_eq!(rejected.phase, Some(Phase::FailedValidation));
        assert_eq!(rejected.validation_errors, ["ttl: not a duration"]);
        assert_eq!(rejected.completion_timestamp, Some(Time(at(1))));
    }

    #[test]
    fn every_ending_has_its_event() {
        let cases = [
            (Some(Phase::Completed), EventType::Normal, "BackupCompleted"),
            (
                Some(Phase::PartiallyFailed),
                EventType::Warning,
                "BackupPartiallyFailed",
            ),
            (Some(Phase::Failed), EventType::Warning, "BackupFailed"),
            (
                Some(Phase::FailedValidation),
                EventType::Warning,
                "FailedValidation",
            ),
        ];
        for (phase, type_, reason) in cases {
            assert_eq!(ending_event("Backup", phase), (type_, reason.to_owned()));
        }
        assert_eq!(
            ending_event("Restore", Some(Phase::Completed)).1,
            "RestoreCompleted"
        );
    }
}
