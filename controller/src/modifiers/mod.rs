//! Resource modifiers: rules that change objects as a restore creates them, in Velero's format
//! (`version: v1`, `resourceModifierRules`), kept in a ConfigMap of Ferry's namespace that a
//! Restore names (`spec.resourceModifier`). A Velero user's file carries over unchanged.
//!
//! A rule has conditions (group-resource glob, name regex, namespaces as backed up, label
//! selector, field matches) read on the object before any rule changed it, and patches: JSON
//! patches (RFC 6902), JSON merge patches (RFC 7396) and strategic merge patches
//! ([`strategic`]), applied in that order. A failed `test` operation leaves the object as it was,
//! as in Velero; any other failure fails the object, naming the rule.

use std::fmt;

use ferry_protocol::layout::GroupResource;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::resources::{IncludesExcludes, labels_of, parse_selector};

mod strategic;

/// The one version of the format there is.
const VERSION: &str = "v1";

/// The rules of one ConfigMap, checked and compiled.
#[derive(Debug, Default)]
pub struct ResourceModifiers {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    /// 1-based, as a user counts the rules in the file.
    number: usize,
    group_resource: Regex,
    group_resource_text: String,
    name: Option<Regex>,
    namespaces: Option<IncludesExcludes>,
    selector: Option<Selector>,
    matches: Vec<json_patch::PatchOperation>,
    patches: Vec<json_patch::PatchOperation>,
    merge_patches: Vec<Value>,
    strategic_patches: Vec<Value>,
}

/// A rule that failed on an object: which, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFailed {
    pub rule: usize,
    pub group_resource: String,
    pub reason: String,
}

impl fmt::Display for RuleFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "resource modifier rule {} (groupResource {}): {}",
            self.rule, self.group_resource, self.reason
        )
    }
}

