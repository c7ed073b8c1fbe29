//! `--through-proxy`: the chain on a listener of a real wasmesh-proxy (started in-process,
//! one worker) in front of a local upstream, under load from keep-alive connections; the
//! baseline on a second listener of the same proxy. Everything listens on 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::oneshot;
use wasmesh_proxy::Proxy;
use wasmesh_proxy::config::Bootstrap;

use super::Timed;
use super::chain::ResolvedChain;
use super::profile::{RequestProfile, ResponseSpec};
use super::stats::histogram;
use super::{Budget, Error, Progress};

/// A local upstream answering every request with `response`.
struct Upstream {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(response: &ResponseSpec) -> Result<Upstream, Error> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::Proxy(format!("cannot bind the upstream: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Proxy(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Proxy(e.to_string()))?;
        let (stop, mut stopped) = oneshot::channel();
        let response = response.clone();
        let thread = std::thread::Builder::new()
            .name("bench-upstream".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    loop {
                        let (socket, _) = tokio::select! {
                            _ = &mut stopped => return,
                            accepted = listener.accept() => match accepted {
                                Ok(a) => a,
                                Err(_) => continue,
                            },
                        };
                        let _ = socket.set_nodelay(true);
                        let response = response.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(
                                move |req: http::Request<hyper::body::Incoming>| {
                                    let response = response.clone();
                                    async move {
                                        // Read the request body before answering.
                                        let _ = req.into_body().collect().await;
                                        let mut r =
                                            http::Response::new(Full::new(response.body.clone()));
                                        *r.status_mut() =
                                            http::StatusCode::from_u16(response.status)
                                                .unwrap_or(http::StatusCode::OK);
                                        *r.headers_mut() = response.headers.clone();
                                        Ok::<_, Infallible>(r)
                                    }
                                },
                            );
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(socket), service)
                                    .await;
                        });
                    }
                });
            })
            .map_err(|e| Error::Proxy(format!("cannot start the upstream: {e}")))?;
        Ok(Upstream {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The proxy config: the chain's listener (its routes when it came from a config, else one
/// route to the upstream) as `chain`, the same with the baseline's filters as `baseline`,
/// the clusters of both configs (the chain's when both have one of a name), and every
/// cluster pointed at the local upstream.
fn bootstrap(
    chain: &ResolvedChain,
    baseline: &ResolvedChain,
    upstream: SocketAddr,
) -> Result<Bootstrap, Error> {
    let yaml = format!(
        r#"
workers: 1
listeners:
- name: chain
  address: "127.0.0.1:0"
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: {{prefix: /}}
      cluster: upstream
clusters:
- name: upstream
  endpoints: ["{upstream}"]
"#
    );
    let mut b = Bootstrap::parse(&yaml).map_err(|e| Error::Proxy(e.to_string()))?;
    let source = chain.bootstrap.as_ref().or(baseline.bootstrap.as_ref());
    if let Some((source, listener)) = source {
        let template = source
            .listeners
            .iter()
            .find(|l| &l.name == listener)
            .expect("the chain's listener");
        let mut listener = template.clone();
        listener.name = "chain".into();
        listener.address = "127.0.0.1:0".into();
        b.listeners = vec![listener];
        let mut clusters = source.clusters.clone();
        // A baseline from other manifests routes to clusters of its own (its subsets).
        if let Some((other, _)) = &baseline.bootstrap {
            for c in &other.clusters {
                if !clusters.iter().any(|k| k.name == c.name) {
                    clusters.push(c.clone());
                }
            }
        }
        // Every cluster, DNS and original-destination ones too, is the upstream here.
        for c in &mut clusters {
            c.endpoints = vec![upstream.to_string()];
            c.resolution = wasmesh_proxy::config::Resolution::Static;
        }
        if !clusters.iter().any(|c| c.name == "upstream") {
            clusters.push(b.clusters[0].clone());
        }
        b.clusters = clusters;
    }
    let mut base = b.listeners[0].clone();
    base.name = "baseline".into();
    base.http_filters = baseline.absolute_filters();
    b.listeners[0].http_filters = chain.absolute_filters();
    b.listeners.push(base);
    b.base_dir = None;
    b.validate().map_err(|e| Error::Proxy(e.to_string()))?;
    Ok(b)
}

/// Runs the load: rounds alternating chain and baseline, each listener getting `budget` per
/// round over `connections` connections.
pub(super) fn run(
    chain: &ResolvedChain,
    baseline: &ResolvedChain,
    profile: &RequestProfile,
    rounds: u32,
    budget: Budget,
    connections: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Timed, Timed), Error> {
    let upstream = Upstream::start(&profile.response)?;
    let config = bootstrap(chain, baseline, upstream.addr)?;
    let proxy = Proxy::start(config).map_err(|e| Error::Proxy(e.to_string()))?;
    let addrs = [
        proxy.listener_addr("chain").expect("the chain listener"),
        proxy
            .listener_addr("baseline")
            .expect("the baseline listener"),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Proxy(e.to_string()))?;
    let result = runtime.block_on(async {
        let mut measured = [Timed::new(), Timed::new()];
        // Warm up both listeners: connections, VMs, caches.
        for addr in addrs {
            load(
                addr,
                profile,
                connections,
                Budget::Requests(64),
                &mut Timed::new(),
            )
            .await?;
        }
        let total = budget.total(rounds as u64 * 2);
        let mut done = 0u64;
        for round in 0..rounds {
            // Alternate which goes first, so neither always runs on a warmer machine.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let before = measured[i].requests;
                let mean = load(addrs[i], profile, connections, budget, &mut measured[i]).await?;
                measured[i].round_means.push(mean);
                done += match budget {
                    Budget::Requests(_) => measured[i].requests - before,
                    Budget::Time(d) => d.as_millis() as u64,
                };
                progress(Progress {
                    phase: "through the proxy",
                    done,
                    total,
                });
            }
        }
        Ok::<_, Error>(measured)
    });
    proxy.shutdown();
    drop(upstream);
    let [chain, baseline] = result?;
    Ok((chain, baseline))
}

/// One listener for one round; returns the mean latency (ns).
async fn load(
    addr: SocketAddr,
    profile: &RequestProfile,
    connections: usize,
    budget: Budget,
    into: &mut Timed,
) -> Result<f64, Error> {
    let connections = connections.max(1);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let profile = profile.clone();
        let quota = match budget {
            Budget::Requests(n) => {
                Some(n / connections as u64 + u64::from((c as u64) < n % connections as u64))
            }
            Budget::Time(_) => None,
        };
        let deadline = match budget {
            Budget::Time(d) => Some(start + d),
            Budget::Requests(_) => None,
        };
        tasks.spawn(async move { connection(addr, &profile, c, quota, deadline).await });
    }
    let mut sum = 0u128;
    let mut count = 0u64;
    while let Some(joined) = tasks.join_next().await {
        let one = joined.map_err(|e| Error::Proxy(e.to_string()))??;
        into.histogram
            .add(&one.histogram)
            .map_err(|e| Error::Proxy(e.to_string()))?;
        sum += one.sum;
        count += one.count;
        for (k, v) in one.outcomes {
            *into.outcomes.entry(k).or_default() += v;
        }
    }
    into.wall += start.elapsed();
    into.requests += count;
    Ok(if count == 0 {
        0.0
    } else {
        sum as f64 / count as f64
    })
}

