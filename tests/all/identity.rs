//! Workload identity: the control plane's CA signs each sidecar an X.509 SVID for its SPIFFE
//! id from a CSR sent on its stream, the sidecar rotates it at about half its life, and a CSR
//! for an identity the proxy is not entitled to is refused and logged.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::support::ca_client::{self, CaStream};
use crate::support::sidecars::{
    ControlPlane, Process, Sidecar, SidecarSpec, field, services, shared_cache, write,
};
use crate::support::*;

const ECHO: u16 = 8080;

/// The certificates `/certs` shows: `(serial, URI SANs, seconds until expiry)` of the chain,
/// and the serials of the trusted roots.
async fn certs(admin: std::net::SocketAddr) -> (Vec<(String, Vec<String>, u64)>, Vec<String>) {
    let body: serde_json::Value = serde_json::from_slice(&get(admin, "/certs").await.body).unwrap();
    let Some(entry) = body["certificates"].get(0) else {
        return (Vec::new(), Vec::new());
    };
    let chain = entry["cert_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["serial_number"].as_str().unwrap().to_owned(),
                c["subject_alt_names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["uri"].as_str().unwrap().to_owned())
                    .collect(),
                c["seconds_until_expiration"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        })
        .collect();
    let roots = entry["ca_cert"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["serial_number"].as_str().unwrap().to_owned())
        .collect();
    (chain, roots)
}

/// `openssl x509 -serial` of a PEM file, as `/certs` writes serials (lowercase hex).
fn openssl_serial(pem: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(pem)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    text.trim_start_matches("serial=").to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_get_spiffe_certificates_from_the_control_plane_and_rotate_them() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "services.yaml", &services(&[("echo", ECHO)]));
    let data = dir.path().join("data");
    let cp = ControlPlane::start(&manifests, &data, "127.0.0.1:0");
    let cache = shared_cache();
    let spec = SidecarSpec {
        name: "reviews-v1",
        labels: &[("app", "reviews")],
        app: None,
        cache: &cache,
        outbound: "127.0.0.1:0",
    };
    let mut cmd = Sidecar::command(&cp.address, &spec);
    // A lifetime of a few seconds: a rotation every second or two.
    cmd.args(["--service-account", "bookinfo-reviews", "--cert-ttl", "4s"])
        .args(["--admin", "127.0.0.1:0"]);
    let sidecar = Sidecar::ready(Process::spawn("reviews-v1", cmd));
    let admin: std::net::SocketAddr = field(
        &sidecar
            .process
            .wait_for_line("admin listening", Duration::from_secs(5)),
        "address",
    )
    .parse()
    .unwrap();

    // The SVID: the workload's SPIFFE id as its one URI SAN, the lifetime asked for, under
    // the root the control plane generated in its data directory.
    let root_serial = openssl_serial(&data.join("ca/root-cert.pem"));
    let mut serials = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while serials.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "saw only {} certificates in 60 s; sidecar log:\n{}",
            serials.len(),
            sidecar.process.log()
        );
        let (chain, roots) = certs(admin).await;
        if let Some((serial, sans, left)) = chain.first() {
            assert_eq!(
                sans,
                &["spiffe://cluster.local/ns/default/sa/bookinfo-reviews"]
            );
            assert!(*left <= 4, "expires in {left} s, asked for 4 s");
            assert_eq!(roots, std::slice::from_ref(&root_serial));
            serials.insert(serial.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each rotation was a new key pair and CSR, answered by the CA and installed.
    let log = sidecar.process.log();
    assert!(
        log.matches("workload certificate installed").count() >= 4,
        "{log}"
    );
    assert!(!log.contains("no new workload certificate"), "{log}");
}

fn csr(uris: &[&str]) -> String {
    ca_client::csr(uris).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_signs_only_the_identity_a_proxy_is_entitled_to() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "services.yaml", &services(&[("echo", ECHO)]));
    let data = dir.path().join("data");
    let cp = ControlPlane::start(&manifests, &data, "127.0.0.1:0");
    let mut ca = CaStream::open(&cp.address, "ratings-v1", "bookinfo-ratings").await;
    let trust = ca.trust.clone();
    assert_eq!(trust.trust_domain, "cluster.local");
    let root_pem = std::fs::read_to_string(data.join("ca/root-cert.pem")).unwrap();
    assert_eq!(trust.roots_pem, [root_pem]);

    // Its own identity: signed, and openssl verifies the chain for TLS clients and servers.
    let me = "spiffe://cluster.local/ns/default/sa/bookinfo-ratings";
    let answer = ca.ask(csr(&[me]), 0, 1).await;
    assert_eq!(answer.error, "");
    assert_eq!(
        answer.cert_chain_pem.len(),
        2,
        "the certificate and the root"
    );
    std::fs::write(dir.path().join("leaf.pem"), &answer.cert_chain_pem[0]).unwrap();
    for purpose in ["sslclient", "sslserver"] {
        let out = Command::new("openssl")
            .args(["verify", "-purpose", purpose, "-CAfile"])
            .arg(data.join("ca/root-cert.pem"))
            .arg(dir.path().join("leaf.pem"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("leaf.pem: OK"), "{purpose}: {text}");
    }
    let out = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-enddate",
            "-in",
        ])
        .arg(dir.path().join("leaf.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("URI:{me}")), "{text}");

    // Another workload's identity, an extra SAN, garbage, a lifetime over the maximum:
    // refused with the reason, logged, and the stream goes on.
    let other = "spiffe://cluster.local/ns/default/sa/bookinfo-admin";
    let refusals = [
        (
            csr(&[other]),
            0,
            "asks for spiffe://cluster.local/ns/default/sa/bookinfo-admin",
        ),
        (csr(&[me, other]), 0, "but the caller is"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
            0,
            "bad CSR",
        ),
        ("not even PEM".into(), 0, "bad CSR"),
        (csr(&[me]), 100 * 24 * 3600, "over the maximum"),
    ];
    for (i, (pem, validity, reason)) in refusals.into_iter().enumerate() {
        let answer = ca.ask(pem, validity, 10 + i as u64).await;
        assert!(answer.cert_chain_pem.is_empty());
        assert!(answer.error.contains(reason), "{reason}: {}", answer.error);
    }
    let line = cp
        .process
        .wait_for_line("certificate request refused", Duration::from_secs(5));
    assert!(line.contains("ratings-v1.default"), "{line}");
    let answer = ca.ask(csr(&[me]), 3600, 20).await;
    assert_eq!(answer.error, "");
}
