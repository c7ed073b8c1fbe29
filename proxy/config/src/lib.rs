//! The static bootstrap: what `wasmesh-proxy --config FILE` reads.
//!
//! Parsing does no IO beyond reading the file; every error names the file, the field and the
//! reason, and a config that fails validation is never partly applied. `docs/configuration.md`
//! documents every field.

mod duration;
pub mod filters;
mod retry_on;
pub mod telemetry;

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

pub use duration::{Dur, parse as parse_duration};
pub use retry_on::RetryOn;
pub use telemetry::{ServiceRef, Telemetry, TrafficDirection};

/// A configuration error: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    /// The field path, such as `listeners[0].virtual_hosts[1].routes[2].cluster`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "field `{}`: {}", self.field, self.reason)
        }
    }
}

impl ConfigError {
    /// An error about `field` (a path such as `listeners[0].address`; empty for the whole
    /// file), in no file yet.
    pub fn at(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Names the file the error is in, unless it names one already.
    pub fn in_file(mut self, file: Option<&Path>) -> Self {
        if self.file.is_none() {
            self.file = file.map(Path::to_owned);
        }
        self
    }
}

/// The whole bootstrap file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// Worker threads; each owns its connections, upstream pools and Wasm VMs. Default: one per core.
    #[serde(default)]
    pub workers: Option<usize>,
    #[serde(default)]
    pub admin: Option<Admin>,
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    #[serde(default)]
    pub access_log: Option<AccessLog>,
    /// How long SIGTERM waits for in-flight requests before closing connections.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Dur,
    #[serde(default)]
    pub wasm: WasmOptions,
    /// Istio's metrics and traces: the workload served, tracing.
    #[serde(default, skip_serializing_if = "Telemetry::is_default")]
    pub telemetry: Telemetry,
    /// The directory of the file the bootstrap came from (relative module paths start there).
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

/// Process-wide Wasm settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WasmOptions {
    /// Where compiled modules are kept across restarts (default: a `wasmesh-wasm-cache`
    /// directory under the system's temporary directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// A file to append JSON lines to; `/dev/stdout` or `-` for standard output.
    pub path: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    /// `ip:port`; port 0 picks a free port (the admin API and the library report it).
    pub address: String,
    /// Connections accepted at once; further ones are closed at accept.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    #[serde(default)]
    pub http: HttpOptions,
    /// Downstream TLS with the proxy's workload identity (Istio's PeerAuthentication on an
    /// inbound listener); none: plaintext only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DownstreamTls>,
    /// Wasm plugins every request through this listener passes, ordered by phase, then
    /// priority (higher first), then name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_filters: Vec<filters::HttpFilter>,
    /// Optional on an `original_dst` listener, which serves no HTTP itself.
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Transparent interception (Envoy's `use_original_dst`): iptables redirected the
    /// connections accepted here; each is served by the one of `original_dst.listeners` that
    /// `handles` its original destination, or else passed through to it as TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_dst: Option<OriginalDst>,
    /// Original destinations (`ip:port`, or `0.0.0.0:port` for any address with that port)
    /// whose redirected connections this listener serves (an exact address is preferred).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handles: Vec<String>,
    /// Opaque TCP to a cluster instead of HTTP (Envoy's `tcp_proxy`): each connection goes to
    /// an endpoint load balancing picks, bytes copied both ways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_proxy: Option<TcpProxy>,
    /// Inbound (to the workload) or outbound (from it): Istio's metrics are recorded on
    /// listeners that say which, reported by the destination or the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_direction: Option<TrafficDirection>,
    /// TLS passed through untouched, routed by the ClientHello's server name (Istio's Gateway
    /// `tls.mode: PASSTHROUGH`, Envoy's `tls_inspector` with SNI filter chains): a connection
    /// whose SNI one of these matches is copied as TCP to its cluster; any other is
    /// terminated with `tls` when the listener has it, else refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_routes: Vec<SniRoute>,
}

/// Where a passed-through TLS connection goes, by its SNI.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniRoute {
    /// Exact names or `*.suffix`; matched case-insensitively.
    pub server_names: Vec<String>,
    /// A cluster of protocol `tcp`.
    pub cluster: String,
}

/// A listener's TCP proxying.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProxy {
    /// A cluster of protocol `tcp`.
    pub cluster: String,
}

/// What an `original_dst` listener does with what no listener handles.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OriginalDst {
    /// The listeners (by name) this one hands connections to.
    pub listeners: Vec<String>,
    /// The source address of connections passed through to their original destination.
    /// Istio's inbound side uses `127.0.0.6`, which its iptables rules let reach the workload
    /// instead of capturing again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough_source: Option<std::net::IpAddr>,
    /// Whether what no listener handles passes through (Istio's `PassthroughCluster`, the
    /// default); false closes it (Istio's `BlackHoleCluster` under `REGISTRY_ONLY`).
    #[serde(default = "defaults::yes", skip_serializing_if = "defaults::is_true")]
    pub passthrough: bool,
}

