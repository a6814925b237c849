//! The order aggregate (`order-{order_id}`): placement, payment status and the
//! refund reservation.
//!
//! **Guarantees:**
//! - Prices, fees and seller shares are computed once, at placement, with
//!   checked arithmetic, and frozen into `OrderPlaced` (rounding included).
//! - Payment status moves forward only. A repeated status yields zero events;
//!   a conflicting one changes nothing and is recorded once as an anomaly.
//! - `refunded_minor ≤ captured_minor` always; a line is in at most one refund;
//!   at most one refund is reserved at a time.
//! - Every event that moves money (`PaymentSucceeded`, `RefundRequested`,
//!   `RefundCompleted`) carries the per-seller breakdown, so postings and
//!   process managers never re-read the order.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::EventSet;
use crate::decider::{Decider, InvalidHistory};
use crate::ids::{
    BuyerId, OrderId, PaymentId, ProductId, RefundId, SellerAccount, SellerId, payment_id_for,
};
use crate::money::{Currency, FeeBps, checked_sum, split_fee};
use crate::psp::{PaymentOutcome, PaymentStatus};
use crate::refund::{RefundLine, RefundReasonCode};
use crate::text::{clip, clip_opt};

/// Most lines in one order. A cart, not a catalogue: it bounds the event size
/// and the per-line work in every projection.
pub const ORDER_LINES_MAX: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Created,
    Pending,
    Completed,
    Failed,
    Cancelled,
    RefundPending,
    PartiallyRefunded,
    Refunded,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 8] = [
        OrderStatus::Created,
        OrderStatus::Pending,
        OrderStatus::Completed,
        OrderStatus::Failed,
        OrderStatus::Cancelled,
        OrderStatus::RefundPending,
        OrderStatus::PartiallyRefunded,
        OrderStatus::Refunded,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            OrderStatus::Created => "created",
            OrderStatus::Pending => "pending",
            OrderStatus::Completed => "completed",
            OrderStatus::Failed => "failed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::RefundPending => "refund_pending",
            OrderStatus::PartiallyRefunded => "partially_refunded",
            OrderStatus::Refunded => "refunded",
        }
    }

    /// The payment was captured: every status from `completed` onwards.
    pub fn is_paid(&self) -> bool {
        matches!(
            self,
            OrderStatus::Completed
                | OrderStatus::RefundPending
                | OrderStatus::PartiallyRefunded
                | OrderStatus::Refunded
        )
    }

    /// Terminal for payment: no payment status can move it any more.
    pub fn is_payment_terminal(&self) -> bool {
        self.is_paid() || matches!(self, OrderStatus::Failed | OrderStatus::Cancelled)
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line as the client asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineInput {
    pub product_id: ProductId,
    pub seller_id: SellerId,
    pub seller_account: SellerAccount,
    pub unit_amount_minor: i64,
    pub quantity: i64,
}

/// One priced line, frozen at placement.
///
/// **Guarantees:** `total_minor = unit_amount_minor * quantity`,
/// `fee_minor + seller_minor = total_minor`, all non-negative; the fee is
/// `floor(total * fee_bps / 10_000)` with the dropped fraction in
/// `rounding_remainder` (over 10_000).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: ProductId,
    pub seller_id: SellerId,
    pub seller_account: SellerAccount,
    pub unit_amount_minor: i64,
    pub quantity: i64,
    pub total_minor: i64,
    pub fee_minor: i64,
    pub seller_minor: i64,
    pub rounding_remainder: i64,
}

impl OrderLine {
    pub fn refund_line(&self) -> RefundLine {
        RefundLine {
            product_id: self.product_id.clone(),
            seller_id: self.seller_id.clone(),
            seller_account: self.seller_account.clone(),
            total_minor: self.total_minor,
            fee_minor: self.fee_minor,
            seller_minor: self.seller_minor,
        }
    }
}

