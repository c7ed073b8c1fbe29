//! Request smuggling shapes get 400 and never reach an upstream.

use std::time::Duration;

use crate::support::*;

const SHAPES: &[(&str, &str)] = &[
    (
        "CL then TE",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE then CL",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "duplicate equal CL",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "duplicate different CL",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ),
    (
        "CL list",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    ),
    (
        "signed CL",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    ),
    (
        "non-numeric CL",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: five\r\n\r\nhello",
    ),
    (
        "bare LF in headers",
        "GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
    ),
    (
        "bare LF after request line",
        "GET / HTTP/1.1\nHost: a\r\n\r\n",
    ),
    ("bare LF head end", "GET / HTTP/1.1\r\nHost: a\n\n"),
    ("bare CR", "GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n"),
    (
        "obs-fold",
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  continued\r\n\r\n",
    ),
    (
        "space before colon",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 0\r\n\r\n",
    ),
    (
        "TE not chunked last",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE chunked twice",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE on HTTP/1.0",
        "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    (
        "obfuscated TE",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_smuggling_shape_gets_400_and_reaches_no_upstream() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&simple_config(&[up.addr], "", ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    for (name, request) in SHAPES {
        let answer = raw_exchange(addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{name}: got {answer:?}");
    }
    assert_eq!(up.hits(), 0, "no smuggled request reached the upstream");
    let rejected = metric(
        &proxy,
        r#"wasmesh_downstream_rq_rejected_total{listener="ingress"}"#,
    )
    .await
    .unwrap();
    assert!(rejected >= 12.0, "rejections counted: {rejected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smuggled_second_request_is_refused_after_a_clean_first() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&simple_config(&[up.addr], "", ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    let pipelined = "GET /first HTTP/1.1\r\nHost: a\r\n\r\n\
                     POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let answer = raw_exchange(addr, pipelined.as_bytes(), Duration::from_secs(5)).await;
    let first = answer.find("HTTP/1.1 200").expect("first request answered");
    let second = answer.find("HTTP/1.1 400").expect("second request refused");
    assert!(first < second, "{answer}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_pipelined_and_chunked_requests_pass() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&simple_config(&[up.addr], "", ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    let pipelined = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
                     POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nxyz\r\n0\r\nX-Trailer: 1\r\n\r\n\
                     GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(addr, pipelined.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer}");
    assert_eq!(answer.matches("\"body_len\":3").count(), 2, "{answer}");
    assert_eq!(up.hits(), 3);
}
