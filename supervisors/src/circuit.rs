//! Per-dependency circuit breaker.
//!
//! A [`CircuitBreaker`] sits in front of one downstream dependency (the
//! database, the payment gateway, ...). While the dependency is healthy the
//! breaker is [`Closed`](CircuitState::Closed) and every call goes through.
//! After [`CircuitConfig::failure_threshold`] consecutive failures it
//! [`Open`](CircuitState::Open)s and rejects calls immediately with a
//! [`Rejected`] carrying the exact time until a trial call will be admitted.
//! Once [`CircuitConfig::open_for`] has elapsed the next caller becomes a trial
//! ([`HalfOpen`](CircuitState::HalfOpen)); the trial's outcome either closes
//! the circuit again or re-opens it for another `open_for` period.
//!
//! Guard a call with [`CircuitBreaker::call`], or with
//! [`CircuitBreaker::call_classified`] when some errors say nothing about the
//! dependency's health (overloaded, conflict): the permit is held across the
//! awaited call, so the breaker sees exactly the call it guards. Use
//! [`CircuitBreaker::check`] to fail fast before queueing work; it takes no
//! trial slot.
//!
//! The breaker is a small piece of state behind a `std::sync::Mutex`; every
//! operation is O(1) and never holds the lock across an `.await`, so it is
//! cheap enough to consult on every request.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Source of the current time. Injectable so tests can move time forward
/// without sleeping.
type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Number of buckets in the sliding failure-rate window.
///
/// Concurrency/cost decision: a fixed ring of buckets keeps memory and the
/// time spent under the lock constant no matter how many calls per second go
/// through the breaker (a per-call log would grow with traffic and make the
/// critical section O(n)). The price is granularity: the window covers
/// between `(BUCKETS - 1) / BUCKETS` and all of [`CircuitConfig::window`].
const BUCKETS: usize = 10;

/// Observable state of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CircuitState {
    /// Healthy: every call is admitted.
    Closed,
    /// Tripped: calls are rejected until `open_for` has elapsed.
    Open,
    /// Probing: a limited number of trial calls decide whether to close again.
    HalfOpen,
}

/// Tuning for a [`CircuitBreaker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit (default 5). Values below 1
    /// are treated as 1.
    pub failure_threshold: u32,
    /// Length of the sliding window behind the recent call/failure counts
    /// shown in admin snapshots (default 10 s). Informational only: tripping
    /// is decided by consecutive failures, not by this rate.
    pub window: Duration,
    /// How long the circuit stays open before a trial call is admitted
    /// (default 2 s).
    pub open_for: Duration,
    /// Concurrent trial calls admitted while half-open (default 1). Values
    /// below 1 are treated as 1, otherwise the circuit could never close.
    ///
    /// Concurrency decision: the default of one means a dead dependency sees
    /// exactly one probe per `open_for` period rather than a thundering herd
    /// of every request that arrives at the moment the period ends.
    pub half_open_max_trials: u32,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(2),
            half_open_max_trials: 1,
        }
    }
}

/// A call was refused because the circuit is open (or half-open with all
/// trial slots taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open; retry after {retry_after:?}")]
pub struct Rejected {
    /// Exact time until a trial call can be admitted. While half-open with
    /// every trial slot busy the real answer depends on the trial's outcome;
    /// `open_for` is reported, which is the wait if the trial fails.
    pub retry_after: Duration,
}

/// Error returned by [`CircuitBreaker::call`].
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The breaker refused the call without running it.
    #[error("circuit open; retry after {retry_after:?}")]
    Open {
        /// Time until a trial call can be admitted (see [`Rejected`]).
        retry_after: Duration,
    },
    /// The call ran and failed with the dependency's own error.
    #[error(transparent)]
    Inner(E),
}

impl<E> From<Rejected> for CallError<E> {
    fn from(rejected: Rejected) -> Self {
        Self::Open {
            retry_after: rejected.retry_after,
        }
    }
}

