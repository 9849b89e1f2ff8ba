//! Blobs: the unit of deduplication. A data blob is one chunk of a file; a tree blob is one
//! directory listing. A blob is compressed (unless that does not shrink it), then encrypted.

use serde::{Deserialize, Serialize};

use crate::compression::Compressor;
use crate::crypto::MasterKey;
use crate::dictionary::DictionarySource;
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
/// zstd with one of the repository's dictionaries, the one its frame names (format version 3).
pub const COMPRESSION_ZSTD_DICTIONARY: u8 = 2;

/// A blob ready for a pack: its id and its encrypted bytes.
pub struct SealedBlob {
    pub id: Id,
    pub kind: BlobKind,
    pub compression: u8,
    pub raw_length: u32,
    pub bytes: Vec<u8>,
}

/// Compresses (when that helps) and encrypts a blob whose id is already known. A repository's
/// writers go through [`crate::Repository::seal_blob`], which picks the compressor.
pub fn seal(
    key: &MasterKey,
    kind: BlobKind,
    id: Id,
    plaintext: &[u8],
    compressor: &Compressor,
) -> SealedBlob {
    let compressed = compressor.compress(plaintext);
    let (compression, stored) = match &compressed {
        Some((code, smaller)) if smaller.len() < plaintext.len() => (*code, smaller.as_slice()),
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

/// Decrypts, decompresses and verifies a blob read from a pack. `what` names it in errors. A
/// repository's readers go through [`crate::Repository::open_blob`], which finds dictionaries.
#[allow(clippy::too_many_arguments)]
pub fn open(
    key: &MasterKey,
    dictionaries: &dyn DictionarySource,
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
        // Into raw_length bytes at most: a frame that expands further is refused.
        COMPRESSION_ZSTD => crate::compression::decompress(&stored, raw_length as usize, None)
            .map_err(|error| Error::corrupt(what, format!("zstd: {error}")))?,
        COMPRESSION_ZSTD_DICTIONARY => {
            let dictionary_id = zstd::zstd_safe::get_dict_id_from_frame(&stored)
                .ok_or_else(|| Error::corrupt(what, "its zstd frame names no dictionary"))?;
            let dictionary = dictionaries.dictionary(dictionary_id)?;
            crate::compression::decompress(&stored, raw_length as usize, Some(&dictionary))
                .map_err(|error| Error::corrupt(what, format!("zstd: {error}")))?
        }
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
    use std::sync::Arc;

    use super::*;
    use crate::dictionary::NoDictionaries;

    #[test]
    fn compressible_blobs_shrink_and_random_ones_are_stored_raw() {
        let key = MasterKey::generate();
        let text = vec![b'a'; 100_000];
        let sealed = seal(
            &key,
            BlobKind::Data,
            key.blob_id(&text),
            &text,
            &Compressor::Zstd(3),
        );
        assert_eq!(sealed.compression, COMPRESSION_ZSTD);
        assert!(sealed.bytes.len() < 1000);
        let back = open(
            &key,
            &NoDictionaries,
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
        let sealed = seal(
            &key,
            BlobKind::Data,
            key.blob_id(&noise),
            &noise,
            &Compressor::Zstd(3),
        );
        assert_eq!(sealed.compression, COMPRESSION_NONE);
        assert_eq!(sealed.bytes.len(), noise.len() + crate::crypto::OVERHEAD);
    }

    #[test]
    fn a_blob_under_the_wrong_id_is_refused() {
        let key = MasterKey::generate();
        let sealed = seal(
            &key,
            BlobKind::Data,
            key.blob_id(b"one"),
            b"one",
            &Compressor::Zstd(3),
        );
        let error = open(
            &key,
            &NoDictionaries,
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

    struct OneDictionary(
        std::num::NonZeroU32,
        Arc<zstd::dict::DecoderDictionary<'static>>,
    );

    impl DictionarySource for OneDictionary {
        fn dictionary(
            &self,
            id: std::num::NonZeroU32,
        ) -> Result<Arc<zstd::dict::DecoderDictionary<'static>>> {
            assert_eq!(
                id, self.0,
                "the frame names the dictionary it was made with"
            );
            Ok(self.1.clone())
        }
    }

    #[test]
    fn a_dictionary_shrinks_small_chunks_and_is_needed_to_open_them() {
        let key = MasterKey::generate();
        let samples: Vec<Vec<u8>> = (0..200).map(|n| ferry_tests::text(n, 4096)).collect();
        let trained = zstd::dict::from_samples(&samples, 16 << 10).unwrap();
        let id = zstd::zstd_safe::get_dict_id(&trained).unwrap();
        let encoder = zstd::dict::EncoderDictionary::copy(&trained, 3);
        let source = OneDictionary(id, Arc::new(zstd::dict::DecoderDictionary::copy(&trained)));

        let chunk = ferry_tests::text(1000, 8192);
        let alone = seal(
            &key,
            BlobKind::Data,
            key.blob_id(&chunk),
            &chunk,
            &Compressor::Zstd(3),
        );
        let with = seal(
            &key,
            BlobKind::Data,
            key.blob_id(&chunk),
            &chunk,
            &Compressor::Dictionary(&encoder),
        );
        assert_eq!(with.compression, COMPRESSION_ZSTD_DICTIONARY);
        assert!(
            with.bytes.len() < alone.bytes.len() * 9 / 10,
            "{} bytes with the dictionary, {} without",
            with.bytes.len(),
            alone.bytes.len()
        );
        let open_with = |source: &dyn DictionarySource, compression| {
            open(
                &key,
                source,
                &with.id,
                compression,
                with.raw_length,
                &with.bytes,
                "blob d",
            )
        };
        assert_eq!(open_with(&source, with.compression).unwrap(), chunk);
        let error = open_with(&NoDictionaries, with.compression).unwrap_err();
        assert!(error.to_string().contains("needs a dictionary"), "{error}");
        // Labelled as plain zstd, the frame cannot be inflated without its dictionary.
        assert!(open_with(&source, COMPRESSION_ZSTD).is_err());
        // A plain frame labelled as needing a dictionary names none, and is refused as such.
        let error = open(
            &key,
            &source,
            &alone.id,
            COMPRESSION_ZSTD_DICTIONARY,
            alone.raw_length,
            &alone.bytes,
            "blob p",
        )
        .unwrap_err();
        assert!(error.to_string().contains("names no dictionary"), "{error}");
    }
}
