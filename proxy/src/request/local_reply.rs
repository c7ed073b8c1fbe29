//! Replies the proxy makes itself, with Envoy's texts, response code details and flags.

use std::borrow::Cow;

use bytes::Bytes;
use http::header;
use http::{Response, StatusCode};

use super::context::Exchange;
use crate::body::{ProxyBody, StreamIdleTimeout};
use crate::stats::ResponseFlag;
use crate::upstream::h1::ClientError;

/// A reply the proxy makes itself, with Envoy's texts and response flags.
pub(crate) struct LocalReply {
    status: StatusCode,
    body: Cow<'static, str>,
    details: Cow<'static, str>,
    flag: Option<ResponseFlag>,
    /// A redirect's `location`.
    location: Option<http::HeaderValue>,
}

impl LocalReply {
    pub fn new(
        status: StatusCode,
        body: impl Into<Cow<'static, str>>,
        details: impl Into<Cow<'static, str>>,
    ) -> Self {
        LocalReply {
            status,
            body: body.into(),
            details: details.into(),
            flag: None,
            location: None,
        }
    }

    /// A virtual host's `require_tls` answering a plaintext request: `301` to the same host
    /// and path over `https`, empty, details `direct_response` (Envoy's TLS redirect route).
    /// A `:80` port goes (it is plaintext's); another stays, as Envoy keeps the host.
    pub(crate) fn https_redirect(authority: &http::uri::Authority, uri: &http::Uri) -> Self {
        let host = authority.as_str();
        let host = host.strip_suffix(":80").unwrap_or(host);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut reply = LocalReply::new(StatusCode::MOVED_PERMANENTLY, "", "direct_response");
        reply.location = http::HeaderValue::from_str(&format!("https://{host}{path}")).ok();
        reply
    }

    pub(super) fn flagged(mut self, flag: ResponseFlag) -> Self {
        self.flag = Some(flag);
        self
    }

    pub(crate) fn bad_request(body: &'static str) -> Self {
        LocalReply::new(StatusCode::BAD_REQUEST, body, "bad_request")
    }

    pub(crate) fn no_route() -> Self {
        LocalReply::new(StatusCode::NOT_FOUND, "", "route_not_found")
            .flagged(ResponseFlag::NoRouteFound)
    }

    /// A route's `direct_response`: no flag, details `direct_response`, as Envoy's router
    /// answers it (Istio's `block_all` route logs `502 - direct_response`).
    pub(crate) fn direct_response(d: &crate::config::DirectResponse) -> Self {
        let status = StatusCode::from_u16(d.status).expect("validated: 200..=599");
        LocalReply::new(status, d.body.clone(), "direct_response")
    }

    /// An `original_dst` request whose destination is one of the proxy's own listeners:
    /// refused rather than sent around the loop.
    pub(crate) fn original_dst_loop() -> Self {
        LocalReply::new(
            StatusCode::BAD_GATEWAY,
            "original destination is this proxy",
            "original_dst_loop_detected",
        )
    }

