//! Properties over random command sequences for the three deciders, plus
//! cross-stream bookkeeping and no-panic properties.
//!
//! For every step that produces events:
//! - each event moves the status only along the allowed-transition table;
//! - re-deciding the same command on the new state yields zero events;
//! - every event survives encode → decode → encode byte-exactly, also
//!   through `decode_any`;
//! - every journal entry from `postings` balances;
//! - the aggregate's money invariants hold (refunded ≤ captured,
//!   reversed ≤ transferred, …);
//! - folding the whole history (twice) gives the state reached step by step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use ledger_core::codec::{self, EventSet};
use ledger_core::decider::Decider;
use ledger_core::events::{AnyEvent, decode_any};
use ledger_core::ids::{
    EventId, PaymentId, PspRefundId, StreamId, StripeReversalId, StripeTransferId, payment_id_for,
    transfer_id,
};
use ledger_core::money::{Amount, FeeBps};
use ledger_core::order::{
    LineInput, LineRefund, Order, OrderCommand, OrderEvent, OrderState, OrderStatus, SellerShare,
};
use ledger_core::postings::{Side, postings};
use ledger_core::psp::{PaymentStatus, RefundPspStatus};
use ledger_core::refund::{
    Refund, RefundCommand, RefundEvent, RefundLine, RefundReasonCode, RefundState, RefundStatus,
};
use ledger_core::transfer::{
    RetryPolicy, SellerTransfer, TransferCommand, TransferEvent, TransferState, TransferStatus,
};
use proptest::prelude::*;
use uuid::Uuid;

/// Sequences per decider. Each runs up to `STEPS_MAX` commands, so a few
/// hundred thousand decisions in all; the file stays well under 20 s in debug.
const CASES: u32 = 2_000;
const STEPS_MAX: usize = 30;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// The generic runner.

struct Rules<D: Decider> {
    stream: StreamId,
    status: fn(&D::State) -> Option<&'static str>,
    /// `(from, to)` pairs; `None` is "no stream yet". Staying put is allowed.
    allowed: &'static [(Option<&'static str>, &'static str)],
    invariants: fn(&D::State),
    any: fn(D::Event) -> AnyEvent,
}

fn run<D: Decider>(rules: &Rules<D>, commands: &[D::Command])
where
    D::Event: Debug,
{
    let mut history: Vec<D::Event> = Vec::new();
    let mut state = D::State::default();
    let mut event_index: u128 = 0;
    for command in commands {
        let Ok(events) = D::decide(&state, command) else {
            // A typed rejection: fine, and the state must be untouched.
            continue;
        };
        for event in &events {
            let before = (rules.status)(&state);
            state = D::evolve(state, event)
                .unwrap_or_else(|e| panic!("{e}: {event:?} after {history:#?}"));
            let after = (rules.status)(&state);
            let moved_ok = before == after
                || after
                    .is_some_and(|to| rules.allowed.iter().any(|(f, t)| *f == before && *t == to));
            assert!(
                moved_ok,
                "{before:?} → {after:?} by {event:?}\nafter {command:?}"
            );
            (rules.invariants)(&state);
            round_trips_everywhere(&rules.stream, event, rules.any);
            event_index += 1;
            books_balanced(
                EventId(Uuid::from_u128(event_index)),
                &(rules.any)(event.clone()),
            );
            history.push(event.clone());
        }
        if !events.is_empty() {
            assert_eq!(
                D::decide(&state, command),
                Ok(vec![]),
                "repeating {command:?} was not a no-op after {history:#?}"
            );
        }
    }
    let folded = D::fold(&history).unwrap();
    assert_eq!(folded, state, "fold differs from step-by-step state");
    assert_eq!(
        D::fold(&history).unwrap(),
        folded,
        "fold is not deterministic"
    );
}

fn round_trips_everywhere<E: EventSet + PartialEq + Debug>(
    stream: &StreamId,
    event: &E,
    any: fn(E) -> AnyEvent,
) {
    round_trips(event);
    let encoded = codec::encode(event);
    let decoded = decode_any(
        stream,
        &encoded.event_type,
        encoded.schema_version,
        &encoded.payload,
    )
    .unwrap();
    assert_eq!(decoded, any(event.clone()));
    assert_eq!(decoded.encode(), encoded);
}

fn books_balanced(id: EventId, event: &AnyEvent) {
    let entries = postings(id, event);
    for entry in &entries {
        assert!(entry.is_balanced(), "unbalanced {entry:#?} from {event:#?}");
    }
    assert_eq!(
        postings(id, event),
        entries,
        "postings are not a function of the event"
    );
}

fn at(step: usize, extra_seconds: i64) -> DateTime<Utc> {
    secs(t(0), step as i64 * 60 + extra_seconds)
}

