//! Istio's ingress tasks on a gateway: `wasmesh-proxy --gateway-port`, configured by the
//! control plane from Istio's own manifests (Ingress Gateways, Secure Gateways with SIMPLE
//! and MUTUAL TLS, Ingress Gateway without TLS Termination), driven with curl as the tasks
//! drive them (`-H Host:`, `--resolve`, `--cacert`, `--cert`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Response, StatusCode};

use crate::support::sidecars::{ControlPlane, Process, field, shared_cache, write};
use crate::support::tls::{TestCa, https_server_with};
use crate::support::{Upstream, full, run};

/// httpbin, as much of it as the tasks use: `/status/<code>` answers that code; anything
/// else answers 200 with the path.
async fn httpbin() -> Upstream {
    Upstream::start(|req| async move {
        let path = req.uri().path().to_owned();
        let status = path
            .strip_prefix("/status/")
            .and_then(|c| c.parse::<u16>().ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Response::builder()
            .status(status)
            .body(full(format!("httpbin {path} host={host}")))
            .unwrap()
    })
    .await
}

/// httpbin's service on port 8000, its endpoint the local server.
fn httpbin_service(addr: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8000, name: http, protocol: HTTP, targetPort: {}}}]
  endpoints: [{{address: {}}}]
",
        addr.port(),
        addr.ip()
    )
}

/// The task's Gateway on port `port` and its VirtualService for `httpbin.example.com`
/// (`/status` and `/delay` to httpbin:8000).
fn httpbin_gateway(port: u32, protocol: &str, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: {port}
      name: {name}
      protocol: {protocol}
    hosts:
    - \"httpbin.example.com\"
{tls}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - \"httpbin.example.com\"
  gateways:
  - httpbin-gateway
  http:
  - match:
    - uri:
        prefix: /status
    - uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
",
        name = protocol.to_ascii_lowercase(),
    )
}

/// `kubectl create -n istio-system secret tls NAME --key --cert` (and `generic` with
/// `ca.crt` for MUTUAL), as a manifest.
fn tls_secret(name: &str, cert: &Path, key: &Path, ca: Option<&str>) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut data = format!(
        "  tls.crt: {}\n  tls.key: {}\n",
        b64(&std::fs::read(cert).unwrap()),
        b64(&std::fs::read(key).unwrap())
    );
    if let Some(ca) = ca {
        data.push_str(&format!("  ca.crt: {}\n", b64(ca.as_bytes())));
    }
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: istio-system}}
type: kubernetes.io/tls
data:
{data}"
    )
}

/// An ingress gateway serving `ports`: the process and each port's bound address.
fn start_gateway(cp: &ControlPlane, name: &str, ports: &[u32]) -> (Process, Vec<SocketAddr>) {
    start_labelled_gateway(cp, name, "istio=ingressgateway", ports)
}

/// A gateway in `istio-system` labelled `label` serving `ports`.
fn start_labelled_gateway(
    cp: &ControlPlane,
    name: &str,
    label: &str,
    ports: &[u32],
) -> (Process, Vec<SocketAddr>) {
    start_gateway_in(cp, name, "istio-system", label, ports)
}

/// A gateway in `namespace` labelled `label` serving `ports`.
fn start_gateway_in(
    cp: &ControlPlane,
    name: &str,
    namespace: &str,
    label: &str,
    ports: &[u32],
) -> (Process, Vec<SocketAddr>) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wasmesh-proxy"));
    cmd.args(["--control-plane", &cp.address, "--node", name])
        .args(["--namespace", namespace, "--label", label])
        .args(["--workers", "1"])
        .arg("--cache-dir")
        .arg(shared_cache());
    for p in ports {
        cmd.arg("--gateway-port").arg(format!("{p}=127.0.0.1:0"));
    }
    let process = Process::spawn(name, cmd);
    process.wait_for_line("sidecar started", Duration::from_secs(120));
    let addrs = ports
        .iter()
        .map(|p| {
            let line =
                process.wait_for_line(&format!("listener=gateway|{p}"), Duration::from_secs(5));
            field(&line, "address").parse().unwrap()
        })
        .collect();
    (process, addrs)
}

