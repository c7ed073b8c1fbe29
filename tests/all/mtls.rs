//! mTLS on a sidecar's inbound listener, driven by real TLS clients (`openssl s_client`,
//! `curl`): the sidecar presents its SVID, verifies the client's against the mesh's roots,
//! offers ALPN h2 and http/1.1, tells the workload who called (`x-forwarded-client-cert`),
//! and, PERMISSIVE by default as Istio's, still accepts plaintext; PeerAuthentication makes it
//! STRICT (plaintext refused) or, per port, DISABLE.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::ca_client::{CaStream, csr, root_signed_svid};
use crate::support::sidecars::{
    ControlPlane, Process, Sidecar, SidecarSpec, services, shared_cache, write,
};
use crate::support::tls::TestCa;
use crate::support::*;

const REVIEWS: u16 = 9080;
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews";

/// A workload certificate and key for `service_account`, signed by the control plane's CA
/// over a stream of its own (as a sidecar gets its own), written as PEM files in `dir`.
async fn client_svid(address: &str, service_account: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let name = format!("{service_account}-client");
    let mut ca = CaStream::open(address, &name, service_account).await;
    let id = format!("spiffe://cluster.local/ns/default/sa/{service_account}");
    let (key, csr_pem) = csr(&[&id]);
    let answer = ca.ask(csr_pem, 3600, 1).await;
    assert_eq!(answer.error, "");
    let cert = dir.join(format!("{service_account}.pem"));
    let key_path = dir.join(format!("{service_account}.key"));
    std::fs::write(&cert, &answer.cert_chain_pem[0]).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert, key_path)
}

