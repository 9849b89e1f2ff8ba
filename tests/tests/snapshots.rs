//! Native volume snapshots against moto's EC2 and the test API server: PersistentVolumes of both
//! forms (CSI and in-tree) over volumes created in moto are snapshotted with the backup, tagged and
//! recorded with their attributes; after the namespace and the PVs are gone, a restore creates new
//! volumes from the snapshots with type, IOPS, throughput and encryption preserved, rewrites the
//! PVs, and the controller manager binds the restored claims to them; deleting the backup deletes
//! its snapshots. Volumes that cannot be snapshotted end the backup PartiallyFailed, naming them.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification, VolumeType};
use ferry_protocol::crd::{
    Backup, DELETE_REQUESTED_ANNOTATION, LocationPhase, Phase, VolumeSnapshotLocation,
};
use ferry_protocol::layout::BackupKeys;
use ferry_protocol::volume::{VolumeMethod, VolumePhase, VolumeRecords};
use ferry_tests::{
    CONVERGENCE_TIMEOUT, CREDENTIALS_SECRET, HasPhase, RunningController, TestEnv, TestNamespace,
    create_object, delete_namespace_and_wait, delete_pv_and_wait, summary, unique_name, wait_bound,
};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume};
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const KMS_KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/ferry-test-key";

/// Creates the VolumeSnapshotLocation `name` on moto's EC2 in `region` and waits for its phase.
async fn snapshot_location(
    ferry: &RunningController,
    name: &str,
    endpoint: &str,
) -> VolumeSnapshotLocation {
    let env = TestEnv::get();
    ferry
        .create(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VolumeSnapshotLocation",
            "metadata": {"name": name},
            "spec": {
                "provider": "aws", "region": env.ec2_region(), "endpoint": endpoint,
                "credential": {"name": CREDENTIALS_SECRET.0, "key": CREDENTIALS_SECRET.1},
            },
        }))
        .await;
    let api: Api<VolumeSnapshotLocation> =
        Api::namespaced(ferry.client.clone(), ferry.namespace.name());
    tokio::time::timeout(
        CONVERGENCE_TIMEOUT,
        await_condition(api, name, |l: Option<&VolumeSnapshotLocation>| {
            l.and_then(|l| l.status.as_ref())
                .and_then(|s| s.phase)
                .is_some()
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("VolumeSnapshotLocation {name} got no phase"))
    .unwrap()
    .unwrap()
}

/// An EBS volume in moto, tagged so the test can find what it made.
async fn ebs_volume(
    zone: &str,
    volume_type: VolumeType,
    iops: Option<i32>,
    throughput: Option<i32>,
    kms_key: Option<&str>,
    tags: &[(&str, &str)],
) -> String {
    let mut tag_spec = TagSpecification::builder().resource_type(ResourceType::Volume);
    for (key, value) in tags {
        tag_spec = tag_spec.tags(Tag::builder().key(*key).value(*value).build());
    }
    let volume = TestEnv::get()
        .ec2_client()
        .create_volume()
        .availability_zone(zone)
        .size(8)
        .volume_type(volume_type)
        .set_iops(iops)
        .set_throughput(throughput)
        .set_encrypted(kms_key.map(|_| true))
        .set_kms_key_id(kms_key.map(str::to_owned))
        .tag_specifications(tag_spec.build())
        .send()
        .await
        .unwrap();
    volume.volume_id().unwrap().to_owned()
}

/// A PersistentVolume over an EBS volume, pre-bound to claim `claim` in `namespace`, and the claim.
async fn bound_claim(client: &Client, namespace: &str, claim: &str, pv: Value) -> String {
    let pv_name = pv["metadata"]["name"].as_str().unwrap().to_owned();
    let storage_class = unique_name("ebs");
    let mut pv = pv;
    pv["apiVersion"] = json!("v1");
    pv["kind"] = json!("PersistentVolume");
    let spec = pv["spec"].as_object_mut().unwrap();
    spec.insert("capacity".into(), json!({"storage": "8Gi"}));
    spec.insert("accessModes".into(), json!(["ReadWriteOnce"]));
    spec.insert("persistentVolumeReclaimPolicy".into(), json!("Retain"));
    spec.insert("storageClassName".into(), json!(storage_class));
    spec.insert(
        "claimRef".into(),
        json!({"namespace": namespace, "name": claim}),
    );
    create_object(client, namespace, pv).await;
    create_object(
        client,
        namespace,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                        "volumeName": pv_name, "resources": {"requests": {"storage": "8Gi"}}}}),
    )
    .await;
    pv_name
}

