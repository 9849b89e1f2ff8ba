//! File-level backup and restore of one pod volume through Ferry's controller and a node agent,
//! against the standalone data mover (`ferry volume`) on the same data: what orchestration costs
//! (issue 6). Against the test environment:
//!
//!   tests/env/up
//!   cargo build --workspace --tests                             # the ferry binary both sides run
//!   cargo build -p ferry-benches --features cluster --bins
//!   $CARGO_TARGET_DIR/debug/volume --size 2GiB
//!
//! (`FERRY_BIN=path` runs another `ferry`: a copy keeps a run steady while the tree is rebuilt.)
//!
//! Both sides run the same `ferry` binary (the dev profile: Ferry's crates unoptimised, its
//! dependencies at opt-level 3): the agent as `ferry agent` for a fake node, the standalone data
//! mover as `ferry volume backup|restore`, each into a repository of its own on the same MinIO.
//! The controller runs in this process; the API server, etcd and MinIO on loopback on the same
//! machine. Everything written on disk (the data set in the fake kubelet's pod volume, both
//! restores) goes under `--work-dir`, so both sides read and write the same filesystem.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use ferry_benches::dataset::{self, Layout};
use ferry_benches::measure::{self, Measured};
use ferry_benches::units::{MIB, fmt_bytes, parse_size};
use ferry_protocol::crd::{BackupStorageLocation, LocationPhase, Phase};
use ferry_tests::{
    BucketPrefix, HasPhase, RunningAgent, RunningController, TestEnv, TestNamespace, agent_ca,
    create_object, delete_namespace_and_wait, ferry_binary, summary, unique_name,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, Resource};
use serde_json::json;

/// The pod whose volume is backed up, and its volume (an emptyDir its annotation names).
const POD: &str = "bench";
const VOLUME: &str = "data";
const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";
/// Where the agent writes a restore's completion marker inside the volume: not part of the data.
const AGENT_MARKER_DIR: &str = ".ferry";
/// How often the resources and the agent's log are looked at: the resolution of the timings
/// through the controller.
const TICK: Duration = Duration::from_millis(100);
/// Generous: a 2 GiB volume at the dev profile on 2 busy cores takes minutes, not an hour.
const PHASE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Parser)]
#[command(
    about = "Backup and restore of one pod volume through Ferry's controller and agent, against the standalone data mover"
)]
struct Args {
    /// Total size of the data set (e.g. 2GiB; 200MiB for a smoke run).
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    size: u64,
    /// Seed of the data set (the same generator as `compare`).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the data set and the restores go (needs ~2x --size; MinIO needs ~0.7x more); a
    /// directory of this run's own is created in it and removed at the end.
    #[arg(long, default_value = "/var/tmp/ferry-bench-volume")]
    work_dir: PathBuf,
    /// Do not drop the page cache before each measured phase.
    #[arg(long)]
    no_drop_caches: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run_dir = RunDir::create(&args.work_dir)?;
    keep_temporary_files_in(&run_dir.path)?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    ferry_protocol::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let outcome = runtime.block_on(run(&args, &run_dir.path));
    // The agent and the harness's directories go with the runtime, before the run's directory.
    drop(runtime);
    drop(run_dir);
    outcome
}

/// This run's directory in the work directory: removed with everything in it when dropped, also
/// when the harness panics.
struct RunDir {
    path: PathBuf,
    work_dir: PathBuf,
}

impl RunDir {
    fn create(work_dir: &Path) -> anyhow::Result<RunDir> {
        let path = work_dir.join(format!("run-{}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(RunDir {
            path,
            work_dir: work_dir.to_path_buf(),
        })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.path) {
            eprintln!("could not remove {}: {error}", self.path.display());
        }
        // Only when empty: a concurrent run's directory stays.
        let _ = fs::remove_dir(&self.work_dir);
    }
}

