//! `surge bench compare`: one scenario run once per stock strategy, each against a fresh node
//! of its own on a fresh database, one after another, and a table setting each strategy's
//! throughput and p99 beside the actor path's.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::cli::CompareOptions;
use crate::embedded::{
    EmbeddedNode, NodeDatabase, RedisNamespace, ScratchDatabase, node_program, with_node,
};
use crate::error::{BenchError, LaunchError};
use crate::node::Strategy;
use crate::report::Report;
use crate::{EXIT_INVARIANT_FAILED, EXIT_RUN_FAILED, EXIT_USAGE, measure, write_stdout};

/// `flash-sale` and `orders` make no coupon: the coupon quantity of their sizes.
const NO_COUPONS: u64 = 0;
/// The table's entry for a strategy whose run never started because of an interruption.
const NOT_RUN_INTERRUPTED: &str = "interrupted before it started";

/// A run of a comparison that finished: its strategy and its full report.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyRun {
    pub strategy: Strategy,
    #[serde(flatten)]
    pub report: Report,
}

/// One line of the comparison table. The figures are `None` for a run that could not finish
/// (then `error` says why), the ratios also when there is no actor run to divide by.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub strategy: Strategy,
    pub requests: Option<u64>,
    pub succeeded: Option<u64>,
    pub throughput_rps: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// This run's throughput divided by the actor run's (above 1: more requests per second).
    pub ratio_to_actor: Option<f64>,
    /// This run's p99 divided by the actor run's (above 1: a slower tail).
    pub p99_ratio_to_actor: Option<f64>,
    /// Whether every invariant held; false for a run that could not finish.
    pub invariants_ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a comparison found: every finished run's report and the table over all of them.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub scenario: &'static str,
    /// `sqlite` or `postgres`.
    pub database: &'static str,
    /// The reports of the runs that finished, in the order they ran.
    pub runs: Vec<StrategyRun>,
    /// One row per strategy asked for, in the order they ran, finished or not.
    pub table: Vec<Row>,
}

impl Comparison {
    /// Sets the outcomes side by side; an `Err` is why that strategy's run could not finish.
    pub fn new(
        scenario: &'static str,
        database: &'static str,
        outcomes: Vec<(Strategy, Result<Report, String>)>,
    ) -> Self {
        let actor = outcomes
            .iter()
            .find_map(|(strategy, outcome)| match outcome {
                Ok(report) if *strategy == Strategy::Actor => {
                    Some((report.throughput_rps, report.latency_ms.p99))
                }
                _ => None,
            });
        let mut runs = Vec::new();
        let mut table = Vec::new();
        for (strategy, outcome) in outcomes {
            match outcome {
                Ok(report) => {
                    let (throughput, p99) = (report.throughput_rps, report.latency_ms.p99);
                    table.push(Row {
                        strategy,
                        requests: Some(report.requests),
                        succeeded: Some(report.succeeded),
                        throughput_rps: Some(throughput),
                        p50_ms: Some(report.latency_ms.p50),
                        p99_ms: Some(p99),
                        ratio_to_actor: actor.and_then(|(a, _)| ratio(throughput, a)),
                        p99_ratio_to_actor: actor.and_then(|(_, a)| ratio(p99, a)),
                        invariants_ok: report.invariants_ok,
                        error: None,
                    });
                    runs.push(StrategyRun { strategy, report });
                }
                Err(error) => table.push(Row {
                    strategy,
                    requests: None,
                    succeeded: None,
                    throughput_rps: None,
                    p50_ms: None,
                    p99_ms: None,
                    ratio_to_actor: None,
                    p99_ratio_to_actor: None,
                    invariants_ok: false,
                    error: Some(error),
                }),
            }
        }
        Self {
            scenario,
            database,
            runs,
            table,
        }
    }

