//! A registry of one actor per key (one stock actor per item, one coupon actor per coupon),
//! started on first use from durable state, bounded per key, and supervised.
//!
//! Each key has a *slot*: the key's current actor (started at most once concurrently), the
//! number of requests admitted against it, and per-key data shared with the owner ([`ActorFactory::Shared`]:
//! stats for the admin page, a cached price, an epoch...). When the actor fails, the
//! [`Supervisor`] records it and, within the [`RestartIntensity`] limit, the registry starts a
//! replacement from durable state at once; past the limit the key answers
//! [`RegistryError::Failed`] until the window lets it go. An actor that stops normally
//! (passivated, fenced, drained) takes its slot with it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorRef, SpawnErr};
use tokio::sync::OnceCell;

use crate::supervisor::{Failure, RestartIntensity, SupervisionHook, Supervisor};

/// Builds a key's actor from durable state.
pub trait ActorFactory: Send + Sync + 'static {
    /// The key (item id, coupon id...).
    type Key: Copy + Eq + std::hash::Hash + Ord + fmt::Debug + fmt::Display + Send + Sync + 'static;
    /// The per-key actor.
    type Actor: Actor;
    /// Per-key data that lives as long as the key's slot: stats shared with admin, cached
    /// price, epoch...
    type Shared: Send + Sync + fmt::Debug + 'static;

    /// Fresh per-key data for a new slot. Called under the registry lock: keep it cheap.
    fn shared(&self, key: Self::Key) -> Self::Shared;

    /// Builds the actor and its arguments from durable state; [`StartError::NotFound`] when
    /// the key does not exist.
    fn start(
        &self,
        key: Self::Key,
        shared: Arc<Self::Shared>,
    ) -> impl Future<Output = Result<(Self::Actor, <Self::Actor as Actor>::Arguments), StartError>> + Send;

    /// Compensation when an actor of `key` failed (called on the supervisor, before any
    /// restart; must not block). Does nothing by default.
    fn on_failure(&self, key: Self::Key, error: &str) {
        let _ = (key, error);
    }
}

/// Why [`ActorFactory::start`] could not build an actor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The key does not exist in durable state.
    #[error("not found")]
    NotFound,
    /// Durable state could not be read.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Why a request for a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The key does not exist.
    #[error("not found")]
    NotFound,
    /// Too many requests are already admitted for the key.
    #[error("too many requests are waiting for this key")]
    Overloaded,
    /// The key's actor failed too often; it may start again after `retry_after`.
    #[error("failing repeatedly; retry after {retry_after:?}")]
    Failed {
        /// Time until the restart-intensity window lets the key start again.
        retry_after: Duration,
    },
    /// The actor could not be started, or stopped under the caller.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Bounds of an [`ActorRegistry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryLimits {
    /// Requests admitted per key at once; the next one is [`RegistryError::Overloaded`].
    ///
    /// Concurrency decision: a per-key bound (not a global one) so one hot key cannot take all
    /// the capacity, and a refusal is immediate rather than a wait in an unbounded mailbox.
    pub max_waiting_per_key: usize,
    /// Failures restarted per key before it is marked failed (see [`RestartIntensity`]).
    /// Within the limit a failed actor is replaced at once from durable state; past it the key
    /// answers [`RegistryError::Failed`] and is started again only on request once the window
    /// lets it go.
    pub intensity: RestartIntensity,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        Self {
            max_waiting_per_key: 10_000,
            intensity: RestartIntensity::default(),
        }
    }
}

type Msg<F> = <<F as ActorFactory>::Actor as Actor>::Msg;
type Cell<F> = Arc<OnceCell<ActorRef<Msg<F>>>>;

