//! PersistentVolumeClaims: the binding annotations of the source cluster are removed, and a claim
//! keeps its volume only when that volume is restored too (under its new name, if it got one);
//! otherwise the cluster provisions one.

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, Planning, Verdict, remove, text};
use crate::restore::VolumePlan;

/// Annotations the source cluster's volume binder set.
const BINDING_ANNOTATIONS: &[&str] = &[
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/selected-node",
];

pub struct PersistentVolumeClaim;

impl ItemAction for PersistentVolumeClaim {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("persistentvolumeclaims", "")
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        for annotation in BINDING_ANNOTATIONS {
            remove(object, "/metadata/annotations", annotation);
        }
        let Some(volume) = text(object, "/spec/volumeName").map(str::to_owned) else {
            return Verdict::Restore;
        };
        if !(planning.scope.in_archive)(&GroupResource::new("persistentvolumes", ""), &volume) {
            remove(object, "/spec", "volumeName");
            return Verdict::Restore;
        }
        match planning.scope.volume_plans.get(&volume) {
            Some(VolumePlan::FromSnapshot {
                rename: Some(rename),
                ..
            }) => object["spec"]["volumeName"] = Value::String(rename.clone()),
            Some(VolumePlan::Skip(_) | VolumePlan::Fail(_)) => {
                remove(object, "/spec", "volumeName")
            }
            _ => {}
        }
        Verdict::Restore
    }
}
