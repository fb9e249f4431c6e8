//! Tokens and passwords: HS256 access tokens, rotating refresh tokens, argon2id hashes and the
//! denylist of revoked logins.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use surge_domain::{Role, UserId};
use surge_persistence::now_millis;

use crate::cursor::Cursors;
use crate::error::ApiError;
use crate::password::{PasswordWorkers, hash_now};
use crate::refresh_grace::RefreshGrace;

/// Lifetime of an access token. Short, because a stolen one works until it expires unless its
/// login is revoked; it is also how long a revocation must stay on the denylist.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Lifetime of a refresh token; every refresh issues a new one with a fresh lifetime.
pub const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Shortest HS256 key accepted, in bytes (RFC 7518 asks for at least the hash size).
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Clock skew tolerated when checking `exp`.
const CLOCK_LEEWAY_SECS: u64 = 5;

/// The settings the token service is built from.
#[derive(Debug)]
pub struct AuthSettings {
    /// HS256 key.
    pub jwt_secret: SecretString,
}

/// Claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    /// The user id.
    sub: String,
    /// The login session; revoking it revokes this token.
    sid: String,
    /// USER or ADMIN.
    role: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// Who is calling, from a verified access token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The member.
    pub user_id: UserId,
    /// Their role when the token was issued.
    pub role: Role,
    /// The login session the token belongs to.
    pub session_id: String,
}

impl Caller {
    /// Whether the caller may act on `user_id`'s resources.
    pub fn may_access(&self, user_id: UserId) -> bool {
        self.user_id == user_id || self.role.is_admin()
    }
}

/// A fresh access and refresh token.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    /// Signed JWT.
    pub access_token: String,
    /// Opaque random token; only its hash is stored.
    pub refresh_token: String,
    /// Seconds the access token is valid.
    pub expires_in: u64,
}

/// Signs and verifies tokens, hashes passwords and keeps the denylist.
pub struct AuthService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Sessions revoked within the last access-token lifetime, with their revocation time.
    /// Checked on every authenticated request in memory; the database is the durable copy and
    /// reloads it at start. An entry can go once every access token of that session expired.
    revoked_sessions: RwLock<HashMap<String, i64>>,
    /// A real hash verified when the login id is unknown, so both failures cost the same time.
    dummy_hash: String,
    /// The threads that hash and verify passwords.
    passwords: PasswordWorkers,
    /// Signs list cursors (key derived from the same secret).
    cursors: Cursors,
    /// Racing refreshes of one token share the winner's pair.
    refresh_grace: RefreshGrace,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").finish_non_exhaustive()
    }
}

impl AuthService {
    /// Builds the service; `revoked` is the denylist loaded from the database.
    pub fn new(settings: &AuthSettings, revoked: Vec<(String, i64)>) -> Result<Self, String> {
        let key = settings.jwt_secret.expose_secret().as_bytes();
        if key.len() < MIN_JWT_SECRET_BYTES {
            return Err(format!(
                "the JWT secret must be at least {MIN_JWT_SECRET_BYTES} bytes"
            ));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = CLOCK_LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let dummy_hash = hash_now("dummy password for timing")?;
        let passwords = PasswordWorkers::start()?;
        Ok(Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            revoked_sessions: RwLock::new(revoked.into_iter().collect()),
            dummy_hash,
            passwords,
            cursors: Cursors::new(key),
            refresh_grace: RefreshGrace::default(),
        })
    }

    /// Racing refreshes of one token.
    pub fn refresh_grace(&self) -> &RefreshGrace {
        &self.refresh_grace
    }

    /// List cursors, signed with this deployment's key.
    pub fn cursors(&self) -> &Cursors {
        &self.cursors
    }

