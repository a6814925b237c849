//! `transfer` and `transfer_retry`: pay seller transfers out through Stripe
//! under `Idempotency-Key: transfer:{transfer_id}:{attempt}`, and retry the
//! ones that failed definitively once their backoff is over.
//!
//! `attempt` is the core's: it moves only when a retry follows a
//! *definitive* failure or a read proved the last attempt made nothing. A
//! timeout or 5xx is never retried blind: the transfer is `indeterminate`
//! until a read of Stripe (see `resolve.rs`).

use chrono::{DateTime, Utc};
use ledger_core::Amount;
use ledger_core::ids::{OrderId, TransferId, transfer_id};
use ledger_core::order::SellerShare;
use ledger_core::transfer::{
    ScheduledTransfer, SellerTransfer, TransferAnomalyKind, TransferCommand, TransferStatus,
};
use ledger_core::{Currency, Source};
use ledger_psp::{CreateOutcome, CreateTransfer, PayoutReader};
use ledger_store::work::{WorkItem, WorkOrder};
use serde::Serialize;

use super::resolve::{
    INDETERMINATE_READ_DELAY, KEY_TRUSTED_FOR, PayoutRead, absence_provable, key_may_be_gone,
    payout_metadata, payout_mismatch, read_payout, record_anomaly, transfer_group,
};
use super::worker::{Step, WorkerKind, stream_of};
use super::{Actor, Ctx, ManagerError, human_duration};

/// Schedules one transfer per seller with a positive share (idempotent:
/// deterministic ids, and the core ignores a second `Schedule`). Returns
/// the transfers' ids.
pub(crate) async fn schedule_transfers(
    ctx: &Ctx,
    order_id: OrderId,
    currency: Currency,
    sellers: &[SellerShare],
    at: DateTime<Utc>,
    actor: Actor,
) -> Result<Vec<TransferId>, ManagerError> {
    let mut ids = Vec::with_capacity(sellers.len());
    for share in sellers.iter().filter(|s| s.seller_minor > 0) {
        let id = transfer_id(order_id, &share.seller_id);
        ctx.run::<SellerTransfer>(
            &id.stream_id(),
            &format!("transfer:{id}:schedule"),
            actor,
            &TransferCommand::Schedule {
                transfer_id: id,
                order_id,
                seller_id: share.seller_id.clone(),
                destination: share.seller_account.clone(),
                amount: Amount::new(share.seller_minor, currency),
                now: at,
            },
            "Schedule",
        )
        .await?;
        ids.push(id);
    }
    Ok(ids)
}

pub(crate) async fn step_transfer(
    ctx: &Ctx,
    item: &WorkItem,
    now: DateTime<Utc>,
) -> Result<Step, ManagerError> {
    let stream = stream_of(item)?;
    let Some(t) = ctx.load::<SellerTransfer>(&stream).await?.state.transfer else {
        tracing::warn!(stream_id = %stream, "transfer: no transfer in this stream");
        return Ok(Step::Done);
    };
    match t.status {
        TransferStatus::Pending => pay(ctx, WorkerKind::Transfer, &t, item, now).await,
        TransferStatus::Indeterminate => {
            resolve_and_pay(ctx, WorkerKind::Transfer, &t, item, now).await
        }
        TransferStatus::Completed => {
            reverse_excess(ctx, &t, now).await?;
            Ok(Step::Done)
        }
        _ => Ok(Step::Done),
    }
}

