//! Supervision of Surge's calls to its dependencies.
//!
//! Every call to a dependency (database, payment gateway, cluster peers)
//! goes through two guards:
//!
//! * a [`CircuitBreaker`] per dependency. After a run of consecutive
//!   failures it opens and rejects calls immediately, so a dead dependency
//!   makes requests fail in microseconds with a precise `retry_after` instead
//!   of tying up a worker, a connection and the client for a full timeout
//!   each. After a cool-down it lets a single trial call through to find out
//!   whether the dependency is back. Breakers live in a [`CircuitRegistry`],
//!   whose [`snapshots`](CircuitRegistry::snapshots) feed the admin API.
//! * [`retry()`] with full-jitter exponential backoff ([`RetryPolicy`]), bounded
//!   by the deadline of the request being served: a retry that could not
//!   finish before the client gives up is not attempted, and the last error
//!   is returned instead.
//!
//! Put the breaker inside the retry loop (each attempt asks the breaker) and
//! classify [`CallError::Open`] as not retryable, so an open circuit ends the
//! retries at once.
//!
//! ```
//! use std::time::Duration;
//! use surge_supervisors::{CallError, CircuitConfig, CircuitRegistry, RetryPolicy, retry};
//!
//! # async fn query() -> Result<u32, std::io::Error> { Ok(1) }
//! # async fn demo() -> Result<u32, CallError<std::io::Error>> {
//! let registry = CircuitRegistry::new();
//! let db = registry.get_or_create("db", CircuitConfig::default());
//! let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
//! retry(
//!     &RetryPolicy::default(),
//!     deadline,
//!     |e| matches!(e, CallError::Inner(_)),
//!     |_attempt| db.call(query),
//! )
//! .await
//! # }
//! ```

pub mod circuit;
pub mod retry;

pub use circuit::{
    CallError, CallPermit, CircuitBreaker, CircuitConfig, CircuitRegistry, CircuitSnapshot,
    CircuitState, Clock, Rejected,
};
pub use retry::{RetryPolicy, retry};
