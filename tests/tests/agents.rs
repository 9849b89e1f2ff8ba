//! The node agent (a `ferry agent` process per fake node) against the test API server and MinIO,
//! with the harness playing the kubelet and the scheduler: it
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
use ferry_protocol::agent::{ADDRESS_ANNOTATION, lease_name};
use ferry_protocol::crd::Phase;
use ferry_protocol::layout::BackupKeys;
use ferry_protocol::pki::{AgentCa, agent_server_name};
use ferry_protocol::volume::{VolumeMethod, VolumePhase, VolumeRecords};
use ferry_tests::{
    BucketPrefix, CONVERGENCE_TIMEOUT, FakeKubelet, HasPhase, RunningAgent, RunningController,
    TestEnv, TestNamespace, agent_ca, create_object, delete_namespace_and_wait, delete_pv_and_wait,
    in_repository, pseudo_random, summary, unique_name, wait_bound,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Connects to `agent` with `tls`, retrying while it may still be binding its port.
async fn connect(
    agent: &RunningAgent,
    tls: ClientTlsConfig,
) -> Result<AgentClient<Channel>, String> {
    let endpoint = Channel::from_shared(format!("https://{}", agent.address()))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5));
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

/// Connects to `agent` as the controller of `ca` does.
async fn connect_as_controller(agent: &RunningAgent, ca: &AgentCa) -> AgentClient<Channel> {
    let identity = ca.controller_identity().unwrap();
    connect(agent, identity.client_config(agent.node()))
        .await
        .expect("the controller connects")
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

/// The repository of `app_namespace`'s volumes in a storage location `store` that this creates in
/// the agent's namespace: the agent writes only into repositories of storage locations.
async fn repository(
    client: &Client,
    ferry_namespace: &str,
    app_namespace: &str,
    store: &BucketPrefix,
    password: &str,
) -> Repository {
    let env = TestEnv::get();
    let location = create_object(
        client,
        ferry_namespace,
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "BackupStorageLocation",
            "metadata": {"name": unique_name("location")},
            "spec": {"provider": "aws",
                     "objectStorage": {"bucket": store.bucket(),
                                       "prefix": store.prefix().trim_end_matches('/')},
                     "endpoint": env.s3_endpoint(), "forcePathStyle": true},
        }),
    );
    location.await;
    let credentials = env.s3_credentials();
    Repository {
        url: format!("{}/repositories/{app_namespace}", store.url()),
        s3_endpoint: env.s3_endpoint().to_owned(),
        s3_region: env.s3_region().to_owned(),
        s3_path_style: true,
        access_key_id: credentials.access_key_id().to_owned(),
        secret_access_key: credentials.secret_access_key().to_owned(),
        password: password.to_owned(),
        ..Repository::default()
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
    let ca = AgentCa::generate().unwrap();
    let agent = RunningAgent::start(&client, namespace.name(), &ca).await;
    let controller_identity = ca.controller_identity().unwrap();

    let mut controller = connect(&agent, controller_identity.client_config(agent.node()))
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
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name(agent_server_name(agent.node()));
    let refused = match connect(&agent, anonymous).await {
        Ok(mut client) => client.get_info(GetInfoRequest {}).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate was answered");
    // A certificate from another CA (another cluster's controller, or an impostor's).
    let stranger = AgentCa::generate().unwrap().controller_identity().unwrap();
    let impostor = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .identity(tonic::transport::Identity::from_pem(
            &stranger.cert,
            &stranger.key,
        ))
        .domain_name(agent_server_name(agent.node()));
    let refused = match connect(&agent, impostor).await {
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
            .get(ADDRESS_ANNOTATION)
            .map(String::as_str),
        Some(agent.address())
    );
    let spec = lease.spec.unwrap();
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(agent.kubelet.node_name())
    );
    assert!(spec.renew_time.is_some());
}

