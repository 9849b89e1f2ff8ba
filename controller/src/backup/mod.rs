//! The Backup reconciler: validates the spec, then lists everything in scope, page by page, into
//! a streamed tar.gz in the storage location, with the backup's record, resource list, results,
//! volume records and log beside it; snapshots the volumes, and follows the snapshots to
//! completion without holding the reconciler (phase WaitingForVolumes, polled). A Backup annotated
//! for deletion is deleted: snapshots, files, then the resource. Which of these a reconcile does
//! is decided in [`crate::operation`], which Restores share. What each kind of object adds (the
//! cluster-scoped objects it needs, the pods and volumes it hands on) is an item action in
//! `actions/`; the volumes are followed by [`crate::volumes`]. Every file is sealed on its way to
//! the bucket ([`crate::seal`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::crd::{
    AccessMode, Backup, BackupStatus, DELETE_REQUESTED_ANNOTATION, Phase, Progress,
};
use ferry_protocol::layout::{ARCHIVE_FORMAT_VERSION, ArchiveItem, BackupKeys, GroupResource};
use ferry_protocol::volume::{VolumePhase, VolumeRecord, VolumeRecords};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, DynamicObject, ListParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};

mod actions;
mod hooks;

use actions::{Needed, VolumeSources};

use crate::archive::ArchiveWriter;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::operation::{self, Operation, Status as _};
use crate::resources::{
    IncludesExcludes, ResourceFilter, ResourceType, discover, is_never_backed_up, parse_selector,
};
use crate::storage::ObjectStore;
use crate::{gunzip, gunzip_json, gzip_json, parse_duration, volumes};

/// Objects per list request: large enough to be quick, small enough that a namespace of 100,000
/// objects is never in memory at once.
const PAGE_SIZE: u32 = 500;
/// How often progress reaches the Backup's status while it runs.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often a deletion queued behind a running backup looks again.
const POLL_INTERVAL: Duration = Duration::from_secs(5);

pub async fn reconcile(backup: Arc<Backup>, ctx: Arc<Context>) -> Result<Action> {
    operation::reconcile(backup, ctx).await
}

impl Operation for Backup {
    const NOUN: &'static str = "backup";
    type Status = BackupStatus;

    fn status(&self) -> Option<&BackupStatus> {
        self.status.as_ref()
    }

    fn deletion_requested(&self) -> bool {
        self.annotations().contains_key(DELETE_REQUESTED_ANNOTATION)
    }

    fn expiration(&self) -> Option<jiff::Timestamp> {
        let status = self.status.as_ref()?;
        let ended = matches!(
            status.phase,
            Some(Phase::Completed | Phase::PartiallyFailed | Phase::Failed)
        );
        ended.then_some(status.expiration.as_ref()?.0)
    }

    /// It describes a backup already in the bucket; its status follows from the record.
    fn synced(&self) -> bool {
        self.annotations()
            .contains_key(crate::location::SYNCED_FROM_ANNOTATION)
    }

    async fn run(&self, ctx: &Context) -> Result<Action> {
        Ok(match run(self, ctx).await? {
            Phase::WaitingForVolumes => Action::requeue(volumes::POLL_INTERVAL),
            // The status it ended with arrives as a change, and is looked at for expiry then.
            _ => Action::await_change(),
        })
    }

    async fn follow_volumes(&self, ctx: &Context) -> Result<Action> {
        follow_volumes(self, ctx).await
    }

    /// Its multipart upload was never completed, so no partial archive is visible; snapshots it
    /// may have started are found by their tag.
    async fn interrupted(&self, ctx: &Context) -> String {
        match volumes::delete_unrecorded_snapshots(ctx, self).await {
            Ok(_) => "the controller restarted while this backup was in progress; nothing of it was kept. \
                      Create the backup again."
                .to_owned(),
            Err(error) => format!(
                "the controller restarted while this backup was in progress; create the backup again. \
                 Deleting the volume snapshots it may have started failed ({error}): delete the EBS \
                 snapshots tagged {}={} by hand",
                crate::ebs::tags::BACKUP_UID,
                self.uid().unwrap_or_default()
            ),
        }
    }

    /// Runs the post hooks it owes, as the server's copy of its status records them.
    async fn settle(&self, ctx: &Context) -> Option<String> {
        let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
        let fresh = match api.get(&self.name_any()).await {
            Ok(fresh) => fresh,
            Err(error) => {
                return Some(format!(
                    "reading the backup for its owed post hooks failed ({error}); run them by hand for the pods in status.postHooksPending"
                ));
            }
        };
        hooks::run_owed_post_hooks(ctx, &fresh).await
    }

    /// Its owed post hooks ran in [`Operation::settle`], just before.
    fn failed_status(&self, reason: &str, now: jiff::Timestamp) -> BackupStatus {
        let mut status = self.status.clone().unwrap_or_default();
        status.end(Phase::Failed, Some(reason.to_owned()), now);
        status.post_hooks_pending.clear();
        status
    }

