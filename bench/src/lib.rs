//! `surge bench`: drives a node over HTTP the way a sale would, and reports throughput,
//! latency percentiles and whether the sale's invariants held, read back through the API.
//!
//! The parts: [`BenchCommand`] (the command line), the scenarios (what is created before the
//! run and what one attempt sends), the driver (closed or open loop), the report, and
//! [`run_scenario`], the one measured run that `--plot` repeats per offered load and that
//! `surge bench compare` repeats per stock strategy, each time on a fresh node: a child process
//! of this same binary running `surge serve` (see [`EmbeddedNode`]).

mod api;
mod cli;
mod compare;
mod concurrent;
mod driver;
mod embedded;
mod error;
mod invariants;
mod node;
mod plot;
mod progress;
mod report;
mod scenarios;
mod stats;
mod users;
mod wire;

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use api::Api;
pub use cli::{BenchArgs, BenchCommand, BenchOptions, CompareOptions, LoadOptions, StockScenario};
pub use compare::{Comparison, Row, StrategyRun, compare_and_print};
pub use driver::{Extent, Measurement, Pacing};
pub use embedded::{
    DEFAULT_ADMIN_LOGIN_ID, EmbeddedNode, NodeDatabase, RedisNamespace, ScratchDatabase,
    node_program, with_node,
};
pub use error::{BenchError, LaunchError};
pub use invariants::InvariantCheck;
pub use node::Strategy;
pub use progress::Progress;
pub use report::{Ceiling, LoadStep, Report};
pub use scenarios::{AdminCredentials, Cast, Scenario, ScenarioSize};

use driver::drive;
use scenarios::{HealthWorkload, Prepared};

/// Exit code when the run finished but an invariant failed.
pub const EXIT_INVARIANT_FAILED: u8 = 1;
/// Exit code for bad options, or a setting the embedded node refuses.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the run could not finish (node unreachable, set-up refused, …).
pub const EXIT_RUN_FAILED: u8 = 3;
/// Length of each `--plot` step when neither `--duration` nor `--attempts` is given.
pub const DEFAULT_PLOT_STEP: Duration = Duration::from_secs(10);

/// Runs what `options` describe against the node at `url`, prints the report on stdout (text,
/// or one JSON object with `--json`) and returns the process exit code: 0, or
/// [`EXIT_INVARIANT_FAILED`], or [`EXIT_RUN_FAILED`] after printing the reason on stderr.
pub async fn run_and_print(
    options: &BenchOptions,
    url: &str,
    admin: Option<&AdminCredentials>,
) -> u8 {
    match run(options, url, admin).await {
        Ok(report) => {
            let text = if options.load.json {
                report.to_json() + "\n"
            } else {
                report.to_text()
            };
            if write_stdout(&text).is_err() {
                return EXIT_RUN_FAILED;
            }
            if report.invariants_ok {
                0
            } else {
                EXIT_INVARIANT_FAILED
            }
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "surge bench: {e}");
            EXIT_RUN_FAILED
        }
    }
}

/// Starts a node of this binary on a fresh temporary SQLite database, runs [`run_and_print`]
/// against it, stops it and deletes its data. `admin` becomes the node's bootstrap ADMIN (a
/// generated one when `None`).
pub async fn run_embedded(options: &BenchOptions, admin: Option<AdminCredentials>) -> u8 {
    let program = match node_program() {
        Ok(program) => program,
        Err(e) => {
            eprintln!("surge bench: {e}");
            return EXIT_RUN_FAILED;
        }
    };
    let node = EmbeddedNode::plan(admin);
    let ran = with_node(&program, &node, async |url, admin| {
        run_and_print(options, url, Some(admin)).await
    })
    .await;
    match ran {
        Ok(code) => code,
        Err(e) => {
            eprintln!("surge bench: {e}");
            match e {
                LaunchError::Config(_) => EXIT_USAGE,
                LaunchError::Start(_) => EXIT_RUN_FAILED,
            }
        }
    }
}

/// Runs what `options` describe against the node at `url` and returns the report.
pub async fn run(
    options: &BenchOptions,
    url: &str,
    admin: Option<&AdminCredentials>,
) -> Result<Report, BenchError> {
    let plot = options.plot.as_deref().map(|path| PlotPlan {
        path,
        rates: options.plot_rates(),
    });
    measure(
        url,
        options.scenario,
        &options.load,
        &options.size(),
        admin,
        plot,
    )
    .await
}

/// `--plot`: where the SVG goes and the offered loads of its steps.
#[derive(Debug)]
struct PlotPlan<'a> {
    path: &'a Path,
    rates: Vec<f64>,
}

