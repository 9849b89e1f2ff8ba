//! A namespace of a test's own, deleted when the test ends.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};

use crate::{CONVERGENCE_TIMEOUT, TestEnv, unique_name};

/// A fresh namespace. Dropping it deletes it (without waiting for it to finalize), so a failed test
/// leaves nothing behind for the next run.
pub struct TestNamespace {
    name: String,
    client: Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish()
    }
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` and waits for its `default` service account, without which the
    /// API server refuses pods.
    pub async fn create(client: &Client, prefix: &str) -> TestNamespace {
        let name = unique_name(prefix);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("ferry.dev/test".to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|error| panic!("creating namespace {name}: {error}"));
        let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &name);
        let created = await_condition(accounts, "default", conditions::is_created());
        tokio::time::timeout(CONVERGENCE_TIMEOUT, created)
            .await
            .unwrap_or_else(|_| {
                panic!("namespace {name} got no default service account: is kube-controller-manager running?")
            })
            .expect("watching service accounts");
        TestNamespace {
            name,
            client: client.clone(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the namespace and waits until the controller manager has finalized it.
    pub async fn delete_and_wait(self) {
        delete_namespace_and_wait(&self.client, &self.name).await;
        // Already deleted; nothing left for Drop.
        std::mem::forget(self);
    }
}

/// Deletes namespace `name` (its pods at once, as there is no kubelet to confirm they stopped)
/// and waits until the controller manager has finalized it. For namespaces a test recreates, such
/// as those a restore brings back.
pub async fn delete_namespace_and_wait(client: &Client, name: &str) {
    let namespaces = Api::<Namespace>::all(client.clone());
    let uid = namespaces
        .get(name)
        .await
        .ok()
        .and_then(|ns| ns.metadata.uid)
        .unwrap_or_default();
    delete_namespace(client, name).await;
    let gone = await_condition(namespaces, name, conditions::is_deleted(&uid));
    tokio::time::timeout(CONVERGENCE_TIMEOUT, gone)
        .await
        .unwrap_or_else(|_| {
            panic!("namespace {name} was not finalized within {CONVERGENCE_TIMEOUT:?}")
        })
        .expect("watching namespaces");
}

/// Deletes PersistentVolume `name`, if it exists, and waits until it is gone.
pub async fn delete_pv_and_wait(client: &Client, name: &str) {
    let pvs = Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(client.clone());
    let Some(uid) = pvs
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|pv| pv.metadata.uid)
    else {
        return;
    };
    let _ = pvs.delete(name, &DeleteParams::default()).await;
    tokio::time::timeout(
        CONVERGENCE_TIMEOUT,
        await_condition(pvs, name, conditions::is_deleted(&uid)),
    )
    .await
    .unwrap_or_else(|_| panic!("PV {name} was not deleted"))
    .unwrap();
}

/// Waits until claim `namespace/claim` is Bound, and returns it.
pub async fn wait_bound(
    client: &Client,
    namespace: &str,
    claim: &str,
) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace);
    tokio::time::timeout(
        CONVERGENCE_TIMEOUT,
        await_condition(claims, claim, |c: Option<&PersistentVolumeClaim>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                == Some("Bound")
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("PVC {namespace}/{claim} did not bind"))
    .unwrap()
    .expect("the claim exists")
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be shutting down, so delete from a thread
        // with a runtime and client of its own.
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let client = TestEnv::get().kube_client().await;
                tokio::time::timeout(Duration::from_secs(20), delete_namespace(&client, &name))
                    .await
                    .ok()
            })
        });
        let _ = cleanup.join();
    }
}

/// Deletes a namespace the way a kubelet-less cluster can finish: pods bound to a node wait for
/// their kubelet to confirm they stopped, and there is none, so they are deleted at once.
async fn delete_namespace(client: &Client, name: &str) {
    let pods = Api::<Pod>::namespaced(client.clone(), name);
    if let Ok(list) = pods.list(&ListParams::default()).await {
        for pod in list {
            if let Some(pod_name) = pod.metadata.name {
                let _ = pods
                    .delete(
                        &pod_name,
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        },
                    )
                    .await;
            }
        }
    }
    match Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => panic!("deleting namespace {name}: {error}"),
    }
}
