//! The outbox relay: one loop per node, working only while it holds the database's relay lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use surge_persistence::{Database, now_millis};
use surge_supervisors::circuit::{CallError, CircuitBreaker};
use tokio::sync::watch;

use super::EventSink;

/// Events read and delivered per round. Bounded so a backlog after an outage drains in steps
/// whose transactions stay short (the relay's writes share the database with the order path).
pub const RELAY_BATCH: i64 = 500;
/// Pause after a round that found nothing: how long a new event can wait before the relay
/// sees it (the read model promises a member their change within 1 s).
pub const RELAY_IDLE: Duration = Duration::from_millis(25);
/// Length of the relay lease. A relay that dies (kill -9) holds it this long at most; a relay
/// that cannot renew stops before its own deadline (see [`LEASE_MARGIN_MS`]).
pub const RELAY_LEASE_MS: i64 = 5_000;
/// The margin kept against clock drift between nodes (lease ends are compared with each
/// node's own clock): a relay stops relaying this long before the lease it took ends.
pub const LEASE_MARGIN_MS: i64 = 1_000;
/// A relay renews when less than this is left before it must stop.
const RENEW_AHEAD_MS: i64 = 2_000;
/// Pause after a failed round (database or sink), doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the lag figures are refreshed (one count over the unpublished rows).
const LAG_EVERY_MS: i64 = 1_000;
/// How often published rows past retention are purged.
const PURGE_EVERY_MS: i64 = 60_000;

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// This node (the lease holder's name).
    pub node_id: String,
    /// Published rows older than this are deleted.
    pub retention: Duration,
}

/// What the relay has done, shared with admin and metrics.
#[derive(Debug, Default)]
pub struct RelayStats {
    published: AtomicU64,
    batches: AtomicU64,
    failures: AtomicU64,
    purged: AtomicU64,
    lag_rows: AtomicI64,
    oldest_unpublished_at: AtomicI64,
    leader: AtomicBool,
    sink: std::sync::OnceLock<&'static str>,
}

/// A point-in-time view of [`RelayStats`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RelaySnapshot {
    /// `kafka` or `in-process`.
    pub sink: &'static str,
    /// Whether this node holds the relay lease now.
    pub leader: bool,
    /// Events delivered by this node.
    pub published: u64,
    /// Rounds delivered.
    pub batches: u64,
    /// Rounds that failed (kept and retried).
    pub failures: u64,
    /// Published rows purged after retention.
    pub purged: u64,
    /// Events in the outbox not yet delivered.
    pub lag_rows: i64,
    /// Age of the oldest of them, ms (0 when none).
    pub lag_age_ms: i64,
}

impl RelayStats {
    /// The current figures.
    pub fn snapshot(&self) -> RelaySnapshot {
        let oldest = self.oldest_unpublished_at.load(Ordering::Relaxed);
        RelaySnapshot {
            sink: self.sink.get().copied().unwrap_or("none"),
            leader: self.leader.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            purged: self.purged.load(Ordering::Relaxed),
            lag_rows: self.lag_rows.load(Ordering::Relaxed),
            lag_age_ms: if oldest == 0 {
                0
            } else {
                (now_millis() - oldest).max(0)
            },
        }
    }
}

/// The relay of one node.
#[derive(Debug)]
pub struct OutboxRelay {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<RelayStats>,
}

/// The relay's working state.
struct Relay {
    db: Database,
    sink: Arc<dyn EventSink>,
    breaker: Arc<CircuitBreaker>,
    config: RelayConfig,
    stats: Arc<RelayStats>,
    /// Until when (own clock, minus the margin) this node may relay; 0 when it holds no lease.
    may_relay_until: i64,
    last_lag: i64,
    last_purge: i64,
}

impl OutboxRelay {
    /// Starts the relay. It runs until [`Self::finish`]; a panic inside a round restarts the
    /// loop (supervision) after a pause.
    pub fn start(
        db: Database,
        sink: Arc<dyn EventSink>,
        breaker: Arc<CircuitBreaker>,
        config: RelayConfig,
    ) -> Self {
        let stats = Arc::new(RelayStats::default());
        let _ = stats.sink.set(sink.name());
        let (stop, stopped) = watch::channel(false);
        let relay = Relay {
            db,
            sink,
            breaker,
            config,
            stats: Arc::clone(&stats),
            may_relay_until: 0,
            last_lag: 0,
            last_purge: 0,
        };
        let task = tokio::spawn(supervise(relay, stopped));
        Self { stop, task, stats }
    }

    /// The relay's figures.
    pub fn stats(&self) -> Arc<RelayStats> {
        Arc::clone(&self.stats)
    }

