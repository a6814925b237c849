//! Shared by the Postgres test binaries: a fresh, migrated store per test.
//!
//! Each test gets its own schema (`t_<uuid>`) and a pool whose connections
//! put it first on `search_path`, so tests run in parallel against one
//! database without seeing each other's rows. Schemas are left behind: the CI
//! database is throwaway, and a test that fails keeps its data for a look.
//! `drop schema t_… cascade` cleans up by hand.

#![allow(dead_code)]

use std::str::FromStr;
use std::time::{Duration, Instant};

use ledger_core::ids::{EventId, StreamId};
use ledger_core::{Metadata, NewEvent, Source};
use ledger_postgres::PgStore;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};
use uuid::Uuid;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How long [`settle`] waits for the cluster's oldest open transaction to
/// end. Only a stuck transaction elsewhere on the server gets near this.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

pub fn database_url() -> String {
    std::env::var("LEDGER_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// A migrated store in a schema of its own.
pub async fn fresh_store() -> PgStore {
    let url = database_url();
    let schema = format!("t_{}", Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&url)
        .await
        .expect("connect to the test database");
    sqlx::query(AssertSqlSafe(format!("create schema {schema}")))
        .execute(&mut conn)
        .await
        .expect("create test schema");
    conn.close().await.expect("close setup connection");

    let options = PgConnectOptions::from_str(&url)
        .expect("parse test database url")
        .options([("search_path", schema.as_str())]);
    let store = PgStore::connect_with(options).await.expect("connect store");
    store.migrate().await.expect("migrate");
    store
}

pub fn stream(name: &str) -> StreamId {
    StreamId::new(format!("{name}-{}", Uuid::new_v4().simple())).unwrap()
}

pub fn metadata() -> String {
    Metadata {
        correlation_id: Uuid::from_u128(1),
        causation_id: None,
        actor: "test".to_owned(),
        source: Source::Operator,
        request_id: None,
    }
    .to_canonical_json()
}

pub fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId(Uuid::new_v4()),
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload: format!(r#"{{"n":{n},"note":"café ☕"}}"#),
        metadata: metadata(),
    }
}

/// Waits until every event now stored in this store's schema is below the
/// `read_all` horizon, so a read returns all of them.
///
/// The horizon (`pg_snapshot_xmin`) is cluster-wide: any transaction open
/// anywhere on the server, such as another test's held append, holds it
/// back. Postgres offers no way to block on that from SQL, so this polls the
/// condition itself (not a guessed delay) until [`SETTLE_TIMEOUT`].
pub async fn settle(store: &PgStore) {
    let newest: Option<i64> =
        sqlx::query_scalar("select max(transaction_id)::text::bigint from event")
            .fetch_one(store.pool())
            .await
            .unwrap();
    let Some(newest) = newest else { return };
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let horizon: i64 =
            sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(store.pool())
                .await
                .unwrap();
        if horizon > newest {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "read_all horizon {horizon} stuck at or below {newest}: a transaction on the server stays open"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
