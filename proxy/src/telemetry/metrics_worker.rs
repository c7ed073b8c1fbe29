//! What each worker keeps so that recording a request costs a hash lookup and a few stores:
//! the config's plan (labels of the local workload, its encoded peer headers, which listeners
//! report), peers and targets met before (decoded and labelled once), and the series each
//! compact key leads to. It lives in a thread-local of the worker thread: no lock, no atomic
//! reference count shared with other workers. Only a miss goes to the shared family.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::metrics_family::{HttpShard, Series, TcpShard};
use super::metrics_labels::{Label, Reporter, ServiceLabels, WorkloadLabels};
use super::peer_metadata::{LocalHeaders, PeerMetadata, is_mesh};
use crate::config::{Bootstrap, Cluster, ServiceRef, TrafficDirection};
use crate::stats::ResponseFlags;

/// Entries a worker keeps per map before starting afresh (the shared families keep counting).
const CACHE_LIMIT: usize = 4096;

/// What one config says about telemetry, worked out once per config.
pub struct Plan {
    pub version: u64,
    /// Per listener: who reports its traffic (none: not recorded).
    pub reporters: Box<[Option<Reporter>]>,
    pub local: WorkloadLabels,
    /// The local workload's SPIFFE id.
    pub principal: Option<Label>,
    /// Where peers' principals are (`spiffe://<this>/ns/...`).
    pub trust_domain: String,
    /// Sent to peers; none without a workload.
    pub headers: Option<LocalHeaders>,
    /// Services by the host names routes know them by (no port), for a request whose cluster
    /// names no service.
    hosts: HashMap<String, ServiceLabels>,
}

/// What the proxy's identity says, where the bootstrap does not.
#[derive(Default)]
pub struct IdentityHints {
    /// Its certificate's SPIFFE id.
    pub spiffe_id: Option<String>,
    /// The mesh's trust domain.
    pub trust_domain: Option<String>,
}

impl Plan {
    /// The plan of config `version`.
    pub fn build(b: &Bootstrap, version: u64, identity: IdentityHints) -> Plan {
        let workload = b.telemetry.workload.as_ref();
        let principal = workload
            .map(|w| w.principal.clone())
            .filter(|p| !p.is_empty())
            .or(identity.spiffe_id);
        let trust_domain = principal
            .as_deref()
            .and_then(|p| p.strip_prefix("spiffe://"))
            .and_then(|p| p.split('/').next())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .or(identity.trust_domain)
            .unwrap_or_else(|| "cluster.local".to_owned());
        let local = workload.map_or_else(WorkloadLabels::unknown, |w| {
            PeerMetadata::local(w, &trust_domain).workload_labels()
        });
        // Istio's node id carries the pod's IP: the inbound listeners' address where it names
        // one, else the first listener's.
        let ip = b
            .listeners
            .iter()
            .filter(|l| l.traffic_direction == Some(TrafficDirection::Inbound))
            .chain(&b.listeners)
            .filter_map(|l| l.address.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip())
            .find(|ip| !ip.is_unspecified())
            .map_or_else(|| "0.0.0.0".to_owned(), |ip| ip.to_string());
        let headers =
            workload.and_then(|w| LocalHeaders::new(&PeerMetadata::local(w, &trust_domain), &ip));
        let reporters = b
            .listeners
            .iter()
            .map(|l| {
                l.traffic_direction.map(|d| match d {
                    TrafficDirection::Inbound => Reporter::Destination,
                    TrafficDirection::Outbound => Reporter::Source,
                })
            })
            .collect();
        let services: HashMap<&str, &ServiceRef> = b
            .clusters
            .iter()
            .filter_map(|c| Some((c.name.as_str(), c.service.as_ref()?)))
            .collect();
        let mut hosts = HashMap::new();
        for l in &b.listeners {
            for vh in &l.virtual_hosts {
                let service = vh
                    .routes
                    .first()
                    .and_then(|r| services.get(r.cluster.as_str()));
                let Some(s) = service else { continue };
                for domain in vh.domains.iter().filter(|d| !d.contains('*')) {
                    hosts
                        .entry(strip_port(domain).to_ascii_lowercase())
                        .or_insert_with(|| service_labels(s));
                }
            }
        }
        Plan {
            version,
            reporters,
            local,
            principal: principal.map(Label::from),
            trust_domain,
            headers,
            hosts,
        }
    }
}

