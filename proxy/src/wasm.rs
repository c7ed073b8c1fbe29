//! The proxy's side of the Wasm host: loading the plugins a config names, and carrying out
//! their callouts through the worker's upstream pools.

use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, Version};
use http_body_util::BodyExt;
use wasmesh_host::{
    CalloutDone, CalloutFailure, CalloutRequest, CalloutResponse, Embedder, FailStrategy, GrpcDone,
    GrpcRequest, GrpcResponse, Host, ModuleError, PluginSpec, VmFailure, VmLimits,
};

use crate::config::ConfigError;
use crate::config::filters::{self, EnvSource, HttpFilter};
use crate::headers::Added;
use crate::upstream::{self, Outbound, Protocol, RequestBody, pick_endpoint};
use crate::worker::Worker;

/// Largest callout response body a plugin receives.
const CALLOUT_BODY_LIMIT: usize = 4 << 20;

/// Why one of a listener's filters could not be loaded or started.
#[derive(Debug, thiserror::Error)]
#[error("filter {name:?}: {reason}")]
pub struct FilterError {
    /// The filter's position in the listener's `http_filters`, as written (not as run);
    /// `None` when no one filter is at fault.
    pub index: Option<usize>,
    pub name: String,
    /// The field of the filter at fault (`url`, `sha256`, `plugin_config`, ...); empty when
    /// it is the filter as a whole.
    pub field: &'static str,
    pub reason: String,
}

impl FilterError {
    /// The error as a config error about listener `listener`'s filter, with its field path
    /// (such as `listeners[0].http_filters[1].url`).
    pub fn at_listener(&self, listener: usize) -> ConfigError {
        let mut field = format!("listeners[{listener}].http_filters");
        let Some(index) = self.index else {
            return ConfigError::at(field, self.to_string());
        };
        field.push_str(&format!("[{index}]"));
        if !self.field.is_empty() {
            field.push('.');
            field.push_str(self.field);
        }
        ConfigError::at(field, self.to_string())
    }
}

/// Loads, checks and orders a listener's plugins. Errors name the filter, its field and the
/// reason.
pub fn load_chain(
    host: &Arc<Host>,
    chain: &[HttpFilter],
    base_dir: Option<&Path>,
) -> Result<Vec<Arc<PluginSpec>>, FilterError> {
    let mut ordered: Vec<(usize, &HttpFilter)> = chain.iter().enumerate().collect();
    ordered.sort_by(|(_, a), (_, b)| {
        (a.phase.order(), std::cmp::Reverse(a.priority), &a.name).cmp(&(
            b.phase.order(),
            std::cmp::Reverse(b.priority),
            &b.name,
        ))
    });
    let mut specs = Vec::with_capacity(ordered.len());
    for (index, f) in ordered {
        let error = |field: &'static str, reason: String| FilterError {
            index: Some(index),
            name: f.name.clone(),
            field,
            reason,
        };
        let bytes = fetch(f, base_dir).map_err(|(field, reason)| error(field, reason))?;
        let module = host.cache.load(&bytes, f.sha256.as_deref()).map_err(|e| {
            let field = match e {
                ModuleError::Sha256Mismatch { .. } => "sha256",
                _ => "url",
            };
            error(field, e.to_string())
        })?;
        let env = f
            .vm_config
            .env
            .iter()
            .map(|e| match e.value_from {
                EnvSource::Inline => (e.name.clone(), e.value.clone()),
                EnvSource::Host => (e.name.clone(), std::env::var(&e.name).unwrap_or_default()),
            })
            .collect();
        specs.push(Arc::new(PluginSpec {
            name: f.name.clone(),
            root_id: f.plugin_name.clone(),
            vm_id: f.vm_config.vm_id.clone(),
            configuration: filters::config_bytes(&f.plugin_config),
            vm_configuration: filters::config_bytes(&f.vm_config.configuration),
            env,
            fail_strategy: match f.fail_strategy {
                filters::FailStrategy::FailClose => FailStrategy::FailClose,
                filters::FailStrategy::FailOpen => FailStrategy::FailOpen,
                filters::FailStrategy::FailReload => FailStrategy::FailReload,
            },
            limits: VmLimits {
                memory: f.vm_config.memory_limit_mb as usize * 1024 * 1024,
                call_deadline: f.vm_config.call_deadline.0,
            },
            reload_backoff: f.vm_config.reload_backoff.0,
            module,
        }));
    }
    Ok(specs)
}

