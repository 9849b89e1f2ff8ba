//! The tools under test (Ferry and its peers: restic 0.14, the current restic 0.18, kopia and
//! rustic), each driven through its command line with its default settings, its own private home,
//! cache and config directories under the work directory (so no tool sees a cache another run
//! left behind), and its repository on the local file system.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::measure::{self, Measured};

pub const PASSWORD: &str = "ferry-bench-password";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ferry,
    /// restic as Debian packages it (0.14 on bookworm): the baseline of Ferry's older targets.
    Restic,
    /// The current restic (0.18), built from its Go module.
    Restic018,
    Kopia,
    /// rustic, restic's repository format reimplemented in Rust, from crates.io.
    Rustic,
}

impl Kind {
    /// Every tool, in the order of the harness's tables.
    pub const ALL: [Kind; 5] = [
        Kind::Ferry,
        Kind::Restic,
        Kind::Restic018,
        Kind::Kopia,
        Kind::Rustic,
    ];

    /// The name on the command line (`compare --tools`, `benches/tools/install`) and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ferry => "ferry",
            Kind::Restic => "restic",
            Kind::Restic018 => "restic-0.18",
            Kind::Kopia => "kopia",
            Kind::Rustic => "rustic",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

#[derive(Debug, Clone)]
pub struct Tool {
    pub kind: Kind,
    pub bin: PathBuf,
    /// The tool's private directory: HOME, caches, config, logs, and `repo/`.
    pub dir: PathBuf,
    pub version: String,
    /// Extra arguments for `ferry repo init` (a chunk-size sweep; empty for the comparison, which
    /// uses every tool's defaults).
    pub init_args: Vec<String>,
}

/// The result of one backup.
#[derive(Debug, Clone)]
pub struct Backup {
    pub measured: Measured,
    pub snapshot: String,
    /// What the tool itself says it added to the repository, if it says.
    pub reported_added: Option<u64>,
}

/// The result of one restore.
#[derive(Debug, Clone)]
pub struct Restore {
    pub measured: Measured,
    /// Ferry's own `bytes_downloaded` / `bytes_reused` (peers do not report them).
    pub downloaded: Option<u64>,
    pub reused: Option<u64>,
}

impl Tool {
    pub fn new(kind: Kind, bin: PathBuf, work: &Path) -> anyhow::Result<Self> {
        let dir = work.join("tools").join(kind.name());
        let version = match kind {
            Kind::Restic | Kind::Restic018 => out(Command::new(&bin).arg("version"))?,
            Kind::Ferry | Kind::Kopia | Kind::Rustic => out(Command::new(&bin).arg("--version"))?,
        };
        let version = version.lines().next().unwrap_or("").trim().to_string();
        Ok(Tool {
            kind,
            bin,
            dir,
            version,
            init_args: Vec::new(),
        })
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        let home = self.dir.join("home");
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("TMPDIR", home.join("tmp"));
        match self.kind {
            Kind::Ferry => {
                c.env("FERRY_PASSWORD", PASSWORD);
                if let Ok(v) = std::env::var("RUST_LOG") {
                    c.env("RUST_LOG", v);
                }
            }
            Kind::Restic | Kind::Restic018 => {
                c.env("RESTIC_PASSWORD", PASSWORD)
                    .env("RESTIC_REPOSITORY", self.repo());
            }
            Kind::Rustic => {
                // rustic also reads ./rustic.toml: run it where there is none (a backup runs in
                // its source instead).
                c.env("RUSTIC_PASSWORD", PASSWORD)
                    .env("RUSTIC_REPOSITORY", self.repo())
                    .current_dir(&self.dir);
            }
            Kind::Kopia => {
                c.env("KOPIA_PASSWORD", PASSWORD)
                    .env("KOPIA_CONFIG_PATH", home.join("kopia.config"))
                    .env("KOPIA_LOG_DIR", home.join("logs"))
                    .env("KOPIA_CHECK_FOR_UPDATES", "false");
            }
        }
        c
    }

