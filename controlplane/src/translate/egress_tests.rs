//! Egress as Istio's egress tasks configure it: ServiceEntry resolutions (STATIC, DNS,
//! DNS_ROUND_ROBIN, NONE), the mesh's outbound traffic policy (ALLOW_ANY, REGISTRY_ONLY) and
//! TLS origination to a DNS-resolved external service.

use wasmesh_config::{
    DirectResponse, Resolution as ClusterResolution, UpstreamProtocol, UpstreamTlsMode,
    filters::FilterScope,
};

use super::*;
use crate::manifests::parse_str;
use crate::sidecar::{InboundPort, Node, translate_for};

fn with_plugins() -> Options {
    Options {
        plugins: Some(PluginModules {
            router: PluginModule::new("router.wasm"),
            fault: PluginModule::new("fault.wasm"),
            mirror: PluginModule::new("mirror.wasm"),
            circuit_breaker: PluginModule::new("circuit_breaker.wasm"),
            authz: PluginModule::new("authz.wasm"),
        }),
        ..Options::default()
    }
}

/// Loads the documents (they must load cleanly), translates them and checks the bootstrap
/// (which resolves no DNS name of a `dns` cluster).
fn run(docs: &[&str], options: &Options) -> Translation {
    let loaded = parse_str(&docs.join("\n---\n"), None);
    assert_eq!(loaded.diagnostics, vec![], "loading");
    let t = translate(&loaded.resources, options);
    t.bootstrap.validate().expect("the bootstrap validates");
    t
}

fn printed(t: &Translation) -> Vec<String> {
    t.diagnostics.iter().map(ToString::to_string).collect()
}

fn cluster<'a>(t: &'a Translation, name: &str) -> &'a wasmesh_config::Cluster {
    t.bootstrap
        .clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

/// The mesh config ConfigMap with `outboundTrafficPolicy.mode`.
fn mesh_config(mode: &str) -> String {
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: {mode}
"
    )
}

const EXTERNAL_DNS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.example.invalid, mirror.example.invalid]
  location: MESH_EXTERNAL
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  - {number: 443, name: tls, protocol: TLS}
  resolution: DNS
";

#[test]
fn dns_service_entries_are_dns_clusters_of_names_the_proxy_resolves() {
    let round_robin = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backends}
spec:
  hosts: [api.example.invalid]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: DNS_ROUND_ROBIN
  endpoints:
  - {address: a.backend.example.invalid}
  - {address: b.backend.example.invalid, ports: {http: 9090}}
";
    // Names under `.invalid` never resolve: the bootstrap still validates (`run`).
    let t = run(&[EXTERNAL_DNS, round_robin], &with_plugins());
    assert_eq!(printed(&t), Vec::<String>::new());
    let c = |name: &str| {
        let c = cluster(&t, name);
        (c.resolution, c.endpoints.join(" "), c.protocol)
    };
    // Each host is its own endpoint, at the port's targetPort (or number).
    assert_eq!(
        c("outbound|80||httpbin.example.invalid"),
        (
            ClusterResolution::Dns,
            "httpbin.example.invalid:8080".into(),
            UpstreamProtocol::Http1
        )
    );
    assert_eq!(
        c("outbound|80||mirror.example.invalid"),
        (
            ClusterResolution::Dns,
            "mirror.example.invalid:8080".into(),
            UpstreamProtocol::Http1
        )
    );
    assert_eq!(
        c("outbound|443||httpbin.example.invalid"),
        (
            ClusterResolution::Dns,
            "httpbin.example.invalid:443".into(),
            UpstreamProtocol::Tcp
        )
    );
    // The endpoints' names, at their `ports` entry, else the targetPort.
    assert_eq!(
        c("outbound|80||api.example.invalid"),
        (
            ClusterResolution::Dns,
            "a.backend.example.invalid:8080 b.backend.example.invalid:9090".into(),
            UpstreamProtocol::Http1
        )
    );
    // External services are plaintext unless a DestinationRule says otherwise.
    assert_eq!(cluster(&t, "outbound|80||api.example.invalid").tls, None);
}

#[test]
fn resolution_none_goes_to_the_original_destination_and_static_stays() {
    let entries = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: passthrough}
spec:
  hosts: [any.example.com]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 5432, name: tcp, protocol: TCP}
  resolution: NONE
  endpoints: [{address: 10.0.0.9}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: unset}
spec:
  hosts: [unset.example.com]
  ports: [{number: 8080, name: http}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: fixed}
spec:
  hosts: [fixed.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: any}
spec:
  host: any.example.com
  subsets: [{name: v1, labels: {version: v1}}]
