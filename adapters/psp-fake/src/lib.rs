//! A stateful fake of the Hyperswitch and Stripe Connect APIs, for tests and
//! the dev server, written from the providers' documents (psp.md and their
//! API references), never from our client: it imports nothing from it.
//!
//! **Guarantees:**
//! - Wire shapes, status enums and error bodies are the providers':
//!   `HE_01` duplicates, `HE_02` missing objects, `HE_03` refund before
//!   success, `IR_13` over-refund, `IR_01` bad key (401), `IR_04` missing
//!   required `profile_id`, `IR_06` undeserialisable bodies (unknown fields,
//!   bad `customer_id`, bad `refund_type`), Stripe `resource_missing`,
//!   `balance_insufficient`, "The transfer tr_… is already fully reversed",
//!   `idempotency_error`, `idempotency_key_in_use` (409).
//! - Stripe idempotency as documented: a POST under an `Idempotency-Key`
//!   that began executing stores its status and body, 2xx and errors alike
//!   (500s included); a later request with the key and the same parameters
//!   gets them back with `Idempotent-Replayed: true`, other parameters get a
//!   400 `idempotency_error`. Validation and authentication failures, and
//!   faults in front of the API, are not stored. A 5xx from the API says
//!   `Stripe-Should-Retry: false`; a 409 and a 429 say `true` (the 429 with
//!   `Retry-After`). Stored keys age on the injectable [`FakeClock`] and can
//!   be pruned, after which the key executes afresh.
//! - Faults either act in front of the API (nothing happens) or after the
//!   effect ([`Fault::SucceedThenStatus`], [`Fault::SucceedThenDrop`],
//!   [`Fault::HangAfterCommit`]): the object exists, the answer is lost.
//! - Stripe lists (`GET /v1/transfers`, `GET /v1/transfers/{id}/reversals`)
//!   are newest first with Stripe's cursor pagination; every `created` comes
//!   from the fake's clock.
//! - Webhooks are signed HMAC-SHA512 over the exact body bytes and carry the
//!   real headers; the envelope is compact JSON in psp.md field order with a
//!   time-ordered `evt_…` id. Nothing is delivered by a background timer
//!   unless `auto_deliver_webhooks` is set: tests call
//!   [`FakePsp::deliver_pending_webhooks`] and get the results back.
//! - [`FakePsp::counters`] counts every request per endpoint and every
//!   money-moving object created, so tests can assert "exactly once".
//! - No request can make a handler panic.
//!
//! Layout: one server, one port. Hyperswitch lives under [`HYPERSWITCH_PREFIX`]
//! (`/hs/payments`, …), Stripe under [`STRIPE_PREFIX`] (`/stripe/v1/transfers`,
//! …), and an unauthenticated control surface under `/_fake` (loopback test
//! tool only):
//! - `POST /_fake/payments/{id}/complete {"status"}`,
//!   `POST /_fake/refunds/{id}/complete {"status"}`: a documented status,
//!   with its webhook; `{"event_id"}`.
//! - `POST /_fake/payments/{id}/status {"status"}`,
//!   `POST /_fake/refunds/{id}/status {"status"}`: any string, no webhook.
//! - `POST /_fake/stripe/transfers/{id}/destination_null`.
//! - `POST /_fake/stripe/idempotency/prune` with an optional
//!   `{"older_than_secs": n}`: `{"pruned": n}`.
//! - `POST /_fake/webhooks/target {"url","key"}`, `POST /_fake/webhooks/deliver`,
//!   `POST /_fake/webhooks/release`, `GET /_fake/counters`.
//! - `POST /_fake/faults {"endpoint","fault","status"?,"times"?}` queues a
//!   [`Fault`] on an [`Endpoint`] (both snake_case; `status` for the
//!   `status` and `succeed_then_status` kinds only; `times` 1 to
//!   [`FAULT_TIMES_MAX`], default 1): 204. `DELETE /_fake/faults` clears
//!   every queued fault: 204.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod clock;
mod control;
mod hyperswitch;
mod state;
mod stripe;
mod webhooks;
pub mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use state::FakeState;

pub use clock::{FakeClock, ManualClock, WallClock};
pub use webhooks::{EmittedWebhook, WebhookDelivery};

