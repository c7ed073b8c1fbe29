//! The control plane's pulls of WasmPlugin modules (`oci://`, `https://`, `http://`): in the
//! background, so a slow or dead registry never holds up a recompute; kept on disk by digest
//! (`<cache>/modules/<sha256>.wasm`, and what each url last resolved to in `<cache>/refs/`);
//! retried with backoff while a plugin still wants them. The recompute asks for each plugin's
//! module with [`Puller::status`] and is woken when one arrives or fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};

use super::credentials::DockerConfig;
use super::{RegistryOptions, sha256_hex};

/// One module to have: a plugin's url with what its pull depends on.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PullRequest {
    pub url: String,
    /// `imagePullPolicy: Always` (explicit, or a `latest` tag): resolve the url again.
    pub always: bool,
    /// Docker `config.json` with the registry's credentials (the `imagePullSecret`).
    pub credentials: Option<PathBuf>,
    /// The plugin's `sha256`: the module's, or (for an image) its manifest digest.
    pub sha256: Option<String>,
    /// With `always`, a hash of the plugin's spec: as in Istio, a changed plugin pulls again.
    pub generation: u64,
}

/// A module pulled, as the recompute sees it.
#[derive(Clone, Debug)]
pub struct Module {
    pub sha256: String,
    pub bytes: Arc<[u8]>,
}

#[derive(Clone, Debug)]
pub enum PullStatus {
    Ready(Module),
    /// Not pulled yet (the first attempt runs).
    Pending,
    /// The last attempt failed with this reason; it is retried with backoff.
    Failed(String),
}

#[derive(Clone, Debug, Default)]
pub struct PullerOptions {
    /// Where pulled modules are kept; without it, in memory only.
    pub cache_dir: Option<PathBuf>,
    pub registry: RegistryOptions,
    /// Where `imagePullSecret`s are: `<dir>/<namespace>/<name>.json`, each a Docker
    /// `config.json` (the `.dockerconfigjson` of a Kubernetes pull secret).
    pub pull_secrets: Option<PathBuf>,
}

impl PullerOptions {
    /// The file of the pull secret `name` in `namespace` (it may not exist: the pull says so).
    pub fn pull_secret(&self, namespace: &str, name: &str) -> PathBuf {
        let dir = self
            .pull_secrets
            .as_deref()
            .unwrap_or(Path::new("pull-secrets"));
        dir.join(namespace).join(format!("{name}.json"))
    }
}

/// Pulls modules on the control plane's runtime and wakes the recompute with `notify`.
pub struct Puller {
    options: Arc<PullerOptions>,
    state: Arc<Mutex<State>>,
    runtime: tokio::runtime::Handle,
    notify: Arc<dyn Fn() + Send + Sync>,
}

#[derive(Default)]
struct State {
    entries: HashMap<PullRequest, Entry>,
    /// Counts [`Puller::sweep`]s: an entry not asked for in the last round is dropped.
    round: u64,
}

struct Entry {
    status: PullStatus,
    round: u64,
}

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(60);

impl Puller {
    /// Must be called within a tokio runtime, which runs the pulls.
    pub fn new(options: PullerOptions, notify: Arc<dyn Fn() + Send + Sync>) -> Puller {
        Puller {
            options: Arc::new(options),
            state: Arc::default(),
            runtime: tokio::runtime::Handle::current(),
            notify,
        }
    }

    /// Where `request` stands; the first ask starts its pull.
    pub fn status(&self, request: &PullRequest) -> PullStatus {
        let mut state = lock(&self.state);
        let round = state.round;
        if let Some(entry) = state.entries.get_mut(request) {
            entry.round = round;
            return entry.status.clone();
        }
        state.entries.insert(
            request.clone(),
            Entry {
                status: PullStatus::Pending,
                round,
            },
        );
        drop(state);
        let (options, state, notify) = (
            self.options.clone(),
            self.state.clone(),
            self.notify.clone(),
        );
        let request = request.clone();
        self.runtime
            .spawn(async move { pull_until_done(options, state, notify, request).await });
        PullStatus::Pending
    }

