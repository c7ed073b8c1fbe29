//! Plugin rollout: how long a WasmPlugin edit takes to be active on every sidecar it selects
//! (the control plane has the module and every selected proxy has ACKed a snapshot running
//! it), with N real `wasmesh-proxy` sidecars on one `wasmesh-controlplane` and the images in a
//! real registry (docker-registry on loopback):
//!
//! - not cached: each edit names a new tag holding a new module, which the control plane
//!   pulls and every sidecar fetches and compiles;
//! - cached: each edit switches between two tags pulled before (the control plane finds them
//!   in its disk cache, the sidecars in their compiled-module cache).
//!
//! ```sh
//! cargo bench -p wasmesh-benches --bench rollout    # ROLLOUT_PROXIES=10 ROLLOUT_EDITS=20
//! ```

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wasmesh_benches::{build_release, converged, start_controlplane_with};
use wasmesh_controlplane::images::{self, RegistryAuth, RegistryOptions};

#[path = "../tests/all/support/registry.rs"]
#[allow(dead_code)]
mod registry;

fn main() -> anyhow::Result<()> {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (n, edits) = (env("ROLLOUT_PROXIES", 10), env("ROLLOUT_EDITS", 20));
    let proxy = build_release("wasmesh-proxy")?;
    let controlplane = build_release("wasmesh-controlplane")?;
    let plugins = wasmesh_benches::plugins_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (fresh, cached) = rt.block_on(run(n, edits, &proxy, &controlplane, &plugins))?;
    println!("{n} sidecars, {edits} edits each; from the file's rename to the last ACK");
    println!("{:<12} {:>9} {:>9} {:>9}", "image", "p50", "p90", "max");
    for (name, mut took) in [("not cached", fresh), ("cached", cached)] {
        took.sort();
        let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
        println!(
            "{name:<12} {:>7.1}ms {:>7.1}ms {:>7.1}ms",
            at(0.5).as_secs_f64() * 1e3,
            at(0.9).as_secs_f64() * 1e3,
            took.last().expect("edits").as_secs_f64() * 1e3,
        );
    }
    Ok(())
}

/// Kills its processes when dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The headers test filter with a custom section naming `tag`: a module of its own (its own
/// sha256), which sidecars compile anew.
fn module(tag: &str) -> Vec<u8> {
    let mut module = std::fs::read(wasmesh_artifacts::HEADERS).expect("the headers filter");
    let name = b"wasmesh-rollout";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(tag.as_bytes());
    assert!(section.len() < 128, "a one-byte LEB128 size");
    module.push(0); // a custom section
    module.push(section.len() as u8);
    module.extend_from_slice(&section);
    module
}

fn wasm_plugin(url: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: stamp}}
spec:
  selector: {{matchLabels: {{app: svc}}}}
  url: {url}
  pluginConfig: {{rollout: true}}
"
    )
}

const SERVICE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc}
spec:
  hosts: [svc.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: svc}}
";

async fn run(
    n: usize,
    edits: usize,
    proxy: &Path,
    controlplane: &Path,
    plugins: &Path,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let registry = tokio::task::spawn_blocking(registry::Registry::plain).await?;
    let host = registry.host();
    let options = RegistryOptions {
        insecure: vec![host.clone()],
        ..RegistryOptions::default()
    };
    let mut tags = Vec::new();
    for i in 0..=edits + 1 {
        let tag = format!("e{i}");
        let reference = images::reference(&format!("{host}/filters/stamp:{tag}"))?;
        images::push(
            &reference,
            &module(&tag),
            &RegistryAuth::Anonymous,
            &options,
        )
        .await?;
        tags.push(format!("oci://{reference}"));
    }

    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    std::fs::write(manifests.join("services.yaml"), SERVICE)?;
    let cp = start_controlplane_with(
        controlplane,
        &manifests,
        plugins,
        &dir.path().join("data"),
        // (Its "listening" line is at info.)
        "warn,wasmesh_controlplane=info",
        &["--insecure-registry", &host],
    )?;
    let address = cp.address;
    let lines = cp.lines;
    let mut processes = Processes(vec![cp.child]);
    std::thread::spawn(move || lines.map_while(|l| l.ok()).for_each(drop));
    let cache = dir.path().join("cache");
    for i in 0..n {
        let child = Command::new(proxy)
            .args(["--control-plane", &address, "--node", &format!("w-{i}")])
            .args(["--label", "app=svc", "--outbound", "127.0.0.1:0"])
            .args(["--workers", "1", "--inbound", "8000=127.0.0.1:9"])
            .arg("--cache-dir")
            .arg(&cache)
            .env("WASMESH_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()?;
        processes.0.push(child);
    }
    let mut generation = converged(&address, n, 0).await?;

    let mut apply = async |url: &str| -> anyhow::Result<Duration> {
        let tmp = manifests.join(".plugin.tmp");
        std::fs::write(&tmp, wasm_plugin(url))?;
        let started = Instant::now();
        std::fs::rename(&tmp, manifests.join("plugin.yaml"))?;
        generation = converged(&address, n, generation).await?;
        Ok(started.elapsed())
    };
    let mut fresh = Vec::with_capacity(edits);
    for url in &tags[..edits] {
        fresh.push(apply(url).await?);
    }
    // Two tags both pulled and compiled above.
    let mut cached = Vec::with_capacity(edits);
    for i in 0..edits {
        cached.push(apply(&tags[i % 2]).await?);
    }
    drop(registry);
    Ok((fresh, cached))
}
