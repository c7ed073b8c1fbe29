//! The injector's decisions, with no IO: an `AdmissionReview` in, the review's answer out,
//! with a JSON Patch that adds wasmesh's init container and sidecar when the pod should have
//! them. Who gets a sidecar, and the annotations honoured, are Istio's.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::Status;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, META_API_VERSION_V1, META_KIND, Operation,
};
use serde_json::{Value, json};

/// The sidecar container's name.
pub const PROXY_CONTAINER: &str = "wasmesh-proxy";
/// The init container's name: it installs the pod's iptables rules.
pub const INIT_CONTAINER: &str = "wasmesh-init";
/// The sidecar's cache of modules: an `emptyDir`, as its root filesystem is read-only.
const CACHE_VOLUME: &str = "wasmesh-cache";
const CACHE_DIR: &str = "/var/lib/wasmesh";
/// The pod's service-account token for the control plane (Istio's `istio-token`: audience
/// `istio-ca`, 12 h, rotated by the kubelet), which proves the sidecar's identity.
const TOKEN_VOLUME: &str = "istio-token";
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// The sidecar's uid and gid: `wasmesh-proxy init` leaves what they send alone (its
/// `--proxy-uid` and `--proxy-gid` default, Istio's 1337).
const PROXY_UID: u32 = 1337;
/// The admin API stays on loopback, as Envoy's: it takes `POST /quitquitquit`.
const ADMIN_ADDRESS: &str = "127.0.0.1:15000";
/// Istio's status port: the kubelet asks `GET /healthz/ready` there.
const HEALTH_PORT: u16 = 15021;
/// The sidecar's own ports, which `wasmesh-proxy init` never redirects (so never a
/// workload's inbound port).
const PROXY_PORTS: [u16; 6] = [15000, 15001, 15006, 15020, 15021, 15090];

const INJECT: &str = "sidecar.istio.io/inject";
/// Istio's record of an injection, on the pod.
pub const STATUS: &str = "sidecar.istio.io/status";
const NAMESPACE_LABEL: &str = "istio-injection";
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
const PROMETHEUS_ANNOTATIONS: [(&str, &str); 3] = [
    ("prometheus.io/scrape", "true"),
    ("prometheus.io/port", "15021"),
    ("prometheus.io/path", "/stats/prometheus"),
];
/// Namespaces never injected, as Istio's: the cluster's own.
const IGNORED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Istio's interception annotations and the `wasmesh-proxy init` flag each becomes.
const TRAFFIC: [(&str, &str, Items); 5] = [
    (
        INCLUDE_INBOUND_PORTS,
        "--inbound-ports",
        Items::Ports { all: true },
    ),
    (
        EXCLUDE_INBOUND_PORTS,
        "--exclude-inbound-ports",
        Items::Ports { all: false },
    ),
    (
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        "--outbound-ip-ranges",
        Items::Cidrs { all: true },
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        "--exclude-outbound-ip-ranges",
        Items::Cidrs { all: false },
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        "--exclude-outbound-ports",
        Items::Ports { all: false },
    ),
];
const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";

/// The sidecar's resources, Istio's defaults, each overridden by its annotation.
const RESOURCES: [(&str, &str, &str, &str); 4] = [
    ("requests", "cpu", "sidecar.istio.io/proxyCPU", "100m"),
    (
        "requests",
        "memory",
        "sidecar.istio.io/proxyMemory",
        "128Mi",
    ),
    ("limits", "cpu", "sidecar.istio.io/proxyCPULimit", "2"),
    (
        "limits",
        "memory",
        "sidecar.istio.io/proxyMemoryLimit",
        "1Gi",
    ),
];

/// What the injected containers run.
#[derive(Clone, Debug)]
pub struct InjectorConfig {
    /// The image holding `wasmesh-proxy` on its `PATH` (the sidecar, and its `init`).
    pub image: String,
    /// The containers' `imagePullPolicy`; Kubernetes' default when none.
    pub image_pull_policy: Option<String>,
    /// Where sidecars reach the control plane (`host:port`), for example
    /// `wasmesh-controlplane.wasmesh-system.svc:15010`.
    pub control_plane: String,
}

