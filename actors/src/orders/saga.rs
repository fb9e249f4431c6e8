//! The order saga: one short-lived actor per order.
//!
//! Steps: price ([`super::place`]) → record the order and claim its idempotency key and coupon
//! (one write) → reserve every line at once through the [`StockPath`](crate::stock::StockPath)
//! (each answer arrives after its reservation is durable) → confirm: SUCCEEDED, reservations
//! CONFIRMED and the outbox event in one write. Any failure after the first write compensates
//! in one write: the order FAILED, its HELD units released, its coupon given back.

use std::future::Future;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use surge_domain::{ItemId, LineStatus, OrderStatus, Quantity};
use surge_persistence::PersistenceError;
use surge_persistence::coupons::CouponRefusal;
use surge_persistence::orders::{BeginOutcome, NewOrder, OrderResolution, Refusal, ResolveOutcome};
use surge_supervisors::{CallError, retry};
use tokio::sync::oneshot;

use super::place::{coupon_discount, price_lines};
use super::{CouponProblem, Inner, OrderRequest, SagaOutcome};
use crate::stock::ReserveError;

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
        let outcome = run(&state.inner, order_id, &state.request).await;
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

/// A forward write (recording or confirming), through the database breaker: refused at once
/// while it is open, and its outcome recorded on it.
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

/// Runs the saga to its outcome.
pub(crate) async fn run(inner: &Arc<Inner>, order_id: i64, request: &OrderRequest) -> SagaOutcome {
    // 1. Validate and price.
    let priced = match price_lines(inner, &request.lines).await {
        Ok(p) => p,
        Err(e) => return SagaOutcome::Failed(order_id, e.to_string()),
    };
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
                Err(Err(reason)) => return SagaOutcome::Failed(order_id, reason),
            }
        }
    };
    // A line whose item is known sold out right now: the order is written FAILED at once, in
    // one write, with nothing reserved. Under a flash sale this is the losers' path.
    let sold_out: Vec<bool> = request
        .lines
        .iter()
        .map(|&(item, _)| inner.stock.known_sold_out(item))
        .collect();
    let refused = sold_out.contains(&true).then(|| Refusal {
        line_statuses: sold_out
            .iter()
            .map(|&gone| {
                if gone {
                    LineStatus::OutOfStock
                } else {
                    LineStatus::Released
                }
            })
            .collect(),
        reason: "not enough stock".into(),
    });
    let born_failed = refused.is_some();
    let order = NewOrder {
        id: order_id,
        user_id: request.user_id,
        lines: priced.lines,
        coupon_id: request.coupon_id,
        total_price: priced.total - discount,
        discount,
        idempotency: request.idempotency.clone(),
        refused,
    };
    // 2. Record the order (and claim the idempotency key and the coupon) before touching stock.
    match guarded(inner, inner.ledger.begin(order)).await {
        Ok(BeginOutcome::Created) => {}
        Ok(BeginOutcome::Duplicate {
            order_id: existing,
            request_hash,
        }) => {
            let same = request
                .idempotency
                .as_ref()
                .is_some_and(|(_, hash)| *hash == request_hash);
            return if same {
                SagaOutcome::Replay(existing)
            } else {
                SagaOutcome::KeyReused
            };
        }
        Ok(BeginOutcome::CouponRefused(refusal)) => {
            return SagaOutcome::CouponRefused(match refusal {
                CouponRefusal::NotIssued => CouponProblem::NotIssued,
                CouponRefusal::AlreadyUsed => CouponProblem::AlreadyUsed,
            });
        }
        Err(e) => return SagaOutcome::Failed(order_id, e.to_string()),
    }
    if born_failed {
        inner.publish(order_id, OrderStatus::Failed);
        return SagaOutcome::OutOfStock(order_id);
    }
    inner.publish(order_id, OrderStatus::Processing);
    if priced.missing.contains(&true) {
        let statuses = priced
            .missing
            .iter()
            .map(|&m| {
                if m {
                    LineStatus::ItemNotFound
                } else {
                    LineStatus::Released
                }
            })
            .collect();
        return compensate(
            inner,
            order_id,
            &[],
            statuses,
            "an item does not exist",
            SagaOutcome::ItemNotFound(order_id),
        )
        .await;
    }
    // 3. Reserve every line at once; each answer arrives after its reservation is durable.
    inner.set_step(order_id, Some("reserving"));
    let results = reserve_all(inner, order_id, &request.lines).await;
    if !results.iter().all(|r| matches!(r, Some(Ok(())))) {
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
            None => Some("a reservation task failed".to_owned()),
            _ => None,
        });
        let (reason, outcome) = match unavailable {
            Some(reason) => (reason.clone(), SagaOutcome::Failed(order_id, reason)),
            None if statuses.contains(&LineStatus::ItemNotFound) => (
                "an item does not exist".to_owned(),
                SagaOutcome::ItemNotFound(order_id),
            ),
            None => (
                "not enough stock".to_owned(),
                SagaOutcome::OutOfStock(order_id),
            ),
        };
        // Only items whose line may hold units get them back; a line refused by its item held
        // nothing, and waking its actor would clear what it knows (the item is sold out).
        let held: Vec<ItemId> = request
            .lines
            .iter()
            .zip(&results)
            .filter(|(_, r)| {
                !matches!(
                    r,
                    Some(Err(ReserveError::OutOfStock | ReserveError::ItemNotFound))
                )
            })
            .map(|(&(item, _), _)| item)
            .collect();
        return compensate(inner, order_id, &held, statuses, &reason, outcome).await;
    }
    // 4. Confirm: SUCCEEDED, reservations CONFIRMED and the outbox event in one transaction.
    //    The coupon was taken atomically with the first write; every failure path gives it
    //    back in the transaction that fails or cancels the order.
    confirm(inner, order_id).await
}

