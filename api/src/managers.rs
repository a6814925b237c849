//! The PSP process managers inside the binary: which PSP to talk to (the real
//! Hyperswitch and Stripe, or the in-process fake in development), the
//! managers' settings from the typed config, and the adapters the HTTP layer
//! calls (`AdminOps`, `PaymentStarter`).
//!
//! **Guarantees:** the fake is only ever built when the config says
//! `PspMode::Fake`, which production refuses; the fake signs its webhooks
//! with the same key the webhook route verifies, and delivers them to this
//! process's own `/webhooks/hyperswitch`, so the quickstart exercises the
//! real signature check.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_core::ids::TransferId;
use ledger_core::order::PlacedOrder;
use ledger_core::transfer::RetryPolicy;
use ledger_projections::clock::Clock;
use ledger_projections::managers::{
    ManagerConfig, ManagerDeps, ManagerError, Managers, QueryCandidates, ReconcileSettings,
    RetrySettings,
};
use ledger_psp::{HyperswitchClient, PaymentGateway, PayoutGateway, Secret, StripeClient};
use ledger_psp_fake::{
    FAKE_HYPERSWITCH_API_KEY, FAKE_STRIPE_SECRET_KEY, FakeClock, FakeConfig, FakeHandle, FakePsp,
    WebhookTarget,
};

use crate::config::{Config, PspMode, ReconcileConfig, RetryWorkerConfig};
use crate::http::error::ApiError;
use crate::http::{AdminOps, PaymentStarted, PaymentStarter};
use crate::serve::Ports;

/// How long `POST /v1/orders` waits for the PSP to create the payment before
/// it answers `status: created` and leaves the rest to the payment worker.
pub const PAYMENT_START_DEADLINE: Duration = Duration::from_secs(3);
// The payment worker stays off a new order for its grace, so the inline
// start must be over by then.
const _: () = assert!(
    PAYMENT_START_DEADLINE.as_millis()
        < ledger_projections::managers::PAYMENT_START_GRACE.as_millis()
);

/// Whether the managers run on their own timers or only when called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerMode {
    /// `ledger serve`: feeds, workers and the reconciler loop on their
    /// intervals; the dev fake delivers its webhooks at once.
    Background,
    /// Tests and one-shot commands: nothing runs until the caller calls
    /// `Managers::run_all_once` (or a single worker), and the fake's
    /// webhooks wait for `deliver_pending_webhooks`.
    Manual,
}

/// The PSPs one process talks to.
pub struct PspLink {
    pub payments: Arc<dyn PaymentGateway>,
    pub payouts: Arc<dyn PayoutGateway>,
    /// The in-process fake, when the config asks for it. Dropping it stops
    /// the fake's loopback server.
    pub fake: Option<FakeHandle>,
}

impl std::fmt::Debug for PspLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PspLink")
            .field("fake", &self.fake.as_ref().map(FakeHandle::base_url))
            .finish_non_exhaustive()
    }
}

/// The fake reads this process's clock, so the objects it creates carry the
/// same time the ledger records (a test's manual clock included), and a
/// provider reconcile's window finds them.
#[derive(Debug)]
struct SharedClock(Arc<dyn Clock>);

impl FakeClock for SharedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.now()
    }
}

