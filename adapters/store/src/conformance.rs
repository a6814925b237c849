//! The conformance suite: one set of behaviour tests every backend runs
//! unchanged, through [`conformance_suite!`](crate::conformance_suite).
//!
//! A backend's test file does:
//!
//! ```ignore
//! mod postgres {
//!     ledger_store::conformance_suite!(crate::fresh_store().await);
//! }
//! ```
//!
//! and every case shows up by name
//! (`postgres::gap_safe_read_all_under_concurrent_writers`). The factory
//! expression is evaluated inside each case's async body, once per case.
//!
//! **Guarantees:** every case asserts exact values (versions, positions,
//! error variants with their fields, bytes), so each one can fail. Cases name
//! their streams after a fresh run id and filter the global feed to those
//! streams, so a factory may hand every case the same database. Nothing
//! sleeps: concurrency is ordered through channels and reader progress, and a
//! "nothing was written" check reads the feed up to a sentinel event appended
//! afterwards.
//!
//! Backend requirements beyond the traits: readers never wait for the write
//! lock or for a held append, and the store serves
//! [`GAP_CONNECTIONS_MIN`] operations at once (a pool at least that big).

// This module is test code shipped in the library so every backend's test
// crate can run it: panicking on an unexpected result is how a case fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use ledger_core::envelope::{EVENT_TYPE_MAX, EVENTS_PER_APPEND_MAX, PAYLOAD_BYTES_MAX};
use ledger_core::hash::{ChainError, GENESIS, verify_stream};
use ledger_core::ids::{EventId, StreamId};
use ledger_core::{Checkpoint, ExpectedVersion, Metadata, NewEvent, RecordedEvent, Source};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{AppendResult, EventStore, InputError, READ_BATCH_MAX, StoreError, StreamAppend};

/// An append whose transaction has written its rows but not yet committed.
#[async_trait]
pub trait HeldAppend: Send {
    async fn commit(self: Box<Self>) -> Result<AppendResult, StoreError>;
    async fn rollback(self: Box<Self>) -> Result<(), StoreError>;
}

/// What the suite needs beyond [`EventStore`] to inject faults.
#[async_trait]
pub trait ConformanceBackend: EventStore + Sized {
    /// Starts an append in its own transaction and returns once its rows are
    /// written but uncommitted (on backends with a single writer, once it
    /// holds the write lock). Other writers may proceed or queue, as the
    /// backend allows; readers must not see the held events until commit.
    async fn begin_held_append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Box<dyn HeldAppend>, StoreError>;

    /// Flips one byte of the stored payload of `stream`@`version`, bypassing
    /// every check (simulates disk or operator tampering). Which byte is the
    /// backend's choice; the suite's payloads contain ASCII letters, whose
    /// case flip keeps the text valid UTF-8 and valid JSON.
    async fn tamper_payload(&self, stream: &StreamId, version: u64) -> Result<(), StoreError>;

    /// Deletes the stored row of `stream`@`version`, bypassing every check.
    async fn delete_event(&self, stream: &StreamId, version: u64) -> Result<(), StoreError>;

    /// Whether concurrent writers really run concurrently (Postgres) or queue
    /// behind one write lock (SQLite, memory). The gap test adapts its
    /// schedule, never its assertions.
    fn concurrent_writers(&self) -> bool;
}

/// Runs every conformance case as a `#[test]` named after it, each on its
/// own multi-thread tokio runtime. `$factory` is an expression evaluated
/// inside the case's async body (it may `.await`) yielding the backend.
///
/// The runtime is built by [`__run_case`] rather than `#[tokio::test]`:
/// that attribute takes its `crate = "…"` path as a string, where `$crate`
/// does not expand, so a backend's test crate would need tokio under that
/// exact name.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr $(,)?) => {
        $crate::conformance_suite!(@cases $factory;
            append_no_stream_creates_stream_then_conflicts,
            expected_version_rules,
            idempotent_reappend_returns_original_positions,
            reappend_partial_overlap_conflicts,
            reappend_same_id_other_content_conflicts,
            same_event_id_in_another_stream_is_independent,
            append_many_writes_every_part,
            append_many_is_all_or_nothing,
            append_many_of_single_events,
            read_stream_pages_and_missing_stream_is_empty,
            read_all_pages_return_every_event_once_in_order,
            payload_and_metadata_bytes_round_trip_exactly,
            hash_chain_verifies_and_detects_tampered_payload,
            hash_chain_detects_deleted_event,
            bad_input_is_rejected_and_writes_nothing,
            concurrent_expected_version_has_one_winner,
            held_append_is_invisible_until_commit,
            gap_safe_read_all_under_concurrent_writers,
            unknown_event_type_round_trips,
        );
    };
    (@cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::__run_case(::std::stringify!($case), async {
                    let store = $factory;
                    $crate::conformance::$case(&store).await;
                });
            }
        )+
    };
}

/// Worker threads of each case's runtime: enough that a backend's own
/// background tasks (pool maintenance, SQLite worker threads) never starve.
pub const CASE_WORKER_THREADS: usize = 4;
/// A case still running after this is reported as hung (deadlock, or a
/// reader stalled forever) instead of blocking the test run.
pub const CASE_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// How long a read-all barrier waits for its sentinel event. Generous
/// because on Postgres another case's open transaction anywhere in the
/// cluster holds every reader back until it ends.
pub const FEED_WAIT_MAX: Duration = Duration::from_secs(30);
/// Tasks racing for the same expected version.
pub const RACERS: usize = 8;

/// Plain writers in the gap test.
pub const GAP_WRITERS: usize = 6;
/// Appends per plain writer (each of 1–3 events).
pub const GAP_APPENDS_PER_WRITER: usize = 50;
/// Streams every plain writer may append to (beside its private one).
pub const GAP_SHARED_STREAMS: usize = 3;
/// Tasks that run held appends, so two can be open at once.
pub const GAP_HELD_DRIVERS: usize = 2;
/// Held appends per driver; every third is rolled back.
pub const GAP_HELD_PER_DRIVER: usize = 6;
/// Reader polls a held append waits for before it resolves.
pub const GAP_HELD_POLLS: u64 = 3;
/// On concurrent backends, reader polls a held append waits for another
/// writer to commit above it before giving up on that and resolving anyway.
pub const GAP_OVERTAKE_POLLS_MAX: u64 = 200;
/// The gap reader's page: small, so pages end mid-batch and mid-hold.
pub const GAP_READ_PAGE: u32 = 7;
/// After every writer is done, how long the reader may take to see every
/// committed event before the test reports what it missed.
pub const GAP_DRAIN_MAX: Duration = Duration::from_secs(20);
/// Seeds the writers' schedules: what each one appends, and where.
pub const GAP_SEED: u64 = 0x1ed9_e500;
/// Operations the gap test runs at once: every writer and held driver may
/// each occupy a connection (blocked behind a held append) while the reader
/// still needs one. A backend's pool must be at least this big.
pub const GAP_CONNECTIONS_MIN: usize = GAP_WRITERS + GAP_HELD_DRIVERS + 1;

#[doc(hidden)]
pub fn __run_case<F: Future<Output = ()>>(name: &str, case: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CASE_WORKER_THREADS)
        .enable_all()
        .build()
        .expect("build the case's tokio runtime");
    runtime.block_on(async {
        if tokio::time::timeout(CASE_TIMEOUT_MAX, case).await.is_err() {
            panic!("conformance case {name} did not finish within {CASE_TIMEOUT_MAX:?}: a deadlock or a stalled reader");
        }
    });
}

