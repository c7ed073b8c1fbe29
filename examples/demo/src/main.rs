//! The wasmesh local demo: a mesh on the embedded default. Bookinfo's and httpbin's workloads
//! run on loopback, Istio's own task manifests (embedded in wasmesh-controlplane) are
//! translated into the real `wasmesh-proxy`'s config with the four traffic plugins, and each
//! task's traffic goes through it: request routing, traffic shifting, a canary under load,
//! fault injection, mirroring and circuit breaking. It prints what the clients saw.

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
#[command(about = "Istio's traffic-management tasks on a local wasmesh mesh")]
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

fn step(title: &str, manifests: &str) {
    println!("\n{title}\n  applied: {manifests}");
}

fn bookinfo(virtual_service: &str) -> String {
    format!("{virtual_service}\n---\n{DESTINATION_RULE_ALL}\n---\n{VIRTUAL_SERVICE_ALL_V1}")
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
    let options = mesh::options(&args.plugins)?;
    let samples = Samples::start().await?;
    let dir = tempfile::tempdir()?;
    let mesh = Arc::new(
        Mesh::start(
            dir.path(),
            &samples.manifests(),
            &bookinfo(VIRTUAL_SERVICE_ALL_V1),
            options,
        )
        .await?,
    );

    println!("wasmesh demo: Istio's traffic-management tasks on a local mesh");
    println!(
        "  {} workloads on loopback: productpage, details, ratings, reviews v1/v2/v3, httpbin v1/v2",
        samples.count()
    );
    println!(
        "  wasmesh-proxy on {} (2 workers), admin on {}",
        mesh.ingress, mesh.admin
    );
    println!(
        "  traffic policy: the router, fault, mirror and circuit-breaker Wasm plugins from {}",
        args.plugins.display()
    );
    println!(
        "  config: Istio manifests translated by wasmesh-controlplane into {}",
        mesh.config_path.display()
    );

    step(
        "1. Request routing: all traffic to v1",
        "destination-rule-all.yaml, virtual-service-all-v1.yaml",
    );
    let replies = send(&mesh, "reviews", &[], 100).await?;
    println!("  100 requests to reviews: {}", tally(&replies));

    step(
        "2. Request routing: end-user jason to v2, everyone else to v1",
        "virtual-service-reviews-test-v2.yaml",
    );
    mesh.apply(&bookinfo(VIRTUAL_SERVICE_REVIEWS_TEST_V2))
        .await?;
    let jason = send(&mesh, "reviews", &[("end-user", "jason")], 50).await?;
    let others = send(&mesh, "reviews", &[], 50).await?;
    println!("  jason:  {}", tally(&jason));
    println!("  others: {}", tally(&others));

    step(
        "3. Traffic shifting: 50/50 between v1 and v3, then 80/20 between v1 and v2",
        "virtual-service-reviews-50-v3.yaml, virtual-service-reviews-80-20.yaml",
    );
    mesh.apply(&bookinfo(VIRTUAL_SERVICE_REVIEWS_50_V3)).await?;
    println!(
        "  50/50, 400 requests: {}",
        tally(&send(&mesh, "reviews", &[], 400).await?)
    );
    mesh.apply(&bookinfo(VIRTUAL_SERVICE_REVIEWS_80_20)).await?;
    println!(
        "  80/20, 400 requests: {}",
        tally(&send(&mesh, "reviews", &[], 400).await?)
    );

    step(
        "4. A canary rolled out under load: reviews v3 at 0, 10, 20, 50, 100 percent",
        "a VirtualService re-weighted five times while 4 clients keep sending",
    );
    mesh.apply(&bookinfo(&canary(0))).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (mesh, stop, sent, failed) =
                (mesh.clone(), stop.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(SeqCst) {
                    match mesh.get("reviews", &[]).await {
                        Ok(r) if r.status == 200 => {}
                        _ => {
                            failed.fetch_add(1, SeqCst);
                        }
                    }
                    sent.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    for percent in [10, 20, 50, 100] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        mesh.apply(&bookinfo(&canary(percent))).await?;
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
        tally(&send(&mesh, "reviews", &[], 20).await?)
    );

    step(
        "5. Fault injection: a delay for jason's calls to ratings",
        "virtual-service-ratings-test-delay.yaml (its 7s delay shortened to 500ms)",
    );
    let delay = VIRTUAL_SERVICE_RATINGS_TEST_DELAY.replace("fixedDelay: 7s", "fixedDelay: 500ms");
    mesh.apply(&bookinfo(&format!(
        "{delay}\n---\n{VIRTUAL_SERVICE_REVIEWS_TEST_V2}"
    )))
    .await?;
    let jason = send(&mesh, "ratings", &[("end-user", "jason")], 4).await?;
    let others = send(&mesh, "ratings", &[], 50).await?;
    println!(
        "  jason:  {} (median {:.0} ms)",
        tally(&jason),
        median_ms(&jason)
    );
    println!(
        "  others: {} (median {:.2} ms)",
        tally(&others),
        median_ms(&others)
    );

    step(
        "6. Fault injection: an HTTP abort for jason's calls to ratings",
        "virtual-service-ratings-test-abort.yaml",
    );
    mesh.apply(&bookinfo(&format!(
        "{VIRTUAL_SERVICE_RATINGS_TEST_ABORT}\n---\n{VIRTUAL_SERVICE_REVIEWS_TEST_V2}"
    )))
    .await?;
    println!(
        "  jason:  {}",
        tally(&send(&mesh, "ratings", &[("end-user", "jason")], 20).await?)
    );
    println!(
        "  others: {}",
        tally(&send(&mesh, "ratings", &[], 20).await?)
    );

    step(
        "7. Mirroring: every request to httpbin v1 copied to v2",
        "httpbin-destination-rule.yaml, httpbin-mirror.yaml",
    );
    mesh.apply(&bookinfo(&format!(
        "{HTTPBIN_DESTINATION_RULE}\n---\n{HTTPBIN_MIRROR}"
    )))
    .await?;
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

    step(
        "8. Circuit breaking: maxConnections 1, http1MaxPendingRequests 1, maxRequestsPerConnection 1",
        "the task's httpbin DestinationRule",
    );
    mesh.apply(&bookinfo(HTTPBIN_CIRCUIT_BREAKER)).await?;
    println!(
        "  (as in Envoy, a worker with no connection to an endpoint may still open one: with two\n   \
         workers and two httpbin pods, two clients may each get their own and never trip it)"
    );
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

    println!("\nwhat the proxy counted (admin /stats/prometheus):");
    println!(
        "  delays injected (DI): {}, aborts injected (FI): {}, overflows (UO): {}",
        mesh.flagged("DI").await?,
        mesh.flagged("FI").await?,
        mesh.flagged("UO").await?
    );
    println!(
        "  config reloads: {} accepted, {} rejected (the demo made {} changes, each by POST \
         /config_reload; the proxy's watch of its file skips a text already loaded)",
        mesh.stat("wasmesh_config_reloads_total{result=\"ok\"}")
            .await?,
        mesh.stat("wasmesh_config_reloads_total{result=\"rejected\"}")
            .await?,
        mesh.applied.load(SeqCst)
    );

    let mesh = Arc::into_inner(mesh).expect("clients are done");
    let status = mesh.stop().await?;
    println!("\nproxy drained on SIGTERM and exited with {status}");
    if !status.success() {
        bail!("the proxy exited with {status}");
    }
    Ok(())
}
