//! Istio's standard metrics, recorded by every listener with a `traffic_direction` (inbound:
//! `reporter="destination"`, outbound: `reporter="source"`): `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes` for
//! HTTP and gRPC; `istio_tcp_*` for `tcp_proxy` listeners. Labels are Istio's, all of them
//! (Kiali skips series that lack any), typed (`metrics_labels`).
//!
//! The cost per request is a thread-local lookup by a small key (ids of the peer, the caller's
//! certificate identity and the target, the response code, flags and gRPC status) and a few
//! stores into the worker's own shard of the series (`metrics_worker`, `metrics_family`). A
//! key seen for the first time on a worker builds the labels and asks the shared family
//! (`metrics_store`, in `worker::Shared`, so reloads keep the counts), which holds at most
//! `MAX_SERIES` series: past that, requests are counted in
//! `wasmesh_istio_series_overflow_total` instead.
//!
//! This module is the glue between the request path (connections, workers, snapshots) and
//! the stores below it, which know none of those.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderMap;
use http::uri::Authority;

use super::metrics_family::{HttpShard, Series, TcpShard};
use super::metrics_labels::{Hop, HttpLabels, Label, Reporter, WorkloadLabels};
use super::metrics_store::IstioMetrics;
use super::metrics_worker::{self as worker, HttpKey, IdentityHints, Peer, Plan, Target, TcpKey};
use super::peer_metadata::{LocalHeaders, MAX_VALUE_LEN};
use crate::conn::ConnCtx;
use crate::snapshot::Snapshot;
use crate::stats::{ResponseFlag, ResponseFlags};
use crate::upstream::Cluster;
use crate::worker::{Shared, Worker};

/// What a request's telemetry needs to know, gathered as it passes the phases. Empty (and
/// free) on listeners without a `traffic_direction`.
#[derive(Default)]
pub(crate) struct RequestTelemetry {
    /// An `Rc` around the `Arc`: each request clones it without touching a count that all
    /// workers share.
    #[allow(clippy::redundant_allocation)]
    on: Option<(Rc<Arc<Plan>>, Reporter)>,
    /// The other end (source side: the destination, from the response; destination side: the
    /// caller, from the request of a verified mTLS peer).
    peer: Option<Rc<Peer>>,
    /// The service, once a cluster is chosen.
    target: Option<Rc<Target>>,
    /// The host the request named: it names the service only where no cluster does, so it
    /// is looked up only then.
    host: Option<Authority>,
    /// Destination side: the request carried peer metadata, so the response carries ours.
    pub(super) asked: bool,
    /// A gRPC request, whose response's `grpc-status` is noted.
    grpc: bool,
    grpc_status: Option<u8>,
}

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

impl RequestTelemetry {
    /// For a request on `conn` under `snapshot` (`grpc`: its content type says gRPC).
    pub(crate) fn new(conn: &ConnCtx, snapshot: &Snapshot, grpc: bool) -> RequestTelemetry {
        let reporter = snapshot
            .bootstrap
            .listeners
            .get(conn.listener)
            .and_then(|l| l.traffic_direction);
        if reporter.is_none() {
            return RequestTelemetry::default();
        }
        let shared = &conn.worker.shared;
        let plan = worker::with(shared.istio.id(), |w| plan(w, shared, snapshot));
        let reporter = plan.reporters.get(conn.listener).copied().flatten();
        RequestTelemetry {
            on: reporter.map(|r| (plan, r)),
            grpc,
            ..RequestTelemetry::default()
        }
    }

    pub(super) fn reporter(&self) -> Option<Reporter> {
        self.on.as_ref().map(|(_, r)| *r)
    }

    pub(super) fn local_headers(&self) -> Option<&LocalHeaders> {
        self.on.as_ref().and_then(|(p, _)| p.headers.as_ref())
    }

