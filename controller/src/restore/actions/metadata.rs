//! Every object: what the source cluster set on it (uid, resourceVersion, owners...) is removed,
//! its status unless `restoreStatus` keeps it, and its namespace is mapped.

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, Planning, Verdict};

/// Fields of `metadata` that only the source cluster could give an object.
const SERVER_FIELDS: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "ownerReferences",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

pub struct ServerFields;

impl ItemAction for ServerFields {
    fn applies_to(&self, _: &GroupResource) -> bool {
        true
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        if let Some(metadata) = object
            .pointer_mut("/metadata")
            .and_then(Value::as_object_mut)
        {
            for field in SERVER_FIELDS {
                metadata.remove(*field);
            }
            if let Some(Value::String(namespace)) = metadata.get("namespace") {
                let mapped = planning.scope.target_namespace(namespace);
                metadata.insert("namespace".into(), Value::String(mapped));
            }
        }
        if !planning.scope.keep_status
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        Verdict::Restore
    }
}
