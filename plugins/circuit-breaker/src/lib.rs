//! Circuit breaking from DestinationRules: request admission (requests in flight to a
//! cluster across the proxy, beyond which a request is answered 503 with flag `UO` and
//! `x-envoy-overloaded: true`) and outlier detection (consecutive 5xx or gateway errors eject
//! an endpoint from load balancing). Requests in flight are a gauge and outlier ledgers live
//! in shared data, so all workers share them.
//! The connection-pool limits only a pool can enforce (`maxConnections`, pending requests
//! waiting for a connection, `maxRequestsPerConnection`, `maxRetries`) are the core's.

mod outlier;

use rustc_hash::FxHashMap as HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outlier::Ledger;
use wasmesh_policy::{CLUSTER_PROPERTY, CircuitBreakerConfig, ClusterPolicy};
use wasmesh_sdk::{
    Action, Config, FilterResult, Gauge, HttpFilter, Plugin, Request, Status, mesh, property_str,
    shared_get, shared_set,
};

/// A cluster with a policy, ready for the request path: its in-flight gauge and its ledger's
/// shared-data key are made once, at configuration.
struct ClusterState {
    name: String,
    policy: ClusterPolicy,
    /// Requests in flight to the cluster across all workers, when it has a limit: a gauge
    /// (one atomic in the host, exported as a metric) rather than shared data, which would
    /// take a lock and a compare-and-swap round trip.
    in_flight: Option<Gauge>,
    outlier_key: String,
}

#[derive(Default)]
struct Breaker {
    clusters: Rc<HashMap<String, Rc<ClusterState>>>,
}

impl Plugin for Breaker {
    fn configure(&mut self, config: &Config) -> Result<(), Box<dyn std::error::Error>> {
        let config: CircuitBreakerConfig = config.json()?;
        let mut clusters = HashMap::default();
        for (name, policy) in config.clusters {
            let in_flight = match policy.max_requests {
                Some(_) => Some(Gauge::define(&format!(
                    "wasmesh_circuit_breaker_rq_active.{name}"
                ))?),
                None => None,
            };
            let state = ClusterState {
                outlier_key: format!("outlier|{name}"),
                name: name.clone(),
                policy,
                in_flight,
            };
            clusters.insert(name, Rc::new(state));
        }
        self.clusters = Rc::new(clusters);
        Ok(())
    }

    fn new_http(&mut self) -> Box<dyn HttpFilter> {
        Box::new(Admission {
            clusters: self.clusters.clone(),
            cluster: None,
            admitted: false,
        })
    }
}

struct Admission {
    clusters: Rc<HashMap<String, Rc<ClusterState>>>,
    /// The cluster the request went to, when it has a policy.
    cluster: Option<Rc<ClusterState>>,
    /// Counted in the cluster's requests in flight (to release at the end).
    admitted: bool,
}

impl HttpFilter for Admission {
    fn on_request_headers(&mut self, req: &mut Request, _end: bool) -> FilterResult {
        if self.clusters.is_empty() {
            return Ok(Action::Continue);
        }
        let Some(name) = property_str(&CLUSTER_PROPERTY)? else {
            return Ok(Action::Continue);
        };
        let Some(cluster) = self.clusters.get(&name).cloned() else {
            return Ok(Action::Continue);
        };
        if let (Some(gauge), Some(max)) = (cluster.in_flight, cluster.policy.max_requests) {
            // Count first, then check: two workers racing at the limit may both refuse,
            // never both pass.
            gauge.change(1)?;
            if gauge.value()? > i64::from(max) {
                gauge.change(-1)?;
                mesh::response_flag("UO")?;
                req.respond(
                    503,
                    &[("x-envoy-overloaded", "true"), ("content-type", "text/plain")],
                    b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
                )?;
                return Ok(Action::Continue);
            }
            self.admitted = true;
        }
        self.cluster = Some(cluster);
        Ok(Action::Continue)
    }

    fn on_log(&mut self) {
        let Some(cluster) = self.cluster.take() else {
            return;
        };
        if self.admitted
            && let Some(gauge) = cluster.in_flight
        {
            let _ = gauge.change(-1);
        }
        let Some(policy) = &cluster.policy.outlier_detection else {
            return;
        };
        let Ok(Some(attempts)) = property_str(&["wasmesh", "upstream_attempts"]) else {
            return;
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let key = &cluster.outlier_key;
        // Compare-and-swap: another worker may be recording into the same ledger.
        for _ in 0..16 {
            let (mut ledger, cas) = match shared_get(key) {
                Ok(Some((bytes, cas))) => {
                    (Ledger::parse(&String::from_utf8_lossy(&bytes)), Some(cas))
                }
                Ok(None) => (Ledger::default(), None),
                Err(_) => return,
            };
            let mut changed = false;
            let mut ejections = Vec::new();
            for attempt in attempts.split(',').filter(|a| !a.is_empty()) {
                let Some((address, status)) = attempt.rsplit_once(' ') else {
                    continue;
                };
                let (c, ejection) =
                    ledger.record(policy, address, status.parse().unwrap_or(0), now_ms);
                changed |= c;
                ejections.extend(ejection);
            }
            if !changed {
                return;
            }
            match shared_set(key, ledger.render().as_bytes(), cas) {
                Ok(()) => {
                    for e in ejections {
                        let _ = mesh::eject_endpoint(
                            &cluster.name,
                            &e.address,
                            Duration::from_millis(e.duration_ms),
                        );
                    }
                    return;
                }
                Err(e) if e.status == Status::CasMismatch => continue,
                Err(_) => return,
            }
        }
    }
}

wasmesh_sdk::plugin!(Breaker::default());
