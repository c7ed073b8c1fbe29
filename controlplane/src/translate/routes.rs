//! VirtualServices -> the router's virtual hosts (and the fault and mirror configs keyed by
//! route id), and the proxy's own virtual hosts.

use std::collections::BTreeSet;

use base64::Engine as _;
use wasmesh_config::{Dur, RetryOn, RetryPolicy};
use wasmesh_policy::{
    Abort, Action, Delay, Destination, Fault, FaultConfig, HeaderMatch, HeaderOps, Mirror,
    MirrorConfig, Redirect, RegexRewrite, Rewrite, Route, RouteMatch, RouterConfig, StringMatch,
    VirtualHost,
};

use super::clusters::Clusters;
use super::registry::{Registry, Service, host_match};
use super::validate::GRPC_STATUS;
use super::{
    ALLOW_ANY_ROUTE, BLOCK_ALL_ROUTE, Options, PASSTHROUGH_CLUSTER, cluster_name, qualify,
};
use crate::diag::{Diagnostic, code};
use crate::duration;
use crate::istio::{self, HttpRoute, OutboundMode};
use crate::manifests::{Resource, Spec};

/// Istio's default retry conditions (no `retries`, or `retries` without `retryOn`).
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

pub(crate) struct Routed {
    pub router: RouterConfig,
    pub fault: FaultConfig,
    pub mirror: MirrorConfig,
    pub core_virtual_hosts: Vec<wasmesh_config::VirtualHost>,
    /// The proxy's own default routes of the services a VirtualService binds: the router has
    /// nothing to add on the others' routes, which are the proxy's (a service the proxy has no
    /// route for still goes through the router, as every request without a route does).
    pub router_routes: Vec<String>,
}

struct Ctx<'a, 'r> {
    registry: &'a Registry<'r>,
    clusters: &'a Clusters,
    options: &'a Options,
    diags: &'a mut Vec<Diagnostic>,
    fault: FaultConfig,
    mirror: MirrorConfig,
}

/// Where a route is served: a service port of the mesh, or a gateway's port.
pub(crate) struct From<'g> {
    /// The port requests came in on (a route's `match.port`; a destination's default port).
    pub port: u32,
    /// The gateway serving it (`namespace/name`); None: the mesh.
    pub gateway: Option<&'g str>,
}

impl From<'_> {
    fn mesh(port: u32) -> From<'static> {
        From {
            port,
            gateway: None,
        }
    }

    /// Whether a VirtualService of `namespace` naming `gateway` (`mesh`, `name` in its own
    /// namespace, or `namespace/name`) means this.
    pub fn is(&self, gateway: &str, namespace: &str) -> bool {
        match self.gateway {
            None => gateway == "mesh",
            Some(own) => {
                gateway != "mesh"
                    && (gateway == own
                        || (!gateway.contains('/') && own == format!("{namespace}/{gateway}")))
            }
        }
    }
}

/// A VirtualService that applies to the mesh, with its hosts qualified.
struct Bound<'r> {
    res: &'r Resource,
    vs: &'r istio::VirtualService,
    hosts: Vec<String>,
}

