//! The mesh as the control plane holds it: the sources' resources, the connected sidecars and
//! their registrations, and each sidecar's current snapshot. One thread recomputes snapshots
//! when anything changes and hands each proxy's stream its new one; a proxy whose snapshot
//! did not change gets no push.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::diag::{Diagnostic, code};
use crate::gateway;
use crate::images::puller::{PullRequest, PullStatus, Puller, PullerOptions};
use crate::istio::WasmPlugin;
use crate::manifests::{Resource, Spec};
use crate::modules::{ModuleStore, hex};
use crate::plugins::ModuleUrl;
use crate::sidecar::{Node, UserPlugin, outbound, own_part};
use crate::source::SourceState;
use crate::translate::{Options, PluginModule, PluginModules, translate};

/// What a proxy is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub version: String,
    /// The proxy's own part of its bootstrap, to lay over `shared`.
    pub bootstrap_json: String,
    /// `(sha256, size)` of the modules the control plane serves for it.
    pub modules: Vec<(String, u64)>,
    /// The part its namespace's sidecars share, held once for all of them.
    pub shared: Arc<SharedPart>,
}

/// A part of snapshots that many proxies share: sent once to each (by sha256), held once.
#[derive(Debug, PartialEq, Eq)]
pub struct SharedPart {
    pub sha256: String,
    pub bootstrap_json: String,
}

impl Pushed {
    /// The proxy's whole bootstrap, as it applies it.
    pub fn bootstrap(&self) -> Result<wasmesh_config::Bootstrap, serde_json::Error> {
        let shared = serde_json::from_str(&self.shared.bootstrap_json)?;
        let own: wasmesh_config::Bootstrap = serde_json::from_str(&self.bootstrap_json)?;
        Ok(own.laid_over(shared))
    }
}

/// Where a proxy stands, as `wasmesh proxy-status` shows it.
#[derive(Clone, Debug, Default)]
pub struct ProxyState {
    pub sent_version: String,
    pub sent_nonce: String,
    pub acked_version: String,
    /// The error of the last NACK, until an ACK.
    pub nack: Option<String>,
}

impl ProxyState {
    pub fn state(&self) -> &'static str {
        if self.nack.is_some() {
            "NACKED"
        } else if self.sent_version == self.acked_version {
            "SYNCED"
        } else {
            "STALE"
        }
    }
}

/// A connected proxy.
pub struct Connected {
    pub node: Node,
    pub since: Instant,
    /// Its current snapshot; its stream sends each new value.
    pub snapshot: watch::Sender<Option<Arc<Pushed>>>,
    pub state: Arc<Mutex<ProxyState>>,
    /// Tells the connection apart from a later one of the same proxy.
    pub connection: u64,
}

/// A registered workload: connected, or disconnected and kept until `expires` so that a proxy
/// restart (or a control-plane restart) does not take its endpoints away.
#[derive(Clone, Debug)]
struct Registration {
    node: Node,
    expires: Option<Instant>,
}

/// How the mesh is set up.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    pub translate: Options,
    /// The four traffic plugins' modules (files the control plane reads and ships).
    pub plugins: PluginModules,
    /// Registrations survive restarts here (`registrations.json`).
    pub data_dir: Option<PathBuf>,
    /// How long a disconnected proxy's workload stays an endpoint.
    pub grace: Duration,
    /// How WasmPlugins' `oci://` and `http(s)://` modules are pulled.
    pub images: PullerOptions,
}

/// The mesh's state. Shared by the server's streams and the recompute thread.
pub struct Mesh {
    options: MeshOptions,
    pub modules: ModuleStore,
    puller: Puller,
    inner: Mutex<Inner>,
    changed: std::sync::mpsc::Sender<()>,
    /// The diagnostics of the last recompute, sent when they change (for status writers).
    diagnostics_tx: watch::Sender<Arc<Vec<Diagnostic>>>,
}

