//! [`WebhookLogStore`] on SQLite: the `hyperswitch_webhook_log` table.
//!
//! Writes go through the single writer in `begin immediate` transactions;
//! reads use the read-only pool. `received_at` is integer microseconds.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_core::RecordedEvent;
use ledger_core::ids::StreamId;
use ledger_store::webhook_log::{
    LoggedAppendStore, RECENT_WEBHOOK_LOG_MAX, RESULT_OK, WebhookLogEntry, WebhookLogStore,
    check_logged_append, check_webhook_log, storable_text,
};
use ledger_store::{AppendResult, EventStore, StoreError, StreamAppend, recorded_now};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::idempotency::micros_to_time;
use crate::{SqliteStore, append, backend, finish};

const INSERT_SQL: &str = "insert into hyperswitch_webhook_log \
     (payload, signature_valid, processing_result, source_ip, user_agent, request_id, \
      event_type, event_id, received_at, delivery_id, payload_sha256, payload_len) \
     values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
     on conflict (delivery_id) do nothing returning id";

/// The stored row of a delivery an insert skipped (already written).
const ID_OF_DELIVERY_SQL: &str = "select id from hyperswitch_webhook_log where delivery_id = ?1";

const PROCESSED_SQL: &str = "select exists (select 1 from hyperswitch_webhook_log \
     where event_id = ?1 and processing_result = ?2)";

const DELETE_BEFORE_SQL: &str = "delete from hyperswitch_webhook_log where id in ( \
         select id from hyperswitch_webhook_log where received_at < ?1 \
         order by received_at, id limit ?2)";

const RECENT_SQL: &str = "select payload, signature_valid, processing_result, source_ip, \
            user_agent, request_id, event_type, event_id, received_at, delivery_id, \
            payload_sha256, payload_len \
     from hyperswitch_webhook_log order by received_at desc, id desc limit ?1";

fn opt_text(value: Option<&String>) -> Option<String> {
    value.map(|v| storable_text(v).into_owned())
}

fn decode_entry(row: &SqliteRow) -> Result<WebhookLogEntry, StoreError> {
    let received_at: i64 = row.try_get("received_at").map_err(backend)?;
    Ok(WebhookLogEntry {
        payload: row.try_get("payload").map_err(backend)?,
        signature_valid: row.try_get("signature_valid").map_err(backend)?,
        processing_result: row.try_get("processing_result").map_err(backend)?,
        source_ip: row.try_get("source_ip").map_err(backend)?,
        user_agent: row.try_get("user_agent").map_err(backend)?,
        request_id: row.try_get("request_id").map_err(backend)?,
        event_type: row.try_get("event_type").map_err(backend)?,
        event_id: row.try_get("event_id").map_err(backend)?,
        received_at: micros_to_time(received_at, "webhook log received_at")?,
        delivery_id: row
            .try_get::<Option<String>, _>("delivery_id")
            .map_err(backend)?
            .map(|d| {
                uuid::Uuid::parse_str(&d).map_err(|e| {
                    StoreError::Backend(format!("webhook log delivery_id {d:?} is not a UUID: {e}"))
                })
            })
            .transpose()?,
        payload_sha256: row.try_get("payload_sha256").map_err(backend)?,
        payload_len: row.try_get("payload_len").map_err(backend)?,
    })
}

impl SqliteStore {
    /// `append_many` with webhook-log rows in the same `begin immediate`
    /// transaction, after the appends (see [`LoggedAppendStore`]).
    pub(crate) async fn append_many_and_log(
        &self,
        batch: &[StreamAppend],
        entries: &[WebhookLogEntry],
    ) -> Result<(Vec<AppendResult>, Vec<i64>), StoreError> {
        check_logged_append(batch, entries)?;
        let recorded_at = recorded_now();
        let mut tx = self.begin_write().await?;
        let mut results = Vec::with_capacity(batch.len());
        for part in batch {
            match append::append_in(
                &mut tx,
                &part.stream,
                part.expected,
                &part.events,
                recorded_at,
            )
            .await
            {
                Ok(result) => results.push(result),
                Err(e) => return finish(tx, Err(e)).await,
            }
        }
        let outcome = insert_all(entries, &mut tx).await;
        finish(tx, outcome.map(|ids| (results, ids))).await
    }
}

