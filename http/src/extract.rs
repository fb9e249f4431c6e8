//! Extractors whose rejections are [`ApiError`]s, so every bad request gets the JSON envelope.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// `axum::Json` with our error envelope, which also reads a number with a zero fraction (`3.0`)
/// as the integer it is: JSON Schema counts it as an integer, serde's integer types would not.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(request, state).await?;
        let bytes = whole_numbers_as_integers(bytes);
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Self(value))
    }
}

/// `Content-Type: application/json` or `application/<anything>+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The body with every number that has a zero fraction and fits an `i64` written as an
/// integer. Bodies without a `.` or an exponent (nearly all) are returned untouched, and so is
/// a body that is not JSON (its error is reported as it is).
fn whole_numbers_as_integers(bytes: Bytes) -> Bytes {
    if !bytes.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return bytes;
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return bytes;
    };
    if !make_whole_numbers_integers(&mut value) {
        return bytes;
    }
    serde_json::to_vec(&value).map_or(bytes, Bytes::from)
}

/// Rewrites whole floats inside `value` as integers; whether it changed anything.
fn make_whole_numbers_integers(value: &mut Value) -> bool {
    /// The largest float that converts to an `i64` exactly (2^63 is one past `i64::MAX`).
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < LIMIT => {
                // In range and whole: the cast is exact.
                #[allow(clippy::cast_possible_truncation)]
                let whole = f as i64;
                *value = Value::from(whole);
                true
            }
            _ => false,
        },
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, v| make_whole_numbers_integers(v) | changed),
        Value::Object(fields) => fields
            .values_mut()
            .fold(false, |changed, v| make_whole_numbers_integers(v) | changed),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_floats_become_integers_and_the_rest_is_untouched() {
        let body = Bytes::from_static(br#"{"a": 3.0, "b": [1.5, -2e3], "c": "x.0", "d": 7}"#);
        let out: Value =
            serde_json::from_slice(&whole_numbers_as_integers(body)).unwrap_or_default();
        assert_eq!(out["a"], Value::from(3_i64));
        assert!(out["a"].is_i64());
        assert_eq!(out["b"][0], Value::from(1.5));
        assert!(out["b"][1].is_i64());
        assert_eq!(out["c"], "x.0");
        let plain = Bytes::from_static(br#"{"d": 7}"#);
        assert_eq!(whole_numbers_as_integers(plain.clone()), plain);
        let broken = Bytes::from_static(b"{1.0");
        assert_eq!(whole_numbers_as_integers(broken.clone()), broken);
        let huge = Bytes::from_static(b"[1e30]");
        let out: Value =
            serde_json::from_slice(&whole_numbers_as_integers(huge)).unwrap_or_default();
        assert!(out[0].is_f64(), "too large for an integer: left as it is");
    }
}

/// `axum::extract::Path` with our error envelope.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` with our error envelope.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Any signed-in member: a valid `Authorization: Bearer` access token of a live login.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthenticated(
                "an Authorization: Bearer token is required",
            ))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthenticated(
                "the Authorization header must be 'Bearer <token>'",
            ))?;
        state.auth.verify(token).map(Self)
    }
}

/// A signed-in ADMIN; a USER gets 403.
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Authenticated(caller) = Authenticated::from_request_parts(parts, state).await?;
        if caller.role.is_admin() {
            Ok(Self(caller))
        } else {
            Err(ApiError::Forbidden("this needs the ADMIN role"))
        }
    }
}
