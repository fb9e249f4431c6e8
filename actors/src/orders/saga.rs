//! The order saga: one short-lived actor per order.
//!
//! Steps: price ([`super::place`]) → hold every line at once through the
//! [`StockPath`](crate::stock::StockPath) (the stock actors decide in memory) → **one write**:
//! the order `SUCCEEDED` with its lines, its sold units (taken out of each owner's allotment,
//! fenced by its epoch), its outbox event, its idempotency record and its coupon use, in the
//! next group commit → answer. A refusal (sold out, unknown item, coupon, a reused key) writes
//! nothing and gives the holds back. A hold the database refused (its owner's epoch moved on)
//! stops that owner, and the saga holds and writes again within its deadline.

use std::future::Future;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use surge_domain::{ItemId, LineStatus, OrderStatus, Quantity};
use surge_persistence::PersistenceError;
use surge_persistence::coupons::CouponRefusal;
use surge_persistence::orders::{HoldSource, NewOrder, OrderLineRecord, OrderRecord, PlaceOutcome};
use surge_supervisors::{CallError, retry};
use tokio::sync::oneshot;

use super::place::{coupon_discount, price_lines};
use super::{CouponProblem, Inner, OrderRequest, SagaOutcome};
use crate::stock::ReserveError;
use crate::stock::path::Hold;

/// The saga actor. It takes no messages: it runs its steps in `post_start` and stops.
#[derive(Debug)]
pub(crate) struct OrderSaga;

/// A saga's order and where its outcome goes.
#[derive(Debug)]
pub(crate) struct SagaArgs {
    pub(crate) inner: Arc<Inner>,
    pub(crate) order_id: i64,
    pub(crate) request: OrderRequest,
    pub(crate) reply: Option<oneshot::Sender<SagaOutcome>>,
    /// The caller's place among the orders worked on at once: held until the saga ends, not
    /// just until its caller stops waiting, so the bound counts every running saga.
    pub(crate) _admission: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Actor for OrderSaga {
    type Msg = ();
    type State = SagaArgs;
    type Arguments = SagaArgs;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        args: SagaArgs,
    ) -> Result<SagaArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn post_start(
        &self,
        myself: ActorRef<()>,
        state: &mut SagaArgs,
    ) -> Result<(), ActorProcessingErr> {
        let order_id = state.order_id;
        state.inner.set_step(order_id, Some("validating"));
        let outcome = run_once_per_key(&state.inner, order_id, &state.request).await;
        state.inner.set_step(order_id, None);
        if let Some(reply) = state.reply.take() {
            let _ = reply.send(outcome);
        }
        myself.stop(None);
        Ok(())
    }
}

/// Whether a write's failure says the database is unhealthy (the breaker counts it). A full
/// queue or a refused constraint says nothing about the database's health.
fn is_database_failure(e: &PersistenceError) -> bool {
    !matches!(e, PersistenceError::Overloaded | PersistenceError::Conflict)
}

/// The order's write, through the database breaker: refused at once while it is open, and its
/// outcome recorded on it (the permit is held across the write).
async fn guarded<T>(
    inner: &Inner,
    write: impl Future<Output = Result<T, PersistenceError>>,
) -> Result<T, PersistenceError> {
    inner
        .breaker
        .call_classified(|| write, is_database_failure)
        .await
        .map_err(|e| match e {
            CallError::Open { .. } => PersistenceError::Overloaded,
            CallError::Inner(e) => e,
        })
}

