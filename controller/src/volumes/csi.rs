//! CSI snapshots: a VolumeSnapshot of a claim, taken by its CSI driver through the cluster's
//! snapshot controller, kept with the backup, restored by a claim whose `dataSource` it is, and
//! deleted with the backup.
//!
//! A snapshot's life, and why each step is where it is:
//! - **take**: the backup creates a VolumeSnapshot beside the claim, labelled with its uid, named
//!   from the backup's uid and the claim (so a restarted controller finds the one it made).
//! - **ready**: once it is ready to use, its VolumeSnapshotContent is set to `Retain` and labelled
//!   with the backup's uid, and only then is the VolumeSnapshot deleted: the storage system's
//!   snapshot now outlives the VolumeSnapshot, the claim and its namespace (`kubectl delete
//!   namespace` must not take the backup with it). The record keeps the content's name and the
//!   `snapshotHandle`.
//! - **not ready in time** (`csiSnapshotTimeout`, default 10 min): the volume fails with the
//!   snapshot controller's reason, and the VolumeSnapshot is deleted.
//! - **restore**: a VolumeSnapshotContent pointing at the handle (`Retain`: deleting the restore's
//!   objects never deletes the backup's snapshot) and a VolumeSnapshot bound to it in the claim's
//!   target namespace, both labelled with the restore's uid; the claim gets it as its
//!   `dataSource`, and the driver makes the new volume. They stay until the backup is deleted.
//! - **delete**: with the backup, each content that carries the backup's uid is set to `Delete`
//!   and deleted, and the driver deletes the snapshot. A content without the label is left alone,
//!   as is a snapshot whose content is not in this cluster (its handle means nothing here). The
//!   objects restores made from those snapshots go too.

use std::time::Duration;

use ferry_protocol::crd::{Backup, BackupStorageLocation};
use ferry_protocol::volume::{
    CsiSnapshot, DataMover, FileSystemBackup, PodVolumeRef, VolumePhase, VolumeRecord,
    VolumeRecords,
};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

use crate::context::Context;
use crate::error::Result;

/// The label that ties a VolumeSnapshot or VolumeSnapshotContent to the backup (its uid) that
/// took it.
pub const BACKUP_UID_LABEL: &str = "ferry.dev/backup-uid";
/// The label of the objects a restore made to provision claims from snapshots.
pub const RESTORE_UID_LABEL: &str = "ferry.dev/restore-uid";
/// How long a snapshot may take to be ready to use when the backup does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

const GROUP: &str = "snapshot.storage.k8s.io";

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.to_owned(),
        version: "v1".to_owned(),
        api_version: format!("{GROUP}/v1"),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

fn snapshots(ctx: &Context, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        ctx.client.clone(),
        namespace,
        &resource("VolumeSnapshot", "volumesnapshots"),
    )
}

fn contents(ctx: &Context) -> Api<DynamicObject> {
    Api::all_with(
        ctx.client.clone(),
        &resource("VolumeSnapshotContent", "volumesnapshotcontents"),
    )
}

/// Whether `error` says the cluster does not serve the snapshot API (no VolumeSnapshot CRDs).
fn no_api(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// The cluster's VolumeSnapshotClasses as JSON; none when it has no snapshot API.
pub async fn cluster_classes(ctx: &Context) -> Result<Vec<Value>> {
    let api: Api<DynamicObject> = Api::all_with(
        ctx.client.clone(),
        &resource("VolumeSnapshotClass", "volumesnapshotclasses"),
    );
    match api.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .map(|class| serde_json::to_value(class).map_err(Into::into))
            .collect(),
        Err(error) if no_api(&error) => Ok(Vec::new()),
        Err(error) => Err(error.into()),
    }
}

/// The name of the VolumeSnapshot a backup takes of a claim: the same on every attempt, unique to
/// the backup and the claim, within the 253 characters of a name.
fn snapshot_name(backup_uid: &str, claim: &str) -> String {
    let digest = blake3::hash(format!("{backup_uid}/{claim}").as_bytes()).to_hex();
    let claim: String = claim.chars().take(200).collect();
    format!(
        "ferry-{}-{}",
        claim.trim_end_matches(['-', '.']),
        &digest[..12]
    )
}

