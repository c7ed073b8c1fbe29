//! A mesh of real processes on loopback: the `wasmesh-controlplane` binary on a directory of
//! manifests, and `wasmesh-proxy` sidecars it configures.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use wasmesh_api as api;

/// The control plane's binary, next to the proxy's (`cargo nextest run --workspace` builds
/// both; a narrower `cargo test` builds it here).
pub fn controlplane_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    let proxy = PathBuf::from(env!("CARGO_BIN_EXE_wasmesh-proxy"));
    let bin = proxy.with_file_name("wasmesh-controlplane");
    BUILD.call_once(|| {
        if bin.exists() {
            return;
        }
        let profile = proxy
            .parent()
            .and_then(Path::file_name)
            .and_then(|p| p.to_str())
            .unwrap_or("debug");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "wasmesh-kube",
            "--bin",
            "wasmesh-controlplane",
        ]);
        if profile != "debug" {
            cmd.args(["--profile", profile]);
        }
        let status = cmd
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building wasmesh-controlplane failed");
    });
    bin
}

/// The `wasmesh` CLI's binary, beside the proxy's (`cargo build --workspace --bins`).
pub fn wasmesh_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wasmesh-proxy")).with_file_name("wasmesh")
}

/// A cache directory every test's sidecars share: modules are compiled once per test run
/// (writes are atomic renames), not by every sidecar of every test.
pub fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("sidecar-cache")
}

/// The directory of the four traffic plugins' modules.
pub fn plugins_dir() -> PathBuf {
    Path::new(wasmesh_artifacts::ROUTER)
        .parent()
        .expect("a directory")
        .to_owned()
}