impl PspLink {
    /// The real PSPs, or the fake on a loopback port. `webhook` is where the
    /// fake delivers (this process's webhook URL and signing key); `clock`
    /// is the fake's clock.
    ///
    /// `Ok(None)` when payments are switched off (`HYPERSWITCH_ENABLED=false`)
    /// or a real PSP has no key: the managers cannot run, and the caller says
    /// so loudly.
    pub async fn connect(
        config: &Config,
        webhook: Option<WebhookTarget>,
        mode: WorkerMode,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Option<PspLink>> {
        if !config.hyperswitch.enabled {
            return Ok(None);
        }
        match config.psp_mode {
            PspMode::Fake => {
                let fake = FakePsp::start(FakeConfig {
                    webhook_target: webhook,
                    auto_deliver_webhooks: mode == WorkerMode::Background,
                    clock: Arc::new(SharedClock(clock)),
                    ..FakeConfig::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot start the PSP fake on loopback: {e}"))?;
                tracing::info!(
                    base_url = %fake.base_url(),
                    "psp fake listening: Hyperswitch under /hs, Stripe under /stripe, control under /_fake (e.g. POST {}/_fake/faults)",
                    fake.base_url()
                );
                let payments = hyperswitch(
                    fake.hyperswitch_base_url(),
                    Secret::new(FAKE_HYPERSWITCH_API_KEY),
                    config,
                )?;
                let payouts = stripe(
                    fake.stripe_base_url(),
                    Secret::new(FAKE_STRIPE_SECRET_KEY),
                    config,
                )?;
                Ok(Some(PspLink {
                    payments: Arc::new(payments),
                    payouts: Arc::new(payouts),
                    fake: Some(fake),
                }))
            }
            PspMode::Real => {
                let (Some(hs_key), Some(stripe_key)) =
                    (&config.hyperswitch.api_key, &config.stripe.secret_key)
                else {
                    return Ok(None);
                };
                let payments = hyperswitch(
                    config.hyperswitch.base_url.clone(),
                    Secret::new(hs_key.expose()),
                    config,
                )?;
                let payouts = stripe(
                    config.stripe.base_url.clone(),
                    Secret::new(stripe_key.expose()),
                    config,
                )?;
                Ok(Some(PspLink {
                    payments: Arc::new(payments),
                    payouts: Arc::new(payouts),
                    fake: None,
                }))
            }
        }
    }
}

/// The Hyperswitch client at `base_url`, with the configured timeout and
/// `profile_id`.
fn hyperswitch(
    base_url: String,
    key: Secret,
    config: &Config,
) -> anyhow::Result<HyperswitchClient> {
    let client = HyperswitchClient::new(base_url, key, config.psp_timeout)
        .map_err(|e| anyhow::anyhow!("HYPERSWITCH_BASE_URL: {e}"))?;
    match &config.hyperswitch.profile_id {
        Some(profile_id) => client
            .with_profile_id(profile_id.as_str())
            .map_err(|e| anyhow::anyhow!("HYPERSWITCH_PROFILE_ID: {e}")),
        None => Ok(client),
    }
}

/// The Stripe client at `base_url`, with the configured timeout and
/// `Stripe-Version`.
fn stripe(base_url: String, key: Secret, config: &Config) -> anyhow::Result<StripeClient> {
    Ok(StripeClient::new(base_url, key, config.psp_timeout)
        .map_err(|e| anyhow::anyhow!("STRIPE_BASE_URL: {e}"))?
        .with_api_version(config.stripe.api_version.as_str()))
}

fn retry_settings(c: &RetryWorkerConfig) -> RetrySettings {
    RetrySettings {
        enabled: c.enabled,
        policy: RetryPolicy {
            base: c.backoff_base,
            max: c.backoff_max,
            max_retries: c.max_retries,
        },
        interval: c.check_interval,
    }
}

fn reconcile_settings(c: &ReconcileConfig) -> ReconcileSettings {
    ReconcileSettings {
        enabled: c.enabled,
        interval: c.interval,
        order_stuck_after: c.order_stuck_after,
        refund_stuck_after: c.refund_stuck_after,
        refund_orphan_after: c.refund_orphan_after,
        batch_limit: c.batch_limit,
    }
}

/// `RECONCILE_*`, `REVERSAL_*` and `TRANSFER_RETRY_*` as the managers take
/// them; the rest keeps the managers' defaults.
pub fn manager_config(config: &Config) -> ManagerConfig {
    ManagerConfig {
        transfer_retry: retry_settings(&config.transfer_retry),
        reversal: retry_settings(&config.reversal),
        reconcile: reconcile_settings(&config.reconcile),
        ..ManagerConfig::default()
    }
}

impl PspLink {
    /// The managers of one process over `ports`, talking to these PSPs.
    /// `role` names the process in work-row claims (`serve`, `reconcile`).
    pub fn managers(
        &self,
        ports: &Ports,
        config: &Config,
        clock: Arc<dyn Clock>,
        role: &str,
    ) -> Managers {
        Managers::new(
            ManagerDeps {
                events: ports.events.clone(),
                work: ports.work.clone(),
                // The primary, not a replica: a lagging replica would show
                // rows the primary has already moved on.
                candidates: Arc::new(QueryCandidates::new(ports.reads.clone())),
                payments: self.payments.clone(),
                payouts: self.payouts.clone(),
                clock,
            },
            manager_config(config),
            owner_name(role),
        )
    }
}

/// A name for this process in work-row claims: host, pid and a random
/// suffix, so two processes (or two runs of one) never share one.
pub fn owner_name(role: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
    format!(
        "{role}@{host}:{}:{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The managers as the HTTP layer sees them.
#[derive(Clone)]
pub struct ManagerOps {
    managers: Managers,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ManagerOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerOps").finish_non_exhaustive()
    }
}

impl ManagerOps {
    pub fn new(managers: Managers, clock: Arc<dyn Clock>) -> ManagerOps {
        ManagerOps { managers, clock }
    }
}

/// A manager failure as an HTTP answer: an unknown transfer is 404, a
/// transition the core refuses is 409, a PSP or store outage (a transient
/// error: the PSP read failed, timed out or was rate limited) is 503 with
/// `Retry-After`.
fn admin_error(e: ManagerError) -> ApiError {
    match e {
        ManagerError::NotFound(what) => {
            ApiError::not_found("transfer_not_found", format!("{what} does not exist"))
        }
        ManagerError::Rejected { reason, .. } => ApiError::Conflict {
            code: "transfer_not_retryable",
            message: reason,
        },
        e if e.is_transient() => ApiError::Unavailable {
            message: format!("try again shortly: {e}"),
        },
        e => ApiError::internal(anyhow::Error::new(e)),
    }
}

fn to_json(value: &impl serde::Serialize) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::internal(anyhow::Error::new(e)))
}

#[async_trait]
impl AdminOps for ManagerOps {
    async fn retry_transfer(
        &self,
        transfer_id: TransferId,
        request_id: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let retried = self
            .managers
            .retry_transfer_now(transfer_id, self.clock.now())
            .await
            .map_err(admin_error)?;
        tracing::info!(
            request_id, transfer_id = %transfer_id, from = %retried.from_status,
            to = %retried.status, attempt = retried.attempt,
            "transfer retry requested by an operator"
        );
        to_json(&retried)
    }

    async fn resolve_anomaly(
        &self,
        transfer_id: TransferId,
        kind: ledger_core::transfer::TransferAnomalyKind,
        provider_id: Option<String>,
        note: &str,
        request_id: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let resolved = self
            .managers
            .resolve_transfer_anomaly(transfer_id, kind, provider_id, note, self.clock.now())
            .await
            .map_err(|e| match e {
                ManagerError::Rejected { reason, .. } => {
                    ApiError::conflict("anomaly_not_recorded", reason)
                }
                other => admin_error(other),
            })?;
        tracing::info!(
            request_id, transfer_id = %transfer_id, anomaly = %resolved.kind,
            newly_resolved = resolved.newly_resolved,
            "transfer anomaly resolved by an operator"
        );
        to_json(&resolved)
    }

    async fn reconcile_provider(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        request_id: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let report = self
            .managers
            .reconcile_provider(from, to, self.clock.now())
            .await
            .map_err(admin_error)?;
        tracing::info!(
            request_id, from = %from, to = %to, anomalies = report.anomalies.len(),
            "provider reconcile requested by an operator"
        );
        to_json(&report)
    }

    async fn reconcile_once(&self, request_id: &str) -> Result<serde_json::Value, ApiError> {
        let report = self
            .managers
            .reconcile_once(self.clock.now())
            .await
            .map_err(admin_error)?;
        tracing::info!(
            request_id,
            changed = report.changed(),
            "reconcile pass requested by an operator"
        );
        to_json(&report)
    }
}

#[async_trait]
impl PaymentStarter for ManagerOps {
    async fn start_within_deadline(&self, order: &PlacedOrder) -> Option<PaymentStarted> {
        self.managers
            .start_payment_inline(order, PAYMENT_START_DEADLINE)
            .await
            .map(|secret| PaymentStarted {
                client_secret: Some(secret),
            })
    }
}
