//! The stores' contents as the resources the directory source yields.
//!
//! - An Istio object is its manifest (`apiVersion`, `kind`, `metadata`, `spec`; not its
//!   `status`), parsed as a file's document is. Diagnostics name it; they carry no file. So
//!   is Istio's mesh config, the ConfigMap `istio-system/istio` (its `data.mesh`).
//! - A Service is a ServiceEntry of the same name: host `<name>.<namespace>.<suffix>`, its
//!   cluster IPs (none when headless), location MESH_INTERNAL, resolution STATIC, its selector
//!   as the workloadSelector. Ports keep their names; the protocol is the `appProtocol`'s
//!   (`kubernetes.io/h2c` is HTTP2, `kubernetes.io/ws` HTTP, any other not HTTP is TCP), else
//!   the registry reads the name's prefix as Istio does; UDP and SCTP ports are left out, and a
//!   Service with no port left is. A named `targetPort` is resolved from the EndpointSlices'
//!   ports (the controller names them after the Service's ports).
//! - A ready endpoint (`conditions.ready` not false) of a Service with a selector, whose pod
//!   has no sidecar, is a WorkloadEntry named after the pod: its address, the pod's labels and
//!   service account, and the service port names mapped to the endpoint's ports. A pod behind
//!   several Services is one WorkloadEntry with all their ports (for one port name, the first
//!   Service's by namespace and name). A pod with a sidecar is left out: its sidecar
//!   registers it. So is an endpoint whose pod is not (yet) known.
//! - A Service without a selector (its EndpointSlices written by someone else, such as
//!   `kubernetes`) lists its ready endpoints inline in its ServiceEntry, with the pod's labels
//!   and service account when one is referenced. FQDN slices (deprecated) are skipped.
//! - An ExternalName Service is a MESH_EXTERNAL ServiceEntry resolved by DNS, whose one
//!   endpoint is the external name.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::reflector::{ObjectRef, Store};
use wasmesh_controlplane::istio::{self, Location, Resolution, WorkloadSelector};
use wasmesh_controlplane::{Loaded, Resource, Spec, manifests};