    /// [`EXIT_INVARIANT_FAILED`] when a finished run broke an invariant (that outranks
    /// everything else: it is what a comparison must never hide), else [`EXIT_RUN_FAILED`]
    /// when a run could not finish, else 0.
    pub fn exit_code(&self) -> u8 {
        if self
            .table
            .iter()
            .any(|row| row.error.is_none() && !row.invariants_ok)
        {
            EXIT_INVARIANT_FAILED
        } else if self.table.iter().any(|row| row.error.is_some()) {
            EXIT_RUN_FAILED
        } else {
            0
        }
    }

    /// The comparison as one line of JSON.
    pub fn to_json(&self) -> String {
        // Plain data (strings, numbers, maps with string keys): it always serialises.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The table for a person.
    pub fn table_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "surge bench compare {} on {}: {} strategies, one fresh node each",
            self.scenario,
            self.database,
            self.table.len()
        );
        let _ = writeln!(
            out,
            "{:<20}{:>10}{:>11}{:>11}{:>10}{:>10}  {:<11}{:>13}{:>12}",
            "strategy",
            "requests",
            "succeeded",
            "req/s",
            "p50 ms",
            "p99 ms",
            "invariants",
            "req/s/actor",
            "p99/actor"
        );
        for row in &self.table {
            let name = row.strategy.name();
            let (Some(requests), Some(succeeded), Some(rps), Some(p50), Some(p99)) = (
                row.requests,
                row.succeeded,
                row.throughput_rps,
                row.p50_ms,
                row.p99_ms,
            ) else {
                let error = row.error.as_deref().unwrap_or("no report");
                let _ = writeln!(out, "{name:<20}could not finish: {error}");
                continue;
            };
            let _ = writeln!(
                out,
                "{name:<20}{requests:>10}{succeeded:>11}{rps:>11.1}{p50:>10.2}{p99:>10.2}  \
                 {:<11}{:>13}{:>12}",
                if row.invariants_ok { "ok" } else { "FAILED" },
                times(row.ratio_to_actor),
                times(row.p99_ratio_to_actor)
            );
        }
        out
    }
}

/// `value / actor`, when there is something to divide by.
fn ratio(value: f64, actor: f64) -> Option<f64> {
    (actor > 0.0 && actor.is_finite() && value.is_finite()).then(|| value / actor)
}

fn times(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"))
}

/// Runs `options` once per strategy, prints each finished run's report as it comes (text) and
/// then the table, or the whole comparison as one JSON object with `--json`, and returns the
/// exit code: [`Comparison::exit_code`], or [`EXIT_USAGE`] for options or node settings no
/// run can be made with.
pub async fn compare_and_print(options: &CompareOptions) -> u8 {
    let strategies = match options.strategies() {
        Ok(strategies) => strategies,
        Err(e) => {
            eprintln!("surge bench compare: {e}");
            return EXIT_USAGE;
        }
    };
    let json = options.load.json;
    let redis = options.redis_url();
    let database = if options.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let program = match node_program() {
        Ok(program) => program,
        Err(e) => {
            eprintln!("surge bench compare: {e}");
            return EXIT_RUN_FAILED;
        }
    };
    let interrupted = watch_interrupt();
    let mut outcomes = Vec::with_capacity(strategies.len());
    for (n, &strategy) in strategies.iter().enumerate() {
        let name = strategy.name();
        if interrupted.load(Ordering::Relaxed) {
            outcomes.push((strategy, Err(NOT_RUN_INTERRUPTED.to_owned())));
            continue;
        }
        if !json {
            eprintln!(
                "surge bench compare: {name} ({} of {}) on a fresh {database} node",
                n + 1,
                strategies.len()
            );
        }
        let outcome = match run_strategy(options, strategy, redis.as_deref(), &program).await {
            Err(BenchError::Launch(e @ LaunchError::Config(_))) => {
                eprintln!("surge bench compare: {e}");
                return EXIT_USAGE;
            }
            other => other,
        };
        match &outcome {
            Ok(report) if !json => {
                let text = format!("== {name} ==\n{}\n", report.to_text());
                if write_stdout(&text).is_err() {
                    return EXIT_RUN_FAILED;
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("surge bench compare: {name} could not finish: {e}"),
        }
        outcomes.push((strategy, outcome.map_err(|e| e.to_string())));
    }
    let comparison = Comparison::new(options.scenario.scenario().name(), database, outcomes);
    let text = if json {
        comparison.to_json() + "\n"
    } else {
        comparison.table_text()
    };
    if write_stdout(&text).is_err() {
        return EXIT_RUN_FAILED;
    }
    comparison.exit_code()
}

/// A flag set once SIGINT or SIGTERM arrives. The node serving at that moment stops by itself
/// (it has its own handler, and the signal no longer ends the process); the flag keeps the
/// comparison from starting further runs, so it ends with the table of what it has.
fn watch_interrupt() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&flag);
    tokio::spawn(async move {
        surge_supervisors::shutdown::stop_signal().await;
        set.store(true, Ordering::Relaxed);
    });
    flag
}

