//! Reusable manager scenarios (cargo feature `testkit`): a [`Harness`] of
//! any event store, work store and candidate source, the real PSP fake on a
//! loopback port behind the real clients, and a [`ManualClock`]; plus every
//! acceptance scenario as a function, and [`manager_scenarios!`] to run them
//! all as `#[tokio::test]`s against one backend.
//!
//! Nothing sleeps: time moves only through [`Harness::advance`], and work
//! runs only when a scenario calls [`Harness::run_until_idle`],
//! [`Harness::run_worker`] or [`Harness::reconcile`].
//!
//! This is test support: it panics (with a message) on any unexpected error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;
use ledger_core::ids::{
    BuyerId, OrderId, ProductId, RefundId, SellerAccount, SellerId, StreamId, StripeTransferId,
    TransferId, command_id_from_cause, order_id_from_idempotency_key, payment_id_for,
    refund_id_from_idempotency_key, transfer_id,
};
use ledger_core::order::{LineInput, Order, OrderCommand, PlacedOrder};
use ledger_core::refund::{Refund, RefundCommand, RequestedRefund};
use ledger_core::transfer::{ScheduledTransfer, SellerTransfer, TransferCommand};
use ledger_core::{Amount, Currency, Decider, ExpectedVersion, FeeBps, Metadata, Source};
use ledger_psp::{CreateReversal, HyperswitchClient, Secret, StripeClient};
use ledger_psp_fake::{
    Counters, FAKE_HYPERSWITCH_API_KEY, FAKE_STRIPE_SECRET_KEY, FakeConfig, FakeHandle, FakePsp,
};
use ledger_store::EventStore;
use ledger_store::MemoryStore;
use ledger_store::handle::{CommandContext, execute, load, to_new_events};
use ledger_store::work::{MemoryWorkStore, WorkItem, WorkStore};
use uuid::Uuid;

use super::{
    ManagerConfig, ManagerDeps, Managers, ReconcileReport, RunReport, StreamScanCandidates,
    StuckCandidates, WorkerKind, WorkerReport,
};
use crate::clock::{Clock, ManualClock};

/// Each PSP call's timeout in the harness: far above a loopback round trip,
/// so only an injected hang could reach it (no scenario injects one).
pub const PSP_TIMEOUT: Duration = Duration::from_secs(10);

/// Rounds [`Harness::run_until_idle`] runs before it declares a livelock.
/// The longest chain (refund → settle → sellers → reversal) needs five.
pub const IDLE_ROUNDS_MAX: usize = 20;

/// Platform fee of every harness order: 10 %.
pub const FEE_BPS: i64 = 1_000;

/// When every harness clock starts.
pub fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
        .expect("valid start time")
        .with_timezone(&Utc)
}

/// Brings a backend's read models up to date before the reconciler reads
/// them (Postgres/SQLite run their `ReadModelProjection` here).
#[async_trait]
pub trait ReadSide: Send + Sync {
    /// Returns once the read models hold every event committed before the
    /// call.
    async fn catch_up(&self);

    /// The highest committed global position, read directly (not through
    /// the gap-safe feed). On Postgres the feed holds back events while any
    /// older transaction anywhere in the cluster is open — other tests' —
    /// so "the feed returned nothing" does not mean "at the head".
    async fn head(&self) -> u64;
}

/// Longest [`Harness`] waits for a feed to reach the store head: only a
/// transaction held open elsewhere on the cluster gets near it.
pub const HEAD_WAIT_MAX: Duration = Duration::from_secs(30);
/// Pause between two looks while a feed is held back by someone else's
/// open transaction.
pub const HEAD_POLL: Duration = Duration::from_millis(5);

/// What a backend provides.
pub struct HarnessParts {
    pub events: Arc<dyn EventStore>,
    pub work: Arc<dyn WorkStore>,
    pub candidates: Arc<dyn StuckCandidates>,
    /// `None` when `candidates` reads the event store itself.
    pub read_side: Option<Arc<dyn ReadSide>>,
}

impl std::fmt::Debug for HarnessParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarnessParts").finish_non_exhaustive()
    }
}

/// Builds a fresh harness (fresh stores) for one scenario.
pub trait MakeHarness: Sync {
    fn make(&self, config: ManagerConfig) -> BoxFuture<'static, Harness>;
}

impl<F> MakeHarness for F
where
    F: Fn(ManagerConfig) -> BoxFuture<'static, Harness> + Sync,
{
    fn make(&self, config: ManagerConfig) -> BoxFuture<'static, Harness> {
        self(config)
    }
}

/// In-memory stores, stream-scan candidates.
pub fn memory(config: ManagerConfig) -> BoxFuture<'static, Harness> {
    Box::pin(async move {
        let events: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
        let parts = HarnessParts {
            events: events.clone(),
            work: Arc::new(MemoryWorkStore::new()),
            candidates: Arc::new(StreamScanCandidates::new(events)),
            read_side: None,
        };
        Harness::start(parts, config).await
    })
}

/// The harness config: defaults, but the reconciler only runs when a
/// scenario calls [`Harness::reconcile`].
pub fn test_config() -> ManagerConfig {
    let mut config = ManagerConfig::default();
    config.reconcile.enabled = false;
    config
}

/// One order line of a harness order.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    pub product: &'static str,
    pub seller: &'static str,
    pub unit_minor: i64,
    pub quantity: i64,
}

/// Seller A: p1 1000, p2 2000; seller B: p3 500 × 2. Total 4000; at 10 %
/// the transfers are A 2700 and B 900.
pub const TWO_SELLERS: [Line; 3] = [
    Line {
        product: "p1",
        seller: "seller-a",
        unit_minor: 1_000,
        quantity: 1,
    },
    Line {
        product: "p2",
        seller: "seller-a",
        unit_minor: 2_000,
        quantity: 1,
    },
    Line {
        product: "p3",
        seller: "seller-b",
        unit_minor: 500,
        quantity: 2,
    },
];

/// One line of 1000 from seller A: a 900 transfer.
pub const ONE_LINE: [Line; 1] = [Line {
    product: "p1",
    seller: "seller-a",
    unit_minor: 1_000,
    quantity: 1,
}];

pub fn eur() -> Currency {
    Currency::parse("EUR").expect("EUR")
}

pub fn seller(id: &str) -> SellerId {
    SellerId::new(id).expect("seller id")
}

pub fn account_of(seller: &str) -> SellerAccount {
    SellerAccount::new(format!("acct_{}", seller.replace('-', "_"))).expect("account")
}

/// Everything one scenario runs against.
pub struct Harness {
    pub events: Arc<dyn EventStore>,
    pub work: Arc<dyn WorkStore>,
    pub fake: FakeHandle,
    pub clock: Arc<ManualClock>,
    pub managers: Managers,
    /// Clients on the fake, for simulating a crash after a PSP call.
    pub hyperswitch: HyperswitchClient,
    pub stripe: StripeClient,
    candidates: Arc<dyn StuckCandidates>,
    config: ManagerConfig,
    read_side: Option<Arc<dyn ReadSide>>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

impl Harness {
    pub async fn start(parts: HarnessParts, config: ManagerConfig) -> Harness {
        let fake = FakePsp::start(FakeConfig::default())
            .await
            .expect("start the PSP fake");
        let hyperswitch = HyperswitchClient::new(
            fake.hyperswitch_base_url(),
            Secret::new(FAKE_HYPERSWITCH_API_KEY),
            PSP_TIMEOUT,
        )
        .expect("hyperswitch client");
        let stripe = StripeClient::new(
            fake.stripe_base_url(),
            Secret::new(FAKE_STRIPE_SECRET_KEY),
            PSP_TIMEOUT,
        )
        .expect("stripe client");
        let clock = Arc::new(ManualClock::new(start_time()));
        let managers = Managers::new(
            ManagerDeps {
                events: parts.events.clone(),
                work: parts.work.clone(),
                candidates: parts.candidates.clone(),
                payments: Arc::new(hyperswitch.clone()),
                payouts: Arc::new(stripe.clone()),
                clock: clock.clone(),
            },
            config,
            format!("testkit-{}", Uuid::new_v4()),
        );
        Harness {
            events: parts.events,
            work: parts.work,
            fake,
            clock,
            managers,
            hyperswitch,
            stripe,
            candidates: parts.candidates,
            config,
            read_side: parts.read_side,
        }
    }