    async fn delete(&self, ctx: &Context, running_here: bool) -> Result<Action> {
        delete(self, ctx, running_here).await
    }

    /// An expired backup is deleted like one `ferry backup delete` asked for: the annotation
    /// records why, and the deletion reports and retries each step.
    async fn expire(&self, ctx: &Context) -> Result<Action> {
        let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
        let patch = serde_json::json!({"metadata": {"annotations": {
            DELETE_REQUESTED_ANNOTATION: format!("expired at {}", ctx.now()),
        }}});
        api.patch(
            &self.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
        tracing::info!(message = "a backup expired; deleting it", backup = %self.name_any());
        ctx.event(
            self,
            EventType::Normal,
            "Expired",
            "the backup's ttl has passed; deleting it".to_owned(),
        )
        .await;
        Ok(Action::await_change())
    }

    fn record_started(&self, ctx: &Context) {
        ctx.metrics.backup_started(self);
    }

    fn record_finished(&self, ctx: &Context, status: &BackupStatus, volumes: &[VolumeRecord]) {
        ctx.metrics.backup_finished(self, status, volumes);
    }
}

/// What a valid spec resolves to.
struct Plan {
    location: ferry_protocol::crd::BackupStorageLocation,
    store: ObjectStore,
    keys: BackupKeys,
    types: Vec<ResourceType>,
    namespaces: IncludesExcludes,
    /// Which namespaced resource types are backed up.
    namespaced_resources: ResourceFilter,
    /// Which cluster-scoped types are, and (`include_cluster_resources`) how many of their
    /// objects: all, none, or (unset) those the namespaces need and the types named.
    cluster_resources: ResourceFilter,
    include_cluster_resources: Option<bool>,
    /// Objects must match one of these; empty means every object.
    selectors: Vec<Selector>,
    ttl: Duration,
    /// Never backed up, whatever the filters say.
    ferry_secrets: actions::FerrySecrets,
    /// Which pods run which hooks, unless their annotations say.
    hooks: crate::hooks::BackupHookRules,
}

async fn validate(backup: &Backup, ctx: &Context) -> Result<Result<Plan, Vec<String>>> {
    let spec = &backup.spec;
    let mut problems = Vec::new();
    let mut selectors = Vec::new();
    if spec.label_selector.is_some() && !spec.or_label_selectors.is_empty() {
        problems.push("labelSelector and orLabelSelectors cannot both be set; use one".to_owned());
    }
    for selector in spec.label_selector.iter().chain(&spec.or_label_selectors) {
        match parse_selector(selector) {
            Ok(selector) => selectors.push(selector),
            Err(problem) => problems.push(problem),
        }
    }
    let ttl = match spec.ttl.as_deref().map(parse_duration) {
        None => DEFAULT_TTL,
        Some(Ok(ttl)) => ttl,
        Some(Err(error)) => {
            problems.push(format!("ttl: {error}"));
            DEFAULT_TTL
        }
    };
    if let Some(Err(error)) = spec.csi_snapshot_timeout.as_deref().map(parse_duration) {
        problems.push(format!("csiSnapshotTimeout: {error}"));
    }
    problems.extend(volumes::policy::problems(spec));
    if !spec.volume_snapshot_classes.is_empty() {
        let classes = volumes::csi::cluster_classes(ctx).await?;
        problems.extend(volumes::policy::class_problems(spec, &classes));
    }
    let hooks = crate::hooks::BackupHookRules::resolve(spec.hooks.as_ref()).unwrap_or_else(
        |hook_problems| {
            problems.extend(hook_problems);
            Default::default()
        },
    );
    let location = match ctx
        .locations
        .storage_location(spec.storage_location.as_deref())
        .await
    {
        Ok(location) => Some(location),
        Err(Error::NotFound { what }) => {
            problems.push(format!("storageLocation: {what} not found"));
            None
        }
        Err(error) => return Err(error),
    };
    if let Some(location) = &location
        && location.spec.access_mode == Some(AccessMode::ReadOnly)
    {
        problems.push(format!(
            "storageLocation {} is ReadOnly; backups cannot be written to it",
            location.name_any()
        ));
    }
    match ctx
        .locations
        .snapshot_locations(&spec.volume_snapshot_locations)
        .await
    {
        Ok(_) => {}
        Err(Error::NotFound { what }) => {
            problems.push(format!("volumeSnapshotLocations: {what} not found"));
        }
        Err(error) => return Err(error),
    }
    let types = discover(&ctx.client).await?;
    let resources = match resource_filters(spec, &types) {
        Ok(filters) => Some(filters),
        Err(filter_problems) => {
            problems.extend(filter_problems);
            None
        }
    };
    let (
        Some(location),
        Some((namespaced_resources, cluster_resources, include_cluster_resources)),
    ) = (location, resources)
    else {
        return Ok(Err(problems));
    };
    if !problems.is_empty() {
        return Ok(Err(problems));
    }
    let store = ctx.locations.object_store(&location).await?;
    Ok(Ok(Plan {
        location,
        keys: BackupKeys::new(store.prefix(), &backup.name_any()),
        store,
        types,
        namespaces: IncludesExcludes::new(&spec.included_namespaces, &spec.excluded_namespaces),
        namespaced_resources,
        cluster_resources,
        include_cluster_resources,
        selectors,
        ttl,
        ferry_secrets: ferry_secrets(ctx).await?,
        hooks,
    }))
}

/// The namespaced and cluster-scoped resource filters of a spec, and how many cluster-scoped
/// objects it takes: from `includedResources`, `excludedResources` and `includeClusterResources`,
/// or from the four scoped lists (Velero's newer fields), which exclude the former.
fn resource_filters(
    spec: &ferry_protocol::crd::BackupSpec,
    types: &[ResourceType],
) -> std::result::Result<(ResourceFilter, ResourceFilter, Option<bool>), Vec<String>> {
    let scoped = [
        &spec.included_namespace_scoped_resources,
        &spec.excluded_namespace_scoped_resources,
        &spec.included_cluster_scoped_resources,
        &spec.excluded_cluster_scoped_resources,
    ];
    if scoped.iter().all(|list| list.is_empty()) {
        let filter =
            ResourceFilter::resolve(&spec.included_resources, &spec.excluded_resources, types)?;
        return Ok((filter.clone(), filter, spec.include_cluster_resources));
    }
    if !spec.included_resources.is_empty()
        || !spec.excluded_resources.is_empty()
        || spec.include_cluster_resources.is_some()
    {
        return Err(vec![
            "the scoped resource lists (included/excluded NamespaceScoped/ClusterScopedResources) replace includedResources, excludedResources and includeClusterResources; use one kind".to_owned(),
        ]);
    }
    let (namespaced, cluster): (Vec<ResourceType>, Vec<ResourceType>) =
        types.iter().cloned().partition(ResourceType::namespaced);
    let mut problems = Vec::new();
    let namespaced = ResourceFilter::resolve_fields(
        (
            &spec.included_namespace_scoped_resources,
            "includedNamespaceScopedResources",
        ),
        (
            &spec.excluded_namespace_scoped_resources,
            "excludedNamespaceScopedResources",
        ),
        &namespaced,
    )
    .map_err(|p| problems.extend(p))
    .ok();
    let star = |list: &[String]| list.iter().any(|n| n == "*");
    let cluster_scoped = ResourceFilter::resolve_fields(
        (
            &spec.included_cluster_scoped_resources,
            "includedClusterScopedResources",
        ),
        (
            &spec.excluded_cluster_scoped_resources,
            "excludedClusterScopedResources",
        ),
        &cluster,
    )
    .map_err(|p| problems.extend(p))
    .ok();
    let how_many = if star(&spec.excluded_cluster_scoped_resources) {
        Some(false)
    } else if star(&spec.included_cluster_scoped_resources) {
        Some(true)
    } else {
        None
    };
    match (namespaced, cluster_scoped) {
        (Some(namespaced), Some(cluster)) => Ok((namespaced, cluster, how_many)),
        _ => Err(problems),
    }
}

/// Ferry's own Secrets: the agent API's CA (and the TLS Secrets of older installations), the repositories' password, and the credentials its
/// storage and snapshot locations name.
async fn ferry_secrets(ctx: &Context) -> Result<actions::FerrySecrets> {
    use ferry_protocol::crd::{BackupStorageLocation, VolumeSnapshotLocation};
    let [legacy_agent, legacy_controller] = ferry_protocol::agent::LEGACY_TLS_SECRETS;
    let mut names: BTreeSet<String> = [
        ferry_protocol::pki::AGENT_CA_SECRET,
        legacy_agent,
        legacy_controller,
        crate::agents::REPOSITORY_PASSWORD_SECRET,
    ]
    .map(str::to_owned)
    .into();
    let storage: Api<BackupStorageLocation> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    for location in storage.list(&ListParams::default()).await? {
        names.extend(location.spec.credential.map(|c| c.name));
    }
    let snapshots: Api<VolumeSnapshotLocation> =
        Api::namespaced(ctx.client.clone(), &ctx.namespace);
    for location in snapshots.list(&ListParams::default()).await? {
        names.extend(location.spec.credential.map(|c| c.name));
    }
    Ok(actions::FerrySecrets {
        namespace: ctx.namespace.clone(),
        names,
    })
}

/// Runs the backup up to its end, or up to WaitingForVolumes; returns the phase it reached.
async fn run(backup: &Backup, ctx: &Context) -> Result<Phase> {
    let plan = match validate(backup, ctx).await? {
        Ok(plan) => plan,
        Err(problems) => {
            operation::reject(backup, ctx, problems).await?;
            return Ok(Phase::FailedValidation);
        }
    };
    let started = ctx.now();
    let mut status = BackupStatus {
        phase: Some(Phase::InProgress),
        format_version: Some(ARCHIVE_FORMAT_VERSION.to_owned()),
        start_timestamp: Some(Time(started)),
        expiration: jiff::SignedDuration::try_from(plan.ttl)
            .ok()
            .and_then(|ttl| started.checked_add(ttl).ok())
            .map(Time),
        progress: Some(Progress::default()),
        ..Default::default()
    };
    operation::start(
        backup,
        ctx,
        &status,
        format!("writing to {}", plan.store.bucket()),
    )
    .await?;

    let mut run = Run::new(backup, ctx, &plan, status.clone());
    let upload = plan.store.start_upload(&plan.keys.archive()).await?;
    let writer = ArchiveWriter::start(upload);
    let listed = run.collect(&writer).await;
    let finished = match listed {
        Ok(()) => writer.finish().await,
        Err(error) => {
            // Dropping the writer ends the tar task; the upload task aborts on the closed channel.
            drop(writer);
            Err(error)
        }
    };
    finished?;

    // The pods' pre hooks, just before their volumes are captured.
    let mut hook_report = crate::hooks::HookReport::default();
    let hooked = hooks::chosen(&plan.hooks, &run.volume_sources.pods, &mut hook_report);
    hooks::run_pre_hooks(ctx, backup, &hooked, &mut status, &mut hook_report).await?;

    let sources = &run.volume_sources;
    let classes = volumes::policy::SnapshotClasses::new(
        &backup.spec,
        &volumes::csi::cluster_classes(ctx).await?,
    );
    let choices = volumes::policy::choose_all(
        &backup.spec,
        &sources.persistent_volumes,
        &sources.claims,
        &classes,
    );
    let by_agents =
        volumes::choose_pod_volumes(backup, &sources.pods, &sources.persistent_volumes, &choices);
    let covered: BTreeSet<String> = by_agents
        .iter()
        .filter_map(|choice| choice.persistent_volume.clone())
        .collect();
    let volumes = volumes::snapshot_volumes(
        ctx,
        backup,
        &sources.persistent_volumes,
        &covered,
        &choices,
        &classes,
    )
    .await?;
    run.results.warnings.extend(volumes.warnings);
    run.results.errors.extend(volumes.errors);
    let mut records = VolumeRecords::new(volumes.records);
    records.volumes.extend(volumes::pod_volume_records(
        backup,
        by_agents,
        &plan.location,
    ));
    volume_tracker(backup, ctx, &plan.location, &plan.store, &plan.keys)
        .begin(&mut records)
        .await?;
    // Pods with no file-level backup still running are captured: their post hooks run now.
    hooks::run_post_hooks(ctx, backup, Some(&records), &mut status, &mut hook_report).await;
    hooks::record(hook_report, &mut status, &mut run.results, &mut run.log);
    count_volumes(ctx, &mut status, &records);
    run.log.push(format!(
        "backed up {} items, {} warnings, {} errors",
        run.done,
        run.results.warnings.len(),
        run.results.errors.len()
    ));
    status.progress = Some(Progress {
        items_total: run.done,
        items_done: run.done,
    });

    let keys = &plan.keys;
    plan.store
        .put(&keys.resource_list(), gzip_json(&run.resource_list)?)
        .await?;
    let pending = records
        .volumes
        .iter()
        .filter(|r| r.phase == VolumePhase::InProgress)
        .count();
    if pending > 0 {
        // The results and log are complete but for the volumes; finish() rewrites them.
        run.log.push(format!(
            "waiting for {pending} volumes (native snapshots and node agents) to complete"
        ));
        plan.store
            .put(&keys.results(), gzip_json(&run.results)?)
            .await?;
        plan.store
            .put(&keys.logs(), crate::gzip(run.log.join("\n").as_bytes())?)
            .await?;
        status.phase = Some(Phase::WaitingForVolumes);
        ctx.apply_status(backup, &status).await?;
        return Ok(Phase::WaitingForVolumes);
    }
    finish(
        backup,
        ctx,
        &plan.store,
        keys,
        status,
        &run.results,
        &run.log,
        &records,
    )
    .await
}

/// The status's counts of native snapshots and of the agents' pod volumes.
fn count_volumes(ctx: &Context, status: &mut BackupStatus, records: &VolumeRecords) {
    let counts = volumes::count(ctx, records);
    status.pod_volumes = counts.pod_volumes;
    status.volume_snapshots_attempted = counts.snapshots_attempted;
    status.volume_snapshots_completed = counts.snapshots_completed;
    status.csi_volume_snapshots_attempted = counts.csi_snapshots_attempted;
    status.csi_volume_snapshots_completed = counts.csi_snapshots_completed;
}

/// Ends a backup: its phase from its errors, the results and log, then the record (last: a
/// backup directory without one is incomplete, and sync ignores it), then the status.
#[allow(clippy::too_many_arguments)]
async fn finish(
    backup: &Backup,
    ctx: &Context,
    store: &ObjectStore,
    keys: &BackupKeys,
    mut status: BackupStatus,
    results: &Results,
    log: &[String],
    records: &VolumeRecords,
) -> Result<Phase> {
    status.warnings = u32::try_from(results.warnings.len()).unwrap_or(u32::MAX);
    status.errors = u32::try_from(results.errors.len()).unwrap_or(u32::MAX);
    let failed_volumes = volumes::failures(&records.volumes);
    status.failure_reason = (!failed_volumes.is_empty())
        .then(|| format!("volumes not backed up: {}", failed_volumes.join("; ")));
    let phase = status.conclude(ctx.now());

    store.put(&keys.results(), gzip_json(results)?).await?;
    store
        .put(&keys.logs(), crate::gzip(log.join("\n").as_bytes())?)
        .await?;
    let mut record = backup.clone();
    record.metadata.managed_fields = None;
    record.status = Some(status.clone());
    store
        .put(&keys.record(), serde_json::to_vec_pretty(&record)?.into())
        .await?;

    let mut note = format!(
        "{} items; {} warnings, {} errors",
        status.progress.as_ref().map_or(0, |p| p.items_done),
        status.warnings,
        status.errors
    );
    if status.volume_snapshots_attempted > 0 {
        note.push_str(&format!(
            "; {} of {} volume snapshots completed",
            status.volume_snapshots_completed, status.volume_snapshots_attempted
        ));
    }
    if status.csi_volume_snapshots_attempted > 0 {
        note.push_str(&format!(
            "; {} of {} CSI snapshots completed",
            status.csi_volume_snapshots_completed, status.csi_volume_snapshots_attempted
        ));
    }
    if let Some(reason) = &status.failure_reason {
        note.push_str(&format!("; {reason}"));
    }
    operation::end(backup, ctx, &status, &records.volumes, note).await?;
    Ok(phase)
}

/// How a backup's pod volumes go to the repository: tagged with the backup.
fn backup_transfer(backup: &Backup) -> volumes::Transfer {
    volumes::Transfer::Backup {
        backup: backup.name_any(),
        tags: vec![
            format!("backup={}", backup.name_any()),
            format!("backup-uid={}", backup.uid().unwrap_or_default()),
        ],
    }
}

/// The location, store and keys of a backup that has begun.
async fn backup_store(
    backup: &Backup,
    ctx: &Context,
) -> Result<(
    ferry_protocol::crd::BackupStorageLocation,
    ObjectStore,
    BackupKeys,
)> {
    let location = ctx
        .locations
        .storage_location(backup.spec.storage_location.as_deref())
        .await?;
    let store = ctx.locations.object_store(&location).await?;
    let keys = BackupKeys::new(store.prefix(), &backup.name_any());
    Ok((location, store, keys))
}

/// How a backup's volumes are followed: its records in its directory, its pod volumes tagged with
/// it on their way into the repository.
fn volume_tracker<'a>(
    backup: &Backup,
    ctx: &'a Context,
    location: &'a ferry_protocol::crd::BackupStorageLocation,
    store: &'a ObjectStore,
    keys: &BackupKeys,
) -> volumes::VolumeTracker<'a> {
    volumes::VolumeTracker::new(
        ctx,
        backup,
        location,
        store,
        keys.volumes(),
        backup_transfer(backup),
    )
}

