//! Istio's egress tasks end to end, through the control plane's translation and the proxy:
//! "Accessing External Services" (the mesh config's `outboundTrafficPolicy`: ALLOW_ANY passes
//! a request for a host the mesh does not know to where it was going, REGISTRY_ONLY answers
//! it 502 as Istio's `block_all` route does, and a MESH_EXTERNAL ServiceEntry with
//! `resolution: DNS` opens the host again) and "Egress TLS Origination" (plain HTTP from the
//! workload, TLS from the sidecar to a DNS-resolved server, verified against its own CA). The
//! external hosts are real local servers, reached by the name `localhost`.

use bytes::Bytes;
use http::StatusCode;

use crate::support::Upstream;
use crate::support::mesh::{Mesh, service};
use crate::support::tls::{TestCa, https_server_with};

/// The external host of the TLS origination task.
const HOST: &str = "api.example.com";

/// Istio's mesh config ConfigMap with `outboundTrafficPolicy.mode`.
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

/// The task's `httpbin-ext`: an external host on port 80, its endpoint the name `localhost`
/// at `port` (resolved by the proxy, not the control plane).
fn httpbin_ext(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin-ext}}
spec:
  hosts: [httpbin.example.com]
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: {port}}}
  resolution: DNS
  location: MESH_EXTERNAL
  endpoints: [{{address: localhost}}]
"
    )
}

/// An external host that is its own endpoint: `localhost` on `port`.
fn localhost_ext(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: localhost-ext}}
spec:
  hosts: [localhost]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: DNS
  location: MESH_EXTERNAL
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accessing_external_services_allow_any_registry_only_and_service_entries() {
    let internal = Upstream::echo("internal").await;
    let external = Upstream::echo("external").await;
    let port = external.addr.port();
    let unknown = format!("localhost:{port}");
    let mesh = Mesh::start(&service("internal", &[internal.addr]), "");

    // ALLOW_ANY (Istio's default, no mesh config): the unknown host is reached where the
    // request was going (the authority, as no connection was redirected).
    let reply = mesh.get(&unknown, "/headers", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["server"], "external", "{}", reply.text());
    assert_eq!(external.hits(), 1);
    mesh.apply(&mesh_config("ALLOW_ANY"));
    assert_eq!(mesh.get(&unknown, "/", &[]).await.status, StatusCode::OK);
    assert_eq!(external.hits(), 2);

    // REGISTRY_ONLY: 502 with no body, and nothing reaches the host; the mesh's own services
    // still answer.
    mesh.apply(&mesh_config("REGISTRY_ONLY"));
    let reply = mesh.get(&unknown, "/headers", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(reply.body.is_empty(), "{}", reply.text());
    assert_eq!(external.hits(), 2);
    assert_eq!(
        mesh.get("internal.default.svc.cluster.local", "/", &[])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(internal.hits(), 1);

    // A ServiceEntry makes the external host a service again, under REGISTRY_ONLY: by its own
    // name (`localhost`), and under another name whose endpoint is `localhost`.
    mesh.apply(&format!(
        "{}\n---\n{}\n---\n{}",
        mesh_config("REGISTRY_ONLY"),
        localhost_ext(port),
        httpbin_ext(port)
    ));
    let reply = mesh.get(&unknown, "/headers", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = mesh.get("httpbin.example.com", "/headers", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["server"], "external");
    assert_eq!(external.hits(), 4);
    // Anything else is still blocked.
    let reply = mesh.get("other.example.com", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(external.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_tls_origination_to_a_dns_resolved_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("external CA");
    let stranger = TestCa::new("stranger");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca_file = write("ca.pem", ca.pem());
    let stranger_file = write("stranger.pem", stranger.pem());
    let server = https_server_with(
        ca.server_config_for(HOST, None),
        Bytes::from_static(b"over TLS"),
    )
    .await;

    // The task's ServiceEntry: port 80 speaks HTTP and goes to the server's TLS port, at a
    // name the proxy resolves. (A DestinationRule's host without a dot is a short name, so
    // the external host has one; its endpoint is `localhost`.)
    let entry = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api-tls}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  ports:
  - {{number: 80, name: http-port, protocol: HTTP, targetPort: {port}}}
  resolution: DNS
  endpoints: [{{address: localhost}}]
",
        port = server.port()
    );
    let rule = |tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api-tls}}
spec:
  host: {HOST}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {tls}
"
        )
    };
    let mesh = Mesh::start(
        &entry,
        &rule(&format!(
            "{{mode: SIMPLE, sni: {HOST}, caCertificates: {ca_file}}}"
        )),
    );
    let reply = mesh.get(HOST, "/", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "over TLS");

    // Under REGISTRY_ONLY too: the ServiceEntry registers the host (and the SNI defaults to
    // it).
    mesh.apply(&format!(
        "{}\n---\n{}",
        rule(&format!("{{mode: SIMPLE, caCertificates: {ca_file}}}")),
        mesh_config("REGISTRY_ONLY")
    ));
    let reply = mesh.get(&format!("{HOST}:80"), "/", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "over TLS");

    // A CA that did not sign the server's certificate: no request goes out.
    mesh.apply(&rule(&format!(
        "{{mode: SIMPLE, caCertificates: {stranger_file}}}"
    )));
    let reply = mesh.get(HOST, "/", &[]).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    // Without the DestinationRule the sidecar speaks plain HTTP to the TLS port: refused.
    mesh.apply("");
    assert_ne!(mesh.get(HOST, "/", &[]).await.status, StatusCode::OK);
}