/// What a CSI snapshot of one volume is to be.
pub(super) struct SnapshotRequest {
    pub driver: String,
    pub class: String,
    /// How long it may take to be ready to use.
    pub timeout: Duration,
    /// Whether its data moves into the repository once it is.
    pub move_data: bool,
}

/// Starts a CSI snapshot of `record`'s claim; the record says how it went.
pub(super) async fn take(
    ctx: &Context,
    backup: &Backup,
    mut record: VolumeRecord,
    request: &SnapshotRequest,
) -> VolumeRecord {
    let (backup_uid, backup_name) = (backup.uid().unwrap_or_default(), backup.name_any());
    let (backup_uid, backup_name) = (backup_uid.as_str(), backup_name.as_str());
    let Some(claim) = record.claim.clone() else {
        record.phase = VolumePhase::Failed;
        record.message =
            Some("a CSI snapshot is taken of a claim, and this volume is bound to none".to_owned());
        return record;
    };
    let name = snapshot_name(backup_uid, &claim.name);
    let body: DynamicObject = match serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": name,
            "namespace": claim.namespace,
            "labels": {BACKUP_UID_LABEL: backup_uid},
            "annotations": {"ferry.dev/backup-name": backup_name},
        },
        "spec": {
            "volumeSnapshotClassName": request.class,
            "source": {"persistentVolumeClaimName": claim.name},
        },
    })) {
        Ok(body) => body,
        Err(error) => {
            record.phase = VolumePhase::Failed;
            record.message = Some(format!("building its VolumeSnapshot failed: {error}"));
            return record;
        }
    };
    let ready_by =
        ctx.now().as_second() + i64::try_from(request.timeout.as_secs()).unwrap_or(i64::MAX);
    record.csi_snapshot = Some(CsiSnapshot {
        driver: request.driver.clone(),
        volume_snapshot_class: request.class.clone(),
        volume_snapshot: name,
        ready_by,
        data_mover: request.move_data.then(DataMover::default),
        ..Default::default()
    });
    match snapshots(ctx, &claim.namespace)
        .create(&PostParams::default(), &body)
        .await
    {
        // Made by this backup before a restart: its name holds the backup's uid.
        Ok(_) => record.phase = VolumePhase::InProgress,
        Err(kube::Error::Api(status)) if status.code == 409 => {
            record.phase = VolumePhase::InProgress
        }
        Err(error) if no_api(&error) => {
            record.phase = VolumePhase::Failed;
            record.message = Some(
                "the cluster has no VolumeSnapshot API (snapshot.storage.k8s.io/v1); install the external-snapshotter's CRDs and snapshot controller".to_owned(),
            );
        }
        Err(error) => {
            record.phase = VolumePhase::Failed;
            record.message = Some(format!("creating its VolumeSnapshot failed: {error}"));
        }
    }
    record
}

