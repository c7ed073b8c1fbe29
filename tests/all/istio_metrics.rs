//! Istio's standard metrics and peer metadata exchange, end to end: a control plane and two
//! sidecars (mTLS between them), known traffic, and the exact series both sidecars' admin
//! `/stats/prometheus` then show, with every label Istio sets and Kiali reads; the workload
//! never sees the exchange's headers, and a plaintext caller cannot forge who it is. Then, on a
//! proxy given its bootstrap directly: gRPC statuses, TCP connections and bytes, and counters
//! that survive a reload.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use http::Request;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::sidecars::{
    ControlPlane, Process, Sidecar, SidecarSpec, field, services, shared_cache, write,
};
use crate::support::*;

const REVIEWS: u16 = 9080;
const PRODUCTPAGE_ID: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
const REVIEWS_ID: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews";

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format (escapes in label values included).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => {
                let (name, value) = line.split_once(' ').expect("name value");
                samples.push(Sample {
                    name: name.into(),
                    labels: BTreeMap::new(),
                    value: value.parse().expect("a number"),
                });
                continue;
            }
        };
        let mut labels = BTreeMap::new();
        let mut chars = rest.chars();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some(c) => value.push(c),
                        None => panic!("{line}"),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key.trim_start_matches(',').to_owned(), value);
            let rest = chars.as_str();
            if let Some(after) = rest.strip_prefix('}') {
                samples.push(Sample {
                    name: name.into(),
                    labels,
                    value: after.trim().parse().expect("a number"),
                });
                break;
            }
        }
    }
    samples
}

/// GETs the admin's `/stats/prometheus`, checking it is served as Prometheus text.
async fn scrape(admin: SocketAddr) -> Vec<Sample> {
    let reply = get(admin, "/stats/prometheus").await;
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&reply.text())
}

/// The value of the sample named `name` whose labels are exactly `labels`.
fn value(samples: &[Sample], name: &str, labels: &BTreeMap<String, String>) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && s.labels == *labels)
        .map(|s| s.value)
}

/// Describes what `name` has, for a failure message.
fn show(samples: &[Sample], name: &str) -> String {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| format!("{:?} {}\n", s.labels, s.value))
        .collect()
}

/// Istio's labels of one end of a hop.
struct End<'a> {
    workload: &'a str,
    namespace: &'a str,
    principal: &'a str,
    app: &'a str,
    version: &'a str,
    canonical_service: &'a str,
    canonical_revision: &'a str,
    cluster: &'a str,
}

const UNKNOWN_END: End = End {
    workload: "unknown",
    namespace: "unknown",
    principal: "unknown",
    app: "unknown",
    version: "unknown",
    canonical_service: "unknown",
    canonical_revision: "latest",
    cluster: "unknown",
};

/// Every label Istio's HTTP series carry.
#[allow(clippy::too_many_arguments)]
fn http_labels(
    reporter: &str,
    source: &End,
    destination: &End,
    service: (&str, &str, &str),
    protocol: &str,
    code: u16,
    grpc_status: &str,
    flags: &str,
    security: &str,
) -> BTreeMap<String, String> {
    let mut labels = traffic_labels(reporter, source, destination, service, protocol, flags);
    labels.insert("response_code".into(), code.to_string());
    labels.insert("grpc_response_status".into(), grpc_status.into());
    labels.insert("connection_security_policy".into(), security.into());
    labels
}

fn traffic_labels(
    reporter: &str,
    source: &End,
    destination: &End,
    service: (&str, &str, &str),
    protocol: &str,
    flags: &str,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        labels.insert(k.to_owned(), v.to_owned());
    };
    put("reporter", reporter);
    for (side, end) in [("source", source), ("destination", destination)] {
        put(&format!("{side}_workload"), end.workload);
        put(&format!("{side}_workload_namespace"), end.namespace);
        put(&format!("{side}_principal"), end.principal);
        put(&format!("{side}_app"), end.app);
        put(&format!("{side}_version"), end.version);
        put(&format!("{side}_canonical_service"), end.canonical_service);
        put(
            &format!("{side}_canonical_revision"),
            end.canonical_revision,
        );
        put(&format!("{side}_cluster"), end.cluster);
    }
    put("destination_service", service.0);
    put("destination_service_name", service.1);
    put("destination_service_namespace", service.2);
    put("request_protocol", protocol);
    put("response_flags", flags);
    put("connection_security_policy", "unknown");
    labels
}

