//! Gateway API Gateways: each listener checked (protocol, port, TLS and its Secret, route
//! kinds), the valid ones made servers of an Istio Gateway.

use std::collections::BTreeMap;

use super::reason::*;
use super::{
    Condition, GATEWAY_NAME_LABEL, GROUP, Gateway, GatewayStatus, Listener, ListenerStatus,
    RouteGroupKind, istio_gateway_name,
};
use crate::diag::{Diagnostic, code};
use crate::istio::{self, TlsSecret};
use crate::manifests::{Resource, Spec};

pub(super) struct GatewayState<'a> {
    pub res: &'a Resource,
    /// Accepted: its listeners are served (see [`ListenerState::serves`]).
    pub accepted: Condition,
    pub listeners: Vec<ListenerState<'a>>,
}

pub(super) struct ListenerState<'a> {
    pub spec: &'a Listener,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub accepted: Condition,
    pub resolved_refs: Condition,
    /// Its certificate (or passthrough) is usable: a server can be made.
    pub tls_ok: bool,
    pub tls: Option<istio::ServerTlsSettings>,
    pub attached: u32,
}

impl ListenerState<'_> {
    /// Whether it is a server of the Istio Gateway.
    pub fn serves(&self) -> bool {
        self.accepted.status && self.tls_ok
    }

    /// Whether an HTTPRoute may attach to it (its kinds), ignoring namespaces.
    pub fn takes_http_routes(&self) -> bool {
        self.supported_kinds.iter().any(|k| k.kind == "HTTPRoute")
    }

    /// `Same`, `All` or `Selector` (read as `Same`: namespace labels are not known here).
    pub fn allows_namespace(&self, gateway_namespace: &str, route_namespace: &str) -> bool {
        match self.from() {
            "All" => true,
            _ => gateway_namespace == route_namespace,
        }
    }

    fn from(&self) -> &str {
        self.spec
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.as_deref())
            .unwrap_or("Same")
    }
}

fn http_route_kind() -> RouteGroupKind {
    RouteGroupKind {
        group: Some(GROUP.to_owned()),
        kind: "HTTPRoute".to_owned(),
    }
}

/// Checks a Gateway of ours and its listeners.
pub(super) fn evaluate<'a>(
    res: &'a Resource,
    g: &'a Gateway,
    secrets: &BTreeMap<(&str, &str), &TlsSecret>,
    diags: &mut Vec<Diagnostic>,
) -> GatewayState<'a> {
    let warn = |diags: &mut Vec<Diagnostic>, field: &str, what: String| {
        diags.push(
            res.diag(Diagnostic::warning(
                code::UNSUPPORTED_FIELD,
                format!("{field} is not supported by wasmesh yet: {what}"),
            ))
            .at(field),
        );
    };
    if !g.addresses.is_empty() {
        warn(
            diags,
            "spec.addresses",
            "ignored: the gateway's proxies are those with its label".into(),
        );
    }
    let listeners: Vec<ListenerState> = g
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| listener(res, i, l, secrets, diags))
        .collect();
    let parameters = g
        .infrastructure
        .as_ref()
        .is_some_and(|i| i.parameters_ref.is_some());
    let accepted = if parameters {
        warn(
            diags,
            "spec.infrastructure.parametersRef",
            "the Gateway is not accepted".into(),
        );
        Condition::new(
            ACCEPTED,
            false,
            INVALID_PARAMETERS,
            "infrastructure.parametersRef is not supported",
        )
    } else if !listeners.iter().any(ListenerState::serves) {
        Condition::new(ACCEPTED, false, LISTENERS_NOT_VALID, "no listener is valid")
    } else {
        Condition::new(ACCEPTED, true, ACCEPTED, "Resource accepted")
    };
    GatewayState {
        res,
        accepted,
        listeners,
    }
}

