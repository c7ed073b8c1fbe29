//! The Kubernetes source: reflectors over Istio's kinds, Services, EndpointSlices, Pods and
//! Namespaces, yielding what the directory source yields (a [`SourceState`] through a watch
//! channel), so the rest of the control plane cannot tell the two apart.
//!
//! - Istio objects are watched as [`DynamicObject`]s and parsed by the manifests parser
//!   (strict, as for files), so one malformed object is a diagnostic on that object, not a
//!   failed list.
//! - Istio's mesh config, the ConfigMap `istio-system/istio`, is watched by name (and only it:
//!   a field selector, which RBAC's `resourceNames` authorizes) and parsed as a file's.
//! - Each Service becomes a ServiceEntry, and each ready endpoint of a pod without a sidecar a
//!   WorkloadEntry; a pod with a sidecar registers itself through it ([`translate`] has the
//!   details).
//! - Nothing is published before every reflector has listed once. Through API errors the
//!   watchers back off and retry while their stores keep their contents; a relist (after a
//!   410 Gone) replaces a store at once, removing only what is gone. So a flapping API server
//!   never empties the mesh's configuration.
//! - Bursts of events are coalesced ([`KubeSourceOptions::debounce`]), and `generation` moves
//!   only when what is produced changes. A resource that turns bad keeps its last good version
//!   ([`LastGood`]), as with files.

mod translate;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Pod, PodSpec, PodStatus, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use wasmesh_controlplane::source::{LastGood, SourceState};

/// What the injector leaves on a pod it gave a sidecar (Istio's annotation) and the sidecar's
/// container: such pods register through their sidecar.
pub use crate::webhook::inject::{
    PROXY_CONTAINER as SIDECAR_CONTAINER, STATUS as SIDECAR_STATUS_ANNOTATION,
};

/// How the source reads the cluster.
#[derive(Clone, Debug)]
pub struct KubeSourceOptions {
    /// The cluster's DNS suffix: Service `reviews` in `default` is
    /// `reviews.default.<suffix>`. As the control plane's `Options::domain_suffix`.
    pub domain_suffix: String,
    /// How long to gather events after one before recomputing, so that a burst (a rollout,
    /// a relist) is published once.
    pub debounce: Duration,
}

impl Default for KubeSourceOptions {
    fn default() -> KubeSourceOptions {
        KubeSourceOptions {
            domain_suffix: "svc.cluster.local".into(),
            debounce: Duration::from_millis(100),
        }
    }
}

/// An Istio kind the source watches, as the API server serves it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct IstioKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl IstioKind {
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }

    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
) -> IstioKind {
    IstioKind {
        group,
        version,
        kind,
        plural,
    }
}

/// The kinds watched as dynamic objects: the Istio kinds the control plane translates, and the
/// Gateway API's Gateway and HTTPRoute (their CRDs are upstream's; none installed, none
/// watched).
pub static ISTIO_KINDS: [IstioKind; 11] = [
    kind(
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    kind(
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    kind(
        "networking.istio.io",
        "v1",
        "ServiceEntry",
        "serviceentries",
    ),
    kind(
        "networking.istio.io",
        "v1",
        "WorkloadEntry",
        "workloadentries",
    ),
    kind("networking.istio.io", "v1", "Gateway", "gateways"),
    kind(
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    kind(
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    kind(
        "extensions.istio.io",
        "v1alpha1",
        "WasmPlugin",
        "wasmplugins",
    ),
    kind("telemetry.istio.io", "v1", "Telemetry", "telemetries"),
    kind("gateway.networking.k8s.io", "v1", "Gateway", "gateways"),
    kind("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
];

/// The watched Istio kind named `kind` (`VirtualService`, ...).
pub fn istio_kind(kind: &str) -> Option<&'static IstioKind> {
    ISTIO_KINDS
        .iter()
        .find(|k| k.kind == kind && k.group.ends_with(".istio.io"))
}

/// The watched kind of a group named `kind` (`Gateway` is both Istio's and the Gateway API's).
pub fn watched_kind(group: &str, kind: &str) -> Option<&'static IstioKind> {
    ISTIO_KINDS
        .iter()
        .find(|k| k.kind == kind && k.group == group)
}

/// An Istio object as the API server holds it: what a status writer needs to patch it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectId {
    pub kind: &'static IstioKind,
    pub namespace: String,
    pub name: String,
    /// Its `metadata.generation`: what Istio's status reports as `observedGeneration`.
    pub generation: Option<i64>,
}

/// The Istio objects behind a published [`SourceState`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IstioObjects {
    /// The [`SourceState::generation`] they were read for.
    pub generation: u64,
    /// By kind (in [`ISTIO_KINDS`] order), namespace and name.
    pub objects: Vec<ObjectId>,
}

/// The cluster's running Pods (labels, service account, IP), for checking what sidecars
/// register. Cheap to clone.
#[derive(Clone)]
pub struct Pods(Store<Pod>);

impl Pods {
    /// The pod `name` in `namespace`; None while it is not known (or not running).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.0.get(&ObjectRef::new(name).within(namespace))
    }
}

