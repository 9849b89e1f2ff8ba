//! Secrets a backup never takes: Ferry's own (the agents' and the controller's TLS keys, the
//! repositories' password, the credentials its locations name), which would hand whoever reads
//! the bucket the keys to Ferry and to the bucket itself, and service-account tokens, which the
//! cluster issues again and a restore always skips.

use std::collections::BTreeSet;

use ferry_protocol::layout::GroupResource;
use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::Value;

use super::ItemAction;

/// Secrets of Ferry's namespace a backup leaves out, by name.
#[derive(Debug, Clone, Default)]
pub struct FerrySecrets {
    pub namespace: String,
    pub names: BTreeSet<String>,
}

pub struct Secret;

impl ItemAction for Secret {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("secrets", "")
    }

    fn left_out(&self, object: &DynamicObject, ferry: &FerrySecrets) -> Option<String> {
        if object.data.get("type").and_then(Value::as_str)
            == Some("kubernetes.io/service-account-token")
        {
            return Some("a service-account token, which the cluster issues again".to_owned());
        }
        let own = object.namespace().as_deref() == Some(ferry.namespace.as_str())
            && ferry.names.contains(&object.name_any());
        own.then(|| "Ferry's own key or credentials, which never go into a backup".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::object;
    use super::*;
    use serde_json::json;

    #[test]
    fn ferrys_own_secrets_and_service_account_tokens_are_left_out() {
        let ferry = FerrySecrets {
            namespace: "ferry-system".into(),
            names: ["ferry-repository-password".to_owned(), "cloud".to_owned()].into(),
        };
        let secret = |namespace: &str, name: &str, type_: &str| {
            object(Some(namespace), name, json!({"type": type_, "data": {}}))
        };
        for (namespace, name) in [
            ("ferry-system", "ferry-repository-password"),
            ("ferry-system", "cloud"),
        ] {
            assert!(
                Secret
                    .left_out(&secret(namespace, name, "Opaque"), &ferry)
                    .is_some(),
                "{namespace}/{name}"
            );
        }
        let token = secret("shop", "api-token", "kubernetes.io/service-account-token");
        assert!(Secret.left_out(&token, &ferry).unwrap().contains("token"));
        // The same names elsewhere are the application's.
        assert!(
            Secret
                .left_out(&secret("shop", "cloud", "Opaque"), &ferry)
                .is_none()
        );
        assert!(
            Secret
                .left_out(&secret("ferry-system", "app-config", "Opaque"), &ferry)
                .is_none()
        );
    }
}