/// A namespace's labels, by its name; `None` while the namespace is not known.
pub type NamespaceLabels = dyn Fn(&str) -> Option<BTreeMap<String, String>> + Send + Sync;

/// The sidecar injector: answers the API server's `AdmissionReview`s for pods.
pub struct Injector {
    config: InjectorConfig,
    namespace_labels: Box<NamespaceLabels>,
}

/// A request body that is not an `AdmissionReview` the injector answers: an HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("the body is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error(
        "expected kind AdmissionReview, apiVersion {META_API_VERSION_V1}; got kind {kind:?}, apiVersion {api_version:?}"
    )]
    NotV1 { kind: String, api_version: String },
    #[error("not an AdmissionReview: {0}")]
    Shape(serde_json::Error),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// An injection annotation whose value `wasmesh-proxy init` would refuse.
#[derive(Debug, thiserror::Error)]
#[error("annotation {annotation}: {value:?}: {reason}")]
pub struct BadAnnotation {
    annotation: &'static str,
    value: String,
    reason: &'static str,
}

impl Injector {
    pub fn new(
        config: InjectorConfig,
        namespace_labels: impl Fn(&str) -> Option<BTreeMap<String, String>> + Send + Sync + 'static,
    ) -> Injector {
        Injector {
            config,
            namespace_labels: Box::new(namespace_labels),
        }
    }

    /// Answers an `AdmissionReview` v1 (JSON) with the review to send back (JSON). Only a
    /// body that is not such a review is an error; whatever concerns the pod is in the answer.
    pub fn review(&self, body: &[u8]) -> Result<Vec<u8>, BadReview> {
        let mut review: Value = serde_json::from_slice(body).map_err(BadReview::NotJson)?;
        let field = |name: &str| review[name].as_str().unwrap_or_default().to_owned();
        let (kind, api_version) = (field("kind"), field("apiVersion"));
        if kind != META_KIND || api_version != META_API_VERSION_V1 {
            return Err(BadReview::NotV1 { kind, api_version });
        }
        // The objects are parsed apart from the review, so that a malformed pod is denied,
        // saying why, under its review's uid.
        let object = review.pointer_mut("/request/object").map(Value::take);
        if let Some(old) = review.pointer_mut("/request/oldObject") {
            old.take();
        }
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_value(review).map_err(BadReview::Shape)?;
        let request: AdmissionRequest<DynamicObject> =
            review.try_into().map_err(|_| BadReview::NoRequest)?;
        Ok(encode(
            self.admit(&request, object.filter(|o| !o.is_null())),
        ))
    }

    fn admit(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        object: Option<Value>,
    ) -> AdmissionResponse {
        let response = AdmissionResponse::from(request);
        let pod_create = request.kind.group.is_empty()
            && request.kind.kind == "Pod"
            && request.sub_resource.is_none()
            && request.operation == Operation::Create;
        if !pod_create {
            // Not what the webhook is registered for: let it through untouched.
            return response;
        }
        let Some(object) = object else {
            return deny(
                response,
                "the review has no object: expected the Pod to create",
            );
        };
        let pod: Pod = match serde_json::from_value(object) {
            Ok(pod) => pod,
            Err(e) => return deny(response, format!("the object is not a valid Pod: {e}")),
        };
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .or_else(|| request.namespace.clone())
            .unwrap_or_default();
        let name = pod
            .metadata
            .name
            .clone()
            .or_else(|| pod.metadata.generate_name.as_ref().map(|g| format!("{g}*")))
            .unwrap_or_default();
        let namespace_labels = (self.namespace_labels)(&namespace);
        if namespace_labels.is_none() {
            tracing::debug!(%namespace, "namespace not known (yet): taken as unlabelled");
        }
        match decide(&pod, &namespace, namespace_labels.as_ref()) {
            Decision::Skip(why) => {
                tracing::debug!(pod = %name, %namespace, why, "no sidecar");
                response
            }
            Decision::Inject => match patch(&pod, &self.config) {
                Ok(patch) => {
                    tracing::info!(pod = %name, %namespace, "injecting the sidecar");
                    response
                        .clone()
                        .with_patch(patch)
                        .unwrap_or_else(|e| deny(response, e))
                }
                Err(e) => {
                    tracing::info!(pod = %name, %namespace, error = %e, "denied");
                    deny(response, e)
                }
            },
        }
    }
}

