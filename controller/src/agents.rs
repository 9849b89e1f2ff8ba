//! The node agents, seen from the controller: the repository password, finding the agent of a node through its Lease, and the file-level backup
//! tasks it hands them. A task runs in a tokio task of its own; the Backup reconciler only looks at
//! how it is doing, so a restart of the controller loses nothing but the running attempt, which it
//! starts again (the data mover makes a repeated backup cheap).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::agent::v1::agent_client::AgentClient;
use ferry_protocol::agent::v1::{
    BackupVolumeRequest, Progress, Repository, RestoreVolumeRequest, TaskResult, task_update,
};
use ferry_protocol::agent::{ADDRESS_ANNOTATION, TlsCredentials, lease_name};
use ferry_protocol::crd::BackupStorageLocation;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use crate::Locations;
use crate::context::Context;
use crate::error::{Error, Result};

/// The Secret holding the password of the repositories the agents write; a user may create it
/// (key `password`) before the first backup, else the controller makes a random one.
pub const REPOSITORY_PASSWORD_SECRET: &str = "ferry-repository-password";
/// The key of the installation's key in its Secret.
pub const PASSWORD_KEY: &str = "password";

/// How an agent's task is doing, as far as this controller process knows.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskState {
    /// Started; the agent's latest progress report, once it sent one.
    Running(Option<Progress>),
    Done(TaskResult),
    /// The agent cannot start yet (the kubelet has not mounted the volume; the agent is restarting
    /// and cannot be reached while its Lease is still fresh; an earlier attempt still runs there):
    /// not an attempt.
    NotReady(String),
    /// The attempt failed; `retryable` when another attempt may succeed (an agent restarted, the
    /// network failed) rather than the request being wrong.
    Failed {
        message: String,
        retryable: bool,
    },
}

/// The Backup or Restore (by name) whose reconciler follows a task: woken when the task ends, so
/// that it records the outcome at once rather than at its next poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOwner {
    Backup(String),
    Restore(String),
}

/// The agent tasks started by this process, by task id, and the owners of those that ended.
#[derive(Debug, Clone)]
pub struct AgentTasks {
    states: Arc<Mutex<HashMap<String, TaskState>>>,
    ended: tokio::sync::mpsc::UnboundedSender<TaskOwner>,
    ended_owners: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<TaskOwner>>>>,
}

impl Default for AgentTasks {
    fn default() -> Self {
        let (ended, ended_owners) = tokio::sync::mpsc::unbounded_channel();
        AgentTasks {
            states: Default::default(),
            ended,
            ended_owners: Arc::new(Mutex::new(Some(ended_owners))),
        }
    }
}

impl AgentTasks {
    pub fn state(&self, task_id: &str) -> Option<TaskState> {
        self.states
            .lock()
            .expect("agent tasks")
            .get(task_id)
            .cloned()
    }

    fn set(&self, task_id: &str, state: TaskState) {
        self.states
            .lock()
            .expect("agent tasks")
            .insert(task_id.to_owned(), state);
    }

    /// Forgets a finished task once its outcome is recorded.
    pub fn forget(&self, task_id: &str) {
        self.states.lock().expect("agent tasks").remove(task_id);
    }

