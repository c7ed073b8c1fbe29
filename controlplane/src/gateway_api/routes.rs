//! HTTPRoutes: each parentRef resolved to listeners of a Gateway of ours, each rule's matches
//! made VirtualService routes in the Gateway API's precedence.

use std::collections::{BTreeMap, BTreeSet};

use super::listeners::GatewayState;
use super::reason::*;
use super::{
    CONTROLLER_NAME, Condition, GROUP, Gateway, HttpHeaderFilter, HttpRoute, HttpRouteFilter,
    HttpRouteMatch, HttpRouteRule, RouteParentStatus, RouteStatus, SUFFIX, istio_gateway_name,
};
use crate::diag::{Diagnostic, code};
use crate::istio::{self, StringMatch};
use crate::manifests::{Resource, Spec};

pub(super) struct Ctx<'a> {
    pub domain_suffix: &'a str,
    /// Every ServiceEntry host: a Service backend exists if its host is here.
    pub services: &'a BTreeSet<&'a str>,
    /// Every Gateway API Gateway, ours or not.
    pub gateways: &'a [(&'a Resource, &'a Gateway)],
}

/// A route's VirtualService routes, independent of its parents, and what was wrong.
struct Rules {
    /// In the Gateway API's precedence.
    http: Vec<istio::HttpRoute>,
    /// The first backend problem (ResolvedRefs False).
    resolved_refs: Condition,
    /// A filter wasmesh cannot apply (Accepted False, UnsupportedValue).
    unsupported: Option<String>,
}