// ---------------------------------------------------------------------------
// Order.

#[derive(Debug, Clone)]
struct OrderCtx {
    lines: Vec<LineInput>,
    fee_bps: FeeBps,
}

fn order_ctx() -> impl Strategy<Value = OrderCtx> {
    (
        prop::collection::vec((1i64..=100_000, 1i64..=20, 1u32..=3), 1..=4),
        0i64..=10_000,
    )
        .prop_map(|(raw, bps)| OrderCtx {
            lines: raw
                .into_iter()
                .enumerate()
                .map(|(i, (unit, qty, s))| line(&format!("p{i}"), s, unit, qty))
                .collect(),
            fee_bps: FeeBps::new(bps).unwrap(),
        })
}

#[derive(Debug, Clone)]
enum OrderOp {
    Place,
    Initiate {
        foreign: bool,
    },
    Status {
        status: usize,
        amount: u8,
        foreign: bool,
    },
    Cancel,
    RequestRefund {
        n: u128,
        products: Option<Vec<usize>>,
    },
    Complete {
        n: u128,
    },
    Release {
        n: u128,
    },
}

fn order_op() -> impl Strategy<Value = OrderOp> {
    prop_oneof![
        1 => Just(OrderOp::Place),
        3 => prop::bool::weighted(0.1).prop_map(|foreign| OrderOp::Initiate { foreign }),
        8 => (payment_status_index(), prop_oneof![2 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)], prop::bool::weighted(0.05))
            .prop_map(|(status, amount, foreign)| OrderOp::Status { status, amount, foreign }),
        1 => Just(OrderOp::Cancel),
        5 => (0u128..3, prop::option::weighted(0.6, prop::collection::vec(0usize..6, 0..4)))
            .prop_map(|(n, products)| OrderOp::RequestRefund { n, products }),
        3 => (0u128..3).prop_map(|n| OrderOp::Complete { n }),
        2 => (0u128..3).prop_map(|n| OrderOp::Release { n }),
    ]
}

/// Index into `PaymentStatus::KNOWN` (one past the end is an unknown
/// status), biased to success so refund paths get exercised.
fn payment_status_index() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => Just(0usize), // succeeded
        1 => Just(10usize), // partially_captured
        4 => 0usize..=PaymentStatus::KNOWN.len(),
    ]
}

fn order_commands(ctx: &OrderCtx, ops: &[OrderOp]) -> Vec<OrderCommand> {
    let place = |now| OrderCommand::PlaceOrder {
        order_id: order_id(),
        buyer_id: buyer(),
        currency: usd(),
        lines: ctx.lines.clone(),
        fee_bps: ctx.fee_bps,
        now,
    };
    let total: i64 = ctx
        .lines
        .iter()
        .map(|l| l.unit_amount_minor * l.quantity)
        .sum();
    let foreign = || PaymentId::new("pay_foreign").unwrap();
    let mut commands = vec![place(at(0, 0))];
    for (i, op) in ops.iter().enumerate() {
        let now = at(i + 1, 0);
        commands.push(match op {
            OrderOp::Place => place(now),
            OrderOp::Initiate { foreign: f } => OrderCommand::InitiatePayment {
                payment_id: if *f {
                    foreign()
                } else {
                    payment_id_for(order_id())
                },
                now,
            },
            OrderOp::Status {
                status,
                amount,
                foreign: f,
            } => OrderCommand::ApplyPaymentStatus {
                payment_id: if *f {
                    foreign()
                } else {
                    payment_id_for(order_id())
                },
                status: PaymentStatus::KNOWN
                    .get(*status)
                    .cloned()
                    .unwrap_or_else(|| PaymentStatus::parse("brand_new_status")),
                amount_minor: match amount {
                    0 => None,
                    1 => Some(total),
                    _ => Some(total - 1),
                },
                error_message: Some("psp says so".into()),
                now,
            },
            OrderOp::Cancel => OrderCommand::CancelOrder {
                reason: "buyer left".into(),
                now,
            },
            OrderOp::RequestRefund { n, products } => OrderCommand::RequestRefund {
                refund_id: refund_id(*n),
                product_ids: products
                    .as_ref()
                    .map(|ps| ps.iter().map(|p| product(&format!("p{p}"))).collect()),
                reason: "r".into(),
                // Both absent and present codes go through the round trips.
                reason_code: [
                    None,
                    Some(RefundReasonCode::Duplicate),
                    Some(RefundReasonCode::Fraudulent),
                ][(*n % 3) as usize],
                now,
            },
            OrderOp::Complete { n } => OrderCommand::CompleteRefund {
                refund_id: refund_id(*n),
                now,
            },
            OrderOp::Release { n } => OrderCommand::ReleaseRefund {
                refund_id: refund_id(*n),
                reason: "failed".into(),
                now,
            },
        });
    }
    commands
}