/// The cluster's Namespaces, for the sidecar injector. Cheap to clone.
#[derive(Clone)]
pub struct Namespaces(Store<Namespace>);

impl Namespaces {
    /// A namespace's labels; None while it is not known.
    pub fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        let ns = self.0.get(&ObjectRef::new(namespace))?;
        Some(ns.metadata.labels.clone().unwrap_or_default())
    }
}

/// The source stopped (its tasks ended) before its first state.
#[derive(Debug, thiserror::Error)]
#[error("the Kubernetes source stopped")]
pub struct Stopped;

/// The Kubernetes source. Dropping it stops its watches.
pub struct KubeSource {
    /// As [`DirectorySource::rx`](wasmesh_controlplane::source::DirectorySource): holds
    /// generation 0 (nothing) until every initial list is in (see [`KubeSource::synced`]).
    pub rx: watch::Receiver<Arc<SourceState>>,
    /// The Istio objects of the current state, for the status writer.
    pub objects: watch::Receiver<Arc<IstioObjects>>,
    namespaces: Namespaces,
    pods: Pods,
    _tasks: JoinSet<()>,
}

impl KubeSource {
    /// Starts the watches on the current tokio runtime (panics outside one); returns at once.
    pub fn start(client: Client, options: KubeSourceOptions) -> KubeSource {
        let (changed_tx, changed_rx) = watch::channel(());
        let mut r = Reflectors {
            tasks: JoinSet::new(),
            changed: changed_tx,
            listed: watch::Sender::default(),
            count: 0,
            errors: Arc::default(),
        };
        let all = watcher::Config::default;
        let istio = ISTIO_KINDS
            .iter()
            .map(|k| {
                let ar = k.api_resource();
                let api = Api::all_with(client.clone(), &ar);
                // Named by plural and group: Istio's and the Gateway API's `gateways` are two
                // stores, each of which must be listed before the first state. Once per
                // process, so leaking the name is fine.
                let what: &'static str =
                    Box::leak(format!("{}.{}", k.plural, k.group).into_boxed_str());
                (k, r.run(what, api, all(), ar, trim_istio))
            })
            .collect();
        let c = || client.clone();
        let (mesh_namespace, mesh_name) = wasmesh_controlplane::istio::MESH_CONFIG_MAP;
        let stores = Stores {
            istio,
            mesh_config: r.run(
                "configmaps",
                Api::namespaced(c(), mesh_namespace),
                all().fields(&format!("metadata.name={mesh_name}")),
                (),
                trim_config_map,
            ),
            services: r.run("services", Api::all(c()), all(), (), trim_service),
            slices: r.run("endpointslices", Api::all(c()), all(), (), trim_slice),
            // Only running pods can be ready endpoints; the rest need not be held.
            pods: r.run(
                "pods",
                Api::all(c()),
                all().fields("status.phase=Running"),
                (),
                trim_pod,
            ),
            namespaces: r.run("namespaces", Api::all(c()), all(), (), trim_namespace),
            // Only what a Gateway API listener can serve (its certificateRefs).
            tls_secrets: r.run(
                "secrets",
                Api::all(c()),
                all().fields(&format!("type={TLS_SECRET_TYPE}")),
                (),
                trim_secret,
            ),
        };
        let namespaces = Namespaces(stores.namespaces.clone());
        let pods = Pods(stores.pods.clone());
        let (state_tx, rx) = watch::channel(Arc::new(SourceState::default()));
        let (objects_tx, objects) = watch::channel(Arc::new(IstioObjects::default()));
        let (mut listed, count) = (r.listed.subscribe(), r.count);
        let mut tasks = r.tasks;
        tasks.spawn(async move {
            // Nothing before every store has had its initial list.
            if listed.wait_for(|l| l.len() == count).await.is_ok() {
                publish(stores, changed_rx, state_tx, objects_tx, options).await;
            }
        });
        KubeSource {
            rx,
            objects,
            namespaces,
            pods,
            _tasks: tasks,
        }
    }

