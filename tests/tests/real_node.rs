//! The test environment's real node (tests/env/node-up): pods of the images built here run on it
//! through containerd, with volumes; `kubectl exec` reaches them through the API server and the
//! kubelet; Services work through kube-proxy, the in-cluster `kubernetes` Service included; and the
//! PostgreSQL image answers queries. Nothing here plays the kubelet's part.
//!
//! Each test's namespace carries `ferry.dev/real-node=true`, without which the environment leaves
//! the pods of the harness's test namespaces to `FakeKubelet` (tests/env/cluster.yaml).

use ferry_tests::real_node::{env_with_node, exec, kubectl, real_node_namespace, run_pod, sleeper};
use std::time::Duration;

use ferry_tests::CONVERGENCE_TIMEOUT;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;

#[tokio::test]
async fn a_pod_with_an_empty_dir_runs_and_exec_reaches_it_through_the_api_server() {
    let (env, client) = env_with_node().await;
    let namespace = real_node_namespace(&client, "node-pod").await;

    let pod = run_pod(&client, namespace.name(), sleeper("sleeper", json!({}))).await;
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.node_name.as_deref(),
        Some(env.var("FERRY_TEST_NODE_NAME")),
        "scheduled by kube-scheduler onto the node"
    );
    let pod_ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let subnet_prefix = env
        .var("FERRY_TEST_POD_SUBNET")
        .trim_end_matches("0/24")
        .to_owned();
    assert!(
        pod_ip.starts_with(&subnet_prefix),
        "the pod's address {pod_ip} is on the pod network {}",
        env.var("FERRY_TEST_POD_SUBNET")
    );

    let written = exec(
        namespace.name(),
        "sleeper",
        &[
            "sh",
            "-c",
            "echo from-the-pod >/data/file && cat /data/file",
        ],
    );
    assert_eq!(written, "from-the-pod\n");

    // The volume is where the kubelet keeps pod volumes, which Ferry's agent reads through its
    // hostPath mount (deploy/agent.yaml).
    let on_host = std::path::Path::new(env.var("FERRY_TEST_KUBELET_ROOT"))
        .join("pods")
        .join(pod.uid().unwrap())
        .join("volumes/kubernetes.io~empty-dir/data/file");
    assert_eq!(
        std::fs::read_to_string(&on_host)
            .unwrap_or_else(|error| panic!("reading {}: {error}", on_host.display())),
        "from-the-pod\n"
    );

    let logs = kubectl(&["-n", namespace.name(), "logs", "sleeper"]);
    assert!(
        logs.status.success(),
        "kubectl logs: {}",
        String::from_utf8_lossy(&logs.stderr)
    );
}

#[tokio::test]
async fn a_service_reaches_a_second_pod_by_its_cluster_ip() {
    let (_, client) = env_with_node().await;
    let namespace = real_node_namespace(&client, "node-svc").await;

    // A TCP server in the base image: Perl is there (perl-base), netcat is not.
    let mut server = sleeper("server", json!({"app": "server"}));
    server["spec"]["containers"][0]["command"] = json!([
        "perl",
        "-MIO::Socket::INET",
        "-e",
        "my $s = IO::Socket::INET->new(LocalPort => 8080, Listen => 5, ReuseAddr => 1) or die $!; \
         while (my $c = $s->accept) { print $c \"hello from the server\\n\"; close $c }"
    ]);
    server["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8080}]);
    run_pod(&client, namespace.name(), server).await;
    let client_pod = sleeper("client", json!({}));
    run_pod(&client, namespace.name(), client_pod).await;

    let services = Api::<Service>::namespaced(client.clone(), namespace.name());
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "greeter"},
        "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    let service = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();

    // Until the EndpointSlice exists and kube-proxy has programmed it, connections are refused.
    let read =
        format!("exec 3<>/dev/tcp/{cluster_ip}/80 && timeout 5 cat <&3 || {{ sleep 1; exit 1; }}");
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        let output = kubectl(&[
            "-n",
            namespace.name(),
            "exec",
            "client",
            "--",
            "bash",
            "-c",
            &read,
        ]);
        if output.status.success() {
            assert_eq!(
                String::from_utf8_lossy(&output.stdout),
                "hello from the server\n"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Service {cluster_ip}:80 never answered from the client pod: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_pod_reaches_the_api_server_through_the_kubernetes_service() {
    let (_, client) = env_with_node().await;
    let namespace = real_node_namespace(&client, "node-api").await;
    run_pod(&client, namespace.name(), sleeper("caller", json!({}))).await;

    // The base image has no TLS client; a plain HTTP request to the API server's TLS port gets Go's
    // answer to exactly that, which shows an HTTPS server of Go behind the Service.
    let output = exec(
        namespace.name(),
        "caller",
        &[
            "bash",
            "-c",
            "echo \"$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT\"; \
             exec 3<>/dev/tcp/$KUBERNETES_SERVICE_HOST/$KUBERNETES_SERVICE_PORT && \
             printf 'GET /version HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 10 cat <&3",
        ],
    );
    let (address, answer) = output.split_once('\n').unwrap();
    assert!(
        address.starts_with("10.") && address.ends_with(":443"),
        "the kubernetes Service's cluster IP and port: {address}"
    );
    assert!(
        answer.contains("Client sent an HTTP request to an HTTPS server"),
        "the API server answers through the kubernetes Service: {answer:?}"
    );
}

#[tokio::test]
async fn the_postgresql_image_starts_and_answers_a_query() {
    let (env, client) = env_with_node().await;
    let namespace = real_node_namespace(&client, "node-pg").await;
    let pod = json!({
        "metadata": {"name": "postgres"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "postgres",
                "image": env.var("FERRY_TEST_POSTGRES_IMAGE"),
                "imagePullPolicy": "Never",
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
            }],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }
    });
    run_pod(&client, namespace.name(), pod).await;

    // Running is before initdb has finished: ask until PostgreSQL answers.
    let query = "create table t (n int); insert into t select generate_series(1, 100); select sum(n) from t";
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        let output = kubectl(&[
            "-n",
            namespace.name(),
            "exec",
            "postgres",
            "--",
            "psql",
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-qAtc",
            query,
        ]);
        if output.status.success() {
            assert_eq!(String::from_utf8_lossy(&output.stdout).trim_end(), "5050");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "PostgreSQL never answered: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let version = exec(
        namespace.name(),
        "postgres",
        &["psql", "-U", "postgres", "-Atc", "show server_version"],
    );
    assert!(version.starts_with("15."), "PostgreSQL 15: {version}");
}
