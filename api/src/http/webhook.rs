//! `POST /webhooks/hyperswitch`, as the seed's item E specifies.
//!
//! **Guarantees:**
//! - A body over 64 KiB is refused with 413 before anything is written.
//! - Every other delivery writes exactly one `hyperswitch_webhook_log` row,
//!   once, with its final state; a failure to write it is logged and
//!   swallowed (the contract is to answer the PSP).
//! - The signature is checked over the raw bytes in constant time and fails
//!   closed: no key configured, no header, or a wrong one → 401.
//! - A delivery becomes at most one command per stream, with event ids
//!   derived from the webhook's `event_id`, so duplicates and retries are
//!   no-ops at three layers (the log, the store, the core's guards), and
//!   stale statuses cannot move a stream backwards (forward-only core).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ledger_core::ids::StreamId;
use ledger_core::ids::{
    command_id_from_cause, order_id_from_payment_id, refund_id_from_psp_refund_id,
};
use ledger_core::order::{Order, OrderCommand};
use ledger_core::refund::{Refund, RefundCommand, RefundState};
use ledger_core::{Checkpoint, ExpectedVersion, Metadata, NewEvent, RecordedEvent, Source};
use ledger_psp::webhook::{EnvelopeError, EventClass, WebhookObject};
use ledger_psp::{event_type_best_effort, parse_envelope, verify_hyperswitch};
use ledger_store::EventStore;
use ledger_store::group_commit::GroupedAppends;
use ledger_store::handle::{CommandContext, HandleError, execute};
use ledger_store::webhook_log::{
    RESULT_OK, UNSIGNED_PAYLOAD_KEPT_MAX, WebhookLogEntry, prefix_on_char_boundary,
};
use ledger_store::{AppendResult, READ_BATCH_MAX, StoreError, StreamAppend};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorBody};
use super::{AppState, RequestId, WEBHOOK_BODY_MAX};

pub const SIGNATURE_HEADER: &str = "x-webhook-signature-512";
/// Longest `User-Agent` kept in the log.
const USER_AGENT_LEN_MAX: usize = 512;
/// Longest error text kept in `processing_result`.
const RESULT_LEN_MAX: usize = 500;

/// How one delivery ended.
#[derive(Debug)]
enum Outcome {
    Ok,
    Duplicate,
    Skipped,
    SignatureInvalid,
    /// A signed body that is not a usable envelope: 400.
    Malformed(String),
    /// Processed, but the ledger refused it for good (unknown payment, a
    /// rejection); acknowledged so the PSP stops retrying, and logged.
    Refused(String),
    /// A transient failure (store down): 503 so the PSP retries.
    Failed(String),
}

impl Outcome {
    fn result_text(&self) -> String {
        let clip = |s: &str| s.chars().take(RESULT_LEN_MAX).collect::<String>();
        match self {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Duplicate => "duplicate".to_owned(),
            Outcome::Skipped => "skipped".to_owned(),
            Outcome::SignatureInvalid => "signature_invalid".to_owned(),
            Outcome::Malformed(m) | Outcome::Refused(m) | Outcome::Failed(m) => {
                format!("error: {}", clip(m))
            }
        }
    }

    fn metric(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Duplicate => "duplicate",
            Outcome::Skipped => "skipped",
            Outcome::SignatureInvalid => "signature_invalid",
            Outcome::Malformed(_) => "malformed",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
        }
    }

    fn response(&self) -> Response {
        match self {
            Outcome::Ok | Outcome::Duplicate | Outcome::Skipped | Outcome::Refused(_) => {
                (StatusCode::OK, Json(json!({"status": self.metric()}))).into_response()
            }
            Outcome::SignatureInvalid => ApiError::Unauthorized {
                code: "signature_invalid",
                message: "X-Webhook-Signature-512 is missing or does not match the body".to_owned(),
            }
            .into_response(),
            Outcome::Malformed(m) => {
                ApiError::bad_request("malformed_webhook", m.clone()).into_response()
            }
            Outcome::Failed(_) => ApiError::Unavailable {
                message: "the ledger could not record this webhook; please retry".to_owned(),
            }
            .into_response(),
        }
    }
}