    /// The owners of tasks as they end, for the reconcilers to be woken by; the first caller gets
    /// them, later ones `None`.
    pub fn ended_owners(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<TaskOwner>> {
        self.ended_owners.lock().expect("agent tasks").take()
    }
}

/// The installation's key (the Secret `ferry-repository-password`): it opens the node agents'
/// repositories and seals what the controller writes to the bucket. The user's, or one made at
/// random the first time and kept. Never a new one while backups or repositories exist in
/// `location`: they were sealed with the key of the installation that wrote them (an earlier
/// cluster's, after a disaster), which no new key opens, so the user must bring that one.
pub async fn repository_password(
    locations: &Locations,
    location: &BackupStorageLocation,
) -> Result<String> {
    let secrets: Api<Secret> = Api::namespaced(locations.client().clone(), locations.namespace());
    if let Some(secret) = secrets.get_opt(REPOSITORY_PASSWORD_SECRET).await? {
        let password = secret
            .data
            .and_then(|mut data| data.remove(PASSWORD_KEY))
            .and_then(|value| String::from_utf8(value.0).ok())
            .filter(|p| !p.is_empty());
        return password.ok_or_else(|| {
            Error::Validation(vec![format!(
                "Secret {}/{REPOSITORY_PASSWORD_SECRET} has no UTF-8 key {PASSWORD_KEY:?}; the repositories cannot be opened",
                locations.namespace()
            )])
        });
    }
    // Backups and repositories in the bucket were sealed and encrypted with the key of the
    // installation that wrote them.
    let store = locations.bucket(location).await?;
    let mut existing = store
        .list_dirs(&ferry_protocol::layout::repositories_prefix(store.prefix()))
        .await?;
    existing.extend(
        store
            .list_dirs(&ferry_protocol::layout::backups_prefix(store.prefix()))
            .await?,
    );
    if !existing.is_empty() {
        return Err(Error::MissingRepositoryPassword(missing_password_message(
            locations, location, &existing,
        )));
    }
    let password = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(REPOSITORY_PASSWORD_SECRET.to_owned()),
            labels: Some([("app.kubernetes.io/name".to_owned(), "ferry".to_owned())].into()),
            ..Default::default()
        },
        data: Some(
            [(
                PASSWORD_KEY.to_owned(),
                ByteString(password.clone().into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::warn!(
                message = "made this installation's key; keep a copy outside the cluster (`ferry key export`): without it no backup and no volume repository can be read after the cluster is lost",
                secret = %format!("{}/{REPOSITORY_PASSWORD_SECRET}", locations.namespace()),
            );
            Ok(password)
        }
        // Made meanwhile by another controller: use that one.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Box::pin(repository_password(locations, location)).await
        }
        Err(error) => Err(error.into()),
    }
}

/// Why there is no key for the backups and repositories `existing` (keys of their directories),
/// and what the user does about it.
fn missing_password_message(
    locations: &Locations,
    location: &BackupStorageLocation,
    existing: &[String],
) -> String {
    let storage = &location.spec.object_storage;
    let place = match storage.prefix.as_deref().map(|p| p.trim_matches('/')) {
        Some(prefix) if !prefix.is_empty() => format!("s3://{}/{prefix}", storage.bucket),
        _ => format!("s3://{}", storage.bucket),
    };
    let mut names: Vec<&str> = existing
        .iter()
        .filter_map(|dir| dir.trim_end_matches('/').rsplit('/').next())
        .take(5)
        .collect();
    if existing.len() > names.len() {
        names.push("...");
    }
    format!(
        "Secret {namespace}/{REPOSITORY_PASSWORD_SECRET} (key {PASSWORD_KEY:?}) does not exist, but storage \
         location {name} ({place}) holds {count} backup(s) and volume repositories ({names}), sealed and \
         encrypted with the key of the installation that wrote them. Ferry does not make a new key, \
         which could not open them: create the Secret with the key kept from that installation \
         (`ferry key export` printed it there; kubectl -n {namespace} create secret generic \
         {REPOSITORY_PASSWORD_SECRET} --from-file={PASSWORD_KEY}=<file>), then create the backup or \
         restore again",
        namespace = locations.namespace(),
        name = location.name_any(),
        count = existing.len(),
        names = names.join(", "),
    )
}

/// Where the repository of `namespace`'s volumes is in a storage location:
/// `s3://<bucket>/<prefix>/repositories/<namespace>`.
pub fn repository_url(location: &BackupStorageLocation, namespace: &str) -> String {
    let storage = &location.spec.object_storage;
    format!(
        "s3://{}/{}{namespace}",
        storage.bucket,
        ferry_protocol::layout::repositories_prefix(storage.prefix.as_deref())
    )
}

/// The repository of `namespace`'s volumes in a storage location, as the agents are told it.
pub async fn repository(
    locations: &Locations,
    location: &BackupStorageLocation,
    namespace: &str,
) -> Result<Repository> {
    let spec = &location.spec;
    let credentials = locations.agent_credentials(location, namespace).await?;
    Ok(Repository {
        url: repository_url(location, namespace),
        s3_endpoint: spec.endpoint.clone().unwrap_or_default(),
        s3_region: spec.region.clone().unwrap_or_default(),
        s3_path_style: spec.force_path_style.unwrap_or(false),
        access_key_id: credentials
            .as_ref()
            .map(|c| c.access_key_id().to_owned())
            .unwrap_or_default(),
        secret_access_key: credentials
            .as_ref()
            .map(|c| c.secret_access_key().to_owned())
            .unwrap_or_default(),
        session_token: credentials
            .as_ref()
            .and_then(|c| c.session_token().map(str::to_owned))
            .unwrap_or_default(),
        password: repository_password(locations, location).await?,
        s3_ca_bundle: spec.object_storage.ca_bundle.clone().unwrap_or_default(),
        s3_server_side_encryption: spec
            .object_storage
            .server_side_encryption
            .map(|algorithm| algorithm.as_str().to_owned())
            .unwrap_or_default(),
        s3_kms_key_id: spec.object_storage.kms_key_id.clone().unwrap_or_default(),
    })
}

/// Removes the snapshots a backup (by its uid) wrote into the pod volume repositories of
/// `records`, found by their tag so that one an interrupted attempt left behind goes too; returns
/// how many. Their data is reclaimed by the next repository maintenance.
pub async fn forget_backup_snapshots(
    locations: &Locations,
    location: &BackupStorageLocation,
    records: &ferry_protocol::volume::VolumeRecords,
    backup_uid: &str,
) -> Result<usize> {
    let urls: std::collections::BTreeSet<&str> = records
        .volumes
        .iter()
        .filter_map(|r| r.file_system.as_ref())
        .map(|fs| fs.repository.as_str())
        .collect();
    let mut forgotten = 0;
    for url in urls {
        let namespace = url.rsplit('/').next().unwrap_or_default();
        let spec = repository(locations, location, namespace).await?;
        let tag = format!("backup-uid={backup_uid}");
        let url = url.to_owned();
        let removed = tokio::task::spawn_blocking(move || {
            let options = ferry_protocol::agent::s3_options(&spec)
                .map_err(ferry_mover::Error::InvalidArgument)?;
            let backend = ferry_mover::open_backend(&spec.url, &options)?;
            let repository = match ferry_mover::Repository::open_without_index(
                backend,
                spec.password.as_bytes(),
            ) {
                Ok(repository) => Arc::new(repository),
                // Nothing was ever written there.
                Err(ferry_mover::Error::NoRepository { .. }) => return Ok(Vec::new()),
                Err(error) => return Err(error),
            };
            // A prune holding the repository makes this step fail now; the deletion is retried.
            ferry_mover::forget_tagged(&repository, &tag, Duration::ZERO)
        })
        .await
        .map_err(|source| Error::Task {
            task: "forgetting snapshots",
            source,
        })?
        .map_err(|source| Error::Repository { url, source })?;
        forgotten += removed.len();
    }
    Ok(forgotten)
}

/// Where the agent of `node` listens, if it is alive (its Lease renewed within its duration).
pub async fn agent_address(ctx: &Context, node: &str) -> std::result::Result<String, String> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let name = lease_name(node);
    let lease = leases
        .get_opt(&name)
        .await
        .map_err(|error| format!("reading Lease {name}: {error}"))?
        .ok_or_else(|| format!("no agent runs on node {node} (no Lease {name}); is the ferry-agent DaemonSet there?"))?;
    let spec = lease.spec.clone().unwrap_or_default();
    // Wall time, not the context's clock: the agent renews its Lease by wall time.
    if !crate::leader::is_held(&spec, 30, jiff::Timestamp::now()) {
        return Err(format!(
            "the agent on node {node} stopped renewing its Lease {name}; it is down"
        ));
    }
    lease
        .annotations()
        .get(ADDRESS_ANNOTATION)
        .cloned()
        .ok_or_else(|| format!("Lease {name} has no {ADDRESS_ANNOTATION} annotation"))
}