/// A new event with a random id and canonical metadata from the API, for the
/// tests of every backend.
pub fn new_event(event_type: impl Into<String>, payload_json: impl Into<String>) -> NewEvent {
    NewEvent {
        event_id: EventId(Uuid::new_v4()),
        event_type: event_type.into(),
        schema_version: 1,
        payload: payload_json.into(),
        metadata: Metadata {
            correlation_id: Uuid::new_v4(),
            causation_id: None,
            actor: "conformance".to_owned(),
            source: Source::Api,
            request_id: None,
        }
        .to_canonical_json(),
    }
}

// ---------------------------------------------------------------------------
// Helpers

/// A fresh prefix for one case's streams.
fn run_id() -> String {
    format!("cf{}", Uuid::new_v4().simple())
}

fn stream(run: &str, name: &str) -> StreamId {
    StreamId::new(format!("{run}-{name}")).expect("valid stream id")
}

fn is_run_event(run: &str, e: &RecordedEvent) -> bool {
    e.stream_id
        .as_str()
        .strip_prefix(run)
        .is_some_and(|rest| rest.starts_with('-'))
}

fn events(count: usize, label: &str) -> Vec<NewEvent> {
    (0..count)
        .map(|i| {
            new_event(
                "ConformanceEvent",
                format!(r#"{{"label":"{label}","index":{i}}}"#),
            )
        })
        .collect()
}

fn ids(events: &[NewEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.event_id).collect()
}

fn wrong_version(stream: &StreamId, expected: ExpectedVersion, actual: Option<u64>) -> StoreError {
    StoreError::WrongExpectedVersion {
        stream: stream.clone(),
        expected,
        actual,
    }
}

fn assert_strictly_increasing(positions: &[u64], what: &str) {
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "{what}: positions not strictly increasing: {positions:?}"
    );
}

async fn append_ok<B: EventStore>(
    store: &B,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> AppendResult {
    store
        .append(stream, expected, events)
        .await
        .unwrap_or_else(|e| panic!("append to {stream} with {expected:?} failed: {e}"))
}

/// `(first_version, last_version, events, already_existed)` per result.
fn shape(results: &[AppendResult]) -> Vec<(u64, u64, usize, bool)> {
    results
        .iter()
        .map(|r| {
            (
                r.first_version,
                r.last_version,
                r.positions.len(),
                r.already_existed,
            )
        })
        .collect()
}

/// The run's events in the feed after `start` are exactly `expected`, each
/// once at its position.
async fn assert_feed_positions<B: EventStore>(
    store: &B,
    run: &str,
    start: Checkpoint,
    expected: &HashMap<EventId, u64>,
) {
    let feed = feed_until_sentinel(store, run, start).await;
    let found: HashMap<EventId, u64> = feed
        .iter()
        .map(|e| (e.event_id, e.global_position))
        .collect();
    assert_eq!(feed.len(), expected.len(), "each event exactly once");
    assert_eq!(&found, expected);
}

/// Appending `batch` again answers `already_existed` with `first`'s
/// positions, part by part.
async fn assert_reappends_as_before<B: EventStore>(
    store: &B,
    batch: &[StreamAppend],
    first: &[AppendResult],
) {
    let again = store.append_many(batch).await.expect("re-append_many");
    let reported: Vec<_> = again
        .iter()
        .map(|r| (r.positions.clone(), r.already_existed))
        .collect();
    let original: Vec<_> = first.iter().map(|r| (r.positions.clone(), true)).collect();
    assert_eq!(reported, original);
}

async fn read_whole<B: EventStore>(store: &B, stream: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(stream, 1, READ_BATCH_MAX)
        .await
        .expect("read_stream")
}

/// One `read_all` page, checked: at most `max_count` events, checkpoints
/// strictly increasing from `after` (so every read loop makes progress or
/// fails). Yields afterwards, so a loop over a store that never suspends
/// still lets the case timeout fire.
async fn read_page<B: EventStore>(
    store: &B,
    after: Checkpoint,
    max_count: u32,
) -> Vec<RecordedEvent> {
    let page = store.read_all(after, max_count).await.expect("read_all");
    assert!(
        page.len() <= max_count as usize,
        "read_all returned {} events for max_count {max_count}",
        page.len()
    );
    let mut previous = after;
    for e in &page {
        assert!(
            e.checkpoint() > previous,
            "read_all after {after:?} returned checkpoint {:?} after {previous:?}",
            e.checkpoint()
        );
        previous = e.checkpoint();
    }
    tokio::task::yield_now().await;
    page
}

/// The last checkpoint in the feed right now. Everything appended after this
/// returns sorts after it.
async fn tail_checkpoint<B: EventStore>(store: &B) -> Checkpoint {
    let mut after = Checkpoint::START;
    loop {
        let page = read_page(store, after, READ_BATCH_MAX).await;
        match page.last() {
            Some(last) => after = last.checkpoint(),
            None => return after,
        }
    }
}

/// Appends a sentinel event, then reads the feed from `from` until the
/// sentinel shows up, checking checkpoints strictly increase. Returns this
/// run's events (sentinels excluded). Anything appended (or half-appended)
/// before the sentinel is visible by then, so this is the barrier behind
/// every "nothing was written" check on the feed.
async fn feed_until_sentinel<B: EventStore>(
    store: &B,
    run: &str,
    from: Checkpoint,
) -> Vec<RecordedEvent> {
    let sentinel_stream = StreamId::new(format!("{run}.sentinel{}", Uuid::new_v4().simple()))
        .expect("valid stream id");
    let sentinel = new_event("ConformanceSentinel", "{}");
    append_ok(
        store,
        &sentinel_stream,
        ExpectedVersion::NoStream,
        std::slice::from_ref(&sentinel),
    )
    .await;

    let deadline = Instant::now() + FEED_WAIT_MAX;
    let mut after = from;
    let mut found = Vec::new();
    loop {
        let page = read_page(store, after, READ_BATCH_MAX).await;
        for e in page {
            after = e.checkpoint();
            if e.event_id == sentinel.event_id {
                return found;
            }
            if is_run_event(run, &e) {
                found.push(e);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sentinel appended to {sentinel_stream} never appeared in read_all within {FEED_WAIT_MAX:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Expected versions

/// `NoStream` creates a stream at versions 1..n; a second `NoStream` fails.
pub async fn append_no_stream_creates_stream_then_conflicts<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "a");
    let batch = events(3, "first");

    let result = append_ok(store, &s, ExpectedVersion::NoStream, &batch).await;
    assert_eq!((result.first_version, result.last_version), (1, 3));
    assert!(!result.already_existed);
    assert_eq!(result.positions.len(), 3);
    assert_strictly_increasing(&result.positions, "one append");

    let stored = read_whole(store, &s).await;
    let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    assert_eq!(
        stored.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        ids(&batch)
    );
    assert_eq!(
        stored.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        result.positions
    );
    assert!(stored.iter().all(|e| e.stream_id == s));

    let again = store
        .append(&s, ExpectedVersion::NoStream, &events(1, "second"))
        .await;
    assert_eq!(
        again,
        Err(wrong_version(&s, ExpectedVersion::NoStream, Some(3)))
    );
    assert_eq!(store.stream_version(&s).await, Ok(Some(3)));
}

/// `Exact`, `StreamExists` and `Any` on existing and missing streams.
pub async fn expected_version_rules<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "exact");
    let missing = stream(&run, "missing");

    append_ok(store, &s, ExpectedVersion::NoStream, &events(1, "v1")).await;
    let second = append_ok(store, &s, ExpectedVersion::Exact(1), &events(2, "v2")).await;
    assert_eq!((second.first_version, second.last_version), (2, 3));

    for stale in [1, 2, 4, 99] {
        let result = store
            .append(&s, ExpectedVersion::Exact(stale), &events(1, "stale"))
            .await;
        assert_eq!(
            result,
            Err(wrong_version(&s, ExpectedVersion::Exact(stale), Some(3)))
        );
    }
    let result = store
        .append(&missing, ExpectedVersion::Exact(1), &events(1, "x"))
        .await;
    assert_eq!(
        result,
        Err(wrong_version(&missing, ExpectedVersion::Exact(1), None))
    );
    let result = store
        .append(&missing, ExpectedVersion::StreamExists, &events(1, "x"))
        .await;
    assert_eq!(
        result,
        Err(wrong_version(&missing, ExpectedVersion::StreamExists, None))
    );
    assert_eq!(store.stream_version(&missing).await, Ok(None));

    let exists = append_ok(store, &s, ExpectedVersion::StreamExists, &events(1, "v4")).await;
    assert_eq!((exists.first_version, exists.last_version), (4, 4));
    let any = append_ok(store, &s, ExpectedVersion::Any, &events(2, "v5")).await;
    assert_eq!((any.first_version, any.last_version), (5, 6));
    let created = append_ok(store, &missing, ExpectedVersion::Any, &events(1, "new")).await;
    assert_eq!((created.first_version, created.last_version), (1, 1));

    assert_eq!(store.stream_version(&s).await, Ok(Some(6)));
    assert_eq!(store.stream_version(&missing).await, Ok(Some(1)));
    assert_eq!(read_whole(store, &s).await.len(), 6);
}

// ---------------------------------------------------------------------------
// Idempotent re-append

/// Re-appending ids the stream holds returns the original result and writes
/// nothing, whatever `expected` says now.
pub async fn idempotent_reappend_returns_original_positions<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "idem");
    let start = tail_checkpoint(store).await;
    let first = events(2, "first");
    let original = append_ok(store, &s, ExpectedVersion::NoStream, &first).await;
    append_ok(store, &s, ExpectedVersion::Exact(2), &events(1, "later")).await;

    // Stale expected versions: the idempotency check runs first.
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(2),
        ExpectedVersion::Any,
    ] {
        let again = append_ok(store, &s, expected, &first).await;
        assert_eq!(
            again,
            AppendResult {
                first_version: 1,
                last_version: 2,
                positions: original.positions.clone(),
                already_existed: true,
            },
            "re-append with {expected:?}"
        );
    }
    // A consecutive sub-run of a stored append is a re-append too.
    let tail = append_ok(store, &s, ExpectedVersion::Exact(3), &first[1..]).await;
    assert_eq!(
        tail,
        AppendResult {
            first_version: 2,
            last_version: 2,
            positions: original.positions[1..].to_vec(),
            already_existed: true,
        }
    );
    let many = store
        .append_many(&[StreamAppend {
            stream: s.clone(),
            expected: ExpectedVersion::NoStream,
            events: first.clone(),
        }])
        .await;
    assert_eq!(
        many,
        Ok(vec![AppendResult {
            first_version: 1,
            last_version: 2,
            positions: original.positions.clone(),
            already_existed: true,
        }])
    );

    assert_eq!(store.stream_version(&s).await, Ok(Some(3)));
    assert_eq!(read_whole(store, &s).await.len(), 3);
    assert_eq!(feed_until_sentinel(store, &run, start).await.len(), 3);
}

