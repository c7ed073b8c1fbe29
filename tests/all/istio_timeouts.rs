//! Istio's request timeouts and retries, end to end: a VirtualService `timeout` on a slow
//! upstream answers 504 (`UT`); `retries` make a flaky upstream succeed and stop at the
//! attempt limit (`URX`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::support::mesh::{Mesh, service, slow};
use crate::support::{Upstream, full};

/// A VirtualService for `host` with the given lines under its one route.
fn virtual_service(host: &str, route_extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  http:
  - route:
    - destination: {{host: {host}}}
{route_extra}"
    )
}

/// An upstream that fails with 503 except on every `nth` request.
async fn flaky(nth: usize) -> Upstream {
    let count = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |_req| {
        let n = count.fetch_add(1, SeqCst) + 1;
        async move {
            let status = if n.is_multiple_of(nth) { 200 } else { 503 };
            http::Response::builder()
                .status(status)
                .body(full(format!("answer {n}")))
                .unwrap()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_on_a_slow_upstream_is_504_ut() {
    let ratings = slow("ratings", 200, Duration::from_secs(1)).await;
    let services = service("ratings", &[ratings.addr]);
    let mesh = Mesh::start(
        &services,
        &virtual_service("ratings", "    timeout: 300ms\n"),
    );

    let started = Instant::now();
    let reply = mesh.get("ratings", "/", &[]).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert_eq!(mesh.flagged("UT").await, 1.0);

    // Without the timeout the same upstream answers.
    mesh.apply(&virtual_service("ratings", "    timeout: 5s\n"));
    assert_eq!(mesh.get("ratings", "/", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_make_a_flaky_upstream_succeed_and_stop_at_the_limit() {
    // Two failures out of every three requests: three attempts always find the good one.
    let upstream = flaky(3).await;
    let services = service("flaky", &[upstream.addr]);
    let retries = "    retries: {attempts: 2, perTryTimeout: 1s, retryOn: 5xx}\n";
    let mesh = Mesh::start(&services, &virtual_service("flaky", retries));
    for i in 0..5 {
        let reply = mesh.get("flaky", "/", &[]).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    assert_eq!(upstream.hits(), 15, "three attempts per request");

    // No retries: the failures reach the client.
    mesh.apply(&virtual_service("flaky", "    retries: {attempts: 0}\n"));
    assert_eq!(statuses(&mesh, 3).await, [503, 503, 200]);

    // One retry is not enough for two failures in a row: the second 503 comes back, flagged
    // URX, after exactly two attempts.
    mesh.apply(&virtual_service(
        "flaky",
        "    retries: {attempts: 1, retryOn: 5xx}\n",
    ));
    let before = upstream.hits();
    assert_eq!(statuses(&mesh, 4).await, [503, 200, 503, 200]);
    assert_eq!(upstream.hits() - before, 6);
    assert_eq!(mesh.flagged("URX").await, 2.0);
}

async fn statuses(mesh: &Mesh, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(mesh.get("flaky", "/", &[]).await.status.as_u16());
    }
    out
}
