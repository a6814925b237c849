//! The fake's state, records, clock and the request pipeline shared by both
//! APIs.
//!
//! **Guarantees:** every request runs count → front fault → authentication
//! → work under one lock → after-effect fault → respond, so counters include
//! faulted and refused calls, a front fault never changes state, and no
//! `await` ever happens while the state lock is held. Timestamps are
//! strictly increasing while the clock does not go back.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};

use super::webhooks::WebhookQueue;
use super::wire::{
    HS_API_KEY_HEADER, STRIPE_IDEMPOTENT_REPLAYED_HEADER, STRIPE_SHOULD_RETRY_HEADER,
};
use super::{
    Counters, Endpoint, FakeClock, FakeConfig, FakePsp, Fault, RETRY_AFTER_SECS, ResourceBehaviour,
    ReversalSnapshot, TransferSnapshot,
};

/// An HTTP answer before it becomes a `Response` (so Stripe can store it).
#[derive(Debug, Clone)]
pub(super) struct Reply {
    pub status: u16,
    pub body: String,
    /// `Idempotent-Replayed: true`.
    pub replayed: bool,
    /// `Stripe-Should-Retry`.
    pub should_retry: Option<bool>,
    /// `Retry-After` in seconds.
    pub retry_after: Option<u32>,
}