    /// Forgets the pulls no plugin asked for since the last sweep (their retries stop).
    pub fn sweep(&self) {
        let mut state = lock(&self.state);
        let round = state.round;
        state.entries.retain(|_, e| e.round == round);
        state.round += 1;
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn pull_until_done(
    options: Arc<PullerOptions>,
    state: Arc<Mutex<State>>,
    notify: Arc<dyn Fn() + Send + Sync>,
    request: PullRequest,
) {
    let mut backoff = FIRST_RETRY;
    loop {
        let result = fetch(&options, &request).await;
        let done = result.is_ok();
        let changed = {
            let mut state = lock(&state);
            let Some(entry) = state.entries.get_mut(&request) else {
                return; // no plugin wants it any more
            };
            let status = match result {
                Ok(module) => {
                    tracing::info!(url = %request.url, module = %module.sha256, "pulled");
                    PullStatus::Ready(module)
                }
                Err(reason) => {
                    tracing::warn!(url = %request.url, %reason, retry_in = ?backoff, "pull failed");
                    PullStatus::Failed(format!("{}: {reason}", request.url))
                }
            };
            let changed = !matches!((&entry.status, &status),
                (PullStatus::Failed(a), PullStatus::Failed(b)) if a == b);
            entry.status = status;
            changed
        };
        if changed {
            notify();
        }
        if done {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LAST_RETRY);
    }
}

/// What a url last resolved to (`<cache>/refs/<sha256 of the url>.json`).
#[derive(Serialize, Deserialize)]
struct Resolved {
    url: String,
    /// An image's manifest digest (`sha256:<hex>`).
    manifest_digest: Option<String>,
    module_sha256: String,
}

/// The module `request` names: from the cache where the policy allows, else pulled.
async fn fetch(options: &PullerOptions, request: &PullRequest) -> Result<Module, String> {
    let cache = options.cache_dir.as_deref().map(Cache::new);
    let expected = request
        .sha256
        .as_deref()
        .map(|s| s.trim_start_matches("sha256:").to_ascii_lowercase());
    let known = cache.as_ref().and_then(|c| c.resolved(&request.url));
    // A digest names one content: what is cached under it is the module, whatever the policy.
    if let (Some(cache), Some(expected)) = (&cache, &expected) {
        let by_digest = known.as_ref().filter(|k| {
            k.module_sha256 == *expected
                || k.manifest_digest.as_deref() == Some(&format!("sha256:{expected}"))
        });
        if let Some(module) = by_digest.and_then(|k| cache.module(&k.module_sha256)) {
            return Ok(module);
        }
        if let Some(module) = cache.module(expected) {
            return Ok(module);
        }
    }
    let (module, manifest_digest) = if request.url.starts_with("oci://") {
        pull_image(options, request, cache.as_ref(), known.as_ref()).await?
    } else {
        if !request.always
            && let Some(module) = known
                .as_ref()
                .and_then(|k| cache.as_ref()?.module(&k.module_sha256))
        {
            return Ok(module);
        }
        (download(options, &request.url).await?, None)
    };
    let sha256 = sha256_hex(&module);
    if let Some(expected) = &expected {
        let digest_matches = manifest_digest.as_deref() == Some(&format!("sha256:{expected}"));
        if *expected != sha256 && !digest_matches {
            return Err(match &manifest_digest {
                Some(digest) => format!(
                    "sha256 mismatch: expected {expected}, the image's manifest digest is \
                     {digest} and its module's sha256 is {sha256}"
                ),
                None => format!("sha256 mismatch: expected {expected}, got {sha256}"),
            });
        }
    }
    if !module.starts_with(b"\0asm") {
        return Err("not a Wasm module".into());
    }
    if let Some(cache) = &cache {
        cache.store(
            &Resolved {
                url: request.url.clone(),
                manifest_digest,
                module_sha256: sha256.clone(),
            },
            &module,
        );
    }
    Ok(Module {
        sha256,
        bytes: module.into(),
    })
}

/// Pulls an image's module, or finds it in the cache: with `IfNotPresent` by what the url last
/// resolved to; with `Always` once the registry says the url still names the cached manifest.
async fn pull_image(
    options: &PullerOptions,
    request: &PullRequest,
    cache: Option<&Cache>,
    known: Option<&Resolved>,
) -> Result<(Vec<u8>, Option<String>), String> {
    let reference = super::reference(&request.url).map_err(|e| e.to_string())?;
    let cached = |digest: &str| {
        let k = known.filter(|k| k.manifest_digest.as_deref() == Some(digest))?;
        cache?.module(&k.module_sha256)
    };
    if !request.always
        && let Some(k) = known
        && let Some(digest) = &k.manifest_digest
        && let Some(module) = cached(digest)
    {
        return Ok((module.bytes.to_vec(), Some(digest.clone())));
    }
    let auth = match &request.credentials {
        Some(path) => {
            let json = std::fs::read(path)
                .map_err(|e| format!("imagePullSecret {}: {e}", path.display()))?;
            DockerConfig::parse(&json)
                .map_err(|e| format!("imagePullSecret {}: {e}", path.display()))?
                .auth_for(reference.resolve_registry())
        }
        None => RegistryAuth::Anonymous,
    };
    if request.always && known.is_some() {
        let digest = super::resolve(&reference, &auth, &options.registry)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(module) = cached(&digest) {
            return Ok((module.bytes.to_vec(), Some(digest)));
        }
    }
    let pulled = super::pull(&reference, &auth, &options.registry)
        .await
        .map_err(|e| e.to_string())?;
    Ok((pulled.module, Some(pulled.manifest_digest)))
}

/// Downloads a module over `https://` (the system's roots and the registry CA) or `http://`.
async fn download(options: &PullerOptions, url: &str) -> Result<Vec<u8>, String> {
    crate::tls_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60));
    if let Some(pem) = &options.registry.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
        builder = builder.tls_certs_merge(certs);
    }
    let client = builder.build().map_err(|e| super::causes(&e))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| super::causes(&e))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > super::format::MAX_MODULE_BYTES as u64)
    {
        return Err("larger than a plugin may be".to_owned());
    }
    let body = response.bytes().await.map_err(|e| super::causes(&e))?;
    if body.len() > super::format::MAX_MODULE_BYTES {
        return Err("larger than a plugin may be".to_owned());
    }
    Ok(body.to_vec())
}

