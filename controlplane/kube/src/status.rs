//! Diagnostics written back to the Istio objects' `status`, as istiod's analysis does:
//! `status.validationMessages`, one per diagnostic at level Error or Warning, in Istio's
//! `AnalysisMessageBase` shape plus our text:
//!
//! ```yaml
//! status:
//!   validationMessages:
//!   - type: {code: IST0101, name: ReferencedResourceNotFound}
//!     level: ERROR
//!     documentationUrl: https://istio.io/latest/docs/reference/config/analysis/ist0101/
//!     message: 'spec.http[0].route[0].destination.host: Referenced host not found: "reviews2"'
//! ```
//!
//! `message` is ours (Istio keeps the text out of the status); it is what `kubectl get -o
//! yaml` shows. Not written: `observedGeneration` (a diagnostic does not say which generation
//! it was computed from) and the `Reconciled` condition (Istio's reports distribution to
//! proxies, which wasmesh does not track per object).
//!
//! Only the Lease's holder writes, only what changed since its last write (at most once a
//! second per object), through the status subresource with a JSON merge patch. On becoming
//! the holder it lists the kinds to learn what the statuses hold, so that messages a former
//! holder left on objects fixed since are cleared, and nothing already right is written again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, Error};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wasmesh_controlplane::diag::{Diagnostic, Level};

use crate::lease::{has_code, jitter};
use crate::source::IstioObjects;

pub mod gateway_api;

/// The field manager of our writes.
const MANAGER: &str = "wasmesh-controlplane";

/// The least time between two writes of one object's status.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest wait before retrying a failed write or list.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The kinds whose status is written: `(kind, group, version, plural)`.
const KINDS: [(&str, &str, &str, &str); 7] = [
    (
        "VirtualService",
        "networking.istio.io",
        "v1",
        "virtualservices",
    ),
    (
        "DestinationRule",
        "networking.istio.io",
        "v1",
        "destinationrules",
    ),
    (
        "ServiceEntry",
        "networking.istio.io",
        "v1",
        "serviceentries",
    ),
    (
        "WorkloadEntry",
        "networking.istio.io",
        "v1",
        "workloadentries",
    ),
    (
        "PeerAuthentication",
        "security.istio.io",
        "v1",
        "peerauthentications",
    ),
    (
        "AuthorizationPolicy",
        "security.istio.io",
        "v1",
        "authorizationpolicies",
    ),
    (
        "WasmPlugin",
        "extensions.istio.io",
        "v1alpha1",
        "wasmplugins",
    ),
];

/// Writes `diagnostics` (each new value: the whole current set, as
/// `Mesh::watch_diagnostics` sends) to the objects' status while `leader` is true. Ends when
/// either sender closes.
pub fn start(
    client: Client,
    leader: watch::Receiver<bool>,
    diagnostics: watch::Receiver<Arc<Vec<Diagnostic>>>,
) -> JoinHandle<()> {
    let writer = Writer {
        client,
        desired: BTreeMap::new(),
        known: HashMap::new(),
        next: HashMap::new(),
        unlisted: BTreeSet::new(),
        list_at: Instant::now(),
        list_failures: 0,
    };
    tokio::spawn(writer.run(leader, diagnostics))
}

/// Keeps only the diagnostics about objects that exist in the API: the Kubernetes source also
/// makes resources of its own (a ServiceEntry per Service, a WorkloadEntry per pod), whose
/// diagnostics have no object to be written to. Feeds [`start`].
pub fn of_objects(
    mut diagnostics: watch::Receiver<Arc<Vec<Diagnostic>>>,
    mut objects: watch::Receiver<Arc<IstioObjects>>,
) -> watch::Receiver<Arc<Vec<Diagnostic>>> {
    let filter = |diagnostics: &[Diagnostic], objects: &IstioObjects| {
        let real: BTreeSet<(&str, &str, &str)> = objects
            .objects
            .iter()
            .map(|o| (o.kind.kind, o.namespace.as_str(), o.name.as_str()))
            .collect();
        let about_real = |d: &&Diagnostic| match (&d.kind, &d.namespace, &d.name) {
            (Some(k), Some(ns), Some(n)) => real.contains(&(k.as_str(), ns.as_str(), n.as_str())),
            _ => false,
        };
        Arc::new(
            diagnostics
                .iter()
                .filter(about_real)
                .cloned()
                .collect::<Vec<_>>(),
        )
    };
    let first = filter(
        &diagnostics.borrow_and_update(),
        &objects.borrow_and_update(),
    );
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = diagnostics.changed() => if changed.is_err() { return },
                changed = objects.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            let kept = filter(
                &diagnostics.borrow_and_update(),
                &objects.borrow_and_update(),
            );
            tx.send_if_modified(|current| {
                let changed = **current != *kept;
                if changed {
                    *current = kept;
                }
                changed
            });
        }
    });
    rx
}

/// An object: its kind (an index in [`KINDS`]), namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    kind: usize,
    namespace: String,
    name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", KINDS[self.kind].0, self.namespace, self.name)
    }
}