/// Some ids stored and some new, or stored ids in another order, conflict.
pub async fn reappend_partial_overlap_conflicts<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "partial");
    let stored = events(2, "stored");
    append_ok(store, &s, ExpectedVersion::NoStream, &stored).await;

    let fresh = new_event("ConformanceEvent", r#"{"label":"fresh"}"#);
    let overlap = vec![stored[1].clone(), fresh.clone()];
    assert_eq!(
        store.append(&s, ExpectedVersion::Any, &overlap).await,
        Err(StoreError::EventIdConflict {
            stream: s.clone(),
            event_id: fresh.event_id,
        })
    );
    let new_first = vec![fresh.clone(), stored[0].clone()];
    assert_eq!(
        store.append(&s, ExpectedVersion::Any, &new_first).await,
        Err(StoreError::EventIdConflict {
            stream: s.clone(),
            event_id: fresh.event_id,
        })
    );
    let reordered = vec![stored[1].clone(), stored[0].clone()];
    assert_eq!(
        store.append(&s, ExpectedVersion::Any, &reordered).await,
        Err(StoreError::EventIdConflict {
            stream: s.clone(),
            event_id: stored[0].event_id,
        })
    );

    assert_eq!(store.stream_version(&s).await, Ok(Some(2)));
    let back = read_whole(store, &s).await;
    assert_eq!(
        back.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        ids(&stored)
    );
}

/// A stored id with another payload or type conflicts and writes nothing.
pub async fn reappend_same_id_other_content_conflicts<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "content");
    let original = new_event("AmountSet", r#"{"amount_minor":100}"#);
    append_ok(
        store,
        &s,
        ExpectedVersion::NoStream,
        std::slice::from_ref(&original),
    )
    .await;

    let other_payload = NewEvent {
        payload: r#"{"amount_minor":101}"#.to_owned(),
        ..original.clone()
    };
    let other_type = NewEvent {
        event_type: "AmountChanged".to_owned(),
        ..original.clone()
    };
    for changed in [other_payload, other_type] {
        assert_eq!(
            store.append(&s, ExpectedVersion::Any, &[changed]).await,
            Err(StoreError::EventIdConflict {
                stream: s.clone(),
                event_id: original.event_id,
            })
        );
    }
    let back = read_whole(store, &s).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].payload, original.payload);
    assert_eq!(back[0].event_type, original.event_type);
}

/// Event ids are unique per stream, not globally.
pub async fn same_event_id_in_another_stream_is_independent<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let (a, b) = (stream(&run, "a"), stream(&run, "b"));
    let event = new_event("ConformanceEvent", r#"{"shared":true}"#);
    let in_a = append_ok(
        store,
        &a,
        ExpectedVersion::NoStream,
        std::slice::from_ref(&event),
    )
    .await;
    let in_b = append_ok(
        store,
        &b,
        ExpectedVersion::NoStream,
        std::slice::from_ref(&event),
    )
    .await;

    assert!(!in_b.already_existed);
    assert_eq!((in_b.first_version, in_b.last_version), (1, 1));
    assert_ne!(in_a.positions, in_b.positions);
    let back = read_whole(store, &b).await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].event_id, back[0].global_position),
        (event.event_id, in_b.positions[0])
    );
}

// ---------------------------------------------------------------------------
// append_many

/// Every part is written at its own versions, visible in the feed at the
/// returned positions, and a re-appended part reports `already_existed`.
pub async fn append_many_writes_every_part<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let (a, b, c) = (stream(&run, "a"), stream(&run, "b"), stream(&run, "c"));
    let start = tail_checkpoint(store).await;
    let c_first = events(1, "c1");
    let c_original = append_ok(store, &c, ExpectedVersion::NoStream, &c_first).await;

    let batch = vec![
        StreamAppend {
            stream: a.clone(),
            expected: ExpectedVersion::NoStream,
            events: events(2, "a"),
        },
        StreamAppend {
            stream: b.clone(),
            expected: ExpectedVersion::Any,
            events: events(1, "b"),
        },
        StreamAppend {
            stream: c.clone(),
            expected: ExpectedVersion::Exact(1),
            events: events(3, "c"),
        },
    ];
    let results = store.append_many(&batch).await.expect("append_many");
    assert_eq!(results.len(), 3);
    assert_eq!(
        shape(&results),
        vec![(1, 2, 2, false), (1, 1, 1, false), (2, 4, 3, false)]
    );
    for r in &results {
        assert_strictly_increasing(&r.positions, "one append_many part");
    }

    let mut expected_positions: HashMap<EventId, u64> = HashMap::new();
    expected_positions.insert(c_first[0].event_id, c_original.positions[0]);
    for (part, result) in batch.iter().zip(&results) {
        for (event, position) in part.events.iter().zip(&result.positions) {
            expected_positions.insert(event.event_id, *position);
        }
    }
    assert_feed_positions(store, &run, start, &expected_positions).await;

    // Re-appending a whole batch is idempotent part by part.
    assert_reappends_as_before(store, &batch, &results).await;
    assert_eq!(store.stream_version(&c).await, Ok(Some(4)));
}

