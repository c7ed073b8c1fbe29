//! Driving requests through a chain in-process, on the real host, as a proxy worker does:
//! request headers, request body, response headers, response body, then the end of the
//! stream. The criterion benchmarks in `benches/` call [`exchange`] too, so their figures and
//! the command's agree.
//!
//! Everything here runs on one thread, inside a tokio `LocalSet` (the host's timers and
//! callout replies are local tasks).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use wasmesh_host::{
    Callback, CalloutDone, CalloutRequest, CalloutResponse, Chain, Embedder, GrpcDone, GrpcRequest,
    GrpcResponse, Host, PluginSpec, Profiler, StreamDriver, StreamInfo, Verdict, VmFailure,
    WorkerVms,
};

use super::chain::ResolvedChain;
use super::profile::{RequestSpec, ResponseSpec};
use super::stats::histogram;
use wasmesh_proxy::route::RouteTable;

/// How one exchange ended.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Went to the upstream, whose response went back through the chain.
    Upstream,
    /// A filter answered with this status.
    LocalReply(u16),
    /// A plugin failed and its fail strategy closed the stream.
    Failed(String),
    Reset,
}

impl Outcome {
    /// A short label for the report (`upstream`, `local reply 403`, ...).
    pub fn label(&self) -> String {
        match self {
            Outcome::Upstream => "upstream".into(),
            Outcome::LocalReply(s) => format!("local reply {s}"),
            Outcome::Failed(p) => format!("plugin {p} failed"),
            Outcome::Reset => "reset".into(),
        }
    }
}

/// Answers every callout at once with an empty `200` (gRPC: status 0), so filters that call
/// out are measured without a network. Every cluster exists.
pub struct InstantCallouts;

impl Embedder for InstantCallouts {
    fn cluster_exists(&self, _: &str) -> bool {
        true
    }

    fn http_call(&self, _: CalloutRequest, done: CalloutDone) {
        done.complete(Ok(CalloutResponse {
            headers: vec![(Bytes::from_static(b":status"), Bytes::from_static(b"200"))],
            ..Default::default()
        }));
    }

    fn grpc_call(&self, _: GrpcRequest, done: GrpcDone) {
        done.complete(GrpcResponse::default());
    }
}

/// The VMs of one benchmark thread (one proxy worker's worth).
pub struct Worker {
    vms: WorkerVms,
}

impl Worker {
    pub fn new(host: &Arc<Host>) -> Result<Worker, String> {
        let vms = WorkerVms::new(host.clone(), Rc::new(InstantCallouts))
            .map_err(|e| format!("cannot set up the Wasm host: {e}"))?;
        Ok(Worker { vms })
    }

    /// Instantiates and configures a chain (`on_vm_start`, `on_configure`).
    pub fn chain(&mut self, specs: &[Arc<PluginSpec>]) -> Result<Rc<Chain>, (String, VmFailure)> {
        self.vms.chain(specs)
    }
}

/// A chain as a proxy listener runs it, with the listener's own routes: they say where
/// plugins scoped to routes or clusters run, and a request none of them runs on skips the
/// chain, as it takes the proxy's unfiltered path.
#[derive(Clone)]
pub struct Listener {
    pub chain: Rc<Chain>,
    routes: Option<Rc<RouteTable<Arc<str>>>>,
}

impl Listener {
    /// `chain` with the routes of the listener `resolved` came from, if any.
    pub fn new(chain: Rc<Chain>, resolved: &ResolvedChain) -> Listener {
        let routes = resolved.bootstrap.as_ref().and_then(|(bootstrap, name)| {
            let listener = bootstrap.listeners.iter().find(|l| l.name == *name)?;
            Some(Rc::new(RouteTable::with_clusters(
                &listener.virtual_hosts,
                |name: &str| Arc::from(name),
            )))
        });
        Listener { chain, routes }
    }

    /// A listener without routes of its own.
    pub fn bare(chain: Rc<Chain>) -> Listener {
        Listener {
            chain,
            routes: None,
        }
    }

