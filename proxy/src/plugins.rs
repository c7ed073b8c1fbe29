//! The plugins a config names: loading them (a file, or a download over `http://` checked
//! against its sha256 or over `https://`), ordering a listener's chain, and checking that it starts. Used when a snapshot is
//! built; nothing here serves requests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::BodyExt;
use wasmesh_host::{FailStrategy, Host, ModuleError, PluginSpec, Scope, VmFailure, VmLimits};

use crate::config::ConfigError;
use crate::config::filters::{self, EnvSource, HttpFilter};

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
        // A module named by its digest and already loaded is not read (or hashed) again:
        // reloads that keep their plugins cost no IO.
        let cached = f.sha256.as_deref().and_then(|sha| host.cache.get(sha));
        let module = match cached {
            Some(module) => module,
            None => {
                let bytes = fetch(f, base_dir).map_err(|(field, reason)| error(field, reason))?;
                host.cache.load(&bytes, f.sha256.as_deref()).map_err(|e| {
                    let field = match e {
                        ModuleError::Sha256Mismatch { .. } => "sha256",
                        _ => "url",
                    };
                    error(field, e.to_string())
                })?
            }
        };
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
            scope: f
                .applies_to
                .as_ref()
                .map(|s| Scope::new(s.routes.clone(), s.clusters.clone(), s.unrouted)),
        }));
    }
    Ok(specs)
}

/// Replaces each spec configured exactly as one of `running` (the listener's chain in
/// effect) with that one, so that workers keep its VMs; returns the others, which are new.
pub fn keep_unchanged(
    specs: &mut [Arc<PluginSpec>],
    running: &[Arc<PluginSpec>],
) -> Vec<Arc<PluginSpec>> {
    let mut fresh = Vec::new();
    for spec in specs {
        match running.iter().find(|r| r.same_as(spec)) {
            Some(r) => *spec = r.clone(),
            None => fresh.push(spec.clone()),
        }
    }
    fresh
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
    let result = validator::run(host.clone(), specs.to_vec());
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

/// Plugin checks run on one long-lived thread with its own runtime (callers may be inside
/// a runtime already, the library API): a reload does not pay for a thread and a runtime.
mod validator {
    use std::sync::mpsc::{self, Sender};
    use std::sync::{Arc, OnceLock};

    use wasmesh_host::{Host, PluginSpec, VmFailure};

    type Outcome = Result<(), (String, VmFailure)>;
    type Job = (Arc<Host>, Vec<Arc<PluginSpec>>, Sender<Outcome>);

    static JOBS: OnceLock<Sender<Job>> = OnceLock::new();

    pub fn run(host: Arc<Host>, specs: Vec<Arc<PluginSpec>>) -> Outcome {
        let failed = |why: &str| Err((String::new(), VmFailure::Start(why.into())));
        let jobs = JOBS.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let spawned = std::thread::Builder::new()
                .name("wasmesh-plugin-check".into())
                .spawn(move || serve(rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "no thread to check plugins on");
            }
            tx
        });
        let (reply, outcome) = mpsc::channel();
        if jobs.send((host, specs, reply)).is_err() {
            return failed("the plugin check thread is gone");
        }
        outcome
            .recv()
            .unwrap_or_else(|_| failed("plugin validation panicked"))
    }

    fn serve(jobs: mpsc::Receiver<Job>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                for (_, _, reply) in jobs {
                    let _ = reply.send(Err((String::new(), VmFailure::Start(e.to_string()))));
                }
                return;
            }
        };
        for (host, specs, reply) in jobs {
            // A panic drops `reply` (the caller sees it) and leaves the thread serving.
            let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tokio::task::LocalSet::new().block_on(&runtime, async { host.validate(&specs) })
            }));
            if let Ok(outcome) = checked {
                let _ = reply.send(outcome);
            }
        }
    }
}

