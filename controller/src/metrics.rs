//! The controller's Prometheus metrics, served at `/metrics` by `ferry controller`.
//!
//! Each telemetry event (a backup started, a backup finished...) is one method here that writes
//! both its log line and its metrics, so that the two never disagree and a reconciler records an
//! event in one line.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use ferry_protocol::crd::{Backup, BackupStatus, Phase, Restore, RestoreStatus, SCHEDULE_LABEL};
use ferry_protocol::volume::{VolumeMethod, VolumeRecord};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s text, for the HTTP response.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    /// The final phase: Completed, PartiallyFailed, Failed or FailedValidation.
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileFailureLabels {
    /// The kind of resource whose reconciler failed: Backup, Restore, Schedule...
    controller: String,
    /// `Error::metric_label`: kubernetes, object_storage, validation...
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabel {
    schedule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    /// snapshot, filesystem, or none (a volume nothing could back up).
    method: String,
    result: String,
}

pub struct Metrics {
    registry: Registry,
    backups: Family<ResultLabel, Counter>,
    backup_duration: Histogram,
    backup_items: Counter,
    backup_bytes: Counter,
    backups_in_progress: Gauge,
    backup_last_success: Family<ScheduleLabel, Gauge<f64, AtomicU64>>,
    volumes: Family<VolumeLabels, Counter>,
    restores: Family<ResultLabel, Counter>,
    restore_duration: Histogram,
    restore_items: Counter,
    restores_in_progress: Gauge,
    reconcile_failures: Family<ReconcileFailureLabels, Counter>,
    /// Names of the backups and restores counted in progress: a restarted controller picks up
    /// a backup waiting for its volumes without seeing it start, and must count it once.
    running_backups: Mutex<HashSet<String>>,
    running_restores: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// From a second to about 18 hours: a backup of a few objects takes a second, one of large
/// volumes hours.
fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 17)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::default(),
            backups: Family::default(),
            backup_duration: Histogram::new(duration_buckets()),
            backup_items: Counter::default(),
            backup_bytes: Counter::default(),
            backups_in_progress: Gauge::default(),
            backup_last_success: Family::default(),
            volumes: Family::default(),
            restores: Family::default(),
            restore_duration: Histogram::new(duration_buckets()),
            restore_items: Counter::default(),
            restores_in_progress: Gauge::default(),
            reconcile_failures: Family::default(),
            running_backups: Mutex::default(),
            running_restores: Mutex::default(),
        };
        let registry = &mut metrics.registry;
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "ferry_backups",
            "Backups ended, by their final phase",
            metrics.backups.clone(),
        );
        registry.register(
            "ferry_backup_duration_seconds",
            "Time from a backup's start to its end, volumes included",
            metrics.backup_duration.clone(),
        );
        registry.register(
            "ferry_backup_items",
            "Kubernetes objects written into backup archives",
            metrics.backup_items.clone(),
        );
        registry.register(
            "ferry_backup_bytes",
            "Bytes of pod volume data the node agents backed up",
            metrics.backup_bytes.clone(),
        );
        registry.register(
            "ferry_backups_in_progress",
            "Backups started and not yet ended",
            metrics.backups_in_progress.clone(),
        );
        registry.register(
            "ferry_backup_last_success_timestamp_seconds",
            "When the last Completed backup of each schedule ended (schedule=\"\": backups created by hand)",
            metrics.backup_last_success.clone(),
        );
        registry.register(
            "ferry_volumes",
            "Volumes of ended backups, by how they were backed up and how that ended",
            metrics.volumes.clone(),
        );
        registry.register(
            "ferry_restores",
            "Restores ended, by their final phase",
            metrics.restores.clone(),
        );
        registry.register(
            "ferry_restore_duration_seconds",
            "Time from a restore's start to its end, volumes included",
            metrics.restore_duration.clone(),
        );
        registry.register(
            "ferry_restore_items",
            "Kubernetes objects restores handled",
            metrics.restore_items.clone(),
        );
        registry.register(
            "ferry_restores_in_progress",
            "Restores started and not yet ended",
            metrics.restores_in_progress.clone(),
        );
        registry.register(
            "ferry_reconcile_failures",
            "Reconciles that ended in an error (and were requeued), by the resource kind and the kind of error",
            metrics.reconcile_failures.clone(),
        );
        // Series that exist from the start read 0 rather than missing, so that rates and alerts
        // work before the first failure.
        for phase in [
            Phase::Completed,
            Phase::PartiallyFailed,
            Phase::Failed,
            Phase::FailedValidation,
        ] {
            let result = ResultLabel {
                result: format!("{phase:?}"),
            };
            metrics.backups.get_or_create_owned(&result);
            metrics.restores.get_or_create_owned(&result);
        }
        for method in [VolumeMethod::NativeSnapshot, VolumeMethod::FileSystem] {
            for result in ["Completed", "Failed"] {
                metrics.volumes.get_or_create_owned(&VolumeLabels {
                    method: volume_method(method).to_owned(),
                    result: result.to_owned(),
                });
            }
        }
        metrics
    }

    /// Every metric in the OpenMetrics text format, as `/metrics` serves it.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing into a String cannot fail");
        text
    }

    /// A reconcile of `kind` `name` ended in `error`; it is tried again in `retry_in`.
    pub fn reconcile_failed(
        &self,
        kind: &str,
        name: &str,
        error: &crate::Error,
        retry_in: std::time::Duration,
    ) {
        tracing::warn!(
            message = "reconcile failed; retrying",
            %error,
            kind,
            object = name,
            error_kind = error.metric_label(),
            retry_in_seconds = retry_in.as_secs()
        );
        self.reconcile_failures
            .get_or_create(&ReconcileFailureLabels {
                controller: kind.to_owned(),
                error: error.metric_label().to_owned(),
            })
            .inc();
    }

    /// A backup went InProgress.
    pub fn backup_started(&self, backup: &Backup) {
        tracing::info!(message = "backup started", backup = %backup.name_any());
        self.backup_in_progress(backup);
    }

    /// A backup in progress that this process did not see start (it waits for its volumes
    /// across a restart).
    pub fn backup_in_progress(&self, backup: &Backup) {
        let mut running = self.running_backups.lock().expect("running backups");
        running.insert(backup.name_any());
        self.backups_in_progress.set(running.len() as i64);
    }

    /// A backup reached its final phase; `volumes` are its volume records (none when it failed
    /// before taking any).
    pub fn backup_finished(
        &self,
        backup: &Backup,
        status: &BackupStatus,
        volumes: &[VolumeRecord],
    ) {
        let name = backup.name_any();
        let phase = status.phase.unwrap_or(Phase::Failed);
        let duration = elapsed(&status.start_timestamp, &status.completion_timestamp);
        let items = status.progress.as_ref().map_or(0, |p| p.items_done);
        let bytes = status.pod_volumes.as_ref().map_or(0, |p| p.bytes_done);
        let schedule = backup
            .labels()
            .get(SCHEDULE_LABEL)
            .cloned()
            .unwrap_or_default();
        let (result, reason) = (format!("{phase:?}"), status.failure_reason.as_deref());
        let (warnings, errors) = (status.warnings, status.errors);
        let duration_seconds = duration.unwrap_or_default();
        if phase == Phase::Completed {
            tracing::info!(message = "backup finished", backup = %name, %result, duration_seconds, items, bytes, warnings, errors);
        } else {
            tracing::warn!(message = "backup finished", backup = %name, %result, duration_seconds, items, bytes, warnings, errors, reason);
        }
        self.backups.get_or_create(&ResultLabel { result }).inc();
        if let Some(duration) = duration {
            self.backup_duration.observe(duration);
        }
        self.backup_items.inc_by(items);
        self.backup_bytes.inc_by(bytes);
        for volume in volumes {
            self.volumes
                .get_or_create(&VolumeLabels {
                    method: volume_method(volume.method).to_owned(),
                    result: format!("{:?}", volume.phase),
                })
                .inc();
        }
        if phase == Phase::Completed
            && let Some(Time(ended)) = status.completion_timestamp
        {
            self.backup_last_success
                .get_or_create(&ScheduleLabel { schedule })
                // Whole seconds, as the resource's status shows it.
                .set(ended.as_second() as f64);
        }
        let mut running = self.running_backups.lock().expect("running backups");
        running.remove(&name);
        self.backups_in_progress.set(running.len() as i64);
    }

    /// A restore went InProgress.
    pub fn restore_started(&self, restore: &Restore) {
        tracing::info!(message = "restore started", restore = %restore.name_any(), backup = %restore.spec.backup_name);
        self.restore_in_progress(restore);
    }

    /// A restore in progress that this process did not see start.
    pub fn restore_in_progress(&self, restore: &Restore) {
        let mut running = self.running_restores.lock().expect("running restores");
        running.insert(restore.name_any());
        self.restores_in_progress.set(running.len() as i64);
    }

    /// A restore reached its final phase.
    pub fn restore_finished(&self, restore: &Restore, status: &RestoreStatus) {
        let name = restore.name_any();
        let phase = status.phase.unwrap_or(Phase::Failed);
        let duration = elapsed(&status.start_timestamp, &status.completion_timestamp);
        let items = status.progress.as_ref().map_or(0, |p| p.items_done);
        let (result, reason) = (format!("{phase:?}"), status.failure_reason.as_deref());
        let (warnings, errors) = (status.warnings, status.errors);
        let duration_seconds = duration.unwrap_or_default();
        let backup = &restore.spec.backup_name;
        if phase == Phase::Completed {
            tracing::info!(message = "restore finished", restore = %name, %backup, %result, duration_seconds, items, warnings, errors);
        } else {
            tracing::warn!(message = "restore finished", restore = %name, %backup, %result, duration_seconds, items, warnings, errors, reason);
        }
        self.restores.get_or_create(&ResultLabel { result }).inc();
        if let Some(duration) = duration {
            self.restore_duration.observe(duration);
        }
        self.restore_items.inc_by(items);
        let mut running = self.running_restores.lock().expect("running restores");
        running.remove(&name);
        self.restores_in_progress.set(running.len() as i64);
    }
}

