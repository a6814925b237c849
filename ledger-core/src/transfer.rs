//! The seller transfer aggregate (`transfer-{transfer_id}`): one seller's
//! payout for one order, as one Stripe Connect transfer, and its reversals.
//!
//! **Guarantees:**
//! - `transfer_id = ids::transfer_id(order_id, seller_id)`, so scheduling twice
//!   is a no-op.
//! - `reversed_minor + pending reversal ≤ transferred_minor`, always.
//! - `attempt` (the Stripe idempotency key's counter, see
//!   [`TransferState::idempotency_key`]) moves only on a retry after a
//!   *definitive* error or once a read of Stripe proved the attempt made
//!   nothing (`TransferAttemptAbsent`); a 409 or 429 reuses the key, and a
//!   5xx, timeout or dropped connection makes the transfer `indeterminate`
//!   until such a read.
//! - Backoff is `min(base * 2^retry_count, max)`, saturating, computed from the
//!   command's `now`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::EventSet;
use crate::decider::{Decider, InvalidHistory};
use crate::ids::{
    OrderId, RefundId, SellerAccount, SellerId, StripeReversalId, StripeTransferId, TransferId,
    transfer_id,
};
use crate::money::{Amount, Currency};
use crate::text::clip;

/// How failed Stripe calls are retried. Passed in each command (config lives
/// at the edge), so the core never reads env or a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    /// Failures (counted from 1) at which retrying stops.
    pub max_retries: u32,
}

/// `min(base * 2^retry_count, max)`, saturating at `max` instead of
/// overflowing.
pub fn backoff_delay(policy: &RetryPolicy, retry_count: u32) -> Duration {
    2u32.checked_pow(retry_count)
        .and_then(|factor| policy.base.checked_mul(factor))
        .unwrap_or(policy.max)
        .min(policy.max)
}

/// `now + delay`, saturating at the latest representable time.
fn after(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    Pending,
    Completed,
    Failed,
    PermanentlyFailed,
    Cancelled,
    ReversalPending,
    PartiallyReversed,
    Reversed,
    ReversalFailed,
    /// A Stripe create answered in a way that leaves its outcome unknown
    /// (5xx, timeout, dropped connection, a replayed error): the payout may
    /// or may not exist. Only a read of Stripe moves it on.
    Indeterminate,
    /// The same for a reversal: it may or may not exist at Stripe.
    ReversalIndeterminate,
}

impl TransferStatus {
    pub const ALL: [TransferStatus; 11] = [
        TransferStatus::Pending,
        TransferStatus::Completed,
        TransferStatus::Failed,
        TransferStatus::PermanentlyFailed,
        TransferStatus::Cancelled,
        TransferStatus::ReversalPending,
        TransferStatus::PartiallyReversed,
        TransferStatus::Reversed,
        TransferStatus::ReversalFailed,
        TransferStatus::Indeterminate,
        TransferStatus::ReversalIndeterminate,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            TransferStatus::Pending => "pending",
            TransferStatus::Completed => "completed",
            TransferStatus::Failed => "failed",
            TransferStatus::PermanentlyFailed => "permanently_failed",
            TransferStatus::Cancelled => "cancelled",
            TransferStatus::ReversalPending => "reversal_pending",
            TransferStatus::PartiallyReversed => "partially_reversed",
            TransferStatus::Reversed => "reversed",
            TransferStatus::ReversalFailed => "reversal_failed",
            TransferStatus::Indeterminate => "indeterminate",
            TransferStatus::ReversalIndeterminate => "reversal_indeterminate",
        }
    }

    /// No money has left the platform for this transfer yet.
    fn is_unpaid(&self) -> bool {
        matches!(
            self,
            TransferStatus::Pending | TransferStatus::Failed | TransferStatus::PermanentlyFailed
        )
    }
}

impl std::fmt::Display for TransferStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReversalFailureKind {
    /// Transient errors until the retry budget ran out.
    Exhausted,
    /// Stripe gave a definitive answer (e.g. transfer not found).
    Definitive,
    /// No Stripe transfer id is recorded, so there is nothing to reverse.
    MissingStripeTransferId,
}

/// Why an operator must look at a transfer, whatever its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferAnomalyKind {
    /// Stripe holds a transfer or reversal for this share whose amount or
    /// currency is not the one the ledger asked for.
    AmountMismatch,
    /// Stripe holds more than one transfer for this share (a second payout).
    DuplicateAtProvider,
    /// Stripe holds a transfer or reversal naming this share that the ledger
    /// does not record.
    UnknownAtProvider,
    /// Stripe answered something the client cannot read (an unknown value,
    /// a null where a value is required, an undecodable body).
    UnreadableAnswer,
    /// Stripe paid a transfer the ledger no longer owes (the share was
    /// cancelled meanwhile); the money must be recovered by an operator.
    PaidWhileNotOwed,
}

