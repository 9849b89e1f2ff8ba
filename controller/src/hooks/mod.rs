//! Hooks: commands run in an application's containers around the capture of its volumes, so that
//! a database can flush and freeze its files first and thaw them after (Velero's hooks, with
//! Velero's annotations honoured).
//!
//! - [`choose`] decides which hooks a pod runs: those of its annotations
//!   (`pre.hook.backup.ferry.dev/command`, or Velero's `pre.hook.backup.velero.io/command`), else
//!   those of the Backup spec's `hooks.resources` that select it. Pure, no cluster.
//! - [`exec`] runs one hook through the API server's pod exec, with its timeout, keeping the tail
//!   of its output.
//! - [`RestoreHookRules`] does the same for a restored pod: init containers, and exec hooks run
//!   once their container is up ([`container_is_up`]).
//! - [`run_hooks`] runs a pod's pre or post hooks in order and reports each in one
//!   [`HookOutcome`], whose [`HookOutcome::log_line`] is what the backup's log says of it.

mod choose;
mod exec;
mod restore;

use std::time::Duration;

use ferry_protocol::crd::HookErrorMode;

use crate::context::Context;

pub use choose::{BackupHookRules, PodHooks, pod_key};
pub use exec::container_is_up;
pub use restore::{ExecHook, RestoreHookRules, RestorePodHooks};

/// How long a hook may run when it does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPhase {
    Pre,
    Post,
}

impl std::fmt::Display for HookPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HookPhase::Pre => "pre",
            HookPhase::Post => "post",
        })
    }
}

/// One command to run in a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// Where it comes from: `annotations`, or the name of the spec's hook rule.
    pub source: String,
    /// The container; `None` for the pod's first.
    pub container: Option<String>,
    pub command: Vec<String>,
    pub on_error: HookErrorMode,
    pub timeout: Duration,
}

/// What happened when a hook ran (or could not).
#[derive(Clone, Debug)]
pub struct HookOutcome {
    pub namespace: String,
    pub pod: String,
    pub phase: HookPhase,
    pub hook: Hook,
    /// The container it ran in.
    pub container: String,
    pub duration: Duration,
    /// The command's exit code, when it ran to its end.
    pub exit_code: Option<i32>,
    /// Why it failed, if it did.
    pub failure: Option<String>,
    /// Its pod or container was not running, so it did not run: a warning, never an error (a
    /// hook cannot quiesce what does not run).
    pub not_running: bool,
    /// The last bytes of its standard output and error.
    pub output_tail: String,
}

impl HookOutcome {
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Whether the failure makes the backup PartiallyFailed (else it is a warning).
    pub fn is_error(&self) -> bool {
        self.failed() && !self.not_running && self.hook.on_error == HookErrorMode::Fail
    }

    /// The line a backup's results have for it: an error, a warning, or nothing when it
    /// succeeded.
    pub fn problem(&self) -> Option<Problem> {
        let failure = self.failure.as_ref()?;
        let line = format!(
            "{} hook {} of pod {}/{} (container {}): {failure}",
            self.phase, self.hook.source, self.namespace, self.pod, self.container
        );
        Some(if self.is_error() {
            Problem::Error(line)
        } else {
            Problem::Warning(line)
        })
    }

    /// The line the backup's log has for it: pod, hook, container, command, exit, duration and
    /// the tail of the output.
    pub fn log_line(&self) -> String {
        let result = match (&self.failure, self.exit_code) {
            (Some(failure), _) => format!("FAILED ({failure})"),
            (None, Some(code)) => format!("exit {code}"),
            (None, None) => "done".to_owned(),
        };
        let mut line = format!(
            "hook {} {} ({}) in {}/{} container {}: {:?}: {result} in {:.1} s",
            self.phase,
            self.hook.source,
            match self.hook.on_error {
                HookErrorMode::Fail => "on error Fail",
                HookErrorMode::Continue => "on error Continue",
            },
            self.namespace,
            self.pod,
            self.container,
            self.hook.command,
            self.duration.as_secs_f64()
        );
        let output = self.output_tail.trim();
        if !output.is_empty() {
            line.push_str(&format!("; output: {}", output.replace('\n', "\\n")));
        }
        line
    }
}

/// What hooks reported: lines for the operation's log, its errors and warnings, and counts for
/// its status.
#[derive(Debug, Default)]
pub struct HookReport {
    pub log: Vec<String>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Hooks that ran (not those whose pod or container was not running).
    pub attempted: u32,
    pub failed: u32,
}