/// Converts one HTTPRoute: its parents' status and a VirtualService per accepted parent.
pub(super) fn convert(
    ctx: &Ctx,
    res: &Resource,
    h: &HttpRoute,
    states: &mut [GatewayState],
    diags: &mut Vec<Diagnostic>,
) -> (RouteStatus, Vec<Resource>) {
    let rules = rules(ctx, res, h, diags);
    let mut parents = Vec::new();
    let mut made = Vec::new();
    for (n, p) in h.parent_refs.iter().enumerate() {
        let at = format!("spec.parentRefs[{n}]");
        let group = p.group.as_deref().unwrap_or(GROUP);
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        let gw_ns = p.namespace.as_deref().unwrap_or(res.namespace());
        let mut accepted = |status: bool, reason: &'static str, message: String| {
            if !status {
                let d = match reason {
                    NO_MATCHING_PARENT => Diagnostic::error(
                        code::REFERENCED_RESOURCE_NOT_FOUND,
                        format!("Referenced gateway not found: {message}"),
                    ),
                    _ => Diagnostic::warning(code::NOTE, format!("not attached: {message}")),
                };
                diags.push(res.diag(d).at(at.clone()));
            }
            parents.push(RouteParentStatus {
                parent_ref: p.clone(),
                controller_name: CONTROLLER_NAME,
                conditions: vec![
                    Condition::new(ACCEPTED, status, reason, message),
                    rules.resolved_refs.clone(),
                ],
            });
        };
        if group != GROUP || kind != "Gateway" {
            accepted(
                false,
                UNSUPPORTED_VALUE,
                format!("{kind}.{group}: only Gateways are supported as parents"),
            );
            continue;
        }
        let known = ctx
            .gateways
            .iter()
            .find(|(r, _)| r.namespace() == gw_ns && r.name() == p.name);
        let Some(state) = states
            .iter_mut()
            .find(|s| s.res.namespace() == gw_ns && s.res.name() == p.name)
        else {
            if known.is_none() {
                accepted(
                    false,
                    NO_MATCHING_PARENT,
                    format!("Gateway {gw_ns}/{} does not exist", p.name),
                );
            }
            // Another controller's Gateway: its status is not ours to write.
            continue;
        };
        if !state.accepted.status {
            accepted(
                false,
                NO_MATCHING_PARENT,
                format!("Gateway {gw_ns}/{} is not accepted", p.name),
            );
            continue;
        }
        if let Some(why) = &rules.unsupported {
            accepted(false, UNSUPPORTED_VALUE, why.clone());
            continue;
        }
        let candidates: Vec<usize> = state
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                l.serves()
                    && p.section_name.as_ref().is_none_or(|s| *s == l.spec.name)
                    && p.port.is_none_or(|port| port == l.spec.port)
            })
            .map(|(i, _)| i)
            .collect();
        if candidates.is_empty() {
            accepted(
                false,
                NO_MATCHING_PARENT,
                format!("Gateway {gw_ns}/{} has no such listener", p.name),
            );
            continue;
        }
        let allowed: Vec<usize> = candidates
            .into_iter()
            .filter(|i| {
                let l = &state.listeners[*i];
                l.takes_http_routes() && l.allows_namespace(gw_ns, res.namespace())
            })
            .collect();
        if allowed.is_empty() {
            accepted(
                false,
                NOT_ALLOWED_BY_LISTENERS,
                format!(
                    "no listener of Gateway {gw_ns}/{} allows this route (its kind or namespace)",
                    p.name
                ),
            );
            continue;
        }
        let mut hosts = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for i in allowed {
            let l = &mut state.listeners[i];
            let matched = hostnames(&h.hostnames, l.spec.hostname.as_deref());
            if !matched.is_empty() {
                hosts.extend(matched);
                ports.insert(l.spec.port);
                l.attached += 1;
            }
        }
        if hosts.is_empty() {
            accepted(
                false,
                NO_MATCHING_LISTENER_HOSTNAME,
                format!(
                    "no hostname of the route matches a listener of Gateway {gw_ns}/{}",
                    p.name
                ),
            );
            continue;
        }
        accepted(true, ACCEPTED, "Route was valid".into());

        // Bound to some of the Gateway's ports only (a sectionName or port): its matches say
        // which, as one Istio Gateway serves them all.
        let served: BTreeSet<u32> = state
            .listeners
            .iter()
            .filter(|l| l.serves())
            .map(|l| l.spec.port)
            .collect();
        let mut http = rules.http.clone();
        if let [port] = ports.iter().collect::<Vec<_>>()[..]
            && served.len() > 1
        {
            for route in &mut http {
                if route.matches.is_empty() {
                    route.matches.push(Default::default());
                }
                for m in &mut route.matches {
                    m.port = Some(*port);
                }
            }
        } else if ports.len() < served.len() && (p.section_name.is_some() || p.port.is_some()) {
            diags.push(
                res.diag(Diagnostic::warning(
                    code::UNSUPPORTED_FIELD,
                    "attached to several but not all of the Gateway's ports: it is served on all of them",
                ))
                .at(at.clone()),
            );
        }
        let vs = istio::VirtualService {
            hosts: hosts.into_iter().collect(),
            gateways: vec![format!("{gw_ns}/{}", istio_gateway_name(&p.name))],
            http,
            ..Default::default()
        };
        let mut r = Resource::new(
            &format!("{}-{n}-{SUFFIX}", res.name()),
            res.namespace(),
            Spec::VirtualService(vs),
        );
        r.source = res.source.clone();
        made.push(r);
    }
    let status = RouteStatus {
        namespace: res.namespace().to_owned(),
        name: res.name().to_owned(),
        parents,
    };
    (status, made)
}

/// The route's hostnames a listener takes (its own when the route has none); `*` for neither.
fn hostnames(route: &[String], listener: Option<&str>) -> Vec<String> {
    if route.is_empty() {
        return vec![listener.unwrap_or("*").to_owned()];
    }
    let mut out: Vec<String> = route
        .iter()
        .filter_map(|h| intersect(h, listener))
        .collect();
    out.dedup();
    out
}

/// The more specific of two hostnames when one covers the other (`*.example.com` covers
/// `a.example.com` and `a.b.example.com`).
fn intersect(route: &str, listener: Option<&str>) -> Option<String> {
    let Some(listener) = listener else {
        return Some(route.to_owned());
    };
    let covers = |wild: &str, name: &str| {
        wild.strip_prefix('*')
            .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
    };
    if route.eq_ignore_ascii_case(listener) || covers(listener, route) {
        Some(route.to_owned())
    } else if covers(route, listener) {
        Some(listener.to_owned())
    } else {
        None
    }
}

