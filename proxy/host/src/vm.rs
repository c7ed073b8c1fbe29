//! One VM: a wasmtime store and instance of a plugin module on one worker, with its root and
//! stream contexts. Every guest call runs under an epoch deadline and a memory cap; a trap,
//! a timeout or an exhausted memory fails the VM, and the failure strategy decides what the
//! requests see.

use rustc_hash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use wasmtime::{InstancePre, Store, Trap, TypedFunc, WasmParams, WasmResults};

use crate::callout::{
    CalloutDone, CalloutFailure, CalloutResponse, Deliver, Embedder, GrpcDone, GrpcResponse,
};
use crate::deadline::{Overtime, deadline_ticks};
use crate::module::PluginModule;
use crate::shared::Shared;
use crate::state::{CallResponse, Context, Effect, HostState, MemoryCap, PluginInfo};
use crate::stream::Stream;

/// Why a VM stopped working.
#[derive(Clone, Debug, thiserror::Error)]
pub enum VmFailure {
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin ran past its {0:?} deadline")]
    Deadline(Duration),
    #[error("plugin exceeded its memory limit of {0} bytes")]
    Memory(usize),
    #[error("plugin could not start: {0}")]
    Start(String),
    #[error("{0} returned false")]
    Rejected(&'static str),
}

/// Limits of one VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmLimits {
    pub memory: usize,
    pub call_deadline: Duration,
}

impl Default for VmLimits {
    fn default() -> Self {
        VmLimits {
            memory: 64 << 20,
            call_deadline: Duration::from_millis(100),
        }
    }
}

type Args5 = (i32, i32, i32, i32, i32);
/// A callback, shared so that calling it needs no clone of the TypedFunc (which costs more
/// than the call).
type Cb<P, R> = Option<Rc<TypedFunc<P, R>>>;

/// The callbacks a module exports (all optional, as the spec says).
#[derive(Default)]
struct Callbacks {
    context_create: Cb<(i32, i32), ()>,
    vm_start: Cb<(i32, i32), i32>,
    configure: Cb<(i32, i32), i32>,
    request_headers: Cb<(i32, i32, i32), i32>,
    request_body: Cb<(i32, i32, i32), i32>,
    request_trailers: Cb<(i32, i32), i32>,
    response_headers: Cb<(i32, i32, i32), i32>,
    response_body: Cb<(i32, i32, i32), i32>,
    response_trailers: Cb<(i32, i32), i32>,
    done: Cb<i32, i32>,
    log: Cb<i32, ()>,
    delete: Cb<i32, ()>,
    tick: Cb<i32, ()>,
    queue_ready: Cb<(i32, i32), ()>,
    http_call_response: Cb<Args5, ()>,
    grpc_initial_metadata: Cb<(i32, i32, i32), ()>,
    grpc_receive: Cb<(i32, i32, i32), ()>,
    grpc_trailing_metadata: Cb<(i32, i32, i32), ()>,
    grpc_close: Cb<(i32, i32, i32), ()>,
}

pub struct Vm {
    store: Store<HostState>,
    cb: Callbacks,
    next_context: u32,
    started: bool,
    limits: VmLimits,
    /// Why the VM failed, and when: a failure sticks.
    failure: Option<(VmFailure, Instant)>,
    /// Per root context, a generation number that stops a superseded tick loop.
    ticks: HashMap<u32, Rc<Cell<u64>>>,
    this: Weak<VmCell>,
}

/// A VM shared by the streams and timers of one worker.
pub struct VmCell {
    vm: RefCell<Vm>,
    embedder: Rc<dyn Embedder>,
}

/// Where a VM gets its settings.
pub struct VmSetup<'a> {
    pub module: &'a Arc<PluginModule>,
    pub pre: &'a InstancePre<HostState>,
    pub vm_id: String,
    pub vm_config: Bytes,
    pub env: Vec<(String, String)>,
    pub limits: VmLimits,
    pub shared: Arc<Shared>,
    pub embedder: Rc<dyn Embedder>,
    pub label: String,
}

