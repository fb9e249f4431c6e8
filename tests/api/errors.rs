//! Bad input of every kind gets a 4xx with a code, never a 500, and changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, send};
use crate::on_both_backends;

/// How a malformed request is sent.
enum Body {
    None,
    Json(Value),
    Raw(&'static str, String),
}

struct Case {
    what: &'static str,
    method: Method,
    path: String,
    auth: bool,
    body: Body,
    status: u16,
    code: &'static str,
}

fn case(
    what: &'static str,
    method: Method,
    path: &str,
    auth: bool,
    body: Body,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.to_owned(),
        auth,
        body,
        status,
        code,
    }
}

fn user_body(login: &str, password: &str, name: &str) -> Body {
    Body::Json(json!({ "loginId": login, "password": password, "name": name }))
}

fn raw_json(text: &str) -> Body {
    Body::Raw("application/json", text.to_owned())
}

fn cases(item: i64) -> Vec<Case> {
    use Method as M;
    let restock = format!("/api/v1/items/{item}/restock");
    vec![
        case(
            "truncated JSON",
            M::POST,
            "/api/v1/users",
            false,
            raw_json(r#"{"loginId":"#),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "JSON array instead of object",
            M::POST,
            "/api/v1/users",
            false,
            raw_json("[]"),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "missing name",
            M::POST,
            "/api/v1/users",
            false,
            Body::Json(json!({"loginId": "abcd", "password": "password-1"})),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "loginId is a number",
            M::POST,
            "/api/v1/users",
            false,
            Body::Json(json!({"loginId": 1234, "password": "password-1", "name": "n"})),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "loginId too short",
            M::POST,
            "/api/v1/users",
            false,
            user_body("abc", "password-1", "n"),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "loginId too long",
            M::POST,
            "/api/v1/users",
            false,
            user_body(&"a".repeat(65), "password-1", "n"),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "loginId with a space",
            M::POST,
            "/api/v1/users",
            false,
            user_body("bad id", "password-1", "n"),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "password too short",
            M::POST,
            "/api/v1/users",
            false,
            user_body("abcd", "short", "n"),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "password too long",
            M::POST,
            "/api/v1/users",
            false,
            user_body("abcd", &"p".repeat(129), "n"),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "empty name",
            M::POST,
            "/api/v1/users",
            false,
            user_body("abcd", "password-1", "  "),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "name too long",
            M::POST,
            "/api/v1/users",
            false,
            user_body("abcd", "password-1", &"n".repeat(65)),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "no content type",
            M::POST,
            "/api/v1/users",
            false,
            Body::Raw("text/plain", r#"{"loginId":"abcd"}"#.into()),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        case(
            "body over 64 KiB",
            M::POST,
            "/api/v1/users",
            false,
            raw_json(&format!(r#"{{"loginId":"{}"}}"#, "a".repeat(70_000))),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        case(
            "login without password",
            M::POST,
            "/api/v1/auth/login",
            false,
            Body::Json(json!({"loginId": "abcd"})),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "refresh token of the wrong type",
            M::POST,
            "/api/v1/auth/refresh",
            false,
            raw_json(r#"{"refreshToken": 5}"#),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "negative price",
            M::POST,
            "/api/v1/items",
            true,
            Body::Json(json!({"name": "x", "price": -1, "stock": 1})),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "fractional stock",
            M::POST,
            "/api/v1/items",
            true,
            raw_json(r#"{"name": "x", "price": 1, "stock": 1.5}"#),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "price beyond 64 bits",
            M::POST,
            "/api/v1/items",
            true,
            raw_json(r#"{"name": "x", "price": 99999999999999999999, "stock": 1}"#),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "price above the maximum",
            M::POST,
            "/api/v1/items",
            true,
            Body::Json(json!({"name": "x", "price": 1_000_000_000_001_i64, "stock": 1})),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "stock above the maximum",
            M::POST,
            "/api/v1/items",
            true,
            Body::Json(json!({"name": "x", "price": 1, "stock": 2_000_000_000_i64})),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "price as a string",
            M::POST,
            "/api/v1/items",
            true,
            Body::Json(json!({"name": "x", "price": "10", "stock": 1})),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "empty item name",
            M::POST,
            "/api/v1/items",
            true,
            Body::Json(json!({"name": "", "price": 1, "stock": 1})),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "restock zero",
            M::POST,
            &restock,
            true,
            Body::Json(json!({"quantity": 0})),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "restock negative",
            M::POST,
            &restock,
            true,
            Body::Json(json!({"quantity": -5})),
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "restock past the maximum",
            M::POST,
            &restock,
            true,
            Body::Json(json!({"quantity": 1_000_000_000})),
            409,
            "STOCK_LIMIT",
        ),
        case(
            "item id not a number",
            M::GET,
            "/api/v1/items/abc",
            false,
            Body::None,
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "item id negative",
            M::GET,
            "/api/v1/items/-1",
            false,
            Body::None,
            404,
            "NOT_FOUND",
        ),
        case(
            "user id not a number",
            M::GET,
            "/api/v1/users/abc",
            true,
            Body::None,
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "limit zero",
            M::GET,
            "/api/v1/items?limit=0",
            false,
            Body::None,
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "limit above 100",
            M::GET,
            "/api/v1/items?limit=101",
            false,
            Body::None,
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "limit not a number",
            M::GET,
            "/api/v1/items?limit=ten",
            false,
            Body::None,
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "fractional minPrice",
            M::GET,
            "/api/v1/items?minPrice=1.5",
            false,
            Body::None,
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "negative minPrice",
            M::GET,
            "/api/v1/items?minPrice=-1",
            false,
            Body::None,
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "minPrice above maxPrice",
            M::GET,
            "/api/v1/items?minPrice=10&maxPrice=5",
            false,
            Body::None,
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "forged cursor",
            M::GET,
            "/api/v1/items?cursor=garbage",
            false,
            Body::None,
            400,
            "VALIDATION_FAILED",
        ),
        case(
            "unknown route",
            M::GET,
            "/api/v1/nothing-here",
            false,
            Body::None,
            404,
            "NOT_FOUND",
        ),
        case(
            "wrong method",
            M::DELETE,
            "/api/v1/items",
            false,
            Body::None,
            405,
            "METHOD_NOT_ALLOWED",
        ),
    ]
}

on_both_backends! {
    async fn malformed_requests_get_4xx_with_a_code_and_change_nothing(app: TestApp) {
        let admin = app.admin().await;
        let item = app.create_item(&admin, "Only item", 100, 100).await;
        let id = item["itemId"].as_i64().unwrap();
        let all = cases(id);
        assert!(all.len() >= 20);
        for c in all {
            let mut request = app.request(c.method.clone(), &c.path);
            if c.auth {
                request = request.bearer_auth(&admin.access);
            }
            request = match c.body {
                Body::None => request,
                Body::Json(v) => request.json(&v),
                Body::Raw(content_type, text) => request.header("content-type", content_type).body(text),
            };
            let answer = send(request).await;
            assert!(answer.0.is_client_error(), "{}: {answer:?}", c.what);
            assert_eq!(answer.0.as_u16(), c.status, "{}: {}", c.what, answer.1);
            assert_error(&answer, c.status, c.code);
        }
        // Nothing was created or changed by any of them.
        let (status, page) = send(app.get("/api/v1/items")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["items"], json!([item]));
        assert_eq!(app.login("abcd", "password-1").await.0, StatusCode::UNAUTHORIZED);
    }
}
