//! Operations endpoints: liveness, readiness, metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use ledger_projections::runtime::Health;
use serde_json::{Value, json};

use super::AppState;

/// The process is up (no dependencies checked).
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready to serve: the database answers and no projection is stalled or
/// further behind than the configured bound.
#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "ready"), (status = 503, description = "not ready, with reasons"))
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mut problems = Vec::new();
    if let Err(e) = state.reads.ping().await {
        tracing::warn!(error = %e, "readiness: database unreachable");
        problems.push("database unreachable".to_owned());
    }
    let mut projections = Vec::new();
    for rx in &state.projections {
        let s = rx.borrow().clone();
        let lag = s.lag().unwrap_or(0);
        state.metrics.projection_lag(&s.name, lag);
        let health = match &s.health {
            Health::Stalled {
                stream, version, ..
            } => {
                problems.push(format!(
                    "projection {} stalled at {stream} v{version}",
                    s.name
                ));
                "stalled"
            }
            Health::Failing { .. } => "failing",
            Health::Starting => "starting",
            Health::Running => "running",
        };
        if lag > state.settings.readiness_lag_max {
            problems.push(format!(
                "projection {} lags {lag} events (bound {})",
                s.name, state.settings.readiness_lag_max
            ));
        }
        projections.push(json!({"name": s.name, "health": health, "lag": lag, "position": s.checkpoint.position}));
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if problems.is_empty() { "ready" } else { "not_ready" },
            "problems": problems,
            "projections": projections,
        })),
    )
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    for rx in &state.projections {
        let s = rx.borrow().clone();
        state.metrics.projection_lag(&s.name, s.lag().unwrap_or(0));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
