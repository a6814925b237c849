//! The shared conformance suite against a real SQLite file per case.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fresh_store;

mod sqlite {
    ledger_store::conformance_suite!(crate::fresh_store().await);
}

/// The same suite with every append going through the group commit.
mod sqlite_grouped {
    ledger_store::conformance_suite!(ledger_store::conformance::Grouped::new(
        crate::fresh_store().await
    ));
}
