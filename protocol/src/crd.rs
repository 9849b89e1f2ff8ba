//! Ferry's custom resources, group `ferry.dev`, version `v1alpha1`.
//!
//! The specs follow Velero's where Velero has a field for the same thing, so that its users find
//! their way: a Backup names namespaces, resources and a label selector to include or exclude, a
//! Restore names its backup and how to map namespaces. The CRD YAML in `deploy/crds.yaml` is
//! generated from these types (`cargo run -p ferry-protocol --bin crdgen`); a test fails when it drifts.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Set on a Backup to ask the controller to delete it: its native snapshots, its files in the
/// storage location, then the resource. `ferry backup delete` sets it; the value is the time asked.
pub const DELETE_REQUESTED_ANNOTATION: &str = "ferry.dev/delete-requested";

/// The API group of every Ferry resource.
pub const GROUP: &str = "ferry.dev";
/// The version of every Ferry resource.
pub const VERSION: &str = "v1alpha1";

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A reference to one key of a Secret in the controller's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// What to back up, where to, and for how long.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "Backup",
    namespaced,
    status = "BackupStatus",
    shortname = "fbk",
    category = "ferry",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Items","type":"integer","jsonPath":".status.progress.itemsDone"}"#,
    printcolumn = r#"{"name":"Errors","type":"integer","jsonPath":".status.errors"}"#,
    printcolumn = r#"{"name":"Warnings","type":"integer","jsonPath":".status.warnings"}"#,
    printcolumn = r#"{"name":"Location","type":"string","jsonPath":".spec.storageLocation"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".status.expiration"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Namespaces to back up; empty or `*` means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_namespaces: Vec<String>,
    /// Resources to back up, as `resource` or `resource.group` (e.g. `deployments.apps`); empty or
    /// `*` means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_resources: Vec<String>,
    /// Whether cluster-scoped resources are backed up: `true` all of them, `false` none, unset
    /// only those the included namespaces need (their Namespace, bound PVs, CRDs, RBAC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_cluster_resources: Option<bool>,
    /// Namespaced resources to back up (default all); with the three lists below, replaces
    /// `includedResources`, `excludedResources` and `includeClusterResources` (Velero's newer
    /// fields).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_namespace_scoped_resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_namespace_scoped_resources: Vec<String>,
    /// Cluster-scoped resources to back up: `*` all; unset, those the namespaces need and the
    /// types named here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_cluster_scoped_resources: Vec<String>,
    /// `*` excludes every cluster-scoped resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_cluster_scoped_resources: Vec<String>,
    /// Only objects matching this selector are backed up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Objects matching any one of these selectors are backed up; exclusive with `labelSelector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub or_label_selectors: Vec<LabelSelector>,
    /// How long the backup is kept, as a duration such as `720h` or `30d`; default 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// The BackupStorageLocation to write to; default: the location marked default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_location: Option<String>,
    /// VolumeSnapshotLocations to take native snapshots in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_snapshot_locations: Vec<String>,
    /// Whether to take native snapshots of the volumes in scope; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_volumes: Option<bool>,
    /// Whether every pod volume is backed up by the node agents, not native snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_volumes_to_fs_backup: Option<bool>,
    /// How a volume's data is kept, per volume: the first policy whose conditions it meets decides;
    /// a volume none matches gets the default (an EBS volume a native snapshot, a CSI volume whose
    /// driver has a VolumeSnapshotClass a CSI snapshot, a volume a running pod mounts file-level
    /// backup). A pod volume named by `backup.ferry.dev/volumes`, or any with
    /// `defaultVolumesToFsBackup`, is backed up by file whatever the policies say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_policies: Vec<VolumePolicy>,
    /// The VolumeSnapshotClass of each CSI driver (`driver: class`). A driver not named here uses
    /// its class labelled `ferry.dev/csi-volumesnapshot-class: "true"` (or Velero's
    /// `velero.io/csi-volumesnapshot-class`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_snapshot_classes: BTreeMap<String, String>,
    /// After each CSI snapshot is ready, move its data into the namespace's repository through the
    /// node agents, then delete the snapshot (Velero's `snapshotMoveData`): the backup then
    /// survives the loss of the cluster's storage. Claims no running pod mounts are backed up this
    /// way when their driver can snapshot them, whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_move_data: Option<bool>,
    /// How long a CSI snapshot may take to become ready to use, such as `10m` (the default); one
    /// not ready by then fails its volume, with the reason the snapshot controller gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csi_snapshot_timeout: Option<String>,
    /// Commands run in the backup's pods just before their volumes are captured and right after
    /// (Velero's `hooks`). A pod annotated with hooks (`pre.hook.backup.ferry.dev/command`, or
    /// Velero's names) runs those instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<BackupHooks>,
}