fn service_labels(s: &ServiceRef) -> ServiceLabels {
    let label = |v: &str| {
        if v.is_empty() {
            super::metrics_labels::unknown()
        } else {
            Label::from(v)
        }
    };
    ServiceLabels {
        host: label(&s.host),
        name: label(&s.name),
        namespace: label(&s.namespace),
    }
}

/// `host:port` without the port (`[::1]:80` keeps its brackets).
pub fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            if port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty() {
                host
            } else {
                authority
            }
        }
        _ => authority,
    }
}

/// A peer met before: its labels, and the principal its metadata implies.
pub struct Peer {
    pub id: u64,
    pub labels: WorkloadLabels,
    /// `spiffe://<trust domain>/ns/<NAMESPACE>/sa/<SERVICE_ACCOUNT>`, when it says both.
    pub principal: Option<Label>,
}

/// Where a request went: the service, and what the cluster says of its endpoints.
pub struct Target {
    pub id: u64,
    pub service: ServiceLabels,
    /// ISTIO_MUTUAL: the endpoints are sidecars with mesh identities.
    pub mesh: bool,
    /// The one identity the endpoints must have, when the cluster names exactly one.
    pub principal: Option<Label>,
}

/// A request's series, by what its labels are made of.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HttpKey {
    pub reporter: Reporter,
    pub peer: u64,
    pub principal: u64,
    pub target: u64,
    pub mtls: bool,
    pub grpc: bool,
    pub code: u16,
    pub grpc_status: Option<u8>,
    pub flags: ResponseFlags,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpKey {
    pub reporter: Reporter,
    pub target: u64,
    pub flags: ResponseFlags,
}

pub struct WorkerState {
    /// The metrics this state serves (a process may run several proxies).
    owner: usize,
    #[allow(clippy::redundant_allocation)]
    plan: Option<Rc<Arc<Plan>>>,
    /// Ids are never reused, so a key made of them never names another peer or target.
    next_id: u64,
    peers: FxHashMap<Box<[u8]>, Option<Rc<Peer>>>,
    principals: FxHashMap<Arc<str>, u64>,
    clusters: FxHashMap<(u64, u64), Rc<Target>>,
    hosts: FxHashMap<Box<str>, Rc<Target>>,
    pub http: FxHashMap<HttpKey, Option<Series<HttpShard>>>,
    pub tcp: FxHashMap<TcpKey, Option<Series<TcpShard>>>,
}

thread_local! {
    static STATE: RefCell<Option<WorkerState>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's state for the metrics `owner` names (made, or made afresh, as
/// needed: a process may run several proxies, each with threads of its own).
pub fn with<R>(owner: usize, f: impl FnOnce(&mut WorkerState) -> R) -> R {
    STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|s| s.owner != owner) {
            *slot = Some(WorkerState::new(owner));
        }
        f(slot.as_mut().expect("just made"))
    })
}

/// Runs `f` on this thread's state, if it has one.
pub fn with_current<R>(f: impl FnOnce(&mut WorkerState) -> R) -> Option<R> {
    STATE.with(|cell| cell.borrow_mut().as_mut().map(f))
}

