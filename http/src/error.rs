//! The one error type of the HTTP surface and its JSON envelope.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use surge_domain::ValidationError;
use surge_persistence::PersistenceError;
use thiserror::Error;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, UPPER_SNAKE.
    #[schema(example = "VALIDATION_FAILED")]
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Extra facts about the error (the offending field, failing dependency, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

/// Everything a handler can answer with instead of success.
///
/// The display text of a client error is what the client reads; an internal error's cause is
/// logged and replaced by a fixed message.
#[derive(Debug, Error)]
pub enum ApiError {
    /// A field broke its rule.
    #[error("{0}")]
    Validation(#[from] ValidationError),
    /// The request could not be read (bad JSON, wrong type, bad path or query parameter).
    #[error("{0}")]
    BadRequest(String),
    /// A JSON body with a field of the wrong type, a missing field or a field the request does
    /// not have, named in plain words.
    #[error("{message}")]
    BadField {
        /// The JSON path of the field (`lines[0].quantity`).
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The body is larger than the server accepts.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body did not arrive whole in time.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// The request target is longer than the server accepts.
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request's headers are larger than the server accepts.
    #[error("the request headers are larger than {limit} bytes")]
    HeadersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A JSON body without `Content-Type: application/json`.
    #[error("expected a body with Content-Type: application/json")]
    UnsupportedMediaType,
    /// No valid access token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// Wrong login id or password (deliberately the same answer for both).
    #[error("login id or password is wrong")]
    InvalidCredentials,
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such resource (or route).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The route exists, the method does not.
    #[error("method not allowed for this path")]
    MethodNotAllowed,
    /// The login id is taken.
    #[error("login id is already taken")]
    DuplicateLoginId,
    /// A dependency this request needs is down.
    #[error("{message}")]
    Unavailable {
        /// What is failing.
        message: String,
        /// Seconds the client should wait.
        retry_after_secs: u32,
    },
    /// Too much work or an open circuit: come back later.
    #[error("{message}")]
    Overloaded {
        /// Why.
        message: String,
        /// Seconds to wait.
        retry_after_secs: u32,
    },
    /// The client went over a rate limit: come back after `Retry-After`.
    #[error("{message}")]
    RateLimited {
        /// Which limit.
        message: &'static str,
        /// Seconds until the limit lets the next request through.
        retry_after_secs: u32,
    },
    /// A business refusal with its own code and details (OUT_OF_STOCK, ...).
    #[error("{message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// Code.
        code: &'static str,
        /// Human text.
        message: String,
        /// Details.
        details: Option<Value>,
    },
    /// A bug or an unexpected failure of a dependency. Logged, never shown.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// Wraps an unexpected cause; the cause is logged when the response is built.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    /// A 409 refusal with its code.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Refused {
            status: StatusCode::CONFLICT,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// 422 `IDEMPOTENCY_KEY_REUSED`: the key belongs to another request.
    pub fn idempotency_key_reused(message: impl Into<String>) -> Self {
        Self::Refused {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "IDEMPOTENCY_KEY_REUSED",
            message: message.into(),
            details: None,
        }
    }

    /// The same error with `details` attached (only refusals carry details).
    pub fn with_details(self, details: Value) -> Self {
        match self {
            Self::Refused {
                status,
                code,
                message,
                ..
            } => Self::Refused {
                status,
                code,
                message,
                details: Some(details),
            },
            other => other,
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Validation(_) | Self::BadRequest(_) | Self::BadField { .. } => {
                (StatusCode::BAD_REQUEST, "VALIDATION_FAILED")
            }
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT"),
            Self::UriTooLong { .. } => (StatusCode::URI_TOO_LONG, "URI_TOO_LONG"),
            Self::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HEADERS_TOO_LARGE",
            ),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
            }
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            Self::InvalidCredentials => (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            Self::DuplicateLoginId => (StatusCode::CONFLICT, "DUPLICATE_LOGIN_ID"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Self::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            Self::Refused { status, code, .. } => (*status, *code),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let details = match &self {
            Self::Validation(e) => Some(json!({ "field": e.field })),
            Self::BadField { field, .. } => Some(json!({ "field": field })),
            Self::Refused { details, .. } => details.clone(),
            Self::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                None
            }
            _ => None,
        };
        let body = ErrorBody {
            code,
            message: self.to_string(),
            details,
        };
        let mut response = (status, Json(body)).into_response();
        if let Self::Unavailable {
            retry_after_secs, ..
        }
        | Self::Overloaded {
            retry_after_secs, ..
        }
        | Self::RateLimited {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

impl From<PersistenceError> for ApiError {
    fn from(err: PersistenceError) -> Self {
        match err {
            PersistenceError::Database(sqlx::Error::PoolTimedOut) => Self::Unavailable {
                message: "the database is not answering".into(),
                retry_after_secs: 1,
            },
            other => Self::internal(other),
        }
    }
}

/// The limit of request bodies, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

fn from_bytes_rejection(rejection: &BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        }
    } else {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match &rejection {
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::BytesRejection(inner) => from_bytes_rejection(inner),
            JsonRejection::JsonDataError(_) => match plain_json_problem(&rejection.body_text()) {
                Some((field, message)) => Self::BadField { field, message },
                None => Self::BadRequest(rejection.body_text()),
            },
            JsonRejection::JsonSyntaxError(_) => Self::BadRequest(format!(
                "the body is not valid JSON ({})",
                location(&rejection.body_text())
            )),
            _ => Self::BadRequest(rejection.body_text()),
        }
    }
}

/// "line 1 column 7" of a serde message, or "position unknown".
fn location(text: &str) -> String {
    text.rfind(" at line ").map_or_else(
        || "position unknown".to_owned(),
        |i| text[i + 4..].trim().to_owned(),
    )
}

/// The field and a plain-words message of a serde data error as axum renders it
/// (`Failed to deserialize the JSON body into the target type: lines[0].quantity: invalid type:
/// string "a", expected i64 at line 1 column 30`): no Rust type names, the field named. `None`
/// when the text has another shape.
fn plain_json_problem(text: &str) -> Option<(String, String)> {
    let inner = text.split_once("target type: ")?.1;
    let inner = inner.rfind(" at line ").map_or(inner, |i| &inner[..i]);
    let (path, problem) = match inner.split_once(": ") {
        Some((path, problem)) if !path.contains(' ') => (path, problem),
        _ => (".", inner),
    };
    let quoted = |s: &str| -> Option<String> {
        let start = s.find('`')? + 1;
        let end = start + s[start..].find('`')?;
        Some(s[start..end].to_owned())
    };
    let parent = |name: &str| {
        if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(rest) = problem.strip_prefix("unknown field ") {
        let name = quoted(rest)?;
        // Every `name` after "expected" ("`a` or `b`", "one of `a`, `b`, `c`").
        let expected: Vec<String> = rest
            .split_once("expected ")
            .map(|(_, list)| {
                list.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        // The path of an unknown field already ends with its name.
        let field = if path == "." { name } else { path.to_owned() };
        let message = if expected.is_empty() {
            format!("`{field}` is not a field of this request")
        } else {
            format!(
                "`{field}` is not a field of this request (it takes {})",
                expected.join(", ")
            )
        };
        return Some((field, message));
    }
    if let Some(rest) = problem.strip_prefix("missing field ") {
        let field = parent(&quoted(rest)?);
        return Some((field.clone(), format!("`{field}` is required")));
    }
    let expected = problem
        .rsplit_once("expected ")
        .map_or("another value", |(_, e)| e);
    let wanted = match expected {
        "i64" | "u64" | "i32" | "u32" | "i16" | "u16" | "u8" | "i8" | "usize" | "isize" => {
            "a whole number"
        }
        "f64" | "f32" => "a number",
        "a string" | "a borrowed string" => "a string",
        "a boolean" => "true or false",
        "a sequence" => "a list",
        "struct" => "an object",
        other if other.starts_with("struct ") || other.starts_with("a map") => "an object",
        other if other.starts_with("i64") || other.starts_with("u64") => "a whole number",
        _ => "another kind of value",
    };
    let got = if problem.starts_with("invalid value: integer") {
        "a number out of range"
    } else if let Some(rest) = problem.strip_prefix("invalid type: ") {
        rest.split([',', ' ']).next().unwrap_or("a value")
    } else {
        "a value it cannot read"
    };
    let field = path.to_owned();
    Some((
        field.clone(),
        format!("`{field}` must be {wanted}, not {got}"),
    ))
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        from_bytes_rejection(&rejection)
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

#[cfg(test)]
mod plain_messages {
    #![allow(clippy::unwrap_used)]

    use super::plain_json_problem;

    const PREFIX: &str = "Failed to deserialize the JSON body into the target type: ";

    #[test]
    fn an_unknown_field_is_named_with_the_fields_the_request_takes() {
        let (field, message) = plain_json_problem(&format!(
            "{PREFIX}lines[0].qty: unknown field `qty`, expected `itemId` or `quantity` at line 1 column 20"
        ))
        .unwrap();
        assert_eq!(field, "lines[0].qty");
        assert_eq!(
            message,
            "`lines[0].qty` is not a field of this request (it takes itemId, quantity)"
        );
        let (field, _) = plain_json_problem(&format!(
            "{PREFIX}admin: unknown field `admin`, expected one of `loginId`, `password`, `name` at line 1 column 9"
        ))
        .unwrap();
        assert_eq!(field, "admin");
    }

    #[test]
    fn a_wrong_type_says_what_is_expected_without_rust_type_names() {
        let (field, message) = plain_json_problem(&format!(
            "{PREFIX}lines[0].quantity: invalid type: string \"a\", expected i64 at line 1 column 30"
        ))
        .unwrap();
        assert_eq!(field, "lines[0].quantity");
        assert_eq!(
            message,
            "`lines[0].quantity` must be a whole number, not string"
        );
        assert!(!message.contains("i64"));
        let (_, message) = plain_json_problem(&format!(
            "{PREFIX}price: invalid value: integer `-1`, expected u64 at line 1 column 9"
        ))
        .unwrap();
        assert_eq!(
            message,
            "`price` must be a whole number, not a number out of range"
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let (field, message) = plain_json_problem(&format!(
            "{PREFIX}missing field `password` at line 1 column 20"
        ))
        .unwrap();
        assert_eq!(
            (field.as_str(), message.as_str()),
            ("password", "`password` is required")
        );
    }
}
