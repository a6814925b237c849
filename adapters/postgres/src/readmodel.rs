//! [`ReadModelStore`] on Postgres: the read models live in the same
//! database (and schema) as the events, so a batch's rows and its
//! checkpoint commit in one transaction.
//!
//! The statements come from `ledger_projections::readmodel::schema`; this
//! file only runs them, binding each written column as one typed array
//! (`unnest` expands them: one statement per table per batch). Checkpoint rows are locked (`for update`) before the
//! compare-and-set, so two projectors (or a projector and a rebuild's swap)
//! never both apply the same batch.

use std::collections::HashMap;

use async_trait::async_trait;
use ledger_core::Checkpoint;
use ledger_projections::readmodel::{
    Batch, Dialect, ReadModelError, ReadModelStore, Values, Write,
};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::PgStore;

/// The feed's head for the lag: the position of the last event in
/// `read_all` order, one backward probe of `event_transaction_position_ix`.
/// The projector asks after every batch, so it must not depend on the table's
/// size: `max(global_position)` has no index to use (the identity column has
/// none, on purpose) and scanned the whole table each time, a cost that grew
/// with the history and took most of Postgres' CPU under load.
#[doc(hidden)] // Public only so a test can `explain` it.
pub const HEAD_POSITION_SQL: &str = "select e.global_position from event e \
     order by e.transaction_id desc, e.global_position desc limit 1";

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
    tx: &mut Transaction<'static, Postgres>,
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

/// Locks a batch's checkpoint rows, in name order so two batches cannot
/// deadlock, with one statement (a batch moves every model's checkpoint:
/// one round trip instead of one per model). Names without a row are absent.
const LOCK_CHECKPOINTS_SQL: &str = "select name, commit_id, position from projection_checkpoint \
     where name = any($1::text[]) order by name for update";

/// Saves a batch's checkpoints with one statement.
const SAVE_CHECKPOINTS_SQL: &str = "insert into projection_checkpoint \
         (name, commit_id, position, updated_at) \
     select c.name, c.commit_id, c.position, now() \
     from unnest($1::text[], $2::bigint[], $3::bigint[]) as c (name, commit_id, position) \
     order by c.name \
     on conflict (name) do update set commit_id = excluded.commit_id, \
         position = excluded.position, updated_at = excluded.updated_at";

async fn lock_checkpoints(
    tx: &mut Transaction<'static, Postgres>,
    names: &[&str],
) -> Result<HashMap<String, Checkpoint>, ReadModelError> {
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(LOCK_CHECKPOINTS_SQL)
        .bind(names)
        .fetch_all(&mut **tx)
        .await
        .map_err(backend)?;
    rows.into_iter()
        .map(|r| {
            let name: String = r.try_get(0).map_err(backend)?;
            let at = checkpoint_of(
                r.try_get(1).map_err(backend)?,
                r.try_get(2).map_err(backend)?,
            )?;
            Ok((name, at))
        })
        .collect()
}

/// One statement for all of a write's rows: a typed array per column.
async fn write(tx: &mut Transaction<'static, Postgres>, w: Write) -> Result<(), ReadModelError> {
    let rows = w.rows();
    let mut query = sqlx::query(AssertSqlSafe(w.sql(Dialect::Postgres, rows)));
    for column in w.columns {
        query = match column {
            Values::Text(v) => query.bind(v.iter().map(Option::as_deref).collect::<Vec<_>>()),
            Values::Int(v) => query.bind(v),
            Values::Ts(v) => query.bind(v),
        };
    }
    query.execute(&mut **tx).await.map_err(backend)?;
    Ok(())
}

#[async_trait]
impl ReadModelStore for PgStore {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, ReadModelError> {
        let mut tx = self.pool().begin().await.map_err(backend)?;
        let cp = stored_checkpoint(&mut tx, name).await?;
        tx.commit().await.map_err(backend)?;
        Ok(cp)
    }

    async fn query_text(&self, sql: &str, param: &str) -> Result<Vec<String>, ReadModelError> {
        sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.to_owned()))
            .bind(param)
            .fetch_all(self.pool())
            .await
            .map_err(backend)
    }

    async fn apply_batch(&self, batch: Batch) -> Result<(), ReadModelError> {
        let mut tx = self.pool().begin().await.map_err(backend)?;
        if batch.is_shadow_only() {
            // A rebuild's batch commits without waiting for its WAL flush
            // (tens of MB per batch). Still crash-safe: an asynchronous
            // commit is never torn, a crash can only lose the latest
            // batches whole (rows and shadow checkpoint together), and a
            // crashed rebuild is redone from empty shadow tables. `local`:
            // the setting ends with this transaction; live batches and the
            // swap keep synchronous commits.
            sqlx::query("set local synchronous_commit = off")
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        let names: Vec<&str> = batch
            .checkpoints
            .iter()
            .map(|mv| mv.name.as_str())
            .collect();
        let mut found = lock_checkpoints(&mut tx, &names).await?;
        for mv in &batch.checkpoints {
            let found = found.remove(&mv.name);
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
        if !batch.checkpoints.is_empty() {
            let mut commits = Vec::with_capacity(names.len());
            let mut positions = Vec::with_capacity(names.len());
            for mv in &batch.checkpoints {
                commits.push(to_i64(mv.to.commit)?);
                positions.push(to_i64(mv.to.position)?);
            }
            sqlx::query(SAVE_CHECKPOINTS_SQL)
                .bind(&names)
                .bind(commits)
                .bind(positions)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn execute_all(&self, statements: &[String]) -> Result<(), ReadModelError> {
        let mut tx = self.pool().begin().await.map_err(backend)?;
        for s in statements {
            sqlx::query(AssertSqlSafe(s.clone()))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn head_position(&self) -> Result<u64, ReadModelError> {
        let head: Option<i64> = sqlx::query_scalar(HEAD_POSITION_SQL)
            .fetch_optional(self.pool())
            .await
            .map_err(backend)?;
        Ok(head.and_then(|h| u64::try_from(h).ok()).unwrap_or(0))
    }
}
