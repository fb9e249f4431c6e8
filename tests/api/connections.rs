//! The listener under hostile clients (issue 13 item 1): connections that send nothing, a
//! header line now and then, or a body byte by byte are closed; a declared body over the limit
//! is refused before it is read; thousands of idle sockets from one address do not keep other
//! clients out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{Backend, TestApp, send};

const HEADER_TIMEOUT_MS: u64 = 1_000;
const BODY_TIMEOUT_MS: u64 = 1_500;
const IDLE_TIMEOUT_MS: u64 = 3_000;

async fn node(extra: &[(&'static str, &str)]) -> TestApp {
    let header = HEADER_TIMEOUT_MS.to_string();
    let body = BODY_TIMEOUT_MS.to_string();
    let idle = IDLE_TIMEOUT_MS.to_string();
    // The first setting of a name wins: `extra` goes first.
    let mut settings = extra.to_vec();
    settings.extend_from_slice(&[
        ("SURGE_HEADER_TIMEOUT_MS", header.as_str()),
        ("SURGE_BODY_TIMEOUT_MS", body.as_str()),
        ("SURGE_IDLE_TIMEOUT_MS", idle.as_str()),
    ]);
    TestApp::spawn_with(Backend::Sqlite, &settings).await
}

fn addr(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

/// A connection to the node from `source` (any 127.0.0.0/8 address).
async fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// Reads until the server closes the connection (or `within` passes); returns what it sent and
/// whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0_u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), false),
        }
    }
}

/// A client that trickles: sends `piece` each time the server has said nothing for a pace,
/// until the server answers and closes, or `within` passes. Returns what the server sent and
/// whether it closed.
async fn trickle(stream: &mut TcpStream, piece: &[u8], within: Duration) -> (String, bool) {
    const PACE: Duration = Duration::from_millis(250);
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0_u8; 2048];
    while Instant::now() < deadline {
        match tokio::time::timeout(PACE, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => {
                if stream.write_all(piece).await.is_err() {
                    return (String::from_utf8_lossy(&seen).into_owned(), true);
                }
            }
        }
    }
    (String::from_utf8_lossy(&seen).into_owned(), false)
}

fn json_body(answer: &str) -> Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| panic!("no JSON body in {answer:?}"))
}

#[tokio::test]
async fn stalled_clients_are_closed_and_oversized_bodies_refused_unread() {
    let app = node(&[]).await;
    let to = addr(&app);

    // Sends nothing at all: closed after the header timeout.
    let started = Instant::now();
    let mut silent = TcpStream::connect(to).await.unwrap();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert!(closed, "a silent connection stays open");
    assert!(started.elapsed() >= Duration::from_millis(HEADER_TIMEOUT_MS));

    // Slowloris: a header line every 300 ms never completes the head; closed all the same.
    let mut slow = TcpStream::connect(to).await.unwrap();
    slow.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let (_, closed) = trickle(&mut slow, b"x-slow: 1\r\n", Duration::from_secs(10)).await;
    assert!(closed, "a head trickled line by line keeps its connection");

    // A declared body trickled byte by byte: 408 in the envelope, then closed.
    let mut trickling = TcpStream::connect(to).await.unwrap();
    trickling
        .write_all(
            b"POST /api/v1/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let (answer, closed) = trickle(&mut trickling, b" ", Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(closed, "the rest of the body is not waited for");
    assert_eq!(json_body(&answer)["code"], "REQUEST_TIMEOUT");

    // A length written twice (`10, 10`) and no body: refused or timed out, never left hanging.
    let mut doubled = TcpStream::connect(to).await.unwrap();
    doubled
        .write_all(
            b"POST /api/v1/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 10, 10\r\n\r\n",
        )
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut doubled, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer:?}");
    assert!(closed);

    // A declared body over the limit is refused before any of it is sent.
    let mut large = TcpStream::connect(to).await.unwrap();
    large
        .write_all(
            b"POST /api/v1/users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 10000000\r\n\r\n",
        )
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut large, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert_eq!(json_body(&answer)["code"], "PAYLOAD_TOO_LARGE");
    assert!(closed, "the unread body is not waited for");

    // Oversized targets and headers get the envelope too.
    let long = format!("/api/v1/items?q={}", "a".repeat(9_000));
    let answer = send(app.get(&long)).await;
    assert_eq!(answer.0, StatusCode::URI_TOO_LONG, "{}", answer.1);
    assert_eq!(answer.1["code"], "URI_TOO_LONG");
    let answer = send(app.get("/health/live").header("x-big", "b".repeat(20_000))).await;
    assert_eq!(answer.0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(answer.1["code"], "HEADERS_TOO_LARGE");
    app.stop().await;
}

#[tokio::test]
async fn a_kept_alive_connection_lives_until_the_idle_timeout_not_the_header_timeout() {
    let app = node(&[]).await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    let request = b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n";
    stream.write_all(request).await.unwrap();
    let mut buf = [0_u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Idle for longer than the header timeout but less than the idle timeout: the node keeps
    // the connection, and serves the next request on it.
    let (said, closed) =
        read_until_closed(&mut stream, Duration::from_millis(HEADER_TIMEOUT_MS * 2)).await;
    assert!(
        !closed && said.is_empty(),
        "closed before the idle timeout: {said:?}"
    );
    stream.write_all(request).await.unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "closed before the idle timeout"
    );
    let quiet = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(15)).await;
    assert!(closed, "an idle connection stays open");
    assert!(quiet.elapsed() >= Duration::from_millis(IDLE_TIMEOUT_MS - 500));
    app.stop().await;
}

