//! Login sessions and their refresh tokens.
//!
//! A session is one login. Refresh tokens are stored as hashes only and are single use: using
//! one marks it rotated and issues the next in the same transaction. Presenting a rotated token
//! again means it was copied, so the whole session is revoked.

use surge_domain::{Event, EventType, UserId};

use crate::outbox;
use crate::{Database, PersistenceError};

/// What happened to a presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was valid; it is now spent and the new one is stored.
    Rotated {
        /// The session the tokens belong to.
        session_id: String,
        /// Its member.
        user_id: UserId,
    },
    /// The token was rotated within the grace (a racing refresh): nothing changed; the
    /// caller may hand out the pair the winner made, if it has it.
    Raced,
    /// The token had already been used: the session is now revoked.
    Reused {
        /// The revoked session.
        session_id: String,
    },
    /// Unknown, expired, or its session was revoked.
    Invalid,
}

impl Database {
    /// Stores a new session and its first refresh token in one transaction.
    pub async fn create_session(
        &self,
        session_id: &str,
        user_id: UserId,
        refresh_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), PersistenceError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO auth_sessions (id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(session_id)
        .bind(user_id.get())
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(refresh_hash)
        .bind(session_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Spends `old_hash` and stores `new_hash` in its place, or detects reuse and revokes.
    ///
    /// The conditional update comes first so that of two concurrent uses of one token exactly
    /// one wins; the loser sees a rotated token and revokes the session, as reuse must.
    pub async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        now: i64,
        new_expires_at: i64,
        grace_ms: i64,
    ) -> Result<Rotation, PersistenceError> {
        let mut tx = self.begin_write().await?;
        let spent = sqlx::query(
            "UPDATE refresh_tokens SET rotated_at = $1 \
             WHERE token_hash = $2 AND rotated_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(old_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let found: Option<(String, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT s.id, s.user_id, s.revoked_at, t.rotated_at \
             FROM refresh_tokens t JOIN auth_sessions s ON s.id = t.session_id \
             WHERE t.token_hash = $1",
        )
        .bind(old_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((session_id, user_id, revoked_at, _)) = found else {
            return Ok(Rotation::Invalid);
        };
        if revoked_at.is_some() {
            tx.commit().await?;
            return Ok(Rotation::Invalid);
        }
        if spent == 0 {
            // Either expired or already rotated. Only reuse revokes the session.
            let rotated: Option<(i64,)> = sqlx::query_as(
                "SELECT rotated_at FROM refresh_tokens WHERE token_hash = $1 AND rotated_at IS NOT NULL",
            )
            .bind(old_hash)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((rotated_at,)) = rotated else {
                tx.commit().await?;
                return Ok(Rotation::Invalid);
            };
            if now - rotated_at <= grace_ms {
                // Racing the refresh that rotated it: not a reuse.
                tx.commit().await?;
                return Ok(Rotation::Raced);
            }
            revoke_in(&mut tx, &session_id, now).await?;
            tx.commit().await?;
            return Ok(Rotation::Reused { session_id });
        }
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(new_hash)
        .bind(&session_id)
        .bind(now)
        .bind(new_expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE auth_sessions SET expires_at = $1 WHERE id = $2")
            .bind(new_expires_at)
            .bind(&session_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Rotation::Rotated {
            session_id,
            user_id: UserId::from_db(user_id),
        })
    }

    /// Revokes a session (logout): its refresh tokens and access tokens stop working.
    pub async fn revoke_session(&self, session_id: &str, now: i64) -> Result<(), PersistenceError> {
        let mut tx = self.begin_write().await?;
        revoke_in(&mut tx, session_id, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sessions revoked after `since`, with their revocation time: the access-token denylist
    /// a node loads at start.
    pub async fn sessions_revoked_since(
        &self,
        since: i64,
    ) -> Result<Vec<(String, i64)>, PersistenceError> {
        Ok(sqlx::query_as(
            "SELECT id, revoked_at FROM auth_sessions \
             WHERE revoked_at IS NOT NULL AND revoked_at > $1",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?)
    }

    /// Deletes sessions and refresh tokens whose refresh lifetime ended before `before`.
    pub async fn purge_expired_sessions(&self, before: i64) -> Result<u64, PersistenceError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM refresh_tokens WHERE session_id IN \
             (SELECT id FROM auth_sessions WHERE expires_at < $1)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let gone = sqlx::query("DELETE FROM auth_sessions WHERE expires_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }
}

/// Revokes a session and writes its `SessionRevoked` event (other nodes drop its tokens).
async fn revoke_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    session_id: &str,
    now: i64,
) -> Result<(), PersistenceError> {
    let revoked: Option<(i64,)> = sqlx::query_as(
        "UPDATE auth_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL \
         RETURNING user_id",
    )
    .bind(now)
    .bind(session_id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((user_id,)) = revoked {
        let payload = serde_json::json!({"sessionId": session_id, "userId": user_id});
        let event = Event::new(
            EventType::SessionRevoked,
            user_id,
            Some(user_id),
            now,
            payload,
        );
        outbox::append(tx, &event).await?;
    }
    Ok(())
}
