//! The command line of `surge bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::driver::{Extent, Pacing};
use crate::scenarios::{AdminCredentials, Scenario, ScenarioSize};

/// Attempts of a run that gives neither `--attempts` nor `--duration`.
pub const DEFAULT_ATTEMPTS: u64 = 10_000;
/// Offered loads (requests per second) of `--plot` unless `--plot-rates` says otherwise.
pub const DEFAULT_PLOT_RATES: [f64; 5] = [250.0, 500.0, 1_000.0, 2_000.0, 4_000.0];
/// The environment variables the admin credentials fall back to (the node's own).
pub const ADMIN_LOGIN_ID_VAR: &str = "SURGE_BOOTSTRAP_ADMIN_LOGIN_ID";
pub const ADMIN_PASSWORD_VAR: &str = "SURGE_BOOTSTRAP_ADMIN_PASSWORD";

/// Rehearse a sale against a Surge node and report throughput, latency and invariants.
///
/// Without --url, an embedded node is started in this process on a fresh temporary SQLite
/// database and stopped afterwards. See docs/BENCH.md.
#[derive(Debug, Clone, Parser)]
#[command(name = "surge bench", version = None)]
pub struct BenchOptions {
    /// What to run.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// The node to drive, e.g. http://127.0.0.1:8080 (default: an embedded node).
    #[arg(long)]
    pub url: Option<String>,

    /// ADMIN login id for creating items and coupons [default: $SURGE_BOOTSTRAP_ADMIN_LOGIN_ID].
    #[arg(long)]
    pub admin_login_id: Option<String>,

    /// ADMIN password [default: $SURGE_BOOTSTRAP_ADMIN_PASSWORD].
    #[arg(long)]
    pub admin_password: Option<String>,

    /// Closed loop: requests in flight at once. With --rate: the cap on requests in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// Run for this long (e.g. 30s, 500ms, 2m) instead of a fixed number of attempts.
    #[arg(long, value_parser = parse_duration, conflicts_with = "attempts")]
    pub duration: Option<Duration>,

    /// Number of requests to send [default: 10000 when --duration is not given].
    #[arg(long, visible_alias = "requests", value_parser = clap::value_parser!(u64).range(1..))]
    pub attempts: Option<u64>,

    /// Open loop: start this many requests per second whatever the answers do; latency is
    /// measured from each request's scheduled start.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Seed of every random choice (members' login ids, who sends what).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Print the report as one JSON object on stdout (and no progress bars).
    #[arg(long)]
    pub json: bool,

    /// flash-sale only: run one open-loop step per --plot-rates and draw p50/p90/p99 against
    /// offered load into this SVG file.
    #[arg(long, conflicts_with = "rate")]
    pub plot: Option<PathBuf>,

    /// Offered loads of the --plot steps, requests per second, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_rate, requires = "plot")]
    pub plot_rates: Vec<f64>,

    /// Members that take part (signed up and logged in before the run).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub users: u32,

    /// flash-sale: units of the item on sale.
    #[arg(long, default_value_t = 100)]
    pub units: u64,

    /// coupon-rush: coupons to give out.
    #[arg(long, default_value_t = 100)]
    pub quantity: u64,

    /// orders and browse: items to create.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub items: u32,

    /// Skip the ceiling measurement (GET /health/live) that follows the run.
    #[arg(long)]
    pub no_ceiling: bool,

    /// How long the ceiling measurement lasts.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub ceiling_duration: Duration,
}

impl BenchOptions {
    /// Parses the words after `surge bench`. On `--help` or a bad option clap has the text
    /// to print and the exit code.
    pub fn parse_words(words: impl IntoIterator<Item = String>) -> Result<Self, clap::Error> {
        Self::try_parse_from(std::iter::once("surge bench".to_owned()).chain(words))
    }

    /// The ADMIN to log in as: the options, else the node's bootstrap variables.
    pub fn admin_credentials(&self) -> Option<AdminCredentials> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let login_id = self
            .admin_login_id
            .clone()
            .or_else(|| env(ADMIN_LOGIN_ID_VAR))?;
        let password = self
            .admin_password
            .clone()
            .or_else(|| env(ADMIN_PASSWORD_VAR))?;
        Some(AdminCredentials { login_id, password })
    }

    pub fn pacing(&self) -> Pacing {
        let concurrency = self.concurrency as usize;
        match self.rate {
            Some(rate) => Pacing::Open {
                rate,
                max_in_flight: concurrency,
            },
            None => Pacing::Closed { concurrency },
        }
    }

    pub fn extent(&self) -> Extent {
        match (self.duration, self.attempts) {
            (Some(d), _) => Extent::Duration(d),
            (None, attempts) => Extent::Attempts(attempts.unwrap_or(DEFAULT_ATTEMPTS)),
        }
    }

    pub fn size(&self) -> ScenarioSize {
        ScenarioSize {
            members: self.users as usize,
            units: self.units,
            quantity: self.quantity,
            items: self.items as usize,
            seed: self.seed,
        }
    }

    /// The offered loads of `--plot`.
    pub fn plot_rates(&self) -> Vec<f64> {
        if self.plot_rates.is_empty() {
            DEFAULT_PLOT_RATES.to_vec()
        } else {
            self.plot_rates.clone()
        }
    }
}

/// `250ms`, `30s`, `2m`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((text, "s"), |at| text.split_at(at));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 30s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1_000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("'{text}': the unit must be ms, s or m")),
    };
    if seconds > 0.0 && seconds.is_finite() {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!("'{text}' must be longer than zero"))
    }
}

/// A positive number of requests per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!(
            "'{text}' is not a positive number of requests per second"
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(words: &str) -> Result<BenchOptions, clap::Error> {
        BenchOptions::parse_words(words.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1_500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn defaults_make_a_closed_loop_of_ten_thousand_attempts() {
        let o = parse("flash-sale").unwrap();
        assert_eq!(o.scenario, Scenario::FlashSale);
        assert_eq!(o.pacing(), Pacing::Closed { concurrency: 64 });
        assert_eq!(o.extent(), Extent::Attempts(DEFAULT_ATTEMPTS));
        assert!(o.url.is_none() && !o.json && o.plot.is_none());
    }

    #[test]
    fn rate_duration_and_requests_are_read() {
        let o = parse("browse --rate 500 --duration 10s --concurrency 8").unwrap();
        assert_eq!(
            o.pacing(),
            Pacing::Open {
                rate: 500.0,
                max_in_flight: 8
            }
        );
        assert_eq!(o.extent(), Extent::Duration(Duration::from_secs(10)));
        let o = parse("health --requests 500").unwrap();
        assert_eq!(o.extent(), Extent::Attempts(500));
        let o = parse("flash-sale --plot out.svg --plot-rates 100,200").unwrap();
        assert_eq!(o.plot_rates(), [100.0, 200.0]);
    }

    #[test]
    fn contradictions_and_nonsense_are_refused() {
        for words in [
            "flash-sale --duration 5s --attempts 10",
            "flash-sale --plot a.svg --rate 10",
            "flash-sale --plot-rates 10",
            "flash-sale --rate 0",
            "flash-sale --concurrency 0",
            "flash-sale --users 0",
            "checkout",
        ] {
            assert!(parse(words).is_err(), "{words}");
        }
    }
}
