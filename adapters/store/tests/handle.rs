//! The generic command path against the in-memory store, with a toy decider
//! so these tests pin the path itself, not any one aggregate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use async_trait::async_trait;
use ledger_core::codec::EventSet;
use ledger_core::ids::{EventId, StreamId};
use ledger_core::{
    Checkpoint, Decider, ExpectedVersion, InvalidHistory, Metadata, NewEvent, RecordedEvent, Source,
};
use ledger_store::handle::{COMMAND_ATTEMPTS_MAX, CommandContext, HandleError, execute, load};
use ledger_store::{AppendResult, EventStore, MemoryStore, StoreError, StreamAppend};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A set of tags; tagging twice is a duplicate.
#[derive(Debug)]
struct Tags;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum TagEvent {
    Tagged { name: String },
}

impl EventSet for TagEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Tagged"];
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum TagRejection {
    #[error("tag name is empty")]
    EmptyName,
}

impl Decider for Tags {
    type State = BTreeSet<String>;
    type Command = String;
    type Event = TagEvent;
    type Rejection = TagRejection;
    const STREAM_KIND: &'static str = "tags";

    fn decide(state: &Self::State, name: &String) -> Result<Vec<TagEvent>, TagRejection> {
        if name.is_empty() {
            return Err(TagRejection::EmptyName);
        }
        if state.contains(name) {
            return Ok(vec![]);
        }
        Ok(vec![TagEvent::Tagged { name: name.clone() }])
    }

    fn evolve(mut state: Self::State, event: &TagEvent) -> Result<Self::State, InvalidHistory> {
        let TagEvent::Tagged { name } = event;
        if !state.insert(name.clone()) {
            return Err(InvalidHistory {
                state: format!("{state:?}"),
                event_type: "Tagged".into(),
            });
        }
        Ok(state)
    }
}

fn ctx(cause: &str) -> CommandContext {
    CommandContext {
        command_id: ledger_core::ids::command_id_from_cause(cause),
        metadata: Metadata {
            correlation_id: Uuid::from_u128(42),
            causation_id: Some(Uuid::from_u128(7)),
            actor: "tester".into(),
            source: Source::Operator,
            request_id: Some("req-1".into()),
        },
    }
}

fn stream() -> StreamId {
    StreamId::new(format!("tags-{}", Uuid::new_v4())).unwrap()
}

#[tokio::test]
async fn first_command_creates_the_stream_with_derived_ids_and_metadata() {
    let store = MemoryStore::new();
    let s = stream();
    let c = ctx("key-1");
    let handled = execute::<Tags, _>(&store, &s, &c, &"a".to_owned())
        .await
        .unwrap();
    assert_eq!(handled.events, vec![TagEvent::Tagged { name: "a".into() }]);
    assert_eq!(handled.version, Some(1));
    assert_eq!(handled.state, BTreeSet::from(["a".to_owned()]));

    let stored = store.read_stream(&s, 1, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].event_id, EventId::derive(c.command_id, &s, 0));
    assert_eq!(stored[0].event_type, "Tagged");
    assert_eq!(stored[0].payload, r#"{"name":"a"}"#);
    let meta: Metadata = serde_json::from_str(&stored[0].metadata).unwrap();
    assert_eq!(meta, c.metadata);
}

#[tokio::test]
async fn a_duplicate_command_appends_nothing() {
    let store = MemoryStore::new();
    let s = stream();
    execute::<Tags, _>(&store, &s, &ctx("k1"), &"a".to_owned())
        .await
        .unwrap();
    let again = execute::<Tags, _>(&store, &s, &ctx("k2"), &"a".to_owned())
        .await
        .unwrap();
    assert!(again.events.is_empty());
    assert!(again.appended.is_none());
    assert_eq!(again.version, Some(1));
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(1));
}

