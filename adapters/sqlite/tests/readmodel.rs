#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shared read-model cases on a real SQLite file in a TempDir.

#[path = "../../../projections/tests/suite/readmodel_cases.rs"]
mod cases;
mod common;

use std::sync::Arc;

use cases::Fixture;

async fn fixture() -> (Fixture, common::TestStore) {
    let t = common::fresh_store().await;
    let f = Fixture {
        events: Arc::new(t.store.clone()),
        models: Arc::new(t.store.clone()),
    };
    (f, t)
}

async fn no_settle() {}

macro_rules! cases {
    ($($name:ident),*) => {$(
        #[tokio::test]
        async fn $name() {
            let (f, _keep) = fixture().await;
            cases::$name(f, no_settle).await;
        }
    )*};
}

cases!(
    rebuild_equals_incremental,
    rebuild_equals_incremental_small_cache,
    checkpoint_atomicity,
    poison_event_stalls,
    journal_balances,
    hand_edited_row_is_reported
);
