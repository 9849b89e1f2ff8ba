//! Namespaces: a backup of some namespaces takes the Namespace objects of those it took objects
//! from (and of those it names exactly).

use ferry_protocol::layout::GroupResource;
use kube::ResourceExt;
use kube::api::DynamicObject;

use super::{ItemAction, Needed};

pub struct Namespace;

impl ItemAction for Namespace {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("namespaces", "")
    }

    fn needed(&self, object: &DynamicObject, needed: &mut Needed) -> bool {
        needed.namespaces.contains(&object.name_any())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::object;
    use super::*;

    #[test]
    fn only_namespaces_of_selected_objects_are_needed() {
        let mut needed = Needed::default();
        needed.namespaces.insert("shop".into());
        let empty = serde_json::json!({});
        assert!(Namespace.needed(&object(None, "shop", empty.clone()), &mut needed));
        assert!(!Namespace.needed(&object(None, "kube-system", empty), &mut needed));
    }
}
