//! A gateway's configuration: Istio's ingress and egress gateways, run by the same proxy.
//!
//! A gateway is a node with gateway ports (`wasmesh-proxy --gateway-port 443=...`). Each
//! port gets one listener serving every server of the Gateways that select the node's
//! labels with that port number:
//!
//! - **HTTP, HTTP2, GRPC** servers: the VirtualServices that name the Gateway (`gateways:`)
//!   and whose hosts intersect the server's, through the traffic plugins, as on a sidecar's
//!   outbound listener. `tls.httpsRedirect` answers plain requests with a 301 to https.
//! - **HTTPS** and **TLS** servers that terminate (`SIMPLE`, `MUTUAL`): the server's
//!   certificate, picked by SNI among the port's servers, from `credentialName` (a Secret in
//!   the gateway's namespace: `tls.crt`, `tls.key`, `ca.crt`, or Istio's `cert`, `key`,
//!   `cacert`; the CA also from a `<name>-cacert` Secret) or from files on the gateway
//!   (`serverCertificate`, `privateKey`, `caCertificates`). `ISTIO_MUTUAL`: the gateway's
//!   workload certificate, clients' from the mesh.
//! - **TLS** servers with `PASSTHROUGH`: the VirtualServices' `tls` routes, by SNI, to TCP
//!   clusters; the TLS is not terminated.
//!
//! The gateway reaches the mesh's services through the same clusters as its namespace's
//! sidecars (mTLS to sidecars included), and runs the WasmPlugins that select its labels.

use std::collections::BTreeMap;

use wasmesh_config::{
    Bootstrap, DataSource, DownstreamTls, DownstreamTlsMode, HttpOptions, Listener,
    ServerCertificate, Telemetry, TrafficDirection, VirtualHost,
};

use crate::diag::{Diagnostic, code};
use crate::istio::{self, ServerTlsSettings};
use crate::manifests::{Resource, Spec};
use crate::plugins::{self, Direction, Workload};
use crate::sidecar::{Node, UserPlugin};
use crate::telemetry::{self, MeshTracing};
use crate::translate::{GatewayServer, Options, gateway_routing};

