//! Shared cases for the HTTP-edge ports ([`IdempotencyStore`],
//! [`WebhookLogStore`]) that every SQL backend runs unchanged through
//! [`ports_suite!`](crate::ports_suite), like
//! [`conformance_suite!`](crate::conformance_suite) does for the event store.
//!
//! A backend's test file does one of:
//!
//! ```ignore
//! mod postgres {
//!     // The factory yields the store itself.
//!     ledger_store::ports_suite!(crate::fresh_store().await);
//! }
//! mod sqlite {
//!     // The factory yields a holder (say, a store and its temporary
//!     // directory) that must outlive the case; `store` projects the store.
//!     ledger_store::ports_suite!(holder = crate::fresh_store().await, store = holder.store.clone());
//! }
//! ```
//!
//! **Requirements:** the factory hands each case a *fresh, empty* store
//! (cases count and list every row of a table); the store is `Clone` sharing
//! one pool, so cases can race it from spawned tokio tasks.
//!
//! **Guarantees:** every case asserts exact values (variants, bytes, counts,
//! order), so each one can fail. Concurrency is real (tasks on a
//! multi-thread runtime against the backend's pool, released together by a
//! barrier); nothing sleeps.

// Test code shipped in the library so each backend's test crate can run it:
// panicking on an unexpected result is how a case fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Barrier;

use ledger_core::ids::StreamId;
use ledger_core::{ExpectedVersion, NewEvent};

use crate::conformance::new_event;
use crate::group_commit::{FreshCommitter, GROUP_MAX, GroupedAppends, LogCommitter};
use crate::idempotency::{
    Begin, Fresh, FreshCommand, IDEMPOTENCY_KEY_MAX, IdempotencyStore, StoredResponse,
};
use crate::webhook_log::{LoggedAppendStore, WebhookLogEntry, WebhookLogStore};
use crate::{EventStore, StoreError, StreamAppend};

/// Tasks racing `begin` on one key.
pub const BEGIN_RACERS: usize = 16;
/// Rounds (each on its own key) of the begin race and of the takeover race:
/// more rounds, more interleavings tried.
pub const RACE_ROUNDS: usize = 4;
/// The lease the cases use.
pub const LEASE: Duration = Duration::from_secs(60);
/// The claim owner the cases use when only one is in play.
pub const OWNER: &str = "owner-a";

/// Runs every ports case as a `#[test]` named after it, each on its own
/// multi-thread runtime (see [`crate::conformance::__run_case`]).
#[macro_export]
macro_rules! ports_suite {
    // `$holder` is the caller's identifier, so `$project` can name it.
    ($holder:ident = $factory:expr, store = $project:expr $(,)?) => {
        $crate::ports_suite!(@list [store] [let $holder = $factory; let store = $project;]);
    };
    ($factory:expr $(,)?) => {
        $crate::ports_suite!(@list [store] [let store = $factory;]);
    };
    (@list [$store:ident] [$($bind:tt)*]) => {
        $crate::ports_suite!(@cases [$store] [{ $($bind)* }];
            idempotency_first_begin_starts_then_in_progress,
            idempotency_complete_replays_identical_bytes,
            idempotency_first_completion_wins,
            idempotency_different_hash_is_mismatch,
            idempotency_lease_boundary_and_takeover,
            idempotency_concurrent_takeovers_have_one_winner,
            idempotency_concurrent_begins_have_one_winner,
            idempotency_release_lets_a_retry_start,
            idempotency_release_is_owner_checked,
            idempotency_renew_moves_the_lease_for_its_owner_only,
            idempotency_purge_deletes_old_completed_only,
            idempotency_scopes_are_independent,
            idempotency_key_length_is_bounded,
            webhook_log_every_field_round_trips,
            webhook_log_processed_only_for_ok_rows,
            webhook_log_delete_respects_cutoff_and_limit,
            webhook_log_recent_is_newest_first,
            webhook_log_refuses_unknown_processing_result,
            fresh_batch_claims_appends_and_completes,
            fresh_batch_leaves_used_keys_and_existing_streams_alone,
            fresh_batch_racing_one_key_or_stream_writes_once,
            group_commit_answers_each_request_alone,
            webhook_logs_batch_is_all_or_nothing,
            log_committer_writes_every_row_once,
            logged_appends_commit_events_and_rows_together,
            grouped_appends_commit_each_log_row_with_its_append,
            webhook_log_rewrite_of_a_delivery_keeps_one_row,
            read_stream_unless_processed_is_dedupe_then_read,
        );
    };
    // `$store` and the `let` that binds it come from the same expansion, so
    // hygiene lets the case call see the binding.
    (@cases [$store:ident] [$bind:tt]; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::__run_case(::std::stringify!($case), async {
                    $crate::ports_suite!(@run [$store] $bind $case);
                });
            }
        )+
    };
    // Binds the store (a `{ let …; }` group, unpacked here so the bindings
    // stay in the case's scope) and runs one case.
    (@run [$store:ident] { $($bind:tt)* } $case:ident) => {
        $($bind)*
        $crate::ports_conformance::$case(&$store).await;
    };
}

fn at(secs: i64) -> DateTime<Utc> {
    // 2026-11-27T00:00:00Z: whole seconds, so every backend stores it exactly.
    DateTime::from_timestamp(1_795_737_600 + secs, 0).unwrap()
}

/// `InProgress`, as answered for a claim whose lease started at `locked_at`.
fn held_since(locked_at: DateTime<Utc>) -> Begin {
    Begin::InProgress {
        lease_ends: locked_at + TimeDelta::from_std(LEASE).unwrap(),
    }
}

fn micros(n: i64) -> TimeDelta {
    TimeDelta::microseconds(n)
}

const SCOPE: &str = "POST /v1/orders";

fn hash(byte: u8) -> [u8; 32] {
    [byte; 32]
}

fn response(body: &[u8]) -> StoredResponse {
    StoredResponse {
        status: 201,
        content_type: "application/json; charset=utf-8".to_owned(),
        body: body.to_vec(),
    }
}

pub async fn idempotency_first_begin_starts_then_in_progress<S: IdempotencyStore>(store: &S) {
    let begun = store
        .begin(SCOPE, "k1", &hash(1), OWNER, at(0), LEASE)
        .await
        .unwrap();
    assert_eq!(begun, Begin::Started);
    let again = store
        .begin(SCOPE, "k1", &hash(1), OWNER, at(1), LEASE)
        .await
        .unwrap();
    assert_eq!(again, held_since(at(0)));
    // Another key is untouched by the first.
    let other = store
        .begin(SCOPE, "k2", &hash(1), OWNER, at(1), LEASE)
        .await
        .unwrap();
    assert_eq!(other, Begin::Started);
}

