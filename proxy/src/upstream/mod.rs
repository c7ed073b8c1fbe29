//! Upstream clusters: endpoints, load balancing, circuit breakers and per-worker connection pools.

pub mod connect;
pub mod destination;
mod dns;
pub mod h1;
mod lb;
pub mod pool;
mod send;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::{self, LbPolicy, Resolution, UpstreamProtocol};
use crate::stats::{ClusterShard, Sharded};
use crate::tls::ClientTls;

pub use dns::DnsEndpoints;
pub use lb::pick_endpoint;
pub use send::{Outbound, Protocol, RequestBody, SendError, send, upgrade};

/// Where a cluster's endpoints come from (its `resolution`).
pub enum Endpoints {
    /// Fixed for the cluster's life.
    Static(Arc<[Arc<Endpoint>]>),
    /// Kept current by the resolver thread; workers notice a new set by its generation.
    Dns(Arc<DnsEndpoints>),
    /// None: each worker makes one per original destination (`pool::ClusterPool`).
    OriginalDst,
}

/// A cluster as the workers use it. Shared by all workers; its counters are atomics.
pub struct Cluster {
    /// Unique for the life of the process: per-worker pools are keyed by it.
    pub id: u64,
    /// Shared, not copied: filters read it for every request they see.
    pub name: std::sync::Arc<str>,
    pub config: config::Cluster,
    pub endpoints: Endpoints,
    pub lb_policy: LbPolicy,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: u32,
    /// mTLS to the endpoints (ISTIO_MUTUAL); none: plaintext.
    pub tls: Option<ClientTls>,
    /// Circuit-breaker state, shared by all workers as Envoy's resource manager is.
    pub cx_active: AtomicU32,
    pub rq_active: AtomicU32,
    pub rq_pending: AtomicU32,
    pub retries_active: AtomicU32,
    pub stats: Sharded<ClusterShard>,
}

/// One upstream host of a cluster.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub rq_active: AtomicU32,
    pub cx_active: AtomicU32,
    pub rq_total: AtomicU64,
    pub rq_error: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    /// Milliseconds since process start until which the endpoint is skipped by load balancing.
    unhealthy_until_ms: AtomicU64,
    consecutive_connect_failures: AtomicU32,
}

static NEXT_CLUSTER_ID: AtomicU64 = AtomicU64::new(1);

/// Milliseconds on a monotonic clock that starts with the process.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Cluster {
    /// Builds a cluster, resolving its endpoints' names (validation resolved them once: a
    /// name can stop resolving since). An error gives the endpoint's index. A `dns` cluster's
    /// names are looked up now and then every few seconds; one that does not resolve yet
    /// leaves the cluster without its addresses, not in error.
    pub fn new(
        config: &config::Cluster,
        workers: usize,
        tls: Option<ClientTls>,
    ) -> Result<Cluster, (usize, config::EndpointError)> {
        let endpoints = match config.resolution {
            Resolution::Static => Endpoints::Static(
                config
                    .endpoints
                    .iter()
                    .enumerate()
                    .map(|(j, e)| {
                        config::resolve_endpoint(e)
                            .map(|a| Arc::new(Endpoint::new(a)))
                            .map_err(|error| (j, error))
                    })
                    .collect::<Result<Arc<[_]>, _>>()?,
            ),
            Resolution::Dns => Endpoints::Dns(DnsEndpoints::start(&config.name, &config.endpoints)),
            Resolution::OriginalDst => Endpoints::OriginalDst,
        };
        Ok(Cluster {
            id: NEXT_CLUSTER_ID.fetch_add(1, Relaxed),
            name: config.name.as_str().into(),
            config: config.clone(),
            endpoints,
            lb_policy: config.lb_policy,
            protocol: config.protocol,
            connect_timeout: config.connect_timeout.0,
            idle_timeout: config.idle_timeout.nonzero(),
            max_requests_per_connection: config.max_requests_per_connection,
            tls,
            cx_active: AtomicU32::new(0),
            rq_active: AtomicU32::new(0),
            rq_pending: AtomicU32::new(0),
            retries_active: AtomicU32::new(0),
            stats: Sharded::new(workers),
        })
    }

    /// The endpoints now (for the admin API and outlier ejection, not the request path:
    /// workers see them through their pools). None for `original_dst`.
    pub fn endpoints_now(&self) -> Arc<[Arc<Endpoint>]> {
        match &self.endpoints {
            Endpoints::Static(set) => set.clone(),
            Endpoints::Dns(dns) => dns.current().1,
            Endpoints::OriginalDst => Arc::new([]),
        }
    }

    pub fn stats(&self) -> &ClusterShard {
        self.stats.local()
    }

    /// Takes an active-request slot, or `None` when `max_requests` is reached.
    pub fn try_start_request(&self) -> Option<Slot<'_>> {
        Slot::acquire(&self.rq_active, self.config.circuit_breakers.max_requests)
    }

    /// Takes a pending-request slot, or `None` when `max_pending_requests` is reached.
    pub fn try_start_pending(&self) -> Option<Slot<'_>> {
        Slot::acquire(
            &self.rq_pending,
            self.config.circuit_breakers.max_pending_requests,
        )
    }

    /// Takes a connection slot, or `None` when `max_connections` is reached.
    pub fn try_add_connection(&self) -> bool {
        Slot::acquire(
            &self.cx_active,
            self.config.circuit_breakers.max_connections,
        )
        .map(std::mem::forget)
        .is_some()
    }

    /// Counts a connection made over the limit (Envoy lets a pool with no connection make one).
    pub fn add_connection_over_limit(&self) {
        self.cx_active.fetch_add(1, Relaxed);
        self.stats().cx_overflow.inc();
    }

    pub fn remove_connection(&self) {
        self.cx_active.fetch_sub(1, Relaxed);
    }

    /// Takes a retry slot if both `max_retries` and the retry budget allow one more retry.
    pub fn try_start_retry(&self) -> Option<Slot<'_>> {
        let mut limit = self.config.circuit_breakers.max_retries;
        if let Some(budget) = &self.config.retry_budget {
            let active = self.rq_active.load(Relaxed) + self.rq_pending.load(Relaxed);
            let allowed = (active as f64 * budget.budget_percent / 100.0) as u32;
            limit = allowed.max(budget.min_retry_concurrency);
        }
        Slot::acquire(&self.retries_active, limit)
    }
}