/// A path match as VirtualService matches: Gateway API's PathPrefix matches whole segments,
/// so `/foo` is `exact: /foo` and `prefix: /foo/`.
#[derive(Clone)]
enum Uri {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// The Gateway API's precedence of a match: exact before prefix before regex, longer paths
/// first, then a method, then more header matches, then more query matches.
type Rank = (u8, usize, bool, usize, usize);

fn rules(ctx: &Ctx, res: &Resource, h: &HttpRoute, diags: &mut Vec<Diagnostic>) -> Rules {
    let mut out = Rules {
        http: Vec::new(),
        resolved_refs: Condition::new(
            RESOLVED_REFS,
            true,
            RESOLVED_REFS,
            "All references resolved",
        ),
        unsupported: None,
    };
    let mut ranked: Vec<(Rank, istio::HttpRoute)> = Vec::new();
    for (i, rule) in h.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let action = action(ctx, res, &at, rule, &mut out, diags);
        let default_match = [HttpRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default_match[..]
        } else {
            &rule.matches[..]
        };
        let rule_name = rule.name.clone().unwrap_or_else(|| i.to_string());
        for (j, m) in matches.iter().enumerate() {
            let (uris, rank) = uris(m);
            let base = base_match(m);
            let with = |uri: &Uri| istio::HttpMatchRequest {
                uri: Some(match uri {
                    Uri::Exact(p) => StringMatch {
                        exact: Some(p.clone()),
                        ..Default::default()
                    },
                    Uri::Prefix(p) => StringMatch {
                        prefix: Some(p.clone()),
                        ..Default::default()
                    },
                    Uri::Regex(p) => StringMatch {
                        regex: Some(p.clone()),
                        ..Default::default()
                    },
                }),
                ..base.clone()
            };
            let name = format!("{rule_name}.{j}");
            if action.prefix_rewrite.is_some() && uris.len() > 1 {
                // The replacement differs for the exact and the prefix halves.
                for (k, uri) in uris.iter().enumerate() {
                    let mut route = action.route.clone();
                    route.name = Some(format!("{name}.{k}"));
                    route.matches = vec![with(uri)];
                    action.rewrite_for(&mut route, uri);
                    ranked.push((rank, route));
                }
            } else {
                let mut route = action.route.clone();
                route.name = Some(name);
                route.matches = uris.iter().map(with).collect();
                if let Some(uri) = uris.first() {
                    action.rewrite_for(&mut route, uri);
                }
                ranked.push((rank, route));
            }
        }
    }
    // Stable: equal ranks keep the rules' order.
    ranked.sort_by_key(|r| std::cmp::Reverse(r.0));
    out.http = ranked.into_iter().map(|(_, r)| r).collect();
    out
}

fn uris(m: &HttpRouteMatch) -> (Vec<Uri>, Rank) {
    let (kind, value) = match &m.path {
        Some(p) => (
            p.type_.as_deref().unwrap_or("PathPrefix"),
            p.value.as_deref().unwrap_or("/"),
        ),
        None => ("PathPrefix", "/"),
    };
    let (uris, rank) = match kind {
        "Exact" => (vec![Uri::Exact(value.to_owned())], 3),
        "RegularExpression" => (vec![Uri::Regex(value.to_owned())], 1),
        _ => {
            let trimmed = value.trim_end_matches('/');
            if trimmed.is_empty() {
                (vec![Uri::Prefix("/".into())], 2)
            } else {
                (
                    vec![
                        Uri::Exact(trimmed.to_owned()),
                        Uri::Prefix(format!("{trimmed}/")),
                    ],
                    2,
                )
            }
        }
    };
    let rank = (
        rank,
        value.len(),
        m.method.is_some(),
        m.headers.len(),
        m.query_params.len(),
    );
    (uris, rank)
}

