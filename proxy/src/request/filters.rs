//! Filters: the listener's Wasm filter chain, where it has one. Request headers go through
//! it before routing (a filter may rewrite the path or choose the cluster); bodies stream
//! through it frame by frame; the response (the upstream's or a local reply) goes back
//! through it, last filter first; `on_log` runs when the response has been sent. Pauses
//! (callouts) wait without blocking the worker.

use std::cell::{Ref, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use wasmesh_host::{
    BodyStep, Chain, Decisions, FilterStream, LocalResponse, Stream, StreamInfo, Verdict,
};

use super::context::Exchange;
use super::local_reply::LocalReply;
use super::prepare::{Prepared, head_copy, request_authority};
use crate::body::{BoxError, ProxyBody};
use crate::conn::ConnCtx;
use crate::snapshot::Snapshot;
use crate::stats::ResponseFlag;

/// A filter reset the stream: the client sees the stream reset, not a response.
#[derive(Debug, thiserror::Error)]
#[error("stream reset by a filter")]
pub struct StreamReset;

/// Request bodies up to this size are copied to mirrors.
const MIRROR_BODY_LIMIT: u64 = 64 * 1024;

/// How the request phase of the filters ended.
pub(super) enum RequestPhase {
    /// On to routing.
    Continue,
    /// A filter answered (or failed closed): this goes back through the response phase.
    Answer(Response<ProxyBody>),
    Reset,
}

/// One request's pass through the listener's chain.
#[derive(Clone)]
pub(super) struct Filters {
    filters: Rc<RefCell<FilterStream>>,
    stream: Rc<Stream>,
}

impl Filters {
    pub(super) fn start(chain: Rc<Chain>, conn: &ConnCtx, version: Version) -> Filters {
        let stream = Stream::new(StreamInfo {
            source: Some(conn.peer),
            destination: Some(conn.local),
            connection_id: conn.id,
            protocol: match version {
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                _ => "HTTP/1.1",
            },
            listener: conn.worker.shared.listener_stats[conn.listener]
                .name
                .clone(),
            start_time: Some(SystemTime::now()),
            node_id: "wasmesh".into(),
            ..Default::default()
        });
        let filters = Rc::new(RefCell::new(chain.stream(stream.clone())));
        Filters { filters, stream }
    }

    /// `on_request_headers` through the chain. The filters may change the head, the
    /// authority included.
    pub(super) async fn on_request(
        &self,
        request: &mut Prepared,
        ex: &mut Exchange,
    ) -> RequestPhase {
        // Every attempt's endpoint and status, for `wasmesh.upstream_attempts`.
        ex.attempts = Some(Vec::new());
        let placeholder = Request::new(()).into_parts().0;
        let head = std::mem::replace(&mut request.parts, placeholder);
        self.stream.data.borrow_mut().request = Some(head);
        let end = request.body.is_end_stream();
        let verdict = wasmesh_host::request_headers(&self.filters, end).await;
        request.parts = self
            .stream
            .data
            .borrow_mut()
            .request
            .take()
            .expect("the request head is back");
        match verdict {
            Verdict::Continue => {
                match request_authority(&mut request.parts) {
                    Ok(authority) => request.authority = authority,
                    Err(reply) => return RequestPhase::Answer(reply.into_response(ex)),
                }
                // Taken again: the filters may have changed them.
                ex.capture_request(&request.parts, request.authority.as_ref(), &request.added);
                RequestPhase::Continue
            }
            Verdict::Reply(local) => {
                // A delay and an abort both injected: the abort comes after the delay (Envoy).
                if let Some(delay) = self.injected_delay(ex) {
                    tokio::time::sleep(delay).await;
                }
                RequestPhase::Answer(local_response(local, ex))
            }
            Verdict::Fail { plugin, reason } => {
                RequestPhase::Answer(plugin_failed(&plugin, &reason, ex))
            }
            Verdict::Reset => RequestPhase::Reset,
        }
    }

    pub(super) fn decisions(&self) -> Ref<'_, Decisions> {
        self.stream.decisions.borrow()
    }

    /// The route a plugin chose and named (`wasmesh.route_name`).
    pub(super) fn chosen_route_name(&self) -> Option<String> {
        self.stream
            .filter_state
            .borrow()
            .get("wasmesh.route_name")
            .map(|n| String::from_utf8_lossy(n).into_owned())
    }

    /// The route and cluster the request goes to, for filters that read them.
    pub(super) fn record_route(&self, route_name: String, cluster: &str) {
        let mut info = self.stream.info.borrow_mut();
        info.cluster_name = cluster.to_owned();
        info.route_name = route_name;
    }

    /// The delay a filter injected (flag `DI`), if any.
    pub(super) fn injected_delay(&self, ex: &mut Exchange) -> Option<Duration> {
        let ms = self
            .stream
            .decisions
            .borrow()
            .delay_ms
            .filter(|ms| *ms > 0)?;
        ex.flags.insert(ResponseFlag::DelayInjected);
        Some(Duration::from_millis(ms))
    }

    /// A local reply a body filter made, which stopped the request body.
    pub(super) fn take_local_reply(&self) -> Option<LocalResponse> {
        self.stream.local_response.borrow_mut().take()
    }

    /// The request body as it goes upstream: through the filters, and copied to mirrors.
    ///
    /// Filters that see the body may change its length: a small body is read through them
    /// whole and goes with its real length (as do mirrored ones); a larger one goes without a
    /// declared length (chunked, or HTTP/2 DATA frames).
    pub(super) async fn request_body(
        &self,
        parts: &mut Parts,
        body: Incoming,
        authority: Option<&Authority>,
        conn: &ConnCtx,
        snapshot: &Snapshot,
        ex: &mut Exchange,
    ) -> Result<ProxyBody, Response<ProxyBody>> {
        // The filters keep reading the request head after it left.
        self.stream.data.borrow_mut().request = Some(head_copy(parts));
        let end = body.is_end_stream();
        let small = body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MIRROR_BODY_LIMIT);
        let body = if end {
            ProxyBody::Empty
        } else {
            ProxyBody::boxed(FilteredBody::new(
                ProxyBody::Incoming(body),
                self.filters.clone(),
                false,
            ))
        };
        let reshaped = !end && self.filters.borrow().chain().reads_request_body();
        let mirrors = self.stream.decisions.borrow().mirrors.clone();
        if (reshaped || !mirrors.is_empty()) && (end || small) {
            let bytes = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => {
                    return Err(match self.take_local_reply() {
                        Some(local) => local_response(local, ex),
                        None => LocalReply::downstream_reset().into_response(ex),
                    });
                }
            };
            for cluster in &mirrors {
                super::mirror::mirror(conn, snapshot, cluster, parts, authority, bytes.clone());
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            return Ok(ProxyBody::full(bytes));
        }
        if reshaped {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        Ok(body)
    }

    /// `on_response_headers` through the chain, then the body as it streams.
    pub(super) async fn on_response(
        &self,
        response: Response<ProxyBody>,
        ex: &mut Exchange,
    ) -> Result<Response<ProxyBody>, StreamReset> {
        let stream = &self.stream;
        let (parts, body) = response.into_parts();
        stream.data.borrow_mut().response = Some(parts);
        {
            // The endpoint (and every attempt) is known from the response on, as in Envoy.
            let mut info = stream.info.borrow_mut();
            info.upstream_address = ex.upstream_host;
            // Complete by now: retries happen before a response is chosen.
            if let Some(attempts) = ex.attempts.take() {
                info.upstream_attempts = attempts;
            }
        }
        let verdict = wasmesh_host::response_headers(&self.filters, body.is_end_stream()).await;
        // Every request that got this far passes here, whichever phase set the flags.
        for flag in &stream.decisions.borrow().response_flags {
            ex.flags.insert(*flag);
        }
        let mut parts = stream
            .data
            .borrow_mut()
            .response
            .take()
            .expect("the response head is back");
        // `on_log` reads the response head too.
        stream.data.borrow_mut().response = Some(response_head_copy(&parts));
        let body = match verdict {
            Verdict::Continue => body,
            Verdict::Reply(local) => return Ok(local_response(local, ex)),
            Verdict::Fail { plugin, reason } => return Ok(plugin_failed(&plugin, &reason, ex)),
            Verdict::Reset => return Err(StreamReset),
        };
        let decisions = stream.decisions.borrow();
        for (name, value) in &decisions.response_headers_to_add {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_maybe_shared(value.clone()),
            ) {
                parts.headers.append(n, v);
            }
        }
        let body = if body.is_end_stream() {
            body
        } else {
            ProxyBody::boxed(FilteredBody::new(body, self.filters.clone(), true))
        };
        Ok(Response::from_parts(parts, body))
    }

    /// Ends the stream for the filters (`on_done`, `on_log`) once the response is sent, with
    /// what the proxy learned about it.
    pub(super) fn finish(&self, record: impl FnOnce(&mut StreamInfo)) {
        record(&mut self.stream.info.borrow_mut());
        self.filters.borrow_mut().finish();
    }
}

