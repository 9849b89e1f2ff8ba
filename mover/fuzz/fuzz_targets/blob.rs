//! Blobs: `blob::open` of a stored blob (as restore and check read one out of a pack), with the
//! compression and plaintext length the pack header or the index gives, which a key holder
//! chooses. Input: `compression u8 ‖ raw_length u32 LE ‖ stored plaintext`; the stored plaintext is
//! sealed here with the test key, so decompression is reached. The id checked against is the test
//! key's id of the stored plaintext when it is not compressed (so that path can succeed), else
//! zeros. Compression 2 (zstd with a dictionary) reaches the frame's dictionary id, and no
//! dictionary.
#![no_main]

use ferry_mover::dictionary::NoDictionaries;
use ferry_mover::id::Id;
use ferry_mover_fuzz::{take, take_u32, test_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let (Some(compression), Some(raw_length)) = (take(&mut data, 1), take_u32(&mut data)) else {
        return;
    };
    let compression = compression[0];
    let id = if compression == 0 {
        test_key().blob_id(data)
    } else {
        Id([0; 32])
    };
    let sealed = test_key().encrypt(data);
    if let Ok(plain) =
        ferry_mover::blob::open(
            test_key(),
            &NoDictionaries,
            &id,
            compression,
            raw_length,
            &sealed,
            "blob",
        )
    {
        assert_eq!(plain.len(), raw_length as usize);
        assert_eq!(test_key().blob_id(&plain), id);
    }
});
