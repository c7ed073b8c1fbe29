//! What a client sees matches what Envoy (as Istio configures it) sends: the `server` and
//! `date` headers, `x-envoy-upstream-service-time`, the HTTP version of the status line, and
//! the texts of the proxy's own replies and their gRPC statuses.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// An upstream that answers every request with `response`, written as it is, then closes.
async fn raw_upstream(
    response: &'static [u8],
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response).await;
            });
        }
    });
    (addr, task)
}

fn with_http_options(yaml: String, options: &str) -> String {
    yaml.replace(
        "  address: \"127.0.0.1:0\"\n  virtual_hosts:",
        &format!("  address: \"127.0.0.1:0\"\n  http: {{{options}}}\n  virtual_hosts:"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_header_is_overwritten_unless_configured_otherwise() {
    let up = Upstream::start(|req| async move {
        let mut response = echo_response("up", req).await;
        response
            .headers_mut()
            .insert("server", "upstream-server".parse().unwrap());
        response
    })
    .await;
    let dead = dead_addr();
    let cases = [
        ("", Some("wasmesh"), Some("wasmesh")),
        (
            "server_name: istio-envoy",
            Some("istio-envoy"),
            Some("istio-envoy"),
        ),
        (
            "server_header_transformation: append_if_absent",
            Some("upstream-server"),
            Some("wasmesh"),
        ),
        (
            "server_header_transformation: pass_through",
            Some("upstream-server"),
            None,
        ),
    ];
    for (options, proxied, local) in cases {
        let yaml = simple_config(
            &[up.addr],
            &format!("- name: dead\n  endpoints: [\"{dead}\"]"),
            "    - match: {prefix: /dead}\n      cluster: dead\n",
        );
        // The dead route must come first to be matched.
        let yaml = yaml.replace(
            "    routes:\n    - match: {prefix: /}\n      cluster: backend\n    - match: {prefix: /dead}\n      cluster: dead\n",
            "    routes:\n    - match: {prefix: /dead}\n      cluster: dead\n    - match: {prefix: /}\n      cluster: backend\n",
        );
        let proxy = start_proxy(&with_http_options(yaml, options));
        let addr = proxy.listener_addr("ingress").unwrap();
        let reply = get(addr, "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("server"), proxied, "{options:?}: proxied");
        let reply = get(addr, "/dead").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("server"), local, "{options:?}: local reply");
    }
}

#[test]
fn bad_server_names_are_refused_naming_the_field() {
    let yaml = with_http_options(
        simple_config(&[dead_addr()], "", ""),
        "server_name: \"bad\\nname\"",
    );
    let err = wasmesh_proxy::config::Bootstrap::parse(&yaml)
        .unwrap_err()
        .to_string();
    assert!(err.contains("listeners[0].http.server_name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_date_and_upstream_service_time() {
    // An upstream that sends neither `date` nor `server`.
    let (up, _task) = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let proxy = start_proxy(&simple_config(&[up], "", ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    let reply = get(addr, "/").await;
    assert_eq!(reply.status, 200);
    let date = reply.header("date").expect("a date header");
    assert!(date.ends_with(" GMT"), "{date}");
    let time: u64 = reply
        .header("x-envoy-upstream-service-time")
        .expect("x-envoy-upstream-service-time on a proxied response")
        .parse()
        .expect("milliseconds");
    assert!(time < 5_000, "{time}");

    // A local reply has a date but no upstream service time (there was no upstream answer).
    let proxy = start_proxy(&simple_config(&[dead_addr()], "", ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    let reply = get(addr, "/").await;
    assert_eq!(reply.status, 503);
    assert!(reply.header("date").is_some());
    assert_eq!(reply.header("x-envoy-upstream-service-time"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_upstream_is_answered_with_the_proxys_own_version() {
    // HTTP/1.0, no length: the body ends when the upstream closes.
    let (up, _task) = raw_upstream(b"HTTP/1.0 200 OK\r\nx-old: yes\r\n\r\nold school").await;
    let proxy = start_proxy(&simple_config(&[up], "", ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    let answer = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.contains("x-old: yes"), "{answer:?}");
    assert!(answer.contains("old school"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_read_as_envoys_with_the_transport_reason() {
    let dead = dead_addr();
    let proxy = start_proxy(&simple_config(&[dead], "", ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    let reply = get(addr, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    assert_eq!(
        reply.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: connection \
         failure, transport failure reason: delayed connect error: 111"
    );

    // Retried: Envoy says so.
    let route = route_extra("retry_policy: {num_retries: 2, retry_on: connect-failure}");
    let proxy = start_proxy(&simple_config(&[dead], "", &route));
    let addr = proxy.listener_addr("ingress").unwrap();
    let reply = get(addr, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.text(),
        "upstream connect error or disconnect/reset before headers. retried and the latest \
         reset reason: connection failure, transport failure reason: delayed connect error: 111"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_to_grpc_requests_are_trailers_only_with_envoys_mapping() {
    // 503 (connect failure) maps to UNAVAILABLE (14), 504 (timeout) to UNAVAILABLE too, 404 (no
    // route) to UNIMPLEMENTED (12): gRPC's HTTP-to-status mapping, as Envoy applies it.
    let slow = Upstream::start(|req| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        echo_response("slow", req).await
    })
    .await;
    let yaml = simple_config(
        &[dead_addr()],
        &format!("- name: slow\n  endpoints: [\"{}\"]", slow.addr),
        "",
    )
    .replace(
        "    routes:\n    - match: {prefix: /}\n      cluster: backend\n",
        "    routes:\n    - match: {prefix: /slow}\n      cluster: slow\n      timeout: 50ms\n    - match: {prefix: /svc}\n      cluster: backend\n",
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();
    for (path, grpc_status, message) in [
        ("/svc/Call", "14", "reset reason: connection failure"),
        ("/slow/Call", "14", "upstream request timeout"),
        ("/nowhere/Call", "12", ""),
    ] {
        let req = http::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(&b"\0\0\0\0\0"[..]))
            .unwrap();
        let reply = send(&h2_client(), req).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some("application/grpc"));
        assert_eq!(reply.header("grpc-status"), Some(grpc_status), "{path}");
        let got = reply.header("grpc-message").unwrap_or_default();
        assert!(got.contains(message), "{path}: {got:?}");
    }
}
