//! A fake API server for the source's tests, behind kube's mock service: it answers the
//! watchers' requests as the real one does. A list returns the collection at the current
//! resourceVersion; a watch from a resourceVersion streams (newline-delimited JSON) the
//! events after it, then every new one as it happens; a watch from before the compacted
//! history gets a `410 Gone` ERROR event. Tests change objects, lose history, expire watches,
//! fail requests and hold lists back.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use http::{Request, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_test::mock::{self, SendResponse};

pub type Body = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;
type Pending = (Request<kube::client::Body>, SendResponse<Response<Body>>);

/// Every collection the source watches: (kind, apiVersion, path).
const COLLECTIONS: [(&str, &str, &str); 17] = [
    (
        "VirtualService",
        "networking.istio.io/v1",
        "/apis/networking.istio.io/v1/virtualservices",
    ),
    (
        "DestinationRule",
        "networking.istio.io/v1",
        "/apis/networking.istio.io/v1/destinationrules",
    ),
    (
        "ServiceEntry",
        "networking.istio.io/v1",
        "/apis/networking.istio.io/v1/serviceentries",
    ),
    (
        "WorkloadEntry",
        "networking.istio.io/v1",
        "/apis/networking.istio.io/v1/workloadentries",
    ),
    (
        "PeerAuthentication",
        "security.istio.io/v1",
        "/apis/security.istio.io/v1/peerauthentications",
    ),
    (
        "AuthorizationPolicy",
        "security.istio.io/v1",
        "/apis/security.istio.io/v1/authorizationpolicies",
    ),
    (
        "WasmPlugin",
        "extensions.istio.io/v1alpha1",
        "/apis/extensions.istio.io/v1alpha1/wasmplugins",
    ),
    (
        "Telemetry",
        "telemetry.istio.io/v1",
        "/apis/telemetry.istio.io/v1/telemetries",
    ),
    (
        "Gateway",
        "networking.istio.io/v1",
        "/apis/networking.istio.io/v1/gateways",
    ),
    // Istio's mesh config only: the source watches its namespace, by name.
    (
        "ConfigMap",
        "v1",
        "/api/v1/namespaces/istio-system/configmaps",
    ),
    ("Service", "v1", "/api/v1/services"),
    (
        "EndpointSlice",
        "discovery.k8s.io/v1",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ),
    ("Pod", "v1", "/api/v1/pods"),
    ("Namespace", "v1", "/api/v1/namespaces"),
    (
        "Gateway",
        "gateway.networking.k8s.io/v1",
        "/apis/gateway.networking.k8s.io/v1/gateways",
    ),
    (
        "HTTPRoute",
        "gateway.networking.k8s.io/v1",
        "/apis/gateway.networking.k8s.io/v1/httproutes",
    ),
    // TLS Secrets only: the source watches them with a type field selector.
    ("Secret", "v1", "/api/v1/secrets"),
];

/// How requests fail while the API server is "down".
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    /// `500 Internal Server Error` with a Status.
    ServerError,
    /// No HTTP at all, as when the connection is refused.
    Refused,
}

#[derive(Clone)]
pub struct FakeApi(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// The last resourceVersion given out (one counter for all, as etcd's).
    revision: u64,
    /// Watches from a resourceVersion before this one get 410 Gone.
    compacted: u64,
    collections: BTreeMap<&'static str, Collection>,
    failure: Option<Failure>,
    /// Paths whose lists are not answered until released.
    held: BTreeSet<String>,
    /// Paths answered 404, as for a custom resource whose CRD is not installed.
    unserved: BTreeSet<String>,
    parked: Vec<Pending>,
    /// `GET <path>?<query>` of every request, in order.
    log: Vec<String>,
}

