//! The wasmesh local demo: starts sample services, runs the real `wasmesh-proxy` binary in
//! front of them from `examples/demo/proxy.yaml`, sends traffic through it, and reports what
//! the clients saw and what the proxy counted.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncBufReadExt;

const TEMPLATE: &str = include_str!("../proxy.yaml");

/// A sample service: answers with its name; some fail or stall on purpose.
#[derive(Clone, Copy)]
enum Behaviour {
    Ok,
    /// Every `n`th request gets a 503.
    FailEvery(usize),
    Stall(Duration),
}

async fn start_service(name: &'static str, behaviour: Behaviour) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let n = seen.fetch_add(1, SeqCst) + 1;
                        async move {
                            let status = match behaviour {
                                Behaviour::FailEvery(k) if n.is_multiple_of(k) => {
                                    StatusCode::SERVICE_UNAVAILABLE
                                }
                                Behaviour::Stall(d) => {
                                    tokio::time::sleep(d).await;
                                    StatusCode::OK
                                }
                                _ => StatusCode::OK,
                            };
                            let body = format!("{{\"service\":\"{name}\"}}");
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("x-served-by", name)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The `wasmesh-proxy` binary built next to this one.
fn proxy_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("wasmesh-proxy");
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p wasmesh-proxy`",
            path.display()
        );
    }
    Ok(path)
}

#[derive(Default)]
struct RouteReport {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, usize>,
    served_by: BTreeMap<String, usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let access_log = dir.path().join("access.log");
    let mut addrs = BTreeMap::new();
    addrs.insert(
        "productpage",
        start_service("productpage", Behaviour::Ok).await?,
    );
    for v in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        addrs.insert(v, start_service(v, Behaviour::Ok).await?);
    }
    addrs.insert("ratings", start_service("ratings", Behaviour::Ok).await?);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    addrs.insert("ratings-dead", dead);
    addrs.insert(
        "details",
        start_service("details", Behaviour::FailEvery(4)).await?,
    );
    addrs.insert(
        "slow",
        start_service("slow", Behaviour::Stall(Duration::from_millis(500))).await?,
    );

    let mut config = TEMPLATE.replace("{{access_log}}", &access_log.display().to_string());
    for (name, addr) in &addrs {
        config = config.replace(&format!("{{{{{name}}}}}"), &addr.to_string());
    }
    let config_path = dir.path().join("proxy.yaml");
    std::fs::write(&config_path, &config)?;

    let mut proxy = tokio::process::Command::new(proxy_binary()?)
        .arg("--config")
        .arg(&config_path)
        .env("WASMESH_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start wasmesh-proxy")?;
    let mut lines = tokio::io::BufReader::new(proxy.stderr.take().expect("piped")).lines();
    let (mut ingress, mut admin) = (None, None);
    while let Some(line) =
        tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await??
    {
        let address = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .and_then(|a| a.parse::<SocketAddr>().ok());
        if line.contains("admin listening") {
            admin = address;
        } else if line.contains("listening") {
            ingress = address;
        }
        if line.contains("wasmesh-proxy started") {
            break;
        }
    }
    let (Some(ingress), Some(admin)) = (ingress, admin) else {
        bail!("the proxy did not report its addresses")
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    println!("wasmesh demo");
    println!(
        "  {} sample services (one ratings endpoint is dead, details fails 1 in 4, slow stalls 500 ms)",
        addrs.len()
    );
    println!("  wasmesh-proxy on {ingress} (2 workers), admin on {admin}");
    println!("  config: examples/demo/proxy.yaml\n");

    // Traffic: 8 concurrent clients, each route in turn.
    let routes = ["/productpage", "/reviews", "/ratings", "/details", "/slow"];
    let per_route = [200, 300, 200, 200, 20];
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let reports: Arc<std::sync::Mutex<BTreeMap<&str, RouteReport>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (route, count) in routes.iter().zip(per_route) {
        for chunk in 0..8 {
            let (client, reports, route) = (client.clone(), reports.clone(), *route);
            tasks.push(tokio::spawn(async move {
                for _ in (chunk..count).step_by(8) {
                    let t = Instant::now();
                    let req = Request::get(format!("http://{ingress}{route}"))
                        .body(Empty::new())
                        .unwrap();
                    let Ok(response) = client.request(req).await else {
                        continue;
                    };
                    let status = response.status().as_u16();
                    let by = response
                        .headers()
                        .get("x-served-by")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("proxy")
                        .to_owned();
                    let _ = response.into_body().collect().await;
                    let mut reports = reports.lock().unwrap();
                    let r = reports.entry(route).or_default();
                    r.latencies.push(t.elapsed());
                    *r.statuses.entry(status).or_default() += 1;
                    *r.served_by.entry(by).or_default() += 1;
                }
            }));
        }
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed();

    let mut reports = std::mem::take(&mut *reports.lock().unwrap());
    let total: usize = reports.values().map(|r| r.latencies.len()).sum();
    println!(
        "traffic: {total} requests in {:.2}s, 8 concurrent clients\n",
        elapsed.as_secs_f64()
    );
    println!(
        "{:<13} {:>8} {:>22} {:>9} {:>9}  served by",
        "route", "requests", "status codes", "p50", "p99"
    );
    for route in routes {
        let r = reports.entry(route).or_default();
        r.latencies.sort();
        let pct = |p: f64| {
            r.latencies
                .get(
                    ((r.latencies.len() as f64 * p) as usize)
                        .min(r.latencies.len().saturating_sub(1)),
                )
                .copied()
                .unwrap_or_default()
        };
        let codes: Vec<String> = r.statuses.iter().map(|(c, n)| format!("{c}x{n}")).collect();
        let by: Vec<String> = r
            .served_by
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        println!(
            "{:<13} {:>8} {:>22} {:>8.2}ms {:>8.2}ms  {}",
            route,
            r.latencies.len(),
            codes.join(" "),
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            by.join(" ")
        );
    }

    let stats = client_get(&client, admin, "/stats/prometheus").await?;
    let sample = |name: &str| -> f64 {
        stats
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    println!("\nwhat the proxy did (from its admin /stats/prometheus):");
    println!(
        "  retries that turned details' 503s into 200s: {}",
        sample("wasmesh_upstream_rq_retry_total{cluster=\"details\"}")
    );
    println!(
        "  connect failures to the dead ratings endpoint: {} (then skipped by load balancing)",
        sample("wasmesh_upstream_cx_connect_fail_total{cluster=\"ratings\"}")
    );
    println!(
        "  route timeouts on /slow (504, flag UT): {}",
        sample("wasmesh_upstream_rq_timeout_total{cluster=\"slow\"}")
    );
    println!(
        "  upstream connections opened: {} for {total} requests (keep-alive pools)",
        sample("wasmesh_upstream_cx_total")
    );

    // Drain with SIGTERM, as an orchestrator would.
    let pid = proxy.id().context("proxy pid")?;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = tokio::time::timeout(Duration::from_secs(15), proxy.wait()).await??;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = std::fs::read_to_string(&access_log).unwrap_or_default();
    println!(
        "\naccess log: {} JSON lines; one of them:",
        log.lines().count()
    );
    if let Some(line) = log
        .lines()
        .find(|l| l.contains("\"UT\""))
        .or(log.lines().next())
    {
        println!("  {line}");
    }
    println!("\nproxy drained on SIGTERM and exited with {status}");
    if !status.success() {
        bail!("the proxy exited with {status}");
    }
    Ok(())
}

async fn client_get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<String> {
    let response = client
        .request(Request::get(format!("http://{addr}{path}")).body(Empty::new())?)
        .await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}
