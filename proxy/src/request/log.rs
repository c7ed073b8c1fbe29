//! The last phase: when the response's last byte is sent (or the client goes away), the
//! request is counted, logged, and the filters' `on_log` runs.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::context::Exchange;
use super::filters::Filters;
use crate::access_log::Entry;
use crate::body::{BoxError, ProxyBody, StreamIdleTimeout};
use crate::conn::ConnCtx;
use crate::stats::ResponseFlag;

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
    filters: Option<Filters>,
}

impl ResponseBody {
    pub(super) fn new(
        response: Response<ProxyBody>,
        ex: Exchange,
        conn: Rc<ConnCtx>,
        filters: Option<Filters>,
    ) -> Response<ResponseBody> {
        let status = response.status().as_u16();
        response.map(|inner| ResponseBody {
            ended: inner.is_end_stream(),
            inner,
            bytes_sent: 0,
            status,
            ex: Some(ex),
            conn,
            filters,
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
            filters.finish(|info| {
                info.response_size = self.bytes_sent;
                info.request_size = ex.bytes_received.get();
                info.response_flags = ex.flags.iter().map(ResponseFlag::envoy_bit).sum();
                info.response_code_details = ex.details.to_string();
                info.upstream_address = ex.upstream_host;
            });
        }
        let now = std::time::Instant::now();
        let elapsed = now - ex.start;
        let conn = &self.conn;
        if let Some(span) = ex.trace.take() {
            let end = crate::telemetry::trace::End {
                status: self.status,
                request_size: ex.bytes_received.get(),
                response_size: self.bytes_sent,
                flags: ex.flags,
                upstream_address: ex.upstream_host,
                duration: elapsed,
            };
            span.end(
                end,
                conn.peer,
                conn.worker.shared.node_id.clone(),
                &conn.worker.shared.tracer,
            );
        }
        let shared = &conn.worker.shared;
        shared.listener_stats[conn.listener].record_request(self.status, ex.flags, elapsed);
        let done = crate::telemetry::metrics::Finished {
            status: self.status,
            flags: ex.flags,
            grpc: ex.grpc,
            bytes_received: ex.bytes_received.get(),
            bytes_sent: self.bytes_sent,
            elapsed,
        };
        crate::telemetry::metrics::record_request(&ex.istio, &done, conn);
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
                downstream_peer_uri_san: conn.peer_uri_san.as_deref(),
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
                } else if let (Some(t), Some(ex)) = (f.trailers_ref(), &mut this.ex) {
                    ex.istio.note_grpc_status(t);
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