/// One choice of how volumes are backed up: the volumes that meet every condition get `action`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumePolicy {
    #[serde(default)]
    pub conditions: VolumeConditions,
    pub action: VolumeAction,
}

/// What a volume must be for a policy to apply; an empty list or map asks nothing.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeConditions {
    /// The volume's StorageClass is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage_classes: Vec<String>,
    /// The volume is a CSI volume of one of these drivers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub csi_drivers: Vec<String>,
    /// The volume's capacity is within `min,max`, quantities such as `0,100Gi` or `10Gi,`
    /// (either end may be left out; both ends included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// The volume's claim carries every one of these annotations with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claim_annotations: BTreeMap<String, String>,
}

/// How a volume's data is kept.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VolumeAction {
    /// A native snapshot through a VolumeSnapshotLocation (EBS volumes).
    NativeSnapshot,
    /// A CSI VolumeSnapshot, by the volume's driver.
    CsiSnapshot,
    /// File by file, by the node agent of a running pod that mounts it.
    FileSystem,
    /// Not backed up: the backup keeps the objects only.
    Skip,
}

/// The hooks of a Backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupHooks {
    /// Each applies to the pods it selects, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<BackupResourceHook>,
}

/// Hooks for the pods of some namespaces that match a label selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupResourceHook {
    /// Names the hooks in the backup's log.
    pub name: String,
    /// Namespaces whose pods run the hooks; empty or `*` means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_namespaces: Vec<String>,
    /// As in Velero; hooks run in pods, so a list that leaves out `pods` selects nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Run in order just before the pod's volumes are captured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre: Vec<BackupHook>,
    /// Run in order once the pod's volumes are captured, or failed to be.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post: Vec<BackupHook>,
}

/// One hook.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupHook {
    pub exec: ExecHook,
}

/// A command run in a container of the pod, through the API server's pod exec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecHook {
    /// The container; default the pod's first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The command and its arguments (no shell unless you run one).
    pub command: Vec<String>,
    /// What a failure does: `Fail` (the default) makes the backup PartiallyFailed and skips the
    /// pod's later pre hooks, `Continue` is a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<HookErrorMode>,
    /// How long the command may run, such as `30s` (the default) or `2m`; longer is a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// What a failed hook does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HookErrorMode {
    Continue,
    Fail,
}

/// Where a Backup or Restore is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    New,
    /// The spec is invalid; `validationErrors` lists every problem. Nothing was written.
    FailedValidation,
    InProgress,
    /// The objects are stored; volume snapshots are still being taken. Resumes after a restart.
    WaitingForVolumes,
    Completed,
    /// Finished, but some items failed; `errors` counts them and the results file names them.
    PartiallyFailed,
    /// Stopped; `failureReason` says why and what to do.
    Failed,
    Deleting,
}

impl Phase {
    /// Whether the phase is final: the controller will not act on the resource again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::FailedValidation | Phase::Completed | Phase::PartiallyFailed | Phase::Failed
        )
    }
}

/// How far a Backup or Restore has come.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Items found so far (grows as the listing proceeds).
    pub items_total: u64,
    pub items_done: u64,
}