";
    let t = run(&[entries], &with_plugins());
    assert_eq!(
        printed(&t),
        [
            "Info [WSM0006] (ServiceEntry passthrough.default) spec.resolution: NONE: requests go where the caller sent them (Istio's ORIGINAL_DST cluster); sidecars do not use the endpoints",
            "Info [WSM0006] (ServiceEntry passthrough.default) Host any.example.com port 5432 (TCP, resolution NONE): connections pass through to their original destination; no cluster",
        ]
    );
    for name in [
        "outbound|80||any.example.com",
        "outbound|80|v1|any.example.com",
        // Unset is Istio's default, NONE.
        "outbound|8080||unset.example.com",
    ] {
        let c = cluster(&t, name);
        assert_eq!(c.resolution, ClusterResolution::OriginalDst, "{name}");
        assert!(c.endpoints.is_empty(), "{name}");
        // No endpoint is known to have a sidecar: no auto mTLS.
        assert_eq!(c.tls, None, "{name}");
    }
    assert!(
        !t.bootstrap
            .clusters
            .iter()
            .any(|c| c.name == "outbound|5432||any.example.com")
    );
    let fixed = cluster(&t, "outbound|80||fixed.example.com");
    assert_eq!(
        (fixed.resolution, fixed.endpoints.clone()),
        (ClusterResolution::Static, vec!["10.0.0.1:80".to_owned()])
    );
    // Routes reach them as any service's.
    let core = &t.bootstrap.listeners[0].virtual_hosts;
    let any = core
        .iter()
        .find(|v| v.name == "any.example.com:80")
        .unwrap();
    assert_eq!(any.routes[0].cluster, "outbound|80||any.example.com");
}

#[test]
fn allow_any_is_the_default_a_catch_all_to_the_passthrough_cluster() {
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.example.invalid]
  http: [{timeout: 3s, route: [{destination: {host: httpbin.example.invalid}}]}]
";
    for mesh in [None, Some(mesh_config("ALLOW_ANY"))] {
        let mut docs = vec![EXTERNAL_DNS, vs];
        docs.extend(mesh.as_deref());
        let t = run(&docs, &with_plugins());
        assert_eq!(printed(&t), Vec::<String>::new());
        let vhosts = &t.bootstrap.listeners[0].virtual_hosts;
        // After every service's virtual host.
        let names: Vec<&str> = vhosts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "httpbin.example.invalid:80",
                "mirror.example.invalid:80",
                "allow_any"
            ]
        );
        let catch_all = vhosts.last().unwrap();
        assert_eq!(catch_all.domains, ["*"]);
        let route = &catch_all.routes[0];
        assert_eq!(route.name.as_deref(), Some("allow_any"));
        assert_eq!(route.matcher.prefix.as_deref(), Some("/"));
        assert_eq!(route.cluster, "PassthroughCluster");
        assert_eq!(route.direct_response, None);
        // Istio's passthrough route: no timeout, no retries.
        assert!(route.timeout.0.is_zero());
        assert_eq!(route.retry_policy, None);

        let passthrough = cluster(&t, "PassthroughCluster");
        assert_eq!(passthrough.resolution, ClusterResolution::OriginalDst);
        assert!(passthrough.endpoints.is_empty());
        assert_eq!(passthrough.protocol, UpstreamProtocol::Downstream);
        assert_eq!(passthrough.tls, None);
        assert_eq!(
            passthrough.service.as_ref().map(|s| s.name.as_str()),
            Some("PassthroughCluster")
        );

        // The router still runs where a VirtualService binds a service, and where the proxy
        // has no route of its own; the catch-all's requests take the proxy's path.
        let router = &t.bootstrap.listeners[0].http_filters[0];
        assert_eq!(router.name, "router");
        assert_eq!(
            router.applies_to,
            Some(FilterScope {
                routes: vec!["default/httpbin.example.invalid:80".into()],
                clusters: Vec::new(),
                unrouted: true,
            })
        );
    }
}

#[test]
fn registry_only_answers_unknown_hosts_502_as_istio_s_block_all() {
    let t = run(
        &[EXTERNAL_DNS, &mesh_config("REGISTRY_ONLY")],
        &with_plugins(),
    );
    assert_eq!(printed(&t), Vec::<String>::new());
    let catch_all = t.bootstrap.listeners[0].virtual_hosts.last().unwrap();
    assert_eq!(
        (catch_all.name.as_str(), catch_all.domains.clone()),
        ("block_all", vec!["*".to_owned()])
    );
    let route = &catch_all.routes[0];
    assert_eq!(route.name.as_deref(), Some("block_all"));
    assert_eq!(route.cluster, "");
    assert_eq!(
        route.direct_response,
        Some(DirectResponse {
            status: 502,
            body: String::new()
        })
    );
    assert!(
        !t.bootstrap
            .clusters
            .iter()
            .any(|c| c.name == "PassthroughCluster")
    );
    // The registered services keep their routes.
    assert_eq!(
        t.bootstrap.listeners[0].virtual_hosts[0].routes[0].cluster,
        "outbound|80||httpbin.example.invalid"
    );

    // No service at all: still only the catch-all (no more 404 `no-services`).
    let t = run(&[&mesh_config("REGISTRY_ONLY")], &Options::default());
    let names: Vec<&str> = t.bootstrap.listeners[0]
        .virtual_hosts
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(names, ["block_all"]);
}

