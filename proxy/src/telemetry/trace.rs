//! Distributed tracing, as Envoy's OpenTelemetry tracer does it in an Istio sidecar.
//!
//! - [`context`]: W3C `traceparent` / `tracestate` and B3, read from a request and written for
//!   the next hop (a new span id per hop; the caller's sampling decision kept).
//! - [`span`]: the span of one hop, with Envoy's and Istio's attributes, in OTLP's shape.
//! - [`export`]: the `wasmesh-trace-export` thread: workers hand it finished spans over a
//!   bounded queue without waiting; it batches them and exports them with OTLP/gRPC, dropping
//!   (and counting) what it cannot send.
//!
//! The request path calls [`Settings::on_request`] once the request is prepared (headers for
//! the next hop set, a span started when sampled) and [`Span::end`] when the response is done.
//! A proxy without `telemetry.tracing` has no [`Settings`]: requests pass untouched.

pub mod context;
pub mod export;
pub mod span;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::uri::Authority;
use http::{HeaderValue, Version};

use crate::config::telemetry::Workload;
use crate::config::{Bootstrap, TrafficDirection};
use crate::headers::{self, Added};
use crate::stats::ResponseFlags;
use context::{Extracted, Outgoing};

pub use export::Tracer;
pub use span::Span;

/// Envoy's `http.url` tag keeps this much of the path (its `max_path_tag_length`).
const MAX_PATH_TAG: usize = 256;
static DOWNSTREAM_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-downstream-service-cluster");

/// OTLP's span kinds that a proxy's spans take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// Tracing as a snapshot configures it: made once per config, read by every request.
#[derive(Debug)]
pub struct Settings {
    /// Percent of requests without a decision that are sampled.
    sampling: f64,
    /// The span kind of each listener (by index): SERVER inbound, CLIENT outbound, SERVER for
    /// the rest (a gateway's).
    kinds: Box<[Kind]>,
    /// Where sampled spans go; none: sampled requests are traced on the wire only.
    export: Option<Arc<Export>>,
}

/// What every span of one config shares: where it goes and the tags of this proxy.
#[derive(Debug, PartialEq)]
pub struct Export {
    pub endpoint: String,
    pub timeout: Duration,
    /// The resource's `service.name`: `<canonical service>.<namespace>`, as Istio names it.
    pub service_name: String,
    /// Tags every span carries: `component`, `zone` and Istio's custom tags.
    pub tags: Vec<(&'static str, String)>,
}

impl Settings {
    /// `None` without `telemetry.tracing`: nothing is traced, no header touched.
    pub fn new(bootstrap: &Bootstrap) -> Option<Settings> {
        let tracing = bootstrap.telemetry.tracing.as_ref()?;
        let kinds = bootstrap
            .listeners
            .iter()
            .map(|l| match l.traffic_direction {
                Some(TrafficDirection::Outbound) => Kind::Client,
                Some(TrafficDirection::Inbound) | None => Kind::Server,
            })
            .collect();
        let export = tracing.otlp.as_ref().map(|otlp| {
            let istio = IstioTags::of(bootstrap.telemetry.workload.as_ref());
            Arc::new(Export {
                endpoint: otlp.endpoint.clone(),
                timeout: otlp.timeout.0,
                service_name: format!("{}.{}", istio.canonical_service, istio.namespace),
                tags: istio.into_tags(),
            })
        });
        Some(Settings {
            sampling: tracing.sampling,
            kinds,
            export,
        })
    }