impl Default for OriginalDst {
    fn default() -> OriginalDst {
        OriginalDst {
            listeners: Vec::new(),
            passthrough_source: None,
            passthrough: true,
        }
    }
}

/// Downstream TLS. `strict` and `permissive`: mTLS with the proxy's workload certificate, a
/// client certificate required that chains to the mesh's trust bundle (Istio's
/// PeerAuthentication, and a Gateway's ISTIO_MUTUAL). `simple` and `mutual`: a gateway's
/// own certificates, picked by SNI (Istio's Gateway `tls`). ALPN offers `h2` and `http/1.1`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamTls {
    pub mode: DownstreamTlsMode,
    /// `simple` and `mutual`: the server certificates. The first whose `server_names` match
    /// the ClientHello's SNI is presented; one with no `server_names` serves any other name
    /// (and a ClientHello without SNI). No match: the handshake is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<ServerCertificate>,
    /// `mutual`: the CAs a client certificate must chain to (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<DataSource>,
    /// `mutual`: a client certificate must carry one of these SANs (DNS or URI); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// How a listener terminates TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownstreamTlsMode {
    /// mTLS only: a plaintext connection is closed.
    Strict,
    /// mTLS or plaintext on one port, told apart by the first bytes (a TLS ClientHello).
    Permissive,
    /// TLS with `certificates`, no client certificate (Istio's Gateway SIMPLE).
    Simple,
    /// TLS with `certificates` and a client certificate verified against `ca_certificates`
    /// (Istio's Gateway MUTUAL).
    Mutual,
}

/// A server certificate and its key, for the names it serves.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerCertificate {
    /// Exact names or `*.suffix`; empty: the default certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// PEM: the leaf first, then intermediates.
    pub certificate_chain: DataSource,
    /// PEM: PKCS#8, PKCS#1 or SEC1.
    pub private_key: DataSource,
}

/// PEM from a file or inline (Envoy's `DataSource`). A file is read at load and again when it
/// changes on disk, so a renewed certificate is served to new handshakes without a restart.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSource {
    /// A path, relative to the bootstrap file's directory.
    Filename(String),
    InlineString(String),
}

/// Downstream HTTP limits and timeouts (Envoy's defaults unless noted).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpOptions {
    /// Total size of a request head (request line and headers), in KiB.
    pub max_request_headers_kb: u32,
    pub max_headers_count: u32,
    /// A client must send a whole request head within this time (slowloris guard).
    pub request_headers_timeout: Dur,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Dur,
    /// A request or response body that makes no progress for this long is reset.
    pub stream_idle_timeout: Dur,
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before the proxy answers with GOAWAY (reset floods).
    pub max_pending_accept_reset_streams: u32,
    /// The `server` header the proxy sends (Envoy's `server_name`; Istio's is `istio-envoy`).
    pub server_name: String,
    /// What happens to a response's `server` header (Envoy's `server_header_transformation`).
    pub server_header_transformation: ServerHeaderTransformation,
    /// Normalize request paths (RFC 3986: dot segments removed, percent-encoded unreserved
    /// characters decoded, `\` as `/`) before filters and routing see them and before they
    /// go upstream: Envoy's `normalize_path`, on in Istio's sidecars, so that a path-based
    /// policy sees the path the workload will.
    pub normalize_path: bool,
}

/// Envoy's `server_header_transformation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerHeaderTransformation {
    /// Every response carries `server_name`, whatever the upstream said (Envoy's default).
    #[default]
    Overwrite,
    /// `server_name` only where the response has no `server` header.
    AppendIfAbsent,
    /// The upstream's `server` header, or none; local replies carry none either.
    PassThrough,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_request_headers_kb: 60,
            max_headers_count: 100,
            request_headers_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(300),
            stream_idle_timeout: Dur::secs(300),
            max_concurrent_streams: 1024,
            max_pending_accept_reset_streams: 100,
            server_name: "wasmesh".into(),
            server_header_transformation: ServerHeaderTransformation::Overwrite,
            normalize_path: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    /// Host names served: exact, `*`, `*.suffix` or `prefix.*`; ports are ignored unless written.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    /// A request that did not come over TLS is answered `301` to the same authority and path
    /// with `https` (Envoy's `require_tls: ALL`, Istio's Gateway `httpsRedirect`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_tls: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    /// Where matching requests go; empty when `direct_response` answers them.
    #[serde(default)]
    pub cluster: String,
    /// The proxy answers matching requests itself (Envoy's `direct_response`; Istio's
    /// `block_all` route under REGISTRY_ONLY answers 502).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Time allowed for the upstream's response headers, retries included; 0 disables.
    #[serde(default = "defaults::route_timeout")]
    pub timeout: Dur,
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
}

