//! Native volume snapshots on AWS: EBS snapshots through the EC2 API, and the PersistentVolume
//! forms that name an EBS volume.
//!
//! A PersistentVolume names its EBS volume in one of two forms, and a restore keeps the form:
//! - CSI, driver `ebs.csi.aws.com`: `spec.csi.volumeHandle` is the volume id (`vol-...`);
//! - in-tree: `spec.awsElasticBlockStore.volumeID` is `aws://<zone>/vol-...` or plain `vol-...`.

use std::collections::BTreeMap;

use aws_credential_types::Credentials;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, ResourceType, SnapshotState, Tag, TagSpecification, VolumeType};
use ferry_protocol::volume::NativeSnapshot;
use serde_json::Value;

pub const CSI_DRIVER: &str = "ebs.csi.aws.com";

/// Labels and node-affinity keys that carry a volume's availability zone, most specific first.
const ZONE_KEYS: [&str; 3] = [
    "topology.ebs.csi.aws.com/zone",
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/zone",
];

/// An EBS volume as a PersistentVolume names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbsVolumeRef {
    pub volume_id: String,
    /// The zone the PersistentVolume says the volume is in (labels, then node affinity, then the
    /// in-tree volume ID), when it says.
    pub zone: Option<String>,
}

/// The EBS volume a PersistentVolume is backed by, or None when it is not an EBS volume.
pub fn volume_of(pv: &Value) -> Option<EbsVolumeRef> {
    let spec = pv.get("spec")?;
    let (volume_id, in_tree_zone) = if let Some(csi) = spec.get("csi") {
        if csi.get("driver").and_then(Value::as_str) != Some(CSI_DRIVER) {
            return None;
        }
        (csi.get("volumeHandle")?.as_str()?.to_owned(), None)
    } else {
        let id = spec.pointer("/awsElasticBlockStore/volumeID")?.as_str()?;
        let (zone, volume) = split_in_tree_id(id);
        (volume.to_owned(), zone.map(str::to_owned))
    };
    if !volume_id.starts_with("vol-") {
        return None;
    }
    let zone = zone_from_labels(pv)
        .or_else(|| zone_from_node_affinity(pv))
        .or(in_tree_zone);
    Some(EbsVolumeRef { volume_id, zone })
}

/// Splits an in-tree volume ID (`aws://us-east-1a/vol-1`, `aws:///vol-1`, `vol-1`) into its zone
/// and volume id.
fn split_in_tree_id(id: &str) -> (Option<&str>, &str) {
    match id.strip_prefix("aws://") {
        Some(rest) => match rest.rsplit_once('/') {
            Some((zone, volume)) => ((!zone.is_empty()).then_some(zone), volume),
            None => (None, rest),
        },
        None => (None, id),
    }
}

fn zone_from_labels(pv: &Value) -> Option<String> {
    let labels = pv.pointer("/metadata/labels")?;
    ZONE_KEYS
        .iter()
        .find_map(|key| labels.get(*key).and_then(Value::as_str))
        .map(str::to_owned)
}

