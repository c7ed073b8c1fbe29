//! `wasmesh plugin new` makes a crate that builds, passes its own tests and runs in the proxy,
//! with the commands its README gives. Slow (the crate's tests compile the host): its build
//! directory is kept under the workspace's `target/` so that reruns are quick.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

fn run(dir: &Path, program: &str, args: &[&str], target_dir: Option<&Path>) {
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
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
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

fn get(addr: SocketAddr, path: &str) -> String {
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

#[test]
fn a_new_plugin_builds_tests_and_runs_in_the_proxy() {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("hello-filter");
    run(
        parent.path(),
        env!("CARGO_BIN_EXE_wasmesh"),
        &["plugin", "new", "hello-filter"],
        None,
    );

    // The README's commands: build the filter, then test it on the host.
    run(
        &dir,
        "cargo",
        &["build", "--target", "wasm32-wasip1", "--release"],
        None,
    );
    // Its own target directory, not the workspace's: the crate resolves its dependencies'
    // features alone (smallvec, hashbrown, anyhow, log, ... differ from the workspace's union),
    // so cargo could reuse none of the workspace's wasmtime and cranelift builds anyway.
    let tests_target = workspace.join("target/template-test");
    run(&dir, "cargo", &["test"], Some(&tests_target));

    // And run it in the proxy on its proxy.yaml, with free ports and a real service.
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

    let health = get(ingress, "/hello-filter/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok\n"), "{health}");
    assert!(
        heads.try_recv().is_err(),
        "the filter answers its health check itself"
    );

    let response = get(ingress, "/");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-filtered-by: hello-filter"),
        "{response}"
    );
    let head = heads.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(head.contains("x-hello: world"), "{head}");
    proxy.shutdown();
}