/// A reply the proxy makes itself.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Comma-separated conditions, as Envoy's `x-envoy-retry-on`.
    #[serde(default = "defaults::retry_on")]
    pub retry_on: RetryOn,
    #[serde(default = "defaults::num_retries")]
    pub num_retries: u32,
    /// Time allowed for each attempt's response headers; 0 means only the route timeout applies.
    #[serde(default)]
    pub per_try_timeout: Dur,
    /// Status codes retried under `retriable-status-codes`.
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    #[serde(default = "defaults::retry_base_interval")]
    pub base_interval: Dur,
    #[serde(default)]
    pub max_interval: Option<Dur>,
}

/// Retries a route (or a filter) may ask for, as Envoy caps them.
pub const MAX_RETRIES: u32 = 10;

impl RetryPolicy {
    /// Parses the policy a filter states through `wasmesh.set_retry_policy`:
    /// `attempts=3;per_try_timeout_ms=500;retry_on=5xx,reset;retriable_status_codes=503`.
    /// Unnamed fields take the defaults of a route's policy; `attempts` is the retry count,
    /// held to [`MAX_RETRIES`].
    pub fn parse_spec(text: &str) -> Result<RetryPolicy, String> {
        let mut policy = RetryPolicy {
            retry_on: defaults::retry_on(),
            num_retries: 1,
            per_try_timeout: Dur::default(),
            retriable_status_codes: Vec::new(),
            base_interval: defaults::retry_base_interval(),
            max_interval: None,
        };
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            let value = value.trim();
            let number = |what: &str| {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{what} {value:?} is not a number"))
            };
            match key.trim() {
                "attempts" => {
                    // Held to the cap, as Envoy holds a route's retries to its circuit breaker.
                    policy.num_retries = number("attempts")?.min(u64::from(MAX_RETRIES)) as u32;
                }
                "per_try_timeout_ms" => {
                    policy.per_try_timeout = Dur::millis(number("per_try_timeout_ms")?)
                }
                "retry_on" => policy.retry_on = RetryOn::parse(value)?,
                "retriable_status_codes" => {
                    policy.retriable_status_codes = value
                        .split(',')
                        .map(|c| match c.trim().parse::<u16>() {
                            Ok(code) if (100..=599).contains(&code) => Ok(code),
                            _ => Err(format!("{c:?} is not an HTTP status code")),
                        })
                        .collect::<Result<_, _>>()?;
                }
                other => return Err(format!("unknown field {other:?}")),
            }
        }
        Ok(policy)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
}

/// How a cluster finds its endpoints' addresses (Envoy's cluster `type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// `endpoints` are addresses, or names resolved once at load.
    #[default]
    Static,
    /// `endpoints` are names resolved again every 5 s (Envoy's STRICT_DNS, Istio's
    /// ServiceEntry `resolution: DNS`); every address a name has is an endpoint, and the
    /// last good answer stays while a lookup fails.
    Dns,
    /// No endpoints: each request goes where it was going (Envoy's ORIGINAL_DST, Istio's
    /// PassthroughCluster): a redirected connection's original destination, else the
    /// request's authority (host and port, 80 by default; 443 for a TLS cluster), resolved.
    OriginalDst,
}

impl Resolution {
    pub fn is_static(&self) -> bool {
        *self == Resolution::Static
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext by prior knowledge (h2c); needed for gRPC.
    Http2,
    /// Whatever the downstream request used.
    Downstream,
    /// Opaque TCP (a listener's `tcp_proxy`); no HTTP route may go to it.
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// `host:port` addresses; names are resolved as `resolution` says.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// How endpoints are found.
    #[serde(default, skip_serializing_if = "Resolution::is_static")]
    pub resolution: Resolution,
    #[serde(default)]
    pub lb_policy: LbPolicy,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Dur,
    /// An idle pooled connection is closed after this long.
    #[serde(default = "defaults::upstream_idle_timeout")]
    pub idle_timeout: Dur,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_requests_per_connection: u32,
    #[serde(default)]
    pub circuit_breakers: CircuitBreakers,
    #[serde(default)]
    pub retry_budget: Option<RetryBudget>,
    /// TLS to the endpoints; none: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// The service its endpoints stand for: the `destination_service` of Istio's metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
}

/// TLS originated to a cluster's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    pub mode: UpstreamTlsMode,
    /// ISTIO_MUTUAL: the identities (URI SANs) an endpoint's certificate may carry; empty:
    /// any that chains to the trust bundle. SIMPLE and MUTUAL: the DNS names it may carry
    /// (empty: the SNI).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// The server name sent (SNI); the cluster's name when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// SIMPLE and MUTUAL: a PEM file of the CAs that verify the server; none: the system's
    /// roots (or those `SSL_CERT_FILE` / `SSL_CERT_DIR` name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// MUTUAL: the PEM certificate chain and private key the proxy presents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// SIMPLE and MUTUAL: accept any server certificate (Istio's `insecureSkipVerify`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// How a cluster's TLS is set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamTlsMode {
    #[default]
    /// mTLS with the proxy's workload certificate, the peer verified against the mesh's
    /// trust bundle and its SPIFFE identity (Istio's ISTIO_MUTUAL).
    IstioMutual,
    /// TLS to a server outside the mesh, verified by `ca_certificates` (Istio's SIMPLE).
    Simple,
    /// SIMPLE, presenting `client_certificate` (Istio's MUTUAL).
    Mutual,
}

