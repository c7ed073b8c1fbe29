//! Worker threads. Each runs a single-threaded tokio runtime and owns its connections, its
//! upstream pools and (with filters) its Wasm VMs; nothing on the request path takes a lock.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::access_log::{AccessLogSink, LogBuffer};
use crate::server::{self, ConnCtx};
use crate::snapshot::Snapshot;
use crate::stats::{self, ListenerStats};
use crate::upstream::pool::Pools;

/// What all threads share: the current snapshot, counters, the access log and the drain signal.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    version: AtomicU64,
    pub workers: usize,
    pub listener_stats: Vec<Arc<ListenerStats>>,
    pub listener_cx_active: Vec<AtomicU32>,
    pub access_log: Option<AccessLogSink>,
    drain: watch::Sender<bool>,
    pub started: Instant,
}

impl Shared {
    pub fn new(snapshot: Snapshot, workers: usize, access_log: Option<AccessLogSink>) -> Shared {
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
            workers,
            listener_stats,
            listener_cx_active,
            access_log,
            drain: watch::channel(false).0,
            started: Instant::now(),
        }
    }

    /// The current snapshot (for the admin thread; workers cache theirs).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
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
    /// Connections being served, so drain and idle timeouts can reach them.
    registry: RefCell<Vec<Weak<ConnCtx>>>,
}

impl Worker {
    fn new(shared: Arc<Shared>) -> Worker {
        let snapshot = RefCell::new(Rc::new(shared.snapshot()));
        Worker {
            shared,
            pools: Pools::default(),
            log: LogBuffer::default(),
            snapshot,
            connections: Cell::new(0),
            all_closed: Notify::new(),
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

    /// Counts a connection until the returned guard drops.
    pub fn track_connection(self: &Rc<Self>) -> ConnectionTrack {
        self.connections.set(self.connections.get() + 1);
        ConnectionTrack(self.clone())
    }

    pub fn register_connection(&self, conn: &Rc<ConnCtx>) {
        self.registry.borrow_mut().push(Rc::downgrade(conn));
    }

    /// Asks idle connections (or, when draining, all of them) to close; forgets closed ones.
    fn reap_connections(&self, draining: bool) {
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

    async fn all_connections_closed(&self) {
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

/// Starts worker `index` on its own thread, serving `listeners` (indexed as in the config).
pub fn spawn(
    index: usize,
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    drain_timeout: Duration,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("wasmesh-worker-{index}"))
        .spawn(move || {
            stats::set_worker_index(index);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the worker");
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, run(index, shared, listeners, drain_timeout));
        })
}

async fn run(
    index: usize,
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    drain_timeout: Duration,
) {
    let worker = Rc::new(Worker::new(shared.clone()));
    for (i, listener) in listeners.into_iter().enumerate() {
        match TcpListener::from_std(listener) {
            Ok(l) => {
                tokio::task::spawn_local(server::accept_loop(worker.clone(), i, l));
            }
            Err(e) => tracing::error!(error = %e, worker = index, "cannot use listener socket"),
        }
    }
    tokio::task::spawn_local(housekeeping(worker.clone()));
    let mut drain = shared.drain_signal();
    let _ = drain.wait_for(|d| *d).await;
    tracing::debug!(worker = index, "draining");
    worker.reap_connections(true);
    let _ = tokio::time::timeout(drain_timeout, worker.all_connections_closed()).await;
    if let Some(sink) = &shared.access_log {
        worker.log.flush(sink);
    }
}

/// Periodic per-worker chores: flush access log lines, close expired idle upstream connections.
async fn housekeeping(worker: Rc<Worker>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        crate::rt::tick_coarse_clock();
        n += 1;
        if let Some(sink) = &worker.shared.access_log {
            worker.log.flush(sink);
        }
        if n.is_multiple_of(20) {
            worker.pools.sweep();
            worker.reap_connections(worker.shared.is_draining());
        }
    }
}
