//! Opt-in profiling of a chain's guest callbacks, for `wasmesh bench`: how long each filter's
//! callbacks take and how many host calls they make. A chain has no profiler unless one is set
//! with [`crate::Chain::set_profiler`]; without one a callback costs one more branch.

use std::time::{Duration, Instant};

use crate::vm::{Vm, VmCell};

/// The guest callbacks of one HTTP stream, as a [`Profiler`] sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Callback {
    /// `proxy_on_context_create` for the stream's context.
    ContextCreate,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    /// The end of the stream: `proxy_on_done`, `proxy_on_log` and `proxy_on_delete` together.
    Done,
}

impl Callback {
    /// Every callback, in the order a stream sees them.
    pub const ALL: [Callback; 8] = [
        Callback::ContextCreate,
        Callback::RequestHeaders,
        Callback::RequestBody,
        Callback::RequestTrailers,
        Callback::ResponseHeaders,
        Callback::ResponseBody,
        Callback::ResponseTrailers,
        Callback::Done,
    ];

    /// A short stable name (`request_headers`, `done`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Callback::ContextCreate => "context_create",
            Callback::RequestHeaders => "request_headers",
            Callback::RequestBody => "request_body",
            Callback::RequestTrailers => "request_trailers",
            Callback::ResponseHeaders => "response_headers",
            Callback::ResponseBody => "response_body",
            Callback::ResponseTrailers => "response_trailers",
            Callback::Done => "done",
        }
    }

    /// The position of this callback in [`Callback::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Receives the cost of every stream callback of a chain's filters.
pub trait Profiler {
    /// Filter `filter` (its position in the chain) ran `callback` in `elapsed` (wall time,
    /// including the host calls it made and the work they left for after it returned), making
    /// `host_calls` host calls.
    fn record(&self, filter: usize, callback: Callback, elapsed: Duration, host_calls: u64);
}

/// Runs `f` on `vm`, reporting its cost to `profiler` if there is one.
pub(crate) fn call<T>(
    profiler: Option<&dyn Profiler>,
    filter: usize,
    callback: Callback,
    vm: &VmCell,
    f: impl FnOnce(&mut Vm) -> T,
) -> T {
    let Some(profiler) = profiler else {
        return vm.with(f);
    };
    let calls = vm.host_calls();
    let start = Instant::now();
    let out = vm.with(f);
    let elapsed = start.elapsed();
    profiler.record(
        filter,
        callback,
        elapsed,
        vm.host_calls().wrapping_sub(calls),
    );
    out
}