    /// Delivers what is in the outbox now (while the lease is held and the sink answers), gives
    /// the lease up and ends.
    pub async fn finish(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Runs rounds until stopped; a round that panics is logged and the loop goes on after a
/// pause, with the same lease and stats (one-for-one restart of the only child).
async fn supervise(relay: Relay, mut stopped: watch::Receiver<bool>) {
    let relay = Arc::new(tokio::sync::Mutex::new(relay));
    let mut backoff = FIRST_BACKOFF;
    loop {
        let stopping = *stopped.borrow();
        let round = {
            let relay = Arc::clone(&relay);
            tokio::spawn(async move { relay.lock().await.round().await })
        };
        let pause = match round.await {
            Ok(Round::Delivered) => {
                backoff = FIRST_BACKOFF;
                Duration::ZERO
            }
            Ok(Round::Idle) => {
                backoff = FIRST_BACKOFF;
                if stopping {
                    break;
                }
                RELAY_IDLE
            }
            Ok(Round::NotLeader) => {
                if stopping {
                    break;
                }
                Duration::from_millis(u64::try_from(RELAY_LEASE_MS / 5).unwrap_or(1_000))
            }
            Ok(Round::Failed) | Err(_) => {
                if stopping {
                    break;
                }
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pause
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stopped.changed() => {}
            }
        }
    }
    let relay = relay.lock().await;
    relay.stats.leader.store(false, Ordering::Relaxed);
    if relay.may_relay_until > 0
        && let Err(e) = relay
            .db
            .release_relay_lease(LEASE_NAME, &relay.config.node_id)
            .await
    {
        tracing::warn!(error = %e, "could not give the relay lease up");
    }
}

/// The lease every relay of a database competes for.
const LEASE_NAME: &str = "outbox";

enum Round {
    Delivered,
    Idle,
    NotLeader,
    Failed,
}

impl Relay {
    async fn round(&mut self) -> Round {
        let now = now_millis();
        if now + RENEW_AHEAD_MS >= self.may_relay_until && !self.renew(now).await {
            return Round::NotLeader;
        }
        self.housekeeping(now).await;
        let rows = match self.db.unpublished_events(RELAY_BATCH).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "reading the outbox failed");
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                return Round::Failed;
            }
        };
        if rows.is_empty() {
            return Round::Idle;
        }
        // The lease may have run out while reading (a pause): never deliver past it.
        if now_millis() >= self.may_relay_until {
            return Round::NotLeader;
        }
        let sink = Arc::clone(&self.sink);
        match self.breaker.call(|| sink.publish(&rows)).await {
            Ok(()) => {}
            Err(CallError::Open { .. }) => return Round::Failed,
            Err(CallError::Inner(e)) => {
                tracing::warn!(sink = sink.name(), error = %e, events = rows.len(), "delivering events failed; will retry");
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                return Round::Failed;
            }
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        if self.sink.marks_published() {
            // Marked in the transaction that stored the batch's effect.
        } else if let Err(e) = self.db.mark_published(&ids, now_millis()).await {
            // Delivered but not marked: the next round delivers them again, and consumers
            // recognise them by their event ids.
            tracing::warn!(error = %e, "marking events published failed");
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            return Round::Failed;
        }
        self.stats
            .published
            .fetch_add(u64::try_from(ids.len()).unwrap_or(0), Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        if ids.len() < usize::try_from(RELAY_BATCH).unwrap_or(usize::MAX) {
            // Caught up: wait a tick before the next round, so the relay's writes come in a
            // few large transactions rather than many small ones between the order batches.
            Round::Idle
        } else {
            Round::Delivered
        }
    }

    /// Takes or renews the lease. `true` while this node may relay.
    async fn renew(&mut self, now: i64) -> bool {
        match self
            .db
            .take_relay_lease(LEASE_NAME, &self.config.node_id, now, RELAY_LEASE_MS)
            .await
        {
            Ok(Some(_epoch)) => {
                self.may_relay_until = now + RELAY_LEASE_MS - LEASE_MARGIN_MS;
                self.stats.leader.store(true, Ordering::Relaxed);
                true
            }
            Ok(None) => {
                self.may_relay_until = 0;
                self.stats.leader.store(false, Ordering::Relaxed);
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the relay lease failed");
                // Keep relaying only until the deadline already known.
                now < self.may_relay_until
            }
        }
    }

    async fn housekeeping(&mut self, now: i64) {
        if now - self.last_lag >= LAG_EVERY_MS {
            self.last_lag = now;
            if let Ok(lag) = self.db.outbox_lag().await {
                self.stats.lag_rows.store(lag.rows, Ordering::Relaxed);
                self.stats
                    .oldest_unpublished_at
                    .store(lag.oldest_at.unwrap_or(0), Ordering::Relaxed);
            }
        }
        if now - self.last_purge >= PURGE_EVERY_MS {
            self.last_purge = now;
            let retention = i64::try_from(self.config.retention.as_millis()).unwrap_or(i64::MAX);
            match self.db.purge_published(now.saturating_sub(retention)).await {
                Ok(n) => {
                    self.stats.purged.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "purging published events failed"),
            }
        }
    }
}
