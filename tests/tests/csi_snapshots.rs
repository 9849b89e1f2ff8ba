//! CSI snapshots on the real node, through the environment's CSI stack (tests/env/csi: its
//! host-path driver, the external provisioner and snapshotter, the snapshot controller): a claim
//! of the CSI StorageClass is snapshotted by the backup, the snapshot outlives the deletion of its
//! namespace, a restore provisions the claim from it with the data as it was, and deleting the
//! backup deletes the snapshot. A snapshot that never becomes ready fails its volume with the
//! snapshot controller's reason once csiSnapshotTimeout has passed.

use ferry_protocol::crd::{DELETE_REQUESTED_ANNOTATION, Phase};
use ferry_protocol::layout::BackupKeys;
use ferry_protocol::volume::{VolumeMethod, VolumePhase, VolumeRecords};
use ferry_tests::real_node::{env_with_node, exec, real_node_namespace, run_pod};
use ferry_tests::{
    CONVERGENCE_TIMEOUT, HasPhase, RunningController, TestEnv, create_object,
    delete_namespace_and_wait, delete_pv_and_wait, summary, unique_name, wait_bound,
};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

fn snapshot_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "snapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "snapshot.storage.k8s.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn contents(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &snapshot_resource("VolumeSnapshotContent", "volumesnapshotcontents"),
    )
}

fn volume_snapshots(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        namespace,
        &snapshot_resource("VolumeSnapshot", "volumesnapshots"),
    )
}

/// The environment's CSI StorageClass; fails, saying how to get it, when the node has no CSI stack.
fn csi_storage_class(env: &TestEnv) -> String {
    let class = env.var("FERRY_TEST_CSI_STORAGE_CLASS");
    assert!(
        !class.is_empty(),
        "the test environment has no CSI stack (FERRY_TEST_CSI_STORAGE_CLASS is not in its env file): start it again with `tests/env/down && tests/env/up`"
    );
    class.to_owned()
}

/// The device a block claim appears as in the test's pods.
const BLOCK_DEVICE: &str = "/dev/ferry-block";

/// A filesystem claim `data` and a block claim `raw` of the CSI class, and a pod of the node's
/// base image that mounts the first at /data and has the second as a device.
async fn claims_and_pod(client: &Client, namespace: &str, class: &str, pod: &str) {
    for (claim, mode) in [("data", "Filesystem"), ("raw", "Block")] {
        create_object(
            client,
            namespace,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
                   "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                            "volumeMode": mode, "resources": {"requests": {"storage": "64Mi"}}}}),
        )
        .await;
        wait_bound(client, namespace, claim).await;
    }
    run_pod(client, namespace, pod_with_claims(pod)).await;
}

fn pod_with_claims(pod: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": TestEnv::get().var("FERRY_TEST_BASE_IMAGE"),
                "command": ["sleep", "infinity"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "volumeDevices": [{"name": "raw", "devicePath": BLOCK_DEVICE}],
            }],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "raw", "persistentVolumeClaim": {"claimName": "raw"}},
            ],
        },
    })
}

/// The first `len` bytes of the pod's block device, in hex.
fn block_head(namespace: &str, pod: &str, len: usize) -> String {
    exec(
        namespace,
        pod,
        &[
            "sh",
            "-c",
            &format!("head -c {len} {BLOCK_DEVICE} | od -An -tx1 | tr -d ' \\n'"),
        ],
    )
}

async fn volume_records(ferry: &RunningController, backup: &str) -> VolumeRecords {
    let key = BackupKeys::new(None, backup).volumes();
    serde_json::from_value(ferry.read_json(&key).await.unwrap()).unwrap()
}

