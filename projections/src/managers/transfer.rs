//! `transfer` and `transfer_retry`: pay seller transfers out through Stripe
//! under `Idempotency-Key: transfer:{transfer_id}:{attempt}`, and retry the
//! ones that failed definitively once their backoff is over.
//!
//! `attempt` is the core's: it moves only when a retry follows a
//! *definitive* failure, so a timeout or 5xx retried here reuses the key and
//! Stripe answers with the transfer it already made.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ledger_core::Amount;
use ledger_core::ids::{OrderId, TransferId, transfer_id};
use ledger_core::order::SellerShare;
use ledger_core::transfer::{ScheduledTransfer, SellerTransfer, TransferCommand, TransferStatus};
use ledger_core::{Currency, Source};
use ledger_psp::CreateTransfer;
use ledger_store::work::{WorkItem, WorkOrder};
use serde::Serialize;

use super::worker::{Step, WorkerKind, stream_of};
use super::{Actor, Ctx, ManagerError, PspFailure, classify};

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
        _ => Ok(Step::Done),
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
    let request = CreateTransfer {
        transfer_id: t.transfer_id,
        attempt: t.attempt,
        amount: t.amount,
        destination: t.destination.clone(),
        transfer_group: Some(format!("order_{}", t.order_id)),
        metadata: BTreeMap::from([
            ("order_id".to_owned(), t.order_id.to_string()),
            ("seller_id".to_owned(), t.seller_id.to_string()),
            ("transfer_id".to_owned(), t.transfer_id.to_string()),
        ]),
    };
    let answer = ctx.payouts.create_transfer(&request).await;
    match answer {
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
                    tracing::error!(
                        stream_id = %stream, stripe_transfer_id = %view.id,
                        amount_minor = view.amount.minor, reason = %reason,
                        "{kind}: Stripe paid a transfer the ledger no longer owes; an operator must reverse it"
                    );
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
        Err(e) => match classify(&e) {
            PspFailure::Transient | PspFailure::NeedsOperator => {
                let due_at = ctx.work_retry_at(now, item.attempts);
                let needs_operator = classify(&e) == PspFailure::NeedsOperator;
                if needs_operator {
                    tracing::error!(
                        stream_id = %stream, attempt = t.attempt, retry_at = %due_at, error = %e,
                        "{kind}: Stripe call failed in a way only an operator can fix; retrying with the same key"
                    );
                } else {
                    tracing::warn!(
                        stream_id = %stream, attempt = t.attempt, retry_at = %due_at, error = %e,
                        "{kind}: Stripe call failed; retrying with the same key"
                    );
                }
                Ok(Step::Later {
                    due_at,
                    error: Some(e.to_string()),
                })
            }
            PspFailure::Definitive => {
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
}

/// The admin route: operator `Retry` (allowed from `failed` and
/// `permanently_failed`, due or not), then `transfer` work due now.
pub(crate) async fn retry_now(
    ctx: &Ctx,
    transfer_id: TransferId,
    now: DateTime<Utc>,
) -> Result<RetriedTransfer, ManagerError> {
    let stream = transfer_id.stream_id();
    let Some(t) = ctx.load::<SellerTransfer>(&stream).await?.state.transfer else {
        return Err(ManagerError::NotFound(format!("transfer {transfer_id}")));
    };
    let handled = ctx
        .run::<SellerTransfer>(
            &stream,
            &format!(
                "transfer:{transfer_id}:retry:{}:operator",
                t.status_since.timestamp_micros()
            ),
            Actor {
                source: Source::Operator,
                name: "admin",
            },
            &TransferCommand::Retry {
                now,
                by_operator: true,
            },
            "Retry",
        )
        .await?;
    let after = handled
        .state
        .transfer
        .ok_or_else(|| ManagerError::NotFound(format!("transfer {transfer_id}")))?;
    ctx.work
        .schedule(&[WorkOrder {
            manager: WorkerKind::Transfer.name().to_owned(),
            stream_id: stream.to_string(),
            due_at: now,
        }])
        .await?;
    tracing::info!(
        stream_id = %stream, from_status = %t.status, to_status = %after.status,
        attempt = after.attempt,
        "transfer_retry: operator retry recorded; payout queued"
    );
    Ok(RetriedTransfer {
        transfer_id,
        from_status: t.status.as_str().to_owned(),
        status: after.status.as_str().to_owned(),
        attempt: after.attempt,
    })
}
