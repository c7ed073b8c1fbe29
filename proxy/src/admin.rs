//! The admin server (Envoy-style): `/ready`, `/stats/prometheus`, `/config_dump`, `/clusters`,
//! `/server_info`, and `POST /quitquitquit`. It runs on its own thread, off the workers.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config_source::ConfigSource;
use crate::stats::{ClusterShard, ListenerShard, ResponseFlag, merge_histograms};
use crate::worker::Shared;

/// Serves the admin API until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    source: Arc<ConfigSource>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MeshCollector {
        shared: shared.clone(),
        source: source.clone(),
    }));
    shared.istio.register(&mut registry);
    let registry = Arc::new(registry);
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        let source = source.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let reload = req.uri().path() == "/config_reload" && req.method() == Method::POST;
                let response = (!reload).then(|| handle(&req, &shared, &source, &registry));
                let source = source.clone();
                async move {
                    let response = match response {
                        Some(r) => r,
                        // Reloading compiles and starts plugins: off the admin runtime.
                        None => {
                            match tokio::task::spawn_blocking(move || source.reload_file()).await {
                                Ok(Ok(version)) => reply(
                                    StatusCode::OK,
                                    "text/plain",
                                    format!("OK version {version}\n"),
                                ),
                                Ok(Err(e)) => reply(
                                    StatusCode::BAD_REQUEST,
                                    "text/plain",
                                    format!("rejected: {e}\n"),
                                ),
                                Err(e) => reply(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "text/plain",
                                    format!("{e}\n"),
                                ),
                            }
                        }
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn handle(
    req: &Request<Incoming>,
    shared: &Shared,
    source: &ConfigSource,
    registry: &Registry,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let json_format = query.split('&').any(|p| p == "format=json");
    let post_only = matches!(
        path,
        "/quitquitquit" | "/drain_listeners" | "/config_reload"
    );
    if post_only && req.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "This endpoint requires POST.\n".into(),
        );
    }
    match path {
        "/ready" => {
            if shared.is_draining() {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "DRAINING\n".into())
            } else {
                reply(StatusCode::OK, "text/plain", "LIVE\n".into())
            }
        }
        "/stats/prometheus" => {
            let mut text = String::new();
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, registry);
            reply(StatusCode::OK, prometheus_client::encoding::prometheus_text::CONTENT_TYPE, text)
        }
        "/certs" => reply(
            StatusCode::OK,
            "application/json",
            format!("{:#}\n", crate::identity::certs_json(&shared.identity)),
        ),
        "/config_dump" => reply(StatusCode::OK, "application/json", config_dump(shared)),
        "/clusters" if json_format => reply(StatusCode::OK, "application/json", clusters_json(shared)),
        "/clusters" => reply(StatusCode::OK, "text/plain", clusters_text(shared)),
        "/server_info" => {
            let info = json!({
                "version": env!("CARGO_PKG_VERSION"),
                "state": if shared.is_draining() { "DRAINING" } else { "LIVE" },
                "uptime_seconds": shared.started.elapsed().as_secs(),
                "workers": shared.workers,
                "config_version": shared.snapshot().version,
                "last_reload_error": source.last_error().map(|e| e.to_string()),
            });
            reply(StatusCode::OK, "application/json", format!("{info:#}\n"))
        }
        "/quitquitquit" | "/drain_listeners" => {
            shared.begin_drain();
            reply(StatusCode::OK, "text/plain", "OK\n".into())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin commands are:\n  /ready\n  /stats/prometheus\n  /config_dump\n  /clusters[?format=json]\n  /server_info\n  POST /quitquitquit\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid admin response")
}

/// The bootstrap in effect, in the shape of Envoy's `/config_dump` (type-tagged `configs`).
fn config_dump(shared: &Shared) -> String {
    let snapshot = shared.snapshot();
    let b = &snapshot.bootstrap;
    let dump = json!({
        "configs": [
            {
                "@type": "type.googleapis.com/wasmesh.admin.v1.BootstrapConfigDump",
                "version_info": snapshot.version.to_string(),
                "bootstrap": {
                    "workers": shared.workers,
                    "admin": b.admin,
                    "access_log": b.access_log,
                    "drain_timeout": b.drain_timeout,
                },
            },
            {
                "@type": "type.googleapis.com/wasmesh.admin.v1.ListenersConfigDump",
                "version_info": snapshot.version.to_string(),
                "static_listeners": b.listeners,
            },
            {
                "@type": "type.googleapis.com/wasmesh.admin.v1.ClustersConfigDump",
                "version_info": snapshot.version.to_string(),
                "static_clusters": b.clusters,
            },
        ]
    });
    format!("{dump:#}\n")
}

