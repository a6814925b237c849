//! The Postgres event store.
//!
//! **Guarantees:**
//! - A successful append is one prepared plain-SQL statement, hence one
//!   round trip and atomic on its own: it finds the stream's head (its last
//!   event), checks ids and the expected version, assigns versions and
//!   extends the hash chain in SQL. A standalone `NoStream` append is a
//!   plain insert of versions `1..=n` (chained from the genesis hash in
//!   Rust). An append that writes nothing (wrong version, ids already there)
//!   takes a second round trip to say why. See `append.rs`.
//! - Appends to one stream serialise on the `event_pk` unique index: of two
//!   appends that read the same head, the second waits for the first and
//!   then fails with a unique violation; it is re-run against the new head
//!   (bounded by `APPEND_ATTEMPTS_MAX`), so `expected` and the id check are
//!   always judged against committed state. Different streams never wait on
//!   each other.
//! - The chain extended in SQL is exactly [`ledger_core::hash::chain`] over
//!   [`ledger_core::hash::content_digest`], which Rust computes before the
//!   call (it does not depend on the version).
//! - [`EventStore::read_all`] never returns a position while a lower one may
//!   still commit: it reads only rows written by transactions older than the
//!   oldest one still running (`pg_snapshot_xmin`), in `(transaction_id,
//!   global_position)` order.
//!
//! **Throughput** (`ledger bench append --store postgres --writers 8
//! --duration 10`: single events onto new streams, beside a raw single-row
//! insert into a plain table through the same pool). Ten paired runs on a
//! shared, busy 2-core machine: the former `ledger_append` call reached
//! 0.55–0.72× the baseline (median 0.60×); this path 0.72–0.93× (median
//! 0.89×), of which the plain statements alone gave ~0.80× and dropping the
//! `(stream_id, event_id)` index the rest. What is left is server work the
//! raw table does not do: two index entries (`event_pk`, random; the
//! transaction-order index) instead of one, and three check constraints,
//! whose expressions Postgres re-reads for every insert statement (~20 µs
//! of ~210 µs server CPU per append, against ~165 µs for the raw insert).
//!
//! **Why no stream-head table:** a per-stream head row (locked `for update`,
//! inserted for new streams, updated per append) cost a row lock, an update
//! and for new streams a second insert per append; measured at 8 writers it
//! halved append throughput against a raw single-row insert. The event
//! table's own primary key gives the same serialisation for free.
//!
//! **Stall mode:** that horizon is cluster-wide. Any transaction that holds an
//! xid and stays open (in any schema or database of the cluster) holds back
//! every `read_all` reader until it ends; writers are unaffected. Every pooled
//! connection therefore sets `idle_in_transaction_session_timeout`
//! ([`IDLE_IN_TRANSACTION_TIMEOUT`]), so a forgotten open transaction stalls
//! readers for at most that long instead of forever.

