//! Leader election through a Lease in Ferry's namespace: of several controller processes (a
//! rolling update, a node that comes back from a partition, a second replica), only the one that
//! holds the Lease reconciles, so no backup runs twice. A holder that stops renewing loses the
//! Lease once it expires; one that cannot renew in time stops working before another may start.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::error::Result;

/// The Lease the controllers compete for.
pub const LEASE_NAME: &str = "ferry-controller";

/// How long a Lease holds without renewal, and how often its holder renews it.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// One controller process's claim on the Lease.
pub struct Candidate {
    leases: Api<Lease>,
    identity: String,
    timing: Timing,
}

impl Candidate {
    pub fn new(client: Client, namespace: &str, identity: &str, timing: Timing) -> Candidate {
        Candidate {
            leases: Api::namespaced(client, namespace),
            identity: identity.to_owned(),
            timing,
        }
    }

    /// Waits until this process holds the Lease.
    pub async fn acquire(&self) -> Result<()> {
        let mut waiting_logged = false;
        loop {
            match self.try_take().await {
                Ok(true) => {
                    tracing::info!(message = "became the leader", identity = %self.identity, lease = LEASE_NAME);
                    return Ok(());
                }
                Ok(false) if !waiting_logged => {
                    tracing::info!(
                        message = "another controller leads; waiting for its Lease",
                        lease = LEASE_NAME
                    );
                    waiting_logged = true;
                }
                Ok(false) => {}
                // Conflicts (another candidate wrote first) and transient API errors: try again.
                Err(error) => {
                    tracing::debug!(message = "taking the Lease failed", %error, lease = LEASE_NAME)
                }
            }
            tokio::time::sleep(self.timing.renew_every).await;
        }
    }

    /// Renews the Lease while this process holds it; returns when it is lost (taken over, or not
    /// renewed within its duration), after which the process must stop reconciling.
    pub async fn hold(&self) {
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timing.renew_every).await;
            match self.try_take().await {
                Ok(true) => renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::warn!(
                        message = "another controller took the Lease; stopping",
                        lease = LEASE_NAME
                    );
                    return;
                }
                // Stop a beat before the Lease can expire, so that no two controllers ever
                // work at once.
                Err(error)
                    if renewed.elapsed() + self.timing.renew_every
                        >= self.timing.lease_duration =>
                {
                    tracing::warn!(message = "could not renew the Lease in time; stopping", %error, lease = LEASE_NAME);
                    return;
                }
                Err(error) => {
                    tracing::warn!(message = "renewing the Lease failed; trying again", %error, lease = LEASE_NAME)
                }
            }
        }
    }

    /// Takes or renews the Lease if it is free, expired or ours; false when another holds it.
    /// Writes carry the resourceVersion read, so of two candidates only one succeeds.
    async fn try_take(&self) -> Result<bool> {
        let now = jiff::Timestamp::now();
        let duration = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.leases.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.to_owned()),
                    labels: Some(
                        [("app.kubernetes.io/name".to_owned(), "ferry".to_owned())].into(),
                    ),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    ..Default::default()
                }),
            };
            self.leases.create(&PostParams::default(), &lease).await?;
            return Ok(true);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours && is_held(spec, duration, now) {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(MicroTime(now));
        self.leases
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await?;
        Ok(true)
    }
}

/// Whether a Lease is still held at `now`: renewed within its duration (`default_seconds` when
/// it names none). Pure, so that both readers of Leases (this election and the agents' liveness)
/// judge alike and are tested without waiting; `now` is wall time, which the Lease's writer uses.
pub fn is_held(spec: &LeaseSpec, default_seconds: i32, now: jiff::Timestamp) -> bool {
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(default_seconds));
    spec.renew_time
        .as_ref()
        .is_some_and(|renewed| now.as_second() - renewed.0.as_second() <= duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_until_its_duration_has_passed_since_its_renewal() {
        let renewed = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let after = |seconds: i64| renewed + jiff::SignedDuration::from_secs(seconds);
        let lease = |duration| LeaseSpec {
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: duration,
            ..Default::default()
        };
        assert!(is_held(&lease(Some(15)), 30, after(15)));
        assert!(!is_held(&lease(Some(15)), 30, after(16)));
        // Without a duration of its own, the default.
        assert!(is_held(&lease(None), 30, after(30)));
        assert!(!is_held(&lease(None), 30, after(31)));
        // Never renewed: free.
        assert!(!is_held(&LeaseSpec::default(), 30, renewed));
    }
}
