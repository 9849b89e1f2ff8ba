//! Packs: `pack::decode_header` and `pack::parse_pack`, and the blobs a parsed header points at.
//!
//! The first byte of the input picks what is fuzzed:
//! - `0`: `decode_header(header plaintext, header_start)` as `read_header` calls it after
//!   decrypting a stored header; input `header_start u64 LE ‖ header plaintext`. This is what a key
//!   holder controls.
//! - `1`: `parse_pack(test key, bytes)` of a whole pack, as `check --read-data` and prune read one;
//!   input: the pack. The seeds are real packs re-sealed with the test key, so they parse and their
//!   blobs open; mutations mostly fail authentication.
//! - `2`: a pack whose header plaintext the fuzzer chooses, sealed here with the test key so that
//!   `parse_pack` reaches `decode_header`; input `blob area length u32 LE (at most 1 MiB, zeros) ‖
//!   header plaintext`.
//!
//! Every header accepted must describe blobs that lie end to end from offset 0 and end before the
//! header, so that slicing a pack by its entries can neither panic nor read the wrong bytes.
#![no_main]

use ferry_mover::pack::{PackEntry, decode_header, parse_pack};
use ferry_mover_fuzz::{take, take_u32, take_u64, test_key};
use libfuzzer_sys::fuzz_target;

fn check_entries(entries: &[PackEntry], header_start: u64) {
    let mut expected_offset: u64 = 0;
    for entry in entries {
        assert_eq!(
            entry.offset as u64, expected_offset,
            "blob offsets are not contiguous (header_start {header_start}): {entries:?}"
        );
        assert!(
            entry.offset as u64 + entry.length as u64 <= header_start,
            "blob beyond the header (header_start {header_start}): {entry:?}"
        );
        expected_offset += entry.length as u64;
    }
}

fn open_blobs(entries: &[PackEntry], pack: &[u8]) {
    for entry in entries {
        let start = entry.offset as usize;
        let stored = &pack[start..start + entry.length as usize];
        let _ = ferry_mover::blob::open(
            test_key(),
            &ferry_mover::dictionary::NoDictionaries,
            &entry.id,
            entry.compression,
            entry.raw_length,
            stored,
            "blob",
        );
    }
}

fn parse(pack: &[u8]) {
    if let Ok(entries) = parse_pack(test_key(), "fuzz", pack) {
        let header_len = u32::from_le_bytes(pack[pack.len() - 4..].try_into().unwrap()) as u64;
        check_entries(&entries, pack.len() as u64 - 4 - header_len);
        open_blobs(&entries, pack);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Some(mode) = take(&mut data, 1) else {
        return;
    };
    match mode[0] % 3 {
        0 => {
            let Some(header_start) = take_u64(&mut data) else {
                return;
            };
            if let Ok(entries) = decode_header(data, header_start) {
                check_entries(&entries, header_start);
            }
        }
        1 => parse(data),
        _ => {
            let Some(area) = take_u32(&mut data) else {
                return;
            };
            let area = (area % (1 << 20)) as usize;
            let header = test_key().encrypt(data);
            let mut pack = vec![0u8; area];
            pack.extend_from_slice(&header);
            pack.extend_from_slice(&(header.len() as u32).to_le_bytes());
            parse(&pack);
        }
    }
});