/// One key's place in the registry.
struct Slot<F: ActorFactory> {
    /// Requests admitted against this key: the admission bound, and what keeps the actor from
    /// passivating while someone holds its reference.
    ///
    /// Concurrency decision: incremented only under the registry lock, where
    /// [`ActorRegistry::passivate`] also reads it before removing the slot, so a caller either
    /// gets the slot before the removal (and passivation is refused) or a fresh slot after it.
    /// Decremented without the lock by the guard's drop: that can only make a later
    /// passivation succeed, never let one race an admitted caller.
    waiting: AtomicUsize,
    shared: Arc<F::Shared>,
    /// The current incarnation's actor, started on first need.
    ///
    /// Concurrency decision: a tokio `OnceCell` so the start is single-flight: concurrent
    /// requests for a cold key wait for one start from durable state instead of each reading
    /// the database and racing to spawn (which for stock would claim the item's epoch several
    /// times). Behind a lock and an `Arc` because a failure swaps in a fresh, empty cell while
    /// admitted callers keep their slot (and their place in the bound).
    actor: Mutex<Cell<F>>,
    /// Set when the start found no such key. The slot is removed from the map then; callers
    /// still holding it answer `NotFound` without another read of durable state.
    missing: AtomicBool,
}

impl<F: ActorFactory> Slot<F> {
    fn new(shared: F::Shared) -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            shared: Arc::new(shared),
            actor: Mutex::new(Arc::new(OnceCell::new())),
            missing: AtomicBool::new(false),
        }
    }

    fn cell(&self) -> Cell<F> {
        Arc::clone(&self.actor.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn live(&self) -> Option<ActorRef<Msg<F>>> {
        self.cell().get().cloned()
    }

    fn holds(&self, id: ActorId) -> bool {
        self.cell().get().is_some_and(|a| a.get_id() == id)
    }

    /// Replaces the cell with an empty one if it holds the actor `id`.
    fn reset_if_holds(&self, id: ActorId) -> bool {
        let mut cell = self.actor.lock().unwrap_or_else(PoisonError::into_inner);
        if cell.get().is_some_and(|a| a.get_id() == id) {
            *cell = Arc::new(OnceCell::new());
            true
        } else {
            false
        }
    }
}

impl<F: ActorFactory> fmt::Debug for Slot<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .field("shared", &self.shared)
            .field("actor", &self.live().map(|a| a.get_id()))
            .finish()
    }
}

struct Core<F: ActorFactory> {
    kind: &'static str,
    factory: F,
    limits: RegistryLimits,
    /// Concurrency decision: one `std` mutex over the whole map, never held across an
    /// `.await`. Admission (get-or-insert plus the waiting increment) and every removal
    /// (passivate, forget, not found) are each one short critical section under it, which is
    /// what makes "remove only if nobody is admitted" and "remove only if it still holds this
    /// actor" atomic. Starting an actor happens outside it, in the slot's `OnceCell`.
    slots: Mutex<HashMap<F::Key, Arc<Slot<F>>>>,
}

impl<F: ActorFactory> Core<F> {
    /// Removes a slot nobody is admitted to and whose actor never started (its start failed:
    /// the database was down, say), unless its key is marked failed (the admin page shows
    /// it). Without this, every key asked for during an outage would keep a slot for ever.
    fn drop_if_unstarted(&self, supervisor: &Supervisor<F::Key>, key: F::Key, slot: &Arc<Slot<F>>) {
        if supervisor.check(key).is_err() {
            return;
        }
        let mut slots = self.slots();
        let unused = slots.get(&key).is_some_and(|s| {
            Arc::ptr_eq(s, slot) && s.waiting.load(Ordering::Acquire) == 0 && s.live().is_none()
        });
        if unused {
            slots.remove(&key);
        }
    }

    fn passivate(&self, key: F::Key, actor: ActorId) -> bool {
        let mut slots = self.slots();
        let idle = slots
            .get(&key)
            .is_some_and(|s| s.holds(actor) && s.waiting.load(Ordering::Acquire) == 0);
        if idle {
            slots.remove(&key);
        }
        idle
    }

