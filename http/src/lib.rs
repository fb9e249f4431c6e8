//! The axum layer of Surge: routes, authentication, the error envelope, metrics and the
//! OpenAPI document. Handlers validate input into domain types and call the stores; they hold
//! no state of their own.

pub mod auth;
pub mod connections;
pub mod cursor;
pub mod error;
mod extract;
pub mod item_cache;
pub mod limits;
pub mod metrics;
mod password;
pub mod refresh_grace;
mod routes;
pub mod slots;
mod state;
use surge_domain::time_fmt;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub use auth::{AuthService, AuthSettings};
pub use error::{ApiError, ErrorBody, MAX_BODY_BYTES};
pub use limits::{Rate, RateLimitSettings, RateLimits};
pub use metrics::Metrics;
pub use routes::users::create_member;
pub use state::{AppState, NodeInfo, OrderServices, OrderStreams};

/// OpenAPI `pattern`s of text fields (ECMA-262 and Python `re` read them alike).
pub(crate) mod patterns {
    /// Free text: no control characters (Unicode Cc), no bidirectional-format or zero-width
    /// characters, and at least one character that is not whitespace (what
    /// `surge_domain::text` checks after trimming).
    pub(crate) const VISIBLE_TEXT: &str = concat!(
        r"^[^\u0000-\u001F\u007F-\u009F\u061C\u200B-\u200F\u202A-\u202E\u2060-\u2069\uFEFF]*",
        r"[^\s\u0000-\u001F\u007F-\u009F\u061C\u200B-\u200F\u202A-\u202E\u2060-\u2069\uFEFF]",
        r"[^\u0000-\u001F\u007F-\u009F\u061C\u200B-\u200F\u202A-\u202E\u2060-\u2069\uFEFF]*$"
    );
    /// A login id.
    pub(crate) const LOGIN_ID: &str = r"^[A-Za-z0-9_.-]+$";
    /// An `Idempotency-Key`: visible ASCII.
    pub(crate) const IDEMPOTENCY_KEY: &str = r"^[!-~]+$";
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "Surge", description = "Flash-sale e-commerce API"),
    paths(
        routes::users::sign_up, routes::users::me, routes::users::profile,
        routes::auth::login, routes::auth::refresh, routes::auth::logout,
        routes::items::create, routes::items::get, routes::items::search, routes::items::restock,
        routes::orders::create, routes::orders::get, routes::orders::list,
        routes::orders::cancel, routes::orders::events,
        routes::coupons::create, routes::coupons::get, routes::coupons::issue,
        routes::coupons::queue_me, routes::coupons::mine,
        routes::my_page::get,
        routes::admin::actors, routes::admin::circuits, routes::admin::outbox,
        routes::admin::cluster, routes::admin::cluster_item, routes::admin::verify_member,
        routes::ops::live, routes::ops::ready, routes::ops::metrics_for_admin,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth, &CommonAnswers, &Constraints),
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Adds to every operation the answers any route of its kind can give besides its own (so the
/// document lists every status a client can see), and gives every operation a unique id
/// derived from its method and path (`get_orders_orderId`).
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, HttpMethod, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in &mut openapi.paths.paths {
            let methods = [
                (HttpMethod::Get, &mut item.get),
                (HttpMethod::Post, &mut item.post),
            ];
            for (method, operation) in methods {
                let Some(operation) = operation else { continue };
                let name = path
                    .trim_start_matches("/api/v1/")
                    .trim_start_matches('/')
                    .replace(['{', '}'], "")
                    .replace(['/', '.', '-'], "_");
                let verb = if matches!(method, HttpMethod::Get) {
                    "get"
                } else {
                    "post"
                };
                operation.operation_id = Some(format!("{verb}_{name}"));
                let answers = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    answers
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                };
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    add(
                        "401",
                        "UNAUTHENTICATED: a missing, invalid, expired or revoked token",
                    );
                }
                if operation.request_body.is_some() {
                    add(
                        "400",
                        "VALIDATION_FAILED: malformed JSON, a wrong type, an unknown or missing field, a broken rule (details.field)",
                    );
                    add("413", "PAYLOAD_TOO_LARGE: the body is over 64 KiB");
                    add(
                        "415",
                        "UNSUPPORTED_MEDIA_TYPE: the body is not application/json",
                    );
                }
                if path.contains('{') {
                    add(
                        "400",
                        "VALIDATION_FAILED: a path parameter that is not a number",
                    );
                }
                add("414", "URI_TOO_LONG: the request target is over 8 KiB");
                add(
                    "431",
                    "HEADERS_TOO_LARGE: the request headers are over 16 KiB",
                );
                if operation.request_body.is_some() {
                    add(
                        "408",
                        "REQUEST_TIMEOUT: the body did not arrive whole within SURGE_BODY_TIMEOUT_MS",
                    );
                }
                if !path.starts_with("/health") {
                    add(
                        "503",
                        "UNAVAILABLE or OVERLOADED: a dependency failed or the node is full; retry after Retry-After",
                    );
                }
            }
        }
    }
}

/// The constraints the annotations cannot state: text patterns (an attribute takes only a
/// literal, and these are shared), ids in paths (positive), the `Idempotency-Key` header.
struct Constraints;

/// (schema, property, pattern) of every patterned text field of a request.
const TEXT_PATTERNS: [(&str, &str, &str); 6] = [
    ("SignUpRequest", "loginId", patterns::LOGIN_ID),
    ("SignUpRequest", "password", patterns::VISIBLE_TEXT),
    ("SignUpRequest", "name", patterns::VISIBLE_TEXT),
    ("CreateItemRequest", "name", patterns::VISIBLE_TEXT),
    ("CreateCouponRequest", "name", patterns::VISIBLE_TEXT),
    (
        "CreateCouponRequest",
        "description",
        r"^[^\u0000-\u001F\u007F-\u009F]*$",
    ),
];

