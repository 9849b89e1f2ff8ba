//! Which restore hooks a restored pod gets: its annotations' if it has any
//! (`init.hook.restore.ferry.dev/...`, `post.hook.restore.ferry.dev/...`, or Velero's names),
//! else those of the Restore spec's `hooks.resources` that select it, matched against the pod
//! as it was backed up (its namespace before any mapping). Pure: tested without a cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_protocol::crd::{HookErrorMode, RestoreHooks};
use k8s_openapi::api::core::v1::Container;

use super::choose::{PodSelection, parse_command, parse_on_error, positive_duration};
use super::{DEFAULT_TIMEOUT, Hook};

/// How long an exec hook waits for its container when it does not say.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(600);
/// The name of an init container an annotation adds without naming it.
const DEFAULT_INIT_NAME: &str = "restore-hook";
const ANNOTATION_DOMAINS: [&str; 2] = ["ferry.dev", "velero.io"];

/// An exec hook of a restored pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecHook {
    pub hook: Hook,
    /// How long to wait for the container, from when the pod's volumes are restored.
    pub wait_timeout: Duration,
    /// Wait for the container to be Ready, not only running.
    pub wait_for_ready: bool,
}

/// The restore hooks of one pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestorePodHooks {
    /// Init containers to add. One that names no volume mounts (as one from annotations cannot)
    /// gets those of the pod's first container, so that it can prepare the restored data.
    pub init_containers: Vec<Container>,
    pub exec: Vec<ExecHook>,
}

impl RestorePodHooks {
    pub fn is_empty(&self) -> bool {
        self.init_containers.is_empty() && self.exec.is_empty()
    }
}

/// A Restore spec's hook rules, checked.
#[derive(Clone, Debug, Default)]
pub struct RestoreHookRules {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug)]
struct Rule {
    selection: PodSelection,
    hooks: RestorePodHooks,
}

impl RestoreHookRules {
    /// Checks `hooks` of a Restore spec; every problem is named, with where it is.
    pub fn resolve(hooks: Option<&RestoreHooks>) -> Result<RestoreHookRules, Vec<String>> {
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
            let mut hooks = RestorePodHooks::default();
            for (j, post) in resource.post_hooks.iter().enumerate() {
                let at = format!("{at}.postHooks[{j}]");
                match (&post.init, &post.exec) {
                    (Some(init), None) => {
                        for (k, container) in init.init_containers.iter().enumerate() {
                            if container.name.is_empty() || container.image.is_none() {
                                problems.push(format!(
                                    "{at}.init.initContainers[{k}]: give it a name and an image"
                                ));
                            }
                        }
                        hooks
                            .init_containers
                            .extend(init.init_containers.iter().cloned());
                    }
                    (None, Some(exec)) => match spec_exec_hook(&resource.name, exec) {
                        Ok(hook) => hooks.exec.push(hook),
                        Err(problem) => problems.push(format!("{at}.exec: {problem}")),
                    },
                    _ => problems.push(format!("{at}: give exactly one of init and exec")),
                }
            }
            rules.push(Rule { selection, hooks });
        }
        if problems.is_empty() {
            Ok(RestoreHookRules { rules })
        } else {
            Err(problems)
        }
    }

    /// The hooks of a pod backed up in `namespace` with `labels` and `annotations`: its
    /// annotations' if it has any, else every selecting rule's, in the spec's order.
    pub fn for_pod(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<RestorePodHooks, String> {
        let annotated = annotation_hooks(annotations)?;
        if !annotated.is_empty() {
            return Ok(annotated);
        }
        let mut hooks = RestorePodHooks::default();
        for rule in &self.rules {
            if rule.selection.selects(namespace, labels) {
                hooks
                    .init_containers
                    .extend(rule.hooks.init_containers.iter().cloned());
                hooks.exec.extend(rule.hooks.exec.iter().cloned());
            }
        }
        Ok(hooks)
    }
}

