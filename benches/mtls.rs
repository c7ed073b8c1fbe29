//! The mTLS benchmark (issue 12): a hop between two proxies, plaintext and TLS, wasmesh against
//! nginx, in one run with the same load tool. One upstream (nginx answering `200 hello world`)
//! behind a "server-side" proxy, reached through a "client-side" proxy:
//!
//! - wasmesh: two sidecars of a real control plane (release builds). The client's sidecar
//!   originates mTLS with its SVID (auto mTLS), the server's terminates it; one worker each.
//!   The hosts `echo-plain` (DestinationRule `tls: DISABLE`), `echo-mtls` and `echo-new`
//!   (`maxRequestsPerConnection: 1`: a new mTLS connection, so a handshake, per request) all
//!   reach the same sidecar.
//! - nginx: two single-process nginx, the client side with `proxy_ssl` (client certificate,
//!   server verified, session reuse on) and upstream keep-alive, the server side with an
//!   `ssl` listener that verifies the client's certificate; the same shapes: plaintext, TLS
//!   kept alive, TLS without keep-alive. Certificates are ECDSA P-256 as SVIDs are; TLS 1.3.
//!
//! It prints, for each: throughput and CPU per request of the two proxies together (wrk,
//! keep-alive to the client side), p50/p99 at a fixed rate (oha, corrected), new handshakes
//! per second per core, and how much a flood of handshakes slows the kept-alive requests a
//! worker also serves (p99 at a fixed rate beside a flood of new TLS connections, compared
//! with beside a flood of new plaintext connections).
//!
//! ```sh
//! cargo bench -p wasmesh-benches --bench mtls   # or deploy/bench.sh mtls, which installs oha
//! ```
//!
//! Settings (environment): `MTLS_SECONDS` per run (10), `MTLS_ROUNDS` (3, median kept),
//! `MTLS_CONNECTIONS` (32), `MTLS_RATE` for the fixed-rate runs (2000 req/s), `MTLS_ONLY`
//! (only the targets whose name contains it, to profile one).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wasmesh_benches::load::{self, LoadRequest, Measurement, us, with_cpu};
use wasmesh_benches::peers;
use wasmesh_benches::{build_release, free_addr, start_controlplane, wait_for_port};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const PLAIN: LoadRequest = LoadRequest {
    path: "/",
    headers: &["Host: echo-plain"],
};
const MTLS: LoadRequest = LoadRequest {
    path: "/",
    headers: &["Host: echo-mtls"],
};
const NEW: LoadRequest = LoadRequest {
    path: "/",
    headers: &["Host: echo-new"],
};
const NGINX: LoadRequest = LoadRequest::ROOT;

