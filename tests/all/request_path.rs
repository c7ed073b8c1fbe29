//! Defects found on the way to one request path (issue 10): bodies a filter resized keep
//! their upstream connection in step, a filter's local reply is logged like any other, and a
//! mirror to an HTTP/2 cluster leaves as HTTP/2.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmesh_artifacts::{AS_FILTER, BODY};

use crate::support::mesh::{Mesh, httpbin};
use crate::support::*;

fn with_filter(yaml: String, filter: &str) -> String {
    yaml.replace(
        "  address: \"127.0.0.1:0\"\n  virtual_hosts:",
        &format!("  address: \"127.0.0.1:0\"\n  http_filters:\n{filter}  virtual_hosts:"),
    )
}

/// A filter that grows the request body but leaves `Content-Length` as the client sent it:
/// the upstream still gets a body framed as what it is, and the pooled connection stays in
/// step for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_a_filter_resized_goes_upstream_framed_as_it_is() {
    let up = Upstream::echo("up").await;
    let yaml = simple_config(&[up.addr], "", "").replace("workers: 2", "workers: 1");
    let proxy = start_proxy(&with_filter(
        yaml,
        &format!("  - name: body\n    url: \"{BODY}\"\n"),
    ));
    let addr = proxy.listener_addr("ingress").unwrap();
    let client = h1_client();
    for size in [5, 70 * 1024] {
        for round in 0..3 {
            let req = http::Request::post(format!("http://{addr}/up"))
                .header("x-keep-length", "1")
                .body(full(vec![b'a'; size]))
                .unwrap();
            let reply = send(&client, req).await;
            assert_eq!(
                reply.status,
                200,
                "size {size}, round {round}: {}",
                reply.text()
            );
            let echo = reply.json();
            assert_eq!(
                echo["body_len"],
                size + " (seen by wasm)".len(),
                "size {size}, round {round}: {echo}"
            );
            assert_eq!(echo["method"], "POST");
        }
    }
    assert_eq!(
        up.hits(),
        6,
        "every request reached the upstream once, in step"
    );
}

/// Envoy logs a filter's local reply with the request's authority, id, forwarded-for and
/// user agent, as it logs any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filters_local_reply_is_logged_with_the_requests_fields() {
    let up = Upstream::echo("up").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!(
        "access_log: {{path: \"{}\"}}\n{}",
        log.display(),
        simple_config(&[up.addr], "", "")
    );
    let filter = format!(
        "  - name: as\n    url: \"{AS_FILTER}\"\n    plugin_name: as_filter\n    plugin_config: \"/as\"\n"
    );
    let proxy = start_proxy(&with_filter(yaml, &filter));
    let addr = proxy.listener_addr("ingress").unwrap();
    let req = http::Request::get(format!("http://{addr}/as/deny"))
        .header("host", "shop.example")
        .header("user-agent", "test-agent")
        .header("x-request-id", "req-local")
        .body(empty())
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.status, 403);
    let mut line = serde_json::Value::Null;
    eventually("the access log line", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().next() {
            line = serde_json::from_str(l).unwrap();
        }
        let found = !line.is_null();
        async move { found }
    })
    .await;
    assert_eq!(line["response_code"], 403, "{line}");
    assert_eq!(line["authority"], "shop.example", "{line}");
    assert_eq!(line["request_id"], "req-local", "{line}");
    assert_eq!(line["user_agent"], "test-agent", "{line}");
    assert_eq!(line["x_forwarded_for"], "127.0.0.1", "{line}");
    assert_eq!(up.hits(), 0);
}

/// A mirror to a cluster that speaks HTTP/2 (`h2UpgradePolicy: UPGRADE`) gets its copy over
/// HTTP/2, as the primary would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_to_an_http2_cluster_leaves_as_http2() {
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = versions.clone();
    let v1 = Upstream::echo("httpbin-v1").await;
    let v2 = Upstream::start(move |req: http::Request<hyper::body::Incoming>| {
        seen.lock().unwrap().push(format!("{:?}", req.version()));
        echo_response("httpbin-v2", req)
    })
    .await;
    let policy = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool:
        http: {h2UpgradePolicy: UPGRADE}
---
"
    .to_owned()
        + wasmesh_controlplane::samples::HTTPBIN_MIRROR;
    let mesh = Mesh::start(&httpbin(&v1, &v2), &policy);
    for _ in 0..3 {
        assert_eq!(mesh.served_by("httpbin:8000", &[]).await, "httpbin-v1");
    }
    eventually("v2 got the copies", Duration::from_secs(5), || {
        let n = versions.lock().unwrap().len();
        async move { n == 3 }
    })
    .await;
    assert_eq!(*versions.lock().unwrap(), ["HTTP/2.0"; 3]);
}