    /// Creates a fresh repository (removing any previous one and the tool's caches).
    pub fn init(&self) -> anyhow::Result<Measured> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)?;
        }
        std::fs::create_dir_all(self.dir.join("home/tmp"))?;
        let repo = self.repo();
        let mut c = self.cmd();
        match self.kind {
            Kind::Ferry => c
                .args(["repo", "init", "--repo"])
                .arg(&repo)
                .args(&self.init_args),
            Kind::Restic | Kind::Restic018 | Kind::Rustic => c.arg("init"),
            Kind::Kopia => c
                .args(["repository", "create", "filesystem", "--path"])
                .arg(&repo),
        };
        measure::run(&mut c)
    }

    pub fn backup(&self, source: &Path) -> anyhow::Result<Backup> {
        let mut c = self.cmd();
        match self.kind {
            Kind::Ferry => {
                c.args(["volume", "backup"])
                    .arg(source)
                    .arg("--repo")
                    .arg(self.repo())
                    .args(["-o", "json"]);
            }
            // From inside the source, so that the snapshot's root is the source's content and a
            // restore writes it at the target's top level, like the others.
            Kind::Restic | Kind::Restic018 | Kind::Rustic => {
                c.current_dir(source).args(["backup", "--json", "."]);
            }
            Kind::Kopia => {
                c.args(["snapshot", "create", "--json"]).arg(source);
            }
        }
        let measured = measure::run(&mut c)?;
        let (snapshot, reported_added) = parse_backup(self.kind, &measured.stdout)?;
        Ok(Backup {
            measured,
            snapshot,
            reported_added,
        })
    }

    /// Restores `snapshot` into `target`. `into_existing` is the restore into a drifted copy, for
    /// which each tool is asked for its best incremental mode: Ferry for `--incremental --delete`
    /// (reuse what the target has, delete what the snapshot lacks); restic 0.18 for `--overwrite
    /// if-changed --delete` (a file whose size and mtime match is taken as it is, any other is
    /// read and only its differing parts restored; files the snapshot lacks are deleted); rustic
    /// for `--delete` (its restore always works that way: size and mtime trusted, other files
    /// read and patched). restic 0.14 and kopia have no such mode and restore as they always do
    /// (rewriting every file, deleting nothing).
    pub fn restore(
        &self,
        snapshot: &str,
        target: &Path,
        into_existing: bool,
    ) -> anyhow::Result<Restore> {
        let mut c = self.cmd();
        match self.kind {
            Kind::Ferry => {
                c.args(["volume", "restore", snapshot])
                    .arg(target)
                    .arg("--repo")
                    .arg(self.repo())
                    .args(["-o", "json"]);
                if into_existing {
                    c.args(["--incremental", "--delete"]);
                }
            }
            Kind::Restic => {
                c.args(["restore", snapshot, "--target"]).arg(target);
            }
            Kind::Restic018 => {
                c.args(["restore", snapshot, "--target"]).arg(target);
                if into_existing {
                    c.args(["--overwrite", "if-changed", "--delete"]);
                }
            }
            Kind::Rustic => {
                c.args(["restore", snapshot]).arg(target);
                if into_existing {
                    c.arg("--delete");
                }
            }
            Kind::Kopia => {
                c.args(["snapshot", "restore", snapshot]).arg(target);
            }
        }
        let measured = measure::run(&mut c)?;
        let (downloaded, reused) = match self.kind {
            Kind::Ferry => parse_ferry_restore(&measured.stdout)?,
            _ => (None, None),
        };
        Ok(Restore {
            measured,
            downloaded,
            reused,
        })
    }
}

/// The snapshot id and the bytes added (if the tool says) from what a backup printed with its JSON
/// option: Ferry's one object; restic's JSON lines, of which the `summary` counts (`data_added`,
/// the bytes of new blobs before compression, in both 0.14 and 0.18); kopia's snapshot manifest
/// (no count of bytes added); rustic's snapshot, pretty-printed, whose `summary` has the same
/// `data_added` as restic's.
pub fn parse_backup(kind: Kind, stdout: &str) -> anyhow::Result<(String, Option<u64>)> {
    let name = kind.name();
    let v = match kind {
        Kind::Restic | Kind::Restic018 => stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message_type"] == "summary")
            .with_context(|| format!("{name} printed no summary"))?,
        Kind::Ferry | Kind::Kopia | Kind::Rustic => last_json(stdout)?,
    };
    let id_field = match kind {
        Kind::Ferry | Kind::Restic | Kind::Restic018 => "snapshot_id",
        Kind::Kopia | Kind::Rustic => "id",
    };
    let id = v[id_field]
        .as_str()
        .filter(|s| !s.is_empty())
        .with_context(|| format!("{name} printed no snapshot id ({id_field})"))?
        .to_string();
    let added = match kind {
        Kind::Ferry => v["summary"]["bytes_added"].as_u64(),
        Kind::Restic | Kind::Restic018 => v["data_added"].as_u64(),
        Kind::Rustic => v["summary"]["data_added"].as_u64(),
        Kind::Kopia => None,
    };
    Ok((id, added))
}

