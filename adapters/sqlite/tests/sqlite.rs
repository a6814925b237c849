//! SQLite-specific behaviour: pragmas, durability across reopen, two stores
//! (as two processes would) on one file, migrations, and fault injection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{event, events, fresh_store, read_everything, stream};
use ledger_core::ExpectedVersion;
use ledger_core::hash::{ChainError, verify_stream};
use ledger_sqlite::{BUSY_TIMEOUT, SqliteStore};
use ledger_store::conformance::ConformanceBackend;
use ledger_store::{EventStore, RawInsertBaseline, StoreError, StreamAppend};

#[tokio::test]
async fn pragmas_are_in_effect_on_writer_and_readers() {
    let s = fresh_store().await;
    for pool in [s.pool(), s.reader()] {
        let mode: String = sqlx::query_scalar("pragma journal_mode")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = sqlx::query_scalar("pragma synchronous")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let busy: i64 = sqlx::query_scalar("pragma busy_timeout")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(busy, i64::try_from(BUSY_TIMEOUT.as_millis()).unwrap());
        let fk: i64 = sqlx::query_scalar("pragma foreign_keys")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(fk, 1);
    }
    let query_only: i64 = sqlx::query_scalar("pragma query_only")
        .fetch_one(s.reader())
        .await
        .unwrap();
    assert_eq!(query_only, 1, "readers refuse writes");
    assert!(
        sqlx::query("delete from event")
            .execute(s.reader())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn events_survive_reopen_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dirs/ledger.db");
    let order = stream("order-1");
    let (first, second) = (events(2), events(1));
    {
        let s = SqliteStore::open(&path).await.unwrap();
        s.migrate().await.unwrap();
        s.append(&order, ExpectedVersion::NoStream, &first)
            .await
            .unwrap();
        s.append(&order, ExpectedVersion::Exact(2), &second)
            .await
            .unwrap();
    }

    let s = SqliteStore::open_url(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    s.migrate().await.unwrap();
    assert_eq!(s.stream_version(&order).await.unwrap(), Some(3));
    let more = events(2);
    let r = s
        .append(&order, ExpectedVersion::Exact(3), &more)
        .await
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (4, 5));

    let stored = s.read_stream(&order, 1, 100).await.unwrap();
    verify_stream(&order, &stored).unwrap();
    let written: Vec<_> = first.iter().chain(&second).chain(&more).collect();
    assert_eq!(stored.len(), written.len());
    for (stored, written) in stored.iter().zip(written) {
        assert_eq!(stored.event_id, written.event_id);
        assert_eq!(stored.payload, written.payload, "payload bytes round-trip");
        assert_eq!(stored.metadata, written.metadata);
        assert_eq!(
            stored.recorded_at.timestamp_subsec_nanos() % 1_000,
            0,
            "micros only"
        );
    }
}

#[tokio::test]
async fn two_stores_on_one_file_append_concurrently_without_loss() {
    const TASKS_PER_STORE: u64 = 4;
    const APPENDS_PER_TASK: u64 = 25;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let a = Arc::new(SqliteStore::open(&path).await.unwrap());
    let b = Arc::new(SqliteStore::open(&path).await.unwrap());
    // Concurrent migrators: one applies, the other waits and finds it done.
    let (ma, mb) = tokio::join!(a.migrate(), b.migrate());
    ma.unwrap();
    mb.unwrap();

    let shared = stream("shared");
    let mut tasks = Vec::new();
    for (name, store) in [("a", &a), ("b", &b)] {
        for t in 0..TASKS_PER_STORE {
            let store = Arc::clone(store);
            let shared = shared.clone();
            let own = stream(&format!("own-{name}-{t}"));
            tasks.push(tokio::spawn(async move {
                for i in 0..APPENDS_PER_TASK {
                    store
                        .append(&shared, ExpectedVersion::Any, &[event(i)])
                        .await
                        .unwrap();
                    let expected = if i == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(i)
                    };
                    store.append(&own, expected, &[event(i)]).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }

    let total = 2 * TASKS_PER_STORE * APPENDS_PER_TASK * 2;
    for store in [&a, &b] {
        let all = read_everything(store.as_ref()).await;
        assert_eq!(all.len() as u64, total);
        assert!(
            all.windows(2)
                .all(|w| w[0].global_position < w[1].global_position)
        );
        let mut by_stream: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for e in all {
            by_stream.entry(e.stream_id.clone()).or_default().push(e);
        }
        assert_eq!(by_stream.len() as u64, 1 + 2 * TASKS_PER_STORE);
        for (id, stream_events) in &by_stream {
            verify_stream(id, stream_events).unwrap();
            let head = store.stream_version(id).await.unwrap();
            assert_eq!(head, Some(stream_events.len() as u64));
        }
        assert_eq!(
            by_stream[&shared].len() as u64,
            2 * TASKS_PER_STORE * APPENDS_PER_TASK
        );
    }
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let s = fresh_store().await;
    s.migrate().await.unwrap();
    let reopened = SqliteStore::open(&s.path()).await.unwrap();
    reopened.migrate().await.unwrap();
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(reopened.reader())
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../migrations/sqlite"
    ))
    .unwrap()
    .count();
    assert_eq!(applied, i64::try_from(files).unwrap());
}

#[tokio::test]
async fn in_memory_and_empty_urls_are_refused() {
    for url in ["sqlite::memory:", "sqlite://", ""] {
        let e = SqliteStore::open_url(url).await.unwrap_err();
        assert!(e.to_string().contains("durable"), "{url}: {e}");
    }
}

#[tokio::test]
async fn held_append_blocks_writers_not_readers_and_rollback_leaves_no_trace() {
    let s = Arc::new(fresh_store().await);
    let x = stream("x");
    s.append(&x, ExpectedVersion::NoStream, &events(1))
        .await
        .unwrap();

    let held = s
        .begin_held_append(&x, ExpectedVersion::Exact(1), events(2))
        .await
        .unwrap();
    // Readers see the committed snapshot while the writer is held.
    assert_eq!(s.stream_version(&x).await.unwrap(), Some(1));
    assert_eq!(read_everything(s.as_ref()).await.len(), 1);
    // Another writer queues behind the held one.
    let queued = tokio::spawn({
        let s = Arc::clone(&s);
        let y = stream("y");
        async move { s.append(&y, ExpectedVersion::NoStream, &events(1)).await }
    });
    // Give the queued append every chance to run; it must still be waiting.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !queued.is_finished(),
        "a second writer got past a held append"
    );
    held.rollback().await.unwrap();
    let queued = queued.await.unwrap().unwrap();

    // The rolled-back positions were handed out again; nobody saw them before.
    assert_eq!(queued.positions, vec![2]);
    let all = read_everything(s.as_ref()).await;
    assert_eq!(
        all.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(s.stream_version(&x).await.unwrap(), Some(1));

    let held = s
        .begin_held_append(&x, ExpectedVersion::Exact(1), events(1))
        .await
        .unwrap();
    let committed = held.commit().await.unwrap();
    assert_eq!((committed.positions, committed.last_version), (vec![3], 2));
    verify_stream(&x, &s.read_stream(&x, 1, 10).await.unwrap()).unwrap();
}

#[tokio::test]
async fn reappend_is_idempotent_and_a_changed_one_conflicts() {
    let s = fresh_store().await;
    let x = stream("x");
    let batch = events(3);
    let first = s
        .append(&x, ExpectedVersion::NoStream, &batch)
        .await
        .unwrap();
    let again = s
        .append(&x, ExpectedVersion::NoStream, &batch)
        .await
        .unwrap();
    assert!(again.already_existed);
    assert_eq!((again.positions, again.first_version), (first.positions, 1));
    let tail = s
        .append(&x, ExpectedVersion::Exact(7), &batch[1..])
        .await
        .unwrap();
    assert_eq!((tail.first_version, tail.last_version), (2, 3));

    let mut changed = batch[2].clone();
    changed.payload = r#"{"n":99}"#.to_owned();
    let e = s
        .append(&x, ExpectedVersion::Any, &[changed])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::EventIdConflict { .. }), "{e:?}");
    let e = s
        .append(&x, ExpectedVersion::Any, &[batch[2].clone(), event(9)])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::EventIdConflict { .. }), "{e:?}");
    assert_eq!(s.stream_version(&x).await.unwrap(), Some(3));
}

