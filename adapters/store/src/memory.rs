//! The in-memory event store: the reference backend for the conformance
//! suite, and the store for fast tests above the adapters.
//!
//! **Guarantees:** the same observable contract as the SQL backends
//! (validation, idempotent re-append before the version check, all-or-nothing
//! `append_many`, a per-stream hash chain, global positions from 1). It holds
//! nothing across restarts.
//!
//! Two locks, never both awaited:
//! - the *write lock* (a tokio mutex over the position sequence) serialises
//!   appends. It is the single writer, so position order is commit order and
//!   every checkpoint's `commit` is 0. A [`HeldAppend`] owns it from
//!   preparation to commit or rollback, the way an open SQL transaction holds
//!   its locks.
//! - the *log lock* (a std `RwLock`, never held across an `.await`) guards
//!   the committed events. Readers take only this one, so they never see a
//!   held append's events and never wait for a writer that is holding.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_core::hash::{ContentFields, GENESIS, chain, content_digest};
use ledger_core::ids::{EventId, StreamId};
use ledger_core::{Checkpoint, ExpectedVersion, NewEvent, RecordedEvent};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::conformance::{ConformanceBackend, HeldAppend};
use crate::{
    AppendResult, EventStore, READ_BATCH_MAX, StoreError, StreamAppend, classify_reappend,
    expected_holds, recorded_now, validate_batch, validate_events,
};

