#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Postgres-specific behaviour of the event store, beyond the shared
//! conformance suite: the chain computed in SQL, migrations, the gap-safe
//! feed and its stall mode, error hygiene, and corruption reporting.

mod common;

use std::collections::HashSet;

use common::{event, fresh_store, settle, stream};
use ledger_core::hash::{self, ContentFields, GENESIS, content_digest};
use ledger_core::{Checkpoint, ExpectedVersion, NewEvent, RecordedEvent};
use ledger_postgres::{HEAD_POSITION_SQL, PgStore, READ_ALL_SQL};
use ledger_projections::readmodel::ReadModelStore;
use ledger_store::conformance::ConformanceBackend;
use ledger_store::{EventStore, RawInsertBaseline, StoreError, StreamAppend};
use sqlx::Row;

fn events(event_type: &str, count: u64) -> Vec<NewEvent> {
    (1..=count).map(|n| event(event_type, n)).collect()
}

async fn read_all_ids(store: &PgStore, after: Checkpoint) -> Vec<RecordedEvent> {
    store.read_all(after, 10_000).await.unwrap()
}

#[tokio::test]
async fn hashes_computed_in_sql_equal_the_core_chain() {
    let store = fresh_store().await;
    let s = stream("order");
    let mut appended = Vec::new();
    for (i, size) in [1u64, 3, 2].into_iter().enumerate() {
        let batch = events("OrderPlaced", size);
        let expected = if i == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Any
        };
        store.append(&s, expected, &batch).await.unwrap();
        appended.extend(batch);
    }
    let other = stream("refund");
    store
        .append_many(&[
            StreamAppend {
                stream: s.clone(),
                expected: ExpectedVersion::Exact(6),
                events: events("OrderPaid", 2),
            },
            StreamAppend {
                stream: other.clone(),
                expected: ExpectedVersion::NoStream,
                events: events("RefundRequested", 1),
            },
        ])
        .await
        .unwrap();

    let stored = store.read_stream(&s, 1, 100).await.unwrap();
    assert_eq!(stored.len(), 8);
    assert_eq!(stored[0].prev_hash, GENESIS);
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e.stream_version, i as u64 + 1);
        // Postgres keeps microseconds; the hash covered exactly these.
        assert_eq!(e.recorded_at.timestamp_subsec_nanos() % 1_000, 0);
        let content = content_digest(&ContentFields {
            stream_id: &s,
            event_id: e.event_id,
            event_type: &e.event_type,
            schema_version: e.schema_version,
            payload: &e.payload,
            metadata: &e.metadata,
            recorded_at: e.recorded_at,
        });
        assert_eq!(
            e.hash,
            hash::chain(&e.prev_hash, e.stream_version, &content),
            "v{}",
            i + 1
        );
    }
    for (stored, sent) in stored.iter().zip(&appended) {
        assert_eq!(stored.event_id, sent.event_id);
        assert_eq!(
            stored.payload, sent.payload,
            "payload bytes round-trip exactly"
        );
        assert_eq!(stored.metadata, sent.metadata);
    }
    hash::verify_stream(&s, &stored).unwrap();
    hash::verify_stream(&other, &store.read_stream(&other, 1, 100).await.unwrap()).unwrap();
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(8));
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let store = fresh_store().await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../migrations/postgres"
    ))
    .unwrap()
    .count();
    assert_eq!(applied as usize, files);
    let s = stream("order");
    store
        .append(&s, ExpectedVersion::NoStream, &events("OrderPlaced", 1))
        .await
        .unwrap();
}

