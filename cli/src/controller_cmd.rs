//! `ferry controller`: runs the reconcilers until stopped. deploy/controller.yaml runs this.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use ferry_controller::Metrics;
use tokio::net::TcpListener;

use crate::cluster::ClusterArgs;
use crate::probes::{self, Response};

/// How long /readyz waits for the API server before calling the controller not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// The namespace whose Ferry resources (backups, restores, locations) this controller owns.
    #[arg(long, env = "FERRY_NAMESPACE", default_value = "ferry-system")]
    namespace: String,
    /// Where the kubelet's probes find /healthz and /readyz, and Prometheus finds /metrics.
    #[arg(long, env = "FERRY_HEALTH_ADDRESS", default_value = "0.0.0.0:8080")]
    health_address: String,
}

pub fn run(args: ControllerArgs, cluster: &ClusterArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        // --kubeconfig and --context as every other command takes them; in a pod, its service
        // account.
        let client = cluster.client().await.context(
            "connecting to the Kubernetes API server (in a pod: its service account; else --kubeconfig, KUBECONFIG or ~/.kube/config)",
        )?;
        let listener = TcpListener::bind(&args.health_address)
            .await
            .with_context(|| format!("listening for health probes on {}", args.health_address))?;
        let metrics = Arc::new(Metrics::new());
        tokio::spawn(probes::serve(listener, {
            let (client, metrics) = (client.clone(), metrics.clone());
            move |path| respond(path, client.clone(), metrics.clone())
        }));
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?;
        // Only the holder of the leader Lease works; a process that loses it exits, and its
        // pod's restart waits for the Lease again.
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
            format!("{}-{}", hostname(), std::process::id())
        });
        let candidate = ferry_controller::leader::Candidate::new(
            client.clone(),
            &args.namespace,
            &identity,
            ferry_controller::leader::Timing::default(),
        );
        candidate.acquire().await?;
        // The restore-wait init containers and maintenance Jobs run the controller's own image.
        if std::env::var_os("FERRY_IMAGE").is_none()
            && let Ok(pod) = std::env::var("POD_NAME")
        {
            match ferry_controller::image::discover(&client, &args.namespace, &pod).await {
                Ok(own) => tracing::info!(message = "the pods Ferry makes run the controller's own image", image = %own.image),
                Err(error) => tracing::warn!(
                    message = "cannot tell the controller's own image; the pods Ferry makes run the default one unless FERRY_IMAGE names it",
                    %error,
                    image = ferry_controller::image::DEFAULT_IMAGE
                ),
            }
        }
        // The agents' CA now, not at the first pod volume backup: agents ask for their
        // certificates as they start.
        tokio::spawn(make_agent_ca(client.clone(), args.namespace.clone()));
        let controller = ferry_controller::run_with(
            client,
            args.namespace,
            ferry_controller::Clock::system(),
            metrics,
        );
        tokio::select! {
            () = controller => {}
            () = candidate.hold() => anyhow::bail!("lost the leader Lease {}; exiting so that only one controller works", ferry_controller::leader::LEASE_NAME),
            _ = tokio::signal::ctrl_c() => tracing::info!(message = "interrupted; stopping"),
            _ = terminate.recv() => tracing::info!(message = "terminated; stopping"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Makes the agent API's CA (the Secret ferry-agent-ca) unless it exists, trying again until the
/// API server takes it.
async fn make_agent_ca(client: kube::Client, namespace: String) {
    let ctx = ferry_controller::Context::new(client, &namespace);
    let mut delay = Duration::from_secs(1);
    loop {
        match ferry_controller::certificates::agent_ca(&ctx).await {
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(message = "making the agent API's CA failed; trying again", %error);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// /healthz: the process answers; a reconciler that fails reports it in its resources' status,
/// not by restarting the pod. /readyz: the API server answers too, so the controller can work.
async fn respond(path: String, client: kube::Client, metrics: Arc<Metrics>) -> Response {
    match path.as_str() {
        "/healthz" => Response::ok("ok"),
        "/readyz" => match tokio::time::timeout(READY_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => Response::ok("ok"),
            Ok(Err(error)) => Response::unavailable(format!("the API server: {error}")),
            Err(_) => Response::unavailable(format!(
                "the API server did not answer within {READY_TIMEOUT:?}"
            )),
        },
        "/metrics" => Response::metrics(ferry_controller::metrics::CONTENT_TYPE, metrics.encode()),
        _ => Response::not_found(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "ferry-controller".to_owned())
}
