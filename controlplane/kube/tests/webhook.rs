//! The sidecar injector as the API server meets it: `AdmissionReview` v1 documents over HTTPS
//! (HTTP/1.1 and HTTP/2), to the real server on a loopback port, whose certificate the clients
//! verify against the mesh CA's root for the Service's DNS name. And what a careless or
//! hostile client sends instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wasmesh_controlplane::ca::{Authority, Ca};
use wasmesh_kube::webhook::{self, Injector, InjectorConfig, ServingCertificate};

/// The control plane's Service, as `deploy/kubernetes` names it: the API server calls
/// `https://wasmesh-controlplane.wasmesh-system.svc:443/inject`.
const SERVICE: &str = "wasmesh-controlplane";
const NAMESPACE: &str = "wasmesh-system";
const HOST: &str = "wasmesh-controlplane.wasmesh-system.svc";
const CONTROL_PLANE: &str = "wasmesh-controlplane.wasmesh-system.svc:15010";
const IMAGE: &str = "ghcr.io/wasmesh/wasmesh:0.1.0";
/// Longer than any of the server's timeouts: how long a test waits for it to act.
const PATIENCE: Duration = Duration::from_secs(40);

/// What the API server sends when a ReplicaSet creates a pod of the Deployment `reviews-v1`
/// in `bookinfo`: the pod is already defaulted and has its service account token volume; it
/// has no name yet (`generateName`), and no namespace in its metadata either.
const REVIEW: &str = r#"{
  "kind": "AdmissionReview",
  "apiVersion": "admission.k8s.io/v1",
  "request": {
    "uid": "c3f1d7a2-5b0e-4d8e-9a61-2f0c7e4b9d13",
    "kind": {"group": "", "version": "v1", "kind": "Pod"},
    "resource": {"group": "", "version": "v1", "resource": "pods"},
    "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
    "requestResource": {"group": "", "version": "v1", "resource": "pods"},
    "namespace": "bookinfo",
    "operation": "CREATE",
    "userInfo": {
      "username": "system:serviceaccount:kube-system:replicaset-controller",
      "uid": "8d3e2c4f-1a7b-4c9e-b5d6-0f2a9e8c7b61",
      "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
    },
    "object": {
      "kind": "Pod",
      "apiVersion": "v1",
      "metadata": {
        "generateName": "reviews-v1-5b8f7c9d4-",
        "creationTimestamp": null,
        "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "5b8f7c9d4"},
        "ownerReferences": [{
          "apiVersion": "apps/v1",
          "kind": "ReplicaSet",
          "name": "reviews-v1-5b8f7c9d4",
          "uid": "1f0c2b7e-6d4a-4e1b-8c3f-5a9d0e7b2c48",
          "controller": true,
          "blockOwnerDeletion": true
        }],
        "managedFields": [{
          "manager": "kube-controller-manager",
          "operation": "Update",
          "apiVersion": "v1",
          "time": "2025-05-14T09:21:07Z",
          "fieldsType": "FieldsV1",
          "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}, "f:version": {}}}}
        }]
      },
      "spec": {
        "volumes": [{
          "name": "kube-api-access-7xk2p",
          "projected": {
            "sources": [
              {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
              {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
              {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ],
            "defaultMode": 420
          }
        }],
        "containers": [{
          "name": "reviews",
          "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.2",
          "ports": [{"containerPort": 9080, "protocol": "TCP"}],
          "env": [{"name": "LOG_DIR", "value": "/tmp/logs"}],
          "resources": {},
          "volumeMounts": [{"name": "kube-api-access-7xk2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
          "terminationMessagePath": "/dev/termination-log",
          "terminationMessagePolicy": "File",
          "imagePullPolicy": "IfNotPresent",
          "securityContext": {"runAsUser": 1000}
        }],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "bookinfo-reviews",
        "serviceAccount": "bookinfo-reviews",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [
          {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
          {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ],
        "priority": 0,
        "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority"
      },
      "status": {}
    },
    "oldObject": null,
    "dryRun": false,
    "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
  }
}"#;

/// The webhook, serving on a loopback port until dropped.
struct Webhook {
    address: SocketAddr,
    root: CertificateDer<'static>,
    dir: tempfile::TempDir,
    /// Kept, so the certificate follows the CA.
    authority: watch::Sender<Arc<Authority>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn authority(dir: &Path) -> Authority {
    Authority {
        ca: Arc::new(Ca::self_signed_in(dir, "cluster.local").unwrap()),
        trust_domain: "cluster.local".into(),
        default_lifetime: Duration::from_secs(3600),
        max_lifetime: Duration::from_secs(24 * 3600),
    }
}

/// Starts the webhook, its certificate living `lifetime`. `bookinfo` is labelled
/// `istio-injection=enabled`, `plain` has no such label, `off` is labelled `disabled`; other
/// namespaces are not known.
async fn start(lifetime: Duration) -> Webhook {
    let dir = tempfile::tempdir().unwrap();
    let authority = authority(&dir.path().join("ca"));
    let root = authority.ca.roots()[0].clone();
    let (tx, rx) = watch::channel(Arc::new(authority));
    let names = webhook::service_dns_names(SERVICE, NAMESPACE, "svc.cluster.local");
    let certificate = ServingCertificate::issue(rx, names, lifetime).unwrap();
    let label = |value: &str| BTreeMap::from([("istio-injection".to_owned(), value.to_owned())]);
    let namespaces = BTreeMap::from([
        ("bookinfo".to_owned(), label("enabled")),
        (
            "plain".to_owned(),
            BTreeMap::from([("team".into(), "books".into())]),
        ),
        ("off".to_owned(), label("disabled")),
    ]);
    let injector = Injector::new(
        InjectorConfig {
            image: IMAGE.into(),
            image_pull_policy: None,
            control_plane: CONTROL_PLANE.into(),
        },
        move |namespace| namespaces.get(namespace).cloned(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(webhook::serve(listener, certificate, injector));
    Webhook {
        address,
        root,
        dir,
        authority: tx,
        server,
    }
}

fn connector(trusted: &[CertificateDer<'static>], alpn: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for root in trusted {
        roots.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

impl Webhook {
    /// A TLS connection to the webhook, its certificate verified for [`HOST`].
    async fn tls(&self, alpn: &[u8]) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.address).await?;
        let name = ServerName::try_from(HOST).unwrap();
        connector(std::slice::from_ref(&self.root), alpn)
            .connect(name, tcp)
            .await
    }

    /// Sends `request` over HTTP/1.1: the status and the body.
    async fn send(&self, request: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
        let io = TokioIo::new(self.tls(b"http/1.1").await.unwrap());
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    async fn post(&self, path: &str, body: impl Into<Bytes>) -> (StatusCode, Bytes) {
        self.send(post(path, body)).await
    }

    /// Sends a review to `/inject`, expecting a 200: the answer.
    async fn review(&self, review: &Value) -> Answer {
        let (status, body) = self.post("/inject", review.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        Answer::parse(&body)
    }
}

fn post(path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

/// The review's pod.
fn pod() -> Value {
    serde_json::from_str::<Value>(REVIEW).unwrap()["request"]["object"].take()
}

/// The fixture review, with its uid, namespace, and object replaced.
fn review(uid: &str, namespace: &str, object: Value) -> Value {
    let mut review: Value = serde_json::from_str(REVIEW).unwrap();
    review["request"]["uid"] = uid.into();
    review["request"]["namespace"] = namespace.into();
    review["request"]["object"] = object;
    review
}

/// A review's response, as the API server reads it.
#[derive(Debug)]
struct Answer {
    uid: String,
    allowed: bool,
    status: Value,
    patch: Option<json_patch::Patch>,
}

impl Answer {
    fn parse(body: &[u8]) -> Answer {
        let review: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{review}");
        assert_eq!(review["kind"], "AdmissionReview", "{review}");
        let response = &review["response"];
        let patch = response["patch"].as_str().map(|encoded| {
            assert_eq!(response["patchType"], "JSONPatch", "{review}");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        });
        Answer {
            uid: response["uid"].as_str().unwrap().to_owned(),
            allowed: response["allowed"].as_bool().unwrap(),
            status: response["status"].clone(),
            patch,
        }
    }

    /// `object` with the answer's patch applied.
    fn apply(&self, object: &Value) -> Value {
        let mut object = object.clone();
        json_patch::patch(&mut object, self.patch.as_ref().expect("a patch")).unwrap();
        object
    }
}

fn names<'a>(
    containers: impl IntoIterator<Item = &'a k8s_openapi::api::core::v1::Container>,
) -> Vec<&'a str> {
    containers.into_iter().map(|c| c.name.as_str()).collect()
}

#[tokio::test]
async fn a_deployments_pod_gets_its_sidecar_once() {
    let webhook = start(webhook::DEFAULT_LIFETIME).await;
    let answer = webhook.review(&serde_json::from_str(REVIEW).unwrap()).await;
    assert_eq!(answer.uid, "c3f1d7a2-5b0e-4d8e-9a61-2f0c7e4b9d13");
    assert!(answer.allowed, "{answer:?}");
    let injected = answer.apply(&pod());
    let pod: Pod = serde_json::from_value(injected.clone()).unwrap();
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(names(&spec.containers), ["reviews", "wasmesh-proxy"]);
    assert_eq!(
        names(spec.init_containers.iter().flatten()),
        ["wasmesh-init"]
    );
    let volumes: Vec<_> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        ["kube-api-access-7xk2p", "wasmesh-cache", "istio-token"]
    );
    // The workload's container is as it was.
    assert_eq!(injected["spec"]["containers"][0], pod_container());

    let proxy = &spec.containers[1];
    assert_eq!(proxy.image.as_deref(), Some(IMAGE));
    let args = proxy.args.as_ref().unwrap().join(" ");
    for expected in [
        &format!("--control-plane {CONTROL_PLANE}"),
        "--node $(POD_NAME)",
        "--namespace $(POD_NAMESPACE)",
        "--service-account $(SERVICE_ACCOUNT)",
        "--pod-ip $(INSTANCE_IP)",
        "--label app=reviews",
        "--label version=v1",
        "--inbound 9080=127.0.0.1:9080",
        "--token-file /var/run/secrets/tokens/istio-token",
    ] {
        assert!(args.contains(expected), "{expected} in {args}");
    }
    let env: BTreeMap<_, _> = proxy
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e.name.as_str(),
                e.value_from
                    .as_ref()?
                    .field_ref
                    .as_ref()?
                    .field_path
                    .as_str(),
            ))
        })
        .collect();
    assert_eq!(
        env,
        BTreeMap::from([
            ("INSTANCE_IP", "status.podIP"),
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ])
    );
    let security = proxy.security_context.as_ref().unwrap();
    assert_eq!(
        (security.run_as_user, security.run_as_group),
        (Some(1337), Some(1337))
    );
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.args.as_deref(), Some(&["init".to_owned()][..]));
    assert_eq!(init.security_context.as_ref().unwrap().run_as_user, Some(0));
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    let status: Value = serde_json::from_str(&annotations["sidecar.istio.io/status"]).unwrap();
    assert_eq!(status["containers"], json!(["wasmesh-proxy"]));
    assert_eq!(status["initContainers"], json!(["wasmesh-init"]));

    // The API server may call again (reinvocation, a retry): nothing more is added.
    let again = webhook
        .review(&review("0b6c2e4d-second", "bookinfo", injected))
        .await;
    assert_eq!(again.uid, "0b6c2e4d-second");
    assert!(again.allowed && again.patch.is_none(), "{again:?}");
}

fn pod_container() -> Value {
    pod()["spec"]["containers"][0].take()
}

#[tokio::test]
async fn http2_and_istios_paths_are_served_too() {
    let webhook = start(webhook::DEFAULT_LIFETIME).await;
    let stream = webhook.tls(b"h2").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    // Several reviews on one connection, as the API server sends them.
    for (i, path) in [
        "/inject",
        "/inject/",
        "/inject/cluster/Kubernetes/net/network1",
    ]
    .into_iter()
    .enumerate()
    {
        let uid = format!("h2-{i}");
        let body = review(&uid, "bookinfo", pod()).to_string();
        let mut request = post(path, body);
        *request.uri_mut() = format!("https://{HOST}{path}").parse().unwrap();
        request.headers_mut().remove("host");
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let answer = Answer::parse(&response.into_body().collect().await.unwrap().to_bytes());
        assert_eq!(answer.uid, uid);
        assert!(answer.patch.is_some(), "{path}: {answer:?}");
    }
}

#[tokio::test]
async fn the_pod_and_its_namespace_decide_as_in_istio() {
    let webhook = start(webhook::DEFAULT_LIFETIME).await;
    let with_label = |value: &str| {
        let mut pod = pod();
        pod["metadata"]["labels"]["sidecar.istio.io/inject"] = value.into();
        pod
    };
    let with_annotation = |value: &str| {
        let mut pod = pod();
        pod["metadata"]["annotations"] = json!({ "sidecar.istio.io/inject": value });
        pod
    };
    let mut host_network = pod();
    host_network["spec"]["hostNetwork"] = true.into();
    let cases = [
        ("enabled namespace", "bookinfo", pod(), true),
        ("opted out by label", "bookinfo", with_label("false"), false),
        (
            "opted out by annotation",
            "bookinfo",
            with_annotation("false"),
            false,
        ),
        ("host network", "bookinfo", host_network, false),
        ("unlabelled namespace", "plain", pod(), false),
        ("opted in by label", "plain", with_label("true"), true),
        (
            "opted in by annotation",
            "plain",
            with_annotation("true"),
            true,
        ),
        ("disabled namespace", "off", with_label("true"), false),
        ("unknown namespace", "elsewhere", pod(), false),
        (
            "unknown namespace, opted in",
            "elsewhere",
            with_label("true"),
            true,
        ),
    ];
    for (case, namespace, object, injected) in cases {
        let answer = webhook
            .review(&review(case, namespace, object.clone()))
            .await;
        assert_eq!(answer.uid, case);
        assert!(answer.allowed, "{case}: {answer:?}");
        assert_eq!(answer.patch.is_some(), injected, "{case}: {answer:?}");
        if injected {
            answer.apply(&object);
        }
    }
}

#[tokio::test]
async fn what_is_not_a_pod_being_created_passes_unchanged() {
    let webhook = start(webhook::DEFAULT_LIFETIME).await;
    let mut service = review(
        "service",
        "bookinfo",
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "reviews", "namespace": "bookinfo"},
            "spec": {"ports": [{"port": 9080, "name": "http"}], "selector": {"app": "reviews"}},
        }),
    );
    service["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    service["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "services"});
    let mut update = review("update", "bookinfo", pod());
    update["request"]["operation"] = "UPDATE".into();
    update["request"]["oldObject"] = pod();
    let mut delete = review("delete", "bookinfo", Value::Null);
    delete["request"]["operation"] = "DELETE".into();
    delete["request"]["oldObject"] = pod();
    let mut ephemeral = review("ephemeral", "bookinfo", pod());
    ephemeral["request"]["subResource"] = "ephemeralcontainers".into();
    for review in [service, update, delete, ephemeral] {
        let answer = webhook.review(&review).await;
        assert_eq!(answer.uid, review["request"]["uid"]);
        assert!(answer.allowed && answer.patch.is_none(), "{answer:?}");
    }
}

