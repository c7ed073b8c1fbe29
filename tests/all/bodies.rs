//! Bodies stream: a 1 GiB upload and a 1 GiB download pass with bounded proxy memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};

use crate::support::*;

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 * 1024;

fn zeros(total: u64) -> Body {
    let chunk = Bytes::from(vec![0u8; CHUNK]);
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(CHUNK as u64) as usize;
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(
                    chunk.slice(..n),
                )),
                sent + n as u64,
            ))
        }
    });
    StreamBody::new(stream).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_up_and_down_with_bounded_memory() {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let up = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let counter = counter.clone();
        async move {
            if req.uri().path() == "/download" {
                return Response::builder()
                    .header("content-length", GIB.to_string())
                    .body(zeros(GIB))
                    .unwrap();
            }
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    counter.fetch_add(data.len() as u64, SeqCst);
                }
            }
            Response::new(full(counter.load(SeqCst).to_string()))
        }
    })
    .await;
    let proxy =
        ProxyProcess::spawn(&simple_config(&[up.addr], "", &route_extra("timeout: 0"))).await;
    let addr = proxy.listeners["ingress"];
    let client = h1_client();

    // Upload: the client streams 1 GiB (with a length, and chunked).
    for chunked in [false, true] {
        received.store(0, SeqCst);
        let mut req = Request::post(format!("http://{addr}/upload"));
        if !chunked {
            req = req.header("content-length", GIB.to_string());
        }
        let reply = send(&client, req.body(zeros(GIB)).unwrap()).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), GIB.to_string(), "chunked={chunked}");
    }

    // Download: 1 GiB read as it streams.
    let req = Request::get(format!("http://{addr}/download"))
        .body(empty())
        .unwrap();
    let response = client.request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len() as u64;
        }
    }
    assert_eq!(total, GIB);

    let peak = proxy.peak_rss_kib();
    assert!(
        peak < 64 * 1024,
        "proxy peak RSS {peak} KiB after moving 3 GiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_chunked_upload_and_trailers_pass() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&simple_config(&[up.addr], "", ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, vec![b'x'; 300_000]).unwrap();
    let out = run(
        "curl",
        &[
            "-s",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{addr}/up"),
        ],
    )
    .await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["body_len"], 300_000);
    assert_eq!(json["method"], "POST");
}
