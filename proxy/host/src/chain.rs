//! Filter chains: the plugins of a listener, instantiated on one worker, and the driving of
//! one HTTP stream through them with Envoy's iteration, pause and buffering semantics.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use wasmtime::InstancePre;

use crate::Host;
use crate::abi::ACTION_PAUSE;
use crate::callout::Embedder;
use crate::module::PluginModule;
use crate::module::epoch::CallGuard;
use crate::profile::{self, Callback, Profiler};
use crate::scope::Scope;
use crate::state::{HostState, PluginInfo};
use crate::stream::{BodyPhase, LocalResponse, Stream};
use crate::vm::{VmCell, VmFailure, VmLimits, VmSetup};

/// What the proxy does when a plugin's VM fails (Istio's `failStrategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailStrategy {
    /// Requests the plugin would see get 503.
    #[default]
    FailClose,
    /// The plugin is skipped.
    FailOpen,
    /// A new VM serves new requests, after a backoff; the failing request gets 503.
    FailReload,
}

/// One plugin of a chain, as configured.
#[derive(Debug)]
pub struct PluginSpec {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    pub configuration: Bytes,
    pub vm_configuration: Bytes,
    pub env: Vec<(String, String)>,
    pub fail_strategy: FailStrategy,
    pub limits: VmLimits,
    /// First wait before a failed VM is replaced (FAIL_RELOAD); doubles up to 30 s.
    pub reload_backoff: Duration,
    pub module: Arc<PluginModule>,
    /// The routes and clusters it runs on; `None`: every request.
    pub scope: Option<Scope>,
}

impl PluginSpec {
    /// Whether `other` is this plugin configured exactly the same (the module by digest): a
    /// reload keeps such a plugin's spec, so its VMs keep running with their state.
    pub fn same_as(&self, other: &PluginSpec) -> bool {
        self.name == other.name
            && self.root_id == other.root_id
            && self.configuration == other.configuration
            && self.env == other.env
            && self.fail_strategy == other.fail_strategy
            && self.limits == other.limits
            && self.reload_backoff == other.reload_backoff
            && self.scope == other.scope
            && self.vm_key() == other.vm_key()
    }

    /// Plugins with the same key share a VM on a worker, as in Envoy.
    fn vm_key(&self) -> VmKey {
        (
            self.module.sha256,
            self.vm_id.clone(),
            self.vm_configuration.clone(),
        )
    }
}

/// Module digest, `vm_id` and VM configuration.
type VmKey = ([u8; 32], String, Bytes);

/// Counters of one plugin, shared by all workers.
#[derive(Default, Debug)]
pub struct PluginStats {
    pub failures: AtomicU64,
    pub reloads: AtomicU64,
    pub memory_bytes: AtomicU64,
    pub fail_closed_requests: AtomicU64,
    pub fail_open_requests: AtomicU64,
}

/// Reloads at most this many times in `CRASH_LOOP_WINDOW` before giving up (fail closed).
const CRASH_LOOP_LIMIT: u32 = 10;
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(300);

/// The wait before replacement number `n` (from 0) of a failed VM: `base`, doubling, at
/// most 30 s.
fn reload_backoff(base: Duration, n: usize) -> Duration {
    base.saturating_mul(1 << n.min(10))
        .min(Duration::from_secs(30))
}

/// The VMs of one worker.
pub struct WorkerVms {
    host: Arc<Host>,
    embedder: Rc<dyn Embedder>,
    /// The VMs of the chains built so far that are still in use: a new chain keeps a VM whose
    /// plugins are unchanged (the same specs), with its root contexts and memory.
    live: Vec<std::rc::Weak<VmSlot>>,
}

impl WorkerVms {
    pub fn new(host: Arc<Host>, embedder: Rc<dyn Embedder>) -> wasmtime::Result<WorkerVms> {
        host.linker()?;
        Ok(WorkerVms {
            host,
            embedder,
            live: Vec::new(),
        })
    }