fn listener<'a>(
    res: &Resource,
    i: usize,
    l: &'a Listener,
    secrets: &BTreeMap<(&str, &str), &TlsSecret>,
    diags: &mut Vec<Diagnostic>,
) -> ListenerState<'a> {
    let at = format!("spec.listeners[{i}]");
    let mut problem = |field: &str, message: String| {
        diags.push(
            res.diag(Diagnostic::warning(
                code::NOTE,
                format!("listener {:?}: {message}", l.name),
            ))
            .at(format!("{at}{field}")),
        );
        message
    };
    let http = matches!(l.protocol.as_str(), "HTTP" | "HTTPS");
    let tls_protocol = matches!(l.protocol.as_str(), "HTTPS" | "TLS");
    let mut accepted = Condition::new(ACCEPTED, true, ACCEPTED, "No errors found");
    if !matches!(l.protocol.as_str(), "HTTP" | "HTTPS" | "TLS" | "TCP") {
        let m = problem(
            ".protocol",
            format!("protocol {:?} is not supported", l.protocol),
        );
        accepted = Condition::new(ACCEPTED, false, UNSUPPORTED_PROTOCOL, m);
    } else if !(1..=65535).contains(&l.port) {
        let m = problem(".port", format!("{} is not a port", l.port));
        accepted = Condition::new(ACCEPTED, false, PORT_UNAVAILABLE, m);
    }

    // The route kinds: HTTPRoute on HTTP and HTTPS listeners; wasmesh converts no other.
    let asked = l
        .allowed_routes
        .as_ref()
        .map_or(&[][..], |a| a.kinds.as_slice());
    let mut resolved = Condition::new(RESOLVED_REFS, true, RESOLVED_REFS, "No errors found");
    let supported_kinds = if asked.is_empty() {
        if http {
            vec![http_route_kind()]
        } else {
            Vec::new()
        }
    } else {
        let ok = |k: &&RouteGroupKind| {
            http && k.kind == "HTTPRoute" && k.group.as_deref().is_none_or(|g| g == GROUP)
        };
        if let Some(bad) = asked.iter().find(|k| !ok(k)) {
            let m = problem(
                ".allowedRoutes.kinds",
                format!(
                    "route kind {:?} is not supported on a {} listener",
                    bad.kind, l.protocol
                ),
            );
            resolved = Condition::new(RESOLVED_REFS, false, INVALID_ROUTE_KINDS, m);
        }
        asked
            .iter()
            .filter(ok)
            .map(|_| http_route_kind())
            .take(1)
            .collect()
    };
    if l.allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
        .is_some_and(|n| n.from.as_deref() == Some("Selector"))
    {
        problem(
            ".allowedRoutes.namespaces.from",
            "Selector is not supported by wasmesh yet: read as Same".into(),
        );
    }

    // TLS.
    let mut tls_ok = true;
    let mut tls = None;
    match (&l.tls, tls_protocol) {
        (None, true) => {
            let m = problem(".tls", format!("a {} listener needs tls", l.protocol));
            resolved = Condition::new(RESOLVED_REFS, false, INVALID_CERTIFICATE_REF, m);
            tls_ok = false;
        }
        (Some(_), false) => {
            problem(".tls", format!("ignored on a {} listener", l.protocol));
        }
        (None, false) => {}
        (Some(t), true) => match t.mode.as_deref().unwrap_or("Terminate") {
            "Passthrough" if l.protocol == "TLS" => {
                tls = Some(istio::ServerTlsSettings {
                    mode: Some("PASSTHROUGH".into()),
                    ..Default::default()
                });
            }
            "Terminate" => match certificate(res, t, secrets) {
                Ok(name) => {
                    if t.certificate_refs.len() > 1 {
                        problem(
                            ".tls.certificateRefs",
                            "only the first certificate is served".into(),
                        );
                    }
                    tls = Some(istio::ServerTlsSettings {
                        mode: Some("SIMPLE".into()),
                        credential_name: Some(name),
                        ..Default::default()
                    });
                }
                Err((reason, message)) => {
                    let m = problem(".tls.certificateRefs", message);
                    resolved = Condition::new(RESOLVED_REFS, false, reason, m);
                    tls_ok = false;
                }
            },
            mode => {
                let m = problem(
                    ".tls.mode",
                    format!(
                        "mode {mode:?} is not supported on a {} listener",
                        l.protocol
                    ),
                );
                accepted = Condition::new(ACCEPTED, false, UNSUPPORTED_PROTOCOL, m);
            }
        },
    }
    ListenerState {
        spec: l,
        supported_kinds,
        accepted,
        resolved_refs: resolved,
        tls_ok,
        tls,
        attached: 0,
    }
}