/// Points the harness's temporary directories at `dir`: it keeps the fake kubelet's root (the
/// pod volumes: the data set and the agent's restore) and the agent's files in them, and they
/// belong on the disk the standalone side uses, not on whatever /tmp is.
fn keep_temporary_files_in(dir: &Path) -> anyhow::Result<()> {
    tempfile::env::override_temp_dir(dir).map_err(|earlier| {
        anyhow::anyhow!(
            "the temporary directory was set to {} already",
            earlier.display()
        )
    })
}

async fn run(args: &Args, run_dir: &Path) -> anyhow::Result<()> {
    let load_before = load_average();
    let ferry = ferry_binary();
    let caches = Caches::new(!args.no_drop_caches, ferry.clone());

    let controller = RunningController::start_with_location("bench-volume").await;
    let client = controller.client.clone();
    wait_until_location_available(&controller).await?;
    let ca = agent_ca(&controller).await;
    let agent = RunningAgent::start(&client, controller.namespace.name(), &ca).await;
    let agent_pid = agent.pid().context("the agent is not running")?;

    let app = TestNamespace::create(&client, "bench-volume").await;
    create_object(
        &client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": POD, "annotations": {"backup.ferry.dev/volumes": VOLUME}},
               "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}],
                        "volumes": [{"name": VOLUME, "emptyDir": {}}]}}),
    )
    .await;
    let source_uid = agent
        .kubelet
        .run_pod(&client, app.name(), POD)
        .await
        .metadata
        .uid
        .context("the running pod has no uid")?;
    let source = agent
        .kubelet
        .volume_dir(&source_uid, EMPTY_DIR_PLUGIN, VOLUME);
    eprintln!(
        "generating the {} data set (seed {}) into the pod's volume {}",
        fmt_bytes(args.size),
        args.seed,
        source.display()
    );
    let data_set = dataset::generate(&Layout::new(args.size, args.seed), &source)
        .context("generating the data set")?;
    let expected = fingerprint(&source, &[]).context("fingerprinting the data set")?;

    // The standalone data mover first, on the same data, into a repository of its own: it is
    // removed before the controller's side runs, so that the disk holds one repository and one
    // restore at a time (a 2 GiB run needs ~6 GiB instead of ~9).
    let standalone = Standalone {
        ferry,
        repository: BucketPrefix::new(TestEnv::get(), "bench-volume-standalone"),
    };
    eprintln!("standalone: repo init, volume backup");
    caches.cold_start();
    let init = measure::run(standalone.command().args(["repo", "init"]))
        .context("creating the standalone repository")?;
    let standalone_backup = measure::run(
        standalone
            .command()
            .args(["volume", "backup", "-o", "json"])
            .arg(&source),
    )
    .context("the standalone backup")?;
    let standalone_bytes_added =
        serde_json::from_str::<serde_json::Value>(&standalone_backup.stdout)
            .ok()
            .and_then(|outcome| outcome["summary"]["bytes_added"].as_u64());
    eprintln!("standalone: volume restore");
    let standalone_target = run_dir.join("standalone-restore");
    caches.cold_start();
    let standalone_restore = measure::run(
        standalone
            .command()
            .args(["volume", "restore", "-o", "json", "latest"])
            .arg(&standalone_target),
    )
    .context("the standalone restore")?;
    verify("the standalone restore", &expected, &standalone_target, &[])?;
    fs::remove_dir_all(&standalone_target)
        .with_context(|| format!("removing {}", standalone_target.display()))?;
    // Empties its bucket prefix, and so frees MinIO's disk of the standalone repository.
    drop(standalone);

    // Through the controller and the agent.
    eprintln!("backup through the controller and the agent");
    caches.cold_start();
    let agent_rss_idle = rss(agent_pid)?;
    let cpu_before = (cpu_time(agent_pid)?, own_cpu_time()?);
    let marks = LogMarks::of(&agent);
    let created = Instant::now();
    controller
        .create(json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Backup",
                       "metadata": {"name": "volume"},
                       "spec": {"includedNamespaces": [app.name()]}}))
        .await;
    let (_, backup_timeline) = follow(&controller.backups(), "volume", &agent, marks, created)
        .await
        .context("following the backup")?;
    let agent_backup = AgentPhase {
        timeline: backup_timeline,
        agent_cpu: cpu_time(agent_pid)? - cpu_before.0,
        controller_cpu: own_cpu_time()? - cpu_before.1,
        agent_peak_rss: peak_rss(agent_pid)?,
        bytes_transferred: last_task_bytes_transferred(&agent.log()),
    };

    eprintln!("restore through the controller and the agent");
    // The backup's peak must not count as the restore's.
    let peak_reset = reset_peak_rss(agent_pid);
    let agent_rss_after_backup = rss(agent_pid)?;
    let restored_namespace = RestoredNamespace(unique_name("bench-volume-restored"));
    caches.cold_start();
    let cpu_before = (cpu_time(agent_pid)?, own_cpu_time()?);
    let restores = controller.restores();
    let marks = LogMarks::of(&agent);
    let created = Instant::now();
    controller
        .create(
            json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Restore",
                       "metadata": {"name": "volume-restore"},
                       "spec": {"backupName": "volume",
                                "namespaceMapping": {app.name(): restored_namespace.0}}}),
        )
        .await;
    let ((restored_volume, pod_bound), (_, restore_timeline)) = tokio::try_join!(
        mount_restored_pod(&agent, &client, &restored_namespace.0, created),
        follow(&restores, "volume-restore", &agent, marks, created),
    )
    .context("following the restore")?;
    let agent_restore = AgentPhase {
        timeline: restore_timeline,
        agent_cpu: cpu_time(agent_pid)? - cpu_before.0,
        controller_cpu: own_cpu_time()? - cpu_before.1,
        agent_peak_rss: peak_rss(agent_pid)?,
        bytes_transferred: last_task_bytes_transferred(&agent.log()),
    };
    verify(
        "the volume restored through the agent",
        &expected,
        &restored_volume,
        &[AGENT_MARKER_DIR],
    )?;

    let load_after = load_average();

    let report = Report {
        data_set,
        standalone_init: init,
        standalone_backup,
        standalone_restore,
        standalone_bytes_added,
        agent_backup,
        agent_restore,
        pod_bound,
        agent_rss_idle,
        agent_rss_after_backup,
        peak_reset,
        caches_dropped: caches.dropped,
        load_before,
        load_after,
    };
    report.print();

    drop(restored_namespace);
    app.delete_and_wait().await;
    drop(agent);
    controller.stop().await;
    Ok(())
}

