//! A repository in an S3 (or S3-compatible) bucket.
//!
//! Retries live in one place, [`S3Backend::retry`]: every operation (a request and the reading of
//! its answer's body, together) is one attempt; an attempt that fails transiently is tried again
//! after an exponential, jittered wait, until it succeeds, fails for good, or runs out of
//! attempts or of time. The SDK's own retries are off, so that attempts do not multiply (ours
//! times the SDK's) and so that the reading of a body, which the SDK does not retry, is covered
//! too. Errors are classified once for all of Ferry, in [`crate::s3::classify`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    ConfigBag, Intercept, RuntimeComponents, StalledStreamProtectionConfig, retry::RetryConfig,
};
use aws_sdk_s3::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Backend, Kind, ObjectInfo};
use crate::error::{DisplayChain, Error, Result};
use crate::s3;

/// How to reach an S3-compatible store, and how patient to be with it. Credentials come from the
/// standard AWS chain (env, profile, web identity) unless given explicitly.
///
/// Every operation (one request and the reading of its answer; each part of a multipart upload
/// is an operation of its own) is tried at most `max_attempts` times, each attempt within its own
/// timeout, and the whole operation within `operation_timeout`. An attempt that moves `n` bytes
/// gets `attempt_timeout + n / min_throughput`: a 16 MiB pack on a slow link is not cut off, while
/// a transfer that stops moving is, after `stall_timeout`, whatever its size.
#[derive(Debug, Clone)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub credentials: Option<aws_credential_types::Credentials>,
    /// Objects at least this large are uploaded in parts.
    pub multipart_threshold: u64,
    pub part_size: u64,
    /// Attempts at each operation, the first included; only transient failures (network errors,
    /// timeouts, 5xx, 429 and throttling, a cut-off answer) are tried again. Default 6.
    pub max_attempts: u32,
    /// The wait before the second attempt; it doubles at each further one up to `max_backoff`,
    /// and each wait gets a random extra of up to as much again (jitter), so that agents that
    /// failed together do not retry together. Defaults 200 ms and 10 s.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The time allowed to open a connection. Default 5 s.
    pub connect_timeout: Duration,
    /// What every attempt gets whatever it moves: to be answered, and then to receive the answer's
    /// body, each time plus the body's bytes at `min_throughput`. Default 30 s.
    pub attempt_timeout: Duration,
    /// The slowest transfer an attempt tolerates, in bytes per second. Default 128 KiB/s: an
    /// attempt to upload a 16 MiB pack gets 30 + 128 s.
    pub min_throughput: u64,
    /// A transfer that moves no byte for this long is cut off (and tried again) whatever its size
    /// (the SDK's stalled-stream protection). Default 20 s.
    pub stall_timeout: Duration,
    /// The limit of a whole operation, every attempt and wait included; an operation that moves
    /// `n` bytes gets `n / min_throughput` more. Default 10 min.
    pub operation_timeout: Duration,
    /// PEM of the only CAs the store's certificate may chain to (a private store); default: the
    /// system's roots.
    pub ca_bundle: Option<String>,
    /// The store's own encryption at rest of every object written; default: whatever the
    /// bucket does.
    pub server_side_encryption: Option<s3::ServerSideEncryption>,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: "us-east-1".into(),
            path_style: false,
            credentials: None,
            multipart_threshold: 64 * 1024 * 1024,
            part_size: 16 * 1024 * 1024,
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(30),
            min_throughput: 128 * 1024,
            stall_timeout: Duration::from_secs(20),
            operation_timeout: Duration::from_secs(600),
            ca_bundle: None,
            server_side_encryption: None,
        }
    }
}

/// A repository under a prefix of an S3 bucket. A small runtime of its own lets the synchronous
/// [`Backend`] trait drive the SDK from the pipeline's threads.
pub struct S3Backend {
    runtime: tokio::runtime::Runtime,
    client: Client,
    bucket: String,
    prefix: String,
    options: S3Options,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Backend({})", self.location())
    }
}

