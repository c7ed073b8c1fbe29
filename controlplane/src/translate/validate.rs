//! Per-resource checks that parsing alone cannot make (Istio's validation webhook, roughly),
//! and notes on what wasmesh does not support. An error leaves the resource out.

use std::collections::BTreeSet;

use base64::Engine as _;

use super::registry::is_served;
use crate::diag::{Diagnostic, code};
use crate::duration;
use crate::istio::{self, Resolution, SimpleLb, StringMatch};
use crate::manifests::{Resource, Spec};

/// Envoy's retry conditions, which Istio's `retryOn` accepts (besides status codes).
const RETRY_ON: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status names (`grpcStatus`), by code.
pub(crate) const GRPC_STATUS: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

struct Check<'a> {
    res: &'a Resource,
    out: Vec<Diagnostic>,
}

impl Check<'_> {
    fn error(&mut self, field: &str, reason: impl std::fmt::Display) {
        self.out.push(
            self.res.diag(
                Diagnostic::error(
                    code::SCHEMA_VALIDATION_ERROR,
                    format!("Schema validation error: {field}: {reason}"),
                )
                .at(field),
            ),
        );
    }

    fn unsupported(&mut self, field: &str, what: &str) {
        self.out.push(
            self.res.diag(
                Diagnostic::warning(
                    code::UNSUPPORTED_FIELD,
                    format!("{field} is not supported by wasmesh yet: {what}"),
                )
                .at(field),
            ),
        );
    }

    fn note(&mut self, field: &str, what: &str) {
        self.out.push(
            self.res
                .diag(Diagnostic::info(code::NOTE, format!("{field}: {what}")).at(field)),
        );
    }

    fn deprecated(&mut self, field: &str, instead: &str) {
        self.out.push(
            self.res.diag(
                Diagnostic::warning(
                    code::DEPRECATED,
                    format!("Deprecated: {field} is deprecated; use {instead}"),
                )
                .at(field),
            ),
        );
    }

    fn duration(&mut self, field: &str, text: Option<&String>, min_ms: Option<u64>) {
        let Some(text) = text else {
            return;
        };
        match duration::parse(text) {
            Err(e) => self.error(field, e),
            Ok(d) => {
                if let Some(min) = min_ms
                    && d < std::time::Duration::from_millis(min)
                {
                    self.error(field, format!("duration {text:?} must be at least {min}ms"));
                }
            }
        }
    }

    fn regex(&mut self, field: &str, pattern: &str) {
        if let Err(e) = regex::Regex::new(pattern) {
            let problem = match e {
                regex::Error::Syntax(s) => s
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("error:"))
                    .map(|l| l.trim_start_matches("error:").trim().to_owned())
                    .unwrap_or(s),
                other => other.to_string(),
            };
            self.out.push(
                self.res.diag(
                    Diagnostic::error(
                        code::INVALID_REGEXP,
                        format!(
                            "Field {field:?} regular expression invalid: {pattern:?} ({problem})"
                        ),
                    )
                    .at(field),
                ),
            );
        }
    }

    /// Istio's string values: not empty, `*` only at the start or the end.
    fn wildcards(&mut self, field: &str, values: &[String]) {
        for v in values {
            let inner = v.strip_prefix('*').unwrap_or(v);
            let inner = inner.strip_suffix('*').unwrap_or(inner);
            if v.is_empty() {
                self.error(field, "empty value not allowed");
            } else if inner.contains('*') || (v.len() > 1 && v.starts_with('*') && v.ends_with('*'))
            {
                self.error(
                    field,
                    format!("{v:?}: `*` is allowed only as a prefix or a suffix"),
                );
            }
        }
    }

    /// Paths: wildcards, or templates whose `{*}` and `{**}` are whole segments, `{**}` last.
    fn paths(&mut self, field: &str, values: &[String]) {
        let (templates, plain): (Vec<String>, Vec<String>) =
            values.iter().cloned().partition(|v| v.contains('{'));
        self.wildcards(field, &plain);
        for v in templates {
            let segments: Vec<&str> = v.split('/').collect();
            let bad = !v.starts_with('/')
                || v.contains('*')
                    && segments
                        .iter()
                        .any(|s| s.contains('*') && !matches!(*s, "{*}" | "{**}"))
                || segments
                    .iter()
                    .any(|s| s.contains(['{', '}']) && !matches!(*s, "{*}" | "{**}"))
                || segments
                    .iter()
                    .position(|s| *s == "{**}")
                    .is_some_and(|i| i + 1 != segments.len());
            if bad {
                self.error(
                    field,
                    format!("{v:?}: a path template uses `{{*}}` and `{{**}}` as whole segments, `{{**}}` last"),
                );
            }
        }
    }

    fn string_match(&mut self, field: &str, m: &StringMatch, empty_ok: bool) {
        let set = [&m.exact, &m.prefix, &m.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set > 1 {
            self.error(field, "set only one of exact, prefix and regex");
        } else if set == 0 && !empty_ok {
            self.error(field, "set one of exact, prefix and regex");
        }
        if let Some(re) = &m.regex {
            self.regex(&format!("{field}.regex"), re);
        }
    }

    fn percent(&mut self, field: &str, p: Option<&istio::Percent>) {
        if let Some(p) = p
            && !(0.0..=100.0).contains(&p.value)
        {
            self.error(
                &format!("{field}.value"),
                format!("percentage {} is not in range 0..100", p.value),
            );
        }
    }

    fn headers(&mut self, field: &str, h: Option<&istio::Headers>) {
        let Some(h) = h else {
            return;
        };
        for (dir, ops) in [("request", &h.request), ("response", &h.response)] {
            let Some(ops) = ops else {
                continue;
            };
            let names = ops
                .set
                .keys()
                .chain(ops.add.keys())
                .chain(ops.remove.iter());
            for name in names {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.error(
                        &format!("{field}.{dir}"),
                        format!("invalid header name {name:?}"),
                    );
                }
            }
        }
    }
}

/// Checks one resource; errors mean it is left out.
pub(crate) fn resource(r: &Resource) -> Vec<Diagnostic> {
    let mut c = Check {
        res: r,
        out: Vec::new(),
    };
    if r.name().is_empty() {
        c.error("metadata.name", "must not be empty");
    }
    match &r.spec {
        Spec::VirtualService(vs) => virtual_service(&mut c, vs),
        Spec::DestinationRule(dr) => destination_rule(&mut c, dr),
        Spec::ServiceEntry(se) => service_entry(&mut c, se),
        Spec::WorkloadEntry(we) => workload(&mut c, "spec", we),
        Spec::WasmPlugin(wp) => wasm_plugin(&mut c, wp),
        Spec::PeerAuthentication(pa) => peer_authentication(&mut c, pa),
        Spec::AuthorizationPolicy(ap) => authorization_policy(&mut c, ap),
        Spec::Telemetry(t) => telemetry(&mut c, t),
        Spec::MeshConfig(m) => mesh_config(&mut c, m),
        Spec::Gateway(g) => gateway(&mut c, g),
        Spec::Secret(_) => {}
        // Checked by their conversion (`gateway_api`), which reports as Istio's status does.
        Spec::KubeGateway(_) | Spec::HttpRoute(_) => {}
    }
    c.out
}

