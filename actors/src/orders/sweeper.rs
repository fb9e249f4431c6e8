//! The sweeper: releases `HELD` reservations past their deadline (the comparison strategies
//! write them before their order; a saga that died leaves them) and fails orders left
//! `PROCESSING` (by older versions) past two reservation lifetimes, through the group committer.

use std::time::Duration;

use surge_persistence::committer::GroupCommitter;
use surge_persistence::now_millis;
use tokio::sync::watch;

/// How often the sweeper runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Sweeps every [`SWEEP_INTERVAL`] until `stop` turns true.
pub async fn run(committer: GroupCommitter, ttl: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        // Orders are written in their final state; one still PROCESSING two reservation
        // lifetimes after it began was left by an older version and cannot succeed any more.
        let stale_before =
            now_millis() - 2 * i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4);
        match committer.release_expired(stale_before).await {
            Ok(n) if n > 0 => tracing::info!(released = n, "released expired reservations"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reservation sweep failed"),
        }
    }
}
