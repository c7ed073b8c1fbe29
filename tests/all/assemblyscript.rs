//! A filter written in AssemblyScript on the published SDK (`@solo-io/proxy-runtime` 0.1.8, ABI
//! 0.2.0; source in `tests/filters-as`) in the real proxy, driven by curl, hyper and raw HTTP/1.1:
//! header edits both ways, and local replies as Envoy shapes them (issue 18).

use std::net::SocketAddr;
use std::time::Duration;

use wasmesh_artifacts::AS_FILTER;

use crate::support::*;

/// One listener running the AssemblyScript filter (root id `as_filter`, configured with the path
/// prefix `prefix`) in front of cluster `backend`.
fn config(backend: SocketAddr, prefix: &str) -> String {
    format!(
        r#"
workers: 2
admin: {{address: "127.0.0.1:0"}}
listeners:
- name: ingress
  address: "127.0.0.1:0"
  http_filters:
  - name: as
    url: "{AS_FILTER}"
    plugin_name: as_filter
    plugin_config: "{prefix}"
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - cluster: backend
clusters:
- name: backend
  endpoints: ["{backend}"]
"#
    )
}

/// A GET over HTTP/1.1 with `Connection: close`, read to the end: status, headers (names in
/// lower case, in order) and the body exactly as the proxy framed them.
async fn raw_get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    let raw = raw_exchange(addr, request.as_bytes(), Duration::from_secs(5)).await;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head: {raw:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {raw:?}"));
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("a header line");
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    (status, headers, body.to_owned())
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

async fn curl(args: &[&str]) -> String {
    let out = run("curl", args).await;
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_edits_request_and_response_headers() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&config(up.addr, "/as"));
    let addr = proxy.listener_addr("ingress").unwrap();

    for client in [h1_client(), h2_client()] {
        let req = http::Request::get(format!("http://{addr}/hello?x=1"))
            .body(empty())
            .unwrap();
        let reply = send(&client, req).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.json()["headers"]["x-as-filter"],
            "seen",
            "the upstream sees the request header the filter added"
        );
        assert_eq!(reply.header("x-as-response"), Some("yes"));
        assert_eq!(reply.header("x-served-by"), Some("up"));
    }

    // curl over HTTP/1.1 and h2c: the upstream's JSON and the filter's response header.
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let out = curl(&["-s", "-i", version, &format!("http://{addr}/curl")]).await;
        let lower = out.to_ascii_lowercase();
        assert!(lower.contains("\r\nx-as-response: yes\r\n"), "{out}");
        assert!(out.contains(r#""x-as-filter":"seen""#), "{out}");
    }
    assert_eq!(up.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_configuration_sets_the_prefix() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&config(up.addr, "/other"));
    let addr = proxy.listener_addr("ingress").unwrap();
    let reply = get(addr, "/as/deny").await;
    assert_eq!(reply.status, 200, "not under the configured prefix");
    assert_eq!(reply.json()["headers"]["x-as-filter"], "seen");
    let reply = get(addr, "/other/deny").await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.text(), "denied by assemblyscript");
    assert_eq!(up.hits(), 1);
}

/// A local reply with a body and no content type: Envoy's local-reply path adds
/// `content-type: text/plain`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_reply_with_a_body_is_text_plain() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&config(up.addr, "/as"));
    let addr = proxy.listener_addr("ingress").unwrap();

    for client in [h1_client(), h2_client()] {
        let req = http::Request::get(format!("http://{addr}/as/deny"))
            .body(empty())
            .unwrap();
        let reply = send(&client, req).await;
        assert_eq!(reply.status, 403);
        assert_eq!(reply.text(), "denied by assemblyscript");
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain"),
            "Envoy adds text/plain to a local reply with a body and no content type: {:?}",
            reply.headers
        );
    }

    let (status, headers, body) = raw_get(addr, "/as/deny").await;
    assert_eq!((status, body.as_str()), (403, "denied by assemblyscript"));
    assert_eq!(values(&headers, "content-length"), ["24"], "{headers:?}");
    assert_eq!(
        values(&headers, "content-type"),
        ["text/plain"],
        "{headers:?}"
    );

    let out = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{content_type}",
        &format!("http://{addr}/as/deny"),
    ])
    .await;
    assert_eq!(out, "403 text/plain");
    assert_eq!(up.hits(), 0, "local replies never reach the upstream");
}

/// A local reply with an empty body: Envoy removes the content type and length the filter gave,
/// so the client sees no body, no `content-type`, and a `content-length` of 0 (or none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_local_reply_drops_content_type_and_length() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&config(up.addr, "/as"));
    let addr = proxy.listener_addr("ingress").unwrap();

    // Raw HTTP/1.1 first: a `content-length: 99` without a body would leave a client waiting.
    let (status, headers, body) = raw_get(addr, "/as/empty").await;
    assert_eq!(status, 401, "{headers:?}");
    assert_eq!(body, "", "{headers:?}");
    assert!(
        values(&headers, "content-length").iter().all(|v| *v == "0"),
        "content-length must be 0 or absent: {headers:?}"
    );
    assert!(
        values(&headers, "transfer-encoding").is_empty(),
        "an empty reply needs no chunked framing: {headers:?}"
    );
    assert_eq!(
        values(&headers, "content-type"),
        Vec::<&str>::new(),
        "{headers:?}"
    );

    let req = http::Request::get(format!("http://{addr}/as/empty"))
        .body(empty())
        .unwrap();
    let reply = send(&h2_client(), req).await;
    assert_eq!(reply.status, 401);
    assert!(reply.body.is_empty());
    assert!(
        reply
            .headers
            .get_all("content-length")
            .iter()
            .all(|v| v == "0"),
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.header("content-type"), None, "{:?}", reply.headers);

    let out = curl(&[
        "-s",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} [%{content_type}]",
        &format!("http://{addr}/as/empty"),
    ])
    .await;
    assert_eq!(out, "401 0 []");
    assert_eq!(up.hits(), 0, "local replies never reach the upstream");
}
