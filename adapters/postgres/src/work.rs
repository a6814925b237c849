//! [`WorkStore`] on Postgres: the `pm_work` table and the managers'
//! checkpoints in `projection_checkpoint`.
//!
//! **Race freedom:**
//! - `claim_due` is one `update … from (select … for update skip locked)`:
//!   the subquery locks the rows it picks and skips rows another claimer's
//!   statement holds, so concurrent claimers (tasks or processes) never wait
//!   on each other and never get the same row. A row claimed and committed
//!   by another claimer is re-checked against the `where` (Read Committed)
//!   and, its claim now live, dropped.
//! - `enqueue`'s checkpoint compare-and-set is a single conditional `update`
//!   (or, from no checkpoint, an `insert … on conflict do nothing`): of two
//!   racing batches from one position the second waits on the first's row
//!   lock, re-checks, matches nothing and rolls back, orders unwritten.
//! - Upserts lock rows in `(manager, stream_id)` order, so two upserts of
//!   overlapping rows queue instead of deadlocking.
//! - `finish` and `reschedule` are conditional single-row statements on the
//!   claim (`owner`, `claimed_until`) and `version`, so a claim lost to an
//!   expired lease, or a re-enqueue that landed meanwhile, is judged
//!   against committed state.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_core::Checkpoint;
use ledger_store::StoreError;
use ledger_store::work::{
    UNCLAIMED_OWNER, UNCLAIMED_UNTIL, WorkItem, WorkOrder, WorkStore, check_item, check_manager,
    check_owner, checkpoint_moved, claim_deadline, claim_limit, collapse_orders, storable_error,
    to_micros, warn_claim_lost,
};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::PgStore;
use crate::error::backend;

/// `pm_work` columns in the order [`decode_item`] reads them by name.
macro_rules! work_columns {
    () => {
        "manager, stream_id, due_at, attempts, version, last_error, owner, claimed_until"
    };
}

const LOAD_CHECKPOINT_SQL: &str =
    "select commit_id, position from projection_checkpoint where name = $1";

const CHECKPOINT_CREATE_SQL: &str = "insert into projection_checkpoint \
     (name, commit_id, position, updated_at) values ($1, $2, $3, now()) \
     on conflict on constraint projection_checkpoint_pk do nothing";

const CHECKPOINT_MOVE_SQL: &str = "update projection_checkpoint \
     set commit_id = $4, position = $5, updated_at = now() \
     where name = $1 and commit_id = $2 and position = $3";

/// One statement for every order: a typed array per column.
const UPSERT_SQL: &str = "insert into pm_work (manager, stream_id, due_at, updated_at) \
     select o.manager, o.stream_id, o.due_at, now() \
     from unnest($1::text[], $2::text[], $3::timestamptz[]) as o(manager, stream_id, due_at) \
     on conflict on constraint pm_work_pk do update \
     set due_at = excluded.due_at, version = pm_work.version + 1, updated_at = excluded.updated_at";

const CLAIM_SQL: &str = "update pm_work w set owner = $2, claimed_until = $4, updated_at = now() \
     from (select d.manager, d.stream_id from pm_work d \
           where d.manager = $1 and d.due_at <= $3 \
             and (d.claimed_until is null or d.claimed_until < $3) \
           order by d.due_at, d.stream_id \
           limit $5 \
           for update skip locked) c \
     where w.manager = c.manager and w.stream_id = c.stream_id \
     returning w.manager, w.stream_id, w.due_at, w.attempts, w.version, w.last_error, \
               w.owner, w.claimed_until";

const FINISH_DELETE_SQL: &str = "delete from pm_work \
     where manager = $1 and stream_id = $2 and owner = $3 and claimed_until = $4 and version = $5";

const RELEASE_SQL: &str = "update pm_work \
     set owner = null, claimed_until = null, updated_at = now() \
     where manager = $1 and stream_id = $2 and owner = $3 and claimed_until = $4";

const RESCHEDULE_SQL: &str = "update pm_work \
     set due_at = case when version = $5 then $6 else least(due_at, $6) end, \
         attempts = least(attempts + 1, 4294967295), last_error = $7, \
         owner = null, claimed_until = null, updated_at = now() \
     where manager = $1 and stream_id = $2 and owner = $3 and claimed_until = $4";

const PENDING_SQL: &str = concat!(
    "select ",
    work_columns!(),
    " from pm_work where manager = $1 order by due_at, stream_id"
);

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Backend(format!("checkpoint {what} {value} exceeds bigint")))
}

