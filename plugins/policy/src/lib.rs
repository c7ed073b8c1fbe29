//! The configuration of wasmesh's four traffic plugins (and, in [`authz`], of the authorization
//! plugin), as the control plane translates it from
//! Istio's VirtualService and DestinationRule and the plugins read it (JSON, in each plugin's
//! `plugin_config`). Everything a plugin needs per request is precomputed here, so the plugins
//! only look things up: cluster names are final, retry policies are the strings the core takes.
//!
//! The plugins run in one chain, in this order: router, fault, mirror, circuit-breaker. The
//! router publishes its decisions for the others through properties: the route it chose under
//! [`ROUTE_PROPERTY`] and the cluster under `wasmesh.upstream_cluster`.

pub mod authz;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The property path under which the router publishes the id of the route it chose
/// ([`Route::id`]); the fault and mirror plugins key their configuration by it.
pub const ROUTE_PROPERTY: [&str; 2] = ["wasmesh", "route_name"];

/// The property path of the upstream cluster the router chose.
pub const CLUSTER_PROPERTY: [&str; 2] = ["wasmesh", "upstream_cluster"];

// ----- router -----

/// The router's configuration: VirtualService `http` routes per host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    pub virtual_hosts: Vec<VirtualHost>,
}

/// The routes of one service (host and port), as every VirtualService for it says, ending
/// with the service's default route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// For logs: `reviews.default.svc.cluster.local:9080`.
    pub name: String,
    /// Lowercase authorities this host answers to: exact (`reviews`, `reviews:9080`,
    /// `reviews.default.svc.cluster.local`), a suffix wildcard (`*.example.com`) or `*`. An
    /// authority with a port that matches no domain is tried again without it.
    pub domains: Vec<String>,
    /// Tried in order; the first whose matches hold wins.
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique in the config: `<virtualservice>.<namespace>/<route name or index>`, or
    /// `default/<host>:<port>` for a service's default route.
    pub id: String,
    /// Any one must hold (OR); empty matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    pub action: Action,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
    /// Route timeout handed to the core (`0`: none). None keeps the core's route timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The core's retry policy string (`attempts=3;per_try_timeout_ms=500;retry_on=5xx`),
    /// ready for `wasmesh.set_retry_policy`. None keeps the core's route policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<String>,
}

/// All conditions must hold (AND).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// On the path without the query string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// Lowercase header name -> condition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderMatch>,
    /// Headers that must not match (Istio's `withoutHeaders`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, HeaderMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
}

/// Istio's StringMatch. Regexes are RE2 syntax and must match the whole value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HeaderMatch {
    /// The header is present and its value matches.
    Value(StringMatch),
    /// The header is present, whatever its value.
    Present,
    /// The header is absent.
    Absent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Forward to one of the destinations, by weight.
    Route {
        destinations: Vec<Destination>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rewrite: Option<Rewrite>,
    },
    Redirect(Redirect),
    DirectResponse {
        status: u16,
        #[serde(default)]
        body: String,
    },
}

impl Default for Action {
    fn default() -> Action {
        Action::Route {
            destinations: Vec::new(),
            rewrite: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// The core's cluster name: `outbound|9080|v2|reviews.default.svc.cluster.local`.
    pub cluster: String,
    /// Relative weight; the weights of a route's destinations add up to 100 (one destination
    /// may leave it 0, meaning all).
    #[serde(default)]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the part of the path the `uri` prefix (or exact) match matched; with a regex
    /// or no uri match, the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `uriRegexRewrite`: every match of `pattern` in the path is replaced by `substitution`
    /// (`\1` style references).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex: Option<RegexRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: String,
    pub substitution: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// Replaces the path (and query). None keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301 unless set.
    pub status: u16,
}

/// Header edits, applied in the order remove, set, add (Envoy's and Istio's order).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

// ----- fault -----

/// The fault plugin's configuration: Istio's `fault` per route id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    pub routes: BTreeMap<String, Fault>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    pub fixed_delay_ms: u64,
    /// Of requests, 0.0 to 100.0.
    pub percentage: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abort {
    /// An HTTP status, or for gRPC a `grpc-status` (answered with HTTP 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
    /// Of requests, 0.0 to 100.0.
    pub percentage: f64,
}

// ----- mirror -----

/// The mirror plugin's configuration: Istio's `mirror` / `mirrors` per route id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    pub routes: BTreeMap<String, Vec<Mirror>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub cluster: String,
    /// Of requests, 0.0 to 100.0 (Istio's `mirrorPercentage`, 100 when unset).
    pub percentage: f64,
}

// ----- circuit breaker -----

/// The circuit-breaker plugin's configuration: DestinationRule policies per cluster (with
/// subset and port-level settings already applied).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    pub clusters: BTreeMap<String, ClusterPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterPolicy {
    /// Requests in flight to the cluster, across the proxy, beyond which a new one is answered
    /// 503 with flag `UO` and `x-envoy-overloaded: true`: `http2MaxRequests`, and for HTTP/1.1
    /// clusters at most `maxConnections + http1MaxPendingRequests` (each connection carries one
    /// request at a time; the rest wait as pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (and connect failures) that eject an endpoint; 0: off.
    pub consecutive_5xx: u32,
    /// Consecutive 502, 503 and 504 answers that eject an endpoint; 0: off.
    pub consecutive_gateway_errors: u32,
    pub interval_ms: u64,
    /// An ejection lasts this long times the number of times the endpoint was ejected.
    pub base_ejection_ms: u64,
    pub max_ejection_percent: u32,
    /// Endpoints in the cluster (for max_ejection_percent).
    pub endpoints: u32,
}

/// The random draws the plugins make (weights, percentages): a small, fast generator
/// (SplitMix64) per VM, seeded from the clock. Not for secrets.
pub struct Dice(u64);

impl Dice {
    pub fn seeded() -> Dice {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        Dice(nanos)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: f64) -> bool {
        if percent >= 100.0 {
            return true;
        }
        if percent <= 0.0 {
            return false;
        }
        // 53 random bits as a fraction in [0, 1).
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) * 100.0 < percent
    }
}
