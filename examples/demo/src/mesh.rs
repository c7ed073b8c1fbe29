//! The demo's mesh, all real processes: `wasmesh-controlplane` on a directory of Istio
//! manifests, and one `wasmesh-proxy` sidecar per workload (plus one for the demo's own
//! client, as Istio's tasks use a `sleep` pod). Config changes are file edits in the
//! directory; a change is applied once the control plane has recomputed from it and every
//! proxy has ACKed its snapshot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use wasmesh_api as api;

use crate::services::Workload;

/// A reply as the demo's clients see it.
pub struct Reply {
    pub status: u16,
    pub served_by: String,
    /// The workloads the request went through (`productpage-v1 > reviews-v2 > ratings-v1`).
    pub chain: String,
    pub elapsed: Duration,
}

/// A process whose log is watched for the lines the demo needs, and shown on errors.
struct Process {
    name: String,
    child: Child,
}

impl Process {
    /// Starts `cmd` and reads its log until `ready` appears; returns the lines read.
    async fn start(
        name: &str,
        mut cmd: Command,
        ready: &str,
    ) -> anyhow::Result<(Process, Vec<String>)> {
        let mut child = cmd
            .env("WASMESH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
                .await
                .with_context(|| format!("{name} did not start in 120 s"))??;
            let Some(line) = line else {
                bail!("{name} exited:\n{}", seen.join("\n"));
            };
            let done = line.contains(ready);
            seen.push(line);
            if done {
                break;
            }
        }
        // Keep draining its log; show warnings and errors.
        let who = name.to_owned();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(" WARN ") || line.contains("ERROR") {
                    eprintln!("  [{who}] {line}");
                }
            }
        });
        Ok((
            Process {
                name: name.to_owned(),
                child,
            },
            seen,
        ))
    }

    /// SIGTERM, as an orchestrator stops a pod; waits for the exit.
    async fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("pid")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .with_context(|| format!("{} did not stop", self.name))?
            .map_err(Into::into)
    }
}

/// `address=` of the log line containing `needle`.
fn address(lines: &[String], needle: &str) -> Option<SocketAddr> {
    lines.iter().filter(|l| l.contains(needle)).find_map(|l| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .and_then(|a| a.parse().ok())
    })
}

pub struct Mesh {
    pub dir: PathBuf,
    pub control_plane: String,
    /// The control plane's service graph page.
    pub dashboard: SocketAddr,
    controlplane: Process,
    sidecars: Vec<Process>,
    /// The demo client's sidecar's outbound listener.
    pub client_outbound: SocketAddr,
    /// Every sidecar's admin API.
    admins: Vec<SocketAddr>,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// Changes applied, and how long each took to reach every proxy.
    pub convergence: Vec<Duration>,
}

impl Mesh {
    /// Starts the control plane on `dir` and a sidecar per workload.
    pub async fn start(
        dir: &Path,
        plugins: &Path,
        workloads: &[&Workload],
    ) -> anyhow::Result<Mesh> {
        let bin = |name: &str| -> anyhow::Result<PathBuf> {
            let path = std::env::current_exe()?.with_file_name(name);
            if !path.exists() {
                bail!(
                    "{} not found: build it with `cargo build --release -p {name}`",
                    path.display()
                );
            }
            Ok(path)
        };
        let data = dir.join(".data");
        let mut cmd = Command::new(bin("wasmesh-controlplane")?);
        cmd.arg("--manifests")
            .arg(dir)
            .arg("--plugins")
            .arg(plugins)
            .arg("--data-dir")
            .arg(&data)
            .args(["--address", "127.0.0.1:0"])
            .args(["--dashboard", "127.0.0.1:0"]);
        let (controlplane, lines) =
            Process::start("controlplane", cmd, "control plane listening").await?;
        let control_plane = address(&lines, "control plane listening")
            .context("the control plane's address")?
            .to_string();
        let dashboard =
            address(&lines, "dashboard listening").context("the dashboard's address")?;

        let proxy = bin("wasmesh-proxy")?;
        let cache = dir.join(".cache");
        let sidecar = |name: &str, labels: &[(&str, &str)]| {
            let mut cmd = Command::new(&proxy);
            cmd.args(["--control-plane", &control_plane, "--node", name])
                .args(["--outbound", "127.0.0.1:0", "--workers", "1"])
                .args(["--admin", "127.0.0.1:0"])
                .arg("--cache-dir")
                .arg(&cache);
            for (k, v) in labels {
                cmd.arg("--label").arg(format!("{k}={v}"));
            }
            cmd
        };
        // The client's sidecar first: its modules, compiled once, are on disk for the others.
        let (client_proxy, lines) = Process::start(
            "sleep",
            {
                let mut cmd = sidecar("sleep", &[("app", "sleep")]);
                cmd.args(["--service-account", "sleep"]);
                cmd
            },
            "sidecar started",
        )
        .await?;
        let client_outbound = address(&lines, "listener=outbound").context("outbound")?;
        let mut admins = vec![address(&lines, "admin listening").context("admin")?];

        let starts = workloads.iter().map(|w| {
            let mut cmd = sidecar(w.name, &[("app", w.app), ("version", w.version)]);
            cmd.arg("--inbound").arg(format!("{}={}", w.port, w.addr));
            Process::start(w.name, cmd, "sidecar started")
        });
        let mut sidecars = vec![client_proxy];
        for (w, started) in workloads
            .iter()
            .zip(futures_util::future::join_all(starts).await)
        {
            let (p, lines) = started?;
            let outbound = address(&lines, "listener=outbound").context("outbound")?;
            let _ = w.outbound.set(outbound);
            admins.push(address(&lines, "admin listening").context("admin")?);
            sidecars.push(p);
        }
        let mesh = Mesh {
            dir: dir.to_owned(),
            control_plane,
            dashboard,
            controlplane,
            sidecars,
            client_outbound,
            admins,
            client: Client::builder(TokioExecutor::new()).build_http(),
            convergence: Vec::new(),
        };
        mesh.wait_applied(0).await?;
        Ok(mesh)
    }

