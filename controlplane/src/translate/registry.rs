//! The service registry: services (host and port) from ServiceEntries, their endpoints from
//! inline `endpoints` or selected WorkloadEntries, and the DestinationRule of each host.

use std::collections::BTreeMap;

use super::{Options, qualify};
use crate::diag::{Diagnostic, code};
use wasmesh_config::Resolution as ClusterResolution;

use crate::istio::{self, Resolution};
use crate::manifests::{Resource, Spec};

/// The protocol a service port speaks, as far as the proxy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PortProtocol {
    Http1,
    /// HTTP2, GRPC, GRPC-WEB.
    Http2,
    /// Opaque to the proxy: TCP, TLS, HTTPS (passed through), MONGO, REDIS, MYSQL. Reached
    /// at the service's addresses by a transparent sidecar, proxied as TCP.
    Tcp,
}

impl PortProtocol {
    pub fn is_http(self) -> bool {
        self != PortProtocol::Tcp
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// `ip:port`, `[v6]:port` or `name:port`.
    pub address: String,
    pub labels: BTreeMap<String, String>,
    /// The SPIFFE id of the sidecar in front of it: auto mTLS reaches it with ISTIO_MUTUAL.
    pub sidecar_identity: Option<String>,
}

/// One port of one host of a ServiceEntry.
#[derive(Clone, Debug)]
pub(crate) struct Service<'a> {
    pub host: String,
    pub port: u32,
    pub protocol: PortProtocol,
    /// The first HTTP port of its host: it also answers to names without a port.
    pub first_port: bool,
    pub endpoints: Vec<Endpoint>,
    /// How its clusters find their endpoints: the ServiceEntry's `resolution` (unset is
    /// Istio's NONE).
    pub resolution: ClusterResolution,
    pub entry: &'a Resource,
}

pub(crate) struct Registry<'a> {
    /// By host, then port.
    pub services: Vec<Service<'a>>,
    /// DestinationRules, by namespace and name.
    pub rules: Vec<(&'a Resource, &'a istio::DestinationRule, String)>,
}

impl<'a> Registry<'a> {
    pub fn build(
        valid: &[&'a Resource],
        options: &Options,
        diags: &mut Vec<Diagnostic>,
    ) -> Registry<'a> {
        let workloads: Vec<(&Resource, &istio::WorkloadEntry)> = valid
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::WorkloadEntry(w) => Some((*r, w)),
                _ => None,
            })
            .collect();
        let mut services: Vec<Service<'a>> = Vec::new();
        for r in valid {
            let Spec::ServiceEntry(se) = &r.spec else {
                continue;
            };
            for host in &se.hosts {
                let host = host.trim().to_ascii_lowercase();
                let mut first = true;
                for port in &se.ports {
                    let Some(protocol) = protocol(port) else {
                        continue;
                    };
                    if let Some(other) = services
                        .iter()
                        .find(|s| s.host == host && s.port == port.number)
                    {
                        diags.push(r.diag(Diagnostic::warning(
                            code::SHADOWED,
                            format!(
                                "Host {host} port {} is already defined by ServiceEntry {}.{}: ignored here",
                                port.number,
                                other.entry.name(),
                                other.entry.namespace()
                            ),
                        )));
                        continue;
                    }
                    let resolution = cluster_resolution(se.resolution);
                    // NONE: requests go where they were going; endpoints are not used.
                    let endpoints = if resolution == ClusterResolution::OriginalDst {
                        Vec::new()
                    } else {
                        endpoints(r, se, &host, port, &workloads, &options.trust_domain)
                    };
                    services.push(Service {
                        host: host.clone(),
                        port: port.number,
                        protocol,
                        first_port: first && protocol.is_http(),
                        endpoints,
                        resolution,
                        entry: r,
                    });
                    first &= !protocol.is_http();
                }
            }
        }
        services.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));

        let rules = valid
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::DestinationRule(dr) => {
                    Some((*r, dr, qualify(&dr.host, r.namespace(), options)))
                }
                _ => None,
            })
            .collect();
        let registry = Registry { services, rules };
        registry.check_rules(diags);
        registry
    }

    /// The ports of a host.
    pub fn by_host(&self, host: &str) -> impl Iterator<Item = &Service<'a>> {
        self.services.iter().filter(move |s| s.host == host)
    }

    /// The DestinationRule for a host: one for exactly that host, else the most specific
    /// wildcard; among equals, the first by namespace and name.
    pub fn rule_for(&self, host: &str) -> Option<(&'a Resource, &'a istio::DestinationRule)> {
        let mut best: Option<(usize, &'a Resource, &'a istio::DestinationRule)> = None;
        for (r, dr, pattern) in &self.rules {
            if let Some(rank) = host_match(pattern, host)
                && best.is_none_or(|(b, _, _)| rank > b)
            {
                best = Some((rank, *r, *dr));
            }
        }
        best.map(|(_, r, dr)| (r, dr))
    }

    /// Reports DestinationRules for hosts with no service, and ones shadowed by another.
    fn check_rules(&self, diags: &mut Vec<Diagnostic>) {
        for (r, dr, host) in &self.rules {
            let used: Vec<_> = self
                .services
                .iter()
                .filter(|s| host_match(host, &s.host).is_some())
                .collect();
            if used.is_empty() {
                diags.push(
                    r.diag(
                        Diagnostic::warning(
                            code::REFERENCED_RESOURCE_NOT_FOUND,
                            format!("Referenced host not found: {:?}", dr.host),
                        )
                        .at("spec.host"),
                    ),
                );
                continue;
            }
            let shadowed_by = used
                .iter()
                .filter_map(|s| self.rule_for(&s.host))
                .map(|(w, _)| w)
                .find(|w| !std::ptr::eq(*w, *r))
                .filter(|w| {
                    self.rules
                        .iter()
                        .any(|(x, _, h)| std::ptr::eq(*x, *w) && h == host)
                });
            if let Some(w) = shadowed_by {
                diags.push(r.diag(Diagnostic::warning(
                    code::SHADOWED,
                    format!(
                        "DestinationRule {}.{} for the same host {host} came first: this one is ignored",
                        w.name(),
                        w.namespace()
                    ),
                )));
            }
        }
    }
}