/// Envoy's circuit-breaker thresholds, shared by all workers. The defaults are Istio's: no
/// limit (Envoy's own defaults of 1024 and 3 retries make busy meshes fail at random).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakers {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
        }
    }
}

/// Envoy's retry budget: retries in flight may be at most `budget_percent` of requests in flight,
/// but never fewer than `min_retry_concurrency`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default = "defaults::budget_percent")]
    pub budget_percent: f64,
    #[serde(default = "defaults::min_retry_concurrency")]
    pub min_retry_concurrency: u32,
}

mod defaults {
    use super::{Dur, RetryOn};

    pub fn yes() -> bool {
        true
    }

    pub fn is_true(v: &bool) -> bool {
        *v
    }

    pub fn drain_timeout() -> Dur {
        Dur::secs(5)
    }
    pub fn max_connections() -> u32 {
        100_000
    }
    pub fn route_timeout() -> Dur {
        Dur::secs(15)
    }
    pub fn retry_on() -> RetryOn {
        RetryOn::parse("connect-failure,refused-stream,reset").expect("valid default")
    }
    pub fn num_retries() -> u32 {
        1
    }
    pub fn retry_base_interval() -> Dur {
        Dur::millis(25)
    }
    pub fn connect_timeout() -> Dur {
        Dur::secs(5)
    }
    pub fn upstream_idle_timeout() -> Dur {
        Dur::secs(60)
    }
    pub fn budget_percent() -> f64 {
        20.0
    }
    pub fn min_retry_concurrency() -> u32 {
        3
    }
}

/// Deserializes `T` and, on failure, prefixes the error with the path of the failing field.
struct Tracked<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Tracked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_path_to_error::deserialize(d)
            .map(Tracked)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." {
                    D::Error::custom(inner)
                } else {
                    D::Error::custom(format!("field `{path}`: {inner}"))
                }
            })
    }
}

impl Bootstrap {
    /// Reads, parses and validates a bootstrap file.
    pub fn load(path: &Path) -> Result<Bootstrap, ConfigError> {
        Bootstrap::from_file_text(path, &Bootstrap::read(path)?)
    }

