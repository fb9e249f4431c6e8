//! One-for-one supervision of actors keyed by `K` (item id, coupon id, order id).
//!
//! Children are spawned through [`Supervisor::spawn`], which links them to the supervisor actor
//! and records which key each actor id serves, so a failure is attributed to its key without
//! parsing actor names. The supervisor keeps per-key failure records, applies a
//! [`RestartIntensity`] limit, and hands each event to a [`SupervisionHook`]: the
//! [`ActorRegistry`](crate::ActorRegistry) restarts the key's actor from durable state; the
//! order sagas' owner records the failure.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};

/// What a supervisor key must be: small, copyable and printable.
pub trait SupervisedKey: Copy + Eq + Hash + fmt::Debug + Send + Sync + 'static {}
impl<T: Copy + Eq + Hash + fmt::Debug + Send + Sync + 'static> SupervisedKey for T {}

/// How many failures of one key are restarted before the key is marked failed.
///
/// Concurrency decision: a key whose actor fails on every start (corrupt durable state, a bug
/// hit by its first message) would otherwise be restarted in a tight loop, each start reading
/// the database (and, for stock, claiming a new epoch) while its callers pile up. Past the limit
/// callers get an immediate `Failed { retry_after }` instead, and the key gets another chance
/// once the window has moved on. Counted per key, so one bad key does not stop the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartIntensity {
    /// Failures within `within` that are still restarted (default 5). The next one marks the key
    /// failed until the oldest failure leaves the window.
    pub max_restarts: u32,
    /// Length of the sliding window (default 10 s).
    pub within: Duration,
}

impl Default for RestartIntensity {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            within: Duration::from_secs(10),
        }
    }
}

/// One failure, as handed to [`SupervisionHook::on_failure`].
#[derive(Debug, Clone)]
pub struct Failure<K> {
    /// The failed actor's key.
    pub key: K,
    /// The failed actor.
    pub actor: ActorId,
    /// The failure (panic message or the error returned by a handler).
    pub error: String,
    /// `true` while the key is within its [`RestartIntensity`]: the owner should restart it.
    /// `false` when this failure marked the key failed.
    pub restart: bool,
}

/// Failure history of one key, for the admin page and admission.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFailures {
    /// Times an actor of this key failed since the supervisor started.
    pub restarts: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// When an actor of this key first failed.
    pub first_failed_at: Option<SystemTime>,
    /// When an actor of this key last failed.
    pub last_failed_at: Option<SystemTime>,
    /// While the key is marked failed: time until it may start again.
    pub retry_after: Option<Duration>,
}

/// What the owner of a supervisor does when a child fails or stops.
///
/// Both methods run on the supervisor actor, one event at a time, so they must not block; start
/// async work (a restart, a database write) with `tokio::spawn`.
pub trait SupervisionHook<K>: Send + Sync + 'static {
    /// A child failed (panicked or returned an error). `supervisor` lets the hook spawn a
    /// replacement.
    fn on_failure(&self, supervisor: &Supervisor<K>, failure: &Failure<K>) {
        let _ = (supervisor, failure);
    }

    /// A child stopped normally (passivated, fenced, drained, finished).
    fn on_stop(&self, key: K, actor: ActorId, reason: Option<&str>) {
        let _ = (key, actor, reason);
    }
}

/// A hook that does nothing beyond the supervisor's own bookkeeping.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;

impl<K> SupervisionHook<K> for NoHook {}

/// Adapts a closure into a failure-only hook (recording or compensating a failure).
pub struct OnFailure<F>(pub F);

impl<F> fmt::Debug for OnFailure<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnFailure(..)")
    }
}

impl<K, F> SupervisionHook<K> for OnFailure<F>
where
    F: Fn(&Failure<K>) + Send + Sync + 'static,
{
    fn on_failure(&self, _supervisor: &Supervisor<K>, failure: &Failure<K>) {
        (self.0)(failure);
    }
}

/// Why a spawn through the supervisor did not give a running child.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// ractor refused (pre_start failed, the supervisor is gone...).
    #[error("spawn failed: {0}")]
    Spawn(#[from] SpawnErr),
    /// The child failed or stopped before it was registered under its key; the failure was
    /// recorded for the key.
    #[error("the actor stopped right after starting: {0}")]
    DiedAtStart(String),
}

#[derive(Debug, Default)]
struct KeyRecord {
    restarts: u64,
    last_error: Option<String>,
    first_failed_at: Option<SystemTime>,
    last_failed_at: Option<SystemTime>,
    /// Failure instants inside the intensity window, oldest first.
    recent: VecDeque<Instant>,
    /// Set when the limit was exceeded: no start before this instant.
    failed_until: Option<Instant>,
}

impl KeyRecord {
    fn retry_after(&self, now: Instant) -> Option<Duration> {
        self.failed_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }
}

/// How a child ended before its spawner registered it.
#[derive(Debug)]
enum EarlyExit {
    Failed(String),
    Stopped(Option<String>),
}