/// How the node agents' file-level transfers of a Backup's or Restore's pod volumes are doing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeProgress {
    /// Pod volumes handed to the agents.
    pub total: u32,
    pub completed: u32,
    pub failed: u32,
    /// Bytes read (backup) or written (restore) so far, over the volumes running and completed.
    pub bytes_done: u64,
    /// The size of those volumes, as far as the agents have measured them.
    pub bytes_total: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The version of the archive layout this backup was written with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(default)]
    pub warnings: u32,
    #[serde(default)]
    pub errors: u32,
    /// The node agents' file-level backups of pod volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_volumes: Option<PodVolumeProgress>,
    /// Native volume snapshots started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub volume_snapshots_attempted: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub volume_snapshots_completed: u32,
    /// CSI VolumeSnapshots started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub csi_volume_snapshots_attempted: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub csi_volume_snapshots_completed: u32,
    /// Hooks run in the backup's pods, and how many of them failed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hooks_attempted: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hooks_failed: u32,
    /// Pods (`namespace/name`) whose pre hooks may have run and whose post hooks have not yet:
    /// written before the first pre hook runs, so that a restarted controller runs the post
    /// hooks (which unfreeze what the pre hooks froze) before anything else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_hooks_pending: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Time>,
    /// Why a requested deletion has not finished yet (queued behind a running backup, or a step
    /// that failed and is being retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_message: Option<String>,
    /// Why the backup Failed, or which volumes failed when it PartiallyFailed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_errors: Vec<String>,
}

/// What a Restore does with an object that already exists in the cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ExistingResourcePolicy {
    /// Leave it; if it differs from the backup, record a warning.
    #[default]
    None,
    /// Patch it to the backup's version.
    Update,
}

/// Which resources get their `status` restored too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatusSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_resources: Vec<String>,
}

/// Bring (part of) a Backup back into this cluster.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "Restore",
    namespaced,
    status = "RestoreStatus",
    shortname = "frs",
    category = "ferry",
    printcolumn = r#"{"name":"Backup","type":"string","jsonPath":".spec.backupName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Items","type":"integer","jsonPath":".status.progress.itemsDone"}"#,
    printcolumn = r#"{"name":"Errors","type":"integer","jsonPath":".status.errors"}"#,
    printcolumn = r#"{"name":"Warnings","type":"integer","jsonPath":".status.warnings"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    pub backup_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_cluster_resources: Option<bool>,
    /// Restores the objects of namespace `key` into namespace `value`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_mapping: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_resource_policy: Option<ExistingResourcePolicy>,
    /// Creates restored volumes in availability zone `value` where they were in `key`, e.g.
    /// `{"eu-west-1a": "eu-west-1b"}`; zones not named keep their zone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub availability_zone_mapping: BTreeMap<String, String>,
    /// Whether volumes are restored from their snapshots; default true.
    #[serde(
        default,
        rename = "restorePVs",
        skip_serializing_if = "Option::is_none"
    )]
    pub restore_pvs: Option<bool>,
    /// Restore the data of agent-backed volumes into the pods that run now, in place: only what
    /// differs is fetched, and what the backup lacks is removed. Pods that do not exist are
    /// created and filled as usual.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_place_volumes: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_status: Option<RestoreStatusSpec>,
    /// The order of restore tiers, as `resource.group` names; the rest follow. Default: CRDs,
    /// Namespaces, StorageClasses, PVs, PVCs, ServiceAccounts, RBAC, Secrets, ConfigMaps,
    /// LimitRanges, Pods, ReplicaSets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_priorities: Vec<String>,
    /// Init containers added to restored pods, and commands run in them once they are up
    /// (Velero's restore `hooks`). A pod annotated with restore hooks
    /// (`post.hook.restore.ferry.dev/command`, `init.hook.restore.ferry.dev/container-image`, or
    /// Velero's names) runs those instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<RestoreHooks>,
    /// Objects matching any one of these selectors are restored; exclusive with
    /// `labelSelector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub or_label_selectors: Vec<LabelSelector>,
    /// Rules that change objects as they are restored, in a ConfigMap of Ferry's namespace whose
    /// one data key holds them in Velero's format (`version: v1`, `resourceModifierRules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_modifier: Option<ResourceModifierRef>,
    /// Restores volumes of StorageClass `key` with StorageClass `value`: PersistentVolumes,
    /// PersistentVolumeClaims and StatefulSets' volume claim templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_class_mapping: BTreeMap<String, String>,
    /// Whether Services keep every node port they had; default false: only the node ports written
    /// in their last applied configuration are kept, the others are assigned anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_node_ports: Option<bool>,
    /// Plan the restore and create nothing: the results say what would happen to every object
    /// (validated by the API server's dry run) and where every volume's data would come from.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Where a Restore's resource modifier rules are: a ConfigMap in Ferry's namespace (Velero's
