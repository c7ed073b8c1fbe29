//! Forward: the request goes to its target's cluster, attempt after attempt as the retry
//! policy allows, under the route and per-try deadlines. Filters' decisions (a delay, mirrors,
//! a body they read) are carried out first.

use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::context::Exchange;
use super::filters::Filters;
use super::local_reply::LocalReply;
use super::prepare::Prepared;
use super::retry::{AttemptError, Tried, backoff, earliest, retriable_error, retriable_response};
use super::routing::Target;
use crate::body::{BoxError, IdleTimeout, ProxyBody};
use crate::conn::ConnCtx;
use crate::headers;
use crate::snapshot::Snapshot;
use crate::stats::{ResponseFlag, ResponseFlags};
use crate::upstream::destination::{self, DestinationError};
use crate::upstream::pool::{AcquireError, ClusterPool, EndpointPool};
use crate::upstream::{
    self, ActiveRequest, Endpoints, Outbound, Protocol, RequestBody, SendError, pick_endpoint,
};

const UPSTREAM_SERVICE_TIME: header::HeaderName =
    header::HeaderName::from_static("x-envoy-upstream-service-time");

/// Request bodies up to this size are kept so the request can be retried.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

/// Forwards a prepared request to `target` and returns the response for the client: the
/// upstream's, or a local reply.
pub(super) async fn forward(
    mut request: Prepared,
    target: Target<'_>,
    conn: &ConnCtx,
    snapshot: &Snapshot,
    filters: Option<&Filters>,
    ex: &mut Exchange,
) -> Response<ProxyBody> {
    crate::telemetry::peer::on_forward(&mut request.parts.headers, target.cluster, &mut ex.istio);
    let mut upstream = Upstream {
        pool: conn.worker.pools.cluster(target.cluster),
        route: target,
        conn,
        destination: None,
    };
    if let Some(filters) = filters
        && let Some(delay) = filters.injected_delay(ex)
    {
        // Boxed, as every filter-only state: it would otherwise enlarge every request's.
        Box::pin(tokio::time::sleep(delay)).await;
    }
    if let Endpoints::OriginalDst = upstream.route.cluster.endpoints {
        // Boxed: only these requests pay for a name lookup's state.
        match Box::pin(upstream.find_destination(request.authority.as_ref(), ex)).await {
            Ok(pool) => upstream.destination = Some(pool),
            Err(reply) => return reply.into_response(ex),
        }
    }
    // The request stays where it is (its fields are used in place): moving it into the next
    // future would copy its head.
    if let Some(on_upgrade) = request.upgrade.take() {
        // Boxed: upgrades are rare, and their state would otherwise enlarge every request's.
        let body = ProxyBody::Incoming(request.body);
        let upgrade =
            upstream.forward_upgrade(request.parts, body, request.authority, on_upgrade, ex);
        return Box::pin(upgrade)
            .await
            .unwrap_or_else(|reply| reply.into_response(ex));
    }
    let authority = request.authority.as_ref();
    let body = match filters {
        None => ProxyBody::Incoming(request.body),
        // Boxed too: only filtered requests pay for reading a body through the filters.
        Some(filters) => {
            let shaped = filters.request_body(
                &mut request.parts,
                request.body,
                authority,
                conn,
                snapshot,
                ex,
            );
            match Box::pin(shaped).await {
                Ok(body) => body,
                Err(answer) => return answer,
            }
        }
    };
    // Retries happen here, in the phase's own future: a nested async fn would be one more
    // state machine every poll of every request passes through.
    let failed =
        |reply: LocalReply, ex: &mut Exchange| match filters.and_then(Filters::take_local_reply) {
            // A body filter that answered or failed mid-body aborted the upstream request.
            Some(local) => super::filters::local_response(local, ex),
            None => reply.into_response(ex),
        };
    let cluster = &upstream.route.cluster;
    let policy = upstream.route.retry.as_deref();
    let max_attempts = 1 + policy.map_or(0, |p| p.num_retries);
    let started = Instant::from_std(ex.start);
    let deadline = upstream.route.timeout.map(|t| started + t);
    let mut body = match upstream.prepare_body(body, max_attempts > 1, ex) {
        Ok(body) => body,
        // Boxed: only retriable requests with a body pay for reading it whole.
        Err(whole) => match Box::pin(read_whole(whole, ex, deadline)).await {
            Ok(body) => body,
            Err(reply) => return failed(reply, ex),
        },
    };

    let Some(active) = ActiveRequest::start(cluster) else {
        cluster.stats().rq_overflow.inc();
        return failed(LocalReply::overflow(), ex);
    };
    cluster.stats().rq_total.inc();
    let protocol = Protocol::of(cluster, request.parts.version);
    if protocol == Protocol::Http2 {
        std::mem::take(&mut request.added).apply_to(&mut request.parts.headers);
    }

    let mut active = active;
    let mut tried = Tried::default();
    let mut _retry_slot = None;
    let mut attempt = 1;
    loop {
        let Some(endpoint_pool) = upstream.pick(&mut tried) else {
            return failed(LocalReply::no_healthy_upstream(), ex);
        };
        active.set_endpoint(&endpoint_pool);
        ex.upstream_host = Some(endpoint_pool.endpoint().addr);
        endpoint_pool.endpoint().rq_total.fetch_add(1, Relaxed);

        let last_possible = attempt >= max_attempts;
        let per_try = policy.and_then(|p| p.per_try_timeout.nonzero());
        let try_deadline = earliest(deadline, per_try.map(|t| Instant::now() + t));
        let outbound = Outbound {
            head: &mut request.parts,
            added: &request.added,
            authority,
            body: &mut body,
            last: last_possible,
        };
        let outcome = upstream::send(&endpoint_pool, protocol, outbound, try_deadline).await;
        // Decide: done, or retry. (Matched as it came: re-wrapping the result would copy
        // the response head.)
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
            Err(SendError::RequestBody(error)) => {
                (false, Err(LocalReply::request_body_failed(&*error, ex)))
            }
            Err(e) => {
                let e = match AttemptError::from(e) {
                    AttemptError::PerTryTimeout if try_deadline == deadline => {
                        AttemptError::GlobalTimeout
                    }
                    e => e,
                };
                endpoint_pool.endpoint().rq_error.fetch_add(1, Relaxed);
                if let Some(attempts) = &mut ex.attempts {
                    attempts.push((endpoint_pool.endpoint().addr, 0));
                }

                let wanted = policy.is_some_and(|p| retriable_error(p.retry_on, &e));
                (wanted, Err(upstream.failure_reply(e, attempt > 1, ex)))
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
            return match result {
                Ok(r) => upstream.finish_response(r, active, ex),
                Err(reply) => failed(reply, ex),
            };
        }
        match cluster.try_start_retry() {
            Some(slot) => _retry_slot = Some(slot),
            None => {
                cluster.stats().rq_retry_overflow.inc();
                return match result {
                    Ok(r) => upstream.finish_response(r, active, ex),
                    Err(reply) => failed(reply, ex),
                };
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
        // Boxed: retries are rare, and the timer would otherwise enlarge every request's state.
        Box::pin(tokio::time::sleep_until(wake)).await;
        attempt += 1;
    }
}

/// Reads a small request body whole, so that it can be sent again, within the deadline.
async fn read_whole(
    body: ProxyBody,
    ex: &Exchange,
    deadline: Option<Instant>,
) -> Result<RequestBody, LocalReply> {
    let collect = body.collect();
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
    Ok(RequestBody::Replayable(Some(bytes)))
}

pub(super) struct Upstream<'a> {
    pub route: Target<'a>,
    pub pool: Rc<ClusterPool>,
    pub conn: &'a ConnCtx,
    /// An `original_dst` cluster's endpoint for this request.
    pub destination: Option<Rc<EndpointPool>>,
}

impl Upstream<'_> {
    /// The endpoint of the next attempt: the request's destination, or one load balancing
    /// picks among those not `tried` yet (and then tried).
    pub(super) fn pick(&self, tried: &mut Tried) -> Option<Rc<EndpointPool>> {
        if let Some(destination) = &self.destination {
            return Some(destination.clone());
        }
        let index = pick_endpoint(&self.pool, tried.as_slice())?;
        tried.push(index);
        Some(self.pool.endpoints[index].clone())
    }

    /// Where a request to an `original_dst` cluster goes, and the worker's pool for it. A
    /// name that does not resolve leaves no host to send to: `503 UH`, as Envoy's
    /// ORIGINAL_DST load balancer gives none; the proxy's own listener is refused (`502`).
    async fn find_destination(
        &self,
        authority: Option<&Authority>,
        ex: &mut Exchange,
    ) -> Result<Rc<EndpointPool>, LocalReply> {
        let (conn, cluster) = (self.conn, self.route.cluster);
        let found = destination::destination(
            conn.original_dst,
            authority,
            cluster.tls.is_some(),
            &conn.worker.shared.listener_addrs,
            conn.local,
            cluster.connect_timeout,
        )
        .await;
        match found {
            Ok(addr) => Ok(self.pool.destination(addr)),
            Err(e) => {
                ex.failure_reason = Some(e.to_string());
                tracing::debug!(cluster = %cluster.name, error = %e, "no original destination");
                Err(match e {
                    DestinationError::Loop(_) => LocalReply::original_dst_loop(),
                    _ => LocalReply::no_healthy_upstream(),
                })
            }
        }
    }

    /// Decides whether the body can be replayed: empty and small bodies are kept, large or
    /// unsized ones stream (and are then retried only if no byte of them was sent). A small
    /// body that may be retried is read whole first (`Err`: read it with [`read_whole`]).
    fn prepare_body(
        &self,
        body: ProxyBody,
        retries: bool,
        ex: &Exchange,
    ) -> Result<RequestBody, ProxyBody> {
        if body.is_end_stream() {
            return Ok(RequestBody::Replayable(None));
        }
        let small = body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= RETRY_BUFFER_LIMIT);
        if retries && small {
            return Err(body);
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

    /// The local reply for a failed attempt; `retried` if it was not the first.
    pub(super) fn failure_reply(
        &self,
        e: AttemptError,
        retried: bool,
        ex: &mut Exchange,
    ) -> LocalReply {
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

    pub(super) fn finish_response(
        &self,
        response: Response<ProxyBody>,
        active: ActiveRequest,
        ex: &mut Exchange,
    ) -> Response<ProxyBody> {
        ex.active = Some(active);
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        let cluster = &self.route.cluster;
        crate::telemetry::peer::on_upstream_response(&mut parts.headers, cluster, &mut ex.istio);
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