    /// The listener's route for `request` (its name and cluster), when the chain's plugins
    /// are scoped and so need it.
    fn own_route(&self, request: &RequestSpec) -> Option<(Bytes, Arc<str>)> {
        if !self.chain.is_scoped() {
            return None;
        }
        let host = request.uri.authority().map(|a| a.as_str()).or_else(|| {
            request
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let route = self.routes.as_ref()?.find(host?, request.uri.path())?;
        Some((
            Bytes::copy_from_slice(route.name.as_bytes()),
            route.cluster().cloned().unwrap_or_else(|| Arc::from("")),
        ))
    }
}

/// One request and its response through the listener's chain. Pauses (callouts, timers)
/// are waited out.
pub async fn exchange(
    listener: &Listener,
    request: &RequestSpec,
    response: &ResponseSpec,
) -> Outcome {
    let own = listener.own_route(request);
    if listener.chain.is_scoped() {
        let (route, cluster) = own.as_ref().map_or((&b""[..], ""), |(r, c)| (&r[..], &**c));
        if listener.chain.skips(route, cluster) {
            return Outcome::Upstream;
        }
    }
    stream(listener, request, response, own).await.0
}

/// [`exchange`], also giving back the stream's driver: what the filters decided (its
/// `decisions`, such as the upstream cluster, and its `filter_state`, such as
/// `wasmesh.route_name`).
pub async fn exchange_stream(
    listener: &Listener,
    request: &RequestSpec,
    response: &ResponseSpec,
) -> (Outcome, Rc<StreamDriver>) {
    let own = listener.own_route(request);
    stream(listener, request, response, own).await
}

async fn stream(
    listener: &Listener,
    request: &RequestSpec,
    response: &ResponseSpec,
    own: Option<(Bytes, Arc<str>)>,
) -> (Outcome, Rc<StreamDriver>) {
    let (route_name, cluster_name) = own.unwrap_or_default();
    let driver = StreamDriver::new(
        &listener.chain,
        StreamInfo {
            protocol: "HTTP/1.1",
            listener: "bench".into(),
            request_size: request.body.len() as u64,
            route_name,
            cluster_name,
            ..StreamInfo::default()
        },
    );
    let outcome = run(&driver, request, response).await;
    driver.finish(|_| {});
    (outcome, driver)
}

/// The proxy's phases, on the host's own driver; the upstream's answer is `response`.
async fn run(driver: &StreamDriver, request: &RequestSpec, response: &ResponseSpec) -> Outcome {
    let mut head = request.parts();
    let v = driver
        .request_headers(&mut head, request.body.is_empty())
        .await;
    if let Some(o) = stopped(v) {
        return o;
    }
    if !request.body.is_empty()
        && let Err(v) = driver.whole_body(request.body.clone(), None, false).await
    {
        return stopped(v).unwrap_or(Outcome::Upstream);
    }
    driver.request_sent(&head);
    let mut head = response.parts();
    let v = driver
        .response_headers(&mut head, response.body.is_empty())
        .await;
    if let Some(o) = stopped(v) {
        return o;
    }
    if !response.body.is_empty()
        && let Err(v) = driver.whole_body(response.body.clone(), None, true).await
    {
        return stopped(v).unwrap_or(Outcome::Upstream);
    }
    Outcome::Upstream
}

fn stopped(v: Verdict) -> Option<Outcome> {
    match v {
        Verdict::Continue => None,
        Verdict::Reply(r) => Some(Outcome::LocalReply(r.status)),
        Verdict::Reset => Some(Outcome::Reset),
        Verdict::Fail { plugin, .. } => Some(Outcome::Failed(plugin)),
    }
}

/// Runs [`exchange`] to its end if it needs no wait (no callout pending, no timer): what a
/// criterion benchmark can call from a synchronous loop. `None` if it had to wait.
pub fn exchange_now(
    listener: &Listener,
    request: &RequestSpec,
    response: &ResponseSpec,
) -> Option<Outcome> {
    now(exchange(listener, request, response))
}

/// Runs a future to its end if it needs no wait; `None` if it had to wait.
pub fn now<F: Future>(fut: F) -> Option<F::Output> {
    let fut = std::pin::pin!(fut);
    match fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(o) => Some(o),
        std::task::Poll::Pending => None,
    }
}

/// Per filter and per callback costs, gathered by a chain's [`Profiler`].
pub struct Collector {
    /// This request's time and host calls per filter and callback (`runs` 0: not called).
    current: RefCell<Vec<[Sample; 8]>>,
    filters: RefCell<Vec<FilterCosts>>,
    requests: Cell<u64>,
}

#[derive(Clone, Copy, Default)]
struct Sample {
    nanos: u64,
    host_calls: u64,
    runs: u32,
}

/// What one filter cost over the requests a [`Collector`] saw.
pub struct FilterCosts {
    /// Time per request, all callbacks together.
    pub per_request: Histogram<u64>,
    pub host_calls: u64,
    pub callbacks: Vec<CallbackCosts>,
}

/// What one callback of one filter cost, over the requests it ran for.
pub struct CallbackCosts {
    pub callback: Callback,
    /// Time per request it ran for (the sum of its runs in that request).
    pub per_request: Histogram<u64>,
    /// Requests it ran for.
    pub requests: u64,
    pub host_calls: u64,
}

impl Collector {
    pub fn new(filters: usize) -> Rc<Collector> {
        Rc::new(Collector {
            current: RefCell::new(vec![[Sample::default(); 8]; filters]),
            filters: RefCell::new(
                (0..filters)
                    .map(|_| FilterCosts {
                        per_request: histogram(),
                        host_calls: 0,
                        callbacks: Callback::ALL
                            .iter()
                            .map(|&callback| CallbackCosts {
                                callback,
                                per_request: histogram(),
                                requests: 0,
                                host_calls: 0,
                            })
                            .collect(),
                    })
                    .collect(),
            ),
            requests: Cell::new(0),
        })
    }

    /// Closes the request under way: its samples go to the histograms.
    pub fn end_request(&self) {
        self.requests.set(self.requests.get() + 1);
        let mut current = self.current.borrow_mut();
        let mut filters = self.filters.borrow_mut();
        for (samples, costs) in current.iter_mut().zip(filters.iter_mut()) {
            let mut total = 0;
            for (sample, cb) in samples.iter().zip(costs.callbacks.iter_mut()) {
                if sample.runs == 0 {
                    continue;
                }
                total += sample.nanos;
                cb.per_request.saturating_record(sample.nanos.max(1));
                cb.requests += 1;
                cb.host_calls += sample.host_calls;
                costs.host_calls += sample.host_calls;
            }
            costs.per_request.saturating_record(total.max(1));
            *samples = [Sample::default(); 8];
        }
    }

    /// Requests seen.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// The costs gathered, per filter in chain order.
    pub fn take(&self) -> Vec<FilterCosts> {
        std::mem::take(&mut *self.filters.borrow_mut())
    }
}

impl Profiler for Collector {
    fn record(&self, filter: usize, callback: Callback, elapsed: Duration, host_calls: u64) {
        let mut current = self.current.borrow_mut();
        if let Some(samples) = current.get_mut(filter) {
            let s = &mut samples[callback.index()];
            s.nanos += elapsed.as_nanos() as u64;
            s.host_calls += host_calls;
            s.runs += 1;
        }
    }
}