/// Cuts a logged payload down to [`UNSIGNED_PAYLOAD_KEPT_MAX`] bytes (on a
/// char boundary) and records the whole body's SHA-256 and length.
fn keep_digest_only(entry: &mut WebhookLogEntry, body: &[u8]) {
    let kept = prefix_on_char_boundary(&entry.payload, UNSIGNED_PAYLOAD_KEPT_MAX).len();
    entry.payload.truncate(kept);
    entry.payload_sha256 = Some(hex::encode(Sha256::digest(body)));
    entry.payload_len = i64::try_from(body.len()).ok();
}

fn header_text(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(USER_AGENT_LEN_MAX).collect())
}

fn event_id_best_effort(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .get("event_id")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(ledger_psp::webhook::EVENT_ID_MAX).collect())
}

/// Receive a Hyperswitch webhook.
#[utoipa::path(
    post, path = "/webhooks/hyperswitch", tag = "webhooks",
    params(("X-Webhook-Signature-512" = String, Header, description = "hex HMAC-SHA512 of the raw body")),
    request_body(content = String, content_type = "application/json", description = "Hyperswitch webhook envelope"),
    responses(
        (status = 200, description = "ok, duplicate or skipped"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)
    )
)]
pub async fn hyperswitch(State(state): State<AppState>, request: Request) -> Response {
    let received_at = state.clock.now();
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let source_ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let headers = request.headers().clone();
    let body = match super::LimitedBody::<WEBHOOK_BODY_MAX>::from_request_inner(request).await {
        Ok(body) => body,
        Err(e) => {
            state.metrics.webhook("too_large");
            return e.into_response();
        }
    };
    // The row as it reads if the delivery is processed; an `ok` payment
    // delivery commits it with its events, any other outcome below.
    let entry = WebhookLogEntry {
        payload: String::from_utf8(body.to_vec()).unwrap_or_default(),
        signature_valid: true,
        processing_result: RESULT_OK.to_owned(),
        source_ip,
        user_agent: header_text(&headers, header::USER_AGENT),
        request_id,
        event_type: event_type_best_effort(&body),
        event_id: event_id_best_effort(&body),
        received_at,
        // Every write of this delivery's row (a retry after a lost answer
        // included) carries it, so the row is written once.
        delivery_id: Some(uuid::Uuid::new_v4()),
        payload_sha256: None,
        payload_len: None,
    };
    let event_id = entry.event_id.clone();
    let request_id = entry.request_id.clone();
    let appends = LoggingAppends::new(state.appends.clone(), entry);
    let outcome = process(&state, &appends, &headers, &body, &request_id).await;
    // Once the `ok` row committed with the append, the delivery's events are
    // stored: whatever happened after (a failed reload), the answer is the
    // row's.
    let outcome = if appends.logged() {
        if !matches!(outcome, Outcome::Ok) {
            tracing::warn!(event_id = ?event_id, after = ?outcome, "webhook applied and logged ok; a step after its append failed");
        }
        Outcome::Ok
    } else {
        let mut entry = appends.entry;
        entry.signature_valid = !matches!(outcome, Outcome::SignatureInvalid);
        entry.processing_result = outcome.result_text();
        if !entry.signature_valid {
            // Anyone can send these: keep the headers, the body's hash and
            // length, and at most its first bytes, not the whole body.
            keep_digest_only(&mut entry, &body);
        }
        if let Err(e) = state.log_writer.insert(entry).await {
            tracing::error!(error = %e, event_id = ?event_id, "could not write the webhook log row; acknowledging anyway");
        }
        outcome
    };
    state.metrics.webhook(outcome.metric());
    if matches!(outcome, Outcome::Ok) {
        state.wake.notify_one();
    }
    match &outcome {
        Outcome::Refused(m) | Outcome::Failed(m) => {
            tracing::error!(event_id = ?event_id, result = outcome.metric(), reason = %m, "webhook not applied");
        }
        _ => tracing::info!(event_id = ?event_id, result = outcome.metric(), "webhook"),
    }
    outcome.response()
}

