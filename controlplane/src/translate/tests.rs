use std::net::SocketAddr;
use std::path::Path;

use wasmesh_config::{LbPolicy, UpstreamProtocol};
use wasmesh_policy as policy;

use super::*;
use crate::manifests::parse_str;
use crate::samples::{self, BookinfoEndpoints, HttpbinEndpoints};

const DEFAULT_RETRY: &str = "attempts=2;retry_on=connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes;retriable_status_codes=503";

fn ep(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn bookinfo() -> String {
    samples::bookinfo(&BookinfoEndpoints {
        productpage: ep(10001),
        details: ep(10002),
        ratings: ep(10003),
        reviews_v1: ep(10011),
        reviews_v2: ep(10012),
        reviews_v3: ep(10013),
    })
}

fn httpbin() -> String {
    samples::httpbin(&HttpbinEndpoints {
        v1: ep(20001),
        v2: ep(20002),
    })
}

fn with_plugins() -> Options {
    Options {
        plugins: Some(PluginModules {
            router: PluginModule::new("router.wasm"),
            fault: PluginModule::new("fault.wasm"),
            mirror: PluginModule::new("mirror.wasm"),
            circuit_breaker: PluginModule::new("circuit_breaker.wasm"),
            authz: PluginModule::new("authz.wasm"),
        }),
        ..Options::default()
    }
}

/// Loads the documents (they must load cleanly), translates them and checks the bootstrap.
fn run(docs: &[&str], options: &Options) -> Translation {
    let text = docs.join("\n---\n");
    let loaded = parse_str(&text, None);
    assert_eq!(loaded.diagnostics, vec![], "loading");
    let t = translate(&loaded.resources, options);
    t.bootstrap.validate().expect("the bootstrap validates");
    t
}

/// The diagnostics, as istioctl prints them.
fn printed(t: &Translation) -> Vec<String> {
    t.diagnostics.iter().map(ToString::to_string).collect()
}

fn vhost<'a>(t: &'a Translation, name: &str) -> &'a policy::VirtualHost {
    t.router
        .virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no virtual host {name}"))
}

fn route_to(cluster: &str) -> policy::Action {
    weighted(&[(cluster, 100)])
}

fn weighted(destinations: &[(&str, u32)]) -> policy::Action {
    policy::Action::Route {
        destinations: destinations
            .iter()
            .map(|(c, w)| policy::Destination {
                cluster: (*c).to_owned(),
                weight: *w,
                ..Default::default()
            })
            .collect(),
        rewrite: None,
    }
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const REVIEWS_V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
const REVIEWS_V2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";
const REVIEWS_V3: &str = "outbound|9080|v3|reviews.default.svc.cluster.local";

fn not_found_404(host: &str) -> policy::Route {
    policy::Route {
        id: format!("default/{host}:9080"),
        action: policy::Action::DirectResponse {
            status: 404,
            body: String::new(),
        },
        ..Default::default()
    }
}

#[test]
fn bookinfo_services_get_clusters_domains_and_default_routes() {
    let t = run(&[&bookinfo()], &with_plugins());
    assert_eq!(printed(&t), Vec::<String>::new());

    let clusters: Vec<_> = t
        .bootstrap
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.endpoints.clone()))
        .collect();
    assert_eq!(
        clusters,
        vec![
            (
                "outbound|9080||details.default.svc.cluster.local",
                vec!["127.0.0.1:10002".to_owned()]
            ),
            (
                "outbound|9080||productpage.default.svc.cluster.local",
                vec!["127.0.0.1:10001".to_owned()]
            ),
            (
                "outbound|9080||ratings.default.svc.cluster.local",
                vec!["127.0.0.1:10003".to_owned()]
            ),
            (
                "outbound|9080||reviews.default.svc.cluster.local",
                vec![
                    "127.0.0.1:10011".to_owned(),
                    "127.0.0.1:10012".to_owned(),
                    "127.0.0.1:10013".to_owned()
                ]
            ),
            // ALLOW_ANY, Istio's default: unknown hosts pass through.
            ("PassthroughCluster", vec![]),
        ]
    );
    let c = &t.bootstrap.clusters[0];
    assert_eq!(c.lb_policy, LbPolicy::LeastRequest);
    assert_eq!(c.protocol, UpstreamProtocol::Http1);
    assert_eq!(c.connect_timeout, Dur::secs(10));
    assert_eq!(c.circuit_breakers.max_requests, u32::MAX);

    let reviews = vhost(&t, "reviews.default.svc.cluster.local:9080");
    assert_eq!(
        reviews.domains,
        [
            "reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local:9080",
            "reviews",
            "reviews:9080",
            "reviews.default",
            "reviews.default:9080",
            "reviews.default.svc",
            "reviews.default.svc:9080",
        ]
    );
    assert_eq!(
        reviews.routes,
        vec![policy::Route {
            id: "default/reviews.default.svc.cluster.local:9080".into(),
            action: route_to("outbound|9080||reviews.default.svc.cluster.local"),
            retry_policy: Some(DEFAULT_RETRY.into()),
            ..Default::default()
        }]
    );

    // The proxy's own table: the same hosts, each with Istio's default route.
    let listener = &t.bootstrap.listeners[0];
    assert_eq!(listener.name, "outbound");
    assert_eq!(listener.address, "127.0.0.1:0");
    let core = &listener.virtual_hosts[3];
    assert_eq!(core.domains, reviews.domains);
    let route = &core.routes[0];
    assert_eq!(
        route.cluster,
        "outbound|9080||reviews.default.svc.cluster.local"
    );
    assert_eq!(route.timeout, Dur::default());
    let retry = route.retry_policy.as_ref().unwrap();
    assert_eq!(retry.num_retries, 2);
    assert_eq!(retry.retriable_status_codes, vec![503]);
    assert_eq!(
        retry.retry_on,
        wasmesh_config::RetryOn::parse(routes::DEFAULT_RETRY_ON).unwrap()
    );

    assert!(t.fault.routes.is_empty());
    assert!(t.mirror.routes.is_empty());
    assert!(t.circuit_breaker.clusters.is_empty());
}

