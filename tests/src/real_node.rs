//! Pods on the test environment's real node (tests/env/node-up), for the tests that need a
//! kubelet: exec, Services, real volumes. A test's namespace carries `ferry.dev/real-node=true`,
//! without which the environment leaves the pods of the harness's test namespaces to
//! `FakeKubelet` (tests/env/cluster.yaml).

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::{TestEnv, TestNamespace};

/// How long a pod may take to be scheduled and started: images are local, but CI's two cores are
/// busy compiling meanwhile.
pub const POD_START_TIMEOUT: Duration = Duration::from_secs(120);

/// The test environment with its node: fails, saying how to start it, when there is none or it is
/// not Ready.
pub async fn env_with_node() -> (&'static TestEnv, Client) {
    let env = TestEnv::get();
    let node_name = env.var("FERRY_TEST_NODE_NAME");
    let client = env.kube_client().await;
    let node = Api::<Node>::all(client.clone())
        .get_opt(node_name)
        .await
        .expect("reading the node")
        .unwrap_or_else(|| {
            panic!("the test environment has no node {node_name}: start it with `tests/env/up` (tests/env/status says what is missing)")
        });
    let ready = node
        .status
        .and_then(|status| status.conditions)
        .unwrap_or_default()
        .iter()
        .any(|condition| condition.type_ == "Ready" && condition.status == "True");
    assert!(
        ready,
        "the test environment's node {node_name} is not Ready: start it with `tests/env/up` (tests/env/status says why)"
    );
    (env, client)
}

/// A namespace of the test's own whose pods the real scheduler places on the real node.
pub async fn real_node_namespace(client: &Client, prefix: &str) -> TestNamespace {
    let namespace = TestNamespace::create(client, prefix).await;
    let label = json!({"metadata": {"labels": {"ferry.dev/real-node": "true"}}});
    Api::<Namespace>::all(client.clone())
        .patch(
            namespace.name(),
            &PatchParams::default(),
            &Patch::Merge(&label),
        )
        .await
        .expect("labelling the namespace for the real node");
    namespace
}

/// Creates `pod` and waits until it runs on the node; fails with its status and events otherwise.
pub async fn run_pod(client: &Client, namespace: &str, pod: serde_json::Value) -> Pod {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(pod).expect("a valid pod");
    let name = pod.name_any();
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|error| panic!("creating pod {namespace}/{name}: {error}"));
    let running = await_condition(pods.clone(), &name, |pod: Option<&Pod>| {
        pod.and_then(|pod| pod.status.as_ref())
            .and_then(|status| status.phase.as_deref())
            == Some("Running")
    });
    match tokio::time::timeout(POD_START_TIMEOUT, running).await {
        Ok(Ok(Some(pod))) => pod,
        _ => {
            let described = kubectl(&["-n", namespace, "describe", "pod", &name]);
            panic!(
                "pod {namespace}/{name} did not run on the node within {POD_START_TIMEOUT:?}:\n{}\n(node logs: see tests/env/status)",
                String::from_utf8_lossy(&described.stdout)
            )
        }
    }
}

/// Runs the environment's kubectl (built from the same release as the API server) as its admin.
pub fn kubectl(args: &[&str]) -> std::process::Output {
    let env = TestEnv::get();
    Command::new(env.var("FERRY_TEST_KUBECTL"))
        .args(args)
        .env("KUBECONFIG", env.kubeconfig_path())
        .output()
        .expect("running kubectl")
}

/// `kubectl exec` of `command` in the pod's first container: its standard output, or a panic with
/// its error.
pub fn exec(namespace: &str, pod: &str, command: &[&str]) -> String {
    let mut args = vec!["-n", namespace, "exec", pod, "--"];
    args.extend_from_slice(command);
    let output = kubectl(&args);
    assert!(
        output.status.success(),
        "kubectl exec {pod} -- {command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// A pod of the node's Debian base image that sleeps, with an emptyDir volume at /data.
pub fn sleeper(name: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": TestEnv::get().var("FERRY_TEST_BASE_IMAGE"),
                "imagePullPolicy": "Never",
                "command": ["sleep", "infinity"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }
    })
}
