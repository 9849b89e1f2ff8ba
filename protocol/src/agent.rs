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

/// The label every agent's Lease carries, and the controller selects them by.
pub const LEASE_COMPONENT_LABEL: (&str, &str) = ("app.kubernetes.io/component", "agent");

/// The node of an agent's Lease, from its name: the name is what only that node's agent may
/// write (deploy/agent-leases.yaml), unlike anything inside the Lease.
pub fn lease_node(lease_name: &str) -> Option<&str> {
    lease_name
        .strip_prefix("ferry-agent-")
        .filter(|node| !node.is_empty())
}

/// The Secrets of the agent API before certificates were issued per node (one server certificate
/// shared by every agent, one client certificate for the controller). No longer read or made;
/// still never backed up where an older installation left them.
pub const LEGACY_TLS_SECRETS: [&str; 2] = ["ferry-agent-tls", "ferry-controller-tls"];

/// The controller's credentials for the agent API: the CA it trusts, and its own client
/// certificate and key, in PEM (see [`crate::pki`]).
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
    /// The controller's client side towards the agent of `node`: trusts only the CA, accepts
    /// only the certificate issued for that node, and presents its own.
    pub fn client_config(&self, node: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_cert))
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .domain_name(crate::pki::agent_server_name(node))
    }
}

/// Each agent keeps a Lease `ferry-agent-<node>` in Ferry's namespace, renewed as a heartbeat,
/// whose annotation [`ADDRESS_ANNOTATION`] says where its gRPC port is (`ip:port`). The controller
/// finds a node's agent there, and an expired Lease tells it the agent is gone. The Lease also
/// carries the agent's certificate request and the certificate the controller issued
/// ([`crate::pki`]).
pub fn lease_name(node: &str) -> String {
    format!("ferry-agent-{node}")
}

pub const ADDRESS_ANNOTATION: &str = "ferry.dev/agent-address";
/// How long a Lease holds without renewal; agents renew it three times as often.
pub const LEASE_DURATION_SECONDS: i32 = 30;

/// How to reach the S3 store of a repository the controller names (its endpoint, region, CA
/// bundle, encryption at rest and the credentials of its storage location), or what is wrong
/// with what it says.
pub fn s3_options(spec: &v1::Repository) -> Result<S3Options, String> {
    let credentials = (!spec.access_key_id.is_empty()).then(|| {
        aws_credential_types::Credentials::new(
            &spec.access_key_id,
            &spec.secret_access_key,
            (!spec.session_token.is_empty()).then(|| spec.session_token.clone()),
            None,
            "ferry-controller",
        )
    });
    let server_side_encryption = ferry_mover::s3::ServerSideEncryption::from_settings(
        Some(&spec.s3_server_side_encryption),
        Some(&spec.s3_kms_key_id),
    )?;
    let ca_bundle = (!spec.s3_ca_bundle.is_empty()).then(|| spec.s3_ca_bundle.clone());
    if let Some(bundle) = &ca_bundle {
        ferry_mover::s3::check_ca_bundle(bundle)?;
    }
    Ok(S3Options {
        endpoint: (!spec.s3_endpoint.is_empty()).then(|| spec.s3_endpoint.clone()),
        region: if spec.s3_region.is_empty() {
            S3Options::default().region
        } else {
            spec.s3_region.clone()
        },
        path_style: spec.s3_path_style,
        credentials,
        ca_bundle,
        server_side_encryption,
        ..Default::default()
    })
}

/// The emptyDir volume through which a pod lends its block devices to its node's agent: the agent
/// cannot open a device the kubelet gave a pod (the container runtime's device cgroup refuses
/// it), so a pod that holds it (`ferry lend-device`) passes an open descriptor over a Unix socket
/// in this volume, one socket a device, named by [`device_socket`].
pub const DEVICE_EXCHANGE_VOLUME: &str = "ferry-devices";

/// Where pods mount [`DEVICE_EXCHANGE_VOLUME`].
pub const DEVICE_EXCHANGE_DIR: &str = "/ferry-devices";

/// The socket in [`DEVICE_EXCHANGE_VOLUME`] that lends the device of pod volume `volume`.
pub fn device_socket(volume: &str) -> String {
    format!("{volume}.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_says_how_its_store_is_reached() {
        let ca = rcgen::CertifiedIssuer::self_signed(
            rcgen::CertificateParams::new(vec!["store.example".to_owned()]).unwrap(),
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap()
        .pem();
        let spec = v1::Repository {
            url: "s3://bucket/prefix/repositories/app".to_owned(),
            s3_endpoint: "https://store.example".to_owned(),
            s3_ca_bundle: ca.clone(),
            s3_server_side_encryption: "aws:kms".to_owned(),
            s3_kms_key_id: "alias/ferry".to_owned(),
            ..Default::default()
        };
        let options = s3_options(&spec).unwrap();
        assert_eq!(options.ca_bundle.as_deref(), Some(ca.as_str()));
        assert_eq!(
            options.server_side_encryption,
            Some(ferry_mover::s3::ServerSideEncryption::Kms {
                key_id: Some("alias/ferry".to_owned())
            })
        );
        assert_eq!(
            s3_options(&v1::Repository::default()).unwrap().ca_bundle,
            None
        );

        for (bad, expected) in [
            (
                v1::Repository {
                    s3_ca_bundle: "not PEM".to_owned(),
                    ..spec.clone()
                },
                "no certificate",
            ),
            (
                v1::Repository {
                    s3_server_side_encryption: "rot13".to_owned(),
                    ..spec.clone()
                },
                "rot13",
            ),
            (
                v1::Repository {
                    s3_server_side_encryption: String::new(),
                    ..spec.clone()
                },
                "KMS key",
            ),
        ] {
            let error = s3_options(&bad).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
