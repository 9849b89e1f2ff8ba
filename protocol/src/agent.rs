//! The controller-agent gRPC API (`proto/ferry/agent/v1/agent.proto`) and its mutual TLS.

/// Version 1 of the API, generated from its .proto file at build time.
pub mod v1 {
    #![allow(clippy::all, unused_qualifications)]
    tonic::include_proto!("ferry.agent.v1");
}

use ferry_mover::S3Options;

/// The API version this build serves and speaks.
pub const API_VERSION: u32 = 1;

/// The agent's gRPC port.
pub const DEFAULT_PORT: u16 = 7443;

/// The name every agent's server certificate carries, and the controller checks, whatever address
/// it reaches the agent at: agents come and go with nodes, their IPs are not known in advance.
pub const AGENT_SERVER_NAME: &str = "ferry-agent.ferry.internal";

/// The Secret the agents mount: `ca.crt`, and their certificate and key (`tls.crt`, `tls.key`).
pub const AGENT_TLS_SECRET: &str = "ferry-agent-tls";
/// The Secret only the controller reads: `ca.crt`, and its client certificate and key.
pub const CONTROLLER_TLS_SECRET: &str = "ferry-controller-tls";

pub const CA_CERT_KEY: &str = "ca.crt";
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";

/// One side's credentials of the agent API's mutual TLS: the CA both sides trust, and its own
/// certificate and key, in PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsCredentials {
    pub ca_cert: String,
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for TlsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsCredentials").finish_non_exhaustive()
    }
}

impl TlsCredentials {
    /// The files of a Secret (or a directory with the same names).
    pub fn to_files(&self) -> [(&'static str, &str); 3] {
        [
            (CA_CERT_KEY, &self.ca_cert),
            (CERT_KEY, &self.cert),
            (KEY_KEY, &self.key),
        ]
    }

    /// Reads the files [`TlsCredentials::to_files`] wrote, from a mounted Secret.
    pub fn read_dir(dir: &std::path::Path) -> Result<TlsCredentials, String> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|error| {
                format!(
                    "reading {}: {error}; mount the Secret {AGENT_TLS_SECRET} there (deploy/agent.yaml)",
                    dir.join(name).display()
                )
            })
        };
        Ok(TlsCredentials {
            ca_cert: read(CA_CERT_KEY)?,
            cert: read(CERT_KEY)?,
            key: read(KEY_KEY)?,
        })
    }

    /// The agent's server side: its certificate, and only clients with a certificate from the CA.
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_cert))
    }

    /// The controller's client side: trusts only the CA, checks the agents' shared name, and
    /// presents its own certificate.
    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_cert))
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .domain_name(AGENT_SERVER_NAME)
    }
}

/// What the controller issues once and keeps in two Secrets: the agents' credentials and its own.
/// The CA's key is not kept: renewing means issuing both again (and restarting the agents).
#[derive(Debug, Clone)]
pub struct IssuedCredentials {
    pub agent: TlsCredentials,
    pub controller: TlsCredentials,
}

/// Issues a fresh CA, a server certificate for the agents and a client certificate for the
/// controller (ECDSA P-256, rcgen's default validity: rotation is by issuing again, not by expiry).
pub fn issue_credentials() -> Result<IssuedCredentials, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Ferry agent API CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let leaf =
        |name: &str, usage: ExtendedKeyUsagePurpose| -> Result<TlsCredentials, rcgen::Error> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(vec![AGENT_SERVER_NAME.to_owned()])?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = params.signed_by(&key, &ca)?;
            Ok(TlsCredentials {
                ca_cert: ca.pem(),
                cert: cert.pem(),
                key: key.serialize_pem(),
            })
        };
    Ok(IssuedCredentials {
        agent: leaf("ferry-agent", ExtendedKeyUsagePurpose::ServerAuth)?,
        controller: leaf("ferry-controller", ExtendedKeyUsagePurpose::ClientAuth)?,
    })
}

/// Each agent keeps a Lease `ferry-agent-<node>` in Ferry's namespace, renewed as a heartbeat,
/// whose annotation [`ADDRESS_ANNOTATION`] says where its gRPC port is (`ip:port`). The controller
/// finds a node's agent there, and an expired Lease tells it the agent is gone.
pub fn lease_name(node: &str) -> String {
    format!("ferry-agent-{node}")
}

pub const ADDRESS_ANNOTATION: &str = "ferry.dev/agent-address";
/// How long a Lease holds without renewal; agents renew it three times as often.
pub const LEASE_DURATION_SECONDS: i32 = 30;

/// How to reach the S3 store of a repository the controller names (its endpoint, region and the
/// credentials of its storage location).
pub fn s3_options(spec: &v1::Repository) -> S3Options {
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
