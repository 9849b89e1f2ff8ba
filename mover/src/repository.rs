//! A repository: opening it with a password, its config, and reading and writing its objects.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::backend::{Backend, Kind};
use crate::blob::BlobKind;
use crate::chunker::ChunkerParams;
use crate::crypto::{KdfParams, KeySlot, MasterKey};
use crate::dictionary::{Dictionaries, DictionarySource};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{IndexFile, MasterIndex};
use crate::lock::LockTiming;
use crate::snapshot::Snapshot;
use crate::tree::Tree;

/// The format this ferry writes. Version 2 binds each encrypted object to its name (the AEAD's
/// associated data), so that a snapshot, index or lock copied over another is refused. Version 3
/// compresses data blobs with a dictionary the repository trains ([`crate::dictionary`]).
/// Repositories of versions 1 and 2 (written before) are still read and written as they are.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format this ferry opens.
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// Settings every writer of a repository must share; stored encrypted as `config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub version: u32,
    pub id: Id,
    pub chunker: ChunkerParams,
    pub zstd_level: i32,
    /// Packs are closed once they reach this many bytes.
    pub pack_size: u64,
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub zstd_level: i32,
    pub pack_size: u64,
    pub kdf: KdfParams,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            zstd_level: 3,
            pack_size: 16 * 1024 * 1024,
            kdf: KdfParams::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub current: bool,
    pub created: jiff::Timestamp,
    pub hostname: String,
    pub username: String,
}

/// The first byte of every JSON object's plaintext (config, index, snapshot, lock): how the rest
/// is encoded. Tree blobs are compressed by the blob layer instead.
const OBJECT_JSON_ZSTD: u8 = 1;

/// The largest plaintext a JSON object may expand to. The biggest are index objects (prune writes
/// them 1,000 packs at a time, some 40 MiB); the bound stops a crafted object from exhausting
/// memory. Locks and the config get 1 MiB, snapshots 64 MiB.
const MAX_OBJECT_PLAINTEXT: usize = 512 << 20;

/// Snapshots as listed, with the ones that could not be decoded apart.
#[derive(Debug, Default)]
pub struct SnapshotListing {
    /// Oldest first.
    pub snapshots: Vec<(Id, Snapshot)>,
    /// Snapshot objects that are there but damaged (failed authentication or decoding).
    pub damaged: Vec<(Id, Error)>,
}

pub struct Repository {
    backend: Arc<dyn Backend>,
    key: MasterKey,
    key_id: String,
    kdf: KdfParams,
    config: RepoConfig,
    pub(crate) index: RwLock<MasterIndex>,
    /// The names of the index objects [`Repository::index`] holds.
    index_files: RwLock<HashSet<String>>,
    lock_timing: LockTiming,
    dictionaries: Dictionaries,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.backend.location())
    }
}

impl Repository {
    /// Creates a repository with a fresh master key and one key slot for `password`.
    pub fn init(
        backend: Arc<dyn Backend>,
        password: &[u8],
        options: &InitOptions,
    ) -> Result<Repository> {
        options.chunker.validate()?;
        if !(1..=22).contains(&options.zstd_level) {
            return Err(Error::InvalidArgument(format!(
                "zstd level {} is not within 1..=22",
                options.zstd_level
            )));
        }
        if !(1024 * 1024..=512 * 1024 * 1024).contains(&options.pack_size) {
            return Err(Error::InvalidArgument(
                "the pack size must be within 1 MiB..512 MiB".into(),
            ));
        }
        check_password(password)?;
        options.kdf.validate()?;
        if backend.exists(Kind::Config, "config")? {
            return Err(Error::RepositoryExists {
                location: backend.location(),
            });
        }
        let key = MasterKey::generate();
        let config = RepoConfig {
            version: FORMAT_VERSION,
            id: Id::random(),
            chunker: options.chunker,
            zstd_level: options.zstd_level,
            pack_size: options.pack_size,
        };
        let slot = KeySlot::wrap(&key, password, options.kdf)?;
        let key_id = Id::random().to_hex();
        // The key slot first: a config without a key slot would be a repository nobody can open.
        backend.put(
            Kind::Key,
            &key_id,
            &serde_json::to_vec_pretty(&slot).expect("a key slot serializes"),
        )?;
        let repo = Repository {
            backend,
            key,
            key_id,
            kdf: options.kdf,
            config,
            index: RwLock::default(),
            index_files: RwLock::default(),
            lock_timing: LockTiming::default(),
            dictionaries: Dictionaries::default(),
        };
        match repo.create_config() {
            Ok(()) => Ok(repo),
            Err(error) => {
                // Lost the race (or failed): this key slot opens no config; it must not stay.
                if let Err(delete_error) = repo.backend.delete(Kind::Key, &repo.key_id) {
                    warn!(message = "cannot remove the key slot of a repository not created", key = %repo.key_id, error = %delete_error);
                }
                Err(error)
            }
        }
    }

