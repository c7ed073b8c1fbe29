//! The `env.proxy_*` host functions of proxy-wasm 0.2.1 (and the 0.1.0 and emscripten names
//! that SDK builds import), with Envoy's statuses. A bad guest pointer is
//! `INVALID_MEMORY_ACCESS`, never a host crash; nothing here calls back into the guest except
//! its allocator, and follow-up work is left in `HostState::effects`.
//!
//! Each function is an ordinary Rust function, `fn(&mut Caller, args...) -> Answer`, in the
//! module of its ABI area, which registers it in its `define`:
//!
//! | module | functions |
//! |---|---|
//! | `lifecycle` | logging, time, ticks, `proxy_done`, the effective context; a stream continued, closed or answered locally; emscripten's names |
//! | `headers` | header maps and pseudo-headers |
//! | `buffers` | bodies, callout bodies, configurations |
//! | `properties` | properties |
//! | `callouts` | HTTP and gRPC calls, `proxy_get_status` |
//! | `shared` | shared data and shared queues |
//! | `metrics` | metrics |
//! | `foreign` | foreign functions |
//!
//! Two modules serve them all: `call` registers a function, counts its calls
//! (`HostState::host_calls`) and turns its `Answer` into the status the guest gets; `guest` is
//! the only code that touches guest memory, and turns a bad pointer into
//! `INVALID_MEMORY_ACCESS` (and a module without memory into `INTERNAL_FAILURE`) for `?`.

use wasmtime::Linker;

use crate::state::HostState;

mod buffers;
mod call;
mod callouts;
mod foreign;
mod guest;
mod headers;
mod lifecycle;
mod metrics;
mod properties;
mod shared;
#[cfg(test)]
mod tests;

/// Defines every `env` function a proxy-wasm module may import.
pub fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    lifecycle::define(linker)?;
    buffers::define(linker)?;
    headers::define(linker)?;
    callouts::define(linker)?;
    shared::define(linker)?;
    metrics::define(linker)?;
    properties::define(linker)?;
    foreign::define(linker)?;
    Ok(())
}