/// One failing part (version, id conflict, bad input) writes no part.
pub async fn append_many_is_all_or_nothing<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let (existing, fresh) = (stream(&run, "existing"), stream(&run, "fresh"));
    let start = tail_checkpoint(store).await;
    let stored = events(2, "stored");
    append_ok(store, &existing, ExpectedVersion::NoStream, &stored).await;

    let good_part = || StreamAppend {
        stream: fresh.clone(),
        expected: ExpectedVersion::NoStream,
        events: events(2, "must-not-land"),
    };
    let mut rejected: Vec<EventId> = Vec::new();

    let wrong = vec![
        good_part(),
        StreamAppend {
            stream: existing.clone(),
            expected: ExpectedVersion::Exact(1),
            events: events(1, "wrong-version"),
        },
    ];
    assert_eq!(
        store.append_many(&wrong).await,
        Err(wrong_version(&existing, ExpectedVersion::Exact(1), Some(2)))
    );
    rejected.extend(wrong.iter().flat_map(|p| ids(&p.events)));

    let newcomer = new_event("ConformanceEvent", r#"{"label":"newcomer"}"#);
    let conflict = vec![
        good_part(),
        StreamAppend {
            stream: existing.clone(),
            expected: ExpectedVersion::Any,
            events: vec![stored[1].clone(), newcomer.clone()],
        },
    ];
    assert_eq!(
        store.append_many(&conflict).await,
        Err(StoreError::EventIdConflict {
            stream: existing.clone(),
            event_id: newcomer.event_id,
        })
    );
    rejected.extend(ids(&conflict[0].events));
    rejected.push(newcomer.event_id);

    let bad = new_event("ConformanceEvent", "not json");
    let bad_input = vec![
        good_part(),
        StreamAppend {
            stream: existing.clone(),
            expected: ExpectedVersion::Any,
            events: vec![bad.clone()],
        },
    ];
    assert_eq!(
        store.append_many(&bad_input).await,
        Err(StoreError::Input(InputError::PayloadNotJson {
            event_id: bad.event_id
        }))
    );
    rejected.extend(bad_input.iter().flat_map(|p| ids(&p.events)));

    let twice = vec![good_part(), good_part()];
    assert_eq!(
        store.append_many(&twice).await,
        Err(StoreError::Input(InputError::DuplicateStream(
            fresh.clone()
        )))
    );
    assert_eq!(
        store.append_many(&[]).await,
        Err(StoreError::Input(InputError::EmptyAppend))
    );

    assert_eq!(store.stream_version(&fresh).await, Ok(None));
    assert_eq!(store.stream_version(&existing).await, Ok(Some(2)));
    assert!(read_whole(store, &fresh).await.is_empty());
    let feed = feed_until_sentinel(store, &run, start).await;
    assert_eq!(
        feed.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        ids(&stored)
    );
    assert!(feed.iter().all(|e| !rejected.contains(&e.event_id)));
}

/// A batch of one event per stream (a group commit's usual shape, which
/// Postgres writes in one statement): every expectation kind, new and
/// existing streams, chained hashes, an idempotent re-append, and a wrong
/// version or an id conflict in one part writing no part.
pub async fn append_many_of_single_events<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let names = ["new-no-stream", "new-any", "exact", "exists", "any"];
    let s: Vec<StreamId> = names.iter().map(|n| stream(&run, n)).collect();
    let start = tail_checkpoint(store).await;
    let mut stored: HashMap<EventId, u64> = HashMap::new();
    for existing in &s[2..] {
        let r = append_ok(
            store,
            existing,
            ExpectedVersion::NoStream,
            &events(2, "first"),
        )
        .await;
        for (e, p) in read_whole(store, existing).await.iter().zip(&r.positions) {
            stored.insert(e.event_id, *p);
        }
    }
    let expectations = [
        ExpectedVersion::NoStream,
        ExpectedVersion::Any,
        ExpectedVersion::Exact(2),
        ExpectedVersion::StreamExists,
        ExpectedVersion::Any,
    ];
    let batch: Vec<StreamAppend> = s
        .iter()
        .zip(expectations)
        .enumerate()
        .map(|(i, (stream, expected))| StreamAppend {
            stream: stream.clone(),
            expected,
            events: events(1, &format!("single-{i}")),
        })
        .collect();
    let results = store.append_many(&batch).await.expect("append_many");
    assert_eq!(
        shape(&results),
        vec![
            (1, 1, 1, false),
            (1, 1, 1, false),
            (3, 3, 1, false),
            (3, 3, 1, false),
            (3, 3, 1, false)
        ]
    );
    for (part, result) in batch.iter().zip(&results) {
        stored.insert(part.events[0].event_id, result.positions[0]);
        let whole = read_whole(store, &part.stream).await;
        assert_eq!(
            verify_stream(&part.stream, &whole),
            Ok(()),
            "{}",
            part.stream
        );
        assert_eq!(
            whole.last().map(|e| e.event_id),
            Some(part.events[0].event_id)
        );
    }
    assert_feed_positions(store, &run, start, &stored).await;

    // The same batch again: every part already there, same positions.
    assert_reappends_as_before(store, &batch, &results).await;

    // New parts beside one already stored: the new ones land, the stored
    // one answers its original position.
    let (m1, m2) = (stream(&run, "mixed-1"), stream(&run, "mixed-2"));
    let mixed = vec![
        StreamAppend {
            stream: m1.clone(),
            expected: ExpectedVersion::NoStream,
            events: events(1, "mixed-1"),
        },
        batch[2].clone(),
        StreamAppend {
            stream: m2.clone(),
            expected: ExpectedVersion::Any,
            events: events(1, "mixed-2"),
        },
    ];
    let answers = store.append_many(&mixed).await.expect("mixed append_many");
    assert_eq!(
        shape(&answers),
        vec![(1, 1, 1, false), (3, 3, 1, true), (1, 1, 1, false)]
    );
    assert_eq!(answers[1].positions, results[2].positions);
    assert_eq!(read_whole(store, &m2).await.len(), 1);

    // One part's stale expectation, or a new event under a stored id with
    // other content, fails the batch and writes none of it.
    let fresh = stream(&run, "fresh");
    let good = || StreamAppend {
        stream: fresh.clone(),
        expected: ExpectedVersion::NoStream,
        events: events(1, "must-not-land"),
    };
    let stale = vec![
        good(),
        StreamAppend {
            stream: s[2].clone(),
            expected: ExpectedVersion::Exact(2),
            events: events(1, "stale"),
        },
    ];
    assert_eq!(
        store.append_many(&stale).await,
        Err(wrong_version(&s[2], ExpectedVersion::Exact(2), Some(3)))
    );
    let mut reused = batch[4].events[0].clone();
    reused.payload = r#"{"label":"other content"}"#.to_owned();
    let conflict = vec![
        good(),
        StreamAppend {
            stream: s[4].clone(),
            expected: ExpectedVersion::Any,
            events: vec![reused.clone()],
        },
    ];
    assert_eq!(
        store.append_many(&conflict).await,
        Err(StoreError::EventIdConflict {
            stream: s[4].clone(),
            event_id: reused.event_id,
        })
    );
    assert_eq!(store.stream_version(&fresh).await, Ok(None));
    for (stream, version) in s.iter().zip([1, 1, 3, 3, 3]) {
        assert_eq!(store.stream_version(stream).await, Ok(Some(version)));
    }
}

