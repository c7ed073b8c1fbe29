//! Clusters per service port and DestinationRule subset, with the DestinationRule's pool,
//! load-balancing and outlier settings; the circuit-breaker plugin's per-cluster policies.

use std::collections::BTreeSet;
use std::time::Duration;

use wasmesh_config::{
    CircuitBreakers, Cluster, Dur, LbPolicy, Resolution, ServiceRef, UpstreamProtocol, UpstreamTls,
    UpstreamTlsMode,
};
use wasmesh_policy::{CircuitBreakerConfig, ClusterPolicy, OutlierDetection};

use super::cluster_name;
use super::registry::{Endpoint, PortProtocol, Registry, Service, labels_match};
use crate::diag::{Diagnostic, code};
use crate::duration;
use crate::istio::{self, H2UpgradePolicy, SimpleLb, TrafficPolicy};

/// Istio's connect timeout (MeshConfig `connectTimeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's upstream idle timeout (`connectionPool.http.idleTimeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

pub(crate) struct Clusters {
    pub bootstrap: Vec<Cluster>,
    pub circuit_breaker: CircuitBreakerConfig,
    /// The names of the clusters that exist (have endpoints).
    pub present: BTreeSet<String>,
}

pub(crate) fn build(registry: &Registry, diags: &mut Vec<Diagnostic>) -> Clusters {
    let mut out = Clusters {
        bootstrap: Vec::new(),
        circuit_breaker: CircuitBreakerConfig::default(),
        present: BTreeSet::new(),
    };
    let mut empty_subsets = BTreeSet::new();
    for svc in &registry.services {
        let rule = registry.rule_for(&svc.host);
        let dr_policy = rule.and_then(|(_, dr)| dr.traffic_policy.as_ref());
        let name = cluster_name(svc.port, None, &svc.host);
        let all: Vec<&Endpoint> = svc.endpoints.iter().collect();
        let original_dst = svc.resolution == Resolution::OriginalDst;
        if original_dst && svc.protocol == PortProtocol::Tcp {
            // A transparent sidecar passes such connections through to where they were
            // going, which is what Istio's ORIGINAL_DST TCP cluster does.
            diags.push(svc.entry.diag(Diagnostic::info(
                code::NOTE,
                format!(
                    "Host {} port {} (TCP, resolution NONE): connections pass through to their original destination; no cluster",
                    svc.host, svc.port
                ),
            )));
            continue;
        }
        if all.is_empty() && !original_dst {
            diags.push(svc.entry.diag(Diagnostic::warning(
                code::NO_ENDPOINTS,
                format!(
                    "No endpoints for host {} port {}: cluster {name} is left out, and requests routed to it get 503",
                    svc.host, svc.port
                ),
            )));
        } else {
            out.add(name, svc, all, &effective(dr_policy, None, svc.port));
        }
        let Some((dr_res, dr)) = rule else {
            continue;
        };
        for (i, subset) in dr.subsets.iter().enumerate() {
            let name = cluster_name(svc.port, Some(&subset.name), &svc.host);
            let selected: Vec<&Endpoint> = svc
                .endpoints
                .iter()
                .filter(|e| labels_match(&subset.labels, &e.labels))
                .collect();
            // An original-destination cluster has no endpoints to select: its subsets go
            // where the request goes too (Istio's subset clusters keep the cluster's type).
            if selected.is_empty() && !original_dst {
                if empty_subsets.insert((dr_res.namespace(), dr_res.name(), i)) {
                    diags.push(dr_res.diag(
                        Diagnostic::warning(
                            code::SUBSET_SELECTS_NO_ENDPOINTS,
                            format!(
                                "The Subset {} defined in the DestinationRule does not select any endpoints: cluster {name} is left out, and requests routed to it get 503",
                                subset.name
                            ),
                        )
                        .at(format!("spec.subsets[{i}]")),
                    ));
                }
                continue;
            }
            let policy = effective(dr_policy, subset.traffic_policy.as_ref(), svc.port);
            out.add(name, svc, selected, &policy);
        }
    }
    out
}

impl Clusters {
    fn add(&mut self, name: String, svc: &Service, endpoints: Vec<&Endpoint>, policy: &Effective) {
        let cluster = cluster(&name, svc, &endpoints, policy);
        // The breaker is an HTTP plugin: TCP clusters keep only the proxy's own limits.
        if cluster.protocol != UpstreamProtocol::Tcp
            && let Some(p) = cluster_policy(policy, cluster.protocol, endpoints.len())
            && (p.max_requests.is_some() || p.outlier_detection.is_some())
        {
            self.circuit_breaker.clusters.insert(name.clone(), p);
        }
        self.present.insert(name);
        self.bootstrap.push(cluster);
    }
}