/// Denies the request as a bad one (HTTP 400), saying why.
fn deny(mut response: AdmissionResponse, why: impl ToString) -> AdmissionResponse {
    response.allowed = false;
    response.result = Status::failure(&why.to_string(), "BadRequest").with_code(400);
    response
}

/// The review answering with `response`, JSON.
fn encode(response: AdmissionResponse) -> Vec<u8> {
    let mut review =
        serde_json::to_value(response.into_review()).expect("plain data serializes to JSON");
    // kube-core writes the patch as an array of numbers, which Go's decoder happens to take;
    // Go's own encoding of `[]byte`, and what every other webhook sends, is base64.
    if let Some(patch) = review.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = serde_json::from_value(patch.take()).unwrap_or_default();
        *patch = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
    }
    serde_json::to_vec(&review).expect("a JSON value serializes")
}

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Inject,
    /// Not injected, and why.
    Skip(&'static str),
}

/// Istio's decision: a namespace labelled `istio-injection=enabled` gets sidecars unless the
/// pod says no, one labelled `disabled` never, any other only where the pod says yes.
fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Decision {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Decision::Skip("the pod is on the node's network");
    }
    if injected(pod) {
        return Decision::Skip("the pod has its sidecar already");
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Decision::Skip("the cluster's own namespaces get no sidecars");
    }
    let namespace_says = namespace_labels
        .and_then(|labels| labels.get(NAMESPACE_LABEL))
        .map(String::as_str);
    if namespace_says == Some("disabled") {
        return Decision::Skip("the namespace is labelled istio-injection=disabled");
    }
    match (namespace_says == Some("enabled"), pod_says(pod)) {
        (_, Some(false)) => Decision::Skip("the pod says sidecar.istio.io/inject: no"),
        (_, Some(true)) | (true, None) => Decision::Inject,
        (false, None) => Decision::Skip("neither the namespace nor the pod asks for a sidecar"),
    }
}

/// The pod's say, `sidecar.istio.io/inject`: its label, else its annotation. As in Istio,
/// `y`, `yes`, `true` and `on` say yes, empty leaves it to the namespace, anything else no.
fn pod_says(pod: &Pod) -> Option<bool> {
    let meta = &pod.metadata;
    let value = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT))
        .or_else(|| meta.annotations.as_ref()?.get(INJECT))?;
    let value = value.to_ascii_lowercase();
    (!value.is_empty()).then_some(matches!(value.as_str(), "y" | "yes" | "true" | "on"))
}

/// Whether the pod already has what the injector adds (so a second review adds nothing).
fn injected(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STATUS));
    let spec = pod.spec.as_ref();
    let named = |name: &str| {
        spec.is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == name)
        })
    };
    annotated || named(PROXY_CONTAINER) || named(INIT_CONTAINER)
}