pub(crate) fn build(
    registry: &Registry,
    clusters: &Clusters,
    valid: &[&Resource],
    options: &Options,
    mode: OutboundMode,
    diags: &mut Vec<Diagnostic>,
) -> Routed {
    let services: Vec<Bound> = valid
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::VirtualService(vs)
                if vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh") =>
            {
                Some(Bound {
                    res: r,
                    vs,
                    hosts: vs
                        .hosts
                        .iter()
                        .map(|h| qualify(h, r.namespace(), options))
                        .collect(),
                })
            }
            _ => None,
        })
        .collect();
    for b in &services {
        for (i, h) in b.hosts.iter().enumerate() {
            if !registry
                .services
                .iter()
                .any(|s| host_match(h, &s.host).is_some())
            {
                diags.push(
                    b.res.diag(
                        Diagnostic::error(
                            code::REFERENCED_RESOURCE_NOT_FOUND,
                            format!("Referenced host not found: {:?}", b.vs.hosts[i]),
                        )
                        .at(format!("spec.hosts[{i}]")),
                    ),
                );
            }
        }
    }

    let mut ctx = Ctx {
        registry,
        clusters,
        options,
        diags,
        fault: FaultConfig::default(),
        mirror: MirrorConfig::default(),
    };
    let mut router = RouterConfig::default();
    let mut core = Vec::new();
    let mut used_domains = BTreeSet::new();
    let mut router_routes = Vec::new();
    // TCP services have no routes: a transparent sidecar proxies them as TCP.
    for svc in registry.services.iter().filter(|s| s.protocol.is_http()) {
        let domains = domains(svc, options, &mut used_domains);
        if domains.is_empty() {
            continue;
        }
        let name = format!("{}:{}", svc.host, svc.port);
        let bound = bind(&services, svc, ctx.diags);
        let default_cluster = cluster_name(svc.port, None, &svc.host);
        let default_id = format!("default/{name}");

        let mut routes = Vec::new();
        let mut core_routes = Vec::new();
        if let Some(b) = bound {
            for (i, route) in b.vs.http.iter().enumerate() {
                let at = format!("spec.http[{i}]");
                let id = route_id(b.res, i, route);
                let from = From::mesh(svc.port);
                let Some(r) = ctx.route(b.res, &at, id, route, &from) else {
                    continue;
                };
                if options.plugins.is_none() {
                    ctx.core_routes(b.res, &at, &r, route, &mut core_routes);
                }
                routes.push(r);
            }
        }
        let fall_through = bound.is_none() || options.fall_through_to_default_route;
        routes.push(Route {
            id: default_id.clone(),
            action: if fall_through {
                Action::Route {
                    destinations: vec![Destination {
                        cluster: default_cluster.clone(),
                        weight: 100,
                        ..Default::default()
                    }],
                    rewrite: None,
                }
            } else {
                // Istio: a request no route of the VirtualService matches gets 404 (NR).
                Action::DirectResponse {
                    status: 404,
                    body: String::new(),
                }
            },
            retry_policy: fall_through.then(|| Retry::istio_default().policy_string()),
            ..Default::default()
        });
        let core_default = options.plugins.is_some() || fall_through;
        let has_core_default = core_default && clusters.present.contains(&default_cluster);
        if bound.is_some() && has_core_default {
            router_routes.push(default_id.clone());
        }
        if has_core_default {
            core_routes.push(wasmesh_config::Route {
                direct_response: None,
                name: Some(default_id),
                matcher: Default::default(),
                cluster: default_cluster,
                // Istio sets no route timeout by default.
                timeout: Dur::default(),
                retry_policy: Some(Retry::istio_default().core_policy()),
            });
        }
        router.virtual_hosts.push(VirtualHost {
            name: name.clone(),
            domains: domains.clone(),
            routes,
        });
        core.push(wasmesh_config::VirtualHost {
            require_tls: false,
            name,
            domains,
            routes: core_routes,
        });
    }
    // Istio's catch-all virtual host, after every service's: what the mesh does not know goes
    // where it was going (ALLOW_ANY) or gets 502 (REGISTRY_ONLY). A service whose host is `*`
    // already takes every request.
    if !used_domains.contains("*") {
        core.push(catch_all(mode));
    }
    Routed {
        router,
        fault: ctx.fault,
        mirror: ctx.mirror,
        core_virtual_hosts: core,
        router_routes,
    }
}

/// Istio's `allow_any` virtual host (a route to `PassthroughCluster`, no timeout, no
/// retries) or its `block_all` one (a direct 502, no body: Istio's `BlackHoleCluster` for
/// HTTP), for every domain.
fn catch_all(mode: OutboundMode) -> wasmesh_config::VirtualHost {
    let (name, cluster, direct_response) = match mode {
        OutboundMode::AllowAny => (ALLOW_ANY_ROUTE, PASSTHROUGH_CLUSTER.to_owned(), None),
        OutboundMode::RegistryOnly => (
            BLOCK_ALL_ROUTE,
            String::new(),
            Some(wasmesh_config::DirectResponse {
                status: 502,
                body: String::new(),
            }),
        ),
    };
    wasmesh_config::VirtualHost {
        require_tls: false,
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![wasmesh_config::Route {
            name: Some(name.into()),
            matcher: wasmesh_config::RouteMatch {
                prefix: Some("/".into()),
                path: None,
            },
            cluster,
            direct_response,
            timeout: Dur::default(),
            retry_policy: None,
        }],
    }
}

