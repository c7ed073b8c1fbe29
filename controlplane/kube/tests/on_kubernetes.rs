//! The real `wasmesh-controlplane --kubernetes` against an in-memory API server on a loopback
//! port (`support/api_server.rs`), with real `wasmesh-proxy` sidecars: what the control plane
//! writes to the API (its Lease, its CA's Secret, the webhook's caBundle, Istio's status),
//! the injector as the API server calls it, sidecars proving their identity with tokens the
//! API server reviews, and traffic that follows the Istio objects in the API, through the API
//! server's outage.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;

use support::api_server::{ApiServer, Outage};
use support::mesh::{Echo, Process, Reply, Sidecar, controlplane_bin, field, get, plugins_dir};

const NAMESPACE: &str = "wasmesh-system";
const WEBHOOK_CONFIG: &str = "wasmesh-sidecar-injector";
/// The name the API server calls the injector by.
const INJECTOR_HOST: &str = "wasmesh-controlplane.wasmesh-system.svc";
const ECHO_HOST: &str = "echo.default.svc.cluster.local";
/// Longer than anything should take here.
const PATIENCE: Duration = Duration::from_secs(30);

/// The webhook configuration as `deploy/kubernetes` has it (no caBundle).
fn webhook_config() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/kubernetes/webhook.yaml"
    );
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The VirtualService `echo`, its one route with `http` added.
fn echo_route(http: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "echo", "namespace": "default"},
        "spec": {"hosts": ["echo"], "http": [http]},
    })
}

/// A route to `echo` whose responses carry `x-route: <tag>`.
fn tagged(tag: &str) -> Value {
    json!({
        "headers": {"response": {"set": {"x-route": tag}}},
        "route": [{"destination": {"host": "echo"}}],
    })
}

/// A VirtualService `broken` for the Service `sleep`, matching paths by `regex`: the CRD's
/// schema takes `([`, wasmesh refuses it.
fn broken(regex: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "broken", "namespace": "default"},
        "spec": {
            "hosts": ["sleep"],
            "http": [{
                "match": [{"uri": {"regex": regex}}],
                "route": [{"destination": {"host": "sleep"}}],
            }],
        },
    })
}

/// A Service `name` in `default` on port 80, selecting the pods labelled `app: <name>`.
fn service(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    })
}

/// What a cluster holds before the control plane starts.
fn seed(api: &ApiServer) {
    api.create(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "default", "labels": {"istio-injection": "enabled"}},
    }));
    api.create(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE},
    }));
    api.create(webhook_config());
    api.create(service("echo", "10.96.0.20"));
    api.create(service("sleep", "10.96.0.21"));
    api.create(echo_route(tagged("one")));
    api.create(broken("(["));
}