mod append;
#[cfg(test)]
mod append_tests;
mod baseline_batch;
mod conformance;
mod error;
mod idempotency;
mod query;
mod readmodel;
#[doc(hidden)]
pub use readmodel::HEAD_POSITION_SQL;
mod row;
mod webhook_log;
mod work;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use ledger_core::ids::StreamId;
use ledger_core::{Checkpoint, ExpectedVersion, NewEvent, RecordedEvent};
use ledger_store::{
    AppendResult, EventStore, READ_BATCH_MAX, StoreError, StreamAppend, validate_events,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::append::{append_parts, append_standalone, with_retries};
use crate::error::{AttemptError, backend, backend_redacted};
use ledger_store::recorded_now;
use ledger_store::webhook_log::{
    LoggedAppendStore, RESULT_OK, WebhookLogEntry, check_logged_append, storable_text,
};
use sqlx::Row;

/// Tests only: makes the database refuse every `hyperswitch_webhook_log`
/// row (a trigger), for the cases that show a failing log row costs nothing
/// it must not.
#[doc(hidden)]
pub const REFUSE_WEBHOOK_LOG_ROWS_SQL: &str = "create function refuse_log() returns trigger language plpgsql as \
     $$ begin raise exception 'the test refuses log rows'; end $$; \
     create trigger refuse_log before insert on hyperswitch_webhook_log \
     for each row execute function refuse_log()";

/// Most connections one store opens. Appends hold a connection for one round
/// trip, so a handful saturates a Postgres server's commit rate; more would
/// only eat into the server's `max_connections` (100 by default).
pub const POOL_CONNECTIONS_MAX: u32 = 16;

/// Longest wait for a pooled connection (or to open the first one) before an
/// operation fails as [`StoreError::Backend`]. Long enough to ride out a
/// burst, short enough that an API request fails rather than hangs.
pub const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Server-side limit on a session sitting idle inside an open transaction.
/// An open transaction holds back `pg_snapshot_xmin`, which stalls every
/// `read_all` reader (the stall mode); this bounds the stall a leaked or
/// forgotten transaction can cause. Appends never idle inside a transaction.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// `options` with a session `statement_timeout` (whole milliseconds, at
/// least 1: Postgres reads 0 as "no limit").
fn with_statement_timeout(options: PgConnectOptions, timeout: Duration) -> PgConnectOptions {
    let millis = timeout.as_millis().max(1);
    options.options([("statement_timeout", format!("{millis}ms"))])
}

/// The Postgres [`EventStore`]. Cloning shares the pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Opens a pool to `url` (`postgres://user:pass@host:port/db`) and checks
    /// that one connection works. Errors never contain the password.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| backend_redacted(e, url))?;
        PgStore::connect_with(options)
            .await
            .map_err(|e| redact_store_error(e, url))
    }

    /// Opens a pool with explicit connect options (e.g. a `search_path`),
    /// adding the store's own session settings.
    pub async fn connect_with(options: PgConnectOptions) -> Result<PgStore, StoreError> {
        let options = options.options([(
            "idle_in_transaction_session_timeout",
            format!("{}ms", IDLE_IN_TRANSACTION_TIMEOUT.as_millis()),
        )]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
            // The default pings every connection on every acquire: a second
            // round trip per append. A dead connection instead fails its
            // statement with a transient `Backend` error and is discarded.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(backend)?;
        Ok(PgStore::from_pool(pool))
    }

    /// Opens a read pool to `url`: [`PgStore::connect`] with Postgres
    /// cancelling any statement that runs longer than `statement_timeout`
    /// (SQLSTATE 57014), so a runaway query on a query endpoint cannot hold
    /// a connection. For reads only: the writer keeps no such limit.
    pub async fn connect_reads(
        url: &str,
        statement_timeout: Duration,
    ) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| backend_redacted(e, url))?;
        PgStore::connect_with(with_statement_timeout(options, statement_timeout))
            .await
            .map_err(|e| redact_store_error(e, url))
    }

    /// A second pool to this store's database for reads, with
    /// `statement_timeout` on every connection (see
    /// [`PgStore::connect_reads`]). This pool is untouched.
    pub async fn read_pool(&self, statement_timeout: Duration) -> Result<PgStore, StoreError> {
        let options = (*self.pool.connect_options()).clone();
        PgStore::connect_with(with_statement_timeout(options, statement_timeout)).await
    }

    /// Wraps an existing pool. The caller owns its settings; it should set
    /// `idle_in_transaction_session_timeout` (see [`IDLE_IN_TRANSACTION_TIMEOUT`])
    /// and disable `test_before_acquire` to keep appends to one round trip.
    pub fn from_pool(pool: PgPool) -> PgStore {
        PgStore { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations from `migrations/postgres`. Safe to run
    /// repeatedly and from several processes (sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migration failed: {e}")))
    }

    /// One attempt at an `append_many` transaction, parts run in `order`;
    /// `logs` (webhook-log rows) are written in the same transaction, after
    /// the parts.
    async fn append_many_once(
        &self,
        batch: &[StreamAppend],
        order: &[usize],
        logs: &[WebhookLogEntry],
        recorded_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(Vec<AppendResult>, Vec<i64>), AttemptError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let results = match append_parts(&mut tx, batch, order, recorded_at).await {
            Ok(results) => results,
            Err(err) => {
                // Best effort: dropping the transaction rolls back too.
                let _ = tx.rollback().await;
                return Err(err);
            }
        };
        let ids = match webhook_log::insert_logs_with(&mut tx, logs).await {
            Ok(ids) => ids,
            Err(err) => {
                let _ = tx.rollback().await;
                return Err(AttemptError::Failed(err));
            }
        };
        tx.commit().await.map_err(backend)?;
        Ok((results, ids))
    }

    /// `append_many` with webhook-log rows in the same transaction (see
    /// [`LoggedAppendStore`]).
    async fn append_many_and_log(
        &self,
        batch: &[StreamAppend],
        logs: &[WebhookLogEntry],
    ) -> Result<(Vec<AppendResult>, Vec<i64>), StoreError> {
        check_logged_append(batch, logs)?;
        let recorded_at = recorded_now();
        if let ([part], []) = (batch, logs) {
            // One statement is already atomic: skip begin/commit.
            let result = append_standalone(
                &self.pool,
                &part.stream,
                part.expected,
                &part.events,
                recorded_at,
            )
            .await?;
            return Ok((vec![result], Vec::new()));
        }
        // Lock streams in one global order so two batches touching the same
        // streams queue instead of deadlocking.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|a, b| batch[*a].stream.cmp(&batch[*b].stream));
        with_retries(|| self.append_many_once(batch, &order, logs, recorded_at)).await
    }
}

#[async_trait]
impl LoggedAppendStore for PgStore {
    async fn append_many_logged(
        &self,
        batch: &[StreamAppend],
        entries: &[WebhookLogEntry],
    ) -> Result<(Vec<AppendResult>, Vec<i64>), StoreError> {
        self.append_many_and_log(batch, entries).await
    }

