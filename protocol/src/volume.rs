//! What a backup records about the data of its volumes, stored beside the archive as
//! `backups/<backup>/<backup>-volumes.json.gz` (gzipped JSON, [`VolumeRecords`]).
//!
//! Every PersistentVolume in a backup's scope gets one [`VolumeRecord`], whatever happened to it,
//! so that no volume is ever silently left out: a native snapshot (an EBS snapshot, with what a
//! restore needs to create an equal disk from it), a volume handed to file-level backup by the node
//! agents, or the reason it was not backed up. A restore reads this file to know which snapshot
//! belongs to which PersistentVolume.
//!
//! ```json
//! {
//!   "formatVersion": "1",
//!   "volumes": [{
//!     "persistentVolume": "pvc-1f3e",
//!     "claim": {"namespace": "shop", "name": "data"},
//!     "method": "NativeSnapshot",
//!     "phase": "Completed",
//!     "snapshot": {
//!       "provider": "aws", "location": "default", "region": "eu-west-1",
//!       "snapshotId": "snap-0a1b", "volumeId": "vol-0c2d", "availabilityZone": "eu-west-1a",
//!       "volumeType": "gp3", "iops": 6000, "throughput": 500, "sizeGiB": 100,
//!       "encrypted": true, "kmsKeyId": "arn:aws:kms:...", "tags": {"team": "shop"}
//!     }
//!   }]
//! }
//! ```
//!
//! A CSI snapshot is recorded as `"method": "CsiSnapshot"` with a `csiSnapshot`
//! ([`CsiSnapshot`]): the driver, the VolumeSnapshotClass, the VolumeSnapshot the backup took, its
//! VolumeSnapshotContent and the storage system's `snapshotHandle`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version of the volume records format this build writes.
pub const VOLUME_RECORDS_FORMAT_VERSION: &str = "1";

/// Every volume of one backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRecords {
    pub format_version: String,
    pub volumes: Vec<VolumeRecord>,
}

impl VolumeRecords {
    pub fn new(volumes: Vec<VolumeRecord>) -> VolumeRecords {
        VolumeRecords {
            format_version: VOLUME_RECORDS_FORMAT_VERSION.to_owned(),
            volumes,
        }
    }

    /// The native snapshot taken of PersistentVolume `name`, when one completed.
    pub fn completed_snapshot(&self, persistent_volume: &str) -> Option<&NativeSnapshot> {
        self.volumes
            .iter()
            .find(|v| v.persistent_volume == persistent_volume && v.phase == VolumePhase::Completed)
            .and_then(|v| v.snapshot.as_ref())
    }

    /// The CSI snapshot taken of PersistentVolume `name`, when one completed and is kept (not
    /// moved into the repository and deleted).
    pub fn completed_csi_snapshot(&self, persistent_volume: &str) -> Option<&CsiSnapshot> {
        self.volumes
            .iter()
            .find(|v| v.persistent_volume == persistent_volume && v.phase == VolumePhase::Completed)
            .and_then(|v| v.csi_snapshot.as_ref())
            .filter(|snapshot| !snapshot.moved())
    }
}

/// What happened to the data of one PersistentVolume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRecord {
    pub persistent_volume: String,
    /// The claim the volume was bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimRef>,
    pub method: VolumeMethod,
    pub phase: VolumePhase,
    /// Why the volume failed or was skipped, in words a user can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<NativeSnapshot>,
    /// For file-level backups: the pod volume the node agent read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_volume: Option<PodVolumeRef>,
    /// For file-level backups: where the data went and how the agent's task went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_system: Option<FileSystemBackup>,
    /// For CSI snapshots: the VolumeSnapshot taken and the storage system's snapshot behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csi_snapshot: Option<CsiSnapshot>,
}

/// A CSI VolumeSnapshot of a claim, taken through the cluster's snapshot controller.
///
/// While it is taken, the backup's VolumeSnapshot lives beside the claim. Once it is ready, its
/// VolumeSnapshotContent is set to `Retain` and labelled with the backup, and the VolumeSnapshot
/// is deleted: the storage system's snapshot (`snapshotHandle`) then outlives the claim, its
/// namespace and the VolumeSnapshot, and is deleted only with the backup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CsiSnapshot {
    /// The CSI driver of the volume, which made the snapshot.
    pub driver: String,
    pub volume_snapshot_class: String,
    /// The VolumeSnapshot the backup created, in the claim's namespace.
    pub volume_snapshot: String,
    /// When it must be ready to use by (Unix seconds): its creation plus the backup's
    /// `csiSnapshotTimeout`. One that is not fails.
    pub ready_by: i64,
    /// Its VolumeSnapshotContent, once bound: cluster-scoped, kept with the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The storage system's id of the snapshot, once ready; a restore makes a
    /// VolumeSnapshotContent that points at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    /// The smallest volume the snapshot can be restored into, in bytes, when the driver says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<i64>,
    /// With `snapshotMoveData`: the snapshot's data moved into the namespace's repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_mover: Option<DataMover>,
}