/// Waits until `get` returns None.
async fn wait_gone<F, Fut>(what: &str, get: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<DynamicObject>>,
{
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    while let Some(object) = get().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} is still there: {object:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_csi_snapshot_outlives_its_namespace_and_restores_the_claim() {
    let (env, client) = env_with_node().await;
    let class = csi_storage_class(env);
    let ferry = RunningController::start("csi-snapshots", true).await;
    let namespace = real_node_namespace(&client, "csi-app").await;
    let ns = namespace.name().to_owned();
    claims_and_pod(&client, &ns, &class, "writer").await;
    let content = unique_name("written-before-the-backup");
    exec(
        &ns,
        "writer",
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p /data/sub && printf {content} > /data/sub/file && chmod 640 /data/sub/file \
                 && head -c 12288 /dev/urandom | dd of={BLOCK_DEVICE} conv=notrunc,fsync 2>/dev/null \
                 && printf {content} | dd of={BLOCK_DEVICE} bs=4096 seek=3 conv=notrunc,fsync 2>/dev/null && sync"
            ),
        ],
    );
    let block_len = 4096 * 3 + content.len();
    let block_before = block_head(&ns, "writer", block_len);
    assert_eq!(block_before.len(), 2 * block_len, "{block_before}");

    let backup_name = unique_name("csi");
    let backup = ferry
        .backup(&backup_name, json!({"includedNamespaces": [ns]}))
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    let status = backup.status.clone().unwrap();
    assert_eq!(
        (
            status.csi_volume_snapshots_attempted,
            status.csi_volume_snapshots_completed
        ),
        (2, 2),
        "{}",
        summary(&backup)
    );
    let records = volume_records(&ferry, &backup_name).await;
    let record = records
        .volumes
        .iter()
        .find(|r| r.claim.as_ref().is_some_and(|c| c.name == "data"))
        .unwrap_or_else(|| panic!("no record of the claim: {records:?}"));
    assert_eq!(
        (record.method, record.phase),
        (VolumeMethod::CsiSnapshot, VolumePhase::Completed),
        "{record:?}"
    );
    assert!(record.file_system.is_none(), "{record:?}");
    let csi = record.csi_snapshot.clone().unwrap();
    assert_eq!(csi.driver, env.var("FERRY_TEST_CSI_DRIVER"));
    let content_name = csi.content.clone().expect("the kept content's name");
    assert!(csi.snapshot_handle.is_some(), "{csi:?}");

    // The backup's VolumeSnapshots go; their contents stay, kept and labelled.
    let in_namespace = volume_snapshots(&client, &ns);
    wait_gone("the backup's VolumeSnapshots", || {
        let snapshots = in_namespace.clone();
        async move {
            let left = snapshots.list(&ListParams::default()).await.unwrap();
            left.items.into_iter().next()
        }
    })
    .await;
    let kept = contents(&client).get(&content_name).await.unwrap();
    assert_eq!(kept.data["spec"]["deletionPolicy"], "Retain");
    let uid = backup.metadata.uid.clone().unwrap();
    assert_eq!(
        kept.metadata.labels.as_ref().unwrap()["ferry.dev/backup-uid"],
        uid
    );

    // `kubectl delete namespace`: the claim and its volume go, the snapshot stays.
    delete_namespace_and_wait(&client, &ns).await;
    for record in &records.volumes {
        // Reclaim policy Delete: the provisioner deletes them; a restore keeps a volume it finds.
        delete_pv_and_wait(&client, &record.persistent_volume).await;
    }
    assert!(
        contents(&client)
            .get_opt(&content_name)
            .await
            .unwrap()
            .is_some(),
        "the snapshot went with the namespace"
    );

    let restore = ferry
        .restore(&unique_name("csi"), json!({"backupName": backup_name}))
        .await;
    assert_eq!(
        restore.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&restore)
    );
    wait_bound(&client, &ns, "data").await;
    let restored = api_claim(&client, &ns, "data").await;
    assert_eq!(
        restored.pointer("/spec/dataSource/kind"),
        Some(&json!("VolumeSnapshot")),
        "{restored}"
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    let running = kube::runtime::wait::await_condition(
        pods,
        "writer",
        |pod: Option<&k8s_openapi::api::core::v1::Pod>| {
            pod.and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                == Some("Running")
        },
    );
    tokio::time::timeout(CONVERGENCE_TIMEOUT, running)
        .await
        .expect("the restored pod runs")
        .unwrap();
    assert_eq!(exec(&ns, "writer", &["cat", "/data/sub/file"]), content);
    assert_eq!(
        exec(&ns, "writer", &["stat", "-c", "%a", "/data/sub/file"]).trim(),
        "640"
    );
    assert_eq!(
        block_head(&ns, "writer", block_len),
        block_before,
        "the block claim came back different"
    );
    let raw = records
        .volumes
        .iter()
        .find(|r| r.claim.as_ref().is_some_and(|c| c.name == "raw"))
        .unwrap_or_else(|| panic!("no record of the block claim: {records:?}"));
    assert_eq!(raw.phase, VolumePhase::Completed, "{raw:?}");
    let restore_uid = restore.metadata.uid.clone().unwrap();

    // Deleting the backup deletes its snapshot.
    delete_namespace_and_wait(&client, &ns).await;
    // As `ferry backup delete` asks for it.
    ferry
        .backups()
        .patch(
            &backup_name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {DELETE_REQUESTED_ANNOTATION: "now"}}}),
            ),
        )
        .await
        .unwrap();
    let client_for_wait = client.clone();
    wait_gone("the backup's VolumeSnapshotContent", || {
        let contents = contents(&client_for_wait);
        let name = content_name.clone();
        async move { contents.get_opt(&name).await.unwrap() }
    })
    .await;
    // The driver deleted the snapshots themselves.
    let snapshots_dir = std::path::Path::new(env.var("FERRY_TEST_CSI_DATA_DIR")).join("snapshots");
    for record in &records.volumes {
        let handle = record
            .csi_snapshot
            .as_ref()
            .unwrap()
            .snapshot_handle
            .clone()
            .unwrap();
        let path = snapshots_dir.join(&handle);
        let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
        while path.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the driver still has snapshot {handle} of the deleted backup"
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    // And the contents the restore made from it.
    wait_gone("the restore's VolumeSnapshotContents", || {
        let contents = contents(&client_for_wait);
        let selector = format!("ferry.dev/restore-uid={restore_uid}");
        async move {
            contents
                .list(&ListParams::default().labels(&selector))
                .await
                .unwrap()
                .items
                .into_iter()
                .next()
        }
    })
    .await;
    ferry.stop().await;
}

