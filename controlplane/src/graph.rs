//! The service graph, as Kiali draws its workload graph with service nodes: workloads
//! (namespace, workload, app, version) and the services they call, an edge from a source
//! workload to a service and from the service to each destination workload, each with its
//! request rate, error rate, p99 latency, protocol and mTLS, all from the proxies' own Istio
//! metrics over a short window ([`window`], read from their text by [`text`]).
//!
//! Which reports count: a request is reported by both sidecars of a hop. The destination's
//! report is the one used (it saw the request arrive, and whether it came over mTLS); the
//! source's is used where no destination reported that source, service and workload: a
//! service outside the mesh, a request that failed before reaching any workload.

pub mod text;
pub mod window;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use window::{Increase, Labels, ProxyWindow, label};

/// Kiali's edge thresholds, in percent of requests that failed: above `DEGRADED` an edge is
/// degraded (orange), above `FAILURE` failing (red).
pub const DEGRADED: f64 = 0.1;
pub const FAILURE: f64 = 20.0;

/// What the control plane knows of a connected proxy, beside its metrics.
#[derive(Clone, Debug, Default)]
pub struct ProxyInfo {
    /// `name.namespace`.
    pub id: String,
    pub namespace: String,
    /// The workload it serves, as its bootstrap names it (else its own name): used until its
    /// metrics name it.
    pub workload: String,
    pub app: String,
    pub version: String,
    pub metrics_address: String,
    /// Its listeners' plugins, as its current snapshot configures them.
    pub listeners: Vec<ListenerPlugins>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerPlugins {
    pub listener: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    pub plugins: Vec<Plugin>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plugin {
    pub name: String,
    /// `traffic` (the control plane's router, fault, mirror, circuit-breaker), `authz`
    /// (AuthorizationPolicies) or `wasmplugin` (a user's WasmPlugin).
    pub kind: String,
    /// The root id in the module (Istio's `pluginName`), if any.
    pub root_id: String,
    pub phase: String,
    pub priority: i32,
    /// The module's sha256, if known.
    pub sha256: String,
}

/// A node of the graph.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    /// `namespace/workload` for a workload, the service's host for a service, `unknown` for
    /// callers the reports do not name (outside the mesh).
    pub id: String,
    /// `workload`, `service` or `unknown`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub app: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The connected proxies serving a workload.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<String>,
    /// No traffic in the window.
    pub idle: bool,
}

/// An edge: traffic over the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Edge {
    /// `source->target`.
    pub id: String,
    pub source: String,
    pub target: String,
    /// `http`, `grpc` or `tcp`: what most of its requests spoke.
    pub protocol: String,
    /// Requests per second.
    pub rate: f64,
    /// The share of requests that failed, in percent (see `failed`).
    pub error_percent: f64,
    /// The 99th percentile of the requests' duration, in milliseconds (none without requests).
    pub p99_ms: Option<f64>,
    /// Some of its requests arrived over mutual TLS (Kiali's padlock).
    pub mtls: bool,
    /// The share that did, in percent.
    pub mtls_percent: f64,
    /// Bytes per second both ways, for TCP.
    pub tcp_bytes_rate: f64,
    /// `healthy`, `degraded`, `failure` (Kiali's colours) or `idle`.
    pub health: &'static str,
    /// Requests per second by response code.
    pub codes: BTreeMap<String, f64>,
}

/// The whole graph.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Graph {
    pub window_seconds: u64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// What [`node_details`] tells of a node.
