//! The node `surge bench` starts itself when it is given no `--url`.
//!
//! The `surge` binary builds and runs that node (this crate cannot depend on the node's crate,
//! which depends on it); this module decides what differs from `surge serve`: a fresh temporary
//! SQLite directory, a loopback port chosen by the system, and a known ADMIN.

use std::path::PathBuf;

use crate::cli::{ADMIN_LOGIN_ID_VAR, ADMIN_PASSWORD_VAR};
use crate::scenarios::AdminCredentials;

/// The ADMIN login id of an embedded node when none is given.
pub const DEFAULT_ADMIN_LOGIN_ID: &str = "bench_admin";

/// The plan of an embedded node.
#[derive(Debug, Clone)]
pub struct EmbeddedNode {
    /// A new directory under the system's temporary directory, removed afterwards.
    pub data_dir: PathBuf,
    /// The given ADMIN, or [`DEFAULT_ADMIN_LOGIN_ID`] with a random password.
    pub admin: AdminCredentials,
}

impl EmbeddedNode {
    pub fn plan(admin: Option<AdminCredentials>) -> Self {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let admin = admin.unwrap_or_else(|| AdminCredentials {
            login_id: DEFAULT_ADMIN_LOGIN_ID.to_owned(),
            password: uuid::Uuid::new_v4().simple().to_string(),
        });
        Self {
            data_dir: std::env::temp_dir().join(format!("surge-bench-{unique}")),
            admin,
        }
    }

    /// The value of node setting `name` where it differs from `surge serve`; `None` means
    /// "as the environment says" (so `SURGE_FLUSH_TICK_MS` and the like still apply).
    /// `SURGE_ADMIN_ADDR` is always unset: a fixed operators' port could collide.
    pub fn setting(&self, name: &str) -> Option<String> {
        match name {
            "SURGE_HTTP_ADDR" => Some("127.0.0.1:0".to_owned()),
            "SURGE_DATABASE_URL" => Some(format!("sqlite://{}/surge.db", self.data_dir.display())),
            "SURGE_ADMIN_ADDR" => Some(String::new()),
            ADMIN_LOGIN_ID_VAR => Some(self.admin.login_id.clone()),
            ADMIN_PASSWORD_VAR => Some(self.admin.password.clone()),
            _ => None,
        }
    }

    /// Deletes the node's data directory (call after the node stopped).
    pub fn remove_data(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.data_dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_plan_gets_its_own_directory_and_a_loopback_port() {
        let a = EmbeddedNode::plan(None);
        let b = EmbeddedNode::plan(None);
        assert_ne!(a.data_dir, b.data_dir);
        assert_ne!(a.admin.password, b.admin.password);
        assert_eq!(a.admin.login_id, DEFAULT_ADMIN_LOGIN_ID);
        assert_eq!(a.setting("SURGE_HTTP_ADDR").as_deref(), Some("127.0.0.1:0"));
        assert!(
            a.setting("SURGE_DATABASE_URL")
                .is_some_and(|u| u.starts_with("sqlite://") && u.contains("surge-bench-"))
        );
        assert_eq!(a.setting("SURGE_FLUSH_TICK_MS"), None);
    }

    #[test]
    fn given_credentials_become_the_bootstrap_admin() {
        let node = EmbeddedNode::plan(Some(AdminCredentials {
            login_id: "ops".into(),
            password: "a long password".into(),
        }));
        assert_eq!(node.setting(ADMIN_LOGIN_ID_VAR).as_deref(), Some("ops"));
        assert_eq!(
            node.setting(ADMIN_PASSWORD_VAR).as_deref(),
            Some("a long password")
        );
    }
}
