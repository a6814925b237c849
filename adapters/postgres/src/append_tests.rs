//! Tests of the append statements themselves (the shared conformance suite
//! and `tests/postgres.rs` test the store through its traits): the
//! new-stream fallback, uniqueness of event ids without an index of their
//! own, the stale-xid refusal, and the plans the statements run with.
//!
//! Each test gets a schema `t_<uuid>` of its own, as `tests/common` does.

use std::str::FromStr;

use futures::future::join_all;
use ledger_core::ids::{EventId, StreamId};
use ledger_core::{ExpectedVersion, Metadata, NewEvent, Source};
use ledger_store::{EventStore, StoreError, recorded_now};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};
use uuid::Uuid;

use crate::PgStore;
use crate::append::{APPEND_MANY_SQL, APPEND_ONE_SQL, append_with};
use crate::error::AttemptError;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn database_url() -> String {
    std::env::var("LEDGER_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

async fn fresh_store() -> PgStore {
    let url = database_url();
    let schema = format!("t_{}", Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("create schema {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let options = PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let store = PgStore::connect_with(options).await.unwrap();
    store.migrate().await.unwrap();
    store
}

fn stream(name: &str) -> StreamId {
    StreamId::new(format!("{name}-{}", Uuid::new_v4().simple())).unwrap()
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId(Uuid::new_v4()),
        event_type: "OrderPlaced".to_owned(),
        schema_version: 1,
        payload: format!(r#"{{"n":{n}}}"#),
        metadata: Metadata {
            correlation_id: Uuid::from_u128(7),
            causation_id: None,
            actor: "append-test".to_owned(),
            source: Source::Operator,
            request_id: None,
        }
        .to_canonical_json(),
    }
}

fn events(count: u64) -> Vec<NewEvent> {
    (1..=count).map(event).collect()
}

async fn stored_ids(store: &PgStore, s: &StreamId) -> Vec<EventId> {
    store
        .read_stream(s, 1, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect()
}

/// A `NoStream` append first tries a plain insert at version 1; on an
/// existing stream that collides, and the general path must still tell a
/// wrong version, an idempotent re-append and an id conflict apart — for
/// one event and for several.
#[tokio::test]
async fn no_stream_onto_an_existing_stream_is_judged_by_the_general_path() {
    let store = fresh_store().await;
    let s = stream("order");
    let stored = events(2);
    let original = store
        .append(&s, ExpectedVersion::NoStream, &stored)
        .await
        .unwrap();
    assert_eq!((original.first_version, original.last_version), (1, 2));

    for batch in [vec![event(3)], events(2)] {
        assert_eq!(
            store.append(&s, ExpectedVersion::NoStream, &batch).await,
            Err(StoreError::WrongExpectedVersion {
                stream: s.clone(),
                expected: ExpectedVersion::NoStream,
                actual: Some(2),
            })
        );
    }
    let again = store
        .append(&s, ExpectedVersion::NoStream, &stored)
        .await
        .unwrap();
    assert!(again.already_existed);
    assert_eq!(again.positions, original.positions);
    let one = store
        .append(&s, ExpectedVersion::NoStream, &stored[..1])
        .await
        .unwrap();
    assert_eq!(
        (
            one.first_version,
            one.positions.clone(),
            one.already_existed
        ),
        (1, original.positions[..1].to_vec(), true)
    );
    let fresh = event(9);
    assert_eq!(
        store
            .append(
                &s,
                ExpectedVersion::NoStream,
                &[stored[0].clone(), fresh.clone()]
            )
            .await,
        Err(StoreError::EventIdConflict {
            stream: s.clone(),
            event_id: fresh.event_id,
        })
    );
    assert_eq!(
        stored_ids(&store, &s).await,
        vec![stored[0].event_id, stored[1].event_id]
    );
}

/// Event ids stay unique per stream without the `(stream_id, event_id)`
/// index: writers racing the same ids onto an existing stream (the general
/// path, `Any`, so no expected version stops the losers) write them once,
/// and every writer gets the winner's positions.
#[tokio::test]
async fn the_same_ids_raced_onto_an_existing_stream_are_written_once() {
    let store = fresh_store().await;
    let s = stream("order");
    store
        .append(&s, ExpectedVersion::NoStream, &events(1))
        .await
        .unwrap();
    for size in [1, 3] {
        let batch = events(size);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (store, s, batch) = (store.clone(), s.clone(), batch.clone());
                tokio::spawn(async move { store.append(&s, ExpectedVersion::Any, &batch).await })
            })
            .collect();
        let results: Vec<_> = join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();
        assert_eq!(results.iter().filter(|r| !r.already_existed).count(), 1);
        assert!(results.iter().all(|r| r.positions == results[0].positions));
    }
    let ids = stored_ids(&store, &s).await;
    assert_eq!(ids.len(), 5, "1 + 1 + 3 events, each once");
    assert_eq!(store.stream_version(&s).await, Ok(Some(5)));
}

/// A transaction whose xid predates the stream head's writer may not extend
/// the stream (read_all would hand the new version out before the head): the
/// general statements write nothing and report a lost race, so the caller
/// retries the transaction with a fresh xid.
#[tokio::test]
async fn an_old_transaction_is_refused_and_writes_nothing() {
    let store = fresh_store().await;
    let s = stream("order");
    let mut old = store.pool().begin().await.unwrap();
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut *old)
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::NoStream, &events(1))
        .await
        .unwrap();

    for batch in [events(1), events(2)] {
        let refused = append_with(
            &mut *old,
            &s,
            ExpectedVersion::Exact(1),
            &batch,
            recorded_now(),
        )
        .await;
        assert!(
            matches!(refused, Err(AttemptError::Raced(_))),
            "{refused:?}"
        );
    }
    let rows: i64 = sqlx::query_scalar("select count(*) from event where stream_id = $1")
        .bind(s.as_str())
        .fetch_one(&mut *old)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the refused appends wrote nothing");
    old.rollback().await.unwrap();
    assert_eq!(store.stream_version(&s).await, Ok(Some(1)));
}

/// The general statements must settle on a generic plan: a prepared
/// statement that keeps choosing custom plans is re-planned on every append,
/// which costs more than running it. Checked on one connection, on a table
/// with no statistics (as right after a deploy), after more executions than
/// the plan cache's five custom trials.
#[tokio::test]
async fn the_general_statements_settle_on_generic_plans() {
    let store = fresh_store().await;
    let mut conn = store.pool().acquire().await.unwrap();
    for i in 0..8u64 {
        let s = stream("plan");
        append_with(
            &mut *conn,
            &s,
            ExpectedVersion::Any,
            &[event(i)],
            recorded_now(),
        )
        .await
        .unwrap();
        append_with(
            &mut *conn,
            &s,
            ExpectedVersion::Exact(1),
            &events(2),
            recorded_now(),
        )
        .await
        .unwrap();
    }
    for sql in [APPEND_ONE_SQL, APPEND_MANY_SQL] {
        let generic: i64 = sqlx::query_scalar(
            "select generic_plans from pg_prepared_statements where statement = $1",
        )
        .bind(sql)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert!(generic > 0, "never chose the generic plan for {sql}");
    }
}

/// Without the `(stream_id, event_id)` index the id check walks one
/// stream's `event_pk` range; neither it nor the head probe may fall back to
/// scanning the table.
#[tokio::test]
async fn the_general_statement_probes_event_pk_only() {
    let store = fresh_store().await;
    for chunk in 0..10u64 {
        let parts: Vec<_> = (0..20)
            .map(|i| ledger_store::StreamAppend {
                stream: stream("bulk"),
                expected: ExpectedVersion::NoStream,
                events: events(chunk % 3 + i % 4 + 1),
            })
            .collect();
        store.append_many(&parts).await.unwrap();
    }
    sqlx::query("analyze event")
        .execute(store.pool())
        .await
        .unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let e = event(1);
    let plan: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!("explain {APPEND_ONE_SQL}")))
        .bind("bulk-x")
        .bind("any")
        .bind(None::<i64>)
        .bind(e.event_id.0)
        .bind(&e.event_type)
        .bind(1i64)
        .bind(&e.payload)
        .bind(&e.metadata)
        .bind(recorded_now())
        .bind([0u8; 32])
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    sqlx::query("reset plan_cache_mode")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert_eq!(plan.matches("event_pk").count(), 2, "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}
