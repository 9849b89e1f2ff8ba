//! The object store behind a BackupStorageLocation: an S3 or S3-compatible bucket.
//!
//! The controller writes each backup's archive with a streaming multipart upload, so a backup of
//! any size needs memory for a few parts only, and reads archives as streams. The client and the
//! classification of errors are the data mover's ([`ferry_mover::s3`]), shared with the
//! repositories in the same bucket. A store with a [`SealKey`] ([`ObjectStore::sealed`]) seals
//! every object it writes and opens every object it reads ([`crate::seal`]); without one it moves
//! bytes as they are, for listing, deleting and validating.

use aws_credential_types::Credentials;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use ferry_mover::s3;
use tokio::io::AsyncRead;

use crate::error::{Error, Result};
use crate::seal::{self, SealKey, Sealer};

/// S3 requires every part of a multipart upload but the last to be at least 5 MiB.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// How to reach a bucket.
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    pub bucket: String,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    /// Explicit credentials; None uses the controller's own (environment, web identity, profile).
    pub credentials: Option<Credentials>,
    /// PEM of the only CAs the endpoint's certificate may chain to.
    pub ca_bundle: Option<String>,
    /// The store's encryption at rest of every object written.
    pub server_side_encryption: Option<s3::ServerSideEncryption>,
}

/// A bucket (and prefix) that backups are written to and read from.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    client: Client,
    config: StoreConfig,
    seal: Option<SealKey>,
}

impl ObjectStore {
    /// A client of the store; fails only on a CA bundle that holds no usable certificate.
    pub async fn connect(config: StoreConfig) -> Result<ObjectStore> {
        let region = config.region.as_deref().unwrap_or("us-east-1");
        let shared = s3::shared_config(region, config.credentials.clone()).await;
        let builder = s3::client_config(
            &shared,
            config.endpoint.as_deref(),
            config.force_path_style,
            config.ca_bundle.as_deref(),
        )
        .map_err(|error| Error::Validation(vec![format!("objectStorage.caBundle: {error}")]))?
        .retry_config(RetryConfig::standard().with_max_attempts(6));
        Ok(ObjectStore {
            client: Client::from_conf(builder.build()),
            config,
            seal: None,
        })
    }

    /// The server-side encryption headers of every write.
    fn encryption(
        &self,
    ) -> (
        Option<aws_sdk_s3::types::ServerSideEncryption>,
        Option<String>,
    ) {
        s3::ServerSideEncryption::request_headers(self.config.server_side_encryption.as_ref())
    }

    /// This store sealing what it writes and opening what it reads with `key`.
    pub fn sealed(mut self, key: SealKey) -> ObjectStore {
        self.seal = Some(key);
        self
    }