// ---------------------------------------------------------------------------
// Reads

/// `read_stream` pages by version; a missing stream reads empty.
pub async fn read_stream_pages_and_missing_stream_is_empty<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "paged");
    let missing = stream(&run, "missing");
    let written = events(10, "paged");
    append_ok(store, &s, ExpectedVersion::NoStream, &written[..4]).await;
    append_ok(store, &s, ExpectedVersion::Exact(4), &written[4..]).await;

    let versions =
        |page: Vec<RecordedEvent>| page.iter().map(|e| e.stream_version).collect::<Vec<_>>();
    assert_eq!(
        versions(store.read_stream(&s, 1, 3).await.unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(
        versions(store.read_stream(&s, 4, 3).await.unwrap()),
        vec![4, 5, 6]
    );
    assert_eq!(
        versions(store.read_stream(&s, 9, 3).await.unwrap()),
        vec![9, 10]
    );
    assert_eq!(
        versions(store.read_stream(&s, 10, 5).await.unwrap()),
        vec![10]
    );
    assert_eq!(
        versions(store.read_stream(&s, 11, 5).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        versions(store.read_stream(&s, 0, 100).await.unwrap()),
        (1..=10).collect::<Vec<_>>()
    );

    let whole = read_whole(store, &s).await;
    assert_eq!(
        whole.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        ids(&written)
    );
    assert_strictly_increasing(
        &whole.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        "one stream",
    );

    assert_eq!(store.read_stream(&missing, 1, 100).await, Ok(Vec::new()));
    assert_eq!(store.stream_version(&missing).await, Ok(None));
    assert_eq!(store.stream_version(&s).await, Ok(Some(10)));
}

/// Paging the feed from checkpoints returns every event exactly once, in
/// append order, at the positions appends reported.
pub async fn read_all_pages_return_every_event_once_in_order<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let streams = [stream(&run, "a"), stream(&run, "b"), stream(&run, "c")];
    let start = tail_checkpoint(store).await;
    let mut appended: Vec<(EventId, u64)> = Vec::new();
    for round in 0..5 {
        for s in &streams {
            let batch = events(1 + round % 2, "feed");
            let result = append_ok(store, s, ExpectedVersion::Any, &batch).await;
            appended.extend(ids(&batch).into_iter().zip(result.positions));
        }
    }
    // Wait until everything is visible, then page it in fours.
    let visible = feed_until_sentinel(store, &run, start).await;
    assert_eq!(visible.len(), appended.len());

    let page_size = 4;
    let mut after = start;
    let mut paged: Vec<RecordedEvent> = Vec::new();
    while paged.len() < appended.len() {
        let page = read_page(store, after, page_size).await;
        assert!(
            !page.is_empty(),
            "read_all after {after:?} ended before every event was read"
        );
        for e in page {
            after = e.checkpoint();
            if is_run_event(&run, &e) {
                paged.push(e);
            }
        }
    }
    let found: Vec<(EventId, u64)> = paged
        .iter()
        .map(|e| (e.event_id, e.global_position))
        .collect();
    assert_eq!(
        found, appended,
        "every event once, in append order, at its position"
    );

    // Resuming from a checkpoint in the middle returns exactly the rest.
    let middle = paged[6].checkpoint();
    let mut rest = Vec::new();
    let mut after = middle;
    while rest.len() < appended.len() - 7 {
        let page = read_page(store, after, READ_BATCH_MAX).await;
        assert!(!page.is_empty(), "read_all from {middle:?} ended early");
        after = page.last().map_or(after, RecordedEvent::checkpoint);
        rest.extend(
            page.into_iter()
                .filter(|e| is_run_event(&run, e))
                .map(|e| e.event_id),
        );
    }
    assert_eq!(
        rest,
        appended[7..].iter().map(|(id, _)| *id).collect::<Vec<_>>()
    );

    // The feed carries the same rows `read_stream` does.
    for s in &streams {
        let from_stream = read_whole(store, s).await;
        let from_feed: Vec<_> = paged
            .iter()
            .filter(|e| e.stream_id == *s)
            .cloned()
            .collect();
        assert_eq!(from_stream, from_feed);
    }
}

/// Payload and metadata come back byte for byte: no re-serialising, key
/// reordering, whitespace or number normalisation.
pub async fn payload_and_metadata_bytes_round_trip_exactly<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "bytes");
    let start = tail_checkpoint(store).await;
    let payloads = [
        r#"{"zeta":1,"alpha":"é ünïcødé — 日本語 🚀","big":9007199254740993,"neg":-0,"exp":1.50E+10}"#,
        r#"{ "escaped" : "line\nbreak \"quoted\" back\\slash \/ \u0000 \u00e9 \ud83d\ude80" , "nested":{"b":[1,2,{}],"a":null} }"#,
        "[9007199254740993, 1.0, 1e300, true]",
        "\"just a string\"",
    ];
    let metadata = r#"{"request_id":"req-ü","source":"operator","actor":"Zoë \"ops\" ✓","causation_id":null,"correlation_id":"00000000-0000-4000-8000-000000000001"}"#;
    let written: Vec<NewEvent> = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| NewEvent {
            schema_version: 7 + i as u32,
            metadata: metadata.to_owned(),
            ..new_event("BytesKept", *payload)
        })
        .collect();
    append_ok(store, &s, ExpectedVersion::NoStream, &written).await;

    let from_stream = read_whole(store, &s).await;
    let from_feed = feed_until_sentinel(store, &run, start).await;
    for back in [&from_stream, &from_feed] {
        assert_eq!(back.len(), written.len());
        for (stored, sent) in back.iter().zip(&written) {
            assert_eq!(stored.payload.as_bytes(), sent.payload.as_bytes());
            assert_eq!(stored.metadata.as_bytes(), sent.metadata.as_bytes());
            assert_eq!(stored.event_type, sent.event_type);
            assert_eq!(stored.schema_version, sent.schema_version);
            assert_eq!(stored.event_id, sent.event_id);
            assert_eq!(
                stored.recorded_at.timestamp_subsec_nanos() % 1_000,
                0,
                "recorded_at is kept to the microsecond"
            );
        }
    }
    assert_eq!(verify_stream(&s, &from_stream), Ok(()));
}

// ---------------------------------------------------------------------------
// Hash chain

/// Stored streams verify; a flipped payload byte fails at that version.
pub async fn hash_chain_verifies_and_detects_tampered_payload<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "chain");
    append_ok(store, &s, ExpectedVersion::NoStream, &events(2, "chain")).await;
    append_ok(
        store,
        &s,
        ExpectedVersion::Exact(2),
        &events(2, "chain-more"),
    )
    .await;

    let stored = read_whole(store, &s).await;
    assert_eq!(verify_stream(&s, &stored), Ok(()));
    assert_eq!(stored[0].prev_hash, GENESIS);
    for pair in stored.windows(2) {
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "version {} links to its predecessor",
            pair[1].stream_version
        );
    }

    store.tamper_payload(&s, 2).await.expect("tamper_payload");
    let tampered = read_whole(store, &s).await;
    assert_ne!(
        tampered[1].payload, stored[1].payload,
        "tamper_payload changed the payload"
    );
    assert_eq!(
        verify_stream(&s, &tampered),
        Err(ChainError::ContentMismatch {
            stream: s.as_str().to_owned(),
            version: 2,
        })
    );
}

