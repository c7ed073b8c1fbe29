//! Wasm filters in the real proxy: chains, callouts through the proxy's clusters, shared state
//! across workers, hostile plugins under every failure strategy, and hot reloads under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use http::Response;
use wasmesh_artifacts::{AUTH, BODY, COUNTER, HEADERS, HOSTILE};

use crate::support::*;

/// A proxy config whose listener runs `filters` (YAML list items, indented 2) in front of
/// cluster `backend`, plus optional extra clusters.
fn config(backend: std::net::SocketAddr, filters: &str, extra_clusters: &str) -> String {
    format!(
        r#"
workers: 2
admin: {{address: "127.0.0.1:0"}}
listeners:
- name: ingress
  address: "127.0.0.1:0"
  http_filters:
{filters}
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - cluster: backend
clusters:
- name: backend
  endpoints: ["{backend}"]
{extra_clusters}
"#
    )
}

fn filter(name: &str, path: &str, extra: &str) -> String {
    let mut out = format!("  - name: {name}\n    url: \"{path}\"\n");
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str(&format!("    {}\n", line.trim()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_wasm_filter_edits_requests_and_answers_locally() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&config(
        up.addr,
        &filter("headers", HEADERS, "plugin_config: green"),
        "",
    ));
    let addr = proxy.listener_addr("ingress").unwrap();
    let req = http::Request::get(format!("http://{addr}/a"))
        .header("x-remove-me", "1")
        .body(empty())
        .unwrap();
    let reply = send(&h1_client(), req).await;
    assert_eq!(reply.status, 200);
    let headers = &reply.json()["headers"];
    assert_eq!(headers["x-plugin-config"], "green");
    assert!(headers.get("x-remove-me").is_none());
    assert_eq!(reply.header("x-wasm-path"), Some("/a"));

    for client in [h1_client(), h2_client()] {
        let req = http::Request::get(format!("http://{addr}/hello"))
            .body(empty())
            .unwrap();
        let reply = send(&client, req).await;
        assert_eq!(
            (reply.status.as_u16(), reply.text().as_str()),
            (200, "Hello, World!\n")
        );
        assert_eq!(reply.header("x-hello"), Some("from-wasm"));
    }
    assert_eq!(up.hits(), 1, "local replies never reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_through_filters_that_pause_to_buffer() {
    let up = Upstream::start(|req| async move {
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .unwrap()
            .to_bytes();
        Response::new(full(format!(
            "got [{}] and a secret",
            String::from_utf8_lossy(&body)
        )))
    })
    .await;
    let proxy = start_proxy(&config(up.addr, &filter("body", BODY, ""), ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    // curl sends the body chunked; the filter buffers it to its end, then appends to it.
    let out = run(
        "curl",
        &[
            "-s",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "hello",
            &format!("http://{addr}/"),
        ],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "got [hello (seen by wasm)] and a ******"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_to_a_cluster_decides_the_request() {
    let up = Upstream::echo("up").await;
    let auth = Upstream::start(|req| async move {
        let ok = req.headers().get("x-user").is_some_and(|u| u == "alice");
        Response::builder()
            .status(if ok { 200 } else { 401 })
            .body(full("checked"))
            .unwrap()
    })
    .await;
    let clusters = format!("- name: auth\n  endpoints: [\"{}\"]\n", auth.addr);
    let proxy = start_proxy(&config(up.addr, &filter("auth", AUTH, ""), &clusters));
    let addr = proxy.listener_addr("ingress").unwrap();
    let req = http::Request::get(format!("http://{addr}/"))
        .header("x-user", "alice")
        .body(empty())
        .unwrap();
    let reply = send(&h1_client(), req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["headers"]["x-auth"], "checked");
    let req = http::Request::get(format!("http://{addr}/"))
        .header("x-user", "eve")
        .body(empty())
        .unwrap();
    let reply = send(&h1_client(), req).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.header("x-auth-status"), Some("401"));
    assert_eq!(auth.hits(), 2);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_data_counts_across_workers_and_metrics_are_exported() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&config(up.addr, &filter("counter", COUNTER, ""), ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    // The first write of a key cannot be guarded (proxy-wasm's CAS 0 means "unconditional",
    // and an absent key has no CAS): one request creates the counter before the race.
    let first = send(
        &h1_client(),
        http::Request::get(format!("http://{addr}/"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(first.json()["headers"]["x-request-count"], "1");
    // Fresh connections spread over both workers (SO_REUSEPORT).
    let replies = futures_util::future::join_all((0..39).map(|_| async move {
        let req = http::Request::get(format!("http://{addr}/"))
            .header("connection", "close")
            .body(empty())
            .unwrap();
        send(&h1_client(), req).await
    }))
    .await;
    let mut counts: Vec<u64> = replies
        .iter()
        .map(|r| {
            r.json()["headers"]["x-request-count"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        (2..=40).collect::<Vec<_>>(),
        "compare-and-swap: every count seen once"
    );
    assert_eq!(metric(&proxy, "counter_requests_total").await, Some(40.0));
    eventually("ticks counted", Duration::from_secs(5), || async {
        metric(&proxy, "counter_ticks_total").await.unwrap_or(0.0) > 0.0
    })
    .await;
}

/// Filters scoped with `applies_to` run on their routes or clusters only. Elsewhere they are
/// never entered: no callback runs (the counter does not count, the headers filter edits
/// nothing), and a request no filter runs on goes through as on a listener without filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_filters_run_only_on_their_routes_and_clusters() {
    let up = Upstream::echo("up").await;
    let other = Upstream::echo("other").await;
    let proxy = start_proxy(&format!(
        r#"
workers: 1
admin: {{address: "127.0.0.1:0"}}
listeners:
- name: ingress
  address: "127.0.0.1:0"
  http_filters:
  - name: headers
    url: "{HEADERS}"
    plugin_config: green
    applies_to: {{routes: [api]}}
  - name: counter
    url: "{COUNTER}"
    applies_to: {{clusters: [other]}}
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - {{name: api, match: {{prefix: /api}}, cluster: backend}}
    - {{name: free, match: {{prefix: /free}}, cluster: backend}}
    - {{name: rest, cluster: other}}
clusters:
- name: backend
  endpoints: ["{}"]
- name: other
  endpoints: ["{}"]
"#,
        up.addr, other.addr
    ));
    let addr = proxy.listener_addr("ingress").unwrap();
    let get = |path: &str| {
        let req = http::Request::get(format!("http://{addr}{path}"))
            .body(empty())
            .unwrap();
        async move { send(&h1_client(), req).await }
    };

    for _ in 0..3 {
        let api = get("/api/items").await;
        assert_eq!(api.status, 200);
        assert_eq!(api.json()["headers"]["x-plugin-config"], "green");
        assert_eq!(api.header("x-wasm-path"), Some("/api/items"));
        assert!(api.json()["headers"].get("x-request-count").is_none());
    }

    let rest = get("/elsewhere").await;
    assert_eq!(rest.status, 200);
    assert!(rest.json()["headers"].get("x-plugin-config").is_none());
    assert!(rest.header("x-wasm-path").is_none());
    assert_eq!(rest.json()["headers"]["x-request-count"], "1");

    let free = get("/free").await;
    assert_eq!(free.status, 200);
    assert!(free.json()["headers"].get("x-plugin-config").is_none());
    assert!(free.json()["headers"].get("x-request-count").is_none());
    assert!(free.header("x-wasm-path").is_none());

    assert_eq!(up.hits(), 4);
    assert_eq!(other.hits(), 1);
    assert_eq!(metric(&proxy, "counter_requests_total").await, Some(1.0));
}

/// The hostile filter under a strategy: what a misbehaving request gets, and whether the next
/// well-behaved one still works.
async fn hostile(
    mode: &str,
    strategy: &str,
) -> (u16, Duration, wasmesh_proxy::Proxy, std::net::SocketAddr) {
    let up = Upstream::echo("up").await;
    let extra = format!(
        "fail_strategy: {strategy}\nvm_config: {{memory_limit_mb: 16, call_deadline: 50ms, reload_backoff: 10ms}}"
    );
    let yaml = config(up.addr, &filter("hostile", HOSTILE, &extra), "")
        .replace("workers: 2", "workers: 1");
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();
    assert_eq!(
        get(addr, "/").await.status,
        200,
        "behaves until asked not to"
    );
    let started = Instant::now();
    let req = http::Request::get(format!("http://{addr}/"))
        .header("x-misbehave", mode)
        .body(empty())
        .unwrap();
    let status = send(&h1_client(), req).await.status.as_u16();
    std::mem::forget(up);
    (status, started.elapsed(), proxy, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_closed_within_their_limits() {
    for mode in ["trap", "loop", "alloc"] {
        let (status, took, proxy, addr) = hostile(mode, "FAIL_CLOSE").await;
        assert_eq!(status, 503, "{mode}");
        assert!(took < Duration::from_secs(3), "{mode} answered in {took:?}");
        assert_eq!(
            get(addr, "/").await.status,
            503,
            "{mode}: the failed VM stays closed"
        );
        let failures = metric(
            &proxy,
            r#"wasmesh_wasm_vm_failures_total{plugin="hostile"}"#,
        )
        .await;
        assert_eq!(failures, Some(1.0), "{mode}");
        assert_eq!(
            admin_get(&proxy, "/ready").await.status,
            200,
            "{mode}: the proxy is up"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_open_or_reload() {
    let (status, _, proxy, addr) = hostile("trap", "FAIL_OPEN").await;
    assert_eq!(status, 200, "FAIL_OPEN skips the failed plugin");
    let reply = get(addr, "/").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.json()["headers"].get("x-hostile").is_none(),
        "the plugin is bypassed now"
    );
    assert!(
        metric(
            &proxy,
            r#"wasmesh_wasm_fail_open_requests_total{plugin="hostile"}"#
        )
        .await
        .unwrap()
            >= 1.0
    );

    let (status, _, proxy, addr) = hostile("loop", "FAIL_RELOAD").await;
    assert_eq!(status, 503, "the request that broke the VM fails closed");
    eventually("a new VM serves again", Duration::from_secs(5), || async {
        let r = get(addr, "/").await;
        r.status == 200 && r.json()["headers"]["x-hostile"] == "passed"
    })
    .await;
    assert!(
        metric(&proxy, r#"wasmesh_wasm_vm_reloads_total{plugin="hostile"}"#)
            .await
            .unwrap()
            >= 1.0
    );
}

/// FAIL_RELOAD replaces a failed VM only `reload_backoff` after the failure, the first time
/// too (issue 9: the first replacement came with the next request); meanwhile requests get
/// 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_fail_reload_replacement_waits_its_backoff() {
    let up = Upstream::echo("up").await;
    let backoff = Duration::from_millis(1500);
    let extra =
        "fail_strategy: FAIL_RELOAD\nvm_config: {call_deadline: 50ms, reload_backoff: 1500ms}";
    // One worker: one VM, which the misbehaving request fails.
    let yaml =
        config(up.addr, &filter("hostile", HOSTILE, extra), "").replace("workers: 2", "workers: 1");
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();
    assert_eq!(get(addr, "/").await.status, 200);
    let reloads = r#"wasmesh_wasm_vm_reloads_total{plugin="hostile"}"#;

    let failed = Instant::now();
    let req = http::Request::get(format!("http://{addr}/"))
        .header("x-misbehave", "trap")
        .body(empty())
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.status, 503);
    // The VM failed after `failed`: no replacement may serve before `failed + backoff`.
    let mut refused = 0;
    let served = loop {
        let reply = get(addr, "/").await;
        if reply.status == 200 {
            assert_eq!(reply.json()["headers"]["x-hostile"], "passed");
            break failed.elapsed();
        }
        assert_eq!(reply.status, 503, "{}", reply.text());
        refused += 1;
        assert!(
            failed.elapsed() < backoff + Duration::from_secs(15),
            "no new VM after {:?}",
            failed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        served >= backoff,
        "a new VM served {served:?} after the failure, before the backoff of {backoff:?} \
         ({refused} requests refused meanwhile)"
    );
    assert_eq!(metric(&proxy, reloads).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wild_pointers_get_error_statuses_not_a_crash() {
    let (status, _, _proxy, addr) = hostile("wild", "FAIL_CLOSE").await;
    assert_eq!(status, 200);
    let req = http::Request::get(format!("http://{addr}/"))
        .header("x-misbehave", "wild")
        .body(empty())
        .unwrap();
    let reply = send(&h1_client(), req).await;
    // INVALID_MEMORY_ACCESS (6) for each bad pointer.
    assert_eq!(reply.json()["headers"]["x-wild"], "6,6,6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_leaves_other_listeners_alone() {
    let up = Upstream::echo("up").await;
    let yaml = format!(
        r#"
workers: 1
listeners:
- name: hostile
  address: "127.0.0.1:0"
  http_filters:
  - {{name: hostile, url: "{HOSTILE}", vm_config: {{call_deadline: 50ms}}}}
  virtual_hosts: [{{name: all, domains: ["*"], routes: [{{cluster: backend}}]}}]
- name: calm
  address: "127.0.0.1:0"
  http_filters:
  - {{name: headers, url: "{HEADERS}"}}
  virtual_hosts: [{{name: all, domains: ["*"], routes: [{{cluster: backend}}]}}]
clusters:
- {{name: backend, endpoints: ["{}"]}}
"#,
        up.addr
    );
    let proxy = start_proxy(&yaml);
    let hostile = proxy.listener_addr("hostile").unwrap();
    let calm = proxy.listener_addr("calm").unwrap();
    let slow = tokio::spawn(async move {
        let req = http::Request::get(format!("http://{hostile}/"))
            .header("x-misbehave", "loop")
            .body(empty())
            .unwrap();
        send(&h1_client(), req).await.status
    });
    for _ in 0..10 {
        let r = get(calm, "/").await;
        assert_eq!(r.status, 200);
        assert!(r.json()["headers"].get("x-context-id").is_some());
    }
    assert_eq!(slow.await.unwrap(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_modules_are_refused_with_a_reason() {
    let up = Upstream::echo("up").await;
    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, b"hello").unwrap();
    let no_abi = dir.path().join("no-abi.wasm");
    // A valid module exporting only its memory: no proxy-wasm ABI marker.
    std::fs::write(
        &no_abi,
        b"\0asm\x01\0\0\0\x05\x03\x01\x00\x01\x07\x0a\x01\x06memory\x02\x00",
    )
    .unwrap();
    let cases = [
        (
            filter("x", not_wasm.to_str().unwrap(), ""),
            "not a WebAssembly module",
        ),
        (filter("x", no_abi.to_str().unwrap(), ""), "ABI version"),
        (
            filter("x", HEADERS, &format!("sha256: \"{}\"", "0".repeat(64))),
            "sha256 mismatch",
        ),
        (
            filter("x", HOSTILE, "plugin_config: refuse"),
            "proxy_on_configure returned false",
        ),
        (filter("x", "/no/such/file.wasm", ""), "cannot read"),
    ];
    for (f, reason) in cases {
        let bootstrap = wasmesh_proxy::config::Bootstrap::parse(&config(up.addr, &f, "")).unwrap();
        let err = wasmesh_proxy::Proxy::start(bootstrap)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("filter \"x\"") && err.contains(reason),
            "{reason}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_swaps_the_chain_under_load_without_failing_a_request() {
    let up = Upstream::echo("up").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let write = |config_value: &str| {
        std::fs::write(
            &path,
            config(
                up.addr,
                &filter(
                    "headers",
                    HEADERS,
                    &format!("plugin_config: {config_value}"),
                ),
                "",
            ),
        )
        .unwrap();
    };
    write("v1");
    let proxy = Arc::new(wasmesh_proxy::Proxy::start_from_file(&path).unwrap());
    let addr = proxy.listener_addr("ingress").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen_v2 = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, seen_v2) = (stop.clone(), seen_v2.clone());
        load.push(tokio::spawn(async move {
            let client = h1_client();
            let mut failures = 0;
            let mut n = 0;
            while !stop.load(SeqCst) {
                let req = http::Request::get(format!("http://{addr}/"))
                    .body(empty())
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => {
                        let body = http_body_util::BodyExt::collect(r.into_body())
                            .await
                            .unwrap()
                            .to_bytes();
                        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        if json["headers"]["x-plugin-config"] == "v2" {
                            seen_v2.fetch_add(1, SeqCst);
                        }
                    }
                    _ => failures += 1,
                }
                n += 1;
            }
            (n, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    write("v2");
    let reloader = proxy.clone();
    let version = tokio::task::spawn_blocking(move || reloader.reload_from_file())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(version, 2);
    eventually(
        "new requests see the new config",
        Duration::from_secs(5),
        || async { seen_v2.load(SeqCst) > 20 },
    )
    .await;

    // A broken module is rejected and the last good chain keeps serving.
    std::fs::write(
        &path,
        config(up.addr, &filter("headers", "/no/such.wasm", ""), ""),
    )
    .unwrap();
    let reloader = proxy.clone();
    let err = tokio::task::spawn_blocking(move || reloader.reload_from_file())
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, SeqCst);
    let mut total = 0;
    for l in load {
        let (n, failures) = l.await.unwrap();
        assert_eq!(failures, 0, "no request failed across reloads");
        total += n;
    }
    assert!(total > 100, "load was applied: {total} requests");
    let info = admin_get(&proxy, "/server_info").await.json();
    assert_eq!(info["config_version"], 2);
    assert!(
        info["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("cannot read")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watch_reloads_only_a_changed_text() {
    let up = Upstream::echo("up").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let text = |value: &str| {
        config(
            up.addr,
            &filter("headers", HEADERS, &format!("plugin_config: {value}")),
            "",
        )
    };
    std::fs::write(&path, text("v1")).unwrap();
    let proxy = Arc::new(wasmesh_proxy::Proxy::start_from_file(&path).unwrap());
    let reload = |force: bool| {
        let proxy = proxy.clone();
        tokio::task::spawn_blocking(move || {
            if force {
                proxy.reload_from_file().map(Some)
            } else {
                proxy.reload_from_file_if_changed()
            }
        })
    };
    // The text it started from: nothing to do (a touched file, or a watcher after an admin
    // reload of the same text).
    assert_eq!(reload(false).await.unwrap(), Ok(None));
    std::fs::write(&path, text("v2")).unwrap();
    assert_eq!(reload(false).await.unwrap(), Ok(Some(2)));
    assert_eq!(reload(false).await.unwrap(), Ok(None));
    // SIGHUP and `POST /config_reload` always reload.
    assert_eq!(reload(true).await.unwrap(), Ok(Some(3)));
    assert_eq!(reload(false).await.unwrap(), Ok(None));
    // A rejected text is not taken for loaded: fixing it back reloads.
    std::fs::write(&path, "listeners: [").unwrap();
    assert!(reload(false).await.unwrap().is_err());
    std::fs::write(&path, text("v2")).unwrap();
    assert_eq!(reload(false).await.unwrap(), Ok(None), "v2 is what runs");
    std::fs::write(&path, text("v3")).unwrap();
    assert_eq!(reload(false).await.unwrap(), Ok(Some(4)));
    let reply = get(proxy.listener_addr("ingress").unwrap(), "/").await;
    assert_eq!(reply.json()["headers"]["x-plugin-config"], "v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_admin_post_reload_the_binary() {
    let up = Upstream::echo("up").await;
    let yaml = config(
        up.addr,
        &filter("headers", HEADERS, "plugin_config: first"),
        "",
    );
    let proxy = ProxyProcess::spawn(&yaml).await;
    let addr = proxy.listeners["ingress"];
    let admin = proxy.admin.unwrap();
    let config_of = || async move {
        get(addr, "/").await.json()["headers"]["x-plugin-config"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(config_of().await, "first");
    let path = proxy.config_path();
    std::fs::write(
        &path,
        yaml.replace("plugin_config: first", "plugin_config: second"),
    )
    .unwrap();
    proxy.signal("HUP");
    eventually("SIGHUP reloaded", Duration::from_secs(10), || async {
        config_of().await == "second"
    })
    .await;
    std::fs::write(
        &path,
        yaml.replace("plugin_config: first", "plugin_config: third"),
    )
    .unwrap();
    let reply = send(
        &h1_client(),
        http::Request::post(format!("http://{admin}/config_reload"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(config_of().await, "third");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_load_over_http_when_their_sha256_matches() {
    let module = std::fs::read(HEADERS).unwrap();
    let sha = wasmesh_host::module::sha256_hex(&module);
    let served = bytes::Bytes::from(module);
    let store = Upstream::start(move |_| {
        let body = served.clone();
        async move { Response::new(full(body)) }
    })
    .await;
    let up = Upstream::echo("up").await;
    let url = format!("http://{}/headers.wasm", store.addr);
    // A wrong digest is refused (and nothing is cached under it).
    let wrong = "ab".repeat(32);
    let bad = config(
        up.addr,
        &filter("remote", &url, &format!("sha256: \"{wrong}\"")),
        "",
    );
    let err = wasmesh_proxy::Proxy::start(wasmesh_proxy::config::Bootstrap::parse(&bad).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sha256 mismatch"), "{err}");
    let good = config(
        up.addr,
        &filter(
            "remote",
            &url,
            &format!("sha256: \"{sha}\"\nplugin_config: remote"),
        ),
        "",
    );
    let proxy = start_proxy(&good);
    let reply = get(proxy.listener_addr("ingress").unwrap(), "/").await;
    assert_eq!(reply.json()["headers"]["x-plugin-config"], "remote");
}

#[test]
fn compiled_modules_are_cached_on_disk_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let module = std::fs::read(COUNTER).unwrap();
    let first = wasmesh_host::ModuleCache::new(Some(dir.path().to_owned()));
    first.load(&module, None).unwrap();
    assert_eq!(first.compiled.load(SeqCst), 1);
    // A new process (a new cache) reads the compiled module back instead of compiling.
    let second = wasmesh_host::ModuleCache::new(Some(dir.path().to_owned()));
    let loaded = second.load(&module, None).unwrap();
    assert_eq!(
        (second.compiled.load(SeqCst), second.from_disk.load(SeqCst)),
        (0, 1)
    );
    assert!(
        dir.path()
            .join(format!("{}.cwasm", loaded.sha256_hex()))
            .exists()
    );
}

/// The harness drives filters through the host's own stream driver, as the proxy does: what a
/// filter's harness test sees is what a client of the proxy gets, local replies (their
/// framing, and the response phase that sees the request head) included.
#[test]
fn the_harness_answers_as_the_proxy_does() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let up = runtime.block_on(Upstream::echo("up"));
    let proxy = start_proxy(&config(
        up.addr,
        &filter("headers", HEADERS, "plugin_config: green"),
        "",
    ));
    let addr = proxy.listener_addr("ingress").unwrap();
    let mut harness = wasmesh_harness::Harness::builder(&std::fs::read(HEADERS).unwrap())
        .plugin_config("green")
        .build()
        .unwrap();
    // Not `server`: the listener sets it after the filters, as Envoy's connection manager
    // does, and the harness runs the filters only.
    let compared = ["content-type", "content-length", "x-hello", "x-wasm-path"];
    for path in ["/hello", "/a"] {
        let reply = runtime.block_on(async {
            let req = http::Request::get(format!("http://{addr}{path}"))
                .header("x-remove-me", "1")
                .body(empty())
                .unwrap();
            send(&h1_client(), req).await
        });
        let out = harness.request(
            http::Request::get(path)
                .header("x-remove-me", "1")
                .body(bytes::Bytes::new())
                .unwrap(),
            wasmesh_harness::Upstream::response(
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(bytes::Bytes::new())
                    .unwrap(),
            ),
        );
        let response = out.response.expect("a response");
        assert_eq!(response.status(), reply.status, "{path}");
        for name in compared {
            // The upstream's own framing differs (an echo); the filters' work must not.
            if path == "/a" && name == "content-length" {
                continue;
            }
            assert_eq!(
                response.headers().get(name).map(|v| v.to_str().unwrap()),
                reply.header(name),
                "{path}: {name}"
            );
        }
        if path == "/hello" {
            assert_eq!(response.body(), reply.text().as_bytes());
        } else {
            let sent = out.upstream_request.expect("forwarded");
            let seen = &reply.json()["headers"];
            for name in ["x-plugin-config", "x-remove-me", "x-context-id"] {
                assert_eq!(
                    sent.headers().contains_key(name),
                    seen.get(name).is_some(),
                    "{name}"
                );
            }
        }
    }
}

/// A worker keeps the VM of a plugin a new chain carries over unchanged (the same spec, as a
/// reload keeps it), with its root context and memory, as Envoy keeps a plugin whose
/// configuration did not change; a changed plugin starts afresh.
#[test]
fn a_new_chain_keeps_the_vms_of_unchanged_plugins() {
    use wasmesh_host::{FailStrategy, Host, NoCallouts, PluginSpec, VmLimits, WorkerVms};
    let host = Host::new(None);
    let module = host
        .cache
        .load(&std::fs::read(HOSTILE).unwrap(), None)
        .unwrap();
    let spec = |name: &str, config: &str| {
        Arc::new(PluginSpec {
            name: name.into(),
            root_id: String::new(),
            vm_id: name.into(),
            configuration: bytes::Bytes::from(config.to_owned()),
            vm_configuration: bytes::Bytes::new(),
            env: Vec::new(),
            fail_strategy: FailStrategy::FailClose,
            limits: VmLimits::default(),
            reload_backoff: Duration::from_secs(1),
            module: module.clone(),
            scope: None,
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, async {
        let mut vms = WorkerVms::new(host.clone(), std::rc::Rc::new(NoCallouts)).unwrap();
        let (kept, changed) = (spec("kept", "ok"), spec("changed", "ok"));
        let first = vms.chain(&[kept.clone(), changed]).unwrap();
        let second = vms.chain(&[kept.clone(), spec("changed", "ok ")]).unwrap();
        let same = |a: &wasmesh_host::Chain, b: &wasmesh_host::Chain, i| {
            std::rc::Rc::ptr_eq(&a.vm(i).unwrap(), &b.vm(i).unwrap())
        };
        assert!(
            same(&first, &second, 0),
            "the unchanged plugin keeps its VM"
        );
        assert!(
            !same(&first, &second, 1),
            "the changed plugin gets a new VM"
        );
        drop(first);

        // A spec equal to the kept one but not the same is a new configuration: a new VM.
        let third = vms.chain(&[spec("kept", "ok")]).unwrap();
        assert!(!same(&second, &third, 0));
        // Once no chain holds a VM, it is gone: the same spec starts a new one.
        let vm = std::rc::Rc::downgrade(&second.vm(0).unwrap());
        drop(second);
        assert!(vm.upgrade().is_none(), "the VM of dropped chains is freed");
        vms.chain(&[kept]).unwrap();
    });
}