/// A percentage Istio takes (0 to 100, a number).
fn percentage(c: &mut Check, field: &str, value: Option<f64>) {
    if let Some(v) = value
        && !(v.is_finite() && (0.0..=100.0).contains(&v))
    {
        c.error(field, format!("percentage {v} is not in range 0..100"));
    }
}

/// `targetRefs` pick gateways and waypoints, which wasmesh does not configure; with a
/// selector they are an error (`unused`: what that means for sidecars).
fn target_refs(c: &mut Check, selector: bool, refs: usize, unused: &str) {
    if refs == 0 {
        return;
    }
    if selector {
        c.error(
            "spec.targetRefs",
            "selector and targetRefs are mutually exclusive",
        );
    } else {
        c.note(
            "spec.targetRefs",
            &format!("selects gateways and waypoints, not sidecars: {unused}"),
        );
    }
}

fn telemetry(c: &mut Check, t: &istio::Telemetry) {
    let refs = t.target_refs.len() + usize::from(t.target_ref.is_some());
    target_refs(
        c,
        t.selector.is_some(),
        refs,
        "no sidecar uses this Telemetry",
    );
    if t.target_ref.is_some() {
        c.deprecated("spec.targetRef", "spec.targetRefs");
    }
    let root = c.res.namespace() == crate::plugins::ROOT_NAMESPACE;
    if root
        && t.selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty())
    {
        c.note(
            "spec.selector",
            "in the root namespace a selector picks workloads of that namespace only, not \
             the mesh's (as Istio)",
        );
    }
    for (i, e) in t.tracing.iter().enumerate() {
        let at = format!("spec.tracing[{i}]");
        for (j, p) in e.providers.iter().enumerate() {
            if p.name.trim().is_empty() {
                c.error(&format!("{at}.providers[{j}].name"), "must be set");
            }
        }
        if e.providers.len() > 1 {
            c.unsupported(
                &format!("{at}.providers"),
                "one provider per tracing entry: the first is used (as Istio)",
            );
        }
        percentage(
            c,
            &format!("{at}.randomSamplingPercentage"),
            e.random_sampling_percentage,
        );
        if !e.custom_tags.is_empty() {
            c.unsupported(&format!("{at}.customTags"), "spans carry no custom tags");
        }
        if let Some(mode) = e.match_.as_ref().and_then(|m| m.mode)
            && mode != istio::TelemetryWorkloadMode::ClientAndServer
        {
            c.unsupported(
                &format!("{at}.match.mode"),
                "a sidecar has one tracing configuration for its client and server sides: \
                 this entry applies to both",
            );
        }
        if e.use_request_id_for_trace_sampling.is_some() {
            c.unsupported(
                &format!("{at}.useRequestIdForTraceSampling"),
                "ignored (no sampling decision is read from the request id)",
            );
        }
        if e.enable_istio_tags.is_some() {
            c.unsupported(&format!("{at}.enableIstioTags"), "ignored");
        }
        if e.disable_context_propagation == Some(true) {
            c.unsupported(
                &format!("{at}.disableContextPropagation"),
                "ignored: trace context is always propagated",
            );
        }
    }
    if t.metrics.is_some() {
        c.unsupported(
            "spec.metrics",
            "ignored: Istio's standard metrics are always reported",
        );
    }
    if t.access_logging.is_some() {
        c.unsupported("spec.accessLogging", "ignored");
    }
}

/// The mesh config (`data.mesh`): what Istio's validation refuses, and what wasmesh does not
/// read.
/// Istio's Gateway: what each server needs to be served as written.
fn gateway(c: &mut Check, g: &istio::Gateway) {
    if g.servers.is_empty() {
        c.error("spec.servers", "at least one server is required");
    }
    if g.selector.is_empty() {
        c.note(
            "spec.selector",
            "no selector: the Gateway applies to every gateway proxy in the mesh",
        );
    }
    let mut names = BTreeSet::new();
    for (i, s) in g.servers.iter().enumerate() {
        let at = format!("spec.servers[{i}]");
        let p = &s.port;
        if !(1..=65535).contains(&p.number) {
            c.error(
                &format!("{at}.port.number"),
                format!("{} is not a port", p.number),
            );
        }
        let protocol = p.protocol.to_ascii_uppercase();
        if !GATEWAY_PROTOCOLS.contains(&protocol.as_str()) {
            c.error(
                &format!("{at}.port.protocol"),
                format!(
                    "{:?} is not one of {}",
                    p.protocol,
                    GATEWAY_PROTOCOLS.join(", ")
                ),
            );
        }
        if p.name.is_empty() {
            c.note(&format!("{at}.port.name"), "a port name is expected");
        }
        if let Some(name) = &s.name
            && !names.insert(name.clone())
        {
            c.error(
                &format!("{at}.name"),
                format!("{name:?}: another server has this name"),
            );
        }
        if s.hosts.is_empty() {
            c.error(&format!("{at}.hosts"), "at least one host is required");
        }
        for (j, h) in s.hosts.iter().enumerate() {
            let host = h.split_once('/').map_or(h.as_str(), |(_, host)| host);
            let stars = host.matches('*').count();
            if host.is_empty()
                || stars > 1
                || (stars == 1 && host != "*" && !host.starts_with("*."))
            {
                c.error(
                    &format!("{at}.hosts[{j}]"),
                    format!("{h:?}: a host is a name, \"*\" or \"*.suffix\", with an optional \"namespace/\""),
                );
            }
        }
        if s.bind.is_some() {
            c.unsupported(
                &format!("{at}.bind"),
                "the gateway's listen address is its own",
            );
        }
        if s.default_endpoint.is_some() {
            c.unsupported(&format!("{at}.defaultEndpoint"), "ignored");
        }
        let tls_protocol = matches!(protocol.as_str(), "HTTPS" | "TLS");
        let Some(tls) = &s.tls else {
            if tls_protocol {
                c.error(
                    &format!("{at}.tls"),
                    format!("required on a {protocol} server"),
                );
            }
            continue;
        };
        let at = format!("{at}.tls");
        if tls.https_redirect && protocol != "HTTP" {
            c.note(
                &format!("{at}.httpsRedirect"),
                "only redirects on an HTTP server",
            );
        }
        let mode = tls.mode.as_deref().map(str::to_ascii_uppercase);
        match mode.as_deref() {
            None if tls_protocol => c.error(
                &format!("{at}.mode"),
                format!("required on a {protocol} server"),
            ),
            None | Some("SIMPLE" | "MUTUAL" | "ISTIO_MUTUAL" | "PASSTHROUGH") => {}
            Some(m @ ("AUTO_PASSTHROUGH" | "OPTIONAL_MUTUAL")) => c.error(
                &format!("{at}.mode"),
                format!("{m} is not supported by wasmesh"),
            ),
            Some(m) => c.error(
                &format!("{at}.mode"),
                format!("{m:?} is not one of PASSTHROUGH, SIMPLE, MUTUAL, ISTIO_MUTUAL"),
            ),
        }
        if mode.is_some() && !tls_protocol {
            c.error(
                &format!("{at}.mode"),
                format!("TLS needs a port of protocol HTTPS or TLS, not {protocol}"),
            );
        }
        if mode.as_deref() == Some("PASSTHROUGH") && protocol != "TLS" {
            c.error(
                &format!("{at}.mode"),
                "PASSTHROUGH needs a port of protocol TLS",
            );
        }
        if matches!(mode.as_deref(), Some("SIMPLE" | "MUTUAL")) {
            let files = tls.server_certificate.is_some() || tls.private_key.is_some();
            match (&tls.credential_name, files) {
                (Some(_), true) => c.error(
                    &format!("{at}.credentialName"),
                    "set either credentialName or serverCertificate and privateKey, not both",
                ),
                (None, false) if tls.credential_names.is_empty() => c.error(
                    &at,
                    "credentialName, or serverCertificate and privateKey, is required",
                ),
                (None, true) if tls.server_certificate.is_none() || tls.private_key.is_none() => {
                    c.error(&at, "serverCertificate and privateKey go together")
                }
                _ => {}
            }
            if mode.as_deref() == Some("MUTUAL")
                && tls.credential_name.is_none()
                && tls.credential_names.is_empty()
                && tls.ca_certificates.is_none()
            {
                c.error(
                    &format!("{at}.caCertificates"),
                    "MUTUAL needs the CA that verifies clients",
                );
            }
        }
        for (field, set) in [
            ("credentialNames", !tls.credential_names.is_empty()),
            ("caCrl", tls.ca_crl.is_some()),
            (
                "verifyCertificateSpki",
                !tls.verify_certificate_spki.is_empty(),
            ),
            (
                "verifyCertificateHash",
                !tls.verify_certificate_hash.is_empty(),
            ),
            ("cipherSuites", !tls.cipher_suites.is_empty()),
        ] {
            if set {
                c.unsupported(&format!("{at}.{field}"), "not enforced by wasmesh: ignored");
            }
        }
        for (field, v) in [
            ("minProtocolVersion", &tls.min_protocol_version),
            ("maxProtocolVersion", &tls.max_protocol_version),
        ] {
            if let Some(v) = v
                && !matches!(v.as_str(), "TLS_AUTO" | "TLSV1_2" | "TLSV1_3")
            {
                c.note(
                    &format!("{at}.{field}"),
                    &format!("{v}: wasmesh serves TLS 1.2 and 1.3 only"),
                );
            }
        }
    }
}

