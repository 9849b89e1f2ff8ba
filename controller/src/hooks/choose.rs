//! Which hooks a pod runs: its annotations' if it has any, else the Backup spec's rules that
//! select it. Pure: tested without a cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_protocol::crd::{BackupHook, BackupHooks, HookErrorMode};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use super::{DEFAULT_TIMEOUT, Hook, HookPhase};
use crate::resources::{IncludesExcludes, parse_selector};

/// The annotation prefixes of backup hooks, Ferry's first: where both name a command, Ferry's
/// win. Velero's are honoured so that an application annotated for Velero needs no change.
const ANNOTATION_DOMAINS: [&str; 2] = ["ferry.dev", "velero.io"];

/// The hooks one pod runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodHooks {
    pub pre: Vec<Hook>,
    pub post: Vec<Hook>,
}

impl PodHooks {
    pub fn is_empty(&self) -> bool {
        self.pre.is_empty() && self.post.is_empty()
    }

    pub fn of(&self, phase: HookPhase) -> &[Hook] {
        match phase {
            HookPhase::Pre => &self.pre,
            HookPhase::Post => &self.post,
        }
    }
}

/// `namespace/name`, how a pod is named in a backup's status.
pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// A Backup spec's hook rules, checked.
#[derive(Clone, Debug, Default)]
pub struct BackupHookRules {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug)]
struct Rule {
    selection: PodSelection,
    pre: Vec<Hook>,
    post: Vec<Hook>,
}

/// Which pods a rule of a spec's hooks selects: by namespace, resource names and labels.
#[derive(Clone, Debug)]
pub(super) struct PodSelection {
    namespaces: IncludesExcludes,
    selects_pods: bool,
    selector: Option<Selector>,
}

impl PodSelection {
    /// The selection of a rule's fields; a bad label selector is a problem named with `at`.
    pub(super) fn resolve(
        at: &str,
        namespaces: (&[String], &[String]),
        resources: (&[String], &[String]),
        label_selector: Option<&LabelSelector>,
        problems: &mut Vec<String>,
    ) -> PodSelection {
        let selector = match label_selector.map(parse_selector) {
            None => None,
            Some(Ok(selector)) => Some(selector),
            Some(Err(problem)) => {
                problems.push(format!("{at}: {problem}"));
                None
            }
        };
        PodSelection {
            namespaces: IncludesExcludes::new(namespaces.0, namespaces.1),
            selects_pods: names_pods(resources.0, true) && !names_pods(resources.1, false),
            selector,
        }
    }

    /// Whether it selects a pod of `namespace` with `labels`.
    pub(super) fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.selects_pods
            && self.namespaces.matches(namespace)
            && self.selector.as_ref().is_none_or(|s| s.matches(labels))
    }
}

/// An `on-error` annotation: `Fail` (the default) or `Continue`, in any case.
pub(super) fn parse_on_error(name: &str, value: Option<&String>) -> Result<HookErrorMode, String> {
    match value.map(String::as_str) {
        None => Ok(HookErrorMode::Fail),
        Some(v) if v.eq_ignore_ascii_case("fail") => Ok(HookErrorMode::Fail),
        Some(v) if v.eq_ignore_ascii_case("continue") => Ok(HookErrorMode::Continue),
        Some(other) => Err(format!("{name}: {other:?} is neither Fail nor Continue")),
    }
}

impl BackupHookRules {
    /// Checks `hooks` of a Backup spec; every problem is named, with where it is.
    pub fn resolve(hooks: Option<&BackupHooks>) -> Result<BackupHookRules, Vec<String>> {
        let mut problems = Vec::new();
        let mut rules = Vec::new();
        for (i, resource) in hooks.map_or(&[][..], |h| &h.resources).iter().enumerate() {
            let at = format!("hooks.resources[{i}] ({:?})", resource.name);
            let selection = PodSelection::resolve(
                &at,
                (&resource.included_namespaces, &resource.excluded_namespaces),
                (&resource.included_resources, &resource.excluded_resources),
                resource.label_selector.as_ref(),
                &mut problems,
            );
            let mut hooks = |list: &[BackupHook], phase: &str| -> Vec<Hook> {
                list.iter()
                    .enumerate()
                    .filter_map(|(j, hook)| {
                        spec_hook(&resource.name, hook)
                            .map_err(|problem| {
                                problems.push(format!("{at}.{phase}[{j}]: {problem}"))
                            })
                            .ok()
                    })
                    .collect()
            };
            let pre = hooks(&resource.pre, "pre");
            let post = hooks(&resource.post, "post");
            rules.push(Rule {
                selection,
                pre,
                post,
            });
        }
        if problems.is_empty() {
            Ok(BackupHookRules { rules })
        } else {
            Err(problems)
        }
    }

