//! An in-place restore stays on its target's filesystem (issue 12, item 10): a filesystem mounted
//! inside the target (another volume, a host path) is neither scanned, nor written into, nor
//! emptied by `--delete`. Needs root (it mounts a tmpfs).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use ferry_mover::RestoreOptions;

struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(at: &Path) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(at)
            .status()
            .expect("mount could not run; this test needs root and util-linux");
        assert!(
            status.success(),
            "mounting a tmpfs failed; this test needs root"
        );
        Mount(at.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn an_in_place_restore_never_crosses_into_a_nested_mount() {
    let (backend, _store) = local_backend();
    let repo = init(backend);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    write(&source.join("data/a"), &noise(1, 100_000));
    write(&source.join("inner/from-snapshot"), b"the snapshot's");
    let snapshot = ferry_mover::backup(&repo, &source, &Default::default())
        .unwrap()
        .snapshot_id
        .to_hex();

    let target = work.path().join("target");
    write(&target.join("data/a"), b"old");
    write(&target.join("stray"), b"not in the snapshot");
    // Another filesystem where the snapshot has nothing, and one where it has a directory.
    let other = Mount::tmpfs(&target.join("other"));
    write(&other.0.join("precious"), b"another volume's data");
    let inner = Mount::tmpfs(&target.join("inner"));
    write(&inner.0.join("precious"), b"a host path's data");

    let summary = ferry_mover::restore(
        &repo,
        &snapshot,
        &target,
        &RestoreOptions {
            incremental: true,
            delete: true,
            ..Default::default()
        },
    )
    .unwrap();

    assert_eq!(
        std::fs::read(target.join("data/a")).unwrap(),
        noise(1, 100_000)
    );
    assert!(
        !target.join("stray").exists(),
        "--delete kept what the snapshot lacks"
    );
    assert_eq!(
        std::fs::read(other.0.join("precious")).unwrap(),
        b"another volume's data",
        "--delete emptied a filesystem mounted in the target"
    );
    assert_eq!(
        std::fs::read(inner.0.join("precious")).unwrap(),
        b"a host path's data"
    );
    assert!(
        !inner.0.join("from-snapshot").exists(),
        "the restore wrote into a filesystem mounted in the target"
    );
    // What could not be done is reported, not hidden.
    assert!(summary.errors > 0, "{summary:?}");
}
