//! The controller against the test environment's API server and MinIO: an application's objects
//! are backed up, its namespace deleted (and finalized by the controller manager), and everything
//! restored; into a mapped namespace too; with both existing-resource policies; and the failures a
//! user can cause end with a reason.
//!
//! Each test runs its own controller in-process, watching a namespace of its own, against a bucket
//! prefix of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_protocol::crd::{Backup, Phase, Restore};
use ferry_protocol::layout::BackupKeys;
use ferry_protocol::volume::{
    FileSystemBackup, PodVolumeRef, VolumeMethod, VolumePhase, VolumeRecord, VolumeRecords,
};
use ferry_tests::{
    CONVERGENCE_TIMEOUT, HasPhase, RunningController, TestEnv, TestNamespace, TlsFront,
    create_object as create, finished, summary, unique_name,
};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// An application: a Deployment, a StatefulSet, Services of both kinds, a ConfigMap, a Secret, a
/// ServiceAccount with a Role and RoleBinding, a custom object of its own CRD, and a PVC bound to
/// a PV. Returns the CRD's group and the PV's name.
async fn create_application(client: &Client, namespace: &str) -> (String, String) {
    let group = format!("{}.ferry.test", unique_name("g"));
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            }}}],
        },
    }))
    .unwrap();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    tokio::time::timeout(
        CONVERGENCE_TIMEOUT,
        await_condition(crds, &crd.name_any(), conditions::is_crd_established()),
    )
    .await
    .expect("the test CRD is established")
    .unwrap();

    let labels = json!({"app": "shop"});
    let pod_template = json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]},
    });
    let storage_class = unique_name("manual");
    let pv_name = unique_name("pv");
    let objects = [
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "labels": labels},
               "data": {"greeting": "hello", "colour": "blue"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unlabelled"},
               "data": {"x": "y"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-password", "labels": labels},
               "stringData": {"password": "s3cr3t"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "shop", "labels": labels}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader", "labels": labels},
               "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "shop-reads", "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "shop", "namespace": namespace}]}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": labels},
               "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 80}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-public", "labels": labels},
               "spec": {"type": "NodePort", "selector": labels, "ports": [{"port": 80, "targetPort": 80}]}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": labels},
               "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": pod_template}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "labels": labels},
               "spec": {"serviceName": "web", "replicas": 1, "selector": {"matchLabels": labels}, "template": pod_template}}),
        json!({"apiVersion": format!("{group}/v1"), "kind": "Widget", "metadata": {"name": "gizmo", "labels": labels},
               "spec": {"size": 3, "parts": ["a", "b"]}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name, "labels": labels},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain", "storageClassName": storage_class,
                        "hostPath": {"path": "/tmp/ferry-test-pv"}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "labels": labels},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                        "resources": {"requests": {"storage": "1Gi"}}}}),
    ];
    for object in objects {
        create(client, namespace, object).await;
    }
    wait_bound(client, namespace, "data").await;
    (group, pv_name)
}

async fn wait_bound(client: &Client, namespace: &str, claim: &str) {
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace);
    tokio::time::timeout(
        CONVERGENCE_TIMEOUT,
        await_condition(claims, claim, |claim: Option<&PersistentVolumeClaim>| {
            claim
                .and_then(|c| c.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                == Some("Bound")
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("PVC {namespace}/{claim} did not bind"))
    .unwrap();
}

/// Deletes a namespace by name and waits until the controller manager has finalized it.
async fn delete_namespace(client: &Client, name: &str) {
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let uid = namespaces.get(name).await.unwrap().uid().unwrap();
    namespaces
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(
        CONVERGENCE_TIMEOUT,
        await_condition(namespaces, name, conditions::is_deleted(&uid)),
    )
    .await
    .unwrap_or_else(|_| panic!("namespace {name} was not finalized"))
    .unwrap();
}

async fn get<K>(client: &Client, namespace: &str, name: &str) -> K
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|error| panic!("{namespace}/{name} was not restored: {error}"))
}

fn widgets(client: &Client, namespace: &str, group: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk(group, "v1", "Widget"),
        "widgets",
    );
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Every object of the application, as the original had it (after what a restore must strip).
async fn assert_application_restored(
    client: &Client,
    original: &Snapshot,
    namespace: &str,
    group: &str,
    restore_name: &str,
) {
    let settings: ConfigMap = get(client, namespace, "settings").await;
    assert_eq!(settings.data, original.settings.data);
    assert_eq!(
        settings
            .labels()
            .get("ferry.dev/restore-name")
            .map(String::as_str),
        Some(restore_name),
        "restored objects carry the restore's name"
    );
    assert_ne!(settings.uid(), original.settings.uid());
    let secret: Secret = get(client, namespace, "db-password").await;
    assert_eq!(secret.data, original.secret.data);
    let _: ServiceAccount = get(client, namespace, "shop").await;
    let role: Role = get(client, namespace, "reader").await;
    assert_eq!(role.rules, original.role.rules);
    let binding: RoleBinding = get(client, namespace, "shop-reads").await;
    assert_eq!(binding.role_ref, original.binding.role_ref);
    let deployment: Deployment = get(client, namespace, "web").await;
    assert_eq!(
        deployment.spec.as_ref().unwrap().template,
        original.deployment.spec.as_ref().unwrap().template
    );
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    let statefulset: StatefulSet = get(client, namespace, "db").await;
    assert_eq!(
        statefulset.spec.as_ref().unwrap().service_name,
        original.statefulset.spec.as_ref().unwrap().service_name
    );
    let service: Service = get(client, namespace, "web").await;
    let ports = |s: &Service| {
        s.spec
            .as_ref()
            .unwrap()
            .ports
            .clone()
            .unwrap()
            .into_iter()
            .map(|p| (p.port, p.target_port))
            .collect::<Vec<_>>()
    };
    assert_eq!(ports(&service), ports(&original.service));
    let public: Service = get(client, namespace, "web-public").await;
    assert_eq!(
        public.spec.as_ref().unwrap().type_.as_deref(),
        Some("NodePort")
    );
    assert!(
        public.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .node_port
            .is_some(),
        "the API server assigned a node port again"
    );
    let widget = widgets(client, namespace, group)
        .get("gizmo")
        .await
        .expect("the custom object was restored");
    assert_eq!(widget.data["spec"], original.widget.data["spec"]);
}