/// Istio's mirroring task's subsets of httpbin, with outlier detection.
const HTTPBIN_SUBSETS_WITH_POOL: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

#[test]
fn plugins_run_in_order_with_their_configs() {
    let t = run(
        &[
            &bookinfo(),
            &httpbin(),
            samples::DESTINATION_RULE_ALL,
            samples::VIRTUAL_SERVICE_RATINGS_TEST_ABORT,
            HTTPBIN_SUBSETS_WITH_POOL,
            samples::HTTPBIN_MIRROR,
        ],
        &with_plugins(),
    );
    let filters = &t.bootstrap.listeners[0].http_filters;
    let names: Vec<_> = filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, PLUGIN_NAMES);
    let order: Vec<_> = filters
        .iter()
        .map(|f| (f.priority, f.fail_strategy))
        .collect();
    use wasmesh_config::filters::FailStrategy::{FailClose, FailOpen};
    assert_eq!(
        order,
        [
            (40, FailClose),
            (30, FailOpen),
            (20, FailOpen),
            (10, FailOpen)
        ]
    );
    assert_eq!(filters[0].url, "router.wasm");

    // Each plugin_config reads back as the plugin reads it.
    let read = |i: usize| filters[i].plugin_config.clone().unwrap();
    let router: policy::RouterConfig = serde_json::from_value(read(0)).unwrap();
    assert_eq!(router, t.router);
    let fault: policy::FaultConfig = serde_json::from_value(read(1)).unwrap();
    assert_eq!(fault, t.fault);
    assert_eq!(fault.routes.len(), 1);
    let mirror: policy::MirrorConfig = serde_json::from_value(read(2)).unwrap();
    assert_eq!(mirror, t.mirror);
    let cb: policy::CircuitBreakerConfig = serde_json::from_value(read(3)).unwrap();
    assert_eq!(cb, t.circuit_breaker);

    // Each runs only where it has something to do: the router on the services a
    // VirtualService binds (told by the proxy's default route) and on requests the proxy has
    // no route for, the fault and the mirror on the routes that carry one, the breaker on the
    // clusters with a policy.
    let scope = |i: usize| filters[i].applies_to.clone().expect("scoped");
    let mut bound = vec![
        "default/httpbin.default.svc.cluster.local:8000".to_owned(),
        "default/ratings.default.svc.cluster.local:9080".to_owned(),
    ];
    bound.sort();
    assert_eq!(scope(0).routes, bound);
    assert!(scope(0).unrouted);
    assert!(!scope(1).unrouted);
    assert_eq!(
        scope(1).routes,
        fault.routes.keys().cloned().collect::<Vec<_>>()
    );
    assert_eq!(
        scope(2).routes,
        mirror.routes.keys().cloned().collect::<Vec<_>>()
    );
    assert!(scope(3).routes.is_empty());
    assert_eq!(
        scope(3).clusters,
        cb.clusters.keys().cloned().collect::<Vec<_>>()
    );
    assert!(!cb.clusters.is_empty());

    // The whole bootstrap survives a YAML round trip through the proxy's own parser.
    let yaml = serde_saphyr::to_string(&t.bootstrap).unwrap();
    wasmesh_config::Bootstrap::parse(&yaml).unwrap();
}

#[test]
fn plugins_with_nothing_to_do_are_left_out() {
    // No VirtualService, no fault, no mirror, no connection pool: only the router, for the
    // requests the proxy has no route for (it answers those as Istio does: 503 for a service
    // without endpoints); the proxy's own routes serve every service.
    let t = run(
        &[&bookinfo(), samples::DESTINATION_RULE_ALL],
        &with_plugins(),
    );
    let filters = &t.bootstrap.listeners[0].http_filters;
    let names: Vec<_> = filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["router"]);
    let scope = filters[0].applies_to.as_ref().unwrap();
    assert!(scope.routes.is_empty() && scope.clusters.is_empty() && scope.unrouted);
}

#[test]
fn destination_rule_all_makes_subset_clusters() {
    let t = run(
        &[&bookinfo(), samples::DESTINATION_RULE_ALL],
        &with_plugins(),
    );
    assert_eq!(
        printed(&t),
        [
            "Warning [IST0173] (DestinationRule details.default) The Subset v2 defined in the DestinationRule does not select any endpoints: cluster outbound|9080|v2|details.default.svc.cluster.local is left out, and requests routed to it get 503",
            "Warning [IST0173] (DestinationRule ratings.default) The Subset v2 defined in the DestinationRule does not select any endpoints: cluster outbound|9080|v2|ratings.default.svc.cluster.local is left out, and requests routed to it get 503",
            "Warning [IST0173] (DestinationRule ratings.default) The Subset v2-mysql defined in the DestinationRule does not select any endpoints: cluster outbound|9080|v2-mysql|ratings.default.svc.cluster.local is left out, and requests routed to it get 503",
            "Warning [IST0173] (DestinationRule ratings.default) The Subset v2-mysql-vm defined in the DestinationRule does not select any endpoints: cluster outbound|9080|v2-mysql-vm|ratings.default.svc.cluster.local is left out, and requests routed to it get 503",
        ]
    );
    let names: Vec<_> = t
        .bootstrap
        .clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "outbound|9080||details.default.svc.cluster.local",
            "outbound|9080|v1|details.default.svc.cluster.local",
            "outbound|9080||productpage.default.svc.cluster.local",
            "outbound|9080|v1|productpage.default.svc.cluster.local",
            "outbound|9080||ratings.default.svc.cluster.local",
            "outbound|9080|v1|ratings.default.svc.cluster.local",
            "outbound|9080||reviews.default.svc.cluster.local",
            REVIEWS_V1,
            REVIEWS_V2,
            REVIEWS_V3,
            "PassthroughCluster",
        ]
    );
    let v2 = t
        .bootstrap
        .clusters
        .iter()
        .find(|c| c.name == REVIEWS_V2)
        .unwrap();
    assert_eq!(v2.endpoints, ["127.0.0.1:10012"]);
}

