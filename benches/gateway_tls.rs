//! HTTPS termination at the gateway against nginx (issue 17), in one run with the same load
//! tools. One upstream (nginx answering `200 hello world` on plaintext) behind two TLS
//! terminators, each one worker (one process), with the same ECDSA P-256 certificate (SAN
//! `gateway.example.com`, issued by a bench CA) and TLS 1.3:
//!
//! - nginx: an `ssl` listener (`ssl_protocols TLSv1.3`, `ssl_session_cache` left at its default
//!   `none`, keep-alive on) proxying to the upstream with upstream keep-alive;
//! - wasmesh-proxy (release build): a listener with `tls: {mode: simple}` (the certificate for
//!   `gateway.example.com`, and as the default one) and one route to a cluster of the upstream.
//!
//! Two runs per target:
//!
//! - keep-alive: `wrk -t1 -c<N>` to the https URL (no ALPN offered: HTTP/1.1), throughput,
//!   p50/p99, and the CPU (user + system, from /proc) the terminating process spent per request;
//! - new connections: a new TCP connection and a full TLS 1.3 handshake per request
//!   ([`load::tls_new_connections`]: rustls on one thread, `<N>` connections at once, session
//!   resumption off, SNI `gateway.example.com`, ALPN http/1.1, `Connection: close`).
//!   wrk and h2load are not used here: both resume the TLS session on reconnecting (nginx logs
//!   `$ssl_session_reused` = `r`), so they would measure resumptions, not handshakes. It
//!   reports handshakes per second and per core (handshakes / CPU seconds of the process).
//!
//! ```sh
//! cargo bench -p wasmesh-benches --bench gateway_tls   # or deploy/bench.sh gateway_tls
//! ```
//!
//! Settings (environment): `GWTLS_SECONDS` per run (10), `GWTLS_ROUNDS` (3, median kept),
//! `GWTLS_CONNECTIONS` (32), `GWTLS_ONLY` (only the targets whose name contains it, to profile
//! one).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wasmesh_benches::load::{self, LoadRequest, Measurement, us, with_cpu};
use wasmesh_benches::{build_release, free_addr, peers, wait_for_port};

