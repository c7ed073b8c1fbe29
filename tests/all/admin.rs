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