#[tokio::test]
async fn two_thousand_idle_sockets_and_a_slowloris_from_one_address_leave_others_served() {
    let app = node(&[
        ("SURGE_MAX_CONNECTIONS_PER_IP", "100"),
        // Long enough that the idle sockets are still there while the normal client works.
        ("SURGE_HEADER_TIMEOUT_MS", "20000"),
    ])
    .await;
    let to = addr(&app);
    let mut open = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        open.push(connect_from("127.0.0.2", to).await.unwrap());
    }
    // A refused socket gets its answer and is closed; a kept one hears nothing.
    let mut idle = Vec::new();
    let mut refused = 0;
    for mut stream in open {
        let (answer, closed) = read_until_closed(&mut stream, Duration::from_millis(50)).await;
        if closed {
            assert!(answer.starts_with("HTTP/1.1 429"), "{answer:?}");
            assert_eq!(json_body(&answer)["code"], "RATE_LIMITED");
            refused += 1;
        } else {
            assert!(answer.is_empty(), "{answer:?}");
            idle.push(stream);
        }
    }
    assert_eq!(idle.len(), 100, "the address keeps exactly its cap");
    assert_eq!(refused, 1_900);
    // A slowloris from the same address too.
    let mut slow = connect_from("127.0.0.2", to).await.unwrap();
    let _ = slow.write_all(b"GET / HTTP/1.1\r\n").await;
    // Everyone else is served meanwhile.
    for _ in 0..20 {
        let (status, _) = send(app.get("/health/live")).await;
        assert_eq!(status, StatusCode::OK);
        let buyer = app.new_user().await;
        assert!(!buyer.access.is_empty());
    }
    // The slots come back when the sockets go.
    drop(idle);
    crate::helpers::poll_until(
        Duration::from_secs(10),
        "the address's slots to come back",
        || async {
            let mut stream = connect_from("127.0.0.2", to).await.ok()?;
            stream
                .write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .ok()?;
            let mut buf = [0_u8; 64];
            let n = stream.read(&mut buf).await.ok()?;
            String::from_utf8_lossy(&buf[..n])
                .starts_with("HTTP/1.1 200")
                .then_some(())
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn past_the_node_wide_cap_a_connection_is_told_to_come_back() {
    let app = node(&[
        ("SURGE_MAX_CONNECTIONS", "50"),
        ("SURGE_MAX_CONNECTIONS_PER_IP", "0"),
        ("SURGE_HEADER_TIMEOUT_MS", "20000"),
    ])
    .await;
    let to = addr(&app);
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(connect_from("127.0.0.3", to).await.unwrap());
    }
    // Give the node a moment to accept them all, then one more is refused.
    crate::helpers::poll_until(
        Duration::from_secs(10),
        "the 51st connection to be refused",
        || async {
            let mut extra = connect_from("127.0.0.4", to).await.ok()?;
            let (answer, _) = read_until_closed(&mut extra, Duration::from_millis(500)).await;
            answer.starts_with("HTTP/1.1 503").then_some(answer)
        },
    )
    .await;
    drop(held);
    app.stop().await;
}