/// Everything one report takes against the node at `url`: the readiness check, the members,
/// the measured run (or the `--plot` steps) and the ceiling unless `--no-ceiling`.
async fn measure(
    url: &str,
    scenario: Scenario,
    load: &LoadOptions,
    size: &ScenarioSize,
    admin: Option<&AdminCredentials>,
    plot: Option<PlotPlan<'_>>,
) -> Result<Report, BenchError> {
    let api = Api::new(url)?;
    api.ready().await?;
    let progress = Progress::new(load.json);
    let mut cast = Cast::assemble(&api, scenario, size, admin, &progress).await?;
    let mut report = match plot {
        None => {
            run_scenario(
                &api,
                scenario,
                size,
                &mut cast,
                load.pacing(),
                load.extent(),
                &progress,
            )
            .await?
        }
        Some(plot) => {
            run_load_steps(&api, scenario, load, size, &mut cast, plot, &progress).await?
        }
    };
    if !load.no_ceiling && scenario != Scenario::Health {
        let concurrency = load.concurrency as usize;
        let ceiling = measure_ceiling(&api, concurrency, load.ceiling_duration, &progress).await;
        report.set_ceiling(&ceiling, concurrency);
    }
    Ok(report)
}

/// Writes `text` on stdout and flushes it.
fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// `--plot`: one open-loop run per offered load, the SVG of their percentiles, and the last
/// run's report carrying every step and every step's invariants.
async fn run_load_steps(
    api: &Api,
    scenario: Scenario,
    load: &LoadOptions,
    size: &ScenarioSize,
    cast: &mut Cast,
    plot: PlotPlan<'_>,
    progress: &Progress,
) -> Result<Report, BenchError> {
    let extent = match (load.duration, load.attempts) {
        (None, None) => Extent::Duration(DEFAULT_PLOT_STEP),
        _ => load.extent(),
    };
    let mut steps = Vec::new();
    let mut invariants = Vec::new();
    let mut last = None;
    for rate in plot.rates {
        let pacing = Pacing::Open {
            rate,
            max_in_flight: load.concurrency as usize,
        };
        let report = run_scenario(api, scenario, size, cast, pacing, extent, progress).await?;
        steps.push(report.as_step(rate));
        invariants.extend(report.invariants.iter().cloned().map(|mut c| {
            c.detail = format!("at {rate} req/s: {}", c.detail);
            c
        }));
        last = Some(report);
    }
    let mut report = last.ok_or_else(|| BenchError::Usage("--plot-rates is empty".into()))?;
    plot::latency_against_load(
        plot.path,
        &format!(
            "surge bench {}: latency against offered load",
            report.scenario
        ),
        &steps,
    )?;
    report.invariants_ok = invariants::all_ok(&invariants);
    report.invariants = invariants;
    report.load_steps = steps;
    Ok(report)
}

/// One measured run: creates the scenario's items or coupon, drives the load, settles open
/// outcomes and checks the invariants. `setup_s` of the report is the cast's set-up plus this
/// run's own.
pub async fn run_scenario(
    api: &Api,
    scenario: Scenario,
    size: &ScenarioSize,
    cast: &mut Cast,
    pacing: Pacing,
    extent: Extent,
    progress: &Progress,
) -> Result<Report, BenchError> {
    let setup_started = Instant::now();
    let run_tag = uuid::Uuid::new_v4().simple().to_string();
    let prepared = Arc::new(Prepared::create(api, scenario, size, cast, &run_tag).await?);
    let setup = cast.assembled_in + setup_started.elapsed();
    let measurement = drive(
        Arc::clone(&prepared),
        pacing,
        extent,
        progress,
        scenario.name(),
    )
    .await;
    let checking = progress.message("checking", "settling open outcomes, reading counts back");
    let invariants = prepared.settle_and_check().await;
    checking.finish_and_clear();
    Ok(Report::new(
        scenario.name(),
        &api.base(),
        size.seed,
        pacing,
        &measurement,
        (setup, cast.summary.clone()),
        invariants?,
    ))
}

/// `GET /health/live` closed-loop with `concurrency` for `duration`: the HTTP ceiling.
pub async fn measure_ceiling(
    api: &Api,
    concurrency: usize,
    duration: Duration,
    progress: &Progress,
) -> Measurement {
    drive(
        Arc::new(HealthWorkload::new(api.clone())),
        Pacing::Closed { concurrency },
        Extent::Duration(duration),
        progress,
        "ceiling",
    )
    .await
}