#[tokio::test]
async fn a_rejection_writes_nothing() {
    let store = MemoryStore::new();
    let s = stream();
    let err = execute::<Tags, _>(&store, &s, &ctx("k"), &String::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, HandleError::Rejected(TagRejection::EmptyName)),
        "{err:?}"
    );
    assert_eq!(store.stream_version(&s).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_stream_all_land_through_retries() {
    let store = MemoryStore::new();
    let s = stream();
    let mut tasks = Vec::new();
    for i in 0..COMMAND_ATTEMPTS_MAX {
        let (store, s) = (store.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            execute::<Tags, _>(&store, &s, &ctx(&format!("k{i}")), &format!("t{i}"))
                .await
                .map(|h| h.events.len())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 1);
    }
    let loaded = load::<Tags, _>(&store, &s).await.unwrap();
    assert_eq!(loaded.version, Some(u64::from(COMMAND_ATTEMPTS_MAX)));
    assert_eq!(loaded.state.len(), COMMAND_ATTEMPTS_MAX as usize);
}

/// Reads from memory but every append loses the optimistic race.
struct AlwaysRaced(MemoryStore);

#[async_trait]
impl EventStore for AlwaysRaced {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        _: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        Err(StoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual: Some(99),
        })
    }
    async fn append_many(&self, batch: &[StreamAppend]) -> Result<Vec<AppendResult>, StoreError> {
        self.0.append_many(batch).await
    }
    async fn read_stream(
        &self,
        s: &StreamId,
        from: u64,
        max: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_stream(s, from, max).await
    }
    async fn stream_version(&self, s: &StreamId) -> Result<Option<u64>, StoreError> {
        self.0.stream_version(s).await
    }
    async fn read_all(
        &self,
        after: Checkpoint,
        max: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_all(after, max).await
    }
}

#[tokio::test]
async fn endless_contention_gives_up_with_a_typed_error() {
    let store = AlwaysRaced(MemoryStore::new());
    let s = stream();
    let err = execute::<Tags, _>(&store, &s, &ctx("k"), &"a".to_owned())
        .await
        .unwrap_err();
    match err {
        HandleError::Contention { stream, attempts } => {
            assert_eq!(stream, s);
            assert_eq!(attempts, COMMAND_ATTEMPTS_MAX);
        }
        other => panic!("expected Contention, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unknown_stored_event_type_is_a_typed_error_naming_stream_and_version() {
    let store = MemoryStore::new();
    let s = stream();
    execute::<Tags, _>(&store, &s, &ctx("k1"), &"a".to_owned())
        .await
        .unwrap();
    let future = ledger_store::conformance::new_event("RetaggedV9", "{}");
    store
        .append(&s, ExpectedVersion::Exact(1), &[future])
        .await
        .unwrap();
    let err = execute::<Tags, _>(&store, &s, &ctx("k2"), &"b".to_owned())
        .await
        .unwrap_err();
    match err {
        HandleError::Undecodable {
            stream,
            version,
            source,
        } => {
            assert_eq!(stream, s);
            assert_eq!(version, 2);
            assert_eq!(
                source,
                ledger_core::codec::CodecError::UnknownEventType("RetaggedV9".into())
            );
        }
        other => panic!("expected Undecodable, got {other:?}"),
    }
}

#[tokio::test]
async fn history_the_core_rejects_is_reported_not_folded() {
    let store = MemoryStore::new();
    let s = stream();
    let tagged = ledger_store::conformance::new_event("Tagged", r#"{"name":"a"}"#);
    let again = ledger_store::conformance::new_event("Tagged", r#"{"name":"a"}"#);
    store
        .append(&s, ExpectedVersion::NoStream, &[tagged, again])
        .await
        .unwrap();
    let err = load::<Tags, _>(&store, &s).await.unwrap_err();
    assert!(
        matches!(err, HandleError::InvalidHistory { ref stream, version: 2, .. } if *stream == s),
        "{err:?}"
    );
}
