//! The wasmesh local demo: a mesh on the embedded default. Bookinfo's and httpbin's workloads
//! run on loopback, each behind its own `wasmesh-proxy` sidecar; `wasmesh-controlplane`
//! watches a directory of Istio's own task manifests (embedded in wasmesh-controlplane) and
//! configures every sidecar with the four traffic plugins. Each task is applied by editing
//! the directory while traffic runs: request routing, traffic shifting, a canary under load,
//! fault injection, mirroring, circuit breaking and a broken edit. It prints what the clients
//! saw and `wasmesh proxy-status`.

mod mesh;
mod services;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use wasmesh_controlplane::samples::{
    DESTINATION_RULE_ALL, HTTPBIN_CIRCUIT_BREAKER, HTTPBIN_DESTINATION_RULE, HTTPBIN_MIRROR,
    VIRTUAL_SERVICE_ALL_V1, VIRTUAL_SERVICE_RATINGS_TEST_ABORT, VIRTUAL_SERVICE_RATINGS_TEST_DELAY,
    VIRTUAL_SERVICE_REVIEWS_50_V3, VIRTUAL_SERVICE_REVIEWS_80_20, VIRTUAL_SERVICE_REVIEWS_TEST_V2,
};

use mesh::{Mesh, Reply};
use services::Samples;

#[derive(Parser)]
#[command(about = "Istio's traffic-management tasks on a local mesh of wasmesh sidecars")]
struct Args {
    /// Where the four traffic plugins' modules are.
    #[arg(long, default_value = "target/wasm32-wasip1/release")]
    plugins: PathBuf,
}

/// Who served a set of replies, as `name=count` pairs.
fn tally(replies: &[Reply]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in replies {
        let key = if r.status == 200 {
            r.served_by.clone()
        } else {
            format!("{} from {}", r.status, r.served_by)
        };
        *counts.entry(key).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    parts.join(", ")
}

fn median_ms(replies: &[Reply]) -> f64 {
    let mut ms: Vec<f64> = replies
        .iter()
        .map(|r| r.elapsed.as_secs_f64() * 1e3)
        .collect();
    ms.sort_by(f64::total_cmp);
    ms.get(ms.len() / 2).copied().unwrap_or(0.0)
}

/// Step 9's policies: Istio's authorization task shapes, on httpbin.
const HTTPBIN_AUTHORIZATION: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-viewer}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-blocked}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - when: [{key: 'request.headers[x-user]', values: [blocked]}]
";

async fn send(
    mesh: &Mesh,
    host: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> anyhow::Result<Vec<Reply>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(mesh.get(host, headers).await?);
    }
    Ok(out)
}

