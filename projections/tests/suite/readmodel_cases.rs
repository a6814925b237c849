//! Read-model cases every backend runs unchanged (included by
//! `adapters/{postgres,sqlite}/tests/readmodel.rs`, which supply a fresh
//! store). They live with the adapters' tests because the adapters depend on
//! `ledger-projections`, not the other way round.

use std::sync::Arc;

use ledger_core::ids::{EventId, StreamId};
use ledger_core::{Checkpoint, ExpectedVersion, NewEvent};
use ledger_projections::generator::{decoded, generate, write_history};
use ledger_projections::readmodel::{
    Dialect, ReadModel, ReadModelProjection, ReadModelStore, diff_shadow_against_live,
    rebuild_into_shadow, swap_shadow,
};
use ledger_projections::runtime::{Health, Projector, RuntimeError};
use ledger_store::EventStore;
use uuid::Uuid;

pub struct Fixture {
    pub events: Arc<dyn EventStore>,
    pub models: Arc<dyn ReadModelStore>,
}

fn projector(f: &Fixture, batch: u32) -> Projector<ReadModelProjection> {
    Projector::new(
        f.events.clone(),
        ReadModelProjection::new(f.models.clone(), &ReadModel::ALL, false),
    )
    .with_batch(batch)
}

async fn write(f: &Fixture, seed: u64, orders: u32) -> usize {
    let parts = generate(seed, orders);
    write_history(f.events.as_ref(), &parts, 500, &|_| {})
        .await
        .unwrap();
    parts.iter().map(|p| p.events.len()).sum()
}

async fn count(f: &Fixture, sql: &str) -> i64 {
    let rows = f.models.query_text(sql, "").await.unwrap();
    rows[0].parse().unwrap()
}

/// Rebuilds every model into its shadow tables (no swap).
async fn rebuild_all(f: &Fixture) {
    rebuild_into_shadow(
        f.events.clone(),
        f.models.clone(),
        &ReadModel::ALL,
        None,
        &|_| {},
    )
    .await
    .unwrap();
}

/// Rows in `table`.
async fn rows_in(f: &Fixture, table: &str) -> i64 {
    count(
        f,
        &format!("select cast(count(*) as text) from {table} where $1 = $1"),
    )
    .await
}

