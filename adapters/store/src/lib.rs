//! The `EventStore` port, its input rules, the in-memory store, the generic
//! command path, and the conformance suite every backend runs unchanged.
//!
//! API Boundary: backends implement [`EventStore`] (and, for the suite,
//! [`conformance::ConformanceBackend`]); everything above talks only to these
//! traits.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod conformance;
pub mod group_commit;
pub mod handle;
pub mod idempotency;
pub mod memory;
pub mod ports_conformance;
pub mod webhook_log;
pub mod work;
pub mod work_conformance;

use std::collections::HashSet;

use async_trait::async_trait;
use ledger_core::envelope::{EVENT_TYPE_MAX, EVENTS_PER_APPEND_MAX, PAYLOAD_BYTES_MAX};
use ledger_core::ids::{EventId, StreamId};
use ledger_core::{Checkpoint, ExpectedVersion, NewEvent, RecordedEvent};

pub use memory::MemoryStore;

/// Largest page `read_stream`/`read_all` return; larger requests are clamped.
/// Keeps one read's memory bounded whatever the caller asks for.
pub const READ_BATCH_MAX: u32 = 10_000;

/// Most events in one `append_many` batch, across all its streams. Rebuilds
/// and imports write in chunks of this size: big enough to amortise a commit,
/// small enough to keep one transaction's locks and WAL short.
pub const EVENTS_PER_BATCH_MAX: usize = 10 * EVENTS_PER_APPEND_MAX;

/// What a successful append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// Version of the first event of the batch.
    pub first_version: u64,
    /// Version of the last event of the batch: the stream's version after it.
    pub last_version: u64,
    /// Global positions of the batch's events, in batch order.
    pub positions: Vec<u64>,
    /// True when every event id was already in the stream (idempotent
    /// re-append): nothing was written and the original positions are returned.
    pub already_existed: bool,
}

/// One stream's part of an [`EventStore::append_many`] batch.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// Bad input to an append, caught before touching storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("an append needs at least one event")]
    EmptyAppend,
    #[error("{count} events in one append; the limit is {max}")]
    TooManyEvents { count: usize, max: usize },
    #[error("event {event_id}: payload is {bytes} bytes; the limit is {max}")]
    PayloadTooLarge {
        event_id: EventId,
        bytes: usize,
        max: usize,
    },
    #[error("event {event_id}: event_type must be 1..={max} characters")]
    BadEventType { event_id: EventId, max: usize },
    #[error("event {event_id}: payload is not JSON")]
    PayloadNotJson { event_id: EventId },
    #[error("event {event_id}: metadata is not JSON")]
    MetadataNotJson { event_id: EventId },
    #[error("event id {0} appears twice in one append")]
    DuplicateEventId(EventId),
    #[error("stream {0} appears twice in one append_many batch")]
    DuplicateStream(StreamId),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("wrong expected version on {stream}: expected {expected:?}, actual {actual:?}")]
    WrongExpectedVersion {
        stream: StreamId,
        expected: ExpectedVersion,
        /// The stream's current version, `None` when it does not exist.
        actual: Option<u64>,
    },
    #[error("event id {event_id} is already in {stream} with other content or at another position")]
    EventIdConflict { stream: StreamId, event_id: EventId },
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("stored data is unreadable at {stream} version {version}: {reason}")]
    Corrupt {
        stream: String,
        version: u64,
        reason: String,
    },
    /// The backend failed (connection, IO, timeout). The message never holds
    /// credentials: backends build it from the error kind, not the DSN.
    #[error("event store unavailable: {0}")]
    Backend(String),
}

impl StoreError {
    /// True for errors that a caller may retry as-is.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Backend(_))
    }
}

/// The event store contract. See ARCHITECTURE.md ("Event store contract").
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if `expected` holds, atomically.
    ///
    /// Re-appending ids the stream already holds, at consecutive versions in
    /// the same order with the same type and payload, succeeds with
    /// `already_existed = true` and the original positions, whatever
    /// `expected` says. A partial or different re-append is
    /// [`StoreError::EventIdConflict`].
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError>;

    /// Several appends in one transaction: all succeed or none is written.
    async fn append_many(&self, batch: &[StreamAppend]) -> Result<Vec<AppendResult>, StoreError>;

    /// Events of one stream with `stream_version >= from_version`, ascending.
    /// A missing stream reads as empty.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stream's last version, `None` when it does not exist.
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError>;

    /// Committed events strictly after `after`, in checkpoint order. Never
    /// returns a position while a lower one may still commit.
    async fn read_all(
        &self,
        after: Checkpoint,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError>;
}

/// `recorded_at` for a new event: the store's one clock read, truncated to
/// microseconds because every backend stores microseconds and the hash
/// covers them (a finer value would not round-trip). `SystemTime` rather than
/// `Utc::now()`, which needs chrono's clock feature.
pub fn recorded_now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now()).trunc_subsecs(6)
}

