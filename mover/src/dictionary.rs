//! Compression dictionaries (format version 3).
//!
//! A data blob is one chunk of 16–256 KiB, compressed on its own: zstd starts every chunk knowing
//! nothing, and the first kilobytes of each compress poorly. A repository therefore trains one
//! zstd dictionary on the first compressible chunks a backup gives it, stores it (encrypted) as
//! `dictionaries/<id>`, and compresses every later data blob with it. On the benchmark's data set
//! that makes compressible chunks 10–19% smaller, and the repository 5% smaller, for about 15%
//! more compression time (`benches/RESULTS.md`).
//!
//! A blob compressed with a dictionary has compression code [`COMPRESSION_ZSTD_DICTIONARY`]; its
//! zstd frame names the dictionary by the id zstd wrote into both. A dictionary is never deleted
//! or replaced: it is created only if absent, before the first pack that needs it, and prune
//! copies blobs without recompressing them. Several dictionaries may exist (two first backups
//! racing); a writer uses the one with the smallest id, a reader whichever its frame names.
//!
//! Repositories of format versions 1 and 2 get no dictionary (their readers would not know code
//! 2), and keep being written as before.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use tracing::{info, warn};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

use crate::backend::Kind;
use crate::blob::{BlobKind, COMPRESSION_NONE};
use crate::compression::Compressor;
use crate::error::{Error, Result};
use crate::repository::Repository;

/// The first format version whose repositories hold dictionaries.
pub const DICTIONARY_FORMAT_VERSION: u32 = 3;
/// zstd's own default dictionary size: larger ones gained nothing on the benchmark's data.
pub const MAX_DICTIONARY_SIZE: usize = 112_640;
/// How much of the first compressible chunks is kept to train on: about 75 times the
/// dictionary, within zstd's advice of 10–100 times, and trained in about half a second.
const SAMPLE_BUDGET: usize = 8 << 20;
/// At most this much of one chunk is a sample: many chunks teach more than a few long ones.
const SAMPLE_LIMIT: usize = 64 << 10;
/// Fewer samples than this and zstd's trainer refuses (or learns nothing worth storing).
const MIN_SAMPLES: usize = 64;
/// A chunk is a sample only if zstd shrinks it below this share of its size: random data teaches
/// a dictionary nothing.
const COMPRESSIBLE: f64 = 0.9;

/// Where a reader finds the dictionary a blob's frame names.
pub trait DictionarySource {
    fn dictionary(&self, id: NonZeroU32) -> Result<Arc<DecoderDictionary<'static>>>;
}

/// For blobs read outside any repository (tests, the harness): no dictionary exists.
pub struct NoDictionaries;

impl DictionarySource for NoDictionaries {
    fn dictionary(&self, id: NonZeroU32) -> Result<Arc<DecoderDictionary<'static>>> {
        Err(Error::corrupt(
            format!("dictionary {}", name_of(id)),
            "a blob needs a dictionary where there is none",
        ))
    }
}

/// The name of dictionary `id` in the repository: its zstd id, 8 hex digits.
pub fn name_of(id: NonZeroU32) -> String {
    format!("{:08x}", id.get())
}

/// A repository's dictionaries: the ones read so far, and the one its writers use.
#[derive(Default)]
pub struct Dictionaries {
    readers: RwLock<HashMap<u32, Arc<DecoderDictionary<'static>>>>,
    writer: Mutex<Writer>,
    /// Signalled when training ends.
    trained: Condvar,
}

