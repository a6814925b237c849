//! Prometheus metrics, one registry per app (no globals, so tests can run
//! several apps in one process).

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectionLabels {
    projection: String,
}

/// The `method` label of a request: one of a fixed set, so a client
/// inventing method names (`FOO /v1/orders`) cannot add label series,
/// which are never freed.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Latency buckets: 1 ms doubling to ~32 s.
const LATENCY_BUCKETS: u16 = 16;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    webhooks: Family<ResultLabels, Counter>,
    replays: Family<ScopeLabels, Counter>,
    lag: Family<ProjectionLabels, Gauge>,
    connections_open: Gauge,
    connections_refused: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "ledger_http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, LATENCY_BUCKETS))
        });
        registry.register(
            "ledger_http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        let webhooks = Family::<ResultLabels, Counter>::default();
        registry.register(
            "ledger_webhook_deliveries",
            "Hyperswitch webhook deliveries by processing result",
            webhooks.clone(),
        );
        let replays = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "ledger_idempotency_replays",
            "Command responses replayed from the idempotency store",
            replays.clone(),
        );
        let lag = Family::<ProjectionLabels, Gauge>::default();
        registry.register(
            "ledger_projection_lag_events",
            "Events between a projection's checkpoint and the store head",
            lag.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "ledger_http_connections_open",
            "HTTP connections open now",
            connections_open.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "ledger_http_connections_refused",
            "HTTP connections closed at once because MAX_CONNECTIONS were open",
            connections_refused.clone(),
        );
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            connections_open,
            connections_refused,
            requests,
            latency,
            webhooks,
            replays,
            lag,
        }
    }

    /// Counts one request. `method` is the label from [`method_label`].
    pub fn request(
        &self,
        route: &str,
        method: &'static str,
        status: u16,
        elapsed: std::time::Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A connection was accepted (`+1`) or closed (`-1`).
    pub fn connections_open(&self, delta: i64) {
        self.connections_open.inc_by(delta);
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn webhook(&self, result: &str) {
        self.webhooks
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn idempotency_replay(&self, scope: &str) {
        self.replays
            .get_or_create(&ScopeLabels {
                scope: scope.to_owned(),
            })
            .inc();
    }

    pub fn projection_lag(&self, projection: &str, lag: u64) {
        self.lag
            .get_or_create(&ProjectionLabels {
                projection: projection.to_owned(),
            })
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
