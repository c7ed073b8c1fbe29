//! The Lease, the status writer and the CA's Secret against kube's mock service, answered in
//! the API server's shapes. Time is tokio's paused clock: waits for a request advance it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tower_test::mock::{Handle, SendResponse};
use wasmesh_controlplane::ca::{CaFiles, generate_root};
use wasmesh_controlplane::diag::{Diagnostic, code};
use wasmesh_kube::ca_secret::{KEYS, ensure_ca_secret};
use wasmesh_kube::lease::Lease;
use wasmesh_kube::status;

// ===== the mock API server =====

struct Server(Handle<Request<Body>, Response<Body>>);

struct Call {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
    respond: SendResponse<Response<Body>>,
}

fn mock() -> (Client, Server) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), Server(handle))
}

impl Server {
    /// The next request; fails the test if none comes within a (virtual) ten minutes.
    async fn next(&mut self) -> Call {
        let (request, respond) =
            tokio::time::timeout(Duration::from_secs(600), self.0.next_request())
                .await
                .expect("a request")
                .expect("the client is alive");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            },
            respond,
        }
    }

    /// Whether no request comes for `d`.
    async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.0.next_request())
            .await
            .is_err()
    }
}

impl Call {
    fn reply(self, code: u16, body: Value) {
        let response = Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.respond.send_response(response);
    }

    /// Answers a write with the object written, as stored with this resourceVersion.
    fn store(self, rv: u32) {
        let body = stored(self.body.clone(), rv);
        self.reply(200, body);
    }

    fn fail(self, code: u16, reason: &str) {
        self.reply(code, failure(code, reason));
    }
}

/// The API server's `Status` for a failed request.
fn failure(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": reason, "code": code,
        "message": format!("{reason} (mock)"),
    })
}

// ===== the Lease =====

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/wasmesh/leases/wasmesh-controlplane";

/// A Lease as the API server returns it.
fn lease(holder: Option<&str>, transitions: i32, renewed: &str, rv: u32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "wasmesh-controlplane", "namespace": "wasmesh",
            "resourceVersion": rv.to_string(), "uid": "7d5f6f0e-1",
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": "2020-01-01T00:00:00.000000Z",
            "renewTime": renewed,
            "leaseTransitions": transitions,
        },
    })
}

/// `body` as stored, with this resourceVersion.
fn stored(mut body: Value, rv: u32) -> Value {
    body["metadata"]["resourceVersion"] = rv.to_string().into();
    body["metadata"]["namespace"] = "wasmesh".into();
    body
}

/// Answers the first attempt of `pod-a`: no Lease, so it creates one.
async fn acquire(server: &mut Server) -> Value {
    let get = server.next().await;
    assert_eq!((&get.method, get.path.as_str()), (&Method::GET, LEASE));
    get.fail(404, "NotFound");
    let create = server.next().await;
    assert_eq!(create.method, Method::POST);
    assert_eq!(
        create.path,
        "/apis/coordination.k8s.io/v1/namespaces/wasmesh/leases"
    );
    let spec = &create.body["spec"];
    assert_eq!(spec["holderIdentity"], "pod-a");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    assert!(spec["renewTime"].is_string() && spec["acquireTime"].is_string());
    let body = stored(create.body.clone(), 1);
    create.reply(201, body.clone());
    body
}

#[tokio::test(start_paused = true)]
async fn an_absent_lease_is_created_then_renewed() {
    let (client, mut server) = mock();
    let handle = Lease::start(client, "wasmesh", "pod-a");
    let mut leader = handle.leader();
    let created = acquire(&mut server).await;
    leader.wait_for(|l| *l).await.unwrap();

    let acquired = Instant::now();
    let get = server.next().await;
    let waited = acquired.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert_eq!(get.method, Method::GET);
    get.reply(200, created.clone());
    let renew = server.next().await;
    assert_eq!((&renew.method, renew.path.as_str()), (&Method::PUT, LEASE));
    assert_eq!(renew.body["metadata"]["resourceVersion"], "1");
    let spec = &renew.body["spec"];
    assert_eq!(spec["holderIdentity"], "pod-a");
    assert_eq!(spec["leaseTransitions"], 0, "a renewal is no transition");
    assert_eq!(spec["acquireTime"], created["spec"]["acquireTime"]);
    renew.store(2);
    assert!(*leader.borrow());
}

