//! Istio's request-routing and traffic-shifting tasks, end to end: Bookinfo-like services,
//! Istio's own manifests translated by the control plane, the router plugin deciding.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use wasmesh_controlplane::samples::{
    DESTINATION_RULE_ALL, VIRTUAL_SERVICE_ALL_V1, VIRTUAL_SERVICE_REVIEWS_50_V3,
    VIRTUAL_SERVICE_REVIEWS_80_20, VIRTUAL_SERVICE_REVIEWS_TEST_V2,
};

use crate::support::mesh::{Bookinfo, Mesh};

/// `n` draws of probability `p` land within five standard deviations of `n * p`.
fn assert_share(counts: &std::collections::HashMap<String, usize>, who: &str, n: usize, p: f64) {
    let got = counts.get(who).copied().unwrap_or(0) as f64;
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (got - mean).abs() <= 5.0 * sd,
        "{who}: {got} of {n}, expected about {mean} (±{:.0}); all: {counts:?}",
        5.0 * sd
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_traffic_to_v1_then_jason_to_v2() {
    let bookinfo = Bookinfo::start().await;
    let policy = format!("{DESTINATION_RULE_ALL}\n---\n{VIRTUAL_SERVICE_ALL_V1}");
    let mesh = Mesh::start(&bookinfo.manifests(), &policy);

    // Without the VirtualServices, reviews would round-robin over three versions.
    let spread = mesh.spread("reviews", 30).await;
    assert_eq!(spread.get("reviews-v1"), Some(&30), "{spread:?}");
    assert_eq!(
        mesh.served_by("productpage:9080", &[]).await,
        "productpage-v1"
    );
    assert_eq!(
        mesh.served_by("ratings.default.svc.cluster.local", &[])
            .await,
        "ratings-v1"
    );

    // Route jason to v2: the task's `kubectl apply` replaces VirtualService `reviews` (of two
    // resources with one name, the control plane keeps the first).
    mesh.apply(&format!(
        "{VIRTUAL_SERVICE_REVIEWS_TEST_V2}\n---\n{DESTINATION_RULE_ALL}\n---\n{VIRTUAL_SERVICE_ALL_V1}"
    ));

    for _ in 0..10 {
        assert_eq!(
            mesh.served_by("reviews", &[("end-user", "jason")]).await,
            "reviews-v2"
        );
        assert_eq!(
            mesh.served_by("reviews", &[("end-user", "bob")]).await,
            "reviews-v1"
        );
        assert_eq!(mesh.served_by("reviews", &[]).await, "reviews-v1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shifting_splits_by_weight() {
    let bookinfo = Bookinfo::start().await;
    let mesh = Mesh::start(
        &bookinfo.manifests(),
        &format!("{DESTINATION_RULE_ALL}\n---\n{VIRTUAL_SERVICE_REVIEWS_50_V3}"),
    );
    let n = 400;
    let counts = mesh.spread("reviews", n).await;
    assert_share(&counts, "reviews-v1", n, 0.5);
    assert_share(&counts, "reviews-v3", n, 0.5);
    assert_eq!(counts.get("reviews-v2"), None);

    mesh.apply(&format!(
        "{DESTINATION_RULE_ALL}\n---\n{VIRTUAL_SERVICE_REVIEWS_80_20}"
    ));
    let counts = mesh.spread("reviews", n).await;
    assert_share(&counts, "reviews-v1", n, 0.8);
    assert_share(&counts, "reviews-v2", n, 0.2);

    mesh.apply(&format!("{DESTINATION_RULE_ALL}\n---\n{}", canary(10)));
    let counts = mesh.spread("reviews", n).await;
    assert_share(&counts, "reviews-v1", n, 0.9);
    assert_share(&counts, "reviews-v2", n, 0.1);
}

/// reviews: v1 gets `100 - percent`, v2 `percent`.
fn canary(percent: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {}
    - destination: {{host: reviews, subset: v2}}
      weight: {percent}
",
        100 - percent
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_rolls_out_under_load_without_errors() {
    let bookinfo = Bookinfo::start().await;
    let mesh = Arc::new(Mesh::start(
        &bookinfo.manifests(),
        &format!("{DESTINATION_RULE_ALL}\n---\n{}", canary(0)),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (mesh, stop, sent) = (mesh.clone(), stop.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(SeqCst) {
                let reply = mesh.get("reviews", "/", &[]).await;
                sent.fetch_add(1, SeqCst);
                if reply.status != 200 {
                    failures.push(format!("{} {}", reply.status, reply.text()));
                }
            }
            failures
        }));
    }
    for percent in [10, 20, 50, 100] {
        let before = sent.load(SeqCst);
        crate::support::eventually("requests flow", std::time::Duration::from_secs(10), || {
            let sent = sent.clone();
            async move { sent.load(SeqCst) >= before + 200 }
        })
        .await;
        mesh.apply(&format!("{DESTINATION_RULE_ALL}\n---\n{}", canary(percent)));
    }
    let before = sent.load(SeqCst);
    crate::support::eventually("requests flow", std::time::Duration::from_secs(10), || {
        let sent = sent.clone();
        async move { sent.load(SeqCst) >= before + 200 }
    })
    .await;
    stop.store(true, SeqCst);
    for client in clients {
        let failures = client.await.unwrap();
        assert!(
            failures.is_empty(),
            "requests failed during the rollout: {failures:?}"
        );
    }
    assert!(sent.load(SeqCst) >= 1000);
    // Fully rolled out: everything on v2.
    let counts = mesh.spread("reviews", 50).await;
    assert_eq!(counts.get("reviews-v2"), Some(&50), "{counts:?}");
}
