//! Waiting for a condition in a test: poll it, with a deadline, instead of sleeping a fixed time.

use std::time::{Duration, Instant};

/// How often a condition is looked at again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Polls `check` until it answers `Some`, or panics naming `what` once `within` has passed.
pub async fn poll_until<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}