/// What the original objects looked like, read before the backup.
struct Snapshot {
    settings: ConfigMap,
    secret: Secret,
    role: Role,
    binding: RoleBinding,
    deployment: Deployment,
    statefulset: StatefulSet,
    service: Service,
    widget: DynamicObject,
}

async fn read_application(client: &Client, namespace: &str, group: &str) -> Snapshot {
    Snapshot {
        settings: get(client, namespace, "settings").await,
        secret: get(client, namespace, "db-password").await,
        role: get(client, namespace, "reader").await,
        binding: get(client, namespace, "shop-reads").await,
        deployment: get(client, namespace, "web").await,
        statefulset: get(client, namespace, "db").await,
        service: get(client, namespace, "web").await,
        widget: widgets(client, namespace, group)
            .get("gizmo")
            .await
            .unwrap(),
    }
}

#[tokio::test]
async fn an_application_is_backed_up_deleted_and_restored() {
    let ferry = RunningController::start_with_location("controller-round-trip").await;
    let client = ferry.client.clone();
    let app = TestNamespace::create(&client, "shop").await;
    let (group, pv_name) = create_application(&client, app.name()).await;
    let original = read_application(&client, app.name(), &group).await;

    let backup = ferry
        .backup("shop-1", json!({"includedNamespaces": [app.name()]}))
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    let status = backup.status.clone().unwrap();
    let progress = status.progress.unwrap();
    assert!(progress.items_total >= 13, "{progress:?}");
    assert_eq!(progress.items_done, progress.items_total);
    // The archive and what lies beside it are in the bucket.
    let keys = BackupKeys::new(Some(ferry.store.prefix()), "shop-1");
    let s3 = TestEnv::get().s3_client();
    for key in [
        keys.archive(),
        keys.record(),
        keys.resource_list(),
        keys.results(),
    ] {
        s3.head_object()
            .bucket(ferry.store.bucket())
            .key(&key)
            .send()
            .await
            .unwrap_or_else(|error| panic!("{key} is not in the bucket: {error}"));
    }

    // Disaster: the namespace, its PV and the CRD are gone.
    let app_name = app.name().to_owned();
    delete_namespace(&client, &app_name).await;
    Api::<PersistentVolume>::all(client.clone())
        .delete(&pv_name, &DeleteParams::default())
        .await
        .unwrap();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd_name = format!("widgets.{group}");
    let crd_uid = crds.get(&crd_name).await.unwrap().uid().unwrap();
    crds.delete(&crd_name, &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(
        CONVERGENCE_TIMEOUT,
        await_condition(crds.clone(), &crd_name, conditions::is_deleted(&crd_uid)),
    )
    .await
    .unwrap()
    .unwrap();
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let pv_uid = pvs.get_opt(&pv_name).await.unwrap().and_then(|pv| pv.uid());
    if let Some(uid) = pv_uid {
        tokio::time::timeout(
            CONVERGENCE_TIMEOUT,
            await_condition(pvs.clone(), &pv_name, conditions::is_deleted(&uid)),
        )
        .await
        .unwrap()
        .unwrap();
    }

    let restore = ferry
        .restore("shop-1-back", json!({"backupName": "shop-1"}))
        .await;
    assert_eq!(
        restore.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&restore)
    );
    assert_eq!(restore.status.as_ref().unwrap().errors, 0);
    assert_application_restored(&client, &original, &app_name, &group, "shop-1-back").await;
    // The PV came back and the restored claim binds to it again.
    wait_bound(&client, &app_name, "data").await;
    let claim: PersistentVolumeClaim = get(&client, &app_name, "data").await;
    assert_eq!(
        claim.spec.unwrap().volume_name.as_deref(),
        Some(pv_name.as_str())
    );

    // The same backup, into another namespace, without the volume objects (the PV is in use).
    let copy = unique_name("shop-copy");
    let mapped = ferry
        .restore(
            "shop-1-copy",
            json!({
                "backupName": "shop-1",
                "namespaceMapping": {app_name.clone(): copy.clone()},
                "excludedResources": ["persistentvolumes", "persistentvolumeclaims"],
            }),
        )
        .await;
    assert_eq!(
        mapped.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&mapped)
    );
    assert_application_restored(&client, &original, &copy, &group, "shop-1-copy").await;
    let binding: RoleBinding = get(&client, &copy, "shop-reads").await;
    assert_eq!(
        binding.subjects.unwrap()[0].namespace.as_deref(),
        Some(copy.as_str()),
        "a subject in the mapped namespace follows the mapping"
    );

    delete_namespace(&client, &copy).await;
    delete_namespace(&client, &app_name).await;
    let _ = pvs.delete(&pv_name, &DeleteParams::default()).await;
    let _ = crds.delete(&crd_name, &DeleteParams::default()).await;
    ferry.stop().await;
}

#[tokio::test]
async fn filters_selectors_and_existing_resource_policies() {
    let ferry = RunningController::start_with_location("controller-policies").await;
    let client = ferry.client.clone();
    let app = TestNamespace::create(&client, "shop").await;
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), app.name());
    for (name, tier) in [("front", "web"), ("back", "db")] {
        create(
            &client,
            app.name(),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": name, "labels": {"tier": tier}}, "data": {"v": "1"}}),
        )
        .await;
    }
    create(
        &client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "key", "labels": {"tier": "web"}},
               "stringData": {"k": "v"}}),
    )
    .await;

    // Only web-tier ConfigMaps.
    let backup = ferry
        .backup(
            "web-configmaps",
            json!({
                "includedNamespaces": [app.name()],
                "includedResources": ["configmaps"],
                "labelSelector": {"matchLabels": {"tier": "web"}},
            }),
        )
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    // Only `front`: not `back` (its label), nor the Secret or the Namespace (not included
    // resources). A restore creates the namespace if it is missing.
    assert_eq!(backup.status.unwrap().progress.unwrap().items_total, 1);

    // `none`: an existing object that differs is left alone, with a warning.
    configmaps
        .patch(
            "front",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": "changed"}})),
        )
        .await
        .unwrap();
    let kept = ferry
        .restore("keep", json!({"backupName": "web-configmaps"}))
        .await;
    assert_eq!(kept.phase(), Some(Phase::Completed), "{}", summary(&kept));
    assert!(
        kept.status.as_ref().unwrap().warnings >= 1,
        "{}",
        summary(&kept)
    );
    let front = configmaps.get("front").await.unwrap();
    assert_eq!(front.data.unwrap()["v"], "changed");

    // `update`: it is patched back to the backup's version.
    let updated = ferry
        .restore(
            "update",
            json!({"backupName": "web-configmaps", "existingResourcePolicy": "update"}),
        )
        .await;
    assert_eq!(
        updated.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&updated)
    );
    let front = configmaps.get("front").await.unwrap();
    assert_eq!(front.data.unwrap()["v"], "1");

    // The db-tier ConfigMap and the Secret were never in the backup.
    configmaps
        .delete("back", &DeleteParams::default())
        .await
        .unwrap();
    Api::<Secret>::namespaced(client.clone(), app.name())
        .delete("key", &DeleteParams::default())
        .await
        .unwrap();
    let again = ferry
        .restore("again", json!({"backupName": "web-configmaps"}))
        .await;
    assert_eq!(again.phase(), Some(Phase::Completed), "{}", summary(&again));
    assert!(configmaps.get_opt("back").await.unwrap().is_none());
    assert!(
        Api::<Secret>::namespaced(client.clone(), app.name())
            .get_opt("key")
            .await
            .unwrap()
            .is_none()
    );

    app.delete_and_wait().await;
    ferry.stop().await;
}

