//! Token (bearer) auth, as Docker Hub, GHCR and Harbor have it: docker-registry 2.8 answers
//! 401 with a `Bearer realm=…,service=…,scope=…` challenge, and a token server (in the test
//! process, see `support::registry::TokenServer`) issues the ES256 JWTs it accepts for HTTP
//! Basic credentials. `wasmesh plugin push` and the control plane's pulls go through it.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::registry::{Registry, oras_pull};
use crate::support::sidecars::{
    ControlPlane, echo_workload, services, stamp_plugin, wait_stamp, wasmesh_bin, write,
};

const ECHO: u16 = 9080;

/// `wasmesh plugin push REGISTRY/reference --module FILE --plain-http --username dev`, the
/// password in `WASMESH_REGISTRY_PASSWORD`.
fn push(registry: &Registry, reference: &str, module: &Path, password: &str) -> Output {
    Command::new(wasmesh_bin())
        .args(["plugin", "push"])
        .arg(registry.reference(reference))
        .arg("--module")
        .arg(module)
        .args(["--plain-http", "--username", "dev"])
        .env("WASMESH_REGISTRY_PASSWORD", password)
        .output()
        .expect("wasmesh runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugin_images_are_pushed_and_pulled_with_bearer_tokens() {
    let registry = tokio::task::spawn_blocking(|| Registry::with_token_auth("dev", "s3cret"))
        .await
        .unwrap();
    let tokens = registry.token_server();
    let host = registry.host();
    assert_eq!(registry.v2_status().unwrap(), 401, "anonymous is refused");
    let headers = Path::new(wasmesh_artifacts::HEADERS);

    // A wrong password gets no token, and the push says so.
    let out = push(&registry, "filters/headers:v1", headers, "wrong");
    assert!(!out.status.success(), "pushed with a wrong password");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("push to") && stderr.contains("Authentication failure"),
        "{stderr}"
    );
    assert!(tokens.refused() > 0, "{tokens:?}");
    assert_eq!(tokens.issued(), 0, "{tokens:?}");

    let out = push(&registry, "filters/headers:v1", headers, "s3cret");
    assert!(
        out.status.success(),
        "wasmesh plugin push: {}\n{tokens:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("digest  sha256:"),
        "{out:?}"
    );
    assert!(
        tokens
            .scopes()
            .iter()
            .any(|s| s == "repository:filters/headers:pull,push"),
        "{tokens:?}"
    );
    // Another client of the token flow (oras-py's token backend) reads back what was pushed.
    // (Blocking is fine here: the token server is a thread of its own, not a task.)
    let pulled = tempfile::tempdir().unwrap();
    let auth = registry.credentials();
    let files = oras_pull(&registry, "filters/headers:v1", pulled.path(), auth);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        std::fs::read(headers).unwrap()
    );
    let issued_before_pull = tokens.issued();

    // The control plane pulls with the plugin's imagePullSecret.
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "services.yaml", &services(&[("echo", ECHO)]));
    let secrets = dir.path().join("pull-secrets");
    std::fs::create_dir_all(secrets.join("default")).unwrap();
    let config = serde_json::json!({"auths": {&host: {"username": "dev", "password": "s3cret"}}});
    std::fs::write(secrets.join("default/regcred.json"), config.to_string()).unwrap();
    let cp = ControlPlane::start_with(
        &manifests,
        &dir.path().join("data"),
        "127.0.0.1:0",
        &[
            OsStr::new("--insecure-registry"),
            OsStr::new(&host),
            OsStr::new("--pull-secrets"),
            secrets.as_os_str(),
        ],
    );
    let (_app, echo) = echo_workload(&cp.address, "echo-v1", "echo", ECHO).await;
    let inbound = echo.inbound.unwrap();
    let url = format!("oci://{host}/filters/headers:v1");
    let secret = "  imagePullSecret: regcred\n";
    write(
        &manifests,
        "plugin.yaml",
        &stamp_plugin(&url, "token", secret),
    );
    wait_stamp(&cp, inbound, "token".into()).await;
    assert!(
        tokens.issued() > issued_before_pull,
        "the control plane pulled without a token: {tokens:?}"
    );
    assert!(
        tokens.scopes()[issued_before_pull..]
            .iter()
            .all(|s| s == "repository:filters/headers:pull"),
        "the control plane asks to pull only: {tokens:?}"
    );
    let status = cp.wait_synced(1, Duration::from_secs(10)).await;
    assert!(status.diagnostics.is_empty(), "{:#?}", status.diagnostics);
}
