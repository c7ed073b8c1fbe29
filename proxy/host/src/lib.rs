//! wasmesh-host: the proxy-wasm 0.2.1 host of wasmesh, on wasmtime.
//!
//! It knows nothing of sockets, so it can be tested and benchmarked alone: the embedder (the
//! proxy, the SDK's test harness, `wasmesh bench`) hands it request and response data through
//! [`StreamDriver`] and carries out callouts through [`Embedder`].
//!
//! The model (see `docs/ARCHITECTURE.md`): modules are compiled once per process and cached by
//! sha256 ([`ModuleCache`]); each worker instantiates every plugin VM it needs
//! ([`WorkerVms`]), so a stream's callbacks run in a VM of its own worker with no lock;
//! shared data, queues and metrics are process-wide ([`Shared`]). VMs must be driven from
//! inside a tokio `LocalSet` (timers and callout replies are local tasks).

pub mod abi;
pub mod callout;
pub mod chain;
mod deadline;
pub mod driver;
pub mod flags;
pub mod foreign;
mod imports;
pub mod module;
pub mod pairs;
pub mod profile;
pub mod properties;
pub mod scope;
pub mod shared;
mod state;
pub mod stream;
pub mod vm;
mod wasi;

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

pub use callout::{
    CalloutDone, CalloutFailure, CalloutRequest, CalloutResponse, Embedder, GrpcDone, GrpcRequest,
    GrpcResponse, NoCallouts,
};
pub use chain::{
    BodyStep, Chain, FailStrategy, FilterStream, HeadersStep, PluginSpec, PluginStats, Verdict,
    WorkerVms,
};
pub use driver::StreamDriver;
pub use flags::ResponseFlag;
pub use module::{ModuleCache, ModuleError, PluginModule};
pub use profile::{Callback, Profiler};
pub use scope::Scope;
pub use shared::Shared;
pub use stream::{Decisions, LocalResponse, Stream, StreamInfo};
pub use vm::{VmCell, VmFailure, VmLimits};

/// What one proxy (or harness) shares across its workers.
pub struct Host {
    pub cache: ModuleCache,
    pub shared: Arc<Shared>,
    stats: Mutex<HashMap<String, Arc<PluginStats>>>,
    /// The host functions, defined once.
    linker: OnceLock<wasmtime::Linker<state::HostState>>,
    /// Each module linked against them (by sha256), once: workers and checks instantiate it.
    pres: Mutex<HashMap<[u8; 32], wasmtime::InstancePre<state::HostState>>>,
}

impl Host {
    /// `cache_dir` keeps compiled modules across restarts.
    pub fn new(cache_dir: Option<PathBuf>) -> Arc<Host> {
        Arc::new(Host {
            cache: ModuleCache::new(cache_dir),
            shared: Arc::default(),
            stats: Mutex::default(),
            linker: OnceLock::new(),
            pres: Mutex::default(),
        })
    }

    fn linker(&self) -> wasmtime::Result<&wasmtime::Linker<state::HostState>> {
        if let Some(l) = self.linker.get() {
            return Ok(l);
        }
        let mut linker = wasmtime::Linker::new(module::engine());
        linker.allow_shadowing(true);
        imports::define(&mut linker)?;
        wasi::define(&mut linker)?;
        Ok(self.linker.get_or_init(|| linker))
    }

    /// The module linked to the host functions, ready to instantiate.
    fn instance_pre(
        &self,
        module: &PluginModule,
    ) -> Result<wasmtime::InstancePre<state::HostState>, VmFailure> {
        let mut pres = self.pres.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pres.get(&module.sha256) {
            return Ok(p.clone());
        }
        let mut linker = self
            .linker()
            .map_err(|e| VmFailure::Start(format!("{e:#}")))?
            .clone();
        wasi::define_stubs_for(&mut linker, &module.module)
            .map_err(|e| VmFailure::Start(e.to_string()))?;
        let pre = linker
            .instantiate_pre(&module.module)
            .map_err(|e| VmFailure::Start(format!("{e:#}")))?;
        pres.insert(module.sha256, pre.clone());
        Ok(pre)
    }

    /// Counters of plugin `name` (created on first use).
    pub fn stats(&self, name: &str) -> Arc<PluginStats> {
        self.stats
            .lock()
            .expect("stats lock")
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Counters of every plugin, by name.
    pub fn all_stats(&self) -> Vec<(String, Arc<PluginStats>)> {
        let mut all: Vec<_> = self
            .stats
            .lock()
            .expect("stats lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Checks that a chain's plugins start (instantiate, `on_vm_start`, `on_configure`) before
    /// it is used anywhere: a plugin that refuses its configuration is named with the reason.
    /// Must run inside a tokio `LocalSet`.
    pub fn validate(
        self: &Arc<Self>,
        plugins: &[Arc<PluginSpec>],
    ) -> Result<(), (String, VmFailure)> {
        let mut vms = WorkerVms::new(self.clone(), std::rc::Rc::new(NoCallouts))
            .map_err(|e| (String::new(), VmFailure::Start(e.to_string())))?;
        vms.chain(plugins).map(drop)
    }
}

/// Spawns a host task (ticks, queue notifications, deferred deliveries) on the current
/// worker's `LocalSet`.
pub(crate) fn spawn_local(fut: Pin<Box<dyn std::future::Future<Output = ()>>>) {
    tokio::task::spawn_local(fut);
}
