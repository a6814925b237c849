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
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            requests,
            latency,
            webhooks,
            replays,
            lag,
        }
    }

    pub fn request(&self, route: &str, method: &str, status: u16, elapsed: std::time::Duration) {
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
