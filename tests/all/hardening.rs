//! Limits that keep hostile or broken clients from hurting others.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_too_many_headers_get_431() {
    let up = Upstream::echo("up").await;
    let yaml = simple_config(&[up.addr], "", "").replace(
        "  address: \"127.0.0.1:0\"\n  virtual_hosts:",
        "  address: \"127.0.0.1:0\"\n  http: {max_request_headers_kb: 4, max_headers_count: 20}\n  virtual_hosts:",
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(8000)
    );
    let answer = raw_exchange(addr, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw_exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_while_others_are_served() {
    let up = Upstream::echo("up").await;
    let yaml = simple_config(&[up.addr], "", "").replace(
        "  address: \"127.0.0.1:0\"\n  virtual_hosts:",
        "  address: \"127.0.0.1:0\"\n  http: {request_headers_timeout: 300ms}\n  virtual_hosts:",
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();
    // Slowloris: a head trickled out a byte at a time, never finished.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow")
            .await
            .unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            get(addr, "/").await.status,
            200,
            "others are served while slow clients wait"
        );
    }
    for mut s in slow {
        let _ = s.write_all(b"l").await;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "slow client disconnected: {n:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_listener_limit_are_closed() {
    let up = Upstream::echo("up").await;
    let yaml = simple_config(&[up.addr], "", "")
        .replace("workers: 2", "workers: 1")
        .replace(
            "  address: \"127.0.0.1:0\"\n  virtual_hosts:",
            "  address: \"127.0.0.1:0\"\n  max_connections: 2\n  virtual_hosts:",
        );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf).await.unwrap();
        assert!(buf.starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let answer = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        answer, "",
        "the third connection is closed without an answer"
    );
    let overflow = metric(
        &proxy,
        r#"wasmesh_downstream_cx_overflow_total{listener="ingress"}"#,
    )
    .await;
    assert_eq!(overflow, Some(1.0));
    drop(held);
    // Until the worker sees the held connections close, a new one is still refused: ask
    // with a client that reports the refusal instead of failing on it.
    eventually("a slot frees up", Duration::from_secs(5), || async {
        let answer = raw_exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        answer.starts_with("HTTP/1.1 200")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let up = Upstream::echo("up").await;
    let yaml = simple_config(&[up.addr], "", "").replace(
        "  address: \"127.0.0.1:0\"\n  virtual_hosts:",
        "  address: \"127.0.0.1:0\"\n  http: {idle_timeout: 200ms}\n  virtual_hosts:",
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "idle connection closed: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_reset_flood_gets_goaway_and_others_are_unaffected() {
    let up = Upstream::start(|req| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        echo_response("up", req).await
    })
    .await;
    let proxy = start_proxy(&simple_config(&[up.addr], "", ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut refused = false;
    for _ in 0..5000 {
        let req = http::Request::get(format!("http://{addr}/"))
            .body(())
            .unwrap();
        let ready = match client.ready().await {
            Ok(c) => c,
            Err(_) => {
                refused = true;
                break;
            }
        };
        client = ready;
        match client.send_request(req, true) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        refused || matches!(ended, Ok(Ok(Err(_)))),
        "the flooding connection is shut down"
    );
    if let Ok(Ok(Err(e))) = &ended {
        assert!(e.is_go_away() || e.is_io(), "{e:?}");
    }
    assert_eq!(get(addr, "/").await.status, 200, "other clients are served");
}