#[tokio::test]
async fn append_many_is_all_or_nothing() {
    let s = fresh_store().await;
    let (x, y) = (stream("x"), stream("y"));
    s.append(&y, ExpectedVersion::NoStream, &events(1))
        .await
        .unwrap();
    let batch = [
        StreamAppend {
            stream: x.clone(),
            expected: ExpectedVersion::NoStream,
            events: events(70), // more than one insert statement's rows
        },
        StreamAppend {
            stream: y.clone(),
            expected: ExpectedVersion::Exact(5),
            events: events(1),
        },
    ];
    let e = s.append_many(&batch).await.unwrap_err();
    assert_eq!(
        e,
        StoreError::WrongExpectedVersion {
            stream: y.clone(),
            expected: ExpectedVersion::Exact(5),
            actual: Some(1)
        }
    );
    assert_eq!(s.stream_version(&x).await.unwrap(), None);
    assert_eq!(read_everything(&s.store).await.len(), 1);

    let mut batch = batch;
    batch[1].expected = ExpectedVersion::Exact(1);
    let results = s.append_many(&batch).await.unwrap();
    assert_eq!(results[0].positions, (2..72).collect::<Vec<_>>());
    assert_eq!(
        (results[1].first_version, results[1].positions.clone()),
        (2, vec![72])
    );
    verify_stream(&x, &s.read_stream(&x, 1, 1000).await.unwrap()).unwrap();
    verify_stream(&y, &s.read_stream(&y, 1, 1000).await.unwrap()).unwrap();
}

