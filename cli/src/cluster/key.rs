//! `ferry key export`: the installation's key, which opens the node agents' repositories and seals
//! every file Ferry writes to the bucket. Kept outside the cluster, it is what lets a new cluster
//! read the backups after the old one is lost.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use ferry_controller::agents::{PASSWORD_KEY, REPOSITORY_PASSWORD_SECRET};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::{ClusterArgs, block_on};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print the installation's key (or write it to a file), to keep it outside the cluster.
    Export {
        /// Write it to this file (created with mode 0600) instead of stdout.
        #[arg(long)]
        output_file: Option<PathBuf>,
    },
}

pub fn run_key(cluster: &ClusterArgs, command: KeyCommand) -> anyhow::Result<ExitCode> {
    block_on(async {
        let client = cluster.client().await?;
        let secrets: Api<Secret> = Api::namespaced(client, &cluster.namespace);
        let KeyCommand::Export { output_file } = command;
        let secret = secrets
            .get_opt(REPOSITORY_PASSWORD_SECRET)
            .await?
            .with_context(|| {
                format!(
                    "Secret {}/{REPOSITORY_PASSWORD_SECRET} does not exist: the controller makes it when a storage location is first used",
                    cluster.namespace
                )
            })?;
        let key = secret
            .data
            .and_then(|mut data| data.remove(PASSWORD_KEY))
            .with_context(|| {
                format!(
                    "Secret {}/{REPOSITORY_PASSWORD_SECRET} has no key {PASSWORD_KEY:?}",
                    cluster.namespace
                )
            })?
            .0;
        match output_file {
            Some(path) => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .or_else(|error| {
                        // A file made for it already (mktemp): written only when it is empty.
                        let empty = std::fs::metadata(&path).is_ok_and(|m| m.len() == 0);
                        if error.kind() == std::io::ErrorKind::AlreadyExists && empty {
                            std::fs::OpenOptions::new().write(true).open(&path)
                        } else {
                            Err(error)
                        }
                    })
                    .with_context(|| format!("creating {} (it must not exist)", path.display()))?;
                file.write_all(&key)?;
                file.sync_all()?;
                eprintln!(
                    "wrote the installation's key to {}; keep it outside the cluster: without it no backup can be read after the cluster is lost",
                    path.display()
                );
            }
            None => {
                std::io::stdout().write_all(&key)?;
                std::io::stdout().flush()?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
