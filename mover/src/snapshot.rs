//! Snapshots: the root tree of one backup and what it was a backup of.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    /// Bytes read from the source: unchanged files are not read at all.
    pub bytes_read: u64,
    /// Stored (compressed, encrypted) bytes newly added to the repository, pack headers included.
    pub bytes_added: u64,
    pub data_blobs_added: u64,
    pub tree_blobs_added: u64,
    pub errors: u64,
    pub total_files: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub time: jiff::Timestamp,
    pub tree: Id,
    /// The absolute path that was backed up.
    pub source: String,
    pub hostname: String,
    pub username: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub parent: Option<Id>,
    #[serde(default)]
    pub summary: BackupSummary,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a snapshot serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot> {
        serde_json::from_slice(bytes).map_err(|error| Error::Format(format!("snapshot: {error}")))
    }
}

/// Which snapshots `forget` keeps. Like restic's policy: each rule keeps the newest snapshot of
/// each of the last N periods (hours, days...) that hold one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl RetentionPolicy {
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }

    /// Returns the positions of `times` to keep. `times` must be sorted newest first.
    pub fn apply(&self, times: &[jiff::Timestamp]) -> Vec<bool> {
        let mut keep = vec![false; times.len()];
        let zoned: Vec<jiff::civil::DateTime> = times
            .iter()
            .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).datetime())
            .collect();
        type Bucket = fn(&jiff::civil::DateTime) -> (i32, i32, i32, i32);
        let rules: [(u32, Bucket); 5] = [
            (self.keep_last, |_| (0, 0, 0, 0)),
            (self.keep_hourly, |d| {
                (
                    d.year() as i32,
                    d.month() as i32,
                    d.day() as i32,
                    d.hour() as i32,
                )
            }),
            (self.keep_daily, |d| {
                (d.year() as i32, d.month() as i32, d.day() as i32, 0)
            }),
            (self.keep_weekly, |d| {
                let week = d.date().iso_week_date();
                (week.year() as i32, week.week() as i32, 0, 0)
            }),
            (self.keep_monthly, |d| {
                (d.year() as i32, d.month() as i32, 0, 0)
            }),
        ];
        for (rule_index, (count, bucket)) in rules.into_iter().enumerate() {
            let mut remaining = count;
            let mut last_bucket = None;
            for (position, date) in zoned.iter().enumerate() {
                if remaining == 0 {
                    break;
                }
                // keep-last treats every snapshot as its own period.
                let this_bucket = if rule_index == 0 {
                    (position as i32, 0, 0, 0)
                } else {
                    bucket(date)
                };
                if last_bucket != Some(this_bucket) {
                    keep[position] = true;
                    last_bucket = Some(this_bucket);
                    remaining -= 1;
                }
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn snapshots_round_trip(tags in proptest::collection::vec("[a-z]{0,8}", 0..4), seconds in 0i64..4_000_000_000, tree in any::<[u8; 32]>()) {
            let snapshot = Snapshot {
                version: 1,
                time: jiff::Timestamp::from_second(seconds).unwrap(),
                tree: Id(tree),
                source: "/data".into(),
                hostname: "h".into(),
                username: "u".into(),
                tags,
                parent: Some(Id(tree)),
                summary: BackupSummary { files_new: 3, ..Default::default() },
            };
            prop_assert_eq!(Snapshot::decode(&snapshot.encode()).unwrap(), snapshot);
        }

        #[test]
        fn garbage_snapshots_error_and_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Snapshot::decode(&bytes);
        }
    }

    #[test]
    fn retention_keeps_the_newest_of_each_period() {
        let base = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        // Newest first: one snapshot every 6 hours over 10 days.
        let times: Vec<_> = (0..40)
            .map(|i| base - jiff::SignedDuration::from_hours(6 * i))
            .collect();
        let kept = |policy: RetentionPolicy| policy.apply(&times).iter().filter(|k| **k).count();
        assert_eq!(
            kept(RetentionPolicy {
                keep_last: 3,
                ..Default::default()
            }),
            3
        );
        assert_eq!(
            kept(RetentionPolicy {
                keep_daily: 5,
                ..Default::default()
            }),
            5
        );
        assert_eq!(
            kept(RetentionPolicy {
                keep_hourly: 100,
                ..Default::default()
            }),
            40
        );
        let keep = RetentionPolicy {
            keep_last: 1,
            keep_daily: 2,
            ..Default::default()
        }
        .apply(&times);
        assert!(keep[0], "the newest snapshot is always kept by keep-last");
        assert_eq!(
            RetentionPolicy::default()
                .apply(&times)
                .iter()
                .filter(|k| **k)
                .count(),
            0
        );
    }
}
