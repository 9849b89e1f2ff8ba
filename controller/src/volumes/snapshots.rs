//! The snapshots of a backup's PersistentVolumes: recording what the volume policy chose for each
//! volume the node agents do not back up, and starting its snapshot; native snapshots (EBS) are
//! taken, followed and deleted here, CSI snapshots in [`super::csi`].
//!
//! Every PersistentVolume in a backup's scope ends up with one [`VolumeRecord`]; a volume that no
//! native snapshotter covers is recorded for file-level backup with a warning, never left out
//! silently.

use std::collections::{BTreeMap, BTreeSet};

use ferry_protocol::crd::{Backup, VolumeSnapshotLocation};
use ferry_protocol::volume::{
    ClaimRef, NativeSnapshot, VolumeMethod, VolumePhase, VolumeRecord, VolumeRecords,
};
use futures::StreamExt;
use kube::ResourceExt;
use serde_json::Value;

use super::csi;
use super::policy::{self, Choice};
use crate::context::Context;
use crate::ebs::{self, Ebs, EbsError, SnapshotProgress, zone_in_region};
use crate::error::{Error, Result};

/// Snapshots started at once; EC2 throttles a burst of CreateSnapshot calls.
const CONCURRENT_SNAPSHOTS: usize = 8;
/// EC2 allows 50 tags on a resource; Ferry's own take a few of them.
const MAX_TAGS: usize = 50;

/// What snapshotting a backup's volumes came to.
#[derive(Debug, Default)]
pub struct VolumeOutcome {
    pub records: Vec<VolumeRecord>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// The EC2 connections of the snapshot locations a backup may use.
struct Snapshotters {
    /// (location, its region, the connection or why there is none).
    locations: Vec<(String, String, std::result::Result<Ebs, String>)>,
}

impl Snapshotters {
    async fn connect(ctx: &Context, locations: Vec<VolumeSnapshotLocation>) -> Snapshotters {
        let mut connected = Vec::with_capacity(locations.len());
        for location in locations {
            let region = location.spec.region.clone().unwrap_or_default();
            let ebs = ctx
                .locations
                .ebs(&location)
                .await
                .map_err(|e| e.to_string());
            connected.push((location.name_any(), region, ebs));
        }
        Snapshotters {
            locations: connected,
        }
    }

    /// The locations that may hold a volume in `zone` (every location when the zone is unknown).
    fn for_zone(
        &self,
        zone: Option<&str>,
    ) -> Vec<&(String, String, std::result::Result<Ebs, String>)> {
        self.locations
            .iter()
            .filter(|(_, region, _)| zone.is_none_or(|zone| zone_in_region(zone, region)))
            .collect()
    }

