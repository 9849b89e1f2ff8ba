//! The agent's gRPC service: backs up and restores the pod volumes of its node with the data
//! mover, a bounded number at a time, streaming progress to the controller.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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

use super::metrics::{AgentMetrics, TaskKind};
use super::volume_path;
use crate::{
    BackupOptions, Error, InitOptions, ParentChoice, ProgressEvent, Repository, RestoreOptions,
    S3Options, open_backend,
};

/// Where a restored volume's completion marker goes, inside the volume.
pub const MARKER_DIR: &str = ".ferry";
/// The tag that says which pod volume a snapshot is of, so the next backup finds its parent.
const POD_VOLUME_TAG: &str = "pod-volume=";

/// What the service needs to know about its node.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub node_name: String,
    /// The kubelet's `pods` directory, as mounted into the agent.
    pub pods_dir: PathBuf,
    /// Volume backups and restores run at once on this node; more wait their turn.
    pub max_tasks: usize,
}

pub struct AgentService {
    client: kube::Client,
    settings: Arc<AgentSettings>,
    slots: Arc<Semaphore>,
    /// Cancel flags of the running tasks, by task id.
    running: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    metrics: Arc<AgentMetrics>,
}

impl AgentService {
    pub fn new(client: kube::Client, settings: AgentSettings) -> AgentService {
        AgentService {
            client,
            slots: Arc::new(Semaphore::new(settings.max_tasks.max(1))),
            settings: Arc::new(settings),
            running: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// This service recording its tasks into `metrics`, which its caller serves.
    pub fn with_metrics(mut self, metrics: Arc<AgentMetrics>) -> AgentService {
        self.metrics = metrics;
        self
    }

    async fn resolve(&self, volume: Option<PodVolume>) -> Result<(PodVolume, PathBuf), Status> {
        let volume = volume.ok_or_else(|| Status::invalid_argument("no volume named"))?;
        let dir = volume_path::resolve(
            &self.client,
            &self.settings.pods_dir,
            &self.settings.node_name,
            &volume,
        )
        .await?;
        Ok((volume, dir.path))
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
        let metrics = self.metrics.clone();
        // Every line the task logs, on the blocking thread too, names it.
        let span = tracing::info_span!("task", task = %task_id, kind = %kind.as_str(), %what);
        let task_span = span.clone();
        let task = async move {
            let (outcome, ran) = match slots.acquire_owned().await {
                Ok(permit) => {
                    metrics.task_started();
                    let started = std::time::Instant::now();
                    let sender = updates.clone();
                    let cancel = cancel.clone();
                    let joined = tokio::task::spawn_blocking(move || {
                        let _in_task = task_span.enter();
                        let result = work(cancel, sender);
                        drop(permit);
                        result
                    })
                    .await;
                    let outcome = joined.unwrap_or_else(|error| {
                        Err(Status::internal(format!("the task panicked: {error}")))
                    });
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
        let (volume, dir) = self.resolve(request.volume).await?;
        let spec = request
            .repository
            .ok_or_else(|| Status::invalid_argument("no repository named"))?;
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
                .snapshots()
                .map_err(status)?
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
                ..Default::default()
            };
            let outcome = crate::backup(&repo, &dir, &options).map_err(status)?;
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
        let (volume, dir) = self.resolve(request.volume).await?;
        let spec = request
            .repository
            .ok_or_else(|| Status::invalid_argument("no repository named"))?;
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
            let options = RestoreOptions {
                incremental: request.in_place,
                delete: request.in_place,
                progress: Some(progress_sink(updates, errors.clone())),
                cancel: Some(cancel),
                ..Default::default()
            };
            let summary =
                crate::restore(&repo, &request.snapshot_id, &dir, &options).map_err(status)?;
            let mut errors = errors.lock().expect("errors").clone();
            errors.extend(
                summary
                    .damaged_files
                    .iter()
                    .map(|f| format!("{f}: damaged in the repository")),
            );
            if !request.marker.is_empty() {
                write_marker(&dir, &request.marker).map_err(|error| {
                    Status::internal(format!("writing the completion marker: {error}"))
                })?;
            }
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
    let options = s3_options(spec);
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
) -> Arc<dyn crate::ProgressSink> {
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

/// Writes `.ferry/<marker>` into the restored volume, durably: temp file, fsync, rename.
fn write_marker(dir: &std::path::Path, marker: &str) -> std::io::Result<()> {
    use std::io::Write;
    let marker_dir = dir.join(MARKER_DIR);
    std::fs::create_dir_all(&marker_dir)?;
    let temp = marker_dir.join(format!(".{marker}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(b"restored\n")?;
    file.sync_all()?;
    std::fs::rename(&temp, marker_dir.join(marker))?;
    std::fs::File::open(&marker_dir)?.sync_all()
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

/// How to reach the S3 store of a repository the controller names (its endpoint, region and the
/// credentials of its storage location).
pub fn s3_options(spec: &RepositorySpec) -> S3Options {
    let credentials = (!spec.access_key_id.is_empty()).then(|| {
        aws_credential_types::Credentials::new(
            &spec.access_key_id,
            &spec.secret_access_key,
            (!spec.session_token.is_empty()).then(|| spec.session_token.clone()),
            None,
            "ferry-controller",
        )
    });
    S3Options {
        endpoint: (!spec.s3_endpoint.is_empty()).then(|| spec.s3_endpoint.clone()),
        region: if spec.s3_region.is_empty() {
            S3Options::default().region
        } else {
            spec.s3_region.clone()
        },
        path_style: spec.s3_path_style,
        credentials,
        ..Default::default()
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
        write_marker(dir.path(), "r1.done").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(".ferry/r1.done")).unwrap(),
            "restored\n"
        );
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