#[test]
fn request_routing_all_v1() {
    let t = run(
        &[
            &bookinfo(),
            samples::DESTINATION_RULE_ALL,
            samples::VIRTUAL_SERVICE_ALL_V1,
        ],
        &with_plugins(),
    );
    assert!(
        t.diagnostics.iter().all(|d| d.code == "IST0173"),
        "{:?}",
        printed(&t)
    );
    for app in ["productpage", "reviews", "ratings", "details"] {
        let host = format!("{app}.default.svc.cluster.local");
        let vh = vhost(&t, &format!("{host}:9080"));
        assert_eq!(
            vh.routes,
            vec![
                policy::Route {
                    id: format!("{app}.default/0"),
                    action: route_to(&format!("outbound|9080|v1|{host}")),
                    retry_policy: Some(DEFAULT_RETRY.into()),
                    ..Default::default()
                },
                not_found_404(&host),
            ]
        );
    }
}

#[test]
fn request_routing_jason_to_v2() {
    let t = run(
        &[
            &bookinfo(),
            samples::DESTINATION_RULE_ALL,
            samples::VIRTUAL_SERVICE_REVIEWS_TEST_V2,
        ],
        &with_plugins(),
    );
    let vh = vhost(&t, "reviews.default.svc.cluster.local:9080");
    let jason = policy::RouteMatch {
        headers: [(
            "end-user".to_owned(),
            policy::HeaderMatch::Value(policy::StringMatch::Exact("jason".into())),
        )]
        .into(),
        ..Default::default()
    };
    assert_eq!(
        vh.routes,
        vec![
            policy::Route {
                id: "reviews.default/0".into(),
                matches: vec![jason],
                action: route_to(REVIEWS_V2),
                retry_policy: Some(DEFAULT_RETRY.into()),
                ..Default::default()
            },
            policy::Route {
                id: "reviews.default/1".into(),
                action: route_to(REVIEWS_V1),
                retry_policy: Some(DEFAULT_RETRY.into()),
                ..Default::default()
            },
            not_found_404(REVIEWS),
        ]
    );
    // Other services keep their default route.
    let ratings = vhost(&t, "ratings.default.svc.cluster.local:9080");
    assert_eq!(ratings.routes.len(), 1);
    assert_eq!(
        ratings.routes[0].action,
        route_to("outbound|9080||ratings.default.svc.cluster.local")
    );
}

#[test]
fn traffic_shifting_weights() {
    for (vs, expected) in [
        (
            samples::VIRTUAL_SERVICE_REVIEWS_50_V3,
            [(REVIEWS_V1, 50), (REVIEWS_V3, 50)],
        ),
        (
            samples::VIRTUAL_SERVICE_REVIEWS_80_20,
            [(REVIEWS_V1, 80), (REVIEWS_V2, 20)],
        ),
    ] {
        let t = run(
            &[&bookinfo(), samples::DESTINATION_RULE_ALL, vs],
            &with_plugins(),
        );
        let vh = vhost(&t, "reviews.default.svc.cluster.local:9080");
        assert_eq!(vh.routes[0].action, weighted(&expected));
        assert_eq!(vh.routes.len(), 2);
    }
}

#[test]
fn fault_injection_delay_and_abort() {
    let t = run(
        &[
            &bookinfo(),
            samples::DESTINATION_RULE_ALL,
            samples::VIRTUAL_SERVICE_RATINGS_TEST_DELAY,
        ],
        &with_plugins(),
    );
    assert_eq!(
        t.fault.routes,
        [(
            "ratings.default/0".to_owned(),
            policy::Fault {
                delay: Some(policy::Delay {
                    fixed_delay_ms: 7000,
                    percentage: 100.0
                }),
                abort: None,
            }
        )]
        .into()
    );
    let t = run(
        &[
            &bookinfo(),
            samples::DESTINATION_RULE_ALL,
            samples::VIRTUAL_SERVICE_RATINGS_TEST_ABORT,
        ],
        &with_plugins(),
    );
    assert_eq!(
        t.fault.routes["ratings.default/0"],
        policy::Fault {
            delay: None,
            abort: Some(policy::Abort {
                http_status: Some(500),
                grpc_status: None,
                percentage: 100.0
            }),
        }
    );
    let vh = vhost(&t, "ratings.default.svc.cluster.local:9080");
    assert_eq!(vh.routes[0].id, "ratings.default/0");
}

#[test]
fn fault_percentages_follow_istio() {
    let vs = r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - name: no-percentage
    match: [{uri: {prefix: /a}}]
    fault:
      delay: {fixedDelay: 1.5s}
      abort: {grpcStatus: UNAVAILABLE}
    route: [{destination: {host: ratings}}]
  - name: legacy
    fault:
      delay: {fixedDelay: 500ms, percent: 30}
    route: [{destination: {host: ratings}}]
"#;
    let t = run(&[&bookinfo(), vs], &with_plugins());
    assert_eq!(
        t.fault.routes["ratings.default/no-percentage"],
        policy::Fault {
            delay: Some(policy::Delay {
                fixed_delay_ms: 1500,
                percentage: 0.0
            }),
            abort: Some(policy::Abort {
                http_status: None,
                grpc_status: Some(14),
                percentage: 0.0
            }),
        }
    );
    assert_eq!(
        t.fault.routes["ratings.default/legacy"].delay,
        Some(policy::Delay {
            fixed_delay_ms: 500,
            percentage: 30.0
        })
    );
    assert_eq!(
        printed(&t),
        [
            "Info [WSM0006] (VirtualService ratings.default) spec.http[0].fault.delay.percentage: unset: no request is delayed (Istio's semantics; set percentage.value: 100 for all)",
            "Info [WSM0006] (VirtualService ratings.default) spec.http[0].fault.abort.percentage: unset: no request is aborted (Istio's semantics; set percentage.value: 100 for all)",
            "Warning [IST0002] (VirtualService ratings.default) Deprecated: spec.http[1].fault.delay.percent is deprecated; use percentage",
        ]
    );
}

