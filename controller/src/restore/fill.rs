//! Claims whose data a backup moved into the repository, and that no restored pod can be filled
//! through (no archived pod mounts the claim, or its pods use it as a block device, which the
//! `ferry-restore-wait` init container cannot hold): the restore creates a short-lived *fill pod*
//! of Ferry's image in the claim's namespace that holds the new claim for its node's agent, and
//! the agent fills it. The archived pods that use such a claim are created with a scheduling gate
//! ([`FILL_GATE`]), so that none starts on an empty volume; once the fill is done the fill pod is
//! deleted and the gate removed. A failed fill leaves the pods gated and says so: starting a
//! database on an empty volume is for its owner to decide.
//!
//! Everything here follows from the restore's task records (a fill task names its fill pod and
//! its claim), so a controller restarted in between finishes the same way.

use std::collections::BTreeSet;

use ferry_protocol::layout::{ArchiveItem, GroupResource};
use ferry_protocol::volume::{PodVolumeRef, VolumeMethod, VolumePhase, VolumeRecord};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::context::Context;
use crate::error::Result;
use crate::volumes::csi::{RESTORE_UID_LABEL, gone};

/// The scheduling gate that holds a restored pod until its claim is filled.
pub const FILL_GATE: &str = "ferry.dev/volume-fill";

/// Fill pods' names start with this.
const FILL_PREFIX: &str = "ferry-fill-";

/// The volume a fill pod holds its claim as.
const FILL_VOLUME: &str = "data";

/// The records of moved snapshots whose data comes back through a fill pod: those with no
/// record of a pod volume that fills them (`moved_data_through_pods` made one for every claim a
/// restored pod mounts).
pub fn moved_without_pod(records: &[VolumeRecord]) -> impl Iterator<Item = &VolumeRecord> {
    let through_pods: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.method == VolumeMethod::FileSystem && r.pod_volume.is_some())
        .map(|r| r.persistent_volume.as_str())
        .collect();
    records
        .iter()
        .filter(|r| r.phase == VolumePhase::Completed && r.file_system.is_some())
        .filter(|r| r.csi_snapshot.as_ref().is_some_and(|s| s.moved()))
        .filter(move |r| !through_pods.contains(r.persistent_volume.as_str()))
}

/// The claims (namespace in the backup, name) of [`moved_without_pod`].
pub fn filled_claims(records: &[VolumeRecord]) -> BTreeSet<(String, String)> {
    moved_without_pod(records)
        .filter_map(|r| r.claim.as_ref())
        .map(|claim| (claim.namespace.clone(), claim.name.clone()))
        .collect()
}

/// Whether an archived pod uses one of `claims` (of its namespace `namespace`).
pub fn uses_filled_claim(
    pod: &Value,
    namespace: &str,
    claims: &BTreeSet<(String, String)>,
) -> bool {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.pointer("/persistentVolumeClaim/claimName")?.as_str())
        .any(|claim| claims.contains(&(namespace.to_owned(), claim.to_owned())))
}

/// Adds [`FILL_GATE`] to a pod about to be created.
pub fn gate(pod: &mut Value) {
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        let gates = spec
            .entry("schedulingGates")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(gates) = gates {
            gates.push(json!({"name": FILL_GATE}));
        }
    }
}

/// Whether an archived claim is a block volume.
fn is_block(claim: &Value) -> bool {
    claim.pointer("/spec/volumeMode").and_then(Value::as_str) == Some("Block")
}

/// The fill pod of `claim` for the restore `restore_uid`.
fn fill_pod_name(restore_uid: &str, namespace: &str, claim: &str) -> String {
    let digest = blake3::hash(format!("{restore_uid}/{namespace}/{claim}").as_bytes()).to_hex();
    format!("{FILL_PREFIX}{}", &digest[..16])
}

/// Where the fill pod of `claim` (in `target_namespace`, for the restore `restore_uid`) holds
/// it for its agent.
pub fn fill_pod_volume(restore_uid: &str, target_namespace: &str, claim: &str) -> PodVolumeRef {
    PodVolumeRef {
        namespace: target_namespace.to_owned(),
        pod: fill_pod_name(restore_uid, target_namespace, claim),
        volume: FILL_VOLUME.to_owned(),
        node: String::new(),
    }
}