#[derive(Default)]
struct Inner {
    source: Arc<SourceState>,
    connected: BTreeMap<String, Connected>,
    registrations: BTreeMap<String, Registration>,
    /// The last module each WasmPlugin resolved to, kept when its file goes bad.
    last_good_plugins: BTreeMap<(String, String), UserPlugin>,
    /// The mesh's diagnostics as of the last recompute (sources, translation, modules).
    pub diagnostics: Vec<Diagnostic>,
    /// Every proxy's last computed snapshot, connected or not.
    snapshots: BTreeMap<String, Arc<Pushed>>,
    /// The shared parts of the last computed snapshots, by sha256.
    shared: HashMap<String, Arc<SharedPart>>,
    next_connection: u64,
    /// The sources' generation the snapshots were last computed from.
    computed_generation: u64,
}

/// Why a proxy may not connect.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("a proxy named {0} is already connected")]
    AlreadyConnected(String),
}

impl Mesh {
    /// A mesh fed by `source`; starts its recompute thread.
    pub fn start(
        options: MeshOptions,
        mut source: watch::Receiver<Arc<SourceState>>,
    ) -> std::io::Result<Arc<Mesh>> {
        let (changed, changes) = std::sync::mpsc::channel();
        let mut inner = Inner {
            source: source.borrow_and_update().clone(),
            ..Inner::default()
        };
        if let Some(dir) = &options.data_dir {
            inner.registrations = load_registrations(dir, options.grace);
        }
        let pulled = changed.clone();
        let puller = Puller::new(
            options.images.clone(),
            Arc::new(move || {
                let _ = pulled.send(());
            }),
        );
        let mesh = Arc::new(Mesh {
            options,
            modules: ModuleStore::default(),
            puller,
            inner: Mutex::new(inner),
            changed,
            diagnostics_tx: watch::channel(Arc::default()).0,
        });
        // Sources' changes reach the recompute thread as a change.
        let weak = Arc::downgrade(&mesh);
        let notify = mesh.changed.clone();
        tokio::spawn(async move {
            while source.changed().await.is_ok() {
                let state = source.borrow_and_update().clone();
                let Some(mesh) = weak.upgrade() else { return };
                mesh.lock().source = state;
                let _ = notify.send(());
            }
        });
        let weak = Arc::downgrade(&mesh);
        std::thread::Builder::new()
            .name("wasmesh-mesh".into())
            .spawn(move || recompute_loop(weak, changes))?;
        mesh.changed();
        Ok(mesh)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        let _ = self.changed.send(());
    }

    /// Registers a connecting proxy; its snapshot arrives on the returned receiver.
    #[allow(clippy::type_complexity)]
    pub fn join(
        &self,
        node: Node,
    ) -> Result<
        (
            u64,
            watch::Receiver<Option<Arc<Pushed>>>,
            Arc<Mutex<ProxyState>>,
        ),
        JoinError,
    > {
        let id = node.id();
        let mut inner = self.lock();
        if inner.connected.contains_key(&id) {
            return Err(JoinError::AlreadyConnected(id));
        }
        inner.next_connection += 1;
        let connection = inner.next_connection;
        // Its snapshot comes with the recompute this join triggers: one computed for an
        // earlier process of the same proxy may name other listen addresses.
        let (tx, rx) = watch::channel(None);
        let state = Arc::new(Mutex::new(ProxyState::default()));
        inner.registrations.insert(
            id.clone(),
            Registration {
                node: node.clone(),
                expires: None,
            },
        );
        inner.connected.insert(
            id,
            Connected {
                node,
                since: Instant::now(),
                snapshot: tx,
                state: state.clone(),
                connection,
            },
        );
        self.save_registrations(&inner);
        drop(inner);
        self.changed();
        Ok((connection, rx, state))
    }

    /// A proxy's stream ended: its workload stays an endpoint for the grace period.
    pub fn leave(&self, id: &str, connection: u64) {
        let mut inner = self.lock();
        if inner
            .connected
            .get(id)
            .is_none_or(|c| c.connection != connection)
        {
            return;
        }
        inner.connected.remove(id);
        if let Some(r) = inner.registrations.get_mut(id) {
            r.expires = Some(Instant::now() + self.options.grace);
        }
        drop(inner);
        self.changed();
    }