#[test]
fn mirroring() {
    let t = run(
        &[
            &httpbin(),
            samples::HTTPBIN_DESTINATION_RULE,
            samples::HTTPBIN_MIRROR,
        ],
        &with_plugins(),
    );
    assert_eq!(printed(&t), Vec::<String>::new());
    assert_eq!(
        t.mirror.routes,
        [(
            "httpbin.default/0".to_owned(),
            vec![policy::Mirror {
                cluster: "outbound|8000|v2|httpbin.default.svc.cluster.local".into(),
                percentage: 100.0
            }]
        )]
        .into()
    );
    let vh = vhost(&t, "httpbin.default.svc.cluster.local:8000");
    assert_eq!(
        vh.routes[0].action,
        route_to("outbound|8000|v1|httpbin.default.svc.cluster.local")
    );
    assert!(vh.domains.contains(&"httpbin:8000".to_owned()));

    // `mirrors`, and mirrorPercentage's default of 100.
    let vs = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - route: [{destination: {host: httpbin, subset: v1}}]
    mirrors:
    - destination: {host: httpbin, subset: v2}
      percentage: {value: 25}
    - destination: {host: httpbin}
"#;
    let t = run(
        &[&httpbin(), samples::HTTPBIN_DESTINATION_RULE, vs],
        &with_plugins(),
    );
    assert_eq!(
        t.mirror.routes["httpbin.default/0"],
        vec![
            policy::Mirror {
                cluster: "outbound|8000|v2|httpbin.default.svc.cluster.local".into(),
                percentage: 25.0
            },
            policy::Mirror {
                cluster: "outbound|8000||httpbin.default.svc.cluster.local".into(),
                percentage: 100.0
            },
        ]
    );
}

#[test]
fn circuit_breaking() {
    let t = run(
        &[&httpbin(), samples::HTTPBIN_CIRCUIT_BREAKER],
        &with_plugins(),
    );
    assert_eq!(printed(&t), Vec::<String>::new());
    let name = "outbound|8000||httpbin.default.svc.cluster.local";
    let c = &t.bootstrap.clusters[0];
    assert_eq!(c.name, name);
    assert_eq!(c.circuit_breakers.max_connections, 1);
    assert_eq!(c.circuit_breakers.max_pending_requests, 1);
    assert_eq!(c.circuit_breakers.max_requests, u32::MAX);
    assert_eq!(c.circuit_breakers.max_retries, u32::MAX);
    assert_eq!(c.max_requests_per_connection, 1);
    assert_eq!(
        t.circuit_breaker.clusters,
        [(
            name.to_owned(),
            policy::ClusterPolicy {
                max_requests: Some(2),
                outlier_detection: Some(policy::OutlierDetection {
                    consecutive_5xx: 1,
                    consecutive_gateway_errors: 0,
                    interval_ms: 1000,
                    base_ejection_ms: 180_000,
                    max_ejection_percent: 100,
                    endpoints: 2,
                }),
            }
        )]
        .into()
    );
}

#[test]
fn traffic_policy_merges_port_level_and_subset_settings() {
    let dr = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 250ms}
      http: {http2MaxRequests: 5, idleTimeout: 30s, maxRetries: 3}
    outlierDetection: {baseEjectionTime: 10s}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
      connectionPool:
        http: {useClientProtocol: true}
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 9080}
        connectionPool:
          http: {h2UpgradePolicy: UPGRADE}
"#;
    let t = run(&[&bookinfo(), dr], &with_plugins());
    let cluster = |n: &str| t.bootstrap.clusters.iter().find(|c| c.name == n).unwrap();
    let all = cluster("outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(all.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(all.circuit_breakers.max_connections, 10);
    assert_eq!(all.circuit_breakers.max_requests, 5);
    assert_eq!(all.circuit_breakers.max_retries, 3);
    assert_eq!(all.connect_timeout, Dur::millis(250));
    assert_eq!(all.idle_timeout, Dur::secs(30));
    let v1 = cluster(REVIEWS_V1);
    assert_eq!(v1.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(v1.circuit_breakers.max_requests, 5);
    // A subset's field replaces the rule's whole field.
    let v2 = cluster(REVIEWS_V2);
    assert_eq!(v2.lb_policy, LbPolicy::Random);
    assert_eq!(v2.protocol, UpstreamProtocol::Downstream);
    assert_eq!(v2.circuit_breakers.max_requests, u32::MAX);
    // Port-level settings replace everything, without inheriting.
    let v3 = cluster(REVIEWS_V3);
    assert_eq!(v3.lb_policy, LbPolicy::LeastRequest);
    assert_eq!(v3.protocol, UpstreamProtocol::Http2);
    assert_eq!(v3.connect_timeout, Dur::secs(10));

    // Outlier detection with Istio's defaults; max_requests from http2MaxRequests alone.
    let p = &t.circuit_breaker.clusters["outbound|9080||reviews.default.svc.cluster.local"];
    assert_eq!(p.max_requests, Some(5));
    assert_eq!(
        p.outlier_detection,
        Some(policy::OutlierDetection {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 0,
            interval_ms: 10_000,
            base_ejection_ms: 10_000,
            max_ejection_percent: 10,
            endpoints: 3,
        })
    );
    assert_eq!(
        t.circuit_breaker.clusters[REVIEWS_V1]
            .outlier_detection
            .as_ref()
            .unwrap()
            .endpoints,
        1
    );
    assert!(!t.circuit_breaker.clusters.contains_key(REVIEWS_V3));
}

#[test]
fn routes_carry_matches_headers_rewrites_redirects_and_retries() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: canary
    match:
    - uri: {prefix: /v2}
      ignoreUriCase: true
      method: {exact: GET}
      headers:
        X-Canary: {regex: "1|yes"}
        x-present: {}
      withoutHeaders:
        x-skip: {}
      queryParams:
        debug: {exact: "1"}
    rewrite: {uri: /, authority: reviews-canary}
    headers:
      request:
        set: {x-route: canary}
        remove: [x-drop]
      response:
        add: {x-served-by: canary}
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 10
      headers:
        request: {set: {x-version: v2}}
    - destination: {host: reviews, subset: v1}
      weight: 90
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,reset,409,envoy-ratelimited"}
  - name: old
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: example.com}
  - name: teapot
    match: [{uri: {regex: "/tea.*"}}]
    directResponse:
      status: 418
      body: {bytes: "SSdtIGEgdGVhcG90"}
  - name: no-retries
    route: [{destination: {host: reviews, subset: v1}}]
    retries: {attempts: 0}