fn order_status(s: &OrderState) -> Option<&'static str> {
    s.status().map(|s| s.as_str())
}

const ORDER_ALLOWED: &[(Option<&str>, &str)] = &[
    (None, "created"),
    (Some("created"), "pending"),
    (Some("created"), "cancelled"),
    (Some("pending"), "completed"),
    (Some("pending"), "failed"),
    (Some("pending"), "cancelled"),
    (Some("completed"), "refund_pending"),
    (Some("partially_refunded"), "refund_pending"),
    (Some("refund_pending"), "completed"),
    (Some("refund_pending"), "partially_refunded"),
    (Some("refund_pending"), "refunded"),
];

fn order_invariants(s: &OrderState) {
    let Some(o) = &s.order else { return };
    assert!(
        0 <= o.refunded_minor && o.refunded_minor <= o.captured_minor,
        "refunded > captured: {o:#?}"
    );
    assert!(o.captured_minor == 0 || o.captured_minor == o.total_minor);
    assert_eq!(o.status.is_paid(), o.captured_minor == o.total_minor);
    let refunded: i64 = o
        .lines
        .iter()
        .filter(|l| matches!(l.refund, LineRefund::Refunded(_)))
        .map(|l| l.line.total_minor)
        .sum();
    assert_eq!(refunded, o.refunded_minor);
    assert_eq!(
        o.pending_refund.is_some(),
        o.status == OrderStatus::RefundPending
    );
    for l in &o.lines {
        if let LineRefund::Reserved(r) = l.refund {
            assert_eq!(o.pending_refund.as_ref().map(|p| p.refund_id), Some(r));
        }
    }
    let all_refunded = o
        .lines
        .iter()
        .all(|l| matches!(l.refund, LineRefund::Refunded(_)));
    assert_eq!(o.status == OrderStatus::Refunded, all_refunded);
    let split_ok = o.lines.iter().all(|l| {
        l.line.fee_minor + l.line.seller_minor == l.line.total_minor
            && l.line.total_minor == l.line.unit_amount_minor * l.line.quantity
    });
    assert!(split_ok);
}

fn order_rules() -> Rules<Order> {
    Rules {
        stream: order_id().stream_id(),
        status: order_status,
        allowed: ORDER_ALLOWED,
        invariants: order_invariants,
        any: AnyEvent::Order,
    }
}

// ---------------------------------------------------------------------------
// Refund.

#[derive(Debug, Clone)]
struct RefundCtx {
    lines: Vec<RefundLine>,
}

fn refund_ctx() -> impl Strategy<Value = RefundCtx> {
    prop::collection::vec((1i64..=1_000_000, 0i64..=10_000, 1u32..=3), 1..=3).prop_map(|raw| {
        RefundCtx {
            lines: raw
                .into_iter()
                .enumerate()
                .map(|(i, (total, bps, s))| {
                    let fee = total * bps / 10_000;
                    RefundLine {
                        product_id: product(&format!("p{i}")),
                        seller_id: seller(s),
                        seller_account: acct(s),
                        total_minor: total,
                        fee_minor: fee,
                        seller_minor: total - fee,
                    }
                })
                .collect(),
        }
    })
}

#[derive(Debug, Clone)]
enum RefundOp {
    Request { other: bool },
    Submit { bad_id: bool },
    Psp { status: usize, id: u8, error: bool },
    Orphan,
}

fn refund_op() -> impl Strategy<Value = RefundOp> {
    prop_oneof![
        1 => any::<bool>().prop_map(|other| RefundOp::Request { other }),
        3 => prop::bool::weighted(0.1).prop_map(|bad_id| RefundOp::Submit { bad_id }),
        6 => (0usize..4, 0u8..3, any::<bool>()).prop_map(|(status, id, error)| RefundOp::Psp { status, id, error }),
        2 => Just(RefundOp::Orphan),
    ]
}