    /// A snapshot of the connected proxies' status: `(id, node, since, state)`.
    pub fn status(&self) -> Vec<(String, Node, Instant, ProxyState)> {
        let inner = self.lock();
        inner
            .connected
            .iter()
            .map(|(id, c)| {
                let mut state = c.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
                // A snapshot computed but not yet sent by the proxy's stream counts as sent:
                // the proxy is STALE from the recompute on, not from the send.
                if let Some(current) = c.snapshot.borrow().as_ref() {
                    state.sent_version.clone_from(&current.version);
                }
                (id.clone(), c.node.clone(), c.since, state)
            })
            .collect()
    }

    /// The mesh's diagnostics, and the sources' generation the snapshots were computed from.
    pub fn diagnostics(&self) -> (u64, Vec<Diagnostic>) {
        let inner = self.lock();
        (inner.computed_generation, inner.diagnostics.clone())
    }

    /// The mesh's diagnostics, now and each time a recompute changes them.
    pub fn watch_diagnostics(&self) -> watch::Receiver<Arc<Vec<Diagnostic>>> {
        self.diagnostics_tx.subscribe()
    }

    /// A shared part of the last computed snapshots.
    pub fn shared_part(&self, sha256: &str) -> Option<Arc<SharedPart>> {
        self.lock().shared.get(sha256).cloned()
    }

    /// A proxy's last computed snapshot.
    pub fn snapshot_of(&self, id: &str) -> Option<Arc<Pushed>> {
        self.lock().snapshots.get(id).cloned()
    }

