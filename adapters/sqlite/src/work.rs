//! [`WorkStore`] on SQLite: the `pm_work` table and the managers'
//! checkpoints in `projection_checkpoint`, in the event file.
//!
//! **Race freedom:** every write (`enqueue`, `schedule`, `claim_due`,
//! `finish`, `reschedule`) runs in one `begin immediate` transaction on the
//! single writer ([`SqliteStore::begin_write`]). SQLite's write lock admits
//! one such transaction at a time across every process on the file, so a
//! claim's select-and-mark, a checkpoint's compare-and-set and a finish's
//! check-then-delete each see no interleaved writer: of concurrent claimers
//! each row goes to exactly one. Reads (`load_checkpoint`, `pending`) use
//! the reader pool and see the last committed state.
//!
//! **Storage:** `due_at`, `claimed_until` and `updated_at` are integer
//! microseconds since the Unix epoch (like `event.recorded_at`): exact at
//! microseconds, compared and sorted as numbers. `projection_checkpoint` is
//! the read models' table, whose `updated_at` is ISO-8601 text; it is
//! written the way the read models write it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_core::Checkpoint;
use ledger_store::work::{
    UNCLAIMED_OWNER, UNCLAIMED_UNTIL, WorkItem, WorkOrder, WorkStore, check_item, check_manager,
    check_owner, checkpoint_moved, claim_deadline, claim_limit, collapse_orders, storable_error,
    to_micros, warn_claim_lost,
};
use ledger_store::{StoreError, recorded_now};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use crate::{SqliteStore, backend, finish as end_tx};

const LOAD_CHECKPOINT_SQL: &str =
    "select commit_id, position from projection_checkpoint where name = ?1";

const SAVE_CHECKPOINT_SQL: &str = "insert into projection_checkpoint \
     (name, commit_id, position, updated_at) \
     values (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) \
     on conflict (name) do update set commit_id = excluded.commit_id, \
         position = excluded.position, updated_at = excluded.updated_at";

const UPSERT_SQL: &str = "insert into pm_work (manager, stream_id, due_at, updated_at) \
     values (?1, ?2, ?3, ?4) \
     on conflict (manager, stream_id) do update \
     set due_at = excluded.due_at, version = version + 1, updated_at = excluded.updated_at";

const CLAIM_SQL: &str = "update pm_work set owner = ?2, claimed_until = ?4, updated_at = ?6 \
     where manager = ?1 and stream_id in ( \
         select stream_id from pm_work \
         where manager = ?1 and due_at <= ?3 \
           and (claimed_until is null or claimed_until < ?3) \
         order by due_at, stream_id \
         limit ?5) \
     returning manager, stream_id, due_at, attempts, version, last_error, owner, claimed_until";

const FINISH_DELETE_SQL: &str = "delete from pm_work \
     where manager = ?1 and stream_id = ?2 and owner = ?3 and claimed_until = ?4 and version = ?5";

const RELEASE_SQL: &str = "update pm_work \
     set owner = null, claimed_until = null, updated_at = ?5 \
     where manager = ?1 and stream_id = ?2 and owner = ?3 and claimed_until = ?4";

const RESCHEDULE_SQL: &str = "update pm_work \
     set due_at = case when version = ?5 then ?6 else min(due_at, ?6) end, \
         attempts = min(attempts + 1, 4294967295), last_error = ?7, \
         owner = null, claimed_until = null, updated_at = ?8 \
     where manager = ?1 and stream_id = ?2 and owner = ?3 and claimed_until = ?4";

const PENDING_SQL: &str = "select manager, stream_id, due_at, attempts, version, last_error, \
            owner, claimed_until \
     from pm_work where manager = ?1 order by due_at, stream_id";

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Backend(format!("checkpoint {what} {value} exceeds integer")))
}