/// The settings that apply to one cluster, after port-level and subset overrides.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Effective<'a> {
    pub load_balancer: Option<&'a istio::LoadBalancerSettings>,
    pub connection_pool: Option<&'a istio::ConnectionPoolSettings>,
    pub outlier_detection: Option<&'a istio::OutlierDetection>,
    pub tls: Option<&'a istio::ClientTlsSettings>,
}

/// Istio's MergeTrafficPolicy: a policy's port-level settings for the port replace its
/// top-level ones wholesale (unset fields fall back to defaults, not to the top level); a
/// subset's policy then replaces each top-level field it sets, and its own port-level settings
/// replace everything.
pub(crate) fn effective<'a>(
    rule: Option<&'a TrafficPolicy>,
    subset: Option<&'a TrafficPolicy>,
    port: u32,
) -> Effective<'a> {
    let mut e = Effective::default();
    for (i, policy) in [rule, subset].into_iter().enumerate() {
        let Some(p) = policy else {
            continue;
        };
        if i == 0 || p.load_balancer.is_some() {
            e.load_balancer = p.load_balancer.as_ref();
        }
        if i == 0 || p.connection_pool.is_some() {
            e.connection_pool = p.connection_pool.as_ref();
        }
        if i == 0 || p.outlier_detection.is_some() {
            e.outlier_detection = p.outlier_detection.as_ref();
        }
        if i == 0 || p.tls.is_some() {
            e.tls = p.tls.as_ref();
        }
        let port_level = p
            .port_level_settings
            .iter()
            .find(|pl| pl.port.as_ref().is_some_and(|s| s.number == port));
        if let Some(pl) = port_level {
            e = Effective {
                load_balancer: pl.load_balancer.as_ref(),
                connection_pool: pl.connection_pool.as_ref(),
                outlier_detection: pl.outlier_detection.as_ref(),
                tls: pl.tls.as_ref(),
            };
        }
    }
    e
}

/// How Istio's metrics name a service: a Kubernetes service (`name.ns.svc.<domain>`) by its
/// name, any other host (a ServiceEntry's) by the host itself.
pub fn service_ref(host: &str, namespace: &str) -> ServiceRef {
    let name = match host.split_once('.') {
        Some((name, rest)) if rest.starts_with(&format!("{namespace}.svc.")) => name,
        _ => host,
    };
    ServiceRef {
        host: host.to_owned(),
        name: name.to_owned(),
        namespace: namespace.to_owned(),
    }
}

fn positive(v: Option<i32>) -> Option<u32> {
    v.filter(|n| *n > 0).map(|n| n as u32)
}

fn dur(text: Option<&String>) -> Option<Duration> {
    text.and_then(|t| duration::parse(t).ok())
}

fn cluster(name: &str, svc: &Service, endpoints: &[&Endpoint], p: &Effective) -> Cluster {
    let tcp = p.connection_pool.and_then(|c| c.tcp.as_ref());
    let http = p.connection_pool.and_then(|c| c.http.as_ref());
    let lb_policy = match p.load_balancer.and_then(|l| l.simple) {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        // Istio's default is LEAST_REQUEST; PASSTHROUGH is not supported (reported).
        _ => LbPolicy::LeastRequest,
    };
    let protocol = if svc.protocol == PortProtocol::Tcp {
        UpstreamProtocol::Tcp
    } else if http.is_some_and(|h| h.use_client_protocol) {
        UpstreamProtocol::Downstream
    } else if svc.protocol == PortProtocol::Http2
        || http.and_then(|h| h.h2_upgrade_policy) == Some(H2UpgradePolicy::Upgrade)
    {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    let unlimited = CircuitBreakers::default();
    Cluster {
        resolution: svc.resolution,
        service: Some(service_ref(&svc.host, svc.entry.namespace())),
        name: name.to_owned(),
        endpoints: endpoints.iter().map(|e| e.address.clone()).collect(),
        lb_policy,
        protocol,
        connect_timeout: Dur(dur(tcp.and_then(|t| t.connect_timeout.as_ref()))
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)),
        idle_timeout: Dur(
            dur(http.and_then(|h| h.idle_timeout.as_ref())).unwrap_or(DEFAULT_IDLE_TIMEOUT)
        ),
        max_requests_per_connection: positive(http.and_then(|h| h.max_requests_per_connection))
            .unwrap_or(0),
        circuit_breakers: CircuitBreakers {
            max_connections: positive(tcp.and_then(|t| t.max_connections))
                .unwrap_or(unlimited.max_connections),
            max_pending_requests: positive(http.and_then(|h| h.http1_max_pending_requests))
                .unwrap_or(unlimited.max_pending_requests),
            max_requests: positive(http.and_then(|h| h.http2_max_requests))
                .unwrap_or(unlimited.max_requests),
            max_retries: positive(http.and_then(|h| h.max_retries))
                .unwrap_or(unlimited.max_retries),
        },
        retry_budget: None,
        tls: upstream_tls(name, &svc.host, endpoints, p.tls),
    }
}

