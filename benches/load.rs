//! The load benchmark. One upstream (nginx answering `200 hello world`) reached five ways with
//! the same load tool, the same request and one worker each: directly, through nginx as a
//! reverse proxy (with upstream keep-alive), through wasmesh-proxy, through wasmesh-proxy
//! running a chain of four realistic proxy-wasm filters on every request, and through
//! wasmesh-proxy as the mesh runs it: config translated from Istio manifests (a VirtualService
//! of ten routes, a DestinationRule with pool limits and outlier detection) with the router,
//! fault, mirror and circuit-breaker plugins; and the same with issue 16's mesh (`wasmesh+shop`:
//! a VirtualService of four routes, its request taking the weighted default route). It prints
//! throughput and latency for each, and the ratios to nginx; then the footprint of the bare
//! proxy and of the shop's mesh with 2 workers each: resident memory idle and under load, and
//! the CPU and wake-ups of an idle proxy.
//!
//! ```sh
//! cargo bench -p wasmesh-benches --bench load      # or deploy/bench.sh, which installs the tools
//! ```
//!
//! Settings (environment): `LOAD_SECONDS` per run (10), `LOAD_ROUNDS` (3, the median is kept),
//! `LOAD_CONNECTIONS` (32), `LOAD_RATE` for the fixed-rate latency run (half of nginx's
//! measured throughput), `LOAD_IDLE_SECONDS` for the idle windows (10).

use std::time::Duration;

use wasmesh_benches::load::{self, LoadRequest, Measurement, footprint};
use wasmesh_benches::peers::{CATALOG, CATALOG_CHECKOUT, SHOP, SHOP_CART};
use wasmesh_benches::{build_proxy, find_program, free_addr, peers};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> String {
    format!("{:.3}ms", d.as_secs_f64() * 1e3)
}

fn main() -> anyhow::Result<()> {
    let seconds = Duration::from_secs(env("LOAD_SECONDS", 10));
    let rounds = env("LOAD_ROUNDS", 3).max(1) as usize;
    let connections = env("LOAD_CONNECTIONS", 32) as u32;

    let proxy_binary = build_proxy()?;
    let dir = tempfile::tempdir()?;
    let upstream = peers::nginx_upstream(dir.path(), free_addr()?)?;
    let nginx = peers::nginx_proxy(dir.path(), free_addr()?, upstream.addr)?;
    let wasmesh = peers::wasmesh(&proxy_binary, dir.path(), free_addr()?, upstream.addr, 1)?;
    let filtered = peers::wasmesh_with_filters(
        &proxy_binary,
        dir.path(),
        free_addr()?,
        upstream.addr,
        1,
        &peers::realistic_chain(),
    )?;
    let mesh = |workers, manifests| {
        peers::wasmesh_with_plugins(
            &proxy_binary,
            dir.path(),
            free_addr()?,
            upstream.addr,
            workers,
            manifests,
        )
    };
    let plugins = mesh(1, CATALOG)?;
    let shop = mesh(1, SHOP)?;
    // Every target but the shop gets the request the catalog's VirtualService sends to its 6th
    // route; the shop's is the same but for its path and host.
    let catalog = &CATALOG_CHECKOUT;
    let targets: [(&str, _, _, &LoadRequest); 6] = [
        ("direct", upstream.addr, None, catalog),
        ("nginx", nginx.addr, Some(nginx.pid()), catalog),
        ("wasmesh-proxy", wasmesh.addr, Some(wasmesh.pid()), catalog),
        (
            "wasmesh+4wasm",
            filtered.addr,
            Some(filtered.pid()),
            catalog,
        ),
        ("wasmesh+mesh", plugins.addr, Some(plugins.pid()), catalog),
        ("wasmesh+shop", shop.addr, Some(shop.pid()), &SHOP_CART),
    ];

    println!(
        "load benchmark: wrk -t1 -c{connections} -d{}s, {rounds} round(s) alternating targets \
         (median kept), 1 worker each",
        seconds.as_secs()
    );
    // Warm up connection pools and caches.
    for (_, addr, _, request) in &targets {
        load::wrk(*addr, request, connections, Duration::from_secs(1), None)?;
    }
    let mut runs: Vec<Vec<Measurement>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, (name, addr, pid, request)) in targets.iter().enumerate() {
            let m = load::wrk(*addr, request, connections, seconds, *pid)?;
            if m.errors * 1000 > m.requests {
                anyhow::bail!(
                    "{name}: {} of {} requests failed (non-2xx or socket errors): the \
                     comparison would mean nothing",
                    m.errors,
                    m.requests
                );
            }
            let cpu = m.cpu_per_request.map_or(String::new(), |c| {
                format!(", {:.2} us CPU/request", c.as_secs_f64() * 1e6)
            });
            println!(
                "  round {}: {name:<14} {:>9.0} req/s{cpu}",
                round + 1,
                m.requests_per_sec
            );
            runs[i].push(m);
        }
    }
    let cpu: Vec<Option<f64>> = runs
        .iter()
        .map(|r| {
            let mut v: Vec<f64> = r
                .iter()
                .filter_map(|m| m.cpu_per_request)
                .map(|c| c.as_secs_f64() * 1e6)
                .collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        })
        .collect();
    let medians: Vec<Measurement> = runs.into_iter().map(load::median).collect();
    let nginx_rps = medians[1].requests_per_sec;
    println!(
        "\n{:<14} {:>10} {:>10} {:>10} {:>8} {:>14} {:>10}",
        "target", "req/s", "p50", "p99", "errors", "CPU/request", "vs nginx"
    );
    for (((name, _, _, _), m), cpu) in targets.iter().zip(&medians).zip(&cpu) {
        let ratio = match *name {
            "direct" => String::new(),
            _ => format!("{:.2}x", m.requests_per_sec / nginx_rps),
        };
        let cpu = cpu.map_or("-".to_owned(), |c| format!("{c:.2} us"));
        println!(
            "{name:<14} {:>10.0} {:>10} {:>10} {:>8} {:>14} {:>10}",
            m.requests_per_sec,
            ms(m.p50),
            ms(m.p99),
            m.errors,
            cpu,
            ratio
        );
    }
    if let (Some(n), Some(w), Some(f), Some(p), Some(s)) = (cpu[1], cpu[2], cpu[3], cpu[4], cpu[5])
    {
        println!(
            "CPU per request vs nginx (lower is better): wasmesh {:.2}x, wasmesh+4wasm {:.2}x, \
             wasmesh+mesh {:.2}x, wasmesh+shop {:.2}x; the 4 filters cost {:.2} us, the \
             catalog mesh's plugins {:.2} us, the shop's {:.2} us; wasmesh+shop vs the bare \
             proxy {:.2}x",
            w / n,
            f / n,
            p / n,
            s / n,
            f - w,
            p - w,
            s - w,
            s / w
        );
    }

    footprints(
        &proxy_binary,
        dir.path(),
        upstream.addr,
        seconds,
        connections,
    )?;

    if find_program("oha").is_none() {
        println!(
            "\nfixed-rate latency: skipped, oha is not installed (deploy/bench.sh installs it)"
        );
        return Ok(());
    }
    let rate = env("LOAD_RATE", (nginx_rps / 2.0) as u64) as u32;
    println!(
        "\nfixed rate {rate} req/s, oha -c{connections} --latency-correction -z{}s:",
        seconds.as_secs()
    );
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>8}",
        "target", "req/s", "p50", "p99", "errors"
    );
    let mut fixed = Vec::new();
    for (name, addr, _, request) in &targets[1..] {
        let m = load::oha_fixed_rate(*addr, request, connections, rate, seconds)?;
        println!(
            "{name:<14} {:>10.0} {:>10} {:>10} {:>8}",
            m.requests_per_sec,
            ms(m.p50),
            ms(m.p99),
            m.errors
        );
        fixed.push(m);
    }
    let p99 = |i: usize| fixed[i].p99.as_secs_f64() / fixed[0].p99.as_secs_f64();
    println!(
        "\nvs nginx: wasmesh throughput {:.2}x, p99 at {rate} req/s {:.2}x; wasmesh+4wasm \
         throughput {:.2}x, p99 {:.2}x; wasmesh+mesh throughput {:.2}x, p99 {:.2}x; \
         wasmesh+shop throughput {:.2}x, p99 {:.2}x, {:+.0} us (p99: lower is better)",
        medians[2].requests_per_sec / nginx_rps,
        p99(1),
        medians[3].requests_per_sec / nginx_rps,
        p99(2),
        medians[4].requests_per_sec / nginx_rps,
        p99(3),
        medians[5].requests_per_sec / nginx_rps,
        p99(4),
        (fixed[4].p99.as_secs_f64() - fixed[0].p99.as_secs_f64()) * 1e6
    );

    Ok(())
}

