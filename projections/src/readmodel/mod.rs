//! Read models: the port adapters implement, the projection handler that
//! folds batches into row images ([`fold`]), and rebuild / diff.
//!
//! API Boundary: SQL text comes from [`schema`] for both dialects; the
//! adapters only run statements with one text parameter, in transactions.

pub mod fold;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use ledger_core::events::AnyEvent;
use ledger_core::{Checkpoint, RecordedEvent, decode_any};
use ledger_store::EventStore;
use serde::Serialize;

use crate::runtime::{Handler, HandlerError, Projector, RuntimeError};
use fold::{
    Changes, FoldError, Images, OrderImage, OrderLineRow, OrderRow, RefundRow, TransferRow,
};
pub use schema::{Dialect, ReadModel};

/// Entity images kept between batches. Beyond this the cache is dropped and
/// rows are re-loaded on demand (one query per table per batch).
pub const CACHE_ENTITIES_MAX: usize = 200_000;

/// Most differing rows a diff reports per table: enough to see the pattern,
/// bounded so a wholly wrong table cannot flood the report.
pub const DIFF_ROWS_MAX: u32 = 1_000;

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

/// One multi-row statement: `sql` with `$1` bound to `param`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub sql: String,
    pub param: String,
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
    async fn apply_batch(&self, batch: &Batch) -> Result<(), ReadModelError>;
    /// Runs parameterless statements in one transaction.
    async fn execute_all(&self, statements: &[String]) -> Result<(), ReadModelError>;
    /// The store's highest global position (0 when empty).
    async fn head_position(&self) -> Result<u64, ReadModelError>;
}

fn transient(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Transient(e.to_string())
}

/// The projection handler for a set of read models, live or shadow.
pub struct ReadModelProjection {
    store: Arc<dyn ReadModelStore>,
    models: BTreeSet<ReadModel>,
    shadow: bool,
    checkpoints: Option<BTreeMap<ReadModel, Option<Checkpoint>>>,
    images: Images,
    /// Test hook: the next batch fails after its row writes.
    fault_once: bool,
}

impl std::fmt::Debug for ReadModelProjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModelProjection")
            .field("models", &self.models)
            .field("shadow", &self.shadow)
            .field("checkpoints", &self.checkpoints)
            .finish_non_exhaustive()
    }
}

