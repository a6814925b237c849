#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every PSP process-manager acceptance scenario
//! (`ledger_projections::managers::testkit::scenarios`) on the real stores:
//! Postgres (a fresh schema per scenario) and SQLite (a fresh file), with
//! the work queue in the same database, the reconciler reading the real
//! read models (`QueryCandidates`), and the PSP fake on loopback behind the
//! real clients. The in-memory run is in `projections/tests/managers.rs`.

#[path = "common/http.rs"]
#[macro_use]
mod http_common;

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use ledger_postgres::PgStore;
use ledger_projections::managers::testkit::{
    HEAD_POLL, HEAD_WAIT_MAX, Harness, HarnessParts, ReadSide,
};
use ledger_projections::managers::{ManagerConfig, QueryCandidates};
use ledger_projections::query::QueryStore;
use ledger_projections::readmodel::{ReadModel, ReadModelProjection, ReadModelStore};
use ledger_projections::runtime::Projector;
use ledger_sqlite::SqliteStore;
use ledger_store::EventStore;

/// The raw head of the event table.
enum Head {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

const HEAD_SQL: &str = "select coalesce(max(global_position), 0) from event";

/// The backend's read models, brought to the head before each reconcile.
struct Projected {
    events: Arc<dyn EventStore>,
    store: Arc<dyn ReadModelStore>,
    head: Head,
    /// Keeps a SQLite scenario's directory alive as long as the harness.
    _dir: Option<tempfile::TempDir>,
}

#[async_trait]
impl ReadSide for Projected {
    async fn catch_up(&self) {
        let head = self.head().await;
        let handler = ReadModelProjection::new(self.store.clone(), &ReadModel::ALL, false);
        let mut projector = Projector::new(self.events.clone(), handler);
        let deadline = std::time::Instant::now() + HEAD_WAIT_MAX;
        loop {
            projector.catch_up().await.expect("read models catch up");
            if projector.status().checkpoint.position >= head {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "read models held below {head}"
            );
            tokio::time::sleep(HEAD_POLL).await;
        }
    }

    async fn head(&self) -> u64 {
        let head: i64 = match &self.head {
            Head::Postgres(s) => sqlx::query_scalar(HEAD_SQL).fetch_one(s.pool()).await,
            Head::Sqlite(s) => sqlx::query_scalar(HEAD_SQL).fetch_one(s.pool()).await,
        }
        .expect("store head");
        u64::try_from(head).expect("positions are positive")
    }
}

fn parts<S>(store: S, head: Head, dir: Option<tempfile::TempDir>) -> HarnessParts
where
    S: EventStore + ReadModelStore + QueryStore + ledger_store::work::WorkStore + Clone + 'static,
{
    let events: Arc<dyn EventStore> = Arc::new(store.clone());
    HarnessParts {
        events: events.clone(),
        work: Arc::new(store.clone()),
        candidates: Arc::new(QueryCandidates::new(Arc::new(store.clone()))),
        read_side: Some(Arc::new(Projected {
            events,
            store: Arc::new(store),
            head,
            _dir: dir,
        })),
    }
}

fn postgres_harness(config: ManagerConfig) -> BoxFuture<'static, Harness> {
    Box::pin(async move {
        let store = http_common::fresh_pg_store().await;
        store.migrate().await.expect("migrate");
        Harness::start(parts(store.clone(), Head::Postgres(store), None), config).await
    })
}

fn sqlite_harness(config: ManagerConfig) -> BoxFuture<'static, Harness> {
    Box::pin(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ledger.db");
        // The SQLite migrator's future is not `Send` (sqlx's `Acquire` on a
        // transaction), and this one must be: open and migrate on a
        // blocking thread of the same runtime.
        let handle = tokio::runtime::Handle::current();
        let store = tokio::task::spawn_blocking(move || {
            handle.block_on(async {
                let store = SqliteStore::open(&path).await.expect("open sqlite");
                store.migrate().await.expect("migrate");
                store
            })
        })
        .await
        .expect("open and migrate");
        Harness::start(parts(store.clone(), Head::Sqlite(store), Some(dir)), config).await
    })
}

mod postgres {
    ledger_projections::manager_scenarios!(super::postgres_harness);
}

mod sqlite {
    ledger_projections::manager_scenarios!(super::sqlite_harness);
}
