//! Ferry as users install and drive it, on the test environment's real node (tests/env/node-up):
//! its image built from the project's Dockerfile and loaded into the node (`tests/env/ferry-image`),
//! installed with `kubectl apply -k` of deploy/ through the overlay `tests/env/ferry-deploy`
//! (which changes only the image's name and pull policy), and driven with `kubectl` and the
//! `ferry` CLI. Nothing here plays the kubelet's part.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::TestEnv;

/// Where `kubectl apply -k` installs Ferry (deploy/kustomization.yaml).
pub const FERRY_NAMESPACE: &str = "ferry-system";
/// How long a pod may take to be scheduled, get its volumes and start: images are local, but the
/// machine's two cores are busy compiling meanwhile.
pub const POD_START_TIMEOUT: Duration = Duration::from_secs(180);

/// The test environment's scripts, `tests/env`.
pub fn env_scripts() -> PathBuf {
    crate::workspace_root().join("tests").join("env")
}

/// One of the test environment's clusters, as a user reaches it: its kubeconfig, for `kubectl`
/// and `ferry`, and a client for the test's own checks.
#[derive(Clone)]
pub struct Cluster {
    /// `main`, or `recovery` (the second API server, standing for a brand-new cluster).
    pub name: &'static str,
    pub kubeconfig: PathBuf,
    pub client: Client,
}

impl Cluster {
    /// The main cluster, with its node Ready; fails, saying how to start it, when there is none.
    pub async fn main() -> Cluster {
        let env = TestEnv::get();
        let cluster = Cluster {
            name: "main",
            kubeconfig: env.kubeconfig_path().to_owned(),
            client: env.kube_client().await,
        };
        let node_name = node_name();
        let node = Api::<Node>::all(cluster.client.clone())
            .get_opt(node_name)
            .await
            .expect("reading the node")
            .unwrap_or_else(|| {
                panic!("the test environment has no node {node_name}: start it with `tests/env/up` (tests/env/status says what is missing)")
            });
        assert!(
            is_ready(&node),
            "the test environment's node {node_name} is not Ready: start it with `tests/env/up` (tests/env/status says why)"
        );
        cluster
    }

    /// The recovery cluster: an empty control plane, with no node until a [`NodeTakeover`].
    pub async fn recovery() -> Cluster {
        let env = TestEnv::get();
        Cluster {
            name: "recovery",
            kubeconfig: PathBuf::from(env.var("FERRY_TEST_RECOVERY_KUBECONFIG")),
            client: env.recovery_kube_client().await,
        }
    }