    /// Instantiates a chain: plugins with the same module, vm_id and VM configuration share
    /// a VM (and so its memory), as in Envoy. A VM of an earlier chain hosting exactly the
    /// same plugin specs, and not failed, is kept rather than started again.
    pub fn chain(&mut self, plugins: &[Arc<PluginSpec>]) -> Result<Rc<Chain>, (String, VmFailure)> {
        self.live.retain(|w| w.strong_count() > 0);
        let mut groups: Vec<(VmKey, Vec<Arc<PluginSpec>>)> = Vec::new();
        let group_of: Vec<usize> = plugins
            .iter()
            .map(|spec| {
                let key = spec.vm_key();
                match groups.iter().position(|(k, _)| *k == key) {
                    Some(i) => {
                        groups[i].1.push(spec.clone());
                        i
                    }
                    None => {
                        groups.push((key, vec![spec.clone()]));
                        groups.len() - 1
                    }
                }
            })
            .collect();
        let mut slots = Vec::with_capacity(groups.len());
        for (key, specs) in groups {
            let kept = self
                .live
                .iter()
                .filter_map(std::rc::Weak::upgrade)
                .find(|s| s.key == key && s.hosts_exactly(&specs) && s.healthy());
            let slot = match kept {
                Some(slot) => slot,
                None => {
                    let first = specs[0].clone();
                    let pre = self
                        .host
                        .instance_pre(&first.module)
                        .map_err(|e| (first.name.clone(), e))?;
                    let slot = Rc::new(VmSlot {
                        key,
                        pre,
                        vm: RefCell::new(None),
                        plugins: RefCell::new(
                            specs.into_iter().map(|s| (s, Cell::new(0))).collect(),
                        ),
                        reloads: RefCell::new(Vec::new()),
                        failure_counted: Cell::new(false),
                        host: self.host.clone(),
                        embedder: self.embedder.clone(),
                        spec: first,
                    });
                    slot.start().map_err(|e| (slot.spec.name.clone(), e))?;
                    self.live.push(Rc::downgrade(&slot));
                    slot
                }
            };
            slots.push(slot);
        }
        let entries = plugins
            .iter()
            .zip(group_of)
            .map(|(spec, g)| ChainEntry {
                spec: spec.clone(),
                slot: slots[g].clone(),
                stats: self.host.stats(&spec.name),
            })
            .collect();
        Ok(Rc::new(Chain {
            scoped: plugins.iter().any(|p| p.scope.is_some()),
            entries,
            profiler: RefCell::new(None),
        }))
    }
}

/// A VM with the plugins it hosts, replaced on failure under FAIL_RELOAD.
struct VmSlot {
    key: VmKey,
    pre: InstancePre<HostState>,
    vm: RefCell<Option<Rc<VmCell>>>,
    /// The plugins hosted, with their root context ids in the current VM.
    plugins: RefCell<Vec<(Arc<PluginSpec>, Cell<u32>)>>,
    /// When the VM was replaced (or tried to be), within the crash-loop window.
    reloads: RefCell<Vec<Instant>>,
    /// Whether the current VM's failure has been counted.
    failure_counted: Cell<bool>,
    host: Arc<Host>,
    embedder: Rc<dyn Embedder>,
    spec: Arc<PluginSpec>,
}

impl VmSlot {
    /// Whether this VM hosts these plugin specs (the same ones, not equal ones) and no others.
    fn hosts_exactly(&self, specs: &[Arc<PluginSpec>]) -> bool {
        let plugins = self.plugins.borrow();
        plugins.len() == specs.len()
            && plugins
                .iter()
                .zip(specs)
                .all(|((p, _), s)| Arc::ptr_eq(p, s))
    }

    /// Whether the VM is running (a failed one is replaced by a new chain).
    fn healthy(&self) -> bool {
        self.vm
            .borrow()
            .as_ref()
            .is_some_and(|vm| vm.failure().is_none())
    }

    /// Makes a new VM and a root context for every hosted plugin.
    fn start(&self) -> Result<(), VmFailure> {
        let spec = &self.spec;
        let plugins = self.plugins.borrow();
        let deadline = plugins
            .iter()
            .map(|(p, _)| p.limits.call_deadline)
            .min()
            .unwrap_or(spec.limits.call_deadline);
        let memory = plugins
            .iter()
            .map(|(p, _)| p.limits.memory)
            .max()
            .unwrap_or(spec.limits.memory);
        let cell = VmCell::new(VmSetup {
            module: &spec.module,
            pre: &self.pre,
            vm_id: spec.vm_id.clone(),
            vm_config: spec.vm_configuration.clone(),
            env: spec.env.clone(),
            limits: VmLimits {
                memory,
                call_deadline: deadline,
            },
            shared: self.host.shared.clone(),
            embedder: self.embedder.clone(),
            label: spec.name.clone(),
        })?;
        for (p, root) in plugins.iter() {
            let info = PluginInfo {
                name: p.name.clone(),
                root_id: p.root_id.clone(),
                configuration: p.configuration.clone(),
            };
            let id = cell.with(|vm| vm.create_root(info))?;
            root.set(id);
        }
        *self.vm.borrow_mut() = Some(cell);
        self.failure_counted.set(false);
        Ok(())
    }

