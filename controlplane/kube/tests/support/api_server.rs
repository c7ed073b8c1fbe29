//! An in-memory Kubernetes API server on a loopback port (plain HTTP, no authentication), for
//! running the real control plane against. It answers as the real one does for what the
//! control plane asks, in the real one's shapes, for the kinds of [`KINDS`]:
//!
//! - LIST (`kind: <Kind>List`, `metadata.resourceVersion`; `labelSelector` and `fieldSelector`
//!   with `=`, `==` and `!=`, and label existence; `limit` is ignored: one page);
//! - WATCH (`watch=true`): newline-delimited events, chunked, from `resourceVersion` (from
//!   the history; `0` or none starts with an ADDED event per object), then every change as
//!   it is made; BOOKMARKs every second when `allowWatchBookmarks=true`; ended after
//!   `timeoutSeconds`. History is never compacted, so there is no `410 Gone`;
//! - GET, POST (create), PUT (replace, with the resourceVersion precondition), PATCH (JSON
//!   merge patch, JSON patch, and strategic merge patch simplified: lists whose items all
//!   have a `name` merge by it, other lists are replaced, and `$patch` directives are not
//!   understood), DELETE; on an object and on its `/status` subresource where the kind has
//!   one (writes there change only the status; writes to the object keep it);
//! - `TokenReview`s (`POST /apis/authentication.k8s.io/v1/tokenreviews`): the tokens of
//!   [`ApiServer::add_token`] authenticate their user for the audiences asked (echoed), any
//!   other is not authenticated, with an error.
//!
//! Every change takes the next resourceVersion of one global counter and is delivered to the
//! watches it matches; a write that changes nothing is no change. `generation` starts at 1
//! and moves when anything but `metadata` and `status` changes. Errors are `Status` objects.
//! Every request is recorded, and the server can be made to fail ([`Outage`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

type Body = BoxBody<Bytes, Infallible>;

/// A kind the server serves.
struct Kind {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    /// Whether it has a `/status` subresource.
    status: bool,
    /// A custom resource: its list items carry `apiVersion` and `kind` (built-in kinds' do
    /// not).
    custom: bool,
}

const fn kind(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
    custom: bool,
) -> Kind {
    Kind {
        group,
        version,
        plural,
        kind,
        namespaced,
        status,
        custom,
    }
}

/// The kinds served: what the control plane reads and writes.
#[rustfmt::skip]
const KINDS: [Kind; 16] = [
    kind("", "v1", "namespaces", "Namespace", false, true, false),
    kind("", "v1", "configmaps", "ConfigMap", true, false, false),
    kind("", "v1", "services", "Service", true, true, false),
    kind("", "v1", "pods", "Pod", true, true, false),
    kind("", "v1", "secrets", "Secret", true, false, false),
    kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true, false, false),
    kind("coordination.k8s.io", "v1", "leases", "Lease", true, false, false),
    kind("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration", false, false, false),
    kind("networking.istio.io", "v1", "virtualservices", "VirtualService", true, true, true),
    kind("networking.istio.io", "v1", "destinationrules", "DestinationRule", true, true, true),
    kind("networking.istio.io", "v1", "serviceentries", "ServiceEntry", true, true, true),
    kind("networking.istio.io", "v1", "workloadentries", "WorkloadEntry", true, true, true),
    kind("security.istio.io", "v1", "peerauthentications", "PeerAuthentication", true, true, true),
    kind("security.istio.io", "v1", "authorizationpolicies", "AuthorizationPolicy", true, true, true),
    kind("extensions.istio.io", "v1alpha1", "wasmplugins", "WasmPlugin", true, true, true),
    kind("telemetry.istio.io", "v1", "telemetries", "Telemetry", true, true, true),
];

impl Kind {
    fn api_version(&self) -> String {
        match self.group {
            "" => self.version.to_owned(),
            group => format!("{group}/{}", self.version),
        }
    }

    /// As the API server names it in messages: `secrets`, `leases.coordination.k8s.io`.
    fn resource(&self) -> String {
        match self.group {
            "" => self.plural.to_owned(),
            group => format!("{}.{group}", self.plural),
        }
    }
}