    fn forget(&self, key: F::Key, actor: ActorId) {
        let mut slots = self.slots();
        if slots.get(&key).is_some_and(|s| s.holds(actor)) {
            slots.remove(&key);
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<F::Key, Arc<Slot<F>>>> {
        // No code panics while holding the lock; the map is consistent after a poisoning.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn attached(&self, key: F::Key, slot: &Arc<Slot<F>>) -> bool {
        self.slots().get(&key).is_some_and(|s| Arc::ptr_eq(s, slot))
    }
}

/// Starts the slot's actor unless it has one (single-flight through the slot's `OnceCell`).
async fn ensure_started<F: ActorFactory>(
    core: &Core<F>,
    supervisor: &Supervisor<F::Key>,
    key: F::Key,
    slot: &Arc<Slot<F>>,
) -> Result<ActorRef<Msg<F>>, RegistryError> {
    let cell = slot.cell();
    if let Some(actor) = cell.get() {
        return Ok(actor.clone());
    }
    let started = cell
        .get_or_try_init(|| async {
            if slot.missing.load(Ordering::Acquire) {
                return Err(RegistryError::NotFound);
            }
            if let Err(retry_after) = supervisor.check(key) {
                return Err(RegistryError::Failed { retry_after });
            }
            if !core.attached(key, slot) {
                // An actor started here would be reachable by nobody.
                return Err(RegistryError::Unavailable(format!(
                    "the {} actor for {key} stopped; retry",
                    core.kind
                )));
            }
            let (actor, args) = match core.factory.start(key, Arc::clone(&slot.shared)).await {
                Ok(built) => built,
                Err(StartError::NotFound) => return Err(RegistryError::NotFound),
                Err(StartError::Unavailable(e)) => return Err(RegistryError::Unavailable(e)),
            };
            supervisor
                .spawn(key, actor, args)
                .await
                .map_err(|e| RegistryError::Unavailable(e.to_string()))
        })
        .await;
    match started {
        Ok(actor) => Ok(actor.clone()),
        Err(RegistryError::NotFound) => {
            slot.missing.store(true, Ordering::Release);
            let mut slots = core.slots();
            if slots
                .get(&key)
                .is_some_and(|s| Arc::ptr_eq(s, slot) && s.live().is_none())
            {
                slots.remove(&key);
            }
            Err(RegistryError::NotFound)
        }
        Err(e) => Err(e),
    }
}

/// Connects the supervisor's events to the slots.
struct RegistryHook<F: ActorFactory> {
    core: Arc<Core<F>>,
}

impl<F: ActorFactory> SupervisionHook<F::Key> for RegistryHook<F> {
    fn on_failure(&self, supervisor: &Supervisor<F::Key>, failure: &Failure<F::Key>) {
        self.core.factory.on_failure(failure.key, &failure.error);
        let slot = self.core.slots().get(&failure.key).cloned();
        // A slot that no longer holds the failed actor already moved on (a newer actor, or
        // the key was forgotten): nothing to restart.
        let Some(slot) = slot.filter(|s| s.reset_if_holds(failure.actor)) else {
            return;
        };
        if !failure.restart {
            tracing::warn!(
                kind = self.core.kind,
                key = %failure.key,
                "restart intensity exceeded; the key is marked failed"
            );
            return;
        }
        // Restarted eagerly rather than on the next request: the key's durable state (its
        // allotment, its queue) is owned by this node, and a key with waiting requests or
        // background duties (passivation, flushes) should not stay dark until someone asks.
        // The start shares the slot's single-flight cell with concurrent requests.
        let core = Arc::clone(&self.core);
        let supervisor = supervisor.clone();
        let key = failure.key;
        // The restart counts as a request on the slot, so the slot is not dropped under it.
        slot.waiting.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            if let Err(e) = ensure_started(&core, &supervisor, key, &slot).await {
                tracing::warn!(kind = core.kind, %key, error = %e, "restart failed");
            }
            if slot.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
                core.drop_if_unstarted(&supervisor, key, &slot);
            }
        });
    }

    fn on_stop(&self, key: F::Key, actor: ActorId, _reason: Option<&str>) {
        let mut slots = self.core.slots();
        if slots.get(&key).is_some_and(|s| s.holds(actor)) {
            slots.remove(&key);
        }
    }
}