/// Runs the saga; a request that repeats an Idempotency-Key in flight waits for the first and
/// replays its order.
async fn run_once_per_key(
    inner: &Arc<Inner>,
    order_id: i64,
    request: &OrderRequest,
) -> SagaOutcome {
    let Some((key, hash)) = &request.idempotency else {
        return run(inner, order_id, request).await;
    };
    let slot = inner.key_slot(request.user_id, key);
    let outcome = {
        // Bounded: a request that waits longer than a saga may run gives up (nothing written).
        let deadline = tokio::time::Instant::now() + inner.reserve_deadline;
        let Ok(mut placed) = tokio::time::timeout_at(deadline, slot.lock()).await else {
            inner.drop_key_slot(request.user_id, key, slot);
            return SagaOutcome::Failed(
                "an order with this Idempotency-Key is still running".into(),
            );
        };
        match &*placed {
            Some((first, first_hash)) if first_hash == hash => SagaOutcome::Replay(*first),
            Some(_) => SagaOutcome::KeyReused,
            None => {
                let outcome = run(inner, order_id, request).await;
                match &outcome {
                    SagaOutcome::Succeeded(order) => *placed = Some((order.id, hash.clone())),
                    SagaOutcome::Replay(first) => *placed = Some((*first, hash.clone())),
                    _ => {}
                }
                outcome
            }
        }
    };
    inner.drop_key_slot(request.user_id, key, slot);
    outcome
}

/// A refusal for a request with an Idempotency-Key that may already have placed an order (a
/// retry that comes after the stock ran out): the first order is replayed instead.
pub(crate) async fn replay_or(
    inner: &Inner,
    request: &OrderRequest,
    refusal: SagaOutcome,
) -> SagaOutcome {
    let Some((key, hash)) = &request.idempotency else {
        return refusal;
    };
    match inner.db.idempotency_record(request.user_id, key).await {
        Ok(Some((first, first_hash))) if first_hash == *hash => SagaOutcome::Replay(first),
        Ok(Some(_)) => SagaOutcome::KeyReused,
        Ok(None) => refusal,
        Err(e) => SagaOutcome::Failed(e.to_string()),
    }
}

/// `OutOfStock` when a line's item is known sold out right now (from the stock actors'
/// memory, without asking them), with the status of every line.
pub(crate) fn known_sold_out(inner: &Inner, request: &OrderRequest) -> Option<SagaOutcome> {
    let sold_out: Vec<bool> = request
        .lines
        .iter()
        .map(|&(item, _)| inner.stock.known_sold_out(item))
        .collect();
    sold_out.contains(&true).then(|| {
        SagaOutcome::OutOfStock(
            sold_out
                .iter()
                .map(|&gone| {
                    if gone {
                        LineStatus::OutOfStock
                    } else {
                        LineStatus::Released
                    }
                })
                .collect(),
        )
    })
}

