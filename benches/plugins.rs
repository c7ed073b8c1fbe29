//! What the four traffic plugins (router, fault, mirror, circuit-breaker) cost per request
//! (criterion), with the machinery of `wasmesh bench` (`wasmesh_cli::bench`): the same
//! loading, the same worker VMs and the same in-process exchange (request headers, response
//! headers, the end of the stream), with callouts answered at once.
//!
//! The plugins are configured from realistic Istio manifests (`benches/manifests/`: a
//! VirtualService with ten http routes over three subsets, a DestinationRule with a connection
//! pool and outlier detection) translated by wasmesh-controlplane, as the control plane does.
//! One request (`benches/manifests/requests.jsonl`) matches the 6th route (`checkout`: prefix
//! and header match, a 90/10 split, a fault delay of 0%, retries and a timeout), the other
//! falls through every match, two header regexes among them, to the default route (a 80/15/5
//! split, a mirror at 5%). Each is measured through no filters too.
//!
//! ```sh
//! cargo bench -p wasmesh-benches --bench plugins
//! ```
//!
//! The target: the four plugins cost at most 5 µs per request on top of no filters.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use wasmesh_benches::peers;
use wasmesh_cli::bench::driver::{Listener, Outcome, Worker, exchange_now, exchange_stream, now};
use wasmesh_cli::bench::profile::read_requests;
use wasmesh_cli::bench::{RequestSpec, ResponseSpec, chain, load};
use wasmesh_host::Host;

/// The requests `wasmesh bench --requests` reads too: the 6th route's, then the default's.
const REQUESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/requests.jsonl");
const HOST: &str = "catalog.shop.svc.cluster.local";

/// The plugins' chain: the manifests translated with the modules built from `plugins/`.
fn translated() -> chain::ResolvedChain {
    let options = peers::catalog_options();
    let t = peers::translation(peers::CATALOG, &options).expect("the manifests translate cleanly");
    chain::from_bootstrap(
        t.bootstrap,
        "benches/manifests",
        Some(&options.listener_name),
    )
    .expect("the outbound listener")
}

/// Checks, before measuring, that `request` takes `route` through the plugins.
fn check_route(chain: &Listener, request: &RequestSpec, response: &ResponseSpec, route: &str) {
    let (outcome, driver) =
        now(exchange_stream(chain, request, response)).expect("no wait in the exchange");
    assert_eq!(outcome, Outcome::Upstream);
    let chosen = driver
        .filter_state()
        .get("wasmesh.route_name")
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(chosen.as_deref(), Some(route), "{}", request.describe());
    let cluster = driver.decisions().upstream_cluster.clone();
    assert!(
        cluster.as_deref().is_some_and(|c| c.ends_with(HOST)),
        "{cluster:?}"
    );
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let resolved = translated();
        let host = Host::new(None);
        let specs = load(&host, &resolved).expect("the plugins load");
        let mut worker = Worker::new(&host).expect("a worker");
        let plugins = Listener::new(worker.chain(&specs).expect("the plugins start"), &resolved);
        assert_eq!(
            plugins.chain.names(),
            ["router", "fault", "mirror", "circuit-breaker"]
        );
        let none = Listener::bare(worker.chain(&[]).expect("an empty chain"));

        let response = ResponseSpec::ok(0);
        let [checkout, default] = <[RequestSpec; 2]>::try_from(
            read_requests(std::path::Path::new(REQUESTS)).expect("the requests"),
        )
        .expect("two requests");
        check_route(&plugins, &checkout, &response, "catalog.shop/checkout");
        check_route(&plugins, &default, &response, "catalog.shop/default");

        let mut group = c.benchmark_group("request");
        for (name, request) in [("route-6", &checkout), ("default-route", &default)] {
            for (chain_name, chain) in [("none", &none), ("plugins", &plugins)] {
                group.bench_function(format!("{chain_name}/{name}"), |b| {
                    b.iter(|| black_box(exchange_now(chain, request, &response)))
                });
            }
        }
        group.finish();
    });
}

criterion_group! {
    name = plugins;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(plugins);
