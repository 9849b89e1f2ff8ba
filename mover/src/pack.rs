//! Packs: files of many encrypted blobs followed by an encrypted header that lists them, so that
//! the index can always be rebuilt from the packs alone.
//!
//! Layout: `blob_0 .. blob_n | AEAD(header) | u32 LE length of AEAD(header)`. The header is a
//! version byte then one 42-byte entry per blob: kind u8, compression u8, id [32], stored length
//! u32 LE, plaintext length u32 LE. Offsets are implied by the order. A pack is named by the
//! unkeyed BLAKE3 of its bytes, so `check --read-data` can verify it without the key.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::blob::{BlobKind, SealedBlob};
use crate::crypto::{MasterKey, OVERHEAD};
use crate::error::{Error, IoContext, Result};
use crate::id::Id;

const HEADER_VERSION: u8 = 1;
const ENTRY_LEN: usize = 42;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackEntry {
    pub id: Id,
    pub kind: BlobKind,
    pub compression: u8,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

pub fn encode_header(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * ENTRY_LEN);
    out.push(HEADER_VERSION);
    for entry in entries {
        out.push(entry.kind.code());
        out.push(entry.compression);
        out.extend_from_slice(&entry.id.0);
        out.extend_from_slice(&entry.length.to_le_bytes());
        out.extend_from_slice(&entry.raw_length.to_le_bytes());
    }
    out
}

/// Decodes a header's plaintext; `pack_size` bounds the blobs it may describe.
pub fn decode_header(bytes: &[u8], header_start: u64) -> Result<Vec<PackEntry>> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(Error::Format("empty pack header".into()));
    };
    if version != HEADER_VERSION {
        return Err(Error::Format(format!(
            "pack header version {version} is not supported (this ferry reads {HEADER_VERSION})"
        )));
    }
    if body.len() % ENTRY_LEN != 0 {
        return Err(Error::Format(format!(
            "pack header of {} bytes is not a whole number of entries",
            bytes.len()
        )));
    }
    let mut offset: u64 = 0;
    let mut entries = Vec::with_capacity(body.len() / ENTRY_LEN);
    for raw in body.chunks_exact(ENTRY_LEN) {
        let length = u32::from_le_bytes(raw[34..38].try_into().expect("4 bytes"));
        let raw_length = u32::from_le_bytes(raw[38..42].try_into().expect("4 bytes"));
        if (length as usize) < OVERHEAD {
            return Err(Error::Format(format!(
                "pack header lists a blob of {length} bytes, too short to be encrypted"
            )));
        }
        // Offsets are stored as u32: a pack never holds blobs beyond 4 GiB.
        if offset + length as u64 > header_start.min(u32::MAX as u64) {
            return Err(Error::Format(
                "pack header lists blobs beyond the pack's end".into(),
            ));
        }
        entries.push(PackEntry {
            kind: BlobKind::from_code(raw[0])?,
            compression: raw[1],
            id: Id(raw[2..34].try_into().expect("32 bytes")),
            offset: offset as u32,
            length,
            raw_length,
        });
        offset += length as u64;
    }
    Ok(entries)
}

/// Reads and decrypts the header of a stored pack of `size` bytes.
pub fn read_header(
    backend: &dyn crate::backend::Backend,
    key: &MasterKey,
    pack: &Id,
    size: u64,
) -> Result<Vec<PackEntry>> {
    let name = pack.to_hex();
    if size < 4 {
        return Err(Error::corrupt(
            format!("pack {name}"),
            "too short to hold a header",
        ));
    }
    let trailer = backend.get_range(crate::backend::Kind::Pack, &name, size - 4, 4)?;
    let header_len = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes")) as u64;
    if header_len + 4 > size {
        return Err(Error::corrupt(
            format!("pack {name}"),
            "header length beyond the pack",
        ));
    }
    let header_start = size - 4 - header_len;
    let sealed = backend.get_range(crate::backend::Kind::Pack, &name, header_start, header_len)?;
    let plain = key.decrypt(&sealed, &format!("header of pack {name}"))?;
    decode_header(&plain, header_start)
}

/// Parses a whole pack held in memory (for `check --read-data` and repacking).
pub fn parse_pack(key: &MasterKey, name: &str, bytes: &[u8]) -> Result<Vec<PackEntry>> {
    let size = bytes.len();
    if size < 4 {
        return Err(Error::corrupt(
            format!("pack {name}"),
            "too short to hold a header",
        ));
    }
    let header_len = u32::from_le_bytes(bytes[size - 4..].try_into().expect("4 bytes")) as usize;
    if header_len + 4 > size {
        return Err(Error::corrupt(
            format!("pack {name}"),
            "header length beyond the pack",
        ));
    }
    let header_start = size - 4 - header_len;
    let plain = key.decrypt(
        &bytes[header_start..size - 4],
        &format!("header of pack {name}"),
    )?;
    decode_header(&plain, header_start as u64)
}