/// `resourceModifier`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceModifierRef {
    /// `ConfigMap` (any case), the one kind there is.
    #[serde(default = "config_map_kind")]
    pub kind: String,
    pub name: String,
    /// Velero writes it; Ferry ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
}

fn config_map_kind() -> String {
    "ConfigMap".to_owned()
}

/// The hooks of a Restore.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreHooks {
    /// Each applies to the restored pods it selects, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<RestoreResourceHook>,
}

/// Hooks for the restored pods of some namespaces that match a label selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreResourceHook {
    /// Names the hooks in the restore's log.
    pub name: String,
    /// Namespaces (as backed up, before any mapping) whose pods run the hooks; empty or `*`
    /// means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_namespaces: Vec<String>,
    /// As in Velero; hooks run in pods, so a list that leaves out `pods` selects nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_hooks: Vec<RestoreHook>,
}

/// One restore hook: init containers, or a command once the pod runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreHook {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitRestoreHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecRestoreHook>,
}

/// Containers added to the restored pod's init containers: after Ferry's `ferry-restore-wait`
/// (so they see the restored volumes), before the pod's own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InitRestoreHook {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<k8s_openapi::api::core::v1::Container>,
}

/// A command run in a restored pod's container once that container runs, through the API
/// server's pod exec; the restore waits for it before it ends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecRestoreHook {
    /// The container; default the pod's first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub command: Vec<String>,
    /// `Fail` (the default) makes the restore PartiallyFailed; `Continue` is a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<HookErrorMode>,
    /// How long the command may run, such as `30s` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_timeout: Option<String>,
    /// How long to wait for the container to run (or be Ready, with `waitForReady`), counted
    /// from when the pod's volumes are restored; default `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout: Option<String>,
    /// Wait for the container to be Ready, not only running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_ready: Option<bool>,
}

/// A restored pod whose exec hooks have not run yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingExecHooks {
    /// `namespace/name`, as restored.
    pub pod: String,
    /// The namespace it was backed up in, which the spec's hook rules select by.
    pub source_namespace: String,
    /// How many of its exec hooks have run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub done: u32,
    /// When the pod's volumes were all restored (or the pod created, when it has none): its
    /// hooks' wait timeouts count from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The node agents' restores of pod volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_volumes: Option<PodVolumeProgress>,
    #[serde(default)]
    pub warnings: u32,
    #[serde(default)]
    pub errors: u32,
    /// Exec hooks run in restored pods, and how many of them failed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hooks_attempted: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hooks_failed: u32,
    /// Restored pods whose exec hooks have not run yet; the restore ends once there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_hooks_pending: Vec<PendingExecHooks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_errors: Vec<String>,
}

/// The bucket in which backups are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStorage {
    pub bucket: String,
    /// A prefix under which every object of this location lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// PEM bundle of the CAs that sign the endpoint's certificate, for private S3-compatible
    /// stores: the endpoint's certificate must chain to one of them (and to no other CA). The
    /// controller and the node agents both use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Server-side encryption the store applies to every object Ferry writes: `AES256` (SSE-S3)
    /// or `aws:kms` (SSE-KMS). Ferry encrypts and authenticates what it writes in any case; this
    /// adds the store's own encryption at rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_encryption: Option<ServerSideEncryption>,
    /// With `aws:kms`: the KMS key (id, ARN or alias); default: the bucket's default KMS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// The store's encryption at rest, as S3 names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServerSideEncryption {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    AwsKms,
}

impl ServerSideEncryption {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerSideEncryption::Aes256 => "AES256",
            ServerSideEncryption::AwsKms => "aws:kms",
        }
    }
}