    /// The VM to use for a new stream, replacing a failed one when FAIL_RELOAD allows: the
    /// n-th replacement within the crash-loop window waits `reload_backoff * 2^n` (at most
    /// 30 s) after the failure, or after the previous attempt if that was later. The first
    /// one waits `reload_backoff` too.
    fn current(&self) -> Option<Rc<VmCell>> {
        let vm = self.vm.borrow().clone()?;
        let Some(failed_at) = vm.failed_at() else {
            return Some(vm);
        };
        if !self.failure_counted.replace(true) {
            for (p, _) in self.plugins.borrow().iter() {
                self.host.stats(&p.name).failures.fetch_add(1, Relaxed);
            }
        }
        if self.spec.fail_strategy != FailStrategy::FailReload {
            return Some(vm);
        }
        let now = Instant::now();
        let mut reloads = self.reloads.borrow_mut();
        reloads.retain(|t| now.duration_since(*t) < CRASH_LOOP_WINDOW);
        if reloads.len() as u32 >= CRASH_LOOP_LIMIT {
            return Some(vm);
        }
        let since = reloads.last().map_or(failed_at, |&t| t.max(failed_at));
        if now < since + reload_backoff(self.spec.reload_backoff, reloads.len()) {
            return Some(vm);
        }
        reloads.push(now);
        drop(reloads);
        for (p, _) in self.plugins.borrow().iter() {
            self.host.stats(&p.name).reloads.fetch_add(1, Relaxed);
        }
        match self.start() {
            Ok(()) => {
                tracing::info!(plugin = %self.spec.name, "replaced a failed plugin VM");
                self.vm.borrow().clone()
            }
            Err(e) => {
                tracing::warn!(plugin = %self.spec.name, error = %e, "could not replace a failed plugin VM");
                Some(vm)
            }
        }
    }

    fn root_of(&self, spec: &Arc<PluginSpec>) -> u32 {
        self.plugins
            .borrow()
            .iter()
            .find(|(p, _)| Arc::ptr_eq(p, spec))
            .map_or(0, |(_, r)| r.get())
    }
}

struct ChainEntry {
    spec: Arc<PluginSpec>,
    slot: Rc<VmSlot>,
    /// The plugin's counters, found once (a lookup by name per stream was a lock, a hash and
    /// an allocation).
    stats: Arc<PluginStats>,
}

impl ChainEntry {
    /// The plugin's context for a stream (plugin `i` of the chain).
    fn enter(&self, i: usize, stream: &Rc<Stream>, profiler: Option<&dyn Profiler>) -> Filter {
        match self.slot.current() {
            Some(vm) if vm.failure().is_none() => {
                let root = self.slot.root_of(&self.spec);
                let created = profile::call(profiler, i, Callback::ContextCreate, &vm, |v| {
                    v.create_stream(root, stream.clone())
                });
                match created {
                    Ok(ctx) => Filter::Active { vm, ctx },
                    Err(e) => Filter::Failed(e),
                }
            }
            Some(vm) => Filter::Failed(vm.failure().expect("checked")),
            None => Filter::Failed(VmFailure::Start("no VM".into())),
        }
    }
}

/// A listener's plugins on one worker, in the order they run on requests.
pub struct Chain {
    entries: Vec<ChainEntry>,
    /// Whether some plugin runs only on some routes or clusters.
    scoped: bool,
    /// Sees the callbacks of streams started after it was set (`wasmesh bench`).
    profiler: RefCell<Option<Rc<dyn Profiler>>>,
}

impl Chain {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether some plugin runs only on some routes or clusters: the embedder then tells the
    /// stream its own route for the request ([`crate::StreamInfo`]'s `route_name` and
    /// `cluster_name`) before the filters run.
    pub fn is_scoped(&self) -> bool {
        self.scoped
    }