/// A VirtualService route's id, which keys the fault and mirror configs:
/// `<virtualservice>.<namespace>/<route name or index>`.
fn route_id(res: &Resource, i: usize, route: &HttpRoute) -> String {
    let name = route.name.clone().unwrap_or_else(|| i.to_string());
    format!("{}.{}/{name}", res.name(), res.namespace())
}

/// The VirtualService for a service: one naming its host exactly beats a wildcard, a longer
/// wildcard a shorter one; among equals, the first by namespace and name (the others are
/// reported, as istioctl's IST0109).
fn bind<'b, 'r>(
    services: &'b [Bound<'r>],
    svc: &Service,
    diags: &mut Vec<Diagnostic>,
) -> Option<&'b Bound<'r>> {
    let ranked: Vec<(usize, &Bound)> = services
        .iter()
        .filter_map(|b| {
            b.hosts
                .iter()
                .filter_map(|h| host_match(h, &svc.host))
                .max()
                .map(|rank| (rank, b))
        })
        .collect();
    let best = ranked.iter().map(|(r, _)| *r).max()?;
    let tied: Vec<&Bound> = ranked
        .iter()
        .filter(|(r, _)| *r == best)
        .map(|(_, b)| *b)
        .collect();
    if tied.len() > 1 {
        let names: Vec<String> = tied
            .iter()
            .map(|b| format!("{}.{}", b.res.name(), b.res.namespace()))
            .collect();
        for b in &tied[1..] {
            diags.push(b.res.diag(Diagnostic::warning(
                code::CONFLICTING_VIRTUAL_SERVICE_HOSTS,
                format!(
                    "The VirtualServices {} associated with mesh gateway define the same host {} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.",
                    names.join(","),
                    svc.host
                ),
            )));
        }
    }
    tied.first().copied()
}

/// The authorities a service answers to: its host, and for `<name>.<ns>.svc.<suffix>` also
/// `<name>.<ns>.svc`, `<name>.<ns>` and (in the client namespace) `<name>`; each with
/// `:<port>`, and bare for the host's first HTTP port. A domain already taken is skipped.
fn domains(svc: &Service, options: &Options, used: &mut BTreeSet<String>) -> Vec<String> {
    let mut names = vec![svc.host.clone()];
    let suffix = format!(".{}", options.domain_suffix);
    if let Some(short) = svc.host.strip_suffix(&suffix)
        && let Some((name, ns)) = short.split_once('.')
        && !ns.contains('.')
    {
        if ns == options.client_namespace {
            names.push(name.to_owned());
        }
        names.push(short.to_owned());
        if options.domain_suffix.starts_with("svc.") {
            names.push(format!("{short}.svc"));
        }
    }
    let wildcard = svc.host.contains('*');
    let mut out = Vec::new();
    for n in names {
        if svc.first_port || wildcard {
            out.push(n.clone());
        }
        if !wildcard {
            out.push(format!("{n}:{}", svc.port));
        }
    }
    out.retain(|d| used.insert(d.clone()));
    out
}

impl Ctx<'_, '_> {
    fn report(&mut self, res: &Resource, d: Diagnostic) {
        self.diags.push(res.diag(d));
    }

