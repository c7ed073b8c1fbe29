//! Test a proxy-wasm filter against the real wasmesh host, in-process: no proxy, no sockets.
//!
//! ```no_run
//! use wasmesh_harness::{Harness, Upstream};
//!
//! let wasm = wasmesh_harness::build_filter(env!("CARGO_MANIFEST_DIR")).unwrap();
//! let mut h = Harness::builder(&wasm).plugin_config(r#"{"header": "x-hello"}"#).build().unwrap();
//! let out = h.request(http::Request::get("/").body(bytes::Bytes::new()).unwrap(), Upstream::ok("hi"));
//! assert_eq!(out.upstream_request.unwrap().headers()["x-hello"], "world");
//! ```
//!
//! A request goes through the filter's request callbacks; unless the filter answers itself,
//! the `Upstream` given plays the server, and its response goes through the response
//! callbacks. Callouts (`dispatch_http_call`) are answered by the closure given to
//! [`HarnessBuilder::on_callout`] and recorded for assertions; metrics and shared data are the
//! host's own.

mod build;

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmesh_host::{
    CalloutDone, Chain, Embedder, GrpcDone, GrpcRequest, Host, PluginSpec, StreamDriver,
    StreamInfo, Verdict, VmLimits, WorkerVms,
};
pub use wasmesh_host::{
    CalloutFailure, CalloutRequest, CalloutResponse, Decisions, FailStrategy, LocalResponse,
    VmFailure,
};

pub use build::build_filter;

/// Answers callouts in a test.
type CalloutFn = dyn Fn(&CalloutRequest) -> Result<CalloutResponse, CalloutFailure>;

/// Why a filter could not be loaded or started.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Sets up a harness: one or more plugins forming a chain.
pub struct HarnessBuilder {
    plugins: Vec<PluginSettings>,
    on_callout: Option<Rc<CalloutFn>>,
    clusters: Vec<String>,
}

struct PluginSettings {
    wasm: Vec<u8>,
    name: String,
    root_id: String,
    vm_id: String,
    config: Bytes,
    vm_config: Bytes,
    env: Vec<(String, String)>,
    fail: FailStrategy,
    limits: VmLimits,
}

impl HarnessBuilder {
    /// Sets the plugin configuration (what `get_plugin_configuration` returns) of the last plugin.
    pub fn plugin_config(mut self, config: impl Into<Bytes>) -> Self {
        self.last().config = config.into();
        self
    }

    pub fn vm_config(mut self, config: impl Into<Bytes>) -> Self {
        self.last().vm_config = config.into();
        self
    }

    pub fn root_id(mut self, id: &str) -> Self {
        self.last().root_id = id.to_owned();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.last().env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn fail_strategy(mut self, s: FailStrategy) -> Self {
        self.last().fail = s;
        self
    }

    pub fn limits(mut self, limits: VmLimits) -> Self {
        self.last().limits = limits;
        self
    }

    /// Adds another plugin after the previous ones.
    pub fn then(mut self, wasm: &[u8]) -> Self {
        let n = self.plugins.len();
        self.plugins
            .push(PluginSettings::new(wasm, &format!("plugin-{n}")));
        self
    }

    /// Clusters callouts may target, answered by `on_callout`.
    pub fn cluster(mut self, name: &str) -> Self {
        self.clusters.push(name.to_owned());
        self
    }

    pub fn on_callout(
        mut self,
        f: impl Fn(&CalloutRequest) -> Result<CalloutResponse, CalloutFailure> + 'static,
    ) -> Self {
        self.on_callout = Some(Rc::new(f));
        self
    }

    fn last(&mut self) -> &mut PluginSettings {
        self.plugins.last_mut().expect("a plugin")
    }

    pub fn build(self) -> Result<Harness, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error(e.to_string()))?;
        let local = tokio::task::LocalSet::new();
        let host = Host::new(None);
        let mut specs = Vec::new();
        for p in self.plugins {
            let module = host
                .cache
                .load(&p.wasm, None)
                .map_err(|e| Error(format!("{}: {e}", p.name)))?;
            specs.push(Arc::new(PluginSpec {
                name: p.name,
                root_id: p.root_id,
                vm_id: p.vm_id,
                configuration: p.config,
                vm_configuration: p.vm_config,
                env: p.env,
                fail_strategy: p.fail,
                limits: p.limits,
                reload_backoff: Duration::from_millis(10),
                module,
                scope: None,
            }));
        }
        let callouts = Rc::new(RefCell::new(Vec::new()));
        let embedder = Rc::new(TestEmbedder {
            on_callout: self.on_callout,
            clusters: self.clusters,
            callouts: callouts.clone(),
        });
        let chain = local.block_on(&runtime, async {
            let mut vms =
                WorkerVms::new(host.clone(), embedder).map_err(|e| Error(e.to_string()))?;
            vms.chain(&specs)
                .map_err(|(name, e)| Error(format!("{name}: {e}")))
        })?;
        Ok(Harness {
            runtime,
            local,
            host,
            chain,
            callouts,
        })
    }
}