/// One seller's part of an order, summed over that seller's lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SellerShare {
    pub seller_id: SellerId,
    pub seller_account: SellerAccount,
    pub total_minor: i64,
    pub fee_minor: i64,
    pub seller_minor: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentAnomalyKind {
    /// A terminal status that contradicts the order's (e.g. `failed` after
    /// `completed`).
    ConflictingStatus,
    /// The PSP captured an amount other than the order total.
    AmountMismatch,
    /// A status this build does not know: never guessed at, recorded once
    /// per status for an operator; a later known status still applies.
    UnrecognisedStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    PlaceOrder {
        order_id: OrderId,
        buyer_id: BuyerId,
        currency: Currency,
        lines: Vec<LineInput>,
        fee_bps: FeeBps,
        now: DateTime<Utc>,
    },
    InitiatePayment {
        payment_id: PaymentId,
        now: DateTime<Utc>,
    },
    /// A payment status observed by a webhook or the reconciler.
    ApplyPaymentStatus {
        payment_id: PaymentId,
        status: PaymentStatus,
        /// The amount the PSP reports as captured, if it reported one.
        amount_minor: Option<i64>,
        error_message: Option<String>,
        now: DateTime<Utc>,
    },
    CancelOrder {
        reason: String,
        now: DateTime<Utc>,
    },
    /// Reserve lines for a refund. `product_ids: None` means every line not
    /// yet refunded.
    RequestRefund {
        refund_id: RefundId,
        product_ids: Option<Vec<ProductId>>,
        reason: String,
        /// Passed on to the refund; `None` when the caller gave none.
        reason_code: Option<RefundReasonCode>,
        now: DateTime<Utc>,
    },
    CompleteRefund {
        refund_id: RefundId,
        now: DateTime<Utc>,
    },
    ReleaseRefund {
        refund_id: RefundId,
        reason: String,
        now: DateTime<Utc>,
    },
}

impl OrderCommand {
    pub fn name(&self) -> &'static str {
        match self {
            OrderCommand::PlaceOrder { .. } => "PlaceOrder",
            OrderCommand::InitiatePayment { .. } => "InitiatePayment",
            OrderCommand::ApplyPaymentStatus { .. } => "ApplyPaymentStatus",
            OrderCommand::CancelOrder { .. } => "CancelOrder",
            OrderCommand::RequestRefund { .. } => "RequestRefund",
            OrderCommand::CompleteRefund { .. } => "CompleteRefund",
            OrderCommand::ReleaseRefund { .. } => "ReleaseRefund",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    OrderPlaced {
        order_id: OrderId,
        buyer_id: BuyerId,
        currency: Currency,
        fee_bps: FeeBps,
        lines: Vec<OrderLine>,
        total_minor: i64,
        fee_minor: i64,
        at: DateTime<Utc>,
    },
    PaymentInitiated {
        payment_id: PaymentId,
        at: DateTime<Utc>,
    },
    /// `amount_minor` equals the order total; `sellers` sums to it with
    /// `fee_minor`.
    PaymentSucceeded {
        order_id: OrderId,
        payment_id: PaymentId,
        status: PaymentStatus,
        amount_minor: i64,
        currency: Currency,
        fee_minor: i64,
        sellers: Vec<SellerShare>,
        at: DateTime<Utc>,
    },
    PaymentFailed {
        payment_id: PaymentId,
        status: PaymentStatus,
        error_message: Option<String>,
        at: DateTime<Utc>,
    },
    PaymentCancelled {
        payment_id: PaymentId,
        status: PaymentStatus,
        error_message: Option<String>,
        at: DateTime<Utc>,
    },
    OrderCancelled {
        reason: String,
        at: DateTime<Utc>,
    },
    /// Changes no status; surfaced to operators (logged at ERROR, counted,
    /// listed in the anomalies read model).
    PaymentAnomalyRecorded {
        kind: PaymentAnomalyKind,
        payment_id: PaymentId,
        observed_status: PaymentStatus,
        observed_amount_minor: Option<i64>,
        current_status: OrderStatus,
        error_message: Option<String>,
        at: DateTime<Utc>,
    },
    RefundRequested {
        refund_id: RefundId,
        order_id: OrderId,
        payment_id: PaymentId,
        amount_minor: i64,
        currency: Currency,
        lines: Vec<RefundLine>,
        reason: String,
        /// Absent in events written before reason codes existed, and when
        /// the caller gave none; omitted from the payload when `None`, so
        /// those events keep their bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason_code: Option<RefundReasonCode>,
        previous_status: OrderStatus,
        at: DateTime<Utc>,
    },
    RefundCompleted {
        refund_id: RefundId,
        order_id: OrderId,
        amount_minor: i64,
        currency: Currency,
        lines: Vec<RefundLine>,
        /// Every line of the order is now refunded (status `refunded`).
        fully_refunded: bool,
        at: DateTime<Utc>,
    },
    RefundReleased {
        refund_id: RefundId,
        reason: String,
        restored_status: OrderStatus,
        at: DateTime<Utc>,
    },
}

impl EventSet for OrderEvent {
    const EVENT_TYPES: &'static [&'static str] = &[
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
    ];
}