impl VmCell {
    /// Instantiates the module and runs its start-up (`_initialize`, then `main` if any).
    pub fn new(setup: VmSetup<'_>) -> Result<Rc<VmCell>, VmFailure> {
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let state = HostState {
            limits: MemoryCap {
                max: setup.limits.memory,
                denied: false,
                tables: wasmtime::StoreLimitsBuilder::new()
                    .table_elements(100_000)
                    .build(),
            },
            memory: None,
            alloc: None,
            scratch: Vec::new(),
            vm_id: setup.vm_id,

            vm_config: setup.vm_config,
            env: setup.env,
            shared: setup.shared,
            embedder: setup.embedder.clone(),
            contexts: FxHashMap::default(),
            current: 0,
            effective: 0,
            config_buffer: None,
            call_response: None,
            grpc_message: None,
            status: (0, Bytes::new()),
            effects: Vec::new(),
            metrics: HashMap::new(),
            queue_notify: queue_tx,
            next_token: 0,
            callouts: HashMap::new(),
            plugin_label: setup.label,
            last_error: None,
            host_calls: 0,
            overtime: None,
        };
        let mut store = Store::new(crate::module::engine(), state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(deadline_ticks(setup.limits.call_deadline));
        let deadline = setup.limits.call_deadline;
        store.epoch_deadline_callback(move |mut store| {
            Ok(Overtime::check(&mut store.data_mut().overtime, deadline))
        });
        let start = |e: wasmtime::Error| VmFailure::Start(format!("{e:#}"));
        let instance = {
            // Instantiation runs the module's start code: under the deadline.
            let _running = crate::module::epoch::CallGuard::enter();
            setup.pre.instantiate(&mut store).map_err(start)?
        };
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "malloc")
            .or_else(|_| {
                instance.get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            })
            .ok();
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;

        macro_rules! cb {
            ($name:literal) => {
                match instance.get_export(&mut store, $name) {
                    None => None,
                    Some(_) => Some(Rc::new(
                        instance.get_typed_func(&mut store, $name).map_err(|e| {
                            VmFailure::Start(format!(
                                "export {} has the wrong signature: {e}",
                                $name
                            ))
                        })?,
                    )),
                }
            };
        }
        let cb = Callbacks {
            context_create: cb!("proxy_on_context_create"),
            vm_start: cb!("proxy_on_vm_start"),
            configure: cb!("proxy_on_configure"),
            request_headers: cb!("proxy_on_request_headers"),
            request_body: cb!("proxy_on_request_body"),
            request_trailers: cb!("proxy_on_request_trailers"),
            response_headers: cb!("proxy_on_response_headers"),
            response_body: cb!("proxy_on_response_body"),
            response_trailers: cb!("proxy_on_response_trailers"),
            done: cb!("proxy_on_done"),
            log: cb!("proxy_on_log"),
            delete: cb!("proxy_on_delete"),
            tick: cb!("proxy_on_tick"),
            queue_ready: cb!("proxy_on_queue_ready"),
            http_call_response: cb!("proxy_on_http_call_response"),
            grpc_initial_metadata: cb!("proxy_on_grpc_receive_initial_metadata"),
            grpc_receive: cb!("proxy_on_grpc_receive"),
            grpc_trailing_metadata: cb!("proxy_on_grpc_receive_trailing_metadata"),
            grpc_close: cb!("proxy_on_grpc_close"),
        };
        let initialize: Cb<(), ()> = cb!("_initialize");
        let main: Cb<(i32, i32), i32> = cb!("main");
        let start_fn: Cb<(), ()> = cb!("_start");
        let vm = Vm {
            store,
            cb,
            next_context: 0,
            started: false,
            limits: setup.limits,
            failure: None,
            ticks: HashMap::new(),
            this: Weak::new(),
        };
        let cell = Rc::new_cyclic(|this| {
            let mut vm = vm;
            vm.this = this.clone();
            VmCell {
                vm: RefCell::new(vm),
                embedder: setup.embedder,
            }
        });
        {
            let mut vm = cell.vm.borrow_mut();
            match (initialize, start_fn) {
                (Some(init), _) => {
                    vm.call(&init, (), 0)?;
                    if let Some(main) = main {
                        vm.call(&main, (0, 0), 0)?;
                    }
                }
                (None, Some(start)) => vm.call(&start, (), 0)?,
                (None, None) => {}
            }
        }
        cell.clone().watch_queues(queue_rx);
        Ok(cell)
    }

    /// Runs `f` on the VM. A callback arriving while the VM is busy (which the host never
    /// causes) is deferred rather than nested.
    pub fn with<T>(&self, f: impl FnOnce(&mut Vm) -> T) -> T {
        let mut vm = self.vm.borrow_mut();
        let out = f(&mut vm);
        let effects = std::mem::take(&mut vm.store.data_mut().effects);
        drop(vm);
        self.apply(effects);
        out
    }

