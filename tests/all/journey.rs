//! The filter author's journey, as the README gives it: `wasmesh plugin new` → edit →
//! `cargo test` (the harness) → `wasmesh plugin build` → `wasmesh plugin push` → a WasmPlugin
//! with `selector` and `url: oci://...` dropped into the control plane's directory → the
//! selected workloads' sidecars run it, others do not → a new tag rolled out under load with
//! every request handled by one version or the other → the WasmPlugin deleted, and the filter
//! gone. Slow (the crate's tests compile the host): their build directory is kept under the
//! workspace's `target/` so that reruns are quick.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;

use crate::support::registry::Registry;
use crate::support::sidecars::{ControlPlane, echo_workload, services, wasmesh_bin, write};
use crate::support::{empty, h1_client};

const HELLO: u16 = 9080;
const OTHER: u16 = 9081;

/// Runs `program` in `dir` with the outer cargo's settings removed; its stdout.
fn run(dir: &Path, program: &Path, args: &[&str], target_dir: Option<&Path>) -> String {
    let mut command = Command::new(program);
    command.args(args).current_dir(dir);
    // The outer cargo's settings must not leak into the crate's own build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || key == "RUSTFLAGS" {
            command.env_remove(&key);
        }
    }
    if let Some(target) = target_dir {
        command.env("CARGO_TARGET_DIR", target);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{}\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn cargo() -> PathBuf {
    PathBuf::from(env!("CARGO"))
}

/// A one-shot-per-connection HTTP server that reports the request heads it gets.
fn service() -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            while reader.read_line(&mut head).is_ok_and(|n| n > 2) {}
            let _ = reader.get_mut().write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nhi\n",
            );
            let _ = tx.send(head.to_ascii_lowercase());
        }
    });
    (addr, rx)
}

