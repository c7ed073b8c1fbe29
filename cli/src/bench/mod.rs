//! `wasmesh bench`: what a filter chain costs, measured on the real host.
//!
//! [`run`] loads a chain and a baseline (by default, no filters) the way the proxy does,
//! drives the requests of a [`RequestProfile`] through both in-process (see [`driver`]),
//! alternating them over several rounds, and with `through_proxy` also through a real
//! wasmesh-proxy under load (see [`through_proxy`]). The [`Report`] gives, per filter and per
//! callback, the time per request, the host calls and the guest memory; for the whole chain,
//! throughput and latency percentiles; and the ratio to the baseline with a verdict only when
//! the difference is larger than the run's own noise ([`stats::VERDICT_RULE`]).

pub mod chain;
pub mod driver;
mod logs;
pub mod plot;
pub mod profile;
pub mod report;
pub mod stats;
pub mod through_proxy;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tracing_subscriber::layer::SubscriberExt;
use wasmesh_host::{Chain, Host, PluginSpec, VmFailure};

pub use chain::{ChainSource, FilterArg, PLUGIN_FILES, ResolvedChain, default_plugins_dir};
use driver::{Collector, Listener, Worker, exchange};
pub use profile::{RequestProfile, RequestSpec, ResponseSpec};
pub use report::Report;
use report::{CallbackReport, ChainInfo, FilterReport, Latency, ModeReport};
use stats::{Percentiles, compare, histogram};

/// Why a benchmark could not run. Each is one line naming the file (or filter) and the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file that cannot be used: unreadable, not Wasm, not a config, not a requests file.
    #[error("{file}: {reason}")]
    Input { file: String, reason: String },
    /// A filter that does not load or start: unknown ABI, configuration rejected, trap.
    #[error("{file}: filter {filter:?}: {reason}")]
    Filter {
        filter: String,
        file: String,
        reason: String,
    },
    /// A plugin module missing from the `--plugins` directory of `--manifests`.
    #[error(
        "{file}: no such plugin module: build the plugins with `{build}` or give --plugins DIR",
        build = chain::BUILD_PLUGINS
    )]
    MissingPlugin { file: String },
    /// Manifests with errors: the diagnostics, as `istioctl analyze` prints them.
    #[error("{file}: the manifests have errors, nothing was run:\n{}", diagnostics.join("\n"))]
    Manifests {
        file: String,
        diagnostics: Vec<String>,
    },
    #[error("{0}")]
    Usage(String),
    #[error("--through-proxy: {0}")]
    Proxy(String),
    #[error("{file}: cannot draw the plot: {reason}")]
    Plot { file: String, reason: String },
}

/// How much to run: requests for each chain (the per filter figures get as many again), or
/// the time of the whole in-process run (and again of the `--through-proxy` run).
#[derive(Clone, Copy, Debug)]
pub enum Amount {
    Requests(u64),
    Duration(Duration),
}

/// How much one block (one chain, one round) runs.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    Requests(u64),
    Time(Duration),
}

impl Budget {
    /// Progress units of `blocks` blocks: requests, or milliseconds.
    fn total(self, blocks: u64) -> u64 {
        match self {
            Budget::Requests(n) => n * blocks,
            Budget::Time(d) => d.as_millis() as u64 * blocks,
        }
    }
}

impl Amount {
    /// One block's share: requests are per chain, so a round's block gets `1/rounds` of
    /// them; time is shared by every block (`blocks_per_round` of them each round).
    fn per_block(self, rounds: u32, blocks_per_round: u32) -> Budget {
        let rounds = rounds.max(1);
        match self {
            Amount::Requests(n) => Budget::Requests((n / rounds as u64).max(1)),
            Amount::Duration(d) => Budget::Time(d / (rounds * blocks_per_round.max(1))),
        }
    }
}

/// What to benchmark and how.
#[derive(Clone, Debug)]
pub struct Options {
    pub chain: ChainSource,
    /// `ChainSource::None`: no filters.
    pub baseline: ChainSource,
    pub profile: RequestProfile,
    pub amount: Amount,
    /// Chain and baseline alternate this many times; the verdict needs at least 2.
    pub rounds: u32,
    /// `Some(connections)`: also through a real proxy.
    pub through_proxy: Option<usize>,
}