/// Asks the cluster how the CSI snapshots in progress are doing: keeps those that are ready (see
/// the module's text), fails those past their time. Returns whether none is still in progress.
pub(super) async fn follow(
    ctx: &Context,
    location: &BackupStorageLocation,
    records: &mut VolumeRecords,
) -> Result<bool> {
    let now = ctx.now().as_second();
    for (index, record) in records.volumes.iter_mut().enumerate() {
        let taking = record.phase == VolumePhase::InProgress
            && record
                .csi_snapshot
                .as_ref()
                .is_some_and(|s| s.snapshot_handle.is_none());
        if !taking {
            continue;
        }
        let Some(claim) = record.claim.clone() else {
            continue;
        };
        let snapshot = record.csi_snapshot.clone().unwrap_or_default();
        let api = snapshots(ctx, &claim.namespace);
        let Some(object) = api.get_opt(&snapshot.volume_snapshot).await? else {
            // Deleted after its content was kept (a restart between the two), or by someone else.
            match kept_content(ctx, &claim.namespace, &snapshot.volume_snapshot).await? {
                Some(content) => kept(ctx, location, record, &content, index).await?,
                None => {
                    record.phase = VolumePhase::Failed;
                    record.message = Some(format!(
                        "VolumeSnapshot {}/{} was deleted before it was ready to use",
                        claim.namespace, snapshot.volume_snapshot
                    ));
                }
            }
            continue;
        };
        let status = object.data.get("status").cloned().unwrap_or(Value::Null);
        let ready = status.get("readyToUse").and_then(Value::as_bool) == Some(true);
        let bound = status
            .get("boundVolumeSnapshotContentName")
            .and_then(Value::as_str);
        if let (true, Some(content_name)) = (ready, bound) {
            if contents(ctx).get_opt(content_name).await?.is_none() {
                continue; // the snapshot controller's caches catch up
            }
            let uid = label_of(&object, BACKUP_UID_LABEL).unwrap_or_default();
            let content = keep(ctx, content_name, &uid).await?;
            api.delete(&snapshot.volume_snapshot, &DeleteParams::default())
                .await
                .map(drop)
                .or_else(gone)?;
            kept(ctx, location, record, &content, index).await?;
            continue;
        }
        if now > snapshot.ready_by {
            let reason = status
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(|message| format!("the snapshot controller says: {message}"))
                .unwrap_or_else(|| "it never became ready to use".to_owned());
            record.phase = VolumePhase::Failed;
            record.message = Some(format!(
                "VolumeSnapshot {}/{} was not ready within csiSnapshotTimeout; {reason}",
                claim.namespace, snapshot.volume_snapshot
            ));
            // Whatever it becomes, it is no part of the backup.
            api.delete(&snapshot.volume_snapshot, &DeleteParams::default())
                .await
                .map(drop)
                .or_else(gone)?;
        }
    }
    Ok(records.volumes.iter().all(|r| r.phase.is_terminal()))
}

/// A 404 where something was to be deleted: it is gone already.
pub(crate) fn gone(error: kube::Error) -> std::result::Result<(), kube::Error> {
    match error {
        kube::Error::Api(status) if status.code == 404 => Ok(()),
        error => Err(error),
    }
}

/// The volume the data mover's pod mounts its claim as.
const MOVER_VOLUME: &str = "data";

/// The name of the temporary objects that move the data of the backup's `persistent_volume`.
fn mover_name(backup_uid: &str, persistent_volume: &str) -> String {
    let digest = blake3::hash(format!("{backup_uid}/{persistent_volume}").as_bytes()).to_hex();
    format!("ferry-move-{}", &digest[..16])
}

