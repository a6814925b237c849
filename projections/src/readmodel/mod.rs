//! Read models: the port adapters implement, the projection handler that
//! folds batches into row images ([`fold`]), and rebuild / diff.
//!
//! API Boundary: SQL text comes from [`schema`] for both dialects; the
//! adapters run it, binding the typed columns of a [`Write`] (decoded once
//! in Rust), in transactions.

pub mod fold;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_core::events::AnyEvent;
use ledger_core::{Checkpoint, RecordedEvent, decode_any};
use ledger_store::{EventStore, READ_BATCH_MAX};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::runtime::{Handler, HandlerError, RuntimeError};
use fold::{
    Changes, FoldError, Images, IntoRow, ModelSet, OrderImage, OrderLineRow, OrderRow, RefundRow,
    RowBuilder, TransferRow,
};
use schema::{ColType, Table, WriteMode};
pub use schema::{Dialect, ReadModel};

/// Entity images kept between batches. Beyond this the cache keeps only the
/// entities the last batch touched; others are re-loaded on demand (one
/// query per table per batch).
pub const CACHE_ENTITIES_MAX: usize = 200_000;

/// Most differing rows a diff reports per table: enough to see the pattern,
/// bounded so a wholly wrong table cannot flood the report.
pub const DIFF_ROWS_MAX: u32 = 1_000;

/// Events a rebuild folds into one shadow transaction: big enough that an
/// entity touched across pages is written once and the per-transaction
/// costs vanish, small enough that the next fold overlaps the write and a
/// transaction's rows stay around a hundred MB. The shadow primary keys are
/// random (uuids), so every transaction inserts all over B-trees that keep
/// growing: each one rewrites most of their leaf pages (SQLite's WAL,
/// Postgres' full-page images), and fewer, larger transactions rewrite them
/// fewer times. Measured on a 1M-event history (2 cores): 25,000 → 100,000
/// took the SQLite rebuild from 77k to 101k events/s (write wait 9.5 s →
/// 2.3 s) and Postgres from 80k to 86k.
pub const REBUILD_EVENTS_PER_TRANSACTION_MAX: usize = 100_000;

/// A rebuild's first shadow transaction; each next one is twice as large,
/// up to [`REBUILD_EVENTS_PER_TRANSACTION_MAX`].
pub const REBUILD_FIRST_TRANSACTION_EVENTS: usize = 25_000;

/// Pages a rebuild reads ahead of its fold: overlaps the feed's IO with the
/// fold and the writes. Most of a transaction's pages (10k events each), so
/// the reader keeps decoding while the fold waits for the previous write.
pub const REBUILD_PAGES_PREFETCHED_MAX: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadModelError {
    /// Someone else (a rebuild's swap, a second projector) moved this
    /// checkpoint since it was read; reload and retry.
    #[error("checkpoint {name} moved: expected {expected:?}, found {found:?}")]
    CheckpointMoved {
        name: String,
        expected: Option<Checkpoint>,
        found: Option<Checkpoint>,
    },
    /// A test hook: rows written, then failed before the checkpoint.
    #[error("injected fault after row writes, before the checkpoint")]
    InjectedFault,
    #[error("read model store: {0}")]
    Backend(String),
}

/// One column's values for a batch of rows, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Values {
    /// Shared: equal values in a column are often one allocation, and the
    /// adapters bind them without copying.
    Text(Vec<Option<Arc<str>>>),
    Int(Vec<Option<i64>>),
    /// Whole microseconds (both backends store microseconds). Postgres binds
    /// them as `timestamptz`; SQLite as [`fold::format_ts`] text.
    Ts(Vec<Option<DateTime<Utc>>>),
}

impl Values {
    pub fn with_capacity(ty: ColType, capacity: usize) -> Values {
        match ty {
            ColType::Text => Values::Text(Vec::with_capacity(capacity)),
            ColType::Int => Values::Int(Vec::with_capacity(capacity)),
            ColType::Ts => Values::Ts(Vec::with_capacity(capacity)),
        }
    }

