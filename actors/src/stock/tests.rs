//! The stock actor against a real SQLite database and the real group committer.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use surge_domain::{ItemId, Quantity, RestockQuantity};
use surge_persistence::committer::{CommitterConfig, GroupCommitter, WriterGuard};
use surge_persistence::testing::ScratchDb;

use super::{ReserveError, StockActors, StockConfig, StockPath};

struct Node {
    scratch: ScratchDb,
    stock: StockActors,
    _writer: WriterGuard,
}

async fn node(chunk: i64) -> Node {
    let scratch = ScratchDb::sqlite().await.unwrap();
    let (committer, _, writer) =
        GroupCommitter::start(scratch.db.clone(), CommitterConfig::default());
    let stock = StockActors::start(
        scratch.db.clone(),
        committer,
        StockConfig {
            allotment_chunk: chunk,
            ..StockConfig::default()
        },
    )
    .await
    .unwrap();
    Node {
        scratch,
        stock,
        _writer: writer,
    }
}

fn q(n: i64) -> Quantity {
    Quantity::parse(n).unwrap()
}

const WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn sells_from_its_checked_out_allotment_and_never_past_the_stock() {
    let n = node(4).await;
    let item = n.scratch.item(100, 10).await.unwrap();
    let id = ItemId::from_db(item);
    // 3 units: a check-out of 4 (the chunk), 3 held, 1 left in the allotment.
    n.stock.reserve(id, 1, q(3), WITHIN).await.unwrap();
    assert_eq!(n.scratch.units(item).await.unwrap(), (6, 1, 3, 0));
    // 5 more: the allotment's 1 is not enough, so 4 more are checked out... and then 4 more.
    n.stock.reserve(id, 2, q(5), WITHIN).await.unwrap();
    let (available, allotted, held, confirmed) = n.scratch.units(item).await.unwrap();
    assert_eq!((held, confirmed), (8, 0));
    assert_eq!(available + allotted + held, 10);
    // 3 more than what is left: refused, nothing written.
    assert_eq!(
        n.stock.reserve(id, 3, q(3), WITHIN).await,
        Err(ReserveError::OutOfStock)
    );
    n.stock.reserve(id, 4, q(2), WITHIN).await.unwrap();
    assert_eq!(n.scratch.units(item).await.unwrap(), (0, 0, 10, 0));
    assert_eq!(n.scratch.count("reservations").await.unwrap(), 3);
    // Sold out: known from memory, and a refusal changes nothing.
    assert_eq!(
        n.stock.reserve(id, 5, q(1), WITHIN).await,
        Err(ReserveError::OutOfStock)
    );
    assert!(n.stock.known_sold_out(id));
    assert_eq!(n.scratch.count("reservations").await.unwrap(), 3);
}

#[tokio::test]
async fn an_unknown_item_is_not_found_and_leaves_no_actor() {
    let n = node(4).await;
    let id = ItemId::from_db(999);
    assert_eq!(n.stock.price_of(id).await, Ok(None));
    assert_eq!(
        n.stock.reserve(id, 1, q(1), WITHIN).await,
        Err(ReserveError::ItemNotFound)
    );
    assert!(n.stock.views().is_empty());
}

#[tokio::test]
async fn a_stale_epoch_fails_the_batch_and_stops_the_actor() {
    let n = node(4).await;
    let item = n.scratch.item(100, 10).await.unwrap();
    let id = ItemId::from_db(item);
    n.stock.reserve(id, 1, q(1), WITHIN).await.unwrap();
    let first = n.stock.views();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].epoch, 1);
    // Another owner takes the item over (a newer epoch); our 3 unsold allotted units go back
    // to the row with the takeover.
    let taken = n
        .scratch
        .db
        .claim_allotment(item, "another-node")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.epoch, 2);
    // Our actor still believes it has 3 units: its batch is fenced, nothing is written, the
    // caller hears "unavailable, retry", and the actor stops.
    let fenced = n.stock.reserve(id, 2, q(1), WITHIN).await;
    assert!(
        matches!(fenced, Err(ReserveError::Unavailable(_))),
        "{fenced:?}"
    );
    assert_eq!(n.scratch.count("reservations").await.unwrap(), 1);
    // The retry starts a fresh actor, which claims the item under a newer epoch still.
    n.stock.reserve(id, 3, q(1), WITHIN).await.unwrap();
    let views = n.stock.views();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].epoch, 3);
    let (available, allotted, held, confirmed) = n.scratch.units(item).await.unwrap();
    assert_eq!(held, 2);
    assert_eq!(available + allotted + held + confirmed, 10);
}

#[tokio::test]
async fn concurrent_reservations_sell_exactly_the_stock() {
    let n = node(8).await;
    let item = n.scratch.item(100, 50).await.unwrap();
    let id = ItemId::from_db(item);
    let tasks: Vec<_> = (1..=200)
        .map(|order| {
            let stock = n.stock.clone();
            tokio::spawn(async move { stock.reserve(id, order, q(1), WITHIN).await })
        })
        .collect();
    let mut sold = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => sold += 1,
            Err(ReserveError::OutOfStock) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(sold, 50);
    assert_eq!(n.scratch.units(item).await.unwrap(), (0, 0, 50, 0));
}

#[tokio::test]
async fn units_that_come_back_wake_a_sold_out_actor() {
    let n = node(4).await;
    let item = n.scratch.item(100, 1).await.unwrap();
    let id = ItemId::from_db(item);
    n.stock.reserve(id, 1, q(1), WITHIN).await.unwrap();
    assert_eq!(
        n.stock.reserve(id, 2, q(1), WITHIN).await,
        Err(ReserveError::OutOfStock)
    );
    assert!(n.stock.known_sold_out(id));
    // A unit comes back to the row (as a cancellation would) and the actor is told.
    n.scratch
        .db
        .restock_item(id, RestockQuantity::parse(1).unwrap())
        .await
        .unwrap();
    n.stock.replenished(id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while n.stock.known_sold_out(id) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the actor never woke"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    n.stock.reserve(id, 3, q(1), WITHIN).await.unwrap();
}

#[tokio::test]
async fn units_that_come_back_unannounced_are_found_by_the_background_recheck() {
    let n = node(4).await;
    let item = n.scratch.item(100, 1).await.unwrap();
    let id = ItemId::from_db(item);
    n.stock.reserve(id, 1, q(1), WITHIN).await.unwrap();
    assert_eq!(
        n.stock.reserve(id, 2, q(1), WITHIN).await,
        Err(ReserveError::OutOfStock)
    );
    assert!(n.stock.known_sold_out(id));
    // Units come back without anyone telling the actor (as the sweeper's expiries do).
    n.scratch
        .db
        .restock_item(id, RestockQuantity::parse(2).unwrap())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while n.stock.known_sold_out(id) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the re-check never saw them"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    n.stock.reserve(id, 3, q(2), WITHIN).await.unwrap();
}