/// What an agent task does.
#[derive(Debug, Clone)]
pub enum AgentRequest {
    Backup(BackupVolumeRequest),
    Restore(RestoreVolumeRequest),
}

/// Starts `request` on the agent of `node`; its outcome shows in `ctx.agent_tasks` under
/// `task_id`, and `owner` is woken when it is there.
pub async fn start_task(
    ctx: &Context,
    task_id: &str,
    node: &str,
    request: AgentRequest,
    owner: TaskOwner,
) {
    let tasks = ctx.agent_tasks.clone();
    let failed = |message: String, retryable: bool| TaskState::Failed { message, retryable };
    let address = match agent_address(ctx, node).await {
        Ok(address) => address,
        Err(message) => return tasks.set(task_id, failed(message, true)),
    };
    let tls = match crate::certificates::controller_identity(ctx).await {
        Ok(tls) => tls,
        Err(error) => return tasks.set(task_id, failed(error.to_string(), true)),
    };
    tasks.set(task_id, TaskState::Running(None));
    let task_id = task_id.to_owned();
    let node = node.to_owned();
    tokio::spawn(async move {
        let report = |progress| tasks.set(&task_id, TaskState::Running(Some(progress)));
        let state = match run_task(&address, &node, tls, request, report).await {
            Ok(result) => TaskState::Done(result),
            Err(TaskError::Unreachable(error)) => TaskState::NotReady(format!(
                "agent of node {node} at {address} unreachable: {}",
                ferry_mover::DisplayChain(&error)
            )),
            Err(TaskError::Status(status))
                if matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists
                ) =>
            {
                TaskState::NotReady(format!("agent at {address}: {}", status.message()))
            }
            Err(TaskError::Status(status)) => {
                let retryable = matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Unknown
                        | tonic::Code::Aborted
                        | tonic::Code::Cancelled
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::ResourceExhausted
                );
                failed(
                    format!("agent at {address}: {}", status.message()),
                    retryable,
                )
            }
        };
        tasks.set(&task_id, state);
        // Nobody listens when no controller runs in this process (the CLI).
        let _ = tasks.ended.send(owner);
    });
}

