//! The demo's sample services: Bookinfo's workloads and httpbin v1/v2 on free loopback ports.
//! Each answers with `x-served-by: <app>-<version>` and counts what it saw.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use wasmesh_controlplane::samples::{self, BookinfoEndpoints, HttpbinEndpoints};

/// One running workload.
pub struct Service {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// `Host` headers of the requests it received, counted.
    hosts: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Service {
    /// Starts a workload that answers 200 after `delay`.
    pub async fn start(name: &'static str, delay: Duration) -> anyhow::Result<Service> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let hosts: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let seen = hosts.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let host = req
                                .headers()
                                .get(http::header::HOST)
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            *seen.lock().unwrap().entry(host).or_default() += 1;
                            async move {
                                if !delay.is_zero() {
                                    tokio::time::sleep(delay).await;
                                }
                                let body = format!("{{\"service\":\"{name}\"}}");
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .header("x-served-by", name)
                                        .body(Full::new(Bytes::from(body)))
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
        Ok(Service { name, addr, hosts })
    }

    /// Requests received, by `Host` header.
    pub fn hosts(&self) -> BTreeMap<String, usize> {
        self.hosts.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.hosts.lock().unwrap().values().sum()
    }
}

/// Bookinfo's six workloads and httpbin's two.
pub struct Samples {
    pub productpage: Service,
    pub details: Service,
    pub ratings: Service,
    pub reviews: [Service; 3],
    pub httpbin: [Service; 2],
}

impl Samples {
    pub async fn start() -> anyhow::Result<Samples> {
        let fast = Duration::ZERO;
        Ok(Samples {
            productpage: Service::start("productpage-v1", fast).await?,
            details: Service::start("details-v1", fast).await?,
            ratings: Service::start("ratings-v1", fast).await?,
            reviews: [
                Service::start("reviews-v1", fast).await?,
                Service::start("reviews-v2", fast).await?,
                Service::start("reviews-v3", fast).await?,
            ],
            // httpbin takes a little time per request, as a real one would.
            httpbin: [
                Service::start("httpbin-v1", Duration::from_millis(2)).await?,
                Service::start("httpbin-v2", Duration::from_millis(2)).await?,
            ],
        })
    }

    pub fn count(&self) -> usize {
        8
    }

    /// The ServiceEntries and WorkloadEntries that put them in the mesh.
    pub fn manifests(&self) -> String {
        let bookinfo = samples::bookinfo(&BookinfoEndpoints {
            productpage: self.productpage.addr,
            details: self.details.addr,
            ratings: self.ratings.addr,
            reviews_v1: self.reviews[0].addr,
            reviews_v2: self.reviews[1].addr,
            reviews_v3: self.reviews[2].addr,
        });
        let httpbin = samples::httpbin(&HttpbinEndpoints {
            v1: self.httpbin[0].addr,
            v2: self.httpbin[1].addr,
        });
        format!("{bookinfo}\n{httpbin}")
    }
}