    /// Writes the config if no config exists, and makes sure the stored one is this one.
    ///
    /// Two writers initialising the same repository at once (two node agents' first backups)
    /// must not each keep a config with its own master key. The create is conditional
    /// (`If-None-Match`, a hard link locally); for stores that ignore the condition, the config
    /// is read back after [`Backend::settle_time`] and compared, so that of writers racing within
    /// that time only the last one to write keeps its repository.
    fn create_config(&self) -> Result<()> {
        let exists = || Error::RepositoryExists {
            location: self.backend.location(),
        };
        let encoded = self.encode_object(
            Kind::Config,
            "config",
            &serde_json::to_vec(&self.config).expect("serializes"),
        );
        if !self.backend.put_new(Kind::Config, "config", &encoded)? {
            return Err(exists());
        }
        std::thread::sleep(self.backend.settle_time());
        let stored = self.backend.get(Kind::Config, "config")?;
        match decode_config(&self.key, &stored) {
            Ok(stored) if stored.id == self.config.id => Ok(()),
            // Encrypted with another writer's master key, or another id: somebody else's.
            Ok(_) | Err(Error::Corrupt { .. }) => Err(exists()),
            Err(error) => Err(error),
        }
    }

    /// Opens a repository: finds the key slot the password opens, reads the config and the index.
    pub fn open(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository> {
        let repo = Repository::open_without_index(backend, password)?;
        repo.load_index()?;
        Ok(repo)
    }

    /// Opens a repository without reading its index; [`Repository::refresh_index`] reads it.
    ///
    /// Every key slot the password opens is tried until one opens the config: a slot that cannot
    /// be decoded, or asks for key derivation costs beyond [`KdfParams::validate`]'s bounds, is
    /// skipped with a warning rather than stopping the others.
    pub fn open_without_index(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository> {
        check_password(password)?;
        let slots = backend.list(Kind::Key)?;
        if slots.is_empty() {
            return Err(Error::NoRepository {
                location: backend.location(),
            });
        }
        let config_bytes = match backend.get(Kind::Config, "config") {
            Err(Error::NotFound { .. }) => {
                return Err(Error::NoRepository {
                    location: backend.location(),
                });
            }
            other => other?,
        };
        let mut opened = None;
        for info in &slots {
            let bytes = match backend.get(Kind::Key, &info.name) {
                Err(Error::NotFound { .. }) => continue, // removed meanwhile
                other => other?,
            };
            let key = KeySlot::decode(&bytes).and_then(|slot| {
                let key = slot.unwrap_with(password)?;
                Ok(key.map(|key| (key, slot.params)))
            });
            let (key, kdf) = match key {
                Ok(Some(key)) => key,
                Ok(None) => continue,
                Err(error) => {
                    warn!(message = "skipping a key slot that cannot be used", key = %info.name, %error);
                    continue;
                }
            };
            match decode_config(&key, &config_bytes) {
                Ok(config) => {
                    opened = Some((key, info.name.clone(), kdf, config));
                    break;
                }
                // A slot of a key that encrypts no config here: left by a lost race to create
                // the repository. Another slot may still open it.
                Err(Error::Corrupt { .. }) => {
                    warn!(message = "a key slot opens with this password but not the config; skipping it", key = %info.name);
                }
                Err(error) => return Err(error),
            }
        }
        // Slots skipped as unusable were warned about; to the user it is the wrong password.
        let (key, key_id, kdf, config) = opened.ok_or(Error::WrongPassword)?;
        config.chunker.validate()?;
        Ok(Repository {
            backend,
            key,
            key_id,
            kdf,
            config,
            index: RwLock::default(),
            index_files: RwLock::default(),
            lock_timing: LockTiming::default(),
            dictionaries: Dictionaries::default(),
        })
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// Reads every index object into memory, replacing what was there.
    pub fn load_index(&self) -> Result<()> {
        let names: Vec<String> = self
            .backend
            .list(Kind::Index)?
            .into_iter()
            .map(|info| info.name)
            .collect();
        let mut master = MasterIndex::default();
        for name in &names {
            self.merge_index_file(&mut master, name)?;
        }
        debug!(
            message = "index loaded",
            blobs = master.blob_count(),
            packs = master.packs.len()
        );
        *self.index.write().expect("index lock") = master;
        *self.index_files.write().expect("index lock") = names.into_iter().collect();
        Ok(())
    }

    /// Brings the index up to date with the store: reads only the index objects written since it
    /// was loaded, or everything again when one it holds is gone (a prune rewrote the index).
    /// Called once a lock is held, so that no backup deduplicates against, and no restore reads
    /// from, packs a prune deleted before the lock was taken.
    pub fn refresh_index(&self) -> Result<()> {
        let listed: HashSet<String> = self
            .backend
            .list(Kind::Index)?
            .into_iter()
            .map(|info| info.name)
            .collect();
        let loaded = self.index_files.read().expect("index lock").clone();
        if !loaded.is_subset(&listed) || loaded.is_empty() {
            return self.load_index();
        }
        let mut index = self.index.write().expect("index lock");
        let mut names = self.index_files.write().expect("index lock");
        for name in listed.difference(&loaded) {
            self.merge_index_file(&mut index, name)?;
            names.insert(name.clone());
        }
        Ok(())
    }

    fn merge_index_file(&self, master: &mut MasterIndex, name: &str) -> Result<()> {
        let index = self.load_index_file(name)?;
        for pack in &index.packs {
            master.add_pack(pack).map_err(|error| match error {
                Error::Format(message) => Error::Format(format!("index {name}: {message}")),
                other => other,
            })?;
        }
        Ok(())
    }

    /// How this process holds locks on the repository.
    pub fn lock_timing(&self) -> LockTiming {
        self.lock_timing
    }

    /// Changes how locks are refreshed and judged (tests shorten it; every process sharing a
    /// repository must agree on `stale_after`).
    pub fn set_lock_timing(&mut self, timing: LockTiming) {
        self.lock_timing = timing;
    }

    pub fn load_index_file(&self, name: &str) -> Result<IndexFile> {
        IndexFile::decode(&self.get_object(Kind::Index, name)?)
    }

    pub fn save_index_file(&self, index: &IndexFile) -> Result<Id> {
        let id = Id::random();
        self.put_object(Kind::Index, &id.to_hex(), &index.encode())?;
        Ok(id)
    }

    pub fn index(&self) -> std::sync::RwLockReadGuard<'_, MasterIndex> {
        self.index.read().expect("index lock")
    }

    pub(crate) fn put_json<T: Serialize>(&self, kind: Kind, name: &str, value: &T) -> Result<()> {
        self.put_object(kind, name, &serde_json::to_vec(value).expect("serializes"))
    }

    pub(crate) fn put_object(&self, kind: Kind, name: &str, plaintext: &[u8]) -> Result<()> {
        self.backend
            .put(kind, name, &self.encode_object(kind, name, plaintext))
    }

    /// An object as stored: framed, compressed, encrypted, and (from format version 2) bound to
    /// its name.
    fn encode_object(&self, kind: Kind, name: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut framed = vec![OBJECT_JSON_ZSTD];
        framed.extend_from_slice(&zstd::bulk::compress(plaintext, 3).expect("in-memory zstd"));
        self.key
            .encrypt_bound(&framed, &object_binding(self.config.version, kind, name))
    }

    /// Stores an object only if none of that name exists; `false` if one does (left as it is).
    pub(crate) fn put_object_new(&self, kind: Kind, name: &str, plaintext: &[u8]) -> Result<bool> {
        self.backend
            .put_new(kind, name, &self.encode_object(kind, name, plaintext))
    }

    pub(crate) fn get_object(&self, kind: Kind, name: &str) -> Result<Vec<u8>> {
        let bytes = self.backend.get(kind, name)?;
        decode_object(&self.key, &bytes, self.config.version, kind, name)
    }

    // Snapshots.

    /// Every snapshot, oldest first. Fails, naming the object, when one cannot be read: whatever
    /// decides from the list of snapshots (above all, what may be deleted) must see all of them.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let listing = self.list_snapshots()?;
        if let Some((id, error)) = listing.damaged.into_iter().next() {
            return Err(error.context(format!(
                "snapshot {id} cannot be read; nothing was changed (see `ferry repo check`; `ferry repo forget {}` removes a snapshot that cannot be repaired)",
                id.short()
            )));
        }
        Ok(listing.snapshots)
    }

    /// Every snapshot, oldest first, with damaged ones (failed authentication or decoding) apart
    /// so that one damaged object does not hide the others. Any other failure to read one (the
    /// store refusing or not answering) fails the listing.
    pub fn list_snapshots(&self) -> Result<SnapshotListing> {
        let mut listing = SnapshotListing::default();
        for info in self.backend.list(Kind::Snapshot)? {
            let Ok(id) = info.name.parse::<Id>() else {
                continue;
            };
            match self.load_snapshot(&id) {
                Ok(snapshot) => listing.snapshots.push((id, snapshot)),
                Err(Error::NotFound { .. }) => {} // forgotten meanwhile
                Err(error @ (Error::Corrupt { .. } | Error::Format(_))) => {
                    warn!(message = "a snapshot cannot be read", snapshot = %id.short(), %error);
                    listing.damaged.push((id, error));
                }
                Err(error) => return Err(error.context(format!("reading snapshot {id}"))),
            }
        }
        listing
            .snapshots
            .sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(listing)
    }

    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        Snapshot::decode(&self.get_object(Kind::Snapshot, &id.to_hex())?)
    }

    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<Id> {
        let id = Id::random();
        self.put_object(Kind::Snapshot, &id.to_hex(), &snapshot.encode())?;
        Ok(id)
    }

