//! Config convergence: how long a change to a manifest file takes to reach every proxy (the
//! last ACK), with 1, 10 and 100 real `wasmesh-proxy` sidecar processes on one
//! `wasmesh-controlplane`; and what the control plane costs per connected proxy (resident
//! memory, and CPU per push), and what a reload costs a proxy (CPU).
//!
//! ```sh
//! cargo bench -p wasmesh-benches --bench convergence
//! ```
//!
//! Settings (environment): `CONVERGENCE_PROXIES` (`1,10,100`), `CONVERGENCE_EDITS` per size
//! (30). Each sidecar registers a workload of one of ten services (`svc-0` .. `svc-9`), so
//! every snapshot carries every proxy's endpoint, as in a mesh where everyone may call
//! everyone. An edit rewrites a VirtualService (a new fault percentage), which changes every
//! proxy's snapshot.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmesh_benches::load::cpu_ticks;
use wasmesh_benches::{build_release, converged, status};

const SERVICES: usize = 10;

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("CONVERGENCE_PROXIES")
        .unwrap_or_else(|_| "1,10,100".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let edits: usize = std::env::var("CONVERGENCE_EDITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let proxy = build_release("wasmesh-proxy")?;
    let controlplane = build_release("wasmesh-controlplane")?;
    let plugins = wasmesh_benches::plugins_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!(
        "{:>7} {:>9} {:>9} {:>9} {:>14} {:>16} {:>17}",
        "proxies", "p50", "p99", "max", "cp KiB/proxy", "cp CPU/push/proxy", "proxy CPU/reload"
    );
    for n in sizes {
        let r = rt.block_on(run(n, edits, &proxy, &controlplane, &plugins))?;
        println!(
            "{n:>7} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>14.1} {:>14.1}µs {:>15.1}µs",
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.max.as_secs_f64() * 1e3,
            r.kib_per_proxy,
            r.cpu_per_push_per_proxy.as_secs_f64() * 1e6,
            r.proxy_cpu_per_reload.as_secs_f64() * 1e6,
        );
    }
    Ok(())
}

struct Result {
    p50: Duration,
    p99: Duration,
    max: Duration,
    kib_per_proxy: f64,
    cpu_per_push_per_proxy: Duration,
    proxy_cpu_per_reload: Duration,
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

fn virtual_service(edit: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-0}}
spec:
  hosts: [svc-0]
  http:
  - fault:
      abort: {{httpStatus: 503, percentage: {{value: {}}}}}
    route:
    - destination: {{host: svc-0}}
",
        edit % 100
    )
}

fn services() -> String {
    (0..SERVICES)
        .map(|i| {
            format!(
                "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{i}}}
spec:
  hosts: [svc-{i}.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: svc-{i}}}}}
"
            )
        })
        .collect()
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

/// The resident size once it stops falling: what stays per connected proxy, not the pages
/// the last push freed and the allocator has yet to return (it does so within a second, so
/// this waits two before it starts looking).
async fn settled_rss_kib(pid: u32) -> anyhow::Result<u64> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut last = rss_kib(pid)?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_kib(pid)?;
        if now >= last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

async fn run(
    n: usize,
    edits: usize,
    proxy: &Path,
    controlplane: &Path,
    plugins: &Path,
) -> anyhow::Result<Result> {
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    std::fs::write(manifests.join("services.yaml"), services())?;
    std::fs::write(manifests.join("vs.yaml"), virtual_service(0))?;
    let cp = wasmesh_benches::start_controlplane(
        controlplane,
        &manifests,
        plugins,
        &dir.path().join("data"),
        &std::env::var("CONVERGENCE_LOG")
            .unwrap_or_else(|_| "warn,wasmesh_controlplane=info".into()),
    )?;
    let cp_pid = cp.child.id();
    let (address, lines) = (cp.address, cp.lines);
    let mut processes = Processes(vec![cp.child]);
    // The control plane's log goes on to stderr when CONVERGENCE_LOG asks for one.
    let show = std::env::var_os("CONVERGENCE_LOG").is_some();
    std::thread::spawn(move || {
        for line in lines.map_while(|l| l.ok()) {
            if show {
                eprintln!("{line}");
            }
        }
    });
    // Let the control plane settle before its baseline.
    converged(&address, 0, 0).await?;
    let rss_before = settled_rss_kib(cp_pid).await?;

    let cache = dir.path().join("cache");
    for i in 0..n {
        let child = Command::new(proxy)
            .args(["--control-plane", &address, "--node", &format!("w-{i}")])
            .args(["--label", &format!("app=svc-{}", i % SERVICES)])
            .args(["--outbound", "127.0.0.1:0", "--workers", "1"])
            .args(["--inbound", "8000=127.0.0.1:9"])
            .arg("--cache-dir")
            .arg(&cache)
            .env("WASMESH_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()?;
        processes.0.push(child);
        if i == 0 {
            // The first compiles the modules into the shared cache; the rest load them.
            converged(&address, 1, 0).await?;
        }
    }
    let mut generation = converged(&address, n, 0).await?;
    let rss_after = settled_rss_kib(cp_pid).await?;

    let mut took = Vec::with_capacity(edits);
    let cpu_before = cpu_ticks(cp_pid);
    let proxies_cpu = |p: &Processes| p.0[1..].iter().map(|c| cpu_ticks(c.id())).sum::<u64>();
    let proxies_before = proxies_cpu(&processes);
    for edit in 1..=edits {
        let tmp = manifests.join(".vs.tmp");
        std::fs::write(&tmp, virtual_service(edit))?;
        let started = Instant::now();
        std::fs::rename(&tmp, manifests.join("vs.yaml"))?;
        generation = converged(&address, n, generation).await?;
        took.push(started.elapsed());
        if show {
            eprintln!(
                "edit {edit}: {:?} (ended {:?})",
                started.elapsed(),
                std::time::SystemTime::now()
            );
        }
    }
    let cpu = Duration::from_secs_f64((cpu_ticks(cp_pid) - cpu_before) as f64 / 100.0);
    let proxies =
        Duration::from_secs_f64((proxies_cpu(&processes) - proxies_before) as f64 / 100.0);
    let _ = status(&address).await?;
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    Ok(Result {
        p50: at(0.5),
        p99: at(0.99),
        max: *took.last().expect("edits"),
        kib_per_proxy: rss_after.saturating_sub(rss_before) as f64 / n as f64,
        cpu_per_push_per_proxy: cpu / (edits * n) as u32,
        proxy_cpu_per_reload: proxies / (edits * n) as u32,
    })
}
