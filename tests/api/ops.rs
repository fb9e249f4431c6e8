use reqwest::StatusCode;

use crate::helpers::{PgOutage, TestApp, assert_error, send};
use crate::on_both_backends;

on_both_backends! {
    async fn health_metrics_and_openapi(app: TestApp) {
        assert_eq!(send(app.get("/health/live")).await.0, StatusCode::OK);
        let (status, ready) = send(app.get("/health/ready")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ready["checks"]["database"], "UP");

        let user = app.new_user().await;
        assert_error(&send(app.get("/metrics")).await, 401, "UNAUTHENTICATED");
        assert_error(&send(app.get("/metrics").bearer_auth(&user.access)).await, 403, "FORBIDDEN");
        let admin = app.admin().await;
        let metrics = app.get("/metrics").bearer_auth(&admin.access).send().await.unwrap();
        assert_eq!(metrics.status(), StatusCode::OK);
        let text = metrics.text().await.unwrap();
        assert!(text.contains(r#"surge_http_requests_total{method="POST",route="/api/v1/users",status="201"} 1"#), "{text}");
        assert!(text.contains(r#"surge_http_request_duration_seconds_bucket{le="0.005""#) || text.contains("surge_http_request_duration_seconds_bucket"), "{text}");

        let (status, doc) = send(app.get("/openapi.json")).await;
        assert_eq!(status, StatusCode::OK);
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/api/v1/users", "post"), ("/api/v1/auth/login", "post"), ("/api/v1/auth/refresh", "post"),
            ("/api/v1/auth/logout", "post"), ("/api/v1/users/me", "get"), ("/api/v1/users/{userId}", "get"),
            ("/api/v1/items", "post"), ("/api/v1/items", "get"), ("/api/v1/items/{itemId}", "get"),
            ("/api/v1/items/{itemId}/restock", "post"), ("/health/live", "get"), ("/health/ready", "get"),
            ("/metrics", "get"),
        ] {
            assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_database_while_it_refuses_connections() {
    let app = TestApp::spawn(crate::helpers::Backend::Postgres).await;
    let outage = PgOutage::begin(&app.db).await;
    let down = send(app.get("/health/ready")).await;
    outage.end().await;
    assert_error(&down, 503, "NOT_READY");
    assert_eq!(down.1["details"]["failing"][0], "database");
    // It comes back by itself once the database does.
    let mut recovered = false;
    for _ in 0..50 {
        if send(app.get("/health/ready")).await.0 == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "readiness did not recover");
    app.stop().await;
}

/// The number of `surge_http_requests_total` series in `/metrics`.
async fn request_series(app: &TestApp, admin: &crate::helpers::TestUser) -> usize {
    let text = app
        .get("/metrics")
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("surge_http_requests_total{"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_add_no_metric_series() {
    let app = TestApp::spawn(crate::helpers::Backend::Sqlite).await;
    let admin = app.admin().await;
    // One of each kind first, so the series they share exist.
    for (method, path) in [
        ("BREW", "/coffee"),
        ("GET", "/nowhere"),
        ("BREW", "/health/live"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let _ = app.request(method, path).send().await.unwrap();
    }
    let _ = request_series(&app, &admin).await;
    let before = request_series(&app, &admin).await;
    for n in 0..1_000 {
        let name = format!("M{}{}", uuid::Uuid::new_v4().simple(), "X".repeat(n % 200));
        let method = reqwest::Method::from_bytes(name.as_bytes()).unwrap();
        let path = if n % 2 == 0 {
            format!("/random/{n}/{name}")
        } else {
            "/health/live".to_owned()
        };
        let response = app.request(method, &path).send().await.unwrap();
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    assert_eq!(
        request_series(&app, &admin).await,
        before,
        "1,000 made-up methods and paths added series"
    );
}