fn webhook_context(event_id: &str, stream_step: &str, request_id: &str) -> CommandContext {
    CommandContext::from_cause(
        &format!("hyperswitch:{event_id}:{stream_step}"),
        "hyperswitch",
        Source::Webhook,
    )
    .with_request_id(request_id)
}

fn classify<R: std::error::Error + 'static>(e: HandleError<R>) -> Outcome {
    match e {
        HandleError::Rejected(r) => Outcome::Refused(r.to_string()),
        HandleError::Contention { .. } | HandleError::Store(_) => Outcome::Failed(e.to_string()),
        other => Outcome::Refused(other.to_string()),
    }
}

/// The store a payment delivery's command appends through: its append
/// carries the delivery's `ok` log row into the same transaction, so on the
/// normal path the row commits with the events and costs no commit of its
/// own. (A logged append answering `already_existed` commits the row with
/// no new events; the fallback below commits the events alone.) Reads, and
/// appends after the one that took the row, are plain.
///
/// Its first read of the delivery's stream may be answered from
/// [`LoggingAppends::dedupe_and_load`], which read it in the dedupe
/// lookup's round trip.
struct LoggingAppends {
    appends: Arc<GroupedAppends>,
    entry: WebhookLogEntry,
    logged: AtomicBool,
    /// The first page of a stream, read with the dedupe lookup; served once.
    prefetched: Mutex<Option<(StreamId, Vec<RecordedEvent>)>>,
}

impl LoggingAppends {
    fn new(appends: Arc<GroupedAppends>, entry: WebhookLogEntry) -> Self {
        LoggingAppends {
            appends,
            entry,
            logged: AtomicBool::new(false),
            prefetched: Mutex::new(None),
        }
    }

    /// Whether `event_id` was processed already (`ok` row); if not, the
    /// first page of `stream` is kept for the command's load, so the
    /// dedupe and the load cost one round trip.
    async fn dedupe_and_load(&self, event_id: &str, stream: &StreamId) -> Result<bool, StoreError> {
        match self
            .appends
            .read_stream_unless_processed(event_id, stream, READ_BATCH_MAX)
            .await?
        {
            None => Ok(true),
            Some(page) => {
                if let Ok(mut slot) = self.prefetched.lock() {
                    *slot = Some((stream.clone(), page));
                }
                Ok(false)
            }
        }
    }