/// What the admin page shows of one key.
#[derive(Debug, Clone)]
pub struct KeyView<K, S> {
    /// The key.
    pub key: K,
    /// Requests admitted against it now.
    pub waiting: usize,
    /// Times an actor of this key failed.
    pub restarts: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Marked failed by the restart-intensity limit.
    pub failed: bool,
    /// Has a started actor.
    pub started: bool,
    /// The key's shared data, for the owner's own fields.
    pub shared: Arc<S>,
}

/// One actor per key, started on first use and supervised. Cheap to clone.
pub struct ActorRegistry<F: ActorFactory> {
    core: Arc<Core<F>>,
    supervisor: Supervisor<F::Key>,
}

impl<F: ActorFactory> Clone for ActorRegistry<F> {
    fn clone(&self) -> Self {
        Self {
            core: Arc::clone(&self.core),
            supervisor: self.supervisor.clone(),
        }
    }
}

impl<F: ActorFactory> fmt::Debug for ActorRegistry<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorRegistry")
            .field("kind", &self.core.kind)
            .field("limits", &self.core.limits)
            .field("keys", &self.core.slots().len())
            .finish_non_exhaustive()
    }
}

impl<F: ActorFactory> ActorRegistry<F> {
    /// Starts the registry's supervisor.
    pub async fn start(
        kind: &'static str,
        factory: F,
        limits: RegistryLimits,
    ) -> Result<Self, SpawnErr> {
        let core = Arc::new(Core {
            kind,
            factory,
            limits,
            slots: Mutex::new(HashMap::new()),
        });
        let hook = Arc::new(RegistryHook {
            core: Arc::clone(&core),
        });
        let supervisor = Supervisor::start(kind, limits.intensity, hook).await?;
        Ok(Self { core, supervisor })
    }

    /// Counts one request against `key`'s bound. The guard gives the place back on drop.
    pub fn admit(&self, key: F::Key) -> Result<Admission<F>, RegistryError> {
        if let Err(retry_after) = self.supervisor.check(key) {
            return Err(RegistryError::Failed { retry_after });
        }
        let slot = {
            let mut slots = self.core.slots();
            let slot = slots
                .entry(key)
                .or_insert_with(|| Arc::new(Slot::new(self.core.factory.shared(key))));
            if slot.waiting.load(Ordering::Acquire) >= self.core.limits.max_waiting_per_key {
                return Err(RegistryError::Overloaded);
            }
            slot.waiting.fetch_add(1, Ordering::AcqRel);
            Arc::clone(slot)
        };
        Ok(Admission {
            registry: self.clone(),
            key,
            slot,
        })
    }

    /// The key's actor if it has a started one; starts nothing.
    pub fn live_actor(&self, key: F::Key) -> Option<ActorRef<Msg<F>>> {
        self.core.slots().get(&key).and_then(|s| s.live())
    }

    /// The key's shared data if it has a slot.
    pub fn shared_of(&self, key: F::Key) -> Option<Arc<F::Shared>> {
        self.core.slots().get(&key).map(|s| Arc::clone(&s.shared))
    }

    /// Removes the key's slot iff it holds `actor` and nobody is admitted; the actor should
    /// stop only when this answers `true`. Atomic with [`admit`](Self::admit).
    pub fn passivate(&self, key: F::Key, actor: ActorId) -> bool {
        self.core.passivate(key, actor)
    }

    /// Removes the key's slot if it still holds `actor` (a fenced actor, a call that found its
    /// actor stopped). A newer actor keeps its place.
    pub fn forget(&self, key: F::Key, actor: ActorId) {
        self.core.forget(key, actor);
    }

