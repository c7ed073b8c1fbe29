//! A real Prometheus server (Debian's `prometheus`, installed by deploy/setup.sh) scraping the
//! sidecars' admin `/stats/prometheus` every second, queried over its HTTP API as Grafana and
//! Kiali query it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;

use super::sidecars::{Process, field};
use super::{Body, empty, full, h1_client};

/// One element of a query's answer: its labels and value (a scalar answer has no labels).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the series has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// A Prometheus process on a loopback port of its own, with its data in a temporary
/// directory; killed (and the directory removed) on drop.
pub struct Prometheus {
    pub address: SocketAddr,
    process: Process,
    _dir: tempfile::TempDir,
}

/// Where `prometheus` is on PATH; a test that needs it fails (not skips) without it.
fn binary() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
        .expect("no `prometheus` on PATH: run deploy/setup.sh (Debian's prometheus package)")
}

impl Prometheus {
    /// Starts a server scraping `targets` (admin addresses) every second and waits until it
    /// is ready. Its port is picked by the kernel (`127.0.0.1:0`): Prometheus logs the
    /// address its listener got (`msg="Listening on" address=...`), so there is no race
    /// for a port chosen beforehand.
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
scrape_configs:
- job_name: wasmesh
  metrics_path: /stats/prometheus
  static_configs:
  - targets: [{}]
",
            list.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg("--log.level=info");
        let process = Process::spawn("prometheus", cmd);
        let line = process.wait_for_line("msg=\"Listening on\"", Duration::from_secs(30));
        let address = field(&line, "address").parse().unwrap_or_else(|e| {
            panic!("no address in {line:?}: {e}");
        });
        let prometheus = Prometheus {
            address,
            process,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !prometheus.ready() {
            assert!(
                Instant::now() < deadline,
                "Prometheus at {address} not ready within 30 s; its log:\n{}",
                prometheus.process.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        prometheus
    }

    /// `GET /-/ready` answers 200 (blocking: a plain HTTP/1.0 exchange).
    fn ready(&self) -> bool {
        super::tcp_exchange(
            self.address,
            b"GET /-/ready HTTP/1.0\r\nHost: prometheus\r\n\r\n",
        )
        .is_ok_and(|answer| {
            answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200")
        })
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The last lines of the log.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A request to the HTTP API; the `data` of its JSON answer. A query Prometheus refuses
    /// (a bad expression) is a bug in the test: it panics.
    async fn api(&self, request: Request<Body>) -> serde_json::Value {
        let what = request.uri().to_string();
        let response = tokio::time::timeout(Duration::from_secs(10), h1_client().request(request))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer in 10 s"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!("{what}: not JSON ({e}): {}", String::from_utf8_lossy(&body))
        });
        assert_eq!(json["status"], "success", "{what}: {json}");
        json["data"].clone()
    }

    /// An instant query (`/api/v1/query`) at the present time: the series of a vector, or
    /// one sample without labels for a scalar.
    pub async fn query(&self, promql: &str) -> Vec<Sample> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .finish();
        let request = Request::post(format!("http://{}/api/v1/query", self.address))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(form))
            .unwrap();
        let data = self.api(request).await;
        let value = |v: &serde_json::Value| parse_value(v[1].as_str().unwrap_or_default());
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Sample {
                    labels: serde_json::from_value(s["metric"].clone()).unwrap(),
                    value: value(&s["value"]),
                })
                .collect(),
            Some("scalar") => vec![Sample {
                labels: BTreeMap::new(),
                value: value(&data["result"]),
            }],
            other => panic!("{promql}: a {other:?} answer, not an instant vector: {data}"),
        }
    }

    /// Polls `promql` (twice a scrape interval) until `ok` holds for its answer, which it
    /// returns; panics after `timeout` with the last answer, the targets and the log.
    pub async fn wait_for(
        &self,
        promql: &str,
        ok: impl Fn(&[Sample]) -> bool,
        timeout: Duration,
    ) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let samples = self.query(promql).await;
            if ok(&samples) {
                return samples;
            }
            if Instant::now() > deadline {
                panic!(
                    "{promql}: the condition did not hold within {timeout:?}; last answer:\n{}\
                     targets:\n{}Prometheus log (its end):\n{}",
                    show(&samples),
                    self.targets_summary().await,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `/api/v1/targets`: the active targets, with their health and last scrape error.
    pub async fn targets(&self) -> serde_json::Value {
        let request = Request::get(format!("http://{}/api/v1/targets", self.address))
            .body(empty())
            .unwrap();
        self.api(request).await["activeTargets"].clone()
    }

    /// A target a line: its URL, health and last scrape error.
    pub async fn targets_summary(&self) -> String {
        let mut out = String::new();
        for t in self.targets().await.as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {} {} {}",
                t["scrapeUrl"].as_str().unwrap_or("?"),
                t["health"].as_str().unwrap_or("?"),
                t["lastError"]
            );
        }
        out
    }

    /// Waits until every one of `n` targets has been scraped and is `up` with no scrape
    /// error: what we expose parses in a real Prometheus.
    pub async fn wait_targets_up(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let targets = self.targets().await;
            let list = targets.as_array().cloned().unwrap_or_default();
            let healthy = list
                .iter()
                .filter(|t| t["health"] == "up" && t["lastError"] == "")
                .count();
            if list.len() == n && healthy == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not all {n} targets up within {timeout:?}: {targets:#}\nPrometheus log (its end):\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A sample value as the API writes it (`"1"`, `"NaN"`, `"+Inf"`, `"-Inf"`).
fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => text
            .parse()
            .unwrap_or_else(|e| panic!("not a sample value {text:?}: {e}")),
    }
}

/// Samples one a line, for failure messages.
pub fn show(samples: &[Sample]) -> String {
    let mut out = String::new();
    for s in samples {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        let _ = writeln!(out, "  {{{}}} {}", labels.join(", "), s.value);
    }
    if samples.is_empty() {
        out.push_str("  (no series)\n");
    }
    out
}
