//! Group commit: every durable write on the order hot path goes through one writer that puts
//! all the writes waiting at that moment into one transaction, so a burst of N orders costs a
//! handful of fsyncs instead of N.

use std::time::Duration;

use sqlx::Connection;
use sqlx::pool::PoolConnection;
use tokio::sync::{mpsc, oneshot};

use crate::coupons::{self, NewIssue};
use crate::orders::{self, BeginOutcome, CancelOutcome, NewOrder, OrderResolution, ResolveOutcome};
use crate::stock::{self, ReserveBatch, ReserveOutcome};
use crate::{Database, PersistenceError, now_millis};

/// Writes a committer accepts.
#[derive(Debug)]
pub enum Write {
    /// A new PROCESSING order (and its idempotency claim).
    BeginOrder(
        NewOrder,
        oneshot::Sender<Result<BeginOutcome, PersistenceError>>,
    ),
    /// A stock actor's reservations.
    Reserve(
        ReserveBatch,
        oneshot::Sender<Result<ReserveOutcome, PersistenceError>>,
    ),
    /// An order's final status.
    Resolve(
        OrderResolution,
        oneshot::Sender<Result<ResolveOutcome, PersistenceError>>,
    ),
    /// A cancellation.
    Cancel(
        i64,
        oneshot::Sender<Result<CancelOutcome, PersistenceError>>,
    ),
    /// The sweeper: release expired reservations.
    /// Orders still PROCESSING that were created before the given Unix ms are failed too.
    ReleaseExpired(i64, oneshot::Sender<Result<u64, PersistenceError>>),
    /// Coupon issues (embedded coupon actors, the Redis stream consumer); replies new rows.
    IssueCoupons(
        Vec<NewIssue>,
        oneshot::Sender<Result<u64, PersistenceError>>,
    ),
}

/// Tuning of the committer.
#[derive(Debug, Clone)]
pub struct CommitterConfig {
    /// Longest a write waits for companions once the writer is idle. Under load the writer is
    /// never idle (the next batch fills while the current one commits), so this only adds
    /// latency at low load; it trades a little of it for fewer fsyncs.
    pub linger: Duration,
    /// Most writes in one transaction; a full batch commits at once.
    pub max_batch: usize,
    /// Writes that may wait for the writer. Beyond it, callers are told to back off instead of
    /// queueing without bound.
    pub queue_capacity: usize,
}

impl Default for CommitterConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(1),
            max_batch: 512,
            queue_capacity: 16_384,
        }
    }
}

/// Handle to the group-commit writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<Write>,
}

/// Statistics shown by the admin endpoint.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitStats {
    /// Transactions committed.
    pub commits: u64,
    /// Writes committed.
    pub writes: u64,
    /// Size of the last batch.
    pub last_batch: usize,
    /// Unix ms of the last commit.
    pub last_commit_at: i64,
}

impl GroupCommitter {
    /// Starts the writer task on its own pooled connection.
    pub fn start(
        db: Database,
        config: CommitterConfig,
    ) -> (
        Self,
        std::sync::Arc<std::sync::Mutex<CommitStats>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let stats = std::sync::Arc::new(std::sync::Mutex::new(CommitStats::default()));
        let task = tokio::spawn(run(db, config, rx, stats.clone()));
        (Self { tx }, stats, task)
    }

    /// Queues a write; `Overloaded` when the queue is full, `Closed` after shutdown.
    pub fn submit(&self, write: Write) -> Result<(), PersistenceError> {
        self.tx.try_send(write).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PersistenceError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => PersistenceError::Closed,
        })
    }

    /// Queues the write `make` builds around a reply channel and waits for its commit.
    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, PersistenceError>>) -> Write,
    ) -> Result<T, PersistenceError> {
        let (reply, rx) = oneshot::channel();
        self.submit(make(reply))?;
        rx.await.map_err(|_| PersistenceError::Closed)?
    }

    /// Writes a new PROCESSING order and waits for the commit.
    pub async fn begin_order(&self, order: NewOrder) -> Result<BeginOutcome, PersistenceError> {
        self.write(|reply| Write::BeginOrder(order, reply)).await
    }

    /// Writes an order's final status and waits for the commit.
    pub async fn resolve(&self, r: OrderResolution) -> Result<ResolveOutcome, PersistenceError> {
        self.write(|reply| Write::Resolve(r, reply)).await
    }

    /// Cancels an order and waits for the commit.
    pub async fn cancel(&self, order_id: i64) -> Result<CancelOutcome, PersistenceError> {
        self.write(|reply| Write::Cancel(order_id, reply)).await
    }

    /// Writes a reservation batch and waits for the commit.
    pub async fn reserve(&self, batch: ReserveBatch) -> Result<ReserveOutcome, PersistenceError> {
        self.write(|reply| Write::Reserve(batch, reply)).await
    }

    /// Releases expired reservations and waits for the commit.
    /// Orders still `PROCESSING` that were created before `stale_before` (Unix ms) can no
    /// longer succeed (their reservations expired); they are failed in the same sweep.
    pub async fn release_expired(&self, stale_before: i64) -> Result<u64, PersistenceError> {
        self.write(|reply| Write::ReleaseExpired(stale_before, reply))
            .await
    }

    /// Writes coupon issues (idempotently) and waits for the commit; returns the new rows.
    pub async fn issue_coupons(&self, issues: Vec<NewIssue>) -> Result<u64, PersistenceError> {
        self.write(|reply| Write::IssueCoupons(issues, reply)).await
    }

    /// Queues coupon issues now and returns the commit's answer to wait for later. Queued in
    /// the caller's order: the writer commits in queue order, so a later write (a barrier)
    /// commits after these.
    pub fn submit_issues(
        &self,
        issues: Vec<NewIssue>,
    ) -> Result<oneshot::Receiver<Result<u64, PersistenceError>>, PersistenceError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Write::IssueCoupons(issues, reply))?;
        Ok(rx)
    }
}

