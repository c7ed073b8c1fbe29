//! The exporter: finished spans go from the workers to the `wasmesh-trace-export` thread over a
//! bounded queue, and from there to the collector with OTLP/gRPC.
//!
//! Nothing here may slow traffic down. Workers hand spans over with a non-blocking send; a
//! full queue drops the span (counted). The thread batches (up to [`BATCH`] spans or
//! [`FLUSH`]), exports each batch once under the config's `otlp.timeout`, and drops a batch
//! that fails (counted): no retries, so a dead or hanging collector costs at most the queue's
//! memory. While gathering a batch the thread polls the queue on a short tick rather than
//! waiting on it, so busy workers do not wake it for every span.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::Export;
use super::span::{Span, string};

/// Spans waiting for the exporter; more are dropped.
const QUEUE: usize = 2048;
/// Spans per export request.
const BATCH: usize = 512;
/// How long the first span of a batch waits for others.
const FLUSH: Duration = Duration::from_secs(1);
/// How often the thread looks at the queue while gathering a batch.
const TICK: Duration = Duration::from_millis(50);

/// The process's span exporter (one per proxy, in `Shared`): the queue to its thread, started
/// with the first span, and its counters.
#[derive(Debug, Default)]
pub struct Tracer {
    queue: OnceLock<Option<mpsc::Sender<Box<Span>>>>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
}

impl Tracer {
    /// Hands a finished span to the exporter, or drops it (counted) if the queue is full.
    pub fn submit(&self, span: Box<Span>) {
        let queue = self.queue.get_or_init(|| start(self.counters.clone()));
        if queue.as_ref().is_none_or(|q| q.try_send(span).is_err()) {
            self.counters.dropped.fetch_add(1, Relaxed);
        }
    }

    /// The counters `/stats/prometheus` shows: name (before `_total`), help, value.
    pub fn metrics(&self) -> [(&'static str, &'static str, u64); 3] {
        let c = &self.counters;
        [
            (
                "wasmesh_tracing_spans_exported",
                "Spans the OTLP collector accepted",
                c.exported.load(Relaxed),
            ),
            (
                "wasmesh_tracing_spans_dropped",
                "Spans dropped: the export queue was full, the export failed, or the collector rejected them",
                c.dropped.load(Relaxed),
            ),
            (
                "wasmesh_tracing_export_failures",
                "OTLP export requests that failed or timed out (their spans are dropped)",
                c.failures.load(Relaxed),
            ),
        ]
    }
}

/// Starts the exporter's thread; `None` (every span dropped) if it cannot start.
fn start(counters: Arc<Counters>) -> Option<mpsc::Sender<Box<Span>>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let spawned = std::thread::Builder::new()
        .name("wasmesh-trace-export".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the trace exporter");
            rt.block_on(run(rx, counters));
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(error) => {
            tracing::error!(%error, "cannot start the trace exporter's thread; spans are dropped");
            None
        }
    }
}

/// Gathers batches and exports them until every sender is gone (the proxy stopped).
async fn run(mut rx: mpsc::Receiver<Box<Span>>, counters: Arc<Counters>) {
    let mut exporter = Exporter::default();
    let mut batch = Vec::with_capacity(BATCH);
    let mut open = true;
    while open {
        // Idle: wait for a span (one wake-up per batch).
        match rx.recv().await {
            Some(span) => batch.push(*span),
            None => break,
        }
        let deadline = Instant::now() + FLUSH;
        loop {
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(span) => batch.push(*span),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            let now = Instant::now();
            if batch.len() >= BATCH || !open || now >= deadline {
                break;
            }
            tokio::time::sleep_until(deadline.min(now + TICK)).await;
        }
        exporter.export(&mut batch, &counters).await;
    }
}

/// The collector's client, made again when the config names another collector.
#[derive(Default)]
struct Exporter {
    client: Option<(String, Duration, TraceServiceClient<Channel>)>,
    /// The last export failed: the next failure is not logged as news.
    failing: bool,
}

impl Exporter {
    /// Exports (or drops) every span of `batch`, leaving it empty.
    async fn export(&mut self, batch: &mut Vec<Span>, counters: &Counters) {
        while let Some(first) = batch.first() {
            // The spans of one config go together (a reload may have changed the collector).
            let n = batch.iter().take_while(|s| s.same_export(first)).count();
            let group: Vec<Span> = batch.drain(..n).collect();
            self.export_group(&group, counters).await;
        }
    }