/// The chains a set of replies took, counted.
fn chains(replies: &[Reply]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in replies {
        let key = if r.status == 200 {
            r.chain.clone()
        } else {
            format!("{} from {}", r.status, r.served_by)
        };
        *counts.entry(key).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    parts.join("\n          ")
}

fn step(title: &str, files: &str, took: Duration) {
    println!(
        "\n{title}\n  applied: {files} (every proxy had it {:.0} ms after the edit)",
        took.as_secs_f64() * 1e3
    );
}

/// Istio's virtual-service-all-v1.yaml as one file per VirtualService (`reviews.yaml`, ...),
/// so that a task's file for one service replaces that service's, as `kubectl apply` does.
fn all_v1() -> Vec<(String, String)> {
    VIRTUAL_SERVICE_ALL_V1
        .split("\n---\n")
        .map(|doc| {
            let name = doc
                .lines()
                .find_map(|l| l.trim().strip_prefix("name: "))
                .expect("each document is named");
            (format!("{name}.yaml"), doc.to_owned())
        })
        .collect()
}

/// reviews: `percent` to v3, the rest to v1.
fn canary(percent: u32) -> String {
    wasmesh_controlplane::samples::reviews_canary("v3", percent)
}

/// Clients that send `n` requests each to `host` at the same time.
async fn concurrent(
    mesh: &Arc<Mesh>,
    host: &'static str,
    clients: usize,
    n: usize,
) -> anyhow::Result<Vec<Reply>> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let mesh = mesh.clone();
            tokio::spawn(async move { send(&mesh, host, &[], n).await })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let samples = Samples::start().await?;
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    std::fs::write(manifests.join("services.yaml"), samples.manifests())?;
    std::fs::write(
        manifests.join("destination-rule-all.yaml"),
        DESTINATION_RULE_ALL,
    )?;
    for (name, text) in all_v1() {
        std::fs::write(manifests.join(name), text)?;
    }
    let plugins = std::path::absolute(&args.plugins)?;
    let mut mesh = Mesh::start(&manifests, &plugins, &samples.all()).await?;

    println!("wasmesh demo: Istio's traffic-management tasks on a local mesh of sidecars");
    println!(
        "  wasmesh-controlplane on {}, watching {}",
        mesh.control_plane,
        manifests.display()
    );
    println!(
        "  the service graph (`wasmesh dashboard`): http://{}/",
        mesh.dashboard
    );
    println!(
        "  {} sidecars (wasmesh-proxy): one per workload (productpage, details, ratings, reviews \
         v1/v2/v3, httpbin v1/v2) and one for the demo's client (as Istio's sleep pod)",
        mesh.proxies()
    );
    println!(
        "  every hop is sidecar to sidecar: client > productpage > reviews > ratings, each \
         workload calling through its own sidecar"
    );
    println!(
        "  traffic policy: the router, fault, mirror and circuit-breaker Wasm plugins from {}, \
         shipped by the control plane",
        plugins.display()
    );

    println!(
        "\n1. Request routing: all traffic to v1\n  applied: destination-rule-all.yaml, \
         virtual-service-all-v1.yaml (one file per service)"
    );
    let replies = send(&mesh, "productpage:9080", &[], 100).await?;
    println!(
        "  100 requests to productpage:\n          {}",
        chains(&replies)
    );

    let took = mesh
        .apply(&[("reviews.yaml", VIRTUAL_SERVICE_REVIEWS_TEST_V2)])
        .await?;
    step(
        "2. Request routing: end-user jason to reviews v2, everyone else to v1",
        "virtual-service-reviews-test-v2.yaml as reviews.yaml",
        took,
    );
    let jason = send(&mesh, "productpage:9080", &[("end-user", "jason")], 50).await?;
    let others = send(&mesh, "productpage:9080", &[], 50).await?;
    println!("  jason:  {}", chains(&jason));
    println!("  others: {}", chains(&others));

    let took = mesh
        .apply(&[("reviews.yaml", VIRTUAL_SERVICE_REVIEWS_50_V3)])
        .await?;
    step(
        "3. Traffic shifting: 50/50 between reviews v1 and v3",
        "virtual-service-reviews-50-v3.yaml",
        took,
    );
    println!(
        "  400 requests: {}",
        chains(&send(&mesh, "productpage:9080", &[], 400).await?)
    );
    let took = mesh
        .apply(&[("reviews.yaml", VIRTUAL_SERVICE_REVIEWS_80_20)])
        .await?;
    step(
        "   then 80/20 between reviews v1 and v2",
        "virtual-service-reviews-80-20.yaml",
        took,
    );
    println!(
        "  400 requests: {}",
        chains(&send(&mesh, "productpage:9080", &[], 400).await?)
    );

    mesh.apply(&[("reviews.yaml", &canary(0))]).await?;
    println!(
        "\n4. A canary rolled out under load: reviews v3 at 0, 10, 20, 50, 100 percent\n  \
         applied: reviews.yaml re-weighted four times while 4 clients keep calling productpage"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (client_outbound, client) = (mesh.client_outbound, mesh.client());
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, sent, failed) =
                (client.clone(), stop.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(SeqCst) {
                    let ok = mesh::get_with(&client, client_outbound, "productpage:9080", &[])
                        .await
                        .is_ok_and(|r| r.status == 200 && !r.chain.contains("unavailable"));
                    if !ok {
                        failed.fetch_add(1, SeqCst);
                    }
                    sent.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    for percent in [10, 20, 50, 100] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let took = mesh.apply(&[("reviews.yaml", &canary(percent))]).await?;
        println!(
            "  {percent:>3}% to v3: every proxy had it {:.0} ms after the edit",
            took.as_secs_f64() * 1e3
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, SeqCst);
    for c in clients {
        c.await?;
    }
    println!(
        "  {} requests during the rollout, {} failed; now: {}",
        sent.load(SeqCst),
        failed.load(SeqCst),
        chains(&send(&mesh, "productpage:9080", &[], 20).await?)
    );

    let delay = VIRTUAL_SERVICE_RATINGS_TEST_DELAY.replace("fixedDelay: 7s", "fixedDelay: 500ms");
    let took = mesh
        .apply(&[
            ("reviews.yaml", VIRTUAL_SERVICE_REVIEWS_TEST_V2),
            ("ratings.yaml", &delay),
        ])
        .await?;
    step(
        "5. Fault injection: a delay for jason's calls from reviews to ratings",
        "virtual-service-ratings-test-delay.yaml (its 7s delay shortened to 500ms)",
        took,
    );
    let jason = send(&mesh, "productpage:9080", &[("end-user", "jason")], 4).await?;
    let others = send(&mesh, "productpage:9080", &[], 50).await?;
    println!(
        "  jason:  {} (median {:.0} ms)",
        chains(&jason),
        median_ms(&jason)
    );
    println!(
        "  others: {} (median {:.2} ms)",
        chains(&others),
        median_ms(&others)
    );

    let took = mesh
        .apply(&[("ratings.yaml", VIRTUAL_SERVICE_RATINGS_TEST_ABORT)])
        .await?;
    step(
        "6. Fault injection: an HTTP abort for jason's calls from reviews to ratings",
        "virtual-service-ratings-test-abort.yaml",
        took,
    );
    println!(
        "  jason:  {}",
        chains(&send(&mesh, "productpage:9080", &[("end-user", "jason")], 20).await?)
    );
    println!(
        "  others: {}",
        chains(&send(&mesh, "productpage:9080", &[], 20).await?)
    );

    let took = mesh
        .apply(&[(
            "httpbin.yaml",
            &format!("{HTTPBIN_DESTINATION_RULE}\n---\n{HTTPBIN_MIRROR}"),
        )])
        .await?;
    step(
        "7. Mirroring: every request to httpbin v1 copied to v2",
        "httpbin-destination-rule.yaml, httpbin-mirror.yaml",
        took,
    );
    let before = samples.httpbin[1].hits();
    println!(
        "  100 requests to httpbin: {}",
        tally(&send(&mesh, "httpbin:8000", &[], 100).await?)
    );
    // Mirrored copies are fire-and-forget: give the last ones a moment to land.
    for _ in 0..50 {
        if samples.httpbin[1].hits() >= before + 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shadow: Vec<String> = samples.httpbin[1]
        .hosts()
        .iter()
        .map(|(h, n)| format!("Host {h}: {n}"))
        .collect();
    println!(
        "  {} saw the copies ({}), their responses discarded",
        samples.httpbin[1].name,
        shadow.join(", ")
    );

    let took = mesh
        .apply(&[("httpbin.yaml", HTTPBIN_CIRCUIT_BREAKER)])
        .await?;
    step(
        "8. Circuit breaking: maxConnections 1, http1MaxPendingRequests 1, maxRequestsPerConnection 1",
        "the task's httpbin DestinationRule, enforced by the client's sidecar",
        took,
    );
    let mesh = Arc::new(mesh);
    for clients in [1, 2, 3] {
        let replies = concurrent(&mesh, "httpbin:8000", clients, 60).await?;
        let overflow = replies.iter().filter(|r| r.status == 503).count();
        println!(
            "  {clients} concurrent client(s), {} requests: {} ({:.0}% tripped the breaker)",
            replies.len(),
            tally(&replies),
            100.0 * overflow as f64 / replies.len() as f64
        );
    }
    let mut mesh = Arc::into_inner(mesh).expect("clients are done");

    // Authorization: who may call httpbin, judged by httpbin's sidecar on the caller's SPIFFE
    // id from mTLS.
    let took = mesh
        .apply(&[("httpbin-authz.yaml", HTTPBIN_AUTHORIZATION)])
        .await?;
    step(
        "9. Authorization: httpbin allows GET from sleep's identity, and denies `x-user: blocked`",
        "AuthorizationPolicy (ALLOW by principal and method, DENY by header), the authz plugin",
        took,
    );
    println!(
        "  as sleep (spiffe://cluster.local/ns/default/sa/sleep): {}",
        tally(&send(&mesh, "httpbin:8000", &[], 10).await?)
    );
    println!(
        "  as sleep, with x-user: blocked:                       {}",
        tally(&send(&mesh, "httpbin:8000", &[("x-user", "blocked")], 10).await?)
    );

    // A broken edit: reported, the rest of the mesh's config stays as it was.
    let broken = VIRTUAL_SERVICE_REVIEWS_TEST_V2.replace("route:", "rout:");
    let took = mesh
        .apply(&[("reviews.yaml", &broken), ("ratings.yaml", "")])
        .await?;
    step(
        "10. A broken edit: a typo in reviews.yaml (`rout:`), and ratings.yaml removed",
        "reviews.yaml keeps its last good version; ratings' fault is gone",
        took,
    );
    let jason = send(&mesh, "productpage:9080", &[("end-user", "jason")], 10).await?;
    println!("  jason: {}", chains(&jason));

    println!("\nwhat the sidecars counted (their admin /stats/prometheus, summed):");
    println!(
        "  delays injected (DI): {}, aborts injected (FI): {}, overflows (UO): {}",
        mesh.flagged("DI").await?,
        mesh.flagged("FI").await?,
        mesh.flagged("UO").await?
    );
    println!(
        "  mTLS between sidecars (auto, PERMISSIVE): {} handshakes on inbound listeners, {} failed",
        mesh.stat("wasmesh_downstream_tls_handshake_total").await?,
        mesh.stat("wasmesh_downstream_tls_error_total").await?,
    );
    println!(
        "  config reloads: {} accepted, {} rejected",
        mesh.stat("wasmesh_config_reloads_total{result=\"ok\"}")
            .await?,
        mesh.stat("wasmesh_config_reloads_total{result=\"rejected\"}")
            .await?,
    );
    let mut took: Vec<f64> = mesh
        .convergence
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    took.sort_by(f64::total_cmp);
    println!(
        "  {} edits, each in effect on all {} proxies after: median {:.0} ms, slowest {:.0} ms",
        took.len(),
        mesh.proxies(),
        took[took.len() / 2],
        took[took.len() - 1]
    );

    println!("\n$ wasmesh proxy-status");
    let (table, _) = wasmesh_cli::mesh::proxy_status(&mesh.control_plane).await?;
    print!("{table}");

    let failed = mesh.stop().await?;
    println!("\nevery sidecar and the control plane drained on SIGTERM");
    if !failed.is_empty() {
        bail!("some exits failed: {}", failed.join(", "));
    }
    Ok(())
}
