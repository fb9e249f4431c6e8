use std::process::ExitCode;

use clap::{Parser, Subcommand};
use surge::config::{ConfigError, ServeArgs};
use surge::{Application, telemetry};
use surge_bench::{BenchArgs, BenchCommand};

/// A flash-sale e-commerce API built as an actor system.
///
/// Configuration comes from SURGE_* environment variables (or the options of `surge serve`);
/// see README.md.
#[derive(Debug, Parser)]
#[command(name = "surge", version)]
struct Cli {
    /// What to do [default: serve].
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start, never copied on a hot path"
)]
enum Command {
    Serve(ServeArgs),
    Bench(BenchArgs),
}

fn main() -> ExitCode {
    let command = match parse(std::env::args_os()) {
        Ok(command) => command,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("surge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::Serve(settings) => runtime.block_on(serve(settings)),
        Command::Bench(args) => ExitCode::from(runtime.block_on(bench(args.into_command()))),
    }
}

/// The command the words ask for (`serve` when they name none). A setting `serve` refuses is
/// one line naming its variable, exit code 2; other trouble with the words, and `--help`, are
/// clap's to print.
fn parse(words: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Command, ExitCode> {
    let parsed = Cli::try_parse_from(words).and_then(|cli| match cli.command {
        Some(command) => Ok(command),
        None => Cli::try_parse_from(["surge", "serve"]).map(|cli| {
            cli.command
                .unwrap_or_else(|| unreachable!("`serve` was given"))
        }),
    });
    parsed.map_err(|e| match ConfigError::from_clap(&e) {
        Some(config) => config_refused(&config),
        None => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
        }
    })
}

fn config_refused(error: &ConfigError) -> ExitCode {
    eprintln!("surge: invalid configuration: {error}");
    ExitCode::from(2)
}

/// `surge serve`: until SIGTERM or Ctrl-C.
async fn serve(settings: ServeArgs) -> ExitCode {
    let config = match settings.into_config() {
        Ok(config) => config,
        Err(e) => return config_refused(&e),
    };
    telemetry::init_logging("info");
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "surge could not start");
            return if e.is_refusal() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "surge stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// `surge bench`: against `--url`, or against a node of this binary started for the run;
/// `surge bench compare`: against a fresh node per stock strategy.
async fn bench(command: BenchCommand) -> u8 {
    match command {
        BenchCommand::Run(options) => {
            let admin = options.admin_credentials();
            match &options.url {
                Some(url) => surge_bench::run_and_print(&options, url, admin.as_ref()).await,
                None => surge_bench::run_embedded(&options, admin).await,
            }
        }
        BenchCommand::Compare(options) => surge_bench::compare_and_print(&options).await,
    }
}