#[tokio::test]
async fn user_mistakes_end_with_reasons() {
    let ferry = RunningController::start_with_location("controller-mistakes").await;

    let invalid = ferry
        .backup(
            "invalid",
            json!({
                "storageLocation": "nowhere",
                "ttl": "soon",
                "labelSelector": {"matchExpressions": [{"key": "a", "operator": "Sideways", "values": ["b"]}]},
            }),
        )
        .await;
    assert_eq!(invalid.phase(), Some(Phase::FailedValidation));
    let problems = invalid.status.unwrap().validation_errors;
    for expected in ["nowhere", "soon", "Sideways"] {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "no validation error names {expected:?}: {problems:?}"
        );
    }

    let missing = ferry
        .restore("from-nothing", json!({"backupName": "no-such-backup"}))
        .await;
    assert!(
        matches!(
            missing.phase(),
            Some(Phase::FailedValidation | Phase::Failed)
        ),
        "{}",
        summary(&missing)
    );
    let status = missing.status.unwrap();
    let said = format!("{:?} {:?}", status.validation_errors, status.failure_reason);
    assert!(said.contains("no-such-backup"), "{said}");
    ferry.stop().await;
}

/// A Backup resource removed from the cluster (or a new cluster pointed at the bucket) comes back
/// through the location's sync, marked as synced, and restores.
#[tokio::test]
async fn backups_in_the_bucket_are_synced_into_the_cluster() {
    let ferry = RunningController::start_with_location("controller-sync").await;
    let client = ferry.client.clone();
    let app = TestNamespace::create(&client, "sync").await;
    create(
        &client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept"}, "data": {"a": "b"}}),
    )
    .await;
    let backup = ferry
        .backup("to-sync", json!({"includedNamespaces": [app.name()]}))
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );

    let original_uid = backup.uid();
    ferry
        .backups()
        .delete("to-sync", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    let synced = loop {
        if let Some(backup) = ferry.backups().get_opt("to-sync").await.unwrap()
            && backup.uid() != original_uid
        {
            break backup;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backup was not synced back from the bucket"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        synced
            .annotations()
            .contains_key(ferry_controller::location::SYNCED_FROM_ANNOTATION)
    );
    let synced = finished(&ferry.backups(), "to-sync").await;
    assert_eq!(synced.phase(), Some(Phase::Completed));

    let app_name = app.name().to_owned();
    app.delete_and_wait().await;
    let restore = ferry
        .restore("from-synced", json!({"backupName": "to-sync"}))
        .await;
    assert_eq!(
        restore.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&restore)
    );
    let kept: ConfigMap = get(&client, &app_name, "kept").await;
    assert_eq!(
        kept.data,
        Some(BTreeMap::from([("a".to_owned(), "b".to_owned())]))
    );
    delete_namespace(&client, &app_name).await;
    ferry.stop().await;
}

/// Builds a tar.gz whose entries are named exactly as given: `tar`'s own path setters refuse
/// `..`, and a crafted archive is the point.
fn crafted_archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        if path.len() > 100 {
            // Too long for an old header's name; a GNU long name carries it (no `..` in those).
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, path, *data).unwrap();
            continue;
        }
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    ferry_controller::gzip(&builder.into_inner().unwrap())
        .unwrap()
        .to_vec()
}

/// Archives in the bucket that are crafted (an entry escaping with `..`, an absolute name) or
/// not archives at all: the restore fails naming the problem, and creates nothing.
#[tokio::test]
async fn crafted_and_malformed_archives_fail_before_anything_is_restored() {
    let ferry = RunningController::start_with_location("controller-crafted").await;
    let client = ferry.client.clone();
    let app = TestNamespace::create(&client, "crafted").await;
    create(
        &client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "real"}, "data": {"a": "b"}}),
    )
    .await;
    let good = ferry
        .backup("good", json!({"includedNamespaces": [app.name()]}))
        .await;
    assert_eq!(good.phase(), Some(Phase::Completed), "{}", summary(&good));

    let good_keys = BackupKeys::new(None, "good");
    let record = ferry.read_bytes(&good_keys.record()).await;
    let planted = serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "planted", "namespace": app.name()}, "data": {"x": "y"},
    }))
    .unwrap();
    let version = ferry_protocol::layout::ARCHIVE_FORMAT_VERSION.as_bytes();
    let ok_entry = format!(
        "resources/configmaps/namespaces/{}/planted.json",
        app.name()
    );
    let archives: [(&str, Vec<u8>, &str); 3] = [
        (
            "dotdot",
            crafted_archive(&[
                ("metadata/version", version),
                (&ok_entry, &planted),
                (
                    "resources/configmaps/namespaces/../../../etc/evil.json",
                    &planted,
                ),
            ]),
            "..",
        ),
        (
            "absolute",
            crafted_archive(&[
                ("metadata/version", version),
                (&ok_entry, &planted),
                ("/etc/evil.json", &planted),
            ]),
            "/etc/evil.json",
        ),
        ("garbage", b"this is not a tar.gz".to_vec(), "malformed"),
    ];
    // Sealed with the installation's key: what only a holder of the key could plant. The
    // archive's own checks still refuse them.
    for (name, archive, _) in &archives {
        let keys = BackupKeys::new(None, name);
        let mut record: Backup = serde_json::from_slice(&record).unwrap();
        record.metadata.name = Some((*name).to_owned());
        ferry
            .put_sealed(&keys.record(), &serde_json::to_vec(&record).unwrap())
            .await;
        ferry.put_sealed(&keys.archive(), archive).await;
    }
    // The location's sync brings them in as Backups.
    for (name, _, _) in &archives {
        wait_synced(&ferry.backups(), name).await;
    }

    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), app.name());
    for (name, _, expected) in &archives {
        let restore = ferry
            .restore(&format!("from-{name}"), json!({"backupName": name}))
            .await;
        assert_eq!(
            restore.phase(),
            Some(Phase::Failed),
            "{}",
            summary(&restore)
        );
        let reason = restore.status.unwrap().failure_reason.unwrap_or_default();
        assert!(
            reason.contains(expected),
            "the failure of {name} does not name {expected:?}: {reason}"
        );
        assert!(
            configmaps.get_opt("planted").await.unwrap().is_none(),
            "restoring {name} created an object before failing"
        );
    }
    app.delete_and_wait().await;
    ferry.stop().await;
}

