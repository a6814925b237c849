//! The one projection logic both backends share: events → row images.
//!
//! **Guarantees:**
//! - Pure: a batch of decoded events plus the stored images of the entities
//!   it touches (loaded by the caller) yields the new images and the
//!   append-only rows. No SQL, no IO.
//! - An event the rows cannot absorb (an event for an entity never created,
//!   a second creation, a line the order does not have, an overflowing sum)
//!   is a [`FoldError`]: the projection stops there, it never skips.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Datelike, SubsecRound, Timelike, Utc};
use ledger_core::RecordedEvent;
use ledger_core::events::AnyEvent;
use ledger_core::order::{OrderEvent, OrderStatus};
use ledger_core::postings::{Side, postings};
use ledger_core::refund::{RefundEvent, RefundStatus};
use ledger_core::transfer::{TransferEvent, TransferStatus};
use serde::{Deserialize, Serialize};

use super::Values;
use super::schema::{ANOMALY, ColType, JOURNAL_ENTRY, POSTING, ReadModel, Table};

/// Timestamps as fixed-width RFC 3339 text (sorts as text on SQLite, parses
/// as `timestamptz` on Postgres); reads any RFC 3339 offset back.
mod ts {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Also what [`super::format_ts`] writes, faster.
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

/// The append-only rows borrow from the event and its journal entry: the
/// fold writes them straight into typed columns ([`RowBuilder`]), no owned
/// row in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JournalEntryRow<'a> {
    pub entry_id: &'a str,
    pub source_event_id: &'a str,
    pub event_type: &'a str,
    pub stream_id: &'a str,
    pub stream_version: i64,
    pub global_position: i64,
    pub currency: &'a str,
    pub description: &'a str,
    #[serde(with = "ts")]
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PostingRow<'a> {
    pub entry_id: &'a str,
    pub leg: i64,
    pub account: &'a str,
    /// `debit` or `credit`.
    pub side: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub event_type: &'a str,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AnomalyRow<'a> {
    pub stream_id: &'a str,
    pub stream_version: i64,
    pub event_type: &'a str,
    pub kind: &'a str,
    /// The event's payload as stored.
    pub details: &'a str,
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
    pub orders: HashMap<String, Option<OrderImage>>,
    pub refunds: HashMap<String, Option<RefundRow>>,
    pub transfers: HashMap<String, Option<TransferRow>>,
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
/// [`Images`]) and the append-only rows, already in typed columns.
#[derive(Debug)]
pub struct Changes {
    /// Dirty entity ids → created by this batch (no stored row yet, so a
    /// plain insert; otherwise an upsert).
    pub orders: BTreeMap<String, bool>,
    pub refunds: BTreeMap<String, bool>,
    pub transfers: BTreeMap<String, bool>,
    /// [`JournalEntryRow`]s.
    pub entries: RowBuilder,
    /// [`PostingRow`]s.
    pub postings: RowBuilder,
    /// Account → currency → (debit, credit) deltas.
    pub balances: BTreeMap<String, BTreeMap<String, (i64, i64)>>,
    /// [`AnomalyRow`]s.
    pub anomalies: RowBuilder,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            orders: BTreeMap::new(),
            refunds: BTreeMap::new(),
            transfers: BTreeMap::new(),
            entries: RowBuilder::new(&JOURNAL_ENTRY, 0),
            postings: RowBuilder::new(&POSTING, 0),
            balances: BTreeMap::new(),
            anomalies: RowBuilder::new(&ANOMALY, 0),
        }
    }
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

/// A set of read models as bits: which models an event applies to is
/// decided per event, so it must not allocate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelSet(u8);

impl ModelSet {
    const fn bit(m: ReadModel) -> u8 {
        1 << (m as u8)
    }

    pub fn contains(self, m: ReadModel) -> bool {
        self.0 & Self::bit(m) != 0
    }

