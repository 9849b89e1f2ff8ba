//! The node agent against the test API server and MinIO, with the harness playing the kubelet: it
//! answers only a client holding the controller's certificate; it finds a pod volume by
//! (namespace, pod, volume) under its own kubelet root and refuses anything else; it backs the
//! volume up into a repository (symlinks as symlinks, never followed; the second backup
//! incremental) and restores it into a new pod's volume, with the completion marker, and in place.

use std::path::Path;
use std::time::Duration;

use ferry_protocol::agent::v1::agent_client::AgentClient;
use ferry_protocol::agent::v1::{
    BackupVolumeRequest, GetInfoRequest, PodVolume, Repository, RestoreVolumeRequest, TaskResult,
    task_update,
};
use ferry_protocol::agent::{
    ADDRESS_ANNOTATION, AGENT_SERVER_NAME, IssuedCredentials, issue_credentials, lease_name,
};
use ferry_tests::{
    BucketPrefix, CONVERGENCE_TIMEOUT, FakeKubelet, TestEnv, TestNamespace, create_object,
    unique_name,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// An agent serving one fake node, in this process.
struct RunningAgent {
    address: String,
    kubelet: FakeKubelet,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl RunningAgent {
    async fn start(
        client: &Client,
        namespace: &str,
        credentials: &IssuedCredentials,
    ) -> RunningAgent {
        ferry_protocol::tls::install_crypto_provider();
        let kubelet = FakeKubelet::start(client, &unique_name("node")).await;
        std::fs::create_dir_all(kubelet.root().join("pods")).unwrap();
        // A free port: bound, noted, released for the agent to bind.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = ferry_agent::daemon::AgentConfig {
            settings: ferry_agent::daemon::AgentSettings {
                node_name: kubelet.node_name().to_owned(),
                pods_dir: kubelet.root().join("pods"),
                max_tasks: 2,
            },
            namespace: namespace.to_owned(),
            listen: address.parse().unwrap(),
            advertise: address.clone(),
            tls: credentials.agent.clone(),
        };
        let task = tokio::spawn(ferry_agent::daemon::run(
            client.clone(),
            config,
            std::future::pending(),
        ));
        RunningAgent {
            address,
            kubelet,
            task,
        }
    }

    async fn connect(&self, tls: ClientTlsConfig) -> Result<AgentClient<Channel>, String> {
        let endpoint = Channel::from_shared(format!("https://{}", self.address))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5));
        // The server may still be binding its port.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match endpoint.connect().await {
                Ok(channel) => return Ok(AgentClient::new(channel)),
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!("{error:?}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A pod with an emptyDir volume `data` and a ConfigMap volume, bound to the agent's node; returns
/// its UID.
async fn pod_on(client: &Client, namespace: &str, name: &str, kubelet: &FakeKubelet) -> String {
    create_object(
        client,
        namespace,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}],
                        "volumes": [{"name": "data", "emptyDir": {}},
                                    {"name": "settings", "configMap": {"name": "settings"}}]}}),
    )
    .await;
    let pod = kubelet.run_pod(client, namespace, name).await;
    pod.metadata.uid.unwrap()
}

fn repository(store: &BucketPrefix, password: &str) -> Repository {
    let env = TestEnv::get();
    let credentials = env.s3_credentials();
    Repository {
        url: store.url(),
        s3_endpoint: env.s3_endpoint().to_owned(),
        s3_region: env.s3_region().to_owned(),
        s3_path_style: true,
        access_key_id: credentials.access_key_id().to_owned(),
        secret_access_key: credentials.secret_access_key().to_owned(),
        session_token: String::new(),
        password: password.to_owned(),
    }
}

/// Drains a task's stream: how many progress updates came, and the result or the error.
async fn run_task(
    stream: Result<
        tonic::Response<tonic::Streaming<ferry_protocol::agent::v1::TaskUpdate>>,
        tonic::Status,
    >,
) -> Result<TaskResult, tonic::Status> {
    let mut stream = stream?.into_inner();
    while let Some(update) = stream.message().await? {
        if let Some(task_update::Update::Result(result)) = update.update {
            return Ok(result);
        }
    }
    Err(tonic::Status::unknown("the stream ended without a result"))
}

