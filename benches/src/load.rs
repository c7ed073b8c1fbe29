//! Load generators and what they measure.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

/// Throughput and latency of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measurement {
    pub requests_per_sec: f64,
    pub requests: u64,
    /// CPU time the measured process spent per request (user + system), when known.
    pub cpu_per_request: Option<Duration>,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: u64,
}

/// A latency as whole microseconds, for tables (`1234 µs`).
pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// The request every load run sends: a path and extra headers (`name: value`).
#[derive(Clone, Copy, Debug)]
pub struct LoadRequest {
    pub path: &'static str,
    pub headers: &'static [&'static str],
}

impl LoadRequest {
    /// `GET /` with no extra header.
    pub const ROOT: LoadRequest = LoadRequest {
        path: "/",
        headers: &[],
    };

    fn args(&self, addr: SocketAddr) -> Vec<String> {
        self.args_with_scheme("http", addr)
    }

    fn args_with_scheme(&self, scheme: &str, addr: SocketAddr) -> Vec<String> {
        let mut args = Vec::new();
        for h in self.headers {
            args.push("-H".to_owned());
            args.push((*h).to_owned());
        }
        args.push(format!("{scheme}://{addr}{}", self.path));
        args
    }
}

/// `wrk -t1 -c<connections> -d<secs> --latency`: saturating throughput. With `pid`, also the
/// CPU time that process (and its children, such as nginx's worker) spent per request.
pub fn wrk(
    addr: SocketAddr,
    request: &LoadRequest,
    connections: u32,
    duration: Duration,
    pid: Option<u32>,
) -> anyhow::Result<Measurement> {
    wrk_with_scheme("http", addr, request, connections, duration, pid)
}

/// [`wrk`] over HTTPS (wrk's OpenSSL; it offers no ALPN, so HTTP/1.1). The server's
/// certificate is not verified, and connections are kept alive: handshakes only at the start.
pub fn wrk_https(
    addr: SocketAddr,
    request: &LoadRequest,
    connections: u32,
    duration: Duration,
    pid: Option<u32>,
) -> anyhow::Result<Measurement> {
    wrk_with_scheme("https", addr, request, connections, duration, pid)
}

fn wrk_with_scheme(
    scheme: &str,
    addr: SocketAddr,
    request: &LoadRequest,
    connections: u32,
    duration: Duration,
    pid: Option<u32>,
) -> anyhow::Result<Measurement> {
    let before = pid.map(cpu_ticks);
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{}s", duration.as_secs().max(1)),
            "--latency",
        ])
        .args(request.args_with_scheme(scheme, addr))
        .output()
        .context("run wrk (deploy/setup.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut m = parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))?;
    if let (Some(pid), Some(before)) = (pid, before) {
        let ticks = cpu_ticks(pid).saturating_sub(before);
        let ticks_per_sec = 100.0; // USER_HZ on Linux
        m.cpu_per_request = Some(Duration::from_secs_f64(
            ticks as f64 / ticks_per_sec / m.requests.max(1) as f64,
        ));
    }
    Ok(m)
}

/// Runs `f` (a load run) and sets the CPU time (user + system) `pids` and their direct
/// children spent per request meanwhile.
pub fn with_cpu(
    pids: &[u32],
    f: impl FnOnce() -> anyhow::Result<Measurement>,
) -> anyhow::Result<Measurement> {
    let ticks = || pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    let before = ticks();
    let mut m = f()?;
    let spent = ticks().saturating_sub(before) as f64 / 100.0; // USER_HZ
    if m.requests > 0 {
        m.cpu_per_request = Some(Duration::from_secs_f64(spent / m.requests as f64));
    }
    Ok(m)
}

/// User plus system clock ticks of a process and its direct children.
pub fn cpu_ticks(pid: u32) -> u64 {
    let ticks = |stat: &str| -> Option<(u32, u64)> {
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid = fields.get(1)?.parse().ok()?;
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((ppid, utime + stime))
    };
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            if let Some((ppid, t)) = ticks(&stat)
                && (p == pid || ppid == pid)
            {
                total += t;
            }
        }
    }
    total
}