fn refund_commands(ctx: &RefundCtx, ops: &[RefundOp]) -> Vec<RefundCommand> {
    let request = |other: bool, now| RefundCommand::Request {
        refund_id: refund_id(if other { 2 } else { 1 }),
        order_id: order_id(),
        payment_id: payment_id_for(order_id()),
        amount_minor: ctx.lines.iter().map(|l| l.total_minor).sum(),
        currency: usd(),
        lines: ctx.lines.clone(),
        reason: "r".into(),
        reason_code: (!other).then_some(RefundReasonCode::RequestedByCustomer),
        now,
    };
    let good = ledger_core::ids::psp_refund_id_for(refund_id(1));
    let bad = PspRefundId::new("ref_other").unwrap();
    let mut commands = vec![request(false, at(0, 0))];
    for (i, op) in ops.iter().enumerate() {
        let now = at(i + 1, 0);
        commands.push(match op {
            RefundOp::Request { other } => request(*other, now),
            RefundOp::Submit { bad_id } => RefundCommand::Submit {
                psp_refund_id: if *bad_id { bad.clone() } else { good.clone() },
                now,
            },
            RefundOp::Psp { status, id, error } => RefundCommand::ApplyPspStatus {
                psp_refund_id: match id {
                    0 => None,
                    1 => Some(good.clone()),
                    _ => Some(bad.clone()),
                },
                status: RefundPspStatus::ALL[*status],
                error_message: error.then(|| "declined".to_owned()),
                now,
            },
            RefundOp::Orphan => RefundCommand::MarkOrphaned { now },
        });
    }
    commands
}

fn refund_status(s: &RefundState) -> Option<&'static str> {
    s.status().map(|s| s.as_str())
}

const REFUND_ALLOWED: &[(Option<&str>, &str)] = &[
    (None, "requested"),
    (Some("requested"), "submitted"),
    (Some("requested"), "failed"),
    (Some("submitted"), "succeeded"),
    (Some("submitted"), "failed"),
];

fn refund_invariants(s: &RefundState) {
    let Some(r) = &s.refund else { return };
    assert_eq!(
        r.amount_minor,
        r.lines.iter().map(|l| l.total_minor).sum::<i64>()
    );
    assert_eq!(r.failure.is_some(), r.status == RefundStatus::Failed);
    if matches!(r.status, RefundStatus::Submitted | RefundStatus::Succeeded) {
        assert!(r.psp_refund_id.is_some());
    }
    if r.status == RefundStatus::Requested {
        assert!(r.psp_refund_id.is_none());
    }
}

fn refund_rules() -> Rules<Refund> {
    Rules {
        stream: refund_id(1).stream_id(),
        status: refund_status,
        allowed: REFUND_ALLOWED,
        invariants: refund_invariants,
        any: AnyEvent::Refund,
    }
}

// ---------------------------------------------------------------------------
// Seller transfer.

#[derive(Debug, Clone)]
struct TransferCtx {
    amount_minor: i64,
    policy: RetryPolicy,
}

fn transfer_ctx() -> impl Strategy<Value = TransferCtx> {
    (1i64..=1_000_000, 1u64..=5, 0u64..=60, 0u32..=6).prop_map(
        |(amount_minor, base, extra, max_retries)| TransferCtx {
            amount_minor,
            policy: RetryPolicy {
                base: Duration::from_secs(base),
                max: Duration::from_secs(base + extra),
                max_retries,
            },
        },
    )
}

#[derive(Debug, Clone)]
enum TransferOp {
    Schedule,
    Succeeded { amount: u8 },
    Failed { definitive: bool },
    Retry { by_operator: bool },
    Cancel,
    Reduce { n: u128, per_mille: i64 },
    RequestReversal { n: u128, per_mille: i64 },
    ReversalOk { rev: u32, per_mille: i64 },
    AlreadyReversed { per_mille: i64 },
    ReversalFailed { transient: bool },
    FailWithoutId,
}

/// Parts of the scheduled amount, biased to the whole and to halves so full
/// reversals and reductions to zero happen.
fn per_mille() -> impl Strategy<Value = i64> {
    prop_oneof![2 => Just(1_000i64), 2 => Just(500i64), 3 => 0i64..=1_100]
}

fn transfer_op() -> impl Strategy<Value = (TransferOp, i64)> {
    let op = prop_oneof![
        1 => Just(TransferOp::Schedule),
        4 => (0u8..3).prop_map(|amount| TransferOp::Succeeded { amount }),
        4 => any::<bool>().prop_map(|definitive| TransferOp::Failed { definitive }),
        4 => prop::bool::weighted(0.2).prop_map(|by_operator| TransferOp::Retry { by_operator }),
        1 => Just(TransferOp::Cancel),
        2 => (0u128..3, per_mille()).prop_map(|(n, per_mille)| TransferOp::Reduce { n, per_mille }),
        4 => (0u128..3, per_mille()).prop_map(|(n, per_mille)| TransferOp::RequestReversal { n, per_mille }),
        4 => (0u32..4, per_mille()).prop_map(|(rev, per_mille)| TransferOp::ReversalOk { rev, per_mille }),
        1 => per_mille().prop_map(|per_mille| TransferOp::AlreadyReversed { per_mille }),
        4 => prop::bool::weighted(0.8).prop_map(|transient| TransferOp::ReversalFailed { transient }),
        1 => Just(TransferOp::FailWithoutId),
    ];
    (op, 0i64..=40)
}

