//! Builds every guest crate under `tests/filters/` and `plugins/` for `wasm32-wasip1` with the workspace's
//! `wasm` profile, once, into `<target>/wasm-artifacts`, and writes their paths as constants.
//! The `wasm32-wasip1` target must be installed (`deploy/setup.sh` adds it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest
        .parent()
        .and_then(Path::parent)
        .expect("tests/artifacts sits two levels down")
        .to_owned();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // OUT_DIR is <target>/<profile>/build/<pkg>/out: the guests share <target>/wasm-artifacts.
    let target = out_dir
        .ancestors()
        .nth(4)
        .expect("a target directory")
        .join("wasm-artifacts");

    let mut guests = Vec::new();
    for dir in ["tests/filters", "plugins"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let manifest = entry.path().join("Cargo.toml");
            if !manifest.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&manifest).unwrap();
            if !text.contains("cdylib") {
                continue; // a library the guests share (wasmesh-policy)
            }
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("name = \""))
                .and_then(|l| l.strip_suffix('"'))
                .expect("a package name")
                .to_owned();
            println!(
                "cargo:rerun-if-changed={}",
                entry.path().join("src").display()
            );
            println!("cargo:rerun-if-changed={}", manifest.display());
            guests.push(name);
        }
    }
    guests.sort();
    println!("cargo:rerun-if-changed={}", root.join("sdk/src").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("plugins/policy/src").display()
    );

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--target",
            "wasm32-wasip1",
            "--profile",
            "wasm",
            "--target-dir",
        ])
        .arg(&target);
    for g in &guests {
        cmd.args(["-p", g]);
    }
    for var in [
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo to build the Wasm guests");
    if !status.success() {
        panic!(
            "building the Wasm guests failed; is the wasm32-wasip1 target installed? (deploy/setup.sh adds it)"
        );
    }

    let mut consts = String::new();
    for g in &guests {
        let file = target
            .join("wasm32-wasip1/wasm")
            .join(format!("{}.wasm", g.replace('-', "_")));
        assert!(file.exists(), "{} was not built", file.display());
        let ident = g
            .trim_start_matches("filter-")
            .trim_start_matches("plugin-")
            .replace('-', "_")
            .to_uppercase();
        consts.push_str(&format!(
            "/// `{g}` built for wasm32-wasip1.\npub const {ident}: &str = {:?};\n",
            file.display().to_string()
        ));
    }
    std::fs::write(out_dir.join("artifacts.rs"), consts).unwrap();
}
