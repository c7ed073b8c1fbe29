//! The dashboard end to end: the control plane's binary with `--dashboard`, real sidecars
//! (each with an admin serving Istio's metrics) in front of real workloads, traffic through
//! them; the graph over HTTP, then the page in headless Chromium (the DOM it builds, and a
//! screenshot).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::Request;
use serde_json::Value;

use crate::support::sidecars::{
    ControlPlane, Process, Sidecar, SidecarSpec, field, services, shared_cache, stamp_plugin, write,
};
use crate::support::*;

const REVIEWS: u16 = 9080;
const RATINGS: u16 = 9081;
const DETAILS: u16 = 9082;
const PRODUCTPAGE: &str = "default/productpage-v1";

/// Where Debian's `chromium` is; the browser test fails, with what to do, without it.
fn chromium() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .expect("no `chromium` on PATH: run deploy/setup.sh (Debian's chromium package)")
}

/// Headless Chromium on `url` with `args`, given time for the page's polls; its stdout.
async fn headless(url: &str, profile: &Path, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finishes within 90 s")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn api(dashboard: SocketAddr, path: &str) -> Value {
    let reply = get(dashboard, path).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.json()
}

fn by_id<'a>(items: &'a Value, id: &str) -> Option<&'a Value> {
    items.as_array()?.iter().find(|v| v["id"] == id)
}

/// The graph's service node for service `name`.
fn service<'a>(graph: &'a Value, name: &str) -> Option<&'a Value> {
    graph["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["kind"] == "service" && n["name"] == name)
}