/// In-memory [`EventStore`]. Clones share the same log.
#[derive(Clone, Default)]
pub struct MemoryStore {
    writer: Arc<Mutex<Sequence>>,
    log: Arc<RwLock<Log>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The log can be large; its contents are not a useful debug line.
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

/// Guarded by the write lock: the last global position handed out. A rolled
/// back held append burns its positions, like a SQL sequence does, so readers
/// are exercised against position gaps too.
#[derive(Debug, Default)]
struct Sequence {
    last_position: u64,
}

/// The committed events.
#[derive(Debug, Default)]
struct Log {
    /// Every committed event by global position.
    events: BTreeMap<u64, RecordedEvent>,
    streams: HashMap<StreamId, StreamLog>,
}

#[derive(Debug, Default)]
struct StreamLog {
    /// Stream version → global position.
    versions: BTreeMap<u64, u64>,
    /// Event id → global position.
    ids: HashMap<EventId, u64>,
}

/// Writes decided under the write lock, applied to the log in one step.
#[derive(Debug)]
struct Plan {
    results: Vec<AppendResult>,
    /// New events in position order.
    writes: Vec<RecordedEvent>,
    last_position: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the parts atomically with the write lock already held.
    fn append_locked(
        &self,
        sequence: &mut Sequence,
        parts: &[StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        let mut log = write_log(&self.log);
        let plan = plan(&log, sequence.last_position, parts, recorded_now())?;
        sequence.last_position = plan.last_position;
        Ok(apply(&mut log, plan))
    }

    fn single(
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> [StreamAppend; 1] {
        [StreamAppend {
            stream: stream.clone(),
            expected,
            events: events.to_vec(),
        }]
    }
}

// Lock poisoning would mean a panic while a guard was held. Every mutation
// of the log is a single `apply` of events built beforehand, so the data is
// still consistent and the next caller may proceed.
fn read_log(log: &RwLock<Log>) -> RwLockReadGuard<'_, Log> {
    log.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_log(log: &RwLock<Log>) -> RwLockWriteGuard<'_, Log> {
    log.write().unwrap_or_else(PoisonError::into_inner)
}

/// Decides every part against the committed log: re-append classification
/// first, then the expected version, then versions, positions and hashes.
/// Any error rejects the whole batch. Parts name distinct streams
/// (`validate_batch`), so no part depends on another's writes.
fn plan(
    log: &Log,
    last_position: u64,
    parts: &[StreamAppend],
    recorded_at: DateTime<Utc>,
) -> Result<Plan, StoreError> {
    let mut position = last_position;
    let mut results = Vec::with_capacity(parts.len());
    let mut writes = Vec::new();
    for part in parts {
        let stream_log = log.streams.get(&part.stream);
        let existing: Vec<_> = part
            .events
            .iter()
            .map(|e| {
                let position = stream_log?.ids.get(&e.event_id)?;
                let stored = log.events.get(position)?;
                Some((
                    stored.stream_version,
                    stored.global_position,
                    stored.event_type.clone(),
                    stored.payload.clone(),
                ))
            })
            .collect();
        if let Some(result) = classify_reappend(&part.stream, &part.events, &existing)? {
            results.push(result);
            continue;
        }

        let last = stream_log.and_then(|s| s.versions.last_key_value());
        let actual = last.map(|(version, _)| *version);
        if !expected_holds(part.expected, actual) {
            return Err(StoreError::WrongExpectedVersion {
                stream: part.stream.clone(),
                expected: part.expected,
                actual,
            });
        }
        let mut prev_hash = last
            .and_then(|(_, position)| log.events.get(position))
            .map_or(GENESIS, |e| e.hash);
        let first_version = actual.unwrap_or(0) + 1;
        let mut positions = Vec::with_capacity(part.events.len());
        for (event, stream_version) in part.events.iter().zip(first_version..) {
            position += 1;
            let content = content_digest(&ContentFields {
                stream_id: &part.stream,
                event_id: event.event_id,
                event_type: &event.event_type,
                schema_version: event.schema_version,
                payload: &event.payload,
                metadata: &event.metadata,
                recorded_at,
            });
            let hash = chain(&prev_hash, stream_version, &content);
            writes.push(RecordedEvent {
                global_position: position,
                commit: 0,
                stream_id: part.stream.clone(),
                stream_version,
                event_id: event.event_id,
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                payload: event.payload.clone(),
                metadata: event.metadata.clone(),
                recorded_at,
                prev_hash,
                hash,
            });
            positions.push(position);
            prev_hash = hash;
        }
        results.push(AppendResult {
            first_version,
            last_version: first_version + part.events.len() as u64 - 1,
            positions,
            already_existed: false,
        });
    }
    Ok(Plan {
        results,
        writes,
        last_position: position,
    })
}

fn apply(log: &mut Log, plan: Plan) -> Vec<AppendResult> {
    for event in plan.writes {
        let stream_log = log.streams.entry(event.stream_id.clone()).or_default();
        stream_log
            .versions
            .insert(event.stream_version, event.global_position);
        stream_log.ids.insert(event.event_id, event.global_position);
        log.events.insert(event.global_position, event);
    }
    plan.results
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        validate_events(events)?;
        let mut sequence = self.writer.lock().await;
        let results = self.append_locked(&mut sequence, &Self::single(stream, expected, events))?;
        results.into_iter().next().ok_or_else(|| {
            StoreError::Backend("memory store: a one-part append produced no result".to_owned())
        })
    }

