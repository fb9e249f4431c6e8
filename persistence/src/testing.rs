//! Scratch databases for unit tests of this crate and the crates above it (feature `testing`):
//! a real SQLite file in a fresh directory, migrated, removed when dropped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use surge_domain::{ItemName, LoginId, Money, Role, StockLevel, UserName};

use crate::users::NewUser;
use crate::{Database, DatabaseOptions, PersistenceError};

/// A migrated SQLite database in its own directory, deleted on drop.
#[derive(Debug)]
pub struct ScratchDb {
    /// The database.
    pub db: Database,
    dir: PathBuf,
}

impl ScratchDb {
    /// Creates and migrates a fresh database.
    pub async fn sqlite() -> Result<Self, PersistenceError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "surge-scratch-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let url = format!("sqlite://{}/surge.db", dir.display());
        let db =
            Database::connect(&url, &DatabaseOptions::for_backend(crate::Backend::Sqlite)).await?;
        Ok(Self { db, dir })
    }

    /// A member; returns its id.
    pub async fn member(&self, login: &str) -> Result<i64, PersistenceError> {
        let parse = |e: surge_domain::ValidationError| PersistenceError::Corrupt(e.to_string());
        let login_id = LoginId::parse(login).map_err(parse)?;
        let name = UserName::parse("Test member").map_err(parse)?;
        let user = self
            .db
            .insert_user(NewUser {
                login_id: &login_id,
                password_hash: "not-a-hash",
                name: &name,
                role: Role::User,
            })
            .await?;
        Ok(user.id.get())
    }

    /// An item with `stock` units at `price`; returns its id.
    pub async fn item(&self, price: i64, stock: i64) -> Result<i64, PersistenceError> {
        let parse = |e: surge_domain::ValidationError| PersistenceError::Corrupt(e.to_string());
        let item = self
            .db
            .insert_item(
                &ItemName::parse("Test item").map_err(parse)?,
                Money::parse(price, "price").map_err(parse)?,
                StockLevel::parse(stock).map_err(parse)?,
                None,
            )
            .await?;
        Ok(item.id.get())
    }

    /// Where every unit of an item is: (available in the row, in the owner's allotment, held,
    /// confirmed). Their sum never changes (no unit is created or lost).
    pub async fn units(&self, item_id: i64) -> Result<(i64, i64, i64, i64), PersistenceError> {
        let (available,): (i64,) = sqlx::query_as("SELECT available FROM items WHERE id = $1")
            .bind(item_id)
            .fetch_one(self.db.pool())
            .await?;
        let allotted: Option<(i64,)> =
            sqlx::query_as("SELECT units FROM stock_allotments WHERE item_id = $1")
                .bind(item_id)
                .fetch_optional(self.db.pool())
                .await?;
        let sum = |status: &'static str| {
            sqlx::query_as::<_, (i64,)>(
                "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM reservations \
                 WHERE item_id = $1 AND status = $2",
            )
            .bind(item_id)
            .bind(status)
            .fetch_one(self.db.pool())
        };
        let (held,) = sum("HELD").await?;
        let (confirmed,) = sum("CONFIRMED").await?;
        Ok((available, allotted.map_or(0, |a| a.0), held, confirmed))
    }

    /// Rows of a table (for "nothing was written" checks).
    pub async fn count(&self, table: &'static str) -> Result<i64, PersistenceError> {
        let (n,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(self.db.pool())
                .await?;
        Ok(n)
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