    /// `latest`, a full id or a unique prefix of one.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        let snapshots = self.list_snapshots()?.snapshots;
        if spec == "latest" {
            return snapshots.into_iter().last().ok_or_else(|| {
                Error::InvalidArgument("the repository holds no snapshot yet".into())
            });
        }
        if spec.is_empty() || !spec.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!(
                "{spec:?} is not a snapshot id: give `latest` or a hex id prefix"
            )));
        }
        let spec = spec.to_ascii_lowercase();
        let mut matching: Vec<_> = snapshots
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(&spec))
            .collect();
        match matching.len() {
            0 => Err(Error::InvalidArgument(format!(
                "no snapshot id starts with {spec}; list them with `ferry repo snapshots`"
            ))),
            1 => Ok(matching.remove(0)),
            n => Err(Error::InvalidArgument(format!(
                "{n} snapshots start with {spec}; give more digits"
            ))),
        }
    }

    // Blobs.

    /// Compresses and encrypts a blob for this repository's packs: data blobs with its dictionary
    /// (trained on the first ones, from format version 3 on), tree blobs alone.
    pub fn seal_blob(&self, kind: BlobKind, id: Id, plaintext: &[u8]) -> crate::blob::SealedBlob {
        self.dictionaries.seal(self, kind, id, plaintext)
    }

    /// Decrypts, decompresses and verifies a blob read from one of this repository's packs.
    pub fn open_blob(
        &self,
        id: &Id,
        compression: u8,
        raw_length: u32,
        bytes: &[u8],
        what: &str,
    ) -> Result<Vec<u8>> {
        crate::blob::open(&self.key, self, id, compression, raw_length, bytes, what)
    }

    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let (pack, location) = {
            let index = self.index();
            let location = *index.get(id).ok_or_else(|| {
                Error::corrupt(format!("blob {}", id.short()), "no index names it")
            })?;
            (index.pack_id(&location), location)
        };
        let bytes = self.backend.get_range(
            Kind::Pack,
            &pack.to_hex(),
            location.offset as u64,
            location.length as u64,
        )?;
        self.open_blob(
            id,
            location.compression,
            location.raw_length,
            &bytes,
            &format!("blob {} in pack {}", id.short(), pack.short()),
        )
    }

    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        if let Some(location) = self.index().get(id)
            && location.kind != BlobKind::Tree
        {
            return Err(Error::corrupt(
                format!("tree {}", id.short()),
                "the index lists it as a data blob",
            ));
        }
        Tree::decode(&self.read_blob(id)?)
    }

    // Key slots.

    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut keys = Vec::new();
        for info in self.backend.list(Kind::Key)? {
            let bytes = self.backend.get(Kind::Key, &info.name)?;
            if let Ok(slot) = KeySlot::decode(&bytes) {
                keys.push(KeyInfo {
                    current: info.name == self.key_id,
                    id: info.name,
                    created: slot.created,
                    hostname: slot.hostname,
                    username: slot.username,
                });
            }
        }
        keys.sort_by_key(|key| key.created);
        Ok(keys)
    }

    /// Adds a key slot for another password; returns its id.
    pub fn add_key(&self, password: &[u8]) -> Result<String> {
        check_password(password)?;
        let slot = KeySlot::wrap(&self.key, password, self.kdf)?;
        let id = Id::random().to_hex();
        self.backend.put(
            Kind::Key,
            &id,
            &serde_json::to_vec_pretty(&slot).expect("a key slot serializes"),
        )?;
        Ok(id)
    }

    /// Removes a key slot, given its id or a unique prefix. The slot in use cannot be removed:
    /// use [`Repository::change_password`] for that.
    pub fn remove_key(&self, id_prefix: &str) -> Result<String> {
        let keys = self.list_keys()?;
        let matching: Vec<_> = keys
            .iter()
            .filter(|k| !id_prefix.is_empty() && k.id.starts_with(id_prefix))
            .collect();
        let key = match matching.as_slice() {
            [key] => *key,
            [] => {
                return Err(Error::InvalidArgument(format!(
                    "no key slot id starts with {id_prefix:?}; see `ferry repo key list`"
                )));
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "several key slots start with {id_prefix:?}; give more digits"
                )));
            }
        };
        if key.current {
            return Err(Error::InvalidArgument(
                "refusing to remove the key slot of the password in use; open the repository with another password, or use `ferry repo key passwd`".into(),
            ));
        }
        self.backend.delete(Kind::Key, &key.id)?;
        Ok(key.id.clone())
    }

    /// Replaces the current password: the new slot is written before the old one is removed, so
    /// a crash in between leaves both passwords working rather than none.
    pub fn change_password(&mut self, new_password: &[u8]) -> Result<String> {
        let new_id = self.add_key(new_password)?;
        self.backend.delete(Kind::Key, &self.key_id)?;
        self.key_id = new_id.clone();
        Ok(new_id)
    }
}