/// curl's status code for `args` (`000` when it made no exchange), and its stderr.
async fn curl(args: &[&str]) -> (String, String) {
    let mut all = vec![
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ];
    all.extend_from_slice(args);
    let out = run("curl", &all).await;
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until curl with `args` answers `want`.
async fn wait_code(args: &[&str], want: &str, log: &Process) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, err) = curl(args).await;
        if code == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "curl {args:?} answered {code} ({err}), not {want}\ngateway log:\n{}",
            log.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Mesh {
    _dir: tempfile::TempDir,
    manifests: std::path::PathBuf,
    cp: ControlPlane,
}

fn mesh(files: &[(&str, &str)]) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    for (name, text) in files {
        write(&manifests, name, text);
    }
    let cp = ControlPlane::start(&manifests, &dir.path().join("data"), "127.0.0.1:0");
    Mesh {
        _dir: dir,
        manifests,
        cp,
    }
}

/// Istio's "Ingress Gateways" task: requests for `httpbin.example.com` through the gateway
/// reach httpbin where the VirtualService routes them; other paths and hosts get 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_gateway_routes_the_virtual_services_bound_to_it() {
    let httpbin = httpbin().await;
    let m = mesh(&[
        ("httpbin.yaml", &httpbin_service(httpbin.addr)),
        ("gateway.yaml", &httpbin_gateway(80, "HTTP", "")),
    ]);
    let (gw, addrs) = start_gateway(&m.cp, "istio-ingressgateway", &[80]);
    let url = |path: &str| format!("http://{}{path}", addrs[0]);
    let host = "Host:httpbin.example.com";
    wait_code(&["-H", host, &url("/status/200")], "200", &gw).await;
    assert_eq!(curl(&["-H", host, &url("/status/418")]).await.0, "418");
    // Not exposed by the VirtualService, and a host the Gateway does not serve.
    assert_eq!(curl(&["-H", host, &url("/headers")]).await.0, "404");
    assert_eq!(
        curl(&["-H", "Host:other.example.com", &url("/status/200")])
            .await
            .0,
        "404"
    );
    // A VirtualService for the mesh only is not served at the gateway.
    write(
        &m.manifests,
        "mesh-only.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mesh-only}
spec:
  hosts: [mesh.example.com]
  http:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
",
    );
    assert_eq!(
        curl(&["-H", "Host:mesh.example.com", &url("/status/200")])
            .await
            .0,
        "404"
    );
    assert!(httpbin.hits() >= 2);
}

