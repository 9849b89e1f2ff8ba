//! Pod volumes the node agents move by file: which a backup chooses, the records of their tasks,
//! and starting and following those tasks for a backup (into the repository) or a restore (out of
//! it into a restored pod's volume).

use std::collections::BTreeMap;

use ferry_protocol::crd::{Backup, BackupStorageLocation, PodVolumeProgress};
use ferry_protocol::volume::{
    ClaimRef, FileSystemBackup, PodVolumeRef, VolumeMethod, VolumePhase, VolumeRecord,
    VolumeRecords,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};
use serde_json::Value;

use crate::agents::{AgentRequest, TaskOwner, TaskState};
use crate::context::Context;
use crate::error::Result;
use crate::volumes::policy::Choice;
use crate::volumes::snapshots::claim_of;

/// Names pod volumes to back up by file: `backup.ferry.dev/volumes: data,logs` on a pod (as
/// Velero's `backup.velero.io/backup-volumes`).
pub const FS_BACKUP_VOLUMES_ANNOTATION: &str = "backup.ferry.dev/volumes";
/// With `defaultVolumesToFsBackup`, pod volumes left out: `backup.ferry.dev/volumes-excludes`.
pub const FS_BACKUP_EXCLUDES_ANNOTATION: &str = "backup.ferry.dev/volumes-excludes";
/// Attempts of one pod volume's backup before it is failed; a restarted controller or agent costs one.
const MAX_ATTEMPTS: u32 = 3;

/// A pod volume chosen for file-level backup.
#[derive(Debug, Clone, PartialEq)]
pub struct PodVolumeChoice {
    pub pod_volume: PodVolumeRef,
    /// The PersistentVolume behind it, when it is a claim.
    pub persistent_volume: Option<String>,
    pub claim: Option<ClaimRef>,
}