/// Where a run stands, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub phase: &'static str,
    /// Requests (or milliseconds, for a time budget) done of `total`.
    pub done: u64,
    pub total: u64,
}

/// Runs the benchmark.
pub fn run(options: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Report, Error> {
    let chain = options.chain.resolve()?;
    let baseline = options.baseline.resolve()?;
    run_resolved(options, &chain, &baseline, progress)
}

/// Runs the benchmark of chains already resolved (whose warnings the caller has shown);
/// `options.chain` and `options.baseline` are not read.
pub fn run_resolved(
    options: &Options,
    chain: &ResolvedChain,
    baseline: &ResolvedChain,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, Error> {
    if options.profile.requests.is_empty() {
        return Err(Error::Usage("no requests to send".into()));
    }
    if options.rounds == 0 {
        return Err(Error::Usage("--rounds must be at least 1".into()));
    }
    let plugin_logs = logs::PluginLogs::default();
    let _logs =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(plugin_logs.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start a runtime: {e}")))?;
    let local = tokio::task::LocalSet::new();
    let (names, filters, in_process) = local.block_on(
        &runtime,
        in_process(options, chain, baseline, &plugin_logs, progress),
    )?;
    drop(local);
    drop(runtime);
    let through_proxy = match options.through_proxy {
        None => None,
        Some(connections) => {
            let budget = options.amount.per_block(options.rounds, 2);
            let (c, b) = through_proxy::run(
                chain,
                baseline,
                &options.profile,
                options.rounds,
                budget,
                connections,
                progress,
            )?;
            let (c, b) = (c.latency(), b.latency());
            for (side, l) in [("chain", &c), ("baseline", &b)] {
                warn_unless_upstream_answered(side, l);
            }
            Some(ModeReport {
                comparison: compare(&c.round_means_ns, &b.round_means_ns),
                chain: c,
                baseline: b,
                connections: Some(connections),
            })
        }
    };
    let baseline_names = baseline.filters.iter().map(|f| f.name.clone()).collect();
    Ok(Report {
        chain: ChainInfo {
            label: chain.label.clone(),
            filters: names,
            warnings: chain.warnings.clone(),
        },
        baseline: ChainInfo {
            label: baseline.label.clone(),
            filters: baseline_names,
            warnings: baseline.warnings.clone(),
        },
        requests: options
            .profile
            .requests
            .iter()
            .map(RequestSpec::describe)
            .collect(),
        response_body_bytes: options.profile.response.body.len(),
        rounds: options.rounds,
        verdict_rule: stats::VERDICT_RULE,
        filters,
        in_process,
        through_proxy,
    })
}

/// Through the proxy only the local upstream answers 200: anything else came from the proxy or a
/// filter (a 404 for a route the requests miss, a 503 for a cluster that is not there). That may
/// be the chain's point, but it changes what is measured, so it is said out loud.
fn warn_unless_upstream_answered(side: &str, l: &Latency) {
    let others: Vec<(&String, &u64)> = l.outcomes.iter().filter(|(s, _)| *s != "200").collect();
    if others.is_empty() {
        return;
    }
    let count: u64 = others.iter().map(|(_, n)| **n).sum();
    let detail: Vec<String> = others
        .iter()
        .map(|(s, n)| format!("{n} answered {s}"))
        .collect();
    eprintln!(
        "warning: through the proxy, {count} of the {side}'s {} requests did not reach the \
         upstream ({}): the figures measure those answers",
        l.requests,
        detail.join(", ")
    );
}

/// Loads a chain's modules as the proxy does; errors name the filter's file.
pub fn load(host: &Arc<Host>, chain: &ResolvedChain) -> Result<Vec<Arc<PluginSpec>>, Error> {
    // One by one first, so that an error names the filter it is about.
    for f in &chain.filters {
        wasmesh_proxy::load_filters(host, std::slice::from_ref(f), chain.base_dir.as_deref())
            .map_err(|e| Error::Filter {
                filter: f.name.clone(),
                file: chain.file_of(&f.name),
                reason: e.reason,
            })?;
    }
    wasmesh_proxy::load_filters(host, &chain.filters, chain.base_dir.as_deref()).map_err(|e| {
        Error::Input {
            file: chain.label.clone(),
            reason: e.to_string(),
        }
    })
}

/// Instantiates and configures a chain on `worker`.
fn start(
    worker: &mut Worker,
    chain: &ResolvedChain,
    specs: &[Arc<PluginSpec>],
    logs: &logs::PluginLogs,
) -> Result<Rc<Chain>, Error> {
    worker.chain(specs).map_err(|(name, failure)| {
        let mut reason = match &failure {
            VmFailure::Rejected("proxy_on_configure") => {
                "the plugin rejected its configuration (proxy_on_configure returned false)"
                    .to_owned()
            }
            VmFailure::Rejected(what) => {
                format!("the plugin refused to start ({what} returned false)")
            }
            other => other.to_string(),
        };
        if let Some(said) = logs.last(&name) {
            reason = format!("{reason}: {said}");
        }
        Error::Filter {
            file: chain.file_of(&name),
            filter: name,
            reason,
        }
    })
}

/// What the timed blocks of one chain gathered (in-process or through the proxy).
struct Timed {
    histogram: Histogram<u64>,
    /// Mean latency of each round, for the verdict.
    round_means: Vec<f64>,
    requests: u64,
    /// Wall time spent on the requests.
    wall: Duration,
    /// Requests by how they ended.
    outcomes: BTreeMap<String, u64>,
}

impl Timed {
    fn new() -> Timed {
        Timed {
            histogram: histogram(),
            round_means: Vec::new(),
            requests: 0,
            wall: Duration::ZERO,
            outcomes: BTreeMap::new(),
        }
    }

    fn latency(self) -> Latency {
        Latency {
            requests: self.requests,
            requests_per_sec: self.requests as f64 / self.wall.as_secs_f64().max(1e-9),
            percentiles: Percentiles::of(&self.histogram),
            round_means_ns: self.round_means,
            outcomes: self.outcomes,
            histogram: self.histogram,
        }
    }
}

/// The in-process part: rounds of chain, baseline and a profiled chain block.
async fn in_process(
    options: &Options,
    chain: &ResolvedChain,
    baseline: &ResolvedChain,
    logs: &logs::PluginLogs,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Vec<String>, Vec<FilterReport>, ModeReport), Error> {
    let host = Host::new(None);
    let specs = load(&host, chain)?;
    let base_specs = load(&host, baseline)?;
    let mut worker = Worker::new(&host).map_err(Error::Usage)?;
    let c = Listener::new(start(&mut worker, chain, &specs, logs)?, chain);
    let b = Listener::new(start(&mut worker, baseline, &base_specs, logs)?, baseline);
    let profile = &options.profile;
    let budget = options.amount.per_block(options.rounds, 3);

    // Warm up: caches, lazily initialised guest state, branch predictors.
    let warm = match budget {
        Budget::Requests(n) => Budget::Requests((n / 5).clamp(10, 2000)),
        Budget::Time(d) => Budget::Time((d / 5).min(Duration::from_millis(300))),
    };
    let mut cursor = 0;
    for chain in [&c, &b] {
        block(chain, profile, &mut cursor, warm, &mut Timed::new(), None).await;
    }

    let collector = Collector::new(c.chain.len());
    let mut timed = [Timed::new(), Timed::new()];
    let total = budget.total(options.rounds as u64 * 3);
    let mut done = 0;
    for round in 0..options.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let chain = if i == 0 { &c } else { &b };
            let mean = block(chain, profile, &mut cursor, budget, &mut timed[i], None).await;
            timed[i].round_means.push(mean);
            done += budget.total(1);
            progress(Progress {
                phase: "in-process",
                done,
                total,
            });
        }
        // Per filter figures come from blocks of their own: timing every callback costs a
        // little, which the chain's own figures above do not pay.
        c.chain.set_profiler(Some(collector.clone()));
        block(
            &c,
            profile,
            &mut cursor,
            budget,
            &mut Timed::new(),
            Some(&collector),
        )
        .await;
        c.chain.set_profiler(None);
        done += budget.total(1);
        progress(Progress {
            phase: "in-process",
            done,
            total,
        });
    }

    let profiled = collector.requests().max(1) as f64;
    let names: Vec<String> = c.chain.names().into_iter().map(str::to_owned).collect();
    let vms: Vec<_> = (0..c.chain.len()).map(|i| c.chain.vm(i)).collect();
    let mut filters = Vec::new();
    for (i, costs) in collector.take().into_iter().enumerate() {
        let vm = vms[i].as_ref();
        let vm_index = vms
            .iter()
            .position(|v| match (v, vm) {
                (Some(a), Some(b)) => Rc::ptr_eq(a, b),
                _ => false,
            })
            .unwrap_or(i);
        let p = Percentiles::of(&costs.per_request);
        filters.push(FilterReport {
            name: names[i].clone(),
            file: chain.file_of(&names[i]),
            position: i,
            mean_ns: p.mean_ns,
            p50_ns: p.p50_ns,
            p99_ns: p.p99_ns,
            share_of_chain: 0.0,
            host_calls_per_request: costs.host_calls as f64 / profiled,
            memory_bytes: vm.map_or(0, |v| v.memory_bytes() as u64),
            vm: vm_index,
            callbacks: costs
                .callbacks
                .iter()
                .filter(|cb| cb.requests > 0)
                .map(|cb| {
                    let p = Percentiles::of(&cb.per_request);
                    CallbackReport {
                        callback: cb.callback.name(),
                        requests_share: cb.requests as f64 / profiled,
                        mean_ns: p.mean_ns,
                        p50_ns: p.p50_ns,
                        p99_ns: p.p99_ns,
                        host_calls_per_request: cb.host_calls as f64 / cb.requests as f64,
                    }
                })
                .collect(),
        });
    }
    let sum: f64 = filters.iter().map(|f| f.mean_ns).sum();
    for f in &mut filters {
        f.share_of_chain = if sum > 0.0 { f.mean_ns / sum } else { 0.0 };
    }
    filters.sort_by(|a, b| b.mean_ns.total_cmp(&a.mean_ns));

    let [tc, tb] = timed;
    let (lc, lb) = (tc.latency(), tb.latency());
    let mode = ModeReport {
        comparison: compare(&lc.round_means_ns, &lb.round_means_ns),
        chain: lc,
        baseline: lb,
        connections: None,
    };
    Ok((names, filters, mode))
}

/// Runs one block; returns its mean latency per request (ns).
async fn block(
    chain: &Listener,
    profile: &RequestProfile,
    cursor: &mut usize,
    budget: Budget,
    into: &mut Timed,
    collector: Option<&Collector>,
) -> f64 {
    let start = Instant::now();
    let deadline = match budget {
        Budget::Time(d) => Some(start + d),
        Budget::Requests(_) => None,
    };
    let (mut count, mut sum) = (0u64, 0u128);
    let mut now = start;
    let mut outcome_counts: BTreeMap<driver::Outcome, u64> = BTreeMap::new();
    loop {
        match budget {
            Budget::Requests(n) if count >= n => break,
            Budget::Time(_) if deadline.is_some_and(|d| now >= d) => break,
            _ => {}
        }
        let request = &profile.requests[*cursor % profile.requests.len()];
        *cursor += 1;
        let t = Instant::now();
        let outcome = exchange(chain, request, &profile.response).await;
        now = Instant::now();
        let ns = now.duration_since(t).as_nanos() as u64;
        if let Some(c) = collector {
            c.end_request();
        }
        into.histogram.saturating_record(ns.max(1));
        sum += ns as u128;
        count += 1;
        *outcome_counts.entry(outcome).or_default() += 1;
        if count % 128 == 0 {
            // Let the host's timers and queue notifications run.
            tokio::task::yield_now().await;
        }
    }
    into.wall += now.duration_since(start);
    into.requests += count;
    for (o, n) in outcome_counts {
        *into.outcomes.entry(o.label()).or_default() += n;
    }
    if count == 0 {
        0.0
    } else {
        sum as f64 / count as f64
    }
}