fn check_password(password: &[u8]) -> Result<()> {
    if password.is_empty() {
        return Err(Error::InvalidArgument(
            "the password is empty; set FERRY_PASSWORD or use --password-file".into(),
        ));
    }
    Ok(())
}

/// The plaintext of a stored JSON object (config, index, snapshot, lock): authenticated,
/// decrypted, and decompressed to at most [`MAX_OBJECT_PLAINTEXT`] bytes. `what` names it in
/// errors.
/// Opens the stored bytes of the object `name` of `kind` in a repository of format `version`:
/// authenticated (bound to its path from version 2 on), then inflated within the bound of its
/// kind. What every reader of a JSON object does, and the fuzz target's entry.
pub fn decode_object(
    key: &MasterKey,
    bytes: &[u8],
    version: u32,
    kind: Kind,
    name: &str,
) -> Result<Vec<u8>> {
    let limit = match kind {
        Kind::Config | Kind::Lock | Kind::Dictionary => 1 << 20,
        Kind::Snapshot => 64 << 20,
        _ => MAX_OBJECT_PLAINTEXT,
    };
    decode_object_within(
        key,
        bytes,
        &object_binding(version, kind, name),
        &kind.path_of(name),
        limit,
    )
}

/// The associated data an object of format `version` is sealed with: its path in the repository
/// from version 2 on, so that the AEAD refuses it anywhere else; nothing in version 1.
pub fn object_binding(version: u32, kind: Kind, name: &str) -> Vec<u8> {
    if version >= 2 {
        format!("ferry repository object {}", kind.path_of(name)).into_bytes()
    } else {
        Vec::new()
    }
}

