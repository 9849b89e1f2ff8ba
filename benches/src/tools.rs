//! The three tools under test, each driven through its command line with its default settings,
//! its own private home, cache and config directories under the work directory (so no tool sees
//! a cache another run left behind), and its repository on the local file system.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::measure::{self, Measured};

pub const PASSWORD: &str = "ferry-bench-password";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ferry,
    Restic,
    Kopia,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ferry => "ferry",
            Kind::Restic => "restic",
            Kind::Kopia => "kopia",
        }
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
            Kind::Restic => out(Command::new(&bin).arg("version"))?,
            Kind::Kopia => out(Command::new(&bin).arg("--version"))?,
            Kind::Ferry => out(Command::new(&bin).arg("--version"))?,
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
            Kind::Restic => {
                c.env("RESTIC_PASSWORD", PASSWORD)
                    .env("RESTIC_REPOSITORY", self.repo());
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
            Kind::Restic => c.arg("init"),
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
            Kind::Restic => {
                c.current_dir(source).args(["backup", "--json", "."]);
            }
            Kind::Kopia => {
                c.args(["snapshot", "create", "--json"]).arg(source);
            }
        }
        let measured = measure::run(&mut c)?;
        let (snapshot, reported_added) = match self.kind {
            Kind::Ferry => {
                let v = last_json(&measured.stdout)?;
                let id = v["snapshot_id"]
                    .as_str()
                    .context("ferry printed no snapshot_id")?
                    .to_string();
                (id, v["summary"]["bytes_added"].as_u64())
            }
            Kind::Restic => {
                let v = measured
                    .stdout
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|v| v["message_type"] == "summary")
                    .context("restic printed no summary")?;
                let id = v["snapshot_id"]
                    .as_str()
                    .context("restic summary has no snapshot_id")?
                    .to_string();
                (id, v["data_added"].as_u64())
            }
            Kind::Kopia => {
                let v = last_json(&measured.stdout)?;
                let id = v["id"]
                    .as_str()
                    .context("kopia printed no snapshot id")?
                    .to_string();
                (id, None)
            }
        };
        Ok(Backup {
            measured,
            snapshot,
            reported_added,
        })
    }

    /// Restores `snapshot` into `target`. `into_existing` is the restore into a drifted copy:
    /// Ferry is asked for its incremental restore (reuse what the target has, delete what the
    /// snapshot lacks); restic 0.14 and kopia have no such mode and restore as they always do.
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
            Kind::Kopia => {
                c.args(["snapshot", "restore", snapshot]).arg(target);
            }
        }
        let measured = measure::run(&mut c)?;
        let (downloaded, reused) = match self.kind {
            Kind::Ferry => {
                let v = last_json(&measured.stdout)?;
                if let Some(errors) = v.get("errors")
                    && errors
                        .as_u64()
                        .map(|n| n > 0)
                        .unwrap_or(errors.as_array().map(|a| !a.is_empty()).unwrap_or(false))
                {
                    bail!("ferry restore reported errors: {errors}");
                }
                (v["bytes_downloaded"].as_u64(), v["bytes_reused"].as_u64())
            }
            _ => (None, None),
        };
        Ok(Restore {
            measured,
            downloaded,
            reused,
        })
    }
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
}