/// The BackupStorageLocation the harness creates is validated every 2 s; a backup created before
/// would time the wait for that too.
async fn wait_until_location_available(controller: &RunningController) -> anyhow::Result<()> {
    let locations: Api<BackupStorageLocation> =
        Api::namespaced(controller.client.clone(), controller.namespace.name());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let location = locations
            .get_opt("default")
            .await
            .context("reading the storage location")?;
        let phase = location
            .as_ref()
            .and_then(|l| l.status.as_ref())
            .and_then(|s| s.phase);
        if phase == Some(LocationPhase::Available) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the storage location did not become Available in 90 s: {location:?}");
        }
        tokio::time::sleep(TICK).await;
    }
}

/// How many task lines the agent had logged before a phase, so that the phase's own are found.
#[derive(Debug, Clone, Copy)]
struct LogMarks {
    started: usize,
    ended: usize,
    failed: usize,
}

impl LogMarks {
    fn of(agent: &RunningAgent) -> LogMarks {
        LogMarks::in_log(&agent.log())
    }

    fn in_log(log: &str) -> LogMarks {
        LogMarks {
            started: log.matches("task started").count(),
            ended: log.matches("task ended").count(),
            failed: log.matches("task failed").count(),
        }
    }
}

/// When, after the resource was created, the agent started and ended its task, and the resource
/// reached Completed.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    task_started: Duration,
    task_ended: Duration,
    completed: Duration,
}