/// Reads a module from a path, `file://`, `http://` or `https://` (downloads with a sha256
/// are kept by it). An error names the filter's field at fault (`url` or `sha256`) and the
/// reason.
fn fetch(f: &HttpFilter, base_dir: Option<&Path>) -> Result<Vec<u8>, (&'static str, String)> {
    if f.url.starts_with("http://") || f.url.starts_with("https://") {
        let cached = f.sha256.as_deref().map(|sha| {
            std::env::temp_dir()
                .join("wasmesh-wasm-cache")
                .join(format!("{sha}.wasm"))
        });
        if let Some(Ok(bytes)) = cached.as_ref().map(std::fs::read) {
            return Ok(bytes);
        }
        let bytes = http_get(&f.url).map_err(|e| ("url", e.to_string()))?;
        // Kept only once verified: a download never sits under a digest it does not have.
        // (Validation requires a digest over http://; https:// may go without.)
        if let (Some(sha), Some(cached)) = (f.sha256.as_deref(), cached) {
            let actual = wasmesh_host::module::sha256_hex(&bytes);
            if !actual.eq_ignore_ascii_case(sha) {
                return Err((
                    "sha256",
                    format!("sha256 mismatch: expected {sha}, got {actual}"),
                ));
            }
            let _ = std::fs::create_dir_all(cached.parent().expect("a parent"));
            let _ = std::fs::write(&cached, &bytes);
        }
        return Ok(bytes);
    }
    let path = PathBuf::from(f.url.strip_prefix("file://").unwrap_or(&f.url));
    let path = match base_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    };
    std::fs::read(&path).map_err(|e| ("url", format!("cannot read {}: {e}", path.display())))
}

/// Why a module could not be downloaded.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No runtime for the download.
    #[error("{0}")]
    Runtime(std::io::Error),
    /// No trusted roots: neither the system's nor `SSL_CERT_FILE` / `SSL_CERT_DIR` gave one.
    #[error("no trusted certificate authorities for https://: {0}")]
    Roots(std::io::Error),
    #[error("bad url {url}: {error}")]
    BadUrl {
        url: String,
        error: http::uri::InvalidUri,
    },
    #[error("fetching {url} timed out")]
    TimedOut { url: String },
    /// No response: connecting, the TLS handshake or sending failed. The causes are spelled
    /// out: hyper's own text is only "client error (Connect)".
    #[error("fetching {url}: {}", causes(error))]
    Request {
        url: String,
        error: hyper_util::client::legacy::Error,
    },
    #[error("fetching {url}: HTTP {status}")]
    Status {
        url: String,
        status: http::StatusCode,
    },
    /// The response body could not be read.
    #[error("fetching {url}: {error}")]
    Body { url: String, error: hyper::Error },
    #[error("download panicked")]
    Panicked,
}

/// An error and its sources, joined: the reason a download failed is usually the innermost.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn http_get(url: &str) -> Result<Vec<u8>, FetchError> {
    std::thread::scope(|s| {
        s.spawn(|| http_get_blocking(url))
            .join()
            .unwrap_or(Err(FetchError::Panicked))
    })
}

fn http_get_blocking(url: &str) -> Result<Vec<u8>, FetchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FetchError::Runtime)?;
    runtime.block_on(async {
        // https:// trusts the system's roots, or those `SSL_CERT_FILE` / `SSL_CERT_DIR` name.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(FetchError::Roots)?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, http_body_util::Empty<Bytes>>(connector);
        let url = url.to_owned();
        let uri: Uri = match url.parse() {
            Ok(uri) => uri,
            Err(error) => return Err(FetchError::BadUrl { url, error }),
        };
        let response = match tokio::time::timeout(Duration::from_secs(30), client.get(uri)).await {
            Err(_) => return Err(FetchError::TimedOut { url }),
            Ok(Err(error)) => return Err(FetchError::Request { url, error }),
            Ok(Ok(response)) => response,
        };
        if !response.status().is_success() {
            let status = response.status();
            return Err(FetchError::Status { url, status });
        }
        match response.into_body().collect().await {
            Ok(body) => Ok(body.to_bytes().to_vec()),
            Err(error) => Err(FetchError::Body { url, error }),
        }
    })
}
