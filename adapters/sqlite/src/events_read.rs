//! Event reads (`read_all`, `read_stream`) on `rusqlite` connections of
//! their own, in blocking tasks.
//!
//! Why not the sqlx reader pool: sqlx-sqlite copies every column of every
//! row into an owned value (`sqlite3_value_dup`) on its connection thread,
//! hands the row across a channel, and decoding copies each text again.
//! Events are the largest rows the ledger reads, and the projectors,
//! `verify`, `export` and a rebuild read all of them: on a 1M-event file
//! (`/tmp` scratch, 2 cores) the feed read alone took 9.0–9.7 s through
//! sqlx and 2.4–3.2 s through `rusqlite`, which reads each column in
//! place once. Same file, same statement, same pages.
//!
//! Both drivers link the one `libsqlite3-sys` (one SQLite library in the
//! process), so the two share SQLite's file locks and WAL index exactly as
//! two connections of one driver would. These connections are `query_only`,
//! like the sqlx readers: the single-writer rule of the crate holds.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::DateTime;
use ledger_core::RecordedEvent;
use ledger_core::ids::{EventId, StreamId};
use ledger_store::{READ_BATCH_MAX, StoreError};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, Row};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::row::{corrupt, hash_of};
use crate::{BUSY_TIMEOUT, READ_POOL_SIZE, READ_QUEUE_TIMEOUT};

/// An event read: the columns [`decode`] takes, in its order, then `$tail`.
/// `?1` is the position or version to start from, `?2` the limit, `?3` the
/// stream (if any). Built at compile time: reads are on every command's
/// path.
macro_rules! select_events {
    ($tail:literal) => {
        concat!(
            "select global_position, stream_id, stream_version, event_id, event_type, \
             schema_version, payload, metadata, recorded_at, prev_hash, hash from event ",
            $tail
        )
    };
}

const READ_ALL_SQL: &str =
    select_events!("where global_position > ?1 order by global_position limit ?2");

const READ_STREAM_SQL: &str = select_events!(
    "where stream_id = ?3 and stream_version >= ?1 order by stream_version limit ?2"
);