/// Waits until the Backup or Restore `name` has completed, noting when the agent's task started
/// and ended. A task that fails is an error: a retried attempt would time something else.
async fn follow<K>(
    api: &Api<K>,
    name: &str,
    agent: &RunningAgent,
    before: LogMarks,
    created: Instant,
) -> anyhow::Result<(K, Timeline)>
where
    K: HasPhase
        + Resource
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let (mut started, mut ended) = (None, None);
    let note_tasks = |started: &mut Option<Duration>, ended: &mut Option<Duration>| {
        let log = agent.log();
        let now = LogMarks::in_log(&log);
        if now.failed > before.failed {
            bail!(
                "the agent's task for {name} failed; the end of its log:\n{}",
                tail_lines(&strip_ansi(&log), 20)
            );
        }
        let elapsed = created.elapsed();
        if started.is_none() && now.started > before.started {
            *started = Some(elapsed);
        }
        if ended.is_none() && now.ended > before.ended {
            *ended = Some(elapsed);
        }
        Ok(())
    };
    loop {
        note_tasks(&mut started, &mut ended)?;
        let object = api
            .get(name)
            .await
            .with_context(|| format!("reading {name}"))?;
        match object.phase() {
            Some(Phase::Completed) => {
                let completed = created.elapsed();
                // The task may have ended between the look at the log and the read.
                note_tasks(&mut started, &mut ended)?;
                let task_started = started.with_context(|| {
                    format!(
                        "{name} completed without a task of the agent: {}",
                        summary(&object)
                    )
                })?;
                let timeline = Timeline {
                    task_started,
                    task_ended: ended.unwrap_or(completed),
                    completed,
                };
                return Ok((object, timeline));
            }
            Some(phase) if phase.is_terminal() => {
                bail!("{name} ended {phase:?}: {}", summary(&object))
            }
            _ if created.elapsed() > PHASE_TIMEOUT => {
                bail!(
                    "{name} did not finish in {PHASE_TIMEOUT:?}: {}",
                    summary(&object)
                )
            }
            _ => tokio::time::sleep(TICK).await,
        }
    }
}

/// Plays scheduler and kubelet for the pod the restore creates, as soon as it exists: binds it to
/// the agent's node and mounts its (empty) volume. Returns the volume's directory and when the
/// pod was bound, after the restore was created.
async fn mount_restored_pod(
    agent: &RunningAgent,
    client: &Client,
    namespace: &str,
    created: Instant,
) -> anyhow::Result<(PathBuf, Duration)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    while pods
        .get_opt(POD)
        .await
        .with_context(|| format!("looking for the restored pod {namespace}/{POD}"))?
        .is_none()
    {
        if created.elapsed() > PHASE_TIMEOUT {
            bail!("the restore did not create pod {namespace}/{POD} in {PHASE_TIMEOUT:?}");
        }
        tokio::time::sleep(TICK).await;
    }
    let uid = agent
        .kubelet
        .run_pod(client, namespace, POD)
        .await
        .metadata
        .uid
        .context("the restored pod has no uid")?;
    let bound = created.elapsed();
    Ok((
        agent.kubelet.volume_dir(&uid, EMPTY_DIR_PLUGIN, VOLUME),
        bound,
    ))
}

/// The namespace the restore creates; deleted when dropped, as `TestNamespace` deletes its own,
/// so that a failed run leaves nothing behind either.
struct RestoredNamespace(String);

impl Drop for RestoredNamespace {
    fn drop(&mut self) {
        let name = self.0.clone();
        // Drop cannot await: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let client = TestEnv::get().kube_client().await;
                delete_namespace_and_wait(&client, &name).await;
            });
            Some(())
        })
        .join();
    }
}

