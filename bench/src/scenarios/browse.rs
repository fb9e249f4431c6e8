//! `browse`: anonymous item reads and name searches over items made for the run; and the
//! members' own page, read as `mixed` does.

use rand::Rng;
use reqwest::Method;

use super::attempt_rng;
use crate::api::Api;
use crate::driver::Workload;
use crate::stats::Reply;

/// Words item names are made of, and what searches look for.
pub const NAME_WORDS: [&str; 8] = [
    "sneaker", "jacket", "watch", "camera", "lamp", "backpack", "kettle", "headset",
];
/// Percent of browse attempts that read one item; the rest search by name.
const ITEM_READ_PERCENT: u32 = 80;
/// Items per search page (the contract's default).
const SEARCH_PAGE: u32 = 20;

/// Reads and searches items.
#[derive(Debug)]
pub struct BrowseWorkload {
    api: Api,
    item_ids: Vec<i64>,
    seed: u64,
}

impl BrowseWorkload {
    pub fn new(api: Api, item_ids: Vec<i64>, seed: u64) -> Self {
        Self {
            api,
            item_ids,
            seed,
        }
    }
}

impl Workload for BrowseWorkload {
    async fn attempt(&self, index: u64) -> Reply {
        let mut rng = attempt_rng(self.seed, index);
        let request = if rng.gen_range(0..100) < ITEM_READ_PERCENT {
            let item = self.item_ids[rng.gen_range(0..self.item_ids.len())];
            self.api
                .request(Method::GET, &format!("/api/v1/items/{item}"))
        } else {
            let word = NAME_WORDS[rng.gen_range(0..NAME_WORDS.len())];
            self.api
                .request(Method::GET, "/api/v1/items")
                .query(&[("q", word), ("limit", &SEARCH_PAGE.to_string())])
        };
        self.api.call(request).await.0
    }
}

/// `GET /api/v1/my-page` as a random member (part of `mixed`): the read model, or the
/// composition when it is behind.
#[derive(Debug)]
pub struct MyPageWorkload {
    api: Api,
    users: std::sync::Arc<[crate::users::BenchUser]>,
    seed: u64,
}

impl MyPageWorkload {
    pub fn new(api: Api, users: std::sync::Arc<[crate::users::BenchUser]>, seed: u64) -> Self {
        Self { api, users, seed }
    }
}

impl Workload for MyPageWorkload {
    async fn attempt(&self, index: u64) -> Reply {
        let mut rng = attempt_rng(self.seed, index);
        let user = &self.users[rng.gen_range(0..self.users.len())];
        let request = self
            .api
            .request(Method::GET, "/api/v1/my-page")
            .bearer_auth(&user.access_token);
        self.api.call(request).await.0
    }
}

/// `GET /health/live`: the cheapest request there is, so the HTTP ceiling of this machine.
#[derive(Debug)]
pub struct HealthWorkload {
    api: Api,
}

impl HealthWorkload {
    pub fn new(api: Api) -> Self {
        Self { api }
    }
}

impl Workload for HealthWorkload {
    async fn attempt(&self, _index: u64) -> Reply {
        self.api
            .call(self.api.request(Method::GET, "/health/live"))
            .await
            .0
    }
}
