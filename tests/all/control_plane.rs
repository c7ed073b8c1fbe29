//! The control plane and its sidecars as real processes on loopback: edits reach every proxy,
//! bad documents and bad plugins are reported while the rest keeps working, and traffic
//! survives the control plane going away.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmesh_api as api;

use crate::support::sidecars::{
    ControlPlane, Sidecar, SidecarSpec, echo_workload, plugins_dir, services, shared_cache, stamp,
    stamp_plugin, wait_stamp, write,
};
use crate::support::tls::{TestCa, https_server};
use crate::support::*;

/// The echo service's port.
const ECHO: u16 = 8000;

async fn call(outbound: std::net::SocketAddr, host: &str) -> Result<Reply, String> {
    let req = Request::get(format!("http://{outbound}/check"))
        .header("host", host)
        .body(empty())
        .unwrap();
    let client = h1_client();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    use http_body_util::BodyExt;
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Waits until a request through `outbound` to `host` satisfies `ok`.
async fn until(
    outbound: std::net::SocketAddr,
    host: &str,
    what: &str,
    ok: impl Fn(&Reply) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = call(outbound, host).await;
        if reply.as_ref().is_ok_and(&ok) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "through {outbound}: never {what}; last: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn fault(status: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
spec:
  hosts: [echo]
  http:
  - fault:
      abort: {{httpStatus: {status}, percentage: {{value: 100}}}}
    route:
    - destination: {{host: echo}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dozen_sidecars_follow_edits_report_errors_and_keep_serving_through_a_nack() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "services.yaml", &services(&[("echo", ECHO)]));
    let cp = ControlPlane::start(&manifests, &dir.path().join("data"), "127.0.0.1:0");
    let cache = shared_cache();

    let app = Upstream::echo("echo-v1").await;
    // The first sidecar compiles the modules (if no test did yet); the others load them.
    let server = Sidecar::start(
        &cp.address,
        &SidecarSpec {
            name: "echo-v1",
            labels: &[("app", "echo"), ("version", "v1")],
            app: Some((ECHO, app.addr)),
            cache: &cache,
            outbound: "127.0.0.1:0",
        },
    );
    let names: Vec<String> = (0..11).map(|i| format!("client-{i}")).collect();
    let clients: Vec<_> = names
        .iter()
        .map(|name| {
            Sidecar::spawn(
                &cp.address,
                &SidecarSpec {
                    name,
                    labels: &[("app", "client")],
                    app: None,
                    cache: &cache,
                    outbound: "127.0.0.1:0",
                },
            )
        })
        .collect();
    let clients: Vec<Sidecar> = clients.into_iter().map(Sidecar::ready).collect();
    cp.wait_synced(12, Duration::from_secs(60)).await;

    // Every hop is proxy to proxy: a client's sidecar, then the server's inbound listener.
    for c in &clients {
        until(c.outbound, "echo:8000", "reached echo-v1", |r| {
            r.status == 200 && r.header("x-served-by") == Some("echo-v1")
        })
        .await;
    }
    let inbound = server.inbound.expect("an inbound listener");
    let via_inbound = app.hits();
    assert!(
        via_inbound >= clients.len(),
        "the app saw {via_inbound} requests"
    );
    assert_eq!(get(inbound, "/direct").await.status, 200);

    // A VirtualService edit reaches all of them.
    write(&manifests, "echo-vs.yaml", &fault(418));
    for c in &clients {
        until(c.outbound, "echo", "answered 418", |r| r.status == 418).await;
    }

    // A document with an error is reported (file and field); the rest of the edit applies.
    write(
        &manifests,
        "broken.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bad}\nspec:\n  host: echo\n  trafficPolicy: {loadBalancer: {simple: SOMETIMES}}\n",
    );
    write(&manifests, "echo-vs.yaml", &fault(419));
    for c in &clients {
        until(c.outbound, "echo", "answered 419", |r| r.status == 419).await;
    }
    let status = cp.status().await;
    assert!(
        status
            .diagnostics
            .iter()
            .any(|d| d.contains("broken.yaml") && d.contains("SOMETIMES")),
        "{:#?}",
        status.diagnostics
    );

    // A WasmPlugin for the server's inbound side, with the published SDK's header filter.
    let plugin = |url: &str, config: &str| stamp_plugin(url, config, "");
    write(&manifests, "echo-vs.yaml", "");
    write(
        &manifests,
        "plugin.yaml",
        &plugin(wasmesh_artifacts::HEADERS, "first"),
    );
    for c in &clients {
        until(c.outbound, "echo", "passed the plugin", |r| {
            r.status == 200 && r.json()["headers"]["x-plugin-config"] == "first"
        })
        .await;
    }
    cp.wait_synced(12, Duration::from_secs(30)).await;

    // A module that does not compile: the server's proxy NACKs it, proxy-status says so,
    // and the old chain keeps serving.
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0 this is not a module").unwrap();
    write(
        &manifests,
        "plugin.yaml",
        &plugin(garbage.to_str().unwrap(), "second"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let nacked = loop {
        let status = cp.status().await;
        if let Some(p) = status.proxies.iter().find(|p| p.state == "NACKED") {
            break p.clone();
        }
        assert!(Instant::now() < deadline, "no NACK: {:#?}", status.proxies);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(nacked.id, "echo-v1.default");
    assert!(nacked.error.contains("stamp"), "{}", nacked.error);
    let reply = call(clients[0].outbound, "echo").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["headers"]["x-plugin-config"], "first");
    // The clients were not affected: they are not selected by the plugin.
    let status = cp.status().await;
    let synced = status
        .proxies
        .iter()
        .filter(|p| p.state == "SYNCED")
        .count();
    assert_eq!(synced, 11, "{:#?}", status.proxies);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_survives_a_control_plane_outage_and_proxies_resync() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "services.yaml", &services(&[("echo", ECHO)]));
    let data = dir.path().join("data");
    let mut cp = ControlPlane::start(&manifests, &data, "127.0.0.1:0");
    let address = cp.address.clone();
    let cache = shared_cache();
    let app = Upstream::echo("echo-v1").await;
    let server = Sidecar::start(
        &address,
        &SidecarSpec {
            name: "echo-v1",
            labels: &[("app", "echo")],
            app: Some((ECHO, app.addr)),
            cache: &cache,
            outbound: "127.0.0.1:0",
        },
    );
    let client_spec = SidecarSpec {
        name: "client",
        labels: &[("app", "client")],
        app: None,
        cache: &cache,
        outbound: "127.0.0.1:0",
    };
    let client = Sidecar::start(&address, &client_spec);
    cp.wait_synced(2, Duration::from_secs(60)).await;
    until(client.outbound, "echo:8000", "reached echo", |r| {
        r.status == 200
    })
    .await;

    // Load through both sidecars while the control plane is away for 30 s.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let outbound = client.outbound;
        load.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                match call(outbound, "echo").await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Relaxed);
                    }
                    other => failed.lock().unwrap().push(format!("{other:?}")),
                }
            }
        }));
    }
    cp.process.kill();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = ok.load(Relaxed);
    let cp = ControlPlane::start(&manifests, &data, &address);
    let status = cp.wait_synced(2, Duration::from_secs(30)).await;
    assert!(
        status
            .proxies
            .iter()
            .all(|p| p.acked_version == p.sent_version)
    );
    stop.store(true, Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        during > 100,
        "only {during} requests while the control plane was away"
    );

    // A proxy killed and restarted gets its config again.
    drop(client);
    let client = Sidecar::start(&address, &client_spec);
    cp.wait_synced(2, Duration::from_secs(60)).await;
    until(client.outbound, "echo", "reached echo again", |r| {
        r.status == 200
    })
    .await;
    drop(server);
}