/// A held circuit-breaker slot, released on drop.
pub struct Slot<'a>(&'a AtomicU32);

impl<'a> Slot<'a> {
    fn acquire(counter: &'a AtomicU32, max: u32) -> Option<Slot<'a>> {
        if counter.fetch_add(1, Relaxed) >= max {
            counter.fetch_sub(1, Relaxed);
            None
        } else {
            Some(Slot(counter))
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            rq_active: AtomicU32::new(0),
            cx_active: AtomicU32::new(0),
            rq_total: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            unhealthy_until_ms: AtomicU64::new(0),
            consecutive_connect_failures: AtomicU32::new(0),
        }
    }

    pub fn is_healthy(&self, now_ms: u64) -> bool {
        self.unhealthy_until_ms.load(Relaxed) <= now_ms
    }

    /// Passive health: after a failed connect the endpoint is skipped for a backoff that doubles
    /// with each consecutive failure (1 s up to 30 s); a successful connect clears it.
    pub fn report_connect_failure(&self) {
        self.cx_connect_fail.fetch_add(1, Relaxed);
        let n = self
            .consecutive_connect_failures
            .fetch_add(1, Relaxed)
            .min(5);
        let backoff = (1000u64 << n).min(30_000);
        self.unhealthy_until_ms.store(now_ms() + backoff, Relaxed);
    }

    /// Skips the endpoint until `until_ms` (outlier ejection decided by a plugin).
    pub fn eject_until(&self, until_ms: u64) {
        self.unhealthy_until_ms.fetch_max(until_ms, Relaxed);
    }

    pub fn report_connect_success(&self) {
        if self.consecutive_connect_failures.load(Relaxed) != 0 {
            self.consecutive_connect_failures.store(0, Relaxed);
            self.unhealthy_until_ms.store(0, Relaxed);
        }
    }
}

/// A request counted against `max_requests` and its endpoint's active requests until the
/// response is finished.
pub struct ActiveRequest {
    cluster: Arc<Cluster>,
    /// The worker's pool of the endpoint (an `Rc`: no shared count touched per request).
    endpoint: Option<Rc<pool::EndpointPool>>,
}

impl ActiveRequest {
    pub fn start(cluster: &Arc<Cluster>) -> Option<ActiveRequest> {
        std::mem::forget(cluster.try_start_request()?);
        Some(ActiveRequest {
            cluster: cluster.clone(),
            endpoint: None,
        })
    }

    pub fn set_endpoint(&mut self, endpoint: &Rc<pool::EndpointPool>) {
        if let Some(old) = self.endpoint.replace(endpoint.clone()) {
            old.endpoint().rq_active.fetch_sub(1, Relaxed);
        }
        endpoint.endpoint().rq_active.fetch_add(1, Relaxed);
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.cluster.rq_active.fetch_sub(1, Relaxed);
        if let Some(e) = &self.endpoint {
            e.endpoint().rq_active.fetch_sub(1, Relaxed);
        }
    }
}