#[derive(Clone, Debug, Serialize)]
pub struct NodeDetails {
    pub node: Node,
    pub inbound: Vec<Edge>,
    pub outbound: Vec<Edge>,
    /// Each of its proxies' listeners and their plugins.
    pub plugins: Vec<ProxyPlugins>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProxyPlugins {
    pub proxy: String,
    pub listeners: Vec<ListenerPlugins>,
}

/// The traffic of one (source, service, destination) as one side reported it.
#[derive(Clone, Debug, Default)]
struct Traffic {
    /// Requests per second, and the share of them that failed or came over mTLS.
    rate: f64,
    errors: f64,
    mtls: f64,
    /// Increases of the duration buckets over the window, by `le`.
    buckets: BTreeMap<u64, (f64, f64)>,
    protocols: BTreeMap<String, f64>,
    codes: BTreeMap<String, f64>,
    tcp_bytes_rate: f64,
}

impl Traffic {
    fn add(&mut self, other: &Traffic) {
        self.rate += other.rate;
        self.errors += other.errors;
        self.mtls += other.mtls;
        for (key, (le, n)) in &other.buckets {
            self.buckets.entry(*key).or_insert((*le, 0.0)).1 += n;
        }
        for (p, r) in &other.protocols {
            *self.protocols.entry(p.clone()).or_default() += r;
        }
        for (c, r) in &other.codes {
            *self.codes.entry(c.clone()).or_default() += r;
        }
        self.tcp_bytes_rate += other.tcp_bytes_rate;
    }

    fn is_empty(&self) -> bool {
        self.rate == 0.0 && self.tcp_bytes_rate == 0.0
    }
}

/// A workload as a report names it, or the service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    source: String,
    service: String,
    destination: String,
}

/// Whether a request failed, as Kiali counts it: a 5xx, no response (code 0), a response
/// flag (Envoy's: the proxy failed it, reset it, ...; a delay injected, `DI`, is no failure),
/// or a gRPC status other than OK.
fn failed(labels: &Labels) -> bool {
    let code = label(labels, "response_code");
    let flags = label(labels, "response_flags");
    let grpc = label(labels, "grpc_response_status");
    code.starts_with('5')
        || code == "0"
        || flags.split(',').any(|f| !matches!(f, "" | "-" | "DI"))
        || (label(labels, "request_protocol") == "grpc" && !(grpc.is_empty() || grpc == "0"))
}

fn known(value: &str) -> Option<&str> {
    (!value.is_empty() && value != "unknown").then_some(value)
}

/// Builds the graph from each proxy's window; `proxies` without traffic are idle nodes.
pub fn build(proxies: &[(&ProxyInfo, Option<&ProxyWindow>)], window_seconds: u64) -> Graph {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut by_destination: BTreeMap<Key, Traffic> = BTreeMap::new();
    let mut by_source: BTreeMap<Key, Traffic> = BTreeMap::new();
    for (_, window) in proxies {
        let Some(window) = window else { continue };
        let span = window.span().as_secs_f64();
        if span == 0.0 {
            continue;
        }
        for (labels, increase) in window.increases() {
            let reports = match label(labels, "reporter") {
                "destination" => &mut by_destination,
                "source" => &mut by_source,
                _ => continue,
            };
            let traffic = traffic(labels, &increase, span);
            if traffic.is_empty() {
                continue;
            }
            let key = Key {
                source: workload_node(labels, "source", &mut nodes),
                service: service_node(labels, &mut nodes),
                destination: workload_node(labels, "destination", &mut nodes),
            };
            reports.entry(key).or_default().add(&traffic);
        }
    }
    // The destination's report where there is one, else the source's.
    let mut traffic = by_destination;
    for (key, t) in by_source {
        traffic.entry(key).or_insert(t);
    }

    // Source → service, and service → destination workload.
    let mut edges: BTreeMap<(String, String), Traffic> = BTreeMap::new();
    for (key, t) in &traffic {
        edges
            .entry((key.source.clone(), key.service.clone()))
            .or_default()
            .add(t);
        if key.destination != UNKNOWN {
            edges
                .entry((key.service.clone(), key.destination.clone()))
                .or_default()
                .add(t);
        }
    }
    // Proxies serve workload nodes: by what their own reports say they are, else by name.
    for (info, window) in proxies {
        let (namespace, workload) = window
            .and_then(own_workload)
            .unwrap_or_else(|| (info.namespace.clone(), info.workload.clone()));
        let id = format!("{namespace}/{workload}");
        let node = nodes.entry(id.clone()).or_insert_with(|| Node {
            id,
            kind: "workload",
            namespace,
            name: workload,
            app: info.app.clone(),
            version: info.version.clone(),
            proxies: Vec::new(),
            idle: true,
        });
        node.proxies.push(info.id.clone());
    }

    Graph {
        window_seconds,
        nodes: nodes.into_values().collect(),
        edges: edges
            .into_iter()
            .map(|((source, target), t)| edge(source, target, &t))
            .collect(),
    }
}

