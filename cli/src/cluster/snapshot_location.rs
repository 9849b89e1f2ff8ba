//! `ferry snapshot-location`: VolumeSnapshotLocations, where native snapshots are taken.

use std::process::ExitCode;

use clap::Subcommand;
use ferry_protocol::crd::{VolumeSnapshotLocation, VolumeSnapshotLocationSpec};
use kube::{Api, ResourceExt};

use super::location::location_phase;
use super::{ClusterArgs, Columns, Shown, block_on, create, parse_credential, show, time};
use crate::GlobalArgs;

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
                create(&locations, &VolumeSnapshotLocation::new(&name, spec)).await?;
                eprintln!(
                    "snapshot location {name} created; `ferry snapshot-location get {name}` shows whether it is available"
                );
                Ok(ExitCode::SUCCESS)
            }
            SnapshotLocationCommand::Get { name } => {
                show(global, &locations, name.as_deref()).await
            }
        }
    })
}

impl Shown for VolumeSnapshotLocation {
    const NOUN: &str = "snapshot-location";
    const COLUMNS: Columns<VolumeSnapshotLocation> = Columns {
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
}

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