    /// One VirtualService route for one service port; None when it can never apply there.
    fn route(
        &mut self,
        res: &Resource,
        at: &str,
        id: String,
        route: &HttpRoute,
        from: &From,
    ) -> Option<Route> {
        if route.delegate.is_some() {
            return None;
        }
        let mut matches = Vec::new();
        for m in &route.matches {
            let never = m.port.is_some_and(|p| p != from.port)
                || !m.source_labels.is_empty()
                || m.source_namespace.is_some()
                || (!m.gateways.is_empty()
                    && !m.gateways.iter().any(|g| from.is(g, res.namespace())));
            if !never {
                matches.push(route_match(m));
            }
        }
        if !route.matches.is_empty() && matches.is_empty() {
            return None;
        }

        let action = if let Some(rd) = &route.redirect {
            Action::Redirect(Redirect {
                uri: rd.uri.clone(),
                authority: rd.authority.clone(),
                scheme: rd.scheme.clone(),
                port: rd.port.map(|p| p as u16),
                status: rd.redirect_code.unwrap_or(301) as u16,
            })
        } else if let Some(dr) = &route.direct_response {
            let body = dr
                .body
                .as_ref()
                .map_or_else(String::new, |b| match (&b.string, &b.bytes) {
                    (Some(s), _) => s.clone(),
                    (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map(|raw| String::from_utf8_lossy(&raw).into_owned())
                        .unwrap_or_default(),
                    (None, None) => String::new(),
                });
            Action::DirectResponse {
                status: dr.status as u16,
                body,
            }
        } else {
            let single = route.route.len() == 1;
            let destinations = route
                .route
                .iter()
                .enumerate()
                .map(|(j, d)| {
                    let (req, resp) = header_ops(d.headers.as_ref());
                    Destination {
                        cluster: self.resolve(
                            res,
                            &format!("{at}.route[{j}].destination"),
                            &d.destination,
                            from,
                        ),
                        weight: if single {
                            100
                        } else {
                            d.weight.unwrap_or(0) as u32
                        },
                        request_headers: req,
                        response_headers: resp,
                    }
                })
                .collect();
            Action::Route {
                destinations,
                rewrite: route.rewrite.as_ref().map(|rw| Rewrite {
                    uri: rw.uri.clone(),
                    uri_regex: rw.uri_regex_rewrite.as_ref().map(|r| RegexRewrite {
                        pattern: r.pattern.clone(),
                        substitution: r.rewrite.clone(),
                    }),
                    authority: rw.authority.clone(),
                }),
            }
        };

        if let Some(f) = route.fault.as_ref().and_then(fault)
            && !self.fault.routes.contains_key(&id)
        {
            self.fault.routes.insert(id.clone(), f);
        }
        let mirrors = self.mirrors(res, at, route, from);
        if !mirrors.is_empty() && !self.mirror.routes.contains_key(&id) {
            self.mirror.routes.insert(id.clone(), mirrors);
        }

        let (request_headers, response_headers) = header_ops(route.headers.as_ref());
        let forwards = matches!(action, Action::Route { .. });
        Some(Route {
            id,
            matches,
            action,
            request_headers,
            response_headers,
            timeout_ms: route
                .timeout
                .as_ref()
                .and_then(|t| duration::parse(t).ok())
                .map(duration::millis),
            retry_policy: forwards.then(|| Retry::of(route.retries.as_ref()).policy_string()),
        })
    }

    /// A destination's cluster name. A host or subset that does not exist still gets its
    /// Istio name: no such cluster exists, so the proxy answers 503 (`NC`), as Envoy does.
    fn resolve(&mut self, res: &Resource, at: &str, d: &istio::Destination, from: &From) -> String {
        let host = qualify(&d.host, res.namespace(), self.options);
        // HTTP routes go to HTTP ports only (a TCP port's cluster takes no HTTP).
        let ports: Vec<u32> = self
            .registry
            .by_host(&host)
            .filter(|s| s.protocol.is_http())
            .map(|s| s.port)
            .collect();
        let subset = d.subset.as_deref();
        if ports.is_empty() {
            self.report(
                res,
                Diagnostic::error(
                    code::REFERENCED_RESOURCE_NOT_FOUND,
                    format!("Referenced host not found: {:?}", d.host),
                )
                .at(format!("{at}.host")),
            );
            let port = d.port.as_ref().map_or(from.port, |p| p.number);
            return cluster_name(port, subset, &host);
        }
        let port = match &d.port {
            Some(p) => {
                if !ports.contains(&p.number) {
                    self.report(
                        res,
                        Diagnostic::error(
                            code::REFERENCED_RESOURCE_NOT_FOUND,
                            format!(
                                "Referenced host+port not found: \"{}+{}\"",
                                d.host, p.number
                            ),
                        )
                        .at(format!("{at}.port")),
                    );
                }
                p.number
            }
            None if ports.len() == 1 => ports[0],
            // Istio: the port the request came in on, if the destination has it.
            None if ports.contains(&from.port) => from.port,
            None => {
                self.report(
                    res,
                    Diagnostic::error(
                        code::DESTINATION_PORT_SELECTOR_REQUIRED,
                        format!(
                            "This VirtualService routes to a service {:?} that exposes multiple ports {:?}. Specifying a port in the destination is required to disambiguate.",
                            d.host, ports
                        ),
                    )
                    .at(at.to_owned()),
                );
                ports[0]
            }
        };
        if let Some(s) = subset {
            let found = self
                .registry
                .rule_for(&host)
                .is_some_and(|(_, dr)| dr.subsets.iter().any(|x| x.name == s));
            if !found {
                self.report(
                    res,
                    Diagnostic::error(
                        code::REFERENCED_RESOURCE_NOT_FOUND,
                        format!(
                            "Referenced host+subset in destinationrule not found: \"{}+{s}\"",
                            d.host
                        ),
                    )
                    .at(format!("{at}.subset")),
                );
            }
        }
        cluster_name(port, subset, &host)
    }

    fn mirrors(&mut self, res: &Resource, at: &str, route: &HttpRoute, from: &From) -> Vec<Mirror> {
        let mut out = Vec::new();
        if let Some(m) = &route.mirror {
            let percentage = route
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(route.mirror_percent.map(f64::from))
                .unwrap_or(100.0);
            out.push(Mirror {
                cluster: self.resolve(res, &format!("{at}.mirror"), m, from),
                percentage,
            });
        }
        for (j, m) in route.mirrors.iter().enumerate() {
            out.push(Mirror {
                cluster: self.resolve(
                    res,
                    &format!("{at}.mirrors[{j}].destination"),
                    &m.destination,
                    from,
                ),
                percentage: m.percentage.as_ref().map_or(100.0, |p| p.value),
            });
        }
        out
    }

    /// Without plugins, the proxy's own routes carry what they can of a VirtualService route:
    /// path matches, one destination, timeout and retries.
    fn core_routes(
        &mut self,
        res: &Resource,
        at: &str,
        r: &Route,
        route: &HttpRoute,
        out: &mut Vec<wasmesh_config::Route>,
    ) {
        let cluster = match &r.action {
            Action::Route {
                destinations,
                rewrite: None,
            } => {
                let live: Vec<_> = destinations.iter().filter(|d| d.weight > 0).collect();
                match live.as_slice() {
                    [d] if d.request_headers.is_empty() && d.response_headers.is_empty() => {
                        Some(d.cluster.clone())
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let paths: Option<Vec<(Option<String>, Option<String>)>> = if r.matches.is_empty() {
            Some(vec![(None, None)])
        } else {
            r.matches
                .iter()
                .map(|m| {
                    let only_uri = RouteMatch {
                        uri: m.uri.clone(),
                        ..Default::default()
                    };
                    match (&m.uri, *m == only_uri) {
                        (Some(StringMatch::Prefix(p)), true) => Some((Some(p.clone()), None)),
                        (Some(StringMatch::Exact(p)), true) => Some((None, Some(p.clone()))),
                        (None, true) => Some((None, None)),
                        _ => None,
                    }
                })
                .collect()
        };
        let plain = r.request_headers.is_empty()
            && r.response_headers.is_empty()
            && route.fault.is_none()
            && route.mirror.is_none()
            && route.mirrors.is_empty();
        let (Some(cluster), Some(paths), true) = (cluster, paths, plain) else {
            self.report(
                res,
                Diagnostic::info(
                    code::NOTE,
                    format!(
                        "{at}: route {} needs the plugins (the proxy's own routes match paths only and forward to one destination): left out",
                        r.id
                    ),
                )
                .at(at.to_owned()),
            );
            return;
        };
        if !self.clusters.present.contains(&cluster) {
            return;
        }
        let retry = Retry::of(route.retries.as_ref());
        for (prefix, path) in paths {
            out.push(wasmesh_config::Route {
                direct_response: None,
                name: Some(r.id.clone()),
                matcher: wasmesh_config::RouteMatch { prefix, path },
                cluster: cluster.clone(),
                timeout: Dur::millis(r.timeout_ms.unwrap_or(0)),
                retry_policy: Some(retry.core_policy()),
            });
        }
    }
}

fn string_match(m: &istio::StringMatch) -> Option<StringMatch> {
    if let Some(v) = &m.exact {
        Some(StringMatch::Exact(v.clone()))
    } else if let Some(v) = &m.prefix {
        Some(StringMatch::Prefix(v.clone()))
    } else {
        m.regex.as_ref().map(|v| StringMatch::Regex(v.clone()))
    }
}

fn header_match(m: &istio::StringMatch) -> HeaderMatch {
    string_match(m).map_or(HeaderMatch::Present, HeaderMatch::Value)
}

fn route_match(m: &istio::HttpMatchRequest) -> RouteMatch {
    RouteMatch {
        uri: m.uri.as_ref().and_then(string_match),
        ignore_uri_case: m.ignore_uri_case,
        method: m.method.as_ref().and_then(string_match),
        authority: m.authority.as_ref().and_then(string_match),
        scheme: m.scheme.as_ref().and_then(string_match),
        headers: m
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), header_match(v)))
            .collect(),
        without_headers: m
            .without_headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), header_match(v)))
            .collect(),
        query_params: m
            .query_params
            .iter()
            // `{}`: present, whatever the value.
            .map(|(k, v)| {
                (
                    k.clone(),
                    string_match(v).unwrap_or(StringMatch::Prefix(String::new())),
                )
            })
            .collect(),
    }
}

