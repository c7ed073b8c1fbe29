//! A sidecar's configuration: what one proxy, beside one workload, is given.
//!
//! - The **outbound** listener (where the workload sends its requests, as to an `HTTP_PROXY`
//!   or by `Host`) carries every service of the mesh with the four traffic plugins, seen from
//!   the workload's namespace, plus the WasmPlugins that select the workload for CLIENT traffic.
//! - One **inbound** listener per workload port (`inbound|<port>`), where other sidecars reach
//!   the workload: it forwards to the workload's own address through the WasmPlugins that
//!   select it for SERVER traffic (the default).
//! - A connected sidecar **registers** its workload, as Istio's WorkloadEntry auto-registration
//!   does: ServiceEntries whose `workloadSelector` matches its labels get it as an endpoint, at
//!   its sidecar's inbound listener. Every hop is proxy to proxy.
//! - A **transparent** sidecar (its node has a `pod_ip`: iptables redirect the pod's traffic,
//!   Istio's interception model) also gets `virtualOutbound` on 15001 and `virtualInbound`
//!   on 15006, which hand each redirected connection to the listener that handles its
//!   original destination: the outbound listener for the mesh's service addresses and
//!   endpoints, the inbound listener of the port for the pod's own ports. Anything else
//!   passes through as TCP. Its workload registers at the pod's IP and its own ports.
//! - Its **telemetry** ([`crate::telemetry`]): the workload it serves, the service behind each
//!   inbound cluster, its tracing (Istio's Telemetry and mesh config), and which side of the
//!   traffic each listener is on.

use std::collections::BTreeMap;

use wasmesh_config::{
    Bootstrap, Cluster, DownstreamTls, DownstreamTlsMode, Dur, HttpOptions, Listener, OriginalDst,
    Route, RouteMatch, TcpProxy, Telemetry, TrafficDirection, UpstreamProtocol, VirtualHost,
};

use crate::authz;
use crate::istio::{self, MtlsMode, OutboundMode, WasmPlugin};
use crate::manifests::{Resource, Spec};
use crate::peer_auth;
use crate::plugins::{self, Direction, Workload};
use crate::telemetry::{self, MeshTracing};
use crate::translate::registry::{PortProtocol, port_protocol};
use crate::translate::{Options, Translation, cluster_name, translate};

/// A sidecar's identity and the listeners it has bound.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// The outbound listener's address (`ip:port`, bound).
    pub outbound_address: String,
    pub inbound: Vec<InboundPort>,
    /// The pod's IP when the sidecar intercepts transparently; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_ip: String,
    /// Where the proxy serves its Prometheus metrics (`ip:port`), for the dashboard; empty
    /// when it serves none the control plane can reach.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metrics_address: String,
    /// A gateway's ports (Istio's ingress and egress gateways): it serves the Gateway servers
    /// that select it on these, and has no outbound or inbound listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_ports: Vec<GatewayPort>,
}

/// A port a gateway serves, bound.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GatewayPort {
    /// The Gateway servers' `port.number` served here.
    pub port: u32,
    pub listen_address: String,
}

/// Istio's ports for redirected traffic (`wasmesh-proxy init` sends it there).
pub const VIRTUAL_OUTBOUND: &str = "0.0.0.0:15001";
pub const VIRTUAL_INBOUND: &str = "0.0.0.0:15006";

/// One workload port behind its sidecar.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboundPort {
    /// The workload's port: what ServiceEntries' ports (or `targetPort`s) name.
    pub port: u32,
    /// The sidecar's inbound listener for it (`ip:port`, bound).
    pub listen_address: String,
    /// Where the workload listens (`ip:port`).
    pub app_address: String,
}

