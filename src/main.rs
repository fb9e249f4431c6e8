use std::process::ExitCode;

use surge::{Application, Config, StopHandle, telemetry};
use surge_bench::{BenchCommand, EXIT_USAGE, LaunchError, Launcher};
use tokio::task::JoinHandle;

const USAGE: &str = "usage: surge [serve]\n       surge bench <scenario> [options]   (surge bench --help)\n       surge bench compare <scenario> [options]   (surge bench compare --help)\n\nConfiguration comes from SURGE_* environment variables; see README.md.";

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {}
        Some("bench") => return bench().await,
        Some("-h" | "--help" | "help") => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("surge: unknown command '{other}'\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("surge: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging("info");
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "surge could not start");
            return ExitCode::FAILURE;
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

/// `surge bench`: against `--url`, or against a node started here for the run; `surge bench
/// compare`: against a fresh node per stock strategy.
async fn bench() -> ExitCode {
    let command = match BenchCommand::parse_words(std::env::args().skip(2)) {
        Ok(command) => command,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    let code = match command {
        BenchCommand::Run(options) => {
            let admin = options.admin_credentials();
            match &options.url {
                Some(url) => surge_bench::run_and_print(&options, url, admin.as_ref()).await,
                None => {
                    quiet_node_logging();
                    surge_bench::run_embedded(&options, admin, &InProcess).await
                }
            }
        }
        BenchCommand::Compare(options) => {
            quiet_node_logging();
            surge_bench::compare_and_print(&options, &InProcess).await
        }
    };
    ExitCode::from(code)
}

/// The node's info lines would drown the progress bar and the report; RUST_LOG still wins.
fn quiet_node_logging() {
    telemetry::init_logging("warn");
}

/// Starts the nodes of `surge bench` in this process, as `surge serve` would build them.
#[derive(Debug)]
struct InProcess;

/// A node [`InProcess`] started: how to stop it, and the task serving it.
#[derive(Debug)]
struct Serving {
    stop: StopHandle,
    task: JoinHandle<std::io::Result<()>>,
}

impl Launcher for InProcess {
    type Running = Serving;

    async fn start(
        &self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Serving, String), LaunchError> {
        let config = Config::from_lookup(lookup).map_err(|e| LaunchError::Config(e.to_string()))?;
        let app = Application::build(config)
            .await
            .map_err(|e| LaunchError::Start(e.to_string()))?;
        let addr = app
            .local_addr()
            .map_err(|e| LaunchError::Start(format!("it has no address: {e}")))?;
        let stop = app.stop_handle();
        let task = tokio::spawn(app.run_until_stopped());
        Ok((Serving { stop, task }, format!("http://{addr}")))
    }

    async fn stop(&self, node: Serving) -> Result<(), String> {
        node.stop.stop();
        match node.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("its task failed: {e}")),
        }
    }
}
