//! Results of a comparison run: the per-phase table, the Ferry/peer ratios and the targets.

use std::fmt::Write as _;
use std::time::Duration;

use comfy_table::{Table, presets};

use crate::measure::Measured;
use crate::tools::Kind;
use crate::units::{fmt_bytes, mib, secs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    FullBackup,
    NoopBackup,
    FullRestore,
    MutationBackup,
    DriftRestore,
    SmallBackup,
    SmallRestore,
    BigBackup,
    BigRestore,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::FullBackup,
        Phase::NoopBackup,
        Phase::FullRestore,
        Phase::MutationBackup,
        Phase::DriftRestore,
        Phase::SmallBackup,
        Phase::SmallRestore,
        Phase::BigBackup,
        Phase::BigRestore,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::FullBackup => "full backup",
            Phase::NoopBackup => "no-op backup",
            Phase::FullRestore => "full restore",
            Phase::MutationBackup => "backup after 1% mutation",
            Phase::DriftRestore => "restore into drifted copy",
            Phase::SmallBackup => "backup small files only",
            Phase::SmallRestore => "restore small files only",
            Phase::BigBackup => "backup one big file",
            Phase::BigRestore => "restore one big file",
        }
    }

    pub fn is_backup(self) -> bool {
        matches!(
            self,
            Phase::FullBackup
                | Phase::NoopBackup
                | Phase::MutationBackup
                | Phase::SmallBackup
                | Phase::BigBackup
        )
    }
}

/// One tool in one phase.
#[derive(Debug, Clone)]
pub struct Row {
    pub phase: Phase,
    pub tool: Kind,
    pub measured: Measured,
    /// Logical bytes the phase processed (source size for a backup, snapshot size for a restore).
    pub data_bytes: u64,
    /// Repository size (apparent bytes of all its files) after the phase.
    pub repo_after: u64,
    /// Change of repository size during the phase: bytes uploaded, for a local repository.
    pub repo_delta: i64,
    /// Ferry's own count of bytes downloaded and reused (restores only).
    pub downloaded: Option<u64>,
    pub reused: Option<u64>,
    /// The tool's own count of bytes added (backups; Ferry's `bytes_added`, restic's `data_added`).
    pub reported_added: Option<u64>,
    /// Comparison of the restored tree with the source (restores only).
    pub verify: Option<String>,
}