fn run(cmd: &mut Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the client is installed (deploy/setup.sh)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_mtls_with_real_clients_under_permissive_strict_and_disable() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(
        &manifests,
        "services.yaml",
        &services(&[("reviews", REVIEWS)]),
    );
    let data = dir.path().join("data");
    let cp = ControlPlane::start(&manifests, &data, "127.0.0.1:0");
    let root = data.join("ca/root-cert.pem");
    let app = Upstream::echo("reviews-v1").await;
    let cache = shared_cache();
    let spec = SidecarSpec {
        name: "reviews-v1",
        labels: &[("app", "reviews")],
        app: Some((REVIEWS, app.addr)),
        cache: &cache,
        outbound: "127.0.0.1:0",
    };
    let mut cmd = Sidecar::command(&cp.address, &spec);
    cmd.args(["--service-account", "bookinfo-reviews"]);
    let sidecar = Sidecar::ready(Process::spawn("reviews-v1", cmd));
    let inbound = sidecar.inbound.expect("an inbound listener");
    let (cert, key) = client_svid(&cp.address, "bookinfo-productpage", dir.path()).await;
    let https = format!("https://{inbound}/reviews/1");

    // openssl: the chain verifies against the mesh's root, the server is the workload's
    // SPIFFE id, and ALPN picks h2 when offered.
    let out = run(
        Command::new("openssl")
            .args(["s_client", "-connect", &inbound.to_string()])
            .arg("-CAfile")
            .arg(&root)
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .args(["-alpn", "h2,http/1.1", "-verify_return_error", "-showcerts"]),
        b"",
    );
    let t = text(&out);
    assert!(
        t.contains("Verify return code: 0 (ok)"),
        "{t}\nsidecar log:\n{}",
        sidecar.process.log()
    );
    assert!(t.contains("ALPN protocol: h2"), "{t}");
    let pem_start = t.find("-----BEGIN CERTIFICATE-----").unwrap();
    let pem_end = t.find("-----END CERTIFICATE-----").unwrap() + 25;
    let served = dir.path().join("served.pem");
    std::fs::write(&served, &t[pem_start..pem_end]).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&served)
        .output()
        .unwrap();
    assert!(
        text(&out).contains(&format!("URI:{SERVER_ID}")),
        "{}",
        text(&out)
    );

    // curl over HTTP/1.1 and HTTP/2 with the client SVID (`-k`: an SVID names no host; the
    // chain was verified above). The workload learns who called, and a forged header from
    // the client does not survive.
    for http in ["--http1.1", "--http2"] {
        let out = run(
            Command::new("curl")
                .args([
                    "-sS",
                    "-k",
                    http,
                    "-H",
                    "x-forwarded-client-cert: By=forged",
                ])
                .arg("--cert")
                .arg(&cert)
                .arg("--key")
                .arg(&key)
                .args(["-w", "\n%{http_version} %{http_code}", &https]),
            b"",
        );
        let t = text(&out);
        let (body, status) = t.rsplit_once('\n').unwrap();
        let expected = if http == "--http2" {
            "2 200"
        } else {
            "1.1 200"
        };
        assert_eq!(status, expected, "{t}");
        let echo: serde_json::Value = serde_json::from_str(body).unwrap();
        let xfcc = echo["headers"]["x-forwarded-client-cert"].as_str().unwrap();
        assert!(xfcc.starts_with(&format!("By={SERVER_ID};Hash=")), "{xfcc}");
        assert!(
            xfcc.ends_with(&format!(";Subject=\"\";URI={CLIENT_ID}")),
            "{xfcc}"
        );
    }

    // PERMISSIVE: plaintext on the same port is served, with no client identity.
    let out = run(
        Command::new("curl")
            .args(["-sS", "-H", "x-forwarded-client-cert: By=forged"])
            .arg(format!("http://{inbound}/reviews/1")),
        b"",
    );
    let echo: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echo["server"], "reviews-v1");
    assert!(
        echo["headers"].get("x-forwarded-client-cert").is_none(),
        "{echo}"
    );

    // The workload's plugins see who called: a filter built with the published proxy-wasm
    // crate, selected by a WasmPlugin, reads Istio's attributes into response headers.
    write(
        &manifests,
        "props.yaml",
        &format!(
            "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: props}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  url: {}
",
            wasmesh_artifacts::PROPERTIES
        ),
    );
    let headers = |mtls: bool| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-k", "-o", "/dev/null", "-D", "-"]);
        if mtls {
            cmd.arg("--cert")
                .arg(&cert)
                .arg("--key")
                .arg(&key)
                .arg(&https);
        } else {
            cmd.arg(format!("http://{inbound}/reviews/1"));
        }
        text(&run(&mut cmd, b"")).to_ascii_lowercase()
    };
    eventually("the plugin runs", Duration::from_secs(20), || {
        let found = headers(true).contains("x-prop-mtls");
        async move { found }
    })
    .await;
    let seen = headers(true);
    for want in [
        format!("x-prop-principal: {CLIENT_ID}"),
        format!("x-prop-peer-san: {CLIENT_ID}"),
        "x-prop-namespace: default".into(),
        "x-prop-mtls: true".into(),
    ] {
        assert!(seen.contains(&want), "{want} not in\n{seen}");
    }
    let seen = headers(false);
    for want in [
        "x-prop-principal: <none>",
        "x-prop-namespace: <none>",
        "x-prop-mtls: false",
    ] {
        assert!(seen.contains(want), "{want} not in\n{seen}");
    }

    // No client certificate, or one from a CA outside the mesh: refused.
    let out = run(Command::new("curl").args(["-sS", "-k", &https]), b"");
    assert!(!out.status.success(), "{}", text(&out));
    let foreign = TestCa::new("not the mesh");
    let (fcert, fkey) = foreign.leaf_files(dir.path(), "foreign", CLIENT_ID);
    let out = run(
        Command::new("curl")
            .args(["-sS", "-k", "--cert"])
            .arg(&fcert)
            .arg("--key")
            .arg(&fkey)
            .arg(&https),
        b"",
    );
    assert!(!out.status.success(), "{}", text(&out));

    // A certificate from the mesh's own CA, for the same identity, that has expired: refused.
    let (ecert, ekey) = root_signed_svid(&data.join("ca"), CLIENT_ID, dir.path(), true);
    let out = run(
        Command::new("curl")
            .args(["-sS", "-k", "--cert"])
            .arg(&ecert)
            .arg("--key")
            .arg(&ekey)
            .arg(&https),
        b"",
    );
    assert!(!out.status.success(), "{}", text(&out));
    // The same certificate, made alike but within its validity, is accepted: the dates were
    // the reason.
    let (vcert, vkey) = root_signed_svid(&data.join("ca"), CLIENT_ID, dir.path(), false);
    let out = run(
        Command::new("curl")
            .args([
                "-sS",
                "-k",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cert",
            ])
            .arg(&vcert)
            .arg("--key")
            .arg(&vkey)
            .arg(&https),
        b"",
    );
    assert_eq!(text(&out), "200");

    // Garbage after a TLS record header, and a handshake that stalls: the connection is
    // closed or held, and the worker goes on serving everyone else.
    let mut garbage = tokio::net::TcpStream::connect(inbound).await.unwrap();
    garbage
        .write_all(b"\x16\x03\x01\x00\x05hello, not a ClientHello")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut buf))
        .await
        .expect("a bad ClientHello closes the connection")
        .ok();
    let _stalled = {
        let mut s = tokio::net::TcpStream::connect(inbound).await.unwrap();
        s.write_all(b"\x16\x03\x01").await.unwrap();
        s
    };
    let out = run(
        Command::new("curl")
            .args(["-sS", "-k", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg(&https),
        b"",
    );
    assert_eq!(text(&out), "200");

    // STRICT for the namespace: plaintext is refused, mTLS still served.
    let plaintext = || {
        let out = run(
            Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://{inbound}/reviews/1")),
            b"",
        );
        text(&out)
    };
    let mtls = || {
        let out = run(
            Command::new("curl")
                .args(["-sS", "-k", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg("--cert")
                .arg(&cert)
                .arg("--key")
                .arg(&key)
                .arg(&https),
            b"",
        );
        text(&out)
    };
    write(
        &manifests,
        "peer-auth.yaml",
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
",
    );
    eventually(
        "plaintext refused under STRICT",
        Duration::from_secs(10),
        || async { !plaintext().ends_with("200") },
    )
    .await;
    assert_eq!(mtls(), "200");

    // The workload's own policy turns mTLS off on its port: plaintext again, TLS not spoken.
    write(
        &manifests,
        "reviews-peer-auth.yaml",
        &format!(
            "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: reviews, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  portLevelMtls:
    {REVIEWS}: {{mode: DISABLE}}
"
        ),
    );
    eventually(
        "plaintext served with DISABLE",
        Duration::from_secs(10),
        || async { plaintext() == "200" },
    )
    .await;
    assert_ne!(mtls(), "200");
    let log = sidecar.process.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// A request from one workload to another through both sidecars: the client's sidecar
/// originates mTLS on its own (Istio's auto mTLS), so a STRICT server takes it, and the
/// server's workload sees the client's SPIFFE id. gRPC-style HTTP/2 survives the hop (ALPN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_to_sidecar_traffic_is_mutual_tls_without_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let services = services(&[("reviews", REVIEWS)])
        + &services(&[("ratings", 9081)])
            .replace("name: http, protocol: HTTP", "name: grpc, protocol: GRPC");
    write(&manifests, "services.yaml", &services);
    write(
        &manifests,
        "strict.yaml",
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
",
    );
    let cp = ControlPlane::start(&manifests, &dir.path().join("data"), "127.0.0.1:0");
    let cache = shared_cache();
    let reviews_app = Upstream::echo("reviews-v1").await;
    let ratings_app = Upstream::echo("ratings-v1").await;
    let start = |name: &'static str, app: &'static str, sa: &str, port, addr| {
        let spec = SidecarSpec {
            name,
            labels: &[],
            app: Some((port, addr)),
            cache: &cache,
            outbound: "127.0.0.1:0",
        };
        let mut cmd = Sidecar::command(&cp.address, &spec);
        cmd.args(["--service-account", sa, "--label", &format!("app={app}")]);
        Sidecar::ready(Process::spawn(name, cmd))
    };
    let reviews = start(
        "reviews-v1",
        "reviews",
        "bookinfo-reviews",
        REVIEWS,
        reviews_app.addr,
    );
    let _ratings = start(
        "ratings-v1",
        "ratings",
        "bookinfo-ratings",
        9081,
        ratings_app.addr,
    );
    let spec = SidecarSpec {
        name: "productpage-v1",
        labels: &[("app", "productpage")],
        app: None,
        cache: &cache,
        outbound: "127.0.0.1:0",
    };
    let mut cmd = Sidecar::command(&cp.address, &spec);
    cmd.args(["--service-account", "bookinfo-productpage"]);
    let productpage = Sidecar::ready(Process::spawn("productpage-v1", cmd));

    // Over HTTP/1.1 and HTTP/2 (the GRPC port): the workloads see who called, as mTLS
    // told their sidecars; the client sent plaintext to its own sidecar.
    for (host, server, http2) in [
        ("reviews", "reviews-v1", false),
        ("ratings", "ratings-v1", true),
    ] {
        let mut reply = None;
        eventually(
            &format!("{host} answers through both sidecars"),
            Duration::from_secs(20),
            || {
                let mut cmd = Command::new("curl");
                cmd.args(["-sS", "-H", &format!("host: {host}")]);
                if http2 {
                    cmd.arg("--http2-prior-knowledge");
                }
                cmd.arg(format!("http://{}/reviews/1", productpage.outbound));
                let out = run(&mut cmd, b"");
                let ok = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .ok()
                    .filter(|v| v["server"] == server);
                let found = ok.is_some();
                if found {
                    reply = ok;
                }
                async move { found }
            },
        )
        .await;
        let echo = reply.unwrap();
        let xfcc = echo["headers"]["x-forwarded-client-cert"]
            .as_str()
            .unwrap_or_default();
        let server_id = format!("spiffe://cluster.local/ns/default/sa/bookinfo-{host}");
        assert!(xfcc.starts_with(&format!("By={server_id};")), "{echo}");
        assert!(xfcc.ends_with(&format!("URI={CLIENT_ID}")), "{echo}");
        if http2 {
            assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
        }
    }

    // The workload itself, plaintext to the STRICT port: refused.
    let out = run(
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{}/", reviews.inbound.unwrap())),
        b"",
    );
    assert_ne!(text(&out), "200");

    // A DestinationRule that turns TLS off toward reviews: its STRICT sidecar refuses the
    // plaintext, and the client gets Envoy's 503 (as in Istio).
    write(
        &manifests,
        "reviews-dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    tls: {mode: DISABLE}
",
    );
    let status = || {
        let out = run(
            Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-H",
                    "host: reviews",
                ])
                .arg(format!("http://{}/reviews/1", productpage.outbound)),
            b"",
        );
        text(&out)
    };
    eventually(
        "plaintext to a STRICT sidecar fails",
        Duration::from_secs(10),
        || async { status() == "503" },
    )
    .await;
}

/// Certificates that live three seconds, rotated over and over on both sides while a client
/// keeps sending, each request on a new mTLS connection (maxRequestsPerConnection: 1): not
/// one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(
        &manifests,
        "services.yaml",
        &services(&[("reviews", REVIEWS)]),
    );
    write(
        &manifests,
        "policy.yaml",
        STRICT_AND_A_CONNECTION_PER_REQUEST,
    );
    let cp = ControlPlane::start(&manifests, &dir.path().join("data"), "127.0.0.1:0");
    let cache = shared_cache();
    let app = Upstream::echo("reviews-v1").await;
    let start = |name, app, sa| short_lived_sidecar(&cp.address, &cache, name, app, sa, "3s");
    let reviews = start("reviews-v1", Some((REVIEWS, app.addr)), "bookinfo-reviews");
    let productpage = start("productpage-v1", None, "bookinfo-productpage");
    let installed = |s: &Sidecar| {
        s.process
            .log()
            .matches("workload certificate installed")
            .count()
    };
    eventually("reviews answers", Duration::from_secs(20), || async {
        call_host(productpage.outbound, "reviews").await == Some(200)
    })
    .await;

    let (before_server, before_client) = (installed(&reviews), installed(&productpage));
    let mut sent = 0u32;
    let mut failed = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while installed(&reviews) < before_server + 4 || installed(&productpage) < before_client + 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "too few rotations in 60 s; reviews log:\n{}",
            reviews.process.log()
        );
        let status = call_host(productpage.outbound, "reviews").await;
        sent += 1;
        if status != Some(200) {
            failed.push(status);
        }
    }
    assert!(sent > 100, "only {sent} requests");
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    assert!(app.hits() as u32 >= sent);
}

