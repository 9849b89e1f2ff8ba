//! `ferry repo ...`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use ferry_mover::{
    CheckOptions, ChunkerParams, InitOptions, PruneOptions, Repository, RetentionPolicy,
};
use serde_json::json;

use crate::output::bytes;
use crate::{GlobalArgs, OutputFormat, read_password};

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a repository.
    Init(InitArgs),
    /// List snapshots.
    Snapshots,
    /// Verify the repository's structure, and with --read-data every stored byte.
    Check {
        #[arg(long)]
        read_data: bool,
    },
    /// Remove snapshots: those named, or those a retention policy does not keep (per host and
    /// path).
    Forget(ForgetArgs),
    /// Remove data no snapshot needs.
    Prune,
    /// Remove stale locks left by processes that died.
    Unlock,
    /// Remove stale locks and prune: of --repo, or of every node agent repository of a storage
    /// location (--location), as the controller's maintenance Job does.
    Maintenance(crate::maintenance_cmd::MaintenanceArgs),
    /// Manage the passwords (key slots) that open the repository.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Minimum chunk size in bytes.
    #[arg(long)]
    chunk_min: Option<u32>,
    /// Average chunk size in bytes.
    #[arg(long)]
    chunk_avg: Option<u32>,
    /// Maximum chunk size in bytes.
    #[arg(long)]
    chunk_max: Option<u32>,
    /// zstd level, 1 to 22.
    #[arg(long, default_value_t = 3)]
    compression_level: i32,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16)]
    pack_size_mib: u64,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Snapshots to remove, by id or unique prefix, even ones that cannot be read (the way out
    /// when a damaged snapshot stops prune). Not with the --keep-* rules.
    #[arg(conflicts_with_all = ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly"])]
    snapshots: Vec<String>,
    #[arg(long, default_value_t = 0)]
    keep_last: u32,
    #[arg(long, default_value_t = 0)]
    keep_hourly: u32,
    #[arg(long, default_value_t = 0)]
    keep_daily: u32,
    #[arg(long, default_value_t = 0)]
    keep_weekly: u32,
    #[arg(long, default_value_t = 0)]
    keep_monthly: u32,
    /// Prune right after.
    #[arg(long)]
    prune: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a password (from --new-password-file or FERRY_NEW_PASSWORD).
    Add(NewPassword),
    /// Remove a key slot by id (or unique prefix).
    Remove {
        id: String,
    },
    /// Replace the current password.
    Passwd(NewPassword),
    List,
}

#[derive(Debug, Args)]
pub struct NewPassword {
    #[arg(long, env = "FERRY_NEW_PASSWORD_FILE")]
    new_password_file: Option<PathBuf>,
}

impl NewPassword {
    fn read(&self) -> anyhow::Result<Vec<u8>> {
        read_password(
            self.new_password_file.as_deref(),
            "FERRY_NEW_PASSWORD",
            "--new-password-file",
        )
    }
}

