//! PersistentVolumeClaims: the binding annotations of the source cluster are removed, and a claim
//! keeps its volume only when that volume is restored too (under its new name, if it got one);
//! otherwise the cluster provisions one: from the backup's CSI snapshot when it has one (the
//! claim's `dataSource`), else empty.

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
            Some(VolumePlan::FromCsiSnapshot {
                volume_snapshot,
                restore_size,
            }) => from_snapshot(object, volume_snapshot, *restore_size),
            Some(VolumePlan::Skip(_) | VolumePlan::Fail(_)) => {
                remove(object, "/spec", "volumeName")
            }
            _ => {}
        }
        Verdict::Restore
    }
}

/// Makes the claim's new volume come from VolumeSnapshot `name`, no smaller than the snapshot.
fn from_snapshot(object: &mut Value, name: &str, restore_size: Option<i64>) {
    remove(object, "/spec", "volumeName");
    // The API server keeps dataSourceRef equal to dataSource; the old ones named the source's.
    remove(object, "/spec", "dataSourceRef");
    object["spec"]["dataSource"] = serde_json::json!({
        "apiGroup": "snapshot.storage.k8s.io",
        "kind": "VolumeSnapshot",
        "name": name,
    });
    let requested = text(object, "/spec/resources/requests/storage")
        .and_then(|q| crate::volumes::policy::parse_quantity(q).ok());
    if let Some(size) = restore_size
        && requested.is_none_or(|requested| requested < size)
    {
        object["spec"]["resources"]["requests"]["storage"] = Value::String(size.to_string());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::restore::actions::{Scope, testing};

    fn claim_with(plans: &BTreeMap<String, VolumePlan>, mut claim: Value) -> Value {
        let verdict = testing::with(false, &BTreeMap::new(), &|_, _| true, |scope| {
            let scope = Scope {
                volume_plans: plans,
                ..*scope
            };
            testing::act(
                &PersistentVolumeClaim,
                GroupResource::new("persistentvolumeclaims", ""),
                &mut claim,
                &scope,
            )
        });
        assert_eq!(verdict, Verdict::Restore);
        claim
    }

    #[test]
    fn a_claim_whose_volume_has_a_csi_snapshot_is_provisioned_from_it() {
        let plans = BTreeMap::from([(
            "pv-1".to_owned(),
            VolumePlan::FromCsiSnapshot {
                volume_snapshot: "ferry-pv-1-abc".to_owned(),
                restore_size: Some(2 << 30),
            },
        )]);
        let claim = claim_with(
            &plans,
            json!({
                "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                "spec": {
                    "volumeName": "pv-1",
                    "resources": {"requests": {"storage": "1Gi"}},
                    "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "seed"},
                },
            }),
        );
        assert_eq!(claim["spec"].get("volumeName"), None);
        assert_eq!(claim["spec"].get("dataSourceRef"), None);
        assert_eq!(
            claim["spec"]["dataSource"],
            json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "ferry-pv-1-abc"})
        );
        // Never smaller than the snapshot; a larger request stays.
        assert_eq!(
            claim["spec"]["resources"]["requests"]["storage"],
            "2147483648"
        );
        let larger = claim_with(
            &plans,
            json!({"spec": {"volumeName": "pv-1", "resources": {"requests": {"storage": "5Gi"}}}}),
        );
        assert_eq!(larger["spec"]["resources"]["requests"]["storage"], "5Gi");
        assert_eq!(larger["spec"]["dataSource"]["name"], "ferry-pv-1-abc");
    }
}