/// Envoy's `/clusters` text: `cluster::host::stat::value` lines.
fn clusters_text(shared: &Shared) -> String {
    let snapshot = shared.snapshot();
    let mut out = String::new();
    for c in &snapshot.clusters {
        let cb = &c.config.circuit_breakers;
        let _ = writeln!(
            out,
            "{}::default_priority::max_connections::{}",
            c.name, cb.max_connections
        );
        let _ = writeln!(
            out,
            "{}::default_priority::max_pending_requests::{}",
            c.name, cb.max_pending_requests
        );
        let _ = writeln!(
            out,
            "{}::default_priority::max_requests::{}",
            c.name, cb.max_requests
        );
        let _ = writeln!(
            out,
            "{}::default_priority::max_retries::{}",
            c.name, cb.max_retries
        );
        let now = crate::upstream::now_ms();
        for e in c.endpoints_now().iter() {
            let host = format!("{}::{}", c.name, e.addr);
            let _ = writeln!(out, "{host}::cx_active::{}", e.cx_active.load(Relaxed));
            let _ = writeln!(
                out,
                "{host}::cx_connect_fail::{}",
                e.cx_connect_fail.load(Relaxed)
            );
            let _ = writeln!(out, "{host}::rq_active::{}", e.rq_active.load(Relaxed));
            let _ = writeln!(out, "{host}::rq_error::{}", e.rq_error.load(Relaxed));
            let _ = writeln!(out, "{host}::rq_total::{}", e.rq_total.load(Relaxed));
            let health = if e.is_healthy(now) {
                "healthy"
            } else {
                "/failed_outlier_check"
            };
            let _ = writeln!(out, "{host}::health_flags::{health}");
        }
    }
    out
}

fn clusters_json(shared: &Shared) -> String {
    let snapshot = shared.snapshot();
    let now = crate::upstream::now_ms();
    let statuses: Vec<_> = snapshot
        .clusters
        .iter()
        .map(|c| {
            let hosts: Vec<_> = c
                .endpoints_now()
                .iter()
                .map(|e| {
                    json!({
                        "address": e.addr.to_string(),
                        "stats": {
                            "cx_active": e.cx_active.load(Relaxed),
                            "cx_connect_fail": e.cx_connect_fail.load(Relaxed),
                            "rq_active": e.rq_active.load(Relaxed),
                            "rq_error": e.rq_error.load(Relaxed),
                            "rq_total": e.rq_total.load(Relaxed),
                        },
                        "health_status": { "eds_health_status": if e.is_healthy(now) { "HEALTHY" } else { "UNHEALTHY" } },
                    })
                })
                .collect();
            json!({ "name": &*c.name, "circuit_breakers": c.config.circuit_breakers, "host_statuses": hosts })
        })
        .collect();
    format!("{:#}\n", json!({ "cluster_statuses": statuses }))
}