/// Most expired reservations one sweep releases (keeps a sweep's transaction short).
const SWEEP_LIMIT: i64 = 1_000;

/// What a write did inside the transaction, sent to its caller after the commit.
enum Outcome {
    Begin(BeginOutcome),
    Reserve(ReserveOutcome),
    Resolve(ResolveOutcome),
    Cancel(CancelOutcome),
    Released(u64),
    Issued(u64),
}

fn reply(write: Write, outcome: Outcome) {
    match (write, outcome) {
        (Write::BeginOrder(_, r), Outcome::Begin(v)) => drop(r.send(Ok(v))),
        (Write::Reserve(_, r), Outcome::Reserve(v)) => drop(r.send(Ok(v))),
        (Write::Resolve(_, r), Outcome::Resolve(v)) => drop(r.send(Ok(v))),
        (Write::Cancel(_, r), Outcome::Cancel(v)) => drop(r.send(Ok(v))),
        (Write::ReleaseExpired(_, r), Outcome::Released(v)) => drop(r.send(Ok(v))),
        (Write::IssueCoupons(_, r), Outcome::Issued(v)) => drop(r.send(Ok(v))),
        (write, _) => fail(write, &PersistenceError::Batch("mismatched outcome".into())),
    }
}

fn fail(write: Write, err: &PersistenceError) {
    let err = || PersistenceError::Batch(err.to_string());
    match write {
        Write::BeginOrder(_, r) => drop(r.send(Err(err()))),
        Write::Reserve(_, r) => drop(r.send(Err(err()))),
        Write::Resolve(_, r) => drop(r.send(Err(err()))),
        Write::Cancel(_, r) => drop(r.send(Err(err()))),
        Write::ReleaseExpired(_, r) => drop(r.send(Err(err()))),
        Write::IssueCoupons(_, r) => drop(r.send(Err(err()))),
    }
}

async fn apply(
    conn: &mut sqlx::AnyConnection,
    write: &Write,
    now: i64,
) -> Result<Outcome, sqlx::Error> {
    Ok(match write {
        Write::BeginOrder(order, _) => Outcome::Begin(orders::begin_order(conn, order, now).await?),
        Write::Reserve(batch, _) => Outcome::Reserve(stock::reserve(conn, batch, now).await?),
        Write::Resolve(r, _) => Outcome::Resolve(orders::resolve_order(conn, r, now).await?),
        Write::Cancel(id, _) => Outcome::Cancel(orders::cancel_order(conn, *id, now).await?),
        Write::ReleaseExpired(stale_before, _) => {
            let released = stock::release_expired(conn, now, SWEEP_LIMIT).await?;
            let failed = orders::fail_stale(conn, *stale_before, now, SWEEP_LIMIT).await?;
            Outcome::Released(released + failed)
        }
        Write::IssueCoupons(issues, _) => {
            Outcome::Issued(coupons::insert_issues(conn, issues).await?)
        }
    })
}

async fn run(
    db: Database,
    config: CommitterConfig,
    mut rx: mpsc::Receiver<Write>,
    stats: std::sync::Arc<std::sync::Mutex<CommitStats>>,
) {
    let mut conn: Option<PoolConnection<sqlx::Any>> = None;
    let mut batch = Vec::with_capacity(config.max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let linger_until = tokio::time::Instant::now() + config.linger;
        while batch.len() < config.max_batch {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(linger_until, rx.recv()).await {
                        Ok(Some(w)) => batch.push(w),
                        _ => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        let writes = std::mem::take(&mut batch);
        let n = writes.len();
        let failed = commit(&db, &mut conn, writes).await;
        if let Some((writes, err)) = failed {
            // The connection may be broken; take a fresh one for the retries.
            conn = None;
            // One bad write must not sink its companions: retry each alone.
            tracing::warn!(error = %err, writes = n, "group commit failed; retrying writes one by one");
            for write in writes {
                if let Some((left, err)) = commit(&db, &mut conn, vec![write]).await {
                    conn = None;
                    for w in left {
                        fail(w, &err);
                    }
                }
            }
        }
        if let Ok(mut s) = stats.lock() {
            s.commits += 1;
            s.writes += n as u64;
            s.last_batch = n;
            s.last_commit_at = now_millis();
        }
    }
}

/// Runs `writes` in one transaction. On failure returns the writes (replies unsent) and why.
async fn commit(
    db: &Database,
    conn: &mut Option<PoolConnection<sqlx::Any>>,
    writes: Vec<Write>,
) -> Option<(Vec<Write>, PersistenceError)> {
    if conn.is_none() {
        match db.pool().acquire().await {
            Ok(c) => *conn = Some(c),
            Err(e) => return Some((writes, e.into())),
        }
    }
    let Some(c) = conn.as_mut() else {
        return Some((writes, PersistenceError::Closed));
    };
    let mut tx = match c.begin_with(db.begin_write_statement()).await {
        Ok(tx) => tx,
        Err(e) => return Some((writes, e.into())),
    };
    let now = now_millis();
    let mut outcomes = Vec::with_capacity(writes.len());
    for write in &writes {
        match apply(&mut tx, write, now).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                let _ = tx.rollback().await;
                return Some((writes, e.into()));
            }
        }
    }
    match tx.commit().await {
        Ok(()) => {
            for (write, outcome) in writes.into_iter().zip(outcomes) {
                reply(write, outcome);
            }
            None
        }
        Err(e) => Some((writes, e.into())),
    }
}