fn kind_named(name: &str) -> usize {
    KINDS
        .iter()
        .position(|k| k.kind == name)
        .unwrap_or_else(|| panic!("the fake API server does not serve {name}"))
}

/// How the server fails while it is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outage {
    /// Every request is answered `500 Internal Server Error` (a Status); open watches end.
    ServerError,
    /// Every connection, open or new, is closed without an answer.
    Unreachable,
}

/// A request as it came, for tests to assert on.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    /// The query, percent-decoded, by parameter.
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// The body: JSON, or a string when it is not JSON, or null when empty.
    pub body: Value,
    /// The status answered.
    pub status: u16,
}

/// An error the API server answers with.
#[derive(Debug)]
struct Failure {
    code: u16,
    reason: &'static str,
    message: String,
    details: Value,
}

impl Failure {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            reason,
            message: message.into(),
            details: json!({}),
        }
    }

    /// About the object `name` of kind `k`.
    fn about(k: &Kind, name: &str, code: u16, reason: &'static str, message: String) -> Failure {
        let mut details = json!({"name": name, "kind": k.plural});
        if !k.group.is_empty() {
            details["group"] = k.group.into();
        }
        Failure {
            code,
            reason,
            message,
            details,
        }
    }

    fn not_found(k: &Kind, name: &str) -> Failure {
        Failure::about(
            k,
            name,
            404,
            "NotFound",
            format!("{} \"{name}\" not found", k.resource()),
        )
    }

    fn no_such_resource() -> Failure {
        Failure::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(400, "BadRequest", message)
    }

    fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason,
            "details": self.details, "code": self.code,
        })
    }
}

/// The server; it stops when dropped.
pub struct ApiServer {
    pub address: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Moves at every change and every request: what [`ApiServer::wait_for`] waits on.
    activity: watch::Receiver<u64>,
    tasks: Vec<AbortHandle>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.lock().close_connections();
    }
}

