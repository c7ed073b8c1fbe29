//! The `wasmesh-proxy` binary: config errors, signals, drain.

use std::time::{Duration, Instant};

use http::Response;

use crate::support::*;

const GOOD: &str = r#"
listeners:
- name: ingress
  address: "127.0.0.1:0"
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - cluster: backend
clusters:
- name: backend
  endpoints: ["127.0.0.1:9"]
"#;

#[tokio::test]
async fn bad_configs_exit_non_zero_naming_file_field_and_reason() {
    let cases = [
        (
            GOOD.replace(
                "    - cluster: backend",
                "    - cluster: backend\n      timeout: fast",
            ),
            "routes[0].timeout",
            "duration",
        ),
        (
            GOOD.replace("    - cluster: backend", "    - cluster: nowhere"),
            "routes[0].cluster",
            "unknown cluster \"nowhere\"",
        ),
        (
            GOOD.replace("  endpoints:", "  lb_policy: magic\n  endpoints:"),
            "clusters[0].lb_policy",
            "magic",
        ),
        (
            GOOD.replace("- name: backend", "- name: backend\n  colour: blue"),
            "clusters[0].colour",
            "unknown field",
        ),
        (
            GOOD.replace("127.0.0.1:0", "127.0.0.1"),
            "listeners[0].address",
            "ip:port",
        ),
        ("listeners: [\n".to_owned(), "", "line"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (yaml, field, reason)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let started = Instant::now();
        let out = run(proxy_binary(), &["--config", path.to_str().unwrap()]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} must fail");
        assert!(
            stderr.contains(path.to_str().unwrap()),
            "case {i} names the file: {stderr}"
        );
        assert!(stderr.contains(field), "case {i} names {field}: {stderr}");
        assert!(stderr.contains(reason), "case {i} says {reason}: {stderr}");
        assert!(
            !stderr.contains("listening"),
            "case {i} started nothing: {stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    let out = run(proxy_binary(), &["--config", "/nonexistent/proxy.yaml"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/proxy.yaml: cannot read"));

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, GOOD).unwrap();
    let out = run(
        proxy_binary(),
        &["--config", good.to_str().unwrap(), "--validate"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_then_exits() {
    let up = Upstream::start(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        Response::new(full("done"))
    })
    .await;
    let mut proxy = ProxyProcess::spawn(&simple_config(&[up.addr], "", "")).await;
    let addr = proxy.listeners["ingress"];
    let admin = proxy.admin.expect("admin address logged");
    assert_eq!(get(admin, "/ready").await.text(), "LIVE\n");

    let slow = tokio::spawn(async move { get(addr, "/slow").await });
    eventually(
        "the slow request reached the upstream",
        Duration::from_secs(5),
        || async { up.hits() >= 1 },
    )
    .await;
    proxy.signal("TERM");
    eventually("admin reports draining", Duration::from_secs(5), || async {
        get(admin, "/ready").await.status == 503
    })
    .await;
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200, "the request in flight finished");
    assert_eq!(reply.text(), "done");
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

/// Issue 9: what is missing on disk (a plugin's module, the access log's directory) is named
/// like any config error, by file, field and reason, at start-up and by `--validate`.
#[tokio::test]
async fn missing_files_at_start_name_file_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = dir.path().join("no-such-dir");
    let cases = [
        (
            // The module of the second filter as written (it runs first: names order them).
            GOOD.replace(
                "  virtual_hosts:",
                &format!(
                    "  http_filters:\n  - {{name: zz, url: \"{}\"}}\n  - {{name: aa, url: missing.wasm}}\n  virtual_hosts:",
                    wasmesh_artifacts::HEADERS
                ),
            ),
            "field `listeners[0].http_filters[1].url`",
            vec![
                "filter \"aa\"".to_owned(),
                "cannot read".to_owned(),
                dir.path().join("missing.wasm").display().to_string(),
            ],
        ),
        (
            format!(
                "access_log: {{path: \"{}\"}}\n{GOOD}",
                missing_dir.join("access.log").display()
            ),
            "field `access_log.path`",
            vec![
                "does not exist".to_owned(),
                missing_dir.display().to_string(),
            ],
        ),
    ];
    for (i, (yaml, field, reasons)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("missing{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        for validate in [true, false] {
            let mut args = vec!["--config", path.to_str().unwrap()];
            if validate {
                args.push("--validate");
            }
            let out = run(proxy_binary(), &args).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            let what = format!("case {i}, --validate {validate}");
            assert!(!out.status.success(), "{what} must fail: {stderr}");
            assert!(
                stderr.contains(&format!("error: {}: {field}: ", path.display())),
                "{what} names the file and {field}: {stderr}"
            );
            for reason in reasons {
                assert!(
                    stderr.contains(reason.as_str()),
                    "{what} says {reason}: {stderr}"
                );
            }
            assert!(
                !stderr.contains("listening"),
                "{what} started nothing: {stderr}"
            );
        }
    }
    assert!(!missing_dir.exists(), "checking created nothing");
}

/// Resident memory (VmRSS) of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc status")
}