/// Starts moving a ready snapshot's data into the repository: in Ferry's namespace, a content
/// pointing at the snapshot (`Retain`: deleting it leaves the snapshot alone), a VolumeSnapshot
/// bound to it, a claim made from that, and a pod that mounts the claim read-only; the record
/// becomes the pod volume its node's agent backs up. Made again after a restart, each is found.
async fn start_move(
    ctx: &Context,
    location: &BackupStorageLocation,
    record: &mut VolumeRecord,
    backup_uid: &str,
    index: usize,
) -> Result<()> {
    let (Some(snapshot), Some(claim)) = (record.csi_snapshot.clone(), record.claim.clone()) else {
        return Ok(());
    };
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(pv) = pvs.get_opt(&record.persistent_volume).await? else {
        record.phase = VolumePhase::Failed;
        record.message = Some(format!(
            "PersistentVolume {} went before its snapshot's data could be moved; the snapshot is kept",
            record.persistent_volume
        ));
        return Ok(());
    };
    let spec = pv.spec.unwrap_or_default();
    let block = spec.volume_mode.as_deref() == Some("Block");
    let name = mover_name(backup_uid, &record.persistent_volume);
    let namespace = ctx.namespace.clone();
    let labels = json!({BACKUP_UID_LABEL: backup_uid, "app.kubernetes.io/component": "data-mover"});
    let size = snapshot
        .restore_size
        .map(|bytes| bytes.to_string())
        .or_else(|| spec.capacity.as_ref()?.get("storage").map(|q| q.0.clone()))
        .unwrap_or_else(|| "1Gi".to_owned());
    let objects: [(Api<DynamicObject>, Value); 2] = [
        (
            contents(ctx),
            json!({
                "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshotContent",
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "deletionPolicy": "Retain",
                    "driver": snapshot.driver,
                    "source": {"snapshotHandle": snapshot.snapshot_handle},
                    "volumeSnapshotRef": {"namespace": namespace, "name": name},
                },
            }),
        ),
        (
            snapshots(ctx, &namespace),
            json!({
                "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshot",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {"source": {"volumeSnapshotContentName": name}},
            }),
        ),
    ];
    for (api, body) in objects {
        create_once(&api, body).await?;
    }
    let claim_body: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": spec.storage_class_name,
            "volumeMode": if block { "Block" } else { "Filesystem" },
            "resources": {"requests": {"storage": size}},
            "dataSource": {"apiGroup": GROUP, "kind": "VolumeSnapshot", "name": name},
        },
    }))?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    ignore_exists(claims.create(&PostParams::default(), &claim_body).await)?;
    let mut pod = volume_pod(&name, MOVER_VOLUME, block, false);
    pod["metadata"] = json!({"name": name, "namespace": namespace, "labels": labels});
    pod["spec"]["volumes"][0]["persistentVolumeClaim"] =
        json!({"claimName": name, "readOnly": !block});
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    ignore_exists(
        pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
            .await,
    )?;
    record.phase = VolumePhase::InProgress;
    record.pod_volume = Some(PodVolumeRef {
        namespace: namespace.clone(),
        pod: name.clone(),
        volume: MOVER_VOLUME.to_owned(),
        node: String::new(),
    });
    record.file_system = Some(FileSystemBackup {
        repository: crate::agents::repository_url(location, &claim.namespace),
        task_id: format!("{backup_uid}-move-{index}"),
        ..Default::default()
    });
    if let Some(mover) = record
        .csi_snapshot
        .as_mut()
        .and_then(|s| s.data_mover.as_mut())
    {
        mover.name = Some(name);
    }
    Ok(())
}

/// A short-lived pod of Ferry's image (named `name`, metadata to be completed by the caller)
/// that holds claim `name` as its volume `volume` for its node's agent: a filesystem volume
/// mounted (read-only unless `writable`), or a block volume as a device, lent to the agent open
/// (`ferry lend-device`; the agent cannot open it itself). Lending needs root, to open the device
/// node, and nothing else: every capability is dropped.
pub fn volume_pod(name: &str, volume: &str, block: bool, writable: bool) -> Value {
    use ferry_protocol::agent::{DEVICE_EXCHANGE_DIR, DEVICE_EXCHANGE_VOLUME, device_socket};
    let device = format!("/dev/ferry-{volume}");
    let (command, user, data): (Vec<String>, i64, Value) = if block {
        let mut command: Vec<String> = [
            "ferry",
            "lend-device",
            "--device",
            &device,
            "--socket",
            &format!("{DEVICE_EXCHANGE_DIR}/{}", device_socket(volume)),
        ]
        .map(str::to_owned)
        .to_vec();
        if writable {
            command.push("--writable".to_owned());
        }
        (
            command,
            0,
            json!({"volumeDevices": [{"name": volume, "devicePath": device}]}),
        )
    } else {
        (
            vec!["sleep".to_owned(), "infinity".to_owned()],
            65534,
            json!({"volumeMounts": [{"name": volume, "mountPath": "/data", "readOnly": !writable}]}),
        )
    };
    let mut container = json!({
        "name": "ferry",
        "image": crate::image::ferry_image(),
        "command": command,
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                      "limits": {"cpu": "100m", "memory": "64Mi"}},
    });
    if let (Some(container), Some(data)) = (container.as_object_mut(), data.as_object()) {
        container.extend(data.clone());
    }
    if let Some(policy) = crate::image::pull_policy() {
        container["imagePullPolicy"] = Value::String(policy);
    }
    let mut volumes = vec![json!({"name": volume, "persistentVolumeClaim": {"claimName": name}})];
    if block {
        container["volumeMounts"] =
            json!([{"name": DEVICE_EXCHANGE_VOLUME, "mountPath": DEVICE_EXCHANGE_DIR}]);
        volumes.push(json!({"name": DEVICE_EXCHANGE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}));
    }
    json!({
        "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsNonRoot": user != 0, "runAsUser": user, "runAsGroup": user},
            "containers": [container],
            "volumes": volumes,
        },
    })
}