/// Reserves every line concurrently, each retried within the saga's reserve deadline while
/// its stock path says "unavailable, retry". `None`: the line's task itself failed.
async fn reserve_all(
    inner: &Arc<Inner>,
    order_id: i64,
    lines: &[(ItemId, Quantity)],
) -> Vec<Option<Result<(), ReserveError>>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, &(item, quantity)) in lines.iter().enumerate() {
        let inner = inner.clone();
        tasks.spawn(async move {
            let deadline = tokio::time::Instant::now() + inner.reserve_deadline;
            let result = retry(
                &inner.retry,
                deadline,
                |e: &ReserveError| matches!(e, ReserveError::Unavailable(_)),
                |_| {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    inner.stock.reserve(item, order_id, quantity, left)
                },
            )
            .await;
            (index, result)
        });
    }
    let mut results: Vec<Option<Result<(), ReserveError>>> = vec![None; lines.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, result)) = joined
            && let Some(slot) = results.get_mut(index)
        {
            *slot = Some(result);
        }
    }
    results
}

/// The confirmation. It is idempotent (it only moves a PROCESSING order and HELD
/// reservations), so a write whose commit is in doubt is simply made again; a repeat of one
/// that did commit answers AlreadyFinal and the order is read back.
async fn confirm(inner: &Arc<Inner>, order_id: i64) -> SagaOutcome {
    inner.set_step(order_id, Some("confirming"));
    let deadline = tokio::time::Instant::now() + inner.reserve_deadline;
    let resolved = retry(
        &inner.retry,
        deadline,
        |e: &PersistenceError| !matches!(e, PersistenceError::Closed),
        |_| {
            guarded(
                inner,
                inner.ledger.resolve(OrderResolution {
                    order_id,
                    line_statuses: Vec::new(),
                    failure: None,
                }),
            )
        },
    )
    .await;
    match resolved {
        Ok(ResolveOutcome::Succeeded) => {
            inner.publish(order_id, OrderStatus::Succeeded);
            SagaOutcome::Succeeded(order_id)
        }
        Ok(ResolveOutcome::Failed) => {
            inner.publish(order_id, OrderStatus::Failed);
            SagaOutcome::Failed(order_id, "a reservation expired".into())
        }
        Ok(ResolveOutcome::AlreadyFinal) => SagaOutcome::Replay(order_id),
        // Still unknown whether it committed. If it did not, the sweeper fails the order (and
        // releases its units) once it is stale; the client is told to look again.
        Err(e) => SagaOutcome::Undetermined(order_id, e.to_string()),
    }
}

/// Fails the order, releasing what it holds and giving its coupon back, in one write. Not
/// gated by the breaker: undoing must go through whenever the database takes it. `held`: the
/// items whose units may come back (their actors are told).
async fn compensate(
    inner: &Arc<Inner>,
    order_id: i64,
    held: &[ItemId],
    statuses: Vec<LineStatus>,
    reason: &str,
    outcome: SagaOutcome,
) -> SagaOutcome {
    inner.set_step(order_id, Some("compensating"));
    let resolved = inner
        .ledger
        .resolve(OrderResolution {
            order_id,
            line_statuses: statuses,
            failure: Some(reason.to_owned()),
        })
        .await;
    match resolved {
        Ok(_) => {
            inner.publish(order_id, OrderStatus::Failed);
            for item in held {
                inner.stock.replenished(*item);
            }
            outcome
        }
        Err(e) => SagaOutcome::Failed(order_id, e.to_string()),
    }
}
