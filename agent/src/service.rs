//! The agent's gRPC service: backs up and restores the pod volumes of its node with the data
//! mover, a bounded number at a time, streaming progress to the controller.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::agent::v1::agent_server::Agent;
use ferry_protocol::agent::v1::{
    AgentInfo, BackupVolumeRequest, CancelRequest, CancelResponse, GetInfoRequest, PodVolume,
    Progress, Repository as RepositorySpec, RestoreVolumeRequest, TaskResult, TaskUpdate,
    task_update,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::metrics::{AgentMetrics, TaskKind};
use crate::volume_path::{self, VolumeData};
use ferry_mover::root_dir::RootDir;
use ferry_mover::{
    BackupOptions, Error, InitOptions, ParentChoice, ProgressEvent, Repository, RestoreOptions,
    open_backend,
};
use ferry_protocol::crd::BackupStorageLocation;

/// Where a restored volume's completion marker goes, inside the volume.
pub const MARKER_DIR: &str = ".ferry";
/// How long a task waits for a conflicting lock: repository maintenance (a prune) holds an
/// exclusive one for a while, and a backup or restore that meets it waits for it to finish rather
/// than fail (a new cluster starts maintenance and its first restore at the same moment).
const LOCK_WAIT: Duration = Duration::from_secs(15 * 60);
/// The tag that says which pod volume a snapshot is of, so the next backup finds its parent.
const POD_VOLUME_TAG: &str = "pod-volume=";

/// What the service needs to know about its node.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub node_name: String,
    /// Ferry's namespace: its storage locations are the only stores the agent writes to.
    pub namespace: String,
    /// The kubelet's `pods` directory, as mounted into the agent.
    pub pods_dir: PathBuf,
    /// Volume backups and restores run at once on this node; more wait their turn.
    pub max_tasks: usize,
    /// A task still running this long after it got its slot is cancelled, so that nothing in a
    /// volume can hold one of the node's task slots for ever.
    pub task_timeout: Duration,
}

pub struct AgentService {
    client: kube::Client,
    settings: Arc<AgentSettings>,
    slots: Arc<Semaphore>,
    /// Cancel flags of the running tasks, by task id.
    running: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    /// Set once the agent is stopping: tasks cancelled then end Unavailable, to be tried again.
    stopping: Arc<AtomicBool>,
    metrics: Arc<AgentMetrics>,
}

/// Stops the tasks of an [`AgentService`] when the agent stops (its pod is terminating): each
/// ends at its next entry or chunk, leaving the repository as a cancelled backup or restore does,
/// and answers Unavailable, which the controller tries again on the agent that comes back. Without
/// this, a stopping agent would hold its tasks until the pod's grace period ran out and it was
/// killed.
#[derive(Debug, Clone)]
pub struct TaskStopper {
    running: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    stopping: Arc<AtomicBool>,
}

impl TaskStopper {
    /// Cancels every running task; returns how many there were.
    pub fn stop_all(&self) -> usize {
        self.stopping.store(true, Ordering::Relaxed);
        let running = self.running.lock().expect("task registry");
        for flag in running.values() {
            flag.store(true, Ordering::Relaxed);
        }
        running.len()
    }
}