    /// Waits for the first state: every initial list in, translated and published. Start
    /// serving proxies after this, or they would be sent an empty mesh.
    pub async fn synced(&self) -> Result<(), Stopped> {
        let mut rx = self.rx.clone();
        rx.wait_for(|s| s.generation > 0)
            .await
            .map_err(|_| Stopped)?;
        Ok(())
    }

    pub fn namespaces(&self) -> Namespaces {
        self.namespaces.clone()
    }

    pub fn pods(&self) -> Pods {
        self.pods.clone()
    }
}

/// The reflectors' tasks, and how they tell the publisher that a store changed.
struct Reflectors {
    tasks: JoinSet<()>,
    changed: watch::Sender<()>,
    /// The reflectors that have had their initial list, of `count`.
    listed: watch::Sender<BTreeSet<&'static str>>,
    count: usize,
    errors: Arc<Mutex<ErrorLog>>,
}

impl Reflectors {
    /// Starts one reflector: its watcher with the default backoff, feeding a store.
    fn run<K>(
        &mut self,
        what: &'static str,
        api: Api<K>,
        config: watcher::Config,
        dyntype: K::DynamicType,
        trim: fn(&mut K),
    ) -> Store<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone + Send + Sync,
    {
        let writer = Writer::new(dyntype);
        let store = writer.as_reader();
        let events = watcher(api, config)
            .modify(trim)
            .default_backoff()
            .reflect(writer);
        let changed = self.changed.clone();
        let listed = self.listed.clone();
        self.count += 1;
        let errors = self.errors.clone();
        self.tasks.spawn(async move {
            let mut events = pin!(events);
            while let Some(event) = events.next().await {
                let log = || errors.lock().unwrap_or_else(PoisonError::into_inner);
                match event {
                    // Before a (re)list's request.
                    Ok(watcher::Event::Init) => {}
                    // The store is unchanged until the list replaces it at InitDone.
                    Ok(watcher::Event::InitApply(_)) => log().recovered(what),
                    Ok(event) => {
                        log().recovered(what);
                        if let watcher::Event::InitDone = event {
                            listed.send_if_modified(|l| l.insert(what));
                        }
                        changed.send_replace(());
                    }
                    Err(e) => {
                        // A kind the server does not serve (its CRD is not installed) has no
                        // objects: it must not hold the rest back. Its watcher keeps trying.
                        if let watcher::Error::InitialListFailed(kube::Error::Api(s)) = &e
                            && s.is_not_found()
                        {
                            listed.send_if_modified(|l| l.insert(what));
                        }
                        log().failed(what, &e)
                    }
                }
            }
        });
        store
    }
}

/// How often watch failures are warned about; the retries in between log at debug.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The watchers' errors, rate-limited together: each watcher retries with backoff, and an
/// API server that is down would otherwise fill the log, a line per kind per retry.
#[derive(Default)]
struct ErrorLog {
    last_warning: Option<Instant>,
    suppressed: u32,
    /// The watches warned about since they last worked.
    warned: BTreeSet<&'static str>,
}

impl ErrorLog {
    fn failed(&mut self, what: &'static str, e: &watcher::Error) {
        // The watch fell out of the API server's window: a routine relist.
        if let watcher::Error::WatchError(status) = e
            && status.code == 410
        {
            tracing::debug!(resource = what, "watch expired (410 Gone); relisting");
            return;
        }
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            self.suppressed += 1;
            tracing::debug!(resource = what, error = %e, "watch failed; retrying");
            return;
        }
        let also = match std::mem::take(&mut self.suppressed) {
            0 => String::new(),
            n => format!(" ({n} other failures in the last minute)"),
        };
        if let watcher::Error::InitialListFailed(kube::Error::Api(s)) = e
            && s.is_not_found()
        {
            tracing::warn!(
                resource = what,
                "not served by the API server (is its CRD installed?); none until it is{also}"
            );
        } else {
            tracing::warn!(
                resource = what,
                error = %e,
                "watch failed; retrying with backoff while the last state stays in effect{also}"
            );
        }
        self.last_warning = Some(now);
        self.warned.insert(what);
    }

    fn recovered(&mut self, what: &'static str) {
        if self.warned.remove(what) {
            tracing::info!(resource = what, "watching again");
        }
    }
}

