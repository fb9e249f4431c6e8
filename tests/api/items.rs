use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, assert_error, send};
use crate::on_both_backends;

on_both_backends! {
    async fn admin_creates_reads_and_restocks_an_item(app: TestApp) {
        let admin = app.admin().await;
        let item = app.create_item(&admin, "Limited sneakers", 129_000, 100).await;
        assert_eq!(item["name"], "Limited sneakers");
        assert_eq!(item["price"], 129_000);
        assert_eq!(item["stock"], 100);
        let id = item["itemId"].as_i64().unwrap();

        let read = send(app.get(&format!("/api/v1/items/{id}"))).await;
        assert_eq!(read.0, StatusCode::OK);
        assert_eq!(read.1, item);

        let restocked = send(
            app.post(&format!("/api/v1/items/{id}/restock"))
                .bearer_auth(&admin.access)
                .json(&json!({ "quantity": 25 })),
        )
        .await;
        assert_eq!(restocked.0, StatusCode::OK);
        assert_eq!(restocked.1["stock"], 125);
        assert_eq!(send(app.get(&format!("/api/v1/items/{id}"))).await.1["stock"], 125);
    }

    async fn a_user_cannot_create_or_restock_items(app: TestApp) {
        let user = app.new_user().await;
        let create = send(
            app.post("/api/v1/items")
                .bearer_auth(&user.access)
                .json(&json!({ "name": "x", "price": 1, "stock": 1 })),
        )
        .await;
        assert_error(&create, 403, "FORBIDDEN");
        let admin = app.admin().await;
        let id = app.create_item(&admin, "Cap", 10, 1).await["itemId"].as_i64().unwrap();
        let restock = send(
            app.post(&format!("/api/v1/items/{id}/restock"))
                .bearer_auth(&user.access)
                .json(&json!({ "quantity": 5 })),
        )
        .await;
        assert_error(&restock, 403, "FORBIDDEN");
        assert_eq!(send(app.get(&format!("/api/v1/items/{id}"))).await.1["stock"], 1);
        let anonymous = send(app.post("/api/v1/items").json(&json!({ "name": "x", "price": 1, "stock": 1 }))).await;
        assert_error(&anonymous, 401, "UNAUTHENTICATED");
    }

    async fn search_filters_by_name_and_price_and_pages_with_a_cursor(app: TestApp) {
        let admin = app.admin().await;
        for (name, price) in [
            ("Red shoe", 100), ("Blue SHOE", 200), ("Green shoe", 300),
            ("Red hat", 150), ("shoe 50% off", 50), ("Shoe_horn", 60),
        ] {
            app.create_item(&admin, name, price, 5).await;
        }
        let names = |body: &serde_json::Value| -> Vec<String> {
            body["items"].as_array().unwrap().iter()
                .map(|i| i["name"].as_str().unwrap().to_owned()).collect()
        };
        let (status, all_shoes) = send(app.get("/api/v1/items?q=shoe")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(names(&all_shoes), ["Red shoe", "Blue SHOE", "Green shoe", "shoe 50% off", "Shoe_horn"]);
        assert!(all_shoes["nextCursor"].is_null());

        let (_, mid) = send(app.get("/api/v1/items?q=shoe&minPrice=100&maxPrice=200")).await;
        assert_eq!(names(&mid), ["Red shoe", "Blue SHOE"]);
        // Wildcards in the search text match literally.
        let (_, pct) = send(app.get("/api/v1/items?q=50%25")).await;
        assert_eq!(names(&pct), ["shoe 50% off"]);
        let (_, underscore) = send(app.get("/api/v1/items?q=e_h")).await;
        assert_eq!(names(&underscore), ["Shoe_horn"]);

        let mut seen = Vec::new();
        let mut path = "/api/v1/items?limit=2".to_owned();
        loop {
            let (status, page) = send(app.get(&path)).await;
            assert_eq!(status, StatusCode::OK);
            assert!(page["items"].as_array().unwrap().len() <= 2);
            seen.extend(names(&page));
            match page["nextCursor"].as_str() {
                Some(cursor) => path = format!("/api/v1/items?limit=2&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 6);
    }

    async fn unknown_items_are_404(app: TestApp) {
        let admin = app.admin().await;
        assert_error(&send(app.get("/api/v1/items/987654")).await, 404, "NOT_FOUND");
        let restock = send(
            app.post("/api/v1/items/987654/restock").bearer_auth(&admin.access).json(&json!({ "quantity": 1 })),
        )
        .await;
        assert_error(&restock, 404, "NOT_FOUND");
    }
}