impl AgentService {
    pub fn new(client: kube::Client, settings: AgentSettings) -> AgentService {
        AgentService {
            client,
            slots: Arc::new(Semaphore::new(settings.max_tasks.max(1))),
            settings: Arc::new(settings),
            running: Arc::default(),
            stopping: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// What stops this service's tasks when the agent stops.
    pub fn stopper(&self) -> TaskStopper {
        TaskStopper {
            running: self.running.clone(),
            stopping: self.stopping.clone(),
        }
    }

    /// This service recording its tasks into `metrics`, which its caller serves.
    pub fn with_metrics(mut self, metrics: Arc<AgentMetrics>) -> AgentService {
        self.metrics = metrics;
        self
    }

    /// The pod volume a request names, opened: writable too when `writable` (a restore).
    async fn resolve(
        &self,
        volume: Option<PodVolume>,
        writable: bool,
    ) -> Result<(PodVolume, VolumeData), Status> {
        let volume = volume.ok_or_else(|| Status::invalid_argument("no volume named"))?;
        let data = volume_path::resolve(
            &self.client,
            &self.settings.pods_dir,
            &self.settings.node_name,
            &volume,
            writable,
        )
        .await?;
        Ok((volume, data))
    }

    /// Refuses a repository that is not in one of the cluster's storage locations: the agent
    /// writes a pod's data only where the user configured Ferry to keep it.
    async fn check_repository(&self, spec: &RepositorySpec) -> Result<(), Status> {
        let locations: kube::Api<BackupStorageLocation> =
            kube::Api::namespaced(self.client.clone(), &self.settings.namespace);
        let locations = locations
            .list(&Default::default())
            .await
            .map_err(|error| Status::unavailable(format!("listing storage locations: {error}")))?;
        repository_in_locations(spec, &locations.items)
    }

    /// Runs `work` on a blocking thread once a slot is free, streaming its progress and result.
    /// `what` names the task in the agent's log.
    fn spawn_task<F>(
        &self,
        task_id: String,
        kind: TaskKind,
        what: String,
        work: F,
    ) -> Result<ReceiverStream<Result<TaskUpdate, Status>>, Status>
    where
        F: FnOnce(
                Arc<AtomicBool>,
                mpsc::Sender<Result<TaskUpdate, Status>>,
            ) -> Result<TaskResult, Status>
            + Send
            + 'static,
    {
        if task_id.is_empty() {
            return Err(Status::invalid_argument("task_id is empty"));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut running = self.running.lock().expect("task registry");
            if running.contains_key(&task_id) {
                return Err(Status::already_exists(format!(
                    "task {task_id} is running already"
                )));
            }
            running.insert(task_id.clone(), cancel.clone());
        }
        let (updates, stream) = mpsc::channel(16);
        let slots = self.slots.clone();
        let running = self.running.clone();
        let stopping = self.stopping.clone();
        let metrics = self.metrics.clone();
        let timeout = self.settings.task_timeout;
        // Every line the task logs, on the blocking thread too, names it.
        let span = tracing::info_span!("task", task = %task_id, kind = %kind.as_str(), %what);
        let task_span = span.clone();
        let task = async move {
            let (outcome, ran) = match slots.acquire_owned().await {
                Ok(permit) => {
                    metrics.task_started();
                    let started = std::time::Instant::now();
                    let sender = updates.clone();
                    let flag = cancel.clone();
                    let work = tokio::task::spawn_blocking(move || {
                        let _in_task = task_span.enter();
                        let result = work(flag, sender);
                        drop(permit);
                        result
                    });
                    tokio::pin!(work);
                    let mut timed_out = false;
                    let joined = tokio::select! {
                        joined = &mut work => joined,
                        () = tokio::time::sleep(timeout) => {
                            // The data mover stops at its next entry or chunk.
                            timed_out = true;
                            cancel.store(true, Ordering::Relaxed);
                            work.await
                        }
                    };
                    let outcome = joined.unwrap_or_else(|error| {
                        Err(Status::internal(format!("the task panicked: {error}")))
                    });
                    let outcome = match outcome {
                        Err(status) if timed_out && status.code() == tonic::Code::Cancelled => {
                            Err(Status::deadline_exceeded(format!(
                                "the task ran longer than the agent's limit of {} s and was stopped",
                                timeout.as_secs()
                            )))
                        }
                        Err(status)
                            if status.code() == tonic::Code::Cancelled
                                && stopping.load(Ordering::Relaxed) =>
                        {
                            Err(Status::unavailable(
                                "the agent stopped (its pod is terminating) before the task ended; try it again on the agent that replaces it",
                            ))
                        }
                        other => other,
                    };
                    (outcome, Some(started.elapsed()))
                }
                Err(_) => (Err(Status::unavailable("the agent is shutting down")), None),
            };
            running.lock().expect("task registry").remove(&task_id);
            metrics.task_ended(kind, ran, &outcome);
            let last = outcome.map(|result| TaskUpdate {
                update: Some(task_update::Update::Result(result)),
            });
            // The controller may have gone; the work is done either way.
            let _ = updates.send(last).await;
        };
        tokio::spawn(task.instrument(span));
        Ok(ReceiverStream::new(stream))
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn get_info(&self, _: Request<GetInfoRequest>) -> Result<Response<AgentInfo>, Status> {
        let running = self.running.lock().expect("task registry").len();
        Ok(Response::new(AgentInfo {
            node_name: self.settings.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: ferry_protocol::agent::API_VERSION,
            healthy: self.settings.pods_dir.is_dir(),
            running_tasks: u32::try_from(running).unwrap_or(u32::MAX),
            max_tasks: u32::try_from(self.settings.max_tasks).unwrap_or(u32::MAX),
        }))
    }

    type BackupVolumeStream = ReceiverStream<Result<TaskUpdate, Status>>;

    async fn backup_volume(
        &self,
        request: Request<BackupVolumeRequest>,
    ) -> Result<Response<Self::BackupVolumeStream>, Status> {
        let request = request.into_inner();
        let (volume, data) = self.resolve(request.volume, false).await?;
        let spec = request
            .repository
            .ok_or_else(|| Status::invalid_argument("no repository named"))?;
        self.check_repository(&spec).await?;
        let pod_volume = format!(
            "{POD_VOLUME_TAG}{}/{}/{}",
            volume.namespace, volume.pod, volume.volume
        );
        let node = self.settings.node_name.clone();
        let what = format!(
            "backup of volume {} of pod {}/{}",
            volume.volume, volume.namespace, volume.pod
        );
        let kind = TaskKind::Backup;
        let stream = self.spawn_task(request.task_id, kind, what, move |cancel, updates| {
            let repo = open_repository(&spec, true)?;
            // The parent is the latest snapshot of the same pod volume: its pod UID, and so its
            // path on the node, change whenever the pod is recreated.
            let parent = repo
                .list_snapshots()
                .map_err(status)?
                .snapshots
                .into_iter()
                .rev()
                .find(|(_, s)| s.tags.contains(&pod_volume))
                .map_or(ParentChoice::None, |(id, _)| {
                    ParentChoice::Snapshot(id.to_hex())
                });
            let mut tags = request.tags;
            tags.push(pod_volume);
            let errors = Arc::new(Mutex::new(Vec::new()));
            let options = BackupOptions {
                tags,
                host: Some(node),
                parent,
                progress: Some(progress_sink(updates, errors.clone())),
                cancel: Some(cancel),
                lock_wait: LOCK_WAIT,
                ..Default::default()
            };
            let outcome = match data {
                VolumeData::Dir(dir) => ferry_mover::backup::backup_root(&repo, &dir, &options),
                // A block volume: its device, read whole as one file named after the volume.
                VolumeData::Device(device) => ferry_mover::backup::backup_image(
                    &repo,
                    device,
                    &volume.volume,
                    &format!("{}/{}/{}", volume.namespace, volume.pod, volume.volume),
                    &options,
                ),
            }
            .map_err(status)?;
            let summary = &outcome.snapshot.summary;
            Ok(TaskResult {
                snapshot_id: outcome.snapshot_id.to_hex(),
                files: summary.total_files,
                bytes: summary.total_bytes,
                bytes_transferred: summary.bytes_added,
                errors: errors.lock().expect("errors").clone(),
            })
        })?;
        Ok(Response::new(stream))
    }

    type RestoreVolumeStream = ReceiverStream<Result<TaskUpdate, Status>>;

    async fn restore_volume(
        &self,
        request: Request<RestoreVolumeRequest>,
    ) -> Result<Response<Self::RestoreVolumeStream>, Status> {
        let request = request.into_inner();
        let (volume, data) = self.resolve(request.volume, true).await?;
        let spec = request
            .repository
            .ok_or_else(|| Status::invalid_argument("no repository named"))?;
        self.check_repository(&spec).await?;
        if !request.marker.is_empty() && !is_plain_file_name(&request.marker) {
            return Err(Status::invalid_argument(format!(
                "marker {:?} is not a plain file name",
                request.marker
            )));
        }
        let what = format!(
            "restore of snapshot {} into volume {} of pod {}/{}{}",
            request.snapshot_id,
            volume.volume,
            volume.namespace,
            volume.pod,
            if request.in_place { ", in place" } else { "" }
        );
        let kind = TaskKind::Restore;
        let stream = self.spawn_task(request.task_id, kind, what, move |cancel, updates| {
            let repo = open_repository(&spec, false)?;
            let errors = Arc::new(Mutex::new(Vec::new()));
            let progress = Some(progress_sink(updates, errors.clone()));
            let summary = match data {
                VolumeData::Dir(dir) => restore_volume(
                    &repo,
                    &request.snapshot_id,
                    &dir,
                    &request.marker,
                    request.in_place,
                    progress,
                    cancel,
                ),
                VolumeData::Device(device) => {
                    restore_device(&repo, &request.snapshot_id, &device, progress, cancel)
                }
            }
            .map_err(status)?;
            let mut errors = errors.lock().expect("errors").clone();
            errors.extend(
                summary
                    .damaged_files
                    .iter()
                    .map(|f| format!("{f}: could not be restored (damaged or missing data, or the file could not be written)")),
            );
            Ok(TaskResult {
                snapshot_id: request.snapshot_id,
                files: summary.files_restored + summary.files_unchanged,
                bytes: summary.bytes_written + summary.bytes_reused,
                bytes_transferred: summary.bytes_downloaded,
                errors,
            })
        })?;
        Ok(Response::new(stream))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let task_id = request.into_inner().task_id;
        let flag = self
            .running
            .lock()
            .expect("task registry")
            .get(&task_id)
            .cloned();
        if let Some(flag) = &flag {
            flag.store(true, Ordering::Relaxed);
        }
        Ok(Response::new(CancelResponse {
            was_running: flag.is_some(),
        }))
    }
}

/// Opens the repository, creating it first when `create` and it does not exist yet.
fn open_repository(spec: &RepositorySpec, create: bool) -> Result<Arc<Repository>, Status> {
    if spec.password.is_empty() {
        return Err(Status::invalid_argument("the repository password is empty"));
    }
    let options = ferry_protocol::agent::s3_options(spec).map_err(Status::invalid_argument)?;
    let password = spec.password.as_bytes();
    let open = || {
        let backend = open_backend(&spec.url, &options)?;
        Repository::open(backend, password)
    };
    match open() {
        Ok(repo) => Ok(Arc::new(repo)),
        Err(Error::NoRepository { .. }) if create => {
            let backend = open_backend(&spec.url, &options).map_err(status)?;
            match Repository::init(backend, password, &InitOptions::default()) {
                Ok(repo) => Ok(Arc::new(repo)),
                // Another agent created it meanwhile.
                Err(Error::RepositoryExists { .. }) => open().map(Arc::new).map_err(status),
                Err(error) => Err(status(error)),
            }
        }
        Err(error) => Err(status(error)),
    }
}

/// Forwards the data mover's progress to the controller, dropping updates while the stream is
/// full (the next one carries the same counters), and collects per-file errors for the result.
fn progress_sink(
    updates: mpsc::Sender<Result<TaskUpdate, Status>>,
    errors: Arc<Mutex<Vec<String>>>,
) -> Arc<dyn ferry_mover::ProgressSink> {
    Arc::new(move |event: ProgressEvent| match event {
        ProgressEvent::Update(snapshot) | ProgressEvent::Done(snapshot) => {
            let progress = Progress {
                bytes_done: snapshot.bytes_done,
                bytes_total: snapshot.total_bytes,
                files_done: snapshot.files_done,
                files_total: snapshot.total_files,
                bytes_per_second: snapshot.bytes_per_second as u64,
            };
            let _ = updates.try_send(Ok(TaskUpdate {
                update: Some(task_update::Update::Progress(progress)),
            }));
        }
        ProgressEvent::Error { path, message } => {
            errors
                .lock()
                .expect("errors")
                .push(format!("{path}: {message}"));
        }
        ProgressEvent::Totals { .. } => {}
    })
}

/// A pod volume's restore as the agent runs it: the snapshot into the volume (in place: patched
/// where it is, what the snapshot lacks removed), everything made durable, and only then the
/// completion marker (`marker`, unless empty) that lets the pod start. A pod's volume gets no
/// device nodes nor privileges (setuid programs, file capabilities, security labels) back.
pub fn restore_volume(
    repo: &Arc<Repository>,
    snapshot: &str,
    volume: &RootDir,
    marker: &str,
    in_place: bool,
    progress: Option<Arc<dyn ferry_mover::ProgressSink>>,
    cancel: Arc<AtomicBool>,
) -> ferry_mover::Result<ferry_mover::RestoreSummary> {
    let options = RestoreOptions {
        incremental: in_place,
        delete: in_place,
        progress,
        cancel: Some(cancel),
        sync: true,
        devices: false,
        privileges: false,
        lock_wait: LOCK_WAIT,
        ..Default::default()
    };
    let (_, snapshot) = repo.find_snapshot(snapshot)?;
    let summary = ferry_mover::restore::restore_into(repo, &snapshot.tree, volume, &options)?;
    if !marker.is_empty() {
        write_marker(volume, marker)
            .map_err(|error| error.context("writing the completion marker"))?;
    }
    Ok(summary)
}

/// A block volume's restore: the image snapshot written into its device and flushed. No marker:
/// the pods that use the device wait on the restore itself (a scheduling gate), not on its data.
pub fn restore_device(
    repo: &Arc<Repository>,
    snapshot: &str,
    device: &std::fs::File,
    progress: Option<Arc<dyn ferry_mover::ProgressSink>>,
    cancel: Arc<AtomicBool>,
) -> ferry_mover::Result<ferry_mover::RestoreSummary> {
    let options = RestoreOptions {
        progress,
        cancel: Some(cancel),
        sync: true,
        lock_wait: LOCK_WAIT,
        ..Default::default()
    };
    let (_, snapshot) = repo.find_snapshot(snapshot)?;
    ferry_mover::restore::restore_image(repo, &snapshot.tree, device, &options)
}

/// Writes `.ferry/<marker>` into the restored volume, durably: temp file, fsync, rename, fsync of
/// the directory. Everything goes through the volume's descriptor with no symlink resolved: a
/// `.ferry` the pod made a symlink (or a file) is replaced by a directory, never followed.
pub fn write_marker(volume: &RootDir, marker: &str) -> ferry_mover::Result<()> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    use std::io::Write;
    let marker_dir = std::path::Path::new(MARKER_DIR);
    let io = |errno: rustix::io::Errno| Error::io(volume.display(marker_dir), errno.into());
    let top = volume
        .dir(std::path::Path::new(""))
        .map_err(|error| Error::io(volume.path(), error))?;
    match rustix::fs::statat(&top, MARKER_DIR, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if ferry_mover::root_dir::is_dir(&stat) => {}
        Ok(_) => ferry_mover::root_dir::remove_entry(
            top.as_fd(),
            std::ffi::OsStr::new(MARKER_DIR),
            volume.device(),
            &volume.display(marker_dir),
        )?,
        Err(rustix::io::Errno::NOENT) => {}
        Err(errno) => return Err(io(errno)),
    }
    match rustix::fs::mkdirat(&top, MARKER_DIR, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(errno) => return Err(io(errno)),
    }
    let dir = volume
        .dir(marker_dir)
        .map_err(|error| Error::io(volume.display(marker_dir), error))?;
    let temp = format!(".{marker}.{}.tmp", &ferry_mover::Id::random().to_hex()[..8]);
    let file = rustix::fs::openat(
        &dir,
        temp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(io)?;
    let mut file = std::fs::File::from(file);
    file.write_all(b"restored\n")
        .and_then(|()| file.sync_all())
        .map_err(|error| Error::io(volume.display(marker_dir), error))?;
    rustix::fs::renameat(&dir, temp.as_str(), &dir, marker).map_err(io)?;
    rustix::fs::fsync(&dir).map_err(io)
}

/// Whether `spec` names a repository of one of `locations`, reached the way the location says:
/// `s3://<bucket>/<prefix>/repositories/<namespace>` at the location's endpoint.
pub fn repository_in_locations(
    spec: &RepositorySpec,
    locations: &[BackupStorageLocation],
) -> Result<(), Status> {
    let Some(rest) = spec.url.strip_prefix("s3://") else {
        return Err(Status::permission_denied(format!(
            "repository {:?} is not in S3: the agent writes only to the cluster's storage locations",
            spec.url
        )));
    };
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let normalize = |endpoint: &str| endpoint.trim_end_matches('/').to_ascii_lowercase();
    let found = locations.iter().any(|location| {
        let storage = &location.spec.object_storage;
        let prefix = ferry_protocol::layout::repositories_prefix(storage.prefix.as_deref());
        let namespace = key.strip_prefix(prefix.as_str()).unwrap_or_default();
        storage.bucket == bucket
            && key.starts_with(prefix.as_str())
            && !namespace.is_empty()
            && !namespace.contains('/')
            && normalize(location.spec.endpoint.as_deref().unwrap_or_default())
                == normalize(&spec.s3_endpoint)
    });
    if found {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "repository {} at endpoint {:?} belongs to no storage location of this cluster; refused",
            spec.url, spec.s3_endpoint
        )))
    }
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The data mover's error as a gRPC status, keeping whether trying again can help.
fn status(error: Error) -> Status {
    match error {
        Error::Cancelled => Status::cancelled("cancelled"),
        Error::WrongPassword => Status::permission_denied(error.to_string()),
        Error::NoRepository { .. } | Error::NotFound { .. } => Status::not_found(error.to_string()),
        Error::InvalidArgument(_) | Error::UnsafePath(_) => {
            Status::invalid_argument(error.to_string())
        }
        error if error.is_retryable() => Status::unavailable(error.to_string()),
        error => Status::internal(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_plain_file_names() {
        assert!(is_plain_file_name("restore-3f2a.done"));
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            assert!(!is_plain_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_marker_is_written_inside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        write_marker(&RootDir::open(dir.path()).unwrap(), "r1.done").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(".ferry/r1.done")).unwrap(),
            "restored\n"
        );
    }

    /// A pod that makes `.ferry` a symlink (to another pod's volume, or /etc) must not get a
    /// root-owned file created there: the marker goes into a real `.ferry` directory inside.
    #[test]
    fn a_planted_marker_symlink_is_replaced_not_followed() {
        let base = tempfile::tempdir().unwrap();
        let volume = base.path().join("volume");
        let elsewhere = base.path().join("elsewhere");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, volume.join(".ferry")).unwrap();
        write_marker(&RootDir::open(&volume).unwrap(), "r2.done").unwrap();
        assert_eq!(
            std::fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "the marker followed the planted symlink"
        );
        let marker_dir = std::fs::symlink_metadata(volume.join(".ferry")).unwrap();
        assert!(marker_dir.is_dir());
        assert_eq!(
            std::fs::read_to_string(volume.join(".ferry/r2.done")).unwrap(),
            "restored\n"
        );
        // And a marker name planted as a symlink inside a real `.ferry` is replaced by the
        // rename, never written through.
        std::os::unix::fs::symlink(elsewhere.join("owned"), volume.join(".ferry/r3.done")).unwrap();
        write_marker(&RootDir::open(&volume).unwrap(), "r3.done").unwrap();
        assert!(!elsewhere.join("owned").exists());
        assert!(
            std::fs::symlink_metadata(volume.join(".ferry/r3.done"))
                .unwrap()
                .is_file()
        );
    }

    fn location(
        bucket: &str,
        prefix: Option<&str>,
        endpoint: Option<&str>,
    ) -> BackupStorageLocation {
        BackupStorageLocation::new(
            "default",
            ferry_protocol::crd::BackupStorageLocationSpec {
                provider: "aws".into(),
                object_storage: ferry_protocol::crd::ObjectStorage {
                    bucket: bucket.into(),
                    prefix: prefix.map(Into::into),
                    ..Default::default()
                },
                region: None,
                endpoint: endpoint.map(Into::into),
                force_path_style: None,
                credential: None,
                default: true,
                access_mode: None,
                validation_frequency: None,
                backup_sync_period: None,
                repository_maintenance_frequency: None,
                agent_credentials: None,
            },
        )
    }

    /// The agent writes pod data only into repositories of the cluster's storage locations, at
    /// their endpoints: not to a local path, nor to a store someone holding the controller's
    /// certificate names.
    #[test]
    fn only_repositories_of_storage_locations_are_accepted() {
        let locations = [location(
            "backups",
            Some("team/a"),
            Some("http://127.0.0.1:9000/"),
        )];
        let spec = |url: &str, endpoint: &str| RepositorySpec {
            url: url.into(),
            s3_endpoint: endpoint.into(),
            ..Default::default()
        };
        repository_in_locations(
            &spec(
                "s3://backups/team/a/repositories/shop",
                "http://127.0.0.1:9000",
            ),
            &locations,
        )
        .unwrap();
        for (url, endpoint) in [
            ("/var/lib/ferry/repo", "http://127.0.0.1:9000"),
            (
                "s3://backups/team/a/repositories/shop",
                "http://attacker.example",
            ),
            ("s3://backups/team/a/repositories/shop", ""),
            (
                "s3://other/team/a/repositories/shop",
                "http://127.0.0.1:9000",
            ),
            (
                "s3://backups/team/b/repositories/shop",
                "http://127.0.0.1:9000",
            ),
            ("s3://backups/team/a/repositories/", "http://127.0.0.1:9000"),
            (
                "s3://backups/team/a/repositories/a/b",
                "http://127.0.0.1:9000",
            ),
        ] {
            let refused = repository_in_locations(&spec(url, endpoint), &locations).unwrap_err();
            assert_eq!(
                refused.code(),
                tonic::Code::PermissionDenied,
                "{url} {endpoint}"
            );
        }
    }

    #[test]
    fn data_mover_errors_keep_their_meaning() {
        assert_eq!(status(Error::Cancelled).code(), tonic::Code::Cancelled);
        assert_eq!(
            status(Error::WrongPassword).code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            status(Error::BackendTransient {
                message: "503".into()
            })
            .code(),
            tonic::Code::Unavailable
        );
    }
}
