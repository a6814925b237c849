//! The batched raw-insert baseline of `ledger bench project`: one multi-row
//! `INSERT` into the plain `bench_raw_event` table (see
//! [`RawInsertBaseline::prepare_baseline`]) through the same writer.

use ledger_core::NewEvent;
use ledger_core::ids::StreamId;
use ledger_store::{BASELINE_BATCH_ROWS_MAX, InputError, StoreError};
use sqlx::QueryBuilder;

use crate::{SqliteStore, backend};
use ledger_store::recorded_now;

impl SqliteStore {
    pub(crate) async fn insert_baseline_batch(
        &self,
        rows: &[(StreamId, NewEvent)],
    ) -> Result<(), StoreError> {
        if rows.len() > BASELINE_BATCH_ROWS_MAX {
            return Err(InputError::TooManyEvents {
                count: rows.len(),
                max: BASELINE_BATCH_ROWS_MAX,
            }
            .into());
        }
        if rows.is_empty() {
            return Ok(());
        }
        const NO_HASH: [u8; 32] = [0; 32];
        let recorded_at = recorded_now().timestamp_micros();
        let mut q = QueryBuilder::new(
            "insert into bench_raw_event \
             (stream_id, stream_version, event_id, event_type, schema_version, payload, metadata, recorded_at, prev_hash, hash) ",
        );
        q.push_values(rows, |mut b, (stream, event)| {
            b.push_bind(stream.as_str())
                .push_bind(0_i64)
                .push_bind(event.event_id.0.hyphenated().to_string())
                .push_bind(event.event_type.as_str())
                .push_bind(i64::from(event.schema_version))
                .push_bind(event.payload.as_str())
                .push_bind(event.metadata.as_str())
                .push_bind(recorded_at)
                .push_bind(&NO_HASH[..])
                .push_bind(&NO_HASH[..]);
        });
        q.build().execute(&self.writer).await.map_err(backend)?;
        Ok(())
    }
}
