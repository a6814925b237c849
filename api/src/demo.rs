//! `ledger demo`: one small marketplace day through the real command path
//! (core deciders + the configured event store), then a trial balance from
//! the journal postings of every stored event.
//!
//! PSP outcomes here are *simulated inputs* (the statuses a webhook would
//! carry); no PSP is called. It exists so a newcomer can see streams, replay
//! and the journal on the embedded store in one command.

use anyhow::Context;
use chrono::Utc;
use ledger_core::ids::{
    BuyerId, ProductId, SellerAccount, SellerId, StreamId, StripeReversalId, StripeTransferId,
    command_id_from_cause, order_id_from_idempotency_key, payment_id_for, psp_refund_id_for,
    refund_id_from_idempotency_key, transfer_id,
};
use ledger_core::order::{LineInput, Order, OrderCommand, OrderEvent};
use ledger_core::psp::{PaymentStatus, RefundPspStatus};
use ledger_core::refund::{Refund, RefundCommand};
use ledger_core::transfer::{SellerTransfer, TransferCommand};
use ledger_core::{Amount, Currency, Decider, FeeBps, Metadata, Source};
use ledger_store::EventStore;
use ledger_store::handle::{CommandContext, Handled, execute};
use uuid::Uuid;

fn ctx(cause: &str, source: Source, correlation: Uuid) -> CommandContext {
    CommandContext {
        command_id: command_id_from_cause(cause),
        metadata: Metadata {
            correlation_id: correlation,
            causation_id: None,
            actor: "demo".to_owned(),
            source,
            request_id: None,
        },
    }
}

async fn run_cmd<D: Decider>(
    store: &dyn EventStore,
    stream: &StreamId,
    ctx: &CommandContext,
    cmd: D::Command,
) -> anyhow::Result<Handled<D>>
where
    D::Rejection: 'static,
{
    execute::<D, dyn EventStore>(store, stream, ctx, &cmd)
        .await
        .map_err(|e| anyhow::anyhow!("{stream}: {e}"))
}