    async fn export_group(&mut self, group: &[Span], counters: &Counters) {
        let export = group[0].export().clone();
        let n = group.len() as u64;
        let request = request(&export, group);
        let result = match self.client(&export) {
            Ok(client) => {
                match tokio::time::timeout(export.timeout, client.export(request)).await {
                    Ok(Ok(response)) => Ok(response.into_inner()),
                    Ok(Err(status)) => Err(status.to_string()),
                    Err(_) => Err(format!("no answer within {:?}", export.timeout)),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(response) => {
                let rejected = response
                    .partial_success
                    .map_or(0, |p| p.rejected_spans.clamp(0, n as i64) as u64);
                counters.exported.fetch_add(n - rejected, Relaxed);
                counters.dropped.fetch_add(rejected, Relaxed);
                if self.failing {
                    tracing::info!(endpoint = %export.endpoint, "spans are exported again");
                    self.failing = false;
                }
            }
            Err(error) => {
                counters.failures.fetch_add(1, Relaxed);
                counters.dropped.fetch_add(n, Relaxed);
                if self.failing {
                    tracing::debug!(endpoint = %export.endpoint, %error, spans = n, "span export failed");
                } else {
                    tracing::warn!(endpoint = %export.endpoint, %error, spans = n, "span export failed; spans are dropped until the collector answers");
                    self.failing = true;
                }
            }
        }
    }

    fn client(&mut self, export: &Export) -> Result<&mut TraceServiceClient<Channel>, String> {
        let current = self
            .client
            .as_ref()
            .is_some_and(|(e, t, _)| *e == export.endpoint && *t == export.timeout);
        if !current {
            let channel = channel(&export.endpoint, export.timeout)?;
            self.client = Some((
                export.endpoint.clone(),
                export.timeout,
                TraceServiceClient::new(channel),
            ));
        }
        Ok(&mut self.client.as_mut().expect("just made").2)
    }
}

/// One export request: the spans under the resource of their config.
fn request(export: &Export, spans: &[Span]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", export.service_name.clone())],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "wasmesh-proxy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.iter().map(|s| s.to_otlp()).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// A channel to the collector, connected when first used and again after a failure.
/// `https://` collectors get TLS from rustls (ring) verified by the system's roots.
fn channel(endpoint: &str, timeout: Duration) -> Result<Channel, String> {
    let (uri, tls) = match endpoint.strip_prefix("https://") {
        // tonic itself is built without TLS: it is told `http` and the connector does TLS.
        Some(rest) => (format!("http://{rest}"), true),
        None => (endpoint.to_owned(), false),
    };
    let ep = Endpoint::from_shared(uri)
        .map_err(|e| format!("{endpoint:?}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if !tls {
        return Ok(ep.connect_lazy());
    }
    let host = ep.uri().host().unwrap_or_default();
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| format!("{endpoint:?}: {e}"))?;
    let config = crate::external_tls::client_config(
        &crate::config::UpstreamTls {
            mode: crate::config::UpstreamTlsMode::Simple,
            ..Default::default()
        },
        vec![b"h2".to_vec()],
    )?;
    Ok(ep.connect_with_connector_lazy(TlsConnect {
        tls: tokio_rustls::TlsConnector::from(config),
        name,
    }))
}

/// Opens TLS connections to an `https://` collector.
#[derive(Clone)]
struct TlsConnect {
    tls: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tonic::codegen::Service<http::Uri> for TlsConnect {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (tls, name) = (self.tls.clone(), self.name.clone());
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let tcp = TcpStream::connect((host, uri.port_u16().unwrap_or(443))).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(endpoint: String) -> Arc<Export> {
        Arc::new(Export {
            endpoint,
            timeout: Duration::from_millis(500),
            service_name: "svc.ns".into(),
            tags: Vec::new(),
        })
    }

    #[tokio::test]
    async fn a_failed_export_drops_its_batch_and_counts_it() {
        // A port that refuses connections.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = dead.local_addr().unwrap();
        drop(dead);
        let export = export(format!("http://{addr}"));
        let mut batch: Vec<Span> = (0..3).map(|_| Span::test(&export)).collect();
        let counters = Counters::default();
        let started = std::time::Instant::now();
        Exporter::default().export(&mut batch, &counters).await;
        assert!(batch.is_empty());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(counters.failures.load(Relaxed), 1);
        assert_eq!(counters.dropped.load(Relaxed), 3);
        assert_eq!(counters.exported.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn a_hanging_collector_times_out() {
        // Accepts connections and never says a word.
        let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let export = export(format!("http://{}", hang.local_addr().unwrap()));
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = hang.accept().await {
                open.push(s);
            }
        });
        let mut batch = vec![Span::test(&export)];
        let counters = Counters::default();
        let started = std::time::Instant::now();
        Exporter::default().export(&mut batch, &counters).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(counters.failures.load(Relaxed), 1);
        assert_eq!(counters.dropped.load(Relaxed), 1);
        held.abort();
    }

    #[test]
    fn a_full_queue_drops_spans_without_waiting() {
        let (tx, _rx) = mpsc::channel(1);
        let tracer = Tracer {
            queue: OnceLock::from(Some(tx)),
            counters: Arc::default(),
        };
        let export = export("http://127.0.0.1:1".into());
        for _ in 0..3 {
            tracer.submit(Box::new(Span::test(&export)));
        }
        let [_, (dropped, _, n), _] = tracer.metrics();
        assert_eq!((dropped, n), ("wasmesh_tracing_spans_dropped", 2));
    }

    #[test]
    fn groups_spans_by_config_in_one_request_each() {
        let a = export("http://127.0.0.1:1".into());
        let b = export("http://127.0.0.1:2".into());
        let spans = [Span::test(&a), Span::test(&a), Span::test(&b)];
        assert!(spans[0].same_export(&spans[1]));
        assert!(!spans[1].same_export(&spans[2]));
        let req = request(&a, &spans[..2]);
        assert_eq!(req.resource_spans.len(), 1);
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 2);
        let resource = req.resource_spans[0].resource.as_ref().unwrap();
        assert_eq!(resource.attributes[0].key, "service.name");
    }
}