/// Why a node cannot join.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("node.{0} is required")]
    Missing(&'static str),
    #[error("node.{field}: {value:?} is not an ip:port address")]
    Address { field: String, value: String },
    #[error("node.inbound: port {0} is listed twice")]
    DuplicatePort(u32),
    #[error("node.gateway_ports: a gateway has no inbound ports and no pod_ip")]
    GatewayWithSidecarPorts,
    #[error("node.gateway_ports: port {0} is not a port or is listed twice")]
    GatewayPort(u32),
    #[error("node.pod_ip: {0:?} is not an IP address")]
    PodIp(String),
}

impl Node {
    /// `name.namespace`, as istioctl names proxies.
    pub fn id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }

    /// A gateway's WorkloadEntry: its labels at the address it listens on (a gateway
    /// listening on every address is not registered), each Gateway port at its listen port.
    fn gateway_entry(&self) -> Option<Resource> {
        let listen: Vec<std::net::SocketAddr> = self
            .gateway_ports
            .iter()
            .filter_map(|p| p.listen_address.parse().ok())
            .collect();
        let ip = listen.first()?.ip();
        if ip.is_unspecified() {
            return None;
        }
        let entry = istio::WorkloadEntry {
            address: Some(ip.to_string()),
            labels: self.labels.clone(),
            service_account: Some(self.service_account.clone()).filter(|s| !s.is_empty()),
            gateway_ports: self
                .gateway_ports
                .iter()
                .zip(&listen)
                .map(|(p, a)| (p.port, u32::from(a.port())))
                .collect(),
            ..Default::default()
        };
        let mut r = Resource::new(&self.name, &self.namespace, Spec::WorkloadEntry(entry));
        r.metadata.labels = self.labels.clone();
        Some(r)
    }

    /// A gateway (it has gateway ports), not a sidecar.
    pub fn is_gateway(&self) -> bool {
        !self.gateway_ports.is_empty()
    }

    /// Checks what the control plane relies on.
    pub fn check(&self) -> Result<(), NodeError> {
        if self.name.is_empty() {
            return Err(NodeError::Missing("name"));
        }
        if self.namespace.is_empty() {
            return Err(NodeError::Missing("namespace"));
        }
        let address = |field: String, value: &str| {
            value
                .parse::<std::net::SocketAddr>()
                .map(|_| ())
                .map_err(|_| NodeError::Address {
                    field,
                    value: value.to_owned(),
                })
        };
        if self.is_gateway() {
            if !self.inbound.is_empty() || !self.pod_ip.is_empty() {
                return Err(NodeError::GatewayWithSidecarPorts);
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, p) in self.gateway_ports.iter().enumerate() {
                if !seen.insert(p.port) || !(1..=65535).contains(&p.port) {
                    return Err(NodeError::GatewayPort(p.port));
                }
                address(
                    format!("gateway_ports[{i}].listen_address"),
                    &p.listen_address,
                )?;
            }
        } else {
            address("outbound_address".into(), &self.outbound_address)?;
        }
        if !self.metrics_address.is_empty() {
            address("metrics_address".into(), &self.metrics_address)?;
        }
        if !self.pod_ip.is_empty() && self.pod_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(NodeError::PodIp(self.pod_ip.clone()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.inbound.iter().enumerate() {
            if !seen.insert(p.port) {
                return Err(NodeError::DuplicatePort(p.port));
            }
            address(format!("inbound[{i}].listen_address"), &p.listen_address)?;
            address(format!("inbound[{i}].app_address"), &p.app_address)?;
        }
        Ok(())
    }

    /// The WorkloadEntry its registration stands for: its labels and service account, at its
    /// sidecar's address, each workload port mapped to the sidecar's inbound listener (for a
    /// transparent sidecar: at the pod's IP and the workload's own ports, which iptables send
    /// to the sidecar).
    pub fn workload_entry(&self) -> Option<Resource> {
        if self.is_gateway() {
            return self.gateway_entry();
        }
        let first: std::net::SocketAddr = self.inbound.first()?.listen_address.parse().ok()?;
        let transparent = !self.pod_ip.is_empty();
        let sidecar_ports = self
            .inbound
            .iter()
            .filter_map(|p| {
                if transparent {
                    return Some((p.port, p.port));
                }
                let listen: std::net::SocketAddr = p.listen_address.parse().ok()?;
                Some((p.port, u32::from(listen.port())))
            })
            .collect();
        let address = if transparent {
            self.pod_ip.clone()
        } else {
            first.ip().to_string()
        };
        let entry = istio::WorkloadEntry {
            address: Some(address),
            labels: self.labels.clone(),
            service_account: Some(self.service_account.clone()).filter(|s| !s.is_empty()),
            sidecar_ports,
            ..Default::default()
        };
        let mut r = Resource::new(&self.name, &self.namespace, Spec::WorkloadEntry(entry));
        r.metadata.labels = self.labels.clone();
        Some(r)
    }
}

/// A user's WasmPlugin whose module the control plane has resolved.
#[derive(Clone, Debug)]
pub struct UserPlugin {
    pub resource: Resource,
    /// What the proxy loads: the module's url and sha256.
    pub url: String,
    pub sha256: Option<String>,
}

impl UserPlugin {
    pub(crate) fn spec(&self) -> &WasmPlugin {
        match &self.resource.spec {
            Spec::WasmPlugin(wp) => wp,
            _ => unreachable!("a UserPlugin holds a WasmPlugin"),
        }
    }
}

/// The sidecar's bootstrap for `node`: `resources` (registrations included), translated as
/// seen from the node's namespace, with its inbound listeners and the users' plugins.
pub fn translate_for(
    node: &Node,
    resources: &[Resource],
    user_plugins: &[UserPlugin],
    base: &Options,
) -> Translation {
    let mut t = outbound(&node.namespace, resources, base);
    let own = own_part(node, &t.bootstrap, resources, user_plugins, base);
    t.bootstrap = own.laid_over(t.bootstrap.clone());
    t
}

/// The outbound part every sidecar in `namespace` shares: the mesh's services with the
/// traffic plugins (its listener's address is set per sidecar by [`own_part`]).
pub fn outbound(namespace: &str, resources: &[Resource], base: &Options) -> Translation {
    let options = Options {
        client_namespace: namespace.to_owned(),
        listener_name: "outbound".into(),
        admin_address: None,
        ..base.clone()
    };
    translate(resources, &options)
}

/// One sidecar's own part of its bootstrap, to lay over its namespace's [`outbound`] part
/// (`shared`, whose settings it keeps): its outbound address and the users' plugins that
/// select it for CLIENT traffic, its inbound listeners (with the AuthorizationPolicies that
/// select it, enforced by the authorization plugin of `options.plugins`) and their clusters,
/// and its telemetry (the workload it serves as `options` name it, its tracing).
pub fn own_part(
    node: &Node,
    shared: &Bootstrap,
    resources: &[Resource],
    user_plugins: &[UserPlugin],
    options: &Options,
) -> Bootstrap {
    let all: Vec<&Resource> = resources.iter().collect();
    // Policies with errors are left out (reported by the translation).
    let valid = |r: &&Resource| !crate::translate::check(r).iter().any(|d| d.is_error());
    let peer_auths: Vec<&Resource> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::PeerAuthentication(_)))
        .filter(valid)
        .collect();
    let service_entries: Vec<&Resource> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::ServiceEntry(_)))
        .filter(valid)
        .collect();
    let workload = Workload {
        namespace: &node.namespace,
        labels: &node.labels,
    };
    let selected: Vec<&UserPlugin> = user_plugins
        .iter()
        .filter(|p| plugins::selects(&p.resource, p.spec(), &workload, &all))
        .collect();
    let filters_for = |direction| {
        selected
            .iter()
            .filter(|p| plugins::matches_direction(p.spec(), direction))
            .map(|p| plugins::filter(&p.resource, p.spec(), p.url.clone(), p.sha256.clone()))
            .collect::<Vec<_>>()
    };
    let mut own = Bootstrap {
        workers: shared.workers,
        admin: shared.admin.clone(),
        listeners: Vec::new(),
        clusters: Vec::new(),
        access_log: shared.access_log.clone(),
        drain_timeout: shared.drain_timeout,
        wasm: shared.wasm.clone(),
        telemetry: Telemetry {
            workload: Some(telemetry::workload(node, options)),
            tracing: MeshTracing::new(resources).tracing(&node.namespace, &node.labels),
        },
        base_dir: shared.base_dir.clone(),
    };
    let transparent = !node.pod_ip.is_empty();
    if let Some(outbound) = shared.listeners.first() {
        own.listeners.push(Listener {
            sni_routes: Vec::new(),
            name: outbound.name.clone(),
            address: node.outbound_address.clone(),
            max_connections: outbound.max_connections,
            http: outbound.http.clone(),
            tls: None,
            http_filters: filters_for(Direction::Client),
            virtual_hosts: Vec::new(),
            original_dst: None,
            handles: if transparent {
                mesh_destinations(shared, resources, &node.pod_ip)
            } else {
                Vec::new()
            },
            tcp_proxy: None,
            traffic_direction: Some(TrafficDirection::Outbound),
        });
    }
    let authz_policies = authz::policies_for(resources, &node.namespace, &node.labels);
    for p in &node.inbound {
        let cluster = format!("inbound|{}||", p.port);
        let mut http_filters = filters_for(Direction::Server { port: p.port });
        http_filters.extend(
            options
                .plugins
                .as_ref()
                .and_then(|m| authz::filter(&m.authz, p.port, &authz_policies)),
        );
        own.listeners.push(Listener {
            sni_routes: Vec::new(),
            name: format!("inbound|{}", p.port),
            address: p.listen_address.clone(),
            max_connections: 100_000,
            // Policies judge paths as the workload will read them (Istio's BASE).
            http: HttpOptions {
                normalize_path: true,
                ..HttpOptions::default()
            },
            tls: downstream_tls(peer_auth::inbound_mode(
                &peer_auths,
                &node.namespace,
                &node.labels,
                p.port,
            )),
            http_filters,
            original_dst: None,
            handles: if transparent {
                vec![format!("0.0.0.0:{}", p.port)]
            } else {
                Vec::new()
            },
            tcp_proxy: None,
            traffic_direction: Some(TrafficDirection::Inbound),
            virtual_hosts: vec![VirtualHost {
                require_tls: false,
                name: format!("inbound|http|{}", p.port),
                domains: vec!["*".into()],
                routes: vec![Route {
                    direct_response: None,
                    name: Some("default".into()),
                    matcher: RouteMatch {
                        prefix: Some("/".into()),
                        path: None,
                    },
                    cluster: cluster.clone(),
                    // Istio's inbound routes have no timeout: the caller's sidecar keeps it.
                    timeout: Dur::default(),
                    retry_policy: None,
                }],
            }],
        });
        own.clusters.push(Cluster {
            resolution: Default::default(),
            name: cluster,
            endpoints: vec![p.app_address.clone()],
            lb_policy: Default::default(),
            protocol: UpstreamProtocol::Downstream,
            connect_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(3600),
            max_requests_per_connection: 0,
            circuit_breakers: Default::default(),
            retry_budget: None,
            tls: None,
            service: telemetry::inbound_service(
                &service_entries,
                &node.namespace,
                &node.labels,
                p.port,
            ),
        });
    }
    if transparent {
        // Istio's virtual listeners are OUTBOUND and INBOUND: their own chains carry only
        // what they pass through; a connection they hand over is the other listener's.
        let virtual_listener =
            |name: &str,
             address: &str,
             to: Vec<String>,
             source: Option<&str>,
             direction: TrafficDirection| Listener {
                sni_routes: Vec::new(),
                name: name.into(),
                address: address.into(),
                max_connections: 100_000,
                http: HttpOptions::default(),
                // Inbound, the passed-through ports take the workload's mode (below).
                tls: None,
                http_filters: Vec::new(),
                virtual_hosts: Vec::new(),
                original_dst: Some(OriginalDst {
                    listeners: to,
                    passthrough_source: source.and_then(|s| s.parse().ok()),
                    passthrough: true,
                }),
                handles: Vec::new(),
                tcp_proxy: None,
                traffic_direction: Some(direction),
            };
        // TCP services reached at their addresses: a TCP proxy each, to its cluster.
        let tcp = tcp_services(shared, resources);
        for (address, cluster) in &tcp {
            own.listeners.push(Listener {
                sni_routes: Vec::new(),
                name: format!("outbound|tcp|{address}"),
                // Only the hand-off reaches it (Envoy's `bind_to_port: false`); the port it
                // binds on loopback is unused.
                address: "127.0.0.1:0".into(),
                max_connections: 100_000,
                http: HttpOptions::default(),
                tls: None,
                http_filters: Vec::new(),
                virtual_hosts: Vec::new(),
                original_dst: None,
                handles: vec![address.clone()],
                tcp_proxy: Some(TcpProxy {
                    cluster: cluster.clone(),
                }),
                traffic_direction: Some(TrafficDirection::Outbound),
            });
        }
        let outbound = shared
            .listeners
            .first()
            .map(|l| l.name.clone())
            .into_iter()
            .chain(
                tcp.iter()
                    .map(|(address, _)| format!("outbound|tcp|{address}")),
            );
        let inbound = node
            .inbound
            .iter()
            .map(|p| format!("inbound|{}", p.port))
            .collect();
        let mut virtual_outbound = virtual_listener(
            "virtualOutbound",
            VIRTUAL_OUTBOUND,
            outbound.collect(),
            None,
            TrafficDirection::Outbound,
        );
        // REGISTRY_ONLY: a connection to a destination the mesh does not know is closed
        // (Istio's BlackHoleCluster), not passed through.
        if let Some(od) = virtual_outbound.original_dst.as_mut() {
            od.passthrough = outbound_mode(resources) == OutboundMode::AllowAny;
        }
        own.listeners.push(virtual_outbound);
        // Passed-through inbound connections leave from 127.0.0.6, which the iptables rules
        // let reach the workload (from the proxy's own address they would be captured again).
        let mut virtual_inbound = virtual_listener(
            "virtualInbound",
            VIRTUAL_INBOUND,
            inbound,
            Some("127.0.0.6"),
            TrafficDirection::Inbound,
        );
        virtual_inbound.tls = downstream_tls(peer_auth::passthrough_mode(
            &peer_auths,
            &node.namespace,
            &node.labels,
        ));
        own.listeners.push(virtual_inbound);
    }
    own
}