/// One strategy's run: a fresh database (a temporary SQLite directory or a scratch PostgreSQL
/// database), a node on it with `strategy` (and a fresh Redis namespace when Redis is known),
/// the measured run against it, then the node stopped and its data removed.
async fn run_strategy(
    options: &CompareOptions,
    strategy: Strategy,
    redis: Option<&str>,
    program: &Path,
) -> Result<Report, BenchError> {
    let database = match &options.database_url {
        None => NodeDatabase::sqlite(),
        Some(server) => NodeDatabase::postgres(ScratchDatabase::create(server).await?),
    };
    let node =
        EmbeddedNode::on(database, None).with_strategy(strategy, redis.map(RedisNamespace::fresh));
    let scenario = options.scenario.scenario();
    let size = options.load.size(NO_COUPONS);
    with_node(program, &node, async |url, admin| {
        measure(url, scenario, &options.load, &size, Some(admin), None).await
    })
    .await?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::driver::{Measurement, Pacing};
    use crate::invariants::InvariantCheck;
    use crate::scenarios::SetupSummary;
    use crate::stats::{Reply, Tally};

    /// A report of `requests` answers of `ms` each over `seconds`, invariants as given.
    fn report(requests: u64, ms: u64, seconds: u64, invariants_ok: bool) -> Report {
        let mut tally = Tally::new();
        for _ in 0..requests {
            tally.record(
                &Reply {
                    status: Some(201),
                    code: None,
                },
                Duration::from_millis(ms),
            );
        }
        let measurement = Measurement {
            tally,
            elapsed: Duration::from_secs(seconds),
        };
        Report::new(
            "flash-sale",
            "http://127.0.0.1:1",
            1,
            Pacing::Closed { concurrency: 4 },
            &measurement,
            (Duration::ZERO, SetupSummary::default()),
            vec![InvariantCheck {
                name: "units_sold_within_stock",
                ok: invariants_ok,
                detail: "x".into(),
            }],
        )
    }

    fn row(c: &Comparison, strategy: Strategy) -> &Row {
        c.table.iter().find(|r| r.strategy == strategy).unwrap()
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-3)
    }

    #[test]
    fn ratios_are_taken_against_the_actor_run() {
        // actor: 400 req/s with 10 ms answers; row-lock: 100 req/s with 40 ms answers.
        let c = Comparison::new(
            "flash-sale",
            "sqlite",
            vec![
                (Strategy::Actor, Ok(report(800, 10, 2, true))),
                (Strategy::RowLock, Ok(report(200, 40, 2, true))),
            ],
        );
        let actor = row(&c, Strategy::Actor);
        assert_eq!(actor.ratio_to_actor, Some(1.0));
        assert_eq!(actor.p99_ratio_to_actor, Some(1.0));
        let row_lock = row(&c, Strategy::RowLock);
        assert!(close(row_lock.ratio_to_actor, 0.25), "{row_lock:?}");
        assert!(close(row_lock.p99_ratio_to_actor, 4.0), "{row_lock:?}");
        assert_eq!(row_lock.throughput_rps, Some(100.0));
        assert_eq!(row_lock.requests, Some(200));
        assert_eq!(c.exit_code(), 0);
    }

    #[test]
    fn the_actor_run_need_not_come_first_and_without_it_there_are_no_ratios() {
        let c = Comparison::new(
            "orders",
            "postgres",
            vec![
                (Strategy::ConditionalUpdate, Ok(report(300, 20, 1, true))),
                (Strategy::Actor, Ok(report(600, 10, 1, true))),
            ],
        );
        assert!(close(
            row(&c, Strategy::ConditionalUpdate).ratio_to_actor,
            0.5
        ));
        let c = Comparison::new(
            "orders",
            "postgres",
            vec![(Strategy::RowLock, Ok(report(300, 20, 1, true)))],
        );
        assert_eq!(row(&c, Strategy::RowLock).ratio_to_actor, None);
        assert!(c.table_text().contains(" -"), "{}", c.table_text());
        // An actor run that measured nothing gives nothing to divide by.
        assert_eq!(ratio(5.0, 0.0), None);
    }

    #[test]
    fn a_broken_invariant_outranks_a_run_that_could_not_finish() {
        let failed = Comparison::new(
            "flash-sale",
            "sqlite",
            vec![
                (Strategy::Actor, Ok(report(10, 1, 1, true))),
                (Strategy::RowLock, Err("the node could not start".into())),
            ],
        );
        assert_eq!(failed.exit_code(), EXIT_RUN_FAILED);
        let r = row(&failed, Strategy::RowLock);
        assert!(!r.invariants_ok && r.throughput_rps.is_none() && r.ratio_to_actor.is_none());
        assert_eq!(failed.runs.len(), 1);
        assert!(
            failed
                .table_text()
                .contains("could not finish: the node could not start")
        );
        let broken = Comparison::new(
            "flash-sale",
            "sqlite",
            vec![
                (Strategy::Actor, Ok(report(10, 1, 1, true))),
                (Strategy::RowLock, Err("the node could not start".into())),
                (Strategy::ConditionalUpdate, Ok(report(10, 1, 1, false))),
            ],
        );
        assert_eq!(broken.exit_code(), EXIT_INVARIANT_FAILED);
        assert!(broken.table_text().contains("FAILED"));
    }

    #[test]
    fn the_json_has_the_runs_with_their_strategy_and_the_table() {
        let c = Comparison::new(
            "flash-sale",
            "sqlite",
            vec![
                (Strategy::Actor, Ok(report(800, 10, 2, true))),
                (Strategy::RedisDecr, Err("no Redis".into())),
            ],
        );
        let json: Value = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(json["scenario"], "flash-sale");
        assert_eq!(json["database"], "sqlite");
        let runs = json["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0]["strategy"], "actor");
        assert_eq!(runs[0]["requests"], 800);
        assert_eq!(runs[0]["invariants_ok"], true);
        let table = json["table"].as_array().unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table[0]["strategy"], "actor");
        assert_eq!(table[0]["throughput_rps"], 400.0);
        assert_eq!(table[0]["ratio_to_actor"], 1.0);
        assert!(table[0]["p99_ms"].as_f64().unwrap() > 0.0);
        assert!(table[0].get("error").is_none());
        assert_eq!(table[1]["strategy"], "redis-decr");
        assert!(table[1]["throughput_rps"].is_null());
        assert_eq!(table[1]["invariants_ok"], false);
        assert_eq!(table[1]["error"], "no Redis");
    }

    #[test]
    fn strategy_names_are_the_node_settings() {
        let names: Vec<_> = Strategy::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            ["actor", "row-lock", "conditional-update", "redis-decr"]
        );
        for s in Strategy::ALL {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                Value::String(s.name().into())
            );
            assert_eq!(
                <Strategy as clap::ValueEnum>::from_str(s.name(), false).unwrap(),
                s
            );
        }
        assert!(Strategy::RedisDecr.needs_redis() && !Strategy::Actor.needs_redis());
    }
}
