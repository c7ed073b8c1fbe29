//! Runtime glue: hyper executes connection tasks on the worker's own thread.

use std::cell::Cell;
use std::future::Future;

use tokio::time::Instant;

/// Spawns hyper's background tasks (HTTP/2 streams, connections) on the current worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

thread_local! {
    static COARSE_NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// A clock that ticks with the worker's housekeeping (every 50 ms): for idle bookkeeping that
/// does not need a system call per request.
pub fn coarse_now() -> Instant {
    COARSE_NOW.with(|c| match c.get() {
        Some(t) => t,
        None => tick_coarse_clock(),
    })
}

/// Advances the coarse clock to now.
pub fn tick_coarse_clock() -> Instant {
    let now = Instant::now();
    COARSE_NOW.with(|c| c.set(Some(now)));
    now
}
