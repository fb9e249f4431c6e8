//! The measured requests' own HTTP/1 connections.
//!
//! A pooled `reqwest` client hands every request to a connection task over a channel and gets
//! the answer back over another, two task switches per request; with URL parsing and the pool's
//! lock that made the load tool, not the node, the limit on cheap requests (its `/health/live`
//! ceiling was 58–64% of wrk's on the same node). Here a worker takes an idle connection, writes
//! the request and reads the answer in its own task (it polls the connection itself), and puts
//! the connection back: no channel, no extra task, nothing parsed but the answer.

use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use reqwest::header::{HOST, HeaderValue};
use tokio::net::TcpStream;

/// One keep-alive connection, driven by whichever worker holds it.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    connection: Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("the URL has no host")]
    NoHost,
    #[error("not a valid HTTP request: {0}")]
    Invalid(String),
}

/// Idle connections to each node, keyed by `host:port`.
#[derive(Default)]
pub struct Wire {
    idle: Mutex<Vec<(String, Conn)>>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire").finish_non_exhaustive()
    }
}

impl Wire {
    /// Sends `request` (built by reqwest: method, URL, headers and body) and reads the whole
    /// answer; the connection goes back to the idle list when it can carry another request.
    pub async fn send(
        &self,
        request: reqwest::Request,
    ) -> Result<(reqwest::StatusCode, Bytes), WireError> {
        let url = request.url();
        let host = url.host_str().ok_or(WireError::NoHost)?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let mut conn = match self.take(&authority) {
            Some(conn) => conn,
            None => connect(&authority).await?,
        };
        let body = request
            .body()
            .and_then(reqwest::Body::as_bytes)
            .map(Bytes::copy_from_slice)
            .unwrap_or_default();
        let mut outgoing = hyper::Request::builder()
            .method(request.method().clone())
            .uri(target)
            .body(Full::new(body))
            .map_err(|e| WireError::Invalid(e.to_string()))?;
        *outgoing.headers_mut() = request.headers().clone();
        outgoing.headers_mut().insert(
            HOST,
            HeaderValue::from_str(&authority).map_err(|e| WireError::Invalid(e.to_string()))?,
        );
        let mut open = true;
        let answered = conn.sender.send_request(outgoing);
        let response = drive(&mut conn, &mut open, answered).await??;
        let status = response.status();
        let collected = drive(&mut conn, &mut open, response.into_body().collect()).await??;
        if open && conn.sender.is_ready() {
            self.give_back(authority, conn);
        }
        Ok((status, collected.to_bytes()))
    }

    fn take(&self, authority: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let at = idle.iter().rposition(|(a, _)| a == authority)?;
        Some(idle.swap_remove(at).1)
    }

    fn give_back(&self, authority: String, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((authority, conn));
    }
}

/// Opens a connection (no Nagle: requests are small and answered one at a time).
async fn connect(authority: &str) -> Result<Conn, WireError> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    Ok(Conn {
        sender,
        connection: Box::pin(connection),
    })
}

/// Awaits `work` while polling the connection that carries it. `open` turns false when the
/// connection ended (the server closed it); the work may still finish from what was read.
async fn drive<T>(
    conn: &mut Conn,
    open: &mut bool,
    work: impl Future<Output = T>,
) -> Result<T, WireError> {
    let mut work = std::pin::pin!(work);
    loop {
        if !*open {
            return Ok(work.await);
        }
        tokio::select! {
            biased;
            done = &mut work => return Ok(done),
            ended = conn.connection.as_mut() => {
                *open = false;
                if let Err(e) = ended {
                    return Err(WireError::Http(e));
                }
            }
        }
    }
}
