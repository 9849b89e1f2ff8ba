//! `ferry restore`: create, get, describe and read the results of Restores.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use ferry_protocol::crd::{Backup, ExistingResourcePolicy, Phase, Progress, Restore, RestoreSpec};
use ferry_protocol::layout::RestoreKeys;
use kube::{Api, Client, ResourceExt};

use super::backup::backup_store;
use super::{
    ClusterArgs, Columns, Operated, Scope, Shown, block_on, create_and_follow, describe, get,
    phase_name, show, time,
};
use crate::{GlobalArgs, OutputFormat};

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum RestoreCommand {
    /// Restore a backup.
    Create {
        /// The restore's name (default: BACKUP-TIMESTAMP).
        name: Option<String>,
        /// The backup to restore.
        #[arg(
            long,
            required_unless_present = "from_schedule",
            conflicts_with = "from_schedule"
        )]
        from_backup: Option<String>,
        /// Restore the latest completed backup of this schedule.
        #[arg(long)]
        from_schedule: Option<String>,
        /// Restore namespace A into B: A:B, comma-separated or repeated.
        #[arg(long, value_delimiter = ',')]
        namespace_mappings: Vec<String>,
        /// What to do with an object that exists and differs: none (warn) or update.
        #[arg(long, value_parser = ["none", "update"])]
        existing_resource_policy: Option<String>,
        #[command(flatten)]
        scope: Scope,
        /// Restore PersistentVolumes from their snapshots.
        #[arg(long)]
        restore_volumes: Option<bool>,
        /// Create volumes of zone A in zone B: A:B, comma-separated or repeated.
        #[arg(long, value_delimiter = ',')]
        availability_zone_mappings: Vec<String>,
        /// Bring the agent-backed volumes of pods that run now back to the backup's content in
        /// place, fetching only what differs.
        #[arg(long)]
        in_place_volumes: bool,
        /// Restore volumes of StorageClass A with StorageClass B: A:B, comma-separated or
        /// repeated (PVs, PVCs and StatefulSets' volume claim templates).
        #[arg(long, value_delimiter = ',')]
        storage_class_mappings: Vec<String>,
        /// Keep every node port of NodePort and LoadBalancer Services (default: only those in
        /// their last applied configuration).
        #[arg(long)]
        preserve_node_ports: bool,
        /// Restore objects matching any one of these selectors (repeat the flag); exclusive
        /// with --selector.
        #[arg(long, conflicts_with = "selector")]
        or_selector: Vec<String>,
        /// A ConfigMap in Ferry's namespace holding resource modifier rules (Velero's format).
        #[arg(long)]
        resource_modifier_configmap: Option<String>,
        /// Plan only: print what would happen to every object and volume, and create nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        wait: bool,
    },
    /// List restores, or show one.
    Get { name: Option<String> },
    /// Show a restore's spec and status; --details adds the result of every object.
    Describe {
        name: String,
        #[arg(long)]
        details: bool,
    },
    /// Print the result of every object of a restore.
    Logs { name: String },
}

