//! The real `surge` binary: fail-fast configuration and graceful stop on SIGTERM.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn surge(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surge"));
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    cmd
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("surge-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_bad_setting_stops_the_node_with_exit_code_2_naming_the_variable() {
    let dir = temp_dir();
    for (variable, value) in [
        ("SURGE_HTTP_ADDR", "nonsense"),
        ("SURGE_DATABASE_URL", "oracle://db/x"),
        ("SURGE_JWT_SECRET", "too-short"),
    ] {
        let out = surge(&dir).env(variable, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{variable}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(variable), "{stderr}");
    }
    assert!(
        !dir.join("surge-data").exists(),
        "nothing is created before the config is valid"
    );
    // The same parser reads `surge serve`'s options, and never echoes a secret.
    let out = surge(&dir)
        .args(["serve", "--jwt-secret", "hunter2-too-short"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("SURGE_JWT_SECRET") && !stderr.contains("hunter2"));
    let out = surge(&dir)
        .env("SURGE_STOCK_STRATEGY", "redis-decr")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs SURGE_REDIS_URL"));
    let out = surge(&dir).arg("launch").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = surge(&dir).args(["serve", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SURGE_FLUSH_TICK_MS"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sigterm_stops_the_node_gracefully_with_exit_code_0() {
    let dir = temp_dir();
    let mut child = surge(&dir)
        .env("SURGE_HTTP_ADDR", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        assert!(
            Instant::now() < deadline,
            "the node never said it was ready"
        );
        let line = lines.next().unwrap().unwrap();
        if line.contains("surge ready") {
            let addr = line.split("addr=").nth(1).unwrap();
            break addr.split_whitespace().next().unwrap().to_owned();
        }
    };
    // The embedded default: a SQLite file and a private key under ./surge-data.
    assert!(dir.join("surge-data/surge.db").exists());
    assert!(dir.join("surge-data/jwt-secret").exists());
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("surge stopped")), "{rest:?}");
    std::fs::remove_dir_all(dir).unwrap();
}