"#;
    let t = run(
        &[&bookinfo(), samples::DESTINATION_RULE_ALL, vs],
        &with_plugins(),
    );
    assert_eq!(
        printed(&t)
            .into_iter()
            .filter(|d| !d.contains("IST0173"))
            .collect::<Vec<_>>(),
        [
            "Warning [WSM0002] (VirtualService reviews.default) spec.http[0].retries.retryOn is not supported by wasmesh yet: condition \"envoy-ratelimited\" is dropped",
        ]
    );
    let vh = vhost(&t, "reviews.default.svc.cluster.local:9080");
    let canary = &vh.routes[0];
    assert_eq!(canary.id, "reviews.default/canary");
    let m = &canary.matches[0];
    assert_eq!(m.uri, Some(policy::StringMatch::Prefix("/v2".into())));
    assert!(m.ignore_uri_case);
    assert_eq!(m.method, Some(policy::StringMatch::Exact("GET".into())));
    assert_eq!(
        m.headers,
        [
            (
                "x-canary".to_owned(),
                policy::HeaderMatch::Value(policy::StringMatch::Regex("1|yes".into()))
            ),
            ("x-present".to_owned(), policy::HeaderMatch::Present),
        ]
        .into()
    );
    assert_eq!(
        m.without_headers,
        [("x-skip".to_owned(), policy::HeaderMatch::Present)].into()
    );
    assert_eq!(
        m.query_params,
        [("debug".to_owned(), policy::StringMatch::Exact("1".into()))].into()
    );
    let policy::Action::Route {
        destinations,
        rewrite,
    } = &canary.action
    else {
        panic!("{:?}", canary.action)
    };
    assert_eq!(destinations[0].cluster, REVIEWS_V2);
    assert_eq!(destinations[0].weight, 10);
    assert_eq!(
        destinations[0].request_headers.set,
        [("x-version".to_owned(), "v2".to_owned())]
    );
    assert_eq!(destinations[1].cluster, REVIEWS_V1);
    assert_eq!(destinations[1].weight, 90);
    assert_eq!(
        rewrite,
        &Some(policy::Rewrite {
            uri: Some("/".into()),
            uri_regex: None,
            authority: Some("reviews-canary".into())
        })
    );
    assert_eq!(
        canary.request_headers,
        policy::HeaderOps {
            set: vec![("x-route".into(), "canary".into())],
            add: vec![],
            remove: vec!["x-drop".into()],
        }
    );
    assert_eq!(
        canary.response_headers.add,
        [("x-served-by".to_owned(), "canary".to_owned())]
    );
    assert_eq!(canary.timeout_ms, Some(2000));
    assert_eq!(
        canary.retry_policy.as_deref(),
        Some(
            "attempts=3;per_try_timeout_ms=500;retry_on=5xx,reset,retriable-status-codes;retriable_status_codes=409"
        )
    );

    assert_eq!(
        vh.routes[1].action,
        policy::Action::Redirect(policy::Redirect {
            uri: Some("/new".into()),
            authority: Some("example.com".into()),
            scheme: None,
            port: None,
            status: 301,
        })
    );
    assert_eq!(vh.routes[1].retry_policy, None);
    assert_eq!(
        vh.routes[2].action,
        policy::Action::DirectResponse {
            status: 418,
            body: "I'm a teapot".into()
        }
    );
    assert_eq!(vh.routes[3].retry_policy.as_deref(), Some("attempts=0"));
    assert_eq!(vh.routes[3].timeout_ms, None);
}

#[test]
fn without_plugins_the_proxy_routes_carry_what_they_can() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /v3}}, {uri: {exact: /three}}]
    route: [{destination: {host: reviews, subset: v3}}]
    timeout: 1s
    retries: {attempts: 4, retryOn: 5xx}
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#;
    let t = run(
        &[&bookinfo(), samples::DESTINATION_RULE_ALL, vs],
        &Options::default(),
    );
    let listener = &t.bootstrap.listeners[0];
    assert!(listener.http_filters.is_empty());
    let reviews = listener
        .virtual_hosts
        .iter()
        .find(|v| v.name == "reviews.default.svc.cluster.local:9080")
        .unwrap();
    let got: Vec<_> = reviews
        .routes
        .iter()
        .map(|r| {
            (
                r.matcher.prefix.clone(),
                r.matcher.path.clone(),
                r.cluster.as_str(),
                r.timeout,
                r.retry_policy.as_ref().unwrap().num_retries,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (Some("/v3".into()), None, REVIEWS_V3, Dur::secs(1), 4),
            (None, Some("/three".into()), REVIEWS_V3, Dur::secs(1), 4),
            (None, None, REVIEWS_V1, Dur::default(), 2),
        ]
    );
    assert!(printed(&t).contains(&"Info [WSM0006] (VirtualService reviews.default) spec.http[1]: route reviews.default/1 needs the plugins (the proxy's own routes match paths only and forward to one destination): left out".to_owned()));
}

#[test]
fn fall_through_option_keeps_the_default_route() {
    let options = Options {
        fall_through_to_default_route: true,
        ..with_plugins()
    };
    let t = run(
        &[
            &bookinfo(),
            samples::DESTINATION_RULE_ALL,
            samples::VIRTUAL_SERVICE_REVIEWS_TEST_V2,
        ],
        &options,
    );
    let vh = vhost(&t, "reviews.default.svc.cluster.local:9080");
    assert_eq!(
        vh.routes[2].action,
        route_to("outbound|9080||reviews.default.svc.cluster.local")
    );
}