/// A deleted middle event is a version gap naming the stream.
pub async fn hash_chain_detects_deleted_event<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "gap");
    append_ok(store, &s, ExpectedVersion::NoStream, &events(3, "gap")).await;

    store.delete_event(&s, 2).await.expect("delete_event");
    let remaining = read_whole(store, &s).await;
    assert_eq!(
        remaining
            .iter()
            .map(|e| e.stream_version)
            .collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert_eq!(
        verify_stream(&s, &remaining),
        Err(ChainError::VersionGap {
            stream: s.as_str().to_owned(),
            expected: 2,
            found: 3,
        })
    );
}

// ---------------------------------------------------------------------------
// Input rules

/// Each input rule fails with its own `InputError`, and nothing is written,
/// not even the valid events before the bad one.
pub async fn bad_input_is_rejected_and_writes_nothing<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "bad");
    let existing = stream(&run, "existing");
    let start = tail_checkpoint(store).await;
    let kept = events(1, "kept");
    append_ok(store, &existing, ExpectedVersion::NoStream, &kept).await;

    let good = || new_event("ConformanceEvent", r#"{"label":"good"}"#);
    let too_many: Vec<NewEvent> = (0..=EVENTS_PER_APPEND_MAX).map(|_| good()).collect();
    let dup = good();
    let not_json = new_event("ConformanceEvent", r#"{"unterminated":"#);
    let no_type = new_event("", "{}");
    let long_type = new_event("T".repeat(EVENT_TYPE_MAX + 1), "{}");
    let huge_payload = format!("\"{}\"", "a".repeat(PAYLOAD_BYTES_MAX - 1));
    let huge = new_event("ConformanceEvent", huge_payload);
    let bad_metadata = NewEvent {
        metadata: "{metadata".to_owned(),
        ..good()
    };

    let cases: Vec<(&str, Vec<NewEvent>, InputError)> = vec![
        ("empty", Vec::new(), InputError::EmptyAppend),
        (
            "too many",
            too_many,
            InputError::TooManyEvents {
                count: EVENTS_PER_APPEND_MAX + 1,
                max: EVENTS_PER_APPEND_MAX,
            },
        ),
        (
            "duplicate id",
            vec![good(), dup.clone(), dup.clone()],
            InputError::DuplicateEventId(dup.event_id),
        ),
        (
            "not json",
            vec![good(), not_json.clone()],
            InputError::PayloadNotJson {
                event_id: not_json.event_id,
            },
        ),
        (
            "empty type",
            vec![good(), no_type.clone()],
            InputError::BadEventType {
                event_id: no_type.event_id,
                max: EVENT_TYPE_MAX,
            },
        ),
        (
            "long type",
            vec![long_type.clone()],
            InputError::BadEventType {
                event_id: long_type.event_id,
                max: EVENT_TYPE_MAX,
            },
        ),
        (
            "oversize payload",
            vec![good(), huge.clone()],
            InputError::PayloadTooLarge {
                event_id: huge.event_id,
                bytes: PAYLOAD_BYTES_MAX + 1,
                max: PAYLOAD_BYTES_MAX,
            },
        ),
        (
            "metadata not json",
            vec![bad_metadata.clone()],
            InputError::MetadataNotJson {
                event_id: bad_metadata.event_id,
            },
        ),
    ];
    for (name, batch, expected) in cases {
        for target in [&s, &existing] {
            assert_eq!(
                store.append(target, ExpectedVersion::Any, &batch).await,
                Err(StoreError::Input(expected.clone())),
                "{name} on {target}"
            );
        }
    }

    assert_eq!(store.stream_version(&s).await, Ok(None));
    assert!(read_whole(store, &s).await.is_empty());
    assert_eq!(store.stream_version(&existing).await, Ok(Some(1)));
    let feed = feed_until_sentinel(store, &run, start).await;
    assert_eq!(
        feed.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        ids(&kept)
    );
}

/// An event type this build doesn't know (written by a newer build) is
/// stored and read back unchanged; decoding it is the core's concern.
pub async fn unknown_event_type_round_trips<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "future");
    let future = NewEvent {
        schema_version: 9,
        ..new_event("FutureEventV9", "{}")
    };
    let result = append_ok(
        store,
        &s,
        ExpectedVersion::NoStream,
        std::slice::from_ref(&future),
    )
    .await;
    let back = read_whole(store, &s).await;
    assert_eq!(back.len(), 1);
    let e = &back[0];
    assert_eq!(
        (
            e.event_id,
            e.event_type.as_str(),
            e.schema_version,
            e.payload.as_str(),
            e.metadata.as_str()
        ),
        (
            future.event_id,
            "FutureEventV9",
            9,
            "{}",
            future.metadata.as_str()
        )
    );
    assert_eq!(e.global_position, result.positions[0]);
    assert_eq!(verify_stream(&s, &back), Ok(()));
}

// ---------------------------------------------------------------------------
// Concurrency

/// Racing appends with the same expected version: exactly one wins; every
/// other gets `WrongExpectedVersion` naming the winner's version.
pub async fn concurrent_expected_version_has_one_winner<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "race");
    append_ok(store, &s, ExpectedVersion::NoStream, &events(2, "base")).await;

    let racers = (0..RACERS).map(|i| {
        let s = &s;
        async move {
            store
                .append(
                    s,
                    ExpectedVersion::Exact(2),
                    &events(1, &format!("racer-{i}")),
                )
                .await
        }
    });
    let results = join_all(racers).await;
    let wins: Vec<&AppendResult> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(wins.len(), 1, "exactly one racer wins: {results:?}");
    assert_eq!((wins[0].first_version, wins[0].last_version), (3, 3));
    for r in &results {
        if let Err(e) = r {
            assert_eq!(*e, wrong_version(&s, ExpectedVersion::Exact(2), Some(3)));
        }
    }
    assert_eq!(store.stream_version(&s).await, Ok(Some(3)));
    assert_eq!(read_whole(store, &s).await.len(), 3);

    // The same race to create a stream.
    let created = stream(&run, "create");
    let racers = (0..RACERS).map(|i| {
        let created = &created;
        async move {
            store
                .append(
                    created,
                    ExpectedVersion::NoStream,
                    &events(2, &format!("creator-{i}")),
                )
                .await
        }
    });
    let results = join_all(racers).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one creator wins: {results:?}");
    for r in &results {
        match r {
            Ok(won) => assert_eq!((won.first_version, won.last_version), (1, 2)),
            Err(e) => assert_eq!(
                *e,
                wrong_version(&created, ExpectedVersion::NoStream, Some(2))
            ),
        }
    }
    assert_eq!(read_whole(store, &created).await.len(), 2);
}

