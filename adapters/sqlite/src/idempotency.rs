//! [`IdempotencyStore`] on SQLite.
//!
//! **Race freedom:** every call that writes runs its read and its write in
//! one `begin immediate` transaction on the single writer
//! ([`SqliteStore::begin_write`]), so no other writer, in this process or
//! another, can change the record between the two. Timestamps are integer
//! microseconds, like `event.recorded_at`.
//!
//! **Fresh commands** ([`IdempotencyStore::execute_fresh`]): one write
//! transaction; for each command, a key that has a record or a stream that
//! has events makes it [`Fresh::NotFresh`] (both read under the write lock,
//! so nothing changes between the check and the write), else its stream
//! and its record are written. One commit for the batch.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_core::ExpectedVersion;
use ledger_store::StoreError;
use ledger_store::idempotency::{
    Begin, Existing, ExistingRecord, Fresh, FreshCommand, IdempotencyStore, StoredResponse,
    check_fresh_batch, check_owner, check_scope_and_key, first_claims, judge_existing,
};
use ledger_store::recorded_now;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{SqliteStore, backend, finish};

const READ_SQL: &str = "select request_hash, status, response_status, response_content_type, \
            response_body, locked_at \
     from idempotency_record where scope = ?1 and key = ?2";

const CLAIM_SQL: &str = "insert into idempotency_record (scope, key, request_hash, status, locked_at, \
         owner) \
     values (?1, ?2, ?3, 'in_progress', ?4, ?5)";

/// A fresh command's record: completed at once when `?5` (the body) is
/// given, else claimed in progress.
const FRESH_CLAIM_SQL: &str = "insert into idempotency_record (scope, key, request_hash, status, \
         locked_at, response_status, response_content_type, response_body, completed_at, owner) \
     values (?1, ?2, ?3, case when ?6 is null then 'in_progress' else 'completed' end, ?4, \
         ?5, ?7, ?6, case when ?6 is null then null else ?4 end, ?8)";

const RECORD_EXISTS_SQL: &str =
    "select exists (select 1 from idempotency_record where scope = ?1 and key = ?2)";

const TAKE_OVER_SQL: &str = "update idempotency_record set locked_at = ?4, owner = ?5 \
     where scope = ?1 and key = ?2 and status = 'in_progress' and locked_at = ?3";

/// The owner's heartbeat: the lease starts again at `?4`.
const RENEW_SQL: &str = "update idempotency_record set locked_at = ?4 \
     where scope = ?1 and key = ?2 and status = 'in_progress' and owner = ?3";

const COMPLETE_SQL: &str = "update idempotency_record \
     set status = 'completed', response_status = ?3, response_content_type = ?4, \
         response_body = ?5, completed_at = ?6 \
     where scope = ?1 and key = ?2 and status = 'in_progress'";

const RELEASE_SQL: &str = "delete from idempotency_record \
     where scope = ?1 and key = ?2 and status = 'in_progress' and owner = ?3";

const PURGE_SQL: &str = "delete from idempotency_record where (scope, key) in ( \
         select scope, key from idempotency_record \
         where status = 'completed' and completed_at < ?1 \
         order by completed_at limit ?2)";

pub(crate) fn micros_to_time(micros: i64, what: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| StoreError::Backend(format!("{what} {micros} is out of range")))
}