/// Istio's "Secure Gateways" task, SIMPLE: the certificate from `credentialName` is served
/// for its host (SNI), the client verifies it with the CA (`--cacert`), and a second host
/// with its own Secret on the same port gets its own certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_gateway_serves_each_host_its_certificate() {
    let httpbin = httpbin().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.com root");
    let ca_file = tmp.path().join("example.com.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cert, key) = ca.server_files(tmp.path(), "httpbin", &["httpbin.example.com"]);
    let (hw_cert, hw_key) = ca.server_files(tmp.path(), "helloworld", &["helloworld.example.com"]);
    let tls = "    tls:\n      mode: SIMPLE\n      credentialName: httpbin-credential\n";
    let helloworld = "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: helloworld-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-helloworld, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: helloworld-credential}
    hosts: [helloworld.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld}
spec:
  hosts: [helloworld.example.com]
  gateways: [helloworld-gateway]
  http:
  - match: [{uri: {exact: /hello}}]
    route:
    - destination: {host: httpbin, port: {number: 8000}}
";
    let m = mesh(&[
        ("httpbin.yaml", &httpbin_service(httpbin.addr)),
        ("gateway.yaml", &httpbin_gateway(443, "HTTPS", tls)),
        ("helloworld.yaml", helloworld),
        (
            "secrets.yaml",
            &format!(
                "{}---\n{}",
                tls_secret("httpbin-credential", &cert, &key, None),
                tls_secret("helloworld-credential", &hw_cert, &hw_key, None)
            ),
        ),
    ]);
    let (gw, addrs) = start_gateway(&m.cp, "istio-ingressgateway", &[443]);
    let port = addrs[0].port();
    let resolve = |host: &str| format!("{host}:{port}:127.0.0.1");
    let (r1, r2) = (
        resolve("httpbin.example.com"),
        resolve("helloworld.example.com"),
    );
    let (u1, u2) = (
        format!("https://httpbin.example.com:{port}/status/418"),
        format!("https://helloworld.example.com:{port}/hello"),
    );
    let ca_path = ca_file.to_str().unwrap();
    wait_code(
        &[
            "-H",
            "Host:httpbin.example.com",
            "--resolve",
            &r1,
            "--cacert",
            ca_path,
            &u1,
        ],
        "418",
        &gw,
    )
    .await;
    let (code, _) = curl(&["--resolve", &r2, "--cacert", ca_path, &u2]).await;
    assert_eq!(code, "200");
    // HTTP/2 by ALPN, as curl asks for it over TLS.
    let out = run(
        "curl",
        &[
            "-s",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "--resolve",
            &r1,
            "--cacert",
            ca_path,
            &u1,
        ],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2");
    // A client that trusts another CA refuses the gateway's certificate.
    let other = TestCa::new("another root");
    let other_file = tmp.path().join("other.crt");
    std::fs::write(&other_file, other.pem()).unwrap();
    let (code, _) = curl(&[
        "--resolve",
        &r1,
        "--cacert",
        other_file.to_str().unwrap(),
        &u1,
    ])
    .await;
    assert_eq!(code, "000");
    // Plain HTTP on the TLS port is refused, and the gateway still serves.
    let (code, _) = curl(&[&format!("http://127.0.0.1:{port}/status/200")]).await;
    assert_ne!(code, "200");
    let (code, _) = curl(&["--resolve", &r1, "--cacert", ca_path, &u1]).await;
    assert_eq!(code, "418");
}

/// Istio's "Secure Gateways" task, MUTUAL: with `ca.crt` in the Secret the gateway asks for a
/// client certificate: one from that CA gets through, none or a foreign one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_gateway_takes_only_client_certificates_from_its_ca() {
    let httpbin = httpbin().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.com root");
    let ca_file = tmp.path().join("example.com.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cert, key) = ca.server_files(tmp.path(), "httpbin", &["httpbin.example.com"]);
    let (client_cert, client_key) =
        ca.leaf_files(tmp.path(), "client", "spiffe://client.example.com/c");
    let foreign = TestCa::new("foreign root");
    let (f_cert, f_key) = foreign.leaf_files(tmp.path(), "foreign", "spiffe://foreign/c");
    let tls = "    tls:\n      mode: MUTUAL\n      credentialName: httpbin-credential\n";
    let m = mesh(&[
        ("httpbin.yaml", &httpbin_service(httpbin.addr)),
        ("gateway.yaml", &httpbin_gateway(443, "HTTPS", tls)),
        (
            "secret.yaml",
            &tls_secret("httpbin-credential", &cert, &key, Some(&ca.pem())),
        ),
    ]);
    let (gw, addrs) = start_gateway(&m.cp, "istio-ingressgateway", &[443]);
    let port = addrs[0].port();
    let resolve = format!("httpbin.example.com:{port}:127.0.0.1");
    let url = format!("https://httpbin.example.com:{port}/status/418");
    let ca_path = ca_file.to_str().unwrap();
    let base = ["--resolve", resolve.as_str(), "--cacert", ca_path];
    let with = |c: &Path, k: &Path| {
        let mut a: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        a.extend([
            "--cert".into(),
            c.display().to_string(),
            "--key".into(),
            k.display().to_string(),
            url.clone(),
        ]);
        a
    };
    let good = with(&client_cert, &client_key);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    wait_code(&good, "418", &gw).await;
    let mut none: Vec<&str> = base.to_vec();
    none.push(&url);
    assert_eq!(curl(&none).await.0, "000", "no client certificate");
    let bad = with(&f_cert, &f_key);
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    assert_eq!(
        curl(&bad).await.0,
        "000",
        "a client certificate from a foreign CA"
    );
    assert_eq!(curl(&good).await.0, "418");
}

/// Istio's "Ingress Gateway without TLS Termination": a PASSTHROUGH server routes TLS by SNI
/// to the backend the VirtualService's `tls` route names; the client sees the backend's own
/// certificate (two backends, two names, one port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_gateway_routes_tls_by_sni_without_terminating() {
    let ca = TestCa::new("nginx root");
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let nginx = https_server_with(
        ca.server_config_for("nginx.example.com", None),
        Bytes::from_static(b"nginx"),
    )
    .await;
    let other = https_server_with(
        ca.server_config_for("other.example.com", None),
        Bytes::from_static(b"other"),
    )
    .await;
    let backend = |name: &str, addr: SocketAddr| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: https, protocol: HTTPS, targetPort: {}}}]
  endpoints: [{{address: {}}}]