/// The node of callers the reports do not name (outside the mesh, or without metadata).
const UNKNOWN: &str = "unknown";

/// The workload that a report's `side` (`source` or `destination`) names, added to `nodes`
/// (an unknown one only as a source: no edge leads to an unknown destination).
fn workload_node(labels: &Labels, side: &str, nodes: &mut BTreeMap<String, Node>) -> String {
    let get = |name: &str| label(labels, &format!("{side}_{name}")).to_owned();
    let (Some(workload), Some(namespace)) = (
        known(&get("workload")).map(str::to_owned),
        known(&get("workload_namespace")).map(str::to_owned),
    ) else {
        if side == "destination" {
            return UNKNOWN.into();
        }
        nodes.entry(UNKNOWN.into()).or_insert_with(|| Node {
            id: UNKNOWN.into(),
            kind: "unknown",
            namespace: String::new(),
            name: UNKNOWN.into(),
            app: String::new(),
            version: String::new(),
            proxies: Vec::new(),
            idle: false,
        });
        return UNKNOWN.into();
    };
    let id = format!("{namespace}/{workload}");
    let app = known(&get("app"))
        .or(known(&get("canonical_service")))
        .unwrap_or_default()
        .to_owned();
    let version = known(&get("version"))
        .or(known(&get("canonical_revision")))
        .unwrap_or_default()
        .to_owned();
    let node = nodes.entry(id.clone()).or_insert_with(|| Node {
        id: id.clone(),
        kind: "workload",
        namespace,
        name: workload,
        app: String::new(),
        version: String::new(),
        proxies: Vec::new(),
        idle: false,
    });
    if node.app.is_empty() {
        node.app = app;
    }
    if node.version.is_empty() {
        node.version = version;
    }
    id
}

/// The service a report names (by its host), added to `nodes`.
fn service_node(labels: &Labels, nodes: &mut BTreeMap<String, Node>) -> String {
    let host = label(labels, "destination_service");
    let name = known(label(labels, "destination_service_name"));
    let namespace = known(label(labels, "destination_service_namespace")).unwrap_or_default();
    let id = match (known(host), name) {
        (Some(host), _) => host.to_owned(),
        (None, Some(name)) if !namespace.is_empty() => format!("{name}.{namespace}"),
        _ => "unknown-service".to_owned(),
    };
    nodes.entry(id.clone()).or_insert_with(|| Node {
        id: id.clone(),
        kind: "service",
        namespace: namespace.to_owned(),
        name: name
            .map(str::to_owned)
            .unwrap_or_else(|| id.split('.').next().unwrap_or(&id).to_owned()),
        app: String::new(),
        version: String::new(),
        proxies: Vec::new(),
        idle: false,
    });
    id
}

/// One label set's traffic, as rates over the window's `span` seconds.
fn traffic(labels: &Labels, increase: &Increase, span: f64) -> Traffic {
    let rate = increase.requests / span;
    let mut t = Traffic {
        rate,
        tcp_bytes_rate: increase.tcp_bytes / span,
        ..Traffic::default()
    };
    if failed(labels) {
        t.errors = rate;
    }
    if label(labels, "connection_security_policy") == "mutual_tls" {
        t.mtls = rate;
    }
    for (le, n) in &increase.buckets {
        t.buckets.insert(le.to_bits(), (*le, *n));
    }
    let protocol = match label(labels, "request_protocol") {
        "" if increase.tcp_bytes > 0.0 => "tcp",
        "" => "http",
        p => p,
    };
    if rate > 0.0 || increase.tcp_bytes > 0.0 {
        t.protocols
            .insert(protocol.to_owned(), rate.max(t.tcp_bytes_rate));
    }
    if rate > 0.0 {
        let code = known(label(labels, "response_code")).unwrap_or("-");
        t.codes.insert(code.to_owned(), rate);
    }
    t
}

