//! Test harness: real upstream servers on 127.0.0.1 port 0, the real proxy (as a library or
//! as the `wasmesh-proxy` binary), real clients, and waiting on conditions instead of sleeping.

#![allow(dead_code)]

pub mod ca_client;
pub mod mesh;
pub mod netns;
pub mod otlp;
pub mod prometheus;
pub mod registry;
pub mod sidecars;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use wasmesh_proxy::Proxy;
use wasmesh_proxy::config::Bootstrap;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
type Handler =
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// An upstream HTTP/1.1 + HTTP/2 (h2c) server running `handler` for every request.
pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Upstream::serve(listener, handler)
    }

    /// Serves `handler` on a bound listener (one made in a pod, say).
    pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(move |req| Box::pin(handler(req)));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        counter.fetch_add(1, SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, hits, task }
    }

    /// Answers every request with a JSON description of it, tagged with `name`.
    pub async fn echo(name: &'static str) -> Upstream {
        Upstream::start(move |req| echo_response(name, req)).await
    }

    /// Requests this upstream has received.
    pub fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }

    /// Stops accepting and closes the listener.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The JSON an echo upstream answers with.
pub async fn echo_response(name: &str, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("<binary>").into()))
        .collect();
    let json = serde_json::json!({
        "server": name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("x-served-by", name)
        .body(full(json.to_string()))
        .unwrap()
}

/// A free loopback address nothing listens on (for dead endpoints).
///
/// The port stays bound (never listening) for the life of the test process: connections to it
/// are refused, and no other test can start listening on it meanwhile.
pub fn dead_addr() -> SocketAddr {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(socket);
    addr
}

/// Starts the proxy in-process from a YAML bootstrap.
pub fn start_proxy(yaml: &str) -> Proxy {
    let bootstrap =
        Bootstrap::parse(yaml).unwrap_or_else(|e| panic!("bad test config: {e}\n{yaml}"));
    Proxy::start(bootstrap).expect("proxy starts")
}

/// A single-listener proxy config routing everything to one cluster.
pub fn simple_config(endpoints: &[SocketAddr], extra_cluster: &str, extra_route: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
workers: 2
admin: {{address: "127.0.0.1:0"}}
listeners:
- name: ingress
  address: "127.0.0.1:0"
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: {{prefix: /}}
      cluster: backend
{extra_route}
clusters:
- name: backend
  endpoints: [{}]
{extra_cluster}
"#,
        eps.join(", ")
    )
}

/// Indents `text` to sit under a route or cluster entry of [`simple_config`].
pub fn route_extra(text: &str) -> String {
    text.lines().map(|l| format!("      {l}\n")).collect()
}

pub fn cluster_extra(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// A plain HTTP/1.1 client with keep-alive.
pub fn h1_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send(client: &Client<HttpConnector, Body>, req: Request<Body>) -> Reply {
    let response = client
        .request(req)
        .await
        .expect("request through the proxy");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(empty())
        .unwrap();
    send(&h1_client(), req).await
}

/// GET on the admin server.
pub async fn admin_get(proxy: &Proxy, path: &str) -> Reply {
    get(proxy.admin_addr().expect("admin configured"), path).await
}

/// The value of a Prometheus sample, such as `wasmesh_upstream_rq_retry_total{cluster="backend"}`.
pub async fn metric(proxy: &Proxy, sample: &str) -> Option<f64> {
    let text = admin_get(proxy, "/stats/prometheus").await.text();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Sends `line` over a new TCP connection to `to`, closes its sending side, and reads the
/// answer until the peer closes (blocking; a 5 s bound on each step).
pub fn tcp_exchange(to: SocketAddr, line: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(line)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(answer)
}

/// Waits until `check` holds, polling; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a command to completion (curl, h2load), returning stdout; panics if it cannot start.
pub async fn run(program: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program} (installed by deploy/setup.sh): {e}"))
}

/// Sends raw bytes on a fresh connection and reads until the peer closes or `timeout` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A server that closes at once may refuse the write: what it answered (nothing) says so.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The `wasmesh-proxy` binary built with these tests.
pub fn proxy_binary() -> &'static str {
    env!("CARGO_BIN_EXE_wasmesh-proxy")
}

/// The `wasmesh-proxy` binary running a config, with the addresses it logged.
pub struct ProxyProcess {
    pub child: tokio::process::Child,
    pub listeners: std::collections::HashMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for line in self.log.lock().unwrap().iter() {
                eprintln!("proxy: {line}");
            }
        }
    }
}

impl ProxyProcess {
    /// Writes `yaml` to a file, starts the binary on it and waits until it serves.
    pub async fn spawn(yaml: &str) -> ProxyProcess {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut child = tokio::process::Command::new(proxy_binary())
            .arg("--config")
            .arg(&path)
            .env(
                "WASMESH_LOG",
                std::env::var("TEST_PROXY_LOG").unwrap_or("info".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start wasmesh-proxy");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut listeners = std::collections::HashMap::new();
        let mut admin = None;
        let started = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push(line.clone());
                let address = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                if line.contains("admin listening") {
                    admin = address;
                } else if line.contains("listening") {
                    let name = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("listener="))
                        .unwrap();
                    listeners.insert(name.to_owned(), address.unwrap());
                }
                if line.contains("wasmesh-proxy started") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            started,
            Ok(true),
            "proxy did not start: {:?}",
            log.lock().unwrap()
        );
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        ProxyProcess {
            child,
            listeners,
            admin,
            log,
            _dir: dir,
        }
    }

    /// The config file the process reads (reloads read it again).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("proxy.yaml")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmHWM in /proc status")
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}
