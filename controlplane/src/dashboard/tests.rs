use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::images::puller::PullerOptions;
use crate::mesh::MeshOptions;
use crate::sidecar::{InboundPort, Node};
use crate::source::SourceState;
use crate::{Options, PluginModule, PluginModules};

/// A mesh with no resources; its (fake) plugin modules in `dir`.
fn mesh(dir: &std::path::Path) -> Arc<Mesh> {
    let module = |name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
        PluginModule::new(path.display().to_string())
    };
    let options = MeshOptions {
        translate: Options::default(),
        plugins: PluginModules {
            router: module("router.wasm"),
            fault: module("fault.wasm"),
            mirror: module("mirror.wasm"),
            circuit_breaker: module("circuit_breaker.wasm"),
            authz: module("authz.wasm"),
        },
        data_dir: None,
        grace: Duration::from_secs(1),
        images: PullerOptions::default(),
    };
    let (_, source) = tokio::sync::watch::channel(Arc::new(SourceState::default()));
    Mesh::start(options, source).unwrap()
}

fn node(name: &str, metrics_address: String) -> Node {
    Node {
        gateway_ports: Vec::new(),
        name: name.into(),
        namespace: "default".into(),
        labels: [("app".to_owned(), "reviews".to_owned())].into(),
        service_account: "bookinfo".into(),
        outbound_address: "127.0.0.1:1".into(),
        inbound: vec![InboundPort {
            port: 9080,
            listen_address: "127.0.0.1:2".into(),
            app_address: "127.0.0.1:3".into(),
        }],
        pod_ip: String::new(),
        metrics_address,
    }
}

/// A proxy's admin that answers `/stats/prometheus` with reviews-v1's destination reports,
/// ten more requests at each scrape.
async fn metrics_server() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let scrapes = Arc::new(AtomicU64::new(0));
    let count = scrapes.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let n = count.fetch_add(1, Ordering::SeqCst) * 10;
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                assert!(request.starts_with(b"GET /stats/prometheus HTTP/1.1\r\n"));
                let labels = "reporter=\"destination\",source_workload=\"productpage-v1\",source_workload_namespace=\"default\",destination_workload=\"reviews-v1\",destination_workload_namespace=\"default\",destination_service=\"reviews.default.svc.cluster.local\",destination_service_name=\"reviews\",destination_service_namespace=\"default\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"";
                let body = format!(
                    "# TYPE istio_requests counter\nistio_requests_total{{{labels}}} {n}\n# EOF\n"
                );
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all((head + &body).as_bytes()).await;
            });
        }
    });
    (address, scrapes)
}

/// An address that accepts connections and never answers.
async fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    address
}

async fn get(address: std::net::SocketAddr, path: &str) -> (StatusCode, String, String) {
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::get(path)
                .header(header::HOST, "dashboard")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_connected_proxies_and_serves_their_graph_though_one_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = mesh(dir.path());
    let (metrics, scrapes) = metrics_server().await;
    let silent = silent_server().await;
    let (reviews, ..) = mesh.join(node("reviews-v1", metrics.clone())).unwrap();
    mesh.join(node("stuck-v1", silent.clone())).unwrap();
    mesh.join(node("quiet-v1", String::new())).unwrap();
    let dashboard = Dashboard::start(
        mesh.clone(),
        DashboardOptions {
            scrape_interval: Duration::from_millis(100),
            window: Duration::from_secs(60),
            timeout: Duration::from_millis(500),
            // One at a time: the silent proxy's scrape holds the only permit until its timeout.
            concurrency: 1,
            ..DashboardOptions::default()
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(dashboard.clone().serve(listener));

    let deadline = Instant::now() + Duration::from_secs(20);
    let graph = loop {
        let (status, content_type, body) = get(address, "/api/graph").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        let graph: serde_json::Value = serde_json::from_str(&body).unwrap();
        let stuck_reported = graph["scrapes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["proxy"] == "stuck-v1.default" && s["error"].is_string());
        if graph["edges"].as_array().unwrap().len() == 2 && stuck_reported {
            break graph;
        }
        assert!(Instant::now() < deadline, "{graph:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let edge = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "default/productpage-v1->reviews.default.svc.cluster.local")
        .unwrap_or_else(|| panic!("{graph:#}"));
    assert!(edge["rate"].as_f64().unwrap() > 0.0, "{edge}");
    assert_eq!(edge["mtls"], true);
    assert_eq!(edge["health"], "healthy");
    // The silent proxy is reported, not waited for; the one without metrics is not scraped.
    let scrapes_of = |id: &str| {
        graph["scrapes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["proxy"] == id)
            .cloned()
    };
    let stuck = scrapes_of("stuck-v1.default").unwrap();
    assert!(
        stuck["error"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{stuck}"
    );
    assert_eq!(
        scrapes_of("quiet-v1.default").unwrap()["metrics_address"],
        ""
    );
    assert!(scrapes.load(Ordering::SeqCst) >= 2);
    // Idle connected proxies are nodes too.
    let nodes: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    for id in [
        "default/productpage-v1",
        "reviews.default.svc.cluster.local",
        "default/reviews-v1",
        "default/stuck-v1",
        "default/quiet-v1",
    ] {
        assert!(nodes.contains(&id), "{id} not in {nodes:?}");
    }

    // A node's details.
    let (status, _, body) = get(address, "/api/node?id=default%2Freviews-v1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let details: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(details["node"]["kind"], "workload");
    assert_eq!(details["node"]["proxies"][0], "reviews-v1.default");
    assert_eq!(
        details["inbound"].as_array().unwrap().len(),
        1,
        "{details:#}"
    );
    assert!(details["outbound"].as_array().unwrap().is_empty());
    let (status, _, _) = get(address, "/api/node?id=nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The page and its assets, from the binary.
    let (status, content_type, body) = get(address, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"));
    assert!(body.contains("<script src=\"app.js\">"), "{body}");
    let (status, content_type, body) = get(address, "/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/javascript"));
    assert!(body.contains("api/graph"));
    let (status, content_type, _) = get(address, "/style.css").await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::OK, "text/css; charset=utf-8")
    );
    assert_eq!(get(address, "/nothing").await.0, StatusCode::NOT_FOUND);

    // A proxy that leaves is scraped no more; its traffic stays for the window.
    mesh.leave("reviews-v1.default", reviews);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = scrapes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(scrapes.load(Ordering::SeqCst), before);
    let (_, _, body) = get(address, "/api/graph").await;
    let graph: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(graph["edges"].as_array().unwrap().len(), 2, "{graph:#}");
}

#[test]
fn the_page_asks_nothing_of_other_origins() {
    for asset in [INDEX_HTML, APP_JS, STYLE_CSS] {
        assert!(!asset.contains("http://") || asset.contains("http://www.w3.org/2000/svg"));
        assert!(!asset.contains("https://"), "no CDN");
    }
    // The attributes the tests and tools find the graph by.
    for attribute in ["data-node", "data-kind", "data-edge", "data-mtls"] {
        assert!(APP_JS.contains(attribute), "{attribute}");
    }
}

/// A client that sends half a request head and stalls is cut off at the header timeout, and
/// the page is served to others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_head_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let dashboard = Dashboard::start(
        mesh(dir.path()),
        DashboardOptions {
            header_timeout: Duration::from_millis(300),
            ..DashboardOptions::default()
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(dashboard.serve(listener));

    let mut slow = TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /api/graph HTTP/1.1\r\nHost: dash")
        .await
        .unwrap();
    let (status, ..) = get(address, "/api/graph").await;
    assert_eq!(status, StatusCode::OK);
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the stalled connection is still open after 10 s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}