/// Asserts the request series `labels` counted `n` requests, with GET bodies (0 bytes) and
/// responses of `response_bytes` in all, in each of Istio's HTTP metrics.
fn assert_requests(
    samples: &[Sample],
    labels: &BTreeMap<String, String>,
    n: usize,
    response_bytes: usize,
) {
    let got = |name: &str| value(samples, name, labels);
    assert_eq!(
        got("istio_requests_total"),
        Some(n as f64),
        "istio_requests_total{labels:?}; the series are:\n{}",
        show(samples, "istio_requests_total")
    );
    assert_eq!(
        got("istio_request_duration_milliseconds_count"),
        Some(n as f64)
    );
    assert_eq!(got("istio_request_bytes_count"), Some(n as f64));
    assert_eq!(got("istio_request_bytes_sum"), Some(0.0));
    assert_eq!(got("istio_response_bytes_count"), Some(n as f64));
    assert_eq!(got("istio_response_bytes_sum"), Some(response_bytes as f64));
    let mut le = labels.clone();
    le.insert("le".into(), "1".into());
    assert_eq!(
        value(samples, "istio_request_bytes_bucket", &le),
        Some(n as f64)
    );
}

/// A sidecar with an admin API: the sidecar and the admin's address.
fn sidecar(
    cp: &ControlPlane,
    name: &str,
    labels: &[(&str, &str)],
    service_account: &str,
    app: Option<(u16, SocketAddr)>,
) -> (Sidecar, SocketAddr) {
    let cache = shared_cache();
    let spec = SidecarSpec {
        name,
        labels,
        app,
        cache: &cache,
        outbound: "127.0.0.1:0",
    };
    let mut cmd = Sidecar::command(&cp.address, &spec);
    cmd.args(["--service-account", service_account])
        .args(["--admin", "127.0.0.1:0"]);
    let sidecar = Sidecar::ready(Process::spawn(name, cmd));
    let line = sidecar
        .process
        .wait_for_line("admin listening", Duration::from_secs(5));
    (sidecar, field(&line, "address").parse().unwrap())
}

/// The reviews workload: `/fail` answers 500; every answer is the echo of the request (so
/// the test sees what the workload received).
async fn reviews_app() -> Upstream {
    Upstream::start(|req| async move {
        let fail = req.uri().path() == "/fail";
        let mut response = echo_response("reviews-v1", req).await;
        if fail {
            *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        }
        response
    })
    .await
}

/// The names of `x-envoy-peer-metadata*` headers among `headers` (a JSON object or a map).
fn peer_headers<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    names
        .filter(|n| n.to_ascii_lowercase().starts_with("x-envoy-peer-metadata"))
        .map(str::to_owned)
        .collect()
}

/// What the client saw of one request.
struct Seen {
    status: u16,
    body_len: usize,
}

/// GETs `path` from reviews through `outbound` (with `forged` peer metadata from the
/// caller, if given); checks neither the workload nor the caller saw the exchange's headers.
async fn call_reviews(outbound: SocketAddr, path: &str, forged: Option<&str>) -> Seen {
    let mut req = Request::get(format!("http://{outbound}{path}"))
        .header("host", format!("reviews:{REVIEWS}"))
        .body(empty())
        .unwrap();
    if let Some(forged) = forged {
        req.headers_mut()
            .insert("x-envoy-peer-metadata", forged.parse().unwrap());
    }
    let reply = send(&h1_client(), req).await;
    assert_eq!(
        peer_headers(reply.headers.keys().map(|k| k.as_str())),
        Vec::<String>::new(),
        "the caller got the exchange's headers: {reply:?}"
    );
    if reply.header("x-served-by").is_some() {
        let echo = reply.json();
        let received = echo["headers"].as_object().unwrap();
        assert_eq!(
            peer_headers(received.keys().map(String::as_str)),
            Vec::<String>::new(),
            "the workload got the exchange's headers: {echo}"
        );
    }
    Seen {
        status: reply.status.as_u16(),
        body_len: reply.body.len(),
    }
}

