//! Strategic merge patches on the built-in kinds, as `kubectl patch --type strategic` applies
//! them: maps merge, `null` removes a field, lists of the built-in types that have a merge key
//! (containers and volumes by name, volume mounts by mount path, ...) merge element by element,
//! and every other list is replaced. The directives `$patch: replace | delete | merge`,
//! `$deleteFromPrimitiveList/<field>` and `$retainKeys` are honoured; `$setElementOrder/<field>`
//! only orders, and is ignored.
//!
//! The API server knows a kind's merge keys from its Go types; Ferry knows them for the built-in
//! kinds only, by field name ([`merge_key`]). Custom resources have none (the API server refuses
//! strategic merge patches on them too): their lists are replaced, and a merge patch says the
//! same more plainly.

use serde_json::{Map, Value};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Applies `patch` to `object`.
pub fn apply(object: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Object(patch) = patch else {
        return Err("the patch must be a map".to_owned());
    };
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    let Value::Object(target) = object else {
        unreachable!("made a map above")
    };
    merge_map(target, patch, None)
}

/// How a list field merges: by a key of its elements, as a set of scalars, or not at all.
enum ListMerge {
    ByKey(&'static str),
    Set,
}

/// The merge strategy of list `field` of a map that is an element of list `parent`.
fn merge_key(field: &str, parent: Option<&str>) -> Option<ListMerge> {
    Some(ListMerge::ByKey(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports"
            if matches!(
                parent,
                Some("containers" | "initContainers" | "ephemeralContainers")
            ) =>
        {
            "containerPort"
        }
        "ports" => "port",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "finalizers" => return Some(ListMerge::Set),
        _ => return None,
    }))
}

/// `parent`: the list field whose element `target` is, if it is one.
fn merge_map(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    parent: Option<&str>,
) -> Result<(), String> {
    match patch.get(PATCH).and_then(Value::as_str) {
        Some("replace") => {
            *target = without_directives(patch);
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown $patch directive {other:?}")),
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let Value::Array(doomed) = value else {
                return Err(format!("{key} must be a list"));
            };
            if let Some(Value::Array(list)) = target.get_mut(field) {
                list.retain(|v| !doomed.contains(v));
            }
            continue;
        }
        if key.starts_with(SET_ELEMENT_ORDER) || key == PATCH || key == RETAIN_KEYS {
            continue;
        }
        if key.starts_with('$') {
            return Err(format!("unknown directive {key:?}"));
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                if inner.get(PATCH).and_then(Value::as_str) == Some("delete") {
                    target.remove(key);
                    continue;
                }
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(slot) = slot {
                    merge_map(slot, inner, parent)?;
                }
            }
            Value::Array(items) => {
                let merged = match (merge_key(key, parent), target.get(key)) {
                    (Some(strategy), Some(Value::Array(current))) => {
                        merge_list(current.clone(), items, strategy, key)?
                    }
                    _ => items
                        .iter()
                        .filter(|item| item.get(PATCH).is_none())
                        .map(strip_directives)
                        .collect(),
                };
                target.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                target.insert(key.clone(), scalar.clone());
            }
        }
    }
    if let Some(Value::Array(keep)) = patch.get(RETAIN_KEYS) {
        target.retain(|key, _| keep.iter().any(|k| k.as_str() == Some(key)));
    }
    Ok(())
}

fn merge_list(
    mut current: Vec<Value>,
    patch: &[Value],
    strategy: ListMerge,
    field: &str,
) -> Result<Vec<Value>, String> {
    if patch
        .iter()
        .any(|item| item.get(PATCH).and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|item| item.get(PATCH).is_none())
            .map(strip_directives)
            .collect());
    }
    match strategy {
        ListMerge::Set => {
            for item in patch {
                if !current.contains(item) {
                    current.push(item.clone());
                }
            }
        }
        ListMerge::ByKey(key) => {
            for item in patch {
                let Some(wanted) = item.get(key) else {
                    return Err(format!(
                        "an element of {field} has no {key:?}, the key its elements merge by"
                    ));
                };
                let at = current.iter().position(|c| c.get(key) == Some(wanted));
                let delete = item.get(PATCH).and_then(Value::as_str) == Some("delete");
                match (at, item) {
                    (Some(at), _) if delete => {
                        current.remove(at);
                    }
                    (None, _) if delete => {}
                    (Some(at), Value::Object(item)) => {
                        if let Value::Object(existing) = &mut current[at] {
                            merge_map(existing, item, Some(field))?;
                        }
                    }
                    (None, item) => current.push(strip_directives(item)),
                    (Some(at), item) => current[at] = item.clone(),
                }
            }
        }
    }
    Ok(current)
}

