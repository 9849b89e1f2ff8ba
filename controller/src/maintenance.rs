//! Repository maintenance: the node agents' repositories in a storage location are pruned on a
//! period (`repositoryMaintenanceFrequency`, default hourly) by a Kubernetes Job that runs
//! `ferry repo maintenance --location <name>`, so that a large prune never takes the controller's
//! memory. Deleting a backup forgets its snapshots at once; the next maintenance gives the space
//! back. Prune takes the repository's exclusive lock, which waits for running backups (they hold
//! shared locks) and keeps recent unindexed packs, so a running backup is never harmed.

use std::time::Duration;

use ferry_protocol::crd::{BackupStorageLocation, LocationStatus};
use ferry_protocol::layout::repositories_prefix;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::context::Context;
use crate::error::Result;
use crate::parse_duration;

/// Labels a maintenance Job with the storage location it maintains.
pub const LOCATION_LABEL: &str = "ferry.dev/maintenance-location";
/// Marks a failed maintenance Job whose failure has been reported as an Event.
const FAILURE_REPORTED_ANNOTATION: &str = "ferry.dev/failure-reported";
const DEFAULT_FREQUENCY: Duration = Duration::from_secs(3600);
/// The service account the Job runs as: the controller's own (FERRY_SERVICE_ACCOUNT), since it
/// reads the same Secrets and locations. Its image is the controller's too (crate::image).
const DEFAULT_SERVICE_ACCOUNT: &str = "ferry-controller";

/// Reports maintenance Jobs of `location` that failed, then starts one when it is due, the
/// location holds repositories, and no earlier Job for it still runs; records the start in
/// `status`.
pub async fn start_if_due(
    ctx: &Context,
    location: &BackupStorageLocation,
    status: &mut LocationStatus,
) -> Result<()> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let selector = format!("{LOCATION_LABEL}={}", location.name_any());
    let earlier = jobs
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    report_failures(ctx, location, &jobs, &earlier).await;
    let frequency = location
        .spec
        .repository_maintenance_frequency
        .as_deref()
        .and_then(|text| parse_duration(text).ok())
        .unwrap_or(DEFAULT_FREQUENCY);
    let now = ctx.now();
    let due = status.last_maintenance_time.as_ref().is_none_or(|last| {
        now.as_second() - last.0.as_second()
            >= i64::try_from(frequency.as_secs()).unwrap_or(i64::MAX)
    });
    if !due {
        return Ok(());
    }
    let store = ctx.locations.object_store(location).await?;
    if store
        .list_dirs(&repositories_prefix(store.prefix()))
        .await?
        .is_empty()
    {
        return Ok(());
    }
    if earlier.iter().any(|job| !has_finished(job)) {
        tracing::debug!(message = "repository maintenance still runs", location = %location.name_any());
        return Ok(());
    }
    let job = job(ctx, location, now);
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => {}
        // Created by this very reconcile before a restart lost the status update.
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(error.into()),
    }
    tracing::info!(message = "started repository maintenance", location = %location.name_any(), job = %job.name_any());
    status.last_maintenance_time = Some(Time(now));
    Ok(())
}

/// Raises a Warning Event on the location, once per Job, for each maintenance Job that failed for
/// good: space that does not come back must not go unnoticed.
async fn report_failures(
    ctx: &Context,
    location: &BackupStorageLocation,
    jobs: &Api<Job>,
    earlier: &[Job],
) {
    let unreported = earlier.iter().filter(|job| {
        has_condition(job, "Failed") && !job.annotations().contains_key(FAILURE_REPORTED_ANNOTATION)
    });
    for job in unreported {
        let name = job.name_any();
        let message = format!(
            "repository maintenance Job {name} failed; `kubectl -n {} logs job/{name}` says why. \
             The next maintenance runs one period after it started",
            ctx.namespace
        );
        tracing::warn!(message = "repository maintenance failed", location = %location.name_any(), job = %name);
        ctx.event(location, EventType::Warning, "MaintenanceFailed", message)
            .await;
        let reported = json!({"metadata": {"annotations": {FAILURE_REPORTED_ANNOTATION: "true"}}});
        if let Err(error) = jobs
            .patch(&name, &PatchParams::default(), &Patch::Merge(&reported))
            .await
        {
            tracing::warn!(message = "marking a failed maintenance Job as reported failed", %error, job = %name);
        }
    }
}

/// Whether a Job has succeeded, or failed for good (every retry spent).
fn has_finished(job: &Job) -> bool {
    has_condition(job, "Complete") || has_condition(job, "Failed")
}

fn has_condition(job: &Job, condition_type: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == condition_type && condition.status == "True")
        })
}

/// The Job that maintains every repository of `location`.
pub fn job(ctx: &Context, location: &BackupStorageLocation, now: jiff::Timestamp) -> Job {
    let name = location.name_any();
    // Job names are DNS labels (63 characters), and the Job controller appends 6 to its pods'.
    let short: String = name.chars().take(30).collect();
    let job_name = format!(
        "ferry-maintenance-{}-{}",
        short.trim_end_matches('-'),
        now.as_second()
    );
    let image = crate::image::ferry_image();
    let service_account = std::env::var("FERRY_SERVICE_ACCOUNT")
        .unwrap_or_else(|_| DEFAULT_SERVICE_ACCOUNT.to_owned());
    let mut job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name,
            "namespace": ctx.namespace,
            "labels": {"app.kubernetes.io/name": "ferry", "app.kubernetes.io/component": "maintenance", LOCATION_LABEL: name},
        },
        "spec": {
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "ferry", "app.kubernetes.io/component": "maintenance", LOCATION_LABEL: name}},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": service_account,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "maintenance",
                        "image": image,
                        "args": ["repo", "maintenance", "--location", name],
                        "env": [
                            {"name": "FERRY_NAMESPACE", "value": ctx.namespace},
                            {"name": "FERRY_LOG_FORMAT", "value": "json"},
                        ],
                        // Prune holds the index of one repository at a time.
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "128Mi"},
                            "limits": {"memory": "2Gi"},
                        },
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    });
    if let Some(policy) = crate::image::pull_policy() {
        job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!(policy);
    }
    serde_json::from_value(job).expect("a valid Job")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_with_conditions(conditions: serde_json::Value) -> Job {
        serde_json::from_value(
            json!({"metadata": {"name": "j"}, "status": {"conditions": conditions}}),
        )
        .unwrap()
    }

    #[test]
    fn a_job_retrying_after_a_failed_pod_still_runs() {
        assert!(!has_finished(&job_with_conditions(json!([]))));
        assert!(!has_finished(&job_with_conditions(
            json!([{"type": "Complete", "status": "False"}])
        )));
        assert!(has_finished(&job_with_conditions(
            json!([{"type": "Complete", "status": "True"}])
        )));
        assert!(has_finished(&job_with_conditions(
            json!([{"type": "Failed", "status": "True"}])
        )));
    }
}