    /// The hooks `pod` runs: those of its annotations if it has any (then the spec's are not
    /// added, as in Velero), else those of every rule that selects it, in the spec's order. A
    /// malformed annotation is an error that names it.
    pub fn for_pod(&self, pod: &Pod) -> Result<PodHooks, String> {
        let annotated = annotation_hooks(pod.annotations())?;
        if !annotated.is_empty() {
            return Ok(annotated);
        }
        let namespace = pod.namespace().unwrap_or_default();
        let mut hooks = PodHooks::default();
        for rule in &self.rules {
            if rule.selection.selects(&namespace, pod.labels()) {
                hooks.pre.extend(rule.pre.iter().cloned());
                hooks.post.extend(rule.post.iter().cloned());
            }
        }
        Ok(hooks)
    }
}

/// Whether a list of resource names names pods (`empty_means` for an empty list).
fn names_pods(resources: &[String], empty_means: bool) -> bool {
    if resources.is_empty() {
        return empty_means;
    }
    resources
        .iter()
        .any(|r| matches!(r.as_str(), "*" | "pods" | "pod" | "po" | "pods."))
}

fn spec_hook(rule: &str, hook: &BackupHook) -> Result<Hook, String> {
    let exec = &hook.exec;
    if exec.command.is_empty() || exec.command[0].trim().is_empty() {
        return Err("exec.command is empty; give the program and its arguments".to_owned());
    }
    let timeout = match exec.timeout.as_deref() {
        None => DEFAULT_TIMEOUT,
        Some(text) => positive_duration(text).map_err(|e| format!("exec.timeout: {e}"))?,
    };
    Ok(Hook {
        source: format!("{rule:?}"),
        container: exec.container.clone().filter(|c| !c.is_empty()),
        command: exec.command.clone(),
        on_error: exec.on_error.unwrap_or(HookErrorMode::Fail),
        timeout,
    })
}

pub(super) fn positive_duration(text: &str) -> Result<Duration, String> {
    match crate::parse_duration(text)? {
        Duration::ZERO => Err(format!("{text:?} is zero; give a time such as 30s or 2m")),
        duration => Ok(duration),
    }
}

/// The hooks a pod's annotations give, for both phases.
fn annotation_hooks(annotations: &BTreeMap<String, String>) -> Result<PodHooks, String> {
    Ok(PodHooks {
        pre: annotation_hook(annotations, HookPhase::Pre)?
            .into_iter()
            .collect(),
        post: annotation_hook(annotations, HookPhase::Post)?
            .into_iter()
            .collect(),
    })
}

/// The `phase` hook of the annotations: Ferry's names if they give a command, else Velero's.
fn annotation_hook(
    annotations: &BTreeMap<String, String>,
    phase: HookPhase,
) -> Result<Option<Hook>, String> {
    for domain in ANNOTATION_DOMAINS {
        let name = |field: &str| format!("{phase}.hook.backup.{domain}/{field}");
        let Some(command) = annotations.get(&name("command")) else {
            continue;
        };
        let command = parse_command(command).map_err(|e| format!("{}: {e}", name("command")))?;
        let on_error = parse_on_error(&name("on-error"), annotations.get(&name("on-error")))?;
        let timeout = match annotations.get(&name("timeout")) {
            None => DEFAULT_TIMEOUT,
            Some(text) => {
                positive_duration(text).map_err(|e| format!("{}: {e}", name("timeout")))?
            }
        };
        return Ok(Some(Hook {
            source: format!("annotations {phase}.hook.backup.{domain}"),
            container: annotations
                .get(&name("container"))
                .filter(|c| !c.is_empty())
                .cloned(),
            command,
            on_error,
            timeout,
        }));
    }
    Ok(None)
}

