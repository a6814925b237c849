//! The fake's state, records, clock and the request pipeline shared by both
//! APIs.
//!
//! **Guarantees:** every request runs count → injected fault →
//! authentication → work under one lock → respond, so counters include
//! faulted and refused calls, a fault never changes state (except
//! `HangAfterCommit`, which commits first), and no `await` ever happens while
//! the state lock is held. Timestamps are strictly increasing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use ledger_core::psp::{PaymentStatus, RefundPspStatus};

use super::webhooks::WebhookQueue;
use super::{Counters, Endpoint, FakeConfig, FakePsp, Fault, ResourceBehaviour};

/// An HTTP answer before it becomes a `Response` (so Stripe can store it).
#[derive(Debug, Clone)]
pub(super) struct Reply {
    pub status: u16,
    pub body: String,
    pub replayed: bool,
}

impl Reply {
    pub fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            body,
            replayed: false,
        }
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
        if self.replayed {
            response
                .headers_mut()
                .insert("Idempotent-Replayed", HeaderValue::from_static("true"));
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
    Reply::json(status, body.to_string())
}

pub(super) struct Payment {
    pub payment_id: String,
    pub status: PaymentStatus,
    pub amount: i64,
    pub amount_received: Option<i64>,
    pub currency: String,
    pub customer_id: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<serde_json::Value>,
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
    pub status: RefundPspStatus,
    pub reason: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub connector_refund_id: String,
}

pub(super) struct Transfer {
    pub id: String,
    pub amount: i64,
    pub amount_reversed: i64,
    /// Lowercase, as Stripe reports it.
    pub currency: String,
    pub destination: String,
    pub transfer_group: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub created: i64,
    pub balance_transaction: String,
    pub destination_payment: String,
    pub reversals: Vec<Reversal>,
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

/// A stored Stripe idempotent response.
pub(super) struct Stored {
    pub fingerprint: String,
    pub status: u16,
    pub body: String,
}

pub(super) struct FakeState {
    pub merchant_id: String,
    pub payments: BTreeMap<String, Payment>,
    pub refunds: BTreeMap<String, Refund>,
    pub transfers: BTreeMap<String, Transfer>,
    pub idempotency: HashMap<String, Stored>,
    pub payment_behaviour: ResourceBehaviour,
    pub refund_behaviour: ResourceBehaviour,
    pub payment_overrides: HashMap<String, ResourceBehaviour>,
    pub refund_overrides: HashMap<String, ResourceBehaviour>,
    pub faults: HashMap<Endpoint, VecDeque<Fault>>,
    pub counters: Counters,
    pub webhooks: WebhookQueue,
    pub stripe_balance_minor: Option<i64>,
    last_time: Option<DateTime<Utc>>,
}

impl FakeState {
    pub fn new(config: &FakeConfig) -> FakeState {
        FakeState {
            merchant_id: config.merchant_id.clone(),
            payments: BTreeMap::new(),
            refunds: BTreeMap::new(),
            transfers: BTreeMap::new(),
            idempotency: HashMap::new(),
            payment_behaviour: config.payment_behaviour,
            refund_behaviour: config.refund_behaviour,
            payment_overrides: HashMap::new(),
            refund_overrides: HashMap::new(),
            faults: HashMap::new(),
            counters: Counters::default(),
            webhooks: WebhookQueue::new(config.webhook_target.clone(), config.delivery_mode),
            stripe_balance_minor: config.stripe_balance_minor,
            last_time: None,
        }
    }

    /// Wall-clock milliseconds, strictly increasing across calls, so
    /// `updated`/`updated_at` order every change even within one millisecond.
    pub fn now(&mut self) -> DateTime<Utc> {
        let wall = DateTime::<Utc>::from(SystemTime::now());
        let wall = DateTime::from_timestamp_millis(wall.timestamp_millis()).unwrap_or(wall);
        let next = match self.last_time {
            Some(last) if wall <= last => last + TimeDelta::milliseconds(1),
            _ => wall,
        };
        self.last_time = Some(next);
        next
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
/// count → injected fault → authentication → `work` under the lock →
/// `HangAfterCommit` → auto-delivery → respond.
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
        Some(Fault::Status(status)) => return server_error(stripe, *status).into_response(),
        Some(Fault::ProcessingWithError { .. }) if stripe => {
            return server_error(true, 500).into_response();
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
    let reply = {
        let mut state = psp.lock();
        work(&mut state, fault.as_ref())
    };
    if matches!(fault, Some(Fault::HangAfterCommit)) {
        psp.hang().await;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    psp.kick_auto_delivery();
    reply.into_response()
}

fn authorised(psp: &FakePsp, stripe: bool, headers: &HeaderMap) -> bool {
    if stripe {
        let expected = format!("Bearer {}", psp.inner.stripe_secret_key.expose());
        headers
            .get(header::AUTHORIZATION)
            .is_some_and(|value| value.as_bytes() == expected.as_bytes())
    } else {
        headers
            .get(crate::hyperswitch::API_KEY_HEADER)
            .is_some_and(|value| {
                value.as_bytes() == psp.inner.hyperswitch_api_key.expose().as_bytes()
            })
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

fn server_error(stripe: bool, status: u16) -> Reply {
    if stripe {
        stripe_error(status, "api_error", None, "An unknown error occurred", None)
    } else {
        hs_error(status, "api", "HE_00", "Something went wrong")
    }
}

fn rate_limited(stripe: bool) -> Response {
    if stripe {
        stripe_error(
            429,
            "invalid_request_error",
            Some("rate_limit"),
            "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.",
            None,
        )
        .into_response()
    } else {
        // Hyperswitch rate limits at its gateway, which answers plain text.
        (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests").into_response()
    }
}