impl TransferAnomalyKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TransferAnomalyKind::AmountMismatch => "amount_mismatch",
            TransferAnomalyKind::DuplicateAtProvider => "duplicate_at_provider",
            TransferAnomalyKind::UnknownAtProvider => "unknown_at_provider",
            TransferAnomalyKind::UnreadableAnswer => "unreadable_answer",
            TransferAnomalyKind::PaidWhileNotOwed => "paid_while_not_owed",
        }
    }

    /// Kinds that say the ledger and the provider's records disagree.
    pub fn is_provider_mismatch(&self) -> bool {
        matches!(
            self,
            TransferAnomalyKind::AmountMismatch
                | TransferAnomalyKind::DuplicateAtProvider
                | TransferAnomalyKind::UnknownAtProvider
                | TransferAnomalyKind::PaidWhileNotOwed
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferCommand {
    Schedule {
        transfer_id: TransferId,
        order_id: OrderId,
        seller_id: SellerId,
        destination: SellerAccount,
        amount: Amount,
        now: DateTime<Utc>,
    },
    /// Stripe created the transfer; `amount` is what Stripe reports moved.
    RecordSucceeded {
        stripe_transfer_id: StripeTransferId,
        amount: Amount,
        now: DateTime<Utc>,
    },
    /// `definitive`: Stripe answered with an error for this key (4xx other
    /// than 409/429), so the next attempt needs a new key.
    RecordFailed {
        error: String,
        definitive: bool,
        policy: RetryPolicy,
        now: DateTime<Utc>,
    },
    /// The Stripe call of the current attempt may or may not have made the
    /// transfer (5xx, timeout, dropped connection, replayed error): nothing
    /// may be sent again before a read of Stripe says which.
    RecordOutcomeUnknown { error: String, now: DateTime<Utc> },
    /// A read of Stripe proved that attempt `attempt` made no transfer: the
    /// next attempt, under a new key, may be sent.
    RecordAbsent { attempt: u32, now: DateTime<Utc> },
    /// Something an operator must look at (deduplicated by kind and
    /// provider id).
    RecordAnomaly {
        kind: TransferAnomalyKind,
        provider_id: Option<String>,
        detail: String,
        now: DateTime<Utc>,
    },
    /// An operator dealt with a recorded anomaly (reversed the second
    /// payout at Stripe, corrected the provider's data, …) and says how.
    ResolveAnomaly {
        kind: TransferAnomalyKind,
        provider_id: Option<String>,
        note: String,
        now: DateTime<Utc>,
    },
    /// The retry worker (when due) or an operator (any time, and also from
    /// `permanently_failed`) sends the transfer back to `pending`.
    Retry {
        now: DateTime<Utc>,
        by_operator: bool,
    },
    /// Nothing is to be paid out any more (all of the seller's lines were
    /// refunded before the payout).
    Cancel { reason: String, now: DateTime<Utc> },
    /// Lower the payout before it is made because `refund_id` refunded some of
    /// the seller's lines. Reaching zero cancels the transfer.
    Reduce {
        by: Amount,
        refund_id: RefundId,
        now: DateTime<Utc>,
    },
    RequestReversal {
        refund_id: RefundId,
        amount: Amount,
        now: DateTime<Utc>,
    },
    RecordReversalSucceeded {
        stripe_reversal_id: StripeReversalId,
        reversed_amount: Amount,
        now: DateTime<Utc>,
    },
    /// Stripe says the transfer is already reversed; `amount_reversed` is
    /// its `amount_reversed` total.
    RecordAlreadyReversed {
        amount_reversed: Amount,
        now: DateTime<Utc>,
    },
    RecordReversalFailed {
        transient: bool,
        error: String,
        policy: RetryPolicy,
        now: DateTime<Utc>,
    },
    /// The reversal call of the current attempt may or may not have made a
    /// reversal: read before sending again.
    RecordReversalOutcomeUnknown { error: String, now: DateTime<Utc> },
    /// A read of Stripe proved that reversal attempt `attempt` made nothing.
    RecordReversalAbsent { attempt: u32, now: DateTime<Utc> },
    /// The reversal worker found no `stripe_transfer_id`: fail without
    /// calling Stripe.
    FailReversalWithoutTransferId { now: DateTime<Utc> },
}

impl TransferCommand {
    pub fn name(&self) -> &'static str {
        match self {
            TransferCommand::Schedule { .. } => "Schedule",
            TransferCommand::RecordSucceeded { .. } => "RecordSucceeded",
            TransferCommand::RecordFailed { .. } => "RecordFailed",
            TransferCommand::RecordOutcomeUnknown { .. } => "RecordOutcomeUnknown",
            TransferCommand::RecordAbsent { .. } => "RecordAbsent",
            TransferCommand::RecordAnomaly { .. } => "RecordAnomaly",
            TransferCommand::ResolveAnomaly { .. } => "ResolveAnomaly",
            TransferCommand::Retry { .. } => "Retry",
            TransferCommand::Cancel { .. } => "Cancel",
            TransferCommand::Reduce { .. } => "Reduce",
            TransferCommand::RequestReversal { .. } => "RequestReversal",
            TransferCommand::RecordReversalSucceeded { .. } => "RecordReversalSucceeded",
            TransferCommand::RecordAlreadyReversed { .. } => "RecordAlreadyReversed",
            TransferCommand::RecordReversalFailed { .. } => "RecordReversalFailed",
            TransferCommand::RecordReversalOutcomeUnknown { .. } => "RecordReversalOutcomeUnknown",
            TransferCommand::RecordReversalAbsent { .. } => "RecordReversalAbsent",
            TransferCommand::FailReversalWithoutTransferId { .. } => {
                "FailReversalWithoutTransferId"
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TransferEvent {
    TransferScheduled {
        transfer_id: TransferId,
        order_id: OrderId,
        seller_id: SellerId,
        destination: SellerAccount,
        amount: Amount,
        at: DateTime<Utc>,
    },
    /// `amount` is what moved. It can exceed `amount_due` only if a `Reduce`
    /// raced an in-flight Stripe call; the excess must then be reversed.
    TransferCompleted {
        transfer_id: TransferId,
        order_id: OrderId,
        seller_id: SellerId,
        /// `None` only in imported history; decisions always record one.
        stripe_transfer_id: Option<StripeTransferId>,
        amount: Amount,
        amount_due: Amount,
        attempt: u32,
        at: DateTime<Utc>,
    },
    TransferFailed {
        error: String,
        definitive: bool,
        attempt: u32,
        retry_count: u32,
        next_retry_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    TransferPermanentlyFailed {
        error: String,
        definitive: bool,
        attempt: u32,
        retry_count: u32,
        at: DateTime<Utc>,
    },
    /// Back to `pending`; `attempt` is the attempt the next Stripe call uses.
    TransferRetried {
        attempt: u32,
        by_operator: bool,
        at: DateTime<Utc>,
    },
    TransferReduced {
        refund_id: RefundId,
        by: Amount,
        remaining: Amount,
        at: DateTime<Utc>,
    },
    TransferCancelled {
        reason: String,
        at: DateTime<Utc>,
    },
    TransferReversalRequested {
        refund_id: RefundId,
        amount: Amount,
        at: DateTime<Utc>,
    },
    TransferReversed {
        refund_id: RefundId,
        seller_id: SellerId,
        stripe_reversal_id: StripeReversalId,
        amount: Amount,
        reversed_total_minor: i64,
        fully_reversed: bool,
        at: DateTime<Utc>,
    },
    /// Stripe had already reversed it; `amount` is the part the ledger had
    /// not yet recorded (may be zero).
    TransferAlreadyReversed {
        refund_id: RefundId,
        seller_id: SellerId,
        amount: Amount,
        reversed_total_minor: i64,
        fully_reversed: bool,
        at: DateTime<Utc>,
    },
    TransferReversalRetryScheduled {
        refund_id: RefundId,
        error: String,
        retry_count: u32,
        next_retry_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    TransferReversalFailed {
        refund_id: RefundId,
        failure: ReversalFailureKind,
        error: String,
        at: DateTime<Utc>,
    },
    /// `pending` → `indeterminate`: attempt `attempt`'s call may or may not
    /// have made the transfer.
    TransferOutcomeUnknown {
        attempt: u32,
        error: String,
        at: DateTime<Utc>,
    },
    /// `indeterminate` → `pending`: a read proved `absent_attempt` made
    /// nothing; the next call uses `attempt` (a new key).
    TransferAttemptAbsent {
        absent_attempt: u32,
        attempt: u32,
        at: DateTime<Utc>,
    },
    /// An operator must look; the status does not change.
    TransferAnomalyRecorded {
        kind: TransferAnomalyKind,
        provider_id: Option<String>,
        detail: String,
        at: DateTime<Utc>,
    },
    /// An operator resolved the anomaly of that kind and provider id.
    TransferAnomalyResolved {
        kind: TransferAnomalyKind,
        provider_id: Option<String>,
        note: String,
        at: DateTime<Utc>,
    },
    /// `reversal_pending` → `reversal_indeterminate`.
    TransferReversalOutcomeUnknown {
        refund_id: RefundId,
        attempt: u32,
        error: String,
        at: DateTime<Utc>,
    },
    /// `reversal_indeterminate` → `reversal_pending` under a new key.
    TransferReversalAttemptAbsent {
        refund_id: RefundId,
        absent_attempt: u32,
        attempt: u32,
        at: DateTime<Utc>,
    },
}

impl EventSet for TransferEvent {
    const EVENT_TYPES: &'static [&'static str] = &[
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
        "TransferOutcomeUnknown",
        "TransferAttemptAbsent",
        "TransferAnomalyRecorded",
        "TransferAnomalyResolved",
        "TransferReversalOutcomeUnknown",
        "TransferReversalAttemptAbsent",
    ];
}

impl TransferEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            TransferEvent::TransferScheduled { .. } => "TransferScheduled",
            TransferEvent::TransferCompleted { .. } => "TransferCompleted",
            TransferEvent::TransferFailed { .. } => "TransferFailed",
            TransferEvent::TransferPermanentlyFailed { .. } => "TransferPermanentlyFailed",
            TransferEvent::TransferRetried { .. } => "TransferRetried",
            TransferEvent::TransferReduced { .. } => "TransferReduced",
            TransferEvent::TransferCancelled { .. } => "TransferCancelled",
            TransferEvent::TransferReversalRequested { .. } => "TransferReversalRequested",
            TransferEvent::TransferReversed { .. } => "TransferReversed",
            TransferEvent::TransferAlreadyReversed { .. } => "TransferAlreadyReversed",
            TransferEvent::TransferReversalRetryScheduled { .. } => {
                "TransferReversalRetryScheduled"
            }
            TransferEvent::TransferReversalFailed { .. } => "TransferReversalFailed",
            TransferEvent::TransferOutcomeUnknown { .. } => "TransferOutcomeUnknown",
            TransferEvent::TransferAttemptAbsent { .. } => "TransferAttemptAbsent",
            TransferEvent::TransferAnomalyRecorded { .. } => "TransferAnomalyRecorded",
            TransferEvent::TransferAnomalyResolved { .. } => "TransferAnomalyResolved",
            TransferEvent::TransferReversalOutcomeUnknown { .. } => {
                "TransferReversalOutcomeUnknown"
            }
            TransferEvent::TransferReversalAttemptAbsent { .. } => "TransferReversalAttemptAbsent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferRejection {
    #[error("the transfer has not been scheduled")]
    TransferNotScheduled,
    #[error("transfer id {got} is not uuid_v5(order, seller) = {expected}")]
    TransferIdMismatch {
        expected: TransferId,
        got: TransferId,
    },
    #[error("an amount must be positive")]
    NonPositiveAmount,
    #[error("currency mismatch: the transfer is in {expected}, got {got}")]
    CurrencyMismatch { expected: Currency, got: Currency },
    #[error("amounts overflow a 64-bit minor-unit total")]
    AmountOverflow,
    #[error("{amount_minor} moved exceeds the {scheduled_minor} scheduled")]
    AmountExceedsScheduled {
        amount_minor: i64,
        scheduled_minor: i64,
    },
    #[error("reducing by {by_minor} exceeds the {remaining_minor} still due")]
    ReductionExceedsAmount { by_minor: i64, remaining_minor: i64 },
    #[error("stripe transfer {got} is not the recorded {expected:?}")]
    StripeTransferIdMismatch {
        expected: Option<StripeTransferId>,
        got: StripeTransferId,
    },
    #[error("stripe transfer {0} is recorded; reverse it instead of failing")]
    StripeTransferIdPresent(StripeTransferId),
    #[error("retry is not due before {next_retry_at}")]
    RetryNotDue { next_retry_at: DateTime<Utc> },
    #[error("reversal for refund {pending} is still pending")]
    ReversalAlreadyPending { pending: RefundId },
    #[error(
        "reversing {requested_minor} exceeds the {available_minor} transferred and not yet reversed"
    )]
    ReversalExceedsTransferred {
        requested_minor: i64,
        available_minor: i64,
    },
    #[error(
        "stripe reports {reported_minor} reversed, less than the {recorded_minor} already recorded"
    )]
    ReversedAmountDecreased {
        reported_minor: i64,
        recorded_minor: i64,
    },
    #[error("no {kind:?} anomaly for {provider_id:?} is recorded on this transfer")]
    AnomalyNotRecorded {
        kind: TransferAnomalyKind,
        provider_id: Option<String>,
    },
    #[error("{command} is not allowed while the transfer is {from}")]
    InvalidTransition {
        from: TransferStatus,
        command: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingReversal {
    pub refund_id: RefundId,
    pub amount_minor: i64,
    /// Stripe attempt counter of this reversal, from 1: moves only when a
    /// read proved the previous attempt made nothing.
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduledTransfer {
    pub transfer_id: TransferId,
    pub order_id: OrderId,
    pub seller_id: SellerId,
    pub destination: SellerAccount,
    /// As first scheduled.
    pub scheduled_amount: Amount,
    /// Still to pay out: scheduled minus reductions.
    pub amount: Amount,
    pub status: TransferStatus,
    pub status_since: DateTime<Utc>,
    /// Stripe attempt counter, from 1; see [`TransferState::idempotency_key`].
    pub attempt: u32,
    /// Failures of the payout since the last operator retry.
    pub retry_count: u32,
    /// When the retry worker may act next (payout or reversal retry).
    pub next_retry_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_failure_definitive: bool,
    pub stripe_transfer_id: Option<StripeTransferId>,
    pub transferred_minor: i64,
    pub reversed_minor: i64,
    pub pending_reversal: Option<PendingReversal>,
    pub reversal_retry_count: u32,
    /// Refunds that already reduced this transfer (duplicates are no-ops).
    pub reductions: Vec<RefundId>,
    /// Refunds that already requested a reversal (duplicates are no-ops).
    pub reversal_refunds: Vec<RefundId>,
    pub stripe_reversal_ids: Vec<StripeReversalId>,
    /// Anomalies recorded, by kind and provider id (duplicates are no-ops).
    pub anomalies: Vec<(TransferAnomalyKind, Option<String>)>,
    /// Those an operator has resolved since.
    pub resolved_anomalies: Vec<(TransferAnomalyKind, Option<String>)>,
}

impl ScheduledTransfer {
    /// An anomaly of `kind` is recorded and not resolved.
    pub fn has_open_anomaly(&self, kind: TransferAnomalyKind) -> bool {
        self.anomalies
            .iter()
            .any(|a| a.0 == kind && !self.resolved_anomalies.contains(a))
    }

    /// Stripe `Idempotency-Key` of the current payout attempt.
    pub fn idempotency_key(&self) -> String {
        format!("transfer:{}:{}", self.transfer_id, self.attempt)
    }
}

/// `transfer: None` until `TransferScheduled`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TransferState {
    pub transfer: Option<ScheduledTransfer>,
}

impl TransferState {
    pub fn status(&self) -> Option<TransferStatus> {
        self.transfer.as_ref().map(|t| t.status)
    }

    /// Stripe `Idempotency-Key` for the next transfer call:
    /// `transfer:{transfer_id}:{attempt}`.
    pub fn idempotency_key(&self) -> Option<String> {
        self.transfer
            .as_ref()
            .map(ScheduledTransfer::idempotency_key)
    }
}

/// A reversal is asked for and not yet answered.
fn reversal_open(status: TransferStatus) -> bool {
    matches!(
        status,
        TransferStatus::ReversalPending | TransferStatus::ReversalIndeterminate
    )
}

/// The seller transfer decider.
#[derive(Debug, Clone, Copy, Default)]
pub struct SellerTransfer;

fn positive_in(amount: &Amount, currency: Currency) -> Result<(), TransferRejection> {
    if amount.currency != currency {
        return Err(TransferRejection::CurrencyMismatch {
            expected: currency,
            got: amount.currency,
        });
    }
    if !amount.is_positive() {
        return Err(TransferRejection::NonPositiveAmount);
    }
    Ok(())
}

impl Decider for SellerTransfer {
    type State = TransferState;
    type Command = TransferCommand;
    type Event = TransferEvent;
    type Rejection = TransferRejection;

    const STREAM_KIND: &'static str = "transfer";

    fn decide(
        state: &TransferState,
        command: &TransferCommand,
    ) -> Result<Vec<TransferEvent>, TransferRejection> {
        if let TransferCommand::Schedule {
            transfer_id: got,
            order_id,
            seller_id,
            destination,
            amount,
            now,
        } = command
        {
            let expected = transfer_id(*order_id, seller_id);
            if *got != expected {
                return Err(TransferRejection::TransferIdMismatch {
                    expected,
                    got: *got,
                });
            }
            if !amount.is_positive() {
                return Err(TransferRejection::NonPositiveAmount);
            }
            return match &state.transfer {
                Some(t) if t.transfer_id == expected => Ok(vec![]),
                Some(t) => Err(TransferRejection::TransferIdMismatch {
                    expected: t.transfer_id,
                    got: *got,
                }),
                None => Ok(vec![TransferEvent::TransferScheduled {
                    transfer_id: expected,
                    order_id: *order_id,
                    seller_id: seller_id.clone(),
                    destination: destination.clone(),
                    amount: *amount,
                    at: *now,
                }]),
            };
        }
        let t = state
            .transfer
            .as_ref()
            .ok_or(TransferRejection::TransferNotScheduled)?;
        let invalid = || TransferRejection::InvalidTransition {
            from: t.status,
            command: command.name(),
        };
        let currency = t.amount.currency;
        let available_minor = t
            .transferred_minor
            .checked_sub(t.reversed_minor)
            .ok_or(TransferRejection::AmountOverflow)?;

        match command {
            TransferCommand::Schedule { .. } => Err(invalid()),

            TransferCommand::RecordSucceeded {
                stripe_transfer_id,
                amount,
                now,
            } => match t.status {
                TransferStatus::Pending | TransferStatus::Indeterminate => {
                    positive_in(amount, currency)?;
                    if amount.minor > t.scheduled_amount.minor {
                        return Err(TransferRejection::AmountExceedsScheduled {
                            amount_minor: amount.minor,
                            scheduled_minor: t.scheduled_amount.minor,
                        });
                    }
                    Ok(vec![TransferEvent::TransferCompleted {
                        transfer_id: t.transfer_id,
                        order_id: t.order_id,
                        seller_id: t.seller_id.clone(),
                        stripe_transfer_id: Some(stripe_transfer_id.clone()),
                        amount: *amount,
                        amount_due: t.amount,
                        attempt: t.attempt,
                        at: *now,
                    }])
                }
                _ if t.stripe_transfer_id.as_ref() == Some(stripe_transfer_id) => Ok(vec![]),
                s if s.is_unpaid() || s == TransferStatus::Cancelled => Err(invalid()),
                _ => Err(TransferRejection::StripeTransferIdMismatch {
                    expected: t.stripe_transfer_id.clone(),
                    got: stripe_transfer_id.clone(),
                }),
            },

            TransferCommand::RecordFailed {
                error,
                definitive,
                policy,
                now,
            } => match t.status {
                TransferStatus::Pending => {
                    let retry_count = t.retry_count.saturating_add(1);
                    if retry_count >= policy.max_retries {
                        Ok(vec![TransferEvent::TransferPermanentlyFailed {
                            error: clip(error),
                            definitive: *definitive,
                            attempt: t.attempt,
                            retry_count,
                            at: *now,
                        }])
                    } else {
                        Ok(vec![TransferEvent::TransferFailed {
                            error: clip(error),
                            definitive: *definitive,
                            attempt: t.attempt,
                            retry_count,
                            next_retry_at: after(*now, backoff_delay(policy, t.retry_count)),
                            at: *now,
                        }])
                    }
                }
                // The failure of this attempt is already recorded.
                TransferStatus::Failed | TransferStatus::PermanentlyFailed => Ok(vec![]),
                _ => Err(invalid()),
            },

            TransferCommand::RecordOutcomeUnknown { error, now } => match t.status {
                TransferStatus::Pending => Ok(vec![TransferEvent::TransferOutcomeUnknown {
                    attempt: t.attempt,
                    error: clip(error),
                    at: *now,
                }]),
                // Already unknown, or a racing worker recorded the answer.
                TransferStatus::Indeterminate => Ok(vec![]),
                _ if t.stripe_transfer_id.is_some() => Ok(vec![]),
                _ => Err(invalid()),
            },

            TransferCommand::RecordAbsent { attempt, now } => match t.status {
                TransferStatus::Indeterminate if *attempt == t.attempt => {
                    let mut events = vec![TransferEvent::TransferAttemptAbsent {
                        absent_attempt: t.attempt,
                        attempt: t.attempt.saturating_add(1),
                        at: *now,
                    }];
                    // Reduced to nothing while unknown: nothing is owed.
                    if t.amount.minor == 0 {
                        events.push(TransferEvent::TransferCancelled {
                            reason: "reduced to zero while its payout was indeterminate".to_owned(),
                            at: *now,
                        });
                    }
                    Ok(events)
                }
                // That attempt's absence is already recorded, or another
                // process found the payout meanwhile.
                _ if *attempt < t.attempt => Ok(vec![]),
                _ if t.stripe_transfer_id.is_some() => Ok(vec![]),
                _ => Err(invalid()),
            },

            TransferCommand::RecordAnomaly {
                kind,
                provider_id,
                detail,
                now,
            } => {
                let seen = t
                    .anomalies
                    .iter()
                    .any(|(k, id)| k == kind && id == provider_id);
                if seen {
                    return Ok(vec![]);
                }
                Ok(vec![TransferEvent::TransferAnomalyRecorded {
                    kind: *kind,
                    provider_id: provider_id.as_deref().map(clip),
                    detail: clip(detail),
                    at: *now,
                }])
            }

            TransferCommand::ResolveAnomaly {
                kind,
                provider_id,
                note,
                now,
            } => {
                let key = (*kind, provider_id.clone());
                if !t.anomalies.contains(&key) {
                    return Err(TransferRejection::AnomalyNotRecorded {
                        kind: *kind,
                        provider_id: provider_id.clone(),
                    });
                }
                if t.resolved_anomalies.contains(&key) {
                    return Ok(vec![]);
                }
                Ok(vec![TransferEvent::TransferAnomalyResolved {
                    kind: *kind,
                    provider_id: provider_id.clone(),
                    note: clip(note),
                    at: *now,
                }])
            }

            TransferCommand::Retry { now, by_operator } => match t.status {
                TransferStatus::Pending => Ok(vec![]),
                TransferStatus::Failed | TransferStatus::PermanentlyFailed => {
                    if t.status == TransferStatus::PermanentlyFailed && !by_operator {
                        return Err(invalid());
                    }
                    if let Some(due) = t.next_retry_at.filter(|due| !by_operator && *now < *due) {
                        return Err(TransferRejection::RetryNotDue { next_retry_at: due });
                    }
                    // A definitive error means Stripe stored an answer under
                    // the old key; only a new key can produce a transfer.
                    let attempt = if t.last_failure_definitive {
                        t.attempt.saturating_add(1)
                    } else {
                        t.attempt
                    };
                    Ok(vec![TransferEvent::TransferRetried {
                        attempt,
                        by_operator: *by_operator,
                        at: *now,
                    }])
                }
                _ => Err(invalid()),
            },

            TransferCommand::Cancel { reason, now } => match t.status {
                s if s.is_unpaid() => Ok(vec![TransferEvent::TransferCancelled {
                    reason: clip(reason),
                    at: *now,
                }]),
                TransferStatus::Cancelled => Ok(vec![]),
                _ => Err(invalid()),
            },

            TransferCommand::Reduce { by, refund_id, now } => {
                if t.reductions.contains(refund_id) {
                    return Ok(vec![]);
                }
                // While indeterminate the payout may or may not exist: lower
                // what is owed; if it did happen, the excess is reversed.
                let may_reduce = t.status.is_unpaid() || t.status == TransferStatus::Indeterminate;
                if !may_reduce {
                    return Err(invalid());
                }
                positive_in(by, currency)?;
                if by.minor > t.amount.minor {
                    return Err(TransferRejection::ReductionExceedsAmount {
                        by_minor: by.minor,
                        remaining_minor: t.amount.minor,
                    });
                }
                let remaining = t
                    .amount
                    .checked_sub(*by)
                    .map_err(|_| TransferRejection::AmountOverflow)?;
                let mut events = vec![TransferEvent::TransferReduced {
                    refund_id: *refund_id,
                    by: *by,
                    remaining,
                    at: *now,
                }];
                if remaining.minor == 0 && t.status.is_unpaid() {
                    events.push(TransferEvent::TransferCancelled {
                        reason: format!("reduced to zero by refund {refund_id}"),
                        at: *now,
                    });
                }
                Ok(events)
            }

            TransferCommand::RequestReversal {
                refund_id,
                amount,
                now,
            } => {
                if t.reversal_refunds.contains(refund_id) {
                    return Ok(vec![]);
                }
                match t.status {
                    TransferStatus::Completed | TransferStatus::PartiallyReversed => {
                        positive_in(amount, currency)?;
                        if amount.minor > available_minor {
                            return Err(TransferRejection::ReversalExceedsTransferred {
                                requested_minor: amount.minor,
                                available_minor,
                            });
                        }
                        Ok(vec![TransferEvent::TransferReversalRequested {
                            refund_id: *refund_id,
                            amount: *amount,
                            at: *now,
                        }])
                    }
                    TransferStatus::ReversalPending => match &t.pending_reversal {
                        Some(p) => Err(TransferRejection::ReversalAlreadyPending {
                            pending: p.refund_id,
                        }),
                        None => Err(invalid()),
                    },
                    _ => Err(invalid()),
                }
            }

            TransferCommand::RecordReversalSucceeded {
                stripe_reversal_id,
                reversed_amount,
                now,
            } => {
                if t.stripe_reversal_ids.contains(stripe_reversal_id) {
                    return Ok(vec![]);
                }
                let pending = match (t.status, &t.pending_reversal) {
                    (
                        TransferStatus::ReversalPending | TransferStatus::ReversalIndeterminate,
                        Some(p),
                    ) => p,
                    _ => return Err(invalid()),
                };
                positive_in(reversed_amount, currency)?;
                if reversed_amount.minor > available_minor {
                    return Err(TransferRejection::ReversalExceedsTransferred {
                        requested_minor: reversed_amount.minor,
                        available_minor,
                    });
                }
                let reversed_total_minor = t
                    .reversed_minor
                    .checked_add(reversed_amount.minor)
                    .ok_or(TransferRejection::AmountOverflow)?;
                Ok(vec![TransferEvent::TransferReversed {
                    refund_id: pending.refund_id,
                    seller_id: t.seller_id.clone(),
                    stripe_reversal_id: stripe_reversal_id.clone(),
                    amount: *reversed_amount,
                    reversed_total_minor,
                    fully_reversed: reversed_total_minor == t.transferred_minor,
                    at: *now,
                }])
            }

            TransferCommand::RecordAlreadyReversed {
                amount_reversed,
                now,
            } => {
                let pending = match (t.status, &t.pending_reversal) {
                    (
                        TransferStatus::ReversalPending | TransferStatus::ReversalIndeterminate,
                        Some(p),
                    ) => p,
                    // Already reflected: nothing left to reverse, or exactly
                    // the total recorded last time.
                    (TransferStatus::Reversed, _) => return Ok(vec![]),
                    (TransferStatus::PartiallyReversed, _)
                        if *amount_reversed == Amount::new(t.reversed_minor, currency) =>
                    {
                        return Ok(vec![]);
                    }
                    _ => return Err(invalid()),
                };
                if amount_reversed.currency != currency {
                    return Err(TransferRejection::CurrencyMismatch {
                        expected: currency,
                        got: amount_reversed.currency,
                    });
                }
                if amount_reversed.minor > t.transferred_minor {
                    return Err(TransferRejection::ReversalExceedsTransferred {
                        requested_minor: amount_reversed.minor,
                        available_minor: t.transferred_minor,
                    });
                }
                if amount_reversed.minor < t.reversed_minor {
                    return Err(TransferRejection::ReversedAmountDecreased {
                        reported_minor: amount_reversed.minor,
                        recorded_minor: t.reversed_minor,
                    });
                }
                let newly = amount_reversed
                    .checked_sub(Amount::new(t.reversed_minor, currency))
                    .map_err(|_| TransferRejection::AmountOverflow)?;
                Ok(vec![TransferEvent::TransferAlreadyReversed {
                    refund_id: pending.refund_id,
                    seller_id: t.seller_id.clone(),
                    amount: newly,
                    reversed_total_minor: amount_reversed.minor,
                    fully_reversed: amount_reversed.minor == t.transferred_minor,
                    at: *now,
                }])
            }

            TransferCommand::RecordReversalFailed {
                transient,
                error,
                policy,
                now,
            } => {
                let pending = match (t.status, &t.pending_reversal) {
                    (TransferStatus::ReversalPending, Some(p)) => p,
                    (TransferStatus::ReversalFailed, _) => return Ok(vec![]),
                    _ => return Err(invalid()),
                };
                // The worker only calls Stripe once the retry is due; a
                // failure reported before then is this one, reported again.
                if *transient && t.next_retry_at.is_some_and(|due| *now < due) {
                    return Ok(vec![]);
                }
                let retry_count = t.reversal_retry_count.saturating_add(1);
                let event = if !*transient {
                    TransferEvent::TransferReversalFailed {
                        refund_id: pending.refund_id,
                        failure: ReversalFailureKind::Definitive,
                        error: clip(error),
                        at: *now,
                    }
                } else if retry_count >= policy.max_retries {
                    TransferEvent::TransferReversalFailed {
                        refund_id: pending.refund_id,
                        failure: ReversalFailureKind::Exhausted,
                        error: clip(error),
                        at: *now,
                    }
                } else {
                    TransferEvent::TransferReversalRetryScheduled {
                        refund_id: pending.refund_id,
                        error: clip(error),
                        retry_count,
                        next_retry_at: after(*now, backoff_delay(policy, t.reversal_retry_count)),
                        at: *now,
                    }
                };
                Ok(vec![event])
            }

            TransferCommand::RecordReversalOutcomeUnknown { error, now } => {
                match (t.status, &t.pending_reversal) {
                    (TransferStatus::ReversalPending, Some(p)) => {
                        Ok(vec![TransferEvent::TransferReversalOutcomeUnknown {
                            refund_id: p.refund_id,
                            attempt: p.attempt,
                            error: clip(error),
                            at: *now,
                        }])
                    }
                    (TransferStatus::ReversalIndeterminate, _) => Ok(vec![]),
                    // A racing worker recorded the answer already.
                    (
                        TransferStatus::Reversed
                        | TransferStatus::PartiallyReversed
                        | TransferStatus::ReversalFailed,
                        None,
                    ) => Ok(vec![]),
                    _ => Err(invalid()),
                }
            }

            TransferCommand::RecordReversalAbsent { attempt, now } => {
                match (t.status, &t.pending_reversal) {
                    (TransferStatus::ReversalIndeterminate, Some(p)) if p.attempt == *attempt => {
                        Ok(vec![TransferEvent::TransferReversalAttemptAbsent {
                            refund_id: p.refund_id,
                            absent_attempt: p.attempt,
                            attempt: p.attempt.saturating_add(1),
                            at: *now,
                        }])
                    }
                    // Moved on meanwhile: a later attempt, or answered.
                    (
                        TransferStatus::ReversalPending | TransferStatus::ReversalIndeterminate,
                        Some(p),
                    ) if p.attempt > *attempt => Ok(vec![]),
                    (
                        TransferStatus::Reversed
                        | TransferStatus::PartiallyReversed
                        | TransferStatus::ReversalFailed,
                        None,
                    ) => Ok(vec![]),
                    _ => Err(invalid()),
                }
            }

            TransferCommand::FailReversalWithoutTransferId { now } => {
                let pending = match (t.status, &t.pending_reversal) {
                    (TransferStatus::ReversalPending, Some(p)) => p,
                    (TransferStatus::ReversalFailed, _) => return Ok(vec![]),
                    _ => return Err(invalid()),
                };
                if let Some(id) = &t.stripe_transfer_id {
                    return Err(TransferRejection::StripeTransferIdPresent(id.clone()));
                }
                Ok(vec![TransferEvent::TransferReversalFailed {
                    refund_id: pending.refund_id,
                    failure: ReversalFailureKind::MissingStripeTransferId,
                    error: "transfer has no stripe_transfer_id".to_owned(),
                    at: *now,
                }])
            }
        }
    }

    fn evolve(
        state: TransferState,
        event: &TransferEvent,
    ) -> Result<TransferState, InvalidHistory> {
        let err = InvalidHistory {
            state: state.status().map_or("empty", |s| s.as_str()).to_owned(),
            event_type: event.event_type().to_owned(),
        };
        if let TransferEvent::TransferScheduled {
            transfer_id,
            order_id,
            seller_id,
            destination,
            amount,
            at,
        } = event
        {
            if state.transfer.is_some() {
                return Err(err);
            }
            return Ok(TransferState {
                transfer: Some(ScheduledTransfer {
                    transfer_id: *transfer_id,
                    order_id: *order_id,
                    seller_id: seller_id.clone(),
                    destination: destination.clone(),
                    scheduled_amount: *amount,
                    amount: *amount,
                    status: TransferStatus::Pending,
                    status_since: *at,
                    attempt: 1,
                    retry_count: 0,
                    next_retry_at: None,
                    last_error: None,
                    last_failure_definitive: false,
                    stripe_transfer_id: None,
                    transferred_minor: 0,
                    reversed_minor: 0,
                    pending_reversal: None,
                    reversal_retry_count: 0,
                    reductions: Vec::new(),
                    reversal_refunds: Vec::new(),
                    stripe_reversal_ids: Vec::new(),
                    anomalies: Vec::new(),
                    resolved_anomalies: Vec::new(),
                }),
            });
        }
        let Some(mut t) = state.transfer else {
            return Err(err);
        };
        fn move_to(t: &mut ScheduledTransfer, status: TransferStatus, at: DateTime<Utc>) {
            t.status = status;
            t.status_since = at;
        }
        let require = |ok: bool| if ok { Ok(()) } else { Err(err.clone()) };
        match event {
            TransferEvent::TransferScheduled { .. } => return Err(err),
            TransferEvent::TransferCompleted {
                stripe_transfer_id,
                amount,
                at,
                ..
            } => {
                require(matches!(
                    t.status,
                    TransferStatus::Pending | TransferStatus::Indeterminate
                ))?;
                t.stripe_transfer_id = stripe_transfer_id.clone();
                t.transferred_minor = amount.minor;
                t.next_retry_at = None;
                move_to(&mut t, TransferStatus::Completed, *at);
            }
            TransferEvent::TransferFailed {
                error,
                definitive,
                retry_count,
                next_retry_at,
                at,
                ..
            } => {
                require(t.status == TransferStatus::Pending)?;
                t.retry_count = *retry_count;
                t.next_retry_at = Some(*next_retry_at);
                t.last_error = Some(error.clone());
                t.last_failure_definitive = *definitive;
                move_to(&mut t, TransferStatus::Failed, *at);
            }
            TransferEvent::TransferPermanentlyFailed {
                error,
                definitive,
                retry_count,
                at,
                ..
            } => {
                require(t.status == TransferStatus::Pending)?;
                t.retry_count = *retry_count;
                t.next_retry_at = None;
                t.last_error = Some(error.clone());
                t.last_failure_definitive = *definitive;
                move_to(&mut t, TransferStatus::PermanentlyFailed, *at);
            }
            TransferEvent::TransferRetried { attempt, at, .. } => {
                require(matches!(
                    t.status,
                    TransferStatus::Failed | TransferStatus::PermanentlyFailed
                ))?;
                // An operator's retry of an exhausted transfer gets a fresh
                // retry budget.
                if t.status == TransferStatus::PermanentlyFailed {
                    t.retry_count = 0;
                }
                t.attempt = *attempt;
                t.next_retry_at = None;
                move_to(&mut t, TransferStatus::Pending, *at);
            }
            TransferEvent::TransferReduced {
                refund_id,
                remaining,
                ..
            } => {
                require(t.status.is_unpaid() || t.status == TransferStatus::Indeterminate)?;
                t.amount = *remaining;
                t.reductions.push(*refund_id);
            }
            TransferEvent::TransferCancelled { at, .. } => {
                require(t.status.is_unpaid())?;
                t.next_retry_at = None;
                move_to(&mut t, TransferStatus::Cancelled, *at);
            }
            TransferEvent::TransferReversalRequested {
                refund_id,
                amount,
                at,
            } => {
                require(matches!(
                    t.status,
                    TransferStatus::Completed | TransferStatus::PartiallyReversed
                ))?;
                t.pending_reversal = Some(PendingReversal {
                    refund_id: *refund_id,
                    amount_minor: amount.minor,
                    attempt: 1,
                });
                t.reversal_refunds.push(*refund_id);
                t.reversal_retry_count = 0;
                t.next_retry_at = None;
                move_to(&mut t, TransferStatus::ReversalPending, *at);
            }
            TransferEvent::TransferReversed {
                stripe_reversal_id,
                reversed_total_minor,
                fully_reversed,
                at,
                ..
            } => {
                require(reversal_open(t.status))?;
                t.reversed_minor = *reversed_total_minor;
                t.stripe_reversal_ids.push(stripe_reversal_id.clone());
                t.pending_reversal = None;
                t.next_retry_at = None;
                let status = if *fully_reversed {
                    TransferStatus::Reversed
                } else {
                    TransferStatus::PartiallyReversed
                };
                move_to(&mut t, status, *at);
            }
            TransferEvent::TransferAlreadyReversed {
                reversed_total_minor,
                fully_reversed,
                at,
                ..
            } => {
                require(reversal_open(t.status))?;
                t.reversed_minor = *reversed_total_minor;
                t.pending_reversal = None;
                t.next_retry_at = None;
                let status = if *fully_reversed {
                    TransferStatus::Reversed
                } else {
                    TransferStatus::PartiallyReversed
                };
                move_to(&mut t, status, *at);
            }
            TransferEvent::TransferReversalRetryScheduled {
                error,
                retry_count,
                next_retry_at,
                ..
            } => {
                require(t.status == TransferStatus::ReversalPending)?;
                t.reversal_retry_count = *retry_count;
                t.next_retry_at = Some(*next_retry_at);
                t.last_error = Some(error.clone());
            }
            TransferEvent::TransferReversalFailed { error, at, .. } => {
                require(t.status == TransferStatus::ReversalPending)?;
                t.pending_reversal = None;
                t.next_retry_at = None;
                t.last_error = Some(error.clone());
                move_to(&mut t, TransferStatus::ReversalFailed, *at);
            }
            TransferEvent::TransferOutcomeUnknown { error, at, .. } => {
                require(t.status == TransferStatus::Pending)?;
                t.next_retry_at = None;
                t.last_error = Some(error.clone());
                move_to(&mut t, TransferStatus::Indeterminate, *at);
            }
            TransferEvent::TransferAttemptAbsent {
                absent_attempt,
                attempt,
                at,
            } => {
                require(t.status == TransferStatus::Indeterminate && t.attempt == *absent_attempt)?;
                t.attempt = *attempt;
                move_to(&mut t, TransferStatus::Pending, *at);
            }
            TransferEvent::TransferAnomalyRecorded {
                kind, provider_id, ..
            } => {
                t.anomalies.push((*kind, provider_id.clone()));
            }
            TransferEvent::TransferAnomalyResolved {
                kind, provider_id, ..
            } => {
                let key = (*kind, provider_id.clone());
                require(t.anomalies.contains(&key))?;
                t.resolved_anomalies.push(key);
            }
            TransferEvent::TransferReversalOutcomeUnknown { error, at, .. } => {
                require(t.status == TransferStatus::ReversalPending)?;
                t.next_retry_at = None;
                t.last_error = Some(error.clone());
                move_to(&mut t, TransferStatus::ReversalIndeterminate, *at);
            }
            TransferEvent::TransferReversalAttemptAbsent {
                absent_attempt,
                attempt,
                at,
                ..
            } => {
                let pending = t.pending_reversal.as_mut();
                let matches = pending
                    .as_ref()
                    .is_some_and(|p| p.attempt == *absent_attempt);
                require(t.status == TransferStatus::ReversalIndeterminate && matches)?;
                if let Some(p) = t.pending_reversal.as_mut() {
                    p.attempt = *attempt;
                }
                t.reversal_retry_count = 0;
                move_to(&mut t, TransferStatus::ReversalPending, *at);
            }
        }
        Ok(TransferState { transfer: Some(t) })
    }
}
