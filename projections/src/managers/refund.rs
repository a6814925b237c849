//! The refund managers:
//! - `refund_open` (phase-1 recovery): a refund reserved on its order but
//!   whose refund stream was never written (the API crashed in between) gets
//!   its stream, after [`REFUND_OPEN_GRACE`](super::REFUND_OPEN_GRACE).
//! - `refund` (phase 2): create the Hyperswitch refund under
//!   `psp_refund_id_for(refund)`, then `Submit` (and the status, when the
//!   create call answered a terminal one). A definitive refusal fails the
//!   refund with the PSP's message, which then releases the order's lines.
//! - `refund_settle`: once a refund is terminal, complete or release the
//!   order's lines, with the same derived command ids as the webhook path
//!   (`refund:{id}:settle:{status}`), so both converge.
//! - `refund_sellers`: after `RefundCompleted`, per affected seller, reduce
//!   the unpaid transfer by the seller's share of the refunded lines (to
//!   zero → cancelled) or request a reversal of a paid one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ledger_core::Amount;
use ledger_core::ids::{RefundId, SellerId, StreamId, psp_refund_id_for, transfer_id};
use ledger_core::order::{LineRefund, Order, OrderEvent, OrderStatus, PlacedOrder};
use ledger_core::psp::RefundPspStatus;
use ledger_core::refund::{
    Refund, RefundAnomalyKind, RefundCommand, RefundReasonCode, RefundState, RefundStatus,
};
use ledger_core::transfer::{SellerTransfer, TransferCommand, TransferRejection, TransferStatus};
use ledger_psp::{CreateOutcome, CreateRefund};
use ledger_store::READ_BATCH_MAX;
use ledger_store::handle::{HandleError, decode_recorded};
use ledger_store::work::WorkItem;

use super::transfer::schedule_transfers;
use super::worker::{Step, WorkerKind, stream_of};
use super::{Actor, Ctx, ManagerError, command_context, handle_error};

pub(crate) async fn step_open(
    ctx: &Ctx,
    item: &WorkItem,
    now: DateTime<Utc>,
) -> Result<Step, ManagerError> {
    let stream = stream_of(item)?;
    let Some(order) = ctx.load::<Order>(&stream).await?.state.order else {
        return Ok(Step::Done);
    };
    let (Some(pending), Some(payment_id)) = (&order.pending_refund, &order.payment_id) else {
        return Ok(Step::Done);
    };
    let refund_stream = pending.refund_id.stream_id();
    if ctx.load::<Refund>(&refund_stream).await?.version.is_some() {
        return Ok(Step::Done);
    }
    // Not the API's cause: if the API is writing the stream right now, its
    // append sees a version conflict and re-decides to a no-op, instead of
    // meeting our event id with another payload.
    let (reason, reason_code) = reserved_reason(ctx, &stream, pending.refund_id).await?;
    ctx.run::<Refund>(
        &refund_stream,
        &format!("refund:{}:request:recovered", pending.refund_id),
        Actor::worker(WorkerKind::RefundOpen.name()),
        &RefundCommand::Request {
            refund_id: pending.refund_id,
            order_id: order.order_id,
            payment_id: payment_id.clone(),
            amount_minor: pending.amount_minor,
            currency: order.currency,
            lines: pending.lines.clone(),
            reason,
            reason_code,
            now,
        },
        "Request",
    )
    .await?;
    tracing::error!(
        stream_id = %refund_stream, order_stream_id = %stream, from_status = "none",
        to_status = "requested",
        "refund_open: refund reserved on its order but never recorded (crash after phase 1 began); refund stream created"
    );
    Ok(Step::Done)
}