    /// Signs an access token and makes a new refresh token.
    pub fn issue(
        &self,
        user_id: UserId,
        role: Role,
        session_id: &str,
    ) -> Result<IssuedTokens, ApiError> {
        let now = now_secs();
        let claims = AccessClaims {
            sub: user_id.get().to_string(),
            sid: session_id.to_owned(),
            role: role.as_str().to_owned(),
            iat: now,
            exp: now + ACCESS_TOKEN_TTL.as_secs(),
            jti: random_token(),
        };
        let access_token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
                .map_err(ApiError::internal)?;
        Ok(IssuedTokens {
            access_token,
            refresh_token: random_token(),
            expires_in: ACCESS_TOKEN_TTL.as_secs(),
        })
    }

    /// Verifies an access token: signature, algorithm, expiry, and that its login is not revoked.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let invalid = ApiError::Unauthenticated("the access token is invalid or expired");
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map_err(|_| ApiError::Unauthenticated("the access token is invalid or expired"))?;
        let claims = data.claims;
        let user_id = claims
            .sub
            .parse::<i64>()
            .ok()
            .and_then(|id| UserId::parse(id, "sub").ok());
        let (Some(user_id), Ok(role)) = (user_id, Role::parse(&claims.role)) else {
            return Err(invalid);
        };
        if self.is_revoked(&claims.sid) {
            return Err(ApiError::Unauthenticated("this login has been signed out"));
        }
        Ok(Caller {
            user_id,
            role,
            session_id: claims.sid,
        })
    }

    fn is_revoked(&self, session_id: &str) -> bool {
        self.revoked_sessions
            .read()
            .map(|set| set.contains_key(session_id))
            .unwrap_or(true)
    }

    /// Puts a session on the denylist and drops entries no live access token can match.
    pub fn deny_session(&self, session_id: &str, revoked_at: i64) {
        let horizon = now_millis() - denylist_horizon_millis();
        if let Ok(mut set) = self.revoked_sessions.write() {
            set.retain(|_, at| *at >= horizon);
            set.insert(session_id.to_owned(), revoked_at);
        }
    }

    /// Hashes a password with argon2id on the blocking pool.
    pub async fn hash_password(&self, password: String) -> Result<String, ApiError> {
        self.passwords.hash(password).await
    }

    /// Checks a password against a stored hash, or against a dummy hash when there is none, so
    /// that an unknown login id and a wrong password take the same time.
    /// Fails only when the hashing queue is full (503).
    pub async fn verify_password(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, ApiError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let ok = self.passwords.verify(password, hash).await?;
        Ok(ok && known)
    }
}

/// How long a revoked session must stay on the denylist, in milliseconds.
pub fn denylist_horizon_millis() -> i64 {
    i64::try_from(ACCESS_TOKEN_TTL.as_millis()).unwrap_or(i64::MAX)
}

/// 256 random bits, URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a refresh token, hex: what the database keeps instead of the token.
pub fn refresh_token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_secs() -> u64 {
    u64::try_from(now_millis() / 1000).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn service() -> AuthService {
        let settings = AuthSettings {
            jwt_secret: SecretString::from("k".repeat(40)),
        };
        AuthService::new(&settings, vec![]).unwrap()
    }

    #[test]
    fn issued_tokens_verify_and_revocation_applies() {
        let auth = service();
        let tokens = auth.issue(UserId::from_db(7), Role::Admin, "s1").unwrap();
        let caller = auth.verify(&tokens.access_token).unwrap();
        assert_eq!(caller.user_id, UserId::from_db(7));
        assert_eq!(caller.role, Role::Admin);
        auth.deny_session("s1", now_millis());
        assert!(auth.verify(&tokens.access_token).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        let settings = AuthSettings {
            jwt_secret: SecretString::from("short"),
        };
        assert!(AuthService::new(&settings, vec![]).is_err());
    }

    #[test]
    fn refresh_hash_is_stable_hex() {
        let h = refresh_token_hash("abc");
        assert_eq!(h.len(), 64);
        assert_eq!(h, refresh_token_hash("abc"));
        assert_ne!(h, refresh_token_hash("abd"));
    }
}
