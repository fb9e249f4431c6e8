//! Retries with full-jitter exponential backoff, bounded by a deadline.
//!
//! Full jitter (a uniform draw in `[0, cap]`) spreads retries from many
//! concurrent requests across the whole backoff interval, so a dependency
//! that hiccups is not hit by synchronised waves of retries.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Margin kept between the end of a backoff and the deadline.
///
/// Tokio's timer has millisecond resolution and rounds sleep deadlines up, so
/// a sleep until `wake` can end up to 1 ms later. Requiring this much slack
/// guarantees the sleep itself never runs past the request's deadline (and an
/// attempt started with less than a millisecond left would be useless anyway).
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// How many times, and how far apart, to retry a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first (default 4). Values below 1 are
    /// treated as 1: the call is always made once.
    pub max_attempts: u32,
    /// Backoff cap after the first failure; doubles per attempt (default 5 ms).
    pub base: Duration,
    /// Upper bound for any single backoff (default 200 ms).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base: Duration::from_millis(5),
            max_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// Upper bound of the backoff after attempt `attempt` (0-based) failed:
    /// `min(max_delay, base * 2^attempt)`, saturating instead of overflowing.
    pub fn cap(&self, attempt: u32) -> Duration {
        2u32.checked_pow(attempt)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }

    /// Full-jitter backoff after attempt `attempt` (0-based) failed: uniform
    /// in `[0, cap(attempt)]`, at nanosecond resolution.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let cap = u64::try_from(self.cap(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.gen_range(0..=cap))
    }
}

/// Calls `f(attempt)` (attempt counts from 0) until it succeeds, returns an
/// error for which `is_retryable` is false, `policy.max_attempts` have been
/// made, or the next backoff would not end before `deadline` (with 1 ms of
/// slack for timer resolution); in the last three cases the most recent error
/// is returned.
///
/// The first attempt is always made, even past the deadline (there is no
/// error value to return otherwise), and a running attempt is not cut short
/// at the deadline: bound each attempt yourself (e.g. `tokio::time::timeout`)
/// if it can hang. Circuit-breaker rejections should be classed as not
/// retryable; waiting out an open circuit is the breaker's job.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    deadline: Instant,
    is_retryable: impl Fn(&E) -> bool,
    mut f: F,
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        let err = match f(attempt).await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        if attempt + 1 >= max_attempts || !is_retryable(&err) {
            return Err(err);
        }
        // The thread-local RNG is `!Send`; it lives only for this statement
        // so the returned future stays `Send`.
        let delay = policy.delay(attempt, &mut rand::thread_rng());
        let wake = Instant::now().checked_add(delay).filter(|wake| {
            wake.checked_add(TIMER_SLACK)
                .is_some_and(|end| end < deadline)
        });
        let Some(wake) = wake else {
            tracing::debug!(attempt, ?delay, "retry abandoned: deadline too close");
            return Err(err);
        };
        tracing::debug!(attempt, ?delay, "retrying after backoff");
        tokio::time::sleep_until(wake).await;
        attempt += 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn cap_doubles_and_saturates() {
        let p = RetryPolicy::default();
        assert_eq!(p.cap(0), Duration::from_millis(5));
        assert_eq!(p.cap(1), Duration::from_millis(10));
        assert_eq!(p.cap(5), Duration::from_millis(160));
        assert_eq!(p.cap(6), Duration::from_millis(200));
        assert_eq!(p.cap(31), Duration::from_millis(200));
        assert_eq!(p.cap(32), Duration::from_millis(200));
        assert_eq!(p.cap(u32::MAX), Duration::from_millis(200));
        let huge = RetryPolicy {
            base: Duration::MAX,
            max_delay: Duration::MAX,
            ..RetryPolicy::default()
        };
        assert_eq!(huge.cap(3), Duration::MAX);
        // Caps beyond u64 nanoseconds must not panic.
        let _ = huge.delay(3, &mut StdRng::seed_from_u64(1));
    }

    #[test]
    fn full_jitter_stays_within_cap_and_is_not_degenerate() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for attempt in [0, 1, 2, 3, 5, 6, 10, 40, u32::MAX] {
            let cap = p.cap(attempt);
            let draws: Vec<Duration> = (0..2_000).map(|_| p.delay(attempt, &mut rng)).collect();
            assert!(draws.iter().all(|d| *d <= cap), "attempt {attempt}");
            assert!(draws.iter().any(|d| !d.is_zero()), "attempt {attempt}");
            // Spread across the interval, not clustered at one end.
            assert!(draws.iter().any(|d| *d < cap / 4), "attempt {attempt}");
            assert!(draws.iter().any(|d| *d > cap * 3 / 4), "attempt {attempt}");
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test(start_paused = true)]
    async fn succeeds_after_transient_failures() {
        let mut calls = Vec::new();
        let result = retry(
            &RetryPolicy::default(),
            far(),
            |_: &&str| true,
            |attempt| {
                calls.push(attempt);
                async move {
                    if attempt < 2 {
                        Err("flaky")
                    } else {
                        Ok(attempt)
                    }
                }
            },
        )
        .await;
        assert_eq!(result, Ok(2));
        assert_eq!(calls, [0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_on_non_retryable_error() {
        let mut calls = 0;
        let result: Result<(), _> = retry(
            &RetryPolicy::default(),
            far(),
            |e: &&str| *e != "fatal",
            |_| {
                calls += 1;
                async { Err("fatal") }
            },
        )
        .await;
        assert_eq!(result, Err("fatal"));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn respects_max_attempts_and_returns_last_error() {
        let start = Instant::now();
        let policy = RetryPolicy::default();
        let result: Result<(), u32> = retry(
            &policy,
            far(),
            |_| true,
            |attempt| async move { Err(attempt) },
        )
        .await;
        assert_eq!(result, Err(3));
        // Three backoffs, each at most its cap (plus timer rounding).
        let caps = policy.cap(0) + policy.cap(1) + policy.cap(2);
        assert!(start.elapsed() <= caps + 3 * TIMER_SLACK);

        let once = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        let result: Result<(), u32> = retry(
            &once,
            far(),
            |_| true,
            |attempt| async move { Err(attempt) },
        )
        .await;
        assert_eq!(result, Err(0));
    }

    #[tokio::test(start_paused = true)]
    async fn respects_deadline() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(50);
        let policy = RetryPolicy {
            max_attempts: 1_000,
            base: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
        };
        let mut made = 0;
        let result: Result<(), u32> = retry(
            &policy,
            deadline,
            |_| true,
            |attempt| {
                made += 1;
                async move { Err(attempt) }
            },
        )
        .await;
        // No sleep ran past the deadline, and the error is the last attempt's.
        assert!(Instant::now() < deadline);
        assert_eq!(result, Err(made - 1));
        // Each backoff is at most 10 ms, so a 50 ms budget allows a handful
        // of attempts but nowhere near max_attempts.
        assert!(made >= 5, "made {made}");
        assert!(made < 1_000, "made {made}");
    }

    #[tokio::test(start_paused = true)]
    async fn past_deadline_makes_exactly_one_attempt() {
        let deadline = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        let mut made = 0;
        let result: Result<(), &str> = retry(
            &RetryPolicy::default(),
            deadline,
            |_| true,
            |_| {
                made += 1;
                async { Err("down") }
            },
        )
        .await;
        assert_eq!(result, Err("down"));
        assert_eq!(made, 1);
    }

    #[test]
    fn retry_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let policy = RetryPolicy::default();
        let fut = retry(
            &policy,
            far(),
            |_: &()| true,
            |_| async { Ok::<(), ()>(()) },
        );
        assert_send(&fut);
    }
}
