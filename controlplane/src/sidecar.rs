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

use std::collections::BTreeMap;

use wasmesh_config::{
    Cluster, Dur, HttpOptions, Listener, Route, RouteMatch, UpstreamProtocol, VirtualHost,
};

use crate::istio::{self, WasmPlugin};
use crate::manifests::{Resource, Spec};
use crate::plugins::{self, Direction, Workload};
use crate::translate::{Options, Translation, translate};

/// A sidecar's identity and the listeners it has bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// The outbound listener's address (`ip:port`, bound).
    pub outbound_address: String,
    pub inbound: Vec<InboundPort>,
}

/// One workload port behind its sidecar.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
}

impl Node {
    /// `name.namespace`, as istioctl names proxies.
    pub fn id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
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
        address("outbound_address".into(), &self.outbound_address)?;
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
    /// sidecar's address, each workload port mapped to the sidecar's inbound listener.
    pub fn workload_entry(&self) -> Option<Resource> {
        let first: std::net::SocketAddr = self.inbound.first()?.listen_address.parse().ok()?;
        let sidecar_ports = self
            .inbound
            .iter()
            .filter_map(|p| {
                let listen: std::net::SocketAddr = p.listen_address.parse().ok()?;
                Some((p.port, u32::from(listen.port())))
            })
            .collect();
        let entry = istio::WorkloadEntry {
            address: Some(first.ip().to_string()),
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
    fn spec(&self) -> &WasmPlugin {
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
    let options = Options {
        client_namespace: node.namespace.clone(),
        listener_name: "outbound".into(),
        listener_address: node.outbound_address.clone(),
        admin_address: None,
        ..base.clone()
    };
    let mut t = translate(resources, &options);
    let all: Vec<&Resource> = resources.iter().collect();
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
    if let Some(outbound) = t.bootstrap.listeners.first_mut() {
        outbound.http_filters.extend(filters_for(Direction::Client));
    }
    for p in &node.inbound {
        let cluster = format!("inbound|{}||", p.port);
        t.bootstrap.listeners.push(Listener {
            name: format!("inbound|{}", p.port),
            address: p.listen_address.clone(),
            max_connections: 100_000,
            http: HttpOptions::default(),
            http_filters: filters_for(Direction::Server { port: p.port }),
            virtual_hosts: vec![VirtualHost {
                name: format!("inbound|http|{}", p.port),
                domains: vec!["*".into()],
                routes: vec![Route {
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
        t.bootstrap.clusters.push(Cluster {
            name: cluster,
            endpoints: vec![p.app_address.clone()],
            lb_policy: Default::default(),
            protocol: UpstreamProtocol::Downstream,
            connect_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(3600),
            max_requests_per_connection: 0,
            circuit_breakers: Default::default(),
            retry_budget: None,
        });
    }
    t
}