/// Creates `body` unless it exists.
async fn create_once(api: &Api<DynamicObject>, body: Value) -> Result<()> {
    let body: DynamicObject = serde_json::from_value(body)?;
    ignore_exists(api.create(&PostParams::default(), &body).await)
}

fn ignore_exists<T>(result: std::result::Result<T, kube::Error>) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Once a move has ended, deletes its temporary objects, and when the data is in the repository,
/// the snapshot. A failure to delete is retried at the next look. Returns whether no move still
/// has something to delete.
pub(super) async fn finish_moves(ctx: &Context, records: &mut VolumeRecords) -> bool {
    let mut all_clean = true;
    for record in records.volumes.iter_mut().filter(|r| r.phase.is_terminal()) {
        let completed = record.phase == VolumePhase::Completed;
        let Some(snapshot) = record.csi_snapshot.as_mut() else {
            continue;
        };
        let content = snapshot.content.clone();
        let Some(mover) = snapshot.data_mover.as_mut() else {
            continue;
        };
        let Some(name) = mover.name.clone() else {
            continue;
        };
        if mover.cleaned_up && (mover.snapshot_deleted || !completed) {
            continue;
        }
        let mut cleaned = mover.cleaned_up;
        if !cleaned {
            match delete_mover(ctx, &name).await {
                Ok(()) => cleaned = true,
                Err(error) => {
                    tracing::warn!(message = "deleting a data mover's temporary objects failed; trying again", mover = %name, %error);
                }
            }
        }
        mover.cleaned_up = cleaned;
        if cleaned && completed && !mover.snapshot_deleted {
            match content {
                Some(content) => match delete_content(ctx, &content).await {
                    Ok(()) => mover.snapshot_deleted = true,
                    Err(error) => {
                        tracing::warn!(message = "deleting a moved snapshot failed; trying again", %content, %error);
                    }
                },
                None => mover.snapshot_deleted = true,
            }
        }
        all_clean &= mover.cleaned_up && (mover.snapshot_deleted || !completed);
    }
    all_clean
}

/// Deletes a data mover's pod, claim (and the volume made for it), VolumeSnapshot and content
/// (`Retain`: the snapshot stays).
async fn delete_mover(ctx: &Context, name: &str) -> Result<()> {
    let namespace = &ctx.namespace;
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    pods.delete(name, &now).await.map(drop).or_else(gone)?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    if let Some(claim) = claims.get_opt(name).await? {
        // Its volume goes with it, whatever the class's reclaim policy says.
        if let Some(volume) = claim.spec.and_then(|s| s.volume_name) {
            let patch = json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}});
            Api::<PersistentVolume>::all(ctx.client.clone())
                .patch(&volume, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
                .or_else(gone)?;
        }
        claims
            .delete(name, &DeleteParams::default())
            .await
            .map(drop)
            .or_else(gone)?;
    }
    snapshots(ctx, namespace)
        .delete(name, &DeleteParams::default())
        .await
        .map(drop)
        .or_else(gone)?;
    contents(ctx)
        .delete(name, &DeleteParams::default())
        .await
        .map(drop)
        .or_else(gone)?;
    Ok(())
}