    /// Whether no plugin would run on a request the embedder routes to `route` and `cluster`:
    /// each is out of scope there (and none runs that could name another route first).
    pub fn skips(&self, route: &[u8], cluster: &str) -> bool {
        self.entries.iter().all(|e| {
            e.spec
                .scope
                .as_ref()
                .is_some_and(|s| !s.admits(route, cluster))
        })
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.spec.name.as_str()).collect()
    }

    /// Whether any plugin can see (and so change) request bodies: a body that passes them
    /// cannot keep a length declared before it.
    pub fn reads_request_body(&self) -> bool {
        self.entries.iter().any(|e| {
            e.slot
                .vm
                .borrow()
                .as_ref()
                .is_none_or(|vm| vm.with(|v| v.reads_request_body()))
        })
    }

    /// The VM serving plugin `index` now (for benchmarks and tests).
    pub fn vm(&self, index: usize) -> Option<Rc<VmCell>> {
        self.entries.get(index)?.slot.vm.borrow().clone()
    }

    /// Reports the cost of every callback of the streams started from now on to `profiler`
    /// (`None`: stop profiling). For benchmarks.
    pub fn set_profiler(&self, profiler: Option<Rc<dyn Profiler>>) {
        *self.profiler.borrow_mut() = profiler;
    }

    /// Starts driving a stream through the chain.
    pub fn stream(self: &Rc<Self>, stream: Rc<Stream>) -> FilterStream {
        let profiler = self.profiler.borrow().clone();
        let mut filters = Vec::with_capacity(self.entries.len());
        for (i, entry) in self.entries.iter().enumerate() {
            let state = if entry.spec.scope.is_some() {
                Filter::Dormant
            } else {
                entry.enter(i, &stream, profiler.as_deref())
            };
            filters.push(FilterState {
                state,
                held: BytesMut::new(),
            });
        }
        FilterStream {
            chain: self.clone(),
            stream,
            filters,
            profiler,
            finished: false,
            headers_next: 0,
            headers_end: false,
            headers_paused: None,
            request_paused_at: None,
            response_paused_at: None,
        }
    }
}

enum Filter {
    Active {
        vm: Rc<VmCell>,
        ctx: u32,
    },
    Failed(VmFailure),
    /// Failed open, or out of scope: skipped for the rest of the stream.
    Skipped,
    /// Scoped to some routes or clusters: entered, or skipped, when the request headers
    /// reach it.
    Dormant,
}

struct FilterState {
    state: Filter,
    /// Body data this filter paused on (StopIterationAndBuffer).
    held: BytesMut,
}

/// How a phase ended.
#[derive(Debug)]
pub enum Verdict {
    /// Go on (to the upstream, or to the client).
    Continue,
    /// A filter answered: send this instead.
    Reply(LocalResponse),
    /// A filter reset the stream.
    Reset,
    /// A plugin failed and its strategy closes the stream: answer 503.
    Fail { plugin: String, reason: String },
}

/// Progress of a headers phase.
#[derive(Debug)]
pub enum HeadersStep {
    Done(Verdict),
    /// A filter paused: wait on `stream.resumed`, then poll again.
    Paused,
}

/// What a body chunk became.
#[derive(Debug)]
pub enum BodyStep {
    /// Data to pass on (possibly empty).
    Emit(Bytes),
    /// A filter holds the data until more arrives.
    Held,
    /// A filter paused at the end of the body: wait on the stream, then call `resume_*_body`.
    Wait,
    Stop(Verdict),
}

/// Default buffer limit per filter (Envoy's per-connection buffer limit): over it a request
/// gets 413 and a response 500.
pub const BODY_BUFFER_LIMIT: usize = 1 << 20;

/// One stream going through a chain.
pub struct FilterStream {
    chain: Rc<Chain>,
    pub stream: Rc<Stream>,
    filters: Vec<FilterState>,
    profiler: Option<Rc<dyn Profiler>>,
    finished: bool,
    /// The next filter of the headers phase under way, and its end-of-stream flag.
    headers_next: usize,
    headers_end: bool,
    /// The filter a headers phase paused at.
    headers_paused: Option<usize>,
    request_paused_at: Option<usize>,
    response_paused_at: Option<usize>,
}