/// Point-in-time view of a breaker for the admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitSnapshot {
    /// Name of the protected dependency.
    pub dependency: &'static str,
    /// Current state. An open circuit whose `open_for` has elapsed still
    /// reports `open` (with `retry_after_ms == Some(0)`) until the next caller
    /// turns into the trial.
    pub state: CircuitState,
    /// Current run of consecutive failures (reset by a success).
    pub consecutive_failures: u32,
    /// Calls that completed (success or failure) within the window. Rejected
    /// and cancelled calls are not counted: they never told us anything about
    /// the dependency.
    pub recent_calls: u64,
    /// Failed calls within the window.
    pub recent_failures: u64,
    /// `recent_failures / recent_calls`, 0 when there were no calls.
    pub recent_failure_rate: f64,
    /// Seconds since the circuit last opened, `None` while closed.
    pub opened_at: Option<f64>,
    /// Milliseconds (rounded up) until a trial is admitted, only while open.
    pub retry_after_ms: Option<u64>,
}

/// Internal state machine; `HalfOpen` carries the number of trials in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open,
    HalfOpen {
        /// Trial permits currently outstanding.
        ///
        /// Concurrency decision: counted (not a bool) so that
        /// `half_open_max_trials > 1` works, and decremented by a dropped
        /// permit so a cancelled trial cannot wedge the circuit half-open.
        in_flight: u32,
    },
}

impl Phase {
    fn state(self) -> CircuitState {
        match self {
            Self::Closed => CircuitState::Closed,
            Self::Open => CircuitState::Open,
            Self::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    epoch: u64,
    calls: u64,
    failures: u64,
}

/// Bucketed sliding window of completed calls.
#[derive(Debug)]
struct Window {
    origin: Instant,
    bucket_nanos: u128,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(origin: Instant, window: Duration) -> Self {
        Self {
            origin,
            bucket_nanos: (window.as_nanos() / BUCKETS as u128).max(1),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(nanos / self.bucket_nanos).unwrap_or(u64::MAX)
    }

    fn record(&mut self, now: Instant, failed: bool) {
        let epoch = self.epoch(now);
        // `BUCKETS` is tiny, so the modulo always fits in usize.
        let bucket = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        bucket.calls += 1;
        bucket.failures += u64::from(failed);
    }

    fn totals(&self, now: Instant) -> (u64, u64) {
        let current = self.epoch(now);
        self.buckets
            .iter()
            .filter(|b| b.epoch <= current && current - b.epoch < BUCKETS as u64)
            .fold((0, 0), |(calls, failures), b| {
                (calls + b.calls, failures + b.failures)
            })
    }
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Bumped on every phase change; permits remember the generation they
    /// were issued in.
    ///
    /// Concurrency decision: calls admitted before a transition can finish
    /// after it. Their outcome still counts in the window statistics, but
    /// must not drive the state machine: a slow success from before the
    /// circuit opened must not close it, and a late failure must neither
    /// extend the open period nor consume a half-open trial slot.
    generation: u64,
    consecutive_failures: u32,
    /// When the circuit last opened; `Some` while open or half-open.
    opened_at: Option<Instant>,
    window: Window,
}

/// What a permit remembers about the moment it was issued.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    generation: u64,
    trial: bool,
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Failure,
}

/// A circuit breaker for one dependency. Share it via `Arc` (or a
/// [`CircuitRegistry`]).
pub struct CircuitBreaker {
    dependency: &'static str,
    config: CircuitConfig,
    /// Concurrency decision: a `std::sync::Mutex` rather than an async lock or
    /// atomics. Every critical section is a handful of integer updates and is
    /// never held across an `.await`, so a blocking lock is uncontended in
    /// practice and far cheaper than `tokio::sync::Mutex`; keeping all fields
    /// under one lock makes each transition atomic without lock-free trickery.
    inner: Mutex<Inner>,
    /// Concurrency decision: read while holding `inner`'s lock, so the
    /// timestamps recorded by transitions are monotone in lock order.
    clock: Clock,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("dependency", &self.dependency)
            .field("config", &self.config)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// Creates a closed breaker for `dependency` using the system clock.
    pub fn new(dependency: &'static str, config: CircuitConfig) -> Self {
        let clock: Clock = Arc::new(Instant::now);
        let now = clock();
        let config = CircuitConfig {
            failure_threshold: config.failure_threshold.max(1),
            half_open_max_trials: config.half_open_max_trials.max(1),
            ..config
        };
        Self {
            dependency,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                generation: 0,
                consecutive_failures: 0,
                opened_at: None,
                window: Window::new(now, config.window),
            }),
            config,
            clock,
        }
    }

