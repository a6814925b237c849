//! The SQLite event store: the embedded default backend (one file, one
//! writer).
//!
//! **Guarantees:**
//! - Every write in a process goes through one connection, in `begin
//!   immediate` transactions; SQLite's file lock queues writers from other
//!   processes behind it (for up to [`BUSY_TIMEOUT`]). So at most one
//!   transaction can hold new global positions at any moment, and
//!   `global_position` order is commit order.
//! - An append (or an `append_many` batch) is one transaction: its events,
//!   their hash-chain links and the stream heads commit together or not at
//!   all.
//! - `payload`, `metadata` and `recorded_at` (integer microseconds) are read
//!   back exactly as they were hashed.
//!
//! Architecture Invariant: reads never go through the writer, so a long read
//! never delays an append, and an append held open (see
//! [`ledger_store::conformance::HeldAppend`]) never blocks readers: in WAL
//! mode they keep reading the last committed snapshot.

mod append;
mod baseline_batch;
mod events_read;
mod fault;
mod idempotency;
mod query;
mod readmodel;
mod row;
mod webhook_log;
mod work;

pub use readmodel::{SHADOW_WRITER_CACHE_KIB, WRITER_CACHE_KIB};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ledger_store::recorded_now;

use async_trait::async_trait;
use ledger_core::ids::StreamId;
use ledger_core::{Checkpoint, ExpectedVersion, NewEvent, RecordedEvent};
use ledger_store::{AppendResult, EventStore, StoreError, StreamAppend, validate_events};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

/// Tests only: makes the database refuse every `hyperswitch_webhook_log`
/// row (a trigger), for the cases that show a failing log row costs nothing
/// it must not.
#[doc(hidden)]
pub const REFUSE_WEBHOOK_LOG_ROWS_SQL: &str = "create trigger refuse_log before insert on hyperswitch_webhook_log \
     begin select raise(abort, 'the test refuses log rows'); end";

/// How long a write waits for another process's write lock before failing
/// with a (transient) backend error. Appends hold the lock for milliseconds;
/// seconds of waiting means something is stuck, not busy.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections for reads. Reads run concurrently with each other and with the
/// writer (WAL); more than a handful only adds memory.
pub const READ_POOL_SIZE: u32 = 8;