impl FilterStream {
    pub fn chain(&self) -> &Rc<Chain> {
        &self.chain
    }

    /// Checks a filter's call outcome: failures follow the plugin's strategy.
    fn settle(&mut self, i: usize, result: Result<i32, VmFailure>) -> Result<i32, Verdict> {
        match result {
            Ok(action) => Ok(action),
            Err(failure) => Err(self.failed(i, failure)),
        }
    }

    fn failed(&mut self, i: usize, failure: VmFailure) -> Verdict {
        let spec = self.chain.entries[i].spec.clone();
        let stats = self.chain.entries[i].stats.clone();
        self.filters[i].state = Filter::Skipped;
        if spec.fail_strategy == FailStrategy::FailOpen {
            stats.fail_open_requests.fetch_add(1, Relaxed);
            return Verdict::Continue;
        }
        stats.fail_closed_requests.fetch_add(1, Relaxed);
        Verdict::Fail {
            plugin: spec.name.clone(),
            reason: failure.to_string(),
        }
    }

    /// After a callback: a local reply or reset wins over iteration.
    fn interrupted(&self) -> Option<Verdict> {
        if let Some(reply) = self.stream.local_response.borrow_mut().take() {
            return Some(Verdict::Reply(reply));
        }
        if self.stream.closed.get() {
            return Some(Verdict::Reset);
        }
        None
    }

    /// Where a paused filter stands: `None` while it still waits; `Some(None)` once it
    /// resumed; `Some(Some(verdict))` if it replied, reset, or its VM failed.
    fn paused_outcome(&mut self, i: usize, response: bool) -> Option<Option<Verdict>> {
        let flag = if response {
            &self.stream.response_resume
        } else {
            &self.stream.request_resume
        };
        if flag.replace(false) {
            return Some(None);
        }
        if let Some(v) = self.interrupted() {
            return Some(Some(v));
        }
        if let Filter::Active { vm, .. } = &self.filters[i].state
            && let Some(f) = vm.failure()
        {
            return Some(match self.failed(i, f) {
                Verdict::Continue => None,
                v => Some(v),
            });
        }
        None
    }

    /// Starts `on_request_headers` through the chain. The request head must be in
    /// `stream.data.request`. On `Paused`, wait on `stream.resumed` and call
    /// [`FilterStream::poll_request_headers`] (or use [`request_headers`]).
    pub fn request_headers(&mut self, end_of_stream: bool) -> HeadersStep {
        self.stream.request_resume.set(false);
        self.headers_next = 0;
        self.headers_end = end_of_stream;
        self.run_headers(false)
    }

    /// Starts `on_response_headers`, last filter first. The response head must be in
    /// `stream.data.response`.
    pub fn response_headers(&mut self, end_of_stream: bool) -> HeadersStep {
        self.stream.response_resume.set(false);
        self.headers_next = self.filters.len();
        self.headers_end = end_of_stream;
        self.run_headers(true)
    }

    /// Continues a paused headers phase if its filter resumed.
    pub fn poll_request_headers(&mut self) -> HeadersStep {
        self.poll_headers(false)
    }

    pub fn poll_response_headers(&mut self) -> HeadersStep {
        self.poll_headers(true)
    }

    fn poll_headers(&mut self, response: bool) -> HeadersStep {
        let Some(i) = self.headers_paused.take() else {
            return self.run_headers(response);
        };
        match self.paused_outcome(i, response) {
            None => {
                self.headers_paused = Some(i);
                HeadersStep::Paused
            }
            Some(None) => self.run_headers(response),
            Some(Some(v)) => HeadersStep::Done(v),
        }
    }

