//! Results of a comparison run: the per-phase table, the Ferry/peer ratios (a column per peer) and
//! the targets.

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

    /// Ferry's figure divided by each peer's, a row per phase and figure and a column per peer:
    /// below 1 means Ferry is faster, smaller or leaner. A row with no ratio at all (a figure
    /// that is zero for every peer, such as the repository's growth during a restore) is left
    /// out.
    pub fn ratio_table(&self) -> Option<Table> {
        let tools = self.tools();
        let peers: Vec<Kind> = tools
            .iter()
            .copied()
            .filter(|&k| k != Kind::Ferry)
            .collect();
        if !tools.contains(&Kind::Ferry) || peers.is_empty() {
            return None;
        }
        let mut header = vec!["phase".to_string(), "figure".to_string()];
        header.extend(peers.iter().map(|p| format!("ferry/{}", p.name())));
        let mut t = Table::new();
        t.load_style(presets::ASCII_MARKDOWN).set_header(header);
        type Metric = fn(&Row) -> f64;
        let metrics: [(&str, Metric); 5] = [
            ("wall", |r| secs(r.measured.wall)),
            ("CPU", |r| secs(r.measured.cpu())),
            ("peak RSS", |r| r.measured.max_rss as f64),
            ("repo size", |r| r.repo_after as f64),
            ("Δ repo", |r| r.repo_delta as f64),
        ];
        for phase in Phase::ALL {
            let Some(f) = self.get(phase, Kind::Ferry) else {
                continue;
            };
            for (name, metric) in metrics {
                let cells: Vec<String> = peers
                    .iter()
                    .map(|&p| match self.get(phase, p) {
                        Some(pr) if metric(pr) > 0.0 => f2(metric(f) / metric(pr)),
                        _ => "-".into(),
                    })
                    .collect();
                if cells.iter().all(|c| c == "-") {
                    continue;
                }
                let mut row = vec![phase.name().to_string(), name.to_string()];
                row.extend(cells);
                t.add_row(row);
            }
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
        let full = |k| self.get(Phase::FullBackup, k);
        let slower = [Kind::Restic018, Kind::Rustic];
        let what = "full backup faster than restic-0.18 and rustic";
        match f(Phase::FullBackup) {
            Some(fb) => {
                let mut detail = format!("ferry {:.1} MiB/s", fb.throughput_mib_s());
                let mut ok = Some(true);
                for k in slower {
                    match full(k) {
                        Some(p) => {
                            let _ = write!(
                                detail,
                                ", {} {:.1} MiB/s: {:.2}x",
                                k.name(),
                                p.throughput_mib_s(),
                                wall(p) / wall(fb)
                            );
                            if wall(fb) >= wall(p) {
                                ok = Some(false);
                            }
                        }
                        None => {
                            let _ = write!(detail, ", {} not measured", k.name());
                            if ok == Some(true) {
                                ok = None;
                            }
                        }
                    }
                }
                line(ok, what, detail);
            }
            None => line(None, what, "not measured".into()),
        }
        if let Some(fb) = f(Phase::FullBackup) {
            // Every peer's figure is shown; the repository is judged against restic's (both
            // versions, whichever ran), as the target says, and the peak RSS against
            // every peer's.
            let peers: Vec<&Row> = Kind::ALL.into_iter().skip(1).filter_map(full).collect();
            let restics: Vec<&Row> = [Kind::Restic, Kind::Restic018]
                .into_iter()
                .filter_map(full)
                .collect();
            let detail = |get: fn(&Row) -> u64, judged: &[&Row], ok: fn(u64, u64) -> bool| {
                let mut s = format!("ferry {}", fmt_bytes(get(fb)));
                for p in &peers {
                    let _ = write!(s, ", {} {}", p.tool.name(), fmt_bytes(get(p)));
                }
                let missed: Vec<&str> = judged
                    .iter()
                    .filter(|p| !ok(get(fb), get(p)))
                    .map(|p| p.tool.name())
                    .collect();
                if !missed.is_empty() {
                    let _ = write!(s, "; missed against {}", missed.join(", "));
                }
                (judged.iter().all(|p| ok(get(fb), get(p))), s)
            };
            let what = "full backup repository no larger than restic's";
            if restics.is_empty() {
                line(None, what, "restic not measured".into());
            } else {
                let (pass, s) = detail(|r| r.repo_after, &restics, |f, p| f <= p);
                line(Some(pass), what, s);
            }
            let what = "full backup peak RSS at most half of every peer's";
            if peers.is_empty() {
                line(None, what, "no peer measured".into());
            } else {
                let (pass, s) = detail(|r| r.measured.max_rss, &peers, |f, p| f * 2 <= p);
                line(Some(pass), what, s);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(phase: Phase, tool: Kind, wall_s: f64, rss_mib: u64, repo_mib: u64) -> Row {
        Row {
            phase,
            tool,
            measured: Measured {
                wall: Duration::from_secs_f64(wall_s),
                user: Duration::from_secs_f64(wall_s),
                max_rss: rss_mib << 20,
                ..Measured::default()
            },
            data_bytes: 1 << 30,
            repo_after: repo_mib << 20,
            repo_delta: (repo_mib << 20) as i64,
            downloaded: None,
            reused: None,
            reported_added: None,
            verify: None,
        }
    }

    fn full_backups(ferry_wall: f64, peers: &[Kind]) -> Report {
        let mut report = Report::default();
        report
            .rows
            .push(row(Phase::FullBackup, Kind::Ferry, ferry_wall, 40, 1000));
        for &k in peers {
            report.rows.push(row(Phase::FullBackup, k, 10.0, 100, 990));
        }
        report
    }

    fn target<'a>(targets: &'a [String], what: &str) -> &'a str {
        targets
            .iter()
            .find(|t| t.contains(what))
            .unwrap_or_else(|| panic!("no target {what:?} in {targets:#?}"))
    }

    #[test]
    fn ratio_table_has_a_column_per_peer() {
        let peers = [Kind::Restic, Kind::Restic018, Kind::Kopia, Kind::Rustic];
        let report = full_backups(5.0, &peers);
        let table = report.ratio_table().unwrap().to_string();
        let header = table.lines().next().unwrap();
        for p in peers {
            assert!(header.contains(&format!("ferry/{} ", p.name())), "{header}");
        }
        // Wall time: 5 s against every peer's 10 s.
        let wall = table
            .lines()
            .find(|l| l.contains("full backup") && l.contains("wall"))
            .unwrap();
        assert_eq!(wall.matches("0.50").count(), 4, "{wall}");
        assert!(full_backups(5.0, &[]).ratio_table().is_none());
    }

    #[test]
    fn full_backup_must_beat_restic_0_18_and_rustic() {
        let what = "full backup faster than restic-0.18 and rustic";
        let all = [Kind::Restic, Kind::Restic018, Kind::Kopia, Kind::Rustic];
        let targets = full_backups(5.0, &all).targets();
        assert!(target(&targets, what).starts_with("PASS"), "{targets:#?}");
        let targets = full_backups(12.0, &all).targets();
        assert!(target(&targets, what).starts_with("MISS"), "{targets:#?}");
        // One of the two not measured: not a pass, but a known miss stays a miss.
        let targets = full_backups(5.0, &[Kind::Restic018]).targets();
        assert!(target(&targets, what).starts_with("N/A"), "{targets:#?}");
        assert!(target(&targets, what).contains("rustic not measured"));
        let targets = full_backups(12.0, &[Kind::Rustic]).targets();
        assert!(target(&targets, what).starts_with("MISS"), "{targets:#?}");
    }

    #[test]
    fn repository_is_judged_against_restic_and_rss_against_every_peer() {
        let all = [Kind::Restic, Kind::Restic018, Kind::Kopia, Kind::Rustic];
        // Ferry's repository is 1000 MiB, every peer's 990 MiB; its RSS 40 MiB against 100.
        let targets = full_backups(5.0, &all).targets();
        let repo = target(&targets, "repository no larger than restic's");
        assert!(repo.starts_with("MISS"), "{repo}");
        assert!(
            repo.ends_with("missed against restic, restic-0.18"),
            "{repo}"
        );
        let rss = target(&targets, "peak RSS at most half of every peer's");
        assert!(rss.starts_with("PASS"), "{rss}");
        assert!(rss.contains("rustic 100.0 MiB"), "{rss}");
        // Without restic the repository is not judged.
        let targets = full_backups(5.0, &[Kind::Kopia, Kind::Rustic]).targets();
        let repo = target(&targets, "repository no larger than restic's");
        assert!(repo.starts_with("N/A"), "{repo}");
    }
}
