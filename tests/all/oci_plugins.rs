//! WasmPlugins from OCI images in a real registry (docker-registry 2.8 on loopback): pushed by
//! `wasmesh plugin push` and by the ORAS Python client, in both of Istio's image variants,
//! pulled by the control plane (with credentials, a CA, a pull policy and a disk cache) and
//! run by the sidecars the plugin selects. An image that cannot be had is reported with the
//! reason while the last good plugin serves.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::registry::{Registry, oras_pull, oras_push_wasm, try_oras_push_files};
use crate::support::sidecars::{
    ControlPlane, echo_workload, services, stamp, stamp_plugin, wait_stamp, wasmesh_bin, write,
};

const ECHO: u16 = 9080;
const OTHER: u16 = 9081;

/// `wasmesh plugin push` of `module` to `reference` (relative to the registry); its stdout.
fn wasmesh_push(registry: &Registry, reference: &str, module: &Path) -> String {
    let mut cmd = Command::new(wasmesh_bin());
    cmd.args(["plugin", "push"])
        .arg(registry.reference(reference))
        .arg("--module")
        .arg(module);
    if registry.is_tls() {
        cmd.arg("--registry-ca").arg(registry.ca_pem_path());
    } else {
        cmd.arg("--plain-http");
    }
    if let Some((user, password)) = registry.credentials() {
        cmd.args(["--username", user])
            .env("WASMESH_REGISTRY_PASSWORD", password);
    }
    let out = cmd.output().expect("wasmesh runs");
    assert!(
        out.status.success(),
        "wasmesh plugin push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Pushes `module` as `docker push` would an image built `FROM scratch` with `plugin.wasm`:
/// a Docker v2 manifest with one `application/vnd.docker.image.rootfs.diff.tar.gzip` layer
/// (Istio's compat variant). Over the registry API directly (Python's requests, from the
/// ORAS virtualenv), to a plain registry without auth.
fn docker_push(registry: &Registry, name: &str, tag: &str, module: &Path) {
    const SCRIPT: &str = r#"
import gzip, hashlib, io, json, sys, tarfile, requests
base, name, tag, path = sys.argv[1:5]
layer_tar = io.BytesIO()
with tarfile.open(fileobj=layer_tar, mode="w") as t:
    t.add(path, arcname="plugin.wasm")
layer = gzip.compress(layer_tar.getvalue())
config = json.dumps({"architecture": "amd64", "os": "linux",
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()]}}).encode()
def blob(data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = requests.post(f"{base}/v2/{name}/blobs/uploads/")
    r.raise_for_status()
    loc = r.headers["Location"]
    loc = loc if loc.startswith("http") else base + loc
    r = requests.put(loc + ("&" if "?" in loc else "?") + "digest=" + digest, data=data,
        headers={"Content-Type": "application/octet-stream"})
    r.raise_for_status()
    return {"size": len(data), "digest": digest}
manifest = {"schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **blob(config)},
    "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", **blob(layer)}]}
r = requests.put(f"{base}/v2/{name}/manifests/{tag}", data=json.dumps(manifest),
    headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
r.raise_for_status()
"#;
    let out = Command::new(crate::support::registry::oras_python())
        .args(["-c", SCRIPT, &registry.base_url(), name, tag])
        .arg(module)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "docker-format push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn flags<'a>(pairs: &'a [(&'a str, &'a OsStr)]) -> Vec<&'a OsStr> {
    pairs
        .iter()
        .flat_map(|(flag, value)| [OsStr::new(flag), *value])
        .collect()
}