use super::{IstioKind, ObjectId, SIDECAR_CONTAINER, SIDECAR_STATUS_ANNOTATION, Stores};

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Istio objects already parsed, by kind, namespace and name, with the resourceVersion they
/// were parsed at: most recomputes are for endpoints, and need not parse every object again.
#[derive(Default)]
pub(super) struct ParseCache(HashMap<(&'static IstioKind, String, String), (String, Loaded)>);

/// Everything the stores hold, translated; and the Istio objects it came from.
pub(super) fn translate(
    stores: &Stores,
    cache: &mut ParseCache,
    domain_suffix: &str,
) -> (Loaded, Vec<ObjectId>) {
    let mut loaded = Loaded::default();
    let mut ids = Vec::new();
    let mut parsed = HashMap::new();
    for (kind, store) in &stores.istio {
        for o in sorted(store) {
            let (namespace, name) = (o.namespace().unwrap_or_default(), o.name_any());
            let key = (*kind, namespace.clone(), name.clone());
            let version = o.resource_version().unwrap_or_default();
            let object = match cache.0.remove(&key) {
                Some((v, object)) if v == version && !v.is_empty() => object,
                _ => parse_object(kind, &o),
            };
            loaded.extend(object.clone());
            parsed.insert(key, (version, object));
            ids.push(ObjectId {
                kind,
                namespace,
                name,
                generation: o.metadata.generation,
            });
        }
    }
    cache.0 = parsed;
    for cm in sorted(&stores.mesh_config) {
        loaded.extend(parse_config_map(&cm));
    }
    loaded
        .resources
        .extend(sorted(&stores.tls_secrets).iter().map(|s| tls_secret(s)));
    loaded.resources.extend(services(
        &sorted(&stores.services),
        &sorted(&stores.slices),
        &stores.pods,
        domain_suffix,
    ));
    (loaded, ids)
}

/// A store's objects by namespace and name, so that equal contents translate equally.
fn sorted<K>(store: &Store<K>) -> Vec<Arc<K>>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut objects = store.state();
    objects.sort_by_cached_key(|o| (o.namespace(), o.name_any()));
    objects
}

/// One Istio object parsed by the manifests parser, as a document of a file would be.
pub(super) fn parse_object(kind: &IstioKind, o: &DynamicObject) -> Loaded {
    let mut metadata = serde_json::json!({
        "name": o.name_any(),
        "namespace": o.namespace().unwrap_or_default(),
    });
    if !o.labels().is_empty() {
        metadata["labels"] = serde_json::json!(o.labels());
    }
    let api_version = o.types.as_ref().map(|t| t.api_version.clone());
    let mut manifest = serde_json::json!({
        "apiVersion": api_version.unwrap_or_else(|| kind.api_version()),
        "kind": kind.kind,
        "metadata": metadata,
    });
    // Whatever else it has (its spec) as it is, so that the parser is as strict as for files.
    for (field, value) in o.data.as_object().into_iter().flatten() {
        if field != "status" {
            manifest[field] = value.clone();
        }
    }
    // JSON is YAML; on one line, with no `---` to split at.
    let mut loaded = manifests::parse_str(&manifest.to_string(), None);
    // Its one line says nothing.
    for r in &mut loaded.resources {
        r.source.line = None;
    }
    for d in &mut loaded.diagnostics {
        d.line = None;
    }
    loaded
}

/// A ConfigMap parsed by the manifests parser, as a document of a file would be (only Istio's
/// mesh config is read; the source watches no other).
pub(super) fn parse_config_map(cm: &ConfigMap) -> Loaded {
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": cm.name_any(),
            "namespace": cm.namespace().unwrap_or_default(),
        },
        "data": cm.data.clone().unwrap_or_default(),
    });
    let mut loaded = manifests::parse_str(&manifest.to_string(), None);
    for r in &mut loaded.resources {
        r.source.line = None;
    }
    for d in &mut loaded.diagnostics {
        d.line = None;
    }
    loaded
}

/// A `kubernetes.io/tls` Secret, as a manifest's Secret is read (what a Gateway API
/// listener's certificateRefs name).
pub(super) fn tls_secret(s: &Secret) -> Resource {
    let data = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let mut r = Resource::new(
        &s.name_any(),
        &s.namespace().unwrap_or_default(),
        Spec::Secret(istio::TlsSecret { data }),
    );
    r.api_version = "v1".into();
    r
}

/// The ServiceEntries of the Services and the WorkloadEntries of their pods.
fn services(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    pods: &Store<Pod>,
    domain_suffix: &str,
) -> Vec<Resource> {
    let mut by_service: HashMap<(String, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        if let Some(service) = s.labels().get(SERVICE_NAME_LABEL) {
            let key = (s.namespace().unwrap_or_default(), service.as_str());
            by_service.entry(key).or_default().push(s);
        }
    }
    let mut entries = Vec::new();
    let mut workloads: BTreeMap<(String, String), istio::WorkloadEntry> = BTreeMap::new();
    for svc in services {
        let namespace = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let slices = by_service
            .get(&(namespace.clone(), name.as_str()))
            .map_or(&[][..], Vec::as_slice);
        let Some(se) = service_entry(svc, slices, pods, domain_suffix) else {
            continue;
        };
        if se.workload_selector.is_some() {
            for (pod, we) in pod_endpoints(slices, pods) {
                match workloads.entry((namespace.clone(), pod)) {
                    Entry::Vacant(v) => {
                        v.insert(we);
                    }
                    Entry::Occupied(mut o) => {
                        for (port, number) in we.ports {
                            o.get_mut().ports.entry(port).or_insert(number);
                        }
                    }
                }
            }
        }
        entries.push(Resource::new(&name, &namespace, Spec::ServiceEntry(se)));
    }
    entries.extend(workloads.into_iter().map(|((namespace, name), we)| {
        let labels = we.labels.clone();
        let mut r = Resource::new(&name, &namespace, Spec::WorkloadEntry(we));
        r.metadata.labels = labels;
        r
    }));
    entries
}

