//! Ferry's controller.
//!
//! Reconciles Backup, Restore, Schedule, BackupStorageLocation and VolumeSnapshotLocation
//! resources: backs up the objects of an application into a storage location, with native
//! snapshots of its volumes, on demand or on a cron schedule, and restores them, in the same
//! cluster or a new one.
//!
//! Each resource has one `reconcile(object, ctx) -> Result<Action>` in a module named after it;
//! [`Context`] is what they share; [`run`] starts them all.

pub mod agents;
pub mod archive;
pub mod backup;
pub mod certificates;
pub mod clock;
mod context;
pub mod ebs;
mod error;
pub mod hooks;
pub mod image;
pub mod leader;
pub mod location;
pub mod locations;
pub mod maintenance;
pub mod metrics;
pub mod modifiers;
pub mod operation;
pub mod resources;
pub mod restore;
pub mod schedule;
pub mod seal;
pub mod snapshot_location;
pub mod storage;
pub mod volumes;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::crd::{
    Backup, BackupStorageLocation, Restore, Schedule, VolumeSnapshotLocation,
};
use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::Instrument;

pub use clock::Clock;
pub use context::Context;
pub use error::{Error, Result};
pub use locations::Locations;
pub use metrics::Metrics;

/// Runs every reconciler until the process is stopped.
pub async fn run(client: Client, namespace: String) {
    run_with_clock(client, namespace, Clock::system()).await
}

/// [`run`] with the time read from `clock` (tests move a manual one).
pub async fn run_with_clock(client: Client, namespace: String, clock: Clock) {
    run_with(client, namespace, clock, Arc::default()).await
}

/// [`run_with_clock`] recording into `metrics`, which the caller serves (or a test reads).
pub async fn run_with(client: Client, namespace: String, clock: Clock, metrics: Arc<Metrics>) {
    let namespace = namespace.as_str();
    let ctx = Arc::new(
        Context::new(client.clone(), namespace)
            .with_clock(clock)
            .with_metrics(metrics),
    );
    let config = watcher::Config::default();
    let (backup_tasks_ended, restore_tasks_ended) = tasks_ended(&ctx);
    let backups = Controller::new(
        Api::<Backup>::namespaced(client.clone(), namespace),
        config.clone(),
    )
    .reconcile_on(backup_tasks_ended)
    .run(
        |backup, ctx| {
            let span = tracing::info_span!("reconcile", backup = %backup.name_any());
            backup::reconcile(backup, ctx).instrument(span)
        },
        error_policy,
        ctx.clone(),
    )
    .for_each(log_outcome);
    let restores = Controller::new(
        Api::<Restore>::namespaced(client.clone(), namespace),
        config.clone(),
    )
    .reconcile_on(restore_tasks_ended)
    // A restored pod that the scheduler binds to a node is ready for its node agent at once.
    // (Pending: its init container waits for the agent; pods that run are of no interest.)
    .watches(
        Api::<k8s_openapi::api::core::v1::Pod>::all(client.clone()),
        watcher::Config::default().labels(restore::RESTORE_NAME_LABEL),
        {
            let namespace = namespace.to_owned();
            move |pod| {
                pod.spec.as_ref()?.node_name.as_ref()?;
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if phase.is_some_and(|phase| phase != "Pending") {
                    return None;
                }
                let restore = pod.labels().get(restore::RESTORE_NAME_LABEL)?;
                Some(ObjectRef::new(restore).within(&namespace))
            }
        },
    )
    .run(
        |restore, ctx| {
            let span = tracing::info_span!("reconcile", restore = %restore.name_any());
            restore::reconcile(restore, ctx).instrument(span)
        },
        error_policy,
        ctx.clone(),
    )
    .for_each(log_outcome);
    let locations = Controller::new(
        Api::<BackupStorageLocation>::namespaced(client.clone(), namespace),
        config.clone(),
    )
    .run(location::reconcile, error_policy, ctx.clone())
    .for_each(log_outcome);
    let snapshot_locations = Controller::new(
        Api::<VolumeSnapshotLocation>::namespaced(client.clone(), namespace),
        config,
    )
    .run(snapshot_location::reconcile, error_policy, ctx.clone())
    .for_each(log_outcome);
    // A schedule shows when its backups last completed, so a backup that finishes wakes it.
    let scheduled_backups_namespace = namespace.to_owned();
    let schedules = Controller::new(
        Api::<Schedule>::namespaced(client.clone(), namespace),
        watcher::Config::default(),
    )
    .watches(
        Api::<Backup>::namespaced(client.clone(), namespace),
        watcher::Config::default().labels(ferry_protocol::crd::SCHEDULE_LABEL),
        move |backup| {
            let owner = backup.labels().get(ferry_protocol::crd::SCHEDULE_LABEL)?;
            schedule::backup_finished(&backup)
                .then(|| ObjectRef::new(owner).within(&scheduled_backups_namespace))
        },
    )
    .run(schedule::reconcile, error_policy, ctx.clone())
    .for_each(log_outcome);
    // The agents' certificates, issued as their Leases ask.
    let certificates = certificates::run(ctx.clone());
    tracing::info!(message = "controller started", %namespace);
    tokio::join!(
        backups,
        restores,
        locations,
        snapshot_locations,
        schedules,
        certificates
    );
}