/// A TLS or TCP route's destinations: one at least; one takes all (weights are not split).
fn l4_destinations(c: &mut Check, at: &str, count: usize, what: &str) {
    if count == 0 {
        c.error(
            &format!("{at}.route"),
            "at least one destination is required",
        );
    }
    if count > 1 {
        c.unsupported(
            &format!("{at}.route"),
            &format!("weights across {what} destinations are not split: the heaviest takes all"),
        );
    }
}

/// The protocols a Gateway server may declare.
const GATEWAY_PROTOCOLS: [&str; 7] = ["HTTP", "HTTPS", "HTTP2", "GRPC", "TLS", "TCP", "MONGO"];

fn mesh_config(c: &mut Check, m: &istio::MeshConfig) {
    let at = |field: &str| format!("data.mesh.{field}");
    for f in &m.fields {
        if !istio::MESH_CONFIG_FIELDS.contains(&istio::camel_case(f).as_str()) {
            c.unsupported(&at(f), "unknown field: ignored (as Istio does)");
        }
    }
    let mut names = BTreeSet::new();
    for (i, p) in m.extension_providers.iter().enumerate() {
        let field = at(&format!("extensionProviders[{i}]"));
        if p.name.trim().is_empty() {
            c.error(&format!("{field}.name"), "must be set");
        } else if !names.insert(p.name.to_ascii_lowercase()) {
            c.error(
                &format!("{field}.name"),
                format!("{:?}: a provider of that name comes before", p.name),
            );
        }
        for f in p.unknown_fields() {
            c.unsupported(
                &format!("{field}.{f}"),
                "unknown provider field: ignored (as Istio does)",
            );
        }
        let kinds = p.kinds();
        match kinds.as_slice() {
            [] => c.error(
                &field,
                format!(
                    "one provider is required ({}, ...)",
                    istio::TRACING_PROVIDER_KINDS[..3].join(", ")
                ),
            ),
            [_] => {}
            [..] => c.error(
                &field,
                format!("only one provider may be set, not {}", kinds.join(" and ")),
            ),
        }
        if let Some(o) = &p.opentelemetry {
            let f = format!("{field}.opentelemetry");
            if o.service.trim().is_empty() {
                c.error(&format!("{f}.service"), "must be set");
            }
            if !(1..=65535).contains(&o.port) {
                c.error(&format!("{f}.port"), "must be a port, 1 to 65535");
            }
            if o.http.is_some() {
                c.unsupported(
                    &format!("{f}.http"),
                    "OTLP over HTTP: wasmesh exports OTLP over gRPC only, so the spans of \
                     workloads traced with this provider are not exported",
                );
            }
            if let Some(g) = &o.grpc {
                c.duration(&format!("{f}.grpc.timeout"), g.timeout.as_ref(), Some(1));
                if g.initial_metadata.is_some() {
                    c.unsupported(&format!("{f}.grpc.initialMetadata"), "ignored");
                }
            }
            for (name, set) in [
                ("maxTagLength", o.max_tag_length.is_some()),
                ("resourceDetectors", o.resource_detectors.is_some()),
                ("dynatraceSampler", o.dynatrace_sampler.is_some()),
                (
                    "serviceAttributeEnrichment",
                    o.service_attribute_enrichment.is_some(),
                ),
            ] {
                if set {
                    c.unsupported(&format!("{f}.{name}"), "ignored");
                }
            }
        }
        for kind in kinds
            .iter()
            .filter(|k| **k != "opentelemetry" && istio::TRACING_PROVIDER_KINDS.contains(k))
        {
            c.unsupported(
                &format!("{field}.{kind}"),
                "wasmesh exports spans with OTLP (an opentelemetry provider) only: workloads \
                 traced with this provider make and propagate spans but export none",
            );
        }
    }
    if let Some(d) = &m.default_providers {
        for (i, name) in d.tracing.iter().enumerate() {
            let field = at(&format!("defaultProviders.tracing[{i}]"));
            match m
                .extension_providers
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(name))
            {
                None => c.out.push(
                    c.res.diag(
                        Diagnostic::error(
                            code::REFERENCED_RESOURCE_NOT_FOUND,
                            format!(
                                "Referenced provider not found: {name:?} in extensionProviders"
                            ),
                        )
                        .at(&field),
                    ),
                ),
                Some(p) => match p.kinds().first() {
                    Some(kind) if !p.traces() => c.error(
                        &field,
                        format!("{name:?} is a {kind} provider, which does not trace"),
                    ),
                    _ => {}
                },
            }
        }
        if d.tracing.len() > 1 {
            c.unsupported(
                &at("defaultProviders.tracing"),
                "one default tracing provider: the first is used (as Istio)",
            );
        }
        if !d.metrics.is_empty() || !d.access_logging.is_empty() {
            c.note(
                &at("defaultProviders"),
                "only `tracing` is read: Istio's standard metrics are always reported",
            );
        }
    }
    if let Some(t) = m.default_config.as_ref().and_then(|d| d.tracing.as_ref()) {
        let field = at("defaultConfig.tracing");
        percentage(c, &format!("{field}.sampling"), t.sampling);
        if t.custom_tags.is_some() {
            c.unsupported(&format!("{field}.customTags"), "spans carry no custom tags");
        }
        if t.max_path_tag_length.is_some() {
            c.unsupported(&format!("{field}.maxPathTagLength"), "ignored");
        }
        for tracer in t.tracers() {
            c.unsupported(
                &format!("{field}.{tracer}"),
                "Istio's legacy tracer settings: wasmesh traces through extensionProviders and \
                 Telemetry only",
            );
        }
    }
    if m.enable_tracing.is_some() {
        c.note(
            &at("enableTracing"),
            "switches Istio's legacy tracing only (where neither Telemetry nor \
             defaultProviders.tracing configure any), which wasmesh does not have: no effect",
        );
    }
    if let Some(root) = &m.root_namespace
        && root != crate::plugins::ROOT_NAMESPACE
    {
        c.unsupported(
            &at("rootNamespace"),
            "wasmesh's root namespace is istio-system",
        );
    }
    if let Some(p) = &m.outbound_traffic_policy {
        let field = at("outboundTrafficPolicy");
        if let Some(mode) = &p.mode
            && istio::OutboundMode::parse(mode).is_none()
        {
            c.error(
                &format!("{field}.mode"),
                format!(
                    "{mode:?} is not an outbound traffic policy mode: ALLOW_ANY (Istio's default) \
                     or REGISTRY_ONLY"
                ),
            );
        }
        if p.egress_proxy.is_some() {
            c.unsupported(
                &format!("{field}.egressProxy"),
                "unknown destinations go where they were going (ALLOW_ANY) or nowhere \
                 (REGISTRY_ONLY), not to an egress proxy",
            );
        }
    }
}

