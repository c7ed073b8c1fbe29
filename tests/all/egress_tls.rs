//! TLS origination to servers outside the mesh (DestinationRule `tls.mode` SIMPLE and MUTUAL,
//! as in Istio's egress TLS origination task): the workload speaks plain HTTP to port 80, the
//! proxy speaks TLS to the server, verifying it against the given CA (and presenting a client
//! certificate for MUTUAL). A server the CA does not vouch for, or one that wants a client
//! certificate the proxy does not have, gets no request; unreadable files refuse the config.

use bytes::Bytes;
use http::StatusCode;

use crate::support::mesh::{Mesh, options, translate_yaml};
use crate::support::tls::{TestCa, https_server_with};

const HOST: &str = "api.example.com";

fn service(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: {port}}}
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"
    )
}

fn rule(tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: {HOST}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {tls}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_mutual_tls_origination_verify_the_server_and_present_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("api CA");
    let client_ca = TestCa::new("client CA");
    let stranger = TestCa::new("stranger");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca_file = write("ca.pem", server_ca.pem());
    let stranger_file = write("stranger.pem", stranger.pem());
    let (cert, key) = client_ca.leaf_files(dir.path(), "client", "spiffe://example/client");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());

    // SIMPLE to a server that wants no client certificate.
    let plain = https_server_with(
        server_ca.server_config_for(HOST, None),
        Bytes::from_static(b"from the simple server"),
    )
    .await;
    let mesh = Mesh::start(
        &service(plain.port()),
        &rule(&format!("{{mode: SIMPLE, caCertificates: {ca_file}}}")),
    );
    let reply = mesh.get(HOST, "/", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "from the simple server");

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
    // The SNI names another host than the certificate: refused too; subjectAltNames may
    // name the one to verify instead.
    mesh.apply(&rule(&format!(
        "{{mode: SIMPLE, caCertificates: {ca_file}, sni: other.example.com}}"
    )));
    assert_eq!(
        mesh.get(HOST, "/", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    mesh.apply(&rule(&format!(
        "{{mode: SIMPLE, caCertificates: {ca_file}, sni: other.example.com, subjectAltNames: [{HOST}]}}"
    )));
    assert_eq!(mesh.get(HOST, "/", &[]).await.status, StatusCode::OK);

    // MUTUAL to a server that requires a client certificate from its CA.
    let mutual = https_server_with(
        server_ca.server_config_for(HOST, Some(&client_ca)),
        Bytes::from_static(b"from the mutual server"),
    )
    .await;
    let services = service(mutual.port());
    let mesh = Mesh::start(
        &services,
        &rule(&format!(
            "{{mode: MUTUAL, caCertificates: {ca_file}, clientCertificate: {cert}, privateKey: {key}}}"
        )),
    );
    let reply = mesh.get(HOST, "/", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "from the mutual server");
    mesh.apply(&rule(&format!(
        "{{mode: SIMPLE, caCertificates: {ca_file}}}"
    )));
    assert_eq!(
        mesh.get(HOST, "/", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // A file that cannot be read: the config is refused, naming the field and the file, and
    // the last good one keeps serving.
    mesh.apply(&rule(&format!(
        "{{mode: MUTUAL, caCertificates: {ca_file}, clientCertificate: {cert}, privateKey: {key}}}"
    )));
    let missing = dir.path().join("missing.pem").display().to_string();
    let bad = translate_yaml(
        &format!(
            "{services}\n---\n{}",
            rule(&format!(
                "{{mode: MUTUAL, caCertificates: {ca_file}, clientCertificate: {missing}, privateKey: {key}}}"
            ))
        ),
        &options(),
        2,
    );
    let error = mesh.proxy.reload(bad).unwrap_err().to_string();
    assert!(
        error.contains("tls.client_certificate") && error.contains("missing.pem"),
        "{error}"
    );
    assert_eq!(mesh.get(HOST, "/", &[]).await.status, StatusCode::OK);
}
