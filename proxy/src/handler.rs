//! The path of one request: prepare headers, route, forward with retries and timeouts, and
//! account for the response when its last byte is sent.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::access_log::Entry;
use crate::body::{BoxError, IdleTimeout, ProxyBody, StreamIdleTimeout};
use crate::config::{RetryOn, RetryPolicy, ServerHeaderTransformation, UpstreamProtocol};
use crate::conn::ConnCtx;
use crate::h1_guard::SwitchWatch;
use crate::headers;
use crate::route::Route;
use crate::snapshot::Snapshot;
use crate::stats::{ResponseFlag, ResponseFlags};
use crate::upstream::h1::ClientError;
use crate::upstream::pool::{AcquireError, ClusterPool, EndpointPool};
use crate::upstream::{Cluster, pick_endpoint};

const UPSTREAM_SERVICE_TIME: header::HeaderName =
    header::HeaderName::from_static("x-envoy-upstream-service-time");

/// Request bodies up to this size are kept so the request can be retried.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

/// Serves one downstream request.
pub async fn serve(
    req: Request<Incoming>,
    conn: Rc<ConnCtx>,
) -> Result<Response<ResponseBody>, crate::filtered::StreamReset> {
    conn.request_started();
    // The HTTP/1 guard holds back what follows a request that asks to switch protocols until
    // it knows the answer; this is that request (at most one is pending per connection).
    let asks_switch =
        conn.switch.is_pending() && SwitchWatch::asks(req.method(), req.version(), req.headers());
    let snapshot = conn.worker.snapshot();
    let mut ex = Exchange::new(&req, &conn);
    let unanswered = Unanswered {
        conn: &conn,
        start: ex.start,
    };
    let (response, filters) = match conn.worker.chain(&snapshot, conn.listener) {
        None => (serve_unfiltered(req, &conn, &snapshot, &mut ex).await, None),
        Some(Ok(chain)) => {
            let served = Box::pin(crate::filtered::serve(
                req, &conn, &snapshot, chain, &mut ex,
            ))
            .await;
            match served {
                Ok(pair) => pair,
                Err(reset) => {
                    if asks_switch {
                        // hyper ends the connection; nothing follows on it.
                        conn.switch.answered(StatusCode::INTERNAL_SERVER_ERROR);
                    }
                    std::mem::forget(unanswered);
                    conn.request_finished(Instant::now());
                    conn.stream_closed(None);
                    return Err(reset);
                }
            }
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "plugin chain unavailable on this worker");
            let reply = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "", "wasm_fail_stream");
            (reply.into_response(&mut ex), None)
        }
    };
    if asks_switch {
        conn.switch.answered(response.status());
    }
    let mut response = response;
    set_server_header(response.headers_mut(), &conn);
    // From here the response body accounts for the request.
    std::mem::forget(unanswered);
    let mut response = ResponseBody::new(response, ex, conn);
    response.body_mut().filters = filters;
    Ok(response)
}

/// Envoy's `server_header_transformation`, on every response the client gets.
fn set_server_header(headers: &mut header::HeaderMap, conn: &ConnCtx) {
    match conn.opts.server_header_transformation {
        ServerHeaderTransformation::Overwrite => {
            headers.insert(header::SERVER, conn.server_name.clone());
        }
        ServerHeaderTransformation::AppendIfAbsent => {
            if !headers.contains_key(header::SERVER) {
                headers.insert(header::SERVER, conn.server_name.clone());
            }
        }
        ServerHeaderTransformation::PassThrough => {}
    }
}

/// A request whose handler has not answered yet. hyper drops the handler when the client
/// resets the stream (HTTP/2) or goes away: the request is over then, and the reset counts
/// toward the connection's premature resets.
struct Unanswered<'a> {
    conn: &'a ConnCtx,
    start: std::time::Instant,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        self.conn.request_finished(Instant::now());
        self.conn.stream_closed(Some(self.start.elapsed()));
    }
}

async fn serve_unfiltered(
    req: Request<Incoming>,
    conn: &ConnCtx,
    snapshot: &Snapshot,
    ex: &mut Exchange,
) -> Response<ProxyBody> {
    // Routing is synchronous; only forwarding awaits, so this future stays small (hyper moves
    // it once per request).
    let result = match prepare(req, conn, snapshot, ex) {
        Err(reply) => Err(reply),
        Ok(Prepared {
            upstream,
            parts,
            added,
            body,
            authority,
            upgrade: None,
        }) => {
            upstream
                .forward(parts, added, ProxyBody::Incoming(body), authority, ex)
                .await
        }
        // Boxed: upgrades are rare, and their state would otherwise enlarge every request's.
        Ok(Prepared {
            upstream,
            parts,
            body,
            authority,
            upgrade: Some(on_upgrade),
            ..
        }) => {
            let body = ProxyBody::Incoming(body);
            Box::pin(upstream.forward_upgrade(parts, body, authority, on_upgrade, ex)).await
        }
    };
    result.unwrap_or_else(|reply| reply.into_response(ex))
}

