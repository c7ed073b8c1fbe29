//! The source against a fake API server (kube's mock service), in tokio's paused time: the
//! runtime runs every task until all wait, then jumps to the next timer (the debounce, the
//! watchers' backoff), so each test is deterministic and takes milliseconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use wasmesh_controlplane::istio;
use wasmesh_controlplane::source::SourceState;
use wasmesh_controlplane::{Options, Spec};

use super::fake_api::{Failure, FakeApi};
use super::{KubeSource, KubeSourceOptions};

fn virtual_service(name: &str, http: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": [name], "http": http},
    })
}

fn route(timeout: &str) -> Value {
    json!([{"route": [{"destination": {"host": "reviews"}}], "timeout": timeout}])
}

fn destination_rule() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
    })
}

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "selector": {"app": "reviews"},
            "ports": [{"name": "http", "port": 9080, "protocol": "TCP", "targetPort": "http"}],
        },
    })
}

enum Sidecar {
    None,
    /// Injected: `sidecar.istio.io/status` and the proxy container.
    Injected,
    /// Only the proxy container (added by hand).
    Container,
}

fn pod(name: &str, ip: &str, sidecar: Sidecar) -> Value {
    let mut containers = vec![json!({"name": "reviews", "image": "reviews:1"})];
    let mut annotations = json!({"kubectl.kubernetes.io/restartedAt": "now"});
    match sidecar {
        Sidecar::None => {}
        Sidecar::Injected => {
            annotations[super::SIDECAR_STATUS_ANNOTATION] =
                json!("{\"containers\":[\"wasmesh-proxy\"]}");
            containers.push(json!({"name": super::SIDECAR_CONTAINER}));
        }
        Sidecar::Container => containers.push(json!({"name": super::SIDECAR_CONTAINER})),
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "default", "annotations": annotations,
            "labels": {"app": "reviews", "version": name.rsplit('-').next().unwrap()},
        },
        "spec": {"serviceAccountName": "bookinfo-reviews", "containers": containers},
        "status": {"phase": "Running", "podIP": ip},
    })
}

/// The reviews Service's slice: (pod, ip, ready).
fn slice(endpoints: &[(&str, &str, bool)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(pod, ip, ready)| {
            json!({
                "addresses": [ip], "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "reviews-abcde", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "reviews"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"istio-injection": "enabled"}},
    })
}

/// The API server with Bookinfo's reviews: a VirtualService, a DestinationRule, the Service
/// and one pod without a sidecar behind it.
fn reviews() -> (FakeApi, kube::Client) {
    let (api, client) = FakeApi::start();
    api.apply(namespace("default"));
    api.apply(virtual_service("reviews", route("1s")));
    api.apply(destination_rule());
    api.apply(service());
    api.apply(pod("reviews-v1", "10.1.0.1", Sidecar::None));
    api.apply(slice(&[("reviews-v1", "10.1.0.1", true)]));
    (api, client)
}

fn start(client: kube::Client) -> KubeSource {
    KubeSource::start(client, KubeSourceOptions::default())
}

/// Waits (in paused time: without waiting) for a state that passes `check`.
async fn wait_for(
    rx: &mut watch::Receiver<Arc<SourceState>>,
    what: &str,
    check: impl Fn(&SourceState) -> bool,
) -> Arc<SourceState> {
    let waited = tokio::time::timeout(Duration::from_secs(600), rx.wait_for(|s| check(s)))
        .await
        .map(|found| found.map(|state| state.clone()));
    match waited {
        Ok(Ok(state)) => state,
        Ok(Err(_)) => panic!("the source stopped while waiting for {what}"),
        Err(_) => panic!("no state with {what}; the last: {:#?}", rx.borrow()),
    }
}

/// `(kind, namespace/name)` of every resource.
fn resources(state: &SourceState) -> Vec<(&'static str, String)> {
    state
        .loaded
        .resources
        .iter()
        .map(|r| (r.kind(), format!("{}/{}", r.namespace(), r.name())))
        .collect()
}

fn has(state: &SourceState, kind: &str, name: &str) -> bool {
    state
        .loaded
        .resources
        .iter()
        .any(|r| r.kind() == kind && r.name() == name)
}

fn spec<'a>(state: &'a SourceState, kind: &str, name: &str) -> &'a Spec {
    let r = state
        .loaded
        .resources
        .iter()
        .find(|r| r.kind() == kind && r.name() == name);
    &r.unwrap_or_else(|| panic!("no {kind} {name}")).spec
}