#[tokio::test(start_paused = true)]
async fn a_lease_another_keeps_renewing_is_not_taken() {
    let (client, mut server) = mock();
    let handle = Lease::start(client, "wasmesh", "pod-a");
    let started = Instant::now();
    let mut last = None;
    let mut rv = 10;
    while started.elapsed() < Duration::from_secs(60) {
        let get = server.next().await;
        assert_eq!(get.method, Method::GET, "only reads while another holds it");
        // Retries come every 2 s, jittered up to half as much again.
        if let Some(last) = last {
            let gap = Instant::now() - last;
            assert!(
                gap >= Duration::from_secs(2) && gap <= Duration::from_secs(3),
                "{gap:?}"
            );
        }
        last = Some(Instant::now());
        rv += 1;
        // Renewed by pod-b, whose clock is a day behind: only the change counts.
        get.reply(
            200,
            lease(
                Some("pod-b"),
                2,
                &format!("2019-12-31T00:00:{:02}.000000Z", rv % 60),
                rv,
            ),
        );
    }
    assert!(!*handle.leader().borrow());
}

/// Answers reads with pod-b's Lease, unchanged, until `pod-a` writes; returns the write and
/// how long after the first read it came.
async fn until_taken_over(server: &mut Server) -> (Call, Duration) {
    let mut first = None;
    loop {
        let call = server.next().await;
        let since = *first.get_or_insert_with(Instant::now);
        if call.method != Method::GET {
            return (call, since.elapsed());
        }
        // Renewed long ago by pod-b's clock: not trusted, observed for a full duration.
        call.reply(
            200,
            lease(Some("pod-b"), 3, "2020-01-01T00:00:00.000000Z", 7),
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_over_with_one_more_transition() {
    let (client, mut server) = mock();
    let handle = Lease::start(client, "wasmesh", "pod-a");
    let (update, after) = until_taken_over(&mut server).await;
    assert!(
        after >= Duration::from_secs(15) && after < Duration::from_secs(19),
        "{after:?}"
    );
    assert_eq!(
        (&update.method, update.path.as_str()),
        (&Method::PUT, LEASE)
    );
    assert_eq!(update.body["metadata"]["resourceVersion"], "7");
    let spec = &update.body["spec"];
    assert_eq!(spec["holderIdentity"], "pod-a");
    assert_eq!(spec["leaseTransitions"], 4);
    assert_ne!(spec["acquireTime"], "2020-01-01T00:00:00.000000Z");
    update.store(8);
    handle.leader().wait_for(|l| *l).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_conflicting_update_is_read_again_and_does_not_lead() {
    let (client, mut server) = mock();
    let handle = Lease::start(client, "wasmesh", "pod-a");
    let (update, _) = until_taken_over(&mut server).await;
    assert_eq!(update.method, Method::PUT);
    // pod-b renewed meanwhile.
    update.fail(409, "Conflict");
    let reread = server.next().await;
    assert_eq!(
        reread.method,
        Method::GET,
        "a conflict is read again at once"
    );
    reread.reply(
        200,
        lease(Some("pod-b"), 3, "2020-01-01T00:00:15.000000Z", 8),
    );
    let next = server.next().await;
    assert_eq!(
        next.method,
        Method::GET,
        "pod-b's renewed Lease is not taken"
    );
    assert!(!*handle.leader().borrow());
}

/// Acquires, then fails every request through `fail`; returns how long after the last
/// successful renewal was sent the replica stopped leading.
async fn steps_down_after(fail: impl Fn(Call, &mut Vec<Call>) + Send + 'static) -> Duration {
    let (client, mut server) = mock();
    let handle = Lease::start(client, "wasmesh", "pod-a");
    let mut leader = handle.leader();
    acquire(&mut server).await;
    leader.wait_for(|l| *l).await.unwrap();
    let renewed = Instant::now();
    let failing = tokio::spawn(async move {
        let mut hung = Vec::new();
        loop {
            let call = server.next().await;
            fail(call, &mut hung);
        }
    });
    leader.wait_for(|l| !*l).await.unwrap();
    failing.abort();
    renewed.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_fail_steps_down_before_the_lease_expires() {
    let after = steps_down_after(|call, _| call.fail(500, "InternalError")).await;
    // The renew deadline (10 s) is well inside the duration others wait (15 s).
    assert!(
        after >= Duration::from_secs(9) && after <= Duration::from_secs(10),
        "{after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_hang_steps_down_before_the_lease_expires() {
    let after = steps_down_after(|call, hung| hung.push(call)).await;
    assert!(
        after >= Duration::from_secs(9) && after <= Duration::from_secs(10),
        "{after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_released_lease_has_no_holder_and_a_short_duration() {
    let (client, mut server) = mock();
    let handle = Lease::start(client, "wasmesh", "pod-a");
    let mut leader = handle.leader();
    let created = acquire(&mut server).await;
    leader.wait_for(|l| *l).await.unwrap();
    let released = tokio::spawn(handle.release());
    let get = server.next().await;
    assert_eq!(get.method, Method::GET);
    assert!(
        !*leader.borrow(),
        "stops leading before giving the Lease up"
    );
    get.reply(200, created);
    let update = server.next().await;
    assert_eq!(
        (&update.method, update.path.as_str()),
        (&Method::PUT, LEASE)
    );
    assert_eq!(update.body["metadata"]["resourceVersion"], "1");
    let spec = &update.body["spec"];
    assert!(spec["holderIdentity"].is_null(), "{spec}");
    assert_eq!(spec["leaseDurationSeconds"], 1);
    assert_eq!(spec["leaseTransitions"], 0);
    update.store(2);
    released.await.unwrap();
    assert!(leader.has_changed().is_err(), "the election has ended");
}

// ===== status =====

const VS_STATUS: &str =
    "/apis/networking.istio.io/v1/namespaces/default/virtualservices/reviews/status";

fn about(d: Diagnostic, kind: &str, name: &str) -> Diagnostic {
    Diagnostic {
        kind: Some(kind.to_owned()),
        name: Some(name.to_owned()),
        namespace: Some("default".to_owned()),
        ..d
    }
}

fn host_not_found(name: &str) -> Diagnostic {
    about(
        Diagnostic::error(
            code::REFERENCED_RESOURCE_NOT_FOUND,
            "Referenced host not found: \"reviews2\"",
        )
        .at("spec.http[0].route[0].destination.host"),
        "VirtualService",
        name,
    )
}

/// `host_not_found("reviews")`'s message as written.
fn host_not_found_message() -> Value {
    json!({
        "type": {"code": "IST0101", "name": "ReferencedResourceNotFound"},
        "level": "ERROR",
        "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0101/",
        "message": "spec.http[0].route[0].destination.host: Referenced host not found: \"reviews2\"",
    })
}

fn diagnostics(ds: Vec<Diagnostic>) -> Arc<Vec<Diagnostic>> {
    Arc::new(ds)
}

/// Answers the lists a new leader makes (one per kind) with `objects` (by plural).
async fn answer_lists(server: &mut Server, objects: &[(&str, Value)]) {
    let plurals = [
        "virtualservices",
        "destinationrules",
        "serviceentries",
        "workloadentries",
        "peerauthentications",
        "authorizationpolicies",
        "wasmplugins",
    ];
    for _ in plurals {
        let list = server.next().await;
        assert_eq!(list.method, Method::GET);
        let plural = list.path.rsplit('/').next().unwrap().to_owned();
        assert!(plurals.contains(&plural.as_str()), "{}", list.path);
        let items: Vec<&Value> = objects
            .iter()
            .filter(|(p, _)| *p == plural)
            .map(|(_, o)| o)
            .collect();
        list.reply(
            200,
            json!({
                "apiVersion": "v1", "kind": "List",
                "metadata": {"resourceVersion": "100"}, "items": items,
            }),
        );
    }
}

/// A VirtualService as listed, with these validationMessages.
fn virtual_service(name: &str, messages: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "5", "generation": 1},
        "spec": {"hosts": ["reviews"]},
        "status": {"validationMessages": messages},
    })
}

fn assert_status_patch(call: &Call, path: &str, messages: Value) {
    assert_eq!((&call.method, call.path.as_str()), (&Method::PATCH, path));
    assert_eq!(call.content_type, "application/merge-patch+json");
    assert!(
        call.query.contains("fieldManager=wasmesh-controlplane"),
        "{}",
        call.query
    );
    assert_eq!(
        call.body,
        json!({"status": {"validationMessages": messages}})
    );
}

#[tokio::test(start_paused = true)]
async fn a_diagnostic_becomes_a_status_patch_written_once() {
    let (client, mut server) = mock();
    let (_leader_tx, leader) = watch::channel(true);
    let file_level = Diagnostic::error(code::PARSE_ERROR, "not YAML");
    let note = about(
        Diagnostic::info(code::NOTE, "a note"),
        "VirtualService",
        "reviews",
    );
    let short_host = about(
        Diagnostic::warning(code::SHORT_SERVICE_ENTRY_HOST, "a short host"),
        "VirtualService",
        "reviews",
    );
    let all = vec![short_host, host_not_found("reviews"), file_level, note];
    let (diags_tx, diags) = watch::channel(diagnostics(all.clone()));
    let _writer = status::start(client, leader, diags);
    answer_lists(&mut server, &[]).await;
    let patch = server.next().await;
    // Errors first; wasmesh's own codes have no Istio documentation.
    let messages = json!([host_not_found_message(), {
        "type": {"code": "WSM0007", "name": "ShortServiceEntryHost"},
        "level": "WARNING",
        "message": "a short host",
    }]);
    assert_status_patch(&patch, VS_STATUS, messages.clone());
    patch.reply(200, virtual_service("reviews", messages));

    // The same diagnostics again: nothing to write.
    diags_tx.send_replace(diagnostics(all.clone()));
    assert!(server.quiet_for(Duration::from_secs(30)).await);

    // A new one, on a WasmPlugin whose image failed: only it is written.
    let image = about(
        Diagnostic::error(
            code::REFERENCED_RESOURCE_NOT_FOUND,
            "module not available: 404: the plugin is left out",
        )
        .at("spec.url"),
        "WasmPlugin",
        "auth",
    );
    diags_tx.send_replace(diagnostics([all, vec![image]].concat()));
    let patch = server.next().await;
    let message = json!({
        "type": {"code": "IST0101", "name": "ReferencedResourceNotFound"},
        "level": "ERROR",
        "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0101/",
        "message": "spec.url: module not available: 404: the plugin is left out",
    });
    assert_status_patch(
        &patch,
        "/apis/extensions.istio.io/v1alpha1/namespaces/default/wasmplugins/auth/status",
        json!([message]),
    );
    patch.reply(200, json!({}));
    assert!(server.quiet_for(Duration::from_secs(30)).await);
}

#[tokio::test(start_paused = true)]
async fn a_fixed_resource_has_its_messages_cleared_once() {
    let (client, mut server) = mock();
    let (_leader_tx, leader) = watch::channel(true);
    let (diags_tx, diags) = watch::channel(diagnostics(vec![host_not_found("reviews")]));
    let _writer = status::start(client, leader, diags);
    answer_lists(&mut server, &[]).await;
    let written = server.next().await;
    let at = Instant::now();
    written.reply(200, json!({}));

    diags_tx.send_replace(diagnostics(vec![]));
    let clear = server.next().await;
    assert_status_patch(&clear, VS_STATUS, Value::Null);
    assert!(
        at.elapsed() >= Duration::from_secs(1),
        "at most one write a second per object"
    );
    clear.reply(200, json!({}));
    diags_tx.send_replace(diagnostics(vec![]));
    assert!(server.quiet_for(Duration::from_secs(30)).await);
}

#[tokio::test(start_paused = true)]
async fn only_the_leader_writes() {
    let (client, mut server) = mock();
    let (leader_tx, leader) = watch::channel(false);
    let (diags_tx, diags) = watch::channel(diagnostics(vec![host_not_found("reviews")]));
    let _writer = status::start(client, leader, diags);
    assert!(server.quiet_for(Duration::from_secs(30)).await);

    leader_tx.send_replace(true);
    answer_lists(&mut server, &[]).await;
    let patch = server.next().await;
    assert_status_patch(&patch, VS_STATUS, json!([host_not_found_message()]));
    patch.reply(200, json!({}));

    leader_tx.send_replace(false);
    diags_tx.send_replace(diagnostics(vec![]));
    assert!(server.quiet_for(Duration::from_secs(30)).await);
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_clears_stale_messages_and_leaves_right_ones() {
    let (client, mut server) = mock();
    let (_leader_tx, leader) = watch::channel(true);
    let (_diags_tx, diags) = watch::channel(diagnostics(vec![host_not_found("reviews")]));
    let _writer = status::start(client, leader, diags);
    // A former leader wrote both; `ratings` has been fixed since.
    answer_lists(
        &mut server,
        &[
            (
                "virtualservices",
                virtual_service("reviews", json!([host_not_found_message()])),
            ),
            (
                "virtualservices",
                virtual_service("ratings", json!([host_not_found_message()])),
            ),
        ],
    )
    .await;
    let clear = server.next().await;
    assert_status_patch(
        &clear,
        "/apis/networking.istio.io/v1/namespaces/default/virtualservices/ratings/status",
        Value::Null,
    );
    clear.reply(200, json!({}));
    assert!(server.quiet_for(Duration::from_secs(30)).await);
}

#[tokio::test(start_paused = true)]
async fn a_missing_object_is_forgotten_and_failures_are_retried() {
    let (client, mut server) = mock();
    let (_leader_tx, leader) = watch::channel(true);
    let (diags_tx, diags) = watch::channel(diagnostics(vec![host_not_found("reviews")]));
    let _writer = status::start(client, leader, diags);
    answer_lists(&mut server, &[]).await;
    server.next().await.fail(404, "NotFound");
    assert!(
        server.quiet_for(Duration::from_secs(120)).await,
        "not retried"
    );

    // Another object's write fails, and is retried after a backoff; the missing one is not.
    diags_tx.send_replace(diagnostics(vec![
        host_not_found("reviews"),
        host_not_found("ratings"),
    ]));
    let ratings = "/apis/networking.istio.io/v1/namespaces/default/virtualservices/ratings/status";
    let first = server.next().await;
    assert_eq!(first.path, ratings);
    let failed = Instant::now();
    first.fail(500, "InternalError");
    let retry = server.next().await;
    assert_eq!(retry.path, ratings);
    assert!(
        failed.elapsed() >= Duration::from_secs(1),
        "{:?}",
        failed.elapsed()
    );
    retry.reply(200, json!({}));
    assert!(server.quiet_for(Duration::from_secs(120)).await);
}

// ===== the CA's Secret =====

const SECRET: &str = "/api/v1/namespaces/wasmesh/secrets/wasmesh-ca";

/// A `cacerts` Secret holding a new root, as JSON.
fn ca_secret() -> Value {
    let (cert, key) = generate_root("cluster.local").unwrap();
    let data: BTreeMap<String, ByteString> = KEYS
        .iter()
        .map(|&k| {
            (
                k.to_owned(),
                ByteString(
                    if k == "ca-key.pem" { &key } else { &cert }
                        .clone()
                        .into_bytes(),
                ),
            )
        })
        .collect();
    let mut secret = serde_json::to_value(Secret {
        data: Some(data),
        ..Secret::default()
    })
    .unwrap();
    secret["apiVersion"] = "v1".into();
    secret["kind"] = "Secret".into();
    secret["metadata"] =
        json!({"name": "wasmesh-ca", "namespace": "wasmesh", "resourceVersion": "3"});
    secret
}

/// The files in `dir` are `secret`'s, the key private, and load as the CA.
fn assert_written(dir: &std::path::Path, secret: &Value) {
    let secret: Secret = serde_json::from_value(secret.clone()).unwrap();
    let data = secret.data.unwrap();
    for key in KEYS {
        assert_eq!(std::fs::read(dir.join(key)).unwrap(), data[key].0, "{key}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    CaFiles::Cacerts(dir.to_owned())
        .load()
        .expect("the files load as the CA");
}

#[tokio::test(start_paused = true)]
async fn an_existing_ca_secret_is_written_to_the_directory() {
    let (client, mut server) = mock();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("cacerts");
    let (_leader_tx, leader) = watch::channel(true);
    let ensure = tokio::spawn({
        let target = target.clone();
        async move { ensure_ca_secret(client, "wasmesh", leader, "cluster.local", &target).await }
    });
    let get = server.next().await;
    assert_eq!((&get.method, get.path.as_str()), (&Method::GET, SECRET));
    let secret = ca_secret();
    get.reply(200, secret.clone());
    assert_eq!(ensure.await.unwrap().unwrap(), target);
    assert_written(&target, &secret);
}

#[tokio::test(start_paused = true)]
async fn the_leader_creates_an_absent_ca_secret() {
    let (client, mut server) = mock();
    let dir = tempfile::tempdir().unwrap();
    let (_leader_tx, leader) = watch::channel(true);
    let target = dir.path().to_owned();
    let ensure = tokio::spawn(async move {
        ensure_ca_secret(client, "wasmesh", leader, "cluster.local", &target).await
    });
    server.next().await.fail(404, "NotFound");
    let create = server.next().await;
    assert_eq!(create.method, Method::POST);
    assert_eq!(create.path, "/api/v1/namespaces/wasmesh/secrets");
    assert_eq!(create.body["metadata"]["name"], "wasmesh-ca");
    let data = create.body["data"].as_object().unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem"
        ]
    );
    assert_eq!(
        data["ca-cert.pem"], data["root-cert.pem"],
        "a self-signed root signs"
    );
    let mut stored = create.body.clone();
    stored["metadata"]["resourceVersion"] = "1".into();
    create.reply(201, stored.clone());
    ensure.await.unwrap().unwrap();
    assert_written(dir.path(), &stored);
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_loses_the_race_uses_the_winners_ca_secret() {
    let (client, mut server) = mock();
    let dir = tempfile::tempdir().unwrap();
    let (_leader_tx, leader) = watch::channel(true);
    let target = dir.path().to_owned();
    let ensure = tokio::spawn(async move {
        ensure_ca_secret(client, "wasmesh", leader, "cluster.local", &target).await
    });
    server.next().await.fail(404, "NotFound");
    let create = server.next().await;
    assert_eq!(create.method, Method::POST);
    create.fail(409, "AlreadyExists");
    let get = server.next().await;
    assert_eq!((&get.method, get.path.as_str()), (&Method::GET, SECRET));
    let theirs = ca_secret();
    get.reply(200, theirs.clone());
    ensure.await.unwrap().unwrap();
    assert_written(dir.path(), &theirs);
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_does_not_lead_waits_for_the_ca_secret() {
    let (client, mut server) = mock();
    let dir = tempfile::tempdir().unwrap();
    let (_leader_tx, leader) = watch::channel(false);
    let target = dir.path().to_owned();
    let ensure = tokio::spawn(async move {
        ensure_ca_secret(client, "wasmesh", leader, "cluster.local", &target).await
    });
    for _ in 0..5 {
        let get = server.next().await;
        assert_eq!(
            (&get.method, get.path.as_str()),
            (&Method::GET, SECRET),
            "only reads"
        );
        get.fail(404, "NotFound");
    }
    assert!(!ensure.is_finished());
    let get = server.next().await;
    let secret = ca_secret();
    get.reply(200, secret.clone());
    ensure.await.unwrap().unwrap();
    assert_written(dir.path(), &secret);
}
