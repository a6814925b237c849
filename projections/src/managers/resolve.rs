//! Reading Stripe before writing again: how a payout or a reversal whose
//! create call left its outcome unknown (a 5xx, a timeout, a dropped
//! connection, a replayed error) is resolved.
//!
//! **Guarantees:**
//! - Every transfer and reversal the ledger creates carries
//!   `metadata[transfer_id]` (reversals also `metadata[refund_id]`) and
//!   `metadata[attempt]`, and a transfer its order's `transfer_group`, so
//!   the objects of one share are found by a list read
//!   (`GET /v1/transfers?transfer_group=…`, `GET /v1/transfers/{id}/reversals`).
//! - *Found* records the provider's object (its id and amount) through the
//!   core; an object whose amount, currency or destination is not the one
//!   asked for is an anomaly, never a completion. *None found* is the only
//!   proof of absence, and only then may a new attempt (a new key) follow.
//! - A read that fails leaves everything as it is; nothing is written
//!   blind.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ledger_core::ids::{RefundId, StripeReversalId, TransferId};
use ledger_core::transfer::{
    PendingReversal, ScheduledTransfer, SellerTransfer, TransferAnomalyKind, TransferCommand,
};
use ledger_psp::{PayoutReader, PspError, ReversalView, TransferFilter, TransferView};

use super::{Actor, Ctx, ManagerError};

/// Stripe may prune an idempotency key once it is 24 hours old; a key older
/// than this is treated as gone, so the object is looked for before the
/// key is used again.
pub const KEY_TRUSTED_FOR: TimeDelta = TimeDelta::hours(23);

/// How long after an ambiguous call the first read is made: long enough
/// for a slow request still running at the provider to finish.
pub const INDETERMINATE_READ_DELAY: Duration = Duration::from_secs(30);

/// Metadata keys the ledger writes on every Stripe object it creates.
pub const META_TRANSFER_ID: &str = "transfer_id";
pub const META_REFUND_ID: &str = "refund_id";
pub const META_ATTEMPT: &str = "attempt";

/// The `transfer_group` of an order's payouts.
pub fn transfer_group(t: &ScheduledTransfer) -> String {
    format!("order_{}", t.order_id)
}

/// What a read of Stripe found for one payout.
#[derive(Debug)]
pub(crate) enum PayoutRead {
    /// No transfer names this share.
    Absent,
    /// The transfer to record, and any other transfers naming the same
    /// share (a second payout an operator must reverse).
    Found {
        view: TransferView,
        others: Vec<TransferView>,
    },
}

/// Lists the order's transfers and keeps those naming `t`. Prefers the one
/// made by the current attempt, then the oldest.
pub(crate) async fn read_payout(
    reader: &dyn PayoutReader,
    t: &ScheduledTransfer,
) -> Result<PayoutRead, PspError> {
    let filter = TransferFilter {
        transfer_group: Some(transfer_group(t)),
        ..TransferFilter::default()
    };
    let ours = t.transfer_id.to_string();
    let mut matching: Vec<TransferView> = reader
        .list_transfers(&filter)
        .await?
        .into_iter()
        .filter(|v| v.metadata.get(META_TRANSFER_ID) == Some(&ours))
        .collect();
    if matching.is_empty() {
        return Ok(PayoutRead::Absent);
    }
    let attempt = t.attempt.to_string();
    matching.sort_by_key(|v| {
        (
            v.metadata.get(META_ATTEMPT) != Some(&attempt),
            v.created,
            v.id.to_string(),
        )
    });
    let view = matching.remove(0);
    Ok(PayoutRead::Found {
        view,
        others: matching,
    })
}

/// Why a found transfer cannot be recorded as this share's payout.
pub(crate) fn payout_mismatch(t: &ScheduledTransfer, view: &TransferView) -> Option<String> {
    if view.amount.currency != t.amount.currency {
        return Some(format!(
            "stripe transfer {} is in {}, the share in {}",
            view.id, view.amount.currency, t.amount.currency
        ));
    }
    if view.amount.minor <= 0 || view.amount.minor > t.scheduled_amount.minor {
        return Some(format!(
            "stripe transfer {} moved {}, the share is {}",
            view.id, view.amount, t.scheduled_amount
        ));
    }
    match &view.destination {
        Some(d) if *d == t.destination => None,
        Some(d) => Some(format!(
            "stripe transfer {} went to {d}, the share's seller is {}",
            view.id, t.destination
        )),
        None => Some(format!(
            "stripe transfer {} has a null destination",
            view.id
        )),
    }
}

