//! `ferry location`: BackupStorageLocations, where backups go; one default at a time.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ferry_protocol::crd::{BackupStorageLocation, BackupStorageLocationSpec, ObjectStorage};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::{
    ClusterArgs, Columns, Shown, block_on, create, enum_name, parse_credential, show, time,
};
use crate::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum LocationCommand {
    /// Create a BackupStorageLocation (an S3 or S3-compatible bucket).
    Create(Box<CreateLocation>),
    /// List storage locations and whether they are available.
    Get { name: Option<String> },
    /// Make a location the one that backups naming none use; any other default is unmarked.
    SetDefault { name: String },
}

/// The bucket part of a location, its CA bundle read and its encryption checked.
fn object_storage(
    bucket: String,
    prefix: Option<String>,
    ca_bundle: Option<std::path::PathBuf>,
    server_side_encryption: Option<String>,
    kms_key_id: Option<String>,
) -> anyhow::Result<ObjectStorage> {
    let ca_bundle = ca_bundle
        .as_deref()
        .map(|path| crate::read_ca_bundle("--ca-bundle", path))
        .transpose()?;
    let server_side_encryption = server_side_encryption
        .map(|algorithm| {
            serde_json::from_value(serde_json::Value::String(algorithm.clone())).map_err(|_| {
                anyhow::anyhow!(
                    "--server-side-encryption {algorithm:?} is not AES256 (SSE-S3) nor aws:kms (SSE-KMS)"
                )
            })
        })
        .transpose()?;
    let storage = ObjectStorage {
        bucket,
        prefix,
        ca_bundle,
        server_side_encryption,
        kms_key_id,
    };
    storage.encryption().map_err(anyhow::Error::msg)?;
    Ok(storage)
}

/// `ferry location create`.
#[derive(Debug, Args)]
pub struct CreateLocation {
    pub name: String,
    #[arg(long)]
    pub bucket: String,
    #[arg(long)]
    pub prefix: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    /// For S3-compatible stores (MinIO, Ceph...).
    #[arg(long)]
    pub endpoint: Option<String>,
    #[arg(long)]
    pub force_path_style: bool,
    /// A PEM file of the only CAs the endpoint's certificate may chain to (a private store).
    #[arg(long)]
    pub ca_bundle: Option<std::path::PathBuf>,
    /// The store's own encryption at rest of every object Ferry writes: AES256 (SSE-S3) or
    /// aws:kms (SSE-KMS).
    #[arg(long)]
    pub server_side_encryption: Option<String>,
    /// With aws:kms: the KMS key (id, ARN or alias); default the bucket's default key.
    #[arg(long)]
    pub kms_key_id: Option<String>,
    /// The Secret and key holding an AWS credentials file: SECRET:KEY.
    #[arg(long)]
    pub credential: Option<String>,
    /// Use it when a backup names no location (the one default: any other is unmarked).
    #[arg(long)]
    pub default: bool,
    /// How often the node agents' repositories there are pruned (e.g. 1h, 24h); default 1h.
    #[arg(long)]
    pub repository_maintenance_frequency: Option<String>,
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
            LocationCommand::Create(create_location) => {
                let CreateLocation {
                    name,
                    bucket,
                    prefix,
                    region,
                    endpoint,
                    force_path_style,
                    ca_bundle,
                    server_side_encryption,
                    kms_key_id,
                    credential,
                    default,
                    repository_maintenance_frequency,
                } = *create_location;
                let credential = parse_credential(credential)?;
                if let Some(frequency) = &repository_maintenance_frequency {
                    ferry_controller::parse_duration(frequency).map_err(|error| {
                        anyhow::anyhow!("--repository-maintenance-frequency: {error}")
                    })?;
                }
                let spec = BackupStorageLocationSpec {
                    provider: "aws".to_owned(),
                    object_storage: object_storage(
                        bucket,
                        prefix,
                        ca_bundle,
                        server_side_encryption,
                        kms_key_id,
                    )?,
                    region,
                    endpoint,
                    force_path_style: force_path_style.then_some(true),
                    credential,
                    default,
                    access_mode: None,
                    validation_frequency: None,
                    backup_sync_period: None,
                    repository_maintenance_frequency,
                    agent_credentials: None,
                };
                create(&locations, &BackupStorageLocation::new(&name, spec)).await?;
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
            LocationCommand::Get { name } => show(global, &locations, name.as_deref()).await,
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

impl Shown for BackupStorageLocation {
    const NOUN: &str = "location";
    const COLUMNS: Columns<BackupStorageLocation> = Columns {
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
}

pub(super) fn location_phase(status: &ferry_protocol::crd::LocationStatus) -> String {
    status
        .phase
        .map(|p| enum_name(&p))
        .unwrap_or_else(|| "Unknown".into())
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
