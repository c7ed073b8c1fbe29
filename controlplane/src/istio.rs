//! Istio's resources as their YAML spells them: networking's VirtualService, DestinationRule,
//! ServiceEntry and WorkloadEntry (`networking.istio.io/v1`, `v1beta1`, `v1alpha3`), WasmPlugin,
//! PeerAuthentication, AuthorizationPolicy, Telemetry; and the mesh config (MeshConfig) that
//! Istio keeps in the ConfigMap `istio-system/istio`.
//!
//! Specs refuse unknown fields (kubectl's strict validation). Fields Istio has but wasmesh does
//! not translate are accepted as [`Unsupported`] so that translation can say so.
//!
//! The spec types also serialize and carry JSON schemas, from which `wasmesh-kube` generates
//! the CRDs (`deploy/kubernetes/crds.yaml`): a field changed here changes what the API server
//! accepts, and the CRDs' drift test says to regenerate them.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A field accepted for its presence only (its value is kept, not read).
pub type Unsupported = Option<Opaque>;

/// Any value, kept as written; its schema is opaque (`x-kubernetes-preserve-unknown-fields`),
/// so that the API server stores whatever Istio would accept there. Boxed: such fields are
/// many and mostly absent.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Opaque(pub Box<serde_json::Value>);

impl JsonSchema for Opaque {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Opaque".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // Any value, null included.
        json_schema!({ "x-kubernetes-preserve-unknown-fields": true, "nullable": true })
    }
}

/// The schema of a `google.protobuf.Struct` (a WasmPlugin's `pluginConfig`): any object.
fn struct_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "nullable": true,
    })
}

/// The API group of the kinds here.
pub const GROUP: &str = "networking.istio.io";
/// The versions served, newest first.
pub const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// `metadata`. Fields other than these (annotations, uid, ...) are ignored.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// The namespace, `default` when unset.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// A whole document of one kind: `apiVersion`, `kind`, `metadata`, `spec` (and an ignored
/// `status`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    #[serde(default)]
    pub status: Unsupported,
}

// ----- VirtualService -----

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct VirtualService {
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    /// TLS routes by SNI: served by gateways' PASSTHROUGH servers.
    pub tls: Vec<TlsRoute>,
    /// TCP routes: served by gateways' TCP servers.
    pub tcp: Vec<TcpRoute>,
    pub export_to: Vec<String>,
}

/// A route for opaque TCP.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct L4MatchAttributes {
    pub destination_subnets: Vec<String>,
    pub port: Option<u32>,
    pub source_subnet: Option<String>,
    pub source_labels: BTreeMap<String, String>,
    pub gateways: Vec<String>,
    pub source_namespace: Option<String>,
}

/// A route for TLS traffic that is not terminated, by its SNI.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TlsMatchAttributes {
    pub sni_hosts: Vec<String>,
    pub port: Option<u32>,
    pub gateways: Vec<String>,
    pub destination_subnets: Vec<String>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
}

/// A TLS or TCP route's destination.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    #[serde(default)]
    pub direct_response: Option<HttpDirectResponse>,
    #[serde(default)]
    pub delegate: Unsupported,
    #[serde(default)]
    pub rewrite: Option<HttpRewrite>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<HttpRetry>,
    #[serde(default)]
    pub fault: Option<HttpFaultInjection>,
    #[serde(default)]
    pub mirror: Option<Destination>,
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Deprecated: `mirrorPercentage`.
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    #[serde(default)]
    pub cors_policy: Unsupported,
    #[serde(default)]
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HttpMatchRequest {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    /// An empty match (`{}`) means the header is present.
    pub headers: BTreeMap<String, StringMatch>,
    pub port: Option<u32>,
    pub source_labels: BTreeMap<String, String>,
    pub gateways: Vec<String>,
    pub query_params: BTreeMap<String, StringMatch>,
    pub ignore_uri_case: bool,
    pub without_headers: BTreeMap<String, StringMatch>,
    pub source_namespace: Option<String>,
    pub stat_prefix: Option<String>,
}

/// One of `exact`, `prefix`, `regex` (RE2); none at all means "present" where allowed.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