/// Checks a chain starts (`on_vm_start`, `on_configure`) without serving anything. `chain`
/// is the listener's filters as written, to name the one that refused.
pub fn validate(
    host: &Arc<Host>,
    chain: &[HttpFilter],
    specs: &[Arc<PluginSpec>],
) -> Result<(), FilterError> {
    if specs.is_empty() {
        return Ok(());
    }
    // On a thread of its own: callers may be inside a runtime already (the library API).
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| (String::new(), VmFailure::Start(e.to_string())))?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async { host.validate(specs) })
        })
        .join()
        .unwrap_or_else(|_| {
            Err((
                String::new(),
                VmFailure::Start("plugin validation panicked".into()),
            ))
        })
    });
    result.map_err(|(name, failure)| {
        let index = chain.iter().position(|f| f.name == name);
        let field = match failure {
            VmFailure::Rejected("proxy_on_configure") => "plugin_config",
            VmFailure::Rejected("proxy_on_vm_start") => "vm_config.configuration",
            VmFailure::Memory(_) => "vm_config.memory_limit_mb",
            VmFailure::Deadline(_) => "vm_config.call_deadline",
            _ => "",
        };
        FilterError {
            index,
            name,
            field,
            reason: failure.to_string(),
        }
    })
}

/// Reads a module from a path, `file://` or `http://` (downloads are kept by sha256). An
/// error names the filter's field at fault (`url` or `sha256`) and the reason.
fn fetch(f: &HttpFilter, base_dir: Option<&Path>) -> Result<Vec<u8>, (&'static str, String)> {
    if let Some(rest) = f.url.strip_prefix("http://") {
        let sha = f.sha256.as_deref().unwrap_or_default();
        let cached = std::env::temp_dir()
            .join("wasmesh-wasm-cache")
            .join(format!("{sha}.wasm"));
        if let Ok(bytes) = std::fs::read(&cached) {
            return Ok(bytes);
        }
        let bytes = http_get(&format!("http://{rest}")).map_err(|e| ("url", e))?;
        // Kept only once verified: a download never sits under a digest it does not have.
        let actual = wasmesh_host::module::sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(sha) {
            return Err((
                "sha256",
                format!("sha256 mismatch: expected {sha}, got {actual}"),
            ));
        }
        let _ = std::fs::create_dir_all(cached.parent().expect("a parent"));
        let _ = std::fs::write(&cached, &bytes);
        return Ok(bytes);
    }
    let path = PathBuf::from(f.url.strip_prefix("file://").unwrap_or(&f.url));
    let path = match base_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    };
    std::fs::read(&path).map_err(|e| ("url", format!("cannot read {}: {e}", path.display())))
}

fn http_get(url: &str) -> Result<Vec<u8>, String> {
    std::thread::scope(|s| {
        s.spawn(|| http_get_blocking(url))
            .join()
            .unwrap_or_else(|_| Err("download panicked".into()))
    })
}

fn http_get_blocking(url: &str) -> Result<Vec<u8>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<Bytes>>();
        let uri: Uri = url.parse().map_err(|e| format!("bad url {url}: {e}"))?;
        let response = tokio::time::timeout(Duration::from_secs(30), client.get(uri))
            .await
            .map_err(|_| format!("fetching {url} timed out"))?
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("fetching {url}: HTTP {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        Ok(body.to_bytes().to_vec())
    })
}

/// Carries out a worker's plugin callouts through that worker's pools.
pub struct ProxyEmbedder {
    pub worker: Weak<Worker>,
}

impl Embedder for ProxyEmbedder {
    fn eject_endpoint(&self, cluster: &str, address: &str, millis: u64) {
        let Some(worker) = self.worker.upgrade() else {
            return;
        };
        let Ok(address) = address.parse::<std::net::SocketAddr>() else {
            return;
        };
        let snapshot = worker.snapshot();
        if let Some(c) = snapshot.cluster(cluster)
            && let Some(e) = c.endpoints.iter().find(|e| e.addr == address)
        {
            e.eject_until(crate::upstream::now_ms() + millis);
        }
    }

    fn cluster_exists(&self, cluster: &str) -> bool {
        self.worker
            .upgrade()
            .is_some_and(|w| w.snapshot().cluster(cluster).is_some())
    }

    fn http_call(&self, request: CalloutRequest, done: CalloutDone) {
        let worker = self.worker.clone();
        tokio::task::spawn_local(async move {
            let Some(worker) = worker.upgrade() else {
                return;
            };
            let timeout = if request.timeout.is_zero() {
                Duration::from_secs(60)
            } else {
                request.timeout
            };
            let result = match tokio::time::timeout(timeout, http_callout(&worker, request)).await {
                Ok(r) => r,
                Err(_) => Err(CalloutFailure::Timeout),
            };
            done.complete(result);
        });
    }

    fn grpc_call(&self, request: GrpcRequest, done: GrpcDone) {
        let worker = self.worker.clone();
        tokio::task::spawn_local(async move {
            let Some(worker) = worker.upgrade() else {
                return;
            };
            let timeout = if request.timeout.is_zero() {
                Duration::from_secs(60)
            } else {
                request.timeout
            };
            let response = match tokio::time::timeout(timeout, grpc_callout(&worker, request)).await
            {
                Ok(r) => r,
                Err(_) => GrpcResponse {
                    status: 4,
                    status_message: "deadline exceeded".into(),
                    ..Default::default()
                },
            };
            done.complete(response);
        });
    }
}