#[derive(Default)]
enum Writer {
    /// Not looked for yet.
    #[default]
    Unknown,
    /// None stored yet: compressible chunks are kept until there are enough to train on.
    Collecting {
        data: Vec<u8>,
        sizes: Vec<usize>,
    },
    /// One thread is training or storing one; the others wait for it (once in a repository's
    /// life, about half a second), so that every chunk after the samples gets the dictionary.
    Training,
    Ready(Arc<EncoderDictionary<'static>>),
    /// This repository gets none (an older format, or no compression), or getting one failed
    /// in this process: blobs are compressed alone, as before.
    Off,
}

impl Dictionaries {
    /// Compresses and encrypts a blob of this repository, training the dictionary on the way.
    pub fn seal(
        &self,
        repo: &Repository,
        kind: BlobKind,
        id: crate::Id,
        plaintext: &[u8],
    ) -> crate::blob::SealedBlob {
        let level = repo.config().zstd_level;
        if level <= 0 {
            return crate::blob::seal(repo.key(), kind, id, plaintext, &Compressor::None);
        }
        if kind == BlobKind::Tree {
            return crate::blob::seal(repo.key(), kind, id, plaintext, &Compressor::Zstd(level));
        }
        if crate::compression::looks_incompressible(plaintext) {
            return crate::blob::seal(repo.key(), kind, id, plaintext, &Compressor::None);
        }
        if let Some(dictionary) = self.for_writing(repo) {
            return crate::blob::seal(
                repo.key(),
                kind,
                id,
                plaintext,
                &Compressor::Dictionary(&dictionary),
            );
        }
        let sealed = crate::blob::seal(repo.key(), kind, id, plaintext, &Compressor::Zstd(level));
        if sealed.compression != COMPRESSION_NONE
            && (sealed.bytes.len() as f64) < COMPRESSIBLE * plaintext.len() as f64
        {
            self.offer_sample(repo, plaintext);
        }
        sealed
    }

    /// The dictionary to compress data blobs with, once there is one.
    fn for_writing(&self, repo: &Repository) -> Option<Arc<EncoderDictionary<'static>>> {
        let mut writer = self.writer.lock().expect("dictionary lock");
        if matches!(*writer, Writer::Unknown) {
            // Once per process and repository, under the lock: the sealing threads wait for
            // one listing rather than race to train.
            *writer = self.look_for_stored(repo);
        }
        let writer = self
            .trained
            .wait_while(writer, |writer| matches!(writer, Writer::Training))
            .expect("dictionary lock");
        match &*writer {
            Writer::Ready(dictionary) => Some(dictionary.clone()),
            _ => None,
        }
    }

    fn look_for_stored(&self, repo: &Repository) -> Writer {
        if repo.config().version < DICTIONARY_FORMAT_VERSION {
            return Writer::Off;
        }
        let listed = match repo.backend().list(Kind::Dictionary) {
            Ok(listed) => listed,
            Err(error) => {
                warn!(message = "cannot list the repository's dictionaries; compressing without one", %error);
                return Writer::Off;
            }
        };
        let smallest = listed
            .iter()
            .filter_map(|object| u32::from_str_radix(&object.name, 16).ok())
            .filter_map(NonZeroU32::new)
            .min();
        match smallest {
            None => Writer::Collecting {
                data: Vec::new(),
                sizes: Vec::new(),
            },
            Some(id) => match self.load(repo, id) {
                Ok((bytes, _)) => Writer::Ready(encoder(repo, &bytes)),
                Err(error) => {
                    warn!(message = "cannot read the repository's dictionary; compressing without one", dictionary = %name_of(id), %error);
                    Writer::Off
                }
            },
        }
    }

    /// Keeps a compressible chunk to train on; trains and stores the dictionary once there are
    /// enough.
    fn offer_sample(&self, repo: &Repository, plaintext: &[u8]) {
        let samples = {
            let mut writer = self.writer.lock().expect("dictionary lock");
            let Writer::Collecting { data, sizes } = &mut *writer else {
                return;
            };
            let sample = &plaintext[..plaintext.len().min(SAMPLE_LIMIT)];
            data.extend_from_slice(sample);
            sizes.push(sample.len());
            if data.len() < SAMPLE_BUDGET || sizes.len() < MIN_SAMPLES {
                return;
            }
            std::mem::replace(&mut *writer, Writer::Training)
        };
        let Writer::Collecting { data, sizes } = samples else {
            unreachable!("taken from the collecting state")
        };
        // Whatever happens, even a panic, the waiting threads are let go.
        let mut ending = EndOfTraining {
            dictionaries: self,
            next: Writer::Off,
        };
        match self.train_and_store(repo, &data, &sizes) {
            Ok(dictionary) => ending.next = Writer::Ready(dictionary),
            Err(error) => {
                warn!(message = "no compression dictionary this time; compressing without one", %error);
            }
        }
    }