async fn api_claim(client: &Client, namespace: &str, name: &str) -> Value {
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), namespace);
    serde_json::to_value(claims.get(name).await.unwrap()).unwrap()
}

#[tokio::test]
async fn a_csi_snapshot_never_ready_fails_its_volume_with_the_reason_after_the_timeout() {
    let (env, client) = env_with_node().await;
    let class = csi_storage_class(env);
    let ferry = RunningController::start("csi-never-ready", true).await;
    let namespace = real_node_namespace(&client, "csi-lost").await;
    let ns = namespace.name().to_owned();
    // A claim bound to a hand-made CSI volume whose disk the driver does not have: the driver
    // refuses to snapshot it, and the snapshot never becomes ready.
    let pv = unique_name("csi-lost");
    create_object(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
               "spec": {"capacity": {"storage": "64Mi"}, "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain", "storageClassName": class,
                        "claimRef": {"namespace": ns, "name": "lost"},
                        "csi": {"driver": env.var("FERRY_TEST_CSI_DRIVER"),
                                "volumeHandle": "no-such-volume"}}}),
    )
    .await;
    create_object(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "lost"},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                        "volumeName": pv, "resources": {"requests": {"storage": "64Mi"}}}}),
    )
    .await;
    wait_bound(&client, &ns, "lost").await;

    let backup_name = unique_name("csi-lost");
    let backup = ferry
        .backup(
            &backup_name,
            json!({"includedNamespaces": [ns], "csiSnapshotTimeout": "10s"}),
        )
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::PartiallyFailed),
        "{}",
        summary(&backup)
    );
    let records = volume_records(&ferry, &backup_name).await;
    let record = &records.volumes[0];
    assert_eq!(
        (record.method, record.phase),
        (VolumeMethod::CsiSnapshot, VolumePhase::Failed),
        "{record:?}"
    );
    let message = record.message.clone().unwrap_or_default();
    assert!(
        message.contains("not ready within csiSnapshotTimeout")
            && message.contains("the snapshot controller says"),
        "{message}"
    );
    // The failed snapshot is no part of the backup, and is not left behind.
    let name = record
        .csi_snapshot
        .as_ref()
        .unwrap()
        .volume_snapshot
        .clone();
    let snapshots = volume_snapshots(&client, &ns);
    wait_gone("the failed VolumeSnapshot", || {
        let (snapshots, name) = (snapshots.clone(), name.clone());
        async move { snapshots.get_opt(&name).await.unwrap() }
    })
    .await;
    delete_namespace_and_wait(&client, &ns).await;
    Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(client.clone())
        .delete(&pv, &Default::default())
        .await
        .ok();
    ferry.stop().await;
}