impl PluginSettings {
    fn new(wasm: &[u8], name: &str) -> PluginSettings {
        PluginSettings {
            wasm: wasm.to_vec(),
            name: name.to_owned(),
            root_id: String::new(),
            vm_id: String::new(),
            config: Bytes::new(),
            vm_config: Bytes::new(),
            env: Vec::new(),
            fail: FailStrategy::FailClose,
            limits: VmLimits::default(),
        }
    }
}

struct TestEmbedder {
    on_callout: Option<Rc<CalloutFn>>,
    clusters: Vec<String>,
    callouts: Rc<RefCell<Vec<CalloutRequest>>>,
}

impl Embedder for TestEmbedder {
    fn cluster_exists(&self, cluster: &str) -> bool {
        self.clusters.iter().any(|c| c == cluster)
    }

    fn http_call(&self, request: CalloutRequest, done: CalloutDone) {
        self.callouts.borrow_mut().push(request.clone());
        let answer = self.on_callout.clone();
        tokio::task::spawn_local(async move {
            let result = match answer {
                Some(f) => f(&request),
                None => Err(CalloutFailure::ConnectionFailure(
                    "no callout handler in the harness".into(),
                )),
            };
            done.complete(result);
        });
    }

    fn grpc_call(&self, _request: GrpcRequest, done: GrpcDone) {
        tokio::task::spawn_local(async move {
            done.complete(wasmesh_host::GrpcResponse {
                status: 12,
                status_message: "not in the harness".into(),
                ..Default::default()
            });
        });
    }
}

/// What the test's upstream answers.
pub struct Upstream {
    pub response: http::Response<Bytes>,
    pub trailers: Option<http::HeaderMap>,
}

impl Upstream {
    pub fn ok(body: impl Into<Bytes>) -> Upstream {
        Upstream {
            response: http::Response::new(body.into()),
            trailers: None,
        }
    }

    pub fn response(response: http::Response<Bytes>) -> Upstream {
        Upstream {
            response,
            trailers: None,
        }
    }
}

/// What came out of one request.
#[derive(Debug)]
pub struct Outcome {
    /// The request as it would go upstream (after the request callbacks), if it went.
    pub upstream_request: Option<http::Request<Bytes>>,
    /// The response the client gets (from upstream or a local reply, after the response callbacks).
    pub response: Option<http::Response<Bytes>>,
    /// The response trailers the client gets, after the response callbacks.
    pub trailers: Option<http::HeaderMap>,
    /// A local reply a filter sent, as the filter sent it.
    pub local_reply: Option<LocalResponse>,
    /// Set when a plugin failed and its failure strategy closed the request.
    pub failure: Option<String>,
    /// What wasmesh's host extensions recorded (upstream cluster, mirrors, delays, ...).
    pub decisions: Decisions,
    pub reset: bool,
}

/// A chain of filters on the real host.
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
    host: Arc<Host>,
    chain: Rc<Chain>,
    callouts: Rc<RefCell<Vec<CalloutRequest>>>,
}

impl Harness {
    /// A harness for one filter, given its compiled Wasm.
    pub fn builder(wasm: &[u8]) -> HarnessBuilder {
        HarnessBuilder {
            plugins: vec![PluginSettings::new(wasm, "plugin-0")],
            on_callout: None,
            clusters: Vec::new(),
        }
    }

    /// A harness for a filter file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<HarnessBuilder, Error> {
        let wasm = std::fs::read(path.as_ref())
            .map_err(|e| Error(format!("{}: {e}", path.as_ref().display())))?;
        Ok(Harness::builder(&wasm))
    }

    /// Sends a request through the chain; `upstream` answers unless a filter does.
    pub fn request(&mut self, request: http::Request<Bytes>, upstream: Upstream) -> Outcome {
        let chain = self.chain.clone();
        self.local
            .block_on(&self.runtime, run(chain, request, upstream))
    }

    /// Callouts made so far.
    pub fn callouts(&self) -> Vec<CalloutRequest> {
        self.callouts.borrow().clone()
    }

    /// Value of a metric the filter defined.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.host
            .shared
            .metrics
            .all()
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A value in shared data (`vm_id` is empty unless set).
    pub fn shared_data(&self, key: &str) -> Option<Bytes> {
        self.host.shared.get_data("", key).map(|(v, _)| v)
    }

    /// Lets timers (`on_tick`) and pending callouts run for `d`.
    pub fn advance(&mut self, d: Duration) {
        self.local
            .block_on(&self.runtime, async move { tokio::time::sleep(d).await });
    }

    /// Host calls the plugin made so far.
    pub fn host_calls(&self) -> u64 {
        self.chain.vm(0).map_or(0, |vm| vm.host_calls())
    }

    /// The plugin VM's failure, if it failed.
    pub fn vm_failure(&self, index: usize) -> Option<VmFailure> {
        self.chain.vm(index).and_then(|vm| vm.failure())
    }
}