",
            addr.port(),
            addr.ip()
        )
    };
    let gateway = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: TLS}
    tls: {mode: PASSTHROUGH}
    hosts: [nginx.example.com, other.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx}
spec:
  hosts: [nginx.example.com, other.example.com]
  gateways: [mygateway]
  tls:
  - match:
    - port: 443
      sniHosts: [nginx.example.com]
    route:
    - destination: {host: my-nginx, port: {number: 443}}
  - match:
    - sniHosts: [other.example.com]
    route:
    - destination: {host: other-nginx}
";
    let m = mesh(&[
        (
            "backends.yaml",
            &format!(
                "{}{}",
                backend("my-nginx", nginx),
                backend("other-nginx", other)
            ),
        ),
        ("gateway.yaml", gateway),
    ]);
    let (gw, addrs) = start_gateway(&m.cp, "istio-ingressgateway", &[443]);
    let port = addrs[0].port();
    let ca_path = ca_file.to_str().unwrap();
    for (host, body) in [
        ("nginx.example.com", "nginx"),
        ("other.example.com", "other"),
    ] {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let url = format!("https://{host}:{port}/");
        wait_code(
            &["--resolve", &resolve, "--cacert", ca_path, &url],
            "200",
            &gw,
        )
        .await;
        let out = run(
            "curl",
            &["-s", "--resolve", &resolve, "--cacert", ca_path, &url],
        )
        .await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), body);
    }
    // An SNI no route names: refused, not passed anywhere.
    let resolve = format!("unknown.example.com:{port}:127.0.0.1");
    let url = format!("https://unknown.example.com:{port}/");
    assert_eq!(curl(&["-k", "--resolve", &resolve, &url]).await.0, "000");
}

/// `tls.httpsRedirect` on the HTTP server: plain requests get Envoy's 301 to https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_sends_plain_requests_to_https() {
    let httpbin = httpbin().await;
    let tls = "    tls:\n      httpsRedirect: true\n";
    let m = mesh(&[
        ("httpbin.yaml", &httpbin_service(httpbin.addr)),
        ("gateway.yaml", &httpbin_gateway(80, "HTTP", tls)),
    ]);
    let (gw, addrs) = start_gateway(&m.cp, "istio-ingressgateway", &[80]);
    let url = format!("http://{}/status/200?x=1", addrs[0]);
    wait_code(&["-H", "Host:httpbin.example.com", &url], "301", &gw).await;
    let out = run(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{redirect_url}",
            "-H",
            "Host:httpbin.example.com",
            &url,
        ],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "https://httpbin.example.com/status/200?x=1"
    );
    assert_eq!(
        httpbin.hits(),
        0,
        "a redirected request reaches no upstream"
    );
}