/// A Service's ServiceEntry; None when it has nothing to serve.
fn service_entry(
    svc: &Service,
    slices: &[&EndpointSlice],
    pods: &Store<Pod>,
    domain_suffix: &str,
) -> Option<istio::ServiceEntry> {
    let spec = svc.spec.as_ref()?;
    let ports: Vec<istio::ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .map(|p| istio::ServicePort {
            number: u32::try_from(p.port).unwrap_or_default(),
            protocol: p.app_protocol.as_deref().map(app_protocol),
            name: p.name.clone().unwrap_or_default(),
            target_port: target_port(p, slices),
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let host = format!(
        "{}.{}.{domain_suffix}",
        svc.name_any(),
        svc.namespace().unwrap_or_default()
    );
    let mut se = istio::ServiceEntry {
        hosts: vec![host],
        ports,
        location: Some(Location::MeshInternal),
        resolution: Some(Resolution::Static),
        ..Default::default()
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        let external = spec.external_name.clone().filter(|n| !n.is_empty())?;
        se.location = Some(Location::MeshExternal);
        se.resolution = Some(Resolution::Dns);
        se.endpoints = vec![istio::WorkloadEntry {
            address: Some(external),
            ..Default::default()
        }];
        return Some(se);
    }
    let ips = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.iter().cloned().collect(),
    };
    se.addresses = ips
        .into_iter()
        .filter(|ip| !ip.is_empty() && ip != "None")
        .collect();
    match spec.selector.clone().filter(|s| !s.is_empty()) {
        Some(labels) => se.workload_selector = Some(WorkloadSelector { labels }),
        None => se.endpoints = inline_endpoints(slices, pods),
    }
    Some(se)
}

/// Istio's protocol for an `appProtocol`: any that is not HTTP is TCP to the proxy.
fn app_protocol(app: &str) -> String {
    match app.to_ascii_lowercase().as_str() {
        "kubernetes.io/h2c" => "HTTP2".into(),
        "kubernetes.io/ws" => "HTTP".into(),
        "kubernetes.io/wss" => "HTTPS".into(),
        p @ ("http" | "http2" | "grpc" | "grpc-web" | "https" | "tls" | "tcp" | "mongo"
        | "redis" | "mysql") => p.to_ascii_uppercase(),
        _ => "TCP".into(),
    }
}

/// The port the pods listen on, when one number says it.
fn target_port(p: &ServicePort, slices: &[&EndpointSlice]) -> Option<u32> {
    match &p.target_port {
        Some(IntOrString::Int(n)) => u32::try_from(*n).ok(),
        Some(IntOrString::String(_)) => slices
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .find(|sp| sp.name == p.name)
            .and_then(|sp| sp.port)
            .and_then(|n| u32::try_from(n).ok()),
        None => None,
    }
}

/// The ready endpoints of a Service's slices, with their ports by service port name; for
/// IP slices only (FQDN ones are deprecated).
fn ready_endpoints<'a>(
    slices: &'a [&'a EndpointSlice],
) -> impl Iterator<Item = (&'a Endpoint, &'a str, BTreeMap<String, u32>)> + 'a {
    slices
        .iter()
        .filter(|s| s.address_type == "IPv4" || s.address_type == "IPv6")
        .flat_map(|s| {
            let ports: BTreeMap<String, u32> = s
                .ports
                .iter()
                .flatten()
                .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
                .filter_map(|p| {
                    let port = u32::try_from(p.port?).ok()?;
                    Some((p.name.clone().unwrap_or_default(), port))
                })
                .collect();
            s.endpoints.iter().filter_map(move |e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                // Only the first address has a meaning (and the controller writes one).
                let address = e.addresses.first().filter(|_| ready)?;
                Some((e, address.as_str(), ports.clone()))
            })
        })
}

