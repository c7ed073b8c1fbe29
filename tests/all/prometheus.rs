//! Istio's standard metrics as a real Prometheus scrapes them from the sidecars' admin
//! `/stats/prometheus`, read back with the PromQL of Istio's Grafana dashboards and of Kiali's
//! graph: known traffic (so many requests, so many 500s, so many slow ones) between two
//! workloads of a STRICT mesh must come out as exactly those numbers, with the labels those
//! tools group by, from both ends of the hop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use http::{Request, Response};

use crate::support::prometheus::{Prometheus, Sample, show};
use crate::support::sidecars::{
    ControlPlane, Process, Sidecar, SidecarSpec, field, services, shared_cache, write,
};
use crate::support::*;

const REVIEWS: u16 = 9080;
const HOST: &str = "reviews.default.svc.cluster.local";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews";
/// How long `/slow` takes: inside Istio's (250, 500] ms bucket.
const SLOW_FOR: Duration = Duration::from_millis(300);
/// The measured traffic: quick 200s, 500s, and slow 200s (10% of it, well above the 1% a
/// p99 needs to land among them).
const QUICK: usize = 50;
const FAILING: usize = 8;
const SLOW: usize = 6;
/// Requests before it, so every series exists and has been scraped: quick ones and 500s.
const WARM_QUICK: usize = 20;
const WARM_FAILING: usize = 10;

/// The labels Kiali's graph groups `istio_requests_total` by
/// (`kiali/kiali: graph/telemetry/istio/istio.go`).
const KIALI_GROUP_BY: &str = "source_workload_namespace,source_workload,source_canonical_service,\
source_canonical_revision,destination_service_namespace,destination_service,destination_service_name,\
destination_workload_namespace,destination_workload,destination_canonical_service,\
destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags";

/// The reviews workload: `/fail` answers 500, `/slow` answers after [`SLOW_FOR`], anything
/// else at once; every answer says who served it, so the test knows which requests reached
/// it (the destination sidecar reports exactly those).
async fn reviews_app() -> Upstream {
    Upstream::start(|req| async move {
        let status = match req.uri().path() {
            "/fail" => 500,
            "/slow" => {
                tokio::time::sleep(SLOW_FOR).await;
                200
            }
            _ => 200,
        };
        Response::builder()
            .status(status)
            .header("x-served-by", "reviews-v1")
            .body(full("reviews"))
            .unwrap()
    })
    .await
}

/// A sidecar with an admin API on a free port: the sidecar, and its admin address.
fn sidecar(
    cp: &ControlPlane,
    name: &str,
    app: &str,
    service_account: &str,
    workload: Option<(u16, SocketAddr)>,
) -> (Sidecar, SocketAddr) {
    let cache = shared_cache();
    let spec = SidecarSpec {
        name,
        labels: &[("app", app), ("version", "v1")],
        app: workload,
        cache: &cache,
        outbound: "127.0.0.1:0",
    };
    let mut cmd = Sidecar::command(&cp.address, &spec);
    cmd.args(["--service-account", service_account])
        .args(["--admin", "127.0.0.1:0"]);
    let sidecar = Sidecar::ready(Process::spawn(name, cmd));
    let admin = field(
        &sidecar
            .process
            .wait_for_line("admin listening", Duration::from_secs(5)),
        "address",
    )
    .parse()
    .unwrap();
    (sidecar, admin)
}

/// Requests to reviews through the client's sidecar, counting those the workload answered.
struct Client {
    outbound: SocketAddr,
    answered: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

impl Client {
    /// GET `path` on reviews; the status, and whether the workload answered it.
    async fn get(&self, path: &str) -> Option<(u16, bool)> {
        let req = Request::get(format!("http://{}{path}", self.outbound))
            .header("host", format!("reviews:{REVIEWS}"))
            .body(empty())
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), h1_client().request(req))
            .await
            .ok()?
            .ok()?;
        let served = reply.headers().get("x-served-by").is_some();
        let status = reply.status().as_u16();
        if served {
            self.answered.fetch_add(1, SeqCst);
            if status == 500 {
                self.failed.fetch_add(1, SeqCst);
            }
        }
        Some((status, served))
    }

    /// GET `path`, which must reach the workload and answer `status`.
    async fn expect(&self, path: &str, status: u16) {
        assert_eq!(self.get(path).await, Some((status, true)), "GET {path}");
    }

    fn answered(&self) -> usize {
        self.answered.load(SeqCst)
    }

    fn failed(&self) -> usize {
        self.failed.load(SeqCst)
    }
}

/// The one series of `samples` whose labels include all of `want`.
fn series<'a>(samples: &'a [Sample], want: &[(&str, &str)]) -> Option<&'a Sample> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| want.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .collect();
    match matching[..] {
        [one] => Some(one),
        _ => None,
    }
}

