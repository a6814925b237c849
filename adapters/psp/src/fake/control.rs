//! The fake's HTTP control surface under `/_fake`.
//!
//! **Guarantees:** each route is a thin call to the matching [`FakePsp`]
//! method, so HTTP and in-process control behave the same. It is
//! unauthenticated: the fake only ever listens on loopback.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ledger_core::ids::{PaymentId, PspRefundId};
use ledger_core::psp::{PaymentStatus, RefundPspStatus};
use serde::Deserialize;
use serde_json::json;

use super::FakePsp;
use crate::secret::Secret;

pub(super) fn routes() -> Router<FakePsp> {
    Router::new()
        .route("/payments/{id}/complete", post(complete_payment))
        .route("/refunds/{id}/complete", post(complete_refund))
        .route("/webhooks/target", post(set_target))
        .route("/webhooks/deliver", post(deliver))
        .route("/webhooks/release", post(release))
        .route("/counters", get(counters))
}

#[derive(Deserialize)]
struct StatusBody {
    status: String,
}

#[derive(Deserialize)]
struct TargetBody {
    url: String,
    key: Option<String>,
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

fn completed(result: Result<Option<String>, super::FakeError>) -> Response {
    match result {
        Ok(event_id) => Json(json!({ "event_id": event_id })).into_response(),
        Err(error) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": error.to_string() })),
        )
            .into_response(),
    }
}

async fn complete_payment(
    State(psp): State<FakePsp>,
    Path(id): Path<String>,
    Json(body): Json<StatusBody>,
) -> Response {
    match PaymentId::new(id) {
        Ok(id) => completed(psp.complete_payment(&id, PaymentStatus::parse(&body.status))),
        Err(e) => bad_request(e.to_string()),
    }
}

async fn complete_refund(
    State(psp): State<FakePsp>,
    Path(id): Path<String>,
    Json(body): Json<StatusBody>,
) -> Response {
    let status = match RefundPspStatus::parse(&body.status) {
        Ok(status) => status,
        Err(e) => return bad_request(e.to_string()),
    };
    match PspRefundId::new(id) {
        Ok(id) => completed(psp.complete_refund(&id, status)),
        Err(e) => bad_request(e.to_string()),
    }
}

async fn set_target(State(psp): State<FakePsp>, Json(body): Json<TargetBody>) -> StatusCode {
    psp.set_webhook_target(body.url, body.key.map(Secret::new));
    StatusCode::NO_CONTENT
}

async fn deliver(State(psp): State<FakePsp>) -> Response {
    Json(psp.deliver_pending_webhooks().await).into_response()
}

async fn release(State(psp): State<FakePsp>) -> Response {
    Json(json!({ "released": psp.release_held_webhooks() })).into_response()
}

async fn counters(State(psp): State<FakePsp>) -> Response {
    Json(psp.counters()).into_response()
}