    async fn append_many(&self, batch: &[StreamAppend]) -> Result<Vec<AppendResult>, StoreError> {
        validate_batch(batch)?;
        let mut sequence = self.writer.lock().await;
        self.append_locked(&mut sequence, batch)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = read_log(&self.log);
        let Some(stream_log) = log.streams.get(stream) else {
            return Ok(Vec::new());
        };
        Ok(stream_log
            .versions
            .range(from_version..)
            .take(max_count.min(READ_BATCH_MAX) as usize)
            .filter_map(|(_, position)| log.events.get(position).cloned())
            .collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let log = read_log(&self.log);
        Ok(log
            .streams
            .get(stream)
            .and_then(|s| s.versions.last_key_value())
            .map(|(version, _)| *version))
    }

    async fn read_all(
        &self,
        after: Checkpoint,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // Every stored checkpoint is `(0, position)`, so nothing lies after a
        // checkpoint from another commit epoch.
        if after.commit > 0 {
            return Ok(Vec::new());
        }
        let log = read_log(&self.log);
        Ok(log
            .events
            .range((Bound::Excluded(after.position), Bound::Unbounded))
            .take(max_count.min(READ_BATCH_MAX) as usize)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

/// A prepared append holding the write lock until commit or rollback.
/// Dropping it unresolved is a rollback.
struct MemoryHeldAppend {
    // Owned by the held append so other writers queue behind it.
    _writer: OwnedMutexGuard<Sequence>,
    log: Arc<RwLock<Log>>,
    plan: Plan,
}

#[async_trait]
impl HeldAppend for MemoryHeldAppend {
    async fn commit(self: Box<Self>) -> Result<AppendResult, StoreError> {
        let MemoryHeldAppend { _writer, log, plan } = *self;
        let results = apply(&mut write_log(&log), plan);
        // The write lock is released only after the events are visible.
        drop(_writer);
        results.into_iter().next().ok_or_else(|| {
            StoreError::Backend("memory store: a held append produced no result".to_owned())
        })
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        // Nothing reached the log; the burned positions stay burned.
        Ok(())
    }
}

#[async_trait]
impl ConformanceBackend for MemoryStore {
    async fn begin_held_append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Box<dyn HeldAppend>, StoreError> {
        validate_events(&events)?;
        let mut writer = Arc::clone(&self.writer).lock_owned().await;
        let parts = [StreamAppend {
            stream: stream.clone(),
            expected,
            events,
        }];
        let plan = plan(
            &read_log(&self.log),
            writer.last_position,
            &parts,
            recorded_now(),
        )?;
        writer.last_position = plan.last_position;
        Ok(Box::new(MemoryHeldAppend {
            _writer: writer,
            log: Arc::clone(&self.log),
            plan,
        }))
    }

    async fn tamper_payload(&self, stream: &StreamId, version: u64) -> Result<(), StoreError> {
        let mut log = write_log(&self.log);
        let position = stored_position(&log, stream, version)?;
        let Some(event) = log.events.get_mut(&position) else {
            return Err(missing(stream, version));
        };
        let mut bytes = std::mem::take(&mut event.payload).into_bytes();
        // Flip the case of the first ASCII letter, falling back to the low
        // bit of the first byte: either keeps the text valid UTF-8, and the
        // first keeps typical JSON valid too.
        let index = bytes.iter().position(u8::is_ascii_alphabetic).unwrap_or(0);
        let flip = if bytes.get(index).is_some_and(u8::is_ascii_alphabetic) {
            0x20
        } else {
            0x01
        };
        if let Some(byte) = bytes.get_mut(index) {
            *byte ^= flip;
        }
        event.payload = String::from_utf8(bytes).map_err(|_| StoreError::Corrupt {
            stream: stream.as_str().to_owned(),
            version,
            reason: "payload is not valid UTF-8 after tampering".to_owned(),
        })?;
        Ok(())
    }

    async fn delete_event(&self, stream: &StreamId, version: u64) -> Result<(), StoreError> {
        let mut log = write_log(&self.log);
        let position = stored_position(&log, stream, version)?;
        if let Some(event) = log.events.remove(&position)
            && let Some(stream_log) = log.streams.get_mut(stream)
        {
            stream_log.versions.remove(&version);
            stream_log.ids.remove(&event.event_id);
        }
        Ok(())
    }

    fn concurrent_writers(&self) -> bool {
        false
    }
}

fn stored_position(log: &Log, stream: &StreamId, version: u64) -> Result<u64, StoreError> {
    log.streams
        .get(stream)
        .and_then(|s| s.versions.get(&version))
        .copied()
        .ok_or_else(|| missing(stream, version))
}

fn missing(stream: &StreamId, version: u64) -> StoreError {
    StoreError::Backend(format!(
        "memory store: no event at {stream} version {version}"
    ))
}
