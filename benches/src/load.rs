//! Load generators and what they measure.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

/// Throughput and latency of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measurement {
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: u64,
}

/// `wrk -t1 -c<connections> -d<secs> --latency`: saturating throughput.
pub fn wrk(addr: SocketAddr, connections: u32, duration: Duration) -> anyhow::Result<Measurement> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{}s", duration.as_secs().max(1)),
            "--latency",
            &format!("http://{addr}/"),
        ])
        .output()
        .context("run wrk (deploy/setup.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn parse_wrk(text: &str) -> anyhow::Result<Measurement> {
    let mut m = Measurement::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
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
            &format!("http://{addr}/"),
        ])
        .output()
        .context("run oha (deploy/bench.sh installs it with cargo install oha)")?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("oha JSON")?;
    let secs = |v: &serde_json::Value| Duration::from_secs_f64(v.as_f64().unwrap_or(0.0));
    let errors = json["errorDistribution"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
    Ok(Measurement {
        requests_per_sec: json["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50: secs(&json["latencyPercentiles"]["p50"]),
        p99: secs(&json["latencyPercentiles"]["p99"]),
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
    }
}
