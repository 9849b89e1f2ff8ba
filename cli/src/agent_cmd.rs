//! `ferry agent`: the node agent. deploy/agent.yaml runs this on every node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use ferry_agent::metrics::AgentMetrics;
use ferry_agent::{AgentConfig, AgentSettings};

use crate::cluster::ClusterArgs;
use crate::probes::{self, Response};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The node this agent serves (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Ferry's namespace, where the agent keeps its Lease.
    #[arg(long, env = "FERRY_NAMESPACE", default_value = "ferry-system")]
    namespace: String,
    /// The kubelet's pods directory, as mounted into the agent.
    #[arg(long, env = "FERRY_PODS_DIR", default_value = "/host_pods")]
    pods_dir: PathBuf,
    /// Where the gRPC server listens.
    #[arg(long, env = "FERRY_AGENT_LISTEN", default_value = "0.0.0.0:7443")]
    listen: SocketAddr,
    /// The address the controller reaches this agent at; default: POD_IP and the listen port.
    #[arg(long, env = "FERRY_AGENT_ADVERTISE")]
    advertise: Option<String>,
    /// Volume backups and restores at once on this node.
    #[arg(long, env = "FERRY_AGENT_MAX_TASKS", default_value_t = 2)]
    max_tasks: usize,
    /// A volume backup or restore still running this long after it started is stopped (e.g.
    /// `24h`, `90m`), so that nothing in a volume holds one of the node's task slots for ever.
    #[arg(long, env = "FERRY_AGENT_TASK_TIMEOUT", default_value = "24h", value_parser = parse_duration)]
    task_timeout: std::time::Duration,
    /// Where Prometheus finds /metrics and the kubelet /healthz: plain HTTP, apart from the
    /// gRPC port, which admits only the controller.
    #[arg(
        long,
        env = "FERRY_AGENT_METRICS_LISTEN",
        default_value = "0.0.0.0:8085"
    )]
    metrics_listen: SocketAddr,
}

pub fn run(args: AgentArgs, cluster: &ClusterArgs) -> anyhow::Result<ExitCode> {
    let advertise = match args.advertise {
        Some(address) => address,
        None => {
            let ip = std::env::var("POD_IP").context(
                "neither --advertise nor POD_IP is set: the controller could not reach this agent",
            )?;
            format!("{ip}:{}", args.listen.port())
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = cluster.client().await.context(
            "connecting to the Kubernetes API server (in a pod: its service account; else --kubeconfig, KUBECONFIG or ~/.kube/config)",
        )?;
        let listener = tokio::net::TcpListener::bind(args.metrics_listen)
            .await
            .with_context(|| format!("listening for metrics on {}", args.metrics_listen))?;
        let metrics = Arc::new(AgentMetrics::new());
        tokio::spawn(probes::serve(listener, {
            let metrics = metrics.clone();
            move |path| {
                let metrics = metrics.clone();
                async move { respond(&path, &metrics) }
            }
        }));
        let config = AgentConfig {
            settings: AgentSettings {
                node_name: args.node_name,
                namespace: args.namespace.clone(),
                pods_dir: args.pods_dir,
                max_tasks: args.max_tasks,
                task_timeout: args.task_timeout,
            },
            namespace: args.namespace,
            listen: args.listen,
            advertise,
            metrics,
        };
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!(message = "stopping");
        };
        ferry_agent::run(client, config, shutdown)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(ExitCode::SUCCESS)
    })
}

fn respond(path: &str, metrics: &AgentMetrics) -> Response {
    match path {
        "/healthz" => Response::ok("ok"),
        "/metrics" => Response::metrics(ferry_agent::metrics::CONTENT_TYPE, metrics.encode()),
        _ => Response::not_found(),
    }
}

/// `ferry restore-wait`: the init container a restore gives each pod whose volumes the agents
/// fill. It holds the pod until every volume holds the restore's completion marker.
#[derive(Debug, Args)]
pub struct RestoreWaitArgs {
    /// The marker file (in `.ferry/` of each volume) the agent writes once the data is in place.
    #[arg(long)]
    marker: String,
    /// The volumes, as mounted into this container.
    #[arg(required = true)]
    volumes: Vec<PathBuf>,
    /// How often to look, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

pub fn restore_wait(args: RestoreWaitArgs) -> anyhow::Result<ExitCode> {
    let markers: Vec<PathBuf> = args
        .volumes
        .iter()
        .map(|volume| volume.join(ferry_agent::MARKER_DIR).join(&args.marker))
        .collect();
    let mut waiting_for = usize::MAX;
    loop {
        let missing: Vec<&PathBuf> = markers.iter().filter(|m| !m.exists()).collect();
        if missing.is_empty() {
            eprintln!("ferry: every volume is restored; starting the pod");
            return Ok(ExitCode::SUCCESS);
        }
        if missing.len() != waiting_for {
            waiting_for = missing.len();
            eprintln!(
                "ferry: waiting for the node agent to restore {} volume(s): {}",
                missing.len(),
                missing
                    .iter()
                    .map(|m| m.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(args.interval_ms));
    }
}

/// `ferry lend-device`: a pod that holds a block device lends it, open, to its node's agent,
/// which cannot open it itself (see `ferry_agent::device_lending`). Runs until the pod is deleted.
#[derive(Debug, Args)]
pub struct LendDeviceArgs {
    /// The device, as the pod has it (`volumeDevices[].devicePath`).
    #[arg(long)]
    device: PathBuf,
    /// The socket to make, in the pod's device exchange volume.
    #[arg(long)]
    socket: PathBuf,
    /// Lend it for writing too (a restore fills it).
    #[arg(long)]
    writable: bool,
}

pub fn lend_device(args: LendDeviceArgs) -> anyhow::Result<ExitCode> {
    match ferry_agent::device_lending::lend(&args.device, &args.socket, args.writable)? {}
}

/// A duration such as `24h`, `90m` or `1h 30m`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration: jiff::SignedDuration = text
        .parse()
        .map_err(|error| format!("{text:?} is not a duration such as 24h or 90m: {error}"))?;
    std::time::Duration::try_from(duration)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?}: the timeout must be positive"))
}
