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

/// A client configuration for the store at `endpoint` (AWS's own when None). With `ca_bundle`
/// (PEM), the store's certificate must chain to one of its CAs and to nothing else: a private
/// store's name is not to be answered by whoever a public CA vouches for. Retries and timeouts
/// are each caller's to add. Fails, saying why, on a bundle that holds no usable certificate.
pub fn client_config(
    shared: &aws_config::SdkConfig,
    endpoint: Option<&str>,
    path_style: bool,
    ca_bundle: Option<&str>,
) -> Result<aws_sdk_s3::config::Builder, String> {
    let mut config = aws_sdk_s3::config::Builder::from(shared)
        .force_path_style(path_style)
        // S3-compatible stores differ in which checksums they accept; these are the ones every
        // one of them does. What Ferry reads back is authenticated by its own MACs anyway.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    if let Some(bundle) = ca_bundle {
        config = config.http_client(trusting_only(bundle)?);
    }
    Ok(config)
}

/// An HTTPS client that trusts only the CAs of `bundle` (PEM): for every client of a private
/// store (S3, and its STS).
pub fn trusting_only(bundle: &str) -> Result<aws_sdk_s3::config::SharedHttpClient, String> {
    use aws_smithy_http_client::tls;
    check_ca_bundle(bundle)?;
    let trust = tls::TrustStore::empty().with_pem_certificate(bundle.as_bytes());
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|error| format!("the CA bundle: {error}"))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
}

/// Whether `bundle` is PEM holding at least one certificate that can be a trust anchor. (The
/// SDK's client panics on one that is not.)
pub fn check_ca_bundle(bundle: &str) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certificates = CertificateDer::pem_slice_iter(bundle.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("the CA bundle is not PEM: {error}"))?;
    if certificates.is_empty() {
        return Err(
            "the CA bundle holds no certificate (give the PEM of the CAs, -----BEGIN CERTIFICATE----- ...)"
                .to_owned(),
        );
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(|error| {
            format!("the CA bundle holds a certificate that cannot be a CA: {error}")
        })?;
    }
    Ok(())
}

/// The encryption at rest a store is asked to apply, with its own keys, to every object Ferry
/// writes. Ferry encrypts what it writes anyway; this is for rules that also ask for the store's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSideEncryption {
    /// SSE-S3 (`AES256`): keys the store manages.
    S3Managed,
    /// SSE-KMS (`aws:kms`): the KMS key named, else the bucket's default one.
    Kms { key_id: Option<String> },
}

impl ServerSideEncryption {
    /// From a location's `serverSideEncryption` (`AES256` or `aws:kms`) and `kmsKeyId`.
    pub fn parse(algorithm: &str, kms_key_id: Option<&str>) -> Result<Self, String> {
        let key_id = kms_key_id.filter(|id| !id.is_empty()).map(str::to_owned);
        match (algorithm, key_id) {
            ("AES256", None) => Ok(ServerSideEncryption::S3Managed),
            ("AES256", Some(_)) => Err(
                "kmsKeyId is given with serverSideEncryption AES256; use aws:kms for a KMS key"
                    .to_owned(),
            ),
            ("aws:kms", key_id) => Ok(ServerSideEncryption::Kms { key_id }),
            (other, _) => Err(format!(
                "serverSideEncryption {other:?} is not AES256 (SSE-S3) nor aws:kms (SSE-KMS)"
            )),
        }
    }

    /// From the two settings as a location, a task or the command line give them (empty counts
    /// as absent): none, or an algorithm with its KMS key; a key without an algorithm is refused.
    pub fn from_settings(
        algorithm: Option<&str>,
        kms_key_id: Option<&str>,
    ) -> Result<Option<Self>, String> {
        let kms_key_id = kms_key_id.filter(|id| !id.is_empty());
        match algorithm.filter(|algorithm| !algorithm.is_empty()) {
            None if kms_key_id.is_some() => {
                Err("a KMS key is named without server-side encryption aws:kms".to_owned())
            }
            None => Ok(None),
            Some(algorithm) => Self::parse(algorithm, kms_key_id).map(Some),
        }
    }

    /// The name S3 gives it (`AES256`, `aws:kms`).
    pub fn name(&self) -> &'static str {
        match self {
            ServerSideEncryption::S3Managed => "AES256",
            ServerSideEncryption::Kms { .. } => "aws:kms",
        }
    }

    pub fn algorithm(&self) -> aws_sdk_s3::types::ServerSideEncryption {
        aws_sdk_s3::types::ServerSideEncryption::from(self.name())
    }

    pub fn kms_key_id(&self) -> Option<String> {
        match self {
            ServerSideEncryption::Kms { key_id } => key_id.clone(),
            ServerSideEncryption::S3Managed => None,
        }
    }

    /// What a PutObject or CreateMultipartUpload request sets (`set_server_side_encryption`,
    /// `set_ssekms_key_id`) to ask for `encryption`, or for nothing.
    pub fn request_headers(
        encryption: Option<&ServerSideEncryption>,
    ) -> (
        Option<aws_sdk_s3::types::ServerSideEncryption>,
        Option<String>,
    ) {
        (
            encryption.map(ServerSideEncryption::algorithm),
            encryption.and_then(ServerSideEncryption::kms_key_id),
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_encryption_is_named_as_s3_names_it() {
        assert_eq!(
            ServerSideEncryption::parse("AES256", None),
            Ok(ServerSideEncryption::S3Managed)
        );
        let kms = ServerSideEncryption::parse("aws:kms", Some("alias/ferry")).unwrap();
        assert_eq!(
            (kms.name(), kms.kms_key_id().as_deref()),
            ("aws:kms", Some("alias/ferry"))
        );
        assert_eq!(
            ServerSideEncryption::parse("aws:kms", Some("")),
            Ok(ServerSideEncryption::Kms { key_id: None })
        );
        assert!(
            ServerSideEncryption::parse("AES256", Some("alias/ferry"))
                .unwrap_err()
                .contains("aws:kms")
        );
        assert!(
            ServerSideEncryption::parse("aes256", None)
                .unwrap_err()
                .contains("\"aes256\"")
        );
        assert_eq!(
            ServerSideEncryption::from_settings(None, Some("")),
            Ok(None)
        );
        assert_eq!(
            ServerSideEncryption::from_settings(Some("AES256"), Some("")),
            Ok(Some(ServerSideEncryption::S3Managed))
        );
        assert!(
            ServerSideEncryption::from_settings(Some(""), Some("alias/ferry"))
                .unwrap_err()
                .contains("without server-side encryption")
        );
    }

    #[test]
    fn a_ca_bundle_must_hold_a_certificate() {
        assert!(check_ca_bundle("").unwrap_err().contains("no certificate"));
        assert!(
            check_ca_bundle("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        let ca = rcgen::CertifiedIssuer::self_signed(
            rcgen::CertificateParams::new(vec!["ca.example".to_owned()]).unwrap(),
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap();
        assert_eq!(check_ca_bundle(&ca.pem()), Ok(()));
    }
}
