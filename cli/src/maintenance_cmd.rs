//! `ferry repo maintenance`: prunes a repository by hand (`--repo`), or every node agent
//! repository of a storage location (`--location`), as the controller's maintenance Job does.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use ferry_mover::{PruneOptions, PruneReport, Repository};
use ferry_protocol::layout::repositories_prefix;
use serde_json::json;

use crate::cluster::ClusterArgs;
use crate::{GlobalArgs, OutputFormat};

#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    /// Maintain every node agent repository of this BackupStorageLocation (in the cluster the
    /// kubeconfig names), instead of the repository --repo names.
    #[arg(long)]
    location: Option<String>,
}

/// How long prune waits for running backups to release the repository: they hold shared locks,
/// and a prune must never pull data from under one.
const LOCK_WAIT: Duration = Duration::from_secs(15 * 60);

pub fn run(
    global: &GlobalArgs,
    cluster: &ClusterArgs,
    args: MaintenanceArgs,
) -> anyhow::Result<ExitCode> {
    let json = global.format() != OutputFormat::Text;
    let lock_wait = global.lock_wait().max(LOCK_WAIT);
    let Some(location) = args.location else {
        let repo = global.open()?;
        let report = maintain(&repo, lock_wait)?;
        print(json, None, &report);
        return Ok(ExitCode::SUCCESS);
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = cluster.client().await?;
        let locations = ferry_controller::Locations::new(client, cluster.namespace());
        let location = locations
            .storage_location(Some(&location))
            .await
            .with_context(|| format!("reading BackupStorageLocation {location}"))?;
        let store = locations.object_store(&location).await?;
        let prefix = repositories_prefix(store.prefix());
        let namespaces: Vec<String> = store
            .list_dirs(&prefix)
            .await?
            .iter()
            .map(|dir| dir.trim_start_matches(&prefix).trim_end_matches('/').to_owned())
            .filter(|namespace| !namespace.is_empty())
            .collect();
        let mut failed = Vec::new();
        for namespace in namespaces {
            let spec = ferry_controller::agents::repository(&locations, &location, &namespace).await?;
            let url = spec.url.clone();
            let outcome = tokio::task::spawn_blocking(move || -> anyhow::Result<PruneReport> {
                let options = ferry_protocol::agent::s3_options(&spec).map_err(anyhow::Error::msg)?;
                let backend = ferry_mover::open_backend(&spec.url, &options)?;
                let repo = Arc::new(Repository::open(backend, spec.password.as_bytes())?);
                maintain(&repo, lock_wait)
            })
            .await?;
            match outcome {
                Ok(report) => print(json, Some(&url), &report),
                // One repository's failure must not keep the others from being maintained.
                Err(error) => {
                    tracing::warn!(message = "repository maintenance failed", repository = %url, error = %format!("{error:#}"));
                    eprintln!("ferry: {url}: {error:#}");
                    failed.push(url);
                }
            }
        }
        if failed.is_empty() {
            Ok(ExitCode::SUCCESS)
        } else {
            anyhow::bail!(
                "maintenance failed for {} repositories: {}",
                failed.len(),
                failed.join(", ")
            )
        }
    })
}

/// Removes locks of processes that died, then prunes what no snapshot needs.
fn maintain(repo: &Arc<Repository>, lock_wait: Duration) -> anyhow::Result<PruneReport> {
    let stale = ferry_mover::lock::remove_stale_locks(repo)?;
    if stale > 0 {
        tracing::info!(message = "removed stale locks", count = stale);
    }
    Ok(ferry_mover::prune(
        repo,
        &PruneOptions {
            lock_wait,
            ..PruneOptions::default()
        },
    )?)
}

fn print(json: bool, repository: Option<&str>, report: &PruneReport) {
    if json {
        println!("{}", json!({"repository": repository, "prune": report}));
        return;
    }
    if let Some(repository) = repository {
        print!("{repository}: ");
    }
    crate::repo_cmd::print_prune(report);
}