impl ObjectStorage {
    /// The encryption at rest to ask the store for, or why the two fields disagree.
    pub fn encryption(&self) -> Result<Option<ferry_mover::s3::ServerSideEncryption>, String> {
        ferry_mover::s3::ServerSideEncryption::from_settings(
            self.server_side_encryption
                .map(ServerSideEncryption::as_str),
            self.kms_key_id.as_deref(),
        )
        .map_err(|error| format!("objectStorage (serverSideEncryption, kmsKeyId): {error}"))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AccessMode {
    #[default]
    ReadWrite,
    /// Backups are read (for restores and sync) but never written or deleted.
    ReadOnly,
}

/// Where backups are stored: an S3 or S3-compatible bucket.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "BackupStorageLocation",
    namespaced,
    status = "LocationStatus",
    shortname = "fbsl",
    category = "ferry",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Bucket","type":"string","jsonPath":".spec.objectStorage.bucket"}"#,
    printcolumn = r#"{"name":"Default","type":"boolean","jsonPath":".spec.default"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackupStorageLocationSpec {
    /// `aws` (S3 and S3-compatible stores).
    pub provider: String,
    pub object_storage: ObjectStorage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The S3 endpoint URL, for S3-compatible stores; default AWS's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// A Secret key holding an AWS credentials file (`[default]` profile); default: the
    /// controller's own credentials (environment, web identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<SecretKeyRef>,
    /// The location Backups use when they name none.
    #[serde(default)]
    pub default: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<AccessMode>,
    /// How often the location is checked, as a duration (`1m`); default one minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_frequency: Option<String>,
    /// How often backups in the bucket are synced into the cluster; default one minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_sync_period: Option<String>,
    /// How often the node agents' repositories in this location are pruned by a maintenance Job,
    /// as a duration; default one hour, so that space comes back soon after backups are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_maintenance_frequency: Option<String>,
    /// Short-lived credentials for the node agents, each limited to the one repository its task
    /// works on, from the store's STS (AWS STS, MinIO's AssumeRole). Without it the agents get
    /// the location's own credentials with each task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_credentials: Option<AgentCredentials>,
}

/// How the node agents' scoped credentials are made: AssumeRole with the location's credentials
/// and a session policy that allows only one repository's objects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentCredentials {
    /// The role to assume. AWS requires one that trusts the location's credentials and allows
    /// sessions of `duration`; MinIO ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// How long the credentials last, as a duration (15m to 12h); the longest volume backup or
    /// restore must fit in it. Default 12h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LocationPhase {
    Available,
    Unavailable,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<LocationPhase>,
    /// What is wrong when Unavailable, in words a user can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_validation_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced_time: Option<Time>,
    /// When the last repository maintenance Job was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_maintenance_time: Option<Time>,
}

/// Where native volume snapshots are taken: a cloud provider's snapshot API. A Backup uses the
/// locations it names, or every location when it names none; each volume is snapshotted through
/// the location of its own region.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "VolumeSnapshotLocation",
    namespaced,
    status = "LocationStatus",
    shortname = "fvsl",
    category = "ferry",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.region"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotLocationSpec {
    /// `aws` (EBS snapshots through the EC2 API).
    pub provider: String,
    /// The AWS region of the volumes, e.g. `eu-west-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// An EC2-compatible endpoint URL; default AWS's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A Secret key holding an AWS credentials file (`[default]` profile); default: the
    /// controller's own credentials (environment, web identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<SecretKeyRef>,
    /// The KMS key that encrypts volumes created from snapshots; default: the source volume's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// Backups taken on a cron schedule.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "Schedule",
    namespaced,
    status = "ScheduleStatus",
    shortname = "fsch",
    category = "ferry",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.paused"}"#,
    printcolumn = r#"{"name":"Last Backup","type":"date","jsonPath":".status.lastBackup"}"#,
    printcolumn = r#"{"name":"Next Run","type":"string","jsonPath":".status.nextRun","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// A cron expression of five fields (minute hour day-of-month month day-of-week), e.g.
    /// `0 3 * * *`; lists, ranges, steps, names (`MON`, `JAN`) and `@daily`-style nicknames work.
    pub schedule: String,
    /// The IANA time zone the cron expression is read in; default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    pub template: BackupSpec,
    #[serde(default)]
    pub paused: bool,
    /// Do not take a backup as soon as the schedule is created, nor catch up on a cron time missed
    /// while paused when it is unpaused; wait for the next cron time.
    #[serde(default)]
    pub skip_immediately: bool,
}