/// Reads the config, whose own format version says how it was sealed: a version 2 config is bound
/// to its name; a version 1 config is not, and only version 1 may be read that way (a config that
/// opens unbound but claims a later version was not written by any ferry).
fn decode_config(key: &MasterKey, bytes: &[u8]) -> Result<RepoConfig> {
    let current = object_binding(FORMAT_VERSION, Kind::Config, "config");
    let (config, bound) = match config_sealed_with(key, bytes, &current) {
        Ok(config) => (config, true),
        Err(Error::Corrupt { .. }) => (config_sealed_with(key, bytes, &[])?, false),
        Err(error) => return Err(error),
    };
    let expected_unbound = config.version < 2;
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&config.version) {
        return Err(Error::Format(format!(
            "repository format version {} is not supported by this ferry (it reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}); upgrade ferry",
            config.version
        )));
    }
    if bound == expected_unbound {
        return Err(Error::corrupt(
            "config",
            format!(
                "format version {} sealed the way another version seals",
                config.version
            ),
        ));
    }
    Ok(config)
}

/// Opens an object sealed with `binding`, inflating it up to `limit` bytes: small objects (locks,
/// snapshots) get small bounds, so that a crafted one cannot make everyone who reads it allocate
/// the larger bound.
fn decode_object_within(
    key: &MasterKey,
    bytes: &[u8],
    binding: &[u8],
    what: &str,
    limit: usize,
) -> Result<Vec<u8>> {
    let framed = key.decrypt_bound(bytes, binding, what)?;
    match framed.split_first() {
        Some((&OBJECT_JSON_ZSTD, body)) => crate::util::decompress_bounded(body, limit)
            .map_err(|error| Error::corrupt(what, format!("zstd: {error}"))),
        _ => Err(Error::Format(format!("{what}: unknown object encoding"))),
    }
}