    /// Replaces the time source (for tests). Must return monotone instants.
    /// Call before the breaker is used: it restarts the statistics window.
    #[cfg(test)]
    fn with_clock(mut self, clock: Clock) -> Self {
        let now = clock();
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        inner.window = Window::new(now, self.config.window);
        self.clock = clock;
        self
    }

    /// Current state (see [`CircuitSnapshot::state`]).
    #[cfg(test)]
    fn state(&self) -> CircuitState {
        self.lock().phase.state()
    }

    /// Fast-fail check before queueing work for the dependency: `Err` while a
    /// call would be rejected right now. Takes no permit and no half-open
    /// trial slot, and changes no state, so it is safe to ask on every
    /// request; the call itself must still go through [`call`](Self::call) or
    /// [`call_classified`](Self::call_classified).
    pub fn check(&self) -> Result<(), Rejected> {
        let inner = self.lock();
        match inner.phase {
            Phase::Closed => Ok(()),
            Phase::Open => {
                let elapsed = inner.opened_at.map_or(self.config.open_for, |at| {
                    (self.clock)().saturating_duration_since(at)
                });
                match self.config.open_for.checked_sub(elapsed) {
                    Some(left) if !left.is_zero() => Err(Rejected { retry_after: left }),
                    _ => Ok(()),
                }
            }
            Phase::HalfOpen { in_flight } if in_flight >= self.config.half_open_max_trials => {
                Err(Rejected {
                    retry_after: self.config.open_for,
                })
            }
            Phase::HalfOpen { .. } => Ok(()),
        }
    }