    /// Iterates a headers phase from `headers_next` until the end or a pause.
    fn run_headers(&mut self, response: bool) -> HeadersStep {
        let _running = CallGuard::enter();
        loop {
            let i = if response {
                let Some(i) = self.headers_next.checked_sub(1) else {
                    return HeadersStep::Done(Verdict::Continue);
                };
                self.headers_next = i;
                i
            } else {
                let i = self.headers_next;
                if i >= self.filters.len() {
                    return HeadersStep::Done(Verdict::Continue);
                }
                self.headers_next = i + 1;
                i
            };
            if !response && matches!(self.filters[i].state, Filter::Dormant) {
                let entry = &self.chain.entries[i];
                let in_scope = entry
                    .spec
                    .scope
                    .as_ref()
                    .is_none_or(|s| s.admits_stream(&self.stream));
                self.filters[i].state = if in_scope {
                    entry.enter(i, &self.stream, self.profiler.as_deref())
                } else {
                    Filter::Skipped
                };
            }
            let (vm, ctx) = match &self.filters[i].state {
                Filter::Active { vm, ctx } => (vm.clone(), *ctx),
                Filter::Failed(f) if !response => {
                    let f = f.clone();
                    match self.failed(i, f) {
                        Verdict::Continue => continue,
                        v => return HeadersStep::Done(v),
                    }
                }
                _ => continue,
            };
            let count = header_count(&self.stream, response);
            let end = self.headers_end;
            let profiler = self.profiler.as_deref();
            let result = if response {
                profile::call(profiler, i, Callback::ResponseHeaders, &vm, |v| {
                    v.response_headers(ctx, count, end)
                })
            } else {
                profile::call(profiler, i, Callback::RequestHeaders, &vm, |v| {
                    v.request_headers(ctx, count, end)
                })
            };
            let action = match self.settle(i, result) {
                Ok(a) => a,
                Err(Verdict::Continue) => continue,
                Err(v) => return HeadersStep::Done(v),
            };
            if let Some(v) = self.interrupted() {
                return HeadersStep::Done(v);
            }
            if action == ACTION_PAUSE {
                match self.paused_outcome(i, response) {
                    None => {
                        self.headers_paused = Some(i);
                        return HeadersStep::Paused;
                    }
                    Some(None) => continue,
                    Some(Some(v)) => return HeadersStep::Done(v),
                }
            }
        }
    }

    /// Runs a request body chunk through the chain, from the first filter (or from the one
    /// that paused at the end of the body, after it resumed).
    pub fn request_body(&mut self, chunk: Bytes, end: bool) -> BodyStep {
        self.body(chunk, end, 0, false)
    }

    /// Continues a request body after the filter that paused at its end resumed.
    pub fn resume_request_body(&mut self) -> BodyStep {
        let Some(i) = self.request_paused_at.take() else {
            return BodyStep::Emit(Bytes::new());
        };
        let data = std::mem::take(&mut self.filters[i].held).freeze();
        self.body(data, true, i + 1, false)
    }

    pub fn response_body(&mut self, chunk: Bytes, end: bool) -> BodyStep {
        let n = self.filters.len();
        self.body(chunk, end, n, true)
    }

    pub fn resume_response_body(&mut self) -> BodyStep {
        let Some(i) = self.response_paused_at.take() else {
            return BodyStep::Emit(Bytes::new());
        };
        let data = std::mem::take(&mut self.filters[i].held).freeze();
        self.body(data, true, i, true)
    }

    /// After `BodyStep::Wait`: `None` while the filter that paused at the end of the body
    /// still waits, else what came of it.
    pub fn poll_body(&mut self, response: bool) -> Option<BodyStep> {
        let i = if response {
            self.response_paused_at
        } else {
            self.request_paused_at
        }?;
        match self.paused_outcome(i, response)? {
            None => Some(if response {
                self.resume_response_body()
            } else {
                self.resume_request_body()
            }),
            Some(v) => Some(BodyStep::Stop(v)),
        }
    }