fn ops(o: Option<&istio::HeaderOperations>) -> HeaderOps {
    let Some(o) = o else {
        return HeaderOps::default();
    };
    let pairs = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    HeaderOps {
        set: pairs(&o.set),
        add: pairs(&o.add),
        remove: o.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

fn header_ops(h: Option<&istio::Headers>) -> (HeaderOps, HeaderOps) {
    (
        ops(h.and_then(|h| h.request.as_ref())),
        ops(h.and_then(|h| h.response.as_ref())),
    )
}

/// Istio's fault: a percentage left unset means no request (Envoy's default of 0%); the
/// deprecated integer `percent` of a delay is read when `percentage` is unset.
fn fault(f: &istio::HttpFaultInjection) -> Option<Fault> {
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = duration::parse(d.fixed_delay.as_ref()?).ok()?;
        Some(Delay {
            fixed_delay_ms: duration::millis(fixed),
            percentage: d
                .percentage
                .as_ref()
                .map(|p| p.value)
                .or(d.percent.map(f64::from))
                .unwrap_or(0.0),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let grpc_status = a
            .grpc_status
            .as_ref()
            .and_then(|g| GRPC_STATUS.iter().position(|s| s == g))
            .map(|n| n as u8);
        let http_status = a.http_status.map(|s| s as u16);
        (http_status.is_some() || grpc_status.is_some()).then(|| Abort {
            http_status,
            grpc_status,
            percentage: a.percentage.as_ref().map_or(0.0, |p| p.value),
        })
    });
    (delay.is_some() || abort.is_some()).then_some(Fault { delay, abort })
}

/// A retry policy as Istio computes it (`retry.ConvertPolicy`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Retry {
    attempts: u32,
    per_try_timeout_ms: Option<u64>,
    retry_on: Vec<String>,
    status_codes: Vec<u16>,
}

impl Retry {
    /// Istio's default: 2 attempts on connect failures, refused streams, gRPC unavailable and
    /// cancelled, and 503.
    pub fn istio_default() -> Retry {
        Retry {
            attempts: 2,
            per_try_timeout_ms: None,
            retry_on: DEFAULT_RETRY_ON.split(',').map(str::to_owned).collect(),
            status_codes: vec![503],
        }
    }

    /// No `retries`: the default; `attempts` 0 (or unset): none; else the default with what is
    /// set replaced. Numbers in `retryOn` are status codes (and imply `retriable-status-codes`);
    /// conditions the proxy does not know are dropped (validation reported them).
    pub fn of(r: Option<&istio::HttpRetry>) -> Retry {
        let Some(r) = r else {
            return Retry::istio_default();
        };
        let attempts = r.attempts.unwrap_or(0).max(0) as u32;
        if attempts == 0 {
            return Retry {
                attempts: 0,
                per_try_timeout_ms: None,
                retry_on: Vec::new(),
                status_codes: Vec::new(),
            };
        }
        let mut out = Retry::istio_default();
        out.attempts = attempts;
        out.per_try_timeout_ms = r
            .per_try_timeout
            .as_ref()
            .and_then(|t| duration::parse(t).ok())
            .map(duration::millis);
        if let Some(on) = r.retry_on.as_ref().filter(|s| !s.trim().is_empty()) {
            out.retry_on.clear();
            out.status_codes.clear();
            for token in on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if let Ok(code) = token.parse::<u16>() {
                    out.status_codes.push(code);
                } else if RetryOn::parse(token).is_ok() && !out.retry_on.iter().any(|t| t == token)
                {
                    out.retry_on.push(token.to_owned());
                }
            }
            if !out.status_codes.is_empty()
                && !out.retry_on.iter().any(|t| t == "retriable-status-codes")
            {
                out.retry_on.push("retriable-status-codes".into());
            }
        }
        out
    }

    /// `attempts=3;per_try_timeout_ms=500;retry_on=5xx,reset;retriable_status_codes=503`, the
    /// string `wasmesh.set_retry_policy` takes.
    pub fn policy_string(&self) -> String {
        if self.attempts == 0 {
            return "attempts=0".into();
        }
        let mut s = format!("attempts={}", self.attempts);
        if let Some(ms) = self.per_try_timeout_ms {
            s.push_str(&format!(";per_try_timeout_ms={ms}"));
        }
        s.push_str(&format!(";retry_on={}", self.retry_on.join(",")));
        if !self.status_codes.is_empty() {
            let codes: Vec<String> = self.status_codes.iter().map(u16::to_string).collect();
            s.push_str(&format!(";retriable_status_codes={}", codes.join(",")));
        }
        s
    }

    /// The same policy for the proxy's own routes (at most 10 retries there).
    pub fn core_policy(&self) -> RetryPolicy {
        RetryPolicy {
            retry_on: RetryOn::parse(&self.retry_on.join(",")).unwrap_or_default(),
            num_retries: self.attempts.min(wasmesh_config::MAX_RETRIES),
            per_try_timeout: Dur::millis(self.per_try_timeout_ms.unwrap_or(0)),
            retriable_status_codes: self.status_codes.clone(),
            base_interval: Dur::millis(25),
            max_interval: None,
        }
    }
}