/// The fake API server, seeded, and the control plane on it.
struct Cluster {
    /// Killed first when dropped, before the API server goes.
    control_plane: Process,
    api: ApiServer,
    /// Where proxies connect (gRPC).
    address: SocketAddr,
    /// The injector's HTTPS address.
    webhook: SocketAddr,
    /// The control plane's data and the tokens' files.
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let api = ApiServer::start().await;
        seed(&api);
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(controlplane_bin());
        cmd.args([
            "--kubernetes",
            "--namespace",
            NAMESPACE,
            "--pod-name",
            "cp-0",
        ])
        .args([
            "--address",
            "127.0.0.1:0",
            "--webhook-address",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--plugins")
        .arg(plugins_dir())
        .env("KUBECONFIG", api.kubeconfig(dir.path()))
        .env("WASMESH_LOG", "info");
        // Nothing but the kubeconfig says where the API server is.
        for var in [
            "KUBERNETES_SERVICE_HOST",
            "KUBERNETES_SERVICE_PORT",
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        let mut control_plane = Process::spawn("controlplane", cmd);
        let line = control_plane
            .wait_for_line("sidecar injector listening", PATIENCE)
            .await;
        let webhook = field(&line, "address").parse().unwrap();
        let line = control_plane
            .wait_for_line("control plane listening", PATIENCE)
            .await;
        let address = field(&line, "address").parse().unwrap();
        Cluster {
            control_plane,
            api,
            address,
            webhook,
            dir,
        }
    }

    /// Waits for `check` on the API server's state; shows the control plane's log if it does
    /// not come.
    async fn wait_for<T>(&self, what: &str, check: impl FnMut(&ApiServer) -> Option<T>) -> T {
        let found = self.api.wait_for(what, PATIENCE, check).await;
        found.unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// The CA's Secret's root certificate.
    fn root(&self) -> Vec<CertificateDer<'static>> {
        let secret = self.api.get("Secret", NAMESPACE, "wasmesh-ca").unwrap();
        certificates(&base64(&secret["data"]["root-cert.pem"]))
    }

    /// A token of service account `default/<service_account>`, known to the API server, in
    /// a file.
    fn token(&self, service_account: &str) -> PathBuf {
        let token = format!("token-of-{service_account}");
        let username = format!("system:serviceaccount:default:{service_account}");
        self.api.add_token(&token, &username);
        let path = self.dir.path().join(&token);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path
    }

    /// Shows the control plane's log after a failed assertion.
    fn log(&self) -> String {
        format!("control plane log:\n{}", self.control_plane.log())
    }
}

fn base64(value: &Value) -> Vec<u8> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not base64: {value}"));
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The webhooks' caBundles, decoded; None for a webhook without one.
fn ca_bundles(config: &Value) -> Vec<Option<Vec<CertificateDer<'static>>>> {
    let webhooks = config["webhooks"].as_array().expect("webhooks");
    webhooks
        .iter()
        .map(|w| {
            let bundle = &w["clientConfig"]["caBundle"];
            (!bundle.is_null()).then(|| certificates(&base64(bundle)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_makes_the_ca_keeps_the_webhook_trusted_writes_status_and_injects() {
    let cluster = Cluster::start().await;
    let api = &cluster.api;

    // a. The replica takes the Lease, and creates the CA's Secret, which it then uses.
    let lease = cluster
        .wait_for("the Lease held by cp-0", |api| {
            let lease = api.get("Lease", NAMESPACE, "wasmesh-controlplane")?;
            (lease["spec"]["holderIdentity"] == "cp-0").then_some(lease)
        })
        .await;
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15, "{lease}");
    let secret = api
        .get("Secret", NAMESPACE, "wasmesh-ca")
        .expect("the CA's Secret is there before the webhook serves");
    for key in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        let pem = String::from_utf8(base64(&secret["data"][key])).unwrap();
        assert!(pem.starts_with("-----BEGIN "), "{key}: {pem}");
    }
    let root = cluster.root();
    assert_eq!(root.len(), 1);
    assert_eq!(
        certificates(&base64(&secret["data"]["ca-cert.pem"])),
        root,
        "a self-signed root signs"
    );
    let created = |kind: &str| {
        api.requests()
            .iter()
            .filter(|r| r.method == Method::POST && r.path.ends_with(kind) && r.status == 201)
            .count()
    };
    assert_eq!(
        (created("/leases"), created("/secrets")),
        (1, 1),
        "one Lease and one Secret created"
    );

    // b. The webhook configuration's caBundle: set to the root, by a strategic merge patch that
    // leaves the rest of each webhook as it was.
    let trusted = |api: &ApiServer| {
        let config = api.get("MutatingWebhookConfiguration", "", WEBHOOK_CONFIG)?;
        ca_bundles(&config)
            .iter()
            .all(|b| b.as_ref() == Some(&root))
            .then_some(config)
    };
    let config = cluster.wait_for("caBundle set to the root", trusted).await;
    let patches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(WEBHOOK_CONFIG) && r.method == Method::PATCH)
        .collect();
    assert_eq!(patches.len(), 1, "{patches:#?}");
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    let mut without_bundles = config.clone();
    for w in without_bundles["webhooks"].as_array_mut().unwrap() {
        w["clientConfig"]
            .as_object_mut()
            .unwrap()
            .remove("caBundle");
    }
    assert_eq!(
        without_bundles["webhooks"],
        webhook_config()["webhooks"],
        "only the caBundles changed"
    );
    // Replaced from the manifest, which has no caBundle (`kubectl replace -f webhook.yaml`):
    // set again.
    let mut manifest = webhook_config();
    manifest["metadata"]["resourceVersion"] = config["metadata"]["resourceVersion"].clone();
    let replaced = api.replace(manifest);
    assert!(ca_bundles(&replaced).iter().all(Option::is_none));
    cluster.wait_for("caBundle set again", trusted).await;
    // Deleted and created again: set again.
    api.delete("MutatingWebhookConfiguration", "", WEBHOOK_CONFIG);
    api.create(webhook_config());
    cluster
        .wait_for("caBundle set on the new configuration", trusted)
        .await;

    // c. Status: Istio's validationMessages on the VirtualService wasmesh refuses, none on the
    // good one; cleared once it is fixed.
    let messages = cluster
        .wait_for("validationMessages on broken", |api| {
            let vs = api.get("VirtualService", "default", "broken")?;
            vs["status"]["validationMessages"].as_array().cloned()
        })
        .await;
    assert!(
        messages.iter().any(|m| m["level"] == "ERROR"
            && m["type"] == json!({"code": "IST0122", "name": "InvalidRegexp"})
            && m["message"]
                .as_str()
                .is_some_and(|t| t.contains("regular expression invalid"))),
        "{messages:#?}"
    );
    let good = api.get("VirtualService", "default", "echo").unwrap();
    assert_eq!(good.get("status"), None, "{good}");
    let status_writes = |name: &str| {
        let path = format!("/virtualservices/{name}/status");
        let writes = api
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with(&path));
        writes.collect::<Vec<_>>()
    };
    assert_eq!(status_writes("echo").len(), 0);
    // The ServiceEntry the source makes of Service `echo` (reported: it has no endpoints yet)
    // is no object in the API: nothing is written for it.
    let made_up: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/serviceentries/") || r.path.contains("/workloadentries/"))
        .collect();
    assert!(made_up.is_empty(), "{made_up:#?}");
    let writes = status_writes("broken");
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(writes[0].method, Method::PATCH);
    assert_eq!(
        writes[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let mut fixed = broken("^/v1/.*");
    fixed["metadata"]["resourceVersion"] = api.get("VirtualService", "default", "broken").unwrap()
        ["metadata"]["resourceVersion"]
        .clone();
    api.replace(fixed);
    cluster
        .wait_for("broken's validationMessages cleared", |api| {
            let vs = api.get("VirtualService", "default", "broken")?;
            vs["status"]
                .get("validationMessages")
                .is_none()
                .then_some(())
        })
        .await;

    // d. The injector, called as the API server calls it: over HTTPS, its certificate verified
    // against the CA's root for the Service's name. A pod in `default` (labelled
    // `istio-injection=enabled` in the API) gets the sidecar, pointed at the control plane; one
    // in `wasmesh-system` (not labelled) does not.
    let answer = review(cluster.webhook, &root, "default").await;
    assert_eq!(answer["allowed"], true, "{answer}");
    let patch: json_patch::Patch = serde_json::from_slice(&base64(&answer["patch"])).unwrap();
    let mut pod = admission_review("default")["request"]["object"].take();
    json_patch::patch(&mut pod, &patch).unwrap();
    let containers = pod["spec"]["containers"].as_array().unwrap();
    let proxy = containers
        .iter()
        .find(|c| c["name"] == "wasmesh-proxy")
        .unwrap_or_else(|| panic!("no sidecar: {pod:#}"));
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let control_plane = format!("{INJECTOR_HOST}:{}", cluster.address.port());
    assert!(
        args.windows(2)
            .any(|w| w == ["--control-plane", control_plane.as_str()]),
        "the sidecar should connect to {control_plane}: {args:?}"
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--token-file", "/var/run/secrets/tokens/istio-token"]),
        "the sidecar proves its identity with its projected token: {args:?}"
    );
    let init = &pod["spec"]["initContainers"];
    assert!(
        init.as_array()
            .is_some_and(|i| i.iter().any(|c| c["name"] == "wasmesh-init")),
        "{init}"
    );
    let answer = review(cluster.webhook, &root, NAMESPACE).await;
    assert_eq!(answer["allowed"], true, "{answer}");
    assert_eq!(answer.get("patch"), None, "not injected: {answer}");

    // a, later: the Lease is renewed (an update conditional on its resourceVersion).
    let renewed = cluster
        .wait_for("the Lease renewed", |api| {
            let now = api.get("Lease", NAMESPACE, "wasmesh-controlplane")?;
            (now["spec"]["renewTime"] != lease["spec"]["renewTime"]).then_some(now)
        })
        .await;
    assert_eq!(renewed["spec"]["holderIdentity"], "cp-0");
    assert_eq!(renewed["spec"]["acquireTime"], lease["spec"]["acquireTime"]);
    let renewals = api
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PUT && r.path.ends_with("/leases/wasmesh-controlplane"))
        .collect::<Vec<_>>();
    assert!(
        renewals
            .iter()
            .all(|r| r.body["metadata"]["resourceVersion"].is_string() && r.status == 200),
        "{renewals:#?}"
    );
    assert!(
        !cluster.control_plane.log().contains("panicked"),
        "{}",
        cluster.log()
    );
}

/// An AdmissionReview v1 of a pod `sleep-…` created in `namespace` by a ReplicaSet, as the
/// API server sends it.
fn admission_review(namespace: &str) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "0d6b8f1e-2c4a-4f7e-9b3d-5a1c8e2f7d40",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {
                    "generateName": "sleep-7c9f8d6b5-",
                    "creationTimestamp": null,
                    "labels": {"app": "sleep", "pod-template-hash": "7c9f8d6b5"},
                },
                "spec": {
                    "containers": [{
                        "name": "sleep",
                        "image": "busybox:1.36",
                        "command": ["sleep", "3600"],
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "resources": {},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "imagePullPolicy": "IfNotPresent",
                    }],
                    "restartPolicy": "Always",
                    "dnsPolicy": "ClusterFirst",
                    "serviceAccountName": "sleep",
                    "serviceAccount": "sleep",
                    "securityContext": {},
                    "schedulerName": "default-scheduler",
                },
                "status": {},
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    })
}

