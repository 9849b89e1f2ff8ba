//! `ferry backup|restore|schedule|location|snapshot-location`: Ferry's resources in a cluster, as
//! `velero` users know them.
//! The commands create and read the resources; the controller does the work. Logs, results and
//! downloads are read from the storage location with the credentials its Secret names, as the
//! controller reads them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use ferry_protocol::crd::{
    Backup, BackupSpec, BackupStorageLocation, BackupStorageLocationSpec,
    DELETE_REQUESTED_ANNOTATION, ExistingResourcePolicy, ObjectStorage, Phase, Progress, Restore,
    RestoreSpec, SCHEDULE_LABEL, Schedule, ScheduleSpec, SecretKeyRef, VolumeSnapshotLocation,
    VolumeSnapshotLocationSpec,
};
use ferry_protocol::layout::{BackupKeys, RestoreKeys};
use ferry_protocol::volume::VolumeRecords;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{GlobalArgs, OutputFormat};

/// Where the cluster is and which namespace Ferry runs in.
#[derive(Debug, Args)]
#[command(next_help_heading = "Cluster options")]
pub struct ClusterArgs {
    /// The kubeconfig file (else $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, env = "KUBECONFIG", global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (else its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace Ferry's controller runs in and keeps its resources in.
    #[arg(
        short = 'n',
        long = "namespace",
        env = "FERRY_NAMESPACE",
        default_value = "ferry-system",
        global = true
    )]
    namespace: String,
}

