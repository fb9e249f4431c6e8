use thiserror::Error;

/// Why a store call failed. Callers map `Conflict` and `NotFound` to client errors; everything
/// else is an internal cause that is logged, never shown to a client.
#[derive(Debug, Error)]
pub enum PersistenceError {
    /// A unique constraint refused the write (for example a login id already taken).
    #[error("unique constraint violated")]
    Conflict,
    /// The row the call needs does not exist.
    #[error("not found")]
    NotFound,
    /// The write would take a value past its limit (for example stock above the maximum).
    #[error("limit exceeded")]
    LimitExceeded,
    /// The group-commit queue is full: back off.
    #[error("the write queue is full")]
    Overloaded,
    /// The group-commit writer has stopped.
    #[error("the writer has stopped")]
    Closed,
    /// The transaction a write was batched into failed before its commit: nothing was written.
    #[error("batched write failed: {0}")]
    Batch(String),
    /// The commit itself failed (the connection broke, the server did not answer): the write
    /// may or may not be durable. Callers must not assume either; they reconcile from durable
    /// state (an idempotent retry, or the sweeper).
    #[error("commit outcome unknown: {0}")]
    Unknown(String),
    /// The URL names a database kind this build does not speak.
    #[error("unsupported database url: {0}")]
    UnsupportedUrl(String),
    /// Applying the schema migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Creating the SQLite data directory failed.
    #[error("cannot create data directory: {0}")]
    Io(#[from] std::io::Error),
    /// A stored value this build cannot read (an unknown status spelling).
    #[error("unreadable stored value: {0}")]
    Corrupt(String),
    /// The read model's own store (MongoDB) failed.
    #[error("read model store: {0}")]
    ReadModel(String),
    /// Any other database error.
    #[error(transparent)]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for PersistenceError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict,
            _ => Self::Database(err),
        }
    }
}
