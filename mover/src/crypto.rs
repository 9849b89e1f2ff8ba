//! Encryption, authentication and content ids.
//!
//! A random 256-bit master key is the root of everything. Two subkeys are derived from it with
//! BLAKE3's key derivation: one for AES-256-GCM (every stored object and blob), one for the keyed
//! BLAKE3 that names blobs, so that ids reveal nothing about content to whoever reads the bucket.
//! The master key itself is stored only wrapped by password-derived keys (Argon2id), in key slots.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;

pub const TAG_LEN: usize = 16;
/// Bytes added to every encrypted object: nonce then tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

pub fn fill_random(bytes: &mut [u8]) {
    aws_lc_rs::rand::fill(bytes).expect("the system random generator works");
}

/// The repository's master key and the subkeys derived from it.
pub struct MasterKey {
    raw: [u8; 32],
    aead: LessSafeKey,
    id_key: [u8; 32],
}

impl Clone for MasterKey {
    fn clone(&self) -> Self {
        MasterKey::from_bytes(self.raw)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn generate() -> MasterKey {
        let mut raw = [0u8; 32];
        fill_random(&mut raw);
        MasterKey::from_bytes(raw)
    }

    pub fn from_bytes(raw: [u8; 32]) -> MasterKey {
        let encryption = blake3::derive_key("ferry repository v1 object encryption", &raw);
        let id_key = blake3::derive_key("ferry repository v1 blob id", &raw);
        let aead =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &encryption).expect("a 32-byte key"));
        MasterKey { raw, aead, id_key }
    }

    pub(crate) fn raw(&self) -> &[u8; 32] {
        &self.raw
    }

    /// The id of a blob's plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        seal(&self.aead, plaintext, &[])
    }

    /// `what` names the object in the error when authentication fails.
    pub fn decrypt(&self, ciphertext: &[u8], what: &str) -> Result<Vec<u8>> {
        self.decrypt_bound(ciphertext, &[], what)
    }

    /// Encrypts with associated data: the ciphertext opens only with the same `bound_to` (the
    /// name of the object it is stored as), so it cannot be moved to another name unnoticed.
    pub fn encrypt_bound(&self, plaintext: &[u8], bound_to: &[u8]) -> Vec<u8> {
        seal(&self.aead, plaintext, bound_to)
    }

    /// Opens what [`MasterKey::encrypt_bound`] sealed with the same `bound_to`.
    pub fn decrypt_bound(&self, ciphertext: &[u8], bound_to: &[u8], what: &str) -> Result<Vec<u8>> {
        open(&self.aead, ciphertext, bound_to).ok_or_else(|| {
            Error::corrupt(
                what,
                "authentication failed (altered, truncated, or moved from another name)",
            )
        })
    }
}

/// `nonce || ciphertext || tag`, built in one buffer allocated once: the plaintext is copied in
/// once and encrypted where it lies (a chunk-sized blob used to be copied four times, through
/// three allocations that each faulted in fresh pages).
fn seal(key: &LessSafeKey, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce);
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .expect("AES-GCM sealing of an in-memory buffer cannot fail");
    out.extend_from_slice(tag.as_ref());
    out
}

fn open(key: &LessSafeKey, ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if ciphertext.len() < OVERHEAD {
        return None;
    }
    let nonce = Nonce::try_assume_unique_for_key(&ciphertext[..NONCE_LEN]).ok()?;
    let mut body = ciphertext[NONCE_LEN..].to_vec();
    let plain_len = key
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .ok()?
        .len();
    body.truncate(plain_len);
    Some(body)
}

/// Argon2id cost parameters, stored in each key slot so they can be raised later.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// OWASP's recommended Argon2id setting: strong enough, and small enough that opening a
    /// repository stays well within the data mover's memory budget.
    fn default() -> Self {
        KdfParams {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// The largest costs a key slot may ask for. A slot is read before anything in it is
    /// authenticated (and anyone who can write to the bucket can plant one), so it must not be
    /// able to make opening the repository allocate beyond what an agent or a maintenance Job
    /// may use, or spin for hours: 256 MiB of memory, 64 passes and 64 lanes are far beyond any
    /// setting in use (the default is 19 MiB, 2 passes, 1 lane).
    pub const MAX: KdfParams = KdfParams {
        memory_kib: 256 * 1024,
        iterations: 64,
        parallelism: 64,
    };

    pub fn validate(&self) -> Result<()> {
        let max = KdfParams::MAX;
        if self.memory_kib > max.memory_kib
            || self.iterations > max.iterations
            || self.parallelism > max.parallelism
            || self.iterations == 0
            || self.parallelism == 0
        {
            return Err(Error::Format(format!(
                "Argon2id costs {} KiB, {} passes, {} lanes are outside what Ferry accepts (at most {} KiB, {} passes, {} lanes, at least 1 pass and 1 lane)",
                self.memory_kib,
                self.iterations,
                self.parallelism,
                max.memory_kib,
                max.iterations,
                max.parallelism
            )));
        }
        Ok(())
    }
}

/// A key slot: the master key wrapped by a key derived from one password. Stored in clear (it
/// holds only a salt, costs and ciphertext) as `keys/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    pub version: u32,
    pub kdf: String,
    pub params: KdfParams,
    #[serde(with = "hex_bytes")]
    pub salt: Vec<u8>,
    /// AES-256-GCM of the 32-byte master key: nonce, ciphertext, tag.
    #[serde(with = "hex_bytes")]
    pub wrapped_master_key: Vec<u8>,
    pub created: jiff::Timestamp,
    /// Who made it: only in slots written before 2026-12-06. A slot is stored in clear, and the
    /// machine and user that made it are not for whoever reads the bucket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
}