impl StringMatch {
    pub fn is_empty(&self) -> bool {
        self.exact.is_none() && self.prefix.is_none() && self.regex.is_none()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<i32>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HttpRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    pub derive_port: Unsupported,
    pub scheme: Option<String>,
    pub redirect_code: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HttpRewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(rename = "match")]
    pub pattern: String,
    pub rewrite: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpDirectResponse {
    pub status: u32,
    #[serde(default)]
    pub body: Option<HttpBody>,
}

/// One of `string` and `bytes` (base64).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpBody {
    #[serde(default)]
    pub string: Option<String>,
    #[serde(default)]
    pub bytes: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HttpRetry {
    pub attempts: Option<i32>,
    pub per_try_timeout: Option<String>,
    pub retry_on: Option<String>,
    pub retry_remote_localities: Option<bool>,
    pub retry_ignore_previous_hosts: Option<bool>,
    pub backoff: Unsupported,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpFaultInjection {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct FaultDelay {
    pub fixed_delay: Option<String>,
    pub exponential_delay: Unsupported,
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage, read when `percentage` is unset.
    pub percent: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct FaultAbort {
    pub http_status: Option<i32>,
    /// A gRPC status name such as `UNAVAILABLE`.
    pub grpc_status: Option<String>,
    pub http2_error: Unsupported,
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    pub destination: Destination,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

// ----- DestinationRule -----

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub workload_selector: Unsupported,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
    pub port_level_settings: Vec<PortTrafficPolicy>,
    pub tunnel: Unsupported,
    pub proxy_protocol: Unsupported,
    pub retry_budget: Unsupported,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

/// `trafficPolicy.tls`: TLS to the destination.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ClientTlsSettings {
    pub mode: ClientTlsMode,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub credential_name: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub sni: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub ca_crl: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    #[default]
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LoadBalancerSettings {
    pub simple: Option<SimpleLb>,
    pub consistent_hash: Unsupported,
    pub locality_lb_setting: Unsupported,
    pub warmup_duration_secs: Unsupported,
    pub warmup: Unsupported,
    pub zone_aware_lb_setting: Unsupported,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    /// Deprecated alias of LEAST_REQUEST.
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TcpSettings {
    pub max_connections: Option<i32>,
    pub connect_timeout: Option<String>,
    pub tcp_keepalive: Unsupported,
    pub max_connection_duration: Unsupported,
    pub idle_timeout: Unsupported,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default, rename = "http1MaxPendingRequests")]
    pub http1_max_pending_requests: Option<i32>,
    #[serde(default, rename = "http2MaxRequests")]
    pub http2_max_requests: Option<i32>,
    #[serde(default)]
    pub max_requests_per_connection: Option<i32>,
    #[serde(default)]
    pub max_retries: Option<i32>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    #[serde(default)]
    pub use_client_protocol: bool,
    #[serde(default)]
    pub max_concurrent_streams: Unsupported,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    Default,
    DoNotUpgrade,
    Upgrade,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated: Istio reads it as `consecutiveGatewayErrors` (with 5xx ejection off).
    #[serde(default)]
    pub consecutive_errors: Option<i32>,
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_local_origin_failures: Unsupported,
    #[serde(default)]
    pub split_external_local_origin_errors: Unsupported,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: Option<i32>,
    #[serde(default)]
    pub min_health_percent: Unsupported,
    #[serde(default)]
    pub outlier_detection_http_error_codes: Unsupported,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

// ----- ServiceEntry and WorkloadEntry -----

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ServiceEntry {
    pub hosts: Vec<String>,
    pub addresses: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub location: Option<Location>,
    pub resolution: Option<Resolution>,
    pub endpoints: Vec<WorkloadEntry>,
    pub workload_selector: Option<WorkloadSelector>,
    pub export_to: Vec<String>,
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub number: u32,
    /// HTTP, HTTP2, GRPC, ... (case-insensitive); unset: from the name's prefix.
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// `networking.istio.io` Gateway: the ports, hosts and TLS a gateway's proxies serve.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Gateway {
    pub servers: Vec<Server>,
    /// The gateway proxies it configures, by their labels (`istio: ingressgateway`).
    pub selector: BTreeMap<String, String>,
}

/// One port of a Gateway, for some hosts.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Server {
    pub port: ServerPort,
    /// `host`, `*.suffix`, `*`, each optionally `namespace/` (`./` the Gateway's own, `*/`
    /// any): the VirtualServices of those namespaces that name the host bind to it.
    pub hosts: Vec<String>,
    pub tls: Option<ServerTlsSettings>,
    pub name: Option<String>,
    pub bind: Option<String>,
    pub default_endpoint: Unsupported,
}

/// A Gateway server's port.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ServerPort {
    pub number: u32,
    /// HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP, TLS (case-insensitive).
    pub protocol: String,
    pub name: String,
    pub target_port: Option<u32>,
}

/// A Gateway server's TLS.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Plain HTTP requests get a 301 to `https`.
    pub https_redirect: bool,
    /// PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL.
    pub mode: Option<String>,
    /// Files on the gateway's filesystem (PEM).
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub ca_crl: Option<String>,
    /// A Secret in the gateway's namespace: `tls.crt`/`tls.key` (and `ca.crt`), or
    /// `cert`/`key` (and `cacert`); a `<name>-cacert` Secret may hold the CA.
    pub credential_name: Option<String>,
    pub credential_names: Vec<String>,
    pub subject_alt_names: Vec<String>,
    pub verify_certificate_spki: Vec<String>,
    pub verify_certificate_hash: Vec<String>,
    /// TLSV1_0 ... TLSV1_3, TLS_AUTO.
    pub min_protocol_version: Option<String>,
    pub max_protocol_version: Option<String>,
    pub cipher_suites: Vec<String>,
}

/// A Kubernetes Secret holding TLS credentials (`type: kubernetes.io/tls` or Opaque), its
/// `data` decoded and `stringData` merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsSecret {
    pub data: BTreeMap<String, Vec<u8>>,
}

impl TlsSecret {
    /// The certificate chain, key and CA, under Kubernetes' or Istio's key names.
    pub fn get(&self, keys: &[&str]) -> Option<&[u8]> {
        keys.iter()
            .find_map(|k| self.data.get(*k))
            .map(Vec::as_slice)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
    /// Wildcard hosts resolved per request: not supported, read as DNS.
    DynamicDns,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A WorkloadEntry's spec, also the shape of a ServiceEntry's inline `endpoints`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct WorkloadEntry {
    pub address: Option<String>,
    /// Service port name -> the workload's port.
    pub ports: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub network: Option<String>,
    pub locality: Option<String>,
    pub weight: Option<u32>,
    pub service_account: Option<String>,
    /// For a workload registered by its sidecar: the workload's port -> the sidecar's inbound
    /// listener port, so that other sidecars reach it through its own. Not Istio's field.
    #[serde(skip)]
    pub sidecar_ports: BTreeMap<u32, u32>,
    /// For a gateway registered by itself: the Gateway server port -> the port it listens on
    /// (plaintext, as Istio's gateways take HTTP from sidecars). Not Istio's field.
    #[serde(skip)]
    pub gateway_ports: BTreeMap<u32, u32>,
}

// ----- WasmPlugin (extensions.istio.io) -----

/// The API group of WasmPlugin.
pub const EXTENSIONS_GROUP: &str = "extensions.istio.io";
/// The versions of WasmPlugin served.
pub const EXTENSIONS_VERSIONS: [&str; 1] = ["v1alpha1"];

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct WasmPlugin {
    pub selector: Option<LabelSelector>,
    pub target_ref: Option<PolicyTargetReference>,
    pub target_refs: Vec<PolicyTargetReference>,
    pub url: String,
    pub sha256: Option<String>,
    pub image_pull_policy: Option<PullPolicy>,
    pub image_pull_secret: Option<String>,
    pub verification_key: Unsupported,
    #[schemars(schema_with = "struct_schema")]
    pub plugin_config: Option<serde_json::Value>,
    pub plugin_name: Option<String>,
    pub phase: Option<PluginPhase>,
    pub priority: Option<i32>,
    pub fail_strategy: Option<PluginFailStrategy>,
    pub vm_config: Option<PluginVmConfig>,
    #[serde(rename = "match")]
    pub match_: Vec<TrafficSelector>,
    #[serde(rename = "type")]
    pub type_: Option<PluginType>,
}

/// `selector`: Kubernetes' label selector, `matchLabels` only.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PolicyTargetReference {
    pub group: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum PullPolicy {
    #[serde(rename = "UNSPECIFIED_POLICY")]
    Unspecified,
    IfNotPresent,
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PluginPhase {
    UnspecifiedPhase,
    Authn,
    Authz,
    Stats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PluginFailStrategy {
    FailClose,
    FailOpen,
    FailReload,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PluginType {
    UnspecifiedPluginType,
    Http,
    Network,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PluginVmConfig {
    pub env: Vec<PluginEnvVar>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PluginEnvVar {
    pub name: String,
    pub value_from: Option<PluginEnvSource>,
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PluginEnvSource {
    Inline,
    Host,
}

/// `match[]`: which traffic the plugin sees.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TrafficSelector {
    pub mode: Option<WorkloadMode>,
    pub ports: Vec<PortSelector>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    Undefined,
    Client,
    Server,
    ClientAndServer,
}

// ----- PeerAuthentication (security.istio.io) -----

/// The API group of PeerAuthentication and AuthorizationPolicy.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// The versions served.
pub const SECURITY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// What TLS a workload's sidecar accepts from its peers.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PeerAuthentication {
    /// The workloads it applies to; none: every workload in its namespace (or, in the root
    /// namespace, the mesh).
    pub selector: Option<LabelSelector>,
    pub mtls: Option<PeerMtls>,
    /// Per workload port; only with a selector.
    // Keys are strings in JSON; schemars would spell a u32 key as `patternProperties`, which
    // the API server's structural schemas do not allow.
    #[schemars(with = "BTreeMap<String, PeerMtls>")]
    pub port_level_mtls: BTreeMap<u32, PeerMtls>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PeerMtls {
    pub mode: MtlsMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherited from the enclosing scope.
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

// ----- AuthorizationPolicy (security.istio.io) -----

/// Who may do what to the workloads it selects.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// The workloads it applies to; none: every workload in its namespace (or, in the root
    /// namespace, the mesh).
    pub selector: Option<LabelSelector>,
    /// Gateways and waypoints; a sidecar is selected by `selector` only.
    pub target_ref: Option<PolicyTargetReference>,
    pub target_refs: Vec<PolicyTargetReference>,
    pub rules: Vec<AuthzRule>,
    pub action: AuthzAction,
    /// For CUSTOM: the external authorizer.
    pub provider: Option<AuthzProvider>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthzAction {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzProvider {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzRule {
    pub from: Vec<AuthzFrom>,
    pub to: Vec<AuthzTo>,
    pub when: Vec<AuthzCondition>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzFrom {
    pub source: AuthzSource,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AuthzSource {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
    pub remote_ip_blocks: Vec<String>,
    pub not_remote_ip_blocks: Vec<String>,
    /// Ambient's service accounts: not for sidecars.
    pub service_accounts: Unsupported,
    pub not_service_accounts: Unsupported,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzTo {
    pub operation: AuthzOperation,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AuthzOperation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<String>,
    pub not_ports: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AuthzCondition {
    pub key: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

// ----- Telemetry (telemetry.istio.io) -----

/// The API group of Telemetry.
pub const TELEMETRY_GROUP: &str = "telemetry.istio.io";
/// The versions of Telemetry served, newest first.
pub const TELEMETRY_VERSIONS: [&str; 2] = ["v1", "v1alpha1"];

/// How the workloads it selects report telemetry: wasmesh reads its `tracing`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Telemetry {
    /// The workloads of its namespace it applies to; none (and no targetRefs): all of them
    /// (in the root namespace, the mesh's).
    pub selector: Option<LabelSelector>,
    /// Deprecated: `targetRefs`.
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateways and waypoints; a sidecar is selected by `selector` only.
    pub target_refs: Vec<PolicyTargetReference>,
    pub tracing: Vec<Tracing>,
    pub metrics: Unsupported,
    pub access_logging: Unsupported,
}

/// `tracing[]`: which provider spans go to, and how many requests start a trace.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Tracing {
    #[serde(rename = "match")]
    pub match_: Option<TracingSelector>,
    pub providers: Vec<ProviderRef>,
    /// 0 to 100; unset: the parent's, else the mesh config's `defaultConfig.tracing.sampling`
    /// (Istio's default 1).
    #[schemars(range(min = 0, max = 100))]
    pub random_sampling_percentage: Option<f64>,
    pub disable_span_reporting: Option<bool>,
    pub custom_tags: BTreeMap<String, CustomTag>,
    pub use_request_id_for_trace_sampling: Option<bool>,
    pub enable_istio_tags: Option<bool>,
    pub disable_context_propagation: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TracingSelector {
    pub mode: Option<TelemetryWorkloadMode>,
}

/// Which side of the workload's traffic a Telemetry setting is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TelemetryWorkloadMode {
    ClientAndServer,
    Client,
    Server,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderRef {
    /// An `extensionProviders[].name` of the mesh config.
    pub name: String,
}

/// A span tag: one of `literal`, `environment`, `header`, `formatter`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CustomTag {
    pub literal: Option<TagLiteral>,
    pub environment: Option<TagFrom>,
    pub header: Option<TagFrom>,
    pub formatter: Option<TagLiteral>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TagLiteral {
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TagFrom {
    pub name: String,
    pub default_value: Option<String>,
}

// ----- MeshConfig (the `mesh` key of the ConfigMap `istio` in `istio-system`) -----

/// Where Istio keeps its mesh config: the ConfigMap `istio` of the root namespace, whose
/// `data.mesh` is MeshConfig YAML.
pub const MESH_CONFIG_MAP: (&str, &str) = ("istio-system", "istio");

/// Istio's MeshConfig, the fields wasmesh reads. As Istio reads it (after a strict try, it
/// accepts unknown fields), fields other than these are accepted; the ones Istio does not
/// know either are reported ([`MESH_CONFIG_FIELDS`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    #[serde(alias = "extension_providers")]
    pub extension_providers: Vec<ExtensionProvider>,
    #[serde(alias = "default_providers")]
    pub default_providers: Option<DefaultProviders>,
    /// Istio's legacy tracing switch: read only where no Telemetry and no default provider
    /// configure tracing, where wasmesh has nothing to trace with.
    #[serde(alias = "enable_tracing")]
    pub enable_tracing: Option<bool>,
    #[serde(alias = "default_config")]
    pub default_config: Option<ProxyConfig>,
    #[serde(alias = "root_namespace")]
    pub root_namespace: Option<String>,
    /// Where sidecars send requests for hosts the mesh does not know (Istio's default:
    /// `ALLOW_ANY`).
    #[serde(alias = "outbound_traffic_policy")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// The top-level fields written, as they are spelled (filled in by the parser).
    #[serde(skip)]
    pub fields: Vec<String>,
}

/// `outboundTrafficPolicy`: what a sidecar does with traffic for destinations outside the
/// mesh's registry.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` (Istio's default): passed through to where it was going (Istio's
    /// `PassthroughCluster`); `REGISTRY_ONLY`: refused (`BlackHoleCluster`: HTTP gets 502, TCP
    /// is closed). Kept as written: validation names a mode Istio does not have.
    pub mode: Option<String>,
    /// Istio's `egressProxy`: accepted, not read (reported).
    #[serde(alias = "egress_proxy")]
    pub egress_proxy: Option<serde_json::Value>,
}

/// Istio's outbound traffic policy modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutboundMode {
    #[default]
    AllowAny,
    RegistryOnly,
}

impl OutboundMode {
    /// The mode a written value names, spelled as Istio's enum (case matters, as it does for
    /// Istio): None for one Istio does not have.
    pub fn parse(text: &str) -> Option<OutboundMode> {
        match text.trim() {
            "ALLOW_ANY" => Some(OutboundMode::AllowAny),
            "REGISTRY_ONLY" => Some(OutboundMode::RegistryOnly),
            _ => None,
        }
    }
}

impl MeshConfig {
    /// The outbound traffic policy's mode; unset (or not one of Istio's): `ALLOW_ANY`.
    pub fn outbound_mode(&self) -> OutboundMode {
        self.outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode.as_deref())
            .and_then(OutboundMode::parse)
            .unwrap_or_default()
    }
}

/// `extensionProviders[]`: a name and one provider. The kinds other than `opentelemetry`
/// are accepted, not read.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtensionProvider {
    pub name: String,
    pub opentelemetry: Option<OpenTelemetryProvider>,
    pub zipkin: Option<serde_json::Value>,
    pub datadog: Option<serde_json::Value>,
    pub skywalking: Option<serde_json::Value>,
    pub lightstep: Option<serde_json::Value>,
    pub stackdriver: Option<serde_json::Value>,
    pub opencensus: Option<serde_json::Value>,
    #[serde(alias = "envoy_ext_authz_http")]
    pub envoy_ext_authz_http: Option<serde_json::Value>,
    #[serde(alias = "envoy_ext_authz_grpc")]
    pub envoy_ext_authz_grpc: Option<serde_json::Value>,
    pub prometheus: Option<serde_json::Value>,
    #[serde(alias = "envoy_file_access_log")]
    pub envoy_file_access_log: Option<serde_json::Value>,
    #[serde(alias = "envoy_http_als")]
    pub envoy_http_als: Option<serde_json::Value>,
    #[serde(alias = "envoy_tcp_als")]
    pub envoy_tcp_als: Option<serde_json::Value>,
    #[serde(alias = "envoy_otel_als")]
    pub envoy_otel_als: Option<serde_json::Value>,
    pub sds: Option<serde_json::Value>,
    /// The fields written, as they are spelled (filled in by the parser).
    #[serde(skip)]
    pub fields: Vec<String>,
}

/// `opentelemetry`: an OTLP collector.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OpenTelemetryProvider {
    /// `[<namespace>/]<hostname>`.
    pub service: String,
    pub port: u32,
    pub max_tag_length: Option<u32>,
    /// OTLP over HTTP instead of gRPC.
    pub http: Option<serde_json::Value>,
    pub grpc: Option<OtlpGrpc>,
    pub resource_detectors: Option<serde_json::Value>,
    pub dynatrace_sampler: Option<serde_json::Value>,
    pub service_attribute_enrichment: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OtlpGrpc {
    /// A protobuf duration (`5s`).
    pub timeout: Option<String>,
    pub initial_metadata: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DefaultProviders {
    pub tracing: Vec<String>,
    pub metrics: Vec<String>,
    #[serde(alias = "access_logging")]
    pub access_logging: Vec<String>,
}

/// `defaultConfig`: the proxies' defaults; wasmesh reads `tracing`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyConfig {
    pub tracing: Option<ProxyTracing>,
}

/// `defaultConfig.tracing`: the sampling percentage Telemetry falls back to, and Istio's
/// legacy tracers.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyTracing {
    /// 0 to 100; 0 (or unset): 1, Istio's default.
    pub sampling: Option<f64>,
    #[serde(alias = "custom_tags")]
    pub custom_tags: Option<serde_json::Value>,
    #[serde(alias = "max_path_tag_length")]
    pub max_path_tag_length: Option<serde_json::Value>,
    pub zipkin: Option<serde_json::Value>,
    pub lightstep: Option<serde_json::Value>,
    pub datadog: Option<serde_json::Value>,
    pub stackdriver: Option<serde_json::Value>,
    #[serde(alias = "open_census_agent")]
    pub open_census_agent: Option<serde_json::Value>,
    #[serde(alias = "tls_settings")]
    pub tls_settings: Option<serde_json::Value>,
}

impl ProxyTracing {
    /// The legacy tracer settings written (`zipkin`, ...).
    pub fn tracers(&self) -> Vec<&'static str> {
        [
            ("zipkin", &self.zipkin),
            ("lightstep", &self.lightstep),
            ("datadog", &self.datadog),
            ("stackdriver", &self.stackdriver),
            ("openCensusAgent", &self.open_census_agent),
            ("tlsSettings", &self.tls_settings),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k)
        .collect()
    }
}

/// The kinds of `extensionProviders[]` Istio has; those that trace come first.
pub const TRACING_PROVIDER_KINDS: [&str; 7] = [
    "opentelemetry",
    "zipkin",
    "datadog",
    "skywalking",
    "lightstep",
    "stackdriver",
    "opencensus",
];
/// The kinds of `extensionProviders[]` that do not trace.
pub const OTHER_PROVIDER_KINDS: [&str; 8] = [
    "envoyExtAuthzHttp",
    "envoyExtAuthzGrpc",
    "prometheus",
    "envoyFileAccessLog",
    "envoyHttpAls",
    "envoyTcpAls",
    "envoyOtelAls",
    "sds",
];

/// MeshConfig's top-level fields, as Istio knows them (`mesh/v1alpha1/config.proto`).
pub const MESH_CONFIG_FIELDS: [&str; 50] = [
    "proxyListenPort",
    "proxyInboundListenPort",
    "proxyHttpPort",
    "connectTimeout",
    "hboneIdleTimeout",
    "protocolDetectionTimeout",
    "tcpKeepalive",
    "ingressClass",
    "ingressService",
    "ingressControllerMode",
    "ingressSelector",
    "enableTracing",
    "accessLogFile",
    "accessLogFormat",
    "accessLogEncoding",
    "enableEnvoyAccessLogService",
    "disableEnvoyListenerLog",
    "defaultConfig",
    "outboundTrafficPolicy",
    "inboundTrafficPolicy",
    "configSources",
    "enableAutoMtls",
    "trustDomain",
    "trustDomainAliases",
    "caCertificates",
    "defaultServiceExportTo",
    "defaultVirtualServiceExportTo",
    "defaultDestinationRuleExportTo",
    "rootNamespace",
    "localityLbSetting",
    "zoneAwareLbSetting",
    "dnsRefreshRate",
    "h2UpgradePolicy",
    "inboundClusterStatName",
    "outboundClusterStatName",
    "certificates",
    "serviceSettings",
    "serviceScopeConfigs",
    "enablePrometheusMerge",
    "verifyCertificateAtClient",
    "ca",
    "extensionProviders",
    "defaultProviders",
    "discoverySelectors",
    "pathNormalization",
    "defaultHttpRetryPolicy",
    "meshMTLS",
    "tlsDefaults",
    "defaultTrafficPolicy",
    "serviceEntryVisibility",
];

impl ExtensionProvider {
    /// The provider kinds set (`opentelemetry`, `zipkin`, ...; one is expected), tracing ones
    /// first.
    pub fn kinds(&self) -> Vec<&'static str> {
        let set = [
            self.opentelemetry.is_some(),
            self.zipkin.is_some(),
            self.datadog.is_some(),
            self.skywalking.is_some(),
            self.lightstep.is_some(),
            self.stackdriver.is_some(),
            self.opencensus.is_some(),
            self.envoy_ext_authz_http.is_some(),
            self.envoy_ext_authz_grpc.is_some(),
            self.prometheus.is_some(),
            self.envoy_file_access_log.is_some(),
            self.envoy_http_als.is_some(),
            self.envoy_tcp_als.is_some(),
            self.envoy_otel_als.is_some(),
            self.sds.is_some(),
        ];
        TRACING_PROVIDER_KINDS
            .iter()
            .chain(&OTHER_PROVIDER_KINDS)
            .zip(set)
            .filter(|(_, set)| *set)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Whether its kind traces.
    pub fn traces(&self) -> bool {
        self.kinds()
            .first()
            .is_some_and(|k| TRACING_PROVIDER_KINDS.contains(k))
    }

    /// The fields written that Istio does not know.
    pub fn unknown_fields(&self) -> Vec<&str> {
        self.fields
            .iter()
            .map(String::as_str)
            .filter(|f| {
                let camel = camel_case(f);
                camel != "name"
                    && !TRACING_PROVIDER_KINDS.contains(&camel.as_str())
                    && !OTHER_PROVIDER_KINDS.contains(&camel.as_str())
            })
            .collect()
    }
}

/// `envoy_ext_authz_http` -> `envoyExtAuthzHttp` (protobuf's JSON names); camelCase as it is.
pub fn camel_case(field: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}