    /// Carries out what host calls asked for, now that the guest call has returned.
    fn apply(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::HttpCall { token, request } => {
                    let done = CalloutDone {
                        vm: self.weak() as Weak<dyn Deliver>,
                        token,
                    };
                    self.embedder.http_call(request, done);
                }
                Effect::GrpcCall { token, request } => {
                    let done = GrpcDone {
                        vm: self.weak() as Weak<dyn Deliver>,
                        token,
                    };
                    self.embedder.grpc_call(request, done);
                }
                Effect::Tick { root, period } => self.schedule_ticks(root, period),
            }
        }
    }

    fn weak(&self) -> Weak<VmCell> {
        self.vm.borrow().this.clone()
    }

    fn schedule_ticks(&self, root: u32, period: Option<Duration>) {
        let generation = {
            let mut vm = self.vm.borrow_mut();
            let g = vm
                .ticks
                .entry(root)
                .or_insert_with(|| Rc::new(Cell::new(0)))
                .clone();
            g.set(g.get() + 1);
            g
        };
        let Some(period) = period else { return };
        let mine = generation.get();
        let weak = self.weak();
        self.embedder_spawn(Box::pin(async move {
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if generation.get() != mine {
                    return;
                }
                let Some(vm) = weak.upgrade() else { return };
                if vm.with(|vm| vm.tick(root)).is_err() {
                    return;
                }
            }
        }));
    }

    fn watch_queues(self: Rc<Self>, mut rx: mpsc::UnboundedReceiver<(u32, u32)>) {
        let weak = Rc::downgrade(&self);
        self.embedder_spawn(Box::pin(async move {
            while let Some((root, queue)) = rx.recv().await {
                let Some(vm) = weak.upgrade() else { return };
                let _ = vm.with(|vm| vm.queue_ready(root, queue));
            }
        }));
    }

    fn embedder_spawn(&self, fut: Pin<Box<dyn std::future::Future<Output = ()>>>) {
        crate::spawn_local(fut);
    }

    pub fn failure(&self) -> Option<VmFailure> {
        self.vm.borrow().failure.as_ref().map(|(f, _)| f.clone())
    }

    /// When the VM failed, if it did.
    pub fn failed_at(&self) -> Option<Instant> {
        self.vm.borrow().failure.as_ref().map(|(_, at)| *at)
    }

    /// Bytes of linear memory the VM holds.
    pub fn memory_bytes(&self) -> usize {
        let vm = self.vm.borrow();
        vm.store.data().memory.map_or(0, |m| m.data_size(&vm.store))
    }

    /// Host calls made so far (for benchmarks).
    pub fn host_calls(&self) -> u64 {
        self.vm.borrow().store.data().host_calls
    }
}

