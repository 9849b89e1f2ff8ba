//! The agent's identity: its key (in memory only), the certificate the controller issued for its
//! node, and renewing both at half the certificate's life (see `ferry_protocol::pki`).
//!
//! The heartbeat writes the pending certificate request into the node's Lease and hands back
//! what the controller wrote there; this module decides what the TLS server presents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_protocol::pki::{
    AGENT_CERTIFICATE_LIFETIME, CA_ANNOTATION, CERTIFICATE_ANNOTATION, NodeKey, PkiError,
};
use tokio::sync::watch;

/// The TLS configuration the server accepts connections with; `None` until the controller has
/// issued a certificate.
pub type ServerConfigs = watch::Receiver<Option<Arc<rustls::ServerConfig>>>;

pub struct Identity {
    node: String,
    /// The key the served certificate holds, once one is served.
    serving: Option<Served>,
    /// The key whose request is in the Lease, waiting for its certificate.
    pending: Option<NodeKey>,
    configs: watch::Sender<Option<Arc<rustls::ServerConfig>>>,
}

struct Served {
    key: NodeKey,
    certificate: String,
    ca: String,
    since: Instant,
}

impl Identity {
    pub fn new(node: &str) -> Result<(Identity, ServerConfigs), PkiError> {
        let (configs, receiver) = watch::channel(None);
        let identity = Identity {
            node: node.to_owned(),
            serving: None,
            pending: Some(NodeKey::generate(node)?),
            configs,
        };
        Ok((identity, receiver))
    }

    /// The certificate request to write into the Lease: the pending key's, else the served
    /// one's (the controller signs each request once, so it stays there harmlessly).
    pub fn request(&self) -> &str {
        match (&self.pending, &self.serving) {
            (Some(pending), _) => pending.request(),
            (None, Some(served)) => served.key.request(),
            (None, None) => unreachable!("a key is always pending or served"),
        }
    }

    /// Whether the server has a certificate to present.
    pub fn is_serving(&self) -> bool {
        self.serving.is_some()
    }

    /// Takes what the controller wrote into the Lease (its annotations): a certificate for the
    /// pending key, or a new CA for the served one. Starts a new key once the served
    /// certificate is half way through its life.
    pub fn update(&mut self, annotations: &std::collections::BTreeMap<String, String>) {
        let (Some(certificate), Some(ca)) = (
            annotations.get(CERTIFICATE_ANNOTATION),
            annotations.get(CA_ANNOTATION),
        ) else {
            return;
        };
        if let Some(pending) = &self.pending {
            // A certificate of another key (the previous one's, or a stale one) does not load.
            if let Ok(config) = pending.server_config(certificate, ca) {
                let key = self.pending.take().expect("pending");
                self.serve(key, certificate, ca, config);
                tracing::info!(message = "serving with a certificate issued for this node", node = %self.node);
            }
        } else if let Some(served) = &self.serving
            && (served.certificate != *certificate || served.ca != *ca)
            && let Ok(config) = served.key.server_config(certificate, ca)
        {
            // The same key signed again, under a new CA.
            let key = self.serving.take().expect("served").key;
            self.serve(key, certificate, ca, config);
            tracing::info!(message = "the agent API's CA changed; serving with the new certificate", node = %self.node);
        }
        if self.pending.is_none()
            && self
                .serving
                .as_ref()
                .is_some_and(|served| served.since.elapsed() >= AGENT_CERTIFICATE_LIFETIME / 2)
        {
            match NodeKey::generate(&self.node) {
                Ok(key) => {
                    tracing::info!(message = "renewing the agent's key and certificate", node = %self.node);
                    self.pending = Some(key);
                }
                Err(error) => {
                    tracing::warn!(message = "cannot make a new key; trying again", %error)
                }
            }
        }
    }

    fn serve(
        &mut self,
        key: NodeKey,
        certificate: &str,
        ca: &str,
        config: Arc<rustls::ServerConfig>,
    ) {
        self.serving = Some(Served {
            key,
            certificate: certificate.to_owned(),
            ca: ca.to_owned(),
            since: Instant::now(),
        });
        self.configs.send_replace(Some(config));
    }

    /// How long until the Lease is written again: soon while no certificate is served (so that
    /// the first one is taken as soon as it is issued), else `beat`.
    pub fn next_beat(&self, beat: Duration) -> Duration {
        if self.is_serving() {
            beat
        } else {
            beat.min(Duration::from_secs(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::pki::AgentCa;
    use std::collections::BTreeMap;

    fn annotations(certificate: &str, ca: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (CERTIFICATE_ANNOTATION.to_owned(), certificate.to_owned()),
            (CA_ANNOTATION.to_owned(), ca.to_owned()),
        ])
    }

    #[test]
    fn serves_only_a_certificate_of_its_own_key_and_renews_at_half_life() {
        ferry_protocol::tls::install_crypto_provider();
        let ca = AgentCa::generate().unwrap();
        let (mut identity, configs) = Identity::new("node-a").unwrap();
        assert!(configs.borrow().is_none());
        let first_request = identity.request().to_owned();

        // A certificate for someone else's key changes nothing.
        let other = NodeKey::generate("node-a").unwrap();
        let theirs = ca.issue_for_node("node-a", other.request()).unwrap();
        identity.update(&annotations(&theirs, ca.cert_pem()));
        assert!(!identity.is_serving() && configs.borrow().is_none());

        let mine = ca.issue_for_node("node-a", &first_request).unwrap();
        identity.update(&annotations(&mine, ca.cert_pem()));
        assert!(identity.is_serving() && configs.borrow().is_some());
        assert_eq!(identity.request(), first_request);

        // Half way through its life: a new key and request; the old certificate serves until
        // the new one comes.
        identity.serving.as_mut().unwrap().since = Instant::now() - AGENT_CERTIFICATE_LIFETIME / 2;
        identity.update(&annotations(&mine, ca.cert_pem()));
        let second_request = identity.request().to_owned();
        assert_ne!(second_request, first_request);
        let before = configs.borrow().clone().unwrap();
        let renewed = ca.issue_for_node("node-a", &second_request).unwrap();
        identity.update(&annotations(&renewed, ca.cert_pem()));
        let after = configs.borrow().clone().unwrap();
        assert!(!Arc::ptr_eq(&before, &after));
        assert_eq!(identity.request(), second_request);
    }
}