/// One attempt at an operation: its number (the first is 1) and when the operation must be over.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    number: u32,
    deadline: Instant,
}

impl S3Backend {
    pub fn new(bucket: &str, prefix: &str, options: &S3Options) -> Result<S3Backend> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-s3")
            .enable_all()
            .build()
            .map_err(|error| Error::Other(format!("starting the S3 client's runtime: {error}")))?;
        let client = runtime.block_on(async {
            let shared = s3::shared_config(&options.region, options.credentials.clone()).await;
            let config = s3::client_config(
                &shared,
                options.endpoint.as_deref(),
                options.path_style,
                options.ca_bundle.as_deref(),
            )
            .map_err(Error::InvalidArgument)?
            // Our own retry loop tries whole operations again, body included (see the module).
            .retry_config(RetryConfig::disabled())
            // Attempts are timed by the retry loop, which knows how many bytes each moves.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(options.connect_timeout)
                    .build(),
            )
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(options.stall_timeout)
                    .build(),
            );
            Ok::<_, Error>(Client::from_conf(config.build()))
        })?;
        Ok(S3Backend {
            runtime,
            client,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            options: options.clone(),
        })
    }

    /// The server-side encryption headers of every write.
    fn encryption(
        &self,
    ) -> (
        Option<aws_sdk_s3::types::ServerSideEncryption>,
        Option<String>,
    ) {
        s3::ServerSideEncryption::request_headers(self.options.server_side_encryption.as_ref())
    }

    fn key(&self, kind: Kind, name: &str) -> String {
        if self.prefix.is_empty() {
            kind.path_of(name)
        } else {
            format!("{}/{}", self.prefix, kind.path_of(name))
        }
    }

    /// The time `bytes` take at the slowest throughput tolerated.
    fn transfer_time(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.options.min_throughput.max(1) as f64)
    }

    /// When a step of `attempt` that moves `bytes` must be over.
    fn attempt_limit(&self, attempt: Attempt, bytes: u64) -> Instant {
        (Instant::now() + self.options.attempt_timeout + self.transfer_time(bytes))
            .min(attempt.deadline)
    }

    /// Runs `attempt` until it succeeds or fails other than transiently, or until the attempts or
    /// the operation's time (see [`S3Options::operation_timeout`]) run out; `bytes` is what the
    /// operation moves. The one retry policy of the backend.
    async fn retry<T, F, Fut>(&self, what: &str, bytes: u64, attempt: F) -> Result<T>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let budget = self.options.operation_timeout + self.transfer_time(bytes);
        self.retry_within(what, budget, attempt).await
    }

    async fn retry_within<T, F, Fut>(
        &self,
        what: &str,
        budget: Duration,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let deadline = started + budget;
        let mut waits = ExponentialBuilder::new()
            .with_min_delay(self.options.initial_backoff)
            .with_max_delay(self.options.max_backoff)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        let mut number = 1;
        loop {
            match attempt(Attempt { number, deadline }).await {
                Err(Error::BackendTransient { message }) => {
                    let wait = waits.next().unwrap_or(self.options.max_backoff);
                    if number >= self.options.max_attempts.max(1)
                        || Instant::now() + wait >= deadline
                    {
                        return Err(Error::BackendTransient {
                            message: format!(
                                "{message} (gave up after {number} attempt{} in {:.1} s)",
                                if number == 1 { "" } else { "s" },
                                started.elapsed().as_secs_f64()
                            ),
                        });
                    }
                    debug!(
                        message = "S3 request failed; trying again",
                        what,
                        attempt = number,
                        error = %message,
                        wait_ms = wait.as_millis() as u64
                    );
                    tokio::time::sleep(wait).await;
                    number += 1;
                }
                other => return other,
            }
        }
    }

    /// `s3://bucket/key` as messages name it.
    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The SDK's error as the repository's, classified by [`s3::classify`].
    fn classify<E>(&self, operation: &str, key: &str, error: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let classified = s3::classify(&error);
        let detail = match (&classified.code, &classified.message, classified.status) {
            (Some(code), Some(text), Some(status)) => format!("{code}: {text} (HTTP {status})"),
            (Some(code), None, Some(status)) => format!("{code} (HTTP {status})"),
            (None, _, Some(status)) => format!("HTTP {status}"),
            _ => DisplayChain(&error).to_string(),
        };
        let message = format!("{operation} {}: {detail}", self.url(key));
        match classified.failure {
            s3::Failure::NotFound => Error::NotFound {
                name: key.to_owned(),
            },
            s3::Failure::Transient => Error::BackendTransient { message },
            s3::Failure::Permanent => Error::Backend { message },
        }
    }

    fn timed_out(&self, operation: &str, key: &str, started: Instant) -> Error {
        Error::BackendTransient {
            message: format!(
                "{operation} {}: no answer within {:.1} s",
                self.url(key),
                started.elapsed().as_secs_f64()
            ),
        }
    }

    /// Sends a request, classifying its error, within `limit`.
    async fn send<T, E>(
        &self,
        limit: Instant,
        operation: &str,
        key: &str,
        request: impl Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        match tokio::time::timeout_at(limit, request).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => Err(self.classify(operation, key, error)),
            Err(_) => Err(self.timed_out(operation, key, started)),
        }
    }

    /// One attempt at reading an object or a range of it: the request, then its body, each within
    /// its time.
    async fn get_once(
        &self,
        attempt: Attempt,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Vec<u8>> {
        let mut request = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some((offset, length)) = range {
            request = request.range(format!("bytes={}-{}", offset, offset + length - 1));
        }
        let response = self
            .send(self.attempt_limit(attempt, 0), "GET", key, request.send())
            .await?;
        let length = response.content_length().unwrap_or(0).max(0) as u64;
        let started = Instant::now();
        match tokio::time::timeout_at(self.attempt_limit(attempt, length), response.body.collect())
            .await
        {
            Ok(Ok(body)) => Ok(body.into_bytes().to_vec()),
            Ok(Err(error)) => Err(Error::BackendTransient {
                message: format!(
                    "GET {}: reading the answer: {}",
                    self.url(key),
                    DisplayChain(&error)
                ),
            }),
            Err(_) => Err(self.timed_out("GET", key, started)),
        }
    }

    async fn put_body(&self, key: &str, body: Bytes) -> Result<()> {
        self.retry(key, body.len() as u64, |attempt| {
            let body = body.clone();
            async move {
                let limit = self.attempt_limit(attempt, body.len() as u64);
                let request = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .set_server_side_encryption(self.encryption().0)
                    .set_ssekms_key_id(self.encryption().1)
                    .body(ByteStream::from(body))
                    .send();
                self.send(limit, "PUT", key, request).await.map(|_| ())
            }
        })
        .await
    }

    async fn multipart_upload(&self, key: &str, path: &Path, size: u64) -> Result<()> {
        // An answer lost after the upload was created leaves that upload behind: remove_leftovers
        // aborts it later.
        let upload_id = self
            .retry(key, 0, |attempt| async move {
                let request = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .set_server_side_encryption(self.encryption().0)
                    .set_ssekms_key_id(self.encryption().1)
                    .send();
                let created = self
                    .send(
                        self.attempt_limit(attempt, 0),
                        "CREATE UPLOAD",
                        key,
                        request,
                    )
                    .await?;
                created
                    .upload_id()
                    .map(str::to_owned)
                    .ok_or_else(|| Error::Backend {
                        message: format!(
                            "CREATE UPLOAD {}: no upload id in the answer",
                            self.url(key)
                        ),
                    })
            })
            .await?;
        let upload_id = upload_id.as_str();
        let result = async {
            let mut parts = Vec::new();
            let mut offset = 0;
            let mut number = 1;
            while offset < size {
                let length = self.options.part_size.min(size - offset);
                // Each part is an operation of its own, tried again on its own.
                let e_tag = self
                    .retry(key, length, |attempt| async move {
                        let body = ByteStream::read_from()
                            .path(path)
                            .offset(offset)
                            .length(Length::Exact(length))
                            .build()
                            .await
                            .map_err(|error| Error::Other(format!("{}: {error}", path.display())))?;
                        let request = self
                            .client
                            .upload_part()
                            .bucket(&self.bucket)
                            .key(key)
                            .upload_id(upload_id)
                            .part_number(number)
                            .body(body)
                            .send();
                        let part = self
                            .send(self.attempt_limit(attempt, length), "UPLOAD PART", key, request)
                            .await?;
                        Ok(part.e_tag().map(str::to_owned))
                    })
                    .await?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(e_tag)
                        .build(),
                );
                offset += length;
                number += 1;
            }
            let parts = CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build();
            // The store assembles the object's bytes before it answers: its time is the whole
            // object's.
            self.retry(key, size, |attempt| {
                let parts = parts.clone();
                async move {
                    let limit = self.attempt_limit(attempt, size);
                    let request = self
                        .client
                        .complete_multipart_upload()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .multipart_upload(parts)
                        .send();
                    let started = Instant::now();
                    match tokio::time::timeout_at(limit, request).await {
                        Ok(Ok(_)) => Ok(()),
                        // An earlier attempt completed the upload and its answer was lost: the
                        // upload is gone and the object is there. The object is taken for ours when
                        // its size is ours: packs are named by the hash of their content, so another
                        // writer of this key wrote the same bytes.
                        Ok(Err(error))
                            if attempt.number > 1 && error.code() == Some("NoSuchUpload") =>
                        {
                            let head = self.client.head_object().bucket(&self.bucket).key(key).send();
                            match self.send(limit, "HEAD", key, head).await {
                                Ok(head) if head.content_length() == Some(size as i64) => Ok(()),
                                Ok(_) | Err(Error::NotFound { .. }) => Err(Error::Backend {
                                    message: format!(
                                        "COMPLETE UPLOAD {}: the upload is gone and the object is not what it uploaded (was the upload aborted?)",
                                        self.url(key)
                                    ),
                                }),
                                Err(error) => Err(error),
                            }
                        }
                        Ok(Err(error)) => Err(self.classify("COMPLETE UPLOAD", key, error)),
                        Err(_) => Err(self.timed_out("COMPLETE UPLOAD", key, started)),
                    }
                }
            })
            .await
        }
        .await;
        if result.is_err() {
            // Parts of an abandoned upload are billed until aborted. Briefly: what this leaves,
            // remove_leftovers aborts later.
            let _ = self
                .retry_within(key, self.options.attempt_timeout, |attempt| async move {
                    self.abort_upload(attempt, key, upload_id).await
                })
                .await;
        }
        result
    }

    async fn abort_upload(&self, attempt: Attempt, key: &str, upload_id: &str) -> Result<()> {
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send();
        self.send(self.attempt_limit(attempt, 0), "ABORT UPLOAD", key, request)
            .await
            .map(|_| ())
    }

    /// Whether `key` is where this repository keeps an object (so that leftovers of anything else
    /// in the bucket are never touched).
    fn is_repository_key(&self, key: &str) -> bool {
        let relative = if self.prefix.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(&self.prefix)
                .and_then(|rest| rest.strip_prefix('/'))
        };
        relative.is_some_and(|relative| {
            relative == "config"
                || [
                    Kind::Key,
                    Kind::Pack,
                    Kind::Index,
                    Kind::Snapshot,
                    Kind::Lock,
                    Kind::Dictionary,
                ]
                .iter()
                .any(|kind| {
                    relative
                        .strip_prefix(kind.prefix())
                        .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
                })
        })
    }

    /// Multipart uploads of this repository's keys that the store lists: key, upload id, and
    /// their age by the store's own clock (`None` when it cannot tell).
    async fn list_uploads(&self) -> Result<Vec<(String, String, Option<Duration>)>> {
        let repository_prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        // S3 lists the uploads of every key under a prefix. MinIO lists under a prefix only the
        // uploads of the key named exactly that, but lists every upload of the bucket (those
        // since it started) when given no prefix (cmd/erasure-server-pool.go,
        // ListMultipartUploads). So both are listed, and filtered here.
        let mut listings = vec![repository_prefix];
        if !listings[0].is_empty() {
            listings.push(String::new());
        }
        let mut found = BTreeMap::new();
        for prefix in &listings {
            let mut markers: (Option<String>, Option<String>) = (None, None);
            loop {
                let clock = StoreClock::default();
                let page = self
                    .retry(prefix, 0, |attempt| {
                        let (clock, markers) = (clock.clone(), markers.clone());
                        async move {
                            let mut request = self
                                .client
                                .list_multipart_uploads()
                                .bucket(&self.bucket)
                                .set_key_marker(markers.0)
                                .set_upload_id_marker(markers.1);
                            if !prefix.is_empty() {
                                request = request.prefix(prefix);
                            }
                            let request = request.customize().interceptor(clock).send();
                            self.send(
                                self.attempt_limit(attempt, 0),
                                "LIST UPLOADS",
                                prefix,
                                request,
                            )
                            .await
                        }
                    })
                    .await?;
                // The store's time when it answered, from the answer's Date: ages are judged by
                // the store's clock only, never by ours against the store's (see
                // remove_leftovers).
                let now = clock.time();
                for upload in page.uploads() {
                    let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                        continue;
                    };
                    if !self.is_repository_key(key) {
                        continue;
                    }
                    let initiated = upload
                        .initiated()
                        .and_then(|time| SystemTime::try_from(*time).ok());
                    let age = match (now, initiated) {
                        (Some(now), Some(initiated)) => {
                            Some(now.duration_since(initiated).unwrap_or_default())
                        }
                        _ => None,
                    };
                    found.insert(id.to_owned(), (key.to_owned(), age));
                }
                let next = (
                    page.next_key_marker().map(str::to_owned),
                    page.next_upload_id_marker().map(str::to_owned),
                );
                if page.is_truncated() != Some(true) || next.0.is_none() || next == markers {
                    break;
                }
                markers = next;
            }
        }
        Ok(found
            .into_iter()
            .map(|(id, (key, age))| (key, id, age))
            .collect())
    }
}

