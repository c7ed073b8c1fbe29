//! Machinery shared by wasmesh's benchmarks: peers (nginx), load generators (wrk, oha) and
//! their results.

pub mod load;
pub mod peers;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free loopback port (benchmarks give ports to programs that cannot bind port 0 and report).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Waits until something accepts connections on `addr`.
pub fn wait_for_port(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The workspace root (benchmarks run with the package as working directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ sits in the workspace")
        .to_owned()
}

/// Builds the release `wasmesh-proxy` binary and returns its path.
pub fn build_proxy() -> anyhow::Result<PathBuf> {
    build_release("wasmesh-proxy")
}

/// Builds the release binary `name` (of the package of the same name) and returns its path.
pub fn build_release(name: &str) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    // The control plane's binary is in the package with its Kubernetes parts.
    let package = match name {
        "wasmesh-controlplane" => "wasmesh-kube",
        other => other,
    };
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            package,
            "--bin",
            name,
        ])
        .current_dir(&root)
        .status()
        .context("run cargo build")?;
    if !status.success() {
        bail!("building {name} failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join(name))
}

/// The directory of the mesh's plugin modules (built by `wasmesh-artifacts`).
pub fn plugins_dir() -> PathBuf {
    std::path::Path::new(wasmesh_artifacts::ROUTER)
        .parent()
        .expect("the plugins' directory")
        .to_owned()
}

/// Finds a program on PATH or in /usr/sbin (where Debian puts nginx).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A started `wasmesh-controlplane` on `manifests`, listening on a free loopback port.
pub struct ControlPlane {
    pub child: std::process::Child,
    /// `ip:port`, as it logged it.
    pub address: String,
    /// The rest of its log (stderr), for the caller to show or drain.
    pub lines: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
}

/// Starts the control plane binary on `manifests` with the plugins of `plugins`, keeping its
/// data in `data` and logging with the filter `log`; returns once it listens.
pub fn start_controlplane(
    binary: &std::path::Path,
    manifests: &std::path::Path,
    plugins: &std::path::Path,
    data: &std::path::Path,
    log: &str,
) -> anyhow::Result<ControlPlane> {
    start_controlplane_with(binary, manifests, plugins, data, log, &[])
}

/// [`start_controlplane`] with more flags.
pub fn start_controlplane_with(
    binary: &std::path::Path,
    manifests: &std::path::Path,
    plugins: &std::path::Path,
    data: &std::path::Path,
    log: &str,
    flags: &[&str],
) -> anyhow::Result<ControlPlane> {
    use std::io::BufRead;
    let mut child = Command::new(binary)
        .arg("--manifests")
        .arg(manifests)
        .arg("--plugins")
        .arg(plugins)
        .arg("--data-dir")
        .arg(data)
        .args(["--address", "127.0.0.1:0", "--log", log])
        .args(flags)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("start wasmesh-controlplane")?;
    let mut lines = std::io::BufReader::new(child.stderr.take().context("stderr")?).lines();
    let address = loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            bail!("the control plane exited before listening");
        };
        let line = line?;
        if let Some(a) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .filter(|_| line.contains("control plane listening"))
        {
            break a.to_owned();
        }
    };
    Ok(ControlPlane {
        child,
        address,
        lines,
    })
}

pub async fn status(address: &str) -> anyhow::Result<wasmesh_api::ProxyStatusReply> {
    let mut admin =
        wasmesh_api::mesh_admin_client::MeshAdminClient::connect(format!("http://{address}"))
            .await?;
    Ok(admin
        .proxy_status(wasmesh_api::ProxyStatusRequest {})
        .await?
        .into_inner())
}

/// Waits until the snapshots come from a generation after `before` and all `n` proxies ACKed.
pub async fn converged(address: &str, n: usize, before: u64) -> anyhow::Result<u64> {
    let mut admin =
        wasmesh_api::mesh_admin_client::MeshAdminClient::connect(format!("http://{address}"))
            .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = admin
            .proxy_status(wasmesh_api::ProxyStatusRequest {})
            .await?
            .into_inner();
        let generation: u64 = s.sources_version.parse().unwrap_or(0);
        let synced = s.proxies.iter().filter(|p| p.state == "SYNCED").count();
        if generation > before && s.proxies.len() == n && synced == n {
            return Ok(generation);
        }
        if let Some(p) = s.proxies.iter().find(|p| p.state == "NACKED") {
            bail!("{} NACKed: {}", p.id, p.error);
        }
        if Instant::now() > deadline {
            bail!("{synced} of {n} proxies synced after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
