//! Realistic, deterministic event histories for benches, tests and demos.
//!
//! **Guarantees:**
//! - Every event is one the real core decided: each step runs a command
//!   through `Decider::decide` against the state folded so far and `evolve`s
//!   the result, exactly as `handle::execute` would. A command the core
//!   rejects simply appends nothing.
//! - The same `(seed, orders)` always yields the same parts, byte for byte
//!   (seeded `StdRng`, a simulated clock, ids derived from the seed).
//! - Parts are in a valid append order: per stream, versions ascend and each
//!   part carries the `ExpectedVersion` the stream has when it is written
//!   ([`write_history`] writes them with `append_many` in chunks).
//!
//! Orders run in an interleaved window of [`ORDERS_IN_FLIGHT_MAX`] scenarios,
//! each advancing one command per step: placement, payment (success, failure,
//! cancellation, amount mismatch and conflicting-status anomalies), one payout
//! per seller (some fail and retry, some fail for good and are retried by an
//! operator or left), refunds of some lines or whole orders (succeeded, failed,
//! orphaned and released), and reversals of paid-out transfers (reversed,
//! partially reversed, already reversed, retried, reversal failed) or
//! reductions of unpaid ones.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use ledger_core::events::AnyEvent;
use ledger_core::ids::{
    BuyerId, OrderId, ProductId, RefundId, SellerAccount, SellerId, StreamId, StripeReversalId,
    StripeTransferId, command_id_from_cause, order_id_from_idempotency_key, payment_id_for,
    psp_refund_id_for, refund_id_from_idempotency_key, transfer_id,
};
use ledger_core::order::{LineInput, LineRefund, Order, OrderCommand, OrderEvent, OrderState};
use ledger_core::psp::{PaymentStatus, RefundPspStatus};
use ledger_core::refund::{Refund, RefundCommand, RefundLine, RefundState};
use ledger_core::transfer::{
    RetryPolicy, SellerTransfer, TransferCommand, TransferState, TransferStatus,
};
use ledger_core::{Amount, Currency, Decider, ExpectedVersion, FeeBps, Metadata, Source};
use ledger_store::handle::{CommandContext, to_new_events};
use ledger_store::{EVENTS_PER_BATCH_MAX, EventStore, StoreError, StreamAppend};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// Orders whose lifecycles interleave at any moment. Enough to mix streams
/// the way a busy day does, small enough to keep the generator's memory flat.
pub const ORDERS_IN_FLIGHT_MAX: usize = 64;
/// Sellers in the marketplace the generator draws from.
pub const SELLERS: u32 = 40;
/// Distinct products each seller offers.
const PRODUCTS_PER_SELLER: u32 = 25;
/// Lines per generated order (1..=this).
const ORDER_LINES_GENERATED_MAX: u32 = 4;
/// Distinct buyers.
const BUYERS: u32 = 5_000;
/// Events per generated order, on average (measured over many seeds); used to
/// turn "about N events" into a number of orders.
pub const EVENTS_PER_ORDER_APPROX: u64 = 10;
/// Simulated seconds between two steps (1..=this).
const STEP_SECONDS_MAX: i64 = 30;
/// Retry policy of the simulated payout and reversal workers.
const POLICY: RetryPolicy = RetryPolicy {
    base: Duration::from_secs(60),
    max: Duration::from_secs(3_600),
    max_retries: 3,
};

/// Where the simulated clock starts.
pub fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// The number of orders that yields about `events` events.
pub fn orders_for_events(events: u64) -> u32 {
    u32::try_from(events.div_ceil(EVENTS_PER_ORDER_APPROX).max(1)).unwrap_or(u32::MAX)
}

/// A deterministic history of `orders` orders and everything that follows
/// from them, in append order.
pub fn generate(seed: u64, orders: u32) -> Vec<StreamAppend> {
    let mut sim = Sim {
        rng: StdRng::seed_from_u64(seed),
        seed,
        clock: epoch(),
        commands: 0,
        parts: Vec::new(),
    };
    let mut active: Vec<Scenario> = Vec::with_capacity(ORDERS_IN_FLIGHT_MAX);
    let mut started: u32 = 0;
    while started < orders || !active.is_empty() {
        if started < orders && active.len() < ORDERS_IN_FLIGHT_MAX {
            active.push(Scenario::new(&mut sim, started));
            started += 1;
            continue;
        }
        let i = sim.rng.random_range(0..active.len());
        if !active[i].advance(&mut sim) {
            active.swap_remove(i);
        }
    }
    sim.parts
}