/// A request with its headers prepared and its route chosen.
struct Prepared<'a> {
    upstream: Upstream<'a>,
    parts: Parts,
    added: headers::Added,
    body: Incoming,
    authority: Option<Authority>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
}

fn prepare<'a>(
    mut req: Request<Incoming>,
    conn: &'a ConnCtx,
    snapshot: &'a Snapshot,
    ex: &mut Exchange,
) -> Result<Prepared<'a>, LocalReply> {
    if req.method() == Method::CONNECT {
        return Err(LocalReply::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
            "connect_not_supported",
        ));
    }
    let is_upgrade =
        req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
    let upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let authority = request_authority(&mut parts)?;
    let mut added = headers::Added::prepare(&mut parts.headers, is_upgrade, &conn.client_ip);
    ex.capture_request(&parts, authority.as_ref(), &added);
    if upgrade.is_some() {
        std::mem::take(&mut added).apply_to(&mut parts.headers);
    }

    let host = authority.as_ref().map_or("", Authority::as_str);
    let route = snapshot.routes[conn.listener]
        .find(host, parts.uri.path())
        .ok_or_else(LocalReply::no_route)?;
    ex.capture_route(route);
    let upstream = Upstream {
        route: Target::of(route),
        pool: conn.worker.pools.cluster(&route.cluster),
        conn,
    };
    Ok(Prepared {
        upstream,
        parts,
        added,
        body,
        authority,
        upgrade,
    })
}

/// The authority a request is for: `:authority` (HTTP/2, absolute-form) or `Host`.
///
/// A `Host` header that disagrees with the target's authority is replaced by it, so the
/// upstream sees the authority the request was routed on (RFC 9112 3.2.2; Envoy drops `host`
/// beside `:authority`).
pub(crate) fn request_authority(parts: &mut Parts) -> Result<Option<Authority>, LocalReply> {
    if let Some(a) = parts.uri.authority() {
        if let Some(host) = parts.headers.get(header::HOST)
            && host.as_bytes() != a.as_str().as_bytes()
        {
            let routed = HeaderValue::from_str(a.as_str())
                .map_err(|_| LocalReply::bad_request("invalid authority"))?;
            parts.headers.insert(header::HOST, routed);
        }
        return Ok(Some(a.clone()));
    }
    match parts.headers.get(header::HOST) {
        Some(host) => Authority::try_from(host.as_bytes())
            .map(Some)
            .map_err(|_| LocalReply::bad_request("invalid Host header")),
        None if parts.version == Version::HTTP_11 => {
            Err(LocalReply::bad_request("missing Host header"))
        }
        None => Ok(None),
    }
}

/// Where and how a request goes upstream: from its route, or from what a filter decided.
pub(crate) struct Target<'a> {
    pub cluster: &'a Arc<Cluster>,
    pub timeout: Option<Duration>,
    pub retry: Option<&'a RetryPolicy>,
}

impl<'a> Target<'a> {
    pub fn of(route: &'a Route) -> Target<'a> {
        Target {
            cluster: &route.cluster,
            timeout: route.timeout,
            retry: route.retry.as_ref(),
        }
    }
}

pub(crate) struct Upstream<'a> {
    pub route: Target<'a>,
    pub pool: Rc<ClusterPool>,
    pub conn: &'a ConnCtx,
}

/// How one attempt ended, when it did not produce a response.
pub(crate) enum AttemptError {
    Acquire(AcquireError),
    /// The request failed after it was handed to a connection.
    Reset {
        refused: bool,
        error: BoxError,
    },
    /// The upstream's response broke HTTP framing or syntax.
    Protocol(BoxError),
    /// The client's request body failed (its framing broke, it stalled, or the client went
    /// away): the client's fault, never held against the endpoint.
    RequestBody(BoxError),
    PerTryTimeout,
    GlobalTimeout,
}

/// The request body, kept for replay when it is small enough to retry.
enum RequestBody {
    Replayable(Option<Bytes>),
    Streaming(Option<ProxyBody>),
}

impl RequestBody {
    fn take(&mut self) -> ProxyBody {
        match self {
            RequestBody::Replayable(None) => ProxyBody::Empty,
            RequestBody::Replayable(Some(b)) => ProxyBody::Full(Some(b.clone())),
            RequestBody::Streaming(body) => body.take().unwrap_or_default(),
        }
    }

