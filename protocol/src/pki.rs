//! The agent API's certificates: one CA that only the controller holds, and a short-lived
//! certificate per node.
//!
//! An agent makes its key in memory when it starts (never on disk, never in a Secret) and asks
//! for a certificate by writing a request into its node's Lease ([`REQUEST_ANNOTATION`]). Only
//! that node's agent can write that Lease (`deploy/agent-leases.yaml`), so the Lease's name is
//! the proof of which node asks: the controller signs the request's key for the node the Lease is
//! named after, whatever the request says, and writes the certificate and its CA back into the
//! Lease. The certificate names [`agent_server_name`] of that node and nothing else; the
//! controller, reaching the agent of node B, accepts only B's name, so a compromised node A that
//! answers at B's address cannot serve B's tasks. Agents renew their key and certificate at half
//! its life; the controller's own client certificate lives an hour and is issued as it needs one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::agent::TlsCredentials;

/// The Secret only the controller reads: the CA's certificate (`ca.crt`) and key (`ca.key`).
pub const AGENT_CA_SECRET: &str = "ferry-agent-ca";
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";

/// On a node's Lease, written by its agent: a PEM certificate request for the key it holds.
pub const REQUEST_ANNOTATION: &str = "ferry.dev/agent-certificate-request";
/// On a node's Lease, written by the controller: the certificate it issued for that node.
pub const CERTIFICATE_ANNOTATION: &str = "ferry.dev/agent-certificate";
/// On a node's Lease, written by the controller: the CA whose certificates the agent accepts
/// from its clients (the controller's).
pub const CA_ANNOTATION: &str = "ferry.dev/agent-ca";
/// On a node's Lease, written by the controller: the request it signed, so that it signs each
/// request once.
pub const SIGNED_REQUEST_ANNOTATION: &str = "ferry.dev/agent-certificate-request-signed";

/// How long an agent's certificate is valid; the agent asks for a new one at half of it.
pub const AGENT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long the controller's client certificate is valid; it issues one per task it starts.
pub const CONTROLLER_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(3600);
/// Certificates are valid from a little before they are issued: clocks of nodes drift.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The name the certificate of `node`'s agent carries, and the controller asks for. Under a
/// private suffix: no public name can collide with it, and a node named like an IP address still
/// gives a DNS name.
pub fn agent_server_name(node: &str) -> String {
    format!("{node}.agent.ferry.internal")
}

/// A failure to make, read or use a certificate, said in words.
#[derive(Debug)]
pub struct PkiError(pub String);

impl std::fmt::Display for PkiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PkiError {}

fn fail(context: &str) -> impl Fn(rcgen::Error) -> PkiError + '_ {
    move |error| PkiError(format!("{context}: {error}"))
}

/// The CA of the agent API, kept by the controller in [`AGENT_CA_SECRET`].
pub struct AgentCa {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for AgentCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("AgentCa").finish_non_exhaustive()
    }
}

impl AgentCa {
    /// A new CA (ECDSA P-256), valid for ten years: what it signs lives a day at most, and the
    /// CA is replaced by deleting its Secret (agents then get certificates of the new one).
    pub fn generate() -> Result<AgentCa, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail("CA"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, "Ferry agent API CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        let key = KeyPair::generate().map_err(fail("CA key"))?;
        let cert_pem = CertifiedIssuer::self_signed(params, &key)
            .map_err(fail("CA"))?
            .pem();
        Ok(AgentCa { cert_pem, key })
    }