impl HookReport {
    pub fn is_empty(&self) -> bool {
        self.log.is_empty() && self.errors.is_empty() && self.warnings.is_empty()
    }

    /// Adds `outcomes`.
    pub fn add(&mut self, outcomes: impl IntoIterator<Item = HookOutcome>) {
        for outcome in outcomes {
            if !outcome.not_running {
                self.attempted += 1;
                self.failed += u32::from(outcome.failed());
            }
            self.log.push(outcome.log_line());
            match outcome.problem() {
                Some(Problem::Error(line)) => self.errors.push(line),
                Some(Problem::Warning(line)) => self.warnings.push(line),
                None => {}
            }
        }
    }
}

/// A failed hook, as a backup's results record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    Error(String),
    Warning(String),
}

/// Runs `hooks` of the `phase` in pod `namespace/pod`, in order. A failed pre hook whose
/// `onError` is Fail ends the pod's pre hooks there (its later ones would run on an application
/// in an unknown state); post hooks all run whatever happened, since they undo what the pre
/// hooks did.
pub async fn run_hooks(
    ctx: &Context,
    namespace: &str,
    pod: &str,
    phase: HookPhase,
    hooks: &[Hook],
) -> Vec<HookOutcome> {
    run_in_order(phase, hooks, |hook| {
        exec::run(ctx, namespace, pod, phase, hook)
    })
    .await
}

/// [`run_hooks`]'s order and stopping rule, with `run` running one hook.
async fn run_in_order<'h, Run, Ran>(
    phase: HookPhase,
    hooks: &'h [Hook],
    mut run: Run,
) -> Vec<HookOutcome>
where
    Run: FnMut(&'h Hook) -> Ran,
    Ran: Future<Output = HookOutcome>,
{
    let mut outcomes = Vec::new();
    for hook in hooks {
        let outcome = run(hook).await;
        tracing::info!(message = "ran a hook", line = %outcome.log_line());
        let stop = phase == HookPhase::Pre && outcome.is_error();
        outcomes.push(outcome);
        if stop {
            break;
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(command: &str, on_error: HookErrorMode) -> Hook {
        Hook {
            source: "\"rule\"".into(),
            container: None,
            command: vec![command.into()],
            on_error,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Runs `hooks` where the command `fail` fails and every other succeeds; the commands run.
    fn run(phase: HookPhase, hooks: &[Hook]) -> (Vec<String>, HookReport) {
        let outcomes = futures::executor::block_on(run_in_order(phase, hooks, |hook| {
            let failed = hook.command[0].starts_with("fail");
            std::future::ready(HookOutcome {
                namespace: "shop".into(),
                pod: "db-0".into(),
                phase,
                hook: hook.clone(),
                container: "db".into(),
                duration: Duration::from_millis(1500),
                exit_code: Some(i32::from(failed)),
                failure: failed.then(|| "exited with code 1".to_owned()),
                not_running: false,
                output_tail: "said\nthis".into(),
            })
        }));
        let ran = outcomes.iter().map(|o| o.hook.command[0].clone()).collect();
        let mut report = HookReport::default();
        report.add(outcomes);
        (ran, report)
    }

    #[test]
    fn a_pre_hook_failing_with_fail_stops_the_pods_pre_hooks_and_post_hooks_all_run() {
        use HookErrorMode::{Continue, Fail};
        let hooks = [
            hook("checkpoint", Fail),
            hook("fail-soft", Continue),
            hook("freeze", Fail),
            hook("fail-hard", Fail),
            hook("never", Fail),
        ];
        let (ran, report) = run(HookPhase::Pre, &hooks);
        assert_eq!(ran, ["checkpoint", "fail-soft", "freeze", "fail-hard"]);
        assert_eq!((report.attempted, report.failed), (4, 2));
        assert_eq!(report.warnings.len(), 1, "{report:?}");
        assert!(report.warnings[0].contains("pre hook \"rule\" of pod shop/db-0 (container db)"));
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert!(report.errors[0].contains("exited with code 1"));
        assert_eq!(
            report.log[3],
            "hook pre \"rule\" (on error Fail) in shop/db-0 container db: [\"fail-hard\"]: FAILED (exited with code 1) in 1.5 s; output: said\\nthis"
        );

        let (ran, report) = run(HookPhase::Post, &hooks);
        assert_eq!(ran.len(), 5, "post hooks all run: {ran:?}");
        assert_eq!((report.errors.len(), report.warnings.len()), (1, 1));
    }
}
