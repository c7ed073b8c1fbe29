//! The data of one VM's store: its contexts, what the running callback may see, and the
//! follow-up work host calls leave for after the guest returns.

use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;
use wasmtime::{Memory, ResourceLimiter, StoreLimits, TypedFunc};

use crate::callout::{CalloutRequest, Embedder, GrpcRequest};
use crate::shared::{Metric, Shared};
use crate::stream::Stream;

/// A plugin as one of its root contexts knows it.
#[derive(Debug)]
pub struct PluginInfo {
    pub name: String,
    pub root_id: String,
    pub configuration: Bytes,
}

pub(crate) enum Context {
    Root(Rc<PluginInfo>),
    Http { root: u32, stream: Rc<Stream> },
}

/// The answer to a callout, visible while `proxy_on_http_call_response` (or a gRPC callback)
/// runs.
#[derive(Default)]
pub(crate) struct CallResponse {
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
    pub trailers: Vec<(Bytes, Bytes)>,
}

/// Work a host call asked for, done once the guest call returns (never re-entering the guest
/// from inside a host call).
pub(crate) enum Effect {
    HttpCall { token: u32, request: CalloutRequest },
    GrpcCall { token: u32, request: GrpcRequest },
    Tick { root: u32, period: Option<Duration> },
}

pub struct HostState {
    pub(crate) limits: MemoryCap,
    pub(crate) memory: Option<Memory>,
    pub(crate) alloc: Option<TypedFunc<i32, i32>>,
    pub(crate) vm_id: String,
    pub(crate) vm_config: Bytes,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) embedder: Rc<dyn Embedder>,
    // Looked up several times per host call: Fx rather than SipHash (keys are our own ids).
    pub(crate) contexts: FxHashMap<u32, Context>,
    /// The context the running callback was delivered to (0 between callbacks).
    pub(crate) current: u32,
    /// The context host calls act on: `current`, or what `proxy_set_effective_context` chose.
    pub(crate) effective: u32,
    /// The configuration buffer (`VM_CONFIGURATION` or `PLUGIN_CONFIGURATION`) of the running
    /// `proxy_on_vm_start` / `proxy_on_configure`.
    pub(crate) config_buffer: Option<(i32, Bytes)>,
    pub(crate) call_response: Option<CallResponse>,
    pub(crate) grpc_message: Option<Bytes>,
    /// `proxy_get_status`: code and message of the last callout result.
    pub(crate) status: (u32, Bytes),
    pub(crate) effects: Vec<Effect>,
    pub(crate) metrics: HashMap<u32, Arc<Metric>>,
    pub(crate) queue_notify: UnboundedSender<(u32, u32)>,
    pub(crate) next_token: u32,
    /// Callout token -> the root context that made it (and the stream it serves, if any).
    pub(crate) callouts: HashMap<u32, u32>,
    pub(crate) plugin_label: String,
    /// The last error-level message the plugin logged (a panic's message, before a trap).
    pub(crate) last_error: Option<String>,
    /// Host calls made since the counter was last reset (for `wasmesh bench`).
    pub(crate) host_calls: u64,
    /// A reusable buffer for values copied out to the guest, so reads do not allocate.
    pub(crate) scratch: Vec<u8>,
    /// Set when the running call passed its wall-clock deadline (see `deadline::Overtime`).
    pub(crate) overtime: Option<crate::deadline::Overtime>,
}

impl HostState {
    pub(crate) fn stream(&self) -> Option<&Rc<Stream>> {
        match self.contexts.get(&self.effective)? {
            Context::Http { stream, .. } => Some(stream),
            Context::Root(_) => None,
        }
    }

    /// The root context of the effective context.
    pub(crate) fn root_of_effective(&self) -> u32 {
        match self.contexts.get(&self.effective) {
            Some(Context::Http { root, .. }) => *root,
            _ => self.effective,
        }
    }

    pub(crate) fn plugin(&self) -> Option<&Rc<PluginInfo>> {
        match self.contexts.get(&self.root_of_effective())? {
            Context::Root(info) => Some(info),
            Context::Http { .. } => None,
        }
    }

    pub(crate) fn next_token(&mut self) -> u32 {
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.next_token
    }
}

/// Caps linear memory growth and remembers when it refused one.
pub struct MemoryCap {
    pub(crate) max: usize,
    pub(crate) denied: bool,
    pub(crate) tables: StoreLimits,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.tables.table_growing(current, desired, maximum)
    }
}
