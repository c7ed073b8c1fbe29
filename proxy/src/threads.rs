//! The worker threads. Each runs a single-threaded tokio runtime with a `LocalSet`: it makes
//! its [`Worker`] (with the embedder that carries out its plugins' callouts), runs an accept
//! loop per listener and the housekeeping timer, and on drain asks its connections to close
//! and waits for them (up to `drain_timeout`).

use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::callouts::ProxyEmbedder;
use crate::server;
use crate::stats;
use crate::worker::{Shared, Worker};

/// Starts worker `index` on its own thread, serving `listeners` (indexed as in the config).
pub fn spawn_worker(
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
    let worker = Rc::new_cyclic(|me: &Weak<Worker>| {
        let embedder = Rc::new(ProxyEmbedder { worker: me.clone() });
        Worker::new(shared.clone(), embedder)
    });
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

/// Periodic per-worker chores: tick the coarse clock, flush access log lines (every 50 ms),
/// close idle connections past their timeouts (every second). With no connection open the
/// worker ticks only while upstream connections wait idle in its pools, once a second, and
/// otherwise sleeps until a connection comes: an idle sidecar wakes no thread.
async fn housekeeping(worker: Rc<Worker>) {
    /// Ticks of 50 ms between sweeps: one second.
    const SWEEP_TICKS: u64 = 20;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        crate::rt::tick_coarse_clock();
        n += 1;
        if let Some(sink) = &worker.shared.access_log {
            worker.log.flush(sink);
        }
        if n.is_multiple_of(SWEEP_TICKS) {
            worker.pools.sweep();
            worker.reap_connections(worker.shared.is_draining());
        }
        if worker.open_connections() == 0 {
            if worker.pools.holds_idle_connections() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                n = SWEEP_TICKS - 1; // the sweep comes next
            } else {
                worker.connection_opened().await;
            }
            tick.reset();
        }
    }
}
