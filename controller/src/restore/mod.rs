//! The Restore reconciler: reads a backup's archive and recreates its objects in dependency order,
//! concurrently within each tier, recording what happened to every object.
//!
//! A restore is a pipeline: [`Run::select`] picks the archive's items in scope and sorts them into
//! priority tiers; per object, the item actions of [`actions`] (one concern per file) plan what it
//! becomes, with no side effects; [`Run::create`] applies it, and the tasks the actions asked for
//! go to the node agents. Whether a reconcile
//! runs, follows the volumes or ends a restore cut short is decided in [`crate::operation`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::crd::{
    Backup, ExistingResourcePolicy, Phase, Progress, Restore, RestoreStatus,
};
use ferry_protocol::layout::{ArchiveItem, BackupKeys, GroupResource, RestoreKeys};
use ferry_protocol::volume::{
    FileSystemBackup, PodVolumeRef, VolumeMethod, VolumePhase, VolumeRecord, VolumeRecords,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolume};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::discovery::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::Value;

use crate::archive::Archive;
use crate::context::Context;
use crate::ebs;
use crate::error::{Error, Result};
use crate::modifiers::ResourceModifiers;
use crate::operation::{self, Operation, Status as _};
use crate::resources::{
    IncludesExcludes, ResourceType, discover, is_never_backed_up, labels_of, names_resource,
    parse_selector,
};
use crate::storage::ObjectStore;
use crate::volumes;

pub(crate) mod actions;
pub(crate) mod fill;
mod hooks;

#[cfg(test)]
use actions::skip_reason;
use actions::{Effect, Verdict};

/// Objects created at once within a tier. The API server, not Ferry, is the limit.
const CONCURRENCY: usize = 32;
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a restore waits for its pods to be scheduled and their volumes filled (Velero's
/// default too).
const VOLUME_WAIT_LIMIT: Duration = Duration::from_secs(4 * 3600);

/// Labels every restored object carries.
pub const BACKUP_NAME_LABEL: &str = "ferry.dev/backup-name";
pub const RESTORE_NAME_LABEL: &str = "ferry.dev/restore-name";

/// The default restore order: what other objects need comes first. Everything not named here
/// follows, in name order.
pub const DEFAULT_PRIORITIES: &[&str] = &[
    "customresourcedefinitions.apiextensions.k8s.io",
    "namespaces",
    "storageclasses.storage.k8s.io",
    "persistentvolumes",
    "persistentvolumeclaims",
    "serviceaccounts",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "clusterroles.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
    "secrets",
    "configmaps",
    "limitranges",
    "pods",
    "replicasets.apps",
];

pub async fn reconcile(restore: Arc<Restore>, ctx: Arc<Context>) -> Result<Action> {
    operation::reconcile(restore, ctx).await
}

impl Operation for Restore {
    const NOUN: &'static str = "restore";
    type Status = RestoreStatus;

    fn status(&self) -> Option<&RestoreStatus> {
        self.status.as_ref()
    }

    async fn run(&self, ctx: &Context) -> Result<Action> {
        run(self, ctx).await?;
        Ok(Action::await_change())
    }

    async fn follow_volumes(&self, ctx: &Context) -> Result<Action> {
        follow_volumes(self, ctx).await
    }

    async fn interrupted(&self, _ctx: &Context) -> String {
        "the controller restarted while this restore was in progress; objects created before \
         the restart remain (labelled ferry.dev/restore-name). Create the restore again with \
         existingResourcePolicy update to finish it."
            .to_owned()
    }

    fn record_started(&self, ctx: &Context) {
        ctx.metrics.restore_started(self);
    }

    fn record_finished(&self, ctx: &Context, status: &RestoreStatus, _volumes: &[VolumeRecord]) {
        ctx.metrics.restore_finished(self, status);
    }
}

/// How a restore's pod volumes come back: the agents write the data, then the marker the pods'
/// init containers wait for.
fn restore_transfer(restore: &Restore) -> volumes::Transfer {
    volumes::Transfer::Restore {
        restore: restore.name_any(),
        marker: restore_marker(restore),
    }
}

/// The file (in `.ferry/` of each volume) that tells a restored pod's init container its data is
/// in place: the restore's uid, unique to this restore.
fn restore_marker(restore: &Restore) -> String {
    format!("{}.done", restore.uid().unwrap_or_default())
}

/// How a restore's volumes are followed: its records in its directory, its pod volumes filled
/// from the repositories they were backed up to.
fn volume_tracker<'a>(
    restore: &Restore,
    ctx: &'a Context,
    location: &'a ferry_protocol::crd::BackupStorageLocation,
    store: &'a ObjectStore,
) -> volumes::VolumeTracker<'a> {
    let keys = RestoreKeys::new(store.prefix(), &restore.name_any());
    volumes::VolumeTracker::new(
        ctx,
        restore,
        location,
        store,
        keys.volumes(),
        restore_transfer(restore),
    )
}

/// A restore in WaitingForVolumes: follows the agents' tasks and ends the restore once each has.
async fn follow_volumes(restore: &Restore, ctx: &Context) -> Result<Action> {
    ctx.metrics.restore_in_progress(restore);
    let backups: Api<Backup> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let backup = backups.get(&restore.spec.backup_name).await?;
    let location = ctx
        .locations
        .storage_location(backup.spec.storage_location.as_deref())
        .await?;
    let store = ctx.locations.object_store(&location).await?;
    let started = restore
        .status
        .as_ref()
        .and_then(|s| s.start_timestamp.as_ref())
        .map_or(jiff::Timestamp::UNIX_EPOCH, |t| t.0);
    let wait_limit = volumes::WaitLimit {
        started,
        limit: VOLUME_WAIT_LIMIT,
        message: format!(
            "not restored within {} h: its pod was not scheduled, or its volume not mounted",
            VOLUME_WAIT_LIMIT.as_secs() / 3600
        ),
    };
    let mut status = restore.status.clone().unwrap_or_default();
    // A restore with no pod volumes waits for its exec hooks only.
    let (records, volumes_done) = if status.pod_volumes.is_some() {
        let followed = volume_tracker(restore, ctx, &location, &store)
            .follow(Some(&wait_limit))
            .await?;
        status.pod_volumes = volumes::pod_volume_progress(ctx, &followed.records);
        (followed.records, followed.done)
    } else {
        (VolumeRecords::default(), true)
    };
    let mut report = crate::hooks::HookReport::default();
    hooks::run_exec_hooks(ctx, restore, &records, &mut status, &mut report).await;
    if !report.is_empty() {
        // In the log before the status counts them: after a crash between the two, a hook runs
        // again rather than vanish.
        let keys = RestoreKeys::new(store.prefix(), &restore.name_any());
        let mut lines = report.log;
        lines.extend(report.errors.iter().map(|e| format!("error: {e}")));
        lines.extend(report.warnings.iter().map(|w| format!("warning: {w}")));
        hooks::append_log(&store, &keys.logs(), &lines).await?;
        status.hooks_attempted += report.attempted;
        status.hooks_failed += report.failed;
        status.errors += u32::try_from(report.errors.len()).unwrap_or(u32::MAX);
        status.warnings += u32::try_from(report.warnings.len()).unwrap_or(u32::MAX);
    }
    if !volumes_done || !status.exec_hooks_pending.is_empty() {
        ctx.apply_status(restore, &status).await?;
        return Ok(Action::requeue(volumes::POLL_INTERVAL));
    }
    let mut records = records;
    fill::finish(ctx, &mut records.volumes).await?;
    let failed = volumes::failures(&records.volumes);
    status.errors += u32::try_from(failed.len()).unwrap_or(u32::MAX);
    status.failure_reason =
        (!failed.is_empty()).then(|| format!("volumes not restored: {}", failed.join("; ")));
    status.conclude(ctx.now());
    let note = format!(
        "{} pod volumes restored by the node agents, {} failed; {} exec hooks run, {} failed",
        records.volumes.len() - failed.len(),
        failed.len(),
        status.hooks_attempted,
        status.hooks_failed
    );
    operation::end(restore, ctx, &status, &records.volumes, note).await?;
    Ok(Action::await_change())
}