/// Ferry's `bytes_downloaded` and `bytes_reused` from `ferry volume restore -o json`; an error if
/// it reported errors.
fn parse_ferry_restore(stdout: &str) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let v = last_json(stdout)?;
    if let Some(errors) = v.get("errors")
        && errors
            .as_u64()
            .map(|n| n > 0)
            .unwrap_or(errors.as_array().map(|a| !a.is_empty()).unwrap_or(false))
    {
        bail!("ferry restore reported errors: {errors}");
    }
    Ok((v["bytes_downloaded"].as_u64(), v["bytes_reused"].as_u64()))
}

/// The last JSON object a command printed (tools may print other lines before it, or pretty-print
/// it over several lines).
fn last_json(stdout: &str) -> anyhow::Result<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(stdout.trim()) {
        return Ok(v);
    }
    // Scanning back from the end, the first `{` from which the rest parses as one object starts
    // the last top-level object (an inner `{` leaves its parent's closing braces as trailing junk).
    for (i, _) in stdout
        .match_indices('{')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        if let Ok(v) = serde_json::from_str::<Value>(stdout[i..].trim())
            && v.is_object()
        {
            return Ok(v);
        }
    }
    bail!(
        "no JSON object in output: {}",
        &stdout[..stdout.len().min(500)]
    )
}

fn out(c: &mut Command) -> anyhow::Result<String> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs `benches/tools/install` for the peers and returns their binaries.
pub fn install_peers(peers: &[Kind]) -> anyhow::Result<Vec<(Kind, PathBuf)>> {
    if peers.is_empty() {
        return Ok(Vec::new());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/install");
    let names: Vec<&str> = peers.iter().map(|k| k.name()).collect();
    let o = Command::new(&script)
        .args(&names)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !o.status.success() {
        bail!("{} failed", script.display());
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    peers
        .iter()
        .map(|&k| {
            let path = stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{}=", k.name())))
                .with_context(|| format!("install printed no path for {}", k.name()))?;
            Ok((k, PathBuf::from(path)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_last_json() {
        let v = last_json("progress...\n{\"a\": {\"b\": 1}, \"c\": 2}\n").unwrap();
        assert_eq!(v["c"], 2);
        let v = last_json("{\n  \"snapshot_id\": \"x\",\n  \"summary\": {\"bytes_added\": 5}\n}\n")
            .unwrap();
        assert_eq!(v["summary"]["bytes_added"], 5);
    }

    // The fixtures are what the peers printed for a backup of the same two files (6 B and
    // 100,000 random bytes) into a fresh repository: benches/fixtures/, captured from the binaries
    // that benches/tools/install built.

    #[test]
    fn parses_restic_0_14_backup() {
        let out = include_str!("../fixtures/restic-0.14.0-backup.jsonl");
        let (id, added) = parse_backup(Kind::Restic, out).unwrap();
        assert_eq!(id, "ef489f4f");
        assert_eq!(added, Some(101_059));
    }

    #[test]
    fn parses_restic_0_18_backup() {
        let out = include_str!("../fixtures/restic-0.18.1-backup.jsonl");
        let (id, added) = parse_backup(Kind::Restic018, out).unwrap();
        assert_eq!(
            id,
            "c9790c392ccdaa67f86d6bb6a1e5292151ad7f9268062df6c475e8e93044e97c"
        );
        assert_eq!(added, Some(101_059));
    }

    #[test]
    fn parses_kopia_snapshot_create() {
        let out = include_str!("../fixtures/kopia-0.23.1-snapshot-create.json");
        let (id, added) = parse_backup(Kind::Kopia, out).unwrap();
        assert_eq!(id, "60987c4b93d27cfd1822ac298033df2b");
        assert_eq!(added, None);
    }

    #[test]
    fn parses_rustic_backup() {
        let out = include_str!("../fixtures/rustic-0.11.4-backup.json");
        let (id, added) = parse_backup(Kind::Rustic, out).unwrap();
        assert_eq!(
            id,
            "4405ceec6b59eaf3f1d1b1d35ef0b66459eeca40abffe1f088efbff0c347a67e"
        );
        assert_eq!(added, Some(101_050));
    }

    #[test]
    fn a_backup_without_summary_or_id_is_an_error() {
        // restic's progress lines alone (a backup cut short), and an object without an id.
        let progress = "{\"message_type\":\"status\",\"percent_done\":0}\n";
        assert!(parse_backup(Kind::Restic018, progress).is_err());
        assert!(parse_backup(Kind::Rustic, "{\"summary\": {\"data_added\": 1}}").is_err());
        assert!(parse_backup(Kind::Kopia, "{\"id\": \"\"}").is_err());
    }

    #[test]
    fn tool_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
        assert_eq!(Kind::from_name("restic-0.18"), Some(Kind::Restic018));
        assert_eq!(Kind::from_name("restic018"), None);
    }
}