    pub fn insert(&mut self, m: ReadModel) {
        self.0 |= Self::bit(m);
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<ReadModel> for ModelSet {
    fn from_iter<I: IntoIterator<Item = ReadModel>>(iter: I) -> Self {
        let mut set = ModelSet::default();
        for m in iter {
            set.insert(m);
        }
        set
    }
}

/// [`ts::FORMAT`] (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, fractional digits
/// truncated), written by hand: chrono re-parses its format string on every
/// call, and a rebuild formats every timestamp it writes to SQLite.
pub fn format_ts(t: &DateTime<Utc>) -> String {
    let year = t.year();
    let nanos = t.nanosecond();
    // Years chrono writes with a sign or more digits, and leap seconds, take
    // chrono's own path.
    let (Ok(year), true) = (u32::try_from(year), nanos < 1_000_000_000) else {
        return t.format(ts::FORMAT).to_string();
    };
    if year > 9999 {
        return t.format(ts::FORMAT).to_string();
    }
    let mut s = String::with_capacity(27);
    let mut num = |v: u32, width: u32, after: Option<char>| {
        let mut div = 10_u32.pow(width.saturating_sub(1));
        while div > 0 {
            s.push(char::from_digit((v / div) % 10, 10).unwrap_or('0'));
            div /= 10;
        }
        if let Some(c) = after {
            s.push(c);
        }
    };
    num(year, 4, Some('-'));
    num(t.month(), 2, Some('-'));
    num(t.day(), 2, Some('T'));
    num(t.hour(), 2, Some(':'));
    num(t.minute(), 2, Some(':'));
    num(t.second(), 2, Some('.'));
    num(nanos / 1_000, 6, Some('Z'));
    s
}

/// Builds one table's typed columns, row by row in the table's column
/// order. A value of the wrong type for its column (a row type drifting
/// from its [`Table`]) is an error, never a coercion.
#[derive(Debug)]
pub struct RowBuilder {
    table: &'static str,
    cols: Vec<Values>,
    at: usize,
    rows: usize,
    error: Option<String>,
    /// Per text column, the distinct values seen so far, shared rather than
    /// allocated again (statuses, currencies, event types repeat); `None`
    /// once a column proves to hold more than [`INTERNED_PER_COLUMN_MAX`].
    interned: Vec<Option<Vec<Arc<str>>>>,
}

/// Distinct values a text column's interner keeps (and scans) before it
/// gives up on the column (an id: every value new).
pub const INTERNED_PER_COLUMN_MAX: usize = 16;

impl RowBuilder {
    pub fn new(table: &Table, capacity: usize) -> Self {
        RowBuilder {
            table: table.name,
            cols: table
                .columns
                .iter()
                .map(|c| Values::with_capacity(c.ty, capacity))
                .collect(),
            at: 0,
            rows: 0,
            error: None,
            interned: table
                .columns
                .iter()
                .map(|c| (c.ty == ColType::Text).then(Vec::new))
                .collect(),
        }
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    fn intern(&mut self, column: usize, v: &str) -> Arc<str> {
        // The same value as the row before (an entry's legs, a batch's
        // currency) is the cheapest share of all.
        if let Some(Values::Text(c)) = self.cols.get(column)
            && let Some(Some(prev)) = c.last()
            && **prev == *v
        {
            return Arc::clone(prev);
        }
        let Some(Some(seen)) = self.interned.get_mut(column) else {
            return Arc::from(v);
        };
        if let Some(shared) = seen.iter().find(|s| ***s == *v) {
            return Arc::clone(shared);
        }
        let new: Arc<str> = Arc::from(v);
        if seen.len() < INTERNED_PER_COLUMN_MAX {
            seen.push(Arc::clone(&new));
        } else if let Some(slot) = self.interned.get_mut(column) {
            *slot = None;
        }
        new
    }

    fn fail(&mut self, reason: String) {
        if self.error.is_none() {
            self.error = Some(format!("table {}: {reason}", self.table));
        }
    }

    fn slot(&mut self, want: ColType) -> Option<&mut Values> {
        let i = self.at;
        self.at += 1;
        match self.cols.get(i).map(Values::col_type) {
            Some(ty) if ty == want => self.cols.get_mut(i),
            found => {
                self.fail(format!("column {i} is {found:?}, the row gives {want:?}"));
                None
            }
        }
    }

    pub fn opt_text(&mut self, v: Option<&str>) {
        let v = v.map(|v| self.intern(self.at, v));
        if let Some(Values::Text(c)) = self.slot(ColType::Text) {
            c.push(v);
        }
    }

    pub fn text(&mut self, v: &str) {
        self.opt_text(Some(v));
    }

    pub fn int(&mut self, v: i64) {
        if let Some(Values::Int(c)) = self.slot(ColType::Int) {
            c.push(Some(v));
        }
    }

    /// Truncated to whole microseconds, which both backends store.
    pub fn opt_ts(&mut self, v: Option<DateTime<Utc>>) {
        if let Some(Values::Ts(c)) = self.slot(ColType::Ts) {
            c.push(v.map(|t| t.trunc_subsecs(6)));
        }
    }

    pub fn ts(&mut self, v: DateTime<Utc>) {
        self.opt_ts(Some(v));
    }

    pub fn push<R: IntoRow>(&mut self, row: R) {
        row.push_into(self);
        if self.at != self.cols.len() {
            let at = self.at;
            self.fail(format!("a row gave {at} of {} columns", self.cols.len()));
        }
        self.at = 0;
        self.rows += 1;
    }

    pub fn finish(self) -> Result<Vec<Values>, String> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.cols),
        }
    }

