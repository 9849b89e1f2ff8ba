//! Ferry's controller running inside the test process, watching a namespace of its own, with a
//! credentials Secret for the test bucket and (optionally) a default storage location there.

use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

use crate::{BucketPrefix, TestEnv, TestNamespace};

/// The Secret (and its key) holding the test bucket's credentials in the controller's namespace.
pub const CREDENTIALS_SECRET: (&str, &str) = ("cloud-credentials", "cloud");

pub struct RunningController {
    pub client: Client,
    /// Where the controller runs and keeps Ferry's resources.
    pub namespace: TestNamespace,
    pub store: BucketPrefix,
    task: tokio::task::JoinHandle<()>,
}

impl RunningController {
    /// Installs Ferry's CRDs and starts a controller. With `default_location`, also creates the
    /// BackupStorageLocation `default` on the test bucket (validated and synced every 2 s).
    pub async fn start(test: &str, default_location: bool) -> RunningController {
        let client = TestEnv::get().kube_client().await;
        RunningController::start_on(client, test, default_location).await
    }

    /// As [`RunningController::start`], on the cluster `client` talks to.
    pub async fn start_on(client: Client, test: &str, default_location: bool) -> RunningController {
        let env = TestEnv::get();
        crate::install_ferry_crds(&client).await;
        let namespace = TestNamespace::create(&client, "ferry").await;
        let store = BucketPrefix::new(env, test);
        let credentials = env.s3_credentials();
        let credentials_file = format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            credentials.access_key_id(),
            credentials.secret_access_key()
        );
        create_object(
            &client,
            namespace.name(),
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": CREDENTIALS_SECRET.0},
                "stringData": {CREDENTIALS_SECRET.1: credentials_file},
            }),
        )
        .await;
        if default_location {
            create_object(
                &client,
                namespace.name(),
                json!({
                    "apiVersion": "ferry.dev/v1alpha1", "kind": "BackupStorageLocation",
                    "metadata": {"name": "default"},
                    "spec": {
                        "provider": "aws",
                        "objectStorage": {"bucket": store.bucket(), "prefix": store.prefix()},
                        "region": env.s3_region(),
                        "endpoint": env.s3_endpoint(),
                        "forcePathStyle": true,
                        "credential": {"name": CREDENTIALS_SECRET.0, "key": CREDENTIALS_SECRET.1},
                        "default": true,
                        "validationFrequency": "2s",
                        "backupSyncPeriod": "2s",
                    },
                }),
            )
            .await;
        }
        let task = tokio::spawn(ferry_controller::run(
            client.clone(),
            namespace.name().to_owned(),
        ));
        RunningController {
            client,
            namespace,
            store,
            task,
        }
    }

    /// Stops the controller and removes its namespace and bucket prefix.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        self.namespace.delete_and_wait().await;
        drop(self.store);
    }
}

/// Creates an object from its JSON (`apiVersion` and `kind` required), in `namespace` when its
/// type is namespaced.
pub async fn create_object(client: &Client, namespace: &str, object: Value) {
    let object: DynamicObject = serde_json::from_value(object).expect("a Kubernetes object");
    let types = object.types.clone().expect("apiVersion and kind");
    let (group, version) = match types.api_version.split_once('/') {
        Some((group, version)) => (group.to_owned(), version.to_owned()),
        None => (String::new(), types.api_version.clone()),
    };
    let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &types.kind);
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|error| panic!("discovering {}: {error}", types.kind));
    let api: Api<DynamicObject> = match capabilities.scope {
        kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "creating {} {}: {error}",
                types.kind,
                kube::ResourceExt::name_any(&object)
            )
        });
}