/// A snapshot's data moving into the repository: a claim made from the snapshot in Ferry's
/// namespace, mounted by a pod there, read by its node's agent (the record's `podVolume` and
/// `fileSystem`); then the temporary objects and the snapshot are deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataMover {
    /// The name of the temporary VolumeSnapshotContent, VolumeSnapshot, claim and pod, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The temporary objects are gone.
    #[serde(default)]
    pub cleaned_up: bool,
    /// The snapshot itself was deleted once its data was in the repository: a restore reads the
    /// repository.
    #[serde(default)]
    pub snapshot_deleted: bool,
}

impl CsiSnapshot {
    /// Whether the data is in the repository and the snapshot gone.
    pub fn moved(&self) -> bool {
        self.data_mover.as_ref().is_some_and(|m| m.snapshot_deleted)
    }
}

/// A volume of a pod, on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeRef {
    pub namespace: String,
    pub pod: String,
    /// The volume's name in the pod's spec.
    pub volume: String,
    pub node: String,
}

/// A pod volume backed up file by file into a Ferry repository by the agent of its node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileSystemBackup {
    /// The repository, `s3://bucket/prefix/repositories/<namespace>` (one per namespace and
    /// storage location).
    pub repository: String,
    /// The repository snapshot, once the task completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// The agent task's id (`<backup uid>-<n>`), the same on every attempt.
    pub task_id: String,
    /// Attempts started; a task interrupted by a restart of the controller or the agent is tried
    /// again, up to a limit.
    pub attempts: u32,
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub bytes: u64,
    /// Bytes the backup added to the repository (a restore: downloaded from it): what the
    /// transfer cost.
    #[serde(default)]
    pub bytes_uploaded: u64,
    /// A restore into a volume that holds data already: fetch only what differs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_place: bool,
    /// Since when (Unix seconds) the task has waited for its agent or volume to be ready, while it
    /// waits: a wait that lasts too long fails the volume rather than hold the backup for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<i64>,
}

impl VolumeRecord {
    /// What went wrong with the volume, as the backup's errors and failure reason list it.
    pub fn failure(&self) -> String {
        format!(
            "{}: {}",
            self.describe(),
            self.message.as_deref().unwrap_or("failed")
        )
    }

    /// How the volume is named in messages: `pv-name (namespace/claim)`.
    pub fn describe(&self) -> String {
        if self.persistent_volume.is_empty()
            && let Some(pod) = &self.pod_volume
        {
            return format!("volume {} of pod {}/{}", pod.volume, pod.namespace, pod.pod);
        }
        match &self.claim {
            Some(claim) => format!(
                "volume {} (claim {}/{})",
                self.persistent_volume, claim.namespace, claim.name
            ),
            None => format!("volume {}", self.persistent_volume),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
}

/// How a volume's data is backed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeMethod {
    /// A cloud provider's snapshot of the disk (EBS).
    NativeSnapshot,
    /// A CSI VolumeSnapshot, taken by the volume's CSI driver.
    CsiSnapshot,
    /// File by file, by the node agent of the pod's node, into a Ferry repository.
    FileSystem,
    /// Not backed up; `message` says why.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumePhase {
    /// Started; the provider is still taking it.
    InProgress,
    Completed,
    Failed,
    /// Deliberately not backed up (`snapshotVolumes: false`, or nothing can back it up here).
    Skipped,
}

impl VolumePhase {
    pub fn is_terminal(self) -> bool {
        self != VolumePhase::InProgress
    }
}

/// An EBS snapshot and what a restore needs to create an equal volume from it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NativeSnapshot {
    /// `aws`.
    pub provider: String,
    /// The VolumeSnapshotLocation it was taken through.
    pub location: String,
    pub region: String,
    pub snapshot_id: String,
    pub volume_id: String,
    pub availability_zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<i32>,
    /// MiB/s; gp3 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<i32>,
    #[serde(default, rename = "sizeGiB", skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<i32>,
    #[serde(default)]
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// The source volume's own tags, given to the volume a restore creates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_the_documented_shape() {
        let records = VolumeRecords::new(vec![VolumeRecord {
            persistent_volume: "pv-1".into(),
            claim: Some(ClaimRef {
                namespace: "shop".into(),
                name: "data".into(),
            }),
            method: VolumeMethod::NativeSnapshot,
            phase: VolumePhase::Completed,
            message: None,
            snapshot: Some(NativeSnapshot {
                provider: "aws".into(),
                snapshot_id: "snap-1".into(),
                iops: Some(6000),
                size_gib: Some(100),
                ..Default::default()
            }),
            pod_volume: None,
            file_system: None,
            csi_snapshot: None,
        }]);
        let json = serde_json::to_value(&records).unwrap();
        assert_eq!(json["formatVersion"], "1");
        assert_eq!(json["volumes"][0]["persistentVolume"], "pv-1");
        assert_eq!(json["volumes"][0]["snapshot"]["snapshotId"], "snap-1");
        assert_eq!(json["volumes"][0]["snapshot"]["sizeGiB"], 100);
        let back: VolumeRecords = serde_json::from_value(json).unwrap();
        assert_eq!(back, records);
        assert_eq!(
            back.completed_snapshot("pv-1")
                .map(|s| s.snapshot_id.as_str()),
            Some("snap-1")
        );
        assert!(back.completed_snapshot("pv-2").is_none());
    }
}
