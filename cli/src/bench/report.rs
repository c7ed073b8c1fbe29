//! What a benchmark found: serialised as is for `--json`, drawn as a table for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::stats::{Comparison, Percentiles};

/// The result of [`super::run`]. Times are nanoseconds.
#[derive(Serialize)]
pub struct Report {
    pub chain: ChainInfo,
    pub baseline: ChainInfo,
    /// The requests sent, in turn.
    pub requests: Vec<String>,
    pub response_body_bytes: usize,
    pub rounds: u32,
    pub verdict_rule: &'static str,
    /// Per filter of the chain, slowest first (in-process).
    pub filters: Vec<FilterReport>,
    pub in_process: ModeReport,
    pub through_proxy: Option<ModeReport>,
}

#[derive(Serialize)]
pub struct ChainInfo {
    pub label: String,
    /// Filter names in the order they run on requests.
    pub filters: Vec<String>,
    /// Warnings about where the chain came from (manifests: istioctl-style diagnostics).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One filter: the time its callbacks took per request, all together and one by one.
#[derive(Serialize)]
pub struct FilterReport {
    pub name: String,
    pub file: String,
    /// Its place in the chain (0: first on requests).
    pub position: usize,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    /// Its part of the time all the filters took.
    pub share_of_chain: f64,
    pub host_calls_per_request: f64,
    /// Bytes of linear memory of its VM after the run.
    pub memory_bytes: u64,
    /// Its VM (the position of the first filter in it): filters with the same module, vm_id
    /// and VM configuration share one, and its memory.
    pub vm: usize,
    /// The callbacks that ran.
    pub callbacks: Vec<CallbackReport>,
}

#[derive(Serialize)]
pub struct CallbackReport {
    pub callback: &'static str,
    /// The part of the requests it ran for (request_body: only requests with a body).
    pub requests_share: f64,
    /// Time per request it ran for.
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub host_calls_per_request: f64,
}

/// The chain and the baseline measured one way (in-process, or through the proxy).
#[derive(Serialize)]
pub struct ModeReport {
    pub chain: Latency,
    pub baseline: Latency,
    pub comparison: Comparison,
    /// Connections of the load (through the proxy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
}

/// Latency per request and throughput.
#[derive(Serialize)]
pub struct Latency {
    pub requests: u64,
    pub requests_per_sec: f64,
    #[serde(flatten)]
    pub percentiles: Percentiles,
    /// The mean of each round, which the verdict compares.
    pub round_means_ns: Vec<f64>,
    /// How the requests ended: `upstream`, `local reply 403`, or (through the proxy) the
    /// status the client got.
    pub outcomes: BTreeMap<String, u64>,
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

/// `812 ns`, `12.3 µs`, `1.24 ms`, `1.20 s`.
pub fn duration(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.0} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn rate(r: f64) -> String {
    let n = r.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `3.42×`.
fn ratio(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

impl Comparison {
    /// `2.41× the baseline (99% CI 2.38×–2.44×): slower`.
    pub fn sentence(&self) -> String {
        let ci = match self.ratio_ci99 {
            Some([lo, hi]) => format!(" (99% CI {}–{})", ratio(lo.max(0.0)), ratio(hi)),
            None => String::new(),
        };
        let sign = if self.difference_ns < 0.0 { "-" } else { "+" };
        format!(
            "{} the baseline{ci}, {sign}{} per request: {}",
            ratio(self.ratio),
            duration(self.difference_ns.abs()),
            self.verdict
        )
    }
}

impl Report {
    /// The report as a table for a terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let o = &mut out;
        let _ = writeln!(o, "wasmesh bench");
        let _ = writeln!(
            o,
            "  chain     {} ({} filters: {})",
            self.chain.label,
            self.chain.filters.len(),
            self.chain.filters.join(", ")
        );
        let _ = writeln!(o, "  baseline  {}", self.baseline.label);
        for (i, r) in self.requests.iter().enumerate().take(3) {
            let head = if i == 0 { "requests" } else { "" };
            let _ = writeln!(o, "  {head:<9} {r}");
        }
        if self.requests.len() > 3 {
            let _ = writeln!(
                o,
                "            ... {} requests in turn",
                self.requests.len()
            );
        }
        let _ = writeln!(
            o,
            "  upstream  200 with a {} B body; {} rounds, chain and baseline alternating",
            self.response_body_bytes, self.rounds
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Per filter, slowest first (in-process, time per request)"
        );
        let _ = writeln!(
            o,
            "  {:<22} {:>10} {:>10} {:>10} {:>6} {:>11} {:>9}",
            "filter / callback", "mean", "p50", "p99", "share", "host calls", "memory"
        );
        for f in &self.filters {
            let _ = writeln!(
                o,
                "  {:<22} {:>10} {:>10} {:>10} {:>5.1}% {:>11.1} {:>9}",
                truncate(&f.name, 22),
                duration(f.mean_ns),
                duration(f.p50_ns as f64),
                duration(f.p99_ns as f64),
                f.share_of_chain * 100.0,
                f.host_calls_per_request,
                if f.vm == f.position {
                    bytes(f.memory_bytes)
                } else {
                    "(shared)".into()
                }
            );
            for c in &f.callbacks {
                let share = if c.requests_share < 0.999 {
                    format!(" ({:.0}%)", c.requests_share * 100.0)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    o,
                    "    {:<20} {:>10} {:>10} {:>10} {:>6} {:>11.1}",
                    truncate(&format!("{}{share}", c.callback), 20),
                    duration(c.mean_ns),
                    duration(c.p50_ns as f64),
                    duration(c.p99_ns as f64),
                    "",
                    c.host_calls_per_request
                );
            }
        }
        if self.filters.is_empty() {
            let _ = writeln!(o, "  (no filters)");
        }
        mode(o, "Whole chain, in-process", &self.in_process);
        if let Some(p) = &self.through_proxy {
            let title = format!(
                "Through wasmesh-proxy ({} connections, 1 worker)",
                p.connections.unwrap_or(1)
            );
            mode(o, &title, p);
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "Verdict rule: {}.", self.verdict_rule);
        out
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('~');
        t
    }
}

fn mode(o: &mut String, title: &str, m: &ModeReport) {
    let _ = writeln!(o);
    let _ = writeln!(o, "{title}");
    let _ = writeln!(
        o,
        "  {:<10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "", "req/s", "mean", "p50", "p90", "p99", "p99.9"
    );
    for (name, l) in [("chain", &m.chain), ("baseline", &m.baseline)] {
        let p = &l.percentiles;
        let _ = writeln!(
            o,
            "  {:<10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
            name,
            rate(l.requests_per_sec),
            duration(p.mean_ns),
            duration(p.p50_ns as f64),
            duration(p.p90_ns as f64),
            duration(p.p99_ns as f64),
            duration(p.p999_ns as f64),
        );
    }
    let outcomes = |l: &Latency| {
        l.outcomes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        o,
        "  requests   chain {} ({}); baseline {} ({})",
        m.chain.requests,
        outcomes(&m.chain),
        m.baseline.requests,
        outcomes(&m.baseline)
    );
    let _ = writeln!(o, "  chain: {}", m.comparison.sentence());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(duration(812.0), "812 ns");
        assert_eq!(duration(12_345.0), "12.35 µs");
        assert_eq!(duration(1_240_000.0), "1.24 ms");
        assert_eq!(rate(1234567.4), "1,234,567");
        assert_eq!(rate(12.0), "12");
        assert_eq!(bytes(1 << 20), "1.0 MiB");
    }
}