/// Sends a review of a pod in `namespace` to the injector at `address` over HTTPS, verifying
/// its certificate for [`INJECTOR_HOST`] against `roots`; its `response`.
async fn review(address: SocketAddr, roots: &[CertificateDer<'static>], namespace: &str) -> Value {
    let mut trusted = rustls::RootCertStore::empty();
    for root in roots {
        trusted.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(trusted)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(address).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from(INJECTOR_HOST).unwrap(), tcp)
        .await
        .expect("the injector's certificate is the CA's, for its Service's name");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    // As the API server: `clientConfig.service.path`, with its timeout.
    let request = Request::post("/inject?timeout=10s")
        .header("host", format!("{INJECTOR_HOST}:443"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            admission_review(namespace).to_string(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let mut review: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(review["kind"], "AdmissionReview", "{review}");
    assert_eq!(
        review["response"]["uid"], "0d6b8f1e-2c4a-4f7e-9b3d-5a1c8e2f7d40",
        "{review}"
    );
    review["response"].take()
}

/// Waits until a request to `echo` through `outbound` (with `headers`) answers as `ok` says.
async fn until(
    cluster: &Cluster,
    outbound: SocketAddr,
    headers: &[(&str, &str)],
    what: &str,
    ok: impl Fn(&Reply) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = get(outbound, ECHO_HOST, headers).await;
        if reply.as_ref().is_ok_and(&ok) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}; last: {reply:?}\n{}",
            cluster.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pod with a sidecar, as the API holds it once injected.
fn pod(name: &str, service_account: &str, app: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"app": app},
            "annotations": {"sidecar.istio.io/status": "{\"containers\":[\"wasmesh-proxy\"]}"},
        },
        "spec": {
            "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "app"}, {"name": "wasmesh-proxy", "image": "wasmesh"}],
        },
    })
}

