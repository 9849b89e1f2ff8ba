//! Claims and their volumes: a claim needs the PersistentVolume it is bound to, and every
//! PersistentVolume and claim written is kept for the volume backups that follow the listing.

use ferry_protocol::layout::GroupResource;
use kube::ResourceExt;
use kube::api::DynamicObject;

use super::{ItemAction, Needed, VolumeSources, text};

pub struct PersistentVolumeClaim;

impl ItemAction for PersistentVolumeClaim {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("persistentvolumeclaims", "")
    }

    fn needs(&self, _: &GroupResource, object: &DynamicObject, needed: &mut Needed) {
        if let Some(volume) = text(object, "/spec/volumeName") {
            needed.persistent_volumes.insert(volume.to_owned());
        }
    }

    /// The volume policies read a claim's annotations.
    fn written(
        &self,
        object: &DynamicObject,
        sources: &mut VolumeSources,
    ) -> serde_json::Result<()> {
        sources.claims.push(serde_json::to_value(object)?);
        Ok(())
    }
}

pub struct PersistentVolume;

impl ItemAction for PersistentVolume {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("persistentvolumes", "")
    }

    fn needed(&self, object: &DynamicObject, needed: &mut Needed) -> bool {
        needed.persistent_volumes.contains(&object.name_any())
    }

    fn written(
        &self,
        object: &DynamicObject,
        sources: &mut VolumeSources,
    ) -> serde_json::Result<()> {
        sources
            .persistent_volumes
            .push(serde_json::to_value(object)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::object;
    use super::*;
    use serde_json::json;

    fn claims() -> GroupResource {
        GroupResource::new("persistentvolumeclaims", "")
    }

    #[test]
    fn a_bound_claim_needs_its_volume_and_an_unbound_one_nothing() {
        let mut needed = Needed::default();
        let bound = object(
            Some("shop"),
            "data",
            json!({"spec": {"volumeName": "pv-1"}}),
        );
        let pending = object(Some("shop"), "cache", json!({"spec": {}}));
        PersistentVolumeClaim.needs(&claims(), &bound, &mut needed);
        PersistentVolumeClaim.needs(&claims(), &pending, &mut needed);
        assert_eq!(needed.persistent_volumes.len(), 1);
        assert!(PersistentVolume.needed(&object(None, "pv-1", json!({})), &mut needed));
        assert!(!PersistentVolume.needed(&object(None, "pv-2", json!({})), &mut needed));
    }

    #[test]
    fn written_volumes_are_kept_for_the_snapshots() {
        let mut sources = VolumeSources::default();
        let pv = object(None, "pv-1", json!({"spec": {"hostPath": {"path": "/d"}}}));
        PersistentVolume.written(&pv, &mut sources).unwrap();
        assert_eq!(sources.persistent_volumes.len(), 1);
        assert_eq!(
            sources.persistent_volumes[0].pointer("/spec/hostPath/path"),
            Some(&json!("/d"))
        );
        assert_eq!(
            sources.persistent_volumes[0].pointer("/metadata/name"),
            Some(&json!("pv-1"))
        );
    }
}
