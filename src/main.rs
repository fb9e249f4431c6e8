use std::process::ExitCode;

use surge::{Application, Config, telemetry};

const USAGE: &str = "usage: surge [serve]\n\nConfiguration comes from SURGE_* environment variables; see README.md.";

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {}
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
