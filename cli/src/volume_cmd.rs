//! `ferry volume ...`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use ferry_mover::tree::{NodeKind, Tree};
use ferry_mover::{BackupOptions, ParentChoice, RestoreOptions};
use serde_json::json;

use crate::output::{bytes, progress_bar};
use crate::{GlobalArgs, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Back up a directory into a repository.
    Backup {
        path: PathBuf,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The snapshot to compare with (default: the latest of the same host and path).
        #[arg(long)]
        parent: Option<String>,
        /// Read every file, comparing with no parent snapshot.
        #[arg(long, conflicts_with = "parent")]
        force: bool,
        /// The host name recorded (default: this machine's).
        #[arg(long)]
        host: Option<String>,
        /// Descend into other filesystems mounted below PATH.
        #[arg(long)]
        cross_filesystems: bool,
        /// Fail on the first unreadable file instead of reporting it and going on.
        #[arg(long)]
        fail_on_unreadable: bool,
    },
    /// Restore a snapshot into a directory.
    Restore {
        /// `latest`, or a snapshot id or unique prefix.
        snapshot: String,
        target: PathBuf,
        /// Reuse what TARGET already holds; download only what is missing.
        #[arg(long)]
        incremental: bool,
        /// Remove what TARGET holds that the snapshot does not.
        #[arg(long)]
        delete: bool,
        /// With --incremental: read back and hash every file of TARGET, even those whose size
        /// and modification time match the snapshot (trusted unread otherwise).
        #[arg(long, requires = "incremental")]
        verify: bool,
        /// Create the snapshot's device nodes (skipped by default).
        #[arg(long)]
        devices: bool,
        /// Restore privileges: setuid/setgid bits, file capabilities and the other security.*
        /// and trusted.* attributes (left out by default).
        #[arg(long)]
        privileges: bool,
        /// Return without making the restored data durable first (no syncfs).
        #[arg(long)]
        no_sync: bool,
    },
    /// List a snapshot's entries.
    Ls {
        snapshot: String,
        path: Option<String>,
    },
}

pub fn run(global: &GlobalArgs, command: VolumeCommand) -> anyhow::Result<ExitCode> {
    // JSON is valid YAML: -o yaml gets it too.
    let json = global.format() != OutputFormat::Text;
    match command {
        VolumeCommand::Backup {
            path,
            tags,
            parent,
            force,
            host,
            cross_filesystems,
            fail_on_unreadable,
        } => {
            let repo = global.open()?;
            let progress = global.show_progress().then(|| progress_bar("backed up"));
            let options = BackupOptions {
                tags,
                host,
                parent: match (parent, force) {
                    (Some(parent), _) => ParentChoice::Snapshot(parent),
                    (None, true) => ParentChoice::None,
                    (None, false) => ParentChoice::Latest,
                },
                cross_filesystems,
                fail_on_unreadable,
                progress: progress.as_ref().map(|(_, sink)| sink.clone()),
                lock_wait: global.lock_wait(),
                ..Default::default()
            };
            let outcome = ferry_mover::backup(&repo, &path, &options);
            if let Some((bar, _)) = &progress {
                bar.finish_and_clear();
            }
            let outcome = outcome?;
            let s = &outcome.snapshot.summary;
            if json {
                println!(
                    "{}",
                    json!({
                        "snapshot_id": outcome.snapshot_id,
                        "parent": outcome.snapshot.parent,
                        "tree": outcome.snapshot.tree,
                        "summary": s,
                    })
                );
            } else {
                println!(
                    "files: {} new, {} changed, {} unmodified; {} dirs; {} errors",
                    s.files_new, s.files_changed, s.files_unmodified, s.dirs, s.errors
                );
                println!(
                    "read {}, added {} to the repository ({} data blobs)",
                    bytes(s.bytes_read),
                    bytes(s.bytes_added),
                    s.data_blobs_added
                );
                println!("snapshot {} saved", outcome.snapshot_id.short());
            }
        }
        VolumeCommand::Restore {
            snapshot,
            target,
            incremental,
            delete,
            verify,
            devices,
            privileges,
            no_sync,
        } => {
            let repo = global.open()?;
            let progress = global.show_progress().then(|| progress_bar("restored"));
            let options = RestoreOptions {
                incremental,
                delete,
                verify,
                devices,
                privileges,
                sync: !no_sync,
                progress: progress.as_ref().map(|(_, sink)| sink.clone()),
                lock_wait: global.lock_wait(),
                ..Default::default()
            };
            let summary = ferry_mover::restore(&repo, &snapshot, &target, &options);
            if let Some((bar, _)) = &progress {
                bar.finish_and_clear();
            }
            let summary = summary?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                if summary.skipped > 0 {
                    eprintln!(
                        "ferry: {} device nodes or privileges (setuid/setgid bits, security attributes) not restored (--devices, --privileges restore them)",
                        summary.skipped
                    );
                }
                println!(
                    "restored {} files ({} unchanged), {} dirs; wrote {}, downloaded {}, reused {}; {} errors",
                    summary.files_restored,
                    summary.files_unchanged,
                    summary.dirs,
                    bytes(summary.bytes_written),
                    bytes(summary.bytes_downloaded),
                    bytes(summary.bytes_reused),
                    summary.errors
                );
            }
            if !summary.damaged_files.is_empty() {
                eprintln!(
                    "ferry: error: these files could not be restored (damaged or missing data):"
                );
                for file in &summary.damaged_files {
                    eprintln!("  {file}");
                }
            }
            if summary.errors > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        VolumeCommand::Ls { snapshot, path } => {
            let repo = global.open()?;
            let (_, snap) = repo.find_snapshot(&snapshot)?;
            let mut tree: Tree = repo.load_tree(&snap.tree)?;
            let mut prefix = String::new();
            for part in path
                .as_deref()
                .unwrap_or("")
                .split('/')
                .filter(|p| !p.is_empty())
            {
                let Some(node) = tree.nodes.iter().find(|n| n.name == part.as_bytes()) else {
                    bail!("{part:?} not found in snapshot {}", snapshot);
                };
                let Some(subtree) = node.subtree.filter(|_| node.kind == NodeKind::Dir) else {
                    bail!("{part:?} is not a directory");
                };
                prefix.push_str(part);
                prefix.push('/');
                tree = repo.load_tree(&subtree)?;
            }
            if json {
                println!("{}", serde_json::to_string(&tree.nodes)?);
            } else {
                for node in &tree.nodes {
                    let kind = match node.kind {
                        NodeKind::Dir => 'd',
                        NodeKind::Symlink => 'l',
                        NodeKind::Fifo => 'p',
                        NodeKind::Socket => 's',
                        NodeKind::CharDevice => 'c',
                        NodeKind::BlockDevice => 'b',
                        NodeKind::File => '-',
                    };
                    let time = jiff::Timestamp::from_second(node.mtime)
                        .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_default();
                    let mut line = format!(
                        "{kind}{:04o} {:>5} {:>5} {:>12} {time} {prefix}{}",
                        node.mode,
                        node.uid,
                        node.gid,
                        node.size,
                        node.name_lossy()
                    );
                    if node.kind == NodeKind::Symlink {
                        line.push_str(&format!(
                            " -> {}",
                            String::from_utf8_lossy(&node.link_target)
                        ));
                    }
                    println!("{line}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