    pub(crate) fn cluster_not_found() -> Self {
        LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "", "cluster_not_found")
            .flagged(ResponseFlag::NoClusterFound)
    }

    pub(crate) fn no_healthy_upstream() -> Self {
        LocalReply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            "no_healthy_upstream",
        )
        .flagged(ResponseFlag::NoHealthyUpstream)
    }

    pub(super) fn overflow() -> Self {
        LocalReply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            "upstream_reset_before_response_started{overflow}",
        )
        .flagged(ResponseFlag::UpstreamOverflow)
    }

    /// Envoy's router reply to an upstream that failed before its response headers: the reset
    /// reason, the transport's own reason when there is one, and whether it was retried, in
    /// the body and (as a token) in the response code details.
    fn upstream_failure(
        status: StatusCode,
        reason: &str,
        transport: Option<&str>,
        retried: bool,
    ) -> Self {
        let retried_text = if retried {
            "retried and the latest "
        } else {
            ""
        };
        let mut body = format!(
            "upstream connect error or disconnect/reset before headers. {retried_text}reset reason: {reason}"
        );
        let mut details = format!("upstream_reset_before_response_started{{{reason}");
        if let Some(transport) = transport {
            body.push_str(", transport failure reason: ");
            body.push_str(transport);
            details.push(',');
            details.push_str(transport);
        }
        details.push('}');
        LocalReply::new(status, body, details.replace(' ', "_"))
    }

    /// A connection that could not be opened: Envoy's `delayed connect error: <errno>`, or a
    /// connection timeout.
    pub(super) fn connect_failure(error: &std::io::Error, retried: bool) -> Self {
        let reply = if error.kind() == std::io::ErrorKind::TimedOut {
            Self::upstream_failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection timeout",
                None,
                retried,
            )
        } else {
            let transport = match error.raw_os_error() {
                Some(errno) => format!("delayed connect error: {errno}"),
                None => error.to_string(),
            };
            Self::upstream_failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection failure",
                Some(&transport),
                retried,
            )
        };
        reply.flagged(ResponseFlag::UpstreamConnectionFailure)
    }

    pub(super) fn upstream_reset(retried: bool) -> Self {
        Self::upstream_failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection termination",
            None,
            retried,
        )
        .flagged(ResponseFlag::UpstreamConnectionTermination)
    }

    /// Envoy's answer to a response it cannot parse: 502, flag `UPE`.
    pub(super) fn upstream_protocol_error(retried: bool) -> Self {
        Self::upstream_failure(StatusCode::BAD_GATEWAY, "protocol error", None, retried)
            .flagged(ResponseFlag::UpstreamProtocolError)
    }

    pub(super) fn upstream_timeout() -> Self {
        LocalReply::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream request timeout",
            "response_timeout",
        )
        .flagged(ResponseFlag::UpstreamRequestTimeout)
    }

    pub(super) fn request_timeout() -> Self {
        LocalReply::new(
            StatusCode::REQUEST_TIMEOUT,
            "request timeout",
            "request_overall_timeout",
        )
    }

    /// The client's request body failed while it streamed upstream: `408` if it stalled
    /// (flag `SI`), else the client broke its framing or went away (`400`, flag `DC`).
    pub(super) fn request_body_failed(
        error: &(dyn std::error::Error + 'static),
        ex: &mut Exchange,
    ) -> Self {
        ex.failure_reason = Some(error.to_string());
        if error.is::<StreamIdleTimeout>() {
            return LocalReply::new(StatusCode::REQUEST_TIMEOUT, "", "stream_idle_timeout")
                .flagged(ResponseFlag::StreamIdleTimeout);
        }
        if let Some(ClientError::BodyLength(_)) = error.downcast_ref::<ClientError>() {
            // Not the client's doing: a filter changed the body under a declared length.
            return LocalReply::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "",
                "request_body_length_mismatch",
            );
        }
        LocalReply::downstream_reset()
    }

    pub(crate) fn downstream_reset() -> Self {
        LocalReply::new(StatusCode::BAD_REQUEST, "", "downstream_remote_disconnect")
            .flagged(ResponseFlag::DownstreamConnectionTermination)
    }

    /// The reply as a response; a gRPC request gets a trailers-only gRPC status instead.
    pub(crate) fn into_response(self, ex: &mut Exchange) -> Response<ProxyBody> {
        if let Some(flag) = self.flag {
            ex.flags.insert(flag);
        }
        ex.details = self.details;
        let mut builder = Response::builder();
        if let Some(location) = self.location {
            builder = builder.header(header::LOCATION, location);
        }
        if self.flag == Some(ResponseFlag::UpstreamOverflow) {
            builder = builder.header("x-envoy-overloaded", "true");
        }
        let response = if ex.grpc {
            builder
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", grpc_status_for(self.status).to_string())
                .header("grpc-message", &*self.body)
                .body(ProxyBody::Empty)
        } else if self.body.is_empty() {
            builder.status(self.status).body(ProxyBody::Empty)
        } else {
            builder
                .status(self.status)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(ProxyBody::full(match self.body {
                    Cow::Borrowed(text) => Bytes::from_static(text.as_bytes()),
                    Cow::Owned(text) => Bytes::from(text),
                }))
        };
        response.expect("a local reply is a valid response")
    }
}

/// The gRPC status for an HTTP status, as gRPC's HTTP-to-gRPC mapping gives it.
fn grpc_status_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}