fn checkpoint_of(row: &SqliteRow, name: &str) -> Result<Checkpoint, StoreError> {
    let commit: i64 = row.try_get("commit_id").map_err(backend)?;
    let position: i64 = row.try_get("position").map_err(backend)?;
    match (u64::try_from(commit), u64::try_from(position)) {
        (Ok(commit), Ok(position)) => Ok(Checkpoint { commit, position }),
        _ => Err(StoreError::Corrupt {
            stream: format!("projection_checkpoint {name}"),
            version: 0,
            reason: format!("negative checkpoint (commit {commit}, position {position})"),
        }),
    }
}

fn decode_item(row: &SqliteRow) -> Result<WorkItem, StoreError> {
    let manager: String = row.try_get("manager").map_err(backend)?;
    let stream_id: String = row.try_get("stream_id").map_err(backend)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        stream: format!("pm_work {manager}/{stream_id}"),
        version: 0,
        reason,
    };
    let time = |micros: i64, what: &str| {
        DateTime::from_timestamp_micros(micros)
            .ok_or_else(|| corrupt(format!("{what} {micros} is out of range")))
    };
    let due_at: i64 = row.try_get("due_at").map_err(backend)?;
    let attempts: i64 = row.try_get("attempts").map_err(backend)?;
    let attempts = u32::try_from(attempts)
        .map_err(|_| corrupt(format!("attempts {attempts} out of range")))?;
    let owner: Option<String> = row.try_get("owner").map_err(backend)?;
    let claimed_until: Option<i64> = row.try_get("claimed_until").map_err(backend)?;
    let (owner, claimed_until) = match (owner, claimed_until) {
        (Some(owner), Some(until)) => (owner, time(until, "claimed_until")?),
        (None, None) => (UNCLAIMED_OWNER.to_owned(), UNCLAIMED_UNTIL),
        _ => return Err(corrupt("owner and claimed_until disagree".to_owned())),
    };
    Ok(WorkItem {
        due_at: time(due_at, "due_at")?,
        attempts,
        version: row.try_get("version").map_err(backend)?,
        last_error: row.try_get("last_error").map_err(backend)?,
        claimed_until,
        owner,
        manager,
        stream_id,
    })
}

/// The wall-clock `updated_at` of a write (audit only; never compared).
fn updated_at() -> i64 {
    recorded_now().timestamp_micros()
}

/// Upserts `orders` (already collapsed), one cached statement per row.
async fn upsert(
    tx: &mut Transaction<'static, Sqlite>,
    orders: &[WorkOrder],
) -> Result<(), StoreError> {
    let now = updated_at();
    for o in orders {
        sqlx::query(UPSERT_SQL)
            .bind(&o.manager)
            .bind(&o.stream_id)
            .bind(o.due_at.timestamp_micros())
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
    }
    Ok(())
}

async fn enqueue_in(
    tx: &mut Transaction<'static, Sqlite>,
    name: &str,
    from: Option<Checkpoint>,
    to: Checkpoint,
    orders: &[WorkOrder],
) -> Result<(), StoreError> {
    let row = sqlx::query(LOAD_CHECKPOINT_SQL)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)?;
    let found = row.map(|r| checkpoint_of(&r, name)).transpose()?;
    if found != from {
        return Err(checkpoint_moved(name, from, found));
    }
    sqlx::query(SAVE_CHECKPOINT_SQL)
        .bind(name)
        .bind(to_i64(to.commit, "commit")?)
        .bind(to_i64(to.position, "position")?)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    upsert(tx, orders).await
}