    /// Runs `f` on this worker's state, which `new` set up for this proxy on this thread.
    fn with_worker<R>(&self, f: impl FnOnce(&mut worker::WorkerState, &Plan) -> R) -> Option<R> {
        let (plan, _) = self.on.as_ref()?;
        worker::with_current(|w| f(w, plan))
    }

    pub(super) fn set_host(&mut self, host: Option<&Authority>) {
        self.host = host.cloned();
    }

    /// The target the request's host names (an absurdly long one names none).
    fn host_target(&self) -> Option<Rc<Target>> {
        let host = self.host.as_ref().map_or("", Authority::host);
        let host = if host.len() > MAX_VALUE_LEN { "" } else { host };
        self.with_worker(|w, plan| w.host_target(plan, host))
    }

    pub(super) fn set_cluster(&mut self, cluster: &Cluster) {
        let by_host = match cluster.config.service {
            Some(_) => None,
            None => self.host_target(),
        };
        self.target = self
            .with_worker(|w, _| w.cluster_target(cluster.id, &cluster.config, by_host.as_deref()))
            .or(by_host);
    }

    /// The peer's `x-envoy-peer-metadata` (ignored if it does not decode).
    pub(super) fn set_peer(&mut self, value: &[u8]) {
        self.peer = self.with_worker(|w, plan| w.peer(plan, value)).flatten();
    }

    /// Notes `grpc-status` from a response head or trailers.
    pub(crate) fn note_grpc_status(&mut self, headers: &HeaderMap) {
        if self.grpc
            && self.on.is_some()
            && let Some(v) = headers.get(&GRPC_STATUS)
        {
            self.grpc_status = std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| s.parse().ok());
        }
    }
}

/// This worker's copy of the plan of `snapshot`.
#[allow(clippy::redundant_allocation)]
fn plan(w: &mut worker::WorkerState, shared: &Shared, snapshot: &Snapshot) -> Rc<Arc<Plan>> {
    w.plan(snapshot.version, || {
        shared.istio.plan(snapshot.version, || {
            let identity = IdentityHints {
                spiffe_id: shared.identity.svid().map(|s| s.spiffe_id.clone()),
                trust_domain: shared.identity.trust().map(|t| t.trust_domain.clone()),
            };
            Plan::build(&snapshot.bootstrap, snapshot.version, identity)
        })
    })
}

/// How a request ended.
pub(crate) struct Finished {
    pub status: u16,
    pub flags: ResponseFlags,
    pub grpc: bool,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub elapsed: Duration,
}

/// Records a finished request in Istio's HTTP metrics.
pub(crate) fn record_request(t: &RequestTelemetry, done: &Finished, conn: &ConnCtx) {
    let Some((plan, reporter)) = &t.on else {
        return;
    };
    let metrics = &conn.worker.shared.istio;
    let mtls = conn.peer_uri_san.is_some();
    // A request that reached no cluster (a local reply) names its service by its host.
    let target = t.target.clone().or_else(|| t.host_target());
    worker::with(metrics.id(), |w| {
        let principal = match (reporter, &conn.peer_uri_san) {
            (Reporter::Destination, Some(san)) => w.principal(san),
            _ => 0,
        };
        let key = HttpKey {
            reporter: *reporter,
            peer: t.peer.as_ref().map_or(0, |p| p.id),
            principal,
            target: target.as_ref().map_or(0, |t| t.id),
            mtls,
            grpc: done.grpc,
            code: done.status,
            grpc_status: t.grpc_status.filter(|_| done.grpc),
            flags: done.flags,
        };
        record_http(metrics, w, key, done, || HttpLabels {
            traffic: Hop {
                protocol: if done.grpc { "grpc" } else { "http" },
                flags: done.flags,
                ..hop(plan, *reporter, t.peer.as_deref(), target.as_deref(), conn)
            }
            .labels(),
            response_code: done.status,
            grpc_response_status: key.grpc_status,
        });
    });
}