pub async fn idempotency_complete_replays_identical_bytes<S: IdempotencyStore>(store: &S) {
    // Not UTF-8, with NULs and every byte value: stored as bytes, not text.
    let mut body = vec![0xff, 0xfe, 0x00, b'{', 0x80, 0x00];
    body.extend(0..=255u8);
    let stored = StoredResponse {
        status: 202,
        content_type: "application/octet-stream".to_owned(),
        body,
    };
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(7), OWNER, at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    store.complete(SCOPE, "k", &stored, at(1)).await.unwrap();
    // Long after the lease: a completed record replays, it is never taken over.
    let replay = store
        .begin(SCOPE, "k", &hash(7), OWNER, at(86_400), LEASE)
        .await
        .unwrap();
    assert_eq!(replay, Begin::Completed(stored.clone()));
    // An empty body replays as empty, not as "no response".
    assert_eq!(
        store
            .begin(SCOPE, "e", &hash(7), OWNER, at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    let empty = StoredResponse {
        status: 204,
        content_type: String::new(),
        body: Vec::new(),
    };
    store.complete(SCOPE, "e", &empty, at(1)).await.unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "e", &hash(7), OWNER, at(2), LEASE)
            .await
            .unwrap(),
        Begin::Completed(empty)
    );
}

pub async fn idempotency_first_completion_wins<S: IdempotencyStore>(store: &S) {
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    store
        .complete(SCOPE, "k", &response(b"first"), at(1))
        .await
        .unwrap();
    // A late holder (say, the one whose lease was taken over) completes too.
    store
        .complete(SCOPE, "k", &response(b"second"), at(2))
        .await
        .unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, at(3), LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"first"))
    );
    // Completing a key nobody began stores nothing.
    store
        .complete(SCOPE, "never-begun", &response(b"x"), at(4))
        .await
        .unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "never-begun", &hash(1), OWNER, at(5), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
}

pub async fn idempotency_different_hash_is_mismatch<S: IdempotencyStore>(store: &S) {
    // In progress.
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(2), OWNER, at(1), LEASE)
            .await
            .unwrap(),
        Begin::Mismatch
    );
    // In progress with an expired lease: still a mismatch, never a takeover.
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(2), OWNER, at(10_000), LEASE)
            .await
            .unwrap(),
        Begin::Mismatch
    );
    // The mismatching calls left the claim alone.
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, at(2), LEASE)
            .await
            .unwrap(),
        held_since(at(0))
    );
    // Completed.
    store
        .complete(SCOPE, "k", &response(b"{}"), at(3))
        .await
        .unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(2), OWNER, at(4), LEASE)
            .await
            .unwrap(),
        Begin::Mismatch
    );
    // One differing byte is enough.
    let mut close = hash(1);
    close[31] = 0;
    assert_eq!(
        store
            .begin(SCOPE, "k", &close, OWNER, at(5), LEASE)
            .await
            .unwrap(),
        Begin::Mismatch
    );
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, at(6), LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"{}"))
    );
}

pub async fn idempotency_lease_boundary_and_takeover<S: IdempotencyStore>(store: &S) {
    let lease = TimeDelta::from_std(LEASE).unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    // Started exactly `lease` ago: still held.
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, at(0) + lease, LEASE)
            .await
            .unwrap(),
        held_since(at(0))
    );
    // One microsecond later the holder is presumed dead.
    let takeover_at = at(0) + lease + micros(1);
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, takeover_at, LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    // The takeover renewed the lease: the next caller waits again.
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, takeover_at + lease, LEASE)
            .await
            .unwrap(),
        held_since(takeover_at)
    );
    // And the new holder's completion is what replays.
    store
        .complete(
            SCOPE,
            "k",
            &response(b"new holder"),
            takeover_at + micros(5),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, takeover_at + lease * 10, LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"new holder"))
    );
}

/// Starts `tasks` calls to `begin` on `key` at once and returns their answers.
async fn race_begin<S: IdempotencyStore + Clone + 'static>(
    store: &S,
    key: &str,
    tasks: usize,
    now: DateTime<Utc>,
) -> Vec<Begin> {
    let barrier = Arc::new(Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let store = store.clone();
            let barrier = barrier.clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                barrier.wait().await;
                let owner = format!("racer-{i}");
                store.begin(SCOPE, &key, &hash(9), &owner, now, LEASE).await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks);
    for handle in handles {
        answers.push(handle.await.unwrap().unwrap());
    }
    answers
}

fn count(answers: &[Begin], wanted: &Begin) -> usize {
    answers.iter().filter(|a| *a == wanted).count()
}

pub async fn idempotency_concurrent_takeovers_have_one_winner<
    S: IdempotencyStore + Clone + 'static,
>(
    store: &S,
) {
    let lease = TimeDelta::from_std(LEASE).unwrap();
    for round in 0..RACE_ROUNDS {
        let key = format!("takeover-{round}");
        assert_eq!(
            store
                .begin(SCOPE, &key, &hash(9), OWNER, at(0), LEASE)
                .await
                .unwrap(),
            Begin::Started
        );
        let now = at(0) + lease + micros(1);
        let answers = race_begin(store, &key, 2, now).await;
        assert_eq!(
            count(&answers, &Begin::Started),
            1,
            "round {round}: {answers:?}"
        );
        assert_eq!(
            count(&answers, &held_since(now)),
            1,
            "round {round}: {answers:?}"
        );
    }
}

pub async fn idempotency_concurrent_begins_have_one_winner<
    S: IdempotencyStore + Clone + 'static,
>(
    store: &S,
) {
    for round in 0..RACE_ROUNDS {
        let key = format!("race-{round}");
        let answers = race_begin(store, &key, BEGIN_RACERS, at(0)).await;
        assert_eq!(
            count(&answers, &Begin::Started),
            1,
            "round {round}: {answers:?}"
        );
        assert_eq!(
            count(&answers, &held_since(at(0))),
            BEGIN_RACERS - 1,
            "round {round}: {answers:?}"
        );
    }
}

pub async fn idempotency_release_lets_a_retry_start<S: IdempotencyStore>(store: &S) {
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    store.release(SCOPE, "k", OWNER).await.unwrap();
    // Within the old lease, and even with another body: the key is free.
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(2), OWNER, at(1), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    store
        .complete(SCOPE, "k", &response(b"done"), at(2))
        .await
        .unwrap();
    // A completed record is never released.
    store.release(SCOPE, "k", OWNER).await.unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(2), OWNER, at(3), LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"done"))
    );
    // Releasing an unknown key is a no-op, not an error.
    store.release(SCOPE, "unknown", OWNER).await.unwrap();
}