fn authorization_policy(c: &mut Check, ap: &istio::AuthorizationPolicy) {
    use istio::AuthzAction;
    match (ap.action, &ap.provider) {
        (AuthzAction::Custom, _) => c.error(
            "spec.action",
            "CUSTOM needs an external authorizer (an extension provider), which wasmesh does \
             not have: the workloads this policy selects deny every request (as Istio does \
             when a CUSTOM policy's provider is missing)",
        ),
        (_, Some(_)) => c.error("spec.provider", "only for action CUSTOM"),
        (_, None) => {}
    }
    let refs = ap.target_refs.len() + usize::from(ap.target_ref.is_some());
    target_refs(
        c,
        ap.selector.is_some(),
        refs,
        "no sidecar enforces this policy",
    );
    if ap.rules.is_empty() && matches!(ap.action, AuthzAction::Deny | AuthzAction::Audit) {
        c.note("spec.rules", "a policy without rules matches no request");
    }
    for (i, rule) in ap.rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let f = format!("{field}.from[{j}].source");
            let s = &from.source;
            let lists: [(&str, &Vec<String>); 10] = [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ];
            if lists.iter().all(|(_, l)| l.is_empty())
                && s.service_accounts.is_none()
                && s.not_service_accounts.is_none()
            {
                c.error(&f, "must not be empty");
            }
            for (name, list) in lists {
                let field = format!("{f}.{name}");
                if name.to_ascii_lowercase().ends_with("ipblocks") {
                    for v in list {
                        if !wasmesh_policy::authz::is_ip_block(v) {
                            c.error(&field, format!("{v:?} is not an IP address or CIDR block"));
                        }
                    }
                } else {
                    c.wildcards(&field, list);
                }
                if name.ends_with("equestPrincipals") && !list.is_empty() {
                    c.unsupported(
                        &field,
                        "wasmesh has no RequestAuthentication yet, so no request has a JWT \
                         principal (requestPrincipals match none, notRequestPrincipals all)",
                    );
                }
            }
            if s.service_accounts.is_some() || s.not_service_accounts.is_some() {
                c.unsupported(&format!("{f}.serviceAccounts"), "ambient mode only");
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let f = format!("{field}.to[{j}].operation");
            let o = &to.operation;
            let lists: [(&str, &Vec<String>); 8] = [
                ("hosts", &o.hosts),
                ("notHosts", &o.not_hosts),
                ("ports", &o.ports),
                ("notPorts", &o.not_ports),
                ("methods", &o.methods),
                ("notMethods", &o.not_methods),
                ("paths", &o.paths),
                ("notPaths", &o.not_paths),
            ];
            if lists.iter().all(|(_, l)| l.is_empty()) {
                c.error(&f, "must not be empty");
            }
            for (name, list) in lists {
                let field = format!("{f}.{name}");
                if name.to_ascii_lowercase().ends_with("ports") {
                    for v in list {
                        if !v.parse::<u16>().is_ok_and(|p| p > 0) {
                            c.error(&field, format!("{v:?} is not a port number"));
                        }
                    }
                } else if name.to_ascii_lowercase().ends_with("paths") {
                    c.paths(&field, list);
                } else {
                    c.wildcards(&field, list);
                }
            }
        }
        for (j, cond) in rule.when.iter().enumerate() {
            let f = format!("{field}.when[{j}]");
            let key = cond.key.as_str();
            if !wasmesh_policy::authz::condition_key_is_known(key) {
                c.error(&format!("{f}.key"), format!("unknown attribute {key:?}"));
                continue;
            }
            if cond.values.is_empty() && cond.not_values.is_empty() {
                c.error(
                    &f,
                    format!("at least one of values or notValues must be set for key {key:?}"),
                );
            }
            let all = cond.values.iter().chain(&cond.not_values);
            match key {
                "source.ip" | "remote.ip" | "destination.ip" => {
                    for v in all {
                        if !wasmesh_policy::authz::is_ip_block(v) {
                            c.error(&f, format!("{v:?} is not an IP address or CIDR block"));
                        }
                    }
                }
                "destination.port" => {
                    for v in all {
                        if !v.parse::<u16>().is_ok_and(|p| p > 0) {
                            c.error(&f, format!("{v:?} is not a port number"));
                        }
                    }
                }
                k if k.starts_with("request.auth.") => c.unsupported(
                    &format!("{f}.key"),
                    "wasmesh has no RequestAuthentication yet: no request has JWT claims, so \
                     values match none and notValues all",
                ),
                "connection.sni" => c.unsupported(
                    &format!("{f}.key"),
                    "the SNI is not recorded: values match none and notValues all",
                ),
                k if k.starts_with("experimental.") => c.unsupported(
                    &format!("{f}.key"),
                    "Envoy's filter metadata does not exist here: values match none and \
                     notValues all",
                ),
                _ => {}
            }
        }
    }
}

