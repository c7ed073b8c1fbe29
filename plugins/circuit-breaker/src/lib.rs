//! Circuit breaking from DestinationRules: request admission (requests in flight to a
//! cluster across the proxy, beyond which a request is answered 503 with flag `UO` and
//! `x-envoy-overloaded: true`) and outlier detection (consecutive 5xx or gateway errors eject
//! an endpoint from load balancing). Counts live in shared data, so all workers share them.
//! The connection-pool limits only a pool can enforce (`maxConnections`, pending requests
//! waiting for a connection, `maxRequestsPerConnection`, `maxRetries`) are the core's.

mod outlier;

use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outlier::Ledger;
use wasmesh_policy::{CLUSTER_PROPERTY, CircuitBreakerConfig, ClusterPolicy};
use wasmesh_sdk::{
    Action, Config, FilterResult, HttpFilter, Plugin, Request, Status, mesh, property_str,
    shared_get, shared_set,
};

#[derive(Default)]
struct Breaker {
    config: Rc<CircuitBreakerConfig>,
}

impl Plugin for Breaker {
    fn configure(&mut self, config: &Config) -> Result<(), Box<dyn std::error::Error>> {
        self.config = Rc::new(config.json()?);
        Ok(())
    }

    fn new_http(&mut self) -> Box<dyn HttpFilter> {
        Box::new(Admission {
            config: self.config.clone(),
            cluster: None,
            admitted: false,
        })
    }
}

struct Admission {
    config: Rc<CircuitBreakerConfig>,
    /// The cluster the request went to, when it has a policy.
    cluster: Option<String>,
    /// Counted in the cluster's requests in flight (to release at the end).
    admitted: bool,
}

impl Admission {
    fn policy(&self) -> Option<&ClusterPolicy> {
        self.config.clusters.get(self.cluster.as_deref()?)
    }
}

impl HttpFilter for Admission {
    fn on_request_headers(&mut self, req: &mut Request, _end: bool) -> FilterResult {
        if self.config.clusters.is_empty() {
            return Ok(Action::Continue);
        }
        let Some(cluster) = property_str(&CLUSTER_PROPERTY)? else {
            return Ok(Action::Continue);
        };
        let Some(policy) = self.config.clusters.get(&cluster) else {
            return Ok(Action::Continue);
        };
        if let Some(max) = policy.max_requests {
            if !add_in_flight(&cluster, 1, Some(u64::from(max)))? {
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
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        if self.admitted {
            let _ = add_in_flight(&cluster, -1, None);
        }
        let Some(policy) = self.policy().and_then(|p| p.outlier_detection.clone()) else {
            return;
        };
        let Ok(Some(attempts)) = property_str(&["wasmesh", "upstream_attempts"]) else {
            return;
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let key = format!("outlier|{cluster}");
        // Compare-and-swap: another worker may be recording into the same ledger.
        for _ in 0..16 {
            let (mut ledger, cas) = match shared_get(&key) {
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
                    ledger.record(&policy, address, status.parse().unwrap_or(0), now_ms);
                changed |= c;
                ejections.extend(ejection);
            }
            if !changed {
                return;
            }
            match shared_set(&key, ledger.render().as_bytes(), cas) {
                Ok(()) => {
                    for e in ejections {
                        let _ = mesh::eject_endpoint(
                            &cluster,
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

/// Adds `delta` to the cluster's requests in flight, unless that would pass `limit`; false
/// when it would.
fn add_in_flight(cluster: &str, delta: i64, limit: Option<u64>) -> wasmesh_sdk::Result<bool> {
    let key = format!("in_flight|{cluster}");
    loop {
        let (current, cas) = match shared_get(&key)? {
            Some((bytes, cas)) => (
                u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])),
                Some(cas),
            ),
            None => (0, None),
        };
        let next = current.saturating_add_signed(delta);
        if delta > 0 && limit.is_some_and(|l| next > l) {
            return Ok(false);
        }
        match shared_set(&key, &next.to_le_bytes(), cas) {
            Ok(()) => return Ok(true),
            Err(e) if e.status == Status::CasMismatch => continue,
            Err(e) => return Err(e),
        }
    }
}

wasmesh_sdk::plugin!(Breaker::default());