    fn put_back(&mut self, body: ProxyBody) {
        if let RequestBody::Streaming(slot) = self {
            *slot = Some(body);
        }
    }

    fn can_replay(&self) -> bool {
        !matches!(self, RequestBody::Streaming(None))
    }
}

impl Upstream<'_> {
    /// Sends the request upstream, with retries. `added` holds the headers the proxy adds
    /// (see [`headers::Added`]); an HTTP/1.1 upstream gets them written after the request's.
    pub(crate) async fn forward(
        &self,
        mut parts: Parts,
        mut added: headers::Added,
        body: ProxyBody,
        authority: Option<Authority>,
        ex: &mut Exchange,
    ) -> Result<Response<ProxyBody>, LocalReply> {
        let cluster = &self.route.cluster;
        let policy = self.route.retry;
        let max_attempts = 1 + policy.map_or(0, |p| p.num_retries);
        let started = Instant::from_std(ex.start);
        let deadline = self.route.timeout.map(|t| started + t);
        let mut body = self
            .prepare_body(body, max_attempts > 1, ex, deadline)
            .await?;

        let Some(active) = ActiveRequest::start(cluster) else {
            cluster.stats().rq_overflow.inc();
            return Err(LocalReply::overflow());
        };
        cluster.stats().rq_total.inc();
        let h2 = match cluster.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Downstream => parts.version == Version::HTTP_2,
        };
        if h2 {
            std::mem::take(&mut added).apply_to(&mut parts.headers);
        }

        let mut active = active;
        let mut tried = Tried::default();
        let mut _retry_slot = None;
        let mut attempt = 1;
        loop {
            let Some(index) = pick_endpoint(cluster, &self.pool.rr, tried.as_slice()) else {
                return Err(LocalReply::no_healthy_upstream());
            };
            tried.push(index);
            let endpoint_pool = self.pool.endpoints[index].clone();
            active.set_endpoint(index);
            ex.upstream_host = Some(endpoint_pool.endpoint().addr);
            endpoint_pool.endpoint().rq_total.fetch_add(1, Relaxed);

            let last_possible = attempt >= max_attempts;
            let per_try = policy.and_then(|p| p.per_try_timeout.nonzero());
            let try_deadline = earliest(deadline, per_try.map(|t| Instant::now() + t));
            let outcome = self
                .attempt(
                    &mut parts,
                    &added,
                    authority.as_ref(),
                    &mut body,
                    &endpoint_pool,
                    h2,
                    try_deadline,
                    last_possible,
                )
                .await;
            let outcome = match outcome {
                Err(AttemptError::PerTryTimeout) if try_deadline == deadline => {
                    Err(AttemptError::GlobalTimeout)
                }
                other => other,
            };
            // Decide: done, or retry.
            let (retry_wanted, result) = match outcome {
                Ok(response) => {
                    let status = response.status();
                    if let Some(attempts) = &mut ex.attempts {
                        attempts.push((endpoint_pool.endpoint().addr, status.as_u16()));
                    }
                    cluster.stats().rq_by_class[(status.as_u16() / 100).min(5) as usize].inc();
                    if status.is_server_error() {
                        endpoint_pool.endpoint().rq_error.fetch_add(1, Relaxed);
                    }
                    let wanted = policy.is_some_and(|p| retriable_response(p, &response));
                    ex.upstream_time = Some(started.elapsed());
                    (wanted, Ok(response))
                }
                Err(AttemptError::RequestBody(error)) => {
                    (false, Err(LocalReply::request_body_failed(&*error, ex)))
                }
                Err(e) => {
                    endpoint_pool.endpoint().rq_error.fetch_add(1, Relaxed);
                    if let Some(attempts) = &mut ex.attempts {
                        attempts.push((endpoint_pool.endpoint().addr, 0));
                    }

                    let wanted = policy.is_some_and(|p| retriable_error(p.retry_on, &e));
                    (wanted, Err(self.failure_reply(e, attempt > 1, ex)))
                }
            };
            let can_retry =
                retry_wanted && body.can_replay() && deadline.is_none_or(|d| Instant::now() < d);
            if !can_retry || last_possible {
                if retry_wanted && last_possible && attempt > 1 {
                    cluster.stats().rq_retry_limit_exceeded.inc();
                    ex.flags.insert(ResponseFlag::UpstreamRetryLimitExceeded);
                } else if attempt > 1 && result.is_ok() && !retry_wanted {
                    cluster.stats().rq_retry_success.inc();
                }
                return result.map(|r| self.finish_response(r, active, ex));
            }
            match cluster.try_start_retry() {
                Some(slot) => _retry_slot = Some(slot),
                None => {
                    cluster.stats().rq_retry_overflow.inc();
                    return result.map(|r| self.finish_response(r, active, ex));
                }
            }
            // A failed response whose body has already arrived is read to its end, so its
            // connection goes back to the pool; any other is dropped with its connection.
            if let Ok(response) = result {
                let _ = futures_util::FutureExt::now_or_never(response.into_body().collect());
            }

            cluster.stats().rq_retry.inc();
            ex.flags = ResponseFlags::default();
            let backoff = backoff(policy.expect("retries need a policy"), attempt);
            let wake = earliest(deadline, Some(Instant::now() + backoff)).expect("a wake time");
            tokio::time::sleep_until(wake).await;
            attempt += 1;
        }
    }

    /// Decides whether the body can be replayed: empty and small bodies are kept, large or
    /// unsized ones stream (and are then retried only if no byte of them was sent).
    async fn prepare_body(
        &self,
        body: ProxyBody,
        retries: bool,
        ex: &mut Exchange,
        deadline: Option<Instant>,
    ) -> Result<RequestBody, LocalReply> {
        if body.is_end_stream() {
            return Ok(RequestBody::Replayable(None));
        }
        let small = body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= RETRY_BUFFER_LIMIT);
        if retries && small {
            let collect = Box::pin(body.collect());
            let collected = match deadline {
                Some(d) => tokio::time::timeout_at(d, collect)
                    .await
                    .map_err(|_| LocalReply::request_timeout())?,
                None => collect.await,
            };
            let bytes = collected
                .map_err(|_| LocalReply::downstream_reset())?
                .to_bytes();
            ex.bytes_received.set(bytes.len() as u64);
            return Ok(RequestBody::Replayable(Some(bytes)));
        }
        let counted = CountingBody {
            inner: body,
            count: ex.bytes_received.clone(),
        };
        let body = match self.conn.opts.stream_idle_timeout.nonzero() {
            Some(t) => ProxyBody::boxed(IdleTimeout::new(counted, t)),
            None => ProxyBody::boxed(counted),
        };
        Ok(RequestBody::Streaming(Some(body)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        parts: &mut Parts,
        added: &headers::Added,
        authority: Option<&Authority>,
        body: &mut RequestBody,
        pool: &Rc<EndpointPool>,
        h2: bool,
        deadline: Option<Instant>,
        last_possible: bool,
    ) -> Result<Response<ProxyBody>, AttemptError> {
        let exchange = async {
            if h2 {
                // Boxed so the HTTP/2 path's state does not enlarge every HTTP/1 request.
                let req =
                    upstream_request(parts, authority, body.take(), true, pool, last_possible);
                return Box::pin(send_h2(pool, req)).await;
            }

            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            loop {
                let conn = pool
                    .acquire_h1(deadline)
                    .await
                    .map_err(AttemptError::Acquire)?;
                let reused = conn.uses > 0;
                match conn
                    .send(
                        &parts.method,
                        target,
                        &parts.headers,
                        added,
                        authority,
                        body.take(),
                    )
                    .await
                {
                    Ok(response) => return Ok(response.map(ProxyBody::Upstream)),
                    Err(e) => {
                        let not_sent = e.body.is_some();
                        if let Some(b) = e.body {
                            body.put_back(b);
                        }
                        // A pooled connection the server closed while it sat idle: the request
                        // was not processed, so it goes out again on another connection
                        // without counting as a retry.
                        if reused && e.before_response && body.can_replay() {
                            continue;
                        }
                        match e.error {
                            ClientError::Invalid(_) => {
                                return Err(AttemptError::Protocol(e.error.into()));
                            }
                            ClientError::RequestBody(error) => {
                                return Err(AttemptError::RequestBody(error));
                            }
                            ClientError::BodyLength(_) => {
                                return Err(AttemptError::RequestBody(e.error.into()));
                            }
                            _ => {}
                        }
                        return Err(AttemptError::Reset {
                            refused: not_sent,
                            error: e.error.into(),
                        });
                    }
                }
            }
        };
        match deadline {
            Some(d) => tokio::time::timeout_at(d, exchange)
                .await
                .unwrap_or(Err(AttemptError::PerTryTimeout)),
            None => exchange.await,
        }
    }

    /// The local reply for a failed attempt; `retried` if it was not the first.
    fn failure_reply(&self, e: AttemptError, retried: bool, ex: &mut Exchange) -> LocalReply {
        let stats = self.route.cluster.stats();
        match e {
            AttemptError::Acquire(AcquireError::PendingOverflow) => LocalReply::overflow(),
            AttemptError::Acquire(AcquireError::Timeout) | AttemptError::GlobalTimeout => {
                stats.rq_timeout.inc();
                LocalReply::upstream_timeout()
            }
            AttemptError::PerTryTimeout => {
                stats.rq_per_try_timeout.inc();
                LocalReply::upstream_timeout()
            }
            AttemptError::Acquire(AcquireError::ConnectFailed(e)) => {
                ex.failure_reason = Some(e.to_string());
                LocalReply::connect_failure(&e, retried)
            }
            AttemptError::Acquire(AcquireError::Handshake(e)) => {
                ex.failure_reason = Some(e.to_string());
                LocalReply::connect_failure(&std::io::Error::other(e), retried)
            }
            AttemptError::Reset { error, .. } => {
                stats.rq_reset.inc();
                ex.failure_reason = Some(error.to_string());
                LocalReply::upstream_reset(retried)
            }
            AttemptError::Protocol(error) => {
                stats.rq_reset.inc();
                ex.failure_reason = Some(error.to_string());
                LocalReply::upstream_protocol_error(retried)
            }
            AttemptError::RequestBody(error) => LocalReply::request_body_failed(&*error, ex),
        }
    }

    fn finish_response(
        &self,
        response: Response<ProxyBody>,
        active: ActiveRequest,
        ex: &mut Exchange,
    ) -> Response<ProxyBody> {
        ex.active = Some(active);
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        if let Some(time) = ex.upstream_time {
            // Envoy's router header: milliseconds from the request to the upstream's answer.
            let millis = HeaderValue::from(time.as_millis() as u64);
            parts.headers.insert(UPSTREAM_SERVICE_TIME, millis);
        }
        // A body that has fully arrived (the usual small response) cannot go idle.
        let body = match self.conn.opts.stream_idle_timeout.nonzero() {
            Some(t) if !body.is_buffered_whole() => ProxyBody::boxed(IdleTimeout::new(body, t)),
            _ => body,
        };
        Response::from_parts(parts, body)
    }

    /// Forwards an HTTP/1.1 upgrade (WebSocket): a dedicated upstream connection, then the two
    /// upgraded streams are spliced together.
    pub(crate) async fn forward_upgrade(
        &self,
        parts: Parts,
        body: ProxyBody,
        authority: Option<Authority>,
        downstream: hyper::upgrade::OnUpgrade,
        ex: &mut Exchange,
    ) -> Result<Response<ProxyBody>, LocalReply> {
        let cluster = &self.route.cluster;
        let Some(mut active) = ActiveRequest::start(cluster) else {
            cluster.stats().rq_overflow.inc();
            return Err(LocalReply::overflow());
        };
        cluster.stats().rq_total.inc();
        let index = pick_endpoint(cluster, &self.pool.rr, &[])
            .ok_or_else(LocalReply::no_healthy_upstream)?;
        active.set_endpoint(index);
        let pool = &self.pool.endpoints[index];
        ex.upstream_host = Some(pool.endpoint().addr);
        let started = Instant::now();
        let connect = pool.connect_for_upgrade();
        let mut sender = match self.route.timeout {
            Some(t) => tokio::time::timeout(t, connect)
                .await
                .map_err(|_| LocalReply::upstream_timeout())?,
            None => connect.await,
        }
        .map_err(|e| self.failure_reply(AttemptError::Acquire(e), false, ex))?;
        let mut parts = parts;
        // The request's own body (rare, but legal) goes with it.
        let req = upstream_request(&mut parts, authority.as_ref(), body, false, pool, true);
        let mut response = sender.send_request(req).await.map_err(|error| {
            let e = if error.is_user() {
                AttemptError::RequestBody(error.into())
            } else {
                AttemptError::Reset {
                    refused: false,
                    error: error.into(),
                }
            };
            self.failure_reply(e, false, ex)
        })?;
        ex.upstream_time = Some(started.elapsed());
        let headers = response.headers();
        if headers.contains_key(header::CONTENT_LENGTH)
            && headers.contains_key(header::TRANSFER_ENCODING)
        {
            // hyper's client frames by the chunking and would pass the length on.
            let error = "both content-length and transfer-encoding".into();
            return Err(self.failure_reply(AttemptError::Protocol(error), false, ex));
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::task::spawn_local(async move {
                let (Ok(up), Ok(down)) = tokio::join!(upstream, downstream) else {
                    return;
                };
                let mut up = hyper_util::rt::TokioIo::new(up);
                let mut down = hyper_util::rt::TokioIo::new(down);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
            ex.active = Some(active);
            let (parts, _) = response.into_parts();
            return Ok(Response::from_parts(parts, ProxyBody::Empty));
        }
        Ok(self.finish_response(response.map(ProxyBody::Incoming), active, ex))
    }
}

/// Builds the request for one attempt. On the last possible attempt the headers are moved
/// instead of copied.
pub(crate) fn upstream_request(
    parts: &mut Parts,
    authority: Option<&Authority>,
    body: ProxyBody,
    h2: bool,
    pool: &EndpointPool,
    last_possible: bool,
) -> Request<ProxyBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = if last_possible {
        std::mem::take(&mut parts.headers)
    } else {
        parts.headers.clone()
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if h2 {
        *req.version_mut() = Version::HTTP_2;
        let authority = authority.cloned().unwrap_or_else(|| {
            Authority::try_from(pool.endpoint().addr.to_string().as_str())
                .expect("an address is an authority")
        });
        req.headers_mut().remove(header::HOST);
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(path);
        *req.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path make a URI");
    } else {
        *req.version_mut() = Version::HTTP_11;
        *req.uri_mut() = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
            parts.uri.clone()
        } else {
            Uri::from(path)
        };
        if let Some(a) = authority
            && !req.headers().contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(a.as_str())
        {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    req
}

fn is_refused_stream(e: &hyper::Error) -> bool {
    use std::error::Error;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// Envoy's `retry_on` for a response.
fn retriable_response(policy: &RetryPolicy, response: &Response<ProxyBody>) -> bool {
    let on = policy.retry_on;
    let status = response.status().as_u16();
    if on.contains(RetryOn::FIVE_XX) && response.status().is_server_error() {
        return true;
    }
    if on.contains(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504) {
        return true;
    }
    if on.contains(RetryOn::RETRIABLE_4XX) && status == 409 {
        return true;
    }
    if on.contains(RetryOn::RETRIABLE_STATUS_CODES)
        && policy.retriable_status_codes.contains(&status)
    {
        return true;
    }
    // gRPC: a trailers-only response carries `grpc-status` in its headers.
    if let Some(code) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        let wanted = match code {
            "1" => RetryOn::GRPC_CANCELLED,
            "4" => RetryOn::GRPC_DEADLINE_EXCEEDED,
            "8" => RetryOn::GRPC_RESOURCE_EXHAUSTED,
            "13" => RetryOn::GRPC_INTERNAL,
            "14" => RetryOn::GRPC_UNAVAILABLE,
            _ => return false,
        };
        return on.contains(wanted);
    }
    false
}

/// Envoy's `retry_on` for a failure without a response.
fn retriable_error(on: RetryOn, e: &AttemptError) -> bool {
    let broad = RetryOn::FIVE_XX.union(RetryOn::GATEWAY_ERROR);
    match e {
        AttemptError::Acquire(AcquireError::ConnectFailed(_) | AcquireError::Handshake(_)) => {
            on.any(broad.union(RetryOn::CONNECT_FAILURE))
        }
        AttemptError::Acquire(AcquireError::PendingOverflow | AcquireError::Timeout) => false,
        AttemptError::Reset { refused: true, .. } => {
            on.any(broad.union(RetryOn::REFUSED_STREAM).union(RetryOn::RESET))
        }
        AttemptError::Reset { refused: false, .. } | AttemptError::Protocol(_) => {
            on.any(broad.union(RetryOn::RESET))
        }
        AttemptError::PerTryTimeout => on.any(broad.union(RetryOn::RESET)),
        AttemptError::GlobalTimeout | AttemptError::RequestBody(_) => false,
    }
}

/// Fully jittered exponential backoff: uniform in [0, min(base * 2^attempt, max)].
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let base = policy.base_interval.0.max(Duration::from_millis(1));
    let max = policy.max_interval.map_or(base * 10, |m| m.0.max(base));
    let ceiling = base.saturating_mul(1 << attempt.min(16)).min(max);
    ceiling.mul_f64(rand::random::<f64>())
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Endpoints already tried by a request (at most 11 attempts).
#[derive(Default)]
struct Tried {
    len: u8,
    slots: [usize; 11],
}

impl Tried {
    fn push(&mut self, i: usize) {
        if (self.len as usize) < self.slots.len() {
            self.slots[self.len as usize] = i;
            self.len += 1;
        }
    }
    fn as_slice(&self) -> &[usize] {
        &self.slots[..self.len as usize]
    }
}

/// A request counted against `max_requests` and its endpoint's active requests until the
/// response is finished.
pub struct ActiveRequest {
    cluster: Arc<Cluster>,
    endpoint: Option<usize>,
}

impl ActiveRequest {
    fn start(cluster: &Arc<Cluster>) -> Option<ActiveRequest> {
        std::mem::forget(cluster.try_start_request()?);
        Some(ActiveRequest {
            cluster: cluster.clone(),
            endpoint: None,
        })
    }

    fn set_endpoint(&mut self, index: usize) {
        if let Some(old) = self.endpoint.replace(index) {
            self.cluster.endpoints[old].rq_active.fetch_sub(1, Relaxed);
        }
        self.cluster.endpoints[index]
            .rq_active
            .fetch_add(1, Relaxed);
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.cluster.rq_active.fetch_sub(1, Relaxed);
        if let Some(i) = self.endpoint {
            self.cluster.endpoints[i].rq_active.fetch_sub(1, Relaxed);
        }
    }
}

/// A reply the proxy makes itself, with Envoy's texts and response flags.
pub(crate) struct LocalReply {
    status: StatusCode,
    body: Cow<'static, str>,
    details: Cow<'static, str>,
    flag: Option<ResponseFlag>,
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
        }
    }

    fn flagged(mut self, flag: ResponseFlag) -> Self {
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

    pub(crate) fn cluster_not_found() -> Self {
        LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "", "cluster_not_found")
            .flagged(ResponseFlag::NoClusterFound)
    }

    fn no_healthy_upstream() -> Self {
        LocalReply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            "no_healthy_upstream",
        )
        .flagged(ResponseFlag::NoHealthyUpstream)
    }

    fn overflow() -> Self {
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
    fn connect_failure(error: &std::io::Error, retried: bool) -> Self {
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

    fn upstream_reset(retried: bool) -> Self {
        Self::upstream_failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection termination",
            None,
            retried,
        )
        .flagged(ResponseFlag::UpstreamConnectionTermination)
    }

    /// Envoy's answer to a response it cannot parse: 502, flag `UPE`.
    fn upstream_protocol_error(retried: bool) -> Self {
        Self::upstream_failure(StatusCode::BAD_GATEWAY, "protocol error", None, retried)
            .flagged(ResponseFlag::UpstreamProtocolError)
    }

    fn upstream_timeout() -> Self {
        LocalReply::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream request timeout",
            "response_timeout",
        )
        .flagged(ResponseFlag::UpstreamRequestTimeout)
    }

    fn request_timeout() -> Self {
        LocalReply::new(
            StatusCode::REQUEST_TIMEOUT,
            "request timeout",
            "request_overall_timeout",
        )
    }

    /// The client's request body failed while it streamed upstream: `408` if it stalled
    /// (flag `SI`), else the client broke its framing or went away (`400`, flag `DC`).
    fn request_body_failed(error: &(dyn std::error::Error + 'static), ex: &mut Exchange) -> Self {
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

/// What is known about a request while it is served, for stats and the access log.
pub struct Exchange {
    start: std::time::Instant,
    pub flags: ResponseFlags,
    pub(crate) details: Cow<'static, str>,
    pub(crate) grpc: bool,
    pub(crate) upstream_host: Option<SocketAddr>,
    /// Each attempt's endpoint and status (0: no response); recorded only when filters may
    /// read it (`wasmesh.upstream_attempts`), and handed to them with the response.
    pub(crate) attempts: Option<Vec<(SocketAddr, u16)>>,
    upstream_time: Option<Duration>,
    failure_reason: Option<String>,
    bytes_received: Rc<std::cell::Cell<u64>>,
    active: Option<ActiveRequest>,
    /// Only filled when an access log is configured.
    log: Option<Box<LogFields>>,
}

struct LogFields {
    start_time: SystemTime,
    method: Method,
    path: String,
    protocol: &'static str,
    authority: Option<String>,
    user_agent: Option<HeaderValue>,
    forwarded_for: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    route_name: Option<String>,
    cluster: Option<String>,
}

impl Exchange {
    fn new(req: &Request<Incoming>, conn: &ConnCtx) -> Exchange {
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
        self.capture_names(&route.name, &route.cluster.name);
    }

    /// The route and cluster a request went to, for the access log.
    pub(crate) fn capture_names(&mut self, route: &str, cluster: &str) {
        if let Some(log) = &mut self.log {
            log.route_name = Some(route.to_owned());
            log.cluster = Some(cluster.to_owned());
        }
    }
}

pin_project_lite::pin_project! {
    /// Counts the request body bytes that pass (for `bytes_received`).
    struct CountingBody<B> {
        #[pin]
        inner: B,
        count: Rc<std::cell::Cell<u64>>,
    }
}

impl<B> Body for CountingBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            this.count.set(this.count.get() + data.len() as u64);
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body sent downstream. When it ends (or is dropped, if the client went away)
/// the request is recorded in the stats and the access log.
pub struct ResponseBody {
    inner: ProxyBody,
    bytes_sent: u64,
    ended: bool,
    status: u16,
    ex: Option<Exchange>,
    conn: Rc<ConnCtx>,
    /// The request's filters: `on_log` runs when the response is done.
    filters: Option<Rc<std::cell::RefCell<wasmesh_host::FilterStream>>>,
}

impl ResponseBody {
    fn new(
        response: Response<ProxyBody>,
        ex: Exchange,
        conn: Rc<ConnCtx>,
    ) -> Response<ResponseBody> {
        let status = response.status().as_u16();
        response.map(|inner| ResponseBody {
            ended: inner.is_end_stream(),
            inner,
            bytes_sent: 0,
            status,
            ex: Some(ex),
            conn,
            filters: None,
        })
    }

    fn finish(&mut self) {
        let Some(mut ex) = self.ex.take() else { return };
        if !self.ended {
            ex.flags
                .insert(ResponseFlag::DownstreamConnectionTermination);
        }
        self.conn
            .stream_closed((!self.ended).then(|| ex.start.elapsed()));
        drop(ex.active.take());
        if let Some(filters) = self.filters.take() {
            let mut filters = filters.borrow_mut();
            {
                let mut info = filters.stream.info.borrow_mut();
                info.response_size = self.bytes_sent;
                info.request_size = ex.bytes_received.get();
                info.response_flags = ex.flags.iter().map(ResponseFlag::envoy_bit).sum();
                info.response_code_details = ex.details.to_string();
                info.upstream_address = ex.upstream_host;
            }
            filters.finish();
        }
        let now = std::time::Instant::now();
        let elapsed = now - ex.start;
        let conn = &self.conn;
        let shared = &conn.worker.shared;
        shared.listener_stats[conn.listener].record_request(self.status, ex.flags, elapsed);
        if let (Some(sink), Some(log)) = (&shared.access_log, &ex.log) {
            let flags = ex.flags.to_string();
            let listener = &shared.listener_stats[conn.listener].name;
            let entry = Entry {
                start_time: log.start_time,
                method: log.method.as_str(),
                path: &log.path,
                protocol: log.protocol,
                response_code: self.status,
                response_flags: flags,
                response_code_details: &ex.details,
                bytes_received: ex.bytes_received.get(),
                bytes_sent: self.bytes_sent,
                duration: elapsed.as_millis() as u64,
                upstream_service_time: ex.upstream_time.map(|d| d.as_millis() as u64),
                x_forwarded_for: log.forwarded_for.as_ref().and_then(|v| v.to_str().ok()),
                user_agent: log.user_agent.as_ref().and_then(|v| v.to_str().ok()),
                request_id: log.request_id.as_ref().and_then(|v| v.to_str().ok()),
                authority: log.authority.as_deref(),
                upstream_host: ex.upstream_host,
                upstream_cluster: log.cluster.as_deref(),
                upstream_transport_failure_reason: ex.failure_reason.as_deref(),
                route_name: log.route_name.as_deref(),
                downstream_remote_address: conn.peer,
                downstream_local_address: conn.local,
                listener,
            };
            conn.worker.log.write(sink, &entry);
        }
        conn.request_finished(Instant::from_std(now));
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.bytes_sent += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.ended = true;
                    this.finish();
                }
            }
            Some(Err(e)) => {
                if let Some(ex) = &mut this.ex {
                    ex.flags.insert(if e.is::<StreamIdleTimeout>() {
                        ResponseFlag::StreamIdleTimeout
                    } else {
                        ResponseFlag::UpstreamRemoteReset
                    });
                }
                this.ended = true;
                this.finish();
            }
            None => {
                this.ended = true;
                this.finish();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One attempt over the worker's multiplexed HTTP/2 connection to an endpoint.
pub(crate) async fn send_h2(
    pool: &Rc<EndpointPool>,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, AttemptError> {
    let mut sender = pool.acquire_h2().await.map_err(AttemptError::Acquire)?;
    sender.ready().await.map_err(|error| AttemptError::Reset {
        refused: true,
        error: error.into(),
    })?;
    match sender.send_request(req).await {
        Ok(response) => Ok(response.map(ProxyBody::Incoming)),
        Err(error) => Err(AttemptError::Reset {
            refused: is_refused_stream(&error),
            error: error.into(),
        }),
    }
}
