//! Ferry's controller running inside the test process, watching a namespace of its own, with a
//! credentials Secret for the test bucket and (optionally) a default storage location there.

use std::sync::Arc;
use std::time::Duration;

use ferry_controller::Metrics;
use ferry_protocol::crd::{Backup, Phase, Restore};
use kube::api::{Api, DynamicObject, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{BucketPrefix, CONVERGENCE_TIMEOUT, TestEnv, TestNamespace};

/// The Secret (and its key) holding the test bucket's credentials in the controller's namespace.
pub const CREDENTIALS_SECRET: (&str, &str) = ("cloud-credentials", "cloud");

pub struct RunningController {
    pub client: Client,
    /// Where the controller runs and keeps Ferry's resources.
    pub namespace: TestNamespace,
    pub store: BucketPrefix,
    /// The controller's clock: the system's, or a manual one ([`RunningController::start_with_clock`]).
    pub clock: ferry_controller::Clock,
    /// What the controller's `/metrics` would serve ([`Metrics::encode`]); new at each restart,
    /// as a restarted pod's are.
    pub metrics: Arc<Metrics>,
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
        RunningController::start_on_with_clock(
            client,
            test,
            default_location,
            ferry_controller::Clock::system(),
        )
        .await
    }

    /// As [`RunningController::start`], with the controller reading the time from `clock`.
    pub async fn start_with_clock(
        test: &str,
        default_location: bool,
        clock: ferry_controller::Clock,
    ) -> RunningController {
        let client = TestEnv::get().kube_client().await;
        RunningController::start_on_with_clock(client, test, default_location, clock).await
    }

    async fn start_on_with_clock(
        client: Client,
        test: &str,
        default_location: bool,
        clock: ferry_controller::Clock,
    ) -> RunningController {
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
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(ferry_controller::run_with(
            client.clone(),
            namespace.name().to_owned(),
            clock.clone(),
            metrics.clone(),
        ));
        RunningController {
            client,
            namespace,
            store,
            clock,
            metrics,
            task,
        }
    }

    /// Stops the controller as a crash would, leaving its namespace, resources and bucket as they
    /// are; [`RunningController::restart`] starts it again.
    pub async fn crash(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Starts the controller again after [`RunningController::crash`], as a restarted pod would.
    pub fn restart(&mut self) {
        self.metrics = Arc::new(Metrics::new());
        self.task = tokio::spawn(ferry_controller::run_with(
            self.client.clone(),
            self.namespace.name().to_owned(),
            self.clock.clone(),
            self.metrics.clone(),
        ));
    }

    /// [`RunningController::start`] with the default storage location.
    pub async fn start_with_location(test: &str) -> RunningController {
        RunningController::start(test, true).await
    }

    /// The password of the node agents' repositories, as the controller keeps it.
    pub async fn repository_password(&self) -> Vec<u8> {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), self.namespace.name());
        let secret = secrets
            .get(ferry_controller::agents::REPOSITORY_PASSWORD_SECRET)
            .await
            .expect("the repository password Secret");
        secret
            .data
            .and_then(|mut data| data.remove("password"))
            .expect("a password in the repository password Secret")
            .0
    }

    /// The node agents' repository of `namespace` in the default storage location.
    pub fn repository_url(&self, namespace: &str) -> String {
        format!("{}/repositories/{namespace}", self.store.url())
    }

    pub fn backups(&self) -> Api<Backup> {
        Api::namespaced(self.client.clone(), self.namespace.name())
    }

    pub fn locations(&self) -> Api<ferry_protocol::crd::BackupStorageLocation> {
        Api::namespaced(self.client.clone(), self.namespace.name())
    }

    pub fn restores(&self) -> Api<Restore> {
        Api::namespaced(self.client.clone(), self.namespace.name())
    }

    /// Creates an object of Ferry's (or any namespaced one) in the controller's namespace.
    pub async fn create(&self, object: Value) {
        create_object(&self.client, self.namespace.name(), object).await;
    }

    /// Creates a Backup with `spec` and waits until it has finished.
    pub async fn backup(&self, name: &str, spec: Value) -> Backup {
        self.create(json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Backup", "metadata": {"name": name}, "spec": spec}))
            .await;
        finished(&self.backups(), name).await
    }

    /// Creates a Restore with `spec` and waits until it has finished; prints its per-object
    /// results when it did not complete.
    pub async fn restore(&self, name: &str, spec: Value) -> Restore {
        self.create(json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Restore", "metadata": {"name": name}, "spec": spec}))
            .await;
        let restore = finished(&self.restores(), name).await;
        if restore.phase() != Some(Phase::Completed) {
            eprintln!(
                "results of restore {name}: {}",
                self.restore_results(name).await
            );
        }
        restore
    }

    /// The key this controller seals the files of its location with: derived from the
    /// installation's key (the Secret `ferry-repository-password`), as the controller derives it.
    pub async fn seal_key(&self) -> ferry_controller::seal::SealKey {
        ferry_controller::seal::SealKey::derive(
            &installation_key(&self.client, self.namespace.name()).await,
        )
    }

    /// Reads a file of this controller's storage location (`key` relative to it), opened with
    /// the installation's key.
    pub async fn read_bytes(&self, key: &str) -> Vec<u8> {
        self.try_read_bytes(key).await.unwrap()
    }

    async fn try_read_bytes(&self, key: &str) -> Result<Vec<u8>, String> {
        let sealed = self.try_read_raw(key).await?;
        ferry_controller::seal::open(&self.seal_key().await, key, &sealed)
            .map_err(|error| error.to_string())
    }

    /// Reads a file of this controller's storage location as it is stored (sealed).
    pub async fn read_raw(&self, key: &str) -> Vec<u8> {
        self.try_read_raw(key).await.unwrap()
    }

    async fn try_read_raw(&self, key: &str) -> Result<Vec<u8>, String> {
        let key = self.store.key(key);
        let object = TestEnv::get()
            .s3_client()
            .get_object()
            .bucket(self.store.bucket())
            .key(&key)
            .send()
            .await
            .map_err(|error| format!("{key} cannot be read: {error}"))?;
        Ok(object.body.collect().await.unwrap().into_bytes().to_vec())
    }

    /// Writes `body` as the file `key` of this controller's storage location, sealed with the
    /// installation's key as the controller seals it: what someone who holds the key could
    /// plant.
    pub async fn put_sealed(&self, key: &str, body: &[u8]) {
        let sealed = ferry_controller::seal::seal(&self.seal_key().await, key, body);
        self.put_raw(key, sealed.to_vec()).await;
    }

    /// Writes `body` as the file `key` of this controller's storage location, as it is: what
    /// anyone who may write to the bucket could plant.
    pub async fn put_raw(&self, key: &str, body: Vec<u8>) {
        TestEnv::get()
            .s3_client()
            .put_object()
            .bucket(self.store.bucket())
            .key(self.store.key(key))
            .body(body.into())
            .send()
            .await
            .unwrap_or_else(|error| panic!("writing {key}: {error}"));
    }

    /// Reads a gzipped JSON file of this controller's storage location, e.g. a backup's results.
    pub async fn read_json(&self, key: &str) -> Result<Value, String> {
        let bytes = self.try_read_bytes(key).await?;
        ferry_controller::gunzip_json(&bytes).map_err(|error| format!("{key}: {error}"))
    }

    pub async fn restore_results(&self, name: &str) -> Value {
        let key = ferry_protocol::layout::RestoreKeys::new(None, name).results();
        self.read_json(&key).await.unwrap_or_else(Value::String)
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

/// Backups and Restores: what their status says of where they are.
pub trait HasPhase {
    fn phase(&self) -> Option<Phase>;
}

impl HasPhase for Backup {
    fn phase(&self) -> Option<Phase> {
        self.status.as_ref().and_then(|s| s.phase)
    }
}

impl HasPhase for Restore {
    fn phase(&self) -> Option<Phase> {
        self.status.as_ref().and_then(|s| s.phase)
    }
}

/// Waits until the resource exists (a Schedule creates its Backups a moment later) and reaches a
/// final phase, and returns it.
pub async fn finished<K>(api: &Api<K>, name: &str) -> K
where
    K: HasPhase + Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        let object = api.get_opt(name).await.unwrap();
        if let Some(object) = &object
            && object.phase().is_some_and(Phase::is_terminal)
        {
            return object.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} did not finish in {CONVERGENCE_TIMEOUT:?}: {object:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A resource's status as pretty JSON, for assertion messages.
pub fn summary<K: serde::Serialize>(object: &K) -> String {
    serde_json::to_string_pretty(&serde_json::to_value(object).unwrap()["status"]).unwrap()
}

/// The installation's key in Ferry's `namespace` (the Secret `ferry-repository-password`).
pub async fn installation_key(client: &Client, namespace: &str) -> Vec<u8> {
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), namespace)
        .get(ferry_controller::agents::REPOSITORY_PASSWORD_SECRET)
        .await
        .unwrap_or_else(|error| panic!("the installation's key in {namespace}: {error}"));
    secret
        .data
        .and_then(|mut data| data.remove("password"))
        .expect("the installation's key")
        .0
}