impl Modify for Constraints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        use utoipa::openapi::{RefOr, Schema};
        if let Some(components) = openapi.components.as_mut() {
            for (schema, property, pattern) in TEXT_PATTERNS {
                let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema)
                else {
                    continue;
                };
                if let Some(RefOr::T(Schema::Object(field))) = object.properties.get_mut(property) {
                    field.pattern = Some(pattern.to_owned());
                }
            }
        }
        for item in openapi.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    let schema = match parameter.parameter_in {
                        ParameterIn::Path => ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                            .minimum(Some(1))
                            .build(),
                        ParameterIn::Header if parameter.name == "Idempotency-Key" => {
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .min_length(Some(1))
                                .max_length(Some(surge_domain::MAX_IDEMPOTENCY_KEY_BYTES))
                                .pattern(Some(patterns::IDEMPOTENCY_KEY))
                                .build()
                        }
                        _ => continue,
                    };
                    parameter.schema = Some(schema.into());
                }
            }
        }
    }
}

/// The public API router.
pub fn router(state: AppState) -> Router {
    use routes::{admin, auth, coupons, items, my_page, ops, orders, users};
    let api = Router::new()
        .route("/api/v1/users", post(users::sign_up))
        .route("/api/v1/users/me", get(users::me))
        .route("/api/v1/users/{userId}", get(users::profile))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/refresh", post(auth::refresh))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/items", post(items::create).get(items::search))
        .route("/api/v1/items/{itemId}", get(items::get))
        .route("/api/v1/items/{itemId}/restock", post(items::restock))
        .route("/api/v1/orders", post(orders::create).get(orders::list))
        .route("/api/v1/orders/{orderId}", get(orders::get))
        .route("/api/v1/orders/{orderId}/cancel", post(orders::cancel))
        .route("/api/v1/orders/{orderId}/events", get(orders::events))
        .route("/api/v1/coupons", post(coupons::create))
        .route("/api/v1/coupons/{couponId}", get(coupons::get))
        .route("/api/v1/coupons/{couponId}/issue", post(coupons::issue))
        .route(
            "/api/v1/coupons/{couponId}/queue/me",
            get(coupons::queue_me),
        )
        .route("/api/v1/users/me/coupons", get(coupons::mine))
        .route("/api/v1/admin/actors", get(admin::actors))
        .route("/api/v1/admin/circuits", get(admin::circuits))
        .route("/api/v1/admin/outbox", get(admin::outbox))
        .route("/api/v1/admin/cluster", get(admin::cluster))
        .route(
            "/api/v1/admin/cluster/items/{itemId}",
            get(admin::cluster_item),
        )
        .route(
            "/api/v1/admin/users/{userId}/verify",
            post(admin::verify_member),
        )
        .route("/api/v1/my-page", get(my_page::get))
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics_for_admin))
        .route("/openapi.json", get(ops::openapi));
    let cors = cors_layer(&state.cors_origins);
    let router = finish(api, state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for the configured browser origins only (none: no CORS header at all, so a browser
/// on another origin cannot read any answer). Credentials are allowed, for the refresh cookie,
/// which is why origins are listed, never `*`.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([header::RETRY_AFTER, HeaderName::from_static(NODE_HEADER)])
            .allow_credentials(true)
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The operators' router for the admin listener: health and metrics without a token.
pub fn admin_router(state: AppState) -> Router {
    use routes::ops;
    let admin = Router::new()
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics_open));
    finish(admin, state)
}

fn finish(router: Router<AppState>, state: AppState) -> Router {
    router
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.body_timeout,
            connections::bounded_request,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(
            node_header(&state.node.node_id),
            security_headers,
        ))
        .with_state(state)
}

/// `X-Content-Type-Options: nosniff` on every answer (a browser must not guess a JSON error is
/// HTML), and `WWW-Authenticate: Bearer` on every 401 (RFC 6750: say which scheme is wanted).
/// And `x-surge-node` on every answer: which node of a cluster answered.
async fn security_headers(
    axum::extract::State(node): axum::extract::State<axum::http::HeaderValue>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    use axum::http::{HeaderValue, StatusCode, header};
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(NODE_HEADER, node);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if response.status() == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .entry(header::WWW_AUTHENTICATE)
            .or_insert(HeaderValue::from_static("Bearer"));
    }
    response
}

/// The header that names the node that answered.
pub const NODE_HEADER: &str = "x-surge-node";

/// `SURGE_NODE_ID` as a header value (an id that is not a valid header value is sent
/// percent-free as `invalid`; configuration refuses such ids anyway).
fn node_header(node_id: &str) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(node_id)
        .unwrap_or_else(|_| axum::http::HeaderValue::from_static("invalid"))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    let body = ErrorBody {
        code: "INTERNAL",
        message: "internal error".into(),
        details: None,
    };
    (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn boom() -> StatusCode {
        panic!("handler bug")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_the_json_500_envelope() {
        let router: Router = Router::new()
            .route("/boom", get(boom))
            .layer(CatchPanicLayer::custom(panic_response));
        let response = router
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body: serde_json::Value =
            serde_json::from_slice(&to_bytes(response.into_body(), 4096).await.unwrap()).unwrap();
        assert_eq!(body["code"], "INTERNAL");
        assert!(!body["message"].as_str().unwrap().contains("handler bug"));
    }
}