    /// A second process's managers on the same stores, PSP and clock (as a
    /// second `serve` would run them).
    pub fn second_managers(&self) -> Managers {
        Managers::new(
            ManagerDeps {
                events: self.events.clone(),
                work: self.work.clone(),
                candidates: self.candidates.clone(),
                payments: Arc::new(self.hyperswitch.clone()),
                payouts: Arc::new(self.stripe.clone()),
                clock: self.clock.clone(),
            },
            self.config,
            format!("testkit-second-{}", Uuid::new_v4()),
        )
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn advance(&self, by: Duration) {
        self.clock
            .advance(TimeDelta::from_std(by).expect("advance fits"));
    }

    pub fn counters(&self) -> Counters {
        self.fake.counters()
    }

    /// Every feed reads up to the store head as of this call.
    pub async fn catch_up_feeds(&self) {
        let head = match &self.read_side {
            Some(read_side) => read_side.head().await,
            None => 0,
        };
        let deadline = std::time::Instant::now() + HEAD_WAIT_MAX;
        loop {
            self.managers.catch_up_feeds().await.expect("feeds");
            let behind = self
                .managers
                .feed_status()
                .iter()
                .any(|s| s.borrow().checkpoint.position < head);
            if !behind {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "feeds held below position {head} for {HEAD_WAIT_MAX:?}"
            );
            tokio::time::sleep(HEAD_POLL).await;
        }
    }

    /// `run_all_once` until a round does nothing.
    pub async fn run_until_idle(&self) -> Vec<RunReport> {
        let mut reports = Vec::new();
        for _ in 0..IDLE_ROUNDS_MAX {
            if let Some(read_side) = &self.read_side {
                read_side.catch_up().await;
            }
            self.catch_up_feeds().await;
            let report = self
                .managers
                .run_all_once(self.now())
                .await
                .expect("run_all_once");
            let idle = report.is_idle();
            reports.push(report);
            if idle {
                return reports;
            }
        }
        panic!("managers did not go idle in {IDLE_ROUNDS_MAX} rounds: {reports:#?}");
    }

    /// Feeds catch up, then one pass of one worker.
    pub async fn run_worker(&self, kind: WorkerKind) -> WorkerReport {
        self.catch_up_feeds().await;
        self.managers
            .run_worker(kind, self.now())
            .await
            .expect("worker pass")
    }

    /// Read models catch up, then one reconciler pass.
    pub async fn reconcile(&self) -> ReconcileReport {
        if let Some(read_side) = &self.read_side {
            read_side.catch_up().await;
        }
        self.managers
            .reconcile_once(self.now())
            .await
            .expect("reconcile_once")
    }

    pub async fn pending_work(&self, kind: WorkerKind) -> Vec<WorkItem> {
        self.work.pending(kind.name()).await.expect("pending work")
    }

    /// Runs a command as the API would (source `api`, id from `cause`).
    pub async fn api<D: Decider>(
        &self,
        stream: &StreamId,
        cause: &str,
        command: &D::Command,
    ) -> D::State {
        let ctx = CommandContext::from_cause(cause, "testkit", Source::Api);
        execute::<D, _>(&*self.events, stream, &ctx, command)
            .await
            .unwrap_or_else(|e| panic!("{cause}: {e}"))
            .state
    }

    /// `POST /v1/orders` without the inline payment start, then the payment
    /// worker's grace passes (so its work is due).
    pub async fn place_order(&self, key: &str, lines: &[Line]) -> OrderId {
        let order_id = self.record_order(key, lines).await;
        self.advance(super::PAYMENT_START_GRACE);
        order_id
    }

    /// Records `PlaceOrder` only; the clock stays where it is.
    pub async fn record_order(&self, key: &str, lines: &[Line]) -> OrderId {
        let order_id = order_id_from_idempotency_key(key);
        let command = OrderCommand::PlaceOrder {
            order_id,
            buyer_id: BuyerId::new("buyer-1").expect("buyer"),
            currency: eur(),
            lines: lines
                .iter()
                .map(|l| LineInput {
                    product_id: ProductId::new(l.product).expect("product"),
                    seller_id: seller(l.seller),
                    seller_account: account_of(l.seller),
                    unit_amount_minor: l.unit_minor,
                    quantity: l.quantity,
                })
                .collect(),
            fee_bps: FeeBps::new(FEE_BPS).expect("fee"),
            now: self.now(),
        };
        self.api::<Order>(&order_id.stream_id(), &format!("order:{key}"), &command)
            .await;
        order_id
    }

    /// A placed order whose payment succeeded and whose transfers were paid.
    pub async fn paid_order(&self, key: &str, lines: &[Line]) -> OrderId {
        let order_id = self.place_order(key, lines).await;
        self.run_until_idle().await;
        order_id
    }

    /// Phase 1 of a refund only: the order reserves the lines (the API
    /// crashed before writing the refund stream).
    pub async fn reserve_refund(
        &self,
        order_id: OrderId,
        key: &str,
        products: Option<&[&str]>,
    ) -> RefundId {
        let refund_id = refund_id_from_idempotency_key(order_id, key);
        let command = OrderCommand::RequestRefund {
            refund_id,
            product_ids: products.map(|ps| {
                ps.iter()
                    .map(|p| ProductId::new(*p).expect("product"))
                    .collect()
            }),
            reason: "buyer asked".to_owned(),
            reason_code: None,
            now: self.now(),
        };
        self.api::<Order>(
            &order_id.stream_id(),
            &format!("refund:{refund_id}:reserve"),
            &command,
        )
        .await;
        refund_id
    }

    /// `POST /v1/orders/{id}/refunds`: the reservation, then the refund
    /// stream (phase 1 complete; the `refund` worker does phase 2).
    pub async fn request_refund(
        &self,
        order_id: OrderId,
        key: &str,
        products: Option<&[&str]>,
    ) -> RefundId {
        let refund_id = self.reserve_refund(order_id, key, products).await;
        let order = self.order(order_id).await;
        let pending = order.pending_refund.expect("refund reserved");
        let command = RefundCommand::Request {
            refund_id,
            order_id,
            payment_id: order.payment_id.expect("paid order"),
            amount_minor: pending.amount_minor,
            currency: order.currency,
            lines: pending.lines,
            reason: "buyer asked".to_owned(),
            reason_code: None,
            now: self.now(),
        };
        self.api::<Refund>(
            &refund_id.stream_id(),
            &format!("refund:{refund_id}:request"),
            &command,
        )
        .await;
        refund_id
    }

    pub async fn order(&self, order_id: OrderId) -> PlacedOrder {
        load::<Order, _>(&*self.events, &order_id.stream_id())
            .await
            .expect("load order")
            .state
            .order
            .expect("order exists")
    }

    pub async fn refund(&self, refund_id: RefundId) -> Option<RequestedRefund> {
        load::<Refund, _>(&*self.events, &refund_id.stream_id())
            .await
            .expect("load refund")
            .state
            .refund
    }

    pub async fn transfer(&self, order_id: OrderId, seller_id: &str) -> ScheduledTransfer {
        self.transfer_by_id(transfer_id(order_id, &seller(seller_id)))
            .await
    }

    pub async fn transfer_by_id(&self, id: TransferId) -> ScheduledTransfer {
        load::<SellerTransfer, _>(&*self.events, &id.stream_id())
            .await
            .expect("load transfer")
            .state
            .transfer
            .expect("transfer exists")
    }

    /// Event types of one stream, in order.
    pub async fn event_types(&self, stream: &StreamId) -> Vec<String> {
        self.events
            .read_stream(stream, 1, 10_000)
            .await
            .expect("read stream")
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    /// Asks for a reversal of `amount_minor` of a transfer, as
    /// `refund_sellers` would for `refund_id`.
    pub async fn request_reversal(&self, id: TransferId, refund_id: RefundId, amount_minor: i64) {
        let command = TransferCommand::RequestReversal {
            refund_id,
            amount: Amount::new(amount_minor, eur()),
            now: self.now(),
        };
        self.api::<SellerTransfer>(
            &id.stream_id(),
            &format!("test:{id}:{refund_id}:reverse"),
            &command,
        )
        .await;
    }

    /// A 900 transfer of a synthetic order that Stripe never saw, in the
    /// state `how` says.
    pub async fn recorded_transfer(&self, key: &str, how: Recorded) -> TransferId {
        let order_id = order_id_from_idempotency_key(key);
        let seller_id = seller("seller-x");
        let id = transfer_id(order_id, &seller_id);
        let stream = id.stream_id();
        let amount = Amount::new(900, eur());
        let schedule = TransferCommand::Schedule {
            transfer_id: id,
            order_id,
            seller_id: seller_id.clone(),
            destination: account_of("seller-x"),
            amount,
            now: self.now(),
        };
        match how {
            Recorded::Pending => {
                self.api::<SellerTransfer>(&stream, &format!("test:{id}:schedule"), &schedule)
                    .await;
            }
            Recorded::PaidAs(stripe) => {
                self.api::<SellerTransfer>(&stream, &format!("test:{id}:schedule"), &schedule)
                    .await;
                let paid = TransferCommand::RecordSucceeded {
                    stripe_transfer_id: StripeTransferId::new(stripe).expect("stripe id"),
                    amount,
                    now: self.now(),
                };
                self.api::<SellerTransfer>(&stream, &format!("test:{id}:paid"), &paid)
                    .await;
            }
            Recorded::ImportedWithoutStripeId => {
                use ledger_core::transfer::TransferEvent;
                let events = [
                    TransferEvent::TransferScheduled {
                        transfer_id: id,
                        order_id,
                        seller_id: seller_id.clone(),
                        destination: account_of("seller-x"),
                        amount,
                        at: self.now(),
                    },
                    TransferEvent::TransferCompleted {
                        transfer_id: id,
                        order_id,
                        seller_id,
                        stripe_transfer_id: None,
                        amount,
                        amount_due: amount,
                        attempt: 1,
                        at: self.now(),
                    },
                ];
                let command_id = command_id_from_cause(&format!("test:{id}:import"));
                let ctx = CommandContext {
                    command_id,
                    metadata: Metadata {
                        correlation_id: command_id,
                        causation_id: None,
                        actor: "import".to_owned(),
                        source: Source::Operator,
                        request_id: None,
                    },
                };
                let new = to_new_events::<SellerTransfer>(&ctx, &stream, &events);
                self.events
                    .append(&stream, ExpectedVersion::NoStream, &new)
                    .await
                    .expect("import transfer");
            }
        }
        id
    }
}

/// The state [`Harness::recorded_transfer`] leaves a transfer in.
#[derive(Debug, Clone, Copy)]
pub enum Recorded {
    /// Scheduled, not paid.
    Pending,
    /// Completed under this Stripe transfer id (which Stripe may not know).
    PaidAs(&'static str),
    /// Completed in imported history that carries no Stripe transfer id.
    ImportedWithoutStripeId,
}

/// Runs every scenario in [`scenarios`] as a `#[tokio::test]` against the
/// harnesses `$make` builds (a `MakeHarness`, e.g.
/// `ledger_projections::managers::testkit::memory`).
#[macro_export]
macro_rules! manager_scenarios {
    ($make:expr) => {
        $crate::manager_scenarios!(@cases $make;
            reconcile_stuck_order_syncs_via_synthetic_status,
            reconcile_takes_at_most_the_batch_limit_per_tick,
            reconcile_recent_order_not_touched,
            reconcile_completed_order_not_touched,
            reconcile_order_without_payment_id_not_touched,
            reconcile_psp_read_error_leaves_row_intact,
            reconcile_orphan_refund_auto_fails_and_order_rolls_back,
            reconcile_recent_orphan_refund_not_touched,
            reconcile_orphan_known_to_the_psp_is_synced_not_failed,
            reconcile_stuck_refund_synced,
            reconcile_failed_refund_passes_error_message,
            reconcile_all_terminal_states_noop,
            reversal_happy_path,
            reversal_already_reversed_records_reversed,
            reversal_not_found_fails,
            reversal_transient_503_bumps_retry_count_with_backoff,
            reversal_backoff_is_capped,
            reversal_exhausted_retries_fail,
            reversal_without_stripe_transfer_id_fails_without_calling_stripe,
            reversal_only_picks_reversal_pending,
            reversal_respects_next_retry_at,
            transfer_definitive_failure_is_retried_when_due,
            transfer_exhausted_then_operator_retry,
            transfer_lost_answer_without_effect_reads_absence_then_pays_once,
            transfer_rate_limited_retries_the_same_key,
            transfer_created_then_500_is_found_by_reading_not_paid_twice,
            transfer_created_then_500_with_the_key_pruned_is_found_not_paid_twice,
            transfer_created_then_connection_dropped_is_found_by_reading,
            a_pending_payout_whose_key_may_be_gone_is_read_before_paying,
            operator_retry_of_an_indeterminate_payout_reads_first,
            two_managers_resolving_one_indeterminate_payout_pay_once,
            reversal_created_then_500_is_found_by_reading,
            reversal_lost_without_effect_moves_to_a_new_key_once,
            reversal_indeterminate_is_read_by_the_operator_and_after_a_pruned_key,
            payment_created_then_500_is_read_not_created_again,
            refund_created_then_500_is_read_not_created_again,
            an_unknown_refund_status_is_one_anomaly_and_no_retry_loop,
            a_null_destination_is_one_anomaly_and_no_retry_loop,
            reconciler_sweeps_indeterminate_payouts,
            provider_reconcile_catches_a_second_payout_and_verify_reports_it,
            payment_crash_after_psp_create_recovers_without_second_payment,
            payment_inline_start_leaves_nothing_for_the_worker,
            payment_worker_leaves_a_new_order_to_the_api_for_its_grace,
            payment_refused_cancels_the_order,
            refund_phase1_crash_recovered,
            refund_phase2_crash_recovered,
            refund_refused_by_psp_releases_lines,
            refund_of_an_unpaid_transfer_reduces_it_instead_of_reversing,
            full_lifecycle_moves_money_exactly_once,
        );
    };
    (@cases $make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                $crate::managers::testkit::scenarios::$case(&$make).await;
            }
        )+
    };
}

/// The acceptance scenarios. Each builds its own harness from `make`.
pub mod scenarios {
    use ledger_core::order::OrderStatus;
    use ledger_core::psp::{PaymentStatus, RefundPspStatus};
    use ledger_core::refund::{RefundFailureKind, RefundStatus};
    use ledger_core::transfer::{RetryPolicy, TransferStatus};
    use ledger_psp::{CreatePayment, CreateRefund, CreateTransfer};
    use ledger_psp_fake::{Endpoint, Fault, ResourceBehaviour};
    use ledger_store::work::WorkOrder;