/// The reason and reason code the order's `RefundRequested` recorded (the
/// folded state does not keep them).
async fn reserved_reason(
    ctx: &Ctx,
    order_stream: &StreamId,
    refund_id: RefundId,
) -> Result<(String, Option<RefundReasonCode>), ManagerError> {
    let mut from = 1;
    loop {
        let page = ctx
            .events
            .read_stream(order_stream, from, READ_BATCH_MAX)
            .await?;
        for e in &page {
            from = e.stream_version + 1;
            if e.event_type != "RefundRequested" {
                continue;
            }
            let event = decode_recorded::<Order>(e)
                .map_err(|err| handle_error(order_stream, "load", err))?;
            if let OrderEvent::RefundRequested {
                refund_id: id,
                reason,
                reason_code,
                ..
            } = event
                && id == refund_id
            {
                return Ok((reason, reason_code));
            }
        }
        if page.len() < READ_BATCH_MAX as usize {
            return Ok((String::new(), None));
        }
    }
}

pub(crate) async fn step_refund(
    ctx: &Ctx,
    item: &WorkItem,
    now: DateTime<Utc>,
) -> Result<Step, ManagerError> {
    let stream = stream_of(item)?;
    let Some(r) = ctx.load::<Refund>(&stream).await?.state.refund else {
        return Ok(Step::Done);
    };
    if r.status != RefundStatus::Requested {
        return Ok(Step::Done);
    }
    if has_unreadable(&r) {
        return Ok(Step::Done);
    }
    let actor = Actor::worker(WorkerKind::Refund.name());
    let psp_refund_id = psp_refund_id_for(r.refund_id);
    // An earlier try of this row may have reached Hyperswitch: read before
    // creating again (the refund id is ours, so a read finds it).
    let read_first = item.attempts > 0;
    let answer = if read_first {
        match ctx.payments.get_refund_status(&psp_refund_id).await {
            Ok(view) => {
                tracing::info!(
                    stream_id = %stream, hyperswitch_refund_id = %psp_refund_id,
                    psp_status = %view.status, cause = "read before creating again",
                    "refund: Hyperswitch has the refund an earlier try made; recording it"
                );
                Ok(view)
            }
            Err(e) if e.is_not_found() => create_refund(ctx, &r, &psp_refund_id).await,
            Err(e) if !e.is_transient() && e.create_outcome() != CreateOutcome::Unreadable => {
                // A failed read decides nothing: never a refusal of the create.
                let due_at = ctx.due_after(now, item.attempts, CreateOutcome::NeedsOperator);
                tracing::warn!(
                    stream_id = %stream, hyperswitch_refund_id = %psp_refund_id,
                    attempts = item.attempts, retry_at = %due_at, error = %e,
                    "refund: reading Hyperswitch before creating again failed; nothing sent, read again later"
                );
                return Ok(Step::Later {
                    due_at,
                    error: Some(e.to_string()),
                });
            }
            Err(e) => Err(e),
        }
    } else {
        create_refund(ctx, &r, &psp_refund_id).await
    };
    match answer {
        Ok(view) => {
            let mut handled = ctx
                .run::<Refund>(
                    &stream,
                    &format!("refund:{}:submit", r.refund_id),
                    actor,
                    &RefundCommand::Submit {
                        psp_refund_id: psp_refund_id.clone(),
                        now,
                    },
                    "Submit",
                )
                .await?;
            if view.status.is_terminal() {
                handled = ctx
                    .run::<Refund>(
                        &stream,
                        &format!("refund:{}:psp:{}", r.refund_id, view.status),
                        actor,
                        &RefundCommand::ApplyPspStatus {
                            psp_refund_id: Some(psp_refund_id.clone()),
                            status: view.status,
                            error_message: view.error_message.clone(),
                            now,
                        },
                        "ApplyPspStatus",
                    )
                    .await?;
            }
            tracing::info!(
                stream_id = %stream, hyperswitch_refund_id = %psp_refund_id,
                from_status = "requested",
                to_status = %handled.state.status().map_or("none", |s| s.as_str()),
                psp_status = %view.status, already_existed = view.already_existed,
                amount_minor = view.amount.minor,
                "refund: refund submitted to Hyperswitch"
            );
            Ok(Step::Done)
        }
        Err(e) => match e.create_outcome() {
            outcome @ (CreateOutcome::RetrySameKey { .. }
            | CreateOutcome::Unknown
            | CreateOutcome::NeedsOperator) => {
                let due_at = ctx.due_after(now, item.attempts, outcome);
                let read_first = outcome == CreateOutcome::Unknown;
                tracing::warn!(
                    stream_id = %stream, hyperswitch_refund_id = %psp_refund_id,
                    attempts = item.attempts, retry_at = %due_at, read_first, error = %e,
                    "refund: Hyperswitch create failed; the next try reads the refund before creating it again"
                );
                Ok(Step::Later {
                    due_at,
                    error: Some(e.to_string()),
                })
            }
            CreateOutcome::Unreadable => {
                let call = if read_first {
                    "get_refund"
                } else {
                    "create_refund"
                };
                record_unreadable(ctx, &stream, actor, call, &e.to_string(), now).await?;
                Ok(Step::Done)
            }
            CreateOutcome::Refused => {
                ctx.run::<Refund>(
                    &stream,
                    &format!("refund:{}:create-refused", r.refund_id),
                    actor,
                    &RefundCommand::ApplyPspStatus {
                        psp_refund_id: None,
                        status: RefundPspStatus::Failed,
                        error_message: Some(e.to_string()),
                        now,
                    },
                    "ApplyPspStatus",
                )
                .await?;
                tracing::warn!(
                    stream_id = %stream, hyperswitch_refund_id = %psp_refund_id,
                    from_status = "requested", to_status = "failed", error = %e,
                    "refund: Hyperswitch refused the refund; it failed and its lines will be released"
                );
                Ok(Step::Done)
            }
        },
    }
}