/// The value of a query's single, label-free answer (a sum without `by`).
fn single(samples: &[Sample]) -> Option<f64> {
    match samples {
        [one] if one.labels.is_empty() => Some(one.value),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_kiali_read_istio_metrics_of_known_traffic_from_a_real_prometheus() {
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
        "strict.yaml",
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
",
    );
    let cp = ControlPlane::start(&manifests, &dir.path().join("data"), "127.0.0.1:0");
    let app = reviews_app().await;
    let (reviews, reviews_admin) = sidecar(
        &cp,
        "reviews-v1",
        "reviews",
        "bookinfo-reviews",
        Some((REVIEWS, app.addr)),
    );
    let (productpage, productpage_admin) = sidecar(
        &cp,
        "productpage-v1",
        "productpage",
        "bookinfo-productpage",
        None,
    );
    cp.wait_synced(2, Duration::from_secs(60)).await;

    // Both sidecars scraped, healthy and with no scrape error: what they expose parses.
    let prometheus = Prometheus::start(&[reviews_admin, productpage_admin]);
    prometheus.wait_targets_up(2, Duration::from_secs(30)).await;

    let client = Client {
        outbound: productpage.outbound,
        answered: Arc::default(),
        failed: Arc::default(),
    };
    // Until the route is in place, a request may fail at the client's sidecar (it never
    // reaches the destination's, which reports only what reached it: the test counts those).
    eventually("reviews answers", Duration::from_secs(20), || async {
        client.get("/warmup").await == Some((200, true))
    })
    .await;
    // The series of 200s and 500s exist and are scraped before the measured traffic:
    // rate() sees only increases of a series it has scraped before. Counts that are large
    // next to what follows make Prometheus extrapolate both series alike (see below).
    for _ in 1..WARM_QUICK {
        client.expect("/warmup", 200).await;
    }
    for _ in 0..WARM_FAILING {
        client.expect("/fail", 500).await;
    }
    let timeout = Duration::from_secs(30);
    let before = client.answered() as f64;
    let edge = format!("source_workload=\"productpage-v1\",destination_service=\"{HOST}\"");
    prometheus
        .wait_for(
            &format!("sum(istio_requests_total{{{edge}}}) by (reporter, response_code)"),
            |s| {
                ["source", "destination"].iter().all(|r| {
                    ["200", "500"].iter().all(|code| {
                        series(s, &[("reporter", r), ("response_code", code)]).is_some()
                    })
                }) && s
                    .iter()
                    .filter(|x| x.label("reporter") == Some("destination"))
                    .map(|x| x.value)
                    .sum::<f64>()
                    == before
            },
            timeout,
        )
        .await;

    // The measured traffic.
    for _ in 0..QUICK {
        client.expect("/quick", 200).await;
    }
    for _ in 0..FAILING {
        client.expect("/fail", 500).await;
    }
    for _ in 0..SLOW {
        client.expect("/slow", 200).await;
    }
    let n = client.answered();
    let k = client.failed();
    assert_eq!(n, before as usize + QUICK + FAILING + SLOW);
    assert_eq!(k, WARM_FAILING + FAILING);

    // Request volume by destination service (Istio's mesh dashboard), exactly n once scraped.
    let volume = prometheus
        .wait_for(
            r#"sum(istio_requests_total{reporter="destination"}) by (destination_service)"#,
            |s| series(s, &[("destination_service", HOST)]).is_some_and(|x| x.value == n as f64),
            timeout,
        )
        .await;
    assert_eq!(
        volume.len(),
        1,
        "one destination service:\n{}",
        show(&volume)
    );

    // The other end of the same edge agrees: the source reporter saw the same answers.
    let by_reporter = prometheus
        .wait_for(
            &format!(
                r#"sum(istio_requests_total{{{edge},response_code=~"200|500"}}) by (reporter)"#
            ),
            |s| {
                ["source", "destination"]
                    .iter()
                    .all(|r| series(s, &[("reporter", r)]).is_some_and(|x| x.value == n as f64))
            },
            timeout,
        )
        .await;
    assert_eq!(by_reporter.len(), 2, "{}", show(&by_reporter));

    // Success rate (Istio's dashboards): from the counters, exact.
    let success = prometheus
        .query(
            r#"sum(istio_requests_total{reporter="destination",response_code!~"5.*"}) / sum(istio_requests_total{reporter="destination"})"#,
        )
        .await;
    let expected = (n - k) as f64 / n as f64;
    assert!(
        single(&success).is_some_and(|v| (v - expected).abs() < 1e-9),
        "success rate, want {expected}:\n{}",
        show(&success)
    );
    // The dashboards' own form, over rate(), for the measured traffic:
    // (QUICK + SLOW) / (QUICK + SLOW + FAILING). rate() extrapolates each series towards the
    // window's start by half a scrape interval, or less if the counter would reach zero
    // sooner (its first value is small next to its increase): the warm-up's counts make it
    // the half interval for both series, so the ratio comes out exact, unless a scrape fell
    // in the middle of the warm-up; then the two differ by at most half an interval over
    // the several seconds of samples, which the tolerance covers.
    let success = prometheus
        .query(
            r#"sum(rate(istio_requests_total{reporter="destination",response_code!~"5.*"}[1m])) / sum(rate(istio_requests_total{reporter="destination"}[1m]))"#,
        )
        .await;
    let expected = (QUICK + SLOW) as f64 / (QUICK + SLOW + FAILING) as f64;
    assert!(
        single(&success).is_some_and(|v| (v - expected).abs() < 0.04),
        "success rate over rate(), want about {expected}:\n{}",
        show(&success)
    );

    // Latency (Istio's dashboards): the slow tenth puts the p99 in the slow requests' bucket,
    // (250, 500] ms; the median stays with the quick ones.
    let quantile = |q: f64| {
        format!(
            r#"histogram_quantile({q}, sum(rate(istio_request_duration_milliseconds_bucket{{reporter="destination"}}[1m])) by (le))"#
        )
    };
    let p99 = prometheus.query(&quantile(0.99)).await;
    assert!(
        single(&p99).is_some_and(|v| v > 250.0 && v <= 500.0),
        "p99 not in (250, 500] ms:\n{}",
        show(&p99)
    );
    let p50 = prometheus.query(&quantile(0.5)).await;
    assert!(
        single(&p50).is_some_and(|v| v <= 250.0),
        "p50 above 250 ms:\n{}",
        show(&p50)
    );
    // Every answered request is in the histograms, once.
    for histogram in [
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
    ] {
        let count = prometheus
            .query(&format!(
                r#"sum({histogram}_count{{reporter="destination"}})"#
            ))
            .await;
        assert_eq!(
            single(&count),
            Some(n as f64),
            "{histogram}:\n{}",
            show(&count)
        );
    }
    let bytes = prometheus
        .query(r#"sum(istio_response_bytes_sum{reporter="destination"})"#)
        .await;
    assert!(
        single(&bytes).is_some_and(|v| v >= (n * "reviews".len()) as f64),
        "response bytes below the bodies' size:\n{}",
        show(&bytes)
    );

    // mTLS (Kiali's padlock, the dashboards' security column): STRICT, so every request the
    // destination reported came over mutual TLS, between the two workloads' identities.
    let security = prometheus
        .query(
            r#"sum(istio_requests_total{reporter="destination"}) by (connection_security_policy, source_principal, destination_principal)"#,
        )
        .await;
    assert!(
        series(
            &security,
            &[
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", CLIENT_ID),
                ("destination_principal", SERVER_ID),
            ],
        )
        .is_some_and(|x| x.value == n as f64)
            && security.len() == 1,
        "not all over mutual TLS between the two identities:\n{}",
        show(&security)
    );

    // Kiali's graph: its queries (destination-reported, and source-reported for traffic
    // within a namespace), whose series it skips if any label is missing. Our edge is there,
    // with the workloads on both ends named, and a rate.
    let required: Vec<&str> = KIALI_GROUP_BY
        .split(',')
        .filter(|l| *l != "grpc_response_status")
        .collect();
    for selector in [
        r#"reporter="destination""#.to_owned(),
        r#"reporter="source",source_workload_namespace="default""#.to_owned(),
    ] {
        let graph = prometheus
            .query(&format!(
                "sum(rate(istio_requests_total{{{selector}}}[1m])) by ({KIALI_GROUP_BY})"
            ))
            .await;
        let ok = series(
            &graph,
            &[
                ("source_workload", "productpage-v1"),
                ("source_workload_namespace", "default"),
                ("source_canonical_service", "productpage"),
                ("destination_service", HOST),
                ("destination_service_name", "reviews"),
                ("destination_service_namespace", "default"),
                ("destination_workload", "reviews-v1"),
                ("destination_workload_namespace", "default"),
                ("destination_canonical_service", "reviews"),
                ("request_protocol", "http"),
                ("response_code", "200"),
            ],
        );
        assert!(
            ok.is_some_and(|s| s.value > 0.0
                && required
                    .iter()
                    .all(|l| s.label(l).is_some_and(|v| !v.is_empty()))),
            "{selector}: no series for productpage-v1 -> reviews-v1 with all of Kiali's labels \
             and a rate:\n{}",
            show(&graph)
        );
    }

    // Nothing went wrong on the way: the targets are still healthy.
    prometheus.wait_targets_up(2, timeout).await;
    for p in [&reviews.process, &productpage.process] {
        assert!(!p.log().contains("panicked"), "{}", p.log());
    }
}
