//! `wasmesh dashboard`, run as the binary against a control-plane server in this process:
//! the URL comes from the control plane, and is opened with `xdg-open` only where there is a
//! display.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmesh_controlplane::dashboard::{Dashboard, DashboardOptions};
use wasmesh_controlplane::mesh::{Mesh, MeshOptions};
use wasmesh_controlplane::server::Services;
use wasmesh_controlplane::source::SourceState;
use wasmesh_controlplane::{Options, PluginModule, PluginModules};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `wasmesh dashboard ARGS` without a display unless `display`, with `path` first on PATH.
fn dashboard(args: &[&str], display: bool, path: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmesh"));
    cmd.arg("dashboard")
        .args(args)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    if display {
        cmd.env("DISPLAY", ":99");
    }
    if let Some(dir) = path {
        let paths = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(
            std::iter::once(dir.to_owned()).chain(std::env::split_paths(&paths)),
        )
        .unwrap();
        cmd.env("PATH", joined);
    }
    cmd.output().expect("run wasmesh")
}

/// A control plane in this process (an empty mesh, its plugin modules stand-ins in `dir`),
/// serving a dashboard if `with_dashboard`: its gRPC address and the dashboard's.
fn control_plane(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    with_dashboard: bool,
) -> (String, Option<String>) {
    let module = |name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
        PluginModule::new(path.display().to_string())
    };
    let plugins = PluginModules {
        router: module("router.wasm"),
        fault: module("fault.wasm"),
        mirror: module("mirror.wasm"),
        circuit_breaker: module("circuit_breaker.wasm"),
        authz: module("authz.wasm"),
    };
    rt.block_on(async {
        let (_, source) = tokio::sync::watch::channel(Arc::new(SourceState::default()));
        let mesh = Mesh::start(
            MeshOptions {
                translate: Options::default(),
                plugins,
                data_dir: None,
                grace: Duration::from_secs(15),
                images: Default::default(),
            },
            source,
        )
        .unwrap();
        let mut services = Services::new(mesh.clone());
        let mut page = None;
        if with_dashboard {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let dashboard = Dashboard::start(mesh, DashboardOptions::default());
            tokio::spawn(dashboard.serve(listener));
            services = services.with_dashboard(address);
            page = Some(format!("http://{address}/"));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(services.router().serve_with_incoming(incoming));
        (address, page)
    })
}

#[test]
fn prints_the_url_the_control_plane_gives_and_opens_it_only_with_a_display() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (address, page) = control_plane(&rt, dir.path(), true);
    let page = page.unwrap();

    // No display: the URL, and a word on opening it.
    let out = dashboard(&["--control-plane", &address], false, None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{page}\n"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("open the URL in a browser"),
        "{}",
        text(&out)
    );

    // A display and an xdg-open: it is handed the URL (unless --no-open).
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let opened = dir.path().join("opened");
    let script = bin.join("xdg-open");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > {}\n", opened.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dashboard(
        &["--control-plane", &address, "--no-open"],
        true,
        Some(&bin),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{page}\n"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!opened.exists(), "--no-open opened it");
    let out = dashboard(&["--control-plane", &address], true, Some(&bin));
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&opened).unwrap_or_default() != page {
        assert!(
            Instant::now() < deadline,
            "xdg-open was not run with {page}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The page is there.
    let body = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let authority = page.trim_start_matches("http://").trim_end_matches('/');
        let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    });
    assert!(
        body.starts_with("HTTP/1.1 200") && body.contains("service graph"),
        "{body}"
    );

    // --address: taken as it is, the control plane not asked.
    let out = dashboard(
        &[
            "--control-plane",
            "127.0.0.1:1",
            "--address",
            "10.0.0.1:15014",
            "--no-open",
        ],
        false,
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "http://10.0.0.1:15014/\n"
    );
}

#[test]
fn a_control_plane_without_a_dashboard_says_how_to_serve_one() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (address, _) = control_plane(&rt, dir.path(), false);
    let out = dashboard(&["--control-plane", &address, "--no-open"], false, None);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("serves no dashboard: start it with --dashboard"),
        "{}",
        text(&out)
    );
}