fn peer_authentication(c: &mut Check, pa: &istio::PeerAuthentication) {
    // As Istio's validation: ports need a workload to belong to.
    if !pa.port_level_mtls.is_empty() && pa.selector.is_none() {
        c.error(
            "spec.portLevelMtls",
            "requires spec.selector (port-level mTLS applies to one workload's ports)",
        );
    }
    for port in pa.port_level_mtls.keys() {
        if !(1..=65535).contains(port) {
            c.error(&format!("spec.portLevelMtls[{port}]"), "not a port number");
        }
    }
}

fn wasm_plugin(c: &mut Check, wp: &istio::WasmPlugin) {
    match crate::plugins::ModuleUrl::parse(&wp.url) {
        // Over plaintext only the digest vouches for what is downloaded.
        Ok(crate::plugins::ModuleUrl::Http(url))
            if url.starts_with("http://") && wp.sha256.is_none() =>
        {
            c.error(
                "spec.sha256",
                "required with http:// (the control plane checks what it downloads; https:// may go without)",
            )
        }
        Ok(_) => {}
        Err(reason) => c.error("spec.url", reason),
    }
    if let Some(sha) = &wp.sha256
        && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        c.error("spec.sha256", "must be 64 hexadecimal digits");
    }
    if wp.type_ == Some(istio::PluginType::Network) {
        c.error(
            "spec.type",
            "NETWORK plugins are not supported: wasmesh runs HTTP filters",
        );
    }
    let refs = wp.target_refs.len() + usize::from(wp.target_ref.is_some());
    if wp.selector.is_some() && refs > 0 {
        c.error(
            "spec.targetRefs",
            "selector and targetRefs are mutually exclusive",
        );
    }
    if wp.target_ref.is_some() {
        c.deprecated("spec.targetRef", "spec.targetRefs");
    }
    for (i, t) in wp.target_refs.iter().chain(&wp.target_ref).enumerate() {
        let field = format!("spec.targetRefs[{i}]");
        match t.kind.as_str() {
            "Service" | "ServiceEntry" => {}
            "Gateway" => {}
            other => c.error(
                &format!("{field}.kind"),
                format!("{other:?}: a Service, ServiceEntry or Gateway is expected"),
            ),
        }
        if t.name.is_empty() {
            c.error(&format!("{field}.name"), "must not be empty");
        }
    }
    if wp.image_pull_secret.as_deref().is_some_and(str::is_empty) {
        c.error("spec.imagePullSecret", "must not be empty");
    }
    if wp.verification_key.is_some() {
        c.unsupported("spec.verificationKey", "ignored (deprecated by Istio)");
    }
    for (i, env) in wp.vm_config.iter().flat_map(|v| &v.env).enumerate() {
        if env.name.is_empty() {
            c.error(&format!("spec.vmConfig.env[{i}].name"), "must not be empty");
        }
    }
    for (i, m) in wp.match_.iter().enumerate() {
        if m.mode == Some(istio::WorkloadMode::Client) && !m.ports.is_empty() {
            c.unsupported(
                &format!("spec.match[{i}].ports"),
                "ports select inbound (SERVER) traffic only: this selector matches nothing",
            );
        }
        for (j, p) in m.ports.iter().enumerate() {
            if p.number == 0 || p.number > 65535 {
                c.error(
                    &format!("spec.match[{i}].ports[{j}].number"),
                    "must be a port, 1 to 65535",
                );
            }
        }
    }
}

fn virtual_service(c: &mut Check, vs: &istio::VirtualService) {
    if vs.hosts.is_empty() {
        c.error("spec.hosts", "at least one host is required");
    }
    for (i, h) in vs.hosts.iter().enumerate() {
        host_name(c, &format!("spec.hosts[{i}]"), h);
    }
    if !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g == "mesh") {
        c.note(
            "spec.gateways",
            "applies to gateways only (not \"mesh\"): nothing to translate for the mesh",
        );
    }
    for (i, route) in vs.tls.iter().enumerate() {
        let at = format!("spec.tls[{i}]");
        if route.matches.is_empty() {
            c.error(
                &format!("{at}.match"),
                "a TLS route needs a match with sniHosts",
            );
        }
        for (j, m) in route.matches.iter().enumerate() {
            if m.sni_hosts.is_empty() {
                c.error(
                    &format!("{at}.match[{j}].sniHosts"),
                    "at least one is required",
                );
            }
            if !m.destination_subnets.is_empty()
                || !m.source_labels.is_empty()
                || m.source_namespace.is_some()
            {
                c.unsupported(
                    &format!("{at}.match[{j}]"),
                    "destinationSubnets, sourceLabels and sourceNamespace are ignored",
                );
            }
        }
        l4_destinations(c, &at, route.route.len(), "TLS");
    }
    let for_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    if !vs.tls.is_empty() && for_mesh {
        c.note(
            "spec.tls",
            "TLS routes are served by gateways only, not sidecars",
        );
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        let at = format!("spec.tcp[{i}]");
        l4_destinations(c, &at, route.route.len(), "TCP");
        for (j, m) in route.matches.iter().enumerate() {
            if !m.destination_subnets.is_empty()
                || m.source_subnet.is_some()
                || !m.source_labels.is_empty()
                || m.source_namespace.is_some()
            {
                c.unsupported(
                    &format!("{at}.match[{j}]"),
                    "only port and gateways are matched",
                );
            }
        }
    }
    if !vs.tcp.is_empty() && for_mesh {
        c.note(
            "spec.tcp",
            "TCP routes are served by gateways only, not sidecars",
        );
    }
    let mut names = BTreeSet::new();
    for (i, route) in vs.http.iter().enumerate() {
        if let Some(name) = &route.name
            && !names.insert(name)
        {
            // Route ids (`<vs>.<ns>/<name>`) key the fault and mirror configs.
            c.error(
                &format!("spec.http[{i}].name"),
                format!("route name {name:?} is used by an earlier route"),
            );
        }
        http_route(c, &format!("spec.http[{i}]"), route);
    }
}

fn host_name(c: &mut Check, field: &str, host: &str) {
    let h = host.trim();
    let bad = h.is_empty()
        || (h.contains('*')
            && h != "*"
            && h.strip_prefix("*.").is_none_or(|rest| rest.contains('*')))
        || h.contains(['/', ' ', ':']);
    if bad {
        c.error(field, format!("invalid host {host:?}"));
    }
}