    fn describe(&self) -> String {
        self.locations
            .iter()
            .map(|(name, region, _)| format!("{name} ({region})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Records, for every PersistentVolume of the backup that the node agents do not back up, how its
/// data is kept as `choices` says, and starts its native or CSI snapshot.
pub async fn snapshot_volumes(
    ctx: &Context,
    backup: &Backup,
    persistent_volumes: &[Value],
    backed_up_by_agents: &BTreeSet<String>,
    choices: &BTreeMap<String, Choice>,
    classes: &policy::SnapshotClasses,
) -> Result<VolumeOutcome> {
    let spec = &backup.spec;
    let mut outcome = VolumeOutcome::default();
    if persistent_volumes.is_empty() {
        return Ok(outcome);
    }
    let snapshots_wanted = spec.snapshot_volumes != Some(false);
    // A user who asked for snapshots by name gets an error when they cannot be taken; one who
    // left everything at its default gets a warning.
    let snapshots_explicit =
        spec.snapshot_volumes == Some(true) || !spec.volume_snapshot_locations.is_empty();
    let native_wanted = snapshots_wanted
        && persistent_volumes.iter().any(|pv| {
            pv.pointer("/metadata/name")
                .and_then(Value::as_str)
                .and_then(|name| choices.get(name))
                == Some(&Choice::NativeSnapshot)
        });
    let snapshotters = if native_wanted {
        let locations = ctx
            .locations
            .snapshot_locations(&spec.volume_snapshot_locations)
            .await?;
        Snapshotters::connect(ctx, locations).await
    } else {
        Snapshotters {
            locations: Vec::new(),
        }
    };
    let csi_timeout = spec
        .csi_snapshot_timeout
        .as_deref()
        .and_then(|text| crate::parse_duration(text).ok())
        .unwrap_or(csi::DEFAULT_TIMEOUT);

    let mut native = Vec::new();
    let mut by_csi = Vec::new();
    for pv in persistent_volumes {
        let name = pv
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if backed_up_by_agents.contains(&name) {
            continue;
        }
        let claim = claim_of(pv);
        let record = |method, phase, message: Option<String>| VolumeRecord {
            persistent_volume: name.clone(),
            claim: claim.clone(),
            method,
            phase,
            message,
            snapshot: None,
            csi_snapshot: None,
            pod_volume: None,
            file_system: None,
        };
        let by_file = |why: String| {
            record(
                VolumeMethod::FileSystem,
                VolumePhase::Skipped,
                Some(format!(
                    "{why}; it needs file-level backup by a node agent, through a running pod that mounts it, and no running pod in this backup does: its data is not in this backup"
                )),
            )
        };
        let mut choice = choices.get(&name).cloned().unwrap_or(Choice::FileSystem);
        let by_file_wanted =
            choice == Choice::FileSystem || spec.default_volumes_to_fs_backup == Some(true);
        // No running pod mounts it: a CSI snapshot whose data moves into the repository reads it
        // all the same, when its driver can take one (a block volume's snapshot stays as it is).
        let mut move_data = spec.snapshot_move_data == Some(true);
        if by_file_wanted
            && snapshots_wanted
            && let Some((driver, class)) = policy::snapshot_class(pv, classes)
        {
            move_data = pv.pointer("/spec/volumeMode").and_then(Value::as_str) != Some("Block");
            choice = Choice::CsiSnapshot { driver, class };
        }
        let ebs_volume = ebs::volume_of(pv);
        let decided = match choice {
            Choice::CsiSnapshot { driver, class } => {
                by_csi.push((
                    record(VolumeMethod::CsiSnapshot, VolumePhase::InProgress, None),
                    driver,
                    class,
                    move_data,
                ));
                continue;
            }
            _ if spec.default_volumes_to_fs_backup == Some(true) => {
                by_file("defaultVolumesToFsBackup is set".to_owned())
            }
            Choice::Skip(why) => record(VolumeMethod::None, VolumePhase::Skipped, Some(why)),
            Choice::Fail(why) => record(VolumeMethod::None, VolumePhase::Failed, Some(why)),
            Choice::FileSystem if ebs_volume.is_some() || policy::csi_driver(pv).is_some() => {
                by_file("it is to be backed up by file".to_owned())
            }
            Choice::FileSystem => by_file(format!(
                "no native or CSI snapshotter covers {} volumes",
                volume_source(pv)
            )),
            Choice::NativeSnapshot if !snapshots_wanted => record(
                VolumeMethod::None,
                VolumePhase::Skipped,
                Some("snapshotVolumes is false".to_owned()),
            ),
            Choice::NativeSnapshot if snapshotters.locations.is_empty() => {
                let phase = if snapshots_explicit {
                    VolumePhase::Failed
                } else {
                    VolumePhase::Skipped
                };
                record(
                    VolumeMethod::NativeSnapshot,
                    phase,
                    Some("there is no VolumeSnapshotLocation to snapshot it through; create one for its region (ferry snapshot-location create)".to_owned()),
                )
            }
            Choice::NativeSnapshot => {
                native.push((
                    record(VolumeMethod::NativeSnapshot, VolumePhase::InProgress, None),
                    ebs_volume.expect("the policy chooses native snapshots of EBS volumes only"),
                ));
                continue;
            }
        };
        note(&mut outcome, &decided, snapshots_wanted);
        outcome.records.push(decided);
    }

    let snapshotters = &snapshotters;
    let mut taken: Vec<VolumeRecord> = futures::stream::iter(native)
        .map(|(record, volume)| async move {
            take_snapshot(backup, snapshotters, record, &volume).await
        })
        .buffered(CONCURRENT_SNAPSHOTS)
        .collect()
        .await;
    for (record, driver, class, move_data) in by_csi {
        let request = csi::SnapshotRequest {
            driver,
            class,
            timeout: csi_timeout,
            move_data,
        };
        taken.push(csi::take(ctx, backup, record, &request).await);
    }
    for record in taken {
        note(&mut outcome, &record, true);
        outcome.records.push(record);
    }
    Ok(outcome)
}

/// Adds a record's failure or skip to the backup's errors or warnings.
fn note(outcome: &mut VolumeOutcome, record: &VolumeRecord, snapshots_wanted: bool) {
    if record.message.is_none() {
        return;
    }
    let line = record.failure();
    match record.phase {
        VolumePhase::Failed => outcome.errors.push(line),
        // Opting out of snapshots is a choice, not something to warn about.
        VolumePhase::Skipped if snapshots_wanted || record.method == VolumeMethod::FileSystem => {
            outcome.warnings.push(line)
        }
        _ => {}
    }
}

async fn take_snapshot(
    backup: &Backup,
    snapshotters: &Snapshotters,
    mut record: VolumeRecord,
    volume: &ebs::EbsVolumeRef,
) -> VolumeRecord {
    let candidates = snapshotters.for_zone(volume.zone.as_deref());
    if candidates.is_empty() {
        record.phase = VolumePhase::Failed;
        record.message = Some(format!(
            "EBS volume {} is in zone {}, in no region of the VolumeSnapshotLocations used ({}); create a VolumeSnapshotLocation for its region",
            volume.volume_id,
            volume.zone.as_deref().unwrap_or("?"),
            snapshotters.describe()
        ));
        return record;
    }
    let mut last_error = String::new();
    for (location, _, connection) in candidates {
        let ebs = match connection {
            Ok(ebs) => ebs,
            Err(error) => {
                last_error = error.clone();
                continue;
            }
        };
        let info = match ebs.describe_volume(&volume.volume_id).await {
            Ok(info) => info,
            Err(error) => {
                // Without a known zone, the volume may be in another location's region.
                last_error = error.message;
                continue;
            }
        };
        let tags = snapshot_tags(backup, &record, &info.tags);
        let description = format!(
            "Ferry backup {} of {}",
            backup.name_any(),
            record.describe()
        );
        match ebs.create_snapshot(&info, &description, &tags).await {
            Ok((snapshot_id, progress)) => {
                record.snapshot = Some(NativeSnapshot {
                    provider: "aws".to_owned(),
                    location: location.clone(),
                    region: ebs.region().to_owned(),
                    snapshot_id,
                    volume_id: info.volume_id,
                    availability_zone: info.availability_zone,
                    volume_type: info.volume_type,
                    iops: info.iops,
                    throughput: info.throughput,
                    size_gib: info.size_gib,
                    encrypted: info.encrypted,
                    kms_key_id: info.kms_key_id,
                    tags: info.tags,
                });
                apply_progress(&mut record, progress);
            }
            Err(error) => {
                record.phase = VolumePhase::Failed;
                record.message = Some(format!("snapshot failed: {}", error.message));
            }
        }
        return record;
    }
    record.phase = VolumePhase::Failed;
    record.message = Some(last_error);
    record
}

fn apply_progress(record: &mut VolumeRecord, progress: SnapshotProgress) {
    match progress {
        SnapshotProgress::Pending => record.phase = VolumePhase::InProgress,
        SnapshotProgress::Completed => {
            record.phase = VolumePhase::Completed;
            record.message = None;
        }
        SnapshotProgress::Failed(message) => {
            record.phase = VolumePhase::Failed;
            record.message = Some(message);
        }
    }
}

/// The volume's own tags, then Ferry's (which win), within EC2's limit.
fn snapshot_tags(
    backup: &Backup,
    record: &VolumeRecord,
    own: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut ferry = BTreeMap::from([
        (ebs::tags::BACKUP.to_owned(), backup.name_any()),
        (
            ebs::tags::BACKUP_UID.to_owned(),
            backup.uid().unwrap_or_default(),
        ),
        (
            ebs::tags::PERSISTENT_VOLUME.to_owned(),
            record.persistent_volume.clone(),
        ),
    ]);
    if let Some(claim) = &record.claim {
        ferry.insert(ebs::tags::CLAIM.to_owned(), claim.name.clone());
        ferry.insert(ebs::tags::NAMESPACE.to_owned(), claim.namespace.clone());
    }
    let room = MAX_TAGS - ferry.len();
    let mut tags: BTreeMap<String, String> = own
        .iter()
        .filter(|(key, _)| !ferry.contains_key(*key))
        .take(room)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tags.append(&mut ferry);
    tags
}

pub(super) fn claim_of(pv: &Value) -> Option<ClaimRef> {
    let claim = pv.pointer("/spec/claimRef")?;
    Some(ClaimRef {
        namespace: claim.get("namespace")?.as_str()?.to_owned(),
        name: claim.get("name")?.as_str()?.to_owned(),
    })
}

/// What kind of volume a PersistentVolume is, for messages: `hostPath`, `csi (driver x)`, ...
pub(super) fn volume_source(pv: &Value) -> String {
    let Some(spec) = pv.get("spec").and_then(Value::as_object) else {
        return "such".to_owned();
    };
    if let Some(driver) = spec
        .get("csi")
        .and_then(|csi| csi.get("driver"))
        .and_then(Value::as_str)
    {
        return format!("CSI ({driver})");
    }
    const NOT_SOURCES: [&str; 9] = [
        "accessModes",
        "capacity",
        "claimRef",
        "mountOptions",
        "nodeAffinity",
        "persistentVolumeReclaimPolicy",
        "storageClassName",
        "volumeAttributesClassName",
        "volumeMode",
    ];
    spec.keys()
        .find(|key| !NOT_SOURCES.contains(&key.as_str()))
        .cloned()
        .unwrap_or_else(|| "such".to_owned())
}

/// Asks EC2 how the snapshots still in progress are doing and records what it says. Returns
/// whether every volume has finished.
pub(super) async fn follow_snapshots(ctx: &Context, records: &mut VolumeRecords) -> Result<bool> {
    let mut by_location: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (index, record) in records.volumes.iter().enumerate() {
        if record.phase == VolumePhase::InProgress
            && let Some(snapshot) = &record.snapshot
        {
            by_location
                .entry(snapshot.location.clone())
                .or_default()
                .push(index);
        }
    }
    for (location, indices) in by_location {
        let ebs = match snapshot_location_ebs(ctx, &location).await {
            Ok(ebs) => ebs,
            Err(Error::NotFound { what }) => {
                for &index in &indices {
                    let record = &mut records.volumes[index];
                    record.phase = VolumePhase::Failed;
                    record.message = Some(format!(
                        "{what} was deleted while the snapshot was being taken"
                    ));
                }
                continue;
            }
            Err(error) => return Err(error),
        };
        let ids: Vec<String> = indices
            .iter()
            .filter_map(|&i| records.volumes[i].snapshot.as_ref())
            .map(|s| s.snapshot_id.clone())
            .collect();
        let progress = ebs.snapshot_progress(&ids).await.map_err(ebs_error)?;
        for index in indices {
            let record = &mut records.volumes[index];
            let id = record
                .snapshot
                .as_ref()
                .map(|s| s.snapshot_id.clone())
                .unwrap_or_default();
            if let Some(progress) = progress.get(&id) {
                apply_progress(record, progress.clone());
            }
        }
    }
    Ok(records.volumes.iter().all(|r| r.phase.is_terminal()))
}

/// Deletes every native snapshot of a backup (by the uid of the Backup that took them); one
/// already gone counts as deleted. Only snapshots that carry the backup's tag are deleted: a
/// record naming any other snapshot (written by mistake, or by whoever held the key) must not
/// make Ferry delete what is not its own. Returns how many snapshots it deleted.
pub async fn delete_snapshots(
    ctx: &Context,
    records: &VolumeRecords,
    backup_uid: &str,
) -> Result<usize> {
    let mut connections: BTreeMap<String, (Ebs, BTreeSet<String>)> = BTreeMap::new();
    let mut deleted = 0;
    for snapshot in records.volumes.iter().filter_map(|r| r.snapshot.as_ref()) {
        if !connections.contains_key(&snapshot.location) {
            let ebs = snapshot_location_ebs(ctx, &snapshot.location)
                .await
                .map_err(|error| match error {
                    Error::NotFound { what } => Error::Validation(vec![format!(
                        "{what} is needed to delete snapshot {} in region {}; recreate it",
                        snapshot.snapshot_id, snapshot.region
                    )]),
                    other => other,
                })?;
            let owned: BTreeSet<String> = ebs
                .snapshots_tagged(ebs::tags::BACKUP_UID, backup_uid)
                .await
                .map_err(ebs_error)?
                .into_iter()
                .collect();
            connections.insert(snapshot.location.clone(), (ebs, owned));
        }
        let (ebs, owned) = &connections[&snapshot.location];
        if !owned.contains(&snapshot.snapshot_id) {
            // Gone already, or never this backup's.
            tracing::warn!(
                message = "a snapshot the backup's records name does not carry its tag (or is gone); left alone",
                snapshot = %snapshot.snapshot_id,
                tag = %format!("{}={backup_uid}", ebs::tags::BACKUP_UID),
            );
            continue;
        }
        ebs.delete_snapshot(&snapshot.snapshot_id)
            .await
            .map_err(ebs_error)?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Deletes the snapshots a backup interrupted by a restart may have started before it recorded
/// them: every EBS snapshot tagged with its uid, in every snapshot location, and its CSI
/// snapshots. Returns how many it deleted.
pub async fn delete_unrecorded_snapshots(ctx: &Context, backup: &Backup) -> Result<usize> {
    let uid = backup.uid().unwrap_or_default();
    let mut deleted = 0;
    for location in ctx.locations.snapshot_locations(&[]).await? {
        let ebs = ctx.locations.ebs(&location).await?;
        let ids = ebs
            .snapshots_tagged(ebs::tags::BACKUP_UID, &uid)
            .await
            .map_err(ebs_error)?;
        for id in ids {
            ebs.delete_snapshot(&id).await.map_err(ebs_error)?;
            deleted += 1;
        }
    }
    Ok(deleted + csi::delete_unrecorded(ctx, &uid).await?)
}

/// The EC2 connection of the VolumeSnapshotLocation `name`.
pub async fn snapshot_location_ebs(ctx: &Context, name: &str) -> Result<Ebs> {
    let mut locations = ctx.locations.snapshot_locations(&[name.to_owned()]).await?;
    ctx.locations.ebs(&locations.remove(0)).await
}

pub fn ebs_error(error: EbsError) -> Error {
    Error::Snapshot {
        message: error.message,
        retryable: error.retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ferry_tags_win_and_the_total_stays_within_ec2s_limit() {
        let mut backup = Backup::new("nightly", Default::default());
        backup.metadata.uid = Some("u-1".into());
        let record = VolumeRecord {
            persistent_volume: "pv-1".into(),
            claim: Some(ClaimRef {
                namespace: "shop".into(),
                name: "data".into(),
            }),
            method: VolumeMethod::NativeSnapshot,
            phase: VolumePhase::InProgress,
            message: None,
            snapshot: None,
            pod_volume: None,
            file_system: None,
            csi_snapshot: None,
        };
        let mut own: BTreeMap<String, String> = (0..60)
            .map(|i| (format!("k{i:02}"), "v".to_owned()))
            .collect();
        own.insert(ebs::tags::BACKUP.into(), "spoofed".into());
        let tags = snapshot_tags(&backup, &record, &own);
        assert_eq!(tags.len(), MAX_TAGS);
        assert_eq!(tags[ebs::tags::BACKUP], "nightly");
        assert_eq!(tags[ebs::tags::BACKUP_UID], "u-1");
        assert_eq!(tags[ebs::tags::CLAIM], "data");
        assert_eq!(tags[ebs::tags::NAMESPACE], "shop");
        assert_eq!(tags["k00"], "v");
    }

    #[test]
    fn volume_sources_are_named_for_messages() {
        let host_path = json!({"spec": {"capacity": {"storage": "1Gi"}, "hostPath": {"path": "/d"}, "accessModes": ["ReadWriteOnce"]}});
        assert_eq!(volume_source(&host_path), "hostPath");
        let csi = json!({"spec": {"csi": {"driver": "rook-ceph.rbd.csi.ceph.com"}}});
        assert_eq!(volume_source(&csi), "CSI (rook-ceph.rbd.csi.ceph.com)");
        assert_eq!(
            claim_of(&json!({"spec": {"claimRef": {"namespace": "a", "name": "b"}}})),
            Some(ClaimRef {
                namespace: "a".into(),
                name: "b".into()
            })
        );
    }
}
