//! The agent's Prometheus metrics, served at `/metrics` on a plain HTTP port of their own (the
//! gRPC port admits only the controller's certificate).
//!
//! Each task event is one method here that writes both its log line and its metrics.

use std::time::Duration;

use ferry_protocol::agent::v1::TaskResult;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::Status;

/// The content type of [`AgentMetrics::encode`]'s text, for the HTTP response.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a task does to its volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    Backup,
    Restore,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Backup => "backup",
            TaskKind::Restore => "restore",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    kind: String,
    /// Completed, PartiallyFailed (some files failed), Cancelled or Failed.
    result: String,
}

#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    tasks: Family<TaskLabels, Counter>,
    duration: Family<KindLabel, Histogram, fn() -> Histogram>,
    bytes: Family<KindLabel, Counter>,
    running: Gauge,
}

impl Default for AgentMetrics {
    fn default() -> AgentMetrics {
        AgentMetrics::new()
    }
}

/// From a second to about 18 hours: a small volume takes a second, a large one hours.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 17))
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let mut metrics = AgentMetrics {
            registry: Registry::default(),
            tasks: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            bytes: Family::default(),
            running: Gauge::default(),
        };
        let registry = &mut metrics.registry;
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "ferry_agent_tasks",
            "Volume backups and restores ended, by kind and result",
            metrics.tasks.clone(),
        );
        registry.register(
            "ferry_agent_task_duration_seconds",
            "Time a volume backup or restore ran, from getting its slot to its end",
            metrics.duration.clone(),
        );
        registry.register(
            "ferry_agent_bytes",
            "Bytes transferred: new data uploaded by backups, data downloaded by restores",
            metrics.bytes.clone(),
        );
        registry.register(
            "ferry_agent_tasks_running",
            "Volume backups and restores running now",
            metrics.running.clone(),
        );
        // Series that exist from the start read 0 rather than missing, so that rates and alerts
        // work before the first task.
        for kind in [TaskKind::Backup, TaskKind::Restore] {
            let kind = kind.as_str().to_owned();
            for result in ["Completed", "PartiallyFailed", "Cancelled", "Failed"] {
                metrics.tasks.get_or_create_owned(&TaskLabels {
                    kind: kind.clone(),
                    result: result.to_owned(),
                });
            }
            metrics
                .duration
                .get_or_create_owned(&KindLabel { kind: kind.clone() });
            metrics.bytes.get_or_create_owned(&KindLabel { kind });
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

    /// A task got its slot and runs. Its span names the task.
    pub fn task_started(&self) {
        tracing::info!(message = "task started");
        self.running.inc();
    }

    /// A task ended after running for `ran`; `None` when it never got a slot (the agent is
    /// stopping).
    pub fn task_ended(
        &self,
        kind: TaskKind,
        ran: Option<Duration>,
        outcome: &Result<TaskResult, Status>,
    ) {
        let duration_seconds = ran.unwrap_or_default().as_secs_f64();
        let result = match outcome {
            Ok(result) => {
                tracing::info!(
                    message = "task ended",
                    snapshot = %result.snapshot_id,
                    files = result.files,
                    bytes = result.bytes,
                    bytes_transferred = result.bytes_transferred,
                    file_errors = result.errors.len(),
                    duration_seconds
                );
                self.bytes
                    .get_or_create(&KindLabel {
                        kind: kind.as_str().to_owned(),
                    })
                    .inc_by(result.bytes_transferred);
                if result.errors.is_empty() {
                    "Completed"
                } else {
                    "PartiallyFailed"
                }
            }
            Err(error) => {
                tracing::warn!(
                    message = "task failed",
                    error = %error.message(),
                    duration_seconds
                );
                if error.code() == tonic::Code::Cancelled {
                    "Cancelled"
                } else {
                    "Failed"
                }
            }
        };
        self.tasks
            .get_or_create(&TaskLabels {
                kind: kind.as_str().to_owned(),
                result: result.to_owned(),
            })
            .inc();
        if ran.is_some() {
            self.duration
                .get_or_create(&KindLabel {
                    kind: kind.as_str().to_owned(),
                })
                .observe(duration_seconds);
            self.running.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_counted_by_kind_and_result() {
        let metrics = AgentMetrics::new();
        assert!(metrics.encode().contains("# HELP ferry_agent_tasks "));
        metrics.task_started();
        assert!(metrics.encode().contains("ferry_agent_tasks_running 1\n"));
        let done = TaskResult {
            bytes_transferred: 1000,
            ..Default::default()
        };
        metrics.task_ended(TaskKind::Backup, Some(Duration::from_secs(3)), &Ok(done));
        metrics.task_started();
        metrics.task_ended(
            TaskKind::Restore,
            Some(Duration::from_secs(1)),
            &Err(Status::cancelled("cancelled")),
        );
        let text = metrics.encode();
        for line in [
            "ferry_agent_tasks_total{kind=\"backup\",result=\"Completed\"} 1\n",
            "ferry_agent_tasks_total{kind=\"restore\",result=\"Cancelled\"} 1\n",
            "ferry_agent_task_duration_seconds_count{kind=\"backup\"} 1\n",
            "ferry_agent_task_duration_seconds_sum{kind=\"backup\"} 3.0\n",
            "ferry_agent_bytes_total{kind=\"backup\"} 1000\n",
            "ferry_agent_tasks_running 0\n",
        ] {
            assert!(text.contains(line), "{line}:\n{text}");
        }
    }
}
