//! The saga's steps, with a fault injected at each point, against a real SQLite database, the
//! real group committer and real stock actors. The faults sit behind the saga's own seams
//! ([`OrderLedger`] and [`StockPath`]): each wrapper forwards to the real thing and fails one
//! chosen call.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use surge_domain::{ItemId, LineStatus, OrderStatus, Quantity};
use surge_persistence::committer::{CommitterConfig, GroupCommitter, WriterGuard};
use surge_persistence::orders::{BeginOutcome, NewOrder, OrderResolution, ResolveOutcome};
use surge_persistence::testing::ScratchDb;
use surge_persistence::{PersistenceError, now_millis};
use surge_supervisors::{CircuitBreaker, CircuitConfig};

use super::{OrderLedger, OrderRequest, OrderSagas, SagaDeps, SagaOutcome, recovery};
use crate::coupons::{CouponActors, CouponConfig, CouponStore};
use crate::stock::path::PathFuture;
use crate::stock::{ReserveError, StockActors, StockConfig, StockPath};

/// Where the ledger fails.
#[derive(Debug, Default)]
struct LedgerFaults {
    /// Recording the order fails (nothing written).
    begin: AtomicU32,
    /// Confirming answers "outcome unknown" without writing.
    confirm: AtomicU32,
    /// Compensating fails (nothing written).
    compensate: AtomicU32,
    /// Confirming panics: the saga actor itself dies with units held.
    confirm_panics: AtomicU32,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

#[derive(Debug)]
struct FaultyLedger {
    real: GroupCommitter,
    faults: Arc<LedgerFaults>,
}

impl OrderLedger for FaultyLedger {
    fn begin(&self, order: NewOrder) -> PathFuture<'_, Result<BeginOutcome, PersistenceError>> {
        if take(&self.faults.begin) {
            return Box::pin(async { Err(PersistenceError::Batch("injected".into())) });
        }
        self.real.begin(order)
    }

    fn resolve(
        &self,
        resolution: OrderResolution,
    ) -> PathFuture<'_, Result<ResolveOutcome, PersistenceError>> {
        if resolution.failure.is_none() && take(&self.faults.confirm_panics) {
            panic!("injected: the saga died while confirming");
        }
        let counter = if resolution.failure.is_none() {
            &self.faults.confirm
        } else {
            &self.faults.compensate
        };
        if take(counter) {
            let err = if resolution.failure.is_none() {
                PersistenceError::Unknown("injected".into())
            } else {
                PersistenceError::Batch("injected".into())
            };
            return Box::pin(async move { Err(err) });
        }
        OrderLedger::resolve(&self.real, resolution)
    }
}

/// A stock path that forwards to the real actors, except for one item.
#[derive(Debug)]
struct FaultyStock {
    real: StockActors,
    /// The item whose reservation misbehaves.
    item: AtomicU32,
    /// 1: answers "outcome unknown" after really reserving; 2: panics.
    mode: AtomicU32,
}

impl StockPath for FaultyStock {
    fn price_of(&self, item: ItemId) -> PathFuture<'_, Result<Option<i64>, ReserveError>> {
        self.real.price_of(item)
    }

    fn reserve(
        &self,
        item: ItemId,
        order_id: i64,
        quantity: Quantity,
        within: Duration,
    ) -> PathFuture<'_, Result<(), ReserveError>> {
        let hit = i64::from(self.item.load(Ordering::Acquire)) == item.get();
        let mode = self.mode.load(Ordering::Acquire);
        Box::pin(async move {
            let real = self.real.reserve(item, order_id, quantity, within).await;
            match (hit, mode) {
                (true, 1) => real.and(Err(ReserveError::Undetermined("injected".into()))),
                (true, 2) => panic!("injected: the stock path blew up"),
                _ => real,
            }
        })
    }

    fn known_sold_out(&self, item: ItemId) -> bool {
        self.real.known_sold_out(item)
    }

    fn replenished(&self, item: ItemId) {
        self.real.replenished(item);
    }
}

struct World {
    scratch: ScratchDb,
    sagas: OrderSagas,
    ledger_faults: Arc<LedgerFaults>,
    stock: Arc<FaultyStock>,
    committer: GroupCommitter,
    user: i64,
    a: i64,
    b: i64,
    _writer: WriterGuard,
}

