//! Distributed tracing: real proxies, real clients and apps, and a real OTLP/gRPC collector.
//! W3C and B3 context continued hop after hop, spans with Istio's names and Envoy's tags,
//! sampling kept from upstream, and a dead or hanging collector that costs traffic nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, Response};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use wasmesh_proxy::Proxy;
use wasmesh_proxy::config::Bootstrap;

use crate::support::otlp::{Collector, Hanging, ReceivedSpan};
use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// The headers an app copies from the request it serves onto the requests it makes.
const PROPAGATED: [&str; 8] = [
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "b3",
];

/// A proxy with one listener (`direction`: a `traffic_direction` line, or empty) that routes
/// everything to `cluster` at `to`. `telemetry` is the bootstrap's `telemetry:` block.
fn config(telemetry: &str, direction: &str, cluster: &str, to: SocketAddr) -> String {
    format!(
        r#"
workers: 1
admin: {{address: "127.0.0.1:0"}}
{telemetry}
listeners:
- name: main
  address: "127.0.0.1:0"
  {direction}
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - name: default
      match: {{prefix: /}}
      cluster: "{cluster}"
clusters:
- name: "{cluster}"
  endpoints: ["{to}"]
"#
    )
}

/// A `telemetry:` block tracing to `endpoint` at `sampling` percent, for `workload` (YAML
/// lines under `workload:`, or empty).
fn telemetry(endpoint: &str, sampling: u32, workload: &str) -> String {
    let mut t = format!(
        "telemetry:\n  tracing: {{sampling: {sampling}, otlp: {{endpoint: \"{endpoint}\", timeout: 2s}}}}\n"
    );
    if !workload.is_empty() {
        t.push_str("  workload:\n");
        for line in workload.lines() {
            t.push_str(&format!("    {line}\n"));
        }
    }
    t
}

fn main_addr(proxy: &Proxy) -> SocketAddr {
    proxy.listener_addr("main").unwrap()
}

/// GET `path` through `addr` with `headers`; the echo upstream's JSON view of what it got.
async fn echo_through(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let reply = send(&h1_client(), req.body(empty()).unwrap()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    echo["headers"][name].as_str()
}

/// `00-<trace>-<span>-<flags>` split into its parts.
fn traceparent(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {v:?}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len()),
        ("00", 32, 16),
        "{v:?}"
    );
    (parts[1].into(), parts[2].into(), parts[3].into())
}

