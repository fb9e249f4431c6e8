//! Orders: one [`saga::OrderSaga`] per order, started by [`OrderSagas`].
//!
//! Invariants protected: an order is **all or nothing** over its lines (every line's units
//! taken in the one transaction that writes it, or none); **no lost acknowledgement** (a 201
//! follows the commit of that write); **exactly-once** placement per Idempotency-Key (the key is
//! claimed in the same write); **a refusal writes nothing**.
//!
//! The path of one order: [`place`] validates and prices the lines (and the coupon's discount)
//! → [`saga`] holds every line through the [`StockPath`] (the stock actors, in memory) and
//! writes the order once through the [`OrderLedger`], or gives the holds back → [`events`]
//! tells SSE streams. Around it: [`cancel`], [`recovery`] of orders left `PROCESSING` by older
//! versions, and the [`sweeper`] of expired reservations (comparison strategies) and stale
//! orders.

pub mod cancel;
pub mod events;
pub mod ledger;
mod place;
pub mod recovery;
pub mod saga;
pub mod sweeper;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use surge_domain::{ItemId, LineStatus, OrderStatus, Quantity};
use surge_persistence::Database;
use surge_persistence::orders::OrderRecord;
use surge_supervisors::{CircuitBreaker, OnFailure, RestartIntensity, RetryPolicy, Supervisor};
use tokio::sync::{broadcast, oneshot};

use crate::coupons::CouponActors;
use crate::stock::StockPath;
pub use events::OrderEvent;
pub use ledger::OrderLedger;
use saga::{OrderSaga, SagaArgs};

/// A validated order request.
#[derive(Debug, Clone)]
pub struct OrderRequest {
    /// Buyer.
    pub user_id: i64,
    /// (item, units), distinct items.
    pub lines: Vec<(ItemId, Quantity)>,
    /// Coupon named by the request.
    pub coupon_id: Option<i64>,
    /// Idempotency key and request hash.
    pub idempotency: Option<(String, String)>,
}

/// How a saga ended, for the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaOutcome {
    /// Written `SUCCEEDED`: the order as written (the answer needs no read-back).
    Succeeded(OrderRecord),
    /// A line lacked stock: nothing was written. The status of every line, in request order.
    OutOfStock(Vec<LineStatus>),
    /// A line named an unknown item: nothing was written. The status of every line.
    ItemNotFound(Vec<LineStatus>),
    /// The key was used before with this same request: replay that order.
    Replay(i64),
    /// The key was used before with another request.
    KeyReused,
    /// A dependency failed; nothing was written.
    Failed(String),
    /// The coupon could not be used; nothing was written.
    CouponRefused(CouponProblem),
    /// With this order the member would hold more units of the item than its
    /// `maxPerMember` (counting their live orders); nothing was written.
    PurchaseLimit {
        /// The item.
        item_id: i64,
        /// Its limit.
        limit: i64,
    },
    /// The order's write may or may not have committed: the order exists `SUCCEEDED`, or not at
    /// all. Its holds are not given back (an undersell until the owner's allotment is
    /// reconciled, never an oversell).
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

/// Size of the id blocks a node takes at a time: one database round trip per this many orders.
const ORDER_ID_BLOCK: i64 = 1_000;
/// Events kept for slow SSE subscribers before they must re-read the order.
const EVENT_BUFFER: usize = 4_096;

#[derive(Debug)]
struct IdBlock {
    next: i64,
    end: i64,
}

/// What every saga of the node shares.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) db: Database,
    /// The durable writes (the group committer; a fault-injecting wrapper in tests).
    pub(crate) ledger: Arc<dyn OrderLedger>,
    /// How lines take stock: the stock actors, or a comparison strategy chosen at start.
    pub(crate) stock: Arc<dyn StockPath>,
    pub(crate) coupons: CouponActors,
    /// Guards the saga's forward writes (recording and confirming an order). Compensation is
    /// not gated by it: undoing must go through whenever the database takes it.
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) retry: RetryPolicy,
    /// How long a saga may spend holding and writing (waiting and retrying): the client's
    /// answer deadline, so nothing is still running once the client has its answer.
    pub(crate) reserve_deadline: Duration,
    pub(crate) events: broadcast::Sender<OrderEvent>,
    ids: tokio::sync::Mutex<IdBlock>,
    running: Mutex<HashMap<i64, SagaView>>,
    /// The last saga failure the supervisor saw, for the admin page.
    last_failure: Mutex<Option<String>>,
    /// Orders in flight per (member, Idempotency-Key), and the order the key placed once known.
    ///
    /// Concurrency decision: requests that repeat a key wait for the first one instead of
    /// racing it for stock (a retry must replay the first outcome, not be refused because the
    /// first took the last units). The durable claim in the order's write still decides
    /// across nodes; this only keeps one node's duplicates in line. An entry lives while a
    /// request for it is in flight.
    keys: Mutex<HashMap<(i64, String), KeySlot>>,
    /// Members who may have an Idempotency-Key on record (see [`KeyedMembers`]).
    pub(crate) keyed: KeyedMembers,
}