fn spec_exec_hook(
    rule: &str,
    exec: &ferry_protocol::crd::ExecRestoreHook,
) -> Result<ExecHook, String> {
    if exec.command.first().is_none_or(|c| c.trim().is_empty()) {
        return Err("command is empty; give the program and its arguments".to_owned());
    }
    let duration = |field: &str, text: Option<&str>, default| match text {
        None => Ok(default),
        Some(text) => positive_duration(text).map_err(|e| format!("{field}: {e}")),
    };
    Ok(ExecHook {
        hook: Hook {
            source: format!("{rule:?}"),
            container: exec.container.clone().filter(|c| !c.is_empty()),
            command: exec.command.clone(),
            on_error: exec.on_error.unwrap_or(HookErrorMode::Fail),
            timeout: duration("execTimeout", exec.exec_timeout.as_deref(), DEFAULT_TIMEOUT)?,
        },
        wait_timeout: duration(
            "waitTimeout",
            exec.wait_timeout.as_deref(),
            DEFAULT_WAIT_TIMEOUT,
        )?,
        wait_for_ready: exec.wait_for_ready.unwrap_or(false),
    })
}

/// The restore hooks a pod's annotations give: Ferry's names where they give a command (or an
/// image), else Velero's.
fn annotation_hooks(annotations: &BTreeMap<String, String>) -> Result<RestorePodHooks, String> {
    let mut hooks = RestorePodHooks::default();
    for domain in ANNOTATION_DOMAINS {
        let init = |field: &str| format!("init.hook.restore.{domain}/{field}");
        if let Some(image) = annotations.get(&init("container-image")) {
            let command = match annotations.get(&init("command")) {
                Some(text) => {
                    Some(parse_command(text).map_err(|e| format!("{}: {e}", init("command")))?)
                }
                None => None,
            };
            hooks.init_containers.push(Container {
                name: annotations
                    .get(&init("container-name"))
                    .filter(|n| !n.is_empty())
                    .cloned()
                    .unwrap_or_else(|| DEFAULT_INIT_NAME.to_owned()),
                image: Some(image.clone()),
                command,
                ..Container::default()
            });
            break;
        }
    }
    for domain in ANNOTATION_DOMAINS {
        let post = |field: &str| format!("post.hook.restore.{domain}/{field}");
        let Some(command) = annotations.get(&post("command")) else {
            continue;
        };
        let command = parse_command(command).map_err(|e| format!("{}: {e}", post("command")))?;
        let on_error = parse_on_error(&post("on-error"), annotations.get(&post("on-error")))?;
        let duration = |field: &str, default| match annotations.get(&post(field)) {
            None => Ok(default),
            Some(text) => positive_duration(text).map_err(|e| format!("{}: {e}", post(field))),
        };
        let wait_for_ready = match annotations.get(&post("wait-for-ready")).map(String::as_str) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(other) => {
                return Err(format!(
                    "{}: {other:?} is neither true nor false",
                    post("wait-for-ready")
                ));
            }
        };
        hooks.exec.push(ExecHook {
            hook: Hook {
                source: format!("annotations post.hook.restore.{domain}"),
                container: annotations
                    .get(&post("container"))
                    .filter(|c| !c.is_empty())
                    .cloned(),
                command,
                on_error,
                timeout: duration("exec-timeout", DEFAULT_TIMEOUT)?,
            },
            wait_timeout: duration("wait-timeout", DEFAULT_WAIT_TIMEOUT)?,
            wait_for_ready,
        });
        break;
    }
    Ok(hooks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::crd::{ExecRestoreHook, InitRestoreHook, RestoreHook, RestoreResourceHook};
    use serde_json::json;

    fn map(value: serde_json::Value) -> BTreeMap<String, String> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn annotations_give_init_containers_and_exec_hooks_in_either_name() {
        let none = RestoreHookRules::default();
        let hooks = none
            .for_pod(
                "shop",
                &map(json!({})),
                &map(json!({
                    "init.hook.restore.velero.io/container-image": "busybox",
                    "init.hook.restore.velero.io/container-name": "prepare",
                    "init.hook.restore.velero.io/command": "[\"sh\", \"-c\", \"touch /data/ready\"]",
                    "post.hook.restore.ferry.dev/container": "db",
                    "post.hook.restore.ferry.dev/command": "psql -c 'select 1'",
                    "post.hook.restore.ferry.dev/on-error": "Continue",
                    "post.hook.restore.ferry.dev/exec-timeout": "2m",
                    "post.hook.restore.ferry.dev/wait-timeout": "1h",
                    "post.hook.restore.ferry.dev/wait-for-ready": "true",
                    "post.hook.restore.velero.io/command": "never",
                })),
            )
            .unwrap();
        assert_eq!(hooks.init_containers.len(), 1);
        let init = &hooks.init_containers[0];
        assert_eq!(
            (
                init.name.as_str(),
                init.image.as_deref(),
                init.command.clone()
            ),
            (
                "prepare",
                Some("busybox"),
                Some(vec!["sh".into(), "-c".into(), "touch /data/ready".into()])
            )
        );
        assert_eq!(
            hooks.exec,
            [ExecHook {
                hook: Hook {
                    source: "annotations post.hook.restore.ferry.dev".into(),
                    container: Some("db".into()),
                    command: vec!["psql".into(), "-c".into(), "select 1".into()],
                    on_error: HookErrorMode::Continue,
                    timeout: Duration::from_secs(120),
                },
                wait_timeout: Duration::from_secs(3600),
                wait_for_ready: true,
            }]
        );
        let error = none
            .for_pod(
                "shop",
                &map(json!({})),
                &map(json!({"post.hook.restore.velero.io/command": "x",
                             "post.hook.restore.velero.io/wait-for-ready": "maybe"})),
            )
            .unwrap_err();
        assert!(
            error.contains("post.hook.restore.velero.io/wait-for-ready"),
            "{error}"
        );
    }

    #[test]
    fn spec_rules_select_by_the_backed_up_namespace_and_labels() {
        let container: Container =
            serde_json::from_value(json!({"name": "prepare", "image": "busybox"})).unwrap();
        let rules = RestoreHookRules::resolve(Some(&RestoreHooks {
            resources: vec![RestoreResourceHook {
                name: "warm".into(),
                included_namespaces: vec!["shop".into()],
                label_selector: Some(
                    serde_json::from_value(json!({"matchLabels": {"app": "db"}})).unwrap(),
                ),
                post_hooks: vec![
                    RestoreHook {
                        init: Some(InitRestoreHook {
                            init_containers: vec![container.clone()],
                        }),
                        exec: None,
                    },
                    RestoreHook {
                        init: None,
                        exec: Some(ExecRestoreHook {
                            command: vec!["analyze".into()],
                            ..Default::default()
                        }),
                    },
                ],
                ..Default::default()
            }],
        }))
        .unwrap();
        let db = map(json!({"app": "db"}));
        let hooks = rules.for_pod("shop", &db, &BTreeMap::new()).unwrap();
        assert_eq!(hooks.init_containers, [container]);
        assert_eq!(hooks.exec[0].hook.command, ["analyze"]);
        assert_eq!(hooks.exec[0].wait_timeout, DEFAULT_WAIT_TIMEOUT);
        assert!(!hooks.exec[0].wait_for_ready);
        assert!(
            rules
                .for_pod("other", &db, &BTreeMap::new())
                .unwrap()
                .is_empty()
        );
        assert!(
            rules
                .for_pod("shop", &map(json!({"app": "web"})), &BTreeMap::new())
                .unwrap()
                .is_empty()
        );

        let bad = RestoreHookRules::resolve(Some(&RestoreHooks {
            resources: vec![RestoreResourceHook {
                name: "bad".into(),
                post_hooks: vec![
                    RestoreHook::default(),
                    RestoreHook {
                        init: Some(InitRestoreHook {
                            init_containers: vec![Container::default()],
                        }),
                        exec: None,
                    },
                    RestoreHook {
                        init: None,
                        exec: Some(ExecRestoreHook {
                            command: vec!["x".into()],
                            wait_timeout: Some("forever".into()),
                            ..Default::default()
                        }),
                    },
                ],
                ..Default::default()
            }],
        }))
        .unwrap_err();
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].contains("postHooks[0]") && bad[0].contains("exactly one"));
        assert!(bad[1].contains("initContainers[0]") && bad[1].contains("an image"));
        assert!(bad[2].contains("postHooks[2].exec: waitTimeout"));
    }
}