    use super::*;
    use crate::managers::ManagerError;
    use crate::verify::{VerifyOptions, verify};

    const MINUTE: Duration = Duration::from_secs(60);

    fn reversal_policy(base_secs: u64, max_secs: u64, max_retries: u32) -> ManagerConfig {
        let mut config = test_config();
        config.reversal.policy = RetryPolicy {
            base: Duration::from_secs(base_secs),
            max: Duration::from_secs(max_secs),
            max_retries,
        };
        config
    }

    /// An order left `pending` at the PSP (`processing`, no webhook).
    async fn pending_order(h: &Harness, key: &str) -> OrderId {
        let order_id = order_id_from_idempotency_key(key);
        h.fake
            .behave_payment(payment_id_for(order_id).as_str(), ResourceBehaviour::Hold);
        h.place_order(key, &ONE_LINE).await;
        h.run_until_idle().await;
        assert_eq!(h.order(order_id).await.status, OrderStatus::Pending);
        order_id
    }

    /// A refund left `submitted` at the PSP (`pending`, no webhook).
    async fn submitted_refund(h: &Harness, order_id: OrderId, key: &str) -> RefundId {
        let refund_id = refund_id_from_idempotency_key(order_id, key);
        h.fake.behave_refund(
            ledger_core::ids::psp_refund_id_for(refund_id).as_str(),
            ResourceBehaviour::Hold,
        );
        h.request_refund(order_id, key, None).await;
        h.run_until_idle().await;
        let r = h.refund(refund_id).await.expect("refund");
        assert_eq!(r.status, RefundStatus::Submitted);
        refund_id
    }

    // ---------------------------------------------------------------- C

    pub async fn reconcile_stuck_order_syncs_via_synthetic_status(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = pending_order(&h, "stuck").await;
        // The PSP finished, but its webhook never arrived.
        h.fake
            .complete_payment(
                payment_id_for(order_id).as_str(),
                PaymentStatus::Succeeded.as_str(),
            )
            .expect("complete");
        h.advance(31 * MINUTE);
        let report = h.reconcile().await;
        assert_eq!(report.orders.looked_at, 1);
        let action = &report.orders.actions[0];
        assert_eq!(action.stream_id, order_id.stream_id().to_string());
        assert_eq!(
            (action.from_status.as_str(), action.to_status.as_str()),
            ("pending", "completed")
        );
        assert_eq!(action.psp_status.as_deref(), Some("succeeded"));
        assert_eq!(action.stuck_for, "31m");
        assert_eq!(
            action.cause,
            format!("reconcile:{}:succeeded", payment_id_for(order_id))
        );
        assert!(action.changed);
        assert_eq!(h.order(order_id).await.status, OrderStatus::Completed);
        // The corrective event pays the sellers like a webhook would.
        h.run_until_idle().await;
        assert_eq!(
            h.transfer(order_id, "seller-a").await.status,
            TransferStatus::Completed
        );
        // A second pass (and the late webhook's status) change nothing.
        let again = h.reconcile().await;
        assert_eq!(again.orders.looked_at, 0);
    }

    /// Seed item C: at most `batch_limit` rows per class per tick, so a
    /// backlog does not hammer Hyperswitch; the next tick takes the rest,
    /// oldest first.
    pub async fn reconcile_takes_at_most_the_batch_limit_per_tick(make: &impl MakeHarness) {
        let mut config = test_config();
        config.reconcile.batch_limit = 2;
        let h = make.make(config).await;
        let mut orders = Vec::new();
        for key in ["backlog-1", "backlog-2", "backlog-3"] {
            let order_id = pending_order(&h, key).await;
            h.fake
                .complete_payment(
                    payment_id_for(order_id).as_str(),
                    PaymentStatus::Succeeded.as_str(),
                )
                .expect("complete");
            orders.push(order_id);
            h.advance(MINUTE);
        }
        h.advance(31 * MINUTE);
        let first = h.reconcile().await;
        assert_eq!(first.orders.looked_at, 2);
        let synced: Vec<&str> = first
            .orders
            .actions
            .iter()
            .map(|a| a.stream_id.as_str())
            .collect();
        let oldest: Vec<String> = orders[..2]
            .iter()
            .map(|o| o.stream_id().to_string())
            .collect();
        assert_eq!(synced, oldest);
        assert_eq!(h.order(orders[2]).await.status, OrderStatus::Pending);
        let second = h.reconcile().await;
        assert_eq!(second.orders.looked_at, 1);
        assert_eq!(h.order(orders[2]).await.status, OrderStatus::Completed);
    }

    pub async fn reconcile_recent_order_not_touched(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = pending_order(&h, "recent").await;
        h.fake
            .complete_payment(
                payment_id_for(order_id).as_str(),
                PaymentStatus::Succeeded.as_str(),
            )
            .expect("complete");
        h.advance(29 * MINUTE);
        let report = h.reconcile().await;
        assert_eq!(report.orders.looked_at, 0);
        assert_eq!(h.order(order_id).await.status, OrderStatus::Pending);
        assert_eq!(h.counters().requests_to(Endpoint::GetPayment), 0);
    }

    pub async fn reconcile_completed_order_not_touched(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("done", &ONE_LINE).await;
        let before = h.event_types(&order_id.stream_id()).await;
        h.advance(2 * 60 * MINUTE);
        let report = h.reconcile().await;
        assert_eq!(report.orders.looked_at, 0);
        assert!(report.orders.actions.is_empty());
        assert_eq!(h.event_types(&order_id.stream_id()).await, before);
        assert_eq!(h.counters().requests_to(Endpoint::GetPayment), 0);
    }

    pub async fn reconcile_order_without_payment_id_not_touched(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        // Placed, never initiated (no payment id): the payment worker's
        // business, not the reconciler's.
        let order_id = h.place_order("no-payment", &ONE_LINE).await;
        h.advance(2 * 60 * MINUTE);
        let report = h.reconcile().await;
        assert_eq!(report.orders.looked_at, 0);
        let order = h.order(order_id).await;
        assert_eq!(order.status, OrderStatus::Created);
        assert_eq!(order.payment_id, None);
        assert_eq!(h.counters().requests_to(Endpoint::GetPayment), 0);
    }

    pub async fn reconcile_psp_read_error_leaves_row_intact(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = pending_order(&h, "psp-down").await;
        h.fake
            .complete_payment(
                payment_id_for(order_id).as_str(),
                PaymentStatus::Succeeded.as_str(),
            )
            .expect("complete");
        h.fake
            .inject_fault(Endpoint::GetPayment, Fault::Status(500), 1);
        h.advance(31 * MINUTE);
        let before = h.event_types(&order_id.stream_id()).await;
        let report = h.reconcile().await;
        assert_eq!(report.orders.looked_at, 1);
        assert!(report.orders.actions.is_empty());
        assert_eq!(report.orders.failures.len(), 1);
        assert_eq!(
            report.orders.failures[0].stream_id,
            order_id.stream_id().to_string()
        );
        assert_eq!(h.event_types(&order_id.stream_id()).await, before);
        assert_eq!(h.order(order_id).await.status, OrderStatus::Pending);
        // The next tick picks it up.
        let report = h.reconcile().await;
        assert_eq!(report.orders.actions.len(), 1);
        assert_eq!(h.order(order_id).await.status, OrderStatus::Completed);
    }

    pub async fn reconcile_orphan_refund_auto_fails_and_order_rolls_back(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("orphan", &TWO_SELLERS).await;
        // Phase 1 recorded, then the app died before phase 2.
        let refund_id = h.request_refund(order_id, "r1", Some(&["p1"])).await;
        assert_eq!(h.order(order_id).await.status, OrderStatus::RefundPending);
        h.advance(6 * MINUTE);
        let report = h.reconcile().await;
        assert_eq!(report.orphans.looked_at, 1);
        let action = &report.orphans.actions[0];
        assert_eq!(
            (action.from_status.as_str(), action.to_status.as_str()),
            ("requested", "failed")
        );
        assert_eq!(action.psp_status, None);
        assert_eq!(action.stuck_for, "6m");
        let r = h.refund(refund_id).await.expect("refund");
        assert_eq!(r.status, RefundStatus::Failed);
        assert_eq!(r.failure, Some(RefundFailureKind::Orphaned));
        let order = h.order(order_id).await;
        assert_eq!(order.status, OrderStatus::Completed);
        assert!(order.pending_refund.is_none());
        assert_eq!(order.refunded_minor, 0);
        // The queued phase-2 work finds the refund failed: no PSP refund.
        h.run_until_idle().await;
        assert_eq!(h.counters().refunds_created, 0);
        assert_eq!(h.counters().requests_to(Endpoint::CreateRefund), 0);
    }

    pub async fn reconcile_recent_orphan_refund_not_touched(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("recent-orphan", &ONE_LINE).await;
        let refund_id = h.request_refund(order_id, "r1", None).await;
        h.advance(4 * MINUTE);
        let report = h.reconcile().await;
        assert_eq!(report.orphans.looked_at, 0);
        assert_eq!(
            h.refund(refund_id).await.expect("refund").status,
            RefundStatus::Requested
        );
        assert_eq!(h.order(order_id).await.status, OrderStatus::RefundPending);
        assert_eq!(h.counters().requests_to(Endpoint::GetRefund), 0);
    }