/// Path prefix of the fake Hyperswitch API.
pub const HYPERSWITCH_PREFIX: &str = "/hs";
/// Path prefix of the fake Stripe API.
pub const STRIPE_PREFIX: &str = "/stripe";
/// Default Hyperswitch `api-key` the fake accepts.
pub const FAKE_HYPERSWITCH_API_KEY: &str = "hs_fake_api_key";
/// Default Stripe secret key the fake accepts.
pub const FAKE_STRIPE_SECRET_KEY: &str = "sk_test_fake";
/// Webhook POST timeout: the ledger answers in milliseconds; a stuck receiver
/// must not stall a test for long.
pub const WEBHOOK_DELIVERY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Emitted webhooks kept for inspection; oldest dropped first. Bounds the
/// memory of a long-running dev fake.
pub const EMITTED_WEBHOOKS_MAX: usize = 10_000;
/// Most faults one `POST /_fake/faults` may queue (each is kept in memory).
pub const FAULT_TIMES_MAX: u32 = 1_000;
/// `Retry-After` (seconds) on an injected 429.
pub const RETRY_AFTER_SECS: u32 = 1;
/// The `connector` the fake reports unless configured otherwise.
pub const CONNECTOR_DEFAULT: &str = "fake";
/// The `profile_id` objects carry when the request named none.
pub const PROFILE_ID_DEFAULT: &str = "pro_fake";

/// What a new payment or refund does right after creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResourceBehaviour {
    /// Payment `succeeded` / refund `succeeded` at once, with a webhook.
    #[default]
    AutoSucceed,
    /// Payment `failed` / refund `failed` at once, with a webhook.
    AutoFail,
    /// Payment `processing` / refund `pending`, no webhook, until
    /// `complete_payment` / `complete_refund`.
    Hold,
}

/// How newly emitted webhooks are queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    /// Queued once, delivered in order.
    #[default]
    Normal,
    /// Queued twice: identical bytes, same `event_id`.
    Duplicate,
    /// Never delivered (still listed in `emitted_webhooks`).
    Drop,
    /// Held until [`FakePsp::release_held_webhooks`].
    Delay,
    /// Held, then delivered newest first by the next
    /// `deliver_pending_webhooks` (or `release_held_webhooks`).
    Reorder,
}

/// One fake API endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// Hyperswitch `POST /payments`.
    CreatePayment,
    /// Hyperswitch `GET /payments/{id}`.
    GetPayment,
    /// Hyperswitch `POST /refunds`.
    CreateRefund,
    /// Hyperswitch `GET /refunds/{id}`.
    GetRefund,
    /// Stripe `POST /v1/transfers`.
    CreateTransfer,
    /// Stripe `GET /v1/transfers/{id}`.
    GetTransfer,
    /// Stripe `POST /v1/transfers/{id}/reversals`.
    CreateReversal,
    /// Stripe `GET /v1/transfers`.
    ListTransfers,
    /// Stripe `GET /v1/transfers/{id}/reversals`.
    ListReversals,
}

impl Endpoint {
    pub const ALL: [Endpoint; 9] = [
        Endpoint::CreatePayment,
        Endpoint::GetPayment,
        Endpoint::CreateRefund,
        Endpoint::GetRefund,
        Endpoint::CreateTransfer,
        Endpoint::GetTransfer,
        Endpoint::CreateReversal,
        Endpoint::ListTransfers,
        Endpoint::ListReversals,
    ];

    fn is_stripe(self) -> bool {
        matches!(
            self,
            Endpoint::CreateTransfer
                | Endpoint::GetTransfer
                | Endpoint::CreateReversal
                | Endpoint::ListTransfers
                | Endpoint::ListReversals
        )
    }
}

/// An injected failure, consumed by the next call to its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// In front of the API (a load balancer): answer this status with the
    /// API's generic error body; nothing happens, nothing is stored.
    Status(u16),
    /// In front of the API: 429 with `Retry-After` (and, on Stripe,
    /// `Stripe-Should-Retry: true`); nothing happens, nothing is stored.
    RateLimited,
    /// Never answer; nothing happens. The client has to time out.
    Hang,
    /// Do the work (and store the idempotent response), then never answer:
    /// the "timed out but it happened" case.
    HangAfterCommit,
    /// Do the work (objects, webhooks), then answer this status with the
    /// API's generic error body. On Stripe that error is what the
    /// `Idempotency-Key` stores, so a retry replays it.
    SucceedThenStatus(u16),
    /// Do the work (on Stripe, store the 2xx under the key), then close the
    /// connection without any HTTP response: the client sees a transport
    /// error at once, not a timeout.
    SucceedThenDrop,
    /// Hyperswitch: HTTP 200 with `status: processing` (refunds: `pending`)
    /// and this `error_code` / `error_message`. A create stores that state
    /// and sends no webhook; a GET only reports it. On Stripe endpoints it
    /// acts as `Status(500)`.
    ProcessingWithError { code: String, message: String },
    /// Answer exactly this status and JSON body; nothing happens.
    Canned { status: u16, body: String },
}