/// Checks one append's events against the store's input rules.
pub fn validate_events(events: &[NewEvent]) -> Result<(), InputError> {
    if events.is_empty() {
        return Err(InputError::EmptyAppend);
    }
    if events.len() > EVENTS_PER_APPEND_MAX {
        return Err(InputError::TooManyEvents {
            count: events.len(),
            max: EVENTS_PER_APPEND_MAX,
        });
    }
    let mut seen = HashSet::with_capacity(events.len());
    for e in events {
        if !seen.insert(e.event_id) {
            return Err(InputError::DuplicateEventId(e.event_id));
        }
        if e.event_type.is_empty() || e.event_type.chars().count() > EVENT_TYPE_MAX {
            return Err(InputError::BadEventType {
                event_id: e.event_id,
                max: EVENT_TYPE_MAX,
            });
        }
        if e.payload.len() > PAYLOAD_BYTES_MAX {
            return Err(InputError::PayloadTooLarge {
                event_id: e.event_id,
                bytes: e.payload.len(),
                max: PAYLOAD_BYTES_MAX,
            });
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(&e.payload).is_err() {
            return Err(InputError::PayloadNotJson {
                event_id: e.event_id,
            });
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(&e.metadata).is_err() {
            return Err(InputError::MetadataNotJson {
                event_id: e.event_id,
            });
        }
    }
    Ok(())
}

/// Checks an `append_many` batch: each part valid, no stream twice.
pub fn validate_batch(batch: &[StreamAppend]) -> Result<(), InputError> {
    if batch.is_empty() {
        return Err(InputError::EmptyAppend);
    }
    let mut streams = HashSet::with_capacity(batch.len());
    let mut total = 0usize;
    for part in batch {
        if !streams.insert(&part.stream) {
            return Err(InputError::DuplicateStream(part.stream.clone()));
        }
        validate_events(&part.events)?;
        total += part.events.len();
    }
    if total > EVENTS_PER_BATCH_MAX {
        return Err(InputError::TooManyEvents {
            count: total,
            max: EVENTS_PER_BATCH_MAX,
        });
    }
    Ok(())
}

/// Does `actual` (the stream's current version) satisfy `expected`?
pub fn expected_holds(expected: ExpectedVersion, actual: Option<u64>) -> bool {
    match (expected, actual) {
        (ExpectedVersion::Any, _) => true,
        (ExpectedVersion::NoStream, None) => true,
        (ExpectedVersion::StreamExists, Some(_)) => true,
        (ExpectedVersion::Exact(v), Some(a)) => v == a,
        _ => false,
    }
}

/// Decides what an append whose ids partly or wholly exist means.
///
/// `existing` holds, for each batch event in order, the stored
/// `(stream_version, global_position, event_type, payload)` if that id is
/// already in the stream. Returns `Ok(None)` when no id exists (a normal
/// append), `Ok(Some(result))` for an exact idempotent re-append, and
/// `EventIdConflict` otherwise.
pub fn classify_reappend(
    stream: &StreamId,
    events: &[NewEvent],
    existing: &[Option<(u64, u64, String, String)>],
) -> Result<Option<AppendResult>, StoreError> {
    if existing.iter().all(Option::is_none) {
        return Ok(None);
    }
    let conflict = |event_id: EventId| StoreError::EventIdConflict {
        stream: stream.clone(),
        event_id,
    };
    let mut positions = Vec::with_capacity(events.len());
    let mut first_version = 0;
    for (i, (event, found)) in events.iter().zip(existing).enumerate() {
        let Some((version, position, event_type, payload)) = found else {
            return Err(conflict(event.event_id));
        };
        if i == 0 {
            first_version = *version;
        }
        let expected_version = first_version + i as u64;
        if *version != expected_version
            || *event_type != event.event_type
            || *payload != event.payload
        {
            return Err(conflict(event.event_id));
        }
        positions.push(*position);
    }
    Ok(Some(AppendResult {
        first_version,
        last_version: first_version + events.len() as u64 - 1,
        positions,
        already_existed: true,
    }))
}

/// A raw single-row insert into a plain table of the event table's shape,
/// through the same pool: the baseline `ledger bench append` reports beside
/// the real append path.
#[async_trait]
pub trait RawInsertBaseline: Send + Sync {
    /// Creates (or empties) the baseline table.
    async fn prepare_baseline(&self) -> Result<(), StoreError>;
    /// One autocommit single-row `INSERT`.
    async fn baseline_insert(&self, stream: &StreamId, event: &NewEvent) -> Result<(), StoreError>;
    /// One autocommit multi-row `INSERT` of `rows` (at most
    /// [`BASELINE_BATCH_ROWS_MAX`]): the baseline `ledger bench project`
    /// reports beside a rebuild.
    async fn baseline_insert_batch(&self, rows: &[(StreamId, NewEvent)]) -> Result<(), StoreError>;
}

/// Most rows in one [`RawInsertBaseline::baseline_insert_batch`] statement:
/// ten columns each stays far below both backends' bind-parameter limits
/// (Postgres 65 535, SQLite 32 766).
pub const BASELINE_BATCH_ROWS_MAX: usize = EVENTS_PER_APPEND_MAX;
