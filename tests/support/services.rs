//! Where the test servers are, shared by the test binaries (`SURGE_TEST_*`, set by
//! `scripts/test.sh`; the defaults are this machine's).

/// The server URL of the PostgreSQL the tests may create databases on.
pub fn pg_admin_url() -> String {
    std::env::var("SURGE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into())
}

/// The Redis the tests use: its own database number (9), so nothing else on the server is
/// touched; every test node also gets a key prefix of its own.
pub fn redis_url() -> String {
    std::env::var("SURGE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/9".into())
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').expect("a database URL has a path");
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}
