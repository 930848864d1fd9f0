//! Latency recording and percentiles, on an HDR histogram.
//!
//! Recording is a bounded-memory bucket increment (no per-sample allocation),
//! so it can sit on the hot path of a million-entries-per-second workload.
//! Values are nanoseconds with three significant digits; summaries are in
//! microseconds because that is the scale a durable write lives at.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Smallest recordable latency.
const LATENCY_NS_MIN: u64 = 1;
/// Largest recordable latency (longer values saturate here).
const LATENCY_NS_MAX: u64 = 60 * 1_000_000_000;
/// Significant decimal digits the histogram keeps.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Collects latencies of one workload.
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    /// An empty recorder covering 1 ns to 60 s.
    pub fn new() -> Self {
        let histogram =
            Histogram::new_with_bounds(LATENCY_NS_MIN, LATENCY_NS_MAX, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid");
        Self { histogram }
    }

    /// Records one latency (saturating at the histogram's bounds).
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(ns.max(LATENCY_NS_MIN));
    }

    /// Number of samples recorded.
    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    /// Adds every sample of `other` (e.g. one writer thread's) to this one.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Both histograms have the same bounds, so adding cannot fail.
        self.histogram
            .add(&other.histogram)
            .expect("recorders share their bounds");
    }

    /// Percentiles and extremes of what was recorded.
    pub fn summary(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1e3;
        let h = &self.histogram;
        LatencySummary {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1e3,
        }
    }
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_samples() {
        let mut recorder = LatencyRecorder::new();
        for us in 1..=1000u64 {
            recorder.record(Duration::from_micros(us));
        }
        let summary = recorder.summary();
        assert_eq!(summary.samples, 1000);
        assert!((summary.p50_us - 500.0).abs() < 1.0, "{summary:?}");
        assert!((summary.p99_us - 990.0).abs() < 1.0, "{summary:?}");
        assert!((summary.max_us - 1000.0).abs() < 1.0, "{summary:?}");
    }
}
