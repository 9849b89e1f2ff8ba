//! PersistentVolumes: the claim they were bound to is named in the target namespace, without the
//! source cluster's uid; one whose disk came back from a snapshot points at the new disk (under a
//! new name when its own is taken); one that is not restored is skipped, and its claim gets a new
//! volume from its StorageClass.

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, Planning, Verdict, remove, text};
use crate::restore::{ORIGINAL_PV_NAME_ANNOTATION, VolumePlan};

pub struct PersistentVolume;

impl ItemAction for PersistentVolume {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("persistentvolumes", "")
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        for field in ["uid", "resourceVersion"] {
            remove(object, "/spec/claimRef", field);
        }
        if let Some(namespace) =
            text(object, "/spec/claimRef/namespace").map(|ns| planning.scope.target_namespace(ns))
        {
            object["spec"]["claimRef"]["namespace"] = Value::String(namespace);
        }
        match planning.scope.volume_plans.get(&planning.item.name) {
            Some(VolumePlan::FromSnapshot {
                volume_id,
                from_zone,
                zone,
                rename,
            }) => {
                crate::ebs::rewrite_volume(object, volume_id, from_zone, zone);
                if let Some(rename) = rename {
                    object["metadata"]["name"] = Value::String(rename.clone());
                    let annotations = object["metadata"].as_object_mut().map(|m| {
                        m.entry("annotations")
                            .or_insert_with(|| serde_json::json!({}))
                    });
                    if let Some(Value::Object(annotations)) = annotations {
                        annotations.insert(
                            ORIGINAL_PV_NAME_ANNOTATION.to_owned(),
                            Value::String(planning.item.name.clone()),
                        );
                    }
                }
                Verdict::Restore
            }
            Some(VolumePlan::FromCsiSnapshot {
                volume_snapshot, ..
            }) => Verdict::Skip(format!(
                "its claim gets a new volume from the backup's CSI snapshot, through VolumeSnapshot {volume_snapshot}"
            )),
            Some(VolumePlan::Skip(reason)) => Verdict::Skip(reason.clone()),
            Some(VolumePlan::Fail(reason)) => Verdict::Fail(reason.clone()),
            None => Verdict::Restore,
        }
    }
}