/// A rotated Secret (`kubectl create secret ... --dry-run -o yaml | kubectl apply`) is served
/// to new handshakes; a connection opened before keeps its requests going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_credential_is_served_without_dropping_connections() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let httpbin = httpbin().await;
    let tmp = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (TestCa::new("old root"), TestCa::new("new root"));
    let (cert, key) = old_ca.server_files(tmp.path(), "old", &["httpbin.example.com"]);
    let tls = "    tls:\n      mode: SIMPLE\n      credentialName: httpbin-credential\n";
    let m = mesh(&[
        ("httpbin.yaml", &httpbin_service(httpbin.addr)),
        ("gateway.yaml", &httpbin_gateway(443, "HTTPS", tls)),
        (
            "secret.yaml",
            &tls_secret("httpbin-credential", &cert, &key, None),
        ),
    ]);
    let (gw, addrs) = start_gateway(&m.cp, "istio-ingressgateway", &[443]);
    let port = addrs[0].port();
    let ca_file = |ca: &TestCa, name: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, ca.pem()).unwrap();
        path.display().to_string()
    };
    let (old_file, new_file) = (ca_file(&old_ca, "old.crt"), ca_file(&new_ca, "new.crt"));
    let resolve = format!("httpbin.example.com:{port}:127.0.0.1");
    let url = format!("https://httpbin.example.com:{port}/status/200");
    wait_code(
        &["--resolve", &resolve, "--cacert", &old_file, &url],
        "200",
        &gw,
    )
    .await;

    // A keep-alive connection trusting the old CA.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(old_ca.pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addrs[0]).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("httpbin.example.com").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut ask = async || {
        let req = http::Request::get("/status/200")
            .header("host", "httpbin.example.com")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .expect("the old connection serves");
        let status = resp.status();
        resp.into_body().collect().await.unwrap();
        status
    };
    assert_eq!(ask().await, StatusCode::OK);

    let (cert, key) = new_ca.server_files(tmp.path(), "new", &["httpbin.example.com"]);
    write(
        &m.manifests,
        "secret.yaml",
        &tls_secret("httpbin-credential", &cert, &key, None),
    );
    wait_code(
        &["--resolve", &resolve, "--cacert", &new_file, &url],
        "200",
        &gw,
    )
    .await;
    assert_eq!(
        curl(&["--resolve", &resolve, "--cacert", &old_file, &url])
            .await
            .0,
        "000"
    );
    assert_eq!(ask().await, StatusCode::OK);
}

/// Istio's "Egress Gateways" task: the sidecar sends requests for an external host to the
/// egress gateway (a VirtualService bound to `mesh` and to the gateway), which sends them on
/// to the host; with the gateway gone, they fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateway_carries_the_mesh_traffic_to_an_external_host() {
    use crate::support::sidecars::{Sidecar, SidecarSpec};
    let external = httpbin().await;
    let manifests = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cnn}}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {{number: 80, name: http-port, protocol: HTTP, targetPort: {port}}}
  resolution: DNS
  location: MESH_EXTERNAL
  endpoints: [{{address: localhost}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http2, protocol: HTTP}}]
  workloadSelector:
    labels: {{istio: egressgateway}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - edition.cnn.com
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 80
      weight: 100
",
        port = external.addr.port()
    );
    let m = mesh(&[("egress.yaml", &manifests)]);
    let (mut gw, _) =
        start_labelled_gateway(&m.cp, "istio-egressgateway", "istio=egressgateway", &[80]);
    let sleep = Sidecar::start(
        &m.cp.address,
        &SidecarSpec {
            name: "sleep",
            labels: &[("app", "sleep")],
            app: None,
            cache: &shared_cache(),
            outbound: "127.0.0.1:0",
        },
    );
    let url = format!("http://{}/politics", sleep.outbound);
    wait_code(&["-H", "Host:edition.cnn.com", &url], "200", &gw).await;
    let out = run("curl", &["-s", "-H", "Host:edition.cnn.com", &url]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "httpbin /politics host=edition.cnn.com"
    );
    let hits = external.hits();
    assert!(hits >= 1);
    // Through the gateway: without it the mesh cannot reach the host.
    gw.kill();
    let (code, _) = curl(&["-H", "Host:edition.cnn.com", &url]).await;
    assert_eq!(code, "503");
    assert_eq!(external.hits(), hits);
}

/// A WasmPlugin whose selector picks the gateway's labels runs on its requests (here the
/// published proxy-wasm SDK's header filter stamps them), and not one for other workloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_plugins_selecting_the_gateway_run_there() {
    let echo = Upstream::echo("httpbin").await;
    let plugin = |name: &str, labels: &str, config: &str| {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: {name}, namespace: istio-system}}
spec:
  selector:
    matchLabels: {labels}
  url: {}
  pluginConfig: {config}
