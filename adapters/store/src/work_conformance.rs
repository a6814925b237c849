//! Shared cases for the process managers' work queue ([`WorkStore`]) that
//! every backend runs unchanged through [`work_suite!`](crate::work_suite),
//! like [`conformance_suite!`](crate::conformance_suite) does for the event
//! store.
//!
//! A backend's test file does one of:
//!
//! ```ignore
//! mod postgres {
//!     // The factory yields the store itself.
//!     ledger_store::work_suite!(crate::fresh_store().await);
//! }
//! mod sqlite {
//!     // The factory yields a holder (say, a store and its temporary
//!     // directory) that must outlive the case; `store` projects the store.
//!     ledger_store::work_suite!(holder = crate::fresh_store().await, store = holder.store.clone());
//! }
//! ```
//!
//! **Requirements:** the store is `Clone` sharing one pool (or state), so
//! cases can race it from spawned tokio tasks. Every case names its managers
//! and checkpoints after a fresh run id, so a factory may hand every case
//! the same database.
//!
//! **Guarantees:** every case asserts exact values (whole [`WorkItem`]s,
//! error values, orders), so each one can fail. Time is passed in, never
//! read; concurrency is real (tasks on a multi-thread runtime against the
//! backend's pool, released together by a barrier); nothing sleeps.

// Test code shipped in the library so each backend's test crate can run it:
// panicking on an unexpected result is how a case fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ledger_core::Checkpoint;
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::StoreError;
use crate::work::{
    UNCLAIMED_OWNER, UNCLAIMED_UNTIL, WORK_LAST_ERROR_MAX, WORK_MANAGER_MAX, WORK_STREAM_ID_MAX,
    WorkItem, WorkOrder, WorkStore, checkpoint_moved, storable_error,
};

/// The lease the cases claim with.
pub const LEASE: Duration = Duration::from_secs(60);
/// Rows the concurrent-claim case drains.
pub const RACE_ROWS: usize = 100;
/// Tasks that drain them.
pub const RACE_TASKS: usize = 8;
/// Rows each of those tasks claims at a time.
pub const RACE_LIMIT: u32 = 5;
/// Tasks racing one `enqueue` from the same checkpoint.
pub const ENQUEUE_RACERS: usize = 8;

/// Runs every work-queue case as a `#[test]` named after it, each on its own
/// multi-thread runtime (see [`crate::conformance::__run_case`]).
#[macro_export]
macro_rules! work_suite {
    // `$holder` is the caller's identifier, so `$project` can name it.
    ($holder:ident = $factory:expr, store = $project:expr $(,)?) => {
        $crate::work_suite!(@list [store] [let $holder = $factory; let store = $project;]);
    };
    ($factory:expr $(,)?) => {
        $crate::work_suite!(@list [store] [let store = $factory;]);
    };
    (@list [$store:ident] [$($bind:tt)*]) => {
        $crate::work_suite!(@cases [$store] [$($bind)*];
            work_enqueue_creates_rows_and_moves_checkpoint,
            work_enqueue_from_wrong_checkpoint_writes_nothing,
            work_concurrent_enqueues_from_one_checkpoint_have_one_winner,
            work_upsert_bumps_version_and_replaces_due_at,
            work_claim_due_respects_due_at_limit_and_order,
            work_live_claim_is_not_reclaimed_until_lease_expires,
            work_finish_deletes_the_row,
            work_finish_after_reenqueue_keeps_row_unclaimed_at_new_due,
            work_reschedule_sets_due_attempts_error_and_releases,
            work_reschedule_after_reenqueue_keeps_earlier_due,
            work_last_error_is_clipped_and_nul_safe,
            work_timestamps_round_trip_at_microseconds,
            work_bad_input_is_refused_and_writes_nothing,
            work_concurrent_claimers_get_each_row_once,
        );
    };
    // One case per step: `$bind` repeats inside each test body, which a
    // single `$(…)+` over the cases cannot nest. `$store` and the `let` that
    // binds it come from the same expansion, so hygiene lets the case call
    // see the binding.
    (@cases [$store:ident] [$($bind:tt)*];) => {};
    (@cases [$store:ident] [$($bind:tt)*]; $case:ident $(, $rest:ident)* $(,)?) => {
        #[test]
        fn $case() {
            $crate::conformance::__run_case(::std::stringify!($case), async {
                $($bind)*
                $crate::work_conformance::$case(&$store).await;
            });
        }
        $crate::work_suite!(@cases [$store] [$($bind)*]; $($rest),*);
    };
}