/// Processes killed on drop.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn main() -> anyhow::Result<()> {
    let seconds = Duration::from_secs(env("MTLS_SECONDS", 10));
    let rounds = env("MTLS_ROUNDS", 3).max(1) as usize;
    let connections = env("MTLS_CONNECTIONS", 32) as u32;
    let rate = env("MTLS_RATE", 2000) as u32;

    let proxy = build_release("wasmesh-proxy")?;
    let controlplane = build_release("wasmesh-controlplane")?;
    let dir = tempfile::tempdir()?;
    let upstream = peers::nginx_upstream(dir.path(), free_addr()?)?;

    // nginx: the server side (plaintext and TLS ports), then the client side.
    let tls = TlsFiles::write(dir.path())?;
    let (b_plain, b_tls) = (free_addr()?, free_addr()?);
    let nginx_b = peers::nginx_with(
        dir.path(),
        "server-side",
        b_plain,
        &format!(
            "server {{ listen {b_plain}; location / {{ proxy_pass http://u; \
             proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n  \
             server {{ listen {b_tls} ssl; ssl_protocols TLSv1.3; \
             ssl_certificate {sc}; ssl_certificate_key {sk}; \
             ssl_verify_client on; ssl_client_certificate {ca}; \
             location / {{ proxy_pass http://u; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; }} }}",
            sc = tls.server_cert,
            sk = tls.server_key,
            ca = tls.ca,
        ),
        &format!(
            "upstream u {{ server {}; keepalive 64; keepalive_requests 1000000; }}",
            upstream.addr
        ),
    )?;
    wait_for_port(b_tls)?;
    let (a_plain, a_tls, a_new) = (free_addr()?, free_addr()?, free_addr()?);
    let ssl = format!(
        "proxy_ssl_certificate {cc}; proxy_ssl_certificate_key {ck}; \
         proxy_ssl_trusted_certificate {ca}; proxy_ssl_verify on; proxy_ssl_name echo.mesh; \
         proxy_ssl_server_name on; proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;",
        cc = tls.client_cert,
        ck = tls.client_key,
        ca = tls.ca,
    );
    let location = |backend: &str, scheme: &str, ssl: &str| {
        format!(
            "location / {{ proxy_pass {scheme}://{backend}; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; {ssl} }}"
        )
    };
    let nginx_a = peers::nginx_with(
        dir.path(),
        "client-side",
        a_plain,
        &format!(
            "server {{ listen {a_plain}; {} }}\n  server {{ listen {a_tls}; {} }}\n  \
             server {{ listen {a_new}; {} }}",
            location("b_plain", "http", ""),
            location("b_tls", "https", &ssl),
            location("b_new", "https", &ssl),
        ),
        &format!(
            "upstream b_plain {{ server {b_plain}; keepalive 64; keepalive_requests 1000000; }}\n  \
             upstream b_tls {{ server {b_tls}; keepalive 64; keepalive_requests 1000000; }}\n  \
             upstream b_new {{ server {b_tls}; }}"
        ),
    )?;
    wait_for_port(a_tls)?;
    wait_for_port(a_new)?;

    // wasmesh: a control plane and two sidecars.
    let mesh = Mesh::start(&proxy, &controlplane, dir.path(), upstream.addr)?;

    println!(
        "mTLS benchmark: wrk -t1 -c{connections} -d{}s, {rounds} round(s) (median kept); \
         oha at {rate} req/s; one worker per proxy; upstream nginx `return 200`",
        seconds.as_secs()
    );
    let nginx_pids = [nginx_a.pid(), nginx_b.pid()];
    let mesh_pids = [mesh.client_pid(), mesh.server_pid()];
    let targets: [(&str, SocketAddr, &LoadRequest, [u32; 2]); 6] = [
        ("nginx plaintext", a_plain, &NGINX, nginx_pids),
        ("nginx TLS", a_tls, &NGINX, nginx_pids),
        ("nginx TLS, new conn", a_new, &NGINX, nginx_pids),
        ("wasmesh plaintext", mesh.outbound, &PLAIN, mesh_pids),
        ("wasmesh mTLS", mesh.outbound, &MTLS, mesh_pids),
        ("wasmesh mTLS, new conn", mesh.outbound, &NEW, mesh_pids),
    ];
    // MTLS_ONLY=<text>: only the targets whose name contains it (to profile one).
    let only = std::env::var("MTLS_ONLY").unwrap_or_default();
    let targets: Vec<_> = targets
        .into_iter()
        .filter(|t| t.0.contains(only.as_str()))
        .collect();
    for (_, addr, req, _) in &targets {
        load::wrk(*addr, req, connections, Duration::from_secs(1), None)?;
    }
    let mut runs: Vec<Vec<Measurement>> = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for (i, (name, addr, req, pids)) in targets.iter().enumerate() {
            let m = with_cpu(pids, || load::wrk(*addr, req, connections, seconds, None))?;
            if m.errors * 1000 > m.requests {
                let log = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap_or_default();
                anyhow::bail!(
                    "{name}: {} of {} requests failed\nnginx client side:\n{}\nnginx server side:\n{}",
                    m.errors,
                    m.requests,
                    log("client-side.err"),
                    log("server-side.err")
                );
            }
            runs[i].push(m);
        }
    }
    let results: Vec<Measurement> = runs.into_iter().map(load::median).collect();
    println!();
    println!(
        "| target | req/s | vs nginx (same shape) | CPU per request, both proxies | handshakes/s per core |"
    );
    println!("|---|---|---|---|---|");
    // The nginx target of the same shape, when it ran (MTLS_ONLY may leave it out).
    let nginx_of = |name: &str| -> Option<&Measurement> {
        let shape = name
            .trim_start_matches("wasmesh ")
            .trim_start_matches("nginx ")
            .replacen("mTLS", "TLS", 1);
        let nginx = format!("nginx {shape}");
        targets
            .iter()
            .position(|t| t.0 == nginx)
            .map(|j| &results[j])
    };
    for ((name, ..), m) in targets.iter().zip(&results) {
        let ratio = nginx_of(name).map_or("-".to_owned(), |peer| {
            format!("{:.2}", m.requests_per_sec / peer.requests_per_sec)
        });
        let cpu = m.cpu_per_request.unwrap_or_default();
        let per_core = if name.ends_with("new conn") && !cpu.is_zero() {
            format!("{:.0}", 1.0 / cpu.as_secs_f64())
        } else {
            "-".into()
        };
        println!(
            "| {name} | {:.0} | {ratio} | {:.1} µs | {per_core} |",
            m.requests_per_sec,
            cpu.as_secs_f64() * 1e6,
        );
    }

    if !only.is_empty() {
        return Ok(());
    }

    // Latency at a fixed rate, kept-alive connections.
    println!();
    println!("| target (fixed {rate} req/s, oha corrected) | p50 | p99 |");
    println!("|---|---|---|");
    let mut fixed = Vec::new();
    for (name, addr, req, _) in targets.iter().filter(|t| !t.0.ends_with("new conn")) {
        let m = load::oha_fixed_rate(*addr, req, 16, rate, seconds)?;
        println!("| {name} | {} | {} |", us(m.p50), us(m.p99));
        fixed.push((*name, m));
    }
    let p50 = |name: &str| fixed.iter().find(|f| f.0 == name).map(|f| f.1.p50);
    if let (Some(tls), Some(plain)) = (p50("wasmesh mTLS"), p50("wasmesh plaintext")) {
        println!(
            "\nthe mTLS hop over plaintext, p50: {:+.0} µs (wasmesh), {:+.0} µs (nginx)",
            (tls.as_secs_f64() - plain.as_secs_f64()) * 1e6,
            (p50("nginx TLS").unwrap_or_default().as_secs_f64()
                - p50("nginx plaintext").unwrap_or_default().as_secs_f64())
                * 1e6
        );
    }

    // Handshakes beside kept-alive traffic: the server sidecar's one worker does both.
    println!();
    println!("| kept-alive mTLS at {rate} req/s, beside | p50 | p99 |");
    println!("|---|---|---|");
    for (label, flood) in [
        ("nothing", None),
        ("a flood of new plaintext connections", Some(&PLAIN_NEW)),
        ("a flood of new mTLS connections (handshakes)", Some(&NEW)),
    ] {
        let flooding = flood.map(|req| {
            let addr = mesh.outbound;
            std::thread::spawn(move || {
                load::wrk(addr, req, 8, seconds + Duration::from_secs(2), None)
            })
        });
        let m = load::oha_fixed_rate(mesh.outbound, &MTLS, 16, rate, seconds)?;
        let flood_rate = match flooding {
            Some(t) => format!(
                " ({:.0} new connections/s)",
                t.join().expect("wrk thread")?.requests_per_sec
            ),
            None => String::new(),
        };
        println!("| {label}{flood_rate} | {} | {} |", us(m.p50), us(m.p99));
    }
    drop((nginx_a, nginx_b));
    Ok(())
}