/// Waits until the claim is Bound and returns the PersistentVolume it is bound to.
async fn bound_volume(client: &Client, namespace: &str, claim: &str) -> PersistentVolume {
    let bound = wait_bound(client, namespace, claim).await;
    let volume = bound.spec.unwrap().volume_name.unwrap();
    Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await
        .unwrap()
}

/// The snapshots in moto that a backup (by uid) tagged, by id, with their tags.
async fn snapshots_of(backup_uid: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let found = TestEnv::get()
        .ec2_client()
        .describe_snapshots()
        .filters(
            Filter::builder()
                .name("tag:ferry.dev/backup-uid")
                .values(backup_uid)
                .build(),
        )
        .send()
        .await
        .unwrap();
    found
        .snapshots()
        .iter()
        .map(|s| {
            let tags = s
                .tags()
                .iter()
                .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
                .collect();
            (s.snapshot_id().unwrap().to_owned(), tags)
        })
        .collect()
}

async fn describe_volume(volume_id: &str) -> aws_sdk_ec2::types::Volume {
    TestEnv::get()
        .ec2_client()
        .describe_volumes()
        .volume_ids(volume_id)
        .send()
        .await
        .unwrap()
        .volumes()[0]
        .clone()
}

async fn volume_records(ferry: &RunningController, backup: &str) -> VolumeRecords {
    let key = BackupKeys::new(None, backup).volumes();
    serde_json::from_value(ferry.read_json(&key).await.unwrap()).unwrap()
}