    /// Body iteration. Requests go from filter `from` upwards; responses from `from - 1`
    /// downwards.
    fn body(&mut self, chunk: Bytes, end: bool, from: usize, response: bool) -> BodyStep {
        let _running = CallGuard::enter();
        let n = self.filters.len();
        let order: Vec<usize> = if response {
            (0..from.min(n)).rev().collect()
        } else {
            (from..n).collect()
        };
        let mut data = chunk;
        for i in order {
            let Filter::Active { vm, ctx } = &self.filters[i].state else {
                continue;
            };
            let (vm, ctx) = (vm.clone(), *ctx);
            let mut buffer = std::mem::take(&mut self.filters[i].held);
            buffer.extend_from_slice(&data);
            {
                let mut d = self.stream.data.borrow_mut();
                if response {
                    d.response_body = buffer;
                    d.response_end = end;
                    d.body_phase = Some(BodyPhase::Response);
                } else {
                    d.request_body = buffer;
                    d.request_end = end;
                    d.body_phase = Some(BodyPhase::Request);
                }
            }
            let size = {
                let d = self.stream.data.borrow();
                if response {
                    d.response_body.len()
                } else {
                    d.request_body.len()
                }
            };
            let profiler = self.profiler.as_deref();
            let result = if response {
                profile::call(profiler, i, Callback::ResponseBody, &vm, |v| {
                    v.response_body(ctx, size, end)
                })
            } else {
                profile::call(profiler, i, Callback::RequestBody, &vm, |v| {
                    v.request_body(ctx, size, end)
                })
            };
            let buffer = {
                let mut d = self.stream.data.borrow_mut();
                d.body_phase = None;
                if response {
                    std::mem::take(&mut d.response_body)
                } else {
                    std::mem::take(&mut d.request_body)
                }
            };
            let action = match self.settle(i, result) {
                Ok(a) => a,
                Err(Verdict::Continue) => {
                    data = buffer.freeze();
                    continue;
                }
                Err(v) => return BodyStep::Stop(v),
            };
            if let Some(v) = self.interrupted() {
                return BodyStep::Stop(v);
            }
            if action == ACTION_PAUSE {
                if buffer.len() > BODY_BUFFER_LIMIT {
                    let status = if response { 500 } else { 413 };
                    return BodyStep::Stop(Verdict::Reply(LocalResponse {
                        status,
                        body: Bytes::from_static(if response {
                            b"Internal Server Error"
                        } else {
                            b"Payload Too Large"
                        }),
                        headers: Vec::new(),
                        grpc_status: None,
                        details: "buffer_limit_exceeded".into(),
                    }));
                }
                self.filters[i].held = buffer;
                if end {
                    if response {
                        self.response_paused_at = Some(i);
                    } else {
                        self.request_paused_at = Some(i);
                    }
                    return BodyStep::Wait;
                }
                return BodyStep::Held;
            }
            data = buffer.freeze();
        }
        BodyStep::Emit(data)
    }

    /// Runs `on_request_trailers` (trailers in `stream.data.request_trailers`).
    pub fn request_trailers(&mut self) -> Verdict {
        self.trailers(false)
    }

    pub fn response_trailers(&mut self) -> Verdict {
        self.trailers(true)
    }

    fn trailers(&mut self, response: bool) -> Verdict {
        let n = self.filters.len();
        let order: Vec<usize> = if response {
            (0..n).rev().collect()
        } else {
            (0..n).collect()
        };
        for i in order {
            let Filter::Active { vm, ctx } = &self.filters[i].state else {
                continue;
            };
            let (vm, ctx) = (vm.clone(), *ctx);
            let count = {
                let d = self.stream.data.borrow();
                let t = if response {
                    &d.response_trailers
                } else {
                    &d.request_trailers
                };
                t.as_ref().map_or(0, |t| t.len())
            };
            let profiler = self.profiler.as_deref();
            let result = if response {
                profile::call(profiler, i, Callback::ResponseTrailers, &vm, |v| {
                    v.response_trailers(ctx, count)
                })
            } else {
                profile::call(profiler, i, Callback::RequestTrailers, &vm, |v| {
                    v.request_trailers(ctx, count)
                })
            };
            match self.settle(i, result) {
                Ok(_) | Err(Verdict::Continue) => {}
                Err(v) => return v,
            }
            if let Some(v) = self.interrupted() {
                return v;
            }
        }
        Verdict::Continue
    }

    /// Ends the stream for every filter: `on_done`, `on_log`, `on_delete`. Runs once; dropping
    /// the stream runs it too.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let _running = CallGuard::enter();
        for (i, f) in self.filters.iter().enumerate() {
            if let Filter::Active { vm, ctx } = &f.state {
                profile::call(self.profiler.as_deref(), i, Callback::Done, vm, |v| {
                    v.finish_stream(*ctx)
                });
                let stats = &self.chain.entries[i].stats;
                stats.memory_bytes.store(vm.memory_bytes() as u64, Relaxed);
            }
        }
    }
}

impl Drop for FilterStream {
    fn drop(&mut self) {
        self.finish();
    }
}

fn header_count(stream: &Stream, response: bool) -> usize {
    let d = stream.data.borrow();
    if response {
        d.response.as_ref().map_or(0, |p| p.headers.len() + 1)
    } else {
        d.request.as_ref().map_or(0, |p| p.headers.len() + 4)
    }
}