impl ClusterArgs {
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer()
                .await
                .context("no kubeconfig found: pass --kubeconfig or set KUBECONFIG")?,
        };
        Ok(Client::try_from(config)?)
    }
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up the objects of some namespaces (or the whole cluster).
    Create {
        name: String,
        #[command(flatten)]
        template: BackupTemplate,
        /// Wait until it finishes, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// List backups, or show one.
    Get { name: Option<String> },
    /// Show a backup's spec and status; --details adds what it holds.
    Describe {
        name: String,
        #[arg(long)]
        details: bool,
    },
    /// Print a backup's log.
    Logs { name: String },
    /// Delete a backup: its volume snapshots, its files in the storage location, then the
    /// resource. The controller does it; a running backup is deleted when it ends.
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        confirm: bool,
        /// Return once the deletion is asked for, without waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Download a backup's archive (tar.gz of every object).
    Download {
        name: String,
        /// Where to write it (default: NAME-data.tar.gz).
        #[arg(long)]
        output_file: Option<PathBuf>,
    },
}

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

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Take backups on a cron schedule; each is named SCHEDULE-YYYYMMDDHHMMSS (its time, UTC).
    Create {
        name: String,
        /// When: a cron expression of five fields, minute hour day-of-month month day-of-week,
        /// e.g. "0 1 * * *" for 01:00 every day.
        #[arg(long)]
        schedule: String,
        /// The IANA time zone the schedule is read in, e.g. Europe/Paris (default UTC).
        #[arg(long)]
        time_zone: Option<String>,
        /// Create it paused: no backups until `ferry schedule unpause`.
        #[arg(long)]
        paused: bool,
        /// Wait for the first cron time instead of backing up at once; after an unpause, wait for
        /// the next cron time instead of catching up on one missed while paused.
        #[arg(long)]
        skip_immediately: bool,
        #[command(flatten)]
        template: BackupTemplate,
    },
    /// List schedules, or show one.
    Get { name: Option<String> },
    /// Show a schedule's spec and status, and the backups it took.
    Describe { name: String },
    /// Stop taking backups until unpaused.
    Pause { name: String },
    /// Take backups again.
    Unpause { name: String },
    /// Delete a schedule. The backups it took stay.
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        confirm: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LocationCommand {
    /// Create a BackupStorageLocation (an S3 or S3-compatible bucket).
    Create {
        name: String,
        #[arg(long)]
        bucket: String,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        region: Option<String>,
        /// For S3-compatible stores (MinIO, Ceph...).
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long)]
        force_path_style: bool,
        /// The Secret and key holding an AWS credentials file: SECRET:KEY.
        #[arg(long)]
        credential: Option<String>,
        /// Use it when a backup names no location (the one default: any other is unmarked).
        #[arg(long)]
        default: bool,
        /// How often the node agents' repositories there are pruned (e.g. 1h, 24h); default 1h.
        #[arg(long)]
        repository_maintenance_frequency: Option<String>,
    },
    /// List storage locations and whether they are available.
    Get { name: Option<String> },
    /// Make a location the one that backups naming none use; any other default is unmarked.
    SetDefault { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotLocationCommand {
    /// Create a VolumeSnapshotLocation (EBS snapshots through the EC2 API of one region).
    Create {
        name: String,
        #[arg(long)]
        region: String,
        /// For EC2-compatible endpoints; default AWS's.
        #[arg(long)]
        endpoint: Option<String>,
        /// The Secret and key holding an AWS credentials file: SECRET:KEY.
        #[arg(long)]
        credential: Option<String>,
        /// The KMS key that encrypts volumes restored from snapshots (default: the source's).
        #[arg(long)]
        kms_key_id: Option<String>,
    },
    /// List snapshot locations and whether they are available.
    Get { name: Option<String> },
}

/// What a backup takes and where it goes: `ferry backup create`'s flags, and the template of
/// `ferry schedule create`.
#[derive(Debug, Args)]
pub struct BackupTemplate {
    #[command(flatten)]
    scope: Scope,
    /// How long the backup is kept (e.g. 720h, 30d).
    #[arg(long)]
    ttl: Option<String>,
    /// The storage location (else the default one).
    #[arg(long)]
    storage_location: Option<String>,
    /// Take native snapshots of volumes.
    #[arg(long)]
    snapshot_volumes: Option<bool>,
    /// The VolumeSnapshotLocations to snapshot through (default: every one), comma-separated.
    #[arg(long, value_delimiter = ',')]
    volume_snapshot_locations: Vec<String>,
}

impl BackupTemplate {
    fn spec(self) -> anyhow::Result<BackupSpec> {
        let scope = self.scope;
        Ok(BackupSpec {
            label_selector: scope.label_selector()?,
            included_namespaces: scope.include_namespaces,
            excluded_namespaces: scope.exclude_namespaces,
            included_resources: scope.include_resources,
            excluded_resources: scope.exclude_resources,
            include_cluster_resources: scope.include_cluster_resources,
            ttl: self.ttl,
            storage_location: self.storage_location,
            snapshot_volumes: self.snapshot_volumes,
            volume_snapshot_locations: self.volume_snapshot_locations,
            ..Default::default()
        })
    }
}

/// Which objects: the filters Backup and Restore share.
#[derive(Debug, Args)]
pub struct Scope {
    /// Namespaces to include (default: all), comma-separated; `*` globs allowed.
    #[arg(long, value_delimiter = ',')]
    include_namespaces: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    exclude_namespaces: Vec<String>,
    /// Resources to include, as `resource` or `resource.group` (default: all).
    #[arg(long, value_delimiter = ',')]
    include_resources: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    exclude_resources: Vec<String>,
    /// Only objects with these labels (e.g. app=shop,tier!=cache).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Include cluster-scoped resources (default: what the namespaces need).
    #[arg(long)]
    include_cluster_resources: Option<bool>,
}

impl Scope {
    fn label_selector(&self) -> anyhow::Result<Option<LabelSelector>> {
        self.selector
            .as_deref()
            .map(|text| {
                parse_label_selector(text)
                    .map_err(|problem| anyhow::anyhow!("--selector {text:?}: {problem}"))
            })
            .transpose()
    }
}

/// Parses kubectl's selector syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`,
/// `!a`, comma-separated.
fn parse_label_selector(text: &str) -> Result<LabelSelector, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err("a ')' without its '('".into());
        }
    }
    if depth != 0 {
        return Err("a '(' without its ')'".into());
    }
    terms.push(&text[start..]);
    let expression = |key: &str, operator: &str, values: Option<Vec<String>>| {
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("{key:?} is not a label key"));
        }
        Ok(LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values,
        })
    };
    let mut requirements = Vec::new();
    for term in terms.into_iter().map(str::trim) {
        let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
        let requirement = if let Some(key) = term.strip_prefix('!') {
            expression(key.trim(), "DoesNotExist", None)?
        } else if let Some((key, value)) = term.split_once("!=") {
            expression(key.trim(), "NotIn", Some(vec![value.trim().to_owned()]))?
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            expression(key.trim(), "In", Some(vec![value.trim().to_owned()]))?
        } else if let [key, rest] = words[..] {
            let rest = rest.trim();
            let (operator, list) = if let Some(list) = rest.strip_prefix("notin") {
                ("NotIn", list)
            } else if let Some(list) = rest.strip_prefix("in") {
                ("In", list)
            } else {
                return Err(format!(
                    "{term:?}: expected `in (...)` or `notin (...)` after the key"
                ));
            };
            let list = list
                .trim()
                .strip_prefix('(')
                .and_then(|l| l.strip_suffix(')'))
                .ok_or_else(|| format!("{term:?}: the values go in parentheses"))?;
            let values = list.split(',').map(|v| v.trim().to_owned()).collect();
            expression(key, operator, Some(values))?
        } else {
            expression(term, "Exists", None)?
        };
        requirements.push(requirement);
    }
    let selector = LabelSelector {
        match_expressions: Some(requirements),
        match_labels: None,
    };
    ferry_controller::resources::parse_selector(&selector)?;
    Ok(selector)
}

