use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_h2c_reaches_the_routed_cluster() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let yaml = format!(
        r#"
workers: 2
listeners:
- name: ingress
  address: "127.0.0.1:0"
  virtual_hosts:
  - name: api
    domains: ["api.example.com"]
    routes:
    - {{match: {{prefix: /}}, cluster: b}}
  - name: default
    domains: ["*"]
    routes:
    - {{match: {{prefix: /a}}, cluster: a}}
clusters:
- {{name: a, endpoints: ["{}"]}}
- {{name: b, endpoints: ["{}"]}}
"#,
        a.addr, b.addr
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("ingress").unwrap();
    for flag in ["--http1.1", "--http2-prior-knowledge"] {
        let out = run("curl", &["-s", flag, &format!("http://{addr}/a/path?q=1")]).await;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("echo JSON");
        assert_eq!(json["server"], "a", "{flag}");
        assert!(
            json["uri"].as_str().unwrap().ends_with("/a/path?q=1"),
            "{json}"
        );
        let headers = &json["headers"];
        assert_eq!(
            headers["x-request-id"].as_str().unwrap().len(),
            36,
            "generated request id"
        );
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");

        let out = run(
            "curl",
            &[
                "-s",
                flag,
                "-H",
                "Host: api.example.com",
                &format!("http://{addr}/x"),
            ],
        )
        .await;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("echo JSON");
        assert_eq!(json["server"], "b", "{flag}: host routing");
    }
    assert_eq!(a.hits(), 2);
    assert_eq!(b.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_request_id_and_forwarded_for_are_kept_and_appended() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&simple_config(&[up.addr], "", ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    let req = http::Request::get(format!("http://{addr}/"))
        .header("x-request-id", "my-id-1")
        .header("x-forwarded-for", "10.1.2.3")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .body(empty())
        .unwrap();
    let reply = send(&h1_client(), req).await;
    let headers = &reply.json()["headers"];
    assert_eq!(headers["x-request-id"], "my-id-1");
    assert_eq!(headers["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert!(
        headers.get("x-hop").is_none(),
        "headers named by Connection are hop-by-hop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_with_flag_nr() {
    let up = Upstream::echo("up").await;
    let yaml = simple_config(&[up.addr], "", "").replace("prefix: /}", "prefix: /api}");
    let proxy = start_proxy(&yaml);
    let reply = get(proxy.listener_addr("ingress").unwrap(), "/elsewhere").await;
    assert_eq!(reply.status, 404);
    assert_eq!(up.hits(), 0);
    let nr = metric(
        &proxy,
        r#"wasmesh_downstream_rq_flags_total{listener="ingress",response_flags="NR"}"#,
    )
    .await;
    assert_eq!(nr, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancing_policies_spread_requests() {
    for policy in ["round_robin", "least_request", "random"] {
        let ups = [
            Upstream::echo("0").await,
            Upstream::echo("1").await,
            Upstream::echo("2").await,
        ];
        let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
        let proxy = start_proxy(&simple_config(
            &addrs,
            &cluster_extra(&format!("lb_policy: {policy}")),
            "",
        ));
        let addr = proxy.listener_addr("ingress").unwrap();
        let client = h1_client();
        for _ in 0..90 {
            let req = http::Request::get(format!("http://{addr}/"))
                .body(empty())
                .unwrap();
            assert_eq!(send(&client, req).await.status, 200);
        }
        for u in &ups {
            // Round robin gives 30 each; the random policies stay well away from 0 and 90.
            assert!(
                (10..=60).contains(&u.hits()),
                "{policy}: {} got {}",
                u.addr,
                u.hits()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_requests_all_succeed_over_h2c() {
    let up = Upstream::echo("up").await;
    let proxy = start_proxy(&simple_config(&[up.addr], "", ""));
    let url = format!("http://{}/load", proxy.listener_addr("ingress").unwrap());
    let out = run("h2load", &["-n", "2000", "-c", "8", "-m", "16", &url]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "h2load summary:\n{text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    assert_eq!(up.hits(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_cluster_carries_http1_clients() {
    let up = Upstream::echo("h2").await;
    let proxy = start_proxy(&simple_config(
        &[up.addr],
        &cluster_extra("protocol: http2"),
        "",
    ));
    let reply = get(proxy.listener_addr("ingress").unwrap(), "/over-h2").await;
    assert_eq!(reply.status, 200);
    let json = reply.json();
    assert_eq!(json["version"], "HTTP/2.0");
    assert!(json["uri"].as_str().unwrap().ends_with("/over-h2"));
}