/// The standalone data mover: `ferry` commands on a repository in a prefix of the test bucket.
struct Standalone {
    ferry: PathBuf,
    repository: BucketPrefix,
}

impl Standalone {
    /// `ferry` with the repository, its store and its password; the subcommand to be added.
    fn command(&self) -> Command {
        let env = TestEnv::get();
        let credentials = env.s3_credentials();
        let mut command = Command::new(&self.ferry);
        // The repository options belong to `ferry repo` and `ferry volume`, after them; the
        // subcommand is added later, so they go in the environment.
        command
            .env("FERRY_REPO", self.repository.url())
            .env("FERRY_S3_ENDPOINT", env.s3_endpoint())
            .env("FERRY_S3_REGION", env.s3_region())
            .env("FERRY_S3_PATH_STYLE", "true")
            .env("FERRY_PASSWORD", "bench-volume-standalone")
            .env("AWS_ACCESS_KEY_ID", credentials.access_key_id())
            .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key());
        command
    }
}

/// Dropping the page cache before every measured phase, when asked and allowed.
struct Caches {
    dropped: bool,
    ferry: PathBuf,
}

impl Caches {
    fn new(drop: bool, ferry: PathBuf) -> Caches {
        Caches {
            dropped: drop && measure::drop_caches(),
            ferry,
        }
    }

    /// Drops the page cache, then reads the ferry binary back in: the running agent keeps its
    /// mapped pages through a drop, and a standalone command starting from disk would pay for
    /// reading the (large, debug) binary where the agent does not.
    fn cold_start(&self) {
        if self.dropped {
            measure::drop_caches();
            if let Ok(mut binary) = File::open(&self.ferry) {
                let _ = std::io::copy(&mut binary, &mut std::io::sink());
            }
        }
    }
}

/// One phase through the controller and the agent.
#[derive(Debug)]
struct AgentPhase {
    timeline: Timeline,
    agent_cpu: Duration,
    /// This process: the controller, and the benchmark's own polling.
    controller_cpu: Duration,
    agent_peak_rss: u64,
    /// What the agent's task reported it uploaded (backup) or downloaded (restore).
    bytes_transferred: Option<u64>,
}

/// A file tree as paths relative to its root, with what is at each.
type Fingerprint = BTreeMap<PathBuf, Entry>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File { size: u64, content: [u8; 32] },
    Symlink(PathBuf),
    Other,
}

/// Every entry under `root`, except the top-level names in `skip`, with the size and a hash of
/// the content of every file.
fn fingerprint(root: &Path, skip: &[&str]) -> anyhow::Result<Fingerprint> {
    let mut entries = Fingerprint::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry
                .with_context(|| format!("listing {}", dir.display()))?
                .path();
            let relative = path.strip_prefix(root).expect("under root").to_path_buf();
            if dir == root && skip.iter().any(|name| relative == Path::new(name)) {
                continue;
            }
            let metadata = fs::symlink_metadata(&path)
                .with_context(|| format!("reading the metadata of {}", path.display()))?;
            let entry = if metadata.is_dir() {
                pending.push(path.clone());
                Entry::Dir
            } else if metadata.is_file() {
                Entry::File {
                    size: metadata.len(),
                    content: content_hash(&path)?,
                }
            } else if metadata.is_symlink() {
                Entry::Symlink(
                    fs::read_link(&path)
                        .with_context(|| format!("reading the link {}", path.display()))?,
                )
            } else {
                Entry::Other
            };
            entries.insert(relative, entry);
        }
    }
    Ok(entries)
}