fn volume(namespace: &str, pod: &str, name: &str) -> Option<PodVolume> {
    Some(PodVolume {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        volume: name.to_owned(),
    })
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Every regular file and symlink under `dir`, relative, with its bytes or link target.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if relative.starts_with(".ferry") {
                continue;
            }
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.push((
                    format!("{relative} ->"),
                    target.to_string_lossy().as_bytes().to_vec(),
                ));
            } else if meta.is_dir() {
                stack.push(path);
            } else {
                out.push((relative, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_agent_answers_only_the_controller_and_says_where_it_is() {
    let client = TestEnv::get().kube_client().await;
    let namespace = TestNamespace::create(&client, "agent-tls").await;
    let credentials = issue_credentials().unwrap();
    let agent = RunningAgent::start(&client, namespace.name(), &credentials).await;

    let mut controller = agent
        .connect(credentials.controller.client_config())
        .await
        .expect("the controller connects");
    let info = controller
        .get_info(GetInfoRequest {})
        .await
        .expect("the controller is answered")
        .into_inner();
    assert_eq!(info.node_name, agent.kubelet.node_name());
    assert_eq!(info.api_version, ferry_protocol::agent::API_VERSION);
    assert!(info.healthy);

    // No client certificate: the handshake or the first call fails.
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&credentials.agent.ca_cert))
        .domain_name(AGENT_SERVER_NAME);
    let refused = match agent.connect(anonymous).await {
        Ok(mut client) => client.get_info(GetInfoRequest {}).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate was answered");
    // A certificate from another CA (another cluster's controller, or an impostor's).
    let stranger = issue_credentials().unwrap();
    let impostor = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&credentials.agent.ca_cert))
        .identity(tonic::transport::Identity::from_pem(
            &stranger.controller.cert,
            &stranger.controller.key,
        ))
        .domain_name(AGENT_SERVER_NAME);
    let refused = match agent.connect(impostor).await {
        Ok(mut client) => client.get_info(GetInfoRequest {}).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a client with a certificate of another CA was answered"
    );

    // The Lease says where the agent is.
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace.name());
    let name = lease_name(agent.kubelet.node_name());
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    let lease = loop {
        if let Some(lease) = leases.get_opt(&name).await.unwrap() {
            break lease;
        }
        assert!(tokio::time::Instant::now() < deadline, "no Lease {name}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        lease
            .metadata
            .annotations
            .unwrap_or_default()
            .get(ADDRESS_ANNOTATION),
        Some(&agent.address)
    );
    let spec = lease.spec.unwrap();
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(agent.kubelet.node_name())
    );
    assert!(spec.renew_time.is_some());
}