/// Where webhooks go and how they are signed.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: String,
    /// `payment_response_hash_key`. `None` sends no signature header, as
    /// Hyperswitch does for a profile without a key.
    pub key: Option<String>,
}

impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Start-up configuration.
#[derive(Clone)]
pub struct FakeConfig {
    pub hyperswitch_api_key: String,
    pub stripe_secret_key: String,
    pub merchant_id: String,
    pub payment_behaviour: ResourceBehaviour,
    pub refund_behaviour: ResourceBehaviour,
    pub webhook_target: Option<WebhookTarget>,
    pub delivery_mode: DeliveryMode,
    /// Deliver on a spawned task as soon as a webhook is queued (dev server).
    /// Tests leave it off and call `deliver_pending_webhooks`.
    pub auto_deliver_webhooks: bool,
    /// Platform balance for transfers, in minor units of any currency;
    /// `None` is unlimited. Exceeding it answers `balance_insufficient`.
    pub stripe_balance_minor: Option<i64>,
    pub webhook_timeout: Duration,
    /// The merchant has several business profiles: `POST /payments` must
    /// name this `profile_id`. `None` accepts any (or none).
    pub required_profile_id: Option<String>,
    /// The Hyperswitch `connector` reported on objects. `"stripe"` also
    /// restricts refund `reason`s to Stripe's three.
    pub connector: String,
    /// Source of every timestamp and of idempotency-key ages.
    pub clock: Arc<dyn FakeClock>,
}

impl fmt::Debug for FakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeConfig")
            .field("merchant_id", &self.merchant_id)
            .field("webhook_target", &self.webhook_target)
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            hyperswitch_api_key: FAKE_HYPERSWITCH_API_KEY.to_owned(),
            stripe_secret_key: FAKE_STRIPE_SECRET_KEY.to_owned(),
            merchant_id: "merchant_fake".to_owned(),
            payment_behaviour: ResourceBehaviour::default(),
            refund_behaviour: ResourceBehaviour::default(),
            webhook_target: None,
            delivery_mode: DeliveryMode::default(),
            auto_deliver_webhooks: false,
            stripe_balance_minor: None,
            webhook_timeout: WEBHOOK_DELIVERY_TIMEOUT_DEFAULT,
            required_profile_id: None,
            connector: CONNECTOR_DEFAULT.to_owned(),
            clock: Arc::new(WallClock),
        }
    }
}

/// Request and object counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub payments_created: u64,
    pub refunds_created: u64,
    pub transfers_created: u64,
    pub reversals_created: u64,
    /// Every request per endpoint, including faulted and refused ones.
    pub requests: BTreeMap<Endpoint, u64>,
    /// Stripe POSTs that came without an `Idempotency-Key` (should stay 0).
    pub stripe_posts_without_idempotency_key: u64,
    pub webhooks_emitted: u64,
    pub webhooks_dropped: u64,
}

impl Counters {
    pub fn requests_to(&self, endpoint: Endpoint) -> u64 {
        self.requests.get(&endpoint).copied().unwrap_or(0)
    }
}

/// A transfer's state, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSnapshot {
    pub id: String,
    pub amount_minor: i64,
    pub amount_reversed_minor: i64,
    pub reversed: bool,
    pub currency: String,
    /// `None` once [`FakePsp::set_transfer_destination_null`] ran.
    pub destination: Option<String>,
    pub transfer_group: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Unix seconds, from the fake's clock.
    pub created: i64,
    pub reversal_ids: Vec<String>,
}

/// A transfer reversal's state, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReversalSnapshot {
    pub id: String,
    pub transfer: String,
    pub amount_minor: i64,
    pub currency: String,
    pub metadata: BTreeMap<String, String>,
    pub created: i64,
}

/// A Hyperswitch payment's state, for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentSnapshot {
    pub payment_id: String,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    pub customer_id: Option<String>,
    pub profile_id: String,
    pub metadata: Option<serde_json::Value>,
}