/// A compromised node A that answers at node B's address (B's Lease cannot be written by A, but
/// an address can be taken on the network) cannot serve B's tasks: the controller accepts, at
/// the address of B's agent, only a certificate issued for B. The CA issued A's for A, whatever A
/// asked for. Before certificates were per node, every agent presented the same one.
#[tokio::test]
async fn a_certificate_issued_for_one_node_cannot_serve_another_nodes_tasks() {
    let client = TestEnv::get().kube_client().await;
    let namespace = TestNamespace::create(&client, "agent-impostor").await;
    let ctx = ferry_controller::Context::new(client.clone(), namespace.name());
    let ca = ferry_controller::certificates::agent_ca(&ctx)
        .await
        .unwrap();
    let agent_a = RunningAgent::start(&client, namespace.name(), &ca).await;
    let node_b = unique_name("node-b");
    create_object(
        &client,
        namespace.name(),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": lease_name(&node_b),
                            "annotations": {ADDRESS_ANNOTATION: agent_a.address()}},
               "spec": {"holderIdentity": node_b, "leaseDurationSeconds": 30,
                        "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                            jiff::Timestamp::now())}}),
    )
    .await;

    // The controller's own path: a task for node B goes to A's address and is never handed over.
    let request = || {
        ferry_controller::agents::AgentRequest::Backup(BackupVolumeRequest {
            task_id: "impostor".to_owned(),
            volume: Some(PodVolume {
                namespace: "default".to_owned(),
                pod: "db-0".to_owned(),
                volume: "data".to_owned(),
            }),
            repository: None,
            tags: vec![],
        })
    };
    ferry_controller::agents::start_task(
        &ctx,
        "impostor",
        &node_b,
        request(),
        ferry_controller::agents::TaskOwner::Backup("b1".to_owned()),
    )
    .await;
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    let state = loop {
        match ctx.agent_tasks.state("impostor") {
            Some(ferry_controller::agents::TaskState::Running(_)) | None => {}
            Some(state) => break state,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ferry_controller::agents::TaskState::NotReady(message) = &state else {
        panic!("node A's agent served node B's task: {state:?}");
    };
    assert!(
        message.contains("certificate") && message.contains(agent_a.address()),
        "{message}"
    );
    assert!(!agent_a.log().contains("impostor"), "{}", agent_a.log());
    assert!(
        agent_a
            .log()
            .contains("refused a connection: TLS handshake failed"),
        "{}",
        agent_a.log()
    );

    // The same identity reaches node A's agent as node A.
    let identity = ferry_controller::certificates::controller_identity(&ctx)
        .await
        .unwrap();
    let mut as_a = connect(&agent_a, identity.client_config(agent_a.node()))
        .await
        .expect("A's agent serves A");
    assert!(as_a.get_info(GetInfoRequest {}).await.is_ok());
}

#[tokio::test]
async fn pod_volumes_are_backed_up_and_restored_through_the_agent() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ferry_namespace = TestNamespace::create(&client, "agent-ferry").await;
    let app = TestNamespace::create(&client, "agent-app").await;
    let ns = app.name();
    let ca = AgentCa::generate().unwrap();
    let agent = RunningAgent::start(&client, ferry_namespace.name(), &ca).await;
    let other_node = FakeKubelet::start(&client, &unique_name("node")).await;
    let mut controller = connect_as_controller(&agent, &ca).await;
    ferry_tests::install_ferry_crds(&client).await;
    let store = BucketPrefix::new(env, "agent-repo");
    let repo = repository(
        &client,
        ferry_namespace.name(),
        ns,
        &store,
        "a volume's password",
    )
    .await;

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
    // A repository that is not one of the cluster's storage locations: a path on the node, or a
    // store the caller chose.
    for url in [
        "/var/lib/ferry/elsewhere".to_owned(),
        format!("s3://{}/not-a-location/repositories/{ns}", store.bucket()),
    ] {
        let elsewhere = BackupVolumeRequest {
            repository: Some(Repository {
                url: url.clone(),
                ..repo.clone()
            }),
            ..backup(volume(ns, "db-0", "data"), "t-elsewhere")
        };
        let refused = controller.backup_volume(elsewhere).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::PermissionDenied,
            "{url}: {refused:?}"
        );
    }

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

/// The volume records a backup wrote.
async fn records(ferry: &RunningController, backup: &str) -> VolumeRecords {
    let key = BackupKeys::new(None, backup).volumes();
    serde_json::from_value(ferry.read_json(&key).await.unwrap()).unwrap()
}

#[tokio::test]
async fn a_backup_hands_pod_volumes_to_the_agents_of_their_nodes() {
    let ferry = RunningController::start_with_location("agents-backup").await;
    let client = ferry.client.clone();
    let ca = agent_ca(&ferry).await;
    let agent_a = RunningAgent::start(&client, ferry.namespace.name(), &ca).await;
    let mut agent_b = RunningAgent::start(&client, ferry.namespace.name(), &ca).await;

    let app = TestNamespace::create(&client, "agents-app").await;
    let ns = app.name();
    // Node A: an emptyDir volume its pod's annotation names.
    let cache = agent_a
        .run_pod_with_volume(&client, ns, "web", "cache")
        .await;
    std::fs::write(cache.join("page.html"), b"<h1>shop</h1>\n").unwrap();
    // Node B: a claim on a CSI volume no native snapshotter covers, backed up without asking.
    let pv_name = unique_name("pv-ceph");
    let storage_class = unique_name("ceph");
    create_object(
        &client,
        ns,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain", "storageClassName": storage_class,
                        "claimRef": {"namespace": ns, "name": "data"},
                        "csi": {"driver": "rook-ceph.rbd.csi.ceph.com", "volumeHandle": "0001-ceph-1"}}}),
    )
    .await;
    create_object(
        &client,
        ns,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                        "volumeName": pv_name, "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    wait_bound(&client, ns, "data").await;
    create_object(
        &client,
        ns,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db-0"},
               "spec": {"containers": [{"name": "db", "image": "busybox:1.36"}],
                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}),
    )
    .await;
    let db_uid = agent_b
        .kubelet
        .run_pod(&client, ns, "db-0")
        .await
        .metadata
        .uid
        .unwrap();
    let data = agent_b.kubelet.csi_volume_dir(&db_uid, &pv_name);
    std::fs::write(data.join("table.db"), pseudo_random(2 * 1024 * 1024, 3)).unwrap();

    let first = ferry
        .backup("b1", json!({"includedNamespaces": [ns]}))
        .await;
    assert_eq!(first.phase(), Some(Phase::Completed), "{}", summary(&first));
    let recorded = records(&ferry, "b1").await;
    let by_volume = |records: &VolumeRecords, volume: &str| {
        records
            .volumes
            .iter()
            .find(|r| r.pod_volume.as_ref().is_some_and(|p| p.volume == volume))
            .cloned()
            .unwrap_or_else(|| panic!("no record of volume {volume}: {records:?}"))
    };
    let cache_record = by_volume(&recorded, "cache");
    let data_record = by_volume(&recorded, "data");
    for (record, node) in [(&cache_record, &agent_a), (&data_record, &agent_b)] {
        assert_eq!(record.method, VolumeMethod::FileSystem);
        assert_eq!(record.phase, VolumePhase::Completed, "{record:?}");
        assert_eq!(
            record.pod_volume.as_ref().unwrap().node,
            node.kubelet.node_name()
        );
    }
    assert_eq!(data_record.persistent_volume, pv_name);

    // The data is in the namespace's repository, under the password the controller keeps.
    let fs = data_record.file_system.clone().unwrap();
    let password = ferry.repository_password().await;
    let snapshots: Vec<String> = [&cache_record, &data_record]
        .iter()
        .map(|r| r.file_system.as_ref().unwrap().snapshot_id.clone().unwrap())
        .collect();
    let restored = in_repository(&fs.repository, password.clone(), move |repository| {
        snapshots
            .iter()
            .map(|snapshot| {
                let out = tempfile::tempdir().unwrap();
                ferry_mover::restore(repository, snapshot, out.path(), &Default::default())
                    .unwrap();
                tree(out.path())
            })
            .collect::<Vec<_>>()
    })
    .await;
    assert_eq!(
        restored,
        [tree(&cache), tree(&data)],
        "the repository holds other data"
    );

    // The second backup is incremental.
    let mut table = std::fs::read(data.join("table.db")).unwrap();
    table[4096..8192].copy_from_slice(&pseudo_random(4096, 5));
    std::fs::write(data.join("table.db"), &table).unwrap();
    let second = ferry
        .backup("b2", json!({"includedNamespaces": [ns]}))
        .await;
    assert_eq!(
        second.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&second)
    );
    let uploaded = by_volume(&records(&ferry, "b2").await, "data")
        .file_system
        .unwrap()
        .bytes_uploaded;
    assert!(
        uploaded < 512 * 1024,
        "a 4 KiB change uploaded {uploaded} bytes"
    );

    // Disaster: the namespace and its volume are gone. The restore recreates the pods with an
    // init container that waits; the harness schedules them and the kubelet mounts fresh, empty
    // volumes; the agents of their nodes fill them.
    let expected_cache = tree(&cache);
    let expected_data = tree(&data);
    let app_name = ns.to_owned();
    delete_namespace_and_wait(&client, &app_name).await;
    delete_pv_and_wait(&client, &pv_name).await;
    ferry
        .create(
            json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Restore",
                       "metadata": {"name": "r1"}, "spec": {"backupName": "b2"}}),
        )
        .await;
    let pods = Api::<Pod>::namespaced(client.clone(), &app_name);
    let web = wait_for_pod(&pods, "web").await;
    let init = web
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .clone()
        .unwrap_or_default();
    assert_eq!(init[0].name, "ferry-restore-wait", "{init:?}");
    assert_eq!(init[0].args.as_ref().unwrap()[0], "restore-wait");
    wait_for_pod(&pods, "db-0").await;
    let web_uid = agent_a
        .kubelet
        .run_pod(&client, &app_name, "web")
        .await
        .metadata
        .uid
        .unwrap();
    let restored_cache = agent_a
        .kubelet
        .volume_dir(&web_uid, "kubernetes.io~empty-dir", "cache");
    wait_bound(&client, &app_name, "data").await;
    let db_uid = agent_b
        .kubelet
        .run_pod(&client, &app_name, "db-0")
        .await
        .metadata
        .uid
        .unwrap();
    // The kubelet makes the volume's directory before it mounts the volume there: what the agent
    // wrote in between would lie under the mount, hidden from the pod. It waits for the mount.
    let restored_data = agent_b.kubelet.csi_volume_dir_unmounted(&db_uid, &pv_name);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        std::fs::read_dir(&restored_data).unwrap().count(),
        0,
        "the agent wrote into the volume's directory before the volume was mounted there"
    );
    agent_b.kubelet.mount(&restored_data);
    let restore = ferry_tests::finished(&ferry.restores(), "r1").await;
    assert_eq!(
        restore.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&restore)
    );
    assert_eq!(
        tree(&restored_cache),
        expected_cache,
        "the emptyDir came back different"
    );
    assert_eq!(
        tree(&restored_data),
        expected_data,
        "the claim's volume came back different"
    );
    let restored_volumes = restore
        .status
        .as_ref()
        .unwrap()
        .pod_volumes
        .clone()
        .unwrap();
    assert_eq!(
        (restored_volumes.total, restored_volumes.completed),
        (2, 2),
        "{restored_volumes:?}"
    );
    assert!(
        restored_volumes.bytes_done >= 2 * 1024 * 1024,
        "{restored_volumes:?}"
    );
    let marker = format!("{}.done", restore.uid().unwrap());
    for volume in [&restored_cache, &restored_data] {
        assert!(
            volume.join(".ferry").join(&marker).is_file(),
            "no marker in {}",
            volume.display()
        );
    }

    // In place: the running database's volume drifted; a restore brings it back where it is,
    // fetching only what differs and removing what the backup lacks.
    let mut drifted = std::fs::read(restored_data.join("table.db")).unwrap();
    drifted[..8192].copy_from_slice(&pseudo_random(8192, 13));
    std::fs::write(restored_data.join("table.db"), &drifted).unwrap();
    std::fs::write(restored_data.join("stray.tmp"), b"not in the backup").unwrap();
    let in_place = ferry
        .restore("r2", json!({"backupName": "b2", "inPlaceVolumes": true}))
        .await;
    assert_eq!(
        in_place.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&in_place)
    );
    assert_eq!(
        tree(&restored_data),
        expected_data,
        "the in-place restore left differences"
    );
    let key = ferry_protocol::layout::RestoreKeys::new(None, "r2").volumes();
    let r2: VolumeRecords = serde_json::from_value(ferry.read_json(&key).await.unwrap()).unwrap();
    let downloaded = by_volume(&r2, "data").file_system.unwrap();
    assert!(downloaded.in_place);
    assert!(
        downloaded.bytes_uploaded < 1024 * 1024,
        "an in-place restore of an 8 KiB drift downloaded {} bytes",
        downloaded.bytes_uploaded
    );

    // The agent is killed in the middle of a backup and comes back, as a DaemonSet pod would:
    // the volume is tried again, and the backup completes.
    std::fs::write(
        restored_data.join("bulk.bin"),
        pseudo_random(64 * 1024 * 1024, 17),
    )
    .unwrap();
    let started = agent_b.log().matches("task started").count();
    ferry
        .create(json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Backup",
                       "metadata": {"name": "b3"}, "spec": {"includedNamespaces": [ns]}}))
        .await;
    agent_b.wait_for_log("task started", started + 1).await;
    agent_b.kill();
    let ended = agent_b.log().matches("task ended").count();
    assert_eq!(
        ended,
        started,
        "the backup ended before the agent was killed; give it more data:\n{}",
        agent_b.log()
    );
    agent_b.restart(&client).await;
    let third = ferry_tests::finished(&ferry.backups(), "b3").await;
    assert_eq!(third.phase(), Some(Phase::Completed), "{}", summary(&third));
    let retried = by_volume(&records(&ferry, "b3").await, "data");
    assert_eq!(retried.phase, VolumePhase::Completed, "{retried:?}");
    assert!(
        retried.file_system.as_ref().unwrap().attempts >= 2,
        "the killed attempt was not counted: {retried:?}"
    );
    let progress = third.status.unwrap().pod_volumes.unwrap();
    assert_eq!((progress.total, progress.completed), (2, 2), "{progress:?}");
    assert!(progress.bytes_done >= 64 * 1024 * 1024, "{progress:?}");

    // An agent that is gone for good: once its Lease expires, its volume is tried again, then
    // failed with the reason; the backup is never stuck, and the rest of it completes.
    agent_b.kill();
    let fourth = ferry
        .backup("b4", json!({"includedNamespaces": [ns]}))
        .await;
    assert_eq!(
        fourth.phase(),
        Some(Phase::PartiallyFailed),
        "{}",
        summary(&fourth)
    );
    let reason = fourth.status.unwrap().failure_reason.unwrap_or_default();
    assert!(
        reason.contains(&pv_name) && reason.contains("3 attempts") && reason.contains("Lease"),
        "{reason}"
    );
    assert_eq!(
        by_volume(&records(&ferry, "b4").await, "cache").phase,
        VolumePhase::Completed
    );
    // Killed writers leave the repository consistent: every snapshot and pack checks clean.
    let report = in_repository(&fs.repository, password, |repository| {
        ferry_mover::check(repository, &Default::default()).unwrap()
    })
    .await;
    assert!(
        report.errors.is_empty(),
        "the repository is damaged: {:?}",
        report.errors
    );

    delete_namespace_and_wait(&client, &app_name).await;
    drop(app);
    drop(agent_a);
    ferry.stop().await;
}