#[tokio::test]
async fn pod_volumes_are_backed_up_and_restored_through_the_agent() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ferry_namespace = TestNamespace::create(&client, "agent-ferry").await;
    let app = TestNamespace::create(&client, "agent-app").await;
    let ns = app.name();
    let credentials = issue_credentials().unwrap();
    let agent = RunningAgent::start(&client, ferry_namespace.name(), &credentials).await;
    let other_node = FakeKubelet::start(&client, &unique_name("node")).await;
    let mut controller = agent
        .connect(credentials.controller.client_config())
        .await
        .unwrap();
    let store = BucketPrefix::new(env, "agent-repo");
    let repo = repository(&store, "a volume's password");

    let uid = pod_on(&client, ns, "db-0", &agent.kubelet).await;
    let data = agent
        .kubelet
        .volume_dir(&uid, "kubernetes.io~empty-dir", "data");
    std::fs::write(data.join("hello.txt"), b"hello, volume\n").unwrap();
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/big.bin"), pseudo_random(3 * 1024 * 1024, 7)).unwrap();
    // A link out of the volume: kept as a link, never followed into the host.
    std::os::unix::fs::symlink("/etc", data.join("host-etc")).unwrap();

    // Refused: names that are not names, a pod on another node, a volume that is not data.
    let backup = |volume: Option<PodVolume>, task: &str| BackupVolumeRequest {
        task_id: task.to_owned(),
        volume,
        repository: Some(repo.clone()),
        tags: vec!["backup=b1".to_owned()],
    };
    let escape = controller
        .backup_volume(backup(volume(ns, "db-0", "../../etc"), "t0"))
        .await
        .unwrap_err();
    assert_eq!(escape.code(), tonic::Code::InvalidArgument, "{escape:?}");
    let config = controller
        .backup_volume(backup(volume(ns, "db-0", "settings"), "t0"))
        .await
        .unwrap_err();
    assert_eq!(config.code(), tonic::Code::InvalidArgument, "{config:?}");
    pod_on(&client, ns, "elsewhere", &other_node).await;
    let wrong_node = controller
        .backup_volume(backup(volume(ns, "elsewhere", "data"), "t0"))
        .await
        .unwrap_err();
    assert_eq!(
        wrong_node.code(),
        tonic::Code::FailedPrecondition,
        "{wrong_node:?}"
    );
    assert!(
        wrong_node.message().contains("not on this agent's node"),
        "{wrong_node:?}"
    );

    // The first backup stores everything.
    let first = run_task(
        controller
            .backup_volume(backup(volume(ns, "db-0", "data"), "t1"))
            .await,
    )
    .await
    .expect("the first backup");
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert!(first.bytes_transferred > 2 * 1024 * 1024, "{first:?}");
    // The second, after a small change, stores little more than the change.
    let mut big = std::fs::read(data.join("sub/big.bin")).unwrap();
    big[1024 * 1024..1024 * 1024 + 4096].copy_from_slice(&pseudo_random(4096, 9));
    std::fs::write(data.join("sub/big.bin"), &big).unwrap();
    let second = run_task(
        controller
            .backup_volume(backup(volume(ns, "db-0", "data"), "t2"))
            .await,
    )
    .await
    .expect("the second backup");
    assert_ne!(second.snapshot_id, first.snapshot_id);
    assert!(
        second.bytes_transferred < 512 * 1024,
        "an incremental backup of a 4 KiB change stored {} bytes",
        second.bytes_transferred
    );
    let expected = tree(&data);

    // Restore into a new pod's volume, with the marker its init container waits for.
    let restored_uid = pod_on(&client, ns, "db-0-restored", &agent.kubelet).await;
    let target = agent
        .kubelet
        .volume_dir(&restored_uid, "kubernetes.io~empty-dir", "data");
    let restore = |pod: &str, task: &str, in_place: bool| RestoreVolumeRequest {
        task_id: task.to_owned(),
        volume: volume(ns, pod, "data"),
        repository: Some(repo.clone()),
        snapshot_id: second.snapshot_id.clone(),
        in_place,
        marker: "r1.done".to_owned(),
    };
    let restored = run_task(
        controller
            .restore_volume(restore("db-0-restored", "t3", false))
            .await,
    )
    .await
    .expect("the restore");
    assert!(restored.errors.is_empty(), "{:?}", restored.errors);
    assert_eq!(tree(&target), expected, "the restored volume differs");
    let link = std::fs::symlink_metadata(target.join("host-etc")).unwrap();
    assert!(link.file_type().is_symlink(), "the link was followed");
    assert!(
        target.join(".ferry/r1.done").is_file(),
        "no completion marker"
    );

    // In place: the volume drifted; only what differs comes back from the repository.
    let mut drifted = std::fs::read(target.join("sub/big.bin")).unwrap();
    drifted[..8192].copy_from_slice(&pseudo_random(8192, 11));
    std::fs::write(target.join("sub/big.bin"), &drifted).unwrap();
    std::fs::write(target.join("stray.txt"), b"not in the snapshot").unwrap();
    let in_place = run_task(
        controller
            .restore_volume(restore("db-0-restored", "t4", true))
            .await,
    )
    .await
    .expect("the in-place restore");
    assert_eq!(
        tree(&target),
        expected,
        "the in-place restore left differences"
    );
    assert!(
        in_place.bytes_transferred < 1024 * 1024,
        "an in-place restore of an 8 KiB drift downloaded {} bytes",
        in_place.bytes_transferred
    );

    // A wrong password is refused, naming the problem.
    let mut wrong = backup(volume(ns, "db-0", "data"), "t5");
    wrong.repository.as_mut().unwrap().password = "not it".to_owned();
    let refused = run_task(controller.backup_volume(wrong).await)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
}
