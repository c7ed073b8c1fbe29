//! The demo's workloads: Bookinfo's and httpbin's, each an HTTP server on a free loopback port
//! that answers with `x-served-by: <app>-<version>`. Like Bookinfo's, productpage calls
//! reviews, and reviews v2 and v3 call ratings, each through its own sidecar's outbound
//! listener (as `HTTP_PROXY` would send them), passing the `end-user` header on. The chain a
//! request took comes back in `x-chain`: `productpage-v1 > reviews-v2 > ratings-v1`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use wasmesh_controlplane::samples;

/// One running workload.
pub struct Workload {
    /// `<app>-<version>`.
    pub name: &'static str,
    pub app: &'static str,
    pub version: &'static str,
    /// The port its service targets.
    pub port: u16,
    pub addr: SocketAddr,
    /// Its sidecar's outbound listener, once the sidecar runs.
    pub outbound: Arc<OnceLock<SocketAddr>>,
    /// `Host` headers of the requests it received, counted.
    hosts: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Workload {
    /// Starts a workload that calls `calls` (hosts, through its sidecar) for every request,
    /// after `delay`.
    pub async fn start(
        app: &'static str,
        version: &'static str,
        port: u16,
        calls: &'static [&'static str],
        delay: Duration,
    ) -> anyhow::Result<Workload> {
        let name: &'static str = Box::leak(format!("{app}-{version}").into_boxed_str());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let hosts: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let outbound: Arc<OnceLock<SocketAddr>> = Arc::default();
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let (seen, sidecar) = (hosts.clone(), outbound.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, sidecar, client) = (seen.clone(), sidecar.clone(), client.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<_>| {
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        *seen.lock().unwrap().entry(host).or_default() += 1;
                        let user = req.headers().get("end-user").cloned();
                        let (sidecar, client) = (sidecar.clone(), client.clone());
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let mut chain = name.to_owned();
                            for host in calls {
                                let next =
                                    call(&client, sidecar.get().copied(), host, user.as_ref())
                                        .await;
                                chain = format!("{chain} > {next}");
                            }
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("x-served-by", name)
                                    .header("x-chain", chain)
                                    .body(Full::new(Bytes::from(format!(
                                        "{{\"service\":\"{name}\"}}"
                                    ))))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Workload {
            name,
            app,
            version,
            port,
            addr,
            outbound,
            hosts,
        })
    }

    /// Requests received, by `Host` header.
    pub fn hosts(&self) -> BTreeMap<String, usize> {
        self.hosts.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.hosts.lock().unwrap().values().sum()
    }
}

/// A call to `host` through the sidecar: the chain it answered with, or what went wrong.
async fn call(
    client: &Client<HttpConnector, Empty<Bytes>>,
    sidecar: Option<SocketAddr>,
    host: &str,
    user: Option<&http::HeaderValue>,
) -> String {
    let Some(sidecar) = sidecar else {
        return format!("{host} (no sidecar yet)");
    };
    let mut req = Request::get(format!("http://{sidecar}/")).header("host", host);
    if let Some(user) = user {
        req = req.header("end-user", user);
    }
    let Ok(req) = req.body(Empty::new()) else {
        return format!("{host} (bad request)");
    };
    // Bookinfo's reviews gives ratings 10 s, productpage gives reviews 3 s (and retries once).
    match tokio::time::timeout(Duration::from_secs(3), client.request(req)).await {
        Ok(Ok(response)) => {
            let status = response.status();
            let chain = response
                .headers()
                .get("x-chain")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = response.into_body().collect().await;
            match chain {
                Some(chain) if status.is_success() => chain,
                _ => format!("{host} unavailable ({})", status.as_u16()),
            }
        }
        Ok(Err(e)) => format!("{host} unavailable ({e})"),
        Err(_) => format!("{host} unavailable (timed out)"),
    }
}

/// Bookinfo's six workloads and httpbin's two.
pub struct Samples {
    pub productpage: Workload,
    pub details: Workload,
    pub ratings: Workload,
    pub reviews: [Workload; 3],
    pub httpbin: [Workload; 2],
}

pub use samples::{BOOKINFO_PORT, HTTPBIN_PORT};

impl Samples {
    pub async fn start() -> anyhow::Result<Samples> {
        let fast = Duration::ZERO;
        let p = BOOKINFO_PORT;
        Ok(Samples {
            productpage: Workload::start("productpage", "v1", p, &["reviews"], fast).await?,
            details: Workload::start("details", "v1", p, &[], fast).await?,
            ratings: Workload::start("ratings", "v1", p, &[], fast).await?,
            reviews: [
                Workload::start("reviews", "v1", p, &[], fast).await?,
                Workload::start("reviews", "v2", p, &["ratings"], fast).await?,
                Workload::start("reviews", "v3", p, &["ratings"], fast).await?,
            ],
            // httpbin takes a little time per request, as a real one would.
            httpbin: [
                Workload::start("httpbin", "v1", HTTPBIN_PORT, &[], Duration::from_millis(2))
                    .await?,
                Workload::start("httpbin", "v2", HTTPBIN_PORT, &[], Duration::from_millis(2))
                    .await?,
            ],
        })
    }

    pub fn all(&self) -> Vec<&Workload> {
        let mut v = vec![&self.productpage, &self.details, &self.ratings];
        v.extend(&self.reviews);
        v.extend(&self.httpbin);
        v
    }

    /// The ServiceEntries that make them services: each selects its workloads by `app`;
    /// the endpoints are the sidecars that register with those labels.
    pub fn manifests(&self) -> String {
        [
            ("productpage", BOOKINFO_PORT),
            ("details", BOOKINFO_PORT),
            ("ratings", BOOKINFO_PORT),
            ("reviews", BOOKINFO_PORT),
            ("httpbin", HTTPBIN_PORT),
        ]
        .iter()
        .map(|(app, port)| samples::service_entry(app, *port))
        .collect()
    }
}
