//! Shared test helpers: a store on a fresh file that lives as long as the
//! store does, and event builders.

#![allow(dead_code)] // each test crate uses a different subset

use std::ops::Deref;

use async_trait::async_trait;
use ledger_core::ids::{EventId, StreamId};
use ledger_core::{Checkpoint, ExpectedVersion, Metadata, NewEvent, RecordedEvent, Source};
use ledger_sqlite::SqliteStore;
use ledger_store::conformance::{ConformanceBackend, HeldAppend};
use ledger_store::{AppendResult, EventStore, StoreError, StreamAppend};
use tempfile::TempDir;
use uuid::Uuid;

/// A migrated store on a new file in its own temporary directory. The
/// directory is removed when the store is dropped, not before.
#[derive(Debug, Clone)]
pub struct TestStore {
    // Field order is drop order: the pools close before the directory goes
    // (shared by clones: it goes with the last one).
    pub store: SqliteStore,
    pub dir: std::sync::Arc<TempDir>,
}

impl TestStore {
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("ledger.db")
    }
}

pub async fn fresh_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("ledger.db"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    TestStore {
        store,
        dir: std::sync::Arc::new(dir),
    }
}

impl Deref for TestStore {
    type Target = SqliteStore;
    fn deref(&self) -> &SqliteStore {
        &self.store
    }
}

#[async_trait]
impl EventStore for TestStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        self.store.append(stream, expected, events).await
    }
    async fn append_many(&self, batch: &[StreamAppend]) -> Result<Vec<AppendResult>, StoreError> {
        self.store.append_many(batch).await
    }
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        max: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_stream(stream, from, max).await
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.store.stream_version(stream).await
    }
    async fn read_all(
        &self,
        after: Checkpoint,
        max: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_all(after, max).await
    }
}

#[async_trait]
impl ConformanceBackend for TestStore {
    async fn begin_held_append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Box<dyn HeldAppend>, StoreError> {
        self.store.begin_held_append(stream, expected, events).await
    }
    async fn tamper_payload(&self, stream: &StreamId, version: u64) -> Result<(), StoreError> {
        self.store.tamper_payload(stream, version).await
    }
    async fn delete_event(&self, stream: &StreamId, version: u64) -> Result<(), StoreError> {
        self.store.delete_event(stream, version).await
    }
    fn concurrent_writers(&self) -> bool {
        self.store.concurrent_writers()
    }
}

pub fn stream(name: &str) -> StreamId {
    StreamId::new(name).unwrap()
}

/// An event with a fresh id and a payload that names `n`.
pub fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId(Uuid::new_v4()),
        event_type: "TestHappened".to_owned(),
        schema_version: 1,
        payload: format!(r#"{{"n":{n},"note":"café"}}"#),
        metadata: Metadata {
            correlation_id: Uuid::new_v4(),
            causation_id: None,
            actor: "test".to_owned(),
            source: Source::Operator,
            request_id: None,
        }
        .to_canonical_json(),
    }
}

pub fn events(count: u64) -> Vec<NewEvent> {
    (0..count).map(event).collect()
}

/// Every event of the global feed, read in pages.
pub async fn read_everything(store: &impl EventStore) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = Checkpoint::START;
    loop {
        let page = store.read_all(after, 100).await.unwrap();
        let Some(last) = page.last() else { return all };
        after = last.checkpoint();
        all.extend(page);
    }
}
