//! Order sagas: one actor per order that reserves every line (all or nothing), records the
//! outcome with an outbox event in one group-committed transaction, and compensates on any
//! failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use surge_domain::DiscountRate;
use surge_persistence::committer::GroupCommitter;
use surge_persistence::coupons::CouponRefusal;
use surge_persistence::orders::{
    BeginOutcome, NewOrder, NewOrderLine, OrderResolution, Refusal, ResolveOutcome, line_status,
};
use surge_persistence::{Database, PersistenceError};
use surge_supervisors::{CircuitBreaker, RetryPolicy, retry};
use tokio::sync::{broadcast, oneshot};

use crate::baseline::BaselineStock;
use crate::coupon::{CouponActors, CouponError};
use crate::stock::{ReserveError, StockActors};
use crate::supervision::{Failures, actor_name, start_supervisor};

/// A validated order request.
#[derive(Debug, Clone)]
pub struct OrderRequest {
    /// Buyer.
    pub user_id: i64,
    /// (item id, quantity), distinct items.
    pub lines: Vec<(i64, i64)>,
    /// Coupon named by the request.
    pub coupon_id: Option<i64>,
    /// Idempotency key and request hash.
    pub idempotency: Option<(String, String)>,
}

/// How a saga ended, for the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaOutcome {
    /// SUCCEEDED.
    Succeeded(i64),
    /// FAILED because a line lacked stock.
    OutOfStock(i64),
    /// FAILED because a line named an unknown item.
    ItemNotFound(i64),
    /// The key was used before with this same request: replay that order.
    Replay(i64),
    /// The key was used before with another request.
    KeyReused,
    /// FAILED (compensated) because a dependency failed.
    Failed(i64, String),
    /// The coupon could not be used; nothing was written.
    CouponRefused(CouponProblem),
    /// Every line was reserved but the final write's outcome is unknown: the order is
    /// SUCCEEDED, or still PROCESSING and failed later by the sweeper.
    Undetermined(i64, String),
}

/// Why an order's coupon could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponProblem {
    /// No such coupon.
    NotFound,
    /// The member was never issued it.
    NotIssued,
    /// The member's coupon is used by another order.
    AlreadyUsed,
    /// It is bound to an item the order does not contain.
    NotApplicable,
}

/// Why a saga could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SagaError {
    /// Too much work waiting, or the database breaker is open.
    #[error("overloaded")]
    Overloaded {
        /// Seconds to wait.
        retry_after_secs: u32,
    },
    /// Could not write the order at all.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// A status change, for SSE streams and waiting duplicates.
#[derive(Debug, Clone)]
pub struct OrderEvent {
    /// Order.
    pub order_id: i64,
    /// New status.
    pub status: &'static str,
}

/// Size of the id blocks a node takes at a time: one database round trip per this many orders.
const ORDER_ID_BLOCK: i64 = 1_000;
/// Events kept for slow SSE subscribers before they must re-read the order.
const EVENT_BUFFER: usize = 4_096;

#[derive(Debug)]
struct IdBlock {
    next: i64,
    end: i64,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    committer: GroupCommitter,
    stock: StockActors,
    /// Set when a comparison strategy replaces the stock actors (`SURGE_STOCK_STRATEGY`).
    baseline: Option<BaselineStock>,
    coupons: CouponActors,
    breaker: Arc<CircuitBreaker>,
    retry: RetryPolicy,
    /// How long a saga may spend reserving (waiting and retrying). It may outlive the client's
    /// answer deadline (the client then has its 202), but must end well before its
    /// reservations expire, or it would confirm units the sweeper already gave back.
    reserve_deadline: Duration,
    events: broadcast::Sender<OrderEvent>,
    ids: tokio::sync::Mutex<IdBlock>,
    running: Mutex<HashMap<i64, SagaView>>,
    failures: Failures,
}

/// A running saga as the admin endpoint shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaView {
    /// Always "order-saga".
    pub kind: &'static str,
    /// Order id.
    pub key: i64,
    /// Current step.
    pub step: &'static str,
    /// Saga failures seen by the supervisor since start (node-wide).
    pub restarts: u64,
    /// The last of them.
    pub last_error: Option<String>,
    /// Always 0: a saga takes no messages after it starts.
    pub mailbox_len: usize,
}

/// Starts and tracks order sagas.
#[derive(Debug, Clone)]
pub struct OrderSagas {
    inner: Arc<Inner>,
    supervisor: ActorRef<()>,
}