    /// What an object is called in its location, which its seal binds it to: its key without
    /// the location's prefix (`backups/<backup>/<file>`), so that moving a location's prefix
    /// keeps its backups readable.
    fn name_of<'k>(&self, key: &'k str) -> &'k str {
        let prefix = ferry_protocol::layout::prefix_dir(self.prefix());
        key.strip_prefix(prefix.as_str()).unwrap_or(key)
    }

    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    pub fn prefix(&self) -> Option<&str> {
        self.config.prefix.as_deref()
    }

    /// Checks that the bucket exists and the credentials may use it.
    pub async fn validate(&self) -> Result<()> {
        self.client
            .head_bucket()
            .bucket(self.bucket())
            .send()
            .await
            .map_err(|error| self.error(&format!("bucket {}", self.bucket()), error))?;
        Ok(())
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<()> {
        let body = match &self.seal {
            Some(seal) => seal::seal(seal, self.name_of(key), &body),
            None => body,
        };
        self.client
            .put_object()
            .bucket(self.bucket())
            .key(key)
            .set_server_side_encryption(self.encryption().0)
            .set_ssekms_key_id(self.encryption().1)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|error| self.error(key, error))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let object = self.get_object(key).await?;
        let body = object.collect().await.map_err(|error| Error::Storage {
            message: format!("reading s3://{}/{key}: {error}", self.bucket()),
            retryable: true,
        })?;
        match &self.seal {
            Some(seal) => Ok(seal::open(seal, self.name_of(key), &body.into_bytes())?.into()),
            None => Ok(body.into_bytes()),
        }
    }

    /// The object as a stream, for archives that must never be held whole in memory.
    pub async fn get_reader(
        &self,
        key: &str,
    ) -> Result<Box<dyn AsyncRead + Send + Unpin + 'static>> {
        let raw = self.get_object(key).await?.into_async_read();
        Ok(match &self.seal {
            Some(seal) => Box::new(seal::open_reader(
                seal.clone(),
                self.name_of(key).to_owned(),
                raw,
            )),
            None => Box::new(raw),
        })
    }

    async fn get_object(&self, key: &str) -> Result<ByteStream> {
        let object = self
            .client
            .get_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await
            .map_err(|error| self.error(key, error))?;
        Ok(object.body)
    }

    /// Every key under `prefix`, following continuation tokens.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(self.bucket())
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| self.error(prefix, error))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }

    /// The immediate "directories" under `prefix` (keys up to the next `/`).
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let mut dirs = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(self.bucket())
            .prefix(prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| self.error(prefix, error))?;
            dirs.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_owned)),
            );
        }
        Ok(dirs)
    }

    /// Deletes `key`; a key already gone counts as deleted.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => match self.error(key, error) {
                Error::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Starts a streaming upload of `key`: parts are sent as they fill, and the object appears
    /// only when [`Upload::finish`] completes it, so a failed backup never leaves a partial archive.
    pub async fn start_upload(&self, key: &str) -> Result<Upload> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(self.bucket())
            .key(key)
            .set_server_side_encryption(self.encryption().0)
            .set_ssekms_key_id(self.encryption().1)
            .send()
            .await
            .map_err(|error| self.error(key, error))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        Ok(Upload {
            store: self.clone(),
            key: key.to_owned(),
            upload_id,
            parts: Vec::new(),
            sealer: self
                .seal
                .as_ref()
                .map(|seal| Sealer::new(seal, self.name_of(key))),
            held: None,
        })
    }

    fn error<E>(
        &self,
        what: &str,
        error: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let classified = s3::classify(&error);
        if classified.failure == s3::Failure::NotFound {
            return Error::NotFound {
                what: format!("s3://{}/{what}", self.bucket()),
            };
        }
        let (code, status) = (classified.code, classified.status);
        let context = aws_smithy_types::error::display::DisplayErrorContext(&error).to_string();
        // A certificate the client refused: no retry makes it trusted.
        if matches!(error, SdkError::DispatchFailure(_)) && context.contains("certificate") {
            let endpoint = self.config.endpoint.as_deref().unwrap_or("S3");
            let remedy = if self.config.ca_bundle.is_some() {
                "its certificate does not chain to a CA of the location's objectStorage.caBundle"
            } else {
                "give the PEM of the CA that signed its certificate in the location's objectStorage.caBundle"
            };
            return Error::Storage {
                message: format!(
                    "s3://{}/{what}: the TLS certificate of {endpoint} is not trusted ({context}); {remedy}",
                    self.bucket()
                ),
                retryable: false,
            };
        }
        let detail = match code.as_deref() {
            Some("NoSuchBucket") => format!("bucket {} does not exist; create it or fix the location's bucket", self.bucket()),
            Some("InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
                "the credentials are not valid for this store; check the location's credential Secret".to_owned()
            }
            Some("AccessDenied") => "access denied; the credentials lack permission on this bucket".to_owned(),
            Some(code) => format!("{code}: {}", error.message().unwrap_or_default()),
            None if status == Some(403) => {
                "access denied; the credentials are invalid or lack permission on this bucket".to_owned()
            }
            None => match &error {
                SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => format!(
                    "cannot reach {}; check the location's endpoint and the network",
                    self.config.endpoint.as_deref().unwrap_or("S3")
                ),
                _ => context,
            },
        };
        Error::Storage {
            message: format!("s3://{}/{what}: {detail}", self.bucket()),
            retryable: classified.failure == s3::Failure::Transient,
        }
    }
}

/// A multipart upload in progress.
#[derive(Debug)]
pub struct Upload {
    store: ObjectStore,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
    /// Seals each part as a segment when the store seals.
    sealer: Option<Sealer>,
    /// With a sealer, the part last given: it is sent when the next comes (as a segment that is
    /// not the last) or at the end (as the last).
    held: Option<Bytes>,
}

impl Upload {
    /// Sends the next part (at least [`PART_SIZE`] bytes unless it is the last).
    pub async fn send_part(&mut self, body: Bytes) -> Result<()> {
        let Some(sealer) = self.sealer.as_mut() else {
            return self.upload_part(body).await;
        };
        match self.held.replace(body) {
            Some(previous) => {
                let segment = sealer.segment(&previous, false);
                self.upload_part(segment).await
            }
            None => Ok(()),
        }
    }

    async fn upload_part(&mut self, body: Bytes) -> Result<()> {
        let number = i32::try_from(self.parts.len() + 1).expect("fewer than 2^31 parts");
        let sent = self
            .store
            .client
            .upload_part()
            .bucket(self.store.bucket())
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|error| self.store.error(&self.key, error))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag)
                .build(),
        );
        Ok(())
    }

    /// Completes the upload; the object appears whole.
    pub async fn finish(mut self) -> Result<()> {
        if let Some(sealer) = self.sealer.as_mut() {
            let last = self.held.take().unwrap_or_default();
            let segment = sealer.segment(&last, true);
            self.upload_part(segment).await?;
        }
        if self.parts.is_empty() {
            // S3 refuses to complete an upload of no parts; an empty object is one empty part.
            self.upload_part(Bytes::new()).await?;
        }
        let parts = std::mem::take(&mut self.parts);
        self.store
            .client
            .complete_multipart_upload()
            .bucket(self.store.bucket())
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|error| self.store.error(&self.key, error))?;
        Ok(())
    }

    /// Gives up the upload so that the store drops its parts.
    pub async fn abort(self) {
        let _ = self
            .store
            .client
            .abort_multipart_upload()
            .bucket(self.store.bucket())
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
    }
}