fn decode_existing(row: &SqliteRow, scope: &str) -> Result<ExistingRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        stream: format!("idempotency_record {scope}"),
        version: 0,
        reason,
    };
    let status: String = row.try_get("status").map_err(backend)?;
    let response = match status.as_str() {
        "in_progress" => None,
        "completed" => {
            let code: Option<i64> = row.try_get("response_status").map_err(backend)?;
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
    let locked_at: i64 = row.try_get("locked_at").map_err(backend)?;
    Ok(ExistingRecord {
        request_hash: row.try_get("request_hash").map_err(backend)?,
        response,
        locked_at: micros_to_time(locked_at, "idempotency locked_at")?,
    })
}

impl SqliteStore {
    /// `execute_fresh` inside the caller's write transaction.
    async fn execute_fresh_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        batch: &[FreshCommand],
        now: DateTime<Utc>,
    ) -> Result<Vec<Fresh>, StoreError> {
        let recorded_at = recorded_now();
        let mut answers = Vec::with_capacity(batch.len());
        for (command, eligible) in batch.iter().zip(first_claims(batch)) {
            if !eligible {
                answers.push(Fresh::NotFresh);
                continue;
            }
            let taken: bool = sqlx::query_scalar(RECORD_EXISTS_SQL)
                .bind(command.scope.as_str())
                .bind(command.key.as_str())
                .fetch_one(&mut **tx)
                .await
                .map_err(backend)?;
            if taken {
                answers.push(Fresh::NotFresh);
                continue;
            }
            let appended = match crate::append::append_in(
                tx,
                &command.stream,
                ExpectedVersion::NoStream,
                &command.events,
                recorded_at,
            )
            .await
            {
                // Wrote nothing: the stream has events.
                Err(StoreError::WrongExpectedVersion { .. }) => None,
                Ok(result) if result.already_existed => None,
                Ok(result) => Some(result),
                Err(e) => return Err(e),
            };
            let Some(appended) = appended else {
                answers.push(Fresh::NotFresh);
                continue;
            };
            let response = command.response.as_ref();
            sqlx::query(FRESH_CLAIM_SQL)
                .bind(command.scope.as_str())
                .bind(command.key.as_str())
                .bind(command.request_hash.as_slice())
                .bind(now.timestamp_micros())
                .bind(response.map(|r| i64::from(r.status)))
                .bind(response.map(|r| r.body.as_slice()))
                .bind(response.map(|r| r.content_type.as_str()))
                .bind(command.owner.as_str())
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
            answers.push(Fresh::Written(appended));
        }
        Ok(answers)
    }

    /// `begin`'s read-judge-write, inside the caller's write transaction.
    async fn begin_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        scope: &str,
        key: &str,
        request_hash: &[u8; 32],
        owner: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Begin, StoreError> {
        let row = sqlx::query(READ_SQL)
            .bind(scope)
            .bind(key)
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)?;
        let Some(row) = row else {
            sqlx::query(CLAIM_SQL)
                .bind(scope)
                .bind(key)
                .bind(request_hash.as_slice())
                .bind(now.timestamp_micros())
                .bind(owner)
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
            return Ok(Begin::Started);
        };
        match judge_existing(decode_existing(&row, scope)?, request_hash, now, lease) {
            Existing::Answer(answer) => Ok(answer),
            Existing::TakeOver { observed_locked_at } => {
                let won = sqlx::query(TAKE_OVER_SQL)
                    .bind(scope)
                    .bind(key)
                    .bind(observed_locked_at.timestamp_micros())
                    .bind(now.timestamp_micros())
                    .bind(owner)
                    .execute(&mut **tx)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                if won == 1 {
                    tracing::warn!(
                        scope,
                        "idempotency claim taken over after its lease expired"
                    );
                    Ok(Begin::Started)
                } else {
                    // Impossible under the write lock; say so rather than guess.
                    Err(StoreError::Backend(format!(
                        "idempotency record in {scope:?} changed under the write lock"
                    )))
                }
            }
        }
    }
}

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn begin(
        &self,
        scope: &str,
        key: &str,
        request_hash: &[u8; 32],
        owner: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Begin, StoreError> {
        check_scope_and_key(scope, key)?;
        check_owner(owner)?;
        let mut tx = self.begin_write().await?;
        let outcome =
            SqliteStore::begin_in(&mut tx, scope, key, request_hash, owner, now, lease).await;
        finish(tx, outcome).await
    }

    async fn complete(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        check_scope_and_key(scope, key)?;
        let mut tx = self.begin_write().await?;
        let outcome = sqlx::query(COMPLETE_SQL)
            .bind(scope)
            .bind(key)
            .bind(i64::from(response.status))
            .bind(response.content_type.as_str())
            .bind(response.body.as_slice())
            .bind(now.timestamp_micros())
            .execute(&mut *tx)
            .await
            .map_err(backend);
        let updated = finish(tx, outcome).await?.rows_affected();
        if updated == 0 {
            tracing::warn!(
                scope,
                "idempotency record not in progress at completion; the stored outcome stands"
            );
        }
        Ok(())
    }

    async fn release(&self, scope: &str, key: &str, owner: &str) -> Result<(), StoreError> {
        check_scope_and_key(scope, key)?;
        check_owner(owner)?;
        let mut tx = self.begin_write().await?;
        let outcome = sqlx::query(RELEASE_SQL)
            .bind(scope)
            .bind(key)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(backend);
        finish(tx, outcome).await?;
        Ok(())
    }

    async fn renew(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        check_scope_and_key(scope, key)?;
        check_owner(owner)?;
        let mut tx = self.begin_write().await?;
        let outcome = sqlx::query(RENEW_SQL)
            .bind(scope)
            .bind(key)
            .bind(owner)
            .bind(now.timestamp_micros())
            .execute(&mut *tx)
            .await
            .map_err(backend);
        Ok(finish(tx, outcome).await?.rows_affected() == 1)
    }

    async fn purge_before(&self, cutoff: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let outcome = sqlx::query(PURGE_SQL)
            .bind(cutoff.timestamp_micros())
            .bind(i64::from(limit))
            .execute(&mut *tx)
            .await
            .map_err(backend);
        Ok(finish(tx, outcome).await?.rows_affected())
    }

    async fn execute_fresh(
        &self,
        batch: &[FreshCommand],
        now: DateTime<Utc>,
    ) -> Result<Vec<Fresh>, StoreError> {
        check_fresh_batch(batch)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let outcome = SqliteStore::execute_fresh_in(&mut tx, batch, now).await;
        finish(tx, outcome).await
    }
}