    pub fn col_type(&self) -> ColType {
        match self {
            Values::Text(_) => ColType::Text,
            Values::Int(_) => ColType::Int,
            Values::Ts(_) => ColType::Ts,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Values::Text(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::Ts(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every row a batch writes to one table: one [`Values`] per column of
/// `table`, in its column order, all of [`Write::rows`] length. The adapter
/// runs [`Table::write_sql`] over them (in chunks of
/// [`Table::rows_per_statement`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub table: Table,
    /// How to write: the table's own mode, or [`WriteMode::Insert`] for
    /// entity rows the batch created.
    pub mode: WriteMode,
    pub shadow: bool,
    pub columns: Vec<Values>,
}

impl Write {
    pub fn rows(&self) -> usize {
        self.columns.first().map_or(0, Values::len)
    }

    /// The statement for `rows` of this write's rows (see
    /// [`Table::write_sql`]).
    pub fn sql(&self, dialect: Dialect, rows: usize) -> String {
        self.table
            .write_sql_as(dialect, self.mode, self.shadow, rows)
    }
}

/// A checkpoint compare-and-set, done in the batch's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointMove {
    pub name: String,
    pub from: Option<Checkpoint>,
    pub to: Checkpoint,
}

/// Everything one batch writes, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub writes: Vec<Write>,
    pub checkpoints: Vec<CheckpointMove>,
    /// Test hook: run the writes, then fail before the checkpoints (the
    /// transaction rolls back).
    pub fail_before_checkpoint: bool,
}

impl Batch {
    /// True when the batch touches only shadow tables and shadow
    /// checkpoints (a rebuild's): losing it in a crash costs nothing but a
    /// redone rebuild, which starts over from empty shadow tables anyway.
    pub fn is_shadow_only(&self) -> bool {
        self.writes.iter().all(|w| w.shadow)
            && self
                .checkpoints
                .iter()
                .all(|c| c.name.ends_with(schema::SHADOW_SUFFIX))
    }
}

/// The port a read-model database implements (Postgres, SQLite).
#[async_trait]
pub trait ReadModelStore: Send + Sync + 'static {
    fn dialect(&self) -> Dialect;
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, ReadModelError>;
    /// Runs a query with `$1 = param`; each row is one text column.
    async fn query_text(&self, sql: &str, param: &str) -> Result<Vec<String>, ReadModelError>;
    /// In ONE transaction: checks every `from` checkpoint (else
    /// [`ReadModelError::CheckpointMoved`]), runs the writes, then saves
    /// every `to`. All or nothing.
    async fn apply_batch(&self, batch: Batch) -> Result<(), ReadModelError>;
    /// Runs parameterless statements in one transaction.
    async fn execute_all(&self, statements: &[String]) -> Result<(), ReadModelError>;
    /// The feed's head, for the lag (0 when empty): the position of the
    /// last event in `read_all` order. Called after every batch, so it must
    /// cost an index probe, never a scan.
    async fn head_position(&self) -> Result<u64, ReadModelError>;
}

/// An event, decoded, with the models it applies to.
type Decoded<'a> = (&'a RecordedEvent, &'a AnyEvent, ModelSet);

fn decode(rec: &RecordedEvent) -> Result<AnyEvent, HandlerError> {
    decode_any(
        &rec.stream_id,
        &rec.event_type,
        rec.schema_version,
        &rec.payload,
    )
    .map_err(|e| HandlerError::Poison {
        stream: rec.stream_id.as_str().to_owned(),
        version: rec.stream_version,
        reason: e.to_string(),
    })
}

fn transient(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Transient(e.to_string())
}

/// Typed columns of `rows` for `table`; `None` when there are none.
fn write_of<R: IntoRow>(
    table: &Table,
    mode: WriteMode,
    shadow: bool,
    rows: impl ExactSizeIterator<Item = R>,
) -> Result<Option<Write>, HandlerError> {
    if rows.len() == 0 {
        return Ok(None);
    }
    let mut b = RowBuilder::new(table, rows.len());
    for r in rows {
        b.push(r);
    }
    Ok(Some(Write {
        table: *table,
        mode,
        shadow,
        columns: b.finish().map_err(transient)?,
    }))
}

/// The rows a fold built straight into `b` for `table`; `None` when none.
fn built(table: &Table, shadow: bool, b: RowBuilder) -> Result<Option<Write>, HandlerError> {
    if b.is_empty() {
        return Ok(None);
    }
    Ok(Some(Write {
        table: *table,
        mode: table.write,
        shadow,
        columns: b.finish_in_key_order(table).map_err(transient)?,
    }))
}

/// The projection handler for a set of read models, live or shadow.
pub struct ReadModelProjection {
    store: Arc<dyn ReadModelStore>,
    models: ModelSet,
    model_list: Vec<ReadModel>,
    shadow: bool,
    checkpoints: Option<BTreeMap<ReadModel, Option<Checkpoint>>>,
    images: Images,
    /// A rebuild's write still running while the next pages fold; awaited
    /// before anything reads the tables back (and before the next write).
    inflight: Option<JoinHandle<Result<(), ReadModelError>>>,
    /// Test hook: the next batch fails after its row writes.
    fault_once: bool,
    /// [`CACHE_ENTITIES_MAX`], smaller in tests.
    cache_entities_max: usize,
}

impl std::fmt::Debug for ReadModelProjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModelProjection")
            .field("models", &self.model_list)
            .field("shadow", &self.shadow)
            .field("checkpoints", &self.checkpoints)
            .finish_non_exhaustive()
    }
}

