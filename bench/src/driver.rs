//! The load driver: runs a workload's attempts closed-loop (N workers, each sends when its last
//! answer came) or open-loop (sends on a fixed schedule), and tallies every answer.
//!
//! Open-loop latency is measured from the moment a request was *scheduled*, not from when it was
//! sent: when the node (or the in-flight cap) holds the driver back, the queueing shows up in
//! the percentiles instead of being hidden by fewer sends ("coordinated omission").

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::ProgressBar;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::progress::Progress;
use crate::stats::{Reply, Tally};

/// How often a timed run's bar moves.
const TIMER_TICK: Duration = Duration::from_millis(200);

/// One kind of request a run repeats.
pub trait Workload: Send + Sync + 'static {
    /// Sends attempt number `index` (0, 1, 2, …) and returns its answer. Choices inside an
    /// attempt come from `(seed, index)` alone, so a run is reproducible whatever the timing.
    fn attempt(&self, index: u64) -> impl Future<Output = Reply> + Send;
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Pacing {
    /// `concurrency` workers each send their next request when the previous one is answered.
    Closed { concurrency: usize },
    /// Requests start at `rate` per second whatever the answers do; at most `max_in_flight`
    /// are outstanding (waiting for that cap counts in the latency).
    Open { rate: f64, max_in_flight: usize },
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// This many attempts.
    Attempts(u64),
    /// Until this much time has passed (in-flight requests are still awaited and counted).
    Duration(Duration),
}

/// The tally of a run and how long its measured phase took.
#[derive(Debug)]
pub struct Measurement {
    pub tally: Tally,
    pub elapsed: Duration,
}

/// Runs `workload` with `pacing` for `extent`.
pub async fn drive<W: Workload>(
    workload: Arc<W>,
    pacing: Pacing,
    extent: Extent,
    progress: &Progress,
    label: &str,
) -> Measurement {
    let bar = match extent {
        Extent::Attempts(n) => progress.bar(label, n),
        Extent::Duration(d) => progress.timer(label, d),
    };
    let tally = Arc::new(Mutex::new(Tally::new()));
    // Answers so far, for the progress line (the closed loop's tallies are per worker).
    let answered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let ticker = matches!(extent, Extent::Duration(_)).then(|| {
        let bar = bar.clone();
        let tally = Arc::clone(&tally);
        let answered = Arc::clone(&answered);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TIMER_TICK).await;
                bar.set_position(u64::try_from(started.elapsed().as_millis()).unwrap_or(0));
                let done = lock(&tally)
                    .requests()
                    .max(answered.load(Ordering::Relaxed));
                bar.set_message(format!("{done} requests"));
            }
        })
    });
    match pacing {
        Pacing::Closed { concurrency } => {
            closed_loop(
                &workload,
                concurrency,
                extent,
                started,
                (&tally, &answered),
                &bar,
            )
            .await;
        }
        Pacing::Open {
            rate,
            max_in_flight,
        } => {
            open_loop(
                &workload,
                rate,
                max_in_flight,
                extent,
                started,
                &tally,
                &bar,
            )
            .await
        }
    }
    let elapsed = started.elapsed();
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    bar.finish_and_clear();
    let tally = lock(&tally).clone();
    Measurement { tally, elapsed }
}

async fn closed_loop<W: Workload>(
    workload: &Arc<W>,
    concurrency: usize,
    extent: Extent,
    started: Instant,
    (tally, answered): (&Arc<Mutex<Tally>>, &Arc<AtomicU64>),
    bar: &ProgressBar,
) {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let workload = Arc::clone(workload);
        let next = Arc::clone(&next);
        let tally = Arc::clone(tally);
        let answered = Arc::clone(answered);
        let bar = bar.clone();
        workers.spawn(async move {
            // Each worker counts on its own and adds its tally at the end: a shared lock per
            // request made the load tool, not the node, the bottleneck of fast endpoints.
            let mut mine = Tally::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let more = match extent {
                    Extent::Attempts(n) => index < n,
                    Extent::Duration(d) => started.elapsed() < d,
                };
                if !more {
                    break;
                }
                let sent = Instant::now();
                let reply = workload.attempt(index).await;
                mine.record(&reply, sent.elapsed());
                answered.fetch_add(1, Ordering::Relaxed);
                if matches!(extent, Extent::Attempts(_)) {
                    bar.inc(1);
                }
            }
            lock(&tally).merge(&mine);
        });
    }
    while workers.join_next().await.is_some() {}
}

