//! The dashboard: a live service graph (Kiali's, in spirit) served by the control plane.
//!
//! A task on the control plane's runtime scrapes every connected proxy's `/stats/prometheus`
//! (the address its Hello gave) every few seconds, a few at a time, each scrape bounded by a
//! timeout, so a slow or dead proxy holds up no other; each proxy's samples are kept over a
//! short window ([`graph::window`]). An HTTP server serves the page (HTML, CSS and plain JS
//! compiled into the binary) and the graph it polls: `GET /api/graph`, and
//! `GET /api/node?id=...` for a node's traffic and its proxies' plugins.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

use crate::graph::window::{self, ProxyWindow};
use crate::graph::{self, Graph, ListenerPlugins, Plugin, ProxyInfo};
use crate::mesh::Mesh;

const INDEX_HTML: &str = include_str!("dashboard/assets/index.html");
const APP_JS: &str = include_str!("dashboard/assets/app.js");
const STYLE_CSS: &str = include_str!("dashboard/assets/style.css");

/// A scrape's body larger than this is refused: the control plane's memory is not a proxy's
/// to take.
const MAX_SCRAPE: usize = 16 << 20;
/// Browsers open a few connections; more than this at once wait to be accepted.
const MAX_CONNECTIONS: usize = 128;

/// How the dashboard scrapes.
#[derive(Clone, Debug)]
pub struct DashboardOptions {
    /// How often each proxy is scraped.
    pub scrape_interval: Duration,
    /// The window rates and latencies are computed over (Kiali's default: a minute).
    pub window: Duration,
    /// How long one scrape may take.
    pub timeout: Duration,
    /// Scrapes at once.
    pub concurrency: usize,
    /// A page client that has not sent a whole request head within this long is cut off, and
    /// so is a connection idle for this long (the page polls every few seconds).
    pub header_timeout: Duration,
}

