//! [`RefreshGrace`]: two refreshes of one token that race (a browser's two tabs, a retry after
//! a lost answer) both get the pair the winner made, instead of the loser counting as a reuse
//! that revokes the login. Only within [`REFRESH_GRACE`] of the first, and only on this node
//! (a racing refresh that lands on another node of a cluster is still a reuse).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::IssuedTokens;

/// How long after a token's first refresh a second one gets the same pair. Short: a stolen
/// token replayed within it gets the pair too, which is the price of not logging a member out
/// for a double click.
pub const REFRESH_GRACE: Duration = Duration::from_secs(2);
/// Longest a racing refresh waits for the winner's pair.
const WAIT_FOR_WINNER: Duration = Duration::from_secs(1);
/// How long a slot is kept: twice the grace. The database decides what is a race (a rotation
/// at most [`REFRESH_GRACE`] old), and a slot opens just before its rotation; kept for the
/// grace alone, a race the database allows near the end could find its slot gone and be
/// refused (401) without the login being revoked.
const KEEP_SLOT: Duration = Duration::from_secs(4);
const _: () = assert!(KEEP_SLOT.as_millis() >= 2 * REFRESH_GRACE.as_millis());

type Slot = Arc<watch::Sender<Option<IssuedTokens>>>;

/// The refreshes of the last [`REFRESH_GRACE`], by the hash of the token they presented.
#[derive(Debug, Default)]
pub struct RefreshGrace {
    /// Concurrency decision: a std lock for a map update, never held across an await.
    slots: Mutex<HashMap<String, (Instant, Slot)>>,
}

/// One refresh's place: the winner publishes its pair here, a racing one waits for it.
#[derive(Debug)]
pub struct GraceSlot(Slot);

impl RefreshGrace {
    /// Joins (or opens) the slot of the token whose hash is `token_hash`. Called before the
    /// rotation, so of two racing refreshes the loser always finds the winner's slot.
    pub fn join(&self, token_hash: &str) -> GraceSlot {
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.retain(|_, (opened, _)| now.duration_since(*opened) < KEEP_SLOT);
        let (_, slot) = slots
            .entry(token_hash.to_owned())
            .or_insert_with(|| (now, Arc::new(watch::Sender::new(None))));
        GraceSlot(slot.clone())
    }
}

impl GraceSlot {
    /// The winner: its pair, for whoever races it.
    pub fn publish(&self, tokens: &IssuedTokens) {
        self.0.send_replace(Some(tokens.clone()));
    }

    /// The loser: the winner's pair, if one is published within a short wait.
    pub async fn winner(&self) -> Option<IssuedTokens> {
        let mut rx = self.0.subscribe();
        let published = tokio::time::timeout(WAIT_FOR_WINNER, rx.wait_for(Option::is_some)).await;
        match published {
            Ok(Ok(tokens)) => tokens.clone(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pair(n: u8) -> IssuedTokens {
        IssuedTokens {
            access_token: format!("access-{n}"),
            refresh_token: format!("refresh-{n}"),
            expires_in: 900,
        }
    }

    #[tokio::test]
    async fn a_racing_refresh_gets_the_winners_pair_and_a_late_one_gets_nothing() {
        let grace = RefreshGrace::default();
        let winner = grace.join("h1");
        let loser = grace.join("h1");
        winner.publish(&pair(1));
        assert_eq!(loser.winner().await.unwrap().refresh_token, "refresh-1");
        // Another token's slot is its own.
        let other = grace.join("h2");
        tokio::time::pause();
        assert!(other.winner().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_ends() {
        let grace = RefreshGrace::default();
        grace.join("h1").publish(&pair(1));
        tokio::time::advance(KEEP_SLOT + Duration::from_millis(1)).await;
        // After the slot's time it is gone: a new refresh finds nothing published.
        assert!(grace.join("h1").winner().await.is_none());
    }
}
