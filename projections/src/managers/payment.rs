//! `payment`: create the order's Hyperswitch payment under the derived
//! `payment_id`, then record `PaymentInitiated` (and the status, when the
//! create call already answered a terminal one).
//!
//! Crash recovery: a payment created at the PSP whose `InitiatePayment` was
//! never recorded is found again by its derived id: the re-create answers
//! `HE_01`, the client GETs it, and the worker records it. No second payment
//! object can exist.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ledger_core::Amount;
use ledger_core::ids::{hyperswitch_customer_id, payment_id_for};
use ledger_core::order::{Order, OrderCommand, OrderStatus, PlacedOrder};
use ledger_psp::{CreateOutcome, CreatePayment, PaymentView, PspError};
use ledger_store::work::WorkItem;

use super::worker::{Step, stream_of};
use super::{Actor, Ctx, ManagerError};

const NAME: &str = "payment";
const ACTOR: Actor = Actor::worker(NAME);

pub(crate) async fn step(
    ctx: &Ctx,
    item: &WorkItem,
    now: DateTime<Utc>,
) -> Result<Step, ManagerError> {
    let stream = stream_of(item)?;
    let Some(order) = ctx.load::<Order>(&stream).await?.state.order else {
        tracing::warn!(stream_id = %stream, "payment: no order in this stream; nothing to pay");
        return Ok(Step::Done);
    };
    if order.status != OrderStatus::Created {
        // Initiated already (inline by the API, or an earlier pass): the
        // payment id is recorded, so there is no PSP call to make.
        tracing::debug!(stream_id = %stream, status = %order.status, "payment: already initiated");
        return Ok(Step::Done);
    }
    let payment_id = payment_id_for(order.order_id);
    // An earlier try of this row may have reached Hyperswitch: read before
    // creating again (the payment id is ours, so a read finds it).
    if item.attempts > 0 {
        match ctx.payments.get_payment_status(&payment_id).await {
            Ok(view) => {
                tracing::info!(
                    stream_id = %stream, payment_id = %payment_id, psp_status = %view.status,
                    cause = "read before creating again",
                    "payment: Hyperswitch has the payment an earlier try made; recording it"
                );
                record(ctx, &order, &view, now).await?;
                return Ok(Step::Done);
            }
            Err(e) if e.is_not_found() => {}
            // A failed read decides nothing: never a refusal of the create.
            Err(e) => {
                let due_at = ctx.due_after(
                    now,
                    item.attempts,
                    CreateOutcome::RetrySameKey {
                        after: e.retry_after(),
                    },
                );
                tracing::warn!(
                    stream_id = %stream, payment_id = %payment_id, attempts = item.attempts,
                    retry_at = %due_at, error = %e,
                    "payment: reading Hyperswitch before creating again failed; nothing sent, read again later"
                );
                return Ok(Step::Later {
                    due_at,
                    error: Some(e.to_string()),
                });
            }
        }
    }
    match initiate(ctx, &order, now).await {
        Ok(_) => Ok(Step::Done),
        Err(ManagerError::Psp(e)) => failed(ctx, &order, item, now, e).await,
        Err(other) => Err(other),
    }
}

/// What a failed create or read of the payment means for the order.
async fn failed(
    ctx: &Ctx,
    order: &PlacedOrder,
    item: &WorkItem,
    now: DateTime<Utc>,
    e: PspError,
) -> Result<Step, ManagerError> {
    let stream = order.order_id.stream_id();
    let payment_id = payment_id_for(order.order_id);
    let outcome = e.create_outcome();
    match outcome {
        CreateOutcome::RetrySameKey { .. }
        | CreateOutcome::Unknown
        | CreateOutcome::NeedsOperator => {
            let due_at = ctx.due_after(now, item.attempts, outcome);
            let read_first = outcome == CreateOutcome::Unknown;
            tracing::warn!(
                stream_id = %stream, payment_id = %payment_id,
                attempts = item.attempts, retry_at = %due_at, read_first, error = %e,
                "payment: Hyperswitch create failed; the next try reads the payment before creating it again"
            );
            Ok(Step::Later {
                due_at,
                error: Some(e.to_string()),
            })
        }
        CreateOutcome::Unreadable => {
            // Retrying would read the same thing; the order stays `created`
            // for an operator, who finds this line and the work row's error.
            tracing::error!(
                stream_id = %stream, payment_id = %payment_id, from_status = "created",
                to_status = "created", error = %e,
                "payment: Hyperswitch's answer cannot be read; the order waits for an operator"
            );
            Ok(Step::Done)
        }
        CreateOutcome::Refused => {
            let reason = format!("the payment could not be created: {e}");
            let handled = ctx
                .run::<Order>(
                    &stream,
                    &format!("payment:{payment_id}:create-refused"),
                    ACTOR,
                    &OrderCommand::CancelOrder { reason, now },
                    "CancelOrder",
                )
                .await?;
            tracing::error!(
                stream_id = %stream, payment_id = %payment_id, from_status = "created",
                to_status = %handled.state.status().map_or("none", |s| s.as_str()),
                error = %e,
                "payment: Hyperswitch refused the payment; order cancelled"
            );
            Ok(Step::Done)
        }
    }
}