/// The pod volumes the node agents back up: those a pod's annotation names; with
/// `defaultVolumesToFsBackup`, every data volume not excluded; and claims whose volume `choices`
/// (the volume policy) has backed up by file. Only pods running on a node can be read.
pub fn choose_pod_volumes(
    backup: &Backup,
    pods: &[Value],
    persistent_volumes: &[Value],
    choices: &BTreeMap<String, Choice>,
) -> Vec<PodVolumeChoice> {
    let by_claim: BTreeMap<(String, String), &Value> = persistent_volumes
        .iter()
        .filter_map(|pv| {
            let claim = claim_of(pv)?;
            Some(((claim.namespace, claim.name), pv))
        })
        .collect();
    let listed = |pod: &Value, annotation: &str| -> Vec<String> {
        pod.pointer(&format!(
            "/metadata/annotations/{}",
            annotation.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .map(|list| {
            list.split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect()
        })
        .unwrap_or_default()
    };
    let default_fs = backup.spec.default_volumes_to_fs_backup == Some(true);
    let mut chosen = Vec::new();
    for pod in pods {
        let text = |pointer: &str| {
            pod.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (namespace, name, node) = (
            text("/metadata/namespace"),
            text("/metadata/name"),
            text("/spec/nodeName"),
        );
        if node.is_empty() || text("/status/phase") != "Running" {
            continue;
        }
        let named = listed(pod, FS_BACKUP_VOLUMES_ANNOTATION);
        let excluded = listed(pod, FS_BACKUP_EXCLUDES_ANNOTATION);
        let volumes = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for volume in volumes {
            let volume_name = volume
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let claim_name = volume
                .pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str);
            let is_data = claim_name.is_some()
                || ["emptyDir", "csi", "nfs"]
                    .iter()
                    .any(|k| volume.get(*k).is_some());
            if !is_data {
                continue;
            }
            let pv = claim_name.and_then(|claim| {
                by_claim
                    .get(&(namespace.clone(), claim.to_owned()))
                    .copied()
            });
            let by_file = pv
                .and_then(|pv| pv.pointer("/metadata/name"))
                .and_then(Value::as_str)
                .is_some_and(|pv| choices.get(pv) == Some(&Choice::FileSystem));
            let wanted = named.contains(&volume_name)
                || (!excluded.contains(&volume_name) && (default_fs || by_file));
            if !wanted {
                continue;
            }
            chosen.push(PodVolumeChoice {
                pod_volume: PodVolumeRef {
                    namespace: namespace.clone(),
                    pod: name.clone(),
                    volume: volume_name,
                    node: node.clone(),
                },
                persistent_volume: pv
                    .and_then(|pv| pv.pointer("/metadata/name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                claim: claim_name.map(|claim| ClaimRef {
                    namespace: namespace.clone(),
                    name: claim.to_owned(),
                }),
            });
        }
    }
    // A claim mounted by several pods is read once.
    let mut seen = std::collections::BTreeSet::new();
    chosen.retain(|c| {
        c.persistent_volume
            .as_ref()
            .is_none_or(|pv| seen.insert(pv.clone()))
    });
    chosen
}

/// The records of the file-level backups to run, one task each.
pub fn pod_volume_records(
    backup: &Backup,
    chosen: Vec<PodVolumeChoice>,
    location: &BackupStorageLocation,
) -> Vec<VolumeRecord> {
    let uid = backup.uid().unwrap_or_default();
    chosen
        .into_iter()
        .enumerate()
        .map(|(n, choice)| VolumeRecord {
            persistent_volume: choice.persistent_volume.unwrap_or_default(),
            claim: choice.claim,
            method: VolumeMethod::FileSystem,
            phase: VolumePhase::InProgress,
            message: None,
            snapshot: None,
            csi_snapshot: None,
            file_system: Some(FileSystemBackup {
                repository: crate::agents::repository_url(location, &choice.pod_volume.namespace),
                task_id: format!("{uid}-{n}"),
                ..Default::default()
            }),
            pod_volume: Some(choice.pod_volume),
        })
        .collect()
}

/// How long a pod volume task may wait for its volume to be mounted, or its agent to be reachable,
/// before the volume fails.
const NOT_READY_LIMIT: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// How the node agents' tasks of `records` are doing, for the resource's status; `None` when no
/// volume goes through the agents.
pub fn pod_volume_progress(ctx: &Context, records: &VolumeRecords) -> Option<PodVolumeProgress> {
    let mut progress = PodVolumeProgress::default();
    for record in &records.volumes {
        let Some(fs) = &record.file_system else {
            continue;
        };
        progress.total += 1;
        match record.phase {
            VolumePhase::Completed => {
                progress.completed += 1;
                progress.bytes_done += fs.bytes;
                progress.bytes_total += fs.bytes;
            }
            VolumePhase::Failed => progress.failed += 1,
            _ => {
                if let Some(TaskState::Running(Some(running))) = ctx.agent_tasks.state(&fs.task_id)
                {
                    progress.bytes_done += running.bytes_done;
                    progress.bytes_total += running.bytes_total;
                }
            }
        }
    }
    (progress.total > 0).then_some(progress)
}

/// Which way a pod volume's data goes.
#[derive(Debug, Clone)]
pub enum Transfer {
    /// Into the repository, tagged, for Backup `backup`.
    Backup { backup: String, tags: Vec<String> },
    /// Out of it into a restored pod's volume, then the marker its init container waits for, for
    /// Restore `restore`.
    Restore { restore: String, marker: String },
}

/// Starts the pod volume tasks that are not running in this process, and records those that
/// ended. A restore's task waits until its pod is bound to a node. Returns whether every volume
/// has ended.
pub(super) async fn follow_pod_volumes(
    ctx: &Context,
    location: &BackupStorageLocation,
    transfer: &Transfer,
    records: &mut VolumeRecords,
) -> Result<bool> {
    for record in records.volumes.iter_mut() {
        let (Some(pod), Some(fs)) = (record.pod_volume.as_mut(), record.file_system.as_mut())
        else {
            continue;
        };
        if record.phase != VolumePhase::InProgress {
            continue;
        }
        let state = ctx.agent_tasks.state(&fs.task_id);
        match state {
            Some(TaskState::Running(progress)) => {
                if progress.is_some() {
                    fs.waiting_since = None;
                }
                continue;
            }
            Some(TaskState::Done(result)) => {
                ctx.agent_tasks.forget(&fs.task_id);
                fs.waiting_since = None;
                fs.snapshot_id = Some(result.snapshot_id);
                fs.files = result.files;
                fs.bytes = result.bytes;
                fs.bytes_uploaded = result.bytes_transferred;
                record.phase = VolumePhase::Completed;
                record.message = (!result.errors.is_empty()).then(|| {
                    format!(
                        "{} files failed: {}",
                        result.errors.len(),
                        result.errors.join("; ")
                    )
                });
                continue;
            }
            Some(TaskState::NotReady(message)) => {
                // Waiting for the kubelet, or for an agent to come back, is not a failed attempt;
                // but a wait has its limit.
                ctx.agent_tasks.forget(&fs.task_id);
                fs.attempts = fs.attempts.saturating_sub(1);
                let now = ctx.now().as_second();
                let since = *fs.waiting_since.get_or_insert(now);
                if now - since > NOT_READY_LIMIT.as_secs() as i64 {
                    record.phase = VolumePhase::Failed;
                    record.message = Some(format!(
                        "waited {} minutes for it to be ready: {message}",
                        NOT_READY_LIMIT.as_secs() / 60
                    ));
                    continue;
                }
                tracing::debug!(message = "a pod volume is not ready yet", task = %fs.task_id, %message);
            }
            Some(TaskState::Failed { message, retryable }) => {
                ctx.agent_tasks.forget(&fs.task_id);
                if !retryable || fs.attempts >= MAX_ATTEMPTS {
                    record.phase = VolumePhase::Failed;
                    record.message = Some(format!(
                        "file-level transfer failed after {} attempts: {message}",
                        fs.attempts
                    ));
                    continue;
                }
                tracing::warn!(message = "a pod volume task failed; trying again", task = %fs.task_id, %message);
            }
            // Never started, or started by a controller that has since restarted.
            None if fs.attempts >= MAX_ATTEMPTS => {
                record.phase = VolumePhase::Failed;
                record.message = Some(format!(
                    "file-level transfer did not finish in {} attempts (the controller restarted during each)",
                    fs.attempts
                ));
                continue;
            }
            None => {}
        }
        if pod.node.is_empty() {
            // A restored pod: wait for the scheduler to bind it.
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace);
            match pods.get_opt(&pod.pod).await? {
                Some(found) => match found.spec.and_then(|s| s.node_name) {
                    Some(node) => pod.node = node,
                    None => continue,
                },
                None => {
                    record.phase = VolumePhase::Failed;
                    record.message = Some(format!("pod {}/{} is gone", pod.namespace, pod.pod));
                    continue;
                }
            }
        }
        fs.attempts += 1;
        // The repository of the volume's namespace: a restore reads the one it was backed up
        // into, and a snapshot's data moved by a pod in Ferry's namespace goes into its claim's.
        let namespace = fs
            .repository
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let repository = crate::agents::repository(&ctx.locations, location, &namespace).await?;
        let volume = Some(ferry_protocol::agent::v1::PodVolume {
            namespace: pod.namespace.clone(),
            pod: pod.pod.clone(),
            volume: pod.volume.clone(),
        });
        let request = match transfer {
            Transfer::Backup { tags, .. } => {
                AgentRequest::Backup(ferry_protocol::agent::v1::BackupVolumeRequest {
                    task_id: fs.task_id.clone(),
                    volume,
                    repository: Some(repository),
                    tags: tags.clone(),
                })
            }
            Transfer::Restore { marker, .. } => {
                AgentRequest::Restore(ferry_protocol::agent::v1::RestoreVolumeRequest {
                    task_id: fs.task_id.clone(),
                    volume,
                    repository: Some(repository),
                    snapshot_id: fs.snapshot_id.clone().unwrap_or_default(),
                    in_place: fs.in_place,
                    marker: marker.clone(),
                })
            }
        };
        let owner = match transfer {
            Transfer::Backup { backup, .. } => TaskOwner::Backup(backup.clone()),
            Transfer::Restore { restore, .. } => TaskOwner::Restore(restore.clone()),
        };
        crate::agents::start_task(ctx, &fs.task_id, &pod.node, request, owner).await;
    }
    Ok(records.volumes.iter().all(|r| r.phase.is_terminal()))
}