pub(crate) async fn step_retry(
    ctx: &Ctx,
    item: &WorkItem,
    now: DateTime<Utc>,
) -> Result<Step, ManagerError> {
    let stream = stream_of(item)?;
    let Some(t) = ctx.load::<SellerTransfer>(&stream).await?.state.transfer else {
        tracing::warn!(stream_id = %stream, "transfer_retry: no transfer in this stream");
        return Ok(Step::Done);
    };
    match t.status {
        TransferStatus::Failed => {
            if let Some(due) = t.next_retry_at.filter(|due| *due > now) {
                return Ok(Step::Later {
                    due_at: due,
                    error: None,
                });
            }
            let handled = ctx
                .run::<SellerTransfer>(
                    &stream,
                    &format!(
                        "transfer:{}:retry:{}:worker",
                        t.transfer_id,
                        t.status_since.timestamp_micros()
                    ),
                    Actor::worker(WorkerKind::TransferRetry.name()),
                    &TransferCommand::Retry {
                        now,
                        by_operator: false,
                    },
                    "Retry",
                )
                .await?;
            let Some(t) = handled.state.transfer else {
                return Ok(Step::Done);
            };
            tracing::info!(
                stream_id = %stream, from_status = "failed", to_status = %t.status,
                attempt = t.attempt, retry_count = t.retry_count,
                "transfer_retry: transfer back to pending"
            );
            pay(ctx, WorkerKind::TransferRetry, &t, item, now).await
        }
        // Retried, but the payout did not happen yet (a crash in between).
        TransferStatus::Pending => pay(ctx, WorkerKind::TransferRetry, &t, item, now).await,
        TransferStatus::Indeterminate => {
            resolve_and_pay(ctx, WorkerKind::TransferRetry, &t, item, now).await
        }
        _ => Ok(Step::Done),
    }
}

/// What a read of Stripe did to an `indeterminate` transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// Stripe has it: recorded as completed with this Stripe id.
    Found(String),
    /// Stripe has none: the next attempt (a new key) may be sent.
    Absent { attempt: u32 },
    /// Stripe has something the ledger cannot record; an anomaly says what.
    Anomaly(TransferAnomalyKind),
    /// The transfer is not `indeterminate` (any more).
    NotIndeterminate,
}

/// Reads Stripe for an `indeterminate` transfer and records what it found.
/// A failed read is returned as [`ManagerError::Psp`] with nothing written.
pub(crate) async fn resolve(
    ctx: &Ctx,
    reader: &dyn PayoutReader,
    kind: &str,
    actor: Actor,
    t: &ScheduledTransfer,
    now: DateTime<Utc>,
) -> Result<Resolved, ManagerError> {
    let stream = t.transfer_id.stream_id();
    if t.status != TransferStatus::Indeterminate {
        return Ok(Resolved::NotIndeterminate);
    }
    let unknown_for = human_duration(now - t.status_since);
    match read_payout(reader, t).await {
        Err(e) if e.is_transient() => Err(e.into()),
        Err(e) => {
            record_anomaly(
                ctx,
                t,
                actor,
                TransferAnomalyKind::UnreadableAnswer,
                None,
                &e.to_string(),
                now,
            )
            .await?;
            Ok(Resolved::Anomaly(TransferAnomalyKind::UnreadableAnswer))
        }
        Ok(PayoutRead::Absent) => {
            absence_provable(t.status_since, now, &stream)?;
            let handled = ctx
                .run::<SellerTransfer>(
                    &stream,
                    &format!("transfer:{}:attempt:{}:absent", t.transfer_id, t.attempt),
                    actor,
                    &TransferCommand::RecordAbsent {
                        attempt: t.attempt,
                        now,
                    },
                    "RecordAbsent",
                )
                .await?;
            let after = handled.state.transfer.as_ref();
            let attempt = after.map_or(t.attempt, |a| a.attempt);
            tracing::info!(
                stream_id = %stream, from_status = "indeterminate",
                to_status = %after.map_or("none", |a| a.status.as_str()),
                absent_attempt = t.attempt, attempt, unknown_for = %unknown_for,
                cause = "stripe lists no transfer for this share",
                "{kind}: payout proven absent at Stripe; next attempt uses a new key"
            );
            Ok(Resolved::Absent { attempt })
        }
        Ok(PayoutRead::Found { view, others }) => {
            for other in &others {
                record_anomaly(
                    ctx,
                    t,
                    actor,
                    TransferAnomalyKind::DuplicateAtProvider,
                    Some(other.id.as_str()),
                    &format!(
                        "stripe holds {} transfers for this share: {} is recorded, {} ({}) is a second payout",
                        others.len() + 1,
                        view.id,
                        other.id,
                        other.amount
                    ),
                    now,
                )
                .await?;
            }
            if let Some(why) = payout_mismatch(t, &view) {
                let kind_of = if view.destination.is_none() {
                    TransferAnomalyKind::UnreadableAnswer
                } else {
                    TransferAnomalyKind::AmountMismatch
                };
                record_anomaly(ctx, t, actor, kind_of, Some(view.id.as_str()), &why, now).await?;
                return Ok(Resolved::Anomaly(kind_of));
            }
            ctx.run::<SellerTransfer>(
                &stream,
                &format!("transfer:{}:found:{}", t.transfer_id, view.id),
                actor,
                &TransferCommand::RecordSucceeded {
                    stripe_transfer_id: view.id.clone(),
                    amount: view.amount,
                    now,
                },
                "RecordSucceeded",
            )
            .await?;
            tracing::info!(
                stream_id = %stream, from_status = "indeterminate", to_status = "completed",
                stripe_transfer_id = %view.id, amount_minor = view.amount.minor,
                attempt = t.attempt, unknown_for = %unknown_for,
                cause = "stripe lists the transfer this share's lost answer made",
                "{kind}: payout found at Stripe; recorded as completed"
            );
            Ok(Resolved::Found(view.id.to_string()))
        }
    }
}

