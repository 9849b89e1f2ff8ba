//! Key slots: `KeySlot::decode` of a `keys/<id>` object, then `unwrap_with` the test password.
//! Key slots are stored in clear, so anyone who can write to the bucket plants them, with no key
//! at all; opening a repository reads every slot before anything is authenticated.
//!
//! `KeySlot::decode` accepts Argon2id costs up to `KdfParams::MAX` (4 GiB, 64 passes, 64 lanes):
//! deriving a key at such costs takes seconds to minutes and gigabytes, far beyond what a fuzzer can
//! run per input (libFuzzer would report a timeout or an out-of-memory, not a bug). So
//! `unwrap_with` runs only when the memory cost is at most 1 MiB and memory x passes at most
//! 4 MiB; the decoding, the bound checks and the code paths of the derivation are the same for
//! small costs. That large costs are refused above `MAX` is checked here for every slot.
#![no_main]

use ferry_mover::crypto::{KdfParams, KeySlot};
use ferry_mover_fuzz::{TEST_PASSWORD, assert_json_round_trip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(slot) = KeySlot::decode(data) else {
        return;
    };
    let (params, max) = (slot.params, KdfParams::MAX);
    assert!(
        params.memory_kib <= max.memory_kib
            && params.iterations <= max.iterations
            && params.parallelism <= max.parallelism,
        "a slot beyond KdfParams::MAX was accepted: {params:?}"
    );
    assert_json_round_trip(&slot, KeySlot::decode);
    if params.memory_kib <= 1024 && params.memory_kib as u64 * params.iterations as u64 <= 4096 {
        let _ = slot.unwrap_with(TEST_PASSWORD);
    }
});
