//! A downstream connection: what every request on it shares (its worker, addresses, options,
//! requests in flight), Envoy's premature-reset rule, and the worker's way to ask it to close.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Waker;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::config::HttpOptions;
use crate::h1_guard::SwitchWatch;
use crate::worker::{Connection, Worker};

/// Envoy's premature-reset rule (its runtime defaults): once this many streams of a connection
/// have closed, a connection on which at least half were reset by the client within
/// [`PREMATURE_RESET_AGE`] of their start is sent away. It catches rapid reset however it is
/// paced, and a client that cancels now and then never comes near it.
const PREMATURE_RESET_MIN_STREAMS: u32 = 500;
const PREMATURE_RESET_AGE: Duration = Duration::from_secs(1);

/// `x-forwarded-client-cert` for the requests of a connection on an mTLS listener.
pub struct Xfcc {
    /// `By=<own id>;Hash=<client cert sha256>;Subject="";URI=<client id>` for an mTLS
    /// connection; none for plaintext (on a PERMISSIVE port).
    pub value: Option<HeaderValue>,
}

/// Whether a connection's requests came over TLS this proxy terminated, and which.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    #[default]
    Plaintext,
    /// mTLS with the workload identity (STRICT or PERMISSIVE).
    Mtls,
    /// TLS with a gateway's own certificates (`simple` or `mutual`): the edge, where
    /// `x-forwarded-proto` is `https` whatever the client said.
    GatewayTls,
}

/// What every request on a connection shares.
pub struct ConnCtx {
    pub worker: Rc<Worker>,
    /// Unique in the process (the `connection.id` property).
    pub id: u64,
    pub listener: usize,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Where the client was going, on a connection an `original_dst` listener handed off
    /// (`local` is then that address too): an `original_dst` cluster's destination.
    pub original_dst: Option<SocketAddr>,
    /// The peer's IP, ready for `x-forwarded-for`.
    pub client_ip: HeaderValue,
    /// The listener's `server_name`, ready for the `server` header.
    pub server_name: HeaderValue,
    pub opts: HttpOptions,
    /// The client certificate's SPIFFE id, on an mTLS connection.
    pub peer_uri_san: Option<Arc<str>>,
    /// On a listener with mTLS, `x-forwarded-client-cert` from clients is dropped, and set to
    /// this on an mTLS connection (Envoy's SANITIZE_SET, as Istio's inbound).
    pub xfcc: Option<Xfcc>,
    /// Plaintext or TLS (a virtual host's `require_tls`, `x-forwarded-proto`).
    pub transport: Transport,
    pub in_flight: Cell<u32>,
    pub last_active: Cell<Instant>,
    streams_closed: Cell<u32>,
    premature_resets: Cell<u32>,
    /// How a request asking to switch protocols was answered, for the HTTP/1 guard.
    pub switch: Arc<SwitchWatch>,
    shutdown_requested: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl ConnCtx {
    /// A connection accepted on `listener` of `worker`, served with `opts` (the listener's
    /// options in the snapshot current when it was accepted). It starts asked to shut down
    /// if the worker is draining already.
    pub fn new(
        worker: Rc<Worker>,
        listener: usize,
        peer: SocketAddr,
        local: SocketAddr,
        opts: HttpOptions,
    ) -> ConnCtx {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        ConnCtx {
            id: NEXT_ID.fetch_add(1, Relaxed),
            client_ip: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP is a valid header value"),
            server_name: HeaderValue::from_str(&opts.server_name)
                .expect("validated as a header value"),
            shutdown_requested: Cell::new(worker.shared.is_draining()),
            worker,
            listener,
            peer,
            local,
            original_dst: None,
            opts,
            peer_uri_san: None,
            xfcc: None,
            transport: Transport::Plaintext,
            in_flight: Cell::new(0),
            last_active: Cell::new(Instant::now()),
            streams_closed: Cell::new(0),
            premature_resets: Cell::new(0),
            switch: Arc::default(),
            waker: RefCell::new(None),
        }
    }

    /// A connection on an mTLS listener, and what its client certificate says.
    pub fn with_tls(mut self, san: Option<Arc<str>>, xfcc: Option<HeaderValue>) -> ConnCtx {
        self.peer_uri_san = san;
        self.xfcc = Some(Xfcc { value: xfcc });
        self
    }

    /// A connection redirected to `destination` and handed off by an `original_dst` listener.
    pub fn with_original_dst(mut self, destination: Option<SocketAddr>) -> ConnCtx {
        self.original_dst = destination;
        self
    }

    pub fn request_started(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    pub fn request_finished(&self, now: Instant) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.last_active.set(now);
    }

    /// A request's stream ended: completed (`None`), or reset by the client at this age.
    pub fn stream_closed(&self, reset_at: Option<Duration>) {
        let closed = self.streams_closed.get().saturating_add(1);
        self.streams_closed.set(closed);
        if reset_at.is_none_or(|age| age >= PREMATURE_RESET_AGE) {
            return;
        }
        let resets = self.premature_resets.get() + 1;
        self.premature_resets.set(resets);
        if closed >= PREMATURE_RESET_MIN_STREAMS
            && u64::from(resets) * 2 >= u64::from(closed)
            && !self.shutdown_requested.get()
        {
            tracing::warn!(
                peer = %self.peer,
                streams = closed,
                resets,
                "too many premature stream resets: sending GOAWAY"
            );
            self.worker.shared.listener_stats[self.listener]
                .shards
                .local()
                .rq_too_many_premature_resets
                .inc();
            self.request_shutdown();
        }
    }

    /// Asks the connection to finish its requests in flight and close.
    pub fn request_shutdown(&self) {
        self.shutdown_requested.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Whether the connection was asked to shut down (the server then shuts it down
    /// gracefully).
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown_requested.get()
    }

    /// True if nothing is in flight and nothing happened for `idle_timeout`.
    pub fn is_idle_past_timeout(&self, now: Instant) -> bool {
        self.opts.idle_timeout.nonzero().is_some_and(|idle| {
            self.in_flight.get() == 0
                && now.saturating_duration_since(self.last_active.get()) >= idle
        })
    }

    /// The waker of the task serving the connection, woken by [`ConnCtx::request_shutdown`].
    pub fn set_waker(&self, waker: &Waker) {
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

impl Connection for ConnCtx {
    fn is_idle_past_timeout(&self, now: Instant) -> bool {
        ConnCtx::is_idle_past_timeout(self, now)
    }

    fn request_shutdown(&self) {
        ConnCtx::request_shutdown(self);
    }
}
