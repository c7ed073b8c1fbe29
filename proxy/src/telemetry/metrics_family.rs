//! The store behind Istio's metrics: a family of series by label set, each series a set of
//! per-worker shards (`stats::Sharded`, summed at scrape), with a cap on how many series a
//! family may hold. Only a worker's cache miss and a scrape take the family's lock; recording
//! into a series is a few plain stores on the worker's own shard.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::stats::{Counter, Histogram, Sharded, merge_histograms};

/// Upper bounds of Istio's byte-size buckets (`istio_request_bytes`, `istio_response_bytes`).
pub const BYTE_BUCKETS: [f64; 9] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

/// A histogram of sizes in bytes, with [`BYTE_BUCKETS`].
#[derive(Default)]
pub struct ByteHistogram {
    buckets: [Counter; BYTE_BUCKETS.len()],
    count: Counter,
    sum: Counter,
}

impl ByteHistogram {
    pub fn record(&self, bytes: u64) {
        // Powers of ten: the bucket is the number of decimal digits past the first.
        let i = if bytes <= 1 {
            0
        } else {
            (bytes - 1).ilog10() as usize + 1
        };
        if let Some(b) = self.buckets.get(i) {
            b.inc();
        }
        self.count.inc();
        self.sum.add(bytes);
    }
}

/// Sums shards into (sum, count, per-bucket counts ending with `+Inf`).
fn merge_bytes<'a>(shards: impl Iterator<Item = &'a ByteHistogram>) -> (f64, u64, Vec<(f64, u64)>) {
    let (mut sum, mut count) = (0u64, 0u64);
    let mut per_bucket = [0u64; BYTE_BUCKETS.len()];
    for h in shards {
        sum = sum.wrapping_add(h.sum.get());
        count += h.count.get();
        for (acc, b) in per_bucket.iter_mut().zip(&h.buckets) {
            *acc += b.get();
        }
    }
    let buckets = crate::stats::with_overflow_bucket(&BYTE_BUCKETS, &per_bucket, count);
    (sum as f64, count, buckets)
}

/// One worker's part of an HTTP series.
#[derive(Default)]
pub struct HttpShard {
    requests: Counter,
    duration: Histogram,
    request_bytes: ByteHistogram,
    response_bytes: ByteHistogram,
}

impl HttpShard {
    pub fn record(&self, elapsed: Duration, request_bytes: u64, response_bytes: u64) {
        self.requests.inc();
        self.duration.record(elapsed);
        self.request_bytes.record(request_bytes);
        self.response_bytes.record(response_bytes);
    }
}

/// One worker's part of a TCP series.
#[derive(Default)]
pub struct TcpShard {
    pub sent: Counter,
    pub received: Counter,
    pub opened: Counter,
    pub closed: Counter,
}

pub type Series<S> = Arc<Sharded<S>>;

/// Series by label set, at most `cap` of them.
pub struct Family<L, S> {
    cap: usize,
    workers: usize,
    inner: Mutex<Inner<L, S>>,
}

struct Inner<L, S> {
    index: HashMap<L, usize>,
    /// In creation order, so that scrapes list series in a stable order.
    series: Vec<(L, Series<S>)>,
}

impl<L: Clone + Hash + Eq, S: Default> Family<L, S> {
    pub fn new(cap: usize, workers: usize) -> Self {
        Family {
            cap,
            workers,
            inner: Mutex::new(Inner {
                index: HashMap::new(),
                series: Vec::new(),
            }),
        }
    }

    /// The series of `labels`, made if new; none once the family holds `cap` series.
    pub fn get_or_create(&self, labels: L) -> Option<Series<S>> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&i) = inner.index.get(&labels) {
            return Some(inner.series[i].1.clone());
        }
        if inner.series.len() >= self.cap {
            return None;
        }
        let series = Arc::new(Sharded::new(self.workers));
        let i = inner.series.len();
        inner.index.insert(labels.clone(), i);
        inner.series.push((labels, series.clone()));
        Some(series)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .series
            .len()
    }

    /// The series as they are now (copied out, so a scrape holds the lock briefly).
    fn snapshot(&self) -> Vec<(L, Series<S>)> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .series
            .clone()
    }
}

