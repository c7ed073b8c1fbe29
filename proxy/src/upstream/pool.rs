//! Per-worker upstream connection pools.
//!
//! Each worker owns its pools (no locks); limits that Envoy makes cluster-wide
//! (`max_connections`, `max_pending_requests`) are atomics on the shared [`Cluster`].
//! HTTP/1.1 connections (our own client, [`super::h1`]) carry one request at a time and return to
//! the pool when the response
//! body is done; HTTP/2 keeps one multiplexed connection per endpoint.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hyper::client::conn::{http1, http2};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::connect::{self, Stream};
use super::h1::{H1Conn, Home};
use super::{Cluster, Endpoint, Endpoints};
use crate::body::ProxyBody;
use crate::rt::LocalExec;

/// A pooled HTTP/1.1 connection.
pub type Conn = H1Conn<Stream>;

/// Why no connection could be had.
#[derive(Debug)]
pub enum AcquireError {
    /// TCP connect failed or timed out.
    ConnectFailed(io::Error),
    /// The HTTP handshake failed.
    Handshake(hyper::Error),
    /// `max_pending_requests` was reached.
    PendingOverflow,
    /// The deadline passed while waiting for a connection.
    Timeout,
}

/// Why no connection for opaque TCP could be had.
#[derive(Debug, thiserror::Error)]
pub enum TcpConnectError {
    /// TCP does not wait for a slot.
    #[error("max_connections reached")]
    Overflow,
    #[error("connect failed: {0}")]
    ConnectFailed(io::Error),
}

/// All pools of one worker.
#[derive(Default)]
pub struct Pools {
    /// By cluster id; looked up per request, so with a cheap hash.
    clusters: RefCell<rustc_hash::FxHashMap<u64, Rc<ClusterPool>>>,
}

impl Pools {
    /// The worker's pool of `cluster`. For a `dns` cluster whose set changed since, a new
    /// pool that keeps the endpoint pools (and connections) of addresses that remain.
    pub fn cluster(&self, cluster: &Arc<Cluster>) -> Rc<ClusterPool> {
        if let Some(p) = self.clusters.borrow().get(&cluster.id)
            && p.is_current()
        {
            return p.clone();
        }
        self.renew(cluster)
    }