/// The Backups and Restores whose node agent tasks just ended, so that they record the outcome
/// at once instead of at their next poll (which would add up to 5 s to every volume).
fn tasks_ended(
    ctx: &Context,
) -> (
    impl futures::Stream<Item = ObjectRef<Backup>> + Send + 'static,
    impl futures::Stream<Item = ObjectRef<Restore>> + Send + 'static,
) {
    let (backups, backup_refs) = tokio::sync::mpsc::unbounded_channel();
    let (restores, restore_refs) = tokio::sync::mpsc::unbounded_channel();
    if let Some(mut ended) = ctx.agent_tasks.ended_owners() {
        let namespace = ctx.namespace.clone();
        tokio::spawn(async move {
            while let Some(owner) = ended.recv().await {
                // A closed channel means the reconcilers have stopped; nothing to wake.
                match owner {
                    agents::TaskOwner::Backup(name) => {
                        let _ = backups.send(ObjectRef::new(&name).within(&namespace));
                    }
                    agents::TaskOwner::Restore(name) => {
                        let _ = restores.send(ObjectRef::new(&name).within(&namespace));
                    }
                }
            }
        });
    }
    (receiver_stream(backup_refs), receiver_stream(restore_refs))
}

fn receiver_stream<T>(
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

fn error_policy<K>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    let retry_in = Duration::from_secs(if error.is_retryable() { 5 } else { 60 });
    ctx.metrics
        .reconcile_failed(&K::kind(&()), &object.name_any(), error, retry_in);
    Action::requeue(retry_in)
}

async fn log_outcome<T: std::fmt::Debug, E: std::fmt::Display>(outcome: Result<T, E>) {
    if let Err(error) = outcome {
        tracing::debug!(message = "reconcile ended with an error", %error);
    }
}

/// Parses a duration as Velero writes them (`72h`, `30m`, `1h30m`, `90s`) or with days (`30d`).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration; write e.g. 720h, 30d or 1h30m");
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number.parse().map_err(|_| invalid())?;
        number.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(invalid()),
        };
        total = value
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(invalid)?;
    }
    if !number.is_empty() || text.trim().is_empty() {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

/// Gzips `data`, for the small files stored beside an archive.
pub fn gzip(data: &[u8]) -> Result<Bytes> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .map(Bytes::from)
        .map_err(|source| Error::Io {
            context: "gzipping".to_owned(),
            source,
        })
}

pub fn gzip_json<T: serde::Serialize>(value: &T) -> Result<Bytes> {
    gzip(&serde_json::to_vec(value)?)
}

/// Reverses [`gzip`].
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out).map_err(
        |source| Error::Io {
            context: "gunzipping a file of the backup (damaged, or not gzip)".to_owned(),
            source,
        },
    )?;
    Ok(out)
}

/// Reverses [`gzip_json`].
pub fn gunzip_json<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T> {
    Ok(serde_json::from_slice(&gunzip(data)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_velero_writes_them() {
        assert_eq!(parse_duration("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        for bad in ["", "10", "h", "5x", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gzip_json_round_trips() {
        let value = serde_json::json!({"a": [1, 2, 3]});
        let back: serde_json::Value = gunzip_json(&gzip_json(&value).unwrap()).unwrap();
        assert_eq!(back, value);
        assert!(gunzip_json::<serde_json::Value>(b"plain").is_err());
    }
}