    fn save_registrations(&self, inner: &Inner) {
        let Some(dir) = &self.options.data_dir else {
            return;
        };
        let nodes: Vec<&Node> = inner.registrations.values().map(|r| &r.node).collect();
        let path = dir.join("registrations.json");
        let tmp = dir.join("registrations.json.tmp");
        let written = serde_json::to_vec_pretty(&nodes)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&tmp, json))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "registrations not saved");
        }
    }

    /// Recomputes every snapshot; pushes the ones that changed. Returns when the next
    /// registration expires.
    fn recompute(&self) -> Option<Instant> {
        let started = Instant::now();
        let mut inner = self.lock();
        let now = Instant::now();
        let before = inner.registrations.len();
        inner
            .registrations
            .retain(|_, r| r.expires.is_none_or(|e| e > now));
        if inner.registrations.len() != before {
            self.save_registrations(&inner);
        }
        let source = inner.source.clone();
        let mut diagnostics = source.loaded.diagnostics.clone();

        // The resources, with every registered workload as a WorkloadEntry.
        let mut resources = source.loaded.resources.clone();
        resources.extend(
            inner
                .registrations
                .values()
                .filter_map(|r| r.node.workload_entry()),
        );
        // Gateway API Gateways and HTTPRoutes, as the Istio Gateways and VirtualServices
        // every translation below reads.
        crate::gateway_api::append(
            &mut resources,
            &mut diagnostics,
            &self.options.translate.domain_suffix,
        );

        // The traffic plugins and the users' WasmPlugins, their modules read and hashed.
        let mut used = HashSet::new();
        let traffic = match self.traffic_plugins(&mut used) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "the traffic plugins cannot be read: no push");
                return next_expiry(&inner);
            }
        };
        let (user_plugins, pulling) =
            self.user_plugins(&mut inner, &resources, &mut used, &mut diagnostics);
        let base = Options {
            plugins: Some(traffic),
            ..self.options.translate.clone()
        };
        diagnostics.extend(translate(&resources, &base).diagnostics);
        dedup(&mut diagnostics);
        if diagnostics != inner.diagnostics {
            for d in diagnostics.iter().filter(|d| d.is_error()) {
                tracing::warn!("{d}");
            }
            self.diagnostics_tx
                .send_replace(Arc::new(diagnostics.clone()));
        }
        inner.diagnostics = diagnostics;

        let nodes: Vec<(String, Node)> = inner
            .registrations
            .iter()
            .map(|(id, r)| (id.clone(), r.node.clone()))
            .collect();
        let mut pushed = 0;
        // Sidecars of one namespace share their outbound part: translated, serialized and
        // held once, and sent to each once.
        let mut by_namespace: HashMap<String, (wasmesh_config::Bootstrap, Arc<SharedPart>)> =
            HashMap::new();
        let mut gateway_diagnostics = Vec::new();
        for (id, node) in nodes {
            // A gateway shares its namespace's clusters, not the sidecars' outbound listener.
            let key = if node.is_gateway() {
                format!("gateway {}", node.namespace)
            } else {
                node.namespace.clone()
            };
            let (shared, part) = by_namespace.entry(key).or_insert_with(|| {
                let mut shared = outbound(&node.namespace, &resources, &base).bootstrap;
                if node.is_gateway() {
                    shared.listeners.clear();
                }
                shared.workers = None;
                let bootstrap_json =
                    serde_json::to_string(&shared).expect("a bootstrap serializes");
                let part = Arc::new(SharedPart {
                    sha256: hex(&Sha256::digest(bootstrap_json.as_bytes())),
                    bootstrap_json,
                });
                (shared, part)
            });
            let own = if node.is_gateway() {
                let (own, diags) =
                    gateway::own_part(&node, shared, &resources, &user_plugins, &base);
                gateway_diagnostics.extend(diags);
                own
            } else {
                own_part(&node, shared, &resources, &user_plugins, &base)
            };
            let bootstrap_json = serde_json::to_string(&own).expect("a bootstrap serializes");
            // The modules the filters use, and the mesh's own plugins' even where no filter
            // uses them yet: sidecars compile those ahead, so a first fault, mirror, breaker
            // or AuthorizationPolicy takes effect as fast as the next.
            let modules: Vec<(String, u64)> = shared
                .listeners
                .iter()
                .chain(&own.listeners)
                .flat_map(|l| &l.http_filters)
                .filter_map(|f| f.sha256.clone())
                .chain(base.plugins.iter().flat_map(|p| {
                    [&p.router, &p.fault, &p.mirror, &p.circuit_breaker, &p.authz]
                        .into_iter()
                        .filter_map(|m| m.sha256.clone())
                }))
                .filter(|sha| used.contains(sha))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|sha| {
                    let size = self.modules.get(&sha).map_or(0, |m| m.len() as u64);
                    (sha, size)
                })
                .collect();
            let version = version_of(&bootstrap_json, &part.sha256, &modules);
            let snapshot = Arc::new(Pushed {
                version,
                bootstrap_json,
                modules,
                shared: part.clone(),
            });
            if let Some(c) = inner.connected.get(&id) {
                c.snapshot.send_if_modified(|current| {
                    if current
                        .as_ref()
                        .is_some_and(|s| s.version == snapshot.version)
                    {
                        return false;
                    }
                    *current = Some(snapshot.clone());
                    pushed += 1;
                    true
                });
            }
            inner.snapshots.insert(id, snapshot);
        }
        // What only a gateway's translation finds (a Secret missing in its namespace).
        if !gateway_diagnostics.is_empty() {
            let mut all = inner.diagnostics.clone();
            all.extend(gateway_diagnostics);
            dedup(&mut all);
            if all != inner.diagnostics {
                for d in all
                    .iter()
                    .skip(inner.diagnostics.len())
                    .filter(|d| d.is_error())
                {
                    tracing::warn!("{d}");
                }
                self.diagnostics_tx.send_replace(Arc::new(all.clone()));
                inner.diagnostics = all;
            }
        }
        let live: HashSet<&String> = inner.registrations.keys().collect();
        let stale: Vec<String> = inner
            .snapshots
            .keys()
            .filter(|k| !live.contains(k))
            .cloned()
            .collect();
        for k in stale {
            inner.snapshots.remove(&k);
        }
        inner.shared = by_namespace
            .into_values()
            .map(|(_, part)| (part.sha256.clone(), part))
            .collect();
        self.modules.retain(&used);
        // A change is applied once the modules it names are in: until a pull ends, the
        // sources' generation stays where it was.
        if !pulling {
            inner.computed_generation = source.generation;
        }
        tracing::debug!(
            proxies = inner.registrations.len(),
            pushed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshots recomputed"
        );
        next_expiry(&inner)
    }

    fn traffic_plugins(&self, used: &mut HashSet<String>) -> Result<PluginModules, String> {
        let p = &self.options.plugins;
        let mut one = |m: &PluginModule| -> Result<PluginModule, String> {
            let sha = self
                .modules
                .add_file(Path::new(&m.url), m.sha256.as_deref())?;
            used.insert(sha.clone());
            Ok(PluginModule {
                url: m.url.clone(),
                sha256: Some(sha),
            })
        };
        Ok(PluginModules {
            router: one(&p.router)?,
            fault: one(&p.fault)?,
            mirror: one(&p.mirror)?,
            circuit_breaker: one(&p.circuit_breaker)?,
            authz: one(&p.authz)?,
        })
    }

    /// The users' WasmPlugins with their modules, and whether a pull is still under way. A
    /// plugin whose module cannot be had (a file that cannot be read, a failed pull, a sha256
    /// that does not match) stays as it last was, reported; one that never had a module is
    /// left out, reported. While a pull runs, the plugin stays as it last was.
    fn user_plugins(
        &self,
        inner: &mut Inner,
        resources: &[Resource],
        used: &mut HashSet<String>,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> (Vec<UserPlugin>, bool) {
        let mut out = Vec::new();
        let mut last_good = BTreeMap::new();
        let mut pulling = false;
        for r in resources {
            let Spec::WasmPlugin(wp) = &r.spec else {
                continue;
            };
            if crate::translate::check(r).iter().any(Diagnostic::is_error) {
                continue;
            }
            let key = (r.namespace().to_owned(), r.name().to_owned());
            let kept = inner.last_good_plugins.get(&key).cloned();
            let plugin = match self.module_of(r, wp) {
                // While its pull runs the plugin stays as it was (a new one waits).
                None => {
                    pulling = true;
                    match kept {
                        Some(k) => k,
                        None => continue,
                    }
                }
                Some(Ok((url, sha256))) => UserPlugin {
                    resource: r.clone(),
                    url,
                    sha256,
                },
                Some(Err(reason)) => {
                    let what = if kept.is_some() {
                        "its last good version stays in effect"
                    } else {
                        "the plugin is left out"
                    };
                    diagnostics.push(
                        r.diag(
                            Diagnostic::error(
                                code::REFERENCED_RESOURCE_NOT_FOUND,
                                format!("module not available: {reason}: {what}"),
                            )
                            .at("spec.url"),
                        ),
                    );
                    match kept {
                        // The plugin as it last was, module and spec: the new spec may be
                        // meant for the new module only.
                        Some(k) => k,
                        None => continue,
                    }
                }
            };
            if let Some(sha) = &plugin.sha256
                && self.modules.get(sha).is_some()
            {
                used.insert(sha.clone());
            }
            last_good.insert(key, plugin.clone());
            out.push(plugin);
        }
        self.puller.sweep();
        inner.last_good_plugins = last_good;
        (out, pulling)
    }

    /// `wp`'s module as `(url, sha256)`, or why it cannot be had; `None` while it is pulled.
    fn module_of(
        &self,
        r: &Resource,
        wp: &WasmPlugin,
    ) -> Option<Result<(String, Option<String>), String>> {
        Some(match ModuleUrl::parse(&wp.url) {
            Ok(ModuleUrl::File(path)) => {
                let path = match (&r.source.file, path.is_relative()) {
                    (Some(file), true) => file.parent().unwrap_or(Path::new(".")).join(&path),
                    _ => path,
                };
                self.modules
                    .add_file(&path, wp.sha256.as_deref())
                    .map(|sha| (path.display().to_string(), Some(sha)))
            }
            Ok(ModuleUrl::Http(url) | ModuleUrl::Oci(url)) => {
                match self.puller.status(&self.pull_request(r, wp, &url)) {
                    PullStatus::Ready(module) => {
                        self.modules.add(&module.sha256, module.bytes);
                        Ok((url, Some(module.sha256)))
                    }
                    PullStatus::Failed(reason) => Err(reason),
                    PullStatus::Pending => return None,
                }
            }
            Err(reason) => Err(reason),
        })
    }

    /// What pulling `wp`'s module at `url` depends on.
    fn pull_request(&self, r: &Resource, wp: &WasmPlugin, url: &str) -> PullRequest {
        use crate::istio::PullPolicy;
        let always = match wp.image_pull_policy {
            Some(PullPolicy::Always) => true,
            Some(PullPolicy::IfNotPresent) => false,
            // Istio's default: Always for an image tagged `latest` (or not tagged).
            Some(PullPolicy::Unspecified) | None => {
                url.starts_with("oci://")
                    && crate::images::reference(url).is_ok_and(|reference| {
                        reference.digest().is_none()
                            && reference.tag().is_none_or(|t| t == "latest")
                    })
            }
        };
        let generation = if always {
            let mut hasher = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&format!("{wp:?}"), &mut hasher);
            std::hash::Hasher::finish(&hasher)
        } else {
            0
        };
        PullRequest {
            url: url.to_owned(),
            always,
            credentials: wp
                .image_pull_secret
                .as_deref()
                .map(|name| self.options.images.pull_secret(r.namespace(), name)),
            sha256: wp.sha256.clone(),
            generation,
        }
    }
}