impl OrderSagas {
    /// Starts the saga supervisor.
    pub async fn start(
        db: Database,
        committer: GroupCommitter,
        stock: StockActors,
        baseline: Option<BaselineStock>,
        coupons: CouponActors,
        breaker: Arc<CircuitBreaker>,
        reserve_deadline: Duration,
    ) -> Result<Self, ractor::SpawnErr> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let inner = Arc::new(Inner {
            db,
            committer,
            stock,
            baseline,
            coupons,
            breaker,
            // A contended SQLite write can fail fast with SQLITE_BUSY; retries are cheap and
            // bounded by the answer deadline, so allow several.
            retry: RetryPolicy {
                max_attempts: 10,
                ..RetryPolicy::default()
            },
            reserve_deadline,
            events,
            ids: tokio::sync::Mutex::new(IdBlock { next: 0, end: 0 }),
            running: Mutex::new(HashMap::new()),
            failures: Failures::default(),
        });
        // A failed saga is compensated at once: its order is failed, its HELD reservations
        // released and its coupon given back, in one transaction (the same write a saga's own
        // failure path makes; it changes nothing if the order already reached a final status).
        // Should that write fail too, the reservations still expire and the order is
        // compensated at the next start (`recover`).
        let committer_for_failures = inner.committer.clone();
        let supervisor = start_supervisor(
            "saga",
            inner.failures.clone(),
            Box::new(move |order_id, _| {
                let committer = committer_for_failures.clone();
                tokio::spawn(async move {
                    let compensated = committer
                        .resolve(OrderResolution {
                            order_id,
                            line_statuses: Vec::new(),
                            failure: Some("the order saga failed".into()),
                        })
                        .await;
                    if let Err(e) = compensated {
                        tracing::warn!(order_id, error = %e, "compensating a failed saga failed; the next start will");
                    }
                });
            }),
        )
        .await?;
        Ok(Self { inner, supervisor })
    }

    /// Order status changes as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<OrderEvent> {
        self.inner.events.subscribe()
    }

    /// Announces a status change made outside a saga (cancellation).
    pub fn publish(&self, order_id: i64, status: &'static str) {
        let _ = self.inner.events.send(OrderEvent { order_id, status });
    }

    /// Running sagas, for the admin endpoint.
    pub fn views(&self) -> Vec<SagaView> {
        let failures = self.inner.failures.total();
        let mut views: Vec<SagaView> = self
            .inner
            .running
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        for v in &mut views {
            v.restarts = failures.restarts;
            v.last_error.clone_from(&failures.last_error);
        }
        views.sort_by_key(|v| v.key);
        views
    }

    /// Starts a saga; the receiver yields its outcome. The saga goes on if the caller stops
    /// waiting: its state is durable from its first write.
    pub async fn start_order(
        &self,
        request: OrderRequest,
    ) -> Result<(i64, oneshot::Receiver<SagaOutcome>), SagaError> {
        let order_id = self.next_order_id().await?;
        let (reply, rx) = oneshot::channel();
        Actor::spawn_linked(
            Some(actor_name("saga", order_id)),
            OrderSaga,
            SagaArgs {
                inner: self.inner.clone(),
                order_id,
                request,
                reply: Some(reply),
            },
            self.supervisor.get_cell(),
        )
        .await
        .map_err(|e| SagaError::Unavailable(e.to_string()))?;
        Ok((order_id, rx))
    }

    async fn next_order_id(&self) -> Result<i64, SagaError> {
        let mut block = self.inner.ids.lock().await;
        if block.next >= block.end {
            let first = self
                .inner
                .db
                .allocate_order_ids(ORDER_ID_BLOCK)
                .await
                .map_err(|e| SagaError::Unavailable(e.to_string()))?;
            block.next = first;
            block.end = first + ORDER_ID_BLOCK;
        }
        let id = block.next;
        block.next += 1;
        Ok(id)
    }

    /// Compensates orders a previous process left PROCESSING: their reservations are released
    /// and they are recorded FAILED. Returns how many.
    pub async fn recover(&self) -> Result<usize, PersistenceError> {
        let stuck = self.inner.db.processing_orders().await?;
        for order_id in &stuck {
            self.inner
                .committer
                .resolve(OrderResolution {
                    order_id: *order_id,
                    line_statuses: Vec::new(),
                    failure: Some("the node stopped before the order completed".into()),
                })
                .await?;
        }
        Ok(stuck.len())
    }

    /// Stops the supervisor (after the HTTP layer has drained).
    pub fn stop(&self) {
        self.supervisor.stop(None);
    }
}

#[derive(Debug)]
struct OrderSaga;

#[derive(Debug)]
struct SagaArgs {
    inner: Arc<Inner>,
    order_id: i64,
    request: OrderRequest,
    reply: Option<oneshot::Sender<SagaOutcome>>,
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
        set_step(&state.inner, order_id, Some("validating"));
        let outcome = run(&state.inner, order_id, &state.request).await;
        set_step(&state.inner, order_id, None);
        if let Some(reply) = state.reply.take() {
            let _ = reply.send(outcome);
        }
        myself.stop(None);
        Ok(())
    }
}