/// Creates (or finds) the payment and records it. PSP errors come back as
/// [`ManagerError::Psp`] with nothing recorded.
pub(crate) async fn initiate(
    ctx: &Ctx,
    order: &PlacedOrder,
    now: DateTime<Utc>,
) -> Result<PaymentView, ManagerError> {
    let payment_id = payment_id_for(order.order_id);
    let request = CreatePayment {
        payment_id: payment_id.clone(),
        amount: Amount::new(order.total_minor, order.currency),
        customer_id: Some(hyperswitch_customer_id(&order.buyer_id)),
        description: Some(format!("order {}", order.order_id)),
        metadata: BTreeMap::from([("order_id".to_owned(), order.order_id.to_string())]),
    };
    let view = ctx.payments.create_payment(&request).await?;
    record(ctx, order, &view, now).await?;
    Ok(view)
}

/// Records a payment Hyperswitch has: `PaymentInitiated`, and its status
/// when the PSP already answered a terminal one.
async fn record(
    ctx: &Ctx,
    order: &PlacedOrder,
    view: &PaymentView,
    now: DateTime<Utc>,
) -> Result<(), ManagerError> {
    let stream = order.order_id.stream_id();
    let payment_id = payment_id_for(order.order_id);
    ctx.run::<Order>(
        &stream,
        &format!("payment:{payment_id}:initiate"),
        ACTOR,
        &OrderCommand::InitiatePayment {
            payment_id: payment_id.clone(),
            now,
        },
        "InitiatePayment",
    )
    .await?;
    let mut to_status = OrderStatus::Pending;
    if view.status.is_terminal() {
        let handled = ctx
            .run::<Order>(
                &stream,
                &format!("payment:{payment_id}:status:{}", view.status),
                ACTOR,
                &OrderCommand::ApplyPaymentStatus {
                    payment_id: payment_id.clone(),
                    status: view.status.clone(),
                    amount_minor: view.amount_received.map(|a| a.minor),
                    error_message: view.error_message.clone(),
                    now,
                },
                "ApplyPaymentStatus",
            )
            .await?;
        to_status = handled.state.status().unwrap_or(to_status);
    }
    tracing::info!(
        stream_id = %stream, payment_id = %payment_id, from_status = "created",
        to_status = %to_status, psp_status = %view.status,
        already_existed = view.already_existed,
        amount_minor = view.amount.minor,
        error_code = view.error_code.as_deref().unwrap_or(""),
        "payment: payment initiated"
    );
    Ok(())
}

/// The API's inline start: initiate within `deadline` and hand back the
/// client secret. `None` when the PSP did not answer in time or failed; the
/// `payment` worker finishes the job from the queued work.
pub(crate) async fn start_inline(
    ctx: &Ctx,
    order: &PlacedOrder,
    deadline: Duration,
) -> Option<String> {
    let stream = order.order_id.stream_id();
    let attempt = async {
        match order.status {
            OrderStatus::Created => initiate(ctx, order, ctx.clock.now()).await,
            OrderStatus::Pending => {
                let payment_id = order
                    .payment_id
                    .clone()
                    .unwrap_or_else(|| payment_id_for(order.order_id));
                Ok(ctx.payments.get_payment_status(&payment_id).await?)
            }
            _ => Err(ManagerError::Rejected {
                stream: stream.to_string(),
                command: "InitiatePayment",
                reason: format!("the order is {}", order.status),
            }),
        }
    };
    match tokio::time::timeout(deadline, attempt).await {
        Ok(Ok(view)) => view.client_secret,
        Ok(Err(e)) => {
            tracing::warn!(
                stream_id = %stream, error = %e,
                "payment: inline start failed; the payment worker will retry"
            );
            None
        }
        Err(_) => {
            tracing::info!(
                stream_id = %stream, deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                "payment: inline start missed its deadline; the payment worker finishes it"
            );
            None
        }
    }
}
