//! [`WebhookLogStore`] on Postgres: the `hyperswitch_webhook_log` table.
//!
//! Every statement here is autocommit; `insert_logs_with` also runs inside
//! an append's transaction (`LoggedAppendStore`). The retention delete
//! picks its batch with `for update skip locked`, so two processes sweeping at once split the
//! rows instead of queueing on the same ones.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_store::StoreError;
use ledger_store::webhook_log::{
    RECENT_WEBHOOK_LOG_MAX, RESULT_OK, WebhookLogEntry, WebhookLogStore, check_webhook_log,
    storable_text,
};
use std::collections::HashMap;

use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::PgStore;
use crate::error::backend;

/// Rows in one statement (a group commit's batch in one round trip; a
/// single row too), inserted in the arrays' order. Identity values are drawn row by
/// row as rows are inserted, so the ids in ascending order are the rows in
/// the arrays' order.
const INSERT_MANY_SQL: &str = "insert into hyperswitch_webhook_log \
     (payload, signature_valid, processing_result, source_ip, user_agent, request_id, \
      event_type, event_id, received_at, delivery_id, payload_sha256, payload_len) \
     select payload, signature_valid, processing_result, source_ip, user_agent, request_id, \
            event_type, event_id, received_at, delivery_id, payload_sha256, payload_len \
     from unnest($1::text[], $2::boolean[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::timestamptz[], $10::uuid[], $11::text[], \
                 $12::bigint[]) with ordinality \
          as e (payload, signature_valid, processing_result, source_ip, user_agent, request_id, \
                event_type, event_id, received_at, delivery_id, payload_sha256, payload_len, n) \
     order by n \
     on conflict (delivery_id) do nothing \
     returning id, delivery_id";

/// The stored rows of delivery ids an insert skipped (already written).
const IDS_OF_DELIVERIES_SQL: &str = "select delivery_id, id from hyperswitch_webhook_log \
     where delivery_id = any($1::uuid[])";

const PROCESSED_SQL: &str = "select exists (select 1 from hyperswitch_webhook_log \
     where event_id = $1 and processing_result = $2)";

const DELETE_BEFORE_SQL: &str = "delete from hyperswitch_webhook_log where id in ( \
         select id from hyperswitch_webhook_log where received_at < $1 \
         order by received_at, id limit $2 for update skip locked)";

const RECENT_SQL: &str = "select payload, signature_valid, processing_result, source_ip, \
            user_agent, request_id, event_type, event_id, received_at, delivery_id, \
            payload_sha256, payload_len \
     from hyperswitch_webhook_log order by received_at desc, id desc limit $1";

fn opt_text(value: Option<&String>) -> Option<String> {
    value.map(|v| storable_text(v).into_owned())
}

fn decode_entry(row: &PgRow) -> Result<WebhookLogEntry, StoreError> {
    Ok(WebhookLogEntry {
        payload: row.try_get("payload").map_err(backend)?,
        signature_valid: row.try_get("signature_valid").map_err(backend)?,
        processing_result: row.try_get("processing_result").map_err(backend)?,
        source_ip: row.try_get("source_ip").map_err(backend)?,
        user_agent: row.try_get("user_agent").map_err(backend)?,
        request_id: row.try_get("request_id").map_err(backend)?,
        event_type: row.try_get("event_type").map_err(backend)?,
        event_id: row.try_get("event_id").map_err(backend)?,
        received_at: row.try_get("received_at").map_err(backend)?,
        delivery_id: row.try_get("delivery_id").map_err(backend)?,
        payload_sha256: row.try_get("payload_sha256").map_err(backend)?,
        payload_len: row.try_get("payload_len").map_err(backend)?,
    })
}

