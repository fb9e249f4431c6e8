//! Members: accounts with a login id, an argon2 password hash, a name and a role.

use sqlx::FromRow;
use surge_domain::{Event, EventType, LoginId, Role, UserId, UserName};

use crate::outbox;
use crate::{Database, PersistenceError, now_millis};

/// A member as stored.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// Database id.
    pub id: UserId,
    /// Unique login id.
    pub login_id: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// Display name.
    pub name: String,
    /// USER or ADMIN.
    pub role: Role,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

/// What sign-up (or the bootstrap admin) writes.
#[derive(Debug)]
pub struct NewUser<'a> {
    /// Validated login id.
    pub login_id: &'a LoginId,
    /// PHC string of the argon2id hash, never the password.
    pub password_hash: &'a str,
    /// Validated name.
    pub name: &'a UserName,
    /// Role to give.
    pub role: Role,
}

#[derive(FromRow)]
struct UserRow {
    id: i64,
    login_id: String,
    password_hash: String,
    name: String,
    role: String,
    created_at: i64,
}

impl TryFrom<UserRow> for UserRecord {
    type Error = PersistenceError;

    fn try_from(row: UserRow) -> Result<Self, Self::Error> {
        let role = Role::parse(&row.role).map_err(|e| {
            PersistenceError::Database(sqlx::Error::Decode(format!("users.role: {e}").into()))
        })?;
        Ok(Self {
            id: UserId::from_db(row.id),
            login_id: row.login_id,
            password_hash: row.password_hash,
            name: row.name,
            role,
            created_at: row.created_at,
        })
    }
}

impl Database {
    /// Creates a member. A taken login id is [`PersistenceError::Conflict`].
    pub async fn insert_user(&self, new: NewUser<'_>) -> Result<UserRecord, PersistenceError> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let row: UserRow = sqlx::query_as(
            "INSERT INTO users (login_id, password_hash, name, role, created_at) \
             VALUES ($1, $2, $3, $4, $5) \
             RETURNING id, login_id, password_hash, name, role, created_at",
        )
        .bind(new.login_id.as_str())
        .bind(new.password_hash)
        .bind(new.name.as_str())
        .bind(new.role.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let payload = serde_json::json!({
            "userId": row.id,
            "loginId": row.login_id,
            "name": row.name,
            "role": row.role,
        });
        let event = Event::new(
            EventType::MemberSignedUp,
            row.id,
            Some(row.id),
            now,
            payload,
        );
        outbox::append(&mut tx, &event).await?;
        tx.commit().await?;
        row.try_into()
    }

    /// The member with this login id, if any.
    pub async fn user_by_login_id(
        &self,
        login_id: &str,
    ) -> Result<Option<UserRecord>, PersistenceError> {
        let row: Option<UserRow> = sqlx::query_as(
            "SELECT id, login_id, password_hash, name, role, created_at \
             FROM users WHERE login_id = $1",
        )
        .bind(login_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(TryInto::try_into).transpose()
    }

    /// The member with this id, if any.
    pub async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, PersistenceError> {
        let row: Option<UserRow> = sqlx::query_as(
            "SELECT id, login_id, password_hash, name, role, created_at \
             FROM users WHERE id = $1",
        )
        .bind(id.get())
        .fetch_optional(self.pool())
        .await?;
        row.map(TryInto::try_into).transpose()
    }
}

impl Database {
    /// Marks a member verified (ADMIN): coupons for verified members only may be issued to
    /// them. Returns when, or `None` when there is no such member. Verifying twice keeps the
    /// first time.
    pub async fn verify_user(&self, user_id: UserId) -> Result<Option<i64>, PersistenceError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE users SET verified_at = $1 WHERE id = $2 AND verified_at IS NULL")
            .bind(now_millis())
            .bind(user_id.get())
            .execute(&mut *tx)
            .await?;
        let row: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT verified_at FROM users WHERE id = $1")
                .bind(user_id.get())
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(row.and_then(|(at,)| at))
    }

    /// When a member was verified, if ever (`None` also when there is no such member).
    pub async fn verified_at(&self, user_id: UserId) -> Result<Option<i64>, PersistenceError> {
        let row: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT verified_at FROM users WHERE id = $1")
                .bind(user_id.get())
                .fetch_optional(self.pool())
                .await?;
        Ok(row.and_then(|(at,)| at))
    }
}
