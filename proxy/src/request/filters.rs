//! Filters: the listener's Wasm filter chain, where it has one. Request headers go through
//! it before routing (a filter may rewrite the path or choose the cluster); bodies stream
//! through it frame by frame; the response (the upstream's or a local reply) goes back
//! through it, last filter first; `on_log` runs when the response has been sent. Pauses
//! (callouts) wait without blocking the worker.

use std::cell::Ref;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header;
use http::request::Parts;
use http::uri::Authority;
use http::{Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use wasmesh_host::{BodyStep, Chain, Decisions, LocalResponse, StreamDriver, StreamInfo, Verdict};

use super::context::Exchange;
use super::local_reply::LocalReply;
use super::prepare::{Prepared, request_authority};
use crate::body::{BoxError, ProxyBody};
use crate::conn::ConnCtx;
use crate::route::Route;
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
    driver: Rc<StreamDriver>,
}

impl Filters {
    /// Starts the stream through `chain`; `core` is the listener's route for the request as
    /// it comes to the filters, when plugins scoped to routes or clusters need to know it.
    pub(super) fn start(
        chain: Rc<Chain>,
        conn: &ConnCtx,
        version: Version,
        core: Option<&Route>,
    ) -> Filters {
        let (route_name, cluster_name) = match core {
            Some(r) => (
                Bytes::copy_from_slice(r.name.as_bytes()),
                r.cluster().map(|c| c.name.clone()).unwrap_or_default(),
            ),
            None => Default::default(),
        };
        let info = StreamInfo {
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
            node_id: conn.worker.shared.node_id.clone(),
            peer_uri_san: conn.peer_uri_san.clone(),
            route_name,
            cluster_name,
            ..Default::default()
        };
        Filters {
            driver: StreamDriver::new(&chain, info),
        }
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
        let end = request.body.is_end_stream();
        match self.driver.request_headers(&mut request.parts, end).await {
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
            verdict => match answer(verdict, ex) {
                Some(response) => RequestPhase::Answer(response),
                None => RequestPhase::Reset,
            },
        }
    }

    pub(super) fn decisions(&self) -> Ref<'_, Decisions> {
        self.driver.decisions()
    }

    /// The route a plugin chose and named (`wasmesh.route_name`).
    pub(super) fn chosen_route_name(&self) -> Option<Bytes> {
        self.driver
            .filter_state()
            .get("wasmesh.route_name")
            .cloned()
    }

    /// The route and cluster the request goes to (no cluster: a direct response), for filters
    /// that read them (shared, not copied).
    pub(super) fn record_route(&self, route_name: Bytes, cluster: Option<&std::sync::Arc<str>>) {
        let mut info = self.driver.info();
        info.cluster_name = cluster.cloned().unwrap_or_default();
        info.route_name = route_name;
    }

    /// The delay a filter injected (flag `DI`), if any.
    pub(super) fn injected_delay(&self, ex: &mut Exchange) -> Option<Duration> {
        let ms = self.driver.decisions().delay_ms.filter(|ms| *ms > 0)?;
        ex.flags.insert(ResponseFlag::DelayInjected);
        Some(Duration::from_millis(ms))
    }

    /// A local reply a body filter made, which stopped the request body.
    pub(super) fn take_local_reply(&self) -> Option<LocalResponse> {
        self.driver.take_local_reply()
    }

    /// The request is answered here without going upstream (a direct response): the
    /// filters keep reading its head while the reply passes them, as after it was sent.
    pub(super) fn keep_request_head(&self, parts: &Parts) {
        self.driver.request_sent(parts);
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
        self.driver.request_sent(parts);
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
                self.driver.clone(),
                false,
            ))
        };
        let reshaped = !end && self.driver.reads_request_body();
        let mirrors = self.driver.decisions().mirrors.clone();
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
        let (mut parts, body) = response.into_parts();
        {
            // The endpoint (and every attempt) is known from the response on, as in Envoy.
            let mut info = self.driver.info();
            info.upstream_address = ex.upstream_host;
            // Complete by now: retries happen before a response is chosen.
            if let Some(attempts) = ex.attempts.take() {
                info.upstream_attempts = attempts;
            }
        }
        let end = body.is_end_stream();
        let verdict = self.driver.response_headers(&mut parts, end).await;
        // Every request that got this far passes here, whichever phase set the flags.
        for flag in &self.driver.decisions().response_flags {
            ex.flags.insert(*flag);
        }
        if !matches!(verdict, Verdict::Continue) {
            return answer(verdict, ex).ok_or(StreamReset);
        }
        let body = if end {
            body
        } else {
            ProxyBody::boxed(FilteredBody::new(body, self.driver.clone(), true))
        };
        Ok(Response::from_parts(parts, body))
    }

    /// Ends the stream for the filters (`on_done`, `on_log`) once the response is sent, with
    /// what the proxy learned about it.
    pub(super) fn finish(&self, record: impl FnOnce(&mut StreamInfo)) {
        self.driver.finish(record);
    }
}

