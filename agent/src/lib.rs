//! The node agent (`ferry agent`, a DaemonSet): a gRPC server that only the controller may call
//! (mutual TLS, with a certificate issued for this node: [`identity`]), backing up and restoring
//! the pod volumes of its node with the data mover, and a Lease that tells the controller where it
//! is, that it is alive, and which key it holds.

pub mod device_lending;
pub mod identity;
pub mod metrics;
pub mod service;
pub mod volume_path;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::agent::v1::agent_server::AgentServer;
use ferry_protocol::agent::{
    ADDRESS_ANNOTATION, LEASE_COMPONENT_LABEL, LEASE_DURATION_SECONDS, lease_name,
};
use ferry_protocol::pki::REQUEST_ANNOTATION;
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
    /// Where the service records its tasks; the caller serves them.
    pub metrics: Arc<metrics::AgentMetrics>,
}

/// Serves the agent API and keeps the Lease until `shutdown` resolves or serving fails.
pub async fn run(
    client: Client,
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    let (identity, configs) = identity::Identity::new(&config.settings.node_name)
        .map_err(|error| format!("making the agent's key: {error}"))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| format!("listening on {}: {error}", config.listen))?;
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
        .add_service(AgentServer::new(service))
        .serve_with_incoming_shutdown(tls_connections(listener, configs), shutdown);
    let heartbeat = keep_lease(
        client,
        config.namespace.clone(),
        config.settings.node_name.clone(),
        config.advertise.clone(),
        identity,
    );
    tracing::info!(message = "agent serving", listen = %config.listen, advertise = %config.advertise, node = %config.settings.node_name);
    tokio::select! {
        served = server => served.map_err(|error| format!("serving on {}: {error}", config.listen)),
        () = heartbeat => Ok(()),
    }
}

/// The connections that completed the TLS handshake with the current certificate, each shaken
/// hands with in a task of its own (with a deadline) so that a slow or hostile client holds up
/// nobody else. Until a certificate is issued, connections are closed at once.
fn tls_connections(
    listener: tokio::net::TcpListener,
    configs: identity::ServerConfigs,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(message = "accepting a connection failed", %error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(config) = configs.borrow().clone() else {
                tracing::info!(message = "refused a connection: no certificate issued for this node yet", %peer);
                continue;
            };
            let connections = sender.clone();
            tokio::spawn(async move {
                let handshake = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
                match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                    Ok(Ok(tls)) => {
                        let _ = connections.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(message = "refused a connection: TLS handshake failed", %peer, %error);
                    }
                    Err(_) => {
                        tracing::warn!(message = "refused a connection: no TLS handshake within 10 s", %peer);
                    }
                }
            });
            if sender.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// Renews the node's Lease every third of its duration, forever, with the agent's address and
/// certificate request; takes what the controller wrote back (the certificate) from the answer. A
/// failed renewal is logged and tried again at the next beat.
pub async fn keep_lease(
    client: Client,
    namespace: String,
    node: String,
    address: String,
    mut identity: identity::Identity,
) {
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    let name = lease_name(&node);
    let period = Duration::from_secs(u64::try_from(LEASE_DURATION_SECONDS / 3).unwrap_or(10));
    loop {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name,
                         "annotations": {ADDRESS_ANNOTATION: address, REQUEST_ANNOTATION: identity.request()},
                         "labels": {"app.kubernetes.io/name": "ferry", LEASE_COMPONENT_LABEL.0: LEASE_COMPONENT_LABEL.1}},
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": MicroTime(jiff::Timestamp::now()),
            },
        });
        match leases
            .patch(
                &name,
                &PatchParams::apply("ferry-agent").force(),
                &Patch::Apply(&lease),
            )
            .await
        {
            Ok(lease) => identity.update(&lease.metadata.annotations.unwrap_or_default()),
            Err(error) => {
                tracing::warn!(message = "renewing the agent's Lease failed", %error, lease = %name)
            }
        }
        tokio::time::sleep(identity.next_beat(period)).await;
    }
}
