//! What the Wasm host costs (criterion): a request through chains of 0, 1, 4 and 8 no-op
//! filters, single host calls, and making a VM instance.
//!
//! ```sh
//! cargo bench -p wasmesh-benches --bench host
//! ```

use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wasmesh_artifacts::{HOSTCALLS, NOOP, bytes};
use wasmesh_cli::bench::driver::now;
use wasmesh_host::{
    Chain, FailStrategy, Host, NoCallouts, PluginModule, PluginSpec, StreamDriver, StreamInfo,
    Verdict, VmLimits, WorkerVms,
};

fn spec(module: &Arc<PluginModule>, name: &str, config: &str) -> Arc<PluginSpec> {
    Arc::new(PluginSpec {
        name: name.to_owned(),
        root_id: String::new(),
        vm_id: name.to_owned(),
        configuration: Bytes::from(config.to_owned()),
        vm_configuration: Bytes::new(),
        env: Vec::new(),
        fail_strategy: FailStrategy::FailClose,
        limits: VmLimits::default(),
        reload_backoff: Duration::from_secs(1),
        module: module.clone(),
        scope: None,
    })
}

/// One request and response through the chain, on the host's stream driver as the proxy
/// runs it: headers both ways, a response body, on_log. No filter here waits.
fn exchange(chain: &Rc<Chain>, request: &http::request::Parts) {
    let driver = StreamDriver::new(chain, StreamInfo::default());
    let mut head = clone_parts(request);
    let verdict = now(driver.request_headers(&mut head, true)).expect("no filter here waits");
    assert!(matches!(verdict, Verdict::Continue));
    driver.request_sent(&head);
    let (mut response, ()) = http::Response::new(()).into_parts();
    response
        .headers
        .insert("content-type", "text/plain".parse().unwrap());
    let verdict = now(driver.response_headers(&mut response, false)).expect("no filter here waits");
    assert!(matches!(verdict, Verdict::Continue));
    black_box(driver.body(Bytes::from_static(b"hello world\n"), true, true));
    driver.finish(|_| {});
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let (mut c, ()) = http::Request::new(()).into_parts();
    c.method = p.method.clone();
    c.uri = p.uri.clone();
    c.headers = p.headers.clone();
    c
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let host = Host::new(None);
        let noop = host.cache.load(&bytes(NOOP), None).unwrap();
        let calls = host.cache.load(&bytes(HOSTCALLS), None).unwrap();
        let mut vms = WorkerVms::new(host.clone(), Rc::new(NoCallouts)).unwrap();
        let (request, ()) = http::Request::get("/productpage?u=1")
            .header("host", "bookinfo")
            .header("user-agent", "bench")
            .header("x-a", "1")
            .body(())
            .unwrap()
            .into_parts();

        let mut group = c.benchmark_group("chain_of_noop_filters");
        for n in [0usize, 1, 4, 8] {
            let specs: Vec<_> = (0..n)
                .map(|i| spec(&noop, &format!("noop-{i}"), ""))
                .collect();
            let chain = vms.chain(&specs).unwrap();
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| exchange(&chain, &request))
            });
        }
        group.finish();

        // 1000 calls per request: the request's own cost is lost in the noise, and the
        // throughput criterion reports is calls per second.
        let mut group = c.benchmark_group("host_call");
        group.throughput(Throughput::Elements(1000));
        for kind in ["time", "get-header", "set-header", "property"] {
            let chain = vms
                .chain(&[spec(&calls, kind, &format!("{kind} 1000"))])
                .unwrap();
            group.bench_function(kind, |b| b.iter(|| exchange(&chain, &request)));
        }
        group.finish();

        c.bench_function("vm_instance", |b| {
            let specs = [spec(&noop, "fresh", "")];
            b.iter(|| black_box(vms.chain(&specs).unwrap()))
        });
    });
}

criterion_group! {
    name = host;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(host);