pub async fn idempotency_release_is_owner_checked<S: IdempotencyStore>(store: &S) {
    let lease = TimeDelta::from_std(LEASE).unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), "owner-a", at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    // Someone else's release leaves the claim alone.
    store.release(SCOPE, "k", "owner-b").await.unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), "owner-b", at(1), LEASE)
            .await
            .unwrap(),
        held_since(at(0))
    );
    // The owner's release frees it; a second one is a no-op.
    store.release(SCOPE, "k", "owner-a").await.unwrap();
    store.release(SCOPE, "k", "owner-a").await.unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), "owner-b", at(2), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    // A's late release (say, from a request that was dropped after its
    // lease ran out) does not free B's newer claim.
    store.release(SCOPE, "k", "owner-a").await.unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), "owner-c", at(3), LEASE)
            .await
            .unwrap(),
        held_since(at(2))
    );
    // B crashes; C takes the claim over after the lease. B's release
    // afterwards leaves C's claim alone, C's own release frees it.
    let takeover_at = at(2) + lease + micros(1);
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), "owner-c", takeover_at, LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    store.release(SCOPE, "k", "owner-b").await.unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), "owner-d", takeover_at, LEASE)
            .await
            .unwrap(),
        held_since(takeover_at)
    );
    store.release(SCOPE, "k", "owner-c").await.unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), "owner-d", takeover_at, LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    // A completed record is released by nobody, not even its owner.
    store
        .complete(SCOPE, "k", &response(b"d"), takeover_at)
        .await
        .unwrap();
    store.release(SCOPE, "k", "owner-d").await.unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), "owner-e", takeover_at, LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"d"))
    );
    // A bad owner is refused, never a panic.
    assert!(store.release(SCOPE, "k", "").await.is_err());
    assert!(
        store
            .begin(SCOPE, "k2", &hash(1), "", at(0), LEASE)
            .await
            .is_err()
    );
}

pub async fn idempotency_renew_moves_the_lease_for_its_owner_only<S: IdempotencyStore>(store: &S) {
    let lease = TimeDelta::from_std(LEASE).unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), "owner-a", at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    // The holder's heartbeat: its lease now starts at 50, so a retry past
    // the first lease still finds it held.
    assert!(store.renew(SCOPE, "k", "owner-a", at(50)).await.unwrap());
    let after_first_lease = at(0) + lease + micros(1);
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), "owner-b", after_first_lease, LEASE)
            .await
            .unwrap(),
        held_since(at(50))
    );
    // Only the owner renews.
    assert!(!store.renew(SCOPE, "k", "owner-b", at(55)).await.unwrap());
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), "owner-b", at(55), LEASE)
            .await
            .unwrap(),
        held_since(at(50))
    );
    // Without heartbeats the renewed lease runs out too: B takes over, and
    // A's heartbeat then reports the claim lost and changes nothing.
    let takeover_at = at(50) + lease + micros(1);
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), "owner-b", takeover_at, LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    assert!(
        !store
            .renew(SCOPE, "k", "owner-a", takeover_at + micros(1))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .begin(
                SCOPE,
                "k",
                &hash(1),
                "owner-c",
                takeover_at + micros(2),
                LEASE
            )
            .await
            .unwrap(),
        held_since(takeover_at)
    );
    // A completed record, an absent one: nothing to renew.
    store
        .complete(SCOPE, "k", &response(b"b"), takeover_at + micros(3))
        .await
        .unwrap();
    assert!(
        !store
            .renew(SCOPE, "k", "owner-b", takeover_at + micros(4))
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew(SCOPE, "absent", "owner-b", takeover_at)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .begin(
                SCOPE,
                "k",
                &hash(1),
                "owner-c",
                takeover_at + lease * 2,
                LEASE
            )
            .await
            .unwrap(),
        Begin::Completed(response(b"b"))
    );
}

