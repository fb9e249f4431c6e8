//! What a load run counts: answers by status and error code, and latencies in an HDR histogram.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The longest latency (µs) the histogram resolves; slower answers are recorded as this value
/// (the HTTP client gives up at [`crate::api::REQUEST_TIMEOUT`], well below it).
const MAX_TRACKED_LATENCY_US: u64 = 120_000_000;
/// Significant decimal digits the histogram keeps: 3 means a recorded value is within 0.1%.
const HISTOGRAM_PRECISION: u8 = 3;
/// The `by_status` key for a request that got no HTTP answer (refused, reset, timed out).
pub const NO_ANSWER: &str = "no_answer";

/// One measured request as the load driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status, or `None` when no answer arrived.
    pub status: Option<u16>,
    /// The `code` of an error body (`OUT_OF_STOCK`, `SOLD_OUT`, …), when there is one.
    pub code: Option<String>,
}

impl Reply {
    /// A 2xx answer.
    pub fn is_success(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// Running counts of one load run; tallies of concurrent workers merge into one.
#[derive(Debug, Clone)]
pub struct Tally {
    latency_us: Histogram<u64>,
    requests: u64,
    succeeded: u64,
    by_status: BTreeMap<String, u64>,
    by_code: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

impl Tally {
    pub fn new() -> Self {
        let latency_us = Histogram::new_with_bounds(1, MAX_TRACKED_LATENCY_US, HISTOGRAM_PRECISION)
            .expect("constant histogram bounds are valid (checked by the unit tests)");
        Self {
            latency_us,
            requests: 0,
            succeeded: 0,
            by_status: BTreeMap::new(),
            by_code: BTreeMap::new(),
        }
    }

    /// Counts one request and its latency.
    pub fn record(&mut self, reply: &Reply, latency: Duration) {
        self.requests += 1;
        if reply.is_success() {
            self.succeeded += 1;
        }
        let status = reply
            .status
            .map_or_else(|| NO_ANSWER.to_owned(), |s| s.to_string());
        *self.by_status.entry(status).or_default() += 1;
        if let Some(code) = &reply.code {
            *self.by_code.entry(code.clone()).or_default() += 1;
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
    }

    /// Adds another tally's counts to this one.
    pub fn merge(&mut self, other: &Self) {
        self.requests += other.requests;
        self.succeeded += other.succeeded;
        for (k, v) in &other.by_status {
            *self.by_status.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.by_code {
            *self.by_code.entry(k.clone()).or_default() += v;
        }
        // Same bounds on both sides, so adding cannot fail; if it ever did, the counts above
        // would still be right and only the percentiles would miss the other tally.
        let _ = self.latency_us.add(&other.latency_us);
    }

    pub fn requests(&self) -> u64 {
        self.requests
    }

    pub fn succeeded(&self) -> u64 {
        self.succeeded
    }

    pub fn by_status(&self) -> &BTreeMap<String, u64> {
        &self.by_status
    }

    pub fn by_code(&self) -> &BTreeMap<String, u64> {
        &self.by_code
    }

    /// Percentiles of the recorded latencies (all zero when nothing was recorded).
    pub fn latency(&self) -> LatencySummary {
        let ms = |micros: u64| micros as f64 / 1_000.0;
        if self.latency_us.is_empty() {
            return LatencySummary {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        let h = &self.latency_us;
        LatencySummary {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1_000.0,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reply(status: u16, code: Option<&str>) -> Reply {
        Reply {
            status: Some(status),
            code: code.map(str::to_owned),
        }
    }

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut tally = Tally::new();
        for ms in 1..=1_000 {
            tally.record(&reply(200, None), Duration::from_millis(ms));
        }
        let l = tally.latency();
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002;
        assert!(close(l.p50, 500.0), "{l:?}");
        assert!(close(l.p90, 900.0), "{l:?}");
        assert!(close(l.p99, 990.0), "{l:?}");
        assert!(close(l.p999, 999.0), "{l:?}");
        assert!(close(l.max, 1_000.0), "{l:?}");
        assert!(close(l.mean, 500.5), "{l:?}");
    }

    #[test]
    fn answers_are_counted_by_status_and_code() {
        let mut tally = Tally::new();
        tally.record(&reply(201, None), Duration::from_millis(2));
        tally.record(&reply(409, Some("OUT_OF_STOCK")), Duration::from_millis(1));
        tally.record(&reply(409, Some("OUT_OF_STOCK")), Duration::from_millis(1));
        tally.record(
            &Reply {
                status: None,
                code: None,
            },
            Duration::from_secs(30),
        );
        assert_eq!(tally.requests(), 4);
        assert_eq!(tally.succeeded(), 1);
        assert_eq!(tally.by_status()["201"], 1);
        assert_eq!(tally.by_status()["409"], 2);
        assert_eq!(tally.by_status()[NO_ANSWER], 1);
        assert_eq!(tally.by_code()["OUT_OF_STOCK"], 2);
    }

    #[test]
    fn latencies_beyond_the_tracked_range_are_kept_at_the_top() {
        let mut tally = Tally::new();
        tally.record(
            &reply(200, None),
            Duration::from_micros(MAX_TRACKED_LATENCY_US * 10),
        );
        tally.record(&reply(200, None), Duration::ZERO);
        let l = tally.latency();
        assert!(
            l.max >= MAX_TRACKED_LATENCY_US as f64 / 1_000.0 * 0.999,
            "{l:?}"
        );
        assert_eq!(tally.requests(), 2);
    }

    #[test]
    fn merged_tallies_add_up() {
        let mut a = Tally::new();
        let mut b = Tally::new();
        for _ in 0..10 {
            a.record(&reply(201, None), Duration::from_millis(1));
            b.record(&reply(409, Some("SOLD_OUT")), Duration::from_millis(100));
        }
        a.merge(&b);
        assert_eq!(a.requests(), 20);
        assert_eq!(a.succeeded(), 10);
        assert_eq!(a.by_code()["SOLD_OUT"], 10);
        let l = a.latency();
        assert!(l.p50 < 2.0 && l.p99 > 99.0, "{l:?}");
    }

    #[test]
    fn an_empty_tally_reports_zeros() {
        let l = Tally::new().latency();
        assert_eq!((l.p50, l.p99, l.max), (0.0, 0.0, 0.0));
    }
}
