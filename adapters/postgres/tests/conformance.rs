#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shared store conformance suite, run against Postgres (one fresh schema
//! per case, see `common::fresh_store`).

mod common;

use common::fresh_store;

mod postgres {
    ledger_store::conformance_suite!(crate::fresh_store().await);
}

/// The same suite with every append going through the group commit.
mod postgres_grouped {
    ledger_store::conformance_suite!(ledger_store::conformance::Grouped::new(
        crate::fresh_store().await
    ));
}