/// What an object's `validationMessages` hold, as far as we know.
enum Known {
    /// This (written by us, or listed).
    Messages(Value),
    /// The object did not exist when these were to be written: not tried again until the
    /// messages wanted change.
    Missing(Value),
}

struct Writer {
    client: Client,
    /// The messages each object should hold (a non-empty array); others should hold none.
    desired: BTreeMap<Key, Value>,
    /// Absent: holds none.
    known: HashMap<Key, Known>,
    /// When each object may be written again, and its failed writes in a row.
    next: HashMap<Key, (Instant, u32)>,
    /// Kinds not yet listed since becoming the leader, and when to try again.
    unlisted: BTreeSet<usize>,
    list_at: Instant,
    list_failures: u32,
}

impl Writer {
    async fn run(
        mut self,
        mut leader: watch::Receiver<bool>,
        mut diagnostics: watch::Receiver<Arc<Vec<Diagnostic>>>,
    ) {
        let mut leading = false;
        self.desired = desired(&diagnostics.borrow_and_update());
        loop {
            if *leader.borrow_and_update() != leading {
                leading = !leading;
                // What a former holder wrote is unknown until listed.
                self.known.clear();
                self.next.clear();
                self.unlisted = if leading {
                    (0..KINDS.len()).collect()
                } else {
                    BTreeSet::new()
                };
                self.list_at = Instant::now();
                self.list_failures = 0;
            }
            let mut wake = None;
            if leading {
                self.list(&leader).await;
                self.write(&leader).await;
                wake = self.next_wake();
            }
            tokio::select! {
                changed = leader.changed() => if changed.is_err() { return },
                changed = diagnostics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.desired = desired(&diagnostics.borrow_and_update());
                }
                () = sleep_until(wake), if wake.is_some() => {}
            }
        }
    }

    /// Lists the kinds not listed yet, to learn what their objects' statuses hold.
    async fn list(&mut self, leader: &watch::Receiver<bool>) {
        if self.unlisted.is_empty() || self.list_at > Instant::now() {
            return;
        }
        for kind in self.unlisted.clone() {
            if !*leader.borrow() {
                return;
            }
            let api = Api::<DynamicObject>::all_with(self.client.clone(), &api_resource(kind));
            let objects = match within(api.list(&ListParams::default())).await {
                Ok(list) => list.items,
                // The CRD is not installed: there are no such objects.
                Err(e) if has_code(&e, 404) => Vec::new(),
                Err(e) => {
                    tracing::warn!(kind = KINDS[kind].0, error = %e, "cannot list, to reconcile status");
                    continue;
                }
            };
            self.unlisted.remove(&kind);
            self.known.retain(|key, _| key.kind != kind);
            for object in objects {
                let messages = &object.data["status"]["validationMessages"];
                if messages.as_array().is_some_and(|m| !m.is_empty()) {
                    let key = Key {
                        kind,
                        namespace: object.metadata.namespace.unwrap_or_default(),
                        name: object.metadata.name.unwrap_or_default(),
                    };
                    self.known.insert(key, Known::Messages(messages.clone()));
                }
            }
        }
        if !self.unlisted.is_empty() {
            self.list_failures += 1;
            self.list_at = Instant::now() + backoff(self.list_failures);
        }
    }

    /// The messages `key` should be written with (`null`: none), if it needs a write.
    fn pending(&self, key: &Key) -> Option<Value> {
        let want = self.desired.get(key).cloned().unwrap_or(Value::Null);
        let needed = match self.known.get(key) {
            None => !want.is_null(),
            Some(Known::Messages(v)) => *v != want,
            Some(Known::Missing(v)) => !want.is_null() && *v != want,
        };
        needed.then_some(want)
    }

    /// Writes every object that needs it and may be written now.
    async fn write(&mut self, leader: &watch::Receiver<bool>) {
        let keys: BTreeSet<Key> = self
            .desired
            .keys()
            .chain(self.known.keys())
            .cloned()
            .collect();
        for key in keys {
            let Some(want) = self.pending(&key) else {
                // A missing object no longer wanting messages is forgotten.
                if !self.desired.contains_key(&key) {
                    self.known.remove(&key);
                }
                continue;
            };
            if self
                .next
                .get(&key)
                .is_some_and(|(at, _)| *at > Instant::now())
            {
                continue;
            }
            if !*leader.borrow() {
                return;
            }
            let api = Api::<DynamicObject>::namespaced_with(
                self.client.clone(),
                &key.namespace,
                &api_resource(key.kind),
            );
            let params = PatchParams {
                field_manager: Some(MANAGER.to_owned()),
                ..PatchParams::default()
            };
            let patch = Patch::Merge(json!({ "status": { "validationMessages": want } }));
            match within(api.patch_status(&key.name, &params, &patch)).await {
                Ok(_) => {
                    tracing::debug!(object = %key, "status written");
                    self.next
                        .insert(key.clone(), (Instant::now() + MIN_INTERVAL, 0));
                    if want.is_null() {
                        self.known.remove(&key);
                    } else {
                        self.known.insert(key, Known::Messages(want));
                    }
                }
                Err(e) if has_code(&e, 404) => {
                    tracing::debug!(object = %key, "no status written: the object does not exist");
                    self.next.remove(&key);
                    self.known.insert(key, Known::Missing(want));
                }
                Err(e) => {
                    let failures = self.next.get(&key).map_or(0, |(_, n)| *n) + 1;
                    tracing::warn!(object = %key, error = %e, "cannot write status");
                    self.next
                        .insert(key, (Instant::now() + backoff(failures), failures));
                }
            }
        }
        let now = Instant::now();
        self.next.retain(|_, (at, _)| *at > now);
    }

    /// When the next write or list is due, if any is waiting.
    fn next_wake(&self) -> Option<Instant> {
        let writes = self
            .desired
            .keys()
            .chain(self.known.keys())
            .filter(|key| self.pending(key).is_some())
            .filter_map(|key| self.next.get(key).map(|(at, _)| *at));
        let lists = (!self.unlisted.is_empty()).then_some(self.list_at);
        writes.chain(lists).min()
    }
}

