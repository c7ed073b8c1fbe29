//! A gateway's downstream TLS (Istio's Gateway `tls.mode` SIMPLE, MUTUAL, PASSTHROUGH and
//! `httpsRedirect`), driven by real clients (`curl`, `openssl s_client`, hyper over
//! tokio-rustls): certificates picked by SNI, ALPN h2, client certificates and their SANs,
//! TLS passed through by SNI to backends whose own certificates the client sees, `require_tls`
//! redirects, certificates changed by reload and on disk, and bad input at the edge.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use wasmesh_proxy::Proxy;
use wasmesh_proxy::config::Bootstrap;

use crate::support::tls::{TestCa, https_server_with};
use crate::support::*;

/// What curl got: the status (0 when the connection failed), the HTTP version and the body.
struct Curled {
    status: u16,
    version: String,
    body: String,
    stderr: String,
}

/// `curl https://<host>:<port><path>` with `host` resolved to 127.0.0.1.
async fn curl(host: &str, port: u16, path: &str, args: &[&str]) -> Curled {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let mut all = vec![
        "-sS",
        "--max-time",
        "10",
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    all.extend_from_slice(args);
    all.push(&url);
    let out = run("curl", &all).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (status, version) = last.split_once(' ').unwrap_or(("0", ""));
    Curled {
        status: status.parse().unwrap_or(0),
        version: version.to_owned(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `openssl s_client` to 127.0.0.1:`port` (SNI `server_name`, or none), offering h2 and
/// http/1.1; its whole output, spaces removed (`subject=CN=...`, `ALPNprotocol:h2`).
async fn s_client(port: u16, server_name: Option<&str>, extra: &[&str]) -> String {
    let connect = format!("127.0.0.1:{port}");
    let mut args = vec!["s_client", "-connect", &connect, "-alpn", "h2,http/1.1"];
    match server_name {
        Some(name) => args.extend(["-servername", name]),
        None => args.push("-noservername"),
    }
    args.extend_from_slice(extra);
    let out = run("openssl", &args).await;
    (String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
        .replace(' ', "")
}

/// The common name of the certificate the listener presents for `server_name`, if any.
async fn presented(port: u16, server_name: Option<&str>) -> Option<String> {
    let out = s_client(port, server_name, &[]).await;
    let line = out.lines().find_map(|l| l.strip_prefix("subject=CN="))?;
    Some(line.to_owned())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A listener entry's `tls` for `mode` with `(server_names, cert file, key file)` entries.
fn tls_block(mode: &str, certs: &[(&str, &str, &str)], extra: &str) -> String {
    let mut out = format!("  tls:\n    mode: {mode}\n    certificates:\n");
    for (names, cert, key) in certs {
        out += &format!(
            "    - server_names: [{names}]\n      certificate_chain: {{filename: \"{cert}\"}}\n      private_key: {{filename: \"{key}\"}}\n"
        );
    }
    out + extra
}

const ROUTE_ALL: &str = "  virtual_hosts:
  - name: all
    domains: [\"*\"]
    routes: [{match: {prefix: /}, cluster: backend}]
";

async fn admin_metric(proxy: &Proxy, name: &str, listener: &str) -> f64 {
    metric(proxy, &format!("{name}_total{{listener=\"{listener}\"}}"))
        .await
        .or(metric(proxy, &format!("{name}{{listener=\"{listener}\"}}")).await)
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_picks_the_certificate_by_sni_and_serves_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("gateway CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    ca.server_files(dir.path(), "a", &["a.example.com"]);
    ca.server_files(dir.path(), "wild", &["*.wild.example.com"]);
    let (default_cert, default_key) =
        ca.server_files(dir.path(), "default", &["default.example.com"]);
    let echo = Upstream::echo("backend").await;
    // The default certificate inline, the others from files relative to the bootstrap's folder.
    let inline = |path: &Path| {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| format!("          {l}\n"))
            .collect::<String>()
    };
    let yaml = format!(
        "workers: 2
admin: {{address: \"127.0.0.1:0\"}}
listeners:
- name: gw
  address: \"127.0.0.1:0\"
{}    - certificate_chain:
        inline_string: |
{}      private_key:
        inline_string: |
{}{ROUTE_ALL}clusters:
- name: backend
  endpoints: [\"{}\"]
",
        tls_block(
            "simple",
            &[
                ("a.example.com", "a.pem", "a.key"),
                ("\"*.wild.example.com\"", "wild.pem", "wild.key"),
            ],
            ""
        ),
        inline(&default_cert),
        inline(&default_key),
        echo.addr
    );
    let config = dir.path().join("bootstrap.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let proxy = Proxy::start_from_file(&config).unwrap();
    let port = proxy.listener_addr("gw").unwrap().port();

    // HTTP/1.1 over TLS: the upstream hears x-forwarded-proto https, and no client's XFCC.
    let got = curl(
        "a.example.com",
        port,
        "/hello",
        &[
            "--cacert",
            &ca_file,
            "--http1.1",
            "-H",
            "x-forwarded-proto: http",
            "-H",
            "x-forwarded-client-cert: forged",
        ],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.stderr);
    assert_eq!(got.version, "1.1");
    let json: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(json["headers"]["x-forwarded-proto"], "https", "{json}");
    assert!(json["headers"].get("x-forwarded-client-cert").is_none());
    // ALPN h2: served as HTTP/2.
    let got = curl(
        "x.wild.example.com",
        port,
        "/",
        &["--cacert", &ca_file, "--http2"],
    )
    .await;
    assert_eq!(
        (got.status, got.version.as_str()),
        (200, "2"),
        "{}",
        got.stderr
    );

    // The certificate each SNI gets: exact (any case), wildcard at any depth, the default for
    // other names and for none.
    assert_eq!(
        presented(port, Some("a.example.com")).await.as_deref(),
        Some("a")
    );
    assert_eq!(
        presented(port, Some("A.Example.COM")).await.as_deref(),
        Some("a")
    );
    assert_eq!(
        presented(port, Some("b.c.wild.example.com"))
            .await
            .as_deref(),
        Some("wild")
    );
    assert_eq!(
        presented(port, Some("other.example.com")).await.as_deref(),
        Some("default")
    );
    assert_eq!(presented(port, None).await.as_deref(), Some("default"));
    let out = s_client(port, Some("a.example.com"), &[]).await;
    assert!(out.contains("ALPNprotocol:h2"), "{out}");
    // TLS 1.2 too.
    let out = s_client(port, Some("a.example.com"), &["-tls1_2"]).await;
    assert!(
        out.contains("Protocol:TLSv1.2") && out.contains("subject=CN=a"),
        "{out}"
    );
    assert!(admin_metric(&proxy, "wasmesh_downstream_tls_handshake", "gw").await >= 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_at_the_edge_is_refused_and_the_listener_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("gateway CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let (cert, key) = ca.server_files(dir.path(), "a", &["a.example.com"]);
    let echo = Upstream::echo("backend").await;
    let yaml = format!(
        "workers: 1
admin: {{address: \"127.0.0.1:0\"}}
listeners:
- name: gw
  address: \"127.0.0.1:0\"
  http: {{request_headers_timeout: 1s}}
{}{ROUTE_ALL}clusters:
- name: backend
  endpoints: [\"{}\"]
",
        tls_block(
            "simple",
            &[(
                "a.example.com",
                &cert.display().to_string(),
                &key.display().to_string()
            )],
            ""
        ),
        echo.addr
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("gw").unwrap();

    // An unknown SNI and no default certificate: an alert, no certificate.
    let out = s_client(addr.port(), Some("unknown.example.com"), &[]).await;
    assert!(!out.contains("subject="), "{out}");
    assert!(out.contains("alert"), "{out}");
    // Plaintext HTTP: nginx's 400, then closed.
    let answer = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with("The plain HTTP request was sent to HTTPS port\n"),
        "{answer}"
    );
    // A client that stalls, before or inside its ClientHello, is closed at the handshake
    // timeout (here the 1 s request_headers_timeout).
    for sent in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let started = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "not closed");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{took:?}"
        );
    }
    // More than 16 KiB without a whole ClientHello: closed.
    let mut big = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    big.resize(20 * 1024, 0);
    let answer = raw_exchange(addr, &big, Duration::from_secs(5)).await;
    assert!(!answer.starts_with("HTTP"), "{answer}");

    // Counted, and other clients are served as before.
    assert!(admin_metric(&proxy, "wasmesh_downstream_tls_error", "gw").await >= 4.0);
    assert_eq!(
        admin_metric(&proxy, "wasmesh_downstream_tls_plaintext_refused", "gw").await,
        1.0
    );
    let got = curl("a.example.com", addr.port(), "/", &["--cacert", &ca_file]).await;
    assert_eq!(got.status, 200, "{}", got.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_wants_a_client_certificate_from_its_cas_with_an_allowed_san() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("gateway CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let (cert, key) = ca.server_files(dir.path(), "a", &["a.example.com"]);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let clients = TestCa::new("client CA");
    let clients_file = write(dir.path(), "clients.pem", &clients.pem());
    let allowed = "spiffe://example/allowed";
    let pem = |(c, k): (std::path::PathBuf, std::path::PathBuf)| {
        (c.display().to_string(), k.display().to_string())
    };
    let good = pem(clients.leaf_files(dir.path(), "good", allowed));
    let other = pem(clients.leaf_files(dir.path(), "other", "spiffe://example/other"));
    let foreign = pem(TestCa::new("foreign CA").leaf_files(dir.path(), "foreign", allowed));
    let echo = Upstream::echo("backend").await;
    let listener = |name: &str, sans: &str| {
        format!(
            "- name: {name}\n  address: \"127.0.0.1:0\"\n{}{ROUTE_ALL}",
            tls_block(
                "mutual",
                &[("", &cert, &key)],
                &format!("    ca_certificates: {{filename: \"{clients_file}\"}}\n{sans}")
            )
        )
    };
    let yaml = format!(
        "workers: 1
admin: {{address: \"127.0.0.1:0\"}}
listeners:
{}{}clusters:
- name: backend
  endpoints: [\"{}\"]
",
        listener(
            "restricted",
            &format!("    subject_alt_names: [\"{allowed}\"]\n")
        ),
        listener("any", ""),
        echo.addr
    );
    let proxy = start_proxy(&yaml);
    let restricted = proxy.listener_addr("restricted").unwrap().port();
    let any = proxy.listener_addr("any").unwrap().port();
    let with = |c: &(String, String)| -> Vec<String> {
        vec![
            "--cacert".into(),
            ca_file.clone(),
            "--cert".into(),
            c.0.clone(),
            "--key".into(),
            c.1.clone(),
        ]
    };
    let call = |port: u16, args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl("a.example.com", port, "/", &args).await
    };
    let got = call(restricted, with(&good)).await;
    assert_eq!(got.status, 200, "{}", got.stderr);
    // No certificate, one from a foreign CA, one without the allowed SAN: refused.
    let none = call(restricted, vec!["--cacert".into(), ca_file.clone()]).await;
    assert_eq!(none.status, 0, "{}", none.body);
    assert_eq!(call(restricted, with(&foreign)).await.status, 0);
    assert_eq!(call(restricted, with(&other)).await.status, 0);
    assert_eq!(call(any, with(&foreign)).await.status, 0);
    // Without subject_alt_names any certificate from the CAs will do.
    assert_eq!(call(any, with(&other)).await.status, 200);
    assert!(admin_metric(&proxy, "wasmesh_downstream_tls_error", "restricted").await >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_routes_pass_tls_through_and_the_rest_is_terminated() {
    let dir = tempfile::tempdir().unwrap();
    // The backends' CA: the gateway holds none of its certificates.
    let backends = TestCa::new("backend CA");
    let backends_file = write(dir.path(), "backends.pem", &backends.pem());
    let one = https_server_with(
        backends.server_config_for("one.example.com", None),
        Bytes::from_static(b"from one"),
    )
    .await;
    let two = https_server_with(
        backends.server_config_for("two.example.com", None),
        Bytes::from_static(b"from two"),
    )
    .await;
    let ca = TestCa::new("gateway CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let (cert, key) = ca.server_files(dir.path(), "gw", &["gw.example.com"]);
    let echo = Upstream::echo("backend").await;
    let routes = "  sni_routes:
  - {server_names: [one.example.com], cluster: one}
  - {server_names: [\"*.two.example.com\", two.example.com], cluster: two}
";
    let yaml = format!(
        "workers: 2
admin: {{address: \"127.0.0.1:0\"}}
listeners:
- name: passthrough
  address: \"127.0.0.1:0\"
{routes}- name: mixed
  address: \"127.0.0.1:0\"
  sni_routes: [{{server_names: [one.example.com], cluster: one}}]
{}{ROUTE_ALL}clusters:
- name: backend
  endpoints: [\"{}\"]
- name: one
  protocol: tcp
  endpoints: [\"{one}\"]
- name: two
  protocol: tcp
  endpoints: [\"{two}\"]
",
        tls_block(
            "simple",
            &[("", &cert.display().to_string(), &key.display().to_string())],
            ""
        ),
        echo.addr
    );
    let proxy = start_proxy(&yaml);
    let passthrough = proxy.listener_addr("passthrough").unwrap();
    let mixed = proxy.listener_addr("mixed").unwrap().port();
    let trust_backends = ["--cacert", backends_file.as_str()];

    // Each backend's own certificate reaches the client: nothing was terminated.
    for _ in 0..2 {
        let got = curl("one.example.com", passthrough.port(), "/", &trust_backends).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (200, "from one"),
            "{}",
            got.stderr
        );
        let got = curl("two.example.com", passthrough.port(), "/", &trust_backends).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (200, "from two"),
            "{}",
            got.stderr
        );
    }
    // No route and nothing to terminate with: closed; plaintext gets the 400.
    assert_eq!(
        presented(passthrough.port(), Some("three.example.com")).await,
        None
    );
    assert_eq!(presented(passthrough.port(), None).await, None);
    let answer = raw_exchange(
        passthrough,
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );

    // One port, both: a routed SNI passed through, any other terminated here.
    let got = curl("one.example.com", mixed, "/", &trust_backends).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (200, "from one"),
        "{}",
        got.stderr
    );
    let got = curl(
        "gw.example.com",
        mixed,
        "/",
        &["--cacert", &ca_file, "--http2"],
    )
    .await;
    assert_eq!(
        (got.status, got.version.as_str()),
        (200, "2"),
        "{}",
        got.stderr
    );
    let json: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(json["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_redirects_plaintext_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("gateway CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let (cert, key) = ca.server_files(dir.path(), "secure", &["secure.example.com"]);
    let echo = Upstream::echo("backend").await;
    let vhosts = "  virtual_hosts:
  - name: secure
    domains: [secure.example.com]
    require_tls: true
    routes: [{match: {prefix: /}, cluster: backend}]
  - name: rest
    domains: [\"*\"]
    routes: [{match: {prefix: /}, cluster: backend}]
";
    let yaml = format!(
        "workers: 1
listeners:
- name: plain
  address: \"127.0.0.1:0\"
{vhosts}- name: tls
  address: \"127.0.0.1:0\"
{}{vhosts}clusters:
- name: backend
  endpoints: [\"{}\"]
",
        tls_block(
            "simple",
            &[("", &cert.display().to_string(), &key.display().to_string())],
            ""
        ),
        echo.addr
    );
    let proxy = start_proxy(&yaml);
    let plain = proxy.listener_addr("plain").unwrap();
    let request = |host: &str| {
        Request::get(format!("http://{plain}/a/b?q=1"))
            .header("host", host)
            .body(empty())
            .unwrap()
    };
    for (host, location) in [
        ("secure.example.com", "https://secure.example.com/a/b?q=1"),
        (
            "secure.example.com:80",
            "https://secure.example.com/a/b?q=1",
        ),
        (
            "secure.example.com:8080",
            "https://secure.example.com:8080/a/b?q=1",
        ),
    ] {
        let reply = send(&h1_client(), request(host)).await;
        assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY, "{host}");
        assert_eq!(reply.header("location"), Some(location));
        assert_eq!(reply.header("content-length"), Some("0"));
    }
    assert_eq!(echo.hits(), 0);
    // Other virtual hosts take plaintext; over TLS the secure one serves.
    let reply = send(&h1_client(), request("other.example.com")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let port = proxy.listener_addr("tls").unwrap().port();
    let got = curl(
        "secure.example.com",
        port,
        "/a/b?q=1",
        &["--cacert", &ca_file],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.stderr);
}

/// An HTTP/1.1 connection over TLS to `port` as `server_name`, trusting `ca`.
async fn tls_connection(
    port: u16,
    server_name: &str,
    ca: &TestCa,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(server_name.to_owned()).unwrap(), tcp)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn ask(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> StatusCode {
    let req = Request::get("/")
        .header("host", "a.example.com")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_change_by_reload_and_on_disk_for_new_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("gateway CA");
    let names = &["a.example.com"];
    ca.server_files(dir.path(), "gen1", names);
    ca.server_files(dir.path(), "gen2", names);
    let echo = Upstream::echo("backend").await;
    let yaml = |cert: &str, key: &str| {
        format!(
            "workers: 2
listeners:
- name: gw
  address: \"127.0.0.1:0\"
{}{ROUTE_ALL}clusters:
- name: backend
  endpoints: [\"{}\"]
",
            tls_block("simple", &[("", cert, key)], ""),
            echo.addr
        )
    };
    let config = dir.path().join("bootstrap.yaml");
    std::fs::write(&config, yaml("gen1.pem", "gen1.key")).unwrap();
    let proxy = Proxy::start_from_file(&config).unwrap();
    let port = proxy.listener_addr("gw").unwrap().port();
    let mut kept = tls_connection(port, "a.example.com", &ca).await;
    assert_eq!(ask(&mut kept).await, StatusCode::OK);
    assert_eq!(
        presented(port, Some("a.example.com")).await.as_deref(),
        Some("gen1")
    );

    // A reload with a key that is not the certificate's, or a file that is not there, is
    // refused naming the field and the file.
    let from = |text: String| Bootstrap::from_file_text(&config, &text).unwrap();
    let refused = proxy
        .reload(from(yaml("gen2.pem", "gen1.key")))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("listeners[0].tls.certificates[0].private_key")
            && refused.contains("gen1.key"),
        "{refused}"
    );
    let refused = proxy
        .reload(from(yaml("gone.pem", "gen1.key")))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("listeners[0].tls.certificates[0].certificate_chain")
            && refused.contains("gone.pem"),
        "{refused}"
    );
    // A good reload: new handshakes get the new certificate, the open connection goes on.
    proxy.reload(from(yaml("gen2.pem", "gen2.key"))).unwrap();
    assert_eq!(
        presented(port, Some("a.example.com")).await.as_deref(),
        Some("gen2")
    );
    assert_eq!(ask(&mut kept).await, StatusCode::OK);

    // Rotated on disk: picked up without a reload.
    let fresh = tempfile::tempdir().unwrap();
    let rotate = |name: &str, cert: bool, key: bool| {
        let (c, k) = ca.server_files(fresh.path(), name, names);
        if key {
            std::fs::copy(k, dir.path().join("gen2.key")).unwrap();
        }
        if cert {
            std::fs::copy(c, dir.path().join("gen2.pem")).unwrap();
        }
    };
    rotate("gen3", true, true);
    eventually(
        "the rotated certificate is served",
        Duration::from_secs(10),
        || async { presented(port, Some("a.example.com")).await.as_deref() == Some("gen3") },
    )
    .await;
    // A new certificate without its key: the last good pair keeps serving. Files are looked
    // at no more than every 2 s, at a handshake: after 2 s, the next handshakes look.
    rotate("gen4", true, false);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for _ in 0..3 {
        assert_eq!(
            presented(port, Some("a.example.com")).await.as_deref(),
            Some("gen3")
        );
    }
    assert_eq!(ask(&mut kept).await, StatusCode::OK);
    let got = curl(
        "a.example.com",
        port,
        "/",
        &["--cacert", &write(dir.path(), "ca.pem", &ca.pem())],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.stderr);
    // A good pair again: served.
    rotate("gen5", true, true);
    eventually(
        "the next good pair is served",
        Duration::from_secs(10),
        || async { presented(port, Some("a.example.com")).await.as_deref() == Some("gen5") },
    )
    .await;
}

#[test]
fn gateway_tls_configs_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("gateway CA");
    let (a_cert, a_key) = ca.server_files(dir.path(), "a", &["a.example.com"]);
    let (_, b_key) = ca.server_files(dir.path(), "b", &["b.example.com"]);
    let (a_cert, a_key, b_key) = (
        a_cert.display().to_string(),
        a_key.display().to_string(),
        b_key.display().to_string(),
    );
    let config = |listener: &str| {
        format!(
            "listeners:
- name: gw
  address: \"127.0.0.1:0\"
{listener}{ROUTE_ALL}clusters:
- name: backend
  endpoints: [\"127.0.0.1:1\"]
- name: raw
  protocol: tcp
  endpoints: [\"127.0.0.1:1\"]
"
        )
    };
    let refused = |listener: &str| {
        Bootstrap::parse(&config(listener))
            .err()
            .unwrap_or_else(|| panic!("accepted: {listener}"))
            .to_string()
    };
    let cert = [("", a_cert.as_str(), a_key.as_str())];
    for (listener, field) in [
        (
            "  tls: {mode: simple}\n".to_owned(),
            "listeners[0].tls.certificates",
        ),
        (
            tls_block("mutual", &cert, ""),
            "listeners[0].tls.ca_certificates",
        ),
        (
            tls_block("simple", &cert, "    ca_certificates: {filename: ca.pem}\n"),
            "listeners[0].tls.ca_certificates",
        ),
        (
            "  tls:\n    mode: strict\n    subject_alt_names: [x]\n".to_owned(),
            "listeners[0].tls.subject_alt_names",
        ),
        (
            tls_block("simple", &[("\"a..example.com\"", &a_cert, &a_key)], ""),
            "listeners[0].tls.certificates[0].server_names[0]",
        ),
        (
            "  sni_routes: [{server_names: [a.example.com], cluster: backend}]\n".to_owned(),
            "listeners[0].sni_routes[0].cluster",
        ),
        (
            "  sni_routes: [{server_names: [a.example.com], cluster: nope}]\n".to_owned(),
            "listeners[0].sni_routes[0].cluster",
        ),
        (
            "  sni_routes: [{server_names: [\"*\"], cluster: raw}]\n".to_owned(),
            "listeners[0].sni_routes[0].server_names[0]",
        ),
    ] {
        let error = refused(&listener);
        assert!(error.contains(&format!("`{field}`")), "{field}: {error}");
    }
    // Files are read when the config is compiled: a key of another certificate is refused.
    let mismatched = tls_block(
        "simple",
        &[("a.example.com", &a_cert, &a_key), ("", &a_cert, &b_key)],
        "",
    );
    let bootstrap = Bootstrap::parse(&config(&mismatched)).unwrap();
    let error = wasmesh_proxy::check(&bootstrap, None)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("listeners[0].tls.certificates[1].private_key") && error.contains("b.key"),
        "{error}"
    );
    assert!(Proxy::start(bootstrap).is_err());
}