/// The mesh config's outbound traffic policy (its first valid mesh config's; none:
/// `ALLOW_ANY`).
fn outbound_mode(resources: &[Resource]) -> OutboundMode {
    let valid: Vec<&Resource> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::MeshConfig(_)))
        .filter(|r| !crate::translate::check(r).iter().any(|d| d.is_error()))
        .collect();
    crate::translate::outbound_mode(&valid)
}

/// What a PeerAuthentication mode asks of an inbound listener (UNSET is PERMISSIVE).
fn downstream_tls(mode: MtlsMode) -> Option<DownstreamTls> {
    match mode {
        MtlsMode::Strict => Some(DownstreamTls {
            ca_certificates: None,
            certificates: Vec::new(),
            subject_alt_names: Vec::new(),
            mode: DownstreamTlsMode::Strict,
        }),
        MtlsMode::Disable => None,
        MtlsMode::Permissive | MtlsMode::Unset => Some(DownstreamTls {
            ca_certificates: None,
            certificates: Vec::new(),
            subject_alt_names: Vec::new(),
            mode: DownstreamTlsMode::Permissive,
        }),
    }
}

/// The TCP services of the mesh a transparent sidecar proxies: each ServiceEntry address
/// (`ip:port`) of a TCP port, with the cluster of its (first) host's port, where that cluster
/// exists.
fn tcp_services(shared: &Bootstrap, resources: &[Resource]) -> Vec<(String, String)> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for r in resources {
        let Spec::ServiceEntry(se) = &r.spec else {
            continue;
        };
        for p in se
            .ports
            .iter()
            .filter(|p| port_protocol(p) == Some(PortProtocol::Tcp))
        {
            let cluster = se.hosts.iter().find_map(|h| {
                let name = cluster_name(p.number, None, &h.trim().to_ascii_lowercase());
                shared
                    .clusters
                    .iter()
                    .any(|c| c.name == name && c.protocol == UpstreamProtocol::Tcp)
                    .then_some(name)
            });
            let Some(cluster) = cluster else { continue };
            for a in se
                .addresses
                .iter()
                .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
            {
                let address = std::net::SocketAddr::new(a, p.number as u16).to_string();
                out.entry(address).or_insert_with(|| cluster.clone());
            }
        }
    }
    out.into_iter().collect()
}