fn get_blocking(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The version the filter stamped on a response through `inbound` (`None`: no filter).
async fn version(inbound: SocketAddr) -> Option<String> {
    let req = Request::get(format!("http://{inbound}/"))
        .body(empty())
        .unwrap();
    let response = h1_client().request(req).await.expect("a response");
    assert_eq!(response.status(), 200);
    response
        .headers()
        .get("x-filter-version")
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn wait_version(cp: &ControlPlane, inbound: SocketAddr, want: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = version(inbound).await;
        if got.as_deref() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "version {got:?} never became {want:?}: {:#?}\n{}",
            cp.status().await,
            cp.process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The author's edit: the filter stamps `version` on responses.
fn stamp_version(dir: &Path, version: &str) {
    let lib = dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let key = "resp.set_header(\"x-filter-version\", Some(\"";
    let edited = match source.find(key) {
        Some(at) => {
            let at = at + key.len();
            let end = at + source[at..].find('"').unwrap();
            format!("{}{version}{}", &source[..at], &source[end..])
        }
        None => {
            let stamp = "        resp.set_header(\"x-filtered-by\"";
            let at = source.find(stamp).expect("the template's response stamp");
            let at = at + source[at..].find('\n').unwrap() + 1;
            format!(
                "{}        {key}{version}\"))?;\n{}",
                &source[..at],
                &source[at..]
            )
        }
    };
    std::fs::write(&lib, edited).unwrap();
}

fn wasm_plugin(url: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: hello-filter
spec:
  selector:
    matchLabels: {{app: hello}}
  url: {url}
  pluginConfig: {{header: x-hello, value: world}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_plugin_goes_from_plugin_new_to_a_rollout_through_a_registry() {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("hello-filter");
    let wasmesh = wasmesh_bin();
    run(
        parent.path(),
        &wasmesh,
        &["plugin", "new", "hello-filter"],
        None,
    );

    // Edit, then the README's commands: test it on the host, build it.
    stamp_version(&dir, "1");
    // Its own target directory, not the workspace's: the crate resolves its dependencies'
    // features alone (smallvec, hashbrown, anyhow, log, ... differ from the workspace's union),
    // so cargo could reuse none of the workspace's wasmtime and cranelift builds anyway.
    let tests_target = workspace.join("target/template-test");
    let built = run(&dir, &wasmesh, &["plugin", "build"], None);
    assert!(built.contains("sha256"), "{built}");
    run(&dir, &cargo(), &["test"], Some(&tests_target));

    // It runs in the proxy on its proxy.yaml, with free ports and a real service.
    let (service, heads) = service();
    let config = std::fs::read_to_string(dir.join("proxy.yaml"))
        .unwrap()
        .replace("127.0.0.1:10000", "127.0.0.1:0")
        .replace("127.0.0.1:15000", "127.0.0.1:0")
        .replace("127.0.0.1:8080", &service.to_string());
    std::fs::write(dir.join("proxy.yaml"), config).unwrap();
    let proxy = wasmesh_proxy::Proxy::start_from_file(&dir.join("proxy.yaml"))
        .expect("the proxy starts with the new filter");
    let ingress = proxy.listener_addr("ingress").unwrap();
    let health = tokio::task::spawn_blocking(move || get_blocking(ingress, "/hello-filter/health"))
        .await
        .unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok\n"), "{health}");
    assert!(
        heads.try_recv().is_err(),
        "the filter answers its health check itself"
    );
    let response = tokio::task::spawn_blocking(move || get_blocking(ingress, "/"))
        .await
        .unwrap()
        .to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(
        response.contains("x-filtered-by: hello-filter"),
        "{response}"
    );
    let head = heads.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(head.contains("x-hello: world"), "{head}");
    proxy.shutdown();

    // Pushed to a registry, and deployed to the mesh with a WasmPlugin.
    let registry = tokio::task::spawn_blocking(Registry::plain).await.unwrap();
    let push = |tag: &str| {
        let reference = registry.reference(&format!("hello-filter:{tag}"));
        run(
            &dir,
            &wasmesh,
            &["plugin", "push", &reference, "--plain-http"],
            None,
        );
        format!("oci://{reference}")
    };
    let v1 = push("v1");
    let manifests = parent.path().join("mesh");
    std::fs::create_dir(&manifests).unwrap();
    write(
        &manifests,
        "services.yaml",
        &services(&[("hello", HELLO), ("other", OTHER)]),
    );
    let host = registry.host();
    let cp = ControlPlane::start_with(
        &manifests,
        &parent.path().join("data"),
        "127.0.0.1:0",
        &["--insecure-registry".as_ref(), host.as_ref()],
    );
    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for (name, app, port) in [
        ("hello-v1", "hello", HELLO),
        ("hello-v2", "hello", HELLO),
        ("other-v1", "other", OTHER),
    ] {
        let (upstream, sidecar) = echo_workload(&cp.address, name, app, port).await;
        apps.push(upstream);
        sidecars.push(sidecar);
    }
    let inbound: Vec<SocketAddr> = sidecars.iter().map(|s| s.inbound.unwrap()).collect();
    write(&manifests, "hello-filter.yaml", &wasm_plugin(&v1));
    wait_version(&cp, inbound[0], Some("1")).await;
    wait_version(&cp, inbound[1], Some("1")).await;
    assert_eq!(version(inbound[2]).await, None, "not selected");

    // Version 2, pushed as a new tag and rolled out while four clients send.
    stamp_version(&dir, "2");
    let v2 = push("v2");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, to) = (stop.clone(), inbound[i % 2]);
            tokio::spawn(async move {
                let client = h1_client();
                let (mut seen, mut failed) = (std::collections::BTreeMap::new(), Vec::new());
                while !stop.load(Relaxed) {
                    let req = Request::get(format!("http://{to}/")).body(empty()).unwrap();
                    match client.request(req).await {
                        Ok(r) if r.status() == 200 => {
                            let v = r.headers().get("x-filter-version").cloned();
                            let _ = r.into_body().collect().await;
                            *seen
                                .entry(v.map(|v| v.to_str().unwrap().to_owned()))
                                .or_insert(0usize) += 1;
                        }
                        Ok(r) => failed.push(format!("HTTP {}", r.status())),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (seen, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await; // traffic before the change
    write(&manifests, "hello-filter.yaml", &wasm_plugin(&v2));
    wait_version(&cp, inbound[0], Some("2")).await;
    wait_version(&cp, inbound[1], Some("2")).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // and after it
    stop.store(true, Relaxed);
    let mut total = std::collections::BTreeMap::new();
    for client in clients {
        let (seen, failed) = client.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        for (v, n) in seen {
            *total.entry(v).or_insert(0) += n;
        }
    }
    assert_eq!(
        total.keys().cloned().collect::<Vec<_>>(),
        [Some("1".to_owned()), Some("2".to_owned())],
        "every request by version 1 or 2, never neither: {total:?}"
    );
    assert_eq!(version(inbound[2]).await, None, "not selected");

    // Deleted: gone from every proxy.
    std::fs::remove_file(manifests.join("hello-filter.yaml")).unwrap();
    for to in &inbound {
        wait_version(&cp, *to, None).await;
    }
    let status = cp.wait_synced(3, Duration::from_secs(10)).await;
    assert!(status.diagnostics.is_empty(), "{:#?}", status.diagnostics);
}