impl ReadModelProjection {
    pub fn new(store: Arc<dyn ReadModelStore>, models: &[ReadModel], shadow: bool) -> Self {
        let mut model_list = models.to_vec();
        model_list.sort();
        model_list.dedup();
        ReadModelProjection {
            store,
            models: model_list.iter().copied().collect(),
            model_list,
            shadow,
            checkpoints: None,
            images: Images::default(),
            inflight: None,
            fault_once: false,
            cache_entities_max: CACHE_ENTITIES_MAX,
        }
    }

    /// Test hook: bound the entity cache at `max` instead of
    /// [`CACHE_ENTITIES_MAX`], so small histories exercise the eviction.
    #[doc(hidden)]
    pub fn with_cache_entities_max(mut self, max: usize) -> Self {
        self.cache_entities_max = max;
        self
    }

    /// Test hook: the next batch writes its rows, then fails before saving
    /// the checkpoint (inside the same transaction).
    #[doc(hidden)]
    pub fn inject_fault_once(&mut self) {
        self.fault_once = true;
    }

    async fn loaded_checkpoints(
        &mut self,
    ) -> Result<&BTreeMap<ReadModel, Option<Checkpoint>>, HandlerError> {
        if self.checkpoints.is_none() {
            let mut map = BTreeMap::new();
            for m in &self.model_list {
                let cp = self
                    .store
                    .load_checkpoint(&m.checkpoint_name(self.shadow))
                    .await
                    .map_err(transient)?;
                map.insert(*m, cp);
            }
            self.checkpoints = Some(map);
        }
        Ok(self.checkpoints.get_or_insert_with(BTreeMap::new))
    }

    /// Waits for the write in flight (if any); its failure is this call's.
    async fn settle_inflight(&mut self) -> Result<(), HandlerError> {
        if let Some(write) = self.inflight.take() {
            match write.await {
                Ok(result) => result.map_err(transient)?,
                Err(e) => return Err(transient(format!("read-model write task: {e}"))),
            }
        }
        Ok(())
    }

