//! Index objects: `IndexFile::decode` of an index's JSON (the plaintext behind the object framing,
//! which a key holder controls), then every pack merged into a `MasterIndex` as `load_index` does,
//! twice (several index objects may list the same pack), and every blob looked up again.
#![no_main]

use ferry_mover::index::{IndexFile, MasterIndex};
use ferry_mover_fuzz::assert_json_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(index) = IndexFile::decode(data) else {
        return;
    };
    assert_json_round_trip(&index, IndexFile::decode);
    assert_eq!(
        IndexFile::decode(&index.encode()).ok().as_ref(),
        Some(&index)
    );

    let mut master = MasterIndex::default();
    for _ in 0..2 {
        for pack in &index.packs {
            master
                .add_pack(pack)
                .expect("a pack of a decoded index merges");
        }
    }
    for pack in &index.packs {
        assert!(master.has_pack(&pack.id));
        for &(id, ..) in &pack.blobs {
            let location = master.get(&id).expect("every listed blob is found");
            let pack_id = master.pack_id(location);
            let size = master
                .packs
                .iter()
                .find(|(id, _)| *id == pack_id)
                .expect("the blob's pack is listed")
                .1;
            assert!(location.offset as u64 + location.length as u64 <= size);
        }
    }
    assert!(master.blob_count() <= index.packs.iter().map(|p| p.blobs.len()).sum());
});