/// Opens `count` connections to `addr`, `parallel` at a time, each with one request answered
/// (a 2-byte body), and returns them all still open.
async fn open_answered_connections(
    addr: std::net::SocketAddr,
    count: usize,
    parallel: usize,
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let permit = permits.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: burst\r\n\r\n")
                .await
                .unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            // The head, then the body "ok".
            while !seen.ends_with(b"\r\n\r\nok") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
            assert!(seen.starts_with(b"HTTP/1.1 200"));
            drop(permit);
            s
        });
    }
    tasks.join_all().await
}

/// Issue 9: after a burst of 10,000 connections closed, the idle binary kept its peak memory
/// (197 MB for 40 s and more): jemalloc purged freed pages only while threads allocated. Its
/// background thread now returns them within `dirty_decay_ms` (10 s) of their last use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_binary_returns_memory_to_the_os_after_a_burst() {
    const CONNECTIONS: usize = 10_000;
    let up = Upstream::start(|_| async { Response::new(full("ok")) }).await;
    let proxy = ProxyProcess::spawn(&simple_config(&[up.addr], "", "")).await;
    let addr = proxy.listeners["ingress"];
    let admin = proxy.admin.expect("admin address logged");
    let pid = proxy.pid();
    {
        let log = proxy.log.lock().unwrap();
        let allocator = log.iter().find(|l| l.contains("allocator: jemalloc"));
        assert!(
            allocator.is_some_and(|l| l.contains(" background_thread=true")),
            "jemalloc's background thread is on: {allocator:?}"
        );
    }
    for _ in 0..20 {
        assert_eq!(get(addr, "/").await.status, 200);
    }
    let before = rss_kib(pid);

    let open = open_answered_connections(addr, CONNECTIONS, 200).await;
    let peak = rss_kib(pid);
    let cx_active = r#"wasmesh_downstream_cx_active{listener="ingress"} "#;
    let active = || async {
        let text = get(admin, "/stats/prometheus").await.text();
        text.lines()
            .find_map(|l| l.strip_prefix(cx_active))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("the active connections gauge")
    };
    assert!(active().await >= CONNECTIONS as f64, "all held open");
    drop(open);
    eventually(
        "the proxy closed them all",
        Duration::from_secs(30),
        || async { active().await == 0.0 },
    )
    .await;
    let closed = Instant::now();
    let at_close = rss_kib(pid);
    let added = peak.saturating_sub(before);
    assert!(
        added > 20 * 1024,
        "the burst grew the proxy: {before} KiB -> {peak} KiB"
    );
    // Idle now: within the decay time and a margin, most of what the burst took goes back.
    let target = before + added / 4;
    let mut now = at_close;
    while now > target {
        assert!(
            closed.elapsed() < Duration::from_secs(60),
            "idle RSS stayed at {now} KiB for {:?} after the burst closed (before {before} \
             KiB, peak {peak} KiB, at close {at_close} KiB, target {target} KiB)",
            closed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = rss_kib(pid);
    }
    eprintln!(
        "RSS of wasmesh-proxy: {before} KiB before, {peak} KiB with {CONNECTIONS} connections \
         open, {at_close} KiB when they had closed, {now} KiB {:?} later",
        closed.elapsed()
    );
}
