//! The agent API's certificates, seen from the controller (see `ferry_protocol::pki`): the CA it
//! keeps in the Secret `ferry-agent-ca`, the node certificates it issues into the agents' Leases,
//! and its own short-lived client certificate.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_protocol::agent::{LEASE_COMPONENT_LABEL, TlsCredentials, lease_node};
use ferry_protocol::pki::{
    AGENT_CA_SECRET, AgentCa, CA_ANNOTATION, CA_CERT_KEY, CA_KEY_KEY, CERTIFICATE_ANNOTATION,
    REQUEST_ANNOTATION, SIGNED_REQUEST_ANNOTATION,
};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, ResourceExt};

use crate::context::{Context, MANAGER};
use crate::error::{Error, Result};

fn pki_error(error: ferry_protocol::pki::PkiError) -> Error {
    Error::Certificates(Box::new(error))
}

/// The agent API's CA, made on first use. Created, never overwritten: of two controllers racing
/// (an old and a new leader), the second reads the first one's.
pub async fn agent_ca(ctx: &Context) -> Result<AgentCa> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if let Some(secret) = secrets.get_opt(AGENT_CA_SECRET).await? {
        return ca_of(&secret);
    }
    let ca = AgentCa::generate().map_err(pki_error)?;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": AGENT_CA_SECRET, "labels": {"app.kubernetes.io/name": "ferry"}},
        "type": "Opaque",
        "stringData": {CA_CERT_KEY: ca.cert_pem(), CA_KEY_KEY: ca.key_pem()},
    }))?;
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(
                message = "made the agent API's CA",
                secret = AGENT_CA_SECRET
            );
            Ok(ca)
        }
        Err(kube::Error::Api(response)) if response.code == 409 => {
            ca_of(&secrets.get(AGENT_CA_SECRET).await?)
        }
        Err(error) => Err(error.into()),
    }
}

fn ca_of(secret: &Secret) -> Result<AgentCa> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .and_then(|value| String::from_utf8(value.0.clone()).ok())
            .ok_or_else(|| {
                Error::Validation(vec![format!(
                    "Secret {AGENT_CA_SECRET} has no UTF-8 key {key:?}; delete it and the controller makes a new CA (the agents take certificates of the new one within seconds)"
                )])
            })
    };
    AgentCa::from_pem(&text(CA_CERT_KEY)?, &text(CA_KEY_KEY)?).map_err(pki_error)
}

/// A client certificate for the controller, fresh for each task it starts.
pub async fn controller_identity(ctx: &Context) -> Result<TlsCredentials> {
    agent_ca(ctx)
        .await?
        .controller_identity()
        .map_err(pki_error)
}

/// What the controller must write into an agent's Lease, if anything: a certificate for the
/// request there, issued for the node the Lease is named after (never the node the Lease or the
/// request says), or the same again under a new CA.
pub fn certificate_for(lease: &Lease, ca: &AgentCa) -> Option<Result<BTreeMap<String, String>>> {
    let node = lease_node(lease.metadata.name.as_deref()?)?;
    let annotations = lease.annotations();
    let request = annotations.get(REQUEST_ANNOTATION)?;
    if annotations.get(SIGNED_REQUEST_ANNOTATION) == Some(request)
        && annotations.get(CA_ANNOTATION).map(String::as_str) == Some(ca.cert_pem())
    {
        return None;
    }
    Some(
        ca.issue_for_node(node, request)
            .map(|certificate| {
                BTreeMap::from([
                    (CERTIFICATE_ANNOTATION.to_owned(), certificate),
                    (CA_ANNOTATION.to_owned(), ca.cert_pem().to_owned()),
                    (SIGNED_REQUEST_ANNOTATION.to_owned(), request.clone()),
                ])
            })
            .map_err(pki_error),
    )
}

