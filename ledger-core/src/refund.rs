//! The refund aggregate (`refund-{refund_id}`): one Hyperswitch refund.
//!
//! **Guarantees:**
//! - `requested → submitted → succeeded | failed`, plus `requested → failed`;
//!   nothing else.
//! - The only PSP refund id ever accepted is [`psp_refund_id_for`] of this
//!   refund, so a status for someone else's refund is rejected.
//! - `amount_minor` is the sum of the lines, and each line's seller share plus
//!   fee is its total, so `RefundSucceeded` posts a balanced entry on its own.
//! - Terminal + the same outcome yields zero events; terminal + a conflicting
//!   outcome changes nothing and is recorded once as an anomaly.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::EventSet;
use crate::decider::{Decider, InvalidHistory};
use crate::ids::{
    OrderId, PaymentId, ProductId, PspRefundId, RefundId, SellerAccount, SellerId,
    psp_refund_id_for,
};
use crate::money::{Currency, checked_sum};
use crate::order::ORDER_LINES_MAX;
use crate::psp::RefundPspStatus;
use crate::text::{clip, clip_opt};

/// One refunded order line with its frozen split.
///
/// **Guarantees** (checked by [`Refund`] on `Request`): `total_minor > 0`,
/// `fee_minor ≥ 0`, `seller_minor ≥ 0`, `fee_minor + seller_minor = total_minor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundLine {
    pub product_id: ProductId,
    pub seller_id: SellerId,
    pub seller_account: SellerAccount,
    pub total_minor: i64,
    pub fee_minor: i64,
    pub seller_minor: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Requested,
    Submitted,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 4] = [
        RefundStatus::Requested,
        RefundStatus::Submitted,
        RefundStatus::Succeeded,
        RefundStatus::Failed,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            RefundStatus::Requested => "requested",
            RefundStatus::Submitted => "submitted",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, RefundStatus::Succeeded | RefundStatus::Failed)
    }
}

impl std::fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why money goes back, as the PSP understands it: Hyperswitch accepts only
/// these three `reason`s when the connector is Stripe (psp.md). The buyer's
/// free-text reason travels separately.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RefundReasonCode {
    Duplicate,
    Fraudulent,
    /// What a refund without an explicit code is.
    #[default]
    RequestedByCustomer,
}

impl RefundReasonCode {
    pub const ALL: [RefundReasonCode; 3] = [
        RefundReasonCode::Duplicate,
        RefundReasonCode::Fraudulent,
        RefundReasonCode::RequestedByCustomer,
    ];
    /// The allowed values, for error messages.
    pub const ALLOWED: &'static str = "duplicate, fraudulent, requested_by_customer";

    pub fn as_str(&self) -> &'static str {
        match self {
            RefundReasonCode::Duplicate => "duplicate",
            RefundReasonCode::Fraudulent => "fraudulent",
            RefundReasonCode::RequestedByCustomer => "requested_by_customer",
        }
    }

    /// Exact (case-sensitive) match of one of [`RefundReasonCode::ALLOWED`].
    pub fn parse(text: &str) -> Option<RefundReasonCode> {
        RefundReasonCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
    }
}