    pub async fn reconcile_orphan_known_to_the_psp_is_synced_not_failed(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("orphan-at-psp", &ONE_LINE).await;
        let refund_id = h.request_refund(order_id, "r1", None).await;
        let order = h.order(order_id).await;
        // Phase 2 reached Hyperswitch, but the crash came before `Submit`.
        h.hyperswitch
            .create_refund(&CreateRefund {
                refund_id: ledger_core::ids::psp_refund_id_for(refund_id),
                payment_id: order.payment_id.clone().expect("payment id"),
                amount: Amount::new(order.total_minor, eur()),
                reason_code: ledger_core::refund::RefundReasonCode::RequestedByCustomer,
                reason: None,
            })
            .await
            .expect("refund at the PSP");
        h.advance(6 * MINUTE);
        let report = h.reconcile().await;
        let action = &report.orphans.actions[0];
        assert_eq!(action.psp_status.as_deref(), Some("succeeded"));
        assert_eq!(action.to_status, "succeeded");
        assert_eq!(
            h.refund(refund_id).await.expect("refund").status,
            RefundStatus::Succeeded
        );
        assert_eq!(h.order(order_id).await.status, OrderStatus::Refunded);
        assert_eq!(h.counters().refunds_created, 1);
    }

    pub async fn reconcile_stuck_refund_synced(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("stuck-refund", &ONE_LINE).await;
        let refund_id = submitted_refund(&h, order_id, "r1").await;
        let psp_id = ledger_core::ids::psp_refund_id_for(refund_id);
        h.fake
            .complete_refund(psp_id.as_str(), RefundPspStatus::Succeeded.as_str())
            .expect("complete");
        h.advance(31 * MINUTE);
        let report = h.reconcile().await;
        assert_eq!(report.refunds.looked_at, 1);
        let action = &report.refunds.actions[0];
        assert_eq!(
            (action.from_status.as_str(), action.to_status.as_str()),
            ("submitted", "succeeded")
        );
        assert_eq!(action.cause, format!("reconcile:{psp_id}:succeeded"));
        assert_eq!(
            h.refund(refund_id).await.expect("refund").status,
            RefundStatus::Succeeded
        );
        assert_eq!(h.order(order_id).await.status, OrderStatus::Refunded);
        // The refunded share comes back from the seller.
        h.run_until_idle().await;
        assert_eq!(
            h.transfer(order_id, "seller-a").await.status,
            TransferStatus::Reversed
        );
    }

    pub async fn reconcile_failed_refund_passes_error_message(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("failed-refund", &ONE_LINE).await;
        let refund_id = submitted_refund(&h, order_id, "r1").await;
        let psp_id = ledger_core::ids::psp_refund_id_for(refund_id);
        h.fake
            .complete_refund(psp_id.as_str(), RefundPspStatus::Failed.as_str())
            .expect("complete");
        h.advance(31 * MINUTE);
        let report = h.reconcile().await;
        assert_eq!(report.refunds.actions[0].to_status, "failed");
        let r = h.refund(refund_id).await.expect("refund");
        assert_eq!(r.status, RefundStatus::Failed);
        assert_eq!(
            r.error_message.as_deref(),
            Some("The connector declined the refund.")
        );
        let order = h.order(order_id).await;
        assert_eq!(order.status, OrderStatus::Completed);
        assert!(order.pending_refund.is_none());
    }

    pub async fn reconcile_all_terminal_states_noop(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let completed = h.paid_order("t-completed", &ONE_LINE).await;
        let failed_id = order_id_from_idempotency_key("t-failed");
        h.fake.behave_payment(
            payment_id_for(failed_id).as_str(),
            ResourceBehaviour::AutoFail,
        );
        h.paid_order("t-failed", &ONE_LINE).await;
        let cancelled = h.place_order("t-cancelled", &ONE_LINE).await;
        h.api::<Order>(
            &cancelled.stream_id(),
            "test:cancel",
            &OrderCommand::CancelOrder {
                reason: "buyer left".to_owned(),
                now: h.now(),
            },
        )
        .await;
        let refunded = h.paid_order("t-refunded", &ONE_LINE).await;
        let succeeded_refund = h.request_refund(refunded, "r1", None).await;
        let refused = h.paid_order("t-refund-failed", &ONE_LINE).await;
        let failed_refund = refund_id_from_idempotency_key(refused, "r1");
        h.fake.behave_refund(
            ledger_core::ids::psp_refund_id_for(failed_refund).as_str(),
            ResourceBehaviour::AutoFail,
        );
        h.request_refund(refused, "r1", None).await;
        h.run_until_idle().await;
        assert_eq!(h.order(completed).await.status, OrderStatus::Completed);
        assert_eq!(h.order(failed_id).await.status, OrderStatus::Failed);
        assert_eq!(h.order(cancelled).await.status, OrderStatus::Cancelled);
        assert_eq!(
            h.refund(succeeded_refund).await.expect("refund").status,
            RefundStatus::Succeeded
        );
        assert_eq!(
            h.refund(failed_refund).await.expect("refund").status,
            RefundStatus::Failed
        );
        let reads = |c: &Counters| {
            (
                c.requests_to(Endpoint::GetPayment),
                c.requests_to(Endpoint::GetRefund),
            )
        };
        let reads_before = reads(&h.counters());
        h.advance(3 * 60 * MINUTE);
        let report = h.reconcile().await;
        assert_eq!(report.changed(), 0);
        for class in [&report.orders, &report.refunds, &report.orphans] {
            assert_eq!(class.looked_at, 0);
            assert!(class.actions.is_empty());
        }
        assert_eq!(reads(&h.counters()), reads_before);
    }

    // ---------------------------------------------------------------- B

    /// A paid-out 900 transfer and a reversal of all of it requested.
    async fn reversal_pending(h: &Harness, key: &str) -> (TransferId, RefundId) {
        let order_id = h.paid_order(key, &ONE_LINE).await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::Completed);
        let refund_id = RefundId(Uuid::new_v5(&Uuid::nil(), key.as_bytes()));
        h.request_reversal(t.transfer_id, refund_id, 900).await;
        (t.transfer_id, refund_id)
    }

    pub async fn reversal_happy_path(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let (id, _) = reversal_pending(&h, "rev-happy").await;
        let report = h.run_worker(WorkerKind::Reversal).await;
        assert_eq!((report.claimed, report.finished), (1, 1));
        let t = h.transfer_by_id(id).await;
        assert_eq!(t.status, TransferStatus::Reversed);
        assert_eq!(t.reversed_minor, 900);
        assert_eq!(t.stripe_reversal_ids.len(), 1);
        let stripe = t.stripe_transfer_id.expect("stripe id");
        let at_stripe = h.fake.transfer(stripe.as_str()).expect("at stripe");
        assert!(at_stripe.reversed);
        assert_eq!(
            at_stripe.reversal_ids,
            vec![t.stripe_reversal_ids[0].to_string()]
        );
        assert_eq!(h.counters().reversals_created, 1);
        assert!(h.pending_work(WorkerKind::Reversal).await.is_empty());
    }

    pub async fn reversal_already_reversed_records_reversed(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let (id, _) = reversal_pending(&h, "rev-already").await;
        let stripe = h.transfer_by_id(id).await.stripe_transfer_id.expect("id");
        // Someone reversed it in the Stripe dashboard.
        h.stripe
            .create_reversal(
                &stripe,
                &CreateReversal {
                    reversal_key_id: TransferId(Uuid::new_v4()),
                    attempt: 1,
                    amount: None,
                    metadata: Default::default(),
                },
            )
            .await
            .expect("manual reversal");
        h.run_worker(WorkerKind::Reversal).await;
        let t = h.transfer_by_id(id).await;
        assert_eq!(t.status, TransferStatus::Reversed);
        assert_eq!(t.reversed_minor, 900);
        assert!(
            h.event_types(&id.stream_id())
                .await
                .contains(&"TransferAlreadyReversed".to_owned())
        );
        // The worker only looked; it posted nothing.
        assert_eq!(h.counters().reversals_created, 1);
        assert_eq!(h.counters().requests_to(Endpoint::CreateReversal), 1);
    }

    pub async fn reversal_not_found_fails(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let id = h
            .recorded_transfer("rev-missing", Recorded::PaidAs("tr_missing"))
            .await;
        h.request_reversal(id, RefundId(Uuid::new_v4()), 900).await;
        h.run_worker(WorkerKind::Reversal).await;
        let t = h.transfer_by_id(id).await;
        assert_eq!(t.status, TransferStatus::ReversalFailed);
        assert!(t.last_error.expect("error").contains("No such transfer"));
        assert!(
            h.event_types(&id.stream_id())
                .await
                .contains(&"TransferReversalFailed".to_owned())
        );
        assert_eq!(h.counters().requests_to(Endpoint::CreateReversal), 0);
    }