    pub fn proxies(&self) -> usize {
        self.sidecars.len()
    }

    async fn admin(
        &self,
    ) -> anyhow::Result<api::mesh_admin_client::MeshAdminClient<tonic::transport::Channel>> {
        Ok(api::mesh_admin_client::MeshAdminClient::connect(format!(
            "http://{}",
            self.control_plane
        ))
        .await?)
    }

    async fn generation(&self) -> anyhow::Result<u64> {
        let status = self
            .admin()
            .await?
            .proxy_status(api::ProxyStatusRequest {})
            .await?
            .into_inner();
        Ok(status.sources_version.parse().unwrap_or(0))
    }

    /// Waits until the snapshots were computed from a generation after `before` and every
    /// proxy has ACKed its own.
    async fn wait_applied(&self, before: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self
                .admin()
                .await?
                .proxy_status(api::ProxyStatusRequest {})
                .await?
                .into_inner();
            let generation: u64 = status.sources_version.parse().unwrap_or(0);
            let synced = status
                .proxies
                .iter()
                .filter(|p| p.state == "SYNCED")
                .count();
            if generation > before
                && status.proxies.len() == self.proxies()
                && synced == self.proxies()
            {
                return Ok(());
            }
            if let Some(p) = status.proxies.iter().find(|p| p.state == "NACKED") {
                bail!("{} rejected its config: {}", p.id, p.error);
            }
            if Instant::now() > deadline {
                bail!(
                    "the change did not reach every proxy in 30 s: {:?}",
                    status.proxies
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Writes `files` (name, text; empty text removes the file) into the manifests directory,
    /// as `kubectl apply` of a task's manifests, and waits until every proxy has it.
    pub async fn apply(&mut self, files: &[(&str, &str)]) -> anyhow::Result<Duration> {
        let before = self.generation().await?;
        let started = Instant::now();
        for (name, text) in files {
            let path = self.dir.join(name);
            if text.is_empty() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            // Replaced whole (write, then rename): the watch never sees half a file.
            let tmp = self.dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)?;
        }
        self.wait_applied(before).await?;
        let took = started.elapsed();
        self.convergence.push(took);
        Ok(took)
    }

    /// A GET from the demo's client, through its sidecar, to `host`.
    pub async fn get(&self, host: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        get_with(&self.client, self.client_outbound, host, headers).await
    }

    /// The demo client's HTTP client, for tasks running beside [`Mesh::apply`].
    pub fn client(&self) -> Client<HttpConnector, Empty<Bytes>> {
        self.client.clone()
    }

    /// The sum, over every sidecar, of the Prometheus samples that start with `prefix`.
    pub async fn stat(&self, prefix: &str) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for admin in &self.admins {
            let req = Request::get(format!("http://{admin}/stats/prometheus")).body(Empty::new())?;
            let body = self
                .client
                .request(req)
                .await?
                .into_body()
                .collect()
                .await?;
            let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
            total += text
                .lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .fold(0.0, |a, b| a + b);
        }
        Ok(total)
    }

    /// Requests the sidecars' outbound listeners answered with a response flag.
    pub async fn flagged(&self, flag: &str) -> anyhow::Result<f64> {
        self.stat(&format!(
            "wasmesh_downstream_rq_flags_total{{listener=\"outbound\",response_flags=\"{flag}\"}}"
        ))
        .await
    }

    /// Drains every sidecar, then the control plane, with SIGTERM; the exits that failed.
    pub async fn stop(self) -> anyhow::Result<Vec<String>> {
        let mut failed = Vec::new();
        for p in self.sidecars.into_iter().chain([self.controlplane]) {
            let name = p.name.clone();
            let status = p.stop().await?;
            if !status.success() {
                failed.push(format!("{name}: {status}"));
            }
        }
        Ok(failed)
    }
}

/// A GET through the sidecar at `outbound` to `host`.
pub async fn get_with(
    client: &Client<HttpConnector, Empty<Bytes>>,
    outbound: SocketAddr,
    host: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let mut req = Request::get(format!("http://{outbound}/")).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let started = Instant::now();
    let response = client.request(req.body(Empty::new())?).await?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let served_by = header("x-served-by").unwrap_or_else(|| "the sidecar".into());
    let chain = header("x-chain").unwrap_or_else(|| served_by.clone());
    response.into_body().collect().await?;
    Ok(Reply {
        status,
        served_by,
        chain,
        elapsed: started.elapsed(),
    })
}