fn transfer_commands(ctx: &TransferCtx, ops: &[(TransferOp, i64)]) -> Vec<TransferCommand> {
    let scheduled = usd_amount(ctx.amount_minor);
    let part = |per_mille: i64| usd_amount(ctx.amount_minor * per_mille / 1_000);
    let schedule = |now| TransferCommand::Schedule {
        transfer_id: transfer_id(order_id(), &seller(1)),
        order_id: order_id(),
        seller_id: seller(1),
        destination: acct(1),
        amount: scheduled,
        now,
    };
    let mut clock = t(0);
    let mut commands = vec![schedule(clock)];
    for (op, advance) in ops {
        // Seconds, so due times are sometimes reached and sometimes not.
        clock = secs(clock, *advance);
        let now = clock;
        commands.push(match op {
            TransferOp::Schedule => schedule(now),
            TransferOp::Succeeded { amount } => TransferCommand::RecordSucceeded {
                stripe_transfer_id: StripeTransferId::new("tr_1").unwrap(),
                amount: match amount {
                    0 => scheduled,
                    1 => part(500),
                    _ => usd_amount(ctx.amount_minor + 1),
                },
                now,
            },
            TransferOp::Failed { definitive } => TransferCommand::RecordFailed {
                error: "boom".into(),
                definitive: *definitive,
                policy: ctx.policy,
                now,
            },
            TransferOp::Retry { by_operator } => TransferCommand::Retry {
                now,
                by_operator: *by_operator,
            },
            TransferOp::Cancel => TransferCommand::Cancel {
                reason: "refunded".into(),
                now,
            },
            TransferOp::Reduce { n, per_mille } => TransferCommand::Reduce {
                by: part(*per_mille),
                refund_id: refund_id(*n),
                now,
            },
            TransferOp::RequestReversal { n, per_mille } => TransferCommand::RequestReversal {
                refund_id: refund_id(*n),
                amount: part(*per_mille),
                now,
            },
            TransferOp::ReversalOk { rev, per_mille } => TransferCommand::RecordReversalSucceeded {
                stripe_reversal_id: StripeReversalId::new(format!("trr_{rev}")).unwrap(),
                reversed_amount: part(*per_mille),
                now,
            },
            TransferOp::AlreadyReversed { per_mille } => TransferCommand::RecordAlreadyReversed {
                amount_reversed: part(*per_mille),
                now,
            },
            TransferOp::ReversalFailed { transient } => TransferCommand::RecordReversalFailed {
                transient: *transient,
                error: "503".into(),
                policy: ctx.policy,
                now,
            },
            TransferOp::FailWithoutId => TransferCommand::FailReversalWithoutTransferId { now },
        });
    }
    commands
}

fn transfer_status(s: &TransferState) -> Option<&'static str> {
    s.status().map(|s| s.as_str())
}

const TRANSFER_ALLOWED: &[(Option<&str>, &str)] = &[
    (None, "pending"),
    (Some("pending"), "completed"),
    (Some("pending"), "failed"),
    (Some("pending"), "permanently_failed"),
    (Some("pending"), "cancelled"),
    (Some("failed"), "pending"),
    (Some("failed"), "cancelled"),
    // Operator retry, and a refund before an exhausted payout was made.
    (Some("permanently_failed"), "pending"),
    (Some("permanently_failed"), "cancelled"),
    (Some("completed"), "reversal_pending"),
    (Some("partially_reversed"), "reversal_pending"),
    (Some("reversal_pending"), "reversed"),
    (Some("reversal_pending"), "partially_reversed"),
    (Some("reversal_pending"), "reversal_failed"),
];

fn transfer_invariants(s: &TransferState) {
    let Some(t) = &s.transfer else { return };
    let pending = t.pending_reversal.as_ref().map_or(0, |p| p.amount_minor);
    assert!(
        0 <= t.reversed_minor && t.reversed_minor <= t.transferred_minor,
        "reversed > transferred: {t:#?}"
    );
    assert!(
        t.reversed_minor + pending <= t.transferred_minor,
        "reversal pending beyond transferred: {t:#?}"
    );
    assert!(0 <= t.amount.minor && t.amount.minor <= t.scheduled_amount.minor);
    assert!(t.transferred_minor <= t.scheduled_amount.minor);
    assert_eq!(
        t.pending_reversal.is_some(),
        t.status == TransferStatus::ReversalPending
    );
    assert!(t.attempt >= 1);
    if t.status == TransferStatus::Reversed {
        assert_eq!(t.reversed_minor, t.transferred_minor);
    }
    if t.status == TransferStatus::Cancelled
        || t.status.as_str().contains("failed")
        || t.status == TransferStatus::Pending
    {
        // Nothing has been paid out in the unpaid states.
        if !matches!(t.status, TransferStatus::ReversalFailed) {
            assert_eq!(t.transferred_minor, 0);
        }
    }
}