/// Makes a ready snapshot's content the backup's: `Retain`, labelled with its uid.
async fn keep(ctx: &Context, content: &str, backup_uid: &str) -> Result<DynamicObject> {
    let patch = json!({
        "metadata": {"labels": {BACKUP_UID_LABEL: backup_uid}},
        "spec": {"deletionPolicy": "Retain"},
    });
    Ok(contents(ctx)
        .patch(content, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

/// The content a backup kept for its VolumeSnapshot `namespace/name`, if it did before the
/// VolumeSnapshot went.
async fn kept_content(ctx: &Context, namespace: &str, name: &str) -> Result<Option<DynamicObject>> {
    let kept = contents(ctx)
        .list(&ListParams::default().labels(BACKUP_UID_LABEL))
        .await?;
    Ok(kept.items.into_iter().find(|content| {
        let reference = content.data.pointer("/spec/volumeSnapshotRef");
        let field = |key: &str| reference.and_then(|r| r.get(key)).and_then(Value::as_str);
        field("namespace") == Some(namespace)
            && field("name") == Some(name)
            && content
                .data
                .pointer("/spec/deletionPolicy")
                .and_then(Value::as_str)
                == Some("Retain")
    }))
}

/// Records `content`, which the backup kept, as `record`'s snapshot, and starts moving its data
/// when the backup asked for that.
async fn kept(
    ctx: &Context,
    location: &BackupStorageLocation,
    record: &mut VolumeRecord,
    content: &DynamicObject,
    index: usize,
) -> Result<()> {
    complete(record, content);
    let moving = record
        .csi_snapshot
        .as_ref()
        .is_some_and(|s| s.data_mover.is_some());
    if record.phase == VolumePhase::Completed && moving {
        let uid = label_of(content, BACKUP_UID_LABEL).unwrap_or_default();
        start_move(ctx, location, record, &uid, index).await?;
    }
    Ok(())
}

fn label_of(object: &DynamicObject, label: &str) -> Option<String> {
    object.metadata.labels.as_ref()?.get(label).cloned()
}

fn complete(record: &mut VolumeRecord, content: &DynamicObject) {
    let snapshot = record.csi_snapshot.get_or_insert_with(Default::default);
    snapshot.content = content.metadata.name.clone();
    snapshot.snapshot_handle = content
        .data
        .pointer("/status/snapshotHandle")
        .and_then(Value::as_str)
        .map(str::to_owned);
    snapshot.restore_size = content
        .data
        .pointer("/status/restoreSize")
        .and_then(Value::as_i64);
    if snapshot.snapshot_handle.is_some() {
        record.phase = VolumePhase::Completed;
        record.message = None;
    } else {
        record.phase = VolumePhase::Failed;
        record.message = Some(format!(
            "VolumeSnapshotContent {} is ready but names no snapshotHandle",
            snapshot.content.as_deref().unwrap_or_default()
        ));
    }
}

/// Deletes the CSI snapshots `records` name that carry `backup_uid`; returns how many.
pub async fn delete(ctx: &Context, records: &VolumeRecords, backup_uid: &str) -> Result<usize> {
    let mut deleted = 0;
    for snapshot in records
        .volumes
        .iter()
        .filter_map(|r| r.csi_snapshot.as_ref())
    {
        let Some(name) = &snapshot.content else {
            continue;
        };
        let content = match contents(ctx).get_opt(name).await {
            Ok(Some(content)) => content,
            Ok(None) => continue,
            Err(error) if no_api(&error) => continue,
            Err(error) => return Err(error.into()),
        };
        if !carries(&content, BACKUP_UID_LABEL, backup_uid) {
            tracing::warn!(
                message = "a VolumeSnapshotContent the backup's records name does not carry its uid; left alone",
                content = %name,
                label = %format!("{BACKUP_UID_LABEL}={backup_uid}"),
            );
            continue;
        }
        delete_content(ctx, name).await?;
        deleted += 1;
    }
    let handles: Vec<(&str, &str)> = records
        .volumes
        .iter()
        .filter_map(|r| r.csi_snapshot.as_ref())
        .filter_map(|s| Some((s.driver.as_str(), s.snapshot_handle.as_deref()?)))
        .collect();
    delete_restore_sources(ctx, &handles).await?;
    Ok(deleted)
}

/// Deletes the VolumeSnapshots (and their contents) that restores made to provision claims from
/// the snapshots `handles` name, which are about to be gone. Their contents are `Retain`: deleting
/// them leaves the storage system alone.
async fn delete_restore_sources(ctx: &Context, handles: &[(&str, &str)]) -> Result<()> {
    if handles.is_empty() {
        return Ok(());
    }
    let made = match contents(ctx)
        .list(&ListParams::default().labels(RESTORE_UID_LABEL))
        .await
    {
        Ok(list) => list.items,
        Err(error) if no_api(&error) => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    for content in made {
        let text = |pointer: &str| content.data.pointer(pointer).and_then(Value::as_str);
        let source = (
            text("/spec/driver").unwrap_or_default(),
            text("/spec/source/snapshotHandle").unwrap_or_default(),
        );
        if !handles.contains(&source) || text("/spec/deletionPolicy") != Some("Retain") {
            continue;
        }
        if let (Some(namespace), Some(name)) = (
            text("/spec/volumeSnapshotRef/namespace"),
            text("/spec/volumeSnapshotRef/name"),
        ) {
            let api = snapshots(ctx, namespace);
            if let Some(snapshot) = api.get_opt(name).await?
                && snapshot
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(RESTORE_UID_LABEL))
            {
                api.delete(name, &DeleteParams::default())
                    .await
                    .map(drop)
                    .or_else(gone)?;
            }
        }
        if let Some(name) = &content.metadata.name {
            contents(ctx)
                .delete(name, &DeleteParams::default())
                .await
                .map(drop)
                .or_else(gone)?;
        }
    }
    Ok(())
}

/// Deletes what an interrupted backup may have taken before it recorded it: its VolumeSnapshots
/// in every namespace, and the contents it kept. Returns how many.
pub async fn delete_unrecorded(ctx: &Context, backup_uid: &str) -> Result<usize> {
    let selector = ListParams::default().labels(&format!("{BACKUP_UID_LABEL}={backup_uid}"));
    let all: Api<DynamicObject> = Api::all_with(
        ctx.client.clone(),
        &resource("VolumeSnapshot", "volumesnapshots"),
    );
    let taken = match all.list(&selector).await {
        Ok(list) => list.items,
        Err(error) if no_api(&error) => return Ok(0),
        Err(error) => return Err(error.into()),
    };
    let mut deleted = 0;
    for snapshot in taken {
        let (Some(namespace), Some(name)) = (&snapshot.metadata.namespace, &snapshot.metadata.name)
        else {
            continue;
        };
        snapshots(ctx, namespace)
            .delete(name, &DeleteParams::default())
            .await
            .map(drop)
            .or_else(gone)?;
        deleted += 1;
    }
    for content in contents(ctx).list(&selector).await?.items {
        if let Some(name) = &content.metadata.name {
            delete_content(ctx, name).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Deletes a content together with the storage system's snapshot.
async fn delete_content(ctx: &Context, name: &str) -> Result<()> {
    let patch = json!({"spec": {"deletionPolicy": "Delete"}});
    contents(ctx)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .or_else(gone)?;
    contents(ctx)
        .delete(name, &DeleteParams::default())
        .await
        .map(|_| ())
        .or_else(gone)?;
    Ok(())
}

fn carries(object: &DynamicObject, label: &str, value: &str) -> bool {
    label_of(object, label).as_deref() == Some(value)
}

/// The name of the VolumeSnapshot (and its content) a restore makes for the claim of
/// PersistentVolume `persistent_volume`.
pub fn restore_snapshot_name(restore_uid: &str, persistent_volume: &str) -> String {
    snapshot_name(restore_uid, persistent_volume)
}

/// Makes the VolumeSnapshot a restored claim in `namespace` is provisioned from: a content that
/// points at the backup's snapshot, kept (`Retain`) whatever becomes of it, and a VolumeSnapshot
/// bound to it. Returns the VolumeSnapshot's name. Made again on a retry, it is found as it was.
pub async fn provision_source(
    ctx: &Context,
    snapshot: &CsiSnapshot,
    namespace: &str,
    restore_uid: &str,
    persistent_volume: &str,
) -> std::result::Result<String, String> {
    let Some(handle) = &snapshot.snapshot_handle else {
        return Err("the backup's CSI snapshot has no snapshotHandle".to_owned());
    };
    let name = restore_snapshot_name(restore_uid, persistent_volume);
    let labels = json!({RESTORE_UID_LABEL: restore_uid});
    let content = json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "deletionPolicy": "Retain",
            "driver": snapshot.driver,
            "source": {"snapshotHandle": handle},
            "volumeSnapshotRef": {"namespace": namespace, "name": name},
        },
    });
    let volume_snapshot = json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"source": {"volumeSnapshotContentName": name}},
    });
    let create = |api: Api<DynamicObject>, body: Value| async move {
        let body: DynamicObject = serde_json::from_value(body).map_err(|e| e.to_string())?;
        match api.create(&PostParams::default(), &body).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) if no_api(&error) => Err(
                "the cluster has no VolumeSnapshot API (snapshot.storage.k8s.io/v1) to restore a CSI snapshot through; install the external-snapshotter's CRDs and snapshot controller".to_owned(),
            ),
            Err(error) => Err(format!("creating the VolumeSnapshot to restore from failed: {error}")),
        }
    };
    create(contents(ctx), content).await?;
    create(snapshots(ctx, namespace), volume_snapshot).await?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_volume_is_lent_by_a_root_pod_without_capabilities_and_a_filesystem_mounted() {
        let block = volume_pod("claim-1", "data", true, true);
        let container = &block["spec"]["containers"][0];
        let command: Vec<&str> = container["command"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            command,
            [
                "ferry",
                "lend-device",
                "--device",
                "/dev/ferry-data",
                "--socket",
                "/ferry-devices/data.sock",
                "--writable"
            ]
        );
        assert_eq!(
            container["volumeDevices"],
            json!([{"name": "data", "devicePath": "/dev/ferry-data"}])
        );
        assert_eq!(block["spec"]["securityContext"]["runAsUser"], 0);
        assert_eq!(
            container["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        assert_eq!(block["spec"]["volumes"][1]["name"], "ferry-devices");
        assert_eq!(
            block["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "claim-1"
        );

        let files = volume_pod("claim-1", "data", false, false);
        let container = &files["spec"]["containers"][0];
        assert_eq!(container["volumeMounts"][0]["readOnly"], true);
        assert!(container.get("volumeDevices").is_none());
        assert_eq!(files["spec"]["securityContext"]["runAsNonRoot"], true);
        assert_eq!(files["spec"]["volumes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn snapshot_names_are_stable_per_backup_and_claim_and_fit_a_name() {
        let a = snapshot_name("uid-1", "data");
        assert_eq!(a, snapshot_name("uid-1", "data"));
        assert_ne!(a, snapshot_name("uid-2", "data"));
        assert_ne!(a, snapshot_name("uid-1", "logs"));
        assert!(a.starts_with("ferry-data-"));
        let long = snapshot_name("uid-1", &"x".repeat(253));
        assert!(long.len() <= 253, "{}", long.len());
    }

    #[test]
    fn a_ready_content_completes_the_record_and_one_without_a_handle_fails_it() {
        let content: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": "snapcontent-1"},
            "status": {"snapshotHandle": "snap-7", "restoreSize": 1073741824, "readyToUse": true},
        }))
        .unwrap();
        let mut record = VolumeRecord {
            persistent_volume: "pv-1".into(),
            claim: None,
            method: ferry_protocol::volume::VolumeMethod::CsiSnapshot,
            phase: VolumePhase::InProgress,
            message: None,
            snapshot: None,
            csi_snapshot: Some(CsiSnapshot::default()),
            pod_volume: None,
            file_system: None,
        };
        complete(&mut record, &content);
        assert_eq!(record.phase, VolumePhase::Completed);
        let kept = record.csi_snapshot.as_ref().unwrap();
        assert_eq!(kept.content.as_deref(), Some("snapcontent-1"));
        assert_eq!(kept.snapshot_handle.as_deref(), Some("snap-7"));
        assert_eq!(kept.restore_size, Some(1 << 30));

        let mut no_handle = content.clone();
        no_handle.data["status"]["snapshotHandle"] = Value::Null;
        complete(&mut record, &no_handle);
        assert_eq!(record.phase, VolumePhase::Failed);
    }
}