#[async_trait]
impl LoggedAppendStore for SqliteStore {
    async fn append_many_logged(
        &self,
        batch: &[StreamAppend],
        entries: &[WebhookLogEntry],
    ) -> Result<(Vec<AppendResult>, Vec<i64>), StoreError> {
        self.append_many_and_log(batch, entries).await
    }

    /// Two statements: a round trip to the connection's thread is cheap.
    async fn read_stream_unless_processed(
        &self,
        event_id: &str,
        stream: &StreamId,
        max_count: u32,
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        if self.webhook_event_processed(event_id).await? {
            return Ok(None);
        }
        self.read_stream(stream, 1, max_count).await.map(Some)
    }
}

#[async_trait]
impl WebhookLogStore for SqliteStore {
    async fn insert_webhook_log(&self, entry: &WebhookLogEntry) -> Result<i64, StoreError> {
        let mut ids = self
            .insert_webhook_logs(std::slice::from_ref(entry))
            .await?;
        ids.pop()
            .ok_or_else(|| StoreError::Backend("the webhook log insert returned no id".to_owned()))
    }

    async fn insert_webhook_logs(
        &self,
        entries: &[WebhookLogEntry],
    ) -> Result<Vec<i64>, StoreError> {
        for entry in entries {
            check_webhook_log(entry)?;
        }
        let mut tx = self.begin_write().await?;
        let outcome = insert_all(entries, &mut tx).await;
        finish(tx, outcome).await
    }

    async fn webhook_event_processed(&self, event_id: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar(PROCESSED_SQL)
            .bind(storable_text(event_id).as_ref())
            .bind(RESULT_OK)
            .fetch_one(self.reader())
            .await
            .map_err(backend)
    }

    async fn delete_webhook_log_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let outcome = sqlx::query(DELETE_BEFORE_SQL)
            .bind(cutoff.timestamp_micros())
            .bind(i64::from(limit))
            .execute(&mut *tx)
            .await
            .map_err(backend);
        Ok(finish(tx, outcome).await?.rows_affected())
    }

    async fn recent_webhook_log(&self, limit: u32) -> Result<Vec<WebhookLogEntry>, StoreError> {
        let rows = sqlx::query(RECENT_SQL)
            .bind(i64::from(limit.min(RECENT_WEBHOOK_LOG_MAX)))
            .fetch_all(self.reader())
            .await
            .map_err(backend)?;
        rows.iter().map(decode_entry).collect()
    }
}

async fn insert_all(
    entries: &[WebhookLogEntry],
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::with_capacity(entries.len());
    for entry in entries {
        ids.push(insert_one(entry, tx).await?);
    }
    Ok(ids)
}

async fn insert_one(
    entry: &WebhookLogEntry,
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
) -> Result<i64, StoreError> {
    let delivery = entry.delivery_id.map(|d| d.to_string());
    let inserted: Option<i64> = sqlx::query_scalar(INSERT_SQL)
        .bind(storable_text(&entry.payload).as_ref())
        .bind(entry.signature_valid)
        .bind(storable_text(&entry.processing_result).as_ref())
        .bind(opt_text(entry.source_ip.as_ref()))
        .bind(opt_text(entry.user_agent.as_ref()))
        .bind(storable_text(&entry.request_id).as_ref())
        .bind(opt_text(entry.event_type.as_ref()))
        .bind(opt_text(entry.event_id.as_ref()))
        .bind(entry.received_at.timestamp_micros())
        .bind(delivery.as_deref())
        .bind(opt_text(entry.payload_sha256.as_ref()))
        .bind(entry.payload_len)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)?;
    match (inserted, delivery) {
        (Some(id), _) => Ok(id),
        // Written before (a retry after a lost answer): that row's id.
        (None, Some(delivery)) => sqlx::query_scalar(ID_OF_DELIVERY_SQL)
            .bind(delivery)
            .fetch_one(&mut **tx)
            .await
            .map_err(backend),
        (None, None) => Err(StoreError::Backend(
            "a webhook log row without a delivery id was not inserted".to_owned(),
        )),
    }
}