/// Plants an archive under backup `name`, beside a copy of `record` (a real backup's record, so
/// that the location's sync brings it in as a Backup), both sealed with the installation's key,
/// and waits for the sync.
async fn plant_backup(ferry: &RunningController, record: &[u8], name: &str, archive: Vec<u8>) {
    let keys = BackupKeys::new(None, name);
    ferry.put_sealed(&keys.record(), record).await;
    ferry.put_sealed(&keys.archive(), &archive).await;
    wait_synced(&ferry.backups(), name).await;
}

/// Waits until the location's sync has brought backup `name` into the cluster of `backups`.
async fn wait_synced(backups: &Api<Backup>, name: &str) {
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    while backups.get_opt(name).await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} was not synced"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Someone who holds the key (or a bucket writer, were the archives not sealed) plants objects
/// that would take the cluster: a ClusterRoleBinding to `admin`
/// stored under an included namespace's path with no namespace in its body (the
/// filters read the path, the API server the body), a ConfigMap whose body names another
/// namespace, and a binding to cluster-admin at its proper place. None is created: the first two
/// fail for disagreeing with their path, the last is refused as protected unless the Restore
/// names clusterrolebindings itself.
#[tokio::test]
async fn a_restore_creates_only_what_its_archive_paths_and_filters_allow() {
    let ferry = RunningController::start_with_location("controller-lane").await;
    let client = ferry.client.clone();
    let app = TestNamespace::create(&client, "lane").await;
    let victim = TestNamespace::create(&client, "lane-victim").await;
    let good = ferry
        .backup("lane", json!({"includedNamespaces": [app.name()]}))
        .await;
    assert_eq!(good.phase(), Some(Phase::Completed), "{}", summary(&good));
    let record = ferry
        .read_bytes(&BackupKeys::new(None, "lane").record())
        .await;

    let binding = |name: &str, role: &str| {
        serde_json::to_vec(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": app.name()}],
        }))
        .unwrap()
    };
    let smuggled = format!("ferry-smuggled-{}", app.name());
    let admin = format!("ferry-admin-{}", app.name());
    let elsewhere = serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "elsewhere", "namespace": victim.name()}, "data": {"x": "y"},
    }))
    .unwrap();
    let version = ferry_protocol::layout::ARCHIVE_FORMAT_VERSION.as_bytes();
    // `admin` over every namespace: not a protected role, so only its path gives it away.
    let smuggled_body = binding(&smuggled, "admin");
    let admin_body = binding(&admin, "cluster-admin");
    plant_backup(
        &ferry,
        &record,
        "planted-paths",
        crafted_archive(&[
            ("metadata/version", version),
            (
                &format!(
                    "resources/clusterrolebindings.rbac.authorization.k8s.io/namespaces/{}/{smuggled}.json",
                    app.name()
                ),
                &smuggled_body,
            ),
            (
                &format!("resources/configmaps/namespaces/{}/elsewhere.json", app.name()),
                &elsewhere,
            ),
        ]),
    )
    .await;
    plant_backup(
        &ferry,
        &record,
        "planted-admin",
        crafted_archive(&[
            ("metadata/version", version),
            (
                &format!(
                    "resources/clusterrolebindings.rbac.authorization.k8s.io/cluster/{admin}.json"
                ),
                &admin_body,
            ),
        ]),
    )
    .await;

    let bindings = Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(client.clone());
    let results = |value: Value| -> Vec<(String, String, String)> {
        value
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let field = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
                (field("name"), field("outcome"), field("reason"))
            })
            .collect()
    };

    let restore = ferry
        .restore(
            "from-planted-paths",
            json!({"backupName": "planted-paths", "includedNamespaces": [app.name()], "includeClusterResources": false}),
        )
        .await;
    assert_eq!(
        restore.phase(),
        Some(Phase::PartiallyFailed),
        "{}",
        summary(&restore)
    );
    assert!(
        bindings.get_opt(&smuggled).await.unwrap().is_none(),
        "the smuggled binding was created"
    );
    let victim_maps = Api::<ConfigMap>::namespaced(client.clone(), victim.name());
    assert!(
        victim_maps.get_opt("elsewhere").await.unwrap().is_none(),
        "a ConfigMap landed outside its path's namespace"
    );
    let outcomes = results(ferry.restore_results("from-planted-paths").await);
    for name in [smuggled.as_str(), "elsewhere"] {
        let (_, outcome, reason) = outcomes
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no result for {name}: {outcomes:?}"));
        assert_eq!(outcome, "failed", "{name}: {reason}");
        assert!(reason.contains("archive path"), "{name}: {reason}");
    }

    let restore = ferry
        .restore("from-planted-admin", json!({"backupName": "planted-admin"}))
        .await;
    assert!(
        bindings.get_opt(&admin).await.unwrap().is_none(),
        "a binding to cluster-admin was restored by default"
    );
    let outcomes = results(ferry.restore_results("from-planted-admin").await);
    let (_, outcome, reason) = outcomes
        .iter()
        .find(|(n, _, _)| *n == admin)
        .unwrap_or_else(|| {
            panic!(
                "no result for {admin}: {outcomes:?} ({})",
                summary(&restore)
            )
        });
    assert_eq!(outcome, "skipped", "{reason}");
    assert!(
        reason.contains("cluster-admin") && reason.contains("includedResources"),
        "{reason}"
    );

    // Named by the Restore, it is the user's choice.
    let restore = ferry
        .restore(
            "from-planted-admin-named",
            json!({"backupName": "planted-admin", "includedResources": ["clusterrolebindings.rbac.authorization.k8s.io"]}),
        )
        .await;
    assert_eq!(
        restore.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&restore)
    );
    assert!(bindings.get_opt(&admin).await.unwrap().is_some());
    bindings
        .delete(&admin, &DeleteParams::default())
        .await
        .unwrap();

    victim.delete_and_wait().await;
    app.delete_and_wait().await;
    ferry.stop().await;
}