#[test]
fn missing_hosts_and_subsets_route_to_clusters_that_do_not_exist() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews2}, weight: 50}
    - {destination: {host: reviews, subset: v9}, weight: 50}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nothing, namespace: shop}
spec:
  hosts: [nothing]
  http:
  - route: [{destination: {host: nothing}}]
"#;
    let loaded = parse_str(
        &format!("{}---\n{vs}", bookinfo()),
        Some(Path::new("mesh.yaml")),
    );
    let t = translate(&loaded.resources, &with_plugins());
    t.bootstrap.validate().unwrap();
    assert_eq!(
        printed(&t),
        [
            "Error [IST0101] (VirtualService nothing.shop mesh.yaml:163) Referenced host not found: \"nothing\"",
            "Error [IST0101] (VirtualService reviews.default mesh.yaml:153) Referenced host not found: \"reviews2\"",
            "Error [IST0101] (VirtualService reviews.default mesh.yaml:153) Referenced host+subset in destinationrule not found: \"reviews+v9\"",
        ]
    );
    assert_eq!(
        t.diagnostics[1].field.as_deref(),
        Some("spec.http[0].route[0].destination.host")
    );
    let vh = vhost(&t, "reviews.default.svc.cluster.local:9080");
    assert_eq!(
        vh.routes[0].action,
        weighted(&[
            ("outbound|9080||reviews2.default.svc.cluster.local", 50),
            ("outbound|9080|v9|reviews.default.svc.cluster.local", 50)
        ])
    );
    let clusters: Vec<_> = t
        .bootstrap
        .clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        !clusters
            .iter()
            .any(|c| c.contains("v9") || c.contains("reviews2"))
    );
}

#[test]
fn conflicting_virtual_services_first_wins() {
    let vs = |name: &str, subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]\n"
        )
    };
    let t = run(
        &[
            &bookinfo(),
            samples::DESTINATION_RULE_ALL,
            &vs("reviews-b", "v2"),
            &vs("reviews-a", "v1"),
        ],
        &with_plugins(),
    );
    assert!(printed(&t).contains(&"Warning [IST0109] (VirtualService reviews-b.default) The VirtualServices reviews-a.default,reviews-b.default associated with mesh gateway define the same host reviews.default.svc.cluster.local which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.".to_owned()));
    let vh = vhost(&t, "reviews.default.svc.cluster.local:9080");
    assert_eq!(vh.routes[0].id, "reviews-a.default/0");
}

#[test]
fn service_without_endpoints_is_left_out() {
    let se = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ghost}
spec:
  hosts: [ghost.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: ghost}}
"#;
    let t = run(&[&bookinfo(), se], &with_plugins());
    assert_eq!(
        printed(&t),
        [
            "Warning [WSM0003] (ServiceEntry ghost.default) No endpoints for host ghost.example.com port 80: cluster outbound|80||ghost.example.com is left out, and requests routed to it get 503"
        ]
    );
    // The router still knows the host (and answers 503 NC); the proxy's table has no route.
    let vh = vhost(&t, "ghost.example.com:80");
    assert_eq!(
        vh.routes[0].action,
        route_to("outbound|80||ghost.example.com")
    );
    let core = t.bootstrap.listeners[0]
        .virtual_hosts
        .iter()
        .find(|v| v.name == "ghost.example.com:80")
        .unwrap();
    assert!(core.routes.is_empty());
}

#[test]
fn service_entries_inline_endpoints_dns_and_ports() {
    let se = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  - {number: 81, name: grpc-api, protocol: GRPC}
  - {number: 443, name: https, protocol: HTTPS}
  - {number: 53, name: dns, protocol: UDP}
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1}
  - {address: 10.0.0.2, ports: {http: 9090, grpc-api: 9191}}
  - {address: "::1"}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: local, namespace: shop}
spec:
  hosts: [localhost]
  ports: [{number: 8080, name: http}]
  resolution: DNS
"#;
    let t = run(&[se], &with_plugins());
    assert_eq!(
        printed(&t),
        [
            "Warning [WSM0002] (ServiceEntry api.shop) spec.ports[3] is not supported by wasmesh yet: port 53 speaks UDP; only HTTP, HTTP2, GRPC and TCP ports are served: skipped"
        ]
    );
    let c: Vec<_> = t
        .bootstrap
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.endpoints.join(" "), c.protocol))
        .collect();
    assert_eq!(
        c,
        [
            (
                "outbound|80||api.example.com",
                "10.0.0.1:8080 10.0.0.2:9090 [::1]:8080".to_owned(),
                UpstreamProtocol::Http1
            ),
            (
                "outbound|81||api.example.com",
                "10.0.0.1:81 10.0.0.2:9191 [::1]:81".to_owned(),
                UpstreamProtocol::Http2
            ),
            // HTTPS, opaque to the proxy: a TCP service (proxied where it has an address).
            (
                "outbound|443||api.example.com",
                "10.0.0.1:443 10.0.0.2:443 [::1]:443".to_owned(),
                UpstreamProtocol::Tcp
            ),
            (
                "outbound|8080||localhost",
                "localhost:8080".to_owned(),
                UpstreamProtocol::Http1
            ),
            // ALLOW_ANY, Istio's default: unknown hosts pass through.
            (
                "PassthroughCluster",
                String::new(),
                UpstreamProtocol::Downstream
            ),
        ]
    );
    assert_eq!(
        vhost(&t, "api.example.com:80").domains,
        ["api.example.com", "api.example.com:80"]
    );
    assert_eq!(
        vhost(&t, "api.example.com:81").domains,
        ["api.example.com:81"]
    );
    // No HTTP routes to the TCP port.
    assert!(
        t.router
            .virtual_hosts
            .iter()
            .all(|v| v.name != "api.example.com:443")
    );
    // The whole bootstrap is one the proxy takes.
    t.bootstrap.validate().unwrap();
}

// ----- bad input -----

