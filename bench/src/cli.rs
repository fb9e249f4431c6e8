//! The command line of `surge bench` and `surge bench compare`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, Args, Command, FromArgMatches};

use crate::driver::{Extent, Pacing};
use crate::error::BenchError;
use crate::node::{ADMIN_LOGIN_ID_VAR, ADMIN_PASSWORD_VAR, REDIS_URL_VAR, Strategy};
use crate::scenarios::{AdminCredentials, Scenario, ScenarioSize};

/// Attempts of a run that gives neither `--attempts` nor `--duration`.
pub const DEFAULT_ATTEMPTS: u64 = 10_000;
/// Offered loads (requests per second) of `--plot` unless `--plot-rates` says otherwise.
pub const DEFAULT_PLOT_RATES: [f64; 5] = [250.0, 500.0, 1_000.0, 2_000.0, 4_000.0];

/// `surge bench --help`: what it does.
const BENCH_ABOUT: &str =
    "Rehearse a sale against a Surge node and report throughput, latency and invariants";
const BENCH_LONG_ABOUT: &str = "\
Rehearse a sale against a Surge node and report throughput, latency and invariants.

Without --url, a node of this binary (`surge serve`) is started as a child process on a fresh \
temporary SQLite database and stopped afterwards. `surge bench compare --help` describes the \
comparison of stock strategies. See docs/BENCH.md.";
/// `surge bench compare --help`: what it does.
const COMPARE_ABOUT: &str =
    "Run a scenario once per stock strategy, each on a fresh node of its own";
const COMPARE_LONG_ABOUT: &str = "\
Run a scenario once per stock strategy, each against a fresh node of its own on a fresh \
database, one after another, and set throughput and p99 side by side with the actor path.

Every run gets the same options; only SURGE_STOCK_STRATEGY differs. See docs/BENCH.md.";
/// The word after `surge bench` that selects the strategy comparison.
const COMPARE_WORD: &str = "compare";

/// The `surge bench` subcommand of the `surge` binary: a scenario and its options
/// ([`BenchOptions`]), or `compare` and its own ([`CompareOptions`]).
#[derive(Debug, Clone)]
pub struct BenchArgs(BenchCommand);

impl BenchArgs {
    /// What the words after `surge bench` ask for.
    pub fn into_command(self) -> BenchCommand {
        self.0
    }
}