    /// The kept page, once, if it answers `read_stream(stream, from, max)`.
    fn take_prefetched(
        &self,
        stream: &StreamId,
        from: u64,
        max: u32,
    ) -> Option<Vec<RecordedEvent>> {
        if from != 1 || max != READ_BATCH_MAX {
            return None;
        }
        let mut slot = self.prefetched.lock().ok()?;
        match slot.take() {
            Some((kept, page)) if &kept == stream => Some(page),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Whether the row committed with an append.
    fn logged(&self) -> bool {
        self.logged.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl EventStore for LoggingAppends {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        if self.logged() {
            return self.appends.append(stream, expected, events).await;
        }
        match self
            .appends
            .append_logged(stream, expected, events, self.entry.clone())
            .await
        {
            Ok((result, _id)) => {
                self.logged.store(true, Ordering::SeqCst);
                Ok(result)
            }
            // The log row may be what failed, and a failure to write the
            // log must not cost the delivery: append alone (the row is then
            // written, or its failure logged, after processing). For the
            // events this is idempotent if the first try did commit and only
            // its answer was lost (the same ids come back as
            // `already_existed`), and so is the row: its later write
            // carries the same `delivery_id` and finds the stored one.
            Err(StoreError::Backend(e)) => {
                tracing::warn!(error = %e, "the append with its webhook-log row failed; appending alone");
                self.appends.append(stream, expected, events).await
            }
            Err(other) => Err(other),
        }
    }

    async fn append_many(&self, batch: &[StreamAppend]) -> Result<Vec<AppendResult>, StoreError> {
        self.appends.append_many(batch).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if let Some(page) = self.take_prefetched(stream, from_version, max_count) {
            return Ok(page);
        }
        self.appends
            .read_stream(stream, from_version, max_count)
            .await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.appends.stream_version(stream).await
    }

    async fn read_all(
        &self,
        after: Checkpoint,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.appends.read_all(after, max_count).await
    }
}

async fn process(
    state: &AppState,
    appends: &LoggingAppends,
    headers: &HeaderMap,
    body: &[u8],
    request_id: &str,
) -> Outcome {
    let Some(key) = state.settings.webhook_key.as_ref() else {
        // Fail closed: without a key no delivery can be trusted.
        return Outcome::SignatureInvalid;
    };
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if verify_hyperswitch(&key.0, body, signature).is_err() {
        return Outcome::SignatureInvalid;
    }
    let envelope = match parse_envelope(body) {
        Ok(e) => e,
        Err(EnvelopeError::InvalidJson(m)) => {
            return Outcome::Malformed(format!("malformed JSON: {m}"));
        }
        Err(other) => return Outcome::Malformed(other.to_string()),
    };
    // A payment's dedupe lookup also reads its order's stream (one round
    // trip); the command's load then starts from that page.
    let payment_stream = match (envelope.event_type.class(), &envelope.object) {
        (EventClass::Payment, WebhookObject::Payment(p)) => {
            order_id_from_payment_id(p.payment_id.as_str()).map(|o| o.stream_id())
        }
        _ => None,
    };
    let processed = match &payment_stream {
        Some(stream) => appends.dedupe_and_load(&envelope.event_id, stream).await,
        None => {
            state
                .webhook_log
                .webhook_event_processed(&envelope.event_id)
                .await
        }
    };
    match processed {
        Ok(true) => return Outcome::Duplicate,
        Ok(false) => {}
        // The core and the store dedupe too; go on.
        Err(e) => tracing::warn!(error = %e, "webhook dedupe lookup failed"),
    }
    let now = state.clock.now();
    match (envelope.event_type.class(), envelope.object) {
        (EventClass::Payment, WebhookObject::Payment(p)) => {
            let Some(order_id) = order_id_from_payment_id(p.payment_id.as_str()) else {
                return Outcome::Refused(format!(
                    "payment_id {} was not issued by this ledger",
                    p.payment_id
                ));
            };
            let command = OrderCommand::ApplyPaymentStatus {
                payment_id: p.payment_id.clone(),
                status: p.status.clone(),
                amount_minor: p.amount_received.or(Some(p.amount)),
                error_message: p.error_message.clone().or(p.error_code.clone()),
                now,
            };
            let ctx = webhook_context(&envelope.event_id, "order", request_id);
            match execute::<Order, _>(appends, &order_id.stream_id(), &ctx, &command).await {
                Ok(_) => Outcome::Ok,
                Err(e) => classify(e),
            }
        }
        (EventClass::Refund, WebhookObject::Refund(r)) => {
            let Some(refund_id) = refund_id_from_psp_refund_id(r.refund_id.as_str()) else {
                return Outcome::Refused(format!(
                    "refund_id {} was not issued by this ledger",
                    r.refund_id
                ));
            };
            let status = match r.psp_status() {
                Ok(s) => s,
                Err(e) => {
                    return Outcome::Refused(format!(
                        "refund status {:?} is unknown: {e}",
                        r.status
                    ));
                }
            };
            let command = RefundCommand::ApplyPspStatus {
                psp_refund_id: Some(r.refund_id.clone()),
                status,
                error_message: r.error_message.clone().or(r.error_code.clone()),
                now,
            };
            let ctx = webhook_context(&envelope.event_id, "refund", request_id);
            let handled =
                match execute::<Refund, _>(&*state.events, &refund_id.stream_id(), &ctx, &command)
                    .await
                {
                    Ok(h) => h,
                    Err(e) => return classify(e),
                };
            match settle_refund_on_order(&*state.events, &handled.state, &ctx.metadata, now).await {
                Ok(()) => Outcome::Ok,
                Err(e) => e,
            }
        }
        (EventClass::Payment | EventClass::Refund, _) => {
            Outcome::Malformed("event_type and content do not match".to_owned())
        }
        _ => Outcome::Skipped,
    }
}

/// Once a refund is terminal, its order follows (the core's
/// `RequestedRefund::order_settlement`; the refund worker runs the same
/// command with the same id, so whichever comes first wins).
async fn settle_refund_on_order(
    events: &dyn EventStore,
    refund: &RefundState,
    metadata: &Metadata,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), Outcome> {
    let Some(r) = refund.refund.as_ref() else {
        return Ok(());
    };
    let Some((cause, command)) = r.order_settlement(now) else {
        return Ok(());
    };
    let ctx = CommandContext {
        command_id: command_id_from_cause(&cause),
        metadata: Metadata {
            causation_id: Some(metadata.correlation_id),
            ..metadata.clone()
        },
    };
    execute::<Order, _>(events, &r.order_id.stream_id(), &ctx, &command)
        .await
        .map(|_| ())
        .map_err(classify)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_the_seed_vocabulary() {
        assert_eq!(Outcome::Ok.result_text(), "ok");
        assert_eq!(Outcome::Duplicate.result_text(), "duplicate");
        assert_eq!(Outcome::Skipped.result_text(), "skipped");
        assert_eq!(Outcome::SignatureInvalid.result_text(), "signature_invalid");
        assert_eq!(Outcome::Malformed("x".into()).result_text(), "error: x");
        assert_eq!(
            Outcome::Refused("x".repeat(900)).result_text().len(),
            "error: ".len() + RESULT_LEN_MAX
        );
    }

    /// The page read with the dedupe lookup answers the command's first
    /// read of that stream only, and only once: a retried load (lost race)
    /// must see the store again.
    #[tokio::test]
    async fn a_prefetched_page_is_served_once_for_its_stream() {
        let store = Arc::new(ledger_store::memory::MemoryStore::new());
        let appends = LoggingAppends::new(
            Arc::new(GroupedAppends::start(store.clone())),
            WebhookLogEntry {
                payload: String::new(),
                signature_valid: true,
                processing_result: RESULT_OK.to_owned(),
                source_ip: None,
                user_agent: None,
                request_id: "r".to_owned(),
                event_type: None,
                event_id: None,
                received_at: chrono::Utc::now(),
                delivery_id: None,
                payload_sha256: None,
                payload_len: None,
            },
        );
        let (kept, other) = (
            StreamId::new("order-kept").unwrap(),
            StreamId::new("order-other").unwrap(),
        );
        let event = ledger_store::conformance::new_event("Stored", "{}");
        store
            .append(
                &kept,
                ExpectedVersion::NoStream,
                std::slice::from_ref(&event),
            )
            .await
            .unwrap();
        // A stale page (empty) stands in for what the lookup read.
        *appends.prefetched.lock().unwrap() = Some((kept.clone(), Vec::new()));
        let read = |s: &StreamId, from: u64, max: u32| {
            let s = s.clone();
            let appends = &appends;
            async move { appends.read_stream(&s, from, max).await.unwrap().len() }
        };
        // Another stream, another start or page size: the store answers and
        // the page stays kept.
        assert_eq!(read(&other, 1, READ_BATCH_MAX).await, 0);
        assert_eq!(read(&kept, 2, READ_BATCH_MAX).await, 0);
        assert_eq!(read(&kept, 1, 7).await, 1);
        // The first full read gets the kept page, the next the store's.
        assert_eq!(read(&kept, 1, READ_BATCH_MAX).await, 0);
        assert_eq!(read(&kept, 1, READ_BATCH_MAX).await, 1);
    }

    #[test]
    fn event_id_is_best_effort() {
        assert_eq!(
            event_id_best_effort(br#"{"event_id":"evt_1"}"#).as_deref(),
            Some("evt_1")
        );
        assert_eq!(event_id_best_effort(b"{not json"), None);
        assert_eq!(event_id_best_effort(br#"{"event_id":7}"#), None);
    }
}
