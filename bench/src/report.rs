//! The report of a run: built from a measurement, printed as text or as one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::driver::{Measurement, Pacing};
use crate::invariants::{InvariantCheck, all_ok};
use crate::scenarios::SetupSummary;
use crate::stats::LatencySummary;

/// Everything one run found. `compare` and `--plot` build several and set them side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub url: String,
    pub seed: u64,
    pub pacing: Pacing,
    /// Requests answered (or given up on) in the measured phase.
    pub requests: u64,
    /// Of those, 2xx answers.
    pub succeeded: u64,
    /// Answers by HTTP status; `no_answer` for requests that got none.
    pub by_status: BTreeMap<String, u64>,
    /// Error answers by their body's `code`.
    pub by_code: BTreeMap<String, u64>,
    /// `requests / duration_s`.
    pub throughput_rps: f64,
    pub latency_ms: LatencySummary,
    /// Length of the measured phase.
    pub duration_s: f64,
    /// Length of set-up (members, items, coupons), not part of the measured phase.
    pub setup_s: f64,
    pub setup: SetupSummary,
    /// Whether every invariant held (true when the scenario has none).
    pub invariants_ok: bool,
    pub invariants: Vec<InvariantCheck>,
    /// The HTTP ceiling measured after the run, unless `--no-ceiling`.
    pub ceiling: Option<Ceiling>,
    /// The open-loop steps of `--plot` (empty otherwise); the fields above are the last step's.
    pub load_steps: Vec<LoadStep>,
}

/// `GET /health/live` by the same tool on the same machine: what the HTTP stack can do at all.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub throughput_rps: f64,
    pub latency_ms: LatencySummary,
    pub duration_s: f64,
    pub concurrency: usize,
    /// The run's `throughput_rps` divided by the ceiling's.
    pub run_fraction: f64,
}

/// One offered load of `--plot`.
#[derive(Debug, Clone, Serialize)]
pub struct LoadStep {
    pub offered_rps: f64,
    pub throughput_rps: f64,
    pub requests: u64,
    pub succeeded: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_code: BTreeMap<String, u64>,
    pub latency_ms: LatencySummary,
    pub invariants_ok: bool,
}

impl Report {
    pub fn new(
        scenario: &'static str,
        url: &str,
        seed: u64,
        pacing: Pacing,
        measurement: &Measurement,
        setup: (Duration, SetupSummary),
        invariants: Vec<InvariantCheck>,
    ) -> Self {
        let tally = &measurement.tally;
        let duration_s = measurement.elapsed.as_secs_f64();
        Self {
            scenario,
            url: url.to_owned(),
            seed,
            pacing,
            requests: tally.requests(),
            succeeded: tally.succeeded(),
            by_status: tally.by_status().clone(),
            by_code: tally.by_code().clone(),
            throughput_rps: rate(tally.requests(), duration_s),
            latency_ms: tally.latency(),
            duration_s,
            setup_s: setup.0.as_secs_f64(),
            setup: setup.1,
            invariants_ok: all_ok(&invariants),
            invariants,
            ceiling: None,
            load_steps: Vec::new(),
        }
    }

    /// Sets the ceiling measured with `concurrency` connections, and this run's share of it.
    pub fn set_ceiling(&mut self, measurement: &Measurement, concurrency: usize) {
        let duration_s = measurement.elapsed.as_secs_f64();
        let ceiling_rps = rate(measurement.tally.requests(), duration_s);
        self.ceiling = Some(Ceiling {
            throughput_rps: ceiling_rps,
            latency_ms: measurement.tally.latency(),
            duration_s,
            concurrency,
            run_fraction: if ceiling_rps > 0.0 {
                self.throughput_rps / ceiling_rps
            } else {
                0.0
            },
        });
    }

