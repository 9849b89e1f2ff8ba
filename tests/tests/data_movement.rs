//! Snapshot data movement on the real node, with Ferry installed as users install it (its image,
//! `kubectl apply -k`, the agent DaemonSet) and the environment's CSI stack: a backup with
//! `--snapshot-move-data` takes CSI snapshots of a claim a pod mounts, of a claim no pod mounts
//! and of a block claim a pod uses as a device, moves their data into the namespace's repository
//! through a temporary claim and pod in ferry-system read by the node's agent (the block one lent
//! to the agent as an open device), and deletes the temporaries and the snapshots. After the
//! namespace, its volumes and every snapshot are gone, a restore fills each new claim from the
//! repository before a pod uses it: the mounted one through its pod, the others through fill
//! pods, the block claim's pod held by a scheduling gate until then.

use std::time::Duration;

use ferry_protocol::volume::{VolumeMethod, VolumePhase};
use ferry_tests::real_cluster::{
    Cluster, FERRY_NAMESPACE, configure_location, eventually, load_ferry_image, volume_records,
};
use ferry_tests::real_node::exec;
use ferry_tests::{BucketPrefix, TestEnv, delete_pv_and_wait, unique_name, wait_bound};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use serde_json::{Value, json};

const NAMESPACE: &str = "moving";
const OPERATION_TIMEOUT: Duration = Duration::from_secs(300);

fn contents(cluster: &Cluster) -> Api<DynamicObject> {
    Api::all_with(
        cluster.client.clone(),
        &ApiResource {
            group: "snapshot.storage.k8s.io".into(),
            version: "v1".into(),
            api_version: "snapshot.storage.k8s.io/v1".into(),
            kind: "VolumeSnapshotContent".into(),
            plural: "volumesnapshotcontents".into(),
        },
    )
}

fn claim(name: &str, class: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": name, "namespace": NAMESPACE},
           "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                    "resources": {"requests": {"storage": "64Mi"}}}})
}

fn pod(name: &str, claim: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NAMESPACE},
           "spec": {"terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "main", "image": TestEnv::get().var("FERRY_TEST_BASE_IMAGE"),
                                    "command": ["sleep", "infinity"],
                                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})
}

/// Where the block claim appears in its pod, and how much of it the test writes.
const DEVICE: &str = "/dev/ferry-raw";
const DEVICE_BYTES: usize = 3_000_000;

fn block_claim(name: &str, class: &str) -> Value {
    let mut claim = claim(name, class);
    claim["spec"]["volumeMode"] = json!("Block");
    claim
}

fn block_pod(name: &str, claim: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NAMESPACE},
           "spec": {"terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "main", "image": TestEnv::get().var("FERRY_TEST_BASE_IMAGE"),
                                    "command": ["sleep", "infinity"],
                                    "volumeDevices": [{"name": "raw", "devicePath": DEVICE}]}],
                    "volumes": [{"name": "raw", "persistentVolumeClaim": {"claimName": claim}}]}})
}

/// The digest of the first [`DEVICE_BYTES`] of the block pod's device.
fn device_digest(pod: &str) -> String {
    exec(
        NAMESPACE,
        pod,
        &[
            "sh",
            "-c",
            &format!("head -c {DEVICE_BYTES} {DEVICE} | sha256sum"),
        ],
    )
}

fn apply(cluster: &Cluster, object: &Value) {
    cluster.kubectl_with_input(&["apply", "-f", "-"], &object.to_string());
}

fn wait_running(cluster: &Cluster, pod: &str) {
    cluster.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "wait",
        "--for=jsonpath={.status.phase}=Running",
        &format!("pod/{pod}"),
        "--timeout=180s",
    ]);
}