/// Runs the day; `day` makes every id unique to this run (re-running with the
/// same `day` is a no-op, which is the point of deterministic ids).
pub async fn run(store: &dyn EventStore, day: &str) -> anyhow::Result<()> {
    let usd = Currency::parse("USD")?;
    let fee = FeeBps::new(1_000)?;
    let now = Utc::now();
    let corr = command_id_from_cause(&format!("demo:{day}"));
    let line =
        |product: &str, seller: &str, account: &str, unit: i64| -> anyhow::Result<LineInput> {
            Ok(LineInput {
                product_id: ProductId::new(product)?,
                seller_id: SellerId::new(seller)?,
                seller_account: SellerAccount::new(account)?,
                unit_amount_minor: unit,
                quantity: 1,
            })
        };

    // 1. Two orders placed through the API path.
    let mut orders = Vec::new();
    for (n, lines) in [
        (
            1,
            vec![
                line("track-1", "seller-ana", "acct_ana", 1_299)?,
                line("course-7", "seller-bo", "acct_bo", 4_900)?,
            ],
        ),
        (2, vec![line("track-9", "seller-ana", "acct_ana", 999)?]),
    ] {
        let key = format!("demo-{day}-order-{n}");
        let order_id = order_id_from_idempotency_key(&key);
        let stream = order_id.stream_id();
        run_cmd::<Order>(
            store,
            &stream,
            &ctx(&key, Source::Api, corr),
            OrderCommand::PlaceOrder {
                order_id,
                buyer_id: BuyerId::new(format!("buyer-{n}"))?,
                currency: usd,
                lines,
                fee_bps: fee,
                now,
            },
        )
        .await?;
        let payment_id = payment_id_for(order_id);
        run_cmd::<Order>(
            store,
            &stream,
            &ctx(&format!("{key}:init"), Source::Worker, corr),
            OrderCommand::InitiatePayment {
                payment_id: payment_id.clone(),
                now,
            },
        )
        .await?;
        orders.push((order_id, stream, payment_id));
    }

    // 2. Order 1 is paid, order 2's card is declined (simulated webhooks).
    let (order1, stream1, pay1) = &orders[0];
    run_cmd::<Order>(
        store,
        stream1,
        &ctx(&format!("evt-{day}-1"), Source::Webhook, corr),
        OrderCommand::ApplyPaymentStatus {
            payment_id: pay1.clone(),
            status: PaymentStatus::Succeeded,
            amount_minor: Some(6_199),
            error_message: None,
            now,
        },
    )
    .await?;
    let (_, stream2, pay2) = &orders[1];
    run_cmd::<Order>(
        store,
        stream2,
        &ctx(&format!("evt-{day}-2"), Source::Webhook, corr),
        OrderCommand::ApplyPaymentStatus {
            payment_id: pay2.clone(),
            status: PaymentStatus::Failed,
            amount_minor: None,
            error_message: Some("card_declined".to_owned()),
            now,
        },
    )
    .await?;

    // 3. One payout per seller of the paid order, both succeed.
    let sellers = stored_order_events(store, stream1)
        .await?
        .into_iter()
        .find_map(|e| match e {
            OrderEvent::PaymentSucceeded { sellers, .. } => Some(sellers),
            _ => None,
        })
        .context("order 1 did not record PaymentSucceeded")?;
    for share in &sellers {
        let tid = transfer_id(*order1, &share.seller_id);
        let stream = tid.stream_id();
        let amount = Amount::new(share.seller_minor, usd);
        let key = format!("demo-{day}-{tid}");
        run_cmd::<SellerTransfer>(
            store,
            &stream,
            &ctx(&format!("{key}:schedule"), Source::Worker, corr),
            TransferCommand::Schedule {
                transfer_id: tid,
                order_id: *order1,
                seller_id: share.seller_id.clone(),
                destination: share.seller_account.clone(),
                amount,
                now,
            },
        )
        .await?;
        run_cmd::<SellerTransfer>(
            store,
            &stream,
            &ctx(&format!("{key}:paid"), Source::Worker, corr),
            TransferCommand::RecordSucceeded {
                stripe_transfer_id: StripeTransferId::new(format!("tr_demo_{}", share.seller_id))?,
                amount,
                now,
            },
        )
        .await?;
    }

    // 4. The buyer refunds the course: reserve on the order, two-phase refund,
    //    then the seller's payout is reversed for their share.
    let refund_key = format!("demo-{day}-refund-1");
    let refund_id = refund_id_from_idempotency_key(*order1, &refund_key);
    run_cmd::<Order>(
        store,
        stream1,
        &ctx(&refund_key, Source::Api, corr),
        OrderCommand::RequestRefund {
            refund_id,
            product_ids: Some(vec![ProductId::new("course-7")?]),
            reason: "buyer changed their mind".to_owned(),
            now,
        },
    )
    .await?;
    let (amount_minor, lines) = stored_order_events(store, stream1)
        .await?
        .into_iter()
        .find_map(|e| match e {
            OrderEvent::RefundRequested {
                amount_minor,
                lines,
                refund_id: r,
                ..
            } if r == refund_id => Some((amount_minor, lines)),
            _ => None,
        })
        .context("the refund was not reserved")?;
    let rstream = refund_id.stream_id();
    run_cmd::<Refund>(
        store,
        &rstream,
        &ctx(&format!("{refund_key}:request"), Source::Api, corr),
        RefundCommand::Request {
            refund_id,
            order_id: *order1,
            payment_id: pay1.clone(),
            amount_minor,
            currency: usd,
            lines: lines.clone(),
            reason: "buyer changed their mind".to_owned(),
            now,
        },
    )
    .await?;
    let psp_refund = psp_refund_id_for(refund_id);
    run_cmd::<Refund>(
        store,
        &rstream,
        &ctx(&format!("{refund_key}:submit"), Source::Worker, corr),
        RefundCommand::Submit {
            psp_refund_id: psp_refund.clone(),
            now,
        },
    )
    .await?;
    run_cmd::<Refund>(
        store,
        &rstream,
        &ctx(&format!("evt-{day}-r1"), Source::Webhook, corr),
        RefundCommand::ApplyPspStatus {
            psp_refund_id: Some(psp_refund),
            status: RefundPspStatus::Succeeded,
            error_message: None,
            now,
        },
    )
    .await?;
    run_cmd::<Order>(
        store,
        stream1,
        &ctx(&format!("{refund_key}:complete"), Source::Worker, corr),
        OrderCommand::CompleteRefund { refund_id, now },
    )
    .await?;
    for l in &lines {
        let tstream = transfer_id(*order1, &l.seller_id).stream_id();
        let amount = Amount::new(l.seller_minor, usd);
        run_cmd::<SellerTransfer>(
            store,
            &tstream,
            &ctx(
                &format!("{refund_key}:{}:reverse", l.seller_id),
                Source::Worker,
                corr,
            ),
            TransferCommand::RequestReversal {
                refund_id,
                amount,
                now,
            },
        )
        .await?;
        run_cmd::<SellerTransfer>(
            store,
            &tstream,
            &ctx(
                &format!("{refund_key}:{}:reversed", l.seller_id),
                Source::Worker,
                corr,
            ),
            TransferCommand::RecordReversalSucceeded {
                stripe_reversal_id: StripeReversalId::new(format!("trr_demo_{}", l.seller_id))?,
                reversed_amount: amount,
                now,
            },
        )
        .await?;
    }

    println!("demo day {day:?} recorded. Streams:");
    println!("  {stream1}   (paid, then the course refunded)");
    println!("  {stream2}   (payment failed)");
    println!("  {rstream}");
    for share in &sellers {
        println!("  {}", transfer_id(*order1, &share.seller_id).stream_id());
    }
    println!("replay one:  ledger replay {stream1}");
    print_trial_balance(store).await
}

/// The decoded events of an order stream (a re-run of the same day decides
/// nothing new, so facts are read back from the store, not from the result).
async fn stored_order_events(
    store: &dyn EventStore,
    stream: &StreamId,
) -> anyhow::Result<Vec<OrderEvent>> {
    crate::replay::read_whole_stream(store, stream)
        .await?
        .iter()
        .map(|e| {
            ledger_core::codec::decode::<OrderEvent>(&e.event_type, e.schema_version, &e.payload)
                .with_context(|| format!("{} version {}", e.stream_id, e.stream_version))
        })
        .collect()
}

/// The trial balance of every stored event (see `ledger trial-balance`).
pub async fn print_trial_balance(store: &dyn EventStore) -> anyhow::Result<()> {
    let tb = crate::trial_balance::compute(store, None).await?;
    crate::trial_balance::print(&tb, None, false)
}