/// Why a task's attempt ended without a result.
enum TaskError {
    /// No connection: the agent is down or restarting. While its Lease is fresh it may be back
    /// soon, so this is not an attempt; once the Lease expires, [`agent_address`] fails instead.
    Unreachable(tonic::transport::Error),
    /// The agent refused the task or failed it, or the stream broke off.
    Status(tonic::Status),
}

impl From<tonic::Status> for TaskError {
    fn from(status: tonic::Status) -> Self {
        TaskError::Status(status)
    }
}

async fn run_task(
    address: &str,
    node: &str,
    tls: TlsCredentials,
    request: AgentRequest,
    report: impl Fn(Progress),
) -> std::result::Result<TaskResult, TaskError> {
    let channel = tonic::transport::Channel::from_shared(format!("https://{address}"))
        .map_err(|error| tonic::Status::invalid_argument(error.to_string()))?
        .tls_config(tls.client_config(node))
        .map_err(|error| tonic::Status::internal(error.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(TaskError::Unreachable)?;
    let mut client = AgentClient::new(channel);
    let mut stream = match request {
        AgentRequest::Backup(request) => client.backup_volume(request).await?,
        AgentRequest::Restore(request) => client.restore_volume(request).await?,
    }
    .into_inner();
    while let Some(update) = stream.message().await? {
        match update.update {
            Some(task_update::Update::Result(result)) => return Ok(result),
            Some(task_update::Update::Progress(progress)) => report(progress),
            None => {}
        }
    }
    Err(tonic::Status::unavailable("the agent ended the task without a result").into())
}