/// The answer to a verdict that ended the stream: the filter's reply, or 503 for a failed
/// plugin; `None` for a reset.
pub(super) fn answer(verdict: Verdict, ex: &mut Exchange) -> Option<Response<ProxyBody>> {
    match verdict {
        Verdict::Continue | Verdict::Reset => None,
        Verdict::Reply(local) => Some(local_response(local, ex)),
        Verdict::Fail { plugin, reason } => Some(plugin_failed(&plugin, &reason, ex)),
    }
}

/// A filter's local reply as a response (a gRPC status for gRPC requests).
pub(super) fn local_response(local: LocalResponse, ex: &mut Exchange) -> Response<ProxyBody> {
    // The filter's details (Envoy's: `rbac_access_denied_matched_policy[...]`), as one token.
    ex.details = if local.details.is_empty() {
        "wasm_local_reply".into()
    } else {
        local.details.replace(char::is_whitespace, "_").into()
    };
    match local.to_response(ex.grpc) {
        Ok(response) => response.map(|body| {
            if body.is_empty() {
                ProxyBody::Empty
            } else {
                ProxyBody::full(body)
            }
        }),
        Err(_) => LocalReply::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "",
            "wasm_bad_local_reply",
        )
        .into_response(ex),
    }
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
    driver: Rc<StreamDriver>,
    response: bool,
    waiting: Option<Pin<Box<dyn std::future::Future<Output = BodyStep>>>>,
    /// Trailers to hand on after the data.
    trailers: Option<http::HeaderMap>,
    done: bool,
}

impl FilteredBody {
    fn new(inner: ProxyBody, driver: Rc<StreamDriver>, response: bool) -> Self {
        FilteredBody {
            inner,
            driver,
            response,
            waiting: None,
            trailers: None,
            done: false,
        }
    }

    /// A filter stopped the stream mid-body: its reply stays for the request's answer; the
    /// body fails.
    fn stop(&self, verdict: Verdict) -> BoxError {
        self.driver.body_stopped(verdict);
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
                            this.driver.body(data, end, this.response)
                        }
                        Err(frame) => {
                            if let Ok(mut trailers) = frame.into_trailers() {
                                let verdict = this.driver.trailers(&mut trailers, this.response);
                                if !matches!(verdict, Verdict::Continue) {
                                    return Poll::Ready(Some(Err(this.stop(verdict))));
                                }
                                this.trailers = Some(trailers);
                            }
                            // Trailers end the data: filters see the end of the body.
                            this.done = true;
                            this.driver.body(Bytes::new(), true, this.response)
                        }
                    },
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    None => {
                        this.done = true;
                        this.driver.body(Bytes::new(), true, this.response)
                    }
                }
            };
            match step {
                BodyStep::Emit(data) if !data.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyStep::Emit(_) | BodyStep::Held => continue,
                BodyStep::Wait => {
                    let driver = this.driver.clone();
                    let response = this.response;
                    this.waiting =
                        Some(Box::pin(async move { driver.body_resumed(response).await }));
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