async fn create_refund(
    ctx: &Ctx,
    r: &ledger_core::refund::RequestedRefund,
    psp_refund_id: &ledger_core::ids::PspRefundId,
) -> Result<ledger_psp::RefundView, ledger_psp::PspError> {
    let request = CreateRefund {
        refund_id: psp_refund_id.clone(),
        payment_id: r.payment_id.clone(),
        amount: Amount::new(r.amount_minor, r.currency),
        reason_code: r.reason_code.unwrap_or_default(),
        reason: (!r.reason.is_empty()).then(|| r.reason.clone()),
    };
    ctx.payments.create_refund(&request).await
}

/// The refund already waits for an operator because an answer about it
/// could not be read.
pub(crate) fn has_unreadable(r: &ledger_core::refund::RequestedRefund) -> bool {
    r.anomalies
        .iter()
        .any(|a| a.kind == RefundAnomalyKind::UnreadableAnswer)
}

/// Records (once per value) that an answer about this refund could not be
/// read, and logs it once.
pub(crate) async fn record_unreadable(
    ctx: &Ctx,
    stream: &StreamId,
    actor: Actor,
    call: &str,
    value: &str,
    now: DateTime<Utc>,
) -> Result<bool, ManagerError> {
    let handled = ctx
        .run::<Refund>(
            stream,
            &format!("refund:{stream}:unreadable:{call}:{value}"),
            actor,
            &RefundCommand::RecordUnreadable {
                call: call.to_owned(),
                value: value.to_owned(),
                now,
            },
            "RecordUnreadable",
        )
        .await?;
    let new = !handled.events.is_empty();
    if new {
        tracing::error!(
            stream_id = %stream, call, value = %value,
            status = %handled.state.status().map_or("none", |s| s.as_str()),
            "{}: Hyperswitch's answer cannot be read; anomaly recorded, the refund waits for an operator",
            actor.name
        );
    }
    Ok(new)
}

pub(crate) async fn step_settle(
    ctx: &Ctx,
    item: &WorkItem,
    now: DateTime<Utc>,
) -> Result<Step, ManagerError> {
    let stream = stream_of(item)?;
    let loaded = ctx.load::<Refund>(&stream).await?;
    let Some(r) = loaded.state.refund.as_ref() else {
        return Ok(Step::Done);
    };
    if let Some(to) = settle_refund_on_order(
        ctx,
        &loaded.state,
        Actor::worker(WorkerKind::RefundSettle.name()),
        now,
    )
    .await?
    {
        tracing::info!(
            stream_id = %stream, order_stream_id = %r.order_id.stream_id(),
            refund_status = %r.status, to_status = %to,
            "refund_settle: order settled after its refund ended"
        );
    }
    Ok(Step::Done)
}