pub fn run(
    global: &GlobalArgs,
    cluster: &crate::cluster::ClusterArgs,
    command: RepoCommand,
) -> anyhow::Result<ExitCode> {
    // JSON is valid YAML: -o yaml gets it too.
    let json = global.format() != OutputFormat::Text;
    match command {
        RepoCommand::Init(args) => {
            let defaults = ChunkerParams::default();
            let options = InitOptions {
                chunker: ChunkerParams {
                    min_size: args.chunk_min.unwrap_or(defaults.min_size),
                    avg_size: args.chunk_avg.unwrap_or(defaults.avg_size),
                    max_size: args.chunk_max.unwrap_or(defaults.max_size),
                },
                zstd_level: args.compression_level,
                pack_size: args.pack_size_mib * 1024 * 1024,
                ..InitOptions::default()
            };
            let password = global.password()?;
            let backend = global.backend()?;
            let location = backend.location();
            let repo = Repository::init(backend, &password, &options)?;
            if json {
                println!(
                    "{}",
                    json!({"repository": location, "id": repo.config().id, "config": repo.config()})
                );
            } else {
                let c = repo.config().chunker;
                println!(
                    "created repository {} at {location} (chunks {}/{}/{} bytes, zstd {})",
                    repo.config().id.short(),
                    c.min_size,
                    c.avg_size,
                    c.max_size,
                    repo.config().zstd_level
                );
            }
        }
        RepoCommand::Snapshots => {
            let repo = global.open()?;
            let listing = repo.list_snapshots()?;
            for (id, error) in &listing.damaged {
                eprintln!("warning: snapshot {} cannot be read: {error}", id.short());
            }
            let snapshots = listing.snapshots;
            if json {
                let list: Vec<_> = snapshots
                    .iter()
                    .map(|(id, s)| {
                        let mut value = serde_json::to_value(s).expect("serializes");
                        value["id"] = json!(id);
                        value
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                let mut table = comfy_table::Table::new();
                table.load_style(comfy_table::presets::NOTHING);
                table.set_header(["ID", "Time", "Host", "Path", "Tags", "Files", "Added"]);
                for (id, s) in &snapshots {
                    table.add_row([
                        id.short(),
                        s.time.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                        s.hostname.clone(),
                        s.source.clone(),
                        s.tags.join(","),
                        (s.summary.files_new
                            + s.summary.files_changed
                            + s.summary.files_unmodified)
                            .to_string(),
                        bytes(s.summary.bytes_added),
                    ]);
                }
                println!("{table}");
                println!("{} snapshots", snapshots.len());
            }
        }
        RepoCommand::Check { read_data } => {
            let repo = global.open()?;
            let report = ferry_mover::check(
                &repo,
                &CheckOptions {
                    read_data,
                    lock_wait: global.lock_wait(),
                },
            )?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for warning in &report.warnings {
                    eprintln!("warning: {warning}");
                }
                for error in &report.errors {
                    eprintln!("error: {error}");
                }
                println!(
                    "checked {} snapshots, {} trees, {} packs, {} blobs{}: {}",
                    report.snapshots,
                    report.trees,
                    report.packs,
                    report.blobs,
                    if read_data { " (all data read)" } else { "" },
                    if report.is_clean() {
                        "no errors".to_owned()
                    } else {
                        format!("{} errors", report.errors.len())
                    }
                );
            }
            if !report.is_clean() {
                return Ok(ExitCode::FAILURE);
            }
        }
        RepoCommand::Forget(args) => {
            let policy = RetentionPolicy {
                keep_last: args.keep_last,
                keep_hourly: args.keep_hourly,
                keep_daily: args.keep_daily,
                keep_weekly: args.keep_weekly,
                keep_monthly: args.keep_monthly,
            };
            let repo = global.open()?;
            let removed = if args.snapshots.is_empty() {
                ferry_mover::forget(&repo, &policy, global.lock_wait())?
            } else {
                ferry_mover::forget_snapshots(&repo, &args.snapshots, global.lock_wait())?
            };
            let pruned = if args.prune {
                Some(prune(global, &repo)?)
            } else {
                None
            };
            if json {
                println!("{}", json!({"removed": removed, "prune": pruned}));
            } else {
                println!("removed {} snapshots", removed.len());
                if let Some(report) = pruned {
                    print_prune(&report);
                }
            }
        }
        RepoCommand::Prune => {
            let repo = global.open()?;
            let report = prune(global, &repo)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_prune(&report);
            }
        }
        RepoCommand::Unlock => {
            let repo = global.open()?;
            let removed = ferry_mover::lock::remove_stale_locks(&repo)?;
            if json {
                println!("{}", json!({"removed": removed}));
            } else {
                println!("removed {removed} stale locks");
            }
        }
        RepoCommand::Key(command) => key(global, command, json)?,
        RepoCommand::Maintenance(args) => {
            return crate::maintenance_cmd::run(global, cluster, args);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn prune(
    global: &GlobalArgs,
    repo: &std::sync::Arc<Repository>,
) -> anyhow::Result<ferry_mover::PruneReport> {
    Ok(ferry_mover::prune(
        repo,
        &PruneOptions {
            lock_wait: global.lock_wait(),
            ..PruneOptions::default()
        },
    )?)
}

pub(crate) fn print_prune(report: &ferry_mover::PruneReport) {
    println!(
        "removed {} blobs; deleted {} packs, repacked {}, removed {} unindexed; freed {}; removed {} stale locks and {} leftovers of interrupted writes",
        report.blobs_removed,
        report.packs_deleted,
        report.packs_repacked,
        report.unindexed_packs_deleted,
        bytes(report.bytes_freed),
        report.stale_locks_removed,
        report.leftovers_removed
    );
}

fn key(global: &GlobalArgs, command: KeyCommand, json: bool) -> anyhow::Result<()> {
    let backend = global.backend()?;
    let mut repo = Repository::open_without_index(backend, &global.password()?)?;
    match command {
        KeyCommand::Add(new) => {
            let id = repo.add_key(&new.read()?)?;
            if json {
                println!("{}", json!({"added": id}))
            } else {
                println!("added key {id}")
            }
        }
        KeyCommand::Remove { id } => {
            let removed = repo.remove_key(&id)?;
            if json {
                println!("{}", json!({"removed": removed}))
            } else {
                println!("removed key {removed}")
            }
        }
        KeyCommand::Passwd(new) => {
            let password = new.read()?;
            if password == global.password()? {
                bail!("the new password is the same as the current one");
            }
            let id = repo.change_password(&password)?;
            if json {
                println!("{}", json!({"key": id}))
            } else {
                println!("password changed; new key {id}")
            }
        }
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if json {
                println!("{}", serde_json::to_string(&keys)?);
            } else {
                for key in keys {
                    // Slots written since 2026-12-06 name no user and no host.
                    let by = match (key.username.is_empty(), key.hostname.is_empty()) {
                        (true, true) => String::new(),
                        _ => format!(" {}@{}", key.username, key.hostname),
                    };
                    println!(
                        "{}{} {}{by}",
                        if key.current { "*" } else { " " },
                        key.id,
                        key.created.strftime("%Y-%m-%d %H:%M:%S"),
                    );
                }
            }
        }
    }
    Ok(())
}