struct State {
    /// The last resourceVersion given out.
    revision: u64,
    /// Every object, by kind (an index in [`KINDS`]), namespace ("" if cluster-scoped), name.
    objects: BTreeMap<(usize, String, String), Value>,
    /// Every change: (resourceVersion, kind, event type, object).
    history: Vec<(u64, usize, &'static str, Value)>,
    watches: Vec<Watch>,
    uids: u64,
    outage: Option<Outage>,
    connections: Vec<AbortHandle>,
    /// Connections accepted (and, while unreachable, closed at once).
    accepted: u64,
    requests: Vec<Recorded>,
    activity: watch::Sender<u64>,
    /// Service-account tokens, and the user each authenticates.
    tokens: BTreeMap<String, String>,
}

struct Watch {
    kind: usize,
    namespace: Option<String>,
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

impl Watch {
    fn wants(&self, kind: usize, object: &Value) -> bool {
        kind == self.kind
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| object["metadata"]["namespace"] == **ns)
            && selects(&self.labels, object, true)
            && selects(&self.fields, object, false)
    }
}

impl ApiServer {
    /// Starts the server on `127.0.0.1`, on a port of its own, on the current tokio runtime.
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (activity_tx, activity) = watch::channel(0);
        let state = Arc::new(Mutex::new(State {
            revision: 1,
            objects: BTreeMap::new(),
            history: Vec::new(),
            watches: Vec::new(),
            uids: 0,
            outage: None,
            connections: Vec::new(),
            accepted: 0,
            requests: Vec::new(),
            activity: activity_tx,
            tokens: BTreeMap::new(),
        }));
        let accept = tokio::spawn(accept(listener, state.clone()));
        let bookmarks = tokio::spawn({
            let state = state.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    state.lock().unwrap().bookmark();
                }
            }
        });
        ApiServer {
            address,
            state,
            activity,
            tasks: vec![accept.abort_handle(), bookmarks.abort_handle()],
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a kubeconfig naming this server into `dir`; returns its path (for `KUBECONFIG`).
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {{server: 'http://{}'}}
users:
- name: fake
  user: {{}}
contexts:
- name: fake
  context: {{cluster: fake, user: fake, namespace: default}}
current-context: fake
",
            self.address
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Creates `object` (its `apiVersion`, `kind` and `metadata` say what and where), as
    /// `kubectl create` would; returns it as stored.
    pub fn create(&self, object: Value) -> Value {
        let (kind, namespace, _) = identify(&object);
        self.lock()
            .create(kind, namespace.as_deref(), object)
            .unwrap_or_else(|f| panic!("create: {}", f.message))
    }

    /// Replaces `object` as `kubectl replace` would: the resourceVersion it carries, if any,
    /// must be the stored one.
    pub fn replace(&self, object: Value) -> Value {
        let (kind, namespace, name) = identify(&object);
        self.lock()
            .update(kind, namespace.as_deref(), &name, false, |_| Ok(object))
            .unwrap_or_else(|f| panic!("replace: {}", f.message))
    }

    /// Applies a JSON merge patch to the object `kind` `namespace`/`name`.
    pub fn merge_patch(&self, kind: &str, namespace: &str, name: &str, patch: Value) -> Value {
        self.lock()
            .update(kind_named(kind), ns(namespace), name, false, |mut o| {
                json_patch::merge(&mut o, &patch);
                Ok(o)
            })
            .unwrap_or_else(|f| panic!("patch: {}", f.message))
    }

    /// Merge-patches an object's status subresource, as a kubelet or a controller does.
    pub fn merge_patch_status(&self, kind: &str, namespace: &str, name: &str, patch: Value) {
        self.lock()
            .update(kind_named(kind), ns(namespace), name, true, |mut o| {
                json_patch::merge(&mut o, &patch);
                Ok(o)
            })
            .unwrap_or_else(|f| panic!("patch status: {}", f.message));
    }

    /// Deletes an object.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let kind = kind_named(kind);
        self.lock()
            .delete(kind, ns(namespace), name)
            .unwrap_or_else(|f| panic!("delete: {}", f.message));
    }

    /// The object `kind` `namespace`/`name` (`namespace` empty for cluster-scoped kinds).
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (kind_named(kind), namespace.to_owned(), name.to_owned());
        self.lock().objects.get(&key).cloned()
    }

    /// Makes TokenReviews of `token` authenticate `username`.
    pub fn add_token(&self, token: &str, username: &str) {
        self.lock()
            .tokens
            .insert(token.to_owned(), username.to_owned());
    }

    /// The requests so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The connections made to the server so far.
    pub fn connections(&self) -> u64 {
        self.lock().accepted
    }

    /// Fails every request until [`ApiServer::recover`].
    pub fn fail(&self, outage: Outage) {
        let mut s = self.lock();
        s.outage = Some(outage);
        s.watches.clear();
        if outage == Outage::Unreachable {
            s.close_connections();
        }
    }

    pub fn recover(&self) {
        self.lock().outage = None;
    }

    /// Waits until `check` finds what it looks for (checked again at every change and
    /// request), for at most `timeout`. The error says what did not come, and shows the last
    /// requests.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&ApiServer) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        let mut activity = self.activity.clone();
        loop {
            activity.borrow_and_update();
            if let Some(found) = check(self) {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                break;
            }
            // Also polled: a check may look at more than the server.
            let poll = Instant::now() + Duration::from_millis(100);
            let _ = tokio::time::timeout_at(deadline.min(poll), activity.changed()).await;
        }
        let requests: Vec<String> = self
            .requests()
            .iter()
            .rev()
            .take(30)
            .rev()
            .map(|r| {
                let mut body = r.body.to_string();
                body.truncate(if r.method == Method::GET { 0 } else { 400 });
                format!(
                    "{} {} {:?} {body} -> {}",
                    r.method, r.path, r.query, r.status
                )
            })
            .collect();
        Err(format!(
            "not within {timeout:?}: {what}; the API server's last requests:\n{}",
            requests.join("\n")
        ))
    }
}

