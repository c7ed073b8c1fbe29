//! Latency summaries and the comparison of a chain with its baseline.
//!
//! The verdict rule: the chain and the baseline run alternately in R rounds, and each round
//! gives one mean latency per request for each. The two sets of R means are compared with
//! Welch's t-test: the chain is called `slower` or `faster` only when the difference of the
//! means is significant at the 99% level (two-sided, Welch-Satterthwaite degrees of freedom);
//! otherwise the verdict is `no significant difference`. With fewer than 2 rounds there is no
//! verdict. The ratio's 99% confidence interval comes from the same test.

use hdrhistogram::Histogram;
use serde::Serialize;

/// How the verdict is reached, for the help text and the report.
pub const VERDICT_RULE: &str = "chain and baseline alternate over the rounds; the verdict is \
`slower` or `faster` only if Welch's t-test on the per-round mean latencies finds the \
difference significant at 99% (two-sided), else `no significant difference`";

/// A histogram of nanoseconds (1 ns to 100 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            mean_ns: h.mean(),
            p50_ns: h.value_at_quantile(0.5),
            p90_ns: h.value_at_quantile(0.9),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }
}

/// The chain against its baseline.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Mean latency of the chain over the baseline's.
    pub ratio: f64,
    /// 99% confidence interval of the ratio (`null` with fewer than 2 rounds).
    pub ratio_ci99: Option<[f64; 2]>,
    /// Chain minus baseline, mean latency per request.
    pub difference_ns: f64,
    /// Welch's t statistic and degrees of freedom.
    pub t: Option<f64>,
    pub df: Option<f64>,
    /// `slower`, `faster`, `no significant difference`, or `no verdict (fewer than 2 rounds)`.
    pub verdict: String,
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn variance(xs: &[f64]) -> f64 {
    let m = mean(xs);
    xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() as f64 - 1.0)
}

/// Compares the per-round means of a chain with its baseline's.
pub fn compare(chain: &[f64], baseline: &[f64]) -> Comparison {
    let (mc, mb) = (mean(chain), mean(baseline));
    let ratio = if mb > 0.0 { mc / mb } else { f64::INFINITY };
    let difference_ns = mc - mb;
    if chain.len() < 2 || baseline.len() < 2 {
        return Comparison {
            ratio,
            ratio_ci99: None,
            difference_ns,
            t: None,
            df: None,
            verdict: "no verdict (fewer than 2 rounds)".into(),
        };
    }
    let (vc, vb) = (
        variance(chain) / chain.len() as f64,
        variance(baseline) / baseline.len() as f64,
    );
    let se = (vc + vb).sqrt();
    let df = if se > 0.0 {
        (vc + vb).powi(2)
            / (vc * vc / (chain.len() as f64 - 1.0) + vb * vb / (baseline.len() as f64 - 1.0))
    } else {
        (chain.len() + baseline.len() - 2) as f64
    };
    let critical = t_critical_99(df);
    let t = if se > 0.0 {
        difference_ns / se
    } else if difference_ns == 0.0 {
        0.0
    } else {
        difference_ns.signum() * f64::INFINITY
    };
    let verdict = if t.abs() > critical {
        if difference_ns > 0.0 {
            "slower"
        } else {
            "faster"
        }
    } else {
        "no significant difference"
    };
    let ci = (mb > 0.0).then(|| {
        [
            (difference_ns - critical * se) / mb + 1.0,
            (difference_ns + critical * se) / mb + 1.0,
        ]
    });
    Comparison {
        ratio,
        ratio_ci99: ci,
        difference_ns,
        t: Some(t),
        df: Some(df),
        verdict: verdict.into(),
    }
}

/// The two-sided 99% critical value of Student's t with `df` degrees of freedom.
pub fn t_critical_99(df: f64) -> f64 {
    // t(0.995, df) for df = 1..=30.
    const TABLE: [f64; 30] = [
        63.657, 9.925, 5.841, 4.604, 4.032, 3.707, 3.499, 3.355, 3.250, 3.169, 3.106, 3.055, 3.012,
        2.977, 2.947, 2.921, 2.898, 2.878, 2.861, 2.845, 2.831, 2.819, 2.807, 2.797, 2.787, 2.779,
        2.771, 2.763, 2.756, 2.750,
    ];
    // Beyond 30, linear in 1/df through 40, 60, 120 and infinity.
    const TAIL: [(f64, f64); 4] = [(30.0, 2.750), (40.0, 2.704), (60.0, 2.660), (120.0, 2.617)];
    if !df.is_finite() || df <= 1.0 {
        return if df.is_finite() { TABLE[0] } else { 2.576 };
    }
    if df <= 30.0 {
        let lo = df.floor() as usize;
        let frac = df - lo as f64;
        let a = TABLE[lo - 1];
        let b = TABLE[lo.min(29)];
        return a + (b - a) * frac;
    }
    let inv = 1.0 / df;
    for w in TAIL.windows(2) {
        let ((d0, t0), (d1, t1)) = (w[0], w[1]);
        if df <= d1 {
            let f = (1.0 / d0 - inv) / (1.0 / d0 - 1.0 / d1);
            return t0 + (t1 - t0) * f;
        }
    }
    let (d0, t0) = TAIL[3];
    t0 + (2.576 - t0) * (1.0 / d0 - inv) / (1.0 / d0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_values() {
        assert!((t_critical_99(10.0) - 3.169).abs() < 1e-9);
        assert!((t_critical_99(10.5) - 3.1375).abs() < 1e-3);
        assert!(t_critical_99(1000.0) > 2.576 && t_critical_99(1000.0) < 2.6);
        assert!(t_critical_99(45.0) < 2.704 && t_critical_99(45.0) > 2.66);
    }

    #[test]
    fn verdicts() {
        let base = [100.0, 101.0, 99.0, 100.5, 99.5];
        let slow = [150.0, 151.0, 149.0, 150.5, 149.5];
        assert_eq!(compare(&slow, &base).verdict, "slower");
        assert_eq!(compare(&base, &slow).verdict, "faster");
        let same = [100.2, 100.9, 99.1, 100.4, 99.6];
        assert_eq!(compare(&same, &base).verdict, "no significant difference");
        assert!(compare(&[1.0], &[2.0]).verdict.starts_with("no verdict"));
        let c = compare(&slow, &base);
        let [lo, hi] = c.ratio_ci99.unwrap();
        assert!(lo < 1.5 && 1.5 < hi && lo > 1.4, "{lo} {hi}");
    }
}