/// 2026-11-27T00:00:00Z plus `secs`.
pub fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_737_600 + secs, 0).unwrap()
}

fn micros(n: i64) -> TimeDelta {
    TimeDelta::microseconds(n)
}

fn lease_end(now: DateTime<Utc>) -> DateTime<Utc> {
    now + TimeDelta::from_std(LEASE).unwrap()
}

/// A manager name no other case (or run) uses.
pub fn fresh_manager(label: &str) -> String {
    format!("{label}-{}", Uuid::new_v4().simple())
}

fn cp(commit: u64, position: u64) -> Checkpoint {
    Checkpoint { commit, position }
}

pub fn order(manager: &str, stream_id: &str, due_at: DateTime<Utc>) -> WorkOrder {
    WorkOrder {
        manager: manager.to_owned(),
        stream_id: stream_id.to_owned(),
        due_at,
    }
}

/// The row as `pending` shows a never-claimed, never-failed row.
fn fresh_row(manager: &str, stream_id: &str, due_at: DateTime<Utc>, version: i64) -> WorkItem {
    WorkItem {
        manager: manager.to_owned(),
        stream_id: stream_id.to_owned(),
        due_at,
        attempts: 0,
        version,
        last_error: None,
        claimed_until: UNCLAIMED_UNTIL,
        owner: UNCLAIMED_OWNER.to_owned(),
    }
}

fn claimed(row: WorkItem, owner: &str, until: DateTime<Utc>) -> WorkItem {
    WorkItem {
        owner: owner.to_owned(),
        claimed_until: until,
        ..row
    }
}

fn streams(items: &[WorkItem]) -> Vec<&str> {
    items.iter().map(|i| i.stream_id.as_str()).collect()
}

async fn claim_one<S: WorkStore>(
    store: &S,
    manager: &str,
    owner: &str,
    now: DateTime<Utc>,
) -> WorkItem {
    let mut got = store
        .claim_due(manager, owner, now, 1, LEASE)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "expected one due row of {manager} at {now}");
    got.remove(0)
}

/// Starts `tasks_per_store` tasks on each of `stores` together; each claims
/// `limit` rows of `manager` at a time (at `now`) and finishes them, until a
/// claim comes back empty. Returns every claimed stream id, in claim order
/// per task, and asserts no batch exceeded `limit`.
pub async fn drain_concurrently<S>(
    stores: &[S],
    tasks_per_store: usize,
    manager: &str,
    now: DateTime<Utc>,
    limit: u32,
) -> Vec<String>
where
    S: WorkStore + Clone + 'static,
{
    let barrier = Arc::new(Barrier::new(stores.len() * tasks_per_store));
    let mut tasks = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for t in 0..tasks_per_store {
            let store = store.clone();
            let barrier = barrier.clone();
            let manager = manager.to_owned();
            let owner = format!("worker-{s}-{t}");
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut mine = Vec::new();
                loop {
                    let batch = store
                        .claim_due(&manager, &owner, now, limit, LEASE)
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    assert!(
                        batch.len() <= limit as usize,
                        "{} rows over limit {limit}",
                        batch.len()
                    );
                    for item in batch {
                        assert_eq!(item.owner, owner);
                        assert_eq!(item.claimed_until, lease_end(now));
                        store.finish(&item).await.unwrap();
                        mine.push(item.stream_id);
                    }
                }
            }));
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Asserts `claimed` holds every one of `expected` exactly once.
pub fn assert_each_once(claimed: &[String], expected: &[String]) {
    let distinct: HashSet<&String> = claimed.iter().collect();
    assert_eq!(
        distinct.len(),
        claimed.len(),
        "a row was claimed twice: {} claims of {} distinct rows",
        claimed.len(),
        distinct.len()
    );
    let expected: HashSet<&String> = expected.iter().collect();
    assert_eq!(distinct, expected, "claimed rows differ from the due rows");
}

// ---------------------------------------------------------------------------
// Cases.
// ---------------------------------------------------------------------------

