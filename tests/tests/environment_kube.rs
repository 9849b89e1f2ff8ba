//! The test environment's control plane behaves like a real cluster's: custom resources, watches,
//! namespace finalization, PVC binding and pod binding all work.

use std::time::Duration;

use ferry_tests::{CONVERGENCE_TIMEOUT, FakeKubelet, TestEnv, TestNamespace, unique_name};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "env-test.ferry.dev",
    version = "v1",
    kind = "Widget",
    namespaced
)]
struct WidgetSpec {
    size: u32,
}

#[tokio::test]
async fn a_custom_resource_can_be_defined_created_listed_and_watched() {
    let client = TestEnv::get().kube_client().await;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd = Widget::crd();
    let crd_name = crd.name_any();
    crds.patch(
        &crd_name,
        &PatchParams::apply("ferry-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        CONVERGENCE_TIMEOUT,
        await_condition(crds, &crd_name, conditions::is_crd_established()),
    )
    .await
    .expect("the CRD is established")
    .unwrap();

    let namespace = TestNamespace::create(&client, "env-crd").await;
    let widgets = Api::<Widget>::namespaced(client.clone(), namespace.name());
    let mut events = watcher(widgets.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();

    for (name, size) in [("small", 1), ("large", 100)] {
        widgets
            .create(
                &PostParams::default(),
                &Widget::new(name, WidgetSpec { size }),
            )
            .await
            .unwrap();
    }

    let listed = widgets.list(&ListParams::default()).await.unwrap();
    let mut sizes: Vec<_> = listed.iter().map(|w| (w.name_any(), w.spec.size)).collect();
    sizes.sort();
    assert_eq!(sizes, [("large".to_owned(), 100), ("small".to_owned(), 1)]);

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let widget = tokio::time::timeout(Duration::from_secs(30), events.try_next())
            .await
            .expect("a watch event within 30 s")
            .unwrap()
            .expect("the watch stream goes on");
        if !seen.contains(&widget.name_any()) {
            seen.push(widget.name_any());
        }
    }
    seen.sort();
    assert_eq!(seen, ["large", "small"]);

    // A change after the initial list arrives through the watch too.
    widgets
        .patch(
            "small",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .unwrap();
    loop {
        let widget = tokio::time::timeout(Duration::from_secs(30), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if widget.name_any() == "small" && widget.spec.size == 2 {
            break;
        }
    }
}

#[tokio::test]
async fn deleting_a_namespace_removes_it_and_everything_in_it() {
    let client = TestEnv::get().kube_client().await;
    let namespace = TestNamespace::create(&client, "env-ns-delete").await;
    let ns = namespace.name().to_owned();
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    claims
        .create(&PostParams::default(), &claim("data", ""))
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod_using_claim("app", "data"))
        .await
        .unwrap();

    namespace.delete_and_wait().await;

    let namespaces = Api::<Namespace>::all(client.clone());
    assert!(
        namespaces.get_opt(&ns).await.unwrap().is_none(),
        "namespace {ns} is gone"
    );
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        claims
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn a_claim_binds_to_a_matching_volume_and_a_pod_binds_to_a_node() {
    let client = TestEnv::get().kube_client().await;
    let namespace = TestNamespace::create(&client, "env-bind").await;
    let kubelet = FakeKubelet::start(&client, "ferry-test-node-a").await;

    let storage_class = unique_name("manual");
    let pv_name = unique_name("pv");
    let volumes = Api::<PersistentVolume>::all(client.clone());
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class,
            "hostPath": {"path": "/tmp/ferry-test-pv"},
        }
    }))
    .unwrap();
    volumes.create(&PostParams::default(), &pv).await.unwrap();

    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace.name());
    claims
        .create(&PostParams::default(), &claim("data", &storage_class))
        .await
        .unwrap();
    let bound = await_condition(
        claims.clone(),
        "data",
        |claim: Option<&PersistentVolumeClaim>| {
            claim
                .and_then(|c| c.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                == Some("Bound")
        },
    );
    let claim = tokio::time::timeout(CONVERGENCE_TIMEOUT, bound)
        .await
        .expect("the persistent-volume binder binds the claim")
        .unwrap()
        .unwrap();
    assert_eq!(
        claim.spec.unwrap().volume_name.as_deref(),
        Some(pv_name.as_str())
    );

    let pods = Api::<Pod>::namespaced(client.clone(), namespace.name());
    let created = pods
        .create(&PostParams::default(), &pod_using_claim("app", "data"))
        .await
        .unwrap();
    let running = kubelet.run_pod(&client, namespace.name(), "app").await;
    assert_eq!(
        running.spec.as_ref().unwrap().node_name.as_deref(),
        Some(kubelet.node_name())
    );
    assert_eq!(
        running.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );

    // The stand-in kubelet keeps volumes where a real one does, by pod UID.
    let uid = created.uid().unwrap();
    let dir = kubelet.volume_dir(&uid, "kubernetes.io~empty-dir", "cache");
    assert!(dir.starts_with(kubelet.root().join("pods").join(&uid).join("volumes")));
    assert!(dir.is_dir());

    namespace.delete_and_wait().await;
    volumes
        .delete(&pv_name, &DeleteParams::default())
        .await
        .unwrap();
}

fn claim(name: &str, storage_class: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class,
            "resources": {"requests": {"storage": "1Gi"}},
        }
    }))
    .unwrap()
}

fn pod_using_claim(name: &str, claim: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "app", "image": "busybox", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        }
    }))
    .unwrap()
}