/// Plugin VM health, and the metrics plugins define (under the names they give them).
fn encode_wasm(encoder: &mut DescriptorEncoder, shared: &Shared) -> std::fmt::Result {
    let stats = shared.host.all_stats();
    let labels: Vec<[(&str, &str); 1]> = stats
        .iter()
        .map(|(name, _)| [("plugin", name.as_str())])
        .collect();
    let series = |f: &dyn Fn(&wasmesh_host::PluginStats) -> u64| -> Vec<(&[(&str, &str)], u64)> {
        stats
            .iter()
            .zip(&labels)
            .map(|((_, s), l)| (&l[..], f(s)))
            .collect()
    };
    counter(
        encoder,
        "wasmesh_wasm_vm_failures",
        "Plugin VMs that failed (trap, deadline, memory)",
        &series(&|s| s.failures.load(Relaxed)),
    )?;
    counter(
        encoder,
        "wasmesh_wasm_vm_reloads",
        "Failed plugin VMs replaced (FAIL_RELOAD)",
        &series(&|s| s.reloads.load(Relaxed)),
    )?;
    counter(
        encoder,
        "wasmesh_wasm_fail_closed_requests",
        "Requests answered 503 because a plugin failed",
        &series(&|s| s.fail_closed_requests.load(Relaxed)),
    )?;
    counter(
        encoder,
        "wasmesh_wasm_fail_open_requests",
        "Requests that skipped a failed plugin (FAIL_OPEN)",
        &series(&|s| s.fail_open_requests.load(Relaxed)),
    )?;
    let memory: Vec<(&[(&str, &str)], i64)> = stats
        .iter()
        .zip(&labels)
        .map(|((_, s), l)| (&l[..], s.memory_bytes.load(Relaxed) as i64))
        .collect();
    gauge(
        encoder,
        "wasmesh_wasm_vm_memory_bytes",
        "Linear memory of a plugin VM (last seen on any worker)",
        &memory,
    )?;
    for m in shared.host.shared.metrics.all() {
        let name: String = m
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let value = m.value.load(Relaxed);
        match m.kind {
            wasmesh_host::abi::MetricType::Counter => counter(
                encoder,
                &name,
                "Defined by a plugin",
                &[(&[], value.max(0) as u64)],
            )?,
            wasmesh_host::abi::MetricType::Gauge => {
                gauge(encoder, &name, "Defined by a plugin", &[(&[], value)])?
            }
            wasmesh_host::abi::MetricType::Histogram => {
                let mut metric = encoder.encode_descriptor(
                    &name,
                    "Defined by a plugin",
                    None,
                    MetricType::Histogram,
                )?;
                let buckets: Vec<(f64, u64)> = m
                    .buckets
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        (
                            if i == 31 {
                                f64::INFINITY
                            } else {
                                (1u64 << i) as f64
                            },
                            b.load(Relaxed),
                        )
                    })
                    .collect();
                metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    m.sum.load(Relaxed) as f64,
                    value as u64,
                    &buckets,
                    None,
                )?;
            }
        }
    }
    Ok(())
}

/// A cluster counter: name, help, and how to read it from a shard.
type ClusterCounter<'a> = (&'a str, &'a str, &'a dyn Fn(&ClusterShard) -> u64);
/// A cluster gauge: name, help, and how to read it from the cluster.
type ClusterGauge<'a> = (
    &'a str,
    &'a str,
    &'a dyn Fn(&crate::upstream::Cluster) -> u32,
);

