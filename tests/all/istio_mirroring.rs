//! Istio's mirroring task, end to end: httpbin v1 serves, v2 gets a copy with the host
//! suffixed `-shadow`, and a slow or dead mirror never touches the primary request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmesh_controlplane::samples::{HTTPBIN_DESTINATION_RULE, HTTPBIN_MIRROR};

use crate::support::mesh::{Mesh, httpbin, slow};
use crate::support::{Upstream, eventually, full};

/// An upstream that records the Host of each request it gets.
async fn recording(name: &'static str, delay: Duration) -> (Upstream, Arc<Mutex<Vec<String>>>) {
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let seen = hosts.clone();
    let upstream = Upstream::start(move |req: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let host = req
                .headers()
                .get("host")
                .map(|h| h.to_str().unwrap_or("").to_owned())
                .unwrap_or_default();
            tokio::time::sleep(delay).await;
            seen.lock().unwrap().push(host);
            http::Response::builder()
                .header("x-served-by", name)
                .body(full(name))
                .unwrap()
        }
    })
    .await;
    (upstream, hosts)
}

fn policy(percent: f64) -> String {
    let mirror = HTTPBIN_MIRROR.replace("value: 100.0", &format!("value: {percent}"));
    format!("{HTTPBIN_DESTINATION_RULE}\n---\n{mirror}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_mirrored_to_v2_with_a_shadow_host() {
    let (v1, _) = recording("httpbin-v1", Duration::ZERO).await;
    let (v2, shadow_hosts) = recording("httpbin-v2", Duration::ZERO).await;
    let mesh = Mesh::start(&httpbin(&v1, &v2), &policy(100.0));
    for _ in 0..20 {
        assert_eq!(mesh.served_by("httpbin:8000", &[]).await, "httpbin-v1");
    }
    eventually("v2 got every copy", Duration::from_secs(5), || {
        let n = shadow_hosts.lock().unwrap().len();
        async move { n == 20 }
    })
    .await;
    assert_eq!(v1.hits(), 20);
    for host in shadow_hosts.lock().unwrap().iter() {
        assert_eq!(host, "httpbin-shadow:8000");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_of_the_requests_are_mirrored() {
    let (v1, _) = recording("httpbin-v1", Duration::ZERO).await;
    let (v2, shadow_hosts) = recording("httpbin-v2", Duration::ZERO).await;
    let mesh = Mesh::start(&httpbin(&v1, &v2), &policy(50.0));
    let n = 400;
    for _ in 0..n {
        assert_eq!(mesh.served_by("httpbin:8000", &[]).await, "httpbin-v1");
    }
    // Mirrors are fire-and-forget: wait until the count stops growing.
    let mut last = usize::MAX;
    loop {
        let now = shadow_hosts.lock().unwrap().len();
        if now == last {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sd = (n as f64 * 0.25).sqrt();
    assert!(
        (last as f64 - n as f64 / 2.0).abs() <= 5.0 * sd,
        "{last} of {n} mirrored, expected about half"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_dead_mirror_never_delays_or_fails_the_primary() {
    let v1 = slow("httpbin-v1", 200, Duration::ZERO).await;
    let v2 = slow("httpbin-v2", 200, Duration::from_secs(3)).await;
    let mesh = Mesh::start(&httpbin(&v1, &v2), &policy(100.0));
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(mesh.served_by("httpbin:8000", &[]).await, "httpbin-v1");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a 3 s mirror held the primary: {:?}",
        started.elapsed()
    );

    v2.stop();
    for _ in 0..10 {
        assert_eq!(mesh.served_by("httpbin:8000", &[]).await, "httpbin-v1");
    }
}
