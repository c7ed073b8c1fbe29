//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`.
//!
//! Every replica serves proxies; the Lease's holder alone does what must be done once (status
//! writes, creating the CA's Secret, the webhook's caBundle). Replicas' clocks differ, so a
//! replica never compares another's `renewTime` with its own clock: it takes a Lease as expired
//! once the record has stayed unchanged, by its own clock, for the record's whole
//! `leaseDurationSeconds`. A holder that cannot renew within `renew_deadline` (shorter than the
//! duration) stops leading first, so two replicas never lead at once.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Error};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The Lease's name, in the control plane's namespace.
pub const LEASE_NAME: &str = "wasmesh-controlplane";

/// How the Lease is held. The defaults are client-go's, but for renewing every 5 s (not
/// every retry period): a third of the duration leaves two retries before the deadline.
#[derive(Clone, Debug)]
pub struct Lease {
    pub name: String,
    /// `leaseDurationSeconds`: how long others wait after the last renewal they saw.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How long the holder may fail to renew before it stops leading.
    pub renew_deadline: Duration,
    /// How often a replica that does not hold it tries to acquire it (jittered), and how
    /// often the holder retries a failed renewal.
    pub retry: Duration,
}

impl Default for Lease {
    fn default() -> Lease {
        Lease {
            name: LEASE_NAME.to_owned(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// The longest wait between attempts after API errors, when not leading.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long releasing the Lease may take at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

impl Lease {
    /// Takes part in the election for the Lease `wasmesh-controlplane` in `namespace`, as
    /// `identity` (the pod's name), with the default timings.
    pub fn start(client: Client, namespace: &str, identity: &str) -> LeaseHandle {
        Lease::default().spawn(client, namespace, identity)
    }

    /// Takes part in the election with these settings.
    pub fn spawn(self, client: Client, namespace: &str, identity: &str) -> LeaseHandle {
        let (leader_tx, leader) = watch::channel(false);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let elector = Elector {
            api: Api::namespaced(client, namespace),
            identity: identity.to_owned(),
            config: self,
            observed: None,
        };
        let task = tokio::spawn(elector.run(leader_tx, shutdown_rx));
        LeaseHandle {
            leader,
            shutdown: Some(shutdown),
            task,
        }
    }
}

/// A replica's part in the election. Dropping it releases the Lease in the background;
/// [`LeaseHandle::release`] waits for that.
pub struct LeaseHandle {
    leader: watch::Receiver<bool>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl LeaseHandle {
    /// Whether this replica leads: `true` from acquiring the Lease until it stops renewing it.
    /// The sender closes when the election ends.
    pub fn leader(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Stops leading, and releases the Lease (if held) so that another replica takes over at
    /// once instead of after its duration.
    pub async fn release(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = (&mut self.task).await;
    }
}

struct Elector {
    api: Api<LeaseObject>,
    identity: String,
    config: Lease,
    /// The record last seen, and when (by our clock) it was first seen as it is.
    observed: Option<(LeaseSpec, Instant)>,
}

/// Why an attempt did not settle who holds the Lease.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Api(#[from] Error),
    #[error("the Lease kept changing under our updates")]
    Contended,
    #[error("the API server did not answer in time")]
    TimedOut,
}

impl Elector {
    async fn run(mut self, leader: watch::Sender<bool>, mut shutdown: oneshot::Receiver<()>) {
        // While leading: when the last successful renewal was sent.
        let mut renewed: Option<Instant> = None;
        let mut failures = 0u32;
        loop {
            if let Some(t) = renewed
                && t + self.config.renew_deadline <= Instant::now()
            {
                renewed = None;
                tracing::warn!(lease = %self.config.name, "the Lease could not be renewed in time");
            }
            set_leader(&leader, renewed.is_some());

            let started = Instant::now();
            // A hung request must not keep us leading past the deadline.
            let give_up = renewed.map_or(started + self.config.renew_deadline, |t| {
                t + self.config.renew_deadline
            });
            let attempt = tokio::select! {
                r = tokio::time::timeout_at(give_up, self.try_acquire_or_renew()) => {
                    r.unwrap_or(Err(AttemptError::TimedOut))
                }
                _ = &mut shutdown => break,
            };
            let wait = match attempt {
                Ok(true) => {
                    failures = 0;
                    renewed = Some(started);
                    self.config.renew_every
                }
                Ok(false) => {
                    failures = 0;
                    renewed = None;
                    jitter(self.config.retry)
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(lease = %self.config.name, error = %e, "Lease not acquired or renewed");
                    if renewed.is_some() {
                        self.config.retry
                    } else {
                        jitter((self.config.retry * 2u32.pow(failures.min(5) - 1)).min(MAX_BACKOFF))
                    }
                }
            };
            set_leader(&leader, renewed.is_some());
            let wake = renewed.map_or(Instant::now() + wait, |t| {
                (Instant::now() + wait).min(t + self.config.renew_deadline)
            });
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                _ = &mut shutdown => break,
            }
        }
        // Stop leading before the Lease is given up.
        set_leader(&leader, false);
        match tokio::time::timeout(RELEASE_TIMEOUT, self.release()).await {
            Ok(Ok(true)) => tracing::info!(lease = %self.config.name, "Lease released"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.config.name, error = %e, "Lease not released")
            }
            Err(_) => tracing::warn!(lease = %self.config.name, "Lease not released: timed out"),
        }
    }

    /// client-go's `tryAcquireOrRenew`: whether we hold the Lease now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, AttemptError> {
        // A conflict means the Lease changed since it was read: read it again, once.
        for _ in 0..2 {
            let Some(current) = self.api.get_opt(&self.config.name).await? else {
                let lease = LeaseObject {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.record(None)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(created) => {
                        self.observe(created.spec.unwrap_or_default());
                        Ok(true)
                    }
                    // Another replica created it first.
                    Err(e) if has_code(&e, 409) => Ok(false),
                    Err(e) => Err(e.into()),
                };
            };
            let spec = current.spec.clone().unwrap_or_default();
            self.observe(spec.clone());
            match spec.holder_identity.as_deref() {
                Some(holder) if holder == self.identity => {}
                Some(holder) if !holder.is_empty() && !self.expired(&spec) => return Ok(false),
                _ => {}
            }
            let next = LeaseObject {
                spec: Some(self.record(Some(&spec))),
                ..current
            };
            // `next` carries the resourceVersion read: the update fails if it changed.
            match self
                .api
                .replace(&self.config.name, &PostParams::default(), &next)
                .await
            {
                Ok(updated) => {
                    self.observe(updated.spec.unwrap_or_default());
                    return Ok(true);
                }
                Err(e) if has_code(&e, 409) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AttemptError::Contended)
    }

    /// Notes the record seen; a changed record restarts the clock on its expiry.
    fn observe(&mut self, spec: LeaseSpec) {
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != spec) {
            self.observed = Some((spec, Instant::now()));
        }
    }

    /// Whether `spec`, as observed, has gone unrenewed for its whole duration.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let duration = spec
            .lease_duration_seconds
            .map_or(self.config.duration, |s| {
                Duration::from_secs(s.max(0) as u64)
            });
        self.observed
            .as_ref()
            .is_some_and(|(seen, since)| seen == spec && *since + duration <= Instant::now())
    }

    /// Our record, replacing `previous`: a takeover sets the acquire time and counts a
    /// transition; a renewal keeps both.
    fn record(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let previous = previous.cloned();
        let renewal = previous
            .as_ref()
            .is_some_and(|p| p.holder_identity.as_deref() == Some(&self.identity));
        let transitions = previous.as_ref().map_or(0, |p| {
            p.lease_transitions.unwrap_or(0) + i32::from(!renewal)
        });
        let base = previous.unwrap_or_default();
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.config.duration.as_secs() as i32),
            acquire_time: if renewal {
                base.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..base
        }
    }

