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

/// Every `env` function defined here, for checking a module's imports before instantiating it.
pub const ENV_FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_done",
    "proxy_set_effective_context",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_get_header_map_size",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_get_status",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_set_shared_data",
    "proxy_get_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_define_metric",
    "proxy_record_metric",
    "proxy_increment_metric",
    "proxy_get_metric",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_call_foreign_function",
    "proxy_get_configuration",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_clear_route_cache",
    "emscripten_notify_memory_growth",
    "pthread_equal",
];

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
