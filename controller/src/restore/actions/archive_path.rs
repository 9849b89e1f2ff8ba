//! Every object: its body must name what its archive path names. A restore's filters read the
//! path, and the API server reads the body. A body that disagrees could put an object where no
//! filter lets it: a ClusterRoleBinding stored under an included namespace's path, or a ConfigMap
//! whose body names another namespace. Such an object is refused. A namespaced object whose body
//! names no namespace gets its path's. (That the cluster serves the resource at the path's scope
//! is checked when it is created.)

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, Planning, Verdict, text};

pub struct ArchivePath;

impl ItemAction for ArchivePath {
    fn applies_to(&self, _: &GroupResource) -> bool {
        true
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        let item = planning.item;
        let refused = |what: String| {
            Verdict::Fail(format!(
                "{what}, but its archive path is {}: refused",
                item.path()
            ))
        };
        let name = text(object, "/metadata/name").unwrap_or_default();
        if name != item.name {
            return refused(format!("its body names it {name:?}"));
        }
        let namespace = text(object, "/metadata/namespace").filter(|n| !n.is_empty());
        match (&item.namespace, namespace) {
            (Some(path), Some(body)) if path == body => Verdict::Restore,
            (None, None) => Verdict::Restore,
            (Some(path), None) => {
                let path = Value::String(path.clone());
                match object
                    .pointer_mut("/metadata")
                    .and_then(Value::as_object_mut)
                {
                    Some(metadata) => {
                        metadata.insert("namespace".to_owned(), path);
                        Verdict::Restore
                    }
                    None => refused("it has no metadata".to_owned()),
                }
            }
            (_, Some(body)) => refused(format!("its body puts it in namespace {body:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use ferry_protocol::layout::ArchiveItem;
    use serde_json::json;

    fn act(item: &ArchiveItem, object: &mut Value) -> Verdict {
        let mapping = Default::default();
        testing::with(false, &mapping, &|_, _| false, |scope| {
            let mut planning = Planning {
                item,
                scope,
                effects: Vec::new(),
            };
            ArchivePath.act(object, &mut planning)
        })
    }

    fn item(resource: &str, group: &str, namespace: Option<&str>, name: &str) -> ArchiveItem {
        ArchiveItem {
            resource: GroupResource::new(resource, group),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    #[test]
    fn a_body_that_agrees_with_its_path_is_restored() {
        let mut object = json!({"metadata": {"name": "app", "namespace": "shop"}});
        assert_eq!(
            act(&item("configmaps", "", Some("shop"), "app"), &mut object),
            Verdict::Restore
        );
        let mut object = json!({"metadata": {"name": "reader"}});
        let roles = item("clusterroles", "rbac.authorization.k8s.io", None, "reader");
        assert_eq!(act(&roles, &mut object), Verdict::Restore);
        // A namespaced body without its namespace gets the path's.
        let mut object = json!({"metadata": {"name": "app"}});
        assert_eq!(
            act(&item("configmaps", "", Some("shop"), "app"), &mut object),
            Verdict::Restore
        );
        assert_eq!(object["metadata"]["namespace"], "shop");
    }

    #[test]
    fn a_body_that_disagrees_with_its_path_is_refused() {
        let refused = |verdict: Verdict| match verdict {
            Verdict::Fail(reason) => reason,
            other => panic!("not refused: {other:?}"),
        };
        let elsewhere = refused(act(
            &item("configmaps", "", Some("shop"), "app"),
            &mut json!({"metadata": {"name": "app", "namespace": "kube-system"}}),
        ));
        assert!(
            elsewhere.contains("namespace \"kube-system\"")
                && elsewhere.contains("resources/configmaps/namespaces/shop/app.json"),
            "{elsewhere}"
        );
        let renamed = refused(act(
            &item("configmaps", "", Some("shop"), "app"),
            &mut json!({"metadata": {"name": "other", "namespace": "shop"}}),
        ));
        assert!(renamed.contains("\"other\""), "{renamed}");
        // A cluster-scoped path with a namespaced body.
        refused(act(
            &item("clusterroles", "rbac.authorization.k8s.io", None, "reader"),
            &mut json!({"metadata": {"name": "reader", "namespace": "shop"}}),
        ));
    }
}
