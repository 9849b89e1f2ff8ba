//! A restore's per-kind rules, one concern per file, each an [`ItemAction`]. [`ACTIONS`] lists
//! them in the order they run.
//!
//! An action reads and changes the object it is given. It may say that the object is skipped or
//! fails. It never calls the cluster or the bucket. Everything it needs besides the object is in
//! [`Scope`]. Work that must follow (an agent task to fill a pod's volume) comes back as an
//! [`Effect`], which the restore carries out. So a restore can be planned without creating
//! anything.
//!
//! A new rule is a new file here with a unit test, registered in [`ACTIONS`].

use std::collections::{BTreeMap, BTreeSet};

use ferry_protocol::layout::{ArchiveItem, GroupResource};
use ferry_protocol::volume::VolumeRecord;
use serde_json::Value;

use super::VolumePlan;

mod archive_path;
mod cluster_issued;
mod hooks;
mod job;
mod labels;
mod metadata;
mod modifiers;
mod namespace;
mod persistent_volume;
mod persistent_volume_claim;
mod pod;
mod protected;
mod rbac;
mod service;
mod storage_class;

/// Every action, in the order they run on each object. Skips are asked of all of them first,
/// on the object as it was archived; then each changes the object in turn.
pub static ACTIONS: &[&dyn ItemAction] = &[
    &archive_path::ArchivePath,
    &cluster_issued::ServiceAccountTokens,
    &cluster_issued::RootCaConfigMap,
    &job::Job,
    &metadata::ServerFields,
    &namespace::Namespace,
    &protected::Protected,
    &service::Service,
    &persistent_volume::PersistentVolume,
    &persistent_volume_claim::PersistentVolumeClaim,
    &storage_class::StorageClass,
    &rbac::BindingSubjects,
    &pod::Pod,
    &hooks::RestoreHooks,
    &modifiers::ResourceModifiers,
    &labels::RestoreLabels,
];

/// One concern of a restore, for the resources it names.
pub trait ItemAction: Sync {
    /// Whether it acts on objects of `resource`.
    fn applies_to(&self, resource: &GroupResource) -> bool;

    /// Why an object must not be restored at all, read from it as it was archived.
    fn skip(&self, _object: &Value) -> Option<&'static str> {
        None
    }

    /// Changes the object for the target cluster; the verdict stops the object when it is not
    /// [`Verdict::Restore`].
    fn act(&self, _object: &mut Value, _planning: &mut Planning) -> Verdict {
        Verdict::Restore
    }
}

/// One object being planned: which it is, what the restore knows, and the effects asked for.
pub struct Planning<'a> {
    pub item: &'a ArchiveItem,
    pub scope: &'a Scope<'a>,
    pub effects: Vec<Effect>,
}

/// What an action knows of the restore besides the object.
pub struct Scope<'a> {
    /// Source namespace to target namespace (`namespaceMapping`).
    pub namespace_mapping: &'a BTreeMap<String, String>,
    /// Whether this object's status is restored too (`restoreStatus`).
    pub keep_status: bool,
    /// Whether the archive, as restored, holds an object of the resource by that name.
    pub in_archive: &'a dyn Fn(&GroupResource, &str) -> bool,
    /// How each PersistentVolume's disk comes back, by PV name.
    pub volume_plans: &'a BTreeMap<String, VolumePlan>,
    /// Every volume record of the backup.
    pub backup_volumes: &'a [VolumeRecord],
    /// The claims (namespace in the backup, name) a fill pod fills: pods that use one are
    /// created held by a scheduling gate until it is filled (`restore/fill.rs`).
    pub filled_claims: &'a BTreeSet<(String, String)>,
    /// Whether pod volumes are restored (`restorePVs`).
    pub restore_volumes: bool,
    /// With `inPlaceVolumes`: the archived pods (namespace in the backup, name) running now.
    pub running_pods: Option<&'a BTreeSet<(String, String)>>,
    /// The file a restored pod's init container waits for.
    pub marker: &'a str,
    /// The labels every restored object carries.
    pub labels: &'a BTreeMap<String, String>,
    /// What the Restore's `includedResources` names, to restore protected kinds.
    pub named_resources: &'a [String],
    /// What its `includedNamespaces` names, to restore into protected namespaces.
    pub named_namespaces: &'a [String],
    /// Ferry's own namespace, which a restore leaves alone unless it is named.
    pub ferry_namespace: &'a str,
    /// The Restore's hook rules, for pods without hook annotations.
    pub hooks: &'a crate::hooks::RestoreHookRules,
    /// The Restore's resource modifier rules.
    pub modifiers: &'a crate::modifiers::ResourceModifiers,
    /// StorageClass in the backup to StorageClass restored (`storageClassMapping`).
    pub storage_class_mapping: &'a BTreeMap<String, String>,
    /// Whether Services keep all their node ports (`preserveNodePorts`).
    pub preserve_node_ports: bool,
}