/// One Gateway server on a gateway port, as the gateway translation hands it over.
pub struct GatewayServer {
    /// The Gateway, `namespace/name`.
    pub gateway: String,
    /// The server's hosts as written (`host`, `ns/host`, `./host`, `*/host`).
    pub hosts: Vec<String>,
    /// A PASSTHROUGH server: its hosts take the VirtualServices' `tls` routes.
    pub passthrough: bool,
    /// A TCP server: the first `tcp` route that matches takes its connections.
    pub tcp: bool,
}

/// What a gateway port serves: the router's virtual hosts (HTTP servers) and the SNI routes
/// (PASSTHROUGH servers), from the VirtualServices bound to the servers' Gateways.
pub(crate) struct GatewayRouted {
    pub router: RouterConfig,
    pub fault: FaultConfig,
    pub mirror: MirrorConfig,
    pub sni_routes: Vec<wasmesh_config::SniRoute>,
    /// A TCP server's cluster.
    pub tcp_cluster: Option<String>,
}

/// The VirtualServices bound to `servers` (all on `port`), as Istio binds them to a gateway:
/// the VirtualService names the server's Gateway, lives in a namespace the server's host
/// allows, and their hosts intersect (the narrower of each pair is served). A host is served
/// by the first VirtualService that binds it, by namespace and name.
pub(crate) fn for_gateway(
    registry: &Registry,
    clusters: &Clusters,
    valid: &[&Resource],
    options: &Options,
    port: u32,
    servers: &[GatewayServer],
    diags: &mut Vec<Diagnostic>,
) -> GatewayRouted {
    let mut ctx = Ctx {
        registry,
        clusters,
        options,
        diags,
        fault: FaultConfig::default(),
        mirror: MirrorConfig::default(),
    };
    let mut router = RouterConfig::default();
    let mut sni_routes = Vec::new();
    let mut used = BTreeSet::new();
    let mut used_sni = BTreeSet::new();
    let mut tcp_cluster = None;
    for server in servers {
        let gw_ns = server.gateway.split_once('/').map_or("", |(ns, _)| ns);
        let from = From {
            port,
            gateway: Some(&server.gateway),
        };
        for r in valid {
            let Spec::VirtualService(vs) = &r.spec else {
                continue;
            };
            if !vs.gateways.iter().any(|g| from.is(g, r.namespace())) {
                continue;
            }
            let hosts = bound_hosts(&server.hosts, gw_ns, r.namespace(), &vs.hosts);
            if hosts.is_empty() {
                continue;
            }
            if server.tcp {
                // The first route that fits takes the port; its heaviest destination all of it.
                let first = vs.tcp.iter().enumerate().find_map(|(i, t)| {
                    let fits = t.matches.is_empty()
                        || t.matches.iter().any(|m| {
                            m.port.is_none_or(|p| p == port)
                                && (m.gateways.is_empty()
                                    || m.gateways.iter().any(|g| from.is(g, r.namespace())))
                        });
                    let dest = t.route.iter().max_by_key(|d| d.weight.unwrap_or(0));
                    fits.then_some(dest).flatten().map(|d| (i, d))
                });
                if tcp_cluster.is_none()
                    && let Some((i, dest)) = first
                {
                    let at = format!("spec.tcp[{i}].route");
                    tcp_cluster = Some(ctx.resolve_tcp(r, &at, &dest.destination));
                }
                continue;
            }
            if server.passthrough {
                for (i, t) in vs.tls.iter().enumerate() {
                    let names: Vec<String> = t
                        .matches
                        .iter()
                        .filter(|m| m.port.is_none_or(|p| p == port))
                        .filter(|m| {
                            m.gateways.is_empty()
                                || m.gateways.iter().any(|g| from.is(g, r.namespace()))
                        })
                        .flat_map(|m| &m.sni_hosts)
                        .map(|h| h.to_ascii_lowercase())
                        .filter(|h| hosts.iter().any(|b| covers(b, h) || covers(h, b)))
                        .filter(|h| used_sni.insert(h.clone()))
                        .collect();
                    let Some(dest) = t.route.iter().max_by_key(|d| d.weight.unwrap_or(0)) else {
                        continue;
                    };
                    if names.is_empty() {
                        continue;
                    }
                    let at = format!("spec.tls[{i}].route");
                    let cluster = ctx.resolve_tcp(r, &at, &dest.destination);
                    sni_routes.push(wasmesh_config::SniRoute {
                        server_names: names,
                        cluster,
                    });
                }
                continue;
            }
            let domains: Vec<String> = hosts
                .into_iter()
                .filter(|h| used.insert(h.clone()))
                .collect();
            if domains.is_empty() {
                continue;
            }
            let mut routes = Vec::new();
            for (i, route) in vs.http.iter().enumerate() {
                let at = format!("spec.http[{i}]");
                let id = route_id(r, i, route);
                if let Some(route) = ctx.route(r, &at, id, route, &from) {
                    routes.push(route);
                }
            }
            router.virtual_hosts.push(VirtualHost {
                name: format!("{}.{}:{port}", r.name(), r.namespace()),
                domains,
                routes,
            });
        }
    }
    GatewayRouted {
        router,
        fault: ctx.fault,
        mirror: ctx.mirror,
        sni_routes,
        tcp_cluster,
    }
}