fn served_with(tag: &'static str) -> impl Fn(&Reply) -> bool {
    move |r| {
        r.status == StatusCode::OK
            && r.header("x-served-by") == Some("echo-0")
            && r.header("x-route") == Some(tag)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_follow_the_virtual_service_in_the_api_and_keep_it_through_an_outage() {
    let mut cluster = Cluster::start().await;
    let api = &cluster.api;
    let address = cluster.address.to_string();

    // The pods the sidecars belong to: their labels, not the sidecars' word, are what the
    // workloads register as.
    for (name, account, app) in [
        ("echo-0", "echo", "echo"),
        ("client-0", "client", "client"),
        ("spoof-0", "client", "client"),
    ] {
        api.create(pod(name, account, app));
        // The kubelet's report: running, at its IP.
        let running = json!({"status": {"phase": "Running", "podIP": "127.0.0.1"}});
        api.merge_patch_status("Pod", "default", name, running);
    }

    // e. An echo workload behind its sidecar (it registers as app=echo, on the Service's
    // targetPort), and a client's sidecar, each with its service account's token.
    let app = Echo::start("echo-0").await;
    let _server = Sidecar::start(
        &address,
        "echo-0",
        "echo",
        &cluster.token("echo"),
        &[("app", "echo")],
        Some((8080, app.address)),
    )
    .await;
    let client_token = cluster.token("client");
    let client = Sidecar::start(
        &address,
        "client-0",
        "client",
        &client_token,
        &[("app", "client")],
        None,
    )
    .await;
    let outbound = client.outbound;
    until(
        &cluster,
        outbound,
        &[],
        "routed by the VirtualService (x-route: one)",
        served_with("one"),
    )
    .await;
    let reviews: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path == "/apis/authentication.k8s.io/v1/tokenreviews")
        .collect();
    assert!(reviews.len() >= 2, "{reviews:#?}");
    assert!(
        reviews.iter().all(|r| r.method == Method::POST
            && r.body["spec"]["audiences"] == json!(["istio-ca"])
            && r.status == 201),
        "{reviews:#?}"
    );

    // An impostor: a sidecar claiming echo's service account (and to be an echo endpoint)
    // with the client's token. It is refused before it joins: no config, no certificate.
    let impostor = Sidecar::command(
        &address,
        "impostor-0",
        "echo",
        &client_token,
        &[("app", "echo")],
        Some((8080, app.address)),
    );
    let mut impostor = Process::spawn("impostor-0", impostor);
    let refused = impostor
        .wait_for_line(
            "the control plane refused this sidecar's identity",
            PATIENCE,
        )
        .await;
    assert!(
        refused.contains("PermissionDenied")
            && refused.contains("service account default/client's, the Hello claims default/echo"),
        "{refused}"
    );
    let logged = cluster
        .control_plane
        .wait_for_line("proxy refused proxy=impostor-0.default", PATIENCE)
        .await;
    assert!(logged.contains("PermissionDenied"), "{logged}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = impostor.log();
    assert!(
        !log.contains("sidecar started") && !log.contains("certificate installed"),
        "{log}"
    );

    // A pod with a valid token whose sidecar claims labels its pod does not have (to be an
    // echo endpoint, in front of a server of its own): it registers as its pod's labels say,
    // so echo's traffic never goes its way.
    let spoof_app = Echo::start("spoof-0").await;
    let _spoof = Sidecar::start(
        &address,
        "spoof-0",
        "client",
        &client_token,
        &[("app", "echo")],
        Some((8080, spoof_app.address)),
    )
    .await;
    for _ in 0..40 {
        let reply = get(outbound, ECHO_HOST, &[]).await;
        assert!(
            reply.as_ref().is_ok_and(served_with("one")),
            "{reply:?}\n{}",
            cluster.log()
        );
    }

    // Changed in the API: a fault for requests with `x-fault: yes`, another tag for the rest.
    let fault = json!({
        "match": [{"headers": {"x-fault": {"exact": "yes"}}}],
        "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}},
        "route": [{"destination": {"host": "echo"}}],
    });
    api.merge_patch(
        "VirtualService",
        "default",
        "echo",
        json!({"spec": {"http": [fault, tagged("two")]}}),
    );
    until(&cluster, outbound, &[], "x-route: two", served_with("two")).await;
    until(
        &cluster,
        outbound,
        &[("x-fault", "yes")],
        "the fault",
        |r| r.status == StatusCode::IM_A_TEAPOT,
    )
    .await;

    // f. The API server fails every request, then cannot be reached at all: the mesh keeps
    // its configuration, and traffic its routing.
    let lease = api.get("Lease", NAMESPACE, "wasmesh-controlplane").unwrap();
    for outage in [Outage::ServerError, Outage::Unreachable] {
        api.fail(outage);
        let (requests, connections) = (api.requests().len(), api.connections());
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let reply = get(outbound, ECHO_HOST, &[]).await;
            assert!(
                reply.as_ref().is_ok_and(served_with("two")),
                "{outage:?}: {reply:?}\n{}",
                cluster.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The control plane met the outage, and backed off: a dozen watches, the Lease and
        // the status writer retrying for 3 s make a few dozen requests, not thousands.
        let requests = &api.requests()[requests..];
        let connections = api.connections() - connections;
        eprintln!(
            "{outage:?}: {} requests, {connections} connections",
            requests.len()
        );
        match outage {
            Outage::ServerError => {
                let watches = requests.iter().filter(|r| r.query.contains_key("watch"));
                assert!(watches.count() > 0, "no watch was tried");
                assert!(requests.len() < 150, "{} requests", requests.len());
            }
            Outage::Unreachable => {
                assert!(
                    requests.is_empty(),
                    "answered while unreachable: {requests:#?}"
                );
                assert!(connections > 0, "no connection was tried");
                assert!(connections < 150, "{connections} connections");
            }
        }
    }
    api.recover();

    // The watches resume: a change made after the outage reaches the sidecars.
    api.merge_patch(
        "VirtualService",
        "default",
        "echo",
        json!({"spec": {"http": [tagged("three")]}}),
    );
    until(
        &cluster,
        outbound,
        &[],
        "x-route: three, after the outage",
        served_with("three"),
    )
    .await;
    cluster
        .wait_for("the Lease renewed after the outage", |api| {
            let now = api.get("Lease", NAMESPACE, "wasmesh-controlplane")?;
            (now["spec"]["holderIdentity"] == "cp-0"
                && now["spec"]["renewTime"] != lease["spec"]["renewTime"])
                .then_some(())
        })
        .await;

    // Deleted: the routing goes, the service stays.
    api.delete("VirtualService", "default", "echo");
    until(&cluster, outbound, &[], "no x-route", |r| {
        r.status == StatusCode::OK
            && r.header("x-served-by") == Some("echo-0")
            && r.header("x-route").is_none()
    })
    .await;
    let reply = get(outbound, ECHO_HOST, &[("x-fault", "yes")])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "the fault is gone too");
}