impl Scope<'_> {
    /// Where objects of `namespace` in the backup are restored.
    pub fn target_namespace(&self, namespace: &str) -> String {
        self.namespace_mapping
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| namespace.to_owned())
    }
}

/// What becomes of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Restore,
    Skip(String),
    Fail(String),
}

/// Work an action asks for beyond the object.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The agent of the pod's node fills a volume of the pod from the backup: a new pod that
    /// waits for it, or (`in_place`) one that runs now.
    FillPodVolume {
        record: Box<VolumeRecord>,
        in_place: bool,
    },
    /// The restored pod has exec hooks, to run once it is up.
    ExecHooks,
    /// The pod's hooks could not be read: the restore reports it.
    HookProblem(String),
}

/// Runs [`ACTIONS`] on one object: the first skip any of them finds, else each change in turn.
/// The effects come back only with [`Verdict::Restore`].
pub fn plan(item: &ArchiveItem, object: &mut Value, scope: &Scope) -> (Verdict, Vec<Effect>) {
    if let Some(reason) = skip_reason(&item.resource, object) {
        return (Verdict::Skip(reason.to_owned()), Vec::new());
    }
    let mut planning = Planning {
        item,
        scope,
        effects: Vec::new(),
    };
    for action in ACTIONS.iter().filter(|a| a.applies_to(&item.resource)) {
        let verdict = action.act(object, &mut planning);
        if verdict != Verdict::Restore {
            return (verdict, Vec::new());
        }
    }
    (Verdict::Restore, planning.effects)
}

/// Why an object must not be restored, if it must not.
pub fn skip_reason(resource: &GroupResource, object: &Value) -> Option<&'static str> {
    ACTIONS
        .iter()
        .filter(|a| a.applies_to(resource))
        .find_map(|a| a.skip(object))
}

/// Removes `field` from the object at `pointer`, if both are there.
fn remove(object: &mut Value, pointer: &str, field: &str) {
    if let Some(parent) = object.pointer_mut(pointer).and_then(Value::as_object_mut) {
        parent.remove(field);
    }
}

/// A string at `pointer`.
fn text<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Runs one action on `object` in `scope`, as an object archived in namespace `shop` under
    /// the name `x`.
    pub fn act(
        action: &dyn ItemAction,
        resource: GroupResource,
        object: &mut Value,
        scope: &Scope,
    ) -> Verdict {
        let item = ArchiveItem {
            resource,
            namespace: Some("shop".into()),
            name: "x".into(),
        };
        let mut planning = Planning {
            item: &item,
            scope,
            effects: Vec::new(),
        };
        action.act(object, &mut planning)
    }

    /// A scope with nothing to map, no volumes and no labels.
    pub fn with<R>(
        keep_status: bool,
        namespace_mapping: &BTreeMap<String, String>,
        in_archive: &dyn Fn(&GroupResource, &str) -> bool,
        run: impl FnOnce(&Scope) -> R,
    ) -> R {
        let volume_plans = BTreeMap::new();
        let labels = BTreeMap::new();
        let hooks = crate::hooks::RestoreHookRules::default();
        let modifiers = crate::modifiers::ResourceModifiers::default();
        let storage_class_mapping = BTreeMap::new();
        let filled_claims = BTreeSet::new();
        run(&Scope {
            namespace_mapping,
            keep_status,
            in_archive,
            volume_plans: &volume_plans,
            backup_volumes: &[],
            filled_claims: &filled_claims,
            restore_volumes: true,
            running_pods: None,
            marker: "uid.done",
            labels: &labels,
            named_resources: &[],
            named_namespaces: &[],
            ferry_namespace: "ferry-system",
            hooks: &hooks,
            modifiers: &modifiers,
            storage_class_mapping: &storage_class_mapping,
            preserve_node_ports: false,
        })
    }
}