#[test]
fn a_mode_istio_does_not_have_is_an_error_and_the_default_applies() {
    let bad = mesh_config("registry_only");
    let loaded = parse_str(&format!("{EXTERNAL_DNS}\n---\n{bad}"), None);
    let t = translate(&loaded.resources, &with_plugins());
    let errors: Vec<String> = t.errors().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "Error [IST0106] (ConfigMap istio.istio-system) Schema validation error: data.mesh.outboundTrafficPolicy.mode: \"registry_only\" is not an outbound traffic policy mode: ALLOW_ANY (Istio's default) or REGISTRY_ONLY"
        ]
    );
    let catch_all = t.bootstrap.listeners[0].virtual_hosts.last().unwrap();
    assert_eq!(catch_all.name, "allow_any");
}

#[test]
fn tls_origination_to_a_dns_resolved_external_service() {
    // Istio's "Egress TLS Origination": the workload speaks HTTP to port 80, the sidecar TLS
    // to the host's port 443.
    let docs = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: edition-cnn-com}
spec:
  hosts: [edition.cnn.com]
  location: MESH_EXTERNAL
  ports:
  - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}
  - {number: 443, name: https-port, protocol: HTTPS}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: edition-cnn-com}
spec:
  host: edition.cnn.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE, sni: edition.cnn.com, caCertificates: /etc/ca.pem}
";
    let t = run(&[docs], &with_plugins());
    assert_eq!(printed(&t), Vec::<String>::new());
    let http = cluster(&t, "outbound|80||edition.cnn.com");
    assert_eq!(http.resolution, ClusterResolution::Dns);
    assert_eq!(http.endpoints, ["edition.cnn.com:443"]);
    let tls = http.tls.as_ref().expect("TLS originated");
    assert_eq!(tls.mode, UpstreamTlsMode::Simple);
    assert_eq!(tls.sni.as_deref(), Some("edition.cnn.com"));
    assert_eq!(tls.ca_certificates.as_deref(), Some("/etc/ca.pem"));
    // The HTTPS port is passed through as TCP, untouched.
    let https = cluster(&t, "outbound|443||edition.cnn.com");
    assert_eq!(
        (https.resolution, https.protocol, https.tls.is_none()),
        (ClusterResolution::Dns, UpstreamProtocol::Tcp, true)
    );
}

#[test]
fn transparent_sidecars_block_unknown_tcp_under_registry_only_and_route_dns_ports() {
    let node = Node {
        name: "sleep".into(),
        namespace: "default".into(),
        service_account: "sleep".into(),
        outbound_address: "127.0.0.1:15001".into(),
        pod_ip: "10.1.0.5".into(),
        inbound: vec![InboundPort {
            port: 8080,
            listen_address: "127.0.0.1:15006".into(),
            app_address: "127.0.0.1:8080".into(),
        }],
        ..Default::default()
    };
    let passthrough = |docs: &[&str]| {
        let loaded = parse_str(&docs.join("\n---\n"), None);
        let t = translate_for(&node, &loaded.resources, &[], &with_plugins());
        t.bootstrap.validate().expect("the bootstrap validates");
        let by_name = |name: &str| {
            t.bootstrap
                .listeners
                .iter()
                .find(|l| l.name == name)
                .unwrap_or_else(|| panic!("no listener {name}"))
                .clone()
        };
        let outbound = by_name("virtualOutbound").original_dst.unwrap();
        let inbound = by_name("virtualInbound").original_dst.unwrap();
        (
            outbound.passthrough,
            inbound.passthrough,
            by_name("outbound").handles,
        )
    };
    let (outbound, inbound, handles) = passthrough(&[EXTERNAL_DNS]);
    assert!(outbound && inbound);
    // The DNS entry's HTTP port on any address: Istio's 0.0.0.0_80 listener, by host.
    assert_eq!(handles, ["0.0.0.0:80"]);
    let (outbound, inbound, _) = passthrough(&[EXTERNAL_DNS, &mesh_config("REGISTRY_ONLY")]);
    assert!(!outbound, "REGISTRY_ONLY: unknown destinations are closed");
    assert!(inbound, "the inbound side is not the outbound policy's");
}
