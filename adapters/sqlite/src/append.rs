//! The body of an append, run inside a write transaction the caller owns.
//!
//! Two statements per append besides `begin` and `commit`: one reads the
//! stream head together with any stored events that carry the batch's ids;
//! one inserts the rows (per [`INSERT_ROWS_MAX`] events), and the
//! `event_advance_stream` trigger moves the head within it. Each SQL text is
//! fixed for a given row count, so the driver's per-connection statement
//! cache prepares it once.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use ledger_core::hash::{self, ContentFields, GENESIS, Hash};
use ledger_core::ids::StreamId;
use ledger_core::{ExpectedVersion, NewEvent};
use ledger_store::{AppendResult, StoreError, classify_reappend, expected_holds};
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Row};

use crate::row::{corrupt, hash_of};
use crate::{backend, to_version_param};

/// Rows per `insert` statement: 8 parameters each plus 2 shared, far below
/// SQLite's parameter limit, and few enough distinct statement texts (one
/// per row count) to stay in the statement cache.
const INSERT_ROWS_MAX: usize = 64;

/// Parameters bound per inserted row, after the shared `?1` (stream id) and
/// `?2` (recorded_at).
const ROW_PARAMS: usize = 8;

/// One event ready to insert: its version and chain link.
struct Link {
    version: u64,
    prev_hash: Hash,
    hash: Hash,
}

/// The stream's head as stored: its version and the hash to link to next.
struct Head {
    version: u64,
    last_hash: Hash,
}

/// What a batch's ids already are in the stream: the input of
/// [`classify_reappend`].
type Existing = Vec<Option<(u64, u64, String, String)>>;

pub(crate) async fn append_in(
    conn: &mut SqliteConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    recorded_at: DateTime<Utc>,
) -> Result<AppendResult, StoreError> {
    let head = read_head_and_ids(conn, stream, events).await?;

    // Idempotency comes before the version check: a retried append whose
    // events are all stored succeeds whatever it expected.
    let head = match head {
        Some((head, existing)) => match classify_reappend(stream, events, &existing)? {
            Some(result) => return Ok(result),
            None => Some(head),
        },
        None => None,
    };

    let actual = head.as_ref().map(|h| h.version);
    if !expected_holds(expected, actual) {
        return Err(StoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual,
        });
    }

    let mut prev = head.map_or(GENESIS, |h| h.last_hash);
    let first_version = actual.unwrap_or(0) + 1;
    let links: Vec<Link> = events
        .iter()
        .zip(first_version..)
        .map(|(event, version)| {
            let content = hash::content_digest(&ContentFields {
                stream_id: stream,
                event_id: event.event_id,
                event_type: &event.event_type,
                schema_version: event.schema_version,
                payload: &event.payload,
                metadata: &event.metadata,
                recorded_at,
            });
            let link = Link {
                version,
                prev_hash: prev,
                hash: hash::chain(&prev, version, &content),
            };
            prev = link.hash;
            link
        })
        .collect();

    let mut positions = Vec::with_capacity(events.len());
    for (chunk_events, chunk_links) in events
        .chunks(INSERT_ROWS_MAX)
        .zip(links.chunks(INSERT_ROWS_MAX))
    {
        let mut insert = sqlx::query(AssertSqlSafe(insert_sql(chunk_events.len())))
            .bind(stream.as_str())
            .bind(recorded_at.timestamp_micros());
        for (event, link) in chunk_events.iter().zip(chunk_links) {
            insert = insert
                .bind(to_version_param(link.version)?)
                .bind(event.event_id.0.hyphenated().to_string())
                .bind(event.event_type.as_str())
                .bind(i64::from(event.schema_version))
                .bind(event.payload.as_str())
                .bind(event.metadata.as_str())
                .bind(&link.prev_hash[..])
                .bind(&link.hash[..]);
        }
        let mut returned = insert
            .fetch_all(&mut *conn)
            .await
            .map_err(backend)?
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>(1)?, row.try_get::<i64, _>(0)?)))
            .collect::<Result<Vec<(i64, i64)>, sqlx::Error>>()
            .map_err(backend)?;
        // `returning` order is unspecified; versions put them in batch order.
        returned.sort_unstable();
        if returned.len() != chunk_events.len() {
            return Err(StoreError::Backend(format!(
                "insert returned {} rows for {} events",
                returned.len(),
                chunk_events.len()
            )));
        }
        for (_, position) in returned {
            positions.push(u64::try_from(position).map_err(|_| {
                StoreError::Backend(format!(
                    "insert returned negative global_position {position}"
                ))
            })?);
        }
    }

    Ok(AppendResult {
        first_version,
        last_version: first_version + events.len() as u64 - 1,
        positions,
        already_existed: false,
    })
}