    /// [`RowBuilder::finish`] with the rows in `table`'s primary key order:
    /// index inserts that walk the index in order instead of jumping around
    /// it (measured: random order costs the SQLite writer about a third
    /// more).
    pub fn finish_in_key_order(self, table: &Table) -> Result<Vec<Values>, String> {
        let key: Vec<usize> = table
            .key
            .iter()
            .filter_map(|k| table.columns.iter().position(|c| c.name == *k))
            .collect();
        let rows = self.rows;
        let mut cols = self.finish()?;
        let mut order: Vec<usize> = (0..rows).collect();
        order.sort_by(|&a, &b| {
            key.iter()
                .map(|&k| match cols.get(k) {
                    Some(Values::Text(v)) => v.get(a).cmp(&v.get(b)),
                    Some(Values::Int(v)) => v.get(a).cmp(&v.get(b)),
                    Some(Values::Ts(v)) => v.get(a).cmp(&v.get(b)),
                    None => std::cmp::Ordering::Equal,
                })
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        if order.iter().enumerate().all(|(i, &o)| i == o) {
            return Ok(cols);
        }
        fn permute<T: Default>(v: &mut Vec<T>, order: &[usize]) {
            let mut old: Vec<T> = std::mem::take(v);
            *v = order
                .iter()
                .map(|&i| old.get_mut(i).map(std::mem::take).unwrap_or_default())
                .collect();
        }
        for c in &mut cols {
            match c {
                Values::Text(v) => permute(v, &order),
                Values::Int(v) => permute(v, &order),
                Values::Ts(v) => permute(v, &order),
            }
        }
        Ok(cols)
    }
}

/// A row that writes itself into a [`RowBuilder`], in its table's column
/// order (the unit tests check each against its JSON form and its table).
pub trait IntoRow {
    fn push_into(self, b: &mut RowBuilder);
}

impl IntoRow for &OrderRow {
    fn push_into(self, b: &mut RowBuilder) {
        b.text(&self.order_id);
        b.text(&self.status);
        b.text(&self.buyer_id);
        b.text(&self.currency);
        b.int(self.total_minor);
        b.int(self.captured_minor);
        b.int(self.refunded_minor);
        b.int(self.fee_minor);
        b.opt_text(self.payment_id.as_deref());
        b.ts(self.created_at);
        b.ts(self.updated_at);
        b.ts(self.status_since);
        b.int(self.stream_version);
    }
}

impl IntoRow for &OrderLineRow {
    fn push_into(self, b: &mut RowBuilder) {
        b.text(&self.order_id);
        b.text(&self.product_id);
        b.text(&self.seller_id);
        b.text(&self.seller_account);
        b.text(&self.currency);
        b.int(self.unit_amount_minor);
        b.int(self.quantity);
        b.int(self.total_minor);
        b.int(self.fee_minor);
        b.int(self.seller_minor);
        b.text(&self.refund_state);
        b.opt_text(self.refund_id.as_deref());
    }
}

impl IntoRow for &RefundRow {
    fn push_into(self, b: &mut RowBuilder) {
        b.text(&self.refund_id);
        b.text(&self.status);
        b.text(&self.order_id);
        b.text(&self.payment_id);
        b.int(self.amount_minor);
        b.text(&self.currency);
        b.text(&self.lines);
        b.text(&self.reason);
        b.opt_text(self.hyperswitch_refund_id.as_deref());
        b.opt_text(self.failure.as_deref());
        b.opt_text(self.error_message.as_deref());
        b.ts(self.requested_at);
        b.ts(self.updated_at);
        b.ts(self.status_since);
        b.int(self.stream_version);
    }
}

impl IntoRow for &TransferRow {
    fn push_into(self, b: &mut RowBuilder) {
        b.text(&self.transfer_id);
        b.text(&self.status);
        b.text(&self.order_id);
        b.text(&self.seller_id);
        b.text(&self.destination);
        b.text(&self.currency);
        b.int(self.scheduled_minor);
        b.int(self.amount_minor);
        b.int(self.transferred_minor);
        b.int(self.amount_reversed_minor);
        b.opt_text(self.stripe_transfer_id.as_deref());
        b.opt_text(self.stripe_reversal_id.as_deref());
        b.int(self.attempt);
        b.int(self.retry_count);
        b.int(self.reversal_retry_count);
        b.opt_ts(self.next_retry_at);
        b.opt_text(self.last_error.as_deref());
        b.ts(self.created_at);
        b.ts(self.updated_at);
        b.ts(self.status_since);
        b.int(self.stream_version);
    }
}

impl IntoRow for JournalEntryRow<'_> {
    fn push_into(self, b: &mut RowBuilder) {
        b.text(self.entry_id);
        b.text(self.source_event_id);
        b.text(self.event_type);
        b.text(self.stream_id);
        b.int(self.stream_version);
        b.int(self.global_position);
        b.text(self.currency);
        b.text(self.description);
        b.ts(self.recorded_at);
    }
}

impl IntoRow for PostingRow<'_> {
    fn push_into(self, b: &mut RowBuilder) {
        b.text(self.entry_id);
        b.int(self.leg);
        b.text(self.account);
        b.text(self.side);
        b.int(self.amount_minor);
        b.text(self.currency);
        b.text(self.event_type);
        b.ts(self.recorded_at);
    }
}

impl IntoRow for AccountBalanceRow {
    fn push_into(self, b: &mut RowBuilder) {
        b.text(&self.account);
        b.text(&self.currency);
        b.int(self.debit_minor);
        b.int(self.credit_minor);
    }
}

impl IntoRow for AnomalyRow<'_> {
    fn push_into(self, b: &mut RowBuilder) {
        b.text(self.stream_id);
        b.int(self.stream_version);
        b.text(self.event_type);
        b.text(self.kind);
        b.text(self.details);
        b.ts(self.at);
        b.int(self.global_position);
    }
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

/// The image slot of `id`, created empty (`None`) when unknown; allocates
/// the key only then.
fn slot<'a, T>(
    map: &'a mut HashMap<String, Option<T>>,
    id: &str,
) -> Result<&'a mut Option<T>, String> {
    if !map.contains_key(id) {
        map.insert(id.to_owned(), None);
    }
    map.get_mut(id)
        .ok_or_else(|| format!("{id} is missing from the image cache"))
}