fn transfer_rules() -> Rules<SellerTransfer> {
    Rules {
        stream: transfer_id(order_id(), &seller(1)).stream_id(),
        status: transfer_status,
        allowed: TRANSFER_ALLOWED,
        invariants: transfer_invariants,
        any: AnyEvent::Transfer,
    }
}

// ---------------------------------------------------------------------------
// Cross-stream: a settled order leaves every seller_payable at zero.

#[derive(Debug, Clone)]
struct Settlement {
    order: OrderCtx,
    /// Which lines get refunded (bit i = line i).
    refund_mask: u8,
    /// Which sellers were paid out before the refund (bit s = seller s).
    paid_early_mask: u8,
}

fn settlement() -> impl Strategy<Value = Settlement> {
    (order_ctx(), any::<u8>(), any::<u8>()).prop_map(|(order, refund_mask, paid_early_mask)| {
        Settlement {
            order,
            refund_mask,
            paid_early_mask,
        }
    })
}

/// Appends `command`'s events to `stream`'s history and the journal.
struct World {
    journal: Vec<ledger_core::postings::JournalEntry>,
    next_event: u128,
}

impl World {
    fn step<D: Decider>(
        &mut self,
        history: &mut Vec<D::Event>,
        command: D::Command,
        any: fn(D::Event) -> AnyEvent,
    ) -> Vec<D::Event> {
        let state = D::fold(history.iter()).unwrap();
        let events = D::decide(&state, &command).unwrap_or_else(|e| panic!("{command:?}: {e}"));
        for e in &events {
            self.next_event += 1;
            self.journal.extend(postings(
                EventId(Uuid::from_u128(self.next_event)),
                &any(e.clone()),
            ));
        }
        history.extend(events.iter().cloned());
        events
    }

    /// Net credit balance per account (credits minus debits).
    fn balances(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for entry in &self.journal {
            assert!(entry.is_balanced());
            for p in &entry.postings {
                let v = out.entry(p.account.to_string()).or_insert(0i64);
                match p.side {
                    Side::Credit => *v += p.amount_minor,
                    Side::Debit => *v -= p.amount_minor,
                }
            }
        }
        out
    }
}