/// Which of a family's metrics a registered view encodes.
#[derive(Clone, Copy, Debug)]
pub enum HttpMetric {
    Requests,
    Duration,
    RequestBytes,
    ResponseBytes,
}

#[derive(Clone, Copy, Debug)]
pub enum TcpMetric {
    Sent,
    Received,
    Opened,
    Closed,
}

/// One metric of a family, as prometheus-client's registry encodes it.
pub struct View<L, S, M> {
    pub family: Arc<Family<L, S>>,
    pub metric: M,
}

impl<L, S, M: std::fmt::Debug> std::fmt::Debug for View<L, S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("metric", &self.metric)
            .finish()
    }
}

fn counter(encoder: &mut MetricEncoder, labels: &impl EncodeLabelSet, v: u64) -> std::fmt::Result {
    encoder
        .encode_family(labels)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

impl<L> EncodeMetric for View<L, HttpShard, HttpMetric>
where
    L: Clone + Hash + Eq + EncodeLabelSet,
{
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        for (labels, series) in self.family.snapshot() {
            let (sum, count, buckets) = match self.metric {
                HttpMetric::Requests => {
                    counter(&mut encoder, &labels, series.sum(|s| s.requests.get()))?;
                    continue;
                }
                HttpMetric::Duration => merge_histograms(series.iter().map(|s| &s.duration)),
                HttpMetric::RequestBytes => merge_bytes(series.iter().map(|s| &s.request_bytes)),
                HttpMetric::ResponseBytes => merge_bytes(series.iter().map(|s| &s.response_bytes)),
            };
            encoder
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        match self.metric {
            HttpMetric::Requests => MetricType::Counter,
            _ => MetricType::Histogram,
        }
    }
}

impl<L> EncodeMetric for View<L, TcpShard, TcpMetric>
where
    L: Clone + Hash + Eq + EncodeLabelSet,
{
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        for (labels, series) in self.family.snapshot() {
            let value = match self.metric {
                TcpMetric::Sent => series.sum(|s| s.sent.get()),
                TcpMetric::Received => series.sum(|s| s.received.get()),
                TcpMetric::Opened => series.sum(|s| s.opened.get()),
                TcpMetric::Closed => series.sum(|s| s.closed.get()),
            };
            counter(&mut encoder, &labels, value)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A sharded counter without labels (`wasmesh_istio_series_overflow_total`).
#[derive(Clone)]
pub struct ShardedCounter(pub Arc<Sharded<Counter>>);

impl std::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedCounter").finish()
    }
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.0.sum(Counter::get), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_buckets_are_upper_bounds() {
        let h = ByteHistogram::default();
        for n in [0, 1, 2, 10, 11, 100, 1_000_000, 100_000_000, 100_000_001] {
            h.record(n);
        }
        let (sum, count, buckets) = merge_bytes(std::iter::once(&h));
        assert_eq!(count, 9);
        assert_eq!(sum, 201_000_125.0);
        let per: Vec<u64> = buckets.iter().map(|b| b.1).collect();
        // <=1: 0, 1; <=10: 2, 10; <=100: 11, 100; <=1e6: 1e6; <=1e8: 1e8; +Inf: 1e8+1.
        assert_eq!(per, [2, 2, 2, 0, 0, 0, 1, 0, 1, 1]);
    }

    #[test]
    fn a_full_family_makes_no_new_series_but_serves_old_ones() {
        let f: Family<u32, TcpShard> = Family::new(2, 1);
        let a = f.get_or_create(1).unwrap();
        assert!(f.get_or_create(2).is_some());
        assert!(f.get_or_create(3).is_none(), "past the cap");
        assert!(Arc::ptr_eq(&a, &f.get_or_create(1).unwrap()));
        assert_eq!(f.len(), 2);
    }
}
