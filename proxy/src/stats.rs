//! Counters written on the request path without locks, read by the admin server.
//!
//! Every hot counter is sharded by worker: a worker only writes its own cache-padded shard, so
//! increments never bounce a cache line between cores; a scrape sums the shards.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

thread_local! {
    static WORKER_INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `index`; shards are chosen by it.
pub fn set_worker_index(index: usize) {
    WORKER_INDEX.with(|w| w.set(index));
}

fn worker_index() -> usize {
    WORKER_INDEX.with(Cell::get)
}

#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// One `T` per worker.
pub struct Sharded<T> {
    shards: Box<[Padded<T>]>,
}

impl<T: Default> Sharded<T> {
    pub fn new(workers: usize) -> Self {
        Sharded {
            shards: (0..workers.max(1)).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> Sharded<T> {
    /// The current worker's shard (shard 0 off the workers).
    pub fn local(&self) -> &T {
        &self.shards[worker_index() % self.shards.len()].0
    }

    pub fn sum(&self, f: impl Fn(&T) -> u64) -> u64 {
        self.shards.iter().map(|s| f(&s.0)).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|s| &s.0)
    }
}

/// A counter with one writer (the worker owning its shard) and any number of readers.
/// A plain load and store suffice: no read-modify-write, so no locked instruction per count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds in milliseconds of the latency histogram buckets (Istio's defaults).
pub const LATENCY_BUCKETS_MS: [f64; 14] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 60000.0,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    buckets: [Counter; LATENCY_BUCKETS_MS.len()],
    count: Counter,
    sum_micros: Counter,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        if let Some(i) = LATENCY_BUCKETS_MS.iter().position(|b| ms <= *b) {
            self.buckets[i].inc();
        }
        self.count.inc();
        self.sum_micros.add(d.as_micros() as u64);
    }
}

/// Sums histogram shards into (sum in ms, count, per-bucket counts ending with `+Inf`).
/// The encoder makes the buckets cumulative.
pub fn merge_histograms<'a>(
    shards: impl Iterator<Item = &'a Histogram>,
) -> (f64, u64, Vec<(f64, u64)>) {
    let mut sum_micros = 0;
    let mut count = 0;
    let mut per_bucket = [0u64; LATENCY_BUCKETS_MS.len()];
    for h in shards {
        sum_micros += h.sum_micros.get();
        count += h.count.get();
        for (acc, b) in per_bucket.iter_mut().zip(&h.buckets) {
            *acc += b.get();
        }
    }
    let buckets = with_overflow_bucket(&LATENCY_BUCKETS_MS, &per_bucket, count);
    (sum_micros as f64 / 1000.0, count, buckets)
}

/// Pairs each bucket's upper bound with its count, adding `+Inf` for what none holds.
pub fn with_overflow_bucket(bounds: &[f64], per_bucket: &[u64], count: u64) -> Vec<(f64, u64)> {
    let finite: u64 = per_bucket.iter().sum();
    bounds
        .iter()
        .copied()
        .zip(per_bucket.iter().copied())
        .chain(std::iter::once((
            f64::INFINITY,
            count.saturating_sub(finite),
        )))
        .collect()
}

pub use wasmesh_host::ResponseFlag;

/// A small set of response flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    pub fn insert(&mut self, flag: ResponseFlag) {
        self.0 |= 1 << flag as u16;
    }
    pub fn contains(self, flag: ResponseFlag) -> bool {
        self.0 & (1 << flag as u16) != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = ResponseFlag> {
        ResponseFlag::ALL
            .into_iter()
            .filter(move |f| self.contains(*f))
    }
}

impl std::fmt::Display for ResponseFlags {
    /// `-` when empty, else codes joined by `,` (Envoy's `%RESPONSE_FLAGS%`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, flag) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(flag.code())?;
        }
        Ok(())
    }
}

/// Per-listener downstream counters (one shard per worker).
pub struct ListenerStats {
    /// Shared, not copied: every filtered request hands it to its filters.
    pub name: std::sync::Arc<str>,
    pub shards: Sharded<ListenerShard>,
}

pub struct ListenerShard {
    pub cx_total: Counter,
    pub cx_closed: Counter,
    pub cx_overflow: Counter,
    /// Requests by exact response code (index = code, 0..600).
    pub rq_by_code: Box<[Counter]>,
    pub rq_time: Histogram,
    pub flags: [Counter; ResponseFlag::ALL.len()],
    /// Requests rejected before routing (smuggling shapes, bad framing).
    pub rq_rejected: Counter,
    /// Connections sent away for resetting too many streams early (Envoy's
    /// `downstream_rq_too_many_premature_resets`).
    pub rq_too_many_premature_resets: Counter,
    /// HTTP/2 connections sent away for flooding PING or SETTINGS frames.
    pub cx_control_frame_flood: Counter,
    /// TLS handshakes completed (Envoy's `ssl.handshake`).
    pub tls_handshake: Counter,
    /// TLS handshakes that failed or timed out (Envoy's `ssl.connection_error`).
    pub tls_error: Counter,
    /// Plaintext connections refused by a STRICT listener, or answered `400` by a gateway's
    /// `simple`/`mutual`/`sni_routes` one.
    pub tls_plaintext_refused: Counter,
}

impl Default for ListenerShard {
    fn default() -> Self {
        ListenerShard {
            cx_total: Counter::default(),
            cx_closed: Counter::default(),
            cx_overflow: Counter::default(),
            rq_by_code: (0..600).map(|_| Counter::default()).collect(),
            rq_time: Histogram::default(),
            flags: Default::default(),
            rq_rejected: Counter::default(),
            rq_too_many_premature_resets: Counter::default(),
            cx_control_frame_flood: Counter::default(),
            tls_handshake: Counter::default(),
            tls_error: Counter::default(),
            tls_plaintext_refused: Counter::default(),
        }
    }
}

impl ListenerStats {
    pub fn new(name: &str, workers: usize) -> Self {
        ListenerStats {
            name: name.into(),
            shards: Sharded::new(workers),
        }
    }

    /// Records a finished request on the current worker's shard.
    pub fn record_request(&self, status: u16, flags: ResponseFlags, elapsed: Duration) {
        let shard = self.shards.local();
        if let Some(c) = shard.rq_by_code.get(status as usize) {
            c.inc();
        }
        shard.rq_time.record(elapsed);
        for flag in flags.iter() {
            shard.flags[flag as usize].inc();
        }
    }
}

/// Per-cluster upstream counters (one shard per worker).
#[derive(Default)]
pub struct ClusterShard {
    pub rq_total: Counter,
    /// Responses by class: index 1 = 1xx ... 5 = 5xx.
    pub rq_by_class: [Counter; 6],
    pub cx_total: Counter,
    pub cx_connect_fail: Counter,
    pub cx_connect_timeout: Counter,
    pub cx_overflow: Counter,
    pub rq_pending_overflow: Counter,
    pub rq_overflow: Counter,
    pub rq_timeout: Counter,
    pub rq_per_try_timeout: Counter,
    pub rq_retry: Counter,
    pub rq_retry_success: Counter,
    pub rq_retry_overflow: Counter,
    pub rq_retry_limit_exceeded: Counter,
    pub rq_reset: Counter,
}