/// The worker's step for an `indeterminate` transfer: read, record, and
/// pay the next attempt when the read proved the last one made nothing.
async fn resolve_and_pay(
    ctx: &Ctx,
    kind: WorkerKind,
    t: &ScheduledTransfer,
    item: &WorkItem,
    now: DateTime<Utc>,
) -> Result<Step, ManagerError> {
    // An unreadable answer stays for an operator; reading again would
    // read the same thing and log it again.
    if t.has_open_anomaly(TransferAnomalyKind::UnreadableAnswer) {
        return Ok(Step::Done);
    }
    let actor = Actor::worker(kind.name());
    match resolve(ctx, &*ctx.payouts, kind.name(), actor, t, now).await {
        Ok(Resolved::Absent { .. }) => {
            let stream = t.transfer_id.stream_id();
            match ctx.load::<SellerTransfer>(&stream).await?.state.transfer {
                Some(next) if next.status == TransferStatus::Pending => {
                    pay(ctx, kind, &next, item, now).await
                }
                _ => Ok(Step::Done),
            }
        }
        Ok(Resolved::Found(_)) => {
            let stream = t.transfer_id.stream_id();
            if let Some(done) = ctx.load::<SellerTransfer>(&stream).await?.state.transfer {
                reverse_excess(ctx, &done, now).await?;
            }
            Ok(Step::Done)
        }
        Ok(Resolved::Anomaly(_) | Resolved::NotIndeterminate) => Ok(Step::Done),
        Err(ManagerError::TooEarly { .. }) => Ok(Step::Later {
            due_at: super::after(t.status_since, INDETERMINATE_READ_DELAY),
            error: None,
        }),
        Err(ManagerError::Psp(e)) => {
            let due_at = ctx.work_retry_at(now, item.attempts);
            tracing::warn!(
                stream_id = %t.transfer_id.stream_id(), attempt = t.attempt, retry_at = %due_at,
                error = %e,
                "{kind}: reading Stripe for an indeterminate payout failed; nothing sent, read again later"
            );
            Ok(Step::Later {
                due_at,
                error: Some(e.to_string()),
            })
        }
        Err(other) => Err(other),
    }
}