impl Row {
    pub fn throughput_mib_s(&self) -> f64 {
        mib(self.data_bytes) / secs(self.measured.wall).max(1e-9)
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// The stored size of the chunks that truly differ between the drifted copy and the snapshot
    /// restored into it, and how it was obtained.
    pub differing: Option<(u64, String)>,
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}
fn f2(x: f64) -> String {
    format!("{x:.2}")
}
fn opt_mib(x: Option<u64>) -> String {
    x.map(|b| f1(mib(b))).unwrap_or_else(|| "-".into())
}

impl Report {
    pub fn get(&self, phase: Phase, tool: Kind) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.phase == phase && r.tool == tool)
    }

    fn tools(&self) -> Vec<Kind> {
        let mut v = Vec::new();
        for r in &self.rows {
            if !v.contains(&r.tool) {
                v.push(r.tool);
            }
        }
        v
    }

    pub fn metrics_table(&self) -> Table {
        let mut t = Table::new();
        t.load_style(presets::ASCII_MARKDOWN).set_header(vec![
            "phase",
            "tool",
            "wall s",
            "CPU s (user+sys)",
            "peak RSS MiB",
            "MiB/s",
            "repo MiB",
            "Δ repo MiB (uploaded)",
            "read MiB (rchar)",
            "downloaded MiB (reported)",
            "restored tree",
        ]);
        for phase in Phase::ALL {
            for tool in self.tools() {
                if let Some(r) = self.get(phase, tool) {
                    let m = &r.measured;
                    t.add_row(vec![
                        phase.name().to_string(),
                        tool.name().to_string(),
                        f2(secs(m.wall)),
                        f2(secs(m.cpu())),
                        f1(mib(m.max_rss)),
                        f1(r.throughput_mib_s()),
                        f1(mib(r.repo_after)),
                        f2(r.repo_delta as f64 / (1 << 20) as f64),
                        f1(mib(m.rchar)),
                        opt_mib(r.downloaded),
                        r.verify.clone().unwrap_or_else(|| "-".into()),
                    ]);
                }
            }
        }
        t
    }

    /// Ferry's figure divided by the peer's, per phase: below 1 means Ferry is faster, smaller or
    /// leaner.
    pub fn ratio_table(&self) -> Option<Table> {
        let peers: Vec<Kind> = self
            .tools()
            .into_iter()
            .filter(|&k| k != Kind::Ferry)
            .collect();
        if !self.tools().contains(&Kind::Ferry) || peers.is_empty() {
            return None;
        }
        let mut header = vec!["phase".to_string()];
        for metric in ["wall", "CPU", "peak RSS", "repo size", "Δ repo"] {
            for p in &peers {
                header.push(format!("{metric} ferry/{}", p.name()));
            }
        }
        let mut t = Table::new();
        t.load_style(presets::ASCII_MARKDOWN).set_header(header);
        for phase in Phase::ALL {
            let Some(f) = self.get(phase, Kind::Ferry) else {
                continue;
            };
            let mut row = vec![phase.name().to_string()];
            let ratio = |a: f64, b: f64| if b > 0.0 { f2(a / b) } else { "-".into() };
            type Metric = fn(&Row) -> f64;
            let metrics: [Metric; 5] = [
                |r| secs(r.measured.wall),
                |r| secs(r.measured.cpu()),
                |r| r.measured.max_rss as f64,
                |r| r.repo_after as f64,
                |r| r.repo_delta as f64,
            ];
            for metric in metrics {
                for &p in &peers {
                    row.push(match self.get(phase, p) {
                        Some(pr) => ratio(metric(f), metric(pr)),
                        None => "-".into(),
                    });
                }
            }
            t.add_row(row);
        }
        Some(t)
    }

    /// One line per target: PASS, MISS (with the figure) or N/A (with why).
    pub fn targets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let f = |p| self.get(p, Kind::Ferry);
        let r = |p| self.get(p, Kind::Restic);
        let k = |p| self.get(p, Kind::Kopia);
        let mut line = |ok: Option<bool>, what: &str, detail: String| {
            let tag = match ok {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "N/A ",
            };
            out.push(format!("{tag} {what}: {detail}"));
        };
        let wall = |row: &Row| secs(row.measured.wall);

        // Full backup.
        match (f(Phase::FullBackup), r(Phase::FullBackup)) {
            (Some(f), Some(r)) => line(
                Some(wall(f) * 3.0 <= wall(r)),
                "full backup throughput >= 3x restic",
                format!(
                    "ferry {:.1} MiB/s, restic {:.1} MiB/s: {:.2}x",
                    f.throughput_mib_s(),
                    r.throughput_mib_s(),
                    wall(r) / wall(f)
                ),
            ),
            _ => line(
                None,
                "full backup throughput >= 3x restic",
                "not measured".into(),
            ),
        }
        match (f(Phase::FullBackup), k(Phase::FullBackup)) {
            (Some(f), Some(k)) => line(
                Some(wall(f) * 2.0 <= wall(k)),
                "full backup throughput >= 2x kopia",
                format!(
                    "ferry {:.1} MiB/s, kopia {:.1} MiB/s: {:.2}x",
                    f.throughput_mib_s(),
                    k.throughput_mib_s(),
                    wall(k) / wall(f)
                ),
            ),
            _ => line(
                None,
                "full backup throughput >= 2x kopia",
                "not measured".into(),
            ),
        }
        if let Some(fb) = f(Phase::FullBackup) {
            let peers: Vec<&Row> = [r(Phase::FullBackup), k(Phase::FullBackup)]
                .into_iter()
                .flatten()
                .collect();
            if peers.is_empty() {
                line(
                    None,
                    "repository no larger than the peers'",
                    "no peer measured".into(),
                );
                line(
                    None,
                    "peak RSS at most half of either peer's",
                    "no peer measured".into(),
                );
            } else {
                let detail = |get: fn(&Row) -> u64| {
                    let mut s = format!("ferry {}", fmt_bytes(get(fb)));
                    for p in &peers {
                        let _ = write!(s, ", {} {}", p.tool.name(), fmt_bytes(get(p)));
                    }
                    s
                };
                line(
                    Some(peers.iter().all(|p| fb.repo_after <= p.repo_after)),
                    "full backup repository no larger than the peers'",
                    detail(|r| r.repo_after),
                );
                line(
                    Some(
                        peers
                            .iter()
                            .all(|p| fb.measured.max_rss * 2 <= p.measured.max_rss),
                    ),
                    "full backup peak RSS at most half of either peer's",
                    detail(|r| r.measured.max_rss),
                );
            }
        }
        // No-op backup.
        match (f(Phase::NoopBackup), r(Phase::NoopBackup)) {
            (Some(f), Some(r)) => line(
                Some(wall(f) * 4.0 <= wall(r)),
                "no-op backup >= 4x faster than restic",
                format!(
                    "ferry {:.2} s, restic {:.2} s: {:.2}x",
                    wall(f),
                    wall(r),
                    wall(r) / wall(f)
                ),
            ),
            _ => line(
                None,
                "no-op backup >= 4x faster than restic",
                "not measured".into(),
            ),
        }
        // Mutation.
        match (f(Phase::MutationBackup), r(Phase::MutationBackup)) {
            (Some(f), Some(r)) => line(
                Some(f.repo_delta * 2 <= r.repo_delta),
                "bytes added after the 1% mutation <= half of restic's",
                format!(
                    "ferry {}, restic {}: {:.2} of restic's",
                    fmt_bytes(f.repo_delta.max(0) as u64),
                    fmt_bytes(r.repo_delta.max(0) as u64),
                    f.repo_delta as f64 / r.repo_delta.max(1) as f64
                ),
            ),
            _ => line(
                None,
                "bytes added after the 1% mutation <= half of restic's",
                "not measured".into(),
            ),
        }
        // Restore.
        match (f(Phase::FullRestore), r(Phase::FullRestore)) {
            (Some(f), Some(r)) => line(
                Some(wall(f) * 2.0 <= wall(r)),
                "full restore throughput >= 2x restic",
                format!(
                    "ferry {:.1} MiB/s, restic {:.1} MiB/s: {:.2}x",
                    f.throughput_mib_s(),
                    r.throughput_mib_s(),
                    wall(r) / wall(f)
                ),
            ),
            _ => line(
                None,
                "full restore throughput >= 2x restic",
                "not measured".into(),
            ),
        }
        match (f(Phase::BigRestore), f(Phase::SmallRestore)) {
            (Some(b), Some(s)) => line(
                Some(b.throughput_mib_s() >= s.throughput_mib_s()),
                "one big file restores at least as fast per byte as many small files",
                format!(
                    "big file ({}) {:.1} MiB/s, small files ({}) {:.1} MiB/s",
                    fmt_bytes(b.data_bytes),
                    b.throughput_mib_s(),
                    fmt_bytes(s.data_bytes),
                    s.throughput_mib_s()
                ),
            ),
            _ => line(
                None,
                "one big file restores at least as fast per byte as many small files",
                "not measured (run with --big-file 4GiB)".into(),
            ),
        }
        // Drifted restore.
        match (f(Phase::DriftRestore), f(Phase::FullRestore)) {
            (Some(d), Some(_)) if d.verify.as_deref().is_some_and(|v| v.starts_with("WRONG")) => {
                line(
                    Some(false),
                    "restore into drifted copy",
                    format!(
                        "the restored tree is wrong ({}); its figures do not count",
                        d.verify.as_deref().unwrap_or("")
                    ),
                )
            }
            (Some(d), Some(full)) => {
                match (d.downloaded, &self.differing) {
                    (Some(down), Some((bound, how))) => line(
                        Some(down <= *bound),
                        "restore into drifted copy downloads only truly differing chunks",
                        format!(
                            "downloaded {} ({} B), bound {} ({} B; {how})",
                            fmt_bytes(down),
                            down,
                            fmt_bytes(*bound),
                            bound
                        ),
                    ),
                    (None, _) => line(
                        Some(false),
                        "restore into drifted copy downloads only truly differing chunks",
                        "ferry reported no bytes_downloaded".into(),
                    ),
                    (_, None) => line(
                        None,
                        "restore into drifted copy downloads only truly differing chunks",
                        "no bound computed".into(),
                    ),
                }
                line(
                    Some(wall(d) * 4.0 <= wall(full)),
                    "restore into drifted copy <= 25% of a full restore's time",
                    format!(
                        "{:.2} s vs {:.2} s: {:.0}%",
                        wall(d),
                        wall(full),
                        100.0 * wall(d) / wall(full)
                    ),
                );
            }
            _ => line(None, "restore into drifted copy", "not measured".into()),
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "phase": r.phase.name(),
                    "tool": r.tool.name(),
                    "wall_s": secs(r.measured.wall),
                    "user_s": secs(r.measured.user),
                    "sys_s": secs(r.measured.sys),
                    "max_rss_bytes": r.measured.max_rss,
                    "data_bytes": r.data_bytes,
                    "repo_after_bytes": r.repo_after,
                    "repo_delta_bytes": r.repo_delta,
                    "rchar": r.measured.rchar,
                    "wchar": r.measured.wchar,
                    "read_bytes": r.measured.read_bytes,
                    "write_bytes": r.measured.write_bytes,
                    "downloaded_bytes": r.downloaded,
                    "reused_bytes": r.reused,
                    "reported_added_bytes": r.reported_added,
                    "verify": r.verify,
                })
            })
            .collect();
        serde_json::json!({
            "rows": rows,
            "notes": self.notes,
            "differing_chunks_stored_bytes": self.differing.as_ref().map(|d| d.0),
            "differing_chunks_method": self.differing.as_ref().map(|d| d.1.clone()),
            "targets": self.targets(),
        })
    }
}

pub fn dur(d: Duration) -> String {
    format!("{:.2} s", secs(d))
}