#[tokio::test]
async fn ebs_volumes_are_snapshotted_and_restored_with_their_attributes() {
    let env = TestEnv::get();
    let ferry = RunningController::start_with_location("snapshots-round-trip").await;
    let client = ferry.client.clone();
    let location = snapshot_location(&ferry, "ebs", env.ec2_endpoint()).await;
    assert_eq!(
        location.status.as_ref().and_then(|s| s.phase),
        Some(LocationPhase::Available),
        "{}",
        summary(&location)
    );

    let app = TestNamespace::create(&client, "db").await;
    let ns = app.name().to_owned();
    let gp3 = ebs_volume(
        "us-east-1a",
        VolumeType::Gp3,
        Some(4000),
        Some(250),
        Some(KMS_KEY),
        &[("team", "shop"), ("Name", "db-data")],
    )
    .await;
    let io2 = ebs_volume(
        "us-east-1b",
        VolumeType::Io2,
        Some(5000),
        None,
        None,
        &[("app", "logs")],
    )
    .await;
    let csi_pv = bound_claim(
        &client,
        &ns,
        "data",
        json!({"metadata": {"name": unique_name("pv-csi")}, "spec": {
            "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": gp3, "fsType": "ext4"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.ebs.csi.aws.com/zone", "operator": "In", "values": ["us-east-1a"]},
            ]}]}},
        }}),
    )
    .await;
    let in_tree_pv = bound_claim(
        &client,
        &ns,
        "logs",
        json!({"metadata": {"name": unique_name("pv-intree"), "labels": {"topology.kubernetes.io/zone": "us-east-1b"}},
               "spec": {"awsElasticBlockStore": {"volumeID": format!("aws://us-east-1b/{io2}"), "fsType": "ext4"}}}),
    )
    .await;
    bound_volume(&client, &ns, "data").await;
    bound_volume(&client, &ns, "logs").await;

    // Backup: both volumes snapshotted, tagged, and recorded with their attributes.
    let backup = ferry
        .backup(
            "db-1",
            json!({"includedNamespaces": [ns], "volumeSnapshotLocations": ["ebs"]}),
        )
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    let status = backup.status.clone().unwrap();
    assert_eq!(status.volume_snapshots_attempted, 2);
    assert_eq!(status.volume_snapshots_completed, 2);
    let snapshots = snapshots_of(&backup.uid().unwrap()).await;
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    for tags in snapshots.values() {
        assert_eq!(tags["ferry.dev/backup"], "db-1");
        assert_eq!(tags["ferry.dev/namespace"], ns);
        assert!(tags.contains_key("ferry.dev/persistent-volume"), "{tags:?}");
    }
    let records = volume_records(&ferry, "db-1").await;
    let csi_record = records
        .volumes
        .iter()
        .find(|r| r.persistent_volume == csi_pv)
        .expect("the CSI volume is recorded");
    assert_eq!(csi_record.method, VolumeMethod::NativeSnapshot);
    assert_eq!(csi_record.phase, VolumePhase::Completed);
    let gp3_snapshot = csi_record.snapshot.clone().unwrap();
    assert_eq!(gp3_snapshot.volume_id, gp3);
    assert_eq!(gp3_snapshot.availability_zone, "us-east-1a");
    assert_eq!(gp3_snapshot.volume_type.as_deref(), Some("gp3"));
    assert_eq!(gp3_snapshot.iops, Some(4000));
    assert_eq!(gp3_snapshot.throughput, Some(250));
    assert!(gp3_snapshot.encrypted);
    assert_eq!(gp3_snapshot.kms_key_id.as_deref(), Some(KMS_KEY));
    assert_eq!(gp3_snapshot.tags["team"], "shop");
    // The volume's own tags travel with its snapshot.
    assert_eq!(snapshots[&gp3_snapshot.snapshot_id]["team"], "shop");
    assert_eq!(
        snapshots[&gp3_snapshot.snapshot_id]["ferry.dev/claim"],
        "data"
    );

    // Disaster: the namespace and its PVs are gone.
    delete_namespace_and_wait(&client, &ns).await;
    delete_pv_and_wait(&client, &csi_pv).await;
    delete_pv_and_wait(&client, &in_tree_pv).await;

    let restore = ferry
        .restore("db-1-back", json!({"backupName": "db-1"}))
        .await;
    assert_eq!(
        restore.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&restore)
    );
    let restored_csi = bound_volume(&client, &ns, "data").await;
    assert_eq!(restored_csi.name_any(), csi_pv);
    let handle = restored_csi
        .spec
        .clone()
        .unwrap()
        .csi
        .unwrap()
        .volume_handle;
    assert_ne!(handle, gp3, "the PV still points at the original volume");
    let new_gp3 = describe_volume(&handle).await;
    assert_eq!(
        new_gp3.snapshot_id(),
        Some(gp3_snapshot.snapshot_id.as_str())
    );
    assert_eq!(new_gp3.availability_zone(), Some("us-east-1a"));
    assert_eq!(new_gp3.volume_type(), Some(&VolumeType::Gp3));
    assert_eq!(new_gp3.iops(), Some(4000));
    assert_eq!(new_gp3.throughput(), Some(250));
    assert_eq!(new_gp3.encrypted(), Some(true));
    assert_eq!(new_gp3.kms_key_id(), Some(KMS_KEY));
    let new_tags: BTreeMap<&str, &str> = new_gp3
        .tags()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(new_tags.get("team"), Some(&"shop"));
    assert_eq!(new_tags.get("ferry.dev/restore"), Some(&"db-1-back"));

    let restored_in_tree = bound_volume(&client, &ns, "logs").await;
    let volume_id = restored_in_tree
        .spec
        .clone()
        .unwrap()
        .aws_elastic_block_store
        .unwrap()
        .volume_id;
    let new_io2_id = volume_id
        .strip_prefix("aws://us-east-1b/")
        .unwrap_or_else(|| panic!("the in-tree form was not kept: {volume_id}"));
    assert_ne!(new_io2_id, io2);
    let new_io2 = describe_volume(new_io2_id).await;
    assert_eq!(new_io2.volume_type(), Some(&VolumeType::Io2));
    assert_eq!(new_io2.iops(), Some(5000));
    assert_eq!(new_io2.encrypted(), Some(false));

    // A copy into another namespace and zone, beside the original: its PVs get new names.
    let copy = unique_name("db-copy");
    let restore = ferry
        .restore(
            "db-1-copy",
            json!({"backupName": "db-1", "namespaceMapping": {ns.clone(): copy},
                   "availabilityZoneMapping": {"us-east-1a": "us-east-1c"}}),
        )
        .await;
    assert_eq!(
        restore.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&restore)
    );
    let copied = bound_volume(&client, &copy, "data").await;
    assert_ne!(copied.name_any(), csi_pv);
    assert_eq!(
        copied.annotations().get("ferry.dev/original-pv-name"),
        Some(&csi_pv)
    );
    let copied_spec = copied.spec.clone().unwrap();
    let copied_volume = describe_volume(&copied_spec.csi.unwrap().volume_handle).await;
    assert_eq!(copied_volume.availability_zone(), Some("us-east-1c"));
    assert_eq!(copied_volume.iops(), Some(4000));
    let zone = serde_json::to_value(copied_spec.node_affinity).unwrap();
    assert_eq!(
        zone.pointer("/required/nodeSelectorTerms/0/matchExpressions/0/values/0"),
        Some(&json!("us-east-1c"))
    );

    // Deleting the backup deletes its snapshots, even with one already gone, and its files.
    TestEnv::get()
        .ec2_client()
        .delete_snapshot()
        .snapshot_id(&gp3_snapshot.snapshot_id)
        .send()
        .await
        .unwrap();
    let backups = ferry.backups();
    backups
        .patch(
            "db-1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {DELETE_REQUESTED_ANNOTATION: "now"}}}),
            ),
        )
        .await
        .unwrap();
    tokio::time::timeout(
        CONVERGENCE_TIMEOUT,
        await_condition(
            backups,
            "db-1",
            conditions::is_deleted(&backup.uid().unwrap()),
        ),
    )
    .await
    .expect("the backup was not deleted")
    .unwrap();
    assert!(snapshots_of(&backup.uid().unwrap()).await.is_empty());
    let left = env
        .s3_client()
        .list_objects_v2()
        .bucket(ferry.store.bucket())
        .prefix(ferry.store.key("backups/db-1/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        left.key_count(),
        Some(0),
        "files of the deleted backup remain"
    );

    for namespace in [ns.as_str(), copy.as_str()] {
        delete_namespace_and_wait(&client, namespace).await;
    }
    for pv in [
        restored_csi.name_any(),
        restored_in_tree.name_any(),
        copied.name_any(),
    ] {
        delete_pv_and_wait(&client, &pv).await;
    }
    drop(app);
    ferry.stop().await;
}