pub async fn work_enqueue_creates_rows_and_moves_checkpoint<S: WorkStore>(store: &S) {
    let m = fresh_manager("enqueue");
    let name = format!("pm:{m}");
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), None);
    assert!(store.pending(&m).await.unwrap().is_empty());

    store
        .enqueue(
            &name,
            None,
            cp(1, 10),
            &[order(&m, "s1", at(5)), order(&m, "s2", at(3))],
        )
        .await
        .unwrap();
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), Some(cp(1, 10)));
    assert_eq!(
        store.pending(&m).await.unwrap(),
        vec![fresh_row(&m, "s2", at(3), 1), fresh_row(&m, "s1", at(5), 1)]
    );

    // A batch with nothing to schedule still moves the checkpoint.
    store
        .enqueue(&name, Some(cp(1, 10)), cp(2, 20), &[])
        .await
        .unwrap();
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), Some(cp(2, 20)));
    assert_eq!(store.pending(&m).await.unwrap().len(), 2);
}

pub async fn work_enqueue_from_wrong_checkpoint_writes_nothing<S: WorkStore>(store: &S) {
    let m = fresh_manager("stale");
    let name = format!("pm:{m}");
    store
        .enqueue(&name, None, cp(1, 10), &[order(&m, "s1", at(0))])
        .await
        .unwrap();
    let batch = [order(&m, "s2", at(1)), order(&m, "s1", at(2))];

    // "No checkpoint yet" when there is one.
    let err = store
        .enqueue(&name, None, cp(2, 20), &batch)
        .await
        .unwrap_err();
    assert_eq!(err, checkpoint_moved(&name, None, Some(cp(1, 10))));
    // A checkpoint that is not the stored one.
    let err = store
        .enqueue(&name, Some(cp(1, 9)), cp(2, 20), &batch)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        checkpoint_moved(&name, Some(cp(1, 9)), Some(cp(1, 10)))
    );
    assert!(
        err.is_transient(),
        "the runner retries from the stored checkpoint"
    );
    // A checkpoint where none is stored.
    let other = format!("pm:{m}:other");
    let err = store
        .enqueue(&other, Some(cp(1, 10)), cp(2, 20), &batch)
        .await
        .unwrap_err();
    assert_eq!(err, checkpoint_moved(&other, Some(cp(1, 10)), None));

    // Nothing of those batches landed: no new row, no upsert, no checkpoint.
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), Some(cp(1, 10)));
    assert_eq!(store.load_checkpoint(&other).await.unwrap(), None);
    assert_eq!(
        store.pending(&m).await.unwrap(),
        vec![fresh_row(&m, "s1", at(0), 1)]
    );

    // From the right checkpoint it lands once; replaying it does not.
    store
        .enqueue(&name, Some(cp(1, 10)), cp(2, 20), &batch)
        .await
        .unwrap();
    let err = store
        .enqueue(&name, Some(cp(1, 10)), cp(2, 20), &batch)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        checkpoint_moved(&name, Some(cp(1, 10)), Some(cp(2, 20)))
    );
    assert_eq!(
        store.pending(&m).await.unwrap(),
        vec![fresh_row(&m, "s2", at(1), 1), fresh_row(&m, "s1", at(2), 2)]
    );
}