    /// Gives the Lease up if we hold it: no holder, and a duration of 1 s (client-go's
    /// `ReleaseOnCancel`). Whether it was ours.
    async fn release(&mut self) -> Result<bool, Error> {
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            return Ok(false);
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return Ok(false);
        }
        let now = MicroTime(Timestamp::now());
        let released = LeaseObject {
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..spec
            }),
            ..current
        };
        self.api
            .replace(&self.config.name, &PostParams::default(), &released)
            .await?;
        Ok(true)
    }
}

fn set_leader(leader: &watch::Sender<bool>, now: bool) {
    leader.send_if_modified(|was| {
        if *was == now {
            return false;
        }
        *was = now;
        if now {
            tracing::info!("leading: this replica holds the Lease");
        } else {
            tracing::info!("no longer leading");
        }
        true
    });
}

/// Whether `e` is the API server's answer with this HTTP status.
pub(crate) fn has_code(e: &Error, code: u16) -> bool {
    matches!(e, Error::Api(status) if status.code == code)
}

/// `d` plus up to half of it again, so that replicas started together do not retry in step.
pub(crate) fn jitter(d: Duration) -> Duration {
    let random = RandomState::new().build_hasher().finish();
    d + d.mul_f64((random % 1024) as f64 / 2048.0)
}
