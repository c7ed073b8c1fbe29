use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_state_stats_and_config() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&simple_config(&[up.addr], "", ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    for _ in 0..5 {
        assert_eq!(get(addr, "/").await.status, 200);
    }

    let ready = admin_get(&proxy, "/ready").await;
    assert_eq!(
        (ready.status.as_u16(), ready.text().as_str()),
        (200, "LIVE\n")
    );

    let stats = admin_get(&proxy, "/stats/prometheus").await;
    assert!(
        stats
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = stats.text();
    for sample in [
        r#"wasmesh_downstream_rq_total{listener="ingress",response_code="200"} 5"#,
        r#"wasmesh_upstream_rq_total{cluster="backend"} 5"#,
        r#"wasmesh_downstream_rq_time_milliseconds_count{listener="ingress"} 5"#,
        r#"wasmesh_upstream_cx_active{cluster="backend"}"#,
        r#"wasmesh_upstream_rq_retry_total{cluster="backend"} 0"#,
        r#"wasmesh_upstream_rq_pending_overflow_total{cluster="backend"} 0"#,
    ] {
        assert!(text.contains(sample), "missing {sample} in\n{text}");
    }

    let dump = admin_get(&proxy, "/config_dump").await.json();
    let configs = dump["configs"].as_array().unwrap();
    assert!(configs.iter().any(
        |c| c["@type"].as_str().unwrap().ends_with("ClustersConfigDump")
            && c["static_clusters"][0]["name"] == "backend"
    ));
    assert!(configs.iter().any(|c| {
        c["@type"]
            .as_str()
            .unwrap()
            .ends_with("ListenersConfigDump")
    }));

    let clusters = admin_get(&proxy, "/clusters").await.text();
    assert!(
        clusters.contains(&format!("backend::{}::rq_total::5", up.addr)),
        "{clusters}"
    );
    let json = admin_get(&proxy, "/clusters?format=json").await.json();
    assert_eq!(
        json["cluster_statuses"][0]["host_statuses"][0]["stats"]["rq_total"],
        5
    );

    assert_eq!(
        admin_get(&proxy, "/quitquitquit").await.status,
        405,
        "mutations need POST"
    );
    assert!(!proxy.is_draining());
    assert_eq!(admin_get(&proxy, "/nope").await.status, 404);
}

/// Writes `text` to `path` in one step (a rename), so a watcher never sees it half written.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `(ok, rejected)` reload counts and `last_reload_error` from the binary's admin API.
async fn reload_state(admin: std::net::SocketAddr) -> (f64, f64, Option<String>) {
    let stats = get(admin, "/stats/prometheus").await.text();
    let sample = |result: &str| {
        let name = format!("wasmesh_config_reloads_total{{result=\"{result}\"}} ");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{stats}"))
    };
    let info = get(admin, "/server_info").await.json();
    let error = info["last_reload_error"].as_str().map(str::to_owned);
    (sample("ok"), sample("rejected"), error)
}

/// Issue 9: a file made unparsable, naming an unknown cluster, or deleted was refused but
/// left no trace when the file watch or SIGHUP reloaded it. Every way of reloading counts the
/// refusal and shows it (file, field, reason) until a reload succeeds; the last good config
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_reloads_are_counted_and_shown_whatever_asked_for_them() {
    let up = Upstream::echo("up").await;
    let good = simple_config(&[up.addr], "", "");
    let proxy = ProxyProcess::spawn(&good).await;
    let addr = proxy.listeners["ingress"];
    let admin = proxy.admin.expect("admin address logged");
    let path = proxy.config_path();
    let file = path.to_str().unwrap().to_owned();
    assert_eq!(reload_state(admin).await, (0.0, 0.0, None));

    let bad_cases: [(&str, Option<String>, &str, &str); 3] = [
        ("unparsable", Some("listeners: [\n".to_owned()), "", "line"),
        (
            "unknown cluster",
            Some(good.replace("cluster: backend", "cluster: nowhere")),
            "field `listeners[0].virtual_hosts[0].routes[0].cluster`",
            "unknown cluster \"nowhere\"",
        ),
        ("deleted", None, "", "cannot read"),
    ];
    let (mut ok, mut rejected) = (0.0, 0.0);
    for (i, (case, text, field, reason)) in bad_cases.into_iter().enumerate() {
        match &text {
            Some(text) => replace_file(&path, text),
            None => std::fs::remove_file(&path).unwrap(),
        }
        let shown = |error: &Option<String>| {
            error
                .as_deref()
                .is_some_and(|e| e.contains(&file) && e.contains(field) && e.contains(reason))
        };
        // The file watch notices the change.
        rejected += 1.0;
        eventually(
            &format!("{case}: the watch's refusal is counted and shown"),
            Duration::from_secs(10),
            || async {
                let (o, r, error) = reload_state(admin).await;
                o == ok && r == rejected && shown(&error)
            },
        )
        .await;
        // SIGHUP reloads the same file again (the watch does not: nothing changed).
        proxy.signal("HUP");
        rejected += 1.0;
        eventually(
            &format!("{case}: SIGHUP's refusal is counted"),
            Duration::from_secs(10),
            || async {
                let (o, r, error) = reload_state(admin).await;
                o == ok && r == rejected && shown(&error)
            },
        )
        .await;
        // So does `POST /config_reload`, which answers with the reason.
        let reply = send(
            &h1_client(),
            http::Request::post(format!("http://{admin}/config_reload"))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 400, "{case}");
        assert!(
            reply.text().contains(&file) && reply.text().contains(reason),
            "{case}: {}",
            reply.text()
        );
        rejected += 1.0;
        let (o, r, error) = reload_state(admin).await;
        assert_eq!((o, r), (ok, rejected), "{case}");
        assert!(shown(&error), "{case}: {error:?}");

        // The last good config keeps serving.
        assert_eq!(get(addr, "/").await.status, 200, "{case}");
        let info = get(admin, "/server_info").await.json();
        assert_eq!(info["config_version"], 1 + i, "{case}");

        // A good file again (a new text: a real reload) clears the error.
        replace_file(&path, &format!("{good}\n# {case}\n"));
        ok += 1.0;
        eventually(
            &format!("{case}: the next good reload clears the error"),
            Duration::from_secs(10),
            || async { reload_state(admin).await == (ok, rejected, None) },
        )
        .await;
    }
    assert_eq!(get(addr, "/").await.status, 200);
}

/// The library's `reload` records its outcome as the other ways do, with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_reloads_record_their_outcome_with_a_typed_error() {
    use wasmesh_proxy::ReloadError;
    use wasmesh_proxy::config::Bootstrap;
    let up = Upstream::echo("up").await;
    let good = simple_config(&[up.addr], "", "");
    let proxy = start_proxy(&good);
    let moved =
        Bootstrap::parse(&good.replace("  address: \"127.0.0.1:0\"", "  address: \"127.0.0.1:1\""))
            .unwrap();
    let err = proxy.reload(moved).unwrap_err();
    let ReloadError::Config(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(e.field, "listeners[0].address", "{err}");
    assert!(e.reason.contains("restart"), "{err}");
    assert_eq!(proxy.last_reload_error(), Some(err.clone()));
    let rejected = r#"wasmesh_config_reloads_total{result="rejected"}"#;
    assert_eq!(metric(&proxy, rejected).await, Some(1.0));
    let info = admin_get(&proxy, "/server_info").await.json();
    assert_eq!(info["last_reload_error"], err.to_string());

    assert_eq!(proxy.reload(Bootstrap::parse(&good).unwrap()), Ok(2));
    assert_eq!(proxy.last_reload_error(), None);
    let ok = r#"wasmesh_config_reloads_total{result="ok"}"#;
    assert_eq!(metric(&proxy, ok).await, Some(1.0));
    assert!(admin_get(&proxy, "/server_info").await.json()["last_reload_error"].is_null());
}