/// The JSON Patch that adds the init container, the sidecar, its volume and the
/// annotations. Arrays and maps the pod lacks are added whole.
fn patch(pod: &Pod, config: &InjectorConfig) -> Result<Patch, BadAnnotation> {
    let no_annotations = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&no_annotations);
    let mut init_flags = Vec::new();
    for (annotation, flag, items) in TRAFFIC {
        if let Some(value) = annotations.get(annotation) {
            items.check(value).map_err(|reason| BadAnnotation {
                annotation,
                value: value.clone(),
                reason,
            })?;
            init_flags.extend([flag.to_owned(), value.clone()]);
        }
    }
    let Some(spec) = &pod.spec else {
        return Ok(Patch(Vec::new()));
    };

    let token = json!({ "serviceAccountToken": {
        "audience": crate::token_review::AUDIENCE,
        "expirationSeconds": 43200,
        "path": TOKEN_VOLUME,
    } });
    let volumes = [
        json!({ "name": CACHE_VOLUME, "emptyDir": {} }),
        json!({ "name": TOKEN_VOLUME, "projected": { "sources": [token] } }),
    ];
    let mut ops = [
        append(
            "initContainers",
            spec.init_containers.is_some(),
            [init_container(config, init_flags)],
        ),
        append("containers", true, [sidecar(pod, annotations, config)]),
        append("volumes", spec.volumes.is_some(), volumes),
    ]
    .concat();
    let status = json!({
        "initContainers": [INIT_CONTAINER],
        "containers": [PROXY_CONTAINER],
        "volumes": [CACHE_VOLUME, TOKEN_VOLUME],
        "imagePullSecrets": null,
        "revision": "default",
    });
    let mut added = BTreeMap::from([(STATUS, status.to_string())]);
    // `kubectl logs` and `exec` go on picking the workload's container, not the sidecar.
    if let Some(first) = spec.containers.first()
        && !annotations.contains_key(DEFAULT_CONTAINER)
    {
        added.insert(DEFAULT_CONTAINER, first.name.clone());
    }
    // Istio's scrape annotations, unless the pod has its own: Prometheus reads Istio's
    // metrics at the sidecar's status port, which relays the admin's `/stats/prometheus`.
    if !PROMETHEUS_ANNOTATIONS
        .iter()
        .any(|(key, _)| annotations.contains_key(*key))
    {
        for (key, value) in PROMETHEUS_ANNOTATIONS {
            added.insert(key, value.to_owned());
        }
    }
    if pod.metadata.annotations.is_some() {
        ops.extend(added.into_iter().map(|(key, value)| {
            add(
                PointerBuf::from_tokens(["metadata", "annotations", key]),
                value.into(),
            )
        }));
    } else {
        ops.push(add(
            PointerBuf::from_tokens(["metadata", "annotations"]),
            json!(added),
        ));
    }
    Ok(Patch(ops))
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// Appends `values` to the array `/spec/<field>`, which is added if the pod has none.
fn append<const N: usize>(field: &str, present: bool, values: [Value; N]) -> Vec<PatchOperation> {
    if present {
        let end = PointerBuf::from_tokens(["spec", field, "-"]);
        values.map(|v| add(end.clone(), v)).into()
    } else {
        vec![add(
            PointerBuf::from_tokens(["spec", field]),
            Value::Array(values.into()),
        )]
    }
}

/// `wasmesh-proxy init`, as root with the capabilities iptables need, and no others.
fn init_container(config: &InjectorConfig, flags: Vec<String>) -> Value {
    let args = [vec!["init".to_owned()], flags].concat();
    let mut container = json!({
        "name": INIT_CONTAINER,
        "image": config.image,
        "command": ["wasmesh-proxy"],
        "args": args,
        "resources": {
            "requests": { "cpu": "10m", "memory": "16Mi" },
            "limits": { "cpu": "100m", "memory": "64Mi" },
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": false,
            "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
        },
    });
    pull_policy(&mut container, config);
    container
}