/// Sends one request to `cluster` through the upstream entry point and reads the whole
/// response.
async fn exchange(
    worker: &Rc<Worker>,
    cluster_name: &str,
    request: Request<Bytes>,
    grpc: bool,
) -> Result<(http::response::Parts, Bytes, Option<http::HeaderMap>), CalloutFailure> {
    let snapshot = worker.snapshot();
    let cluster = snapshot.cluster(cluster_name).ok_or_else(|| {
        CalloutFailure::ConnectionFailure(format!("unknown cluster {cluster_name}"))
    })?;
    let pool = worker.pools.cluster(cluster);
    let index = pick_endpoint(cluster, &pool.rr, &[])
        .ok_or_else(|| CalloutFailure::ConnectionFailure("no endpoint".into()))?;
    let endpoint = pool.endpoints[index].clone();
    let fail = |e: String| CalloutFailure::ConnectionFailure(e);
    // gRPC needs HTTP/2 whatever the cluster says; else the cluster's protocol decides.
    let protocol = match grpc {
        true => Protocol::Http2,
        false => Protocol::of(cluster, Version::HTTP_11),
    };
    let (mut head, body) = request.into_parts();
    let authority = head.uri.authority().cloned();
    let mut body = RequestBody::whole(body);
    let request = Outbound {
        head: &mut head,
        added: &Added::default(),
        authority: authority.as_ref(),
        body: &mut body,
        last: true,
    };
    let response = upstream::send(&endpoint, protocol, request, None)
        .await
        .map_err(|e| fail(format!("{e:?}")))?;
    let (parts, mut body) = response.into_parts();
    let mut data = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fail(e.to_string()))?;
        match frame.into_data() {
            Ok(d) => {
                if data.len() + d.len() > CALLOUT_BODY_LIMIT {
                    return Err(fail("callout response body too large".into()));
                }
                data.extend_from_slice(&d);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((parts, data.freeze(), trailers))
}

fn pairs(map: &http::HeaderMap) -> Vec<(Bytes, Bytes)> {
    map.iter()
        .map(|(k, v)| {
            (
                Bytes::copy_from_slice(k.as_str().as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            )
        })
        .collect()
}

async fn http_callout(
    worker: &Rc<Worker>,
    call: CalloutRequest,
) -> Result<CalloutResponse, CalloutFailure> {
    let pseudo = |name: &str| {
        call.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let method = pseudo(":method").unwrap_or_else(|| "GET".into());
    let path = pseudo(":path").unwrap_or_else(|| "/".into());
    let authority = pseudo(":authority").unwrap_or_default();
    let bad = |e: String| CalloutFailure::ConnectionFailure(e);
    let mut builder = Request::builder().method(method.as_str()).uri(
        Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path.as_str())
            .build()
            .map_err(|e| bad(e.to_string()))?,
    );
    for (k, v) in &call.headers {
        if !k.starts_with(b":") {
            builder = builder.header(k.as_ref(), v.as_ref());
        }
    }
    let request = builder
        .body(call.body.clone())
        .map_err(|e| bad(e.to_string()))?;
    let (parts, body, trailers) = exchange(worker, &call.cluster, request, false).await?;
    let mut headers = vec![(
        Bytes::from_static(b":status"),
        Bytes::copy_from_slice(parts.status.as_str().as_bytes()),
    )];
    headers.extend(pairs(&parts.headers));
    Ok(CalloutResponse {
        headers,
        body,
        trailers: trailers.as_ref().map(pairs).unwrap_or_default(),
    })
}

async fn grpc_callout(worker: &Rc<Worker>, call: GrpcRequest) -> GrpcResponse {
    let failed = |status: u32, msg: String| GrpcResponse {
        status,
        status_message: msg,
        ..Default::default()
    };
    let mut framed = Vec::with_capacity(5 + call.message.len());
    framed.push(0);
    framed.extend_from_slice(&(call.message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&call.message);
    let uri = format!("http://{}/{}/{}", call.cluster, call.service, call.method);
    let mut builder = Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in &call.initial_metadata {
        builder = builder.header(k.as_ref(), v.as_ref());
    }
    let Ok(request) = builder.body(Bytes::from(framed)) else {
        return failed(13, "bad metadata".into());
    };
    match exchange(worker, &call.cluster, request, true).await {
        Err(e) => failed(14, format!("{e:?}")),
        Ok((parts, body, trailers)) => {
            let source = trailers.as_ref().unwrap_or(&parts.headers);
            let status = source
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(2);
            let status_message = source
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let message = (body.len() >= 5).then(|| body.slice(5..));
            GrpcResponse {
                initial_metadata: pairs(&parts.headers),
                message,
                trailing_metadata: trailers.as_ref().map(pairs).unwrap_or_default(),
                status,
                status_message,
            }
        }
    }
}
