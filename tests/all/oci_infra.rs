//! The OCI test infrastructure itself (`support::registry`): a real registry with TLS and
//! htpasswd auth, and the ORAS client pushing a Wasm plugin image to it and pulling it back.

use crate::support::registry::{
    Registry, WASM_LAYER_MEDIA_TYPE, oras_pull, oras_push_wasm, try_oras_pull,
};

#[test]
fn oras_push_and_pull_through_a_tls_registry_with_auth() {
    let registry = Registry::tls_with_auth("wasmesh", "s3cret");
    assert_eq!(registry.v2_status().unwrap(), 401, "auth is required");
    let creds = registry.credentials();

    let work = tempfile::tempdir().unwrap();
    let module = b"\0asm\x01\0\0\0";
    let wasm = work.path().join("module.wasm");
    std::fs::write(&wasm, module).unwrap();
    let pushed = oras_push_wasm(&registry, "plugins/demo:v1", &wasm, creds);
    assert_eq!(
        pushed.reference,
        format!("{}/plugins/demo:v1", registry.host())
    );
    assert!(pushed.manifest_digest.starts_with("sha256:"), "{pushed:?}");
    let layers = pushed.manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{pushed:?}");
    assert_eq!(layers[0]["mediaType"], WASM_LAYER_MEDIA_TYPE);
    assert_eq!(
        layers[0]["annotations"]["org.opencontainers.image.title"],
        "plugin.wasm"
    );

    // By tag and by digest.
    let by_digest = format!("plugins/demo@{}", pushed.manifest_digest);
    for reference in ["plugins/demo:v1", &by_digest] {
        let out = tempfile::tempdir().unwrap();
        let files = oras_pull(&registry, reference, out.path(), creds);
        assert_eq!(files, [out.path().join("plugin.wasm")]);
        assert_eq!(std::fs::read(&files[0]).unwrap(), module);
    }

    let out = tempfile::tempdir().unwrap();
    let refused = try_oras_pull(&registry, "plugins/demo:v1", out.path(), None)
        .expect_err("a pull without credentials fails");
    assert!(refused.contains("401"), "{refused}");
    let wrong = try_oras_pull(
        &registry,
        "plugins/demo:v1",
        out.path(),
        Some(("wasmesh", "wrong")),
    )
    .expect_err("a pull with a wrong password fails");
    assert!(wrong.contains("Unauthorized"), "{wrong}");
    assert!(std::fs::read_dir(out.path()).unwrap().next().is_none());
}

#[test]
fn oras_through_a_plain_registry_and_the_registry_going_down() {
    let mut registry = Registry::plain();
    assert_eq!(registry.v2_status().unwrap(), 200);
    let work = tempfile::tempdir().unwrap();
    let wasm = work.path().join("plugin.wasm");
    std::fs::write(&wasm, b"\0asm\x01\0\0\0").unwrap();
    oras_push_wasm(&registry, "plugins/plain:latest", &wasm, None);
    let out = tempfile::tempdir().unwrap();
    let files = oras_pull(&registry, "plugins/plain:latest", out.path(), None);
    assert_eq!(files, [out.path().join("plugin.wasm")]);
    assert_eq!(std::fs::read(&files[0]).unwrap(), b"\0asm\x01\0\0\0");

    registry.stop();
    assert!(
        registry.v2_status().is_err(),
        "nothing answers once stopped"
    );
    let started = std::time::Instant::now();
    let down = try_oras_pull(&registry, "plugins/plain:latest", out.path(), None)
        .expect_err("a pull from a stopped registry fails");
    assert!(down.contains("ConnectionError"), "{down}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "no retries"
    );
}