",
            wasmesh_artifacts::HEADERS
        )
    };
    let m = mesh(&[
        ("httpbin.yaml", &httpbin_service(echo.addr)),
        ("gateway.yaml", &httpbin_gateway(80, "HTTP", "")),
        (
            "plugins.yaml",
            &format!(
                "{}---\n{}",
                plugin("stamp", "{istio: ingressgateway}", "at-the-gateway"),
                plugin("elsewhere", "{app: other}", "elsewhere")
            ),
        ),
    ]);
    let (gw, addrs) = start_gateway(&m.cp, "istio-ingressgateway", &[80]);
    let url = format!("http://{}/status/200", addrs[0]);
    wait_code(&["-H", "Host:httpbin.example.com", &url], "200", &gw).await;
    let out = run("curl", &["-s", "-H", "Host:httpbin.example.com", &url]).await;
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        body["headers"]["x-plugin-config"], "at-the-gateway",
        "{body}"
    );
}

/// A Secret whose key does not match its certificate: the gateway refuses that config (a NACK
/// that `proxy-status` shows, naming the field) and keeps serving the last good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_whose_key_does_not_match_is_refused_and_the_last_good_serves() {
    let httpbin = httpbin().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.com root");
    let ca_file = tmp.path().join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cert, key) = ca.server_files(tmp.path(), "httpbin", &["httpbin.example.com"]);
    let (_, other_key) = ca.server_files(tmp.path(), "other", &["httpbin.example.com"]);
    let tls = "    tls:\n      mode: SIMPLE\n      credentialName: httpbin-credential\n";
    let m = mesh(&[
        ("httpbin.yaml", &httpbin_service(httpbin.addr)),
        ("gateway.yaml", &httpbin_gateway(443, "HTTPS", tls)),
        (
            "secret.yaml",
            &tls_secret("httpbin-credential", &cert, &key, None),
        ),
    ]);
    let (gw, addrs) = start_gateway(&m.cp, "istio-ingressgateway", &[443]);
    let port = addrs[0].port();
    let resolve = format!("httpbin.example.com:{port}:127.0.0.1");
    let url = format!("https://httpbin.example.com:{port}/status/200");
    let ca_path = ca_file.to_str().unwrap();
    wait_code(
        &["--resolve", &resolve, "--cacert", ca_path, &url],
        "200",
        &gw,
    )
    .await;

    write(
        &m.manifests,
        "secret.yaml",
        &tls_secret("httpbin-credential", &cert, &other_key, None),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let nacked = loop {
        let status = m.cp.status().await;
        if let Some(p) = status.proxies.iter().find(|p| p.state == "NACKED") {
            break p.error.clone();
        }
        assert!(Instant::now() < deadline, "no NACK: {status:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(nacked.contains("private_key"), "{nacked}");
    assert_eq!(
        curl(&["--resolve", &resolve, "--cacert", ca_path, &url])
            .await
            .0,
        "200"
    );
}

/// Istio's "Kubernetes Gateway API" ingress task: a Gateway of class `istio` and an HTTPRoute
/// attached to it, served by the gateway deployed for it (labelled with the Gateway's name);
/// then a RequestHeaderModifier on a second rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_http_route_through_its_gateway() {
    let echo = Upstream::echo("httpbin").await;
    let gateway = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gateway
  namespace: istio-ingress
spec:
  gatewayClassName: istio
  listeners:
  - name: default
    hostname: \"*.example.com\"
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: All
";
    let route = |extra: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: http
  namespace: default
spec:
  parentRefs:
  - name: gateway
    namespace: istio-ingress
  hostnames: [\"httpbin.example.com\"]
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /get
    backendRefs:
    - name: httpbin
      port: 8000
{extra}"
        )
    };
    let m = mesh(&[
        ("httpbin.yaml", &httpbin_service(echo.addr)),
        ("gateway.yaml", gateway),
        ("route.yaml", &route("")),
    ]);
    let (gw, addrs) = start_gateway_in(
        &m.cp,
        "gateway-istio",
        "istio-ingress",
        "gateway.networking.k8s.io/gateway-name=gateway",
        &[80],
    );
    let url = |path: &str| format!("http://{}{path}", addrs[0]);
    let host = "Host:httpbin.example.com";
    wait_code(&["-H", host, &url("/get")], "200", &gw).await;
    // PathPrefix matches whole segments.
    assert_eq!(curl(&["-H", host, &url("/get/more")]).await.0, "200");
    assert_eq!(curl(&["-H", host, &url("/getter")]).await.0, "404");
    assert_eq!(curl(&["-H", host, &url("/headers")]).await.0, "404");

    write(
        &m.manifests,
        "route.yaml",
        &route(
            "  - matches:
    - path:
        type: PathPrefix
        value: /headers
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add:
        - name: my-added-header
          value: added-value
    backendRefs:
    - name: httpbin
      port: 8000
",
        ),
    );
    wait_code(&["-H", host, &url("/headers")], "200", &gw).await;
    let out = run("curl", &["-s", "-H", host, &url("/headers")]).await;
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["headers"]["my-added-header"], "added-value", "{body}");
}