/// How well a (possibly wildcard) rule host matches a service host: None for no match; an
/// exact match beats any wildcard, and a longer wildcard beats a shorter one.
pub(crate) fn host_match(pattern: &str, host: &str) -> Option<usize> {
    if pattern == host {
        return Some(usize::MAX);
    }
    if pattern == "*" {
        return Some(0);
    }
    let suffix = pattern.strip_prefix('*')?;
    (host.len() > suffix.len() && host.ends_with(suffix)).then_some(suffix.len())
}

/// Istio's cluster types for a ServiceEntry's resolution on a sidecar: STATIC's addresses
/// as they are; DNS, DNS_ROUND_ROBIN (Envoy's LOGICAL_DNS, read as DNS: every address of a
/// name is an endpoint) and DYNAMIC_DNS (read as DNS) by names the proxy resolves; NONE
/// (Istio's default) to the original destination.
fn cluster_resolution(resolution: Option<Resolution>) -> ClusterResolution {
    match resolution {
        Some(Resolution::Static) => ClusterResolution::Static,
        Some(Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns) => {
            ClusterResolution::Dns
        }
        Some(Resolution::None) | None => ClusterResolution::OriginalDst,
    }
}

/// The protocol of a port; None (the port is skipped) for UDP and, with no name that says,
/// a protocol Istio would sniff.
fn protocol(port: &istio::ServicePort) -> Option<PortProtocol> {
    // Unset: Istio's port naming convention, `<protocol>[-<suffix>]`.
    let (declared, named) = match &port.protocol {
        Some(p) => (p.to_ascii_uppercase(), false),
        None => (
            port.name
                .split('-')
                .next()
                .unwrap_or("")
                .to_ascii_uppercase(),
            true,
        ),
    };
    match declared.as_str() {
        "HTTP2" | "GRPC" | "GRPC-WEB" => Some(PortProtocol::Http2),
        "HTTP" => Some(PortProtocol::Http1),
        "HTTPS" | "TCP" | "TLS" | "MONGO" | "REDIS" | "MYSQL" => Some(PortProtocol::Tcp),
        "UDP" => None,
        // Neither declared nor named: Istio sniffs the protocol; HTTP is what wasmesh serves.
        _ if named => Some(PortProtocol::Http1),
        _ => None,
    }
}

/// What a port speaks, if it is served.
pub(crate) fn port_protocol(port: &istio::ServicePort) -> Option<PortProtocol> {
    protocol(port)
}

/// Whether a port is served (the validation pass reports the ones that are not).
pub(crate) fn is_served(port: &istio::ServicePort) -> bool {
    protocol(port).is_some()
}

fn endpoints(
    r: &Resource,
    se: &istio::ServiceEntry,
    host: &str,
    port: &istio::ServicePort,
    workloads: &[(&Resource, &istio::WorkloadEntry)],
    trust_domain: &str,
) -> Vec<Endpoint> {
    let target = |w: &istio::WorkloadEntry| {
        let app = w
            .ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number);
        w.sidecar_ports
            .get(&app)
            .or(w.gateway_ports.get(&app))
            .copied()
            .unwrap_or(app)
    };
    let entry = |w: &istio::WorkloadEntry| {
        w.address
            .as_deref()
            .filter(|a| !a.starts_with("unix://"))
            .map(|a| Endpoint {
                address: host_port(a, target(w)),
                labels: w.labels.clone(),
                // Registered by its sidecar (which reports the ports it listens on).
                sidecar_identity: (!w.sidecar_ports.is_empty()).then(|| {
                    wasmesh_api::spiffe_id(
                        trust_domain,
                        r.namespace(),
                        w.service_account.as_deref().unwrap_or_default(),
                    )
                }),
            })
    };
    if let Some(selector) = &se.workload_selector {
        return workloads
            .iter()
            .filter(|(wr, w)| {
                wr.namespace() == r.namespace() && labels_match(&selector.labels, &w.labels)
            })
            .filter_map(|(_, w)| entry(w))
            .collect();
    }
    if !se.endpoints.is_empty() {
        return se.endpoints.iter().filter_map(entry).collect();
    }
    match se.resolution {
        // DNS with no endpoints: the host itself is the endpoint.
        Some(Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns)
            if !host.contains('*') =>
        {
            vec![Endpoint {
                address: host_port(host, port.target_port.unwrap_or(port.number)),
                labels: BTreeMap::new(),
                sidecar_identity: None,
            }]
        }
        _ => Vec::new(),
    }
}

/// `10.0.0.1:80`, `[::1]:80`, `name:80`.
fn host_port(address: &str, port: u32) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// Whether `labels` include every one of `selector`.
pub(crate) fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