/// The stream's head, and for each event in order the stored `(version,
/// position, type, payload)` of the same id in the stream, if any. `None`
/// when the stream has no head, which means it has no events (the foreign
/// key guarantees it). One statement whatever the batch size: the ids travel
/// as one JSON array (hyphenated UUIDs need no escaping).
async fn read_head_and_ids(
    conn: &mut SqliteConnection,
    stream: &StreamId,
    events: &[NewEvent],
) -> Result<Option<(Head, Existing)>, StoreError> {
    let mut ids = String::with_capacity(events.len() * 39 + 2);
    ids.push('[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            ids.push(',');
        }
        ids.push('"');
        ids.push_str(&event.event_id.0.hyphenated().to_string());
        ids.push('"');
    }
    ids.push(']');

    // One row per stored match, or one row with null event columns when
    // none matches; no row when the stream has no head.
    let rows = sqlx::query(
        "select s.version, s.last_hash, \
                e.event_id, e.stream_version, e.global_position, e.event_type, e.payload \
         from stream s \
         left join event e \
           on e.stream_id = s.stream_id and e.event_id in (select value from json_each(?2)) \
         where s.stream_id = ?1",
    )
    .bind(stream.as_str())
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(backend)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };

    let name = stream.as_str();
    let version: i64 = first.try_get(0).map_err(|e| corrupt(name, 0, e))?;
    let version = u64::try_from(version)
        .map_err(|_| corrupt(name, 0, format!("head version {version} is negative")))?;
    let last_hash = hash_of(
        first
            .try_get::<&[u8], _>(1)
            .map_err(|e| corrupt(name, version, e))?,
    )
    .map_err(|n| corrupt(name, version, format!("head last_hash is {n} bytes")))?;

    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        let Some(event_id) = row
            .try_get::<Option<String>, _>(2)
            .map_err(|e| corrupt(name, 0, e))?
        else {
            continue;
        };
        let stored: i64 = row.try_get(3).map_err(|e| corrupt(name, 0, e))?;
        let stored = u64::try_from(stored)
            .map_err(|_| corrupt(name, 0, format!("stream_version {stored} is negative")))?;
        let read = |e: sqlx::Error| corrupt(name, stored, e);
        let position: i64 = row.try_get(4).map_err(read)?;
        let position = u64::try_from(position).map_err(|_| {
            corrupt(
                name,
                stored,
                format!("global_position {position} is negative"),
            )
        })?;
        found.insert(
            event_id,
            (
                stored,
                position,
                row.try_get(5).map_err(read)?,
                row.try_get(6).map_err(read)?,
            ),
        );
    }
    let existing = events
        .iter()
        .map(|e| found.remove(&e.event_id.0.hyphenated().to_string()))
        .collect();
    Ok(Some((Head { version, last_hash }, existing)))
}

/// `insert … values (…), (…) returning …` for `rows` rows, with the stream
/// id and time bound once as `?1` and `?2`.
fn insert_sql(rows: usize) -> String {
    use std::fmt::Write;
    const HEAD: &str = "insert into event \
        (stream_id, stream_version, event_id, event_type, schema_version, payload, metadata, recorded_at, prev_hash, hash) \
        values ";
    const TAIL: &str = " returning global_position, stream_version";
    let mut sql = String::with_capacity(HEAD.len() + rows * 60 + TAIL.len());
    sql.push_str(HEAD);
    for i in 0..rows {
        let p = 3 + i * ROW_PARAMS;
        if i > 0 {
            sql.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(
            sql,
            "(?1, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?2, ?{}, ?{})",
            p,
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7
        );
    }
    sql.push_str(TAIL);
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_every_row_parameter_once() {
        let sql = insert_sql(2);
        assert!(
            sql.contains("(?1, ?3, ?4, ?5, ?6, ?7, ?8, ?2, ?9, ?10), (?1, ?11, "),
            "{sql}"
        );
        assert!(
            sql.ends_with("?17, ?18) returning global_position, stream_version"),
            "{sql}"
        );
    }
}