fn ns(namespace: &str) -> Option<&str> {
    (!namespace.is_empty()).then_some(namespace)
}

/// An object's kind, namespace and name.
fn identify(object: &Value) -> (usize, Option<String>, String) {
    let kind = kind_named(object["kind"].as_str().expect("a kind"));
    let namespace = object["metadata"]["namespace"].as_str().map(str::to_owned);
    let name = object["metadata"]["name"].as_str().expect("a name");
    (kind, namespace, name.to_owned())
}

async fn accept(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let mut s = state.lock().unwrap();
        s.accepted += 1;
        if s.outage == Some(Outage::Unreachable) {
            continue; // dropped: closed at once
        }
        let service = hyper::service::service_fn({
            let state = state.clone();
            move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            }
        });
        let connection = tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        s.connections.retain(|c| !c.is_finished());
        s.connections.push(connection.abort_handle());
    }
}

async fn handle(state: &Mutex<State>, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let query = parts.uri.query().unwrap_or_default().as_bytes();
    let query: BTreeMap<String, String> = form_urlencoded::parse(query).into_owned().collect();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match bytes.is_empty() {
        true => Value::Null,
        false => serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
    };
    let mut recorded = Recorded {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query,
        content_type,
        body,
        status: 0,
    };
    let response = {
        let mut s = state.lock().unwrap();
        let response = match s.outage {
            Some(Outage::ServerError) => Some(failure(&Failure::new(
                500,
                "InternalError",
                "Internal error occurred: etcdserver: request timed out",
            ))),
            // Its connection is being closed: no answer, no record.
            Some(Outage::Unreachable) => None,
            None => Some(s.answer(&recorded).unwrap_or_else(|f| failure(&f))),
        };
        if let Some(response) = &response {
            recorded.status = response.status().as_u16();
            s.requests.push(recorded);
            s.activity.send_modify(|n| *n += 1);
        }
        response
    };
    match response {
        Some(response) => response,
        None => std::future::pending().await,
    }
}

/// What a request asks for.
struct Target {
    kind: usize,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

/// `/api/v1[/namespaces/NS]/PLURAL[/NAME[/status]]`, and the same under
/// `/apis/GROUP/VERSION`.
fn target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(*namespace), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some(*name), false),
        [plural, name, "status"] => (*plural, Some(*name), true),
        _ => return None,
    };
    let kind = KINDS
        .iter()
        .position(|k| k.group == group && k.version == version && k.plural == plural)?;
    let k = &KINDS[kind];
    let fits = match (k.namespaced, namespace, name) {
        (false, Some(_), _) => false,
        // A namespaced object is named within its namespace.
        (true, None, Some(_)) => false,
        _ => !status || k.status,
    };
    fits.then(|| Target {
        kind,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        status,
    })
}