/// A child process whose stderr lines are kept (and shown when a test fails).
pub struct Process {
    child: Child,
    pub name: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command) -> Process {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("WASMESH_LOG", "info")
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                keep.lock().unwrap().push(line);
            }
        });
        Process {
            child,
            name: name.to_owned(),
            lines,
        }
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no log line with {needle:?} within {timeout:?}; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `key=value` of a log line.
pub fn field(line: &str, key: &str) -> String {
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        + key.len()
        + 1;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

pub struct ControlPlane {
    pub process: Process,
    pub address: String,
}

impl ControlPlane {
    /// Starts on `manifests`, keeping registrations in `data`; `address` may be port 0.
    pub fn start(manifests: &Path, data: &Path, address: &str) -> ControlPlane {
        Self::start_with(manifests, data, address, &[])
    }

    /// As [`start`](Self::start), with more flags.
    pub fn start_with(
        manifests: &Path,
        data: &Path,
        address: &str,
        flags: &[&std::ffi::OsStr],
    ) -> ControlPlane {
        let mut cmd = Command::new(controlplane_bin());
        cmd.arg("--manifests")
            .arg(manifests)
            .arg("--plugins")
            .arg(plugins_dir())
            .arg("--data-dir")
            .arg(data)
            .args(["--address", address])
            .args(flags);
        let process = Process::spawn("controlplane", cmd);
        let line = process.wait_for_line("control plane listening", Duration::from_secs(30));
        let address = field(&line, "address");
        ControlPlane { process, address }
    }

    pub async fn admin(
        &self,
    ) -> api::mesh_admin_client::MeshAdminClient<tonic::transport::Channel> {
        api::mesh_admin_client::MeshAdminClient::connect(format!("http://{}", self.address))
            .await
            .expect("the control plane answers")
    }

    pub async fn status(&self) -> api::ProxyStatusReply {
        self.admin()
            .await
            .proxy_status(api::ProxyStatusRequest {})
            .await
            .expect("proxy status")
            .into_inner()
    }

    /// Waits for a diagnostic that contains `needle`; returns it.
    pub async fn wait_diagnostic(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status().await;
            if let Some(d) = status.diagnostics.iter().find(|d| d.contains(needle)) {
                return d.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{needle} not reported: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `n` proxies are connected and all SYNCED; returns the status.
    pub async fn wait_synced(&self, n: usize, timeout: Duration) -> api::ProxyStatusReply {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await;
            let synced = status
                .proxies
                .iter()
                .filter(|p| p.state == "SYNCED")
                .count();
            if status.proxies.len() == n && synced == n {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "not all {n} proxies SYNCED within {timeout:?}: {:#?}\ncontrol plane log:\n{}",
                status.proxies,
                self.process.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub struct Sidecar {
    pub process: Process,
    pub outbound: SocketAddr,
    pub inbound: Option<SocketAddr>,
}

/// How a sidecar is started.
pub struct SidecarSpec<'a> {
    pub name: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    /// The workload's port and where the workload listens.
    pub app: Option<(u16, SocketAddr)>,
    pub cache: &'a Path,
    /// The outbound listen address (port 0 picks one).
    pub outbound: &'a str,
}

impl Sidecar {
    /// Starts the process; [`Sidecar::ready`] waits for it to serve.
    pub fn spawn(control_plane: &str, spec: &SidecarSpec) -> Process {
        Process::spawn(spec.name, Sidecar::command(control_plane, spec))
    }

    /// The command [`Sidecar::spawn`] runs, for a test to add to.
    pub fn command(control_plane: &str, spec: &SidecarSpec) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmesh-proxy"));
        cmd.args(["--control-plane", control_plane, "--node", spec.name])
            .args(["--outbound", spec.outbound, "--workers", "1"])
            .arg("--cache-dir")
            .arg(spec.cache);
        for (k, v) in spec.labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        if let Some((port, app)) = spec.app {
            cmd.arg("--inbound").arg(format!("{port}={app}"));
        }
        cmd
    }

    /// Waits until the process serves its first snapshot.
    pub fn ready(process: Process) -> Sidecar {
        process.wait_for_line("sidecar started", Duration::from_secs(120));
        let outbound = field(
            &process.wait_for_line("listener=outbound", Duration::from_secs(1)),
            "address",
        )
        .parse()
        .unwrap();
        let inbound = process
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("listener=inbound|"))
            .map(|l| field(l, "address").parse().unwrap());
        Sidecar {
            process,
            outbound,
            inbound,
        }
    }

    pub fn start(control_plane: &str, spec: &SidecarSpec) -> Sidecar {
        Sidecar::ready(Sidecar::spawn(control_plane, spec))
    }
}

/// Writes a file the way editors do: a new file renamed over the old one.
pub fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// ServiceEntries for `apps` (each `name` on `port`, selecting workloads labelled `app: name`),
/// in namespace `default`.
pub fn services(apps: &[(&str, u16)]) -> String {
    apps.iter()
        .map(|(app, port)| {
            format!(
                "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {app}
spec:
  hosts: [{app}.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {{number: {port}, name: http, protocol: HTTP}}
  resolution: STATIC
  workloadSelector:
    labels: {{app: {app}}}
"
            )
        })
        .collect()
}

/// An echo workload `name` on `port` behind its own sidecar (labels `app: <app>`, the shared
/// module cache): the workload, and the sidecar whose inbound listener fronts it.
pub async fn echo_workload(
    control_plane: &str,
    name: &'static str,
    app: &str,
    port: u16,
) -> (super::Upstream, Sidecar) {
    let upstream = super::Upstream::echo(name).await;
    let sidecar = Sidecar::start(
        control_plane,
        &SidecarSpec {
            name,
            labels: &[("app", app)],
            app: Some((port, upstream.addr)),
            cache: &shared_cache(),
            outbound: "127.0.0.1:0",
        },
    );
    (upstream, sidecar)
}

/// A WasmPlugin `stamp` for the workloads `app: echo`: its module at `url`, its config
/// `config`, and `extra` spec lines (indented two spaces).
pub fn stamp_plugin(url: &str, config: &str, extra: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: stamp
spec:
  selector:
    matchLabels: {{app: echo}}
  url: {url}
  pluginConfig: {config}
{extra}"
    )
}

/// The `x-plugin-config` the headers test filter stamps on a request through `inbound` (to an
/// echo workload); null without the filter.
pub async fn stamp(inbound: SocketAddr) -> serde_json::Value {
    super::get(inbound, "/").await.json()["headers"]["x-plugin-config"].clone()
}

/// Waits until requests through `inbound` are stamped `want`.
pub async fn wait_stamp(cp: &ControlPlane, inbound: SocketAddr, want: serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = stamp(inbound).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stamp {got} never became {want}: {:#?}\n{}",
            cp.status().await,
            cp.process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