#[tokio::test]
async fn volumes_that_cannot_be_snapshotted_are_named_and_none_is_skipped_silently() {
    let env = TestEnv::get();
    let ferry = RunningController::start_with_location("snapshots-failures").await;
    let client = ferry.client.clone();
    snapshot_location(&ferry, "ebs", env.ec2_endpoint()).await;
    // Nothing listens on port 9 of loopback: the location is Unavailable and says why.
    let unreachable = snapshot_location(&ferry, "nowhere", "http://127.0.0.1:9").await;
    let status = unreachable.status.unwrap();
    assert_eq!(status.phase, Some(LocationPhase::Unavailable));
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("cannot reach EC2"),
        "{status:?}"
    );

    let app = TestNamespace::create(&client, "broken").await;
    let ns = app.name();
    let unknown = bound_claim(
        &client,
        ns,
        "unknown",
        json!({"metadata": {"name": unique_name("pv-unknown")}, "spec": {
            "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-0123456789abcdef0"}}}),
    )
    .await;
    let elsewhere = bound_claim(
        &client,
        ns,
        "elsewhere",
        json!({"metadata": {"name": unique_name("pv-eu")}, "spec": {
            "awsElasticBlockStore": {"volumeID": "aws://eu-west-1a/vol-0fedcba9876543210"}}}),
    )
    .await;
    let local = bound_claim(
        &client,
        ns,
        "local",
        json!({"metadata": {"name": unique_name("pv-local")}, "spec": {"hostPath": {"path": "/tmp/ferry-local"}}}),
    )
    .await;

    let backup: Backup = ferry
        .backup(
            "broken-1",
            json!({"includedNamespaces": [ns], "volumeSnapshotLocations": ["ebs"]}),
        )
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::PartiallyFailed),
        "{}",
        summary(&backup)
    );
    let status = backup.status.clone().unwrap();
    assert_eq!(status.errors, 2, "{}", summary(&backup));
    let reason = status.failure_reason.unwrap_or_default();
    assert!(reason.contains(&unknown), "{reason}");
    assert!(
        reason.contains("does not exist in region us-east-1"),
        "{reason}"
    );
    assert!(reason.contains(&elsewhere), "{reason}");
    assert!(reason.contains("eu-west-1a"), "{reason}");
    assert!(!reason.contains(&local), "{reason}");

    // The hostPath volume is recorded for file-level backup, with a warning saying so.
    let records = volume_records(&ferry, "broken-1").await;
    assert_eq!(records.volumes.len(), 3);
    let local_record = records
        .volumes
        .iter()
        .find(|r| r.persistent_volume == local)
        .unwrap();
    assert_eq!(local_record.method, VolumeMethod::FileSystem);
    assert_eq!(local_record.phase, VolumePhase::Skipped);
    let results = ferry
        .read_json(&BackupKeys::new(None, "broken-1").results())
        .await
        .unwrap();
    let warnings = results["warnings"].to_string();
    assert!(
        warnings.contains(&local) && warnings.contains("hostPath"),
        "{warnings}"
    );

    // A backup naming a snapshot location that does not exist fails validation, naming it.
    let invalid = ferry
        .backup(
            "broken-2",
            json!({"includedNamespaces": [ns], "volumeSnapshotLocations": ["missing"]}),
        )
        .await;
    assert_eq!(invalid.phase(), Some(Phase::FailedValidation));
    let problems = invalid.status.unwrap().validation_errors.join("; ");
    assert!(problems.contains("missing"), "{problems}");

    delete_namespace_and_wait(&client, ns).await;
    for pv in [unknown, elsewhere, local] {
        delete_pv_and_wait(&client, &pv).await;
    }
    drop(app);
    ferry.stop().await;
}