    async fn read_stream_unless_processed(
        &self,
        event_id: &str,
        stream: &StreamId,
        max_count: u32,
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let rows = sqlx::query(READ_STREAM_UNLESS_PROCESSED_SQL)
            .bind(storable_text(event_id).as_ref())
            .bind(RESULT_OK)
            .bind(stream.as_str())
            .bind(page_limit(max_count))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let processed = match rows.first() {
            Some(row) => row.try_get::<bool, _>("processed").map_err(backend)?,
            None => {
                return Err(StoreError::Backend(
                    "the dedupe-and-read statement returned no row".to_owned(),
                ));
            }
        };
        if processed {
            return Ok(None);
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            // The one row of a stream with no events carries no event.
            if row
                .try_get::<Option<i64>, _>("global_position")
                .map_err(backend)?
                .is_some()
            {
                events.push(row::decode_event(row)?);
            }
        }
        Ok(Some(events))
    }
}

/// `connect` knows the URL, so it can make sure no message repeats its
/// password, whatever the driver put in it.
fn redact_store_error(err: StoreError, url: &str) -> StoreError {
    match err {
        StoreError::Backend(message) => StoreError::Backend(error::redact(&message, url)),
        other => other,
    }
}

/// Columns of a [`RecordedEvent`], in the order `row::decode_event` reads
/// them by name. `commit_id` is the xid8 as a bigint (xid8 has no binary
/// decoder in sqlx; its text form is the plain number).
macro_rules! event_columns {
    () => {
        "e.global_position, e.transaction_id::text::bigint as commit_id, e.stream_id, \
         e.stream_version, e.event_id, e.event_type, e.schema_version, e.payload, \
         e.metadata, e.recorded_at, e.prev_hash, e.hash"
    };
}

const READ_STREAM_SQL: &str = concat!(
    "select ",
    event_columns!(),
    " from event e where e.stream_id = $1 and e.stream_version >= $2 \
     order by e.stream_version limit $3"
);

/// A webhook delivery's dedupe ([`webhook_log`]'s `PROCESSED_SQL`: `$1`
/// event id, `$2` the `ok` result) beside its stream's first page (`$3`,
/// `$4` as [`READ_STREAM_SQL`]'s `$1`, `$3`): at least one row, `processed`
/// on each, the event columns null when the stream has no events.
const READ_STREAM_UNLESS_PROCESSED_SQL: &str = concat!(
    "select d.processed, s.* from (select exists (select 1 from hyperswitch_webhook_log \
         where event_id = $1 and processing_result = $2) as processed) d \
     left join lateral (select ",
    event_columns!(),
    " from event e where not d.processed and e.stream_id = $3 \
         order by e.stream_version limit $4) s on true \
     order by s.stream_version"
);

/// Gap-safe global read. Rows of transactions still running (or younger than
/// the oldest one running) are left for a later read, so a reader never moves
/// its checkpoint past a position that could still appear below it. Ordering
/// by the table columns (qualified, so not by the `commit_id` alias) lets the
/// `event_transaction_position_ix` index serve both filter and order.
#[doc(hidden)] // Public only so a test can `explain` it.
pub const READ_ALL_SQL: &str = concat!(
    "select ",
    event_columns!(),
    " from event e \
     where (e.transaction_id, e.global_position) > ($1::text::xid8, $2) \
       and e.transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
     order by e.transaction_id, e.global_position limit $3"
);

/// The stream's last event is its head: one backward probe of `event_pk`.
const STREAM_VERSION_SQL: &str = "select max(e.stream_version) from event e where e.stream_id = $1";

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn page_limit(max_count: u32) -> i64 {
    i64::from(max_count.min(READ_BATCH_MAX))
}

#[async_trait]
impl EventStore for PgStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        validate_events(events)?;
        append_standalone(&self.pool, stream, expected, events, recorded_now()).await
    }

    async fn append_many(&self, batch: &[StreamAppend]) -> Result<Vec<AppendResult>, StoreError> {
        Ok(self.append_many_and_log(batch, &[]).await?.0)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(READ_STREAM_SQL)
            .bind(stream.as_str())
            .bind(clamp_i64(from_version))
            .bind(page_limit(max_count))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(row::decode_event).collect()
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let version: Option<i64> = sqlx::query_scalar(STREAM_VERSION_SQL)
            .bind(stream.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        version
            .map(|v| {
                u64::try_from(v).map_err(|_| StoreError::Corrupt {
                    stream: stream.as_str().to_owned(),
                    version: 0,
                    reason: format!("stream's last version is negative ({v})"),
                })
            })
            .transpose()
    }

    async fn read_all(
        &self,
        after: Checkpoint,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(READ_ALL_SQL)
            .bind(after.commit.to_string())
            .bind(clamp_i64(after.position))
            .bind(page_limit(max_count))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(row::decode_event).collect()
    }
}