/// How long an append queues for this process's writer connection. Longer
/// than [`BUSY_TIMEOUT`] because in-process appends queue here in turn, and
/// every one ahead may itself wait on another process.
pub const WRITE_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a read waits for a free reader connection.
pub const READ_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// The statement that opens every write transaction. `immediate` takes the
/// write lock up front, so a writer in another process waits on the busy
/// timeout; a deferred transaction that read first would instead fail with
/// `SQLITE_BUSY` when upgrading to write in WAL mode.
const BEGIN_WRITE: &str = "begin immediate";

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The SQLite event store. Cloning shares the same pools.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: in-process writers queue here, first come
    /// first served.
    writer: SqlitePool,
    /// Read-only (`query_only`) connections.
    reader: SqlitePool,
    /// Event reads ([`events_read`]): `query_only` connections of their own.
    events: Arc<events_read::EventReader>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, and its parent
    /// directories. Does not apply migrations; call [`SqliteStore::migrate`].
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                StoreError::Backend(format!("cannot create directory {}: {e}", parent.display()))
            })?;
        }
        let common = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Full);

        // The writer opens first: it creates the file and switches it to WAL,
        // which is persistent, so readers opened after it use WAL too.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(WRITE_QUEUE_TIMEOUT)
            // A local file cannot go stale like a socket; a ping per append
            // would only add a round trip to the connection's thread.
            .test_before_acquire(false)
            // Keep the one connection (and its prepared statements) for the
            // life of the store.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                common
                    .clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .map_err(backend)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_POOL_SIZE)
            .acquire_timeout(READ_QUEUE_TIMEOUT)
            .test_before_acquire(false)
            // Writes through a reader would bypass the single-writer rule.
            .connect_with(common.pragma("query_only", "on"))
            .await
            .map_err(backend)?;
        Ok(SqliteStore {
            writer,
            reader,
            events: events_read::EventReader::new(path),
        })
    }

    /// Opens `sqlite://path`, `sqlite:path` or a plain path. Query parameters
    /// are ignored: the store sets its own pragmas. In-memory databases are
    /// refused, since the reader and writer pools would each get their own.
    pub async fn open_url(url: &str) -> Result<SqliteStore, StoreError> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let path = rest.split('?').next().unwrap_or(rest);
        if path.is_empty() || path == ":memory:" {
            return Err(StoreError::Backend(format!(
                "{url:?} names no file; the event store needs a durable SQLite file such as sqlite://./data/ledger.db"
            )));
        }
        SqliteStore::open(Path::new(path)).await
    }

    /// Applies pending migrations from `migrations/sqlite`. Safe to run again
    /// and from several processes at once: it runs inside one write
    /// transaction, so a second migrator waits and then finds nothing to do.
    /// (So a migration cannot use `-- no-transaction` or toggle
    /// `foreign_keys`; both need to run outside a transaction.)
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        MIGRATOR
            .run(&mut *tx)
            .await
            .map_err(|e| StoreError::Backend(format!("applying migrations: {e}")))?;
        tx.commit().await.map_err(backend)
    }

    /// Closes both pools, waiting for in-flight work; the last connection to
    /// close checkpoints the WAL into the main file.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
        self.events.close().await;
    }

    /// The writer pool (one connection). Write through
    /// [`SqliteStore::begin_write`] so the single-writer rule holds.
    pub fn pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// The read-only pool, for queries.
    pub fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Takes the writer and opens a `begin immediate` transaction on it:
    /// for writes that must commit atomically with other state (projection
    /// rows and their checkpoint, say).
    pub async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer.begin_with(BEGIN_WRITE).await.map_err(backend)
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        validate_events(events)?;
        let recorded_at = recorded_now();
        let mut tx = self.begin_write().await?;
        let outcome = append::append_in(&mut tx, stream, expected, events, recorded_at).await;
        finish(tx, outcome).await
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
        // Versions beyond i64 cannot be stored, so nothing lies past them.
        let Ok(from_version) = i64::try_from(from_version) else {
            return Ok(Vec::new());
        };
        self.events
            .read_stream(stream, from_version, max_count)
            .await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let version: Option<i64> =
            sqlx::query_scalar("select version from stream where stream_id = ?1")
                .bind(stream.as_str())
                .fetch_optional(&self.reader)
                .await
                .map_err(backend)?;
        version
            .map(|v| {
                u64::try_from(v).map_err(|_| StoreError::Corrupt {
                    stream: stream.to_string(),
                    version: 0,
                    reason: format!("stream head version {v} is negative"),
                })
            })
            .transpose()
    }

    /// Why a plain position filter is gap-safe here: a transaction takes the
    /// write lock (`begin immediate`) before it is handed any position, and
    /// holds it until it commits or rolls back. So while positions up to `p`
    /// are uncommitted no other transaction can be handed `p + 1`, and any
    /// snapshot that shows a position shows every lower committed one. A
    /// rolled-back transaction's positions are never observed either: the
    /// `autoincrement` counter lives in `sqlite_sequence`, written in the
    /// same transaction, so the rollback rewinds it and the next writer is
    /// handed the same numbers — which no reader ever saw. `commit` is 0 in
    /// every returned checkpoint and ignored in `after`.
    async fn read_all(
        &self,
        after: Checkpoint,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let Ok(after) = i64::try_from(after.position) else {
            return Ok(Vec::new());
        };
        self.events.read_all(after, max_count).await
    }
}

/// Commits `tx` if `outcome` is a success, rolls it back otherwise.
async fn finish<T>(
    tx: Transaction<'static, Sqlite>,
    outcome: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match outcome {
        Ok(value) => {
            tx.commit().await.map_err(backend)?;
            Ok(value)
        }
        Err(e) => {
            // The append's own error is the one worth reporting; a failed
            // rollback still ends the transaction when the connection resets.
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rollback after a failed append failed");
            }
            Err(e)
        }
    }
}

/// A version as the `integer` column stores it. Past `i64::MAX` the stream
/// is full; no append gets near it.
fn to_version_param(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| {
        StoreError::Backend(format!("stream version {version} exceeds the column range"))
    })
}

/// Maps a driver error to the store's transient error. SQLite messages name
/// the failure (locked, IO, full disk), never a credential.
fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}