fn edge(source: String, target: String, t: &Traffic) -> Edge {
    let percent = |part: f64| {
        if t.rate > 0.0 {
            100.0 * part / t.rate
        } else {
            0.0
        }
    };
    let error_percent = percent(t.errors);
    let mtls_percent = percent(t.mtls);
    let health = if t.rate == 0.0 {
        if t.tcp_bytes_rate > 0.0 {
            "healthy"
        } else {
            "idle"
        }
    } else if error_percent > FAILURE {
        "failure"
    } else if error_percent > DEGRADED {
        "degraded"
    } else {
        "healthy"
    };
    let buckets: Vec<(f64, f64)> = t.buckets.values().copied().collect();
    Edge {
        id: format!("{source}->{target}"),
        source,
        target,
        protocol: t
            .protocols
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or("http".into(), |(p, _)| p.clone()),
        rate: t.rate,
        error_percent,
        p99_ms: histogram_quantile(0.99, &buckets),
        mtls: t.mtls > 0.0,
        mtls_percent,
        tcp_bytes_rate: t.tcp_bytes_rate,
        health,
        codes: t.codes.clone(),
    }
}

/// The workload a proxy's own reports name it as, `(namespace, workload)`: the destination
/// of what it reported as destination, the source of what it reported as source.
fn own_workload(window: &ProxyWindow) -> Option<(String, String)> {
    window.labels().find_map(|labels| {
        let side = match label(labels, "reporter") {
            "destination" => "destination",
            "source" => "source",
            _ => return None,
        };
        let workload = known(label(labels, &format!("{side}_workload")))?;
        let namespace = known(label(labels, &format!("{side}_workload_namespace")))?;
        Some((namespace.to_owned(), workload.to_owned()))
    })
}

/// A node, with its traffic in and out and its proxies' plugins.
pub fn node_details(graph: &Graph, proxies: &[ProxyInfo], id: &str) -> Option<NodeDetails> {
    let node = graph.nodes.iter().find(|n| n.id == id)?.clone();
    let by_id: HashMap<&str, &ProxyInfo> = proxies.iter().map(|p| (p.id.as_str(), p)).collect();
    Some(NodeDetails {
        inbound: graph
            .edges
            .iter()
            .filter(|e| e.target == id)
            .cloned()
            .collect(),
        outbound: graph
            .edges
            .iter()
            .filter(|e| e.source == id)
            .cloned()
            .collect(),
        plugins: node
            .proxies
            .iter()
            .filter_map(|p| by_id.get(p.as_str()))
            .map(|p| ProxyPlugins {
                proxy: p.id.clone(),
                listeners: p.listeners.clone(),
            })
            .collect(),
        node,
    })
}

/// PromQL's `histogram_quantile(q, ...)` over cumulative buckets `(le, count)` sorted by
/// `le`: the rank's bucket, linearly interpolated (from 0 for the first bucket); in the `+Inf`
/// bucket, the highest finite bound. None without observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let (&(last_le, total), _) = buckets.split_last()?;
    if !last_le.is_infinite() || total <= 0.0 || buckets.len() < 2 || q.is_nan() {
        return None;
    }
    if q < 0.0 {
        return Some(f64::NEG_INFINITY);
    }
    if q > 1.0 {
        return Some(f64::INFINITY);
    }
    // Counts that went down (buckets scraped a moment apart) are raised, as Prometheus does.
    let mut counts = Vec::with_capacity(buckets.len());
    let mut highest: f64 = 0.0;
    for &(le, count) in buckets {
        highest = highest.max(count);
        counts.push((le, highest));
    }
    let rank = q * total;
    let i = counts.iter().position(|&(_, c)| c >= rank)?;
    if i == counts.len() - 1 {
        return Some(counts[counts.len() - 2].0);
    }
    let (upper, count) = counts[i];
    if i == 0 && upper <= 0.0 {
        return Some(upper);
    }
    let (lower, below) = if i == 0 { (0.0, 0.0) } else { counts[i - 1] };
    if count <= below {
        return Some(lower);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

#[cfg(test)]
mod tests;
