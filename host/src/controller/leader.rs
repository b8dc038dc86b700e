//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! replicas only one acts. Every write carries the lease's resourceVersion,
//! so two candidates can never both win the same term.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether this replica may still write: every write of the controller checks it first. With
/// leader election it holds until a third of the lease duration before the lease could expire
/// (counted from before the renewal was sent), so a replica stops acting before another can
/// take over; without, it always holds.
#[derive(Clone, Debug)]
pub struct Fence(Option<Arc<Mutex<Option<Instant>>>>);

impl Fence {
    /// No leader election: writes are always allowed.
    pub fn always() -> Fence {
        Fence(None)
    }

    /// Leader election: writes are allowed only until [`Fence::extend`] says.
    pub fn closed() -> Fence {
        Fence(Some(Arc::new(Mutex::new(None))))
    }

    /// Allow writes until `until`.
    pub fn extend(&self, until: Instant) {
        if let Some(valid) = &self.0 {
            *valid.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
        }
    }

    /// Allow no more writes.
    pub fn close(&self) {
        if let Some(valid) = &self.0 {
            *valid.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Whether a write may be sent now.
    pub fn holds(&self) -> bool {
        match &self.0 {
            None => true,
            Some(valid) => valid
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|until| Instant::now() < until),
        }
    }
}

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

    /// How often the holder renews: a fifth of the lease, so a renewal has time to be slow
    /// and to be tried again before the fence closes.
    fn renew_period(&self) -> Duration {
        self.lease_duration / 5
    }