fn set_step(inner: &Inner, order_id: i64, step: Option<&'static str>) {
    if let Ok(mut running) = inner.running.lock() {
        match step {
            Some(step) => {
                running.insert(
                    order_id,
                    SagaView {
                        kind: "order-saga",
                        key: order_id,
                        step,
                        restarts: 0,
                        last_error: None,
                        mailbox_len: 0,
                    },
                );
            }
            None => {
                running.remove(&order_id);
            }
        }
    }
}

fn is_database_error(e: &PersistenceError) -> bool {
    !matches!(e, PersistenceError::Overloaded | PersistenceError::Conflict)
}

/// Records a database outcome on the breaker.
fn observe<T>(inner: &Inner, result: &Result<T, PersistenceError>) {
    if let Ok(permit) = inner.breaker.try_acquire() {
        match result {
            Err(e) if is_database_error(e) => permit.failure(),
            _ => permit.success(),
        }
    }
}

async fn run(inner: &Arc<Inner>, order_id: i64, request: &OrderRequest) -> SagaOutcome {
    // 1. Validate and price.
    let mut lines = Vec::with_capacity(request.lines.len());
    let mut missing = Vec::with_capacity(request.lines.len());
    for &(item_id, quantity) in &request.lines {
        let priced = match &inner.baseline {
            Some(baseline) => baseline.price_of(item_id).await,
            None => inner.stock.price_of(item_id).await,
        };
        let price = match priced {
            Ok(p) => p,
            Err(e) => return SagaOutcome::Failed(order_id, e.to_string()),
        };
        missing.push(price.is_none());
        lines.push(NewOrderLine {
            item_id,
            quantity,
            unit_price: price.unwrap_or(0),
        });
    }
    let total = lines
        .iter()
        .map(|l| l.unit_price.saturating_mul(l.quantity))
        .fold(0_i64, i64::saturating_add);
    let discount = match request.coupon_id {
        None => 0,
        Some(coupon_id) => {
            match coupon_discount(inner, coupon_id, request.user_id, &lines, total).await {
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
        .map(|&(item_id, _)| inner.baseline.is_none() && inner.stock.known_sold_out(item_id))
        .collect();
    let refused = sold_out.contains(&true).then(|| Refusal {
        line_statuses: sold_out
            .iter()
            .map(|&gone| {
                if gone {
                    line_status::OUT_OF_STOCK
                } else {
                    line_status::RELEASED
                }
            })
            .collect(),
        reason: "not enough stock".into(),
    });
    let born_failed = refused.is_some();
    let order = NewOrder {
        id: order_id,
        user_id: request.user_id,
        lines,
        coupon_id: request.coupon_id,
        total_price: total - discount,
        discount,
        idempotency: request.idempotency.clone(),
        refused,
    };
    // 2. Record the order (and claim the idempotency key) before touching stock.
    let begun = inner.committer.begin_order(order).await;
    observe(inner, &begun);
    match begun {
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
        let _ = inner.events.send(OrderEvent {
            order_id,
            status: "FAILED",
        });
        return SagaOutcome::OutOfStock(order_id);
    }
    let _ = inner.events.send(OrderEvent {
        order_id,
        status: "PROCESSING",
    });
    if missing.iter().any(|m| *m) {
        let statuses = missing
            .iter()
            .map(|m| {
                if *m {
                    line_status::ITEM_NOT_FOUND
                } else {
                    line_status::RELEASED
                }
            })
            .collect();
        return finish_failed(
            inner,
            order_id,
            &request.lines,
            statuses,
            "an item does not exist",
            SagaOutcome::ItemNotFound(order_id),
        )
        .await;
    }
    // 3. Reserve every line at once; each answer arrives after its reservation is durable.
    set_step(inner, order_id, Some("reserving"));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, &(item_id, quantity)) in request.lines.iter().enumerate() {
        let inner = inner.clone();
        tasks.spawn(async move {
            let deadline = tokio::time::Instant::now() + inner.reserve_deadline;
            let result = retry(
                &inner.retry,
                deadline,
                |e: &ReserveError| matches!(e, ReserveError::Unavailable(_)),
                |_| async {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match &inner.baseline {
                        Some(baseline) => baseline.reserve(item_id, order_id, quantity).await,
                        None => inner.stock.reserve(item_id, order_id, quantity, left).await,
                    }
                },
            )
            .await;
            (index, result)
        });
    }
    let mut results: Vec<Option<Result<(), ReserveError>>> = vec![None; request.lines.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, result)) = joined
            && let Some(slot) = results.get_mut(index)
        {
            *slot = Some(result);
        }
    }
    let all_reserved = results.iter().all(|r| matches!(r, Some(Ok(()))));
    if !all_reserved {
        let statuses: Vec<&'static str> = results
            .iter()
            .map(|r| match r {
                Some(Err(ReserveError::OutOfStock)) => line_status::OUT_OF_STOCK,
                Some(Err(ReserveError::ItemNotFound)) => line_status::ITEM_NOT_FOUND,
                _ => line_status::RELEASED,
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
            None if statuses.contains(&line_status::ITEM_NOT_FOUND) => (
                "an item does not exist".to_owned(),
                SagaOutcome::ItemNotFound(order_id),
            ),
            None => (
                "not enough stock".to_owned(),
                SagaOutcome::OutOfStock(order_id),
            ),
        };
        return finish_failed(inner, order_id, &request.lines, statuses, &reason, outcome).await;
    }
    // 4. Coupon step: the coupon was taken (marked USED) atomically with the PROCESSING write
    //    in step 2, so two orders racing for it cannot both get it; every failure path below
    //    gives it back in the same transaction that fails or cancels the order.
    // 5. Confirm: SUCCEEDED, reservations CONFIRMED and the outbox event in one transaction.
    set_step(inner, order_id, Some("confirming"));
    // The confirmation is idempotent (it only moves a PROCESSING order and HELD reservations),
    // so a write whose commit is in doubt is simply made again; a repeat of one that did
    // commit answers AlreadyFinal and the order is read back.
    let deadline = tokio::time::Instant::now() + inner.reserve_deadline;
    let resolved = retry(
        &inner.retry,
        deadline,
        |e: &PersistenceError| !matches!(e, PersistenceError::Closed),
        |_| async {
            let resolved = inner
                .committer
                .resolve(OrderResolution {
                    order_id,
                    line_statuses: Vec::new(),
                    failure: None,
                })
                .await;
            observe(inner, &resolved);
            resolved
        },
    )
    .await;
    match resolved {
        Ok(ResolveOutcome::Succeeded) => {
            let _ = inner.events.send(OrderEvent {
                order_id,
                status: "SUCCEEDED",
            });
            SagaOutcome::Succeeded(order_id)
        }
        Ok(ResolveOutcome::Failed) => {
            let _ = inner.events.send(OrderEvent {
                order_id,
                status: "FAILED",
            });
            SagaOutcome::Failed(order_id, "a reservation expired".into())
        }
        Ok(ResolveOutcome::AlreadyFinal) => SagaOutcome::Replay(order_id),
        Err(e) => {
            // Still unknown whether it committed. If it did not, the sweeper fails the order
            // (and releases its units) once it is stale; the client is told to look again.
            SagaOutcome::Undetermined(order_id, e.to_string())
        }
    }
}

/// The discount an order gets from its coupon, or why the coupon cannot be used (`Err(Ok)`),
/// or a dependency failure (`Err(Err)`). Whether the member holds it unused is decided
/// atomically by the order's first write, not here.
async fn coupon_discount(
    inner: &Inner,
    coupon_id: i64,
    user_id: i64,
    lines: &[NewOrderLine],
    total: i64,
) -> Result<i64, Result<CouponProblem, String>> {
    let coupon = match inner.coupons.definition(coupon_id).await {
        Ok(c) => c,
        Err(CouponError::NotFound) => return Err(Ok(CouponProblem::NotFound)),
        Err(e) => return Err(Err(e.to_string())),
    };
    let base = match coupon.def.item_id {
        None => total,
        Some(item) => match lines.iter().find(|l| l.item_id == item) {
            Some(line) => line.unit_price.saturating_mul(line.quantity),
            None => return Err(Ok(CouponProblem::NotApplicable)),
        },
    };
    inner
        .coupons
        .ensure_recorded(coupon_id, user_id)
        .await
        .map_err(|e| Err(e.to_string()))?;
    let rate = DiscountRate::from_tenths(u16::try_from(coupon.def.discount_tenths).unwrap_or(0));
    Ok(rate.discount_on(base))
}

async fn finish_failed(
    inner: &Arc<Inner>,
    order_id: i64,
    lines: &[(i64, i64)],
    statuses: Vec<&'static str>,
    reason: &str,
    outcome: SagaOutcome,
) -> SagaOutcome {
    set_step(inner, order_id, Some("compensating"));
    let resolved = inner
        .committer
        .resolve(OrderResolution {
            order_id,
            line_statuses: statuses,
            failure: Some(reason.to_owned()),
        })
        .await;
    observe(inner, &resolved);
    match resolved {
        Ok(_) => {
            let _ = inner.events.send(OrderEvent {
                order_id,
                status: "FAILED",
            });
            for (item_id, _) in lines {
                inner.stock.replenished(*item_id);
            }
            outcome
        }
        Err(e) => SagaOutcome::Failed(order_id, e.to_string()),
    }
}