impl Default for DashboardOptions {
    fn default() -> Self {
        DashboardOptions {
            scrape_interval: Duration::from_secs(5),
            window: Duration::from_secs(60),
            timeout: Duration::from_secs(3),
            concurrency: 16,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// The dashboard's state: each proxy's window and what the mesh says of it.
pub struct Dashboard {
    mesh: Arc<Mesh>,
    options: DashboardOptions,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    proxies: HashMap<String, Scraped>,
    /// Proxies whose scrape is under way: they are not scraped again until it ends.
    in_flight: HashSet<String>,
}

/// A proxy the dashboard knows: connected, or gone with samples still in the window.
struct Scraped {
    info: ProxyInfo,
    /// The snapshot version `info.listeners` were read from.
    version: String,
    window: ProxyWindow,
    connected: bool,
    /// Why the last scrape failed, until one succeeds.
    error: Option<String>,
}

/// How a proxy's scrapes go, for `GET /api/graph`.
#[derive(Serialize)]
struct ScrapeStatus {
    proxy: String,
    metrics_address: String,
    /// Seconds since the last successful scrape.
    #[serde(skip_serializing_if = "Option::is_none")]
    scraped_seconds_ago: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct GraphDocument {
    #[serde(flatten)]
    graph: Graph,
    scrapes: Vec<ScrapeStatus>,
}

impl Dashboard {
    /// Starts scraping the mesh's proxies on the current runtime.
    pub fn start(mesh: Arc<Mesh>, options: DashboardOptions) -> Arc<Dashboard> {
        let dashboard = Arc::new(Dashboard {
            mesh,
            options,
            state: Mutex::default(),
        });
        tokio::spawn(scrape_loop(Arc::downgrade(&dashboard)));
        dashboard
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the proxies in line with the mesh's connected ones; returns those to scrape
    /// now (`id`, address): connected, with an address, and no scrape of theirs under way.
    fn refresh(&self) -> Vec<(String, String)> {
        let connected = self.mesh.status();
        let mut state = self.lock();
        let now = Instant::now();
        let ids: HashSet<&str> = connected.iter().map(|(id, ..)| id.as_str()).collect();
        let window = self.options.window;
        state.proxies.retain(|id, p| {
            p.connected = ids.contains(id.as_str());
            p.connected
                || p.window
                    .last_scrape()
                    .is_some_and(|t| now.duration_since(t) < window)
        });
        let mut due = Vec::new();
        for (id, node, _, _) in connected {
            let snapshot = self.mesh.snapshot_of(&id);
            let version = snapshot
                .as_ref()
                .map(|s| s.version.clone())
                .unwrap_or_default();
            let entry = state.proxies.entry(id.clone()).or_insert_with(|| Scraped {
                info: ProxyInfo::default(),
                version: String::new(),
                window: ProxyWindow::new(window),
                connected: true,
                error: None,
            });
            if entry.info.id.is_empty() || entry.version != version {
                // The bootstrap is read again only when its version changes.
                let bootstrap = snapshot.and_then(|s| s.bootstrap().ok());
                entry.info = proxy_info(&id, &node, bootstrap.as_ref());
                entry.version = version;
            }
            entry.info.metrics_address.clone_from(&node.metrics_address);
            if !node.metrics_address.is_empty() && !state.in_flight.contains(&id) {
                due.push((id, node.metrics_address));
            }
        }
        for (id, _) in &due {
            state.in_flight.insert(id.clone());
        }
        due
    }

    /// Keeps a scrape's outcome.
    fn record(&self, id: &str, at: Instant, scraped: Result<String, String>) {
        // Parsed before the lock is taken: the text may be large.
        let parsed = scraped.and_then(|text| {
            graph::text::parse(&text, window::wanted)
                .map(window::group)
                .map_err(|e| format!("not Prometheus text: {e}"))
        });
        let mut state = self.lock();
        state.in_flight.remove(id);
        let Some(proxy) = state.proxies.get_mut(id) else {
            return;
        };
        match parsed {
            Ok(groups) => {
                proxy.window.record(at, groups);
                proxy.error = None;
            }
            Err(e) => {
                if proxy.error.as_ref() != Some(&e) {
                    tracing::debug!(proxy = %id, address = %proxy.info.metrics_address, error = %e, "metrics scrape failed");
                }
                proxy.error = Some(e);
            }
        }
    }

    /// The graph over the window, with each proxy's scrape status.
    fn document(&self) -> GraphDocument {
        let state = self.lock();
        let now = Instant::now();
        let mut proxies: Vec<&Scraped> = state.proxies.values().collect();
        proxies.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        let inputs: Vec<(&ProxyInfo, Option<&ProxyWindow>)> =
            proxies.iter().map(|p| (&p.info, Some(&p.window))).collect();
        let graph = graph::build(&inputs, self.options.window.as_secs());
        let scrapes = proxies
            .iter()
            .filter(|p| p.connected)
            .map(|p| ScrapeStatus {
                proxy: p.info.id.clone(),
                metrics_address: p.info.metrics_address.clone(),
                scraped_seconds_ago: p
                    .window
                    .last_scrape()
                    .map(|t| now.duration_since(t).as_secs_f64()),
                error: p.error.clone(),
            })
            .collect();
        GraphDocument { graph, scrapes }
    }

    /// What `GET /api/node?id=` answers.
    fn node(&self, id: &str) -> Option<graph::NodeDetails> {
        let graph = self.document().graph;
        let infos: Vec<ProxyInfo> = self
            .lock()
            .proxies
            .values()
            .map(|p| p.info.clone())
            .collect();
        graph::node_details(&graph, &infos, id)
    }

    /// Serves the page and its API on `listener` until the runtime stops.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let header_timeout = self.options.header_timeout;
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: a moment for some to close.
                    tracing::warn!(error = %e, "dashboard: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let dashboard = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = dashboard.handle(&request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                drop(slot);
            });
        }
    }

    fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        match request.uri().path() {
            "/" | "/index.html" => reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                INDEX_HTML.into(),
            ),
            "/app.js" => reply(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                APP_JS.into(),
            ),
            "/style.css" => reply(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS.into()),
            "/api/graph" => json(StatusCode::OK, &self.document()),
            "/api/node" => {
                let id = form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
                    .find(|(k, _)| k == "id")
                    .map(|(_, v)| v.into_owned());
                match id.and_then(|id| self.node(&id)) {
                    Some(details) => json(StatusCode::OK, &details),
                    None => json(
                        StatusCode::NOT_FOUND,
                        &serde_json::json!({"error": "no such node (GET /api/node?id=<node id>)"}),
                    ),
                }
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "the dashboard serves /, /api/graph and /api/node?id=ID\n".into(),
            ),
        }
    }
}

