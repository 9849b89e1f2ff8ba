//! The test environment's CSI storage (tests/env/node-up; the driver is tests/env/csi): claims of
//! its StorageClass bind to volumes the external provisioner makes with the driver, pods on the real
//! node write to them, a VolumeSnapshot of its VolumeSnapshotClass becomes ready through the
//! snapshot-controller and the external snapshotter, a claim restored from it holds what the
//! snapshot saw, a block claim is a device that keeps what was written to it, and deleting the
//! snapshot and the claims removes the driver's copies and disks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_tests::real_node::{env_with_node, exec, real_node_namespace, run_pod, sleeper};
use ferry_tests::{CONVERGENCE_TIMEOUT, TestEnv, wait_bound};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::CSINode;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde_json::json;

/// The environment with its node and the CSI driver registered with the node's kubelet.
async fn env_with_csi() -> (&'static TestEnv, Client) {
    let (env, client) = env_with_node().await;
    let driver = env.var("FERRY_TEST_CSI_DRIVER");
    let node = env.var("FERRY_TEST_NODE_NAME");
    let registered = Api::<CSINode>::all(client.clone())
        .get_opt(node)
        .await
        .expect("reading the CSINode")
        .and_then(|csi_node| csi_node.spec.drivers.into_iter().find(|d| d.name == driver));
    assert!(
        registered.is_some(),
        "the CSI driver {driver} is not registered with the kubelet of {node}: start it with `tests/env/node-up` (tests/env/status says what is missing)"
    );
    (env, client)
}

fn volume_snapshots(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "volumesnapshots");
    Api::namespaced_with(client.clone(), namespace, &resource)
}

fn volume_snapshot_contents(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotContent");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "volumesnapshotcontents");
    Api::all_with(client.clone(), &resource)
}

/// Creates a claim of the environment's CSI StorageClass, waits until it is bound and returns its
/// PersistentVolume.
async fn bound_claim(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> PersistentVolume {
    let env = TestEnv::get();
    let mut claim = json!({
        "metadata": {"name": name},
        "spec": {
            "storageClassName": env.var("FERRY_TEST_CSI_STORAGE_CLASS"),
            "accessModes": ["ReadWriteOnce"],
        },
    });
    for (key, value) in spec.as_object().unwrap() {
        claim["spec"][key] = value.clone();
    }
    let claim: PersistentVolumeClaim = serde_json::from_value(claim).unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &claim)
        .await
        .unwrap_or_else(|error| panic!("creating claim {namespace}/{name}: {error}"));
    let claim = wait_bound(client, namespace, name).await;
    let volume_name = claim.spec.unwrap().volume_name.unwrap();
    let volume = Api::<PersistentVolume>::all(client.clone())
        .get(&volume_name)
        .await
        .unwrap();
    let csi = volume.spec.as_ref().unwrap().csi.as_ref().unwrap();
    assert_eq!(
        csi.driver,
        env.var("FERRY_TEST_CSI_DRIVER"),
        "{volume_name} was provisioned by the environment's CSI driver"
    );
    volume
}

fn volume_handle(volume: &PersistentVolume) -> &str {
    &volume
        .spec
        .as_ref()
        .unwrap()
        .csi
        .as_ref()
        .unwrap()
        .volume_handle
}

/// Where the driver keeps a volume (or, under `snapshots`, a snapshot).
fn driver_dir(kind: &str, id: &str) -> PathBuf {
    Path::new(TestEnv::get().var("FERRY_TEST_CSI_DATA_DIR"))
        .join(kind)
        .join(id)
}

/// Whether `path` exists; an error other than its absence (a directory the test may not read)
/// fails the test rather than passing for absence.
fn exists(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => panic!("checking {}: {error}", path.display()),
    }
}

/// A sleeping pod with `claim` at /data, or as the device /dev/xvda when `block`.
fn pod_with_claim(name: &str, claim: &str, block: bool) -> serde_json::Value {
    let mut pod = sleeper(name, json!({}));
    if block {
        let container = &mut pod["spec"]["containers"][0];
        container["volumeMounts"] = json!([]);
        container["volumeDevices"] = json!([{"name": "data", "devicePath": "/dev/xvda"}]);
    }
    pod["spec"]["volumes"] =
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]);
    pod
}

async fn delete_pod_and_wait(client: &Client, namespace: &str, name: &str) {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let uid = pods.get(name).await.unwrap().uid().unwrap();
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    tokio::time::timeout(
        CONVERGENCE_TIMEOUT,
        await_condition(pods, name, conditions::is_deleted(&uid)),
    )
    .await
    .unwrap_or_else(|_| panic!("pod {namespace}/{name} was not deleted"))
    .unwrap();
}

/// Polls `check` until it holds, or fails with `what`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {CONVERGENCE_TIMEOUT:?} (logs: tests/env/status)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes a claim and waits until its volume and the driver's data of it are gone.
async fn delete_claim_and_wait(client: &Client, namespace: &str, volume: &PersistentVolume) {
    let claim = volume
        .spec
        .as_ref()
        .unwrap()
        .claim_ref
        .as_ref()
        .unwrap()
        .name
        .clone()
        .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .delete(&claim, &DeleteParams::default())
        .await
        .unwrap();
    let volumes = Api::<PersistentVolume>::all(client.clone());
    let name = volume.name_any();
    eventually(
        &format!("the volume {name} of claim {claim} (reclaim policy Delete) was not deleted"),
        || async { volumes.get_opt(&name).await.unwrap().is_none() },
    )
    .await;
    let data = driver_dir("volumes", volume_handle(volume));
    assert!(
        !exists(&data),
        "the driver deleted {} with its volume",
        data.display()
    );
}

