//! `storageClassMapping`: volumes of one StorageClass come back with another (a cluster that
//! names its classes differently, or a clone on cheaper disks): PersistentVolumes, claims (their
//! field and the beta annotation) and StatefulSets' volume claim templates.

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, Planning, Verdict};

/// The annotation claims used before `spec.storageClassName`; the API server still honours it.
const BETA_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

pub struct StorageClass;

impl ItemAction for StorageClass {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("persistentvolumes", "")
            || resource.is("persistentvolumeclaims", "")
            || resource.is("statefulsets", "apps")
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        let mapping = planning.scope.storage_class_mapping;
        if mapping.is_empty() {
            return Verdict::Restore;
        }
        let map = |slot: Option<&mut Value>| {
            if let Some(slot) = slot
                && let Some(new) = slot.as_str().and_then(|old| mapping.get(old))
            {
                *slot = Value::String(new.clone());
            }
        };
        if planning.item.resource.is("statefulsets", "apps") {
            if let Some(Value::Array(templates)) = object.pointer_mut("/spec/volumeClaimTemplates")
            {
                for template in templates {
                    map(template.pointer_mut("/spec/storageClassName"));
                    map(template.pointer_mut(
                        "/metadata/annotations/volume.beta.kubernetes.io~1storage-class",
                    ));
                }
            }
        } else {
            map(object.pointer_mut("/spec/storageClassName"));
            map(object.pointer_mut(&format!(
                "/metadata/annotations/{}",
                BETA_ANNOTATION.replace('/', "~1")
            )));
        }
        Verdict::Restore
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::restore::actions::{Scope, testing};

    fn mapped(resource: GroupResource, mut object: Value) -> Value {
        let mapping = BTreeMap::from([("fast".to_owned(), "cheap".to_owned())]);
        let verdict = testing::with(false, &BTreeMap::new(), &|_, _| false, |scope| {
            let scope = Scope {
                storage_class_mapping: &mapping,
                ..*scope
            };
            testing::act(&StorageClass, resource, &mut object, &scope)
        });
        assert_eq!(verdict, Verdict::Restore);
        object
    }

    #[test]
    fn claims_volumes_and_claim_templates_change_class() {
        let claim = mapped(
            GroupResource::new("persistentvolumeclaims", ""),
            json!({"metadata": {"annotations": {BETA_ANNOTATION: "fast"}}, "spec": {"storageClassName": "fast"}}),
        );
        assert_eq!(claim["spec"]["storageClassName"], "cheap");
        assert_eq!(claim["metadata"]["annotations"][BETA_ANNOTATION], "cheap");
        let volume = mapped(
            GroupResource::new("persistentvolumes", ""),
            json!({"spec": {"storageClassName": "other"}}),
        );
        assert_eq!(volume["spec"]["storageClassName"], "other");
        let set = mapped(
            GroupResource::new("statefulsets", "apps"),
            json!({"spec": {"volumeClaimTemplates": [
                {"metadata": {"name": "data"}, "spec": {"storageClassName": "fast"}},
                {"metadata": {"name": "logs"}, "spec": {}}
            ]}}),
        );
        assert_eq!(
            set["spec"]["volumeClaimTemplates"],
            json!([
                {"metadata": {"name": "data"}, "spec": {"storageClassName": "cheap"}},
                {"metadata": {"name": "logs"}, "spec": {}}
            ])
        );
    }
}