/// One Stripe call for a `pending` transfer, and its outcome recorded.
async fn pay(
    ctx: &Ctx,
    kind: WorkerKind,
    t: &ScheduledTransfer,
    item: &WorkItem,
    now: DateTime<Utc>,
) -> Result<Step, ManagerError> {
    let stream = t.transfer_id.stream_id();
    let actor = Actor::worker(kind.name());
    // Stripe may have forgotten a key this old: look for the payout first,
    // so a forgotten key can never make a second transfer.
    // A key used before without a definitive answer (a stream written
    // before outcomes could be indeterminate) may have made the payout.
    let key_used_unanswered = t.retry_count > 0 && !t.last_failure_definitive;
    if key_may_be_gone(t.status_since, now) || key_used_unanswered {
        match read_payout(&*ctx.payouts, t).await {
            Ok(PayoutRead::Absent) => {}
            Ok(PayoutRead::Found { .. }) => {
                // Let the resolution path record it (and any duplicate).
                ctx.run::<SellerTransfer>(
                    &stream,
                    &format!("transfer:{}:attempt:{}:stale-key", t.transfer_id, t.attempt),
                    actor,
                    &TransferCommand::RecordOutcomeUnknown {
                        error: format!(
                            "key {} is older than {}h and stripe lists a transfer for it",
                            t.idempotency_key(),
                            KEY_TRUSTED_FOR.num_hours()
                        ),
                        now,
                    },
                    "RecordOutcomeUnknown",
                )
                .await?;
                if let Some(next) = ctx.load::<SellerTransfer>(&stream).await?.state.transfer {
                    return Box::pin(resolve_and_pay(ctx, kind, &next, item, now)).await;
                }
                return Ok(Step::Done);
            }
            Err(e) => {
                let due_at = ctx.work_retry_at(now, item.attempts);
                tracing::warn!(
                    stream_id = %stream, attempt = t.attempt, retry_at = %due_at, error = %e,
                    "{kind}: the key may be gone at Stripe and the read before paying failed; nothing sent"
                );
                return Ok(Step::Later {
                    due_at,
                    error: Some(e.to_string()),
                });
            }
        }
    }
    let request = CreateTransfer {
        transfer_id: t.transfer_id,
        attempt: t.attempt,
        amount: t.amount,
        destination: t.destination.clone(),
        transfer_group: Some(transfer_group(t)),
        metadata: payout_metadata(t),
    };
    let answer = ctx.payouts.create_transfer(&request).await;
    match answer {
        Ok(view) if view.destination.is_none() => {
            // Money moved (a 2xx with an id), but the answer is not what
            // was asked for: stop for an operator.
            let detail = format!("create_transfer answered {} with destination null", view.id);
            unknown(ctx, kind, t, actor, &detail, now).await?;
            record_anomaly(
                ctx,
                t,
                actor,
                TransferAnomalyKind::UnreadableAnswer,
                Some(view.id.as_str()),
                &detail,
                now,
            )
            .await?;
            Ok(Step::Done)
        }
        Ok(view) => {
            let recorded = ctx
                .run::<SellerTransfer>(
                    &stream,
                    &format!("transfer:{}:attempt:{}:succeeded", t.transfer_id, t.attempt),
                    actor,
                    &TransferCommand::RecordSucceeded {
                        stripe_transfer_id: view.id.clone(),
                        amount: view.amount,
                        now,
                    },
                    "RecordSucceeded",
                )
                .await;
            let handled = match recorded {
                Ok(handled) => handled,
                Err(ManagerError::Rejected { reason, .. }) => {
                    // Paid at Stripe while the ledger stopped owing it (the
                    // order's lines were refunded meanwhile). Money moved;
                    // only an operator can claw it back.
                    record_anomaly(
                        ctx,
                        t,
                        actor,
                        TransferAnomalyKind::PaidWhileNotOwed,
                        Some(view.id.as_str()),
                        &format!(
                            "stripe paid {} as {} but the ledger refused it: {reason}",
                            view.amount, view.id
                        ),
                        now,
                    )
                    .await?;
                    return Ok(Step::Done);
                }
                Err(e) => return Err(e),
            };
            tracing::info!(
                stream_id = %stream, from_status = "pending", to_status = "completed",
                stripe_transfer_id = %view.id, amount_minor = view.amount.minor,
                attempt = t.attempt,
                "{kind}: transfer completed"
            );
            if let Some(t) = &handled.state.transfer {
                reverse_excess(ctx, t, now).await?;
            }
            Ok(Step::Done)
        }
        Err(e) => match e.create_outcome() {
            outcome @ CreateOutcome::RetrySameKey { after } => {
                let due_at = ctx.due_after(now, item.attempts, outcome);
                tracing::warn!(
                    stream_id = %stream, attempt = t.attempt, retry_at = %due_at,
                    retry_after_s = after.map(|d| d.as_secs()), error = %e,
                    "{kind}: Stripe did not take the transfer; retrying later with the same key"
                );
                Ok(Step::Later {
                    due_at,
                    error: Some(e.to_string()),
                })
            }
            CreateOutcome::NeedsOperator => {
                let due_at = ctx.work_retry_at(now, item.attempts);
                tracing::error!(
                    stream_id = %stream, attempt = t.attempt, retry_at = %due_at, error = %e,
                    "{kind}: Stripe call failed in a way only an operator can fix; retrying with the same key"
                );
                Ok(Step::Later {
                    due_at,
                    error: Some(e.to_string()),
                })
            }
            CreateOutcome::Unknown => {
                unknown(ctx, kind, t, actor, &e.to_string(), now).await?;
                Ok(Step::Later {
                    due_at: ctx.due_after(now, item.attempts, CreateOutcome::Unknown),
                    error: Some(e.to_string()),
                })
            }
            CreateOutcome::Unreadable => {
                unknown(ctx, kind, t, actor, &e.to_string(), now).await?;
                record_anomaly(
                    ctx,
                    t,
                    actor,
                    TransferAnomalyKind::UnreadableAnswer,
                    None,
                    &e.to_string(),
                    now,
                )
                .await?;
                Ok(Step::Done)
            }
            CreateOutcome::Refused => {
                let handled = ctx
                    .run::<SellerTransfer>(
                        &stream,
                        &format!("transfer:{}:attempt:{}:failed", t.transfer_id, t.attempt),
                        actor,
                        &TransferCommand::RecordFailed {
                            error: e.to_string(),
                            definitive: true,
                            policy: ctx.config.transfer_retry.policy,
                            now,
                        },
                        "RecordFailed",
                    )
                    .await?;
                let after = handled.state.transfer.as_ref();
                tracing::warn!(
                    stream_id = %stream, from_status = "pending",
                    to_status = %after.map_or("none", |t| t.status.as_str()),
                    attempt = t.attempt,
                    retry_count = after.map_or(0, |t| t.retry_count),
                    next_retry_at = ?after.and_then(|t| t.next_retry_at),
                    error = %e,
                    "{kind}: Stripe refused the transfer"
                );
                Ok(Step::Done)
            }
        },
    }
}

