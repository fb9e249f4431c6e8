//! Why a bench run could not produce a report.

/// A run that stopped before it could report. (A failed invariant is not an error: it is a
/// report whose `invariants_ok` is false.)
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options do not make a run.
    #[error("{0}")]
    Usage(String),
    /// No ADMIN to create items and coupons with.
    #[error(
        "admin credentials are needed: pass --admin-login-id and --admin-password, or set \
         SURGE_BOOTSTRAP_ADMIN_LOGIN_ID and SURGE_BOOTSTRAP_ADMIN_PASSWORD"
    )]
    NoAdminCredentials,
    /// A set-up or read-back request got no answer.
    #[error("{what}: {}", with_causes(.source))]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    /// A set-up or read-back request got an answer the run cannot go on with.
    #[error("{what}: {detail}")]
    Unexpected { what: String, detail: String },
    /// A comparison's scratch database or Redis keys could not be made or removed.
    #[error("{what}: {detail}")]
    Scratch { what: String, detail: String },
    /// The bench's own node did not start.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The plot could not be drawn or written.
    #[error("writing the plot {path}: {detail}")]
    Plot { path: String, detail: String },
}

/// Why a node the bench starts itself did not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A setting (from the environment, usually) the node refuses; the same for every node.
    #[error("invalid configuration for the bench's node: {0}")]
    Config(String),
    /// The node could not be started, open its database, bind its port, reach Redis, ….
    #[error("the bench's node could not start: {0}")]
    Start(String),
}

/// An error and its causes on one line: reqwest's own message ("error sending request") says
/// little without the cause under it ("connection refused").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
