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
