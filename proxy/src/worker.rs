//! What threads share ([`Shared`]: the current snapshot, counters, the access log, the drain
//! signal) and one worker's own state ([`Worker`]: its upstream pools, its cached snapshot, its
//! Wasm VMs and chains, its connections). A worker owns all of it on its own thread
//! (`threads`), so nothing on the request path takes a lock.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use crate::access_log::{AccessLogSink, LogBuffer};
use crate::identity::Identity;
use crate::snapshot::Snapshot;
use crate::stats::ListenerStats;
use crate::tls::Tls;
use crate::upstream::pool::Pools;
use wasmesh_host::{Chain, Embedder, Host, VmFailure, WorkerVms};

/// What all threads share: the current snapshot, counters, the access log and the drain signal.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// The Wasm host: module cache, shared data, plugin counters.
    pub host: Arc<Host>,
    version: AtomicU64,
    pub workers: usize,
    pub listener_stats: Vec<Arc<ListenerStats>>,
    pub listener_cx_active: Vec<AtomicU32>,
    pub access_log: Option<AccessLogSink>,
    drain: watch::Sender<bool>,
    pub started: Instant,
    /// This proxy's node id (the `node.id` property filters read).
    pub node_id: Arc<str>,
    /// Its workload identity, when a control plane gives it one.
    pub identity: Arc<Identity>,
    /// TLS configurations made from it.
    pub tls: Tls,
    /// Istio's standard metrics (`telemetry::metrics`), kept across reloads.
    pub istio: Arc<crate::telemetry::metrics_store::IstioMetrics>,
    /// Where sampled requests' spans go (`telemetry::trace`).
    pub tracer: crate::telemetry::trace::Tracer,
    /// The listeners' bound addresses: an `original_dst` cluster never sends to them.
    pub listener_addrs: Vec<std::net::SocketAddr>,
}

impl Shared {
    pub fn new(
        snapshot: Snapshot,
        workers: usize,
        access_log: Option<AccessLogSink>,
        host: Arc<Host>,
        identity: Arc<Identity>,
    ) -> Shared {
        let listener_stats = snapshot
            .bootstrap
            .listeners
            .iter()
            .map(|l| Arc::new(ListenerStats::new(&l.name, workers)))
            .collect();
        let listener_cx_active = snapshot
            .bootstrap
            .listeners
            .iter()
            .map(|_| AtomicU32::new(0))
            .collect();
        Shared {
            version: AtomicU64::new(snapshot.version),
            snapshot: ArcSwap::from_pointee(snapshot),
            host,
            workers,
            listener_stats,
            listener_cx_active,
            access_log,
            drain: watch::channel(false).0,
            started: Instant::now(),
            node_id: Arc::from("wasmesh"),
            tls: Tls::new(identity.clone()),
            identity,
            istio: Arc::new(crate::telemetry::metrics_store::IstioMetrics::new(workers)),
            tracer: Default::default(),
            listener_addrs: Vec::new(),
        }
    }

    /// The current snapshot (for the admin thread; workers cache theirs).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Makes `snapshot` current: new requests use it; requests in flight finish on theirs.
    pub fn install(&self, snapshot: Snapshot) {
        let version = snapshot.version;
        self.snapshot.store(Arc::new(snapshot));
        self.version.store(version, Relaxed);
    }

    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    pub fn begin_drain(&self) {
        self.drain.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }
}

/// Why a listener's plugin chain could not start on a worker (its requests get `503`).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The worker's VMs could not be set up (wasmtime's reason).
    #[error("{0}")]
    Host(String),
    /// A plugin of the chain failed to start in this worker's VM.
    #[error("filter {name:?}: {failure}")]
    Filter { name: String, failure: VmFailure },
}

/// What the worker asks of a downstream connection it serves: whether it sat idle too long,
/// and to close (on drain, or when idle).
pub trait Connection {
    /// True if nothing is in flight and nothing happened for the idle timeout.
    fn is_idle_past_timeout(&self, now: tokio::time::Instant) -> bool;
    /// Finishes the requests in flight and closes.
    fn request_shutdown(&self);
}

/// One worker's state. Lives on the worker thread only.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub pools: Pools,
    pub log: LogBuffer,
    /// The worker's view of the current snapshot. An `Rc` around the `Arc` so each request
    /// clones without an atomic increment on a count all workers share.
    #[allow(clippy::redundant_allocation)]
    snapshot: RefCell<Rc<Arc<Snapshot>>>,
    connections: Cell<usize>,
    all_closed: Notify,
    /// Wakes an idle worker's housekeeping when a connection comes.
    first_connection: Notify,
    /// Carries out the callouts of this worker's plugins; given to its VMs when made.
    embedder: Rc<dyn Embedder>,
    /// This worker's plugin VMs, and the chain of each listener for the snapshot version.
    vms: RefCell<Option<WorkerVms>>,
    chains: RefCell<(u64, Vec<Option<Rc<Chain>>>)>,
    /// Connections being served, so drain and idle timeouts can reach them.
    registry: RefCell<Vec<Weak<dyn Connection>>>,
}