/// Records into the series of `key`: found in the worker's cache, or (the first time on this
/// worker) in the shared family by its labels; counted as overflow past the cap.
fn record_http(
    metrics: &IstioMetrics,
    w: &mut worker::WorkerState,
    key: HttpKey,
    done: &Finished,
    labels: impl FnOnce() -> HttpLabels,
) {
    let record = |series: &Option<Series<HttpShard>>| match series {
        Some(s) => s
            .local()
            .record(done.elapsed, done.bytes_received, done.bytes_sent),
        None => metrics.overflow.local().inc(),
    };
    if let Some(series) = w.http.get(&key) {
        return record(series);
    }
    let series = metrics.http.get_or_create(labels());
    record(&series);
    w.make_room();
    w.http.insert(key, series);
}

/// The other end of a hop that says nothing of itself.
static UNKNOWN_PEER: std::sync::LazyLock<WorkloadLabels> =
    std::sync::LazyLock::new(WorkloadLabels::unknown);

/// The labels of a hop, but for the protocol and flags.
fn hop<'a>(
    plan: &'a Plan,
    reporter: Reporter,
    peer: Option<&'a Peer>,
    target: Option<&'a Target>,
    conn: &ConnCtx,
) -> Hop<'a> {
    static UNKNOWN_SERVICE: std::sync::LazyLock<super::metrics_labels::ServiceLabels> =
        std::sync::LazyLock::new(super::metrics_labels::ServiceLabels::unknown);
    let unknown = super::metrics_labels::unknown;
    let other = peer.map_or(&*UNKNOWN_PEER, |p| &p.labels);
    let local_principal = plan.principal.clone();
    let (source, destination, source_principal, destination_principal, mtls) = match reporter {
        // The caller: it speaks mTLS with the mesh's identities only to mesh clusters.
        Reporter::Source => {
            let mesh = target.is_some_and(|t| t.mesh);
            let destination_principal = target
                .and_then(|t| t.principal.clone())
                .or_else(|| peer.and_then(|p| p.principal.clone()))
                .filter(|_| mesh);
            (
                &plan.local,
                other,
                local_principal.filter(|_| mesh),
                destination_principal,
                false,
            )
        }
        // The callee: the caller's identity is its verified certificate's, never a header's.
        Reporter::Destination => {
            let mtls = conn.peer_uri_san.is_some();
            (
                other,
                &plan.local,
                conn.peer_uri_san.as_deref().map(Label::from),
                local_principal.filter(|_| mtls),
                mtls,
            )
        }
    };
    Hop {
        reporter,
        source,
        source_principal: source_principal.unwrap_or_else(unknown),
        destination,
        destination_principal: destination_principal.unwrap_or_else(unknown),
        service: target.map_or(&*UNKNOWN_SERVICE, |t| &t.service),
        protocol: "http",
        flags: ResponseFlags::default(),
        mtls,
    }
}

/// One connection of a `tcp_proxy` listener in Istio's TCP metrics: opened when made, bytes
/// counted as they pass, closed when dropped.
pub(crate) struct TcpTracker {
    series: Series<TcpShard>,
}

impl TcpTracker {
    /// Starts tracking a connection of `listener` to `cluster` (flags: how it failed, if it
    /// did); none when the listener reports nothing.
    pub(crate) fn open(
        worker: &Rc<Worker>,
        listener: usize,
        cluster: &Cluster,
        flags: ResponseFlags,
    ) -> Option<TcpTracker> {
        let snapshot = worker.snapshot();
        snapshot
            .bootstrap
            .listeners
            .get(listener)?
            .traffic_direction?;
        let shared = &worker.shared;
        let metrics = &shared.istio;
        let series = worker::with(metrics.id(), |w| {
            let plan = plan(w, shared, &snapshot);
            let reporter = plan.reporters.get(listener).copied().flatten()?;
            let target = w.cluster_target(cluster.id, &cluster.config, None);
            let key = TcpKey {
                reporter,
                target: target.id,
                flags,
            };
            if let Some(series) = w.tcp.get(&key) {
                return Some(series.clone());
            }
            let hop = Hop {
                protocol: "tcp",
                flags,
                ..tcp_hop(&plan, reporter, &target)
            };
            let series = metrics.tcp.get_or_create(hop.labels());
            w.make_room();
            w.tcp.insert(key, series.clone());
            Some(series)
        });
        let Some(series) = series.flatten() else {
            metrics.overflow.local().inc();
            return None;
        };
        series.local().opened.inc();
        Some(TcpTracker { series })
    }