/// Istio's auto mTLS: ISTIO_MUTUAL to a cluster whose endpoints all have sidecars, expecting
/// their identities, with Istio's SNI (`outbound_.<port>_.<subset>_.<host>`: the cluster's
/// name with `_.` for `|`). A cluster with any endpoint that has no sidecar stays plaintext,
/// which those endpoints and PERMISSIVE sidecars accept.
fn auto_mtls(name: &str, endpoints: &[&Endpoint]) -> Option<UpstreamTls> {
    // No endpoints (an original-destination cluster): nothing known to have a sidecar.
    if endpoints.is_empty() {
        return None;
    }
    let identities: BTreeSet<&str> = endpoints
        .iter()
        .map(|e| e.sidecar_identity.as_deref())
        .collect::<Option<_>>()?;
    Some(UpstreamTls {
        mode: UpstreamTlsMode::IstioMutual,
        subject_alt_names: identities.into_iter().map(str::to_owned).collect(),
        sni: Some(name.replace('|', "_.")),
        ..UpstreamTls::default()
    })
}

/// The DestinationRule's `tls` where it sets one (DISABLE: plaintext; ISTIO_MUTUAL: mTLS
/// expecting its `subjectAltNames`, else the endpoints' identities; SIMPLE and MUTUAL: TLS to
/// a server outside the mesh with the given files, SNI the DestinationRule's or the host),
/// else auto mTLS.
fn upstream_tls(
    name: &str,
    host: &str,
    endpoints: &[&Endpoint],
    rule: Option<&istio::ClientTlsSettings>,
) -> Option<UpstreamTls> {
    match rule.map(|t| (t.mode, t)) {
        None => auto_mtls(name, endpoints),
        Some((istio::ClientTlsMode::IstioMutual, t)) => {
            let auto = auto_mtls(name, endpoints);
            Some(UpstreamTls {
                mode: UpstreamTlsMode::IstioMutual,
                subject_alt_names: if t.subject_alt_names.is_empty() {
                    auto.map(|a| a.subject_alt_names).unwrap_or_default()
                } else {
                    t.subject_alt_names.clone()
                },
                sni: Some(t.sni.clone().unwrap_or_else(|| name.replace('|', "_."))),
                ..UpstreamTls::default()
            })
        }
        Some((mode @ (istio::ClientTlsMode::Simple | istio::ClientTlsMode::Mutual), t)) => {
            Some(UpstreamTls {
                mode: if mode == istio::ClientTlsMode::Simple {
                    UpstreamTlsMode::Simple
                } else {
                    UpstreamTlsMode::Mutual
                },
                subject_alt_names: t.subject_alt_names.clone(),
                sni: Some(t.sni.clone().unwrap_or_else(|| host.to_owned())),
                ca_certificates: t.ca_certificates.clone(),
                client_certificate: t.client_certificate.clone(),
                private_key: t.private_key.clone(),
                insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
            })
        }
        Some((istio::ClientTlsMode::Disable, _)) => None,
    }
}

/// The circuit-breaker plugin's view: requests in flight allowed, and outlier detection.
fn cluster_policy(
    p: &Effective,
    protocol: UpstreamProtocol,
    endpoints: usize,
) -> Option<ClusterPolicy> {
    let tcp = p.connection_pool.and_then(|c| c.tcp.as_ref());
    let http = p.connection_pool.and_then(|c| c.http.as_ref());
    let max_connections = positive(tcp.and_then(|t| t.max_connections));
    let pending = positive(http.and_then(|h| h.http1_max_pending_requests));
    let mut limits = Vec::new();
    if let Some(n) = positive(http.and_then(|h| h.http2_max_requests)) {
        limits.push(n);
    }
    if protocol == UpstreamProtocol::Http1
        && let (Some(c), Some(q)) = (max_connections, pending)
    {
        limits.push(c.saturating_add(q));
    }
    let outlier_detection = p.outlier_detection.map(|o| {
        // Istio: the deprecated consecutiveErrors counts gateway errors only.
        let legacy = positive(o.consecutive_errors);
        OutlierDetection {
            // Unset: Envoy's default of 5 (enforced), unless the legacy field is used.
            consecutive_5xx: o.consecutive_5xx_errors.unwrap_or(if legacy.is_some() {
                0
            } else {
                5
            }),
            consecutive_gateway_errors: o.consecutive_gateway_errors.or(legacy).unwrap_or(0),
            interval_ms: duration::millis(
                dur(o.interval.as_ref()).unwrap_or(Duration::from_secs(10)),
            ),
            base_ejection_ms: duration::millis(
                dur(o.base_ejection_time.as_ref()).unwrap_or(Duration::from_secs(30)),
            ),
            max_ejection_percent: positive(o.max_ejection_percent).unwrap_or(10),
            endpoints: endpoints as u32,
        }
    });
    Some(ClusterPolicy {
        max_requests: limits.into_iter().min(),
        outlier_detection,
    })
}
