//! The HTTP side: one pooled client for the set-up calls (which must succeed), and the
//! measured calls (whose every answer is data), sent on the workers' own connections
//! ([`crate::wire`]).

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::error::BenchError;
use crate::stats::Reply;

/// How long one request may take before it counts as unanswered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a set-up call is retried when the node answers 429 or 503 (it said "later").
const SETUP_RETRIES: u32 = 5;
/// The wait between set-up retries when the answer has no `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest `Retry-After` honoured during set-up.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Page size for list reads (the contract's maximum).
const PAGE_LIMIT: u32 = 100;

/// A client for one node, or for several nodes of a cluster in turn.
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    /// The measured calls' connections.
    wire: std::sync::Arc<crate::wire::Wire>,
    /// Every node's base URL; requests go to them in turn (every node serves the whole API).
    bases: std::sync::Arc<[String]>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// A body-and-status answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The error `code` of the body, if any.
    pub fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }
}

/// What sign-up answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignUp {
    Created,
    /// `DUPLICATE_LOGIN_ID`: the member exists (an earlier run with the same seed).
    AlreadyExists,
}

impl Api {
    /// A client for the node at `base` (e.g. `http://127.0.0.1:8080`), or for the nodes of a
    /// comma-separated list, taken in turn.
    pub fn new(base: &str) -> Result<Self, BenchError> {
        // The load tool must not be the bottleneck: no proxy lookup, HTTP/1 only (what the node
        // speaks), and idle connections kept for the next request.
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .no_proxy()
            .http1_only()
            .pool_max_idle_per_host(usize::MAX)
            .build()
            .map_err(|source| BenchError::Http {
                what: "building the HTTP client".into(),
                source,
            })?;
        let bases: Vec<String> = base
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(BenchError::Usage("--url names no node".into()));
        }
        Ok(Self {
            client,
            wire: std::sync::Arc::default(),
            bases: bases.into(),
            next: std::sync::Arc::default(),
        })
    }

    /// The nodes, comma-separated, as given.
    pub fn base(&self) -> String {
        self.bases.join(",")
    }

    /// A request to `path` (which starts with `/`), on the next node in turn.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.bases.len();
        self.client
            .request(method, format!("{}{path}", self.bases[i]))
    }

    /// Sends a measured request and reads the whole answer. Never fails: a transport error is
    /// a reply without a status. The JSON body is returned for 2xx answers (callers need ids
    /// from them); errors only keep their `code`.
    pub async fn call(&self, request: RequestBuilder) -> (Reply, Option<Value>) {
        let Ok(request) = request.build() else {
            return (no_answer(), None);
        };
        let Ok(Ok((status, bytes))) =
            tokio::time::timeout(REQUEST_TIMEOUT, self.wire.send(request)).await
        else {
            return (no_answer(), None);
        };
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let code = if status.is_client_error() || status.is_server_error() {
            body.as_ref()
                .and_then(|b| b.get("code"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        } else {
            None
        };
        let reply = Reply {
            status: Some(status.as_u16()),
            code,
        };
        (reply, body.filter(|_| status.is_success()))
    }

    /// Sends a set-up request, retrying while the node answers 429 or 503 (`build` makes a
    /// fresh request each time). Any other answer is returned as it is.
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Answer, BenchError> {
        let mut attempt = 0;
        loop {
            let response = build().send().await.map_err(|source| BenchError::Http {
                what: what.to_owned(),
                source,
            })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
                .min(MAX_RETRY_AFTER);
            let bytes = response.bytes().await.map_err(|source| BenchError::Http {
                what: what.to_owned(),
                source,
            })?;
            let busy = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE;
            if busy && attempt < SETUP_RETRIES {
                attempt += 1;
                tokio::time::sleep(retry_after).await;
                continue;
            }
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
            };
            return Ok(Answer { status, body });
        }
    }

    /// Sends a set-up request that must answer `expected`.
    async fn expect(
        &self,
        what: &str,
        expected: StatusCode,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Value, BenchError> {
        let answer = self.send(what, build).await?;
        if answer.status == expected {
            Ok(answer.body)
        } else {
            Err(unexpected(what, &answer))
        }
    }

    /// `GET /health/ready` answers 200.
    pub async fn ready(&self) -> Result<(), BenchError> {
        self.expect("checking /health/ready", StatusCode::OK, || {
            self.request(Method::GET, "/health/ready")
        })
        .await
        .map(drop)
    }

    /// Signs a member up.
    pub async fn sign_up(&self, login_id: &str, password: &str) -> Result<SignUp, BenchError> {
        let what = format!("signing up {login_id}");
        let answer = self
            .send(&what, || {
                self.request(Method::POST, "/api/v1/users").json(&json!({
                    "loginId": login_id, "password": password, "name": "Bench Buyer"
                }))
            })
            .await?;
        match answer.status {
            StatusCode::CREATED => Ok(SignUp::Created),
            StatusCode::CONFLICT if answer.code() == Some("DUPLICATE_LOGIN_ID") => {
                Ok(SignUp::AlreadyExists)
            }
            _ => Err(unexpected(&what, &answer)),
        }
    }

    /// Logs in and returns the access token.
    pub async fn login(&self, login_id: &str, password: &str) -> Result<String, BenchError> {
        let what = format!("logging in as {login_id}");
        let body = self
            .expect(&what, StatusCode::OK, || {
                self.request(Method::POST, "/api/v1/auth/login")
                    .json(&json!({ "loginId": login_id, "password": password }))
            })
            .await?;
        string_field(&what, &body, "accessToken")
    }

    /// Creates an item as an ADMIN; returns its id.
    pub async fn create_item(
        &self,
        admin_token: &str,
        name: &str,
        price: u64,
        stock: u64,
    ) -> Result<i64, BenchError> {
        let what = format!("creating the item '{name}'");
        let body = self
            .expect(&what, StatusCode::CREATED, || {
                self.request(Method::POST, "/api/v1/items")
                    .bearer_auth(admin_token)
                    .json(&json!({ "name": name, "price": price, "stock": stock }))
            })
            .await?;
        int_field(&what, &body, "itemId")
    }

    /// The units of an item still available.
    pub async fn item_stock(&self, item_id: i64) -> Result<i64, BenchError> {
        let what = format!("reading item {item_id}");
        let body = self
            .expect(&what, StatusCode::OK, || {
                self.request(Method::GET, &format!("/api/v1/items/{item_id}"))
            })
            .await?;
        int_field(&what, &body, "stock")
    }

    /// Creates a first-come-first-served coupon as an ADMIN; returns its id.
    pub async fn create_coupon(
        &self,
        admin_token: &str,
        name: &str,
        quantity: u64,
        discount_rate: u32,
    ) -> Result<i64, BenchError> {
        let what = format!("creating the coupon '{name}'");
        let body = self
            .expect(&what, StatusCode::CREATED, || {
                self.request(Method::POST, "/api/v1/coupons")
                    .bearer_auth(admin_token)
                    .json(&json!({
                        "name": name, "discountRate": discount_rate, "quantity": quantity
                    }))
            })
            .await?;
        int_field(&what, &body, "couponId")
    }

    /// The coupons a coupon still has to give.
    pub async fn coupon_remaining(&self, coupon_id: i64) -> Result<i64, BenchError> {
        let what = format!("reading coupon {coupon_id}");
        let body = self
            .expect(&what, StatusCode::OK, || {
                self.request(Method::GET, &format!("/api/v1/coupons/{coupon_id}"))
            })
            .await?;
        int_field(&what, &body, "remaining")
    }

    /// How many times `coupon_id` appears in the member's coupon list (every page).
    pub async fn coupons_held(&self, token: &str, coupon_id: i64) -> Result<u64, BenchError> {
        let what = "reading /api/v1/users/me/coupons";
        let mut held = 0;
        let mut cursor: Option<String> = None;
        loop {
            let body = self
                .expect(what, StatusCode::OK, || {
                    let mut request = self
                        .request(Method::GET, "/api/v1/users/me/coupons")
                        .bearer_auth(token)
                        .query(&[("limit", PAGE_LIMIT.to_string())]);
                    if let Some(c) = &cursor {
                        request = request.query(&[("cursor", c)]);
                    }
                    request
                })
                .await?;
            // A bare array, or a page `{items, nextCursor}` as the list convention says.
            let entries = body
                .as_array()
                .or_else(|| body.get("items").and_then(Value::as_array))
                .ok_or_else(|| BenchError::Unexpected {
                    what: what.to_owned(),
                    detail: format!("not a list: {body}"),
                })?;
            held += entries
                .iter()
                .filter(|c| c.get("couponId").and_then(Value::as_i64) == Some(coupon_id))
                .count() as u64;
            match body.get("nextCursor").and_then(Value::as_str) {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(held),
            }
        }
    }
}

fn no_answer() -> Reply {
    Reply {
        status: None,
        code: None,
    }
}

fn unexpected(what: &str, answer: &Answer) -> BenchError {
    BenchError::Unexpected {
        what: what.to_owned(),
        detail: format!("the node answered {}: {}", answer.status, answer.body),
    }
}

fn int_field(what: &str, body: &Value, field: &str) -> Result<i64, BenchError> {
    body.get(field)
        .and_then(Value::as_i64)
        .ok_or_else(|| BenchError::Unexpected {
            what: what.to_owned(),
            detail: format!("no integer '{field}' in {body}"),
        })
}

fn string_field(what: &str, body: &Value, field: &str) -> Result<String, BenchError> {
    body.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| BenchError::Unexpected {
            what: what.to_owned(),
            detail: format!("no string '{field}' in the answer"),
        })
}