async fn run(chain: Rc<Chain>, request: http::Request<Bytes>, upstream: Upstream) -> Outcome {
    let driver = StreamDriver::new(
        &chain,
        StreamInfo {
            source: Some(([127, 0, 0, 1], 50000).into()),
            destination: Some(([127, 0, 0, 1], 8080).into()),
            protocol: "HTTP/1.1",
            start_time: Some(std::time::SystemTime::now()),
            ..Default::default()
        },
    );
    let mut out = Outcome {
        upstream_request: None,
        response: None,
        trailers: None,
        local_reply: None,
        failure: None,
        decisions: Decisions::default(),
        reset: false,
    };
    let (mut parts, body) = request.into_parts();
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));

    // The request phases, as the proxy runs them: a local reply or a failure is answered
    // and goes back through the response phase; a reset ends the stream.
    let mut verdict = driver.request_headers(&mut parts, body.is_empty()).await;
    if matches!(verdict, Verdict::Continue) {
        let sent = if body.is_empty() {
            Ok(body)
        } else {
            driver.whole_body(body, None, false).await
        };
        match sent {
            Ok(body) => {
                // A body the filters read goes with its real length, as from the proxy.
                if parts.headers.contains_key(http::header::CONTENT_LENGTH) {
                    parts
                        .headers
                        .insert(http::header::CONTENT_LENGTH, body.len().into());
                }
                driver.request_sent(&parts);
                out.upstream_request = Some(http::Request::from_parts(parts, body));
            }
            Err(stopped) => verdict = stopped,
        }
    }
    let (response, mut trailers) = match answer(verdict, grpc, &mut out) {
        Answer::Upstream => (upstream.response, upstream.trailers),
        Answer::Local(response) => (response, None),
        Answer::Reset => return finish(&driver, out),
    };

    let (mut parts, body) = response.into_parts();
    let end = body.is_empty() && trailers.is_none();
    match answer(
        driver.response_headers(&mut parts, end).await,
        grpc,
        &mut out,
    ) {
        Answer::Upstream => {}
        Answer::Local(response) => {
            out.response = Some(response);
            return finish(&driver, out);
        }
        Answer::Reset => return finish(&driver, out),
    }
    let body = if end {
        Ok(body)
    } else {
        driver.whole_body(body, trailers.as_mut(), true).await
    };
    match body {
        Ok(body) => {
            out.response = Some(http::Response::from_parts(parts, body));
            out.trailers = trailers;
        }
        // The head has gone to the client: it sees the stream reset.
        Err(Verdict::Fail { plugin, reason }) => {
            out.failure = Some(format!("{plugin}: {reason}"));
            out.reset = true;
        }
        Err(_) => out.reset = true,
    }
    finish(&driver, out)
}

enum Answer {
    Upstream,
    Local(http::Response<Bytes>),
    Reset,
}

/// What the client gets after a phase ended with `verdict`.
fn answer(verdict: Verdict, grpc: bool, out: &mut Outcome) -> Answer {
    let local = match verdict {
        Verdict::Continue => return Answer::Upstream,
        Verdict::Reset => {
            out.reset = true;
            return Answer::Reset;
        }
        Verdict::Reply(reply) => {
            out.local_reply = Some(reply.clone());
            reply
        }
        Verdict::Fail { plugin, reason } => {
            out.failure = Some(format!("{plugin}: {reason}"));
            LocalResponse::plugin_failed(&plugin)
        }
    };
    match local.to_response(grpc) {
        Ok(response) => Answer::Local(response),
        Err(_) => Answer::Local(
            http::Response::builder()
                .status(500)
                .body(Bytes::new())
                .expect("a 500"),
        ),
    }
}

fn finish(driver: &StreamDriver, mut out: Outcome) -> Outcome {
    out.decisions = driver.decisions().clone();
    driver.finish(|_| {});
    out
}
