//! Connection-pool limits: overflow is answered 503 with flag UO.

use std::time::Duration;

use http::Response;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_overflow_is_503_uo_and_counted() {
    let up = Upstream::start(|_req| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Response::new(full("slow"))
    })
    .await;
    let cluster = cluster_extra("circuit_breakers: {max_connections: 1, max_pending_requests: 1}");
    let yaml = simple_config(&[up.addr], &cluster, "").replace("workers: 2", "workers: 1");
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();
    let replies = futures_util::future::join_all((0..5).map(|_| get(addr, "/"))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let overflow: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + overflow.len(), 5);
    assert!(ok >= 2, "one active and one pending request are served");
    assert!(!overflow.is_empty(), "the rest overflow");
    for r in &overflow {
        assert_eq!(r.header("x-envoy-overloaded"), Some("true"));
        assert!(r.text().contains("overflow"));
    }
    let uo = metric(
        &proxy,
        r#"wasmesh_downstream_rq_flags_total{listener="ingress",response_flags="UO"}"#,
    )
    .await;
    assert_eq!(uo, Some(overflow.len() as f64));
    let pending = metric(
        &proxy,
        r#"wasmesh_upstream_rq_pending_overflow_total{cluster="backend"}"#,
    )
    .await;
    assert_eq!(pending, Some(overflow.len() as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_opens_fresh_connections() {
    let up = Upstream::echo("up").await;
    let yaml = simple_config(
        &[up.addr],
        &cluster_extra("max_requests_per_connection: 1"),
        "",
    )
    .replace("workers: 2", "workers: 1");
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();
    for _ in 0..4 {
        assert_eq!(get(addr, "/").await.status, 200);
    }
    let opened = metric(&proxy, r#"wasmesh_upstream_cx_total{cluster="backend"}"#).await;
    assert_eq!(opened, Some(4.0));
}