/// A backup of Ferry's own namespace and of an application never takes Ferry's keys (the agent
/// API's CA, the TLS Secrets of older installations, the repositories' password, the credentials
/// its location names) nor service-account tokens: not in the archive's bytes, nor in its
/// resource list.
#[tokio::test]
async fn ferrys_own_secrets_and_service_account_tokens_are_never_backed_up() {
    let ferry = RunningController::start_with_location("controller-own-secrets").await;
    let client = ferry.client.clone();
    let app = TestNamespace::create(&client, "own-secrets").await;
    let ferry_namespace = ferry.namespace.name().to_owned();
    let secret = |name: &str, type_: &str, value: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": type_,
               "stringData": {"value": value}})
    };
    create(
        &client,
        &ferry_namespace,
        secret("ferry-controller-tls", "Opaque", "controller-key-bytes"),
    )
    .await;
    let agent_ca = ferry_tests::agent_ca(&ferry).await;
    create(
        &client,
        app.name(),
        secret("app-config", "Opaque", "app-value"),
    )
    .await;
    create(
        &client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "legacy-token", "annotations": {"kubernetes.io/service-account.name": "default"}},
               "type": "kubernetes.io/service-account-token"}),
    )
    .await;

    let backup = ferry
        .backup(
            "own-secrets",
            json!({"includedNamespaces": [ferry_namespace, app.name()]}),
        )
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    // The installation's key, which the controller made when the location was first used.
    let password =
        String::from_utf8(ferry_tests::installation_key(&client, &ferry_namespace).await).unwrap();
    let keys = BackupKeys::new(None, "own-secrets");
    let listed = ferry.read_json(&keys.resource_list()).await.unwrap();
    let secrets: Vec<&str> = listed["secrets"]
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        secrets.contains(&format!("{}/app-config", app.name()).as_str()),
        "the application's Secret is missing: {secrets:?}"
    );
    for left_out in [
        format!("{ferry_namespace}/ferry-repository-password"),
        format!("{ferry_namespace}/ferry-controller-tls"),
        format!("{ferry_namespace}/{}", ferry_protocol::pki::AGENT_CA_SECRET),
        format!("{ferry_namespace}/{}", ferry_tests::CREDENTIALS_SECRET.0),
        format!("{}/legacy-token", app.name()),
    ] {
        assert!(
            !secrets.contains(&left_out.as_str()),
            "{left_out} was backed up: {secrets:?}"
        );
    }
    let in_secret_data = |value: &str| {
        serde_json::to_value(k8s_openapi::ByteString(value.into()))
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    // In the bucket, the archive is sealed: not even the application's Secret shows.
    let stored = ferry.read_raw(&keys.archive()).await;
    let stored_text = String::from_utf8_lossy(&stored);
    assert!(
        !stored_text.contains(&in_secret_data("app-value")),
        "the application's Secret is in the bucket in clear"
    );
    let archive = ferry_controller::gunzip(&ferry.read_bytes(&keys.archive()).await).unwrap();
    let text = String::from_utf8_lossy(&archive);
    assert!(
        text.contains(&in_secret_data("app-value")),
        "the opened archive lacks the application's Secret"
    );
    let ca_key = agent_ca.key_pem();
    for secret_bytes in [password.as_str(), "controller-key-bytes", ca_key.as_str()] {
        let encoded = in_secret_data(secret_bytes);
        assert!(
            !text.contains(secret_bytes) && !text.contains(&encoded),
            "{secret_bytes} is in the archive"
        );
    }
    app.delete_and_wait().await;
    ferry.stop().await;
}

/// Whoever may write to the bucket but lacks the installation's key plants or swaps files: a
/// record written in clear is never synced, a record sealed for another backup neither, a
/// backup whose archive was swapped for another backup's fails to restore, naming the file,
/// before anything is created.
#[tokio::test]
async fn files_planted_or_swapped_in_the_bucket_are_refused() {
    let ferry = RunningController::start_with_location("controller-sealed").await;
    let client = ferry.client.clone();
    let app = TestNamespace::create(&client, "sealed").await;
    create(
        &client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "first"}, "data": {"a": "b"}}),
    )
    .await;
    let spec = json!({"includedNamespaces": [app.name()]});
    for name in ["sealed-a", "sealed-b"] {
        let backup = ferry.backup(name, spec.clone()).await;
        assert_eq!(
            backup.phase(),
            Some(Phase::Completed),
            "{}",
            summary(&backup)
        );
    }
    let keys = |name| BackupKeys::new(None, name);
    let record = ferry.read_bytes(&keys("sealed-a").record()).await;

    // A record in clear, and sealed-a's sealed record under another backup's name.
    ferry
        .put_raw(&keys("planted-clear").record(), record.clone())
        .await;
    let sealed_record = ferry.read_raw(&keys("sealed-a").record()).await;
    ferry
        .put_raw(&keys("planted-moved").record(), sealed_record)
        .await;
    // The sync runs every 2 s; three rounds bring in whatever they accept.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for name in ["planted-clear", "planted-moved"] {
        assert!(
            ferry.backups().get_opt(name).await.unwrap().is_none(),
            "{name} was synced"
        );
    }
    let location = ferry
        .locations()
        .get("default")
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert_eq!(
        location.phase,
        Some(ferry_protocol::crd::LocationPhase::Available),
        "{location:?}"
    );

    // sealed-b's archive swapped for sealed-a's (which holds a ConfigMap sealed-b never had).
    create(
        &client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "second"}, "data": {"c": "d"}}),
    )
    .await;
    let third = ferry.backup("sealed-c", spec).await;
    assert_eq!(third.phase(), Some(Phase::Completed), "{}", summary(&third));
    let archive = ferry.read_raw(&keys("sealed-c").archive()).await;
    ferry.put_raw(&keys("sealed-b").archive(), archive).await;
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), app.name());
    for name in ["first", "second"] {
        configmaps
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    let restore = ferry
        .restore("from-swapped", json!({"backupName": "sealed-b"}))
        .await;
    assert_eq!(
        restore.phase(),
        Some(Phase::Failed),
        "{}",
        summary(&restore)
    );
    let reason = restore.status.unwrap().failure_reason.unwrap_or_default();
    assert!(
        reason.contains("backups/sealed-b/sealed-b.tar.gz") && reason.contains("refused"),
        "{reason}"
    );
    for name in ["first", "second"] {
        assert!(
            configmaps.get_opt(name).await.unwrap().is_none(),
            "{name} was restored from a swapped archive"
        );
    }

    app.delete_and_wait().await;
    ferry.stop().await;
}

