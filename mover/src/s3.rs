//! What every S3 client of Ferry shares: the SDK configuration of a region and credentials, a
//! client for an S3-compatible store, and the one classification of the SDK's errors. The
//! repository backend (`backend/s3.rs`, with its retry loop and multipart uploads) and the
//! controller's object store (`controller/src/storage.rs`) are both built on it. So a store's
//! answer means the same to both: whether it is missing, worth trying again, or final.

use aws_credential_types::Credentials;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// The SDK configuration for `region`, with `credentials` when given, else the standard chain's
/// (environment, profile, web identity).
pub async fn shared_config(
    region: &str,
    credentials: Option<Credentials>,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new(region.to_owned()));
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials);
    }
    loader.load().await
}

/// A client configuration for the store at `endpoint` (AWS's own when None). Retries and
/// timeouts are each caller's to add.
pub fn client_config(
    shared: &aws_config::SdkConfig,
    endpoint: Option<&str>,
    path_style: bool,
) -> aws_sdk_s3::config::Builder {
    let mut config = aws_sdk_s3::config::Builder::from(shared)
        .force_path_style(path_style)
        // S3-compatible stores differ in which checksums they accept; these are the ones every
        // one of them does. What Ferry reads back is authenticated by its own MACs anyway.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    config
}

/// What an error of the store means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The object is not there (and the bucket is).
    NotFound,
    /// It may pass: no connection, a timeout, a cut-off or garbled answer, 5xx, 408, 429 and
    /// throttling codes.
    Transient,
    /// It will not pass without someone changing something: access denied, no such bucket...
    Permanent,
}

/// An error of the store, classified, with what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub failure: Failure,
    /// The store's error code (`NoSuchKey`, `AccessDenied`...), when it answered with one.
    pub code: Option<String>,
    pub status: Option<u16>,
    pub message: Option<String>,
}

/// The one classification of the SDK's errors.
pub fn classify<E>(error: &SdkError<E, HttpResponse>) -> Classified
where
    E: ProvideErrorMetadata,
{
    let status = error
        .raw_response()
        .map(|response| response.status().as_u16());
    let code = error.code().map(str::to_owned);
    let transient = matches!(
        error,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
    ) || status.is_some_and(|s| s >= 500 || s == 429 || s == 408)
        || matches!(
            code.as_deref(),
            Some(
                "SlowDown"
                    | "InternalError"
                    | "RequestTimeout"
                    | "ServiceUnavailable"
                    | "Throttling"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "TooManyRequests"
            )
        );
    let failure = match code.as_deref() {
        Some("NoSuchKey" | "NotFound") => Failure::NotFound,
        // A 404 that is not about the object.
        Some("NoSuchBucket" | "NoSuchUpload") => Failure::Permanent,
        _ if status == Some(404) => Failure::NotFound,
        _ if transient => Failure::Transient,
        _ => Failure::Permanent,
    };
    Classified {
        failure,
        code,
        status,
        message: error.message().map(str::to_owned),
    }
}
