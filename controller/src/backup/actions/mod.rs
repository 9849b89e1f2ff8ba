//! A backup's per-kind rules, one concern per file, each an [`ItemAction`]; [`ACTIONS`] lists
//! them.
//!
//! A backup of some namespaces takes, besides their objects, the cluster-scoped objects they
//! depend on: an action notes, from each namespaced object selected, what it [`needs`], and says
//! of each cluster-scoped object whether it is [`needed`]. And every object written may be kept
//! for what follows the listing (the volumes of pods and PersistentVolumes). An action never
//! calls the cluster or the bucket.
//!
//! A new rule is a new file here with a unit test, registered in [`ACTIONS`].
//!
//! [`needs`]: ItemAction::needs
//! [`needed`]: ItemAction::needed

use std::collections::BTreeSet;

use ferry_protocol::layout::GroupResource;
use kube::api::DynamicObject;
use serde_json::Value;

mod custom_resources;
mod excluded;
mod namespace;
mod pod;
mod rbac;
mod secrets;
mod volumes;

pub use secrets::FerrySecrets;

/// Every action; each object meets those that apply to its resource.
pub static ACTIONS: &[&dyn ItemAction] = &[
    &excluded::ExcludedByLabel,
    &namespace::Namespace,
    &volumes::PersistentVolumeClaim,
    &volumes::PersistentVolume,
    &pod::Pod,
    &rbac::ServiceAccount,
    &rbac::ClusterRoleBinding,
    &rbac::ClusterRole,
    &custom_resources::CustomResource,
    &custom_resources::CustomResourceDefinition,
    &secrets::Secret,
];

/// One concern of a backup, for the resources it names.
pub trait ItemAction: Sync {
    /// Whether it acts on objects of `resource`.
    fn applies_to(&self, resource: &GroupResource) -> bool;

    /// Why an object is never backed up, if it is not; it is left out whatever the filters say.
    fn left_out(&self, _object: &DynamicObject, _ferry: &FerrySecrets) -> Option<String> {
        None
    }

    /// A namespaced object of `resource` was selected: notes the cluster-scoped objects it
    /// depends on.
    fn needs(&self, _resource: &GroupResource, _object: &DynamicObject, _needed: &mut Needed) {}

    /// Whether a cluster-scoped object is needed by those selected, in a backup that takes only
    /// what its namespaces need; one that is may note what it needs in turn.
    fn needed(&self, _object: &DynamicObject, _needed: &mut Needed) -> bool {
        false
    }

    /// An object was written: keeps what the volume backups after the listing read.
    fn written(
        &self,
        _object: &DynamicObject,
        _sources: &mut VolumeSources,
    ) -> serde_json::Result<()> {
        Ok(())
    }
}

/// Cluster-scoped objects the namespaced ones depend on, noted while listing.
#[derive(Debug, Default)]
pub struct Needed {
    pub namespaces: BTreeSet<String>,
    pub persistent_volumes: BTreeSet<String>,
    /// `plural.group` of every custom resource type backed up.
    pub crds: BTreeSet<String>,
    /// `namespace/name` of every ServiceAccount backed up.
    pub service_accounts: BTreeSet<String>,
    /// ClusterRoles that backed-up ClusterRoleBindings refer to.
    pub cluster_roles: BTreeSet<String>,
}

/// The objects the volume backups read once the listing is done.
#[derive(Debug, Default)]
pub struct VolumeSources {
    /// Every PersistentVolume written, for the native snapshots.
    pub persistent_volumes: Vec<Value>,
    /// Every pod written, for the file-level backups of their volumes.
    pub pods: Vec<Value>,
    /// Every PersistentVolumeClaim written, for the volume policies and CSI snapshots.
    pub claims: Vec<Value>,
}

/// What the actions that apply to `resource` note of the namespaced `object`.
pub fn note_needs(resource: &GroupResource, object: &DynamicObject, needed: &mut Needed) {
    for action in ACTIONS.iter().filter(|a| a.applies_to(resource)) {
        action.needs(resource, object, needed);
    }
}

/// Why `object` of `resource` is never backed up, if an action says so.
pub fn left_out(
    resource: &GroupResource,
    object: &DynamicObject,
    ferry: &FerrySecrets,
) -> Option<String> {
    ACTIONS
        .iter()
        .filter(|a| a.applies_to(resource))
        .find_map(|a| a.left_out(object, ferry))
}

/// Whether an action that applies to `resource` needs the cluster-scoped `object`.
pub fn is_needed(resource: &GroupResource, object: &DynamicObject, needed: &mut Needed) -> bool {
    ACTIONS
        .iter()
        .filter(|a| a.applies_to(resource))
        .any(|a| a.needed(object, needed))
}

/// Hands a written `object` to the actions that apply to `resource`.
pub fn note_written(
    resource: &GroupResource,
    object: &DynamicObject,
    sources: &mut VolumeSources,
) -> serde_json::Result<()> {
    for action in ACTIONS.iter().filter(|a| a.applies_to(resource)) {
        action.written(object, sources)?;
    }
    Ok(())
}

/// The string at `pointer` in `object`'s body.
fn text<'a>(object: &'a DynamicObject, pointer: &str) -> Option<&'a str> {
    object.data.pointer(pointer).and_then(Value::as_str)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An object of `api_version`/`kind` named `namespace/name` (or `name`), with `data`.
    pub fn object(namespace: Option<&str>, name: &str, data: Value) -> DynamicObject {
        let mut object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Object",
            "metadata": {"name": name, "namespace": namespace},
        }))
        .unwrap();
        object.data = data;
        object
    }

    #[test]
    fn each_resource_meets_only_its_actions() {
        let resources = [
            ("namespaces", ""),
            ("persistentvolumeclaims", ""),
            ("persistentvolumes", ""),
            ("pods", ""),
            ("serviceaccounts", ""),
            ("clusterrolebindings", "rbac.authorization.k8s.io"),
            ("clusterroles", "rbac.authorization.k8s.io"),
            ("widgets", "example.com"),
            ("customresourcedefinitions", "apiextensions.k8s.io"),
            ("secrets", ""),
        ];
        for (resource, group) in resources {
            let applying = ACTIONS
                .iter()
                .filter(|a| a.applies_to(&GroupResource::new(resource, group)))
                .count();
            // Its own, and the exclusion label, which every object meets.
            assert_eq!(applying, 2, "{resource}.{group}");
        }
        for (resource, group) in [
            ("configmaps", ""),
            ("services", ""),
            ("deployments", "apps"),
            ("rolebindings", "rbac.authorization.k8s.io"),
            ("ingresses", "networking.k8s.io"),
        ] {
            let applying = ACTIONS
                .iter()
                .filter(|a| a.applies_to(&GroupResource::new(resource, group)))
                .count();
            assert_eq!(applying, 1, "{resource}.{group}");
        }
    }
}