/// Translates the stores, then again after each burst of changes; publishes what changed.
async fn publish(
    stores: Stores,
    mut changed: watch::Receiver<()>,
    state_tx: watch::Sender<Arc<SourceState>>,
    objects_tx: watch::Sender<Arc<IstioObjects>>,
    options: KubeSourceOptions,
) {
    let mut cache = translate::ParseCache::default();
    let mut keeper = LastGood::default();
    loop {
        changed.borrow_and_update();
        let (loaded, objects) = translate::translate(&stores, &mut cache, &options.domain_suffix);
        let loaded = keeper.apply(loaded);
        let last = state_tx.borrow().clone();
        let generation = if last.generation == 0
            || last.loaded.resources != loaded.resources
            || last.loaded.diagnostics != loaded.diagnostics
        {
            let generation = last.generation + 1;
            tracing::debug!(
                generation,
                resources = loaded.resources.len(),
                "Kubernetes state"
            );
            state_tx.send_replace(Arc::new(SourceState { generation, loaded }));
            generation
        } else {
            last.generation
        };
        let objects = IstioObjects {
            generation,
            objects,
        };
        objects_tx.send_if_modified(|o| {
            let modified = **o != objects;
            if modified {
                *o = Arc::new(objects);
            }
            modified
        });
        if changed.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(options.debounce).await;
    }
}

/// Every reflector's store.
struct Stores {
    istio: Vec<(&'static IstioKind, Store<DynamicObject>)>,
    /// Istio's mesh config (the one ConfigMap `istio-system/istio`).
    mesh_config: Store<ConfigMap>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    /// `kubernetes.io/tls` Secrets.
    tls_secrets: Store<Secret>,
}

/// The type of the Secrets watched.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// The keys of a TLS Secret read (the certificate chain, its key, a CA).
pub const TLS_SECRET_KEYS: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

// What the stores keep of each object: only what translation reads (pods are many).

fn trim_istio(o: &mut DynamicObject) {
    o.managed_fields_mut().clear();
    o.annotations_mut().clear();
    // The control plane's own output.
    if let Some(data) = o.data.as_object_mut() {
        data.remove("status");
    }
}

fn trim_config_map(c: &mut ConfigMap) {
    c.managed_fields_mut().clear();
    c.annotations_mut().clear();
    // `mesh` is Istio's MeshConfig; `meshNetworks` and the rest are not read.
    if let Some(data) = &mut c.data {
        data.retain(|k, _| k == "mesh");
    }
    c.binary_data = None;
}

fn trim_service(s: &mut Service) {
    s.managed_fields_mut().clear();
    s.annotations_mut().clear();
    s.status = None;
}

fn trim_slice(s: &mut EndpointSlice) {
    s.managed_fields_mut().clear();
    s.annotations_mut().clear();
}

fn trim_pod(p: &mut Pod) {
    p.managed_fields_mut().clear();
    p.annotations_mut()
        .retain(|k, _| k == SIDECAR_STATUS_ANNOTATION);
    // Its IP stays: a sidecar's registration is checked against it (`token_review`).
    p.status = p.status.take().map(|s| PodStatus {
        pod_ip: s.pod_ip,
        ..PodStatus::default()
    });
    p.spec = p.spec.take().map(|s| PodSpec {
        containers: s
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ..Container::default()
            })
            .collect(),
        service_account_name: s.service_account_name,
        ..PodSpec::default()
    });
}

fn trim_secret(s: &mut Secret) {
    s.managed_fields_mut().clear();
    s.annotations_mut().clear();
    s.string_data = None;
    if let Some(data) = &mut s.data {
        data.retain(|k, _| TLS_SECRET_KEYS.contains(&k.as_str()));
    }
}

fn trim_namespace(n: &mut Namespace) {
    n.managed_fields_mut().clear();
    n.annotations_mut().clear();
    n.spec = None;
    n.status = None;
}
