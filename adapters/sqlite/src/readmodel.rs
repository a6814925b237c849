//! [`ReadModelStore`] on SQLite: the read models live in the event file, so
//! a batch's rows and its checkpoint commit in one `begin immediate`
//! transaction on the single writer (which also serialises the
//! checkpoint compare-and-set against every other writer).
//!
//! The statements come from `ledger_projections::readmodel::schema`; this
//! file only runs them: multi-row `values` statements of
//! `rows_per_statement` rows with typed binds, prepared once per connection
//! and reused (sqlx's statement cache) for every full chunk.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use chrono::{DateTime, Utc};
use ledger_core::Checkpoint;
use ledger_projections::readmodel::fold::format_ts;
use ledger_projections::readmodel::schema::WriteMode;
use ledger_projections::readmodel::{
    Batch, Dialect, ReadModelError, ReadModelStore, Values, Write,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};

use crate::SqliteStore;

fn backend(e: sqlx::Error) -> ReadModelError {
    ReadModelError::Backend(e.to_string())
}

fn to_i64(v: u64) -> Result<i64, ReadModelError> {
    i64::try_from(v).map_err(|_| ReadModelError::Backend(format!("{v} exceeds bigint")))
}

fn checkpoint_of(commit: i64, position: i64) -> Result<Checkpoint, ReadModelError> {
    Ok(Checkpoint {
        commit: u64::try_from(commit)
            .map_err(|_| ReadModelError::Backend(format!("negative commit {commit}")))?,
        position: u64::try_from(position)
            .map_err(|_| ReadModelError::Backend(format!("negative position {position}")))?,
    })
}