/// The stall mode, and why it is safe. A transaction that took its xid before
/// another one committed, but writes after it, gets the higher
/// global_position and the lower transaction id. Ordering by position alone
/// would hand out the later commit first and let a reader checkpoint past the
/// earlier one (the "skipped event"). Here, while the older transaction is
/// open, `read_all` stops before both — it stalls — and after its commit it
/// returns them in transaction order.
#[tokio::test]
async fn an_open_transaction_stalls_read_all_until_it_commits() {
    let store = fresh_store().await;
    let first = stream("order");
    store
        .append(&first, ExpectedVersion::NoStream, &events("OrderPlaced", 1))
        .await
        .unwrap();
    settle(&store).await;
    let before = read_all_ids(&store, Checkpoint::START).await;
    assert_eq!(before.len(), 1);
    let checkpoint = before[0].checkpoint();

    // The old transaction: holds an xid, has written nothing yet.
    let mut old = store.pool().begin().await.unwrap();
    let old_xid: i64 = sqlx::query_scalar("select pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *old)
        .await
        .unwrap();

    let young_stream = stream("young");
    let young = store
        .append(
            &young_stream,
            ExpectedVersion::NoStream,
            &events("OrderPlaced", 1),
        )
        .await
        .unwrap();

    // The old transaction appends now: higher position, lower xid.
    let old_stream = stream("old");
    let old_event = event("OrderPlaced", 1);
    let recorded_at = chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
    let digest = content_digest(&ContentFields {
        stream_id: &old_stream,
        event_id: old_event.event_id,
        event_type: &old_event.event_type,
        schema_version: old_event.schema_version,
        payload: &old_event.payload,
        metadata: &old_event.metadata,
        recorded_at,
    });
    let row = sqlx::query(
        "select global_position from ledger_append($1, 'no_stream', null, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(old_stream.as_str())
    .bind(vec![old_event.event_id.0])
    .bind(vec![old_event.event_type.clone()])
    .bind(vec![i64::from(old_event.schema_version)])
    .bind(vec![old_event.payload.clone()])
    .bind(vec![old_event.metadata.clone()])
    .bind(recorded_at)
    .bind(vec![digest])
    .fetch_one(&mut *old)
    .await
    .unwrap();
    let old_position: i64 = row.get(0);
    assert!(
        old_position as u64 > young.positions[0],
        "the old transaction writes last"
    );

    // Stalled: the young event is committed but not handed out, because a
    // lower transaction id is still running.
    assert!(read_all_ids(&store, checkpoint).await.is_empty());
    assert!(read_all_ids(&store, Checkpoint::START).await.len() == 1);

    old.commit().await.unwrap();
    settle(&store).await;
    let after = read_all_ids(&store, checkpoint).await;
    let order: Vec<_> = after.iter().map(|e| e.stream_id.clone()).collect();
    assert_eq!(order, vec![old_stream.clone(), young_stream.clone()]);
    assert_eq!(after[0].commit, old_xid as u64);
    assert!(after[0].checkpoint() < after[1].checkpoint());
    hash::verify_stream(&old_stream, &after[..1]).unwrap();

    // Resuming from the old event's checkpoint still yields the young one.
    let resumed = read_all_ids(&store, after[0].checkpoint()).await;
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].stream_id, young_stream);
}

#[tokio::test]
async fn a_held_append_is_invisible_and_holds_back_later_commits() {
    let store = fresh_store().await;
    let held_stream = stream("held");
    let held = store
        .begin_held_append(
            &held_stream,
            ExpectedVersion::NoStream,
            events("OrderPlaced", 2),
        )
        .await
        .unwrap();
    let later = stream("later");
    store
        .append(&later, ExpectedVersion::NoStream, &events("OrderPlaced", 1))
        .await
        .unwrap();

    assert_eq!(store.stream_version(&held_stream).await.unwrap(), None);
    assert!(
        store
            .read_stream(&held_stream, 1, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(read_all_ids(&store, Checkpoint::START).await.is_empty());

    let result = held.commit().await.unwrap();
    assert_eq!((result.first_version, result.last_version), (1, 2));
    settle(&store).await;
    let all = read_all_ids(&store, Checkpoint::START).await;
    let streams: Vec<_> = all.iter().map(|e| e.stream_id.clone()).collect();
    assert_eq!(streams, vec![held_stream.clone(), held_stream, later]);
}

#[tokio::test]
async fn a_rolled_back_held_append_leaves_no_trace() {
    let store = fresh_store().await;
    let s = stream("held");
    let held = store
        .begin_held_append(&s, ExpectedVersion::NoStream, events("OrderPlaced", 1))
        .await
        .unwrap();
    held.rollback().await.unwrap();
    assert_eq!(store.stream_version(&s).await.unwrap(), None);
    store
        .append(&s, ExpectedVersion::NoStream, &events("OrderPlaced", 1))
        .await
        .unwrap();
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(1));
}

#[tokio::test]
async fn backend_errors_never_contain_the_password() {
    let err = PgStore::connect("postgres://u:s3cret@127.0.0.1:1/x")
        .await
        .unwrap_err();
    let StoreError::Backend(message) = &err else {
        panic!("expected a backend error, got {err:?}");
    };
    assert!(!message.contains("s3cret"), "{message}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");

    let err = PgStore::connect("postgres://u:s3cret@127.0.0.1:notaport/x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");
}

#[tokio::test]
async fn concurrent_appends_to_one_new_stream_all_land_in_one_chain() {
    let store = fresh_store().await;
    let s = stream("race");
    let writers = 16u64;
    let tasks: Vec<_> = (0..writers)
        .map(|n| {
            let store = store.clone();
            let s = s.clone();
            tokio::spawn(async move {
                store
                    .append(&s, ExpectedVersion::Any, &[event("OrderPlaced", n)])
                    .await
            })
        })
        .collect();
    let mut versions = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert!(versions.insert(r.first_version));
    }
    assert_eq!(versions, (1..=writers).collect());
    let stored = store.read_stream(&s, 1, 100).await.unwrap();
    hash::verify_stream(&s, &stored).unwrap();
}