/// Reads the sharded counters at scrape time.
#[derive(Debug)]
struct MeshCollector {
    shared: Arc<Shared>,
    source: Arc<ConfigSource>,
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(&[(&str, &str)], u64)],
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(&[(&str, &str)], i64)],
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for MeshCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let shared = &self.shared;
        let snapshot = shared.snapshot();

        // Downstream, per listener.
        let listeners: Vec<_> = shared.listener_stats.iter().collect();
        let sum_l = |i: usize, f: &dyn Fn(&ListenerShard) -> u64| listeners[i].shards.sum(f);
        let names: Vec<[(&str, &str); 1]> =
            listeners.iter().map(|l| [("listener", &*l.name)]).collect();
        let per_listener = |f: &dyn Fn(&ListenerShard) -> u64| -> Vec<(&[(&str, &str)], u64)> {
            (0..listeners.len())
                .map(|i| (&names[i][..], sum_l(i, f)))
                .collect()
        };
        counter(
            &mut encoder,
            "wasmesh_downstream_cx",
            "Downstream connections accepted",
            &per_listener(&|s| s.cx_total.get()),
        )?;
        counter(
            &mut encoder,
            "wasmesh_downstream_cx_overflow",
            "Downstream connections refused by max_connections",
            &per_listener(&|s| s.cx_overflow.get()),
        )?;
        counter(
            &mut encoder,
            "wasmesh_downstream_tls_handshake",
            "Downstream TLS handshakes completed",
            &per_listener(&|s| s.tls_handshake.get()),
        )?;
        counter(
            &mut encoder,
            "wasmesh_downstream_tls_error",
            "Downstream TLS handshakes that failed or timed out",
            &per_listener(&|s| s.tls_error.get()),
        )?;
        counter(
            &mut encoder,
            "wasmesh_downstream_tls_plaintext_refused",
            "Plaintext connections refused by a STRICT mTLS or a gateway TLS listener",
            &per_listener(&|s| s.tls_plaintext_refused.get()),
        )?;
        counter(
            &mut encoder,
            "wasmesh_downstream_rq_rejected",
            "Requests refused as malformed or ambiguous (400)",
            &per_listener(&|s| s.rq_rejected.get()),
        )?;
        counter(
            &mut encoder,
            "wasmesh_downstream_rq_too_many_premature_resets",
            "HTTP/2 connections sent away for resetting most of their streams early",
            &per_listener(&|s| s.rq_too_many_premature_resets.get()),
        )?;
        counter(
            &mut encoder,
            "wasmesh_downstream_cx_control_frame_flood",
            "HTTP/2 connections sent away for flooding PING or SETTINGS frames",
            &per_listener(&|s| s.cx_control_frame_flood.get()),
        )?;
        let active: Vec<(&[(&str, &str)], i64)> = (0..listeners.len())
            .map(|i| {
                (
                    &names[i][..],
                    shared.listener_cx_active[i].load(Relaxed) as i64,
                )
            })
            .collect();
        gauge(
            &mut encoder,
            "wasmesh_downstream_cx_active",
            "Downstream connections open",
            &active,
        )?;

        // Requests by listener and response code.
        let mut codes = Vec::new();
        for (i, l) in listeners.iter().enumerate() {
            for code in 100..600usize {
                let n = l.shards.sum(|s| s.rq_by_code[code].get());
                if n > 0 {
                    codes.push((i, code.to_string(), n));
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "wasmesh_downstream_rq",
                "Downstream requests by response code",
                None,
                MetricType::Counter,
            )?;
            for (i, code, n) in &codes {
                let labels = [
                    ("listener", &*listeners[*i].name),
                    ("response_code", code.as_str()),
                ];
                ConstCounter::new(*n).encode(metric.encode_family(&labels)?)?;
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "wasmesh_downstream_rq_flags",
                "Downstream requests by Envoy response flag",
                None,
                MetricType::Counter,
            )?;
            for l in &listeners {
                for flag in ResponseFlag::ALL {
                    let n = l.shards.sum(|s| s.flags[flag as usize].get());
                    if n > 0 {
                        let labels = [("listener", &*l.name), ("response_flags", flag.code())];
                        ConstCounter::new(n).encode(metric.encode_family(&labels)?)?;
                    }
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "wasmesh_downstream_rq_time_milliseconds",
                "Downstream request duration, first byte in to last byte out",
                None,
                MetricType::Histogram,
            )?;
            for l in &listeners {
                let (sum, count, buckets) = merge_histograms(l.shards.iter().map(|s| &s.rq_time));
                let labels = [("listener", &*l.name)];
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum, count, &buckets, None,
                    )?;
            }
        }

        // Upstream, per cluster.
        let clusters = &snapshot.clusters;
        let cnames: Vec<[(&str, &str); 1]> =
            clusters.iter().map(|c| [("cluster", &*c.name)]).collect();
        let per_cluster = |f: &dyn Fn(&ClusterShard) -> u64| -> Vec<(&[(&str, &str)], u64)> {
            clusters
                .iter()
                .enumerate()
                .map(|(i, c)| (&cnames[i][..], c.stats.sum(f)))
                .collect()
        };
        let counters: [ClusterCounter; 13] = [
            ("wasmesh_upstream_rq", "Upstream requests", &|s| {
                s.rq_total.get()
            }),
            ("wasmesh_upstream_cx", "Upstream connections opened", &|s| {
                s.cx_total.get()
            }),
            (
                "wasmesh_upstream_cx_connect_fail",
                "Upstream connect failures",
                &|s| s.cx_connect_fail.get(),
            ),
            (
                "wasmesh_upstream_cx_connect_timeout",
                "Upstream connect timeouts",
                &|s| s.cx_connect_timeout.get(),
            ),
            (
                "wasmesh_upstream_cx_overflow",
                "Times max_connections was reached",
                &|s| s.cx_overflow.get(),
            ),
            (
                "wasmesh_upstream_rq_pending_overflow",
                "Requests refused by max_pending_requests (UO)",
                &|s| s.rq_pending_overflow.get(),
            ),
            (
                "wasmesh_upstream_rq_overflow",
                "Requests refused by max_requests (UO)",
                &|s| s.rq_overflow.get(),
            ),
            (
                "wasmesh_upstream_rq_timeout",
                "Requests that hit the route timeout (UT)",
                &|s| s.rq_timeout.get(),
            ),
            (
                "wasmesh_upstream_rq_per_try_timeout",
                "Attempts that hit the per-try timeout",
                &|s| s.rq_per_try_timeout.get(),
            ),
            ("wasmesh_upstream_rq_retry", "Retries", &|s| {
                s.rq_retry.get()
            }),
            (
                "wasmesh_upstream_rq_retry_success",
                "Requests that succeeded after a retry",
                &|s| s.rq_retry_success.get(),
            ),
            (
                "wasmesh_upstream_rq_retry_overflow",
                "Retries refused by max_retries or the retry budget",
                &|s| s.rq_retry_overflow.get(),
            ),
            (
                "wasmesh_upstream_rq_retry_limit_exceeded",
                "Requests that ran out of retries (URX)",
                &|s| s.rq_retry_limit_exceeded.get(),
            ),
        ];
        for (name, help, f) in counters {
            counter(&mut encoder, name, help, &per_cluster(f))?;
        }
        counter(
            &mut encoder,
            "wasmesh_upstream_rq_reset",
            "Upstream requests reset before a response",
            &per_cluster(&|s| s.rq_reset.get()),
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "wasmesh_upstream_rq_by_class",
                "Upstream responses by status class",
                None,
                MetricType::Counter,
            )?;
            for c in clusters {
                for class in 1..=5 {
                    let n = c.stats.sum(|s| s.rq_by_class[class].get());
                    let class = format!("{class}xx");
                    let labels = [
                        ("cluster", &*c.name),
                        ("response_code_class", class.as_str()),
                    ];
                    ConstCounter::new(n).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        let gauges: [ClusterGauge; 4] = [
            (
                "wasmesh_upstream_cx_active",
                "Upstream connections open",
                &|c| c.cx_active.load(Relaxed),
            ),
            (
                "wasmesh_upstream_rq_active",
                "Upstream requests in flight",
                &|c| c.rq_active.load(Relaxed),
            ),
            (
                "wasmesh_upstream_rq_pending_active",
                "Requests waiting for a connection",
                &|c| c.rq_pending.load(Relaxed),
            ),
            (
                "wasmesh_upstream_rq_retry_active",
                "Retries in flight",
                &|c| c.retries_active.load(Relaxed),
            ),
        ];
        for (name, help, f) in gauges {
            let series: Vec<(&[(&str, &str)], i64)> = clusters
                .iter()
                .enumerate()
                .map(|(i, c)| (&cnames[i][..], f(c) as i64))
                .collect();
            gauge(&mut encoder, name, help, &series)?;
        }
        encode_wasm(&mut encoder, shared)?;
        let reloads: [(&[(&str, &str)], u64); 2] = [
            (&[("result", "ok")], self.source.reloads_ok.load(Relaxed)),
            (
                &[("result", "rejected")],
                self.source.reloads_failed.load(Relaxed),
            ),
        ];
        counter(
            &mut encoder,
            "wasmesh_config_reloads",
            "Configuration reloads",
            &reloads,
        )?;
        gauge(
            &mut encoder,
            "wasmesh_config_version",
            "Version of the configuration in effect",
            &[(&[], snapshot.version as i64)],
        )?;
        for (name, help, value) in shared.tracer.metrics() {
            counter(&mut encoder, name, help, &[(&[], value)])?;
        }
        if let Some(sink) = &shared.access_log {
            counter(
                &mut encoder,
                "wasmesh_access_log_dropped",
                "Access log chunks dropped because the writer fell behind",
                &[(&[], sink.dropped.load(Relaxed))],
            )?;
        }
        Ok(())
    }
}
