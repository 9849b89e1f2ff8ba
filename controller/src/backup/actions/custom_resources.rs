//! Custom resources: an object of a custom type needs the CustomResourceDefinition of its type.

use ferry_protocol::layout::GroupResource;
use kube::ResourceExt;
use kube::api::DynamicObject;

use super::{ItemAction, Needed};

/// Objects of a type some CRD defines: its group is a domain outside Kubernetes' own `*.k8s.io`.
pub struct CustomResource;

impl ItemAction for CustomResource {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.group.contains('.') && !resource.group.ends_with(".k8s.io")
    }

    /// The CRD is named after the type: `plural.group`.
    fn needs(&self, resource: &GroupResource, _: &DynamicObject, needed: &mut Needed) {
        needed.crds.insert(resource.to_string());
    }
}

pub struct CustomResourceDefinition;

impl ItemAction for CustomResourceDefinition {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("customresourcedefinitions", "apiextensions.k8s.io")
    }

    fn needed(&self, object: &DynamicObject, needed: &mut Needed) -> bool {
        needed.crds.contains(&object.name_any())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::object;
    use super::*;
    use serde_json::json;

    #[test]
    fn a_custom_object_needs_the_crd_of_its_type() {
        let widgets = GroupResource::new("widgets", "example.com");
        assert!(CustomResource.applies_to(&widgets));
        // Kubernetes' own groups and the core group are not custom.
        for builtin in [
            GroupResource::new("ingresses", "networking.k8s.io"),
            GroupResource::new("deployments", "apps"),
            GroupResource::new("configmaps", ""),
        ] {
            assert!(!CustomResource.applies_to(&builtin), "{builtin}");
        }
        let mut needed = Needed::default();
        CustomResource.needs(
            &widgets,
            &object(Some("shop"), "w1", json!({})),
            &mut needed,
        );
        let crd = |name: &str| object(None, name, json!({}));
        assert!(CustomResourceDefinition.needed(&crd("widgets.example.com"), &mut needed));
        assert!(!CustomResourceDefinition.needed(&crd("gadgets.example.com"), &mut needed));
    }
}