fn zone_from_node_affinity(pv: &Value) -> Option<String> {
    let terms = pv
        .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")?
        .as_array()?;
    terms
        .iter()
        .filter_map(|term| term.get("matchExpressions").and_then(Value::as_array))
        .flatten()
        .find(|expression| {
            expression.get("operator").and_then(Value::as_str) == Some("In")
                && expression
                    .get("key")
                    .and_then(Value::as_str)
                    .is_some_and(|key| ZONE_KEYS.contains(&key))
        })
        .and_then(|expression| expression.pointer("/values/0"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Points a PersistentVolume at `volume_id` in its own form, and moves it from zone `from` to
/// `to` (labels, node affinity and the in-tree volume ID) when they differ.
pub fn rewrite_volume(pv: &mut Value, volume_id: &str, from: &str, to: &str) {
    if let Some(handle) = pv.pointer_mut("/spec/csi/volumeHandle") {
        *handle = Value::String(volume_id.to_owned());
    }
    if let Some(Value::String(id)) = pv.pointer_mut("/spec/awsElasticBlockStore/volumeID") {
        let rewritten = match split_in_tree_id(id) {
            (Some(_), _) => format!("aws://{to}/{volume_id}"),
            (None, _) if id.starts_with("aws://") => format!("aws:///{volume_id}"),
            (None, _) => volume_id.to_owned(),
        };
        *id = rewritten;
    }
    if from == to {
        return;
    }
    if let Some(labels) = pv
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        for key in ZONE_KEYS {
            if labels.get(key).and_then(Value::as_str) == Some(from) {
                labels.insert(key.to_owned(), Value::String(to.to_owned()));
            }
        }
    }
    let terms = pv
        .pointer_mut("/spec/nodeAffinity/required/nodeSelectorTerms")
        .and_then(Value::as_array_mut);
    for term in terms.into_iter().flatten() {
        let expressions = term
            .get_mut("matchExpressions")
            .and_then(Value::as_array_mut);
        for expression in expressions.into_iter().flatten() {
            let is_zone = expression
                .get("key")
                .and_then(Value::as_str)
                .is_some_and(|key| ZONE_KEYS.contains(&key));
            let values = expression.get_mut("values").and_then(Value::as_array_mut);
            for value in values.into_iter().flatten().filter(|_| is_zone) {
                if value.as_str() == Some(from) {
                    *value = Value::String(to.to_owned());
                }
            }
        }
    }
}

/// Whether availability zone `zone` lies in `region` (`eu-west-1a`, `us-west-2-lax-1a` in
/// `us-west-2`; not `us-east-10a` in `us-east-1`).
pub fn zone_in_region(zone: &str, region: &str) -> bool {
    zone.strip_prefix(region)
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// How to reach EC2 in one region.
#[derive(Debug, Clone, Default)]
pub struct EbsConfig {
    /// The VolumeSnapshotLocation this is, for messages and records.
    pub location: String,
    pub region: String,
    pub endpoint: Option<String>,
    /// Explicit credentials; None uses the controller's own (environment, web identity).
    pub credentials: Option<Credentials>,
}

/// The EC2 API of one region, as far as snapshots go.
#[derive(Debug, Clone)]
pub struct Ebs {
    client: Client,
    config: EbsConfig,
}

/// What EC2 says of a volume.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VolumeInfo {
    pub volume_id: String,
    pub availability_zone: String,
    pub volume_type: Option<String>,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    pub size_gib: Option<i32>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// A snapshot's state as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotProgress {
    Pending,
    Completed,
    /// Failed, or gone while it was being taken; the message says what EC2 said.
    Failed(String),
}

/// An EC2 call that failed, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EbsError {
    pub message: String,
    /// EC2's error code, when it answered with one.
    pub code: Option<String>,
    /// Whether the same call can succeed later without anyone changing anything.
    pub retryable: bool,
}

impl EbsError {
    pub fn is_not_found(&self) -> bool {
        self.code
            .as_deref()
            .is_some_and(|code| code.ends_with(".NotFound"))
    }
}

/// Tags Ferry puts on what it creates, so that its snapshots and volumes can be found and told
/// apart from everything else in the account.
pub mod tags {
    pub const BACKUP: &str = "ferry.dev/backup";
    pub const BACKUP_UID: &str = "ferry.dev/backup-uid";
    pub const PERSISTENT_VOLUME: &str = "ferry.dev/persistent-volume";
    pub const CLAIM: &str = "ferry.dev/claim";
    pub const NAMESPACE: &str = "ferry.dev/namespace";
    pub const RESTORE: &str = "ferry.dev/restore";
}

impl Ebs {
    pub async fn connect(config: EbsConfig) -> Ebs {
        let shared =
            ferry_mover::s3::shared_config(&config.region, config.credentials.clone()).await;
        let mut builder = aws_sdk_ec2::config::Builder::from(&shared)
            .region(Region::new(config.region.clone()))
            .retry_config(RetryConfig::standard().with_max_attempts(4));
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ebs {
            client: Client::from_conf(builder.build()),
            config,
        }
    }

    pub fn region(&self) -> &str {
        &self.config.region
    }

    pub fn location(&self) -> &str {
        &self.config.location
    }

    /// Checks that the region answers with these credentials.
    pub async fn validate(&self) -> Result<(), EbsError> {
        let zones = self
            .client
            .describe_availability_zones()
            .send()
            .await
            .map_err(|error| self.error("listing availability zones", error))?;
        if zones.availability_zones().is_empty() {
            return Err(EbsError {
                message: format!(
                    "region {} has no availability zones; check the location's region",
                    self.region()
                ),
                code: None,
                retryable: false,
            });
        }
        Ok(())
    }

    pub async fn describe_volume(&self, volume_id: &str) -> Result<VolumeInfo, EbsError> {
        let output = self
            .client
            .describe_volumes()
            .volume_ids(volume_id)
            .send()
            .await
            .map_err(|error| self.error(&format!("describing volume {volume_id}"), error))?;
        let volume = output.volumes().first().ok_or_else(|| EbsError {
            message: self.not_found_message(&format!("volume {volume_id}")),
            code: Some("InvalidVolume.NotFound".to_owned()),
            retryable: false,
        })?;
        Ok(VolumeInfo {
            volume_id: volume_id.to_owned(),
            availability_zone: volume.availability_zone().unwrap_or_default().to_owned(),
            volume_type: volume.volume_type().map(|t| t.as_str().to_owned()),
            iops: volume.iops(),
            throughput: volume.throughput(),
            size_gib: volume.size(),
            encrypted: volume.encrypted().unwrap_or(false),
            kms_key_id: volume.kms_key_id().map(str::to_owned),
            tags: volume
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                // aws: tags are reserved; EC2 refuses to set them on a new volume.
                .filter(|(key, _)| !key.starts_with("aws:"))
                .collect(),
        })
    }

    /// Starts a snapshot of `volume`, tagged with `tags`; returns its id and state.
    pub async fn create_snapshot(
        &self,
        volume: &VolumeInfo,
        description: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(String, SnapshotProgress), EbsError> {
        let output = self
            .client
            .create_snapshot()
            .volume_id(&volume.volume_id)
            .description(description)
            .tag_specifications(tag_specification(ResourceType::Snapshot, tags))
            .send()
            .await
            .map_err(|error| {
                self.error(&format!("snapshotting volume {}", volume.volume_id), error)
            })?;
        let snapshot_id = output.snapshot_id().unwrap_or_default().to_owned();
        let progress = progress_of(output.state(), output.state_message());
        Ok((snapshot_id, progress))
    }

    /// The states of `snapshot_ids`; a snapshot EC2 no longer knows is Failed.
    pub async fn snapshot_progress(
        &self,
        snapshot_ids: &[String],
    ) -> Result<BTreeMap<String, SnapshotProgress>, EbsError> {
        let mut found = BTreeMap::new();
        // A filter, not SnapshotIds: one vanished snapshot would fail the whole call.
        for chunk in snapshot_ids.chunks(200) {
            let mut pages = self
                .client
                .describe_snapshots()
                .filters(
                    Filter::builder()
                        .name("snapshot-id")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|error| self.error("describing snapshots", error))?;
                for snapshot in page.snapshots() {
                    if let Some(id) = snapshot.snapshot_id() {
                        found.insert(
                            id.to_owned(),
                            progress_of(snapshot.state(), snapshot.state_message()),
                        );
                    }
                }
            }
        }
        Ok(snapshot_ids
            .iter()
            .map(|id| {
                let progress = found.remove(id).unwrap_or_else(|| {
                    SnapshotProgress::Failed(format!(
                        "snapshot {id} vanished from region {} while it was being taken",
                        self.region()
                    ))
                });
                (id.clone(), progress)
            })
            .collect())
    }

    /// Creates a volume from `snapshot` in `zone`, equal to the one it was taken of: type, IOPS,
    /// throughput and encryption (with `kms_key_id` instead of the source's key, when given).
    pub async fn create_volume(
        &self,
        snapshot: &NativeSnapshot,
        zone: &str,
        kms_key_id: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<String, EbsError> {
        let volume_type = snapshot.volume_type.as_deref().map(VolumeType::from);
        // EC2 refuses IOPS and throughput on the types where they are not provisioned.
        let provisioned_iops = matches!(
            volume_type,
            Some(VolumeType::Gp3 | VolumeType::Io1 | VolumeType::Io2)
        );
        let provisioned_throughput = volume_type == Some(VolumeType::Gp3);
        let kms_key_id = kms_key_id.or(snapshot.kms_key_id.as_deref());
        let mut request = self
            .client
            .create_volume()
            .availability_zone(zone)
            .snapshot_id(&snapshot.snapshot_id)
            .set_volume_type(volume_type)
            .set_iops(snapshot.iops.filter(|_| provisioned_iops))
            .set_throughput(snapshot.throughput.filter(|_| provisioned_throughput))
            .tag_specifications(tag_specification(ResourceType::Volume, tags));
        if snapshot.encrypted || kms_key_id.is_some() {
            request = request
                .encrypted(true)
                .set_kms_key_id(kms_key_id.map(str::to_owned));
        }
        let output = request.send().await.map_err(|error| {
            self.error(
                &format!("creating a volume from snapshot {}", snapshot.snapshot_id),
                error,
            )
        })?;
        output
            .volume_id()
            .map(str::to_owned)
            .ok_or_else(|| EbsError {
                message: format!(
                    "EC2 created a volume from snapshot {} but named no volume id",
                    snapshot.snapshot_id
                ),
                code: None,
                retryable: false,
            })
    }

    /// The ids of the snapshots tagged `key` = `value`.
    pub async fn snapshots_tagged(&self, key: &str, value: &str) -> Result<Vec<String>, EbsError> {
        let mut ids = Vec::new();
        let mut pages = self
            .client
            .describe_snapshots()
            .owner_ids("self")
            .filters(
                Filter::builder()
                    .name(format!("tag:{key}"))
                    .values(value)
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| self.error("listing snapshots by tag", error))?;
            ids.extend(
                page.snapshots()
                    .iter()
                    .filter_map(|s| s.snapshot_id().map(str::to_owned)),
            );
        }
        Ok(ids)
    }

    /// Deletes a snapshot; one already gone counts as deleted.
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), EbsError> {
        match self
            .client
            .delete_snapshot()
            .snapshot_id(snapshot_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => {
                let error = self.error(&format!("deleting snapshot {snapshot_id}"), error);
                if error.is_not_found() {
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }

    fn not_found_message(&self, what: &str) -> String {
        format!(
            "{what} does not exist in region {} (VolumeSnapshotLocation {}); if it is in another region, create a VolumeSnapshotLocation for that region",
            self.region(),
            self.location()
        )
    }

    fn error<E>(
        &self,
        doing: &str,
        error: SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
    ) -> EbsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let code = error.code().map(str::to_owned);
        let status = error.raw_response().map(|r| r.status().as_u16());
        let detail = match code.as_deref() {
            Some(
                "UnauthorizedOperation"
                | "AccessDenied"
                | "AccessDeniedException"
                | "Client.UnauthorizedOperation",
            ) => format!(
                "missing permission: the credentials of VolumeSnapshotLocation {} may not do this; grant ec2:DescribeVolumes, ec2:CreateSnapshot, ec2:DescribeSnapshots, ec2:CreateVolume, ec2:CreateTags and ec2:DeleteSnapshot",
                self.location()
            ),
            Some("AuthFailure" | "InvalidClientTokenId" | "SignatureDoesNotMatch") => format!(
                "the credentials of VolumeSnapshotLocation {} are not valid; check its credential Secret",
                self.location()
            ),
            Some("InvalidVolume.NotFound" | "InvalidVolumeID.Malformed") => {
                self.not_found_message("the volume")
            }
            Some("InvalidSnapshot.NotFound") => self.not_found_message("the snapshot"),
            Some("InvalidParameterValue")
                if error.message().is_some_and(|m| m.contains("vailability")) =>
            {
                format!(
                    "the availability zone is not in region {}: {}",
                    self.region(),
                    error.message().unwrap_or_default()
                )
            }
            Some(code) => format!("{code}: {}", error.message().unwrap_or_default()),
            None => match &error {
                SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => format!(
                    "cannot reach EC2 at {}; check the location's endpoint and region, and the network",
                    self.config
                        .endpoint
                        .as_deref()
                        .unwrap_or("the AWS endpoint")
                ),
                other => format!(
                    "{}",
                    aws_smithy_types::error::display::DisplayErrorContext(other)
                ),
            },
        };
        let retryable = matches!(
            error,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
        ) || status.is_some_and(|s| s >= 500 || s == 429)
            || matches!(
                code.as_deref(),
                Some(
                    "RequestLimitExceeded"
                        | "SnapshotCreationPerVolumeRateExceeded"
                        | "InternalError"
                )
            );
        EbsError {
            message: format!("{doing}: {detail}"),
            code,
            retryable,
        }
    }
}

fn progress_of(state: Option<&SnapshotState>, message: Option<&str>) -> SnapshotProgress {
    match state {
        Some(SnapshotState::Completed) => SnapshotProgress::Completed,
        Some(SnapshotState::Error) => SnapshotProgress::Failed(format!(
            "EC2 failed the snapshot: {}",
            message.unwrap_or("no reason given")
        )),
        // pending, recoverable, recovering, and states newer than this build: not done yet.
        _ => SnapshotProgress::Pending,
    }
}

fn tag_specification(kind: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(
            tags.iter()
                .map(|(key, value)| Tag::builder().key(key).value(value).build())
                .collect(),
        ))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csi_and_in_tree_volumes_are_found_with_their_zone() {
        let csi = json!({
            "metadata": {"name": "pv-1"},
            "spec": {
                "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-0abc"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]},
                    {"key": "topology.ebs.csi.aws.com/zone", "operator": "In", "values": ["eu-west-1b"]},
                ]}]}},
            },
        });
        assert_eq!(
            volume_of(&csi),
            Some(EbsVolumeRef {
                volume_id: "vol-0abc".into(),
                zone: Some("eu-west-1b".into())
            })
        );
        // Labels come before node affinity.
        let mut labelled = csi.clone();
        labelled["metadata"]["labels"] = json!({"topology.kubernetes.io/zone": "eu-west-1c"});
        assert_eq!(
            volume_of(&labelled).unwrap().zone.as_deref(),
            Some("eu-west-1c")
        );

        let in_tree =
            json!({"spec": {"awsElasticBlockStore": {"volumeID": "aws://us-east-1a/vol-9"}}});
        assert_eq!(
            volume_of(&in_tree),
            Some(EbsVolumeRef {
                volume_id: "vol-9".into(),
                zone: Some("us-east-1a".into())
            })
        );
        let bare = json!({"spec": {"awsElasticBlockStore": {"volumeID": "vol-7"}}});
        assert_eq!(volume_of(&bare).unwrap().zone, None);

        for other in [
            json!({"spec": {"csi": {"driver": "pd.csi.storage.gke.io", "volumeHandle": "vol-1"}}}),
            json!({"spec": {"hostPath": {"path": "/data"}}}),
            json!({"spec": {"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "not-a-volume"}}}),
        ] {
            assert_eq!(volume_of(&other), None, "{other}");
        }
    }

    #[test]
    fn a_rewritten_volume_keeps_its_form_and_moves_zone() {
        let mut in_tree = json!({
            "metadata": {"labels": {"topology.kubernetes.io/zone": "us-east-1a", "app": "db"}},
            "spec": {"awsElasticBlockStore": {"volumeID": "aws://us-east-1a/vol-old", "fsType": "ext4"}},
        });
        rewrite_volume(&mut in_tree, "vol-new", "us-east-1a", "us-east-1b");
        assert_eq!(
            in_tree["spec"]["awsElasticBlockStore"]["volumeID"],
            "aws://us-east-1b/vol-new"
        );
        assert_eq!(
            in_tree["metadata"]["labels"]["topology.kubernetes.io/zone"],
            "us-east-1b"
        );
        assert_eq!(in_tree["metadata"]["labels"]["app"], "db");

        let mut bare = json!({"spec": {"awsElasticBlockStore": {"volumeID": "vol-old"}}});
        rewrite_volume(&mut bare, "vol-new", "us-east-1a", "us-east-1a");
        assert_eq!(bare["spec"]["awsElasticBlockStore"]["volumeID"], "vol-new");

        let mut csi = json!({"spec": {
            "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-old"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.ebs.csi.aws.com/zone", "operator": "In", "values": ["us-east-1a"]},
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["us-east-1a"]},
            ]}]}},
        }});
        rewrite_volume(&mut csi, "vol-new", "us-east-1a", "us-east-1c");
        assert_eq!(csi["spec"]["csi"]["volumeHandle"], "vol-new");
        let expressions =
            &csi["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"];
        assert_eq!(expressions[0]["values"][0], "us-east-1c");
        // Only zone keys move.
        assert_eq!(expressions[1]["values"][0], "us-east-1a");
    }

    #[test]
    fn zones_belong_to_their_region() {
        assert!(zone_in_region("eu-west-1a", "eu-west-1"));
        assert!(zone_in_region("us-west-2-lax-1a", "us-west-2"));
        assert!(!zone_in_region("us-east-10a", "us-east-1"));
        assert!(!zone_in_region("eu-west-1a", "us-east-1"));
        assert!(!zone_in_region("us-east-1", "us-east-1"));
    }

    #[test]
    fn snapshot_states_map_to_progress() {
        assert_eq!(
            progress_of(Some(&SnapshotState::Completed), None),
            SnapshotProgress::Completed
        );
        assert_eq!(
            progress_of(Some(&SnapshotState::Pending), None),
            SnapshotProgress::Pending
        );
        assert_eq!(
            progress_of(Some(&SnapshotState::Error), Some("disk fault")),
            SnapshotProgress::Failed("EC2 failed the snapshot: disk fault".into())
        );
    }
}