/// The bare proxy and the shop's mesh, each started afresh with 2 workers: resident memory when
/// idle, at its highest under load and idle again after it; an idle proxy's share of a core
/// and wake-ups per second (all its threads).
fn footprints(
    binary: &std::path::Path,
    dir: &std::path::Path,
    upstream: std::net::SocketAddr,
    seconds: Duration,
    connections: u32,
) -> anyhow::Result<()> {
    let window = Duration::from_secs(env("LOAD_IDLE_SECONDS", 10));
    println!(
        "\nfootprint with 2 workers (fresh processes; idle windows of {} s):",
        window.as_secs()
    );
    println!(
        "{:<14} {:>10} {:>13} {:>12} {:>15} {:>14} {:>11}",
        "target",
        "RSS idle",
        "RSS load max",
        "RSS after",
        "anon RSS after",
        "idle CPU/core",
        "wake-ups/s"
    );
    for (name, mesh, request) in [
        ("wasmesh-proxy", None, &CATALOG_CHECKOUT),
        ("wasmesh+shop", Some(SHOP), &SHOP_CART),
    ] {
        let addr = free_addr()?;
        let proxy = match mesh {
            None => peers::wasmesh(binary, dir, addr, upstream, 2)?,
            Some(m) => peers::wasmesh_with_plugins(binary, dir, addr, upstream, 2, m)?,
        };
        // One request through each worker's plugins before the first window.
        load::wrk(addr, request, 2, Duration::from_secs(1), None)?;
        let idle = footprint::idle(proxy.pid(), window)?;
        let rss_idle = footprint::rss_kib(proxy.pid())?;
        let (_, peak) = footprint::peak_rss_during(proxy.pid(), || {
            load::wrk(addr, request, connections, seconds, None)
        })?;
        let after = footprint::idle(proxy.pid(), window)?;
        let rss_after = footprint::rss_kib(proxy.pid())?;
        let anon_after = footprint::rss_anon_kib(proxy.pid())?;
        let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
        println!(
            "{name:<14} {:>10} {:>13} {:>12} {:>15} {:>13.3}% {:>11.1}",
            mib(rss_idle),
            mib(peak),
            mib(rss_after),
            mib(anon_after),
            idle.core_share.max(after.core_share) * 100.0,
            idle.wakeups_per_sec.max(after.wakeups_per_sec)
        );
    }
    Ok(())
}
