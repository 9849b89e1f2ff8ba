//! Restore hooks of a pod (see `crate::hooks`): its init-container hooks go into its spec, after
//! Ferry's `ferry-restore-wait` (so they see the restored volumes) and before the pod's own init
//! containers; its exec hooks come back as an effect, run by the restore once the pod is up.

use std::collections::BTreeMap;

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{Effect, ItemAction, Planning, Verdict};

pub struct RestoreHooks;

impl ItemAction for RestoreHooks {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("pods", "")
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        let strings = |pointer: &str| -> BTreeMap<String, String> {
            object
                .pointer(pointer)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default()
        };
        let (labels, annotations) = (
            strings("/metadata/labels"),
            strings("/metadata/annotations"),
        );
        let namespace = planning.item.namespace.as_deref().unwrap_or_default();
        let hooks = match planning
            .scope
            .hooks
            .for_pod(namespace, &labels, &annotations)
        {
            Ok(hooks) => hooks,
            Err(problem) => {
                // The pod is restored as it was backed up; only its hooks are left out.
                planning.effects.push(Effect::HookProblem(format!(
                    "restore hooks not run: {problem}"
                )));
                return Verdict::Restore;
            }
        };
        // An init container that names no volume mounts sees what the pod's first container sees.
        let first_mounts = object
            .pointer("/spec/containers/0/volumeMounts")
            .cloned()
            .unwrap_or(Value::Null);
        if !hooks.init_containers.is_empty()
            && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
        {
            let init = spec
                .entry("initContainers")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(init) = init {
                let after_wait = usize::from(
                    init.first()
                        .and_then(|c| c.get("name"))
                        .and_then(Value::as_str)
                        == Some("ferry-restore-wait"),
                );
                for (i, container) in hooks.init_containers.iter().enumerate() {
                    let mut container = serde_json::to_value(container).unwrap_or_default();
                    if container.get("volumeMounts").is_none() && !first_mounts.is_null() {
                        container["volumeMounts"] = first_mounts.clone();
                    }
                    init.insert(after_wait + i, container);
                }
            }
        }
        if !hooks.exec.is_empty() {
            planning.effects.push(Effect::ExecHooks);
        }
        Verdict::Restore
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use ferry_protocol::layout::ArchiveItem;
    use serde_json::json;

    fn with_scope<R>(run: impl FnOnce(&super::super::Scope) -> R) -> R {
        testing::with(false, &BTreeMap::new(), &|_, _| false, run)
    }

    #[test]
    fn init_hooks_go_after_the_restore_wait_and_exec_hooks_are_asked_for() {
        let mut pod = json!({
            "metadata": {"name": "db-0", "namespace": "shop", "annotations": {
                "init.hook.restore.velero.io/container-image": "busybox",
                "init.hook.restore.velero.io/command": "touch /data/ready",
                "post.hook.restore.ferry.dev/command": "echo up",
            }},
            "spec": {"initContainers": [{"name": "ferry-restore-wait"}, {"name": "own"}],
                     "containers": [{"name": "db", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]},
        });
        let item = ArchiveItem {
            resource: GroupResource::new("pods", ""),
            namespace: Some("shop".to_owned()),
            name: "db-0".to_owned(),
        };
        let effects = with_scope(|scope| {
            let mut planning = Planning {
                item: &item,
                scope,
                effects: Vec::new(),
            };
            assert_eq!(RestoreHooks.act(&mut pod, &mut planning), Verdict::Restore);
            planning.effects
        });
        let names: Vec<&str> = pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["ferry-restore-wait", "restore-hook", "own"]);
        assert_eq!(
            pod["spec"]["initContainers"][1]["command"],
            json!(["touch", "/data/ready"])
        );
        assert_eq!(
            pod["spec"]["initContainers"][1]["volumeMounts"],
            json!([{"name": "data", "mountPath": "/data"}])
        );
        assert_eq!(effects, [Effect::ExecHooks]);

        // A malformed annotation: the pod is restored as it was, and the problem reported.
        let mut bad = json!({"metadata": {"name": "x", "annotations": {
            "post.hook.restore.ferry.dev/command": "echo 'open"}}, "spec": {"containers": []}});
        let before = bad.clone();
        let effects = with_scope(|scope| {
            let mut planning = Planning {
                item: &item,
                scope,
                effects: Vec::new(),
            };
            assert_eq!(RestoreHooks.act(&mut bad, &mut planning), Verdict::Restore);
            planning.effects
        });
        assert_eq!(bad, before);
        assert!(
            matches!(&effects[..], [Effect::HookProblem(p)] if p.contains("post.hook.restore.ferry.dev/command"))
        );
    }
}
