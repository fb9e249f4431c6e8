//! One-for-one supervision shared by stock actors and order sagas: a failure is logged and
//! counted under the actor's key (item id, order id) for the admin page, and the owner's hook
//! decides what else happens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use serde::Serialize;

/// Failures of one key.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FailureRecord {
    /// Times an actor of this key failed.
    pub restarts: u64,
    /// The last failure.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct FailureLog {
    by_key: HashMap<i64, FailureRecord>,
    total: FailureRecord,
}

/// Failures seen by one supervisor, kept across restarts of the supervised actors.
#[derive(Debug, Clone, Default)]
pub(crate) struct Failures(Arc<Mutex<FailureLog>>);

impl Failures {
    fn record(&self, key: Option<i64>, error: &str) {
        if let Ok(mut log) = self.0.lock() {
            if let Some(k) = key {
                let r = log.by_key.entry(k).or_default();
                r.restarts += 1;
                r.last_error = Some(error.to_owned());
            }
            log.total.restarts += 1;
            log.total.last_error = Some(error.to_owned());
        }
    }

    /// Failures of one key.
    pub(crate) fn of(&self, key: i64) -> FailureRecord {
        self.0
            .lock()
            .ok()
            .and_then(|log| log.by_key.get(&key).cloned())
            .unwrap_or_default()
    }

    /// Failures of every key together.
    pub(crate) fn total(&self) -> FailureRecord {
        self.0
            .lock()
            .map(|log| log.total.clone())
            .unwrap_or_default()
    }
}

/// A unique actor name `kind-key-n`: ractor names are process-wide, and several nodes (tests)
/// may share a process and a key.
pub(crate) fn actor_name(kind: &str, key: i64) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{kind}-{key}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn key_of(name: &str) -> Option<i64> {
    name.split('-').nth(1).and_then(|k| k.parse().ok())
}

/// What the owner does when an actor failed: its key and its id.
pub(crate) type OnFailure = Box<dyn Fn(i64, ActorId) + Send + Sync>;

struct FailureSupervisor {
    kind: &'static str,
    failures: Failures,
    on_failure: OnFailure,
}

impl Actor for FailureSupervisor {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            let key = cell.get_name().as_deref().and_then(key_of);
            tracing::error!(kind = self.kind, ?key, error = %error, "actor failed");
            self.failures.record(key, &error.to_string());
            if let Some(key) = key {
                (self.on_failure)(key, cell.get_id());
            }
        }
        Ok(())
    }
}

/// Starts a supervisor for actors of `kind`.
pub(crate) async fn start_supervisor(
    kind: &'static str,
    failures: Failures,
    on_failure: OnFailure,
) -> Result<ActorRef<()>, SpawnErr> {
    let (supervisor, _) = Actor::spawn(
        None,
        FailureSupervisor {
            kind,
            failures,
            on_failure,
        },
        (),
    )
    .await?;
    Ok(supervisor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_key() {
        let a = actor_name("stock", 42);
        let b = actor_name("stock", 42);
        assert_ne!(a, b);
        assert_eq!(key_of(&a), Some(42));
        assert_eq!(key_of("saga"), None);
    }

    #[test]
    fn failures_count_per_key_and_in_total() {
        let f = Failures::default();
        f.record(Some(1), "boom");
        f.record(Some(1), "bang");
        f.record(None, "anonymous");
        assert_eq!(f.of(1).restarts, 2);
        assert_eq!(f.of(1).last_error.as_deref(), Some("bang"));
        assert_eq!(f.of(2).restarts, 0);
        assert_eq!(f.total().restarts, 3);
    }
}