impl WorkerState {
    fn new(owner: usize) -> WorkerState {
        WorkerState {
            owner,
            plan: None,
            next_id: 1,
            peers: FxHashMap::default(),
            principals: FxHashMap::default(),
            clusters: FxHashMap::default(),
            hosts: FxHashMap::default(),
            http: FxHashMap::default(),
            tcp: FxHashMap::default(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The plan of config `version`: this worker's copy while the version holds, else
    /// `shared`'s.
    #[allow(clippy::redundant_allocation)]
    pub fn plan(&mut self, version: u64, shared: impl FnOnce() -> Arc<Plan>) -> Rc<Arc<Plan>> {
        if let Some(plan) = &self.plan
            && plan.version == version
        {
            return plan.clone();
        }
        let plan = Rc::new(shared());
        // Peers' principals and hosts' services depend on the config.
        self.peers.clear();
        self.hosts.clear();
        self.clusters.clear();
        self.plan = Some(plan.clone());
        plan
    }

    /// The peer a metadata header describes; none if it does not decode.
    pub fn peer(&mut self, plan: &Plan, value: &[u8]) -> Option<Rc<Peer>> {
        if let Some(known) = self.peers.get(value) {
            return known.clone();
        }
        let peer = PeerMetadata::decode(value).map(|meta| {
            let principal =
                (!meta.namespace.is_empty() && !meta.service_account.is_empty()).then(|| {
                    Label::from(format!(
                        "spiffe://{}/ns/{}/sa/{}",
                        plan.trust_domain, meta.namespace, meta.service_account
                    ))
                });
            Rc::new(Peer {
                id: self.id(),
                labels: meta.workload_labels(),
                principal,
            })
        });
        if self.peers.len() >= CACHE_LIMIT {
            self.peers.clear();
        }
        self.peers.insert(value.into(), peer.clone());
        peer
    }

    /// The target a request's host names (the service a route to it leads to, else the host).
    pub fn host_target(&mut self, plan: &Plan, host: &str) -> Rc<Target> {
        if let Some(t) = self.hosts.get(host) {
            return t.clone();
        }
        let service = plan
            .hosts
            .get(&host.to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| ServiceLabels::from_host(host));
        let target = Rc::new(Target {
            id: self.id(),
            service,
            mesh: false,
            principal: None,
        });
        if self.hosts.len() >= CACHE_LIMIT {
            self.hosts.clear();
        }
        self.hosts.insert(host.into(), target.clone());
        target
    }

    /// The target of cluster `id` (unique in the process) configured as `cluster`; `by_host`
    /// names the service when the cluster does not.
    pub fn cluster_target(
        &mut self,
        id: u64,
        cluster: &Cluster,
        by_host: Option<&Target>,
    ) -> Rc<Target> {
        let host_id = match (&cluster.service, by_host) {
            (None, Some(t)) => t.id,
            _ => 0,
        };
        let key = (id, host_id);
        if let Some(t) = self.clusters.get(&key) {
            return t.clone();
        }
        let service = match (&cluster.service, by_host) {
            (Some(s), _) => service_labels(s),
            (None, Some(t)) => t.service.clone(),
            (None, None) => ServiceLabels::unknown(),
        };
        let sans = cluster
            .tls
            .as_ref()
            .map_or(&[][..], |t| &t.subject_alt_names[..]);
        let target = Rc::new(Target {
            id: self.id(),
            service,
            mesh: is_mesh(cluster),
            principal: match sans {
                [one] => Some(Label::from(one.as_str())),
                _ => None,
            },
        });
        if self.clusters.len() >= CACHE_LIMIT {
            self.clusters.clear();
        }
        self.clusters.insert(key, target.clone());
        target
    }

    /// An id for a caller's certificate identity.
    pub fn principal(&mut self, principal: &Arc<str>) -> u64 {
        if let Some(&id) = self.principals.get(principal) {
            return id;
        }
        let id = self.id();
        if self.principals.len() >= CACHE_LIMIT {
            self.principals.clear();
        }
        self.principals.insert(principal.clone(), id);
        id
    }

    /// Keeps the series caches within bounds before an insert.
    pub fn make_room(&mut self) {
        if self.http.len() >= CACHE_LIMIT {
            self.http.clear();
        }
        if self.tcp.len() >= CACHE_LIMIT {
            self.tcp.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_from_authorities() {
        assert_eq!(strip_port("reviews:9080"), "reviews");
        assert_eq!(strip_port("reviews"), "reviews");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(
            strip_port("a.b.svc.cluster.local:80"),
            "a.b.svc.cluster.local"
        );
    }
}
