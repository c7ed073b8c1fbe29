use super::*;

const MINIMAL: &str = r#"
listeners:
- name: ingress
  address: "127.0.0.1:0"
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: {prefix: /}
      cluster: backend
clusters:
- name: backend
  endpoints: ["127.0.0.1:8080"]
"#;

fn err(yaml: &str) -> ConfigError {
    Bootstrap::parse(yaml).expect_err("config should be refused")
}

#[test]
fn minimal_config_gets_mesh_defaults() {
    let b = Bootstrap::parse(MINIMAL).unwrap();
    let c = &b.clusters[0];
    assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(c.connect_timeout, Dur::secs(5));
    assert_eq!(
        c.circuit_breakers.max_connections,
        u32::MAX,
        "Istio's unlimited default"
    );
    assert_eq!(c.circuit_breakers.max_retries, u32::MAX);

    let r = &b.listeners[0].virtual_hosts[0].routes[0];
    assert_eq!(r.timeout, Dur::secs(15));
    assert_eq!(b.listeners[0].http.max_request_headers_kb, 60);
    assert_eq!(b.listeners[0].http.max_headers_count, 100);
}

#[test]
fn unknown_fields_name_their_path() {
    let e = err(&MINIMAL.replace("cluster: backend", "cluster: backend\n      clustr: x"));
    assert_eq!(e.field, "listeners[0].virtual_hosts[0].routes[0].clustr");
    assert!(e.reason.contains("unknown field"), "{e}");
    assert!(e.reason.contains("line"), "{e}");
}

#[test]
fn bad_values_name_field_and_reason() {
    let e = err(&MINIMAL.replace(
        "endpoints: [\"127.0.0.1:8080\"]",
        "endpoints: [\"127.0.0.1:8080\"]\n  connect_timeout: 5",
    ));
    assert_eq!(e.field, "clusters[0].connect_timeout");
    assert!(e.reason.contains("no unit"), "{e}");

    let e = err(&MINIMAL.replace("endpoints:", "lb_policy: fastest\n  endpoints:"));
    assert_eq!(e.field, "clusters[0].lb_policy");
    assert!(e.reason.contains("fastest"), "{e}");

    let e = err(&MINIMAL.replace(
        "match: {prefix: /}",
        "match: {prefix: /}\n      retry_policy: {retry_on: \"5xx,sometimes\"}",
    ));
    assert_eq!(
        e.field,
        "listeners[0].virtual_hosts[0].routes[0].retry_policy.retry_on"
    );
    assert!(e.reason.contains("sometimes"), "{e}");
}

#[test]
fn references_and_addresses_are_checked() {
    let e = err(&MINIMAL.replace("cluster: backend", "cluster: nowhere"));
    assert_eq!(e.field, "listeners[0].virtual_hosts[0].routes[0].cluster");
    assert!(e.reason.contains("unknown cluster \"nowhere\""), "{e}");

    let e = err(&MINIMAL.replace("\"127.0.0.1:0\"", "\"localhost\""));
    assert_eq!(e.field, "listeners[0].address");

    let e = err(&MINIMAL.replace("[\"127.0.0.1:8080\"]", "[\"127.0.0.1\"]"));
    assert_eq!(e.field, "clusters[0].endpoints[0]");
    assert!(e.reason.contains("no port"), "{e}");

    let e = err(&format!("workers: 0\n{MINIMAL}"));
    assert_eq!(e.field, "workers");

    let e = err(&MINIMAL.replace("domains: [\"*\"]", "domains: [\"a.*.b\"]"));
    assert_eq!(e.field, "listeners[0].virtual_hosts[0].domains[0]");
}

#[test]
fn duplicate_names_are_refused() {
    let yaml = format!("{MINIMAL}- name: backend\n  endpoints: [\"127.0.0.1:1\"]\n");
    let e = err(&yaml);
    assert_eq!(e.field, "clusters[1].name");
    assert!(e.reason.contains("duplicate"), "{e}");
}

