//! Running one hook in a pod's container through the API server's pod exec (so the controller
//! needs no access to nodes), within its timeout, keeping only the tail of what it prints: the
//! output of a command in somebody's container is not ours to hold whole.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Hook, HookOutcome, HookPhase};
use crate::context::Context;

/// The most of a hook's output kept for the log, from its end.
const OUTPUT_TAIL: usize = 512;

/// Runs `hook` in pod `namespace/pod`. Never fails: what went wrong is in the outcome.
pub async fn run(
    ctx: &Context,
    namespace: &str,
    pod: &str,
    phase: HookPhase,
    hook: &Hook,
) -> HookOutcome {
    let started = Instant::now();
    let mut outcome = HookOutcome {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        phase,
        hook: hook.clone(),
        container: hook.container.clone().unwrap_or_default(),
        duration: Duration::ZERO,
        exit_code: None,
        failure: None,
        not_running: false,
        output_tail: String::new(),
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    match running_container(&pods, pod, hook.container.as_deref()).await {
        Ok(container) => outcome.container = container,
        Err(NotRunnable::NotRunning(why)) => {
            outcome.failure = Some(format!("not run: {why}"));
            outcome.not_running = true;
            return outcome;
        }
        Err(NotRunnable::Error(why)) => {
            outcome.failure = Some(why);
            return outcome;
        }
    }
    let params = AttachParams::default()
        .container(outcome.container.clone())
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let finished = tokio::time::timeout(hook.timeout, async {
        let mut process = pods
            .exec(pod, hook.command.clone(), &params)
            .await
            .map_err(|error| format!("exec: {error}"))?;
        let status = process.take_status();
        let (stdout, stderr) = (process.stdout(), process.stderr());
        let (out, err) = tokio::join!(tail(stdout), tail(stderr));
        let status = match status {
            Some(status) => status.await,
            None => None,
        };
        // Drop the connection once the status is in; join would wait for the same.
        drop(process);
        Ok::<_, String>((status, out, err))
    })
    .await;
    outcome.duration = started.elapsed();
    match finished {
        Err(_) => {
            outcome.failure = Some(format!(
                "timed out after {} s (the command may still run in the container)",
                hook.timeout.as_secs()
            ));
        }
        Ok(Err(error)) => outcome.failure = Some(error),
        Ok(Ok((status, out, err))) => {
            outcome.output_tail = join_tails(&out, &err);
            match exit_code(status.as_ref()) {
                Ok(0) => outcome.exit_code = Some(0),
                Ok(code) => {
                    outcome.exit_code = Some(code);
                    outcome.failure = Some(format!("exited with code {code}"));
                }
                Err(error) => outcome.failure = Some(error),
            }
        }
    }
    outcome
}

enum NotRunnable {
    /// The pod or container is not running: a warning.
    NotRunning(String),
    /// The pod could not be looked at, or names no such container: a failure.
    Error(String),
}

/// The container to run in (`container`, or the pod's first), if the pod and it are running.
async fn running_container(
    pods: &Api<Pod>,
    pod: &str,
    container: Option<&str>,
) -> Result<String, NotRunnable> {
    let found = pods
        .get_opt(pod)
        .await
        .map_err(|error| NotRunnable::Error(format!("reading the pod: {error}")))?
        .ok_or_else(|| NotRunnable::NotRunning("the pod is gone".to_owned()))?;
    let state = container_state(&found, container).map_err(NotRunnable::Error)?;
    if state.pod_phase != "Running" {
        return Err(NotRunnable::NotRunning(format!(
            "the pod is {}, not Running",
            state.pod_phase
        )));
    }
    if !state.running {
        return Err(NotRunnable::NotRunning(format!(
            "container {} is not running",
            state.name
        )));
    }
    Ok(state.name)
}

/// Whether the container of `namespace/pod` a hook runs in (`container`, or the first) is
/// running, and Ready too when `ready`; an error when the pod is gone or has no such container.
pub async fn container_is_up(
    ctx: &Context,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    ready: bool,
) -> Result<bool, String> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let found = pods
        .get_opt(pod)
        .await
        .map_err(|error| format!("reading the pod: {error}"))?
        .ok_or_else(|| "the pod is gone".to_owned())?;
    let state = container_state(&found, container)?;
    Ok(state.running && (!ready || state.ready))
}

struct ContainerState {
    name: String,
    pod_phase: String,
    running: bool,
    ready: bool,
}

fn container_state(pod: &Pod, container: Option<&str>) -> Result<ContainerState, String> {
    let containers = pod.spec.as_ref().map_or(&[][..], |s| &s.containers[..]);
    let name = match container {
        Some(name) => {
            if !containers.iter().any(|c| c.name == name) {
                let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
                return Err(format!(
                    "the pod has no container {name:?} (it has {})",
                    names.join(", ")
                ));
            }
            name.to_owned()
        }
        None => containers
            .first()
            .map(|c| c.name.clone())
            .ok_or_else(|| "the pod has no containers".to_owned())?,
    };
    let status = pod.status.clone().unwrap_or_default();
    let this = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name);
    Ok(ContainerState {
        pod_phase: status.phase.unwrap_or_default(),
        running: this.is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())),
        ready: this.is_some_and(|c| c.ready),
        name,
    })
}

/// Reads `stream` to its end, keeping its last [`OUTPUT_TAIL`] bytes.
async fn tail(stream: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut stream) = stream else {
        return Vec::new();
    };
    let mut kept = Vec::with_capacity(2 * OUTPUT_TAIL);
    let mut buffer = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buffer[..n]);
        if kept.len() > 2 * OUTPUT_TAIL {
            kept.drain(..kept.len() - OUTPUT_TAIL);
        }
    }
    if kept.len() > OUTPUT_TAIL {
        kept.drain(..kept.len() - OUTPUT_TAIL);
    }
    kept
}

fn join_tails(out: &[u8], err: &[u8]) -> String {
    let (out, err) = (String::from_utf8_lossy(out), String::from_utf8_lossy(err));
    match (out.trim().is_empty(), err.trim().is_empty()) {
        (_, true) => out.trim().to_owned(),
        (true, false) => err.trim().to_owned(),
        (false, false) => format!("{}\n{}", out.trim(), err.trim()),
    }
}

/// The exit code in the status the API server sends when the command ends.
fn exit_code(
    status: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
) -> Result<i32, String> {
    let status = status.ok_or("the connection closed before the command's exit status came")?;
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_deref()?.parse().ok());
    code.ok_or_else(|| {
        format!(
            "exec failed: {}",
            status.message.as_deref().unwrap_or("no message")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

    #[tokio::test]
    async fn only_the_tail_of_a_long_output_is_kept() {
        let long: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let kept = tail(Some(&long[..])).await;
        assert_eq!(kept, long[long.len() - OUTPUT_TAIL..]);
        assert_eq!(tail(Some(&b"short"[..])).await, b"short");
    }

    #[test]
    fn the_exit_code_comes_from_the_status() {
        let status = |json: serde_json::Value| serde_json::from_value::<Status>(json).unwrap();
        assert_eq!(
            exit_code(Some(&status(serde_json::json!({"status": "Success"})))),
            Ok(0)
        );
        let failed = status(
            serde_json::json!({"status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}),
        );
        assert_eq!(exit_code(Some(&failed)), Ok(3));
        let no_binary = status(serde_json::json!({"status": "Failure",
            "message": "exec: \"nope\": executable file not found in $PATH"}));
        assert!(
            exit_code(Some(&no_binary))
                .unwrap_err()
                .contains("executable file not found")
        );
        assert!(exit_code(None).is_err());
    }
}