    /// Runs the environment's kubectl (built from the same release as the API server) on this
    /// cluster.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.run(
            Command::new(TestEnv::get().var("FERRY_TEST_KUBECTL")),
            args,
            None,
        )
    }

    /// `kubectl`, which must succeed: its standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        succeeded("kubectl", args, self.kubectl(args))
    }

    /// `kubectl` with `input` on its standard input, which must succeed (`kubectl apply -f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: &str) -> String {
        let command = Command::new(TestEnv::get().var("FERRY_TEST_KUBECTL"));
        succeeded("kubectl", args, self.run(command, args, Some(input)))
    }

    /// Runs the `ferry` CLI (the binary `cargo test --workspace` builds) on this cluster.
    pub fn ferry(&self, args: &[&str]) -> Output {
        self.run(Command::new(crate::ferry_binary()), args, None)
    }

    /// `ferry`, which must succeed: its standard output.
    pub fn ferry_ok(&self, args: &[&str]) -> String {
        succeeded("ferry", args, self.ferry(args))
    }

    fn run(&self, mut command: Command, args: &[&str], input: Option<&str>) -> Output {
        command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("starting {command:?}: {error}"));
        if let Some(input) = input {
            child
                .stdin
                .take()
                .expect("a stdin pipe")
                .write_all(input.as_bytes())
                .expect("writing to the command's stdin");
        }
        child.wait_with_output().expect("waiting for the command")
    }

    /// Applies this repository's deploy/ to the cluster as a user does, `kubectl apply -k`, through
    /// the overlay that names the image built here, and waits until the controller's pod is Ready,
    /// the agent's pod runs Ready on the node and the agent API's certificates are issued. Checks
    /// that both pods run `image` (its digest), not some older image of the same tag.
    pub async fn install_ferry(&self, image: &FerryImage) {
        let overlay = env_scripts().join("ferry-deploy");
        self.kubectl_ok(&["apply", "-k", overlay.to_str().expect("a UTF-8 path")]);
        for component in ["controller", "agent"] {
            let pod = self.ferry_pod(component).await;
            let image_id = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|statuses| statuses.first())
                .map(|s| s.image_id.clone())
                .unwrap_or_default();
            assert!(
                image.is(&image_id),
                "Ferry's {component} pod {} runs {image_id}, not the image just built ({} {}, ID {})",
                pod.name_any(),
                image.name,
                image.digest,
                image.id
            );
        }
        let secrets = Api::<Secret>::namespaced(self.client.clone(), FERRY_NAMESPACE);
        eventually(
            "the agent API's CA, made by the controller",
            crate::CONVERGENCE_TIMEOUT,
            || {
                let secrets = secrets.clone();
                async move {
                    secrets
                        .get_opt(ferry_protocol::pki::AGENT_CA_SECRET)
                        .await
                        .ok()?
                }
            },
        )
        .await;
        let controller = Api::<Deployment>::namespaced(self.client.clone(), FERRY_NAMESPACE)
            .get("ferry-controller")
            .await
            .expect("the controller Deployment");
        assert_eq!(
            controller
                .status
                .and_then(|s| s.available_replicas)
                .unwrap_or(0),
            1,
            "the controller Deployment is not available"
        );
    }

    /// Ferry's pod of `component` (`controller` or `agent`) on the node, not being deleted, once it
    /// is Ready.
    pub async fn ferry_pod(&self, component: &str) -> Pod {
        let pods = Api::<Pod>::namespaced(self.client.clone(), FERRY_NAMESPACE);
        let selector =
            format!("app.kubernetes.io/name=ferry,app.kubernetes.io/component={component}");
        let what = format!(
            "Ferry's {component} pod Ready on the node of the {} cluster",
            self.name
        );
        eventually(&what, POD_START_TIMEOUT, || {
            let (pods, selector) = (pods.clone(), selector.clone());
            async move {
                pods.list(&ListParams::default().labels(&selector))
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .find(|pod| {
                        pod.metadata.deletion_timestamp.is_none()
                            && pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
                                == Some(node_name())
                            && is_pod_ready(pod)
                    })
            }
        })
        .await
    }

    /// Deletes `namespace` (its pods at once) and waits until it is gone: what an earlier run left,
    /// or what a test is done with.
    pub async fn remove_namespace(&self, namespace: &str) {
        let exists = Api::<Namespace>::all(self.client.clone())
            .get_opt(namespace)
            .await
            .expect("reading namespaces")
            .is_some();
        if exists {
            crate::delete_namespace_and_wait(&self.client, namespace).await;
        }
    }
}

/// The node's name.
pub fn node_name() -> &'static str {
    TestEnv::get().var("FERRY_TEST_NODE_NAME")
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Whether a pod runs with every container ready.
pub fn is_pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