impl std::fmt::Display for RefundReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundFailureKind {
    /// The PSP answered `failed` (or rejected the create call).
    PspFailed,
    /// Phase 1 was recorded but no PSP refund id ever followed.
    Orphaned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundAnomalyKind {
    /// A PSP outcome contradicting the recorded terminal one.
    ConflictingStatus,
    /// The PSP accepted a refund the ledger had already given up on as an
    /// orphan; its lines were released and money may move anyway.
    SubmittedAfterFailure,
    /// The PSP answered something the client cannot read (an unknown
    /// status, a broken body): the refund waits for an operator instead of
    /// being asked again and again.
    UnreadableAnswer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundCommand {
    /// Phase 1: record the refund before calling the PSP.
    Request {
        refund_id: RefundId,
        order_id: OrderId,
        payment_id: PaymentId,
        amount_minor: i64,
        currency: Currency,
        lines: Vec<RefundLine>,
        reason: String,
        /// `None`: the API caller gave none ([`RefundReasonCode::default`]
        /// is sent to the PSP).
        reason_code: Option<RefundReasonCode>,
        now: DateTime<Utc>,
    },
    /// Phase 2: the PSP accepted the refund under this id.
    Submit {
        psp_refund_id: PspRefundId,
        now: DateTime<Utc>,
    },
    /// A status from a webhook, the reconciler or the create call's answer.
    ApplyPspStatus {
        psp_refund_id: Option<PspRefundId>,
        status: RefundPspStatus,
        error_message: Option<String>,
        now: DateTime<Utc>,
    },
    /// The sweeper found this refund `requested` for too long (its clock, its
    /// threshold).
    MarkOrphaned { now: DateTime<Utc> },
    /// The PSP's answer to `call` could not be read (`value` says what was
    /// unreadable). Recorded once per value as an anomaly; the status does
    /// not change.
    RecordUnreadable {
        call: String,
        value: String,
        now: DateTime<Utc>,
    },
}

impl RefundCommand {
    pub fn name(&self) -> &'static str {
        match self {
            RefundCommand::Request { .. } => "Request",
            RefundCommand::Submit { .. } => "Submit",
            RefundCommand::ApplyPspStatus { .. } => "ApplyPspStatus",
            RefundCommand::MarkOrphaned { .. } => "MarkOrphaned",
            RefundCommand::RecordUnreadable { .. } => "RecordUnreadable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum RefundEvent {
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
        at: DateTime<Utc>,
    },
    RefundSubmitted {
        psp_refund_id: PspRefundId,
        at: DateTime<Utc>,
    },
    RefundSucceeded {
        refund_id: RefundId,
        order_id: OrderId,
        payment_id: PaymentId,
        psp_refund_id: PspRefundId,
        amount_minor: i64,
        currency: Currency,
        lines: Vec<RefundLine>,
        at: DateTime<Utc>,
    },
    RefundFailed {
        refund_id: RefundId,
        order_id: OrderId,
        failure: RefundFailureKind,
        error_message: Option<String>,
        at: DateTime<Utc>,
    },
    /// Changes no status; surfaced to operators.
    RefundAnomalyRecorded {
        kind: RefundAnomalyKind,
        /// What was observed: a PSP status, or `submitted`.
        observed: String,
        current_status: RefundStatus,
        error_message: Option<String>,
        at: DateTime<Utc>,
    },
}

impl EventSet for RefundEvent {
    const EVENT_TYPES: &'static [&'static str] = &[
        "RefundRequested",
        "RefundSubmitted",
        "RefundSucceeded",
        "RefundFailed",
        "RefundAnomalyRecorded",
    ];
}

impl RefundEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            RefundEvent::RefundRequested { .. } => "RefundRequested",
            RefundEvent::RefundSubmitted { .. } => "RefundSubmitted",
            RefundEvent::RefundSucceeded { .. } => "RefundSucceeded",
            RefundEvent::RefundFailed { .. } => "RefundFailed",
            RefundEvent::RefundAnomalyRecorded { .. } => "RefundAnomalyRecorded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundRejection {
    #[error("the refund has not been requested")]
    RefundNotRequested,
    #[error("this stream holds refund {expected}, not {got}")]
    RefundIdMismatch { expected: RefundId, got: RefundId },
    #[error("a refund amount must be positive")]
    NonPositiveAmount,
    #[error("a refund needs at least one line")]
    NoLines,
    #[error("{count} lines exceed the limit of {max}")]
    TooManyLines { count: usize, max: usize },
    #[error("product {product_id} appears twice")]
    DuplicateProduct { product_id: ProductId },
    #[error("line {product_id}: share and fee must be non-negative and add up to a positive total")]
    LineSplitMismatch { product_id: ProductId },
    #[error("lines add up to {lines_minor}, not the refund amount {amount_minor}")]
    LinesDoNotSumToAmount { amount_minor: i64, lines_minor: i64 },
    #[error("amounts overflow a 64-bit minor-unit total")]
    AmountOverflow,
    #[error("PSP refund id {got} is not this refund's {expected}")]
    PspRefundIdMismatch {
        expected: PspRefundId,
        got: PspRefundId,
    },
    #[error("{command} is not allowed while the refund is {from}")]
    InvalidTransition {
        from: RefundStatus,
        command: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeenRefundAnomaly {
    pub kind: RefundAnomalyKind,
    pub observed: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestedRefund {
    pub refund_id: RefundId,
    pub order_id: OrderId,
    pub payment_id: PaymentId,
    pub amount_minor: i64,
    pub currency: Currency,
    pub lines: Vec<RefundLine>,
    pub reason: String,
    pub reason_code: Option<RefundReasonCode>,
    pub status: RefundStatus,
    pub status_since: DateTime<Utc>,
    pub requested_at: DateTime<Utc>,
    /// Known once phase 2 happened (`submitted`, or found at the PSP).
    pub psp_refund_id: Option<PspRefundId>,
    pub failure: Option<RefundFailureKind>,
    pub error_message: Option<String>,
    pub anomalies: Vec<SeenRefundAnomaly>,
}

/// `refund: None` until `RefundRequested`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RefundState {
    pub refund: Option<RequestedRefund>,
}

impl RefundState {
    pub fn status(&self) -> Option<RefundStatus> {
        self.refund.as_ref().map(|r| r.status)
    }
}

/// Order-side reason when a refund failed at the PSP without a message.
pub const PSP_REFUSED_REASON: &str = "the PSP refused the refund";
/// Order-side reason when the sweeper failed a refund that never reached
/// the PSP.
pub const ORPHANED_REASON: &str = "orphaned: the refund never reached the PSP";

impl RequestedRefund {
    /// What the refund's order must do once this refund is terminal:
    /// `succeeded` completes the reserved lines, `failed` releases them;
    /// `None` while it is still in flight. The cause
    /// (`refund:{id}:settle:{status}`) derives the command id, so every path
    /// that settles (webhook, worker, reconciler) converges on one set of
    /// events and a second call appends nothing.
    pub fn order_settlement(
        &self,
        now: DateTime<Utc>,
    ) -> Option<(String, crate::order::OrderCommand)> {
        use crate::order::OrderCommand;
        let refund_id = self.refund_id;
        let command = match self.status {
            RefundStatus::Succeeded => OrderCommand::CompleteRefund { refund_id, now },
            RefundStatus::Failed => OrderCommand::ReleaseRefund {
                refund_id,
                reason: match (self.failure, &self.error_message) {
                    (_, Some(message)) => message.clone(),
                    (Some(RefundFailureKind::Orphaned), None) => ORPHANED_REASON.to_owned(),
                    _ => PSP_REFUSED_REASON.to_owned(),
                },
                now,
            },
            RefundStatus::Requested | RefundStatus::Submitted => return None,
        };
        Some((
            format!("refund:{refund_id}:settle:{}", self.status.as_str()),
            command,
        ))
    }
}

/// The refund decider.
#[derive(Debug, Clone, Copy, Default)]
pub struct Refund;

fn validate_lines(amount_minor: i64, lines: &[RefundLine]) -> Result<(), RefundRejection> {
    if amount_minor <= 0 {
        return Err(RefundRejection::NonPositiveAmount);
    }
    if lines.is_empty() {
        return Err(RefundRejection::NoLines);
    }
    if lines.len() > ORDER_LINES_MAX {
        return Err(RefundRejection::TooManyLines {
            count: lines.len(),
            max: ORDER_LINES_MAX,
        });
    }
    let mut seen = BTreeSet::new();
    for line in lines {
        if !seen.insert(&line.product_id) {
            return Err(RefundRejection::DuplicateProduct {
                product_id: line.product_id.clone(),
            });
        }
        let split_ok = line.total_minor > 0
            && line.fee_minor >= 0
            && line.seller_minor >= 0
            && line.fee_minor.checked_add(line.seller_minor) == Some(line.total_minor);
        if !split_ok {
            return Err(RefundRejection::LineSplitMismatch {
                product_id: line.product_id.clone(),
            });
        }
    }
    let lines_minor = checked_sum(lines.iter().map(|l| l.total_minor))
        .map_err(|_| RefundRejection::AmountOverflow)?;
    if lines_minor != amount_minor {
        return Err(RefundRejection::LinesDoNotSumToAmount {
            amount_minor,
            lines_minor,
        });
    }
    Ok(())
}

impl Decider for Refund {
    type State = RefundState;
    type Command = RefundCommand;
    type Event = RefundEvent;
    type Rejection = RefundRejection;

    const STREAM_KIND: &'static str = "refund";

    fn decide(
        state: &RefundState,
        command: &RefundCommand,
    ) -> Result<Vec<RefundEvent>, RefundRejection> {
        if let RefundCommand::Request {
            refund_id,
            order_id,
            payment_id,
            amount_minor,
            currency,
            lines,
            reason,
            reason_code,
            now,
        } = command
        {
            validate_lines(*amount_minor, lines)?;
            return match &state.refund {
                Some(r) if r.refund_id == *refund_id => Ok(vec![]),
                Some(r) => Err(RefundRejection::RefundIdMismatch {
                    expected: r.refund_id,
                    got: *refund_id,
                }),
                None => Ok(vec![RefundEvent::RefundRequested {
                    refund_id: *refund_id,
                    order_id: *order_id,
                    payment_id: payment_id.clone(),
                    amount_minor: *amount_minor,
                    currency: *currency,
                    lines: lines.clone(),
                    reason: clip(reason),
                    reason_code: *reason_code,
                    at: *now,
                }]),
            };
        }
        let r = state
            .refund
            .as_ref()
            .ok_or(RefundRejection::RefundNotRequested)?;
        let invalid = || RefundRejection::InvalidTransition {
            from: r.status,
            command: command.name(),
        };
        let expected_psp_id = psp_refund_id_for(r.refund_id);
        let check_psp_id = |got: &PspRefundId| {
            if *got == expected_psp_id {
                Ok(())
            } else {
                Err(RefundRejection::PspRefundIdMismatch {
                    expected: expected_psp_id.clone(),
                    got: got.clone(),
                })
            }
        };
        let anomaly = |kind: RefundAnomalyKind, observed: &str, error_message: Option<&String>| {
            let seen = r
                .anomalies
                .iter()
                .any(|a| a.kind == kind && a.observed == observed);
            (!seen).then(|| RefundEvent::RefundAnomalyRecorded {
                kind,
                observed: observed.to_owned(),
                current_status: r.status,
                error_message: clip_opt(error_message),
                at: command_now(command),
            })
        };
        let submitted = |now: DateTime<Utc>| RefundEvent::RefundSubmitted {
            psp_refund_id: expected_psp_id.clone(),
            at: now,
        };
        let succeeded = |now: DateTime<Utc>| RefundEvent::RefundSucceeded {
            refund_id: r.refund_id,
            order_id: r.order_id,
            payment_id: r.payment_id.clone(),
            psp_refund_id: expected_psp_id.clone(),
            amount_minor: r.amount_minor,
            currency: r.currency,
            lines: r.lines.clone(),
            at: now,
        };
        let failed =
            |failure: RefundFailureKind, error_message: Option<&String>, now: DateTime<Utc>| {
                RefundEvent::RefundFailed {
                    refund_id: r.refund_id,
                    order_id: r.order_id,
                    failure,
                    error_message: clip_opt(error_message),
                    at: now,
                }
            };
        let orphaned = r.failure == Some(RefundFailureKind::Orphaned);

        match command {
            RefundCommand::Request { .. } => Err(invalid()),
            RefundCommand::Submit { psp_refund_id, now } => {
                check_psp_id(psp_refund_id)?;
                match r.status {
                    RefundStatus::Requested => Ok(vec![submitted(*now)]),
                    RefundStatus::Failed if r.psp_refund_id.is_none() => {
                        Ok(
                            anomaly(RefundAnomalyKind::SubmittedAfterFailure, "submitted", None)
                                .into_iter()
                                .collect(),
                        )
                    }
                    RefundStatus::Submitted | RefundStatus::Succeeded | RefundStatus::Failed => {
                        Ok(vec![])
                    }
                }
            }
            RefundCommand::ApplyPspStatus {
                psp_refund_id,
                status,
                error_message,
                now,
            } => {
                if let Some(id) = psp_refund_id {
                    check_psp_id(id)?;
                }
                let error_message = error_message.as_ref();
                let events = match (r.status, status) {
                    // The PSP knows the refund, so phase 2 happened even if
                    // we crashed before recording it.
                    (
                        RefundStatus::Requested,
                        RefundPspStatus::Pending | RefundPspStatus::Review,
                    ) => psp_refund_id.iter().map(|_| submitted(*now)).collect(),
                    (RefundStatus::Requested, RefundPspStatus::Succeeded) => {
                        vec![submitted(*now), succeeded(*now)]
                    }
                    (
                        RefundStatus::Requested | RefundStatus::Submitted,
                        RefundPspStatus::Failed,
                    ) => {
                        vec![failed(RefundFailureKind::PspFailed, error_message, *now)]
                    }
                    (RefundStatus::Submitted, RefundPspStatus::Succeeded) => vec![succeeded(*now)],
                    (
                        RefundStatus::Submitted,
                        RefundPspStatus::Pending | RefundPspStatus::Review,
                    ) => vec![],
                    (RefundStatus::Succeeded, RefundPspStatus::Succeeded)
                    | (RefundStatus::Failed, RefundPspStatus::Failed) => vec![],
                    // Stale in-flight status after a terminal one.
                    (
                        RefundStatus::Succeeded,
                        RefundPspStatus::Pending | RefundPspStatus::Review,
                    ) => vec![],
                    (RefundStatus::Failed, RefundPspStatus::Pending | RefundPspStatus::Review)
                        if !orphaned =>
                    {
                        vec![]
                    }
                    // Failed-then-succeeded, succeeded-then-failed, or the PSP
                    // holding a refund we declared orphaned.
                    (_, s) => anomaly(
                        RefundAnomalyKind::ConflictingStatus,
                        s.as_str(),
                        error_message,
                    )
                    .into_iter()
                    .collect(),
                };
                Ok(events)
            }
            RefundCommand::MarkOrphaned { now } => match r.status {
                RefundStatus::Requested => {
                    Ok(vec![failed(RefundFailureKind::Orphaned, None, *now)])
                }
                RefundStatus::Failed => Ok(vec![]),
                RefundStatus::Submitted | RefundStatus::Succeeded => Err(invalid()),
            },
            RefundCommand::RecordUnreadable { call, value, .. } => Ok(anomaly(
                RefundAnomalyKind::UnreadableAnswer,
                &clip(value),
                Some(&clip(call)),
            )
            .into_iter()
            .collect()),
        }
    }

    fn evolve(state: RefundState, event: &RefundEvent) -> Result<RefundState, InvalidHistory> {
        let err = InvalidHistory {
            state: state.status().map_or("empty", |s| s.as_str()).to_owned(),
            event_type: event.event_type().to_owned(),
        };
        if let RefundEvent::RefundRequested {
            refund_id,
            order_id,
            payment_id,
            amount_minor,
            currency,
            lines,
            reason,
            reason_code,
            at,
        } = event
        {
            if state.refund.is_some() {
                return Err(err);
            }
            return Ok(RefundState {
                refund: Some(RequestedRefund {
                    refund_id: *refund_id,
                    order_id: *order_id,
                    payment_id: payment_id.clone(),
                    amount_minor: *amount_minor,
                    currency: *currency,
                    lines: lines.clone(),
                    reason: reason.clone(),
                    reason_code: *reason_code,
                    status: RefundStatus::Requested,
                    status_since: *at,
                    requested_at: *at,
                    psp_refund_id: None,
                    failure: None,
                    error_message: None,
                    anomalies: Vec::new(),
                }),
            });
        }
        let Some(mut r) = state.refund else {
            return Err(err);
        };
        match event {
            RefundEvent::RefundRequested { .. } => return Err(err),
            RefundEvent::RefundSubmitted { psp_refund_id, at } => {
                if r.status != RefundStatus::Requested {
                    return Err(err);
                }
                r.psp_refund_id = Some(psp_refund_id.clone());
                r.status = RefundStatus::Submitted;
                r.status_since = *at;
            }
            RefundEvent::RefundSucceeded { at, .. } => {
                if r.status != RefundStatus::Submitted {
                    return Err(err);
                }
                r.status = RefundStatus::Succeeded;
                r.status_since = *at;
            }
            RefundEvent::RefundFailed {
                failure,
                error_message,
                at,
                ..
            } => {
                if !matches!(r.status, RefundStatus::Requested | RefundStatus::Submitted) {
                    return Err(err);
                }
                r.failure = Some(*failure);
                r.error_message = error_message.clone();
                r.status = RefundStatus::Failed;
                r.status_since = *at;
            }
            RefundEvent::RefundAnomalyRecorded { kind, observed, .. } => {
                r.anomalies.push(SeenRefundAnomaly {
                    kind: *kind,
                    observed: observed.clone(),
                })
            }
        }
        Ok(RefundState { refund: Some(r) })
    }
}

fn command_now(command: &RefundCommand) -> DateTime<Utc> {
    match command {
        RefundCommand::Request { now, .. }
        | RefundCommand::Submit { now, .. }
        | RefundCommand::ApplyPspStatus { now, .. }
        | RefundCommand::MarkOrphaned { now }
        | RefundCommand::RecordUnreadable { now, .. } => *now,
    }
}