    /// Loads the stored images of entities the batch touches but whose
    /// creation is not in it and which are not cached.
    async fn load_missing(&mut self, decoded: &[Decoded<'_>]) -> Result<(), HandlerError> {
        let mut seen: BTreeSet<(ReadModel, &str)> = BTreeSet::new();
        let mut want: BTreeMap<ReadModel, Vec<String>> = BTreeMap::new();
        for (rec, event, models) in decoded {
            let Some((kind, id)) = fold::entity_of(rec.stream_id.as_str()) else {
                continue;
            };
            if !models.contains(kind) {
                continue;
            }
            let cached = match kind {
                ReadModel::Orders => self.images.orders.contains_key(id),
                ReadModel::Refunds => self.images.refunds.contains_key(id),
                _ => self.images.transfers.contains_key(id),
            };
            // Not cached: the entity's first event in the batch decides, its
            // creation (nothing stored to load) or a later event (load).
            if !cached && seen.insert((kind, id)) && !fold::is_creation(event) {
                want.entry(kind).or_default().push(id.to_owned());
            }
        }
        if want.is_empty() {
            return Ok(());
        }
        // The tables must hold everything folded so far before reading back.
        self.settle_inflight().await?;
        let dialect = self.store.dialect();
        for (kind, ids) in want {
            let param = serde_json::to_string(&ids).map_err(transient)?;
            let tables = kind.tables();
            let mut rows = Vec::new();
            for t in tables {
                let Some(sql) = t.load_sql(dialect, self.shadow) else {
                    continue;
                };
                rows.push(
                    self.store
                        .query_text(&sql, &param)
                        .await
                        .map_err(transient)?,
                );
            }
            let parse_err = |e: serde_json::Error| transient(format!("stored row unreadable: {e}"));
            match kind {
                ReadModel::Orders => {
                    for id in &ids {
                        self.images.orders.insert(id.clone(), None);
                    }
                    let mut it = rows.into_iter();
                    let orders = it.next().unwrap_or_default();
                    let lines = it.next().unwrap_or_default();
                    for text in orders {
                        let row: OrderRow = serde_json::from_str(&text).map_err(parse_err)?;
                        self.images.orders.insert(
                            row.order_id.clone(),
                            Some(OrderImage {
                                row,
                                lines: Vec::new(),
                            }),
                        );
                    }
                    let mut lines: Vec<OrderLineRow> = lines
                        .iter()
                        .map(|t| serde_json::from_str(t))
                        .collect::<Result<_, _>>()
                        .map_err(parse_err)?;
                    // Lines keep their placement order: the product id is
                    // the key, and a stable order makes writes deterministic.
                    lines.sort_by(|a, b| a.product_id.cmp(&b.product_id));
                    for line in lines {
                        if let Some(Some(img)) = self.images.orders.get_mut(&line.order_id) {
                            img.lines.push(line);
                        }
                    }
                }
                ReadModel::Refunds => {
                    for id in &ids {
                        self.images.refunds.insert(id.clone(), None);
                    }
                    for text in rows.into_iter().flatten() {
                        let row: RefundRow = serde_json::from_str(&text).map_err(parse_err)?;
                        self.images.refunds.insert(row.refund_id.clone(), Some(row));
                    }
                }
                _ => {
                    for id in &ids {
                        self.images.transfers.insert(id.clone(), None);
                    }
                    for text in rows.into_iter().flatten() {
                        let row: TransferRow = serde_json::from_str(&text).map_err(parse_err)?;
                        self.images
                            .transfers
                            .insert(row.transfer_id.clone(), Some(row));
                    }
                }
            }
        }
        Ok(())
    }

    /// Decodes `events` and folds those each model has not applied yet
    /// (per `cps`) into the images and `changes`. On an error the images
    /// may hold half-applied state: the caller clears them.
    async fn fold_events(
        &mut self,
        events: &[RecordedEvent],
        cps: &BTreeMap<ReadModel, Option<Checkpoint>>,
        changes: &mut Changes,
    ) -> Result<(), HandlerError> {
        // Past the furthest checkpoint every model applies: no per-model
        // test per event.
        let furthest = cps
            .values()
            .map(|c| c.unwrap_or(Checkpoint::START))
            .max()
            .unwrap_or(Checkpoint::START);
        let mut decoded = Vec::with_capacity(events.len());
        for rec in events {
            let at = rec.checkpoint();
            let applies = if at > furthest {
                self.models
            } else {
                cps.iter()
                    .filter(|(_, cp)| cp.unwrap_or(Checkpoint::START) < at)
                    .map(|(m, _)| *m)
                    .collect()
            };
            if applies.is_empty() {
                continue;
            }
            decoded.push((rec, decode(rec)?, applies));
        }
        let refs: Vec<Decoded<'_>> = decoded.iter().map(|(r, e, m)| (*r, e, *m)).collect();
        self.fold_decoded(&refs, changes).await
    }

    /// Folds decoded events (each with the models it applies to): loads the
    /// stored images the cache lacks, then applies them in order.
    async fn fold_decoded(
        &mut self,
        decoded: &[Decoded<'_>],
        changes: &mut Changes,
    ) -> Result<(), HandlerError> {
        self.load_missing(decoded).await?;
        for (rec, event, applies) in decoded {
            fold::apply(*applies, rec, event, &mut self.images, changes).map_err(
                |FoldError {
                     stream,
                     version,
                     reason,
                 }| HandlerError::Poison {
                    stream,
                    version,
                    reason,
                },
            )?;
        }
        Ok(())
    }

    /// The batch writing `changes` (images as they are now) and moving every
    /// checkpoint behind `last` to it.
    fn batch_for(
        &mut self,
        changes: Changes,
        cps: &BTreeMap<ReadModel, Option<Checkpoint>>,
        last: Option<Checkpoint>,
    ) -> Result<Batch, HandlerError> {
        use schema::*;
        let shadow = self.shadow;
        let mut writes = Vec::new();
        // Entity rows: the ones created by this batch are plain inserts,
        // the others upserts (SQLite keeps a statement journal for an
        // upsert, not for an insert).
        for created in [true, false] {
            let mode = |t: &Table| if created { WriteMode::Insert } else { t.write };
            let orders: Vec<&OrderImage> = changes
                .orders
                .iter()
                .filter(|(_, c)| **c == created)
                .filter_map(|(k, _)| self.images.orders.get(k).and_then(Option::as_ref))
                .collect();
            writes.extend(write_of(
                &ORDER_VIEW,
                mode(&ORDER_VIEW),
                shadow,
                orders.iter().map(|o| &o.row),
            )?);
            let lines: Vec<&OrderLineRow> = orders.iter().flat_map(|o| &o.lines).collect();
            writes.extend(write_of(
                &ORDER_LINE_VIEW,
                mode(&ORDER_LINE_VIEW),
                shadow,
                lines.iter().copied(),
            )?);
            let refunds: Vec<&RefundRow> = changes
                .refunds
                .iter()
                .filter(|(_, c)| **c == created)
                .filter_map(|(k, _)| self.images.refunds.get(k).and_then(Option::as_ref))
                .collect();
            writes.extend(write_of(
                &REFUND_VIEW,
                mode(&REFUND_VIEW),
                shadow,
                refunds.iter().copied(),
            )?);
            let transfers: Vec<&TransferRow> = changes
                .transfers
                .iter()
                .filter(|(_, c)| **c == created)
                .filter_map(|(k, _)| self.images.transfers.get(k).and_then(Option::as_ref))
                .collect();
            writes.extend(write_of(
                &SELLER_TRANSFER_VIEW,
                mode(&SELLER_TRANSFER_VIEW),
                shadow,
                transfers.iter().copied(),
            )?);
        }
        writes.extend(built(&JOURNAL_ENTRY, shadow, changes.entries)?);
        writes.extend(built(&POSTING, shadow, changes.postings)?);
        let balances: Vec<fold::AccountBalanceRow> = changes
            .balances
            .into_iter()
            .flat_map(|(account, per_currency)| {
                per_currency
                    .into_iter()
                    .map(move |(currency, (d, c))| fold::AccountBalanceRow {
                        account: account.clone(),
                        currency,
                        debit_minor: d,
                        credit_minor: c,
                    })
            })
            .collect();
        writes.extend(write_of(
            &ACCOUNT_BALANCE,
            ACCOUNT_BALANCE.write,
            shadow,
            balances.into_iter(),
        )?);
        writes.extend(built(&ANOMALY, shadow, changes.anomalies)?);
        // The rows are built: bound the cache now. Keep the entities this
        // batch touched (the likeliest to be touched next: an order's
        // payment, transfers and refunds follow it closely), drop the rest,
        // rather than dropping everything and reloading every entity the
        // next batches touch (each reload also waits for a rebuild's write
        // in flight).
        if self.images.len() > self.cache_entities_max {
            self.images
                .orders
                .retain(|k, _| changes.orders.contains_key(k));
            self.images
                .refunds
                .retain(|k, _| changes.refunds.contains_key(k));
            self.images
                .transfers
                .retain(|k, _| changes.transfers.contains_key(k));
        }
        Ok(Batch {
            writes,
            checkpoints: cps
                .iter()
                .filter_map(|(m, from)| {
                    let to = last?;
                    (from.unwrap_or(Checkpoint::START) < to).then(|| CheckpointMove {
                        name: m.checkpoint_name(shadow),
                        from: *from,
                        to,
                    })
                })
                .collect(),
            fail_before_checkpoint: std::mem::take(&mut self.fault_once),
        })
    }

    /// Records the checkpoints a batch moved (committed, or for a rebuild
    /// handed to the write in flight). ([`Self::batch_for`] bounds the
    /// cache.)
    fn advanced(&mut self, moves: &[CheckpointMove]) {
        let map = self.checkpoints.get_or_insert_with(BTreeMap::new);
        for mv in moves {
            if let Some(m) = self
                .model_list
                .iter()
                .find(|m| m.checkpoint_name(self.shadow) == mv.name)
            {
                map.insert(*m, Some(mv.to));
            }
        }
    }
}

#[async_trait]
impl Handler for ReadModelProjection {
    fn name(&self) -> String {
        let names: Vec<String> = self
            .model_list
            .iter()
            .map(|m| m.checkpoint_name(self.shadow))
            .collect();
        names.join("+")
    }

    /// The lowest checkpoint of the set (models ahead skip what they have).
    async fn checkpoint(&mut self) -> Result<Checkpoint, HandlerError> {
        let cps = self.loaded_checkpoints().await?;
        Ok(cps
            .values()
            .map(|c| c.unwrap_or(Checkpoint::START))
            .min()
            .unwrap_or(Checkpoint::START))
    }

    async fn handle(&mut self, events: &[RecordedEvent]) -> Result<(), HandlerError> {
        let cps = self.loaded_checkpoints().await?.clone();
        let mut changes = Changes::default();
        if let Err(e) = self.fold_events(events, &cps, &mut changes).await {
            // Earlier events of this batch may already have changed the
            // cached images: forget them, the database still has the truth.
            self.images.clear();
            return Err(e);
        }
        let last = events.last().map(RecordedEvent::checkpoint);
        let batch = match self.batch_for(changes, &cps, last) {
            Ok(batch) => batch,
            Err(e) => {
                // The images are ahead of the tables now.
                self.images.clear();
                return Err(e);
            }
        };
        let moves = batch.checkpoints.clone();
        match self.store.apply_batch(batch).await {
            Ok(()) => {
                self.advanced(&moves);
                Ok(())
            }
            Err(e) => {
                self.images.clear();
                self.checkpoints = None;
                Err(transient(e))
            }
        }
    }

    async fn head_position(&self) -> Result<Option<u64>, HandlerError> {
        Ok(Some(self.store.head_position().await.map_err(transient)?))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Store(#[from] ReadModelError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildStats {
    pub events: u64,
    pub checkpoint: Checkpoint,
}

/// Rebuilds `models` from position 0 into fresh shadow tables, up to
/// `stop_at` (inclusive) or the head. `progress` gets the events applied so
/// far after every transaction. Live tables are untouched.
///
/// The same fold and the same writes as the live projector, arranged for
/// bulk: the feed is read ahead on a task, up to
/// [`REBUILD_EVENTS_PER_TRANSACTION_MAX`] events fold into one shadow
/// transaction (rows and shadow checkpoints together, as live), and that
/// transaction runs while the next events fold. The shadow tables carry only
/// their primary keys while they load; their secondary indexes are built at
/// the end ([`schema::shadow_index_sql`]). An event that cannot be applied
/// fails the rebuild ([`RuntimeError::Stalled`]) naming it.
pub async fn rebuild_into_shadow(
    events: Arc<dyn EventStore>,
    store: Arc<dyn ReadModelStore>,
    models: &[ReadModel],
    stop_at: Option<Checkpoint>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<RebuildStats, RebuildError> {
    rebuild_into_shadow_tuned(
        events,
        store,
        models,
        stop_at,
        progress,
        RebuildTuning::default(),
    )
    .await
}

/// A rebuild's bounds; the defaults are the constants. Tests shrink them so
/// small histories span many transactions and evict the entity cache.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildTuning {
    /// Events per feed page ([`READ_BATCH_MAX`]).
    pub page_events: u32,
    pub events_per_transaction: usize,
    pub cache_entities_max: usize,
}

impl Default for RebuildTuning {
    fn default() -> Self {
        RebuildTuning {
            page_events: READ_BATCH_MAX,
            events_per_transaction: REBUILD_EVENTS_PER_TRANSACTION_MAX,
            cache_entities_max: CACHE_ENTITIES_MAX,
        }
    }
}

/// [`rebuild_into_shadow`] with explicit [`RebuildTuning`] (tests).
#[doc(hidden)]
pub async fn rebuild_into_shadow_tuned(
    events: Arc<dyn EventStore>,
    store: Arc<dyn ReadModelStore>,
    models: &[ReadModel],
    stop_at: Option<Checkpoint>,
    progress: &(dyn Fn(u64) + Send + Sync),
    tuning: RebuildTuning,
) -> Result<RebuildStats, RebuildError> {
    let dialect = store.dialect();
    store
        .execute_all(&schema::prepare_shadow_sql(dialect, models))
        .await?;
    let mut handler = ReadModelProjection::new(Arc::clone(&store), models, true)
        .with_cache_entities_max(tuning.cache_entities_max);
    let name = handler.name();
    let failed = |e: HandlerError| match e {
        HandlerError::Poison {
            stream,
            version,
            reason,
        } => RebuildError::Runtime(RuntimeError::Stalled {
            name: name.clone(),
            stream,
            version,
            reason,
        }),
        HandlerError::Transient(error) => RebuildError::Runtime(RuntimeError::Transient {
            name: name.clone(),
            error,
        }),
    };
    // The shadow checkpoints were just removed: every model starts at 0.
    let mut cps: BTreeMap<ReadModel, Option<Checkpoint>> =
        handler.model_list.iter().map(|m| (*m, None)).collect();
    handler.checkpoints = Some(cps.clone());

    // The reader decodes too: the payload JSON is the fold's biggest cost,
    // and it runs beside the fold this way.
    let (tx, mut rx) = mpsc::channel::<Result<Vec<(RecordedEvent, AnyEvent)>, HandlerError>>(
        REBUILD_PAGES_PREFETCHED_MAX,
    );
    let reader = tokio::spawn(async move {
        // Pages in feed order; an empty page closes the feed.
        let mut after = Checkpoint::START;
        loop {
            let mut page = match events.read_all(after, tuning.page_events.max(1)).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(HandlerError::from(e))).await;
                    return;
                }
            };
            let Some(last) = page.last().map(RecordedEvent::checkpoint) else {
                let _ = tx.send(Ok(Vec::new())).await;
                return;
            };
            // The feed ascends: nothing after a page reaching `stop_at` is
            // at or before it.
            let reached_stop = stop_at.is_some_and(|stop| last >= stop);
            if let Some(stop) = stop_at {
                page.retain(|e| e.checkpoint() <= stop);
            }
            after = last;
            // Sized up front: a page's events are large, and growing the
            // vector by doubling copies them over and over.
            let mut decoded = Vec::with_capacity(page.len());
            for rec in page {
                match decode(&rec) {
                    Ok(event) => decoded.push((rec, event)),
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            if !decoded.is_empty() && tx.send(Ok(decoded)).await.is_err() {
                return;
            }
            if reached_stop {
                let _ = tx.send(Ok(Vec::new())).await;
                return;
            }
        }
    });

    let started = Instant::now();
    // Where the time goes (logged at debug): waiting for the feed, folding,
    // building rows, waiting for the previous write.
    let (mut waited_feed, mut folding, mut building, mut waited_write) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    let mut changes = Changes::default();
    let mut pending: usize = 0;
    // Transactions start at REBUILD_FIRST_TRANSACTION_EVENTS and double up
    // to the maximum: the first write starts early (the pipeline fills
    // fast), the large ones come once the shadow B-trees are large.
    let mut tx_events = REBUILD_FIRST_TRANSACTION_EVENTS
        .min(tuning.events_per_transaction)
        .max(1);
    let mut total: u64 = 0;
    let mut last: Option<Checkpoint> = None;
    let outcome: Result<(), RebuildError> = async {
        loop {
            let t = Instant::now();
            let received = rx.recv().await;
            waited_feed += t.elapsed();
            let page = match received {
                Some(Ok(page)) => page,
                Some(Err(e)) => return Err(failed(e)),
                None => {
                    return Err(failed(HandlerError::Transient(
                        "the feed reader stopped unexpectedly".to_owned(),
                    )));
                }
            };
            let end = page.is_empty();
            if !end {
                let t = Instant::now();
                // Every model applies: their shadow checkpoints trail the
                // feed.
                let models = handler.models;
                let refs: Vec<Decoded<'_>> = page.iter().map(|(r, e)| (r, e, models)).collect();
                handler
                    .fold_decoded(&refs, &mut changes)
                    .await
                    .map_err(&failed)?;
                folding += t.elapsed();
                pending += page.len();
                last = page.last().map(|(r, _)| r.checkpoint());
            }
            if pending > 0 && (end || pending >= tx_events) {
                tx_events = tx_events
                    .saturating_mul(2)
                    .min(tuning.events_per_transaction.max(1));
                let t = Instant::now();
                let batch = handler
                    .batch_for(std::mem::take(&mut changes), &cps, last)
                    .map_err(&failed)?;
                building += t.elapsed();
                // One write in flight at a time, in order.
                let t = Instant::now();
                handler.settle_inflight().await.map_err(&failed)?;
                waited_write += t.elapsed();
                let moves = batch.checkpoints.clone();
                let writer = Arc::clone(&store);
                let events = pending;
                handler.inflight = Some(tokio::spawn(async move {
                    let t = Instant::now();
                    let rows: usize = batch.writes.iter().map(Write::rows).sum();
                    let result = writer.apply_batch(batch).await;
                    tracing::debug!(
                        events,
                        rows,
                        ms = t.elapsed().as_millis(),
                        "shadow batch written"
                    );
                    result
                }));
                handler.advanced(&moves);
                cps = handler.checkpoints.clone().unwrap_or_default();
                total = total.saturating_add(pending as u64);
                pending = 0;
                progress(total);
            }
            if end {
                let t = Instant::now();
                handler.settle_inflight().await.map_err(&failed)?;
                waited_write += t.elapsed();
                return Ok(());
            }
        }
    }
    .await;
    drop(rx);
    let _ = reader.await;
    if let Err(e) = outcome {
        // Never leave a write running behind a failed rebuild.
        let _ = handler.settle_inflight().await;
        return Err(e);
    }
    let loaded = started.elapsed();
    store
        .execute_all(&schema::shadow_index_sql(dialect, models))
        .await?;
    tracing::debug!(
        events = total,
        load_ms = loaded.as_millis(),
        index_ms = (started.elapsed() - loaded).as_millis(),
        waited_feed_ms = waited_feed.as_millis(),
        fold_ms = folding.as_millis(),
        build_rows_ms = building.as_millis(),
        waited_write_ms = waited_write.as_millis(),
        "read-model rebuild into shadow"
    );
    Ok(RebuildStats {
        events: total,
        checkpoint: last.unwrap_or(Checkpoint::START),
    })
}

/// Swaps the shadow tables of `models` in for the live ones, views and
/// checkpoints included, in one transaction.
pub async fn swap_shadow(
    store: &dyn ReadModelStore,
    models: &[ReadModel],
) -> Result<(), ReadModelError> {
    store
        .execute_all(&schema::swap_sql(store.dialect(), models))
        .await
}

/// One differing value between live and shadow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowDiff {
    pub table: String,
    /// `col=value` pairs of the primary key, comma-separated.
    pub key: String,
    /// The differing column, or `<row>` when the row exists on one side only.
    pub column: String,
    pub live: Option<String>,
    pub shadow: Option<String>,
}

impl std::fmt::Display for RowDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table={} key={} column={} live={} shadow={}",
            self.table,
            self.key,
            self.column,
            self.live.as_deref().unwrap_or("NULL"),
            self.shadow.as_deref().unwrap_or("NULL")
        )
    }
}

