//! A proxy's recent scrapes: Istio's series kept over a short window, and how much each grew
//! in it, counter resets counted as Prometheus' `increase()` counts them.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::text::Sample;

/// Istio's standard metrics the graph is drawn from.
pub const REQUESTS: &str = "istio_requests_total";
pub const DURATION_BUCKET: &str = "istio_request_duration_milliseconds_bucket";
pub const TCP_SENT: &str = "istio_tcp_sent_bytes_total";
pub const TCP_RECEIVED: &str = "istio_tcp_received_bytes_total";

/// Whether a scrape's sample is one the window keeps.
pub fn wanted(name: &str) -> bool {
    matches!(name, REQUESTS | DURATION_BUCKET | TCP_SENT | TCP_RECEIVED)
}

/// A series' labels, sorted by name, `le` left out: a request series and its duration
/// histogram share one.
pub type Labels = Arc<[(Box<str>, Box<str>)]>;

/// Look up a label of a set.
pub fn label<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels
        .binary_search_by(|(k, _)| (**k).cmp(name))
        .map_or("", |i| &labels[i].1)
}

/// What one scrape said of one label set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Point {
    pub requests: Option<f64>,
    /// The duration histogram's cumulative buckets, `(le, count)`, by `le`.
    pub buckets: Vec<(f64, f64)>,
    pub tcp_sent: Option<f64>,
    pub tcp_received: Option<f64>,
}

/// How much a label set's counters grew over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Increase {
    pub requests: f64,
    /// `(le, increase)`, by `le`.
    pub buckets: Vec<(f64, f64)>,
    pub tcp_bytes: f64,
}