/// The filter author's images reach the workloads a WasmPlugin selects, and no others:
/// pushed by `wasmesh plugin push` (and pulled unchanged by ORAS), pushed by ORAS as Istio's
/// docs show, and in the compat variant (a tar+gzip layer holding `plugin.wasm`), from a TLS
/// registry with htpasswd auth whose credentials are the plugin's `imagePullSecret`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugin_images_of_both_variants_reach_the_selected_sidecars_only() {
    let registry = tokio::task::spawn_blocking(|| Registry::tls_with_auth("dev", "s3cret"))
        .await
        .unwrap();
    let auth = registry.credentials();
    let headers = Path::new(wasmesh_artifacts::HEADERS);
    let module = std::fs::read(headers).unwrap();

    // wasmesh pushes; ORAS pulls the same module back.
    let pushed = wasmesh_push(&registry, "filters/headers:v1", headers);
    assert!(pushed.contains("digest  sha256:"), "{pushed}");
    let out = tempfile::tempdir().unwrap();
    let files = oras_pull(&registry, "filters/headers:v1", out.path(), auth);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("plugin.wasm"), "{files:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), module);
    // ORAS pushes as Istio's docs do; the compat variant is a tar+gzip layer.
    oras_push_wasm(&registry, "filters/oras:v1", headers, auth);
    let stage = tempfile::tempdir().unwrap();
    std::fs::copy(headers, stage.path().join("plugin.wasm")).unwrap();
    let tar = Command::new("tar")
        .args(["czf", "-", "plugin.wasm"])
        .current_dir(stage.path())
        .output()
        .unwrap();
    assert!(tar.status.success());
    try_oras_push_files(
        &registry,
        "filters/compat:v1",
        &[(
            "layer.tar.gz",
            &tar.stdout,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )],
        auth,
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(
        &manifests,
        "services.yaml",
        &services(&[("echo", ECHO), ("other", OTHER)]),
    );
    let secrets = dir.path().join("pull-secrets");
    let cp = ControlPlane::start_with(
        &manifests,
        &dir.path().join("data"),
        "127.0.0.1:0",
        &flags(&[
            ("--registry-ca", registry.ca_pem_path().as_os_str()),
            ("--pull-secrets", secrets.as_os_str()),
        ]),
    );
    let (_echo_app, echo) = echo_workload(&cp.address, "echo-v1", "echo", ECHO).await;
    let (_other_app, other) = echo_workload(&cp.address, "other-v1", "other", OTHER).await;
    let (echo_in, other_in) = (echo.inbound.unwrap(), other.inbound.unwrap());

    // Without the pull secret the registry refuses, and the plugin is left out, reported.
    let url = format!("oci://{}", registry.reference("filters/headers:v1"));
    let secret = "  imagePullSecret: regcred\n";
    write(
        &manifests,
        "plugin.yaml",
        &stamp_plugin(&url, "pushed", secret),
    );
    let reported = cp.wait_diagnostic("regcred.json").await;
    assert!(reported.contains("plugin is left out"), "{reported}");
    assert_eq!(stamp(echo_in).await, serde_json::Value::Null);

    // With it (a Docker config.json, as a kubernetes.io/dockerconfigjson Secret holds).
    std::fs::create_dir_all(secrets.join("default")).unwrap();
    let config =
        serde_json::json!({"auths": {registry.host(): {"username": "dev", "password": "s3cret"}}});
    std::fs::write(secrets.join("default/regcred.json"), config.to_string()).unwrap();
    // The failed pull is retried (with backoff) while the plugin wants it.
    wait_stamp(&cp, echo_in, "pushed".into()).await;
    assert_eq!(
        stamp(other_in).await,
        serde_json::Value::Null,
        "not selected"
    );

    for (name, config) in [("filters/oras:v1", "oras"), ("filters/compat:v1", "compat")] {
        let url = format!("oci://{}", registry.reference(name));
        write(
            &manifests,
            "plugin.yaml",
            &stamp_plugin(&url, config, secret),
        );
        wait_stamp(&cp, echo_in, config.into()).await;
    }
    assert_eq!(
        stamp(other_in).await,
        serde_json::Value::Null,
        "not selected"
    );
    let status = cp.wait_synced(2, Duration::from_secs(10)).await;
    assert!(status.diagnostics.is_empty(), "{:#?}", status.diagnostics);

    // Deleted: gone from every proxy.
    std::fs::remove_file(manifests.join("plugin.yaml")).unwrap();
    wait_stamp(&cp, echo_in, serde_json::Value::Null).await;
}