fn timeout_of(state: &SourceState, name: &str) -> Option<String> {
    match spec(state, "VirtualService", name) {
        Spec::VirtualService(vs) => vs.http[0].timeout.clone(),
        _ => unreachable!(),
    }
}

fn lists(api: &FakeApi, path: &str) -> usize {
    let prefix = format!("{path}?");
    api.requests()
        .iter()
        .filter(|r| r.starts_with(&prefix) && !r.contains("watch=true"))
        .count()
}

#[tokio::test(start_paused = true)]
async fn the_first_state_has_the_istio_objects_services_and_pods_without_sidecars() {
    let (api, client) = reviews();
    api.apply(pod("reviews-v2", "10.1.0.2", Sidecar::Injected));
    api.apply(pod("reviews-v3", "10.1.0.3", Sidecar::Container));
    api.apply(pod("reviews-v4", "10.1.0.4", Sidecar::None));
    api.apply(slice(&[
        ("reviews-v1", "10.1.0.1", true),
        ("reviews-v2", "10.1.0.2", true),
        ("reviews-v3", "10.1.0.3", true),
        ("reviews-v4", "10.1.0.4", false),
    ]));
    let source = start(client);
    source.synced().await.unwrap();
    let state = source.rx.borrow().clone();

    assert_eq!(state.generation, 1);
    assert_eq!(
        resources(&state),
        [
            ("VirtualService", "default/reviews".to_owned()),
            ("DestinationRule", "default/reviews".to_owned()),
            ("ServiceEntry", "default/reviews".to_owned()),
            // Not v2 and v3 (their sidecars register them), nor v4 (not ready).
            ("WorkloadEntry", "default/reviews-v1".to_owned()),
        ]
    );
    let Spec::ServiceEntry(se) = spec(&state, "ServiceEntry", "reviews") else {
        unreachable!()
    };
    assert_eq!(se.hosts, ["reviews.default.svc.cluster.local"]);
    assert_eq!(se.addresses, ["10.96.0.10"]);
    assert_eq!(se.location, Some(istio::Location::MeshInternal));
    assert_eq!(se.resolution, Some(istio::Resolution::Static));
    assert_eq!(
        (
            se.ports[0].name.as_str(),
            se.ports[0].number,
            se.ports[0].target_port
        ),
        ("http", 9080, Some(9080))
    );
    let app = BTreeMap::from([("app".to_owned(), "reviews".to_owned())]);
    assert_eq!(se.workload_selector.as_ref().unwrap().labels, app);
    let Spec::WorkloadEntry(we) = spec(&state, "WorkloadEntry", "reviews-v1") else {
        unreachable!()
    };
    assert_eq!(we.address.as_deref(), Some("10.1.0.1"));
    assert_eq!(we.labels["version"], "v1");
    assert_eq!(we.service_account.as_deref(), Some("bookinfo-reviews"));
    assert_eq!(we.ports, BTreeMap::from([("http".to_owned(), 9080)]));

    // The control plane translates it without complaint.
    let translated = wasmesh_controlplane::translate(&state.loaded.resources, &Options::default());
    let errors: Vec<_> = state
        .loaded
        .diagnostics
        .iter()
        .chain(&translated.diagnostics)
        .filter(|d| d.is_error())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    // What the status writer and the injector need.
    let objects = source.objects.borrow().clone();
    assert_eq!(objects.generation, 1);
    let ids: Vec<_> = objects
        .objects
        .iter()
        .map(|o| (o.kind.kind, o.name.as_str(), o.generation))
        .collect();
    assert_eq!(
        ids,
        [
            ("VirtualService", "reviews", Some(1)),
            ("DestinationRule", "reviews", Some(1))
        ]
    );
    let namespaces = source.namespaces();
    assert_eq!(
        namespaces.labels("default").unwrap()["istio-injection"],
        "enabled"
    );
    assert_eq!(namespaces.labels("elsewhere"), None);

    // List, then watch with bookmarks; only running pods.
    let requests = api.requests();
    let watch = requests
        .iter()
        .find(|r| {
            r.starts_with("/apis/networking.istio.io/v1/virtualservices?")
                && r.contains("watch=true")
        })
        .expect("a watch of VirtualServices");
    assert!(watch.contains("allowWatchBookmarks=true"), "{watch}");
    assert!(
        requests
            .iter()
            .filter(|r| r.starts_with("/api/v1/pods?"))
            .all(|r| r.contains("fieldSelector=status.phase=Running")),
        "{requests:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn watch_events_update_the_state_once_per_burst() {
    let (api, client) = reviews();
    let mut source = start(client);
    source.synced().await.unwrap();

    // A burst: five edits of the VirtualService, and a new pod behind the Service.
    for i in 2..=6 {
        api.apply(virtual_service("reviews", route(&format!("{i}s"))));
    }
    api.apply(pod("reviews-v5", "10.1.0.5", Sidecar::None));
    api.apply(slice(&[
        ("reviews-v1", "10.1.0.1", true),
        ("reviews-v5", "10.1.0.5", true),
    ]));
    let state = wait_for(&mut source.rx, "the burst", |s| {
        has(s, "WorkloadEntry", "reviews-v5") && timeout_of(s, "reviews").as_deref() == Some("6s")
    })
    .await;
    assert_eq!(state.generation, 2, "one new generation for the burst");
    assert_eq!(source.objects.borrow().objects[0].generation, Some(6));

    // A change that changes nothing translated (its status, written by a controller).
    let mut with_status = virtual_service("reviews", route("6s"));
    with_status["status"] = json!({"validationMessages": [{"type": {"code": "IST0101"}}]});
    api.apply(with_status);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!source.rx.has_changed().unwrap());
    assert_eq!(source.rx.borrow().generation, 2);

    // The pod is no longer ready, then the VirtualService is deleted.
    api.apply(slice(&[
        ("reviews-v1", "10.1.0.1", true),
        ("reviews-v5", "10.1.0.5", false),
    ]));
    let state = wait_for(&mut source.rx, "v5 gone", |s| {
        !has(s, "WorkloadEntry", "reviews-v5")
    })
    .await;
    assert_eq!(state.generation, 3);
    api.delete("VirtualService", "default", "reviews");
    let state = wait_for(&mut source.rx, "no VirtualService", |s| {
        !has(s, "VirtualService", "reviews")
    })
    .await;
    assert_eq!(state.generation, 4);
    assert!(
        source
            .objects
            .borrow()
            .objects
            .iter()
            .all(|o| o.kind.kind != "VirtualService")
    );
}

