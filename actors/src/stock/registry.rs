//! [`StockActors`]: the node's stock actors, one per item, started on first use (claiming the
//! item with a new epoch) and supervised by the generic
//! [`ActorRegistry`](surge_supervisors::ActorRegistry): a failed actor is restarted from the
//! database under a new epoch (which reclaims whatever it had checked out), within the restart
//! intensity; past it the item answers "unavailable" until the window lets it go.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ractor::ActorRef;
use serde::Serialize;
use surge_domain::{ItemId, Quantity};
use surge_persistence::{Database, PersistenceError};
use surge_supervisors::{
    ActorFactory, ActorRegistry, RegistryError, RegistryLimits, RestartIntensity, StartError,
    WeakRegistry,
};
use tokio::sync::oneshot;

use super::actor::{StockActor, StockArgs, StockMsg, StockStats};
use surge_persistence::orders::{HoldSource, ItemTerms};

use super::path::{Hold, PathFuture, StockPath};
use super::{ReserveError, StockConfig};

/// The registry of stock actors.
pub(super) type Registry = ActorRegistry<StockFactory>;

/// Where an actor finds the registry that started it, to leave it when fenced or passivated.
/// Set once, right after the registry starts (the registry owns the factory, so the factory
/// cannot hold it from the start), and weak, so the actors do not keep the registry alive.
pub(super) type RegistryCell = Arc<OnceLock<WeakRegistry<StockFactory>>>;

/// What an item's slot keeps across actor restarts.
#[derive(Debug, Default)]
pub struct StockShared {
    /// Counters the actor shares with the admin page and with sagas (the sold-out window).
    pub(super) stats: Arc<StockStats>,
    /// The current actor's epoch.
    epoch: AtomicI64,
    /// Unit price read when the actor took the item over (prices do not change while it lives).
    price: AtomicI64,
    /// The item's `maxPerMember` read with the price; 0: no limit.
    max_per_member: AtomicI64,
}

impl StockShared {
    /// The price and purchase limit the current actor read.
    fn terms(&self) -> ItemTerms {
        ItemTerms {
            price: self.price.load(Ordering::Relaxed),
            max_per_member: Some(self.max_per_member.load(Ordering::Relaxed)).filter(|m| *m > 0),
        }
    }
}

/// Starts an item's actor from the database: claims the item with a new epoch.
#[derive(Debug)]
pub(super) struct StockFactory {
    db: Database,
    config: StockConfig,
    registry: RegistryCell,
}

impl ActorFactory for StockFactory {
    type Key = i64;
    type Actor = StockActor;
    type Shared = StockShared;

    fn shared(&self, _item_id: i64) -> StockShared {
        StockShared::default()
    }

    async fn start(
        &self,
        item_id: i64,
        shared: Arc<StockShared>,
    ) -> Result<(StockActor, StockArgs), StartError> {
        let fence = match &self.config.ownership {
            None => None,
            Some(ownership) => Some(ownership.fence_for(item_id).ok_or_else(|| {
                StartError::Unavailable("this node does not own the item's shard".into())
            })?),
        };
        let claim = self
            .db
            .claim_allotment_in_shard(item_id, &self.config.owner, fence.as_ref())
            .await
            .map_err(|e| match e {
                PersistenceError::Conflict => {
                    StartError::Unavailable("the item's shard lease moved on".into())
                }
                e => StartError::Unavailable(e.to_string()),
            })?
            .ok_or(StartError::NotFound)?;
        shared.epoch.store(claim.epoch, Ordering::Relaxed);
        shared.price.store(claim.terms.price, Ordering::Relaxed);
        shared
            .max_per_member
            .store(claim.terms.max_per_member.unwrap_or(0), Ordering::Relaxed);
        Ok((
            StockActor {
                db: self.db.clone(),
                config: self.config.clone(),
                registry: self.registry.clone(),
            },
            StockArgs {
                item_id,
                epoch: claim.epoch,
                stats: shared.stats.clone(),
            },
        ))
    }
}