/// The on-disk cache: modules by sha256, and what each url resolved to.
struct Cache {
    dir: PathBuf,
}

impl Cache {
    fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_owned(),
        }
    }

    fn ref_path(&self, url: &str) -> PathBuf {
        self.dir
            .join("refs")
            .join(format!("{}.json", sha256_hex(url.as_bytes())))
    }

    fn resolved(&self, url: &str) -> Option<Resolved> {
        let json = std::fs::read(self.ref_path(url)).ok()?;
        serde_json::from_slice::<Resolved>(&json)
            .ok()
            .filter(|r| r.url == url)
    }

    /// The module with `sha256`, checked (a damaged file is not a cache hit).
    fn module(&self, sha256: &str) -> Option<Module> {
        let bytes = std::fs::read(self.dir.join("modules").join(format!("{sha256}.wasm"))).ok()?;
        (sha256_hex(&bytes) == sha256).then(|| Module {
            sha256: sha256.to_owned(),
            bytes: bytes.into(),
        })
    }

    /// Keeps a module and what its url resolved to; a cache that cannot be written only
    /// costs a pull later.
    fn store(&self, resolved: &Resolved, module: &[u8]) {
        let write = || -> std::io::Result<()> {
            let modules = self.dir.join("modules");
            std::fs::create_dir_all(&modules)?;
            let path = modules.join(format!("{}.wasm", resolved.module_sha256));
            write_atomically(&path, module)?;
            std::fs::create_dir_all(self.dir.join("refs"))?;
            let json = serde_json::to_vec(resolved).expect("serializes");
            write_atomically(&self.ref_path(&resolved.url), &json)
        };
        if let Err(error) = write() {
            tracing::warn!(dir = %self.dir.display(), %error, "cannot keep a pulled module");
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