#[tokio::test]
async fn concurrent_creators_of_one_stream_exactly_one_wins() {
    let store = fresh_store().await;
    let s = stream("race");
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let store = store.clone();
            let s = s.clone();
            tokio::spawn(async move {
                store
                    .append(&s, ExpectedVersion::NoStream, &[event("OrderPlaced", n)])
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Some(1)),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn concurrent_retries_of_one_append_write_it_once() {
    let store = fresh_store().await;
    let s = stream("retry");
    let batch = events("OrderPlaced", 3);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let s = s.clone();
            let batch = batch.clone();
            tokio::spawn(async move { store.append(&s, ExpectedVersion::NoStream, &batch).await })
        })
        .collect();
    let results: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(results.iter().filter(|r| !r.already_existed).count(), 1);
    assert!(results.iter().all(|r| r.positions == results[0].positions));
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(3));
}

#[tokio::test]
async fn expected_version_and_reappend_rules() {
    let store = fresh_store().await;
    let s = stream("order");
    let missing = stream("missing");
    let first = events("OrderPlaced", 2);
    let r = store
        .append(&s, ExpectedVersion::NoStream, &first)
        .await
        .unwrap();
    assert_eq!(
        (r.first_version, r.last_version, r.already_existed),
        (1, 2, false)
    );

    let cases = [
        (&s, ExpectedVersion::NoStream, Some(2)),
        (&s, ExpectedVersion::Exact(1), Some(2)),
        (&s, ExpectedVersion::Exact(u64::MAX), Some(2)),
        (&missing, ExpectedVersion::StreamExists, None),
        (&missing, ExpectedVersion::Exact(1), None),
    ];
    for (stream, expected, actual) in cases {
        let e = store
            .append(stream, expected, &events("X", 1))
            .await
            .unwrap_err();
        let want = StoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual,
        };
        assert_eq!(e, want);
    }
    assert_eq!(store.stream_version(&missing).await.unwrap(), None);

    // Idempotent re-append, whatever `expected` says.
    let again = store
        .append(&s, ExpectedVersion::NoStream, &first)
        .await
        .unwrap();
    assert_eq!(again.positions, r.positions);
    assert!(again.already_existed);

    // Partial or altered re-appends conflict.
    let mut partial = vec![first[1].clone()];
    partial.push(event("X", 9));
    let e = store
        .append(&s, ExpectedVersion::Any, &partial)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        StoreError::EventIdConflict {
            stream: s.clone(),
            event_id: partial[1].event_id
        }
    );
    let mut altered = first.clone();
    altered[0].payload = r#"{"n":99}"#.to_owned();
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::Any, &altered)
            .await
            .unwrap_err(),
        StoreError::EventIdConflict { .. }
    ));

    store
        .append(&s, ExpectedVersion::Exact(2), &events("Y", 1))
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::StreamExists, &events("Y", 1))
        .await
        .unwrap();
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(4));
    hash::verify_stream(&s, &store.read_stream(&s, 1, 100).await.unwrap()).unwrap();
}

