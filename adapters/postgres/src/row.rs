//! Stored rows as [`RecordedEvent`]s. A row whose values cannot be a valid
//! event (negative version, a hash that is not 32 bytes, a bad stream id) is
//! [`StoreError::Corrupt`], naming the stream and version.

use chrono::{DateTime, Utc};
use ledger_core::RecordedEvent;
use ledger_core::hash::Hash;
use ledger_core::ids::{EventId, StreamId};
use ledger_store::StoreError;
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::backend;

/// Decodes a row selected with `event_columns!()`.
pub(crate) fn decode_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let stream: String = row.try_get("stream_id").map_err(backend)?;
    let version: i64 = row.try_get("stream_version").map_err(backend)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        stream: stream.clone(),
        version: u64::try_from(version).unwrap_or(0),
        reason,
    };
    let get_err = |e: sqlx::Error| corrupt(e.to_string());

    let stream_version = u64::try_from(version)
        .map_err(|_| corrupt(format!("negative stream_version {version}")))?;
    let position: i64 = row.try_get("global_position").map_err(get_err)?;
    let global_position = u64::try_from(position)
        .map_err(|_| corrupt(format!("negative global_position {position}")))?;
    let commit: i64 = row.try_get("commit_id").map_err(get_err)?;
    let commit =
        u64::try_from(commit).map_err(|_| corrupt(format!("negative transaction id {commit}")))?;
    let stream_id =
        StreamId::new(stream.clone()).map_err(|e| corrupt(format!("bad stream id: {e}")))?;
    let event_id: Uuid = row.try_get("event_id").map_err(get_err)?;
    let schema_version: i64 = row.try_get("schema_version").map_err(get_err)?;
    let schema_version = u32::try_from(schema_version)
        .map_err(|_| corrupt(format!("schema_version {schema_version} is not a u32")))?;
    let prev_hash: Vec<u8> = row.try_get("prev_hash").map_err(get_err)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(get_err)?;
    let recorded_at: DateTime<Utc> = row.try_get("recorded_at").map_err(get_err)?;

    Ok(RecordedEvent {
        global_position,
        commit,
        stream_id,
        stream_version,
        event_id: EventId(event_id),
        event_type: row.try_get("event_type").map_err(get_err)?,
        schema_version,
        payload: row.try_get("payload").map_err(get_err)?,
        metadata: row.try_get("metadata").map_err(get_err)?,
        recorded_at,
        prev_hash: to_hash(prev_hash)
            .map_err(|len| corrupt(format!("prev_hash is {len} bytes, not 32")))?,
        hash: to_hash(hash).map_err(|len| corrupt(format!("hash is {len} bytes, not 32")))?,
    })
}

fn to_hash(bytes: Vec<u8>) -> Result<Hash, usize> {
    let len = bytes.len();
    bytes.try_into().map_err(|_| len)
}
