#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shared HTTP-edge port cases (idempotency records, webhook log) and
//! the webhook-log retention cases, run against Postgres (one fresh schema
//! per case, see `common::fresh_store`).

mod common;

#[macro_use]
#[path = "../../../projections/tests/suite/retention_cases.rs"]
mod retention_cases;

use common::fresh_store;

mod postgres {
    ledger_store::ports_suite!(crate::fresh_store().await);
}

mod retention {
    retention_suite!(crate::fresh_store().await);
}
