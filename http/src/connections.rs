//! The listener: accepts connections under a global and a per-address cap, serves each with
//! HTTP/1.1, and closes connections that stall.
//!
//! A public node must not be taken offline by one client that opens sockets and sends nothing,
//! sends a header line every few seconds (slowloris), or trickles a declared body byte by byte.
//! Each connection has a watchdog in its own task that closes it when:
//! - the head of a request (from the connection's start, or from the first byte after an idle
//!   spell) is not complete within the header timeout;
//! - no byte moved either way for the idle timeout while no request is being answered;
//!
//! and the body of a request must arrive whole within the body timeout ([`read_body`], 408).
//! A body whose declared length is over the limit is refused before any of it is read (413).
//! Answers that take long legitimately (order status streams) write heartbeats, which count as
//! traffic.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::error::{ApiError, MAX_BODY_BYTES};
use crate::slots::Slots;

/// Limits of the listener (`SURGE_MAX_CONNECTIONS`, `SURGE_*_TIMEOUT_MS`, …).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at once; beyond it a new connection is answered 503 and closed. Kept
    /// below the process's file limit so that the node can still open files and database
    /// connections when it is full.
    pub max_connections: usize,
    /// Open connections from one address at once (0: no cap); beyond it 429 and closed. Behind
    /// a load balancer every connection comes from the balancer: set it to 0 there and cap per
    /// client at the balancer.
    pub max_connections_per_ip: usize,
    /// Time for a request's head to arrive whole, from the connection's start or from the
    /// first byte of the request.
    pub header_timeout: Duration,
    /// Time for a request's body to arrive whole.
    pub body_timeout: Duration,
    /// Time a connection may stay open with nothing moving and no request being answered.
    pub idle_timeout: Duration,
}

/// How often a connection's watchdog looks at it. Timeouts fire up to this late; once a second
/// keeps 10,000 idle connections at 10,000 timer wake-ups a second.
const WATCH_TICK: Duration = Duration::from_secs(1);
/// How long a refused connection gets to take its short answer.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most bytes of a request head hyper buffers.
const MAX_HEAD_BUFFER: usize = 64 * 1024;
/// How long a stopping node waits for its connections to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after an accept error (typically out of file descriptors) before accepting again, so
/// the loop does not spin while connections close.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What the watchdog knows of one connection, updated by its reads, writes and requests.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Milliseconds since `opened` of the last byte read or written.
    last_traffic: AtomicU64,
    /// Milliseconds since `opened` (plus one, so 0 means none) when the head now being read
    /// began: set at the start and by the first byte read while no request is being answered,
    /// cleared when a head is complete.
    head_started: AtomicU64,
    /// Requests whose answer is being made or sent: from the service's call until the answer's
    /// body is done (an order status stream counts until it ends).
    answering: AtomicU32,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_traffic: AtomicU64::new(0),
            head_started: AtomicU64::new(1),
            answering: AtomicU32::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn traffic(&self, read: bool) {
        self.traffic_at(read, self.now_ms());
    }

    /// [`Self::traffic`] at `now` (ms since the connection opened).
    fn traffic_at(&self, read: bool, now: u64) {
        self.last_traffic.store(now, Ordering::Relaxed);
        if read && self.answering.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_started
                    .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.answering.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
    }

    fn request_answered(&self) {
        self.request_answered_at(self.now_ms());
    }

    /// [`Self::request_answered`] at `now`.
    fn request_answered_at(&self, now: u64) {
        self.last_traffic.store(now, Ordering::Relaxed);
        self.answering.fetch_sub(1, Ordering::AcqRel);
    }

    /// Why the connection must close now, if it must.
    fn overdue(&self, limits: &ConnectionLimits) -> Option<&'static str> {
        self.overdue_at(limits, self.now_ms())
    }

    /// [`Self::overdue`] at `now`.
    fn overdue_at(&self, limits: &ConnectionLimits, now: u64) -> Option<&'static str> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if self.answering.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_started.load(Ordering::Acquire);
        if head > 0 {
            return (now.saturating_sub(head - 1) > ms(limits.header_timeout))
                .then_some("request head not complete in time");
        }
        (now.saturating_sub(self.last_traffic.load(Ordering::Relaxed)) > ms(limits.idle_timeout))
            .then_some("idle")
    }
}

/// Ends a request's "answering" when its answer's body is dropped: sent whole, or the
/// connection gone.
struct AnsweredOnDrop(Arc<Activity>);

impl Drop for AnsweredOnDrop {
    fn drop(&mut self) {
        self.0.request_answered();
    }
}

/// An answer's body, with the guard that ends its request's "answering" when it is done. Size
/// and end are the inner body's, so `Content-Length` answers stay as they are.
struct WatchedBody {
    inner: Body,
    _answered: AnsweredOnDrop,
}

