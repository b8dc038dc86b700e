//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! replicas only one acts. Every write carries the lease's resourceVersion,
//! so two candidates can never both win the same term.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use std::time::Duration;

/// A candidate for the lease.
pub struct Elector {
    leases: Api<Lease>,
    name: String,
    identity: String,
    /// How long a lease holds without renewal.
    pub lease_duration: Duration,
}

impl Elector {
    /// A candidate named `identity` for lease `namespace/name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Self {
        Elector {
            leases: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
        }
    }

    /// Take or renew the lease; `Ok(true)` while this candidate holds it.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(self.lease_duration.as_secs()).unwrap_or(15);
        let mut lease = match self.leases.get_opt(&self.name).await? {
            Some(lease) => lease,
            None => {
                let lease: Lease = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": self.name},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": seconds,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
                }))
                .map_err(kube::Error::SerdeError)?;
                return match self.leases.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
            let held = i64::from(spec.lease_duration_seconds.unwrap_or(seconds));
            renewed.0.as_second() + held < now.0.as_second()
        });
        if !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self.leases.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Wait until this candidate holds the lease.
    pub async fn acquire(&self) {
        let mut logged = false;
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(false) if !logged => {
                    tracing::info!(lease = %self.name, "another replica leads; standing by");
                    logged = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the leader lease"),
            }
            tokio::time::sleep(self.lease_duration / 3).await;
        }
    }

    /// Keep renewing; returns when the lease is lost (or cannot be renewed in time).
    pub async fn hold(&self) {
        let mut last_renewed = std::time::Instant::now();
        loop {
            tokio::time::sleep(self.lease_duration / 3).await;
            match self.try_acquire().await {
                Ok(true) => last_renewed = std::time::Instant::now(),
                Ok(false) => {
                    tracing::warn!("lost the leader lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leader lease");
                    // Stop acting before another replica may take over.
                    if last_renewed.elapsed() > self.lease_duration * 2 / 3 {
                        return;
                    }
                }
            }
        }
    }
}