impl State {
    fn answer(&mut self, r: &Recorded) -> Result<Response<Body>, Failure> {
        if r.method == Method::POST && r.path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            return Ok(json_response(StatusCode::CREATED, &self.review(&r.body)));
        }
        let t = target(&r.path).ok_or_else(Failure::no_such_resource)?;
        let namespace = t.namespace.as_deref();
        let object = match (&r.method, t.name.as_deref()) {
            (&Method::GET, None)
                if r.query
                    .get("watch")
                    .is_some_and(|w| w == "true" || w == "1") =>
            {
                return self.watch(t.kind, t.namespace.clone(), &r.query);
            }
            (&Method::GET, None) => self.list(t.kind, namespace, &r.query)?,
            (&Method::GET, Some(name)) => self
                .objects
                .get(&(
                    t.kind,
                    namespace.unwrap_or_default().to_owned(),
                    name.to_owned(),
                ))
                .cloned()
                .ok_or_else(|| Failure::not_found(&KINDS[t.kind], name))?,
            (&Method::POST, None) => {
                let created = self.create(t.kind, namespace, r.body.clone())?;
                return Ok(json_response(StatusCode::CREATED, &created));
            }
            (&Method::PUT, Some(name)) => {
                let body = r.body.clone();
                self.update(t.kind, namespace, name, t.status, |_| Ok(body))?
            }
            (&Method::PATCH, Some(name)) => {
                let patch = &r.body;
                let content_type = r.content_type.as_deref().unwrap_or_default();
                self.update(t.kind, namespace, name, t.status, |mut o| {
                    apply_patch(&mut o, content_type, patch)?;
                    Ok(o)
                })?
            }
            (&Method::DELETE, Some(name)) if !t.status => self.delete(t.kind, namespace, name)?,
            _ => {
                return Err(Failure::new(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                ));
            }
        };
        Ok(json_response(StatusCode::OK, &object))
    }

    /// A TokenReview, answered as the real server answers one (nothing is stored).
    fn review(&self, review: &Value) -> Value {
        let spec = &review["spec"];
        let token = spec["token"].as_str().unwrap_or_default();
        let status = match self.tokens.get(token) {
            Some(username) => json!({
                "authenticated": true,
                "user": {
                    "username": username,
                    "uid": format!("uid-of-{username}"),
                    "groups": ["system:serviceaccounts", "system:authenticated"],
                },
                "audiences": spec["audiences"],
            }),
            None => json!({
                "user": {},
                "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]",
            }),
        };
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        })
    }

    fn list(
        &self,
        kind: usize,
        namespace: Option<&str>,
        query: &BTreeMap<String, String>,
    ) -> Result<Value, Failure> {
        let k = &KINDS[kind];
        let labels = requirements(query.get("labelSelector"))?;
        let fields = requirements(query.get("fieldSelector"))?;
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((of, ns, _), _)| *of == kind && namespace.is_none_or(|n| n == ns.as_str()))
            .map(|(_, o)| o)
            .filter(|o| selects(&labels, o, true) && selects(&fields, o, false))
            .map(|o| {
                let mut o = o.clone();
                if !k.custom {
                    let m = o.as_object_mut().unwrap();
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                o
            })
            .collect();
        Ok(json!({
            "kind": format!("{}List", k.kind),
            "apiVersion": k.api_version(),
            "metadata": {"resourceVersion": self.revision.to_string()},
            "items": items,
        }))
    }

    fn watch(
        &mut self,
        kind: usize,
        namespace: Option<String>,
        query: &BTreeMap<String, String>,
    ) -> Result<Response<Body>, Failure> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watch = Watch {
            kind,
            namespace,
            labels: requirements(query.get("labelSelector"))?,
            fields: requirements(query.get("fieldSelector"))?,
            bookmarks: query
                .get("allowWatchBookmarks")
                .is_some_and(|b| b == "true"),
            tx,
        };
        match query.get("resourceVersion").map(String::as_str) {
            // "Start at most recent": the state as ADDED events first.
            None | Some("" | "0") => {
                for ((of, _, _), o) in &self.objects {
                    if watch.wants(*of, o) {
                        let _ = watch.tx.send(event("ADDED", o));
                    }
                }
            }
            Some(from) => {
                let from: u64 = from.parse().map_err(|_| {
                    Failure::bad_request(format!("invalid resourceVersion {from:?}"))
                })?;
                for (rv, of, kind, o) in &self.history {
                    if *rv > from && watch.wants(*of, o) {
                        let _ = watch.tx.send(event(kind, o));
                    }
                }
            }
        }
        self.watches.push(watch);
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1800);
        let until = Instant::now() + Duration::from_secs(timeout);
        let lines = stream::poll_fn(move |cx| rx.poll_recv(cx));
        let lines = lines
            .take_until(tokio::time::sleep_until(until))
            .map(|line| Ok(Frame::data(line)));
        Ok(Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(BodyExt::boxed(StreamBody::new(lines)))
            .unwrap())
    }

    fn create(
        &mut self,
        kind: usize,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, Failure> {
        let k = &KINDS[kind];
        if !object.is_object() {
            return Err(Failure::bad_request("the body is not an object"));
        }
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
            return Err(Failure::new(
                422,
                "Invalid",
                format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    k.kind
                ),
            ));
        };
        if k.namespaced && namespace.is_none() {
            return Err(Failure::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
        let body_namespace = object["metadata"]["namespace"].as_str();
        if k.namespaced && body_namespace.is_some_and(|b| Some(b) != namespace) {
            return Err(Failure::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if !k.namespaced
            && let Some(m) = object["metadata"].as_object_mut()
        {
            m.remove("namespace");
        }
        let key = (kind, namespace.unwrap_or_default().to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(Failure::about(
                k,
                &name,
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", k.resource()),
            ));
        }
        self.uids += 1;
        object["apiVersion"] = k.api_version().into();
        object["kind"] = k.kind.into();
        let metadata = &mut object["metadata"];
        if let Some(namespace) = namespace {
            metadata["namespace"] = namespace.into();
        }
        metadata["uid"] = format!("7e57a91d-0000-4000-8000-{:012x}", self.uids).into();
        metadata["creationTimestamp"] = now().into();
        metadata["generation"] = 1.into();
        if k.status {
            // Written through the subresource only.
            object.as_object_mut().unwrap().remove("status");
        }
        Ok(self.store(key, object, "ADDED"))
    }

    /// Replaces the object with what `change` makes of it: of its status only through the
    /// subresource, of all but its status otherwise (when the kind has a status).
    fn update(
        &mut self,
        kind: usize,
        namespace: Option<&str>,
        name: &str,
        status: bool,
        change: impl FnOnce(Value) -> Result<Value, Failure>,
    ) -> Result<Value, Failure> {
        let k = &KINDS[kind];
        let key = (
            kind,
            namespace.unwrap_or_default().to_owned(),
            name.to_owned(),
        );
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| Failure::not_found(k, name))?;
        let mut new = change(old.clone())?;
        if !new.is_object() {
            return Err(Failure::bad_request("the body is not an object"));
        }
        if new["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(Failure::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                new["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        let precondition = new["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !precondition.is_empty() && precondition != old["metadata"]["resourceVersion"] {
            return Err(Failure::about(
                k,
                name,
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    k.resource()
                ),
            ));
        }
        if status {
            let mut only_status = old.clone();
            only_status["status"] = new["status"].take();
            new = only_status;
        } else if k.status {
            new["status"] = old["status"].clone();
        }
        if new["status"].is_null() {
            new.as_object_mut().unwrap().remove("status");
        }
        // What the server owns is kept.
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
        ] {
            match old["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = (generation + i64::from(!same_spec(&old, &new))).into();
        if new == old {
            return Ok(old); // no change, no new resourceVersion
        }
        Ok(self.store(key, new, "MODIFIED"))
    }

    fn delete(
        &mut self,
        kind: usize,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, Failure> {
        let key = (
            kind,
            namespace.unwrap_or_default().to_owned(),
            name.to_owned(),
        );
        let mut object = self
            .objects
            .remove(&key)
            .ok_or_else(|| Failure::not_found(&KINDS[kind], name))?;
        self.revision += 1;
        object["metadata"]["resourceVersion"] = self.revision.to_string().into();
        self.tell(kind, "DELETED", &object);
        Ok(object)
    }

    /// Stores `object` at the next resourceVersion, and tells the watches.
    fn store(
        &mut self,
        key: (usize, String, String),
        mut object: Value,
        kind_of_event: &'static str,
    ) -> Value {
        self.revision += 1;
        object["metadata"]["resourceVersion"] = self.revision.to_string().into();
        self.tell(key.0, kind_of_event, &object);
        self.objects.insert(key, object.clone());
        object
    }

    fn tell(&mut self, kind: usize, kind_of_event: &'static str, object: &Value) {
        let line = event(kind_of_event, object);
        self.watches
            .retain(|w| !w.wants(kind, object) || w.tx.send(line.clone()).is_ok());
        self.history
            .push((self.revision, kind, kind_of_event, object.clone()));
        self.activity.send_modify(|n| *n += 1);
    }

    /// A BOOKMARK at the current resourceVersion on every watch that takes them.
    fn bookmark(&mut self) {
        let revision = self.revision.to_string();
        self.watches.retain(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            let k = &KINDS[w.kind];
            let object = json!({
                "kind": k.kind, "apiVersion": k.api_version(),
                "metadata": {"resourceVersion": revision},
            });
            w.tx.send(event("BOOKMARK", &object)).is_ok()
        });
    }

    fn close_connections(&mut self) {
        for c in self.connections.drain(..) {
            c.abort();
        }
    }
}

/// Whether nothing but `metadata` and `status` differs.
fn same_spec(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    strip(a) == strip(b)
}

fn apply_patch(object: &mut Value, content_type: &str, patch: &Value) -> Result<(), Failure> {
    match content_type.split(';').next().unwrap_or_default().trim() {
        "application/merge-patch+json" => json_patch::merge(object, patch),
        "application/strategic-merge-patch+json" => strategic_merge_patch(object, patch),
        "application/json-patch+json" => {
            let operations: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| Failure::bad_request(e.to_string()))?;
            json_patch::patch(object, &operations).map_err(|e| {
                Failure::new(
                    422,
                    "Invalid",
                    format!("the JSON patch does not apply: {e}"),
                )
            })?;
        }
        other => {
            return Err(Failure::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
                ),
            ));
        }
    }
    Ok(())
}