/// The hosts a VirtualService of `vs_ns` serves through a server with `server_hosts` of a
/// Gateway in `gw_ns`: for each pair that intersects, the narrower name.
fn bound_hosts(
    server_hosts: &[String],
    gw_ns: &str,
    vs_ns: &str,
    vs_hosts: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for sh in server_hosts {
        let (ns, host) = sh.split_once('/').unwrap_or(("*", sh));
        let allowed = ns == "*" || ns == vs_ns || (ns == "." && vs_ns == gw_ns);
        if !allowed {
            continue;
        }
        let host = host.to_ascii_lowercase();
        for vh in vs_hosts {
            let vh = vh.trim().to_ascii_lowercase();
            let narrower = if covers(&host, &vh) {
                vh
            } else if covers(&vh, &host) {
                host.clone()
            } else {
                continue;
            };
            if !out.contains(&narrower) {
                out.push(narrower);
            }
        }
    }
    out
}

/// Whether the name pattern `pattern` (`*`, `*.suffix` or exact) covers `name` (which may
/// itself be a wildcard: `*.example.com` covers `*.api.example.com`).
fn covers(pattern: &str, name: &str) -> bool {
    pattern == name
        || pattern == "*"
        || pattern
            .strip_prefix('*')
            .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
}

impl Ctx<'_, '_> {
    /// A TLS route destination's cluster: its host's port (the one given, or its only one).
    fn resolve_tcp(&mut self, res: &Resource, at: &str, d: &istio::Destination) -> String {
        let host = qualify(&d.host, res.namespace(), self.options);
        let ports: Vec<u32> = self.registry.by_host(&host).map(|s| s.port).collect();
        let port = match (&d.port, ports.as_slice()) {
            (Some(p), _) => p.number,
            (None, [one]) => *one,
            (None, _) => {
                self.report(
                    res,
                    Diagnostic::error(
                        code::REFERENCED_RESOURCE_NOT_FOUND,
                        format!(
                            "Referenced host not found or without a single port: {:?}",
                            d.host
                        ),
                    )
                    .at(format!("{at}.destination")),
                );
                ports.first().copied().unwrap_or(443)
            }
        };
        cluster_name(port, d.subset.as_deref(), &host)
    }
}
