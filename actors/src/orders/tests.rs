//! The saga's steps, with a fault injected at each point, against a real SQLite database, the
//! real group committer and real stock actors. The faults sit behind the saga's own seams
//! ([`OrderLedger`] and [`StockPath`]): each wrapper forwards to the real thing and fails one
//! chosen call.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use surge_domain::{ItemId, LineStatus, OrderStatus, Quantity};
use surge_persistence::PersistenceError;
use surge_persistence::committer::{CommitterConfig, GroupCommitter, WriterGuard};
use surge_persistence::orders::{FailOutcome, ItemTerms, NewOrder, PlaceOutcome};
use surge_persistence::testing::ScratchDb;
use surge_supervisors::{CircuitBreaker, CircuitConfig};

use super::{OrderLedger, OrderRequest, OrderSagas, SagaDeps, SagaOutcome};
use crate::coupons::{CouponActors, CouponConfig, CouponStore};
use crate::stock::path::{Hold, PathFuture};
use crate::stock::{ReserveError, StockActors, StockConfig, StockPath};

/// Where the ledger fails.
#[derive(Debug, Default)]
struct LedgerFaults {
    /// The order's write fails before committing (nothing written).
    fail: AtomicU32,
    /// The order's write is not answered: its outcome is unknown (nothing written here).
    unknown: AtomicU32,
    /// The saga dies while writing.
    panic: AtomicU32,
    /// The order is written, but the answer is lost (outcome unknown to the saga).
    lose_answer: AtomicU32,
    /// Writes seen.
    writes: AtomicU32,
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
    fn place(&self, order: NewOrder) -> PathFuture<'_, Result<PlaceOutcome, PersistenceError>> {
        self.faults.writes.fetch_add(1, Ordering::AcqRel);
        if take(&self.faults.panic) {
            panic!("injected: the saga died while writing");
        }
        if take(&self.faults.fail) {
            return Box::pin(async { Err(PersistenceError::Batch("injected".into())) });
        }
        if take(&self.faults.unknown) {
            return Box::pin(async { Err(PersistenceError::Unknown("injected".into())) });
        }
        if take(&self.faults.lose_answer) {
            let real = OrderLedger::place(&self.real, order);
            return Box::pin(async move {
                real.await?;
                Err(PersistenceError::Unknown(
                    "injected: the answer was lost".into(),
                ))
            });
        }
        OrderLedger::place(&self.real, order)
    }

    fn fail(
        &self,
        order_id: i64,
        reason: String,
    ) -> PathFuture<'_, Result<FailOutcome, PersistenceError>> {
        OrderLedger::fail(&self.real, order_id, reason)
    }
}

/// A stock path that forwards to the real actors, except for one item.
#[derive(Debug)]
struct FaultyStock {
    real: StockActors,
    /// The item whose hold misbehaves.
    item: AtomicU32,
    /// 1: answers "outcome unknown" after really holding; 2: panics.
    mode: AtomicU32,
    /// Holds asked for.
    holds: AtomicU32,
}