/// Once a refund is terminal its order follows
/// (`RequestedRefund::order_settlement` in the core, which the webhook
/// handler runs too, with the same command id, so whichever comes first wins
/// and the other appends nothing). Returns the order's status when this call
/// changed it.
pub(crate) async fn settle_refund_on_order(
    ctx: &Ctx,
    refund: &RefundState,
    actor: Actor,
    now: DateTime<Utc>,
) -> Result<Option<OrderStatus>, ManagerError> {
    let Some(r) = refund.refund.as_ref() else {
        return Ok(None);
    };
    let Some((cause, command)) = r.order_settlement(now) else {
        return Ok(None);
    };
    let handled = ctx
        .run::<Order>(
            &r.order_id.stream_id(),
            &cause,
            actor,
            &command,
            command.name(),
        )
        .await?;
    Ok(handled
        .appended
        .is_some()
        .then(|| handled.state.status())
        .flatten())
}

pub(crate) async fn step_sellers(
    ctx: &Ctx,
    item: &WorkItem,
    now: DateTime<Utc>,
) -> Result<Step, ManagerError> {
    let stream = stream_of(item)?;
    let Some(order) = ctx.load::<Order>(&stream).await?.state.order else {
        return Ok(Step::Done);
    };
    let mut blocked = None;
    for refund_id in &order.completed_refunds {
        for (seller_id, share_minor) in seller_shares_of(&order, *refund_id) {
            if let Some(pending) =
                settle_seller(ctx, &order, *refund_id, &seller_id, share_minor, now).await?
            {
                blocked = Some(pending);
            }
        }
    }
    match blocked {
        None => Ok(Step::Done),
        Some(reason) => Ok(Step::Later {
            due_at: ctx.work_retry_at(now, item.attempts),
            error: Some(reason),
        }),
    }
}

/// Each seller's share (`seller_minor`) of the lines `refund_id` refunded.
fn seller_shares_of(order: &PlacedOrder, refund_id: RefundId) -> BTreeMap<SellerId, i64> {
    let mut shares: BTreeMap<SellerId, i64> = BTreeMap::new();
    for line in order
        .lines
        .iter()
        .filter(|l| l.refund == LineRefund::Refunded(refund_id))
    {
        let share = shares.entry(line.line.seller_id.clone()).or_default();
        *share = share.saturating_add(line.line.seller_minor);
    }
    shares
}

