//! The BackupStorageLocation reconciler: checks the bucket on a period and says in the status
//! what is wrong when it cannot be used; and syncs backups found in the bucket into the cluster,
//! because recovery into a new cluster starts from the bucket.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::crd::{
    AccessMode, Backup, BackupStorageLocation, LocationPhase, LocationStatus,
};
use ferry_protocol::layout::{BackupKeys, backups_prefix};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::parse_duration;

/// Marks a Backup created by sync: it describes a backup that already exists in the bucket, and
/// must never be run again.
pub const SYNCED_FROM_ANNOTATION: &str = "ferry.dev/synced-from-location";
const DEFAULT_PERIOD: Duration = Duration::from_secs(60);

pub async fn reconcile(location: Arc<BackupStorageLocation>, ctx: Arc<Context>) -> Result<Action> {
    let period = |value: &Option<String>| {
        value
            .as_deref()
            .and_then(|v| parse_duration(v).ok())
            .unwrap_or(DEFAULT_PERIOD)
    };
    let validation_period = period(&location.spec.validation_frequency);
    let sync_period = period(&location.spec.backup_sync_period);

    let checked = check(&location, &ctx).await;
    let mut status =
        checked_status(&ctx, location.as_ref(), location.status.clone(), &checked).await;
    if checked.is_ok() {
        match sync(&location, &ctx).await {
            Ok(()) => status.last_synced_time = Some(Time(ctx.now())),
            Err(error) => {
                tracing::warn!(message = "syncing backups from the bucket failed", %error, location = %location.name_any())
            }
        }
        if location.spec.access_mode != Some(AccessMode::ReadOnly)
            && let Err(error) = crate::maintenance::start_if_due(&ctx, &location, &mut status).await
        {
            tracing::warn!(message = "starting repository maintenance failed", %error, location = %location.name_any());
        }
    }
    ctx.apply_status(location.as_ref(), &status).await?;
    Ok(Action::requeue(validation_period.min(sync_period)))
}

/// A location's status after a check: Available, or Unavailable with what is wrong (and an Event
/// when it just became so). Storage and snapshot locations alike.
pub(crate) async fn checked_status<K>(
    ctx: &Context,
    location: &K,
    status: Option<LocationStatus>,
    checked: &Result<(), String>,
) -> LocationStatus
where
    K: kube::Resource<DynamicType = ()>,
{
    let mut status = status.unwrap_or_default();
    let previous = status.phase;
    status.last_validation_time = Some(Time(ctx.now()));
    match checked {
        Ok(()) => {
            status.phase = Some(LocationPhase::Available);
            status.message = None;
        }
        Err(message) => {
            status.phase = Some(LocationPhase::Unavailable);
            status.message = Some(message.clone());
            if previous != Some(LocationPhase::Unavailable) {
                ctx.event(
                    location,
                    EventType::Warning,
                    "LocationUnavailable",
                    message.clone(),
                )
                .await;
            }
        }
    }
    status
}

/// Ok when the bucket answers with these credentials; otherwise what is wrong, in words a user
/// can act on.
async fn check(location: &BackupStorageLocation, ctx: &Context) -> Result<(), String> {
    if location.spec.provider != "aws" {
        return Err(format!(
            "provider {:?} is not supported; use \"aws\" (S3 and S3-compatible stores)",
            location.spec.provider
        ));
    }
    if location.spec.object_storage.bucket.is_empty() {
        return Err("objectStorage.bucket is empty".to_owned());
    }
    for (field, value) in [
        ("validationFrequency", &location.spec.validation_frequency),
        ("backupSyncPeriod", &location.spec.backup_sync_period),
        (
            "repositoryMaintenanceFrequency",
            &location.spec.repository_maintenance_frequency,
        ),
    ] {
        if let Some(Err(error)) = value.as_deref().map(parse_duration) {
            return Err(format!("{field}: {error}"));
        }
    }
    location.spec.object_storage.encryption()?;
    if let Some(scoped) = &location.spec.agent_credentials {
        crate::locations::agent_credentials_duration(scoped)?;
    }
    let store = ctx
        .locations
        .object_store(location)
        .await
        .map_err(|error| error.to_string())?;
    store.validate().await.map_err(|error| error.to_string())
}

/// Creates a Backup resource for every backup in the bucket that the cluster lacks.
async fn sync(location: &BackupStorageLocation, ctx: &Context) -> Result<()> {
    let store = ctx.locations.object_store(location).await?;
    let backups: Api<Backup> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let prefix = backups_prefix(store.prefix());
    for dir in store.list_dirs(&prefix).await? {
        let name = dir
            .trim_start_matches(&prefix)
            .trim_end_matches('/')
            .to_owned();
        if name.is_empty() || backups.get_opt(&name).await?.is_some() {
            continue;
        }
        let record_key = BackupKeys::new(store.prefix(), &name).record();
        let record = match store.get(&record_key).await {
            Ok(record) => record,
            // A backup still being written has no record yet.
            Err(Error::NotFound { .. }) => continue,
            // Planted, edited or moved: never a Backup here.
            Err(error @ Error::Unsealed { .. }) => {
                tracing::warn!(message = "a backup record in the bucket is refused; skipped", %error, key = %record_key);
                continue;
            }
            Err(error) => return Err(error),
        };
        let recorded: Backup = match serde_json::from_slice(&record) {
            Ok(backup) => backup,
            Err(error) => {
                tracing::warn!(message = "a backup record in the bucket is unreadable; skipped", %error, key = %record_key);
                continue;
            }
        };
        let mut spec = recorded.spec.clone();
        spec.storage_location = Some(location.name_any());
        let backup = Backup {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ctx.namespace.clone()),
                labels: recorded.metadata.labels.clone(),
                annotations: Some(
                    [(SYNCED_FROM_ANNOTATION.to_owned(), location.name_any())].into(),
                ),
                ..Default::default()
            },
            spec,
            status: None,
        };
        let created = backups.create(&PostParams::default(), &backup).await?;
        if let Some(status) = &recorded.status {
            ctx.apply_status(&created, status).await?;
        }
        tracing::info!(message = "synced a backup from the bucket", backup = %name, location = %location.name_any());
    }
    Ok(())
}
