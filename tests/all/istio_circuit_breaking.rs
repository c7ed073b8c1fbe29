//! Istio's circuit-breaking task, end to end: connection-pool limits give 503s flagged `UO`
//! under concurrency, and outlier detection ejects a failing endpoint until its time is up.

use std::time::Duration;

use wasmesh_controlplane::samples::HTTPBIN_CIRCUIT_BREAKER;

use crate::support::eventually;
use crate::support::mesh::{Mesh, service, slow};

/// `clients` concurrent clients (each on its own connection) sending `each` requests;
/// returns (200s, 503s flagged as overflow).
async fn load(mesh: &std::sync::Arc<Mesh>, clients: usize, each: usize) -> (usize, usize) {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mesh = mesh.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut overflow) = (0, 0);
            for _ in 0..each {
                let reply = mesh.get("httpbin", "/get", &[]).await;
                match reply.status.as_u16() {
                    200 => ok += 1,
                    503 if reply.header("x-envoy-overloaded") == Some("true") => overflow += 1,
                    other => panic!("unexpected {other}: {}", reply.text()),
                }
            }
            (ok, overflow)
        }));
    }
    let mut total = (0, 0);
    for t in tasks {
        let (ok, overflow) = t.await.unwrap();
        total.0 += ok;
        total.1 += overflow;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_limits_trip_with_concurrency() {
    // The task's setup: one httpbin pod, and the client's sidecar (here a one-worker proxy)
    // with maxConnections: 1, http1MaxPendingRequests: 1, maxRequestsPerConnection: 1.
    let httpbin = slow("httpbin", 200, Duration::from_millis(2)).await;
    let services = service("httpbin", &[httpbin.addr]);
    let mesh = std::sync::Arc::new(Mesh::single_worker(&services, HTTPBIN_CIRCUIT_BREAKER));

    let (ok1, overflow1) = load(&mesh, 1, 20).await;
    assert_eq!(
        (ok1, overflow1),
        (20, 0),
        "one client never trips the breaker"
    );

    // Two clients fit one request in service and one pending, but as in Envoy a pending
    // request stays pending while the connection it waited for (closed after its one request)
    // is replaced, and a request arriving then overflows.
    // That window is short: on a loaded machine two clients can go a few hundred requests
    // without hitting it, so they send rounds until they do (or 20 rounds pass).
    let (mut ok2, mut overflow2, mut sent2) = (0, 0, 0);
    for _ in 0..20 {
        let (ok, overflow) = load(&mesh, 2, 100).await;
        (ok2, overflow2, sent2) = (ok2 + ok, overflow2 + overflow, sent2 + 200);
        if overflow2 > 0 {
            break;
        }
    }
    let (ok3, overflow3) = load(&mesh, 3, 100).await;
    eprintln!(
        "2 clients: {ok2} ok, {overflow2} overflow; 3 clients: {ok3} ok, {overflow3} overflow"
    );
    assert!(
        overflow2 > 0,
        "two concurrent clients trip the breaker sometimes"
    );
    assert!(
        ok2 > 0 && ok3 > 0,
        "the breaker sheds load, not all traffic"
    );
    assert!(
        overflow3 * sent2 > overflow2 * 300,
        "three clients trip it more often: {overflow3}/300 against {overflow2}/{sent2}"
    );
    assert_eq!(mesh.flagged("UO").await, (overflow2 + overflow3) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_then_returns() {
    let good_a = slow("good-a", 200, Duration::ZERO).await;
    let good_b = slow("good-b", 200, Duration::ZERO).await;
    let bad = slow("bad", 500, Duration::ZERO).await;
    let services = service("flaky", &[good_a.addr, good_b.addr, bad.addr]);
    let policy = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaky}
spec:
  host: flaky
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 2s
      maxEjectionPercent: 100
";
    let mesh = Mesh::start(&services, policy);
    let mut errors = 0;
    for _ in 0..30 {
        if mesh.get("flaky", "/", &[]).await.status == 500 {
            errors += 1;
        }
    }
    assert_eq!(errors, 3, "three consecutive 500s eject the bad endpoint");
    let bad_hits = bad.hits();
    for _ in 0..30 {
        assert_eq!(
            mesh.get("flaky", "/", &[]).await.status,
            200,
            "traffic avoids the ejected endpoint"
        );
    }
    assert_eq!(bad.hits(), bad_hits);

    // After the ejection time it gets traffic again.
    eventually(
        "the ejected endpoint returns",
        Duration::from_secs(10),
        || {
            let mesh = &mesh;
            async move { mesh.get("flaky", "/", &[]).await.status == 500 }
        },
    )
    .await;
    assert!(bad.hits() > bad_hits);
}

/// A config push that leaves the circuit breaker's DestinationRule alone (here a fault on
/// another service) keeps its plugin running and its cluster: consecutive errors counted
/// before the push still count, and an ejected endpoint stays ejected, as in Envoy, where an
/// unrelated route update does not reset outlier detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrelated_config_push_keeps_outlier_detection_state() {
    let good = slow("good", 200, Duration::ZERO).await;
    let bad = slow("bad", 500, Duration::ZERO).await;
    let other = slow("other", 200, Duration::ZERO).await;
    let services = format!(
        "{}\n---\n{}",
        service("flaky", &[good.addr, bad.addr]),
        service("other", &[other.addr])
    );
    let policy = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaky}
spec:
  host: flaky
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 60s
      maxEjectionPercent: 100
";
    let fault = |status: u16| {
        format!(
            "{policy}\n---\napiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: other}}
spec:
  hosts: [other]
  http:
  - fault:
      abort: {{httpStatus: {status}, percentage: {{value: 100}}}}
    route:
    - destination: {{host: other}}
"
        )
    };
    let mesh = Mesh::single_worker(&services, policy);
    let errors = |n: usize| {
        let mesh = &mesh;
        async move {
            let mut errors = 0;
            for _ in 0..n {
                if mesh.get("flaky", "/", &[]).await.status == 500 {
                    errors += 1;
                }
            }
            errors
        }
    };
    // One error from the bad endpoint.
    let mut tries = 0;
    while errors(1).await == 0 {
        tries += 1;
        assert!(tries < 100, "the bad endpoint gets no request");
    }

    mesh.apply(&fault(418));
    assert_eq!(
        mesh.get("other", "/", &[]).await.status,
        418,
        "the push applied"
    );
    assert_eq!(
        errors(20).await,
        1,
        "the error before the push counts: the next one ejects the endpoint"
    );

    mesh.apply(&fault(419));
    assert_eq!(
        mesh.get("other", "/", &[]).await.status,
        419,
        "the push applied"
    );
    let bad_hits = bad.hits();
    assert_eq!(errors(20).await, 0);
    assert_eq!(bad.hits(), bad_hits, "the endpoint is still ejected");
}