impl StockPath for FaultyStock {
    fn terms_of(&self, item: ItemId) -> PathFuture<'_, Result<Option<ItemTerms>, ReserveError>> {
        self.real.terms_of(item)
    }

    fn hold(
        &self,
        item: ItemId,
        order_id: i64,
        quantity: Quantity,
        within: Duration,
    ) -> PathFuture<'_, Result<Hold, ReserveError>> {
        self.holds.fetch_add(1, Ordering::AcqRel);
        let hit = i64::from(self.item.load(Ordering::Acquire)) == item.get();
        let mode = self.mode.load(Ordering::Acquire);
        Box::pin(async move {
            let real = self.real.hold(item, order_id, quantity, within).await;
            match (hit, mode) {
                (true, 1) => real.and(Err(ReserveError::Undetermined("injected".into()))),
                (true, 2) => panic!("injected: the stock path blew up"),
                _ => real,
            }
        })
    }

    fn release(&self, order_id: i64, hold: Hold) -> PathFuture<'_, ()> {
        self.real.release(order_id, hold)
    }

    fn lost(&self, hold: Hold) {
        self.real.lost(hold);
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
    ledger: Arc<LedgerFaults>,
    stock: Arc<FaultyStock>,
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
    let actors = StockActors::start(scratch.db.clone(), StockConfig::default())
        .await
        .unwrap();
    let stock = Arc::new(FaultyStock {
        real: actors,
        item: AtomicU32::new(0),
        mode: AtomicU32::new(0),
        holds: AtomicU32::new(0),
    });
    let coupons = CouponActors::start(
        scratch.db.clone(),
        committer.clone(),
        CouponStore::Embedded,
        CouponConfig::default(),
    )
    .await
    .unwrap();
    let ledger = Arc::new(LedgerFaults::default());
    let sagas = OrderSagas::start(SagaDeps {
        db: scratch.db.clone(),
        ledger: Arc::new(FaultyLedger {
            real: committer,
            faults: ledger.clone(),
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
        ledger,
        stock,
        user,
        a,
        b,
        _writer: writer,
    }
}

impl World {
    fn request(&self, lines: &[(i64, i64)]) -> OrderRequest {
        OrderRequest {
            user_id: self.user,
            lines: lines
                .iter()
                .map(|&(item, n)| (ItemId::from_db(item), Quantity::parse(n).unwrap()))
                .collect(),
            coupon_id: None,
            idempotency: None,
        }
    }

    async fn place(&self, lines: &[(i64, i64)]) -> (i64, SagaOutcome) {
        let (order_id, rx) = self
            .sagas
            .start_order(self.request(lines), None)
            .await
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .map(Result::ok)
            .ok()
            .flatten();
        (
            order_id,
            outcome.unwrap_or(SagaOutcome::Failed("no answer".into())),
        )
    }

    async fn orders(&self) -> i64 {
        self.scratch.count("orders").await.unwrap()
    }

    /// Every unit of the item is accounted for, and `sold` of them are sold.
    async fn assert_units(&self, item: i64, stocked: i64, sold: i64) {
        let (available, allotted, held, confirmed) = self.scratch.units(item).await.unwrap();
        assert_eq!(held, 0, "item {item}: units still held");
        assert_eq!(confirmed, sold, "item {item}: units sold");
        assert_eq!(
            available + allotted + confirmed,
            stocked,
            "item {item}: units lost"
        );
    }

    /// The item's actor will give `n` units (its holds came back).
    async fn assert_can_hold(&self, item: i64, n: i64) {
        let hold = self
            .stock
            .real
            .hold(
                ItemId::from_db(item),
                0,
                Quantity::parse(n).unwrap(),
                Duration::from_secs(5),
            )
            .await;
        assert!(
            hold.is_ok(),
            "item {item}: {n} units are not for sale: {hold:?}"
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
async fn an_order_is_written_once_with_every_line_sold() {
    let w = world().await;
    let (order, outcome) = w.place(&[(w.a, 2), (w.b, 3)]).await;
    let SagaOutcome::Succeeded(answered) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        w.ledger.writes.load(Ordering::Acquire),
        1,
        "one write per order"
    );
    // The answer is what was written.
    let stored = w.scratch.db.order_by_id(order).await.unwrap().unwrap();
    assert_eq!(answered, stored);
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
async fn a_line_out_of_stock_writes_nothing_and_gives_the_other_holds_back() {
    let w = world().await;
    let (_, outcome) = w.place(&[(w.a, 8), (w.b, 4)]).await;
    assert_eq!(
        outcome,
        SagaOutcome::OutOfStock(vec![LineStatus::Released, LineStatus::OutOfStock])
    );
    assert_eq!(w.orders().await, 0);
    assert_eq!(w.ledger.writes.load(Ordering::Acquire), 0);
    w.assert_units(w.a, 10, 0).await;
    w.assert_can_hold(w.a, 10).await;
}

#[tokio::test]
async fn an_unknown_item_writes_nothing_and_holds_nothing() {
    let w = world().await;
    let (_, outcome) = w.place(&[(w.a, 1), (999, 1)]).await;
    assert_eq!(
        outcome,
        SagaOutcome::ItemNotFound(vec![LineStatus::Released, LineStatus::ItemNotFound])
    );
    assert_eq!(w.orders().await, 0);
    assert_eq!(w.stock.holds.load(Ordering::Acquire), 0);
}

#[tokio::test]
async fn a_known_sold_out_item_is_refused_from_memory() {
    let w = world().await;
    let (_, first) = w.place(&[(w.b, 3)]).await;
    assert!(matches!(first, SagaOutcome::Succeeded(_)), "{first:?}");
    // The next one finds the row empty and the actor learns the item is sold out.
    let (_, second) = w.place(&[(w.b, 1)]).await;
    assert_eq!(
        second,
        SagaOutcome::OutOfStock(vec![LineStatus::OutOfStock])
    );
    let holds_before = w.stock.holds.load(Ordering::Acquire);
    let writes_before = w.ledger.writes.load(Ordering::Acquire);
    let (_, third) = w.place(&[(w.a, 1), (w.b, 1)]).await;
    assert_eq!(
        third,
        SagaOutcome::OutOfStock(vec![LineStatus::Released, LineStatus::OutOfStock])
    );
    assert_eq!(
        w.stock.holds.load(Ordering::Acquire),
        holds_before,
        "no hold asked"
    );
    assert_eq!(
        w.ledger.writes.load(Ordering::Acquire),
        writes_before,
        "nothing written"
    );
    assert_eq!(w.orders().await, 1);
}

#[tokio::test]
async fn a_write_that_fails_before_committing_gives_every_hold_back() {
    let w = world().await;
    w.ledger.fail.store(1, Ordering::Release);
    let (_, outcome) = w.place(&[(w.a, 4), (w.b, 3)]).await;
    assert!(matches!(outcome, SagaOutcome::Failed(_)), "{outcome:?}");
    assert_eq!(w.orders().await, 0);
    w.assert_can_hold(w.a, 10).await;
    w.assert_can_hold(w.b, 3).await;
}

#[tokio::test]
async fn a_write_in_doubt_that_did_not_land_gives_its_holds_back_once_settled() {
    let w = world().await;
    w.ledger.unknown.store(1, Ordering::Release);
    let (order, outcome) = w.place(&[(w.b, 2)]).await;
    assert!(
        matches!(outcome, SagaOutcome::Undetermined(id, _) if id == order),
        "{outcome:?}"
    );
    // Never "given back blindly": only once the database says the order does not exist do
    // its units come back.
    eventually("the holds come back", || async {
        w.stock
            .real
            .hold(
                ItemId::from_db(w.b),
                0,
                Quantity::parse(3).unwrap(),
                Duration::from_secs(5),
            )
            .await
            .is_ok()
    })
    .await;
    assert_eq!(w.orders().await, 0);
}

#[tokio::test]
async fn a_write_in_doubt_that_landed_keeps_its_units_sold() {
    let w = world().await;
    w.ledger.lose_answer.store(1, Ordering::Release);
    let (order, outcome) = w.place(&[(w.b, 2)]).await;
    assert!(
        matches!(outcome, SagaOutcome::Undetermined(id, _) if id == order),
        "{outcome:?}"
    );
    assert!(w.scratch.db.order_by_id(order).await.unwrap().is_some());
    // Give the settling a chance to (wrongly) release: it must not.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    w.assert_can_hold(w.b, 1).await;
    let more = w
        .stock
        .real
        .hold(
            ItemId::from_db(w.b),
            0,
            Quantity::parse(1).unwrap(),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(more, Err(ReserveError::OutOfStock), "a sold unit came back");
    w.assert_units(w.b, 3, 2).await;
}

#[tokio::test]
async fn a_hold_refused_for_a_stale_epoch_is_held_again_from_the_new_owner() {
    let w = world().await;
    // Warm the item's actor (epoch 1), then let another owner take the item over (epoch 2).
    let (_, first) = w.place(&[(w.a, 1)]).await;
    assert!(matches!(first, SagaOutcome::Succeeded(_)), "{first:?}");
    w.scratch
        .db
        .claim_allotment(w.a, "another-node")
        .await
        .unwrap()
        .unwrap();
    // Our actor still sells under epoch 1: the write refuses that hold, the actor stops, and
    // the saga holds again from a fresh actor (epoch 3) and writes once more.
    let (order, outcome) = w.place(&[(w.a, 2)]).await;
    assert!(matches!(outcome, SagaOutcome::Succeeded(_)), "{outcome:?}");
    assert_eq!(w.ledger.writes.load(Ordering::Acquire), 3);
    assert!(w.scratch.db.order_by_id(order).await.unwrap().is_some());
    w.assert_units(w.a, 10, 3).await;
}

#[tokio::test]
async fn an_undetermined_hold_refuses_the_order_and_writes_nothing() {
    let w = world().await;
    w.stock
        .item
        .store(u32::try_from(w.b).unwrap(), Ordering::Release);
    w.stock.mode.store(1, Ordering::Release);
    let (_, outcome) = w.place(&[(w.a, 1), (w.b, 1)]).await;
    assert!(matches!(outcome, SagaOutcome::Failed(_)), "{outcome:?}");
    assert_eq!(w.orders().await, 0);
    // The line it knew of comes back; the one whose answer was lost stays out (undersell).
    w.assert_can_hold(w.a, 10).await;
    w.assert_units(w.b, 3, 0).await;
}

#[tokio::test]
async fn a_hold_task_that_panics_refuses_the_order_and_releases_the_rest() {
    let w = world().await;
    w.stock
        .item
        .store(u32::try_from(w.b).unwrap(), Ordering::Release);
    w.stock.mode.store(2, Ordering::Release);
    let (_, outcome) = w.place(&[(w.a, 2), (w.b, 1)]).await;
    assert!(matches!(outcome, SagaOutcome::Failed(_)), "{outcome:?}");
    assert_eq!(w.orders().await, 0);
    w.assert_can_hold(w.a, 10).await;
}

#[tokio::test]
async fn a_saga_that_dies_while_writing_leaves_nothing_half_done() {
    let w = world().await;
    w.ledger.panic.store(1, Ordering::Release);
    let (order, rx) = w
        .sagas
        .start_order(w.request(&[(w.a, 2)]), None)
        .await
        .unwrap();
    // The saga dies before answering: its caller hears nothing (and would answer 202).
    assert!(rx.await.is_err());
    eventually("the supervisor records it", || async {
        w.sagas.views().is_empty()
    })
    .await;
    assert!(w.scratch.db.order_by_id(order).await.unwrap().is_none());
    w.assert_units(w.a, 10, 0).await;
}

#[tokio::test]
async fn a_keyed_request_refused_from_memory_still_replays_what_its_key_placed() {
    let w = world().await;
    let stranger = w.scratch.member("stranger_1").await.unwrap();
    let keyed = |user_id: i64, lines: &[(i64, i64)], key: &str| OrderRequest {
        user_id,
        idempotency: Some((key.to_owned(), format!("hash-of-{key}"))),
        ..w.request(lines)
    };
    let answer = |request: OrderRequest| async {
        let (_, rx) = w.sagas.start_order(request, None).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap()
    };
    let first = answer(keyed(w.user, &[(w.b, 3)], "k-1")).await;
    let SagaOutcome::Succeeded(placed) = first else {
        panic!("{first:?}")
    };
    // The next order finds the row empty: the item is known sold out from now on.
    let (_, second) = w.place(&[(w.b, 1)]).await;
    assert_eq!(
        second,
        SagaOutcome::OutOfStock(vec![LineStatus::OutOfStock])
    );
    assert!(w.stock.real.known_sold_out(ItemId::from_db(w.b)));
    // The member whose key placed an order gets it replayed, not refused.
    let again = answer(keyed(w.user, &[(w.b, 3)], "k-1")).await;
    assert_eq!(again, SagaOutcome::Replay(placed.id));
    // A member who never used a key is refused from memory alone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while w.sagas.inner.keyed.may_have_key(stranger) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the keyed members never loaded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = answer(keyed(stranger, &[(w.b, 1)], "k-2")).await;
    assert_eq!(
        refused,
        SagaOutcome::OutOfStock(vec![LineStatus::OutOfStock])
    );
    // A node that starts again learns the keyed members from the database.
    let restarted = super::KeyedMembers::default();
    restarted.load(&w.scratch.db).await;
    assert!(restarted.may_have_key(w.user));
    assert!(!restarted.may_have_key(stranger));
}
