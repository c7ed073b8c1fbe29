//! The span of one hop: what the request path records (cheaply, on the worker) and its OTLP
//! form (built on the exporter's thread), named and tagged as Envoy's OpenTelemetry tracer
//! does in an Istio sidecar.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1 as otlp;

use super::context::{Extracted, Outgoing, SpanId, TraceId};
use super::{End, Export, Kind, Request};

/// One hop's span, from the request's arrival to the end of its response.
#[derive(Debug)]
pub struct Span {
    pub(super) export: Arc<Export>,
    pub(super) trace_id: TraceId,
    pub(super) span_id: SpanId,
    pub(super) parent: Option<SpanId>,
    /// The caller's `tracestate`, which goes with its `traceparent`.
    trace_state: Option<String>,
    pub(super) kind: Kind,
    pub(super) request: Request,
    /// The route and cluster the request went to (none: not routed).
    route: Option<String>,
    cluster: Option<String>,
    end: End,
    end_time: SystemTime,
    peer: Option<SocketAddr>,
    node_id: Arc<str>,
}

impl Span {
    pub(super) fn start(
        export: Arc<Export>,
        out: &Outgoing,
        came: &Extracted,
        kind: Kind,
        request: Request,
        trace_state: Option<String>,
    ) -> Span {
        Span {
            export,
            trace_id: out.trace_id,
            span_id: out.span_id,
            parent: out.parent,
            trace_state: trace_state.filter(|_| came.w3c),
            kind,
            request,
            route: None,
            cluster: None,
            end: End::default(),
            end_time: UNIX_EPOCH,
            peer: None,
            node_id: Arc::from(""),
        }
    }

    /// The route and cluster chosen for the request.
    pub fn capture_names(&mut self, route: &[u8], cluster: &str) {
        self.route = Some(String::from_utf8_lossy(route).into_owned());
        self.cluster = Some(cluster.to_owned());
    }

    pub(super) fn finish(&mut self, end: End, at: SystemTime, peer: SocketAddr, node_id: Arc<str>) {
        self.end = end;
        self.end_time = at;
        self.peer = Some(peer);
        self.node_id = node_id;
    }

    /// Same export settings (the config may change between spans).
    pub(super) fn same_export(&self, other: &Span) -> bool {
        Arc::ptr_eq(&self.export, &other.export) || self.export == other.export
    }

    pub(super) fn export(&self) -> &Arc<Export> {
        &self.export
    }

