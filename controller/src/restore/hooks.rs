//! A restore's exec hooks: once a restored pod's volumes are restored, each of its exec hooks
//! waits (up to its wait timeout) for its container to run, or to be Ready, and then runs in it.
//! The pods still owed hooks are in the status (`execHooksPending`, with how many ran), and the
//! hooks are read again from the restored pod and the Restore's spec at each look, so a restarted
//! controller goes on where this one stopped. The restore ends once none is owed.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_protocol::crd::{PendingExecHooks, Restore, RestoreStatus};
use ferry_protocol::volume::{VolumePhase, VolumeRecords};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, ResourceExt};

use crate::context::Context;
use crate::hooks::{self, HookOutcome, HookPhase, HookReport, RestoreHookRules};

/// Runs what exec hooks can run now, for every pod in `status.execHooksPending`; a pod leaves the
/// list once all its hooks ran (or one that must not fail failed).
pub async fn run_exec_hooks(
    ctx: &Context,
    restore: &Restore,
    records: &VolumeRecords,
    status: &mut RestoreStatus,
    report: &mut HookReport,
) {
    let rules = RestoreHookRules::resolve(restore.spec.hooks.as_ref()).unwrap_or_default();
    let now = ctx.now();
    let mut still_owed = Vec::new();
    for mut pending in std::mem::take(&mut status.exec_hooks_pending) {
        let Some((namespace, name)) = pending
            .pod
            .split_once('/')
            .map(|(n, p)| (n.to_owned(), p.to_owned()))
        else {
            continue;
        };
        if pending.since.is_none() {
            let restoring = records.volumes.iter().any(|r| {
                r.phase == VolumePhase::InProgress
                    && r.pod_volume
                        .as_ref()
                        .is_some_and(|p| p.namespace == namespace && p.pod == name)
            });
            if restoring {
                still_owed.push(pending);
                continue;
            }
            pending.since = Some(Time(now));
        }
        let since = pending.since.as_ref().map_or(now, |t| t.0);
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
        let pod = match pods.get_opt(&name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => {
                report.warnings.push(format!(
                    "exec hooks of restored pod {} not run: the pod is gone",
                    pending.pod
                ));
                continue;
            }
            Err(error) => {
                tracing::warn!(message = "reading a restored pod for its hooks failed", pod = %pending.pod, %error);
                still_owed.push(pending);
                continue;
            }
        };
        let hooks = match rules.for_pod(&pending.source_namespace, pod.labels(), pod.annotations())
        {
            Ok(hooks) => hooks.exec,
            Err(problem) => {
                report.warnings.push(format!(
                    "exec hooks of restored pod {} not run: {problem}",
                    pending.pod
                ));
                continue;
            }
        };
        let mut finished = true;
        for exec in hooks.iter().skip(pending.done as usize) {
            let container = exec.hook.container.as_deref();
            let up = hooks::container_is_up(ctx, &namespace, &name, container, exec.wait_for_ready)
                .await;
            let outcome = match up {
                Ok(true) => hooks::run_hooks(
                    ctx,
                    &namespace,
                    &name,
                    HookPhase::Post,
                    std::slice::from_ref(&exec.hook),
                )
                .await
                .remove(0),
                Ok(false) if waited(since, now) <= exec.wait_timeout => {
                    finished = false;
                    break;
                }
                Ok(false) => not_up(
                    &namespace,
                    &name,
                    exec,
                    format!(
                        "container {} was not {} within {} s of the pod's volumes being restored",
                        container.unwrap_or("(the first)"),
                        if exec.wait_for_ready {
                            "Ready"
                        } else {
                            "running"
                        },
                        exec.wait_timeout.as_secs()
                    ),
                ),
                Err(problem) => not_up(&namespace, &name, exec, problem),
            };
            let stop = outcome.is_error();
            report.add([outcome]);
            pending.done += 1;
            if stop {
                break;
            }
        }
        if !finished {
            still_owed.push(pending);
        }
    }
    status.exec_hooks_pending = still_owed;
}

fn waited(since: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    Duration::from_secs(u64::try_from(now.as_second() - since.as_second()).unwrap_or(0))
}

/// The outcome of a hook whose container never came up, or whose pod cannot be read.
fn not_up(namespace: &str, pod: &str, exec: &hooks::ExecHook, failure: String) -> HookOutcome {
    HookOutcome {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        phase: HookPhase::Post,
        hook: exec.hook.clone(),
        container: exec.hook.container.clone().unwrap_or_default(),
        duration: Duration::ZERO,
        exit_code: None,
        failure: Some(failure),
        not_running: false,
        output_tail: String::new(),
    }
}

/// The pods a restore created that have exec hooks: `(source namespace, name)` to `namespace/name`
/// as restored.
pub fn pending(created: &BTreeMap<(String, String), String>) -> Vec<PendingExecHooks> {
    created
        .iter()
        .map(|((source_namespace, _), pod)| PendingExecHooks {
            pod: pod.clone(),
            source_namespace: source_namespace.clone(),
            done: 0,
            since: None,
        })
        .collect()
}

/// Appends `lines` to the restore's log in the bucket (made on first use).
pub async fn append_log(
    store: &crate::storage::ObjectStore,
    key: &str,
    lines: &[String],
) -> crate::Result<()> {
    let mut log = match store.get(key).await {
        Ok(data) => String::from_utf8_lossy(&crate::gunzip(&data)?).into_owned(),
        Err(crate::Error::NotFound { .. }) => String::new(),
        Err(error) => return Err(error),
    };
    for line in lines {
        if !log.is_empty() {
            log.push('\n');
        }
        log.push_str(line);
    }
    store.put(key, crate::gzip(log.as_bytes())?).await
}