impl OrderEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::OrderPlaced { .. } => "OrderPlaced",
            OrderEvent::PaymentInitiated { .. } => "PaymentInitiated",
            OrderEvent::PaymentSucceeded { .. } => "PaymentSucceeded",
            OrderEvent::PaymentFailed { .. } => "PaymentFailed",
            OrderEvent::PaymentCancelled { .. } => "PaymentCancelled",
            OrderEvent::OrderCancelled { .. } => "OrderCancelled",
            OrderEvent::PaymentAnomalyRecorded { .. } => "PaymentAnomalyRecorded",
            OrderEvent::RefundRequested { .. } => "RefundRequested",
            OrderEvent::RefundCompleted { .. } => "RefundCompleted",
            OrderEvent::RefundReleased { .. } => "RefundReleased",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderRejection {
    #[error("the order has not been placed")]
    OrderNotPlaced,
    #[error("order {order_id} was already placed with different contents")]
    OrderAlreadyPlaced { order_id: OrderId },
    #[error("an order needs at least one line")]
    EmptyOrder,
    #[error("{count} lines exceed the limit of {max}")]
    TooManyLines { count: usize, max: usize },
    #[error("line {product_id} has quantity zero")]
    ZeroQuantity { product_id: ProductId },
    #[error("line {product_id} has a negative quantity")]
    NegativeQuantity { product_id: ProductId },
    #[error("line {product_id} has a unit amount that is not positive")]
    NonPositiveAmount { product_id: ProductId },
    #[error("product {product_id} appears twice")]
    DuplicateProduct { product_id: ProductId },
    #[error("amounts overflow a 64-bit minor-unit total")]
    AmountOverflow,
    #[error("payment {got} is not this order's payment {expected}")]
    PaymentIdMismatch { expected: PaymentId, got: PaymentId },
    #[error("{command} is not allowed while the order is {from}")]
    InvalidTransition {
        from: OrderStatus,
        command: &'static str,
    },
    #[error("refund {pending} is still pending")]
    RefundAlreadyPending { pending: RefundId },
    #[error("nothing is left to refund")]
    NothingToRefund,
    #[error("product {product_id} is not in this order")]
    UnknownProduct { product_id: ProductId },
    #[error("line {product_id} is already refunded")]
    LineAlreadyRefunded { product_id: ProductId },
    #[error("refund of {requested_minor} exceeds the {refundable_minor} still refundable")]
    RefundExceedsCaptured {
        requested_minor: i64,
        refundable_minor: i64,
    },
    #[error("refund {refund_id} is not the pending refund")]
    RefundNotPending { refund_id: RefundId },
}

