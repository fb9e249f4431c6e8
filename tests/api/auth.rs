use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, assert_error, poll_until, send};
use crate::on_both_backends;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn refresh(app: &TestApp, token: &str) -> (StatusCode, serde_json::Value) {
    send(
        app.post("/api/v1/auth/refresh")
            .json(&json!({ "refreshToken": token })),
    )
    .await
}

async fn me_status(app: &TestApp, access: &str) -> StatusCode {
    send(app.get("/api/v1/users/me").bearer_auth(access))
        .await
        .0
}

on_both_backends! {
    async fn refresh_rotates_and_reuse_revokes_the_login(app: TestApp) {
        let user = app.new_user().await;
        let (status, first) = refresh(&app, &user.refresh).await;
        assert_eq!(status, StatusCode::OK, "{first}");
        let new_refresh = first["refreshToken"].as_str().unwrap().to_owned();
        let new_access = first["accessToken"].as_str().unwrap().to_owned();
        assert_ne!(new_refresh, user.refresh);
        assert_eq!(me_status(&app, &new_access).await, StatusCode::OK);

        // Within the grace for racing refreshes the spent token gets the same pair; once the
        // grace is over it is refused, and presenting it kills the whole login.
        let within = surge_http::refresh_grace::REFRESH_GRACE * 3;
        let refused = poll_until(within, "the refresh grace to end", || async {
            let answer = refresh(&app, &user.refresh).await;
            if answer.0 == StatusCode::OK {
                assert_eq!(answer.1["refreshToken"], new_refresh.as_str(), "the same pair while racing");
                None
            } else {
                Some(answer)
            }
        })
        .await;
        assert_error(&refused, 401, "UNAUTHENTICATED");
        assert_error(&refresh(&app, &new_refresh).await, 401, "UNAUTHENTICATED");
        assert_eq!(me_status(&app, &new_access).await, StatusCode::UNAUTHORIZED);
        assert_eq!(me_status(&app, &user.access).await, StatusCode::UNAUTHORIZED);

        // Another login of the same member is untouched.
        let (status, again) = app.login(&user.login_id, &user.password).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(me_status(&app, again["accessToken"].as_str().unwrap()).await, StatusCode::OK);
    }

    async fn racing_refreshes_of_one_token_share_the_new_pair(app: TestApp) {
        let user = app.new_user().await;
        let (a, b) = tokio::join!(refresh(&app, &user.refresh), refresh(&app, &user.refresh));
        assert_eq!(a.0, StatusCode::OK, "{}", a.1);
        assert_eq!(b.0, StatusCode::OK, "{}", b.1);
        assert_eq!(a.1["refreshToken"], b.1["refreshToken"], "one new pair for both");
        // The login lives on: the new tokens work, and the new refresh token rotates.
        assert_eq!(me_status(&app, b.1["accessToken"].as_str().unwrap()).await, StatusCode::OK);
        let (status, next) = refresh(&app, a.1["refreshToken"].as_str().unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{next}");
    }

    async fn refresh_works_from_the_cookie(app: TestApp) {
        let user = app.new_user().await;
        let (status, body) = send(
            app.post("/api/v1/auth/refresh")
                .header("cookie", format!("theme=dark; refresh_token={}", user.refresh)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(me_status(&app, body["accessToken"].as_str().unwrap()).await, StatusCode::OK);
        let none = send(app.post("/api/v1/auth/refresh")).await;
        assert_error(&none, 401, "UNAUTHENTICATED");
    }

    async fn logout_revokes_access_and_refresh_tokens(app: TestApp) {
        let user = app.new_user().await;
        let (status, _) = send(app.post("/api/v1/auth/logout").bearer_auth(&user.access)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_error(&send(app.get("/api/v1/users/me").bearer_auth(&user.access)).await, 401, "UNAUTHENTICATED");
        assert_error(&refresh(&app, &user.refresh).await, 401, "UNAUTHENTICATED");
        assert_error(&send(app.post("/api/v1/auth/logout").bearer_auth(&user.access)).await, 401, "UNAUTHENTICATED");
    }

    async fn forged_expired_and_malformed_tokens_are_401(app: TestApp) {
        let user = app.new_user().await;
        // Take the session id of a real token so only the property under test differs.
        let payload = user.access.split('.').nth(1).unwrap();
        let real: serde_json::Value = {
            use base64::Engine;
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap(),
            )
            .unwrap()
        };
        let claims = |exp: u64| json!({
            "sub": user.user_id.to_string(), "sid": real["sid"], "role": "ADMIN",
            "iat": now(), "exp": exp, "jti": "x"
        });
        let sign = |key: &str, exp: u64| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims(exp),
                &EncodingKey::from_secret(key.as_bytes()),
            )
            .unwrap()
        };
        // Sanity: a token we sign with the node's own key is accepted.
        let secret = app.db.jwt_secret();
        assert_eq!(me_status(&app, &sign(&secret, now() + 600)).await, StatusCode::OK);

        let other_key = sign("some-other-key-that-is-long-enough-000", now() + 600);
        let expired = sign(&secret, now() - 120);
        let b64 = |v: serde_json::Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let alg_none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(claims(now() + 600))
        );
        for token in [other_key, expired, alg_none, "garbage".to_owned()] {
            let answer = send(app.get("/api/v1/users/me").bearer_auth(&token)).await;
            assert_error(&answer, 401, "UNAUTHENTICATED");
        }
        for header in ["Basic dXNlcjpwYXNz", "Bearer", "", "Bearer    "] {
            let answer = send(app.get("/api/v1/users/me").header("authorization", header)).await;
            assert_error(&answer, 401, "UNAUTHENTICATED");
        }
        assert_error(&send(app.get("/api/v1/users/me")).await, 401, "UNAUTHENTICATED");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_generated_signing_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn(crate::helpers::Backend::Sqlite).await;
    let dir = app.db.dir.clone().unwrap();
    let mode = std::fs::metadata(dir.join("jwt-secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    app.stop().await;
}

on_both_backends! {
    async fn token_answers_are_not_cached_and_401_names_the_scheme(app: TestApp) {
        let user = app.new_user().await;
        let response = app
            .post("/api/v1/auth/login")
            .json(&serde_json::json!({"loginId": user.login_id, "password": user.password}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let response = app.get("/api/v1/users/me").send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let response = app.get("/no/such/route").send().await.unwrap();
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }
}
