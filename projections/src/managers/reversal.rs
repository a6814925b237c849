//! `reversal` (seed item B): reverse `reversal_pending` transfers through
//! Stripe.
//!
//! - success → `reversed` / `partially_reversed` with the Stripe reversal id;
//! - Stripe shows it already fully reversed → `reversed` + an INFO line;
//! - not found, or any other definitive answer → `reversal_failed`;
//! - Stripe did not take the request (429, a connect error, a concurrent
//!   request with the key) → the core bumps the retry count and sets
//!   `next_retry_at = now + min(base * 2^retry, max)` (never before
//!   `Retry-After`); out of retries → `reversal_failed`;
//! - the outcome is unknown (5xx, timeout, dropped connection, replayed
//!   error) → `reversal_indeterminate`; the next step reads the transfer's
//!   reversals at Stripe: found → recorded; none → the next attempt, under a
//!   new key;
//! - an answer the client cannot read → `reversal_indeterminate` and an
//!   anomaly for an operator, no retry loop;
//! - no `stripe_transfer_id` → `reversal_failed` without calling Stripe;
//! - anything not `reversal_pending`, or not due yet, is left alone.
//!
//! The Idempotency-Key is `reversal:{uuid_v5(transfer_id, refund_id)}:{attempt}`:
//! one key per (transfer, refund, attempt), reused on every retry of that
//! attempt; the attempt moves only when a read proved the last one made
//! nothing. Every reversal carries `metadata[transfer_id]`,
//! `metadata[refund_id]` and `metadata[attempt]`, so it can be found again.

use chrono::{DateTime, Utc};
use ledger_core::Amount;
use ledger_core::ids::{RefundId, TransferId};
use ledger_core::transfer::{
    ScheduledTransfer, SellerTransfer, TransferAnomalyKind, TransferCommand, TransferStatus,
};
use ledger_psp::{CreateOutcome, CreateReversal, PayoutReader, ReversalOutcome};
use ledger_store::work::WorkItem;
use uuid::Uuid;

use super::resolve::{
    INDETERMINATE_READ_DELAY, absence_provable, key_may_be_gone, read_reversals, record_anomaly,
    recorded, reversal_metadata,
};
use super::worker::{Step, stream_of};
use super::{Actor, Ctx, ManagerError, human_duration};

const ACTOR: Actor = Actor::worker("reversal");

/// The first reversal attempt of a (transfer, refund).
pub const REVERSAL_ATTEMPT: u32 = 1;

/// The id Stripe's reversal key is built from: one per (transfer, refund).
pub fn reversal_key_id(transfer: TransferId, refund: RefundId) -> TransferId {
    TransferId(Uuid::new_v5(&transfer.0, refund.0.as_bytes()))
}

/// What a read of Stripe did to a `reversal_indeterminate` transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReversalResolved {
    Found(String),
    Absent { attempt: u32 },
    Anomaly(TransferAnomalyKind),
    NotIndeterminate,
}