/// Records an anomaly on a transfer stream (deduplicated by the core by
/// kind and provider id, so a sweep that meets it again writes nothing).
/// Returns whether it was new.
pub(crate) async fn record_anomaly(
    ctx: &Ctx,
    t: &ScheduledTransfer,
    actor: Actor,
    kind: TransferAnomalyKind,
    provider_id: Option<&str>,
    detail: &str,
    now: DateTime<Utc>,
) -> Result<bool, ManagerError> {
    let stream = t.transfer_id.stream_id();
    let handled = ctx
        .run::<SellerTransfer>(
            &stream,
            &format!(
                "transfer:{}:anomaly:{}:{}",
                t.transfer_id,
                kind.as_str(),
                provider_id.unwrap_or("-")
            ),
            actor,
            &TransferCommand::RecordAnomaly {
                kind,
                provider_id: provider_id.map(str::to_owned),
                detail: detail.to_owned(),
                now,
            },
            "RecordAnomaly",
        )
        .await?;
    let new = !handled.events.is_empty();
    if new {
        tracing::error!(
            stream_id = %stream, anomaly = kind.as_str(),
            provider_id = provider_id.unwrap_or(""), detail = %detail,
            status = %t.status,
            "transfer: anomaly recorded; an operator must look"
        );
    }
    Ok(new)
}

/// Metadata of a payout attempt.
pub(crate) fn payout_metadata(t: &ScheduledTransfer) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("order_id".to_owned(), t.order_id.to_string()),
        ("seller_id".to_owned(), t.seller_id.to_string()),
        (META_TRANSFER_ID.to_owned(), t.transfer_id.to_string()),
        (META_ATTEMPT.to_owned(), t.attempt.to_string()),
    ])
}

/// Metadata of a reversal attempt.
pub(crate) fn reversal_metadata(
    transfer_id: TransferId,
    pending: &PendingReversal,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (META_TRANSFER_ID.to_owned(), transfer_id.to_string()),
        (META_REFUND_ID.to_owned(), pending.refund_id.to_string()),
        (META_ATTEMPT.to_owned(), pending.attempt.to_string()),
    ])
}

/// The reversals of a Stripe transfer that name `refund_id`, oldest first.
pub(crate) async fn read_reversals(
    reader: &dyn PayoutReader,
    stripe_transfer_id: &ledger_core::ids::StripeTransferId,
    refund_id: RefundId,
) -> Result<Vec<ReversalView>, PspError> {
    let ours = refund_id.to_string();
    let mut found: Vec<ReversalView> = reader
        .list_reversals(stripe_transfer_id)
        .await?
        .into_iter()
        .filter(|r| r.metadata.get(META_REFUND_ID) == Some(&ours))
        .collect();
    // Stripe lists newest first.
    found.reverse();
    Ok(found)
}

/// A read that finds nothing proves absence only once the lost answer is
/// [`INDETERMINATE_READ_DELAY`] old: before that the call may still be
/// running at the provider.
pub(crate) fn absence_provable(
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    stream: &ledger_core::ids::StreamId,
) -> Result<(), ManagerError> {
    let ready = super::after(since, INDETERMINATE_READ_DELAY);
    if now >= ready {
        return Ok(());
    }
    Err(ManagerError::TooEarly {
        stream: stream.to_string(),
        reason: format!(
            "Stripe lists nothing yet, but the lost answer is younger than {}s and the call may still be running there; absence is provable from {ready}",
            INDETERMINATE_READ_DELAY.as_secs()
        ),
    })
}

/// The key is old enough that Stripe may have forgotten it.
pub(crate) fn key_may_be_gone(since: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now - since >= KEY_TRUSTED_FOR
}

/// A reversal id recorded already.
pub(crate) fn recorded(t: &ScheduledTransfer, id: &StripeReversalId) -> bool {
    t.stripe_reversal_ids.contains(id)
}