fn http_route(c: &mut Check, at: &str, route: &istio::HttpRoute) {
    for (j, m) in route.matches.iter().enumerate() {
        let at = format!("{at}.match[{j}]");
        for (name, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                c.string_match(&format!("{at}.{name}"), sm, false);
            }
        }
        if let Some(
            StringMatch { exact: Some(p), .. }
            | StringMatch {
                prefix: Some(p), ..
            },
        ) = &m.uri
            && !p.starts_with('/')
        {
            c.error(&format!("{at}.uri"), format!("{p:?} must start with '/'"));
        }
        for (field, map) in [
            ("headers", &m.headers),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (name, sm) in map {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    c.error(
                        &format!("{at}.{field}"),
                        format!("invalid header name {name:?}"),
                    );
                }
                c.string_match(&format!("{at}.{field}.{name}"), sm, true);
            }
        }
        for (name, sm) in &m.query_params {
            c.string_match(&format!("{at}.queryParams.{name}"), sm, true);
        }
        if let Some(p) = m.port
            && !(1..=65535).contains(&p)
        {
            c.error(
                &format!("{at}.port"),
                format!("port {p} is not in range 1..65535"),
            );
        }
        if !m.source_labels.is_empty() || m.source_namespace.is_some() {
            c.unsupported(
                &at,
                "sourceLabels and sourceNamespace need per-workload proxies; this match never holds",
            );
        }
        if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
            c.note(
                &format!("{at}.gateways"),
                "applies to gateways only: never holds in the mesh",
            );
        }
    }

    let actions = [
        !route.route.is_empty(),
        route.redirect.is_some(),
        route.direct_response.is_some(),
        route.delegate.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if actions == 0 {
        c.error(
            at,
            "HTTP route requires one of route, redirect, directResponse",
        );
    } else if actions > 1 {
        c.error(
            at,
            "HTTP route may set only one of route, redirect, directResponse, delegate",
        );
    }
    if route.delegate.is_some() {
        c.unsupported(&format!("{at}.delegate"), "the route is left out");
    }
    if route.cors_policy.is_some() {
        c.unsupported(&format!("{at}.corsPolicy"), "ignored");
    }

    // route
    if route.route.len() > 1 {
        let total: i64 = route
            .route
            .iter()
            .map(|d| d.weight.unwrap_or(0) as i64)
            .sum();
        if total != 100 {
            c.error(
                &format!("{at}.route"),
                format!("total destination weight {total} != 100"),
            );
        }
    }
    for (j, d) in route.route.iter().enumerate() {
        let at = format!("{at}.route[{j}]");
        if let Some(w) = d.weight
            && !(0..=100).contains(&w)
        {
            c.error(
                &format!("{at}.weight"),
                format!("weight {w} is not in range 0..100"),
            );
        }
        destination(c, &format!("{at}.destination"), &d.destination);
        c.headers(&format!("{at}.headers"), d.headers.as_ref());
    }
    c.headers(&format!("{at}.headers"), route.headers.as_ref());

    if let Some(rw) = &route.rewrite {
        let at = format!("{at}.rewrite");
        if route.route.is_empty() {
            c.error(&at, "rewrite is only allowed with route");
        }
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            c.error(&at, "set only one of uri and uriRegexRewrite");
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            c.regex(&format!("{at}.uriRegexRewrite.match"), &rr.pattern);
        }
    }
    if let Some(rd) = &route.redirect {
        let at = format!("{at}.redirect");
        if let Some(code) = rd.redirect_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            c.error(
                &format!("{at}.redirectCode"),
                format!("{code} is not a redirect code (301, 302, 303, 307, 308)"),
            );
        }
        if let Some(p) = rd.port
            && !(1..=65535).contains(&p)
        {
            c.error(
                &format!("{at}.port"),
                format!("port {p} is not in range 1..65535"),
            );
        }
        if rd.derive_port.is_some() {
            c.unsupported(&format!("{at}.derivePort"), "ignored");
        }
    }
    if let Some(dr) = &route.direct_response {
        let at = format!("{at}.directResponse");
        if !(200..=599).contains(&dr.status) {
            c.error(
                &format!("{at}.status"),
                format!("status {} is not in range 200..599", dr.status),
            );
        }
        if let Some(b) = &dr.body {
            match (&b.string, &b.bytes) {
                (Some(_), Some(_)) => {
                    c.error(&format!("{at}.body"), "set only one of string and bytes")
                }
                (None, Some(bytes)) => match base64::engine::general_purpose::STANDARD.decode(bytes)
                {
                    Err(e) => c.error(&format!("{at}.body.bytes"), format!("not base64: {e}")),
                    Ok(raw) if std::str::from_utf8(&raw).is_err() => c.unsupported(
                        &format!("{at}.body.bytes"),
                        "bytes that are not UTF-8 text are sent with invalid sequences replaced",
                    ),
                    Ok(_) => {}
                },
                _ => {}
            }
        }
    }
    c.duration(&format!("{at}.timeout"), route.timeout.as_ref(), None);
    if let Some(rt) = &route.retries {
        retries(c, &format!("{at}.retries"), rt);
    }
    if let Some(f) = &route.fault {
        fault(c, &format!("{at}.fault"), f);
    }

    // mirrors
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        c.error(at, "set only one of mirror and mirrors");
    }
    if let Some(m) = &route.mirror {
        destination(c, &format!("{at}.mirror"), m);
    }
    c.percent(
        &format!("{at}.mirrorPercentage"),
        route.mirror_percentage.as_ref(),
    );
    if let Some(p) = route.mirror_percent {
        c.deprecated(&format!("{at}.mirrorPercent"), "mirrorPercentage");
        if p > 100 {
            c.error(
                &format!("{at}.mirrorPercent"),
                format!("percentage {p} is not in range 0..100"),
            );
        }
    }
    for (j, m) in route.mirrors.iter().enumerate() {
        destination(c, &format!("{at}.mirrors[{j}].destination"), &m.destination);
        c.percent(
            &format!("{at}.mirrors[{j}].percentage"),
            m.percentage.as_ref(),
        );
    }
}

fn destination(c: &mut Check, at: &str, d: &istio::Destination) {
    host_name(c, &format!("{at}.host"), &d.host);
    if d.host.contains('*') {
        c.error(
            &format!("{at}.host"),
            "a destination host cannot be a wildcard",
        );
    }
    if let Some(p) = &d.port
        && !(1..=65535).contains(&p.number)
    {
        c.error(
            &format!("{at}.port.number"),
            format!("port {} is not in range 1..65535", p.number),
        );
    }
}

fn retries(c: &mut Check, at: &str, r: &istio::HttpRetry) {
    if let Some(a) = r.attempts
        && a < 0
    {
        c.error(&format!("{at}.attempts"), "attempts cannot be negative");
    }
    c.duration(
        &format!("{at}.perTryTimeout"),
        r.per_try_timeout.as_ref(),
        Some(1),
    );
    if let Some(on) = &r.retry_on {
        for token in on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.parse::<u16>().is_ok_and(|n| (100..=599).contains(&n)) {
                continue;
            }
            if !RETRY_ON.contains(&token) {
                c.error(
                    &format!("{at}.retryOn"),
                    format!("{token:?} is not a valid retryOn policy"),
                );
            } else if wasmesh_config::RetryOn::parse(token).is_err() {
                c.unsupported(
                    &format!("{at}.retryOn"),
                    &format!("condition {token:?} is dropped"),
                );
            }
        }
    }
    if r.backoff.is_some() {
        c.unsupported(
            &format!("{at}.backoff"),
            "the proxy's 25ms base interval is used",
        );
    }
}

