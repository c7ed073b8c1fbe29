//! `resolution: dns` clusters (Envoy's STRICT_DNS, Istio's ServiceEntry `resolution: DNS`):
//! each `name:port` is looked up when the cluster is built and again every [`REFRESH`] on the
//! `wasmesh-dns` thread, never on a worker. Every address a name has is an endpoint; a failed
//! lookup keeps that name's last good answer; an address that stays keeps its [`Endpoint`]
//! (and so its health and outlier state). Workers see a new set by its generation number
//! (`pool::Pools::cluster`), as they see a new snapshot by its version.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use super::Endpoint;

/// Envoy's default `dns_refresh_rate`.
const REFRESH: Duration = Duration::from_secs(5);

/// A `dns` cluster's endpoints as last resolved.
pub struct DnsEndpoints {
    cluster: Arc<str>,
    names: Box<[String]>,
    /// Bumped (under the lock) each time the set changes.
    generation: AtomicU64,
    state: Mutex<State>,
}

struct State {
    set: Arc<[Arc<Endpoint>]>,
    /// Each name's last good answer, sorted: a reordered answer is no change.
    answers: Vec<Vec<SocketAddr>>,
}

impl DnsEndpoints {
    /// Resolves `names` now (a name that fails is left for the next refresh) and hands the
    /// set to the resolver thread, which keeps it current while the cluster lives.
    pub(super) fn start(cluster: &str, names: &[String]) -> Arc<DnsEndpoints> {
        let dns = Arc::new(DnsEndpoints {
            cluster: cluster.into(),
            names: names.into(),
            generation: AtomicU64::new(0),
            state: Mutex::new(State {
                set: Arc::new([]),
                answers: vec![Vec::new(); names.len()],
            }),
        });
        dns.refresh();
        register(Arc::downgrade(&dns));
        dns
    }

    /// The set's generation: one relaxed load, compared by workers before using their view.
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// The current set and its generation, read together.
    pub fn current(&self) -> (u64, Arc<[Arc<Endpoint>]>) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (self.generation.load(Relaxed), state.set.clone())
    }

    /// Looks every name up (outside the lock) and installs the new set if it changed.
    fn refresh(&self) {
        let answers: Vec<Option<Vec<SocketAddr>>> =
            self.names.iter().map(|name| self.lookup(name)).collect();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for (last, answer) in state.answers.iter_mut().zip(answers) {
            if let Some(answer) = answer
                && *last != answer
            {
                *last = answer;
                changed = true;
            }
        }
        if !changed {
            return;
        }
        let mut seen = HashSet::new();
        let addrs: Vec<SocketAddr> = state
            .answers
            .iter()
            .flatten()
            .copied()
            .filter(|a| seen.insert(*a))
            .collect();
        let kept: HashMap<SocketAddr, &Arc<Endpoint>> =
            state.set.iter().map(|e| (e.addr, e)).collect();
        let set: Arc<[Arc<Endpoint>]> = addrs
            .iter()
            .map(|a| match kept.get(a) {
                Some(e) => Arc::clone(e),
                None => Arc::new(Endpoint::new(*a)),
            })
            .collect();
        state.set = set;
        self.generation.fetch_add(1, Relaxed);
        tracing::info!(cluster = %self.cluster, endpoints = ?addrs, "DNS endpoints changed");
    }

    /// A name's addresses, sorted; `None` when the lookup fails or finds none.
    fn lookup(&self, name: &str) -> Option<Vec<SocketAddr>> {
        match name.to_socket_addrs() {
            Ok(addrs) => {
                let mut addrs: Vec<_> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                if addrs.is_empty() {
                    tracing::debug!(cluster = %self.cluster, name, "DNS: no address");
                    return None;
                }
                Some(addrs)
            }
            Err(error) => {
                tracing::debug!(cluster = %self.cluster, name, %error, "DNS lookup failed");
                None
            }
        }
    }
}

/// The clusters the resolver thread refreshes; a dropped cluster leaves by its `Weak`.
type Registry = Mutex<Vec<Weak<DnsEndpoints>>>;

/// Adds a set to the resolver thread's, starting the thread with the first one.
fn register(dns: Weak<DnsEndpoints>) {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    let registry = REGISTRY.get_or_init(|| {
        let registry = Arc::new(Registry::default());
        let theirs = registry.clone();
        let spawned = std::thread::Builder::new()
            .name("wasmesh-dns".into())
            .spawn(move || resolve_forever(&theirs));
        if let Err(error) = spawned {
            tracing::error!(%error, "no DNS resolver thread: dns clusters keep their first answer");
        }
        registry
    });
    registry.lock().unwrap_or_else(|e| e.into_inner()).push(dns);
}

fn resolve_forever(registry: &Registry) {
    loop {
        std::thread::sleep(REFRESH);
        let live: Vec<Arc<DnsEndpoints>> = {
            let mut all = registry.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|w| w.strong_count() > 0);
            all.iter().filter_map(Weak::upgrade).collect()
        };
        for dns in live {
            dns.refresh();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_does_not_resolve_leaves_the_set_empty_and_kept_addresses_keep_state() {
        let dns = DnsEndpoints::start("c", &["no-such-host.invalid:80".into()]);
        assert_eq!(dns.current().1.len(), 0);
        assert_eq!(dns.generation(), 0);

        let dns = DnsEndpoints::start("c", &["127.0.0.1:80".into(), "localhost:80".into()]);
        let (generation, set) = dns.current();
        assert!(
            set.iter()
                .any(|e| e.addr == "127.0.0.1:80".parse().unwrap())
        );
        // Both names give 127.0.0.1:80: one endpoint for it.
        let n = set.iter().filter(|e| e.addr.ip().is_loopback()).count();
        assert_eq!(n, set.len());
        set[0].eject_until(u64::MAX);
        dns.refresh();
        let (again, same) = dns.current();
        assert_eq!(again, generation, "an unchanged answer is no new set");
        assert!(!same[0].is_healthy(super::super::now_ms()));
    }
}