fn checkpoint_of(row: &PgRow, name: &str) -> Result<Checkpoint, StoreError> {
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

fn decode_item(row: &PgRow) -> Result<WorkItem, StoreError> {
    let manager: String = row.try_get("manager").map_err(backend)?;
    let stream_id: String = row.try_get("stream_id").map_err(backend)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        stream: format!("pm_work {manager}/{stream_id}"),
        version: 0,
        reason,
    };
    let attempts: i64 = row.try_get("attempts").map_err(backend)?;
    let attempts = u32::try_from(attempts)
        .map_err(|_| corrupt(format!("attempts {attempts} out of range")))?;
    let owner: Option<String> = row.try_get("owner").map_err(backend)?;
    let claimed_until: Option<DateTime<Utc>> = row.try_get("claimed_until").map_err(backend)?;
    let (owner, claimed_until) = match (owner, claimed_until) {
        (Some(owner), Some(until)) => (owner, until),
        (None, None) => (UNCLAIMED_OWNER.to_owned(), UNCLAIMED_UNTIL),
        _ => return Err(corrupt("owner and claimed_until disagree".to_owned())),
    };
    Ok(WorkItem {
        due_at: row.try_get("due_at").map_err(backend)?,
        attempts,
        version: row.try_get("version").map_err(backend)?,
        last_error: row.try_get("last_error").map_err(backend)?,
        claimed_until,
        owner,
        manager,
        stream_id,
    })
}

/// Upserts `orders` (already collapsed) in `(manager, stream_id)` order.
async fn upsert(conn: &mut PgConnection, mut orders: Vec<WorkOrder>) -> Result<(), StoreError> {
    if orders.is_empty() {
        return Ok(());
    }
    orders.sort_by(|a, b| (&a.manager, &a.stream_id).cmp(&(&b.manager, &b.stream_id)));
    let mut managers = Vec::with_capacity(orders.len());
    let mut streams = Vec::with_capacity(orders.len());
    let mut dues = Vec::with_capacity(orders.len());
    for o in orders {
        managers.push(o.manager);
        streams.push(o.stream_id);
        dues.push(o.due_at);
    }
    sqlx::query(UPSERT_SQL)
        .bind(managers)
        .bind(streams)
        .bind(dues)
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl WorkStore for PgStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(LOAD_CHECKPOINT_SQL)
            .bind(name)
            .fetch_optional(self.pool())
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
        let (to_commit, to_position) = (
            to_i64(to.commit, "commit")?,
            to_i64(to.position, "position")?,
        );
        let mut tx = self.pool().begin().await.map_err(backend)?;
        let moved = match from {
            None => sqlx::query(CHECKPOINT_CREATE_SQL)
                .bind(name)
                .bind(to_commit)
                .bind(to_position)
                .execute(&mut *tx)
                .await
                .map_err(backend)?,
            Some(f) => sqlx::query(CHECKPOINT_MOVE_SQL)
                .bind(name)
                .bind(to_i64(f.commit, "commit")?)
                .bind(to_i64(f.position, "position")?)
                .bind(to_commit)
                .bind(to_position)
                .execute(&mut *tx)
                .await
                .map_err(backend)?,
        }
        .rows_affected();
        if moved != 1 {
            tx.rollback().await.map_err(backend)?;
            let found = self.load_checkpoint(name).await?;
            return Err(checkpoint_moved(name, from, found));
        }
        upsert(&mut tx, orders).await?;
        tx.commit().await.map_err(backend)
    }

    async fn schedule(&self, orders: &[WorkOrder]) -> Result<(), StoreError> {
        let orders = collapse_orders(orders)?;
        let mut conn = self.pool().acquire().await.map_err(backend)?;
        upsert(&mut conn, orders).await
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
        let rows = sqlx::query(CLAIM_SQL)
            .bind(manager)
            .bind(owner)
            .bind(now)
            .bind(until)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await
            .map_err(backend)?;
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
        let deleted = sqlx::query(FINISH_DELETE_SQL)
            .bind(&item.manager)
            .bind(&item.stream_id)
            .bind(&item.owner)
            .bind(item.claimed_until)
            .bind(item.version)
            .execute(self.pool())
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
            .bind(item.claimed_until)
            .execute(self.pool())
            .await
            .map_err(backend)?
            .rows_affected();
        if released == 0 {
            warn_claim_lost("finish", item);
        }
        Ok(())
    }

    async fn reschedule(
        &self,
        item: &WorkItem,
        due_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        check_item(item)?;
        let updated = sqlx::query(RESCHEDULE_SQL)
            .bind(&item.manager)
            .bind(&item.stream_id)
            .bind(&item.owner)
            .bind(item.claimed_until)
            .bind(item.version)
            .bind(to_micros(due_at))
            .bind(storable_error(error))
            .execute(self.pool())
            .await
            .map_err(backend)?
            .rows_affected();
        if updated == 0 {
            warn_claim_lost("reschedule", item);
        }
        Ok(())
    }

    async fn pending(&self, manager: &str) -> Result<Vec<WorkItem>, StoreError> {
        check_manager(manager)?;
        let rows = sqlx::query(PENDING_SQL)
            .bind(manager)
            .fetch_all(self.pool())
            .await
            .map_err(backend)?;
        rows.iter().map(decode_item).collect()
    }
}
