//! Group commit: every durable write on the order hot path goes through one writer that puts
//! all the writes waiting at that moment into one transaction, so a burst of N orders costs a
//! handful of fsyncs instead of N.

use std::time::Duration;

use sqlx::Connection;
use sqlx::pool::PoolConnection;
use tokio::sync::{mpsc, oneshot, watch};

use crate::coupons::{self, NewIssue};
use crate::orders::{self, CancelOutcome, FailOutcome, NewOrder, PlaceOutcome};
use crate::{Database, PersistenceError, now_millis};
use crate::{my_page, placement, stock};

/// Writes a committer accepts.
#[derive(Debug)]
pub enum Write {
    /// An order, in its final state, with its units (fenced), coupon and idempotency claim.
    Place(
        NewOrder,
        oneshot::Sender<Result<PlaceOutcome, PersistenceError>>,
    ),
    /// Fail an order left `PROCESSING` (recovery).
    Fail(
        i64,
        String,
        oneshot::Sender<Result<FailOutcome, PersistenceError>>,
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
    /// A batch of events for the my-page read model, with the outbox rows it marks published
    /// (the in-process relay); replies how many events were new.
    ///
    /// Concurrency decision: the projection's writes go through the one writer instead of a
    /// transaction of their own. On SQLite a second writing connection waits for the write
    /// lock in the busy handler's sleeps (1, 2, 5 ms …), which the order path paid in its tail,
    /// and each of its transactions cost an fsync of its own; in the writer's batch it costs a
    /// few statements and shares the batch's commit.
    Project(PageEvents, oneshot::Sender<Result<usize, PersistenceError>>),
}

/// Events for the my-page projection and the outbox rows to mark published with them.
#[derive(Debug)]
pub struct PageEvents {
    /// The events, in outbox order.
    pub events: Vec<surge_domain::Event>,
    /// Outbox ids marked published in the same transaction (empty when the events came from
    /// a broker).
    pub published: Vec<i64>,
}

/// Tuning of the committer.
#[derive(Debug, Clone)]
pub struct CommitterConfig {
    /// Longest a write waits for companions once the writer is idle. Zero by default: under
    /// load the next batch fills while the current one commits, so lingering only adds latency
    /// (it was measured at ~1.8 ms per order under load).
    pub linger: Duration,
    /// Most writes in one transaction; a full batch commits at once.
    pub max_batch: usize,
    /// Writes that may wait for the writer. Beyond it, callers are told to back off instead of
    /// queueing without bound.
    pub queue_capacity: usize,
    /// Faults the unit tests inject.
    #[cfg(test)]
    pub(crate) faults: Faults,
}

/// Faults injected by this crate's unit tests.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct Faults {
    /// Commits whose answer is lost after they committed (the "outcome unknown" case).
    lost_answers: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

#[cfg(test)]
impl Faults {
    fn lose_next_commit_answer(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.lost_answers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl Default for CommitterConfig {
    fn default() -> Self {
        Self {
            linger: Duration::ZERO,
            max_batch: 512,
            queue_capacity: 16_384,
            #[cfg(test)]
            faults: Faults::default(),
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
    /// Microseconds the statements of a transaction take (BEGIN to the last statement),
    /// moving average over about 32 transactions.
    pub statements_us: u64,
    /// Microseconds a COMMIT takes (the durable write), moving average.
    pub commit_us: u64,
}

/// One step of a moving average with weight 1/32.
fn smooth(average: u64, sample: u64) -> u64 {
    if average == 0 {
        sample
    } else {
        average - average / 32 + sample / 32
    }
}

/// Owns the writer task (the shape of mini-redis's `DbDropGuard`): [`finish`](Self::finish)
/// or dropping it closes the queue; the writer commits every write already queued, then ends.
/// Writes submitted after that are refused with [`PersistenceError::Closed`].
#[derive(Debug)]
pub struct WriterGuard {
    close: watch::Sender<bool>,
    /// Answered (or dropped) when the writer's thread ends.
    done: Option<oneshot::Receiver<()>>,
}

impl WriterGuard {
    /// Closes the queue and waits until everything queued is committed.
    pub async fn finish(mut self) {
        self.close.send_replace(true);
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.close.send_replace(true);
    }
}

impl GroupCommitter {
    /// Starts the writer on a thread of its own, with its own pooled connection.
    ///
    /// Concurrency decision: the writer runs a single-threaded runtime on a dedicated thread,
    /// not as a task among the request handlers. Each statement is a round trip to the
    /// database (on SQLite, to the driver's own thread); as a shared-runtime task the writer
    /// waited behind the request handlers in the run queue after every one of them, which made
    /// a commit cycle several milliseconds under load. On its own thread it is woken at once.
    pub fn start(
        db: Database,
        config: CommitterConfig,
    ) -> (
        Self,
        std::sync::Arc<std::sync::Mutex<CommitStats>>,
        WriterGuard,
    ) {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let (close, closed) = watch::channel(false);
        let stats = std::sync::Arc::new(std::sync::Mutex::new(CommitStats::default()));
        let (finished, done) = oneshot::channel();
        let writer_stats = stats.clone();
        let spawned = std::thread::Builder::new()
            .name("surge-writer".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(run(db, config, rx, closed, writer_stats)),
                    Err(e) => tracing::error!(error = %e, "the writer's runtime did not start"),
                }
                let _ = finished.send(());
            });
        if let Err(e) = spawned {
            // `rx` went with the closure: every write is refused as Closed.
            tracing::error!(error = %e, "the writer's thread did not start");
        }
        (
            Self { tx },
            stats,
            WriterGuard {
                close,
                done: Some(done),
            },
        )
    }

    /// Whether the writer has stopped taking writes (it finished or died).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
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
        // A write that was accepted and never answered (the writer died) may have committed.
        rx.await
            .map_err(|_| PersistenceError::Unknown("the writer stopped before answering".into()))?
    }

    /// Writes an order in its final state and waits for the commit.
    pub async fn place(&self, order: NewOrder) -> Result<PlaceOutcome, PersistenceError> {
        self.write(|reply| Write::Place(order, reply)).await
    }

    /// Fails an order left `PROCESSING` and waits for the commit.
    pub async fn fail(
        &self,
        order_id: i64,
        reason: String,
    ) -> Result<FailOutcome, PersistenceError> {
        self.write(|reply| Write::Fail(order_id, reason, reply))
            .await
    }

    /// Cancels an order and waits for the commit.
    pub async fn cancel(&self, order_id: i64) -> Result<CancelOutcome, PersistenceError> {
        self.write(|reply| Write::Cancel(order_id, reply)).await
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

    /// Applies events to the my-page read model in the writer's next transaction and waits
    /// for its commit; returns how many events were new.
    pub async fn project(&self, events: PageEvents) -> Result<usize, PersistenceError> {
        self.write(|reply| Write::Project(events, reply)).await
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
    Place(PlaceOutcome),
    Fail(FailOutcome),
    Cancel(CancelOutcome),
    Released(u64),
    Issued(u64),
    Projected(usize),
}

fn reply(write: Write, outcome: Outcome) {
    match (write, outcome) {
        (Write::Place(_, r), Outcome::Place(v)) => drop(r.send(Ok(v))),
        (Write::Fail(_, _, r), Outcome::Fail(v)) => drop(r.send(Ok(v))),
        (Write::Cancel(_, r), Outcome::Cancel(v)) => drop(r.send(Ok(v))),
        (Write::ReleaseExpired(_, r), Outcome::Released(v)) => drop(r.send(Ok(v))),
        (Write::IssueCoupons(_, r), Outcome::Issued(v)) => drop(r.send(Ok(v))),
        (Write::Project(_, r), Outcome::Projected(v)) => drop(r.send(Ok(v))),
        (write, _) => fail(write, &PersistenceError::Batch("mismatched outcome".into())),
    }
}

fn fail(write: Write, err: &PersistenceError) {
    let err = || match err {
        PersistenceError::Unknown(cause) => PersistenceError::Unknown(cause.clone()),
        other => PersistenceError::Batch(other.to_string()),
    };
    match write {
        Write::Place(_, r) => drop(r.send(Err(err()))),
        Write::Fail(_, _, r) => drop(r.send(Err(err()))),
        Write::Cancel(_, r) => drop(r.send(Err(err()))),
        Write::ReleaseExpired(_, r) => drop(r.send(Err(err()))),
        Write::IssueCoupons(_, r) => drop(r.send(Err(err()))),
        Write::Project(_, r) => drop(r.send(Err(err()))),
    }
}

async fn apply(
    conn: &mut sqlx::AnyConnection,
    backend: crate::Backend,
    write: &Write,
    now: i64,
) -> Result<Outcome, PersistenceError> {
    Ok(match write {
        Write::Place(order, _) => Outcome::Place(
            placement::place_orders(conn, backend, &[order], now)
                .await?
                .pop()
                .unwrap_or(PlaceOutcome::Placed { at: now }),
        ),
        Write::Fail(id, reason, _) => {
            Outcome::Fail(orders::fail_order(conn, *id, reason, now).await?)
        }
        Write::Cancel(id, _) => Outcome::Cancel(orders::cancel_order(conn, *id, now).await?),
        Write::ReleaseExpired(stale_before, _) => {
            let released = stock::release_expired(conn, now, SWEEP_LIMIT).await?;
            let failed = orders::fail_stale(conn, *stale_before, now, SWEEP_LIMIT).await?;
            Outcome::Released(released + failed)
        }
        Write::IssueCoupons(issues, _) => {
            Outcome::Issued(coupons::insert_issues(conn, issues).await?)
        }
        Write::Project(batch, _) => Outcome::Projected(
            my_page::apply_page_events(conn, backend, &batch.events, now, &batch.published).await?,
        ),
    })
}

async fn run(
    db: Database,
    config: CommitterConfig,
    mut rx: mpsc::Receiver<Write>,
    mut closed: watch::Receiver<bool>,
    stats: std::sync::Arc<std::sync::Mutex<CommitStats>>,
) {
    let mut conn: Option<PoolConnection<sqlx::Any>> = None;
    let mut batch = Vec::with_capacity(config.max_batch);
    loop {
        let first = tokio::select! {
            // Queued writes first: a close never overtakes a write that was already accepted.
            biased;
            w = rx.recv() => match w {
                Some(w) => w,
                None => break,
            },
            _ = closed.wait_for(|c| *c) => {
                // Refuse new writes; the loop drains what is queued, then `recv` ends it.
                rx.close();
                continue;
            }
        };
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
        let failed = commit(&db, &config, &stats, &mut conn, writes).await;
        if let Some((writes, err)) = failed {
            // The connection may be broken; take a fresh one.
            conn = None;
            if let PersistenceError::Unknown(_) = err {
                // The commit may have landed: running the writes again could apply them twice.
                // Every waiter hears "unknown" and reconciles from durable state.
                tracing::warn!(error = %err, writes = n, "group commit outcome unknown");
                for write in writes {
                    fail(write, &err);
                }
            } else {
                // Nothing was written. One bad write must not sink its companions: retry each
                // alone.
                tracing::warn!(error = %err, writes = n, "group commit failed; retrying writes one by one");
                for write in writes {
                    if let Some((left, err)) =
                        commit(&db, &config, &stats, &mut conn, vec![write]).await
                    {
                        conn = None;
                        for w in left {
                            fail(w, &err);
                        }
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
    config: &CommitterConfig,
    stats: &std::sync::Mutex<CommitStats>,
    conn: &mut Option<PoolConnection<sqlx::Any>>,
    writes: Vec<Write>,
) -> Option<(Vec<Write>, PersistenceError)> {
    #[cfg(not(test))]
    let _ = config;
    if conn.is_none() {
        match db.pool().acquire().await {
            Ok(c) => *conn = Some(c),
            Err(e) => return Some((writes, e.into())),
        }
    }
    let Some(c) = conn.as_mut() else {
        return Some((writes, PersistenceError::Closed));
    };
    let began = std::time::Instant::now();
    let mut tx = match c.begin_with(db.begin_write_statement()).await {
        Ok(tx) => tx,
        Err(e) => return Some((writes, e.into())),
    };
    let now = now_millis();
    // Every order of the batch is written first, as one run (a few multi-row statements), so
    // its fenced allotment decrements lock their rows in one pass sorted by item. Two runs in
    // one transaction (orders split by, say, the sweeper's write) would lock in two sorted
    // passes, and in a cluster two nodes' writers then deadlock on each other's rows. The other
    // writes follow in queue order; none depends on an order placed in the same batch (a
    // cancellation is queued only after its order's 201).
    let orders: Vec<&NewOrder> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Place(order, _) => Some(order),
            _ => None,
        })
        .collect();
    let placed = if orders.is_empty() {
        Ok(Vec::new())
    } else {
        placement::place_orders(&mut tx, db.backend(), &orders, now).await
    };
    let mut placed = match placed {
        Ok(placed) => placed.into_iter(),
        Err(e) => {
            let _ = tx.rollback().await;
            return Some((writes, e.into()));
        }
    };
    let mut outcomes = Vec::with_capacity(writes.len());
    for write in &writes {
        let outcome = match write {
            Write::Place(..) => match placed.next() {
                Some(placed) => Ok(Outcome::Place(placed)),
                None => Err(PersistenceError::Batch(
                    "an order without an outcome".into(),
                )),
            },
            other => apply(&mut tx, db.backend(), other, now).await,
        };
        match outcome {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                let _ = tx.rollback().await;
                return Some((writes, e));
            }
        }
    }
    let committing = std::time::Instant::now();
    let committed = tx.commit().await;
    if let Ok(mut s) = stats.lock() {
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        s.statements_us = smooth(s.statements_us, micros(committing - began));
        s.commit_us = smooth(s.commit_us, micros(committing.elapsed()));
    }
    match committed {
        #[cfg(test)]
        Ok(()) if config.faults.lose_next_commit_answer() => Some((
            writes,
            PersistenceError::Unknown("injected: the commit's answer was lost".into()),
        )),
        Ok(()) => {
            for (write, outcome) in writes.into_iter().zip(outcomes) {
                reply(write, outcome);
            }
            None
        }
        Err(e) => Some((writes, PersistenceError::Unknown(e.to_string()))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::orders::NewOrderLine;
    use crate::testing::ScratchDb;

    fn order(id: i64, user_id: i64, item_id: i64) -> NewOrder {
        NewOrder {
            id,
            user_id,
            lines: vec![NewOrderLine {
                item_id,
                quantity: 1,
                unit_price: 100,
                max_per_member: None,
            }],
            coupon_id: None,
            total_price: 100,
            discount: 0,
            idempotency: None,
            holds: Vec::new(),
        }
    }

    struct Setup {
        scratch: ScratchDb,
        committer: GroupCommitter,
        stats: Arc<Mutex<CommitStats>>,
        writer: WriterGuard,
        user: i64,
        item: i64,
    }

    async fn setup(config: CommitterConfig) -> Setup {
        let scratch = ScratchDb::sqlite().await.unwrap();
        let user = scratch.member("buyer_1").await.unwrap();
        let item = scratch.item(100, 10).await.unwrap();
        let (committer, stats, writer) = GroupCommitter::start(scratch.db.clone(), config);
        Setup {
            scratch,
            committer,
            stats,
            writer,
            user,
            item,
        }
    }

    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn finishing_the_writer_commits_what_is_queued_and_refuses_the_rest() {
        let Setup {
            scratch,
            committer,
            writer,
            user,
            item,
            ..
        } = setup(CommitterConfig::default()).await;
        let queued: Vec<_> = (1..=50)
            .map(|id| {
                let (reply, rx) = oneshot::channel();
                committer
                    .submit(Write::Place(order(id, user, item), reply))
                    .unwrap();
                rx
            })
            .collect();
        writer.finish().await;
        for rx in queued {
            assert!(matches!(
                rx.await.unwrap().unwrap(),
                PlaceOutcome::Placed { .. }
            ));
        }
        assert_eq!(scratch.count("orders").await.unwrap(), 50);
        assert!(matches!(
            committer.place(order(51, user, item)).await,
            Err(PersistenceError::Closed)
        ));
    }

    #[tokio::test]
    async fn concurrent_writes_share_transactions_and_each_gets_its_answer() {
        let Setup {
            scratch,
            committer,
            stats,
            writer: _writer,
            user,
            item,
        } = setup(CommitterConfig {
            linger: Duration::from_millis(20),
            ..CommitterConfig::default()
        })
        .await;
        let writes: Vec<_> = (1..=200)
            .map(|id| {
                let committer = committer.clone();
                tokio::spawn(async move { committer.place(order(id, user, item)).await })
            })
            .collect();
        for w in writes {
            assert!(matches!(
                w.await.unwrap().unwrap(),
                PlaceOutcome::Placed { .. }
            ));
        }
        let s = *stats.lock().unwrap();
        assert_eq!(s.writes, 200);
        assert!(s.commits < 200, "200 writes took {} commits", s.commits);
        assert_eq!(scratch.count("orders").await.unwrap(), 200);
    }

    #[tokio::test]
    async fn a_bad_write_fails_alone_and_its_companions_commit() {
        let Setup {
            scratch,
            committer,
            writer: _writer,
            user,
            item,
            ..
        } = setup(CommitterConfig {
            linger: Duration::from_millis(20),
            ..CommitterConfig::default()
        })
        .await;
        // Order 7 twice: the second violates the primary key; it must not sink order 8.
        let a = committer.submit(Write::Place(order(7, user, item), oneshot::channel().0));
        assert!(a.is_ok());
        let (dup, dup_rx) = oneshot::channel();
        committer
            .submit(Write::Place(order(7, user, item), dup))
            .unwrap();
        let fine = committer.place(order(8, user, item)).await;
        assert!(matches!(fine.unwrap(), PlaceOutcome::Placed { .. }));
        assert!(matches!(
            dup_rx.await.unwrap(),
            Err(PersistenceError::Batch(_))
        ));
        assert_eq!(scratch.count("orders").await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_failed_batch_answers_every_waiter() {
        let Setup {
            scratch,
            committer,
            writer: _writer,
            user,
            item,
            ..
        } = setup(CommitterConfig::default()).await;
        // A closed pool fails every transaction: every waiter must hear it, none may hang.
        scratch.db.close().await;
        let waiters: Vec<_> = (1..=20)
            .map(|id| {
                let committer = committer.clone();
                tokio::spawn(async move { committer.place(order(id, user, item)).await })
            })
            .collect();
        for w in waiters {
            let answer = tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("every waiter is answered")
                .unwrap();
            assert!(
                matches!(answer, Err(PersistenceError::Batch(_))),
                "{answer:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_commit_whose_answer_is_lost_is_reported_unknown_and_not_replayed() {
        let config = CommitterConfig::default();
        let faults = config.faults.clone();
        let Setup {
            scratch,
            committer,
            writer: _writer,
            user,
            item,
            ..
        } = setup(config).await;
        faults.lost_answers.store(1, Ordering::Release);
        let answer = committer.place(order(42, user, item)).await;
        assert!(
            matches!(answer, Err(PersistenceError::Unknown(_))),
            "{answer:?}"
        );
        // It did commit, exactly once: the writer did not run it again on its own.
        assert_eq!(scratch.count("orders").await.unwrap(), 1);
        assert_eq!(scratch.count("order_lines").await.unwrap(), 1);
        // The next write goes through as usual.
        assert!(matches!(
            committer.place(order(43, user, item)).await.unwrap(),
            PlaceOutcome::Placed { .. }
        ));
    }

    #[tokio::test]
    async fn an_order_holding_units_under_a_stale_epoch_writes_nothing() {
        let Setup {
            scratch,
            committer,
            writer: _writer,
            user,
            item,
            ..
        } = setup(CommitterConfig::default()).await;
        let claim = scratch
            .db
            .claim_allotment(item, "node-a")
            .await
            .unwrap()
            .unwrap();
        let (moved, _) = scratch
            .db
            .check_out_units(item, claim.epoch, 5)
            .await
            .unwrap();
        assert_eq!(moved, 5);
        // Another owner takes the item over: the first owner's epoch is stale.
        let newer = scratch
            .db
            .claim_allotment(item, "node-b")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(newer.epoch, claim.epoch + 1);
        // An order holding 2 units under the stale epoch is refused by the database.
        let mut stale = order(9, user, item);
        stale.lines[0].quantity = 2;
        stale.holds = vec![crate::orders::StockHold {
            item_id: item,
            quantity: 2,
            source: crate::orders::HoldSource::Allotment { epoch: claim.epoch },
        }];
        assert_eq!(
            committer.place(stale).await.unwrap(),
            PlaceOutcome::HoldLost { item_id: item }
        );
        assert_eq!(scratch.count("orders").await.unwrap(), 0);
        assert_eq!(scratch.count("reservations").await.unwrap(), 0);
        // The stale owner's checked-out units went back to the row with the takeover.
        assert_eq!(scratch.units(item).await.unwrap(), (10, 0, 0, 0));
        // The new owner's hold is taken: units move from its allotment to a sold reservation.
        let (moved, _) = scratch
            .db
            .check_out_units(item, newer.epoch, 4)
            .await
            .unwrap();
        assert_eq!(moved, 4);
        let mut fresh = order(10, user, item);
        fresh.lines[0].quantity = 2;
        fresh.holds = vec![crate::orders::StockHold {
            item_id: item,
            quantity: 2,
            source: crate::orders::HoldSource::Allotment { epoch: newer.epoch },
        }];
        assert!(matches!(
            committer.place(fresh).await.unwrap(),
            PlaceOutcome::Placed { .. }
        ));
        assert_eq!(scratch.units(item).await.unwrap(), (6, 2, 0, 2));
    }
}