/// Istio's "Egress Gateways with TLS Origination": the workload speaks plain HTTP, its sidecar
/// sends it to the egress gateway, and the gateway originates TLS to the external host
/// (DestinationRule `tls.mode: SIMPLE` with `sni` and the host's CA), which verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateway_originates_tls_to_the_external_host() {
    use crate::support::sidecars::{Sidecar, SidecarSpec};
    let ca = TestCa::new("cnn root");
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("cnn-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let external = https_server_with(
        ca.server_config_for("edition.cnn.com", None),
        Bytes::from_static(b"cnn over tls"),
    )
    .await;
    let manifests = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cnn}}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {{number: 80, name: http-port, protocol: HTTP}}
  - {{number: 443, name: https-port-for-tls-origination, protocol: HTTPS, targetPort: {port}}}
  resolution: DNS
  endpoints: [{{address: localhost}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http2, protocol: HTTP}}]
  workloadSelector:
    labels: {{istio: egressgateway}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [edition.cnn.com]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-cnn}}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-cnn-through-egress-gateway}}
spec:
  hosts: [edition.cnn.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match:
    - gateways: [mesh]
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port: {{number: 80}}
      weight: 100
  - match:
    - gateways: [istio-egressgateway]
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port: {{number: 443}}
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-tls-for-edition-cnn-com}}
spec:
  host: edition.cnn.com
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    portLevelSettings:
    - port: {{number: 443}}
      tls:
        mode: SIMPLE
        sni: edition.cnn.com
        caCertificates: {ca}
",
        port = external.port(),
        ca = ca_file.display()
    );
    let m = mesh(&[("egress.yaml", &manifests)]);
    let (gw, _) =
        start_labelled_gateway(&m.cp, "istio-egressgateway", "istio=egressgateway", &[80]);
    let sleep = Sidecar::start(
        &m.cp.address,
        &SidecarSpec {
            name: "sleep",
            labels: &[("app", "sleep")],
            app: None,
            cache: &shared_cache(),
            outbound: "127.0.0.1:0",
        },
    );
    let url = format!("http://{}/politics", sleep.outbound);
    wait_code(&["-H", "Host:edition.cnn.com", &url], "200", &gw).await;
    let out = run("curl", &["-s", "-H", "Host:edition.cnn.com", &url]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cnn over tls");
}

/// Istio's "TCP Traffic Shifting" ingress: a TCP server on the gateway (port 31400, hosts
/// `*`) and a VirtualService's `tcp` route send each connection, as opaque TCP, to tcp-echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_server_sends_connections_to_its_tcp_route() {
    let echo = crate::tcp_proxy::echo_server("tcp-echo-v1");
    let manifests = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-echo}}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9000, name: tcp, protocol: TCP, targetPort: {port}}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: tcp-echo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 31400
      name: tcp
      protocol: TCP
    hosts:
    - \"*\"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - \"*\"
  gateways:
  - tcp-echo-gateway
  tcp:
  - match:
    - port: 31400
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
",
        port = echo.port()
    );
    let m = mesh(&[("tcp-echo.yaml", &manifests)]);
    let (gw, addrs) = start_gateway(&m.cp, "istio-ingressgateway", &[31400]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(got) = crate::support::tcp_exchange(addrs[0], b"world")
            && got == b"tcp-echo-v1:world"
        {
            break;
        }
        assert!(Instant::now() < deadline, "no echo\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