    /// This run as one step of a load series.
    pub fn as_step(&self, offered_rps: f64) -> LoadStep {
        LoadStep {
            offered_rps,
            throughput_rps: self.throughput_rps,
            requests: self.requests,
            succeeded: self.succeeded,
            by_status: self.by_status.clone(),
            by_code: self.by_code.clone(),
            latency_ms: self.latency_ms,
            invariants_ok: self.invariants_ok,
        }
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // A report is plain data (strings, numbers, maps with string keys): it always serialises.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report for a person.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let pacing = match self.pacing {
            Pacing::Closed { concurrency } => format!("closed loop, {concurrency} in flight"),
            Pacing::Open {
                rate,
                max_in_flight,
            } => format!("open loop at {rate} req/s, at most {max_in_flight} in flight"),
        };
        let _ = writeln!(
            out,
            "surge bench {} against {} (seed {}, {pacing})",
            self.scenario, self.url, self.seed
        );
        let s = &self.setup;
        let _ = writeln!(
            out,
            "setup       {:.2} s: {} members ({} new), {} items, {} coupons",
            self.setup_s, s.members, s.members_created, s.items, s.coupons
        );
        let _ = writeln!(
            out,
            "requests    {} in {:.2} s = {:.1} req/s; {} succeeded (2xx)",
            self.requests, self.duration_s, self.throughput_rps, self.succeeded
        );
        let _ = writeln!(out, "by status   {}", join_counts(&self.by_status));
        if !self.by_code.is_empty() {
            let _ = writeln!(out, "by code     {}", join_counts(&self.by_code));
        }
        let _ = writeln!(out, "latency     {}", latency_line(&self.latency_ms));
        if let Some(c) = &self.ceiling {
            let _ = writeln!(
                out,
                "ceiling     GET /health/live {:.1} req/s ({} in flight, {:.1} s; {}); \
                 this run = {:.1}% of it",
                c.throughput_rps,
                c.concurrency,
                c.duration_s,
                latency_line(&c.latency_ms),
                c.run_fraction * 100.0
            );
        }
        for step in &self.load_steps {
            let _ = writeln!(
                out,
                "load step   offered {:.0} req/s: {:.1} req/s ({}), {}{}",
                step.offered_rps,
                step.throughput_rps,
                join_counts(&step.by_status),
                latency_line(&step.latency_ms),
                if step.invariants_ok {
                    ""
                } else {
                    ", INVARIANTS FAILED"
                }
            );
        }
        if self.invariants.is_empty() {
            let _ = writeln!(out, "invariants  none for this scenario");
        } else {
            let verdict = if self.invariants_ok { "OK" } else { "FAILED" };
            let _ = writeln!(out, "invariants  {verdict}");
            for check in &self.invariants {
                let mark = if check.ok { "ok  " } else { "FAIL" };
                let _ = writeln!(out, "  {mark} {}: {}", check.name, check.detail);
            }
        }
        out
    }
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn join_counts(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn latency_line(l: &LatencySummary) -> String {
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        l.p50, l.p90, l.p99, l.p999, l.max
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::stats::{Reply, Tally};

    fn measurement(answers: &[(u16, Option<&str>, u64)], seconds: u64) -> Measurement {
        let mut tally = Tally::new();
        for (status, code, ms) in answers {
            tally.record(
                &Reply {
                    status: Some(*status),
                    code: code.map(str::to_owned),
                },
                Duration::from_millis(*ms),
            );
        }
        Measurement {
            tally,
            elapsed: Duration::from_secs(seconds),
        }
    }

    fn check(ok: bool) -> InvariantCheck {
        InvariantCheck {
            name: "units_sold_within_stock",
            ok,
            detail: "x".into(),
        }
    }

    fn report(invariants: Vec<InvariantCheck>) -> Report {
        let m = measurement(
            &[
                (201, None, 10),
                (409, Some("OUT_OF_STOCK"), 2),
                (409, Some("OUT_OF_STOCK"), 4),
                (409, Some("OUT_OF_STOCK"), 4),
            ],
            2,
        );
        Report::new(
            "flash-sale",
            "http://127.0.0.1:1",
            7,
            Pacing::Closed { concurrency: 4 },
            &m,
            (Duration::from_millis(1_500), SetupSummary::default()),
            invariants,
        )
    }

    #[test]
    fn the_json_report_has_every_documented_field() {
        let mut r = report(vec![check(true)]);
        r.set_ceiling(&measurement(&[(200, None, 1); 40], 2), 4);
        let json: Value = serde_json::from_str(&r.to_json()).unwrap();
        for field in [
            "scenario",
            "requests",
            "succeeded",
            "by_status",
            "by_code",
            "throughput_rps",
            "latency_ms",
            "invariants_ok",
            "invariants",
            "duration_s",
            "setup_s",
            "setup",
            "ceiling",
            "pacing",
            "seed",
            "load_steps",
        ] {
            assert!(json.get(field).is_some(), "missing {field}: {json}");
        }
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(json["latency_ms"][p].is_number(), "latency_ms.{p}");
        }
        assert_eq!(json["scenario"], "flash-sale");
        assert_eq!(json["requests"], 4);
        assert_eq!(json["succeeded"], 1);
        assert_eq!(json["by_status"]["409"], 3);
        assert_eq!(json["by_code"]["OUT_OF_STOCK"], 3);
        assert_eq!(json["throughput_rps"], 2.0);
        assert_eq!(json["duration_s"], 2.0);
        assert_eq!(json["setup_s"], 1.5);
        assert_eq!(json["pacing"]["mode"], "closed");
        assert_eq!(json["ceiling"]["throughput_rps"], 20.0);
        assert_eq!(json["ceiling"]["run_fraction"], 0.1);
        assert_eq!(json["invariants_ok"], true);
    }

    #[test]
    fn one_failed_check_fails_the_report_and_the_text_says_so() {
        let r = report(vec![check(true), check(false)]);
        assert!(!r.invariants_ok);
        let text = r.to_text();
        assert!(text.contains("invariants  FAILED"), "{text}");
        assert!(text.contains("FAIL units_sold_within_stock"), "{text}");
        assert!(text.contains("by code     OUT_OF_STOCK: 3"), "{text}");
    }

    #[test]
    fn a_scenario_without_checks_is_ok() {
        let r = report(Vec::new());
        assert!(r.invariants_ok);
        assert!(r.to_text().contains("none for this scenario"));
        let json: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert!(json["ceiling"].is_null());
    }
}