    /// A request arrived on `listener` and is prepared: its trace context is read, a sampling
    /// decision made (the caller's, else ours), and the context for the next hop written onto
    /// it. Returns the hop's span when it is sampled and exported.
    pub fn on_request(
        &self,
        parts: &mut Parts,
        authority: Option<&Authority>,
        added: &Added,
        listener: usize,
    ) -> Option<Box<Span>> {
        let came = context::extract(&parts.headers);
        let sampled = decide(&came, self.sampling);
        let out = Outgoing {
            trace_id: came.parent.map_or_else(new_trace_id, |p| p.trace_id),
            span_id: new_span_id(),
            parent: came.parent.map(|p| p.span_id),
            sampled,
            debug: came.debug,
        };
        let span = match &self.export {
            Some(export) if sampled => Some(Box::new(Span::start(
                export.clone(),
                &out,
                &came,
                self.kinds.get(listener).copied().unwrap_or(Kind::Server),
                Request::capture(parts, authority, added),
                came.w3c
                    .then(|| context::tracestate(&parts.headers))
                    .flatten(),
            ))),
            _ => None,
        };
        context::inject(&mut parts.headers, &out, &came);
        span
    }
}

/// The caller's decision, else ours: `percent` of requests.
fn decide(came: &Extracted, percent: f64) -> bool {
    came.sampled.unwrap_or_else(|| sample(percent))
}

fn sample(percent: f64) -> bool {
    percent > 0.0 && (percent >= 100.0 || rand::random::<f64>() * 100.0 < percent)
}

fn new_trace_id() -> context::TraceId {
    loop {
        let id = rand::random::<u128>();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn new_span_id() -> context::SpanId {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// What a span says of its request, captured when it arrives (copied: the queue to the
/// exporter must not hold request buffers).
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    /// `<x-forwarded-proto>://<host><path>`, the path cut at 256 bytes (Envoy's `http.url`).
    pub url: String,
    pub protocol: &'static str,
    /// The authority the request was for (the span's name uses its host).
    pub authority: String,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub downstream_cluster: Option<String>,
}

impl Request {
    fn capture(parts: &Parts, authority: Option<&Authority>, added: &Added) -> Request {
        let text = |v: Option<&HeaderValue>| v.and_then(|v| v.to_str().ok()).map(str::to_owned);
        let h: &HeaderMap = &parts.headers;
        let scheme = h
            .get(&headers::X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("http");
        let authority = authority.map_or("", Authority::as_str);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut cut = path.len().min(MAX_PATH_TAG);
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        Request {
            method: parts.method.as_str().to_owned(),
            url: format!("{scheme}://{authority}{}", &path[..cut]),
            protocol: match parts.version {
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_3 => "HTTP/3",
                _ => "HTTP/1.1",
            },
            authority: authority.to_owned(),
            user_agent: text(h.get(header::USER_AGENT)),
            request_id: text(added.request_id(h).as_ref()),
            downstream_cluster: text(h.get(&DOWNSTREAM_CLUSTER)),
        }
    }
}

/// How a request ended, for its span.
#[derive(Debug, Default)]
pub struct End {
    pub status: u16,
    pub request_size: u64,
    pub response_size: u64,
    pub flags: ResponseFlags,
    pub upstream_address: Option<SocketAddr>,
    /// From the request's arrival to the last byte of its response.
    pub duration: Duration,
}

impl Span {
    /// The response is done: the span ends and goes to the exporter (never waiting for it).
    pub fn end(mut self: Box<Self>, end: End, peer: SocketAddr, node_id: Arc<str>, to: &Tracer) {
        self.finish(end, SystemTime::now(), peer, node_id);
        to.submit(self);
    }
}

/// Istio's custom tags of a workload (`pilot/pkg/networking/core/tracing.go`,
/// `buildServiceTags`), with its defaults for what is not known.
struct IstioTags {
    canonical_service: String,
    canonical_revision: String,
    namespace: String,
    mesh_id: String,
    cluster_id: String,
}

impl IstioTags {
    fn of(workload: Option<&Workload>) -> IstioTags {
        let label = |keys: &[&str]| {
            workload.and_then(|w| {
                keys.iter()
                    .find_map(|k| w.labels.get(*k).filter(|v| !v.is_empty()).cloned())
            })
        };
        let nonempty = |s: Option<&String>| s.filter(|s| !s.is_empty()).cloned();
        IstioTags {
            // What Istio's injector puts in the canonical-name label when a pod has none.
            canonical_service: label(&[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .or_else(|| nonempty(workload.map(|w| &w.workload_name)))
            .unwrap_or_else(|| "unknown".into()),
            canonical_revision: label(&[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or_else(|| "latest".into()),
            namespace: nonempty(workload.map(|w| &w.namespace)).unwrap_or_else(|| "default".into()),
            // The mesh is named by its trust domain (Istio's default `MESH_ID`).
            mesh_id: workload
                .and_then(|w| w.principal.strip_prefix("spiffe://"))
                .and_then(|rest| rest.split('/').next())
                .filter(|td| !td.is_empty())
                .map_or_else(|| "unknown".into(), str::to_owned),
            cluster_id: nonempty(workload.map(|w| &w.cluster_id))
                .unwrap_or_else(|| "unknown".into()),
        }
    }

    fn into_tags(self) -> Vec<(&'static str, String)> {
        vec![
            ("component", "proxy".into()),
            // Envoy tags every span with its locality's zone; a sidecar here has none.
            ("zone", String::new()),
            ("istio.canonical_revision", self.canonical_revision),
            ("istio.canonical_service", self.canonical_service),
            ("istio.mesh_id", self.mesh_id),
            ("istio.namespace", self.namespace),
            ("istio.cluster_id", self.cluster_id),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap(yaml_tail: &str) -> Bootstrap {
        let vhosts = "virtual_hosts: [{name: all, domains: [\"*\"], routes: [{match: {prefix: /}, cluster: c}]}]";
        let yaml = format!(
            "clusters: [{{name: c, endpoints: [\"127.0.0.1:1\"]}}]\n\
             listeners:\n\
             - {{name: in, address: \"127.0.0.1:0\", traffic_direction: inbound, {vhosts}}}\n\
             - {{name: out, address: \"127.0.0.1:0\", traffic_direction: outbound, {vhosts}}}\n\
             - {{name: gw, address: \"127.0.0.1:0\", {vhosts}}}\n{yaml_tail}"
        );
        Bootstrap::parse(&yaml).unwrap()
    }

    fn request(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::get("http://shop/cart?id=1");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn no_tracing_config_means_no_settings() {
        assert!(Settings::new(&bootstrap("")).is_none());
    }

    #[test]
    fn sampling_percentages() {
        assert!((0..1000).all(|_| !sample(0.0)));
        assert!((0..1000).all(|_| sample(100.0)));
        let hits = (0..10_000).filter(|_| sample(50.0)).count();
        assert!((4000..6000).contains(&hits), "{hits} of 10000 at 50%");
        let hits = (0..10_000).filter(|_| sample(1.0)).count();
        assert!((20..300).contains(&hits), "{hits} of 10000 at 1%");
    }

    #[test]
    fn a_callers_decision_is_kept() {
        let yes = Extracted {
            sampled: Some(true),
            ..Default::default()
        };
        let no = Extracted {
            sampled: Some(false),
            ..Default::default()
        };
        assert!((0..100).all(|_| decide(&yes, 0.0)));
        assert!((0..100).all(|_| !decide(&no, 100.0)));
        let none = Extracted::default();
        assert!((0..100).all(|_| decide(&none, 100.0)));
        assert!((0..100).all(|_| !decide(&none, 0.0)));
    }

    #[test]
    fn continues_a_trace_with_a_new_span_and_records_it() {
        let settings = Settings::new(&bootstrap(
            "telemetry:\n  tracing: {sampling: 0, otlp: {endpoint: \"http://127.0.0.1:4317\"}}\n",
        ))
        .unwrap();
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut parts = request(&[("traceparent", caller), ("user-agent", "curl")]);
        let added = Added::default();
        let span = settings
            .on_request(&mut parts, Some(&Authority::from_static("shop")), &added, 1)
            .expect("sampled upstream: a span");
        let sent = parts.headers["traceparent"].to_str().unwrap().to_owned();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent.ends_with("-01"));
        assert_ne!(sent, caller, "a new span id");
        assert_eq!(&sent[36..52], context::hex_string(&span.span_id));
        assert_eq!(span.parent, Some(*b"\x00\xf0\x67\xaa\x0b\xa9\x02\xb7"));
        assert_eq!(span.kind, Kind::Client);
        assert_eq!(span.request.url, "http://shop/cart?id=1");
        assert_eq!(span.request.user_agent.as_deref(), Some("curl"));

        // No decision, sampling 0: not recorded, but the next hop hears of the trace.
        let mut parts = request(&[]);
        assert!(settings.on_request(&mut parts, None, &added, 0).is_none());
        let sent = parts.headers["traceparent"].to_str().unwrap();
        assert!(sent.ends_with("-00"), "{sent}");
        // A caller that said no is not recorded whatever the percentage.
        let all = Settings::new(&bootstrap(
            "telemetry:\n  tracing: {sampling: 100, otlp: {endpoint: \"http://127.0.0.1:4317\"}}\n",
        ))
        .unwrap();
        let mut parts = request(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        assert!(all.on_request(&mut parts, None, &added, 0).is_none());
        let mut parts = request(&[]);
        let span = all.on_request(&mut parts, None, &added, 2).unwrap();
        assert_eq!((span.kind, span.parent), (Kind::Server, None));
    }

    #[test]
    fn without_a_collector_requests_are_traced_on_the_wire_only() {
        let settings =
            Settings::new(&bootstrap("telemetry:\n  tracing: {sampling: 100}\n")).unwrap();
        let mut parts = request(&[]);
        assert!(
            settings
                .on_request(&mut parts, None, &Added::default(), 0)
                .is_none()
        );
        assert!(
            parts.headers["traceparent"]
                .to_str()
                .unwrap()
                .ends_with("-01")
        );
    }

    #[test]
    fn istio_tags_and_service_name() {
        let settings = Settings::new(&bootstrap(
            "telemetry:\n  workload:\n    name: reviews-v2-abc\n    namespace: shop\n    \
             principal: spiffe://example.org/ns/shop/sa/reviews\n    labels: {app: reviews, version: v2}\n  \
             tracing: {otlp: {endpoint: \"http://127.0.0.1:4317\"}}\n",
        ))
        .unwrap();
        let export = settings.export.unwrap();
        assert_eq!(export.service_name, "reviews.shop");
        let tag = |k: &str| export.tags.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        assert_eq!(tag("istio.canonical_service"), "reviews");
        assert_eq!(tag("istio.canonical_revision"), "v2");
        assert_eq!(tag("istio.namespace"), "shop");
        assert_eq!(tag("istio.mesh_id"), "example.org");
        assert_eq!(tag("component"), "proxy");
        assert_eq!(settings.sampling, 1.0, "Istio's default percentage");

        let bare = IstioTags::of(None);
        assert_eq!(
            (
                bare.canonical_service.as_str(),
                bare.namespace.as_str(),
                bare.canonical_revision.as_str()
            ),
            ("unknown", "default", "latest")
        );
    }
}
