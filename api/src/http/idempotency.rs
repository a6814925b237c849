//! `Idempotency-Key` on every command.
//!
//! **Guarantees:**
//! - A command without a usable key is refused (400) before anything runs.
//! - Of concurrent requests with one key, exactly one executes; the others
//!   get 409 `idempotency_key_in_progress` with `Retry-After` (seconds until
//!   the holder's lease ends, at least 1), or 422 if their body differs.
//! - A claim is freed as soon as its request ends without a response to
//!   store: a refusal or failure releases it, and so does a request whose
//!   future is dropped (client disconnect, request timeout) through
//!   [`Claim`]'s drop guard. Releases are owner-checked: a late one never
//!   frees a claim another request took over.
//! - **After a crash**, a retry succeeds at most [`LEASE`] after the crash:
//!   a live request renews its claim every [`HEARTBEAT`], so a claim is only
//!   ever older than [`LEASE`] when its holder died (or lost its database for
//!   that long); the first retry after that takes it over. (Across
//!   instances the bound also includes their clocks' skew.)
//! - A finished request's response is replayed byte for byte, with
//!   `Idempotent-Replayed: true`, without executing anything.
//! - Only successful (2xx) responses are kept. A refused request writes
//!   nothing, so fixing the body and retrying with the same key works.
//! - Losing the record cannot double-execute: new stream ids are derived
//!   from the key, so a re-run meets the core's duplicate guards.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use ledger_projections::clock::Clock;
use ledger_store::idempotency::{Begin, IdempotencyStore, StoredResponse};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;

pub const HEADER: &str = "idempotency-key";
/// Stripe's limit; long enough for any UUID or composite key a client uses.
pub const KEY_LEN_MAX: usize = 255;
/// A claim not renewed for this long belongs to a request that died; a
/// retry may take it over. This bounds how long a crash blocks a key.
pub const LEASE: Duration = Duration::from_secs(6);
/// How often a running request renews its claim: three renewals per lease,
/// so two late or failed ones in a row still keep it.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
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

/// This process's id: the first half of every claim owner it writes, so a
/// claim in the table names the instance that made it.
static PROCESS_ID: LazyLock<uuid::Uuid> = LazyLock::new(uuid::Uuid::new_v4);

/// A new claim owner: this process and a claim id (unique per claim, so an
/// owner-checked release never frees another request's claim, even one of
/// this process).
pub fn new_owner() -> String {
    format!("{}/{}", *PROCESS_ID, uuid::Uuid::new_v4())
}

/// `Retry-After` for a claim in flight: whole seconds until its lease ends,
/// rounded up, at least 1.
pub fn retry_after_secs(lease_ends: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let millis = u64::try_from((lease_ends - now).num_milliseconds()).unwrap_or(0);
    millis.div_ceil(1000).max(1)
}

/// 409 for a key whose claim is held by a running request.
pub fn in_progress(lease_ends: DateTime<Utc>, now: DateTime<Utc>) -> Response {
    let mut response = ApiError::conflict(
        "idempotency_key_in_progress",
        "a request with this Idempotency-Key is still running; retry with the same key after Retry-After seconds",
    )
    .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs(lease_ends, now)),
    );
    response
}

/// A claim this request holds (`Begin::Started`, or a fresh order written
/// without its response). While it lives, a heartbeat renews the lease every
/// [`HEARTBEAT`]. It must end with [`Claim::finish`]; if it is dropped
/// instead (the request future was dropped: client disconnect, request
/// timeout, a panic), the drop spawns an owner-checked release so a retry
/// can run at once.
pub struct Claim {
    store: Arc<dyn IdempotencyStore>,
    scope: String,
    key: String,
    owner: String,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    settled: bool,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("scope", &self.scope)
            .field("owner", &self.owner)
            .field("settled", &self.settled)
            .finish_non_exhaustive()
    }
}

