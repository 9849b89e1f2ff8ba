//! The `ferry` binary end to end: the contract the benchmark harness relies on, exit codes and
//! errors, and crash consistency under SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const PASSWORD: &str = "cli test password";

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ferry(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        command
            .env("FERRY_REPO", self.repo())
            .env("FERRY_PASSWORD", PASSWORD);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.ferry().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> serde_json::Value {
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

    fn init(&self) {
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
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

fn fill(dir: &Path, files: usize, size: usize, seed: u64) {
    for i in 0..files {
        let path = dir.join(format!("d{}/f{i}", i % 7));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, noise(seed + i as u64, size + i)).unwrap();
    }
}

fn same_files(a: &Path, b: &Path) {
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

#[test]
fn init_backup_restore_speak_json() {
    let fx = Fixture::new();
    fx.init();
    let source = fx.path("source");
    fill(&source, 30, 20_000, 1);
    let first = fx.ok(&[
        "-o",
        "json",
        "volume",
        "backup",
        source.to_str().unwrap(),
        "--tag",
        "one",
        "--tag",
        "two",
    ]);
    let summary = &first["summary"];
    for field in [
        "files_new",
        "files_changed",
        "files_unmodified",
        "dirs",
        "bytes_read",
        "bytes_added",
        "data_blobs_added",
        "errors",
    ] {
        assert!(summary[field].is_u64(), "summary lacks {field}: {first}");
    }
    assert_eq!(summary["files_new"], 30);
    assert!(summary["bytes_added"].as_u64().unwrap() > 30 * 20_000);
    let id = first["snapshot_id"].as_str().unwrap().to_owned();

    let second = fx.ok(&["-o", "json", "volume", "backup", source.to_str().unwrap()]);
    assert_eq!(
        second["parent"], first["snapshot_id"],
        "the parent defaults to the latest of this host and path"
    );
    assert_eq!(second["summary"]["files_unmodified"], 30);
    assert_eq!(second["summary"]["bytes_read"], 0);

    let target = fx.path("target");
    let restored = fx.ok(&[
        "-o",
        "json",
        "volume",
        "restore",
        &id[..8],
        target.to_str().unwrap(),
    ]);
    for field in [
        "files_restored",
        "bytes_written",
        "bytes_downloaded",
        "bytes_reused",
        "errors",
    ] {
        assert!(
            restored[field].is_u64(),
            "restore output lacks {field}: {restored}"
        );
    }
    assert_eq!(restored["files_restored"], 30);
    same_files(&source, &target);

    let again = fx.ok(&[
        "-o",
        "json",
        "volume",
        "restore",
        "latest",
        target.to_str().unwrap(),
        "--incremental",
        "--delete",
    ]);
    assert_eq!(again["bytes_downloaded"], 0);

    let snapshots = fx.ok(&["-o", "json", "repo", "snapshots"]);
    assert_eq!(snapshots.as_array().unwrap().len(), 2);
    assert_eq!(snapshots[0]["tags"], serde_json::json!(["one", "two"]));
    let listing = fx.ok(&["-o", "json", "volume", "ls", "latest", "d1"]);
    assert_eq!(listing.as_array().unwrap().len(), 30 / 7 + 1);
    let check = fx.ok(&["-o", "json", "repo", "check", "--read-data"]);
    assert_eq!(check["errors"], serde_json::json!([]));
}

#[test]
fn a_missing_or_wrong_password_is_a_clear_error() {
    let fx = Fixture::new();
    fx.init();
    let output = fx
        .ferry()
        .env_remove("FERRY_PASSWORD")
        .args(["repo", "snapshots"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FERRY_PASSWORD") && stderr.contains("--password-file"),
        "{stderr}"
    );

    let output = fx
        .ferry()
        .env("FERRY_PASSWORD", "wrong")
        .args(["repo", "snapshots"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("wrong password"));

    let password_file = fx.path("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let output = fx
        .ferry()
        .env_remove("FERRY_PASSWORD")
        .args([
            "repo",
            "snapshots",
            "--password-file",
            password_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = fx
        .ferry()
        .env("FERRY_REPO", fx.path("nothing-here"))
        .args(["repo", "snapshots"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("ferry repo init"));
}

#[test]
fn key_commands_manage_passwords() {
    let fx = Fixture::new();
    fx.init();
    fx.ferry()
        .env("FERRY_NEW_PASSWORD", "another")
        .args(["repo", "key", "add"])
        .status()
        .unwrap()
        .success()
        .then_some(())
        .unwrap();
    let keys = fx.ok(&["-o", "json", "repo", "key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let output = fx
        .ferry()
        .env("FERRY_PASSWORD", "another")
        .env("FERRY_NEW_PASSWORD", "third")
        .args(["repo", "key", "passwd"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !fx.ferry()
            .env("FERRY_PASSWORD", "another")
            .args(["repo", "snapshots"])
            .output()
            .unwrap()
            .status
            .success()
    );
    assert!(
        fx.ferry()
            .env("FERRY_PASSWORD", "third")
            .args(["repo", "snapshots"])
            .output()
            .unwrap()
            .status
            .success()
    );
}

/// SIGKILL at random moments of a backup; every time, `check` must be clean and the next
/// backup must succeed and restore exactly.
#[test]
fn sigkill_during_backup_leaves_the_repository_consistent() {
    let fx = Fixture::new();
    fx.init();
    let source = fx.path("source");
    fill(&source, 40, 200_000, 7);
    let mut seed = 0x5eed_u64;
    for round in 0..5u64 {
        fill(
            &source.join(format!("round{round}")),
            5,
            300_000,
            100 * round,
        );
        let mut child = fx
            .ferry()
            .args(["-o", "json", "volume", "backup", source.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 400));
        // std sends SIGKILL.
        let _ = child.kill();
        let _ = child.wait();
        let check = fx.run(&["-o", "json", "repo", "check", "--read-data"]);
        assert!(
            check.status.success(),
            "round {round}: check failed: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    fx.ok(&["-o", "json", "volume", "backup", source.to_str().unwrap()]);
    let target = fx.path("target");
    fx.ok(&[
        "-o",
        "json",
        "volume",
        "restore",
        "latest",
        target.to_str().unwrap(),
    ]);
    same_files(&source, &target);
    let check = fx.ok(&["-o", "json", "repo", "check", "--read-data"]);
    assert_eq!(check["errors"], serde_json::json!([]));
}

#[test]
fn forget_and_prune_through_the_cli() {
    let fx = Fixture::new();
    fx.init();
    let source = fx.path("source");
    for round in 0..3u64 {
        fill(&source, 5, 100_000, round * 10);
        fx.ok(&["-o", "json", "volume", "backup", source.to_str().unwrap()]);
    }
    let result = fx.ok(&[
        "-o",
        "json",
        "repo",
        "forget",
        "--keep-last",
        "1",
        "--prune",
    ]);
    assert_eq!(result["removed"].as_array().unwrap().len(), 2);
    assert!(result["prune"]["blobs_removed"].as_u64().unwrap() > 0);
    let target = fx.path("target");
    fx.ok(&[
        "-o",
        "json",
        "volume",
        "restore",
        "latest",
        target.to_str().unwrap(),
    ]);
    same_files(&source, &target);
}

/// A restored pod's init container: holds until every volume has the restore's marker.
#[test]
fn restore_wait_holds_until_every_volume_is_marked() {
    let volumes = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut wait = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["restore-wait", "--marker", "r1.done", "--interval-ms", "50"])
        .args(volumes.iter().map(|v| v.path()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mark = |volume: &tempfile::TempDir| {
        std::fs::create_dir_all(volume.path().join(".ferry")).unwrap();
        std::fs::write(volume.path().join(".ferry/r1.done"), b"restored\n").unwrap();
    };
    mark(&volumes[0]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        wait.try_wait().unwrap().is_none(),
        "it started the pod with a volume still empty"
    );
    mark(&volumes[1]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = wait.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "it kept waiting after every volume was marked"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}
