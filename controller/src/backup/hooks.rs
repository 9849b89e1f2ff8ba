//! A backup's hooks, around the capture of its pods' volumes: every selected pod's pre hooks run
//! once the objects are listed and just before the volumes are captured (native snapshots are
//! taken at once, the node agents' file-level backups start); a pod's post hooks run as soon as
//! its own file-level backups have ended (at once for a pod with none: a native snapshot's
//! point in time is when it is started), and whatever happened to them.
//!
//! Post hooks undo what pre hooks did (a frozen filesystem, a database in backup mode), so they
//! must run whatever happens: the pods whose post hooks are owed are in the status
//! (`postHooksPending`) before the first pre hook runs. A controller that restarts finds them
//! there: a backup that was listing is ended, and its owed post hooks run first
//! ([`run_owed_post_hooks`]); one waiting for its volumes runs them when the pods' volumes end, as
//! before. A post hook can so run twice, never not at all.

use ferry_protocol::crd::{Backup, BackupStatus};
use ferry_protocol::volume::{VolumePhase, VolumeRecords};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};
use serde_json::Value;

use super::Results;
use crate::context::Context;
use crate::hooks::{self, BackupHookRules, HookPhase, HookReport, PodHooks, pod_key};

/// A pod of the backup that has hooks.
pub struct HookedPod {
    pub namespace: String,
    pub name: String,
    pub hooks: PodHooks,
}

impl HookedPod {
    fn key(&self) -> String {
        pod_key(&self.namespace, &self.name)
    }
}

/// Moves `report` into a backup's status counts, results and log.
pub fn record(
    report: HookReport,
    status: &mut BackupStatus,
    results: &mut Results,
    log: &mut Vec<String>,
) {
    status.hooks_attempted += report.attempted;
    status.hooks_failed += report.failed;
    log.extend(report.log);
    results.errors.extend(report.errors);
    results.warnings.extend(report.warnings);
}

/// The backed-up pods that run hooks (`pods` as listed); a pod whose annotations cannot be read
/// runs none, and is an error in `report`.
pub fn chosen(rules: &BackupHookRules, pods: &[Value], report: &mut HookReport) -> Vec<HookedPod> {
    let mut hooked = Vec::new();
    for value in pods {
        let Ok(pod) = serde_json::from_value::<Pod>(value.clone()) else {
            continue;
        };
        let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        match rules.for_pod(&pod) {
            Ok(hooks) if hooks.is_empty() => {}
            Ok(hooks) => hooked.push(HookedPod {
                namespace,
                name,
                hooks,
            }),
            Err(problem) => report.errors.push(format!(
                "hooks of pod {namespace}/{name} not run: {problem}"
            )),
        }
    }
    hooked
}

/// Runs the pre hooks of every pod in `hooked`, having first recorded in the status (applied)
/// that their post hooks are owed. Their counts reach the status with [`record`].
pub async fn run_pre_hooks(
    ctx: &Context,
    backup: &Backup,
    hooked: &[HookedPod],
    status: &mut BackupStatus,
    report: &mut HookReport,
) -> crate::Result<()> {
    status.post_hooks_pending = hooked
        .iter()
        .filter(|pod| !pod.hooks.post.is_empty())
        .map(HookedPod::key)
        .collect();
    if !status.post_hooks_pending.is_empty() {
        ctx.apply_status(backup, status).await?;
    }
    for pod in hooked.iter().filter(|pod| !pod.hooks.pre.is_empty()) {
        let outcomes = hooks::run_hooks(
            ctx,
            &pod.namespace,
            &pod.name,
            HookPhase::Pre,
            &pod.hooks.pre,
        )
        .await;
        report.add(outcomes);
    }
    Ok(())
}

/// Runs the post hooks owed to pods whose file-level volume backups have all ended (every owed
/// one when `records` is `None`), and takes them off `status.postHooksPending`. The hooks are
/// read again from the pod and the Backup's spec, so a restarted controller runs the same.
pub async fn run_post_hooks(
    ctx: &Context,
    backup: &Backup,
    records: Option<&VolumeRecords>,
    status: &mut BackupStatus,
    report: &mut HookReport,
) {
    if status.post_hooks_pending.is_empty() {
        return;
    }
    let rules = BackupHookRules::resolve(backup.spec.hooks.as_ref()).unwrap_or_default();
    let mut still_owed = Vec::new();
    for key in std::mem::take(&mut status.post_hooks_pending) {
        let Some((namespace, name)) = key.split_once('/') else {
            continue;
        };
        let capturing = records.is_some_and(|records| {
            records.volumes.iter().any(|r| {
                r.phase == VolumePhase::InProgress
                    && r.pod_volume
                        .as_ref()
                        .is_some_and(|p| p.namespace == namespace && p.pod == name)
            })
        });
        if capturing {
            still_owed.push(key);
            continue;
        }
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
        let hooks = match pods.get_opt(name).await {
            Ok(Some(pod)) => rules.for_pod(&pod),
            Ok(None) => Err("the pod is gone".to_owned()),
            Err(error) => {
                // Try again at the next look rather than lose the hook.
                tracing::warn!(message = "reading a pod for its post hooks failed", pod = %key, %error);
                still_owed.push(key);
                continue;
            }
        };
        match hooks {
            Ok(hooks) => {
                let outcomes =
                    hooks::run_hooks(ctx, namespace, name, HookPhase::Post, &hooks.post).await;
                report.add(outcomes);
            }
            Err(problem) => report
                .warnings
                .push(format!("post hooks of pod {key} not run: {problem}")),
        }
    }
    status.post_hooks_pending = still_owed;
}

/// A backup that was listing when the controller stopped: runs the post hooks it owes, and says
/// how that went, for its failure reason.
pub async fn run_owed_post_hooks(ctx: &Context, backup: &Backup) -> Option<String> {
    let mut status = backup.status.clone().unwrap_or_default();
    if status.post_hooks_pending.is_empty() {
        return None;
    }
    let owed = status.post_hooks_pending.len();
    let mut report = HookReport::default();
    run_post_hooks(ctx, backup, None, &mut status, &mut report).await;
    let problems: Vec<String> = report
        .errors
        .iter()
        .chain(&report.warnings)
        .cloned()
        .collect();
    Some(if problems.is_empty() {
        format!("the post hooks of {owed} pods ran")
    } else {
        format!(
            "the post hooks of {owed} pods ran, with problems: {}",
            problems.join("; ")
        )
    })
}