/// `pending` → `indeterminate`, with its log line.
async fn unknown(
    ctx: &Ctx,
    kind: WorkerKind,
    t: &ScheduledTransfer,
    actor: Actor,
    error: &str,
    now: DateTime<Utc>,
) -> Result<(), ManagerError> {
    let stream = t.transfer_id.stream_id();
    ctx.run::<SellerTransfer>(
        &stream,
        &format!("transfer:{}:attempt:{}:unknown", t.transfer_id, t.attempt),
        actor,
        &TransferCommand::RecordOutcomeUnknown {
            error: error.to_owned(),
            now,
        },
        "RecordOutcomeUnknown",
    )
    .await?;
    tracing::warn!(
        stream_id = %stream, from_status = "pending", to_status = "indeterminate",
        attempt = t.attempt, key = %t.idempotency_key(), error = %error,
        read_at = %super::after(now, INDETERMINATE_READ_DELAY),
        "{kind}: Stripe's answer leaves the payout unknown; nothing is sent again before a read of Stripe"
    );
    Ok(())
}

/// A transfer paid at its pre-reduction amount (a refund reduced it while
/// the Stripe call was in flight) owes the difference back: request its
/// reversal under the reducing refund.
async fn reverse_excess(
    ctx: &Ctx,
    t: &ScheduledTransfer,
    now: DateTime<Utc>,
) -> Result<(), ManagerError> {
    let excess = t.transferred_minor.saturating_sub(t.amount.minor);
    let Some(refund_id) = t.reductions.last() else {
        return Ok(());
    };
    if t.status != TransferStatus::Completed
        || excess <= 0
        || t.reversal_refunds.contains(refund_id)
    {
        return Ok(());
    }
    let stream = t.transfer_id.stream_id();
    ctx.run::<SellerTransfer>(
        &stream,
        &format!(
            "refund:{refund_id}:transfer:{}:reverse-excess",
            t.transfer_id
        ),
        Actor::worker(WorkerKind::Transfer.name()),
        &TransferCommand::RequestReversal {
            refund_id: *refund_id,
            amount: Amount::new(excess, t.amount.currency),
            now,
        },
        "RequestReversal",
    )
    .await?;
    tracing::warn!(
        stream_id = %stream, refund_id = %refund_id, amount_minor = excess,
        from_status = "completed", to_status = "reversal_pending",
        "transfer: paid more than was still due after a refund; reversal of the excess requested"
    );
    Ok(())
}