/// The members who may have an Idempotency-Key on record, so that a keyed request refused
/// from memory (sold out) need not read `idempotency_keys` to learn that it replays nothing.
/// That read went through the driver's SQLite thread and was most of a flash-sale loser's cost.
///
/// Concurrency decision: it answers only where this node sees every key written. On SQLite a
/// single node writes the database (a cluster refuses SQLite), so the members loaded at start
/// plus those noted here are all who can have a key. A member is noted *before* their keyed
/// order is written, so a write whose answer was lost is still covered, and a member noted
/// for a write that failed only costs a read later. Until the load finishes, and always on
/// PostgreSQL (other nodes write keys too), every member may have one.
#[derive(Debug, Default)]
pub(crate) struct KeyedMembers {
    /// Set once the members with a key on record are in `members`.
    known: std::sync::atomic::AtomicBool,
    members: Mutex<HashSet<i64>>,
}

impl KeyedMembers {
    /// Whether `user_id` may have a key on record (when in doubt, `true`).
    pub(crate) fn may_have_key(&self, user_id: i64) -> bool {
        !self.known.load(std::sync::atomic::Ordering::Acquire)
            || self.members.lock().map_or(true, |m| m.contains(&user_id))
    }

    /// `user_id` is about to write a keyed order.
    fn note(&self, user_id: i64) {
        if let Ok(mut members) = self.members.lock() {
            members.insert(user_id);
        }
    }

    /// Loads the members with a key on record (SQLite only). On failure every member stays
    /// "may have one".
    async fn load(&self, db: &Database) {
        if db.backend() != surge_persistence::Backend::Sqlite {
            return;
        }
        match db.members_with_idempotency_keys().await {
            Ok(loaded) => {
                if let Ok(mut members) = self.members.lock() {
                    members.extend(loaded);
                    self.known.store(true, std::sync::atomic::Ordering::Release);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "loading the members with idempotency keys failed; every keyed refusal reads the database")
            }
        }
    }
}

/// One Idempotency-Key in flight: the order it placed (id, request hash), once known.
pub(crate) type KeySlot = Arc<tokio::sync::Mutex<Option<(i64, String)>>>;

impl Inner {
    /// The slot of a key, shared by every request in flight with it.
    pub(crate) fn key_slot(&self, user_id: i64, key: &str) -> KeySlot {
        self.keys
            .lock()
            .map(|mut keys| keys.entry((user_id, key.to_owned())).or_default().clone())
            .unwrap_or_default()
    }

    /// Forgets a key's slot when no other request holds it.
    pub(crate) fn drop_key_slot(&self, user_id: i64, key: &str, slot: KeySlot) {
        if let Ok(mut keys) = self.keys.lock() {
            // The map's reference and ours: nobody else is waiting.
            if Arc::strong_count(&slot) <= 2 {
                keys.remove(&(user_id, key.to_owned()));
            }
        }
    }
}

impl Inner {
    /// Announces a status change to SSE streams and waiting duplicates.
    pub(crate) fn publish(&self, order_id: i64, status: OrderStatus) {
        let _ = self.events.send(OrderEvent { order_id, status });
    }

