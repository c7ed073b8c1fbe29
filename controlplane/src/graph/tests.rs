use std::time::{Duration, Instant};

use super::text::parse;
use super::window::{ProxyWindow, group, wanted};
use super::*;

/// One request series of Istio's, with its full label set, and its duration histogram.
struct Series {
    reporter: &'static str,
    source: &'static str,
    destination: &'static str,
    service: &'static str,
    code: &'static str,
    flags: &'static str,
    security: &'static str,
    protocol: &'static str,
    grpc_status: &'static str,
}

const OK: Series = Series {
    reporter: "destination",
    source: "productpage-v1",
    destination: "reviews-v1",
    service: "reviews",
    code: "200",
    flags: "-",
    security: "mutual_tls",
    protocol: "http",
    grpc_status: "",
};

/// Istio's duration buckets (ms).
const BUCKETS: [f64; 20] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
    300000.0,
    600000.0,
    1800000.0,
    3600000.0,
    f64::INFINITY,
];

impl Series {
    /// Its lines after `count` requests that each took `ms`.
    fn text(&self, count: u64, ms: f64) -> String {
        let (source_app, source_version) = app_version(self.source);
        let (dest_app, dest_version) = app_version(self.destination);
        let service_host = match self.service {
            "httpbin.org" => "httpbin.org".to_owned(),
            s => format!("{s}.default.svc.cluster.local"),
        };
        let (service_name, service_namespace) = match self.service {
            "httpbin.org" => ("httpbin.org", "unknown"),
            s => (s, "default"),
        };
        let (dest_workload, dest_namespace) = match self.destination {
            "unknown" => ("unknown", "unknown"),
            d => (d, "default"),
        };
        let labels = format!(
            "reporter=\"{}\",source_workload=\"{}\",source_canonical_service=\"{}\",source_canonical_revision=\"{}\",source_workload_namespace=\"default\",source_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\",source_app=\"{}\",source_version=\"{}\",source_cluster=\"Kubernetes\",destination_workload=\"{dest_workload}\",destination_workload_namespace=\"{dest_namespace}\",destination_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-reviews\",destination_app=\"{}\",destination_version=\"{}\",destination_service=\"{service_host}\",destination_canonical_service=\"{}\",destination_canonical_revision=\"{}\",destination_service_name=\"{service_name}\",destination_service_namespace=\"{service_namespace}\",destination_cluster=\"Kubernetes\",request_protocol=\"{}\",response_code=\"{}\",grpc_response_status=\"{}\",response_flags=\"{}\",connection_security_policy=\"{}\"",
            self.reporter,
            self.source,
            source_app,
            source_version,
            source_app,
            source_version,
            dest_app,
            dest_version,
            dest_app,
            dest_version,
            self.protocol,
            self.code,
            self.grpc_status,
            self.flags,
            self.security,
        );
        let mut text = format!("istio_requests_total{{{labels}}} {count}\n");
        for le in BUCKETS {
            let n = if ms <= le { count } else { 0 };
            let le = if le.is_infinite() {
                "+Inf".to_owned()
            } else {
                le.to_string()
            };
            text += &format!(
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"{le}\"}} {n}\n"
            );
        }
        text += &format!(
            "istio_request_duration_milliseconds_sum{{{labels}}} {}\nistio_request_duration_milliseconds_count{{{labels}}} {count}\n",
            ms * count as f64
        );
        text
    }
}

/// `reviews-v1`: app `reviews`, version `v1`.
fn app_version(workload: &str) -> (&str, &str) {
    workload.rsplit_once('-').unwrap_or((workload, "unknown"))
}

fn proxy(name: &str) -> ProxyInfo {
    let (app, version) = name.rsplit_once('-').unwrap();
    ProxyInfo {
        id: format!("{name}.default"),
        namespace: "default".into(),
        workload: name.into(),
        app: app.into(),
        version: version.into(),
        metrics_address: "127.0.0.1:15000".into(),
        listeners: Vec::new(),
    }
}

/// A window of two scrapes `secs` apart, of texts `before` and `after`.
fn window(before: &str, after: &str, secs: u64) -> ProxyWindow {
    let t0 = Instant::now();
    let mut w = ProxyWindow::new(Duration::from_secs(60));
    w.record(t0, group(parse(before, wanted).unwrap()));
    w.record(
        t0 + Duration::from_secs(secs),
        group(parse(after, wanted).unwrap()),
    );
    w
}

fn edge<'a>(graph: &'a Graph, id: &str) -> &'a Edge {
    graph
        .edges
        .iter()
        .find(|e| e.id == id)
        .unwrap_or_else(|| panic!("no edge {id} in {:#?}", graph.edges))
}

fn node<'a>(graph: &'a Graph, id: &str) -> &'a Node {
    graph
        .nodes
        .iter()
        .find(|n| n.id == id)
        .unwrap_or_else(|| panic!("no node {id} in {:#?}", graph.nodes))
}

const PRODUCTPAGE_TO_REVIEWS: &str = "default/productpage-v1->reviews.default.svc.cluster.local";
const REVIEWS_TO_V1: &str = "reviews.default.svc.cluster.local->default/reviews-v1";

