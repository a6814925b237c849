//! [`IdempotencyStore`] on Postgres.
//!
//! **Race freedom:** `begin` claims a key with `insert … on conflict do
//! nothing`: of concurrent inserts of one `(scope, key)` exactly one inserts
//! the row (the others wait on its index entry, then do nothing) and only
//! that one is `Started`. The losers read the row and judge it (see
//! [`judge_existing`]). A stale claim is taken over by an `update` that
//! matches the `locked_at` the caller read: two callers that read the same
//! stale claim both try, the second waits on the first's row lock, re-checks
//! its `where` against the new row (Read Committed), no longer matches, and
//! reads again. Every statement is autocommit: no transaction stays open.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_store::StoreError;
use ledger_store::idempotency::{
    BEGIN_ATTEMPTS_MAX, Begin, Existing, ExistingRecord, IdempotencyStore, StoredResponse,
    begin_contended, check_scope_and_key, judge_existing,
};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::PgStore;
use crate::error::backend;

const CLAIM_SQL: &str = "insert into idempotency_record (scope, key, request_hash, status, locked_at) \
     values ($1, $2, $3, 'in_progress', $4) \
     on conflict on constraint idempotency_record_pk do nothing";

const READ_SQL: &str = "select request_hash, status, response_status, response_content_type, \
            response_body, locked_at \
     from idempotency_record where scope = $1 and key = $2";

const TAKE_OVER_SQL: &str = "update idempotency_record set locked_at = $4 \
     where scope = $1 and key = $2 and status = 'in_progress' and locked_at = $3";

const COMPLETE_SQL: &str = "update idempotency_record \
     set status = 'completed', response_status = $3, response_content_type = $4, \
         response_body = $5, completed_at = $6 \
     where scope = $1 and key = $2 and status = 'in_progress'";

const RELEASE_SQL: &str =
    "delete from idempotency_record where scope = $1 and key = $2 and status = 'in_progress'";

/// Oldest completed records first; `skip locked` lets two purgers share the
/// work instead of queueing on the same rows.
const PURGE_SQL: &str = "delete from idempotency_record where (scope, key) in ( \
         select scope, key from idempotency_record \
         where status = 'completed' and completed_at < $1 \
         order by completed_at limit $2 for update skip locked)";

fn decode_existing(row: &PgRow, scope: &str) -> Result<ExistingRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        stream: format!("idempotency_record {scope}"),
        version: 0,
        reason,
    };
    let status: String = row.try_get("status").map_err(backend)?;
    let response = match status.as_str() {
        "in_progress" => None,
        "completed" => {
            let code: Option<i32> = row.try_get("response_status").map_err(backend)?;
            let code = code
                .and_then(|c| u16::try_from(c).ok())
                .ok_or_else(|| corrupt("completed record without a valid status".to_owned()))?;
            let content_type: Option<String> =
                row.try_get("response_content_type").map_err(backend)?;
            let body: Option<Vec<u8>> = row.try_get("response_body").map_err(backend)?;
            match (content_type, body) {
                (Some(content_type), Some(body)) => Some(StoredResponse {
                    status: code,
                    content_type,
                    body,
                }),
                _ => return Err(corrupt("completed record without a response".to_owned())),
            }
        }
        other => return Err(corrupt(format!("unknown status {other:?}"))),
    };
    Ok(ExistingRecord {
        request_hash: row.try_get("request_hash").map_err(backend)?,
        response,
        locked_at: row.try_get("locked_at").map_err(backend)?,
    })
}

#[async_trait]
impl IdempotencyStore for PgStore {
    async fn begin(
        &self,
        scope: &str,
        key: &str,
        request_hash: &[u8; 32],
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Begin, StoreError> {
        check_scope_and_key(scope, key)?;
        for _ in 0..BEGIN_ATTEMPTS_MAX {
            let inserted = sqlx::query(CLAIM_SQL)
                .bind(scope)
                .bind(key)
                .bind(request_hash.as_slice())
                .bind(now)
                .execute(self.pool())
                .await
                .map_err(backend)?
                .rows_affected();
            if inserted == 1 {
                return Ok(Begin::Started);
            }
            let row = sqlx::query(READ_SQL)
                .bind(scope)
                .bind(key)
                .fetch_optional(self.pool())
                .await
                .map_err(backend)?;
            // Released or purged since the insert: claim it again.
            let Some(row) = row else { continue };
            match judge_existing(decode_existing(&row, scope)?, request_hash, now, lease) {
                Existing::Answer(answer) => return Ok(answer),
                Existing::TakeOver { observed_locked_at } => {
                    let won = sqlx::query(TAKE_OVER_SQL)
                        .bind(scope)
                        .bind(key)
                        .bind(observed_locked_at)
                        .bind(now)
                        .execute(self.pool())
                        .await
                        .map_err(backend)?
                        .rows_affected();
                    if won == 1 {
                        tracing::warn!(
                            scope,
                            "idempotency claim taken over after its lease expired"
                        );
                        return Ok(Begin::Started);
                    }
                    // Another caller took it over (or it completed or was
                    // released) first: judge it again.
                }
            }
        }
        Err(begin_contended(scope))
    }

    async fn complete(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        check_scope_and_key(scope, key)?;
        let updated = sqlx::query(COMPLETE_SQL)
            .bind(scope)
            .bind(key)
            .bind(i32::from(response.status))
            .bind(response.content_type.as_str())
            .bind(response.body.as_slice())
            .bind(now)
            .execute(self.pool())
            .await
            .map_err(backend)?
            .rows_affected();
        if updated == 0 {
            tracing::warn!(
                scope,
                "idempotency record not in progress at completion; the stored outcome stands"
            );
        }
        Ok(())
    }

    async fn release(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        check_scope_and_key(scope, key)?;
        sqlx::query(RELEASE_SQL)
            .bind(scope)
            .bind(key)
            .execute(self.pool())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn purge_before(&self, cutoff: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let deleted = sqlx::query(PURGE_SQL)
            .bind(cutoff)
            .bind(i64::from(limit))
            .execute(self.pool())
            .await
            .map_err(backend)?
            .rows_affected();
        Ok(deleted)
    }
}