    /// A connection that failed before any byte passed (`UH`, `UF`): opened and closed.
    pub(crate) fn failed(
        worker: &Rc<Worker>,
        listener: usize,
        cluster: &Cluster,
        flag: ResponseFlag,
    ) {
        let mut flags = ResponseFlags::default();
        flags.insert(flag);
        drop(TcpTracker::open(worker, listener, cluster, flags));
    }

    pub(crate) fn received(&self, n: usize) {
        self.series.local().received.add(n as u64);
    }

    pub(crate) fn sent(&self, n: usize) {
        self.series.local().sent.add(n as u64);
    }
}

impl Drop for TcpTracker {
    fn drop(&mut self) {
        self.series.local().closed.inc();
    }
}

/// TCP carries no peer metadata here: the other end is `unknown`.
fn tcp_hop<'a>(plan: &'a Plan, reporter: Reporter, target: &'a Target) -> Hop<'a> {
    let unknown = super::metrics_labels::unknown;
    let local_principal = plan
        .principal
        .clone()
        .filter(|_| target.mesh)
        .unwrap_or_else(unknown);
    let (source, destination, source_principal, destination_principal) = match reporter {
        Reporter::Source => (
            &plan.local,
            &*UNKNOWN_PEER,
            local_principal,
            target
                .principal
                .clone()
                .filter(|_| target.mesh)
                .unwrap_or_else(unknown),
        ),
        Reporter::Destination => (&*UNKNOWN_PEER, &plan.local, unknown(), unknown()),
    };
    Hop {
        reporter,
        source,
        source_principal,
        destination,
        destination_principal,
        service: &target.service,
        protocol: "tcp",
        flags: ResponseFlags::default(),
        mtls: false,
    }
}

pin_project_lite::pin_project! {
    /// The downstream side of a `tcp_proxy` connection, counting bytes as they pass.
    pub(crate) struct Counted<S> {
        #[pin]
        inner: S,
        tracker: Option<TcpTracker>,
    }
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, tracker: Option<TcpTracker>) -> Self {
        Counted { inner, tracker }
    }
}

impl<S: tokio::io::AsyncRead> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if let Some(t) = this.tracker {
            t.received(buf.filled().len() - before);
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        if let (Some(t), std::task::Poll::Ready(Ok(n))) = (this.tracker, &polled) {
            t.sent(*n);
        }
        polled
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::super::metrics_labels::ServiceLabels;
    use super::*;

    fn done(status: u16) -> Finished {
        Finished {
            status,
            flags: ResponseFlags::default(),
            grpc: false,
            bytes_received: 0,
            bytes_sent: 1500,
            elapsed: Duration::from_millis(7),
        }
    }

    fn key(code: u16) -> HttpKey {
        HttpKey {
            reporter: Reporter::Source,
            peer: 0,
            principal: 0,
            target: 0,
            mtls: false,
            grpc: false,
            code,
            grpc_status: None,
            flags: ResponseFlags::default(),
        }
    }