/// What the admin endpoint shows of a stock actor.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StockActorView {
    /// Always "stock".
    pub kind: &'static str,
    /// Item id.
    pub key: i64,
    /// Requests waiting on the actor (in its mailbox or being answered).
    pub mailbox_len: usize,
    /// Times an actor of this item failed and was replaced.
    pub restarts: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Marked failed by the restart-intensity limit: the item answers 503 for now.
    pub failed: bool,
    /// Units checked out and unsold.
    pub allotment_left: i64,
    /// Holds given since the actor started.
    pub holds: u64,
    /// Unix ms of the last check-out of units from the item row, 0 if none.
    pub last_check_out_at: i64,
    /// Units moved by the last check-out.
    pub last_check_out: usize,
    /// Known sold out: refusals come from memory.
    pub sold_out: bool,
    /// Ownership epoch.
    pub epoch: i64,
}

/// All stock actors of the node, created on first use and supervised.
#[derive(Debug, Clone)]
pub struct StockActors {
    registry: Registry,
}

fn unavailable(e: RegistryError) -> ReserveError {
    match e {
        RegistryError::NotFound => ReserveError::ItemNotFound,
        RegistryError::Overloaded => ReserveError::Overloaded,
        RegistryError::Failed { retry_after } => ReserveError::Unavailable(format!(
            "the item's stock actor keeps failing; retry in {} ms",
            retry_after.as_millis()
        )),
        RegistryError::Unavailable(cause) => ReserveError::Unavailable(cause),
    }
}

impl StockActors {
    /// Starts the registry and its supervisor.
    pub async fn start(db: Database, config: StockConfig) -> Result<Self, ractor::SpawnErr> {
        let cell = RegistryCell::default();
        let limits = RegistryLimits {
            max_waiting_per_key: config.max_waiting_per_item,
            intensity: RestartIntensity::default(),
        };
        let factory = StockFactory {
            db,
            config,
            registry: cell.clone(),
        };
        let registry = ActorRegistry::start("stock", factory, limits).await?;
        let _ = cell.set(registry.downgrade());
        Ok(Self { registry })
    }

