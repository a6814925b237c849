#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The process managers' work queue on Postgres: the shared cases (one fresh
//! schema per case, see `common::fresh_store`), two pools ("processes")
//! claiming at once, `skip locked` against a held row lock, and the
//! checkpoint table shared with the read models.

mod common;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{database_url, fresh_store};
use ledger_core::Checkpoint;
use ledger_postgres::PgStore;
use ledger_projections::readmodel::ReadModelStore;
use ledger_store::work::WorkStore;
use ledger_store::work_conformance::{
    LEASE, assert_each_once, at, drain_concurrently, fresh_manager, order,
};
use sqlx::postgres::PgConnectOptions;

mod postgres {
    ledger_store::work_suite!(crate::fresh_store().await);
}

/// Tasks per pool in the two-process race.
const TASKS_PER_POOL: usize = 4;
/// Rows the two-process race drains.
const TWO_POOL_ROWS: usize = 200;
/// Hang guard for a claim that must not wait on a held row lock. A claim
/// that waits would hang until the lock holder ends (which the test only
/// does afterwards), so reaching this means `skip locked` is missing.
const CLAIM_WAIT_MAX: Duration = Duration::from_secs(10);

/// A second store (its own pool, as another process would have) on the
/// schema `store` uses.
async fn second_process(store: &PgStore) -> PgStore {
    let schema: String = sqlx::query_scalar("select current_schema()::text")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let options = PgConnectOptions::from_str(&database_url())
        .unwrap()
        .options([("search_path", schema.as_str())]);
    PgStore::connect_with(options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_claim_each_row_exactly_once() {
    let one = fresh_store().await;
    let two = second_process(&one).await;
    let m = fresh_manager("two-pools");
    let expected: Vec<String> = (0..TWO_POOL_ROWS).map(|i| format!("s{i:03}")).collect();
    let orders: Vec<_> = expected.iter().map(|s| order(&m, s, at(0))).collect();
    one.schedule(&orders).await.unwrap();

    let claimed =
        drain_concurrently(&[one.clone(), two.clone()], TASKS_PER_POOL, &m, at(1), 5).await;
    assert_each_once(&claimed, &expected);
    assert!(one.pending(&m).await.unwrap().is_empty());
    assert!(two.pending(&m).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claim_skips_rows_another_transaction_locks_instead_of_waiting() {
    let store = fresh_store().await;
    let m = fresh_manager("skip-locked");
    store
        .schedule(&[
            order(&m, "a", at(0)),
            order(&m, "b", at(1)),
            order(&m, "c", at(2)),
        ])
        .await
        .unwrap();

    // Another claimer's statement in flight: rows a and b locked.
    let mut holder = store.pool().begin().await.unwrap();
    let locked: Vec<String> = sqlx::query_scalar(
        "select stream_id from pm_work where manager = $1 and stream_id in ('a', 'b') \
         order by stream_id for update",
    )
    .bind(&m)
    .fetch_all(&mut *holder)
    .await
    .unwrap();
    assert_eq!(locked, ["a", "b"]);

    let got = tokio::time::timeout(CLAIM_WAIT_MAX, store.claim_due(&m, "w", at(5), 10, LEASE))
        .await
        .expect("claim_due waited on a locked row instead of skipping it")
        .unwrap();
    assert_eq!(
        got.iter().map(|i| i.stream_id.as_str()).collect::<Vec<_>>(),
        ["c"]
    );

    holder.rollback().await.unwrap();
    let rest = store.claim_due(&m, "w", at(5), 10, LEASE).await.unwrap();
    assert_eq!(
        rest.iter()
            .map(|i| i.stream_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
}

#[tokio::test]
async fn checkpoints_live_in_projection_checkpoint_beside_the_read_models() {
    let store = fresh_store().await;
    let m = fresh_manager("shared");
    let name = format!("pm:{m}");
    let cp = Checkpoint {
        commit: 7,
        position: 42,
    };
    store.enqueue(&name, None, cp, &[]).await.unwrap();
    assert_eq!(
        ReadModelStore::load_checkpoint(&store, &name)
            .await
            .unwrap(),
        Some(cp)
    );
    let row: (i64, i64) =
        sqlx::query_as("select commit_id, position from projection_checkpoint where name = $1")
            .bind(&name)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(row, (7, 42));

    // And a checkpoint written there by anyone reads back through the port.
    sqlx::query(
        "insert into projection_checkpoint (name, commit_id, position, updated_at) \
         values ('pm:other', 3, 4, now())",
    )
    .execute(store.pool())
    .await
    .unwrap();
    assert_eq!(
        WorkStore::load_checkpoint(&store, "pm:other")
            .await
            .unwrap(),
        Some(Checkpoint {
            commit: 3,
            position: 4
        })
    );
}

#[tokio::test]
async fn due_at_is_a_timestamptz_at_microseconds() {
    let store = fresh_store().await;
    let m = fresh_manager("storage");
    let due = at(0) + chrono::TimeDelta::nanoseconds(123_456_789);
    store.schedule(&[order(&m, "s", due)]).await.unwrap();
    let (stored, text): (DateTime<Utc>, String) = sqlx::query_as(
        "select due_at, to_char(due_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') \
         from pm_work where manager = $1",
    )
    .bind(&m)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(stored, at(0) + chrono::TimeDelta::microseconds(123_456));
    assert_eq!(text, "2026-11-27T00:00:00.123456");
}
