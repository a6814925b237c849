//! The one projection logic both backends share: events → row images.
//!
//! **Guarantees:**
//! - Pure: a batch of decoded events plus the stored images of the entities
//!   it touches (loaded by the caller) yields the new images and the
//!   append-only rows. No SQL, no IO.
//! - An event the rows cannot absorb (an event for an entity never created,
//!   a second creation, a line the order does not have, an overflowing sum)
//!   is a [`FoldError`]: the projection stops there, it never skips.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ledger_core::RecordedEvent;
use ledger_core::events::AnyEvent;
use ledger_core::order::{OrderEvent, OrderStatus};
use ledger_core::postings::{Side, postings};
use ledger_core::refund::{RefundEvent, RefundStatus};
use ledger_core::transfer::{TransferEvent, TransferStatus};
use serde::{Deserialize, Serialize};

use super::schema::ReadModel;

/// Timestamps as fixed-width RFC 3339 text (sorts as text on SQLite, parses
/// as `timestamptz` on Postgres); reads any RFC 3339 offset back.
mod ts {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub const FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&t.format(FORMAT))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
        DateTime::parse_from_rfc3339(text)
            .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z"))
            .map(|t| t.with_timezone(&Utc))
    }

    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.collect_str(&t.format(super::FORMAT)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|t| super::parse(&t).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRow {
    pub order_id: String,
    pub status: String,
    pub buyer_id: String,
    pub currency: String,
    pub total_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub fee_minor: i64,
    pub payment_id: Option<String>,
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    #[serde(with = "ts")]
    pub status_since: DateTime<Utc>,
    pub stream_version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLineRow {
    pub order_id: String,
    pub product_id: String,
    pub seller_id: String,
    pub seller_account: String,
    pub currency: String,
    pub unit_amount_minor: i64,
    pub quantity: i64,
    pub total_minor: i64,
    pub fee_minor: i64,
    pub seller_minor: i64,
    /// `none`, `reserved` or `refunded`.
    pub refund_state: String,
    pub refund_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRow {
    pub refund_id: String,
    pub status: String,
    pub order_id: String,
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// The refunded lines as canonical JSON.
    pub lines: String,
    pub reason: String,
    pub hyperswitch_refund_id: Option<String>,
    pub failure: Option<String>,
    pub error_message: Option<String>,
    #[serde(with = "ts")]
    pub requested_at: DateTime<Utc>,
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    #[serde(with = "ts")]
    pub status_since: DateTime<Utc>,
    pub stream_version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRow {
    pub transfer_id: String,
    pub status: String,
    pub order_id: String,
    pub seller_id: String,
    pub destination: String,
    pub currency: String,
    pub scheduled_minor: i64,
    /// Still to pay out: scheduled minus reductions.
    pub amount_minor: i64,
    pub transferred_minor: i64,
    pub amount_reversed_minor: i64,
    pub stripe_transfer_id: Option<String>,
    /// The latest reversal's id.
    pub stripe_reversal_id: Option<String>,
    pub attempt: i64,
    pub retry_count: i64,
    pub reversal_retry_count: i64,
    #[serde(with = "ts::option")]
    pub next_retry_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    #[serde(with = "ts")]
    pub status_since: DateTime<Utc>,
    pub stream_version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEntryRow {
    pub entry_id: String,
    pub source_event_id: String,
    pub event_type: String,
    pub stream_id: String,
    pub stream_version: i64,
    pub global_position: i64,
    pub currency: String,
    pub description: String,
    #[serde(with = "ts")]
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostingRow {
    pub entry_id: String,
    pub leg: i64,
    pub account: String,
    /// `debit` or `credit`.
    pub side: String,
    pub amount_minor: i64,
    pub currency: String,
    pub event_type: String,
    #[serde(with = "ts")]
    pub recorded_at: DateTime<Utc>,
}

/// A delta, added to the stored balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountBalanceRow {
    pub account: String,
    pub currency: String,
    pub debit_minor: i64,
    pub credit_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnomalyRow {
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub kind: String,
    /// The event's payload as stored.
    pub details: String,
    #[serde(with = "ts")]
    pub at: DateTime<Utc>,
    pub global_position: i64,
}

/// An order and its lines: one entity image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderImage {
    pub row: OrderRow,
    pub lines: Vec<OrderLineRow>,
}

/// Why an event cannot be projected. Names what an operator must look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stream} v{version}: {reason}")]
pub struct FoldError {
    pub stream: String,
    pub version: u64,
    pub reason: String,
}

/// The entity images a fold reads and writes. `None` inside a map means
/// "known not to exist" (loaded and absent).
#[derive(Debug, Default)]
pub struct Images {
    pub orders: BTreeMap<String, Option<OrderImage>>,
    pub refunds: BTreeMap<String, Option<RefundRow>>,
    pub transfers: BTreeMap<String, Option<TransferRow>>,
}

impl Images {
    pub fn len(&self) -> usize {
        self.orders.len() + self.refunds.len() + self.transfers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.orders.clear();
        self.refunds.clear();
        self.transfers.clear();
    }
}

/// What one batch writes: the dirty entity keys (their images live in
/// [`Images`]) and the append-only rows.
#[derive(Debug, Default)]
pub struct Changes {
    pub orders: BTreeSet<String>,
    pub refunds: BTreeSet<String>,
    pub transfers: BTreeSet<String>,
    pub entries: Vec<JournalEntryRow>,
    pub postings: Vec<PostingRow>,
    pub balances: BTreeMap<(String, String), (i64, i64)>,
    pub anomalies: Vec<AnomalyRow>,
}

/// The entity an event's stream holds: `(kind, id)` from `order-…` etc.
pub fn entity_of(stream_id: &str) -> Option<(ReadModel, &str)> {
    if let Some(id) = stream_id.strip_prefix("order-") {
        Some((ReadModel::Orders, id))
    } else if let Some(id) = stream_id.strip_prefix("refund-") {
        Some((ReadModel::Refunds, id))
    } else {
        stream_id
            .strip_prefix("transfer-")
            .map(|id| (ReadModel::Transfers, id))
    }
}

/// True for the event that creates its stream's entity (no stored row to load).
pub fn is_creation(event: &AnyEvent) -> bool {
    matches!(
        event,
        AnyEvent::Order(OrderEvent::OrderPlaced { .. })
            | AnyEvent::Refund(RefundEvent::RefundRequested { .. })
            | AnyEvent::Transfer(TransferEvent::TransferScheduled { .. })
    )
}

fn json_str<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn version_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Applies one event to the models in `models`.
pub fn apply(
    models: &BTreeSet<ReadModel>,
    recorded: &RecordedEvent,
    event: &AnyEvent,
    images: &mut Images,
    changes: &mut Changes,
) -> Result<(), FoldError> {
    let fail = |reason: String| FoldError {
        stream: recorded.stream_id.as_str().to_owned(),
        version: recorded.stream_version,
        reason,
    };
    let id = entity_of(recorded.stream_id.as_str())
        .map(|(_, id)| id.to_owned())
        .ok_or_else(|| fail("stream of no known kind".to_owned()))?;
    let version = version_i64(recorded.stream_version);
    let at = event_at(event);
    match event {
        AnyEvent::Order(e) if models.contains(&ReadModel::Orders) => {
            let slot = images.orders.entry(id.clone()).or_default();
            apply_order(slot, &id, version, at, e).map_err(fail)?;
            changes.orders.insert(id);
        }
        AnyEvent::Refund(e) if models.contains(&ReadModel::Refunds) => {
            let slot = images.refunds.entry(id.clone()).or_default();
            apply_refund(slot, &id, version, at, e).map_err(fail)?;
            changes.refunds.insert(id);
        }
        AnyEvent::Transfer(e) if models.contains(&ReadModel::Transfers) => {
            let slot = images.transfers.entry(id.clone()).or_default();
            apply_transfer(slot, &id, version, at, e).map_err(fail)?;
            changes.transfers.insert(id);
        }
        _ => {}
    }
    if models.contains(&ReadModel::Journal) {
        journal(recorded, event, changes).map_err(fail)?;
    }
    if models.contains(&ReadModel::Anomalies)
        && let Some(kind) = anomaly_kind(event)
    {
        changes.anomalies.push(AnomalyRow {
            stream_id: recorded.stream_id.as_str().to_owned(),
            stream_version: version,
            event_type: recorded.event_type.clone(),
            kind,
            details: recorded.payload.clone(),
            at,
            global_position: version_i64(recorded.global_position),
        });
    }
    Ok(())
}

fn journal(
    recorded: &RecordedEvent,
    event: &AnyEvent,
    changes: &mut Changes,
) -> Result<(), String> {
    for entry in postings(recorded.event_id, event) {
        if !entry.is_balanced() {
            return Err(format!("journal entry {} does not balance", entry.entry_id));
        }
        let entry_id = entry.entry_id.to_string();
        let currency = entry.currency.as_str().to_owned();
        for (leg, p) in entry.postings.iter().enumerate() {
            let account = p.account.to_string();
            let side = match p.side {
                Side::Debit => "debit",
                Side::Credit => "credit",
            };
            let delta = changes
                .balances
                .entry((account.clone(), currency.clone()))
                .or_insert((0, 0));
            let total = match p.side {
                Side::Debit => &mut delta.0,
                Side::Credit => &mut delta.1,
            };
            *total = total
                .checked_add(p.amount_minor)
                .ok_or_else(|| format!("balance of {account} overflows"))?;
            changes.postings.push(PostingRow {
                entry_id: entry_id.clone(),
                leg: i64::try_from(leg).unwrap_or(i64::MAX),
                account,
                side: side.to_owned(),
                amount_minor: p.amount_minor,
                currency: currency.clone(),
                event_type: recorded.event_type.clone(),
                recorded_at: recorded.recorded_at,
            });
        }
        changes.entries.push(JournalEntryRow {
            entry_id,
            source_event_id: entry.source_event_id.to_string(),
            event_type: recorded.event_type.clone(),
            stream_id: recorded.stream_id.as_str().to_owned(),
            stream_version: version_i64(recorded.stream_version),
            global_position: version_i64(recorded.global_position),
            currency,
            description: entry.description,
            recorded_at: recorded.recorded_at,
        });
    }
    Ok(())
}

/// Events an operator must look at, with their kind.
fn anomaly_kind(event: &AnyEvent) -> Option<String> {
    match event {
        AnyEvent::Order(OrderEvent::PaymentAnomalyRecorded { kind, .. }) => Some(json_str(kind)),
        AnyEvent::Refund(RefundEvent::RefundAnomalyRecorded { kind, .. }) => Some(json_str(kind)),
        AnyEvent::Refund(RefundEvent::RefundFailed { failure, .. })
            if json_str(failure) == "orphaned" =>
        {
            Some("refund_orphaned".to_owned())
        }
        AnyEvent::Transfer(TransferEvent::TransferPermanentlyFailed { .. }) => {
            Some("transfer_permanently_failed".to_owned())
        }
        AnyEvent::Transfer(TransferEvent::TransferReversalFailed { failure, .. }) => {
            Some(format!("reversal_failed_{}", json_str(failure)))
        }
        _ => None,
    }
}

/// The business time every event carries.
pub fn event_at(event: &AnyEvent) -> DateTime<Utc> {
    use OrderEvent as O;
    use RefundEvent as R;
    use TransferEvent as T;
    match event {
        AnyEvent::Order(
            O::OrderPlaced { at, .. }
            | O::PaymentInitiated { at, .. }
            | O::PaymentSucceeded { at, .. }
            | O::PaymentFailed { at, .. }
            | O::PaymentCancelled { at, .. }
            | O::OrderCancelled { at, .. }
            | O::PaymentAnomalyRecorded { at, .. }
            | O::RefundRequested { at, .. }
            | O::RefundCompleted { at, .. }
            | O::RefundReleased { at, .. },
        )
        | AnyEvent::Refund(
            R::RefundRequested { at, .. }
            | R::RefundSubmitted { at, .. }
            | R::RefundSucceeded { at, .. }
            | R::RefundFailed { at, .. }
            | R::RefundAnomalyRecorded { at, .. },
        )
        | AnyEvent::Transfer(
            T::TransferScheduled { at, .. }
            | T::TransferCompleted { at, .. }
            | T::TransferFailed { at, .. }
            | T::TransferPermanentlyFailed { at, .. }
            | T::TransferRetried { at, .. }
            | T::TransferReduced { at, .. }
            | T::TransferCancelled { at, .. }
            | T::TransferReversalRequested { at, .. }
            | T::TransferReversed { at, .. }
            | T::TransferAlreadyReversed { at, .. }
            | T::TransferReversalRetryScheduled { at, .. }
            | T::TransferReversalFailed { at, .. },
        ) => *at,
    }
}

fn existing<'a, T>(slot: &'a mut Option<T>, what: &str) -> Result<&'a mut T, String> {
    slot.as_mut()
        .ok_or_else(|| format!("{what} was never created"))
}

fn apply_order(
    slot: &mut Option<OrderImage>,
    id: &str,
    version: i64,
    at: DateTime<Utc>,
    event: &OrderEvent,
) -> Result<(), String> {
    if let OrderEvent::OrderPlaced {
        order_id,
        buyer_id,
        currency,
        lines,
        total_minor,
        fee_minor,
        at,
        ..
    } = event
    {
        if slot.is_some() {
            return Err(format!("order {id} is placed twice"));
        }
        let order_id = order_id.to_string();
        if order_id != id {
            return Err(format!("OrderPlaced names order {order_id}"));
        }
        let currency = currency.as_str().to_owned();
        *slot = Some(OrderImage {
            row: OrderRow {
                order_id: order_id.clone(),
                status: OrderStatus::Created.as_str().to_owned(),
                buyer_id: buyer_id.to_string(),
                currency: currency.clone(),
                total_minor: *total_minor,
                captured_minor: 0,
                refunded_minor: 0,
                fee_minor: *fee_minor,
                payment_id: None,
                created_at: *at,
                updated_at: *at,
                status_since: *at,
                stream_version: version,
            },
            lines: lines
                .iter()
                .map(|l| OrderLineRow {
                    order_id: order_id.clone(),
                    product_id: l.product_id.to_string(),
                    seller_id: l.seller_id.to_string(),
                    seller_account: l.seller_account.to_string(),
                    currency: currency.clone(),
                    unit_amount_minor: l.unit_amount_minor,
                    quantity: l.quantity,
                    total_minor: l.total_minor,
                    fee_minor: l.fee_minor,
                    seller_minor: l.seller_minor,
                    refund_state: "none".to_owned(),
                    refund_id: None,
                })
                .collect(),
        });
        return Ok(());
    }
    let o = existing(slot, &format!("order {id}"))?;
    let mut status = None;
    match event {
        OrderEvent::OrderPlaced { .. } => {}
        OrderEvent::PaymentInitiated { payment_id, .. } => {
            o.row.payment_id = Some(payment_id.to_string());
            status = Some(OrderStatus::Pending);
        }
        OrderEvent::PaymentSucceeded { amount_minor, .. } => {
            o.row.captured_minor = *amount_minor;
            status = Some(OrderStatus::Completed);
        }
        OrderEvent::PaymentFailed { .. } => status = Some(OrderStatus::Failed),
        OrderEvent::PaymentCancelled { .. } | OrderEvent::OrderCancelled { .. } => {
            status = Some(OrderStatus::Cancelled)
        }
        OrderEvent::PaymentAnomalyRecorded { .. } => {}
        OrderEvent::RefundRequested {
            refund_id, lines, ..
        } => {
            let refund_id = refund_id.to_string();
            for rl in lines {
                let product = rl.product_id.to_string();
                let line = o
                    .lines
                    .iter_mut()
                    .find(|l| l.product_id == product && l.refund_state == "none")
                    .ok_or_else(|| format!("line {product} is not refundable"))?;
                line.refund_state = "reserved".to_owned();
                line.refund_id = Some(refund_id.clone());
            }
            status = Some(OrderStatus::RefundPending);
        }
        OrderEvent::RefundCompleted {
            refund_id,
            amount_minor,
            fully_refunded,
            ..
        } => {
            let refund_id = refund_id.to_string();
            for line in o.lines.iter_mut() {
                if line.refund_state == "reserved" && line.refund_id.as_deref() == Some(&refund_id)
                {
                    line.refund_state = "refunded".to_owned();
                }
            }
            o.row.refunded_minor = o
                .row
                .refunded_minor
                .checked_add(*amount_minor)
                .ok_or("refunded total overflows")?;
            status = Some(if *fully_refunded {
                OrderStatus::Refunded
            } else {
                OrderStatus::PartiallyRefunded
            });
        }
        OrderEvent::RefundReleased {
            refund_id,
            restored_status,
            ..
        } => {
            let refund_id = refund_id.to_string();
            for line in o.lines.iter_mut() {
                if line.refund_state == "reserved" && line.refund_id.as_deref() == Some(&refund_id)
                {
                    line.refund_state = "none".to_owned();
                    line.refund_id = None;
                }
            }
            status = Some(*restored_status);
        }
    }
    if let Some(s) = status {
        o.row.status = s.as_str().to_owned();
        o.row.status_since = at;
    }
    o.row.updated_at = at;
    o.row.stream_version = version;
    Ok(())
}

fn apply_refund(
    slot: &mut Option<RefundRow>,
    id: &str,
    version: i64,
    at: DateTime<Utc>,
    event: &RefundEvent,
) -> Result<(), String> {
    if let RefundEvent::RefundRequested {
        refund_id,
        order_id,
        payment_id,
        amount_minor,
        currency,
        lines,
        reason,
        at,
    } = event
    {
        if slot.is_some() {
            return Err(format!("refund {id} is requested twice"));
        }
        let lines = serde_json::to_string(lines).map_err(|e| e.to_string())?;
        *slot = Some(RefundRow {
            refund_id: refund_id.to_string(),
            status: RefundStatus::Requested.as_str().to_owned(),
            order_id: order_id.to_string(),
            payment_id: payment_id.to_string(),
            amount_minor: *amount_minor,
            currency: currency.as_str().to_owned(),
            lines,
            reason: reason.clone(),
            hyperswitch_refund_id: None,
            failure: None,
            error_message: None,
            requested_at: *at,
            updated_at: *at,
            status_since: *at,
            stream_version: version,
        });
        return Ok(());
    }
    let r = existing(slot, &format!("refund {id}"))?;
    let mut status = None;
    match event {
        RefundEvent::RefundRequested { .. } | RefundEvent::RefundAnomalyRecorded { .. } => {}
        RefundEvent::RefundSubmitted { psp_refund_id, .. } => {
            r.hyperswitch_refund_id = Some(psp_refund_id.to_string());
            status = Some(RefundStatus::Submitted);
        }
        RefundEvent::RefundSucceeded { psp_refund_id, .. } => {
            r.hyperswitch_refund_id = Some(psp_refund_id.to_string());
            status = Some(RefundStatus::Succeeded);
        }
        RefundEvent::RefundFailed {
            failure,
            error_message,
            ..
        } => {
            r.failure = Some(json_str(failure));
            r.error_message = error_message.clone();
            status = Some(RefundStatus::Failed);
        }
    }
    if let Some(s) = status {
        r.status = s.as_str().to_owned();
        r.status_since = at;
    }
    r.updated_at = at;
    r.stream_version = version;
    Ok(())
}

fn apply_transfer(
    slot: &mut Option<TransferRow>,
    id: &str,
    version: i64,
    at: DateTime<Utc>,
    event: &TransferEvent,
) -> Result<(), String> {
    use TransferEvent as T;
    if let T::TransferScheduled {
        transfer_id,
        order_id,
        seller_id,
        destination,
        amount,
        at,
    } = event
    {
        if slot.is_some() {
            return Err(format!("transfer {id} is scheduled twice"));
        }
        *slot = Some(TransferRow {
            transfer_id: transfer_id.to_string(),
            status: TransferStatus::Pending.as_str().to_owned(),
            order_id: order_id.to_string(),
            seller_id: seller_id.to_string(),
            destination: destination.to_string(),
            currency: amount.currency.as_str().to_owned(),
            scheduled_minor: amount.minor,
            amount_minor: amount.minor,
            transferred_minor: 0,
            amount_reversed_minor: 0,
            stripe_transfer_id: None,
            stripe_reversal_id: None,
            attempt: 1,
            retry_count: 0,
            reversal_retry_count: 0,
            next_retry_at: None,
            last_error: None,
            created_at: *at,
            updated_at: *at,
            status_since: *at,
            stream_version: version,
        });
        return Ok(());
    }
    let t = existing(slot, &format!("transfer {id}"))?;
    let mut status = None;
    match event {
        T::TransferScheduled { .. } => {}
        T::TransferCompleted {
            stripe_transfer_id,
            amount,
            ..
        } => {
            t.stripe_transfer_id = stripe_transfer_id.as_ref().map(|s| s.to_string());
            t.transferred_minor = amount.minor;
            t.next_retry_at = None;
            status = Some(TransferStatus::Completed);
        }
        T::TransferFailed {
            error,
            retry_count,
            next_retry_at,
            ..
        } => {
            t.retry_count = i64::from(*retry_count);
            t.next_retry_at = Some(*next_retry_at);
            t.last_error = Some(error.clone());
            status = Some(TransferStatus::Failed);
        }
        T::TransferPermanentlyFailed {
            error, retry_count, ..
        } => {
            t.retry_count = i64::from(*retry_count);
            t.next_retry_at = None;
            t.last_error = Some(error.clone());
            status = Some(TransferStatus::PermanentlyFailed);
        }
        T::TransferRetried { attempt, .. } => {
            if t.status == TransferStatus::PermanentlyFailed.as_str() {
                t.retry_count = 0;
            }
            t.attempt = i64::from(*attempt);
            t.next_retry_at = None;
            status = Some(TransferStatus::Pending);
        }
        T::TransferReduced { remaining, .. } => t.amount_minor = remaining.minor,
        T::TransferCancelled { .. } => {
            t.next_retry_at = None;
            status = Some(TransferStatus::Cancelled);
        }
        T::TransferReversalRequested { .. } => {
            t.reversal_retry_count = 0;
            t.next_retry_at = None;
            status = Some(TransferStatus::ReversalPending);
        }
        T::TransferReversed {
            stripe_reversal_id,
            reversed_total_minor,
            fully_reversed,
            ..
        } => {
            t.amount_reversed_minor = *reversed_total_minor;
            t.stripe_reversal_id = Some(stripe_reversal_id.to_string());
            t.next_retry_at = None;
            status = Some(reversal_outcome(*fully_reversed));
        }
        T::TransferAlreadyReversed {
            reversed_total_minor,
            fully_reversed,
            ..
        } => {
            t.amount_reversed_minor = *reversed_total_minor;
            t.next_retry_at = None;
            status = Some(reversal_outcome(*fully_reversed));
        }
        T::TransferReversalRetryScheduled {
            error,
            retry_count,
            next_retry_at,
            ..
        } => {
            t.reversal_retry_count = i64::from(*retry_count);
            t.next_retry_at = Some(*next_retry_at);
            t.last_error = Some(error.clone());
        }
        T::TransferReversalFailed { error, .. } => {
            t.next_retry_at = None;
            t.last_error = Some(error.clone());
            status = Some(TransferStatus::ReversalFailed);
        }
    }
    if let Some(s) = status {
        t.status = s.as_str().to_owned();
        t.status_since = at;
    }
    t.updated_at = at;
    t.stream_version = version;
    Ok(())
}

fn reversal_outcome(fully: bool) -> TransferStatus {
    if fully {
        TransferStatus::Reversed
    } else {
        TransferStatus::PartiallyReversed
    }
}