#[derive(Debug)]
struct Book<K> {
    /// Which key each live child serves.
    children: HashMap<ActorId, K>,
    /// Children whose end arrived before [`Supervisor::spawn`] registered them.
    ///
    /// Concurrency decision: `spawn_linked` returns only after the child is linked and running,
    /// and the registration happens right after, on the spawner's task. A child that fails in
    /// that gap (a message it sent itself in `pre_start`) reaches the supervisor first; its end
    /// is parked here and the spawner claims it, instead of losing the failure's key.
    early: HashMap<ActorId, EarlyExit>,
    keys: HashMap<K, KeyRecord>,
    failures_total: u64,
}

impl<K> Default for Book<K> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            early: HashMap::new(),
            keys: HashMap::new(),
            failures_total: 0,
        }
    }
}

struct Shared<K> {
    kind: &'static str,
    intensity: RestartIntensity,
    /// Concurrency decision: a `std` mutex, never held across an `.await`; every section is a
    /// few map operations. Spawners (request tasks) and the supervisor actor both write here.
    book: Mutex<Book<K>>,
    hook: Arc<dyn SupervisionHook<K>>,
}

/// Handle to a one-for-one supervisor of actors keyed by `K`. Cheap to clone.
pub struct Supervisor<K> {
    shared: Arc<Shared<K>>,
    actor: ActorRef<()>,
}

impl<K> Clone for Supervisor<K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            actor: self.actor.clone(),
        }
    }
}

impl<K> fmt::Debug for Supervisor<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("kind", &self.shared.kind)
            .field("intensity", &self.shared.intensity)
            .field("actor", &self.actor.get_id())
            .finish_non_exhaustive()
    }
}

impl<K: SupervisedKey> Supervisor<K> {
    /// Starts a supervisor for actors of `kind` (used in logs).
    pub async fn start(
        kind: &'static str,
        intensity: RestartIntensity,
        hook: Arc<dyn SupervisionHook<K>>,
    ) -> Result<Self, SpawnErr> {
        let shared = Arc::new(Shared {
            kind,
            intensity,
            book: Mutex::new(Book::default()),
            hook,
        });
        let (actor, _) = Actor::spawn(
            None,
            SupervisorActor {
                shared: Arc::clone(&shared),
            },
            (),
        )
        .await?;
        Ok(Self { shared, actor })
    }

    /// Spawns `actor` for `key`, linked to this supervisor. The child has no name (ractor names
    /// are process-wide, and several nodes may share a process and a key).
    pub async fn spawn<A: Actor>(
        &self,
        key: K,
        actor: A,
        args: A::Arguments,
    ) -> Result<ActorRef<A::Msg>, SpawnError> {
        let (child, _) = Actor::spawn_linked(None, actor, args, self.actor.get_cell()).await?;
        let id = child.get_id();
        let early = {
            let mut book = self.book();
            match book.early.remove(&id) {
                None => {
                    book.children.insert(id, key);
                    return Ok(child);
                }
                Some(exit) => exit,
            }
        };
        let error = match early {
            EarlyExit::Failed(error) => {
                // Recorded, but not restarted: the spawner sees the error and decides.
                self.record_failure(key, &error);
                error
            }
            EarlyExit::Stopped(reason) => reason.unwrap_or_else(|| "stopped".into()),
        };
        Err(SpawnError::DiedAtStart(error))
    }

    /// `Err(retry_after)` while `key` is marked failed by the restart-intensity limit.
    pub fn check(&self, key: K) -> Result<(), Duration> {
        let book = self.book();
        match book
            .keys
            .get(&key)
            .and_then(|r| r.retry_after(Instant::now()))
        {
            Some(retry_after) => Err(retry_after),
            None => Ok(()),
        }
    }

    /// Failure history of `key` (all zero when it never failed).
    pub fn failures_of(&self, key: K) -> KeyFailures {
        let now = Instant::now();
        self.book()
            .keys
            .get(&key)
            .map(|r| KeyFailures {
                restarts: r.restarts,
                last_error: r.last_error.clone(),
                first_failed_at: r.first_failed_at,
                last_failed_at: r.last_failed_at,
                retry_after: r.retry_after(now),
            })
            .unwrap_or_default()
    }

    /// Failures of every key since the supervisor started.
    pub fn failures_total(&self) -> u64 {
        self.book().failures_total
    }

    /// Live children (spawned and not yet ended).
    pub fn children(&self) -> usize {
        self.book().children.len()
    }