/// What the mesh says of a proxy: its workload, and its listeners' plugins from its bootstrap.
fn proxy_info(
    id: &str,
    node: &crate::sidecar::Node,
    bootstrap: Option<&wasmesh_config::Bootstrap>,
) -> ProxyInfo {
    let workload = bootstrap
        .and_then(|b| b.telemetry.workload.as_ref())
        .map(|w| w.workload_name.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| node.name.clone());
    let label = |k: &str| node.labels.get(k).cloned().unwrap_or_default();
    let listeners = bootstrap
        .map(|b| {
            b.listeners
                .iter()
                .filter(|l| !l.http_filters.is_empty())
                .map(listener_plugins)
                .collect()
        })
        .unwrap_or_default();
    ProxyInfo {
        id: id.to_owned(),
        namespace: node.namespace.clone(),
        workload,
        app: label("app"),
        version: label("version"),
        metrics_address: node.metrics_address.clone(),
        listeners,
    }
}

fn listener_plugins(l: &wasmesh_config::Listener) -> ListenerPlugins {
    use wasmesh_config::TrafficDirection;
    let inbound = match l.traffic_direction {
        Some(direction) => direction == TrafficDirection::Inbound,
        None => l.name.starts_with("inbound") || l.name == "virtualInbound",
    };
    ListenerPlugins {
        listener: l.name.clone(),
        direction: if inbound { "inbound" } else { "outbound" }.into(),
        plugins: l
            .http_filters
            .iter()
            .map(|f| Plugin {
                name: f.name.clone(),
                kind: if crate::PLUGIN_NAMES.contains(&f.name.as_str()) {
                    "traffic"
                } else if f.name == crate::authz::FILTER_NAME {
                    "authz"
                } else {
                    "wasmplugin"
                }
                .into(),
                root_id: f.plugin_name.clone(),
                phase: serde_json::to_value(f.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                priority: f.priority,
                sha256: f.sha256.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// Every `scrape_interval`, scrapes each connected proxy that is not being scraped already,
/// `concurrency` at a time; ends when the dashboard is dropped.
async fn scrape_loop(dashboard: Weak<Dashboard>) {
    let Some(options) = dashboard.upgrade().map(|d| d.options.clone()) else {
        return;
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    let mut tick = tokio::time::interval(options.scrape_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(this) = dashboard.upgrade() else {
            return;
        };
        for (id, address) in this.refresh() {
            let permits = permits.clone();
            let dashboard = dashboard.clone();
            let timeout = options.timeout;
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let scraped = match tokio::time::timeout(timeout, fetch(&address)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                if let Some(d) = dashboard.upgrade() {
                    d.record(&id, Instant::now(), scraped);
                }
            });
        }
    }
}

/// `GET http://<address>/stats/prometheus`, its body as text.
async fn fetch(address: &str) -> Result<String, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let exchange = async move {
        let request = Request::get("/stats/prometheus")
            .header(header::HOST, address)
            .header(header::ACCEPT, "text/plain")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_SCRAPE)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        String::from_utf8(body.into()).map_err(|_| "not UTF-8".to_owned())
    };
    // The connection is driven beside the exchange, and ends with it (the exchange drops the
    // only sender) or when the proxy closes it, whose error the exchange reports.
    let (result, _) = tokio::join!(exchange, connection);
    result
}

fn reply(status: StatusCode, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        // Everything the page needs is its own: no other origin may load into it.
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:",
        )
        .body(Full::new(body))
        .expect("a valid response")
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("the graph serializes");
    reply(status, "application/json", body.into())
}

#[cfg(test)]
mod tests;