/// How a line stands with respect to refunds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "refund_id")]
pub enum LineRefund {
    None,
    Reserved(RefundId),
    Refunded(RefundId),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineState {
    #[serde(flatten)]
    pub line: OrderLine,
    pub refund: LineRefund,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingRefund {
    pub refund_id: RefundId,
    pub amount_minor: i64,
    pub lines: Vec<RefundLine>,
    pub previous_status: OrderStatus,
}

/// An anomaly already recorded, so seeing it again yields zero events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeenAnomaly {
    pub kind: PaymentAnomalyKind,
    pub observed_status: PaymentStatus,
    pub observed_amount_minor: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlacedOrder {
    pub order_id: OrderId,
    pub buyer_id: BuyerId,
    pub currency: Currency,
    pub fee_bps: FeeBps,
    pub lines: Vec<LineState>,
    pub total_minor: i64,
    pub fee_minor: i64,
    pub status: OrderStatus,
    pub status_since: DateTime<Utc>,
    pub placed_at: DateTime<Utc>,
    pub payment_id: Option<PaymentId>,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub pending_refund: Option<PendingRefund>,
    pub completed_refunds: Vec<RefundId>,
    pub released_refunds: Vec<RefundId>,
    pub anomalies: Vec<SeenAnomaly>,
}

impl PlacedOrder {
    fn sellers(&self) -> Result<Vec<SellerShare>, OrderRejection> {
        let lines: Vec<&OrderLine> = self.lines.iter().map(|l| &l.line).collect();
        seller_shares(&lines)
    }

    fn knows_refund(&self, refund_id: RefundId) -> bool {
        self.completed_refunds.contains(&refund_id) || self.released_refunds.contains(&refund_id)
    }
}

/// `order: None` until `OrderPlaced`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OrderState {
    pub order: Option<PlacedOrder>,
}

impl OrderState {
    pub fn status(&self) -> Option<OrderStatus> {
        self.order.as_ref().map(|o| o.status)
    }
}

/// Sums lines per seller, in order of each seller's first line.
fn seller_shares(lines: &[&OrderLine]) -> Result<Vec<SellerShare>, OrderRejection> {
    let mut shares: Vec<SellerShare> = Vec::new();
    for line in lines {
        match shares.iter_mut().find(|s| s.seller_id == line.seller_id) {
            Some(share) => {
                share.total_minor = add(share.total_minor, line.total_minor)?;
                share.fee_minor = add(share.fee_minor, line.fee_minor)?;
                share.seller_minor = add(share.seller_minor, line.seller_minor)?;
            }
            None => shares.push(SellerShare {
                seller_id: line.seller_id.clone(),
                seller_account: line.seller_account.clone(),
                total_minor: line.total_minor,
                fee_minor: line.fee_minor,
                seller_minor: line.seller_minor,
            }),
        }
    }
    Ok(shares)
}

fn add(a: i64, b: i64) -> Result<i64, OrderRejection> {
    a.checked_add(b).ok_or(OrderRejection::AmountOverflow)
}

/// Validates and prices the lines: the whole of placement's arithmetic.
fn price_lines(inputs: &[LineInput], fee_bps: FeeBps) -> Result<Vec<OrderLine>, OrderRejection> {
    if inputs.is_empty() {
        return Err(OrderRejection::EmptyOrder);
    }
    if inputs.len() > ORDER_LINES_MAX {
        return Err(OrderRejection::TooManyLines {
            count: inputs.len(),
            max: ORDER_LINES_MAX,
        });
    }
    let mut seen = BTreeSet::new();
    let mut lines = Vec::with_capacity(inputs.len());
    for input in inputs {
        let product_id = input.product_id.clone();
        if input.quantity == 0 {
            return Err(OrderRejection::ZeroQuantity { product_id });
        }
        if input.quantity < 0 {
            return Err(OrderRejection::NegativeQuantity { product_id });
        }
        if input.unit_amount_minor <= 0 {
            return Err(OrderRejection::NonPositiveAmount { product_id });
        }
        if !seen.insert(&input.product_id) {
            return Err(OrderRejection::DuplicateProduct { product_id });
        }
        let total_minor = input
            .unit_amount_minor
            .checked_mul(input.quantity)
            .ok_or(OrderRejection::AmountOverflow)?;
        let split = split_fee(total_minor, fee_bps).map_err(|_| OrderRejection::AmountOverflow)?;
        lines.push(OrderLine {
            product_id,
            seller_id: input.seller_id.clone(),
            seller_account: input.seller_account.clone(),
            unit_amount_minor: input.unit_amount_minor,
            quantity: input.quantity,
            total_minor,
            fee_minor: split.fee_minor,
            seller_minor: split.seller_minor,
            rounding_remainder: split.rounding_remainder,
        });
    }
    Ok(lines)
}

/// Same client request as the stored order (the fee rate may have changed
/// since, so it is not compared: the frozen one wins).
fn same_request(
    o: &PlacedOrder,
    buyer_id: &BuyerId,
    currency: Currency,
    lines: &[OrderLine],
) -> bool {
    o.buyer_id == *buyer_id
        && o.currency == currency
        && o.lines.len() == lines.len()
        && o.lines.iter().zip(lines).all(|(a, b)| {
            a.line.product_id == b.product_id
                && a.line.seller_id == b.seller_id
                && a.line.seller_account == b.seller_account
                && a.line.unit_amount_minor == b.unit_amount_minor
                && a.line.quantity == b.quantity
        })
}

/// The order decider.
#[derive(Debug, Clone, Copy, Default)]
pub struct Order;

impl Decider for Order {
    type State = OrderState;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Rejection = OrderRejection;

