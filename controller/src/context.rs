//! What every reconciler shares.

use std::collections::HashSet;
use std::sync::Mutex;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use crate::error::Result;
use crate::locations::Locations;

/// The name the controller writes status and events under.
pub const MANAGER: &str = "ferry-controller";

pub struct Context {
    pub client: Client,
    /// Where the storage and snapshot locations, their buckets and credentials are found.
    pub locations: Locations,
    /// The namespace Ferry's own resources (Backups, Restores, locations, Secrets) live in.
    pub namespace: String,
    recorder: Recorder,
    /// Backups and restores this process is running now. One found InProgress but not here was
    /// interrupted by a restart.
    running: Mutex<HashSet<String>>,
    /// File-level backups running on the node agents.
    pub agent_tasks: crate::agents::AgentTasks,
    /// Where schedules, expiry and timestamps read the time.
    pub clock: crate::Clock,
    /// What `/metrics` serves; each telemetry event writes its log line and its metrics here.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Context {
    pub fn new(client: Client, namespace: &str) -> Context {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            locations: Locations::new(client.clone(), namespace),
            client,
            namespace: namespace.to_owned(),
            running: Mutex::new(HashSet::new()),
            agent_tasks: Default::default(),
            clock: crate::Clock::system(),
            metrics: Default::default(),
        }
    }

    /// This context with the time read from `clock`.
    pub fn with_clock(mut self, clock: crate::Clock) -> Context {
        self.clock = clock;
        self
    }

    /// This context recording into `metrics`, which its caller serves.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Context {
        self.metrics = metrics;
        self
    }

    /// Now, as the context's clock has it.
    pub fn now(&self) -> jiff::Timestamp {
        self.clock.now()
    }

    /// Marks `key` as running in this process; false when it already is.
    pub fn start_running(&self, key: String) -> bool {
        self.running.lock().expect("running set").insert(key)
    }

    pub fn stop_running(&self, key: &str) {
        self.running.lock().expect("running set").remove(key);
    }

    pub fn is_running(&self, key: &str) -> bool {
        self.running.lock().expect("running set").contains(key)
    }

    /// Records a Kubernetes Event on `object`; failing to record one never fails the work.
    pub async fn event<K>(&self, object: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(message = "recording an event failed", %error, reason);
        }
    }

    /// Writes `status` onto `object` through server-side apply, as the controller's field manager.
    pub async fn apply_status<K, S>(&self, object: &K, status: &S) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: Serialize,
    {
        let api: Api<K> =
            Api::namespaced(self.client.clone(), &object.namespace().unwrap_or_default());
        let patch = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        let params = kube::api::PatchParams::apply(MANAGER).force();
        api.patch_status(
            &object.name_any(),
            &params,
            &kube::api::Patch::Apply(&patch),
        )
        .await?;
        Ok(())
    }
}
