//! Building the filter under test for `wasm32-wasip1`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the filter crate at `manifest_dir` (pass `env!("CARGO_MANIFEST_DIR")`) for
/// `wasm32-wasip1` in release mode and returns the module's bytes. Builds into
/// `target/wasmesh-harness` so it never waits on the `cargo test` that runs it.
pub fn build_filter(manifest_dir: impl AsRef<Path>) -> Result<Vec<u8>, crate::Error> {
    let dir = manifest_dir.as_ref();
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| crate::Error(format!("{}: {e}", manifest.display())))?;
    let name = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("name = \"")
                .and_then(|l| l.strip_suffix('"'))
        })
        .ok_or_else(|| crate::Error(format!("{}: no package name", manifest.display())))?
        .replace('-', "_");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"))
        .join("wasmesh-harness");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .map_err(|e| crate::Error(format!("run cargo: {e}")))?;
    if !status.success() {
        return Err(crate::Error("cargo build --target wasm32-wasip1 failed (is the target installed? rustup target add wasm32-wasip1)".into()));
    }
    let wasm = target
        .join("wasm32-wasip1/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&wasm).map_err(|e| crate::Error(format!("{}: {e}", wasm.display())))
}