    fn labels(code: u16) -> HttpLabels {
        let local = WorkloadLabels::derive("client-0", "client", "apps", "c1", |k| {
            (k == "app").then_some("client")
        });
        let hop = Hop {
            reporter: Reporter::Source,
            source: &local,
            source_principal: super::super::metrics_labels::unknown(),
            destination: &WorkloadLabels::unknown(),
            destination_principal: super::super::metrics_labels::unknown(),
            service: &ServiceLabels::from_host("web"),
            protocol: "http",
            flags: ResponseFlags::default(),
            mtls: false,
        };
        HttpLabels {
            traffic: hop.labels(),
            response_code: code,
            grpc_response_status: None,
        }
    }

    fn scrape(metrics: &IstioMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn series_past_the_cap_are_counted_as_overflow_not_made() {
        let metrics = Arc::new(IstioMetrics::with_cap(1, 3));
        worker::with(metrics.id(), |w| {
            for code in [200, 201, 202, 203, 204, 200, 203, 200] {
                record_http(&metrics, w, key(code), &done(code), || labels(code));
            }
        });
        let text = scrape(&metrics);
        let requests: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .collect();
        assert_eq!(requests.len(), 3, "{text}");
        assert!(
            requests[0].starts_with(
                "istio_requests_total{reporter=\"source\",source_workload=\"client\",\
                 source_workload_namespace=\"apps\",source_principal=\"unknown\",\
                 source_app=\"client\",source_version=\"unknown\",\
                 source_canonical_service=\"client\",source_canonical_revision=\"latest\",\
                 source_cluster=\"c1\",destination_workload=\"unknown\","
            ),
            "{}",
            requests[0]
        );
        assert!(
            requests[0].ends_with(
                "destination_service=\"web\",destination_service_name=\"web\",\
                 destination_service_namespace=\"unknown\",\
                 destination_canonical_service=\"unknown\",\
                 destination_canonical_revision=\"latest\",destination_cluster=\"unknown\",\
                 request_protocol=\"http\",response_flags=\"-\",\
                 connection_security_policy=\"unknown\",response_code=\"200\",\
                 grpc_response_status=\"\"} 3"
            ),
            "{}",
            requests[0]
        );
        assert!(requests[1].contains("response_code=\"201\"") && requests[1].ends_with(" 1"));
        assert!(requests[2].contains("response_code=\"202\"") && requests[2].ends_with(" 1"));
        // 203, 204 and 203 again: no series for them, each counted.
        assert!(
            text.contains("\nwasmesh_istio_series_overflow_total 3\n"),
            "{text}"
        );
        assert_eq!(metrics.http.len(), 3);
    }

    #[test]
    fn histograms_use_istios_buckets() {
        let metrics = Arc::new(IstioMetrics::with_cap(2, 10));
        worker::with(metrics.id(), |w| {
            for _ in 0..2 {
                record_http(&metrics, w, key(200), &done(200), || labels(200));
            }
        });
        let text = scrape(&metrics);
        assert!(
            text.contains("# TYPE istio_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE istio_request_duration_milliseconds histogram\n"),
            "{text}"
        );
        let bucket = |name: &str, le: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains(&format!(",le=\"{le}\"}}")))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_else(|| panic!("no {name} le={le} in {text}"))
                .to_owned()
        };
        let duration = "istio_request_duration_milliseconds_bucket{";
        assert_eq!(bucket(duration, "5"), "0");
        assert_eq!(bucket(duration, "10"), "2", "7 ms is in (5, 10]");
        assert_eq!(bucket(duration, "+Inf"), "2");
        let response = "istio_response_bytes_bucket{";
        assert_eq!(bucket(response, "1000"), "0");
        assert_eq!(bucket(response, "10000"), "2", "1500 bytes");
        assert_eq!(bucket("istio_request_bytes_bucket{", "1"), "2");
        let sum = text
            .lines()
            .find(|l| l.starts_with("istio_response_bytes_sum{"))
            .unwrap();
        assert!(sum.ends_with(" 3000.0"), "{sum}");
        for name in [
            "istio_tcp_sent_bytes_total",
            "istio_tcp_received_bytes_total",
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} counter\n")), "{text}");
        }
    }
}
