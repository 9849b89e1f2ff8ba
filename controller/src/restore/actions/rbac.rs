//! RoleBindings and ClusterRoleBindings: a ServiceAccount bound in a mapped namespace is the one
//! restored there.

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, Planning, Verdict};

pub struct BindingSubjects;

impl ItemAction for BindingSubjects {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("rolebindings", "rbac.authorization.k8s.io")
            || resource.is("clusterrolebindings", "rbac.authorization.k8s.io")
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        if let Some(subjects) = object
            .pointer_mut("/subjects")
            .and_then(Value::as_array_mut)
        {
            for subject in subjects {
                let mapped = subject
                    .get("namespace")
                    .and_then(Value::as_str)
                    .map(|ns| planning.scope.target_namespace(ns));
                if let Some(namespace) = mapped {
                    subject["namespace"] = Value::String(namespace);
                }
            }
        }
        Verdict::Restore
    }
}