/// Translates one document after Bookinfo and the DestinationRules; returns what was said
/// about it.
fn complaints(doc: &str) -> (Translation, Vec<String>) {
    let text = format!(
        "{}---\n{}---\n{doc}",
        bookinfo(),
        samples::DESTINATION_RULE_ALL
    );
    let loaded = parse_str(&text, Some(Path::new("bad.yaml")));
    let mut said: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
    let t = translate(&loaded.resources, &with_plugins());
    t.bootstrap.validate().unwrap();
    said.extend(
        t.diagnostics
            .iter()
            .filter(|d| d.code != "IST0173")
            .map(ToString::to_string),
    );
    (t, said)
}

#[test]
fn invalid_virtual_services_are_left_out_with_their_reasons() {
    let (t, said) = complaints(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {regex: "(unclosed"}}]
    route:
    - {destination: {host: reviews, subset: v1}, weight: 60}
    - {destination: {host: reviews, subset: v2}, weight: 30}
    timeout: -1s
    fault: {abort: {httpStatus: 700, percentage: {value: 100}}}
"#,
    );
    assert_eq!(
        said,
        [
            "Error [IST0122] (VirtualService reviews.default bad.yaml:215) Field \"spec.http[0].match[0].uri.regex\" regular expression invalid: \"(unclosed\" (unclosed group)",
            "Error [IST0106] (VirtualService reviews.default bad.yaml:215) Schema validation error: spec.http[0].route: total destination weight 90 != 100",
            "Error [IST0106] (VirtualService reviews.default bad.yaml:215) Schema validation error: spec.http[0].timeout: duration \"-1s\" must not be negative",
            "Error [IST0106] (VirtualService reviews.default bad.yaml:215) Schema validation error: spec.http[0].fault.abort.httpStatus: httpStatus 700 is not in range 200..599",
        ]
    );
    // Left out: reviews keeps its default route.
    let vh = vhost(&t, "reviews.default.svc.cluster.local:9080");
    assert_eq!(vh.routes.len(), 1);
    assert!(t.fault.routes.is_empty());
}

#[test]
fn unknown_fields_are_schema_errors_with_their_line() {
    let (_, said) = complaints(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
    rout: oops
"#,
    );
    assert_eq!(
        said,
        [
            "Error [IST0106] (VirtualService reviews.default bad.yaml:225) Schema validation error: unknown field \"spec.http[0].rout\""
        ]
    );
}

#[test]
fn bad_enums_and_types_name_the_field() {
    let (_, said) = complaints(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings-lb}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {simple: FASTEST}
"#,
    );
    assert_eq!(
        said,
        [
            "Error [IST0106] (DestinationRule ratings-lb.default bad.yaml:221) Schema validation error: spec.trafficPolicy.loadBalancer.simple: unknown variant `FASTEST`, expected one of UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST"
        ]
    );
}

#[test]
fn one_bad_document_does_not_stop_the_others() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {ports: [{port: 9080}]}
---
apiVersion: networking.istio.io/v2
kind: VirtualService
metadata: {name: future}
spec: {}
---
- just
- a list
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ok}
spec: {address: 10.0.0.1}
";
    let loaded = parse_str(text, Some(Path::new("m/mixed.yaml")));
    let said: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(loaded.resources.len(), 1);
    assert_eq!(loaded.resources[0].name(), "ok");
    assert_eq!(loaded.resources[0].source.line, Some(18));
    assert_eq!(said.len(), 4, "{said:#?}");
    assert!(
        said[0].starts_with("Error [WSM0004] (m/mixed.yaml:3) YAML parse error: "),
        "{}",
        said[0]
    );
    assert_eq!(
        said[1],
        "Info [WSM0001] (Service reviews.shop m/mixed.yaml:5) Service (v1) is not translated by wasmesh: skipped"
    );
    assert_eq!(
        said[2],
        "Error [IST0106] (VirtualService future.default m/mixed.yaml:10) Schema validation error: apiVersion \"networking.istio.io/v2\" is not served (use networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3)"
    );
    assert!(
        said[3].starts_with("Error [WSM0004] (m/mixed.yaml:15) not a Kubernetes object"),
        "{}",
        said[3]
    );
}

#[test]
fn unsupported_and_ignored_fields_are_reported() {
    let (t, said) = complaints(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-extra}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    tls: {mode: SIMPLE, caCrl: /etc/crl.pem}
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
    outlierDetection: {consecutiveErrors: 7}
"#,
    );
    assert_eq!(
        said,
        [
            "Warning [WSM0002] (DestinationRule reviews-extra.default bad.yaml:215) spec.trafficPolicy.tls.caCrl is not supported by wasmesh yet: not checked",
            "Warning [WSM0002] (DestinationRule reviews-extra.default bad.yaml:215) spec.trafficPolicy.loadBalancer.consistentHash is not supported by wasmesh yet: LEAST_REQUEST is used",
            "Warning [IST0002] (DestinationRule reviews-extra.default bad.yaml:215) Deprecated: spec.trafficPolicy.outlierDetection.consecutiveErrors is deprecated; use consecutiveGatewayErrors or consecutive5xxErrors",
            "Warning [WSM0005] (DestinationRule reviews-extra.default bad.yaml:215) DestinationRule reviews.default for the same host reviews.default.svc.cluster.local came first: this one is ignored",
        ]
    );
    // "reviews" sorts before "reviews-extra": its rule (no outlier detection) wins.
    assert!(
        !t.circuit_breaker
            .clusters
            .contains_key("outbound|9080||reviews.default.svc.cluster.local")
    );
}

#[test]
fn no_services_still_validates() {
    let t = run(&[samples::VIRTUAL_SERVICE_REVIEWS_TEST_V2], &with_plugins());
    assert_eq!(
        printed(&t),
        ["Error [IST0101] (VirtualService reviews.default) Referenced host not found: \"reviews\"",]
    );
    assert_eq!(t.bootstrap.listeners[0].virtual_hosts[0].domains, ["*"]);
}