impl Reply {
    pub fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            body,
            replayed: false,
            should_retry: None,
            retry_after: None,
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body,
        )
            .into_response();
        let headers = response.headers_mut();
        if self.replayed {
            headers.insert(
                STRIPE_IDEMPOTENT_REPLAYED_HEADER,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(retry) = self.should_retry {
            headers.insert(
                STRIPE_SHOULD_RETRY_HEADER,
                HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// `{"error":{"type","message","code"}}` (Hyperswitch).
pub(super) fn hs_error(status: u16, kind: &str, code: &str, message: &str) -> Reply {
    let body = serde_json::json!({"error": {"type": kind, "message": message, "code": code}});
    Reply::json(status, body.to_string())
}

/// `{"error":{"type","code"?,"message","param"?}}` (Stripe).
pub(super) fn stripe_error(
    status: u16,
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> Reply {
    let mut error = serde_json::Map::new();
    error.insert("type".into(), kind.into());
    if let Some(code) = code {
        error.insert("code".into(), code.into());
    }
    error.insert("message".into(), message.into());
    if let Some(param) = param {
        error.insert("param".into(), param.into());
    }
    let body = serde_json::json!({ "error": error });
    let mut reply = Reply::json(status, body.to_string());
    if status >= 500 {
        // Stripe's verdict on an API 5xx: the result is stored under the
        // key, so retrying with it can only replay this error.
        reply.should_retry = Some(false);
    }
    reply
}

pub(super) struct Payment {
    pub payment_id: String,
    pub status: String,
    pub amount: i64,
    pub amount_received: Option<i64>,
    pub currency: String,
    pub customer_id: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub profile_id: String,
    pub connector: String,
    pub client_secret: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

pub(super) struct Refund {
    pub refund_id: String,
    pub payment_id: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub refund_type: Option<String>,
    pub reason: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub profile_id: String,
    pub connector: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub connector_refund_id: String,
}

pub(super) struct Transfer {
    pub id: String,
    /// Creation order, the tie-break of `created` in lists.
    pub seq: u64,
    pub amount: i64,
    pub amount_reversed: i64,
    /// Lowercase, as Stripe reports it.
    pub currency: String,
    /// Nullable in Stripe's schema.
    pub destination: Option<String>,
    pub transfer_group: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub created: i64,
    pub balance_transaction: String,
    pub destination_payment: String,
    /// Oldest first.
    pub reversals: Vec<Reversal>,
}

impl Transfer {
    pub fn snapshot(&self) -> TransferSnapshot {
        TransferSnapshot {
            id: self.id.clone(),
            amount_minor: self.amount,
            amount_reversed_minor: self.amount_reversed,
            reversed: self.amount_reversed >= self.amount,
            currency: self.currency.clone(),
            destination: self.destination.clone(),
            transfer_group: self.transfer_group.clone(),
            metadata: self.metadata.clone(),
            created: self.created,
            reversal_ids: self.reversals.iter().map(|r| r.id.clone()).collect(),
        }
    }
}

pub(super) struct Reversal {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub transfer: String,
    pub created: i64,
    pub metadata: BTreeMap<String, String>,
    pub balance_transaction: String,
}

impl Reversal {
    pub fn snapshot(&self) -> ReversalSnapshot {
        ReversalSnapshot {
            id: self.id.clone(),
            transfer: self.transfer.clone(),
            amount_minor: self.amount,
            currency: self.currency.clone(),
            metadata: self.metadata.clone(),
            created: self.created,
        }
    }
}

/// A stored Stripe idempotent response.
pub(super) struct Stored {
    pub fingerprint: String,
    pub status: u16,
    pub body: String,
    /// On the fake's clock, for pruning.
    pub created: DateTime<Utc>,
}

pub(super) struct FakeState {
    pub merchant_id: String,
    pub clock: Arc<dyn FakeClock>,
    pub payments: BTreeMap<String, Payment>,
    pub refunds: BTreeMap<String, Refund>,
    pub transfers: BTreeMap<String, Transfer>,
    pub transfer_seq: u64,
    pub idempotency: HashMap<String, Stored>,
    pub keys_in_flight: HashSet<String>,
    pub payment_behaviour: ResourceBehaviour,
    pub refund_behaviour: ResourceBehaviour,
    pub payment_overrides: HashMap<String, ResourceBehaviour>,
    pub refund_overrides: HashMap<String, ResourceBehaviour>,
    pub required_profile_id: Option<String>,
    pub connector: String,
    pub faults: HashMap<Endpoint, VecDeque<Fault>>,
    pub counters: Counters,
    pub webhooks: WebhookQueue,
    pub stripe_balance_minor: Option<i64>,
    /// (last clock reading, last time handed out).
    last_time: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl FakeState {
    pub fn new(config: &FakeConfig) -> FakeState {
        FakeState {
            merchant_id: config.merchant_id.clone(),
            clock: Arc::clone(&config.clock),
            payments: BTreeMap::new(),
            refunds: BTreeMap::new(),
            transfers: BTreeMap::new(),
            transfer_seq: 0,
            idempotency: HashMap::new(),
            keys_in_flight: HashSet::new(),
            payment_behaviour: config.payment_behaviour,
            refund_behaviour: config.refund_behaviour,
            payment_overrides: HashMap::new(),
            refund_overrides: HashMap::new(),
            required_profile_id: config.required_profile_id.clone(),
            connector: config.connector.clone(),
            faults: HashMap::new(),
            counters: Counters::default(),
            webhooks: WebhookQueue::new(config.webhook_target.clone(), config.delivery_mode),
            stripe_balance_minor: config.stripe_balance_minor,
            last_time: None,
        }
    }

    /// The clock in milliseconds, strictly increasing across calls while the
    /// clock does not go back, so `updated`/`updated_at` order every change
    /// even within one millisecond. A clock set back is followed.
    pub fn now(&mut self) -> DateTime<Utc> {
        let read = self.clock.now();
        let read = DateTime::from_timestamp_millis(read.timestamp_millis()).unwrap_or(read);
        let next = match self.last_time {
            Some((last_read, last_out)) if read >= last_read && read <= last_out => {
                last_out + TimeDelta::milliseconds(1)
            }
            _ => read,
        };
        self.last_time = Some((read, next));
        next
    }

    /// Forgets stored idempotency keys (all, or those at least `age` old).
    pub fn prune_idempotency(&mut self, age: Option<Duration>) -> usize {
        let before = self.idempotency.len();
        match age {
            None => self.idempotency.clear(),
            Some(age) => {
                let now = self.clock.now();
                let age = TimeDelta::from_std(age).unwrap_or(TimeDelta::MAX);
                self.idempotency
                    .retain(|_, stored| now.signed_duration_since(stored.created) < age);
            }
        }
        before - self.idempotency.len()
    }

    /// Transfers newest first (`created`, then creation order).
    pub fn transfers_newest_first(&self) -> Vec<&Transfer> {
        let mut all: Vec<&Transfer> = self.transfers.values().collect();
        all.sort_by_key(|t| std::cmp::Reverse((t.created, t.seq)));
        all
    }
}

/// ISO-8601 with milliseconds and `Z`, as Hyperswitch prints.
pub(super) fn iso(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// `len` random lowercase hex characters.
pub(super) fn random_suffix(len: usize) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(len);
    out
}

/// Runs one API request through the common pipeline:
/// count → front fault → authentication → `work` under the lock →
/// after-effect fault → auto-delivery → respond.
///
/// `work` gets the fault so that Stripe's idempotency layer can store what
/// `SucceedThenStatus` answers; any success it still returns is turned into
/// that status here.
pub(super) async fn guarded(
    psp: &FakePsp,
    endpoint: Endpoint,
    headers: &HeaderMap,
    work: impl FnOnce(&mut FakeState, Option<&Fault>) -> Reply,
) -> Response {
    let fault = {
        let mut state = psp.lock();
        *state.counters.requests.entry(endpoint).or_default() += 1;
        state
            .faults
            .get_mut(&endpoint)
            .and_then(VecDeque::pop_front)
    };
    let stripe = endpoint.is_stripe();
    match &fault {
        Some(Fault::Status(status)) => return front_error(stripe, *status).into_response(),
        Some(Fault::ProcessingWithError { .. }) if stripe => {
            return front_error(true, 500).into_response();
        }
        Some(Fault::RateLimited) => return rate_limited(stripe),
        Some(Fault::Canned { status, body }) => {
            return Reply::json(*status, body.clone()).into_response();
        }
        Some(Fault::Hang) => {
            psp.hang().await;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        _ => {}
    }
    if !authorised(psp, stripe, headers) {
        return unauthorised(stripe).into_response();
    }
    let mut reply = {
        let mut state = psp.lock();
        work(&mut state, fault.as_ref())
    };
    psp.kick_auto_delivery();
    match fault {
        Some(Fault::HangAfterCommit) => {
            psp.hang().await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        Some(Fault::SucceedThenDrop) => dropped_connection(),
        Some(Fault::SucceedThenStatus(status)) => {
            if reply.is_success() && !reply.replayed {
                reply = api_error(stripe, status);
            }
            reply.into_response()
        }
        _ => reply.into_response(),
    }
}

/// A response whose body fails before its first byte: hyper then closes
/// the connection without writing anything, so the client sees the
/// connection end with no HTTP response at all.
fn dropped_connection() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "psp fake: SucceedThenDrop",
        ))
    });
    Response::new(Body::from_stream(failing))
}

fn authorised(psp: &FakePsp, stripe: bool, headers: &HeaderMap) -> bool {
    if stripe {
        let expected = format!("Bearer {}", psp.inner.stripe_secret_key);
        headers
            .get(header::AUTHORIZATION)
            .is_some_and(|value| value.as_bytes() == expected.as_bytes())
    } else {
        headers
            .get(HS_API_KEY_HEADER)
            .is_some_and(|value| value.as_bytes() == psp.inner.hyperswitch_api_key.as_bytes())
    }
}

fn unauthorised(stripe: bool) -> Reply {
    if stripe {
        // Stripe echoes a masked key; the fake echoes nothing.
        stripe_error(
            401,
            "invalid_request_error",
            None,
            "Invalid API Key provided",
            None,
        )
    } else {
        hs_error(
            401,
            "invalid_request",
            "IR_01",
            "API key not provided or invalid API key used",
        )
    }
}

/// The API's own generic error (the API answered; on Stripe a 5xx says
/// `Stripe-Should-Retry: false`).
pub(super) fn api_error(stripe: bool, status: u16) -> Reply {
    if stripe {
        stripe_error(status, "api_error", None, "An unknown error occurred", None)
    } else {
        hs_error(status, "api", "HE_00", "Something went wrong")
    }
}

/// A generic error from in front of the API (a load balancer): same body,
/// but no provider verdict header, since the API never saw the request.
fn front_error(stripe: bool, status: u16) -> Reply {
    let mut reply = api_error(stripe, status);
    reply.should_retry = None;
    reply
}

fn rate_limited(stripe: bool) -> Response {
    if stripe {
        let mut reply = stripe_error(
            429,
            "invalid_request_error",
            Some("rate_limit"),
            "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.",
            None,
        );
        reply.should_retry = Some(true);
        reply.retry_after = Some(RETRY_AFTER_SECS);
        reply.into_response()
    } else {
        // Hyperswitch rate limits at its gateway, which answers plain text.
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS))],
            "Too Many Requests",
        )
            .into_response()
    }
}
