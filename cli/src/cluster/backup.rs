//! `ferry backup`: create, get, describe, logs, download and delete Backups.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use ferry_protocol::crd::{Backup, DELETE_REQUESTED_ANNOTATION, Phase, Progress};
use ferry_protocol::layout::BackupKeys;
use ferry_protocol::volume::{VolumeRecord, VolumeRecords};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use super::{
    BackupTemplate, ClusterArgs, Columns, Operated, Shown, block_on, create_and_follow, describe,
    enum_name, get, phase_name, show, time,
};
use crate::{GlobalArgs, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up the objects of some namespaces (or the whole cluster).
    Create {
        name: String,
        #[command(flatten)]
        template: Box<BackupTemplate>,
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
                create_and_follow(
                    global,
                    &backups,
                    &Backup::new(&name, template.spec()?),
                    wait,
                )
                .await
            }
            BackupCommand::Get { name } => show(global, &backups, name.as_deref()).await,
            BackupCommand::Describe { name, details } => {
                let backup = get(&backups, &name).await?;
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
                    // The hooks it ran, as its log has them (one line each, `hook pre|post ...`).
                    if let Ok(data) = store.get(&keys.logs()).await {
                        let log = ferry_controller::gunzip(&data)?;
                        let log = String::from_utf8_lossy(&log);
                        super::print_hooks(log.lines().filter(|l| l.starts_with("hook ")));
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupCommand::Logs { name } => {
                let backup = get(&backups, &name).await?;
                let (store, keys) = backup_store(&client, cluster, &backup).await?;
                let log = ferry_controller::gunzip(&store.get(&keys.logs()).await?)?;
                std::io::stdout().write_all(&log)?;
                println!();
                Ok(ExitCode::SUCCESS)
            }
            BackupCommand::Download { name, output_file } => {
                let backup = get(&backups, &name).await?;
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
                get(&backups, &name).await?;
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
            snapshot_of(record),
            record.message.clone().unwrap_or_default(),
        ]);
    }
    println!("{table}");
}

/// The snapshot a volume's record names: an EBS snapshot and its zone, or a CSI snapshot (its
/// handle, or the VolumeSnapshot while it is taken).
fn snapshot_of(record: &VolumeRecord) -> String {
    if let Some(ebs) = &record.snapshot {
        return format!("{} ({})", ebs.snapshot_id, ebs.availability_zone);
    }
    match &record.csi_snapshot {
        Some(csi) => match &csi.snapshot_handle {
            Some(handle) => format!("{handle} ({})", csi.driver),
            None => format!("VolumeSnapshot {}", csi.volume_snapshot),
        },
        None => String::new(),
    }
}

impl Operated for Backup {
    fn state(&self) -> (Option<Phase>, Option<Progress>) {
        let status = self.status.clone().unwrap_or_default();
        (status.phase, status.progress)
    }
}

impl Shown for Backup {
    const NOUN: &str = "backup";
    const COLUMNS: Columns<Backup> = Columns {
        header: &[
            "NAME", "STATUS", "ITEMS", "ERRORS", "WARNINGS", "CREATED", "EXPIRES", "LOCATION",
        ],
        row: backup_row,
    };
}

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

/// The storage location a backup is in, and its keys there.
pub(super) async fn backup_store(
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