/// A STRICT mesh where each request to reviews opens a new connection, so a new mTLS
/// handshake with the certificates of the moment.
const STRICT_AND_A_CONNECTION_PER_REQUEST: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    connectionPool:
      http: {maxRequestsPerConnection: 1}
";

/// A sidecar labelled `app: <name without -v1>`, running as `service_account`, asking for
/// certificates that live `ttl`.
fn short_lived_sidecar(
    control_plane: &str,
    cache: &Path,
    name: &'static str,
    app: Option<(u16, std::net::SocketAddr)>,
    service_account: &str,
    ttl: &str,
) -> Sidecar {
    let spec = SidecarSpec {
        name,
        labels: &[("app", name.trim_end_matches("-v1"))],
        app,
        cache,
        outbound: "127.0.0.1:0",
    };
    let mut cmd = Sidecar::command(control_plane, &spec);
    cmd.args(["--service-account", service_account, "--cert-ttl", ttl]);
    Sidecar::ready(Process::spawn(name, cmd))
}

/// The status of a GET through `outbound` to `host`, or none if it did not complete.
async fn call_host(outbound: std::net::SocketAddr, host: &str) -> Option<u16> {
    let req = http::Request::get(format!("http://{outbound}/reviews/1"))
        .header("host", host)
        .body(empty())
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), h1_client().request(req))
        .await
        .ok()?
        .ok()?;
    Some(reply.status().as_u16())
}