/// Reads the transfer's reversals at Stripe and records what it found.
pub(crate) async fn resolve(
    ctx: &Ctx,
    reader: &dyn PayoutReader,
    actor: Actor,
    t: &ScheduledTransfer,
    now: DateTime<Utc>,
) -> Result<ReversalResolved, ManagerError> {
    let (TransferStatus::ReversalIndeterminate, Some(pending), Some(stripe_transfer_id)) =
        (t.status, &t.pending_reversal, &t.stripe_transfer_id)
    else {
        return Ok(ReversalResolved::NotIndeterminate);
    };
    let stream = t.transfer_id.stream_id();
    let unknown_for = human_duration(now - t.status_since);
    let found = match read_reversals(reader, stripe_transfer_id, pending.refund_id).await {
        Ok(found) => found,
        Err(e) if e.is_transient() => return Err(e.into()),
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
            return Ok(ReversalResolved::Anomaly(
                TransferAnomalyKind::UnreadableAnswer,
            ));
        }
    };
    let mut found: Vec<_> = found.into_iter().filter(|r| !recorded(t, &r.id)).collect();
    if found.is_empty() {
        absence_provable(t.status_since, now, &stream)?;
        ctx.run::<SellerTransfer>(
            &stream,
            &format!(
                "reversal:{}:{}:attempt:{}:absent",
                t.transfer_id, pending.refund_id, pending.attempt
            ),
            actor,
            &TransferCommand::RecordReversalAbsent {
                attempt: pending.attempt,
                now,
            },
            "RecordReversalAbsent",
        )
        .await?;
        let attempt = pending.attempt.saturating_add(1);
        tracing::info!(
            stream_id = %stream, refund_id = %pending.refund_id,
            from_status = "reversal_indeterminate", to_status = "reversal_pending",
            absent_attempt = pending.attempt, attempt, unknown_for = %unknown_for,
            cause = "stripe lists no reversal for this refund",
            "reversal: reversal proven absent at Stripe; next attempt uses a new key"
        );
        return Ok(ReversalResolved::Absent { attempt });
    }
    let view = found.remove(0);
    for other in &found {
        record_anomaly(
            ctx,
            t,
            actor,
            TransferAnomalyKind::DuplicateAtProvider,
            Some(other.id.as_str()),
            &format!(
                "stripe holds a second reversal {} ({}) for refund {}",
                other.id, other.amount, pending.refund_id
            ),
            now,
        )
        .await?;
    }
    let expected = Amount::new(pending.amount_minor, t.amount.currency);
    if view.amount != expected {
        record_anomaly(
            ctx,
            t,
            actor,
            TransferAnomalyKind::AmountMismatch,
            Some(view.id.as_str()),
            &format!(
                "stripe reversal {} moved {}, the ledger asked for {expected}",
                view.id, view.amount
            ),
            now,
        )
        .await?;
        return Ok(ReversalResolved::Anomaly(
            TransferAnomalyKind::AmountMismatch,
        ));
    }
    let handled = ctx
        .run::<SellerTransfer>(
            &stream,
            &format!(
                "reversal:{}:{}:found:{}",
                t.transfer_id, pending.refund_id, view.id
            ),
            actor,
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
        stripe_reversal_id = %view.id, amount_minor = view.amount.minor,
        from_status = "reversal_indeterminate",
        to_status = %handled.state.status().map_or("none", |s| s.as_str()),
        unknown_for = %unknown_for,
        cause = "stripe lists the reversal this refund's lost answer made",
        "reversal: reversal found at Stripe; recorded"
    );
    Ok(ReversalResolved::Found(view.id.to_string()))
}