fn succeeded(program: &str, args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Polls `check` until it gives a value, at most `timeout`; fails naming `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {timeout:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Ferry's image as the node has it.
#[derive(Debug, Clone)]
pub struct FerryImage {
    /// `ferry.dev/ferry:dev`, which tests/env/ferry-deploy names.
    pub name: String,
    /// The digest of its manifest (a pod's `imageID` is `<name>@<digest>` for an image pulled
    /// from a registry).
    pub digest: String,
    /// Its ID, the digest of its config: a pod's `imageID` for an image that came from no
    /// registry, as this one.
    pub id: String,
}

impl FerryImage {
    /// Whether a container's `imageID` names this image.
    pub fn is(&self, image_id: &str) -> bool {
        image_id == self.id || image_id.ends_with(&format!("@{}", self.digest))
    }
}

/// Builds Ferry's image from the project's Dockerfile with the `ferry` binary the tests use, and
/// loads it into the node (tests/env/ferry-image, cached by content: the same binary costs a few
/// seconds), so that the pods run the code under test.
pub fn load_ferry_image() -> FerryImage {
    let script = env_scripts().join("ferry-image");
    let binary = crate::ferry_binary();
    let output = Command::new(&script)
        .arg(&binary)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", script.display()));
    assert!(
        output.status.success(),
        "tests/env/ferry-image {} failed ({}):\n{}",
        binary.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = stdout
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let [name, digest, id] = fields[..] else {
        panic!("tests/env/ferry-image printed no image name, digest and ID: {stdout}");
    };
    FerryImage {
        name: name.to_owned(),
        digest: digest.to_owned(),
        id: id.to_owned(),
    }
}

/// The node joined to the recovery cluster for as long as this lives (tests/env/node-up recovery);
/// dropping it gives the node back to the main cluster (tests/env/node-up), even when the test
/// fails. The main cluster's pods on the node stop meanwhile and start again once it is back.
/// Only one test binary may take the node: every other test of the node fails while it is away.
pub struct NodeTakeover {
    _private: (),
}

impl NodeTakeover {
    pub fn to_recovery() -> NodeTakeover {
        node_up("recovery");
        NodeTakeover { _private: () }
    }
}

impl Drop for NodeTakeover {
    fn drop(&mut self) {
        node_up("main");
    }
}

fn node_up(cluster: &str) {
    let script = env_scripts().join("node-up");
    let output = Command::new(&script)
        .arg(cluster)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", script.display()));
    if !output.status.success() {
        let message = format!(
            "tests/env/node-up {cluster} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        if std::thread::panicking() {
            eprintln!("{message}");
        } else {
            panic!("{message}");
        }
    }
}

/// The cloud credentials Secret and the default storage location, at the test's bucket prefix,
/// through the endpoint pods reach MinIO at: `README.md`'s steps.
pub fn configure_location(cluster: &Cluster, store: &crate::BucketPrefix) {
    let env = TestEnv::get();
    let credentials = env.s3_credentials();
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(
        file.path(),
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            credentials.access_key_id(),
            credentials.secret_access_key()
        ),
    )
    .expect("writing the credentials file");
    cluster.kubectl_ok(&[
        "-n",
        FERRY_NAMESPACE,
        "create",
        "secret",
        "generic",
        "cloud-credentials",
        &format!("--from-file=cloud={}", file.path().display()),
    ]);
    cluster.ferry_ok(&[
        "location",
        "create",
        "default",
        "--bucket",
        store.bucket(),
        "--prefix",
        store.prefix().trim_end_matches('/'),
        "--region",
        env.s3_region(),
        "--endpoint",
        env.var("FERRY_TEST_POD_S3_ENDPOINT"),
        "--force-path-style",
        "--credential",
        "cloud-credentials:cloud",
        "--default",
    ]);
}

/// The volume records of backup `backup` in `store`, as the controller wrote them (sealed with the
/// installation's key).
pub async fn volume_records(
    cluster: &Cluster,
    store: &crate::BucketPrefix,
    backup: &str,
) -> ferry_protocol::volume::VolumeRecords {
    let password = crate::installation_key(&cluster.client, FERRY_NAMESPACE).await;
    let seal_key = ferry_controller::seal::SealKey::derive(&password);
    let name = ferry_protocol::layout::BackupKeys::new(None, backup).volumes();
    let key = store.key(&name);
    let object = TestEnv::get()
        .s3_client()
        .get_object()
        .bucket(store.bucket())
        .key(&key)
        .send()
        .await
        .unwrap_or_else(|error| panic!("reading {key}: {error}"));
    let bytes = object
        .body
        .collect()
        .await
        .expect("the records")
        .into_bytes();
    let opened = ferry_controller::seal::open(&seal_key, &name, &bytes).expect("sealed records");
    ferry_controller::gunzip_json(&opened).expect("volume records")
}
