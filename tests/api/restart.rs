use reqwest::StatusCode;

use crate::helpers::{TestApp, send};
use crate::on_both_backends;

on_both_backends! {
    async fn members_items_and_logins_survive_a_restart(app: TestApp) {
        let admin = app.admin().await;
        let user = app.new_user().await;
        let item = app.create_item(&admin, "Durable item", 500, 42).await;
        let id = item["itemId"].as_i64().unwrap();
        // A logged-out session must stay revoked across the restart too.
        let doomed = app.new_user().await;
        assert_eq!(send(app.post("/api/v1/auth/logout").bearer_auth(&doomed.access)).await.0, StatusCode::NO_CONTENT);

        let app = app.restart().await;

        assert_eq!(send(app.get(&format!("/api/v1/items/{id}"))).await.1, item);
        // The same signing key: the access token issued before the restart still works.
        let me = send(app.get("/api/v1/users/me").bearer_auth(&user.access)).await;
        assert_eq!(me.0, StatusCode::OK);
        assert_eq!(me.1["loginId"], user.login_id.as_str());
        assert_eq!(app.login(&user.login_id, &user.password).await.0, StatusCode::OK);
        assert_eq!(send(app.get("/api/v1/users/me").bearer_auth(&doomed.access)).await.0, StatusCode::UNAUTHORIZED);
        // The bootstrap admin is not created twice or reset.
        assert_eq!(app.admin().await.user_id, admin.user_id);
        app.stop().await;
    }
}