    #[cold]
    fn renew(&self, cluster: &Arc<Cluster>) -> Rc<ClusterPool> {
        let old = self.clusters.borrow_mut().remove(&cluster.id);
        let (generation, set) = match &cluster.endpoints {
            Endpoints::Dns(dns) => dns.current(),
            _ => (0, cluster.endpoints_now()),
        };
        let mut reusable: rustc_hash::FxHashMap<SocketAddr, Rc<EndpointPool>> = old
            .as_ref()
            .map(|o| {
                o.endpoints
                    .iter()
                    .map(|p| (p.endpoint.addr, p.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let endpoints: Box<[Rc<EndpointPool>]> = set
            .iter()
            .map(|e| match reusable.remove(&e.addr) {
                Some(p) if Arc::ptr_eq(&p.endpoint, e) => p,
                other => {
                    if let Some(p) = other {
                        p.retire();
                    }
                    EndpointPool::new(cluster, e.clone())
                }
            })
            .collect();
        // Addresses DNS no longer gives: their idle connections close, busy ones finish.
        for gone in reusable.values() {
            gone.retire();
        }
        let pool = Rc::new(ClusterPool {
            rr: Cell::new(match &old {
                Some(o) => o.rr.get(),
                None => rand::random_range(0..endpoints.len().max(1)),
            }),
            endpoints,
            generation,
            destinations: RefCell::default(),
            cluster: cluster.clone(),
        });
        self.clusters.borrow_mut().insert(cluster.id, pool.clone());
        pool
    }

    /// Whether some upstream connection waits idle in a pool (the sweep has work to come).
    pub fn holds_idle_connections(&self) -> bool {
        self.clusters.borrow().values().any(|pool| {
            pool.endpoints
                .iter()
                .chain(pool.destinations.borrow().values())
                .any(|ep| !ep.idle.borrow().is_empty())
        })
    }

    /// Closes idle connections past their idle timeout, forgets original destinations no
    /// longer in use, and pools of removed clusters.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.clusters.borrow_mut().retain(|_, pool| {
            let mut destinations = pool.destinations.borrow_mut();
            for ep in pool.endpoints.iter().chain(destinations.values()) {
                ep.idle
                    .borrow_mut()
                    .retain(|c| c.usable(now, ep.cluster.idle_timeout));
            }
            destinations.retain(|_, ep| ep.connections.get() > 0 || Rc::strong_count(ep) > 1);
            // Only this map and the cluster's own pools hold the Arc once the config dropped it.
            let ours = 1 + pool.endpoints.len() + destinations.len();
            let kept = Arc::strong_count(&pool.cluster) > ours;
            if !kept {
                // Idle connections hold their pool: closing them lets it go.
                pool.endpoints.iter().for_each(|p| p.retire());
                destinations.values().for_each(|p| p.retire());
            }
            kept
        });
    }
}

pub struct ClusterPool {
    pub cluster: Arc<Cluster>,
    /// This worker's round-robin cursor.
    pub rr: Cell<usize>,
    /// The cluster's endpoints as this worker sees them (load balancing indexes these).
    pub endpoints: Box<[Rc<EndpointPool>]>,
    /// For a `dns` cluster: the generation of the set `endpoints` was made from.
    generation: u64,
    /// For an `original_dst` cluster: a pool per destination, made on first use.
    destinations: RefCell<rustc_hash::FxHashMap<SocketAddr, Rc<EndpointPool>>>,
}

impl ClusterPool {
    /// Whether the pool still has the cluster's endpoints: a static cluster's never change,
    /// so it pays one comparison of a plain field and no atomic.
    fn is_current(&self) -> bool {
        match &self.cluster.endpoints {
            Endpoints::Dns(dns) => dns.generation() == self.generation,
            Endpoints::Static(_) | Endpoints::OriginalDst => true,
        }
    }