/// A running backup's volume records live in the cluster, in a ConfigMap the backup owns. What the
/// bucket holds under their name is never read back while the backup runs, not even a file sealed
/// with this installation's key (as an earlier version of the same records, rolled back, would
/// be): it could aim a node agent at any pod. The bucket receives the records the backup followed
/// once every volume has ended, and the ConfigMap goes with the backup.
#[tokio::test]
async fn a_running_backup_follows_its_volume_records_in_the_cluster_not_the_bucket() {
    let mut ferry = RunningController::start_with_location("controller-volume-state").await;
    let client = ferry.client.clone();
    let app = TestNamespace::create(&client, "volume-state").await;
    let keys = BackupKeys::new(None, "waiting");
    // The first backup makes the installation's key.
    let first = ferry
        .backup("first", json!({"includedNamespaces": [app.name()]}))
        .await;
    assert_eq!(first.phase(), Some(Phase::Completed), "{}", summary(&first));

    // A backup waiting for its volumes when the controller stopped: one pod volume, done.
    ferry.crash().await;
    ferry
        .create(json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Backup",
                       "metadata": {"name": "waiting"}, "spec": {"includedNamespaces": [app.name()]}}))
        .await;
    let backup = ferry.backups().get("waiting").await.unwrap();
    let pod_volume = |namespace: &str, pod: &str, phase: VolumePhase, attempts: u32| VolumeRecord {
        persistent_volume: format!("pv-{pod}"),
        claim: None,
        method: VolumeMethod::FileSystem,
        phase,
        message: None,
        snapshot: None,
        csi_snapshot: None,
        pod_volume: Some(PodVolumeRef {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            volume: "data".to_owned(),
            node: "node-a".to_owned(),
        }),
        file_system: Some(FileSystemBackup {
            repository: format!("s3://bucket/repositories/{namespace}"),
            task_id: format!("task-{pod}"),
            attempts,
            ..FileSystemBackup::default()
        }),
    };
    let followed = VolumeRecords::new(vec![pod_volume(
        app.name(),
        "db-0",
        VolumePhase::Completed,
        1,
    )]);
    let states = Api::<ConfigMap>::namespaced(client.clone(), ferry.namespace.name());
    let state = ferry_controller::volumes::state::config_map_of(&backup, &followed).unwrap();
    states.create(&PostParams::default(), &state).await.unwrap();
    // Its results and log so far, and under its records' name a sealed file that aims an agent
    // at a pod of kube-system.
    ferry
        .put_sealed(
            &keys.results(),
            &ferry_controller::gzip_json(&ferry_controller::backup::Results::default()).unwrap(),
        )
        .await;
    ferry
        .put_sealed(
            &keys.logs(),
            &ferry_controller::gzip(b"waiting for 1 volumes").unwrap(),
        )
        .await;
    let planted = VolumeRecords::new(vec![pod_volume(
        "kube-system",
        "victim",
        VolumePhase::InProgress,
        3,
    )]);
    ferry
        .put_sealed(
            &keys.volumes(),
            &ferry_controller::gzip_json(&planted).unwrap(),
        )
        .await;
    ferry
        .backups()
        .patch_status(
            "waiting",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "WaitingForVolumes",
                                            "progress": {"itemsTotal": 1, "itemsDone": 1}}})),
        )
        .await
        .unwrap();

    ferry.restart();
    let waiting = finished(&ferry.backups(), "waiting").await;
    assert_eq!(
        waiting.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&waiting)
    );
    let recorded: VolumeRecords =
        serde_json::from_value(ferry.read_json(&keys.volumes()).await.unwrap()).unwrap();
    assert_eq!(
        recorded, followed,
        "the bucket holds the records the backup followed"
    );

    // The state goes with the backup: the cluster's garbage collector follows its owner.
    let uid = backup.uid().unwrap();
    let state_name = ferry_controller::volumes::state::config_map_name(&uid);
    let state_uid = states
        .get_opt(&state_name)
        .await
        .unwrap()
        .and_then(|state| state.uid())
        .expect("the backup's volume state is in the cluster");
    ferry
        .backups()
        .delete("waiting", &DeleteParams::default())
        .await
        .unwrap();
    let gone = tokio::time::timeout(
        CONVERGENCE_TIMEOUT,
        await_condition(
            states.clone(),
            &state_name,
            conditions::is_deleted(&state_uid),
        ),
    )
    .await;
    assert!(gone.is_ok(), "ConfigMap {state_name} outlived its backup");
    app.delete_and_wait().await;
    ferry.stop().await;
}