pub fn run_restore(
    global: &GlobalArgs,
    cluster: &ClusterArgs,
    command: RestoreCommand,
) -> anyhow::Result<ExitCode> {
    block_on(async {
        let client = cluster.client().await?;
        let restores: Api<Restore> = Api::namespaced(client.clone(), &cluster.namespace);
        match command {
            RestoreCommand::Create {
                name,
                from_backup,
                from_schedule,
                namespace_mappings,
                existing_resource_policy,
                scope,
                restore_volumes,
                availability_zone_mappings,
                in_place_volumes,
                storage_class_mappings,
                preserve_node_ports,
                or_selector,
                resource_modifier_configmap,
                dry_run,
                wait,
            } => {
                let from_backup = match (from_backup, from_schedule) {
                    (Some(backup), _) => backup,
                    (None, Some(schedule)) => {
                        latest_backup_of(&client, &cluster.namespace, &schedule).await?
                    }
                    (None, None) => {
                        bail!("name the backup (--from-backup) or the schedule (--from-schedule)")
                    }
                };
                let storage_class_mapping = parse_mappings(
                    "--storage-class-mappings",
                    &storage_class_mappings,
                    "gp2:gp3",
                )?;
                let or_label_selectors = or_selector
                    .iter()
                    .map(|text| {
                        super::parse_label_selector(text)
                            .map_err(|problem| anyhow::anyhow!("--or-selector {text:?}: {problem}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let mapping =
                    parse_mappings("--namespace-mappings", &namespace_mappings, "prod:staging")?;
                let zone_mapping = parse_mappings(
                    "--availability-zone-mappings",
                    &availability_zone_mappings,
                    "eu-west-1a:eu-west-1b",
                )?;
                let spec = RestoreSpec {
                    backup_name: from_backup.clone(),
                    included_namespaces: scope.include_namespaces.clone(),
                    excluded_namespaces: scope.exclude_namespaces.clone(),
                    included_resources: scope.include_resources.clone(),
                    excluded_resources: scope.exclude_resources.clone(),
                    include_cluster_resources: scope.include_cluster_resources,
                    namespace_mapping: mapping,
                    label_selector: scope.label_selector()?,
                    existing_resource_policy: match existing_resource_policy.as_deref() {
                        Some("update") => Some(ExistingResourcePolicy::Update),
                        Some(_) => Some(ExistingResourcePolicy::None),
                        None => None,
                    },
                    restore_pvs: restore_volumes,
                    availability_zone_mapping: zone_mapping,
                    in_place_volumes,
                    storage_class_mapping,
                    preserve_node_ports: preserve_node_ports.then_some(true),
                    or_label_selectors,
                    resource_modifier: resource_modifier_configmap.map(|name| {
                        ferry_protocol::crd::ResourceModifierRef {
                            kind: "ConfigMap".to_owned(),
                            name,
                            api_group: None,
                        }
                    }),
                    dry_run,
                    ..Default::default()
                };
                let name = name.unwrap_or_else(|| {
                    format!(
                        "{from_backup}-{}",
                        jiff::Timestamp::now().strftime("%Y%m%d%H%M%S")
                    )
                });
                if !dry_run {
                    return create_and_follow(global, &restores, &Restore::new(&name, spec), wait)
                        .await;
                }
                // A cluster whose Restore CRD predates dry runs would drop the field and
                // restore for real.
                ensure_dry_run_is_known(&client).await?;
                // A plan is read, not followed: wait for it and print it.
                let code =
                    create_and_follow(global, &restores, &Restore::new(&name, spec), true).await?;
                let restore = get(&restores, &name).await?;
                if global.format() == OutputFormat::Text {
                    println!("\nPlan (nothing was created):");
                    print_restore_results(&client, cluster, &restore).await?;
                }
                Ok(code)
            }
            RestoreCommand::Get { name } => show(global, &restores, name.as_deref()).await,
            RestoreCommand::Describe { name, details } => {
                let restore = get(&restores, &name).await?;
                describe(global, &restore)?;
                if details && global.format() == OutputFormat::Text {
                    println!("\nObjects:");
                    print_restore_results(&client, cluster, &restore).await?;
                }
                Ok(ExitCode::SUCCESS)
            }
            RestoreCommand::Logs { name } => {
                let restore = get(&restores, &name).await?;
                print_restore_results(&client, cluster, &restore).await?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Fails unless the cluster's Restore CRD has `spec.dryRun`: the API server drops the fields its
/// schema lacks, and a Restore that lost it would create everything.
async fn ensure_dry_run_is_known(client: &Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "restores.ferry.dev";
    let crd = crds
        .get_opt(name)
        .await?
        .with_context(|| format!("the cluster has no CRD {name}: install Ferry's CRDs with `kubectl apply -f deploy/crds.yaml`"))?;
    let knows = crd.spec.versions.iter().all(|version| {
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.properties.as_ref()?.get("spec")?.properties.as_ref())
            .is_some_and(|spec| spec.contains_key("dryRun"))
    });
    if !knows {
        bail!(
            "the cluster's CRD {name} is older than this ferry and knows no dryRun: the restore would run for real. Update Ferry's CRDs with `kubectl apply -f deploy/crds.yaml` first"
        );
    }
    Ok(())
}

/// The newest Completed backup a schedule made.
async fn latest_backup_of(
    client: &Client,
    namespace: &str,
    schedule: &str,
) -> anyhow::Result<String> {
    let backups: Api<Backup> = Api::namespaced(client.clone(), namespace);
    let params = kube::api::ListParams::default().labels(&format!(
        "{}={schedule}",
        ferry_protocol::crd::SCHEDULE_LABEL
    ));
    let latest = backups
        .list(&params)
        .await?
        .items
        .into_iter()
        .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(Phase::Completed))
        .max_by_key(|b| {
            b.status
                .as_ref()
                .and_then(|s| s.start_timestamp.clone())
                .map(|t| t.0)
        });
    match latest {
        Some(backup) => {
            eprintln!(
                "restoring backup {}, the latest completed backup of schedule {schedule}",
                backup.name_any()
            );
            Ok(backup.name_any())
        }
        None => bail!(
            "schedule {schedule} has no completed backup; `ferry backup get` lists the backups and `ferry schedule get {schedule}` the schedule"
        ),
    }
}

/// Parses `A:B` pairs into a map, naming the flag and an example when one is malformed.
fn parse_mappings(
    flag: &str,
    pairs: &[String],
    example: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut mapping = BTreeMap::new();
    for pair in pairs {
        match pair.split_once(':') {
            Some((from, to)) if !from.is_empty() && !to.is_empty() => {
                mapping.insert(from.to_owned(), to.to_owned());
            }
            _ => bail!("{flag} {pair:?}: write SOURCE:TARGET, e.g. {example}"),
        }
    }
    Ok(mapping)
}

impl Operated for Restore {
    fn state(&self) -> (Option<Phase>, Option<Progress>) {
        let status = self.status.clone().unwrap_or_default();
        (status.phase, status.progress)
    }
}

impl Shown for Restore {
    const NOUN: &str = "restore";
    const COLUMNS: Columns<Restore> = Columns {
        header: &[
            "NAME",
            "BACKUP",
            "STATUS",
            "ITEMS",
            "ERRORS",
            "WARNINGS",
            "STARTED",
            "COMPLETED",
        ],
        row: restore_row,
    };
}

fn restore_row(restore: &Restore) -> Vec<String> {
    let status = restore.status.clone().unwrap_or_default();
    let progress = status.progress.unwrap_or_default();
    vec![
        restore.name_any(),
        restore.spec.backup_name.clone(),
        phase_name(status.phase),
        format!("{}/{}", progress.items_done, progress.items_total),
        status.errors.to_string(),
        status.warnings.to_string(),
        time(status.start_timestamp.as_ref()),
        time(status.completion_timestamp.as_ref()),
    ]
}

async fn print_restore_results(
    client: &Client,
    cluster: &ClusterArgs,
    restore: &Restore,
) -> anyhow::Result<()> {
    let backups: Api<Backup> = Api::namespaced(client.clone(), &cluster.namespace);
    let backup = get(&backups, &restore.spec.backup_name).await?;
    let (store, _) = backup_store(client, cluster, &backup).await?;
    let keys = RestoreKeys::new(store.prefix(), &restore.name_any());
    let results: Vec<serde_json::Value> =
        ferry_controller::gunzip_json(&store.get(&keys.results()).await.with_context(|| {
            format!(
                "restore {} has no results yet (it writes them when it finishes)",
                restore.name_any()
            )
        })?)?;
    for result in results {
        let field = |name: &str| result.get(name).and_then(|v| v.as_str()).unwrap_or("");
        let object = match field("namespace") {
            "" => format!("{} {}", field("resource"), field("name")),
            namespace => format!("{} {namespace}/{}", field("resource"), field("name")),
        };
        match field("reason") {
            "" => println!("{:<16} {object}", field("outcome")),
            reason => println!("{:<16} {object}: {reason}", field("outcome")),
        }
        for note in result
            .get("notes")
            .and_then(|n| n.as_array())
            .into_iter()
            .flatten()
        {
            println!("{:<16}   {}", "", note.as_str().unwrap_or_default());
        }
    }
    // Its log holds only what its hooks did.
    if let Ok(data) = store.get(&keys.logs()).await {
        let log = ferry_controller::gunzip(&data)?;
        super::print_hooks(String::from_utf8_lossy(&log).lines());
    }
    Ok(())
}
