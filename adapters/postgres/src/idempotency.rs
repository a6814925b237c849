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
//!
//! **Fresh commands** ([`IdempotencyStore::execute_fresh`]): one transaction
//! claims every key with one `insert … on conflict do nothing` (in key
//! order, so two batches lock keys in one order and cannot deadlock), then
//! inserts the claimed commands' streams with one statement, then commits.
//! A stream found to have events makes its command not fresh (its claim is
//! deleted in the same transaction). One created by a concurrent writer
//! after that check fails the insert on `event_pk`; the transaction is
//! rolled back, and a batch of several is reported as an error so the
//! caller retries its commands one by one.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_store::StoreError;
use ledger_store::idempotency::{
    BEGIN_ATTEMPTS_MAX, Begin, Existing, ExistingRecord, Fresh, FreshCommand, IdempotencyStore,
    StoredResponse, begin_contended, check_fresh_batch, check_owner, check_scope_and_key,
    first_claims, judge_existing,
};
use ledger_store::recorded_now;
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::PgStore;
use crate::append::insert_new_streams;
use crate::error::backend;

/// Which of `$1` already have events.
const EXISTING_STREAMS_SQL: &str =
    "select stream_id from event where stream_id = any($1::text[]) and stream_version = 1";

/// Drops the claims just made for commands whose stream exists.
const UNCLAIM_SQL: &str = "delete from idempotency_record where (scope, key) in ( \
         select * from unnest($1::text[], $2::text[]))";

/// Claims fresh commands' keys, completed at once when a response is given.
/// `$7` is the claim's (and completion's) time.
const FRESH_CLAIM_SQL: &str = "insert into idempotency_record (scope, key, request_hash, status, \
         locked_at, response_status, response_content_type, response_body, completed_at, owner) \
     select c.scope, c.key, c.hash, \
         case when c.body is null then 'in_progress' else 'completed' end, \
         $7, c.status, c.content_type, c.body, \
         case when c.body is null then null else $7::timestamptz end, c.owner \
     from unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::text[], $6::bytea[], \
             $8::text[]) \
         as c (scope, key, hash, status, content_type, body, owner) \
     order by c.scope, c.key \
     on conflict on constraint idempotency_record_pk do nothing \
     returning scope, key";

const CLAIM_SQL: &str = "insert into idempotency_record (scope, key, request_hash, status, locked_at, \
         owner) \
     values ($1, $2, $3, 'in_progress', $4, $5) \
     on conflict on constraint idempotency_record_pk do nothing";

const READ_SQL: &str = "select request_hash, status, response_status, response_content_type, \
            response_body, locked_at \
     from idempotency_record where scope = $1 and key = $2";

const TAKE_OVER_SQL: &str = "update idempotency_record set locked_at = $4, owner = $5 \
     where scope = $1 and key = $2 and status = 'in_progress' and locked_at = $3";

/// The owner's heartbeat: the lease starts again at `$4`.
const RENEW_SQL: &str = "update idempotency_record set locked_at = $4 \
     where scope = $1 and key = $2 and status = 'in_progress' and owner = $3";

const COMPLETE_SQL: &str = "update idempotency_record \
     set status = 'completed', response_status = $3, response_content_type = $4, \
         response_body = $5, completed_at = $6 \
     where scope = $1 and key = $2 and status = 'in_progress'";

