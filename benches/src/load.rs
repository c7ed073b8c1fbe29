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
        let mut args = Vec::new();
        for h in self.headers {
            args.push("-H".to_owned());
            args.push((*h).to_owned());
        }
        args.push(format!("http://{addr}{}", self.path));
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
    let before = pid.map(cpu_ticks);
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{}s", duration.as_secs().max(1)),
            "--latency",
        ])
        .args(request.args(addr))
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
