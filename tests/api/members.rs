use reqwest::StatusCode;

use crate::helpers::{TestApp, assert_error, send};
use crate::on_both_backends;

on_both_backends! {
    async fn sign_up_log_in_and_read_me(app: TestApp) {
        let (status, created) = app.sign_up("kim.buyer", "password-123", "Kim").await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(created["loginId"], "kim.buyer");
        assert_eq!(created["name"], "Kim");
        assert_eq!(created["role"], "USER");
        assert!(created["userId"].as_i64().unwrap() > 0);
        assert!(created.get("password").is_none() && created.get("passwordHash").is_none());

        let (status, tokens) = app.login("kim.buyer", "password-123").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(tokens["tokenType"], "Bearer");
        assert_eq!(tokens["expiresIn"], 900);
        let (status, me) = send(
            app.get("/api/v1/users/me").bearer_auth(tokens["accessToken"].as_str().unwrap()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(me, created);
    }

    async fn login_sets_an_http_only_strict_refresh_cookie(app: TestApp) {
        app.sign_up("cookie_user", "password-123", "C").await;
        let response = app
            .post("/api/v1/auth/login")
            .json(&serde_json::json!({"loginId": "cookie_user", "password": "password-123"}))
            .send()
            .await
            .unwrap();
        let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(cookie.starts_with("refresh_token="), "{cookie}");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    }

    async fn a_taken_login_id_is_409(app: TestApp) {
        assert_eq!(app.sign_up("dup_user", "password-123", "A").await.0, StatusCode::CREATED);
        let again = app.sign_up("dup_user", "another-pass", "B").await;
        assert_error(&again, 409, "DUPLICATE_LOGIN_ID");
    }

    async fn wrong_password_and_unknown_login_give_identical_answers(app: TestApp) {
        app.sign_up("real_user", "password-123", "R").await;
        let wrong_password = app.login("real_user", "password-999").await;
        let unknown_login = app.login("ghost_user", "password-123").await;
        assert_error(&wrong_password, 401, "INVALID_CREDENTIALS");
        assert_eq!(wrong_password, unknown_login);
    }

    async fn a_member_reads_only_their_own_profile(app: TestApp) {
        let alice = app.new_user().await;
        let bob = app.new_user().await;
        let own = send(app.get(&format!("/api/v1/users/{}", alice.user_id)).bearer_auth(&alice.access)).await;
        assert_eq!(own.0, StatusCode::OK);
        assert_eq!(own.1["loginId"], alice.login_id.as_str());
        let other = send(app.get(&format!("/api/v1/users/{}", bob.user_id)).bearer_auth(&alice.access)).await;
        let nobody = send(app.get("/api/v1/users/999999").bearer_auth(&alice.access)).await;
        assert_error(&other, 404, "NOT_FOUND");
        assert_eq!(other, nobody, "another member answers like a missing one");
        let admin = app.admin().await;
        let by_admin = send(app.get(&format!("/api/v1/users/{}", bob.user_id)).bearer_auth(&admin.access)).await;
        assert_eq!(by_admin.0, StatusCode::OK);
        assert_eq!(by_admin.1["loginId"], bob.login_id.as_str());
        let missing = send(app.get("/api/v1/users/999999").bearer_auth(&admin.access)).await;
        assert_error(&missing, 404, "NOT_FOUND");
    }

    async fn sign_up_cannot_make_an_admin(app: TestApp) {
        // A field a request does not have is refused (the contract), so nobody picks a role.
        let refused = send(app.post("/api/v1/users").json(&serde_json::json!({
            "loginId": "sneaky", "password": "password-123", "name": "S", "role": "ADMIN"
        }))).await;
        assert_error(&refused, 400, "VALIDATION_FAILED");
        assert_eq!(refused.1["details"]["field"], "role");
        let (status, body) = send(app.post("/api/v1/users").json(&serde_json::json!({
            "loginId": "sneaky", "password": "password-123", "name": "S"
        }))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["role"], "USER");
        let admin = app.admin().await;
        let me = send(app.get("/api/v1/users/me").bearer_auth(&admin.access)).await;
        assert_eq!(me.1["role"], "ADMIN");
    }
}
