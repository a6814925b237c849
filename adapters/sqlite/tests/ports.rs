#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shared HTTP-edge port cases (idempotency records, webhook log) and
//! the webhook-log retention cases, run against a real SQLite file per case.

mod common;

#[macro_use]
#[path = "../../../projections/tests/suite/retention_cases.rs"]
mod retention_cases;

use common::fresh_store;

mod sqlite {
    // `t` keeps the temporary directory alive for the whole case.
    ledger_store::ports_suite!(t = crate::fresh_store().await, store = t.store.clone());
}

mod retention {
    retention_suite!(t = crate::fresh_store().await, store = t.store.clone());
}

/// The database itself refuses the row (a trigger): the appends of its
/// transaction are rolled back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_append_whose_row_the_database_refuses_writes_nothing() {
    let t = fresh_store().await;
    sqlx::raw_sql(ledger_sqlite::REFUSE_WEBHOOK_LOG_ROWS_SQL)
        .execute(t.store.pool())
        .await
        .unwrap();
    ledger_store::ports_conformance::logged_append_with_a_row_refused_by_the_database_writes_nothing(&t.store).await;
}