/// An operator's root, as Istio's plugged-in CA: its certificate and key, PEM.
fn operator_root(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Istio's root rotation with the plugged-in CA, while requests flow over mTLS: both roots
/// trusted, then the new one signing, then the old one gone. Proxies follow each step (the
/// bundle pushed; a certificate under a root no longer trusted replaced at once) and not one
/// request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_rotates_with_an_overlap_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(
        &manifests,
        "services.yaml",
        &services(&[("reviews", REVIEWS)]),
    );
    write(
        &manifests,
        "policy.yaml",
        STRICT_AND_A_CONNECTION_PER_REQUEST,
    );
    let cacerts = dir.path().join("cacerts");
    std::fs::create_dir(&cacerts).unwrap();
    let (old_cert, old_key) = operator_root("old root");
    let (new_cert, new_key) = operator_root("new root");
    let sign_with = |cert: &str, key: &str| {
        write(&cacerts, "ca-key.pem", key);
        write(&cacerts, "ca-cert.pem", cert);
        write(&cacerts, "cert-chain.pem", cert);
    };
    sign_with(&old_cert, &old_key);
    write(&cacerts, "root-cert.pem", &old_cert);

    let mut cmd = Command::new(crate::support::sidecars::controlplane_bin());
    cmd.arg("--manifests")
        .arg(&manifests)
        .arg("--plugins")
        .arg(crate::support::sidecars::plugins_dir())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--cacerts")
        .arg(&cacerts)
        .args(["--address", "127.0.0.1:0"]);
    let cp = Process::spawn("controlplane", cmd);
    let line = cp.wait_for_line("control plane listening", Duration::from_secs(30));
    let address = crate::support::sidecars::field(&line, "address");

    let cache = shared_cache();
    let app = Upstream::echo("reviews-v1").await;
    let start = |name, app, sa| short_lived_sidecar(&address, &cache, name, app, sa, "4s");
    let reviews = start("reviews-v1", Some((REVIEWS, app.addr)), "bookinfo-reviews");
    let productpage = start("productpage-v1", None, "bookinfo-productpage");
    eventually("reviews answers", Duration::from_secs(20), || async {
        call_host(productpage.outbound, "reviews").await == Some(200)
    })
    .await;

    // Requests all along, each on a new mTLS connection.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (stop, outbound) = (stop.clone(), productpage.outbound);
        async move {
            let (mut sent, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = call_host(outbound, "reviews").await;
                sent += 1;
                if status != Some(200) {
                    failed.push(status);
                }
            }
            (sent, failed)
        }
    });
    let count = |s: &Sidecar, needle: &str| s.process.log().matches(needle).count();
    let both = |needle: &'static str, at_least: [usize; 2]| {
        let (reviews, productpage) = (&reviews, &productpage);
        async move {
            eventually(needle, Duration::from_secs(30), || async {
                count(reviews, needle) >= at_least[0] && count(productpage, needle) >= at_least[1]
            })
            .await
        }
    };

    // 1. Both roots trusted; the old one still signs.
    write(&cacerts, "root-cert.pem", &(old_cert.clone() + &new_cert));
    both("roots=2", [1, 1]).await;
    // 2. The new root signs; certificates move to it as they renew (the old still trusted).
    let reloads = cp.log().matches("CA reloaded").count();
    sign_with(&new_cert, &new_key);
    eventually("the new root signs", Duration::from_secs(10), || async {
        cp.log().matches("CA reloaded roots=2").count() > reloads
    })
    .await;
    let installed = "workload certificate installed";
    let at = [count(&reviews, installed), count(&productpage, installed)];
    both(installed, [at[0] + 3, at[1] + 3]).await;
    // 3. The old root goes: only the new one trusted.
    let ones = [count(&reviews, "roots=1"), count(&productpage, "roots=1")];
    write(&cacerts, "root-cert.pem", &new_cert);
    both("roots=1", [ones[0] + 1, ones[1] + 1]).await;
    let at = [count(&reviews, installed), count(&productpage, installed)];
    both(installed, [at[0] + 2, at[1] + 2]).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = load.await.unwrap();
    assert!(sent > 100, "only {sent} requests");
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
}