/// A Hyperswitch refund's state, for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundSnapshot {
    pub refund_id: String,
    pub payment_id: String,
    pub status: String,
    pub amount_minor: i64,
    pub refund_type: Option<String>,
    pub reason: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub profile_id: String,
}

/// Control-API failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FakeError {
    #[error("fake has no payment {0}")]
    UnknownPayment(String),
    #[error("fake has no refund {0}")]
    UnknownRefund(String),
    #[error("fake has no transfer {0}")]
    UnknownTransfer(String),
    #[error("{0:?} is not a documented status here (use set_*_status for arbitrary ones)")]
    UndocumentedStatus(String),
}

/// The fake's shared state. Cheap to clone; all clones see the same state.
#[derive(Clone)]
pub struct FakePsp {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<FakeState>,
    http: reqwest::Client,
    hyperswitch_api_key: String,
    stripe_secret_key: String,
    auto_deliver: bool,
    /// Flipped on shutdown; hanging handlers wait on it.
    shutdown: watch::Sender<bool>,
}

impl fmt::Debug for FakePsp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakePsp").finish_non_exhaustive()
    }
}

impl FakePsp {
    /// An in-process fake; serve [`FakePsp::router`] yourself or use `oneshot`.
    pub fn new(config: FakeConfig) -> FakePsp {
        let http = reqwest::Client::builder()
            .timeout(config.webhook_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            // Building a plain-HTTP client has no failure mode but TLS setup,
            // which this build has none of.
            .unwrap_or_else(|_| reqwest::Client::new());
        FakePsp {
            inner: Arc::new(Inner {
                http,
                hyperswitch_api_key: config.hyperswitch_api_key.clone(),
                stripe_secret_key: config.stripe_secret_key.clone(),
                auto_deliver: config.auto_deliver_webhooks,
                shutdown: watch::channel(false).0,
                state: Mutex::new(FakeState::new(&config)),
            }),
        }
    }

    /// Binds `127.0.0.1:0` and serves the fake until the handle is dropped.
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeHandle> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Like [`FakePsp::start`] on a chosen address (the dev server).
    pub async fn start_on(config: FakeConfig, addr: SocketAddr) -> std::io::Result<FakeHandle> {
        let psp = FakePsp::new(config);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut stop = psp.inner.shutdown.subscribe();
        let app = psp.router();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                })
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "psp fake server stopped");
            }
        });
        Ok(FakeHandle {
            psp,
            addr,
            task: Some(task),
        })
    }

    /// The whole fake: Hyperswitch under `/hs`, Stripe under `/stripe`,
    /// control under `/_fake`.
    pub fn router(&self) -> Router {
        Router::new()
            .nest(HYPERSWITCH_PREFIX, hyperswitch::routes())
            .nest(STRIPE_PREFIX, stripe::routes())
            .nest("/_fake", control::routes())
            .with_state(self.clone())
    }

    /// Sends webhooks to `url`, signed with `key` (`None`: unsigned).
    pub fn set_webhook_target(&self, url: impl Into<String>, key: Option<String>) {
        self.lock().webhooks.target = Some(WebhookTarget {
            url: url.into(),
            key,
        });
    }

    pub fn set_delivery_mode(&self, mode: DeliveryMode) {
        self.lock().webhooks.mode = mode;
    }

    /// Behaviour of payments created from now on without an override.
    pub fn set_payment_behaviour(&self, behaviour: ResourceBehaviour) {
        self.lock().payment_behaviour = behaviour;
    }

    /// Behaviour of refunds created from now on without an override.
    pub fn set_refund_behaviour(&self, behaviour: ResourceBehaviour) {
        self.lock().refund_behaviour = behaviour;
    }

    /// Behaviour of the payment with this id when it gets created.
    pub fn behave_payment(&self, payment_id: &str, behaviour: ResourceBehaviour) {
        self.lock()
            .payment_overrides
            .insert(payment_id.to_owned(), behaviour);
    }

    /// Behaviour of the refund with this id when it gets created.
    pub fn behave_refund(&self, refund_id: &str, behaviour: ResourceBehaviour) {
        self.lock()
            .refund_overrides
            .insert(refund_id.to_owned(), behaviour);
    }

    /// `POST /payments` must carry this `profile_id` (`None`: any or none).
    pub fn require_profile_id(&self, profile_id: Option<&str>) {
        self.lock().required_profile_id = profile_id.map(str::to_owned);
    }

    /// The Hyperswitch `connector` of objects created from now on.
    pub fn set_connector(&self, connector: &str) {
        connector.clone_into(&mut self.lock().connector);
    }

    /// Moves a payment to a documented `status` (see
    /// [`wire::HS_PAYMENT_STATUSES`]) and queues the matching webhook, if
    /// Hyperswitch sends one for it. Returns the webhook's `event_id`.
    pub fn complete_payment(
        &self,
        payment_id: &str,
        status: &str,
    ) -> Result<Option<String>, FakeError> {
        if !wire::HS_PAYMENT_STATUSES.contains(&status) {
            return Err(FakeError::UndocumentedStatus(status.to_owned()));
        }
        let event = self.lock().complete_payment(payment_id, status)?;
        self.kick_auto_delivery();
        Ok(event)
    }

    /// Moves a refund to a documented `status` and queues `refund_succeeded`
    /// / `refund_failed`; `pending` and `review` send nothing (psp.md).
    pub fn complete_refund(
        &self,
        refund_id: &str,
        status: &str,
    ) -> Result<Option<String>, FakeError> {
        if !wire::HS_REFUND_STATUSES.contains(&status) {
            return Err(FakeError::UndocumentedStatus(status.to_owned()));
        }
        let event = self.lock().complete_refund(refund_id, status)?;
        self.kick_auto_delivery();
        Ok(event)
    }

    /// Sets a payment's `status` to any string (e.g. one a newer Hyperswitch
    /// added), without a webhook: GETs then report it.
    pub fn set_payment_status(&self, payment_id: &str, status: &str) -> Result<(), FakeError> {
        self.lock().set_payment_status(payment_id, status)
    }

    /// Sets a refund's `status` to any string, without a webhook.
    pub fn set_refund_status(&self, refund_id: &str, status: &str) -> Result<(), FakeError> {
        self.lock().set_refund_status(refund_id, status)
    }

    /// Makes the transfer answer `"destination": null` (nullable in
    /// Stripe's schema).
    pub fn set_transfer_destination_null(&self, transfer_id: &str) -> Result<(), FakeError> {
        match self.lock().transfers.get_mut(transfer_id) {
            Some(transfer) => {
                transfer.destination = None;
                Ok(())
            }
            None => Err(FakeError::UnknownTransfer(transfer_id.to_owned())),
        }
    }

    /// Forgets every stored Stripe idempotency key; returns how many.
    pub fn prune_idempotency_keys(&self) -> usize {
        self.lock().prune_idempotency(None)
    }

    /// Forgets the stored keys at least `age` old on the fake's clock (Stripe
    /// prunes keys once they are at least 24 hours old).
    pub fn prune_idempotency_keys_older_than(&self, age: Duration) -> usize {
        self.lock().prune_idempotency(Some(age))
    }

    /// Requests under `key` answer 409 `idempotency_key_in_use`, as while
    /// another request with that key is still executing, until
    /// [`FakePsp::finish_idempotency_key`].
    pub fn hold_idempotency_key(&self, key: &str) {
        self.lock().keys_in_flight.insert(key.to_owned());
    }

    pub fn finish_idempotency_key(&self, key: &str) {
        self.lock().keys_in_flight.remove(key);
    }

    /// The next `times` calls to `endpoint` suffer `fault` (after any
    /// already queued).
    pub fn inject_fault(&self, endpoint: Endpoint, fault: Fault, times: u32) {
        let mut state = self.lock();
        let queue = state.faults.entry(endpoint).or_default();
        for _ in 0..times {
            queue.push_back(fault.clone());
        }
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Sets the Stripe platform balance (`None`: unlimited).
    pub fn set_stripe_balance(&self, balance_minor: Option<i64>) {
        self.lock().stripe_balance_minor = balance_minor;
    }

    /// Queues held (`Delay`) webhooks in order, then `Reorder` ones newest
    /// first. Returns how many were released.
    pub fn release_held_webhooks(&self) -> usize {
        let released = self.lock().webhooks.release_held();
        self.kick_auto_delivery();
        released
    }

    /// Re-queues deliveries that failed (non-2xx or unreachable) with the
    /// same bytes and `event_id`, as Hyperswitch's retry schedule would.
    pub fn retry_failed_webhooks(&self) -> usize {
        let retried = self.lock().webhooks.requeue_failed();
        self.kick_auto_delivery();
        retried
    }

    /// Delivers every queued webhook now, in queue order, one at a time.
    pub async fn deliver_pending_webhooks(&self) -> Vec<WebhookDelivery> {
        webhooks::deliver_pending(self).await
    }

    /// Every webhook emitted so far (before the delivery mode applied).
    pub fn emitted_webhooks(&self) -> Vec<EmittedWebhook> {
        self.lock().webhooks.emitted.iter().cloned().collect()
    }

    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    pub fn payment_status(&self, payment_id: &str) -> Option<String> {
        self.lock()
            .payments
            .get(payment_id)
            .map(|p| p.status.clone())
    }

    pub fn refund_status(&self, refund_id: &str) -> Option<String> {
        self.lock().refunds.get(refund_id).map(|r| r.status.clone())
    }

    pub fn payment(&self, payment_id: &str) -> Option<PaymentSnapshot> {
        self.lock()
            .payments
            .get(payment_id)
            .map(|p| PaymentSnapshot {
                payment_id: p.payment_id.clone(),
                status: p.status.clone(),
                amount_minor: p.amount,
                currency: p.currency.clone(),
                customer_id: p.customer_id.clone(),
                profile_id: p.profile_id.clone(),
                metadata: p.metadata.clone(),
            })
    }

    pub fn refund(&self, refund_id: &str) -> Option<RefundSnapshot> {
        self.lock().refunds.get(refund_id).map(|r| RefundSnapshot {
            refund_id: r.refund_id.clone(),
            payment_id: r.payment_id.clone(),
            status: r.status.clone(),
            amount_minor: r.amount,
            refund_type: r.refund_type.clone(),
            reason: r.reason.clone(),
            metadata: r.metadata.clone(),
            profile_id: r.profile_id.clone(),
        })
    }

    pub fn transfer(&self, id: &str) -> Option<TransferSnapshot> {
        self.lock().transfers.get(id).map(state::Transfer::snapshot)
    }

    /// Every transfer, newest first.
    pub fn transfers(&self) -> Vec<TransferSnapshot> {
        self.lock()
            .transfers_newest_first()
            .into_iter()
            .map(state::Transfer::snapshot)
            .collect()
    }

    /// The transfers whose `metadata[key]` is `value`, newest first.
    pub fn transfers_with_metadata(&self, key: &str, value: &str) -> Vec<TransferSnapshot> {
        self.transfers()
            .into_iter()
            .filter(|t| t.metadata.get(key).is_some_and(|v| v == value))
            .collect()
    }

    /// The reversals of a transfer, oldest first (empty if there is no such
    /// transfer).
    pub fn reversals_of(&self, transfer_id: &str) -> Vec<ReversalSnapshot> {
        self.lock()
            .transfers
            .get(transfer_id)
            .map(|t| t.reversals.iter().map(state::Reversal::snapshot).collect())
            .unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A panic while holding the lock can only come from a bug in the
        // fake itself; its state is still the best there is, so keep going.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn kick_auto_delivery(&self) {
        if !self.inner.auto_deliver || self.lock().webhooks.pending.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let psp = self.clone();
            runtime.spawn(async move {
                psp.deliver_pending_webhooks().await;
            });
        }
    }

    /// Resolves only at shutdown: how a hanging endpoint "answers".
    async fn hang(&self) {
        let mut stop = self.inner.shutdown.subscribe();
        let _ = stop.wait_for(|stopped| *stopped).await;
    }
}

/// A running fake on a loopback port. Derefs to [`FakePsp`] for control.
/// Dropping it stops the server.
#[derive(Debug)]
pub struct FakeHandle {
    psp: FakePsp,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`: the root (control API under `/_fake`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Base URL of the fake Hyperswitch API.
    pub fn hyperswitch_base_url(&self) -> String {
        format!("{}{HYPERSWITCH_PREFIX}", self.base_url())
    }

    /// Base URL of the fake Stripe API.
    pub fn stripe_base_url(&self) -> String {
        format!("{}{STRIPE_PREFIX}", self.base_url())
    }

    pub fn psp(&self) -> &FakePsp {
        &self.psp
    }

    /// Stops the server and waits for it to finish.
    pub async fn shutdown(mut self) {
        self.psp.inner.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Deref for FakeHandle {
    type Target = FakePsp;
    fn deref(&self) -> &FakePsp {
        &self.psp
    }
}

impl Drop for FakeHandle {
    fn drop(&mut self) {
        self.psp.inner.shutdown.send_replace(true);
    }
}