/// The gateway's own part of its bootstrap, laid over its namespace's shared part (whose
/// clusters it uses; the shared part's listeners are not a gateway's), and what was wrong.
pub fn own_part(
    node: &Node,
    shared: &Bootstrap,
    resources: &[Resource],
    user_plugins: &[UserPlugin],
    options: &Options,
) -> (Bootstrap, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let valid = |r: &&Resource| !crate::translate::check(r).iter().any(|d| d.is_error());
    let gateways: Vec<(&Resource, &istio::Gateway)> = resources
        .iter()
        .filter(valid)
        .filter_map(|r| match &r.spec {
            Spec::Gateway(g) if selects(g, &node.labels) => Some((r, g)),
            _ => None,
        })
        .collect();
    let all: Vec<&Resource> = resources.iter().collect();
    let workload = Workload {
        namespace: &node.namespace,
        labels: &node.labels,
    };
    // Istio applies a WasmPlugin to a gateway unless it asks for SERVER traffic only.
    let user_filters: Vec<_> = user_plugins
        .iter()
        .filter(|p| plugins::selects(&p.resource, p.spec(), &workload, &all))
        .filter(|p| {
            p.spec().match_.is_empty() || plugins::matches_direction(p.spec(), Direction::Client)
        })
        .map(|p| plugins::filter(&p.resource, p.spec(), p.url.clone(), p.sha256.clone()))
        .collect();

    let mut listeners = Vec::new();
    for port in &node.gateway_ports {
        // Each server with its index in its Gateway, for diagnostics' fields.
        let servers: Vec<(&Resource, usize, &istio::Server)> = gateways
            .iter()
            .flat_map(|(r, g)| g.servers.iter().enumerate().map(move |(i, s)| (*r, i, s)))
            .filter(|(_, _, s)| s.port.number == port.port)
            .collect();
        let mut listener = Listener {
            name: format!("gateway|{}", port.port),
            address: port.listen_address.clone(),
            max_connections: 100_000,
            http: HttpOptions::default(),
            tls: None,
            http_filters: Vec::new(),
            // Requests the router does not route get its 404; redirected hosts first.
            virtual_hosts: Vec::new(),
            original_dst: None,
            handles: Vec::new(),
            tcp_proxy: None,
            traffic_direction: Some(TrafficDirection::Outbound),
            sni_routes: Vec::new(),
        };
        let mut routed = Vec::new();
        let mut terminate: Option<DownstreamTls> = None;
        for &(r, i, s) in &servers {
            let at = format!("spec.servers[{i}]");
            let protocol = s.port.protocol.to_ascii_uppercase();
            let mode = s
                .tls
                .as_ref()
                .and_then(|t| t.mode.as_deref())
                .map(str::to_ascii_uppercase);
            let gateway = format!("{}/{}", r.namespace(), r.name());
            if protocol == "TCP" || protocol == "MONGO" {
                routed.push(GatewayServer {
                    gateway,
                    hosts: s.hosts.clone(),
                    passthrough: false,
                    tcp: true,
                });
                continue;
            }
            if mode.as_deref() == Some("PASSTHROUGH") {
                routed.push(GatewayServer {
                    gateway,
                    hosts: s.hosts.clone(),
                    passthrough: true,
                    tcp: false,
                });
                continue;
            }
            if let Some(m) = mode.as_deref() {
                let Some(tls) = &s.tls else { continue };
                match server_tls(node, resources, r, &at, m, tls, s) {
                    Ok(t) => match &mut terminate {
                        None => terminate = Some(t),
                        Some(have) if have.mode == t.mode => {
                            have.certificates.extend(t.certificates);
                            if have.ca_certificates.is_none() {
                                have.ca_certificates = t.ca_certificates;
                            }
                            have.subject_alt_names.extend(t.subject_alt_names);
                        }
                        Some(have) => {
                            diags.push(r.diag(
                                Diagnostic::error(
                                    code::UNSUPPORTED_FIELD,
                                    format!(
                                        "servers on port {} terminate TLS as {:?} and as {:?}: one mode per port; this server is skipped",
                                        port.port, have.mode, t.mode
                                    ),
                                )
                                .at(format!("{at}.tls.mode")),
                            ));
                            continue;
                        }
                    },
                    Err(d) => {
                        diags.push(*d);
                        continue;
                    }
                }
            } else if s.tls.as_ref().is_some_and(|t| t.https_redirect) {
                listener.virtual_hosts.push(VirtualHost {
                    name: format!("{}.{}/servers[{i}]:redirect", r.name(), r.namespace()),
                    domains: s
                        .hosts
                        .iter()
                        .map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h))
                        .map(str::to_ascii_lowercase)
                        .collect(),
                    routes: Vec::new(),
                    require_tls: true,
                });
            }
            routed.push(GatewayServer {
                gateway,
                hosts: s.hosts.clone(),
                passthrough: false,
                tcp: false,
            });
        }
        listener.virtual_hosts.push(VirtualHost {
            name: "gateway".into(),
            domains: vec!["*".into()],
            routes: Vec::new(),
            require_tls: false,
        });
        let routing = gateway_routing(resources, options, port.port, &routed);
        diags.extend(routing.diagnostics);
        listener.http_filters = routing.http_filters;
        listener.http_filters.extend(user_filters.iter().cloned());
        listener.sni_routes = routing.sni_routes;
        listener.tls = terminate;
        // A TCP server's port is opaque TCP to its route's cluster: no HTTP on it.
        if let Some(cluster) = routing.tcp_cluster {
            let mixed = servers.iter().any(|(_, _, s)| {
                !matches!(
                    s.port.protocol.to_ascii_uppercase().as_str(),
                    "TCP" | "MONGO"
                )
            });
            if mixed {
                for (r, i, _) in &servers {
                    diags.push(r.diag(
                        Diagnostic::error(
                            code::UNSUPPORTED_FIELD,
                            format!(
                                "port {} has TCP and other servers: the TCP route is not served",
                                port.port
                            ),
                        )
                        .at(format!("spec.servers[{i}].port")),
                    ));
                }
            } else {
                listener.tcp_proxy = Some(wasmesh_config::TcpProxy { cluster });
                listener.http_filters.clear();
                listener.virtual_hosts.clear();
                listener.sni_routes.clear();
            }
        }
        listeners.push(listener);
    }

    let own = Bootstrap {
        workers: shared.workers,
        admin: shared.admin.clone(),
        listeners,
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
    (own, diags)
}