async fn counter(proxy: &Proxy, name: &str) -> f64 {
    metric(proxy, &format!("wasmesh_tracing_{name}_total"))
        .await
        .unwrap_or_else(|| panic!("no wasmesh_tracing_{name}_total on /stats/prometheus"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hops_make_one_trace_with_parent_links_kinds_and_tags() {
    let collector = Collector::start().await;
    let ep = collector.endpoint();
    // app2 (reviews) behind its sidecar's inbound listener.
    let app2 = Upstream::echo("reviews").await;
    let reviews_sidecar = start_proxy(&config(
        &telemetry(
            &ep,
            0,
            "name: reviews-v2-abc\nnamespace: shop\nlabels: {app: reviews, version: v2}",
        ),
        "traffic_direction: inbound",
        "inbound|9080||",
        app2.addr,
    ));
    // app1 (productpage) calls reviews through its sidecar's outbound listener.
    let productpage_sidecar = start_proxy(&config(
        &telemetry(
            &ep,
            0,
            "name: productpage-v1-xyz\nnamespace: shop\nprincipal: spiffe://cluster.local/ns/shop/sa/productpage\nlabels: {app: productpage, version: v1}",
        ),
        "traffic_direction: outbound",
        "outbound|9080||reviews.shop.svc.cluster.local",
        main_addr(&reviews_sidecar),
    ));
    let outbound = main_addr(&productpage_sidecar);
    let app1 = Upstream::start(move |req| async move {
        // As an app must: the trace headers it got go on the request it makes.
        let mut call =
            Request::get(format!("http://{outbound}/reviews/1")).header("host", "reviews:9080");
        for name in PROPAGATED {
            if let Some(v) = req.headers().get(name) {
                call = call.header(name, v);
            }
        }
        let reply = send(&h1_client(), call.body(empty()).unwrap()).await;
        Response::builder()
            .status(reply.status)
            .body(full(reply.body))
            .unwrap()
    })
    .await;
    // The ingress gateway: neither inbound nor outbound.
    let gateway = start_proxy(&config(
        &telemetry(
            &ep,
            0,
            "name: gw-1\nnamespace: istio-system\nlabels: {app: istio-ingressgateway}",
        ),
        "",
        "outbound|9080||productpage.shop.svc.cluster.local",
        app1.addr,
    ));

    // The client's span is sampled: every hop keeps that decision (their own sampling is 0).
    let echo = echo_through(
        main_addr(&gateway),
        "/productpage?u=1",
        &[
            ("host", "shop.example.com"),
            ("traceparent", &format!("00-{TRACE}-{CLIENT_SPAN}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-request-id", "rid-3-hops"),
            ("user-agent", "tracing-test"),
        ],
    )
    .await;
    assert_eq!(echo["server"], "reviews");
    let (trace, app2_parent, flags) = traceparent(header(&echo, "traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_eq!(header(&echo, "tracestate"), Some("congo=t61rcWkgMzE"));
    assert_eq!(header(&echo, "x-request-id"), Some("rid-3-hops"));

    let spans = collector.wait_for(3, |s| s.trace_id == TRACE).await;
    assert_eq!(spans.len(), 3, "one span per hop: {spans:#?}");
    let by_service = |name: &str| -> &ReceivedSpan {
        spans
            .iter()
            .find(|s| s.service_name == name)
            .unwrap_or_else(|| panic!("no span of {name}: {spans:#?}"))
    };
    let gw = by_service("istio-ingressgateway.istio-system");
    let out = by_service("productpage.shop");
    let inb = by_service("reviews.shop");

    // Parent links: client -> gateway -> productpage's outbound -> reviews' inbound -> app2.
    assert_eq!(gw.parent_span_id, CLIENT_SPAN);
    assert_eq!(out.parent_span_id, gw.span_id);
    assert_eq!(inb.parent_span_id, out.span_id);
    assert_eq!(app2_parent, inb.span_id);
    assert!(gw.span_id != out.span_id && out.span_id != inb.span_id);
    // Kinds: a gateway's and an inbound listener's spans are SERVER, an outbound one's CLIENT.
    assert_eq!(
        (gw.kind, out.kind, inb.kind),
        (SpanKind::Server, SpanKind::Client, SpanKind::Server)
    );
    // Istio's names: `<host>:<port>/*` of the destination.
    assert_eq!(gw.name, "productpage.shop.svc.cluster.local:9080/*");
    assert_eq!(out.name, "reviews.shop.svc.cluster.local:9080/*");
    assert_eq!(inb.name, "reviews:9080/*");
    // Each hop's span encloses the next one's (1 ms of slack for the clocks).
    let slack = 1_000_000;
    assert!(gw.start_time_unix_nano <= out.start_time_unix_nano + slack);
    assert!(out.start_time_unix_nano <= inb.start_time_unix_nano + slack);
    assert!(inb.end_time_unix_nano <= out.end_time_unix_nano + slack);
    assert!(out.end_time_unix_nano <= gw.end_time_unix_nano + slack);
    assert!(inb.start_time_unix_nano < inb.end_time_unix_nano);

    // Envoy's tags.
    assert_eq!(gw.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(
        gw.attr("http.url"),
        "http://shop.example.com/productpage?u=1"
    );
    assert_eq!(gw.attr("http.method"), "GET");
    assert_eq!(gw.attr("http.protocol"), "HTTP/1.1");
    assert_eq!(gw.attr("http.status_code"), "200");
    assert_eq!(gw.attr("user_agent"), "tracing-test");
    assert_eq!(gw.attr("guid:x-request-id"), "rid-3-hops");
    assert_eq!(
        gw.attr("upstream_cluster"),
        "outbound|9080||productpage.shop.svc.cluster.local"
    );
    assert_eq!(
        gw.attr("upstream_cluster.name"),
        "outbound|9080||productpage.shop.svc.cluster.local"
    );
    assert_eq!(gw.attr("upstream_address"), app1.addr.to_string());
    assert!(gw.attr("peer.address").starts_with("127.0.0.1:"));
    assert_eq!(gw.attr("response_flags"), "-");
    assert_eq!(gw.attr("component"), "proxy");
    assert_eq!(gw.attr("downstream_cluster"), "-");
    assert!(!gw.attr("node_id").is_empty());
    assert!(gw.attributes.contains_key("zone"));
    assert!(gw.attr("response_size").parse::<u64>().unwrap() > 0);
    assert_eq!(gw.attr("request_size"), "0");
    assert_eq!(gw.attr("istio.canonical_service"), "istio-ingressgateway");
    assert_eq!(gw.attr("istio.namespace"), "istio-system");
    assert_eq!(out.attr("istio.canonical_service"), "productpage");
    assert_eq!(out.attr("istio.canonical_revision"), "v1");
    assert_eq!(out.attr("istio.mesh_id"), "cluster.local");
    assert_eq!(out.attr("http.url"), "http://reviews:9080/reviews/1");
    assert_eq!(
        out.attr("upstream_address"),
        main_addr(&reviews_sidecar).to_string()
    );
    assert_eq!(inb.attr("istio.canonical_service"), "reviews");
    assert_eq!(inb.attr("istio.canonical_revision"), "v2");
    assert_eq!(inb.attr("upstream_cluster"), "inbound|9080||");
    assert_eq!(inb.attr("guid:x-request-id"), "rid-3-hops");
    assert!(spans.iter().all(|s| s.status == SpanStatus::Unset));

    for proxy in [&gateway, &productpage_sidecar, &reviews_sidecar] {
        let p = proxy;
        eventually(
            "the export is counted",
            Duration::from_secs(5),
            || async move { metric(p, "wasmesh_tracing_spans_exported_total").await == Some(1.0) },
        )
        .await;
        assert_eq!(counter(proxy, "spans_dropped").await, 0.0);
        assert_eq!(counter(proxy, "export_failures").await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_context_is_continued_and_rewritten_for_the_next_hop() {
    let collector = Collector::start().await;
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&config(
        &telemetry(&collector.endpoint(), 0, ""),
        "",
        "backend",
        up.addr,
    ));
    let addr = main_addr(&proxy);

    // Multi-header B3 with a 64-bit trace id.
    let echo = echo_through(
        addr,
        "/b3",
        &[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let new_span = header(&echo, "x-b3-spanid").unwrap().to_owned();
    assert_ne!(new_span, "a2fb4a1d1a96d312", "a new span for this hop");
    assert_eq!(header(&echo, "x-b3-traceid"), Some("463ac35c9f6413ad"));
    assert_eq!(header(&echo, "x-b3-parentspanid"), Some("a2fb4a1d1a96d312"));
    assert_eq!(header(&echo, "x-b3-sampled"), Some("1"));
    let padded = "0000000000000000463ac35c9f6413ad";
    assert_eq!(
        header(&echo, "traceparent").unwrap(),
        format!("00-{padded}-{new_span}-01")
    );
    let span = &collector.wait_for(1, |s| s.trace_id == padded).await[0];
    assert_eq!(span.span_id, new_span);
    assert_eq!(span.parent_span_id, "a2fb4a1d1a96d312");
    assert_eq!(span.kind, SpanKind::Server);

    // Single-header B3.
    let trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let echo = echo_through(
        addr,
        "/b3",
        &[("b3", &format!("{trace}-e457b5a2e4d86bd1-1"))],
    )
    .await;
    let b3 = header(&echo, "b3").unwrap().to_owned();
    let fields: Vec<&str> = b3.split('-').collect();
    assert_eq!(fields.len(), 4, "{b3}");
    assert_eq!(
        (fields[0], fields[2], fields[3]),
        (trace, "1", "e457b5a2e4d86bd1")
    );
    assert!(
        header(&echo, "x-b3-traceid").is_none(),
        "B3 goes on as it came"
    );
    let (tp_trace, tp_span, _) = traceparent(header(&echo, "traceparent").unwrap());
    assert_eq!((tp_trace.as_str(), tp_span.as_str()), (trace, fields[1]));
    let span = &collector.wait_for(1, |s| s.trace_id == trace).await[0];
    assert_eq!(
        (span.span_id.as_str(), span.parent_span_id.as_str()),
        (fields[1], "e457b5a2e4d86bd1")
    );

    // B3 that says "not sampled" is obeyed, and said again.
    let echo = echo_through(
        addr,
        "/b3",
        &[
            ("x-b3-traceid", "1111111111111111"),
            ("x-b3-spanid", "2222222222222222"),
            ("x-b3-sampled", "0"),
        ],
    )
    .await;
    assert_eq!(header(&echo, "x-b3-sampled"), Some("0"));
    assert!(header(&echo, "traceparent").unwrap().ends_with("-00"));
    // Invalid B3 starts a new trace (and the request still succeeds).
    let echo = echo_through(
        addr,
        "/b3",
        &[
            ("x-b3-traceid", "not-hex"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let (fresh, _, _) = traceparent(header(&echo, "traceparent").unwrap());
    assert_eq!(header(&echo, "x-b3-traceid"), Some(fresh.as_str()));
    assert!(header(&echo, "x-b3-parentspanid").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_make_no_span_but_propagate_and_reloads_take_effect() {
    let first = Collector::start().await;
    let up = Upstream::echo("up").await;
    let yaml = |endpoint: &str, sampling: u32| {
        config(&telemetry(endpoint, sampling, ""), "", "backend", up.addr)
    };
    let proxy = start_proxy(&yaml(&first.endpoint(), 0));
    let addr = main_addr(&proxy);

    // No decision upstream, sampling 0: not sampled, yet the next hop hears of the trace.
    let mut unsampled = Vec::new();
    for _ in 0..20 {
        let echo = echo_through(addr, "/", &[]).await;
        let (trace, _, flags) = traceparent(header(&echo, "traceparent").unwrap());
        assert_eq!(flags, "00");
        unsampled.push(trace);
    }
    unsampled.dedup();
    assert_eq!(unsampled.len(), 20, "each request starts its own trace");
    // An invalid traceparent is a request without one.
    let echo = echo_through(addr, "/", &[("traceparent", "ff-not-a-trace")]).await;
    unsampled.push(traceparent(header(&echo, "traceparent").unwrap()).0);
    // A sampled caller is followed: its span comes, and nothing before it (one worker, in order).
    echo_through(
        addr,
        "/",
        &[("traceparent", &format!("00-{TRACE}-{CLIENT_SPAN}-01"))],
    )
    .await;
    first.wait_for(1, |s| s.trace_id == TRACE).await;
    let received = first.spans();
    assert_eq!(
        received.len(),
        1,
        "only the sampled request made a span: {received:#?}"
    );

    // Reloaded: every request sampled, spans to another collector.
    let second = Collector::start().await;
    proxy
        .reload(Bootstrap::parse(&yaml(&second.endpoint(), 100)).unwrap())
        .unwrap();
    let declined = "11111111111111111111111111111111";
    echo_through(
        addr,
        "/",
        &[("traceparent", &format!("00-{declined}-{CLIENT_SPAN}-00"))],
    )
    .await;
    let echo = echo_through(addr, "/", &[]).await;
    let (trace, span_id, flags) = traceparent(header(&echo, "traceparent").unwrap());
    assert_eq!(flags, "01");
    let span = &second.wait_for(1, |s| s.trace_id == trace).await[0];
    assert_eq!(
        (span.span_id.as_str(), span.parent_span_id.as_str()),
        (span_id.as_str(), "")
    );
    let received = second.spans();
    assert_eq!(
        received.len(),
        1,
        "a caller's \"not sampled\" is kept: {received:#?}"
    );
    assert_eq!(
        first.spans().len(),
        1,
        "the old collector gets nothing more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracing_config_headers_pass_untouched() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&config("", "", "backend", up.addr));
    let addr = main_addr(&proxy);
    let echo = echo_through(addr, "/", &[]).await;
    assert!(header(&echo, "traceparent").is_none());
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let echo = echo_through(
        addr,
        "/",
        &[
            ("traceparent", &tp),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("b3", "0"),
        ],
    )
    .await;
    assert_eq!(header(&echo, "traceparent"), Some(tp.as_str()));
    assert_eq!(header(&echo, "x-b3-spanid"), Some("a2fb4a1d1a96d312"));
    assert_eq!(header(&echo, "b3"), Some("0"));
}

/// Sends requests through `proxy`, every one sampled, until `done` says enough happened (at
/// most 20 s): each must succeed, and none may wait on the exporter.
async fn traffic_until(proxy: &Proxy, done: impl AsyncFn(&Proxy) -> bool) -> usize {
    let addr = main_addr(proxy);
    let client = h1_client();
    let started = Instant::now();
    let mut sent = 0;
    loop {
        let begun = Instant::now();
        let req = Request::get(format!("http://{addr}/"))
            .body(empty())
            .unwrap();
        let reply = send(&client, req).await;
        let took = begun.elapsed();
        assert_eq!(reply.status, 200);
        assert!(
            took < Duration::from_secs(1),
            "request {sent} took {took:?}"
        );
        sent += 1;
        if sent >= 20 && done(proxy).await {
            return sent;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the counters never moved"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_no_request() {
    let up = Upstream::echo("up").await;
    let dead = format!("http://{}", dead_addr());
    let proxy = start_proxy(&config(&telemetry(&dead, 100, ""), "", "backend", up.addr));
    traffic_until(&proxy, async |p| counter(p, "export_failures").await >= 1.0).await;
    assert!(counter(&proxy, "spans_dropped").await >= 1.0);
    assert_eq!(counter(&proxy, "spans_exported").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_collector_costs_no_request() {
    let up = Upstream::echo("up").await;
    let hanging = Hanging::start().await;
    let proxy = start_proxy(&config(
        &telemetry(&hanging.endpoint(), 100, ""),
        "",
        "backend",
        up.addr,
    ));
    // Each export waits out its 2 s timeout while requests keep flowing.
    let sent = traffic_until(&proxy, async |p| counter(p, "export_failures").await >= 2.0).await;
    let dropped = counter(&proxy, "spans_dropped").await;
    assert!(
        dropped >= 1.0 && dropped <= sent as f64,
        "{dropped} of {sent}"
    );
    assert_eq!(counter(&proxy, "spans_exported").await, 0.0);
}
