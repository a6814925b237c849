//! Fault injection for the conformance suite, and the raw-insert baseline for
//! `ledger bench`.

use async_trait::async_trait;
use ledger_core::hash::{ContentFields, GENESIS, content_digest};
use ledger_core::ids::StreamId;
use ledger_core::{ExpectedVersion, NewEvent};
use ledger_store::conformance::{ConformanceBackend, HeldAppend};
use ledger_store::{AppendResult, RawInsertBaseline, StoreError, validate_events};
use sqlx::postgres::PgTransaction;

use crate::append::{append_with, with_retries};
use crate::error::{AttemptError, backend};
use crate::{PgStore, clamp_i64};
use ledger_store::recorded_now;

/// An append whose transaction has written its rows and stays open. Readers
/// cannot see its events, and — being an open transaction with an xid — it
/// holds back `read_all` for every later commit until it ends.
struct PgHeldAppend {
    tx: PgTransaction<'static>,
    result: AppendResult,
}

#[async_trait]
impl HeldAppend for PgHeldAppend {
    async fn commit(self: Box<Self>) -> Result<AppendResult, StoreError> {
        self.tx.commit().await.map_err(backend)?;
        Ok(self.result)
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(backend)
    }
}

#[async_trait]
impl ConformanceBackend for PgStore {
    async fn begin_held_append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Box<dyn HeldAppend>, StoreError> {
        validate_events(&events)?;
        let recorded_at = recorded_now();
        let held = with_retries(|| async {
            let mut tx = self.pool.begin().await.map_err(backend)?;
            match append_with(&mut *tx, stream, expected, &events, recorded_at).await {
                Ok(result) => Ok(PgHeldAppend { tx, result }),
                Err(err) => {
                    // Best effort: dropping the transaction rolls back too.
                    let _ = tx.rollback().await;
                    Err::<PgHeldAppend, AttemptError>(err)
                }
            }
        })
        .await?;
        Ok(Box::new(held))
    }

    async fn tamper_payload(&self, stream: &StreamId, version: u64) -> Result<(), StoreError> {
        let payload: Option<String> = sqlx::query_scalar(
            "select e.payload from event e where e.stream_id = $1 and e.stream_version = $2",
        )
        .bind(stream.as_str())
        .bind(clamp_i64(version))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        let Some(payload) = payload else {
            return Err(StoreError::Backend(format!(
                "tamper: no event {stream}@{version}"
            )));
        };
        let tampered = flip_one_ascii_byte(&payload).ok_or_else(|| {
            StoreError::Backend(format!(
                "tamper: {stream}@{version} has no printable ASCII byte"
            ))
        })?;
        sqlx::query("update event set payload = $3 where stream_id = $1 and stream_version = $2")
            .bind(stream.as_str())
            .bind(clamp_i64(version))
            .bind(tampered)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_event(&self, stream: &StreamId, version: u64) -> Result<(), StoreError> {
        sqlx::query("delete from event where stream_id = $1 and stream_version = $2")
            .bind(stream.as_str())
            .bind(clamp_i64(version))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn concurrent_writers(&self) -> bool {
        true
    }
}

/// Flips the lowest bit of the first printable ASCII byte. The result stays
/// printable ASCII (0x20..=0x7f), so the text stays valid UTF-8 and
/// storable, while its bytes — and so its hash — change.
fn flip_one_ascii_byte(text: &str) -> Option<String> {
    let mut bytes = text.as_bytes().to_vec();
    let i = bytes.iter().position(|b| (0x20..=0x7e).contains(b))?;
    bytes[i] ^= 0x01;
    String::from_utf8(bytes).ok()
}

/// A plain table of the event table's shape with no constraint beyond an
/// identity key: what a single-row insert costs with no ledger rules at all.
const BASELINE_TABLE_SQL: &str = "create table if not exists bench_raw_event (
    global_position bigint generated always as identity,
    transaction_id xid8 not null default pg_current_xact_id(),
    stream_id text not null,
    stream_version bigint not null,
    event_id uuid not null,
    event_type text not null,
    schema_version bigint not null,
    payload text not null,
    metadata text not null,
    recorded_at timestamptz not null,
    prev_hash bytea not null,
    hash bytea not null,
    constraint bench_raw_event_pk primary key (global_position)
);
truncate bench_raw_event;";

const BASELINE_INSERT_SQL: &str = "insert into bench_raw_event (
    stream_id, stream_version, event_id, event_type, schema_version,
    payload, metadata, recorded_at, prev_hash, hash
) values ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9)";

#[async_trait]
impl RawInsertBaseline for PgStore {
    async fn prepare_baseline(&self) -> Result<(), StoreError> {
        sqlx::raw_sql(BASELINE_TABLE_SQL)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn baseline_insert_batch(&self, rows: &[(StreamId, NewEvent)]) -> Result<(), StoreError> {
        self.insert_baseline_batch(rows).await
    }

    async fn baseline_insert(&self, stream: &StreamId, event: &NewEvent) -> Result<(), StoreError> {
        // Same client-side work as an append (time, digest), so the ratio
        // measures what the database does differently.
        let recorded_at = recorded_now();
        let digest = content_digest(&ContentFields {
            stream_id: stream,
            event_id: event.event_id,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            payload: &event.payload,
            metadata: &event.metadata,
            recorded_at,
        });
        sqlx::query(BASELINE_INSERT_SQL)
            .bind(stream.as_str())
            .bind(event.event_id.0)
            .bind(event.event_type.as_str())
            .bind(i64::from(event.schema_version))
            .bind(event.payload.as_str())
            .bind(event.metadata.as_str())
            .bind(recorded_at)
            .bind(GENESIS)
            .bind(digest)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flipping_keeps_valid_text_and_changes_one_byte() {
        let t = flip_one_ascii_byte(r#"{"a":"é"}"#).unwrap();
        assert_eq!(t, r#"z"a":"é"}"#);
        assert_eq!(flip_one_ascii_byte("~").unwrap(), "\u{7f}");
        assert_eq!(flip_one_ascii_byte("é"), None);
    }
}