/// Whether a Gateway selects a gateway with `labels` (no selector: every gateway).
fn selects(g: &istio::Gateway, labels: &BTreeMap<String, String>) -> bool {
    g.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A terminating server's TLS: its certificate for its hosts, and for MUTUAL the CA.
fn server_tls(
    node: &Node,
    resources: &[Resource],
    r: &Resource,
    at: &str,
    mode: &str,
    tls: &ServerTlsSettings,
    s: &istio::Server,
) -> Result<DownstreamTls, Box<Diagnostic>> {
    let mode = match mode {
        "SIMPLE" => DownstreamTlsMode::Simple,
        "MUTUAL" => DownstreamTlsMode::Mutual,
        "ISTIO_MUTUAL" => {
            return Ok(DownstreamTls {
                mode: DownstreamTlsMode::Strict,
                certificates: Vec::new(),
                ca_certificates: None,
                subject_alt_names: Vec::new(),
            });
        }
        other => {
            return Err(Box::new(
                r.diag(
                    Diagnostic::error(code::UNSUPPORTED_FIELD, format!("{other}: not served"))
                        .at(format!("{at}.tls.mode")),
                ),
            ));
        }
    };
    let server_names: Vec<String> = s
        .hosts
        .iter()
        .map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h))
        .filter(|h| *h != "*")
        .map(str::to_ascii_lowercase)
        .collect();
    let (chain, key, ca) = match &tls.credential_name {
        Some(name) => {
            let secret = |name: &str| {
                resources.iter().find_map(|x| match &x.spec {
                    Spec::Secret(s) if x.name() == name && x.namespace() == node.namespace => {
                        Some(s)
                    }
                    _ => None,
                })
            };
            let Some(found) = secret(name) else {
                return Err(Box::new(r.diag(
                    Diagnostic::error(
                        code::REFERENCED_RESOURCE_NOT_FOUND,
                        format!(
                            "credentialName {name:?}: no such Secret in the gateway's namespace {:?}; the server is not served",
                            node.namespace
                        ),
                    )
                    .at(format!("{at}.tls.credentialName")),
                )));
            };
            let pem = |keys: &[&str]| {
                found
                    .get(keys)
                    .map(|b| DataSource::InlineString(String::from_utf8_lossy(b).into_owned()))
            };
            let (Some(chain), Some(key)) = (pem(&["tls.crt", "cert"]), pem(&["tls.key", "key"]))
            else {
                return Err(Box::new(r.diag(
                    Diagnostic::error(
                        code::REFERENCED_RESOURCE_NOT_FOUND,
                        format!(
                            "credentialName {name:?}: the Secret has no tls.crt and tls.key (or cert and key)"
                        ),
                    )
                    .at(format!("{at}.tls.credentialName")),
                )));
            };
            let ca = pem(&["ca.crt", "cacert"]).or_else(|| {
                secret(&format!("{name}-cacert")).and_then(|s| {
                    s.get(&["ca.crt", "cacert"])
                        .map(|b| DataSource::InlineString(String::from_utf8_lossy(b).into_owned()))
                })
            });
            (chain, key, ca)
        }
        None => {
            let (Some(chain), Some(key)) = (&tls.server_certificate, &tls.private_key) else {
                return Err(Box::new(
                    r.diag(
                        Diagnostic::error(
                            code::SCHEMA_VALIDATION_ERROR,
                            "credentialName, or serverCertificate and privateKey, is required",
                        )
                        .at(format!("{at}.tls")),
                    ),
                ));
            };
            (
                DataSource::Filename(chain.clone()),
                DataSource::Filename(key.clone()),
                tls.ca_certificates.clone().map(DataSource::Filename),
            )
        }
    };
    if mode == DownstreamTlsMode::Mutual && ca.is_none() {
        return Err(Box::new(r.diag(
            Diagnostic::error(
                code::REFERENCED_RESOURCE_NOT_FOUND,
                "MUTUAL: no CA to verify clients with (ca.crt in the Secret, a <name>-cacert Secret, or caCertificates)",
            )
            .at(format!("{at}.tls")),
        )));
    }
    Ok(DownstreamTls {
        mode,
        certificates: vec![ServerCertificate {
            server_names,
            certificate_chain: chain,
            private_key: key,
        }],
        ca_certificates: if mode == DownstreamTlsMode::Mutual {
            ca
        } else {
            None
        },
        subject_alt_names: tls.subject_alt_names.clone(),
    })
}