async fn assert_shadow_equals_live(f: &Fixture) {
    rebuild_all(f).await;
    let diffs = diff_shadow_against_live(f.models.as_ref(), &ReadModel::ALL)
        .await
        .unwrap();
    assert!(
        diffs.is_empty(),
        "{} diffs, first: {}",
        diffs.len(),
        diffs
            .iter()
            .take(5)
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

pub async fn rebuild_equals_incremental(f: Fixture, settle: impl AsyncFn()) {
    for (seed, orders) in [(1_u64, 40_u32), (2, 25)] {
        write(&f, seed, orders).await;
        settle().await;
        // Uneven batches, and a "restart" (a new projector) in between.
        let mut p = projector(&f, 7);
        for _ in 0..5 {
            p.run_once().await.unwrap();
        }
        let mut p = projector(&f, 113);
        p.run_once().await.unwrap();
        let mut p = projector(&f, 31);
        p.catch_up().await.unwrap();
        assert_eq!(p.status().health, Health::Running);
        assert_eq!(p.status().lag(), Some(0));
    }
    assert!(
        count(
            &f,
            "select cast(count(*) as text) from order_view where $1 = $1"
        )
        .await
            > 0
    );
    assert_shadow_equals_live(&f).await;
    // And the swap: live becomes the rebuilt copy, views survive, and a
    // running projector notices its checkpoint moved instead of re-applying.
    let mut live = projector(&f, 50);
    live.catch_up().await.unwrap();
    swap_shadow(f.models.as_ref(), &ReadModel::ALL)
        .await
        .unwrap();
    write(&f, 3, 10).await;
    settle().await;
    live.catch_up().await.unwrap_or_default();
    live.catch_up().await.unwrap();
    for view in [
        "seller_balance",
        "daily_money",
        "seller_refund_rate",
        "stuck_item",
    ] {
        count(
            &f,
            &format!("select cast(count(*) as text) from {view} where $1 = $1"),
        )
        .await;
    }
    assert_shadow_equals_live(&f).await;
    keys_hold_after_the_swap(&f).await;
}

/// Every live table refuses a second row with a stored key after a swap
/// (SQLite loads append-only shadows without their keys and builds them
/// in the swap), and a shadow holding a duplicate never reaches live: the
/// insert (key kept while loading) or the swap (key built there) fails, and
/// live keeps its rows.
async fn keys_hold_after_the_swap(f: &Fixture) {
    for table in ReadModel::ALL
        .iter()
        .flat_map(|m| m.tables())
        .map(|t| t.name)
    {
        assert!(rows_in(f, table).await > 0, "{table} has rows to duplicate");
        let dup = f
            .models
            .execute_all(&[format!("insert into {table} select * from {table} limit 1")])
            .await;
        assert!(dup.is_err(), "live {table} took a duplicate key");
    }
    let posting_rows = rows_in(f, "posting").await;
    rebuild_all(f).await;
    let duplicated = f
        .models
        .execute_all(&[
            "insert into posting__shadow select * from posting__shadow limit 1".to_owned(),
        ])
        .await
        .is_ok();
    assert_eq!(
        duplicated,
        f.models.dialect() == Dialect::Sqlite,
        "only SQLite loads posting's shadow without its key"
    );
    if duplicated {
        // verify's diff names it (it never swaps).
        let diffs = diff_shadow_against_live(f.models.as_ref(), &ReadModel::ALL)
            .await
            .unwrap();
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert_eq!(
            (diffs[0].table.as_str(), diffs[0].column.as_str()),
            ("posting", "<duplicate key>")
        );
        assert!(diffs[0].key.starts_with("entry_id="), "{}", diffs[0].key);
        let swapped = swap_shadow(f.models.as_ref(), &ReadModel::ALL).await;
        assert!(
            swapped.is_err(),
            "a shadow with a duplicate key was swapped in"
        );
    }
    assert_eq!(
        rows_in(f, "posting").await,
        posting_rows,
        "live posting kept its rows"
    );
}

pub async fn checkpoint_atomicity(f: Fixture, settle: impl AsyncFn()) {
    let parts = generate(7, 50);
    let expected_entries: usize = decoded(&parts)
        .iter()
        .zip(parts.iter().flat_map(|p| p.events.iter()))
        .map(|((_, e), ne)| ledger_core::postings::postings(ne.event_id, e).len())
        .sum();
    write_history(f.events.as_ref(), &parts, 500, &|_| {})
        .await
        .unwrap();
    settle().await;
    let mut p = projector(&f, 40);
    p.run_once().await.unwrap();
    p.run_once().await.unwrap();
    let before = f.models.load_checkpoint("journal").await.unwrap();
    let entries_before = count(
        &f,
        "select cast(count(*) as text) from journal_entry where $1 = $1",
    )
    .await;
    p.handler_mut().inject_fault_once();
    let err = p.run_once().await.unwrap_err();
    assert!(matches!(err, RuntimeError::Transient { .. }), "{err:?}");
    // Rows were written and rolled back with the missing checkpoint.
    assert_eq!(f.models.load_checkpoint("journal").await.unwrap(), before);
    assert_eq!(
        count(
            &f,
            "select cast(count(*) as text) from journal_entry where $1 = $1"
        )
        .await,
        entries_before
    );
    drop(p);
    // "Restart": a new projector resumes from the saved checkpoint.
    let mut p = projector(&f, 64);
    p.catch_up().await.unwrap();
    assert_eq!(
        count(
            &f,
            "select cast(count(*) as text) from journal_entry where $1 = $1"
        )
        .await,
        i64::try_from(expected_entries).unwrap()
    );
    assert_shadow_equals_live(&f).await;
}

pub async fn poison_event_stalls(f: Fixture, settle: impl AsyncFn()) {
    write(&f, 11, 5).await;
    let stream = StreamId::new(format!("order-{}", Uuid::new_v4())).unwrap();
    f.events
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &[NewEvent {
                event_id: EventId(Uuid::new_v4()),
                event_type: "OrderPlaced".to_owned(),
                schema_version: 1,
                payload: r#"{"bogus":true}"#.to_owned(),
                metadata: "{}".to_owned(),
            }],
        )
        .await
        .unwrap();
    write(&f, 12, 5).await;
    settle().await;
    let mut p = projector(&f, 1_000);
    let err = p.catch_up().await.unwrap_err();
    match &err {
        RuntimeError::Stalled {
            stream: s, version, ..
        } => {
            assert_eq!(s, stream.as_str());
            assert_eq!(*version, 1);
        }
        other => panic!("expected a stall, got {other:?}"),
    }
    assert!(matches!(
        p.status().health,
        Health::Stalled { version: 1, .. }
    ));
    // Nothing past (or including) the bad event was applied: the checkpoint
    // sits before it, and a retry stalls at the same place.
    let cp = f
        .models
        .load_checkpoint("orders")
        .await
        .unwrap()
        .unwrap_or(Checkpoint::START);
    let bad = f
        .events
        .read_stream(&stream, 1, 1)
        .await
        .unwrap()
        .remove(0)
        .checkpoint();
    assert!(cp < bad);
    assert_eq!(p.status().checkpoint, cp);
    // Everything before the bad event was applied: the checkpoint is the
    // event just before it in the feed.
    let before: Vec<_> = f.events.read_all(cp, 1).await.unwrap();
    assert_eq!(before[0].checkpoint(), bad);
    let mut again = projector(&f, 3);
    assert!(matches!(
        again.catch_up().await,
        Err(RuntimeError::Stalled { .. })
    ));
    assert_eq!(
        f.models
            .load_checkpoint("orders")
            .await
            .unwrap()
            .unwrap_or(Checkpoint::START),
        cp
    );
}

pub async fn journal_balances(f: Fixture, settle: impl AsyncFn()) {
    write(&f, 21, 80).await;
    settle().await;
    projector(&f, 97).catch_up().await.unwrap();
    let unbalanced = f
        .models
        .query_text(
            "select entry_id from posting where $1 = $1 group by entry_id, currency \
             having sum(case when side = 'debit' then amount_minor else -amount_minor end) <> 0",
            "",
        )
        .await
        .unwrap();
    assert!(unbalanced.is_empty(), "unbalanced entries: {unbalanced:?}");
    let wrong = f
        .models
        .query_text(
            "select b.account from account_balance b left join ( \
               select account, currency, \
                 sum(case when side = 'debit' then amount_minor else 0 end) as d, \
                 sum(case when side = 'credit' then amount_minor else 0 end) as c \
               from posting group by account, currency) p \
             on p.account = b.account and p.currency = b.currency \
             where $1 = $1 and (coalesce(p.d, 0) <> b.debit_minor or coalesce(p.c, 0) <> b.credit_minor)",
            "",
        )
        .await
        .unwrap();
    assert!(
        wrong.is_empty(),
        "balances disagree with postings: {wrong:?}"
    );
    assert!(
        count(
            &f,
            "select cast(count(*) as text) from posting where $1 = $1"
        )
        .await
            > 0
    );
    // The whole journal nets to zero per currency.
    let net = f
        .models
        .query_text(
            "select currency from account_balance where $1 = $1 group by currency \
             having sum(debit_minor) <> sum(credit_minor)",
            "",
        )
        .await
        .unwrap();
    assert!(net.is_empty(), "{net:?}");
}

pub async fn hand_edited_row_is_reported(f: Fixture, settle: impl AsyncFn()) {
    write(&f, 31, 20).await;
    settle().await;
    projector(&f, 500).catch_up().await.unwrap();
    let id = f
        .models
        .query_text("select min(order_id) from order_view where $1 = $1", "")
        .await
        .unwrap()
        .remove(0);
    f.models
        .execute_all(&[format!(
            "update order_view set status = 'hand_edited' where order_id = '{id}'"
        )])
        .await
        .unwrap();
    rebuild_all(&f).await;
    let diffs = diff_shadow_against_live(f.models.as_ref(), &ReadModel::ALL)
        .await
        .unwrap();
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    let d = &diffs[0];
    assert_eq!(d.table, "order_view");
    assert_eq!(d.key, format!("order_id={id}"));
    assert_eq!(d.column, "status");
    assert_eq!(d.live.as_deref(), Some("hand_edited"));
}

/// The entity cache bounded far below the history (live: a few entities;
/// rebuild: also small pages and transactions, so evicted entities are
/// reloaded from shadow rows written by earlier transactions, some still in
/// flight): rows stay identical to an unbounded fold.
pub async fn rebuild_equals_incremental_small_cache(f: Fixture, settle: impl AsyncFn()) {
    use ledger_projections::readmodel::{RebuildTuning, rebuild_into_shadow_tuned};
    write(&f, 4, 40).await;
    settle().await;
    let mut p = Projector::new(
        f.events.clone(),
        ReadModelProjection::new(f.models.clone(), &ReadModel::ALL, false)
            .with_cache_entities_max(3),
    )
    .with_batch(17);
    p.catch_up().await.unwrap();
    assert_eq!(p.status().lag(), Some(0));
    for (page_events, events_per_transaction, cache_entities_max) in
        [(23, 40, 5), (7, 1, 0), (64, 200, 30)]
    {
        rebuild_into_shadow_tuned(
            f.events.clone(),
            f.models.clone(),
            &ReadModel::ALL,
            None,
            &|_| {},
            RebuildTuning {
                page_events,
                events_per_transaction,
                cache_entities_max,
            },
        )
        .await
        .unwrap();
        let diffs = diff_shadow_against_live(f.models.as_ref(), &ReadModel::ALL)
            .await
            .unwrap();
        assert!(
            diffs.is_empty(),
            "tuning ({page_events}, {events_per_transaction}, {cache_entities_max}): {} diffs, first: {}",
            diffs.len(),
            diffs.first().map(ToString::to_string).unwrap_or_default()
        );
    }
    // And the unbounded rebuild agrees with the same live rows.
    assert_shadow_equals_live(&f).await;
}