/// A backup in WaitingForVolumes: asks how its native snapshots and its node agents' tasks are
/// doing, and finishes it once every volume has ended. Everything it needs is in its volume state
/// in the cluster and its own files in the bucket, so a restarted controller carries on.
async fn follow_volumes(backup: &Backup, ctx: &Context) -> Result<Action> {
    ctx.metrics.backup_in_progress(backup);
    let (location, store, keys) = backup_store(backup, ctx).await?;
    let followed = volume_tracker(backup, ctx, &location, &store, &keys)
        .follow(None)
        .await?;
    let records = followed.records;
    let mut status = backup.status.clone().unwrap_or_default();
    count_volumes(ctx, &mut status, &records);
    // The post hooks of pods whose file-level backups have ended.
    let mut hook_report = crate::hooks::HookReport::default();
    hooks::run_post_hooks(ctx, backup, Some(&records), &mut status, &mut hook_report).await;
    if !followed.done && hook_report.is_empty() {
        ctx.apply_status(backup, &status).await?;
        return Ok(Action::requeue(volumes::POLL_INTERVAL));
    }
    let mut results: Results = gunzip_json(&store.get(&keys.results()).await?)?;
    let mut log: Vec<String> = String::from_utf8_lossy(&gunzip(&store.get(&keys.logs()).await?)?)
        .lines()
        .map(str::to_owned)
        .collect();
    hooks::record(hook_report, &mut status, &mut results, &mut log);
    if !followed.done {
        // Kept with the backup's files before the status says the hooks ran: after a crash
        // between the two they run again rather than vanish from the log.
        store.put(&keys.results(), gzip_json(&results)?).await?;
        store
            .put(&keys.logs(), crate::gzip(log.join("\n").as_bytes())?)
            .await?;
        ctx.apply_status(backup, &status).await?;
        return Ok(Action::requeue(volumes::POLL_INTERVAL));
    }
    // Volumes that failed while the backup waited; those that failed at once are there already.
    for line in volumes::failures(&records.volumes) {
        if !results.errors.contains(&line) {
            results.errors.push(line);
        }
    }
    let by_agents = records.volumes.iter().filter(|r| r.file_system.is_some());
    log.push(format!(
        "{} of {} volume snapshots, {} of {} CSI snapshots and {} of {} pod volumes completed",
        status.volume_snapshots_completed,
        status.volume_snapshots_attempted,
        status.csi_volume_snapshots_completed,
        status.csi_volume_snapshots_attempted,
        by_agents
            .clone()
            .filter(|r| r.phase == VolumePhase::Completed)
            .count(),
        by_agents.count()
    ));
    finish(backup, ctx, &store, &keys, status, &results, &log, &records).await?;
    Ok(Action::await_change())
}

