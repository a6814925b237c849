#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shared read-model cases on the real Postgres, in a fresh `t_<uuid>`
//! schema per test.

#[path = "../../../projections/tests/suite/readmodel_cases.rs"]
mod cases;
mod common;

use std::sync::Arc;

use cases::Fixture;

macro_rules! cases {
    ($($name:ident),*) => {$(
        #[tokio::test]
        async fn $name() {
            let store = common::fresh_store().await;
            let f = Fixture {
                events: Arc::new(store.clone()),
                models: Arc::new(store.clone()),
            };
            // Wait (by polling the horizon, not a delay) until what was
            // written is visible to `read_all`.
            let settle = async || common::settle(&store).await;
            cases::$name(f, settle).await;
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
