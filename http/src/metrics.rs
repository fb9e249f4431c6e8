//! Prometheus metrics of the HTTP layer: request counts and latency per route and status.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds: fine below 10 ms where a healthy node answers, coarse above.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
    status: u16,
}

/// The node's metric registry and the HTTP families in it.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    outbox: OutboxGauges,
}

/// The outbox relay's figures, set from its stats at each scrape.
#[derive(Default)]
struct OutboxGauges {
    lag_rows: Gauge,
    lag_age_ms: Gauge,
    published: Gauge,
    failures: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    /// A registry with the HTTP families registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("surge");
        let requests = Family::<RouteLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            latency.clone(),
        );
        let outbox = OutboxGauges::default();
        registry.register(
            "outbox_lag_rows",
            "Events in the outbox not yet delivered",
            outbox.lag_rows.clone(),
        );
        registry.register(
            "outbox_lag_age_milliseconds",
            "Age of the oldest event not yet delivered",
            outbox.lag_age_ms.clone(),
        );
        registry.register(
            "outbox_published_events",
            "Events this node's relay delivered since it started",
            outbox.published.clone(),
        );
        registry.register(
            "outbox_failed_rounds",
            "Relay rounds that failed and were retried, since start",
            outbox.failures.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            outbox,
        }
    }

    /// Takes the relay's current figures into the outbox gauges.
    pub fn observe_relay(&self, relay: &surge_actors::events::RelaySnapshot) {
        self.outbox.lag_rows.set(relay.lag_rows);
        self.outbox.lag_age_ms.set(relay.lag_age_ms);
        self.outbox
            .published
            .set(i64::try_from(relay.published).unwrap_or(i64::MAX));
        self.outbox
            .failures
            .set(i64::try_from(relay.failures).unwrap_or(i64::MAX));
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The method as a label: the standard ones by name, any other as `OTHER`, so a client that
/// sends made-up methods cannot add series (each with a whole histogram) without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// Middleware: counts and times every request under its route template (not its raw path, so
/// ids do not explode the label space).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method()).to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let labels = RouteLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::method_label;

    #[test]
    fn only_standard_methods_keep_their_name() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let odd = Method::from_bytes(b"BREW").unwrap_or(Method::GET);
        assert_eq!(method_label(&odd), "OTHER");
        let long = Method::from_bytes("X".repeat(4_000).as_bytes()).unwrap_or(Method::GET);
        assert_eq!(method_label(&long), "OTHER");
    }
}
