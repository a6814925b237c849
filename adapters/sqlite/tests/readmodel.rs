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

/// A rebuild's shadow-only batches run with the larger writer cache; the
/// next live batch shrinks it back, so a server does not keep a rebuild's
/// cache for good.
#[tokio::test]
async fn shadow_batches_get_the_larger_cache_and_live_ones_shrink_it() {
    use ledger_core::Checkpoint;
    use ledger_projections::readmodel::{Batch, CheckpointMove, ReadModel, ReadModelStore};
    use ledger_sqlite::{SHADOW_WRITER_CACHE_KIB, WRITER_CACHE_KIB};

    let t = common::fresh_store().await;
    let cache_kib = || async {
        let pages: i64 = sqlx::query_scalar("pragma cache_size")
            .fetch_one(t.store.pool())
            .await
            .unwrap();
        -pages
    };
    let to = Checkpoint {
        commit: 0,
        position: 1,
    };
    let batch = |shadow: bool| Batch {
        writes: Vec::new(),
        checkpoints: vec![CheckpointMove {
            name: ReadModel::Journal.checkpoint_name(shadow),
            from: None,
            to,
        }],
        fail_before_checkpoint: false,
    };
    let shadow = batch(true);
    assert!(shadow.is_shadow_only());
    t.store.apply_batch(shadow).await.unwrap();
    assert_eq!(cache_kib().await, i64::from(SHADOW_WRITER_CACHE_KIB));
    let live = batch(false);
    assert!(!live.is_shadow_only());
    t.store.apply_batch(live).await.unwrap();
    assert_eq!(cache_kib().await, i64::from(WRITER_CACHE_KIB));
}