impl KeySlot {
    pub fn wrap(master: &MasterKey, password: &[u8], params: KdfParams) -> Result<KeySlot> {
        params.validate()?;
        let mut salt = vec![0u8; 32];
        fill_random(&mut salt);
        let kek = derive_kek(password, &salt, params)?;
        Ok(KeySlot {
            version: 1,
            kdf: "argon2id".into(),
            params,
            salt,
            wrapped_master_key: seal(&kek, master.raw(), &[]),
            created: jiff::Timestamp::now(),
            hostname: String::new(),
            username: String::new(),
        })
    }

    /// Decodes a stored key slot, refusing one this ferry cannot use.
    pub fn decode(bytes: &[u8]) -> Result<KeySlot> {
        let slot: KeySlot = serde_json::from_slice(bytes)
            .map_err(|error| Error::Format(format!("key slot: {error}")))?;
        if slot.version != 1 {
            return Err(Error::Format(format!(
                "key slot version {} is not supported (this ferry reads version 1)",
                slot.version
            )));
        }
        if slot.kdf != "argon2id" {
            return Err(Error::Format(format!(
                "unknown key derivation {:?} in a key slot",
                slot.kdf
            )));
        }
        slot.params.validate()?;
        Ok(slot)
    }

    /// `None` when the password is not this slot's.
    pub fn unwrap_with(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        if self.kdf != "argon2id" {
            return Err(Error::Format(format!(
                "unknown key derivation {:?} in a key slot",
                self.kdf
            )));
        }
        self.params.validate()?;
        let kek = derive_kek(password, &self.salt, self.params)?;
        Ok(open(&kek, &self.wrapped_master_key, &[]).and_then(|raw| {
            let raw: [u8; 32] = raw.try_into().ok()?;
            Some(MasterKey::from_bytes(raw))
        }))
    }
}

fn derive_kek(password: &[u8], salt: &[u8], params: KdfParams) -> Result<LessSafeKey> {
    let argon_params = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|error| {
        Error::Format(format!(
            "invalid Argon2id parameters in a key slot: {error}"
        ))
    })?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut kek = [0u8; 32];
    argon
        .hash_password_into(password, salt, &mut kek)
        .map_err(|error| Error::Format(format!("deriving a key from the password: {error}")))?;
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &kek).expect("a 32-byte key"),
    ))
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        hex::decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_round_trips_and_detects_tampering() {
        let key = MasterKey::generate();
        let sealed = key.encrypt(b"hello");
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert_eq!(key.decrypt(&sealed, "x").unwrap(), b"hello");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(
                key.decrypt(&bad, "x").is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
        assert!(key.decrypt(&sealed[..10], "x").is_err());
        assert!(MasterKey::generate().decrypt(&sealed, "x").is_err());
    }

    #[test]
    fn a_bound_ciphertext_opens_only_under_its_own_name() {
        let key = MasterKey::generate();
        let sealed = key.encrypt_bound(b"snapshot", b"snapshots/aa");
        assert_eq!(
            key.decrypt_bound(&sealed, b"snapshots/aa", "x").unwrap(),
            b"snapshot"
        );
        assert!(key.decrypt_bound(&sealed, b"snapshots/bb", "x").is_err());
        assert!(key.decrypt(&sealed, "x").is_err());
        assert!(
            key.decrypt_bound(&key.encrypt(b"old"), b"snapshots/aa", "x")
                .is_err()
        );
    }

    #[test]
    fn blob_ids_depend_on_the_key() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        assert_eq!(a.blob_id(b"data"), a.blob_id(b"data"));
        assert_ne!(a.blob_id(b"data"), b.blob_id(b"data"));
        assert_ne!(a.blob_id(b"data"), Id(*blake3::hash(b"data").as_bytes()));
    }

    #[test]
    fn a_key_slot_opens_only_with_its_password() {
        let master = MasterKey::generate();
        let params = KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let slot = KeySlot::wrap(&master, b"right", params).unwrap();
        let opened = slot
            .unwrap_with(b"right")
            .unwrap()
            .expect("the right password opens the slot");
        assert_eq!(opened.raw(), master.raw());
        assert!(slot.unwrap_with(b"wrong").unwrap().is_none());
    }

    /// A key slot is stored in clear: it names no machine and no user. One written by an older
    /// Ferry, which did, still opens.
    #[test]
    fn a_key_slot_names_no_host_and_no_user() {
        let master = MasterKey::generate();
        let params = KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let slot = KeySlot::wrap(&master, b"pw", params).unwrap();
        let stored: serde_json::Value = serde_json::to_value(&slot).unwrap();
        let fields: Vec<&String> = stored.as_object().unwrap().keys().collect();
        for private in ["hostname", "username"] {
            assert!(!fields.iter().any(|f| *f == private), "{fields:?}");
        }
        let text = serde_json::to_string(&slot).unwrap();
        assert!(!text.contains(&crate::util::hostname()), "{text}");

        let mut older = stored;
        older["hostname"] = "build-host".into();
        older["username"] = "root".into();
        let decoded = KeySlot::decode(older.to_string().as_bytes()).unwrap();
        assert_eq!(decoded.hostname, "build-host");
        assert!(decoded.unwrap_with(b"pw").unwrap().is_some());
    }
}