fn without_directives(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(key, _)| !key.starts_with('$'))
        .map(|(key, value)| (key.clone(), strip_directives(value)))
        .collect()
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(without_directives(map)),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "metadata": {"name": "web", "finalizers": ["a"]},
            "spec": {"replicas": 3, "template": {"spec": {
                "containers": [
                    {"name": "nginx", "image": "nginx:1", "ports": [{"containerPort": 80, "name": "http"}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "sidecar", "image": "busybox"}
                ],
                "tolerations": [{"key": "x"}],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }}}
        })
    }

    #[test]
    fn containers_merge_by_name_and_other_lists_are_replaced() {
        let mut object = deployment();
        apply(
            &mut object,
            &json!({"spec": {"replicas": 1, "template": {"spec": {
                "containers": [
                    {"name": "nginx", "image": "repo2/nginx:2", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                     "ports": [{"containerPort": 80, "name": "web"}]},
                    {"name": "sidecar", "$patch": "delete"},
                    {"name": "new", "image": "alpine"}
                ],
                "tolerations": [{"key": "y"}]
            }}}}),
        )
        .unwrap();
        let spec = &object["spec"]["template"]["spec"];
        assert_eq!(object["spec"]["replicas"], 1);
        assert_eq!(
            spec["containers"],
            json!([
                {"name": "nginx", "image": "repo2/nginx:2", "ports": [{"containerPort": 80, "name": "web"}],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
                {"name": "new", "image": "alpine"}
            ])
        );
        assert_eq!(spec["tolerations"], json!([{"key": "y"}]));
        assert_eq!(spec["volumes"], json!([{"name": "data", "emptyDir": {}}]));
    }

    #[test]
    fn directives_replace_delete_and_retain() {
        let mut object = deployment();
        apply(
            &mut object,
            &json!({
                "metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]},
                "spec": {"template": {"spec": {
                    "volumes": [{"$patch": "replace"}, {"name": "cache", "emptyDir": {}}],
                    "$setElementOrder/volumes": [{"name": "cache"}]
                }}, "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}
            }),
        )
        .unwrap();
        assert_eq!(object["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(
            object["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "cache", "emptyDir": {}}])
        );
        assert_eq!(object["spec"]["strategy"], json!({"type": "Recreate"}));
        apply(
            &mut object,
            &json!({"spec": {"template": {"$patch": "delete"}}}),
        )
        .unwrap();
        assert_eq!(object["spec"].get("template"), None);
    }

    #[test]
    fn service_ports_merge_by_port_and_bad_patches_are_refused() {
        let mut service =
            json!({"spec": {"ports": [{"port": 80, "nodePort": 30080}, {"port": 443}]}});
        apply(
            &mut service,
            &json!({"spec": {"ports": [{"port": 80, "nodePort": 31080}]}}),
        )
        .unwrap();
        assert_eq!(
            service["spec"]["ports"],
            json!([{"port": 80, "nodePort": 31080}, {"port": 443}])
        );
        assert!(
            apply(&mut service, &json!({"spec": {"ports": [{"name": "x"}]}}))
                .unwrap_err()
                .contains("\"port\"")
        );
        assert!(
            apply(&mut service, &json!({"$frob": 1}))
                .unwrap_err()
                .contains("$frob")
        );
        assert!(apply(&mut service, &json!([1])).is_err());
    }
}