    /// How long after the start of a successful renewal this replica may act.
    pub fn fence_window(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// Take or renew the lease within a sixth of its duration (so a renewal that hangs leaves
    /// time for another before the fence closes); `Ok(true)` while this candidate holds it,
    /// `Ok(false)` while another does. A request that fails or hangs is an error: it says
    /// nothing about who holds the lease.
    pub async fn try_acquire(&self) -> Result<bool, LeaseError> {
        self.try_acquire_within(self.lease_duration / 6).await
    }

    /// [`Self::try_acquire`] given `limit` to finish.
    async fn try_acquire_within(&self, limit: Duration) -> Result<bool, LeaseError> {
        match tokio::time::timeout(limit, self.try_acquire_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(LeaseError::TimedOut(limit)),
        }
    }

    async fn try_acquire_unbounded(&self) -> Result<bool, LeaseError> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(self.lease_duration.as_secs()).unwrap_or(15);
        let mut lease = match self.leases.get_opt(&self.name).await.map_err(LeaseError::Api)? {
            Some(lease) => lease,
            None => {
                let lease: Lease = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": self.name},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": seconds,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
                }))
                .map_err(|e| LeaseError::Api(kube::Error::SerdeError(e)))?;
                return match self.leases.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(LeaseError::Api(e)),
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
        // Taking the lease, that writer won it; renewing it, the writer may be this replica's
        // own earlier renewal that landed late: read again before giving up.
        match self.leases.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 && !ours => Ok(false),
            Err(e) => Err(LeaseError::Api(e)),
        }
    }

    /// Give the lease up (a clean shutdown), so a standby takes over in about a second instead
    /// of waiting for it to expire; only while this candidate still holds it. Called once this
    /// replica has stopped writing.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let release = async {
            let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
            match self.leases.replace(&self.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                // Someone else wrote it meanwhile: it is not ours to release.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        };
        match tokio::time::timeout(self.lease_duration / 6, release).await {
            Ok(result) => result.map_err(LeaseError::Api),
            Err(_) => Err(LeaseError::TimedOut(self.lease_duration / 6)),
        }
    }

    /// Wait until this candidate holds the lease; opens `fence` for its window.
    pub async fn acquire(&self, fence: &Fence) {
        let mut logged = false;
        loop {
            let started = Instant::now();
            match self.try_acquire().await {
                Ok(true) => {
                    fence.extend(started + self.fence_window());
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

    /// Keep renewing, extending `fence` after each renewal; returns (with the fence closed)
    /// when another replica holds the lease, or when it could not be renewed within the
    /// fence's window. Renewals start a fifth of the lease apart, counted from the start of
    /// the last one (so a slow answer does not push the next one past the fence); after a
    /// failed one, the next follows sooner.
    pub async fn hold(&self, fence: &Fence) {
        let mut last_renewed = Instant::now();
        let mut next = last_renewed + self.renew_period();
        loop {
            tokio::time::sleep_until(next.into()).await;
            let started = Instant::now();
            // A renewal may take the time left before the fence closes but for a sixth of the
            // lease, kept for one more try (so a slow apiserver that still answers keeps the
            // lease, and one request that hangs does not lose it); at least a sixth.
            let limit = (last_renewed + self.fence_window())
                .saturating_duration_since(started)
                .saturating_sub(self.lease_duration / 6)
                .max(self.lease_duration / 6);
            match self.try_acquire_within(limit).await {
                Ok(true) => {
                    last_renewed = started;
                    fence.extend(started + self.fence_window());
                    next = started + self.renew_period();
                }
                Ok(false) => {
                    tracing::warn!("lost the leader lease");
                    fence.close();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leader lease; trying again");
                    // Stop acting before another replica may take over.
                    if last_renewed.elapsed() > self.fence_window() {
                        tracing::warn!("the leader lease was not renewed in time");
                        fence.close();
                        return;
                    }
                    next = Instant::now() + self.lease_duration / 15;
                }
            }
        }
    }
}

/// Why the lease could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The apiserver refused or could not be reached.
    #[error(transparent)]
    Api(kube::Error),
    /// No answer within the time a renewal may take.
    #[error("no answer from the apiserver within {0:?}")]
    TimedOut(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The Lease as written by each PUT.
    type Written = Arc<Mutex<Vec<serde_json::Value>>>;

    /// How the test apiserver behaves: it holds one Lease of `holder`; its answer to the
    /// `stall`th request comes only after `delay`, every read takes `each_read`, and the first
    /// `conflicts` writes are refused with a 409 (applied nonetheless: a write that landed
    /// late).
    #[derive(Default)]
    struct LeaseServer {
        holder: &'static str,
        stall: usize,
        delay: Duration,
        each_read: Duration,
        conflicts: usize,
    }

    fn lease_server(server: LeaseServer) -> (kube::Client, Arc<AtomicUsize>, Written) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let written = Written::default();
        let puts = written.clone();
        let conflicts = Arc::new(AtomicUsize::new(server.conflicts));
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                if request.method() == http::Method::PUT {
                    let bytes = request.into_body().collect_bytes().await.unwrap();
                    puts.lock().unwrap().push(serde_json::from_slice(&bytes).unwrap());
                    let refused = conflicts
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    let (status, body) = if refused {
                        (
                            409,
                            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                 "reason": "Conflict", "code": 409, "message": "modified"}),
                        )
                    } else {
                        (200, puts.lock().unwrap().last().cloned().unwrap())
                    };
                    let body = Body::from(serde_json::to_vec(&body).unwrap());
                    send.send_response(Response::builder().status(status).body(body).unwrap());
                    continue;
                }
                let lease = serde_json::json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "culler", "namespace": "ns", "resourceVersion": n.to_string()},
                    "spec": {"holderIdentity": server.holder, "leaseDurationSeconds": 1,
                             "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now())},
                });
                let method = request.method().clone();
                let (stall, delay, each_read) = (server.stall, server.delay, server.each_read);
                tokio::spawn(async move {
                    if n == stall {
                        tokio::time::sleep(delay).await;
                    }
                    tokio::time::sleep(each_read).await;
                    assert_eq!(method, http::Method::GET);
                    let body = Body::from(serde_json::to_vec(&lease).unwrap());
                    send.send_response(Response::builder().status(200).body(body).unwrap());
                });
            }
        });
        (kube::Client::new(service, "ns"), requests, written)
    }

    /// Whether `hold` keeps the lease for 3 s against `server`.
    async fn keeps_holding(server: LeaseServer) -> (bool, Fence, usize) {
        let (client, requests, _) = lease_server(server);
        let elector = elector(client);
        let fence = Fence::closed();
        fence.extend(Instant::now() + elector.fence_window());
        let held = tokio::time::timeout(Duration::from_secs(3), elector.hold(&fence)).await;
        (held.is_err(), fence, requests.load(Ordering::SeqCst))
    }

    fn elector(client: kube::Client) -> Elector {
        let mut elector = Elector::new(client, "ns", "culler", "me");
        // Renewals every 0.3 s, each given 0.25 s or more; the fence lasts 1 s from a
        // renewal's start.
        elector.lease_duration = Duration::from_millis(1500);
        elector
    }

    #[tokio::test]
    async fn a_renewal_that_hangs_once_is_tried_again_not_taken_for_a_lost_lease() {
        // The first renewal's read answers after 0.8 s, past its 0.45 s.
        let (held, fence, requests) = keeps_holding(LeaseServer {
            holder: "me",
            stall: 1,
            delay: Duration::from_millis(800),
            ..LeaseServer::default()
        })
        .await;
        assert!(held, "hold gave up the lease after one slow answer");
        assert!(fence.holds(), "the renewals after it extend the fence");
        assert!(requests > 4, "renewed again");
    }

    #[tokio::test]
    async fn an_apiserver_slow_on_every_renewal_still_keeps_the_lease() {
        // Every read takes 0.3 s: more than a sixth of the lease, well within the fence.
        let (held, fence, _) = keeps_holding(LeaseServer {
            holder: "me",
            each_read: Duration::from_millis(300),
            ..LeaseServer::default()
        })
        .await;
        assert!(held && fence.holds(), "a slow apiserver cost the lease");
    }

    #[tokio::test]
    async fn a_renewal_refused_as_a_conflict_reads_the_lease_again() {
        // This replica's own earlier renewal landed late: the next write conflicts, and the
        // lease is still its own.
        let (held, fence, _) = keeps_holding(LeaseServer {
            holder: "me",
            conflicts: 1,
            ..LeaseServer::default()
        })
        .await;
        assert!(
            held && fence.holds(),
            "a conflict on its own lease was taken for a lost lease"
        );
    }

    #[tokio::test]
    async fn a_lease_another_replica_holds_ends_the_hold_and_closes_the_fence() {
        let (client, _, _) = lease_server(LeaseServer {
            holder: "another",
            ..LeaseServer::default()
        });
        let elector = elector(client);
        let fence = Fence::closed();
        fence.extend(Instant::now() + elector.fence_window());
        tokio::time::timeout(Duration::from_secs(3), elector.hold(&fence))
            .await
            .expect("hold returns once another replica holds the lease");
        assert!(!fence.holds());
    }

    #[test]
    fn a_fence_holds_only_within_its_window() {
        assert!(Fence::always().holds());
        let fence = Fence::closed();
        assert!(!fence.holds(), "closed until the lease is held");
        fence.extend(Instant::now() + Duration::from_secs(10));
        assert!(fence.holds());
        fence.extend(Instant::now() - Duration::from_millis(1));
        assert!(!fence.holds(), "past its window");
        fence.extend(Instant::now() + Duration::from_secs(10));
        fence.close();
        assert!(!fence.holds(), "closed when the lease is lost");
    }

    #[tokio::test]
    async fn a_clean_stop_releases_the_lease_it_holds_and_no_other() {
        let (client, _, written) = lease_server(LeaseServer {
            holder: "me",
            ..LeaseServer::default()
        });
        elector(client).release().await.unwrap();
        let released = written.lock().unwrap().clone();
        assert_eq!(released.len(), 1, "{released:?}");
        assert!(released[0]["spec"]["holderIdentity"].is_null(), "{released:?}");
        assert_eq!(released[0]["spec"]["leaseDurationSeconds"], 1);
        let (client, _, written) = lease_server(LeaseServer {
            holder: "another",
            ..LeaseServer::default()
        });
        elector(client).release().await.unwrap();
        assert!(written.lock().unwrap().is_empty(), "released another replica's lease");
    }
}
