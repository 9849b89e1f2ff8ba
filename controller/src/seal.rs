//! Sealing what the controller writes to a bucket: backup archives, records, volume records,
//! resource lists, results and logs. Each object is encrypted and authenticated with AES-256-GCM
//! under a key derived from the installation's key (the Secret `ferry-repository-password`, which
//! also opens the node agents' repositories), and bound to its name in the location
//! (`backups/<backup>/<file>`). So the bucket reveals no Secret of a backup, and an object that was
//! edited, truncated, swapped for another (another backup's, or another file's) or written without
//! the key is refused before anything is read from it.
//!
//! Format (`FRYSEAL1`): the magic, a random 7-byte nonce prefix, then segments of at most
//! [`MAX_SEGMENT`] bytes of plaintext. Each segment is its length (big-endian u32, the top bit set
//! on the last one) and its ciphertext with the tag. A segment's nonce is the prefix, its number
//! (big-endian u32) and the last-segment flag, so segments cannot be reordered, dropped or cut
//! short (the STREAM construction). Objects are streamed in and out segment by segment: an archive
//! of any size needs memory for one segment.

use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"FRYSEAL1";
const PREFIX_LEN: usize = 7;
const HEADER_LEN: usize = MAGIC.len() + PREFIX_LEN;
const TAG_LEN: usize = 16;
/// The most plaintext in one segment; a streamed upload's parts are smaller.
pub const MAX_SEGMENT: usize = 16 << 20;
const LAST: u32 = 1 << 31;
/// Domain of the key derivation: a new purpose gets a new string, never the same key.
const DERIVATION: &str = "ferry.dev 2026-12 bucket objects sealed with AES-256-GCM, v1";

/// The key objects are sealed with.
#[derive(Clone)]
pub struct SealKey(Arc<LessSafeKey>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// The sealing key of an installation, from its key.
    pub fn derive(installation_key: &[u8]) -> SealKey {
        let raw = blake3::derive_key(DERIVATION, installation_key);
        let key = UnboundKey::new(&AES_256_GCM, &raw).expect("a 32-byte AES-256 key");
        SealKey(Arc::new(LessSafeKey::new(key)))
    }
}

fn nonce(prefix: &[u8; PREFIX_LEN], counter: u32, last: bool) -> Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..PREFIX_LEN].copy_from_slice(prefix);
    nonce[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&counter.to_be_bytes());
    nonce[NONCE_LEN - 1] = u8::from(last);
    Nonce::assume_unique_for_key(nonce)
}

/// Seals one object segment by segment, as it is written.
#[derive(Debug)]
pub struct Sealer {
    key: SealKey,
    name: String,
    prefix: [u8; PREFIX_LEN],
    counter: u32,
    header_written: bool,
}

impl Sealer {
    /// A sealer for the object called `name` in its location.
    pub fn new(key: &SealKey, name: &str) -> Sealer {
        let mut prefix = [0u8; PREFIX_LEN];
        aws_lc_rs::rand::fill(&mut prefix).expect("the system random generator works");
        Sealer {
            key: key.clone(),
            name: name.to_owned(),
            prefix,
            counter: 0,
            header_written: false,
        }
    }

    /// The next segment of `plain` (at most [`MAX_SEGMENT`] bytes), preceded by the header when it
    /// is the first.
    pub fn segment(&mut self, plain: &[u8], last: bool) -> Bytes {
        assert!(
            plain.len() <= MAX_SEGMENT,
            "a segment is at most MAX_SEGMENT"
        );
        let mut out = BytesMut::with_capacity(HEADER_LEN + 4 + plain.len() + TAG_LEN);
        if !self.header_written {
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&self.prefix);
            self.header_written = true;
        }
        let length = u32::try_from(plain.len() + TAG_LEN).expect("bounded by MAX_SEGMENT");
        out.extend_from_slice(&(length | if last { LAST } else { 0 }).to_be_bytes());
        let mut sealed = plain.to_vec();
        self.key
            .0
            .seal_in_place_append_tag(
                nonce(&self.prefix, self.counter, last),
                Aad::from(self.name.as_bytes()),
                &mut sealed,
            )
            .expect("sealing a bounded segment");
        self.counter = self
            .counter
            .checked_add(1)
            .expect("fewer than 2^31 segments");
        out.extend_from_slice(&sealed);
        out.freeze()
    }
}

/// Seals a whole object called `name`.
pub fn seal(key: &SealKey, name: &str, plain: &[u8]) -> Bytes {
    let mut sealer = Sealer::new(key, name);
    let mut out = BytesMut::with_capacity(plain.len() + HEADER_LEN + 64);
    let mut chunks = plain.chunks(MAX_SEGMENT).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&sealer.segment(&[], true));
    }
    while let Some(chunk) = chunks.next() {
        out.extend_from_slice(&sealer.segment(chunk, chunks.peek().is_none()));
    }
    out.freeze()
}