/// A raw stream to the control plane, as a proxy would open it.
async fn open_stream(
    address: &str,
    first: api::ProxyMessage,
) -> (
    tokio::sync::mpsc::Sender<api::ProxyMessage>,
    Result<tonic::Streaming<api::ControlMessage>, tonic::Status>,
) {
    // Small windows: a stream that is not read fills up after a push or two.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .initial_stream_window_size(Some(16 << 10))
        .initial_connection_window_size(Some(16 << 10))
        .connect()
        .await
        .unwrap();
    let mut client =
        api::mesh_config_client::MeshConfigClient::new(channel).max_encoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(first).await.unwrap();
    let stream = client
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (tx, stream)
}

fn hello(name: &str, outbound: &str) -> api::ProxyMessage {
    api::ProxyMessage {
        kind: Some(api::proxy_message::Kind::Hello(api::Hello {
            node: Some(api::Node {
                name: name.into(),
                namespace: "default".into(),
                outbound_address: outbound.into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

async fn first_error(
    stream: Result<tonic::Streaming<api::ControlMessage>, tonic::Status>,
) -> tonic::Status {
    match stream {
        Err(status) => status,
        Ok(mut s) => match s.message().await {
            Err(status) => status,
            Ok(m) => panic!("expected an error, got {m:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_on_the_api_gets_a_clear_error_and_a_stuck_proxy_delays_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "services.yaml", &services(&[("echo", ECHO)]));
    let cp = ControlPlane::start(&manifests, &dir.path().join("data"), "127.0.0.1:0");
    let cache = shared_cache();
    let app = Upstream::echo("echo-v1").await;
    let _server = Sidecar::start(
        &cp.address,
        &SidecarSpec {
            name: "echo-v1",
            labels: &[("app", "echo")],
            app: Some((ECHO, app.addr)),
            cache: &cache,
            outbound: "127.0.0.1:0",
        },
    );
    let client = Sidecar::start(
        &cp.address,
        &SidecarSpec {
            name: "client",
            labels: &[("app", "client")],
            app: None,
            cache: &cache,
            outbound: "127.0.0.1:0",
        },
    );
    cp.wait_synced(2, Duration::from_secs(60)).await;

    // Garbage on the port: the connection is closed, nothing else happens.
    let mut raw = tokio::net::TcpStream::connect(&cp.address).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf))
        .await
        .expect("the control plane closes a garbage connection");

    // A Hello without a node, a first message that is not a Hello, a node without a
    // name or with a bad address, a huge message, a second stream for a connected proxy.
    let no_node = api::ProxyMessage {
        kind: Some(api::proxy_message::Kind::Hello(api::Hello::default())),
    };
    let status = first_error(open_stream(&cp.address, no_node).await.1).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("node"), "{status:?}");
    let ack_first = api::ProxyMessage {
        kind: Some(api::proxy_message::Kind::Ack(api::Ack::default())),
    };
    let status = first_error(open_stream(&cp.address, ack_first).await.1).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("Hello"), "{status:?}");
    let status = first_error(open_stream(&cp.address, hello("", "127.0.0.1:1")).await.1).await;
    assert!(status.message().contains("node.name"), "{status:?}");
    let status = first_error(
        open_stream(&cp.address, hello("x", "not an address"))
            .await
            .1,
    )
    .await;
    assert!(status.message().contains("outbound_address"), "{status:?}");
    let mut huge = hello("huge", "127.0.0.1:1");
    if let Some(api::proxy_message::Kind::Hello(h)) = &mut huge.kind {
        h.version = "v".repeat(20 << 20);
    }
    let status = first_error(open_stream(&cp.address, huge).await.1).await;
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    let status = first_error(
        open_stream(&cp.address, hello("client", "127.0.0.1:1"))
            .await
            .1,
    )
    .await;
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    let mut admin = cp.admin().await;
    let status = admin
        .proxy_config(api::ProxyConfigRequest {
            id: "nobody.nowhere".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // A proxy that never reads its stream: every push to it stalls, and the others still
    // follow every edit.
    let (_keep, stuck) = open_stream(&cp.address, hello("stuck", "127.0.0.1:1")).await;
    let _stuck = stuck.expect("the stream opens");
    for i in 0..20u16 {
        // Long route names make each push big, to fill the stuck stream's window fast.
        let vs = fault(420 + i).replace(
            "  - fault:",
            &format!("  - name: {}\n    fault:", "r".repeat(3000)),
        );
        write(&manifests, "echo-vs.yaml", &vs);
        until(client.outbound, "echo", "followed the edit", |r| {
            r.status == 420 + i
        })
        .await;
    }
    let status = cp.status().await;
    let stuck = status
        .proxies
        .iter()
        .find(|p| p.id == "stuck.default")
        .unwrap();
    assert_ne!(stuck.state, "SYNCED");
    assert_eq!(
        status
            .proxies
            .iter()
            .filter(|p| p.state == "SYNCED")
            .count(),
        2,
        "{:#?}",
        status.proxies
    );
}

/// A WasmPlugin over https:// (no sha256: the server's certificate vouches for the module) is
/// downloaded by the control plane, which trusts the system's roots and `--registry-ca`, and
/// shipped to the sidecars it selects; one from a server it does not trust is reported with
/// the reason, and the old chain serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_plugins_reach_sidecars_from_servers_the_control_plane_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "services.yaml", &services(&[("echo", ECHO)]));
    let module = bytes::Bytes::from(std::fs::read(wasmesh_artifacts::HEADERS).unwrap());
    let trusted = TestCa::new("wasmesh test CA");
    let good = https_server(&trusted, module.clone()).await;
    let bad = https_server(&TestCa::new("a CA nobody trusts"), module).await;
    let roots = dir.path().join("ca.pem");
    std::fs::write(&roots, trusted.pem()).unwrap();
    let cp = ControlPlane::start_with(
        &manifests,
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--registry-ca".as_ref(), roots.as_os_str()],
    );

    let (_app, sidecar) = echo_workload(&cp.address, "echo-v1", "echo", ECHO).await;
    let inbound = sidecar.inbound.expect("an inbound listener");
    let good = format!("https://{good}/headers.wasm");
    write(
        &manifests,
        "plugin.yaml",
        &stamp_plugin(&good, "over-tls", ""),
    );
    wait_stamp(&cp, inbound, "over-tls".into()).await;

    let untrusted = format!("https://{bad}/headers.wasm");
    write(
        &manifests,
        "plugin.yaml",
        &stamp_plugin(&untrusted, "untrusted", ""),
    );
    let reported = cp.wait_diagnostic(&untrusted).await;
    assert!(
        reported.contains("WasmPlugin stamp") && reported.contains("UnknownIssuer"),
        "{reported}"
    );
    assert!(reported.contains("last good version stays"), "{reported}");
    let status = cp.wait_synced(1, Duration::from_secs(10)).await;
    assert!(
        status.proxies.iter().all(|p| p.error.is_empty()),
        "{status:#?}"
    );
    assert_eq!(
        stamp(inbound).await,
        "over-tls",
        "the last good plugin serves"
    );
}

/// A sidecar compiles the mesh's own plugins before any policy needs them. With a service and
/// no policy, it runs only the router (for requests without a route), yet every plugin the
/// control plane ships ends up compiled in its cache, so the first fault, mirror, breaker or
/// AuthorizationPolicy takes effect as fast as the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_compile_the_mesh_plugins_ahead_of_need() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "services.yaml", &services(&[("echo", ECHO)]));
    let cp = ControlPlane::start(&manifests, &dir.path().join("data"), "127.0.0.1:0");
    // A cache of its own: nothing compiled before.
    let cache = dir.path().join("cache");
    let _client = Sidecar::start(
        &cp.address,
        &SidecarSpec {
            name: "client",
            labels: &[("app", "client")],
            app: None,
            cache: &cache,
            outbound: "127.0.0.1:0",
        },
    );
    cp.wait_synced(1, Duration::from_secs(60)).await;
    let plugins = std::fs::read_dir(plugins_dir())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("plugin_") && name.ends_with(".wasm")
        })
        .count();
    assert_eq!(plugins, 5, "router, fault, mirror, circuit-breaker, authz");
    let compiled = || {
        std::fs::read_dir(cache.join("compiled"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
                })
                .count()
            })
            .unwrap_or(0)
    };
    eventually(
        "every plugin compiled in the sidecar's cache",
        Duration::from_secs(60),
        || {
            let n = compiled();
            async move { n == plugins }
        },
    )
    .await;
}