/// The fault hook itself: a held append is invisible (and doesn't block
/// readers) until commit; a rolled-back one leaves no trace and frees its
/// ids and versions.
pub async fn held_append_is_invisible_until_commit<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let s = stream(&run, "held");
    let start = tail_checkpoint(store).await;
    let first = events(1, "first");
    append_ok(store, &s, ExpectedVersion::NoStream, &first).await;
    let before = tail_checkpoint(store).await;

    let second = events(1, "second");
    let held = store
        .begin_held_append(&s, ExpectedVersion::Exact(1), second.clone())
        .await
        .expect("begin_held_append");
    assert_eq!(store.stream_version(&s).await, Ok(Some(1)));
    assert_eq!(read_whole(store, &s).await.len(), 1);
    // No sentinel here: on a single-writer backend it would queue behind the
    // held append. The feed up to its current end must not hold the event.
    let mut after = before;
    loop {
        let page = read_page(store, after, READ_BATCH_MAX).await;
        let Some(last) = page.last() else { break };
        after = last.checkpoint();
        assert!(
            page.iter().all(|e| e.event_id != second[0].event_id),
            "held event visible"
        );
    }
    let committed = held.commit().await.expect("commit");
    assert_eq!((committed.first_version, committed.last_version), (2, 2));
    assert!(!committed.already_existed);
    let stored = read_whole(store, &s).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(
        (stored[1].event_id, stored[1].global_position),
        (second[0].event_id, committed.positions[0])
    );

    let third = events(1, "third");
    let held = store
        .begin_held_append(&s, ExpectedVersion::Exact(2), third.clone())
        .await
        .expect("begin_held_append");
    held.rollback().await.expect("rollback");
    assert_eq!(store.stream_version(&s).await, Ok(Some(2)));
    let feed = feed_until_sentinel(store, &run, start).await;
    assert_eq!(
        feed.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        vec![first[0].event_id, second[0].event_id]
    );

    // The rolled-back id and version are free again.
    let again = append_ok(store, &s, ExpectedVersion::Exact(2), &third).await;
    assert_eq!((again.first_version, again.already_existed), (3, false));
    match store
        .begin_held_append(&s, ExpectedVersion::Exact(1), events(1, "stale"))
        .await
    {
        Err(e) => assert_eq!(e, wrong_version(&s, ExpectedVersion::Exact(1), Some(3))),
        Ok(_) => panic!("a held append with a stale expected version began"),
    }
    assert_eq!(verify_stream(&s, &read_whole(store, &s).await), Ok(()));
}

// ---------------------------------------------------------------------------
// The gap test

#[derive(Debug, Clone, Copy)]
struct WriterProgress {
    /// Plain appends committed so far.
    commits: u64,
    /// Plain writers still running.
    writers_left: usize,
}

/// Shared state of one gap-test run. Every future runs on the case's task,
/// so the std mutexes are never contended across an `.await`.
struct GapRun<'a, B> {
    store: &'a B,
    run: String,
    shared: Vec<StreamId>,
    concurrent: bool,
    /// Completed reader polls.
    polls: watch::Sender<u64>,
    progress: watch::Sender<WriterProgress>,
    /// Writers and held drivers still running; the reader drains after 0.
    tasks_left: AtomicUsize,
    /// Committed event id → the position its append reported.
    committed: Mutex<HashMap<EventId, u64>>,
    rolled_back: Mutex<HashSet<EventId>>,
}

/// What the reader saw.
#[derive(Debug, Default)]
struct Seen {
    /// Event id → (stream, version, position).
    events: HashMap<EventId, (StreamId, u64, u64)>,
    last_versions: HashMap<StreamId, u64>,
    tail: Checkpoint,
}