const RELEASE_SQL: &str = "delete from idempotency_record \
     where scope = $1 and key = $2 and status = 'in_progress' and owner = $3";

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
        owner: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Begin, StoreError> {
        check_scope_and_key(scope, key)?;
        check_owner(owner)?;
        for _ in 0..BEGIN_ATTEMPTS_MAX {
            let inserted = sqlx::query(CLAIM_SQL)
                .bind(scope)
                .bind(key)
                .bind(request_hash.as_slice())
                .bind(now)
                .bind(owner)
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
                        .bind(owner)
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

    async fn release(&self, scope: &str, key: &str, owner: &str) -> Result<(), StoreError> {
        check_scope_and_key(scope, key)?;
        check_owner(owner)?;
        sqlx::query(RELEASE_SQL)
            .bind(scope)
            .bind(key)
            .bind(owner)
            .execute(self.pool())
            .await
            .map_err(backend)?;
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
        let renewed = sqlx::query(RENEW_SQL)
            .bind(scope)
            .bind(key)
            .bind(owner)
            .bind(now)
            .execute(self.pool())
            .await
            .map_err(backend)?
            .rows_affected();
        Ok(renewed == 1)
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

    async fn execute_fresh(
        &self,
        batch: &[FreshCommand],
        now: DateTime<Utc>,
    ) -> Result<Vec<Fresh>, StoreError> {
        check_fresh_batch(batch)?;
        let eligible = first_claims(batch);
        let mut answers = vec![Fresh::NotFresh; batch.len()];
        let candidates: Vec<&FreshCommand> = batch
            .iter()
            .zip(&eligible)
            .filter_map(|(c, e)| e.then_some(c))
            .collect();
        if candidates.is_empty() {
            return Ok(answers);
        }
        let mut tx = self.pool().begin().await.map_err(backend)?;
        let claimed_rows = sqlx::query(FRESH_CLAIM_SQL)
            .bind(
                candidates
                    .iter()
                    .map(|c| c.scope.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                candidates
                    .iter()
                    .map(|c| c.key.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                candidates
                    .iter()
                    .map(|c| c.request_hash.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(
                candidates
                    .iter()
                    .map(|c| c.response.as_ref().map(|r| i32::from(r.status)))
                    .collect::<Vec<_>>(),
            )
            .bind(
                candidates
                    .iter()
                    .map(|c| c.response.as_ref().map(|r| r.content_type.as_str()))
                    .collect::<Vec<_>>(),
            )
            .bind(
                candidates
                    .iter()
                    .map(|c| c.response.as_ref().map(|r| r.body.as_slice()))
                    .collect::<Vec<_>>(),
            )
            .bind(now)
            .bind(
                candidates
                    .iter()
                    .map(|c| c.owner.as_str())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        let mut claimed = std::collections::HashSet::with_capacity(claimed_rows.len());
        for row in &claimed_rows {
            let scope: String = row.try_get("scope").map_err(backend)?;
            let key: String = row.try_get("key").map_err(backend)?;
            claimed.insert((scope, key));
        }
        let to_write: Vec<usize> = (0..batch.len())
            .filter(|&i| {
                eligible[i] && claimed.contains(&(batch[i].scope.clone(), batch[i].key.clone()))
            })
            .collect();
        // Streams that already have events (a replay after a lost record):
        // those commands are not fresh, and their claims go again.
        let existing: Vec<String> = sqlx::query_scalar(EXISTING_STREAMS_SQL)
            .bind(
                to_write
                    .iter()
                    .map(|&i| batch[i].stream.as_str())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        let (to_write, unclaim): (Vec<usize>, Vec<usize>) = to_write
            .into_iter()
            .partition(|&i| !existing.iter().any(|s| s == batch[i].stream.as_str()));
        if !unclaim.is_empty() {
            sqlx::query(UNCLAIM_SQL)
                .bind(
                    unclaim
                        .iter()
                        .map(|&i| batch[i].scope.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    unclaim
                        .iter()
                        .map(|&i| batch[i].key.as_str())
                        .collect::<Vec<_>>(),
                )
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        if to_write.is_empty() {
            tx.rollback().await.map_err(backend)?;
            return Ok(answers);
        }
        let streams: Vec<(&ledger_core::ids::StreamId, &[ledger_core::NewEvent])> = to_write
            .iter()
            .map(|&i| (&batch[i].stream, batch[i].events.as_slice()))
            .collect();
        match insert_new_streams(&mut tx, &streams, recorded_now()).await {
            Ok(Some(results)) => {
                tx.commit().await.map_err(backend)?;
                for (i, result) in to_write.into_iter().zip(results) {
                    answers[i] = Fresh::Written(result);
                }
                Ok(answers)
            }
            Ok(None) => {
                // Aborted: nothing of this transaction stays.
                tx.rollback().await.map_err(backend)?;
                if to_write.len() == 1 {
                    // The one command to write met its stream: not fresh.
                    return Ok(answers);
                }
                Err(StoreError::Backend(
                    "a concurrent writer created a stream of the fresh batch; retry its commands one by one"
                        .to_owned(),
                ))
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}
