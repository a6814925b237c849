//! A stateful fake of the Hyperswitch and Stripe Connect APIs, for tests and
//! the dev server.
//!
//! **Guarantees:**
//! - Wire shapes, status enums and error bodies are the ones in psp.md:
//!   `HE_01` duplicates, `HE_02` missing objects, `HE_03` refund before
//!   success, `IR_13` over-refund, `IR_01` bad key (401), Stripe
//!   `resource_missing`, `balance_insufficient`, "The transfer tr_… is
//!   already fully reversed", `idempotency_error`.
//! - Stripe `Idempotency-Key`: the same key with the same parameters replays
//!   the first stored response byte for byte (errors included, with
//!   `Idempotent-Replayed: true`); the same key with other parameters is a
//!   400 `idempotency_error`. Like Stripe, requests that fail validation or
//!   authentication are not stored. Injected faults act *in front of* the
//!   API (like a load balancer) and are never stored either.
//! - Webhooks are signed HMAC-SHA512 over the exact body bytes and carry the
//!   real headers; the envelope is compact JSON in psp.md field order with a
//!   time-ordered `evt_…` id. Nothing is delivered by a background timer
//!   unless `auto_deliver_webhooks` is set: tests call
//!   [`FakePsp::deliver_pending_webhooks`] and get the results back.
//! - [`FakePsp::counters`] counts every request per endpoint and every
//!   money-moving object created, so tests can assert "exactly once".
//!
//! Layout: one server, one port. Hyperswitch lives under [`HYPERSWITCH_PREFIX`]
//! (`/hs/payments`, …), Stripe under [`STRIPE_PREFIX`] (`/stripe/v1/transfers`,
//! …), and an unauthenticated control surface under `/_fake` (loopback test
//! tool only: `POST /_fake/payments/{id}/complete {"status"}`,
//! `POST /_fake/refunds/{id}/complete {"status"}`,
//! `POST /_fake/webhooks/target {"url","key"}`, `POST /_fake/webhooks/deliver`,
//! `POST /_fake/webhooks/release`, `GET /_fake/counters`).

mod control;
mod hyperswitch;
mod state;
mod stripe;
mod webhooks;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use ledger_core::ids::{PaymentId, PspRefundId};
use ledger_core::psp::{PaymentStatus, RefundPspStatus};
use serde::Serialize;
use tokio::sync::watch;

use crate::secret::Secret;
use state::FakeState;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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
}

impl Endpoint {
    pub const ALL: [Endpoint; 7] = [
        Endpoint::CreatePayment,
        Endpoint::GetPayment,
        Endpoint::CreateRefund,
        Endpoint::GetRefund,
        Endpoint::CreateTransfer,
        Endpoint::GetTransfer,
        Endpoint::CreateReversal,
    ];

    fn is_stripe(self) -> bool {
        matches!(
            self,
            Endpoint::CreateTransfer | Endpoint::GetTransfer | Endpoint::CreateReversal
        )
    }
}

/// An injected failure, consumed by the next call to its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with the API's generic error body; nothing happens.
    Status(u16),
    /// Answer 429; nothing happens.
    RateLimited,
    /// Never answer; nothing happens. The client has to time out.
    Hang,
    /// Do the work (and store the idempotent response), then never answer:
    /// the "timed out but it happened" case.
    HangAfterCommit,
    /// Hyperswitch: HTTP 200 with `status: processing` (refunds: `pending`)
    /// and this `error_code` / `error_message`. A create stores that state
    /// and sends no webhook; a GET only reports it. On Stripe endpoints it
    /// acts as `Status(500)`.
    ProcessingWithError { code: String, message: String },
    /// Answer exactly this status and JSON body; nothing happens.
    Canned { status: u16, body: String },
}

/// Where webhooks go and how they are signed.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: String,
    /// `payment_response_hash_key`. `None` sends no signature header, as
    /// Hyperswitch does for a profile without a key.
    pub key: Option<Secret>,
}