/// **The skipped-event test.** Writers append concurrently (single appends
/// and cross-stream `append_many`, shared and private streams), while held
/// appends sit open below later commits and some roll back, and a reader
/// tails `read_all` from its last checkpoint. The reader must see every
/// committed event exactly once, no rolled-back one, checkpoints strictly
/// increasing and each stream's versions 1, 2, 3… in order.
///
/// A held append resolves only after the reader has polled
/// [`GAP_HELD_POLLS`] more times. With `concurrent_writers()` it first
/// waits until some other writer has committed above it (bounded by
/// [`GAP_OVERTAKE_POLLS_MAX`] polls): the schedule of the classic bug, where
/// a reader's checkpoint passes a position that commits later. A
/// single-writer backend queues the other writers behind the hold instead,
/// so the hold resolves from reader progress alone; the reader never takes
/// the write lock.
pub async fn gap_safe_read_all_under_concurrent_writers<B: ConformanceBackend>(store: &B) {
    let run = run_id();
    let start = tail_checkpoint(store).await;
    let gap = GapRun {
        store,
        shared: (0..GAP_SHARED_STREAMS)
            .map(|i| stream(&run, &format!("shared-{i}")))
            .collect(),
        run,
        concurrent: store.concurrent_writers(),
        polls: watch::channel(0).0,
        progress: watch::channel(WriterProgress {
            commits: 0,
            writers_left: GAP_WRITERS,
        })
        .0,
        tasks_left: AtomicUsize::new(GAP_WRITERS + GAP_HELD_DRIVERS),
        committed: Mutex::new(HashMap::new()),
        rolled_back: Mutex::new(HashSet::new()),
    };

    let writers = join_all((0..GAP_WRITERS).map(|w| gap_writer(&gap, w)));
    let drivers = join_all((0..GAP_HELD_DRIVERS).map(|d| gap_held_driver(&gap, d)));
    let (_, _, seen) = tokio::join!(writers, drivers, gap_reader(&gap, start));

    // Nothing more arrives later: the feed up to a fresh sentinel holds no
    // further event of this run (no late duplicate, no rolled-back event).
    let late = feed_until_sentinel(store, &gap.run, seen.tail).await;
    let late_ids: Vec<EventId> = late.iter().map(|e| e.event_id).collect();
    assert!(
        late_ids.is_empty(),
        "events appeared after the reader caught up: {late_ids:?}"
    );

    let committed = gap.committed.into_inner().expect("committed ids");
    let rolled_back = gap.rolled_back.into_inner().expect("rolled-back ids");
    let missed: Vec<&EventId> = committed
        .keys()
        .filter(|id| !seen.events.contains_key(id))
        .collect();
    assert!(
        missed.is_empty(),
        "read_all skipped {} of {} committed events, e.g. {:?}",
        missed.len(),
        committed.len(),
        &missed[..missed.len().min(5)]
    );
    let unexpected: Vec<&EventId> = seen
        .events
        .keys()
        .filter(|id| !committed.contains_key(id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "read_all returned events never committed: {unexpected:?}"
    );
    let ghosts: Vec<&EventId> = rolled_back
        .iter()
        .filter(|id| seen.events.contains_key(id))
        .collect();
    assert!(
        ghosts.is_empty(),
        "read_all returned rolled-back events: {ghosts:?}"
    );
    for (id, position) in &committed {
        assert_eq!(
            seen.events[id].2, *position,
            "event {id} read at another position than its append reported"
        );
    }

    // The schedule really ran: deterministic counts of rolled-back events.
    let expected_rolled_back: usize = (0..GAP_HELD_PER_DRIVER)
        .filter(|h| h % 3 == 2)
        .map(held_event_count)
        .sum::<usize>()
        * GAP_HELD_DRIVERS;
    assert_eq!(rolled_back.len(), expected_rolled_back);

    // Each stream ends where the reader's last version says, and verifies.
    for (s, last) in &seen.last_versions {
        assert_eq!(store.stream_version(s).await, Ok(Some(*last)), "stream {s}");
        let stored = read_whole(store, s).await;
        assert_eq!(verify_stream(s, &stored), Ok(()));
        for e in &stored {
            assert_eq!(
                seen.events.get(&e.event_id).map(|(_, v, _)| *v),
                Some(e.stream_version)
            );
        }
    }
}

fn held_event_count(h: usize) -> usize {
    1 + h % 2
}

async fn gap_writer<B: ConformanceBackend>(gap: &GapRun<'_, B>, w: usize) {
    let mut rng = StdRng::seed_from_u64(GAP_SEED + w as u64);
    let private = stream(&gap.run, &format!("private-{w}"));
    for i in 0..GAP_APPENDS_PER_WRITER {
        let count = rng.random_range(1..=3usize);
        let make = |n: usize| -> Vec<NewEvent> {
            (0..n)
                .map(|k| {
                    new_event(
                        "GapTestEvent",
                        format!(r#"{{"writer":{w},"append":{i},"k":{k}}}"#),
                    )
                })
                .collect()
        };
        let written: Vec<(Vec<NewEvent>, AppendResult)> = if rng.random_range(0..10u32) == 0 {
            // Two shared streams in either order, in one transaction.
            let a = rng.random_range(0..gap.shared.len());
            let b = (a + rng.random_range(1..gap.shared.len())) % gap.shared.len();
            let batch = vec![
                StreamAppend {
                    stream: gap.shared[a].clone(),
                    expected: ExpectedVersion::Any,
                    events: make(count),
                },
                StreamAppend {
                    stream: gap.shared[b].clone(),
                    expected: ExpectedVersion::Any,
                    events: make(1),
                },
            ];
            let results = gap
                .store
                .append_many(&batch)
                .await
                .unwrap_or_else(|e| panic!("writer {w} append_many {i}: {e}"));
            batch.into_iter().map(|p| p.events).zip(results).collect()
        } else {
            let target = if rng.random_bool(0.5) {
                &private
            } else {
                &gap.shared[rng.random_range(0..gap.shared.len())]
            };
            let batch = make(count);
            let result = append_ok(gap.store, target, ExpectedVersion::Any, &batch).await;
            vec![(batch, result)]
        };
        {
            let mut committed = gap.committed.lock().expect("committed ids");
            for (batch, result) in written {
                assert!(!result.already_existed);
                assert_eq!(result.positions.len(), batch.len());
                committed.extend(ids(&batch).into_iter().zip(result.positions));
            }
        }
        gap.progress.send_modify(|p| p.commits += 1);
        // Let the other futures of this task run even on a store that never
        // suspends.
        tokio::task::yield_now().await;
    }
    gap.progress.send_modify(|p| p.writers_left -= 1);
    gap.tasks_left.fetch_sub(1, Ordering::SeqCst);
}

async fn gap_held_driver<B: ConformanceBackend>(gap: &GapRun<'_, B>, d: usize) {
    let mut polls = gap.polls.subscribe();
    let mut progress = gap.progress.subscribe();
    for h in 0..GAP_HELD_PER_DRIVER {
        // Alternate a stream of its own and a shared one, where a rollback
        // frees versions other writers then take.
        let target = if h % 2 == 0 {
            stream(&gap.run, &format!("held-{d}"))
        } else {
            gap.shared[(d + h) % gap.shared.len()].clone()
        };
        let batch: Vec<NewEvent> = (0..held_event_count(h))
            .map(|k| {
                new_event(
                    "GapHeldEvent",
                    format!(r#"{{"driver":{d},"hold":{h},"k":{k}}}"#),
                )
            })
            .collect();
        let held = gap
            .store
            .begin_held_append(&target, ExpectedVersion::Any, batch.clone())
            .await
            .unwrap_or_else(|e| panic!("driver {d} hold {h}: {e}"));

        if gap.concurrent {
            // Wait for a commit above this open append, or give up after
            // enough reader polls (every other writer may be queued on it).
            let commits_at_hold = progress.borrow().commits;
            let polls_at_hold = *polls.borrow();
            tokio::select! {
                r = progress.wait_for(|p| p.commits > commits_at_hold || p.writers_left == 0) => {
                    r.expect("progress channel");
                }
                r = polls.wait_for(|n| *n >= polls_at_hold + GAP_OVERTAKE_POLLS_MAX) => {
                    r.expect("poll channel");
                }
            }
        }
        // The reader polls while this append is open (and, on concurrent
        // backends, while a later one is already committed).
        let polls_now = *polls.borrow();
        polls
            .wait_for(|n| *n >= polls_now + GAP_HELD_POLLS)
            .await
            .expect("poll channel");

        if h % 3 == 2 {
            held.rollback()
                .await
                .unwrap_or_else(|e| panic!("driver {d} rollback {h}: {e}"));
            gap.rolled_back
                .lock()
                .expect("rolled-back ids")
                .extend(ids(&batch));
        } else {
            let result = held
                .commit()
                .await
                .unwrap_or_else(|e| panic!("driver {d} commit {h}: {e}"));
            assert!(!result.already_existed);
            assert_eq!(result.positions.len(), batch.len());
            assert_eq!(
                result.last_version - result.first_version + 1,
                batch.len() as u64
            );
            gap.committed
                .lock()
                .expect("committed ids")
                .extend(ids(&batch).into_iter().zip(result.positions));
        }
    }
    gap.tasks_left.fetch_sub(1, Ordering::SeqCst);
}

async fn gap_reader<B: ConformanceBackend>(gap: &GapRun<'_, B>, start: Checkpoint) -> Seen {
    let mut seen = Seen {
        tail: start,
        ..Seen::default()
    };
    let mut drain_started: Option<Instant> = None;
    loop {
        let page = read_page(gap.store, seen.tail, GAP_READ_PAGE).await;
        for e in page {
            seen.tail = e.checkpoint();
            if !is_run_event(&gap.run, &e) {
                continue;
            }
            let last = seen.last_versions.entry(e.stream_id.clone()).or_insert(0);
            assert_eq!(
                e.stream_version,
                *last + 1,
                "stream {}: read_all returned version {} right after version {} (event {}): an event was skipped or came out of order",
                e.stream_id,
                e.stream_version,
                last,
                e.event_id
            );
            *last = e.stream_version;
            let previous = seen.events.insert(
                e.event_id,
                (e.stream_id.clone(), e.stream_version, e.global_position),
            );
            assert!(
                previous.is_none(),
                "read_all returned event {} twice",
                e.event_id
            );
        }
        gap.polls.send_modify(|n| *n += 1);

        if gap.tasks_left.load(Ordering::SeqCst) == 0 {
            let caught_up = {
                let committed = gap.committed.lock().expect("committed ids");
                committed.keys().all(|id| seen.events.contains_key(id))
            };
            // Past the deadline the caller's assertions name what is missing.
            let started = *drain_started.get_or_insert_with(Instant::now);
            if caught_up || started.elapsed() > GAP_DRAIN_MAX {
                return seen;
            }
        }
    }
}

/// `B` behind [`GroupedAppends`](crate::group_commit::GroupedAppends): the
/// suite's appends go through the group commit, the rest (held appends,
/// tampering) straight to `B`. A backend runs the suite over it too, so the
/// grouped store is held to the very contract of the store it wraps.
pub struct Grouped<B> {
    grouped: crate::group_commit::GroupedAppends,
    backend: B,
}

impl<B> std::fmt::Debug for Grouped<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grouped").finish_non_exhaustive()
    }
}

impl<B: ConformanceBackend + Clone + 'static> Grouped<B> {
    pub fn new(backend: B) -> Grouped<B> {
        Grouped {
            grouped: crate::group_commit::GroupedAppends::start(std::sync::Arc::new(
                backend.clone(),
            )),
            backend,
        }
    }
}

#[async_trait]
impl<B: ConformanceBackend + Send + Sync> EventStore for Grouped<B> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        self.grouped.append(stream, expected, events).await
    }

    async fn append_many(&self, batch: &[StreamAppend]) -> Result<Vec<AppendResult>, StoreError> {
        self.grouped.append_many(batch).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.grouped
            .read_stream(stream, from_version, max_count)
            .await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.grouped.stream_version(stream).await
    }

    async fn read_all(
        &self,
        after: Checkpoint,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.grouped.read_all(after, max_count).await
    }
}

#[async_trait]
impl<B: ConformanceBackend + Send + Sync> ConformanceBackend for Grouped<B> {
    async fn begin_held_append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Box<dyn HeldAppend>, StoreError> {
        self.backend
            .begin_held_append(stream, expected, events)
            .await
    }

    async fn tamper_payload(&self, stream: &StreamId, version: u64) -> Result<(), StoreError> {
        self.backend.tamper_payload(stream, version).await
    }

    async fn delete_event(&self, stream: &StreamId, version: u64) -> Result<(), StoreError> {
        self.backend.delete_event(stream, version).await
    }

    fn concurrent_writers(&self) -> bool {
        self.backend.concurrent_writers()
    }
}