/// The Secret a terminating listener serves (its name), or why there is none.
fn certificate(
    res: &Resource,
    t: &super::ListenerTls,
    secrets: &BTreeMap<(&str, &str), &TlsSecret>,
) -> Result<String, (&'static str, String)> {
    let Some(r) = t.certificate_refs.first() else {
        return Err((INVALID_CERTIFICATE_REF, "no certificateRefs".into()));
    };
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Secret");
    if !matches!(group, "" | "core") || kind != "Secret" {
        return Err((
            INVALID_CERTIFICATE_REF,
            format!("{kind} {:?}: only Secrets are supported", r.name),
        ));
    }
    if let Some(ns) = &r.namespace
        && ns != res.namespace()
    {
        return Err((
            REF_NOT_PERMITTED,
            format!(
                "Secret {ns}/{}: another namespace's Secret needs a ReferenceGrant, which wasmesh does not support",
                r.name
            ),
        ));
    }
    let Some(secret) = secrets.get(&(res.namespace(), r.name.as_str())) else {
        return Err((
            INVALID_CERTIFICATE_REF,
            format!("Secret {}/{} not found", res.namespace(), r.name),
        ));
    };
    if secret.get(&["tls.crt", "cert"]).is_none() || secret.get(&["tls.key", "key"]).is_none() {
        return Err((
            INVALID_CERTIFICATE_REF,
            format!(
                "Secret {}/{} has no tls.crt and tls.key",
                res.namespace(),
                r.name
            ),
        ));
    }
    Ok(r.name.clone())
}

/// The Istio Gateway of an accepted Gateway: a server per listener that serves.
pub(super) fn istio_gateway(s: &GatewayState) -> Option<Resource> {
    if !s.accepted.status {
        return None;
    }
    let ns = s.res.namespace();
    let servers = s
        .listeners
        .iter()
        .filter(|l| l.serves())
        .map(|l| {
            let filter = match l.from() {
                "All" => "*",
                _ => ns,
            };
            let host = l.spec.hostname.as_deref().unwrap_or("*");
            istio::Server {
                port: istio::ServerPort {
                    number: l.spec.port,
                    protocol: l.spec.protocol.clone(),
                    name: l.spec.name.clone(),
                    target_port: None,
                },
                hosts: vec![format!("{filter}/{host}")],
                tls: l.tls.clone(),
                name: Some(l.spec.name.clone()),
                bind: None,
                default_endpoint: None,
            }
        })
        .collect();
    let gateway = istio::Gateway {
        servers,
        selector: BTreeMap::from([(GATEWAY_NAME_LABEL.to_owned(), s.res.name().to_owned())]),
    };
    let mut r = Resource::new(
        &istio_gateway_name(s.res.name()),
        ns,
        Spec::Gateway(gateway),
    );
    r.source = s.res.source.clone();
    Some(r)
}

/// The Gateway's status, once routes are attached.
pub(super) fn status(s: &GatewayState) -> GatewayStatus {
    let programmed = if s.accepted.status {
        Condition::new(PROGRAMMED, true, PROGRAMMED, "Resource programmed")
    } else {
        Condition::new(PROGRAMMED, false, INVALID, s.accepted.message.clone())
    };
    GatewayStatus {
        namespace: s.res.namespace().to_owned(),
        name: s.res.name().to_owned(),
        conditions: vec![s.accepted.clone(), programmed],
        listeners: s
            .listeners
            .iter()
            .map(|l| ListenerStatus {
                name: l.spec.name.clone(),
                supported_kinds: l.supported_kinds.clone(),
                attached_routes: l.attached,
                conditions: vec![
                    l.accepted.clone(),
                    l.resolved_refs.clone(),
                    if s.accepted.status && l.serves() {
                        Condition::new(PROGRAMMED, true, PROGRAMMED, "No errors found")
                    } else {
                        Condition::new(PROGRAMMED, false, INVALID, "the listener is not served")
                    },
                ],
            })
            .collect(),
    }
}