    /// Istio's name for the hop: `<host>:<port>/*` of the destination service, as its route
    /// decorators say (`outbound|<port>|<subset>|<host>` clusters name it; an inbound cluster
    /// names the port, the request its host); else the route's name; else the authority.
    pub fn name(&self) -> String {
        let host = self
            .request
            .authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(self.request.authority.as_str(), |(host, _)| host);
        let host = if host.is_empty() { "unknown" } else { host };
        if let Some(cluster) = &self.cluster {
            let mut parts = cluster.split('|');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some("outbound"), Some(port), Some(_), Some(svc)) if !svc.is_empty() => {
                    return format!("{svc}:{port}/*");
                }
                (Some("inbound"), Some(port), ..) if !port.is_empty() => {
                    return format!("{host}:{port}/*");
                }
                _ => {}
            }
        }
        match &self.route {
            Some(route) if !route.is_empty() => route.clone(),
            _ if self.request.authority.is_empty() => format!("{host}/*"),
            _ => format!("{}/*", self.request.authority),
        }
    }

    /// The span in OTLP's shape, with Envoy's tags (all strings, as Envoy sets them).
    pub fn to_otlp(&self) -> otlp::Span {
        let end = &self.end;
        let r = &self.request;
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let cluster = or_dash(&self.cluster);
        let mut attributes: Vec<KeyValue> = [
            ("node_id", self.node_id.to_string()),
            ("guid:x-request-id", or_dash(&r.request_id)),
            ("http.url", r.url.clone()),
            ("http.method", r.method.clone()),
            ("downstream_cluster", or_dash(&r.downstream_cluster)),
            ("user_agent", or_dash(&r.user_agent)),
            ("http.protocol", r.protocol.to_owned()),
            (
                "peer.address",
                self.peer.map_or_else(|| "-".into(), |p| p.to_string()),
            ),
            ("request_size", end.request_size.to_string()),
            ("response_size", end.response_size.to_string()),
            ("upstream_cluster", cluster.clone()),
            ("upstream_cluster.name", cluster),
            ("http.status_code", end.status.to_string()),
            ("response_flags", end.flags.to_string()),
            (
                "upstream_address",
                end.upstream_address
                    .map_or_else(|| "-".into(), |a| a.to_string()),
            ),
        ]
        .into_iter()
        .chain(self.export.tags.iter().map(|(k, v)| (*k, v.clone())))
        .map(|(k, v)| string(k, v))
        .collect();
        let error = end.status >= 500;
        if error {
            attributes.push(string("error", "true".into()));
        }
        let end_nanos = nanos(self.end_time);
        otlp::Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            trace_state: self.trace_state.clone().unwrap_or_default(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            // The parent's sampled flag: it was sampled, or this span would not exist.
            flags: 0x100 | u32::from(self.parent.is_some()) << 9 | 1,
            name: self.name(),
            kind: match self.kind {
                Kind::Server => otlp::span::SpanKind::Server,
                Kind::Client => otlp::span::SpanKind::Client,
            } as i32,
            start_time_unix_nano: end_nanos.saturating_sub(end.duration.as_nanos() as u64),
            end_time_unix_nano: end_nanos,
            attributes,
            status: Some(otlp::Status {
                message: String::new(),
                code: if error {
                    otlp::status::StatusCode::Error
                } else {
                    otlp::status::StatusCode::Unset
                } as i32,
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
impl Span {
    /// A finished span of `export`, for the exporter's tests.
    pub(super) fn test(export: &Arc<Export>) -> Span {
        let out = Outgoing {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: None,
            sampled: true,
            debug: false,
        };
        let mut span = Span::start(
            export.clone(),
            &out,
            &Extracted::default(),
            Kind::Server,
            Request::default(),
            None,
        );
        span.finish(
            End::default(),
            SystemTime::now(),
            ([127, 0, 0, 1], 1).into(),
            Arc::from("test"),
        );
        span
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(super) fn string(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::{ResponseFlag, ResponseFlags};

    fn span(authority: &str, route: Option<&str>, cluster: Option<&str>) -> Span {
        let export = Arc::new(Export {
            endpoint: "http://127.0.0.1:4317".into(),
            timeout: Duration::from_secs(1),
            service_name: "reviews.shop".into(),
            tags: vec![("istio.namespace", "shop".into())],
        });
        let out = Outgoing {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            sampled: true,
            debug: false,
        };
        let came = Extracted {
            w3c: true,
            ..Default::default()
        };
        let mut s = Span::start(
            export,
            &out,
            &came,
            Kind::Client,
            Request {
                method: "GET".into(),
                url: format!("http://{authority}/x"),
                protocol: "HTTP/1.1",
                authority: authority.into(),
                request_id: Some("rid".into()),
                ..Default::default()
            },
            Some("k=v".into()),
        );
        if let (Some(r), Some(c)) = (route, cluster) {
            s.capture_names(r.as_bytes(), c);
        }
        s
    }

    #[test]
    fn names_spans_as_istio_does() {
        let outbound = "outbound|9080|v2|reviews.shop.svc.cluster.local";
        assert_eq!(
            span("reviews:9080", Some("r1"), Some(outbound)).name(),
            "reviews.shop.svc.cluster.local:9080/*"
        );
        assert_eq!(
            span("reviews:9080", Some("default"), Some("inbound|9080||")).name(),
            "reviews:9080/*"
        );
        assert_eq!(
            span("api.example.com", Some("api"), Some("backend")).name(),
            "api"
        );
        assert_eq!(
            span("api.example.com:8080", None, None).name(),
            "api.example.com:8080/*"
        );
        assert_eq!(span("", None, None).name(), "unknown/*");
    }

    #[test]
    fn otlp_span_has_envoys_tags_and_error_status() {
        let mut s = span("reviews:9080", Some("default"), Some("inbound|9080||"));
        let at = UNIX_EPOCH + Duration::from_secs(1_000);
        s.finish(
            End {
                status: 503,
                request_size: 5,
                response_size: 7,
                flags: {
                    let mut f = ResponseFlags::default();
                    f.insert(ResponseFlag::UpstreamConnectionFailure);
                    f
                },
                upstream_address: Some("10.0.0.9:9080".parse().unwrap()),
                duration: Duration::from_millis(20),
            },
            at,
            "10.0.0.1:5555".parse().unwrap(),
            Arc::from("sidecar~10.0.0.2"),
        );
        let o = s.to_otlp();
        assert_eq!(o.trace_id, vec![1; 16]);
        assert_eq!(o.parent_span_id, vec![3; 8]);
        assert_eq!(o.trace_state, "k=v");
        assert_eq!(o.kind, otlp::span::SpanKind::Client as i32);
        assert_eq!(o.end_time_unix_nano - o.start_time_unix_nano, 20_000_000);
        assert_eq!(
            o.status.unwrap().code,
            otlp::status::StatusCode::Error as i32
        );
        let attr = |k: &str| {
            o.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| match &a.value.as_ref()?.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no {k}"))
        };
        assert_eq!(attr("http.status_code"), "503");
        assert_eq!(attr("response_flags"), "UF");
        assert_eq!(attr("upstream_cluster"), "inbound|9080||");
        assert_eq!(attr("upstream_address"), "10.0.0.9:9080");
        assert_eq!(attr("peer.address"), "10.0.0.1:5555");
        assert_eq!(attr("guid:x-request-id"), "rid");
        assert_eq!(attr("user_agent"), "-");
        assert_eq!(attr("node_id"), "sidecar~10.0.0.2");
        assert_eq!(attr("request_size"), "5");
        assert_eq!(attr("response_size"), "7");
        assert_eq!(attr("istio.namespace"), "shop");
        assert_eq!(attr("error"), "true");
    }
}