fn recompute_loop(mesh: std::sync::Weak<Mesh>, changes: std::sync::mpsc::Receiver<()>) {
    let mut next_expiry: Option<Instant> = None;
    loop {
        let wait = next_expiry.map(|t| t.saturating_duration_since(Instant::now()));
        let got = match wait {
            Some(d) => changes.recv_timeout(d),
            None => changes
                .recv()
                .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) = got {
            return;
        }
        // Everything queued meanwhile is covered by this recompute.
        while changes.try_recv().is_ok() {}
        let Some(mesh) = mesh.upgrade() else { return };
        next_expiry = mesh.recompute();
    }
}

fn next_expiry(inner: &Inner) -> Option<Instant> {
    inner.registrations.values().filter_map(|r| r.expires).min()
}

fn load_registrations(dir: &Path, grace: Duration) -> BTreeMap<String, Registration> {
    let path = dir.join("registrations.json");
    let Ok(text) = std::fs::read(&path) else {
        return BTreeMap::new();
    };
    let nodes: Vec<Node> = match serde_json::from_slice(&text) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "registrations not read");
            return BTreeMap::new();
        }
    };
    // Until they reconnect, as if they had just disconnected.
    let expires = Some(Instant::now() + grace);
    nodes
        .into_iter()
        .map(|node| {
            let id = format!("{}.{}", node.name, node.namespace);
            (id, Registration { node, expires })
        })
        .collect()
}

