use std::process::ExitCode;

use surge::{Application, Config, telemetry};
use surge_bench::{AdminCredentials, BenchOptions, EXIT_RUN_FAILED, EmbeddedNode};

const USAGE: &str = "usage: surge [serve]\n       surge bench <scenario> [options]   (surge bench --help)\n\nConfiguration comes from SURGE_* environment variables; see README.md.";

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

/// `surge bench`: against `--url`, or against a node started here for the run.
async fn bench() -> ExitCode {
    let options = match BenchOptions::parse_words(std::env::args().skip(2)) {
        Ok(options) => options,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let admin = options.admin_credentials();
    let code = match &options.url {
        Some(url) => surge_bench::run_and_print(&options, url, admin.as_ref()).await,
        None => bench_embedded(&options, admin).await,
    };
    ExitCode::from(code)
}

/// Starts a node on a fresh temporary SQLite database and a loopback port, runs the bench
/// against it, stops it and deletes its data.
async fn bench_embedded(options: &BenchOptions, admin: Option<AdminCredentials>) -> u8 {
    // The node's info lines would drown the progress bar; RUST_LOG still wins.
    telemetry::init_logging("warn");
    let node = EmbeddedNode::plan(admin);
    let config =
        match Config::from_lookup(|name| node.setting(name).or_else(|| std::env::var(name).ok())) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("surge bench: invalid configuration for the embedded node: {e}");
                return 2;
            }
        };
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("surge bench: the embedded node could not start: {e}");
            let _ = node.remove_data();
            return EXIT_RUN_FAILED;
        }
    };
    let url = match app.local_addr() {
        Ok(addr) => format!("http://{addr}"),
        Err(e) => {
            eprintln!("surge bench: the embedded node has no address: {e}");
            return EXIT_RUN_FAILED;
        }
    };
    let stop = app.stop_handle();
    let serving = tokio::spawn(app.run_until_stopped());
    let code = surge_bench::run_and_print(options, &url, Some(&node.admin)).await;
    stop.stop();
    match serving.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("surge bench: the embedded node stopped with an error: {e}"),
        Err(e) => eprintln!("surge bench: the embedded node failed: {e}"),
    }
    if let Err(e) = node.remove_data() {
        eprintln!(
            "surge bench: could not remove {}: {e}",
            node.data_dir.display()
        );
    }
    code
}
