use std::sync::Arc;

use surge_persistence::Database;

use crate::auth::AuthService;
use crate::metrics::Metrics;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The node's database.
    pub db: Database,
    /// Tokens, passwords, denylist.
    pub auth: Arc<AuthService>,
    /// Metric registry.
    pub metrics: Arc<Metrics>,
}