/// How long the signing loop uses the CA it read before reading its Secret again: every agent
/// renews its Lease every 10 s, and the Secret is read at this pace whatever the number of nodes,
/// yet a CA replaced by deleting the Secret is taken up within seconds.
const CA_REREAD_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Issues a certificate for every agent Lease whose request has none, as the Leases change,
/// until the process ends.
pub async fn run(ctx: Arc<Context>) {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let selector = format!("{}={}", LEASE_COMPONENT_LABEL.0, LEASE_COMPONENT_LABEL.1);
    let mut events = watcher(leases.clone(), watcher::Config::default().labels(&selector)).boxed();
    let mut ca: Option<(AgentCa, std::time::Instant)> = None;
    while let Some(event) = events.next().await {
        let lease = match event {
            Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => lease,
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(message = "watching the agents' Leases failed; watching again", %error);
                continue;
            }
        };
        if ca
            .as_ref()
            .is_none_or(|(_, read)| read.elapsed() >= CA_REREAD_AFTER)
        {
            ca = match agent_ca(&ctx).await {
                Ok(current) => Some((current, std::time::Instant::now())),
                Err(error) => {
                    tracing::warn!(message = "reading the agent API's CA failed; trying again at the next renewal", %error);
                    None
                }
            };
        }
        let Some((ca, _)) = &ca else { continue };
        match issue(&leases, &lease, ca).await {
            Ok(true) => tracing::info!(
                message = "issued a certificate to a node's agent",
                node = lease_node(&lease.name_any()).unwrap_or_default()
            ),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(message = "issuing an agent's certificate failed; trying again at its next renewal", lease = %lease.name_any(), %error)
            }
        }
    }
}

/// Writes into `lease` the certificate [`certificate_for`] says it needs, if any; whether it did.
pub async fn issue(leases: &Api<Lease>, lease: &Lease, ca: &AgentCa) -> Result<bool> {
    let Some(annotations) = certificate_for(lease, ca).transpose()? else {
        return Ok(false);
    };
    let name = lease.name_any();
    let patch = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "annotations": annotations},
    });
    leases
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::pki::NodeKey;

    fn lease(name: &str, annotations: &[(&str, &str)]) -> Lease {
        let mut lease = Lease::default();
        lease.metadata.name = Some(name.to_owned());
        lease.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        lease
    }

    fn names_in(certificate: &str) -> Vec<String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(certificate.as_bytes()).unwrap();
        let certificate = pem.parse_x509().unwrap();
        let names = certificate.subject_alternative_name().unwrap().unwrap();
        names
            .value
            .general_names
            .iter()
            .map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => (*dns).to_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn each_request_is_signed_once_for_the_node_the_lease_is_named_after() {
        ferry_protocol::tls::install_crypto_provider();
        let ca = AgentCa::generate().unwrap();
        let key = NodeKey::generate("node-b").unwrap();
        // Not an agent's Lease, or no request: nothing to do.
        assert!(certificate_for(&lease("ferry-controller-leader", &[]), &ca).is_none());
        assert!(certificate_for(&lease("ferry-agent-node-a", &[]), &ca).is_none());

        let asking = lease("ferry-agent-node-a", &[(REQUEST_ANNOTATION, key.request())]);
        let issued = certificate_for(&asking, &ca).unwrap().unwrap();
        assert_eq!(issued[SIGNED_REQUEST_ANNOTATION], key.request());
        assert_eq!(issued[CA_ANNOTATION], ca.cert_pem());
        // For the request's key, and for node-a, whose Lease it is, though the request asked
        // for node-b.
        key.server_config(&issued[CERTIFICATE_ANNOTATION], ca.cert_pem())
            .unwrap();
        assert_eq!(
            names_in(&issued[CERTIFICATE_ANNOTATION]),
            vec![ferry_protocol::pki::agent_server_name("node-a")]
        );

        let mut signed: Vec<(&str, &str)> = issued
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        signed.push((REQUEST_ANNOTATION, key.request()));
        assert!(certificate_for(&lease("ferry-agent-node-a", &signed), &ca).is_none());
        // A new CA signs the same request again.
        let new_ca = AgentCa::generate().unwrap();
        assert!(certificate_for(&lease("ferry-agent-node-a", &signed), &new_ca).is_some());
        // A request that does not verify is an error, not a certificate.
        let forged = key.request().replace("MII", "MIJ");
        assert!(
            certificate_for(
                &lease("ferry-agent-node-a", &[(REQUEST_ANNOTATION, &forged)]),
                &ca
            )
            .unwrap()
            .is_err()
        );
    }
}