/// A command annotation: a JSON array of strings, or a command line split as a POSIX shell
/// would split its words (no expansion, no shell run).
pub(super) fn parse_command(text: &str) -> Result<Vec<String>, String> {
    let text = text.trim();
    let words = if text.starts_with('[') {
        serde_json::from_str::<Vec<String>>(text)
            .map_err(|e| format!("not a JSON array of strings ({e})"))?
    } else {
        shlex::split(text).ok_or_else(|| "an unterminated quote".to_owned())?
    };
    if words.first().is_none_or(|w| w.is_empty()) {
        return Err("empty; give the program and its arguments".to_owned());
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::crd::{BackupResourceHook, ExecHook};
    use serde_json::json;

    fn pod(namespace: &str, labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "db-0", "namespace": namespace,
            "labels": labels, "annotations": annotations}}))
        .unwrap()
    }

    fn exec(command: &[&str]) -> BackupHook {
        BackupHook {
            exec: ExecHook {
                command: command.iter().map(|s| (*s).to_owned()).collect(),
                ..ExecHook::default()
            },
        }
    }

    fn rules(resources: Vec<BackupResourceHook>) -> BackupHookRules {
        BackupHookRules::resolve(Some(&BackupHooks { resources })).unwrap()
    }

    #[test]
    fn annotations_give_the_hooks_in_ferrys_names_or_velero_s() {
        let none = BackupHookRules::default();
        let ferry = pod(
            "shop",
            json!({}),
            json!({
                "pre.hook.backup.ferry.dev/container": "fsfreeze",
                "pre.hook.backup.ferry.dev/command": "[\"/sbin/fsfreeze\", \"--freeze\", \"/var/lib/data\"]",
                "pre.hook.backup.ferry.dev/on-error": "Continue",
                "pre.hook.backup.ferry.dev/timeout": "1m30s",
                "post.hook.backup.ferry.dev/command": "fsfreeze --unfreeze '/var/lib/data'",
            }),
        );
        let hooks = none.for_pod(&ferry).unwrap();
        assert_eq!(
            hooks.pre,
            [Hook {
                source: "annotations pre.hook.backup.ferry.dev".into(),
                container: Some("fsfreeze".into()),
                command: vec![
                    "/sbin/fsfreeze".into(),
                    "--freeze".into(),
                    "/var/lib/data".into()
                ],
                on_error: HookErrorMode::Continue,
                timeout: Duration::from_secs(90),
            }]
        );
        assert_eq!(
            hooks.post[0].command,
            ["fsfreeze", "--unfreeze", "/var/lib/data"]
        );
        assert_eq!(hooks.post[0].on_error, HookErrorMode::Fail);
        assert_eq!(hooks.post[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(hooks.post[0].container, None);

        // Velero's names, untouched; where both are there, Ferry's win.
        let velero = pod(
            "shop",
            json!({}),
            json!({"pre.hook.backup.velero.io/command": "[\"/bin/sh\", \"-c\", \"sync\"]",
                   "pre.hook.backup.velero.io/on-error": "Fail",
                   "post.hook.backup.velero.io/command": "/bin/true",
                   "post.hook.backup.ferry.dev/command": "/bin/false"}),
        );
        let hooks = none.for_pod(&velero).unwrap();
        assert_eq!(hooks.pre[0].command, ["/bin/sh", "-c", "sync"]);
        assert_eq!(hooks.pre[0].source, "annotations pre.hook.backup.velero.io");
        assert_eq!(hooks.post[0].command, ["/bin/false"]);
    }

    #[test]
    fn malformed_annotations_are_named() {
        let none = BackupHookRules::default();
        for (annotations, named) in [
            (
                json!({"pre.hook.backup.ferry.dev/command": "[\"unterminated"}),
                "pre.hook.backup.ferry.dev/command",
            ),
            (
                json!({"post.hook.backup.velero.io/command": "echo 'open"}),
                "post.hook.backup.velero.io/command",
            ),
            (
                json!({"pre.hook.backup.ferry.dev/command": "[]"}),
                "pre.hook.backup.ferry.dev/command",
            ),
            (
                json!({"pre.hook.backup.ferry.dev/command": "sync",
                       "pre.hook.backup.ferry.dev/on-error": "Ignore"}),
                "pre.hook.backup.ferry.dev/on-error",
            ),
            (
                json!({"pre.hook.backup.velero.io/command": "sync",
                       "pre.hook.backup.velero.io/timeout": "soon"}),
                "pre.hook.backup.velero.io/timeout",
            ),
        ] {
            let error = none
                .for_pod(&pod("shop", json!({}), annotations))
                .unwrap_err();
            assert!(error.contains(named), "{error}");
        }
    }

    #[test]
    fn spec_rules_select_pods_by_namespace_resource_and_labels_in_order() {
        let rules = rules(vec![
            BackupResourceHook {
                name: "freeze".into(),
                included_namespaces: vec!["shop".into(), "db-*".into()],
                label_selector: Some(
                    serde_json::from_value(json!({"matchLabels": {"app": "postgres"}})).unwrap(),
                ),
                pre: vec![
                    exec(&["psql", "-c", "CHECKPOINT"]),
                    exec(&["fsfreeze", "-f", "/d"]),
                ],
                post: vec![exec(&["fsfreeze", "-u", "/d"])],
                ..Default::default()
            },
            BackupResourceHook {
                name: "all-pods".into(),
                excluded_namespaces: vec!["db-test".into()],
                pre: vec![exec(&["sync"])],
                ..Default::default()
            },
            BackupResourceHook {
                name: "deployments-only".into(),
                included_resources: vec!["deployments".into()],
                pre: vec![exec(&["never"])],
                ..Default::default()
            },
        ]);
        let postgres = json!({"app": "postgres"});
        let hooks = rules
            .for_pod(&pod("db-main", postgres.clone(), json!({})))
            .unwrap();
        let commands =
            |hooks: &[Hook]| -> Vec<String> { hooks.iter().map(|h| h.command.join(" ")).collect() };
        assert_eq!(
            commands(&hooks.pre),
            ["psql -c CHECKPOINT", "fsfreeze -f /d", "sync"]
        );
        assert_eq!(commands(&hooks.post), ["fsfreeze -u /d"]);
        assert_eq!(hooks.pre[0].source, "\"freeze\"");
        assert_eq!(hooks.pre[0].on_error, HookErrorMode::Fail);
        // Other labels: only the rule without a selector.
        let web = rules
            .for_pod(&pod("shop", json!({"app": "web"}), json!({})))
            .unwrap();
        assert_eq!(commands(&web.pre), ["sync"]);
        // Excluded by the second rule, selected by the first.
        let test_db = rules
            .for_pod(&pod("db-test", postgres.clone(), json!({})))
            .unwrap();
        assert_eq!(
            commands(&test_db.pre),
            ["psql -c CHECKPOINT", "fsfreeze -f /d"]
        );
        // Selected by none.
        assert!(
            rules
                .for_pod(&pod("db-test", json!({"app": "web"}), json!({})))
                .unwrap()
                .is_empty()
        );
        // Annotations replace the spec's hooks for their pod.
        let annotated = pod(
            "shop",
            postgres,
            json!({"post.hook.backup.ferry.dev/command": "echo done"}),
        );
        let hooks = rules.for_pod(&annotated).unwrap();
        assert!(hooks.pre.is_empty());
        assert_eq!(commands(&hooks.post), ["echo done"]);
    }

    #[test]
    fn bad_spec_rules_are_each_named() {
        let bad = BackupHooks {
            resources: vec![BackupResourceHook {
                name: "broken".into(),
                label_selector: Some(
                    serde_json::from_value(json!({"matchExpressions": [
                        {"key": "app", "operator": "Like", "values": ["x"]}]}))
                    .unwrap(),
                ),
                pre: vec![exec(&[])],
                post: vec![BackupHook {
                    exec: ExecHook {
                        command: vec!["sync".into()],
                        timeout: Some("0s".into()),
                        ..ExecHook::default()
                    },
                }],
                ..Default::default()
            }],
        };
        let problems = BackupHookRules::resolve(Some(&bad)).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].contains("hooks.resources[0] (\"broken\")") && problems[0].contains("Like")
        );
        assert!(problems[1].contains(".pre[0]") && problems[1].contains("command is empty"));
        assert!(problems[2].contains(".post[0]") && problems[2].contains("zero"));
    }
}
