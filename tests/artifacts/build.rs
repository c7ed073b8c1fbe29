//! Builds every guest crate under `tests/filters/` and `plugins/` for `wasm32-wasip1` with the workspace's
//! `wasm` profile, once, into `<target>/wasm-artifacts`, and writes their paths as constants.
//! The `wasm32-wasip1` target must be installed (`deploy/setup.sh` adds it).
//!
//! It also builds the AssemblyScript filter of `tests/filters-as/` with npm (constant `AS_FILTER`):
//! see [`build_assemblyscript`].

use std::hash::{Hash, Hasher};
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
        // A guest added (or removed) changes the directory.
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
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
    let as_filter = build_assemblyscript(&root.join("tests/filters-as"), &target);
    consts.push_str(&format!(
        "/// The AssemblyScript filter of `tests/filters-as` (`@solo-io/proxy-runtime`), root id `as_filter`.\npub const AS_FILTER: &str = {:?};\n",
        as_filter.display().to_string()
    ));
    std::fs::write(out_dir.join("artifacts.rs"), consts).unwrap();
}

/// Builds the npm project `src` (an AssemblyScript filter) in `<target>/wasm-artifacts/assemblyscript`,
/// so that `node_modules` and the build output never sit in the source tree. `npm ci` runs only
/// when `node_modules` is missing or `package-lock.json` changed; the compiler runs only when an
/// input changed. A file lock keeps concurrent build scripts (other profiles, clippy) apart.
/// Cold, this takes a few seconds of `npm ci` and about ten of `asc --optimize`.
fn build_assemblyscript(src: &Path, target: &Path) -> PathBuf {
    for input in ["package.json", "package-lock.json", "assembly"] {
        println!("cargo:rerun-if-changed={}", src.join(input).display());
    }
    let work = target.join("assemblyscript");
    std::fs::create_dir_all(&work).unwrap();
    let lock = std::fs::File::create(work.join(".build-lock")).unwrap();
    lock.lock()
        .expect("lock the AssemblyScript build directory");

    let npm = |args: &[&str]| {
        let out = Command::new("npm")
            .args(args)
            .current_dir(&work)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run npm ({e}): the AssemblyScript test filter (tests/filters-as) is built \
                     with Node.js and npm; install them (deploy/setup.sh does, Node.js 20 is known to work)"
                )
            });
        if !out.status.success() {
            panic!(
                "`npm {}` in {} failed ({}):\n{}{}",
                args.join(" "),
                work.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };

    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    let lockfile = read(&src.join("package-lock.json"));
    let manifest = read(&src.join("package.json"));
    // What the last `npm ci` installed from; compared instead of mtimes.
    let installed = work.join("node_modules/.installed-from");
    let up_to_date = std::fs::read(&installed)
        .is_ok_and(|stamp| stamp == [&manifest[..], &lockfile[..]].concat());
    if !up_to_date {
        std::fs::write(work.join("package.json"), &manifest).unwrap();
        std::fs::write(work.join("package-lock.json"), &lockfile).unwrap();
        // No install scripts run: the compiler and binaryen are plain JavaScript and Wasm.
        npm(&[
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]);
        std::fs::write(&installed, [&manifest[..], &lockfile[..]].concat()).unwrap();
    }

    // The sources, copied afresh; the build is skipped if they and the manifests are unchanged.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&manifest, &lockfile).hash(&mut hasher);
    let sources = work.join("assembly");
    let _ = std::fs::remove_dir_all(&sources);
    copy_tree(&src.join("assembly"), &sources, &mut hasher);
    let stamp = format!("{:016x}", hasher.finish());
    let output = work.join("build/filter.wasm");
    let stamp_file = work.join("build/.inputs");
    if output.exists() && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return output;
    }
    let _ = std::fs::remove_file(&output);
    let _ = std::fs::remove_file(&stamp_file);
    npm(&["run", "--silent", "asbuild"]);
    assert!(output.exists(), "{} was not built", output.display());
    std::fs::write(&stamp_file, stamp).unwrap();
    output
}

/// Copies the directory `from` to `to`, hashing relative names and contents in a stable order.
fn copy_tree(from: &Path, to: &Path, hasher: &mut impl Hasher) {
    std::fs::create_dir_all(to).unwrap();
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap();
        name.hash(hasher);
        if path.is_dir() {
            copy_tree(&path, &to.join(name), hasher);
        } else {
            let bytes = std::fs::read(&path).unwrap();
            bytes.hash(hasher);
            std::fs::write(to.join(name), bytes).unwrap();
        }
    }
}