#[tokio::test]
async fn a_filesystem_claim_is_written_snapshotted_and_restored_from_the_snapshot() {
    let (env, client) = env_with_csi().await;
    let namespace = real_node_namespace(&client, "csi-fs").await;
    let ns = namespace.name();

    let volume = bound_claim(
        &client,
        ns,
        "data",
        json!({"resources": {"requests": {"storage": "64Mi"}}}),
    )
    .await;
    run_pod(&client, ns, pod_with_claim("writer", "data", false)).await;
    let written = exec(
        ns,
        "writer",
        &[
            "sh",
            "-c",
            "echo snapshotted >/data/file && chmod 640 /data/file && mkdir /data/dir && \
             echo nested >/data/dir/file && sync && cat /data/file",
        ],
    );
    assert_eq!(written, "snapshotted\n");
    let on_disk = driver_dir("volumes", volume_handle(&volume)).join("data/file");
    assert_eq!(
        std::fs::read_to_string(&on_disk)
            .unwrap_or_else(|error| panic!("reading {}: {error}", on_disk.display())),
        "snapshotted\n",
        "the pod wrote into the driver's volume"
    );

    let snapshots = volume_snapshots(&client, ns);
    let snapshot: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": "snap"},
        "spec": {
            "volumeSnapshotClassName": env.var("FERRY_TEST_CSI_SNAPSHOT_CLASS"),
            "source": {"persistentVolumeClaimName": "data"},
        },
    }))
    .unwrap();
    snapshots
        .create(&PostParams::default(), &snapshot)
        .await
        .unwrap();
    eventually("the VolumeSnapshot did not become readyToUse", || async {
        snapshots.get("snap").await.unwrap().data["status"]["readyToUse"] == json!(true)
    })
    .await;
    let status = snapshots.get("snap").await.unwrap().data["status"].clone();
    assert_eq!(status["restoreSize"], json!("64Mi"), "{status}");
    let content_name = status["boundVolumeSnapshotContentName"]
        .as_str()
        .unwrap()
        .to_owned();
    let contents = volume_snapshot_contents(&client);
    let content = contents.get(&content_name).await.unwrap();
    assert_eq!(
        content.data["spec"]["driver"],
        json!(env.var("FERRY_TEST_CSI_DRIVER"))
    );
    let snapshot_handle = content.data["status"]["snapshotHandle"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(exists(&driver_dir("snapshots", &snapshot_handle)));

    // Changed after the snapshot: the restored claim must have what the snapshot saw.
    exec(
        ns,
        "writer",
        &["sh", "-c", "echo changed >/data/file && rm -r /data/dir"],
    );

    let restored = bound_claim(
        &client,
        ns,
        "restored",
        json!({
            "resources": {"requests": {"storage": "64Mi"}},
            "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"},
        }),
    )
    .await;
    assert_ne!(volume_handle(&restored), volume_handle(&volume));
    run_pod(&client, ns, pod_with_claim("reader", "restored", false)).await;
    let read = exec(
        ns,
        "reader",
        &[
            "sh",
            "-c",
            "cat /data/file /data/dir/file && stat -c %a /data/file",
        ],
    );
    assert_eq!(read, "snapshotted\nnested\n640\n");

    // Deleting the snapshot deletes its content and the driver's copy (deletionPolicy Delete).
    snapshots
        .delete("snap", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the VolumeSnapshotContent of a deleted VolumeSnapshot was not deleted",
        || async { contents.get_opt(&content_name).await.unwrap().is_none() },
    )
    .await;
    assert!(!exists(&driver_dir("snapshots", &snapshot_handle)));

    delete_pod_and_wait(&client, ns, "writer").await;
    delete_pod_and_wait(&client, ns, "reader").await;
    delete_claim_and_wait(&client, ns, &volume).await;
    delete_claim_and_wait(&client, ns, &restored).await;
    namespace.delete_and_wait().await;
}

#[tokio::test]
async fn a_block_claim_is_a_device_that_keeps_what_was_written_to_it() {
    let (_, client) = env_with_csi().await;
    let namespace = real_node_namespace(&client, "csi-block").await;
    let ns = namespace.name();

    let volume = bound_claim(
        &client,
        ns,
        "disk",
        json!({"volumeMode": "Block", "resources": {"requests": {"storage": "32Mi"}}}),
    )
    .await;
    run_pod(&client, ns, pod_with_claim("writer", "disk", true)).await;
    let written = exec(
        ns,
        "writer",
        &[
            "sh",
            "-c",
            "blockdev --getsize64 /dev/xvda && head -c 1048576 /dev/urandom >/tmp/block && \
             dd if=/tmp/block of=/dev/xvda bs=1M seek=3 conv=fsync status=none && \
             sha256sum </tmp/block",
        ],
    );
    let (size, written_sum) = written.split_once('\n').unwrap();
    assert_eq!(size, "33554432", "the device has the size the claim asked");

    // Another pod, after the first has gone (the device unpublished, its loop device detached),
    // reads the same bytes back.
    delete_pod_and_wait(&client, ns, "writer").await;
    run_pod(&client, ns, pod_with_claim("reader", "disk", true)).await;
    let read_sum = exec(
        ns,
        "reader",
        &[
            "sh",
            "-c",
            "dd if=/dev/xvda bs=1M skip=3 count=1 iflag=direct status=none | sha256sum",
        ],
    );
    assert_eq!(read_sum, written_sum);

    delete_pod_and_wait(&client, ns, "reader").await;
    delete_claim_and_wait(&client, ns, &volume).await;
    let attached = std::process::Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "BACK-FILE"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .expect("running losetup");
    assert!(
        !attached.contains(volume_handle(&volume)),
        "no loop device is left on the deleted volume: {attached}"
    );
    namespace.delete_and_wait().await;
}