#[tokio::test]
async fn tampering_and_deletion_are_caught_by_verification() {
    let s = fresh_store().await;
    let x = stream("x");
    s.append(&x, ExpectedVersion::NoStream, &events(4))
        .await
        .unwrap();

    s.tamper_payload(&x, 2).await.unwrap();
    let stored = s.read_stream(&x, 1, 10).await.unwrap();
    assert_eq!(
        verify_stream(&x, &stored),
        Err(ChainError::ContentMismatch {
            stream: "x".into(),
            version: 2
        })
    );

    s.delete_event(&x, 3).await.unwrap();
    let stored = s.read_stream(&x, 1, 10).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![1, 2, 4]
    );
    // The head still records version 4, so the next append cannot reuse 3.
    assert_eq!(s.stream_version(&x).await.unwrap(), Some(4));
    assert!(
        s.delete_event(&x, 3).await.is_err(),
        "nothing left to delete"
    );
}

/// Sets one column of `x`@2 through the writer, bypassing the store and the
/// table's check constraints (as a hand edit of the file could).
async fn set_column(s: &SqliteStore, assignment: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "pragma ignore_check_constraints = on; \
         update event set {assignment} where stream_id = 'x' and stream_version = 2; \
         pragma ignore_check_constraints = off"
    )))
    .execute(s.pool())
    .await
    .unwrap();
}