fn settle(s: &Settlement) {
    let mut w = World {
        journal: Vec::new(),
        next_event: 0,
    };
    let mut order = Vec::new();
    w.step::<Order>(
        &mut order,
        OrderCommand::PlaceOrder {
            order_id: order_id(),
            buyer_id: buyer(),
            currency: usd(),
            lines: s.order.lines.clone(),
            fee_bps: s.order.fee_bps,
            now: t(0),
        },
        AnyEvent::Order,
    );
    let paid = w.step::<Order>(
        &mut order,
        OrderCommand::ApplyPaymentStatus {
            payment_id: payment_id_for(order_id()),
            status: PaymentStatus::Succeeded,
            amount_minor: None,
            error_message: None,
            now: t(1),
        },
        AnyEvent::Order,
    );
    let sellers: Vec<SellerShare> = match paid.last() {
        Some(OrderEvent::PaymentSucceeded { sellers, .. }) => sellers.clone(),
        other => panic!("expected PaymentSucceeded, got {other:?}"),
    };

    // Transfers, scheduled from the fat PaymentSucceeded alone.
    let mut transfers: BTreeMap<String, Vec<TransferEvent>> = BTreeMap::new();
    for share in &sellers {
        let history = transfers.entry(share.seller_id.to_string()).or_default();
        if share.seller_minor == 0 {
            continue; // a 100% fee leaves nothing to pay out
        }
        w.step::<SellerTransfer>(
            history,
            TransferCommand::Schedule {
                transfer_id: transfer_id(order_id(), &share.seller_id),
                order_id: order_id(),
                seller_id: share.seller_id.clone(),
                destination: share.seller_account.clone(),
                amount: usd_amount(share.seller_minor),
                now: t(2),
            },
            AnyEvent::Transfer,
        );
    }
    let seller_no = |id: &str| id.trim_start_matches("seller-").parse::<u32>().unwrap();
    let pay_out = |w: &mut World, history: &mut Vec<TransferEvent>| {
        let state = SellerTransfer::fold(history.iter()).unwrap();
        let Some(t) = state
            .transfer
            .filter(|t| t.status == TransferStatus::Pending)
        else {
            return;
        };
        w.step::<SellerTransfer>(
            history,
            TransferCommand::RecordSucceeded {
                stripe_transfer_id: StripeTransferId::new(format!("tr_{}", t.seller_id)).unwrap(),
                amount: t.amount,
                now: common::t(3),
            },
            AnyEvent::Transfer,
        );
    };
    for (seller_id, history) in transfers.iter_mut() {
        if s.paid_early_mask & (1 << seller_no(seller_id)) != 0 {
            pay_out(&mut w, history);
        }
    }

    // The refund: order reservation → refund stream → order completion.
    let chosen: Vec<_> = s
        .order
        .lines
        .iter()
        .enumerate()
        .filter(|(i, _)| s.refund_mask & (1 << i) != 0)
        .map(|(_, l)| l.product_id.clone())
        .collect();
    let mut refunded_lines: Vec<RefundLine> = Vec::new();
    if !chosen.is_empty() {
        let reserved = w.step::<Order>(
            &mut order,
            OrderCommand::RequestRefund {
                refund_id: refund_id(1),
                product_ids: Some(chosen),
                reason: "r".into(),
                reason_code: None,
                now: t(4),
            },
            AnyEvent::Order,
        );
        let Some(OrderEvent::RefundRequested {
            amount_minor,
            lines,
            ..
        }) = reserved.last()
        else {
            panic!("expected RefundRequested, got {reserved:?}")
        };
        let mut refund = Vec::new();
        w.step::<Refund>(
            &mut refund,
            RefundCommand::Request {
                refund_id: refund_id(1),
                order_id: order_id(),
                payment_id: payment_id_for(order_id()),
                amount_minor: *amount_minor,
                currency: usd(),
                lines: lines.clone(),
                reason: "r".into(),
                reason_code: None,
                now: t(4),
            },
            AnyEvent::Refund,
        );
        w.step::<Refund>(
            &mut refund,
            RefundCommand::ApplyPspStatus {
                psp_refund_id: Some(ledger_core::ids::psp_refund_id_for(refund_id(1))),
                status: RefundPspStatus::Succeeded,
                error_message: None,
                now: t(5),
            },
            AnyEvent::Refund,
        );
        w.step::<Order>(
            &mut order,
            OrderCommand::CompleteRefund {
                refund_id: refund_id(1),
                now: t(6),
            },
            AnyEvent::Order,
        );
        refunded_lines = lines.clone();
    }

    // Per seller: reduce an unpaid transfer, or reverse a paid one.
    for (seller_id, history) in transfers.iter_mut() {
        let share: i64 = refunded_lines
            .iter()
            .filter(|l| l.seller_id.as_str() == seller_id)
            .map(|l| l.seller_minor)
            .sum();
        let state = SellerTransfer::fold(history.iter()).unwrap();
        let Some(t) = state.transfer else { continue };
        if share > 0 && t.status == TransferStatus::Completed {
            w.step::<SellerTransfer>(
                history,
                TransferCommand::RequestReversal {
                    refund_id: refund_id(1),
                    amount: usd_amount(share),
                    now: common::t(7),
                },
                AnyEvent::Transfer,
            );
            w.step::<SellerTransfer>(
                history,
                TransferCommand::RecordReversalSucceeded {
                    stripe_reversal_id: StripeReversalId::new("trr_1").unwrap(),
                    reversed_amount: usd_amount(share),
                    now: common::t(8),
                },
                AnyEvent::Transfer,
            );
        } else if share > 0 {
            w.step::<SellerTransfer>(
                history,
                TransferCommand::Reduce {
                    by: usd_amount(share),
                    refund_id: refund_id(1),
                    now: common::t(7),
                },
                AnyEvent::Transfer,
            );
        }
        pay_out(&mut w, history);
    }

    // Settled: nothing in flight, so every payable nets to zero …
    let balances = w.balances();
    for (account, net) in &balances {
        if account.starts_with("seller_payable:") {
            assert_eq!(
                *net, 0,
                "{account} did not settle: {balances:?}\n{:#?}",
                w.journal
            );
        }
    }
    // … fees are what the kept lines earned, and clearing holds exactly those.
    let state = Order::fold(order.iter()).unwrap();
    let o = state.order.unwrap();
    let kept_fees: i64 = o
        .lines
        .iter()
        .filter(|l| l.refund == LineRefund::None)
        .map(|l| l.line.fee_minor)
        .sum();
    assert_eq!(
        balances.get("platform_fees").copied().unwrap_or(0),
        kept_fees
    );
    assert_eq!(
        balances.get("psp_clearing").copied().unwrap_or(0),
        -kept_fees
    );
    assert!(o.refunded_minor <= o.captured_minor);
}

// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn order_sequences_keep_every_invariant(ctx in order_ctx(), ops in prop::collection::vec(order_op(), 0..STEPS_MAX)) {
        run::<Order>(&order_rules(), &order_commands(&ctx, &ops));
    }

    #[test]
    fn refund_sequences_keep_every_invariant(ctx in refund_ctx(), ops in prop::collection::vec(refund_op(), 0..STEPS_MAX)) {
        run::<Refund>(&refund_rules(), &refund_commands(&ctx, &ops));
    }

    #[test]
    fn transfer_sequences_keep_every_invariant(ctx in transfer_ctx(), ops in prop::collection::vec(transfer_op(), 0..STEPS_MAX)) {
        run::<SellerTransfer>(&transfer_rules(), &transfer_commands(&ctx, &ops));
    }

    #[test]
    fn a_settled_order_nets_every_seller_payable_to_zero(s in settlement()) {
        settle(&s);
    }

    #[test]
    fn arbitrary_order_input_never_panics(
        raw in prop::collection::vec((any::<i64>(), any::<i64>(), 0usize..4), 0..5),
        bps in 0i64..=10_000,
    ) {
        let lines: Vec<LineInput> = raw
            .iter()
            .map(|(unit, qty, p)| line(&format!("p{p}"), 1, *unit, *qty))
            .collect();
        let command = OrderCommand::PlaceOrder {
            order_id: order_id(),
            buyer_id: buyer(),
            currency: usd(),
            lines,
            fee_bps: FeeBps::new(bps).unwrap(),
            now: t(0),
        };
        if let Ok(events) = Order::decide(&OrderState::default(), &command) {
            let Some(OrderEvent::OrderPlaced { lines, total_minor, fee_minor, .. }) = events.first() else {
                panic!("{events:?}")
            };
            prop_assert_eq!(*total_minor, lines.iter().map(|l| i128::from(l.total_minor)).sum::<i128>() as i64);
            prop_assert_eq!(*fee_minor, lines.iter().map(|l| l.fee_minor).sum::<i64>());
            for l in lines {
                prop_assert!(l.unit_amount_minor > 0 && l.quantity > 0);
                prop_assert_eq!(l.fee_minor + l.seller_minor, l.total_minor);
                prop_assert!(l.fee_minor >= 0 && l.seller_minor >= 0);
            }
        }
    }

    #[test]
    fn arbitrary_amounts_never_panic_a_transfer(
        scheduled in any::<i64>(), by in any::<i64>(), moved in any::<i64>(), rev in any::<i64>(),
    ) {
        let mut history = Vec::new();
        let commands = [
            TransferCommand::Schedule {
                transfer_id: transfer_id(order_id(), &seller(1)),
                order_id: order_id(),
                seller_id: seller(1),
                destination: acct(1),
                amount: usd_amount(scheduled),
                now: t(0),
            },
            TransferCommand::Reduce { by: usd_amount(by), refund_id: refund_id(1), now: t(1) },
            TransferCommand::RecordSucceeded {
                stripe_transfer_id: StripeTransferId::new("tr_1").unwrap(),
                amount: usd_amount(moved),
                now: t(2),
            },
            TransferCommand::RequestReversal { refund_id: refund_id(2), amount: usd_amount(rev), now: t(3) },
            TransferCommand::RecordAlreadyReversed { amount_reversed: usd_amount(rev), now: t(4) },
            TransferCommand::RequestReversal { refund_id: refund_id(3), amount: Amount::new(rev, eur()), now: t(5) },
        ];
        for command in commands {
            let state = SellerTransfer::fold(history.iter()).unwrap();
            if let Ok(events) = SellerTransfer::decide(&state, &command) {
                history.extend(events);
            }
            transfer_invariants(&SellerTransfer::fold(history.iter()).unwrap());
        }
    }

    #[test]
    fn arbitrary_stored_bytes_never_panic_the_decoder(
        kind in prop::sample::select(vec!["order-1", "refund-1", "transfer-1", "other-1"]),
        event_type in prop::sample::select(
            [OrderEvent::EVENT_TYPES, RefundEvent::EVENT_TYPES, TransferEvent::EVENT_TYPES, &["NoSuchEvent"]].concat()
        ),
        version in 0u32..3,
        payload in ".{0,64}",
    ) {
        let _ = decode_any(&StreamId::new(kind).unwrap(), event_type, version, &payload);
    }
}

// Keep an eye on the status names the tables use: a rename must fail here.
#[test]
fn transition_tables_only_name_real_statuses() {
    let order: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
    let refund: Vec<&str> = RefundStatus::ALL.iter().map(|s| s.as_str()).collect();
    let transfer: Vec<&str> = TransferStatus::ALL.iter().map(|s| s.as_str()).collect();
    for (table, names) in [
        (ORDER_ALLOWED, &order),
        (REFUND_ALLOWED, &refund),
        (TRANSFER_ALLOWED, &transfer),
    ] {
        for (from, to) in table {
            assert!(names.contains(to), "{to}");
            assert!(from.is_none_or(|f| names.contains(&f)), "{from:?}");
        }
    }
}
