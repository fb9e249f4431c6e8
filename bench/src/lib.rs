//! `surge bench`: drives a node over HTTP the way a sale would, and reports throughput,
//! latency percentiles and whether the sale's invariants held, read back through the API.
//!
//! The parts: [`BenchOptions`] (the command line), the scenarios (what is created before the
//! run and what one attempt sends), the driver (closed or open loop), the report, and
//! [`run_scenario`], the one measured run that `--plot` repeats per offered load and that a
//! comparison of configurations can repeat per node.

mod api;
mod cli;
mod concurrent;
mod driver;
mod embedded;
mod error;
mod invariants;
mod plot;
mod progress;
mod report;
mod scenarios;
mod stats;
mod users;

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use api::Api;
pub use cli::BenchOptions;
pub use driver::{Extent, Measurement, Pacing};
pub use embedded::{DEFAULT_ADMIN_LOGIN_ID, EmbeddedNode};
pub use error::BenchError;
pub use invariants::InvariantCheck;
pub use progress::Progress;
pub use report::{Ceiling, LoadStep, Report};
pub use scenarios::{AdminCredentials, Cast, Scenario, ScenarioSize};

use driver::drive;
use scenarios::{HealthWorkload, Prepared};

/// Exit code when the run finished but an invariant failed.
pub const EXIT_INVARIANT_FAILED: u8 = 1;
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
            let text = if options.json {
                report.to_json() + "\n"
            } else {
                report.to_text()
            };
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
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

/// Runs what `options` describe against the node at `url` and returns the report.
pub async fn run(
    options: &BenchOptions,
    url: &str,
    admin: Option<&AdminCredentials>,
) -> Result<Report, BenchError> {
    let api = Api::new(url)?;
    api.ready().await?;
    let progress = Progress::new(options.json);
    let size = options.size();
    let mut cast = Cast::assemble(&api, options.scenario, &size, admin, &progress).await?;
    let mut report = match &options.plot {
        None => {
            run_scenario(
                &api,
                options.scenario,
                &size,
                &mut cast,
                options.pacing(),
                options.extent(),
                &progress,
            )
            .await?
        }
        Some(path) => run_load_steps(&api, options, &size, &mut cast, path, &progress).await?,
    };
    if !options.no_ceiling && options.scenario != Scenario::Health {
        let concurrency = options.concurrency as usize;
        let ceiling = measure_ceiling(&api, concurrency, options.ceiling_duration, &progress).await;
        report.set_ceiling(&ceiling, concurrency);
    }
    Ok(report)
}

/// `--plot`: one open-loop run per offered load, the SVG of their percentiles, and the last
/// run's report carrying every step and every step's invariants.
async fn run_load_steps(
    api: &Api,
    options: &BenchOptions,
    size: &ScenarioSize,
    cast: &mut Cast,
    path: &Path,
    progress: &Progress,
) -> Result<Report, BenchError> {
    let extent = match (options.duration, options.attempts) {
        (None, None) => Extent::Duration(DEFAULT_PLOT_STEP),
        _ => options.extent(),
    };
    let mut steps = Vec::new();
    let mut invariants = Vec::new();
    let mut last = None;
    for rate in options.plot_rates() {
        let pacing = Pacing::Open {
            rate,
            max_in_flight: options.concurrency as usize,
        };
        let report =
            run_scenario(api, options.scenario, size, cast, pacing, extent, progress).await?;
        steps.push(report.as_step(rate));
        invariants.extend(report.invariants.iter().cloned().map(|mut c| {
            c.detail = format!("at {rate} req/s: {}", c.detail);
            c
        }));
        last = Some(report);
    }
    let mut report = last.ok_or_else(|| BenchError::Usage("--plot-rates is empty".into()))?;
    plot::latency_against_load(
        path,
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
        api.base(),
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