/// A scrape's wanted samples grouped by label set.
pub fn group(samples: Vec<Sample>) -> HashMap<Labels, Point> {
    let mut groups: HashMap<Labels, Point> = HashMap::new();
    for s in samples {
        let mut le = None;
        let mut labels: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(s.labels.len());
        for (k, v) in s.labels {
            if k == "le" && s.name == DURATION_BUCKET {
                le = Some(v);
            } else {
                labels.push((k.into(), v.into()));
            }
        }
        labels.sort();
        let point = groups.entry(labels.into()).or_default();
        match s.name.as_str() {
            REQUESTS => point.requests = Some(s.value),
            TCP_SENT => point.tcp_sent = Some(s.value),
            TCP_RECEIVED => point.tcp_received = Some(s.value),
            DURATION_BUCKET => {
                // A bucket without a readable bound cannot be placed: left out.
                if let Some(le) = le.and_then(|le| le.parse::<f64>().ok())
                    && !le.is_nan()
                {
                    point.buckets.push((le, s.value));
                }
            }
            _ => {}
        }
    }
    for point in groups.values_mut() {
        point.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    groups
}

/// One proxy's scrapes over the last `window`.
#[derive(Debug)]
pub struct ProxyWindow {
    window: Duration,
    /// When each successful scrape in the window was taken, oldest first.
    scrapes: VecDeque<Instant>,
    series: HashMap<Labels, VecDeque<(Instant, Point)>>,
}

/// At most this many label sets are kept per proxy: a proxy that reports more (a peer per
/// request, a response code per path) costs the control plane no more than this.
pub const MAX_SERIES: usize = 5000;

impl ProxyWindow {
    pub fn new(window: Duration) -> ProxyWindow {
        ProxyWindow {
            window,
            scrapes: VecDeque::new(),
            series: HashMap::new(),
        }
    }

    /// Adds a scrape taken `at`; forgets what is older than the window.
    pub fn record(&mut self, at: Instant, groups: HashMap<Labels, Point>) {
        self.scrapes.push_back(at);
        for (labels, point) in groups {
            let full = self.series.len() >= MAX_SERIES;
            match self.series.entry(labels) {
                Entry::Occupied(mut points) => points.get_mut().push_back((at, point)),
                Entry::Vacant(new) if !full => {
                    new.insert(VecDeque::from([(at, point)]));
                }
                Entry::Vacant(_) => {}
            }
        }
        let oldest = at.checked_sub(self.window).unwrap_or(at);
        while self.scrapes.front().is_some_and(|t| *t < oldest) {
            self.scrapes.pop_front();
        }
        self.series.retain(|_, points| {
            while points.front().is_some_and(|(t, _)| *t < oldest) {
                points.pop_front();
            }
            !points.is_empty()
        });
    }

    /// The time the window's scrapes cover (zero with fewer than two).
    pub fn span(&self) -> Duration {
        match (self.scrapes.front(), self.scrapes.back()) {
            (Some(first), Some(last)) => last.duration_since(*first),
            _ => Duration::ZERO,
        }
    }

    /// When the last successful scrape was taken.
    pub fn last_scrape(&self) -> Option<Instant> {
        self.scrapes.back().copied()
    }

    /// Every label set in the window.
    pub fn labels(&self) -> impl Iterator<Item = &Labels> {
        self.series.keys()
    }

    /// How much each label set grew over the window. A counter that went down was reset (the
    /// proxy restarted): it grew by its new value. A series that a scrape in the window did
    /// not have yet was born since, at zero: its first value counts too.
    pub fn increases(&self) -> impl Iterator<Item = (&Labels, Increase)> {
        let first_scrape = self.scrapes.front().copied();
        self.series.iter().map(move |(labels, points)| {
            let born = first_scrape.is_some_and(|f| points.front().is_some_and(|(t, _)| f < *t));
            let counter = |get: &dyn Fn(&Point) -> Option<f64>| {
                increase(points.iter().filter_map(|(_, p)| get(p)), born)
            };
            let mut bounds: Vec<f64> = points
                .iter()
                .flat_map(|(_, p)| p.buckets.iter().map(|(le, _)| *le))
                .collect();
            bounds.sort_by(f64::total_cmp);
            bounds.dedup();
            let buckets = bounds
                .into_iter()
                .map(|le| {
                    let count = |p: &Point| {
                        p.buckets
                            .iter()
                            .find(|(l, _)| *l == le)
                            .map(|(_, count)| *count)
                    };
                    (le, counter(&count))
                })
                .collect();
            let increase = Increase {
                requests: counter(&|p| p.requests),
                buckets,
                tcp_bytes: counter(&|p| p.tcp_sent) + counter(&|p| p.tcp_received),
            };
            (labels, increase)
        })
    }
}

/// What a counter's values (oldest first) grew by, from zero if `from_zero`; a drop is a reset.
fn increase(values: impl Iterator<Item = f64>, from_zero: bool) -> f64 {
    let mut previous = from_zero.then_some(0.0);
    let mut sum = 0.0;
    for v in values {
        if let Some(p) = previous {
            sum += if v >= p { v - p } else { v };
        }
        previous = Some(v);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::text::parse;

    fn scrape(requests: f64, buckets: &[(&str, f64)]) -> HashMap<Labels, Point> {
        let mut text = format!(
            "istio_requests_total{{reporter=\"destination\",response_code=\"200\"}} {requests}\n"
        );
        for (le, count) in buckets {
            text += &format!(
                "istio_request_duration_milliseconds_bucket{{response_code=\"200\",le=\"{le}\",reporter=\"destination\"}} {count}\n"
            );
        }
        text += "istio_request_duration_milliseconds_sum{reporter=\"destination\"} 3\n";
        group(parse(&text, wanted).unwrap())
    }

    fn only(window: &ProxyWindow) -> Increase {
        let all: Vec<_> = window.increases().collect();
        assert_eq!(all.len(), 1, "{all:?}");
        all[0].1.clone()
    }

    #[test]
    fn a_request_series_and_its_histogram_share_a_label_set_without_le() {
        let groups = scrape(5.0, &[("10", 2.0), ("+Inf", 5.0), ("1", 1.0)]);
        assert_eq!(groups.len(), 1);
        let (labels, point) = groups.into_iter().next().unwrap();
        assert_eq!(label(&labels, "reporter"), "destination");
        assert_eq!(label(&labels, "le"), "");
        assert_eq!(point.requests, Some(5.0));
        assert_eq!(
            point.buckets,
            [(1.0, 1.0), (10.0, 2.0), (f64::INFINITY, 5.0)]
        );
    }

    #[test]
    fn counters_grow_over_the_window_and_old_scrapes_are_forgotten() {
        let t0 = Instant::now();
        let mut w = ProxyWindow::new(Duration::from_secs(10));
        w.record(t0, scrape(100.0, &[("+Inf", 100.0)]));
        assert_eq!(only(&w).requests, 0.0, "one scrape: no increase yet");
        w.record(
            t0 + Duration::from_secs(5),
            scrape(110.0, &[("+Inf", 110.0)]),
        );
        w.record(
            t0 + Duration::from_secs(10),
            scrape(130.0, &[("+Inf", 130.0)]),
        );
        assert_eq!(w.span(), Duration::from_secs(10));
        assert_eq!(only(&w).requests, 30.0);
        assert_eq!(only(&w).buckets, [(f64::INFINITY, 30.0)]);
        // The first scrape falls out of the window.
        w.record(
            t0 + Duration::from_secs(15),
            scrape(131.0, &[("+Inf", 131.0)]),
        );
        assert_eq!(w.span(), Duration::from_secs(10));
        assert_eq!(only(&w).requests, 21.0);
    }

    #[test]
    fn a_counter_reset_counts_the_new_value_as_prometheus_does() {
        let t0 = Instant::now();
        let mut w = ProxyWindow::new(Duration::from_secs(60));
        w.record(t0, scrape(100.0, &[]));
        w.record(t0 + Duration::from_secs(5), scrape(120.0, &[]));
        // The proxy restarted: its counter started again from zero.
        w.record(t0 + Duration::from_secs(10), scrape(7.0, &[]));
        w.record(t0 + Duration::from_secs(15), scrape(10.0, &[]));
        assert_eq!(only(&w).requests, 20.0 + 7.0 + 3.0);
    }

    #[test]
    fn a_series_born_after_a_scrape_of_the_window_counts_from_zero() {
        let t0 = Instant::now();
        let mut w = ProxyWindow::new(Duration::from_secs(60));
        w.record(t0, HashMap::new());
        w.record(t0 + Duration::from_secs(5), scrape(4.0, &[("+Inf", 4.0)]));
        assert_eq!(only(&w).requests, 4.0);
        assert_eq!(only(&w).buckets, [(f64::INFINITY, 4.0)]);
        // Without an earlier scrape, where it started is unknown: counted from its first value.
        let mut w = ProxyWindow::new(Duration::from_secs(60));
        w.record(t0, scrape(4.0, &[]));
        w.record(t0 + Duration::from_secs(5), scrape(6.0, &[]));
        assert_eq!(only(&w).requests, 2.0);
    }

    #[test]
    fn the_label_sets_kept_are_bounded() {
        let mut w = ProxyWindow::new(Duration::from_secs(60));
        let text: String = (0..MAX_SERIES + 10)
            .map(|i| format!("istio_requests_total{{peer=\"p{i}\"}} 1\n"))
            .collect();
        w.record(Instant::now(), group(parse(&text, wanted).unwrap()));
        assert_eq!(w.labels().count(), MAX_SERIES);
    }
}