struct Collection {
    kind: &'static str,
    api_version: &'static str,
    objects: BTreeMap<(String, String), Value>,
    /// Every event: (resourceVersion, type, object).
    history: Vec<(u64, &'static str, Value)>,
    watches: Vec<Watch>,
}

struct Watch {
    tx: mpsc::UnboundedSender<Bytes>,
    fields: Option<(String, String)>,
}

impl FakeApi {
    /// The fake and a client talking to it; it answers on a task of the current runtime.
    pub fn start() -> (FakeApi, kube::Client) {
        let (service, mut handle) = mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let mut state = State::default();
        for (kind, api_version, path) in COLLECTIONS {
            state.collections.insert(
                path,
                Collection {
                    kind,
                    api_version,
                    objects: BTreeMap::new(),
                    history: Vec::new(),
                    watches: Vec::new(),
                },
            );
        }
        let api = FakeApi(Arc::new(Mutex::new(state)));
        let server = api.clone();
        tokio::spawn(async move {
            while let Some(pending) = handle.next_request().await {
                server.lock().answer(pending);
            }
        });
        (api, kube::Client::new(service, "default"))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// Creates or replaces an object (`kind`, `metadata.name`, `metadata.namespace`), as
    /// `kubectl apply` would: a new resourceVersion, and a new generation when its spec
    /// changed.
    pub fn apply(&self, object: Value) {
        self.lock().apply(object, true);
    }

    /// Deletes an object, telling the watches.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        self.lock().delete(kind, namespace, name, true);
    }

    /// Deletes an object while its event falls out of the history: a watch from before it
    /// can only be answered 410 Gone.
    pub fn delete_unseen(&self, kind: &str, namespace: &str, name: &str) {
        let mut s = self.lock();
        s.delete(kind, namespace, name, false);
        s.compacted = s.revision;
    }

    /// Ends every open watch with an `ERROR 410 Expired` event, as the API server does when a
    /// watcher falls behind its window.
    pub fn expire_watches(&self) {
        let mut s = self.lock();
        s.compacted = s.revision;
        let gone = gone(s.revision);
        for c in s.collections.values_mut() {
            for w in c.watches.drain(..) {
                let _ = w.tx.send(gone.clone());
            }
        }
    }

    /// Ends every open watch normally, as the API server does at its `timeoutSeconds`.
    pub fn close_watches(&self) {
        for c in self.lock().collections.values_mut() {
            c.watches.clear();
        }
    }

    /// Sends a BOOKMARK at the current resourceVersion on every open watch.
    pub fn bookmark(&self) {
        let mut s = self.lock();
        let revision = s.revision;
        for c in s.collections.values_mut() {
            let line = event(
                "BOOKMARK",
                &json!({
                    "apiVersion": c.api_version, "kind": c.kind,
                    "metadata": {"resourceVersion": revision.to_string()}
                }),
            );
            c.watches.retain(|w| w.tx.send(line.clone()).is_ok());
        }
    }

    /// Fails every request from now on, and drops every open watch (their connections die).
    pub fn fail(&self, failure: Failure) {
        let mut s = self.lock();
        s.failure = Some(failure);
        for c in s.collections.values_mut() {
            c.watches.clear();
        }
    }

    pub fn recover(&self) {
        self.lock().failure = None;
    }

    /// Lists of `path` wait until [`FakeApi::release`].
    pub fn hold(&self, path: &str) {
        self.lock().held.insert(path.to_owned());
    }

    pub fn release(&self, path: &str) {
        let mut s = self.lock();
        s.held.remove(path);
        for pending in std::mem::take(&mut s.parked) {
            s.answer(pending);
        }
    }

    /// Answers 404 for `path` until [`FakeApi::serve`].
    pub fn unserve(&self, path: &str) {
        self.lock().unserved.insert(path.to_owned());
    }

    pub fn serve(&self, path: &str) {
        self.lock().unserved.remove(path);
    }

    /// The requests so far: `<path>?<query>`, query decoded.
    pub fn requests(&self) -> Vec<String> {
        self.lock().log.clone()
    }
}

impl State {
    fn collection(&mut self, kind: &str) -> &mut Collection {
        self.collections
            .values_mut()
            .find(|c| c.kind == kind)
            .unwrap_or_else(|| panic!("no collection of {kind}"))
    }

    fn apply(&mut self, mut object: Value, tell: bool) {
        self.revision += 1;
        let revision = self.revision;
        let kind = object["kind"].as_str().expect("kind").to_owned();
        let c = self.collection(&kind);
        let key = key(&object);
        let old = c.objects.get(&key);
        let generation = match old {
            Some(old) => {
                let last = old["metadata"]["generation"].as_i64().unwrap_or(1);
                last + i64::from(old.get("spec") != object.get("spec"))
            }
            None => 1,
        };
        let kind_of_event = if old.is_some() { "MODIFIED" } else { "ADDED" };
        object["apiVersion"] = json!(c.api_version);
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        object["metadata"]["generation"] = json!(generation);
        c.objects.insert(key, object.clone());
        if tell {
            c.tell(revision, kind_of_event, object);
        }
    }