/// Marks `id` dirty (and created, for its creation event), allocating only
/// the first time.
fn mark(dirty: &mut BTreeMap<String, bool>, id: &str, event: &AnyEvent) {
    let created = is_creation(event);
    match dirty.get_mut(id) {
        Some(c) => *c |= created,
        None => {
            dirty.insert(id.to_owned(), created);
        }
    }
}

/// Applies one event to the models in `models`.
pub fn apply(
    models: ModelSet,
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
        .map(|(_, id)| id)
        .ok_or_else(|| fail("stream of no known kind".to_owned()))?;
    let version = version_i64(recorded.stream_version);
    let at = event_at(event);
    match event {
        AnyEvent::Order(e) if models.contains(ReadModel::Orders) => {
            apply_order(
                slot(&mut images.orders, id).map_err(fail)?,
                id,
                version,
                at,
                e,
            )
            .map_err(fail)?;
            mark(&mut changes.orders, id, event);
        }
        AnyEvent::Refund(e) if models.contains(ReadModel::Refunds) => {
            apply_refund(
                slot(&mut images.refunds, id).map_err(fail)?,
                id,
                version,
                at,
                e,
            )
            .map_err(fail)?;
            mark(&mut changes.refunds, id, event);
        }
        AnyEvent::Transfer(e) if models.contains(ReadModel::Transfers) => {
            apply_transfer(
                slot(&mut images.transfers, id).map_err(fail)?,
                id,
                version,
                at,
                e,
            )
            .map_err(fail)?;
            mark(&mut changes.transfers, id, event);
        }
        _ => {}
    }
    if models.contains(ReadModel::Journal) {
        journal(recorded, event, changes).map_err(fail)?;
    }
    if models.contains(ReadModel::Anomalies)
        && let Some(kind) = anomaly_kind(event)
    {
        changes.anomalies.push(AnomalyRow {
            stream_id: recorded.stream_id.as_str(),
            stream_version: version,
            event_type: &recorded.event_type,
            kind: &kind,
            details: &recorded.payload,
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
        let currency = entry.currency.as_str();
        for (leg, p) in entry.postings.iter().enumerate() {
            let account = p.account.to_string();
            let side = match p.side {
                Side::Debit => "debit",
                Side::Credit => "credit",
            };
            if !changes.balances.contains_key(&account) {
                changes.balances.insert(account.clone(), BTreeMap::new());
            }
            let per_currency = changes
                .balances
                .get_mut(&account)
                .ok_or_else(|| format!("balance of {account} went missing"))?;
            if !per_currency.contains_key(currency) {
                per_currency.insert(currency.to_owned(), (0, 0));
            }
            let delta = per_currency
                .get_mut(currency)
                .ok_or_else(|| format!("balance of {account} went missing"))?;
            let total = match p.side {
                Side::Debit => &mut delta.0,
                Side::Credit => &mut delta.1,
            };
            *total = total
                .checked_add(p.amount_minor)
                .ok_or_else(|| format!("balance of {account} overflows"))?;
            changes.postings.push(PostingRow {
                entry_id: &entry_id,
                leg: i64::try_from(leg).unwrap_or(i64::MAX),
                account: &account,
                side,
                amount_minor: p.amount_minor,
                currency,
                event_type: &recorded.event_type,
                recorded_at: recorded.recorded_at,
            });
        }
        changes.entries.push(JournalEntryRow {
            entry_id: &entry_id,
            source_event_id: &entry.source_event_id.to_string(),
            event_type: &recorded.event_type,
            stream_id: recorded.stream_id.as_str(),
            stream_version: version_i64(recorded.stream_version),
            global_position: version_i64(recorded.global_position),
            currency,
            description: &entry.description,
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
        AnyEvent::Transfer(TransferEvent::TransferAnomalyRecorded { kind, .. }) => {
            Some(format!("transfer_{}", kind.as_str()))
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
            | T::TransferReversalFailed { at, .. }
            | T::TransferOutcomeUnknown { at, .. }
            | T::TransferAttemptAbsent { at, .. }
            | T::TransferAnomalyRecorded { at, .. }
            | T::TransferAnomalyResolved { at, .. }
            | T::TransferReversalOutcomeUnknown { at, .. }
            | T::TransferReversalAttemptAbsent { at, .. },
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
        // Not in the read model: it only decides the PSP's `reason`.
        reason_code: _,
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
        T::TransferOutcomeUnknown { error, .. } => {
            t.next_retry_at = None;
            t.last_error = Some(error.clone());
            status = Some(TransferStatus::Indeterminate);
        }
        T::TransferAttemptAbsent { attempt, .. } => {
            t.attempt = i64::from(*attempt);
            status = Some(TransferStatus::Pending);
        }
        T::TransferAnomalyRecorded { .. } | T::TransferAnomalyResolved { .. } => {}
        T::TransferReversalOutcomeUnknown { error, .. } => {
            t.next_retry_at = None;
            t.last_error = Some(error.clone());
            status = Some(TransferStatus::ReversalIndeterminate);
        }
        T::TransferReversalAttemptAbsent { .. } => {
            t.reversal_retry_count = 0;
            status = Some(TransferStatus::ReversalPending);
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

#[cfg(test)]
mod tests {
    use super::super::schema::{
        ACCOUNT_BALANCE, ANOMALY, JOURNAL_ENTRY, ORDER_LINE_VIEW, ORDER_VIEW, POSTING, REFUND_VIEW,
        SELLER_TRANSFER_VIEW,
    };
    use super::*;
    use chrono::TimeZone;
    use serde_json::{Value, json};

    fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, nanos).single().unwrap()
    }

    /// The typed columns as the JSON objects the row's serde form gives
    /// (timestamps in the stored text format): what the old JSON write
    /// expanded server-side, so typed binds write the same values.
    fn as_json(table: &Table, columns: &[Values]) -> Vec<Value> {
        let rows = columns.first().map_or(0, Values::len);
        (0..rows)
            .map(|r| {
                let mut obj = serde_json::Map::new();
                for (c, v) in table.columns.iter().zip(columns) {
                    let value = match v {
                        Values::Text(v) => json!(v[r].as_deref()),
                        Values::Int(v) => json!(v[r]),
                        Values::Ts(v) => json!(v[r].as_ref().map(format_ts)),
                    };
                    obj.insert(c.name.to_owned(), value);
                }
                Value::Object(obj)
            })
            .collect()
    }

    fn check<R: IntoRow + Serialize + Copy>(table: &Table, rows: &[R]) {
        let mut b = RowBuilder::new(table, rows.len());
        for r in rows {
            b.push(*r);
        }
        let cols = b.finish().unwrap();
        assert_eq!(cols.len(), table.columns.len(), "{}", table.name);
        for (c, v) in table.columns.iter().zip(&cols) {
            assert_eq!(c.ty, v.col_type(), "{}.{}", table.name, c.name);
        }
        let expected: Vec<Value> = rows
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        assert_eq!(as_json(table, &cols), expected, "{}", table.name);
    }

    #[test]
    fn every_row_type_binds_its_tables_columns_in_order() {
        let t = at(1_795_000_000, 123_456_789);
        let order = OrderRow {
            order_id: "o1".into(),
            status: "created".into(),
            buyer_id: "b".into(),
            currency: "USD".into(),
            total_minor: 1,
            captured_minor: 2,
            refunded_minor: 3,
            fee_minor: 4,
            payment_id: None,
            created_at: t,
            updated_at: at(5, 0),
            status_since: at(6, 999),
            stream_version: 7,
        };
        let mut paid = order.clone();
        paid.payment_id = Some("p".into());
        check(&ORDER_VIEW, &[&order, &paid]);
        let line = OrderLineRow {
            order_id: "o1".into(),
            product_id: "p1".into(),
            seller_id: "s".into(),
            seller_account: "acct".into(),
            currency: "EUR".into(),
            unit_amount_minor: 1,
            quantity: 2,
            total_minor: 3,
            fee_minor: 4,
            seller_minor: 5,
            refund_state: "none".into(),
            refund_id: Some("r".into()),
        };
        check(&ORDER_LINE_VIEW, &[&line]);
        let refund = RefundRow {
            refund_id: "r".into(),
            status: "requested".into(),
            order_id: "o".into(),
            payment_id: "p".into(),
            amount_minor: 9,
            currency: "USD".into(),
            lines: "[]".into(),
            reason: "why".into(),
            hyperswitch_refund_id: Some("h".into()),
            failure: None,
            error_message: Some("e".into()),
            requested_at: t,
            updated_at: t,
            status_since: t,
            stream_version: 2,
        };
        check(&REFUND_VIEW, &[&refund]);
        let transfer = TransferRow {
            transfer_id: "t".into(),
            status: "pending".into(),
            order_id: "o".into(),
            seller_id: "s".into(),
            destination: "d".into(),
            currency: "USD".into(),
            scheduled_minor: 1,
            amount_minor: 2,
            transferred_minor: 3,
            amount_reversed_minor: 4,
            stripe_transfer_id: None,
            stripe_reversal_id: Some("rv".into()),
            attempt: 5,
            retry_count: 6,
            reversal_retry_count: 7,
            next_retry_at: Some(at(8, 1_000)),
            last_error: None,
            created_at: t,
            updated_at: t,
            status_since: t,
            stream_version: 9,
        };
        let mut idle = transfer.clone();
        idle.next_retry_at = None;
        check(&SELLER_TRANSFER_VIEW, &[&transfer, &idle]);
        // The append-only rows go in by value.
        let entry = JournalEntryRow {
            entry_id: "e",
            source_event_id: "ev",
            event_type: "PaymentSucceeded",
            stream_id: "order-o",
            stream_version: 3,
            global_position: 4,
            currency: "USD",
            description: "d",
            recorded_at: t,
        };
        check_owned(&JOURNAL_ENTRY, vec![entry]);
        let posting = PostingRow {
            entry_id: "e",
            leg: 1,
            account: "psp_clearing",
            side: "debit",
            amount_minor: 5,
            currency: "USD",
            event_type: "PaymentSucceeded",
            recorded_at: t,
        };
        check_owned(&POSTING, vec![posting]);
        let balance = AccountBalanceRow {
            account: "a".into(),
            currency: "USD".into(),
            debit_minor: -1,
            credit_minor: i64::MAX,
        };
        check_owned(&ACCOUNT_BALANCE, vec![balance]);
        let anomaly = AnomalyRow {
            stream_id: "order-o",
            stream_version: 1,
            event_type: "PaymentAnomalyRecorded",
            kind: "k",
            details: "{}",
            at: t,
            global_position: 2,
        };
        check_owned(&ANOMALY, vec![anomaly]);
    }

    fn check_owned<R: IntoRow + Serialize + Clone>(table: &Table, rows: Vec<R>) {
        let expected: Vec<Value> = rows
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        let mut b = RowBuilder::new(table, rows.len());
        for r in rows {
            b.push(r);
        }
        let cols = b.finish().unwrap();
        for (c, v) in table.columns.iter().zip(&cols) {
            assert_eq!(c.ty, v.col_type(), "{}.{}", table.name, c.name);
        }
        assert_eq!(as_json(table, &cols), expected, "{}", table.name);
    }

    #[test]
    fn a_row_that_does_not_fit_its_table_is_an_error() {
        // An order row pushed into the posting table: types go wrong.
        let mut b = RowBuilder::new(&POSTING, 1);
        b.push(&OrderRow {
            order_id: "o".into(),
            status: "s".into(),
            buyer_id: "b".into(),
            currency: "USD".into(),
            total_minor: 0,
            captured_minor: 0,
            refunded_minor: 0,
            fee_minor: 0,
            payment_id: None,
            created_at: at(0, 0),
            updated_at: at(0, 0),
            status_since: at(0, 0),
            stream_version: 1,
        });
        let err = b.finish().unwrap_err();
        assert!(err.contains("posting"), "{err}");
        // Too few columns.
        let mut b = RowBuilder::new(&ACCOUNT_BALANCE, 1);
        b.push(JournalEntryRow {
            entry_id: "e",
            source_event_id: "s",
            event_type: "t",
            stream_id: "x",
            stream_version: 1,
            global_position: 1,
            currency: "USD",
            description: "d",
            recorded_at: at(0, 0),
        });
        assert!(b.finish().is_err());
    }

    #[test]
    fn timestamps_are_truncated_to_microseconds() {
        let mut b = RowBuilder::new(&ANOMALY, 1);
        b.push(AnomalyRow {
            stream_id: "s",
            stream_version: 1,
            event_type: "t",
            kind: "k",
            details: "{}",
            at: at(-1, 999_999_999),
            global_position: 1,
        });
        let cols = b.finish().unwrap();
        assert_eq!(cols[5], Values::Ts(vec![Some(at(-1, 999_999_000))]));
    }

    #[test]
    fn format_ts_writes_what_chrono_writes() {
        let mut cases = vec![
            at(0, 0),
            at(1_795_000_000, 123_456_789),
            at(1_795_000_000, 999),
            at(-1, 999_999_999),
            at(-62_135_596_800, 0),       // 0001-01-01
            at(253_402_300_799, 999_999), // 9999-12-31T23:59:59
            at(253_402_300_800, 0),       // year 10000: chrono's path
            at(-62_167_219_200 - 1, 5),   // year -1: chrono's path
        ];
        // A spread of ordinary instants.
        let mut x: i64 = 12_345;
        for _ in 0..2_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let secs = x.rem_euclid(4_102_444_800);
            let nanos = u32::try_from((x >> 20).rem_euclid(1_000_000_000)).unwrap();
            cases.push(at(secs, nanos));
        }
        for t in cases {
            assert_eq!(format_ts(&t), t.format(ts::FORMAT).to_string(), "{t:?}");
            // Stored timestamps are years 0..=9999 (RFC 3339); outside
            // that range only the formatting has to agree with chrono.
            if (0..=9999).contains(&chrono::Datelike::year(&t)) {
                assert_eq!(ts::parse(&format_ts(&t)).unwrap(), t.trunc_subsecs(6));
            }
        }
    }

    #[test]
    fn model_sets_hold_exactly_what_was_put_in() {
        let set: ModelSet = [ReadModel::Orders, ReadModel::Anomalies]
            .into_iter()
            .collect();
        for m in ReadModel::ALL {
            assert_eq!(
                set.contains(m),
                matches!(m, ReadModel::Orders | ReadModel::Anomalies),
                "{m:?}"
            );
        }
        assert!(ModelSet::default().is_empty());
        assert!(!set.is_empty());
    }
}