const SERVER_NAME: &str = "gateway.example.com";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let seconds = Duration::from_secs(env("GWTLS_SECONDS", 10));
    let rounds = env("GWTLS_ROUNDS", 3).max(1) as usize;
    let connections = env("GWTLS_CONNECTIONS", 32) as u32;

    let proxy = build_release("wasmesh-proxy")?;
    let dir = tempfile::tempdir()?;
    let upstream = peers::nginx_upstream(dir.path(), free_addr()?)?;
    let certs = Certificates::write(dir.path())?;

    let nginx_addr = free_addr()?;
    let nginx = peers::nginx_with(
        dir.path(),
        "gateway",
        nginx_addr,
        &format!(
            "server {{ listen {nginx_addr} ssl; ssl_protocols TLSv1.3; \
             ssl_certificate {cert}; ssl_certificate_key {key}; \
             location / {{ proxy_pass http://u; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; }} }}",
            cert = certs.chain.display(),
            key = certs.key.display(),
        ),
        &format!(
            "upstream u {{ server {}; keepalive 64; keepalive_requests 1000000; }}",
            upstream.addr
        ),
    )?;
    let wasmesh = peers::wasmesh_tls(
        &proxy,
        dir.path(),
        free_addr()?,
        upstream.addr,
        1,
        &[SERVER_NAME],
        (&certs.chain, &certs.key),
    )?;
    wait_for_port(wasmesh.addr)?;

    let targets = [
        ("nginx", nginx.addr, nginx.pid()),
        ("wasmesh", wasmesh.addr, wasmesh.pid()),
    ];
    let only = std::env::var("GWTLS_ONLY").unwrap_or_default();
    let targets: Vec<_> = targets
        .into_iter()
        .filter(|t| t.0.contains(only.as_str()))
        .collect();
    let request = &LoadRequest::ROOT;
    let root = std::fs::read(&certs.ca)?;
    let new_connections = |addr: SocketAddr| {
        load::tls_new_connections(addr, SERVER_NAME, &root, connections, seconds)
    };

    println!(
        "gateway TLS benchmark: keep-alive wrk -t1 -c{connections} -d{}s (https); new \
         connections: rustls client, {connections} at once, a full TLS 1.3 handshake per \
         request; {rounds} round(s) alternating targets (median kept); one worker each; \
         ECDSA P-256; upstream nginx `return 200`",
        seconds.as_secs()
    );
    // Warm up (and check both answer over TLS).
    for (name, addr, _) in &targets {
        let m = load::wrk_https(*addr, request, connections, Duration::from_secs(1), None)?;
        let n = load::tls_new_connections(
            *addr,
            SERVER_NAME,
            &root,
            connections,
            Duration::from_secs(1),
        )?;
        if m.requests == 0 || m.errors > 0 || n.requests == 0 || n.errors > 0 {
            anyhow::bail!(
                "{name} does not serve HTTPS: keep-alive {m:?}, new connections {n:?}\nnginx: {}",
                std::fs::read_to_string(dir.path().join("gateway.err")).unwrap_or_default()
            );
        }
    }
    let mut kept: Vec<Vec<Measurement>> = vec![Vec::new(); targets.len()];
    let mut new: Vec<Vec<Measurement>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, (name, addr, pid)) in targets.iter().enumerate() {
            let k = with_cpu(&[*pid], || {
                load::wrk_https(*addr, request, connections, seconds, None)
            })?;
            let n = with_cpu(&[*pid], || new_connections(*addr))?;
            for (shape, m) in [("keep-alive", &k), ("new connections", &n)] {
                if m.errors * 1000 > m.requests {
                    anyhow::bail!(
                        "{name}, {shape}: {} of {} requests failed",
                        m.errors,
                        m.requests
                    );
                }
            }
            println!(
                "  round {}: {name:<8} keep-alive {:>8.0} req/s, {:.1} µs CPU/request; new \
                 connections {:>6.0}/s, {:.1} µs CPU/handshake",
                round + 1,
                k.requests_per_sec,
                micros(k.cpu_per_request),
                n.requests_per_sec,
                micros(n.cpu_per_request),
            );
            kept[i].push(k);
            new[i].push(n);
        }
    }
    let kept: Vec<Measurement> = kept.into_iter().map(load::median).collect();
    let new: Vec<Measurement> = new.into_iter().map(load::median).collect();
    let nginx_at = targets.iter().position(|t| t.0 == "nginx");
    let ratio = |v: f64, of: &dyn Fn(usize) -> f64| {
        nginx_at.map_or("-".to_owned(), |j| format!("{:.2}", v / of(j)))
    };
    let per_core = |m: &Measurement| {
        m.cpu_per_request
            .filter(|c| !c.is_zero())
            .map_or(0.0, |c| 1.0 / c.as_secs_f64())
    };

    println!();
    println!(
        "| target | keep-alive req/s | vs nginx | CPU per request | p50 | p99 | handshakes/s | vs nginx | handshakes/s per core | vs nginx | handshake p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, (name, ..)) in targets.iter().enumerate() {
        let (k, n) = (&kept[i], &new[i]);
        println!(
            "| {name} | {:.0} | {} | {:.1} µs | {} | {} | {:.0} | {} | {:.0} | {} | {} | {} |",
            k.requests_per_sec,
            ratio(k.requests_per_sec, &|j| kept[j].requests_per_sec),
            micros(k.cpu_per_request),
            us(k.p50),
            us(k.p99),
            n.requests_per_sec,
            ratio(n.requests_per_sec, &|j| new[j].requests_per_sec),
            per_core(n),
            ratio(per_core(n), &|j| per_core(&new[j])),
            us(n.p50),
            us(n.p99),
        );
    }
    drop((nginx, wasmesh, upstream));
    Ok(())
}

fn micros(d: Option<Duration>) -> f64 {
    d.unwrap_or_default().as_secs_f64() * 1e6
}

/// A bench CA and the gateway's ECDSA P-256 certificate (SAN `gateway.example.com`) and key,
/// as PEM files; the chain file holds the leaf only.
struct Certificates {
    ca: PathBuf,
    chain: PathBuf,
    key: PathBuf,
}

impl Certificates {
    fn write(dir: &Path) -> anyhow::Result<Certificates> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            PKCS_ECDSA_P256_SHA256,
        };
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "gateway bench CA");
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        let leaf = params.signed_by(&key, &ca)?;
        let file = |name: &str, text: String| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        Ok(Certificates {
            ca: file("gateway-ca.pem", ca.pem())?,
            chain: file("gateway.pem", leaf.pem())?,
            key: file("gateway.key", key.serialize_pem())?,
        })
    }
}