fn fault(c: &mut Check, at: &str, f: &istio::HttpFaultInjection) {
    if f.delay.is_none() && f.abort.is_none() {
        c.error(at, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(d) = &f.delay {
        let at = format!("{at}.delay");
        match (&d.fixed_delay, d.exponential_delay.is_some()) {
            (None, false) => c.error(&at, "fixedDelay is required"),
            (None, true) => {
                c.unsupported(&format!("{at}.exponentialDelay"), "the delay is left out")
            }
            (Some(_), _) => {
                c.duration(&format!("{at}.fixedDelay"), d.fixed_delay.as_ref(), Some(1))
            }
        }
        c.percent(&format!("{at}.percentage"), d.percentage.as_ref());
        if let Some(p) = d.percent {
            c.deprecated(&format!("{at}.percent"), "percentage");
            if !(0..=100).contains(&p) {
                c.error(
                    &format!("{at}.percent"),
                    format!("percentage {p} is not in range 0..100"),
                );
            }
        }
        if d.percentage.is_none() && d.percent.is_none() {
            c.note(
                &format!("{at}.percentage"),
                "unset: no request is delayed (Istio's semantics; set percentage.value: 100 for all)",
            );
        }
    }
    if let Some(a) = &f.abort {
        let at = format!("{at}.abort");
        let kinds = [
            a.http_status.is_some(),
            a.grpc_status.is_some(),
            a.http2_error.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if kinds != 1 {
            c.error(&at, "set exactly one of httpStatus and grpcStatus");
        }
        if let Some(s) = a.http_status
            && !(200..=599).contains(&s)
        {
            c.error(
                &format!("{at}.httpStatus"),
                format!("httpStatus {s} is not in range 200..599"),
            );
        }
        if let Some(g) = &a.grpc_status
            && !GRPC_STATUS.contains(&g.as_str())
        {
            c.error(
                &format!("{at}.grpcStatus"),
                format!("{g:?} is not a gRPC status name (such as UNAVAILABLE)"),
            );
        }
        if a.http2_error.is_some() {
            c.unsupported(&format!("{at}.http2Error"), "the abort is left out");
        }
        c.percent(&format!("{at}.percentage"), a.percentage.as_ref());
        if a.percentage.is_none() {
            c.note(
                &format!("{at}.percentage"),
                "unset: no request is aborted (Istio's semantics; set percentage.value: 100 for all)",
            );
        }
    }
}

fn destination_rule(c: &mut Check, dr: &istio::DestinationRule) {
    host_name(c, "spec.host", &dr.host);
    if dr.workload_selector.is_some() {
        c.unsupported("spec.workloadSelector", "the rule applies to every client");
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(c, "spec.trafficPolicy", tp);
    }
    let mut names = BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let at = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            c.error(&format!("{at}.name"), "must not be empty");
        } else if s.name.contains('|') {
            c.error(
                &format!("{at}.name"),
                format!("invalid subset name {:?}", s.name),
            );
        }
        if !names.insert(&s.name) {
            c.error(
                &format!("{at}.name"),
                format!("duplicate subset name {:?}", s.name),
            );
        }
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(c, &format!("{at}.trafficPolicy"), tp);
        }
    }
}