#[tokio::test(start_paused = true)]
async fn a_malformed_object_is_a_diagnostic_on_it_and_the_others_stay() {
    let (api, client) = reviews();
    // A misspelt field, and a field of the wrong type.
    let mut misspelt = virtual_service("ratings", json!([{"rout": []}]));
    misspelt["metadata"]["namespace"] = json!("bookinfo");
    api.apply(misspelt);
    api.apply(virtual_service("details", json!({"route": "details"})));
    let mut source = start(client);
    source.synced().await.unwrap();
    let state = source.rx.borrow().clone();

    assert!(has(&state, "VirtualService", "reviews"));
    assert!(has(&state, "ServiceEntry", "reviews"));
    assert!(!has(&state, "VirtualService", "ratings"));
    let errors: Vec<_> = state
        .loaded
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let ratings = errors
        .iter()
        .find(|d| d.name.as_deref() == Some("ratings"))
        .unwrap();
    assert_eq!(ratings.kind.as_deref(), Some("VirtualService"));
    assert_eq!(ratings.namespace.as_deref(), Some("bookinfo"));
    assert_eq!(ratings.field.as_deref(), Some("spec.http[0].rout"));
    assert_eq!((&ratings.file, ratings.line), (&None, None));
    let expected = "Error [IST0106] (VirtualService ratings.bookinfo) Schema validation error";
    assert!(ratings.to_string().starts_with(expected), "{ratings}");
    assert!(errors.iter().any(|d| d.name.as_deref() == Some("details")));

    // A good one turning bad keeps its last good version, with a note.
    api.apply(virtual_service(
        "reviews",
        json!([{"route": [{"destination": {"host": "reviews"}}], "timeout": ["5s"]}]),
    ));
    let state = wait_for(&mut source.rx, "the error on reviews", |s| {
        s.loaded
            .diagnostics
            .iter()
            .any(|d| d.is_error() && d.name.as_deref() == Some("reviews"))
    })
    .await;
    assert_eq!(timeout_of(&state, "reviews").as_deref(), Some("1s"));
    assert!(
        state
            .loaded
            .diagnostics
            .iter()
            .any(|d| d.message.contains("last good version")),
        "{:#?}",
        state.loaded.diagnostics
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_watch_relists_and_what_was_deleted_meanwhile_goes() {
    let (api, client) = reviews();
    api.apply(virtual_service("ratings", route("1s")));
    let mut source = start(client);
    source.synced().await.unwrap();
    assert!(has(&source.rx.borrow(), "VirtualService", "ratings"));
    let path = "/apis/networking.istio.io/v1/virtualservices";
    assert_eq!(lists(&api, path), 1);

    // ratings is deleted, and its event is lost with the history the watches needed.
    api.delete_unseen("VirtualService", "default", "ratings");
    api.expire_watches();
    let state = wait_for(&mut source.rx, "ratings gone", |s| {
        !has(s, "VirtualService", "ratings")
    })
    .await;
    assert_eq!(lists(&api, path), 2, "relisted");
    assert!(
        has(&state, "VirtualService", "reviews"),
        "only what is gone goes"
    );
    assert!(has(&state, "WorkloadEntry", "reviews-v1"));
    assert_eq!(state.generation, 2);

    // And it watches again from the new list.
    api.apply(virtual_service("details", route("1s")));
    wait_for(&mut source.rx, "details", |s| {
        has(s, "VirtualService", "details")
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_closed_watch_resumes_from_its_last_bookmark() {
    let (api, client) = reviews();
    let mut source = start(client);
    source.synced().await.unwrap();

    // Other kinds move the resourceVersion on; a bookmark tells the watches.
    api.apply(pod("reviews-v9", "10.1.0.9", Sidecar::None));
    api.bookmark();
    let before = api.requests().len();
    api.close_watches();
    let path = "/apis/networking.istio.io/v1/virtualservices?";
    let resumed = loop {
        let requests = api.requests();
        if let Some(r) = requests[before..].iter().find(|r| r.starts_with(path)) {
            break r.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // reviews() made six objects, then the pod: the bookmark was at 7, the list at 6.
    assert!(
        resumed.contains("watch=true") && resumed.contains("resourceVersion=7&"),
        "{resumed}"
    );
    assert_eq!(
        lists(&api, "/apis/networking.istio.io/v1/virtualservices"),
        1,
        "no relist"
    );
    api.apply(virtual_service("reviews", route("2s")));
    wait_for(&mut source.rx, "the edit", |s| {
        timeout_of(s, "reviews").as_deref() == Some("2s")
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn api_errors_keep_the_state_until_it_recovers() {
    let (api, client) = reviews();
    api.apply(virtual_service("ratings", route("1s")));
    let mut source = start(client);
    source.synced().await.unwrap();
    let before = source.rx.borrow_and_update().clone();

    // The API server answers 500, then does not answer at all; the watchers back off.
    api.fail(Failure::ServerError);
    tokio::time::sleep(Duration::from_secs(45)).await;
    api.fail(Failure::Refused);
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert!(
        !source.rx.has_changed().unwrap(),
        "nothing published while down"
    );
    assert!(Arc::ptr_eq(&source.rx.borrow(), &before));
    let failed = api.requests().len();

    // Meanwhile details appears and ratings goes, and the history moves past the watches.
    api.apply(virtual_service("details", route("1s")));
    api.delete_unseen("VirtualService", "default", "ratings");
    api.recover();
    let state = wait_for(&mut source.rx, "details and no ratings", |s| {
        has(s, "VirtualService", "details") && !has(s, "VirtualService", "ratings")
    })
    .await;
    assert!(has(&state, "VirtualService", "reviews"));
    assert!(has(&state, "WorkloadEntry", "reviews-v1"));
    assert_eq!(state.generation, before.generation + 1);
    // The watch from before the history was answered 410, and the client relisted.
    assert!(api.requests()[failed..].iter().any(|r| {
        r.starts_with("/apis/networking.istio.io/v1/virtualservices?") && !r.contains("watch=true")
    }));
}

#[tokio::test(start_paused = true)]
async fn nothing_is_published_before_every_initial_list() {
    let (api, client) = reviews();
    // The first lists fail; then one (namespaces) is slow.
    api.fail(Failure::ServerError);
    let mut source = start(client);
    tokio::time::sleep(Duration::from_secs(5)).await;
    api.hold("/api/v1/namespaces");
    api.recover();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        lists(&api, "/api/v1/services") >= 2,
        "the services were listed again"
    );
    assert!(!source.rx.has_changed().unwrap());
    assert_eq!(source.rx.borrow().generation, 0);
    assert!(source.rx.borrow().loaded.resources.is_empty());
    assert!(source.objects.borrow().objects.is_empty());

    api.release("/api/v1/namespaces");
    let state = wait_for(&mut source.rx, "the first state", |s| s.generation > 0).await;
    assert_eq!(state.generation, 1);
    assert_eq!(resources(&state).len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_kind_not_served_does_not_hold_the_rest_back() {
    let (api, client) = reviews();
    let wasm_plugins = "/apis/extensions.istio.io/v1alpha1/wasmplugins";
    api.unserve(wasm_plugins);
    let mut source = start(client);
    source.synced().await.unwrap();
    assert_eq!(resources(&source.rx.borrow_and_update()).len(), 4);

    // Its CRD is installed, and a WasmPlugin made: the watcher, still trying, finds it.
    api.serve(wasm_plugins);
    api.apply(json!({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": "stamp", "namespace": "default"},
        "spec": {"url": "oci://registry.example/stamp:1"},
    }));
    wait_for(&mut source.rx, "the WasmPlugin", |s| {
        has(s, "WasmPlugin", "stamp")
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn telemetry_and_istio_s_mesh_config_are_read_and_only_that_config_map() {
    let (api, client) = reviews();
    let mesh = |port: u32| {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {
                "mesh": format!("extensionProviders:\n- name: otel-tracing\n  opentelemetry:\n    port: {port}\n    service: opentelemetry-collector.observability.svc.cluster.local\n"),
                "meshNetworks": "networks: {}",
            },
        })
    };
    api.apply(mesh(4317));
    api.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio-sidecar-injector", "namespace": "istio-system"},
        "data": {"config": "policy: enabled"},
    }));
    api.apply(json!({
        "apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
        "metadata": {"name": "mesh-default", "namespace": "istio-system"},
        "spec": {"tracing": [{"providers": [{"name": "otel-tracing"}], "randomSamplingPercentage": 10.0}]},
    }));
    let mut source = start(client);
    source.synced().await.unwrap();
    let state = source.rx.borrow().clone();
    assert!(has(&state, "Telemetry", "mesh-default"));
    assert!(has(&state, "ConfigMap", "istio"));
    assert!(!has(&state, "ConfigMap", "istio-sidecar-injector"));
    let tracing = wasmesh_controlplane::telemetry::MeshTracing::new(&state.loaded.resources)
        .tracing("default", &BTreeMap::new())
        .unwrap();
    assert_eq!(tracing.sampling, 10.0);
    assert_eq!(
        tracing.otlp.unwrap().endpoint,
        "http://opentelemetry-collector.observability.svc.cluster.local:4317"
    );
    let translated = wasmesh_controlplane::translate(&state.loaded.resources, &Options::default());
    assert!(
        translated.errors().next().is_none(),
        "{:#?}",
        translated.diagnostics
    );
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .filter(|r| r.starts_with("/api/v1/namespaces/istio-system/configmaps?"))
            .all(|r| r.contains("fieldSelector=metadata.name=istio")),
        "{requests:#?}"
    );

    // A mesh config that turns bad keeps its last good version, reported.
    api.apply(mesh(0));
    let state = wait_for(&mut source.rx, "the bad mesh config reported", |s| {
        s.loaded.diagnostics.iter().any(|d| d.is_error())
    })
    .await;
    let Spec::MeshConfig(m) = spec(&state, "ConfigMap", "istio") else {
        unreachable!()
    };
    let port = m.extension_providers[0]
        .opentelemetry
        .as_ref()
        .unwrap()
        .port;
    assert_eq!(port, 4317);
    assert!(
        state
            .loaded
            .diagnostics
            .iter()
            .any(|d| d.field.as_deref()
                == Some("data.mesh.extensionProviders[0].opentelemetry.port")),
        "{:#?}",
        state.loaded.diagnostics
    );
}

#[tokio::test(start_paused = true)]
async fn gateway_api_objects_and_tls_secrets_are_read_and_no_other_secret() {
    let (api, client) = reviews();
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "gatewayClassName": "istio",
            "listeners": [{
                "name": "https", "protocol": "HTTPS", "port": 443,
                "tls": {"certificateRefs": [{"name": "web-cert"}]},
            }],
        },
    }));
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "parentRefs": [{"name": "web"}],
            "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}],
        },
    }));
    // `dGxz` is base64 for `tls`.
    api.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "web-cert", "namespace": "default"},
        "data": {"tls.crt": "dGxz", "tls.key": "dGxz", "other": "dGxz"},
    }));
    api.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "password", "namespace": "default"},
        "data": {"password": "dGxz"},
    }));
    let source = start(client);
    source.synced().await.unwrap();
    let state = source.rx.borrow().clone();
    assert!(matches!(
        spec(&state, "Gateway", "web"),
        Spec::KubeGateway(_)
    ));
    assert!(matches!(
        spec(&state, "HTTPRoute", "reviews"),
        Spec::HttpRoute(_)
    ));
    let Spec::Secret(secret) = spec(&state, "Secret", "web-cert") else {
        unreachable!()
    };
    assert_eq!(
        secret.data.keys().collect::<Vec<_>>(),
        ["tls.crt", "tls.key"]
    );
    assert_eq!(secret.data["tls.crt"], b"tls");
    assert!(!has(&state, "Secret", "password"));
    assert!(
        state.loaded.diagnostics.is_empty(),
        "{:#?}",
        state.loaded.diagnostics
    );

    // What the control plane makes of them.
    let converted = wasmesh_controlplane::gateway_api::to_istio(
        &state.loaded.resources,
        &Options::default().domain_suffix,
    );
    assert!(
        converted.diagnostics.is_empty(),
        "{:#?}",
        converted.diagnostics
    );
    assert_eq!(converted.resources.len(), 2);
    let objects = source.objects.borrow().clone();
    assert!(
        objects
            .objects
            .iter()
            .any(|o| o.kind.kind == "HTTPRoute" && o.name == "reviews" && o.generation == Some(1))
    );
}
