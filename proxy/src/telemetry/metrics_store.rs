//! Istio's metrics as the process keeps them (in `worker::Shared`: one per proxy, kept
//! across reloads): the HTTP and TCP families, the overflow counter, and the plan of the
//! config workers last asked about. Registered under `istio_` for the admin's scrape.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::registry::Registry;

use super::metrics_family::{
    Family, HttpMetric, HttpShard, ShardedCounter, TcpMetric, TcpShard, View,
};
use super::metrics_labels::{HttpLabels, TrafficLabels};
use super::metrics_worker::Plan;
use crate::stats::{Counter, Sharded};

/// Series a family may hold; requests that would make more are counted as overflow.
pub const MAX_SERIES: usize = 10_000;

/// The process's Istio metrics (in `worker::Shared`: one per proxy, kept across reloads).
pub struct IstioMetrics {
    pub(super) http: Arc<Family<HttpLabels, HttpShard>>,
    pub(super) tcp: Arc<Family<TrafficLabels, TcpShard>>,
    pub(super) overflow: Arc<Sharded<Counter>>,
    /// The plan of the config workers last asked about.
    plan: Mutex<Option<Arc<Plan>>>,
}

impl IstioMetrics {
    pub fn new(workers: usize) -> IstioMetrics {
        IstioMetrics::with_cap(workers, MAX_SERIES)
    }

    pub fn with_cap(workers: usize, cap: usize) -> IstioMetrics {
        IstioMetrics {
            http: Arc::new(Family::new(cap, workers)),
            tcp: Arc::new(Family::new(cap, workers)),
            overflow: Arc::new(Sharded::new(workers)),
            plan: Mutex::new(None),
        }
    }

    /// Registers the metrics under `istio_` (and the overflow counter under `wasmesh_`).
    pub fn register(&self, registry: &mut Registry) {
        let istio = registry.sub_registry_with_prefix("istio");
        let http = |metric| View {
            family: self.http.clone(),
            metric,
        };
        let tcp = |metric| View {
            family: self.tcp.clone(),
            metric,
        };
        istio.register("requests", "Requests", http(HttpMetric::Requests));
        istio.register(
            "request_duration_milliseconds",
            "Request duration, first byte in to last byte out",
            http(HttpMetric::Duration),
        );
        istio.register(
            "request_bytes",
            "Request body sizes",
            http(HttpMetric::RequestBytes),
        );
        istio.register(
            "response_bytes",
            "Response body sizes",
            http(HttpMetric::ResponseBytes),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent to the downstream over TCP",
            tcp(TcpMetric::Sent),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received from the downstream over TCP",
            tcp(TcpMetric::Received),
        );
        istio.register(
            "tcp_connections_opened",
            "TCP connections opened",
            tcp(TcpMetric::Opened),
        );
        istio.register(
            "tcp_connections_closed",
            "TCP connections closed",
            tcp(TcpMetric::Closed),
        );
        registry.register(
            "wasmesh_istio_series_overflow",
            "Requests and connections not in Istio's metrics: their series would pass the cap",
            ShardedCounter(self.overflow.clone()),
        );
    }

    /// The plan of config `version`, made (by `build`) for the first worker to ask.
    pub(super) fn plan(&self, version: u64, build: impl FnOnce() -> Plan) -> Arc<Plan> {
        let mut slot = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
        match &*slot {
            Some(plan) if plan.version == version => plan.clone(),
            _ => {
                let plan = Arc::new(build());
                *slot = Some(plan.clone());
                plan
            }
        }
    }

    /// Names these metrics for the workers' thread-local state.
    pub(super) fn id(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }
}