    /// Asks to make one call, for outcomes that cannot be wrapped in one
    /// future (prefer [`call`](Self::call) or
    /// [`call_classified`](Self::call_classified)). On `Ok` the caller must
    /// make the call and report its outcome through the permit; dropping the
    /// permit instead reports nothing (a cancelled call says nothing about
    /// health) and frees any half-open trial slot it held.
    pub(crate) fn try_acquire(&self) -> Result<CallPermit<'_>, Rejected> {
        let mut inner = self.lock();
        let now = (self.clock)();
        let trial = match inner.phase {
            Phase::Closed => false,
            Phase::Open => {
                let elapsed = inner
                    .opened_at
                    .map_or(self.config.open_for, |at| now.saturating_duration_since(at));
                if elapsed < self.config.open_for {
                    return Err(Rejected {
                        retry_after: self.config.open_for - elapsed,
                    });
                }
                inner.phase = Phase::HalfOpen { in_flight: 1 };
                inner.generation += 1;
                let generation = inner.generation;
                drop(inner);
                tracing::info!(
                    dependency = self.dependency,
                    "circuit half-open: admitting trial call"
                );
                return Ok(CallPermit::new(
                    self,
                    Ticket {
                        generation,
                        trial: true,
                    },
                ));
            }
            Phase::HalfOpen { ref mut in_flight } => {
                if *in_flight >= self.config.half_open_max_trials {
                    return Err(Rejected {
                        retry_after: self.config.open_for,
                    });
                }
                *in_flight += 1;
                true
            }
        };
        let ticket = Ticket {
            generation: inner.generation,
            trial,
        };
        drop(inner);
        Ok(CallPermit::new(self, ticket))
    }

    /// Runs `f` through the breaker: rejects without calling `f` while open,
    /// otherwise records `Ok` as success and `Err` as failure. If the returned
    /// future is dropped mid-call, nothing is recorded.
    pub async fn call<T, E, F, Fut>(&self, f: F) -> Result<T, CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(f, |_| true).await
    }

    /// Like [`call`](Self::call), but only errors for which `is_failure` is
    /// true count against the dependency; the others (overloaded, conflict,
    /// not found: answers from a healthy dependency) count as successes. The
    /// permit is held across the awaited call, so a half-open trial is
    /// decided by the call it admitted.
    pub async fn call_classified<T, E, F, Fut>(
        &self,
        f: F,
        is_failure: impl Fn(&E) -> bool,
    ) -> Result<T, CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire()?;
        let result = f().await;
        match &result {
            Err(err) if is_failure(err) => permit.failure(),
            _ => permit.success(),
        }
        result.map_err(CallError::Inner)
    }

    /// Current counters and state for the admin API.
    pub fn snapshot(&self) -> CircuitSnapshot {
        let inner = self.lock();
        let now = (self.clock)();
        let (recent_calls, recent_failures) = inner.window.totals(now);
        let since_open = inner.opened_at.map(|at| now.saturating_duration_since(at));
        let retry_after_ms = match (inner.phase, since_open) {
            (Phase::Open, Some(elapsed)) => {
                let left = self.config.open_for.saturating_sub(elapsed);
                Some(u64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
            }
            _ => None,
        };
        CircuitSnapshot {
            dependency: self.dependency,
            state: inner.phase.state(),
            consecutive_failures: inner.consecutive_failures,
            recent_calls,
            recent_failures,
            recent_failure_rate: if recent_calls == 0 {
                0.0
            } else {
                recent_failures as f64 / recent_calls as f64
            },
            opened_at: since_open.map(|d| d.as_secs_f64()),
            retry_after_ms,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code panics while holding the lock, so a poisoned mutex still
        // guards consistent state; recover instead of propagating the panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, ticket: Ticket, outcome: Outcome) {
        let mut inner = self.lock();
        let now = (self.clock)();
        inner
            .window
            .record(now, matches!(outcome, Outcome::Failure));
        if ticket.generation != inner.generation {
            return; // Admitted before the last transition: statistics only.
        }
        let from = inner.phase;
        match (inner.phase, outcome) {
            (Phase::Closed, Outcome::Success) => inner.consecutive_failures = 0,
            (Phase::Closed, Outcome::Failure) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                if inner.consecutive_failures >= self.config.failure_threshold {
                    Self::open(&mut inner, now);
                }
            }
            (Phase::HalfOpen { .. }, Outcome::Success) => {
                inner.phase = Phase::Closed;
                inner.generation += 1;
                inner.consecutive_failures = 0;
                inner.opened_at = None;
            }
            (Phase::HalfOpen { .. }, Outcome::Failure) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                Self::open(&mut inner, now);
            }
            // No permits are issued while open, so a current-generation
            // outcome cannot arrive here.
            (Phase::Open, _) => {}
        }
        let to = inner.phase;
        let consecutive_failures = inner.consecutive_failures;
        drop(inner);
        if from.state() != to.state() {
            self.log_transition(from.state(), to.state(), consecutive_failures);
        }
    }

    fn release(&self, ticket: Ticket) {
        if !ticket.trial {
            return;
        }
        let mut inner = self.lock();
        if ticket.generation != inner.generation {
            return;
        }
        if let Phase::HalfOpen { in_flight } = &mut inner.phase {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    fn open(inner: &mut Inner, now: Instant) {
        inner.phase = Phase::Open;
        inner.generation += 1;
        inner.opened_at = Some(now);
    }

    fn log_transition(&self, from: CircuitState, to: CircuitState, consecutive_failures: u32) {
        match to {
            CircuitState::Open => tracing::warn!(
                dependency = self.dependency,
                ?from,
                consecutive_failures,
                open_for = ?self.config.open_for,
                "circuit opened"
            ),
            CircuitState::Closed => {
                tracing::info!(dependency = self.dependency, ?from, "circuit closed");
            }
            CircuitState::HalfOpen => {
                tracing::info!(dependency = self.dependency, ?from, "circuit half-open");
            }
        }
    }
}

/// Permission to make one call through a [`CircuitBreaker`]. Report the
/// outcome with [`success`](Self::success) or [`failure`](Self::failure);
/// dropping it records nothing but frees a half-open trial slot.
#[must_use = "report the call's outcome with .success() or .failure()"]
pub(crate) struct CallPermit<'a> {
    breaker: &'a CircuitBreaker,
    ticket: Ticket,
    settled: bool,
}

impl fmt::Debug for CallPermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallPermit")
            .field("dependency", &self.breaker.dependency)
            .field("trial", &self.ticket.trial)
            .field("generation", &self.ticket.generation)
            .finish()
    }
}

impl<'a> CallPermit<'a> {
    fn new(breaker: &'a CircuitBreaker, ticket: Ticket) -> Self {
        Self {
            breaker,
            ticket,
            settled: false,
        }
    }

    /// Records a successful call.
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.record(self.ticket, Outcome::Success);
    }

    /// Records a failed call.
    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.record(self.ticket, Outcome::Failure);
    }
}

impl Drop for CallPermit<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.release(self.ticket);
        }
    }
}

