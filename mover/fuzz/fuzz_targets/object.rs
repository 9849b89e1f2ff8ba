//! The framing every JSON object (config, index, snapshot, lock) goes through:
//! `repository::decode_object` = AES-256-GCM bound to the object's path (format version 2), then a
//! format byte, then zstd with an output bound of 1 GiB. The first byte of the input picks how:
//! - even (raw): the rest is the stored object, as anyone who can write to the bucket plants it.
//!   Almost everything fails authentication, which is the point: nothing before it may panic.
//! - odd (sealed): the rest is the plaintext (format byte ‖ zstd frame), sealed here with the test
//!   key under the path it is read as, as a key holder plants it; the zstd and JSON layers behind
//!   the AEAD are reached. What decodes is handed to each JSON decoder, as the readers of the four
//!   kinds of object do.
#![no_main]

use ferry_mover::backend::Kind;
use ferry_mover::index::IndexFile;
use ferry_mover::lock::LockInfo;
use ferry_mover::repository::{FORMAT_VERSION, RepoConfig, decode_object, object_binding};
use ferry_mover::snapshot::Snapshot;
use ferry_mover_fuzz::{OBJECT_TARGET_NAME, take, test_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Some(mode) = take(&mut data, 1) else {
        return;
    };
    let name = OBJECT_TARGET_NAME;
    let result = if mode[0] % 2 == 0 {
        decode_object(test_key(), data, FORMAT_VERSION, Kind::Index, name)
    } else {
        let binding = object_binding(FORMAT_VERSION, Kind::Index, name);
        let sealed = test_key().encrypt_bound(data, &binding);
        decode_object(test_key(), &sealed, FORMAT_VERSION, Kind::Index, name)
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