#[test]
fn yaml_syntax_errors_are_reported() {
    let e = err("listeners: [\n");
    assert!(!e.reason.is_empty());
    assert!(e.to_string().contains("line"), "{e}");
}

#[test]
fn load_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, MINIMAL.replace("cluster: backend", "cluster: 42x")).unwrap();
    let e = Bootstrap::load(&path).unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with(&path.display().to_string()), "{text}");
    assert!(text.contains("routes[0].cluster"), "{text}");
    let missing = Bootstrap::load(&dir.join("missing.yaml")).unwrap_err();
    assert!(missing.to_string().contains("cannot read"), "{missing}");
}

#[test]
fn filter_retry_specs_parse_and_are_capped_like_routes() {
    let p = RetryPolicy::parse_spec(
        "attempts=3; per_try_timeout_ms=500; retry_on=5xx,reset; retriable_status_codes=503,409",
    )
    .unwrap();
    assert_eq!(p.num_retries, 3);
    assert_eq!(p.per_try_timeout, Dur::millis(500));
    assert!(p.retry_on.contains(RetryOn::FIVE_XX));
    assert_eq!(p.retriable_status_codes, [503, 409]);
    let defaults = RetryPolicy::parse_spec("").unwrap();
    assert_eq!(defaults.num_retries, 1);
    assert_eq!(
        RetryPolicy::parse_spec("attempts=50").unwrap().num_retries,
        MAX_RETRIES
    );
    for (bad, why) in [
        ("attempts=x", "not a number"),
        ("retry_on=sometimes", "sometimes"),
        ("retriable_status_codes=99", "not an HTTP status code"),
        ("tries=2", "unknown field"),
        ("attempts", "key=value"),
    ] {
        let err = RetryPolicy::parse_spec(bad).unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

#[test]
fn a_filter_scope_names_known_clusters_and_something() {
    let with = |scope: &str| {
        MINIMAL.replace(
            "  virtual_hosts:",
            &format!("  http_filters:\n  - {{name: f, url: f.wasm, applies_to: {scope}}}\n  virtual_hosts:"),
        )
    };
    let b = Bootstrap::parse(&with("{routes: [r], clusters: [backend], unrouted: true}")).unwrap();
    let scope = b.listeners[0].http_filters[0].applies_to.clone().unwrap();
    assert_eq!(
        (scope.routes, scope.clusters, scope.unrouted),
        (vec!["r".to_owned()], vec!["backend".to_owned()], true)
    );

    let e = err(&with("{clusters: [nowhere]}"));
    assert_eq!(
        e.field,
        "listeners[0].http_filters[0].applies_to.clusters[0]"
    );
    assert!(e.reason.contains("unknown cluster"), "{e}");
    let e = err(&with("{}"));
    assert_eq!(e.field, "listeners[0].http_filters[0].applies_to");
    let e = err(&with("{hosts: [a]}"));
    assert!(e.to_string().contains("hosts"), "{e}");
}

#[test]
fn tcp_proxy_listeners_name_a_tcp_cluster_and_serve_no_http() {
    let tcp = |listener: &str, cluster_protocol: &str| {
        format!(
            "listeners:\n- {listener}\nclusters:\n- {{name: db, protocol: {cluster_protocol}, endpoints: [\"127.0.0.1:3306\"]}}\n"
        )
    };
    let ok = tcp(
        "{name: db, address: \"127.0.0.1:0\", tcp_proxy: {cluster: db}}",
        "tcp",
    );
    let b = Bootstrap::parse(&ok).unwrap();
    assert_eq!(b.listeners[0].tcp_proxy.as_ref().unwrap().cluster, "db");

    let e = err(&tcp(
        "{name: db, address: \"127.0.0.1:0\", tcp_proxy: {cluster: nope}}",
        "tcp",
    ));
    assert_eq!(e.field, "listeners[0].tcp_proxy.cluster");
    let e = err(&tcp(
        "{name: db, address: \"127.0.0.1:0\", tcp_proxy: {cluster: db}}",
        "http1",
    ));
    assert!(e.reason.contains("not of protocol tcp"), "{e}");
    let e = err(&tcp(
        "{name: db, address: \"127.0.0.1:0\", tcp_proxy: {cluster: db}, virtual_hosts: [{name: v, domains: [\"*\"], routes: []}]}",
        "tcp",
    ));
    assert_eq!(e.field, "listeners[0].virtual_hosts");

    // An HTTP route to a TCP cluster is refused.
    let e = err(&MINIMAL.replace(
        "  endpoints: [\"127.0.0.1:8080\"]",
        "  protocol: tcp\n  endpoints: [\"127.0.0.1:8080\"]",
    ));
    assert!(e.reason.contains("speaks TCP"), "{e}");
}

#[test]
fn direct_responses_and_resolutions_are_checked() {
    let direct = MINIMAL.replace(
        "cluster: backend",
        "direct_response: {status: 502, body: blocked}",
    );
    let b = Bootstrap::parse(&direct).unwrap();
    let r = &b.listeners[0].virtual_hosts[0].routes[0];
    assert_eq!(r.cluster, "");
    assert_eq!(
        r.direct_response,
        Some(DirectResponse {
            status: 502,
            body: "blocked".into()
        })
    );

    let e = err(&MINIMAL.replace(
        "cluster: backend",
        "cluster: backend\n      direct_response: {status: 502}",
    ));
    assert_eq!(
        e.field,
        "listeners[0].virtual_hosts[0].routes[0].direct_response"
    );
    assert!(e.reason.contains("not both"), "{e}");
    let e = err(&MINIMAL.replace("cluster: backend", "timeout: 1s"));
    assert_eq!(e.field, "listeners[0].virtual_hosts[0].routes[0].cluster");
    assert!(e.reason.contains("cluster or a direct_response"), "{e}");
    let e = err(&MINIMAL.replace("cluster: backend", "direct_response: {status: 99}"));
    assert_eq!(
        e.field,
        "listeners[0].virtual_hosts[0].routes[0].direct_response.status"
    );

    // dns: names are not resolved at load, but need a port.
    let dns = MINIMAL.replace(
        "endpoints: [\"127.0.0.1:8080\"]",
        "resolution: dns\n  endpoints: [\"no-such-host.invalid:80\"]",
    );
    assert_eq!(
        Bootstrap::parse(&dns).unwrap().clusters[0].resolution,
        Resolution::Dns
    );
    let e = err(&dns.replace("invalid:80", "invalid"));
    assert_eq!(e.field, "clusters[0].endpoints[0]");
    assert!(e.reason.contains("no port"), "{e}");
    let e = err(&dns.replace("[\"no-such-host.invalid:80\"]", "[]"));
    assert_eq!(e.field, "clusters[0].endpoints");
    // Static names are still resolved at load.
    let e = err(&MINIMAL.replace("127.0.0.1:8080", "no-such-host.invalid:80"));
    assert_eq!(e.field, "clusters[0].endpoints[0]");

    let od = MINIMAL.replace(
        "endpoints: [\"127.0.0.1:8080\"]",
        "resolution: original_dst",
    );
    assert_eq!(
        Bootstrap::parse(&od).unwrap().clusters[0].resolution,
        Resolution::OriginalDst
    );
    let e = err(&od.replace(
        "resolution: original_dst",
        "resolution: original_dst\n  endpoints: [\"127.0.0.1:1\"]",
    ));
    assert_eq!(e.field, "clusters[0].endpoints");
    let e = err(&od.replace(
        "resolution: original_dst",
        "resolution: original_dst\n  protocol: tcp",
    ));
    assert_eq!(e.field, "clusters[0].protocol");
}