/// BLAKE3 of the BLAKE3s of the file's 1 MiB blocks: streams, and the data mover's own hash
/// function (re-exported for pack files) needs no dependency of its own here.
fn content_hash(path: &Path) -> anyhow::Result<[u8; 32]> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut block = vec![0u8; MIB as usize];
    let mut block_hashes = Vec::new();
    loop {
        let mut filled = 0;
        while filled < block.len() {
            match file
                .read(&mut block[filled..])
                .with_context(|| format!("reading {}", path.display()))?
            {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        block_hashes.extend_from_slice(&ferry_mover::Id::hash_of_ciphertext(&block[..filled]).0);
        if filled < block.len() {
            break;
        }
    }
    Ok(ferry_mover::Id::hash_of_ciphertext(&block_hashes).0)
}

/// Fails, naming the first differences, unless the tree at `restored` is `expected`.
fn verify(
    what: &str,
    expected: &Fingerprint,
    restored: &Path,
    skip: &[&str],
) -> anyhow::Result<()> {
    let actual = fingerprint(restored, skip).with_context(|| format!("fingerprinting {what}"))?;
    let mut differences = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => differences.push(format!("{} missing", path.display())),
            Some(have) if have != want => differences.push(format!(
                "{} differs: {have:?} instead of {want:?}",
                path.display()
            )),
            Some(_) => {}
        }
    }
    for path in actual.keys().filter(|path| !expected.contains_key(*path)) {
        differences.push(format!("{} not in the source", path.display()));
    }
    if !differences.is_empty() {
        bail!(
            "{what} ({}) differs from the source in {} entries, e.g.:\n  {}",
            restored.display(),
            differences.len(),
            differences[..differences.len().min(5)].join("\n  ")
        );
    }
    eprintln!("{what}: identical to the source ({} entries)", actual.len());
    Ok(())
}

/// Peak resident set size (`VmHWM`) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    memory_status(pid, "VmHWM")
}

/// Resident set size (`VmRSS`) of process `pid`, in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    memory_status(pid, "VmRSS")
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn memory_status(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .with_context(|| format!("no {field} in {path}"))
}

/// Resets the peak RSS of `pid` to its current RSS (Linux 4.0+). Returns whether it could.
fn reset_peak_rss(pid: u32) -> bool {
    fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// User and system CPU time of process `pid`, all threads.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    cpu_time_in(&format!("/proc/{pid}/stat"))
}

fn own_cpu_time() -> anyhow::Result<Duration> {
    cpu_time_in("/proc/self/stat")
}

