//! The path of one request, in phases that read in order, each in the file named after it:
//!
//! 1. accept: [`serve`] takes the request from hyper (the connection was accepted and guarded
//!    by `server`, `h1_guard` and `h2_guard`);
//! 2. [`prepare`]: `CONNECT` refused, hop-by-hop headers removed, proxy headers added, the
//!    authority settled, the path normalized where the listener asks ([`path`]);
//! 3. [`filters`]: the listener's Wasm chain, when it has one (request headers here; bodies and
//!    the response in the phases below);
//! 4. [`routing`]: the target cluster, timeout and retry policy;
//! 5. [`forward`]: attempts and retries ([`retry`]), upgrades ([`upgrade`]), mirrors
//!    ([`mirror`]);
//! 6. [`respond`]: the response back through the filters, the `server` header;
//! 7. [`log`]: stats, the access log and `on_log` when the last byte is sent.
//!
//! [`context`] holds what the phases learn about the request; [`local_reply`] the replies
//! the proxy makes itself. Without filters, no phase allocates for them or awaits them.

mod context;
mod filters;
mod forward;
mod local_reply;
mod log;
mod mirror;
mod path;
mod prepare;
mod respond;
mod retry;
mod routing;
mod upgrade;

use std::rc::Rc;

use http::uri::Authority;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;
use wasmesh_host::Chain;

use crate::body::ProxyBody;
use crate::conn::{ConnCtx, Transport};
use crate::h1_guard::SwitchWatch;
use crate::snapshot::Snapshot;
use context::Exchange;
use filters::{Filters, RequestPhase};
use local_reply::LocalReply;

pub use filters::StreamReset;
pub use log::ResponseBody;

/// Serves one downstream request.
pub async fn serve(
    req: Request<Incoming>,
    conn: Rc<ConnCtx>,
) -> Result<Response<ResponseBody>, StreamReset> {
    conn.request_started();
    // The HTTP/1 guard holds back what follows a request that asks to switch protocols until
    // it knows the answer; this is that request (at most one is pending per connection).
    let asks_switch =
        conn.switch.is_pending() && SwitchWatch::asks(req.method(), req.version(), req.headers());
    let snapshot = conn.worker.snapshot();
    let mut ex = Exchange::new(&req, &conn, &snapshot);
    let unanswered = Unanswered {
        conn: &conn,
        start: ex.start,
    };
    let (served, filters) = match conn.worker.chain(&snapshot, conn.listener).transpose() {
        Ok(chain) => phases(req, &conn, &snapshot, chain, &mut ex).await,
        Err(e) => {
            tracing::warn!(error = %e, "plugin chain unavailable on this worker");
            let reply = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "", "wasm_fail_stream");
            let mut response = reply.into_response(&mut ex);
            respond::set_server_header(response.headers_mut(), &conn);
            (Ok(response), None)
        }
    };
    let response = match served {
        Ok(response) => response,
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
    };
    if asks_switch {
        conn.switch.answered(response.status());
    }
    // From here the response body accounts for the request.
    std::mem::forget(unanswered);
    Ok(ResponseBody::new(response, ex, conn, filters))
}

/// Prepare, filters, route, forward, respond. Returns the filters too: their `on_log` runs
/// when the response has been sent.
async fn phases(
    req: Request<Incoming>,
    conn: &ConnCtx,
    snapshot: &Snapshot,
    chain: Option<Rc<Chain>>,
    ex: &mut Exchange,
) -> (Result<Response<ProxyBody>, StreamReset>, Option<Filters>) {
    // With plugins scoped to routes or clusters, the listener's own route for the request
    // says which can run; when none can, the request takes the unfiltered path.
    // `Some` once looked up (`Some(None)`: the listener has no route for it).
    let mut core = None;
    let mut filtered = false;
    let mut request = match prepare::prepare(
        req,
        conn,
        |parts, authority| {
            filtered = match &chain {
                None => false,
                Some(chain) if !chain.is_scoped() => true,
                Some(chain) => {
                    let host = authority.map_or("", Authority::as_str);
                    let route = snapshot.routes[conn.listener].find(host, parts.uri.path());
                    core = Some(route);
                    let (name, cluster) = route.map_or((&b""[..], ""), |r| {
                        (r.name.as_bytes(), r.cluster().map_or("", |c| &*c.name))
                    });
                    !chain.skips(name, cluster)
                }
            };
            filtered
        },
        ex,
    ) {
        Ok(request) => request,
        Err(reply) => return (Ok(reply.into_response(ex)), None),
    };
    // A virtual host that takes only TLS sends plaintext to `https` before anything runs.
    if conn.transport == Transport::Plaintext
        && let Some(authority) = &request.authority
        && snapshot.routes[conn.listener].requires_tls(authority.as_str())
    {
        let reply = LocalReply::https_redirect(authority, &request.parts.uri);
        return (Ok(reply.into_response(ex)), None);
    }
    // Trace context read, decided and set for the next hop (before filters see the head).
    if let Some(tracing) = &snapshot.trace {
        let (parts, authority) = (&mut request.parts, request.authority.as_ref());
        ex.trace = tracing.on_request(parts, authority, &request.added, conn.listener);
    }
    let filters = chain
        .filter(|_| filtered)
        .map(|chain| Filters::start(chain, conn, request.parts.version, core.flatten()));
    let answered = match &filters {
        None => None,
        // Boxed: only filtered requests pay for the filters' state.
        Some(f) => match Box::pin(f.on_request(&mut request, ex)).await {
            RequestPhase::Continue => None,
            RequestPhase::Answer(response) => Some(response),
            RequestPhase::Reset => return (Err(StreamReset), filters),
        },
    };
    let mut response = match answered {
        Some(response) => response,
        None => match routing::route(
            &request,
            snapshot,
            conn,
            filters.as_ref(),
            // Found before the filters; when none ran, the request has not changed since.
            core.filter(|_| filters.is_none()),
            ex,
        ) {
            Ok(target) => {
                forward::forward(request, target, conn, snapshot, filters.as_ref(), ex).await
            }
            Err(reply) => reply.into_response(ex),
        },
    };
    match respond::respond(&mut response, conn, filters.as_ref(), ex).await {
        Ok(()) => (Ok(response), filters),
        Err(reset) => (Err(reset), filters),
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
