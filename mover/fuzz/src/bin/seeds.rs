//! Writes the seed corpora of the fuzz targets from a real repository.
//!
//! It creates a local repository (password [`TEST_PASSWORD`], cheap Argon2 costs), backs up three
//! small directory trees into it (files, directories, a symlink, a FIFO, an empty file, a sparse
//! file with holes, a name that is not UTF-8, an extended attribute where the filesystem allows),
//! holds a shared then an exclusive lock, and reads every stored object back with the repository's
//! master key:
//!
//! - `key_slot`: the key slots as stored (JSON in clear; they open with the test password);
//! - `index`, `snapshot`, `lock`: the JSON plaintext of each object;
//! - `tree`: the plaintext of each tree blob;
//! - `object`: each object (config included) re-sealed with the test key (mode 0), and its framed
//!   plaintext (mode 1);
//! - `pack`: each decrypted pack header (mode 0), each small pack re-sealed with the test key, its
//!   blob ids recomputed with the test key's id key (mode 1), each header behind a zero blob area
//!   (mode 2);
//! - `blob`: the stored (compressed or not) plaintext of each small blob.
//!
//! Usage (from mover/fuzz, see README.md): `cargo +nightly fuzz build --features seeds seeds`,
//! then `<target dir>/x86_64-unknown-linux-gnu/release/seeds corpus`. It writes into
//! `<out>/<target>/`, files named by content; minimise afterwards with `cargo fuzz cmin`.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_mover::backend::Kind;
use ferry_mover::blob::BlobKind;
use ferry_mover::crypto::{KdfParams, MasterKey};
use ferry_mover::lock::RepoLock;
use ferry_mover::pack::{PackEntry, encode_header, parse_pack};
use ferry_mover::repository::{FORMAT_VERSION, decode_object, object_binding};
use ferry_mover::{Backend, BackupOptions, InitOptions, LocalBackend, Repository};
use ferry_mover_fuzz::{OBJECT_TARGET_NAME, TEST_PASSWORD, test_key};

/// Packs and blobs larger than this are left out of the seeds: the fuzzer mutates small inputs
/// far faster, and large ones add no code paths.
const MAX_SEED: usize = 16 * 1024;

struct Seeds {
    out: PathBuf,
    written: usize,
}

impl Seeds {
    fn add(&mut self, target: &str, bytes: &[u8]) {
        let dir = self.out.join(target);
        fs::create_dir_all(&dir).unwrap();
        let name = format!("seed-{}", &blake3_hex(bytes)[..16]);
        fs::write(dir.join(name), bytes).unwrap();
        self.written += 1;
    }
}

fn blake3_hex(bytes: &[u8]) -> String {
    ferry_mover::id::Id::hash_of_ciphertext(bytes).to_hex()
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let work = tempfile::tempdir().unwrap();
    let repo_dir = work.path().join("repo");
    let backend = Arc::new(LocalBackend::new(&repo_dir));
    let options = InitOptions {
        kdf: KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
        pack_size: 1024 * 1024,
        ..Default::default()
    };
    let repo = Arc::new(Repository::init(backend.clone(), TEST_PASSWORD, &options).unwrap());

    // Three backups of growing sources: each ends with its own small packs and index.
    let source = work.path().join("source");
    fs::create_dir_all(source.join("dir/nested")).unwrap();
    fs::write(source.join("hello.txt"), b"hello, ferry\n").unwrap();
    fs::write(source.join("empty"), b"").unwrap();
    fs::write(source.join("dir/nested/deep.txt"), b"deep\n".repeat(100)).unwrap();
    std::os::unix::fs::symlink("../hello.txt", source.join("dir/link")).unwrap();
    fs::write(
        source.join(std::ffi::OsStr::from_bytes(b"not-utf8-\xff\xfe")),
        b"odd name",
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &source.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // Holes: 1 MiB with a little data in the middle.
    let sparse = fs::File::create(source.join("sparse")).unwrap();
    sparse.set_len(1024 * 1024).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, &[0x5a; 3000], 600 * 1024).unwrap();
    drop(sparse);
    // Not every filesystem takes user attributes; the seeds are as good without.
    let _ = xattr::set(source.join("hello.txt"), "user.ferry", b"seed");
    backup(&repo, &source, "first");

    fs::write(source.join("hello.txt"), b"hello again, ferry\n").unwrap();
    fs::write(
        source.join("dir/compressible.log"),
        b"GET /index.html 200\n".repeat(15_000),
    )
    .unwrap();
    backup(&repo, &source, "second");

    let mut noise = vec![0u8; 24 * 1024];
    ferry_mover::crypto::fill_random(&mut noise);
    fs::write(source.join("dir/nested/noise.bin"), &noise).unwrap();
    fs::remove_file(source.join("empty")).unwrap();
    backup(&repo, &source, "third");

    let mut seeds = Seeds { out, written: 0 };
    let key = repo.key();

    // Locks: held while their objects are read.
    for exclusive in [false, true] {
        let lock = RepoLock::acquire(&repo, exclusive, Duration::from_secs(10)).unwrap();
        for info in backend.list(Kind::Lock).unwrap() {
            let stored = backend.get(Kind::Lock, &info.name).unwrap();
            add_object(
                &mut seeds,
                &repo,
                (Kind::Lock, &info.name),
                &stored,
                Some("lock"),
            );
        }
        lock.release();
    }

    for info in backend.list(Kind::Key).unwrap() {
        seeds.add("key_slot", &backend.get(Kind::Key, &info.name).unwrap());
    }
    add_object(
        &mut seeds,
        &repo,
        (Kind::Config, "config"),
        &backend.get(Kind::Config, "config").unwrap(),
        None,
    );
    for (kind, target) in [(Kind::Index, "index"), (Kind::Snapshot, "snapshot")] {
        for info in backend.list(kind).unwrap() {
            add_object(
                &mut seeds,
                &repo,
                (kind, &info.name),
                &backend.get(kind, &info.name).unwrap(),
                Some(target),
            );
        }
    }
    for info in backend.list(Kind::Pack).unwrap() {
        add_pack(
            &mut seeds,
            key,
            &backend.get(Kind::Pack, &info.name).unwrap(),
        );
    }
    println!(
        "wrote {} seeds into {} from {}",
        seeds.written,
        seeds.out.display(),
        repo_dir.display()
    );
}

