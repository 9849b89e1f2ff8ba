//! Blobs: the unit of deduplication. A data blob is one chunk of a file; a tree blob is one
//! directory listing. A blob is compressed (unless that does not shrink it), then encrypted.

use serde::{Deserialize, Serialize};

use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::id::Id;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    Data,
    Tree,
}

impl BlobKind {
    pub fn code(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        }
    }

    pub fn from_code(code: u8) -> Result<BlobKind> {
        match code {
            0 => Ok(BlobKind::Data),
            1 => Ok(BlobKind::Tree),
            other => Err(Error::Format(format!("unknown blob type {other}"))),
        }
    }
}

pub const COMPRESSION_NONE: u8 = 0;
pub const COMPRESSION_ZSTD: u8 = 1;

/// A blob ready for a pack: its id and its encrypted bytes.
pub struct SealedBlob {
    pub id: Id,
    pub kind: BlobKind,
    pub compression: u8,
    pub raw_length: u32,
    pub bytes: Vec<u8>,
}

/// Compresses (when that helps) and encrypts a blob whose id is already known.
pub fn seal(
    key: &MasterKey,
    kind: BlobKind,
    id: Id,
    plaintext: &[u8],
    zstd_level: i32,
) -> SealedBlob {
    let compressed = if zstd_level > 0 {
        zstd::bulk::compress(plaintext, zstd_level).ok()
    } else {
        None
    };
    let (compression, stored) = match &compressed {
        Some(smaller) if smaller.len() < plaintext.len() => (COMPRESSION_ZSTD, smaller.as_slice()),
        _ => (COMPRESSION_NONE, plaintext),
    };
    SealedBlob {
        id,
        kind,
        compression,
        raw_length: plaintext.len() as u32,
        bytes: key.encrypt(stored),
    }
}

/// The largest plaintext a blob may have: data blobs are chunks (at most 16 MiB, fastcdc's
/// largest maximum), tree blobs the listing of one directory. The bound stops a crafted pack
/// header or index entry from making a reader allocate or inflate without limit.
pub const MAX_BLOB_LENGTH: u32 = 512 << 20;

/// Decrypts, decompresses and verifies a blob read from a pack. `what` names it in errors.
pub fn open(
    key: &MasterKey,
    id: &Id,
    compression: u8,
    raw_length: u32,
    bytes: &[u8],
    what: &str,
) -> Result<Vec<u8>> {
    if raw_length > MAX_BLOB_LENGTH {
        return Err(Error::corrupt(
            what,
            format!("claims {raw_length} bytes, more than any blob holds"),
        ));
    }
    let stored = key.decrypt(bytes, what)?;
    let plaintext = match compression {
        COMPRESSION_NONE => stored,
        // Streamed: memory grows with what the data really expands to, up to raw_length.
        COMPRESSION_ZSTD => crate::util::decompress_bounded(&stored, raw_length as usize)
            .map_err(|error| Error::corrupt(what, format!("zstd: {error}")))?,
        other => {
            return Err(Error::Format(format!(
                "{what}: unknown compression {other}"
            )));
        }
    };
    if plaintext.len() != raw_length as usize {
        return Err(Error::corrupt(
            what,
            format!("{} bytes instead of {raw_length}", plaintext.len()),
        ));
    }
    if key.blob_id(&plaintext) != *id {
        return Err(Error::corrupt(what, "content does not match its id"));
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_blobs_shrink_and_random_ones_are_stored_raw() {
        let key = MasterKey::generate();
        let text = vec![b'a'; 100_000];
        let sealed = seal(&key, BlobKind::Data, key.blob_id(&text), &text, 3);
        assert_eq!(sealed.compression, COMPRESSION_ZSTD);
        assert!(sealed.bytes.len() < 1000);
        let back = open(
            &key,
            &sealed.id,
            sealed.compression,
            sealed.raw_length,
            &sealed.bytes,
            "blob",
        )
        .unwrap();
        assert_eq!(back, text);

        let mut noise = vec![0u8; 10_000];
        crate::crypto::fill_random(&mut noise);
        let sealed = seal(&key, BlobKind::Data, key.blob_id(&noise), &noise, 3);
        assert_eq!(sealed.compression, COMPRESSION_NONE);
        assert_eq!(sealed.bytes.len(), noise.len() + crate::crypto::OVERHEAD);
    }

    #[test]
    fn a_blob_under_the_wrong_id_is_refused() {
        let key = MasterKey::generate();
        let sealed = seal(&key, BlobKind::Data, key.blob_id(b"one"), b"one", 3);
        let error = open(
            &key,
            &key.blob_id(b"two"),
            sealed.compression,
            3,
            &sealed.bytes,
            "blob x",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("does not match its id"),
            "{error}"
        );
    }
}