/// Opens a whole sealed object called `name`.
pub fn open(key: &SealKey, name: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let refused = |reason: &'static str| unsealed(name, reason);
    let header = sealed.get(..HEADER_LEN).ok_or(refused("it is too short"))?;
    let prefix = check_header(name, header)?;
    let mut rest = &sealed[HEADER_LEN..];
    let mut plain = Vec::with_capacity(rest.len());
    let mut counter = 0u32;
    loop {
        let word = rest.get(..4).ok_or(refused("it is cut short"))?;
        let (length, last) = segment_length(name, word)?;
        let body = rest.get(4..4 + length).ok_or(refused("it is cut short"))?;
        plain.extend_from_slice(&open_segment(key, name, &prefix, counter, last, body)?);
        rest = &rest[4 + length..];
        counter += 1;
        if last {
            return if rest.is_empty() {
                Ok(plain)
            } else {
                Err(refused("bytes follow its last segment"))
            };
        }
    }
}

/// Reads the sealed object called `name` from `raw` as its plaintext, one segment at a time; a
/// read fails (with [`Error::Unsealed`] inside the I/O error) at the first segment that does not
/// open.
pub fn open_reader(
    key: SealKey,
    name: String,
    raw: impl AsyncRead + Send + Unpin + 'static,
) -> impl AsyncRead + Send + Unpin + 'static {
    struct State<R> {
        raw: R,
        key: SealKey,
        name: String,
        prefix: Option<[u8; PREFIX_LEN]>,
        counter: u32,
        done: bool,
    }
    let state = State {
        raw,
        key,
        name,
        prefix: None,
        counter: 0,
        done: false,
    };
    let segments = futures::stream::try_unfold(state, |mut state| async move {
        let cut_short = |name: &str| std::io::Error::other(unsealed(name, "it is cut short"));
        if state.done {
            // Nothing may follow the last segment.
            let mut byte = [0u8; 1];
            return match state.raw.read(&mut byte).await? {
                0 => Ok(None),
                _ => Err(std::io::Error::other(unsealed(
                    &state.name,
                    "bytes follow its last segment",
                ))),
            };
        }
        let prefix = match state.prefix {
            Some(prefix) => prefix,
            None => {
                let mut header = [0u8; HEADER_LEN];
                state
                    .raw
                    .read_exact(&mut header)
                    .await
                    .map_err(|_| cut_short(&state.name))?;
                let prefix = check_header(&state.name, &header).map_err(std::io::Error::other)?;
                state.prefix = Some(prefix);
                prefix
            }
        };
        let mut word = [0u8; 4];
        state
            .raw
            .read_exact(&mut word)
            .await
            .map_err(|_| cut_short(&state.name))?;
        let (length, last) = segment_length(&state.name, &word).map_err(std::io::Error::other)?;
        let mut body = vec![0u8; length];
        state
            .raw
            .read_exact(&mut body)
            .await
            .map_err(|_| cut_short(&state.name))?;
        let plain = open_segment(&state.key, &state.name, &prefix, state.counter, last, &body)
            .map_err(std::io::Error::other)?;
        state.counter += 1;
        state.done = last;
        Ok(Some((Bytes::from(plain), state)))
    });
    tokio_util::io::StreamReader::new(Box::pin(segments.into_stream()))
}

fn check_header(name: &str, header: &[u8]) -> Result<[u8; PREFIX_LEN]> {
    if &header[..MAGIC.len()] != MAGIC {
        return Err(unsealed(name, "it is not sealed at all"));
    }
    Ok(header[MAGIC.len()..HEADER_LEN]
        .try_into()
        .expect("the header's length"))
}

fn segment_length(name: &str, word: &[u8]) -> Result<(usize, bool)> {
    let word = u32::from_be_bytes(word.try_into().expect("four bytes"));
    let length = usize::try_from(word & !LAST).expect("a u32 fits");
    if !(TAG_LEN..=MAX_SEGMENT + TAG_LEN).contains(&length) {
        return Err(unsealed(name, "a segment's length is out of bounds"));
    }
    Ok((length, word & LAST != 0))
}