/// A pack being written to a temp file: blobs are appended as they come, so a 16 MiB pack never
/// sits in memory.
pub struct PackWriter {
    file: tempfile::NamedTempFile,
    hasher: blake3::Hasher,
    entries: Vec<PackEntry>,
    size: u64,
    kind: BlobKind,
}

pub struct FinishedPack {
    pub id: Id,
    pub kind: BlobKind,
    pub path: PathBuf,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    pub fn new(temp_dir: &Path, kind: BlobKind) -> Result<PackWriter> {
        let file = tempfile::Builder::new()
            .prefix(".pack-")
            .tempfile_in(temp_dir)
            .at(temp_dir)?;
        Ok(PackWriter {
            file,
            hasher: blake3::Hasher::new(),
            entries: Vec::new(),
            size: 0,
            kind,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn add(&mut self, blob: &SealedBlob) -> Result<()> {
        self.write(&blob.bytes)?;
        self.entries.push(PackEntry {
            id: blob.id,
            kind: blob.kind,
            compression: blob.compression,
            offset: (self.size - blob.bytes.len() as u64) as u32,
            length: blob.bytes.len() as u32,
            raw_length: blob.raw_length,
        });
        Ok(())
    }

    /// Copies a blob already sealed in another pack (repacking needs no re-encryption).
    pub fn add_raw(&mut self, entry: &PackEntry, bytes: &[u8]) -> Result<()> {
        self.write(bytes)?;
        self.entries.push(PackEntry {
            offset: (self.size - bytes.len() as u64) as u32,
            ..entry.clone()
        });
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).at(self.file.path().to_owned())?;
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    pub fn finish(mut self, key: &MasterKey) -> Result<FinishedPack> {
        let header = key.encrypt(&encode_header(&self.entries));
        self.write(&header)?;
        self.write(&(header.len() as u32).to_le_bytes())?;
        self.file.flush().at(self.file.path().to_owned())?;
        let id = Id(*self.hasher.finalize().as_bytes());
        let path = self
            .file
            .into_temp_path()
            .keep()
            .map_err(|error| Error::io(error.path.to_path_buf(), error.error))?;
        Ok(FinishedPack {
            id,
            kind: self.kind,
            path,
            size: self.size,
            entries: self.entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry_strategy() -> impl Strategy<Value = PackEntry> {
        (
            any::<[u8; 32]>(),
            any::<bool>(),
            0u8..2,
            (OVERHEAD as u32)..1_000_000,
            any::<u32>(),
        )
            .prop_map(|(id, tree, compression, length, raw_length)| PackEntry {
                id: Id(id),
                kind: if tree { BlobKind::Tree } else { BlobKind::Data },
                compression,
                offset: 0,
                length,
                raw_length,
            })
    }

    proptest! {
        #[test]
        fn headers_round_trip(mut entries in proptest::collection::vec(entry_strategy(), 0..50)) {
            let mut offset = 0u32;
            for entry in &mut entries {
                entry.offset = offset;
                offset += entry.length;
            }
            let decoded = decode_header(&encode_header(&entries), offset as u64).unwrap();
            prop_assert_eq!(decoded, entries);
        }

        #[test]
        fn garbage_headers_error_and_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..500), end in any::<u64>()) {
            let _ = decode_header(&bytes, end);
        }

        #[test]
        fn garbage_packs_error_and_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..500)) {
            let key = MasterKey::generate();
            prop_assert!(parse_pack(&key, "garbage", &bytes).is_err());
        }
    }

    #[test]
    fn a_written_pack_describes_itself() {
        let key = MasterKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let mut writer = PackWriter::new(dir.path(), BlobKind::Data).unwrap();
        let blobs: Vec<Vec<u8>> = vec![b"first".to_vec(), vec![7u8; 5000], b"third".to_vec()];
        for data in &blobs {
            writer
                .add(&crate::blob::seal(
                    &key,
                    BlobKind::Data,
                    key.blob_id(data),
                    data,
                    &crate::compression::Compressor::Zstd(3),
                ))
                .unwrap();
        }
        let finished = writer.finish(&key).unwrap();
        let bytes = std::fs::read(&finished.path).unwrap();
        assert_eq!(Id::hash_of_ciphertext(&bytes), finished.id);
        let entries = parse_pack(&key, "p", &bytes).unwrap();
        assert_eq!(entries, finished.entries);
        for (entry, data) in entries.iter().zip(&blobs) {
            let stored = &bytes[entry.offset as usize..(entry.offset + entry.length) as usize];
            let plain = crate::blob::open(
                &key,
                &crate::dictionary::NoDictionaries,
                &entry.id,
                entry.compression,
                entry.raw_length,
                stored,
                "blob",
            )
            .unwrap();
            assert_eq!(&plain, data);
        }
    }
}
