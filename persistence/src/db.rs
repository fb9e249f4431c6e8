use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, SqlStr};

use crate::PersistenceError;

/// One migration of one dialect, rendered by `build.rs` from `migrations/*.sql`.
#[derive(Debug)]
struct EmbeddedMigration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

// SQLITE_MIGRATIONS and POSTGRES_MIGRATIONS.
include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The migrations of a back end, as sqlx's migrator takes them: the same version, description,
/// text (so the same checksum) and transaction mode as `sqlx::migrate!` would read from a
/// folder of the rendered files.
#[derive(Debug, Clone, Copy)]
struct EmbeddedMigrations(Backend);

impl EmbeddedMigrations {
    fn list(self) -> &'static [EmbeddedMigration] {
        match self.0 {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        }
    }

    fn migrations(self) -> Vec<Migration> {
        self.list()
            .iter()
            .map(|m| {
                Migration::new(
                    m.version,
                    Cow::Borrowed(m.description),
                    MigrationType::Simple,
                    SqlStr::from_static(m.sql),
                    m.sql.starts_with("-- no-transaction"),
                )
            })
            .collect()
    }
}

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        Box::pin(std::future::ready(Ok(self.migrations())))
    }
}

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
                        // Checkpoints are the background task's ([`checkpoint_wal`]); the
                        // automatic one is only a backstop far above what it lets build up.
                        conn.execute(sqlx::AssertSqlSafe(format!(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; \
                             PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES};"
                        )))
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Migrator::new(EmbeddedMigrations(backend))
            .await?
            .run(&pool)
            .await?;
        if backend == Backend::Sqlite {
            tokio::spawn(checkpoint_wal(pool.clone()));
        }
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

    /// This database's identity: the first node to ask stores `candidate` (a random id), every
    /// later one reads it back. It names the database in state kept elsewhere (Redis).
    pub async fn identity(&self, candidate: &str) -> Result<String, PersistenceError> {
        sqlx::query(
            "INSERT INTO deployment (name, value) VALUES ('identity', $1) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(candidate)
        .execute(&self.pool)
        .await?;
        let (identity,): (String,) =
            sqlx::query_as("SELECT value FROM deployment WHERE name = 'identity'")
                .fetch_one(&self.pool)
                .await?;
        Ok(identity)
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

/// How often the WAL is checkpointed into the database file.
///
/// Durability decision: a commit is durable once its WAL frames are fsynced (`synchronous =
/// FULL`); the checkpoint only copies them into the main file. SQLite's automatic checkpoint
/// runs inside the COMMIT that crosses 1,000 pages, that is inside the order writer's cycle,
/// every few tens of milliseconds under load, and copies a hot index page once per checkpoint
/// however many commits rewrote it. A passive checkpoint from another connection, a few times a
/// second, takes that work off the writer's cycle (it never waits for or blocks a writer) and
/// copies each hot page once per interval.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// The automatic checkpoint, kept as a backstop in case the background one falls behind
/// (pages of the WAL; 4 KiB each): ~64 MiB, far above what a quarter second of writes adds.
const WAL_BACKSTOP_PAGES: u32 = 16_384;

/// Checkpoints the WAL passively every [`CHECKPOINT_EVERY`] until the pool closes. A failed
/// checkpoint is logged and tried again next time (the backstop bounds the WAL meanwhile).
async fn checkpoint_wal(pool: AnyPool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "checkpointing the WAL failed");
        }
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

    /// SHA-384 of every migration as a database that applied it recorded it (the files of
    /// the former `migrations/sqlite/` and `migrations/postgres/` folders). A rendered
    /// migration that no longer matches would stop every node on such a database.
    const APPLIED_CHECKSUMS: [(Backend, &[&str]); 2] = [
        (
            Backend::Sqlite,
            &[
                "184de8bbba08e756eb8c72e73e99d0ff8f0ca66c468f777043976a6fe44d365a9fd2b1bf852cbf6cb8b653a092d6441a",
                "e32ca5bc9e36d01b2186dc386122b0be39480906fcd3a8422bb7e5b03a5eb0aff22614549a78e93d4e5076cbf1312c56",
                "912bd171c02faa9856418d9b44b66686eb57b6b6620b97b6a37061e6e513b091aa9b30603b72f7544628980e8330690a",
            ],
        ),
        (
            Backend::Postgres,
            &[
                "87394f21d6f81b2cbbbfc061f19a0e0085c88b6291806e765b7fd3fc237db3aa560256781eabc509a744ca03db0312f1",
                "db02ed6ea2d1d9c4916b8aaee0670cae960df3585a6ec2cef86ff958a0a60f32c0d97051a5fdc520c604423b742ea513",
                "21faaeae4d4cb401eeef46571b39832a654595a4d20eaf10d56351299c4eff67dc88bd8f769c2031fb8df8e8ace48318",
            ],
        ),
    ];

    #[test]
    fn applied_migrations_keep_their_checksums() {
        for (backend, expected) in APPLIED_CHECKSUMS {
            let migrations = EmbeddedMigrations(backend).migrations();
            assert!(migrations.len() >= expected.len(), "{backend:?}");
            for (migration, checksum) in migrations.iter().zip(expected) {
                let hex: String = migration
                    .checksum
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(&hex, checksum, "{backend:?} {}", migration.version);
            }
        }
    }

    #[test]
    fn every_dialect_has_the_same_versions_in_order_and_no_marker_left() {
        let versions = |backend| {
            EmbeddedMigrations(backend)
                .list()
                .iter()
                .map(|m| (m.version, m.description))
                .collect::<Vec<_>>()
        };
        let sqlite = versions(Backend::Sqlite);
        assert_eq!(sqlite, versions(Backend::Postgres));
        assert!(sqlite.windows(2).all(|w| w[0].0 < w[1].0), "{sqlite:?}");
        assert_eq!(sqlite[0], (1, "members and items"));
        for backend in [Backend::Sqlite, Backend::Postgres] {
            for m in EmbeddedMigrations(backend).list() {
                assert!(!m.sql.contains("{{"), "{backend:?} {}", m.version);
            }
        }
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
