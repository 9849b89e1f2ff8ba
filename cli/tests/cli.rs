//! The `ferry` binary end to end: the contract the benchmark harness relies on, exit codes and
//! errors, and crash consistency under SIGKILL.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Fixture, PASSWORD, fill, same_files};

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

/// `ferry <args> --help`'s text.
fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .arg("--help")
        .env_remove("FERRY_REPO")
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?} --help");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn help_lists_a_commands_own_options_first_and_repository_options_only_where_they_apply() {
    for cluster_command in [
        &["backup", "create"][..],
        &["restore", "create"],
        &["location", "create"],
    ] {
        let text = help(cluster_command);
        for repository_flag in [
            "--repo ",
            "--s3-endpoint",
            "--password-file",
            "--retry-lock",
        ] {
            assert!(
                !text.contains(repository_flag),
                "`ferry {}` offers {repository_flag}:\n{text}",
                cluster_command.join(" ")
            );
        }
        let own = text.find("Options:").expect("the command's own options");
        let global = text
            .find("Global options:")
            .expect("a Global options heading");
        assert!(own < global, "{text}");
        assert!(text.contains("--kubeconfig") && text.contains("--context"));
    }
    for data_mover_command in [
        &["volume", "backup"][..],
        &["repo", "init"],
        &["repo", "prune"],
    ] {
        let text = help(data_mover_command);
        let own = text.find("Options:").expect("the command's own options");
        let repository = text
            .find("Repository options:")
            .expect("a Repository options heading");
        let global = text
            .find("Global options:")
            .expect("a Global options heading");
        assert!(own < repository && repository < global, "{text}");
        assert!(text[repository..global].contains("--repo "), "{text}");
        assert!(
            text[repository..global].contains("--password-file"),
            "{text}"
        );
    }
}

/// `repo check`, `volume backup` and `volume restore` wait for a conflicting lock (a prune's, a
/// maintenance Job's) as long as `--retry-lock` allows; without it, they name the lock at once.
/// (Backup and restore took no lock wait at all before: the node agent's tasks failed on a
/// maintenance Job's lock.)
#[test]
fn commands_wait_for_an_exclusive_lock_as_long_as_retry_lock_allows() {
    let fx = Fixture::new();
    fx.init();
    let source = fx.path("source");
    fill(&source, 3, 1000, 7);
    let source = source.to_str().unwrap().to_owned();
    let first = fx.ok(&["-o", "json", "volume", "backup", &source]);
    let first = first["snapshot_id"].as_str().unwrap().to_owned();
    let target = fx.path("target");
    let target = target.to_str().unwrap().to_owned();
    let backend = ferry_mover::open_backend(&fx.repo_url(), &Default::default()).unwrap();
    let repo = std::sync::Arc::new(
        ferry_mover::Repository::open_without_index(backend, PASSWORD.as_bytes()).unwrap(),
    );
    let commands: [&[&str]; 5] = [
        &["repo", "check"],
        &["volume", "backup", &source],
        &["volume", "restore", "latest", &target],
        &["repo", "forget", "--keep-last", "5"],
        &["repo", "forget", &first],
    ];
    for command in commands {
        let lock = ferry_mover::lock::RepoLock::acquire(&repo, true, Duration::ZERO).unwrap();
        let refused = fx.run(command);
        assert!(
            !refused.status.success(),
            "{command:?} ran under an exclusive lock"
        );
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("exclusive lock"), "{command:?}: {stderr}");

        let mut waiting = fx
            .ferry()
            .args(command)
            .args(["--retry-lock", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            waiting.try_wait().unwrap().is_none(),
            "{command:?} --retry-lock 60 gave up within 2 s"
        );
        drop(lock);
        let output = waiting.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{command:?} failed once the lock was gone: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
