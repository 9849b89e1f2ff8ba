//! RBAC of the service accounts backed up: the ClusterRoleBindings that bind one of them, and the
//! ClusterRoles those bindings refer to, so that a restored application keeps its rights.

use ferry_protocol::layout::GroupResource;
use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::Value;

use super::{ItemAction, Needed, text};

const RBAC: &str = "rbac.authorization.k8s.io";

pub struct ServiceAccount;

impl ItemAction for ServiceAccount {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("serviceaccounts", "")
    }

    fn needs(&self, _: &GroupResource, object: &DynamicObject, needed: &mut Needed) {
        needed.service_accounts.insert(format!(
            "{}/{}",
            object.namespace().unwrap_or_default(),
            object.name_any()
        ));
    }
}

pub struct ClusterRoleBinding;

impl ItemAction for ClusterRoleBinding {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("clusterrolebindings", RBAC)
    }

    /// A binding of a service account backed up is needed, and so is the role it binds (roles
    /// are listed after bindings: types are sorted).
    fn needed(&self, object: &DynamicObject, needed: &mut Needed) -> bool {
        if !binds_service_account(object, needed) {
            return false;
        }
        if let Some(role) = text(object, "/roleRef/name") {
            needed.cluster_roles.insert(role.to_owned());
        }
        true
    }
}

pub struct ClusterRole;

impl ItemAction for ClusterRole {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("clusterroles", RBAC)
    }

    fn needed(&self, object: &DynamicObject, needed: &mut Needed) -> bool {
        needed.cluster_roles.contains(&object.name_any())
    }
}

fn binds_service_account(binding: &DynamicObject, needed: &Needed) -> bool {
    let subjects = binding.data.pointer("/subjects").and_then(Value::as_array);
    let field = |subject: &Value, name: &str| -> String {
        subject
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    subjects.into_iter().flatten().any(|subject| {
        field(subject, "kind") == "ServiceAccount"
            && needed.service_accounts.contains(&format!(
                "{}/{}",
                field(subject, "namespace"),
                field(subject, "name")
            ))
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::object;
    use super::*;
    use serde_json::json;

    #[test]
    fn bindings_of_backed_up_service_accounts_bring_their_roles() {
        let mut needed = Needed::default();
        let accounts = GroupResource::new("serviceaccounts", "");
        ServiceAccount.needs(
            &accounts,
            &object(Some("shop"), "api", json!({})),
            &mut needed,
        );
        let binding = |namespace: &str, role: &str| {
            object(
                None,
                role,
                json!({
                    "roleRef": {"kind": "ClusterRole", "name": role},
                    "subjects": [
                        {"kind": "User", "name": "api"},
                        {"kind": "ServiceAccount", "namespace": namespace, "name": "api"},
                    ],
                }),
            )
        };
        assert!(ClusterRoleBinding.needed(&binding("shop", "reader"), &mut needed));
        // The same name in another namespace is another account.
        assert!(!ClusterRoleBinding.needed(&binding("billing", "admin"), &mut needed));
        assert!(ClusterRole.needed(&object(None, "reader", json!({})), &mut needed));
        assert!(!ClusterRole.needed(&object(None, "admin", json!({})), &mut needed));
    }
}