#[tokio::test]
async fn moved_snapshot_data_survives_the_loss_of_every_snapshot() {
    let env = TestEnv::get();
    let class = env.var("FERRY_TEST_CSI_STORAGE_CLASS");
    assert!(
        !class.is_empty(),
        "the test environment has no CSI stack: start it again with `tests/env/down && tests/env/up`"
    );
    let main = Cluster::main().await;
    main.remove_namespace(NAMESPACE).await;
    main.remove_namespace(FERRY_NAMESPACE).await;
    let store = BucketPrefix::new(env, "data-movement");
    let image = load_ferry_image();
    main.install_ferry(&image).await;
    configure_location(&main, &store);

    // A claim a pod writes to and keeps mounted, and one written by a pod that is gone since.
    main.kubectl_ok(&["create", "namespace", NAMESPACE]);
    main.kubectl_ok(&["label", "namespace", NAMESPACE, "ferry.dev/real-node=true"]);
    apply(&main, &claim("data", class));
    apply(&main, &claim("idle", class));
    apply(&main, &block_claim("raw", class));
    apply(&main, &pod("writer", "data"));
    apply(&main, &pod("once", "idle"));
    apply(&main, &block_pod("blocks", "raw"));
    wait_running(&main, "writer");
    wait_running(&main, "once");
    wait_running(&main, "blocks");
    exec(
        NAMESPACE,
        "blocks",
        &[
            "sh",
            "-c",
            &format!(
                "head -c {DEVICE_BYTES} /dev/urandom > /tmp/r && dd if=/tmp/r of={DEVICE} bs=1M conv=fsync 2>/dev/null"
            ),
        ],
    );
    let device = device_digest("blocks");
    let content = unique_name("moved-with-the-snapshot");
    exec(
        NAMESPACE,
        "writer",
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p /data/d && printf {content} > /data/d/file && head -c 3000000 /dev/urandom > /data/d/random && sync"
            ),
        ],
    );
    let digest = exec(NAMESPACE, "writer", &["sha256sum", "/data/d/random"]);
    exec(
        NAMESPACE,
        "once",
        &[
            "sh",
            "-c",
            &format!("printf {content} > /data/idle && sync"),
        ],
    );
    main.kubectl_ok(&["-n", NAMESPACE, "delete", "pod", "once", "--wait=true"]);

    let backup = unique_name("moved");
    let output = main.ferry_ok(&[
        "backup",
        "create",
        &backup,
        "--include-namespaces",
        NAMESPACE,
        "--snapshot-move-data",
        "--wait",
    ]);
    assert!(output.contains("Completed"), "{output}");
    let records = volume_records(&main, &store, &backup).await;
    assert_eq!(records.volumes.len(), 3, "{records:?}");
    for record in &records.volumes {
        assert_eq!(
            (record.method, record.phase),
            (VolumeMethod::CsiSnapshot, VolumePhase::Completed),
            "{record:?}"
        );
        let moved = record.csi_snapshot.as_ref().unwrap();
        assert!(moved.moved(), "{record:?}");
        let fs = record.file_system.as_ref().expect("moved by an agent");
        assert!(fs.snapshot_id.is_some() && fs.bytes > 0, "{record:?}");
        assert!(
            fs.repository
                .ends_with(&format!("/repositories/{NAMESPACE}")),
            "{record:?}"
        );
    }
    // Nothing temporary is left, and no snapshot.
    let movers = main.kubectl_ok(&[
        "-n",
        FERRY_NAMESPACE,
        "get",
        "pods,persistentvolumeclaims,volumesnapshots",
        "-l",
        "app.kubernetes.io/component=data-mover",
        "-o",
        "name",
    ]);
    assert_eq!(movers.trim(), "", "the data mover's objects are left");
    let backup_uid = main.kubectl_ok(&[
        "-n",
        FERRY_NAMESPACE,
        "get",
        "backup",
        &backup,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let selector = format!("ferry.dev/backup-uid={backup_uid}");
    eventually(
        "the backup's snapshots deleted once moved",
        OPERATION_TIMEOUT,
        || {
            let (contents, selector) = (contents(&main), selector.clone());
            async move {
                let left = contents
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .ok()?;
                left.items.is_empty().then_some(())
            }
        },
    )
    .await;

    // Everything in the cluster's storage is gone: the namespace, its volumes, every snapshot.
    main.remove_namespace(NAMESPACE).await;
    for record in &records.volumes {
        delete_pv_and_wait(&main.client, &record.persistent_volume).await;
    }

    let restore = unique_name("moved");
    let output = main.ferry_ok(&[
        "restore",
        "create",
        &restore,
        "--from-backup",
        &backup,
        "--wait",
    ]);
    assert!(output.contains("Completed"), "{output}");
    wait_bound(&main.client, NAMESPACE, "data").await;
    wait_running(&main, "writer");
    assert_eq!(exec(NAMESPACE, "writer", &["cat", "/data/d/file"]), content);
    assert_eq!(
        exec(NAMESPACE, "writer", &["sha256sum", "/data/d/random"]),
        digest
    );
    // The block claim's pod was held until its device was filled, and starts with the data.
    wait_running(&main, "blocks");
    assert_eq!(device_digest("blocks"), device);
    // The claim no pod mounts was filled through a fill pod: a new pod finds its data.
    apply(&main, &pod("reader", "idle"));
    wait_running(&main, "reader");
    assert_eq!(exec(NAMESPACE, "reader", &["cat", "/data/idle"]), content);
    let fill_pods = main.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=volume-fill",
        "-o",
        "name",
    ]);
    assert_eq!(fill_pods.trim(), "", "the restore's fill pods are left");

    main.remove_namespace(NAMESPACE).await;
    main.ferry_ok(&["backup", "delete", &backup, "--confirm"]);
}
