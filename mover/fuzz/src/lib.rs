//! What the fuzz targets share: the fixed test key and the checks every decoded value must pass.
//!
//! The repository is hostile: anyone who can write to the bucket can plant any bytes, and a key
//! holder (a compromised node) can plant bytes that authenticate. The targets feed the decoders
//! both: raw bytes, and fuzzer-chosen plaintext sealed with [`test_key`], so that the layers
//! behind AES-GCM (the header of a pack, zstd, JSON) are reached too.

use std::sync::OnceLock;

use ferry_mover::crypto::MasterKey;

/// The master key of every sealed fuzz input. The seed generator (`src/bin/seeds.rs`) re-seals
/// real objects with it, so the seeds authenticate.
pub const TEST_KEY: [u8; 32] = [7; 32];

/// The index name the `object` target reads every input as: a sealed input must be bound to it
/// (format version 2) to authenticate.
pub const OBJECT_TARGET_NAME: &str = "00aa";

/// The password of the repository the seeds come from; the key-slot target tries it.
pub const TEST_PASSWORD: &[u8] = b"password";

pub fn test_key() -> &'static MasterKey {
    static KEY: OnceLock<MasterKey> = OnceLock::new();
    KEY.get_or_init(|| MasterKey::from_bytes(TEST_KEY))
}

/// A decoded value must encode to JSON that decodes to the same value: what a reader accepts, a
/// writer (prune rewriting an index, `forget` rewriting nothing but listing) can write back.
pub fn assert_json_round_trip<T>(value: &T, decode: impl Fn(&[u8]) -> ferry_mover::Result<T>)
where
    T: serde::Serialize,
{
    let first = serde_json::to_vec(value).expect("a decoded value serializes");
    let again = decode(&first).unwrap_or_else(|error| {
        panic!(
            "re-encoded value does not decode: {error}\n{}",
            String::from_utf8_lossy(&first)
        )
    });
    let second = serde_json::to_vec(&again).expect("a decoded value serializes");
    assert_eq!(
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&second),
        "decode(encode(x)) differs from x"
    );
}

/// Splits `n` bytes off the front of `data`.
pub fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, tail) = data.split_at(n);
    *data = tail;
    Some(head)
}

pub fn take_u32(data: &mut &[u8]) -> Option<u32> {
    take(data, 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

pub fn take_u64(data: &mut &[u8]) -> Option<u64> {
    take(data, 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}
