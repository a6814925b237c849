#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The process managers' work queue on SQLite: the shared cases (a real file
//! per case), two stores on one file ("processes") claiming at once, the
//! integer-microsecond storage, and the checkpoint table shared with the
//! read models.

mod common;

use chrono::TimeDelta;
use common::fresh_store;
use ledger_core::Checkpoint;
use ledger_projections::readmodel::ReadModelStore;
use ledger_sqlite::SqliteStore;
use ledger_store::work::WorkStore;
use ledger_store::work_conformance::{
    assert_each_once, at, drain_concurrently, fresh_manager, order,
};

mod sqlite {
    // `t` keeps the temporary directory alive for the whole case.
    ledger_store::work_suite!(t = crate::fresh_store().await, store = t.store.clone());
}

/// Tasks per store in the two-process race.
const TASKS_PER_STORE: usize = 4;
/// Rows the two-process race drains.
const TWO_STORE_ROWS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_claim_each_row_exactly_once() {
    let t = fresh_store().await;
    // Its own writer connection: SQLite's file lock, not this process's
    // writer queue, is what serialises the two.
    let two = SqliteStore::open(&t.path()).await.unwrap();
    let m = fresh_manager("two-stores");
    let expected: Vec<String> = (0..TWO_STORE_ROWS).map(|i| format!("s{i:03}")).collect();
    let orders: Vec<_> = expected.iter().map(|s| order(&m, s, at(0))).collect();
    t.store.schedule(&orders).await.unwrap();

    let claimed = drain_concurrently(
        &[t.store.clone(), two.clone()],
        TASKS_PER_STORE,
        &m,
        at(1),
        5,
    )
    .await;
    assert_each_once(&claimed, &expected);
    assert!(t.store.pending(&m).await.unwrap().is_empty());
    two.close().await;
}

#[tokio::test]
async fn timestamps_are_stored_as_integer_microseconds() {
    let t = fresh_store().await;
    let m = fresh_manager("storage");
    let due = at(0) + TimeDelta::nanoseconds(123_456_789);
    t.store.schedule(&[order(&m, "s", due)]).await.unwrap();
    let item = t
        .store
        .claim_due(&m, "w", at(1), 1, std::time::Duration::from_secs(2))
        .await
        .unwrap()
        .remove(0);
    let row: (String, i64, String, i64) = sqlx::query_as(
        "select typeof(due_at), due_at, typeof(claimed_until), claimed_until \
         from pm_work where manager = ?1",
    )
    .bind(&m)
    .fetch_one(t.store.reader())
    .await
    .unwrap();
    let micros = at(0).timestamp_micros();
    assert_eq!(
        row,
        (
            "integer".to_owned(),
            micros + 123_456,
            "integer".to_owned(),
            micros + 3_000_000
        )
    );
    assert_eq!(item.claimed_until, at(3));
}

#[tokio::test]
async fn checkpoints_live_in_projection_checkpoint_beside_the_read_models() {
    let t = fresh_store().await;
    let m = fresh_manager("shared");
    let name = format!("pm:{m}");
    let cp = Checkpoint {
        commit: 0,
        position: 42,
    };
    t.store.enqueue(&name, None, cp, &[]).await.unwrap();
    assert_eq!(
        ReadModelStore::load_checkpoint(&t.store, &name)
            .await
            .unwrap(),
        Some(cp)
    );
    // updated_at is written the way the read models write it.
    let updated_at: String =
        sqlx::query_scalar("select updated_at from projection_checkpoint where name = ?1")
            .bind(&name)
            .fetch_one(t.store.reader())
            .await
            .unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&updated_at).is_ok(),
        "{updated_at}"
    );

    let mut tx = t.store.begin_write().await.unwrap();
    sqlx::query(
        "insert into projection_checkpoint (name, commit_id, position, updated_at) \
         values ('pm:other', 0, 4, '2026-11-27T00:00:00.000Z')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        WorkStore::load_checkpoint(&t.store, "pm:other")
            .await
            .unwrap(),
        Some(Checkpoint {
            commit: 0,
            position: 4
        })
    );
}