#[tokio::test]
async fn a_pod_that_cannot_be_injected_is_denied_saying_why() {
    let webhook = start(webhook::DEFAULT_LIFETIME).await;
    let mut malformed = pod();
    malformed["spec"]["containers"] = "reviews".into();
    let mut bad_annotation = pod();
    bad_annotation["metadata"]["annotations"] =
        json!({ "traffic.sidecar.istio.io/excludeOutboundPorts": "mysql" });
    for (uid, object, problem) in [
        ("malformed", malformed, "not a valid Pod"),
        ("missing", Value::Null, "no object"),
        (
            "annotation",
            bad_annotation,
            "traffic.sidecar.istio.io/excludeOutboundPorts",
        ),
    ] {
        let answer = webhook.review(&review(uid, "bookinfo", object)).await;
        assert_eq!(answer.uid, uid);
        assert!(!answer.allowed && answer.patch.is_none(), "{answer:?}");
        assert_eq!(answer.status["code"], 400, "{answer:?}");
        let message = answer.status["message"].as_str().unwrap();
        assert!(message.contains(problem), "{problem:?} in {message}");
    }
}

#[tokio::test]
async fn bad_requests_are_refused_and_the_server_goes_on() {
    let webhook = start(webhook::DEFAULT_LIFETIME).await;
    let mut v1beta1: Value = serde_json::from_str(REVIEW).unwrap();
    v1beta1["apiVersion"] = "admission.k8s.io/v1beta1".into();
    let mut no_uid: Value = serde_json::from_str(REVIEW).unwrap();
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let bad = [
        ("not JSON".to_owned(), "not JSON"),
        ("[1, 2, 3]".to_owned(), "expected kind AdmissionReview"),
        (
            r#"{"hello": "world"}"#.to_owned(),
            "expected kind AdmissionReview",
        ),
        (v1beta1.to_string(), "admission.k8s.io/v1beta1"),
        (
            r#"{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}"#.to_owned(),
            "no request",
        ),
        (no_uid.to_string(), "not an AdmissionReview"),
    ];
    for (body, problem) in bad {
        let (status, text) = webhook.post("/inject", body.clone()).await;
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(text.contains(problem), "{problem:?} in {text}");
    }

    let get = Request::get("/inject")
        .header("host", HOST)
        .body(Full::default())
        .unwrap();
    let (status, _) = webhook.send(get).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = webhook.post("/metrics", REVIEW).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut form = post("/inject", REVIEW);
    form.headers_mut().insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    let (status, _) = webhook.send(form).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Too large, declared (answered before any of the body is read)...
    let head = format!(
        "POST /inject HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        webhook::MAX_BODY + 1
    );
    let mut stream = webhook.tls(b"http/1.1").await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let response = until_closed(stream).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    // ... or not: chunks that go on past the limit (and stop there, so that the server
    // reads all that was sent and its answer is not lost to a reset).
    let head = format!(
        "POST /inject HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let mut stream = webhook.tls(b"http/1.1").await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("100000\r\n{}\r\n", " ".repeat(0x100000));
    for _ in 0..webhook::MAX_BODY / 0x100000 {
        stream.write_all(chunk.as_bytes()).await.unwrap();
    }
    stream.write_all(b"1\r\n \r\n").await.unwrap();
    let response = until_closed(stream).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");

    // And it still serves.
    let answer = webhook.review(&serde_json::from_str(REVIEW).unwrap()).await;
    assert!(answer.patch.is_some());
}

/// Reads from `stream` until the server closes it; what it sent.
async fn until_closed(mut stream: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut text = Vec::new();
    let mut buf = [0; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test]
async fn slow_silent_and_plaintext_clients_are_let_go() {
    let webhook = start(webhook::DEFAULT_LIFETIME).await;
    // No TLS handshake at all.
    let silent_tcp = TcpStream::connect(webhook.address).await.unwrap();
    // A handshake, then nothing.
    let silent_tls = webhook.tls(b"h2").await.unwrap();
    // Half a request head.
    let mut slow_head = webhook.tls(b"http/1.1").await.unwrap();
    slow_head
        .write_all(format!("POST /inject HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes())
        .await
        .unwrap();
    // A body that stops short of its length.
    let mut slow_body = webhook.tls(b"http/1.1").await.unwrap();
    slow_body
        .write_all(
            format!(
                "POST /inject HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n\
                 Content-Length: 1000\r\n\r\n{{\"kind\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Plain HTTP to the TLS port: the handshake fails at once.
    let mut plaintext = TcpStream::connect(webhook.address).await.unwrap();
    plaintext.write_all(REVIEW.as_bytes()).await.unwrap();
    until_closed(&mut plaintext).await;

    // While they hang on, others are served.
    let answer = webhook.review(&serde_json::from_str(REVIEW).unwrap()).await;
    assert!(answer.patch.is_some());

    let (_, _, _, body) = tokio::join!(
        until_closed(silent_tcp),
        until_closed(silent_tls),
        until_closed(slow_head),
        until_closed(slow_body),
    );
    assert!(body.starts_with("HTTP/1.1 408"), "{body}");
    let answer = webhook.review(&serde_json::from_str(REVIEW).unwrap()).await;
    assert!(answer.patch.is_some());
}

/// The certificate the webhook serves now, verified by `roots`: its chain.
async fn served_chain(
    webhook: &Webhook,
    roots: &[CertificateDer<'static>],
) -> Vec<CertificateDer<'static>> {
    let tcp = TcpStream::connect(webhook.address).await.unwrap();
    let name = ServerName::try_from(HOST).unwrap();
    let stream = connector(roots, b"http/1.1")
        .connect(name, tcp)
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap().to_vec()
}

/// Polls `served_chain` until `done` holds of it.
async fn wait_for_chain(
    webhook: &Webhook,
    roots: &[CertificateDer<'static>],
    done: impl Fn(&[CertificateDer<'static>]) -> bool,
) -> Vec<CertificateDer<'static>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let chain = served_chain(webhook, roots).await;
        if done(&chain) {
            return chain;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the certificate did not change"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_certificate_is_renewed_at_half_its_life_without_a_restart() {
    let webhook = start(Duration::from_secs(2)).await;
    let root = std::slice::from_ref(&webhook.root);
    let first = served_chain(&webhook, root).await;
    let renewed = wait_for_chain(&webhook, root, |c| c[0] != first[0]).await;
    assert_eq!(renewed[1], webhook.root);
    let answer = webhook.review(&serde_json::from_str(REVIEW).unwrap()).await;
    assert!(answer.patch.is_some());
}

#[tokio::test]
async fn a_new_ca_gets_a_new_certificate_at_once() {
    let webhook = start(webhook::DEFAULT_LIFETIME).await;
    let next = authority(&webhook.dir.path().join("next-ca"));
    let next_root = next.ca.roots()[0].clone();
    webhook.authority.send(Arc::new(next)).unwrap();
    let both = [webhook.root.clone(), next_root.clone()];
    let chain = wait_for_chain(&webhook, &both, |c| c.last() == Some(&next_root)).await;
    assert_eq!(chain.len(), 2);
    // A client trusting only the new root verifies it.
    served_chain(&webhook, std::slice::from_ref(&next_root)).await;
    let refused = webhook.tls(b"http/1.1").await;
    assert!(refused.is_err(), "the old root no longer verifies it");
}

#[tokio::test]
async fn curl_verifies_the_certificate_and_gets_a_patch() {
    let webhook = start(webhook::DEFAULT_LIFETIME).await;
    let dir = webhook.dir.path();
    std::fs::write(
        dir.join("root.pem"),
        wasmesh_controlplane::ca::to_pem(&webhook.root),
    )
    .unwrap();
    std::fs::write(dir.join("review.json"), REVIEW).unwrap();
    let port = webhook.address.port();
    let curl = |host: &str| {
        let mut command = std::process::Command::new("curl");
        command
            .current_dir(dir)
            .args(["-sS", "--max-time", "20", "--cacert", "root.pem"])
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@review.json",
            ])
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://{host}:{port}/inject"));
        // curl blocks: off the runtime that serves it.
        tokio::task::spawn_blocking(move || command.output().expect("curl is installed"))
    };
    for host in [
        HOST,
        "wasmesh-controlplane.wasmesh-system.svc.cluster.local",
    ] {
        let out = curl(host).await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, status) = text.rsplit_once('\n').unwrap();
        assert_eq!(status, "200", "{text}");
        let answer = Answer::parse(body.as_bytes());
        assert!(answer.patch.is_some(), "{answer:?}");
        answer.apply(&pod());
    }
    // A name the certificate does not carry fails verification.
    let out = curl("injector.example.com").await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("certificate") || stderr.contains("SSL"),
        "{stderr}"
    );
}