/// Creates the fill pod of a fill task (found, if it exists already). `archived_claim` is the
/// claim as the backup holds it: its volume mode decides whether the pod mounts the volume or
/// lends its device. The API server's refusal (a namespace's Pod Security level that forbids a
/// root container, a quota) fails the task with its reason; the restore goes on.
pub async fn create_fill_pod(
    ctx: &Context,
    task: &mut VolumeRecord,
    archived_claim: &Value,
    restore_uid: &str,
) -> Result<()> {
    let (Some(pod_volume), Some(claim)) = (task.pod_volume.clone(), task.claim.clone()) else {
        return Ok(());
    };
    let mut pod =
        crate::volumes::csi::volume_pod(&claim.name, FILL_VOLUME, is_block(archived_claim), true);
    pod["metadata"] = json!({
        "name": pod_volume.pod,
        "namespace": pod_volume.namespace,
        "labels": {RESTORE_UID_LABEL: restore_uid, "app.kubernetes.io/component": "volume-fill"},
    });
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod_volume.namespace);
    match pods
        .create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(kube::Error::Api(status)) if (400..500).contains(&status.code) => {
            task.phase = VolumePhase::Failed;
            task.message = Some(format!(
                "the fill pod {}/{} that would hold claim {} for its node agent was refused: {}",
                pod_volume.namespace, pod_volume.pod, claim.name, status.message
            ));
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// The archived claim a record names, if the archive holds it.
pub fn archived_claim(archive: &crate::archive::Archive, record: &VolumeRecord) -> Option<Value> {
    let claim = record.claim.as_ref()?;
    let item = ArchiveItem {
        resource: GroupResource::new("persistentvolumeclaims", ""),
        namespace: Some(claim.namespace.clone()),
        name: claim.name.clone(),
    };
    archive.object(&item).ok()
}

/// Once every task has ended: deletes the fill pods, and lets the gated pods whose filled claims
/// were all filled in full be scheduled. A pod that uses a claim whose fill failed stays gated,
/// and that fill's record says so. Returns an error only when the API server could not be asked;
/// the next look tries again, and finds what was done already done.
pub async fn finish(ctx: &Context, records: &mut [VolumeRecord]) -> Result<()> {
    let fills: Vec<usize> = (0..records.len())
        .filter(|&n| {
            records[n].phase.is_terminal()
                && records[n].claim.is_some()
                && records[n]
                    .pod_volume
                    .as_ref()
                    .is_some_and(|p| p.pod.starts_with(FILL_PREFIX))
        })
        .collect();
    let mut failed = BTreeSet::new();
    let mut namespaces = BTreeSet::new();
    for &n in &fills {
        let (Some(pod_volume), Some(claim)) = (&records[n].pod_volume, &records[n].claim) else {
            continue;
        };
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod_volume.namespace);
        pods.delete(&pod_volume.pod, &DeleteParams::default())
            .await
            .map(drop)
            .or_else(gone)?;
        namespaces.insert(pod_volume.namespace.clone());
        if records[n].phase != VolumePhase::Completed {
            failed.insert((pod_volume.namespace.clone(), claim.name.clone()));
        }
    }
    // (namespace, pod) held, and the claims whose failed fill holds it.
    let mut held: Vec<(String, String, Value)> = Vec::new();
    for namespace in namespaces {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
        for pod in pods.list(&ListParams::default()).await?.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let gates = pod
                .spec
                .as_ref()
                .and_then(|s| s.scheduling_gates.clone())
                .unwrap_or_default();
            if !gates.iter().any(|g| g.name == FILL_GATE) {
                continue;
            }
            let object = serde_json::to_value(&pod)?;
            if uses_filled_claim(&object, &namespace, &failed) {
                held.push((namespace.clone(), name, object));
                continue;
            }
            let others: Vec<Value> = gates
                .iter()
                .filter(|g| g.name != FILL_GATE)
                .map(|g| json!({"name": g.name}))
                .collect();
            let patch = json!({"spec": {"schedulingGates": others}});
            pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    for &n in &fills {
        let (Some(pod_volume), Some(claim)) = (&records[n].pod_volume, &records[n].claim) else {
            continue;
        };
        let claim = BTreeSet::from([(pod_volume.namespace.clone(), claim.name.clone())]);
        let names: Vec<&str> = held
            .iter()
            .filter(|(namespace, _, pod)| {
                *namespace == pod_volume.namespace
                    && failed.is_superset(&claim)
                    && uses_filled_claim(pod, namespace, &claim)
            })
            .map(|(_, name, _)| name.as_str())
            .collect();
        if names.is_empty() {
            continue;
        }
        let note = format!(
            "; pods {} stay held by scheduling gate {FILL_GATE} rather than start on an empty volume: restore again, or remove the gate to start them as they are",
            names.join(", ")
        );
        let message = records[n].message.get_or_insert_with(String::new);
        if !message.contains(FILL_GATE) {
            message.push_str(&note);
        }
    }
    Ok(())
}