/// Every difference between the live and shadow tables of `models` (at
/// most [`DIFF_ROWS_MAX`] rows per table), computed by the database.
pub async fn diff_shadow_against_live(
    store: &dyn ReadModelStore,
    models: &[ReadModel],
) -> Result<Vec<RowDiff>, ReadModelError> {
    let mut out = Vec::new();
    for m in models {
        for t in m.tables() {
            // A shadow loaded without its key (built only by the swap) may
            // hold a key twice, which the join below cannot show.
            if t.key_built_at_swap(store.dialect(), true) {
                store.execute_all(&[t.shadow_key_index_sql()]).await?;
                for key in store
                    .query_text(&t.duplicate_keys_sql(), &DIFF_ROWS_MAX.to_string())
                    .await?
                {
                    out.push(RowDiff {
                        table: t.name.to_owned(),
                        key,
                        column: "<duplicate key>".to_owned(),
                        live: None,
                        shadow: Some("twice or more".to_owned()),
                    });
                }
            }
            let rows = store
                .query_text(&t.diff_sql(store.dialect()), &DIFF_ROWS_MAX.to_string())
                .await?;
            for text in rows {
                let values: Vec<serde_json::Value> = serde_json::from_str(&text)
                    .map_err(|e| ReadModelError::Backend(format!("diff row unreadable: {e}")))?;
                let as_text = |v: Option<&serde_json::Value>| match v {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(other) => Some(other.to_string()),
                };
                let nk = t.key.len();
                let key = t
                    .key
                    .iter()
                    .enumerate()
                    .map(|(i, k)| format!("{k}={}", as_text(values.get(i)).unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",");
                let present = |i: usize| as_text(values.get(i)).as_deref() == Some("1");
                let (in_live, in_shadow) = (present(nk), present(nk + 1));
                if !(in_live && in_shadow) {
                    out.push(RowDiff {
                        table: t.name.to_owned(),
                        key,
                        column: "<row>".to_owned(),
                        live: in_live.then(|| "present".to_owned()),
                        shadow: in_shadow.then(|| "present".to_owned()),
                    });
                    continue;
                }
                for (i, c) in t.columns.iter().enumerate() {
                    let live = as_text(values.get(nk + 2 + 2 * i));
                    let shadow = as_text(values.get(nk + 3 + 2 * i));
                    if live != shadow {
                        out.push(RowDiff {
                            table: t.name.to_owned(),
                            key: key.clone(),
                            column: c.name.to_owned(),
                            live,
                            shadow,
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}
