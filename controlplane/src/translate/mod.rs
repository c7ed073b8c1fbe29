//! Istio resources -> the proxy's bootstrap and the four plugins' configuration.
//!
//! [`translate`] is a pure function: no IO, no clock, no randomness, and its output is in a
//! deterministic order (services by host and port, resources by namespace and name). See the
//! crate's README for what maps to what.

mod clusters;
pub(crate) mod registry;
mod routes;
mod validate;

pub(crate) use clusters::service_ref;

use std::collections::{BTreeMap, BTreeSet};

use wasmesh_config::filters::{FailStrategy, FilterScope, HttpFilter, Phase, VmConfig};
use wasmesh_config::{
    Bootstrap, Cluster, Dur, HttpOptions, Listener, Resolution, ServiceRef, TrafficDirection,
    UpstreamProtocol, WasmOptions,
};
use wasmesh_policy::{CircuitBreakerConfig, FaultConfig, MirrorConfig, RouterConfig};

use crate::diag::Diagnostic;
use crate::istio::OutboundMode;
use crate::manifests::{Resource, Spec};

/// What the translation needs besides the manifests.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// The cluster's DNS suffix: short host `reviews` in namespace `default` is
    /// `reviews.default.svc.cluster.local`.
    pub domain_suffix: String,
    /// The namespace the proxy's clients live in: its services also answer to their bare short
    /// name (`reviews`), as they do for an Istio sidecar in that namespace.
    pub client_namespace: String,
    pub listener_name: String,
    /// `ip:port`; port 0 picks a free port.
    pub listener_address: String,
    /// The proxy's admin address, if any.
    pub admin_address: Option<String>,
    /// The four plugin modules; None puts everything the proxy's own routes can carry into
    /// them and runs no plugin (a baseline).
    pub plugins: Option<PluginModules>,
    /// Istio sends a request that matches none of a VirtualService's routes nowhere (404, `NR`).
    /// Set this to let it fall through to the service's default route instead.
    pub fall_through_to_default_route: bool,
    /// The mesh's trust domain: the SPIFFE ids that mTLS to sidecars expects.
    pub trust_domain: String,
    /// The cluster the workloads run in, as sidecars report it (Istio's `CLUSTER_ID`).
    pub cluster_id: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            domain_suffix: "svc.cluster.local".into(),
            client_namespace: "default".into(),
            listener_name: "outbound".into(),
            listener_address: "127.0.0.1:0".into(),
            admin_address: None,
            plugins: None,
            fall_through_to_default_route: false,
            trust_domain: wasmesh_api::DEFAULT_TRUST_DOMAIN.into(),
            cluster_id: crate::telemetry::DEFAULT_CLUSTER_ID.into(),
        }
    }
}

/// Where each plugin's Wasm module is (a path, `file://` or `http://` with sha256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginModules {
    pub router: PluginModule,
    pub fault: PluginModule,
    pub mirror: PluginModule,
    pub circuit_breaker: PluginModule,
    /// The authorization plugin, on sidecars' inbound listeners where AuthorizationPolicies
    /// apply.
    pub authz: PluginModule,
}

/// The modules' file names as `cargo build --release --target wasm32-wasip1 -p plugin-router
/// -p plugin-fault -p plugin-mirror -p plugin-circuit-breaker` writes them, in chain order.
pub const PLUGIN_FILES: [&str; 4] = [
    "plugin_router.wasm",
    "plugin_fault.wasm",
    "plugin_mirror.wasm",
    "plugin_circuit_breaker.wasm",
];

/// The authorization plugin's module file name (`-p plugin-authz`).
pub const AUTHZ_PLUGIN_FILE: &str = "plugin_authz.wasm";