/// A digest of what a proxy is sent: equal versions, equal snapshots.
fn version_of(bootstrap_json: &str, shared: &str, modules: &[(String, u64)]) -> String {
    let mut h = Sha256::new();
    h.update(bootstrap_json.as_bytes());
    h.update(shared.as_bytes());
    for (sha, _) in modules {
        h.update(sha.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn dedup(diags: &mut Vec<Diagnostic>) {
    let mut seen = HashSet::new();
    diags.retain(|d| seen.insert(d.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::{Loaded, parse_str};

    const ROUTE_TO_NOWHERE: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: nowhere}
";

    #[tokio::test]
    async fn watchers_get_the_diagnostics_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let module = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
            PluginModule::new(path.display().to_string())
        };
        let plugins = PluginModules {
            router: module("router.wasm"),
            fault: module("fault.wasm"),
            mirror: module("mirror.wasm"),
            circuit_breaker: module("circuit_breaker.wasm"),
            authz: module("authz.wasm"),
        };
        let (source, rx) = watch::channel(Arc::new(SourceState::default()));
        let options = MeshOptions {
            translate: Options::default(),
            plugins,
            data_dir: None,
            grace: Duration::from_secs(1),
            images: PullerOptions::default(),
        };
        let mesh = Mesh::start(options, rx).unwrap();
        let mut diagnostics = mesh.watch_diagnostics();
        let about_reviews = |ds: &Arc<Vec<Diagnostic>>| {
            ds.iter().any(|d| {
                d.kind.as_deref() == Some("VirtualService") && d.name.as_deref() == Some("reviews")
            })
        };
        let within = Duration::from_secs(10);

        source.send_replace(Arc::new(SourceState {
            generation: 1,
            loaded: parse_str(ROUTE_TO_NOWHERE, None),
        }));
        tokio::time::timeout(within, diagnostics.wait_for(about_reviews))
            .await
            .expect("the VirtualService's diagnostics are sent")
            .unwrap();
        source.send_replace(Arc::new(SourceState {
            generation: 2,
            loaded: Loaded::default(),
        }));
        tokio::time::timeout(within, diagnostics.wait_for(|ds| !about_reviews(ds)))
            .await
            .expect("their going away is sent")
            .unwrap();
    }
}