fn response_head_copy(parts: &http::response::Parts) -> http::response::Parts {
    let (mut copy, ()) = Response::new(()).into_parts();
    copy.status = parts.status;
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// A filter's local reply as a response (a gRPC status for gRPC requests).
pub(super) fn local_response(local: LocalResponse, ex: &mut Exchange) -> Response<ProxyBody> {
    ex.details = "wasm_local_reply".into();
    let mut builder = Response::builder().status(local.status);
    // As Envoy's local-reply path: the length is always the body's; an empty body goes
    // without a content type, a non-empty one gets `text/plain` unless the filter gave one.
    let empty = local.body.is_empty();
    let mut has_type = false;
    for (k, v) in &local.headers {
        let is_type = k.eq_ignore_ascii_case("content-type");
        if k.eq_ignore_ascii_case("content-length") || (empty && is_type) {
            continue;
        }
        has_type |= is_type;
        builder = builder.header(k.as_str(), v.as_ref());
    }
    let response = match (local.grpc_status, ex.grpc) {
        (Some(code), true) => builder
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("grpc-status", code.to_string())
            .header(
                "grpc-message",
                String::from_utf8_lossy(&local.body).replace(['\r', '\n'], " "),
            )
            .body(ProxyBody::Empty),
        _ if empty => builder.body(ProxyBody::Empty),
        // The body passes the response filters, which hide its size: say it in the head
        // (a filter that rewrites it removes the header, as with any response).
        _ => {
            if !has_type {
                builder = builder.header(header::CONTENT_TYPE, "text/plain");
            }
            builder
                .header(header::CONTENT_LENGTH, local.body.len())
                .body(ProxyBody::full(local.body))
        }
    };

    response.unwrap_or_else(|_| {
        LocalReply::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "",
            "wasm_bad_local_reply",
        )
        .into_response(ex)
    })
}