async fn world() -> World {
    let scratch = ScratchDb::sqlite().await.unwrap();
    let user = scratch.member("buyer_1").await.unwrap();
    let a = scratch.item(100, 10).await.unwrap();
    let b = scratch.item(250, 3).await.unwrap();
    let (committer, _, writer) =
        GroupCommitter::start(scratch.db.clone(), CommitterConfig::default());
    let actors = StockActors::start(
        scratch.db.clone(),
        committer.clone(),
        StockConfig::default(),
    )
    .await
    .unwrap();
    let stock = Arc::new(FaultyStock {
        real: actors,
        item: AtomicU32::new(0),
        mode: AtomicU32::new(0),
    });
    let coupons = CouponActors::start(
        scratch.db.clone(),
        committer.clone(),
        CouponStore::Embedded,
        CouponConfig::default(),
    )
    .await
    .unwrap();
    let ledger_faults = Arc::new(LedgerFaults::default());
    let sagas = OrderSagas::start(SagaDeps {
        db: scratch.db.clone(),
        ledger: Arc::new(FaultyLedger {
            real: committer.clone(),
            faults: ledger_faults.clone(),
        }),
        stock: stock.clone(),
        coupons,
        breaker: Arc::new(CircuitBreaker::new("database", CircuitConfig::default())),
        reserve_deadline: Duration::from_secs(2),
    })
    .await
    .unwrap();
    World {
        scratch,
        sagas,
        ledger_faults,
        stock,
        committer,
        user,
        a,
        b,
        _writer: writer,
    }
}

impl World {
    async fn place(&self, lines: &[(i64, i64)]) -> (i64, SagaOutcome) {
        let request = OrderRequest {
            user_id: self.user,
            lines: lines
                .iter()
                .map(|&(item, n)| (ItemId::from_db(item), Quantity::parse(n).unwrap()))
                .collect(),
            coupon_id: None,
            idempotency: None,
        };
        let (order_id, rx) = self.sagas.start_order(request).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .map(Result::ok)
            .ok()
            .flatten();
        (
            order_id,
            outcome.unwrap_or(SagaOutcome::Failed(order_id, "no answer".into())),
        )
    }

    async fn status(&self, order_id: i64) -> Option<OrderStatus> {
        self.scratch
            .db
            .order_by_id(order_id)
            .await
            .unwrap()
            .map(|o| o.status)
    }

    /// Every unit of both items is where it should be: none held, `sold` confirmed.
    async fn assert_units(&self, item: i64, stocked: i64, confirmed: i64) {
        let (available, allotted, held, sold) = self.scratch.units(item).await.unwrap();
        assert_eq!(held, 0, "item {item}: units still held");
        assert_eq!(sold, confirmed, "item {item}: units sold");
        assert_eq!(
            available + allotted + held + sold,
            stocked,
            "item {item}: units lost"
        );
    }
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn every_line_reserved_and_confirmed_in_one_order() {
    let w = world().await;
    let (order, outcome) = w.place(&[(w.a, 2), (w.b, 3)]).await;
    assert_eq!(outcome, SagaOutcome::Succeeded(order));
    let stored = w.scratch.db.order_by_id(order).await.unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Succeeded);
    assert!(
        stored
            .lines
            .iter()
            .all(|l| l.status == LineStatus::Reserved)
    );
    assert_eq!(stored.total_price, 2 * 100 + 3 * 250);
    w.assert_units(w.a, 10, 2).await;
    w.assert_units(w.b, 3, 3).await;
}

#[tokio::test]
async fn a_line_out_of_stock_releases_the_lines_that_were_held() {
    let w = world().await;
    let (order, outcome) = w.place(&[(w.a, 2), (w.b, 4)]).await;
    assert_eq!(outcome, SagaOutcome::OutOfStock(order));
    let stored = w.scratch.db.order_by_id(order).await.unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Failed);
    assert_eq!(stored.lines[1].status, LineStatus::OutOfStock);
    assert_eq!(stored.lines[0].status, LineStatus::Released);
    w.assert_units(w.a, 10, 0).await;
    w.assert_units(w.b, 3, 0).await;
}

#[tokio::test]
async fn a_failed_first_write_leaves_nothing_and_reserves_nothing() {
    let w = world().await;
    w.ledger_faults.begin.store(1, Ordering::Release);
    let (order, outcome) = w.place(&[(w.a, 1)]).await;
    assert!(
        matches!(outcome, SagaOutcome::Failed(id, _) if id == order),
        "{outcome:?}"
    );
    assert_eq!(w.status(order).await, None);
    assert_eq!(w.scratch.count("reservations").await.unwrap(), 0);
    w.assert_units(w.a, 10, 0).await;
}