/// Copies a backup's files in the bucket to the keys of another backup.
/// Waits until the controller has deleted Backup `name` (its snapshots and files first).
async fn wait_deleted(backups: &Api<Backup>, name: &str) {
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    while backups.get_opt(name).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backup {name} was not deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

async fn copy_backup_files(ferry: &RunningController, from: &str, to: &str) {
    let (from, to) = (BackupKeys::new(None, from), BackupKeys::new(None, to));
    // Each file is sealed under its own name: copied, it is opened and sealed again under the
    // other backup's, as the controller would have written it.
    for (source, target) in [
        (from.archive(), to.archive()),
        (from.resource_list(), to.resource_list()),
        (from.results(), to.results()),
        (from.logs(), to.logs()),
    ] {
        let body = ferry.read_bytes(&source).await;
        ferry.put_sealed(&target, &body).await;
    }
}

#[tokio::test]
async fn a_controller_restart_neither_strands_nor_orphans_snapshots() {
    let env = TestEnv::get();
    let mut ferry = RunningController::start_with_location("snapshots-restart").await;
    let client = ferry.client.clone();
    snapshot_location(&ferry, "ebs", env.ec2_endpoint()).await;
    let app = TestNamespace::create(&client, "restart").await;
    let ns = app.name().to_owned();
    let volume = ebs_volume(
        "us-east-1a",
        VolumeType::Gp2,
        None,
        None,
        None,
        &[("app", "restart")],
    )
    .await;
    let pv = bound_claim(
        &client,
        &ns,
        "data",
        json!({"metadata": {"name": unique_name("pv-restart")}, "spec": {
            "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": volume}}}),
    )
    .await;
    bound_volume(&client, &ns, "data").await;
    let spec = json!({"includedNamespaces": [ns], "volumeSnapshotLocations": ["ebs"]});
    let first = ferry.backup("first", spec.clone()).await;
    assert_eq!(first.phase(), Some(Phase::Completed), "{}", summary(&first));

    ferry.crash().await;
    let backups = ferry.backups();
    let set_status = |name: &'static str, status: Value| {
        let backups = backups.clone();
        async move {
            backups
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
                .unwrap();
        }
    };
    // A backup that was waiting for two snapshots when the controller stopped: one completed
    // meanwhile, the other vanished.
    ferry
        .create(json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Backup",
                       "metadata": {"name": "waiting"}, "spec": spec}))
        .await;
    copy_backup_files(&ferry, "first", "waiting").await;
    let mut records = volume_records(&ferry, "first").await;
    records.volumes[0].phase = VolumePhase::InProgress;
    let mut vanished = records.volumes[0].clone();
    vanished.persistent_volume = "pv-vanished".to_owned();
    vanished.snapshot.as_mut().unwrap().snapshot_id = "snap-0000000000000dead".to_owned();
    records.volumes.push(vanished);
    // A waiting backup keeps its volume records in the cluster, beside it.
    let state = ferry_controller::volumes::state::config_map_of(
        &backups.get("waiting").await.unwrap(),
        &records,
    )
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ferry.namespace.name())
        .create(&Default::default(), &state)
        .await
        .unwrap();
    set_status(
        "waiting",
        json!({"phase": "WaitingForVolumes", "progress": {"itemsTotal": 5, "itemsDone": 5},
               "volumeSnapshotsAttempted": 2}),
    )
    .await;
    // A backup stopped while listing, after it had started a snapshot it never recorded.
    ferry
        .create(json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Backup",
                       "metadata": {"name": "interrupted"}, "spec": spec}))
        .await;
    let interrupted_uid = backups.get("interrupted").await.unwrap().uid().unwrap();
    set_status("interrupted", json!({"phase": "InProgress"})).await;
    env.ec2_client()
        .create_snapshot()
        .volume_id(&volume)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .tags(
                    Tag::builder()
                        .key("ferry.dev/backup-uid")
                        .value(&interrupted_uid)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(snapshots_of(&interrupted_uid).await.len(), 1);

    ferry.restart();
    let waiting = ferry_tests::finished(&backups, "waiting").await;
    assert_eq!(
        waiting.phase(),
        Some(Phase::PartiallyFailed),
        "{}",
        summary(&waiting)
    );
    let status = waiting.status.clone().unwrap();
    assert_eq!(
        (
            status.volume_snapshots_attempted,
            status.volume_snapshots_completed
        ),
        (2, 1)
    );
    let reason = status.failure_reason.unwrap_or_default();
    assert!(
        reason.contains("pv-vanished") && reason.contains("vanished from region"),
        "{reason}"
    );
    assert!(!reason.contains(&pv), "{reason}");
    // Finished means recorded: the record is in the bucket, so the backup can be synced and restored.
    env.s3_client()
        .head_object()
        .bucket(ferry.store.bucket())
        .key(ferry.store.key(&BackupKeys::new(None, "waiting").record()))
        .send()
        .await
        .expect("the finished backup has its record");
    let recorded = volume_records(&ferry, "waiting").await;
    assert_eq!(
        recorded
            .volumes
            .iter()
            .map(|r| (r.persistent_volume.as_str(), r.phase))
            .collect::<Vec<_>>(),
        [
            (pv.as_str(), VolumePhase::Completed),
            ("pv-vanished", VolumePhase::Failed)
        ],
        "the records in the bucket are the ones the backup followed"
    );

    let interrupted = ferry_tests::finished(&backups, "interrupted").await;
    assert_eq!(
        interrupted.phase(),
        Some(Phase::Failed),
        "{}",
        summary(&interrupted)
    );
    assert!(
        snapshots_of(&interrupted_uid).await.is_empty(),
        "the unrecorded snapshot was left behind"
    );

    delete_namespace_and_wait(&client, &ns).await;
    delete_pv_and_wait(&client, &pv).await;
    drop(app);
    ferry.stop().await;
}