impl Claim {
    /// Takes charge of a claim `owner` holds and starts its heartbeat.
    pub fn held(state: &AppState, scope: &str, key: &str, owner: String) -> Claim {
        let heartbeat = tokio::spawn(heartbeat(
            state.idempotency.clone(),
            state.clock.clone(),
            scope.to_owned(),
            key.to_owned(),
            owner.clone(),
        ));
        Claim {
            store: state.idempotency.clone(),
            scope: scope.to_owned(),
            key: key.to_owned(),
            owner,
            heartbeat: Some(heartbeat),
            settled: false,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }

    /// Ends the claim: stores a success for replay, or releases the claim
    /// so a retry can execute.
    pub async fn finish(
        mut self,
        state: &AppState,
        outcome: Result<JsonReply, ApiError>,
    ) -> Response {
        self.stop_heartbeat();
        // From here on the outcome is settled by this call; if it is dropped
        // half-way the drop releases (after a completion that did not land,
        // that only lets a retry meet the core's duplicate guards sooner).
        let response = match outcome {
            Ok(reply) => {
                // Projectors pick the new events up now, not at their next poll.
                state.wake.notify_one();
                let stored = StoredResponse::from(reply);
                match self
                    .store
                    .complete(&self.scope, &self.key, &stored, state.clock.now())
                    .await
                {
                    Ok(()) => {}
                    Err(e) => {
                        // The command ran; the key stays claimed until its
                        // lease ends (no more heartbeats: at most LEASE) and a
                        // retry then re-runs into the core's duplicate guards.
                        tracing::error!(scope = %self.scope, error = %e, "could not store the idempotent response");
                    }
                }
                respond(&stored, false)
            }
            Err(e) => {
                if let Err(release) = self
                    .store
                    .release(&self.scope, &self.key, &self.owner)
                    .await
                {
                    tracing::error!(scope = %self.scope, error = %release, "could not release the idempotency claim");
                }
                e.into_response()
            }
        };
        self.settled = true;
        response
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.stop_heartbeat();
        if self.settled {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (shutting down): the lease runs out instead.
            return;
        };
        let store = self.store.clone();
        let scope = std::mem::take(&mut self.scope);
        let key = std::mem::take(&mut self.key);
        let owner = std::mem::take(&mut self.owner);
        tracing::info!(scope = %scope, "request dropped before it answered; releasing its idempotency claim");
        runtime.spawn(async move {
            if let Err(e) = store.release(&scope, &key, &owner).await {
                tracing::warn!(scope = %scope, error = %e, "could not release a dropped request's idempotency claim; its lease will run out");
            }
        });
    }
}

/// Renews a claim's lease every [`HEARTBEAT`] until aborted or the claim is
/// lost.
async fn heartbeat(
    store: Arc<dyn IdempotencyStore>,
    clock: Arc<dyn Clock>,
    scope: String,
    key: String,
    owner: String,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.renew(&scope, &key, &owner, clock.now()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(scope = %scope, "idempotency claim lost while its request runs (taken over after a stall)");
                return;
            }
            Err(e) => {
                tracing::warn!(scope = %scope, error = %e, "could not renew the idempotency claim; retrying at the next heartbeat");
            }
        }
    }
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
    let owner = new_owner();
    match store.begin(scope, key, &hash, &owner, now, LEASE).await {
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
        Ok(Begin::InProgress { lease_ends }) => return in_progress(lease_ends, now),
        Ok(Begin::Started) => {}
    }
    // Dropped with the request future if it never gets to `finish`.
    let claim = Claim::held(state, scope, key, owner);
    let outcome = execute().await;
    claim.finish(state, outcome).await
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
    fn retry_after_rounds_up_to_at_least_a_second() {
        let now = DateTime::from_timestamp(1_000, 0).unwrap();
        let ms = chrono::TimeDelta::milliseconds;
        assert_eq!(retry_after_secs(now + ms(6_000), now), 6);
        assert_eq!(retry_after_secs(now + ms(5_001), now), 6);
        assert_eq!(retry_after_secs(now + ms(1), now), 1);
        assert_eq!(retry_after_secs(now, now), 1);
        assert_eq!(retry_after_secs(now - ms(9_000), now), 1);
        let r = in_progress(now + ms(2_500), now);
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn owners_are_unique_and_name_the_process() {
        let (a, b) = (new_owner(), new_owner());
        assert_ne!(a, b);
        assert_eq!(a.split('/').next(), b.split('/').next());
        assert!(a.len() <= ledger_store::idempotency::OWNER_MAX);
    }

    #[test]
    fn the_hash_binds_scope_and_body() {
        assert_eq!(request_hash("a", b"x"), request_hash("a", b"x"));
        assert_ne!(request_hash("a", b"x"), request_hash("a", b"y"));
        assert_ne!(request_hash("a", b"x"), request_hash("b", b"x"));
    }
}
