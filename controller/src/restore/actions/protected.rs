//! What a restore leaves alone unless the Restore names it: bindings to cluster-admin or to a
//! `system:` role, admission webhooks, and objects in `kube-system` or in Ferry's own namespace.
//! Restoring any of them hands the cluster (or Ferry) to whoever wrote the backup, or the bucket.
//! Users who want one back name its resource in `includedResources`, or its namespace in
//! `includedNamespaces`. They are skipped with a reason that says so.

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, Planning, Verdict, text};
use crate::resources::names_resource;

const RBAC: &str = "rbac.authorization.k8s.io";
/// The cluster's own namespace.
const KUBE_SYSTEM: &str = "kube-system";

pub struct Protected;

impl ItemAction for Protected {
    fn applies_to(&self, _: &GroupResource) -> bool {
        true
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        let resource = &planning.item.resource;
        let scope = planning.scope;
        let named = scope
            .named_resources
            .iter()
            .any(|name| names_resource(name, resource));
        if !named && let Some(reason) = protected_kind(resource, object) {
            return Verdict::Skip(format!(
                "{reason}; a restore leaves it alone unless includedResources names {resource}"
            ));
        }
        // After namespace mapping: where it would land.
        let namespace = if resource.is("namespaces", "") {
            text(object, "/metadata/name")
        } else {
            text(object, "/metadata/namespace")
        };
        if let Some(namespace) = namespace
            && (namespace == KUBE_SYSTEM || namespace == scope.ferry_namespace)
            && !scope
                .named_namespaces
                .iter()
                .any(|named| named == namespace)
        {
            return Verdict::Skip(format!(
                "namespace {namespace} is the cluster's own or Ferry's; a restore leaves it alone unless includedNamespaces names it"
            ));
        }
        Verdict::Restore
    }
}

/// Why an object of `resource` is protected by its kind, if it is.
fn protected_kind(resource: &GroupResource, object: &Value) -> Option<String> {
    if resource.is("clusterrolebindings", RBAC) || resource.is("rolebindings", RBAC) {
        let role = text(object, "/roleRef/name")?;
        return (role == "cluster-admin" || role.starts_with("system:"))
            .then(|| format!("it binds {role}"));
    }
    let webhooks = resource.is(
        "validatingwebhookconfigurations",
        "admissionregistration.k8s.io",
    ) || resource.is(
        "mutatingwebhookconfigurations",
        "admissionregistration.k8s.io",
    );
    webhooks.then(|| "an admission webhook sees (or changes) every request it matches".to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use ferry_protocol::layout::ArchiveItem;
    use serde_json::json;

    fn act(
        resource: GroupResource,
        object: &mut Value,
        named_resources: &[String],
        named_namespaces: &[String],
    ) -> Verdict {
        let item = ArchiveItem {
            resource,
            namespace: text(object, "/metadata/namespace").map(str::to_owned),
            name: text(object, "/metadata/name")
                .unwrap_or_default()
                .to_owned(),
        };
        let mapping = Default::default();
        testing::with(false, &mapping, &|_, _| false, |scope| {
            let scope = actions_scope(scope, named_resources, named_namespaces);
            let mut planning = Planning {
                item: &item,
                scope: &scope,
                effects: Vec::new(),
            };
            Protected.act(object, &mut planning)
        })
    }

    fn actions_scope<'a>(
        scope: &super::super::Scope<'a>,
        named_resources: &'a [String],
        named_namespaces: &'a [String],
    ) -> super::super::Scope<'a> {
        super::super::Scope {
            named_resources,
            named_namespaces,
            ..*scope
        }
    }

    fn binding(role: &str) -> Value {
        json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": role}})
    }

    fn skipped(verdict: Verdict) -> String {
        match verdict {
            Verdict::Skip(reason) => reason,
            other => panic!("not skipped: {other:?}"),
        }
    }

    #[test]
    fn bindings_to_cluster_admin_and_system_roles_need_to_be_named() {
        let bindings = GroupResource::new("clusterrolebindings", RBAC);
        let reason = skipped(act(
            bindings.clone(),
            &mut binding("cluster-admin"),
            &[],
            &[],
        ));
        assert!(
            reason.contains("cluster-admin")
                && reason.contains("includedResources names clusterrolebindings"),
            "{reason}"
        );
        skipped(act(bindings.clone(), &mut binding("system:node"), &[], &[]));
        assert_eq!(
            act(bindings.clone(), &mut binding("shop-reader"), &[], &[]),
            Verdict::Restore
        );
        let named = ["clusterrolebindings.rbac.authorization.k8s.io".to_owned()];
        assert_eq!(
            act(bindings, &mut binding("cluster-admin"), &named, &[]),
            Verdict::Restore
        );
        let role_bindings = GroupResource::new("rolebindings", RBAC);
        let mut namespaced = binding("cluster-admin");
        namespaced["metadata"]["namespace"] = json!("shop");
        skipped(act(role_bindings, &mut namespaced, &[], &[]));
    }

    #[test]
    fn admission_webhooks_need_to_be_named() {
        let webhooks = GroupResource::new(
            "mutatingwebhookconfigurations",
            "admissionregistration.k8s.io",
        );
        let mut object = json!({"metadata": {"name": "inject"}});
        skipped(act(webhooks.clone(), &mut object, &[], &[]));
        let named = ["mutatingwebhookconfigurations.admissionregistration.k8s.io".to_owned()];
        assert_eq!(act(webhooks, &mut object, &named, &[]), Verdict::Restore);
    }

    #[test]
    fn the_clusters_and_ferrys_namespaces_need_to_be_named() {
        let configmaps = GroupResource::new("configmaps", "");
        for namespace in ["kube-system", "ferry-system"] {
            let mut object = json!({"metadata": {"name": "c", "namespace": namespace}});
            let reason = skipped(act(configmaps.clone(), &mut object, &[], &[]));
            assert!(reason.contains("includedNamespaces"), "{reason}");
            let named = [namespace.to_owned()];
            assert_eq!(
                act(configmaps.clone(), &mut object, &[], &named),
                Verdict::Restore
            );
            let mut namespace_object = json!({"metadata": {"name": namespace}});
            skipped(act(
                GroupResource::new("namespaces", ""),
                &mut namespace_object,
                &[],
                &[],
            ));
        }
        let mut object = json!({"metadata": {"name": "c", "namespace": "shop"}});
        assert_eq!(act(configmaps, &mut object, &[], &[]), Verdict::Restore);
    }
}
