//! Namespaces: restored under their mapped name; their spec (finalizers) is the cluster's.

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, Planning, Verdict, remove, text};

pub struct Namespace;

impl ItemAction for Namespace {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("namespaces", "")
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        if let Some(name) =
            text(object, "/metadata/name").map(|n| planning.scope.target_namespace(n))
        {
            object["metadata"]["name"] = Value::String(name);
        }
        remove(object, "", "spec");
        Verdict::Restore
    }
}