pub async fn work_concurrent_enqueues_from_one_checkpoint_have_one_winner<S>(store: &S)
where
    S: WorkStore + Clone + 'static,
{
    let m = fresh_manager("race-enqueue");
    let name = format!("pm:{m}");
    for round in 0..2u64 {
        // Round 0 races from no checkpoint, round 1 from the winner's.
        let from = store.load_checkpoint(&name).await.unwrap();
        let barrier = Arc::new(Barrier::new(ENQUEUE_RACERS));
        let mut tasks = Vec::new();
        for i in 0..ENQUEUE_RACERS {
            let (store, barrier, m, name) =
                (store.clone(), barrier.clone(), m.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let to = cp(round + 1, (round * 100) + i as u64 + 1);
                let batch = [order(&m, &format!("r{round}-t{i}"), at(0))];
                (i, to, store.enqueue(&name, from, to, &batch).await)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (i, to, outcome) = task.await.unwrap();
            match outcome {
                Ok(()) => winners.push((i, to)),
                Err(e) => {
                    let StoreError::Backend(message) = &e else {
                        panic!("loser {i} failed with {e:?}")
                    };
                    assert!(message.contains("moved"), "loser {i}: {message}");
                }
            }
        }
        let [(winner, to)] = winners[..] else {
            panic!("round {round}: winners {winners:?}; expected exactly one")
        };
        assert_eq!(store.load_checkpoint(&name).await.unwrap(), Some(to));
        let rows = store.pending(&m).await.unwrap();
        let round_rows: Vec<&str> = streams(&rows)
            .into_iter()
            .filter(|s| s.starts_with(&format!("r{round}-")))
            .collect();
        assert_eq!(round_rows, vec![format!("r{round}-t{winner}")]);
    }
}

pub async fn work_upsert_bumps_version_and_replaces_due_at<S: WorkStore>(store: &S) {
    let m = fresh_manager("upsert");
    store.schedule(&[order(&m, "s1", at(10))]).await.unwrap();
    assert_eq!(
        store.pending(&m).await.unwrap(),
        vec![fresh_row(&m, "s1", at(10), 1)]
    );

    // Give the row a failure to keep.
    let item = claim_one(store, &m, "a", at(10)).await;
    store.reschedule(&item, at(20), Some("e1")).await.unwrap();

    // Earlier and later due times both replace; attempts and error stay.
    store.schedule(&[order(&m, "s1", at(5))]).await.unwrap();
    let failed = |due_at, version| WorkItem {
        attempts: 1,
        last_error: Some("e1".to_owned()),
        ..fresh_row(&m, "s1", due_at, version)
    };
    assert_eq!(store.pending(&m).await.unwrap(), vec![failed(at(5), 2)]);
    store.schedule(&[order(&m, "s1", at(30))]).await.unwrap();
    assert_eq!(store.pending(&m).await.unwrap(), vec![failed(at(30), 3)]);

    // Orders for one row in one call collapse to the last: one bump.
    store
        .schedule(&[
            order(&m, "s1", at(7)),
            order(&m, "s2", at(8)),
            order(&m, "s1", at(9)),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.pending(&m).await.unwrap(),
        vec![fresh_row(&m, "s2", at(8), 1), failed(at(9), 4)]
    );

    // enqueue upserts by the same rule.
    let name = format!("pm:{m}");
    store
        .enqueue(
            &name,
            None,
            cp(0, 1),
            &[order(&m, "s1", at(1)), order(&m, "s1", at(2))],
        )
        .await
        .unwrap();
    assert_eq!(store.pending(&m).await.unwrap()[0], failed(at(2), 5));

    // A live claim survives a re-enqueue: its holder still holds it.
    let held = claim_one(store, &m, "b", at(8)).await;
    assert_eq!(held, claimed(failed(at(2), 5), "b", lease_end(at(8))));
    store.schedule(&[order(&m, "s1", at(3))]).await.unwrap();
    assert_eq!(
        store.pending(&m).await.unwrap(),
        vec![
            claimed(failed(at(3), 6), "b", lease_end(at(8))),
            fresh_row(&m, "s2", at(8), 1)
        ]
    );

    // Nothing to schedule is fine.
    store.schedule(&[]).await.unwrap();
    assert_eq!(store.pending(&m).await.unwrap().len(), 2);
}

pub async fn work_claim_due_respects_due_at_limit_and_order<S: WorkStore>(store: &S) {
    let m = fresh_manager("claim");
    let other = fresh_manager("claim-other");
    store
        .schedule(&[
            order(&m, "c", at(30)),
            order(&m, "b", at(10)),
            order(&m, "a", at(10)),
            order(&m, "d", at(20)),
            order(&m, "e", at(50)),
            order(&other, "x", at(0)),
        ])
        .await
        .unwrap();
    let now = at(40);

    // Oldest due first, ties by stream id, at most `limit`.
    let first = store.claim_due(&m, "w1", now, 2, LEASE).await.unwrap();
    assert_eq!(
        first,
        vec![
            claimed(fresh_row(&m, "a", at(10), 1), "w1", lease_end(now)),
            claimed(fresh_row(&m, "b", at(10), 1), "w1", lease_end(now)),
        ]
    );
    // The rest that is due, not the claimed rows, not the future row.
    let second = store.claim_due(&m, "w2", now, 10, LEASE).await.unwrap();
    assert_eq!(streams(&second), vec!["d", "c"]);
    assert!(
        store
            .claim_due(&m, "w2", now, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    // A limit of zero claims nothing.
    assert!(
        store
            .claim_due(&m, "w2", at(50), 0, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    // due_at == now is due.
    let third = store.claim_due(&m, "w3", at(50), 10, LEASE).await.unwrap();
    assert_eq!(
        third,
        vec![claimed(
            fresh_row(&m, "e", at(50), 1),
            "w3",
            lease_end(at(50))
        )]
    );

    // The other manager's row was never touched.
    assert_eq!(
        store.pending(&other).await.unwrap(),
        vec![fresh_row(&other, "x", at(0), 1)]
    );
    // pending lists claimed rows too, by due time.
    let all = store.pending(&m).await.unwrap();
    assert_eq!(streams(&all), vec!["a", "b", "d", "c", "e"]);
    assert_eq!(
        all.iter().map(|i| i.owner.as_str()).collect::<Vec<_>>(),
        vec!["w1", "w1", "w2", "w2", "w3"]
    );
    assert!(all.iter().all(WorkItem::is_claimed));
}

pub async fn work_live_claim_is_not_reclaimed_until_lease_expires<S: WorkStore>(store: &S) {
    let m = fresh_manager("lease");
    store.schedule(&[order(&m, "s1", at(0))]).await.unwrap();
    let a = claim_one(store, &m, "a", at(0)).await;
    assert_eq!(a.claimed_until, at(60));

    assert!(
        store
            .claim_due(&m, "b", at(59), 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    // claimed_until == now: still live.
    assert!(
        store
            .claim_due(&m, "b", at(60), 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    // One microsecond later it has expired and another owner takes it.
    let later = at(60) + micros(1);
    let b = claim_one(store, &m, "b", later).await;
    assert_eq!(
        b,
        claimed(fresh_row(&m, "s1", at(0), 1), "b", lease_end(later))
    );

    // The first owner lost it: its finish and reschedule change nothing.
    store.finish(&a).await.unwrap();
    store.reschedule(&a, at(500), Some("late")).await.unwrap();
    assert_eq!(store.pending(&m).await.unwrap(), vec![b.clone()]);

    // The same owner name with an older claim is not the holder either.
    let b_again = claim_one(store, &m, "b", lease_end(later) + micros(1)).await;
    store.finish(&b).await.unwrap();
    assert_eq!(store.pending(&m).await.unwrap(), vec![b_again.clone()]);

    store.finish(&b_again).await.unwrap();
    assert!(store.pending(&m).await.unwrap().is_empty());
}

pub async fn work_finish_deletes_the_row<S: WorkStore>(store: &S) {
    let m = fresh_manager("finish");
    store
        .schedule(&[order(&m, "s1", at(0)), order(&m, "s2", at(1))])
        .await
        .unwrap();
    let items = store.claim_due(&m, "w", at(5), 10, LEASE).await.unwrap();
    assert_eq!(streams(&items), vec!["s1", "s2"]);
    store.finish(&items[0]).await.unwrap();
    assert_eq!(store.pending(&m).await.unwrap(), vec![items[1].clone()]);
    // Finishing again (the row is gone) is a no-op, not an error.
    store.finish(&items[0]).await.unwrap();
    assert_eq!(store.pending(&m).await.unwrap(), vec![items[1].clone()]);
    // A finished row can be scheduled afresh.
    store.schedule(&[order(&m, "s1", at(9))]).await.unwrap();
    assert_eq!(
        store.pending(&m).await.unwrap()[1],
        fresh_row(&m, "s1", at(9), 1)
    );
}

pub async fn work_finish_after_reenqueue_keeps_row_unclaimed_at_new_due<S: WorkStore>(store: &S) {
    let m = fresh_manager("finish-moved");
    let name = format!("pm:{m}");
    store
        .enqueue(&name, None, cp(1, 1), &[order(&m, "s1", at(0))])
        .await
        .unwrap();
    let item = claim_one(store, &m, "a", at(0)).await;
    // New work for the stream lands while the claimed work runs.
    store
        .enqueue(&name, Some(cp(1, 1)), cp(1, 2), &[order(&m, "s1", at(100))])
        .await
        .unwrap();
    store.finish(&item).await.unwrap();
    assert_eq!(
        store.pending(&m).await.unwrap(),
        vec![fresh_row(&m, "s1", at(100), 2)]
    );

    // It runs again at the new due time, and only then.
    assert!(
        store
            .claim_due(&m, "b", at(99), 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let again = claim_one(store, &m, "b", at(100)).await;
    assert_eq!(again.version, 2);
    store.finish(&again).await.unwrap();
    assert!(store.pending(&m).await.unwrap().is_empty());
}

pub async fn work_reschedule_sets_due_attempts_error_and_releases<S: WorkStore>(store: &S) {
    let m = fresh_manager("reschedule");
    store.schedule(&[order(&m, "s1", at(0))]).await.unwrap();
    let first = claim_one(store, &m, "a", at(0)).await;
    store
        .reschedule(&first, at(30), Some("psp timeout"))
        .await
        .unwrap();
    let retrying = WorkItem {
        attempts: 1,
        last_error: Some("psp timeout".to_owned()),
        ..fresh_row(&m, "s1", at(30), 1)
    };
    assert_eq!(store.pending(&m).await.unwrap(), vec![retrying.clone()]);

    // Released but not due until the new time.
    assert!(
        store
            .claim_due(&m, "b", at(29), 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let second = claim_one(store, &m, "b", at(30)).await;
    assert_eq!(second, claimed(retrying, "b", lease_end(at(30))));

    // A retry without an error clears the old one; attempts keep counting.
    store.reschedule(&second, at(90), None).await.unwrap();
    assert_eq!(
        store.pending(&m).await.unwrap(),
        vec![WorkItem {
            attempts: 2,
            ..fresh_row(&m, "s1", at(90), 1)
        }]
    );
}

pub async fn work_reschedule_after_reenqueue_keeps_earlier_due<S: WorkStore>(store: &S) {
    let m = fresh_manager("reschedule-moved");
    store
        .schedule(&[order(&m, "s1", at(0)), order(&m, "s2", at(0))])
        .await
        .unwrap();
    let items = store.claim_due(&m, "a", at(0), 10, LEASE).await.unwrap();
    assert_eq!(streams(&items), vec!["s1", "s2"]);
    // Both re-enqueued while running: s1 sooner than its retry, s2 later.
    store
        .schedule(&[order(&m, "s1", at(10)), order(&m, "s2", at(100))])
        .await
        .unwrap();
    store
        .reschedule(&items[0], at(60), Some("busy"))
        .await
        .unwrap();
    store
        .reschedule(&items[1], at(50), Some("busy"))
        .await
        .unwrap();
    let retrying = |s, due_at| WorkItem {
        attempts: 1,
        last_error: Some("busy".to_owned()),
        ..fresh_row(&m, s, due_at, 2)
    };
    assert_eq!(
        store.pending(&m).await.unwrap(),
        vec![retrying("s1", at(10)), retrying("s2", at(50))]
    );
}

pub async fn work_last_error_is_clipped_and_nul_safe<S: WorkStore>(store: &S) {
    let m = fresh_manager("error");
    store.schedule(&[order(&m, "s1", at(0))]).await.unwrap();
    let item = claim_one(store, &m, "a", at(0)).await;
    let long = format!("bad\0byte {}", "ü".repeat(3 * WORK_LAST_ERROR_MAX));
    store.reschedule(&item, at(1), Some(&long)).await.unwrap();
    let stored = store.pending(&m).await.unwrap()[0]
        .last_error
        .clone()
        .unwrap();
    assert_eq!(stored.chars().count(), WORK_LAST_ERROR_MAX);
    assert!(stored.starts_with("bad\u{FFFD}byte üü"), "{stored:.20}");
    assert!(stored.ends_with("ü…"));
    assert_eq!(Some(stored), storable_error(Some(&long)));
}

pub async fn work_timestamps_round_trip_at_microseconds<S: WorkStore>(store: &S) {
    let m = fresh_manager("micros");
    let nanos = |n: i64| TimeDelta::nanoseconds(n);
    let before_epoch = DateTime::from_timestamp(-1, 500_000_000).unwrap() + nanos(999);
    let far = DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999999999Z")
        .unwrap()
        .with_timezone(&Utc);
    store
        .schedule(&[
            order(&m, "tenth", at(0) + micros(100_000)),
            order(&m, "one", at(0) + micros(1) + nanos(999)),
            order(&m, "two", at(0) + micros(2)),
            order(&m, "ten", at(0) + micros(10)),
            order(&m, "prev-second", at(-1) + micros(999_999)),
            order(&m, "before-epoch", before_epoch),
            order(&m, "far", far),
        ])
        .await
        .unwrap();
    let due: Vec<(String, DateTime<Utc>)> = store
        .pending(&m)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.stream_id, i.due_at))
        .collect();
    let expected: Vec<(String, DateTime<Utc>)> = [
        (
            "before-epoch",
            DateTime::from_timestamp(-1, 500_000_000).unwrap(),
        ),
        ("prev-second", at(-1) + micros(999_999)),
        ("one", at(0) + micros(1)),
        ("two", at(0) + micros(2)),
        ("ten", at(0) + micros(10)),
        ("tenth", at(0) + micros(100_000)),
        ("far", far - nanos(999)),
    ]
    .into_iter()
    .map(|(s, t)| (s.to_owned(), t))
    .collect();
    assert_eq!(due, expected);

    // Claims compare at microseconds too, and order the same way.
    let now = at(0) + micros(2) + nanos(500);
    let lease = Duration::from_nanos(1_500_000_001);
    let got = store.claim_due(&m, "w", now, 10, lease).await.unwrap();
    assert_eq!(
        streams(&got),
        vec!["before-epoch", "prev-second", "one", "two"]
    );
    let until = at(1) + micros(500_002);
    assert!(got.iter().all(|i| i.claimed_until == until), "{got:?}");
    // The stored claim is that exact value: finish matches on it.
    store.finish(&got[2]).await.unwrap();
    assert_eq!(
        streams(&store.pending(&m).await.unwrap()),
        vec!["before-epoch", "prev-second", "two", "ten", "tenth", "far"]
    );
}

pub async fn work_bad_input_is_refused_and_writes_nothing<S: WorkStore>(store: &S) {
    let m = fresh_manager("bad");
    let name = format!("pm:{m}");
    let refused = |e: StoreError| {
        let StoreError::Backend(message) = &e else {
            panic!("expected a refusal, got {e:?}")
        };
        assert!(message.starts_with("work queue "), "{message}");
    };
    let long_stream = "s".repeat(WORK_STREAM_ID_MAX + 1);
    let long_manager = "m".repeat(WORK_MANAGER_MAX + 1);
    for bad in [
        order("", "s", at(0)),
        order(&m, "", at(0)),
        order(&m, &long_stream, at(0)),
        order(&long_manager, "s", at(0)),
        order(&m, "nul\0", at(0)),
    ] {
        // A good order beside the bad one is not written either.
        let batch = [order(&m, "good", at(0)), bad];
        refused(store.schedule(&batch).await.unwrap_err());
        refused(
            store
                .enqueue(&name, None, cp(1, 1), &batch)
                .await
                .unwrap_err(),
        );
    }
    assert!(store.pending(&m).await.unwrap().is_empty());
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), None);

    // The limits themselves are accepted.
    let max_manager = "m".repeat(WORK_MANAGER_MAX);
    let max_stream = "é".repeat(WORK_STREAM_ID_MAX);
    store
        .schedule(&[order(&max_manager, &max_stream, at(0))])
        .await
        .unwrap();
    assert_eq!(
        store.pending(&max_manager).await.unwrap(),
        vec![fresh_row(&max_manager, &max_stream, at(0), 1)]
    );
    // Cleanup keeps a shared database's max-length manager reusable.
    let item = claim_one(store, &max_manager, "w", at(0)).await;
    store.finish(&item).await.unwrap();

    // An empty owner would read as unclaimed: refused.
    store.schedule(&[order(&m, "s", at(0))]).await.unwrap();
    refused(store.claim_due(&m, "", at(0), 1, LEASE).await.unwrap_err());
    // So is finishing or rescheduling a row nobody claimed.
    let unclaimed = store.pending(&m).await.unwrap().remove(0);
    refused(store.finish(&unclaimed).await.unwrap_err());
    refused(store.reschedule(&unclaimed, at(5), None).await.unwrap_err());
    assert_eq!(
        store.pending(&m).await.unwrap(),
        vec![fresh_row(&m, "s", at(0), 1)]
    );
}

pub async fn work_concurrent_claimers_get_each_row_once<S>(store: &S)
where
    S: WorkStore + Clone + 'static,
{
    let m = fresh_manager("race-claim");
    let expected: Vec<String> = (0..RACE_ROWS).map(|i| format!("s{i:03}")).collect();
    let orders: Vec<WorkOrder> = expected
        .iter()
        .enumerate()
        .map(|(i, s)| order(&m, s, at(i as i64)))
        .collect();
    store.schedule(&orders).await.unwrap();

    let claimed = drain_concurrently(
        std::slice::from_ref(store),
        RACE_TASKS,
        &m,
        at(RACE_ROWS as i64),
        RACE_LIMIT,
    )
    .await;
    assert_each_once(&claimed, &expected);
    assert!(store.pending(&m).await.unwrap().is_empty());
}