/// Recovery into a new cluster: a second, empty API server pointed at the same bucket sees the
/// first cluster's backup through its location's sync, and restores the application there.
#[tokio::test]
async fn a_new_cluster_recovers_from_the_bucket() {
    let env = TestEnv::get();
    let ferry = RunningController::start_with_location("controller-recovery").await;
    let client = ferry.client.clone();
    let app = TestNamespace::create(&client, "recover").await;
    for object in [
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"colour": "green"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"}, "stringData": {"t": "42"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}),
    ] {
        create(&client, app.name(), object).await;
    }
    let backup = ferry
        .backup(
            "before-disaster",
            json!({"includedNamespaces": [app.name()]}),
        )
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );

    // The new cluster: Ferry installed, a location on the same bucket and prefix, nothing else.
    let recovery_client = env.recovery_kube_client().await;
    let recovery =
        RunningController::start_on(recovery_client.clone(), "controller-recovery-2", false).await;
    create(
        &recovery_client,
        recovery.namespace.name(),
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "BackupStorageLocation",
            "metadata": {"name": "default"},
            "spec": {
                "provider": "aws",
                "objectStorage": {"bucket": ferry.store.bucket(), "prefix": ferry.store.prefix()},
                "region": env.s3_region(), "endpoint": env.s3_endpoint(), "forcePathStyle": true,
                "credential": {"name": ferry_tests::CREDENTIALS_SECRET.0, "key": ferry_tests::CREDENTIALS_SECRET.1},
                "default": true, "validationFrequency": "2s", "backupSyncPeriod": "2s",
            },
        }),
    )
    .await;
    // Without the kept key: the location says which Secret to create, no key is made, and
    // nothing is synced.
    let locations = recovery.locations();
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    let message = loop {
        let status = locations
            .get("default")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        let message = status.message.unwrap_or_default();
        if message.contains("ferry-repository-password") {
            break message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the location never named the missing key: {message:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        message.contains("kept from that installation") && message.contains("ferry key export"),
        "{message}"
    );
    let backups: Api<Backup> = Api::namespaced(recovery_client.clone(), recovery.namespace.name());
    assert!(backups.get_opt("before-disaster").await.unwrap().is_none());
    let recovery_secrets =
        Api::<Secret>::namespaced(recovery_client.clone(), recovery.namespace.name());
    assert!(
        recovery_secrets
            .get_opt("ferry-repository-password")
            .await
            .unwrap()
            .is_none(),
        "a new key was made where backups exist"
    );

    // The kept key, as `ferry key export` printed it in the first cluster.
    let kept = ferry_tests::installation_key(&client, ferry.namespace.name()).await;
    recovery_secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some("ferry-repository-password".to_owned()),
                    ..Default::default()
                },
                data: Some([("password".to_owned(), k8s_openapi::ByteString(kept))].into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_synced(&backups, "before-disaster").await;
    let synced = finished(&backups, "before-disaster").await;
    assert_eq!(
        synced.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&synced)
    );

    create(
        &recovery_client,
        recovery.namespace.name(),
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "recover"},
               "spec": {"backupName": "before-disaster"}}),
    )
    .await;
    let restores: Api<Restore> =
        Api::namespaced(recovery_client.clone(), recovery.namespace.name());
    let restore = finished(&restores, "recover").await;
    assert_eq!(
        restore.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&restore)
    );
    let settings: ConfigMap = get(&recovery_client, app.name(), "settings").await;
    assert_eq!(settings.data.unwrap()["colour"], "green");
    let token: Secret = get(&recovery_client, app.name(), "token").await;
    assert_eq!(token.data.unwrap()["t"].0, b"42");
    let _: Deployment = get(&recovery_client, app.name(), "web").await;

    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(recovery_client.clone());
    let _ = namespaces
        .delete(app.name(), &DeleteParams::default())
        .await;
    recovery.stop().await;
    app.delete_and_wait().await;
    ferry.stop().await;
}

/// A private store behind TLS is reached through the location's caBundle and refused without it
/// (a certificate no system CA vouches for), and a location that asks for encryption at rest gets
/// it for every file a backup writes.
#[tokio::test]
async fn a_private_store_is_reached_through_its_ca_bundle_with_encryption_at_rest() {
    let env = TestEnv::get();
    let front = TlsFront::start().await;
    let ferry = RunningController::start("controller-private-store", false).await;
    let client = ferry.client.clone();
    let location = |name: &str, ca_bundle: Option<&str>| {
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "BackupStorageLocation",
            "metadata": {"name": name},
            "spec": {
                "provider": "aws",
                "objectStorage": {"bucket": ferry.store.bucket(), "prefix": ferry.store.prefix(),
                                  "caBundle": ca_bundle, "serverSideEncryption": "AES256"},
                "region": env.s3_region(), "endpoint": front.endpoint(), "forcePathStyle": true,
                "credential": {"name": ferry_tests::CREDENTIALS_SECRET.0,
                               "key": ferry_tests::CREDENTIALS_SECRET.1},
                "validationFrequency": "2s", "default": ca_bundle.is_some(),
            },
        })
    };
    create(
        &client,
        ferry.namespace.name(),
        location("private", Some(front.ca_pem())),
    )
    .await;
    create(&client, ferry.namespace.name(), location("no-ca", None)).await;
    let locations = ferry.locations();
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    let statuses = loop {
        let statuses: Vec<_> =
            futures::future::join_all(["private", "no-ca"].map(|name| locations.get(name)))
                .await
                .into_iter()
                .map(|location| location.unwrap().status.unwrap_or_default())
                .collect();
        if statuses.iter().all(|status| status.phase.is_some()) {
            break statuses;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never validated: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        statuses[0].phase,
        Some(ferry_protocol::crd::LocationPhase::Available),
        "{:?}",
        statuses[0]
    );
    assert_eq!(
        statuses[1].phase,
        Some(ferry_protocol::crd::LocationPhase::Unavailable),
        "{:?}",
        statuses[1]
    );
    let message = statuses[1].message.clone().unwrap_or_default();
    assert!(message.contains("certificate"), "{message}");

    let app = TestNamespace::create(&client, "private-store").await;
    create(
        &client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
               "data": {"a": "b"}}),
    )
    .await;
    let backup = ferry
        .backup("private", json!({"includedNamespaces": [app.name()]}))
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    let objects = ferry.store.encryption("backups/private/").await;
    assert!(objects.len() >= 3, "{objects:?}");
    for (key, sse) in objects {
        assert_eq!(sse.as_deref(), Some("AES256"), "{key}");
    }
    app.delete_and_wait().await;
    ferry.stop().await;
}