pub fn run_backup(
    global: &GlobalArgs,
    cluster: &ClusterArgs,
    command: BackupCommand,
) -> anyhow::Result<ExitCode> {
    block_on(async {
        let client = cluster.client().await?;
        let backups: Api<Backup> = Api::namespaced(client.clone(), &cluster.namespace);
        match command {
            BackupCommand::Create {
                name,
                template,
                wait,
            } => {
                let backup = Backup::new(&name, template.spec()?);
                create(&backups, &backup, "backup").await?;
                eprintln!(
                    "backup {name} created; `ferry backup describe {name}` shows how it goes"
                );
                if wait {
                    let done = wait_for(&backups, &name, "backup", |b: &Backup| {
                        let status = b.status.clone().unwrap_or_default();
                        (status.phase, status.progress)
                    })
                    .await?;
                    print_objects(global, std::slice::from_ref(&done), BACKUP_COLUMNS)?;
                    return Ok(exit_code(done.status.and_then(|s| s.phase)));
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupCommand::Get { name } => {
                let list = get_or_list(&backups, name.as_deref()).await?;
                print_objects(global, &list, BACKUP_COLUMNS)?;
                Ok(ExitCode::SUCCESS)
            }
            BackupCommand::Describe { name, details } => {
                let backup = get(&backups, &name, "backup").await?;
                describe(global, &backup)?;
                if details && global.format() == OutputFormat::Text {
                    let (store, keys) = backup_store(&client, cluster, &backup).await?;
                    let list: BTreeMap<String, Vec<String>> =
                        ferry_controller::gunzip_json(&store.get(&keys.resource_list()).await?)?;
                    println!("\nResources:");
                    for (resource, objects) in list {
                        println!("  {resource}:");
                        for object in objects {
                            println!("    - {object}");
                        }
                    }
                    if let Ok(data) = store.get(&keys.volumes()).await {
                        let records: VolumeRecords = ferry_controller::gunzip_json(&data)?;
                        print_volumes(&records);
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupCommand::Logs { name } => {
                let backup = get(&backups, &name, "backup").await?;
                let (store, keys) = backup_store(&client, cluster, &backup).await?;
                let log = ferry_controller::gunzip(&store.get(&keys.logs()).await?)?;
                std::io::stdout().write_all(&log)?;
                println!();
                Ok(ExitCode::SUCCESS)
            }
            BackupCommand::Download { name, output_file } => {
                let backup = get(&backups, &name, "backup").await?;
                let (store, keys) = backup_store(&client, cluster, &backup).await?;
                let path =
                    output_file.unwrap_or_else(|| PathBuf::from(format!("{name}-data.tar.gz")));
                let mut reader = store.get_reader(&keys.archive()).await?;
                let mut file = tokio::fs::File::create(&path)
                    .await
                    .with_context(|| format!("creating {}", path.display()))?;
                let bytes = tokio::io::copy(&mut reader, &mut file).await?;
                file.sync_all().await?;
                eprintln!("wrote {} ({})", path.display(), crate::output::bytes(bytes));
                Ok(ExitCode::SUCCESS)
            }
            BackupCommand::Delete {
                name,
                confirm,
                no_wait,
            } => {
                get(&backups, &name, "backup").await?;
                if !confirm {
                    bail!(
                        "deleting backup {name} removes its snapshots and its files from the storage location for good; pass --confirm to go on"
                    );
                }
                let patch = serde_json::json!({"metadata": {"annotations": {
                    DELETE_REQUESTED_ANNOTATION: jiff::Timestamp::now().to_string(),
                }}});
                backups
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                if no_wait {
                    eprintln!(
                        "deletion of backup {name} requested; the controller deletes it (`ferry backup get {name}` shows how it goes)"
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                wait_for_deletion(&backups, &name).await?;
                eprintln!("deleted backup {name}: its snapshots, its files and the resource");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Waits until the controller has deleted a backup, saying why whenever it is held up.
async fn wait_for_deletion(backups: &Api<Backup>, name: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DELETION_TIMEOUT;
    let mut said = None;
    loop {
        let Some(backup) = backups.get_opt(name).await? else {
            return Ok(());
        };
        let status = backup.status.unwrap_or_default();
        let message = match (status.phase, status.deletion_message) {
            (_, Some(message)) => Some(message),
            (Some(Phase::InProgress), None) => {
                Some("the backup is in progress; it is deleted when it ends".to_owned())
            }
            _ => None,
        };
        if message.is_some() && message != said {
            eprintln!("backup {name}: {}", message.as_deref().unwrap_or_default());
            said = message;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "backup {name} is not deleted yet after {} s{}; the controller keeps trying (`ferry backup get {name}`)",
                DELETION_TIMEOUT.as_secs(),
                said.map(|m| format!(" ({m})")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How long `ferry backup delete` waits for the controller.
const DELETION_TIMEOUT: Duration = Duration::from_secs(300);

fn print_volumes(records: &VolumeRecords) {
    if records.volumes.is_empty() {
        return;
    }
    println!("\nVolumes:");
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header([
        "PERSISTENT VOLUME",
        "CLAIM",
        "METHOD",
        "PHASE",
        "SNAPSHOT",
        "MESSAGE",
    ]);
    for record in &records.volumes {
        table.add_row(vec![
            record.persistent_volume.clone(),
            record
                .claim
                .as_ref()
                .map(|c| format!("{}/{}", c.namespace, c.name))
                .unwrap_or_default(),
            enum_name(&record.method),
            enum_name(&record.phase),
            record
                .snapshot
                .as_ref()
                .map(|s| format!("{} ({})", s.snapshot_id, s.availability_zone))
                .unwrap_or_default(),
            record.message.clone().unwrap_or_default(),
        ]);
    }
    println!("{table}");
}

/// A unit enum's name as its JSON spells it.
fn enum_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
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
                create(&restores, &Restore::new(&name, spec), "restore").await?;
                eprintln!(
                    "restore {name} created; `ferry restore describe {name}` shows how it goes"
                );
                if wait {
                    let done = wait_for(&restores, &name, "restore", |r: &Restore| {
                        let status = r.status.clone().unwrap_or_default();
                        (status.phase, status.progress)
                    })
                    .await?;
                    print_objects(global, std::slice::from_ref(&done), RESTORE_COLUMNS)?;
                    return Ok(exit_code(done.status.and_then(|s| s.phase)));
                }
                Ok(ExitCode::SUCCESS)
            }
            RestoreCommand::Get { name } => {
                let list = get_or_list(&restores, name.as_deref()).await?;
                print_objects(global, &list, RESTORE_COLUMNS)?;
                Ok(ExitCode::SUCCESS)
            }
            RestoreCommand::Describe { name, details } => {
                let restore = get(&restores, &name, "restore").await?;
                describe(global, &restore)?;
                if details && global.format() == OutputFormat::Text {
                    println!("\nObjects:");
                    print_restore_results(&client, cluster, &restore).await?;
                }
                Ok(ExitCode::SUCCESS)
            }
            RestoreCommand::Logs { name } => {
                let restore = get(&restores, &name, "restore").await?;
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

/// Parses `--credential SECRET:KEY`.
fn parse_credential(text: Option<String>) -> anyhow::Result<Option<SecretKeyRef>> {
    let Some(text) = text else {
        return Ok(None);
    };
    match text.split_once(':') {
        Some((name, key)) if !name.is_empty() && !key.is_empty() => Ok(Some(SecretKeyRef {
            name: name.to_owned(),
            key: key.to_owned(),
        })),
        _ => bail!("--credential {text:?}: write SECRET:KEY, e.g. cloud-credentials:cloud"),
    }
}

pub fn run_snapshot_location(
    global: &GlobalArgs,
    cluster: &ClusterArgs,
    command: SnapshotLocationCommand,
) -> anyhow::Result<ExitCode> {
    block_on(async {
        let client = cluster.client().await?;
        let locations: Api<VolumeSnapshotLocation> =
            Api::namespaced(client.clone(), &cluster.namespace);
        match command {
            SnapshotLocationCommand::Create {
                name,
                region,
                endpoint,
                credential,
                kms_key_id,
            } => {
                let spec = VolumeSnapshotLocationSpec {
                    provider: "aws".to_owned(),
                    region: Some(region),
                    endpoint,
                    credential: parse_credential(credential)?,
                    kms_key_id,
                };
                create(
                    &locations,
                    &VolumeSnapshotLocation::new(&name, spec),
                    "snapshot-location",
                )
                .await?;
                eprintln!(
                    "snapshot location {name} created; `ferry snapshot-location get {name}` shows whether it is available"
                );
                Ok(ExitCode::SUCCESS)
            }
            SnapshotLocationCommand::Get { name } => {
                let list = get_or_list(&locations, name.as_deref()).await?;
                print_objects(global, &list, SNAPSHOT_LOCATION_COLUMNS)?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

pub fn run_location(
    global: &GlobalArgs,
    cluster: &ClusterArgs,
    command: LocationCommand,
) -> anyhow::Result<ExitCode> {
    block_on(async {
        let client = cluster.client().await?;
        let locations: Api<BackupStorageLocation> =
            Api::namespaced(client.clone(), &cluster.namespace);
        match command {
            LocationCommand::Create {
                name,
                bucket,
                prefix,
                region,
                endpoint,
                force_path_style,
                credential,
                default,
                repository_maintenance_frequency,
            } => {
                let credential = parse_credential(credential)?;
                if let Some(frequency) = &repository_maintenance_frequency {
                    ferry_controller::parse_duration(frequency).map_err(|error| {
                        anyhow::anyhow!("--repository-maintenance-frequency: {error}")
                    })?;
                }
                let spec = BackupStorageLocationSpec {
                    provider: "aws".to_owned(),
                    object_storage: ObjectStorage {
                        bucket,
                        prefix,
                        ca_bundle: None,
                    },
                    region,
                    endpoint,
                    force_path_style: force_path_style.then_some(true),
                    credential,
                    default,
                    access_mode: None,
                    validation_frequency: None,
                    backup_sync_period: None,
                    repository_maintenance_frequency,
                };
                create(
                    &locations,
                    &BackupStorageLocation::new(&name, spec),
                    "location",
                )
                .await?;
                eprintln!(
                    "location {name} created; `ferry location get {name}` shows whether it is available"
                );
                if default {
                    unmark_other_defaults(&locations, &name).await?;
                }
                Ok(ExitCode::SUCCESS)
            }
            LocationCommand::SetDefault { name } => {
                let patch = serde_json::json!({"spec": {"default": true}});
                locations
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|error| match error {
                        kube::Error::Api(status) if status.code == 404 => anyhow::anyhow!(
                            "no location named {name}; `ferry location get` lists them"
                        ),
                        other => other.into(),
                    })?;
                unmark_other_defaults(&locations, &name).await?;
                eprintln!("location {name} is the default");
                Ok(ExitCode::SUCCESS)
            }
            LocationCommand::Get { name } => {
                let list = get_or_list(&locations, name.as_deref()).await?;
                print_objects(global, &list, LOCATION_COLUMNS)?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Unmarks every default location but `keep`: one default at a time, so that a backup naming no
/// location never lands wherever a list happened to put another first.
async fn unmark_other_defaults(
    locations: &Api<BackupStorageLocation>,
    keep: &str,
) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"default": false}});
    for location in locations.list(&ListParams::default()).await?.items {
        let name = location.name_any();
        if location.spec.default && name != keep {
            locations
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("unmarking the earlier default location {name}"))?;
            eprintln!("location {name} is no longer the default");
        }
    }
    Ok(())
}

pub fn run_schedule(
    global: &GlobalArgs,
    cluster: &ClusterArgs,
    command: ScheduleCommand,
) -> anyhow::Result<ExitCode> {
    block_on(async {
        let client = cluster.client().await?;
        let schedules: Api<Schedule> = Api::namespaced(client.clone(), &cluster.namespace);
        match command {
            ScheduleCommand::Create {
                name,
                schedule,
                time_zone,
                paused,
                skip_immediately,
                template,
            } => {
                if let Err(problems) =
                    ferry_controller::schedule::CronSchedule::parse(&schedule, time_zone.as_deref())
                {
                    bail!("{}", problems.join("; "));
                }
                let spec = ScheduleSpec {
                    schedule,
                    time_zone,
                    template: template.spec()?,
                    paused,
                    skip_immediately,
                };
                create(&schedules, &Schedule::new(&name, spec), "schedule").await?;
                let first = match (paused, skip_immediately) {
                    (true, _) => "it is paused until `ferry schedule unpause`",
                    (false, true) => "its first backup is taken at the first cron time",
                    (false, false) => "its first backup is taken now",
                };
                eprintln!(
                    "schedule {name} created; {first}. `ferry schedule describe {name}` shows its backups"
                );
                Ok(ExitCode::SUCCESS)
            }
            ScheduleCommand::Get { name } => {
                let list = get_or_list(&schedules, name.as_deref()).await?;
                print_objects(global, &list, SCHEDULE_COLUMNS)?;
                Ok(ExitCode::SUCCESS)
            }
            ScheduleCommand::Describe { name } => {
                let schedule = get(&schedules, &name, "schedule").await?;
                describe(global, &schedule)?;
                if global.format() == OutputFormat::Text {
                    let backups: Api<Backup> = Api::namespaced(client.clone(), &cluster.namespace);
                    let selector = format!("{SCHEDULE_LABEL}={name}");
                    let mut taken = backups
                        .list(&ListParams::default().labels(&selector))
                        .await?
                        .items;
                    taken.sort_by_key(|backup| backup.meta().creation_timestamp.clone());
                    println!("\nBackups:");
                    print_objects(global, &taken, BACKUP_COLUMNS)?;
                }
                Ok(ExitCode::SUCCESS)
            }
            ScheduleCommand::Pause { name } => set_paused(&schedules, &name, true).await,
            ScheduleCommand::Unpause { name } => set_paused(&schedules, &name, false).await,
            ScheduleCommand::Delete { name, confirm } => {
                get(&schedules, &name, "schedule").await?;
                if !confirm {
                    bail!(
                        "deleting schedule {name} stops its backups (the backups it took stay); pass --confirm to go on"
                    );
                }
                schedules.delete(&name, &Default::default()).await?;
                eprintln!(
                    "deleted schedule {name}; the backups it took stay (`ferry backup get` lists them, `ferry backup delete` removes one)"
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn set_paused(
    schedules: &Api<Schedule>,
    name: &str,
    paused: bool,
) -> anyhow::Result<ExitCode> {
    let schedule = get(schedules, name, "schedule").await?;
    let patch = serde_json::json!({"spec": {"paused": paused}});
    schedules
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    match (paused, schedule.spec.skip_immediately) {
        (true, _) => eprintln!(
            "schedule {name} paused; no backups are taken until `ferry schedule unpause {name}`"
        ),
        (false, true) => {
            eprintln!("schedule {name} unpaused; its next backup is taken at the next cron time")
        }
        (false, false) => eprintln!(
            "schedule {name} unpaused; if cron times went by while it was paused, one backup catches up on them now"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn block_on<F: Future<Output = anyhow::Result<ExitCode>>>(future: F) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(future)
}

fn exit_code(phase: Option<Phase>) -> ExitCode {
    match phase {
        Some(Phase::Completed) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

async fn create<K>(api: &Api<K>, object: &K, what: &str) -> anyhow::Result<()>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => bail!(
            "a {what} named {} already exists; pick another name",
            object.name_any()
        ),
        Err(kube::Error::Api(status)) if status.code == 404 => bail!(
            "the cluster does not know Ferry's resources: install them with `kubectl apply -k deploy/` ({})",
            status.message
        ),
        Err(error) => Err(error.into()),
    }
}

async fn get<K>(api: &Api<K>, name: &str, what: &str) -> anyhow::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await?
        .with_context(|| format!("no {what} named {name}; `ferry {what} get` lists them"))
}

async fn get_or_list<K>(api: &Api<K>, name: Option<&str>) -> anyhow::Result<Vec<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut list = match name {
        Some(name) => vec![
            api.get_opt(name)
                .await?
                .with_context(|| format!("{name} not found"))?,
        ],
        None => api.list(&ListParams::default()).await?.items,
    };
    list.sort_by_key(|object| object.meta().creation_timestamp.clone());
    Ok(list)
}

/// Polls until the phase is final, with a progress bar for people.
async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    state: impl Fn(&K) -> (Option<Phase>, Option<Progress>),
) -> anyhow::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let bar = indicatif::ProgressBar::new(0);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{elapsed_precise}] [{bar:30}] {pos}/{len} objects",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    loop {
        let object = get(api, name, what).await?;
        let (phase, progress) = state(&object);
        if let Some(progress) = progress {
            bar.set_length(progress.items_total);
            bar.set_position(progress.items_done);
        }
        bar.set_message(format!("{name}: {}", phase_name(phase)));
        if matches!(
            phase,
            Some(
                Phase::Completed | Phase::PartiallyFailed | Phase::Failed | Phase::FailedValidation
            )
        ) {
            bar.finish_and_clear();
            return Ok(object);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn phase_name(phase: Option<Phase>) -> String {
    match phase {
        Some(phase) => enum_name(&phase),
        None => "New".to_owned(),
    }
}

/// Columns of a table and how one object fills them.
struct Columns<K> {
    header: &'static [&'static str],
    row: fn(&K) -> Vec<String>,
}

fn print_objects<K: Serialize>(
    global: &GlobalArgs,
    objects: &[K],
    columns: Columns<K>,
) -> anyhow::Result<()> {
    match global.format() {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(objects)?),
        OutputFormat::Yaml => print!("{}", serde_saphyr::to_string(&objects)?),
        OutputFormat::Text => {
            if objects.is_empty() {
                eprintln!("none found");
                return Ok(());
            }
            let mut table = comfy_table::Table::new();
            table.load_style(comfy_table::presets::NOTHING);
            table.set_header(columns.header);
            for object in objects {
                table.add_row((columns.row)(object));
            }
            println!("{table}");
        }
    }
    Ok(())
}

fn time(time: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    time.map(|t| t.0.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

const BACKUP_COLUMNS: Columns<Backup> = Columns {
    header: &[
        "NAME", "STATUS", "ITEMS", "ERRORS", "WARNINGS", "CREATED", "EXPIRES", "LOCATION",
    ],
    row: backup_row,
};

fn backup_row(backup: &Backup) -> Vec<String> {
    let status = backup.status.clone().unwrap_or_default();
    let progress = status.progress.unwrap_or_default();
    vec![
        backup.name_any(),
        phase_name(status.phase),
        format!("{}/{}", progress.items_done, progress.items_total),
        status.errors.to_string(),
        status.warnings.to_string(),
        time(status.start_timestamp.as_ref()),
        time(status.expiration.as_ref()),
        backup
            .spec
            .storage_location
            .clone()
            .unwrap_or_else(|| "(default)".into()),
    ]
}

const SCHEDULE_COLUMNS: Columns<Schedule> = Columns {
    header: &[
        "NAME",
        "STATUS",
        "SCHEDULE",
        "TIME ZONE",
        "LAST BACKUP",
        "LAST SUCCESSFUL",
        "NEXT RUN",
    ],
    row: schedule_row,
};

fn schedule_row(schedule: &Schedule) -> Vec<String> {
    let status = schedule.status.clone().unwrap_or_default();
    vec![
        schedule.name_any(),
        status
            .phase
            .map(|phase| enum_name(&phase))
            .unwrap_or_else(|| "New".into()),
        schedule.spec.schedule.clone(),
        schedule
            .spec
            .time_zone
            .clone()
            .unwrap_or_else(|| "UTC".into()),
        time(status.last_backup.as_ref()),
        time(status.last_successful_backup.as_ref()),
        time(status.next_run.as_ref()),
    ]
}

const RESTORE_COLUMNS: Columns<Restore> = Columns {
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

const LOCATION_COLUMNS: Columns<BackupStorageLocation> = Columns {
    header: &[
        "NAME",
        "PHASE",
        "BUCKET/PREFIX",
        "DEFAULT",
        "LAST VALIDATED",
        "MESSAGE",
    ],
    row: location_row,
};

fn location_phase(status: &ferry_protocol::crd::LocationStatus) -> String {
    status
        .phase
        .map(|p| enum_name(&p))
        .unwrap_or_else(|| "Unknown".into())
}

const SNAPSHOT_LOCATION_COLUMNS: Columns<VolumeSnapshotLocation> = Columns {
    header: &[
        "NAME",
        "PHASE",
        "REGION",
        "ENDPOINT",
        "LAST VALIDATED",
        "MESSAGE",
    ],
    row: snapshot_location_row,
};

fn snapshot_location_row(location: &VolumeSnapshotLocation) -> Vec<String> {
    let status = location.status.clone().unwrap_or_default();
    vec![
        location.name_any(),
        location_phase(&status),
        location.spec.region.clone().unwrap_or_default(),
        location.spec.endpoint.clone().unwrap_or_default(),
        time(status.last_validation_time.as_ref()),
        status.message.unwrap_or_default(),
    ]
}

fn location_row(location: &BackupStorageLocation) -> Vec<String> {
    let status = location.status.clone().unwrap_or_default();
    let storage = &location.spec.object_storage;
    vec![
        location.name_any(),
        location_phase(&status),
        match &storage.prefix {
            Some(prefix) => format!("{}/{prefix}", storage.bucket),
            None => storage.bucket.clone(),
        },
        location.spec.default.to_string(),
        time(status.last_validation_time.as_ref()),
        status.message.unwrap_or_default(),
    ]
}

fn describe<K: Serialize + ResourceExt>(global: &GlobalArgs, object: &K) -> anyhow::Result<()> {
    let mut value = serde_json::to_value(object)?;
    if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        metadata.remove("managedFields");
    }
    match global.format() {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        _ => print!("{}", serde_saphyr::to_string(&value)?),
    }
    Ok(())
}

/// The storage location a backup is in, and its keys there.
async fn backup_store(
    client: &Client,
    cluster: &ClusterArgs,
    backup: &Backup,
) -> anyhow::Result<(ferry_controller::storage::ObjectStore, BackupKeys)> {
    let locations = ferry_controller::Locations::new(client.clone(), &cluster.namespace);
    let location = locations
        .storage_location(backup.spec.storage_location.as_deref())
        .await?;
    let store = locations.object_store(&location).await?;
    let keys = BackupKeys::new(store.prefix(), &backup.name_any());
    Ok((store, keys))
}

async fn print_restore_results(
    client: &Client,
    cluster: &ClusterArgs,
    restore: &Restore,
) -> anyhow::Result<()> {
    let backups: Api<Backup> = Api::namespaced(client.clone(), &cluster.namespace);
    let backup = get(&backups, &restore.spec.backup_name, "backup").await?;
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_selectors_parse() {
        let selector =
            parse_label_selector("app=shop, tier!=cache,env in (prod, staging),!legacy,owner")
                .unwrap();
        let got: Vec<(String, String, Option<Vec<String>>)> = selector
            .match_expressions
            .unwrap()
            .into_iter()
            .map(|r| (r.key, r.operator, r.values))
            .collect();
        let values = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            got,
            vec![
                ("app".into(), "In".into(), values(&["shop"])),
                ("tier".into(), "NotIn".into(), values(&["cache"])),
                ("env".into(), "In".into(), values(&["prod", "staging"])),
                ("legacy".into(), "DoesNotExist".into(), None),
                ("owner".into(), "Exists".into(), None),
            ]
        );
        for bad in ["a in (b", "a) in", "a between (b)", "a in b", "=b"] {
            assert!(parse_label_selector(bad).is_err(), "{bad} was accepted");
        }
    }
}
