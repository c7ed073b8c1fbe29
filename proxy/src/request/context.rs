//! The per-request context: what is known about a request while it passes the phases, for
//! stats, the access log and the filters' `on_log`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{Method, Request, Version};
use hyper::body::Incoming;

use crate::conn::ConnCtx;
use crate::headers;
use crate::route::Route;
use crate::snapshot::Snapshot;
use crate::stats::ResponseFlags;
use crate::upstream::ActiveRequest;

/// What is known about a request while it is served, for stats and the access log.
pub struct Exchange {
    pub(super) start: std::time::Instant,
    pub flags: ResponseFlags,
    pub(crate) details: Cow<'static, str>,
    pub(crate) grpc: bool,
    pub(crate) upstream_host: Option<SocketAddr>,
    /// Each attempt's endpoint and status (0: no response); recorded only when filters may
    /// read it (`wasmesh.upstream_attempts`), and handed to them with the response.
    pub(crate) attempts: Option<Vec<(SocketAddr, u16)>>,
    pub(super) upstream_time: Option<Duration>,
    pub(super) failure_reason: Option<String>,
    pub(super) bytes_received: Rc<std::cell::Cell<u64>>,
    pub(super) active: Option<ActiveRequest>,
    /// Only filled when an access log is configured.
    pub(super) log: Option<Box<LogFields>>,
    /// Istio's metrics and peer metadata (empty unless the listener has a traffic direction).
    pub(crate) istio: crate::telemetry::metrics::RequestTelemetry,
    /// The hop's span, for a sampled request when tracing exports spans.
    pub(crate) trace: Option<Box<crate::telemetry::trace::Span>>,
}

pub(super) struct LogFields {
    pub(super) start_time: SystemTime,
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) protocol: &'static str,
    pub(super) authority: Option<String>,
    pub(super) user_agent: Option<HeaderValue>,
    pub(super) forwarded_for: Option<HeaderValue>,
    pub(super) request_id: Option<HeaderValue>,
    pub(super) route_name: Option<String>,
    pub(super) cluster: Option<String>,
}

impl Exchange {
    pub(super) fn new(req: &Request<Incoming>, conn: &ConnCtx, snapshot: &Snapshot) -> Exchange {
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let log = conn.worker.shared.access_log.is_some().then(|| {
            Box::new(LogFields {
                start_time: SystemTime::now(),
                method: req.method().clone(),
                path: req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| req.uri().path().to_owned(), |p| p.to_string()),
                protocol: match req.version() {
                    Version::HTTP_10 => "HTTP/1.0",
                    Version::HTTP_2 => "HTTP/2",
                    _ => "HTTP/1.1",
                },
                authority: None,
                user_agent: None,
                forwarded_for: None,
                request_id: None,
                route_name: None,
                cluster: None,
            })
        });
        Exchange {
            start: std::time::Instant::now(),
            flags: ResponseFlags::default(),
            details: Cow::Borrowed("via_upstream"),
            grpc,
            upstream_host: None,
            attempts: None,
            upstream_time: None,
            failure_reason: None,
            bytes_received: Rc::default(),
            active: None,
            log,
            istio: crate::telemetry::metrics::RequestTelemetry::new(conn, snapshot, grpc),
            trace: None,
        }
    }

    pub(crate) fn capture_request(
        &mut self,
        parts: &Parts,
        authority: Option<&Authority>,
        added: &headers::Added,
    ) {
        if let Some(log) = &mut self.log {
            log.authority = authority.map(|a| a.as_str().to_owned());
            log.user_agent = parts.headers.get(header::USER_AGENT).cloned();
            log.forwarded_for = added.forwarded_for(&parts.headers).cloned();
            log.request_id = added.request_id(&parts.headers);
        }
    }

    pub(crate) fn capture_route(&mut self, route: &Route) {
        self.capture_names(route.name.as_bytes(), route.cluster().map(|c| &*c.name));
    }

    /// The route and cluster a request went to (none for a direct response, as Envoy logs
    /// it), for the access log (read only when it is on) and the span.
    pub(crate) fn capture_names(&mut self, route: &[u8], cluster: Option<&str>) {
        if let Some(span) = &mut self.trace {
            span.capture_names(route, cluster.unwrap_or("-"));
        }
        if let Some(log) = &mut self.log {
            log.route_name = Some(String::from_utf8_lossy(route).into_owned());
            log.cluster = cluster.map(str::to_owned);
        }
    }
}