/// Applies one refund to one seller's transfer. `Some(reason)` when it has
/// to wait (another reversal of the same transfer is in flight).
async fn settle_seller(
    ctx: &Ctx,
    order: &PlacedOrder,
    refund_id: RefundId,
    seller_id: &SellerId,
    share_minor: i64,
    now: DateTime<Utc>,
) -> Result<Option<String>, ManagerError> {
    if share_minor <= 0 {
        return Ok(None);
    }
    let actor = Actor::worker(WorkerKind::RefundSellers.name());
    let id = transfer_id(order.order_id, seller_id);
    let stream = id.stream_id();
    let mut loaded = ctx.load::<SellerTransfer>(&stream).await?;
    if loaded.state.transfer.is_none() {
        // The payment's transfers were not scheduled yet (the transfers
        // feed lags): schedule them now, from the order itself.
        let shares: Vec<_> = seller_totals(order);
        schedule_transfers(ctx, order.order_id, order.currency, &shares, now, actor).await?;
        loaded = ctx.load::<SellerTransfer>(&stream).await?;
    }
    let Some(t) = loaded.state.transfer else {
        return Ok(None);
    };
    if t.reductions.contains(&refund_id) || t.reversal_refunds.contains(&refund_id) {
        return Ok(None);
    }
    let currency = t.amount.currency;
    match t.status {
        // An indeterminate payout may or may not exist: lower what is owed;
        // if Stripe did make it, the excess is reversed once it is found.
        TransferStatus::Pending
        | TransferStatus::Failed
        | TransferStatus::PermanentlyFailed
        | TransferStatus::Indeterminate => {
            let by = share_minor.min(t.amount.minor);
            if by <= 0 {
                return Ok(None);
            }
            let handled = ctx
                .run::<SellerTransfer>(
                    &stream,
                    &format!("refund:{refund_id}:transfer:{id}:reduce"),
                    actor,
                    &TransferCommand::Reduce {
                        by: Amount::new(by, currency),
                        refund_id,
                        now,
                    },
                    "Reduce",
                )
                .await?;
            tracing::info!(
                stream_id = %stream, refund_id = %refund_id, seller_id = %seller_id,
                from_status = %t.status,
                to_status = %handled.state.status().map_or("none", |s| s.as_str()),
                amount_minor = by,
                "refund_sellers: unpaid transfer reduced by the refunded share"
            );
            Ok(None)
        }
        TransferStatus::Completed | TransferStatus::PartiallyReversed => {
            let available = t.transferred_minor.saturating_sub(t.reversed_minor);
            let amount = share_minor.min(available);
            if amount <= 0 {
                return Ok(None);
            }
            let command = TransferCommand::RequestReversal {
                refund_id,
                amount: Amount::new(amount, currency),
                now,
            };
            let ctx_cmd =
                command_context(&format!("refund:{refund_id}:transfer:{id}:reverse"), actor);
            match ledger_store::handle::execute::<SellerTransfer, _>(
                &*ctx.events,
                &stream,
                &ctx_cmd,
                &command,
            )
            .await
            {
                Ok(_) => {
                    tracing::info!(
                        stream_id = %stream, refund_id = %refund_id, seller_id = %seller_id,
                        from_status = %t.status, to_status = "reversal_pending",
                        amount_minor = amount,
                        "refund_sellers: reversal of the refunded share requested"
                    );
                    Ok(None)
                }
                Err(HandleError::Rejected(TransferRejection::ReversalAlreadyPending {
                    pending,
                })) => Ok(Some(format!(
                    "transfer {id} is reversing for refund {pending}"
                ))),
                Err(e) => Err(handle_error(&stream, "RequestReversal", e)),
            }
        }
        TransferStatus::ReversalPending | TransferStatus::ReversalIndeterminate => Ok(Some(
            format!("transfer {id} is reversing for another refund"),
        )),
        TransferStatus::ReversalFailed => {
            tracing::error!(
                stream_id = %stream, refund_id = %refund_id, seller_id = %seller_id,
                amount_minor = share_minor,
                "refund_sellers: transfer is reversal_failed; the refunded share must be recovered by an operator"
            );
            Ok(None)
        }
        TransferStatus::Cancelled | TransferStatus::Reversed => Ok(None),
    }
}

/// Per seller, the whole order's shares (what `PaymentSucceeded` carries).
fn seller_totals(order: &PlacedOrder) -> Vec<ledger_core::order::SellerShare> {
    let mut shares: Vec<ledger_core::order::SellerShare> = Vec::new();
    for l in &order.lines {
        let line = &l.line;
        match shares.iter_mut().find(|s| s.seller_id == line.seller_id) {
            Some(s) => {
                s.total_minor = s.total_minor.saturating_add(line.total_minor);
                s.fee_minor = s.fee_minor.saturating_add(line.fee_minor);
                s.seller_minor = s.seller_minor.saturating_add(line.seller_minor);
            }
            None => shares.push(ledger_core::order::SellerShare {
                seller_id: line.seller_id.clone(),
                seller_account: line.seller_account.clone(),
                total_minor: line.total_minor,
                fee_minor: line.fee_minor,
                seller_minor: line.seller_minor,
            }),
        }
    }
    shares
}