impl ReadModelProjection {
    pub fn new(store: Arc<dyn ReadModelStore>, models: &[ReadModel], shadow: bool) -> Self {
        ReadModelProjection {
            store,
            models: models.iter().copied().collect(),
            shadow,
            checkpoints: None,
            images: Images::default(),
            fault_once: false,
        }
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
            for m in &self.models {
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

    /// Loads the stored images of entities the batch touches but whose
    /// creation is not in it and which are not cached.
    async fn load_missing(
        &mut self,
        decoded: &[(&RecordedEvent, AnyEvent, BTreeSet<ReadModel>)],
    ) -> Result<(), HandlerError> {
        let mut seen: BTreeSet<(ReadModel, &str)> = BTreeSet::new();
        let mut want: BTreeMap<ReadModel, Vec<String>> = BTreeMap::new();
        for (rec, event, models) in decoded {
            let Some((kind, id)) = fold::entity_of(rec.stream_id.as_str()) else {
                continue;
            };
            if !models.contains(&kind) || !seen.insert((kind, id)) {
                continue;
            }
            let cached = match kind {
                ReadModel::Orders => self.images.orders.contains_key(id),
                ReadModel::Refunds => self.images.refunds.contains_key(id),
                _ => self.images.transfers.contains_key(id),
            };
            if !cached && !fold::is_creation(event) {
                want.entry(kind).or_default().push(id.to_owned());
            }
        }
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

    fn writes(&self, changes: &Changes) -> Result<Vec<Write>, HandlerError> {
        use schema::*;
        let dialect = self.store.dialect();
        let shadow = self.shadow;
        let mut out = Vec::new();
        let mut push = |table: &Table, param: Result<String, serde_json::Error>, n: usize| {
            if n > 0 {
                out.push(Write {
                    sql: table.write_sql(dialect, shadow),
                    param: param.map_err(transient)?,
                });
            }
            Ok::<(), HandlerError>(())
        };
        let orders: Vec<&OrderImage> = changes
            .orders
            .iter()
            .filter_map(|k| self.images.orders.get(k).and_then(Option::as_ref))
            .collect();
        let order_rows: Vec<&OrderRow> = orders.iter().map(|o| &o.row).collect();
        let line_rows: Vec<&OrderLineRow> = orders.iter().flat_map(|o| &o.lines).collect();
        push(&ORDER_VIEW, json(&order_rows), order_rows.len())?;
        push(&ORDER_LINE_VIEW, json(&line_rows), line_rows.len())?;
        let refunds: Vec<&RefundRow> = changes
            .refunds
            .iter()
            .filter_map(|k| self.images.refunds.get(k).and_then(Option::as_ref))
            .collect();
        push(&REFUND_VIEW, json(&refunds), refunds.len())?;
        let transfers: Vec<&TransferRow> = changes
            .transfers
            .iter()
            .filter_map(|k| self.images.transfers.get(k).and_then(Option::as_ref))
            .collect();
        push(&SELLER_TRANSFER_VIEW, json(&transfers), transfers.len())?;
        push(
            &JOURNAL_ENTRY,
            json(&changes.entries),
            changes.entries.len(),
        )?;
        push(&POSTING, json(&changes.postings), changes.postings.len())?;
        let balances: Vec<fold::AccountBalanceRow> = changes
            .balances
            .iter()
            .map(|((account, currency), (d, c))| fold::AccountBalanceRow {
                account: account.clone(),
                currency: currency.clone(),
                debit_minor: *d,
                credit_minor: *c,
            })
            .collect();
        push(&ACCOUNT_BALANCE, json(&balances), balances.len())?;
        push(&ANOMALY, json(&changes.anomalies), changes.anomalies.len())?;
        Ok(out)
    }
}

fn json<T: Serialize>(rows: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string(rows)
}

#[async_trait]
impl Handler for ReadModelProjection {
    fn name(&self) -> String {
        let names: Vec<String> = self
            .models
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
        let mut decoded = Vec::with_capacity(events.len());
        for rec in events {
            let applies: BTreeSet<ReadModel> = cps
                .iter()
                .filter(|(_, cp)| cp.unwrap_or(Checkpoint::START) < rec.checkpoint())
                .map(|(m, _)| *m)
                .collect();
            if applies.is_empty() {
                continue;
            }
            let event = decode_any(
                &rec.stream_id,
                &rec.event_type,
                rec.schema_version,
                &rec.payload,
            )
            .map_err(|e| HandlerError::Poison {
                stream: rec.stream_id.as_str().to_owned(),
                version: rec.stream_version,
                reason: e.to_string(),
            })?;
            decoded.push((rec, event, applies));
        }
        if let Err(e) = self.load_missing(&decoded).await {
            self.images.clear();
            return Err(e);
        }
        let mut changes = Changes::default();
        for (rec, event, applies) in &decoded {
            if let Err(FoldError {
                stream,
                version,
                reason,
            }) = fold::apply(applies, rec, event, &mut self.images, &mut changes)
            {
                // Earlier events of this batch already changed the cached
                // images: forget them, the database still has the truth.
                self.images.clear();
                return Err(HandlerError::Poison {
                    stream,
                    version,
                    reason,
                });
            }
        }
        let last = events.last().map(RecordedEvent::checkpoint);
        let batch = Batch {
            writes: self.writes(&changes)?,
            checkpoints: cps
                .iter()
                .filter_map(|(m, from)| {
                    let to = last?;
                    (from.unwrap_or(Checkpoint::START) < to).then(|| CheckpointMove {
                        name: m.checkpoint_name(self.shadow),
                        from: *from,
                        to,
                    })
                })
                .collect(),
            fail_before_checkpoint: std::mem::take(&mut self.fault_once),
        };
        match self.store.apply_batch(&batch).await {
            Ok(()) => {
                let map = self.checkpoints.get_or_insert_with(BTreeMap::new);
                for mv in &batch.checkpoints {
                    if let Some(m) = self
                        .models
                        .iter()
                        .find(|m| m.checkpoint_name(self.shadow) == mv.name)
                    {
                        map.insert(*m, Some(mv.to));
                    }
                }
                if self.images.len() > CACHE_ENTITIES_MAX {
                    self.images.clear();
                }
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
/// far after every batch. Live tables are untouched.
pub async fn rebuild_into_shadow(
    events: Arc<dyn EventStore>,
    store: Arc<dyn ReadModelStore>,
    models: &[ReadModel],
    stop_at: Option<Checkpoint>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<RebuildStats, RebuildError> {
    store
        .execute_all(&schema::prepare_shadow_sql(store.dialect(), models))
        .await?;
    let handler = ReadModelProjection::new(store, models, true);
    let mut projector = Projector::new(events, handler).with_stop_at(stop_at);
    let mut total: u64 = 0;
    loop {
        let n = projector.run_once().await?;
        if n == 0 {
            break;
        }
        total = total.saturating_add(n as u64);
        progress(total);
    }
    Ok(RebuildStats {
        events: total,
        checkpoint: projector.status().checkpoint,
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
