//! The fake's HTTP control surface under `/_fake`.
//!
//! **Guarantees:** each route is a thin call to the matching [`FakePsp`]
//! method, so HTTP and in-process control behave the same. It is
//! unauthenticated: the fake only ever listens on loopback. Malformed
//! bodies are a 400 or 422, never a panic.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{Endpoint, FAULT_TIMES_MAX, FakeError, FakePsp, Fault};

pub(super) fn routes() -> Router<FakePsp> {
    Router::new()
        .route("/payments/{id}/complete", post(complete_payment))
        .route("/refunds/{id}/complete", post(complete_refund))
        .route("/payments/{id}/status", post(set_payment_status))
        .route("/refunds/{id}/status", post(set_refund_status))
        .route(
            "/stripe/transfers/{id}/destination_null",
            post(destination_null),
        )
        .route("/stripe/idempotency/prune", post(prune))
        .route("/webhooks/target", post(set_target))
        .route("/webhooks/deliver", post(deliver))
        .route("/webhooks/release", post(release))
        .route("/counters", get(counters))
        .route("/faults", post(inject_fault).delete(clear_faults))
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PruneBody {
    older_than_secs: Option<u64>,
}

/// `POST /_fake/faults` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    endpoint: Endpoint,
    fault: FaultKind,
    status: Option<u16>,
    times: Option<u32>,
}

/// The faults the HTTP surface can queue (the in-process API has more).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FaultKind {
    SucceedThenStatus,
    SucceedThenDrop,
    Status,
    RateLimited,
    Hang,
    HangAfterCommit,
}

/// A `FaultBody` as the fault and its count, or why it is refused.
fn fault_of(body: &FaultBody) -> Result<(Fault, u32), String> {
    let times = body.times.unwrap_or(1);
    if !(1..=FAULT_TIMES_MAX).contains(&times) {
        return Err(format!("times must be 1 to {FAULT_TIMES_MAX}, not {times}"));
    }
    let needs_status = matches!(body.fault, FaultKind::Status | FaultKind::SucceedThenStatus);
    let fault = match (body.fault, body.status) {
        (FaultKind::Status | FaultKind::SucceedThenStatus, None) => {
            return Err(
                "status (an HTTP error status, 400 to 599) is required for this fault".to_owned(),
            );
        }
        (_, Some(status)) if !needs_status => {
            return Err(format!(
                "status {status} is only accepted with the status and succeed_then_status faults"
            ));
        }
        (_, Some(status)) if !(400..=599).contains(&status) => {
            return Err(format!(
                "status must be an HTTP error status, 400 to 599, not {status}"
            ));
        }
        (FaultKind::Status, Some(status)) => Fault::Status(status),
        (FaultKind::SucceedThenStatus, Some(status)) => Fault::SucceedThenStatus(status),
        (FaultKind::SucceedThenDrop, _) => Fault::SucceedThenDrop,
        (FaultKind::RateLimited, _) => Fault::RateLimited,
        (FaultKind::Hang, _) => Fault::Hang,
        (FaultKind::HangAfterCommit, _) => Fault::HangAfterCommit,
    };
    Ok((fault, times))
}

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": message.into() })),
    )
        .into_response()
}

/// Queues `times` faults on `endpoint` (after any already queued).
async fn inject_fault(State(psp): State<FakePsp>, body: Bytes) -> Response {
    let request = match serde_json::from_slice::<FaultBody>(&body) {
        Ok(request) => request,
        Err(error) => return bad_request(error.to_string()),
    };
    match fault_of(&request) {
        Ok((fault, times)) => {
            tracing::info!(endpoint = ?request.endpoint, ?fault, times, "psp fake: fault queued");
            psp.inject_fault(request.endpoint, fault, times);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => bad_request(message),
    }
}

async fn clear_faults(State(psp): State<FakePsp>) -> StatusCode {
    psp.clear_faults();
    StatusCode::NO_CONTENT
}

fn outcome(result: Result<serde_json::Value, FakeError>) -> Response {
    match result {
        Ok(body) => Json(body).into_response(),
        Err(error @ FakeError::UndocumentedStatus(_)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": error.to_string() })),
        )
            .into_response(),
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
    outcome(
        psp.complete_payment(&id, &body.status)
            .map(|event_id| json!({ "event_id": event_id })),
    )
}

async fn complete_refund(
    State(psp): State<FakePsp>,
    Path(id): Path<String>,
    Json(body): Json<StatusBody>,
) -> Response {
    outcome(
        psp.complete_refund(&id, &body.status)
            .map(|event_id| json!({ "event_id": event_id })),
    )
}

async fn set_payment_status(
    State(psp): State<FakePsp>,
    Path(id): Path<String>,
    Json(body): Json<StatusBody>,
) -> Response {
    outcome(
        psp.set_payment_status(&id, &body.status)
            .map(|()| json!({ "status": body.status })),
    )
}

async fn set_refund_status(
    State(psp): State<FakePsp>,
    Path(id): Path<String>,
    Json(body): Json<StatusBody>,
) -> Response {
    outcome(
        psp.set_refund_status(&id, &body.status)
            .map(|()| json!({ "status": body.status })),
    )
}

async fn destination_null(State(psp): State<FakePsp>, Path(id): Path<String>) -> Response {
    outcome(
        psp.set_transfer_destination_null(&id)
            .map(|()| json!({ "destination": null })),
    )
}

/// Body optional: empty prunes every key.
async fn prune(State(psp): State<FakePsp>, body: Bytes) -> Response {
    let parsed = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(PruneBody::default())
    } else {
        serde_json::from_slice::<PruneBody>(&body)
    };
    let request = match parsed {
        Ok(request) => request,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": error.to_string() })),
            )
                .into_response();
        }
    };
    let pruned = match request.older_than_secs {
        None => psp.prune_idempotency_keys(),
        Some(secs) => psp.prune_idempotency_keys_older_than(Duration::from_secs(secs)),
    };
    Json(json!({ "pruned": pruned })).into_response()
}

async fn set_target(State(psp): State<FakePsp>, Json(body): Json<TargetBody>) -> StatusCode {
    psp.set_webhook_target(body.url, body.key);
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