/// Start-up configuration.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub hyperswitch_api_key: Secret,
    pub stripe_secret_key: Secret,
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
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            hyperswitch_api_key: Secret::new(FAKE_HYPERSWITCH_API_KEY),
            stripe_secret_key: Secret::new(FAKE_STRIPE_SECRET_KEY),
            merchant_id: "merchant_fake".to_owned(),
            payment_behaviour: ResourceBehaviour::default(),
            refund_behaviour: ResourceBehaviour::default(),
            webhook_target: None,
            delivery_mode: DeliveryMode::default(),
            auto_deliver_webhooks: false,
            stripe_balance_minor: None,
            webhook_timeout: WEBHOOK_DELIVERY_TIMEOUT_DEFAULT,
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
    pub destination: String,
    pub reversal_ids: Vec<String>,
}

/// Control-API failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FakeError {
    #[error("fake has no payment {0}")]
    UnknownPayment(String),
    #[error("fake has no refund {0}")]
    UnknownRefund(String),
}

/// The fake's shared state. Cheap to clone; all clones see the same state.
#[derive(Clone)]
pub struct FakePsp {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<FakeState>,
    http: reqwest::Client,
    hyperswitch_api_key: Secret,
    stripe_secret_key: Secret,
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
    pub fn set_webhook_target(&self, url: impl Into<String>, key: Option<Secret>) {
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
    pub fn behave_payment(&self, payment_id: &PaymentId, behaviour: ResourceBehaviour) {
        self.lock()
            .payment_overrides
            .insert(payment_id.as_str().to_owned(), behaviour);
    }

    /// Behaviour of the refund with this id when it gets created.
    pub fn behave_refund(&self, refund_id: &PspRefundId, behaviour: ResourceBehaviour) {
        self.lock()
            .refund_overrides
            .insert(refund_id.as_str().to_owned(), behaviour);
    }

    /// Moves a payment to `status` and queues the matching webhook, if
    /// Hyperswitch sends one for it. Returns the webhook's `event_id`.
    pub fn complete_payment(
        &self,
        payment_id: &PaymentId,
        status: PaymentStatus,
    ) -> Result<Option<String>, FakeError> {
        let event = self.lock().complete_payment(payment_id.as_str(), status)?;
        self.kick_auto_delivery();
        Ok(event)
    }

    /// Moves a refund to `status` and queues `refund_succeeded` /
    /// `refund_failed`; `pending` and `review` send nothing (psp.md).
    pub fn complete_refund(
        &self,
        refund_id: &PspRefundId,
        status: RefundPspStatus,
    ) -> Result<Option<String>, FakeError> {
        let event = self.lock().complete_refund(refund_id.as_str(), status)?;
        self.kick_auto_delivery();
        Ok(event)
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

    pub fn payment_status(&self, payment_id: &PaymentId) -> Option<PaymentStatus> {
        self.lock()
            .payments
            .get(payment_id.as_str())
            .map(|p| p.status.clone())
    }

    pub fn refund_status(&self, refund_id: &PspRefundId) -> Option<RefundPspStatus> {
        self.lock()
            .refunds
            .get(refund_id.as_str())
            .map(|r| r.status)
    }

    pub fn transfer(&self, id: &str) -> Option<TransferSnapshot> {
        self.lock().transfers.get(id).map(|t| TransferSnapshot {
            id: t.id.clone(),
            amount_minor: t.amount,
            amount_reversed_minor: t.amount_reversed,
            reversed: t.amount_reversed >= t.amount,
            currency: t.currency.clone(),
            destination: t.destination.clone(),
            reversal_ids: t.reversals.iter().map(|r| r.id.clone()).collect(),
        })
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

    /// Base URL for [`crate::HyperswitchClient::new`].
    pub fn hyperswitch_base_url(&self) -> String {
        format!("{}{HYPERSWITCH_PREFIX}", self.base_url())
    }

    /// Base URL for [`crate::StripeClient::new`].
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