/// The addresses the mesh's services are reached at, which a transparent sidecar's outbound
/// listener handles: every endpoint of an outbound cluster and each ServiceEntry address with
/// each of its ports (not the pod's own IP: connections to it arrive inbound); the HTTP ports,
/// on any address, of DNS and NONE entries without addresses.
fn mesh_destinations(shared: &Bootstrap, resources: &[Resource], pod_ip: &str) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for c in shared
        .clusters
        .iter()
        .filter(|c| c.name.starts_with("outbound|") && c.protocol != UpstreamProtocol::Tcp)
    {
        for e in &c.endpoints {
            if let Ok(addr) = e.parse::<std::net::SocketAddr>()
                && addr.ip().to_string() != pod_ip
            {
                out.insert(addr.to_string());
            }
        }
    }
    for r in resources {
        let Spec::ServiceEntry(se) = &r.spec else {
            continue;
        };
        // Without addresses, a DNS or NONE entry's HTTP ports are known by port only (its
        // endpoints are names, or none): Istio's `0.0.0.0_<port>` listener, routed by host.
        let by_port = se.addresses.is_empty() && se.resolution != Some(istio::Resolution::Static);
        if by_port {
            for p in se
                .ports
                .iter()
                .filter(|p| port_protocol(p).is_some_and(PortProtocol::is_http))
            {
                out.insert(format!("0.0.0.0:{}", p.number));
            }
        }
        for a in se
            .addresses
            .iter()
            .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        {
            for p in se
                .ports
                .iter()
                .filter(|p| port_protocol(p) != Some(PortProtocol::Tcp))
            {
                out.insert(std::net::SocketAddr::new(a, p.number as u16).to_string());
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse_str;

    fn node(name: &str, app: &str, inbound: Option<(u32, &str, &str)>) -> Node {
        Node {
            gateway_ports: Vec::new(),
            name: name.into(),
            namespace: "default".into(),
            labels: [("app".to_owned(), app.to_owned())].into(),
            service_account: "bookinfo".into(),
            outbound_address: "127.0.0.1:25000".into(),
            pod_ip: String::new(),
            metrics_address: String::new(),
            inbound: inbound
                .map(|(port, listen, app)| InboundPort {
                    port,
                    listen_address: listen.into(),
                    app_address: app.into(),
                })
                .into_iter()
                .collect(),
        }
    }

    const MANIFESTS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: by-selector}
spec:
  selector: {matchLabels: {app: reviews}}
  url: /m/a.wasm
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: everyone-client, namespace: istio-system}
spec:
  url: /m/b.wasm
  match: [{mode: CLIENT}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: elsewhere, namespace: prod}
spec:
  url: /m/c.wasm
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: by-service}
spec:
  targetRefs: [{kind: Service, name: reviews}]
  url: /m/d.wasm
  phase: AUTHN
  priority: 5
  match: [{mode: SERVER, ports: [{number: 9080}]}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: other-port}