/// Writes `entries` in one statement on `conn` (autocommit, or inside a
/// transaction shared with appends); answers their ids in order, an entry
/// whose `delivery_id` was stored already answering that row's id (a second
/// statement looks those up). One refused entry refuses them all before the
/// statement runs.
pub(crate) async fn insert_logs_with(
    conn: &mut sqlx::PgConnection,
    entries: &[WebhookLogEntry],
) -> Result<Vec<i64>, StoreError> {
    for entry in entries {
        check_webhook_log(entry)?;
    }
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let text = |f: fn(&WebhookLogEntry) -> &str| -> Vec<String> {
        entries
            .iter()
            .map(|e| storable_text(f(e)).into_owned())
            .collect()
    };
    let opt = |f: fn(&WebhookLogEntry) -> Option<&String>| -> Vec<Option<String>> {
        entries.iter().map(|e| opt_text(f(e))).collect()
    };
    let inserted: Vec<(i64, Option<Uuid>)> = sqlx::query_as(INSERT_MANY_SQL)
        .bind(text(|e| &e.payload))
        .bind(
            entries
                .iter()
                .map(|e| e.signature_valid)
                .collect::<Vec<_>>(),
        )
        .bind(text(|e| &e.processing_result))
        .bind(opt(|e| e.source_ip.as_ref()))
        .bind(opt(|e| e.user_agent.as_ref()))
        .bind(text(|e| &e.request_id))
        .bind(opt(|e| e.event_type.as_ref()))
        .bind(opt(|e| e.event_id.as_ref()))
        .bind(entries.iter().map(|e| e.received_at).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.delivery_id).collect::<Vec<_>>())
        .bind(opt(|e| e.payload_sha256.as_ref()))
        .bind(entries.iter().map(|e| e.payload_len).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await
        .map_err(backend)?;
    // Rows with a delivery id are matched by it. Rows without one (never
    // skipped) take the returned ids without an id in ascending order:
    // identity values are drawn as rows are inserted, in the arrays' order.
    let mut by_delivery: HashMap<Uuid, i64> = HashMap::with_capacity(inserted.len());
    let mut anonymous: Vec<i64> = Vec::new();
    for (id, delivery) in &inserted {
        match delivery {
            Some(d) => {
                by_delivery.insert(*d, *id);
            }
            None => anonymous.push(*id),
        }
    }
    anonymous.sort_unstable();
    let skipped: Vec<Uuid> = entries
        .iter()
        .filter_map(|e| e.delivery_id)
        .filter(|d| !by_delivery.contains_key(d))
        .collect();
    // Only after a retried write: the rows a lost answer left behind.
    if !skipped.is_empty() {
        let stored: Vec<(Uuid, i64)> = sqlx::query_as(IDS_OF_DELIVERIES_SQL)
            .bind(&skipped)
            .fetch_all(&mut *conn)
            .await
            .map_err(backend)?;
        by_delivery.extend(stored);
    }
    let mut anonymous = anonymous.into_iter();
    let ids = entries
        .iter()
        .map(|e| match e.delivery_id {
            Some(d) => by_delivery.get(&d).copied(),
            None => anonymous.next(),
        })
        .collect::<Option<Vec<i64>>>();
    // Cannot happen (every entry was inserted or found, every anonymous
    // row answered once); reported rather than a wrong id handed back.
    match ids {
        Some(ids) if anonymous.next().is_none() => Ok(ids),
        _ => Err(StoreError::Backend(format!(
            "writing {} webhook log rows: the ids returned do not match them",
            entries.len()
        ))),
    }
}

#[async_trait]
impl WebhookLogStore for PgStore {
    async fn insert_webhook_log(&self, entry: &WebhookLogEntry) -> Result<i64, StoreError> {
        // The batch statement with one row: one column mapping for both.
        self.insert_webhook_logs(std::slice::from_ref(entry))
            .await?
            .pop()
            .ok_or_else(|| {
                StoreError::Backend("inserting a webhook log row returned no id".to_owned())
            })
    }

    async fn insert_webhook_logs(
        &self,
        entries: &[WebhookLogEntry],
    ) -> Result<Vec<i64>, StoreError> {
        // Autocommit: the insert is one statement, atomic on its own (a
        // retried write's lookup of its earlier rows reads committed rows).
        let mut conn = self.pool().acquire().await.map_err(backend)?;
        insert_logs_with(&mut conn, entries).await
    }

    async fn webhook_event_processed(&self, event_id: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar(PROCESSED_SQL)
            .bind(storable_text(event_id).as_ref())
            .bind(RESULT_OK)
            .fetch_one(self.pool())
            .await
            .map_err(backend)
    }

    async fn delete_webhook_log_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let deleted = sqlx::query(DELETE_BEFORE_SQL)
            .bind(cutoff)
            .bind(i64::from(limit))
            .execute(self.pool())
            .await
            .map_err(backend)?
            .rows_affected();
        Ok(deleted)
    }

    async fn recent_webhook_log(&self, limit: u32) -> Result<Vec<WebhookLogEntry>, StoreError> {
        let rows = sqlx::query(RECENT_SQL)
            .bind(i64::from(limit.min(RECENT_WEBHOOK_LOG_MAX)))
            .fetch_all(self.pool())
            .await
            .map_err(backend)?;
        rows.iter().map(decode_entry).collect()
    }
}
