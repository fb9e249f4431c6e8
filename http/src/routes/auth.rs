//! Login, refresh with rotation, logout.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use surge_persistence::now_millis;
use surge_persistence::sessions::Rotation;
use utoipa::ToSchema;

use crate::auth::{IssuedTokens, REFRESH_TOKEN_TTL, random_token, refresh_token_hash};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Authenticated};
use crate::limits::ClientIp;
use crate::refresh_grace::REFRESH_GRACE;
use crate::state::AppState;

/// Name of the cookie that carries the refresh token for browsers.
const REFRESH_COOKIE: &str = "refresh_token";
/// The cookie is only sent to the auth routes that use it.
const REFRESH_COOKIE_PATH: &str = "/api/v1/auth";

/// Login request.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginRequest {
    login_id: String,
    password: String,
}

/// Refresh request; the token may come in the body or in the `refresh_token` cookie.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Tokens handed to a client.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    access_token: String,
    refresh_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: u64,
}

fn refresh_ttl_millis() -> i64 {
    i64::try_from(REFRESH_TOKEN_TTL.as_millis()).unwrap_or(i64::MAX)
}

fn token_response(tokens: IssuedTokens) -> Response {
    let cookie = format!(
        "{REFRESH_COOKIE}={}; HttpOnly; SameSite=Strict; Secure; Path={REFRESH_COOKIE_PATH}; Max-Age={}",
        tokens.refresh_token,
        REFRESH_TOKEN_TTL.as_secs()
    );
    let body = TokenResponse {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        token_type: "Bearer",
        expires_in: tokens.expires_in,
    };
    let mut response = Json(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    // Tokens must never sit in a shared or browser cache.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Log in with login id and password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse),
              (status = 401, description = "INVALID_CREDENTIALS", body = ErrorBody),
              (status = 429, description = "RATE_LIMITED, with Retry-After: too many attempts from this address or for this account, or the account backs off after failed logins", body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    state.limits.check_login(ip, &req.login_id)?;
    let user = state.db.user_by_login_id(&req.login_id).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    // The attempt already counts against the account's streak (`check_login`); only a success
    // ends it.
    if !state.auth.verify_password(req.password, hash).await? {
        return Err(ApiError::InvalidCredentials);
    }
    let user = user.ok_or(ApiError::InvalidCredentials)?;
    state.limits.login_succeeded(&req.login_id);
    let session_id = random_token();
    let tokens = state.auth.issue(user.id, user.role, &session_id)?;
    let now = now_millis();
    state
        .db
        .create_session(
            &session_id,
            user.id,
            &refresh_token_hash(&tokens.refresh_token),
            now,
            now + refresh_ttl_millis(),
        )
        .await?;
    Ok(token_response(tokens))
}

/// The presented refresh token, and whether it came from the cookie.
fn refresh_token_from(headers: &HeaderMap, body: &Bytes) -> Result<(String, bool), ApiError> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        let req: RefreshRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid refresh request: {e}")))?;
        return Ok((req.refresh_token, false));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == REFRESH_COOKIE)
        .map(|(_, value)| (value.to_owned(), true))
        .ok_or(ApiError::Unauthenticated("a refresh token is required"))
}

/// Whether a cookie refresh comes from this API's own origin or a `SURGE_CORS_ORIGINS` one.
/// A browser sends `Origin` on every POST, so a page on another site that makes the browser
/// send the cookie (where `SameSite` does not stop it) is refused before the token is spent;
/// a client that is not a browser sends no `Origin` and passes.
fn same_or_allowed_origin(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if allowed.iter().any(|o| o == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!((host, origin_host), (Some(h), Some(o)) if h.eq_ignore_ascii_case(o))
}

/// Trade a refresh token for new tokens. The presented token is spent; presenting it again
/// revokes the whole login.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "a cookie refresh from another origin")))]
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (presented, from_cookie) = refresh_token_from(&headers, &body)?;
    if from_cookie && !same_or_allowed_origin(&headers, &state.cors_origins) {
        return Err(ApiError::Forbidden(
            "a refresh with the cookie must come from this site or a configured origin",
        ));
    }
    let next = random_token();
    let now = now_millis();
    let presented_hash = refresh_token_hash(&presented);
    let grace = state.auth.refresh_grace().join(&presented_hash);
    let grace_ms = i64::try_from(REFRESH_GRACE.as_millis()).unwrap_or(i64::MAX);
    let outcome = state
        .db
        .rotate_refresh_token(
            &presented_hash,
            &refresh_token_hash(&next),
            now,
            now + refresh_ttl_millis(),
            grace_ms,
        )
        .await?;
    match outcome {
        Rotation::Rotated {
            session_id,
            user_id,
        } => {
            let user = state
                .db
                .user_by_id(user_id)
                .await?
                .ok_or(ApiError::Unauthenticated("this member no longer exists"))?;
            let mut tokens = state.auth.issue(user.id, user.role, &session_id)?;
            tokens.refresh_token = next;
            grace.publish(&tokens);
            Ok(token_response(tokens))
        }
        // A refresh racing the one that rotated this token gets the same pair when this node
        // made it; otherwise (the winner ran on another node) a plain 401, and the login lives.
        Rotation::Raced => match grace.winner().await {
            Some(tokens) => Ok(token_response(tokens)),
            None => Err(ApiError::Unauthenticated(
                "this refresh token was just used; use the tokens that refresh returned",
            )),
        },
        Rotation::Reused { session_id } => {
            state.auth.deny_session(&session_id, now);
            tracing::warn!("refresh token reused; login revoked");
            Err(ApiError::Unauthenticated(
                "this refresh token was already used; the login has been revoked",
            ))
        }
        Rotation::Invalid => Err(ApiError::Unauthenticated(
            "the refresh token is invalid or expired",
        )),
    }
}

/// Sign out: the access token and the refresh token of this login stop working.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Response, ApiError> {
    let now = now_millis();
    state.db.revoke_session(&caller.session_id, now).await?;
    state.auth.deny_session(&caller.session_id, now);
    let clear = format!(
        "{REFRESH_COOKIE}=; HttpOnly; SameSite=Strict; Secure; Path={REFRESH_COOKIE_PATH}; Max-Age=0"
    );
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}