async fn open_loop<W: Workload>(
    workload: &Arc<W>,
    rate: f64,
    max_in_flight: usize,
    extent: Extent,
    started: Instant,
    tally: &Arc<Mutex<Tally>>,
    bar: &ProgressBar,
) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = match extent {
        Extent::Attempts(n) => n,
        Extent::Duration(d) => (d.as_secs_f64() * rate).ceil() as u64,
    };
    let max_in_flight = max_in_flight.max(1);
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    for index in 0..total {
        let scheduled = started + interval.mul_f64(index as f64);
        tokio::time::sleep_until(scheduled).await;
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        let workload = Arc::clone(workload);
        let tally = Arc::clone(tally);
        let bar = bar.clone();
        tokio::spawn(async move {
            let reply = workload.attempt(index).await;
            lock(&tally).record(&reply, scheduled.elapsed());
            if matches!(extent, Extent::Attempts(_)) {
                bar.inc(1);
            }
            drop(permit);
        });
    }
    // Every permit back means every request has been answered.
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let _ = in_flight.acquire_many(all).await;
}

/// The tally stays usable even if a worker panicked while holding it.
fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Answers 200 after a fixed delay, and remembers which attempts it saw.
    struct Sleeper {
        delay: Duration,
        seen: Mutex<Vec<u64>>,
    }

    impl Workload for Sleeper {
        async fn attempt(&self, index: u64) -> Reply {
            tokio::time::sleep(self.delay).await;
            self.seen.lock().unwrap().push(index);
            Reply {
                status: Some(200),
                code: None,
            }
        }
    }

    fn sleeper(delay: Duration) -> Arc<Sleeper> {
        Arc::new(Sleeper {
            delay,
            seen: Mutex::new(Vec::new()),
        })
    }

    #[tokio::test]
    async fn a_closed_loop_makes_exactly_the_attempts_asked_for() {
        let work = sleeper(Duration::from_millis(1));
        let m = drive(
            Arc::clone(&work),
            Pacing::Closed { concurrency: 8 },
            Extent::Attempts(100),
            &Progress::new(true),
            "test",
        )
        .await;
        assert_eq!(m.tally.requests(), 100);
        let mut seen = work.seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn open_loop_latency_includes_the_wait_for_a_slot() {
        // One slot, 20 ms per answer, offered 1,000/s: the 10th request was scheduled at 9 ms
        // but could only start after nine others (~180 ms), so the tail must show that wait.
        let work = sleeper(Duration::from_millis(20));
        let m = drive(
            work,
            Pacing::Open {
                rate: 1_000.0,
                max_in_flight: 1,
            },
            Extent::Attempts(10),
            &Progress::new(true),
            "test",
        )
        .await;
        assert_eq!(m.tally.requests(), 10);
        let l = m.tally.latency();
        assert!(l.max > 150.0, "queueing hidden: {l:?}");
        assert!(l.p50 > 60.0, "queueing hidden: {l:?}");
    }

    #[tokio::test]
    async fn a_timed_run_stops_after_its_duration() {
        let work = sleeper(Duration::from_millis(5));
        let m = drive(
            work,
            Pacing::Closed { concurrency: 2 },
            Extent::Duration(Duration::from_millis(200)),
            &Progress::new(true),
            "test",
        )
        .await;
        assert!(m.elapsed >= Duration::from_millis(200));
        assert!(m.elapsed < Duration::from_secs(2), "{:?}", m.elapsed);
        assert!(m.tally.requests() > 10);
    }
}
