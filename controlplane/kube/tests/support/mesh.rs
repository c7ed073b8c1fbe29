//! Real processes on loopback: the `wasmesh-controlplane` and `wasmesh-proxy` binaries, an
//! echo workload, and a client. (Pieces of `tests/all/support`, which this package cannot
//! include: that harness is the proxy package's.)

use std::convert::Infallible;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// The control plane's binary, built with this package's tests.
pub fn controlplane_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wasmesh-controlplane"))
}

/// The proxy's binary, beside the control plane's (`cargo build --workspace --bins`, or
/// `cargo nextest run --workspace`, builds both); built here if it is missing.
pub fn proxy_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    let bin = controlplane_bin().with_file_name("wasmesh-proxy");
    BUILD.call_once(|| {
        if bin.exists() {
            return;
        }
        let profile = bin
            .parent()
            .and_then(Path::file_name)
            .and_then(|p| p.to_str())
            .unwrap_or("debug");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "wasmesh-proxy",
            "--bin",
            "wasmesh-proxy",
        ]);
        if profile != "debug" {
            cmd.args(["--profile", profile]);
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building wasmesh-proxy failed");
    });
    bin
}

/// The directory of the traffic plugins' modules.
pub fn plugins_dir() -> PathBuf {
    Path::new(wasmesh_artifacts::ROUTER)
        .parent()
        .expect("a directory")
        .to_owned()
}

/// Where sidecars keep compiled modules, shared by every test (and the proxy's tests): the
/// modules are compiled once per build, not by every sidecar.
pub fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("sidecar-cache")
}

/// A child process whose stderr lines are kept (and shown when a wait fails). Killed when
/// dropped.
pub struct Process {
    child: Child,
    name: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command) -> Process {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
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

    /// The first log line containing `needle`, if any yet.
    pub fn line(&self, needle: &str) -> Option<String> {
        let lines = self.lines.lock().unwrap();
        lines.iter().find(|l| l.contains(needle)).cloned()
    }

    /// Waits for a log line containing `needle`; returns it.
    pub async fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.line(needle) {
                return line;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                // The reader may still hold the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "{}: no log line with {needle:?} within {timeout:?} (exit: {exited:?}); its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// A sidecar of the control plane at `control_plane`: `name` in namespace `default`, running
/// as `service_account` and proving it with the token in `token_file`, with `labels`, and in
/// front of `app` on `port` if given. Its outbound listener is on a port of its own.
pub struct Sidecar {
    /// Runs while this lives.
    _process: Process,
    pub outbound: SocketAddr,
}

impl Sidecar {
    /// Starts the sidecar and waits until it serves.
    pub async fn start(
        control_plane: &str,
        name: &str,
        service_account: &str,
        token_file: &Path,
        labels: &[(&str, &str)],
        app: Option<(u16, SocketAddr)>,
    ) -> Sidecar {
        let cmd = Sidecar::command(
            control_plane,
            name,
            service_account,
            token_file,
            labels,
            app,
        );
        let mut process = Process::spawn(name, cmd);
        process
            .wait_for_line("sidecar started", Duration::from_secs(120))
            .await;
        let outbound = field(
            &process
                .line("listener=outbound")
                .expect("an outbound listener"),
            "address",
        )
        .parse()
        .unwrap();
        Sidecar {
            _process: process,
            outbound,
        }
    }

    /// The sidecar's command line.
    pub fn command(
        control_plane: &str,
        name: &str,
        service_account: &str,
        token_file: &Path,
        labels: &[(&str, &str)],
        app: Option<(u16, SocketAddr)>,
    ) -> Command {
        let mut cmd = Command::new(proxy_bin());
        cmd.args(["--control-plane", control_plane, "--node", name])
            .args(["--namespace", "default", "--outbound", "127.0.0.1:0"])
            .args(["--service-account", service_account])
            .arg("--token-file")
            .arg(token_file)
            .args(["--workers", "1"])
            .arg("--cache-dir")
            .arg(shared_cache())
            .env("WASMESH_LOG", "info");
        for (k, v) in labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        if let Some((port, app)) = app {
            cmd.arg("--inbound").arg(format!("{port}={app}"));
        }
        cmd
    }
}

/// An HTTP/1.1 server answering every request `200` with `x-served-by: <name>` and its
/// request's path as the body. Stops when dropped.
pub struct Echo {
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    pub async fn start(name: &'static str) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(move |r: Request<Incoming>| async move {
                    let response = Response::builder()
                        .header("x-served-by", name)
                        .body(Full::new(Bytes::from(r.uri().path().to_owned())))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Echo { address, task }
    }
}

/// A response's head (its body read and dropped).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET http://<host>/` sent to `to` (a sidecar's outbound listener), with `headers`; an
/// error is a string, as is a timeout (10 s).
pub async fn get(to: SocketAddr, host: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    let mut request = Request::get(format!("http://{to}/")).header("host", host);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    body.collect().await.map_err(|e| e.to_string())?;
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
    })
}