/// Labels every Backup a Schedule creates with the Schedule's name.
pub const SCHEDULE_LABEL: &str = "ferry.dev/schedule";
/// On a Backup a Schedule created: the cron time (RFC 3339, UTC) it was taken for. The schedule
/// reads it back, so a backup created just before a crash is not taken twice.
pub const SCHEDULED_FOR_ANNOTATION: &str = "ferry.dev/scheduled-for";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SchedulePhase {
    /// Backups are taken at the cron times.
    Enabled,
    /// `paused` is set: no backups are taken until it is cleared.
    Paused,
    /// The cron expression or time zone is invalid; `validationErrors` says what to write instead.
    FailedValidation,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SchedulePhase>,
    /// The cron time of the latest backup created (the time in its name), or when a new schedule
    /// without `skipImmediately` took its first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<Time>,
    /// When the newest of the schedule's backups that Completed finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<Time>,
    /// When the schedule last let its due time pass without a backup (`skipImmediately` on a new
    /// or unpaused schedule): only cron times after it are taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skipped: Option<Time>,
    /// The next cron time, in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_errors: Vec<String>,
}

/// Every Ferry CRD, in the order `deploy/crds.yaml` lists them.
pub fn all()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        Backup::crd(),
        Restore::crd(),
        BackupStorageLocation::crd(),
        VolumeSnapshotLocation::crd(),
        Schedule::crd(),
    ]
}

/// The YAML of every Ferry CRD, one document each: what the `crdgen` binary prints and
/// `deploy/crds.yaml` holds.
pub fn render_yaml() -> String {
    let mut out = String::from(
        "# Generated by `cargo run -p ferry-protocol --bin crdgen` from protocol/src/crd.rs. Do not edit.\n",
    );
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("a CRD serializes to YAML"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_crds_yaml_is_generated_from_these_types() {
        // The checkout the test runs in (cargo sets CARGO_MANIFEST_DIR for the tests it runs), not
        // the one it was compiled in: a cached build may come from another checkout.
        let package = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        let path = package.join("../deploy/crds.yaml");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == render_yaml(),
            "deploy/crds.yaml differs from the CRD types; regenerate it with `cargo run -p ferry-protocol --bin crdgen > deploy/crds.yaml`"
        );
    }

    #[test]
    fn every_crd_is_in_the_ferry_group_with_printer_columns() {
        for crd in all() {
            assert_eq!(crd.spec.group, GROUP);
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, VERSION);
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some()
            );
            assert!(
                !version
                    .additional_printer_columns
                    .as_deref()
                    .unwrap_or_default()
                    .is_empty()
            );
        }
    }

    #[test]
    fn specs_use_velero_field_names() {
        let backup: BackupSpec = serde_json::from_value(serde_json::json!({
            "includedNamespaces": ["app"],
            "excludedResources": ["events"],
            "labelSelector": {"matchLabels": {"tier": "db"}},
            "includeClusterResources": false,
            "ttl": "72h",
            "storageLocation": "primary",
            "snapshotVolumes": true,
            "defaultVolumesToFsBackup": false,
        }))
        .unwrap();
        assert_eq!(backup.included_namespaces, ["app"]);
        assert_eq!(backup.ttl.as_deref(), Some("72h"));
        let restore: RestoreSpec = serde_json::from_value(serde_json::json!({
            "backupName": "nightly",
            "namespaceMapping": {"app": "app-copy"},
            "existingResourcePolicy": "update",
            "restorePVs": true,
        }))
        .unwrap();
        assert_eq!(
            restore.existing_resource_policy,
            Some(ExistingResourcePolicy::Update)
        );
        assert_eq!(restore.namespace_mapping["app"], "app-copy");
        assert_eq!(restore.restore_pvs, Some(true));
    }
}