impl FromArgMatches for BenchArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        match matches.subcommand() {
            Some((COMPARE_WORD, compare)) => {
                CompareOptions::from_arg_matches(compare).map(BenchCommand::Compare)
            }
            _ => BenchOptions::from_arg_matches(matches).map(BenchCommand::Run),
        }
        .map(Self)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for BenchArgs {
    fn augment_args(command: Command) -> Command {
        let compare = CompareOptions::augment_args(Command::new(COMPARE_WORD))
            .about(COMPARE_ABOUT)
            .long_about(COMPARE_LONG_ABOUT);
        BenchOptions::augment_args(command)
            .about(BENCH_ABOUT)
            .long_about(BENCH_LONG_ABOUT)
            .subcommand(compare)
            .args_conflicts_with_subcommands(true)
            .subcommand_negates_reqs(true)
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

/// What the words after `surge bench` ask for.
#[derive(Debug, Clone)]
pub enum BenchCommand {
    /// `surge bench <scenario> …`: one run against one node.
    Run(BenchOptions),
    /// `surge bench compare <scenario> …`: one run per stock strategy, each on a fresh node.
    Compare(CompareOptions),
}

/// The options of one measured run that a single bench and a comparison share: how the load
/// is paced, how long it lasts, how big the scenario is, and what is reported.
#[derive(Debug, Clone, Args)]
pub struct LoadOptions {
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

    /// Members that take part (signed up and logged in before the run).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub users: u32,

    /// flash-sale: units of the item on sale.
    #[arg(long, default_value_t = 100)]
    pub units: u64,

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

impl LoadOptions {
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

    /// The scenario's sizes, with `quantity` coupons for a coupon rush.
    pub fn size(&self, quantity: u64) -> ScenarioSize {
        ScenarioSize {
            members: self.users as usize,
            units: self.units,
            quantity,
            items: self.items as usize,
            seed: self.seed,
        }
    }
}

/// The options of `surge bench <scenario>`: one run against one node.
#[derive(Debug, Clone, Args)]
pub struct BenchOptions {
    /// What to run.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// The node to drive, e.g. http://127.0.0.1:8080, or the nodes of a cluster,
    /// comma-separated, taken in turn (default: a node of its own).
    #[arg(long)]
    pub url: Option<String>,

    /// ADMIN login id for creating items and coupons [default: $SURGE_BOOTSTRAP_ADMIN_LOGIN_ID].
    #[arg(long)]
    pub admin_login_id: Option<String>,

    /// ADMIN password [default: $SURGE_BOOTSTRAP_ADMIN_PASSWORD].
    #[arg(long)]
    pub admin_password: Option<String>,

    #[command(flatten)]
    pub load: LoadOptions,

    /// flash-sale only: run one open-loop step per --plot-rates and draw p50/p90/p99 against
    /// offered load into this SVG file.
    #[arg(long, conflicts_with = "rate")]
    pub plot: Option<PathBuf>,

    /// Offered loads of the --plot steps, requests per second, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_rate, requires = "plot")]
    pub plot_rates: Vec<f64>,

    /// coupon-rush: coupons to give out.
    #[arg(long, default_value_t = 100)]
    pub quantity: u64,
}

impl BenchOptions {
    /// The ADMIN to log in as: the options, else the node's bootstrap variables.
    pub fn admin_credentials(&self) -> Option<AdminCredentials> {
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

    pub fn size(&self) -> ScenarioSize {
        self.load.size(self.quantity)
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

/// The options of `surge bench compare <scenario>`.
#[derive(Debug, Clone, Args)]
pub struct CompareOptions {
    /// What to run (the scenarios that take stock).
    #[arg(value_enum)]
    pub scenario: StockScenario,

    /// Strategies to run, in this order, comma-separated [default: actor, row-lock,
    /// conditional-update, and redis-decr when a Redis URL is known].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub strategies: Vec<Strategy>,

    /// A PostgreSQL server (postgres://user@host:port/maintenance-db): every run gets a new
    /// database on it, dropped afterwards [default: a temporary SQLite file per run].
    #[arg(long, value_parser = parse_postgres_url)]
    pub database_url: Option<String>,

    /// Redis for redis-decr (and every node's coupon store), e.g. redis://127.0.0.1:6379/9;
    /// each run gets a fresh key prefix, deleted afterwards [default: $SURGE_REDIS_URL].
    #[arg(long, value_parser = parse_redis_url)]
    pub redis_url: Option<String>,

    #[command(flatten)]
    pub load: LoadOptions,
}

impl CompareOptions {
    /// `--redis-url`, else `SURGE_REDIS_URL`.
    pub fn redis_url(&self) -> Option<String> {
        self.redis_url.clone().or_else(|| env(REDIS_URL_VAR))
    }

    /// The strategies to run, in order: `--strategies`, else all those this set-up can run.
    /// A strategy named twice, or `redis-decr` without a Redis URL, is a usage error.
    pub fn strategies(&self) -> Result<Vec<Strategy>, BenchError> {
        let has_redis = self.redis_url().is_some();
        if self.strategies.is_empty() {
            return Ok(Strategy::ALL
                .into_iter()
                .filter(|s| has_redis || !s.needs_redis())
                .collect());
        }
        for (i, strategy) in self.strategies.iter().enumerate() {
            if self.strategies[..i].contains(strategy) {
                return Err(BenchError::Usage(format!(
                    "--strategies names {} twice",
                    strategy.name()
                )));
            }
            if strategy.needs_redis() && !has_redis {
                return Err(BenchError::Usage(format!(
                    "{} needs Redis: pass --redis-url or set {REDIS_URL_VAR}",
                    strategy.name()
                )));
            }
        }
        Ok(self.strategies.clone())
    }
}

/// The scenarios a comparison can run: those whose requests take stock (the strategies differ
/// in nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StockScenario {
    /// One item with `--units`, bought one unit at a time by random members.
    FlashSale,
    /// Multi-line orders over `--items` items with ample stock.
    Orders,
}

impl StockScenario {
    pub fn scenario(self) -> Scenario {
        match self {
            Self::FlashSale => Scenario::FlashSale,
            Self::Orders => Scenario::Orders,
        }
    }
}

/// A non-blank environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
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

/// A PostgreSQL server URL: `postgres://` or `postgresql://`.
fn parse_postgres_url(text: &str) -> Result<String, String> {
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        Ok(text.to_owned())
    } else {
        Err("must start with postgres:// or postgresql:// (SQLite is the default)".to_owned())
    }
}

/// A Redis URL, as the node accepts it.
fn parse_redis_url(text: &str) -> Result<String, String> {
    if text.starts_with("redis://") {
        Ok(text.to_owned())
    } else {
        Err("must start with redis://".to_owned())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The words after `surge bench`, as the `surge` binary parses them.
    fn command(words: &str) -> Result<BenchCommand, clap::Error> {
        let matches = BenchArgs::augment_args(Command::new("bench"))
            .try_get_matches_from(std::iter::once("bench").chain(words.split_whitespace()))?;
        BenchArgs::from_arg_matches(&matches).map(BenchArgs::into_command)
    }

    fn parse(words: &str) -> Result<BenchOptions, clap::Error> {
        match command(words)? {
            BenchCommand::Run(options) => Ok(options),
            BenchCommand::Compare(options) => panic!("a comparison: {options:?}"),
        }
    }

    fn compare(words: &str) -> CompareOptions {
        match command(words).unwrap() {
            BenchCommand::Compare(options) => options,
            BenchCommand::Run(options) => panic!("not a comparison: {options:?}"),
        }
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
        assert_eq!(o.load.pacing(), Pacing::Closed { concurrency: 64 });
        assert_eq!(o.load.extent(), Extent::Attempts(DEFAULT_ATTEMPTS));
        assert!(o.url.is_none() && !o.load.json && o.plot.is_none());
    }

    #[test]
    fn rate_duration_and_requests_are_read() {
        let o = parse("browse --rate 500 --duration 10s --concurrency 8").unwrap();
        assert_eq!(
            o.load.pacing(),
            Pacing::Open {
                rate: 500.0,
                max_in_flight: 8
            }
        );
        assert_eq!(o.load.extent(), Extent::Duration(Duration::from_secs(10)));
        let o = parse("health --requests 500").unwrap();
        assert_eq!(o.load.extent(), Extent::Attempts(500));
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
            "",
        ] {
            assert!(parse(words).is_err(), "{words}");
        }
    }

    #[test]
    fn compare_takes_the_shared_options_and_its_own() {
        let o = compare(
            "compare flash-sale --strategies actor,row-lock --units 7 --users 3 --attempts 50 \
             --concurrency 4 --seed 9 --json --no-ceiling \
             --database-url postgres://postgres@127.0.0.1:5432/postgres",
        );
        assert_eq!(o.scenario, StockScenario::FlashSale);
        assert_eq!(
            o.strategies().unwrap(),
            [Strategy::Actor, Strategy::RowLock]
        );
        assert_eq!(o.load.extent(), Extent::Attempts(50));
        assert_eq!(o.load.pacing(), Pacing::Closed { concurrency: 4 });
        assert!(o.load.json && o.load.no_ceiling);
        let size = o.load.size(0);
        assert_eq!((size.units, size.members, size.seed), (7, 3, 9));
        assert!(o.database_url.is_some());
        assert!(matches!(
            command("flash-sale").unwrap(),
            BenchCommand::Run(_)
        ));
    }

    #[test]
    fn compare_defaults_to_every_strategy_this_set_up_can_run() {
        let with_redis = compare("compare orders --redis-url redis://127.0.0.1:6379/9");
        assert_eq!(with_redis.strategies().unwrap(), Strategy::ALL);
        // Without --redis-url it depends on SURGE_REDIS_URL, which the test does not control;
        // the list is the three database strategies, plus redis-decr when the variable is set.
        let plain = compare("compare orders");
        let strategies = plain.strategies().unwrap();
        assert_eq!(strategies[..3], Strategy::ALL[..3]);
        assert_eq!(strategies.len() == 4, plain.redis_url().is_some());
        if plain.redis_url().is_none() {
            let redis_decr = compare("compare orders --strategies actor,redis-decr");
            assert!(matches!(redis_decr.strategies(), Err(BenchError::Usage(_))));
        }
    }

    #[test]
    fn compare_refuses_what_it_cannot_run() {
        let twice = compare("compare flash-sale --strategies actor,actor");
        assert!(matches!(twice.strategies(), Err(BenchError::Usage(_))));
        for words in [
            "compare browse",
            "compare coupon-rush",
            "compare flash-sale --strategies actor,optimistic",
            "compare flash-sale --database-url sqlite://x.db",
            "compare flash-sale --redis-url http://127.0.0.1:6379",
            "compare flash-sale --url http://127.0.0.1:8080",
            "compare flash-sale --plot a.svg",
        ] {
            assert!(command(words).is_err(), "{words}");
        }
    }
}