/// What an operator's retry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetriedTransfer {
    pub transfer_id: TransferId,
    pub from_status: String,
    pub status: String,
    /// The Stripe attempt the next call uses.
    pub attempt: u32,
    /// The read of Stripe found this object (a transfer `tr_…` or a
    /// reversal `trr_…`) and the ledger recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    /// The read of Stripe proved the last attempt made nothing; `attempt`
    /// is the next one, already queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub absent: Option<bool>,
    /// The read found something the ledger cannot record; the anomaly's
    /// kind (see the anomalies read model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<String>,
}

const OPERATOR: Actor = Actor {
    source: Source::Operator,
    name: "admin",
};

/// The admin route. An `indeterminate` payout or reversal is read at
/// Stripe first and the answer says what was found; `failed` and
/// `permanently_failed` get an operator `Retry` (due or not). Either way
/// the work that follows is queued due now.
pub(crate) async fn retry_now(
    ctx: &Ctx,
    transfer_id: TransferId,
    now: DateTime<Utc>,
) -> Result<RetriedTransfer, ManagerError> {
    let stream = transfer_id.stream_id();
    let Some(t) = ctx.load::<SellerTransfer>(&stream).await?.state.transfer else {
        return Err(ManagerError::NotFound(format!("transfer {transfer_id}")));
    };
    let mut answer = RetriedTransfer {
        transfer_id,
        from_status: t.status.as_str().to_owned(),
        status: t.status.as_str().to_owned(),
        attempt: t.attempt,
        found: None,
        absent: None,
        anomaly: None,
    };
    let manager = match t.status {
        TransferStatus::Indeterminate => {
            match resolve(ctx, &*ctx.payouts, "transfer_retry", OPERATOR, &t, now).await? {
                Resolved::Found(id) => answer.found = Some(id),
                Resolved::Absent { attempt } => {
                    answer.absent = Some(true);
                    answer.attempt = attempt;
                }
                Resolved::Anomaly(kind) => answer.anomaly = Some(kind.as_str().to_owned()),
                Resolved::NotIndeterminate => {}
            }
            WorkerKind::Transfer
        }
        TransferStatus::ReversalIndeterminate => {
            match super::reversal::resolve(ctx, &*ctx.payouts, OPERATOR, &t, now).await? {
                super::reversal::ReversalResolved::Found(id) => answer.found = Some(id),
                super::reversal::ReversalResolved::Absent { attempt } => {
                    answer.absent = Some(true);
                    answer.attempt = attempt;
                }
                super::reversal::ReversalResolved::Anomaly(kind) => {
                    answer.anomaly = Some(kind.as_str().to_owned());
                }
                super::reversal::ReversalResolved::NotIndeterminate => {}
            }
            WorkerKind::Reversal
        }
        _ => {
            let handled = ctx
                .run::<SellerTransfer>(
                    &stream,
                    &format!(
                        "transfer:{transfer_id}:retry:{}:operator",
                        t.status_since.timestamp_micros()
                    ),
                    OPERATOR,
                    &TransferCommand::Retry {
                        now,
                        by_operator: true,
                    },
                    "Retry",
                )
                .await?;
            if let Some(after) = &handled.state.transfer {
                answer.attempt = after.attempt;
            }
            WorkerKind::Transfer
        }
    };
    let after = ctx
        .load::<SellerTransfer>(&stream)
        .await?
        .state
        .transfer
        .ok_or_else(|| ManagerError::NotFound(format!("transfer {transfer_id}")))?;
    answer.status = after.status.as_str().to_owned();
    ctx.work
        .schedule(&[WorkOrder {
            manager: manager.name().to_owned(),
            stream_id: stream.to_string(),
            due_at: now,
        }])
        .await?;
    tracing::info!(
        stream_id = %stream, from_status = %t.status, to_status = %after.status,
        attempt = answer.attempt, found = answer.found.as_deref().unwrap_or(""),
        absent = answer.absent.unwrap_or(false),
        anomaly = answer.anomaly.as_deref().unwrap_or(""),
        cause = "operator retry",
        "transfer_retry: operator retry recorded; {} queued", manager.name()
    );
    Ok(answer)
}

