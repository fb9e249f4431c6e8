//! Supervision in Surge: of its actors, and of its calls to dependencies.
//!
//! This crate owns:
//!
//! * [`Supervisor`]: a one-for-one ractor supervisor for actors keyed by a
//!   `K` (item id, coupon id, order id). Children are spawned through it, so
//!   each failure is attributed to its key by actor id; it keeps per-key
//!   failure records and a [`RestartIntensity`] limit, and hands failures to a
//!   [`SupervisionHook`] (compensation for order sagas, restarts for
//!   registries).
//! * [`ActorRegistry`]: one actor per key, started on first use from durable
//!   state through an [`ActorFactory`], admitted against a per-key bound
//!   ([`Admission`]), restarted eagerly after a failure, and answering
//!   [`RegistryError::Failed`] while a key fails too often. Stock and coupon
//!   actors live in registries.
//! * a [`CircuitBreaker`] per dependency (database, Redis, payment gateway).
//!   After a run of consecutive failures it opens and rejects calls
//!   immediately, so a dead dependency makes requests fail in microseconds
//!   with a precise `retry_after` instead of tying up a worker, a connection
//!   and the client for a full timeout each. After a cool-down it lets a
//!   single trial call through to find out whether the dependency is back.
//!   Guard calls with [`call`](CircuitBreaker::call) or
//!   [`call_classified`](CircuitBreaker::call_classified); fail fast with
//!   [`check`](CircuitBreaker::check). Breakers live in a
//!   [`CircuitRegistry`], whose [`snapshots`](CircuitRegistry::snapshots)
//!   feed the admin API.
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
pub mod registry;
pub mod retry;
pub mod shutdown;
pub mod supervisor;

pub use circuit::{
    CallError, CircuitBreaker, CircuitConfig, CircuitRegistry, CircuitSnapshot, CircuitState,
    Rejected,
};
pub use registry::{
    ActorFactory, ActorRegistry, Admission, KeyView, RegistryError, RegistryLimits, StartError,
    WeakRegistry,
};
pub use retry::{RetryPolicy, retry};
pub use supervisor::{
    Failure, KeyFailures, NoHook, OnFailure, RestartIntensity, SpawnError, SupervisedKey,
    SupervisionHook, Supervisor,
};
