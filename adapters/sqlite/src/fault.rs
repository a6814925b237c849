//! What the conformance suite and `ledger bench` need beyond the store:
//! held appends, fault injection, and the raw-insert baseline.

use async_trait::async_trait;
use ledger_core::ids::StreamId;
use ledger_core::{ExpectedVersion, NewEvent};
use ledger_store::conformance::{ConformanceBackend, HeldAppend};
use ledger_store::{AppendResult, RawInsertBaseline, StoreError, validate_events};
use sqlx::{Sqlite, Transaction};

use crate::{SqliteStore, append, backend, finish, to_version_param};
use ledger_store::recorded_now;

/// An append whose rows are written in a `begin immediate` transaction that
/// is still open: it holds the writer (in-process appends queue behind it)
/// and the file's write lock (other processes wait on the busy timeout).
struct SqliteHeldAppend {
    tx: Transaction<'static, Sqlite>,
    result: AppendResult,
}

#[async_trait]
impl HeldAppend for SqliteHeldAppend {
    async fn commit(self: Box<Self>) -> Result<AppendResult, StoreError> {
        self.tx.commit().await.map_err(backend)?;
        Ok(self.result)
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(backend)
    }
}

#[async_trait]
impl ConformanceBackend for SqliteStore {
    async fn begin_held_append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Box<dyn HeldAppend>, StoreError> {
        validate_events(&events)?;
        let recorded_at = recorded_now();
        let mut tx = self.begin_write().await?;
        match append::append_in(&mut tx, stream, expected, &events, recorded_at).await {
            Ok(result) => Ok(Box::new(SqliteHeldAppend { tx, result })),
            Err(e) => finish(tx, Err(e)).await,
        }
    }

    async fn tamper_payload(&self, stream: &StreamId, version: u64) -> Result<(), StoreError> {
        let version_param = to_version_param(version)?;
        let mut tx = self.begin_write().await?;
        let payload: Option<String> = sqlx::query_scalar(
            "select payload from event where stream_id = ?1 and stream_version = ?2",
        )
        .bind(stream.as_str())
        .bind(version_param)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some(payload) = payload else {
            return finish(tx, Err(no_such_event(stream, version))).await;
        };
        let Some(tampered) = flip_one_ascii_byte(&payload) else {
            return finish(
                tx,
                Err(StoreError::Backend(format!(
                    "{stream}@{version}: payload has no ASCII byte to flip"
                ))),
            )
            .await;
        };
        sqlx::query("update event set payload = ?3 where stream_id = ?1 and stream_version = ?2")
            .bind(stream.as_str())
            .bind(version_param)
            .bind(tampered)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        finish(tx, Ok(())).await
    }

    async fn delete_event(&self, stream: &StreamId, version: u64) -> Result<(), StoreError> {
        let version_param = to_version_param(version)?;
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("delete from event where stream_id = ?1 and stream_version = ?2")
            .bind(stream.as_str())
            .bind(version_param)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        let outcome = if deleted == 1 {
            Ok(())
        } else {
            Err(no_such_event(stream, version))
        };
        finish(tx, outcome).await
    }

    fn concurrent_writers(&self) -> bool {
        false
    }
}

fn no_such_event(stream: &StreamId, version: u64) -> StoreError {
    StoreError::Backend(format!("no stored event at {stream}@{version}"))
}

/// Changes one ASCII byte so the text stays valid UTF-8 and, where possible,
/// valid JSON: a letter changes case, a digit becomes its neighbour; failing
/// those, the first ASCII byte's low bit flips.
fn flip_one_ascii_byte(text: &str) -> Option<String> {
    let mut bytes = text.as_bytes().to_vec();
    let i = bytes
        .iter()
        .position(u8::is_ascii_alphanumeric)
        .or_else(|| bytes.iter().position(u8::is_ascii))?;
    bytes[i] ^= match bytes[i] {
        b if b.is_ascii_alphabetic() => 0x20,
        _ => 0x01,
    };
    // Flipping bit 0 or 5 of an ASCII byte yields an ASCII byte.
    String::from_utf8(bytes).ok()
}

#[async_trait]
impl RawInsertBaseline for SqliteStore {
    async fn prepare_baseline(&self) -> Result<(), StoreError> {
        // The event table's columns and types, without its unique indexes,
        // foreign key or checks: what a bare insert costs on this file.
        sqlx::query(
            "create table if not exists bench_raw_event (
                id integer primary key,
                stream_id text not null,
                stream_version integer not null,
                event_id text not null,
                event_type text not null,
                schema_version integer not null,
                payload text not null,
                metadata text not null,
                recorded_at integer not null,
                prev_hash blob not null,
                hash blob not null
            ) strict",
        )
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        sqlx::query("delete from bench_raw_event")
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn baseline_insert_batch(&self, rows: &[(StreamId, NewEvent)]) -> Result<(), StoreError> {
        self.insert_baseline_batch(rows).await
    }

    async fn baseline_insert(&self, stream: &StreamId, event: &NewEvent) -> Result<(), StoreError> {
        const NO_HASH: [u8; 32] = [0; 32];
        sqlx::query(
            "insert into bench_raw_event \
             (stream_id, stream_version, event_id, event_type, schema_version, payload, metadata, recorded_at, prev_hash, hash) \
             values (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        )
        .bind(stream.as_str())
        .bind(event.event_id.0.hyphenated().to_string())
        .bind(event.event_type.as_str())
        .bind(i64::from(event.schema_version))
        .bind(event.payload.as_str())
        .bind(event.metadata.as_str())
        .bind(recorded_now().timestamp_micros())
        .bind(&NO_HASH[..])
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::flip_one_ascii_byte;

    #[test]
    fn flips_exactly_one_byte_and_stays_utf8() {
        for (input, output) in [
            (r#"{"a":1}"#, r#"{"A":1}"#),
            (r#"{"é":7}"#, r#"{"é":6}"#),
            ("{}", "z}"),
        ] {
            assert_eq!(
                flip_one_ascii_byte(input).as_deref(),
                Some(output),
                "{input}"
            );
        }
        assert_eq!(flip_one_ascii_byte("é"), None);
    }
}
