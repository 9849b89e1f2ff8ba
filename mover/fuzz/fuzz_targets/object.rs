//! The framing every JSON object (config, index, snapshot, lock) goes through:
//! `repository::decode_object` = AES-256-GCM, then a format byte, then zstd with an output bound
//! of 1 GiB. The first byte of the input picks how:
//! - `0` (raw): the rest is the stored object, as anyone who can write to the bucket plants it.
//!   Almost everything fails authentication, which is the point: nothing before it may panic.
//! - `1` (sealed): the rest is the plaintext (format byte ‖ zstd frame), sealed here with the test
//!   key, as a key holder plants it; the zstd and JSON layers behind the AEAD are reached. What
//!   decodes is handed to each JSON decoder, as the readers of the four kinds of object do.
#![no_main]

use ferry_mover::index::IndexFile;
use ferry_mover::lock::LockInfo;
use ferry_mover::repository::{RepoConfig, decode_object};
use ferry_mover::snapshot::Snapshot;
use ferry_mover_fuzz::{take, test_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Some(mode) = take(&mut data, 1) else {
        return;
    };
    let result = if mode[0] % 2 == 0 {
        decode_object(test_key(), data, "object")
    } else {
        decode_object(test_key(), &test_key().encrypt(data), "object")
    };
    let Ok(plain) = result else {
        return;
    };
    assert!(plain.len() <= 1 << 30);
    let _ = serde_json::from_slice::<RepoConfig>(&plain);
    let _ = IndexFile::decode(&plain);
    let _ = Snapshot::decode(&plain);
    let _ = LockInfo::decode(&plain);
});