async fn stored_checkpoint(
    tx: &mut Transaction<'static, Sqlite>,
    name: &str,
) -> Result<Option<Checkpoint>, ReadModelError> {
    let row = sqlx::query("select commit_id, position from projection_checkpoint where name = $1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)?;
    row.map(|r| checkpoint_of(r.get::<i64, _>(0), r.get::<i64, _>(1)))
        .transpose()
}

/// Pragmas set on the writer before every batch (outside the transaction, as
/// `temp_store` requires; both stay set on the connection until the next
/// batch sets them again):
/// - `temp_store = memory`: a multi-row statement inside a transaction keeps
///   a statement journal (to undo just that statement); in a temp file, as
///   SQLite defaults to, every page it touches costs a write syscall.
/// - `cache_size`: [`WRITER_CACHE_KIB`]; SQLite's default 2 MiB makes a
///   large batch spill dirty pages to the WAL mid-transaction and re-read
///   index pages it just evicted. A rebuild's batches (shadow tables only)
///   get [`SHADOW_WRITER_CACHE_KIB`]; the next live batch shrinks the cache
///   back.
fn writer_pragmas(shadow_only: bool) -> String {
    let kib = if shadow_only {
        SHADOW_WRITER_CACHE_KIB
    } else {
        WRITER_CACHE_KIB
    };
    format!("pragma temp_store = memory; pragma cache_size = -{kib}")
}

/// The writer's page cache once it applies read-model batches, in KiB: a
/// live batch touches a few tens of MiB of table and index pages.
pub const WRITER_CACHE_KIB: u32 = 65_536;

/// The writer's page cache while it applies a rebuild's shadow batches, in
/// KiB. The entity tables' primary keys are random (uuids), so each
/// transaction of a large rebuild touches most leaf pages of their key
/// indexes (the append-only tables load without keys: see
/// `Table::key_built_at_swap`); on a 1M-event history those indexes outgrow
/// [`WRITER_CACHE_KIB`], and every
/// transaction re-read the pages the previous one evicted (from the WAL or
/// the file: a syscall and a copy each) and spilled dirty pages mid-way.
pub const SHADOW_WRITER_CACHE_KIB: u32 = 262_144;

/// Statement texts of full chunks, per (table, mode, shadow): built once per
/// process (each is `rows_per_statement` tuples long).
type SqlCache = HashMap<(&'static str, WriteMode, bool), Arc<str>>;

static FULL_CHUNK_SQL: LazyLock<Mutex<SqlCache>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn full_chunk_sql(w: &Write) -> Result<Arc<str>, ReadModelError> {
    let mut cache = FULL_CHUNK_SQL
        .lock()
        .map_err(|_| ReadModelError::Backend("statement cache poisoned".to_owned()))?;
    Ok(Arc::clone(
        cache
            .entry((w.table.name, w.mode, w.shadow))
            .or_insert_with(|| {
                let per = w.table.rows_per_statement(Dialect::Sqlite);
                w.sql(Dialect::Sqlite, per).into()
            }),
    ))
}

/// A column's values, taken in row order.
enum Column {
    Text(std::vec::IntoIter<Option<Arc<str>>>),
    Int(std::vec::IntoIter<Option<i64>>),
    Ts(std::vec::IntoIter<Option<DateTime<Utc>>>),
}

/// A write's rows in statements of `rows_per_statement` rows, bound
/// row-major. Full chunks share one statement text (prepared once, cached);
/// the shorter last chunk is not cached, so its one-off shape never evicts
/// the reused ones.
async fn write(tx: &mut Transaction<'static, Sqlite>, w: Write) -> Result<(), ReadModelError> {
    let rows = w.rows();
    let per = w.table.rows_per_statement(Dialect::Sqlite);
    let full = full_chunk_sql(&w)?;
    let mut columns: Vec<Column> = w
        .columns
        .into_iter()
        .map(|c| match c {
            Values::Text(v) => Column::Text(v.into_iter()),
            Values::Int(v) => Column::Int(v.into_iter()),
            Values::Ts(v) => Column::Ts(v.into_iter()),
        })
        .collect();
    let mut done = 0;
    while done < rows {
        let n = per.min(rows - done);
        let mut query = if n == per {
            sqlx::query(AssertSqlSafe(Arc::clone(&full)))
        } else {
            sqlx::query(AssertSqlSafe(w.table.write_sql(
                Dialect::Sqlite,
                w.shadow,
                n,
            )))
            .persistent(false)
        };
        for _ in 0..n {
            for c in &mut columns {
                query = match c {
                    Column::Text(v) => query.bind(v.next().flatten()),
                    Column::Int(v) => query.bind(v.next().flatten()),
                    Column::Ts(v) => query.bind(v.next().flatten().as_ref().map(format_ts)),
                };
            }
        }
        query.execute(&mut **tx).await.map_err(backend)?;
        done += n;
    }
    Ok(())
}

#[async_trait]
impl ReadModelStore for SqliteStore {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, ReadModelError> {
        let row =
            sqlx::query("select commit_id, position from projection_checkpoint where name = $1")
                .bind(name)
                .fetch_optional(self.reader())
                .await
                .map_err(backend)?;
        row.map(|r| checkpoint_of(r.get::<i64, _>(0), r.get::<i64, _>(1)))
            .transpose()
    }

    async fn query_text(&self, sql: &str, param: &str) -> Result<Vec<String>, ReadModelError> {
        sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.to_owned()))
            .bind(param)
            .fetch_all(self.reader())
            .await
            .map_err(backend)
    }

    async fn apply_batch(&self, batch: Batch) -> Result<(), ReadModelError> {
        // Multi-row statements inside a transaction keep a statement journal
        // (to undo just the failing statement); in a temp file, as SQLite
        // defaults to, it costs a write syscall per page touched. In memory
        // it is a copy. Set on the writer (the pool's one connection)
        // outside the transaction, as SQLite requires; it stays set.
        sqlx::raw_sql(AssertSqlSafe(writer_pragmas(batch.is_shadow_only())))
            .execute(self.pool())
            .await
            .map_err(backend)?;
        let mut tx = self
            .begin_write()
            .await
            .map_err(|e| ReadModelError::Backend(e.to_string()))?;
        for mv in &batch.checkpoints {
            let found = stored_checkpoint(&mut tx, &mv.name).await?;
            if found != mv.from {
                return Err(ReadModelError::CheckpointMoved {
                    name: mv.name.clone(),
                    expected: mv.from,
                    found,
                });
            }
        }
        for w in batch.writes {
            write(&mut tx, w).await?;
        }
        if batch.fail_before_checkpoint {
            // Dropping the transaction rolls the row writes back.
            return Err(ReadModelError::InjectedFault);
        }
        for mv in &batch.checkpoints {
            sqlx::query(
                "insert into projection_checkpoint (name, commit_id, position, updated_at) \
                 values ($1, $2, $3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) on conflict (name) do update set \
                 commit_id = excluded.commit_id, position = excluded.position, \
                 updated_at = excluded.updated_at",
            )
            .bind(mv.name.as_str())
            .bind(to_i64(mv.to.commit)?)
            .bind(to_i64(mv.to.position)?)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn execute_all(&self, statements: &[String]) -> Result<(), ReadModelError> {
        let mut tx = self
            .begin_write()
            .await
            .map_err(|e| ReadModelError::Backend(e.to_string()))?;
        for s in statements {
            sqlx::query(AssertSqlSafe(s.clone()))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn head_position(&self) -> Result<u64, ReadModelError> {
        let head: i64 = sqlx::query_scalar("select coalesce(max(global_position), 0) from event")
            .fetch_one(self.reader())
            .await
            .map_err(backend)?;
        Ok(u64::try_from(head).unwrap_or(0))
    }
}