    const STREAM_KIND: &'static str = "order";

    fn decide(
        state: &OrderState,
        command: &OrderCommand,
    ) -> Result<Vec<OrderEvent>, OrderRejection> {
        if let OrderCommand::PlaceOrder {
            order_id,
            buyer_id,
            currency,
            lines,
            fee_bps,
            now,
        } = command
        {
            return place(state, *order_id, buyer_id, *currency, lines, *fee_bps, *now);
        }
        let o = state.order.as_ref().ok_or(OrderRejection::OrderNotPlaced)?;
        let invalid = || OrderRejection::InvalidTransition {
            from: o.status,
            command: command.name(),
        };
        match command {
            OrderCommand::PlaceOrder { .. } => Err(invalid()),
            OrderCommand::InitiatePayment { payment_id, now } => {
                let expected = payment_id_for(o.order_id);
                if *payment_id != expected {
                    return Err(OrderRejection::PaymentIdMismatch {
                        expected,
                        got: payment_id.clone(),
                    });
                }
                match o.status {
                    OrderStatus::Created => Ok(vec![OrderEvent::PaymentInitiated {
                        payment_id: expected,
                        at: *now,
                    }]),
                    _ if o.payment_id.as_ref() == Some(payment_id) => Ok(vec![]),
                    _ => Err(invalid()),
                }
            }
            OrderCommand::ApplyPaymentStatus {
                payment_id,
                status,
                amount_minor,
                error_message,
                now,
            } => apply_payment_status(
                o,
                payment_id,
                status,
                *amount_minor,
                error_message.as_ref(),
                *now,
            ),
            OrderCommand::CancelOrder { reason, now } => match o.status {
                OrderStatus::Created | OrderStatus::Pending => {
                    Ok(vec![OrderEvent::OrderCancelled {
                        reason: clip(reason),
                        at: *now,
                    }])
                }
                OrderStatus::Cancelled => Ok(vec![]),
                _ => Err(invalid()),
            },
            OrderCommand::RequestRefund {
                refund_id,
                product_ids,
                reason,
                reason_code,
                now,
            } => request_refund(
                o,
                *refund_id,
                product_ids.as_deref(),
                reason,
                *reason_code,
                *now,
                invalid,
            ),
            OrderCommand::CompleteRefund { refund_id, now } => {
                if o.completed_refunds.contains(refund_id) {
                    return Ok(vec![]);
                }
                let pending = o
                    .pending_refund
                    .as_ref()
                    .filter(|p| p.refund_id == *refund_id)
                    .ok_or(OrderRejection::RefundNotPending {
                        refund_id: *refund_id,
                    })?;
                let fully_refunded = o.lines.iter().all(|l| match l.refund {
                    LineRefund::Refunded(_) => true,
                    LineRefund::Reserved(r) => r == *refund_id,
                    LineRefund::None => false,
                });
                Ok(vec![OrderEvent::RefundCompleted {
                    refund_id: *refund_id,
                    order_id: o.order_id,
                    amount_minor: pending.amount_minor,
                    currency: o.currency,
                    lines: pending.lines.clone(),
                    fully_refunded,
                    at: *now,
                }])
            }
            OrderCommand::ReleaseRefund {
                refund_id,
                reason,
                now,
            } => {
                if o.released_refunds.contains(refund_id) {
                    return Ok(vec![]);
                }
                let pending = o
                    .pending_refund
                    .as_ref()
                    .filter(|p| p.refund_id == *refund_id)
                    .ok_or(OrderRejection::RefundNotPending {
                        refund_id: *refund_id,
                    })?;
                Ok(vec![OrderEvent::RefundReleased {
                    refund_id: *refund_id,
                    reason: clip(reason),
                    restored_status: pending.previous_status,
                    at: *now,
                }])
            }
        }
    }

