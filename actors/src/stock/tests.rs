//! The stock actor against a real SQLite database.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use surge_domain::{ItemId, Quantity, RestockQuantity};
use surge_persistence::orders::HoldSource;
use surge_persistence::testing::ScratchDb;

use super::{ReserveError, StockActors, StockConfig, StockPath};

struct Node {
    scratch: ScratchDb,
    stock: StockActors,
}

async fn node(chunk: i64) -> Node {
    let scratch = ScratchDb::sqlite().await.unwrap();
    let stock = StockActors::start(
        scratch.db.clone(),
        StockConfig {
            allotment_chunk: chunk,
            ..StockConfig::default()
        },
    )
    .await
    .unwrap();
    Node { scratch, stock }
}

fn q(n: i64) -> Quantity {
    Quantity::parse(n).unwrap()
}

const WITHIN: Duration = Duration::from_secs(5);

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn holds_come_from_the_checked_out_allotment_and_never_past_the_stock() {
    let n = node(4).await;
    let item = n.scratch.item(100, 10).await.unwrap();
    let id = ItemId::from_db(item);
    // 3 units: a check-out of 4 (the chunk) into the allotment row; 3 held in memory.
    let first = n.stock.hold(id, 1, q(3), WITHIN).await.unwrap();
    assert_eq!(first.source, HoldSource::Allotment { epoch: 1 });
    assert_eq!(n.scratch.units(item).await.unwrap(), (6, 4, 0, 0));
    // 5 more: the allotment's 1 is not enough; more units are checked out.
    n.stock.hold(id, 2, q(5), WITHIN).await.unwrap();
    let (available, allotted, _, _) = n.scratch.units(item).await.unwrap();
    assert_eq!(available + allotted, 10);
    assert!(allotted >= 8);
    // 3 more than what is left: refused.
    assert_eq!(
        n.stock.hold(id, 3, q(3), WITHIN).await,
        Err(ReserveError::OutOfStock)
    );
    n.stock.hold(id, 4, q(2), WITHIN).await.unwrap();
    assert_eq!(n.scratch.units(item).await.unwrap(), (0, 10, 0, 0));
    // Sold out: known from memory, refused without a database trip, and nothing is written.
    assert_eq!(
        n.stock.hold(id, 5, q(1), WITHIN).await,
        Err(ReserveError::OutOfStock)
    );
    assert!(n.stock.known_sold_out(id));
    // A hold its order did not take comes back and can be sold again.
    n.stock.release(2, first).await;
    until("the released units are for sale", || {
        !n.stock.known_sold_out(id)
    })
    .await;
    n.stock.hold(id, 6, q(3), WITHIN).await.unwrap();
}

#[tokio::test]
async fn an_unknown_item_is_not_found_and_leaves_no_actor() {
    let n = node(4).await;
    let id = ItemId::from_db(999);
    assert_eq!(n.stock.terms_of(id).await, Ok(None));
    assert_eq!(
        n.stock.hold(id, 1, q(1), WITHIN).await,
        Err(ReserveError::ItemNotFound)
    );
    assert!(n.stock.views().is_empty());
}

#[tokio::test]
async fn an_actor_whose_hold_was_refused_for_its_epoch_stops_and_a_new_owner_takes_over() {
    let n = node(4).await;
    let item = n.scratch.item(100, 10).await.unwrap();
    let id = ItemId::from_db(item);
    n.stock.hold(id, 1, q(1), WITHIN).await.unwrap();
    assert_eq!(n.stock.views()[0].epoch, 1);
    // Another owner takes the item over (a newer epoch); the 4 units our actor had checked
    // out go back to the row with the takeover.
    let taken = n
        .scratch
        .db
        .claim_allotment(item, "another-node")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.epoch, 2);
    // Our actor still believes it has 3 units and gives a hold under epoch 1; the order's
    // write would be refused for that epoch (tested in the committer), and the actor is told.
    let stale = n.stock.hold(id, 2, q(1), WITHIN).await.unwrap();
    assert_eq!(stale.source, HoldSource::Allotment { epoch: 1 });
    n.stock.lost(stale);
    until("the fenced actor leaves", || n.stock.views().is_empty()).await;
    // The next hold starts a fresh actor, which claims the item under a newer epoch still.
    let fresh = n.stock.hold(id, 3, q(1), WITHIN).await.unwrap();
    assert_eq!(fresh.source, HoldSource::Allotment { epoch: 3 });
    let (available, allotted, held, confirmed) = n.scratch.units(item).await.unwrap();
    assert_eq!(available + allotted + held + confirmed, 10);
}

#[tokio::test]
async fn concurrent_holds_give_exactly_the_stock() {
    let n = node(8).await;
    let item = n.scratch.item(100, 50).await.unwrap();
    let id = ItemId::from_db(item);
    let tasks: Vec<_> = (1..=200)
        .map(|order| {
            let stock = n.stock.clone();
            tokio::spawn(async move { stock.hold(id, order, q(1), WITHIN).await })
        })
        .collect();
    let mut held = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => held += 1,
            Err(ReserveError::OutOfStock) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(held, 50);
    assert_eq!(n.scratch.units(item).await.unwrap(), (0, 50, 0, 0));
}

/// A node whose one item (1 unit) is sold out and known to be.
async fn sold_out_item() -> (Node, ItemId) {
    let n = node(4).await;
    let id = ItemId::from_db(n.scratch.item(100, 1).await.unwrap());
    n.stock.hold(id, 1, q(1), WITHIN).await.unwrap();
    assert_eq!(
        n.stock.hold(id, 2, q(1), WITHIN).await,
        Err(ReserveError::OutOfStock)
    );
    assert!(n.stock.known_sold_out(id));
    (n, id)
}

#[tokio::test]
async fn units_that_come_back_wake_a_sold_out_actor() {
    let (n, id) = sold_out_item().await;
    // A unit comes back to the row (as a cancellation would) and the actor is told.
    n.scratch
        .db
        .restock_item(id, RestockQuantity::parse(1).unwrap())
        .await
        .unwrap();
    n.stock.replenished(id);
    until("the actor wakes", || !n.stock.known_sold_out(id)).await;
    n.stock.hold(id, 3, q(1), WITHIN).await.unwrap();
}

#[tokio::test]
async fn units_that_come_back_unannounced_are_found_by_the_background_recheck() {
    let (n, id) = sold_out_item().await;
    // Units come back without anyone telling the actor (as the sweeper's expiries do).
    n.scratch
        .db
        .restock_item(id, RestockQuantity::parse(2).unwrap())
        .await
        .unwrap();
    until("the re-check sees them", || !n.stock.known_sold_out(id)).await;
    n.stock.hold(id, 3, q(2), WITHIN).await.unwrap();
}