/// With `agentCredentials`, what a node agent is handed for a task is a short-lived session from
/// the store's STS (MinIO's AssumeRole here) that reaches its one repository and nothing else:
/// not another namespace's repository, not the backups' archives and records. The data mover
/// works with it (a repository made, backed up, restored and pruned). Without it, the agents
/// received the location's own keys.
#[tokio::test]
async fn node_agents_get_credentials_for_their_repository_only() {
    let env = TestEnv::get();
    let ferry = RunningController::start_with_location("controller-scoped").await;
    let app = TestNamespace::create(&ferry.client, "scoped").await;
    let backup = ferry
        .backup("scoped", json!({"includedNamespaces": [app.name()]}))
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    ferry
        .locations()
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"agentCredentials": {"duration": "1h"}}})),
        )
        .await
        .unwrap();
    let location = ferry.locations().get("default").await.unwrap();
    let locations = ferry_controller::Locations::new(ferry.client.clone(), ferry.namespace.name());
    let spec = ferry_controller::agents::repository(&locations, &location, "shop")
        .await
        .unwrap();
    assert_ne!(spec.access_key_id, env.s3_credentials().access_key_id());
    assert!(!spec.session_token.is_empty(), "no session token: {spec:?}");

    let session = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .endpoint_url(env.s3_endpoint())
            .region(aws_sdk_s3::config::Region::new(env.s3_region().to_owned()))
            .credentials_provider(aws_credential_types::Credentials::new(
                &spec.access_key_id,
                &spec.secret_access_key,
                Some(spec.session_token.clone()),
                None,
                "test",
            ))
            .force_path_style(true)
            .build(),
    );
    let bucket = ferry.store.bucket();
    let put = |key: String| {
        session
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"probe"))
            .send()
    };
    put(ferry.store.key("repositories/shop/probe"))
        .await
        .expect("its own repository is writable");
    for key in ["repositories/other/probe", "backups/scoped/probe"] {
        assert!(
            put(ferry.store.key(key)).await.is_err(),
            "{key} was writable with a repository's credentials"
        );
    }
    let keys = BackupKeys::new(None, "scoped");
    assert!(
        session
            .get_object()
            .bucket(bucket)
            .key(ferry.store.key(&keys.record()))
            .send()
            .await
            .is_err(),
        "a backup's record was readable with a repository's credentials"
    );
    assert!(
        session
            .list_objects_v2()
            .bucket(bucket)
            .prefix(ferry.store.key("backups/"))
            .send()
            .await
            .is_err(),
        "the backups were listable with a repository's credentials"
    );

    // The data mover does all it does with them.
    tokio::task::spawn_blocking(move || {
        let options = ferry_protocol::agent::s3_options(&spec).unwrap();
        let backend = ferry_mover::open_backend(&spec.url, &options).unwrap();
        let repo = std::sync::Arc::new(
            ferry_mover::Repository::init(
                backend,
                spec.password.as_bytes(),
                &ferry_mover::InitOptions::default(),
            )
            .unwrap(),
        );
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("table"), vec![7u8; 3 << 20]).unwrap();
        let snapshot =
            ferry_mover::backup(&repo, source.path(), &ferry_mover::BackupOptions::default())
                .unwrap()
                .snapshot_id;
        let target = tempfile::tempdir().unwrap();
        ferry_mover::restore(
            &repo,
            "latest",
            target.path(),
            &ferry_mover::RestoreOptions::default(),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(target.path().join("table")).unwrap(),
            vec![7u8; 3 << 20]
        );
        ferry_mover::forget_snapshots(&repo, &[snapshot.to_hex()], Duration::ZERO).unwrap();
        let pruned = ferry_mover::prune(&repo, &ferry_mover::PruneOptions::default()).unwrap();
        assert!(pruned.blobs_removed > 0, "{pruned:?}");
    })
    .await
    .unwrap();
    app.delete_and_wait().await;
    ferry.stop().await;
}

/// A location that cannot be used says why in its status: no such bucket, wrong credentials,
/// nothing listening at the endpoint.
#[tokio::test]
async fn an_unusable_location_is_unavailable_with_the_reason() {
    let env = TestEnv::get();
    let ferry = RunningController::start_with_location("controller-locations").await;
    let client = ferry.client.clone();
    create(
        &client,
        ferry.namespace.name(),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wrong-credentials"},
               "stringData": {"cloud": "[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n"}}),
    )
    .await;
    let location = |name: &str, bucket: &str, endpoint: &str, secret: &str| {
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "BackupStorageLocation",
            "metadata": {"name": name},
            "spec": {
                "provider": "aws", "objectStorage": {"bucket": bucket},
                "region": env.s3_region(), "endpoint": endpoint, "forcePathStyle": true,
                "credential": {"name": secret, "key": "cloud"}, "validationFrequency": "2s",
            },
        })
    };
    let cases = [
        (
            "no-bucket",
            location(
                "no-bucket",
                "ferry-no-such-bucket",
                env.s3_endpoint(),
                "cloud-credentials",
            ),
            "ferry-no-such-bucket",
        ),
        (
            "bad-keys",
            location(
                "bad-keys",
                env.s3_bucket(),
                env.s3_endpoint(),
                "wrong-credentials",
            ),
            "credentials",
        ),
        (
            "unreachable",
            location(
                "unreachable",
                env.s3_bucket(),
                "http://127.0.0.1:9",
                "cloud-credentials",
            ),
            "127.0.0.1:9",
        ),
    ];
    let locations: Api<ferry_protocol::crd::BackupStorageLocation> =
        Api::namespaced(client.clone(), ferry.namespace.name());
    for (_, object, _) in &cases {
        create(&client, ferry.namespace.name(), object.clone()).await;
    }
    for (name, _, expected) in &cases {
        let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
        let status = loop {
            let status = locations
                .get(name)
                .await
                .unwrap()
                .status
                .unwrap_or_default();
            if status.phase.is_some() {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} was never validated"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert_eq!(
            status.phase,
            Some(ferry_protocol::crd::LocationPhase::Unavailable),
            "{name}: {status:?}"
        );
        let message = status.message.unwrap_or_default();
        assert!(
            message.to_lowercase().contains(&expected.to_lowercase()),
            "the message of {name} does not name {expected:?}: {message}"
        );
    }
    ferry.stop().await;
}

#[tokio::test]
async fn only_one_controller_leads_and_another_takes_over_when_it_stops() {
    use ferry_controller::leader::{Candidate, Timing};
    let client = TestEnv::get().kube_client().await;
    let namespace = TestNamespace::create(&client, "leader").await;
    let timing = Timing {
        lease_duration: Duration::from_secs(3),
        renew_every: Duration::from_millis(500),
    };
    let first = std::sync::Arc::new(Candidate::new(
        client.clone(),
        namespace.name(),
        "first",
        timing,
    ));
    let second = Candidate::new(client.clone(), namespace.name(), "second", timing);
    first.acquire().await.unwrap();
    let holding = tokio::spawn({
        let first = first.clone();
        async move { first.hold().await }
    });
    // While the first renews, the second waits, well past the Lease's duration.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), second.acquire())
            .await
            .is_err(),
        "two controllers led at once"
    );
    // The first stops renewing (its process died): the second takes over once the Lease expires.
    holding.abort();
    tokio::time::timeout(Duration::from_secs(10), second.acquire())
        .await
        .expect("the second controller never took over")
        .unwrap();
    // The first, were it still running, sees it lost the Lease and stops.
    tokio::time::timeout(Duration::from_secs(5), first.hold())
        .await
        .expect("the old leader did not notice it lost the Lease");
}