#[tokio::test]
async fn an_expired_backup_takes_its_snapshots_with_it() {
    let env = TestEnv::get();
    let clock = ferry_controller::Clock::manual(jiff::Timestamp::now());
    let ferry = RunningController::start_with_clock("snapshots-expiry", true, clock.clone()).await;
    let client = ferry.client.clone();
    snapshot_location(&ferry, "ebs", env.ec2_endpoint()).await;
    let app = TestNamespace::create(&client, "expiring").await;
    let ns = app.name();
    // moto refuses an empty tag specification.
    let volume = ebs_volume(
        "us-east-1a",
        VolumeType::Gp3,
        None,
        None,
        None,
        &[("app", "expiring")],
    )
    .await;
    bound_claim(
        &client,
        ns,
        "data",
        json!({"metadata": {"name": unique_name("pv-expiring")}, "spec": {
            "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": volume},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.ebs.csi.aws.com/zone", "operator": "In", "values": ["us-east-1a"]},
            ]}]}},
        }}),
    )
    .await;
    bound_volume(&client, ns, "data").await;
    let backup = ferry
        .backup("brief", json!({"includedNamespaces": [ns], "ttl": "1h"}))
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    let uid = backup.uid().unwrap();
    assert_eq!(snapshots_of(&uid).await.len(), 1);

    clock.advance(jiff::SignedDuration::from_hours(2));
    // Prompt a reconcile now rather than at the controller's hourly look.
    let backups = ferry.backups();
    let nudge = json!({"metadata": {"annotations": {"test.ferry.dev/nudge": "1"}}});
    backups
        .patch("brief", &PatchParams::default(), &Patch::Merge(&nudge))
        .await
        .unwrap();
    wait_deleted(&backups, "brief").await;
    assert!(
        snapshots_of(&uid).await.is_empty(),
        "the expired backup's snapshot is still in EC2"
    );
    assert!(ferry.store.objects("backups/brief/").await.is_empty());
    ferry.stop().await;
}

