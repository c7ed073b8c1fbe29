//! Istio's request-routing and traffic-shifting tasks, end to end: Bookinfo-like services,
//! Istio's own manifests translated by the control plane, the router plugin deciding.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use wasmesh_controlplane::samples::{
    DESTINATION_RULE_ALL, VIRTUAL_SERVICE_ALL_V1, VIRTUAL_SERVICE_REVIEWS_50_V3,
    VIRTUAL_SERVICE_REVIEWS_80_20, VIRTUAL_SERVICE_REVIEWS_TEST_V2,
};

use std::time::Duration;

use wasmesh_controlplane::PluginModule;

use crate::support::mesh::{Bookinfo, Mesh, options};

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

/// reviews: `percent` to v2, the rest to v1.
fn canary(percent: u32) -> String {
    wasmesh_controlplane::samples::reviews_canary("v2", percent)
}

/// Clients sending requests for `reviews` in a loop until stopped, keeping every failure.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    clients: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(mesh: &Arc<Mesh>, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (mesh, stop, sent) = (mesh.clone(), stop.clone(), sent.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    while !stop.load(SeqCst) {
                        let reply = mesh.get("reviews", "/", &[]).await;
                        sent.fetch_add(1, SeqCst);
                        if reply.status != 200 {
                            failures.push(format!("{} {}", reply.status, reply.text()));
                        }
                    }
                    failures
                })
            })
            .collect();
        Load {
            stop,
            sent,
            clients,
        }
    }

    /// Waits until `n` more requests were answered.
    async fn flows(&self, n: usize) {
        let before = self.sent.load(SeqCst);
        let sent = self.sent.clone();
        crate::support::eventually("requests flow", Duration::from_secs(10), || {
            let sent = sent.clone();
            async move { sent.load(SeqCst) >= before + n }
        })
        .await;
    }

    /// Stops the clients; asserts no request failed and returns how many were sent.
    async fn finish(self) -> usize {
        self.stop.store(true, SeqCst);
        for client in self.clients {
            let failures = client.await.unwrap();
            assert!(failures.is_empty(), "requests failed: {failures:?}");
        }
        self.sent.load(SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_rolls_out_under_load_without_errors() {
    let bookinfo = Bookinfo::start().await;
    let mesh = Arc::new(Mesh::start(
        &bookinfo.manifests(),
        &format!("{DESTINATION_RULE_ALL}\n---\n{}", canary(0)),
    ));
    let load = Load::start(&mesh, 4);
    for percent in [10, 20, 50, 100] {
        load.flows(200).await;
        mesh.apply(&format!("{DESTINATION_RULE_ALL}\n---\n{}", canary(percent)));
    }
    load.flows(200).await;
    assert!(load.finish().await >= 1000);
    // Fully rolled out: everything on v2.
    let counts = mesh.spread("reviews", 50).await;
    assert_eq!(counts.get("reviews-v2"), Some(&50), "{counts:?}");
}

/// A copy of a module with a custom section appended: the same code, a different module (its
/// own hash and compilation), as a new release of a plugin would be.
fn new_release(module: &str, dir: &std::path::Path, release: u8) -> String {
    let mut bytes = std::fs::read(module).unwrap();
    let name = b"wasmesh-release";
    // Custom section: id 0, size, name (length-prefixed), payload.
    bytes.extend_from_slice(&[0, (1 + name.len() + 1) as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.push(release);
    let file = std::path::Path::new(module).file_name().unwrap();
    let path = dir.join(format!("{release}-{}", file.to_string_lossy()));
    std::fs::write(&path, bytes).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_plugin_releases_roll_out_under_load_without_errors() {
    let bookinfo = Bookinfo::start().await;
    let policy = |subset: &str| {
        format!(
            "{DESTINATION_RULE_ALL}\n---\n{}",
            canary(if subset == "v2" { 100 } else { 0 })
        )
    };
    let mesh = Arc::new(Mesh::start(&bookinfo.manifests(), &policy("v1")));
    let dir = tempfile::tempdir().unwrap();
    let load = Load::start(&mesh, 4);
    for release in 1..=3u8 {
        let mut options = options();
        let plugins = options.plugins.as_mut().unwrap();
        for module in [
            &mut plugins.router,
            &mut plugins.fault,
            &mut plugins.mirror,
            &mut plugins.circuit_breaker,
        ] {
            *module = PluginModule::new(new_release(&module.url, dir.path(), release));
        }
        load.flows(200).await;
        // Every plugin's module and the routing change at once.
        let subset = if release % 2 == 1 { "v2" } else { "v1" };
        mesh.apply_with(&policy(subset), &options);
        load.flows(50).await;
        let counts = mesh.spread("reviews", 20).await;
        assert_eq!(
            counts.get(&format!("reviews-{subset}")),
            Some(&20),
            "release {release} serves: {counts:?}"
        );
    }
    load.flows(200).await;
    assert!(load.finish().await >= 850);
}
