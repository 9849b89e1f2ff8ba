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
        #[arg(long)]
        from_backup: String,
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
                namespace_mappings,
                existing_resource_policy,
                scope,
                restore_volumes,
                availability_zone_mappings,
                in_place_volumes,
                wait,
            } => {
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
                    ..Default::default()
                };
                let name = name.unwrap_or_else(|| {
                    format!(
                        "{from_backup}-{}",
                        jiff::Timestamp::now().strftime("%Y%m%d%H%M%S")
                    )
                });
                create_and_follow(global, &restores, &Restore::new(&name, spec), wait).await
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
    }
    // Its log holds only what its hooks did.
    if let Ok(data) = store.get(&keys.logs()).await {
        let log = ferry_controller::gunzip(&data)?;
        super::print_hooks(String::from_utf8_lossy(&log).lines());
    }
    Ok(())
}
