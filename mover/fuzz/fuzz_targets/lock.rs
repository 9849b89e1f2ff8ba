//! Locks: `LockInfo::decode` of a lock object's plaintext. Anyone holding the key, every node
//! agent, writes locks, and every process that takes a lock reads all of them.
#![no_main]

use ferry_mover::lock::LockInfo;
use ferry_mover_fuzz::assert_json_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(lock) = LockInfo::decode(data) else {
        return;
    };
    assert_json_round_trip(&lock, LockInfo::decode);
    let _ = format!("{lock:?}");
});