fn parse_wrk(text: &str) -> anyhow::Result<Measurement> {
    let mut m = Measurement::default();
    for line in text.lines().map(str::trim) {
        if line.contains(" requests in ") {
            m.requests = line.split_whitespace().next().unwrap_or("0").parse()?;
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            m.requests_per_sec = v.trim().parse()?;
        } else if let Some(v) = line.strip_prefix("50%") {
            m.p50 = parse_wrk_duration(v.trim())?;
        } else if let Some(v) = line.strip_prefix("99%") {
            m.p99 = parse_wrk_duration(v.trim())?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            m.errors += v.trim().parse::<u64>()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            m.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if m.requests_per_sec == 0.0 {
        bail!("no Requests/sec line");
    }
    Ok(m)
}

fn parse_wrk_duration(v: &str) -> anyhow::Result<Duration> {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).context("unit")?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse()?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => bail!("unknown unit {unit}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// `oha` at a fixed rate with coordinated-omission correction: latency under a steady load.
pub fn oha_fixed_rate(
    addr: SocketAddr,
    request: &LoadRequest,
    connections: u32,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    let out = Command::new("oha")
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
            "-c",
            &connections.to_string(),
            "-q",
            &rate.to_string(),
            "-z",
            &format!("{}s", duration.as_secs().max(1)),
        ])
        .args(request.args(addr))
        .output()
        .context("run oha (deploy/bench.sh installs it with cargo install oha)")?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("oha JSON")?;
    let secs = |v: &serde_json::Value| Duration::from_secs_f64(v.as_f64().unwrap_or(0.0));
    // Requests still in flight when the run ends are "aborted due to deadline": not errors.
    let errors = json["errorDistribution"].as_object().map_or(0, |m| {
        m.iter()
            .filter(|(k, _)| !k.contains("deadline"))
            .filter_map(|(_, v)| v.as_u64())
            .sum()
    });
    Ok(Measurement {
        requests_per_sec: json["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50: secs(&json["latencyPercentiles"]["p50"]),
        p99: secs(&json["latencyPercentiles"]["p99"]),
        errors,
        ..Measurement::default()
    })
}

/// A new TCP connection and a full TLS 1.3 handshake per request, `connections` at once for
/// `duration`: `GET /` with `Connection: close` to `addr`, the response read to the end (a
/// `200`, or it counts as an error). The client is rustls (ring) on one thread, with session
/// resumption off (every handshake is a full one: key exchange and the server's certificate
/// signature), SNI `server_name`, ALPN `http/1.1`, the server's chain verified against
/// `root_pem`. `requests_per_sec` is new connections (handshakes) per second; p50/p99 are of
/// connect, handshake and request together.
pub fn tls_new_connections(
    addr: SocketAddr,
    server_name: &str,
    root_pem: &[u8],
    connections: u32,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, client::Resumption};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_owned())?;
    let request = format!("GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n");

    let one = {
        let (connector, name, request) = (connector.clone(), name.clone(), request.clone());
        move || {
            let (connector, name, request) = (connector.clone(), name.clone(), request.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let mut tls = connector.connect(name, tcp).await?;
                tls.write_all(request.as_bytes()).await?;
                let mut response = Vec::with_capacity(512);
                // A server that closes without close_notify after the whole response is fine.
                match tls.read_to_end(&mut response).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                    Err(e) => return Err(e),
                }
                Ok::<bool, std::io::Error>(response.starts_with(b"HTTP/1.1 200"))
            }
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The last connections end after the deadline: the rate is over the real time.
    let (mut latencies, errors, elapsed) = runtime.block_on(async move {
        let start = std::time::Instant::now();
        let deadline = start + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let one = one.clone();
            tasks.spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while std::time::Instant::now() < deadline {
                    let t = std::time::Instant::now();
                    match one().await {
                        Ok(true) => latencies.push(t.elapsed()),
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            });
        }
        let (mut latencies, mut errors) = (Vec::new(), 0);
        while let Some(done) = tasks.join_next().await {
            let (l, e) = done.expect("a connection task");
            latencies.extend(l);
            errors += e;
        }
        (latencies, errors, start.elapsed())
    });
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Measurement {
        requests_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        requests: latencies.len() as u64,
        cpu_per_request: None,
        p50: at(0.50),
        p99: at(0.99),
        errors,
    })
}

