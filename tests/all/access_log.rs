use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request_with_envoy_fields_and_flags() {
    let up = Upstream::echo("up").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!(
        "access_log: {{path: \"{}\"}}\n{}",
        log.display(),
        simple_config(&[up.addr], "", "").replace("prefix: /}", "prefix: /ok}")
    )
    .replace(
        "clusters:\n",
        &format!(
            "clusters:\n- name: dead\n  endpoints: [\"{}\"]\n",
            dead_addr()
        ),
    )
    .replace(
        "      cluster: backend\n",
        "      cluster: backend\n    - match: {prefix: /dead}\n      cluster: dead\n",
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();
    let client = h1_client();
    let req = http::Request::get(format!("http://{addr}/ok?x=1"))
        .header("user-agent", "test-agent")
        .header("x-request-id", "req-123")
        .body(empty())
        .unwrap();
    assert_eq!(send(&client, req).await.status, 200);
    assert_eq!(get(addr, "/missing").await.status, 404);
    assert_eq!(get(addr, "/dead").await.status, 503);

    let mut lines = Vec::new();
    eventually("three access log lines", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        let n = lines.len();
        async move { n >= 3 }
    })
    .await;
    let by_path = |p: &str| {
        lines
            .iter()
            .find(|l| l["path"] == p)
            .unwrap_or_else(|| panic!("no line for {p}: {lines:?}"))
            .clone()
    };
    let ok = by_path("/ok?x=1");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["response_code"], 200);
    assert_eq!(ok["response_flags"], "-");
    assert_eq!(ok["request_id"], "req-123");
    assert_eq!(ok["user_agent"], "test-agent");
    assert_eq!(ok["upstream_cluster"], "backend");
    assert_eq!(ok["upstream_host"], up.addr.to_string());
    assert_eq!(ok["x_forwarded_for"], "127.0.0.1");
    assert!(ok["bytes_sent"].as_u64().unwrap() > 0);
    assert!(ok["start_time"].as_str().unwrap().ends_with('Z'));
    for key in [
        "duration",
        "upstream_service_time",
        "authority",
        "route_name",
        "downstream_remote_address",
        "downstream_local_address",
        "bytes_received",
        "response_code_details",
    ] {
        assert!(ok.get(key).is_some(), "missing {key}");
    }
    assert_eq!(by_path("/missing")["response_flags"], "NR");
    let dead = by_path("/dead");
    assert_eq!(dead["response_flags"], "UF");
    assert!(dead["upstream_transport_failure_reason"].is_string());
}