/// Runs the saga to its outcome.
pub(crate) async fn run(inner: &Arc<Inner>, order_id: i64, request: &OrderRequest) -> SagaOutcome {
    // 1. Validate and price. An unknown item refuses the order: nothing is written.
    let priced = match price_lines(inner, &request.lines).await {
        Ok(p) => p,
        Err(e) => return SagaOutcome::Failed(e.to_string()),
    };
    if priced.missing.contains(&true) {
        let refusal = SagaOutcome::ItemNotFound(
            priced
                .missing
                .iter()
                .map(|&m| {
                    if m {
                        LineStatus::ItemNotFound
                    } else {
                        LineStatus::Released
                    }
                })
                .collect(),
        );
        return replay_or(inner, request, refusal).await;
    }
    let discount = match request.coupon_id {
        None => 0,
        Some(coupon_id) => {
            match coupon_discount(
                inner,
                coupon_id,
                request.user_id,
                &priced.lines,
                priced.total,
            )
            .await
            {
                Ok(d) => d,
                Err(Ok(problem)) => return SagaOutcome::CouponRefused(problem),
                Err(Err(reason)) => return SagaOutcome::Failed(reason),
            }
        }
    };
    // A line over its item's purchase limit by itself: refused before holding anything (the
    // member's earlier orders are counted by the order's write).
    if let Some(line) = priced
        .lines
        .iter()
        .find(|l| l.max_per_member.is_some_and(|max| l.quantity > max))
    {
        let refusal = SagaOutcome::PurchaseLimit {
            item_id: line.item_id,
            limit: line.max_per_member.unwrap_or_default(),
        };
        return replay_or(inner, request, refusal).await;
    }
    // 2. A line whose item is known sold out: refused from memory, nothing written (usually
    //    before the saga even starts: `OrderSagas::start_order`).
    if let Some(refusal) = known_sold_out(inner, request) {
        return replay_or(inner, request, refusal).await;
    }
    // 3. Hold every line, then write the order once. A hold the database refused (another
    //    owner took its item over) is held again from the new owner, within the deadline.
    let deadline = tokio::time::Instant::now() + inner.reserve_deadline;
    loop {
        inner.set_step(order_id, Some("holding"));
        let holds = match hold_all(inner, order_id, &request.lines, deadline).await {
            Ok(holds) => holds,
            Err(refused @ (SagaOutcome::OutOfStock(_) | SagaOutcome::ItemNotFound(_))) => {
                return replay_or(inner, request, refused).await;
            }
            Err(refused) => return refused,
        };
        inner.set_step(order_id, Some("writing"));
        let order = NewOrder {
            id: order_id,
            user_id: request.user_id,
            lines: priced.lines.clone(),
            holds: holds.iter().map(Hold::record).collect(),
            coupon_id: request.coupon_id,
            total_price: priced.total - discount,
            discount,
            idempotency: request.idempotency.clone(),
        };
        let written = guarded(inner, inner.ledger.place(order.clone())).await;
        let refused = match written {
            Ok(PlaceOutcome::Placed { at }) => {
                inner.publish(order_id, OrderStatus::Succeeded);
                return SagaOutcome::Succeeded(as_written(order, at));
            }
            // The commit may have landed: the holds are not given back until the database
            // says whether the order exists.
            Err(PersistenceError::Unknown(cause)) => {
                tokio::spawn(settle_unknown(inner.clone(), order_id, holds));
                return SagaOutcome::Undetermined(order_id, cause);
            }
            Ok(PlaceOutcome::HoldLost { item_id }) => {
                let (lost, kept): (Vec<Hold>, Vec<Hold>) =
                    holds.into_iter().partition(|h| h.item.get() == item_id);
                // An owner that lost its epoch can be held from again (a new owner takes
                // over); an expired reservation (comparison strategies) cannot.
                let again = lost
                    .iter()
                    .all(|h| matches!(h.source, HoldSource::Allotment { .. }));
                for hold in lost {
                    inner.stock.lost(hold);
                }
                release_all(inner, order_id, kept).await;
                if again && tokio::time::Instant::now() < deadline {
                    continue;
                }
                return SagaOutcome::Failed("an item changed owner; try again".into());
            }
            Ok(PlaceOutcome::Duplicate {
                order_id: existing,
                request_hash,
            }) => {
                let same = request
                    .idempotency
                    .as_ref()
                    .is_some_and(|(_, hash)| *hash == request_hash);
                if same {
                    SagaOutcome::Replay(existing)
                } else {
                    SagaOutcome::KeyReused
                }
            }
            Ok(PlaceOutcome::PurchaseLimit { item_id, limit }) => {
                SagaOutcome::PurchaseLimit { item_id, limit }
            }
            Ok(PlaceOutcome::CouponRefused(refusal)) => SagaOutcome::CouponRefused(match refusal {
                CouponRefusal::NotIssued => CouponProblem::NotIssued,
                CouponRefusal::AlreadyUsed => CouponProblem::AlreadyUsed,
            }),
            Err(e) => SagaOutcome::Failed(e.to_string()),
        };
        // Nothing was written: the units are the owners' to sell again.
        release_all(inner, order_id, holds).await;
        return refused;
    }
}