fn open_segment(
    key: &SealKey,
    name: &str,
    prefix: &[u8; PREFIX_LEN],
    counter: u32,
    last: bool,
    body: &[u8],
) -> Result<Vec<u8>> {
    let mut buffer = body.to_vec();
    let plain_len = key
        .0
        .open_in_place(
            nonce(prefix, counter, last),
            Aad::from(name.as_bytes()),
            &mut buffer,
        )
        .map_err(|_| unsealed(name, "it does not authenticate"))?
        .len();
    buffer.truncate(plain_len);
    Ok(buffer)
}

fn unsealed(name: &str, reason: &'static str) -> Error {
    Error::Unsealed {
        what: name.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> SealKey {
        SealKey::derive(text.as_bytes())
    }

    #[test]
    fn sealed_objects_open_with_their_key_and_name_only() {
        let key = key("installation key");
        for plain in [
            Vec::new(),
            b"{\"kind\":\"Backup\"}".to_vec(),
            vec![7u8; MAX_SEGMENT * 2 + 5],
        ] {
            let sealed = seal(&key, "backups/a/ferry-backup.json", &plain);
            assert_eq!(
                open(&key, "backups/a/ferry-backup.json", &sealed).unwrap(),
                plain
            );
        }
        let sealed = seal(&key, "backups/a/ferry-backup.json", b"secret: hunter2");
        assert!(
            !sealed.windows(7).any(|w| w == b"hunter2"),
            "the plaintext shows"
        );
        let refused = |result: Result<Vec<u8>>| result.unwrap_err().to_string();
        // Another backup's name (a swap), another installation's key.
        assert!(
            refused(open(&key, "backups/b/ferry-backup.json", &sealed))
                .contains("does not authenticate")
        );
        assert!(
            refused(open(
                &SealKey::derive(b"another"),
                "backups/a/ferry-backup.json",
                &sealed
            ))
            .contains("does not authenticate")
        );
        // Unsealed, flipped, cut short, extended.
        assert!(
            refused(open(
                &key,
                "backups/a/ferry-backup.json",
                b"{\"kind\":\"Backup\"}"
            ))
            .contains("not sealed")
        );
        let mut flipped = sealed.to_vec();
        let middle = flipped.len() / 2 + 6;
        flipped[middle] ^= 1;
        assert!(
            refused(open(&key, "backups/a/ferry-backup.json", &flipped)).contains("authenticate")
        );
        assert!(
            refused(open(
                &key,
                "backups/a/ferry-backup.json",
                &sealed[..sealed.len() - 1]
            ))
            .contains("cut short")
        );
        let mut extended = sealed.to_vec();
        extended.push(0);
        assert!(refused(open(&key, "backups/a/ferry-backup.json", &extended)).contains("follow"));
    }

    /// Dropping the last segments and marking an earlier one last does not open: the flag is
    /// part of each segment's nonce.
    #[test]
    fn segments_cannot_be_dropped_or_reordered() {
        let key = key("installation key");
        let name = "backups/a/a.tar.gz";
        let mut sealer = Sealer::new(&key, name);
        let first = sealer.segment(b"first", false);
        let second = sealer.segment(b"second", false);
        let third = sealer.segment(b"third", true);
        let whole = [&first[..], &second[..], &third[..]].concat();
        assert_eq!(open(&key, name, &whole).unwrap(), b"firstsecondthird");
        // Without the last segment.
        assert!(open(&key, name, &[&first[..], &second[..]].concat()).is_err());
        // The second with its flag forged into "last".
        let mut forged = second.to_vec();
        forged[0] |= 0x80;
        assert!(open(&key, name, &[&first[..], &forged[..]].concat()).is_err());
        // Reordered.
        let mut swapped = first[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&second);
        swapped.extend_from_slice(&first[HEADER_LEN..]);
        swapped.extend_from_slice(&third);
        assert!(open(&key, name, &swapped).is_err());
    }

    #[tokio::test]
    async fn a_sealed_stream_reads_back_and_a_tampered_one_fails() {
        let key = key("installation key");
        let name = "backups/a/a.tar.gz";
        let mut sealer = Sealer::new(&key, name);
        let mut sealed = Vec::new();
        for (part, last) in [(vec![1u8; 300_000], false), (vec![2u8; 10], true)] {
            sealed.extend_from_slice(&sealer.segment(&part, last));
        }
        let mut plain = Vec::new();
        open_reader(
            key.clone(),
            name.to_owned(),
            std::io::Cursor::new(sealed.clone()),
        )
        .read_to_end(&mut plain)
        .await
        .unwrap();
        assert_eq!(plain.len(), 300_010);
        let mut tampered = sealed;
        tampered[HEADER_LEN + 4 + 100] ^= 1;
        let error = open_reader(key, name.to_owned(), std::io::Cursor::new(tampered))
            .read_to_end(&mut Vec::new())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("authenticate"), "{error}");
    }
}