async fn wait_for_pod(pods: &Api<Pod>, name: &str) -> Pod {
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        if let Some(pod) = pods.get_opt(name).await.unwrap() {
            return pod;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {name} was not restored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GETs `path` from the agent's plain HTTP port: the status line and the body.
async fn http_get(agent: &RunningAgent, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut connection = tokio::net::TcpStream::connect(agent.metrics_address())
        .await
        .unwrap_or_else(|error| panic!("connecting to {}: {error}", agent.metrics_address()));
    let request = format!("GET {path} HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\r\n");
    connection.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    connection.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test]
async fn the_agent_serves_metrics_that_count_its_tasks() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ferry_namespace = TestNamespace::create(&client, "agent-metrics").await;
    let app = TestNamespace::create(&client, "agent-metrics-app").await;
    let ca = AgentCa::generate().unwrap();
    let agent = RunningAgent::start(&client, ferry_namespace.name(), &ca).await;
    let (status, body) = http_get(&agent, "/healthz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    let (_, before) = http_get(&agent, "/metrics").await;
    assert!(before.contains("ferry_agent_tasks_running 0\n"), "{before}");
    assert!(
        before.contains("ferry_agent_tasks_total{kind=\"backup\",result=\"Completed\"} 0\n"),
        "{before}"
    );

    let uid = pod_on(&client, app.name(), "db-0", &agent.kubelet).await;
    let data = agent
        .kubelet
        .volume_dir(&uid, "kubernetes.io~empty-dir", "data");
    std::fs::write(data.join("table.bin"), pseudo_random(256 * 1024, 3)).unwrap();
    ferry_tests::install_ferry_crds(&client).await;
    let store = BucketPrefix::new(env, "agent-metrics-repo");
    let repository = repository(
        &client,
        ferry_namespace.name(),
        app.name(),
        &store,
        "metrics",
    )
    .await;
    let mut controller = connect_as_controller(&agent, &ca).await;
    let done = run_task(
        controller
            .backup_volume(BackupVolumeRequest {
                task_id: "m1".to_owned(),
                volume: volume(app.name(), "db-0", "data"),
                repository: Some(repository),
                tags: vec![],
            })
            .await,
    )
    .await
    .expect("the backup");

    let (status, after) = http_get(&agent, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    for line in [
        "ferry_agent_tasks_total{kind=\"backup\",result=\"Completed\"} 1\n".to_owned(),
        "ferry_agent_task_duration_seconds_count{kind=\"backup\"} 1\n".to_owned(),
        format!(
            "ferry_agent_bytes_total{{kind=\"backup\"}} {}\n",
            done.bytes_transferred
        ),
        "ferry_agent_tasks_running 0\n".to_owned(),
    ] {
        assert!(after.contains(&line), "{line}:\n{after}");
    }
    assert!(done.bytes_transferred > 0, "{done:?}");
    // The task's lines name it, on the blocking thread that ran it too.
    assert!(
        agent.log().contains("task{task=m1 kind=backup what="),
        "{}",
        agent.log()
    );
    let (status, _) = http_get(&agent, "/nothing-here").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}
