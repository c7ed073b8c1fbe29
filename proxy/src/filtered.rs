//! The request path through a listener's Wasm filter chain.
//!
//! Request headers go through the chain before routing (a filter may rewrite the path or pick
//! the upstream cluster); bodies stream through it frame by frame; the response (from the
//! upstream or a local reply) goes back through it, last filter first; `on_log` runs when the
//! response has been sent. Pauses (callouts) wait without blocking the worker.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use wasmesh_host::{
    BodyStep, Chain, Decisions, FilterStream, LocalResponse, Stream, StreamInfo, Verdict,
};

use crate::body::{BoxError, ProxyBody};
use crate::config::UpstreamProtocol;
use crate::conn::ConnCtx;
use crate::handler::{
    Exchange, LocalReply, Target, Upstream, request_authority, send_h2, upstream_request,
};
use crate::headers;
use crate::snapshot::Snapshot;
use crate::stats::ResponseFlag;

/// A filter reset the stream: the client sees the stream reset, not a response.
#[derive(Debug, thiserror::Error)]
#[error("stream reset by a filter")]
pub struct StreamReset;

/// Request bodies up to this size are copied to mirrors.
const MIRROR_BODY_LIMIT: u64 = 64 * 1024;

/// Serves a request through `chain`. Returns the response and the filter stream, whose
/// `on_log` runs when the response is done.
pub async fn serve(
    mut req: Request<Incoming>,
    conn: &ConnCtx,
    snapshot: &Snapshot,
    chain: Rc<Chain>,
    ex: &mut Exchange,
) -> Result<(Response<ProxyBody>, Option<Rc<RefCell<FilterStream>>>), StreamReset> {
    if req.method() == Method::CONNECT {
        let reply = LocalReply::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
            "connect_not_supported",
        );
        return Ok((reply.into_response(ex), None));
    }
    let is_upgrade =
        req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
    let on_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let authority = match request_authority(&mut parts) {
        Ok(a) => a,
        Err(reply) => return Ok((reply.into_response(ex), None)),
    };
    // Filters see the headers the proxy adds, as they do in Envoy.
    headers::Added::prepare(&mut parts.headers, is_upgrade, &conn.client_ip)
        .apply_to(&mut parts.headers);
    // Logged as received, even if a filter answers before the request goes anywhere (Envoy);
    // taken again after the filters, who may change them.
    ex.capture_request(&parts, authority.as_ref(), &headers::Added::default());

    let stream = Stream::new(StreamInfo {
        source: Some(conn.peer),
        destination: Some(conn.local),
        connection_id: conn.id,
        protocol: match parts.version {
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
    stream.data.borrow_mut().request = Some(parts);
    ex.attempts = Some(Vec::new());
    let filters = Rc::new(RefCell::new(chain.stream(stream.clone())));

    let end = body.is_end_stream();
    let verdict = wasmesh_host::request_headers(&filters, end).await;
    let parts = stream
        .data
        .borrow_mut()
        .request
        .take()
        .expect("the request head is back");

    let response = match verdict {
        Verdict::Continue => {
            forward(
                parts, body, on_upgrade, conn, snapshot, &stream, &filters, ex,
            )
            .await
        }
        Verdict::Reply(local) => {
            // A delay and an abort both injected: the abort comes after the delay (Envoy).
            let delay = stream.decisions.borrow().delay_ms.filter(|ms| *ms > 0);
            if let Some(ms) = delay {
                ex.flags.insert(ResponseFlag::DelayInjected);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            local_response(local, ex)
        }
        Verdict::Fail { plugin, reason } => plugin_failed(&plugin, &reason, ex),
        Verdict::Reset => return Err(StreamReset),
    };
    respond(response, &stream, &filters, ex)
        .await
        .map(|r| (r, Some(filters)))
}

/// Routes (by the filters' decisions, else the route table) and forwards.
#[allow(clippy::too_many_arguments)]
async fn forward(
    mut parts: Parts,
    body: Incoming,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    conn: &ConnCtx,
    snapshot: &Snapshot,
    stream: &Rc<Stream>,
    filters: &Rc<RefCell<FilterStream>>,
    ex: &mut Exchange,
) -> Response<ProxyBody> {
    let authority = match request_authority(&mut parts) {
        Ok(a) => a,
        Err(reply) => return reply.into_response(ex),
    };
    ex.capture_request(&parts, authority.as_ref(), &headers::Added::default());
    let decisions = stream.decisions.borrow().clone();
    let host = authority.as_ref().map_or("", Authority::as_str);
    let route = snapshot.routes[conn.listener].find(host, parts.uri.path());
    let retry_override = decisions.retry_policy.clone();
    let mut target = match (&decisions.upstream_cluster, route) {
        (Some(name), route) => match snapshot.cluster(name) {
            Some(cluster) => Target {
                cluster,
                timeout: route.map_or(Some(Duration::from_secs(15)), |r| r.timeout),
                retry: route.and_then(|r| r.retry.as_ref()),
            },
            None => return LocalReply::cluster_not_found().into_response(ex),
        },
        (None, Some(route)) => Target::of(route),
        (None, None) => return LocalReply::no_route().into_response(ex),
    };
    if let Some(ms) = decisions.timeout_ms {
        target.timeout = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let Some(policy) = &retry_override {
        target.retry = Some(policy);
    }
    {
        // A route a plugin chose (the router's VirtualService route) names the request.
        let chosen = stream
            .filter_state
            .borrow()
            .get("wasmesh.route_name")
            .map(|n| String::from_utf8_lossy(n).into_owned());
        let mut info = stream.info.borrow_mut();
        info.cluster_name = target.cluster.name.clone();
        info.route_name =
            chosen.unwrap_or_else(|| route.map_or_else(String::new, |r| r.name.clone()));
        ex.capture_names(&info.route_name, &info.cluster_name);
    }

    if let Some(ms) = decisions.delay_ms.filter(|ms| *ms > 0) {
        ex.flags.insert(ResponseFlag::DelayInjected);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let upstream = Upstream {
        pool: conn.worker.pools.cluster(target.cluster),
        route: target,
        conn,
    };
    if let Some(on_upgrade) = on_upgrade {
        let body = ProxyBody::Incoming(body);
        let upgrade = upstream.forward_upgrade(parts, body, authority, on_upgrade, ex);
        return match Box::pin(upgrade).await {
            Ok(r) => r,
            Err(reply) => reply.into_response(ex),
        };
    }
    // The filters keep reading the request head after it left.
    stream.data.borrow_mut().request = Some(head_copy(&parts));

    let end = body.is_end_stream();
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MIRROR_BODY_LIMIT);
    let mut body = if end {
        ProxyBody::Empty
    } else {
        ProxyBody::boxed(FilteredBody::new(
            ProxyBody::Incoming(body),
            filters.clone(),
            false,
        ))
    };
    // Filters that see the body may change its length: a small body is read through them
    // whole and goes with its real length (as do mirrored ones); a larger one goes without a
    // declared length (chunked, or HTTP/2 DATA frames).
    let reshaped = !end && filters.borrow().chain().reads_request_body();
    if (reshaped || !decisions.mirrors.is_empty()) && (end || small) {
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                return match stream.local_response.borrow_mut().take() {
                    Some(local) => local_response(local, ex),
                    None => LocalReply::downstream_reset().into_response(ex),
                };
            }
        };
        for cluster in &decisions.mirrors {
            mirror(
                conn,
                snapshot,
                cluster,
                &parts,
                authority.as_ref(),
                bytes.clone(),
            );
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        body = if bytes.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::full(bytes)
        };
    } else if reshaped {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    match upstream
        .forward(parts, headers::Added::default(), body, authority, ex)
        .await
    {
        Ok(r) => r,
        // A body filter that answered or failed mid-body aborted the upstream request.
        Err(reply) => match stream.local_response.borrow_mut().take() {
            Some(local) => local_response(local, ex),
            None => reply.into_response(ex),
        },
    }
}

/// Runs the response through the chain.
async fn respond(
    response: Response<ProxyBody>,
    stream: &Rc<Stream>,
    filters: &Rc<RefCell<FilterStream>>,
    ex: &mut Exchange,
) -> Result<Response<ProxyBody>, StreamReset> {
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
    let verdict = wasmesh_host::response_headers(filters, body.is_end_stream()).await;
    // Every request that got this far passes here, whichever phase set the flags.
    apply_flags(&stream.decisions.borrow(), ex);
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
        ProxyBody::boxed(FilteredBody::new(body, filters.clone(), true))
    };
    Ok(Response::from_parts(parts, body))
}

/// The response flags filters set (`wasmesh.response_flag`), for stats and the access log.
fn apply_flags(decisions: &Decisions, ex: &mut Exchange) {
    for flag in &decisions.response_flags {
        ex.flags.insert(*flag);
    }
}

/// A copy of the request head, for filters that read it in later phases.
fn head_copy(parts: &Parts) -> Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

fn response_head_copy(parts: &http::response::Parts) -> http::response::Parts {
    let (mut copy, ()) = Response::new(()).into_parts();
    copy.status = parts.status;
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// Sends a copy of the request to a mirror cluster, Host suffixed `-shadow` as Istio does; the
/// answer is discarded and never delays the request.
fn mirror(
    conn: &ConnCtx,
    snapshot: &Snapshot,
    cluster: &str,
    parts: &Parts,
    authority: Option<&Authority>,
    body: Bytes,
) {
    let Some(cluster) = snapshot.cluster(cluster).cloned() else {
        return;
    };
    let worker = conn.worker.clone();
    let mut head = head_copy(parts);
    let shadow = authority.map(|a| {
        let host = a.host();
        match a.port_u16() {
            Some(port) => format!("{host}-shadow:{port}"),
            None => format!("{host}-shadow"),
        }
    });
    if let Some(h) = shadow
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        head.headers.insert(header::HOST, h);
    }
    let shadow: Option<Authority> = shadow.and_then(|s| s.parse().ok());
    tokio::task::spawn_local(async move {
        let pool = worker.pools.cluster(&cluster);
        let Some(index) = crate::upstream::pick_endpoint(&cluster, &pool.rr, &[]) else {
            return;
        };
        let endpoint = pool.endpoints[index].clone();
        let h2 = match cluster.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Downstream => head.version == Version::HTTP_2,
        };
        let send = async {
            if h2 {
                // The cluster speaks HTTP/2 (gRPC, say): so does its mirror.
                let req = upstream_request(
                    &mut head,
                    shadow.as_ref(),
                    ProxyBody::full(body),
                    true,
                    &endpoint,
                    true,
                );
                let response = send_h2(&endpoint, req).await.ok()?;
                let _ = response.into_body().collect().await;
                return Some(());
            }
            let conn = endpoint.acquire_h1(None).await.ok()?;
            let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
            let response = conn
                .send(
                    &head.method,
                    target,
                    &head.headers,
                    &headers::Added::default(),
                    shadow.as_ref(),
                    ProxyBody::full(body),
                )
                .await
                .ok()?;
            let _ = response.into_body().collect().await;
            Some(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), send).await;
    });
}

/// A filter's local reply as a response (a gRPC status for gRPC requests).
fn local_response(local: LocalResponse, ex: &mut Exchange) -> Response<ProxyBody> {
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