fn cpu_time_in(path: &str) -> anyhow::Result<Duration> {
    let stat = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name, in parentheses, may hold spaces: count fields after it. utime and stime
    // are fields 14 and 15, the 12th and 13th after the name.
    let after_name = stat
        .rsplit_once(')')
        .with_context(|| format!("no command name in {path}"))?
        .1;
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("no utime and stime in {path}"))?;
    if fields.len() != 2 {
        bail!("no utime and stime in {path}");
    }
    Ok(Duration::from_secs_f64(
        (fields[0] + fields[1]) as f64 / clock_ticks_per_second() as f64,
    ))
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|ticks| ticks.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// `bytes_transferred` of the agent's last "task ended" line.
fn last_task_bytes_transferred(log: &str) -> Option<u64> {
    let log = strip_ansi(log);
    let line = log.lines().rev().find(|line| line.contains("task ended"))?;
    let value = line.split("bytes_transferred=").nth(1)?;
    value
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The agent logs with colours (a file is no terminal to `tracing-subscriber`).
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|load| {
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

struct Report {
    data_set: dataset::Stats,
    standalone_init: Measured,
    standalone_backup: Measured,
    standalone_restore: Measured,
    standalone_bytes_added: Option<u64>,
    agent_backup: AgentPhase,
    agent_restore: AgentPhase,
    pod_bound: Duration,
    /// The agent's resident set before the backup, and what it kept after it.
    agent_rss_idle: u64,
    agent_rss_after_backup: u64,
    peak_reset: bool,
    caches_dropped: bool,
    load_before: String,
    load_after: String,
}

impl Report {
    fn print(&self) {
        let mib = |bytes: u64| bytes as f64 / MIB as f64;
        let rate = |seconds: f64| mib(self.data_set.bytes) / seconds;
        // The agent's first backup of a namespace creates its repository; the standalone side
        // does that with `repo init`, so its backup counts both.
        let standalone_backup =
            self.standalone_init.wall.as_secs_f64() + self.standalone_backup.wall.as_secs_f64();
        let rows = [
            (
                "backup",
                standalone_backup,
                &self.agent_backup,
                self.standalone_init
                    .max_rss
                    .max(self.standalone_backup.max_rss),
            ),
            (
                "restore",
                self.standalone_restore.wall.as_secs_f64(),
                &self.agent_restore,
                self.standalone_restore.max_rss,
            ),
        ];
        println!(
            "| phase | standalone s | controller+agent s | overhead s | ratio | standalone MiB/s | controller+agent MiB/s | peak RSS standalone MiB | peak RSS agent MiB |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for (phase, standalone, agent, standalone_rss) in rows {
            let through = agent.timeline.completed.as_secs_f64();
            println!(
                "| {phase} | {standalone:.1} | {through:.1} | {:.1} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
                through - standalone,
                through / standalone,
                rate(standalone),
                rate(through),
                mib(standalone_rss),
                mib(agent.agent_peak_rss),
            );
        }
        println!();
        println!(
            "| phase | until the agent's task started s | agent's task s | task end to Completed s | agent CPU s | standalone CPU s | controller process CPU s |"
        );
        println!("|---|---|---|---|---|---|---|");
        let standalone_cpu = [
            (self.standalone_init.cpu() + self.standalone_backup.cpu()).as_secs_f64(),
            self.standalone_restore.cpu().as_secs_f64(),
        ];
        for ((phase, _, agent, _), standalone_cpu) in rows.iter().zip(standalone_cpu) {
            let t = agent.timeline;
            println!(
                "| {phase} | {:.1} | {:.1} | {:.1} | {:.1} | {standalone_cpu:.1} | {:.1} |",
                t.task_started.as_secs_f64(),
                (t.task_ended - t.task_started).as_secs_f64(),
                (t.completed - t.task_ended).as_secs_f64(),
                agent.agent_cpu.as_secs_f64(),
                agent.controller_cpu.as_secs_f64(),
            );
        }
        println!();
        let added = |bytes: Option<u64>| bytes.map_or("unknown".to_owned(), fmt_bytes);
        println!(
            "Data set: {} ({} bytes) in {} files. Repository bytes added by the backup: standalone {}, agent {}; \
             downloaded by the agent's restore: {}.",
            fmt_bytes(self.data_set.bytes),
            self.data_set.bytes,
            self.data_set.files,
            added(self.standalone_bytes_added),
            added(self.agent_backup.bytes_transferred),
            added(self.agent_restore.bytes_transferred),
        );
        println!(
            "Standalone backup = `repo init` {:.1} s + `volume backup` {:.1} s. Restore: the restored pod \
             was bound {:.1} s after the Restore was created. Timings through the controller are \
             polled every {} ms.",
            self.standalone_init.wall.as_secs_f64(),
            self.standalone_backup.wall.as_secs_f64(),
            self.pod_bound.as_secs_f64(),
            TICK.as_millis(),
        );
        println!(
            "Peak RSS: standalone from wait4; agent VmHWM of the long-running `ferry agent` process \
             (resident {:.0} MiB idle before the backup, {:.0} MiB kept after it){}. \
             Page cache: {}. Load average before {}, after {}.",
            mib(self.agent_rss_idle),
            mib(self.agent_rss_after_backup),
            if self.peak_reset {
                ", reset to that between backup and restore"
            } else {
                " (could not be reset after the backup: the restore's figure is the peak of both)"
            },
            if self.caches_dropped {
                "dropped before every measured phase (and the ferry binary read back in)"
            } else {
                "not dropped"
            },
            self.load_before,
            self.load_after,
        );
    }
}
