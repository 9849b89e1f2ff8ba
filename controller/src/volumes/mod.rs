//! The data in an operation's volumes, beside its objects.
//!
//! A backup keeps each PersistentVolume's data as its volume [`policy`] chooses: by a native
//! snapshot ([`snapshots`], EBS), a CSI snapshot ([`csi`]), or by file through the node agents
//! ([`pod_volumes`]); a restore fills restored pods' volumes through
//! the agents again. Either way every volume has one [`VolumeRecord`], and the [`VolumeTracker`]
//! is the one place that follows them to their end for both kinds: it reads the records from the
//! operation's [`VolumeState`] in the cluster, asks EC2 and the agents how they are doing, fails
//! those that waited too long, and writes them back, so that a restarted controller carries on
//! where this one stopped. Once every volume has ended it writes them to the bucket, where the
//! restores of a backup read them.

pub mod csi;
mod pod_volumes;
pub mod policy;
mod snapshots;
pub mod state;

use std::time::Duration;

use ferry_protocol::crd::{BackupStorageLocation, PodVolumeProgress};
use ferry_protocol::volume::{VolumePhase, VolumeRecord, VolumeRecords};
use jiff::Timestamp;

use crate::context::Context;
use crate::error::Result;
use crate::storage::ObjectStore;
pub use state::VolumeState;

pub use pod_volumes::{
    FS_BACKUP_EXCLUDES_ANNOTATION, FS_BACKUP_VOLUMES_ANNOTATION, PodVolumeChoice, Transfer,
    choose_pod_volumes, pod_volume_progress, pod_volume_records,
};
pub use snapshots::{
    VolumeOutcome, delete_snapshots, delete_unrecorded_snapshots, ebs_error, snapshot_location_ebs,
    snapshot_volumes,
};

/// How often an operation waiting for its volumes looks at them again.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The longest an operation waits for its volumes, counted from its start; `None` for no limit of
/// its own (each pod volume task still has the agents' readiness limit).
#[derive(Debug, Clone)]
pub struct WaitLimit {
    pub started: Timestamp,
    pub limit: Duration,
    /// The message of a volume still waiting at the limit.
    pub message: String,
}

/// Follows the volumes of one Backup or Restore, whose records go to `key` in `store` once they
/// have ended.
pub struct VolumeTracker<'a> {
    ctx: &'a Context,
    location: &'a BackupStorageLocation,
    store: &'a ObjectStore,
    key: String,
    transfer: Transfer,
    state: VolumeState,
}

/// The volumes after one look.
#[derive(Debug)]
pub struct Followed {
    pub records: VolumeRecords,
    /// Every volume has ended (completed or failed).
    pub done: bool,
}

impl Followed {
    /// What went wrong with each volume that failed, one line each.
    pub fn failures(&self) -> Vec<String> {
        failures(&self.records.volumes)
    }
}

/// What went wrong with each of `volumes` that failed, one line each.
pub fn failures(volumes: &[VolumeRecord]) -> Vec<String> {
    volumes
        .iter()
        .filter(|r| r.phase == VolumePhase::Failed)
        .map(VolumeRecord::failure)
        .collect()
}

impl<'a> VolumeTracker<'a> {
    /// The tracker of `operation`'s volumes.
    pub fn new<K: kube::Resource<DynamicType = ()>>(
        ctx: &'a Context,
        operation: &K,
        location: &'a BackupStorageLocation,
        store: &'a ObjectStore,
        key: String,
        transfer: Transfer,
    ) -> VolumeTracker<'a> {
        VolumeTracker {
            ctx,
            location,
            store,
            key,
            transfer,
            state: VolumeState::of(ctx.client.clone(), operation),
        }
    }

    /// Starts following `records`: starts their node agent tasks, then keeps them in the cluster,
    /// or in the bucket if every volume has ended already.
    pub async fn begin(&self, records: &mut VolumeRecords) -> Result<()> {
        pod_volumes::follow_pod_volumes(self.ctx, self.location, &self.transfer, records).await?;
        if all_ended(records) {
            self.store.put(&self.key, crate::gzip_json(records)?).await
        } else {
            self.state.save(records).await
        }
    }

    /// One more look: reads the records from the cluster, asks EC2 about native snapshots and the
    /// cluster about CSI snapshots in progress, asks the agents about their tasks (starting those that are not running), fails
    /// what waited past `wait_limit`, and keeps the records: in the cluster while some volume is
    /// in progress, in the bucket once none is.
    pub async fn follow(&self, wait_limit: Option<&WaitLimit>) -> Result<Followed> {
        let mut records = self.state.load().await?;
        let looked_at = records.clone();
        let native_done = snapshots::follow_snapshots(self.ctx, &mut records).await?;
        let csi_done = csi::follow(self.ctx, self.location, &mut records).await?;
        let snapshots_done = native_done && csi_done;
        let pod_volumes_done =
            pod_volumes::follow_pod_volumes(self.ctx, self.location, &self.transfer, &mut records)
                .await?;
        let moves_done = csi::finish_moves(self.ctx, &mut records).await;
        let mut done = snapshots_done && pod_volumes_done && moves_done;
        if !done && let Some(limit) = wait_limit {
            done = give_up_waiting(&mut records, limit, self.ctx.now());
        }
        if records != looked_at {
            self.state.save(&records).await?;
        }
        if done {
            self.store
                .put(&self.key, crate::gzip_json(&records)?)
                .await?;
        }
        Ok(Followed { records, done })
    }
}

