//! The demo's mesh: Istio manifests translated by wasmesh-controlplane into a proxy config
//! file, the real `wasmesh-proxy` binary serving it, and config changes applied by rewriting the
//! file and asking the proxy to reload it (`POST /config_reload`), as a control plane would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncBufReadExt;
use wasmesh_controlplane::{Options, PluginModules, manifests, translate_loaded};

/// Translation options: the outbound listener and admin on free ports, the plugins from `dir`.
pub fn options(plugins: &Path) -> anyhow::Result<Options> {
    let modules = PluginModules::in_dir(plugins).map_err(|missing| {
        anyhow::anyhow!(
            "{} not found: build the plugins with `cargo build --release --target \
             wasm32-wasip1 -p plugin-router -p plugin-fault -p plugin-mirror \
             -p plugin-circuit-breaker`",
            missing.display()
        )
    })?;
    Ok(Options {
        admin_address: Some("127.0.0.1:0".into()),
        plugins: Some(modules),
        ..Options::default()
    })
}

/// The proxy config for `manifests`, as YAML; error diagnostics refuse it.
fn proxy_config(manifests_yaml: &str, options: &Options) -> anyhow::Result<String> {
    let translation = translate_loaded(&manifests::parse_str(manifests_yaml, None), options);
    let errors: Vec<String> = translation.errors().map(ToString::to_string).collect();
    if !errors.is_empty() {
        bail!("the manifests were refused:\n{}", errors.join("\n"));
    }
    let mut bootstrap = translation.bootstrap;
    bootstrap.workers = Some(2);
    Ok(serde_saphyr::to_string(&bootstrap)?)
}

/// A reply as the demo's clients see it.
pub struct Reply {
    pub status: u16,
    pub served_by: String,
    pub elapsed: Duration,
}

pub struct Mesh {
    proxy: tokio::process::Child,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    services: String,
    options: Options,
    /// Config changes applied.
    pub applied: AtomicUsize,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Mesh {
    /// Starts the proxy binary built next to this one, on the config for `services` + `policy`.
    pub async fn start(
        dir: &Path,
        services: &str,
        policy: &str,
        options: Options,
    ) -> anyhow::Result<Mesh> {
        let config_path = dir.join("proxy.yaml");
        std::fs::write(
            &config_path,
            proxy_config(&format!("{services}\n---\n{policy}"), &options)?,
        )?;
        let binary = std::env::current_exe()?.with_file_name("wasmesh-proxy");
        if !binary.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p wasmesh-proxy`",
                binary.display()
            );
        }
        let mut proxy = tokio::process::Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .env("WASMESH_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start wasmesh-proxy")?;
        let mut lines = tokio::io::BufReader::new(proxy.stderr.take().expect("piped")).lines();
        let (mut ingress, mut admin) = (None, None);
        while let Some(line) =
            tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await??
        {
            let address = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("address="))
                .and_then(|a| a.parse::<SocketAddr>().ok());
            if line.contains("admin listening") {
                admin = address;
            } else if line.contains("listening") {
                ingress = address;
            }
            if line.contains("wasmesh-proxy started") {
                break;
            }
            if line.contains("error") {
                eprintln!("{line}");
            }
        }
        let (Some(ingress), Some(admin)) = (ingress, admin) else {
            bail!("the proxy did not report its addresses")
        };
        // Keep draining its log; show errors only.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("ERROR") || line.starts_with("error") {
                    eprintln!("proxy: {line}");
                }
            }
        });
        Ok(Mesh {
            proxy,
            ingress,
            admin,
            config_path,
            services: services.to_owned(),
            options,
            applied: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Replaces the policy: a new config file, then a reload the proxy must accept.
    pub async fn apply(&self, policy: &str) -> anyhow::Result<()> {
        let config = proxy_config(&format!("{}\n---\n{policy}", self.services), &self.options)?;
        // Replaced whole (write, then rename): the proxy also watches the file and must never
        // read half of it.
        let next = self.config_path.with_extension("yaml.next");
        std::fs::write(&next, config)?;
        std::fs::rename(&next, &self.config_path)?;
        self.applied.fetch_add(1, Relaxed);
        let req =
            Request::post(format!("http://{}/config_reload", self.admin)).body(Empty::new())?;
        let response = self.client.request(req).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("reload refused: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }

    /// A GET through the mesh to `host` (its `Host` header).
    pub async fn get(&self, host: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        let mut req = Request::get(format!("http://{}/", self.ingress)).header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let started = Instant::now();
        let response = self.client.request(req.body(Empty::new())?).await?;
        let status = response.status().as_u16();
        let served_by = response
            .headers()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("the proxy")
            .to_owned();
        response.into_body().collect().await?;
        Ok(Reply {
            status,
            served_by,
            elapsed: started.elapsed(),
        })
    }

    /// The sum of the admin's Prometheus samples that start with `prefix`.
    pub async fn stat(&self, prefix: &str) -> anyhow::Result<f64> {
        let req =
            Request::get(format!("http://{}/stats/prometheus", self.admin)).body(Empty::new())?;
        let body = self
            .client
            .request(req)
            .await?
            .into_body()
            .collect()
            .await?;
        let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        Ok(text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Requests the proxy answered with a response flag.
    pub async fn flagged(&self, flag: &str) -> anyhow::Result<f64> {
        self.stat(&format!(
            "wasmesh_downstream_rq_flags_total{{listener=\"{}\",response_flags=\"{flag}\"}}",
            self.options.listener_name
        ))
        .await
    }

    /// Drains the proxy with SIGTERM, as an orchestrator would, and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.proxy.id().context("proxy pid")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        Ok(tokio::time::timeout(Duration::from_secs(15), self.proxy.wait()).await??)
    }
}