impl PluginModules {
    /// The four traffic modules in `dir` ([`PLUGIN_FILES`]) and the authorization plugin's
    /// ([`AUTHZ_PLUGIN_FILE`]), as absolute paths; `Err` names the first one missing.
    pub fn in_dir(dir: &std::path::Path) -> Result<PluginModules, std::path::PathBuf> {
        let module = |name: &str| {
            let file = dir.join(name);
            if !file.is_file() {
                return Err(file);
            }
            let file = std::path::absolute(&file).unwrap_or(file);
            Ok(PluginModule::new(file.display().to_string()))
        };
        Ok(PluginModules {
            router: module(PLUGIN_FILES[0])?,
            fault: module(PLUGIN_FILES[1])?,
            mirror: module(PLUGIN_FILES[2])?,
            circuit_breaker: module(PLUGIN_FILES[3])?,
            authz: module(AUTHZ_PLUGIN_FILE)?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginModule {
    pub url: String,
    pub sha256: Option<String>,
}

impl PluginModule {
    pub fn new(url: impl Into<String>) -> PluginModule {
        PluginModule {
            url: url.into(),
            sha256: None,
        }
    }
}

/// The translation's result. The plugin configs are also inside `bootstrap` (each filter's
/// `plugin_config`) when plugins are on.
#[derive(Clone, Debug)]
pub struct Translation {
    pub bootstrap: Bootstrap,
    pub router: RouterConfig,
    pub fault: FaultConfig,
    pub mirror: MirrorConfig,
    pub circuit_breaker: CircuitBreakerConfig,
    /// What was wrong or left out, in the order found; resources with an error are left out.
    pub diagnostics: Vec<Diagnostic>,
}

/// The names of the plugins in the chain, in order.
pub const PLUGIN_NAMES: [&str; 4] = ["router", "fault", "mirror", "circuit-breaker"];

/// Translates what a load found; its diagnostics come first in the translation's.
/// Gateway API resources are converted first (`gateway_api`), as the control plane does.
pub fn translate_loaded(loaded: &crate::Loaded, options: &Options) -> Translation {
    let mut resources = loaded.resources.clone();
    let mut diagnostics = loaded.diagnostics.clone();
    crate::gateway_api::append(&mut resources, &mut diagnostics, &options.domain_suffix);
    let mut t = translate(&resources, options);
    t.diagnostics.splice(0..0, diagnostics);
    t
}

impl Translation {
    /// The error diagnostics: what was asked for and left out.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

/// Translates resources. Diagnostics name the resource and field at fault; a resource with an
/// error diagnostic is left out and the rest still translate.
pub fn translate(resources: &[Resource], options: &Options) -> Translation {
    let mut diags = Vec::new();
    let valid = valid_resources(resources, &mut diags);
    let registry = registry::Registry::build(&valid, options, &mut diags);
    let mut clusters = clusters::build(&registry, &mut diags);
    let mode = outbound_mode(&valid);
    let routed = routes::build(&registry, &clusters, &valid, options, mode, &mut diags);
    if mode == OutboundMode::AllowAny {
        clusters.bootstrap.push(passthrough_cluster());
    }

    let listener = Listener {
        sni_routes: Vec::new(),
        name: options.listener_name.clone(),
        address: options.listener_address.clone(),
        max_connections: 100_000,
        http: HttpOptions::default(),
        tls: None,
        http_filters: match &options.plugins {
            Some(modules) => filters(
                modules,
                &routed.router,
                FilterScope {
                    routes: routed.router_routes.clone(),
                    clusters: Vec::new(),
                    unrouted: true,
                },
                &routed.fault,
                &routed.mirror,
                &clusters.circuit_breaker,
            ),
            None => Vec::new(),
        },
        virtual_hosts: routed.core_virtual_hosts,
        original_dst: None,
        handles: Vec::new(),
        tcp_proxy: None,
        traffic_direction: Some(TrafficDirection::Outbound),
    };
    let bootstrap = Bootstrap {
        workers: None,
        admin: options
            .admin_address
            .as_ref()
            .map(|a| wasmesh_config::Admin { address: a.clone() }),
        listeners: vec![listener],
        clusters: clusters.bootstrap,
        access_log: None,
        drain_timeout: Dur::secs(5),
        wasm: WasmOptions::default(),
        telemetry: Default::default(),
        base_dir: None,
    };

    Translation {
        bootstrap,
        router: routed.router,
        fault: routed.fault,
        mirror: routed.mirror,
        circuit_breaker: clusters.circuit_breaker,
        diagnostics: dedup(diags),
    }
}

/// Istio's cluster for requests to destinations the mesh does not know, under `ALLOW_ANY`:
/// each goes where it was going.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Istio's catch-all virtual host and route under `ALLOW_ANY` (to [`PASSTHROUGH_CLUSTER`]).
pub const ALLOW_ANY_ROUTE: &str = "allow_any";
/// Istio's catch-all virtual host and route under `REGISTRY_ONLY` (a direct 502).
pub const BLOCK_ALL_ROUTE: &str = "block_all";

/// The mesh config's outbound traffic policy (of the first valid mesh config; none:
/// `ALLOW_ANY`, Istio's default).
pub(crate) fn outbound_mode(valid: &[&Resource]) -> OutboundMode {
    valid
        .iter()
        .find_map(|r| match &r.spec {
            Spec::MeshConfig(m) => Some(m.outbound_mode()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Istio's `PassthroughCluster`: no endpoints, each request to its original destination (the
/// redirected connection's, else its authority), in the protocol the caller spoke, with the
/// mesh's connect timeout; its metrics name the service `PassthroughCluster`, as Istio's do.
fn passthrough_cluster() -> Cluster {
    Cluster {
        name: PASSTHROUGH_CLUSTER.into(),
        endpoints: Vec::new(),
        resolution: Resolution::OriginalDst,
        lb_policy: Default::default(),
        protocol: UpstreamProtocol::Downstream,
        connect_timeout: Dur(clusters::DEFAULT_CONNECT_TIMEOUT),
        idle_timeout: Dur(clusters::DEFAULT_IDLE_TIMEOUT),
        max_requests_per_connection: 0,
        circuit_breakers: Default::default(),
        retry_budget: None,
        tls: None,
        service: Some(ServiceRef {
            // Istio's `destination_service` is the request's host here, which a cluster
            // cannot name: left empty (the proxy reports `unknown`).
            host: String::new(),
            name: PASSTHROUGH_CLUSTER.into(),
            namespace: String::new(),
        }),
    }
}

/// The resources that translate, each kind by namespace and name (the first of duplicates
/// wins); what is wrong with the others goes to `diags`.
fn valid_resources<'r>(
    resources: &'r [Resource],
    diags: &mut Vec<Diagnostic>,
) -> Vec<&'r Resource> {
    // Valid resources only, each kind (of its group: Istio's and the Gateway API's Gateways
    // differ) by namespace and name; the first of duplicates wins.
    let mut seen = BTreeSet::new();
    let mut valid: Vec<&Resource> = Vec::new();
    for r in resources {
        let id = (
            r.group(),
            r.kind(),
            r.namespace().to_owned(),
            r.name().to_owned(),
        );
        if !seen.insert(id) {
            diags.push(r.diag(Diagnostic::warning(
                crate::diag::code::SHADOWED,
                format!(
                    "Another {} named {}.{} came first: this one is ignored",
                    r.kind(),
                    r.name(),
                    r.namespace()
                ),
            )));
            continue;
        }
        let found = validate::resource(r);
        let bad = found.iter().any(Diagnostic::is_error);
        diags.extend(found);
        if !bad {
            valid.push(r);
        }
    }
    valid.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    // Telemetries' providers, from the mesh config (they apply per sidecar: `sidecar`).
    diags.extend(crate::telemetry::check(&valid));

    valid
}

/// Where a traffic plugin has something to do.
enum Work {
    /// On these requests only.
    On(FilterScope),
    /// Nowhere: the plugin is left out.
    Nowhere,
}

impl Work {
    fn on_routes(routes: Vec<String>) -> Work {
        Work::on(FilterScope {
            routes,
            ..FilterScope::default()
        })
    }

    fn on(scope: FilterScope) -> Work {
        if scope.routes.is_empty() && scope.clusters.is_empty() && !scope.unrouted {
            Work::Nowhere
        } else {
            Work::On(scope)
        }
    }
}

/// The four traffic plugins, each scoped to where it has something to do (the router to the
/// services a VirtualService binds and to requests the proxy has no route for, a fault or a
/// mirror to the routes that carry one, the breaker to the clusters with a policy) and left
/// out where that is nowhere: a request none of them has anything for takes the proxy's
/// unfiltered path.
fn filters(
    modules: &PluginModules,
    router: &RouterConfig,
    router_scope: FilterScope,
    fault: &FaultConfig,
    mirror: &MirrorConfig,
    circuit_breaker: &CircuitBreakerConfig,
) -> Vec<HttpFilter> {
    let json = |v: serde_json::Result<serde_json::Value>| v.expect("plugin configs serialize");
    let configs = [
        (
            &modules.router,
            json(serde_json::to_value(router)),
            Work::on(router_scope),
        ),
        (
            &modules.fault,
            json(serde_json::to_value(fault)),
            Work::on_routes(fault.routes.keys().cloned().collect()),
        ),
        (
            &modules.mirror,
            json(serde_json::to_value(mirror)),
            Work::on_routes(mirror.routes.keys().cloned().collect()),
        ),
        (
            &modules.circuit_breaker,
            json(serde_json::to_value(circuit_breaker)),
            Work::on(FilterScope {
                clusters: circuit_breaker.clusters.keys().cloned().collect(),
                ..FilterScope::default()
            }),
        ),
    ];
    configs
        .into_iter()
        .zip(PLUGIN_NAMES)
        .enumerate()
        .filter_map(|(i, ((module, config, work), name))| {
            let Work::On(scope) = work else {
                return None;
            };
            Some(HttpFilter {
                name: name.to_owned(),
                url: module.url.clone(),
                sha256: module.sha256.clone(),
                plugin_config: Some(config),
                plugin_name: String::new(),
                phase: Phase::UnspecifiedPhase,
                // The chain is ordered by priority, higher first: router, fault, mirror, breaker.
                priority: 40 - 10 * i as i32,
                // Without the router nothing is routed as configured; the others only add policy.
                fail_strategy: if name == "router" {
                    FailStrategy::FailClose
                } else {
                    FailStrategy::FailOpen
                },
                vm_config: VmConfig::default(),
                applies_to: Some(scope),
            })
        })
        .collect()
}

pub use routes::GatewayServer;

/// A gateway port's share of the translation: its traffic plugins (the router holding the
/// VirtualServices bound to its HTTP servers, run on every request, which the gateway's own
/// routes never take) and its SNI routes (its PASSTHROUGH servers).
pub struct GatewayRouting {
    pub http_filters: Vec<HttpFilter>,
    pub sni_routes: Vec<wasmesh_config::SniRoute>,
    /// A TCP server's cluster (the VirtualServices' `tcp` routes).
    pub tcp_cluster: Option<String>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Translates what a gateway serves on `port` for `servers` (every Gateway server selecting
/// the gateway with that port number). Clusters are the mesh's, as [`translate`] names them.
pub fn gateway_routing(
    resources: &[Resource],
    options: &Options,
    port: u32,
    servers: &[GatewayServer],
) -> GatewayRouting {
    let mut diags = Vec::new();
    let valid = valid_resources(resources, &mut diags);
    let registry = registry::Registry::build(&valid, options, &mut diags);
    let clusters = clusters::build(&registry, &mut diags);
    let routed = routes::for_gateway(
        &registry, &clusters, &valid, options, port, servers, &mut diags,
    );
    let http_filters = match &options.plugins {
        Some(modules) if !routed.router.virtual_hosts.is_empty() => filters(
            modules,
            &routed.router,
            FilterScope {
                unrouted: true,
                ..FilterScope::default()
            },
            &routed.fault,
            &routed.mirror,
            &clusters.circuit_breaker,
        ),
        _ => Vec::new(),
    };
    GatewayRouting {
        http_filters,
        sni_routes: routed.sni_routes,
        tcp_cluster: routed.tcp_cluster,
        diagnostics: dedup(diags),
    }
}

/// Drops repeated diagnostics (the same finding reached from several services), keeping order.
fn dedup(diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for d in diags {
        let key = d.to_string();
        if seen.insert(key, ()).is_none() {
            out.push(d);
        }
    }
    out
}

/// `reviews` in `default` -> `reviews.default.svc.cluster.local`; a name with a dot, and `*`,
/// as they are (lowercased).
pub(crate) fn qualify(host: &str, namespace: &str, options: &Options) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host == "*" || host.contains('.') {
        host
    } else {
        format!("{host}.{namespace}.{}", options.domain_suffix)
    }
}

/// Istio's cluster names: `outbound|9080||reviews.default.svc.cluster.local`, and with a subset
/// `outbound|9080|v1|reviews.default.svc.cluster.local`.
pub fn cluster_name(port: u32, subset: Option<&str>, host: &str) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or(""))
}

#[cfg(test)]
mod egress_tests;
#[cfg(test)]
mod tests;

/// Checks one resource on its own, as translation does before using it: errors mean it would
/// be left out.
pub fn check(resource: &Resource) -> Vec<Diagnostic> {
    validate::resource(resource)
}
