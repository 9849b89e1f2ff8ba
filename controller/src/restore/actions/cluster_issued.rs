//! Objects the cluster issues for itself: restoring them would clash with, or replace, the
//! cluster's own.

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, text};

/// Service-account token Secrets.
pub struct ServiceAccountTokens;

impl ItemAction for ServiceAccountTokens {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("secrets", "")
    }

    fn skip(&self, object: &Value) -> Option<&'static str> {
        (text(object, "/type") == Some("kubernetes.io/service-account-token"))
            .then_some("service-account tokens are issued anew by the cluster")
    }
}

/// The cluster's CA bundle, published into every namespace.
pub struct RootCaConfigMap;

impl ItemAction for RootCaConfigMap {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("configmaps", "")
    }

    fn skip(&self, object: &Value) -> Option<&'static str> {
        (text(object, "/metadata/name") == Some("kube-root-ca.crt"))
            .then_some("every namespace gets its own kube-root-ca.crt from the cluster")
    }
}