    pub async fn reversal_transient_503_bumps_retry_count_with_backoff(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let (id, _) = reversal_pending(&h, "rev-503").await;
        h.fake
            .inject_fault(Endpoint::GetTransfer, Fault::Status(503), 1);
        let t0 = h.now();
        let report = h.run_worker(WorkerKind::Reversal).await;
        assert_eq!(report.rescheduled, 1);
        let t = h.transfer_by_id(id).await;
        assert_eq!(t.status, TransferStatus::ReversalPending);
        assert_eq!(t.reversal_retry_count, 1);
        // base * 2^0 with the default base of 1m.
        assert_eq!(t.next_retry_at, Some(t0 + TimeDelta::minutes(1)));
        let rows = h.pending_work(WorkerKind::Reversal).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].due_at, t0 + TimeDelta::minutes(1));
        h.advance(MINUTE);
        h.run_worker(WorkerKind::Reversal).await;
        assert_eq!(h.transfer_by_id(id).await.status, TransferStatus::Reversed);
        assert_eq!(h.counters().reversals_created, 1);
    }

    pub async fn reversal_backoff_is_capped(make: &impl MakeHarness) {
        let h = make.make(reversal_policy(1, 10, 10)).await;
        let (id, _) = reversal_pending(&h, "rev-capped").await;
        h.fake
            .inject_fault(Endpoint::GetTransfer, Fault::Status(503), 5);
        let mut delays = Vec::new();
        for _ in 0..5 {
            let now = h.now();
            h.run_worker(WorkerKind::Reversal).await;
            let t = h.transfer_by_id(id).await;
            let due = t.next_retry_at.expect("retry scheduled");
            delays.push((due - now).num_seconds());
            h.clock.set(due);
        }
        // Retry 4 waits min(1s * 2^4, 10s) = 10s, not 16s.
        assert_eq!(delays, vec![1, 2, 4, 8, 10]);
        assert_eq!(h.transfer_by_id(id).await.reversal_retry_count, 5);
    }

    pub async fn reversal_exhausted_retries_fail(make: &impl MakeHarness) {
        let h = make.make(reversal_policy(1, 10, 3)).await;
        let (id, _) = reversal_pending(&h, "rev-exhausted").await;
        h.fake
            .inject_fault(Endpoint::GetTransfer, Fault::Status(503), 3);
        for _ in 0..3 {
            h.run_worker(WorkerKind::Reversal).await;
            if let Some(due) = h.transfer_by_id(id).await.next_retry_at {
                h.clock.set(due);
            }
        }
        let t = h.transfer_by_id(id).await;
        assert_eq!(t.status, TransferStatus::ReversalFailed);
        assert!(t.pending_reversal.is_none());
        assert_eq!(h.counters().requests_to(Endpoint::GetTransfer), 3);
        assert_eq!(h.counters().requests_to(Endpoint::CreateReversal), 0);
        assert!(h.pending_work(WorkerKind::Reversal).await.is_empty());
        let failure = h
            .events
            .read_stream(&id.stream_id(), 1, 100)
            .await
            .expect("read")
            .into_iter()
            .rfind(|e| e.event_type == "TransferReversalFailed")
            .expect("failure event");
        assert!(
            failure.payload.contains("\"failure\":\"exhausted\""),
            "{}",
            failure.payload
        );
    }

    pub async fn reversal_without_stripe_transfer_id_fails_without_calling_stripe(
        make: &impl MakeHarness,
    ) {
        let h = make.make(test_config()).await;
        let id = h
            .recorded_transfer("rev-legacy", Recorded::ImportedWithoutStripeId)
            .await;
        h.request_reversal(id, RefundId(Uuid::new_v4()), 900).await;
        h.run_worker(WorkerKind::Reversal).await;
        let t = h.transfer_by_id(id).await;
        assert_eq!(t.status, TransferStatus::ReversalFailed);
        let c = h.counters();
        assert_eq!(c.requests_to(Endpoint::GetTransfer), 0);
        assert_eq!(c.requests_to(Endpoint::CreateReversal), 0);
    }

    pub async fn reversal_only_picks_reversal_pending(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("rev-only", &TWO_SELLERS).await;
        let a = h.transfer(order_id, "seller-a").await.transfer_id;
        let b = h.transfer(order_id, "seller-b").await.transfer_id;
        h.request_reversal(b, RefundId(Uuid::new_v4()), 900).await;
        h.run_worker(WorkerKind::Reversal).await;
        assert_eq!(h.transfer_by_id(b).await.status, TransferStatus::Reversed);
        let unpaid = h
            .recorded_transfer("rev-only-pending", Recorded::Pending)
            .await;
        let reads_before = h.counters().requests_to(Endpoint::GetTransfer);
        let posts_before = h.counters().requests_to(Endpoint::CreateReversal);
        // Stale hints for transfers that are not reversal_pending.
        let hint = |id: TransferId| WorkOrder {
            manager: WorkerKind::Reversal.name().to_owned(),
            stream_id: id.stream_id().to_string(),
            due_at: h.now(),
        };
        h.work
            .schedule(&[hint(a), hint(b), hint(unpaid)])
            .await
            .expect("schedule");
        let report = h.run_worker(WorkerKind::Reversal).await;
        assert_eq!((report.claimed, report.finished), (3, 3));
        assert_eq!(
            h.counters().requests_to(Endpoint::GetTransfer),
            reads_before
        );
        assert_eq!(
            h.counters().requests_to(Endpoint::CreateReversal),
            posts_before
        );
        assert_eq!(h.transfer_by_id(a).await.status, TransferStatus::Completed);
        assert_eq!(
            h.transfer_by_id(unpaid).await.status,
            TransferStatus::Pending
        );
        assert!(h.pending_work(WorkerKind::Reversal).await.is_empty());
    }

    pub async fn reversal_respects_next_retry_at(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let (id, _) = reversal_pending(&h, "rev-due").await;
        h.fake
            .inject_fault(Endpoint::GetTransfer, Fault::Status(503), 1);
        h.run_worker(WorkerKind::Reversal).await;
        let due = h.transfer_by_id(id).await.next_retry_at.expect("due");
        let reads = h.counters().requests_to(Endpoint::GetTransfer);
        h.advance(Duration::from_secs(30));
        // Not due: nothing is claimed.
        assert_eq!(h.run_worker(WorkerKind::Reversal).await.claimed, 0);
        // Even a stale hint due now does not make the worker call early.
        h.work
            .schedule(&[WorkOrder {
                manager: WorkerKind::Reversal.name().to_owned(),
                stream_id: id.stream_id().to_string(),
                due_at: h.now(),
            }])
            .await
            .expect("schedule");
        let report = h.run_worker(WorkerKind::Reversal).await;
        assert_eq!((report.claimed, report.rescheduled), (1, 1));
        assert_eq!(h.counters().requests_to(Endpoint::GetTransfer), reads);
        assert_eq!(h.pending_work(WorkerKind::Reversal).await[0].due_at, due);
        h.clock.set(due);
        h.run_worker(WorkerKind::Reversal).await;
        assert_eq!(h.transfer_by_id(id).await.status, TransferStatus::Reversed);
    }

    // ------------------------------------------------------ transfer retry

    pub async fn transfer_definitive_failure_is_retried_when_due(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        h.fake.set_stripe_balance(Some(0));
        let order_id = h.place_order("tr-retry", &ONE_LINE).await;
        // Paid and first tried now (the payment worker's grace has passed).
        let t0 = h.now();
        h.run_until_idle().await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::Failed);
        assert_eq!((t.attempt, t.retry_count), (1, 1));
        assert!(t.last_failure_definitive);
        assert_eq!(t.next_retry_at, Some(t0 + TimeDelta::minutes(1)));
        let rows = h.pending_work(WorkerKind::TransferRetry).await;
        assert_eq!(rows[0].due_at, t0 + TimeDelta::minutes(1));
        h.fake.set_stripe_balance(None);
        // Not due yet.
        h.run_until_idle().await;
        assert_eq!(
            h.transfer(order_id, "seller-a").await.status,
            TransferStatus::Failed
        );
        h.advance(MINUTE);
        h.run_until_idle().await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::Completed);
        // A definitive answer is stored under the old key: a new one was used.
        assert_eq!(t.attempt, 2);
        assert_eq!(h.counters().transfers_created, 1);
        assert_eq!(h.counters().requests_to(Endpoint::CreateTransfer), 2);
        assert_eq!(h.counters().stripe_posts_without_idempotency_key, 0);
    }

    pub async fn transfer_exhausted_then_operator_retry(make: &impl MakeHarness) {
        let mut config = test_config();
        config.transfer_retry.policy.max_retries = 2;
        let h = make.make(config).await;
        h.fake.set_stripe_balance(Some(0));
        let order_id = h.paid_order("tr-exhausted", &ONE_LINE).await;
        h.advance(MINUTE);
        h.run_until_idle().await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::PermanentlyFailed);
        assert_eq!(t.retry_count, 2);
        // No automatic retry any more.
        h.advance(10 * 60 * MINUTE);
        h.run_until_idle().await;
        assert_eq!(h.counters().requests_to(Endpoint::CreateTransfer), 2);
        h.fake.set_stripe_balance(None);
        let retried = h
            .managers
            .retry_transfer_now(t.transfer_id, h.now())
            .await
            .expect("operator retry");
        assert_eq!(retried.from_status, "permanently_failed");
        assert_eq!(retried.status, "pending");
        assert_eq!(retried.attempt, 3);
        h.run_until_idle().await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::Completed);
        assert_eq!(h.counters().transfers_created, 1);
        // Retrying a completed transfer is refused, not a silent success.
        let again = h.managers.retry_transfer_now(t.transfer_id, h.now()).await;
        assert!(
            matches!(again, Err(ManagerError::Rejected { .. })),
            "{again:?}"
        );
        let missing = h
            .managers
            .retry_transfer_now(TransferId(Uuid::new_v4()), h.now())
            .await;
        assert!(
            matches!(missing, Err(ManagerError::NotFound(_))),
            "{missing:?}"
        );
    }

    // ------------------------------------------- indeterminate outcomes

    /// The transfer the harness's order `key` owes seller A, and the
    /// exact request the transfer worker sends for its current attempt.
    async fn payout_request(h: &Harness, order_id: OrderId) -> CreateTransfer {
        let t = h.transfer(order_id, "seller-a").await;
        CreateTransfer {
            transfer_id: t.transfer_id,
            attempt: t.attempt,
            amount: t.amount,
            destination: t.destination.clone(),
            transfer_group: Some(super::super::resolve::transfer_group(&t)),
            metadata: super::super::resolve::payout_metadata(&t),
        }
    }

    async fn assert_verify_clean(h: &Harness) {
        let verified = verify(h.events.clone(), VerifyOptions::default(), &[], &|_| {})
            .await
            .expect("verify");
        assert!(verified.is_clean(), "{:#?}", verified.findings);
    }

    fn count_of(types: &[String], wanted: &str) -> usize {
        types.iter().filter(|t| t.as_str() == wanted).count()
    }

    pub async fn transfer_lost_answer_without_effect_reads_absence_then_pays_once(
        make: &impl MakeHarness,
    ) {
        let h = make.make(test_config()).await;
        // A 503 from in front of the API: nothing was made, but the ledger
        // cannot know that from the answer.
        h.fake
            .inject_fault(Endpoint::CreateTransfer, Fault::Status(503), 1);
        let order_id = h.paid_order("tr-503", &ONE_LINE).await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::Indeterminate);
        assert_eq!(t.attempt, 1);
        assert_eq!(h.counters().transfers_created, 0);
        // Nothing is sent again before the read.
        let rows = h.pending_work(WorkerKind::Transfer).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].due_at, h.now() + TimeDelta::seconds(30));
        h.advance(MINUTE);
        h.run_until_idle().await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::Completed);
        // Proven absent, so the next attempt used a new key.
        assert_eq!(t.attempt, 2);
        let c = h.counters();
        assert_eq!(c.requests_to(Endpoint::ListTransfers), 1);
        assert_eq!(c.requests_to(Endpoint::CreateTransfer), 2);
        assert_eq!(c.transfers_created, 1);
        let at_stripe = h.fake.transfers();
        assert_eq!(at_stripe.len(), 1);
        assert_eq!(
            Some(at_stripe[0].id.as_str()),
            t.stripe_transfer_id.as_ref().map(|s| s.as_str())
        );
        assert_eq!(
            at_stripe[0].metadata.get("attempt").map(String::as_str),
            Some("2")
        );
        assert_verify_clean(&h).await;
    }

    pub async fn transfer_rate_limited_retries_the_same_key(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        h.fake
            .inject_fault(Endpoint::CreateTransfer, Fault::RateLimited, 1);
        let order_id = h.paid_order("tr-429", &ONE_LINE).await;
        let t = h.transfer(order_id, "seller-a").await;
        // A 429 did not execute: still pending, no read needed.
        assert_eq!(t.status, TransferStatus::Pending);
        let rows = h.pending_work(WorkerKind::Transfer).await;
        assert_eq!(rows.len(), 1);
        assert!(rows[0].last_error.as_deref().unwrap_or("").contains("429"));
        h.advance(MINUTE);
        h.run_until_idle().await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!((t.status, t.attempt), (TransferStatus::Completed, 1));
        assert_eq!(h.counters().requests_to(Endpoint::ListTransfers), 0);
        assert_eq!(h.counters().transfers_created, 1);
    }

    pub async fn transfer_created_then_500_is_found_by_reading_not_paid_twice(
        make: &impl MakeHarness,
    ) {
        let h = make.make(test_config()).await;
        h.fake
            .inject_fault(Endpoint::CreateTransfer, Fault::SucceedThenStatus(500), 1);
        let order_id = h.paid_order("tr-made-500", &ONE_LINE).await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::Indeterminate);
        assert_eq!(h.counters().transfers_created, 1);
        // Stripe stored the 500 under the key: the same key replays it, so
        // retrying with it could never succeed.
        let replay = h
            .stripe
            .create_transfer(&payout_request(&h, order_id).await)
            .await
            .expect_err("the stored 500");
        assert!(
            matches!(replay, ledger_psp::PspError::Api { status: 500, signals, .. } if signals.replayed && signals.should_retry == Some(false)),
            "{replay:?}"
        );
        assert_eq!(replay.create_outcome(), ledger_psp::CreateOutcome::Unknown);
        h.advance(MINUTE);
        h.run_until_idle().await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::Completed);
        assert_eq!(t.attempt, 1);
        let at_stripe = h.fake.transfers();
        assert_eq!(at_stripe.len(), 1, "exactly one transfer at Stripe");
        assert_eq!(
            t.stripe_transfer_id.as_ref().map(|s| s.as_str()),
            Some(at_stripe[0].id.as_str())
        );
        assert_eq!(t.transferred_minor, at_stripe[0].amount_minor);
        // One create from the worker, one replay from this test: the
        // worker never sent the create again.
        assert_eq!(h.counters().requests_to(Endpoint::CreateTransfer), 2);
        assert_verify_clean(&h).await;
    }

    pub async fn transfer_created_then_500_with_the_key_pruned_is_found_not_paid_twice(
        make: &impl MakeHarness,
    ) {
        let h = make.make(test_config()).await;
        h.fake
            .inject_fault(Endpoint::CreateTransfer, Fault::SucceedThenStatus(500), 1);
        let order_id = h.paid_order("tr-pruned", &ONE_LINE).await;
        assert_eq!(
            h.transfer(order_id, "seller-a").await.status,
            TransferStatus::Indeterminate
        );
        // A day passes and Stripe forgets the key: sending it again now
        // would create a second transfer.
        assert_eq!(h.fake.prune_idempotency_keys(), 1);
        h.advance(Duration::from_secs(24 * 3_600));
        h.run_until_idle().await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::Completed);
        assert_eq!(h.counters().transfers_created, 1);
        assert_eq!(h.counters().requests_to(Endpoint::CreateTransfer), 1);
        assert_eq!(h.fake.transfers().len(), 1);
        assert_verify_clean(&h).await;
    }

    pub async fn transfer_created_then_connection_dropped_is_found_by_reading(
        make: &impl MakeHarness,
    ) {
        let h = make.make(test_config()).await;
        h.fake
            .inject_fault(Endpoint::CreateTransfer, Fault::SucceedThenDrop, 1);
        let order_id = h.paid_order("tr-drop", &ONE_LINE).await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::Indeterminate);
        h.advance(MINUTE);
        h.run_until_idle().await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!((t.status, t.attempt), (TransferStatus::Completed, 1));
        assert_eq!(h.counters().transfers_created, 1);
        assert_eq!(h.counters().requests_to(Endpoint::CreateTransfer), 1);
        assert_verify_clean(&h).await;
    }

    pub async fn a_pending_payout_whose_key_may_be_gone_is_read_before_paying(
        make: &impl MakeHarness,
    ) {
        let h = make.make(test_config()).await;
        h.fake
            .inject_fault(Endpoint::CreateTransfer, Fault::RateLimited, 1);
        let order_id = h.paid_order("tr-stale-key", &ONE_LINE).await;
        assert_eq!(
            h.transfer(order_id, "seller-a").await.status,
            TransferStatus::Pending
        );
        // A process sent the payout and died before recording it; a day
        // later Stripe has forgotten the key.
        h.stripe
            .create_transfer(&payout_request(&h, order_id).await)
            .await
            .expect("made by the crashed process");
        h.fake.prune_idempotency_keys();
        h.advance(Duration::from_secs(24 * 3_600));
        h.run_until_idle().await;
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::Completed);
        assert_eq!(h.counters().transfers_created, 1);
        // The 429 and the crashed process's call; nothing from the worker.
        assert_eq!(h.counters().requests_to(Endpoint::CreateTransfer), 2);
        assert_verify_clean(&h).await;
    }

    pub async fn operator_retry_of_an_indeterminate_payout_reads_first(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        // Made, then a 500: the retry finds it.
        h.fake
            .inject_fault(Endpoint::CreateTransfer, Fault::SucceedThenStatus(500), 1);
        let made = h.paid_order("op-found", &ONE_LINE).await;
        let id = h.transfer(made, "seller-a").await.transfer_id;
        let retried = h
            .managers
            .retry_transfer_now(id, h.now())
            .await
            .expect("operator retry");
        let at_stripe = h.fake.transfers();
        assert_eq!(retried.from_status, "indeterminate");
        assert_eq!(retried.status, "completed");
        assert_eq!(retried.found.as_deref(), Some(at_stripe[0].id.as_str()));
        assert_eq!(retried.absent, None);
        // Not made, then a 500: the retry proves absence, the next attempt
        // pays once.
        h.fake
            .inject_fault(Endpoint::CreateTransfer, Fault::Status(500), 1);
        let lost = h.paid_order("op-absent", &ONE_LINE).await;
        let id = h.transfer(lost, "seller-a").await.transfer_id;
        // At once, a read that finds nothing proves nothing: the call may
        // still be running at Stripe.
        let early = h.managers.retry_transfer_now(id, h.now()).await;
        assert!(
            matches!(early, Err(ManagerError::TooEarly { .. })),
            "{early:?}"
        );
        assert_eq!(
            h.transfer_by_id(id).await.status,
            TransferStatus::Indeterminate
        );
        h.advance(MINUTE);
        let retried = h
            .managers
            .retry_transfer_now(id, h.now())
            .await
            .expect("operator retry");
        assert_eq!(retried.absent, Some(true));
        assert_eq!((retried.status.as_str(), retried.attempt), ("pending", 2));
        assert_eq!(retried.found, None);
        h.run_until_idle().await;
        assert_eq!(
            h.transfer(lost, "seller-a").await.status,
            TransferStatus::Completed
        );
        assert_eq!(h.counters().transfers_created, 2);
        assert_eq!(h.fake.transfers().len(), 2);
        assert_verify_clean(&h).await;
    }

    pub async fn two_managers_resolving_one_indeterminate_payout_pay_once(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let other = h.second_managers();
        for (key, fault) in [
            ("two-found", Fault::SucceedThenStatus(500)),
            ("two-absent", Fault::Status(500)),
        ] {
            h.fake.inject_fault(Endpoint::CreateTransfer, fault, 1);
            let order_id = h.paid_order(key, &ONE_LINE).await;
            let t = h.transfer(order_id, "seller-a").await;
            assert_eq!(t.status, TransferStatus::Indeterminate, "{key}");
            h.advance(MINUTE);
            // One process's worker and the other's operator retry read and
            // record at the same time.
            let now = h.now();
            let (worker, operator) = tokio::join!(
                h.managers.run_worker(WorkerKind::Transfer, now),
                other.retry_transfer_now(t.transfer_id, now)
            );
            worker.expect("worker");
            // The operator's read either resolved it, or came after the
            // worker had: then there is nothing left to retry.
            match operator {
                Ok(_) => {}
                Err(ManagerError::Rejected { reason, .. }) if reason.contains("completed") => {}
                Err(e) => panic!("{key}: operator retry: {e}"),
            }
            h.run_until_idle().await;
            let types = h.event_types(&t.transfer_id.stream_id()).await;
            assert_eq!(count_of(&types, "TransferCompleted"), 1, "{key}: {types:?}");
            assert!(
                count_of(&types, "TransferAttemptAbsent") <= 1,
                "{key}: {types:?}"
            );
            let stripe = h
                .fake
                .transfers_with_metadata("transfer_id", &t.transfer_id.to_string());
            assert_eq!(stripe.len(), 1, "{key}: exactly one transfer at Stripe");
        }
        assert_verify_clean(&h).await;
    }

    pub async fn reversal_created_then_500_is_found_by_reading(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let (id, refund_id) = reversal_pending(&h, "rev-made-500").await;
        h.fake
            .inject_fault(Endpoint::CreateReversal, Fault::SucceedThenStatus(500), 1);
        h.run_worker(WorkerKind::Reversal).await;
        let t = h.transfer_by_id(id).await;
        assert_eq!(t.status, TransferStatus::ReversalIndeterminate);
        assert_eq!(h.counters().reversals_created, 1);
        h.advance(MINUTE);
        h.run_worker(WorkerKind::Reversal).await;
        let t = h.transfer_by_id(id).await;
        assert_eq!(t.status, TransferStatus::Reversed);
        let stripe = t.stripe_transfer_id.clone().expect("paid");
        let reversals = h.fake.reversals_of(stripe.as_str());
        assert_eq!(reversals.len(), 1, "exactly one reversal at Stripe");
        assert_eq!(t.stripe_reversal_ids[0].as_str(), reversals[0].id);
        assert_eq!(t.reversed_minor, reversals[0].amount_minor);
        assert_eq!(
            reversals[0].metadata.get("refund_id").map(String::as_str),
            Some(refund_id.to_string().as_str())
        );
        assert_eq!(h.counters().requests_to(Endpoint::CreateReversal), 1);
    }

    pub async fn reversal_indeterminate_is_read_by_the_operator_and_after_a_pruned_key(
        make: &impl MakeHarness,
    ) {
        let h = make.make(test_config()).await;
        // The operator's retry reads first and finds the reversal.
        let (id, _) = reversal_pending(&h, "rev-op").await;
        h.fake
            .inject_fault(Endpoint::CreateReversal, Fault::SucceedThenStatus(500), 1);
        h.run_worker(WorkerKind::Reversal).await;
        assert_eq!(
            h.transfer_by_id(id).await.status,
            TransferStatus::ReversalIndeterminate
        );
        let retried = h
            .managers
            .retry_transfer_now(id, h.now())
            .await
            .expect("operator retry");
        let t = h.transfer_by_id(id).await;
        assert_eq!(retried.from_status, "reversal_indeterminate");
        assert_eq!(retried.status, "reversed");
        assert_eq!(
            retried.found.as_deref(),
            Some(t.stripe_reversal_ids[0].as_str())
        );
        // A day later, with every key pruned, the worker still sends nothing
        // again: the next read finds the reversal.
        let (id, _) = reversal_pending(&h, "rev-pruned").await;
        h.fake
            .inject_fault(Endpoint::CreateReversal, Fault::SucceedThenStatus(500), 1);
        h.run_worker(WorkerKind::Reversal).await;
        h.fake.prune_idempotency_keys();
        h.advance(Duration::from_secs(24 * 3_600));
        h.run_until_idle().await;
        let t = h.transfer_by_id(id).await;
        assert_eq!(t.status, TransferStatus::Reversed);
        let stripe = t.stripe_transfer_id.clone().expect("paid");
        assert_eq!(h.fake.reversals_of(stripe.as_str()).len(), 1);
        assert_eq!(h.counters().reversals_created, 2);
        assert_eq!(h.counters().requests_to(Endpoint::CreateReversal), 2);
    }

    pub async fn reversal_lost_without_effect_moves_to_a_new_key_once(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let (id, _) = reversal_pending(&h, "rev-lost").await;
        h.fake
            .inject_fault(Endpoint::CreateReversal, Fault::Status(502), 1);
        h.run_worker(WorkerKind::Reversal).await;
        assert_eq!(
            h.transfer_by_id(id).await.status,
            TransferStatus::ReversalIndeterminate
        );
        h.advance(MINUTE);
        h.run_worker(WorkerKind::Reversal).await;
        let t = h.transfer_by_id(id).await;
        assert_eq!(t.status, TransferStatus::Reversed);
        assert_eq!(h.counters().reversals_created, 1);
        let stripe = t.stripe_transfer_id.clone().expect("paid");
        let reversals = h.fake.reversals_of(stripe.as_str());
        assert_eq!(reversals.len(), 1);
        assert_eq!(
            reversals[0].metadata.get("attempt").map(String::as_str),
            Some("2")
        );
        let types = h.event_types(&id.stream_id()).await;
        assert_eq!(count_of(&types, "TransferReversalAttemptAbsent"), 1);
    }

    pub async fn payment_created_then_500_is_read_not_created_again(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        h.fake
            .inject_fault(Endpoint::CreatePayment, Fault::SucceedThenStatus(500), 1);
        let order_id = h.place_order("pay-made-500", &ONE_LINE).await;
        h.run_until_idle().await;
        assert_eq!(h.order(order_id).await.status, OrderStatus::Created);
        assert_eq!(h.counters().payments_created, 1);
        h.advance(MINUTE);
        h.run_until_idle().await;
        let order = h.order(order_id).await;
        assert!(order.status.is_paid(), "{}", order.status);
        assert_eq!(order.payment_id, Some(payment_id_for(order_id)));
        let c = h.counters();
        assert_eq!(c.payments_created, 1);
        assert_eq!(c.requests_to(Endpoint::CreatePayment), 1);
        assert!(c.requests_to(Endpoint::GetPayment) >= 1);
        assert_verify_clean(&h).await;
    }

    pub async fn refund_created_then_500_is_read_not_created_again(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("ref-made-500", &ONE_LINE).await;
        h.fake
            .inject_fault(Endpoint::CreateRefund, Fault::SucceedThenStatus(500), 1);
        let refund_id = h.request_refund(order_id, "r1", None).await;
        h.run_until_idle().await;
        assert_eq!(
            h.refund(refund_id).await.expect("refund").status,
            RefundStatus::Requested
        );
        assert_eq!(h.counters().refunds_created, 1);
        h.advance(MINUTE);
        h.run_until_idle().await;
        let r = h.refund(refund_id).await.expect("refund");
        assert_eq!(r.status, RefundStatus::Succeeded);
        let c = h.counters();
        assert_eq!(c.refunds_created, 1);
        assert_eq!(c.requests_to(Endpoint::CreateRefund), 1);
        let psp = ledger_core::ids::psp_refund_id_for(refund_id);
        assert_eq!(
            h.fake.refund(psp.as_str()).map(|f| f.amount_minor),
            Some(r.amount_minor)
        );
        assert_verify_clean(&h).await;
    }

    pub async fn an_unknown_refund_status_is_one_anomaly_and_no_retry_loop(
        make: &impl MakeHarness,
    ) {
        let mut config = test_config();
        config.reconcile.refund_stuck_after = MINUTE;
        let h = make.make(config).await;
        let order_id = h.paid_order("ref-mystery", &ONE_LINE).await;
        let refund_id = submitted_refund(&h, order_id, "r1").await;
        let psp = ledger_core::ids::psp_refund_id_for(refund_id);
        h.fake
            .set_refund_status(psp.as_str(), "mystery")
            .expect("refund at the fake");
        h.advance(2 * MINUTE);
        let first = h.reconcile().await;
        assert_eq!(first.refunds.failures.len(), 1, "{first:#?}");
        let reads = h.counters().requests_to(Endpoint::GetRefund);
        h.advance(2 * MINUTE);
        let second = h.reconcile().await;
        assert!(second.refunds.failures.is_empty(), "{second:#?}");
        assert_eq!(second.refunds.skipped, 1);
        // Not read again, not recorded again, status untouched.
        assert_eq!(h.counters().requests_to(Endpoint::GetRefund), reads);
        let types = h.event_types(&refund_id.stream_id()).await;
        assert_eq!(count_of(&types, "RefundAnomalyRecorded"), 1, "{types:?}");
        let r = h.refund(refund_id).await.expect("refund");
        assert_eq!(r.status, RefundStatus::Submitted);
        assert_eq!(
            r.anomalies[0].kind,
            ledger_core::refund::RefundAnomalyKind::UnreadableAnswer
        );
    }

    pub async fn a_null_destination_is_one_anomaly_and_no_retry_loop(make: &impl MakeHarness) {
        let mut config = test_config();
        config.reconcile.enabled = true;
        let h = make.make(config).await;
        h.fake
            .inject_fault(Endpoint::CreateTransfer, Fault::SucceedThenStatus(500), 1);
        let order_id = h.paid_order("tr-null-dest", &ONE_LINE).await;
        let made = h.fake.transfers();
        h.fake
            .set_transfer_destination_null(&made[0].id)
            .expect("transfer at the fake");
        h.advance(MINUTE);
        h.run_until_idle().await;
        // Hours of workers and reconciler passes later: still one read.
        for _ in 0..3 {
            h.advance(Duration::from_secs(3_600));
            h.run_until_idle().await;
        }
        let t = h.transfer(order_id, "seller-a").await;
        assert_eq!(t.status, TransferStatus::Indeterminate);
        let types = h.event_types(&t.transfer_id.stream_id()).await;
        assert_eq!(count_of(&types, "TransferAnomalyRecorded"), 1, "{types:?}");
        assert_eq!(
            t.anomalies[0],
            (
                ledger_core::transfer::TransferAnomalyKind::UnreadableAnswer,
                Some(made[0].id.clone())
            )
        );
        assert_eq!(h.counters().requests_to(Endpoint::ListTransfers), 1);
        assert_eq!(h.counters().requests_to(Endpoint::CreateTransfer), 1);
    }

    pub async fn reconciler_sweeps_indeterminate_payouts(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        h.fake
            .inject_fault(Endpoint::CreateTransfer, Fault::SucceedThenStatus(500), 1);
        let order_id = h.paid_order("sweep", &ONE_LINE).await;
        // The worker's row is lost (a crash, a wiped work table); only the
        // sweep is left to notice.
        h.advance(MINUTE);
        let young = h.reconcile().await;
        assert_eq!(
            young.transfers.looked_at, 0,
            "younger than the sweep's threshold"
        );
        h.advance(super::super::INDETERMINATE_SWEEP_AFTER);
        let swept = h.reconcile().await;
        assert_eq!(swept.transfers.actions.len(), 1, "{swept:#?}");
        let action = &swept.transfers.actions[0];
        assert_eq!(
            (action.from_status.as_str(), action.to_status.as_str()),
            ("indeterminate", "completed")
        );
        assert_eq!(
            action.psp_status.as_deref(),
            Some(h.fake.transfers()[0].id.as_str())
        );
        assert_eq!(
            h.transfer(order_id, "seller-a").await.status,
            TransferStatus::Completed
        );
        assert_eq!(h.counters().transfers_created, 1);
    }

    pub async fn provider_reconcile_catches_a_second_payout_and_verify_reports_it(
        make: &impl MakeHarness,
    ) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("double", &TWO_SELLERS).await;
        let t = h.transfer(order_id, "seller-a").await;
        let recorded = t.stripe_transfer_id.clone().expect("paid");
        // The double payout: the same share paid again under another key
        // (what a blind retry after Stripe pruned the key did).
        let mut again = payout_request(&h, order_id).await;
        again.attempt = 9;
        let second = h
            .stripe
            .create_transfer(&again)
            .await
            .expect("second payout");
        let wall = Utc::now();
        let (from, to) = (wall - TimeDelta::hours(1), wall + TimeDelta::hours(1));
        let report = h
            .managers
            .reconcile_provider(from, to, h.now())
            .await
            .expect("provider sweep");
        assert_eq!(report.transfers_listed, 3);
        assert_eq!(report.matched, 2, "{report:#?}");
        assert_eq!(report.anomalies.len(), 1, "{report:#?}");
        let anomaly = &report.anomalies[0];
        assert_eq!(anomaly.provider_id, second.id.to_string());
        assert_eq!(anomaly.kind, "duplicate_at_provider");
        assert_eq!(
            anomaly.stream_id,
            Some(t.transfer_id.stream_id().to_string())
        );
        assert!(anomaly.new);
        assert!(
            anomaly.detail.contains(recorded.as_str()),
            "{}",
            anomaly.detail
        );
        // A second sweep finds it again but records nothing new.
        let again = h
            .managers
            .reconcile_provider(from, to, h.now())
            .await
            .expect("provider sweep");
        assert!(!again.anomalies[0].new);
        let types = h.event_types(&t.transfer_id.stream_id()).await;
        assert_eq!(count_of(&types, "TransferAnomalyRecorded"), 1);
        // The ledger's own books still balance, but verify reports the
        // disagreement with the provider.
        let verified = verify(h.events.clone(), VerifyOptions::default(), &[], &|_| {})
            .await
            .expect("verify");
        assert_eq!(verified.findings_total, 1, "{:#?}", verified.findings);
        assert_eq!(
            verified.findings[0].kind,
            crate::verify::FindingKind::ProviderMismatch
        );
        assert!(verified.findings[0].detail.contains(second.id.as_str()));
        // The operator reverses the second payout at Stripe and says so:
        // verify is clean again and the sweep no longer lists it.
        let kind = ledger_core::transfer::TransferAnomalyKind::DuplicateAtProvider;
        let resolved = h
            .managers
            .resolve_transfer_anomaly(
                t.transfer_id,
                kind,
                Some(second.id.to_string()),
                "second payout reversed at Stripe",
                h.now(),
            )
            .await
            .expect("resolve");
        assert!(resolved.newly_resolved);
        assert_verify_clean(&h).await;
        let after = h
            .managers
            .reconcile_provider(from, to, h.now())
            .await
            .expect("provider sweep");
        assert!(after.is_clean(), "{after:#?}");
        assert_eq!(after.matched, 3);
        // Resolving something never recorded is refused.
        let refused = h
            .managers
            .resolve_transfer_anomaly(
                t.transfer_id,
                kind,
                Some("tr_never_seen".to_owned()),
                "nothing",
                h.now(),
            )
            .await;
        assert!(
            matches!(refused, Err(ManagerError::Rejected { .. })),
            "{refused:?}"
        );
    }

    // -------------------------------------------------------------- payment

    pub async fn payment_crash_after_psp_create_recovers_without_second_payment(
        make: &impl MakeHarness,
    ) {
        let h = make.make(test_config()).await;
        let order_id = h.place_order("pay-crash", &ONE_LINE).await;
        // The worker created the payment, then died before recording it.
        h.hyperswitch
            .create_payment(&CreatePayment {
                payment_id: payment_id_for(order_id),
                amount: Amount::new(1_000, eur()),
                customer_id: None,
                description: None,
                metadata: Default::default(),
            })
            .await
            .expect("payment at the PSP");
        h.run_until_idle().await;
        let order = h.order(order_id).await;
        assert_eq!(order.status, OrderStatus::Completed);
        assert_eq!(order.payment_id, Some(payment_id_for(order_id)));
        let c = h.counters();
        assert_eq!(c.payments_created, 1);
        // Ours, then the worker's (answered HE_01, then a GET).
        assert_eq!(c.requests_to(Endpoint::CreatePayment), 2);
        assert_eq!(c.requests_to(Endpoint::GetPayment), 1);
        let types = h.event_types(&order_id.stream_id()).await;
        assert_eq!(types.iter().filter(|t| *t == "PaymentInitiated").count(), 1);
    }

    pub async fn payment_inline_start_leaves_nothing_for_the_worker(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.place_order("pay-inline", &ONE_LINE).await;
        let order = h.order(order_id).await;
        let secret = h
            .managers
            .start_payment_inline(&order, PSP_TIMEOUT)
            .await
            .expect("client secret within the deadline");
        assert!(secret.starts_with(payment_id_for(order_id).as_str()));
        h.run_until_idle().await;
        assert_eq!(h.counters().requests_to(Endpoint::CreatePayment), 1);
        assert_eq!(h.order(order_id).await.status, OrderStatus::Completed);
    }

    pub async fn payment_worker_leaves_a_new_order_to_the_api_for_its_grace(
        make: &impl MakeHarness,
    ) {
        let h = make.make(test_config()).await;
        let order_id = h.record_order("pay-grace", &ONE_LINE).await;
        h.run_until_idle().await;
        assert_eq!(h.counters().requests_to(Endpoint::CreatePayment), 0);
        assert_eq!(h.order(order_id).await.status, OrderStatus::Created);
        h.advance(crate::managers::PAYMENT_START_GRACE);
        h.run_until_idle().await;
        assert_eq!(h.counters().requests_to(Endpoint::CreatePayment), 1);
        assert_eq!(h.order(order_id).await.status, OrderStatus::Completed);
    }

    pub async fn payment_refused_cancels_the_order(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        h.fake.inject_fault(
            Endpoint::CreatePayment,
            Fault::Canned {
                status: 400,
                body: r#"{"error":{"type":"invalid_request","message":"Invalid value provided: currency","code":"IR_07"}}"#.to_owned(),
            },
            1,
        );
        let order_id = h.place_order("pay-refused", &ONE_LINE).await;
        h.run_until_idle().await;
        assert_eq!(h.order(order_id).await.status, OrderStatus::Cancelled);
        assert_eq!(h.counters().payments_created, 0);
        assert!(h.pending_work(WorkerKind::Payment).await.is_empty());
    }

    // --------------------------------------------------------------- refund

    pub async fn refund_phase1_crash_recovered(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("ref-p1", &ONE_LINE).await;
        let refund_id = h.reserve_refund(order_id, "r1", None).await;
        // Within the grace the API may still be writing the stream.
        h.run_until_idle().await;
        assert!(h.refund(refund_id).await.is_none());
        h.advance(MINUTE);
        h.run_until_idle().await;
        let r = h.refund(refund_id).await.expect("refund stream recovered");
        assert_eq!(r.status, RefundStatus::Succeeded);
        assert_eq!(r.reason, "buyer asked");
        assert_eq!(h.order(order_id).await.status, OrderStatus::Refunded);
        assert_eq!(h.counters().refunds_created, 1);
    }

    pub async fn refund_phase2_crash_recovered(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("ref-p2", &ONE_LINE).await;
        let refund_id = h.request_refund(order_id, "r1", None).await;
        let order = h.order(order_id).await;
        // The worker created the refund, then died before `Submit`.
        h.hyperswitch
            .create_refund(&CreateRefund {
                refund_id: ledger_core::ids::psp_refund_id_for(refund_id),
                payment_id: order.payment_id.clone().expect("payment id"),
                amount: Amount::new(order.total_minor, eur()),
                reason_code: ledger_core::refund::RefundReasonCode::RequestedByCustomer,
                reason: None,
            })
            .await
            .expect("refund at the PSP");
        h.run_until_idle().await;
        let r = h.refund(refund_id).await.expect("refund");
        assert_eq!(r.status, RefundStatus::Succeeded);
        assert_eq!(h.order(order_id).await.status, OrderStatus::Refunded);
        let c = h.counters();
        assert_eq!(c.refunds_created, 1);
        assert_eq!(c.requests_to(Endpoint::CreateRefund), 2);
    }

    pub async fn refund_refused_by_psp_releases_lines(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("ref-refused", &TWO_SELLERS).await;
        h.fake.inject_fault(
            Endpoint::CreateRefund,
            Fault::Canned {
                status: 400,
                body: r#"{"error":{"type":"invalid_request","message":"The refund amount exceeds the amount captured","code":"IR_13"}}"#.to_owned(),
            },
            1,
        );
        let refund_id = h.request_refund(order_id, "r1", Some(&["p3"])).await;
        h.run_until_idle().await;
        let r = h.refund(refund_id).await.expect("refund");
        assert_eq!(r.status, RefundStatus::Failed);
        assert!(r.error_message.expect("message").contains("IR_13"));
        let order = h.order(order_id).await;
        assert_eq!(order.status, OrderStatus::Completed);
        assert!(order.pending_refund.is_none());
        // Nothing was taken back from the seller.
        assert_eq!(
            h.transfer(order_id, "seller-b").await.status,
            TransferStatus::Completed
        );
        assert_eq!(h.counters().reversals_created, 0);
    }

    // ------------------------------------------------------------ lifecycle

    /// A refund of lines whose seller was never paid (Stripe refusing
    /// payouts) reduces the unpaid transfer, or cancels it when nothing is
    /// left owed, instead of reversing money that never moved.
    pub async fn refund_of_an_unpaid_transfer_reduces_it_instead_of_reversing(
        make: &impl MakeHarness,
    ) {
        let h = make.make(test_config()).await;
        h.fake.set_stripe_balance(Some(0));
        let order_id = h.paid_order("reduce", &TWO_SELLERS).await;
        h.request_refund(order_id, "r1", Some(&["p1", "p3"])).await;
        h.run_until_idle().await;
        let a = h.transfer(order_id, "seller-a").await;
        let b = h.transfer(order_id, "seller-b").await;
        // A keeps p2's share; B's only line went back, so nothing is owed.
        assert_eq!(a.amount.minor, 1_800);
        assert_eq!(b.status, TransferStatus::Cancelled);
        h.fake.set_stripe_balance(None);
        h.advance(MINUTE);
        h.run_until_idle().await;
        let a = h.transfer(order_id, "seller-a").await;
        assert_eq!(a.status, TransferStatus::Completed);
        assert_eq!(a.transferred_minor, 1_800);
        assert_eq!(h.counters().transfers_created, 1);
        assert_eq!(h.counters().reversals_created, 0);
        let refund = h
            .refund(refund_id_from_idempotency_key(order_id, "r1"))
            .await
            .expect("refund stream");
        assert_eq!(refund.amount_minor, 2_000);
    }

    pub async fn full_lifecycle_moves_money_exactly_once(make: &impl MakeHarness) {
        let h = make.make(test_config()).await;
        let order_id = h.paid_order("life", &TWO_SELLERS).await;
        let order = h.order(order_id).await;
        assert_eq!(order.status, OrderStatus::Completed);
        let a = h.transfer(order_id, "seller-a").await;
        let b = h.transfer(order_id, "seller-b").await;
        assert_eq!(
            (a.status, a.transferred_minor),
            (TransferStatus::Completed, 2_700)
        );
        assert_eq!(
            (b.status, b.transferred_minor),
            (TransferStatus::Completed, 900)
        );

        // Refund one of seller A's lines: A gives back that line's share.
        h.request_refund(order_id, "r1", Some(&["p1"])).await;
        h.run_until_idle().await;
        let order = h.order(order_id).await;
        assert_eq!(order.status, OrderStatus::PartiallyRefunded);
        assert_eq!(order.refunded_minor, 1_000);
        let a = h.transfer(order_id, "seller-a").await;
        assert_eq!(
            (a.status, a.reversed_minor),
            (TransferStatus::PartiallyReversed, 900)
        );
        assert_eq!(
            h.transfer(order_id, "seller-b").await.status,
            TransferStatus::Completed
        );

        // Refund the rest: both sellers give back everything left.
        h.request_refund(order_id, "r2", None).await;
        h.run_until_idle().await;
        let order = h.order(order_id).await;
        assert_eq!(order.status, OrderStatus::Refunded);
        assert_eq!(order.refunded_minor, 4_000);
        for (seller, paid) in [("seller-a", 2_700), ("seller-b", 900)] {
            let t = h.transfer(order_id, seller).await;
            assert_eq!(t.status, TransferStatus::Reversed, "{seller}");
            assert_eq!(t.reversed_minor, paid, "{seller}");
            let at_stripe = h
                .fake
                .transfer(t.stripe_transfer_id.expect("stripe id").as_str())
                .expect("at stripe");
            assert_eq!(at_stripe.amount_minor, paid);
            assert_eq!(at_stripe.amount_reversed_minor, paid);
        }

        // Every money movement happened exactly once.
        let c = h.counters();
        assert_eq!(c.payments_created, 1);
        assert_eq!(c.refunds_created, 2);
        assert_eq!(c.transfers_created, 2);
        assert_eq!(c.reversals_created, 3);
        assert_eq!(c.stripe_posts_without_idempotency_key, 0);
        let posts = |c: &Counters| {
            [
                Endpoint::CreatePayment,
                Endpoint::CreateRefund,
                Endpoint::CreateTransfer,
                Endpoint::CreateReversal,
            ]
            .map(|e| c.requests_to(e))
        };
        assert_eq!(posts(&c), [1, 2, 2, 3]);

        // Much later, everything replays to nothing new.
        h.advance(2 * 60 * MINUTE);
        h.run_until_idle().await;
        let report = h.reconcile().await;
        assert_eq!(report.changed(), 0);
        assert_eq!(posts(&h.counters()), [1, 2, 2, 3]);

        // The books balance and every seller payable of the order is zero.
        let verified = verify(h.events.clone(), VerifyOptions::default(), &[], &|_| {})
            .await
            .expect("verify");
        assert!(verified.is_clean(), "{verified:#?}");
    }
}
