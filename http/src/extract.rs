//! Extractors whose rejections are [`ApiError`]s, so every bad request gets the JSON envelope.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

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

/// The body with every number written with a zero fraction (`3.0`, `-12.00`) written as the
/// integer it is, and everything else byte for byte: duplicate keys, order and positions stay
/// as they were (so errors read the same), and digits are never rounded. A body without such a
/// number is returned untouched, without a copy.
fn whole_numbers_as_integers(bytes: Bytes) -> Bytes {
    let b = &bytes[..];
    let mut out: Option<Vec<u8>> = None;
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let number = !in_string && (c == b'-' || c.is_ascii_digit());
        if !number {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    in_string = false;
                }
            } else if c == b'"' {
                in_string = true;
            }
            if let Some(out) = out.as_mut() {
                out.push(c);
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
            i += 1;
        }
        let token = &b[start..i];
        match whole_part(token) {
            Some(whole) => out
                .get_or_insert_with(|| b[..start].to_vec())
                .extend_from_slice(whole),
            None => {
                if let Some(out) = out.as_mut() {
                    out.extend_from_slice(token);
                }
            }
        }
    }
    out.map_or(bytes, Bytes::from)
}

/// `-12` of `-12.00`: a plain number whose fraction is all zeros (no exponent).
fn whole_part(token: &[u8]) -> Option<&[u8]> {
    let dot = token.iter().position(|&c| c == b'.')?;
    let (whole, fraction) = (&token[..dot], &token[dot + 1..]);
    let digits = whole.strip_prefix(b"-").unwrap_or(whole);
    let plain = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && !fraction.is_empty()
        && fraction.iter().all(|&c| c == b'0');
    plain.then_some(whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_floats_become_integers_and_the_rest_is_untouched() {
        let rewrite = |body: &'static str| {
            String::from_utf8(
                whole_numbers_as_integers(Bytes::from_static(body.as_bytes())).to_vec(),
            )
            .unwrap_or_default()
        };
        assert_eq!(
            rewrite(r#"{"a": 3.0, "b": [1.5, -2e3, -7.00], "c": "x 4.0 \" 5.0", "d": 7}"#),
            r#"{"a": 3, "b": [1.5, -2e3, -7], "c": "x 4.0 \" 5.0", "d": 7}"#
        );
        // Nothing to rewrite: the same bytes, not a copy.
        let plain = Bytes::from_static(br#"{"lines": [{"itemId": 1, "quantity": 2}]}"#);
        assert_eq!(
            whole_numbers_as_integers(plain.clone()).as_ptr(),
            plain.as_ptr()
        );
        // Duplicate keys and digits beyond an f64's precision stay as they were.
        assert_eq!(
            rewrite(r#"{"a": 9007199254740993.0, "a": 1}"#),
            r#"{"a": 9007199254740993, "a": 1}"#
        );
        assert_eq!(rewrite("{1.0"), "{1");
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
