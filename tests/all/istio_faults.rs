//! Istio's fault-injection task, end to end: a delay and an abort for one user only, and
//! percentages.

use std::time::{Duration, Instant};

use wasmesh_controlplane::samples::{
    DESTINATION_RULE_ALL, VIRTUAL_SERVICE_ALL_V1, VIRTUAL_SERVICE_RATINGS_TEST_ABORT,
    VIRTUAL_SERVICE_RATINGS_TEST_DELAY, VIRTUAL_SERVICE_REVIEWS_TEST_V2,
};

use crate::support::mesh::{Bookinfo, Mesh};

/// The task's policy with the ratings VirtualService given (first, so it replaces the one of
/// `virtual-service-all-v1.yaml`).
fn policy(ratings: &str) -> String {
    format!(
        "{ratings}\n---\n{VIRTUAL_SERVICE_REVIEWS_TEST_V2}\n---\n{DESTINATION_RULE_ALL}\n---\n{VIRTUAL_SERVICE_ALL_V1}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_for_jason_only() {
    let bookinfo = Bookinfo::start().await;
    // The task's 7s delay, shortened to keep the test quick.
    let delay = VIRTUAL_SERVICE_RATINGS_TEST_DELAY.replace("fixedDelay: 7s", "fixedDelay: 600ms");
    let mesh = Mesh::start(&bookinfo.manifests(), &policy(&delay));

    let started = Instant::now();
    assert_eq!(
        mesh.served_by("ratings", &[("end-user", "jason")]).await,
        "ratings-v1"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "jason's request was held {:?}",
        started.elapsed()
    );
    assert_eq!(mesh.flagged("DI").await, 1.0);

    // Everyone else goes straight through, and no delay was injected for them.
    for user in ["bob", ""] {
        assert_eq!(
            mesh.served_by("ratings", &[("end-user", user)]).await,
            "ratings-v1"
        );
    }
    assert_eq!(mesh.flagged("DI").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_for_jason_only() {
    let bookinfo = Bookinfo::start().await;
    let mesh = Mesh::start(
        &bookinfo.manifests(),
        &policy(VIRTUAL_SERVICE_RATINGS_TEST_ABORT),
    );
    let hits = bookinfo.servers[2].hits();
    for _ in 0..5 {
        let reply = mesh
            .get("ratings", "/ratings/0", &[("end-user", "jason")])
            .await;
        assert_eq!(reply.status, 500);
        assert_eq!(reply.text(), "fault filter abort");
    }
    assert_eq!(
        bookinfo.servers[2].hits(),
        hits,
        "aborted requests never reach ratings"
    );
    assert_eq!(mesh.flagged("FI").await, 5.0);
    assert_eq!(
        mesh.served_by("ratings", &[("end-user", "bob")]).await,
        "ratings-v1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_percentages_hold() {
    let bookinfo = Bookinfo::start().await;
    let abort = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault:
      abort: {httpStatus: 503, percentage: {value: 25}}
      delay: {fixedDelay: 1ms, percentage: {value: 50}}
    route:
    - destination: {host: ratings, subset: v1}
";
    let mesh = Mesh::start(&bookinfo.manifests(), &policy(abort));
    let n = 400;
    let mut aborted = 0;
    for _ in 0..n {
        let reply = mesh.get("ratings", "/", &[]).await;
        match reply.status.as_u16() {
            503 => aborted += 1,
            200 => {}
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    let within =
        |got: f64, p: f64| (got - n as f64 * p).abs() <= 5.0 * (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        within(aborted as f64, 0.25),
        "{aborted} of {n} aborted, expected about 25%"
    );
    assert_eq!(mesh.flagged("FI").await, aborted as f64);
    let delayed = mesh.flagged("DI").await;
    assert!(
        within(delayed, 0.5),
        "{delayed} of {n} delayed, expected about 50%"
    );
}