/// The median of measurements by throughput.
pub fn median(mut runs: Vec<Measurement>) -> Measurement {
    runs.sort_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec));
    runs[runs.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  Latency Distribution\n     50%  350.00us\n     75%  400.00us\n     90%  1.20ms\n     99%    2.50ms\n  360000 requests in 5.00s, 50MB read\nRequests/sec:  72000.50\nTransfer/sec:     10MB\n";
        let m = parse_wrk(text).unwrap();
        assert_eq!(m.requests_per_sec, 72000.5);
        assert_eq!(m.p50, Duration::from_micros(350));
        assert_eq!(m.p99, Duration::from_micros(2500));
        assert_eq!(m.errors, 0);
        assert_eq!(m.requests, 360000);
    }
}

/// What a process holds and spends: resident memory, CPU time and wake-ups, read from `/proc`.
pub mod footprint {
    use std::time::Duration;

    use anyhow::Context;

    /// Resident memory of `pid` (`VmRSS`), in KiB.
    pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
        status_kib(pid, "VmRSS:")
    }

    /// The anonymous part of [`rss_kib`] (`RssAnon`: heap, stacks, Wasm memories), in KiB. The
    /// rest is file pages (the binary's code, compiled plugins, libc), which sidecars started
    /// from the same files share.
    pub fn rss_anon_kib(pid: u32) -> anyhow::Result<u64> {
        status_kib(pid, "RssAnon:")
    }

    fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{field} in /proc/{pid}/status"))
    }

    /// CPU time every thread of `pid` has run (nanoseconds, from each thread's `schedstat`:
    /// exact, unlike the 10 ms ticks of `stat`) and the times they were switched out
    /// (voluntary and not: each is a wake-up).
    pub fn cpu_and_switches(pid: u32) -> anyhow::Result<(u64, u64)> {
        let (mut cpu, mut switches) = (0, 0);
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let task = task?.path();
            let Ok(schedstat) = std::fs::read_to_string(task.join("schedstat")) else {
                continue; // the thread ended meanwhile
            };
            cpu += schedstat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
            switches += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        Ok((cpu, switches))
    }

    /// An idle window of `pid`: its share of one core and its wake-ups per second.
    #[derive(Clone, Copy, Debug)]
    pub struct Idle {
        pub core_share: f64,
        pub wakeups_per_sec: f64,
    }

    /// Watches `pid` for `window` while nothing is sent to it.
    pub fn idle(pid: u32, window: Duration) -> anyhow::Result<Idle> {
        let (cpu0, sw0) = cpu_and_switches(pid)?;
        std::thread::sleep(window);
        let (cpu1, sw1) = cpu_and_switches(pid)?;
        let secs = window.as_secs_f64();
        Ok(Idle {
            core_share: (cpu1 - cpu0) as f64 / 1e9 / secs,
            wakeups_per_sec: sw1.saturating_sub(sw0) as f64 / secs,
        })
    }

    /// Runs `load` while sampling the resident memory of `pid` every 20 ms; returns what
    /// `load` returned and the highest RSS seen (KiB).
    pub fn peak_rss_during<T>(
        pid: u32,
        load: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, u64)> {
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let sampler = s.spawn(|| {
                let mut peak = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(rss_kib(pid).unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak.max(rss_kib(pid).unwrap_or(0))
            });
            let out = load();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            let peak = sampler.join().expect("the RSS sampler");
            Ok((out?, peak))
        })
    }
}