fn config_sealed_with(key: &MasterKey, bytes: &[u8], binding: &[u8]) -> Result<RepoConfig> {
    let plain = decode_object_within(key, bytes, binding, "config", 1 << 20)?;
    serde_json::from_slice(&plain).map_err(|error| Error::Format(format!("config: {error}")))
}

impl DictionarySource for Repository {
    fn dictionary(
        &self,
        id: std::num::NonZeroU32,
    ) -> Result<Arc<zstd::dict::DecoderDictionary<'static>>> {
        self.dictionaries.for_reading(self, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalBackend, MemoryBackend};

    fn fast() -> InitOptions {
        InitOptions {
            // Cheap key derivation: the race is the point, not the cost.
            kdf: KdfParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            ..Default::default()
        }
    }

    /// Two node agents' first backups into one namespace's repository create it at once: exactly
    /// one creates it, the other finds it, and both then open the same repository.
    #[test]
    fn racing_inits_create_one_repository() {
        let dir = tempfile::tempdir().unwrap();
        let backends: [Arc<dyn Backend>; 2] = [
            Arc::new(LocalBackend::new(dir.path())),
            Arc::new(MemoryBackend::new()),
        ];
        for backend in backends {
            let results: Vec<Result<Repository>> = std::thread::scope(|scope| {
                let racers: Vec<_> = (0..4)
                    .map(|_| {
                        scope.spawn(|| Repository::init(backend.clone(), b"one password", &fast()))
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            let created: Vec<&Repository> =
                results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(created.len(), 1, "{:?}", backend.location());
            for result in &results {
                if let Err(error) = result {
                    assert!(matches!(error, Error::RepositoryExists { .. }), "{error}");
                }
            }
            // The losers removed their key slots, and the winner's config opens.
            assert_eq!(backend.list(Kind::Key).unwrap().len(), 1);
            let opened = Repository::open(backend.clone(), b"one password").unwrap();
            assert_eq!(opened.config().id, created[0].config().id);
        }
    }
}