    /// A handle for the registry's own actors, which must not keep it alive: the registry owns
    /// its factory, and a factory that handed its actors a strong handle would form a cycle
    /// that outlives shutdown (and keeps every resource the factory holds).
    pub fn downgrade(&self) -> WeakRegistry<F> {
        WeakRegistry {
            core: Arc::downgrade(&self.core),
        }
    }

    /// Every started actor, sorted by key (to drain them).
    pub fn actors(&self) -> Vec<(F::Key, ActorRef<Msg<F>>)> {
        let mut actors: Vec<_> = self
            .core
            .slots()
            .iter()
            .filter_map(|(k, s)| s.live().map(|a| (*k, a)))
            .collect();
        actors.sort_by_key(|(k, _)| *k);
        actors
    }

    /// Every key with a slot, sorted by key, for the admin page.
    pub fn views(&self) -> Vec<KeyView<F::Key, F::Shared>> {
        // Copy out first: no supervisor lock is taken while holding the registry lock.
        let slots: Vec<(F::Key, Arc<Slot<F>>)> = self
            .core
            .slots()
            .iter()
            .map(|(k, s)| (*k, Arc::clone(s)))
            .collect();
        let mut views: Vec<_> = slots
            .into_iter()
            .map(|(key, slot)| {
                let failures = self.supervisor.failures_of(key);
                KeyView {
                    key,
                    waiting: slot.waiting.load(Ordering::Relaxed),
                    restarts: failures.restarts,
                    last_error: failures.last_error,
                    failed: failures.retry_after.is_some(),
                    started: slot.live().is_some(),
                    shared: Arc::clone(&slot.shared),
                }
            })
            .collect();
        views.sort_by_key(|v| v.key);
        views
    }

    /// Failures of every key since start.
    pub fn failures_total(&self) -> u64 {
        self.supervisor.failures_total()
    }

    /// The supervisor (failure records per key).
    pub fn supervisor(&self) -> &Supervisor<F::Key> {
        &self.supervisor
    }

    /// Stops the supervisor and with it every actor; drain them first through
    /// [`actors`](Self::actors) if they hold work.
    pub fn stop(&self) {
        self.core.slots().clear();
        self.supervisor.stop();
    }
}

/// A registry handle that does not keep the registry alive (see
/// [`ActorRegistry::downgrade`]). Once the registry is gone, passivation is always allowed.
pub struct WeakRegistry<F: ActorFactory> {
    core: std::sync::Weak<Core<F>>,
}

impl<F: ActorFactory> Clone for WeakRegistry<F> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
        }
    }
}

impl<F: ActorFactory> fmt::Debug for WeakRegistry<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeakRegistry(..)")
    }
}

impl<F: ActorFactory> WeakRegistry<F> {
    /// [`ActorRegistry::passivate`]; `true` when the registry is gone.
    pub fn passivate(&self, key: F::Key, actor: ActorId) -> bool {
        self.core
            .upgrade()
            .is_none_or(|core| core.passivate(key, actor))
    }

    /// [`ActorRegistry::forget`]; nothing when the registry is gone.
    pub fn forget(&self, key: F::Key, actor: ActorId) {
        if let Some(core) = self.core.upgrade() {
            core.forget(key, actor);
        }
    }
}

/// One admitted request for a key; gives its place back when dropped.
#[must_use = "the admission is released when dropped"]
pub struct Admission<F: ActorFactory> {
    registry: ActorRegistry<F>,
    key: F::Key,
    slot: Arc<Slot<F>>,
}

impl<F: ActorFactory> fmt::Debug for Admission<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("kind", &self.registry.core.kind)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<F: ActorFactory> Admission<F> {
    /// The admitted key.
    pub fn key(&self) -> F::Key {
        self.key
    }

    /// The key's shared data.
    pub fn shared(&self) -> &Arc<F::Shared> {
        &self.slot.shared
    }