/// A match's headers, query parameters and method (the first of duplicate names wins).
fn base_match(m: &HttpRouteMatch) -> istio::HttpMatchRequest {
    let string_match = |type_: Option<&str>, value: &str| match type_ {
        Some("RegularExpression") => StringMatch {
            regex: Some(value.to_owned()),
            ..Default::default()
        },
        _ => StringMatch {
            exact: Some(value.to_owned()),
            ..Default::default()
        },
    };
    let mut headers = BTreeMap::new();
    for hm in &m.headers {
        headers
            .entry(hm.name.to_ascii_lowercase())
            .or_insert_with(|| string_match(hm.type_.as_deref(), &hm.value));
    }
    let mut query_params = BTreeMap::new();
    for q in &m.query_params {
        query_params
            .entry(q.name.clone())
            .or_insert_with(|| string_match(q.type_.as_deref(), &q.value));
    }
    istio::HttpMatchRequest {
        headers,
        query_params,
        method: m.method.as_ref().map(|v| string_match(None, v)),
        ..Default::default()
    }
}

/// What a rule does, whatever its match.
struct Action {
    route: istio::HttpRoute,
    /// URLRewrite's ReplacePrefixMatch: set per match.
    prefix_rewrite: Option<String>,
}

impl Action {
    fn rewrite_for(&self, route: &mut istio::HttpRoute, uri: &Uri) {
        let Some(replacement) = &self.prefix_rewrite else {
            return;
        };
        let uri = match uri {
            Uri::Exact(_) if replacement.is_empty() => "/".to_owned(),
            Uri::Exact(_) => replacement.clone(),
            Uri::Prefix(_) if replacement.ends_with('/') => replacement.clone(),
            Uri::Prefix(_) => format!("{replacement}/"),
            Uri::Regex(_) => return,
        };
        route.rewrite.get_or_insert_with(Default::default).uri = Some(uri);
    }
}