struct ConnectionRun {
    histogram: Histogram<u64>,
    sum: u128,
    count: u64,
    outcomes: std::collections::BTreeMap<String, u64>,
}

async fn connection(
    addr: SocketAddr,
    profile: &RequestProfile,
    offset: usize,
    quota: Option<u64>,
    deadline: Option<Instant>,
) -> Result<ConnectionRun, Error> {
    let mut run = ConnectionRun {
        histogram: histogram(),
        sum: 0,
        count: 0,
        outcomes: Default::default(),
    };
    let mut sender = None;
    let mut i = offset;
    loop {
        if quota.is_some_and(|q| run.count >= q) || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(run);
        }
        if sender.is_none() {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| Error::Proxy(format!("cannot connect to the proxy at {addr}: {e}")))?;
            let _ = stream.set_nodelay(true);
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| Error::Proxy(e.to_string()))?;
            tokio::spawn(conn);
            sender = Some(s);
        }
        let spec = &profile.requests[i % profile.requests.len()];
        i += 1;
        let mut request = http::Request::new(Full::new(spec.body.clone()));
        *request.method_mut() = spec.method.clone();
        *request.uri_mut() = spec.uri.clone();
        *request.headers_mut() = spec.headers.clone();
        let s = sender.as_mut().expect("a connection");
        let t = Instant::now();
        if s.ready().await.is_err() {
            sender = None;
            continue;
        }
        let label = match s.send_request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let keep = !response
                    .headers()
                    .get(http::header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                let body = response.into_body().collect().await;
                if body.is_err() || !keep {
                    sender = None;
                }
                status.to_string()
            }
            Err(_) => {
                sender = None;
                "error".to_string()
            }
        };
        let ns = t.elapsed().as_nanos() as u64;
        run.histogram.saturating_record(ns.max(1));
        run.sum += ns as u128;
        run.count += 1;
        *run.outcomes.entry(label).or_default() += 1;
        if sender.as_ref().is_some_and(|s| s.is_closed()) {
            sender = None;
        }
    }
}