/// A Docker-format image (`docker push` of one built FROM scratch with `plugin.wasm`) serves;
/// what makes an image unusable is reported with the reason, and the last good plugin keeps
/// serving: a missing image, a digest that does not match, a layer that is not Wasm, a module
/// that does not compile (the proxies NACK it) and a registry that is down. A cached image
/// (IfNotPresent) serves with the registry down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_that_cannot_be_had_is_reported_and_the_last_good_plugin_serves() {
    let mut registry = tokio::task::spawn_blocking(Registry::plain).await.unwrap();
    let headers = Path::new(wasmesh_artifacts::HEADERS);
    docker_push(&registry, "filters/docker", "v1", headers);
    try_oras_push_files(
        &registry,
        "filters/text:v1",
        &[(
            "plugin.wasm",
            b"not a module",
            crate::support::registry::WASM_LAYER_MEDIA_TYPE,
        )],
        None,
    )
    .unwrap();
    let broken = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(broken.path(), b"\0asm\x01\0\0\0\x01\xff\xff\xff").unwrap();
    wasmesh_push(&registry, "filters/broken:v1", broken.path());

    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "services.yaml", &services(&[("echo", ECHO)]));
    let host = registry.host();
    let cp = ControlPlane::start_with(
        &manifests,
        &dir.path().join("data"),
        "127.0.0.1:0",
        &flags(&[("--insecure-registry", OsStr::new(&host))]),
    );
    let (_app, echo) = echo_workload(&cp.address, "echo-v1", "echo", ECHO).await;
    let inbound = echo.inbound.unwrap();
    let url = |name: &str| format!("oci://{host}/{name}");
    write(
        &manifests,
        "plugin.yaml",
        &stamp_plugin(&url("filters/docker:v1"), "good", ""),
    );
    wait_stamp(&cp, inbound, "good".into()).await;

    let zeros = "0".repeat(64);
    let cases = [
        (url("filters/missing:v1"), String::new(), "manifest"),
        (
            url("filters/docker:v1"),
            format!("  sha256: {zeros}\n"),
            "sha256 mismatch",
        ),
        (url("filters/text:v1"), String::new(), "not a Wasm module"),
    ];
    for (url, extra, reason) in &cases {
        write(&manifests, "plugin.yaml", &stamp_plugin(url, "bad", extra));
        let reported = cp.wait_diagnostic(url).await;
        assert!(
            reported.contains(reason) && reported.contains("last good version stays"),
            "{reason}: {reported}"
        );
        assert_eq!(stamp(inbound).await, "good");
    }

    // A module that does not compile reaches the proxy, which refuses it.
    write(
        &manifests,
        "plugin.yaml",
        &stamp_plugin(&url("filters/broken:v1"), "broken", ""),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let nacked = loop {
        let status = cp.status().await;
        if let Some(p) = status.proxies.iter().find(|p| p.state == "NACKED") {
            break p.error.clone();
        }
        assert!(Instant::now() < deadline, "no NACK: {status:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(nacked.contains("default.stamp"), "{nacked}");
    assert_eq!(stamp(inbound).await, "good");

    // The registry goes down: an image not cached is reported; the cached one still serves
    // (IfNotPresent: the tag is not looked up again), with the plugin's new config.
    tokio::task::spawn_blocking(move || {
        registry.stop();
        registry
    })
    .await
    .unwrap();
    let fresh = url("filters/fresh:v1");
    write(
        &manifests,
        "plugin.yaml",
        &stamp_plugin(&fresh, "fresh", ""),
    );
    let reported = cp.wait_diagnostic(&fresh).await;
    assert!(reported.to_lowercase().contains("connect"), "{reported}");
    assert_eq!(stamp(inbound).await, "good");
    write(
        &manifests,
        "plugin.yaml",
        &stamp_plugin(&url("filters/docker:v1"), "cached", ""),
    );
    wait_stamp(&cp, inbound, "cached".into()).await;
    let status = cp.wait_synced(1, Duration::from_secs(10)).await;
    assert!(status.diagnostics.is_empty(), "{:#?}", status.diagnostics);
}

/// `imagePullPolicy`: with IfNotPresent a tag once pulled is not looked up again when the
/// plugin changes; with Always (or a `latest` tag) a changed plugin pulls the tag again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pull_policy_decides_whether_a_moved_tag_is_pulled_again() {
    let registry = tokio::task::spawn_blocking(Registry::plain).await.unwrap();
    let headers = Path::new(wasmesh_artifacts::HEADERS);
    let noop = Path::new(wasmesh_artifacts::NOOP);
    wasmesh_push(&registry, "filters/f:v1", headers);
    wasmesh_push(&registry, "filters/f:latest", headers);

    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "services.yaml", &services(&[("echo", ECHO)]));
    let host = registry.host();
    let cp = ControlPlane::start_with(
        &manifests,
        &dir.path().join("data"),
        "127.0.0.1:0",
        &flags(&[("--insecure-registry", OsStr::new(&host))]),
    );
    let (_app, echo) = echo_workload(&cp.address, "echo-v1", "echo", ECHO).await;
    let inbound = echo.inbound.unwrap();
    let v1 = format!("oci://{host}/filters/f:v1");
    let latest = format!("oci://{host}/filters/f:latest");

    write(&manifests, "plugin.yaml", &stamp_plugin(&v1, "one", ""));
    wait_stamp(&cp, inbound, "one".into()).await;
    write(&manifests, "plugin.yaml", &stamp_plugin(&latest, "l1", ""));
    wait_stamp(&cp, inbound, "l1".into()).await;
    // Both tags now name a module that stamps nothing.
    wasmesh_push(&registry, "filters/f:v1", noop);
    wasmesh_push(&registry, "filters/f:latest", noop);

    write(&manifests, "plugin.yaml", &stamp_plugin(&v1, "two", ""));
    wait_stamp(&cp, inbound, "two".into()).await;
    cp.wait_synced(1, Duration::from_secs(10)).await;
    assert_eq!(
        stamp(inbound).await,
        "two",
        "IfNotPresent keeps the cached v1"
    );
    // `latest` defaults to Always: a changed plugin pulls it again.
    write(&manifests, "plugin.yaml", &stamp_plugin(&latest, "l2", ""));
    wait_stamp(&cp, inbound, serde_json::Value::Null).await;
    write(&manifests, "plugin.yaml", &stamp_plugin(&v1, "three", ""));
    wait_stamp(&cp, inbound, "three".into()).await;
    let always = "  imagePullPolicy: Always\n";
    write(
        &manifests,
        "plugin.yaml",
        &stamp_plugin(&v1, "four", always),
    );
    wait_stamp(&cp, inbound, serde_json::Value::Null).await;
}
