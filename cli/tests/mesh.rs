//! The operator's commands, run as the `wasmesh` binary: `analyze` on directories of
//! manifests, and `proxy-status` / `proxy-config` against a real control-plane server (the
//! library's, on 127.0.0.1:0) with a proxy stream opened as a proxy opens it.

use std::process::{Command, Output};

use wasmesh_api as api;
use wasmesh_artifacts::{AUTHZ, CIRCUIT_BREAKER, FAULT, MIRROR, ROUTER};
use wasmesh_controlplane::mesh::{Mesh, MeshOptions};
use wasmesh_controlplane::server::Services;
use wasmesh_controlplane::source::DirectorySource;
use wasmesh_controlplane::{Options, PluginModule, PluginModules};

fn wasmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(args)
        .output()
        .expect("run wasmesh")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const SERVICE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
";

#[test]
fn analyze_reports_like_istioctl_and_fails_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("service.yaml"), SERVICE).unwrap();
    let clean = wasmesh(&["analyze", dir.path().to_str().unwrap()]);
    assert!(clean.status.success(), "{}", text(&clean));
    assert!(
        text(&clean).contains("No validation issues"),
        "{}",
        text(&clean)
    );

    // A ServiceEntry with a short host, which a VirtualService's short host never matches;
    // a WasmPlugin that selects nothing; a field that does not exist.
    std::fs::write(
        dir.path().join("short.yaml"),
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: nobody}
spec:
  selector: {matchLabels: {app: nobody}}
  url: file:///plugins/x.wasm
",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("typo.yaml"),
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - rout: [{destination: {host: reviews}}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: plaintext}
spec:
  url: http://modules.example/x.wasm
",
    )
    .unwrap();
    let out = wasmesh(&["analyze", dir.path().to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(79), "{t}");
    assert!(
        t.contains("typo.yaml") && t.contains("spec.http[0].rout"),
        "{t}"
    );
    assert!(
        t.contains("WSM0007") && t.contains("does not expand"),
        "{t}"
    );
    assert!(
        t.contains("WSM0008") && t.contains("WasmPlugin nobody"),
        "{t}"
    );
    // A module over plaintext needs a digest; over https:// it may go without.
    assert!(
        t.contains("WasmPlugin plaintext") && t.contains("spec.sha256"),
        "{t}"
    );

    let out = wasmesh(&["analyze", dir.path().to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(79));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert!(
        codes.contains(&"IST0106") && codes.contains(&"WSM0008"),
        "{json}"
    );
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .all(|d| d["level"].is_string())
    );
}

/// A control-plane server in this process, on `dir`.
fn control_plane(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> String {
    let plugins = PluginModules {
        router: PluginModule::new(ROUTER),
        fault: PluginModule::new(FAULT),
        mirror: PluginModule::new(MIRROR),
        circuit_breaker: PluginModule::new(CIRCUIT_BREAKER),
        authz: PluginModule::new(AUTHZ),
    };
    rt.block_on(async {
        let source = DirectorySource::start(dir).unwrap();
        let mesh = Mesh::start(
            MeshOptions {
                translate: Options::default(),
                plugins,
                data_dir: None,
                grace: std::time::Duration::from_secs(15),
                images: Default::default(),
            },
            source.rx.clone(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(async move {
            let _source = source;
            Services::new(mesh)
                .router()
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        address
    })
}

#[test]
fn proxy_status_and_proxy_config_show_what_proxies_were_sent_and_said() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("service.yaml"), SERVICE).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let address = control_plane(&rt, dir.path());

    // A proxy stream: Hello, the snapshot, an ACK; a second one that NACKs.
    let _streams = rt.block_on(async {
        let mut client =
            api::mesh_config_client::MeshConfigClient::connect(format!("http://{address}"))
                .await
                .unwrap();
        let mut streams = Vec::new();
        for (name, error) in [("good", ""), ("picky", "listeners[0]: no thanks")] {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(api::ProxyMessage {
                kind: Some(api::proxy_message::Kind::Hello(api::Hello {
                    node: Some(api::Node {
                        name: name.into(),
                        namespace: "default".into(),
                        outbound_address: "127.0.0.1:15001".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
            let mut snapshots = client
                .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            // The trust bundle comes first; then the snapshot.
            let s = loop {
                let m = snapshots.message().await.unwrap().unwrap();
                if let Some(s) = m.into_snapshot() {
                    break s;
                }
            };
            // The outbound routes are in the namespace's shared part; the outbound
            // listener's address is the proxy's own.
            assert!(s.bootstrap_json.contains("127.0.0.1:15001"));
            let shared = client
                .get_shared(api::SharedRequest {
                    sha256: s.shared.clone().expect("a shared part").sha256,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(
                shared
                    .bootstrap_json
                    .contains("reviews.default.svc.cluster.local")
            );
            // Every plugin of the mesh's own, though with a service and no policy only the
            // router runs: the sidecar compiles the others ahead of need.
            assert_eq!(s.modules.len(), 5, "the mesh's five plugin modules");
            tx.send(api::ProxyMessage {
                kind: Some(api::proxy_message::Kind::Ack(api::Ack {
                    version: s.version,
                    nonce: s.nonce,
                    error: error.into(),
                })),
            })
            .await
            .unwrap();
            streams.push((tx, snapshots));
        }
        streams
    });

    // The ACK and the NACK are recorded as the streams deliver them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let out = wasmesh(&["proxy-status", "--control-plane", &address]);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        if t.contains("good.default") && t.contains("SYNCED") && t.contains("NACKED") {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "{t}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        status.contains("picky.default NACKED: listeners[0]: no thanks"),
        "{status}"
    );

    let out = wasmesh(&["proxy-config", "good", "--control-plane", &address]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("LISTENERS") && t.contains("127.0.0.1:15001"),
        "{t}"
    );
    // The service has no policy: of the traffic plugins, the router alone.
    assert!(
        t.lines()
            .any(|l| l.contains("127.0.0.1:15001") && l.trim_end().ends_with("router")),
        "{t}"
    );
    assert!(
        t.contains("outbound|9080||reviews.default.svc.cluster.local"),
        "{t}"
    );

    let out = wasmesh(&["proxy-config", "nobody", "--control-plane", &address]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no proxy nobody.default"),
        "{}",
        text(&out)
    );
    let out = wasmesh(&["proxy-status", "--control-plane", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot reach the control plane"),
        "{}",
        text(&out)
    );
}