    fn delete(&mut self, kind: &str, namespace: &str, name: &str, tell: bool) {
        self.revision += 1;
        let revision = self.revision;
        let c = self.collection(kind);
        let mut object = c
            .objects
            .remove(&(namespace.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name}"));
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        if tell {
            c.tell(revision, "DELETED", object);
        }
    }

    fn answer(&mut self, (request, respond): Pending) {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().as_bytes();
        let query: BTreeMap<String, String> = form_urlencoded::parse(query).into_owned().collect();
        let line = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        self.log.push(format!("{path}?{line}"));
        match self.failure {
            Some(Failure::ServerError) => {
                return respond.send_response(status(500, "InternalError", "etcd is sad"));
            }
            Some(Failure::Refused) => {
                return respond.send_error(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                ));
            }
            None => {}
        }
        let watch = query.get("watch").is_some_and(|w| w == "true");
        if !watch && self.held.contains(&path) {
            self.parked.push((request, respond));
            return;
        }
        let (revision, compacted) = (self.revision, self.compacted);
        let served = !self.unserved.contains(&path);
        let Some(c) = self.collections.get_mut(path.as_str()).filter(|_| served) else {
            return respond.send_response(status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        };
        let fields = query.get("fieldSelector").and_then(|f| {
            let (k, v) = f.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        });
        if !watch {
            // Built-in kinds' list items have no apiVersion and kind; custom resources' have.
            let builtin = !c.api_version.contains(".istio.io")
                && !c.api_version.starts_with("gateway.networking.k8s.io");
            let items: Vec<Value> = c
                .objects
                .values()
                .filter(|o| matches(o, &fields))
                .map(|o| {
                    let mut o = o.clone();
                    if builtin {
                        let m = o.as_object_mut().unwrap();
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    o
                })
                .collect();
            let list = json!({
                "apiVersion": c.api_version,
                "kind": format!("{}List", c.kind),
                "metadata": {"resourceVersion": revision.to_string()},
                "items": items,
            });
            return respond.send_response(response(200, stream::iter([list.to_string().into()])));
        }
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(revision);
        let (tx, rx) = mpsc::unbounded_channel();
        if from < compacted {
            let _ = tx.send(gone(revision));
        } else {
            for (rv, kind, o) in &c.history {
                if *rv > from && matches(o, &fields) {
                    let _ = tx.send(event(kind, o));
                }
            }
            c.watches.push(Watch { tx, fields });
        }
        let lines = stream::unfold(rx, |mut rx| async move { Some((rx.recv().await?, rx)) });
        respond.send_response(response(200, lines));
    }
}

impl Collection {
    fn tell(&mut self, revision: u64, kind: &'static str, object: Value) {
        let line = event(kind, &object);
        self.watches
            .retain(|w| !matches(&object, &w.fields) || w.tx.send(line.clone()).is_ok());
        self.history.push((revision, kind, object));
    }
}

fn key(object: &Value) -> (String, String) {
    let m = &object["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_owned(),
        m["name"].as_str().expect("metadata.name").to_owned(),
    )
}

/// Whether an object has `path=value` (a dotted path), as a field selector asks.
fn matches(object: &Value, fields: &Option<(String, String)>) -> bool {
    let Some((path, value)) = fields else {
        return true;
    };
    let found = path.split('.').fold(object, |o, k| &o[k]);
    found.as_str() == Some(value.as_str())
}

fn event(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    line.into()
}

fn gone(revision: u64) -> Bytes {
    event(
        "ERROR",
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": "Expired", "code": 410,
            "message": format!("too old resource version: 1 ({revision})"),
        }),
    )
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": reason, "code": code, "message": message,
    });
    response(code, stream::iter([body.to_string().into()]))
}

fn response(
    code: u16,
    chunks: impl futures_util::Stream<Item = Bytes> + Send + 'static,
) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(StreamBody::new(chunks.map(|b| Ok(Frame::data(b))).boxed()))
        .unwrap()
}