/// The sidecar: a transparent one (`--pod-ip`) of the control plane, with the pod's
/// identity. The pod's name, IP and service account come from the downward API, as the name
/// is often not chosen yet (`generateName`) and the IP never is.
fn sidecar(pod: &Pod, annotations: &BTreeMap<String, String>, config: &InjectorConfig) -> Value {
    let mut args: Vec<String> = [
        "--control-plane",
        &config.control_plane,
        "--node",
        "$(POD_NAME)",
        "--namespace",
        "$(POD_NAMESPACE)",
        "--service-account",
        "$(SERVICE_ACCOUNT)",
        "--pod-ip",
        "$(INSTANCE_IP)",
        "--admin",
        ADMIN_ADDRESS,
        "--health",
        &format!("0.0.0.0:{HEALTH_PORT}"),
        "--cache-dir",
        CACHE_DIR,
        "--token-file",
        &format!("{TOKEN_DIR}/{TOKEN_VOLUME}"),
    ]
    .map(str::to_owned)
    .into();
    for (key, value) in pod.metadata.labels.iter().flatten() {
        args.extend(["--label".to_owned(), format!("{key}={value}")]);
    }
    for port in inbound_ports(pod, annotations) {
        args.extend(["--inbound".to_owned(), format!("{port}=127.0.0.1:{port}")]);
    }
    let field = |name: &str, path: &str| json!({ "name": name, "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": path } } });
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("INSTANCE_IP", "status.podIP"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ];
    if let Some(level) = annotations.get(LOG_LEVEL) {
        // Istio's level names, as `tracing` spells them.
        let level = match level.as_str() {
            "warning" => "warn",
            "critical" => "error",
            other => other,
        };
        env.push(json!({ "name": "WASMESH_LOG", "value": level }));
    }
    let mut resources = json!({ "requests": {}, "limits": {} });
    for (kind, resource, annotation, default) in RESOURCES {
        let value = annotations.get(annotation).map_or(default, String::as_str);
        resources[kind][resource] = value.into();
    }
    let mut container = json!({
        "name": PROXY_CONTAINER,
        "image": config.image,
        "command": ["wasmesh-proxy"],
        "args": args,
        "env": env,
        "readinessProbe": {
            "httpGet": { "path": "/healthz/ready", "port": HEALTH_PORT },
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 30,
        },
        "resources": resources,
        "volumeMounts": [
            { "name": CACHE_VOLUME, "mountPath": CACHE_DIR },
            { "name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true },
        ],
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
    });
    pull_policy(&mut container, config);
    container
}

fn pull_policy(container: &mut Value, config: &InjectorConfig) {
    if let Some(policy) = &config.image_pull_policy {
        container["imagePullPolicy"] = policy.clone().into();
    }
}

/// The workload's TCP ports whose traffic iptables send to the sidecar: its containers'
/// ports, within `includeInboundPorts` and outside `excludeInboundPorts` (both checked).
fn inbound_ports(pod: &Pod, annotations: &BTreeMap<String, String>) -> BTreeSet<u16> {
    let list = |annotation: &str| -> Option<BTreeSet<u16>> {
        let value = annotations.get(annotation)?.trim();
        (value != "*").then(|| {
            value
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect()
        })
    };
    let include = list(INCLUDE_INBOUND_PORTS);
    let exclude = list(EXCLUDE_INBOUND_PORTS).unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0 && !PROXY_PORTS.contains(p) && !exclude.contains(p))
        .filter(|p| include.as_ref().is_none_or(|i| i.contains(p)))
        .collect()
}

/// What an interception annotation lists, checked as `wasmesh-proxy init` parses it.
#[derive(Clone, Copy)]
enum Items {
    /// Ports (1-65535), comma-separated; `all`: or `*`.
    Ports { all: bool },
    /// IPv4 addresses or CIDRs, comma-separated; `all`: or `*`.
    Cidrs { all: bool },
}

impl Items {
    fn check(self, value: &str) -> Result<(), &'static str> {
        let (all, item_ok, reason): (bool, fn(&str) -> bool, _) = match self {
            Items::Ports { all } => (all, port_ok, "expected ports (1-65535), comma-separated"),
            Items::Cidrs { all } => (
                all,
                cidr_ok,
                "expected IPv4 addresses or CIDRs (a.b.c.d/n), comma-separated",
            ),
        };
        if value.trim() == "*" {
            return if all {
                Ok(())
            } else {
                Err("`*` is not allowed here")
            };
        }
        let mut items = value.split(',').map(str::trim).filter(|t| !t.is_empty());
        items.all(item_ok).then_some(()).ok_or(reason)
    }
}

fn port_ok(text: &str) -> bool {
    text.parse::<u16>().is_ok_and(|p| p != 0)
}

