use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    Region, RequestChecksumCalculation, ResponseChecksumValidation, retry::RetryConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::{Backend, Kind, ObjectInfo};
use crate::error::{Error, Result};

/// How to reach an S3-compatible store. Credentials come from the standard AWS chain (env,
/// profile, web identity) unless given explicitly.
#[derive(Debug, Clone)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub credentials: Option<aws_credential_types::Credentials>,
    /// Objects at least this large are uploaded in parts.
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub max_attempts: u32,
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
        }
    }
}

/// A repository under a prefix of an S3 bucket. The SDK retries transient failures with
/// exponential backoff; a small runtime of its own lets the synchronous [`Backend`] trait drive it
/// from the pipeline's threads.
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

impl S3Backend {
    pub fn new(bucket: &str, prefix: &str, options: &S3Options) -> Result<S3Backend> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-s3")
            .enable_all()
            .build()
            .map_err(|error| Error::Other(format!("starting the S3 client's runtime: {error}")))?;
        let client = runtime.block_on(async {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(Region::new(options.region.clone()));
            if let Some(credentials) = &options.credentials {
                loader = loader.credentials_provider(credentials.clone());
            }
            let shared = loader.load().await;
            let mut config = aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(options.path_style)
                .retry_config(RetryConfig::standard().with_max_attempts(options.max_attempts))
                // S3-compatible stores differ in which checksums they accept; these are the ones
                // every one of them does. Integrity is guaranteed by the AEAD anyway.
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
            if let Some(endpoint) = &options.endpoint {
                config = config.endpoint_url(endpoint);
            }
            Client::from_conf(config.build())
        });
        Ok(S3Backend {
            runtime,
            client,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            options: options.clone(),
        })
    }

    fn key(&self, kind: Kind, name: &str) -> String {
        if self.prefix.is_empty() {
            kind.path_of(name)
        } else {
            format!("{}/{}", self.prefix, kind.path_of(name))
        }
    }

    fn classify<E>(&self, what: &str, error: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = error
            .raw_response()
            .map(|response| response.status().as_u16());
        let code = error.code().map(str::to_owned);
        let message = format!(
            "{what} in s3://{}/{}: {}",
            self.bucket,
            self.prefix,
            code.clone()
                .or_else(|| error.message().map(str::to_owned))
                .unwrap_or_else(|| format!("{}", DisplayChain(&error)))
        );
        if matches!(code.as_deref(), Some("NoSuchKey" | "NotFound")) || status == Some(404) {
            return Error::NotFound {
                name: what.to_owned(),
            };
        }
        match &error {
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => Error::BackendTransient { message },
            _ if status.is_some_and(|s| s >= 500 || s == 429) => {
                Error::BackendTransient { message }
            }
            _ if matches!(
                code.as_deref(),
                Some("SlowDown" | "InternalError" | "RequestTimeout")
            ) =>
            {
                Error::BackendTransient { message }
            }
            _ => Error::Backend { message },
        }
    }

    async fn multipart_upload(&self, key: &str, path: &Path, size: u64) -> Result<()> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.classify(key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = async {
            let mut parts = Vec::new();
            let mut offset = 0;
            let mut number = 1;
            while offset < size {
                let length = self.options.part_size.min(size - offset);
                let body = ByteStream::read_from()
                    .path(path)
                    .offset(offset)
                    .length(Length::Exact(length))
                    .build()
                    .await
                    .map_err(|error| Error::Other(format!("{}: {error}", path.display())))?;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| self.classify(key, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(str::to_owned))
                        .build(),
                );
                offset += length;
                number += 1;
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.classify(key, e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Parts of an abandoned upload are billed until aborted.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

struct DisplayChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
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
        self.runtime.block_on(async {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .body(ByteStream::from(bytes.to_vec()))
                .send()
                .await
                .map_err(|e| self.classify(&key, e))?;
            Ok(())
        })
    }

    fn put_new(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<bool> {
        let key = self.key(kind, name);
        self.runtime.block_on(async {
            let put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                // S3's conditional write: refused with 412 when the key exists (409 while another
                // conditional write of it is under way, which then wins).
                .if_none_match("*")
                .body(ByteStream::from(bytes.to_vec()))
                .send()
                .await;
            match put {
                Ok(_) => Ok(true),
                Err(error)
                    if error
                        .raw_response()
                        .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) =>
                {
                    Ok(false)
                }
                Err(error) => Err(self.classify(&key, error)),
            }
        })
    }

    fn put_file(&self, kind: Kind, name: &str, path: &Path) -> Result<()> {
        let key = self.key(kind, name);
        let size = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        self.runtime.block_on(async {
            if size >= self.options.multipart_threshold {
                self.multipart_upload(&key, path, size).await?;
            } else {
                let body = ByteStream::from_path(path)
                    .await
                    .map_err(|error| Error::Other(format!("{}: {error}", path.display())))?;
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| self.classify(&key, e))?;
            }
            Ok::<_, Error>(())
        })?;
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>> {
        let key = self.key(kind, name);
        self.runtime.block_on(async {
            let response = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| self.classify(&key, e))?;
            let body = response
                .body
                .collect()
                .await
                .map_err(|error| Error::BackendTransient {
                    message: format!("reading {key}: {error}"),
                })?;
            Ok(body.into_bytes().to_vec())
        })
    }

    fn get_range(&self, kind: Kind, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(kind, name);
        let bytes = self.runtime.block_on(async {
            let response = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&key)
                .range(format!("bytes={}-{}", offset, offset + length - 1))
                .send()
                .await
                .map_err(|e| self.classify(&key, e))?;
            let body = response
                .body
                .collect()
                .await
                .map_err(|error| Error::BackendTransient {
                    message: format!("reading {key}: {error}"),
                })?;
            Ok::<_, Error>(body.into_bytes().to_vec())
        })?;
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
        self.runtime.block_on(async {
            let mut found = Vec::new();
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| self.classify(&prefix, e))?;
                for object in page.contents() {
                    let Some(key) = object.key() else { continue };
                    let name = key.rsplit('/').next().unwrap_or(key).to_owned();
                    if kind == Kind::Config && key != prefix {
                        continue;
                    }
                    let modified = object
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok());
                    found.push(ObjectInfo {
                        name,
                        size: object.size().unwrap_or(0) as u64,
                        modified,
                    });
                }
            }
            Ok(found)
        })
    }

    fn delete(&self, kind: Kind, name: &str) -> Result<()> {
        let key = self.key(kind, name);
        self.runtime.block_on(async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| self.classify(&key, e))?;
            Ok(())
        })
    }

    fn exists(&self, kind: Kind, name: &str) -> Result<bool> {
        let key = self.key(kind, name);
        self.runtime.block_on(async {
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
            {
                Ok(_) => Ok(true),
                Err(error) => match self.classify(&key, error) {
                    Error::NotFound { .. } => Ok(false),
                    other => Err(other),
                },
            }
        })
    }
}
