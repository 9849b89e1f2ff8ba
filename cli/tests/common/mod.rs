//! Helpers the `ferry` binary's tests share: a repository (a local directory, or a prefix of the
//! test environment's MinIO bucket) driven through the binary, and trees of test files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PASSWORD: &str = "cli test password";

/// A temp directory for a test's files, and a repository: `repo` in that directory, or a prefix of
/// the test bucket (emptied when the fixture is dropped).
pub struct Fixture {
    dir: tempfile::TempDir,
    s3: Option<ferry_tests::BucketPrefix>,
}

impl Fixture {
    /// A local repository.
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            s3: None,
        }
    }

    /// A repository in a fresh prefix of the test environment's bucket. Panics, with how to start
    /// the environment, when it is down.
    pub fn s3(name: &str) -> Fixture {
        let env = ferry_tests::TestEnv::get();
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            s3: Some(ferry_tests::BucketPrefix::new(env, name)),
        }
    }

    /// `local` or `s3`.
    pub fn backend_name(&self) -> &'static str {
        if self.s3.is_some() { "s3" } else { "local" }
    }

    /// The local repository's directory.
    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// What `--repo` takes: the local directory, or `s3://bucket/prefix`.
    pub fn repo_url(&self) -> String {
        match &self.s3 {
            Some(prefix) => prefix.url(),
            None => self.repo().display().to_string(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ferry` with nothing of the test's environment but PATH, with the repository and its
    /// password; on S3 also the endpoint, path-style addressing and the credentials.
    pub fn ferry(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        command
            .env("FERRY_REPO", self.repo_url())
            .env("FERRY_PASSWORD", PASSWORD);
        if self.s3.is_some() {
            let env = ferry_tests::TestEnv::get();
            let credentials = env.s3_credentials();
            command
                .env("FERRY_S3_ENDPOINT", env.s3_endpoint())
                .env("FERRY_S3_REGION", env.s3_region())
                .env("FERRY_S3_PATH_STYLE", "true")
                .env("AWS_ACCESS_KEY_ID", credentials.access_key_id())
                .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key())
                .env("AWS_REGION", env.s3_region());
        }
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.ferry().args(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> serde_json::Value {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "ferry {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "ferry {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    pub fn init(&self) {
        // Small chunks so that small test data still spans many chunks and packs.
        self.ok(&[
            "-o",
            "json",
            "repo",
            "init",
            "--chunk-min",
            "4096",
            "--chunk-avg",
            "16384",
            "--chunk-max",
            "65536",
            "--pack-size-mib",
            "1",
        ]);
    }

    /// The names of the objects stored under `dir` of the repository (`snapshots`, `locks`...),
    /// read from the store itself rather than through `ferry`, sorted. Local temp files (names
    /// starting with `.`) are not objects.
    pub fn objects(&self, dir: &str) -> Vec<String> {
        let mut names = match &self.s3 {
            Some(prefix) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime
                    .block_on(prefix.objects(&format!("{dir}/")))
                    .into_iter()
                    .map(|(key, _)| key.rsplit('/').next().unwrap_or_default().to_owned())
                    .collect()
            }
            None => {
                let mut names = Vec::new();
                let mut stack = vec![self.repo().join(dir)];
                while let Some(path) = stack.pop() {
                    let Ok(listing) = std::fs::read_dir(&path) else {
                        continue;
                    };
                    for entry in listing {
                        let entry = entry.unwrap();
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if entry.file_type().unwrap().is_dir() {
                            stack.push(entry.path());
                        } else if !name.starts_with('.') {
                            names.push(name);
                        }
                    }
                }
                names
            }
        };
        names.sort();
        names
    }
}

/// Deterministic incompressible bytes (the harness's, shared by every crate's tests).
pub use ferry_tests::noise;

pub fn fill(dir: &Path, files: usize, size: usize, seed: u64) {
    for i in 0..files {
        let path = dir.join(format!("d{}/f{i}", i % 7));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, noise(seed + i as u64, size + i)).unwrap();
    }
}

pub fn same_files(a: &Path, b: &Path) {
    let mut stack = vec![PathBuf::new()];
    let mut count = 0;
    while let Some(rel) = stack.pop() {
        let mut names_a: Vec<_> = std::fs::read_dir(a.join(&rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut names_b: Vec<_> = std::fs::read_dir(b.join(&rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names_a.sort();
        names_b.sort();
        assert_eq!(names_a, names_b, "entries of {} differ", rel.display());
        for name in names_a {
            let child = rel.join(&name);
            if a.join(&child).is_dir() {
                stack.push(child);
            } else {
                count += 1;
                assert_eq!(
                    std::fs::read(a.join(&child)).unwrap(),
                    std::fs::read(b.join(&child)).unwrap(),
                    "{}",
                    child.display()
                );
            }
        }
    }
    assert!(count > 0);
}