/// Holds every line concurrently, each retried within the deadline while its stock path says
/// "unavailable, retry". On any refusal the holds that were given go back and the refusal is
/// returned (nothing was written).
async fn hold_all(
    inner: &Arc<Inner>,
    order_id: i64,
    lines: &[(ItemId, Quantity)],
    deadline: tokio::time::Instant,
) -> Result<Vec<Hold>, SagaOutcome> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, &(item, quantity)) in lines.iter().enumerate() {
        let inner = inner.clone();
        tasks.spawn(async move {
            let result = retry(
                &inner.retry,
                deadline,
                |e: &ReserveError| matches!(e, ReserveError::Unavailable(_)),
                |_| {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    inner.stock.hold(item, order_id, quantity, left)
                },
            )
            .await;
            (index, result)
        });
    }
    let mut results: Vec<Option<Result<Hold, ReserveError>>> = vec![None; lines.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, result)) = joined
            && let Some(slot) = results.get_mut(index)
        {
            *slot = Some(result);
        }
    }
    if results.iter().all(|r| matches!(r, Some(Ok(_)))) {
        return Ok(results.into_iter().flatten().flatten().collect());
    }
    let statuses: Vec<LineStatus> = results
        .iter()
        .map(|r| match r {
            Some(Err(ReserveError::OutOfStock)) => LineStatus::OutOfStock,
            Some(Err(ReserveError::ItemNotFound)) => LineStatus::ItemNotFound,
            _ => LineStatus::Released,
        })
        .collect();
    let unavailable = results.iter().find_map(|r| match r {
        Some(Err(
            e @ (ReserveError::Unavailable(_)
            | ReserveError::Undetermined(_)
            | ReserveError::Overloaded),
        )) => Some(e.to_string()),
        None => Some("a hold task failed".to_owned()),
        _ => None,
    });
    // Every hold that was given goes back; one whose answer came too late is given back by
    // the stock path when it arrives.
    let given: Vec<Hold> = results.into_iter().flatten().flatten().collect();
    release_all(inner, order_id, given).await;
    Err(match unavailable {
        Some(reason) => SagaOutcome::Failed(reason),
        None if statuses.contains(&LineStatus::ItemNotFound) => SagaOutcome::ItemNotFound(statuses),
        None => SagaOutcome::OutOfStock(statuses),
    })
}

/// Waits until the database can say whether an order whose write was in doubt exists; if it
/// does not, its holds go back. Until then they stay out of sale (undersell, never oversell).
async fn settle_unknown(inner: Arc<Inner>, order_id: i64, holds: Vec<Hold>) {
    /// How often the database is asked again.
    const RETRY: std::time::Duration = std::time::Duration::from_millis(500);
    /// How long to keep asking; after that the holds stay out until the owner's allotment is
    /// given back or reclaimed.
    const GIVE_UP: std::time::Duration = std::time::Duration::from_secs(600);
    let give_up = tokio::time::Instant::now() + GIVE_UP;
    while tokio::time::Instant::now() < give_up {
        tokio::time::sleep(RETRY).await;
        match inner.db.order_by_id(order_id).await {
            Ok(Some(_)) => return,
            Ok(None) => {
                release_all(&inner, order_id, holds).await;
                return;
            }
            Err(e) => tracing::debug!(order_id, error = %e, "order still in doubt"),
        }
    }
    tracing::warn!(
        order_id,
        "gave up settling an order in doubt; its units return with the allotment"
    );
}

/// Gives back holds that no order took.
async fn release_all(inner: &Inner, order_id: i64, holds: Vec<Hold>) {
    for hold in holds {
        inner.stock.release(order_id, hold).await;
    }
}

/// The order as its one write stored it.
fn as_written(order: NewOrder, at: i64) -> OrderRecord {
    OrderRecord {
        id: order.id,
        user_id: order.user_id,
        status: OrderStatus::Succeeded,
        coupon_id: order.coupon_id,
        total_price: order.total_price,
        discount: order.discount,
        failure_reason: None,
        created_at: at,
        updated_at: at,
        lines: order
            .lines
            .into_iter()
            .map(|l| OrderLineRecord {
                item_id: l.item_id,
                quantity: l.quantity,
                unit_price: l.unit_price,
                status: LineStatus::Reserved,
            })
            .collect(),
    }
}