pub(crate) async fn step(
    ctx: &Ctx,
    item: &WorkItem,
    now: DateTime<Utc>,
) -> Result<Step, ManagerError> {
    let stream = stream_of(item)?;
    let Some(mut t) = ctx.load::<SellerTransfer>(&stream).await?.state.transfer else {
        return Ok(Step::Done);
    };
    if t.status == TransferStatus::ReversalIndeterminate {
        // An unreadable answer stays for an operator.
        if t.has_open_anomaly(TransferAnomalyKind::UnreadableAnswer) {
            return Ok(Step::Done);
        }
        match resolve(ctx, &*ctx.payouts, ACTOR, &t, now).await {
            Ok(ReversalResolved::Absent { .. }) => {
                match ctx.load::<SellerTransfer>(&stream).await?.state.transfer {
                    Some(next) => t = next,
                    None => return Ok(Step::Done),
                }
            }
            Ok(_) => return Ok(Step::Done),
            Err(ManagerError::TooEarly { .. }) => {
                return Ok(Step::Later {
                    due_at: super::after(t.status_since, INDETERMINATE_READ_DELAY),
                    error: None,
                });
            }
            Err(ManagerError::Psp(e)) => {
                let due_at = ctx.work_retry_at(now, item.attempts);
                tracing::warn!(
                    stream_id = %stream, retry_at = %due_at, error = %e,
                    "reversal: reading Stripe for an indeterminate reversal failed; nothing sent, read again later"
                );
                return Ok(Step::Later {
                    due_at,
                    error: Some(e.to_string()),
                });
            }
            Err(other) => return Err(other),
        }
    }
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
    // Stripe may have forgotten a key this old: look for the reversal first.
    if key_may_be_gone(t.status_since, now) {
        match read_reversals(&*ctx.payouts, &stripe_transfer_id, pending.refund_id).await {
            Ok(found) if found.iter().any(|r| !recorded(&t, &r.id)) => {
                ctx.run::<SellerTransfer>(
                    &stream,
                    &key(&format!("attempt:{}:stale-key", pending.attempt)),
                    ACTOR,
                    &TransferCommand::RecordReversalOutcomeUnknown {
                        error: "the reversal key may be gone and stripe lists a reversal for this refund".to_owned(),
                        now,
                    },
                    "RecordReversalOutcomeUnknown",
                )
                .await?;
                return Ok(Step::Later {
                    due_at: now,
                    error: None,
                });
            }
            Ok(_) => {}
            Err(e) => {
                let due_at = ctx.work_retry_at(now, item.attempts);
                tracing::warn!(
                    stream_id = %stream, refund_id = %pending.refund_id, retry_at = %due_at, error = %e,
                    "reversal: the key may be gone at Stripe and the read before reversing failed; nothing sent"
                );
                return Ok(Step::Later {
                    due_at,
                    error: Some(e.to_string()),
                });
            }
        }
    }
    let amount = Amount::new(pending.amount_minor, t.amount.currency);
    let request = CreateReversal {
        reversal_key_id: reversal_key_id(t.transfer_id, pending.refund_id),
        attempt: pending.attempt,
        amount: Some(amount),
        metadata: reversal_metadata(t.transfer_id, &pending),
    };
    let answer = ctx
        .payouts
        .reverse_transfer(&stripe_transfer_id, &request)
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
            // `reverse_transfer` reads the transfer before it POSTs: a
            // failed read sent nothing.
            let outcome = if e.op() == Some("stripe get_transfer") && e.is_transient() {
                CreateOutcome::RetrySameKey {
                    after: e.retry_after(),
                }
            } else {
                e.create_outcome()
            };
            match outcome {
                CreateOutcome::NeedsOperator => {
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
                CreateOutcome::Unknown | CreateOutcome::Unreadable => {
                    ctx.run::<SellerTransfer>(
                        &stream,
                        &key(&format!("attempt:{}:unknown", pending.attempt)),
                        ACTOR,
                        &TransferCommand::RecordReversalOutcomeUnknown {
                            error: e.to_string(),
                            now,
                        },
                        "RecordReversalOutcomeUnknown",
                    )
                    .await?;
                    let read_at = super::after(now, INDETERMINATE_READ_DELAY);
                    tracing::warn!(
                        stream_id = %stream, refund_id = %pending.refund_id,
                        from_status = "reversal_pending", to_status = "reversal_indeterminate",
                        attempt = pending.attempt, read_at = %read_at, error = %e,
                        "reversal: Stripe's answer leaves the reversal unknown; nothing is sent again before a read of Stripe"
                    );
                    if outcome == CreateOutcome::Unreadable {
                        record_anomaly(
                            ctx,
                            &t,
                            ACTOR,
                            TransferAnomalyKind::UnreadableAnswer,
                            None,
                            &e.to_string(),
                            now,
                        )
                        .await?;
                        return Ok(Step::Done);
                    }
                    return Ok(Step::Later {
                        due_at: read_at,
                        error: Some(e.to_string()),
                    });
                }
                CreateOutcome::RetrySameKey { .. } | CreateOutcome::Refused => {}
            }
            let transient = matches!(outcome, CreateOutcome::RetrySameKey { .. });
            let what = if transient {
                format!(
                    "attempt:{}:transient:{}",
                    pending.attempt, t.reversal_retry_count
                )
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
                    let due_at = match e.retry_after() {
                        Some(wait) => due_at.max(super::after(now, wait)),
                        None => due_at,
                    };
                    tracing::warn!(
                        stream_id = %stream, refund_id = %pending.refund_id,
                        retry_count = after.reversal_retry_count, next_retry_at = %due_at,
                        from_status = "reversal_pending", to_status = "reversal_pending",
                        error = %e,
                        "reversal: Stripe did not take the reversal; retry scheduled with backoff and the same key"
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
