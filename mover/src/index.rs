//! The index: where every blob is. Index objects are written after the packs they describe and
//! before any snapshot that needs them, so a crash leaves at worst packs no index names (which
//! `prune` removes), never an index naming a missing pack.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::blob::BlobKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::PackEntry;

/// One index object as stored (JSON, compressed and encrypted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IndexFile {
    pub version: u32,
    pub packs: Vec<IndexPack>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexPack {
    pub id: Id,
    pub size: u64,
    /// Each blob as `[id, kind, compression, offset, length, raw_length]`: compact, and the index
    /// of a large repository is mostly these.
    pub blobs: Vec<(Id, u8, u8, u32, u32, u32)>,
}

impl IndexPack {
    pub fn new(id: Id, size: u64, entries: &[PackEntry]) -> IndexPack {
        IndexPack {
            id,
            size,
            blobs: entries
                .iter()
                .map(|e| {
                    (
                        e.id,
                        e.kind.code(),
                        e.compression,
                        e.offset,
                        e.length,
                        e.raw_length,
                    )
                })
                .collect(),
        }
    }

    pub fn entries(&self) -> Result<Vec<PackEntry>> {
        self.blobs
            .iter()
            .map(|&(id, kind, compression, offset, length, raw_length)| {
                if offset as u64 + length as u64 > self.size {
                    return Err(Error::Format(format!(
                        "index entry of blob {} lies beyond pack {}",
                        id.short(),
                        self.id.short()
                    )));
                }
                Ok(PackEntry {
                    id,
                    kind: BlobKind::from_code(kind)?,
                    compression,
                    offset,
                    length,
                    raw_length,
                })
            })
            .collect()
    }
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an index serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<IndexFile> {
        let index: IndexFile = serde_json::from_slice(bytes)
            .map_err(|error| Error::Format(format!("index object: {error}")))?;
        let mut sizes: HashMap<Id, u64> = HashMap::new();
        for pack in &index.packs {
            pack.entries()?;
            let size = *sizes.entry(pack.id).or_insert(pack.size);
            if size != pack.size {
                return Err(contradicting_sizes(&pack.id, size, pack.size));
            }
        }
        Ok(index)
    }
}

fn contradicting_sizes(pack: &Id, one: u64, other: u64) -> Error {
    Error::Format(format!(
        "pack {} is listed with two sizes, {one} and {other} bytes: the repository's index is \
         damaged, and which size is true cannot be told, so nothing was read or changed",
        pack.short()
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Position in [`MasterIndex::packs`].
    pub pack: u32,
    pub kind: BlobKind,
    pub compression: u8,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

/// Every index object merged in memory: blob id to location.
#[derive(Debug, Default)]
pub struct MasterIndex {
    pub packs: Vec<(Id, u64)>,
    pack_positions: HashMap<Id, u32>,
    blobs: HashMap<Id, BlobLocation>,
}

impl MasterIndex {
    /// Adds a pack's blobs. A pack may be listed again (by an index a prune rewrote and has not
    /// yet deleted), but never with another size: its blobs could then lie beyond it, and which
    /// listing is true cannot be told, so the index is refused rather than guessed at.
    pub fn add_pack(&mut self, pack: &IndexPack) -> Result<()> {
        let position = match self.pack_positions.get(&pack.id) {
            Some(&position) => {
                let known = self.packs[position as usize].1;
                if known != pack.size {
                    return Err(contradicting_sizes(&pack.id, known, pack.size));
                }
                position
            }
            None => {
                let position = self.packs.len() as u32;
                self.packs.push((pack.id, pack.size));
                self.pack_positions.insert(pack.id, position);
                position
            }
        };
        for entry in pack.entries()? {
            self.blobs.insert(
                entry.id,
                BlobLocation {
                    pack: position,
                    kind: entry.kind,
                    compression: entry.compression,
                    offset: entry.offset,
                    length: entry.length,
                    raw_length: entry.raw_length,
                },
            );
        }
        Ok(())
    }

    pub fn get(&self, id: &Id) -> Option<&BlobLocation> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn pack_id(&self, location: &BlobLocation) -> Id {
        self.packs[location.pack as usize].0
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub fn blobs(&self) -> impl Iterator<Item = (&Id, &BlobLocation)> {
        self.blobs.iter()
    }

    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_positions.contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn index_files_round_trip(packs in proptest::collection::vec(
            (any::<[u8; 32]>(), proptest::collection::vec((any::<[u8; 32]>(), 0u8..2, 0u8..2, 0u32..1000, 0u32..1000, any::<u32>()), 0..20)),
            0..10,
        )) {
            let index = IndexFile {
                version: 1,
                packs: packs.into_iter().map(|(id, blobs)| IndexPack {
                    id: Id(id),
                    size: 4000,
                    blobs: blobs.into_iter().map(|(b, k, c, o, l, r)| (Id(b), k, c, o, l, r)).collect(),
                }).collect(),
            };
            prop_assert_eq!(IndexFile::decode(&index.encode()).unwrap(), index);
        }

        #[test]
        fn garbage_index_errors_and_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = IndexFile::decode(&bytes);
        }

        #[test]
        fn garbage_json_index_errors_and_never_panics(text in "\\{\"version\":1,\"packs\":\\[\\{\"id\":\"[0-9a-f]{0,70}\",\"size\":[0-9]{1,5},\"blobs\":\\[\\[[^\\]]{0,90}\\]\\]\\}\\]\\}") {
            let _ = IndexFile::decode(text.as_bytes());
        }
    }

    #[test]
    fn a_pack_listed_with_two_sizes_is_refused() {
        let pack = |size, offset| IndexPack {
            id: Id([1; 32]),
            size,
            blobs: vec![(Id([offset as u8; 32]), 0, 0, offset, 20, 5)],
        };
        // In one index object.
        let index = IndexFile {
            version: 1,
            packs: vec![pack(100, 10), pack(1000, 900)],
        };
        let error = IndexFile::decode(&index.encode()).unwrap_err().to_string();
        assert!(
            error.contains("listed with two sizes, 100 and 1000"),
            "{error}"
        );
        // In two (found by fuzzing: the second's blob lay beyond the size kept from the first).
        let mut master = MasterIndex::default();
        master.add_pack(&pack(100, 10)).unwrap();
        master.add_pack(&pack(100, 10)).unwrap();
        let error = master.add_pack(&pack(1000, 900)).unwrap_err().to_string();
        assert!(
            error.contains("listed with two sizes, 100 and 1000"),
            "{error}"
        );
        assert!(!master.contains(&Id([132; 32])));
    }

    #[test]
    fn entries_beyond_the_pack_are_refused() {
        let index = IndexFile {
            version: 1,
            packs: vec![IndexPack {
                id: Id([1; 32]),
                size: 100,
                blobs: vec![(Id([2; 32]), 0, 0, 90, 20, 5)],
            }],
        };
        assert!(IndexFile::decode(&index.encode()).is_err());
    }
}