/// A strategic merge patch, simplified: as a merge patch, but for lists whose items (in the
/// object and in the patch) all have a `name`, which merge by it (as `webhooks`, `containers`,
/// `volumes` and `env` do).
fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().unwrap();
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match (target.entry(key.clone()).or_insert(Value::Null), value) {
            (Value::Array(items), Value::Array(patches)) if named(items) && named(patches) => {
                for p in patches {
                    match items.iter_mut().find(|i| i["name"] == p["name"]) {
                        Some(item) => strategic_merge_patch(item, p),
                        None => items.push(p.clone()),
                    }
                }
            }
            (entry, value) => strategic_merge_patch(entry, value),
        }
    }
}

fn named(items: &[Value]) -> bool {
    items.iter().all(|i| i["name"].is_string())
}

/// One requirement of a label or field selector.
#[derive(Clone, Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// `a=b,c!=d,e,!f` (`==` as `=`); set-based requirements (`in`, `notin`) are not understood.
fn requirements(selector: Option<&String>) -> Result<Vec<Requirement>, Failure> {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return Ok(Vec::new());
    };
    selector
        .split(',')
        .map(|r| {
            let r = r.trim();
            if let Some((k, v)) = r.split_once("!=") {
                Ok(Requirement::NotEquals(k.into(), v.into()))
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                Ok(Requirement::Equals(k.into(), v.into()))
            } else if r.contains([' ', '(']) {
                Err(Failure::bad_request(format!(
                    "unable to parse requirement: {r:?} (the fake API server takes =, == and != only)"
                )))
            } else if let Some(k) = r.strip_prefix('!') {
                Ok(Requirement::Absent(k.into()))
            } else {
                Ok(Requirement::Exists(r.into()))
            }
        })
        .collect()
}

/// Whether `object` meets every requirement: of its labels, or of its fields (dotted paths,
/// as `metadata.name` and `status.phase`).
fn selects(requirements: &[Requirement], object: &Value, labels: bool) -> bool {
    let value = |key: &str| -> Option<&str> {
        match labels {
            true => object["metadata"]["labels"][key].as_str(),
            false => key.split('.').fold(object, |o, k| &o[k]).as_str(),
        }
    };
    requirements.iter().all(|r| match r {
        Requirement::Equals(k, v) => value(k) == Some(v),
        Requirement::NotEquals(k, v) => value(k) != Some(v),
        Requirement::Exists(k) => value(k).is_some(),
        Requirement::Absent(k) => value(k).is_none(),
    })
}

fn event(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    line.into()
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn failure(f: &Failure) -> Response<Body> {
    json_response(StatusCode::from_u16(f.code).unwrap(), &f.status())
}

/// RFC 3339 in seconds, as the API server writes timestamps.
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