/// The edge from `from` to `to`, if the graph has it with traffic.
fn edge<'a>(graph: &'a Value, from: &str, to: &str) -> Option<&'a Value> {
    by_id(&graph["edges"], &format!("{from}->{to}")).filter(|e| e["rate"].as_f64() > Some(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_of_live_traffic_over_http_and_in_a_browser() {
    // Before anything starts: without a browser the test fails at once, saying so.
    chromium();
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let mesh = services(&[
        ("reviews", REVIEWS),
        ("ratings", RATINGS),
        ("details", DETAILS),
    ]);
    write(&manifests, "services.yaml", &mesh);
    // mTLS: reviews takes nothing else; toward ratings the client is told to speak plaintext
    // (which ratings, PERMISSIVE, takes).
    write(
        &manifests,
        "security.yaml",
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings.default.svc.cluster.local
  trafficPolicy:
    tls: {mode: DISABLE}
",
    );
    // A user's plugin on reviews' inbound side.
    write(
        &manifests,
        "plugin.yaml",
        &stamp_plugin(wasmesh_artifacts::HEADERS, "dashboard", "")
            .replace("matchLabels: {app: echo}", "matchLabels: {app: reviews}"),
    );
    let cp = ControlPlane::start_with(
        &manifests,
        &dir.path().join("data"),
        "127.0.0.1:0",
        &[
            "--dashboard".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--dashboard-scrape-interval".as_ref(),
            "1s".as_ref(),
        ],
    );
    let dashboard: SocketAddr = field(
        &cp.process
            .wait_for_line("dashboard listening", Duration::from_secs(1)),
        "address",
    )
    .parse()
    .unwrap();

    let cache = shared_cache();
    let reviews_app = Upstream::echo("reviews-v1").await;
    let ratings_app = Upstream::echo("ratings-v1").await;
    let sidecar =
        |name: &'static str, app: &'static str, version: &str, port: Option<(u16, SocketAddr)>| {
            let labels = [("app", app), ("version", version)];
            let spec = SidecarSpec {
                name,
                labels: &labels,
                app: port,
                cache: &cache,
                outbound: "127.0.0.1:0",
            };
            let mut cmd = Sidecar::command(&cp.address, &spec);
            cmd.args([
                "--admin",
                "127.0.0.1:0",
                "--service-account",
                &format!("bookinfo-{app}"),
            ]);
            Process::spawn(name, cmd)
        };
    // Started together (their modules compile once, in the shared cache), then awaited.
    let spawned = [
        sidecar(
            "reviews-v1",
            "reviews",
            "v1",
            Some((REVIEWS, reviews_app.addr)),
        ),
        sidecar(
            "ratings-v1",
            "ratings",
            "v1",
            Some((RATINGS, ratings_app.addr)),
        ),
        // A workload that is down: its sidecar answers 503.
        sidecar("details-v1", "details", "v1", Some((DETAILS, dead_addr()))),
        sidecar("productpage-v1", "productpage", "v1", None),
    ];
    let sidecars: Vec<Sidecar> = spawned.into_iter().map(Sidecar::ready).collect();
    let productpage = sidecars[3].outbound;
    cp.wait_synced(4, Duration::from_secs(60)).await;

    // productpage calls the three services, over and over, until the test ends (two minutes
    // at most).
    let traffic = tokio::spawn(async move {
        let client = h1_client();
        let stop = Instant::now() + Duration::from_secs(120);
        while Instant::now() < stop {
            for host in ["reviews", "ratings", "details"] {
                let request = Request::get(format!("http://{productpage}/graph"))
                    .header("host", host)
                    .body(empty())
                    .unwrap();
                let _ = tokio::time::timeout(Duration::from_secs(5), client.request(request)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // The graph: productpage → each service → its workload, with rates, health and mTLS.
    let deadline = Instant::now() + Duration::from_secs(60);
    let graph = loop {
        let graph = api(dashboard, "/api/graph").await;
        let ready = ["reviews", "ratings", "details"].iter().all(|name| {
            service(&graph, name).is_some_and(|s| {
                let id = s["id"].as_str().unwrap();
                edge(&graph, PRODUCTPAGE, id).is_some()
                    && edge(&graph, id, &format!("default/{name}-v1")).is_some()
            })
        });
        if ready {
            break graph;
        }
        assert!(
            Instant::now() < deadline,
            "the graph never showed productpage's traffic: {graph:#}\ncontrol plane log:\n{}\nproductpage log:\n{}",
            cp.process.log(),
            sidecars[3].process.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let id = |name: &str| {
        service(&graph, name).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (reviews, ratings, details) = (id("reviews"), id("ratings"), id("details"));
    for workload in [
        PRODUCTPAGE,
        "default/reviews-v1",
        "default/ratings-v1",
        "default/details-v1",
    ] {
        let node =
            by_id(&graph["nodes"], workload).unwrap_or_else(|| panic!("{workload}: {graph:#}"));
        assert_eq!(node["kind"], "workload");
        assert_eq!(node["version"], "v1", "{node}");
    }
    let to_reviews = edge(&graph, PRODUCTPAGE, &reviews).unwrap();
    assert_eq!(to_reviews["mtls"], true, "STRICT: {to_reviews}");
    assert_eq!(to_reviews["health"], "healthy", "{to_reviews}");
    assert_eq!(to_reviews["protocol"], "http", "{to_reviews}");
    assert!(to_reviews["p99_ms"].as_f64().is_some(), "{to_reviews}");
    assert_eq!(
        edge(&graph, &reviews, "default/reviews-v1").unwrap()["mtls"],
        true
    );
    let to_ratings = edge(&graph, PRODUCTPAGE, &ratings).unwrap();
    assert_eq!(to_ratings["mtls"], false, "TLS disabled: {to_ratings}");
    assert_eq!(to_ratings["health"], "healthy", "{to_ratings}");
    let to_details = edge(&graph, PRODUCTPAGE, &details).unwrap();
    assert_eq!(to_details["health"], "failure", "{to_details}");
    assert!(to_details["error_percent"].as_f64() > Some(20.0));
    assert!(
        graph["scrapes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["error"].is_null() && s["metrics_address"] != ""),
        "every sidecar scraped: {:#}",
        graph["scrapes"]
    );

    // A workload's traffic and its plugins: reviews has the user's, productpage's outbound
    // the mesh's traffic plugins.
    let node = api(dashboard, "/api/node?id=default%2Freviews-v1").await;
    assert_eq!(node["node"]["proxies"][0], "reviews-v1.default");
    assert!(
        by_id(&node["inbound"], &format!("{reviews}->default/reviews-v1")).is_some(),
        "{node:#}"
    );
    let plugins = |node: &Value| -> Vec<(String, String, String)> {
        node["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["listeners"].as_array().unwrap())
            .flat_map(|l| {
                l["plugins"].as_array().unwrap().iter().map(|p| {
                    (
                        l["direction"].as_str().unwrap().to_owned(),
                        p["name"].as_str().unwrap().to_owned(),
                        p["kind"].as_str().unwrap().to_owned(),
                    )
                })
            })
            .collect()
    };
    let stamp = (
        "inbound".to_owned(),
        "default.stamp".to_owned(),
        "wasmplugin".to_owned(),
    );
    assert!(plugins(&node).contains(&stamp), "{node:#}");
    let node = api(
        dashboard,
        &format!("/api/node?id={}", PRODUCTPAGE.replace('/', "%2F")),
    )
    .await;
    assert_eq!(node["outbound"].as_array().unwrap().len(), 3, "{node:#}");
    let router = (
        "outbound".to_owned(),
        "router".to_owned(),
        "traffic".to_owned(),
    );
    assert!(plugins(&node).contains(&router), "{node:#}");

    // The page in a browser: the nodes and edges by their data attributes, the padlock on
    // the mTLS edge, rates in the labels, and reviews' panel with its plugin.
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{dashboard}/#node=default/reviews-v1");
    let dom = headless(&url, profile.path(), &["--dump-dom"])
        .await
        .replace("&gt;", ">");
    for node in [
        PRODUCTPAGE,
        "default/reviews-v1",
        "default/ratings-v1",
        "default/details-v1",
    ] {
        assert!(
            dom.contains(&format!("data-node=\"{node}\" data-kind=\"workload\"")),
            "{node} not drawn:\n{dom}"
        );
    }
    for service in [&reviews, &ratings, &details] {
        assert!(
            dom.contains(&format!("data-node=\"{service}\" data-kind=\"service\"")),
            "{service} not drawn:\n{dom}"
        );
    }
    let drawn = |from: &str, to: &str| {
        let start = dom
            .find(&format!("data-edge=\"{from}->{to}\""))
            .unwrap_or_else(|| panic!("no edge {from}->{to}:\n{dom}"));
        let end = dom[start..].find("</g>").unwrap() + start;
        dom[start..end].to_owned()
    };
    let reviews_edge = drawn(PRODUCTPAGE, &reviews);
    assert!(
        reviews_edge.contains("data-mtls=\"true\""),
        "{reviews_edge}"
    );
    assert!(
        reviews_edge.contains("data-lock=\"true\""),
        "{reviews_edge}"
    );
    assert!(reviews_edge.contains(" rps · "), "{reviews_edge}");
    assert!(
        reviews_edge.contains("data-health=\"healthy\""),
        "{reviews_edge}"
    );
    let ratings_edge = drawn(PRODUCTPAGE, &ratings);
    assert!(
        ratings_edge.contains("data-mtls=\"false\""),
        "{ratings_edge}"
    );
    assert!(!ratings_edge.contains("data-lock"), "{ratings_edge}");
    assert!(drawn(PRODUCTPAGE, &details).contains("data-health=\"failure\""));
    drawn(&reviews, "default/reviews-v1");
    assert!(
        dom.contains("data-panel-node=\"default/reviews-v1\""),
        "the panel did not open:\n{dom}"
    );
    assert!(
        dom.contains("data-plugin=\"default.stamp\" data-plugin-kind=\"wasmplugin\""),
        "{dom}"
    );

    let screenshot = dir.path().join("graph.png");
    headless(
        &url,
        profile.path(),
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,800",
            "--hide-scrollbars",
        ],
    )
    .await;
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let (width, height) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((width, height), (1280, 800));
    assert!(png.len() > 10_000, "{} bytes: an empty page?", png.len());
    if let Some(keep) = std::env::var_os("WASMESH_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).unwrap();
    }
    traffic.abort();
}
