//! Snapshots: `Snapshot::decode` of a snapshot object's plaintext (a key holder plants any), then
//! what `forget` does with the snapshots it lists: the retention policy over their times.
#![no_main]

use ferry_mover::snapshot::{RetentionPolicy, Snapshot};
use ferry_mover_fuzz::assert_json_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = Snapshot::decode(data) else {
        return;
    };
    assert_json_round_trip(&snapshot, Snapshot::decode);
    assert_eq!(
        Snapshot::decode(&snapshot.encode()).ok().as_ref(),
        Some(&snapshot)
    );
    let policy = RetentionPolicy {
        keep_last: 1,
        keep_hourly: 2,
        keep_daily: 2,
        keep_weekly: 2,
        keep_monthly: 2,
    };
    let keep = policy.apply(&[snapshot.time, snapshot.time]);
    assert!(keep[0], "the newest snapshot is kept");
});