#[tokio::test]
async fn append_many_is_all_or_nothing() {
    let store = fresh_store().await;
    let a = stream("a");
    let b = stream("b");
    store
        .append(&b, ExpectedVersion::NoStream, &events("X", 1))
        .await
        .unwrap();
    let e = store
        .append_many(&[
            StreamAppend {
                stream: a.clone(),
                expected: ExpectedVersion::NoStream,
                events: events("X", 2),
            },
            StreamAppend {
                stream: b.clone(),
                expected: ExpectedVersion::NoStream,
                events: events("X", 1),
            },
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::WrongExpectedVersion { .. }),
        "{e:?}"
    );
    assert_eq!(store.stream_version(&a).await.unwrap(), None);
    assert_eq!(store.stream_version(&b).await.unwrap(), Some(1));

    let results = store
        .append_many(&[
            StreamAppend {
                stream: b.clone(),
                expected: ExpectedVersion::Exact(1),
                events: events("X", 1),
            },
            StreamAppend {
                stream: a.clone(),
                expected: ExpectedVersion::NoStream,
                events: events("X", 2),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        results
            .iter()
            .map(|r| (r.first_version, r.last_version))
            .collect::<Vec<_>>(),
        vec![(2, 2), (1, 2)],
        "results follow batch order"
    );
}

#[tokio::test]
async fn reads_page_and_clamp() {
    let store = fresh_store().await;
    let s = stream("order");
    store
        .append(&s, ExpectedVersion::NoStream, &events("X", 5))
        .await
        .unwrap();
    let page = store.read_stream(&s, 2, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(
        store
            .read_stream(&s, u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.read_stream(&s, 1, 0).await.unwrap().is_empty());
    assert!(
        store
            .read_stream(&stream("none"), 1, 10)
            .await
            .unwrap()
            .is_empty()
    );
    settle(&store).await;
    let all = store.read_all(Checkpoint::START, 3).await.unwrap();
    assert_eq!(all.len(), 3);
    let rest = store.read_all(all[2].checkpoint(), 10).await.unwrap();
    assert_eq!(rest.len(), 2);
    let far = Checkpoint {
        commit: u64::MAX,
        position: u64::MAX,
    };
    assert!(store.read_all(far, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn unreadable_rows_are_reported_as_corrupt() {
    let store = fresh_store().await;
    let s = stream("order");
    store
        .append(&s, ExpectedVersion::NoStream, &events("X", 3))
        .await
        .unwrap();
    // The constraints would refuse such rows; drop them in this test's own
    // schema to simulate damage that got past them.
    sqlx::raw_sql(
        "alter table event drop constraint event_hash_length_ck;
         alter table event drop constraint event_stream_version_ck;",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "update event set hash = '\\x0102'::bytea where stream_id = $1 and stream_version = 2",
    )
    .bind(s.as_str())
    .execute(store.pool())
    .await
    .unwrap();
    match store.read_stream(&s, 1, 10).await.unwrap_err() {
        StoreError::Corrupt {
            stream,
            version,
            reason,
        } => {
            assert_eq!((stream.as_str(), version), (s.as_str(), 2));
            assert!(reason.contains("hash is 2 bytes"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    sqlx::query("update event set hash = sha256('x') where stream_id = $1 and stream_version = 2;")
        .bind(s.as_str())
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("update event set stream_version = -3 where stream_id = $1 and stream_version = 3")
        .bind(s.as_str())
        .execute(store.pool())
        .await
        .unwrap();
    settle(&store).await;
    match store.read_all(Checkpoint::START, 10).await.unwrap_err() {
        StoreError::Corrupt {
            stream,
            version,
            reason,
        } => {
            assert_eq!((stream.as_str(), version), (s.as_str(), 0));
            assert!(reason.contains("negative stream_version -3"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn tampering_and_deletion_break_verification() {
    let store = fresh_store().await;
    let s = stream("order");
    store
        .append(&s, ExpectedVersion::NoStream, &events("X", 4))
        .await
        .unwrap();
    store.tamper_payload(&s, 2).await.unwrap();
    let stored = store.read_stream(&s, 1, 10).await.unwrap();
    assert!(matches!(
        hash::verify_stream(&s, &stored),
        Err(hash::ChainError::ContentMismatch { version: 2, .. })
    ));
    store.delete_event(&s, 3).await.unwrap();
    let stored = store.read_stream(&s, 3, 10).await.unwrap();
    assert_eq!(stored[0].stream_version, 4);
}

#[tokio::test]
async fn read_all_walks_the_transaction_position_index() {
    let store = fresh_store().await;
    let parts: Vec<_> = (0..20)
        .map(|_| StreamAppend {
            stream: stream("bulk"),
            expected: ExpectedVersion::NoStream,
            events: events("X", 50),
        })
        .collect();
    for chunk in parts.chunks(5) {
        store.append_many(chunk).await.unwrap();
    }
    sqlx::query("analyze event")
        .execute(store.pool())
        .await
        .unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    // Judge the plan the pool will settle on for a prepared statement.
    sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("explain {READ_ALL_SQL}")))
            .bind("0")
            .bind(0i64)
            .bind(100i64)
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    sqlx::query("reset plan_cache_mode")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using event_transaction_position_ix"),
        "{plan}"
    );
    assert!(!plan.contains("Sort"), "{plan}");

    // The projector asks for the head after every batch: a backward probe of
    // the same index, never a scan of the table.
    let plan: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("explain {HEAD_POSITION_SQL}")))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Only Scan Backward using event_transaction_position_ix")
            || plan.contains("Index Scan Backward using event_transaction_position_ix"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
}

#[tokio::test]
async fn the_head_is_the_last_event_in_read_order() {
    let store = fresh_store().await;
    assert_eq!(ReadModelStore::head_position(&store).await.unwrap(), 0);
    for n in 1..=3u64 {
        store
            .append(&stream("head"), ExpectedVersion::NoStream, &events("X", n))
            .await
            .unwrap();
        settle(&store).await;
        let all = store.read_all(Checkpoint::START, 1000).await.unwrap();
        let last = all.last().unwrap().global_position;
        assert_eq!(all.iter().map(|e| e.global_position).max(), Some(last));
        assert_eq!(ReadModelStore::head_position(&store).await.unwrap(), last);
    }
}

#[tokio::test]
async fn the_baseline_table_is_prepared_and_emptied() {
    let store = fresh_store().await;
    store.prepare_baseline().await.unwrap();
    let s = stream("bench");
    store.baseline_insert(&s, &event("X", 1)).await.unwrap();
    store.prepare_baseline().await.unwrap();
    store.baseline_insert(&s, &event("X", 2)).await.unwrap();
    let count: i64 = sqlx::query_scalar("select count(*) from bench_raw_event")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(count, 1);
}

/// read_all orders by transaction id, so a stream's versions must ascend
/// with it. A transaction whose xid predates the stream head's writer (as
/// in a multi-part append_many) is refused with a retryable 40001 rather
/// than appending a version read_all would hand out before its predecessor.
#[tokio::test]
async fn an_old_transaction_may_not_extend_a_stream_a_younger_one_wrote() {
    let store = fresh_store().await;
    let s = stream("order");
    let mut old = store.pool().begin().await.unwrap();
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut *old)
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::NoStream, &events("X", 1))
        .await
        .unwrap();

    let e = event("X", 2);
    let err =
        sqlx::query("select * from ledger_append($1, 'any', null, $2, $3, $4, $5, $6, now(), $7)")
            .bind(s.as_str())
            .bind(vec![e.event_id.0])
            .bind(vec![e.event_type.clone()])
            .bind(vec![i64::from(e.schema_version)])
            .bind(vec![e.payload.clone()])
            .bind(vec![e.metadata.clone()])
            .bind(vec![[0u8; 32]])
            .fetch_all(&mut *old)
            .await
            .unwrap_err();
    let code = err
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("40001"), "{err}");
    old.rollback().await.unwrap();

    // Through the store, the retry in a fresh transaction succeeds.
    let other = stream("other");
    let results = store
        .append_many(&[
            StreamAppend {
                stream: other.clone(),
                expected: ExpectedVersion::NoStream,
                events: events("X", 1),
            },
            StreamAppend {
                stream: s.clone(),
                expected: ExpectedVersion::Exact(1),
                events: vec![e],
            },
        ])
        .await
        .unwrap();
    assert_eq!(results[1].first_version, 2);
}

/// The read pool's `statement_timeout`: a statement longer than it fails
/// with Postgres' cancellation (SQLSTATE 57014), a short one runs, and the
/// pool it was made from keeps no limit.
#[tokio::test]
async fn the_read_pool_cancels_statements_past_its_timeout() {
    let store = fresh_store().await;
    let reads = store
        .read_pool(std::time::Duration::from_millis(200))
        .await
        .unwrap();
    let setting: String = sqlx::query_scalar("show statement_timeout")
        .fetch_one(reads.pool())
        .await
        .unwrap();
    assert_eq!(setting, "200ms");
    let err = sqlx::query("select pg_sleep(2)")
        .execute(reads.pool())
        .await
        .expect_err("a 2 s statement outlives a 200 ms statement_timeout");
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("57014"), "{err}");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    // Short statements run; the connection is still usable.
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(reads.pool())
        .await
        .unwrap();
    assert_eq!(one, 1);
    // The writer's pool has no limit.
    let writer: String = sqlx::query_scalar("show statement_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(writer, "0");
}