fn cidr_ok(text: &str) -> bool {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, "32"));
    addr.parse::<std::net::Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;

    fn config() -> InjectorConfig {
        InjectorConfig {
            image: "ghcr.io/wasmesh/wasmesh:test".into(),
            image_pull_policy: Some("IfNotPresent".into()),
            control_plane: "wasmesh-controlplane.wasmesh-system.svc:15010".into(),
        }
    }

    /// A Deployment's pod as the API server shows it to webhooks: no name yet, no
    /// initContainers, volumes or annotations.
    fn pod_json() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "reviews-v1-7d9f8c-",
                "namespace": "bookinfo",
                "labels": { "app": "reviews", "version": "v1", "pod-template-hash": "7d9f8c" },
            },
            "spec": {
                "serviceAccountName": "bookinfo-reviews",
                "containers": [{
                    "name": "reviews",
                    "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.2",
                    "ports": [
                        { "containerPort": 9080, "protocol": "TCP" },
                        { "containerPort": 9081 },
                        { "containerPort": 5353, "protocol": "UDP" },
                        { "containerPort": 15000, "protocol": "TCP" },
                    ],
                }],
            },
        })
    }

    fn pod(value: &Value) -> Pod {
        serde_json::from_value(value.clone()).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// `value` with `field` at `path`, which is made if missing.
    fn with(mut value: Value, path: &[&str], field: Value) -> Value {
        let target = path.iter().fold(&mut value, |v, key| &mut v[*key]);
        *target = field;
        value
    }

    /// The pod after the patch, which must apply.
    fn patched(value: &Value) -> Pod {
        let patch = patch(&pod(value), &config()).unwrap();
        let mut doc = value.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        pod(&doc)
    }

    fn container<'a>(containers: &'a [Container], name: &str) -> &'a Container {
        containers.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn istios_decision_namespace_label_then_pod_label_over_annotation() {
        let enabled = labels(&[("istio-injection", "enabled")]);
        let disabled = labels(&[("istio-injection", "disabled")]);
        let plain = labels(&[("team", "books")]);
        let says = |label: Option<&str>, annotation: Option<&str>| {
            let mut value = pod_json();
            if let Some(l) = label {
                value["metadata"]["labels"][INJECT] = l.into();
            }
            if let Some(a) = annotation {
                value["metadata"]["annotations"] = json!({ INJECT: a });
            }
            pod(&value)
        };
        let cases = [
            (Some(&enabled), None, None, true),
            (Some(&enabled), Some("false"), None, false),
            (Some(&enabled), None, Some("false"), false),
            (Some(&enabled), Some("true"), Some("false"), true),
            (Some(&enabled), Some(""), Some("false"), true),
            (Some(&enabled), Some("maybe"), None, false),
            (Some(&disabled), Some("true"), None, false),
            (Some(&plain), None, None, false),
            (Some(&plain), Some("true"), None, true),
            (Some(&plain), None, Some("yes"), true),
            (Some(&plain), Some("false"), Some("true"), false),
            (None, None, None, false),
            (None, Some("On"), None, true),
        ];
        for (namespace, label, annotation, inject) in cases {
            let decision = decide(&says(label, annotation), "bookinfo", namespace);
            assert_eq!(
                decision == Decision::Inject,
                inject,
                "{namespace:?} label {label:?} annotation {annotation:?}: {decision:?}"
            );
        }
    }

    #[test]
    fn host_network_injected_and_system_pods_are_left_alone() {
        let enabled = labels(&[("istio-injection", "enabled")]);
        let host = with(
            pod_json(),
            &["spec"],
            json!({ "hostNetwork": true, "containers": [] }),
        );
        assert!(matches!(
            decide(&pod(&host), "bookinfo", Some(&enabled)),
            Decision::Skip(_)
        ));
        let twice = patched(&pod_json());
        assert!(matches!(
            decide(&twice, "bookinfo", Some(&enabled)),
            Decision::Skip("the pod has its sidecar already")
        ));
        // A sidecar added by hand, without the status annotation, counts too.
        let by_hand = with(
            pod_json(),
            &["spec", "containers"],
            json!([{ "name": "app" }, { "name": PROXY_CONTAINER }]),
        );
        assert!(matches!(
            decide(&pod(&by_hand), "bookinfo", Some(&enabled)),
            Decision::Skip(_)
        ));
        let opted_in = with(
            pod_json(),
            &["metadata", "labels"],
            json!({ INJECT: "true" }),
        );
        assert!(matches!(
            decide(&pod(&opted_in), "kube-system", Some(&enabled)),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn the_patch_adds_what_the_pod_lacks_and_appends_to_what_it_has() {
        let bare = patched(&pod_json());
        let spec = bare.spec.as_ref().unwrap();
        let names = |cs: &[Container]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&spec.containers), ["reviews", PROXY_CONTAINER]);
        assert_eq!(
            names(spec.init_containers.as_ref().unwrap()),
            [INIT_CONTAINER]
        );
        let volumes: Vec<_> = spec.volumes.iter().flatten().map(|v| &v.name).collect();
        assert_eq!(volumes, [CACHE_VOLUME, TOKEN_VOLUME]);
        let annotations = bare.metadata.annotations.as_ref().unwrap();
        let status: Value = serde_json::from_str(&annotations[STATUS]).unwrap();
        assert_eq!(status["containers"], json!([PROXY_CONTAINER]));
        assert_eq!(annotations[DEFAULT_CONTAINER], "reviews");
        assert_eq!(annotations["prometheus.io/port"], HEALTH_PORT.to_string());
        assert_eq!(annotations["prometheus.io/path"], "/stats/prometheus");

        let mut full = pod_json();
        full["metadata"]["annotations"] = json!({ "prometheus.io/scrape": "true" });
        full["spec"]["initContainers"] = json!([{ "name": "migrate", "image": "migrate" }]);
        full["spec"]["volumes"] = json!([{ "name": "data", "emptyDir": {} }]);
        let patch = patch(&pod(&full), &config()).unwrap();
        // An annotation key's `/` is escaped in the path (RFC 6901).
        let text = serde_json::to_string(&patch).unwrap();
        assert!(
            text.contains("/metadata/annotations/sidecar.istio.io~1status"),
            "{text}"
        );
        let mut doc = full.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        let full = pod(&doc);
        let spec = full.spec.as_ref().unwrap();
        assert_eq!(
            names(spec.init_containers.as_ref().unwrap()),
            ["migrate", INIT_CONTAINER]
        );
        let volumes: Vec<_> = spec.volumes.iter().flatten().map(|v| &v.name).collect();
        assert_eq!(volumes, ["data", CACHE_VOLUME, TOKEN_VOLUME]);
        let annotations = full.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        // The pod's own scrape settings are kept.
        assert!(!annotations.contains_key("prometheus.io/port"));
        assert!(annotations.contains_key(STATUS));
    }

    #[test]
    fn the_sidecar_has_the_pods_identity_and_ports_and_runs_as_1337() {
        let pod = patched(&pod_json());
        let spec = pod.spec.as_ref().unwrap();
        let proxy = container(&spec.containers, PROXY_CONTAINER);
        let args = proxy.args.as_ref().unwrap().join(" ");
        for expected in [
            "--control-plane wasmesh-controlplane.wasmesh-system.svc:15010",
            "--node $(POD_NAME) --namespace $(POD_NAMESPACE)",
            "--service-account $(SERVICE_ACCOUNT) --pod-ip $(INSTANCE_IP)",
            "--label app=reviews",
            "--label version=v1",
            // TCP ports only, not the sidecar's own.
            "--inbound 9080=127.0.0.1:9080 --inbound 9081=127.0.0.1:9081",
            "--token-file /var/run/secrets/tokens/istio-token",
        ] {
            assert!(args.contains(expected), "{expected:?} in {args}");
        }
        assert!(!args.contains("5353") && !args.contains("15000="), "{args}");
        let env: BTreeMap<_, _> = proxy
            .env
            .iter()
            .flatten()
            .map(|e| {
                let field = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
                (e.name.as_str(), field.map(|f| f.field_path.as_str()))
            })
            .collect();
        assert_eq!(env["POD_NAME"], Some("metadata.name"));
        assert_eq!(env["INSTANCE_IP"], Some("status.podIP"));
        assert_eq!(env["SERVICE_ACCOUNT"], Some("spec.serviceAccountName"));
        let security = proxy.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_user, Some(1337));
        assert_eq!(security.run_as_group, Some(1337));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        let probe = proxy
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/healthz/ready"));
        assert_eq!(
            probe.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15021)
        );
        let mounts = proxy.volume_mounts.as_ref().unwrap();
        assert_eq!(mounts[0].mount_path, CACHE_DIR);
        assert_eq!(
            (mounts[1].name.as_str(), mounts[1].mount_path.as_str()),
            (TOKEN_VOLUME, TOKEN_DIR)
        );
        assert_eq!(mounts[1].read_only, Some(true));
        // Istio's projected token: for the control plane only, rotated by the kubelet.
        let token = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == TOKEN_VOLUME);
        let sources = token.and_then(|v| v.projected.as_ref()?.sources.as_ref());
        let token = sources.unwrap()[0].service_account_token.as_ref().unwrap();
        assert_eq!(token.audience.as_deref(), Some("istio-ca"));
        assert_eq!(token.expiration_seconds, Some(43200));
        assert_eq!(token.path, "istio-token");
        assert_eq!(proxy.image_pull_policy.as_deref(), Some("IfNotPresent"));

        let init = container(spec.init_containers.as_ref().unwrap(), INIT_CONTAINER);
        assert_eq!(init.args.as_deref(), Some(&["init".to_owned()][..]));
        let security = init.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_user, Some(0));
        assert_eq!(security.run_as_non_root, Some(false));
        let capabilities = security.capabilities.as_ref().unwrap();
        assert_eq!(
            capabilities.add.as_deref(),
            Some(&["NET_ADMIN".to_owned(), "NET_RAW".to_owned()][..])
        );
    }

    #[test]
    fn interception_annotations_become_init_flags_and_bad_ones_are_refused() {
        let mut value = pod_json();
        value["metadata"]["annotations"] = json!({
            "traffic.sidecar.istio.io/excludeOutboundPorts": "3306, 6379",
            "traffic.sidecar.istio.io/excludeInboundPorts": "9081",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "169.254.169.254/32,10.96.0.1",
            "sidecar.istio.io/proxyMemoryLimit": "256Mi",
            "sidecar.istio.io/logLevel": "warning",
        });
        let injected = patched(&value);
        let spec = injected.spec.as_ref().unwrap();
        let init = container(spec.init_containers.as_ref().unwrap(), INIT_CONTAINER);
        assert_eq!(
            init.args.as_ref().unwrap().join(" "),
            "init --exclude-inbound-ports 9081 \
             --exclude-outbound-ip-ranges 169.254.169.254/32,10.96.0.1 \
             --exclude-outbound-ports 3306, 6379"
        );
        let proxy = container(&spec.containers, PROXY_CONTAINER);
        // An excluded port never reaches the sidecar.
        let args = proxy.args.as_ref().unwrap().join(" ");
        assert!(
            args.contains("--inbound 9080=") && !args.contains("9081"),
            "{args}"
        );
        let limits = proxy.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["memory"].0, "256Mi");
        assert!(
            proxy
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "WASMESH_LOG" && e.value.as_deref() == Some("warn"))
        );

        let included = with(
            pod_json(),
            &["metadata", "annotations"],
            json!({ INCLUDE_INBOUND_PORTS: "9081" }),
        );
        let injected = patched(&included);
        let proxy = container(&injected.spec.as_ref().unwrap().containers, PROXY_CONTAINER);
        let args = proxy.args.as_ref().unwrap().join(" ");
        assert!(
            args.contains("--inbound 9081=") && !args.contains("9080"),
            "{args}"
        );

        for (annotation, value) in [
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "*"),
            ("traffic.sidecar.istio.io/excludeInboundPorts", "http"),
            ("traffic.sidecar.istio.io/includeInboundPorts", "0"),
            (
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "fd00::/8",
            ),
            (
                "traffic.sidecar.istio.io/includeOutboundIPRanges",
                "10.0.0.0/33",
            ),
        ] {
            let bad = with(
                pod_json(),
                &["metadata", "annotations"],
                json!({ annotation: value }),
            );
            let err = patch(&pod(&bad), &config()).unwrap_err().to_string();
            assert!(err.contains(annotation) && err.contains(value), "{err}");
        }
    }
}