/// Deletes a backup: its native snapshots, its files (the record first, so that no sync brings
/// it back half-deleted), then the resource. A backup still running is deleted once it ends; a
/// step that fails is reported in the status and retried.
async fn delete(backup: &Backup, ctx: &Context, running_here: bool) -> Result<Action> {
    let mut status = backup.status.clone().unwrap_or_default();
    let phase = status.phase;
    // The reconciler runs one backup at a time per object, so a backup listing its objects is
    // seen here only once it has ended; one waiting for its snapshots is seen while it waits.
    if running_here || phase == Some(Phase::WaitingForVolumes) {
        let message = "deletion queued: the backup is still running and is deleted when it ends";
        if status.deletion_message.as_deref() != Some(message) {
            status.deletion_message = Some(message.to_owned());
            ctx.apply_status(backup, &status).await?;
            ctx.event(
                backup,
                EventType::Normal,
                "DeletionQueued",
                message.to_owned(),
            )
            .await;
        }
        // A WaitingForVolumes backup still needs following to end.
        if phase == Some(Phase::WaitingForVolumes) {
            follow_volumes(backup, ctx).await?;
        }
        return Ok(Action::requeue(POLL_INTERVAL));
    }
    if phase != Some(Phase::Deleting) {
        status.phase = Some(Phase::Deleting);
        status.deletion_message = None;
        ctx.apply_status(backup, &status).await?;
    }
    // A backup that failed validation wrote nothing, and may name a location that does not exist.
    let deleted = if phase == Some(Phase::FailedValidation) {
        Ok((0, 0))
    } else {
        delete_data(backup, ctx).await
    };
    match deleted {
        Ok((snapshots, files)) => {
            let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
            match api
                .delete(&backup.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
            tracing::info!(message = "deleted a backup", backup = %backup.name_any(), snapshots, files);
            Ok(Action::await_change())
        }
        Err(error) => {
            let message = format!("deleting failed, retrying: {error}");
            if status.deletion_message.as_deref() != Some(message.as_str()) {
                status.deletion_message = Some(message.clone());
                ctx.apply_status(backup, &status).await?;
                ctx.event(backup, EventType::Warning, "DeletionFailed", message)
                    .await;
            }
            Err(error)
        }
    }
}

/// Deletes what a backup keeps outside the cluster: native snapshots, its snapshots in the pod
/// volume repositories, and its files; returns how many snapshots and files.
async fn delete_data(backup: &Backup, ctx: &Context) -> Result<(usize, usize)> {
    let location = match ctx
        .locations
        .storage_location(backup.spec.storage_location.as_deref())
        .await
    {
        Ok(location) => location,
        Err(Error::NotFound { what }) => {
            return Err(Error::Validation(vec![format!(
                "{what} not found, so the backup's files cannot be deleted; recreate the location, or delete the Backup resource with kubectl to leave its files in the bucket"
            )]));
        }
        Err(error) => return Err(error),
    };
    if location.spec.access_mode == Some(AccessMode::ReadOnly) {
        return Err(Error::Validation(vec![format!(
            "BackupStorageLocation {} is ReadOnly; backups in it cannot be deleted until it is ReadWrite",
            location.name_any()
        )]));
    }
    let store = ctx.locations.object_store(&location).await?;
    let keys = BackupKeys::new(store.prefix(), &backup.name_any());
    let records: VolumeRecords = match store.get(&keys.volumes()).await {
        Ok(data) => gunzip_json(&data)?,
        Err(Error::NotFound { .. }) => VolumeRecords::default(),
        Err(error) => return Err(error),
    };
    // A backup synced into another cluster has a uid of its own there; its snapshots carry the
    // uid of the Backup that wrote them, which its record keeps.
    let uid = match store.get(&keys.record()).await {
        Ok(record) => serde_json::from_slice::<Backup>(&record)
            .ok()
            .and_then(|written| written.uid()),
        Err(_) => None,
    }
    .or_else(|| backup.uid())
    .unwrap_or_default();
    let snapshots = volumes::delete_snapshots(ctx, &records, &uid).await?
        + volumes::csi::delete(ctx, &records, &uid).await?;
    let repository_snapshots =
        crate::agents::forget_backup_snapshots(&ctx.locations, &location, &records, &uid).await?;
    store.delete(&keys.record()).await?;
    let files = store.list(keys.dir()).await?;
    for key in &files {
        store.delete(key).await?;
    }
    Ok((snapshots + repository_snapshots, files.len() + 1))
}

/// Warnings and errors of a backup, stored as its results file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// The state of one backup while it runs.
struct Run<'a> {
    backup: &'a Backup,
    ctx: &'a Context,
    plan: &'a Plan,
    status: BackupStatus,
    done: u64,
    last_progress: std::time::Instant,
    /// `resource` → `namespace/name` (or `name`) of every item written.
    resource_list: BTreeMap<String, Vec<String>>,
    results: Results,
    log: Vec<String>,
    needed: Needed,
    volume_sources: VolumeSources,
}