/// The pod an endpoint points at, if the store has it.
fn pod_of(e: &Endpoint, pods: &Store<Pod>) -> Option<Arc<Pod>> {
    let target = e
        .target_ref
        .as_ref()
        .filter(|t| t.kind.as_deref() == Some("Pod"))?;
    let name = target.name.as_deref()?;
    let namespace = target.namespace.as_deref()?;
    pods.get(&ObjectRef::new(name).within(namespace))
}

/// Whether a pod has a sidecar (which registers its workload itself).
fn has_sidecar(pod: &Pod) -> bool {
    pod.annotations().contains_key(SIDECAR_STATUS_ANNOTATION)
        || pod
            .spec
            .as_ref()
            .is_some_and(|s| s.containers.iter().any(|c| c.name == SIDECAR_CONTAINER))
}

/// An endpoint as a WorkloadEntry: the pod's labels and service account when there is one.
fn workload(
    address: &str,
    ports: BTreeMap<String, u32>,
    pod: Option<&Pod>,
) -> istio::WorkloadEntry {
    istio::WorkloadEntry {
        address: Some(address.to_owned()),
        ports,
        labels: pod.map(|p| p.labels().clone()).unwrap_or_default(),
        service_account: pod.map(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into())
        }),
        ..Default::default()
    }
}

/// The ready endpoints of pods without a sidecar, by pod name.
fn pod_endpoints(
    slices: &[&EndpointSlice],
    pods: &Store<Pod>,
) -> Vec<(String, istio::WorkloadEntry)> {
    ready_endpoints(slices)
        .filter_map(|(e, address, ports)| {
            let pod = pod_of(e, pods).filter(|p| !has_sidecar(p))?;
            Some((pod.name_any(), workload(address, ports, Some(&pod))))
        })
        .collect()
}