async fn finish_in(
    tx: &mut Transaction<'static, Sqlite>,
    item: &WorkItem,
) -> Result<(), StoreError> {
    let deleted = sqlx::query(FINISH_DELETE_SQL)
        .bind(&item.manager)
        .bind(&item.stream_id)
        .bind(&item.owner)
        .bind(item.claimed_until.timestamp_micros())
        .bind(item.version)
        .execute(&mut **tx)
        .await
        .map_err(backend)?
        .rows_affected();
    if deleted == 1 {
        return Ok(());
    }
    // Re-enqueued while it ran (version moved): keep it, due again.
    let released = sqlx::query(RELEASE_SQL)
        .bind(&item.manager)
        .bind(&item.stream_id)
        .bind(&item.owner)
        .bind(item.claimed_until.timestamp_micros())
        .bind(updated_at())
        .execute(&mut **tx)
        .await
        .map_err(backend)?
        .rows_affected();
    if released == 0 {
        warn_claim_lost("finish", item);
    }
    Ok(())
}

#[async_trait]
impl WorkStore for SqliteStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(LOAD_CHECKPOINT_SQL)
            .bind(name)
            .fetch_optional(self.reader())
            .await
            .map_err(backend)?;
        row.map(|r| checkpoint_of(&r, name)).transpose()
    }

    async fn enqueue(
        &self,
        name: &str,
        from: Option<Checkpoint>,
        to: Checkpoint,
        orders: &[WorkOrder],
    ) -> Result<(), StoreError> {
        let orders = collapse_orders(orders)?;
        let mut tx = self.begin_write().await?;
        let outcome = enqueue_in(&mut tx, name, from, to, &orders).await;
        end_tx(tx, outcome).await
    }

    async fn schedule(&self, orders: &[WorkOrder]) -> Result<(), StoreError> {
        let orders = collapse_orders(orders)?;
        if orders.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let outcome = upsert(&mut tx, &orders).await;
        end_tx(tx, outcome).await
    }

    async fn claim_due(
        &self,
        manager: &str,
        owner: &str,
        now: DateTime<Utc>,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<WorkItem>, StoreError> {
        check_manager(manager)?;
        check_owner(owner)?;
        let now = to_micros(now);
        let until = claim_deadline(now, lease)?;
        let limit = claim_limit(limit);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let outcome = sqlx::query(CLAIM_SQL)
            .bind(manager)
            .bind(owner)
            .bind(now.timestamp_micros())
            .bind(until.timestamp_micros())
            .bind(i64::from(limit))
            .bind(updated_at())
            .fetch_all(&mut *tx)
            .await
            .map_err(backend);
        let rows = end_tx(tx, outcome).await?;
        let mut items = rows
            .iter()
            .map(decode_item)
            .collect::<Result<Vec<_>, _>>()?;
        // `returning` keeps no order.
        items.sort_by(|a, b| (a.due_at, &a.stream_id).cmp(&(b.due_at, &b.stream_id)));
        Ok(items)
    }

    async fn finish(&self, item: &WorkItem) -> Result<(), StoreError> {
        check_item(item)?;
        let mut tx = self.begin_write().await?;
        let outcome = finish_in(&mut tx, item).await;
        end_tx(tx, outcome).await
    }

    async fn reschedule(
        &self,
        item: &WorkItem,
        due_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        check_item(item)?;
        let mut tx = self.begin_write().await?;
        let outcome = sqlx::query(RESCHEDULE_SQL)
            .bind(&item.manager)
            .bind(&item.stream_id)
            .bind(&item.owner)
            .bind(item.claimed_until.timestamp_micros())
            .bind(item.version)
            .bind(to_micros(due_at).timestamp_micros())
            .bind(storable_error(error))
            .bind(updated_at())
            .execute(&mut *tx)
            .await
            .map_err(backend);
        let updated = end_tx(tx, outcome).await?.rows_affected();
        if updated == 0 {
            warn_claim_lost("reschedule", item);
        }
        Ok(())
    }

    async fn pending(&self, manager: &str) -> Result<Vec<WorkItem>, StoreError> {
        check_manager(manager)?;
        let rows = sqlx::query(PENDING_SQL)
            .bind(manager)
            .fetch_all(self.reader())
            .await
            .map_err(backend)?;
        rows.iter().map(decode_item).collect()
    }
}
