//! Routes the proxy answers itself (`direct_response`) and clusters whose endpoints are found
//! as requests come: `resolution: dns` (Envoy's STRICT_DNS) and `resolution: original_dst`
//! (Envoy's ORIGINAL_DST, Istio's PassthroughCluster).

use std::time::Duration;

use wasmesh_artifacts::HEADERS;

use crate::support::*;

/// A GET through the proxy at `addr` with `host` as its `Host` header.
async fn get_as(addr: std::net::SocketAddr, host: &str, path: &str) -> Reply {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .header("host", host)
        .body(empty())
        .unwrap();
    send(&h1_client(), req).await
}

fn read_log(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_responses_are_local_replies_logged_as_envoy_logs_them() {
    let up = Upstream::echo("up").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!(
        r#"
workers: 2
admin: {{address: "127.0.0.1:0"}}
access_log: {{path: "{log}"}}
listeners:
- name: ingress
  address: "127.0.0.1:0"
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - {{name: block_all, match: {{prefix: /blocked}}, direct_response: {{status: 502}}}}
    - {{name: teapot, match: {{prefix: /teapot}}, direct_response: {{status: 418, body: "short and stout"}}}}
    - {{match: {{prefix: /}}, cluster: backend}}
- name: filtered
  address: "127.0.0.1:0"
  http_filters:
  - {{name: headers, url: "{HEADERS}"}}
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - {{name: block_all, direct_response: {{status: 502}}}}
clusters:
- {{name: backend, endpoints: ["{up}"]}}
"#,
        log = log.display(),
        up = up.addr,
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();

    let blocked = get(addr, "/blocked").await;
    assert_eq!(blocked.status, 502);
    assert!(blocked.body.is_empty(), "{}", blocked.text());
    let teapot = get(addr, "/teapot/x").await;
    assert_eq!(teapot.status, 418);
    assert_eq!(teapot.text(), "short and stout");
    assert_eq!(teapot.header("content-type"), Some("text/plain"));
    assert_eq!(teapot.header("server"), Some("wasmesh"));
    assert_eq!(get(addr, "/other").await.status, 200);
    assert_eq!(up.hits(), 1, "direct responses never reach the cluster");

    // Through a filter chain: the response half runs on the proxy's reply as on any other.
    let filtered = proxy.listener_addr("filtered").unwrap();
    let reply = get(filtered, "/anything").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-wasm-path"), Some("/anything"));

    let mut lines = Vec::new();
    eventually("four access log lines", Duration::from_secs(5), || {
        lines = read_log(&log);
        let n = lines.len();
        async move { n >= 4 }
    })
    .await;
    for path in ["/blocked", "/anything"] {
        let line = lines.iter().find(|l| l["path"] == path).unwrap();
        assert_eq!(line["response_code"], 502, "{line}");
        assert_eq!(line["response_flags"], "-", "{line}");
        assert_eq!(line["response_code_details"], "direct_response", "{line}");
        assert_eq!(line["route_name"], "block_all", "{line}");
        assert!(line["upstream_cluster"].is_null(), "{line}");
        assert!(line["upstream_host"].is_null(), "{line}");
    }
    let teapot = lines.iter().find(|l| l["path"] == "/teapot/x").unwrap();
    assert_eq!(teapot["bytes_sent"], 15);
    // Counted as the listener's other replies are.
    for (code, n) in [("502", 1.0), ("418", 1.0), ("200", 1.0)] {
        let sample =
            format!("wasmesh_downstream_rq_total{{listener=\"ingress\",response_code=\"{code}\"}}");
        assert_eq!(metric(&proxy, &sample).await, Some(n), "{sample}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_clusters_serve_resolved_names_and_wait_for_unresolved_ones() {
    let up = Upstream::echo("dns").await;
    let other = Upstream::echo("other").await;
    let yaml = format!(
        r#"
workers: 2
listeners:
- name: ingress
  address: "127.0.0.1:0"
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - {{match: {{prefix: /named}}, cluster: named}}
    - {{match: {{prefix: /nowhere}}, cluster: nowhere}}
    - {{match: {{prefix: /}}, cluster: other}}
clusters:
- {{name: named, resolution: dns, endpoints: ["localhost:{port}"]}}
- {{name: nowhere, resolution: dns, endpoints: ["no-such-host.invalid:80"]}}
- {{name: other, endpoints: ["{other}"]}}
"#,
        port = up.addr.port(),
        other = other.addr,
    );
    // A name that does not resolve does not keep the proxy from starting.
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();

    let named = get(addr, "/named").await;
    assert_eq!(named.status, 200, "{}", named.text());
    assert_eq!(named.json()["server"], "dns");

    let nowhere = get(addr, "/nowhere").await;
    assert_eq!(nowhere.status, 503);
    assert_eq!(nowhere.text(), "no healthy upstream");
    assert_eq!(get(addr, "/").await.json()["server"], "other");
    assert_eq!(get(addr, "/named").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_dst_clusters_go_where_the_authority_says_never_to_the_proxy() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!(
        r#"
workers: 2
access_log: {{path: "{log}"}}
listeners:
- name: egress
  address: "127.0.0.1:0"
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - {{name: allow_any, cluster: PassthroughCluster}}
clusters:
- {{name: PassthroughCluster, resolution: original_dst}}
"#,
        log = log.display(),
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("egress").unwrap();

    for (up, name) in [(&a, "a"), (&b, "b"), (&a, "a")] {
        let reply = get_as(addr, &format!("127.0.0.1:{}", up.addr.port()), "/x").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["server"], name);
    }
    // By name too, resolved as the request comes.
    let reply = get_as(addr, &format!("localhost:{}", b.addr.port()), "/y").await;
    assert_eq!(reply.json()["server"], "b");
    assert_eq!((a.hits(), b.hits()), (2, 2));

    // The proxy's own listener: refused, not sent around again.
    let own = get_as(addr, &addr.to_string(), "/loop").await;
    assert_eq!(own.status, 502);
    assert_eq!(own.text(), "original destination is this proxy");

    let nowhere = get_as(addr, "no-such-host.invalid", "/nowhere").await;
    assert_eq!(nowhere.status, 503);
    assert_eq!(nowhere.text(), "no healthy upstream");

    let mut lines = Vec::new();
    eventually("access log lines", Duration::from_secs(5), || {
        lines = read_log(&log);
        let n = lines.len();
        async move { n >= 6 }
    })
    .await;
    let by_path = |p: &str| lines.iter().find(|l| l["path"] == p).unwrap().clone();
    assert_eq!(by_path("/y")["upstream_host"], b.addr.to_string());
    assert_eq!(by_path("/y")["upstream_cluster"], "PassthroughCluster");
    let looped = by_path("/loop");
    assert_eq!(
        looped["response_code_details"],
        "original_dst_loop_detected"
    );
    let nowhere = by_path("/nowhere");
    assert_eq!(nowhere["response_flags"], "UH");
    assert_eq!(nowhere["response_code_details"], "no_healthy_upstream");
}