impl http_body::Body for WatchedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A socket that tells its [`Activity`] about every byte moved.
struct WatchedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.traffic(true);
        }
        polled
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.traffic(false);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.traffic(false);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The short answer of a refused connection, in the error envelope.
fn refusal(status: StatusCode, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn refuse(mut stream: TcpStream, answer: Vec<u8>) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
            let _ = stream.write_all(&answer).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

/// Serves `router` on `listener` until `stop` turns true; then closes the listener, lets every
/// open connection finish its request in flight, and returns once all are closed or after
/// [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let permits = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(Slots::new(limits.max_connections_per_ip, 0));
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog keeps the time of every phase; hyper's own header timer (which also ends
    // idle keep-alive connections at the header timeout) is off. hyper buffers at most 64 KiB
    // of a request head (past it a bare 431); the envelope's 414/431 come well before.
    builder
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BUFFER);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            refuse(
                stream,
                refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "OVERLOADED",
                    "the node has too many open connections; try again shortly",
                ),
            );
            continue;
        };
        let Ok(slot) = per_address.take(crate::limits::network(peer.ip())) else {
            refuse(
                stream,
                refusal(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMITED",
                    "too many open connections from this address",
                ),
            );
            continue;
        };
        let connection =
            serve_connection(&builder, stream, peer, router.clone(), limits, stop.clone());
        tokio::spawn(async move {
            connection.await;
            drop(slot);
            drop(permit);
        });
    }
    // No new connection from here on. Every connection holds a permit until it is closed; an
    // answer still streaming (an order's status stream) does not hold the node's stop up for
    // more than the grace.
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, open.acquire_many(permits))
        .await
        .is_err()
    {
        tracing::warn!(
            still_open = limits
                .max_connections
                .saturating_sub(open.available_permits()),
            "stopping with connections still answering after the shutdown grace"
        );
    }
    Ok(())
}

/// Resolves once the stop signal is on (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn serve_connection(
    builder: &hyper::server::conn::http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let service_activity = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
        let activity = Arc::clone(&service_activity);
        activity.request_started();
        let answered = AnsweredOnDrop(activity);
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        let answer = router.clone().oneshot(request);
        async move {
            let response = answer.await.unwrap_or_else(|never| match never {});
            Ok::<_, Infallible>(response.map(|inner| WatchedBody {
                inner,
                _answered: answered,
            }))
        }
    });
    let connection = builder.serve_connection(io, service);
    async move {
        let mut connection = std::pin::pin!(connection);
        let mut tick = tokio::time::interval(WATCH_TICK);
        let mut stopping = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = tick.tick() => {
                    if let Some(reason) = activity.overdue(&limits) {
                        tracing::debug!(%peer, reason, "closing a stalled connection");
                        return;
                    }
                }
                () = stopped(&mut stop), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The longest request target accepted (414 beyond, in the error envelope; hyper's own limit,
/// 64 KiB, answers without one).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header bytes (names and values) accepted (431 beyond, in the error envelope;
/// hyper's own limit, about 400 KiB, answers without one).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Checks a request's size and reads its body whole before the handler runs: a target over
/// [`MAX_URI_BYTES`] is 414, headers over [`MAX_HEADER_BYTES`] 431, a declared length over
/// [`MAX_BODY_BYTES`] 413 before any of the body is read, and a body that does not arrive
/// within `body_timeout` 408. These answers close the connection (the rest of the request is
/// never read).
pub async fn bounded_request(
    axum::extract::State(body_timeout): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let uri = request.uri();
    let target = uri.path().len() + uri.query().map_or(0, |q| q.len() + 1);
    if target > MAX_URI_BYTES {
        return closing(ApiError::UriTooLong {
            limit: MAX_URI_BYTES,
        });
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return closing(ApiError::HeadersTooLarge {
            limit: MAX_HEADER_BYTES,
        });
    }
    // What hyper made of the framing headers (not the raw header: `content-length: 10, 10` is
    // a body of 10 bytes to hyper).
    let body = request.body();
    if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
        return closing(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    // Nearly every GET: no body to wait for.
    if body.is_end_stream() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(body_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES));
    match read.await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => closing(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        }),
        Err(_) => closing(ApiError::RequestTimeout),
    }
}

fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 10,
            max_connections_per_ip: 2,
            header_timeout: Duration::from_millis(40),
            body_timeout: Duration::from_millis(40),
            idle_timeout: Duration::from_millis(80),
        }
    }

    #[test]
    fn a_head_that_does_not_complete_in_time_is_overdue() {
        let activity = Activity::new();
        assert_eq!(activity.overdue_at(&limits(), 40), None);
        assert!(
            activity.overdue_at(&limits(), 41).is_some(),
            "nothing sent since the start"
        );
    }

    #[test]
    fn an_answered_request_leaves_the_idle_timeout_not_the_header_timeout() {
        let activity = Activity::new();
        activity.traffic_at(true, 5);
        activity.request_started();
        assert_eq!(
            activity.overdue_at(&limits(), 500),
            None,
            "a request is being answered"
        );
        activity.request_answered_at(500);
        assert_eq!(
            activity.overdue_at(&limits(), 560),
            None,
            "idle for 60 ms of 80"
        );
        assert_eq!(activity.overdue_at(&limits(), 581), Some("idle"));
        // A byte of the next request starts the header clock again.
        activity.traffic_at(true, 590);
        assert_eq!(activity.overdue_at(&limits(), 630), None);
        assert_eq!(
            activity.overdue_at(&limits(), 631),
            Some("request head not complete in time")
        );
    }
}
