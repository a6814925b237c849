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