fn action(
    ctx: &Ctx,
    res: &Resource,
    at: &str,
    rule: &HttpRouteRule,
    out: &mut Rules,
    diags: &mut Vec<Diagnostic>,
) -> Action {
    let unsupported = |diags: &mut Vec<Diagnostic>, field: String, what: &str| {
        diags.push(
            res.diag(Diagnostic::warning(
                code::UNSUPPORTED_FIELD,
                format!("{field} is not supported by wasmesh yet: {what}"),
            ))
            .at(field),
        );
    };
    let mut route = istio::HttpRoute::default();
    let mut prefix_rewrite = None;
    let mut redirect = None;
    for (k, f) in rule.filters.iter().enumerate() {
        let field = format!("{at}.filters[{k}]");
        match (f.type_.as_str(), f) {
            (
                "RequestHeaderModifier",
                HttpRouteFilter {
                    request_header_modifier: Some(m),
                    ..
                },
            ) => {
                route.headers.get_or_insert_with(Default::default).request = Some(operations(m));
            }
            (
                "ResponseHeaderModifier",
                HttpRouteFilter {
                    response_header_modifier: Some(m),
                    ..
                },
            ) => {
                route.headers.get_or_insert_with(Default::default).response = Some(operations(m));
            }
            (
                "RequestRedirect",
                HttpRouteFilter {
                    request_redirect: Some(r),
                    ..
                },
            ) => {
                let uri = r.path.as_ref().and_then(|p| match p.type_.as_str() {
                    "ReplaceFullPath" => p.replace_full_path.clone(),
                    _ => {
                        unsupported(
                            diags,
                            format!("{field}.requestRedirect.path"),
                            "ReplacePrefixMatch in a redirect replaces the whole path",
                        );
                        p.replace_prefix_match.clone()
                    }
                });
                redirect = Some(istio::HttpRedirect {
                    uri,
                    authority: r.hostname.clone(),
                    port: r.port,
                    scheme: r.scheme.clone(),
                    // The Gateway API's default; Istio's is 301.
                    redirect_code: Some(r.status_code.unwrap_or(302)),
                    ..Default::default()
                });
            }
            (
                "URLRewrite",
                HttpRouteFilter {
                    url_rewrite: Some(r),
                    ..
                },
            ) => {
                let rewrite = route.rewrite.get_or_insert_with(Default::default);
                rewrite.authority = r.hostname.clone();
                if let Some(p) = &r.path {
                    match p.type_.as_str() {
                        "ReplaceFullPath" => {
                            rewrite.uri_regex_rewrite = Some(istio::RegexRewrite {
                                pattern: "/.*".into(),
                                rewrite: p.replace_full_path.clone().unwrap_or_default(),
                            })
                        }
                        _ => {
                            prefix_rewrite =
                                Some(p.replace_prefix_match.clone().unwrap_or_default())
                        }
                    }
                }
            }
            (
                "RequestMirror",
                HttpRouteFilter {
                    request_mirror: Some(m),
                    ..
                },
            ) => match backend(ctx, res, &m.backend_ref) {
                Ok(destination) => {
                    let percent = match (&m.fraction, m.percent) {
                        (Some(f), _) => Some(
                            f64::from(f.numerator) * 100.0
                                / f64::from(f.denominator.unwrap_or(100).max(1)),
                        ),
                        (None, p) => p.map(f64::from),
                    };
                    route.mirrors.push(istio::HttpMirrorPolicy {
                        destination,
                        percentage: percent.map(|value| istio::Percent { value }),
                    });
                }
                Err(problem) => refs_problem(
                    res,
                    &format!("{field}.requestMirror.backendRef"),
                    problem,
                    out,
                    diags,
                ),
            },
            _ => {
                let why = format!("filter {:?} is not supported", f.type_);
                unsupported(diags, field.clone(), "the route is not accepted");
                out.unsupported.get_or_insert(why);
            }
        }
    }
    if let Some(t) = &rule.timeouts {
        if let Some(request) = &t.request {
            match crate::duration::parse(request) {
                Ok(d) if d.is_zero() => {}
                Ok(d) if d.subsec_millis() == 0 && d.subsec_nanos() == 0 => {
                    route.timeout = Some(format!("{}s", d.as_secs()))
                }
                Ok(d) => route.timeout = Some(format!("{}ms", crate::duration::millis(d))),
                Err(e) => diags.push(
                    res.diag(Diagnostic::error(
                        code::SCHEMA_VALIDATION_ERROR,
                        format!("Schema validation error: {at}.timeouts.request: {e}"),
                    ))
                    .at(format!("{at}.timeouts.request")),
                ),
            }
        }
        if t.backend_request.is_some() {
            unsupported(diags, format!("{at}.timeouts.backendRequest"), "ignored");
        }
    }
    for (field, set) in [
        ("retry", rule.retry.is_some()),
        ("sessionPersistence", rule.session_persistence.is_some()),
    ] {
        if set {
            unsupported(diags, format!("{at}.{field}"), "ignored");
        }
    }

    if let Some(redirect) = redirect {
        route.redirect = Some(redirect);
        // A redirect is the whole answer: no rewrite, no mirror.
        route.rewrite = None;
        route.mirrors.clear();
        return Action {
            route,
            prefix_rewrite: None,
        };
    }
    let mut weights = Vec::new();
    let mut destinations = Vec::new();
    let mut asked = false;
    for (k, b) in rule.backend_refs.iter().enumerate() {
        let field = format!("{at}.backendRefs[{k}]");
        let weight = b.weight.unwrap_or(1);
        if weight == 0 {
            continue;
        }
        asked = true;
        match backend(ctx, res, &b.backend()) {
            Ok(destination) => {
                let mut headers: Option<istio::Headers> = None;
                for (l, f) in b.filters.iter().enumerate() {
                    match (f.type_.as_str(), f) {
                        (
                            "RequestHeaderModifier",
                            HttpRouteFilter {
                                request_header_modifier: Some(m),
                                ..
                            },
                        ) => {
                            headers.get_or_insert_with(Default::default).request =
                                Some(operations(m))
                        }
                        (
                            "ResponseHeaderModifier",
                            HttpRouteFilter {
                                response_header_modifier: Some(m),
                                ..
                            },
                        ) => {
                            headers.get_or_insert_with(Default::default).response =
                                Some(operations(m))
                        }
                        _ => unsupported(
                            diags,
                            format!("{field}.filters[{l}]"),
                            "ignored on a backend",
                        ),
                    }
                }
                weights.push(weight);
                destinations.push(istio::HttpRouteDestination {
                    destination,
                    weight: None,
                    headers,
                });
            }
            Err(problem) => refs_problem(res, &field, problem, out, diags),
        }
    }
    if destinations.is_empty() {
        // No backend to send to: 500, as the Gateway API requires.
        route.direct_response = Some(istio::HttpDirectResponse {
            status: 500,
            body: None,
        });
        route.rewrite = None;
        if !asked && rule.backend_refs.is_empty() {
            diags.push(
                res.diag(Diagnostic::info(
                    code::NOTE,
                    format!("{at}: no backendRefs: requests get 500"),
                ))
                .at(at.to_owned()),
            );
        }
    } else {
        if destinations.len() > 1 {
            for (d, w) in destinations.iter_mut().zip(percentages(&weights)) {
                d.weight = Some(w);
            }
        }
        route.route = destinations;
    }
    Action {
        route,
        prefix_rewrite,
    }
}