/// The messages each object should hold, from the mesh's diagnostics. Diagnostics without a
/// resource, of kinds not written, and notes (level Info) are left out.
fn desired(diagnostics: &[Diagnostic]) -> BTreeMap<Key, Value> {
    let mut by_object: BTreeMap<Key, Vec<&Diagnostic>> = BTreeMap::new();
    for d in diagnostics.iter().filter(|d| d.level != Level::Info) {
        let (Some(kind), Some(namespace), Some(name)) = (&d.kind, &d.namespace, &d.name) else {
            continue;
        };
        let Some(kind) = KINDS.iter().position(|k| k.0 == kind) else {
            continue;
        };
        let key = Key {
            kind,
            namespace: namespace.clone(),
            name: name.clone(),
        };
        by_object.entry(key).or_default().push(d);
    }
    by_object
        .into_iter()
        .map(|(key, mut ds)| {
            // A stable order: the same diagnostics, the same status.
            ds.sort_by(|a, b| {
                (a.level, a.code, &a.field, &a.message)
                    .cmp(&(b.level, b.code, &b.field, &b.message))
            });
            (key, ds.into_iter().map(message).collect())
        })
        .collect()
}

/// One `validationMessages` entry.
fn message(d: &Diagnostic) -> Value {
    let mut kind = json!({ "code": d.code });
    if let Some(name) = code_name(d.code) {
        kind["name"] = name.into();
    }
    let mut m = json!({
        "type": kind,
        "level": match d.level {
            Level::Error => "ERROR",
            Level::Warning => "WARNING",
            Level::Info => "INFO",
        },
        "message": match &d.field {
            Some(field) => format!("{field}: {}", d.message),
            None => d.message.clone(),
        },
    });
    if let Some(n) = d.code.strip_prefix("IST") {
        m["documentationUrl"] =
            format!("https://istio.io/latest/docs/reference/config/analysis/ist{n}/").into();
    }
    m
}

/// The message type's name: istioctl's for `IST` codes, ours for `WSM` codes.
fn code_name(code: &str) -> Option<&'static str> {
    use wasmesh_controlplane::diag::code::*;
    Some(match code {
        DEPRECATED => "Deprecated",
        REFERENCED_RESOURCE_NOT_FOUND => "ReferencedResourceNotFound",
        SCHEMA_VALIDATION_ERROR => "SchemaValidationError",
        CONFLICTING_VIRTUAL_SERVICE_HOSTS => "ConflictingMeshGatewayVirtualServiceHosts",
        DESTINATION_PORT_SELECTOR_REQUIRED => "VirtualServiceDestinationPortSelectorRequired",
        INVALID_REGEXP => "InvalidRegexp",
        SUBSET_SELECTS_NO_ENDPOINTS => "DestinationRuleSubsetNotSelectPods",
        UNSUPPORTED_KIND => "UnsupportedKind",
        UNSUPPORTED_FIELD => "UnsupportedField",
        NO_ENDPOINTS => "NoEndpoints",
        PARSE_ERROR => "ParseError",
        SHADOWED => "Shadowed",
        NOTE => "Note",
        SHORT_SERVICE_ENTRY_HOST => "ShortServiceEntryHost",
        SELECTS_NOTHING => "SelectsNothing",
        _ => return None,
    })
}

fn api_resource(kind: usize) -> ApiResource {
    let (kind, group, version, plural) = KINDS[kind];
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: format!("{group}/{version}"),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

/// After `failures` failed tries in a row: 1 s, 2 s, 4 s ... up to a minute, jittered.
fn backoff(failures: u32) -> Duration {
    jitter((Duration::from_secs(1) * 2u32.pow(failures.clamp(1, 7) - 1)).min(MAX_BACKOFF))
}

/// A request, failed if the API server does not answer in time.
async fn within<T>(request: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Service(
                "the API server did not answer in time".into(),
            ))
        })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