    /// Shows a saga's current step in the admin view (`None`: the saga ended).
    pub(crate) fn set_step(&self, order_id: i64, step: Option<&'static str>) {
        if let Ok(mut running) = self.running.lock() {
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

/// What sagas depend on, chosen at start.
#[derive(Debug)]
pub struct SagaDeps {
    /// Reads (ids, recovery).
    pub db: Database,
    /// The durable writes.
    pub ledger: Arc<dyn OrderLedger>,
    /// How lines take stock.
    pub stock: Arc<dyn StockPath>,
    /// Coupons named by orders.
    pub coupons: CouponActors,
    /// The database breaker.
    pub breaker: Arc<CircuitBreaker>,
    /// See [`Inner::reserve_deadline`].
    pub reserve_deadline: Duration,
}

/// Starts and tracks order sagas.
#[derive(Debug, Clone)]
pub struct OrderSagas {
    inner: Arc<Inner>,
    supervisor: Supervisor<i64>,
}

impl OrderSagas {
    /// Starts the saga supervisor.
    pub async fn start(deps: SagaDeps) -> Result<Self, ractor::SpawnErr> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let inner = Arc::new(Inner {
            db: deps.db,
            ledger: deps.ledger,
            stock: deps.stock,
            coupons: deps.coupons,
            breaker: deps.breaker,
            // A contended SQLite write can fail fast with SQLITE_BUSY; retries are cheap and
            // bounded by the answer deadline, so allow several.
            retry: RetryPolicy {
                max_attempts: 10,
                ..RetryPolicy::default()
            },
            reserve_deadline: deps.reserve_deadline,
            events,
            ids: tokio::sync::Mutex::new(IdBlock { next: 0, end: 0 }),
            running: Mutex::new(HashMap::new()),
            last_failure: Mutex::new(None),
            keys: Mutex::new(HashMap::new()),
            keyed: KeyedMembers::default(),
        });
        {
            let inner = Arc::clone(&inner);
            tokio::spawn(async move { inner.keyed.load(&inner.db).await });
        }
        // A saga that dies has written nothing (its one write is atomic), or its order is
        // already SUCCEEDED: there is nothing to compensate. Its holds stay out of its actors'
        // allotments (an undersell until the allotments are given back). The supervisor
        // records the failure for the admin page.
        let on_failure = {
            let inner = Arc::downgrade(&inner);
            OnFailure(move |failure: &surge_supervisors::Failure<i64>| {
                let Some(inner) = inner.upgrade() else { return };
                tracing::error!(order_id = failure.key, error = %failure.error, "an order saga failed");
                if let Ok(mut last) = inner.last_failure.lock() {
                    *last = Some(failure.error.clone());
                }
                // It will not clear its own step any more.
                inner.set_step(failure.key, None);
            })
        };
        // A saga is never restarted (its request is gone); each order id is used once, so the
        // intensity limit never bites.
        let supervisor =
            Supervisor::start("saga", RestartIntensity::default(), Arc::new(on_failure)).await?;
        Ok(Self { inner, supervisor })
    }

    /// Order status changes as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<OrderEvent> {
        self.inner.events.subscribe()
    }

    /// Running sagas, for the admin endpoint.
    pub fn views(&self) -> Vec<SagaView> {
        let restarts = self.supervisor.failures_total();
        let last_error = self.inner.last_failure.lock().ok().and_then(|l| l.clone());
        let mut views: Vec<SagaView> = self
            .inner
            .running
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        for v in &mut views {
            v.restarts = restarts;
            v.last_error.clone_from(&last_error);
        }
        views.sort_by_key(|v| v.key);
        views
    }

    /// Starts a saga; the receiver yields its outcome. The saga goes on if the caller stops
    /// waiting: its state is durable from its first write.
    pub async fn start_order(
        &self,
        request: OrderRequest,
        admission: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(i64, oneshot::Receiver<SagaOutcome>), SagaError> {
        let (reply, rx) = oneshot::channel();
        // The losers of a flash sale: a line known sold out is refused from the stock actors'
        // memory before any saga, id or write (a keyed request still replays an order its key
        // placed earlier). Order id 0: no order exists.
        if let Some(refusal) = saga::known_sold_out(&self.inner, &request) {
            let outcome = if self.inner.keyed.may_have_key(request.user_id) {
                saga::replay_or(&self.inner, &request, refusal).await
            } else {
                refusal
            };
            let _ = reply.send(outcome);
            return Ok((0, rx));
        }
        if request.idempotency.is_some() {
            self.inner.keyed.note(request.user_id);
        }
        let order_id = self.next_order_id().await?;
        // Counted as running from now on (shutdown waits for it), not only once it starts.
        self.inner.set_step(order_id, Some("starting"));
        self.supervisor
            .spawn(
                order_id,
                OrderSaga,
                SagaArgs {
                    inner: self.inner.clone(),
                    order_id,
                    request,
                    reply: Some(reply),
                    _admission: admission,
                },
            )
            .await
            .map_err(|e| {
                self.inner.set_step(order_id, None);
                SagaError::Unavailable(e.to_string())
            })?;
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

    /// Waits, at most `limit`, until no saga is running (shutdown: sagas may outlive the
    /// requests that started them). Returns how many are still running.
    pub async fn wait_idle(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let running = self.inner.running.lock().map(|r| r.len()).unwrap_or(0);
            if running == 0 || tokio::time::Instant::now() >= deadline {
                return running;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the supervisor (after the HTTP layer has drained).
    pub fn stop(&self) {
        self.supervisor.stop();
    }
}
#[cfg(test)]
mod tests;