/// What an operator's resolution of an anomaly recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedAnomaly {
    pub transfer_id: TransferId,
    pub kind: String,
    pub provider_id: Option<String>,
    /// False when it was resolved already (the same request again).
    pub newly_resolved: bool,
}

/// The admin route: an operator says a recorded anomaly is dealt with
/// (`TransferAnomalyResolved`); `verify` stops reporting it, the provider
/// sweep stops listing it, and an unreadable answer is read again.
pub(crate) async fn resolve_anomaly(
    ctx: &Ctx,
    transfer_id: TransferId,
    kind: TransferAnomalyKind,
    provider_id: Option<String>,
    note: &str,
    now: DateTime<Utc>,
) -> Result<ResolvedAnomaly, ManagerError> {
    let stream = transfer_id.stream_id();
    let Some(t) = ctx.load::<SellerTransfer>(&stream).await?.state.transfer else {
        return Err(ManagerError::NotFound(format!("transfer {transfer_id}")));
    };
    let handled = ctx
        .run::<SellerTransfer>(
            &stream,
            &format!(
                "transfer:{transfer_id}:anomaly:{}:{}:resolved",
                kind.as_str(),
                provider_id.as_deref().unwrap_or("-")
            ),
            OPERATOR,
            &TransferCommand::ResolveAnomaly {
                kind,
                provider_id: provider_id.clone(),
                note: note.to_owned(),
                now,
            },
            "ResolveAnomaly",
        )
        .await?;
    let newly_resolved = !handled.events.is_empty();
    tracing::info!(
        stream_id = %stream, anomaly = kind.as_str(),
        provider_id = provider_id.as_deref().unwrap_or(""), status = %t.status,
        newly_resolved, note = %note, cause = "operator",
        "transfer: anomaly resolved by an operator"
    );
    if kind == TransferAnomalyKind::UnreadableAnswer
        && matches!(
            t.status,
            TransferStatus::Indeterminate | TransferStatus::ReversalIndeterminate
        )
    {
        let manager = if t.status == TransferStatus::Indeterminate {
            WorkerKind::Transfer
        } else {
            WorkerKind::Reversal
        };
        ctx.work
            .schedule(&[WorkOrder {
                manager: manager.name().to_owned(),
                stream_id: stream.to_string(),
                due_at: now,
            }])
            .await?;
    }
    Ok(ResolvedAnomaly {
        transfer_id,
        kind: kind.as_str().to_owned(),
        provider_id,
        newly_resolved,
    })
}