    fn train_and_store(
        &self,
        repo: &Repository,
        data: &[u8],
        sizes: &[usize],
    ) -> Result<Arc<EncoderDictionary<'static>>> {
        let started = std::time::Instant::now();
        let trained = zstd::dict::from_continuous(data, sizes, MAX_DICTIONARY_SIZE)
            .map_err(|error| Error::Other(format!("training a zstd dictionary: {error}")))?;
        let id = zstd::zstd_safe::get_dict_id(&trained)
            .ok_or_else(|| Error::Other("zstd trained a dictionary without an id".into()))?;
        let name = name_of(id);
        let bytes = if repo.put_object_new(Kind::Dictionary, &name, &trained)? {
            info!(message = "compression dictionary stored", dictionary = %name, bytes = trained.len(), samples = sizes.len(), seconds = started.elapsed().as_secs_f64());
            trained
        } else {
            // One of the same id is there already (the same samples trained elsewhere, or a
            // collision of zstd's 31-bit ids): frames naming this id must decode with that one,
            // so it is the one to use.
            self.load(repo, id)?.0
        };
        Ok(encoder(repo, &bytes))
    }

    /// Reads dictionary `id`, checks that it is the one its name says, and keeps it for readers.
    fn load(
        &self,
        repo: &Repository,
        id: NonZeroU32,
    ) -> Result<(Vec<u8>, Arc<DecoderDictionary<'static>>)> {
        let name = name_of(id);
        let bytes = repo.get_object(Kind::Dictionary, &name)?;
        if zstd::zstd_safe::get_dict_id(&bytes) != Some(id) {
            return Err(Error::corrupt(
                format!("dictionary {name}"),
                "is not a zstd dictionary of that id",
            ));
        }
        let decoder = Arc::new(DecoderDictionary::copy(&bytes));
        self.readers
            .write()
            .expect("dictionary lock")
            .insert(id.get(), decoder.clone());
        Ok((bytes, decoder))
    }

    /// Dictionary `id` for reading: read from the repository the first time.
    pub fn for_reading(
        &self,
        repo: &Repository,
        id: NonZeroU32,
    ) -> Result<Arc<DecoderDictionary<'static>>> {
        if let Some(found) = self.readers.read().expect("dictionary lock").get(&id.get()) {
            return Ok(found.clone());
        }
        let (_, decoder) = self.load(repo, id).map_err(|error| match error {
            Error::NotFound { .. } => Error::corrupt(
                format!("dictionary {}", name_of(id)),
                "a blob was compressed with it, but the repository does not hold it",
            ),
            other => other,
        })?;
        Ok(decoder)
    }
}

/// A dictionary prepared for compressing at the repository's level.
fn encoder(repo: &Repository, dictionary: &[u8]) -> Arc<EncoderDictionary<'static>> {
    Arc::new(EncoderDictionary::copy(
        dictionary,
        repo.config().zstd_level,
    ))
}

/// Ends the training state: sets what comes next (no dictionary, unless told otherwise) and wakes
/// the writers waiting for it.
struct EndOfTraining<'a> {
    dictionaries: &'a Dictionaries,
    next: Writer,
}

impl Drop for EndOfTraining<'_> {
    fn drop(&mut self) {
        let next = std::mem::replace(&mut self.next, Writer::Off);
        // A poisoned lock still holds the state: the writers must be let go all the same.
        *self
            .dictionaries
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
        self.dictionaries.trained.notify_all();
    }
}
