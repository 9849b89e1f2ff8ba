//! `ferry controller`: runs the reconcilers until stopped. deploy/controller.yaml runs this.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// The namespace whose Ferry resources (backups, restores, locations) this controller owns.
    #[arg(long, env = "FERRY_NAMESPACE", default_value = "ferry-system")]
    namespace: String,
    /// Where the kubelet's probes find /healthz and /readyz.
    #[arg(long, env = "FERRY_HEALTH_ADDRESS", default_value = "0.0.0.0:8080")]
    health_address: String,
}

pub fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = kube::Client::try_default().await.context(
            "connecting to the Kubernetes API server (in a pod: its service account; else KUBECONFIG or ~/.kube/config)",
        )?;
        let listener = TcpListener::bind(&args.health_address)
            .await
            .with_context(|| format!("listening for health probes on {}", args.health_address))?;
        tokio::spawn(serve_health(listener));
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?;
        tokio::select! {
            () = ferry_controller::run(client, args.namespace) => {}
            _ = tokio::signal::ctrl_c() => tracing::info!(message = "interrupted; stopping"),
            _ = terminate.recv() => tracing::info!(message = "terminated; stopping"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Answers the kubelet's HTTP probes. The process being able to answer is what they check; a
/// reconciler that fails reports it in its resources' status, not by restarting the pod.
async fn serve_health(listener: TcpListener) {
    loop {
        let Ok((mut connection, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let Ok(read) = connection.read(&mut request).await else {
                return;
            };
            let request = String::from_utf8_lossy(&request[..read]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let response: &[u8] = match path {
                "/healthz" | "/readyz" => {
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
                }
                _ => {
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                }
            };
            let _ = connection.write_all(response).await;
        });
    }
}