pub async fn idempotency_purge_deletes_old_completed_only<S: IdempotencyStore>(store: &S) {
    // Completed at 10, 20, 30 (oldest first), and at the cutoff (40).
    for (key, done) in [("c10", 10), ("c30", 30), ("c20", 20), ("c40", 40)] {
        assert_eq!(
            store
                .begin(SCOPE, key, &hash(1), OWNER, at(0), LEASE)
                .await
                .unwrap(),
            Begin::Started
        );
        store
            .complete(SCOPE, key, &response(key.as_bytes()), at(done))
            .await
            .unwrap();
    }
    // An abandoned claim from long ago: not completed, so not purged.
    assert_eq!(
        store
            .begin(SCOPE, "open", &hash(1), OWNER, at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    let cutoff = at(40);
    assert_eq!(store.purge_before(cutoff, 0).await.unwrap(), 0);
    assert_eq!(store.purge_before(cutoff, 1).await.unwrap(), 1);
    // The oldest went first.
    assert_eq!(
        store
            .begin(SCOPE, "c10", &hash(1), OWNER, at(50), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    assert_eq!(
        store
            .begin(SCOPE, "c20", &hash(1), OWNER, at(50), LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"c20"))
    );
    assert_eq!(store.purge_before(cutoff, 100).await.unwrap(), 2);
    assert_eq!(store.purge_before(cutoff, 100).await.unwrap(), 0);
    // Completed exactly at the cutoff stays; the open claim stays (still
    // in progress at 50: its lease is long over, so it is taken over).
    assert_eq!(
        store
            .begin(SCOPE, "c40", &hash(1), OWNER, at(50), LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"c40"))
    );
    assert_eq!(
        store
            .begin(SCOPE, "c30", &hash(1), OWNER, at(50), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    assert_eq!(
        store
            .begin(SCOPE, "open", &hash(2), OWNER, at(50), LEASE)
            .await
            .unwrap(),
        Begin::Mismatch
    );
}

pub async fn idempotency_scopes_are_independent<S: IdempotencyStore>(store: &S) {
    let other = "POST /v1/orders/{id}/refunds";
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    assert_eq!(
        store
            .begin(other, "k", &hash(2), OWNER, at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    store
        .complete(other, "k", &response(b"refund"), at(1))
        .await
        .unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "k", &hash(1), OWNER, at(2), LEASE)
            .await
            .unwrap(),
        held_since(at(0))
    );
    store.release(SCOPE, "k", OWNER).await.unwrap();
    assert_eq!(
        store
            .begin(other, "k", &hash(2), OWNER, at(3), LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"refund"))
    );
}

pub async fn idempotency_key_length_is_bounded<S: IdempotencyStore>(store: &S) {
    // At the limit, in multi-byte characters: accepted and round-trips.
    let longest = "é".repeat(IDEMPOTENCY_KEY_MAX);
    assert_eq!(
        store
            .begin(SCOPE, &longest, &hash(1), OWNER, at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    store
        .complete(SCOPE, &longest, &response(b"ok"), at(1))
        .await
        .unwrap();
    assert_eq!(
        store
            .begin(SCOPE, &longest, &hash(1), OWNER, at(2), LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"ok"))
    );
    // Over the limit, or empty: an error, never a panic, and nothing stored.
    let too_long = "k".repeat(IDEMPOTENCY_KEY_MAX + 1);
    for key in [too_long.as_str(), ""] {
        assert!(
            store
                .begin(SCOPE, key, &hash(1), OWNER, at(0), LEASE)
                .await
                .is_err(),
            "{} chars",
            key.len()
        );
        assert!(
            store
                .complete(SCOPE, key, &response(b"x"), at(0))
                .await
                .is_err()
        );
        assert!(store.release(SCOPE, key, OWNER).await.is_err());
    }
    // A key the database cannot hold (a NUL) fails cleanly too, or works:
    // either way no panic and no effect on other keys.
    let _ = store
        .begin(SCOPE, "nul\0key", &hash(1), OWNER, at(0), LEASE)
        .await;
    assert_eq!(
        store
            .begin(SCOPE, &longest, &hash(1), OWNER, at(3), LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"ok"))
    );
}

fn entry(n: i64) -> WebhookLogEntry {
    WebhookLogEntry {
        payload: format!(r#"{{"event_type":"payment_succeeded","n":{n},"note":"café ☕"}}"#),
        signature_valid: true,
        processing_result: "ok".to_owned(),
        source_ip: Some("203.0.113.7".to_owned()),
        user_agent: Some("Hyperswitch/1.0".to_owned()),
        request_id: format!("req-{n}"),
        event_type: Some("payment_succeeded".to_owned()),
        event_id: Some(format!("evt_{n}")),
        received_at: at(n),
        delivery_id: Some(delivery(n)),
        payload_sha256: None,
        payload_len: None,
    }
}

/// A delivery id per `n`, so entries of different `n` never collide.
fn delivery(n: i64) -> uuid::Uuid {
    uuid::Uuid::from_u128(0xd000_0000_0000_0000 + u128::from(n.unsigned_abs()))
}

pub async fn webhook_log_every_field_round_trips<S: WebhookLogStore>(store: &S) {
    let full = entry(1);
    let sparse = WebhookLogEntry {
        payload: String::new(),
        signature_valid: false,
        processing_result: "signature_invalid".to_owned(),
        source_ip: None,
        user_agent: None,
        request_id: "0b0e4c1e-0000-4000-8000-000000000000".to_owned(),
        event_type: None,
        event_id: None,
        received_at: at(2) + micros(123_456),
        delivery_id: None,
        // A cut-down unsigned body: its whole body's hash and length.
        payload_sha256: Some(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_owned(),
        ),
        payload_len: Some(65_536),
    };
    let error = WebhookLogEntry {
        payload: "not json \u{1F4B8}".to_owned(),
        processing_result: "error: refund ref_1 not found".to_owned(),
        event_type: Some(String::new()),
        received_at: at(3),
        ..entry(3)
    };
    let skipped = WebhookLogEntry {
        processing_result: "skipped".to_owned(),
        event_type: Some("dispute.opened".to_owned()),
        received_at: at(4),
        ..entry(4)
    };
    // Another delivery of entry 1's event.
    let duplicate = WebhookLogEntry {
        processing_result: "duplicate".to_owned(),
        received_at: at(5),
        delivery_id: Some(delivery(105)),
        ..entry(1)
    };
    let written = [full, sparse, error, skipped, duplicate];
    let mut ids = Vec::new();
    for e in &written {
        ids.push(store.insert_webhook_log(e).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids {ids:?}");

    // A NUL (valid UTF-8, not storable as Postgres text) still lands, as U+FFFD.
    let nul = WebhookLogEntry {
        payload: "a\0b".to_owned(),
        received_at: at(6),
        ..entry(6)
    };
    store.insert_webhook_log(&nul).await.unwrap();

    let mut read = store.recent_webhook_log(100).await.unwrap();
    assert_eq!(read.len(), written.len() + 1);
    assert_eq!(
        read.remove(0),
        WebhookLogEntry {
            payload: "a\u{FFFD}b".to_owned(),
            ..nul
        }
    );
    read.reverse();
    assert_eq!(read, written.to_vec());
}

pub async fn webhook_log_processed_only_for_ok_rows<S: WebhookLogStore>(store: &S) {
    assert!(!store.webhook_event_processed("evt_1").await.unwrap());
    for (i, result) in ["error: boom", "signature_invalid", "skipped", "duplicate"]
        .into_iter()
        .enumerate()
    {
        // Deliveries of one event, each its own row.
        let e = WebhookLogEntry {
            processing_result: result.to_owned(),
            received_at: at(i as i64),
            delivery_id: Some(delivery(100 + i as i64)),
            ..entry(1)
        };
        store.insert_webhook_log(&e).await.unwrap();
        assert!(
            !store.webhook_event_processed("evt_1").await.unwrap(),
            "{result} row counted as processed"
        );
    }
    // An ok row without an event id matches no id, not even "".
    let anonymous = WebhookLogEntry {
        event_id: None,
        ..entry(2)
    };
    store.insert_webhook_log(&anonymous).await.unwrap();
    assert!(!store.webhook_event_processed("").await.unwrap());

    store.insert_webhook_log(&entry(1)).await.unwrap();
    assert!(store.webhook_event_processed("evt_1").await.unwrap());
    // Exact match only.
    assert!(!store.webhook_event_processed("evt_10").await.unwrap());
    assert!(!store.webhook_event_processed("EVT_1").await.unwrap());
    assert!(!store.webhook_event_processed("evt_").await.unwrap());
}

pub async fn webhook_log_delete_respects_cutoff_and_limit<S: WebhookLogStore>(store: &S) {
    let cutoff = at(100);
    // Inserted out of time order, so "oldest first" cannot be insertion order.
    let times = [
        cutoff - micros(1),
        cutoff - TimeDelta::seconds(3),
        cutoff,
        cutoff - TimeDelta::seconds(2),
        cutoff + TimeDelta::seconds(1),
    ];
    for (i, t) in times.iter().enumerate() {
        let e = WebhookLogEntry {
            received_at: *t,
            ..entry(i as i64)
        };
        store.insert_webhook_log(&e).await.unwrap();
    }
    let remaining = |rows: Vec<WebhookLogEntry>| {
        let mut t: Vec<_> = rows.into_iter().map(|e| e.received_at).collect();
        t.sort();
        t
    };
    assert_eq!(store.delete_webhook_log_before(cutoff, 0).await.unwrap(), 0);
    assert_eq!(store.delete_webhook_log_before(cutoff, 2).await.unwrap(), 2);
    assert_eq!(
        remaining(store.recent_webhook_log(100).await.unwrap()),
        vec![cutoff - micros(1), cutoff, cutoff + TimeDelta::seconds(1)]
    );
    assert_eq!(store.delete_webhook_log_before(cutoff, 2).await.unwrap(), 1);
    assert_eq!(store.delete_webhook_log_before(cutoff, 2).await.unwrap(), 0);
    assert_eq!(
        remaining(store.recent_webhook_log(100).await.unwrap()),
        vec![cutoff, cutoff + TimeDelta::seconds(1)]
    );
}

pub async fn webhook_log_recent_is_newest_first<S: WebhookLogStore>(store: &S) {
    assert!(store.recent_webhook_log(10).await.unwrap().is_empty());
    for n in [3, 1, 5, 2, 4] {
        store.insert_webhook_log(&entry(n)).await.unwrap();
    }
    // Two deliveries in the same microsecond: the later insert is newer.
    let tie_a = WebhookLogEntry {
        request_id: "tie-a".to_owned(),
        delivery_id: Some(delivery(51)),
        ..entry(5)
    };
    let tie_b = WebhookLogEntry {
        request_id: "tie-b".to_owned(),
        delivery_id: Some(delivery(52)),
        ..entry(5)
    };
    store.insert_webhook_log(&tie_a).await.unwrap();
    store.insert_webhook_log(&tie_b).await.unwrap();

    let recent = store.recent_webhook_log(4).await.unwrap();
    let ids: Vec<_> = recent.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(ids, ["tie-b", "tie-a", "req-5", "req-4"]);
    assert!(store.recent_webhook_log(0).await.unwrap().is_empty());
    assert_eq!(store.recent_webhook_log(100).await.unwrap().len(), 7);
}

pub async fn webhook_log_refuses_unknown_processing_result<S: WebhookLogStore>(store: &S) {
    for bad in ["bogus", "", "error:no-space", "OK"] {
        let e = WebhookLogEntry {
            processing_result: bad.to_owned(),
            ..entry(1)
        };
        assert!(store.insert_webhook_log(&e).await.is_err(), "{bad:?}");
    }
    assert!(store.recent_webhook_log(10).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// Fresh commands (group commit of claim + new stream + response)

fn fresh_stream(name: &str) -> StreamId {
    StreamId::new(format!("order-fresh-{name}")).unwrap()
}

fn fresh(key: &str, stream: &str, events: usize, body: Option<&[u8]>) -> FreshCommand {
    FreshCommand {
        scope: SCOPE.to_owned(),
        key: key.to_owned(),
        request_hash: hash(7),
        owner: OWNER.to_owned(),
        stream: fresh_stream(stream),
        events: (0..events)
            .map(|i| new_event("FreshEvent", format!(r#"{{"key":"{key}","i":{i}}}"#)))
            .collect(),
        response: body.map(response),
    }
}

async fn stream_len<S: EventStore>(store: &S, name: &str) -> usize {
    store
        .read_stream(&fresh_stream(name), 1, 1_000)
        .await
        .unwrap()
        .len()
}

pub async fn fresh_batch_claims_appends_and_completes<S: IdempotencyStore + EventStore>(store: &S) {
    let batch = [
        fresh("a", "a", 2, Some(b"answer a")),
        fresh("b", "b", 1, None),
        fresh("c", "c", 3, Some(b"answer c")),
    ];
    let answers = store.execute_fresh(&batch, at(0)).await.unwrap();
    let mut last_positions = Vec::new();
    for (answer, command) in answers.iter().zip(&batch) {
        let Fresh::Written(result) = answer else {
            panic!("{}: {answer:?}", command.key)
        };
        assert_eq!(
            (result.first_version, result.last_version),
            (1, command.events.len() as u64),
            "{}",
            command.key
        );
        assert!(!result.already_existed);
        assert!(
            result.positions.windows(2).all(|w| w[0] < w[1]),
            "{result:?}"
        );
        let stored = store.read_stream(&command.stream, 1, 100).await.unwrap();
        assert_eq!(
            stored.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            command
                .events
                .iter()
                .map(|e| e.event_id)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            stored.iter().map(|e| e.global_position).collect::<Vec<_>>(),
            result.positions
        );
        last_positions.push(result.positions.clone());
    }
    // The chain of each stream is intact from genesis.
    for command in &batch {
        let stored = store.read_stream(&command.stream, 1, 100).await.unwrap();
        assert_eq!(stored[0].prev_hash, ledger_core::hash::GENESIS);
        for pair in stored.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
        }
    }
    // Completed with its response, claimed in progress without one.
    assert_eq!(
        store
            .begin(SCOPE, "a", &hash(7), OWNER, at(1), LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"answer a"))
    );
    assert_eq!(
        store
            .begin(SCOPE, "b", &hash(7), OWNER, at(1), LEASE)
            .await
            .unwrap(),
        held_since(at(0))
    );
    assert_eq!(
        store
            .begin(SCOPE, "c", &hash(8), OWNER, at(1), LEASE)
            .await
            .unwrap(),
        Begin::Mismatch
    );
    // The in-progress claim is an ordinary one: completing it works, and its
    // lease runs from the batch's `now`.
    store
        .complete(SCOPE, "b", &response(b"answer b"), at(2))
        .await
        .unwrap();
    assert_eq!(
        store
            .begin(SCOPE, "b", &hash(7), OWNER, at(3), LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"answer b"))
    );
}

pub async fn fresh_batch_leaves_used_keys_and_existing_streams_alone<
    S: IdempotencyStore + EventStore,
>(
    store: &S,
) {
    // k1 is claimed already; stream s2 already has an event.
    assert_eq!(
        store
            .begin(SCOPE, "k1", &hash(1), OWNER, at(0), LEASE)
            .await
            .unwrap(),
        Begin::Started
    );
    let existing = new_event("Existing", "{}");
    store
        .append(&fresh_stream("s2"), ExpectedVersion::NoStream, &[existing])
        .await
        .unwrap();
    let batch = [
        fresh("k1", "s1", 1, Some(b"one")),
        fresh("k2", "s2", 2, Some(b"two")),
        fresh("k3", "s3", 2, Some(b"three")),
        // The same key again, and the same stream again, in one batch.
        fresh("k3", "s4", 1, Some(b"again")),
        fresh("k5", "s3", 1, Some(b"five")),
    ];
    let answers = store.execute_fresh(&batch, at(5)).await.unwrap();
    assert_eq!(answers[0], Fresh::NotFresh);
    assert_eq!(answers[1], Fresh::NotFresh);
    assert!(matches!(answers[2], Fresh::Written(_)), "{answers:?}");
    assert_eq!(answers[3], Fresh::NotFresh);
    assert_eq!(answers[4], Fresh::NotFresh);
    // Nothing of the refused commands was written.
    assert_eq!(stream_len(store, "s1").await, 0);
    assert_eq!(stream_len(store, "s2").await, 1);
    assert_eq!(stream_len(store, "s3").await, 2);
    assert_eq!(stream_len(store, "s4").await, 0);
    assert_eq!(
        store
            .begin(SCOPE, "k1", &hash(1), OWNER, at(6), LEASE)
            .await
            .unwrap(),
        held_since(at(0)),
        "the earlier claim stands"
    );
    for free in ["k2", "k5"] {
        assert_eq!(
            store
                .begin(SCOPE, free, &hash(7), OWNER, at(6), LEASE)
                .await
                .unwrap(),
            Begin::Started,
            "{free} has no record"
        );
    }
    assert_eq!(
        store
            .begin(SCOPE, "k3", &hash(7), OWNER, at(6), LEASE)
            .await
            .unwrap(),
        Begin::Completed(response(b"three"))
    );
}

pub async fn fresh_batch_racing_one_key_or_stream_writes_once<
    S: IdempotencyStore + EventStore + Clone + 'static,
>(
    store: &S,
) {
    for round in 0..RACE_ROUNDS {
        // Same key and stream from every racer; then other keys, one stream.
        for same_key in [true, false] {
            let stream = format!("race-{round}-{same_key}");
            let barrier = Arc::new(Barrier::new(BEGIN_RACERS));
            let handles: Vec<_> = (0..BEGIN_RACERS)
                .map(|i| {
                    let store = store.clone();
                    let barrier = barrier.clone();
                    let key = if same_key {
                        stream.clone()
                    } else {
                        format!("{stream}-{i}")
                    };
                    let command = fresh(&key, &stream, 2, Some(b"raced"));
                    tokio::spawn(async move {
                        barrier.wait().await;
                        store.execute_fresh(&[command], at(0)).await
                    })
                })
                .collect();
            let mut written = 0;
            for handle in handles {
                match handle.await.unwrap().unwrap().as_slice() {
                    [Fresh::Written(_)] => written += 1,
                    [Fresh::NotFresh] => {}
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(written, 1, "round {round}, same key {same_key}");
            assert_eq!(stream_len(store, &stream).await, 2);
            if !same_key {
                // The losers' claims did not stay behind.
                let mut completed = 0;
                for i in 0..BEGIN_RACERS {
                    match store
                        .begin(
                            SCOPE,
                            &format!("{stream}-{i}"),
                            &hash(7),
                            OWNER,
                            at(1),
                            LEASE,
                        )
                        .await
                        .unwrap()
                    {
                        Begin::Completed(_) => completed += 1,
                        Begin::Started => {}
                        other => panic!("{other:?}"),
                    }
                }
                assert_eq!(completed, 1, "round {round}");
            }
        }
    }
}

pub async fn group_commit_answers_each_request_alone<
    S: IdempotencyStore + EventStore + Clone + 'static,
>(
    store: &S,
) {
    // One command in the crowd meets an existing stream: it alone is not
    // fresh, every other one is written, whatever batches they shared.
    store
        .append(
            &fresh_stream("taken"),
            ExpectedVersion::NoStream,
            &[new_event("Existing", "{}")],
        )
        .await
        .unwrap();
    let committer = FreshCommitter::start(Arc::new(store.clone()));
    let requests = 2 * GROUP_MAX + 3;
    let barrier = Arc::new(Barrier::new(requests));
    let handles: Vec<_> = (0..requests)
        .map(|i| {
            let committer = committer.clone();
            let barrier = barrier.clone();
            let command = if i == 7 {
                fresh("crowd-taken", "taken", 1, Some(b"x"))
            } else {
                fresh(&format!("crowd-{i}"), &format!("crowd-{i}"), 2, Some(b"ok"))
            };
            tokio::spawn(async move {
                barrier.wait().await;
                committer.submit(command, at(0)).await
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let answer = handle.await.unwrap().unwrap();
        if i == 7 {
            assert_eq!(answer, Fresh::NotFresh);
        } else {
            assert!(matches!(answer, Fresh::Written(_)), "{i}: {answer:?}");
            assert_eq!(stream_len(store, &format!("crowd-{i}")).await, 2);
        }
    }
    assert_eq!(stream_len(store, "taken").await, 1);
    // Bad input fails alone, before any batch.
    let mut bad = fresh("", "bad", 1, None);
    bad.key.clear();
    assert!(committer.submit(bad, at(0)).await.is_err());
    assert_eq!(stream_len(store, "bad").await, 0);
}

pub async fn webhook_logs_batch_is_all_or_nothing<S: WebhookLogStore>(store: &S) {
    // Absent fields and a NUL (stored as U+FFFD) take the batch path too.
    let sparse = WebhookLogEntry {
        payload: "a\0b".to_owned(),
        signature_valid: false,
        processing_result: "signature_invalid".to_owned(),
        source_ip: None,
        user_agent: None,
        event_type: None,
        event_id: None,
        ..entry(2)
    };
    // One `received_at` for all and an input sorted by no field, so only the
    // ids (insertion order) put the stored rows back in the batch's order.
    let first = WebhookLogEntry {
        received_at: at(1),
        ..entry(3)
    };
    let sparse = WebhookLogEntry {
        received_at: at(1),
        ..sparse
    };
    let last = WebhookLogEntry {
        received_at: at(1),
        ..entry(1)
    };
    let batch = [first.clone(), sparse.clone(), last.clone()];
    let ids = store.insert_webhook_logs(&batch).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let mut stored = store.recent_webhook_log(10).await.unwrap();
    stored.reverse();
    let stored_sparse = WebhookLogEntry {
        payload: "a\u{FFFD}b".to_owned(),
        ..sparse
    };
    assert_eq!(stored, [first, stored_sparse, last]);
    assert!(store.insert_webhook_logs(&[]).await.unwrap().is_empty());
    // One refused entry refuses the whole call.
    let mut bad = entry(5);
    bad.processing_result = "maybe".to_owned();
    assert!(store.insert_webhook_logs(&[entry(4), bad]).await.is_err());
    assert_eq!(store.recent_webhook_log(10).await.unwrap().len(), 3);
}

pub async fn log_committer_writes_every_row_once<S: WebhookLogStore + Clone + 'static>(store: &S) {
    let writer = LogCommitter::start(Arc::new(store.clone()));
    let rows = 2 * GROUP_MAX + 5;
    let barrier = Arc::new(Barrier::new(rows));
    let handles: Vec<_> = (0..rows)
        .map(|i| {
            let writer = writer.clone();
            let barrier = barrier.clone();
            let mut row = entry(i64::try_from(i).unwrap());
            row.request_id = format!("crowd-{i}");
            tokio::spawn(async move {
                barrier.wait().await;
                writer.insert(row).await
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(rows);
    for handle in handles {
        ids.push(handle.await.unwrap().unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), rows, "one distinct id per row");
    let stored = store.recent_webhook_log(1_000).await.unwrap();
    let mut request_ids: Vec<String> = stored.into_iter().map(|e| e.request_id).collect();
    request_ids.sort();
    let mut wanted: Vec<String> = (0..rows).map(|i| format!("crowd-{i}")).collect();
    wanted.sort();
    assert_eq!(request_ids, wanted);
    // A refused row fails alone.
    let mut bad = entry(0);
    bad.processing_result = "maybe".to_owned();
    assert!(writer.insert(bad).await.is_err());
}

fn part(name: &str, expected: ExpectedVersion) -> StreamAppend {
    StreamAppend {
        stream: fresh_stream(name),
        expected,
        events: vec![new_event("Logged", "{}")],
    }
}

/// The stream `held`, at version 1.
async fn held_stream<S: EventStore>(store: &S) {
    store
        .append(
            &fresh_stream("held"),
            ExpectedVersion::NoStream,
            &[new_event("Existing", "{}")],
        )
        .await
        .unwrap();
}

async fn request_ids_logged<S: WebhookLogStore>(store: &S) -> Vec<String> {
    let mut ids: Vec<String> = store
        .recent_webhook_log(1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.request_id)
        .collect();
    ids.sort();
    ids
}

pub async fn logged_appends_commit_events_and_rows_together<
    S: LoggedAppendStore + EventStore + WebhookLogStore,
>(
    store: &S,
) {
    held_stream(store).await;
    // Two parts, two rows: all written, ids in the rows' order.
    let (results, ids) = store
        .append_many_logged(
            &[
                part("la", ExpectedVersion::NoStream),
                part("held", ExpectedVersion::Exact(1)),
            ],
            &[entry(1), entry(2)],
        )
        .await
        .unwrap();
    assert_eq!(
        results.iter().map(|r| r.last_version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1], "{ids:?}");
    assert_eq!(
        (
            stream_len(store, "la").await,
            stream_len(store, "held").await
        ),
        (1, 2)
    );
    assert_eq!(
        store.recent_webhook_log(10).await.unwrap(),
        [entry(2), entry(1)]
    );
    // One part and one row: the row is not lost to a single-part shortcut.
    let (results, ids) = store
        .append_many_logged(&[part("lb", ExpectedVersion::NoStream)], &[entry(3)])
        .await
        .unwrap();
    assert_eq!((results.len(), ids.len()), (1, 1));
    assert_eq!(stream_len(store, "lb").await, 1);
    assert_eq!(store.recent_webhook_log(10).await.unwrap().len(), 3);
    // A stale part: neither its batch's events nor its rows are written.
    let stale = store
        .append_many_logged(
            &[
                part("lc", ExpectedVersion::NoStream),
                part("held", ExpectedVersion::Exact(1)),
            ],
            &[entry(4)],
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::WrongExpectedVersion { .. })),
        "{stale:?}"
    );
    assert_eq!(stream_len(store, "lc").await, 0);
    // A refused row: nothing is written either.
    let mut bad = entry(5);
    bad.processing_result = "maybe".to_owned();
    assert!(
        store
            .append_many_logged(&[part("ld", ExpectedVersion::NoStream)], &[bad])
            .await
            .is_err()
    );
    assert_eq!(stream_len(store, "ld").await, 0);
    assert_eq!(request_ids_logged(store).await, ["req-1", "req-2", "req-3"]);
    // No rows: a plain append_many.
    let (results, ids) = store
        .append_many_logged(&[part("le", ExpectedVersion::NoStream)], &[])
        .await
        .unwrap();
    assert_eq!((results.len(), ids.len()), (1, 0));
    assert_eq!(stream_len(store, "le").await, 1);
}

/// [`LoggedAppendStore::read_stream_unless_processed`] answers as
/// `webhook_event_processed` then `read_stream(stream, 1, max)`: the page
/// is `read_stream`'s (a missing stream's is empty, `max` holds), and only
/// an `ok` row of that very event id makes it `None`.
pub async fn read_stream_unless_processed_is_dedupe_then_read<
    S: LoggedAppendStore + EventStore + WebhookLogStore,
>(
    store: &S,
) {
    let s = fresh_stream("dedupe-read");
    let missing = fresh_stream("dedupe-missing");
    let read = |event_id: &'static str, stream: &StreamId, max: u32| {
        let stream = stream.clone();
        async move {
            store
                .read_stream_unless_processed(event_id, &stream, max)
                .await
                .unwrap()
        }
    };
    assert_eq!(read("evt_1", &s, 100).await, Some(vec![]));
    let events: Vec<NewEvent> = (0..3)
        .map(|i| new_event("Logged", format!(r#"{{"i":{i}}}"#)))
        .collect();
    store
        .append(&s, ExpectedVersion::NoStream, &events)
        .await
        .unwrap();
    let whole = store.read_stream(&s, 1, 100).await.unwrap();
    assert_eq!(whole.len(), 3);
    assert_eq!(read("evt_1", &s, 100).await, Some(whole.clone()));
    assert_eq!(read("evt_1", &s, 2).await, Some(whole[..2].to_vec()));
    // Rows of the event that did not end `ok`, and an `ok` row of another
    // event, are no duplicate.
    for (i, result) in ["error: boom", "signature_invalid", "skipped", "duplicate"]
        .into_iter()
        .enumerate()
    {
        let e = WebhookLogEntry {
            processing_result: result.to_owned(),
            delivery_id: Some(delivery(200 + i as i64)),
            ..entry(1)
        };
        store.insert_webhook_log(&e).await.unwrap();
    }
    store.insert_webhook_log(&entry(2)).await.unwrap();
    assert_eq!(read("evt_1", &s, 100).await, Some(whole.clone()));
    // Its `ok` row: a duplicate, whichever stream.
    store.insert_webhook_log(&entry(1)).await.unwrap();
    assert_eq!(read("evt_1", &s, 100).await, None);
    assert_eq!(read("evt_1", &missing, 100).await, None);
    assert_eq!(read("evt_10", &s, 100).await, Some(whole));
}

pub async fn grouped_appends_commit_each_log_row_with_its_append<
    S: LoggedAppendStore + EventStore + WebhookLogStore + Clone + 'static,
>(
    store: &S,
) {
    held_stream(store).await;
    let appends = GroupedAppends::start_logged(Arc::new(store.clone()), Arc::new(store.clone()));
    // A crowd sharing batches: logged appends, plain ones (every third), one
    // stale logged append, and two logged appends to one stream (the second
    // of a batch runs alone after the first).
    let requests = 2 * GROUP_MAX + 3;
    let barrier = Arc::new(Barrier::new(requests));
    let handles: Vec<_> = (0..requests)
        .map(|i| {
            let appends = appends.clone();
            let barrier = barrier.clone();
            let mut row = entry(i64::try_from(i).unwrap());
            row.request_id = format!("crowd-{i:03}");
            let (name, expected) = match i {
                7 => ("held".to_owned(), ExpectedVersion::Exact(5)),
                10 | 11 => ("twice".to_owned(), ExpectedVersion::Any),
                _ => (format!("g-{i}"), ExpectedVersion::NoStream),
            };
            tokio::spawn(async move {
                barrier.wait().await;
                let events = [new_event("Logged", "{}")];
                if i % 3 == 0 {
                    appends
                        .append(&fresh_stream(&name), expected, &events)
                        .await
                        .map(|_| None)
                } else {
                    appends
                        .append_logged(&fresh_stream(&name), expected, &events, row)
                        .await
                        .map(|(_, id)| Some(id))
                }
            })
        })
        .collect();
    let mut wanted = Vec::new();
    for (i, handle) in handles.into_iter().enumerate() {
        let answer = handle.await.unwrap();
        match i {
            7 => assert!(
                matches!(answer, Err(StoreError::WrongExpectedVersion { .. })),
                "{answer:?}"
            ),
            _ if i % 3 == 0 => assert_eq!(answer, Ok(None), "{i}"),
            _ => {
                assert!(matches!(answer, Ok(Some(_))), "{i}: {answer:?}");
                wanted.push(format!("crowd-{i:03}"));
            }
        }
        if !matches!(i, 7 | 10 | 11) {
            assert_eq!(stream_len(store, &format!("g-{i}")).await, 1, "{i}");
        }
    }
    assert_eq!(
        stream_len(store, "held").await,
        1,
        "the stale append wrote nothing"
    );
    assert_eq!(stream_len(store, "twice").await, 2);
    // Exactly the rows of the logged appends that committed, once each.
    assert_eq!(request_ids_logged(store).await, wanted);
    // Without a log store a logged append is refused and writes nothing.
    let plain = GroupedAppends::start(Arc::new(store.clone()));
    let refused = plain
        .append_logged(
            &fresh_stream("unlogged"),
            ExpectedVersion::NoStream,
            &[new_event("Logged", "{}")],
            entry(1),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Backend(_))),
        "{refused:?}"
    );
    assert_eq!(stream_len(store, "unlogged").await, 0);
}

/// For a backend's own test, after it made the database itself refuse
/// every `hyperswitch_webhook_log` row (a trigger): a logged append whose
/// row the database refuses writes no events either.
pub async fn logged_append_with_a_row_refused_by_the_database_writes_nothing<
    S: LoggedAppendStore + EventStore + WebhookLogStore,
>(
    store: &S,
) {
    let refused = store
        .append_many_logged(
            &[
                part("ra", ExpectedVersion::NoStream),
                part("rb", ExpectedVersion::NoStream),
            ],
            &[entry(1)],
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Backend(_))),
        "{refused:?}"
    );
    assert_eq!(
        (stream_len(store, "ra").await, stream_len(store, "rb").await),
        (0, 0)
    );
    let refused = store
        .append_many_logged(&[part("rc", ExpectedVersion::NoStream)], &[entry(2)])
        .await;
    assert!(
        matches!(refused, Err(StoreError::Backend(_))),
        "{refused:?}"
    );
    assert_eq!(stream_len(store, "rc").await, 0);
    assert!(store.recent_webhook_log(10).await.unwrap().is_empty());
    // Without a row the same appends go through.
    store
        .append_many_logged(&[part("rc", ExpectedVersion::NoStream)], &[])
        .await
        .unwrap();
    assert_eq!(stream_len(store, "rc").await, 1);
}

pub async fn webhook_log_rewrite_of_a_delivery_keeps_one_row<
    S: LoggedAppendStore + EventStore + WebhookLogStore,
>(
    store: &S,
) {
    // A write retried after its answer was lost (same delivery id): the
    // stored row's id, and no second row.
    let first = store.insert_webhook_log(&entry(1)).await.unwrap();
    assert_eq!(store.insert_webhook_log(&entry(1)).await.unwrap(), first);
    // In a batch, beside new rows and with one repeated inside the batch:
    // every entry answers its delivery's row, in order.
    let ids = store
        .insert_webhook_logs(&[entry(2), entry(1), entry(3), entry(2)])
        .await
        .unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[1], first);
    assert_eq!(ids[3], ids[0]);
    assert!(first < ids[0] && ids[0] < ids[2], "{first} {ids:?}");
    // A logged append retried whole: its events come back as already
    // there, and its row is the one written the first time.
    let batch = [part("retried", ExpectedVersion::NoStream)];
    let (_, written) = store.append_many_logged(&batch, &[entry(4)]).await.unwrap();
    let (again, rewritten) = store.append_many_logged(&batch, &[entry(4)]).await.unwrap();
    assert!(again[0].already_existed, "{again:?}");
    assert_eq!(rewritten, written);
    assert_eq!(stream_len(store, "retried").await, 1);
    assert_eq!(
        request_ids_logged(store).await,
        ["req-1", "req-2", "req-3", "req-4"]
    );
    // Without a delivery id nothing conflicts: two writes, two rows.
    let anonymous = WebhookLogEntry {
        delivery_id: None,
        ..entry(5)
    };
    let a = store.insert_webhook_log(&anonymous).await.unwrap();
    let b = store.insert_webhook_log(&anonymous).await.unwrap();
    assert_ne!(a, b);
    assert_eq!(store.recent_webhook_log(10).await.unwrap().len(), 6);
}