/// Keeps the `Date` header of the last answer an operation got: the store's own clock.
#[derive(Debug, Clone, Default)]
struct StoreClock(Arc<Mutex<Option<String>>>);

impl StoreClock {
    fn time(&self) -> Option<SystemTime> {
        let date = self.0.lock().expect("store clock").clone()?;
        let time = DateTime::from_str(&date, DateTimeFormat::HttpDate).ok()?;
        SystemTime::try_from(time).ok()
    }
}

impl Intercept for StoreClock {
    fn name(&self) -> &'static str {
        "ferry-store-clock"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        if let Some(date) = context.response().headers().get("date") {
            *self.0.lock().expect("store clock") = Some(date.to_owned());
        }
        Ok(())
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn put(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<()> {
        let key = self.key(kind, name);
        self.runtime
            .block_on(self.put_body(&key, Bytes::copy_from_slice(bytes)))
    }

    fn put_new(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<bool> {
        let key = self.key(kind, name);
        let key = key.as_str();
        let body = Bytes::copy_from_slice(bytes);
        self.runtime
            .block_on(self.retry(key, bytes.len() as u64, |attempt| {
                let body = body.clone();
                async move {
                    let limit = self.attempt_limit(attempt, body.len() as u64);
                    let request = self
                        .client
                        .put_object()
                        .bucket(&self.bucket)
                        .key(key)
                        .set_server_side_encryption(self.encryption().0)
                        .set_ssekms_key_id(self.encryption().1)
                        // S3's conditional write: refused with 412 when the key exists (409 while
                        // another conditional write of it is under way, which then wins).
                        .if_none_match("*")
                        .body(ByteStream::from(body.clone()))
                        .send();
                    let started = Instant::now();
                    let error = match tokio::time::timeout_at(limit, request).await {
                        Ok(Ok(_)) => return Ok(true),
                        Ok(Err(error)) => error,
                        Err(_) => return Err(self.timed_out("PUT (if absent)", key, started)),
                    };
                    let status = error.raw_response().map(|r| r.status().as_u16());
                    if !matches!(status, Some(409 | 412)) {
                        return Err(self.classify("PUT (if absent)", key, error));
                    }
                    if attempt.number == 1 {
                        return Ok(false);
                    }
                    // An earlier attempt may have created the object, its answer lost: then the
                    // object holds our bytes. Callers' bytes are unique (a random id, a random
                    // nonce), so equal bytes mean this call created it.
                    match self.get_once(attempt, key, None).await {
                        Ok(stored) => Ok(stored == body),
                        // Refused for a conflicting write that is not visible yet (or one deleted
                        // since): try again.
                        Err(Error::NotFound { .. }) => Err(Error::BackendTransient {
                            message: format!(
                                "PUT (if absent) {}: refused (HTTP {}) for a write not visible yet",
                                self.url(key),
                                status.unwrap_or_default()
                            ),
                        }),
                        Err(error) => Err(error),
                    }
                }
            }))
    }

    fn put_file(&self, kind: Kind, name: &str, path: &Path) -> Result<()> {
        let key = self.key(kind, name);
        let key = key.as_str();
        let size = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        self.runtime.block_on(async {
            if size >= self.options.multipart_threshold {
                self.multipart_upload(key, path, size).await
            } else {
                self.retry(key, size, |attempt| async move {
                    let body = ByteStream::from_path(path)
                        .await
                        .map_err(|error| Error::Other(format!("{}: {error}", path.display())))?;
                    let request = self
                        .client
                        .put_object()
                        .bucket(&self.bucket)
                        .key(key)
                        .set_server_side_encryption(self.encryption().0)
                        .set_ssekms_key_id(self.encryption().1)
                        .body(body)
                        .send();
                    self.send(self.attempt_limit(attempt, size), "PUT", key, request)
                        .await
                        .map(|_| ())
                })
                .await
            }
        })?;
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>> {
        let key = self.key(kind, name);
        let key = key.as_str();
        self.runtime
            .block_on(self.retry(key, 0, |attempt| async move {
                self.get_once(attempt, key, None).await
            }))
    }

    fn get_range(&self, kind: Kind, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(kind, name);
        let key = key.as_str();
        let bytes = self
            .runtime
            .block_on(self.retry(key, length, |attempt| async move {
                self.get_once(attempt, key, Some((offset, length))).await
            }))?;
        if bytes.len() as u64 != length {
            return Err(Error::corrupt(
                key,
                format!(
                    "shorter than expected: wanted bytes {offset}..{}",
                    offset + length
                ),
            ));
        }
        Ok(bytes)
    }

    fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        let prefix = if kind == Kind::Config {
            self.key(kind, "config")
        } else if self.prefix.is_empty() {
            format!("{}/", kind.prefix())
        } else {
            format!("{}/{}/", self.prefix, kind.prefix())
        };
        let prefix = prefix.as_str();
        self.runtime.block_on(async {
            let mut found = Vec::new();
            let mut token: Option<String> = None;
            loop {
                // Each page is an operation of its own, tried again on its own.
                let page = self
                    .retry(prefix, 0, |attempt| {
                        let token = token.clone();
                        async move {
                            let request = self
                                .client
                                .list_objects_v2()
                                .bucket(&self.bucket)
                                .prefix(prefix)
                                .set_continuation_token(token)
                                .send();
                            self.send(self.attempt_limit(attempt, 0), "LIST", prefix, request)
                                .await
                        }
                    })
                    .await?;
                for object in page.contents() {
                    let Some(key) = object.key() else { continue };
                    let name = key.rsplit('/').next().unwrap_or(key).to_owned();
                    if kind == Kind::Config && key != prefix {
                        continue;
                    }
                    let modified = object
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok());
                    found.push(ObjectInfo {
                        name,
                        size: object.size().unwrap_or(0) as u64,
                        modified,
                    });
                }
                match page.next_continuation_token() {
                    Some(next) if page.is_truncated() == Some(true) => {
                        token = Some(next.to_owned())
                    }
                    _ => break,
                }
            }
            Ok(found)
        })
    }

    fn delete(&self, kind: Kind, name: &str) -> Result<()> {
        let key = self.key(kind, name);
        let key = key.as_str();
        self.runtime
            .block_on(self.retry(key, 0, |attempt| async move {
                let request = self
                    .client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send();
                self.send(self.attempt_limit(attempt, 0), "DELETE", key, request)
                    .await
                    .map(|_| ())
            }))
    }

    fn exists(&self, kind: Kind, name: &str) -> Result<bool> {
        let key = self.key(kind, name);
        let key = key.as_str();
        let found = self
            .runtime
            .block_on(self.retry(key, 0, |attempt| async move {
                let request = self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send();
                self.send(self.attempt_limit(attempt, 0), "HEAD", key, request)
                    .await
                    .map(|_| ())
            }));
        match found {
            Ok(()) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Aborts the multipart uploads of this repository's keys that were started more than
    /// `older_than` ago: those of writers killed mid-upload, and those whose creation's answer was
    /// lost.
    ///
    /// Ages are judged by the store's clock alone: an upload's `Initiated` time against the
    /// `Date` of the very answer that listed it, both written by the store. Comparing `Initiated`
    /// with this machine's clock would abort a live upload whenever our clock runs ahead of the
    /// store's by more than `older_than` minus the upload's age. Without a `Date` (a store that
    /// sends none) nothing is aborted: better a leftover than a live upload cut.
    /// Some S3-compatible stores ignore `If-None-Match`; a racing creator's conditional PUT,
    /// sent before ours landed, lands within a request's time. Two seconds covers any PUT of a
    /// few hundred bytes that was not stalled.
    fn settle_time(&self) -> Duration {
        Duration::from_secs(2)
    }

    fn remove_leftovers(&self, older_than: Duration) -> Result<u64> {
        self.runtime.block_on(async {
            let uploads = self.list_uploads().await?;
            let mut aborted = 0;
            for (key, upload_id, age) in uploads {
                let Some(age) = age else {
                    warn!(
                        message = "the store gave no time with its list of multipart uploads; leaving them",
                        key
                    );
                    continue;
                };
                if age < older_than {
                    continue;
                }
                let (key, upload_id) = (key.as_str(), upload_id.as_str());
                match self
                    .retry(key, 0, |attempt| async move {
                        self.abort_upload(attempt, key, upload_id).await
                    })
                    .await
                {
                    Ok(()) => {
                        info!(
                            message = "aborted a multipart upload left behind",
                            key,
                            age_seconds = age.as_secs()
                        );
                        aborted += 1;
                    }
                    // Completed or aborted meanwhile.
                    Err(Error::NotFound { .. }) => {}
                    Err(Error::Backend { message }) if message.contains("NoSuchUpload") => {}
                    Err(error) => return Err(error),
                }
            }
            Ok(aborted)
        })
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::primitives::SdkBody;

    use super::*;

    /// A backend that is never asked anything over the network.
    fn backend(prefix: &str) -> S3Backend {
        let options = S3Options {
            endpoint: Some("http://127.0.0.1:9".into()),
            credentials: Some(aws_credential_types::Credentials::new(
                "id", "secret", None, None, "test",
            )),
            ..S3Options::default()
        };
        S3Backend::new("bucket", prefix, &options).unwrap()
    }

    fn answered(status: u16, code: Option<&str>) -> SdkError<GetObjectError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message("what the store said");
        if let Some(code) = code {
            meta = meta.code(code);
        }
        SdkError::service_error(
            GetObjectError::generic(meta.build()),
            HttpResponse::new(status.try_into().unwrap(), SdkBody::empty()),
        )
    }

    #[test]
    fn errors_are_classified_once_transient_not_found_or_permanent() {
        let s3 = backend("repo");
        let key = "repo/snapshots/abc";
        let classify = |error| s3.classify("GET", key, error);
        for (status, code) in [
            (503, Some("SlowDown")),
            (500, Some("InternalError")),
            (502, None),
            (429, None),
            (400, Some("RequestTimeout")),
        ] {
            match classify(answered(status, code)) {
                Error::BackendTransient { message } => {
                    assert!(
                        message.contains("s3://bucket/repo/snapshots/abc"),
                        "{message}"
                    );
                    assert!(message.contains(&status.to_string()), "{message}");
                }
                other => panic!("{status} {code:?}: {other:?}"),
            }
        }
        for (status, code) in [(404, Some("NoSuchKey")), (404, None)] {
            assert!(
                matches!(classify(answered(status, code)), Error::NotFound { name } if name == key)
            );
        }
        for (status, code) in [
            (404, Some("NoSuchBucket")),
            (404, Some("NoSuchUpload")),
            (403, Some("AccessDenied")),
            (412, Some("PreconditionFailed")),
            (400, Some("InvalidRange")),
        ] {
            assert!(
                matches!(classify(answered(status, code)), Error::Backend { .. }),
                "{status} {code:?}"
            );
        }
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        for error in [
            SdkError::dispatch_failure(ConnectorError::io(reset.into())),
            SdkError::timeout_error("no answer"),
            SdkError::response_error(
                "a cut-off answer",
                HttpResponse::new(200.try_into().unwrap(), SdkBody::empty()),
            ),
        ] {
            assert!(matches!(classify(error), Error::BackendTransient { .. }));
        }
    }

    #[test]
    fn an_attempt_gets_its_floor_plus_its_bytes_at_the_slowest_throughput() {
        let s3 = backend("");
        let options = S3Options::default();
        assert_eq!(s3.transfer_time(16 * 1024 * 1024), Duration::from_secs(128));
        s3.runtime.block_on(async {
            let far = Attempt {
                number: 1,
                deadline: Instant::now() + Duration::from_secs(3600),
            };
            let limit = s3.attempt_limit(far, 16 * 1024 * 1024) - Instant::now();
            let expected = options.attempt_timeout + Duration::from_secs(128);
            assert!(limit <= expected && limit > expected - Duration::from_secs(1));
            // Never past the operation's deadline.
            let near = Attempt {
                number: 2,
                deadline: Instant::now() + Duration::from_secs(5),
            };
            assert!(s3.attempt_limit(near, 16 * 1024 * 1024) <= near.deadline);
        });
    }

    #[test]
    fn leftovers_are_looked_for_among_the_repository_s_keys_only() {
        let s3 = backend("team/repo");
        for key in [
            "team/repo/config",
            "team/repo/data/ab/abcdef",
            "team/repo/index/1234",
            "team/repo/snapshots/1234",
            "team/repo/keys/1234",
            "team/repo/locks/1234",
        ] {
            assert!(s3.is_repository_key(key), "{key}");
        }
        for key in [
            "team/repo",
            "team/repo/",
            "team/repo/data/",
            "team/repo/other/file",
            "team/repo2/data/ab/abcdef",
            "team/repo-copy/config",
            "team/config",
            "data/ab/abcdef",
        ] {
            assert!(!s3.is_repository_key(key), "{key}");
        }
        let root = backend("");
        assert!(root.is_repository_key("data/ab/abcdef"));
        assert!(root.is_repository_key("config"));
        assert!(!root.is_repository_key("backups/shop-1/shop-1.tar.gz"));
    }
}
