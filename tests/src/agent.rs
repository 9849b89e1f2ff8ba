//! Ferry's node agent as the DaemonSet runs it: one `ferry agent` process per fake node, with its
//! own kubelet root, a certificate issued for its node, and its log in a file the test can read. A test kills it as a node failure or an OOM kill would, and
//! restarts it as the DaemonSet would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_protocol::agent::lease_name;
use ferry_protocol::pki::AgentCa;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tempfile::TempDir;

use crate::{CONVERGENCE_TIMEOUT, FakeKubelet, RunningController, TestEnv, unique_name};

/// The log line an agent writes once it serves with a certificate (agent/src/identity.rs).
const SERVING: &str = "serving with a certificate issued for this node";

/// The `ferry` binary that `cargo test --workspace` builds next to the test executables, or
/// `FERRY_BIN`.
pub fn ferry_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRY_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    // Test executables live in <target>/debug/deps, benchmark binaries in <target>/debug.
    let binary = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("ferry"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no ferry binary next to {}: run the tests with `cargo test --workspace` (which \
                 builds it), or set FERRY_BIN to its path",
                exe.display()
            )
        });
    assert_not_stale(&binary);
    binary
}

/// `cargo test --test <name>` builds no binary of another package: a `ferry` older than the
/// sources it is built from would test yesterday's agent.
fn assert_not_stale(binary: &std::path::Path) {
    let Some(built) = modified(binary) else {
        return;
    };
    let workspace = crate::workspace_root();
    let mut stack: Vec<PathBuf> = [
        "mover/src",
        "agent/src",
        "controller/src",
        "protocol/src",
        "protocol/proto",
        "cli/src",
    ]
    .iter()
    .map(|dir| workspace.join(dir))
    .collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else if modified(&path).is_some_and(|changed| changed > built) {
            panic!(
                "{} is older than {}: rebuild it with `cargo build --workspace --tests` (or run \
                 `cargo test --workspace`), or set FERRY_BIN",
                binary.display(),
                path.display()
            );
        }
    }
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A `ferry agent` process serving one fake node; killed when dropped.
pub struct RunningAgent {
    pub kubelet: FakeKubelet,
    address: String,
    /// Where the agent serves /metrics and /healthz.
    metrics_address: String,
    namespace: String,
    /// The CA that issues this agent's certificates (certificate and key, in PEM).
    ca: (String, String),
    /// The log (`agent.log`).
    files: TempDir,
    child: Option<Child>,
}

impl RunningAgent {
    /// Starts an agent for a new node, keeping its Lease in `namespace`, and waits until it
    /// serves with a certificate of `ca` (the one a controller in `namespace` keeps, when one
    /// runs there: [`agent_ca`]). The harness issues it as the controller would, so that tests
    /// of the agent alone need no controller.
    pub async fn start(client: &Client, namespace: &str, ca: &AgentCa) -> RunningAgent {
        let kubelet = FakeKubelet::start(client, &unique_name("node")).await;
        std::fs::create_dir_all(kubelet.root().join("pods")).expect("the kubelet's pods dir");
        let files = tempfile::Builder::new()
            .prefix("ferry-agent-")
            .tempdir()
            .expect("the agent's directory");
        // Free ports: bound, noted, released for the agent to bind.
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port()
        };
        let mut agent = RunningAgent {
            kubelet,
            address: format!("127.0.0.1:{}", free_port()),
            metrics_address: format!("127.0.0.1:{}", free_port()),
            namespace: namespace.to_owned(),
            ca: (ca.cert_pem().to_owned(), ca.key_pem()),
            files,
            child: None,
        };
        agent.spawn();
        agent.issue_until_serving(client, 1).await;
        agent
    }

    /// Issues the agent's certificate (as the controller's `certificates::run` does) until the
    /// agent has logged that it serves `count` times.
    async fn issue_until_serving(&self, client: &Client, count: usize) {
        let ca = AgentCa::from_pem(&self.ca.0, &self.ca.1).expect("the test's CA");
        let leases: Api<Lease> = Api::namespaced(client.clone(), &self.namespace);
        let name = lease_name(self.kubelet.node_name());
        let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
        while self.log().matches(SERVING).count() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent did not serve with a certificate; its log:\n{}",
                self.log()
            );
            if let Ok(Some(lease)) = leases.get_opt(&name).await {
                ferry_controller::certificates::issue(&leases, &lease, &ca)
                    .await
                    .expect("writing the agent's certificate");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node this agent serves.
    pub fn node(&self) -> &str {
        self.kubelet.node_name()
    }

    /// Creates pod `pod` in `namespace` with an emptyDir volume `volume` that its annotation
    /// hands to the node agents, runs it on this agent's node, and returns the volume's directory.
    pub async fn run_pod_with_volume(
        &self,
        client: &Client,
        namespace: &str,
        pod: &str,
        volume: &str,
    ) -> PathBuf {
        crate::create_object(
            client,
            namespace,
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "annotations": {"backup.ferry.dev/volumes": volume}},
                "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}],
                         "volumes": [{"name": volume, "emptyDir": {}}]}}),
        )
        .await;
        let running = self.kubelet.run_pod(client, namespace, pod).await;
        let uid = running.metadata.uid.expect("a pod UID");
        self.kubelet
            .volume_dir(&uid, "kubernetes.io~empty-dir", volume)
    }

    /// Where the agent listens (and what its Lease advertises).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Where the agent serves /metrics and /healthz over plain HTTP.
    pub fn metrics_address(&self) -> &str {
        &self.metrics_address
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent with SIGKILL, as an OOM kill or a node failure would: nothing is cleaned
    /// up, its Lease stays until it expires.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again on the same node and address, as the DaemonSet restarts a pod, and
    /// waits until it serves (with a new key, and a certificate for it).
    pub async fn restart(&mut self, client: &Client) {
        self.kill();
        let started = self.log().matches(SERVING).count();
        self.spawn();
        self.issue_until_serving(client, started + 1).await;
    }

    /// Everything the agent (and its earlier incarnations) logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until `needle` occurs `count` times in the agent's log.
    pub async fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
        while self.log().matches(needle).count() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent did not log {needle:?} {count} times; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.files.path().join("agent.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the agent's log file");
        let child = Command::new(ferry_binary())
            .arg("agent")
            .env("KUBECONFIG", TestEnv::get().kubeconfig_path())
            .env("NODE_NAME", self.kubelet.node_name())
            .env("FERRY_NAMESPACE", &self.namespace)
            .env("FERRY_PODS_DIR", self.kubelet.root().join("pods"))
            .env("FERRY_AGENT_LISTEN", &self.address)
            .env("FERRY_AGENT_ADVERTISE", &self.address)
            .env("FERRY_AGENT_METRICS_LISTEN", &self.metrics_address)
            .env("FERRY_AGENT_MAX_TASKS", "2")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", ferry_binary().display()));
        self.child = Some(child);
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The agent API's CA that `controller` keeps (made now if it has none yet), to start agents
/// whose certificates it accepts.
pub async fn agent_ca(controller: &RunningController) -> AgentCa {
    let ctx =
        ferry_controller::Context::new(controller.client.clone(), controller.namespace.name());
    ferry_controller::certificates::agent_ca(&ctx)
        .await
        .expect("the agent API's CA")
}
