//! The comparison harness: generates the deterministic mixed data set once, then runs Ferry and
//! its peers (restic 0.14 as Debian packages it, the current restic 0.18, kopia and rustic) on it
//! phase by phase (each phase for every tool before the next phase), and prints wall time, CPU
//! time, peak RSS, repository size, bytes uploaded and downloaded, Ferry's ratio to each peer and a
//! pass/miss line per target.
//!
//!     cargo build --release -p ferry
//!     cargo run -p ferry-benches --release --bin compare -- --size 2GiB --work-dir /var/tmp/ferry-bench

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use ferry_benches::dataset::{self, Layout};
use ferry_benches::measure;
use ferry_benches::report::{Phase, Report, Row};
use ferry_benches::tools::{self, Kind, Tool};
use ferry_benches::tree;
use ferry_benches::units::{fmt_bytes, parse_size};

#[derive(Debug, Parser)]
#[command(
    about = "Compare Ferry's data mover with restic 0.14, restic 0.18, kopia and rustic on one deterministic data set"
)]
struct Args {
    /// Total size of the data set (e.g. 2GiB; 200MiB for a quick smoke run).
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    size: u64,
    /// Seed of the data set and of its mutation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the data set, the repositories, the caches and the restores go (needs ~12x --size
    /// with all five tools, ~3x with Ferry alone).
    #[arg(long, default_value = "/var/tmp/ferry-bench")]
    work_dir: PathBuf,
    /// Tools to run, comma-separated: any of ferry, restic (Debian's, 0.14), restic-0.18, kopia,
    /// rustic.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ferry,restic,restic-0.18,kopia,rustic"
    )]
    tools: Vec<String>,
    /// The ferry binary (default: $CARGO_TARGET_DIR/release/ferry, else target/release/ferry).
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Also back up and restore a single file of this size (e.g. 4GiB) and the small files alone,
    /// to compare restore throughput per byte.
    #[arg(long, value_parser = parse_size)]
    big_file: Option<u64>,
    /// Do not drop the page cache before each measured command.
    #[arg(long)]
    no_drop_caches: bool,
    /// Chunk sizes MIN,AVG,MAX (bytes) for Ferry's repository instead of its defaults, for a
    /// chunk-size sweep (`--tools ferry`); the drifted-restore bound is computed with the same.
    #[arg(long, value_delimiter = ',', num_args = 3)]
    ferry_chunk: Option<Vec<u32>>,
    /// Keep the restored trees and repositories afterwards (default: remove the restores).
    #[arg(long)]
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = &args.work_dir;
    fs::create_dir_all(work)?;
    let work = fs::canonicalize(work)?;

    let kinds: Vec<Kind> = args
        .tools
        .iter()
        .map(|t| {
            Kind::from_name(t).with_context(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown tool {t:?} (known: {})", names.join(", "))
            })
        })
        .collect::<anyhow::Result<_>>()?;

    let mut tools_list = Vec::new();
    let peers: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|&k| k != Kind::Ferry)
        .collect();
    let peer_bins = tools::install_peers(&peers)?;
    for &k in &kinds {
        let bin = match k {
            Kind::Ferry => ferry_bin(args.ferry.clone())?,
            _ => peer_bins
                .iter()
                .find(|(p, _)| *p == k)
                .expect("installed")
                .1
                .clone(),
        };
        let mut tool = Tool::new(k, bin, &work)?;
        if let (Kind::Ferry, Some(c)) = (k, &args.ferry_chunk) {
            tool.init_args = vec![
                "--chunk-min".into(),
                c[0].to_string(),
                "--chunk-avg".into(),
                c[1].to_string(),
                "--chunk-max".into(),
                c[2].to_string(),
            ];
        }
        tools_list.push(tool);
    }

    let mut report = Report::default();
    print_machine(&args, &tools_list);

    // The data set: generated once, reused by every tool (and by the next run, if unmutated).
    let layout = Layout::new(args.size, args.seed);
    let data = work.join("data");
    let marker = dataset::marker(args.size, args.seed);
    if fs::read_to_string(data.join(dataset::MARKER_FILE))
        .ok()
        .as_deref()
        == Some(marker.as_str())
    {
        eprintln!("reusing data set in {}", data.display());
    } else {
        if data.exists() {
            fs::remove_dir_all(&data)?;
        }
        let t = Instant::now();
        let s = dataset::generate(&layout, &data)?;
        eprintln!(
            "generated {} in {} files in {:.1} s",
            fmt_bytes(s.bytes),
            s.files,
            t.elapsed().as_secs_f64()
        );
    }
    let (data_bytes, _, data_files) = tree::du(&data)?;
    report.notes.push(format!(
        "data set: {} in {} files (seed {}), {} small files",
        fmt_bytes(data_bytes),
        data_files,
        args.seed,
        layout.small_files
    ));

    let drop = !args.no_drop_caches;
    let caches_dropped = drop && measure::drop_caches();
    report.notes.push(if !drop {
        "page cache: not dropped (--no-drop-caches)".into()
    } else if caches_dropped {
        "page cache: dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every measured command".into()
    } else {
        "page cache: could not be dropped (no permission); all phases ran with a warm cache".into()
    });
    let cold = || {
        if caches_dropped {
            measure::drop_caches();
        }
    };

    for t in &tools_list {
        t.init()
            .with_context(|| format!("initialising {}", t.kind.name()))?;
    }
    let mut snapshots: Vec<Vec<String>> = vec![Vec::new(); tools_list.len()];
    let restore_dir = |t: &Tool| work.join("restore").join(t.kind.name());

    let backup_phase = |report: &mut Report,
                        snaps: &mut Vec<Vec<String>>,
                        phase: Phase,
                        src: &Path|
     -> anyhow::Result<()> {
        let (bytes, _, _) = tree::du(src)?;
        for (i, t) in tools_list.iter().enumerate() {
            let before = tree::du(&t.repo())?.0;
            cold();
            eprintln!("{}: {} ...", phase.name(), t.kind.name());
            let b = match t.backup(src) {
                Ok(b) => b,
                Err(e) => {
                    // Record the failure and go on: the other tools' figures still count.
                    eprintln!("  FAILED: {e:#}");
                    report.notes.push(format!(
                        "{} by {} FAILED: {}",
                        phase.name(),
                        t.kind.name(),
                        first_line(&e)
                    ));
                    snaps[i].push(String::new());
                    continue;
                }
            };
            let after = tree::du(&t.repo())?.0;
            eprintln!(
                "  {:.2} s, snapshot {}",
                b.measured.wall.as_secs_f64(),
                b.snapshot
            );
            snaps[i].push(b.snapshot.clone());
            report.rows.push(Row {
                phase,
                tool: t.kind,
                measured: b.measured,
                data_bytes: bytes,
                repo_after: after,
                repo_delta: after as i64 - before as i64,
                downloaded: None,
                reused: None,
                reported_added: b.reported_added,
                verify: None,
            });
        }
        Ok(())
    };

    let restore_phase = |report: &mut Report,
                         phase: Phase,
                         snaps: &[String],
                         source: &Path,
                         target: &dyn Fn(&Tool) -> PathBuf,
                         into_existing: bool|
     -> anyhow::Result<()> {
        let (bytes, _, _) = tree::du(source)?;
        for (i, t) in tools_list.iter().enumerate() {
            let target = target(t);
            if !into_existing && target.exists() {
                fs::remove_dir_all(&target)?;
            }
            fs::create_dir_all(&target)?;
            let repo = tree::du(&t.repo())?.0;
            cold();
            eprintln!("{}: {} ...", phase.name(), t.kind.name());
            if snaps[i].is_empty() {
                report.notes.push(format!(
                    "{} by {} skipped: its backup failed",
                    phase.name(),
                    t.kind.name()
                ));
                continue;
            }
            let r = match t.restore(&snaps[i], &target, into_existing) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("  FAILED: {e:#}");
                    report.notes.push(format!(
                        "{} by {} FAILED: {}",
                        phase.name(),
                        t.kind.name(),
                        first_line(&e)
                    ));
                    continue;
                }
            };
            eprintln!("  {:.2} s", r.measured.wall.as_secs_f64());
            let diff = tree::compare(source, &target)?;
            let verify = if diff.is_exact() {
                "exact".to_string()
            } else if diff.content_ok() {
                format!("content exact, {} extra files left", diff.extra)
            } else {
                format!("WRONG: {}", diff.summary())
            };
            if !diff.content_ok() {
                report.notes.push(format!(
                    "{} by {} is wrong: {}",
                    phase.name(),
                    t.kind.name(),
                    diff.summary()
                ));
            }
            let after = tree::du(&t.repo())?.0;
            report.rows.push(Row {
                phase,
                tool: t.kind,
                measured: r.measured,
                data_bytes: bytes,
                repo_after: after,
                repo_delta: after as i64 - repo as i64,
                downloaded: r.downloaded,
                reused: r.reused,
                reported_added: None,
                verify: Some(verify),
            });
        }
        Ok(())
    };

    backup_phase(&mut report, &mut snapshots, Phase::FullBackup, &data)?;
    backup_phase(&mut report, &mut snapshots, Phase::NoopBackup, &data)?;
    // Restore the first snapshot into an empty directory: this tree then becomes the drifted copy.
    let first: Vec<String> = snapshots.iter().map(|s| s[0].clone()).collect();
    restore_phase(
        &mut report,
        Phase::FullRestore,
        &first,
        &data,
        &restore_dir,
        false,
    )?;

    // Ferry's chunks of the drifted copy's content (the data set before the mutation), to compute
    // afterwards which chunks of the latest snapshot truly differ from it.
    let old_chunks = if kinds.contains(&Kind::Ferry) {
        let t = Instant::now();
        let c = ferry_benches::chunkdiff::Chunks::of_tree(
            &data,
            args.ferry_chunk
                .as_ref()
                .map(|c| ferry_mover::ChunkerParams {
                    min_size: c[0],
                    avg_size: c[1],
                    max_size: c[2],
                }),
        )?;
        eprintln!(
            "chunked the data set ({} distinct chunks) in {:.1} s",
            c.len(),
            t.elapsed().as_secs_f64()
        );
        Some(c)
    } else {
        None
    };

    let t = Instant::now();
    let m = dataset::mutate(&layout, &data)?;
    report.notes.push(format!(
        "mutation: {} of new content ({:.2}% of the set): {} 4 KiB pages overwritten, {} B inserted mid-file, {} appended, {} files added, {} removed, {} rewritten",
        fmt_bytes(m.bytes_changed),
        100.0 * m.bytes_changed as f64 / data_bytes as f64,
        m.pages_overwritten,
        m.bytes_inserted,
        fmt_bytes(m.bytes_appended),
        m.files_added,
        m.files_removed,
        m.files_rewritten
    ));
    eprintln!("mutated the data set in {:.1} s", t.elapsed().as_secs_f64());

    backup_phase(&mut report, &mut snapshots, Phase::MutationBackup, &data)?;
    let latest: Vec<String> = snapshots.iter().map(|s| s[2].clone()).collect();
    restore_phase(
        &mut report,
        Phase::DriftRestore,
        &latest,
        &data,
        &restore_dir,
        true,
    )?;

    // The bound for the drifted restore: the stored size of the latest snapshot's chunks that the
    // drifted copy (the first snapshot) lacks, computed here independently of Ferry.
    if let Some(old) = &old_chunks {
        let d = old.differing(&data)?;
        report.differing = Some((
            d.stored_bytes,
            format!(
                "{} chunks, {} raw, cut and sealed by the harness with Ferry's default chunker and zstd level",
                d.chunks,
                fmt_bytes(d.raw_bytes)
            ),
        ));
    }

    if let Some(big) = args.big_file {
        let small = dataset::small_dir(&data);
        let big_dir = work.join("big");
        let big_path = big_dir.join("disk.img");
        let stamp = big_dir.join(".size");
        if fs::read_to_string(&stamp).ok() != Some(format!("{big} {}", args.seed)) {
            let _ = fs::remove_dir_all(&big_dir);
            fs::create_dir_all(&big_dir)?;
            let t = Instant::now();
            dataset::generate_big_file(&big_path, big, args.seed)?;
            eprintln!(
                "generated {} in {:.1} s",
                fmt_bytes(big),
                t.elapsed().as_secs_f64()
            );
        }
        let _ = fs::remove_file(&stamp);
        backup_phase(&mut report, &mut snapshots, Phase::SmallBackup, &small)?;
        let s: Vec<String> = snapshots.iter().map(|s| s[3].clone()).collect();
        let small_target = |t: &Tool| work.join("restore-small").join(t.kind.name());
        restore_phase(
            &mut report,
            Phase::SmallRestore,
            &s,
            &small,
            &small_target,
            false,
        )?;
        for t in &tools_list {
            let _ = fs::remove_dir_all(small_target(t));
        }
        backup_phase(&mut report, &mut snapshots, Phase::BigBackup, &big_dir)?;
        let b: Vec<String> = snapshots.iter().map(|s| s[4].clone()).collect();
        let big_target = |t: &Tool| work.join("restore-big").join(t.kind.name());
        restore_phase(
            &mut report,
            Phase::BigRestore,
            &b,
            &big_dir,
            &big_target,
            false,
        )?;
        for t in &tools_list {
            let _ = fs::remove_dir_all(big_target(t));
        }
        fs::write(&stamp, format!("{big} {}", args.seed))?;
    }

    if !args.keep {
        let _ = fs::remove_dir_all(work.join("restore"));
    }

    println!();
    println!("{}", report.metrics_table());
    if let Some(t) = report.ratio_table() {
        println!();
        println!(
            "Ferry/peer ratios, a column per peer (below 1: Ferry is faster, smaller or leaner)"
        );
        println!();
        println!("{t}");
    }
    println!();
    for n in &report.notes {
        println!("- {n}");
    }
    println!();
    for t in report.targets() {
        println!("{t}");
    }
    let json = work.join("results.json");
    fs::write(&json, serde_json::to_string_pretty(&report.to_json())?)?;
    eprintln!("results written to {}", json.display());
    Ok(())
}

fn first_line(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    let s = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ");
    s.chars().take(400).collect()
}

fn ferry_bin(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("release/ferry");
    anyhow::ensure!(
        p.exists(),
        "{} does not exist: run `cargo build --release -p ferry` or pass --ferry",
        p.display()
    );
    Ok(p)
}

fn print_machine(args: &Args, tools: &[Tool]) {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.to_string()))
        .unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} CPUs ({cpu}), {mem}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("load average at start: {}", load.trim());
    println!(
        "data set: {} (seed {}), work dir {}",
        fmt_bytes(args.size),
        args.seed,
        args.work_dir.display()
    );
    for t in tools {
        println!(
            "{}: {} ({}) {}",
            t.kind.name(),
            t.version,
            t.bin.display(),
            t.init_args.join(" ")
        );
    }
}