    /// The pool of connections to `destination` (an `original_dst` cluster's endpoint).
    pub fn destination(&self, destination: SocketAddr) -> Rc<EndpointPool> {
        self.destinations
            .borrow_mut()
            .entry(destination)
            .or_insert_with(|| {
                EndpointPool::new(&self.cluster, Arc::new(Endpoint::new(destination)))
            })
            .clone()
    }
}

pub struct EndpointPool {
    cluster: Arc<Cluster>,
    endpoint: Arc<Endpoint>,
    idle: RefCell<Vec<IdleConn>>,
    /// Connections this worker holds to the endpoint, connecting ones included.
    connections: Cell<u32>,
    waiters: RefCell<VecDeque<oneshot::Sender<Handoff>>>,
    h2: RefCell<H2State>,
    /// No longer among the cluster's endpoints: connections close instead of going idle.
    retired: Cell<bool>,
}

struct IdleConn {
    conn: Box<Conn>,
    since: Instant,
}

impl IdleConn {
    fn usable(&self, now: Instant, idle_timeout: Option<Duration>) -> bool {
        idle_timeout.is_none_or(|t| now.duration_since(self.since) < t)
    }
}

/// What a pending request is handed when a connection frees up.
enum Handoff {
    Conn(Box<Conn>),
    /// A connection closed: try to open a new one.
    TryConnect,
}

enum H2State {
    Idle,
    Connecting(Vec<oneshot::Sender<Result<http2::SendRequest<ProxyBody>, ()>>>),
    Ready(http2::SendRequest<ProxyBody>),
}

impl EndpointPool {
    fn new(cluster: &Arc<Cluster>, endpoint: Arc<Endpoint>) -> Rc<EndpointPool> {
        Rc::new(EndpointPool {
            cluster: cluster.clone(),
            endpoint,
            idle: RefCell::default(),
            connections: Cell::new(0),
            waiters: RefCell::default(),
            h2: RefCell::new(H2State::Idle),
            retired: Cell::new(false),
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Closes the idle connections and the shared HTTP/2 one (streams on it finish); those
    /// in use close when done.
    fn retire(&self) {
        self.retired.set(true);
        self.idle.borrow_mut().clear();
        let mut h2 = self.h2.borrow_mut();
        if matches!(*h2, H2State::Ready(_)) {
            *h2 = H2State::Idle;
        }
    }

    /// Gets an HTTP/1.1 connection: an idle one, a new one, or the next one released.
    pub async fn acquire_h1(
        self: &Rc<Self>,
        deadline: Option<Instant>,
    ) -> Result<Box<Conn>, AcquireError> {
        // As in Envoy, a request stays pending (and holds its pending slot) until it has a
        // connection, including while it opens one after another closed.
        let mut pending = None;
        loop {
            let now = crate::rt::coarse_now();
            while let Some(mut idle) = self.idle.borrow_mut().pop() {
                // As Envoy does, a connection the upstream wrote to (or closed) while it sat
                // idle is closed: those bytes answer nobody, and must never reach a client.
                if idle.usable(now, self.cluster.idle_timeout) && idle.conn.quiet_while_idle() {
                    return Ok(idle.conn);
                }
            }
            // Connecting is boxed: it is the rare path, and its state is large.
            if self.cluster.try_add_connection() {
                return Box::pin(self.connect_h1()).await;
            }
            if self.connections.get() == 0 {
                // As Envoy does: a pool with no connection may always open one, so pending
                // requests never wait on connections other workers hold.
                self.cluster.add_connection_over_limit();
                return Box::pin(self.connect_h1()).await;
            }
            self.cluster.stats().cx_overflow.inc();
            if pending.is_none() {
                let Some(slot) = self.cluster.try_start_pending() else {
                    self.cluster.stats().rq_pending_overflow.inc();
                    return Err(AcquireError::PendingOverflow);
                };
                pending = Some(slot);
            }
            // Waiting is boxed too, for the same reason.
            let handoff = Box::pin(self.wait_for_connection(deadline)).await?;
            match handoff {
                Ok(Handoff::Conn(conn)) => return Ok(conn),
                Ok(Handoff::TryConnect) | Err(_) => continue,
            }
        }
    }

    /// Queues for the next released connection (or a chance to connect).
    async fn wait_for_connection(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Result<Handoff, oneshot::error::RecvError>, AcquireError> {
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push_back(tx);
        match deadline {
            Some(d) => tokio::time::timeout_at(d, rx)
                .await
                .map_err(|_| AcquireError::Timeout),
            None => Ok(rx.await),
        }
    }

    /// Opens a connection whose cluster slot the caller already took.
    async fn connect_h1(self: &Rc<Self>) -> Result<Box<Conn>, AcquireError> {
        let guard = ConnectionGuard::new(self.clone());
        let stream = self.connect().await?;
        Ok(H1Conn::new(stream, Rc::new(guard)))
    }

    /// Gets the worker's HTTP/2 connection to this endpoint, opening it if needed.
    pub async fn acquire_h2(
        self: &Rc<Self>,
    ) -> Result<http2::SendRequest<ProxyBody>, AcquireError> {
        let wait = {
            let mut state = self.h2.borrow_mut();
            match &mut *state {
                H2State::Ready(sender) if !sender.is_closed() => return Ok(sender.clone()),
                H2State::Connecting(waiters) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                _ => {
                    *state = H2State::Connecting(Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = wait {
            return match rx.await {
                Ok(Ok(sender)) => Ok(sender),
                _ => Err(AcquireError::ConnectFailed(io::Error::other(
                    "shared HTTP/2 connect failed",
                ))),
            };
        }
        let result = Box::pin(self.connect_h2()).await;
        let waiters = match std::mem::replace(
            &mut *self.h2.borrow_mut(),
            match &result {
                Ok(sender) if !self.retired.get() => H2State::Ready(sender.clone()),
                _ => H2State::Idle,
            },
        ) {
            H2State::Connecting(w) => w,
            _ => Vec::new(),
        };
        for w in waiters {
            let _ = w.send(result.as_ref().map(Clone::clone).map_err(|_| ()));
        }
        result
    }

    async fn connect_h2(self: &Rc<Self>) -> Result<http2::SendRequest<ProxyBody>, AcquireError> {
        if !self.cluster.try_add_connection() {
            self.cluster.add_connection_over_limit();
        }
        let guard = ConnectionGuard::new(self.clone());
        let stream = self.connect().await?;
        let (sender, conn) = http2::Builder::new(LocalExec)
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(AcquireError::Handshake)?;
        tokio::task::spawn_local(async move {
            let _guard = guard;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A connection of its own for a protocol upgrade (WebSocket); never pooled.
    pub async fn connect_for_upgrade(
        self: &Rc<Self>,
    ) -> Result<http1::SendRequest<ProxyBody>, AcquireError> {
        if !self.cluster.try_add_connection() {
            self.cluster.add_connection_over_limit();
        }
        let guard = ConnectionGuard::new(self.clone());
        let stream = self.connect().await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(AcquireError::Handshake)?;
        tokio::task::spawn_local(async move {
            let _guard = guard;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A connection of its own for opaque TCP (a `tcp_proxy` listener), never pooled, counted
    /// while the guard lives. Over `max_connections` none is made (Envoy's `tcp_proxy`
    /// refuses the connection and counts the overflow).
    pub async fn connect_tcp(
        self: &Rc<Self>,
    ) -> Result<(Stream, ConnectionGuard), TcpConnectError> {
        if !self.cluster.try_add_connection() {
            self.cluster.stats().cx_overflow.inc();
            return Err(TcpConnectError::Overflow);
        }
        let guard = ConnectionGuard::new(self.clone());
        let stream = connect::connect(&self.cluster, self.endpoint())
            .await
            .map_err(TcpConnectError::ConnectFailed)?;
        Ok((stream, guard))
    }

    async fn connect(&self) -> Result<Stream, AcquireError> {
        connect::connect(&self.cluster, self.endpoint())
            .await
            .map_err(AcquireError::ConnectFailed)
    }

    /// Takes back a connection that finished a response: hands it to a waiter or keeps it idle.
    fn release(&self, mut conn: Box<Conn>) {
        let max = self.cluster.max_requests_per_connection;
        if (max != 0 && conn.uses >= max) || self.retired.get() {
            // Dropping the connection closes it; its guard wakes a waiter.
            return;
        }
        let mut waiters = self.waiters.borrow_mut();
        while let Some(w) = waiters.pop_front() {
            match w.send(Handoff::Conn(conn)) {
                Ok(()) => return,
                Err(Handoff::Conn(back)) => conn = back,
                Err(Handoff::TryConnect) => unreachable!("sent a connection"),
            }
        }
        drop(waiters);
        self.idle.borrow_mut().push(IdleConn {
            conn,
            since: crate::rt::coarse_now(),
        });
    }

    fn wake_one_waiter(&self) {
        let mut waiters = self.waiters.borrow_mut();
        while let Some(w) = waiters.pop_front() {
            if w.send(Handoff::TryConnect).is_ok() {
                return;
            }
        }
    }
}

/// Counts a connection for its whole life, from connect to close.
pub struct ConnectionGuard {
    pool: Rc<EndpointPool>,
}

impl ConnectionGuard {
    fn new(pool: Rc<EndpointPool>) -> Self {
        pool.connections.set(pool.connections.get() + 1);
        pool.endpoint().cx_active.fetch_add(1, Relaxed);
        ConnectionGuard { pool }
    }
}

impl Home<Stream> for ConnectionGuard {
    fn release(&self, conn: Box<Conn>) {
        self.pool.release(conn);
    }

    fn peer(&self) -> std::net::SocketAddr {
        self.pool.endpoint().addr
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let pool = &self.pool;
        pool.connections.set(pool.connections.get() - 1);
        pool.endpoint().cx_active.fetch_sub(1, Relaxed);
        pool.cluster.remove_connection();
        pool.wake_one_waiter();
    }
}