fn backup(repo: &Arc<Repository>, source: &Path, tag: &str) {
    let options = BackupOptions {
        tags: vec![tag.into()],
        ..Default::default()
    };
    ferry_mover::backup(repo, source, &options).unwrap();
}

/// A stored JSON object (`kind`, `name`): its plaintext for `json_target`, and for `object`
/// re-sealed with the test key under the path the fuzz target reads it as (mode 0) and framed
/// (mode 1).
fn add_object(
    seeds: &mut Seeds,
    repo: &Repository,
    (kind, name): (Kind, &str),
    stored: &[u8],
    json_target: Option<&str>,
) {
    let key = repo.key();
    let version = repo.config().version;
    let framed = key
        .decrypt_bound(stored, &object_binding(version, kind, name), "object")
        .unwrap();
    let mut sealed = vec![0u8];
    let target_binding = object_binding(FORMAT_VERSION, Kind::Index, OBJECT_TARGET_NAME);
    sealed.extend_from_slice(&test_key().encrypt_bound(&framed, &target_binding));
    seeds.add("object", &sealed);
    let mut plain = vec![1u8];
    plain.extend_from_slice(&framed);
    seeds.add("object", &plain);
    if let Some(target) = json_target {
        seeds.add(
            target,
            &decode_object(key, stored, version, kind, name).unwrap(),
        );
    }
}

fn add_pack(seeds: &mut Seeds, key: &MasterKey, pack: &[u8]) {
    let entries = parse_pack(key, "pack", pack).unwrap();
    let header_len = u32::from_le_bytes(pack[pack.len() - 4..].try_into().unwrap()) as usize;
    let header_start = pack.len() - 4 - header_len;
    let header = key
        .decrypt(&pack[header_start..pack.len() - 4], "header")
        .unwrap();

    let mut seed = vec![0u8];
    seed.extend_from_slice(&(header_start as u64).to_le_bytes());
    seed.extend_from_slice(&header);
    seeds.add("pack", &seed);

    let mut seed = vec![2u8];
    seed.extend_from_slice(&(header_start as u32).to_le_bytes());
    seed.extend_from_slice(&header);
    seeds.add("pack", &seed);

    // The pack again, every blob re-sealed with the test key under the test key's id.
    let mut resealed = Vec::new();
    let mut new_entries = Vec::new();
    for entry in &entries {
        let bytes = &pack[entry.offset as usize..(entry.offset + entry.length) as usize];
        // The seed repository is too small to train a dictionary.
        let plaintext = ferry_mover::blob::open(
            key,
            &ferry_mover::dictionary::NoDictionaries,
            &entry.id,
            entry.compression,
            entry.raw_length,
            bytes,
            "blob",
        )
        .unwrap();
        let stored = key.decrypt(bytes, "blob").unwrap();
        if entry.kind == BlobKind::Tree {
            seeds.add("tree", &plaintext);
        }
        if stored.len() <= MAX_SEED {
            let mut seed = vec![entry.compression];
            seed.extend_from_slice(&entry.raw_length.to_le_bytes());
            seed.extend_from_slice(&stored);
            seeds.add("blob", &seed);
        }
        let sealed = test_key().encrypt(&stored);
        new_entries.push(PackEntry {
            id: test_key().blob_id(&plaintext),
            offset: resealed.len() as u32,
            length: sealed.len() as u32,
            ..entry.clone()
        });
        resealed.extend_from_slice(&sealed);
    }
    let header = test_key().encrypt(&encode_header(&new_entries));
    resealed.extend_from_slice(&header);
    resealed.extend_from_slice(&(header.len() as u32).to_le_bytes());
    if resealed.len() <= MAX_SEED {
        let mut seed = vec![1u8];
        seed.extend_from_slice(&resealed);
        seeds.add("pack", &seed);
    }
}