fn traffic_policy(c: &mut Check, at: &str, tp: &istio::TrafficPolicy) {
    settings(
        c,
        at,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    if tp.tunnel.is_some() {
        c.unsupported(&format!("{at}.tunnel"), "ignored");
    }
    if tp.proxy_protocol.is_some() {
        c.unsupported(&format!("{at}.proxyProtocol"), "ignored");
    }
    if tp.retry_budget.is_some() {
        c.unsupported(&format!("{at}.retryBudget"), "ignored");
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let at = format!("{at}.portLevelSettings[{i}]");
        match &pl.port {
            None => c.error(&format!("{at}.port"), "port is required"),
            Some(p) if !(1..=65535).contains(&p.number) => c.error(
                &format!("{at}.port.number"),
                format!("port {} is not in range 1..65535", p.number),
            ),
            _ => {}
        }
        settings(
            c,
            &at,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
    }
}

fn settings(
    c: &mut Check,
    at: &str,
    lb: Option<&istio::LoadBalancerSettings>,
    pool: Option<&istio::ConnectionPoolSettings>,
    outlier: Option<&istio::OutlierDetection>,
    tls: Option<&istio::ClientTlsSettings>,
) {
    if let Some(tls) = tls {
        let at = format!("{at}.tls");
        let files = [
            ("clientCertificate", &tls.client_certificate),
            ("privateKey", &tls.private_key),
            ("caCertificates", &tls.ca_certificates),
        ];
        match tls.mode {
            istio::ClientTlsMode::Disable | istio::ClientTlsMode::IstioMutual => {
                for (field, value) in files {
                    if value.is_some() {
                        c.error(
                            &format!("{at}.{field}"),
                            "only with SIMPLE or MUTUAL (ISTIO_MUTUAL uses the mesh's certificates)",
                        );
                    }
                }
            }
            istio::ClientTlsMode::Mutual => {
                if tls.credential_name.is_none()
                    && (tls.client_certificate.is_none() || tls.private_key.is_none())
                {
                    c.error(
                        &at,
                        "MUTUAL needs clientCertificate and privateKey (client certificate required for mutual tls)",
                    );
                }
            }
            istio::ClientTlsMode::Simple => {
                if tls.client_certificate.is_some() || tls.private_key.is_some() {
                    c.error(&at, "SIMPLE presents no client certificate (use MUTUAL)");
                }
            }
        }
        if tls.credential_name.is_some() {
            c.unsupported(
                &format!("{at}.credentialName"),
                "Kubernetes Secrets come with the Kubernetes source: use the file fields",
            );
        }
        if tls.ca_crl.is_some() {
            c.unsupported(&format!("{at}.caCrl"), "not checked");
        }
    }
    if let Some(lb) = lb {
        let at = format!("{at}.loadBalancer");
        if lb.simple == Some(SimpleLb::Passthrough) {
            c.unsupported(
                &format!("{at}.simple"),
                "PASSTHROUGH: LEAST_REQUEST is used",
            );
        }
        if lb.simple == Some(SimpleLb::LeastConn) {
            c.deprecated(&format!("{at}.simple"), "LEAST_REQUEST");
        }
        if lb.consistent_hash.is_some() {
            c.unsupported(&format!("{at}.consistentHash"), "LEAST_REQUEST is used");
        }
        if lb.locality_lb_setting.is_some() {
            c.unsupported(&format!("{at}.localityLbSetting"), "ignored");
        }
        if lb.warmup_duration_secs.is_some() || lb.warmup.is_some() {
            c.unsupported(&format!("{at}.warmup"), "ignored");
        }
        if lb.zone_aware_lb_setting.is_some() {
            c.unsupported(&format!("{at}.zoneAwareLbSetting"), "ignored");
        }
    }
    if let Some(pool) = pool {
        let at = format!("{at}.connectionPool");
        if let Some(t) = &pool.tcp {
            let at = format!("{at}.tcp");
            non_negative(c, &format!("{at}.maxConnections"), t.max_connections);
            c.duration(
                &format!("{at}.connectTimeout"),
                t.connect_timeout.as_ref(),
                Some(1),
            );
            for (set, name) in [
                (t.tcp_keepalive.is_some(), "tcpKeepalive"),
                (t.max_connection_duration.is_some(), "maxConnectionDuration"),
                (t.idle_timeout.is_some(), "idleTimeout"),
            ] {
                if set {
                    c.unsupported(&format!("{at}.{name}"), "ignored");
                }
            }
        }
        if let Some(h) = &pool.http {
            let at = format!("{at}.http");
            non_negative(
                c,
                &format!("{at}.http1MaxPendingRequests"),
                h.http1_max_pending_requests,
            );
            non_negative(c, &format!("{at}.http2MaxRequests"), h.http2_max_requests);
            non_negative(
                c,
                &format!("{at}.maxRequestsPerConnection"),
                h.max_requests_per_connection,
            );
            non_negative(c, &format!("{at}.maxRetries"), h.max_retries);
            c.duration(&format!("{at}.idleTimeout"), h.idle_timeout.as_ref(), None);
            if h.max_concurrent_streams.is_some() {
                c.unsupported(&format!("{at}.maxConcurrentStreams"), "ignored");
            }
        }
    }
    if let Some(o) = outlier {
        let at = format!("{at}.outlierDetection");
        if let Some(n) = o.consecutive_errors {
            c.deprecated(
                &format!("{at}.consecutiveErrors"),
                "consecutiveGatewayErrors or consecutive5xxErrors",
            );
            non_negative(c, &format!("{at}.consecutiveErrors"), Some(n));
        }
        c.duration(&format!("{at}.interval"), o.interval.as_ref(), Some(1));
        c.duration(
            &format!("{at}.baseEjectionTime"),
            o.base_ejection_time.as_ref(),
            Some(1),
        );
        if let Some(p) = o.max_ejection_percent
            && !(0..=100).contains(&p)
        {
            c.error(
                &format!("{at}.maxEjectionPercent"),
                format!("maxEjectionPercent {p} is not in range 0..100"),
            );
        }
        for (set, name) in [
            (
                o.consecutive_local_origin_failures.is_some(),
                "consecutiveLocalOriginFailures",
            ),
            (
                o.split_external_local_origin_errors.is_some(),
                "splitExternalLocalOriginErrors",
            ),
            (o.min_health_percent.is_some(), "minHealthPercent"),
            (
                o.outlier_detection_http_error_codes.is_some(),
                "outlierDetectionHttpErrorCodes",
            ),
        ] {
            if set {
                c.unsupported(&format!("{at}.{name}"), "ignored");
            }
        }
    }
}

fn non_negative(c: &mut Check, at: &str, v: Option<i32>) {
    if let Some(n) = v
        && n < 0
    {
        c.error(at, format!("{n} must not be negative"));
    }
}

fn service_entry(c: &mut Check, se: &istio::ServiceEntry) {
    if se.hosts.is_empty() {
        c.error("spec.hosts", "at least one host is required");
    }
    for (i, h) in se.hosts.iter().enumerate() {
        host_name(c, &format!("spec.hosts[{i}]"), h);
        if h.trim() == "*" {
            c.error(
                &format!("spec.hosts[{i}]"),
                "a ServiceEntry host cannot be \"*\"",
            );
        }
    }
    if se.ports.is_empty() {
        c.error("spec.ports", "at least one port is required");
    }
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, p) in se.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        if !(1..=65535).contains(&p.number) {
            c.error(
                &format!("{at}.number"),
                format!("port {} is not in range 1..65535", p.number),
            );
        }
        if let Some(t) = p.target_port
            && !(1..=65535).contains(&t)
        {
            c.error(
                &format!("{at}.targetPort"),
                format!("port {t} is not in range 1..65535"),
            );
        }
        if !numbers.insert(p.number) {
            c.error(
                &format!("{at}.number"),
                format!("duplicate port number {}", p.number),
            );
        }
        if !p.name.is_empty() && !names.insert(&p.name) {
            c.error(
                &format!("{at}.name"),
                format!("duplicate port name {:?}", p.name),
            );
        }
        if !is_served(p) {
            c.unsupported(
                &at,
                &format!(
                    "port {} speaks {}; only HTTP, HTTP2, GRPC and TCP ports are served: skipped",
                    p.number,
                    p.protocol.as_deref().unwrap_or(&p.name)
                ),
            );
        }
    }
    if se.workload_selector.is_some() && !se.endpoints.is_empty() {
        c.error(
            "spec",
            "only one of workloadSelector and endpoints is allowed",
        );
    }
    let resolution = se.resolution.unwrap_or(Resolution::None);
    if resolution == Resolution::DynamicDns {
        c.unsupported(
            "spec.resolution",
            "DYNAMIC_DNS: read as DNS, so a wildcard host has no endpoints",
        );
    }
    if resolution == Resolution::None
        && (!se.endpoints.is_empty() || se.workload_selector.is_some())
    {
        c.note(
            "spec.resolution",
            "NONE: requests go where the caller sent them (Istio's ORIGINAL_DST cluster); \
             sidecars do not use the endpoints",
        );
    }
    for (i, e) in se.endpoints.iter().enumerate() {
        workload(c, &format!("spec.endpoints[{i}]"), e);
        if let Some(a) = &e.address
            && resolution == Resolution::Static
            && a.parse::<std::net::IpAddr>().is_err()
        {
            c.error(
                &format!("spec.endpoints[{i}].address"),
                format!("{a:?} is not an IP address (STATIC resolution)"),
            );
        }
    }
}

fn workload(c: &mut Check, at: &str, w: &istio::WorkloadEntry) {
    match &w.address {
        None => c.error(&format!("{at}.address"), "address is required"),
        Some(a) if a.starts_with("unix://") => c.unsupported(
            &format!("{at}.address"),
            "unix sockets; the endpoint is left out",
        ),
        Some(a) if a.trim().is_empty() || a.contains(['/', ' ']) => {
            c.error(&format!("{at}.address"), format!("invalid address {a:?}"))
        }
        _ => {}
    }
    for (name, port) in &w.ports {
        if !(1..=65535).contains(port) {
            c.error(
                &format!("{at}.ports.{name}"),
                format!("port {port} is not in range 1..65535"),
            );
        }
    }
    if w.weight.is_some() {
        c.unsupported(&format!("{at}.weight"), "endpoints are weighted equally");
    }
}
