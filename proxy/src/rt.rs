//! Runtime glue: hyper executes connection tasks on the worker's own thread.

use std::future::Future;

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