impl Worker {
    /// A worker whose plugins' callouts and ejections `embedder` carries out (through this
    /// worker's pools: it holds a weak reference back).
    pub fn new(shared: Arc<Shared>, embedder: Rc<dyn Embedder>) -> Worker {
        let snapshot = RefCell::new(Rc::new(shared.snapshot()));
        Worker {
            shared,
            embedder,
            pools: Pools::default(),
            log: LogBuffer::default(),
            snapshot,
            connections: Cell::new(0),
            all_closed: Notify::new(),
            first_connection: Notify::new(),
            vms: RefCell::new(None),
            chains: RefCell::new((0, Vec::new())),
            registry: RefCell::default(),
        }
    }

    /// The current snapshot, refreshed only when a new one was published.
    #[allow(clippy::redundant_allocation)]
    pub fn snapshot(&self) -> Rc<Arc<Snapshot>> {
        {
            let cached = self.snapshot.borrow();
            if cached.version == self.shared.version.load(Relaxed) {
                return cached.clone();
            }
        }
        let fresh = Rc::new(self.shared.snapshot());
        *self.snapshot.borrow_mut() = fresh.clone();
        fresh
    }

    /// The listener's plugin chain on this worker, built when the snapshot changes; `None`
    /// when the listener has no filters, `Some(Err)` if the chain could not start here.
    pub fn chain(
        &self,
        snapshot: &Snapshot,
        listener: usize,
    ) -> Option<Result<Rc<Chain>, ChainError>> {
        if snapshot.chains[listener].is_empty() {
            return None;
        }
        {
            let chains = self.chains.borrow();
            if chains.0 == snapshot.version
                && let Some(Some(c)) = chains.1.get(listener)
            {
                return Some(Ok(c.clone()));
            }
        }
        let mut vms = self.vms.borrow_mut();
        if vms.is_none() {
            match WorkerVms::new(self.shared.host.clone(), self.embedder.clone()) {
                Ok(v) => *vms = Some(v),
                Err(e) => return Some(Err(ChainError::Host(e.to_string()))),
            }
        }
        let built = vms
            .as_mut()
            .expect("just made")
            .chain(&snapshot.chains[listener]);
        let mut chains = self.chains.borrow_mut();
        if chains.0 != snapshot.version {
            *chains = (snapshot.version, vec![None; snapshot.chains.len()]);
        }
        match built {
            Ok(c) => {
                chains.1[listener] = Some(c.clone());
                Some(Ok(c))
            }
            Err((name, failure)) => Some(Err(ChainError::Filter { name, failure })),
        }
    }

    /// Counts a connection until the returned guard drops. The first after an idle spell
    /// brings the coarse clock up to date (housekeeping stops ticking it while no connection
    /// is open) and wakes housekeeping.
    pub fn track_connection(self: &Rc<Self>) -> ConnectionTrack {
        if self.connections.replace(self.connections.get() + 1) == 0 {
            crate::rt::tick_coarse_clock();
            self.first_connection.notify_one();
        }
        ConnectionTrack(self.clone())
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.get()
    }

    /// Returns when a connection opens (at once if one opened since the last call).
    pub async fn connection_opened(&self) {
        self.first_connection.notified().await;
    }

    /// Keeps a connection within reach of drain and idle timeouts while it lives.
    pub fn register_connection<C: Connection + 'static>(&self, conn: &Rc<C>) {
        let weak: Weak<C> = Rc::downgrade(conn);
        let weak: Weak<dyn Connection> = weak;
        self.registry.borrow_mut().push(weak);
    }

    /// Asks idle connections (or, when draining, all of them) to close; forgets closed ones.
    pub fn reap_connections(&self, draining: bool) {
        let now = tokio::time::Instant::now();
        // Collected first: a shutdown may wake tasks, never re-enter this borrow.
        let mut to_close = Vec::new();
        self.registry.borrow_mut().retain(|weak| {
            let Some(conn) = weak.upgrade() else {
                return false;
            };
            if draining || conn.is_idle_past_timeout(now) {
                to_close.push(conn);
            }
            true
        });
        for conn in to_close {
            conn.request_shutdown();
        }
    }

    /// Returns once every connection counted by [`Worker::track_connection`] has closed.
    pub async fn all_connections_closed(&self) {
        while self.connections.get() > 0 {
            self.all_closed.notified().await;
        }
    }
}

pub struct ConnectionTrack(Rc<Worker>);

impl Drop for ConnectionTrack {
    fn drop(&mut self) {
        let w = &self.0;
        w.connections.set(w.connections.get() - 1);
        if w.connections.get() == 0 {
            w.all_closed.notify_waiters();
        }
    }
}
