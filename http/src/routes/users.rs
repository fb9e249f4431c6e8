//! Sign-up and profiles.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use surge_domain::{LoginId, Password, Role, UserId, UserName};
use surge_persistence::PersistenceError;
use surge_persistence::users::{NewUser, UserRecord};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, Authenticated};
use crate::limits::ClientIp;
use crate::state::AppState;

/// Sign-up request.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignUpRequest {
    /// 4–64 characters of `[A-Za-z0-9_.-]`; unique regardless of case.
    #[schema(example = "buyer_01", min_length = 4, max_length = 64)]
    login_id: String,
    /// 8–128 characters, not on the list of common passwords and not containing the login id
    /// (rules beyond this schema: a 400 names the field).
    #[schema(example = "correct horse battery", min_length = 8, max_length = 128)]
    password: String,
    /// 1–64 characters.
    #[schema(example = "Kim Buyer", min_length = 1, max_length = 64)]
    name: String,
}

/// A member as clients see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserResponse {
    #[schema(value_type = i64)]
    user_id: UserId,
    login_id: String,
    name: String,
    #[schema(value_type = String, example = "USER")]
    role: Role,
}

impl From<UserRecord> for UserResponse {
    fn from(user: UserRecord) -> Self {
        Self {
            user_id: user.id,
            login_id: user.login_id,
            name: user.name,
            role: user.role,
        }
    }
}

/// Creates a member with the given role: sign-up (USER) and the bootstrap admin.
pub async fn create_member(
    state: &AppState,
    login_id: &LoginId,
    password: &Password,
    name: &UserName,
    role: Role,
) -> Result<UserRecord, ApiError> {
    let password_hash = state
        .auth
        .hash_password(password.expose().to_owned())
        .await?;
    state
        .db
        .insert_user(NewUser {
            login_id,
            password_hash: &password_hash,
            name,
            role,
        })
        .await
        .map_err(|e| match e {
            PersistenceError::Conflict => ApiError::DuplicateLoginId,
            other => other.into(),
        })
}

/// Sign up. Always creates a USER.
#[utoipa::path(post, path = "/api/v1/users", tag = "members", request_body = SignUpRequest,
    responses((status = 201, body = UserResponse), (status = 400, body = ErrorBody),
              (status = 409, description = "DUPLICATE_LOGIN_ID", body = ErrorBody),
              (status = 429, description = "RATE_LIMITED, with Retry-After: too many sign-ups from this address", body = ErrorBody)))]
pub async fn sign_up(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<SignUpRequest>,
) -> Result<(StatusCode, Json<UserResponse>), ApiError> {
    state.limits.check_signup(ip)?;
    let login_id = LoginId::parse(&req.login_id)?;
    let password = Password::parse(&req.password)?;
    password.check_new(&login_id)?;
    let name = UserName::parse(&req.name)?;
    let user = create_member(&state, &login_id, &password, &name, Role::User).await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// The caller's own profile.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "members", security(("bearer" = [])),
    responses((status = 200, body = UserResponse), (status = 401, body = ErrorBody)))]
pub async fn me(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<UserResponse>, ApiError> {
    let user = state
        .db
        .user_by_id(caller.user_id)
        .await?
        .ok_or(ApiError::Unauthenticated("this member no longer exists"))?;
    Ok(Json(user.into()))
}

/// A member's profile: that member or an ADMIN.
#[utoipa::path(get, path = "/api/v1/users/{userId}", tag = "members", security(("bearer" = [])),
    params(("userId" = i64, Path, description = "member id")),
    responses((status = 200, body = UserResponse), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "no such member, or not the caller")))]
pub async fn profile(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(user_id): ApiPath<i64>,
) -> Result<Json<UserResponse>, ApiError> {
    let user_id = UserId::parse(user_id, "userId").map_err(|_| ApiError::NotFound("member"))?;
    // Another member answers exactly like a missing one (no existence oracle).
    if !caller.may_access(user_id) {
        return Err(ApiError::NotFound("member"));
    }
    let user = state
        .db
        .user_by_id(user_id)
        .await?
        .ok_or(ApiError::NotFound("member"))?;
    Ok(Json(user.into()))
}