const PLAIN_NEW: LoadRequest = LoadRequest {
    path: "/",
    headers: &["Host: echo-plain-new"],
};

/// A CA and ECDSA P-256 certificates for the nginx pair, as PEM files.
struct TlsFiles {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl TlsFiles {
    fn write(dir: &Path) -> anyhow::Result<TlsFiles> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        // Distinct subjects: OpenSSL takes a leaf named as its issuer for self-signed.
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mtls bench CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let file = |name: &str, text: String| -> anyhow::Result<String> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path.display().to_string())
        };
        let leaf = |name: &str| -> anyhow::Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(vec![name.to_owned()])?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (sc, sk) = leaf("echo.mesh")?;
        let (cc, ck) = leaf("client.mesh")?;
        Ok(TlsFiles {
            ca: file("ca.pem", ca.pem())?,
            server_cert: file("server.pem", sc)?,
            server_key: file("server.key", sk)?,
            client_cert: file("client.pem", cc)?,
            client_key: file("client.key", ck)?,
        })
    }
}

/// A control plane and two sidecars: `server` in front of the upstream, `client` where load
/// goes in.
struct Mesh {
    outbound: SocketAddr,
    children: Children,
}

impl Mesh {
    fn start(
        proxy: &Path,
        controlplane: &Path,
        dir: &Path,
        upstream: SocketAddr,
    ) -> anyhow::Result<Mesh> {
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        let mut yaml = String::new();
        for host in ["echo-plain", "echo-mtls", "echo-new", "echo-plain-new"] {
            yaml.push_str(&format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
                 metadata: {{name: {host}}}\nspec:\n  hosts: [{host}.default.svc.cluster.local]\n  \
                 location: MESH_INTERNAL\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  \
                 resolution: STATIC\n  workloadSelector: {{labels: {{app: echo}}}}\n"
            ));
        }
        for (host, policy) in [
            ("echo-plain", "tls: {mode: DISABLE}"),
            (
                "echo-new",
                "connectionPool: {http: {maxRequestsPerConnection: 1}}",
            ),
            (
                "echo-plain-new",
                "tls: {mode: DISABLE}\n    connectionPool: {http: {maxRequestsPerConnection: 1}}",
            ),
        ] {
            yaml.push_str(&format!(
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                 metadata: {{name: {host}}}\nspec:\n  host: {host}.default.svc.cluster.local\n  \
                 trafficPolicy:\n    {policy}\n"
            ));
        }
        std::fs::write(manifests.join("mesh.yaml"), yaml)?;
        let plugins = wasmesh_benches::plugins_dir();
        let cp = start_controlplane(
            controlplane,
            &manifests,
            &plugins,
            &dir.join("data"),
            "warn,wasmesh_controlplane=info",
        )?;
        let (address, lines) = (cp.address, cp.lines);
        let mut children = Children(vec![cp.child]);
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        let cache = dir.join("cache");
        let sidecar = |name: &str, args: &[String]| -> anyhow::Result<Child> {
            Ok(Command::new(proxy)
                .args([
                    "--control-plane",
                    &address,
                    "--node",
                    name,
                    "--workers",
                    "1",
                ])
                .args(args)
                .arg("--cache-dir")
                .arg(&cache)
                .env("WASMESH_LOG", "warn")
                .stderr(Stdio::null())
                .spawn()?)
        };
        let inbound = free_addr()?;
        children.0.push(sidecar(
            "echo-v1",
            &[
                "--label".into(),
                "app=echo".into(),
                "--service-account".into(),
                "echo".into(),
                "--inbound".into(),
                format!("9080={upstream}@{inbound}"),
                "--outbound".into(),
                free_addr()?.to_string(),
            ],
        )?);
        let outbound = free_addr()?;
        children.0.push(sidecar(
            "client-v1",
            &[
                "--label".into(),
                "app=client".into(),
                "--service-account".into(),
                "client".into(),
                "--outbound".into(),
                outbound.to_string(),
            ],
        )?);
        // Ready when every host answers through both sidecars.
        let deadline = Instant::now() + Duration::from_secs(60);
        for req in [&PLAIN, &MTLS, &NEW, &PLAIN_NEW] {
            while load::wrk(outbound, req, 1, Duration::from_secs(1), None)
                .map_or(true, |m| m.errors > 0 || m.requests == 0)
            {
                if Instant::now() > deadline {
                    anyhow::bail!("the sidecars did not serve {:?} in 60 s", req.headers);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(Mesh { outbound, children })
    }

    fn server_pid(&self) -> u32 {
        self.children.0[1].id()
    }

    fn client_pid(&self) -> u32 {
        self.children.0[2].id()
    }
}
