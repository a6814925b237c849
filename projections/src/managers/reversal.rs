//! `reversal` (seed item B): reverse `reversal_pending` transfers through
//! Stripe.
//!
//! - success → `reversed` / `partially_reversed` with the Stripe reversal id;
//! - Stripe shows it already fully reversed → `reversed` + an INFO line;
//! - not found, or any other definitive answer → `reversal_failed`;
//! - a transient error → the core bumps the retry count and sets
//!   `next_retry_at = now + min(base * 2^retry, max)`; out of retries →
//!   `reversal_failed`;
//! - no `stripe_transfer_id` → `reversal_failed` without calling Stripe;
//! - anything not `reversal_pending`, or not due yet, is left alone.
//!
//! The Idempotency-Key is `reversal:{uuid_v5(transfer_id, refund_id)}:1`:
//! one key per (transfer, refund), reused on every transient retry, and a
//! transfer reversed for two refunds gets two keys.

use chrono::{DateTime, Utc};
use ledger_core::Amount;
use ledger_core::ids::{RefundId, TransferId};
use ledger_core::transfer::{SellerTransfer, TransferCommand, TransferStatus};
use ledger_psp::ReversalOutcome;
use ledger_store::work::WorkItem;
use uuid::Uuid;

use super::worker::{Step, stream_of};
use super::{Actor, Ctx, ManagerError, PspFailure, classify};

const ACTOR: Actor = Actor::worker("reversal");

/// The reversal call's `attempt`: constant, because a reversal is never
/// retried after a definitive answer (that is `reversal_failed`), and every
/// transient retry must reuse the key.
pub const REVERSAL_ATTEMPT: u32 = 1;

/// The id Stripe's reversal key is built from: one per (transfer, refund).
pub fn reversal_key_id(transfer: TransferId, refund: RefundId) -> TransferId {
    TransferId(Uuid::new_v5(&transfer.0, refund.0.as_bytes()))
}

pub(crate) async fn step(
    ctx: &Ctx,
    item: &WorkItem,
    now: DateTime<Utc>,
) -> Result<Step, ManagerError> {
    let stream = stream_of(item)?;
    let Some(t) = ctx.load::<SellerTransfer>(&stream).await?.state.transfer else {
        return Ok(Step::Done);
    };
    let (TransferStatus::ReversalPending, Some(pending)) = (t.status, t.pending_reversal.clone())
    else {
        tracing::debug!(stream_id = %stream, status = %t.status, "reversal: not reversal_pending; nothing to do");
        return Ok(Step::Done);
    };
    if let Some(due) = t.next_retry_at.filter(|due| *due > now) {
        return Ok(Step::Later {
            due_at: due,
            error: None,
        });
    }
    let key = |what: &str| format!("reversal:{}:{}:{what}", t.transfer_id, pending.refund_id);
    let Some(stripe_transfer_id) = t.stripe_transfer_id.clone() else {
        ctx.run::<SellerTransfer>(
            &stream,
            &key("no-stripe-transfer-id"),
            ACTOR,
            &TransferCommand::FailReversalWithoutTransferId { now },
            "FailReversalWithoutTransferId",
        )
        .await?;
        tracing::error!(
            stream_id = %stream, refund_id = %pending.refund_id,
            from_status = "reversal_pending", to_status = "reversal_failed",
            "reversal: transfer has no stripe_transfer_id; reversal_failed without calling Stripe"
        );
        return Ok(Step::Done);
    };
    let amount = Amount::new(pending.amount_minor, t.amount.currency);
    let answer = ctx
        .payouts
        .reverse_transfer(
            &stripe_transfer_id,
            reversal_key_id(t.transfer_id, pending.refund_id),
            REVERSAL_ATTEMPT,
            Some(amount),
        )
        .await;
    match answer {
        Ok(ReversalOutcome::Reversed(view)) => {
            let handled = ctx
                .run::<SellerTransfer>(
                    &stream,
                    &key("succeeded"),
                    ACTOR,
                    &TransferCommand::RecordReversalSucceeded {
                        stripe_reversal_id: view.id.clone(),
                        reversed_amount: view.amount,
                        now,
                    },
                    "RecordReversalSucceeded",
                )
                .await?;
            tracing::info!(
                stream_id = %stream, refund_id = %pending.refund_id,
                stripe_transfer_id = %stripe_transfer_id, stripe_reversal_id = %view.id,
                amount_minor = view.amount.minor, from_status = "reversal_pending",
                to_status = %handled.state.status().map_or("none", |s| s.as_str()),
                "reversal: transfer reversed"
            );
            Ok(Step::Done)
        }
        Ok(ReversalOutcome::AlreadyReversed { amount_reversed }) => {
            let handled = ctx
                .run::<SellerTransfer>(
                    &stream,
                    &key("already-reversed"),
                    ACTOR,
                    &TransferCommand::RecordAlreadyReversed {
                        amount_reversed,
                        now,
                    },
                    "RecordAlreadyReversed",
                )
                .await?;
            tracing::info!(
                stream_id = %stream, refund_id = %pending.refund_id,
                stripe_transfer_id = %stripe_transfer_id,
                amount_reversed_minor = amount_reversed.minor, from_status = "reversal_pending",
                to_status = %handled.state.status().map_or("none", |s| s.as_str()),
                "reversal: transfer already reversed at Stripe; recorded as reversed"
            );
            Ok(Step::Done)
        }
        Err(e) => {
            let failure = classify(&e);
            if failure == PspFailure::NeedsOperator {
                let due_at = ctx.work_retry_at(now, item.attempts);
                tracing::error!(
                    stream_id = %stream, refund_id = %pending.refund_id, retry_at = %due_at, error = %e,
                    "reversal: Stripe call failed in a way only an operator can fix; retrying with the same key"
                );
                return Ok(Step::Later {
                    due_at,
                    error: Some(e.to_string()),
                });
            }
            let transient = failure == PspFailure::Transient;
            let what = if transient {
                format!("transient:{}", t.reversal_retry_count)
            } else {
                "refused".to_owned()
            };
            let handled = ctx
                .run::<SellerTransfer>(
                    &stream,
                    &key(&what),
                    ACTOR,
                    &TransferCommand::RecordReversalFailed {
                        transient,
                        error: e.to_string(),
                        policy: ctx.config.reversal.policy,
                        now,
                    },
                    "RecordReversalFailed",
                )
                .await?;
            let Some(after) = handled.state.transfer else {
                return Ok(Step::Done);
            };
            match (after.status, after.next_retry_at) {
                (TransferStatus::ReversalPending, Some(due_at)) => {
                    tracing::warn!(
                        stream_id = %stream, refund_id = %pending.refund_id,
                        retry_count = after.reversal_retry_count, next_retry_at = %due_at,
                        from_status = "reversal_pending", to_status = "reversal_pending",
                        error = %e,
                        "reversal: Stripe call failed; retry scheduled with backoff"
                    );
                    Ok(Step::Later {
                        due_at,
                        error: Some(e.to_string()),
                    })
                }
                (status, _) => {
                    tracing::error!(
                        stream_id = %stream, refund_id = %pending.refund_id,
                        retry_count = after.reversal_retry_count,
                        from_status = "reversal_pending", to_status = %status,
                        not_found = e.is_not_found(), transient, error = %e,
                        "reversal: reversal failed; an operator must recover the seller's share"
                    );
                    Ok(Step::Done)
                }
            }
        }
    }
}