    /// Reads a bootstrap file's text (errors name the file).
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            field: String::new(),
            reason: format!("cannot read: {e}"),
        })
    }

    /// Parses and validates the text of the file at `path` (errors name it; relative module
    /// paths resolve against its folder).
    pub fn from_file_text(path: &Path, text: &str) -> Result<Bootstrap, ConfigError> {
        let mut bootstrap = Bootstrap::parse(text).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })?;
        bootstrap.base_dir = path.parent().map(Path::to_owned);
        Ok(bootstrap)
    }

    /// Parses and validates a bootstrap from YAML text.
    pub fn parse(text: &str) -> Result<Bootstrap, ConfigError> {
        let bootstrap = match serde_saphyr::from_str::<Tracked<Bootstrap>>(text) {
            Ok(Tracked(b)) => b,
            Err(e) => return Err(split_tracked_error(&e.to_string())),
        };
        bootstrap.validate()?;
        Ok(bootstrap)
    }

    /// This bootstrap (a sidecar's own part) laid over `shared` (the part the sidecars of its
    /// namespace share): an own listener named like a shared one gives that listener its
    /// address and appends its filters; other own listeners and all own clusters are added;
    /// everything else is this bootstrap's.
    pub fn laid_over(self, shared: Bootstrap) -> Bootstrap {
        let mut listeners = shared.listeners;
        for own in self.listeners {
            match listeners.iter_mut().find(|l| l.name == own.name) {
                Some(l) => {
                    l.address = own.address;
                    l.http_filters.extend(own.http_filters);
                    l.handles.extend(own.handles);
                }
                None => listeners.push(own),
            }
        }
        let mut clusters = shared.clusters;
        clusters.extend(self.clusters);
        Bootstrap {
            listeners,
            clusters,
            ..self
        }
    }

    /// The worker count after defaults.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    /// Checks what parsing alone cannot (references, ranges, uniqueness); `parse` and `load`
    /// call it, and so must code that builds a bootstrap itself.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(w) = self.workers
            && !(1..=1024).contains(&w)
        {
            return Err(ConfigError::at(
                "workers",
                format!("must be between 1 and 1024, got {w}"),
            ));
        }
        if let Some(admin) = &self.admin {
            parse_listen_address(&admin.address)
                .map_err(|r| ConfigError::at("admin.address", r))?;
        }
        self.telemetry
            .check()
            .map_err(|(field, reason)| ConfigError::at(format!("telemetry.{field}"), reason))?;
        if self.listeners.is_empty() {
            return Err(ConfigError::at(
                "listeners",
                "at least one listener is required",
            ));
        }
        let mut cluster_names = HashSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let at = |field: &str| format!("clusters[{i}].{field}");
            if c.name.is_empty() {
                return Err(ConfigError::at(at("name"), "must not be empty"));
            }
            if !cluster_names.insert(c.name.as_str()) {
                return Err(ConfigError::at(
                    at("name"),
                    format!("duplicate cluster name {:?}", c.name),
                ));
            }
            match c.resolution {
                Resolution::OriginalDst => {
                    if !c.endpoints.is_empty() {
                        return Err(ConfigError::at(
                            at("endpoints"),
                            "an original_dst cluster takes no endpoints: each request goes \
                             where it was going",
                        ));
                    }
                    if c.protocol == UpstreamProtocol::Tcp {
                        // A redirected TCP connection no listener handles is already passed
                        // through by its `original_dst` listener; a `tcp_proxy` connection
                        // has no destination of its own to go to.
                        return Err(ConfigError::at(
                            at("protocol"),
                            "an original_dst cluster carries HTTP; TCP is passed through by \
                             the original_dst listener",
                        ));
                    }
                }
                Resolution::Static | Resolution::Dns => {
                    if c.endpoints.is_empty() {
                        return Err(ConfigError::at(
                            at("endpoints"),
                            "at least one endpoint is required",
                        ));
                    }
                }
            }
            for (j, e) in c.endpoints.iter().enumerate() {
                let checked = match c.resolution {
                    // A name that does not resolve yet is no error: the cluster waits for it.
                    Resolution::Dns => split_host_port(e).map(drop),
                    _ => resolve_endpoint(e).map(drop),
                };
                checked
                    .map_err(|e| ConfigError::at(at(&format!("endpoints[{j}]")), e.to_string()))?;
            }
            if let Some(tls) = &c.tls {
                let files = tls.ca_certificates.is_some()
                    || tls.client_certificate.is_some()
                    || tls.private_key.is_some()
                    || tls.insecure_skip_verify;
                match tls.mode {
                    UpstreamTlsMode::IstioMutual if files => {
                        return Err(ConfigError::at(
                            at("tls"),
                            "istio_mutual uses the proxy's workload certificate and the mesh's \
                             roots: no certificate files or insecure_skip_verify",
                        ));
                    }
                    UpstreamTlsMode::Mutual
                        if tls.client_certificate.is_none() || tls.private_key.is_none() =>
                    {
                        return Err(ConfigError::at(
                            at("tls"),
                            "mutual needs client_certificate and private_key",
                        ));
                    }
                    UpstreamTlsMode::Simple
                        if tls.client_certificate.is_some() || tls.private_key.is_some() =>
                    {
                        return Err(ConfigError::at(
                            at("tls"),
                            "simple presents no client certificate (use mutual)",
                        ));
                    }
                    _ => {}
                }
            }
            if c.connect_timeout.0.is_zero() {
                return Err(ConfigError::at(
                    at("connect_timeout"),
                    "must be greater than 0",
                ));
            }
            if c.circuit_breakers.max_connections == 0 {
                return Err(ConfigError::at(
                    at("circuit_breakers.max_connections"),
                    "must be at least 1",
                ));
            }
            if c.circuit_breakers.max_requests == 0 {
                return Err(ConfigError::at(
                    at("circuit_breakers.max_requests"),
                    "must be at least 1",
                ));
            }
            if let Some(b) = &c.retry_budget
                && !(0.0..=100.0).contains(&b.budget_percent)
            {
                return Err(ConfigError::at(
                    at("retry_budget.budget_percent"),
                    format!("must be between 0 and 100, got {}", b.budget_percent),
                ));
            }
        }
        let mut listener_names = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |field: &str| format!("listeners[{i}].{field}");
            if !listener_names.insert(l.name.as_str()) {
                return Err(ConfigError::at(
                    at("name"),
                    format!("duplicate listener name {:?}", l.name),
                ));
            }
            parse_listen_address(&l.address).map_err(|r| ConfigError::at(at("address"), r))?;
            let mut filter_names = HashSet::new();
            for (j, f) in l.http_filters.iter().enumerate() {
                filters::validate(f, &at(&format!("http_filters[{j}]")))?;
                let scoped = f.applies_to.iter().flat_map(|s| s.clusters.iter());
                for (k, c) in scoped.enumerate() {
                    if !cluster_names.contains(c.as_str()) {
                        return Err(ConfigError::at(
                            at(&format!("http_filters[{j}].applies_to.clusters[{k}]")),
                            format!("unknown cluster {c:?}"),
                        ));
                    }
                }
                if !filter_names.insert(f.name.as_str()) {
                    return Err(ConfigError::at(
                        at(&format!("http_filters[{j}].name")),
                        format!("duplicate filter name {:?}", f.name),
                    ));
                }
            }
            if l.max_connections == 0 {
                return Err(ConfigError::at(at("max_connections"), "must be at least 1"));
            }
            let h = &l.http;
            if !(1..=8192).contains(&h.max_request_headers_kb) {
                return Err(ConfigError::at(
                    at("http.max_request_headers_kb"),
                    "must be between 1 and 8192",
                ));
            }
            if !(1..=10_000).contains(&h.max_headers_count) {
                return Err(ConfigError::at(
                    at("http.max_headers_count"),
                    "must be between 1 and 10000",
                ));
            }
            if h.max_concurrent_streams == 0 {
                return Err(ConfigError::at(
                    at("http.max_concurrent_streams"),
                    "must be at least 1",
                ));
            }
            if h.server_name.is_empty()
                || !h
                    .server_name
                    .bytes()
                    .all(|b| b == b' ' || b.is_ascii_graphic())
            {
                return Err(ConfigError::at(
                    at("http.server_name"),
                    "must be non-empty visible ASCII (it is sent as a header value)",
                ));
            }
            for (j, h) in l.handles.iter().enumerate() {
                if h.parse::<std::net::SocketAddr>().is_err() {
                    return Err(ConfigError::at(
                        at(&format!("handles[{j}]")),
                        "not an ip:port address",
                    ));
                }
            }
            if let Some(tls) = &l.tls {
                validate_downstream_tls(tls, l.original_dst.is_some(), !l.sni_routes.is_empty())
                    .map_err(|(field, reason)| {
                        ConfigError::at(at(&format!("tls.{field}")), reason)
                    })?;
            }
            for (j, route) in l.sni_routes.iter().enumerate() {
                let at = |field: &str| format!("listeners[{i}].sni_routes[{j}].{field}");
                if route.server_names.is_empty() {
                    return Err(ConfigError::at(
                        at("server_names"),
                        "at least one server name is required",
                    ));
                }
                for (k, name) in route.server_names.iter().enumerate() {
                    validate_server_name(name)
                        .map_err(|r| ConfigError::at(at(&format!("server_names[{k}]")), r))?;
                }
                match self.clusters.iter().find(|c| c.name == route.cluster) {
                    None => {
                        return Err(ConfigError::at(
                            at("cluster"),
                            format!("unknown cluster {:?}", route.cluster),
                        ));
                    }
                    Some(c) if c.protocol != UpstreamProtocol::Tcp => {
                        return Err(ConfigError::at(
                            at("cluster"),
                            format!("cluster {:?} is not of protocol tcp", route.cluster),
                        ));
                    }
                    Some(_) => {}
                }
            }
            if let Some(od) = &l.original_dst {
                let mut handled = HashSet::new();
                for (j, name) in od.listeners.iter().enumerate() {
                    let field = at(&format!("original_dst.listeners[{j}]"));
                    let Some(target) = self.listeners.iter().find(|t| &t.name == name) else {
                        return Err(ConfigError::at(field, format!("unknown listener {name:?}")));
                    };
                    if target.original_dst.is_some() {
                        return Err(ConfigError::at(
                            field,
                            format!("{name:?} hands connections off itself"),
                        ));
                    }
                    for h in &target.handles {
                        if !handled.insert(h.as_str()) {
                            return Err(ConfigError::at(
                                field,
                                format!("{h} is handled by two of these listeners"),
                            ));
                        }
                    }
                }
            }
            if let Some(tcp) = &l.tcp_proxy {
                let cluster = self.clusters.iter().find(|c| c.name == tcp.cluster);
                match cluster {
                    None => {
                        return Err(ConfigError::at(
                            at("tcp_proxy.cluster"),
                            format!("unknown cluster {:?}", tcp.cluster),
                        ));
                    }
                    Some(c) if c.protocol != UpstreamProtocol::Tcp => {
                        return Err(ConfigError::at(
                            at("tcp_proxy.cluster"),
                            format!("cluster {:?} is not of protocol tcp", tcp.cluster),
                        ));
                    }
                    Some(_) => {}
                }
                let http = [
                    ("virtual_hosts", !l.virtual_hosts.is_empty()),
                    ("http_filters", !l.http_filters.is_empty()),
                    ("original_dst", l.original_dst.is_some()),
                    ("tls", l.tls.is_some()),
                    ("sni_routes", !l.sni_routes.is_empty()),
                ];
                if let Some((field, _)) = http.iter().find(|(_, set)| *set) {
                    return Err(ConfigError::at(
                        at(field),
                        "a tcp_proxy listener serves no HTTP and hands nothing off",
                    ));
                }
                continue;
            }
            // A listener that only passes TLS through by SNI serves no HTTP.
            let passthrough_only = !l.sni_routes.is_empty() && l.tls.is_none();
            if l.virtual_hosts.is_empty() && l.original_dst.is_none() && !passthrough_only {
                return Err(ConfigError::at(
                    at("virtual_hosts"),
                    "at least one virtual host is required",
                ));
            }
            for (j, vh) in l.virtual_hosts.iter().enumerate() {
                let at = |field: &str| format!("listeners[{i}].virtual_hosts[{j}].{field}");
                if vh.domains.is_empty() {
                    return Err(ConfigError::at(
                        at("domains"),
                        "at least one domain is required",
                    ));
                }
                for (k, d) in vh.domains.iter().enumerate() {
                    validate_domain(d)
                        .map_err(|r| ConfigError::at(at(&format!("domains[{k}]")), r))?;
                }
                for (k, r) in vh.routes.iter().enumerate() {
                    let at = |field: &str| {
                        format!("listeners[{i}].virtual_hosts[{j}].routes[{k}].{field}")
                    };
                    match (&r.direct_response, r.cluster.is_empty()) {
                        (None, true) => {
                            return Err(ConfigError::at(
                                at("cluster"),
                                "a route needs a cluster or a direct_response",
                            ));
                        }
                        (Some(_), false) => {
                            return Err(ConfigError::at(
                                at("direct_response"),
                                "set one of `cluster` and `direct_response`, not both",
                            ));
                        }
                        (Some(d), true) if !(200..=599).contains(&d.status) => {
                            return Err(ConfigError::at(
                                at("direct_response.status"),
                                format!("must be between 200 and 599, got {}", d.status),
                            ));
                        }
                        (Some(_), true) => {}
                        (None, false) if !cluster_names.contains(r.cluster.as_str()) => {
                            return Err(ConfigError::at(
                                at("cluster"),
                                format!("unknown cluster {:?}", r.cluster),
                            ));
                        }
                        (None, false) => {}
                    }
                    if self
                        .clusters
                        .iter()
                        .any(|c| c.name == r.cluster && c.protocol == UpstreamProtocol::Tcp)
                    {
                        return Err(ConfigError::at(
                            at("cluster"),
                            format!("cluster {:?} speaks TCP, not HTTP", r.cluster),
                        ));
                    }
                    match (&r.matcher.prefix, &r.matcher.path) {
                        (Some(_), Some(_)) => {
                            return Err(ConfigError::at(
                                at("match"),
                                "set one of `prefix` and `path`, not both",
                            ));
                        }
                        (Some(p), None) | (None, Some(p)) if !p.starts_with('/') => {
                            return Err(ConfigError::at(
                                at("match"),
                                format!("{p:?} must start with '/'"),
                            ));
                        }
                        _ => {}
                    }
                    if let Some(rp) = &r.retry_policy {
                        if rp.num_retries > MAX_RETRIES {
                            return Err(ConfigError::at(
                                at("retry_policy.num_retries"),
                                format!("must be at most {MAX_RETRIES}"),
                            ));
                        }
                        if let Some(code) = rp
                            .retriable_status_codes
                            .iter()
                            .find(|c| !(100..=599).contains(*c))
                        {
                            return Err(ConfigError::at(
                                at("retry_policy.retriable_status_codes"),
                                format!("{code} is not an HTTP status code"),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// serde-saphyr renders a tracked error as ``field `path`: reason at line L, column C``.
fn split_tracked_error(rendered: &str) -> ConfigError {
    let rendered = rendered.trim();
    rendered
        .strip_prefix("field `")
        .and_then(|rest| rest.split_once("`: "))
        .map(|(path, reason)| ConfigError::at(path, reason))
        .unwrap_or_else(|| ConfigError::at("", rendered))
}

/// A listen address must be a literal `ip:port`.
pub fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an ip:port address (for example 127.0.0.1:8080)"))
}

/// Why an endpoint does not give an address.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{0:?} has no port (write host:port)")]
    NoPort(String),
    #[error("cannot resolve {name:?}: {error}")]
    Resolve { name: String, error: std::io::Error },
    #[error("{0:?} resolves to no address")]
    NoAddress(String),
}

/// A `name:port` endpoint split, the port checked (a `dns` cluster's names are resolved later).
pub fn split_host_port(text: &str) -> Result<(&str, u16), EndpointError> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
            Ok(port) if port != 0 => Ok((host, port)),
            _ => Err(EndpointError::NoPort(text.to_owned())),
        },
        _ => Err(EndpointError::NoPort(text.to_owned())),
    }
}

/// An endpoint is `ip:port` or `name:port`, resolved once.
pub fn resolve_endpoint(text: &str) -> Result<SocketAddr, EndpointError> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(EndpointError::NoPort(text.to_owned()));
    }
    text.to_socket_addrs()
        .map_err(|error| EndpointError::Resolve {
            name: text.to_owned(),
            error,
        })?
        .next()
        .ok_or_else(|| EndpointError::NoAddress(text.to_owned()))
}