#[test]
fn destination_reports_make_the_workload_service_workload_edges() {
    let errors = Series {
        code: "503",
        flags: "-",
        ..OK
    };
    // reviews-v1's sidecar: 100 more requests in 10 s, 10 of them 503s; productpage's also
    // reported them as source (ignored where the destination reported).
    let reviews = window(
        &(OK.text(1000, 7.0) + &errors.text(0, 7.0)),
        &(OK.text(1090, 7.0) + &errors.text(10, 7.0)),
        10,
    );
    let source = Series {
        reporter: "source",
        security: "unknown",
        ..OK
    };
    let productpage = window(&source.text(1000, 9.0), &source.text(1500, 9.0), 10);
    let graph = build(
        &[
            (&proxy("productpage-v1"), Some(&productpage)),
            (&proxy("reviews-v1"), Some(&reviews)),
            (&proxy("ratings-v1"), None),
        ],
        60,
    );

    let e = edge(&graph, PRODUCTPAGE_TO_REVIEWS);
    assert_eq!(e.rate, 10.0);
    assert_eq!(e.error_percent, 10.0);
    assert_eq!(e.health, "degraded");
    assert!(e.mtls);
    assert_eq!(e.mtls_percent, 100.0);
    assert_eq!(e.protocol, "http");
    assert_eq!(e.codes["200"], 9.0);
    assert_eq!(e.codes["503"], 1.0);
    // Every request took 7 ms: in the (5, 10] bucket, interpolated.
    assert_eq!(e.p99_ms, Some(5.0 + 5.0 * 0.99));
    assert_eq!(edge(&graph, REVIEWS_TO_V1).rate, 10.0);
    assert_eq!(graph.edges.len(), 2, "{:#?}", graph.edges);

    let productpage = node(&graph, "default/productpage-v1");
    assert_eq!(
        (
            productpage.kind,
            productpage.app.as_str(),
            productpage.version.as_str()
        ),
        ("workload", "productpage", "v1")
    );
    assert_eq!(productpage.proxies, ["productpage-v1.default"]);
    assert!(!productpage.idle);
    let reviews = node(&graph, "reviews.default.svc.cluster.local");
    assert_eq!(reviews.kind, "service");
    assert_eq!(reviews.name, "reviews");
    // A connected proxy without traffic is an idle workload.
    let ratings = node(&graph, "default/ratings-v1");
    assert!(ratings.idle);
    assert_eq!(ratings.proxies, ["ratings-v1.default"]);

    let details =
        node_details(&graph, &[proxy("productpage-v1")], "default/productpage-v1").unwrap();
    assert!(details.inbound.is_empty());
    assert_eq!(details.outbound.len(), 1);
    assert_eq!(details.plugins.len(), 1);
}

#[test]
fn the_source_report_stands_where_no_destination_reported() {
    // To a service outside the mesh, and requests that failed before any workload (no
    // healthy upstream: response flag UH, code 503).
    let external = Series {
        reporter: "source",
        destination: "unknown",
        service: "httpbin.org",
        security: "unknown",
        ..OK
    };
    let failed = Series {
        reporter: "source",
        destination: "unknown",
        code: "503",
        flags: "UH",
        security: "unknown",
        ..OK
    };
    let productpage = window(
        &(external.text(0, 80.0) + &failed.text(0, 1.0)),
        &(external.text(20, 80.0) + &failed.text(5, 1.0)),
        10,
    );
    let graph = build(&[(&proxy("productpage-v1"), Some(&productpage))], 60);
    let e = edge(&graph, "default/productpage-v1->httpbin.org");
    assert_eq!(e.rate, 2.0);
    assert_eq!(e.error_percent, 0.0);
    assert!(!e.mtls);
    assert_eq!(e.health, "healthy");
    let e = edge(&graph, PRODUCTPAGE_TO_REVIEWS);
    assert_eq!(e.rate, 0.5);
    assert_eq!(e.error_percent, 100.0);
    assert_eq!(e.health, "failure");
    // No edge to an unknown workload, and no node for it.
    assert_eq!(graph.edges.len(), 2, "{:#?}", graph.edges);
    assert!(
        graph.nodes.iter().all(|n| n.kind != "unknown"),
        "{:#?}",
        graph.nodes
    );
}

#[test]
fn callers_outside_the_mesh_are_one_unknown_node() {
    // What a destination reports of callers without peer metadata.
    let anonymous = Series {
        source: "unknown",
        security: "none",
        ..OK
    };
    let text = |n| {
        anonymous.text(n, 3.0).replace(
            "source_workload_namespace=\"default\"",
            "source_workload_namespace=\"unknown\"",
        )
    };
    let reviews = window(&text(0), &text(30), 10);
    let graph = build(&[(&proxy("reviews-v1"), Some(&reviews))], 60);
    let unknown = node(&graph, "unknown");
    assert_eq!(unknown.kind, "unknown");
    assert_eq!(
        edge(&graph, "unknown->reviews.default.svc.cluster.local").rate,
        3.0
    );
    assert_eq!(edge(&graph, REVIEWS_TO_V1).rate, 3.0);
}