spec:
  url: /m/e.wasm
  match: [{ports: [{number: 8080}]}]
";

    #[test]
    fn sidecars_get_inbound_listeners_registrations_and_the_plugins_that_select_them() {
        let reviews = node(
            "reviews-v1",
            "reviews",
            Some((9080, "127.0.0.1:25001", "127.0.0.1:19080")),
        );
        let productpage = node("productpage-v1", "productpage", None);
        let mut resources = parse_str(MANIFESTS, None).resources;
        resources.extend(reviews.workload_entry());
        let plugins: Vec<UserPlugin> = resources
            .iter()
            .filter(|r| matches!(r.spec, Spec::WasmPlugin(_)))
            .map(|r| UserPlugin {
                resource: r.clone(),
                url: match &r.spec {
                    Spec::WasmPlugin(wp) => wp.url.clone(),
                    _ => unreachable!(),
                },
                sha256: None,
            })
            .collect();
        let names = |l: &Listener| {
            l.http_filters
                .iter()
                .map(|f| f.name.clone())
                .collect::<Vec<_>>()
        };

        // The caller reaches reviews at its sidecar's inbound listener.
        let t = translate_for(&productpage, &resources, &plugins, &Options::default());
        assert!(t.errors().next().is_none(), "{:?}", t.diagnostics);
        let cluster = t
            .bootstrap
            .clusters
            .iter()
            .find(|c| c.name == "outbound|9080||reviews.default.svc.cluster.local")
            .expect("the reviews cluster");
        assert_eq!(cluster.endpoints, ["127.0.0.1:25001"]);
        assert_eq!(t.bootstrap.listeners.len(), 1);
        assert_eq!(t.bootstrap.listeners[0].address, "127.0.0.1:25000");
        assert_eq!(
            names(&t.bootstrap.listeners[0]),
            ["istio-system.everyone-client"]
        );

        // reviews' own sidecar: an inbound listener to the workload, with its server plugins.
        let t = translate_for(&reviews, &resources, &plugins, &Options::default());
        let inbound = &t.bootstrap.listeners[1];
        assert_eq!(
            (inbound.name.as_str(), inbound.address.as_str()),
            ("inbound|9080", "127.0.0.1:25001")
        );
        assert_eq!(
            names(inbound),
            ["default.by-selector", "default.by-service"]
        );
        let by_service = &inbound.http_filters[1];
        assert_eq!(
            (by_service.phase, by_service.priority),
            (wasmesh_config::filters::Phase::Authn, 5)
        );
        let app = t
            .bootstrap
            .clusters
            .iter()
            .find(|c| c.name == "inbound|9080||")
            .expect("the inbound cluster");
        assert_eq!(app.endpoints, ["127.0.0.1:19080"]);
        assert_eq!(
            names(&t.bootstrap.listeners[0]),
            ["istio-system.everyone-client"]
        );
    }

    #[test]
    fn nodes_are_checked() {
        let mut n = node("a", "x", Some((9080, "127.0.0.1:1", "127.0.0.1:2")));
        assert_eq!(n.check(), Ok(()));
        n.inbound.push(n.inbound[0].clone());
        assert_eq!(n.check(), Err(NodeError::DuplicatePort(9080)));
        n.inbound[1].app_address = "nowhere".into();
        n.inbound[1].port = 1;
        assert!(matches!(n.check(), Err(NodeError::Address { .. })));
        n.name.clear();
        assert_eq!(n.check(), Err(NodeError::Missing("name")));
    }
}