/// Makes a listed `object` of `resource` at `api`'s version what the archive keeps, and says where:
/// its item, and its line in the resource list (`namespace/name` or `name`).
fn as_archived(
    resource: &GroupResource,
    object: &mut DynamicObject,
    api: &kube::discovery::ApiResource,
) -> (ArchiveItem, String) {
    // Managed fields are the API server's bookkeeping and can be most of an object's size.
    object.metadata.managed_fields = None;
    // Items of a list carry no apiVersion and kind; an object restored (or applied) needs them.
    object.types = Some(kube::core::TypeMeta {
        api_version: api.api_version.clone(),
        kind: api.kind.clone(),
    });
    let item = ArchiveItem {
        resource: resource.clone(),
        namespace: object.namespace(),
        name: object.name_any(),
    };
    let listed = match &item.namespace {
        Some(ns) => format!("{ns}/{}", item.name),
        None => item.name.clone(),
    };
    (item, listed)
}

/// Whether a listing applies the spec's label selectors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Selection {
    Labels,
    /// Dependencies of selected objects are taken whatever their labels.
    Everything,
}

impl<'a> Run<'a> {
    fn new(backup: &'a Backup, ctx: &'a Context, plan: &'a Plan, status: BackupStatus) -> Run<'a> {
        Run {
            backup,
            ctx,
            plan,
            status,
            done: 0,
            last_progress: std::time::Instant::now(),
            resource_list: BTreeMap::new(),
            results: Results::default(),
            log: Vec::new(),
            needed: Needed::default(),
            volume_sources: VolumeSources::default(),
        }
    }

    async fn collect(&mut self, writer: &ArchiveWriter) -> Result<()> {
        let plan = self.plan;
        let in_scope = |t: &&ResourceType| {
            let resource = t.group_resource();
            let filter = if t.namespaced() {
                &plan.namespaced_resources
            } else {
                &plan.cluster_resources
            };
            !is_never_backed_up(&resource) && filter.matches(&resource)
        };
        for resource_type in plan
            .types
            .iter()
            .filter(|t| t.namespaced())
            .filter(in_scope)
        {
            self.collect_namespaced(resource_type, writer).await?;
            self.collect_other_versions(resource_type, writer).await?;
        }
        if let Some(names) = plan.namespaces.exact_includes() {
            self.needed.namespaces.extend(names.iter().cloned());
        }
        for resource_type in plan
            .types
            .iter()
            .filter(|t| !t.namespaced())
            .filter(in_scope)
        {
            self.collect_cluster_scoped(resource_type, writer).await?;
            self.collect_other_versions(resource_type, writer).await?;
        }
        Ok(())
    }

    async fn collect_namespaced(
        &mut self,
        resource_type: &ResourceType,
        writer: &ArchiveWriter,
    ) -> Result<()> {
        let client = &self.ctx.client;
        let apis: Vec<Api<DynamicObject>> = match self.plan.namespaces.exact_includes() {
            Some(namespaces) => namespaces
                .iter()
                .map(|ns| Api::namespaced_with(client.clone(), ns, &resource_type.api))
                .collect(),
            None => vec![Api::all_with(client.clone(), &resource_type.api)],
        };
        for api in apis {
            self.list_pages(
                &api,
                resource_type,
                writer,
                Selection::Labels,
                |run, object| {
                    let namespace = object.namespace().unwrap_or_default();
                    if !run.plan.namespaces.matches(&namespace) {
                        return false;
                    }
                    run.needed.namespaces.insert(namespace.clone());
                    actions::note_needs(&resource_type.group_resource(), object, &mut run.needed);
                    true
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn collect_cluster_scoped(
        &mut self,
        resource_type: &ResourceType,
        writer: &ArchiveWriter,
    ) -> Result<()> {
        let resource = resource_type.group_resource();
        let everything = match self.plan.include_cluster_resources {
            Some(false) => return Ok(()),
            Some(true) => true,
            // A backup of every namespace is a backup of the cluster; one of some namespaces
            // takes only what they need, unless the user named the type.
            None => {
                self.plan.namespaces.includes_everything()
                    || self.plan.cluster_resources.explicitly_includes(&resource)
            }
        };
        let api: Api<DynamicObject> = Api::all_with(self.ctx.client.clone(), &resource_type.api);
        if everything {
            return self
                .list_pages(&api, resource_type, writer, Selection::Labels, |_, _| true)
                .await;
        }
        self.list_pages(
            &api,
            resource_type,
            writer,
            Selection::Everything,
            |run, object| actions::is_needed(&resource, object, &mut run.needed),
        )
        .await
    }

    /// Writes every object of `resource_type` written so far again at each other version its
    /// group serves, so that a cluster that does not serve the preferred one can take it.
    async fn collect_other_versions(
        &mut self,
        resource_type: &ResourceType,
        writer: &ArchiveWriter,
    ) -> Result<()> {
        let resource = resource_type.group_resource();
        let written: BTreeSet<String> = match self.resource_list.get(&resource.to_string()) {
            Some(listed) if !resource_type.other_versions.is_empty() => {
                listed.iter().cloned().collect()
            }
            _ => return Ok(()),
        };
        for version in &resource_type.other_versions {
            let api: Api<DynamicObject> = Api::all_with(self.ctx.client.clone(), version);
            let mut params = ListParams::default().limit(PAGE_SIZE);
            loop {
                let page = match api.list(&params).await {
                    Ok(page) => page,
                    Err(kube::Error::Api(status)) if [403, 404, 405].contains(&status.code) => {
                        self.results.warnings.push(format!(
                            "listing {resource} at {}: {}",
                            version.version, status.message
                        ));
                        break;
                    }
                    Err(error) => return Err(error.into()),
                };
                let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
                for mut object in page.items {
                    let (item, listed) = as_archived(&resource, &mut object, version);
                    if !written.contains(&listed) {
                        continue;
                    }
                    writer
                        .add_at(&item, &version.version, serde_json::to_vec(&object)?)
                        .await?;
                }
                match next {
                    Some(token) => params.continue_token = Some(token),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Lists every object of `api` page by page and writes those that pass the selection and `keep`.
    async fn list_pages(
        &mut self,
        api: &Api<DynamicObject>,
        resource_type: &ResourceType,
        writer: &ArchiveWriter,
        selection: Selection,
        mut keep: impl FnMut(&mut Self, &DynamicObject) -> bool,
    ) -> Result<()> {
        let resource = resource_type.group_resource();
        let mut params = ListParams::default().limit(PAGE_SIZE);
        // One selector is evaluated by the API server; several (or-selectors) here.
        let select = selection == Selection::Labels;
        let server_side = select && self.plan.selectors.len() == 1;
        if server_side {
            params = params.labels(&self.plan.selectors[0].to_string());
        }
        loop {
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(kube::Error::Api(status))
                    if status.code == 403 || status.code == 404 || status.code == 405 =>
                {
                    self.results
                        .warnings
                        .push(format!("listing {resource}: {}", status.message));
                    return Ok(());
                }
                Err(error) => return Err(error.into()),
            };
            let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
            self.status.progress.get_or_insert_default().items_total += page.items.len() as u64;
            for object in page.items {
                if let Some(reason) =
                    actions::left_out(&resource, &object, &self.plan.ferry_secrets)
                {
                    self.log.push(format!(
                        "left out {resource} {}/{}: {reason}",
                        object.namespace().unwrap_or_default(),
                        object.name_any()
                    ));
                    continue;
                }
                if select && !server_side && !self.plan.selectors.is_empty() {
                    let labels = object.labels().clone();
                    if !self.plan.selectors.iter().any(|s| s.matches(&labels)) {
                        continue;
                    }
                }
                if !keep(self, &object) {
                    continue;
                }
                self.write(resource_type, object, writer).await?;
            }
            self.report_progress().await;
            match next {
                Some(token) => params.continue_token = Some(token),
                None => return Ok(()),
            }
        }
    }

    async fn write(
        &mut self,
        resource_type: &ResourceType,
        mut object: DynamicObject,
        writer: &ArchiveWriter,
    ) -> Result<()> {
        let resource = &resource_type.group_resource();
        let (item, listed) = as_archived(resource, &mut object, &resource_type.api);
        let json = serde_json::to_vec(&object)?;
        actions::note_written(resource, &object, &mut self.volume_sources)?;
        writer.add(&item, json).await?;
        self.resource_list
            .entry(resource.to_string())
            .or_default()
            .push(listed);
        self.done += 1;
        Ok(())
    }

    async fn report_progress(&mut self) {
        if self.last_progress.elapsed() < PROGRESS_INTERVAL {
            return;
        }
        self.last_progress = std::time::Instant::now();
        let progress = self.status.progress.get_or_insert_default();
        progress.items_done = self.done;
        progress.items_total = progress.items_total.max(self.done);
        if let Err(error) = self.ctx.apply_status(self.backup, &self.status).await {
            tracing::warn!(message = "updating backup progress failed", %error, backup = %self.backup.name_any());
        }
    }
}