// The file as written. Unknown fields are refused, as Velero does: a misspelt condition must not
// silently widen a rule.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    version: String,
    #[serde(default)]
    resource_modifier_rules: Vec<RuleText>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleText {
    conditions: Conditions,
    #[serde(default)]
    patches: Vec<JsonPatchText>,
    #[serde(default)]
    merge_patches: Vec<PatchData>,
    #[serde(default)]
    strategic_patches: Vec<PatchData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Conditions {
    group_resource: String,
    #[serde(default)]
    resource_name_regex: Option<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    label_selector: Option<LabelSelector>,
    #[serde(default)]
    matches: Vec<MatchText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPatchText {
    operation: String,
    #[serde(default)]
    from: Option<String>,
    path: String,
    #[serde(default)]
    value: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchText {
    path: String,
    #[serde(default)]
    value: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PatchData {
    patch_data: String,
}

impl ResourceModifiers {
    /// Reads the rules of a ConfigMap: its one data key holds the file, as in Velero.
    pub fn from_config_map(config_map: &ConfigMap) -> Result<ResourceModifiers, Vec<String>> {
        let name = config_map.metadata.name.as_deref().unwrap_or_default();
        let data = config_map.data.clone().unwrap_or_default();
        let mut files = data.values();
        match (files.next(), files.next()) {
            (Some(text), None) => ResourceModifiers::parse(text).map_err(|problems| {
                problems
                    .into_iter()
                    .map(|p| format!("resource modifiers in ConfigMap {name}: {p}"))
                    .collect()
            }),
            _ => Err(vec![format!(
                "resource modifiers: ConfigMap {name} must hold exactly one data key (the rules file), it holds {}",
                data.len()
            )]),
        }
    }

    /// Reads and checks a rules file; every problem is named, with the rule's number.
    pub fn parse(text: &str) -> Result<ResourceModifiers, Vec<String>> {
        let file: File = serde_saphyr::from_str(text).map_err(|error| {
            vec![format!(
                "not a resource modifiers file (version: v1, resourceModifierRules: [...]): {error}"
            )]
        })?;
        if file.version != VERSION {
            return Err(vec![format!(
                "version {:?} is not supported; write version: v1",
                file.version
            )]);
        }
        let mut rules = Vec::new();
        let mut problems = Vec::new();
        for (index, text) in file.resource_modifier_rules.into_iter().enumerate() {
            match Rule::compile(index + 1, text) {
                Ok(rule) => rules.push(rule),
                Err(rule_problems) => problems.extend(
                    rule_problems
                        .into_iter()
                        .map(|p| format!("rule {}: {p}", index + 1)),
                ),
            }
        }
        if problems.is_empty() {
            Ok(ResourceModifiers { rules })
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies every rule whose conditions `object` meets, in order. `namespace` is the one the
    /// object was backed up in (None at cluster scope); the conditions read the object as it was
    /// before the first rule changed it.
    pub fn apply(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        object: &mut Value,
    ) -> Result<(), RuleFailed> {
        let original = object.clone();
        let resource = resource.to_string();
        for rule in &self.rules {
            let failed = |reason: String| RuleFailed {
                rule: rule.number,
                group_resource: rule.group_resource_text.clone(),
                reason,
            };
            if rule.selects(&resource, namespace, &original) {
                rule.patch(object).map_err(failed)?;
            }
        }
        Ok(())
    }
}

impl Rule {
    fn compile(number: usize, text: RuleText) -> Result<Rule, Vec<String>> {
        let mut problems = Vec::new();
        let conditions = text.conditions;
        let group_resource = group_resource_glob(&conditions.group_resource)
            .map_err(|p| problems.push(p))
            .ok();
        let name = match conditions.resource_name_regex.as_deref() {
            None | Some("") => None,
            Some(pattern) => Regex::new(pattern)
                .map_err(|e| problems.push(format!("resourceNameRegex {pattern:?}: {e}")))
                .ok(),
        };
        let selector = match conditions.label_selector.as_ref().map(parse_selector) {
            None => None,
            Some(Ok(selector)) => Some(selector),
            Some(Err(problem)) => {
                problems.push(problem);
                None
            }
        };
        let matches: Vec<json_patch::PatchOperation> = conditions
            .matches
            .into_iter()
            .enumerate()
            .filter_map(|(i, m)| {
                operation("test", None, &m.path, m.value)
                    .map_err(|p| problems.push(format!("matches[{i}]: {p}")))
                    .ok()
            })
            .collect();
        let patches: Vec<json_patch::PatchOperation> = text
            .patches
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| {
                operation(&p.operation, p.from, &p.path, p.value)
                    .map_err(|e| problems.push(format!("patches[{i}]: {e}")))
                    .ok()
            })
            .collect();
        let mut data = |field: &str, list: Vec<PatchData>| -> Vec<Value> {
            list.into_iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    serde_saphyr::from_str::<Value>(&p.patch_data)
                        .map_err(|e| {
                            problems
                                .push(format!("{field}[{i}].patchData is not JSON or YAML: {e}"))
                        })
                        .ok()
                })
                .collect()
        };
        let merge_patches = data("mergePatches", text.merge_patches);
        let strategic_patches = data("strategicPatches", text.strategic_patches);
        if patches.is_empty() && merge_patches.is_empty() && strategic_patches.is_empty() {
            problems.push("it has no patches, mergePatches or strategicPatches".to_owned());
        }
        let (Some(group_resource), true) = (group_resource, problems.is_empty()) else {
            return Err(problems);
        };
        Ok(Rule {
            number,
            group_resource,
            group_resource_text: conditions.group_resource,
            name,
            namespaces: (!conditions.namespaces.is_empty())
                .then(|| IncludesExcludes::new(&conditions.namespaces, &[])),
            selector,
            matches,
            patches,
            merge_patches,
            strategic_patches,
        })
    }

    fn selects(&self, resource: &str, namespace: Option<&str>, object: &Value) -> bool {
        let text = |pointer| object.pointer(pointer).and_then(Value::as_str);
        // Namespaces bind only objects that live in one, as in Velero.
        let in_namespaces = match (&self.namespaces, namespace) {
            (Some(namespaces), Some(namespace)) => namespaces.matches(namespace),
            _ => true,
        };
        in_namespaces
            && self.group_resource.is_match(resource)
            && self
                .name
                .as_ref()
                .is_none_or(|name| name.is_match(text("/metadata/name").unwrap_or_default()))
            && self
                .selector
                .as_ref()
                .is_none_or(|selector| selector.matches(&labels_of(object)))
            && (self.matches.is_empty()
                || json_patch::patch(&mut object.clone(), &self.matches).is_ok())
    }

    /// The rule's patches on `object`; a failed `test` leaves it as it was.
    fn patch(&self, object: &mut Value) -> Result<(), String> {
        if !self.patches.is_empty() {
            let mut patched = object.clone();
            match json_patch::patch(&mut patched, &self.patches) {
                Ok(()) => *object = patched,
                Err(error) if matches!(error.kind, json_patch::PatchErrorKind::TestFailed) => {
                    return Ok(());
                }
                Err(error) => return Err(format!("JSON patch: {error}")),
            }
        }
        for patch in &self.merge_patches {
            json_patch::merge(object, patch);
        }
        for patch in &self.strategic_patches {
            strategic::apply(object, patch).map_err(|e| format!("strategic merge patch: {e}"))?;
        }
        Ok(())
    }
}

/// One JSON patch operation. A `value` written as a string is read as Velero reads it: `"\"x\""`
/// is the string `x`; `null`, `true`, `false`, a number, or text starting with `{` or `[` is that
/// JSON value; anything else is a string. A value written as a YAML number, map or list is
/// itself.
fn operation(
    op: &str,
    from: Option<String>,
    path: &str,
    value: Option<Value>,
) -> Result<json_patch::PatchOperation, String> {
    let value = match value {
        Some(Value::String(text)) => velero_value(&text)?,
        Some(value) => value,
        None => Value::String(String::new()),
    };
    let mut operation = serde_json::json!({"op": op, "path": path, "value": value});
    if let Some(from) = from {
        operation["from"] = Value::String(from);
    }
    serde_json::from_value(operation).map_err(|error| {
        format!("{op} {path}: {error} (operations: add, remove, replace, move, copy, test; paths are JSON pointers such as /spec/replicas)")
    })
}

fn velero_value(text: &str) -> Result<Value, String> {
    if let Some(inner) = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        return Ok(Value::String(inner.to_owned()));
    }
    if text.eq_ignore_ascii_case("true") || text.eq_ignore_ascii_case("false") {
        return Ok(Value::Bool(text.eq_ignore_ascii_case("true")));
    }
    if text.starts_with('{') || text.starts_with('[') {
        return serde_json::from_str(text)
            .map_err(|error| format!("value {text:?} starts like JSON but is not: {error}"));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(value @ (Value::Null | Value::Number(_))) => Ok(value),
        _ => Ok(Value::String(text.to_owned())),
    }
}

/// A group-resource glob as Velero reads it (gobwas/glob with `.` as the separator): `*` and `?`
/// stay within a dot-separated part, `**` crosses them, `{a,b}` is either, `[...]` a class.
fn group_resource_glob(pattern: &str) -> Result<Regex, String> {
    if pattern.is_empty() {
        return Err("conditions.groupResource is required (e.g. deployments.apps, persistentvolumeclaims, *.apps)".to_owned());
    }
    let mut regex = String::from("^");
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                regex.push_str(".*");
            }
            '*' => regex.push_str("[^.]*"),
            '?' => regex.push_str("[^.]"),
            '{' => regex.push_str("(?:"),
            '}' => regex.push(')'),
            ',' => regex.push('|'),
            '[' | ']' | '-' | '!' => regex.push(if c == '!' { '^' } else { c }),
            c => regex.push_str(&regex::escape(&c.to_string())),
        }
    }
    regex.push('$');
    Regex::new(&regex).map_err(|error| format!("groupResource {pattern:?} is not a glob: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(text: &str) -> ResourceModifiers {
        ResourceModifiers::parse(text).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn claim() -> Value {
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "mysql-data", "namespace": "shop", "labels": {"foo": "bar", "test": "x"}},
            "spec": {"storageClassName": "standard", "resources": {"requests": {"storage": "1Gi"}}}
        })
    }

    const PVC: &str = "persistentvolumeclaims";

    #[test]
    fn velero_documented_file_applies_unchanged() {
        let modifiers = rules(
            r#"
version: v1
resourceModifierRules:
- conditions:
    groupResource: persistentvolumeclaims
    resourceNameRegex: "^mysql.*$"
    namespaces:
    - bar
    - shop
    labelSelector:
      matchLabels:
        foo: bar
  patches:
  - operation: replace
    path: "/spec/storageClassName"
    value: "premium"
  - operation: remove
    path: "/metadata/labels/test"
"#,
        );
        let mut object = claim();
        modifiers
            .apply(&GroupResource::new(PVC, ""), Some("shop"), &mut object)
            .unwrap();
        assert_eq!(object["spec"]["storageClassName"], "premium");
        assert_eq!(object["metadata"]["labels"], json!({"foo": "bar"}));

        // Another namespace, name or label: untouched.
        for (namespace, name, labels) in [
            ("other", "mysql-data", json!({"foo": "bar"})),
            ("shop", "redis-data", json!({"foo": "bar"})),
            ("shop", "mysql-data", json!({"foo": "baz"})),
        ] {
            let mut object = claim();
            object["metadata"]["name"] = json!(name);
            object["metadata"]["labels"] = labels;
            let before = object.clone();
            modifiers
                .apply(&GroupResource::new(PVC, ""), Some(namespace), &mut object)
                .unwrap();
            assert_eq!(object, before, "{namespace} {name}");
        }
    }

    #[test]
    fn values_are_read_as_velero_reads_them() {
        assert_eq!(velero_value("3").unwrap(), json!(3));
        assert_eq!(velero_value("\"3\"").unwrap(), json!("3"));
        assert_eq!(velero_value("True").unwrap(), json!(true));
        assert_eq!(velero_value("null").unwrap(), Value::Null);
        assert_eq!(velero_value("{\"a\": 1}").unwrap(), json!({"a": 1}));
        assert_eq!(velero_value("premium").unwrap(), json!("premium"));
        assert!(velero_value("{not json").is_err());
        let modifiers = rules(
            r#"
version: v1
resourceModifierRules:
- conditions: {groupResource: deployments.apps}
  patches:
  - {operation: replace, path: /spec/replicas, value: "1"}
  - {operation: add, path: /metadata/annotations, value: '{"cloned": "yes"}'}
"#,
        );
        let mut deployment = json!({"metadata": {"name": "web"}, "spec": {"replicas": 5}});
        modifiers
            .apply(
                &GroupResource::new("deployments", "apps"),
                Some("shop"),
                &mut deployment,
            )
            .unwrap();
        assert_eq!(deployment["spec"]["replicas"], 1);
        assert_eq!(
            deployment["metadata"]["annotations"],
            json!({"cloned": "yes"})
        );
    }

    #[test]
    fn group_resource_globs_stay_within_a_part() {
        let glob = |p| group_resource_glob(p).unwrap();
        assert!(glob("*.apps").is_match("deployments.apps"));
        assert!(!glob("*").is_match("deployments.apps"));
        assert!(glob("*").is_match("pods"));
        assert!(glob("**").is_match("deployments.apps"));
        assert!(glob("{deployments,statefulsets}.apps").is_match("statefulsets.apps"));
        assert!(!glob("deployments.apps").is_match("deploymentsxapps"));
        assert!(glob("*.*.k8s.io").is_match("ingresses.networking.k8s.io"));
    }

    #[test]
    fn a_failed_test_leaves_the_object_and_matches_select() {
        let modifiers = rules(
            r#"
version: v1
resourceModifierRules:
- conditions: {groupResource: persistentvolumeclaims}
  patches:
  - {operation: test, path: /spec/storageClassName, value: gold}
  - {operation: replace, path: /spec/storageClassName, value: premium}
- conditions:
    groupResource: persistentvolumeclaims
    matches:
    - {path: /spec/storageClassName, value: standard}
  mergePatches:
  - patchData: |
      {"metadata": {"labels": {"test": null, "moved": "yes"}}}
- conditions:
    groupResource: persistentvolumeclaims
    matches:
    - {path: /spec/missing, value: x}
  mergePatches:
  - patchData: '{"metadata": {"labels": {"never": "here"}}}'
"#,
        );
        let mut object = claim();
        modifiers
            .apply(&GroupResource::new(PVC, ""), Some("shop"), &mut object)
            .unwrap();
        assert_eq!(object["spec"]["storageClassName"], "standard");
        assert_eq!(
            object["metadata"]["labels"],
            json!({"foo": "bar", "moved": "yes"})
        );
    }

    #[test]
    fn conditions_read_the_object_before_any_rule_changed_it() {
        let modifiers = rules(
            r#"
version: v1
resourceModifierRules:
- conditions: {groupResource: persistentvolumeclaims}
  mergePatches: [{patchData: '{"metadata": {"labels": {"foo": "changed"}}}'}]
- conditions:
    groupResource: persistentvolumeclaims
    labelSelector: {matchLabels: {foo: bar}}
  mergePatches: [{patchData: '{"spec": {"storageClassName": "premium"}}'}]
"#,
        );
        let mut object = claim();
        modifiers
            .apply(&GroupResource::new(PVC, ""), Some("shop"), &mut object)
            .unwrap();
        assert_eq!(object["metadata"]["labels"]["foo"], "changed");
        assert_eq!(object["spec"]["storageClassName"], "premium");
    }

    #[test]
    fn a_rule_that_cannot_apply_fails_the_object_naming_it() {
        let modifiers = rules(
            r#"
version: v1
resourceModifierRules:
- conditions: {groupResource: "*"}
  mergePatches: [{patchData: '{"metadata": {"annotations": {"a": "b"}}}'}]
- conditions: {groupResource: persistentvolumeclaims}
  patches:
  - {operation: replace, path: /spec/nothing/here, value: x}
"#,
        );
        let mut object = claim();
        let failed = modifiers
            .apply(&GroupResource::new(PVC, ""), Some("shop"), &mut object)
            .unwrap_err();
        assert_eq!(failed.rule, 2);
        let text = failed.to_string();
        assert!(
            text.contains("rule 2 (groupResource persistentvolumeclaims)")
                && text.contains("JSON patch"),
            "{text}"
        );
    }

    #[test]
    fn bad_files_are_refused_with_every_problem_named() {
        let problems = ResourceModifiers::parse(
            r#"
version: v1
resourceModifierRules:
- conditions: {groupResource: pods, resourceNameRegex: "("}
  patches: [{operation: frobnicate, path: /spec}]
- conditions: {groupResource: pods}
"#,
        )
        .unwrap_err();
        let text = problems.join("\n");
        assert!(text.contains("rule 1: resourceNameRegex"), "{text}");
        assert!(text.contains("rule 1: patches[0]: frobnicate"), "{text}");
        assert!(text.contains("rule 2: it has no patches"), "{text}");
        assert!(
            ResourceModifiers::parse("version: v2\nresourceModifierRules: []").unwrap_err()[0]
                .contains("v2")
        );
        assert!(
            ResourceModifiers::parse(
                "version: v1\nresourceModifierRules:\n- conditions: {groupResource: pods, namespace: [a]}\n  patches: []"
            )
            .unwrap_err()[0]
                .contains("namespace")
        );
        let two_keys = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some("rules".into()),
                ..Default::default()
            },
            data: Some([("a".into(), "".into()), ("b".into(), "".into())].into()),
            ..Default::default()
        };
        assert!(
            ResourceModifiers::from_config_map(&two_keys).unwrap_err()[0]
                .contains("exactly one data key")
        );
    }
}