/// FAIL_CLOSE (and a failing FAIL_RELOAD request): 503, naming the plugin.
fn plugin_failed(plugin: &str, reason: &str, ex: &mut Exchange) -> Response<ProxyBody> {
    tracing::debug!(plugin, reason, "plugin failure closed a request");
    ex.details = "wasm_fail_stream".into();
    let mut response =
        LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "", "wasm_fail_stream").into_response(ex);
    *response.body_mut() = ProxyBody::full(format!("plugin {plugin} failed\n"));
    response
}

/// Runs a body through the chain as it streams.
struct FilteredBody {
    inner: ProxyBody,
    filters: Rc<RefCell<FilterStream>>,
    response: bool,
    waiting: Option<Pin<Box<dyn std::future::Future<Output = BodyStep>>>>,
    /// Trailers to hand on after the data.
    trailers: Option<http::HeaderMap>,
    done: bool,
}

impl FilteredBody {
    fn new(inner: ProxyBody, filters: Rc<RefCell<FilterStream>>, response: bool) -> Self {
        FilteredBody {
            inner,
            filters,
            response,
            waiting: None,
            trailers: None,
            done: false,
        }
    }

    fn step(&self, data: Bytes, end: bool) -> BodyStep {
        let mut f = self.filters.borrow_mut();
        if self.response {
            f.response_body(data, end)
        } else {
            f.request_body(data, end)
        }
    }

    /// A filter stopped the stream mid-body: keep its reply for the handler, fail the body.
    fn stop(&self, verdict: Verdict) -> BoxError {
        let stream = self.filters.borrow().stream.clone();
        let reply = match verdict {
            Verdict::Reply(local) => Some(local),
            Verdict::Fail { plugin, .. } => Some(LocalResponse {
                status: 503,
                body: Bytes::from(format!("plugin {plugin} failed\n")),
                headers: Vec::new(),
                grpc_status: None,
                details: "wasm_fail_stream".into(),
            }),
            _ => None,
        };
        *stream.local_response.borrow_mut() = reply;
        "a filter stopped the body".into()
    }
}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let step = if let Some(waiting) = &mut this.waiting {
                let step = ready!(waiting.as_mut().poll(cx));
                this.waiting = None;
                step
            } else if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            } else {
                match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            let end = this.inner.is_end_stream();
                            this.done = end;
                            this.step(data, end)
                        }
                        Err(frame) => {
                            if let Ok(trailers) = frame.into_trailers() {
                                let stream = this.filters.borrow().stream.clone();
                                {
                                    let mut data = stream.data.borrow_mut();
                                    if this.response {
                                        data.response_trailers = Some(trailers);
                                    } else {
                                        data.request_trailers = Some(trailers);
                                    }
                                }
                                let verdict = {
                                    let mut f = this.filters.borrow_mut();
                                    if this.response {
                                        f.response_trailers()
                                    } else {
                                        f.request_trailers()
                                    }
                                };
                                if !matches!(verdict, Verdict::Continue) {
                                    return Poll::Ready(Some(Err(this.stop(verdict))));
                                }
                                let mut data = stream.data.borrow_mut();
                                this.trailers = if this.response {
                                    data.response_trailers.take()
                                } else {
                                    data.request_trailers.take()
                                };
                            }
                            // Trailers end the data: filters see the end of the body.
                            this.done = true;
                            this.step(Bytes::new(), true)
                        }
                    },
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    None => {
                        this.done = true;
                        this.step(Bytes::new(), true)
                    }
                }
            };
            match step {
                BodyStep::Emit(data) if !data.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyStep::Emit(_) | BodyStep::Held => continue,
                BodyStep::Wait => {
                    let filters = this.filters.clone();
                    let response = this.response;
                    this.waiting = Some(Box::pin(async move {
                        wasmesh_host::body_resumed(&filters, response).await
                    }));
                }
                BodyStep::Stop(verdict) => return Poll::Ready(Some(Err(this.stop(verdict)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.waiting.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Filters may change the length.
        SizeHint::default()
    }
}