/// A backup's records name a snapshot that is not its own (planted by whoever held the key, or
/// written by a bug): deleting the backup deletes its own snapshot and leaves the other alone.
#[tokio::test]
async fn deleting_a_backup_deletes_only_snapshots_with_its_tag() {
    let env = TestEnv::get();
    let ferry = RunningController::start_with_location("snapshots-foreign").await;
    let client = ferry.client.clone();
    snapshot_location(&ferry, "ebs", env.ec2_endpoint()).await;
    let app = TestNamespace::create(&client, "foreign").await;
    let ns = app.name();
    let volume = ebs_volume(
        "us-east-1a",
        VolumeType::Gp3,
        None,
        None,
        None,
        &[("app", "foreign")],
    )
    .await;
    bound_claim(
        &client,
        ns,
        "data",
        json!({"metadata": {"name": unique_name("pv-foreign")}, "spec": {
            "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": volume},
        }}),
    )
    .await;
    bound_volume(&client, ns, "data").await;
    let backup = ferry
        .backup("owned", json!({"includedNamespaces": [ns]}))
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    let uid = backup.uid().unwrap();
    assert_eq!(snapshots_of(&uid).await.len(), 1);

    // Someone else's snapshot of the same volume, named in the backup's records.
    let foreign = env
        .ec2_client()
        .create_snapshot()
        .volume_id(&volume)
        .description("not Ferry's")
        .send()
        .await
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_owned();
    let mut records = volume_records(&ferry, "owned").await;
    let mut planted = records.volumes[0].clone();
    planted.persistent_volume = "pv-planted".to_owned();
    planted.snapshot.as_mut().unwrap().snapshot_id = foreign.clone();
    records.volumes.push(planted);
    ferry
        .put_sealed(
            &BackupKeys::new(None, "owned").volumes(),
            &ferry_controller::gzip_json(&records).unwrap(),
        )
        .await;

    let backups = ferry.backups();
    let request = json!({"metadata": {"annotations": {"ferry.dev/delete-requested": "test"}}});
    backups
        .patch("owned", &PatchParams::default(), &Patch::Merge(&request))
        .await
        .unwrap();
    wait_deleted(&backups, "owned").await;
    assert!(
        snapshots_of(&uid).await.is_empty(),
        "its own snapshot remains"
    );
    let left = env
        .ec2_client()
        .describe_snapshots()
        .snapshot_ids(&foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(
        left.snapshots().len(),
        1,
        "the snapshot that was not the backup's was deleted"
    );
    app.delete_and_wait().await;
    ferry.stop().await;
}