    fn evolve(state: OrderState, event: &OrderEvent) -> Result<OrderState, InvalidHistory> {
        let bad = |state: &OrderState| InvalidHistory {
            state: state.status().map_or("empty", |s| s.as_str()).to_owned(),
            event_type: event.event_type().to_owned(),
        };
        if let OrderEvent::OrderPlaced {
            order_id,
            buyer_id,
            currency,
            fee_bps,
            lines,
            total_minor,
            fee_minor,
            at,
        } = event
        {
            if state.order.is_some() {
                return Err(bad(&state));
            }
            return Ok(OrderState {
                order: Some(PlacedOrder {
                    order_id: *order_id,
                    buyer_id: buyer_id.clone(),
                    currency: *currency,
                    fee_bps: *fee_bps,
                    lines: lines
                        .iter()
                        .map(|l| LineState {
                            line: l.clone(),
                            refund: LineRefund::None,
                        })
                        .collect(),
                    total_minor: *total_minor,
                    fee_minor: *fee_minor,
                    status: OrderStatus::Created,
                    status_since: *at,
                    placed_at: *at,
                    payment_id: None,
                    captured_minor: 0,
                    refunded_minor: 0,
                    pending_refund: None,
                    completed_refunds: Vec::new(),
                    released_refunds: Vec::new(),
                    anomalies: Vec::new(),
                }),
            });
        }
        let err = bad(&state);
        let Some(mut o) = state.order else {
            return Err(err);
        };
        fn move_to(o: &mut PlacedOrder, status: OrderStatus, at: DateTime<Utc>) {
            o.status = status;
            o.status_since = at;
        }
        match event {
            OrderEvent::OrderPlaced { .. } => return Err(err),
            OrderEvent::PaymentInitiated { payment_id, at } => {
                if o.status != OrderStatus::Created {
                    return Err(err);
                }
                o.payment_id = Some(payment_id.clone());
                move_to(&mut o, OrderStatus::Pending, *at);
            }
            OrderEvent::PaymentSucceeded {
                amount_minor, at, ..
            } => {
                if o.status != OrderStatus::Pending {
                    return Err(err);
                }
                o.captured_minor = *amount_minor;
                move_to(&mut o, OrderStatus::Completed, *at);
            }
            OrderEvent::PaymentFailed { at, .. } => {
                if o.status != OrderStatus::Pending {
                    return Err(err);
                }
                move_to(&mut o, OrderStatus::Failed, *at);
            }
            OrderEvent::PaymentCancelled { at, .. } => {
                if o.status != OrderStatus::Pending {
                    return Err(err);
                }
                move_to(&mut o, OrderStatus::Cancelled, *at);
            }
            OrderEvent::OrderCancelled { at, .. } => {
                if !matches!(o.status, OrderStatus::Created | OrderStatus::Pending) {
                    return Err(err);
                }
                move_to(&mut o, OrderStatus::Cancelled, *at);
            }
            OrderEvent::PaymentAnomalyRecorded {
                kind,
                observed_status,
                observed_amount_minor,
                ..
            } => o.anomalies.push(SeenAnomaly {
                kind: *kind,
                observed_status: observed_status.clone(),
                observed_amount_minor: *observed_amount_minor,
            }),
            OrderEvent::RefundRequested {
                refund_id,
                amount_minor,
                lines,
                previous_status,
                at,
                ..
            } => {
                if !matches!(
                    o.status,
                    OrderStatus::Completed | OrderStatus::PartiallyRefunded
                ) || o.pending_refund.is_some()
                {
                    return Err(err);
                }
                for refund_line in lines {
                    let line = o
                        .lines
                        .iter_mut()
                        .find(|l| l.line.product_id == refund_line.product_id)
                        .filter(|l| l.refund == LineRefund::None)
                        .ok_or_else(|| err.clone())?;
                    line.refund = LineRefund::Reserved(*refund_id);
                }
                o.pending_refund = Some(PendingRefund {
                    refund_id: *refund_id,
                    amount_minor: *amount_minor,
                    lines: lines.clone(),
                    previous_status: *previous_status,
                });
                move_to(&mut o, OrderStatus::RefundPending, *at);
            }
            OrderEvent::RefundCompleted {
                refund_id,
                amount_minor,
                fully_refunded,
                at,
                ..
            } => {
                if o.pending_refund.as_ref().map(|p| p.refund_id) != Some(*refund_id) {
                    return Err(err);
                }
                for line in &mut o.lines {
                    if line.refund == LineRefund::Reserved(*refund_id) {
                        line.refund = LineRefund::Refunded(*refund_id);
                    }
                }
                o.refunded_minor = o.refunded_minor.checked_add(*amount_minor).ok_or(err)?;
                o.pending_refund = None;
                o.completed_refunds.push(*refund_id);
                let status = if *fully_refunded {
                    OrderStatus::Refunded
                } else {
                    OrderStatus::PartiallyRefunded
                };
                move_to(&mut o, status, *at);
            }
            OrderEvent::RefundReleased {
                refund_id,
                restored_status,
                at,
                ..
            } => {
                if o.pending_refund.as_ref().map(|p| p.refund_id) != Some(*refund_id) {
                    return Err(err);
                }
                for line in &mut o.lines {
                    if line.refund == LineRefund::Reserved(*refund_id) {
                        line.refund = LineRefund::None;
                    }
                }
                o.pending_refund = None;
                o.released_refunds.push(*refund_id);
                move_to(&mut o, *restored_status, *at);
            }
        }
        Ok(OrderState { order: Some(o) })
    }
}

fn place(
    state: &OrderState,
    order_id: OrderId,
    buyer_id: &BuyerId,
    currency: Currency,
    inputs: &[LineInput],
    fee_bps: FeeBps,
    now: DateTime<Utc>,
) -> Result<Vec<OrderEvent>, OrderRejection> {
    let lines = price_lines(inputs, fee_bps)?;
    if let Some(o) = &state.order {
        return if o.order_id == order_id && same_request(o, buyer_id, currency, &lines) {
            Ok(vec![])
        } else {
            Err(OrderRejection::OrderAlreadyPlaced {
                order_id: o.order_id,
            })
        };
    }
    let total_minor = checked_sum(lines.iter().map(|l| l.total_minor))
        .map_err(|_| OrderRejection::AmountOverflow)?;
    let fee_minor = checked_sum(lines.iter().map(|l| l.fee_minor))
        .map_err(|_| OrderRejection::AmountOverflow)?;
    Ok(vec![OrderEvent::OrderPlaced {
        order_id,
        buyer_id: buyer_id.clone(),
        currency,
        fee_bps,
        lines,
        total_minor,
        fee_minor,
        at: now,
    }])
}

fn apply_payment_status(
    o: &PlacedOrder,
    payment_id: &PaymentId,
    status: &PaymentStatus,
    amount_minor: Option<i64>,
    error_message: Option<&String>,
    now: DateTime<Utc>,
) -> Result<Vec<OrderEvent>, OrderRejection> {
    // Before initiation the order's payment id is still known: it is derived.
    let expected = o
        .payment_id
        .clone()
        .unwrap_or_else(|| payment_id_for(o.order_id));
    if *payment_id != expected {
        return Err(OrderRejection::PaymentIdMismatch {
            expected,
            got: payment_id.clone(),
        });
    }
    let outcome = status.outcome();
    // A captured amount other than the total is never accepted as success.
    // `partially_captured` without an amount can't be shown to be whole.
    let amount_ok = match (status, amount_minor) {
        (_, Some(a)) => a == o.total_minor,
        (PaymentStatus::PartiallyCaptured, None) => false,
        (_, None) => true,
    };
    let anomaly = |kind: PaymentAnomalyKind, current_status: OrderStatus| {
        let seen = o.anomalies.iter().any(|a| {
            a.kind == kind
                && a.observed_status == *status
                && a.observed_amount_minor == amount_minor
        });
        (!seen).then(|| OrderEvent::PaymentAnomalyRecorded {
            kind,
            payment_id: expected.clone(),
            observed_status: status.clone(),
            observed_amount_minor: amount_minor,
            current_status,
            error_message: clip_opt(error_message),
            at: now,
        })
    };

    let mut events = Vec::new();
    let mut current = o.status;
    if current == OrderStatus::Created {
        // The PSP knows our derived payment id, so the payment was created and
        // we crashed before recording it: record it now, then the status.
        events.push(OrderEvent::PaymentInitiated {
            payment_id: expected.clone(),
            at: now,
        });
        current = OrderStatus::Pending;
    }
    match (current, outcome) {
        (_, PaymentOutcome::InFlight) => {}
        (s, PaymentOutcome::Unrecognised) => {
            events.extend(anomaly(PaymentAnomalyKind::UnrecognisedStatus, s));
        }
        (OrderStatus::Pending, PaymentOutcome::Captured) if amount_ok => {
            events.push(OrderEvent::PaymentSucceeded {
                order_id: o.order_id,
                payment_id: expected.clone(),
                status: status.clone(),
                amount_minor: o.total_minor,
                currency: o.currency,
                fee_minor: o.fee_minor,
                sellers: o.sellers()?,
                at: now,
            });
        }
        (OrderStatus::Pending, PaymentOutcome::Failed) => events.push(OrderEvent::PaymentFailed {
            payment_id: expected.clone(),
            status: status.clone(),
            error_message: clip_opt(error_message),
            at: now,
        }),
        (OrderStatus::Pending, PaymentOutcome::Cancelled) => {
            events.push(OrderEvent::PaymentCancelled {
                payment_id: expected.clone(),
                status: status.clone(),
                error_message: clip_opt(error_message),
                at: now,
            })
        }
        // A capture of the wrong amount: never success, surfaced instead.
        (s, PaymentOutcome::Captured)
            if (s == OrderStatus::Pending || s.is_paid()) && !amount_ok =>
        {
            events.extend(anomaly(PaymentAnomalyKind::AmountMismatch, s));
        }
        // The state already reflects this outcome: a duplicate or a replay.
        (s, PaymentOutcome::Captured) if s.is_paid() => {}
        (OrderStatus::Failed, PaymentOutcome::Failed)
        | (OrderStatus::Cancelled, PaymentOutcome::Cancelled) => {}
        (s, _) => events.extend(anomaly(PaymentAnomalyKind::ConflictingStatus, s)),
    }
    Ok(events)
}

fn request_refund(
    o: &PlacedOrder,
    refund_id: RefundId,
    product_ids: Option<&[ProductId]>,
    reason: &str,
    reason_code: Option<RefundReasonCode>,
    now: DateTime<Utc>,
    invalid: impl Fn() -> OrderRejection,
) -> Result<Vec<OrderEvent>, OrderRejection> {
    if o.knows_refund(refund_id) {
        return Ok(vec![]);
    }
    if let Some(pending) = &o.pending_refund {
        return if pending.refund_id == refund_id {
            Ok(vec![])
        } else {
            Err(OrderRejection::RefundAlreadyPending {
                pending: pending.refund_id,
            })
        };
    }
    if !matches!(
        o.status,
        OrderStatus::Completed | OrderStatus::PartiallyRefunded
    ) {
        return Err(invalid());
    }
    let payment_id = o.payment_id.clone().ok_or_else(&invalid)?;
    let selected: Vec<&OrderLine> = match product_ids {
        None => o
            .lines
            .iter()
            .filter(|l| l.refund == LineRefund::None)
            .map(|l| &l.line)
            .collect(),
        Some(ids) => {
            let mut wanted = BTreeSet::new();
            for id in ids {
                let line = o
                    .lines
                    .iter()
                    .find(|l| l.line.product_id == *id)
                    .ok_or_else(|| OrderRejection::UnknownProduct {
                        product_id: id.clone(),
                    })?;
                if line.refund != LineRefund::None {
                    return Err(OrderRejection::LineAlreadyRefunded {
                        product_id: id.clone(),
                    });
                }
                if !wanted.insert(id) {
                    return Err(OrderRejection::DuplicateProduct {
                        product_id: id.clone(),
                    });
                }
            }
            // Order lines, not request order, so the event is canonical.
            o.lines
                .iter()
                .filter(|l| wanted.contains(&l.line.product_id))
                .map(|l| &l.line)
                .collect()
        }
    };
    if selected.is_empty() {
        return Err(OrderRejection::NothingToRefund);
    }
    let amount_minor = checked_sum(selected.iter().map(|l| l.total_minor))
        .map_err(|_| OrderRejection::AmountOverflow)?;
    let refundable_minor = o
        .captured_minor
        .checked_sub(o.refunded_minor)
        .ok_or(OrderRejection::AmountOverflow)?;
    if amount_minor > refundable_minor {
        return Err(OrderRejection::RefundExceedsCaptured {
            requested_minor: amount_minor,
            refundable_minor,
        });
    }
    Ok(vec![OrderEvent::RefundRequested {
        refund_id,
        order_id: o.order_id,
        payment_id,
        amount_minor,
        currency: o.currency,
        lines: selected.iter().map(|l| l.refund_line()).collect(),
        reason: clip(reason),
        reason_code,
        previous_status: o.status,
        at: now,
    }])
}