/// Up to [`READ_POOL_SIZE`] event reads at once, each on a connection of
/// its own (kept for the next read once done).
#[derive(Debug)]
pub(crate) struct EventReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl EventReader {
    pub(crate) fn new(path: &Path) -> Arc<EventReader> {
        Arc::new(EventReader {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(READ_POOL_SIZE as usize)),
        })
    }

    /// Events after global position `after`, in position order (see
    /// `read_all` on the store for why that is gap-safe here).
    pub(crate) async fn read_all(
        self: &Arc<Self>,
        after: i64,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(READ_ALL_SQL, None, after, max_count).await
    }

    /// `stream`'s events from `from_version` on, in version order.
    pub(crate) async fn read_stream(
        self: &Arc<Self>,
        stream: &StreamId,
        from_version: i64,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(
            READ_STREAM_SQL,
            Some(stream.as_str().to_owned()),
            from_version,
            max_count,
        )
        .await
    }

    async fn read(
        self: &Arc<Self>,
        sql: &'static str,
        stream: Option<String>,
        from: i64,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // Owned, and moved into the blocking task: a caller that gives up
        // waiting does not free the permit of a read still running.
        let permit = tokio::time::timeout(
            READ_QUEUE_TIMEOUT,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        .map_err(|_| {
            StoreError::Backend(format!(
                "no event reader free within {READ_QUEUE_TIMEOUT:?}"
            ))
        })?
        .map_err(|_| StoreError::Backend("the event store is closed".to_owned()))?;
        let this = Arc::clone(self);
        let limit = i64::from(max_count.min(READ_BATCH_MAX));
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = this.take()?;
            let events = select(&conn, sql, stream.as_deref(), from, limit);
            // A connection whose read failed may be in any state: drop it.
            if events.is_ok() {
                this.give_back(conn);
            }
            events
        })
        .await
        .map_err(|e| StoreError::Backend(format!("event read task: {e}")))?
    }

    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => open(&self.path),
        }
    }

    fn give_back(&self, conn: Connection) {
        if self.permits.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < READ_POOL_SIZE as usize
        {
            idle.push(conn);
        }
    }

    /// Waits for the reads running, then closes every connection; later
    /// reads fail with [`StoreError::Backend`] (as the sqlx pools do once
    /// closed).
    pub(crate) async fn close(&self) {
        // Every permit: no read is running once they are all held.
        let all = self.permits.acquire_many(READ_POOL_SIZE).await;
        self.permits.close();
        drop(all);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A reader on the existing file (the writer creates it and sets WAL mode,
/// which is persistent), with the crate's busy timeout, `query_only`.
fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(backend)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    conn.pragma_update(None, "query_only", "on")
        .map_err(backend)?;
    Ok(conn)
}

fn select(
    conn: &Connection,
    sql: &str,
    stream: Option<&str>,
    from: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let mut rows = match stream {
        None => stmt.query((from, limit)),
        Some(s) => stmt.query((from, limit, s)),
    }
    .map_err(backend)?;
    // A stream read is usually a handful of events: reserve for a modest
    // page, and let a feed page grow from there.
    let mut events = Vec::with_capacity(usize::try_from(limit).unwrap_or(0).min(1024));
    while let Some(row) = rows.next().map_err(backend)? {
        events.push(decode(row)?);
    }
    Ok(events)
}

/// The text of column `i`, borrowed from the row.
fn text<'r>(row: &'r Row<'_>, i: usize) -> Result<&'r str, String> {
    match row.get_ref(i).map_err(|e| e.to_string())? {
        ValueRef::Text(bytes) => {
            std::str::from_utf8(bytes).map_err(|e| format!("column {i} is not UTF-8: {e}"))
        }
        other => Err(format!("column {i} is {:?}, not text", other.data_type())),
    }
}

fn int(row: &Row<'_>, i: usize) -> Result<i64, String> {
    match row.get_ref(i).map_err(|e| e.to_string())? {
        ValueRef::Integer(v) => Ok(v),
        other => Err(format!(
            "column {i} is {:?}, not an integer",
            other.data_type()
        )),
    }
}

fn blob<'r>(row: &'r Row<'_>, i: usize) -> Result<&'r [u8], String> {
    match row.get_ref(i).map_err(|e| e.to_string())? {
        ValueRef::Blob(bytes) => Ok(bytes),
        other => Err(format!("column {i} is {:?}, not a blob", other.data_type())),
    }
}

/// Decodes a row of [`select_events`]. Anything unreadable is
/// [`StoreError::Corrupt`], naming the stream and version when those are
/// themselves readable.
fn decode(row: &Row<'_>) -> Result<RecordedEvent, StoreError> {
    // Read the identity first so every later failure can name it.
    let stream_text = text(row, 1).map_err(|e| corrupt("<unreadable>", 0, e))?;
    let version = int(row, 2).map_err(|e| corrupt(stream_text, 0, e))?;
    let stream_version = u64::try_from(version).map_err(|_| {
        corrupt(
            stream_text,
            0,
            format!("stream_version {version} is negative"),
        )
    })?;
    let fail = |reason: String| corrupt(stream_text, stream_version, reason);

    let stream_id = StreamId::new(stream_text.to_owned()).map_err(|e| fail(e.to_string()))?;
    let position = int(row, 0).map_err(fail)?;
    let global_position = u64::try_from(position)
        .map_err(|_| fail(format!("global_position {position} is negative")))?;
    let event_id_text = text(row, 3).map_err(fail)?;
    let event_id = Uuid::parse_str(event_id_text)
        .map(EventId)
        .map_err(|e| fail(format!("event_id {event_id_text:?}: {e}")))?;
    let schema = int(row, 5).map_err(fail)?;
    let schema_version = u32::try_from(schema)
        .map_err(|_| fail(format!("schema_version {schema} is out of range")))?;
    let micros = int(row, 8).map_err(fail)?;
    let recorded_at = DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| fail(format!("recorded_at {micros} is out of range")))?;
    let prev_hash = hash_of(blob(row, 9).map_err(fail)?)
        .map_err(|n| fail(format!("prev_hash is {n} bytes")))?;
    let hash =
        hash_of(blob(row, 10).map_err(fail)?).map_err(|n| fail(format!("hash is {n} bytes")))?;

    Ok(RecordedEvent {
        global_position,
        // A single writer makes position order commit order (see `read_all`).
        commit: 0,
        stream_id,
        stream_version,
        event_id,
        event_type: text(row, 4).map_err(fail)?.to_owned(),
        schema_version,
        payload: text(row, 6).map_err(fail)?.to_owned(),
        metadata: text(row, 7).map_err(fail)?.to_owned(),
        recorded_at,
        prev_hash,
        hash,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn event_readers_are_query_only_with_the_busy_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let store = crate::SqliteStore::open(&path).await.unwrap();
        store.migrate().await.unwrap();
        let conn = open(&path).unwrap();
        let busy: i64 = conn
            .query_row("pragma busy_timeout", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, i64::try_from(BUSY_TIMEOUT.as_millis()).unwrap());
        let mode: String = conn
            .query_row("pragma journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let err = conn.execute("delete from event", []).unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
        store.close().await;
    }

    #[test]
    fn a_missing_file_is_not_created_by_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.db");
        assert!(open(&path).is_err());
        assert!(!path.exists());
    }
}
