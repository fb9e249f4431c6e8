//! `surge bench` end to end: the real binary starts its own node, runs a small flash sale and
//! prints the JSON report; `surge bench compare` does it once per stock strategy.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

fn surge_bench(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surge"));
    // No SURGE_* from the caller's environment: the embedded node uses its own settings.
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("bench")
        .args(args)
        .stdin(Stdio::null());
    cmd
}

#[test]
fn a_small_embedded_flash_sale_reports_every_field_and_keeps_its_invariants() {
    const UNITS: u64 = 10;
    const ATTEMPTS: u64 = 200;
    let started = Instant::now();
    let out = surge_bench(&[
        "flash-sale",
        "--json",
        "--users",
        "20",
        "--units",
        &UNITS.to_string(),
        "--attempts",
        &ATTEMPTS.to_string(),
        "--concurrency",
        "16",
        "--ceiling-duration",
        "1s",
    ])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
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
        "ceiling",
    ] {
        assert!(report.get(field).is_some(), "no {field}: {report}");
    }
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            report["latency_ms"][p].as_f64().unwrap() > 0.0,
            "{p}: {report}"
        );
    }
    assert_eq!(report["scenario"], "flash-sale");
    assert_eq!(report["requests"], ATTEMPTS);
    assert_eq!(report["invariants_ok"], true, "{report}");
    let checks = report["invariants"].as_array().unwrap();
    assert!(
        checks.len() >= 2 && checks.iter().all(|c| c["ok"] == true),
        "{report}"
    );
    // 200 attempts on 10 units: exactly the units sell, the rest are told OUT_OF_STOCK.
    assert_eq!(report["by_status"]["201"], UNITS, "{report}");
    assert_eq!(
        report["by_code"]["OUT_OF_STOCK"],
        ATTEMPTS - UNITS,
        "{report}"
    );
    assert!(report["throughput_rps"].as_f64().unwrap() > 0.0);
    assert!(report["ceiling"]["throughput_rps"].as_f64().unwrap() > 0.0);
    eprintln!("embedded flash-sale bench took {:?}", started.elapsed());
}

#[test]
fn a_small_embedded_comparison_runs_each_strategy_on_its_own_node() {
    const UNITS: u64 = 10;
    const ATTEMPTS: u64 = 150;
    const STRATEGIES: [&str; 2] = ["actor", "conditional-update"];
    let started = Instant::now();
    let out = surge_bench(&[
        "compare",
        "flash-sale",
        "--json",
        "--strategies",
        &STRATEGIES.join(","),
        "--users",
        "10",
        "--units",
        &UNITS.to_string(),
        "--attempts",
        &ATTEMPTS.to_string(),
        "--concurrency",
        "8",
        "--no-ceiling",
    ])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    let comparison: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(comparison["scenario"], "flash-sale");
    assert_eq!(comparison["database"], "sqlite");
    let runs = comparison["runs"].as_array().unwrap();
    let table = comparison["table"].as_array().unwrap();
    assert_eq!(runs.len(), STRATEGIES.len(), "{comparison}");
    assert_eq!(table.len(), STRATEGIES.len(), "{comparison}");
    for (i, strategy) in STRATEGIES.into_iter().enumerate() {
        let (run, row) = (&runs[i], &table[i]);
        assert_eq!(run["strategy"], strategy, "{comparison}");
        assert_eq!(row["strategy"], strategy, "{comparison}");
        assert_eq!(run["invariants_ok"], true, "{run}");
        assert_eq!(row["invariants_ok"], true, "{row}");
        // Each node started on its own fresh database: exactly its units sell.
        assert_eq!(run["requests"], ATTEMPTS, "{run}");
        assert_eq!(run["by_status"]["201"], UNITS, "{run}");
        assert!(row["throughput_rps"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["p99_ms"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["ratio_to_actor"].as_f64().unwrap() > 0.0, "{row}");
    }
    assert_ne!(runs[0]["url"], runs[1]["url"], "one node per strategy");
    assert_eq!(table[0]["ratio_to_actor"], 1.0, "{comparison}");
    assert_eq!(table[0]["p99_ratio_to_actor"], 1.0, "{comparison}");
    eprintln!("embedded comparison took {:?}", started.elapsed());
}

#[test]
fn bad_bench_options_exit_2_and_help_exits_0() {
    let out = surge_bench(&["flash-sale", "--rate", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = surge_bench(&["checkout"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = surge_bench(&["--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--concurrency"));
    // The caller's environment is cleared, so there is no SURGE_REDIS_URL to fall back to.
    let out = surge_bench(&["compare", "flash-sale", "--strategies", "redis-decr"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs Redis"));
    let out = surge_bench(&["compare", "browse"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = surge_bench(&["compare", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--strategies"));
}
