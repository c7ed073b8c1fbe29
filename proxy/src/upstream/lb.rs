//! Load balancing: round robin, least request (power of two choices) and random.
//!
//! Unhealthy endpoints and those already tried by this request are skipped; if fewer than half
//! the endpoints are healthy, Envoy's panic mode applies and every endpoint is a candidate.

use std::sync::atomic::Ordering::Relaxed;

use super::now_ms;
use super::pool::ClusterPool;
use crate::config::LbPolicy;

/// Picks an index into the worker's endpoints of the cluster (`pool.endpoints`), moving its
/// round-robin cursor; `tried` holds endpoints this request already used, avoided when
/// another candidate exists.
pub fn pick_endpoint(pool: &ClusterPool, tried: &[usize]) -> Option<usize> {
    let n = pool.endpoints.len();
    if n == 0 {
        return None;
    }
    if n == 1 {
        return Some(0);
    }
    let now = now_ms();
    let healthy = |i: usize| pool.endpoints[i].endpoint().is_healthy(now);
    let healthy_count = (0..n).filter(|&i| healthy(i)).count();
    let panic_mode = healthy_count * 2 < n;
    let eligible = |i: usize| (panic_mode || healthy(i)) && !tried.contains(&i);
    let fallback = |i: usize| panic_mode || healthy(i);

    pick_with(pool, &eligible).or_else(|| pick_with(pool, &fallback))
}

fn pick_with(pool: &ClusterPool, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    let n = pool.endpoints.len();
    match pool.cluster.lb_policy {
        LbPolicy::RoundRobin => {
            let rr = &pool.rr;
            let start = rr.get();
            let found = (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))?;
            rr.set(found + 1);
            Some(found)
        }
        LbPolicy::Random => random_eligible(n, eligible),
        LbPolicy::LeastRequest => {
            let a = random_eligible(n, eligible)?;
            let b = random_eligible(n, eligible)?;
            let load = |i: usize| pool.endpoints[i].endpoint().rq_active.load(Relaxed);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

/// A uniformly random eligible index: a few random draws, then a scan from a random start.
fn random_eligible(n: usize, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    for _ in 0..3 {
        let i = rand::random_range(0..n);
        if eligible(i) {
            return Some(i);
        }
    }
    let start = rand::random_range(0..n);
    (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::sync::Arc;

    use super::*;
    use crate::config::Bootstrap;
    use crate::upstream::Cluster;
    use crate::upstream::pool::Pools;

    fn cluster(policy: &str, endpoints: usize) -> Rc<ClusterPool> {
        let eps: Vec<String> = (0..endpoints)
            .map(|i| format!("\"127.0.0.1:{}\"", 1000 + i))
            .collect();
        let yaml = format!(
            "listeners: [{{name: l, address: \"127.0.0.1:0\", virtual_hosts: [{{name: v, domains: ['*'], routes: []}}]}}]\n\
             clusters: [{{name: c, lb_policy: {policy}, endpoints: [{}]}}]\n",
            eps.join(",")
        );
        let b = Bootstrap::parse(&yaml).unwrap();
        let c = Arc::new(Cluster::new(&b.clusters[0], 1, None).unwrap());
        let pool = Pools::default().cluster(&c);
        pool.rr.set(0);
        pool
    }

    fn endpoint(c: &ClusterPool, i: usize) -> &crate::upstream::Endpoint {
        c.endpoints[i].endpoint()
    }

    #[test]
    fn round_robin_cycles_and_skips_tried() {
        let c = cluster("round_robin", 3);
        let picks: Vec<_> = (0..6).map(|_| pick_endpoint(&c, &[]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(pick_endpoint(&c, &[0]), Some(1));
        // Every endpoint tried: reuse one rather than fail.
        assert!(pick_endpoint(&c, &[0, 1, 2]).is_some());
    }

    #[test]
    fn unhealthy_endpoints_are_skipped_until_panic_mode() {
        let c = cluster("random", 4);
        endpoint(&c, 1).report_connect_failure();
        for _ in 0..200 {
            assert_ne!(pick_endpoint(&c, &[]), Some(1));
        }
        // Three of four down: panic mode spreads load over all of them again.
        endpoint(&c, 0).report_connect_failure();
        endpoint(&c, 2).report_connect_failure();
        let seen: std::collections::HashSet<_> =
            (0..400).map(|_| pick_endpoint(&c, &[]).unwrap()).collect();
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let c = cluster("least_request", 2);
        endpoint(&c, 0).rq_active.store(10, Relaxed);
        let ones = (0..1000)
            .filter(|_| pick_endpoint(&c, &[]) == Some(1))
            .count();
        // P2C picks the loaded endpoint only when both draws land on it: about a quarter.
        assert!(ones > 650, "idle endpoint chosen {ones} of 1000 times");
    }
}