/// A backend that cannot be used: ResolvedRefs False (the first reason found) and a finding.
fn refs_problem(
    res: &Resource,
    field: &str,
    (reason, message): (&'static str, String),
    out: &mut Rules,
    diags: &mut Vec<Diagnostic>,
) {
    let d = match reason {
        BACKEND_NOT_FOUND => {
            Diagnostic::error(code::REFERENCED_RESOURCE_NOT_FOUND, message.clone())
        }
        _ => Diagnostic::warning(code::UNSUPPORTED_FIELD, message.clone()),
    };
    diags.push(res.diag(d).at(field.to_owned()));
    if out.resolved_refs.status {
        out.resolved_refs = Condition::new(RESOLVED_REFS, false, reason, message);
    }
}

/// A Service backend as a destination: `<name>.<namespace>.svc.<suffix>` at its port.
fn backend(
    ctx: &Ctx,
    res: &Resource,
    b: &super::BackendObjectReference,
) -> Result<istio::Destination, (&'static str, String)> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !matches!(group, "" | "core") || kind != "Service" {
        return Err((
            INVALID_KIND,
            format!("backend {kind} {:?}: only Services are supported", b.name),
        ));
    }
    let ns = b.namespace.as_deref().unwrap_or(res.namespace());
    if ns != res.namespace() {
        return Err((
            REF_NOT_PERMITTED,
            format!(
                "backend {ns}/{}: another namespace's Service needs a ReferenceGrant, which wasmesh does not support",
                b.name
            ),
        ));
    }
    let host = format!("{}.{ns}.{}", b.name, ctx.domain_suffix);
    if !ctx.services.contains(host.as_str()) {
        return Err((
            BACKEND_NOT_FOUND,
            format!("Referenced host not found: {host:?}"),
        ));
    }
    let Some(port) = b.port else {
        return Err((
            BACKEND_NOT_FOUND,
            format!("backend {host:?}: a Service backend needs a port"),
        ));
    };
    Ok(istio::Destination {
        host,
        subset: None,
        port: Some(istio::PortSelector { number: port }),
    })
}

fn operations(m: &HttpHeaderFilter) -> istio::HeaderOperations {
    istio::HeaderOperations {
        set: m
            .set
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        add: m
            .add
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        remove: m.remove.clone(),
    }
}

/// Relative weights as percentages adding up to 100 (largest remainders first, then the
/// earlier), as Istio standardizes them.
fn percentages(weights: &[u32]) -> Vec<i32> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let mut out: Vec<i32> = weights
        .iter()
        .map(|w| (u64::from(*w) * 100 / total) as i32)
        .collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(u64::from(weights[*i]) * 100 % total));
    let left = 100 - out.iter().sum::<i32>();
    for i in order.into_iter().take(left.max(0) as usize) {
        out[i] += 1;
    }
    out
}

#[cfg(test)]
pub(super) fn test_percentages(weights: &[u32]) -> Vec<i32> {
    percentages(weights)
}

#[cfg(test)]
pub(super) fn test_intersect(route: &str, listener: Option<&str>) -> Option<String> {
    intersect(route, listener)
}
