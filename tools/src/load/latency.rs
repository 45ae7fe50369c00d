//! Latency histograms (HdrHistogram, microseconds) and the summary the bench and the sink
//! report: p50, p99, p999 and max.

use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The largest latency a histogram tells apart: one hour. Longer ones count as one hour.
const HIGHEST_US: u64 = 3_600_000_000;

/// An empty histogram of microseconds, 3 significant figures, up to one hour.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

/// Records one latency (saturating at the histogram's top).
pub fn record(h: &mut Histogram<u64>, latency: Duration) {
    h.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
}

/// Nanoseconds since the Unix epoch by the wall clock (0 before 1970): the bench stamps
/// segments with it and the sink reads the same clock, so both must share one host (or
/// synchronized clocks).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Percentiles of a histogram, in microseconds (all 0 when it is empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        // hdrhistogram reports a bucket's highest equivalent value; the max is clamped to
        // it too, so p999 <= max holds.
        Percentiles {
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// A latency histogram's summary: what the sink's `GET /latency` returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Latencies recorded.
    pub count: u64,
    #[serde(flatten)]
    pub percentiles: Percentiles,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        LatencySummary {
            count: h.len(),
            percentiles: Percentiles::of(h),
        }
    }
}

/// `p50 1.2 ms, p99 3.4 ms, p999 5.6 ms, max 7.8 ms`.
pub fn render(p: &Percentiles) -> String {
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    format!(
        "p50 {}, p99 {}, p999 {}, max {}",
        ms(p.p50_us),
        ms(p.p99_us),
        ms(p.p999_us),
        ms(p.max_us)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_histogram_summarises_to_zeros() {
        assert_eq!(LatencySummary::of(&histogram()), LatencySummary::default());
    }

    #[test]
    fn percentiles_are_ordered_and_within_precision() {
        let mut h = histogram();
        for us in 1..=10_000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 10_000);
        let p = s.percentiles;
        assert!(p.p50_us <= p.p99_us && p.p99_us <= p.p999_us && p.p999_us <= p.max_us);
        // 3 significant figures: within 0.1 % of the exact value.
        assert!(p.p50_us.abs_diff(5_000) <= 5, "{p:?}");
        assert!(p.p99_us.abs_diff(9_900) <= 10, "{p:?}");
        assert!(p.max_us.abs_diff(10_000) <= 10, "{p:?}");
    }

    #[test]
    fn latencies_beyond_an_hour_saturate() {
        let mut h = histogram();
        record(&mut h, Duration::from_secs(10 * 3600));
        assert_eq!(h.len(), 1);
        assert!(h.max() >= HIGHEST_US);
    }

    #[test]
    fn the_summary_is_flat_json() {
        let s = LatencySummary {
            count: 3,
            percentiles: Percentiles {
                p50_us: 1,
                p99_us: 2,
                p999_us: 3,
                max_us: 4,
            },
        };
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"count": 3, "p50_us": 1, "p99_us": 2, "p999_us": 3, "max_us": 4})
        );
        assert_eq!(serde_json::from_value::<LatencySummary>(json).unwrap(), s);
    }
}
