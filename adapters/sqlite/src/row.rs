//! Decoding stored rows into [`RecordedEvent`]s. Anything unreadable is
//! [`StoreError::Corrupt`], naming the stream and version when those are
//! themselves readable.

use chrono::DateTime;
use ledger_core::RecordedEvent;
use ledger_core::hash::Hash;
use ledger_core::ids::{EventId, StreamId};
use ledger_store::StoreError;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

/// Decodes a row of `select global_position, stream_id, stream_version,
/// event_id, event_type, schema_version, payload, metadata, recorded_at,
/// prev_hash, hash`.
pub(crate) fn decode_event(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    // Read the identity first so every later failure can name it.
    let stream_text: String = row.try_get(1).map_err(|e| corrupt("<unreadable>", 0, e))?;
    let version: i64 = row.try_get(2).map_err(|e| corrupt(&stream_text, 0, e))?;
    let stream_version = u64::try_from(version).map_err(|_| {
        corrupt(
            &stream_text,
            0,
            format!("stream_version {version} is negative"),
        )
    })?;
    let fail = |reason: String| corrupt(&stream_text, stream_version, reason);
    let get_err = |e: sqlx::Error| fail(e.to_string());

    let stream_id = StreamId::new(stream_text.clone()).map_err(|e| fail(e.to_string()))?;
    let position: i64 = row.try_get(0).map_err(get_err)?;
    let global_position = u64::try_from(position)
        .map_err(|_| fail(format!("global_position {position} is negative")))?;
    let event_id_text: String = row.try_get(3).map_err(get_err)?;
    let event_id = Uuid::parse_str(&event_id_text)
        .map(EventId)
        .map_err(|e| fail(format!("event_id {event_id_text:?}: {e}")))?;
    let schema: i64 = row.try_get(5).map_err(get_err)?;
    let schema_version = u32::try_from(schema)
        .map_err(|_| fail(format!("schema_version {schema} is out of range")))?;
    let micros: i64 = row.try_get(8).map_err(get_err)?;
    let recorded_at = DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| fail(format!("recorded_at {micros} is out of range")))?;
    let prev_hash = hash_of(row.try_get(9).map_err(get_err)?)
        .map_err(|n| fail(format!("prev_hash is {n} bytes")))?;
    let hash = hash_of(row.try_get(10).map_err(get_err)?)
        .map_err(|n| fail(format!("hash is {n} bytes")))?;

    Ok(RecordedEvent {
        global_position,
        // A single writer makes position order commit order (see `read_all`).
        commit: 0,
        stream_id,
        stream_version,
        event_id,
        event_type: row.try_get(4).map_err(get_err)?,
        schema_version,
        payload: row.try_get(6).map_err(get_err)?,
        metadata: row.try_get(7).map_err(get_err)?,
        recorded_at,
        prev_hash,
        hash,
    })
}

/// A stored hash, or its wrong length.
pub(crate) fn hash_of(bytes: Vec<u8>) -> Result<Hash, usize> {
    let len = bytes.len();
    bytes.try_into().map_err(|_| len)
}

pub(crate) fn corrupt(stream: &str, version: u64, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        stream: stream.to_owned(),
        version,
        reason: reason.to_string(),
    }
}
