//! The node agent (`ferry agent`, a DaemonSet): a gRPC server that only the controller may call
//! (mutual TLS), backing up and restoring the pod volumes of its node with the data mover, and a
//! Lease that tells the controller where it is and that it is alive.

pub mod metrics;
pub mod service;
pub mod volume_path;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::agent::v1::agent_server::AgentServer;
use ferry_protocol::agent::{
    ADDRESS_ANNOTATION, LEASE_DURATION_SECONDS, TlsCredentials, lease_name,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

pub use service::{AgentService, AgentSettings, MARKER_DIR, TaskStopper};

/// Everything `ferry agent` is told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub settings: AgentSettings,
    /// Ferry's namespace, where the agent keeps its Lease.
    pub namespace: String,
    pub listen: SocketAddr,
    /// The address the controller reaches this agent at (`POD_IP:port`).
    pub advertise: String,
    pub tls: TlsCredentials,
    /// Where the service records its tasks; the caller serves them.
    pub metrics: Arc<metrics::AgentMetrics>,
}

/// Serves the agent API and keeps the Lease until `shutdown` resolves or serving fails.
pub async fn run(
    client: Client,
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    let service =
        AgentService::new(client.clone(), config.settings.clone()).with_metrics(config.metrics);
    // Running tasks are stopped, not waited for: the server then ends once each has told the
    // controller so, well within a pod's grace period.
    let stopper = service.stopper();
    let shutdown = async move {
        shutdown.await;
        let stopped = stopper.stop_all();
        tracing::info!(
            message = "stopping; running tasks cancelled, to be tried again",
            tasks = stopped
        );
    };
    let server = tonic::transport::Server::builder()
        .tls_config(config.tls.server_config())
        .map_err(|error| format!("the agent's TLS credentials: {error}"))?
        .add_service(AgentServer::new(service))
        .serve_with_shutdown(config.listen, shutdown);
    let heartbeat = keep_lease(
        client,
        config.namespace.clone(),
        config.settings.node_name.clone(),
        config.advertise.clone(),
    );
    tracing::info!(message = "agent serving", listen = %config.listen, advertise = %config.advertise, node = %config.settings.node_name);
    tokio::select! {
        served = server => served.map_err(|error| format!("serving on {}: {error}", config.listen)),
        () = heartbeat => Ok(()),
    }
}

/// Renews the node's Lease every third of its duration, forever; a failed renewal is logged and
/// tried again at the next beat.
pub async fn keep_lease(client: Client, namespace: String, node: String, address: String) {
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    let name = lease_name(&node);
    let period = Duration::from_secs(u64::try_from(LEASE_DURATION_SECONDS / 3).unwrap_or(10));
    loop {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "annotations": {ADDRESS_ANNOTATION: address},
                         "labels": {"app.kubernetes.io/name": "ferry", "app.kubernetes.io/component": "agent"}},
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": MicroTime(jiff::Timestamp::now()),
            },
        });
        if let Err(error) = leases
            .patch(
                &name,
                &PatchParams::apply("ferry-agent").force(),
                &Patch::Apply(&lease),
            )
            .await
        {
            tracing::warn!(message = "renewing the agent's Lease failed", %error, lease = %name);
        }
        tokio::time::sleep(period).await;
    }
}