    /// What this supervisor supervises (for logs).
    pub fn kind(&self) -> &'static str {
        self.shared.kind
    }

    /// Stops the supervisor; ractor stops its linked children with it.
    pub fn stop(&self) {
        self.actor.stop(None);
    }

    fn book(&self) -> MutexGuard<'_, Book<K>> {
        self.shared.book()
    }

    /// Counts a failure of `key` and applies the intensity limit; `true` when within it.
    fn record_failure(&self, key: K, error: &str) -> bool {
        let intensity = self.shared.intensity;
        let now = Instant::now();
        let mut book = self.book();
        book.failures_total += 1;
        let record = book.keys.entry(key).or_default();
        record.restarts += 1;
        record.last_error = Some(error.to_owned());
        let wall = SystemTime::now();
        record.first_failed_at.get_or_insert(wall);
        record.last_failed_at = Some(wall);
        while record
            .recent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= intensity.within)
        {
            record.recent.pop_front();
        }
        record.recent.push_back(now);
        let limit = usize::try_from(intensity.max_restarts).unwrap_or(usize::MAX);
        if record.recent.len() <= limit {
            return true;
        }
        // The key may start again once enough failures have left the window to bring the
        // count back to the limit.
        let release = record.recent.len() - limit - 1;
        record.failed_until = record.recent.get(release).map(|at| *at + intensity.within);
        false
    }
}

impl<K> Shared<K> {
    fn book(&self) -> MutexGuard<'_, Book<K>> {
        // No code panics while holding the lock; a poisoned book is still consistent.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct SupervisorActor<K> {
    shared: Arc<Shared<K>>,
}

impl<K: SupervisedKey> Actor for SupervisorActor<K> {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let supervisor = Supervisor {
            shared: Arc::clone(&self.shared),
            actor: myself,
        };
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                let id = cell.get_id();
                let error = error.to_string();
                let key = {
                    let mut book = self.shared.book();
                    let key = book.children.remove(&id);
                    if key.is_none() {
                        book.early.insert(id, EarlyExit::Failed(error.clone()));
                    }
                    key
                };
                let Some(key) = key else {
                    return Ok(());
                };
                let restart = supervisor.record_failure(key, &error);
                tracing::error!(kind = self.shared.kind, ?key, %error, restart, "actor failed");
                let failure = Failure {
                    key,
                    actor: id,
                    error,
                    restart,
                };
                self.shared.hook.on_failure(&supervisor, &failure);
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let id = cell.get_id();
                let key = {
                    let mut book = self.shared.book();
                    let key = book.children.remove(&id);
                    if key.is_none() {
                        book.early.insert(id, EarlyExit::Stopped(reason.clone()));
                    }
                    key
                };
                if let Some(key) = key {
                    tracing::debug!(kind = self.shared.kind, ?key, ?reason, "actor stopped");
                    self.shared.hook.on_stop(key, id, reason.as_deref());
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    struct Fragile;

    impl Actor for Fragile {
        type Msg = bool;
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<bool>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(
            &self,
            myself: ActorRef<bool>,
            fail: bool,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            if fail {
                return Err("boom".into());
            }
            myself.stop(Some("done".into()));
            Ok(())
        }
    }

    #[tokio::test]
    async fn failure_hook_gets_the_key_and_stops_are_forgotten() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let hook = OnFailure(move |f: &Failure<i64>| {
            let _ = tx.send((f.key, f.actor, f.error.clone(), f.restart));
        });
        let sup = Supervisor::start("saga", RestartIntensity::default(), Arc::new(hook))
            .await
            .unwrap();
        let order_7 = sup.spawn(7, Fragile, ()).await.unwrap();
        let order_8 = sup.spawn(8, Fragile, ()).await.unwrap();
        assert_eq!(sup.children(), 2);
        order_7.cast(true).unwrap();
        let (key, id, error, restart) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((key, id), (7, order_7.get_id()));
        assert!(error.contains("boom"), "{error}");
        assert!(restart);
        assert_eq!(sup.failures_of(7).restarts, 1);
        assert_eq!(sup.failures_of(8), KeyFailures::default());

        // A normal stop is not a failure, and the id mapping goes away.
        order_8.cast(false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while sup.children() > 0 {
            assert!(Instant::now() < deadline, "children never emptied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(sup.failures_total(), 1);
        sup.stop();
    }

    #[tokio::test]
    async fn intensity_marks_the_key_failed_until_the_window_lets_go() {
        let sup: Supervisor<i64> = Supervisor::start(
            "test",
            RestartIntensity {
                max_restarts: 2,
                within: Duration::from_millis(300),
            },
            Arc::new(NoHook),
        )
        .await
        .unwrap();
        assert!(sup.record_failure(1, "a"));
        assert!(sup.record_failure(1, "b"));
        assert!(sup.check(1).is_ok());
        assert!(!sup.record_failure(1, "c"));
        let retry_after = sup.check(1).unwrap_err();
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(300));
        assert!(sup.check(2).is_ok(), "other keys are unaffected");
        let failures = sup.failures_of(1);
        assert_eq!(failures.restarts, 3);
        assert_eq!(failures.last_error.as_deref(), Some("c"));
        assert!(failures.retry_after.is_some());
        let deadline = Instant::now() + Duration::from_secs(5);
        while sup.check(1).is_err() {
            assert!(Instant::now() < deadline, "the key never came back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sup.stop();
    }
}