/// Writes `parts` with `append_many`, at most `chunk` events per transaction
/// (clamped to `1..=EVENTS_PER_BATCH_MAX`). Parts of one stream inside a chunk
/// are merged into one append (keeping the first part's expected version),
/// which is the same history in a valid interleaving. `progress` is called
/// with the events written so far after each chunk. Returns the events
/// written.
pub async fn write_history(
    store: &dyn EventStore,
    parts: &[StreamAppend],
    chunk: usize,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, StoreError> {
    let chunk = chunk.clamp(1, EVENTS_PER_BATCH_MAX);
    let mut written: u64 = 0;
    let mut batch: Vec<StreamAppend> = Vec::new();
    let mut index: HashMap<StreamId, usize> = HashMap::new();
    let mut in_batch: usize = 0;
    for part in parts {
        let merged_len = index
            .get(&part.stream)
            .map_or(0, |&i| batch[i].events.len());
        let too_big = in_batch + part.events.len() > chunk
            || merged_len + part.events.len() > ledger_core::envelope::EVENTS_PER_APPEND_MAX;
        if too_big && !batch.is_empty() {
            store.append_many(&batch).await?;
            written += in_batch as u64;
            progress(written);
            batch.clear();
            index.clear();
            in_batch = 0;
        }
        match index.get(&part.stream) {
            Some(&i) => batch[i].events.extend(part.events.iter().cloned()),
            None => {
                index.insert(part.stream.clone(), batch.len());
                batch.push(part.clone());
            }
        }
        in_batch += part.events.len();
    }
    if !batch.is_empty() {
        store.append_many(&batch).await?;
        written += in_batch as u64;
        progress(written);
    }
    Ok(written)
}

/// Decodes the events of generated parts (tests and diagnostics).
pub fn decoded(parts: &[StreamAppend]) -> Vec<(StreamId, AnyEvent)> {
    let mut out = Vec::new();
    for p in parts {
        for e in &p.events {
            if let Ok(ev) =
                ledger_core::decode_any(&p.stream, &e.event_type, e.schema_version, &e.payload)
            {
                out.push((p.stream.clone(), ev));
            }
        }
    }
    out
}

struct Sim {
    rng: StdRng,
    seed: u64,
    clock: DateTime<Utc>,
    commands: u64,
    parts: Vec<StreamAppend>,
}

/// One stream as the generator has folded it.
struct Slot<S> {
    stream: StreamId,
    state: S,
    version: u64,
}

impl<S: Default> Slot<S> {
    fn new(stream: StreamId) -> Self {
        Slot {
            stream,
            state: S::default(),
            version: 0,
        }
    }
}

impl Sim {
    fn pct(&mut self, percent: u32) -> bool {
        self.rng.random_range(0..100) < percent
    }

    /// Advances the simulated clock by one step and returns it.
    fn tick(&mut self) -> DateTime<Utc> {
        let secs = self.rng.random_range(1..=STEP_SECONDS_MAX);
        self.clock += chrono::Duration::seconds(secs);
        self.clock
    }

    /// Moves the clock to at least `due` (a retry waits for its backoff).
    fn wait_until(&mut self, due: Option<DateTime<Utc>>) -> DateTime<Utc> {
        let now = self.tick();
        match due {
            Some(d) if d > now => {
                self.clock = d;
                d
            }
            _ => now,
        }
    }

    /// Runs one command through the core and records what it decided.
    fn run<D: Decider>(
        &mut self,
        slot: &mut Slot<D::State>,
        correlation: Uuid,
        source: Source,
        command: &D::Command,
    ) -> Vec<D::Event> {
        let Ok(events) = D::decide(&slot.state, command) else {
            return Vec::new();
        };
        if events.is_empty() {
            return events;
        }
        let mut state = slot.state.clone();
        for e in &events {
            match D::evolve(state, e) {
                Ok(s) => state = s,
                // decide and evolve disagreeing is a core bug; write nothing.
                Err(_) => return Vec::new(),
            }
        }
        self.commands += 1;
        let ctx = CommandContext {
            command_id: command_id_from_cause(&format!("gen:{}:{}", self.seed, self.commands)),
            metadata: Metadata {
                correlation_id: correlation,
                causation_id: None,
                actor: "generator".to_owned(),
                source,
                request_id: None,
            },
        };
        let new_events = to_new_events::<D>(&ctx, &slot.stream, &events);
        let expected = match slot.version {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        slot.version += new_events.len() as u64;
        slot.state = state;
        self.parts.push(StreamAppend {
            stream: slot.stream.clone(),
            expected,
            events: new_events,
        });
        events
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayOutcome {
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefundOutcome {
    Succeeded,
    PspFailed,
    FailedBeforeSubmit,
    Orphaned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReversalOutcome {
    Reversed,
    AlreadyReversed,
    TransientThenReversed,
    Exhausted,
    Definitive,
}

/// One command-sized step of a scenario. Steps read the folded state when
/// they run, so amounts and ids always match what the core recorded.
#[derive(Debug, Clone)]
enum Step {
    Initiate,
    CancelBeforePayment,
    PayWrongAmount,
    Pay(PayOutcome),
    ConflictingFailure,
    Schedule(usize),
    TransferSucceeded(usize),
    TransferFailed {
        i: usize,
        definitive: bool,
    },
    TransferRetry {
        i: usize,
        by_operator: bool,
    },
    RequestRefund {
        whole: bool,
        outcome: RefundOutcome,
    },
    RefundPhase1,
    RefundSubmit,
    RefundOutcome(RefundOutcome),
    CompleteOrRelease,
    SettleSeller {
        i: usize,
        refund_id: RefundId,
        minor: i64,
    },
    Reversal {
        i: usize,
        outcome: ReversalOutcome,
    },
    ReversalTransient(usize),
    SecondRefund,
}

struct Scenario {
    order_id: OrderId,
    correlation: Uuid,
    order: Slot<OrderState>,
    /// One per seller, in the order of `PaymentSucceeded.sellers`.
    transfers: Vec<Slot<TransferState>>,
    refund: Option<(RefundId, Slot<RefundState>)>,
    refunds_started: u32,
    steps: VecDeque<Step>,
}

impl Scenario {
    fn new(sim: &mut Sim, n: u32) -> Scenario {
        let order_id = order_id_from_idempotency_key(&format!("gen-{}-order-{n}", sim.seed));
        let mut s = Scenario {
            order_id,
            correlation: command_id_from_cause(&format!("gen-{}-corr-{n}", sim.seed)),
            order: Slot::new(order_id.stream_id()),
            transfers: Vec::new(),
            refund: None,
            refunds_started: 0,
            steps: VecDeque::new(),
        };
        s.place(sim, n);
        if sim.pct(2) {
            s.steps.push_back(Step::CancelBeforePayment);
            return s;
        }
        s.steps.push_back(Step::Initiate);
        if sim.pct(2) {
            s.steps.push_back(Step::PayWrongAmount);
        }
        let outcome = match sim.rng.random_range(0..100) {
            0..86 => PayOutcome::Succeeded,
            86..94 => PayOutcome::Failed,
            _ => PayOutcome::Cancelled,
        };
        s.steps.push_back(Step::Pay(outcome));
        s
    }

    fn place(&mut self, sim: &mut Sim, n: u32) {
        let currency = if sim.pct(20) { "EUR" } else { "USD" };
        let fee_bps = [500, 1_000, 1_500][sim.rng.random_range(0..3)];
        let wanted = sim.rng.random_range(1..=ORDER_LINES_GENERATED_MAX);
        let mut lines: Vec<LineInput> = Vec::new();
        while lines.len() < wanted as usize {
            let seller = sim.rng.random_range(0..SELLERS);
            let product = sim.rng.random_range(0..PRODUCTS_PER_SELLER);
            let product_id = format!("p-{seller}-{product}");
            if lines.iter().any(|l| l.product_id.as_str() == product_id) {
                continue;
            }
            let (Ok(product_id), Ok(seller_id), Ok(seller_account)) = (
                ProductId::new(product_id),
                SellerId::new(format!("seller-{seller}")),
                SellerAccount::new(format!("acct_gen{seller}")),
            ) else {
                return;
            };
            let quantity = if sim.pct(85) {
                1
            } else {
                sim.rng.random_range(2..=3)
            };
            lines.push(LineInput {
                product_id,
                seller_id,
                seller_account,
                unit_amount_minor: sim.rng.random_range(99..=9_999),
                quantity,
            });
        }
        let (Ok(buyer_id), Ok(currency), Ok(fee_bps)) = (
            BuyerId::new(format!("buyer-{}", sim.rng.random_range(0..BUYERS))),
            Currency::parse(currency),
            FeeBps::new(fee_bps),
        ) else {
            return;
        };
        let now = sim.tick();
        let _ = n;
        sim.run::<Order>(
            &mut self.order,
            self.correlation,
            Source::Api,
            &OrderCommand::PlaceOrder {
                order_id: self.order_id,
                buyer_id,
                currency,
                lines,
                fee_bps,
                now,
            },
        );
    }

    /// Runs the next step; false when the scenario is over.
    fn advance(&mut self, sim: &mut Sim) -> bool {
        let Some(step) = self.steps.pop_front() else {
            return false;
        };
        self.run_step(sim, step);
        !self.steps.is_empty()
    }

    fn payment_status(&mut self, sim: &mut Sim, status: PaymentStatus, amount: Option<i64>) {
        let now = sim.tick();
        sim.run::<Order>(
            &mut self.order,
            self.correlation,
            Source::Webhook,
            &OrderCommand::ApplyPaymentStatus {
                payment_id: payment_id_for(self.order_id),
                status,
                amount_minor: amount,
                error_message: None,
                now,
            },
        );
    }

    fn total(&self) -> i64 {
        self.order.state.order.as_ref().map_or(0, |o| o.total_minor)
    }

    fn currency(&self) -> Option<Currency> {
        self.order.state.order.as_ref().map(|o| o.currency)
    }

    fn run_step(&mut self, sim: &mut Sim, step: Step) {
        let corr = self.correlation;
        match step {
            Step::Initiate => {
                let now = sim.tick();
                sim.run::<Order>(
                    &mut self.order,
                    corr,
                    Source::Worker,
                    &OrderCommand::InitiatePayment {
                        payment_id: payment_id_for(self.order_id),
                        now,
                    },
                );
            }
            Step::CancelBeforePayment => {
                let now = sim.tick();
                sim.run::<Order>(
                    &mut self.order,
                    corr,
                    Source::Api,
                    &OrderCommand::CancelOrder {
                        reason: "buyer abandoned the checkout".to_owned(),
                        now,
                    },
                );
            }
            Step::PayWrongAmount => {
                let wrong = self.total().saturating_add(1);
                self.payment_status(sim, PaymentStatus::PartiallyCaptured, Some(wrong));
            }
            Step::Pay(outcome) => {
                let total = self.total();
                let events = match outcome {
                    PayOutcome::Succeeded => {
                        let now = sim.tick();
                        sim.run::<Order>(
                            &mut self.order,
                            corr,
                            Source::Webhook,
                            &OrderCommand::ApplyPaymentStatus {
                                payment_id: payment_id_for(self.order_id),
                                status: PaymentStatus::Succeeded,
                                amount_minor: Some(total),
                                error_message: None,
                                now,
                            },
                        )
                    }
                    PayOutcome::Failed => {
                        self.payment_status(sim, PaymentStatus::Failed, None);
                        Vec::new()
                    }
                    PayOutcome::Cancelled => {
                        self.payment_status(sim, PaymentStatus::Cancelled, None);
                        Vec::new()
                    }
                };
                let Some(sellers) = events.iter().find_map(|e| match e {
                    OrderEvent::PaymentSucceeded { sellers, .. } => Some(sellers.clone()),
                    _ => None,
                }) else {
                    return;
                };
                if sim.pct(3) {
                    self.steps.push_back(Step::ConflictingFailure);
                }
                for (i, share) in sellers.iter().enumerate() {
                    let tid = transfer_id(self.order_id, &share.seller_id);
                    self.transfers.push(Slot::new(tid.stream_id()));
                    self.steps.push_back(Step::Schedule(i));
                }
                for i in 0..sellers.len() {
                    self.script_transfer(sim, i);
                }
                if sim.pct(25) {
                    self.push_refund(sim);
                }
            }
            Step::ConflictingFailure => self.payment_status(sim, PaymentStatus::Failed, None),
            Step::Schedule(i) => self.schedule(sim, i),
            Step::TransferSucceeded(i) => {
                let Some(t) = self.transfers.get_mut(i) else {
                    return;
                };
                let Some((amount, attempt, tid)) = t
                    .state
                    .transfer
                    .as_ref()
                    .map(|x| (x.amount, x.attempt, x.transfer_id))
                else {
                    return;
                };
                let Ok(stripe) = StripeTransferId::new(format!("tr_{}_{attempt}", tid.0.simple()))
                else {
                    return;
                };
                let now = sim.tick();
                sim.run::<SellerTransfer>(
                    t,
                    corr,
                    Source::Worker,
                    &TransferCommand::RecordSucceeded {
                        stripe_transfer_id: stripe,
                        amount,
                        now,
                    },
                );
            }
            Step::TransferFailed { i, definitive } => {
                let Some(t) = self.transfers.get_mut(i) else {
                    return;
                };
                let now = sim.tick();
                let error = if definitive {
                    "account_invalid"
                } else {
                    "stripe 503"
                };
                sim.run::<SellerTransfer>(
                    t,
                    corr,
                    Source::Worker,
                    &TransferCommand::RecordFailed {
                        error: error.to_owned(),
                        definitive,
                        policy: POLICY,
                        now,
                    },
                );
            }
            Step::TransferRetry { i, by_operator } => {
                let Some(t) = self.transfers.get_mut(i) else {
                    return;
                };
                let due = t.state.transfer.as_ref().and_then(|x| x.next_retry_at);
                let now = sim.wait_until(due);
                let source = if by_operator {
                    Source::Operator
                } else {
                    Source::Worker
                };
                sim.run::<SellerTransfer>(
                    t,
                    corr,
                    source,
                    &TransferCommand::Retry { now, by_operator },
                );
            }
            Step::RequestRefund { whole, outcome } => self.request_refund(sim, whole, outcome),
            Step::RefundPhase1 => self.refund_phase1(sim),
            Step::RefundSubmit => {
                let Some((refund_id, slot)) = self.refund.as_mut() else {
                    return;
                };
                let now = sim.tick();
                sim.run::<Refund>(
                    slot,
                    corr,
                    Source::Worker,
                    &RefundCommand::Submit {
                        psp_refund_id: psp_refund_id_for(*refund_id),
                        now,
                    },
                );
            }
            Step::RefundOutcome(outcome) => self.refund_outcome(sim, outcome),
            Step::CompleteOrRelease => self.complete_or_release(sim),
            Step::SettleSeller {
                i,
                refund_id,
                minor,
            } => self.settle_seller(sim, i, refund_id, minor),
            Step::Reversal { i, outcome } => self.reversal(sim, i, outcome),
            Step::ReversalTransient(i) => {
                let Some(t) = self.transfers.get_mut(i) else {
                    return;
                };
                let due = t.state.transfer.as_ref().and_then(|x| x.next_retry_at);
                let now = sim.wait_until(due);
                sim.run::<SellerTransfer>(
                    t,
                    corr,
                    Source::Worker,
                    &TransferCommand::RecordReversalFailed {
                        transient: true,
                        error: "stripe 503".to_owned(),
                        policy: POLICY,
                        now,
                    },
                );
            }
            Step::SecondRefund => self.push_refund(sim),
        }
    }

    fn schedule(&mut self, sim: &mut Sim, i: usize) {
        let Some(share) = self.order.state.order.as_ref().and_then(|o| {
            let lines: Vec<_> = o.lines.iter().map(|l| &l.line).collect();
            let mut sellers: Vec<(SellerId, SellerAccount, i64)> = Vec::new();
            for l in lines {
                match sellers.iter_mut().find(|s| s.0 == l.seller_id) {
                    Some(s) => s.2 = s.2.saturating_add(l.seller_minor),
                    None => sellers.push((
                        l.seller_id.clone(),
                        l.seller_account.clone(),
                        l.seller_minor,
                    )),
                }
            }
            sellers.get(i).cloned().map(|s| (s, o.currency))
        }) else {
            return;
        };
        let ((seller_id, destination, minor), currency) = share;
        let Some(t) = self.transfers.get_mut(i) else {
            return;
        };
        let now = sim.tick();
        sim.run::<SellerTransfer>(
            t,
            self.correlation,
            Source::Worker,
            &TransferCommand::Schedule {
                transfer_id: transfer_id(self.order_id, &seller_id),
                order_id: self.order_id,
                seller_id,
                destination,
                amount: Amount::new(minor, currency),
                now,
            },
        );
    }

    fn script_transfer(&mut self, sim: &mut Sim, i: usize) {
        let roll = sim.rng.random_range(0..100);
        if roll < 82 {
            self.steps.push_back(Step::TransferSucceeded(i));
        } else if roll < 92 {
            let definitive = sim.pct(50);
            self.steps.extend([
                Step::TransferFailed { i, definitive },
                Step::TransferRetry {
                    i,
                    by_operator: false,
                },
                Step::TransferSucceeded(i),
            ]);
        } else {
            for k in 0..POLICY.max_retries {
                self.steps.push_back(Step::TransferFailed {
                    i,
                    definitive: false,
                });
                if k + 1 < POLICY.max_retries {
                    self.steps.push_back(Step::TransferRetry {
                        i,
                        by_operator: false,
                    });
                }
            }
            if sim.pct(50) {
                self.steps.extend([
                    Step::TransferRetry {
                        i,
                        by_operator: true,
                    },
                    Step::TransferSucceeded(i),
                ]);
            }
        }
    }

    fn push_refund(&mut self, sim: &mut Sim) {
        let whole = self.refunds_started > 0 || sim.pct(50);
        let outcome = match sim.rng.random_range(0..100) {
            0..80 => RefundOutcome::Succeeded,
            80..92 => RefundOutcome::PspFailed,
            92..96 => RefundOutcome::FailedBeforeSubmit,
            _ => RefundOutcome::Orphaned,
        };
        self.steps.push_back(Step::RequestRefund { whole, outcome });
    }

    fn request_refund(&mut self, sim: &mut Sim, whole: bool, outcome: RefundOutcome) {
        let Some(o) = self.order.state.order.as_ref() else {
            return;
        };
        let open: Vec<ProductId> = o
            .lines
            .iter()
            .filter(|l| l.refund == LineRefund::None)
            .map(|l| l.line.product_id.clone())
            .collect();
        if open.is_empty() {
            return;
        }
        let product_ids = if whole {
            None
        } else {
            let keep: Vec<ProductId> = open.iter().filter(|_| sim.pct(50)).cloned().collect();
            Some(if keep.is_empty() {
                vec![open[0].clone()]
            } else {
                keep
            })
        };
        self.refunds_started += 1;
        let refund_id = refund_id_from_idempotency_key(
            self.order_id,
            &format!("gen-refund-{}", self.refunds_started),
        );
        let now = sim.tick();
        let events = sim.run::<Order>(
            &mut self.order,
            self.correlation,
            Source::Api,
            &OrderCommand::RequestRefund {
                refund_id,
                product_ids,
                reason: "buyer asked for a refund".to_owned(),
                reason_code: None,
                now,
            },
        );
        if events.is_empty() {
            return;
        }
        self.refund = Some((refund_id, Slot::new(refund_id.stream_id())));
        self.steps.push_back(Step::RefundPhase1);
        match outcome {
            RefundOutcome::Succeeded | RefundOutcome::PspFailed => {
                self.steps.push_back(Step::RefundSubmit)
            }
            RefundOutcome::FailedBeforeSubmit | RefundOutcome::Orphaned => {}
        }
        self.steps.push_back(Step::RefundOutcome(outcome));
        self.steps.push_back(Step::CompleteOrRelease);
    }

    fn refund_phase1(&mut self, sim: &mut Sim) {
        let Some((refund_id, slot)) = self.refund.as_mut() else {
            return;
        };
        let Some(p) = self
            .order
            .state
            .order
            .as_ref()
            .and_then(|o| o.pending_refund.as_ref().map(|p| (p, o)))
        else {
            return;
        };
        let (pending, o) = p;
        let Some(payment_id) = o.payment_id.clone() else {
            return;
        };
        let command = RefundCommand::Request {
            refund_id: *refund_id,
            order_id: o.order_id,
            payment_id,
            amount_minor: pending.amount_minor,
            currency: o.currency,
            lines: pending.lines.clone(),
            reason: "buyer asked for a refund".to_owned(),
            reason_code: None,
            now: sim.tick(),
        };
        sim.run::<Refund>(slot, self.correlation, Source::Api, &command);
    }

    fn refund_outcome(&mut self, sim: &mut Sim, outcome: RefundOutcome) {
        let Some((refund_id, slot)) = self.refund.as_mut() else {
            return;
        };
        let now = sim.tick();
        let psp = Some(psp_refund_id_for(*refund_id));
        let command = match outcome {
            RefundOutcome::Succeeded => RefundCommand::ApplyPspStatus {
                psp_refund_id: psp,
                status: RefundPspStatus::Succeeded,
                error_message: None,
                now,
            },
            RefundOutcome::PspFailed | RefundOutcome::FailedBeforeSubmit => {
                RefundCommand::ApplyPspStatus {
                    psp_refund_id: psp,
                    status: RefundPspStatus::Failed,
                    error_message: Some("insufficient_funds".to_owned()),
                    now,
                }
            }
            RefundOutcome::Orphaned => RefundCommand::MarkOrphaned { now },
        };
        let source = match outcome {
            RefundOutcome::Orphaned => Source::Reconciler,
            _ => Source::Webhook,
        };
        sim.run::<Refund>(slot, self.correlation, source, &command);
    }

    fn complete_or_release(&mut self, sim: &mut Sim) {
        let Some((refund_id, slot)) = self.refund.as_ref() else {
            return;
        };
        let refund_id = *refund_id;
        let succeeded = slot
            .state
            .status()
            .is_some_and(|s| s == ledger_core::refund::RefundStatus::Succeeded);
        let lines: Vec<RefundLine> = slot
            .state
            .refund
            .as_ref()
            .map(|r| r.lines.clone())
            .unwrap_or_default();
        let now = sim.tick();
        let command = if succeeded {
            OrderCommand::CompleteRefund { refund_id, now }
        } else {
            OrderCommand::ReleaseRefund {
                refund_id,
                reason: "the PSP refund failed".to_owned(),
                now,
            }
        };
        sim.run::<Order>(&mut self.order, self.correlation, Source::Worker, &command);
        self.refund = None;
        if !succeeded {
            return;
        }
        // Each seller of the refunded lines gets their payout reversed (paid)
        // or reduced (not paid yet).
        let mut per_seller: Vec<(SellerId, i64)> = Vec::new();
        for l in &lines {
            match per_seller.iter_mut().find(|s| s.0 == l.seller_id) {
                Some(s) => s.1 = s.1.saturating_add(l.seller_minor),
                None => per_seller.push((l.seller_id.clone(), l.seller_minor)),
            }
        }
        for (seller, minor) in per_seller {
            let Some(i) = self.transfers.iter().position(|t| {
                t.state
                    .transfer
                    .as_ref()
                    .is_some_and(|x| x.seller_id == seller)
            }) else {
                continue;
            };
            if minor > 0 {
                self.steps.push_back(Step::SettleSeller {
                    i,
                    refund_id,
                    minor,
                });
            }
        }
        let partially = self
            .order
            .state
            .status()
            .is_some_and(|s| s == ledger_core::order::OrderStatus::PartiallyRefunded);
        if partially && sim.pct(30) {
            self.steps.push_back(Step::SecondRefund);
        }
    }

    fn settle_seller(&mut self, sim: &mut Sim, i: usize, refund_id: RefundId, minor: i64) {
        let Some(currency) = self.currency() else {
            return;
        };
        let Some(t) = self.transfers.get_mut(i) else {
            return;
        };
        let Some(status) = t.state.status() else {
            return;
        };
        let amount = Amount::new(minor, currency);
        let now = sim.tick();
        match status {
            TransferStatus::Completed | TransferStatus::PartiallyReversed => {
                let events = sim.run::<SellerTransfer>(
                    t,
                    self.correlation,
                    Source::Worker,
                    &TransferCommand::RequestReversal {
                        refund_id,
                        amount,
                        now,
                    },
                );
                if events.is_empty() {
                    return;
                }
                let outcome = match sim.rng.random_range(0..100) {
                    0..70 => ReversalOutcome::Reversed,
                    70..80 => ReversalOutcome::AlreadyReversed,
                    80..92 => ReversalOutcome::TransientThenReversed,
                    92..96 => ReversalOutcome::Exhausted,
                    _ => ReversalOutcome::Definitive,
                };
                match outcome {
                    ReversalOutcome::TransientThenReversed => {
                        self.steps.push_front(Step::Reversal {
                            i,
                            outcome: ReversalOutcome::Reversed,
                        });
                        self.steps.push_front(Step::ReversalTransient(i));
                    }
                    ReversalOutcome::Exhausted => {
                        for _ in 0..POLICY.max_retries {
                            self.steps.push_front(Step::ReversalTransient(i));
                        }
                    }
                    other => self.steps.push_front(Step::Reversal { i, outcome: other }),
                }
            }
            TransferStatus::Pending
            | TransferStatus::Failed
            | TransferStatus::PermanentlyFailed => {
                let by = t
                    .state
                    .transfer
                    .as_ref()
                    .map_or(amount, |x| Amount::new(minor.min(x.amount.minor), currency));
                sim.run::<SellerTransfer>(
                    t,
                    self.correlation,
                    Source::Worker,
                    &TransferCommand::Reduce { by, refund_id, now },
                );
            }
            _ => {}
        }
    }

    fn reversal(&mut self, sim: &mut Sim, i: usize, outcome: ReversalOutcome) {
        let Some(t) = self.transfers.get_mut(i) else {
            return;
        };
        let Some(x) = t.state.transfer.as_ref() else {
            return;
        };
        let Some(pending) = x.pending_reversal.as_ref() else {
            return;
        };
        let currency = x.amount.currency;
        let pending_minor = pending.amount_minor;
        let reversed_minor = x.reversed_minor;
        let n = x.stripe_reversal_ids.len();
        let tid = x.transfer_id;
        let now = sim.tick();
        let command = match outcome {
            ReversalOutcome::Reversed | ReversalOutcome::TransientThenReversed => {
                let Ok(id) = StripeReversalId::new(format!("trr_{}_{n}", tid.0.simple())) else {
                    return;
                };
                TransferCommand::RecordReversalSucceeded {
                    stripe_reversal_id: id,
                    reversed_amount: Amount::new(pending_minor, currency),
                    now,
                }
            }
            ReversalOutcome::AlreadyReversed => TransferCommand::RecordAlreadyReversed {
                amount_reversed: Amount::new(
                    reversed_minor.saturating_add(pending_minor),
                    currency,
                ),
                now,
            },
            ReversalOutcome::Exhausted | ReversalOutcome::Definitive => {
                TransferCommand::RecordReversalFailed {
                    transient: false,
                    error: "transfer not found".to_owned(),
                    policy: POLICY,
                    now,
                }
            }
        };
        sim.run::<SellerTransfer>(t, self.correlation, Source::Worker, &command);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn same_seed_same_history_and_versions_ascend() {
        let a = generate(7, 200);
        let b = generate(7, 200);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.stream, y.stream);
            assert_eq!(x.events, y.events);
        }
        let mut versions: HashMap<StreamId, u64> = HashMap::new();
        for p in &a {
            let v = versions.entry(p.stream.clone()).or_default();
            let expected = match *v {
                0 => ExpectedVersion::NoStream,
                n => ExpectedVersion::Exact(n),
            };
            assert_eq!(p.expected, expected, "{}", p.stream);
            *v += p.events.len() as u64;
        }
        assert_ne!(generate(8, 200).len(), 0);
    }

    #[test]
    fn covers_all_stream_kinds_and_most_event_types() {
        let parts = generate(1, 3_000);
        let types: BTreeSet<String> = parts
            .iter()
            .flat_map(|p| p.events.iter().map(|e| e.event_type.clone()))
            .collect();
        for t in [
            "OrderPlaced",
            "PaymentInitiated",
            "PaymentSucceeded",
            "PaymentFailed",
            "PaymentCancelled",
            "OrderCancelled",
            "PaymentAnomalyRecorded",
            "RefundRequested",
            "RefundCompleted",
            "RefundReleased",
            "RefundSubmitted",
            "RefundSucceeded",
            "RefundFailed",
            "TransferScheduled",
            "TransferCompleted",
            "TransferFailed",
            "TransferPermanentlyFailed",
            "TransferRetried",
            "TransferReduced",
            "TransferCancelled",
            "TransferReversalRequested",
            "TransferReversed",
            "TransferAlreadyReversed",
            "TransferReversalRetryScheduled",
            "TransferReversalFailed",
        ] {
            assert!(types.contains(t), "no {t} in {types:?}");
        }
        let events: u64 = parts.iter().map(|p| p.events.len() as u64).sum();
        let per_order = events / 3_000;
        assert!(
            per_order.abs_diff(EVENTS_PER_ORDER_APPROX) <= 2,
            "{events} events for 3000 orders"
        );
    }
}