/// A selector-less Service's endpoints, by address.
fn inline_endpoints(slices: &[&EndpointSlice], pods: &Store<Pod>) -> Vec<istio::WorkloadEntry> {
    let mut by_address = BTreeMap::new();
    for (e, address, ports) in ready_endpoints(slices) {
        let pod = pod_of(e, pods);
        by_address
            .entry(address)
            .or_insert_with(|| workload(address, ports, pod.as_deref()));
    }
    by_address.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    fn store<K>(objects: serde_json::Value) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
    {
        let mut writer = Writer::<K>::default();
        for o in objects.as_array().unwrap() {
            let o: K = serde_json::from_value(o.clone()).unwrap();
            writer.apply_watcher_event(&Event::Apply(o));
        }
        writer.as_reader()
    }

    fn translate_services(
        services: serde_json::Value,
        slices: serde_json::Value,
        pods: serde_json::Value,
    ) -> Vec<Resource> {
        let services = sorted(&store::<Service>(services));
        let slices = sorted(&store::<EndpointSlice>(slices));
        super::services(&services, &slices, &store(pods), "svc.cluster.local")
    }

    fn entry(r: &Resource) -> &istio::ServiceEntry {
        match &r.spec {
            Spec::ServiceEntry(se) => se,
            other => panic!("not a ServiceEntry: {other:?}"),
        }
    }

    #[test]
    fn ports_protocols_and_named_target_ports() {
        let got = translate_services(
            serde_json::json!([{
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {
                    "clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7", "fd00::7"],
                    "selector": {"app": "web"},
                    "ports": [
                        {"name": "http", "port": 80, "targetPort": "web"},
                        {"name": "h2", "port": 81, "appProtocol": "kubernetes.io/h2c", "targetPort": 8081},
                        {"name": "pg", "port": 5432, "appProtocol": "postgresql"},
                        {"name": "dns", "port": 53, "protocol": "UDP"}
                    ]
                }
            }]),
            serde_json::json!([{
                "metadata": {"name": "web-x", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}, {"name": "h2", "port": 8081}],
                "endpoints": []
            }]),
            serde_json::json!([]),
        );
        let se = entry(&got[0]);
        assert_eq!(se.hosts, ["web.shop.svc.cluster.local"]);
        assert_eq!(se.addresses, ["10.96.0.7", "fd00::7"]);
        let ports: Vec<_> = se
            .ports
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.number,
                    p.protocol.as_deref(),
                    p.target_port,
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                ("http", 80, None, Some(8080)),
                ("h2", 81, Some("HTTP2"), Some(8081)),
                ("pg", 5432, Some("TCP"), None),
            ]
        );
        assert_eq!(
            se.workload_selector.as_ref().unwrap().labels,
            BTreeMap::from([("app".to_owned(), "web".to_owned())])
        );
    }

    #[test]
    fn selectorless_and_external_name_services() {
        let got = translate_services(
            serde_json::json!([
                {"metadata": {"name": "db", "namespace": "default"},
                 "spec": {"type": "ExternalName", "externalName": "db.example.com",
                          "ports": [{"name": "tcp", "port": 5432}]}},
                {"metadata": {"name": "kubernetes", "namespace": "default"},
                 "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}},
                {"metadata": {"name": "empty", "namespace": "default"},
                 "spec": {"clusterIP": "None", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}
            ]),
            serde_json::json!([{
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": "IPv4",
                "ports": [{"name": "https", "port": 6443}],
                "endpoints": [
                    {"addresses": ["192.168.1.10"]},
                    {"addresses": ["192.168.1.11"], "conditions": {"ready": false}}
                ]
            }]),
            serde_json::json!([]),
        );
        let names: Vec<_> = got.iter().map(|r| (r.kind(), r.name())).collect();
        assert_eq!(
            names,
            [("ServiceEntry", "db"), ("ServiceEntry", "kubernetes")]
        );
        let db = entry(&got[0]);
        assert_eq!(db.location, Some(Location::MeshExternal));
        assert_eq!(db.resolution, Some(Resolution::Dns));
        assert_eq!(db.endpoints[0].address.as_deref(), Some("db.example.com"));
        let api = entry(&got[1]);
        assert!(api.workload_selector.is_none());
        let endpoints: Vec<_> = api
            .endpoints
            .iter()
            .map(|e| (e.address.as_deref().unwrap(), e.ports.get("https").copied()))
            .collect();
        assert_eq!(endpoints, [("192.168.1.10", Some(6443))]);
        for r in &got {
            let errors: Vec<_> = wasmesh_controlplane::check(r)
                .into_iter()
                .filter(|d| d.is_error())
                .collect();
            assert!(errors.is_empty(), "{errors:?}");
        }
    }

    #[test]
    fn a_pod_behind_two_services_is_one_workload_entry() {
        let slice = |service: &str, port: &str, number: u16| {
            serde_json::json!({
                "metadata": {"name": format!("{service}-1"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "ports": [{"name": port, "port": number}],
                "endpoints": [{"addresses": ["10.0.0.5"],
                               "targetRef": {"kind": "Pod", "name": "app-1", "namespace": "default"}}]
            })
        };
        let service = |name: &str, port: &str| {
            serde_json::json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"selector": {"app": "app"}, "ports": [{"name": port, "port": 80}]}
            })
        };
        let got = translate_services(
            serde_json::json!([service("a", "http"), service("b", "grpc")]),
            serde_json::json!([slice("a", "http", 8080), slice("b", "grpc", 9090)]),
            serde_json::json!([{
                "metadata": {"name": "app-1", "namespace": "default", "labels": {"app": "app"}},
                "spec": {"serviceAccountName": "app", "containers": [{"name": "app"}]}
            }]),
        );
        let workloads: Vec<_> = got
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::WorkloadEntry(w) => Some((r.name(), w)),
                _ => None,
            })
            .collect();
        assert_eq!(workloads.len(), 1);
        let (name, w) = workloads[0];
        assert_eq!(name, "app-1");
        assert_eq!(w.address.as_deref(), Some("10.0.0.5"));
        assert_eq!(w.service_account.as_deref(), Some("app"));
        assert_eq!(
            w.ports,
            BTreeMap::from([("grpc".to_owned(), 9090), ("http".to_owned(), 8080)])
        );
    }
}