#[tokio::test]
async fn an_undetermined_reservation_is_compensated_with_the_rest() {
    let w = world().await;
    // Line b's reservation really commits, but the saga hears "outcome unknown".
    w.stock
        .item
        .store(u32::try_from(w.b).unwrap(), Ordering::Release);
    w.stock.mode.store(1, Ordering::Release);
    let (order, outcome) = w.place(&[(w.a, 1), (w.b, 1)]).await;
    assert!(
        matches!(outcome, SagaOutcome::Failed(id, _) if id == order),
        "{outcome:?}"
    );
    assert_eq!(w.status(order).await, Some(OrderStatus::Failed));
    // Both the line it knew of and the one whose outcome was unknown are released.
    w.assert_units(w.a, 10, 0).await;
    w.assert_units(w.b, 3, 0).await;
}

#[tokio::test]
async fn a_confirmation_in_doubt_is_retried_and_succeeds_once() {
    let w = world().await;
    w.ledger_faults.confirm.store(2, Ordering::Release);
    let (order, outcome) = w.place(&[(w.a, 3)]).await;
    assert_eq!(outcome, SagaOutcome::Succeeded(order));
    w.assert_units(w.a, 10, 3).await;
}

#[tokio::test]
async fn a_confirmation_that_never_answers_is_undetermined_and_the_sweeper_settles_it() {
    let w = world().await;
    w.ledger_faults.confirm.store(u32::MAX, Ordering::Release);
    let (order, outcome) = w.place(&[(w.a, 3)]).await;
    assert!(
        matches!(outcome, SagaOutcome::Undetermined(id, _) if id == order),
        "{outcome:?}"
    );
    // Never "given back blindly": the order is still PROCESSING with its units held.
    assert_eq!(w.status(order).await, Some(OrderStatus::Processing));
    assert_eq!(w.scratch.units(w.a).await.unwrap().2, 3);
    // The sweeper fails orders that can no longer succeed and releases what they hold.
    w.committer.release_expired(now_millis() + 1).await.unwrap();
    assert_eq!(w.status(order).await, Some(OrderStatus::Failed));
    w.assert_units(w.a, 10, 0).await;
}

#[tokio::test]
async fn a_compensation_that_fails_is_finished_by_recovery() {
    let w = world().await;
    w.ledger_faults.compensate.store(1, Ordering::Release);
    let (order, outcome) = w.place(&[(w.a, 2), (w.b, 9)]).await;
    assert!(
        matches!(outcome, SagaOutcome::Failed(id, _) if id == order),
        "{outcome:?}"
    );
    assert_eq!(w.status(order).await, Some(OrderStatus::Processing));
    // The next start compensates what the previous process left half done.
    let recovered = recovery::recover(&w.scratch.db, &w.committer)
        .await
        .unwrap();
    assert_eq!(recovered, 1);
    assert_eq!(w.status(order).await, Some(OrderStatus::Failed));
    w.assert_units(w.a, 10, 0).await;
    w.assert_units(w.b, 3, 0).await;
}

#[tokio::test]
async fn a_reservation_task_that_panics_fails_the_order_and_releases_the_rest() {
    let w = world().await;
    w.stock
        .item
        .store(u32::try_from(w.b).unwrap(), Ordering::Release);
    w.stock.mode.store(2, Ordering::Release);
    let (order, outcome) = w.place(&[(w.a, 2), (w.b, 1)]).await;
    assert!(
        matches!(outcome, SagaOutcome::Failed(id, _) if id == order),
        "{outcome:?}"
    );
    assert_eq!(w.status(order).await, Some(OrderStatus::Failed));
    w.assert_units(w.a, 10, 0).await;
    w.assert_units(w.b, 3, 0).await;
}

#[tokio::test]
async fn a_saga_that_dies_holding_units_is_compensated_by_its_supervisor() {
    let w = world().await;
    w.ledger_faults.confirm_panics.store(1, Ordering::Release);
    let request = OrderRequest {
        user_id: w.user,
        lines: vec![(ItemId::from_db(w.a), Quantity::parse(2).unwrap())],
        coupon_id: None,
        idempotency: None,
    };
    let (order, rx) = w.sagas.start_order(request).await.unwrap();
    // The saga dies before answering: its caller hears nothing (and would answer 202).
    assert!(rx.await.is_err());
    eventually("the supervisor compensates the order", || async {
        w.status(order).await == Some(OrderStatus::Failed)
    })
    .await;
    w.assert_units(w.a, 10, 0).await;
    assert_eq!(w.sagas.views().len(), 0);
}