    /// The key's actor, started from durable state if it has none (once, however many callers
    /// ask at the same time).
    pub async fn actor(&self) -> Result<ActorRef<Msg<F>>, RegistryError> {
        ensure_started(
            &self.registry.core,
            &self.registry.supervisor,
            self.key,
            &self.slot,
        )
        .await
    }
}

impl<F: ActorFactory> Drop for Admission<F> {
    fn drop(&mut self) {
        if self.slot.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.registry
                .core
                .drop_if_unstarted(&self.registry.supervisor, self.key, &self.slot);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ractor::{ActorProcessingErr, RpcReplyPort};
    use std::sync::atomic::AtomicI64;
    use std::time::Instant;

    /// Durable state: a value per key (negative keys do not exist).
    #[derive(Debug, Default)]
    struct Durable {
        value: AtomicI64,
        starts: AtomicUsize,
        failures: Mutex<Vec<(i64, String)>>,
        slow_start: Option<Duration>,
        /// Starts that fail as if the database were down.
        unavailable: AtomicUsize,
    }

    #[derive(Debug, Clone)]
    struct TestFactory(Arc<Durable>);

    #[derive(Debug, Default)]
    struct Stats {
        loaded: AtomicI64,
    }

    enum TestMsg {
        Get(RpcReplyPort<i64>),
        Boom,
    }

    struct TestActor;

    struct TestArgs {
        durable: Arc<Durable>,
        shared: Arc<Stats>,
    }

    impl Actor for TestActor {
        type Msg = TestMsg;
        type State = i64;
        type Arguments = TestArgs;

        async fn pre_start(
            &self,
            _: ActorRef<TestMsg>,
            args: TestArgs,
        ) -> Result<i64, ActorProcessingErr> {
            let value = args.durable.value.load(Ordering::SeqCst);
            args.shared.loaded.store(value, Ordering::SeqCst);
            Ok(value)
        }

        async fn handle(
            &self,
            _: ActorRef<TestMsg>,
            msg: TestMsg,
            state: &mut i64,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                TestMsg::Get(reply) => {
                    let _ = reply.send(*state);
                    Ok(())
                }
                TestMsg::Boom => Err("boom".into()),
            }
        }
    }

    impl ActorFactory for TestFactory {
        type Key = i64;
        type Actor = TestActor;
        type Shared = Stats;

        fn shared(&self, _key: i64) -> Stats {
            Stats::default()
        }

        async fn start(
            &self,
            key: i64,
            shared: Arc<Stats>,
        ) -> Result<(TestActor, TestArgs), StartError> {
            self.0.starts.fetch_add(1, Ordering::SeqCst);
            if let Some(delay) = self.0.slow_start {
                tokio::time::sleep(delay).await;
            }
            if key < 0 {
                return Err(StartError::NotFound);
            }
            if self
                .0
                .unavailable
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(StartError::Unavailable("the database is down".into()));
            }
            Ok((
                TestActor,
                TestArgs {
                    durable: Arc::clone(&self.0),
                    shared,
                },
            ))
        }