/// Whether no volume of `records` is still in progress.
fn all_ended(records: &VolumeRecords) -> bool {
    records
        .volumes
        .iter()
        .all(|r| r.phase != VolumePhase::InProgress)
}

/// Fails every volume still in progress once `limit` has passed: a pod that is never scheduled,
/// or whose volume is never mounted, must not hold an operation for ever. Returns whether it did.
fn give_up_waiting(records: &mut VolumeRecords, limit: &WaitLimit, now: Timestamp) -> bool {
    let waited = now.as_second() - limit.started.as_second();
    if waited <= i64::try_from(limit.limit.as_secs()).unwrap_or(i64::MAX) {
        return false;
    }
    for record in records
        .volumes
        .iter_mut()
        .filter(|r| r.phase == VolumePhase::InProgress)
    {
        record.phase = VolumePhase::Failed;
        record.message = Some(limit.message.clone());
    }
    true
}

/// The status's count of the agents' pod volumes, and of native and CSI snapshots attempted and
/// completed.
pub struct Counts {
    pub pod_volumes: Option<PodVolumeProgress>,
    pub snapshots_attempted: u32,
    pub snapshots_completed: u32,
    pub csi_snapshots_attempted: u32,
    pub csi_snapshots_completed: u32,
}

/// Counts `records` for a status.
pub fn count(ctx: &Context, records: &VolumeRecords) -> Counts {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let attempted_and_completed = |kind: fn(&VolumeRecord) -> bool| {
        let taken = records.volumes.iter().filter(|r| kind(r));
        (
            count(taken.clone().count()),
            count(taken.filter(|r| r.phase == VolumePhase::Completed).count()),
        )
    };
    let (snapshots_attempted, snapshots_completed) =
        attempted_and_completed(|r| r.snapshot.is_some());
    let (csi_snapshots_attempted, csi_snapshots_completed) =
        attempted_and_completed(|r| r.csi_snapshot.is_some());
    Counts {
        pod_volumes: pod_volume_progress(ctx, records),
        snapshots_attempted,
        snapshots_completed,
        csi_snapshots_attempted,
        csi_snapshots_completed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::volume::{ClaimRef, VolumeMethod};

    fn record(name: &str, phase: VolumePhase) -> VolumeRecord {
        VolumeRecord {
            persistent_volume: name.into(),
            claim: Some(ClaimRef {
                namespace: "shop".into(),
                name: name.into(),
            }),
            method: VolumeMethod::FileSystem,
            phase,
            message: None,
            snapshot: None,
            pod_volume: None,
            file_system: None,
            csi_snapshot: None,
        }
    }

    #[test]
    fn volumes_still_waiting_at_the_limit_fail_and_ended_ones_stay() {
        let started = Timestamp::from_second(1_800_000_000).unwrap();
        let limit = WaitLimit {
            started,
            limit: Duration::from_secs(4 * 3600),
            message: "not restored within 4 h".to_owned(),
        };
        let mut records = VolumeRecords::new(vec![
            record("waiting", VolumePhase::InProgress),
            record("done", VolumePhase::Completed),
        ]);
        let at_limit = started + jiff::SignedDuration::from_hours(4);
        assert!(!give_up_waiting(&mut records, &limit, at_limit));
        assert_eq!(records.volumes[0].phase, VolumePhase::InProgress);

        let past = at_limit + jiff::SignedDuration::from_secs(1);
        assert!(give_up_waiting(&mut records, &limit, past));
        assert_eq!(records.volumes[0].phase, VolumePhase::Failed);
        assert_eq!(
            records.volumes[0].message.as_deref(),
            Some("not restored within 4 h")
        );
        assert_eq!(records.volumes[1].phase, VolumePhase::Completed);
        assert_eq!(failures(&records.volumes).len(), 1);
    }
}
