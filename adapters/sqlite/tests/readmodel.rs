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

/// Diffing a shadow that loaded without its key first indexes the key, so
/// the diff's join looks rows up instead of scanning the shadow once per
/// live row (quadratic: a 1M-event `verify --projections` did not finish).
#[tokio::test]
async fn diffs_look_shadow_rows_up_by_key() {
    use ledger_projections::generator::{generate, write_history};
    use ledger_projections::readmodel::{
        Dialect, ReadModel, diff_shadow_against_live, rebuild_into_shadow,
    };

    let t = common::fresh_store().await;
    write_history(&t.store, &generate(7, 20), 100, &|_| {})
        .await
        .unwrap();
    let events: Arc<dyn ledger_store::EventStore> = Arc::new(t.store.clone());
    let models: Arc<dyn ledger_projections::readmodel::ReadModelStore> = Arc::new(t.store.clone());
    rebuild_into_shadow(events, Arc::clone(&models), &ReadModel::ALL, None, &|_| {})
        .await
        .unwrap();
    diff_shadow_against_live(models.as_ref(), &ReadModel::ALL)
        .await
        .unwrap();
    let keyless: Vec<_> = ReadModel::ALL
        .iter()
        .flat_map(|m| m.tables())
        .filter(|t| t.key_built_at_swap(Dialect::Sqlite, true))
        .collect();
    assert!(!keyless.is_empty());
    // With a handful of rows a scan costs what a lookup does, and SQLite
    // picks either depending on whether the connection has statistics:
    // only tables big enough for the choice to matter are checked.
    let mut checked = 0;
    for table in keyless {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select count(*) from {}",
            table.table_name(true)
        )))
        .fetch_one(t.store.reader())
        .await
        .unwrap();
        if rows < 50 {
            continue;
        }
        checked += 1;
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "explain query plan {}",
            table.diff_sql(Dialect::Sqlite)
        )))
        .bind("1000")
        .fetch_all(t.store.reader())
        .await
        .unwrap();
        let details: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
        assert!(
            details
                .iter()
                .any(|d| d.starts_with("SEARCH s USING") && d.contains("INDEX")),
            "{}: {details:?}",
            table.name
        );
        assert!(
            !details.iter().any(|d| d.starts_with("SCAN s LEFT-JOIN")),
            "{}: {details:?}",
            table.name
        );
    }
    assert!(
        checked >= 2,
        "only {checked} key-less tables were big enough to check"
    );
}
