use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

use crate::PersistenceError;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which SQL server is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A file next to the node: embedded mode.
    Sqlite,
    /// A PostgreSQL server: scaled mode.
    Postgres,
}

impl Backend {
    /// The back end a URL names, from its scheme.
    pub fn from_url(url: &str) -> Result<Self, PersistenceError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(PersistenceError::UnsupportedUrl(
                url.split(':').next().unwrap_or_default().to_owned(),
            ))
        }
    }

    /// Name shown in logs and admin pages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Pool sizing and timeouts.
#[derive(Debug, Clone)]
pub struct DatabaseOptions {
    /// Connections kept by the pool. SQLite has one writer at a time, so more connections there
    /// only add lock waits; PostgreSQL benefits from a few per core.
    pub max_connections: u32,
    /// How long a request may wait for a pooled connection before it fails; bounds waiting when
    /// the database is slow instead of queueing without limit.
    pub acquire_timeout: Duration,
}

impl DatabaseOptions {
    /// Defaults that suit the back end.
    pub fn for_backend(backend: Backend) -> Self {
        Self {
            max_connections: match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            },
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// The node's handle on its database: a connection pool and the kind of server behind it.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
}

impl Database {
    /// Connects, creating the SQLite file and its directory when needed, and applies the
    /// migrations of the back end.
    pub async fn connect(url: &str, options: &DatabaseOptions) -> Result<Self, PersistenceError> {
        install_default_drivers();
        let backend = Backend::from_url(url)?;
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; FULL makes every commit reach
                        // the disk before it returns, which an acknowledged write relies on; the
                        // busy timeout turns writer contention into a short wait, not an error.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await?;
        Ok(Self { pool, backend })
    }

    /// The pool, for stores in this crate.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which server this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The statement that opens a transaction that will write. SQLite's default (deferred)
    /// transaction takes the write lock only at its first write, and if another connection
    /// holds it then, a transaction that already read fails at once with "database is locked"
    /// (waiting could deadlock); `BEGIN IMMEDIATE` takes the lock first and waits its turn
    /// under the busy timeout instead.
    pub(crate) fn begin_write_statement(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }

    /// Starts a transaction that will write (see [`Self::begin_write_statement`]).
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        self.pool.begin_with(self.begin_write_statement()).await
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), PersistenceError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Waits for checked-out connections to come back and closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Milliseconds since the Unix epoch: the one time format stored in every table.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The file a `sqlite:` URL names, if it names one (not for in-memory databases).
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split_once('?').map_or(rest, |(p, _)| p);
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// Makes sure the directory of a SQLite file exists and that the file is created on first use.
fn prepare_sqlite_url(url: &str) -> Result<String, PersistenceError> {
    let Some(file) = sqlite_file(url) else {
        return Ok(url.to_owned());
    };
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let path = file.display();
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_follows_the_scheme() {
        assert_eq!(
            Backend::from_url("sqlite://a.db").ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::from_url("postgres://x/y").ok(),
            Some(Backend::Postgres)
        );
        assert!(Backend::from_url("mongodb://x").is_err());
    }

    #[test]
    fn sqlite_urls_get_create_mode() {
        let dir = std::env::temp_dir().join(format!("surge-url-{}", std::process::id()));
        let url = format!("sqlite://{}/x.db", dir.display());
        let prepared = prepare_sqlite_url(&url).ok();
        assert_eq!(prepared, Some(format!("{url}?mode=rwc")));
        assert!(dir.is_dir());
        let _ = std::fs::remove_dir_all(dir);
    }
}
