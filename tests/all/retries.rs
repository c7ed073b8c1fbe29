use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use http::{Response, StatusCode};

use crate::support::*;

/// An upstream that answers `status` to its first `failures` requests, then echoes.
async fn flaky(failures: usize, status: u16) -> Upstream {
    let seen = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |req| {
        let n = seen.fetch_add(1, SeqCst);
        async move {
            if n < failures {
                Response::builder()
                    .status(status)
                    .body(full("try again"))
                    .unwrap()
            } else {
                echo_response("ok", req).await
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_make_a_flaky_upstream_succeed() {
    let up = flaky(2, 503).await;
    let route =
        route_extra("retry_policy: {retry_on: \"5xx\", num_retries: 3, base_interval: 1ms}");
    let proxy = start_proxy(&simple_config(&[up.addr], "", &route));
    let addr = proxy.listener_addr("ingress").unwrap();
    let req = http::Request::post(format!("http://{addr}/pay"))
        .body(full("amount=10"))
        .unwrap();
    let reply = send(&h1_client(), req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["body_len"],
        9,
        "the retried request carries its body again"
    );
    assert_eq!(up.hits(), 3);
    let retries = metric(
        &proxy,
        r#"wasmesh_upstream_rq_retry_total{cluster="backend"}"#,
    )
    .await;
    assert_eq!(retries, Some(2.0));
    let success = metric(
        &proxy,
        r#"wasmesh_upstream_rq_retry_success_total{cluster="backend"}"#,
    )
    .await;
    assert_eq!(success, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_attempt_limit_with_urx() {
    let up = flaky(usize::MAX, 503).await;
    let route =
        route_extra("retry_policy: {retry_on: \"5xx\", num_retries: 2, base_interval: 1ms}");
    let proxy = start_proxy(&simple_config(&[up.addr], "", &route));
    let reply = get(proxy.listener_addr("ingress").unwrap(), "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.text(),
        "try again",
        "the last upstream response is passed on"
    );
    assert_eq!(up.hits(), 3, "one try and two retries");
    let urx = metric(
        &proxy,
        r#"wasmesh_downstream_rq_flags_total{listener="ingress",response_flags="URX"}"#,
    )
    .await;
    assert_eq!(urx, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_status_codes_and_gateway_errors() {
    let up = flaky(1, 409).await;
    let route = route_extra(
        "retry_policy: {retry_on: \"retriable-4xx\", num_retries: 1, base_interval: 1ms}",
    );
    let proxy = start_proxy(&simple_config(&[up.addr], "", &route));
    assert_eq!(
        get(proxy.listener_addr("ingress").unwrap(), "/")
            .await
            .status,
        200
    );

    // gateway-error covers 502-504 but not 500.
    let up = flaky(1, 500).await;
    let route = route_extra("retry_policy: {retry_on: \"gateway-error\", num_retries: 1}");
    let proxy = start_proxy(&simple_config(&[up.addr], "", &route));
    assert_eq!(
        get(proxy.listener_addr("ingress").unwrap(), "/")
            .await
            .status,
        500
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_answers_504_ut() {
    let up = Upstream::start(|req| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        echo_response("slow", req).await
    })
    .await;
    let proxy = start_proxy(&simple_config(
        &[up.addr],
        "",
        &route_extra("timeout: 200ms"),
    ));
    let started = Instant::now();
    let reply = get(proxy.listener_addr("ingress").unwrap(), "/").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.text(), "upstream request timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at the timeout, not the upstream"
    );
    let ut = metric(
        &proxy,
        r#"wasmesh_downstream_rq_flags_total{listener="ingress",response_flags="UT"}"#,
    )
    .await;
    assert_eq!(ut, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_moves_on_to_another_attempt() {
    let seen = Arc::new(AtomicUsize::new(0));
    let up = Upstream::start(move |req| {
        let first = seen.fetch_add(1, SeqCst) == 0;
        async move {
            if first {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            echo_response("up", req).await
        }
    })
    .await;
    let route =
        route_extra("retry_policy: {retry_on: \"5xx\", num_retries: 1, per_try_timeout: 200ms}");
    let proxy = start_proxy(&simple_config(&[up.addr], "", &route));
    let started = Instant::now();
    let reply = get(proxy.listener_addr("ingress").unwrap(), "/").await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    let per_try = metric(
        &proxy,
        r#"wasmesh_upstream_rq_per_try_timeout_total{cluster="backend"}"#,
    )
    .await;
    assert_eq!(per_try, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_retried_around_then_skipped() {
    let up = Upstream::echo("alive").await;
    let dead = dead_addr();
    let route = route_extra(
        "retry_policy: {retry_on: \"connect-failure\", num_retries: 2, base_interval: 1ms}",
    );
    let yaml = simple_config(&[dead, up.addr], "", &route).replace("workers: 2", "workers: 1");
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();
    let client = h1_client();
    for _ in 0..20 {
        let req = http::Request::get(format!("http://{addr}/"))
            .body(empty())
            .unwrap();
        assert_eq!(send(&client, req).await.status, 200);
    }
    assert_eq!(up.hits(), 20);
    // After its first failure the dead endpoint sits out a backoff instead of failing every
    // other request.
    let fails = metric(
        &proxy,
        r#"wasmesh_upstream_cx_connect_fail_total{cluster="backend"}"#,
    )
    .await
    .unwrap();
    assert!(fails <= 2.0, "dead endpoint tried {fails} times");
    let clusters = admin_get(&proxy, "/clusters").await.text();
    assert!(
        clusters.contains(&format!(
            "backend::{dead}::health_flags::/failed_outlier_check"
        )),
        "{clusters}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_without_retries_is_503_uf() {
    let proxy = start_proxy(&simple_config(&[dead_addr()], "", ""));
    let reply = get(proxy.listener_addr("ingress").unwrap(), "/").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.text().contains("connection failure"),
        "{}",
        reply.text()
    );
    let uf = metric(
        &proxy,
        r#"wasmesh_downstream_rq_flags_total{listener="ingress",response_flags="UF"}"#,
    )
    .await;
    assert_eq!(uf, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_response_is_retried_when_asked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // First connection: read the request and slam the door. Then behave.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        drop(s);
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    let route =
        route_extra("retry_policy: {retry_on: \"reset\", num_retries: 1, base_interval: 1ms}");
    let proxy = start_proxy(&simple_config(&[addr], "", &route));
    let reply = get(proxy.listener_addr("ingress").unwrap(), "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_beyond_max_retries_or_the_budget_are_refused() {
    for cluster in [
        "circuit_breakers: {max_retries: 0}",
        "retry_budget: {budget_percent: 0, min_retry_concurrency: 0}",
    ] {
        let up = flaky(usize::MAX, 503).await;
        let route = route_extra("retry_policy: {retry_on: \"5xx\", num_retries: 3}");
        let proxy = start_proxy(&simple_config(&[up.addr], &cluster_extra(cluster), &route));
        assert_eq!(
            get(proxy.listener_addr("ingress").unwrap(), "/")
                .await
                .status,
            503
        );
        assert_eq!(up.hits(), 1, "{cluster}: no retry was allowed");
        let overflow = metric(
            &proxy,
            r#"wasmesh_upstream_rq_retry_overflow_total{cluster="backend"}"#,
        )
        .await;
        assert_eq!(overflow, Some(1.0), "{cluster}");
    }
}