fn volume_method(method: VolumeMethod) -> &'static str {
    match method {
        VolumeMethod::NativeSnapshot => "snapshot",
        VolumeMethod::CsiSnapshot => "csi-snapshot",
        VolumeMethod::FileSystem => "filesystem",
        VolumeMethod::None => "none",
    }
}

/// Seconds from `start` to `end`; none for a resource that never started (failed validation).
fn elapsed(start: &Option<Time>, end: &Option<Time>) -> Option<f64> {
    let (Some(Time(start)), Some(Time(end))) = (start, end) else {
        return None;
    };
    Some(end.duration_since(*start).as_secs_f64().max(0.0))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_protocol::crd::{BackupSpec, PodVolumeProgress, Progress};
    use ferry_protocol::volume::VolumePhase;

    use super::*;

    fn backup(name: &str, schedule: Option<&str>) -> Backup {
        let mut backup = Backup::new(name, BackupSpec::default());
        if let Some(schedule) = schedule {
            backup.metadata.labels = Some(BTreeMap::from([(
                SCHEDULE_LABEL.to_owned(),
                schedule.to_owned(),
            )]));
        }
        backup
    }

    fn at(second: i64) -> Option<Time> {
        Some(Time(jiff::Timestamp::from_second(second).unwrap()))
    }

    #[test]
    fn reconcile_failures_are_counted_by_kind_and_error() {
        let metrics = Metrics::new();
        let validation = crate::Error::Validation(vec!["no".to_owned()]);
        let storage = crate::Error::Storage {
            message: "503".to_owned(),
            retryable: true,
        };
        let retry = std::time::Duration::from_secs(5);
        metrics.reconcile_failed("Backup", "b1", &validation, retry);
        metrics.reconcile_failed("Backup", "b2", &validation, retry);
        metrics.reconcile_failed("Restore", "r1", &storage, retry);
        let text = metrics.encode();
        assert!(
            text.contains(
                "ferry_reconcile_failures_total{controller=\"Backup\",error=\"validation\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ferry_reconcile_failures_total{controller=\"Restore\",error=\"object_storage\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("b1") && !text.contains("503"), "{text}");
    }

    #[test]
    fn every_family_is_encoded_with_its_help() {
        let text = Metrics::new().encode();
        for family in [
            "ferry_backups",
            "ferry_backup_duration_seconds",
            "ferry_backup_items",
            "ferry_backup_bytes",
            "ferry_backups_in_progress",
            "ferry_volumes",
            "ferry_restores",
            "ferry_restore_duration_seconds",
            "ferry_restore_items",
            "ferry_restores_in_progress",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}:\n{text}"
            );
        }
        assert!(
            text.contains("ferry_backups_total{result=\"Failed\"} 0\n"),
            "{text}"
        );
        // A schedule's series appears with its first success: schedules come and go.
        assert!(
            !text.contains("ferry_backup_last_success_timestamp_seconds"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_finished_backup_counts_its_result_duration_items_bytes_and_volumes() {
        let metrics = Metrics::new();
        let nightly = backup("nightly-1", Some("nightly"));
        metrics.backup_started(&nightly);
        assert!(metrics.encode().contains("ferry_backups_in_progress 1\n"));
        let volume = |method, phase| VolumeRecord {
            method,
            phase,
            ..serde_json::from_value(serde_json::json!({
                "persistentVolume": "pv", "method": "None", "phase": "Skipped"
            }))
            .unwrap()
        };
        let status = BackupStatus {
            phase: Some(Phase::Completed),
            start_timestamp: at(1_000),
            completion_timestamp: at(1_003),
            progress: Some(Progress {
                items_total: 7,
                items_done: 7,
            }),
            pod_volumes: Some(PodVolumeProgress {
                bytes_done: 4096,
                ..Default::default()
            }),
            ..Default::default()
        };
        metrics.backup_finished(
            &nightly,
            &status,
            &[
                volume(VolumeMethod::FileSystem, VolumePhase::Completed),
                volume(VolumeMethod::NativeSnapshot, VolumePhase::Failed),
            ],
        );
        let text = metrics.encode();
        for line in [
            "ferry_backups_total{result=\"Completed\"} 1\n",
            "ferry_backup_duration_seconds_count 1\n",
            "ferry_backup_duration_seconds_sum 3.0\n",
            "ferry_backup_items_total 7\n",
            "ferry_backup_bytes_total 4096\n",
            "ferry_backups_in_progress 0\n",
            "ferry_backup_last_success_timestamp_seconds{schedule=\"nightly\"} 1003.0\n",
            "ferry_volumes_total{method=\"filesystem\",result=\"Completed\"} 1\n",
            "ferry_volumes_total{method=\"snapshot\",result=\"Failed\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}:\n{text}");
        }
    }

    #[test]
    fn only_completed_backups_are_successes_and_a_backup_is_in_progress_once() {
        let metrics = Metrics::new();
        let by_hand = backup("by-hand", None);
        metrics.backup_started(&by_hand);
        metrics.backup_in_progress(&by_hand);
        assert!(metrics.encode().contains("ferry_backups_in_progress 1\n"));
        let status = BackupStatus {
            phase: Some(Phase::PartiallyFailed),
            start_timestamp: at(10),
            completion_timestamp: at(20),
            ..Default::default()
        };
        metrics.backup_finished(&by_hand, &status, &[]);
        let text = metrics.encode();
        assert!(text.contains("ferry_backups_total{result=\"PartiallyFailed\"} 1\n"));
        assert!(!text.contains("ferry_backup_last_success_timestamp_seconds{"));
        assert!(text.contains("ferry_backups_in_progress 0\n"));

        let status = BackupStatus {
            phase: Some(Phase::Completed),
            completion_timestamp: at(30),
            ..Default::default()
        };
        metrics.backup_finished(&by_hand, &status, &[]);
        let text = metrics.encode();
        assert!(
            text.contains("ferry_backup_last_success_timestamp_seconds{schedule=\"\"} 30.0\n"),
            "{text}"
        );
        // A backup that never started (failed validation) has no duration to observe.
        assert!(
            text.contains("ferry_backup_duration_seconds_count 1\n"),
            "{text}"
        );
    }

    #[test]
    fn a_finished_restore_counts_its_result() {
        let metrics = Metrics::new();
        let restore = Restore::new("r1", Default::default());
        metrics.restore_started(&restore);
        let status = RestoreStatus {
            phase: Some(Phase::Failed),
            start_timestamp: at(0),
            completion_timestamp: at(2),
            ..Default::default()
        };
        metrics.restore_finished(&restore, &status);
        let text = metrics.encode();
        for line in [
            "ferry_restores_total{result=\"Failed\"} 1\n",
            "ferry_restore_duration_seconds_count 1\n",
            "ferry_restores_in_progress 0\n",
        ] {
            assert!(text.contains(line), "{line}:\n{text}");
        }
    }
}
