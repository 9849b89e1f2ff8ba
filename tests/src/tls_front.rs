//! A TLS front for the test environment's MinIO, with a certificate for `127.0.0.1` from a CA
//! made for the test: a private S3-compatible store as a storage location's `caBundle` (or the
//! data mover's `ca_bundle`) describes it. Bytes pass through unchanged once the handshake is
//! done.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::TestEnv;

pub struct TlsFront {
    address: SocketAddr,
    ca_pem: String,
    task: JoinHandle<()>,
}

impl TlsFront {
    /// Listens on a free loopback port in front of the environment's MinIO.
    pub async fn start() -> TlsFront {
        ferry_protocol::tls::install_crypto_provider();
        let upstream = TestEnv::get()
            .s3_endpoint()
            .trim_start_matches("http://")
            .to_owned();
        let (ca_pem, config) = certificate_for_loopback();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the TLS front");
        let address = listener.local_addr().expect("its address");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        TlsFront {
            address,
            ca_pem,
            task,
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.address)
    }

    /// The PEM of the CA that signed the front's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CA, and a server configuration with a certificate it signed for `127.0.0.1`.
fn certificate_for_loopback() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a CA key"))
        .expect("a CA");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("parameters");
    params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let key = KeyPair::generate().expect("a key");
    let certificate = params.signed_by(&key, &ca).expect("a certificate");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(certificate.pem().as_bytes()).expect("PEM")],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("PEM"),
        )
        .expect("a TLS server configuration");
    (ca.pem(), Arc::new(config))
}