/// Breakers by dependency name, shared across the application. Cloning is
/// cheap and every clone sees the same breakers.
#[derive(Debug, Clone, Default)]
pub struct CircuitRegistry {
    /// Concurrency decision: `Arc` so clones share one map; a `std` mutex
    /// because lookups are rare (once per dependency handle, not per call)
    /// and never await; a `BTreeMap` so snapshots come out sorted by name.
    breakers: Arc<Mutex<BTreeMap<&'static str, Arc<CircuitBreaker>>>>,
}

impl CircuitRegistry {
    /// Creates an empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the breaker for `dependency`, creating it with `config` on
    /// first use. Later calls return the same `Arc` and ignore `config`.
    pub fn get_or_create(
        &self,
        dependency: &'static str,
        config: CircuitConfig,
    ) -> Arc<CircuitBreaker> {
        let mut breakers = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            breakers
                .entry(dependency)
                .or_insert_with(|| Arc::new(CircuitBreaker::new(dependency, config))),
        )
    }

    /// Snapshots of every registered breaker, sorted by dependency name.
    pub fn snapshots(&self) -> Vec<CircuitSnapshot> {
        // Clone the Arcs out first so no breaker lock is taken while holding
        // the registry lock.
        let breakers: Vec<Arc<CircuitBreaker>> = self
            .breakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        breakers.iter().map(|b| b.snapshot()).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Manually advanced clock.
    struct TestClock {
        start: Instant,
        offset_nanos: AtomicU64,
    }

    impl TestClock {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                start: Instant::now(),
                offset_nanos: AtomicU64::new(0),
            })
        }

        fn advance(&self, d: Duration) {
            self.offset_nanos
                .fetch_add(u64::try_from(d.as_nanos()).unwrap(), Ordering::SeqCst);
        }

        fn clock(self: &Arc<Self>) -> Clock {
            let this = Arc::clone(self);
            Arc::new(move || {
                this.start + Duration::from_nanos(this.offset_nanos.load(Ordering::SeqCst))
            })
        }
    }

    fn breaker(config: CircuitConfig) -> (CircuitBreaker, Arc<TestClock>) {
        let clock = TestClock::new();
        let breaker = CircuitBreaker::new("db", config).with_clock(clock.clock());
        (breaker, clock)
    }

    fn fail_n(b: &CircuitBreaker, n: u32) {
        for _ in 0..n {
            b.try_acquire().unwrap().failure();
        }
    }

    /// Opens the breaker with the default threshold.
    fn tripped() -> (CircuitBreaker, Arc<TestClock>) {
        let (b, clock) = breaker(CircuitConfig::default());
        fail_n(&b, 5);
        assert_eq!(b.state(), CircuitState::Open);
        (b, clock)
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let (b, _clock) = breaker(CircuitConfig::default());
        fail_n(&b, 4);
        assert_eq!(b.state(), CircuitState::Closed);
        // A success resets the run.
        b.try_acquire().unwrap().success();
        assert_eq!(b.snapshot().consecutive_failures, 0);
        fail_n(&b, 4);
        assert_eq!(b.state(), CircuitState::Closed);
        fail_n(&b, 1);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.snapshot().consecutive_failures, 5);
    }

    #[test]
    fn open_rejects_with_exact_retry_after() {
        let (b, clock) = tripped();
        assert_eq!(
            b.try_acquire().unwrap_err(),
            Rejected {
                retry_after: Duration::from_secs(2)
            }
        );
        clock.advance(Duration::from_millis(1_250));
        assert_eq!(
            b.try_acquire().unwrap_err().retry_after,
            Duration::from_millis(750)
        );
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn after_open_for_a_single_trial_is_admitted() {
        let (b, clock) = tripped();
        clock.advance(Duration::from_secs(2));
        let trial = b.try_acquire().unwrap();
        assert!(trial.ticket.trial);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let second = b.try_acquire().unwrap_err();
        assert_eq!(second.retry_after, Duration::from_secs(2));
        trial.success();
    }

    #[test]
    fn half_open_admits_configured_number_of_trials() {
        let (b, clock) = breaker(CircuitConfig {
            half_open_max_trials: 2,
            ..CircuitConfig::default()
        });
        fail_n(&b, 5);
        clock.advance(Duration::from_secs(3));
        let t1 = b.try_acquire().unwrap();
        let t2 = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        drop((t1, t2));
    }

    #[test]
    fn trial_success_closes_and_resets() {
        let (b, clock) = tripped();
        clock.advance(Duration::from_secs(2));
        b.try_acquire().unwrap().success();
        let snap = b.snapshot();
        assert_eq!(snap.state, CircuitState::Closed);
        assert_eq!(snap.consecutive_failures, 0);
        assert_eq!(snap.opened_at, None);
        assert_eq!(snap.retry_after_ms, None);
        // Fully closed: many concurrent permits, and it takes a whole new
        // threshold of failures to open again.
        let permits: Vec<_> = (0..10).map(|_| b.try_acquire().unwrap()).collect();
        drop(permits);
        fail_n(&b, 4);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn trial_failure_reopens_for_a_new_period() {
        let (b, clock) = tripped();
        clock.advance(Duration::from_secs(5));
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(
            b.try_acquire().unwrap_err().retry_after,
            Duration::from_secs(2)
        );
        let snap = b.snapshot();
        assert_eq!(snap.opened_at, Some(0.0));
        assert_eq!(snap.consecutive_failures, 6);
    }

    #[test]
    fn dropped_permit_frees_trial_slot_without_recording() {
        let (b, clock) = tripped();
        clock.advance(Duration::from_secs(2));
        let before = b.snapshot();
        drop(b.try_acquire().unwrap());
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let after = b.snapshot();
        assert_eq!(after.recent_calls, before.recent_calls);
        assert_eq!(after.consecutive_failures, before.consecutive_failures);
        // The slot is free again: the next caller becomes the trial.
        let trial = b.try_acquire().unwrap();
        assert!(trial.ticket.trial);
        trial.success();
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn dropped_permit_in_closed_records_nothing() {
        let (b, _clock) = breaker(CircuitConfig::default());
        fail_n(&b, 4);
        drop(b.try_acquire().unwrap());
        let snap = b.snapshot();
        assert_eq!(snap.consecutive_failures, 4);
        assert_eq!(snap.recent_calls, 4);
    }

    #[test]
    fn stale_permits_do_not_drive_the_state_machine() {
        let (b, clock) = breaker(CircuitConfig::default());
        let slow_ok = b.try_acquire().unwrap();
        let slow_fail = b.try_acquire().unwrap();
        fail_n(&b, 5);
        // A success admitted before the circuit opened must not close it.
        slow_ok.success();
        assert_eq!(b.state(), CircuitState::Open);
        clock.advance(Duration::from_secs(2));
        let trial = b.try_acquire().unwrap();
        // A late pre-open failure must not re-open the half-open circuit.
        slow_fail.failure();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        trial.success();
        assert_eq!(b.state(), CircuitState::Closed);
        // Both still count as calls in the statistics.
        assert_eq!(b.snapshot().recent_calls, 8);
    }

    #[test]
    fn failure_rate_window_drops_old_calls() {
        let (b, clock) = breaker(CircuitConfig::default());
        fail_n(&b, 3);
        clock.advance(Duration::from_secs(5));
        b.try_acquire().unwrap().success();
        b.try_acquire().unwrap().success();
        clock.advance(Duration::from_secs(1));
        let snap = b.snapshot();
        assert_eq!((snap.recent_calls, snap.recent_failures), (5, 3));
        assert!((snap.recent_failure_rate - 0.6).abs() < 1e-9);

        // t = 10.5 s: the failures at t = 0 have left the 10 s window.
        clock.advance(Duration::from_millis(4_500));
        let snap = b.snapshot();
        assert_eq!((snap.recent_calls, snap.recent_failures), (2, 0));
        assert_eq!(snap.recent_failure_rate, 0.0);

        // t = 16 s: everything has aged out; rate is 0 with no calls.
        clock.advance(Duration::from_millis(5_500));
        let snap = b.snapshot();
        assert_eq!((snap.recent_calls, snap.recent_failures), (0, 0));
        assert_eq!(snap.recent_failure_rate, 0.0);
    }

    #[test]
    fn snapshot_fields() {
        let (b, clock) = breaker(CircuitConfig::default());
        let snap = b.snapshot();
        assert_eq!(
            snap,
            CircuitSnapshot {
                dependency: "db",
                state: CircuitState::Closed,
                consecutive_failures: 0,
                recent_calls: 0,
                recent_failures: 0,
                recent_failure_rate: 0.0,
                opened_at: None,
                retry_after_ms: None,
            }
        );
        b.try_acquire().unwrap().success();
        fail_n(&b, 5);
        clock.advance(Duration::from_millis(500));
        let snap = b.snapshot();
        assert_eq!(snap.state, CircuitState::Open);
        assert_eq!(snap.consecutive_failures, 5);
        assert_eq!((snap.recent_calls, snap.recent_failures), (6, 5));
        assert!((snap.recent_failure_rate - 5.0 / 6.0).abs() < 1e-9);
        assert_eq!(snap.opened_at, Some(0.5));
        assert_eq!(snap.retry_after_ms, Some(1_500));

        // Sub-millisecond remainders round up, so "open" never shows 0 early.
        clock.advance(Duration::from_micros(1_499_500));
        assert_eq!(b.snapshot().retry_after_ms, Some(1));
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.snapshot().retry_after_ms, Some(0));

        let trial = b.try_acquire().unwrap();
        let snap = b.snapshot();
        assert_eq!(snap.state, CircuitState::HalfOpen);
        assert_eq!(snap.retry_after_ms, None);
        assert!(snap.opened_at.is_some());
        drop(trial);
    }

    #[test]
    fn snapshot_serializes_with_camel_case_and_kebab_states() {
        let (b, _clock) = tripped();
        assert_eq!(
            serde_json::to_value(b.snapshot()).unwrap(),
            serde_json::json!({
                "dependency": "db",
                "state": "open",
                "consecutiveFailures": 5,
                "recentCalls": 5,
                "recentFailures": 5,
                "recentFailureRate": 1.0,
                "openedAt": 0.0,
                "retryAfterMs": 2000,
            })
        );
        assert_eq!(
            serde_json::to_string(&CircuitState::HalfOpen).unwrap(),
            "\"half-open\""
        );
        let closed = CircuitBreaker::new("x", CircuitConfig::default()).snapshot();
        let closed = serde_json::to_value(closed).unwrap();
        assert_eq!(closed["state"], "closed");
        assert!(closed["openedAt"].is_null() && closed["retryAfterMs"].is_null());
    }

    #[test]
    fn check_fails_fast_without_taking_a_trial_slot() {
        let (b, clock) = tripped();
        assert_eq!(b.check().unwrap_err().retry_after, Duration::from_secs(2));
        clock.advance(Duration::from_secs(2));
        // Checking repeatedly neither turns the circuit half-open nor uses the
        // single trial slot.
        assert!(b.check().is_ok());
        assert!(b.check().is_ok());
        assert_eq!(b.state(), CircuitState::Open);
        let trial = b.try_acquire().unwrap();
        assert!(trial.ticket.trial);
        assert_eq!(b.check().unwrap_err().retry_after, Duration::from_secs(2));
        trial.success();
        assert!(b.check().is_ok());
        assert_eq!(b.snapshot().recent_calls, 6);
    }

    #[tokio::test]
    async fn call_classified_counts_only_dependency_failures() {
        #[derive(Debug, PartialEq)]
        enum DbError {
            Overloaded,
            Down,
        }
        let is_failure = |e: &DbError| *e == DbError::Down;
        let (b, clock) = breaker(CircuitConfig {
            failure_threshold: 2,
            ..CircuitConfig::default()
        });
        for _ in 0..5 {
            let r = b
                .call_classified(|| async { Err::<(), _>(DbError::Overloaded) }, is_failure)
                .await;
            assert!(matches!(r, Err(CallError::Inner(DbError::Overloaded))));
        }
        let snap = b.snapshot();
        assert_eq!(snap.state, CircuitState::Closed);
        assert_eq!((snap.recent_calls, snap.recent_failures), (5, 0));

        for _ in 0..2 {
            let r = b
                .call_classified(|| async { Err::<(), _>(DbError::Down) }, is_failure)
                .await;
            assert!(matches!(r, Err(CallError::Inner(DbError::Down))));
        }
        assert_eq!(b.state(), CircuitState::Open);
        let r = b
            .call_classified(|| async { Ok::<_, DbError>(1) }, is_failure)
            .await;
        assert!(matches!(r, Err(CallError::Open { .. })));

        // The trial holds its permit across the await: while it runs, no other
        // call is admitted, and its (benign) error closes the circuit.
        clock.advance(Duration::from_secs(2));
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let trial = b.call_classified(
            || async {
                let _ = wait.await;
                Err::<(), _>(DbError::Overloaded)
            },
            is_failure,
        );
        let other = async {
            tokio::task::yield_now().await;
            let r = b
                .call_classified(|| async { Ok::<_, DbError>(()) }, is_failure)
                .await;
            assert!(matches!(r, Err(CallError::Open { .. })));
            let _ = release.send(());
        };
        let (r, ()) = tokio::join!(trial, other);
        assert!(matches!(r, Err(CallError::Inner(DbError::Overloaded))));
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn zero_thresholds_are_raised_to_one() {
        let (b, clock) = breaker(CircuitConfig {
            failure_threshold: 0,
            half_open_max_trials: 0,
            ..CircuitConfig::default()
        });
        assert!(b.try_acquire().is_ok_and(|p| {
            p.success();
            true
        }));
        fail_n(&b, 1);
        assert_eq!(b.state(), CircuitState::Open);
        clock.advance(Duration::from_secs(2));
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test]
    async fn call_records_outcomes_and_rejects_when_open() {
        let (b, _clock) = breaker(CircuitConfig {
            failure_threshold: 2,
            ..CircuitConfig::default()
        });
        let ok: Result<u32, CallError<&str>> = b.call(|| async { Ok(7) }).await;
        assert_eq!(ok.unwrap(), 7);
        for _ in 0..2 {
            let err = b.call(|| async { Err::<(), _>("boom") }).await;
            assert!(matches!(err, Err(CallError::Inner("boom"))));
        }
        let mut ran = false;
        let err = b
            .call(|| {
                ran = true;
                async { Ok::<_, &str>(()) }
            })
            .await;
        assert!(!ran);
        assert!(
            matches!(err, Err(CallError::Open { retry_after }) if retry_after == Duration::from_secs(2))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_open_the_circuit_and_counts_add_up() {
        const TASKS: u64 = 8;
        const CALLS: u64 = 200;
        let breaker = Arc::new(CircuitBreaker::new("flaky", CircuitConfig::default()));
        let invoked = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let breaker = Arc::clone(&breaker);
                let invoked = Arc::clone(&invoked);
                tokio::spawn(async move {
                    let (mut failed, mut rejected) = (0u64, 0u64);
                    for _ in 0..CALLS {
                        let result = breaker
                            .call(|| async {
                                invoked.fetch_add(1, Ordering::SeqCst);
                                tokio::task::yield_now().await;
                                Err::<(), _>("dependency down")
                            })
                            .await;
                        match result {
                            Err(CallError::Inner(_)) => failed += 1,
                            Err(CallError::Open { .. }) => rejected += 1,
                            Ok(()) => unreachable!("the dependency always fails"),
                        }
                    }
                    (failed, rejected)
                })
            })
            .collect();
        let (mut failed, mut rejected) = (0, 0);
        for task in tasks {
            let (f, r) = task.await.unwrap();
            failed += f;
            rejected += r;
        }
        let snap = breaker.snapshot();
        assert_eq!(snap.state, CircuitState::Open);
        assert_eq!(failed + rejected, TASKS * CALLS);
        assert_eq!(invoked.load(Ordering::SeqCst), failed);
        assert!(failed >= 5, "at least the threshold must have run");
        assert!(rejected > 0);
        assert_eq!(snap.recent_calls, failed);
        assert_eq!(snap.recent_failures, failed);
        // Failures admitted before the trip but finishing after it are stale
        // and do not extend the run.
        assert_eq!(snap.consecutive_failures, 5);
    }

    #[test]
    fn registry_shares_breakers_and_sorts_snapshots() {
        let registry = CircuitRegistry::new();
        let a = registry.get_or_create("payments", CircuitConfig::default());
        let b = registry.clone().get_or_create(
            "payments",
            CircuitConfig {
                failure_threshold: 1,
                ..CircuitConfig::default()
            },
        );
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(b.config.failure_threshold, 5);
        let _db = registry.get_or_create("db", CircuitConfig::default());
        let names: Vec<_> = registry.snapshots().iter().map(|s| s.dependency).collect();
        assert_eq!(names, ["db", "payments"]);
    }

    #[test]
    fn types_are_thread_safe() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CircuitBreaker>();
        assert_send_sync::<CircuitRegistry>();
        assert_send_sync::<CallPermit<'static>>();
    }
}