        fn on_failure(&self, key: i64, error: &str) {
            self.0
                .failures
                .lock()
                .unwrap()
                .push((key, error.to_owned()));
        }
    }

    async fn registry(
        durable: Durable,
        max_waiting_per_key: usize,
        intensity: RestartIntensity,
    ) -> (ActorRegistry<TestFactory>, Arc<Durable>) {
        let durable = Arc::new(durable);
        let registry = ActorRegistry::start(
            "test",
            TestFactory(Arc::clone(&durable)),
            RegistryLimits {
                max_waiting_per_key,
                intensity,
            },
        )
        .await
        .unwrap();
        (registry, durable)
    }

    async fn get(actor: &ActorRef<TestMsg>) -> i64 {
        ractor::call_t!(actor, TestMsg::Get, 5_000).unwrap()
    }

    /// Polls `check` every few milliseconds until it yields a value, failing after 5 s.
    async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `key`'s live actor is a started one other than `old`.
    async fn replacement(
        registry: &ActorRegistry<TestFactory>,
        key: i64,
        old: &ActorRef<TestMsg>,
    ) -> ActorRef<TestMsg> {
        eventually("a restarted actor", || {
            registry
                .live_actor(key)
                .filter(|a| a.get_id() != old.get_id())
        })
        .await
    }

    #[tokio::test]
    async fn failed_actor_is_restarted_from_durable_state_without_a_request() {
        let (registry, durable) =
            registry(Durable::default(), 10, RestartIntensity::default()).await;
        durable.value.store(10, Ordering::SeqCst);
        let first = registry.admit(1).unwrap().actor().await.unwrap();
        assert_eq!(get(&first).await, 10);

        durable.value.store(42, Ordering::SeqCst);
        first.cast(TestMsg::Boom).unwrap();
        let second = replacement(&registry, 1, &first).await;
        assert_eq!(get(&second).await, 42);
        assert_eq!(durable.starts.load(Ordering::SeqCst), 2);
        assert_eq!(
            registry.shared_of(1).unwrap().loaded.load(Ordering::SeqCst),
            42
        );
        let views = registry.views();
        assert_eq!(views.len(), 1);
        assert_eq!((views[0].key, views[0].restarts), (1, 1));
        assert!(views[0].last_error.as_deref().unwrap().contains("boom"));
        assert!(views[0].started && !views[0].failed);
        assert_eq!(registry.failures_total(), 1);
        registry.stop();
    }

    #[tokio::test]
    async fn failure_hook_is_called_with_the_key() {
        let (registry, durable) =
            registry(Durable::default(), 10, RestartIntensity::default()).await;
        let a = registry.admit(3).unwrap().actor().await.unwrap();
        let _b = registry.admit(4).unwrap().actor().await.unwrap();
        a.cast(TestMsg::Boom).unwrap();
        let failures = eventually("the failure hook", || {
            let failures = durable.failures.lock().unwrap().clone();
            (!failures.is_empty()).then_some(failures)
        })
        .await;
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, 3);
        assert!(failures[0].1.contains("boom"));
        registry.stop();
    }

    #[tokio::test]
    async fn intensity_limit_marks_the_key_failed_then_lets_it_go() {
        let within = Duration::from_millis(400);
        let (registry, _durable) = registry(
            Durable::default(),
            10,
            RestartIntensity {
                max_restarts: 5,
                within,
            },
        )
        .await;
        let mut actor = registry.admit(9).unwrap().actor().await.unwrap();
        for _ in 0..5 {
            actor.cast(TestMsg::Boom).unwrap();
            actor = replacement(&registry, 9, &actor).await;
        }
        // The sixth failure within the window is one too many.
        actor.cast(TestMsg::Boom).unwrap();
        let retry_after = eventually("the key to be marked failed", || match registry.admit(9) {
            Err(RegistryError::Failed { retry_after }) => Some(retry_after),
            _ => None,
        })
        .await;
        assert!(retry_after > Duration::ZERO && retry_after <= within);
        assert!(
            registry.live_actor(9).is_none(),
            "no restart past the limit"
        );
        let view = registry.views().into_iter().find(|v| v.key == 9).unwrap();
        assert!(view.failed && !view.started);
        assert_eq!(view.restarts, 6);

        let admission = eventually("the window to let the key go", || registry.admit(9).ok()).await;
        let back = admission.actor().await.unwrap();
        assert_eq!(get(&back).await, 0);
        assert!(!registry.views()[0].failed);
        registry.stop();
    }

    #[tokio::test]
    async fn admission_is_bounded_per_key() {
        let (registry, _durable) =
            registry(Durable::default(), 2, RestartIntensity::default()).await;
        let first = registry.admit(1).unwrap();
        let second = registry.admit(1).unwrap();
        assert_eq!(registry.admit(1).unwrap_err(), RegistryError::Overloaded);
        let _other_key = registry.admit(2).unwrap();
        assert_eq!(registry.views()[0].waiting, 2);
        drop(first);
        let _third = registry.admit(1).unwrap();
        drop(second);
        registry.stop();
    }

    #[tokio::test]
    async fn passivate_refuses_while_someone_is_admitted() {
        let (registry, _durable) =
            registry(Durable::default(), 10, RestartIntensity::default()).await;
        let admission = registry.admit(5).unwrap();
        let actor = admission.actor().await.unwrap();
        assert!(!registry.passivate(5, actor.get_id()));
        assert!(registry.live_actor(5).is_some());
        drop(admission);
        let other = registry.admit(6).unwrap().actor().await.unwrap();
        assert!(!registry.passivate(5, other.get_id()), "not its actor");
        assert!(registry.passivate(5, actor.get_id()));
        assert!(registry.live_actor(5).is_none());
        assert!(registry.shared_of(5).is_none());
        registry.stop();
    }

    #[tokio::test]
    async fn stopped_actor_takes_its_slot_and_forget_spares_newer_actors() {
        let (registry, _durable) =
            registry(Durable::default(), 10, RestartIntensity::default()).await;
        let actor = registry.admit(1).unwrap().actor().await.unwrap();
        actor.stop(Some("drained".into()));
        eventually("the slot to go", || {
            registry.shared_of(1).is_none().then_some(())
        })
        .await;
        assert_eq!(registry.failures_total(), 0);

        let newer = registry.admit(1).unwrap().actor().await.unwrap();
        registry.forget(1, actor.get_id());
        assert!(registry.live_actor(1).is_some());
        registry.forget(1, newer.get_id());
        assert!(registry.live_actor(1).is_none());
        registry.stop();
    }

    #[tokio::test]
    async fn not_found_start_leaves_no_slot() {
        let (registry, durable) =
            registry(Durable::default(), 10, RestartIntensity::default()).await;
        let admission = registry.admit(-1).unwrap();
        assert_eq!(
            admission.actor().await.unwrap_err(),
            RegistryError::NotFound
        );
        assert!(registry.shared_of(-1).is_none());
        assert!(registry.views().is_empty());
        // The guard that still holds the removed slot answers without reading again.
        assert_eq!(
            admission.actor().await.unwrap_err(),
            RegistryError::NotFound
        );
        assert_eq!(durable.starts.load(Ordering::SeqCst), 1);
        registry.stop();
    }

    #[tokio::test]
    async fn a_failed_start_leaves_no_slot_once_nobody_waits() {
        let (registry, durable) = registry(
            Durable {
                unavailable: AtomicUsize::new(1),
                ..Durable::default()
            },
            10,
            RestartIntensity::default(),
        )
        .await;
        let admission = registry.admit(7).unwrap();
        assert!(matches!(
            admission.actor().await,
            Err(RegistryError::Unavailable(_))
        ));
        assert!(registry.shared_of(7).is_some(), "kept while admitted");
        drop(admission);
        assert!(registry.shared_of(7).is_none(), "no slot left behind");
        // The key works again once the database does.
        let again = registry.admit(7).unwrap();
        assert!(again.actor().await.is_ok());
        drop(again);
        assert!(
            registry.shared_of(7).is_some(),
            "a started actor keeps its slot"
        );
        assert_eq!(durable.starts.load(Ordering::SeqCst), 2);
        registry.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_admits_start_the_actor_once() {
        let (registry, durable) = registry(
            Durable {
                slow_start: Some(Duration::from_millis(50)),
                ..Durable::default()
            },
            100,
            RestartIntensity::default(),
        )
        .await;
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let registry = registry.clone();
                tokio::spawn(async move {
                    let admission = registry.admit(7).unwrap();
                    admission.actor().await.unwrap().get_id()
                })
            })
            .collect();
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await.unwrap());
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "every caller got the same actor");
        assert_eq!(durable.starts.load(Ordering::SeqCst), 1);
        assert_eq!(registry.actors().len(), 1);
        registry.stop();
    }
}