    /// The CA kept in its Secret.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<AgentCa, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(fail("the CA's key"))?;
        // Refuse a certificate that does not parse before anything is signed with it.
        Issuer::from_ca_cert_pem(cert_pem, &key).map_err(fail("the CA's certificate"))?;
        Ok(AgentCa {
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(fail("the CA's certificate"))
    }

    /// Signs `request` (a PEM certificate request, its signature checked) as the agent of `node`:
    /// the certificate holds the request's key and what this function says, nothing the request
    /// asks for (its names, usages or constraints are ignored).
    pub fn issue_for_node(&self, node: &str, request: &str) -> Result<String, PkiError> {
        let request = CertificateSigningRequestParams::from_pem(request)
            .map_err(fail("the agent's certificate request"))?;
        let mut params = CertificateParams::new(vec![agent_server_name(node)])
            .map_err(fail(&format!("a certificate for node {node:?}")))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ferry-agent {node}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + AGENT_CERTIFICATE_LIFETIME).into();
        let signed = CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        }
        .signed_by(&self.issuer()?)
        .map_err(fail(&format!("the certificate of node {node:?}")))?;
        Ok(signed.pem())
    }

    /// A client certificate for the controller, valid for
    /// [`CONTROLLER_CERTIFICATE_LIFETIME`], with a fresh key.
    pub fn controller_identity(&self) -> Result<TlsCredentials, PkiError> {
        let key = KeyPair::generate().map_err(fail("the controller's key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(fail("the controller's certificate"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "ferry-controller");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + CONTROLLER_CERTIFICATE_LIFETIME).into();
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(fail("the controller's certificate"))?;
        Ok(TlsCredentials {
            ca_cert: self.cert_pem.clone(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// An agent's key, made in memory, and its certificate request.
pub struct NodeKey {
    key: KeyPair,
    request: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey").finish_non_exhaustive()
    }
}

impl NodeKey {
    pub fn generate(node: &str) -> Result<NodeKey, PkiError> {
        let key = KeyPair::generate().map_err(fail("the agent's key"))?;
        let mut params = CertificateParams::new(vec![agent_server_name(node)])
            .map_err(fail(&format!("a certificate request for node {node:?}")))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ferry-agent {node}"));
        let request = params
            .serialize_request(&key)
            .and_then(|request| request.pem())
            .map_err(fail("the agent's certificate request"))?;
        Ok(NodeKey { key, request })
    }

    /// The PEM certificate request the agent writes into its Lease.
    pub fn request(&self) -> &str {
        &self.request
    }

    /// The agent's TLS server: `certificate` (which must hold this key), and only clients with
    /// a client certificate of `ca`; HTTP/2 only, as gRPC needs.
    pub fn server_config(
        &self,
        certificate: &str,
        ca: &str,
    ) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let tls = |context: &'static str| {
            move |error: rustls::Error| PkiError(format!("{context}: {error}"))
        };
        let chain = CertificateDer::pem_slice_iter(certificate.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| PkiError(format!("the agent's certificate: {error}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            let ca = ca.map_err(|error| PkiError(format!("the agent API's CA: {error}")))?;
            roots.add(ca).map_err(tls("the agent API's CA"))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|error| PkiError(format!("the agent API's CA: {error}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key.serialize_pem().as_bytes())
            .map_err(|error| PkiError(format!("the agent's key: {error}")))?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(tls("the agent's certificate"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whether a client with `identity` (or none), asking for `name`, completes a handshake and
    /// one exchange with the agent's server `config`.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        ca: &str,
        identity: Option<(&str, &str)>,
        name: &str,
    ) -> bool {
        crate::tls::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let mut client = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap(),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        client.alpn_protocols = vec![b"h2".to_vec()];
        let (near, far) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let serve = tokio::spawn(async move {
            let mut stream = acceptor.accept(far).await.ok()?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.ok()?;
            stream.write_all(&byte).await.ok()?;
            stream.flush().await.ok()
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let exchanged = async {
            let mut stream = connector.connect(server_name, near).await.ok()?;
            stream.write_all(b"x").await.ok()?;
            stream.flush().await.ok()?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.ok()?;
            Some(byte == *b"x")
        }
        .await
        .unwrap_or(false);
        let _ = serve.await;
        exchanged
    }

    #[tokio::test]
    async fn a_node_certificate_serves_only_its_node_and_only_to_the_controller() {
        crate::tls::install_crypto_provider();
        let ca = AgentCa::generate().unwrap();
        let node_a = NodeKey::generate("node-a").unwrap();
        // The request asks for node-b's name; the CA signs for the Lease's node, node-a.
        let greedy = NodeKey::generate("node-b").unwrap();
        let cert_a = ca.issue_for_node("node-a", node_a.request()).unwrap();
        let server_a = node_a.server_config(&cert_a, ca.cert_pem()).unwrap();
        let controller = ca.controller_identity().unwrap();
        let me = Some((controller.cert.as_str(), controller.key.as_str()));

        assert!(
            handshake(
                server_a.clone(),
                ca.cert_pem(),
                me,
                &agent_server_name("node-a")
            )
            .await
        );
        assert!(
            !handshake(
                server_a.clone(),
                ca.cert_pem(),
                me,
                &agent_server_name("node-b")
            )
            .await,
            "node-a's certificate served node-b"
        );
        let cert_greedy = ca.issue_for_node("node-a", greedy.request()).unwrap();
        let server_greedy = greedy.server_config(&cert_greedy, ca.cert_pem()).unwrap();
        assert!(
            !handshake(
                server_greedy,
                ca.cert_pem(),
                me,
                &agent_server_name("node-b")
            )
            .await,
            "a request's own names were signed"
        );

        // No client certificate, one of another CA, or an agent's own (a server certificate)
        // as a client: refused.
        assert!(
            !handshake(
                server_a.clone(),
                ca.cert_pem(),
                None,
                &agent_server_name("node-a")
            )
            .await
        );
        let stranger = AgentCa::generate().unwrap().controller_identity().unwrap();
        assert!(
            !handshake(
                server_a.clone(),
                ca.cert_pem(),
                Some((&stranger.cert, &stranger.key)),
                &agent_server_name("node-a")
            )
            .await
        );
        let node_b = NodeKey::generate("node-b").unwrap();
        let cert_b = ca.issue_for_node("node-b", node_b.request()).unwrap();
        let key_b = node_b.key.serialize_pem();
        assert!(
            !handshake(
                server_a,
                ca.cert_pem(),
                Some((&cert_b, &key_b)),
                &agent_server_name("node-a")
            )
            .await,
            "another agent's certificate was taken for the controller's"
        );
    }

    #[test]
    fn a_certificate_for_another_key_or_a_forged_request_is_refused() {
        crate::tls::install_crypto_provider();
        let ca = AgentCa::generate().unwrap();
        let mine = NodeKey::generate("node-a").unwrap();
        let theirs = NodeKey::generate("node-a").unwrap();
        let cert = ca.issue_for_node("node-a", theirs.request()).unwrap();
        assert!(mine.server_config(&cert, ca.cert_pem()).is_err());
        let forged = mine.request().replace("MII", "MIJ");
        assert!(ca.issue_for_node("node-a", &forged).is_err());
        // The CA read back from its Secret signs the same way.
        let kept = AgentCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let cert = kept.issue_for_node("node-a", mine.request()).unwrap();
        assert!(mine.server_config(&cert, ca.cert_pem()).is_ok());
    }
}