impl Vm {
    /// Calls the guest with the deadline set, as context `context`. A failure sticks.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        f: &TypedFunc<P, R>,
        args: P,
        context: u32,
    ) -> Result<R, VmFailure> {
        if let Some((f, _)) = &self.failure {
            return Err(f.clone());
        }
        let state = self.store.data_mut();
        state.current = context;
        state.effective = context;
        state.overtime = None;
        self.store
            .set_epoch_deadline(deadline_ticks(self.limits.call_deadline));
        let running = crate::module::epoch::CallGuard::enter();
        let result = f.call(&mut self.store, args);
        drop(running);
        let state = self.store.data_mut();
        state.current = 0;
        state.effective = 0;
        result.map_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: wasmtime::Error) -> VmFailure {
        let failure = if self.store.data().limits.denied {
            VmFailure::Memory(self.limits.memory)
        } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            VmFailure::Deadline(self.limits.call_deadline)
        } else {
            // The SDKs log a panic's message before trapping: it says more than the trap.
            let what = match e.downcast_ref::<Trap>() {
                Some(trap) => trap.to_string(),
                None => format!("{e:#}")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            };
            match self.store.data_mut().last_error.take() {
                Some(log) => VmFailure::Trap(format!("{what} ({log})")),
                None => VmFailure::Trap(what),
            }
        };
        tracing::warn!(plugin = %self.store.data().plugin_label, error = %failure, "plugin VM failed");
        // Streams waiting on this VM must not wait forever.
        for ctx in self.store.data().contexts.values() {
            if let Context::Http { stream, .. } = ctx {
                stream.failed.set(true);
                stream.wake();
            }
        }
        self.failure = Some((failure.clone(), Instant::now()));
        failure
    }

    fn new_context(&mut self) -> u32 {
        self.next_context += 1;
        self.next_context
    }

    /// Creates a root context for a plugin: `on_context_create`, `on_vm_start`, `on_configure`.
    pub fn create_root(&mut self, plugin: PluginInfo) -> Result<u32, VmFailure> {
        let id = self.new_context();
        let configuration = plugin.configuration.clone();
        self.store
            .data_mut()
            .contexts
            .insert(id, Context::Root(Rc::new(plugin)));
        if let Some(f) = self.cb.context_create.clone() {
            self.call(&f, (id as i32, 0), id)?;
        }
        if let Some(f) = self.cb.vm_start.clone() {
            let vm_config = self.store.data().vm_config.clone();
            self.store.data_mut().config_buffer =
                Some((crate::abi::buffer::VM_CONFIGURATION, vm_config.clone()));
            let ok = self.call(&f, (id as i32, vm_config.len() as i32), id);
            self.store.data_mut().config_buffer = None;
            if ok? == 0 {
                return Err(VmFailure::Rejected("proxy_on_vm_start"));
            }
        }
        self.started = true;
        if let Some(f) = self.cb.configure.clone() {
            self.store.data_mut().config_buffer = Some((
                crate::abi::buffer::PLUGIN_CONFIGURATION,
                configuration.clone(),
            ));
            let ok = self.call(&f, (id as i32, configuration.len() as i32), id);
            self.store.data_mut().config_buffer = None;
            if ok? == 0 {
                return Err(VmFailure::Rejected("proxy_on_configure"));
            }
        }
        Ok(id)
    }

    /// Creates a stream context under `root` for one HTTP stream.
    pub fn create_stream(&mut self, root: u32, stream: Rc<Stream>) -> Result<u32, VmFailure> {
        let id = self.new_context();
        self.store
            .data_mut()
            .contexts
            .insert(id, Context::Http { root, stream });
        if let Some(f) = self.cb.context_create.clone() {
            self.call(&f, (id as i32, root as i32), id)?;
        }
        Ok(id)
    }

    pub fn request_headers(
        &mut self,
        ctx: u32,
        headers: usize,
        end: bool,
    ) -> Result<i32, VmFailure> {
        match self.cb.request_headers.clone() {
            Some(f) => self.call(&f, (ctx as i32, headers as i32, end as i32), ctx),
            None => Ok(0),
        }
    }

    /// Whether the module can see (and so change) request bodies.
    pub fn reads_request_body(&self) -> bool {
        self.cb.request_body.is_some()
    }

    pub fn request_body(&mut self, ctx: u32, size: usize, end: bool) -> Result<i32, VmFailure> {
        match self.cb.request_body.clone() {
            Some(f) => self.call(&f, (ctx as i32, size as i32, end as i32), ctx),
            None => Ok(0),
        }
    }

    pub fn request_trailers(&mut self, ctx: u32, count: usize) -> Result<i32, VmFailure> {
        match self.cb.request_trailers.clone() {
            Some(f) => self.call(&f, (ctx as i32, count as i32), ctx),
            None => Ok(0),
        }
    }

    pub fn response_headers(
        &mut self,
        ctx: u32,
        headers: usize,
        end: bool,
    ) -> Result<i32, VmFailure> {
        match self.cb.response_headers.clone() {
            Some(f) => self.call(&f, (ctx as i32, headers as i32, end as i32), ctx),
            None => Ok(0),
        }
    }

    pub fn response_body(&mut self, ctx: u32, size: usize, end: bool) -> Result<i32, VmFailure> {
        match self.cb.response_body.clone() {
            Some(f) => self.call(&f, (ctx as i32, size as i32, end as i32), ctx),
            None => Ok(0),
        }
    }

    pub fn response_trailers(&mut self, ctx: u32, count: usize) -> Result<i32, VmFailure> {
        match self.cb.response_trailers.clone() {
            Some(f) => self.call(&f, (ctx as i32, count as i32), ctx),
            None => Ok(0),
        }
    }

    /// Ends a stream context: `on_done`, `on_log`, `on_delete`.
    pub fn finish_stream(&mut self, ctx: u32) {
        if self.failure.is_none() {
            if let Some(f) = self.cb.done.clone() {
                let _ = self.call(&f, ctx as i32, ctx);
            }
            if let Some(f) = self.cb.log.clone() {
                let _ = self.call(&f, ctx as i32, ctx);
            }
            if let Some(f) = self.cb.delete.clone() {
                let _ = self.call(&f, ctx as i32, ctx);
            }
        }
        self.store.data_mut().contexts.remove(&ctx);
    }

    fn tick(&mut self, root: u32) -> Result<(), VmFailure> {
        match self.cb.tick.clone() {
            Some(f) => self.call(&f, root as i32, root),
            None => Ok(()),
        }
    }

    fn queue_ready(&mut self, root: u32, queue: u32) -> Result<(), VmFailure> {
        match self.cb.queue_ready.clone() {
            Some(f) => self.call(&f, (root as i32, queue as i32), root),
            None => Ok(()),
        }
    }

    fn http_call_response(
        &mut self,
        token: u32,
        result: Result<CalloutResponse, CalloutFailure>,
    ) -> Result<(), VmFailure> {
        let Some(root) = self.store.data_mut().callouts.remove(&token) else {
            return Ok(());
        };
        let Some(f) = self.cb.http_call_response.clone() else {
            return Ok(());
        };
        let (headers, body, trailers) = match &result {
            Ok(r) => (r.headers.len(), r.body.len(), r.trailers.len()),
            Err(_) => (0, 0, 0),
        };
        let state = self.store.data_mut();
        match result {
            Ok(r) => {
                state.status = (0, Bytes::new());
                state.call_response = Some(CallResponse {
                    headers: r.headers,
                    body: r.body,
                    trailers: r.trailers,
                });
            }
            Err(failure) => {
                // Envoy reports a failed call with no headers and BROKEN_CONNECTION as its
                // status. Unlike Envoy, the empty response stays readable (NOT_FOUND for a
                // header) so SDK filters that look for `:status` do not panic.
                let msg = match failure {
                    CalloutFailure::Timeout => "timeout".to_owned(),
                    CalloutFailure::ConnectionFailure(m) => m,
                };
                state.status = (11, Bytes::from(msg));
                state.call_response = Some(CallResponse::default());
            }
        }
        let out = self.call(
            &f,
            (
                root as i32,
                token as i32,
                headers as i32,
                body as i32,
                trailers as i32,
            ),
            root,
        );
        self.store.data_mut().call_response = None;
        out
    }

    fn grpc_response(&mut self, token: u32, r: GrpcResponse) -> Result<(), VmFailure> {
        let Some(root) = self.store.data_mut().callouts.remove(&token) else {
            return Ok(());
        };
        let (t, root_i) = (token as i32, root as i32);
        if let Some(f) = self.cb.grpc_initial_metadata.clone()
            && !r.initial_metadata.is_empty()
        {
            let n = r.initial_metadata.len();
            self.store.data_mut().call_response = Some(CallResponse {
                headers: r.initial_metadata.clone(),
                ..Default::default()
            });
            self.call(&f, (root_i, t, n as i32), root)?;
        }
        if let (Some(f), Some(msg)) = (self.cb.grpc_receive.clone(), r.message.clone()) {
            let n = msg.len();
            self.store.data_mut().grpc_message = Some(msg);
            self.call(&f, (root_i, t, n as i32), root)?;
            self.store.data_mut().grpc_message = None;
        }
        if let Some(f) = self.cb.grpc_trailing_metadata.clone()
            && !r.trailing_metadata.is_empty()
        {
            let n = r.trailing_metadata.len();
            self.store.data_mut().call_response = Some(CallResponse {
                trailers: r.trailing_metadata.clone(),
                ..Default::default()
            });
            self.call(&f, (root_i, t, n as i32), root)?;
        }
        self.store.data_mut().call_response = None;
        self.store.data_mut().status = (r.status, Bytes::from(r.status_message));
        if let Some(f) = self.cb.grpc_close.clone() {
            self.call(&f, (root_i, t, r.status as i32), root)?;
        }
        Ok(())
    }

    pub fn failure(&self) -> Option<&VmFailure> {
        self.failure.as_ref().map(|(f, _)| f)
    }
}

impl Deliver for VmCell {
    fn deliver_http_response(&self, token: u32, result: Result<CalloutResponse, CalloutFailure>) {
        if self.vm.try_borrow_mut().is_err() {
            // Never nest a callback in another: deliver on the next turn.
            let weak = self.weak();
            crate::spawn_local(Box::pin(async move {
                if let Some(vm) = weak.upgrade() {
                    vm.deliver_http_response(token, result);
                }
            }));
            return;
        }
        let _ = self.with(|vm| vm.http_call_response(token, result));
    }

    fn deliver_grpc_response(&self, token: u32, response: GrpcResponse) {
        let _ = self.with(|vm| vm.grpc_response(token, response));
    }
}