/// A listener's downstream TLS: `simple`/`mutual` take certificates (and `mutual` its CAs);
/// `strict`/`permissive` use the workload identity and take none. `Err` is (field under
/// `tls`, reason).
fn validate_downstream_tls(
    tls: &DownstreamTls,
    original_dst: bool,
    sni_routes: bool,
) -> Result<(), (String, String)> {
    let err = |field: &str, reason: &str| Err((field.to_owned(), reason.to_owned()));
    match tls.mode {
        DownstreamTlsMode::Strict | DownstreamTlsMode::Permissive => {
            let set = [
                ("certificates", !tls.certificates.is_empty()),
                ("ca_certificates", tls.ca_certificates.is_some()),
                ("subject_alt_names", !tls.subject_alt_names.is_empty()),
            ];
            if let Some((field, _)) = set.iter().find(|(_, set)| *set) {
                return err(
                    field,
                    "strict and permissive use the workload identity: no certificates, CAs \
                     or subject_alt_names (use simple or mutual)",
                );
            }
            if sni_routes {
                return err(
                    "mode",
                    "sni_routes fall back to simple or mutual termination, not mesh mTLS",
                );
            }
            return Ok(());
        }
        DownstreamTlsMode::Simple | DownstreamTlsMode::Mutual => {}
    }
    if original_dst {
        return err(
            "mode",
            "an original_dst listener terminates mesh mTLS only (strict or permissive)",
        );
    }
    if tls.certificates.is_empty() {
        return err("certificates", "at least one certificate is required");
    }
    for (i, c) in tls.certificates.iter().enumerate() {
        for (j, name) in c.server_names.iter().enumerate() {
            validate_server_name(name)
                .map_err(|r| (format!("certificates[{i}].server_names[{j}]"), r))?;
        }
        for (field, source) in [
            ("certificate_chain", &c.certificate_chain),
            ("private_key", &c.private_key),
        ] {
            if source.is_empty() {
                return Err((
                    format!("certificates[{i}].{field}"),
                    "must not be empty".to_owned(),
                ));
            }
        }
    }
    match (tls.mode, &tls.ca_certificates) {
        (DownstreamTlsMode::Mutual, None) => {
            return err(
                "ca_certificates",
                "mutual needs the CAs client certificates must chain to",
            );
        }
        (DownstreamTlsMode::Mutual, Some(ca)) if ca.is_empty() => {
            return err("ca_certificates", "must not be empty");
        }
        (DownstreamTlsMode::Simple, Some(_)) => {
            return err(
                "ca_certificates",
                "simple asks for no client certificate (use mutual)",
            );
        }
        (DownstreamTlsMode::Simple, None) if !tls.subject_alt_names.is_empty() => {
            return err(
                "subject_alt_names",
                "simple asks for no client certificate (use mutual)",
            );
        }
        _ => {}
    }
    Ok(())
}

impl DataSource {
    fn is_empty(&self) -> bool {
        match self {
            DataSource::Filename(s) | DataSource::InlineString(s) => s.trim().is_empty(),
        }
    }
}

/// A TLS server name: an exact DNS name or `*.suffix`, ASCII letters, digits, `-` and `.`.
fn validate_server_name(name: &str) -> Result<(), String> {
    let exact = name.strip_prefix("*.").unwrap_or(name);
    let well_formed = !exact.is_empty()
        && exact.len() <= 253
        && exact.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !well_formed {
        return Err(format!(
            "{name:?} is not a server name: use an exact DNS name or \"*.suffix\""
        ));
    }
    Ok(())
}

fn validate_domain(d: &str) -> Result<(), String> {
    let stars = d.matches('*').count();
    let ok = d == "*"
        || stars == 0
        || (stars == 1
            && (d.starts_with("*.")
                || d.starts_with("*-")
                || d.ends_with(".*")
                || d.ends_with("-*")));
    if d.is_empty() || !ok {
        return Err(format!(
            "{d:?} is not a domain: use an exact name, \"*\", \"*.suffix\" or \"prefix.*\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
