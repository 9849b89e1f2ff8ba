//! Helpers shared by the repository tests: a repository on either backend, and trees of files.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_mover::{
    Backend, InitOptions, KdfParams, LocalBackend, Repository, S3Backend, S3Options,
};

pub const PASSWORD: &[u8] = b"correct horse battery staple";

/// Keeps a test's storage alive: a temp directory or an S3 prefix emptied on drop.
pub enum Store {
    Local(tempfile::TempDir),
    S3(ferry_tests::BucketPrefix),
}

pub fn local_backend() -> (Arc<dyn Backend>, Store) {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path().join("repo")));
    (backend, Store::Local(dir))
}

/// A backend on the test environment's MinIO. Panics, with how to start it, when it is down.
pub fn s3_backend(name: &str) -> (Arc<dyn Backend>, Store) {
    let env = ferry_tests::TestEnv::get();
    let prefix = ferry_tests::BucketPrefix::new(env, name);
    let options = S3Options {
        endpoint: Some(env.s3_endpoint().to_owned()),
        region: env.s3_region().to_owned(),
        path_style: true,
        credentials: Some(env.s3_credentials()),
        // Small, so that tests exercise multipart uploads with small packs.
        multipart_threshold: 5 * 1024 * 1024,
        part_size: 5 * 1024 * 1024,
        ..S3Options::default()
    };
    let backend: Arc<dyn Backend> = Arc::new(
        S3Backend::new(
            prefix.bucket(),
            prefix.prefix().trim_end_matches('/'),
            &options,
        )
        .unwrap(),
    );
    (backend, Store::S3(prefix))
}

pub fn backend(kind: &str, name: &str) -> (Arc<dyn Backend>, Store) {
    match kind {
        "local" => local_backend(),
        "s3" => s3_backend(name),
        other => panic!("unknown backend {other}"),
    }
}

/// Small chunks and packs and a cheap KDF, so tests exercise many packs with little data.
pub fn test_options() -> InitOptions {
    InitOptions {
        chunker: ferry_mover::ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
        },
        zstd_level: 3,
        pack_size: 1024 * 1024,
        kdf: KdfParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        },
    }
}

pub fn init(backend: Arc<dyn Backend>) -> Arc<Repository> {
    Arc::new(Repository::init(backend, PASSWORD, &test_options()).unwrap())
}

pub fn reopen(backend: Arc<dyn Backend>) -> Arc<Repository> {
    Arc::new(Repository::open(backend, PASSWORD).unwrap())
}

/// Deterministic incompressible bytes (the harness's, shared by every crate's tests).
pub use ferry_tests::noise;

pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// What a restore must reproduce of each entry, keyed by relative path.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub content: Option<Vec<u8>>,
    pub link: Option<PathBuf>,
    pub rdev: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

pub fn describe(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "chardev"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            let xattrs = if ft.is_symlink() {
                BTreeMap::new()
            } else {
                xattr::list(&path)
                    .map(|names| {
                        names
                            .map(|n| {
                                (
                                    n.to_string_lossy().into_owned(),
                                    xattr::get(&path, &n).unwrap().unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            out.insert(
                path.strip_prefix(root).unwrap().to_owned(),
                Entry {
                    kind: kind.into(),
                    mode: if ft.is_symlink() {
                        0
                    } else {
                        meta.mode() & 0o7777
                    },
                    uid: meta.uid(),
                    gid: meta.gid(),
                    // Directory mtimes are restored too, but checked only where the test sets them.
                    mtime: if ft.is_dir() {
                        (0, 0)
                    } else {
                        (meta.mtime(), meta.mtime_nsec())
                    },
                    size: if ft.is_file() { meta.len() } else { 0 },
                    content: ft.is_file().then(|| std::fs::read(&path).unwrap()),
                    link: ft.is_symlink().then(|| std::fs::read_link(&path).unwrap()),
                    rdev: if ft.is_char_device() { meta.rdev() } else { 0 },
                    xattrs,
                },
            );
        }
    }
    out
}

pub fn assert_same_tree(source: &Path, restored: &Path) {
    let expected = describe(source);
    let actual = describe(restored);
    let expected_paths: Vec<_> = expected.keys().collect();
    let actual_paths: Vec<_> = actual.keys().collect();
    assert_eq!(actual_paths, expected_paths, "restored paths differ");
    for (path, entry) in &expected {
        assert_eq!(&actual[path], entry, "{} differs", path.display());
    }
}