/// Every way a stored event can be unreadable is `Corrupt`, naming the
/// stream, the version and what is wrong, on both reads; the rows before it
/// still read.
#[tokio::test]
async fn unreadable_event_rows_are_corrupt_naming_stream_and_version() {
    let x = stream("x");
    let cases = [
        ("hash = x'0102'", "hash is 2 bytes"),
        ("prev_hash = zeroblob(33)", "prev_hash is 33 bytes"),
        ("payload = cast(x'7b22ff227d' as text)", "not UTF-8"),
        ("schema_version = -1", "schema_version -1 is out of range"),
        ("event_id = 'not-a-uuid'", "event_id \"not-a-uuid\""),
        ("recorded_at = 9223372036854775807", "out of range"),
    ];
    for (assignment, reason) in cases {
        // Each case on a store of its own.
        let t = fresh_store().await;
        t.append(&x, ExpectedVersion::NoStream, &events(3))
            .await
            .unwrap();
        set_column(&t, assignment).await;
        for result in [
            t.read_stream(&x, 1, 10).await,
            t.read_all(ledger_core::Checkpoint::START, 10).await,
        ] {
            match result {
                Err(StoreError::Corrupt {
                    stream,
                    version,
                    reason: why,
                }) => {
                    assert_eq!((stream.as_str(), version), ("x", 2), "{assignment}");
                    assert!(why.contains(reason), "{assignment}: {why}");
                }
                other => panic!("{assignment}: expected Corrupt, got {other:?}"),
            }
        }
        // The rows on either side still read.
        assert_eq!(t.read_stream(&x, 1, 1).await.unwrap().len(), 1);
        assert_eq!(t.read_stream(&x, 3, 10).await.unwrap().len(), 1);
    }
    // An unreadable version is reported against the stream alone.
    let s = fresh_store().await;
    s.append(&x, ExpectedVersion::NoStream, &events(3))
        .await
        .unwrap();
    set_column(&s, "stream_version = -2").await;
    match s.read_all(ledger_core::Checkpoint::START, 10).await {
        Err(StoreError::Corrupt {
            stream, version, ..
        }) => {
            assert_eq!((stream.as_str(), version), ("x", 0));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// More concurrent event reads than reader connections all complete, with
/// the same answer (they queue for a connection, none is refused).
#[tokio::test]
async fn event_reads_beyond_the_reader_pool_queue_and_all_complete() {
    let s = fresh_store().await;
    let x = stream("x");
    s.append(&x, ExpectedVersion::NoStream, &events(5))
        .await
        .unwrap();
    let mut reads = tokio::task::JoinSet::new();
    for i in 0..3 * ledger_sqlite::READ_POOL_SIZE {
        let s = s.clone();
        let x = x.clone();
        reads.spawn(async move {
            if i % 2 == 0 {
                s.read_all(ledger_core::Checkpoint::START, 100).await
            } else {
                s.read_stream(&x, 1, 100).await
            }
        });
    }
    let expected = s.read_stream(&x, 1, 100).await.unwrap();
    assert_eq!(expected.len(), 5);
    let mut done = 0;
    while let Some(r) = reads.join_next().await {
        assert_eq!(r.unwrap().unwrap(), expected);
        done += 1;
    }
    assert_eq!(done, 3 * ledger_sqlite::READ_POOL_SIZE);
}

/// A read asks for at most `READ_BATCH_MAX` events, however many it asks
/// for; and once the store is closed, reads fail rather than reopen it.
#[tokio::test]
async fn event_reads_are_capped_at_the_batch_max_and_end_with_close() {
    let s = fresh_store().await;
    let x = stream("x");
    // Appends take at most 1,000 events each.
    let n = u64::from(ledger_store::READ_BATCH_MAX) + 1_000;
    for _ in 0..n / 1_000 {
        s.append(&x, ExpectedVersion::Any, &events(1_000))
            .await
            .unwrap();
    }
    let max = u64::from(ledger_store::READ_BATCH_MAX);
    let page = s
        .read_all(ledger_core::Checkpoint::START, u32::MAX)
        .await
        .unwrap();
    assert_eq!(page.len() as u64, max);
    assert_eq!(page.last().unwrap().global_position, max);
    let stream_page = s.read_stream(&x, 1, u32::MAX).await.unwrap();
    assert_eq!(stream_page.len() as u64, max);
    assert_eq!(stream_page.last().unwrap().stream_version, max);
    s.close().await;
    assert!(matches!(
        s.read_all(ledger_core::Checkpoint::START, 10).await,
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        s.read_stream(&x, 1, 10).await,
        Err(StoreError::Backend(_))
    ));
}

#[tokio::test]
async fn baseline_table_is_created_and_emptied() {
    let s = fresh_store().await;
    s.prepare_baseline().await.unwrap();
    s.baseline_insert(&stream("b"), &event(1)).await.unwrap();
    s.prepare_baseline().await.unwrap();
    let rows: i64 = sqlx::query_scalar("select count(*) from bench_raw_event")
        .fetch_one(s.reader())
        .await
        .unwrap();
    assert_eq!(rows, 0);
}
