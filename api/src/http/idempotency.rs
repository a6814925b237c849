//! `Idempotency-Key` on every command.
//!
//! **Guarantees:**
//! - A command without a usable key is refused (400) before anything runs.
//! - Of concurrent requests with one key, exactly one executes; the others
//!   get 409 `idempotency_key_in_progress` (or 422 if their body differs).
//! - A finished request's response is replayed byte for byte, with
//!   `Idempotent-Replayed: true`, without executing anything.
//! - Only successful (2xx) responses are kept. A refused request writes
//!   nothing, so fixing the body and retrying with the same key works.
//! - Losing the record cannot double-execute: new stream ids are derived
//!   from the key, so a re-run meets the core's duplicate guards.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ledger_store::idempotency::{Begin, StoredResponse};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;

pub const HEADER: &str = "idempotency-key";
/// Stripe's limit; long enough for any UUID or composite key a client uses.
pub const KEY_LEN_MAX: usize = 255;
/// A claim older than this belongs to a request that died; a retry may take
/// it over. Longer than the request timeout so a live request keeps it.
pub const LEASE: Duration = Duration::from_secs(60);
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The validated key of a command request.
pub fn key_of(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(raw) = headers.get(HEADER) else {
        return Err(ApiError::bad_request(
            "idempotency_key_required",
            "send an Idempotency-Key header (a unique string per command, e.g. a UUID) so retries cannot execute twice",
        ));
    };
    let key = raw.to_str().map(str::trim).unwrap_or("");
    if key.is_empty() {
        return Err(ApiError::bad_request(
            "idempotency_key_required",
            "the Idempotency-Key header is empty; send a unique string per command, e.g. a UUID",
        ));
    }
    if key.len() > KEY_LEN_MAX || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "idempotency_key_invalid",
            format!("the Idempotency-Key must be 1 to {KEY_LEN_MAX} visible ASCII characters"),
        ));
    }
    Ok(key.to_owned())
}

pub fn request_hash(scope: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(scope.as_bytes());
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

/// A JSON success response that can be stored and replayed.
#[derive(Debug)]
pub struct JsonReply {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl JsonReply {
    pub fn new(status: StatusCode, value: &impl serde::Serialize) -> Result<JsonReply, ApiError> {
        Ok(JsonReply {
            status,
            body: serde_json::to_vec(value).map_err(ApiError::internal)?,
        })
    }
}

impl From<JsonReply> for StoredResponse {
    fn from(reply: JsonReply) -> StoredResponse {
        StoredResponse {
            status: reply.status.as_u16(),
            content_type: "application/json".to_owned(),
            body: reply.body,
        }
    }
}

pub fn respond(stored: &StoredResponse, replayed: bool) -> Response {
    let mut response = Response::new(Body::from(stored.body.clone()));
    *response.status_mut() =
        StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(ct) = HeaderValue::from_str(&stored.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

/// Runs `execute` at most once per `(scope, key)`.
pub async fn run<F, Fut>(
    state: &AppState,
    scope: &str,
    key: &str,
    body: &[u8],
    execute: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<JsonReply, ApiError>>,
{
    let hash = request_hash(scope, body);
    let store = &state.idempotency;
    let now = state.clock.now();
    match store.begin(scope, key, &hash, now, LEASE).await {
        Err(e) => return ApiError::internal(e).into_response(),
        Ok(Begin::Completed(stored)) => {
            // The label is the principal and route only, never an id.
            let label: Vec<&str> = scope.splitn(3, ':').take(2).collect();
            state.metrics.idempotency_replay(&label.join(":"));
            tracing::info!(scope, "idempotent replay");
            return respond(&stored, true);
        }
        Ok(Begin::Mismatch) => {
            return ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request body; use a new key for a new command",
            )
            .into_response();
        }
        Ok(Begin::InProgress) => {
            return ApiError::conflict(
                "idempotency_key_in_progress",
                "a request with this Idempotency-Key is still running; retry shortly with the same key",
            )
            .into_response();
        }
        Ok(Begin::Started) => {}
    }
    let outcome = execute().await;
    finish(state, scope, key, outcome).await
}

/// Ends a claimed (`Started`) request: stores a success for replay, or
/// releases the claim so a retry can execute.
pub async fn finish(
    state: &AppState,
    scope: &str,
    key: &str,
    outcome: Result<JsonReply, ApiError>,
) -> Response {
    let store = &state.idempotency;
    match outcome {
        Ok(reply) => {
            // Projectors pick the new events up now, not at their next poll.
            state.wake.notify_one();
            let stored = StoredResponse::from(reply);
            if let Err(e) = store.complete(scope, key, &stored, state.clock.now()).await {
                // The command ran; the key stays claimed until its lease ends
                // and a retry then re-runs into the core's duplicate guards.
                tracing::error!(scope, error = %e, "could not store the idempotent response");
            }
            respond(&stored, false)
        }
        Err(e) => {
            if let Err(release) = store.release(scope, key).await {
                tracing::error!(scope, error = %release, "could not release the idempotency claim");
            }
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_bytes(value).unwrap());
        h
    }

    #[test]
    fn keys_are_required_and_bounded() {
        assert_eq!(
            key_of(&HeaderMap::new()).unwrap_err().code(),
            "idempotency_key_required"
        );
        assert_eq!(
            key_of(&headers(b"  ")).unwrap_err().code(),
            "idempotency_key_required"
        );
        assert_eq!(
            key_of(&headers(&[b'k'; KEY_LEN_MAX + 1]))
                .unwrap_err()
                .code(),
            "idempotency_key_invalid"
        );
        assert_eq!(key_of(&headers(b"order-42")).unwrap(), "order-42");
    }

    #[test]
    fn the_hash_binds_scope_and_body() {
        assert_eq!(request_hash("a", b"x"), request_hash("a", b"x"));
        assert_ne!(request_hash("a", b"x"), request_hash("a", b"y"));
        assert_ne!(request_hash("a", b"x"), request_hash("b", b"x"));
    }
}