    /// Holds units of an item in its actor's memory; returns the actor's epoch.
    async fn hold_units(
        &self,
        item_id: i64,
        quantity: i64,
        timeout: Duration,
    ) -> Result<i64, ReserveError> {
        let admission = self.registry.admit(item_id).map_err(unavailable)?;
        let actor = admission.actor().await.map_err(unavailable)?;
        let (reply, answer) = oneshot::channel();
        if actor.cast(StockMsg::Hold { quantity, reply }).is_err() {
            // The actor stopped (passivated, fenced or failed) before it took the message:
            // nothing was held. Drop it so a retry starts a fresh one.
            self.registry.forget(item_id, actor.get_id());
            return Err(ReserveError::Unavailable("the stock actor stopped".into()));
        }
        let mut answer = answer;
        match tokio::time::timeout(timeout, &mut answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ReserveError::Unavailable("the stock actor stopped".into())),
            Err(_) => {
                // Too late for this order: if the hold is given after all, it goes back.
                tokio::spawn(async move {
                    if let Ok(Ok(epoch)) = answer.await {
                        let _ = actor.cast(StockMsg::Release { quantity, epoch });
                    }
                });
                Err(ReserveError::Undetermined(
                    "the stock actor did not answer in time".into(),
                ))
            }
        }
    }

    /// Tells the item's actor, if it is still there.
    fn tell(&self, item_id: i64, message: StockMsg) {
        if let Some(actor) = self.registry.live_actor(item_id) {
            let _ = actor.cast(message);
        }
    }

    /// An item's price and purchase limit, or `None` when it does not exist. Starts the
    /// item's actor, which the order will need next anyway.
    async fn terms(&self, item_id: i64) -> Result<Option<ItemTerms>, ReserveError> {
        let admission = self.registry.admit(item_id).map_err(unavailable)?;
        match admission.actor().await {
            Ok(_) => Ok(Some(admission.shared().terms())),
            Err(RegistryError::NotFound) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Whether the item is known to be sold out right now (its actor saw the row empty and
    /// holds no units, and nothing came back since), without asking anyone.
    fn sold_out_now(&self, item_id: i64) -> bool {
        self.registry
            .shared_of(item_id)
            .is_some_and(|s| s.stats.sold_out.load(Ordering::Relaxed))
    }

    /// Every live stock actor, for the admin endpoint.
    pub fn views(&self) -> Vec<StockActorView> {
        self.registry
            .views()
            .into_iter()
            .filter(|v| v.started || v.failed)
            .map(|v| {
                let stats = &v.shared.stats;
                StockActorView {
                    kind: "stock",
                    key: v.key,
                    mailbox_len: v.waiting,
                    restarts: v.restarts,
                    last_error: v.last_error,
                    failed: v.failed,
                    allotment_left: stats.allotment.load(Ordering::Relaxed),
                    holds: stats.holds.load(Ordering::Relaxed),
                    last_check_out_at: stats.last_check_out_at.load(Ordering::Relaxed),
                    last_check_out: stats.last_check_out.load(Ordering::Relaxed),
                    sold_out: stats.sold_out.load(Ordering::Relaxed),
                    epoch: v.shared.epoch.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Graceful shutdown (after the sagas finished): every actor gives its allotment back.
    pub async fn drain(&self) {
        self.drain_items(|_| true).await;
        self.registry.stop();
    }

    /// The actors of the items `which` selects give their allotments back and stop (a shard
    /// handed over to another node); the next request for such an item starts a new actor,
    /// if this node may still serve it.
    pub async fn drain_items(&self, which: impl Fn(i64) -> bool) {
        let actors: Vec<ActorRef<StockMsg>> = self
            .registry
            .actors()
            .into_iter()
            .filter(|(item, _)| which(*item))
            .map(|(_, a)| a)
            .collect();
        for actor in actors {
            let _ = actor
                .call(StockMsg::Drain, Some(Duration::from_secs(10)))
                .await;
        }
    }

    /// The actors of the items `which` selects stop at once without writing (a shard lease
    /// this node could not renew: the next owner reclaims their allotments, and fences
    /// whatever they would still write).
    pub fn abandon_items(&self, which: impl Fn(i64) -> bool) {
        for (item, actor) in self.registry.actors() {
            if which(item) {
                let epoch = self
                    .registry
                    .shared_of(item)
                    .map_or(0, |s| s.epoch.load(Ordering::Relaxed));
                let _ = actor.cast(StockMsg::Lost { epoch });
            }
        }
    }

    /// Whether an actor of this item runs on this node now.
    pub fn is_live(&self, item_id: i64) -> bool {
        self.registry.live_actor(item_id).is_some()
    }
}

impl StockPath for StockActors {
    fn terms_of(&self, item: ItemId) -> PathFuture<'_, Result<Option<ItemTerms>, ReserveError>> {
        Box::pin(self.terms(item.get()))
    }

    fn hold(
        &self,
        item: ItemId,
        _order_id: i64,
        quantity: Quantity,
        within: Duration,
    ) -> PathFuture<'_, Result<Hold, ReserveError>> {
        Box::pin(async move {
            let epoch = self.hold_units(item.get(), quantity.get(), within).await?;
            Ok(Hold {
                item,
                quantity,
                source: HoldSource::Allotment { epoch },
            })
        })
    }

    fn release(&self, _order_id: i64, hold: Hold) -> PathFuture<'_, ()> {
        if let HoldSource::Allotment { epoch } = hold.source {
            self.tell(
                hold.item.get(),
                StockMsg::Release {
                    quantity: hold.quantity.get(),
                    epoch,
                },
            );
        }
        Box::pin(std::future::ready(()))
    }

    fn lost(&self, hold: Hold) {
        if let HoldSource::Allotment { epoch } = hold.source {
            self.tell(hold.item.get(), StockMsg::Lost { epoch });
        }
    }

    fn known_sold_out(&self, item: ItemId) -> bool {
        self.sold_out_now(item.get())
    }

    fn replenished(&self, item: ItemId) {
        self.tell(item.get(), StockMsg::Replenished);
    }
}