#[test]
fn output_is_deterministic() {
    let docs = [
        bookinfo(),
        samples::DESTINATION_RULE_ALL.to_owned(),
        samples::VIRTUAL_SERVICE_REVIEWS_80_20.to_owned(),
    ];
    let forward = parse_str(&docs.join("\n---\n"), None).resources;
    let mut backward = forward.clone();
    backward.reverse();
    let a = translate(&forward, &with_plugins());
    let b = translate(&backward, &with_plugins());
    assert_eq!(a.router, b.router);
    assert_eq!(
        serde_json::to_string(&a.bootstrap).unwrap(),
        serde_json::to_string(&b.bootstrap).unwrap()
    );
}

#[test]
fn diagnostics_serialize_like_istioctl_json() {
    let d = Diagnostic {
        kind: Some("VirtualService".into()),
        name: Some("reviews".into()),
        namespace: Some("default".into()),
        file: Some("manifests/bookinfo.yaml".into()),
        line: Some(12),
        ..Diagnostic::error(
            crate::diag::code::REFERENCED_RESOURCE_NOT_FOUND,
            "Referenced host not found: \"reviews2\"",
        )
        .at("spec.http[0].route[0].destination.host")
    };
    assert_eq!(
        d.to_string(),
        "Error [IST0101] (VirtualService reviews.default manifests/bookinfo.yaml:12) Referenced host not found: \"reviews2\""
    );
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        serde_json::json!({
            "code": "IST0101",
            "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0101/",
            "level": "Error",
            "message": "Referenced host not found: \"reviews2\"",
            "origin": "VirtualService reviews.default manifests/bookinfo.yaml:12",
            "kind": "VirtualService",
            "name": "reviews",
            "namespace": "default",
            "file": "manifests/bookinfo.yaml",
            "line": 12,
            "field": "spec.http[0].route[0].destination.host",
        })
    );
    let bare = Diagnostic {
        name: None,
        namespace: None,
        kind: None,
        file: None,
        line: None,
        ..d
    };
    assert_eq!(
        bare.to_string(),
        "Error [IST0101] Referenced host not found: \"reviews2\""
    );
}

#[test]
fn loads_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("10-bookinfo.yaml"), bookinfo()).unwrap();
    std::fs::write(
        dir.path().join("20-rules.yml"),
        samples::DESTINATION_RULE_ALL,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("30-routing.yaml"),
        samples::VIRTUAL_SERVICE_REVIEWS_TEST_V2,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
    let loaded = crate::manifests::load_path(dir.path()).unwrap();
    assert_eq!(loaded.diagnostics, vec![]);
    assert_eq!(loaded.resources.len(), 15);
    let vs = loaded.resources.last().unwrap();
    assert_eq!(
        vs.source.file.as_deref(),
        Some(dir.path().join("30-routing.yaml").as_path())
    );
    assert_eq!(vs.source.line, Some(2));
    let t = translate(&loaded.resources, &with_plugins());
    t.bootstrap.validate().unwrap();
    assert!(crate::manifests::load_path(&dir.path().join("missing.yaml")).is_err());
}

#[test]
fn multi_port_destinations_need_a_port() {
    let se = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.default.svc.cluster.local]
  ports:
  - {number: 80, name: http}
  - {number: 8080, name: http-admin}
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: to-api}
spec:
  hosts: [ratings]
  http:
  - name: ambiguous
    route: [{destination: {host: api}}]
  - name: wrong-port
    route: [{destination: {host: api, port: {number: 81}}}]
  - name: admin
    route: [{destination: {host: api, port: {number: 8080}}}]
"#;
    let t = run(&[&bookinfo(), se], &with_plugins());
    assert_eq!(
        printed(&t),
        [
            "Error [IST0112] (VirtualService to-api.default) This VirtualService routes to a service \"api\" that exposes multiple ports [80, 8080]. Specifying a port in the destination is required to disambiguate.",
            "Error [IST0101] (VirtualService to-api.default) Referenced host+port not found: \"api+81\"",
        ]
    );
    let vh = vhost(&t, "ratings.default.svc.cluster.local:9080");
    let clusters: Vec<_> = vh
        .routes
        .iter()
        .filter_map(|r| match &r.action {
            policy::Action::Route { destinations, .. } => Some(destinations[0].cluster.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        clusters,
        [
            "outbound|80||api.default.svc.cluster.local",
            "outbound|81||api.default.svc.cluster.local",
            "outbound|8080||api.default.svc.cluster.local",
        ]
    );
    // Only the first HTTP port answers to names without a port.
    assert_eq!(
        vhost(&t, "api.default.svc.cluster.local:8080").domains,
        [
            "api.default.svc.cluster.local:8080",
            "api:8080",
            "api.default:8080",
            "api.default.svc:8080"
        ]
    );
}

#[test]
fn duplicate_route_names_are_refused() {
    let (_, said) = complaints(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: main
    match: [{uri: {prefix: /a}}]
    route: [{destination: {host: reviews}}]
  - name: main
    route: [{destination: {host: reviews}}]
"#,
    );
    assert_eq!(
        said,
        [
            "Error [IST0106] (VirtualService reviews.default bad.yaml:215) Schema validation error: spec.http[1].name: route name \"main\" is used by an earlier route"
        ]
    );
}

#[test]
fn translate_loaded_puts_the_loading_diagnostics_first() {
    let text = format!(
        "{}---\nkind: VirtualService\nspec: [\n---\n{}",
        bookinfo(),
        samples::VIRTUAL_SERVICE_ALL_V1
    );
    let loaded = parse_str(&text, Some(Path::new("mesh.yaml")));
    assert!(
        !loaded.diagnostics.is_empty(),
        "the broken document is reported"
    );
    let t = super::translate_loaded(&loaded, &with_plugins());
    assert_eq!(
        t.diagnostics[..loaded.diagnostics.len()],
        loaded.diagnostics[..]
    );
    let errors: Vec<_> = t.errors().collect();
    assert!(!errors.is_empty());
    assert!(errors.iter().all(|d| d.level == crate::Level::Error));
    assert_eq!(
        errors.len(),
        t.diagnostics
            .iter()
            .filter(|d| d.level == crate::Level::Error)
            .count()
    );
}