/// What happened to one object.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "reason")]
pub enum Outcome {
    Created,
    /// A dry run's: it does not exist, and the API server accepts it (or could not be asked yet:
    /// the notes say why).
    WouldCreate,
    ExistsUnchanged,
    /// It existed, differed, and the policy (`none`) left it; the reason names the difference.
    ExistsDifferent(String),
    Updated,
    /// A dry run's: it exists, differs, and the policy (`update`) would patch it; the reason
    /// lists the differences.
    WouldUpdate(String),
    Skipped(String),
    Failed(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct ItemResult {
    pub resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Where its volumes' data comes from, and what a dry run could not check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What a valid spec resolves to.
struct Plan {
    backup_name: String,
    location: ferry_protocol::crd::BackupStorageLocation,
    store: ObjectStore,
    namespaces: IncludesExcludes,
    /// `includedNamespaces` as written: a protected namespace is restored only when named here.
    named_namespaces: Vec<String>,
    included_resources: Vec<String>,
    excluded_resources: Vec<String>,
    include_cluster_resources: Option<bool>,
    mapping: BTreeMap<String, String>,
    /// An object is restored when it matches one of these (none: every object).
    selectors: Vec<Selector>,
    policy: ExistingResourcePolicy,
    restore_status: Option<(Vec<String>, Vec<String>)>,
    priorities: Vec<String>,
    restore_volumes: bool,
    in_place_volumes: bool,
    zone_mapping: BTreeMap<String, String>,
    /// Which restored pods get which hooks, unless their annotations say.
    hooks: crate::hooks::RestoreHookRules,
    modifiers: ResourceModifiers,
    storage_class_mapping: BTreeMap<String, String>,
    preserve_node_ports: bool,
    /// Plan only: create nothing, and say what would happen.
    dry_run: bool,
}

/// What the plan says of a PersistentVolume's disk before anything is created.
#[derive(Debug, Clone)]
enum DiskPlan {
    /// A new disk from `snapshot`, in `zone`; the PV is called `rename` when its name is taken.
    FromSnapshot {
        snapshot: ferry_protocol::volume::NativeSnapshot,
        zone: String,
        rename: Option<String>,
    },
    /// A new volume from a CSI snapshot, for the claim in `namespace` (the target namespace).
    FromCsiSnapshot {
        snapshot: ferry_protocol::volume::CsiSnapshot,
        namespace: String,
    },
    Decided(VolumePlan),
}

/// The volume id a dry run's PersistentVolumes point at: the API server checks the object, and
/// no disk is made.
const DRY_RUN_VOLUME_ID: &str = "vol-ferry-dry-run";

/// How many differences a dry run's "would update" lists.
const DIFFERENCES_SHOWN: usize = 5;

/// Annotates a restored PersistentVolume that had to be renamed with the name it had.
pub const ORIGINAL_PV_NAME_ANNOTATION: &str = "ferry.dev/original-pv-name";

/// What a restore does with a PersistentVolume's disk, decided before the volume is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VolumePlan {
    /// A new disk was made from the volume's snapshot; the PV points at it, in `zone`, and is
    /// called `rename` when its own name is taken.
    FromSnapshot {
        volume_id: String,
        from_zone: String,
        zone: String,
        rename: Option<String>,
    },
    /// The PV is not restored; its claim is provisioned from the VolumeSnapshot `volume_snapshot`
    /// (beside it), which the restore made from the backup's CSI snapshot.
    FromCsiSnapshot {
        volume_snapshot: String,
        restore_size: Option<i64>,
    },
    /// The PV is not restored; its claim gets a new volume from its StorageClass.
    Skip(String),
    Fail(String),
}

async fn validate(restore: &Restore, ctx: &Context) -> Result<Result<Plan, Vec<String>>> {
    let spec = &restore.spec;
    let mut problems = Vec::new();
    let backups: Api<Backup> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let backup = if spec.backup_name.is_empty() {
        problems.push("backupName is required".to_owned());
        None
    } else {
        match backups.get_opt(&spec.backup_name).await? {
            None => {
                problems.push(format!(
                    "backup {:?} not found in namespace {}; `ferry backup get` lists them",
                    spec.backup_name, ctx.namespace
                ));
                None
            }
            Some(backup) => {
                let phase = backup.status.as_ref().and_then(|s| s.phase);
                if !matches!(phase, Some(Phase::Completed | Phase::PartiallyFailed)) {
                    problems.push(format!(
                        "backup {} is {phase:?}; only Completed or PartiallyFailed backups can be restored",
                        spec.backup_name
                    ));
                }
                Some(backup)
            }
        }
    };
    if spec.label_selector.is_some() && !spec.or_label_selectors.is_empty() {
        problems.push("labelSelector and orLabelSelectors exclude each other; use one".to_owned());
    }
    let mut selectors = Vec::new();
    for selector in spec.label_selector.iter().chain(&spec.or_label_selectors) {
        match parse_selector(selector) {
            Ok(selector) => selectors.push(selector),
            Err(problem) => problems.push(problem),
        }
    }
    for (from, to) in &spec.storage_class_mapping {
        if from.is_empty() || to.is_empty() {
            problems.push(format!(
                "storageClassMapping {from:?}: {to:?}: both StorageClass names are needed"
            ));
        }
    }
    let modifiers = match &spec.resource_modifier {
        None => ResourceModifiers::default(),
        Some(reference) => match resource_modifiers(ctx, reference).await? {
            Ok(modifiers) => modifiers,
            Err(modifier_problems) => {
                problems.extend(modifier_problems);
                ResourceModifiers::default()
            }
        },
    };
    for (from, to) in &spec.namespace_mapping {
        if !is_dns_label(to) {
            problems.push(format!(
                "namespaceMapping {from}: {to:?} is not a valid namespace name"
            ));
        }
    }
    let hooks = crate::hooks::RestoreHookRules::resolve(spec.hooks.as_ref()).unwrap_or_else(
        |hook_problems| {
            problems.extend(hook_problems);
            Default::default()
        },
    );
    let location = match &backup {
        Some(backup) => match ctx
            .locations
            .storage_location(backup.spec.storage_location.as_deref())
            .await
        {
            Ok(location) => Some(location),
            Err(Error::NotFound { what }) => {
                problems.push(format!("the backup's storage location: {what} not found"));
                None
            }
            Err(error) => return Err(error),
        },
        None => None,
    };
    let (Some(location), true) = (location, problems.is_empty()) else {
        return Ok(Err(problems));
    };
    Ok(Ok(Plan {
        backup_name: spec.backup_name.clone(),
        store: ctx.locations.object_store(&location).await?,
        location,
        namespaces: IncludesExcludes::new(&spec.included_namespaces, &spec.excluded_namespaces),
        named_namespaces: spec.included_namespaces.clone(),
        included_resources: spec.included_resources.clone(),
        excluded_resources: spec.excluded_resources.clone(),
        include_cluster_resources: spec.include_cluster_resources,
        mapping: spec.namespace_mapping.clone(),
        selectors,
        policy: spec.existing_resource_policy.unwrap_or_default(),
        restore_status: spec
            .restore_status
            .as_ref()
            .map(|s| (s.included_resources.clone(), s.excluded_resources.clone())),
        priorities: if spec.resource_priorities.is_empty() {
            DEFAULT_PRIORITIES.iter().map(|p| (*p).to_owned()).collect()
        } else {
            spec.resource_priorities.clone()
        },
        restore_volumes: spec.restore_pvs != Some(false),
        in_place_volumes: spec.in_place_volumes,
        zone_mapping: spec.availability_zone_mapping.clone(),
        hooks,
        modifiers,
        storage_class_mapping: spec.storage_class_mapping.clone(),
        preserve_node_ports: spec.preserve_node_ports == Some(true),
        dry_run: spec.dry_run,
    }))
}

/// The rules of the ConfigMap a Restore names, or what is wrong with them.
async fn resource_modifiers(
    ctx: &Context,
    reference: &ferry_protocol::crd::ResourceModifierRef,
) -> Result<Result<ResourceModifiers, Vec<String>>> {
    if !reference.kind.eq_ignore_ascii_case("configmap") {
        return Ok(Err(vec![format!(
            "resourceModifier: kind {:?} is not supported; the rules live in a ConfigMap",
            reference.kind
        )]));
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    Ok(match config_maps.get_opt(&reference.name).await? {
        None => Err(vec![format!(
            "resourceModifier: ConfigMap {} not found in namespace {}; create it with `kubectl create configmap {} --from-file=rules.yaml -n {}`",
            reference.name, ctx.namespace, reference.name, ctx.namespace
        )]),
        Some(config_map) => ResourceModifiers::from_config_map(&config_map),
    })
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

async fn run(restore: &Restore, ctx: &Context) -> Result<()> {
    let plan = match validate(restore, ctx).await? {
        Ok(plan) => plan,
        Err(problems) => return operation::reject(restore, ctx, problems).await,
    };
    let mut status = RestoreStatus {
        phase: Some(Phase::InProgress),
        start_timestamp: Some(Time(ctx.now())),
        progress: Some(Progress::default()),
        ..Default::default()
    };
    operation::start(
        restore,
        ctx,
        &status,
        format!("restoring backup {}", plan.backup_name),
    )
    .await?;

    let backup_keys = BackupKeys::new(plan.store.prefix(), &plan.backup_name);
    // A malformed or crafted archive fails here, before a single object is created.
    let archive = Archive::read(plan.store.get_reader(&backup_keys.archive()).await?).await?;
    // Backups of Ferry before volume snapshots, and backups without volumes, have no records.
    let volumes: VolumeRecords = match plan.store.get(&backup_keys.volumes()).await {
        Ok(data) => crate::gunzip_json(&data)?,
        Err(Error::NotFound { .. }) => VolumeRecords::default(),
        Err(error) => return Err(error),
    };
    let archived_pods: Vec<Value> = archive
        .items(&GroupResource::new("pods", ""))
        .filter_map(|item| archive.object(item).ok())
        .collect();
    let volumes = moved_data_through_pods(volumes, &archived_pods);
    // The node agents will need the repositories' password: without it (a new cluster whose user
    // has not brought it yet), fail now, before any pod is created to wait for its volumes.
    let fill_candidates = if plan.restore_volumes {
        fill::filled_claims(&volumes.volumes)
    } else {
        BTreeSet::new()
    };
    let by_agents = !fill_candidates.is_empty()
        || volumes
            .volumes
            .iter()
            .any(|r| r.method == VolumeMethod::FileSystem && r.phase == VolumePhase::Completed);
    if plan.restore_volumes && by_agents {
        crate::agents::repository_password(&ctx.locations, &plan.location).await?;
    }
    let mut run = Run {
        restore,
        ctx,
        plan: &plan,
        archive: &archive,
        status: status.clone(),
        results: Vec::new(),
        volumes: &volumes,
        fill_candidates: &fill_candidates,
        filled_claims: BTreeSet::new(),
        volume_plans: BTreeMap::new(),
        pod_volumes: Vec::new(),
        running_pods: BTreeSet::new(),
        exec_hook_candidates: BTreeSet::new(),
        exec_hook_pods: BTreeMap::new(),
        hook_problems: Vec::new(),
        notes: BTreeMap::new(),
        not_yet: NotYet::default(),
    };
    let selected = run.select()?;
    status.progress = Some(Progress {
        items_total: selected.iter().map(|(_, items)| items.len() as u64).sum(),
        items_done: 0,
    });
    run.status = status.clone();
    run.find_running_pods().await?;
    run.restore_tiers(selected).await?;
    run.create_fill_pods().await?;

    let results = std::mem::take(&mut run.results);
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count() as u64;
    let errors = count(|o| matches!(o, Outcome::Failed(_)));
    let warnings = count(|o| matches!(o, Outcome::ExistsDifferent(_)));
    status = run.status;
    status.errors = u32::try_from(errors).unwrap_or(u32::MAX);
    status.warnings = u32::try_from(warnings).unwrap_or(u32::MAX);
    if let Some(progress) = status.progress.as_mut() {
        progress.items_done = results.len() as u64;
    }
    let keys = RestoreKeys::new(plan.store.prefix(), &restore.name_any());
    plan.store
        .put(&keys.results(), crate::gzip_json(&results)?)
        .await?;
    if !run.hook_problems.is_empty() {
        status.warnings += u32::try_from(run.hook_problems.len()).unwrap_or(u32::MAX);
        hooks::append_log(&plan.store, &keys.logs(), &run.hook_problems).await?;
    }
    if plan.dry_run {
        status.conclude(ctx.now());
        let note = format!(
            "dry run of backup {}: {} objects would be created, {} updated, {} exist unchanged, {} differ, {} skipped, {} fail",
            plan.backup_name,
            count(|o| *o == Outcome::WouldCreate),
            count(|o| matches!(o, Outcome::WouldUpdate(_))),
            count(|o| *o == Outcome::ExistsUnchanged),
            count(|o| matches!(o, Outcome::ExistsDifferent(_))),
            count(|o| matches!(o, Outcome::Skipped(_))),
            errors,
        );
        return operation::end(restore, ctx, &status, &[], note).await;
    }
    let pending_hooks = hooks::pending(&run.exec_hook_pods);
    let pod_volumes = std::mem::take(&mut run.pod_volumes);
    if !pod_volumes.is_empty() || !pending_hooks.is_empty() {
        // The objects are there; the agents fill the pods' volumes once the pods are scheduled,
        // and the exec hooks run once their containers are up.
        if !pod_volumes.is_empty() {
            let mut records = VolumeRecords::new(pod_volumes);
            volume_tracker(restore, ctx, &plan.location, &plan.store)
                .begin(&mut records)
                .await?;
            status.pod_volumes = volumes::pod_volume_progress(ctx, &records);
        }
        status.exec_hooks_pending = pending_hooks;
        status.phase = Some(Phase::WaitingForVolumes);
        ctx.apply_status(restore, &status).await?;
        return Ok(());
    }
    status.conclude(ctx.now());
    let note = format!(
        "{} objects from backup {}: {} errors, {} warnings",
        results.len(),
        plan.backup_name,
        errors,
        warnings
    );
    operation::end(restore, ctx, &status, &[], note).await
}

struct Run<'a> {
    restore: &'a Restore,
    ctx: &'a Context,
    plan: &'a Plan,
    archive: &'a Archive,
    status: RestoreStatus,
    results: Vec<ItemResult>,
    volumes: &'a VolumeRecords,
    /// The claims (namespace in the backup, name) whose moved data comes back through a fill
    /// pod, if this restore creates them ([`fill::filled_claims`]).
    fill_candidates: &'a BTreeSet<(String, String)>,
    /// Those of them this restore created (claims come before pods): a fill pod holds each for
    /// its agent to fill, and the pods that use one wait for it.
    filled_claims: BTreeSet<(String, String)>,
    /// By PersistentVolume name, for the PVs (and then PVCs) this restore creates.
    volume_plans: BTreeMap<String, VolumePlan>,
    /// Volumes of restored pods that the node agents fill from the repository.
    pod_volumes: Vec<VolumeRecord>,
    /// With inPlaceVolumes: the archived pods (namespace in the backup, name) that run in the
    /// cluster now, on a node.
    running_pods: BTreeSet<(String, String)>,
    /// Archived pods (namespace in the backup, name) that have exec hooks.
    exec_hook_candidates: BTreeSet<(String, String)>,
    /// Those of them this restore created, to `namespace/name` as restored.
    exec_hook_pods: BTreeMap<(String, String), String>,
    /// Pods whose hooks could not be read, one line each.
    hook_problems: Vec<String>,
    /// What the results will say of an object besides its outcome, by archive path.
    notes: BTreeMap<String, Vec<String>>,
    /// A dry run's: the target namespaces that do not exist (objects in them cannot be checked
    /// by the API server) and the resources of CRDs it would create.
    not_yet: NotYet,
}

/// What a dry run cannot ask the API server about, because the restore would create it first.
#[derive(Default)]
struct NotYet {
    namespaces: BTreeSet<String>,
    resources: BTreeSet<GroupResource>,
}

impl Run<'_> {
    /// The archive's items that the spec selects, grouped in tiers in restore order.
    fn select(&mut self) -> Result<Vec<(usize, Vec<ArchiveItem>)>> {
        let plan = self.plan;
        let resource_matches =
            |resource: &GroupResource, includes: &[String], excludes: &[String]| {
                let named = |name: &String| names_resource(name, resource);
                (includes.is_empty() || includes.iter().any(|n| n == "*" || named(n)))
                    && !excludes.iter().any(named)
            };
        let mut tiers: BTreeMap<usize, Vec<ArchiveItem>> = BTreeMap::new();
        for resource in self.archive.resources() {
            if is_never_backed_up(resource)
                || !resource_matches(resource, &plan.included_resources, &plan.excluded_resources)
            {
                continue;
            }
            let tier = plan
                .priorities
                .iter()
                .position(|p| names_resource(p, resource))
                .unwrap_or(plan.priorities.len());
            for item in self.archive.items(resource) {
                let in_scope = match &item.namespace {
                    Some(namespace) => plan.namespaces.matches(namespace),
                    None => self.cluster_item_in_scope(item),
                };
                if in_scope {
                    tiers.entry(tier).or_default().push(item.clone());
                }
            }
        }
        Ok(tiers.into_iter().collect())
    }

    fn cluster_item_in_scope(&self, item: &ArchiveItem) -> bool {
        match self.plan.include_cluster_resources {
            Some(include) => include,
            None if item.resource == GroupResource::new("namespaces", "") => {
                self.plan.namespaces.matches(&item.name)
            }
            // Cluster-scoped objects came into the backup because the namespaces needed them.
            None => true,
        }
    }

    async fn restore_tiers(&mut self, tiers: Vec<(usize, Vec<ArchiveItem>)>) -> Result<()> {
        let mut types = api_resources(&discover(&self.ctx.client).await?);
        let mut last_progress = std::time::Instant::now();
        self.ensure_namespaces(&tiers).await;
        for (_, items) in tiers {
            let crd_tier = items
                .iter()
                .any(|i| i.resource.resource == "customresourcedefinitions");
            let disks = self.plan_volumes(&items).await?;
            self.provision_volumes(disks).await;
            let mut prepared = Vec::with_capacity(items.len());
            for item in items {
                match self.prepare(&item, types.get(&item.resource)) {
                    Ok(Some(object)) => prepared.push((item, object)),
                    Ok(None) => {}
                    Err(reason) => self.record(&item, Outcome::Failed(reason)),
                }
            }
            // A dry run creates no CRD, so the objects of those it would create are planned
            // from the CRD as archived.
            let planned_crds: Vec<(String, CustomResourceDefinition)> = if self.plan.dry_run {
                prepared
                    .iter()
                    .filter(|(item, _)| item.resource.resource == "customresourcedefinitions")
                    .filter_map(|(item, object)| {
                        Some((item.path(), serde_json::from_value(object.clone()).ok()?))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let this = &*self;
            let restored: Vec<(ArchiveItem, Outcome, Vec<String>)> = futures::stream::iter(
                prepared,
            )
            .map(|(item, object)| {
                let served = types.get(&item.resource).cloned();
                async move {
                    let (outcome, notes) = match served {
                        Some(served) => match scope_mismatch(&item, served.namespaced) {
                            Some(reason) => (Outcome::Failed(reason), Vec::new()),
                            None => {
                                let api = served.at(&api_version_of(&object)).clone();
                                this.create(&item, object, &api).await
                            }
                        },
                        None => (
                            Outcome::Failed(format!(
                                "this cluster does not serve {}; restore its CRD or API first",
                                item.resource
                            )),
                            Vec::new(),
                        ),
                    };
                    (item, outcome, notes)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
            for (path, crd) in planned_crds {
                let created = restored.iter().any(|(item, outcome, _)| {
                    item.path() == path && *outcome == Outcome::WouldCreate
                });
                if let (true, Some((group_resource, served))) = (created, crd_api_resource(&crd)) {
                    types.entry(group_resource.clone()).or_insert(served);
                    self.not_yet.resources.insert(group_resource);
                }
            }
            for (item, outcome, notes) in restored {
                self.notes.entry(item.path()).or_default().extend(notes);
                let key = (
                    item.namespace.clone().unwrap_or_default(),
                    item.name.clone(),
                );
                if outcome == Outcome::Created && self.exec_hook_candidates.contains(&key) {
                    let restored_as = format!("{}/{}", self.target_namespace(&key.0), item.name);
                    self.exec_hook_pods.insert(key, restored_as);
                }
                self.record(&item, outcome);
            }
            if crd_tier && !self.plan.dry_run {
                let established = self.await_crds_established().await;
                types = api_resources(&discover(&self.ctx.client).await?);
                // Discovery lags behind the Established condition by a moment; the CRD itself
                // says what it serves, so its objects need not wait for discovery to catch up.
                for crd in &established {
                    if let Some((group_resource, api_resource)) = crd_api_resource(crd) {
                        types.entry(group_resource).or_insert(api_resource);
                    }
                }
            }
            if last_progress.elapsed() >= PROGRESS_INTERVAL {
                last_progress = std::time::Instant::now();
                if let Some(progress) = self.status.progress.as_mut() {
                    progress.items_done = self.results.len() as u64;
                }
                if let Err(error) = self.ctx.apply_status(self.restore, &self.status).await {
                    tracing::warn!(message = "updating restore progress failed", %error);
                }
            }
        }
        Ok(())
    }

    fn record(&mut self, item: &ArchiveItem, outcome: Outcome) {
        if let Outcome::Failed(reason) = &outcome {
            tracing::warn!(message = "restoring an object failed", item = %item.path(), %reason);
        }
        if outcome == Outcome::Created
            && item.resource == GroupResource::new("persistentvolumeclaims", "")
        {
            let claim = (
                item.namespace.clone().unwrap_or_default(),
                item.name.clone(),
            );
            if self.fill_candidates.contains(&claim) {
                self.filled_claims.insert(claim);
            }
        }
        // A Namespace is reported under the name it is restored as, like every namespaced object.
        let name = if item.resource == GroupResource::new("namespaces", "") {
            self.target_namespace(&item.name)
        } else {
            item.name.clone()
        };
        self.results.push(ItemResult {
            resource: item.resource.to_string(),
            namespace: item.namespace.as_ref().map(|ns| self.target_namespace(ns)),
            name,
            outcome,
            notes: self.notes.remove(&item.path()).unwrap_or_default(),
        });
    }

    fn target_namespace(&self, namespace: &str) -> String {
        self.plan
            .mapping
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| namespace.to_owned())
    }

    /// Creates every target namespace the archive does not carry a Namespace object for, so that
    /// a restore filtered to some resources still lands.
    async fn ensure_namespaces(&mut self, tiers: &[(usize, Vec<ArchiveItem>)]) {
        let items = || tiers.iter().flat_map(|(_, items)| items);
        // Those restored from the archive keep their labels and annotations (Pod Security's
        // among them): creating them bare first would leave the archived ones "exists-different".
        let archived: BTreeSet<String> = items()
            .filter(|item| item.resource == GroupResource::new("namespaces", ""))
            .map(|item| self.target_namespace(&item.name))
            .collect();
        let targets: BTreeSet<String> = items()
            .filter_map(|item| item.namespace.as_deref())
            .map(|ns| self.target_namespace(ns))
            .filter(|ns| !archived.contains(ns))
            .collect();
        let namespaces: Api<Namespace> = Api::all(self.ctx.client.clone());
        if self.plan.dry_run {
            let all = targets.iter().chain(&archived);
            for name in all {
                if !matches!(namespaces.get_opt(name).await, Ok(Some(_))) {
                    self.not_yet.namespaces.insert(name.clone());
                }
            }
            return;
        }
        for name in targets {
            let namespace = Namespace {
                metadata: ObjectMeta {
                    name: Some(name),
                    labels: Some(self.labels()),
                    ..Default::default()
                },
                ..Default::default()
            };
            // AlreadyExists is the common case; any other failure shows up on the objects.
            let _ = namespaces.create(&PostParams::default(), &namespace).await;
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (BACKUP_NAME_LABEL.to_owned(), self.plan.backup_name.clone()),
            (RESTORE_NAME_LABEL.to_owned(), self.restore.name_any()),
        ])
    }

    /// The object as it will be created, or None when the label selector leaves it out or an
    /// action skips it (recorded as skipped). The actions plan; the tasks they ask for are
    /// recorded here.
    fn prepare(
        &mut self,
        item: &ArchiveItem,
        served: Option<&Served>,
    ) -> Result<Option<Value>, String> {
        let mut object = self.archive.object(item).map_err(|e| e.to_string())?;
        if let Some(served) = served {
            let archived = api_version_of(&object);
            let held: Vec<&str> = self.archive.other_versions(item).collect();
            if let Some(version) = choose_version(&archived, &held, served).map_err(|held_at| {
                format!(
                    "this cluster serves {} at {}, and the backup holds it at {}: restore it into a cluster that serves one of those",
                    item.resource,
                    served.versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>().join(", "),
                    held_at.join(", ")
                )
            })? {
                object = self
                    .archive
                    .object_at(item, Some(&version))
                    .map_err(|e| e.to_string())?;
            }
        }
        if !self.plan.selectors.is_empty() {
            let labels = labels_of(&object);
            if !self.plan.selectors.iter().any(|s| s.matches(&labels)) {
                return Ok(None);
            }
        }
        let keep_status = self
            .plan
            .restore_status
            .as_ref()
            .is_some_and(|(includes, excludes)| {
                (includes
                    .iter()
                    .any(|n| n == "*" || names_resource(n, &item.resource)))
                    && !excludes.iter().any(|n| names_resource(n, &item.resource))
            });
        let in_archive = |resource: &GroupResource, name: &str| {
            self.archive.items(resource).any(|i| i.name == name)
        };
        let marker = restore_marker(self.restore);
        let labels = self.labels();
        let scope = actions::Scope {
            namespace_mapping: &self.plan.mapping,
            keep_status,
            in_archive: &in_archive,
            volume_plans: &self.volume_plans,
            backup_volumes: &self.volumes.volumes,
            filled_claims: &self.filled_claims,
            restore_volumes: self.plan.restore_volumes,
            running_pods: self.plan.in_place_volumes.then_some(&self.running_pods),
            marker: &marker,
            labels: &labels,
            named_resources: &self.plan.included_resources,
            named_namespaces: &self.plan.named_namespaces,
            ferry_namespace: &self.ctx.namespace,
            hooks: &self.plan.hooks,
            modifiers: &self.plan.modifiers,
            storage_class_mapping: &self.plan.storage_class_mapping,
            preserve_node_ports: self.plan.preserve_node_ports,
        };
        let (verdict, effects) = actions::plan(item, &mut object, &scope);
        match verdict {
            Verdict::Restore => {
                for effect in effects {
                    match effect {
                        Effect::FillPodVolume { record, in_place } => {
                            self.add_pod_volume_task(item, *record, in_place);
                        }
                        Effect::ExecHooks => {
                            self.exec_hook_candidates.insert((
                                item.namespace.clone().unwrap_or_default(),
                                item.name.clone(),
                            ));
                        }
                        Effect::HookProblem(problem) => self.hook_problems.push(format!(
                            "pod {}/{}: {problem}",
                            item.namespace.as_deref().unwrap_or_default(),
                            item.name
                        )),
                    }
                }
                Ok(Some(object))
            }
            Verdict::Skip(reason) => {
                self.record(item, Outcome::Skipped(reason));
                Ok(None)
            }
            Verdict::Fail(reason) => Err(reason),
        }
    }

    /// Creates the object (a dry run asks the API server to check it and keep nothing), or meets
    /// the existing-resource policy when it exists. The notes say what a dry run could not check.
    async fn create(
        &self,
        item: &ArchiveItem,
        object: Value,
        api_resource: &ApiResource,
    ) -> (Outcome, Vec<String>) {
        let object: DynamicObject = match serde_json::from_value(object) {
            Ok(object) => object,
            Err(error) => {
                let reason = format!("not a Kubernetes object: {error}");
                return (Outcome::Failed(reason), Vec::new());
            }
        };
        let api: Api<DynamicObject> = match &object.metadata.namespace {
            Some(ns) => Api::namespaced_with(self.ctx.client.clone(), ns, api_resource),
            None => Api::all_with(self.ctx.client.clone(), api_resource),
        };
        let dry_run = self.plan.dry_run;
        let new_namespace = object
            .metadata
            .namespace
            .as_ref()
            .filter(|ns| self.not_yet.namespaces.contains(*ns));
        let not_checked = match (dry_run, new_namespace) {
            (true, Some(namespace)) => Some(format!(
                "not checked by the API server: namespace {namespace} does not exist yet (this restore creates it)"
            )),
            _ if dry_run && self.not_yet.resources.contains(&item.resource) => Some(format!(
                "not checked by the API server: this restore creates the CRD of {} first",
                item.resource
            )),
            _ => None,
        };
        if let Some(note) = not_checked {
            return (Outcome::WouldCreate, vec![note]);
        }
        let params = PostParams {
            dry_run,
            ..Default::default()
        };
        let outcome = match api.create(&params, &object).await {
            Ok(_) if dry_run => Outcome::WouldCreate,
            Ok(_) => Outcome::Created,
            Err(kube::Error::Api(status)) if status.code == 409 => {
                self.resolve_existing(&api, item, &object).await
            }
            Err(kube::Error::Api(status)) => Outcome::Failed(status.message),
            Err(error) => Outcome::Failed(error.to_string()),
        };
        (outcome, Vec::new())
    }

    async fn resolve_existing(
        &self,
        api: &Api<DynamicObject>,
        item: &ArchiveItem,
        object: &DynamicObject,
    ) -> Outcome {
        let existing = match api.get(&item.name).await {
            Ok(existing) => existing,
            Err(error) => {
                return Outcome::Failed(format!("exists, but reading it failed: {error}"));
            }
        };
        let wanted = serde_json::to_value(object).unwrap_or_default();
        let current = serde_json::to_value(&existing).unwrap_or_default();
        let difference = first_difference(&without_restore_labels(&wanted), &current, "");
        let Some(difference) = difference else {
            return Outcome::ExistsUnchanged;
        };
        match self.plan.policy {
            ExistingResourcePolicy::None => {
                Outcome::ExistsDifferent(format!("differs from the backup at {difference}"))
            }
            ExistingResourcePolicy::Update => {
                let mut params = PatchParams::apply("ferry-restore").force();
                params.dry_run = self.plan.dry_run;
                match api.patch(&item.name, &params, &Patch::Apply(object)).await {
                    Ok(_) if self.plan.dry_run => Outcome::WouldUpdate(format!(
                        "differs from the backup: {}",
                        differences(
                            &without_restore_labels(&wanted),
                            &current,
                            DIFFERENCES_SHOWN
                        )
                        .join("; ")
                    )),
                    Ok(_) => Outcome::Updated,
                    Err(error) => {
                        Outcome::Failed(format!("exists and differs; updating it failed: {error}"))
                    }
                }
            }
        }
    }

    /// Records a task for the agent of the pod's node: fill one of its volumes from the backup.
    fn add_pod_volume_task(&mut self, item: &ArchiveItem, backed_up: VolumeRecord, in_place: bool) {
        let (Some(pod_volume), Some(backup)) = (&backed_up.pod_volume, &backed_up.file_system)
        else {
            return;
        };
        let task = self.pod_volumes.len();
        let namespace = item.namespace.as_deref().unwrap_or_default();
        self.notes.entry(item.path()).or_default().push(format!(
            "volume {}: {} by its node's agent from snapshot {} of repository {}",
            pod_volume.volume,
            if in_place {
                "brought back in place"
            } else {
                "filled"
            },
            backup.snapshot_id.as_deref().unwrap_or("(none)"),
            backup.repository
        ));
        let task_id = format!("{}-{task}", self.restore.uid().unwrap_or_default());
        let pod_volume = PodVolumeRef {
            namespace: self.target_namespace(namespace),
            pod: item.name.clone(),
            volume: pod_volume.volume.clone(),
            node: String::new(),
        };
        if let Some(task) = restore_task(&backed_up, pod_volume, task_id, in_place) {
            self.pod_volumes.push(task);
        }
    }

    /// Makes a fill pod, and a task for its agent, for every claim whose moved data no restored
    /// pod brings back (fill.rs), once the claim itself was created.
    async fn create_fill_pods(&mut self) -> Result<()> {
        if !self.plan.restore_volumes || self.plan.dry_run {
            return Ok(());
        }
        let uid = self.restore.uid().unwrap_or_default();
        for record in &self.volumes.volumes {
            let Some(claim) = &record.claim else { continue };
            if !self
                .filled_claims
                .contains(&(claim.namespace.clone(), claim.name.clone()))
                || record.method == VolumeMethod::FileSystem
            {
                continue;
            }
            let namespace = self.target_namespace(&claim.namespace);
            let Some(archived) = fill::archived_claim(self.archive, record) else {
                continue;
            };
            let task_id = format!("{uid}-{}", self.pod_volumes.len());
            let pod_volume = fill::fill_pod_volume(&uid, &namespace, &claim.name);
            let Some(mut task) = restore_task(record, pod_volume, task_id, false) else {
                continue;
            };
            fill::create_fill_pod(self.ctx, &mut task, &archived, &uid).await?;
            self.pod_volumes.push(task);
        }
        Ok(())
    }

    /// With inPlaceVolumes, notes which archived pods with agent-backed volumes run now.
    async fn find_running_pods(&mut self) -> Result<()> {
        if !self.plan.in_place_volumes {
            return Ok(());
        }
        let pods: BTreeSet<(String, String)> = self
            .volumes
            .volumes
            .iter()
            .filter_map(|r| r.pod_volume.as_ref())
            .map(|p| (p.namespace.clone(), p.pod.clone()))
            .collect();
        for (namespace, pod) in pods {
            let api: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(self.ctx.client.clone(), &self.target_namespace(&namespace));
            let running = api
                .get_opt(&pod)
                .await?
                .and_then(|p| p.spec)
                .and_then(|s| s.node_name)
                .is_some();
            if running {
                self.running_pods.insert((namespace, pod));
            }
        }
        Ok(())
    }

    /// Decides what happens to the disk of every PersistentVolume in `items`, creating nothing: a
    /// PV that exists in the cluster keeps its disk (and meets the existing-resource policy),
    /// unless its claim moves to a mapped namespace: then it is restored under a new name.
    async fn plan_volumes(&self, items: &[ArchiveItem]) -> Result<Vec<(String, DiskPlan)>> {
        let mut disks = Vec::new();
        let pv_resource = GroupResource::new("persistentvolumes", "");
        let pvs: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        for item in items.iter().filter(|i| i.resource == pv_resource) {
            let Ok(object) = self.archive.object(item) else {
                continue; // prepare() reports the unreadable object
            };
            let claim_namespace = object
                .pointer("/spec/claimRef/namespace")
                .and_then(Value::as_str);
            let remapped = claim_namespace.is_some_and(|ns| self.plan.mapping.contains_key(ns));
            let exists = pvs.get_opt(&item.name).await?.is_some();
            if exists && !remapped {
                continue;
            }
            if let Some(snapshot) = self.volumes.completed_csi_snapshot(&item.name) {
                let plan = match claim_namespace {
                    _ if !self.plan.restore_volumes => VolumePlan::Skip(
                        "restorePVs is false; its claim gets a new, empty volume from its StorageClass"
                            .to_owned(),
                    ),
                    Some(namespace) => {
                        disks.push((
                            item.name.clone(),
                            DiskPlan::FromCsiSnapshot {
                                snapshot: snapshot.clone(),
                                namespace: self.target_namespace(namespace),
                            },
                        ));
                        continue;
                    }
                    None => VolumePlan::Fail(
                        "its CSI snapshot is restored through a claim, and the volume was bound to none"
                            .to_owned(),
                    ),
                };
                disks.push((item.name.clone(), DiskPlan::Decided(plan)));
                continue;
            }
            let plan = match self.volumes.completed_snapshot(&item.name) {
                Some(_) if !self.plan.restore_volumes => VolumePlan::Skip(
                    "restorePVs is false; its claim gets a new volume from its StorageClass"
                        .to_owned(),
                ),
                Some(snapshot) => {
                    let zone = self
                        .plan
                        .zone_mapping
                        .get(&snapshot.availability_zone)
                        .cloned()
                        .unwrap_or_else(|| snapshot.availability_zone.clone());
                    disks.push((
                        item.name.clone(),
                        DiskPlan::FromSnapshot {
                            snapshot: snapshot.clone(),
                            zone,
                            rename: exists.then(|| renamed_pv(&item.name, self.restore)),
                        },
                    ));
                    continue;
                }
                None if self.moved_without_pod(&item.name) => VolumePlan::Skip(
                    if self.plan.restore_volumes {
                        "its data was moved into the repository: its claim gets a new volume from its StorageClass, which a fill pod holds while the node agent fills it"
                    } else {
                        "restorePVs is false; its claim gets a new, empty volume from its StorageClass"
                    }
                    .to_owned(),
                ),
                None => {
                    let recorded = self
                        .volumes
                        .volumes
                        .iter()
                        .any(|r| r.persistent_volume == item.name);
                    let reclaim = object
                        .pointer("/spec/persistentVolumeReclaimPolicy")
                        .and_then(Value::as_str);
                    let by_agents = self
                        .volumes
                        .volumes
                        .iter()
                        .any(|r| r.persistent_volume == item.name && r.file_system.is_some());
                    let class = object
                        .pointer("/spec/storageClassName")
                        .and_then(Value::as_str)
                        .map(|class| {
                            self.plan
                                .storage_class_mapping
                                .get(class)
                                .map_or(class, String::as_str)
                        });
                    let provisioner = match class {
                        Some(class) if by_agents && !exists => self.provisioner_of(class).await?,
                        _ => None,
                    };
                    let facts = VolumeFacts {
                        exists,
                        remapped,
                        recorded,
                        by_agents,
                        reclaim,
                        class,
                        provisioner: provisioner.as_deref(),
                    };
                    match plan_without_snapshot(&item.name, &facts) {
                        Some(plan) => plan,
                        None => continue,
                    }
                }
            };
            disks.push((item.name.clone(), DiskPlan::Decided(plan)));
        }
        Ok(disks)
    }

    /// Whether PersistentVolume `name`'s data was moved into the repository and no archived pod
    /// mounts its claim ([`fill::moved_without_pod`]).
    fn moved_without_pod(&self, name: &str) -> bool {
        fill::moved_without_pod(&self.volumes.volumes).any(|r| r.persistent_volume == name)
    }

    /// The provisioner of StorageClass `class` in this cluster, if it has that class.
    async fn provisioner_of(&self, class: &str) -> Result<Option<String>> {
        let classes: Api<StorageClass> = Api::all(self.ctx.client.clone());
        Ok(classes.get_opt(class).await?.map(|c| c.provisioner))
    }

    /// Carries out the plans of [`Run::plan_volumes`]: creates the disks that come from snapshots,
    /// and records what each PersistentVolume will point at.
    async fn provision_volumes(&mut self, disks: Vec<(String, DiskPlan)>) {
        for (name, disk) in disks {
            let plan =
                match disk {
                    DiskPlan::Decided(plan) => plan,
                    DiskPlan::FromCsiSnapshot {
                        snapshot,
                        namespace,
                    } => {
                        self.volume_from_csi_snapshot(&name, &snapshot, &namespace)
                            .await
                    }
                    DiskPlan::FromSnapshot {
                        snapshot,
                        zone,
                        rename,
                    } if self.plan.dry_run => {
                        self.note_pv(
                            &name,
                            format!(
                                "its disk: a new volume from snapshot {} in zone {zone}",
                                snapshot.snapshot_id
                            ),
                        );
                        VolumePlan::FromSnapshot {
                            volume_id: DRY_RUN_VOLUME_ID.to_owned(),
                            from_zone: snapshot.availability_zone.clone(),
                            zone,
                            rename,
                        }
                    }
                    DiskPlan::FromSnapshot {
                        snapshot,
                        zone,
                        rename,
                    } => {
                        let plan = self.volume_from_snapshot(&snapshot, zone, rename).await;
                        if let VolumePlan::FromSnapshot {
                            volume_id, zone, ..
                        } = &plan
                        {
                            self.note_pv(&name, format!(
                            "its disk: volume {volume_id}, new from snapshot {} in zone {zone}",
                            snapshot.snapshot_id
                        ));
                        }
                        plan
                    }
                };
            self.volume_plans.insert(name, plan);
        }
    }

    fn note_pv(&mut self, name: &str, note: String) {
        let item = ArchiveItem {
            resource: GroupResource::new("persistentvolumes", ""),
            namespace: None,
            name: name.to_owned(),
        };
        self.notes.entry(item.path()).or_default().push(note);
    }

    /// Makes the VolumeSnapshot that PersistentVolume `name`'s claim, in `namespace`, is
    /// provisioned from: the CSI driver creates the new volume from the backup's snapshot.
    async fn volume_from_csi_snapshot(
        &mut self,
        name: &str,
        snapshot: &ferry_protocol::volume::CsiSnapshot,
        namespace: &str,
    ) -> VolumePlan {
        let uid = self.restore.uid().unwrap_or_default();
        let made = if self.plan.dry_run {
            Ok(volumes::csi::restore_snapshot_name(&uid, name))
        } else {
            volumes::csi::provision_source(self.ctx, snapshot, namespace, &uid, name).await
        };
        match made {
            Ok(volume_snapshot) => {
                self.note_pv(
                    name,
                    format!(
                        "not restored: its claim gets a new volume from CSI snapshot {} (driver {}), through VolumeSnapshot {namespace}/{volume_snapshot}",
                        snapshot.snapshot_handle.as_deref().unwrap_or_default(),
                        snapshot.driver
                    ),
                );
                VolumePlan::FromCsiSnapshot {
                    volume_snapshot,
                    restore_size: snapshot.restore_size,
                }
            }
            Err(why) => VolumePlan::Fail(why),
        }
    }

    /// Creates a disk from `snapshot` in `zone`.
    async fn volume_from_snapshot(
        &self,
        snapshot: &ferry_protocol::volume::NativeSnapshot,
        zone: String,
        rename: Option<String>,
    ) -> VolumePlan {
        let location = match self
            .ctx
            .locations
            .snapshot_locations(std::slice::from_ref(&snapshot.location))
            .await
        {
            Ok(mut locations) => locations.remove(0),
            Err(error) => {
                return VolumePlan::Fail(format!(
                    "{error}; the snapshot {} was taken through it, so restoring the volume needs it",
                    snapshot.snapshot_id
                ));
            }
        };
        let ebs = match self.ctx.locations.ebs(&location).await {
            Ok(ebs) => ebs,
            Err(error) => return VolumePlan::Fail(error.to_string()),
        };
        let mut tags = snapshot.tags.clone();
        tags.insert(ebs::tags::RESTORE.to_owned(), self.restore.name_any());
        tags.insert(ebs::tags::BACKUP.to_owned(), self.plan.backup_name.clone());
        match ebs
            .create_volume(snapshot, &zone, location.spec.kms_key_id.as_deref(), &tags)
            .await
        {
            Ok(volume_id) => {
                tracing::info!(message = "created a volume from a snapshot", snapshot = %snapshot.snapshot_id, volume = %volume_id, %zone);
                VolumePlan::FromSnapshot {
                    volume_id,
                    from_zone: snapshot.availability_zone.clone(),
                    zone,
                    rename,
                }
            }
            Err(error) => VolumePlan::Fail(error.message),
        }
    }

    /// Waits for the CRDs this restore created or found to be Established, and returns those that
    /// are.
    async fn await_crds_established(&self) -> Vec<CustomResourceDefinition> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.ctx.client.clone());
        let names: Vec<String> = self
            .results
            .iter()
            .filter(|r| r.resource == "customresourcedefinitions.apiextensions.k8s.io")
            .filter(|r| {
                matches!(
                    r.outcome,
                    Outcome::Created
                        | Outcome::Updated
                        | Outcome::ExistsUnchanged
                        | Outcome::ExistsDifferent(_)
                )
            })
            .map(|r| r.name.clone())
            .collect();
        let mut established = Vec::with_capacity(names.len());
        for name in names {
            let condition = await_condition(crds.clone(), &name, conditions::is_crd_established());
            match tokio::time::timeout(CRD_ESTABLISHED_TIMEOUT, condition).await {
                Ok(Ok(Some(crd))) => established.push(crd),
                Ok(Ok(None)) => {
                    tracing::warn!(message = "a restored CRD vanished while waiting for it to be established", crd = %name);
                }
                Ok(Err(error)) => {
                    tracing::warn!(message = "watching a restored CRD failed; its objects may fail", crd = %name, %error);
                }
                Err(_) => {
                    tracing::warn!(message = "a restored CRD was not established in time; its objects may fail", crd = %name);
                }
            }
        }
        established
    }
}

/// What a restore knows of a PersistentVolume whose backup holds no snapshot of its disk.
struct VolumeFacts<'a> {
    /// A PersistentVolume of its name is in the cluster.
    exists: bool,
    /// Its claim is restored into another namespace.
    remapped: bool,
    /// The backup has a record of it.
    recorded: bool,
    /// The node agents backed its data up file by file.
    by_agents: bool,
    reclaim: Option<&'a str>,
    /// Its StorageClass in this cluster (after `storageClassMapping`), and that class's
    /// provisioner if the cluster has it.
    class: Option<&'a str>,
    provisioner: Option<&'a str>,
}

/// The provisioner of StorageClasses whose volumes an administrator makes by hand.
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

/// What becomes of such a volume's disk; None: the PersistentVolume is restored as it was,
/// pointing at its disk.
fn plan_without_snapshot(name: &str, facts: &VolumeFacts) -> Option<VolumePlan> {
    if facts.exists && facts.remapped && facts.by_agents {
        // The original claim's disk, in use: the claim restored beside it must never bind it.
        return Some(VolumePlan::Skip(format!(
            "{name} is the disk of the original claim; the claim restored beside it gets a new volume from its StorageClass, which the node agent fills from the backup"
        )));
    }
    if facts.by_agents && !facts.exists && facts.provisioner.is_some_and(|p| p != NO_PROVISIONER) {
        // Its data comes back through the agent, and the old disk may still be in use by the
        // cluster it came from (reclaimPolicy Retain): a new one is provisioned instead.
        return Some(VolumePlan::Skip(format!(
            "its data was backed up file by file; its claim gets a new volume from StorageClass {}, which the node agent fills, and the old disk is left alone",
            facts.class.unwrap_or_default()
        )));
    }
    if facts.recorded && facts.reclaim == Some("Delete") && !facts.exists {
        return Some(VolumePlan::Skip("its disk has no snapshot in the backup and was deleted with the volume (reclaimPolicy Delete); its claim gets a new volume from its StorageClass".to_owned()));
    }
    None
}

/// A snapshot's data moved into the repository comes back as a pod volume's does: through the
/// first archived pod (by name) that mounts its claim, whose restore waits until the agent of its
/// node has filled the new, empty volume. Each such volume gets a record of that pod volume.
fn moved_data_through_pods(mut records: VolumeRecords, pods: &[Value]) -> VolumeRecords {
    let mut through_pods = Vec::new();
    for record in &records.volumes {
        let moved = record.phase == VolumePhase::Completed
            && record.csi_snapshot.as_ref().is_some_and(|s| s.moved());
        let (Some(claim), Some(fs), true) = (&record.claim, &record.file_system, moved) else {
            continue;
        };
        let mounting = pods
            .iter()
            .filter(|pod| {
                pod.pointer("/metadata/namespace").and_then(Value::as_str)
                    == Some(claim.namespace.as_str())
            })
            .filter_map(|pod| {
                let name = pod.pointer("/metadata/name")?.as_str()?;
                let volume = pod
                    .pointer("/spec/volumes")?
                    .as_array()?
                    .iter()
                    .find(|v| {
                        v.pointer("/persistentVolumeClaim/claimName")
                            .and_then(Value::as_str)
                            == Some(claim.name.as_str())
                    })?
                    .get("name")?
                    .as_str()?;
                // A block device cannot be held by the restore-wait init container: such a
                // claim is filled through a fill pod (fill.rs).
                (!uses_as_device(pod, volume)).then(|| (name.to_owned(), volume.to_owned()))
            })
            .min();
        if let Some((pod, volume)) = mounting {
            through_pods.push(VolumeRecord {
                method: VolumeMethod::FileSystem,
                csi_snapshot: None,
                pod_volume: Some(PodVolumeRef {
                    namespace: claim.namespace.clone(),
                    pod,
                    volume,
                    node: String::new(),
                }),
                file_system: Some(fs.clone()),
                ..record.clone()
            });
        }
    }
    records.volumes.extend(through_pods);
    records
}

/// The task that fills `pod_volume` from what `backed_up` holds in the repository (its
/// `fileSystem` record), for the agent of the pod's node; `None` when it holds nothing there.
fn restore_task(
    backed_up: &VolumeRecord,
    pod_volume: PodVolumeRef,
    task_id: String,
    in_place: bool,
) -> Option<VolumeRecord> {
    let backup = backed_up.file_system.as_ref()?;
    Some(VolumeRecord {
        persistent_volume: backed_up.persistent_volume.clone(),
        claim: backed_up.claim.clone(),
        method: VolumeMethod::FileSystem,
        phase: VolumePhase::InProgress,
        message: None,
        snapshot: None,
        csi_snapshot: None,
        pod_volume: Some(pod_volume),
        file_system: Some(FileSystemBackup {
            repository: backup.repository.clone(),
            snapshot_id: backup.snapshot_id.clone(),
            task_id,
            in_place,
            ..Default::default()
        }),
    })
}

/// Whether a container of the pod has its volume `volume` as a block device.
fn uses_as_device(pod: &Value, volume: &str) -> bool {
    ["/spec/containers", "/spec/initContainers"]
        .iter()
        .filter_map(|path| pod.pointer(path)?.as_array())
        .flatten()
        .filter_map(|container| container.get("volumeDevices")?.as_array())
        .flatten()
        .any(|device| device.get("name").and_then(Value::as_str) == Some(volume))
}

/// The name of a PersistentVolume restored beside the one it was backed up from: its name and
/// the restore's uid, within the 253 characters a name may have.
fn renamed_pv(name: &str, restore: &Restore) -> String {
    let uid = restore.uid().unwrap_or_default();
    let suffix: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let keep = 253 - suffix.len() - 1;
    let base: String = name.chars().take(keep).collect();
    format!("{}-{suffix}", base.trim_end_matches(['-', '.']))
}

/// The resource a CRD serves, at its storage version (the version its objects are kept in, so the
/// one every served version converts from).
fn crd_api_resource(crd: &CustomResourceDefinition) -> Option<(GroupResource, Served)> {
    let spec = &crd.spec;
    let version = spec
        .versions
        .iter()
        .find(|v| v.storage && v.served)
        .or_else(|| spec.versions.iter().find(|v| v.served))?;
    let api_resource = ApiResource {
        group: spec.group.clone(),
        version: version.name.clone(),
        api_version: format!("{}/{}", spec.group, version.name),
        kind: spec.names.kind.clone(),
        plural: spec.names.plural.clone(),
    };
    let versions = spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| ApiResource {
            version: v.name.clone(),
            api_version: format!("{}/{}", spec.group, v.name),
            ..api_resource.clone()
        })
        .collect();
    let served = Served {
        api: api_resource,
        versions,
        namespaced: spec.scope == "Namespaced",
    };
    Some((GroupResource::new(&spec.names.plural, &spec.group), served))
}

/// A resource type the cluster serves: how to reach it, at which versions, and its scope.
#[derive(Debug, Clone)]
struct Served {
    /// At the version the cluster prefers.
    api: ApiResource,
    /// At every version it serves, the preferred one first.
    versions: Vec<ApiResource>,
    namespaced: bool,
}

impl Served {
    /// The resource at `api_version` (`group/version`), if served, else at the preferred one.
    fn at(&self, api_version: &str) -> &ApiResource {
        self.versions
            .iter()
            .find(|v| v.api_version == api_version)
            .unwrap_or(&self.api)
    }
}

/// An object's `apiVersion`.
fn api_version_of(object: &Value) -> String {
    object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Which copy of an object to restore: None for the archived preferred one, when the cluster
/// serves its `api_version`; else the other version held (`held`) that the cluster prefers. Err
/// lists the versions the archive holds when the cluster serves none of them.
fn choose_version(
    api_version: &str,
    held: &[&str],
    served: &Served,
) -> std::result::Result<Option<String>, Vec<String>> {
    let version = api_version.rsplit('/').next().unwrap_or_default();
    let serves = |version: &str| served.versions.iter().any(|v| v.version == version);
    if serves(version) || served.versions.is_empty() {
        return Ok(None);
    }
    served
        .versions
        .iter()
        .find(|v| held.contains(&v.version.as_str()))
        .map(|v| Some(v.version.clone()))
        .ok_or_else(|| {
            std::iter::once(version)
                .chain(held.iter().copied())
                .map(str::to_owned)
                .collect()
        })
}

/// Which resource types of the archive the cluster serves, by group and plural name. The
/// object's own apiVersion picks the version at create time.
fn api_resources(types: &[ResourceType]) -> BTreeMap<GroupResource, Served> {
    types
        .iter()
        .map(|t| {
            let served = Served {
                api: t.api.clone(),
                versions: std::iter::once(&t.api)
                    .chain(&t.other_versions)
                    .cloned()
                    .collect(),
                namespaced: t.namespaced(),
            };
            (t.group_resource(), served)
        })
        .collect()
}

/// Why an object whose archive path puts it in a namespace (or not) cannot be restored into a
/// cluster that serves its resource at the other scope; `None` when they agree.
fn scope_mismatch(item: &ArchiveItem, namespaced: bool) -> Option<String> {
    match (&item.namespace, namespaced) {
        (Some(_), true) | (None, false) => None,
        (Some(namespace), false) => Some(format!(
            "its archive path puts it in namespace {namespace}, but this cluster serves {} at cluster scope: refused",
            item.resource
        )),
        (None, true) => Some(format!(
            "its archive path puts it at cluster scope, but this cluster serves {} in namespaces: refused",
            item.resource
        )),
    }
}

fn without_restore_labels(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(labels) = object
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(RESTORE_NAME_LABEL);
    }
    object
}

/// The first place where `wanted` has a value that `current` lacks or differs in, as a JSON
/// pointer; None when `current` holds everything `wanted` does. Fields only `current` has (the
/// cluster's defaults and bookkeeping) do not count.
fn first_difference(wanted: &Value, current: &Value, path: &str) -> Option<String> {
    match (wanted, current) {
        (Value::Object(wanted), Value::Object(current)) => {
            wanted.iter().find_map(|(key, value)| {
                let here = format!("{path}/{key}");
                match current.get(key) {
                    Some(existing) => first_difference(value, existing, &here),
                    None if value.is_null() => None,
                    None => Some(here),
                }
            })
        }
        (Value::Array(wanted), Value::Array(current)) if wanted.len() == current.len() => wanted
            .iter()
            .zip(current)
            .enumerate()
            .find_map(|(i, (w, c))| first_difference(w, c, &format!("{path}/{i}"))),
        (wanted, current) if wanted == current => None,
        _ => Some(if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        }),
    }
}

/// Where `wanted` has a value that `current` lacks or differs in, as `pointer: current -> wanted`,
/// at most `limit` of them and a count of the rest.
fn differences(wanted: &Value, current: &Value, limit: usize) -> Vec<String> {
    fn walk(wanted: &Value, current: Option<&Value>, path: String, out: &mut Vec<String>) {
        match (wanted, current) {
            (Value::Object(wanted), Some(Value::Object(current))) => {
                for (key, value) in wanted {
                    walk(value, current.get(key), format!("{path}/{key}"), out);
                }
            }
            (Value::Object(_), None) if wanted.as_object().is_some_and(|m| m.is_empty()) => {}
            (Value::Null, None) => {}
            (Value::Array(w), Some(Value::Array(c))) if w.len() == c.len() => {
                for (i, (w, c)) in w.iter().zip(c).enumerate() {
                    walk(w, Some(c), format!("{path}/{i}"), out);
                }
            }
            (wanted, Some(current)) if wanted == current => {}
            (wanted, current) => {
                let shown = |v: &Value| {
                    let text = v.to_string();
                    if text.chars().count() > 60 {
                        format!("{}...", text.chars().take(57).collect::<String>())
                    } else {
                        text
                    }
                };
                let path = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                out.push(format!(
                    "{path}: {} -> {}",
                    current.map_or_else(|| "(none)".to_owned(), shown),
                    shown(wanted)
                ));
            }
        }
    }
    let mut all = Vec::new();
    walk(wanted, Some(current), String::new(), &mut all);
    if all.len() > limit {
        let more = all.len() - limit;
        all.truncate(limit);
        all.push(format!("and {more} more"));
    }
    all
}

/// The actions' changes to one object with no volumes, labels or tasks: what the unit tests
/// below look at.
#[cfg(test)]
fn transform(
    object: &mut Value,
    resource: &GroupResource,
    keep_status: bool,
    mapping: &BTreeMap<String, String>,
    in_archive: &dyn Fn(&GroupResource, &str) -> bool,
) {
    // Where the archive would hold it.
    let text = |pointer| object.pointer(pointer).and_then(Value::as_str);
    let item = ArchiveItem {
        resource: resource.clone(),
        namespace: text("/metadata/namespace").map(str::to_owned),
        name: text("/metadata/name").unwrap_or_default().to_owned(),
    };
    actions::testing::with(keep_status, mapping, in_archive, |scope| {
        let (verdict, _) = actions::plan(&item, object, scope);
        assert_eq!(verdict, Verdict::Restore);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_volumes(_: &GroupResource, _: &str) -> bool {
        false
    }

    #[test]
    fn moved_data_comes_back_through_the_first_pod_that_mounts_its_claim() {
        use ferry_protocol::volume::{ClaimRef, CsiSnapshot, DataMover};
        let moved = |claim: &str, deleted: bool| VolumeRecord {
            persistent_volume: format!("pv-{claim}"),
            claim: Some(ClaimRef {
                namespace: "shop".into(),
                name: claim.into(),
            }),
            method: VolumeMethod::CsiSnapshot,
            phase: VolumePhase::Completed,
            message: None,
            snapshot: None,
            csi_snapshot: Some(CsiSnapshot {
                data_mover: Some(DataMover {
                    name: Some("ferry-move-1".into()),
                    cleaned_up: true,
                    snapshot_deleted: deleted,
                }),
                ..Default::default()
            }),
            pod_volume: Some(PodVolumeRef {
                namespace: "ferry-system".into(),
                pod: "ferry-move-1".into(),
                volume: "data".into(),
                node: "n1".into(),
            }),
            file_system: Some(FileSystemBackup {
                repository: "s3://b/repositories/shop".into(),
                snapshot_id: Some("s1".into()),
                ..Default::default()
            }),
        };
        let pod = |namespace: &str, name: &str, claim: &str| {
            json!({"metadata": {"namespace": namespace, "name": name},
                   "spec": {"volumes": [{"name": "scratch", "emptyDir": {}},
                                        {"name": "db", "persistentVolumeClaim": {"claimName": claim}}]}})
        };
        // A pod that has its claim as a block device cannot be filled through.
        let mut device_pod = pod("shop", "a-blocks", "raw");
        device_pod["spec"]["containers"] =
            json!([{"name": "db", "volumeDevices": [{"name": "db", "devicePath": "/dev/db"}]}]);
        let pods = [
            pod("shop", "web-1", "data"),
            pod("shop", "web-0", "data"),
            pod("other", "a", "data"),
            device_pod.clone(),
        ];
        let records = VolumeRecords::new(vec![
            moved("data", true),
            moved("kept", false),
            moved("lonely", true),
            moved("raw", true),
        ]);
        let out = moved_data_through_pods(records, &pods);
        assert_eq!(out.volumes.len(), 5, "{out:?}");
        let added = &out.volumes[4];
        assert_eq!(added.method, VolumeMethod::FileSystem);
        assert_eq!(
            added.pod_volume,
            Some(PodVolumeRef {
                namespace: "shop".into(),
                pod: "web-0".into(),
                volume: "db".into(),
                node: String::new(),
            })
        );
        assert_eq!(
            added.file_system.as_ref().unwrap().snapshot_id.as_deref(),
            Some("s1")
        );
        // A kept snapshot restores as a CSI snapshot; no pod mounts "lonely".
        assert!(out.completed_csi_snapshot("pv-kept").is_some());
        assert!(out.completed_csi_snapshot("pv-data").is_none());
        // "lonely" and the block claim come back through fill pods, and the pod that uses the
        // block claim waits for it; the one filled through its pod does not.
        let filled = fill::filled_claims(&out.volumes);
        let claims = |names: &[&str]| -> BTreeSet<(String, String)> {
            names
                .iter()
                .map(|n| ("shop".to_owned(), (*n).to_owned()))
                .collect()
        };
        assert_eq!(filled, claims(&["lonely", "raw"]));
        assert!(fill::uses_filled_claim(&device_pod, "shop", &filled));
        assert!(!fill::uses_filled_claim(&pods[1], "shop", &filled));
        let mut gated = device_pod.clone();
        fill::gate(&mut gated);
        assert_eq!(
            gated["spec"]["schedulingGates"],
            json!([{"name": fill::FILL_GATE}])
        );
    }

    #[test]
    fn a_crd_serves_its_storage_version() {
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true},
                ],
            },
        }))
        .unwrap();
        let (group_resource, served) = crd_api_resource(&crd).unwrap();
        let api_resource = served.api;
        assert_eq!(group_resource, GroupResource::new("widgets", "example.com"));
        assert_eq!(api_resource.api_version, "example.com/v1");
        assert_eq!(api_resource.kind, "Widget");
        assert_eq!(api_resource.plural, "widgets");
    }

    #[test]
    fn server_fields_status_and_owners_are_stripped_and_namespaces_mapped() {
        let mut object = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "settings", "namespace": "shop", "uid": "u", "resourceVersion": "9",
                "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 3, "managedFields": [],
                "ownerReferences": [{"name": "x"}], "labels": {"app": "shop"}
            },
            "data": {"k": "v"},
            "status": {"x": 1}
        });
        let mapping = BTreeMap::from([("shop".to_owned(), "shop-copy".to_owned())]);
        transform(
            &mut object,
            &GroupResource::new("configmaps", ""),
            false,
            &mapping,
            &no_volumes,
        );
        assert_eq!(
            object,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": "shop-copy", "labels": {"app": "shop"}},
                "data": {"k": "v"}
            })
        );
    }

    #[test]
    fn services_lose_cluster_ips_and_auto_assigned_node_ports() {
        let applied = json!({"spec": {"ports": [{"port": 443, "nodePort": 30443}]}}).to_string();
        let mut service = json!({
            "metadata": {"name": "web", "annotations": {"kubectl.kubernetes.io/last-applied-configuration": applied}},
            "spec": {
                "type": "NodePort", "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"],
                "ports": [{"port": 80, "nodePort": 31234}, {"port": 443, "nodePort": 30443}]
            }
        });
        transform(
            &mut service,
            &GroupResource::new("services", ""),
            false,
            &BTreeMap::new(),
            &no_volumes,
        );
        assert_eq!(service["spec"].get("clusterIP"), None);
        assert_eq!(service["spec"].get("clusterIPs"), None);
        assert_eq!(
            service["spec"]["ports"],
            json!([{"port": 80}, {"port": 443, "nodePort": 30443}])
        );

        let mut headless = json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None"}});
        transform(
            &mut headless,
            &GroupResource::new("services", ""),
            false,
            &BTreeMap::new(),
            &no_volumes,
        );
        assert_eq!(headless["spec"]["clusterIP"], "None");
    }

    #[test]
    fn claims_keep_their_volume_only_when_it_is_restored_too() {
        let claim = json!({
            "metadata": {"name": "data", "namespace": "db", "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
            "spec": {"volumeName": "pv-1"}
        });
        let resource = GroupResource::new("persistentvolumeclaims", "");
        let mut kept = claim.clone();
        transform(&mut kept, &resource, false, &BTreeMap::new(), &|_, name| {
            name == "pv-1"
        });
        assert_eq!(kept["spec"]["volumeName"], "pv-1");
        assert_eq!(kept["metadata"]["annotations"], json!({}));
        let mut dropped = claim;
        transform(
            &mut dropped,
            &resource,
            false,
            &BTreeMap::new(),
            &no_volumes,
        );
        assert_eq!(dropped["spec"].get("volumeName"), None);

        let mut volume = json!({
            "metadata": {"name": "pv-1"},
            "spec": {"claimRef": {"name": "data", "namespace": "db", "uid": "u", "resourceVersion": "1"}}
        });
        let mapping = BTreeMap::from([("db".to_owned(), "db2".to_owned())]);
        transform(
            &mut volume,
            &GroupResource::new("persistentvolumes", ""),
            false,
            &mapping,
            &no_volumes,
        );
        assert_eq!(
            volume["spec"]["claimRef"],
            json!({"name": "data", "namespace": "db2"})
        );
    }

    #[test]
    fn pods_lose_their_node_and_token_volume() {
        let mut pod = json!({
            "metadata": {"name": "p"},
            "spec": {
                "nodeName": "n1",
                "volumes": [{"name": "data"}, {"name": "kube-api-access-x7k2p"}],
                "containers": [{"name": "c", "volumeMounts": [{"name": "data"}, {"name": "kube-api-access-x7k2p"}]}]
            }
        });
        transform(
            &mut pod,
            &GroupResource::new("pods", ""),
            false,
            &BTreeMap::new(),
            &no_volumes,
        );
        assert_eq!(pod["spec"].get("nodeName"), None);
        assert_eq!(pod["spec"]["volumes"], json!([{"name": "data"}]));
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"],
            json!([{"name": "data"}])
        );
    }

    #[test]
    fn finished_and_cluster_issued_objects_are_skipped() {
        let pods = GroupResource::new("pods", "");
        assert!(skip_reason(&pods, &json!({"status": {"phase": "Succeeded"}})).is_some());
        assert!(skip_reason(&pods, &json!({"status": {"phase": "Running"}})).is_none());
        let jobs = GroupResource::new("jobs", "batch");
        assert!(skip_reason(&jobs, &json!({"status": {"completionTime": "t"}})).is_some());
        let secrets = GroupResource::new("secrets", "");
        assert!(
            skip_reason(
                &secrets,
                &json!({"type": "kubernetes.io/service-account-token"})
            )
            .is_some()
        );
        assert!(skip_reason(&secrets, &json!({"type": "Opaque"})).is_none());
    }

    #[test]
    fn differences_ignore_what_only_the_cluster_added() {
        let wanted = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}});
        let same = json!({"metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}}, "data": {"k": "v"}});
        assert_eq!(first_difference(&wanted, &same, ""), None);
        let changed = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "w"}});
        assert_eq!(
            first_difference(&wanted, &changed, "").as_deref(),
            Some("/data/k")
        );
        let missing = json!({"metadata": {"name": "a", "labels": {"x": "1"}}});
        assert_eq!(
            first_difference(&wanted, &missing, "").as_deref(),
            Some("/data")
        );
    }

    #[test]
    fn each_object_comes_back_at_a_version_the_cluster_serves() {
        let at = |version: &str| ApiResource {
            group: "example.com".into(),
            version: version.into(),
            api_version: format!("example.com/{version}"),
            kind: "Widget".into(),
            plural: "widgets".into(),
        };
        let served = Served {
            api: at("v1"),
            versions: vec![at("v1"), at("v1beta1")],
            namespaced: true,
        };
        assert_eq!(
            choose_version("example.com/v1", &["v1beta1"], &served),
            Ok(None)
        );
        assert_eq!(
            choose_version("example.com/v1beta1", &[], &served),
            Ok(None)
        );
        // The source preferred v2, which this cluster does not serve: the v1 copy.
        assert_eq!(
            choose_version("example.com/v2", &["v1beta1", "v1"], &served),
            Ok(Some("v1".to_owned()))
        );
        assert_eq!(
            choose_version("example.com/v3", &["v2"], &served),
            Err(vec!["v3".to_owned(), "v2".to_owned()])
        );
        assert_eq!(served.at("example.com/v1beta1").version, "v1beta1");
        assert_eq!(served.at("example.com/v9").version, "v1");
    }

    #[test]
    fn a_file_level_volume_gets_a_new_disk_where_its_class_provisions_one() {
        let facts = |exists, remapped, provisioner, reclaim| VolumeFacts {
            exists,
            remapped,
            recorded: true,
            by_agents: true,
            reclaim: Some(reclaim),
            class: Some("gp3"),
            provisioner,
        };
        let skipped = |plan: Option<VolumePlan>| matches!(plan, Some(VolumePlan::Skip(_)));
        // A new cluster whose class provisions: a Retain volume does not point at the old disk.
        assert!(skipped(plan_without_snapshot(
            "pv",
            &facts(false, false, Some("ebs.csi.aws.com"), "Retain")
        )));
        // Volumes made by hand (no provisioner, or no such class) keep their PersistentVolume:
        // nothing else would give the claim a disk.
        assert_eq!(
            plan_without_snapshot("pv", &facts(false, false, Some(NO_PROVISIONER), "Retain")),
            None
        );
        assert_eq!(
            plan_without_snapshot("pv", &facts(false, false, None, "Retain")),
            None
        );
        // The PersistentVolume is there: it stays, unless a clone beside it would bind it.
        assert_eq!(
            plan_without_snapshot("pv", &facts(true, false, Some("ebs.csi.aws.com"), "Retain")),
            None
        );
        assert!(skipped(plan_without_snapshot(
            "pv",
            &facts(true, true, None, "Retain")
        )));
        // Without file-level data, a deleted disk is not pointed at either.
        let mut snapshotless = facts(false, false, None, "Delete");
        snapshotless.by_agents = false;
        assert!(skipped(plan_without_snapshot("pv", &snapshotless)));
        snapshotless.reclaim = Some("Retain");
        assert_eq!(plan_without_snapshot("pv", &snapshotless), None);
    }

    #[test]
    fn a_dry_run_lists_what_an_update_would_change() {
        let wanted = json!({"metadata": {"name": "a"}, "spec": {"replicas": 3, "x": {"y": "z"}}, "data": {"k": "v"}});
        let current = json!({"metadata": {"name": "a", "uid": "u"}, "spec": {"replicas": 1}, "data": {"k": "v"}});
        assert_eq!(
            differences(&wanted, &current, 5),
            vec!["/spec/replicas: 1 -> 3", "/spec/x: (none) -> {\"y\":\"z\"}"]
        );
        let many = json!({"a": 1, "b": 2, "c": 3});
        assert_eq!(
            differences(&many, &json!({}), 2),
            vec!["/a: (none) -> 1", "/b: (none) -> 2", "and 1 more"]
        );
        assert!(differences(&wanted, &wanted, 5).is_empty());
    }

    #[test]
    fn default_priorities_put_dependencies_first() {
        let position = |name: &str| DEFAULT_PRIORITIES.iter().position(|p| *p == name).unwrap();
        assert!(
            position("customresourcedefinitions.apiextensions.k8s.io") < position("namespaces")
        );
        assert!(position("persistentvolumes") < position("persistentvolumeclaims"));
        assert!(position("secrets") < position("pods"));
        assert!(names_resource(
            "replicasets.apps",
            &GroupResource::new("replicasets", "apps")
        ));
        assert!(names_resource(
            "Secrets",
            &GroupResource::new("secrets", "")
        ));
    }

    #[test]
    fn namespace_names_are_validated() {
        assert!(is_dns_label("shop-2"));
        for bad in ["", "Shop", "-a", "a-", "a_b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