/// Sends `n` GETs of `path`, each expected to answer `status`; the bytes of their bodies.
async fn calls(outbound: SocketAddr, path: &str, n: usize, status: u16) -> usize {
    let forged = wasmesh_proxy_peer_metadata("evil-6c9f", "attack", "evil");
    let mut bytes = 0;
    for i in 0..n {
        // Some of them with metadata the calling workload made up: its sidecar's replaces it.
        let seen = call_reviews(outbound, path, (i % 2 == 0).then_some(forged.as_str())).await;
        assert_eq!(seen.status, status, "GET {path}");
        bytes += seen.body_len;
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sidecars_report_each_hop_with_istios_labels() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(
        &manifests,
        "services.yaml",
        &services(&[("reviews", REVIEWS)]),
    );
    write(
        &manifests,
        "abort.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
",
    );
    let cp = ControlPlane::start(&manifests, &dir.path().join("data"), "127.0.0.1:0");
    let app = reviews_app().await;
    let (reviews, reviews_admin) = sidecar(
        &cp,
        "reviews-v1",
        &[("app", "reviews"), ("version", "v1")],
        "bookinfo-reviews",
        Some((REVIEWS, app.addr)),
    );
    let (productpage, productpage_admin) = sidecar(
        &cp,
        "productpage-v1",
        &[("app", "productpage"), ("version", "v1")],
        "bookinfo-productpage",
        None,
    );
    cp.wait_synced(2, Duration::from_secs(60)).await;

    // Known traffic through productpage's sidecar: 200s, the workload's 500s, and aborts
    // the VirtualService's fault makes at the source.
    let outbound = productpage.outbound;
    let ok_bytes = calls(outbound, "/ok", 6, 200).await;
    let fail_bytes = calls(outbound, "/fail", 3, 500).await;
    let abort_bytes = calls(outbound, "/abort", 2, 503).await;

    // A plaintext caller (PERMISSIVE lets it in) claiming to be another workload.
    let forged = wasmesh_proxy_peer_metadata("evil-6c9f", "attack", "evil");
    let inbound = reviews.inbound.expect("an inbound listener");
    let mut forged_bytes = 0;
    for _ in 0..2 {
        let req = Request::get(format!("http://{inbound}/ok"))
            .header("host", format!("reviews:{REVIEWS}"))
            .header("x-envoy-peer-metadata", &forged)
            .header(
                "x-envoy-peer-metadata-id",
                "sidecar~10.9.9.9~evil-6c9f.attack~attack.svc.cluster.local",
            )
            .body(empty())
            .unwrap();
        let reply = send(&h1_client(), req).await;
        assert_eq!(reply.status, 200);
        let echo = reply.json();
        let received = echo["headers"].as_object().unwrap();
        assert_eq!(
            peer_headers(received.keys().map(String::as_str)),
            Vec::<String>::new(),
            "the workload got forged headers: {echo}"
        );
        // As Istio's, a sidecar asked for its metadata answers with it.
        assert_eq!(
            reply.header("x-envoy-peer-metadata-id"),
            Some("sidecar~127.0.0.1~reviews-v1.default~default.svc.cluster.local")
        );
        forged_bytes += reply.body.len();
    }

    let productpage_end = End {
        workload: "productpage-v1",
        namespace: "default",
        principal: PRODUCTPAGE_ID,
        app: "productpage",
        version: "v1",
        canonical_service: "productpage",
        canonical_revision: "v1",
        cluster: "Kubernetes",
    };
    let reviews_end = End {
        workload: "reviews-v1",
        namespace: "default",
        principal: REVIEWS_ID,
        app: "reviews",
        version: "v1",
        canonical_service: "reviews",
        canonical_revision: "v1",
        cluster: "Kubernetes",
    };
    let service = ("reviews.default.svc.cluster.local", "reviews", "default");

    // The source: productpage's sidecar learnt who answered from the response.
    let source = scrape(productpage_admin).await;
    let series = |code, flags, destination: &End, source_principal| {
        let source = End {
            principal: source_principal,
            ..productpage_end
        };
        http_labels(
            "source",
            &source,
            destination,
            service,
            "http",
            code,
            "",
            flags,
            "unknown",
        )
    };
    assert_requests(
        &source,
        &series(200, "-", &reviews_end, PRODUCTPAGE_ID),
        6,
        ok_bytes,
    );
    assert_requests(
        &source,
        &series(500, "-", &reviews_end, PRODUCTPAGE_ID),
        3,
        fail_bytes,
    );
    // Aborted before any connection: nobody answered, no certificate was presented.
    assert_requests(
        &source,
        &series(503, "FI", &UNKNOWN_END, "unknown"),
        2,
        abort_bytes,
    );
    let requests = |s: &[Sample]| {
        s.iter()
            .filter(|s| s.name == "istio_requests_total")
            .count()
    };
    assert_eq!(
        requests(&source),
        3,
        "{}",
        show(&source, "istio_requests_total")
    );

    // The destination: reviews' sidecar knows the caller from its metadata and certificate.
    let destination = scrape(reviews_admin).await;
    let series = |code, source: &End, destination_principal, security| {
        let destination = End {
            principal: destination_principal,
            ..reviews_end
        };
        http_labels(
            "destination",
            source,
            &destination,
            service,
            "http",
            code,
            "",
            "-",
            security,
        )
    };
    assert_requests(
        &destination,
        &series(200, &productpage_end, REVIEWS_ID, "mutual_tls"),
        6,
        ok_bytes,
    );
    assert_requests(
        &destination,
        &series(500, &productpage_end, REVIEWS_ID, "mutual_tls"),
        3,
        fail_bytes,
    );
    // The forged caller is nobody: its headers were not trusted without a certificate.
    assert_requests(
        &destination,
        &series(200, &UNKNOWN_END, "unknown", "none"),
        2,
        forged_bytes,
    );
    assert_eq!(
        requests(&destination),
        3,
        "{}",
        show(&destination, "istio_requests_total")
    );
    for samples in [&source, &destination] {
        assert_eq!(
            value(
                samples,
                "wasmesh_istio_series_overflow_total",
                &BTreeMap::new()
            ),
            Some(0.0)
        );
    }
}

/// `x-envoy-peer-metadata` for a workload, as a sidecar would send it (built here from the
/// protobuf Struct, as Istio's is).
fn wasmesh_proxy_peer_metadata(name: &str, namespace: &str, app: &str) -> String {
    use prost::Message as _;
    use prost_types::{Struct, Value, value::Kind};
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.into())),
    };
    let labels = Struct {
        fields: [("app".to_owned(), string(app))].into(),
    };
    let fields = [
        ("NAME", string(name)),
        ("NAMESPACE", string(namespace)),
        ("WORKLOAD_NAME", string(app)),
        ("SERVICE_ACCOUNT", string(app)),
        (
            "LABELS",
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    base64::engine::general_purpose::STANDARD.encode(Struct { fields }.encode_to_vec())
}

/// A bootstrap whose listeners report as a source: HTTP to a gRPC server, TCP to an echo
/// server and TCP to nothing. `extra` adds clusters (a reload changes it).
fn client_bootstrap(grpc: SocketAddr, tcp: SocketAddr, extra: &str) -> String {
    format!(
        r#"
workers: 2
admin: {{address: "127.0.0.1:0"}}
telemetry:
  workload:
    name: client-7d4b9-x2x
    namespace: apps
    workload_name: client
    cluster_id: east
    labels: {{app: client, version: v2}}
listeners:
- name: outbound
  address: "127.0.0.1:0"
  traffic_direction: outbound
  virtual_hosts:
  - name: greeter
    domains: ["*"]
    routes:
    - match: {{prefix: /}}
      cluster: greeter
      timeout: 0s
- name: tcp-echo
  address: "127.0.0.1:0"
  traffic_direction: outbound
  tcp_proxy: {{cluster: echo}}
- name: tcp-dead
  address: "127.0.0.1:0"
  traffic_direction: outbound
  tcp_proxy: {{cluster: dead}}
- name: untracked
  address: "127.0.0.1:0"
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: {{prefix: /}}
      cluster: greeter
clusters:
- name: greeter
  endpoints: ["{grpc}"]
  protocol: http2
  service: {{host: greeter.apps.svc.cluster.local, name: greeter, namespace: apps}}
- name: echo
  endpoints: ["{tcp}"]
  protocol: tcp
  service: {{host: echo.apps.svc.cluster.local, name: echo, namespace: apps}}
- name: dead
  endpoints: ["{dead}"]
  protocol: tcp
{extra}"#,
        dead = dead_addr(),
    )
}

/// A TCP server that echoes what it reads until the client closes its side.
async fn tcp_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_statuses_and_tcp_connections_are_counted_across_reloads() {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.Cart", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let tcp = tcp_echo().await;
    let proxy = start_proxy(&client_bootstrap(grpc, tcp, ""));
    let admin = proxy.admin_addr().unwrap();
    let outbound = proxy.listener_addr("outbound").unwrap();
    let check = |service: &'static str| async move {
        let channel = tonic::transport::Channel::from_shared(format!("http://{outbound}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    };
    // OK in trailers; NOT_FOUND (5) trailers-only.
    assert_eq!(check("shop.Cart").await, Ok(()));
    assert_eq!(check("shop.Cart").await, Ok(()));
    assert_eq!(check("nope").await, Err(tonic::Code::NotFound));
    // A listener without a traffic direction records nothing (counted below).
    let untracked = proxy.listener_addr("untracked").unwrap();
    get(untracked, "/").await;

    // TCP: what goes up comes back; a dead endpoint is UF.
    let echo = proxy.listener_addr("tcp-echo").unwrap();
    let sent: Vec<&[u8]> = vec![b"hello over tcp", b"and again, longer this time"];
    for line in &sent {
        let echo_back = tokio::task::spawn_blocking({
            let line = line.to_vec();
            move || tcp_exchange(echo, &line).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(echo_back, *line);
    }
    let dead = proxy.listener_addr("tcp-dead").unwrap();
    let answer = tokio::task::spawn_blocking(move || tcp_exchange(dead, b"x"))
        .await
        .unwrap();
    assert!(answer.as_ref().map_or(true, Vec::is_empty), "{answer:?}");

    let client = End {
        workload: "client",
        namespace: "apps",
        principal: "unknown",
        app: "client",
        version: "v2",
        canonical_service: "client",
        canonical_revision: "v2",
        cluster: "east",
    };
    let greeter = ("greeter.apps.svc.cluster.local", "greeter", "apps");
    let grpc_series = |status| {
        http_labels(
            "source",
            &client,
            &UNKNOWN_END,
            greeter,
            "grpc",
            200,
            status,
            "-",
            "unknown",
        )
    };
    let tcp_series =
        |service, flags| traffic_labels("source", &client, &UNKNOWN_END, service, "tcp", flags);
    let echo_service = ("echo.apps.svc.cluster.local", "echo", "apps");
    let tcp_bytes: usize = sent.iter().map(|l| l.len()).sum();

    // The closing of connections is counted once the proxy sees them close.
    let echo_labels = tcp_series(echo_service, "-");
    let closed = |samples: &[Sample]| {
        value(samples, "istio_tcp_connections_closed_total", &echo_labels) == Some(2.0)
    };
    eventually(
        "TCP connections closed",
        Duration::from_secs(10),
        || async { closed(&scrape(admin).await) },
    )
    .await;
    let samples = scrape(admin).await;
    let got = |name: &str, labels: &BTreeMap<String, String>| value(&samples, name, labels);
    assert_eq!(
        got("istio_requests_total", &grpc_series("0")),
        Some(2.0),
        "{}",
        show(&samples, "istio_requests_total")
    );
    assert_eq!(got("istio_requests_total", &grpc_series("5")), Some(1.0));
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.name == "istio_requests_total")
            .count(),
        2,
        "{}",
        show(&samples, "istio_requests_total")
    );
    assert_eq!(
        got("istio_tcp_connections_opened_total", &echo_labels),
        Some(2.0),
        "{}",
        show(&samples, "istio_tcp_connections_opened_total")
    );
    assert_eq!(
        got("istio_tcp_received_bytes_total", &echo_labels),
        Some(tcp_bytes as f64)
    );
    assert_eq!(
        got("istio_tcp_sent_bytes_total", &echo_labels),
        Some(tcp_bytes as f64)
    );
    let dead_labels = tcp_series(("unknown", "unknown", "unknown"), "UF");
    assert_eq!(
        got("istio_tcp_connections_opened_total", &dead_labels),
        Some(1.0),
        "{}",
        show(&samples, "istio_tcp_connections_opened_total")
    );
    assert_eq!(
        got("istio_tcp_connections_closed_total", &dead_labels),
        Some(1.0)
    );

    // A reload (a new cluster) keeps every counter; the next request adds to them.
    let extra = format!("- name: spare\n  endpoints: [\"{}\"]\n", dead_addr());
    let reloaded =
        wasmesh_proxy::config::Bootstrap::parse(&client_bootstrap(grpc, tcp, &extra)).unwrap();
    proxy.reload(reloaded).expect("reload");
    assert_eq!(check("shop.Cart").await, Ok(()));
    let samples = scrape(admin).await;
    assert_eq!(
        value(&samples, "istio_requests_total", &grpc_series("0")),
        Some(3.0),
        "{}",
        show(&samples, "istio_requests_total")
    );
    assert_eq!(
        value(&samples, "istio_tcp_connections_opened_total", &echo_labels),
        Some(2.0)
    );
}