#[test]
fn errors_count_5xx_no_response_flags_and_grpc_statuses_as_kiali() {
    let cases = [
        (Series { code: "500", ..OK }, true),
        (
            Series {
                code: "0",
                flags: "UF",
                ..OK
            },
            true,
        ),
        (
            Series {
                code: "200",
                flags: "DC",
                ..OK
            },
            true,
        ),
        // A delay injected is no failure.
        (
            Series {
                code: "200",
                flags: "DI",
                ..OK
            },
            false,
        ),
        (Series { code: "404", ..OK }, false),
        (
            Series {
                protocol: "grpc",
                grpc_status: "14",
                ..OK
            },
            true,
        ),
        (
            Series {
                protocol: "grpc",
                grpc_status: "0",
                ..OK
            },
            false,
        ),
    ];
    for (series, error) in cases {
        let w = window(&series.text(0, 1.0), &series.text(10, 1.0), 10);
        let graph = build(&[(&proxy("reviews-v1"), Some(&w))], 60);
        let e = edge(&graph, PRODUCTPAGE_TO_REVIEWS);
        let want = if error { 100.0 } else { 0.0 };
        assert_eq!(
            e.error_percent, want,
            "{} {} {}",
            series.code, series.flags, series.grpc_status
        );
    }
}

#[test]
fn health_follows_kiali_thresholds_and_mtls_needs_the_destinations_word() {
    // 1 error in 1000: 0.1% is not above the threshold; 2 in 1000 is.
    let errors = Series { code: "500", ..OK };
    let plain = Series {
        security: "none",
        ..OK
    };
    let w = |ok: u64, bad: u64| {
        window(
            &(plain.text(0, 1.0) + &errors.text(0, 1.0)),
            &(plain.text(ok, 1.0) + &errors.text(bad, 1.0)),
            10,
        )
    };
    let health = |ok, bad| {
        let w = w(ok, bad);
        let graph = build(&[(&proxy("reviews-v1"), Some(&w))], 60);
        let e = edge(&graph, PRODUCTPAGE_TO_REVIEWS).clone();
        (e.health, e.mtls, e.mtls_percent)
    };
    assert_eq!(health(999, 1), ("healthy", true, 0.1));
    assert_eq!(health(998, 2).0, "degraded");
    assert_eq!(health(800, 200).0, "degraded");
    assert_eq!(health(799, 201).0, "failure");
    let w = w(10, 0);
    let graph = build(&[(&proxy("reviews-v1"), Some(&w))], 60);
    let e = edge(&graph, PRODUCTPAGE_TO_REVIEWS);
    assert!(!e.mtls, "plaintext only: no padlock");
}

#[test]
fn a_restarted_proxy_does_not_make_negative_or_lost_traffic() {
    let t0 = Instant::now();
    let mut w = ProxyWindow::new(Duration::from_secs(60));
    for (secs, count) in [(0, 500), (5, 550), (10, 20), (15, 70)] {
        w.record(
            t0 + Duration::from_secs(secs),
            group(parse(&OK.text(count, 30.0), wanted).unwrap()),
        );
    }
    let graph = build(&[(&proxy("reviews-v1"), Some(&w))], 60);
    let e = edge(&graph, PRODUCTPAGE_TO_REVIEWS);
    // 50 + 20 (after the reset) + 50 in 15 s.
    assert_eq!(e.rate, 120.0 / 15.0);
    // All in (25, 50]: p99 interpolated there, the reset's buckets counted from their new values.
    assert_eq!(e.p99_ms, Some(25.0 + 25.0 * 0.99));
}

#[test]
fn histogram_quantile_has_promqls_semantics() {
    let inf = f64::INFINITY;
    // 100 observations: 50 ≤ 10, 40 in (10, 20], 10 in (20, +Inf).
    let buckets = [(10.0, 50.0), (20.0, 90.0), (inf, 100.0)];
    assert_eq!(histogram_quantile(0.5, &buckets), Some(10.0));
    assert_eq!(histogram_quantile(0.25, &buckets), Some(5.0));
    assert_eq!(histogram_quantile(0.7, &buckets), Some(15.0));
    // In the +Inf bucket: the highest finite bound.
    assert_eq!(histogram_quantile(0.99, &buckets), Some(20.0));
    assert_eq!(histogram_quantile(1.5, &buckets), Some(inf));
    assert_eq!(histogram_quantile(-1.0, &buckets), Some(f64::NEG_INFINITY));
    // No observations, no +Inf bucket, a single bucket: no answer.
    assert_eq!(histogram_quantile(0.99, &[(10.0, 0.0), (inf, 0.0)]), None);
    assert_eq!(histogram_quantile(0.99, &[(10.0, 1.0), (20.0, 2.0)]), None);
    assert_eq!(histogram_quantile(0.99, &[(inf, 2.0)]), None);
    // A count lower than the bucket below it (scraped a moment apart) is raised.
    assert_eq!(
        histogram_quantile(0.5, &[(10.0, 60.0), (20.0, 50.0), (inf, 100.0)]),
        Some(10.0 * 50.0 / 60.0)
    );
}
