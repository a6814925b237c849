//! The one generic command path: `load → fold → decide → append(Exact(v))`.
//!
//! **Guarantees:** a command either appends exactly the events `decide`
//! returned against the version it folded, or appends nothing. Event ids are
//! derived from the command id, so re-running a command after a crash or a
//! lost response can never write its events twice (store de-duplication), and
//! a duplicate command folds to a state that makes `decide` return nothing.

use ledger_core::codec::{self, CodecError};
use ledger_core::ids::{EventId, StreamId};
use ledger_core::{
    Decider, ExpectedVersion, InvalidHistory, Metadata, NewEvent, RecordedEvent, Source,
};
use tracing::debug;
use uuid::Uuid;

use crate::{AppendResult, EventStore, READ_BATCH_MAX, StoreError};

/// Attempts on `WrongExpectedVersion` before giving up. Contention on one
/// order is rare (a webhook racing a command); five rounds absorb bursts
/// without letting a hot stream spin forever.
pub const COMMAND_ATTEMPTS_MAX: u32 = 5;

/// Who and what caused a command; recorded on every event it produces.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// Derived from the cause (Idempotency-Key, webhook `event_id`, …) so a
    /// re-run produces the same event ids.
    pub command_id: Uuid,
    pub metadata: Metadata,
}

impl CommandContext {
    /// A context whose command id (and so its events' ids) derives from
    /// `cause`, correlated with itself: re-running the same cause can never
    /// append twice.
    pub fn from_cause(cause: &str, actor: impl Into<String>, source: Source) -> CommandContext {
        let command_id = ledger_core::ids::command_id_from_cause(cause);
        CommandContext {
            command_id,
            metadata: Metadata {
                correlation_id: command_id,
                causation_id: None,
                actor: actor.into(),
                source,
                request_id: None,
            },
        }
    }

    /// The same, carrying the HTTP request id.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> CommandContext {
        self.metadata.request_id = Some(request_id.into());
        self
    }
}

/// A stream folded from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<S> {
    pub state: S,
    /// `None` when the stream does not exist.
    pub version: Option<u64>,
}

/// What a handled command did.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled<D: Decider> {
    /// State after the command.
    pub state: D::State,
    /// Events appended (empty for a duplicate).
    pub events: Vec<D::Event>,
    /// `None` when nothing was appended.
    pub appended: Option<AppendResult>,
    /// Stream version after the command.
    pub version: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandleError<R: std::error::Error + 'static> {
    /// The core refused the command; nothing was written.
    #[error(transparent)]
    Rejected(R),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stream {stream} version {version}: {source}")]
    Undecodable {
        stream: StreamId,
        version: u64,
        source: CodecError,
    },
    #[error("stream {stream} version {version}: {source}")]
    InvalidHistory {
        stream: StreamId,
        version: u64,
        source: InvalidHistory,
    },
    /// Lost the optimistic race `COMMAND_ATTEMPTS_MAX` times in a row.
    #[error("stream {stream} is too contended: gave up after {attempts} attempts")]
    Contention { stream: StreamId, attempts: u32 },
}

/// Decodes one stored event into the decider's event type.
pub fn decode_recorded<D: Decider>(
    e: &RecordedEvent,
) -> Result<D::Event, HandleError<D::Rejection>> {
    codec::decode::<D::Event>(&e.event_type, e.schema_version, &e.payload).map_err(|source| {
        HandleError::Undecodable {
            stream: e.stream_id.clone(),
            version: e.stream_version,
            source,
        }
    })
}

/// Reads and folds a whole stream.
pub async fn load<D: Decider, S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamId,
) -> Result<Loaded<D::State>, HandleError<D::Rejection>> {
    let mut state = D::State::default();
    let mut version = None;
    let mut from = 1;
    loop {
        let page = store.read_stream(stream, from, READ_BATCH_MAX).await?;
        let full = page.len() >= READ_BATCH_MAX as usize;
        for e in &page {
            let event = decode_recorded::<D>(e)?;
            state = D::evolve(state, &event).map_err(|source| HandleError::InvalidHistory {
                stream: stream.clone(),
                version: e.stream_version,
                source,
            })?;
            version = Some(e.stream_version);
            from = e.stream_version + 1;
        }
        if !full {
            return Ok(Loaded { state, version });
        }
    }
}

/// Encodes decided events for the store, with ids derived from the command.
pub fn to_new_events<D: Decider>(
    ctx: &CommandContext,
    stream: &StreamId,
    events: &[D::Event],
) -> Vec<NewEvent> {
    let metadata = ctx.metadata.to_canonical_json();
    events
        .iter()
        .zip(0u32..)
        .map(|(event, index)| {
            let encoded = codec::encode(event);
            NewEvent {
                event_id: EventId::derive(ctx.command_id, stream, index),
                event_type: encoded.event_type,
                schema_version: encoded.schema_version,
                payload: encoded.payload,
                metadata: metadata.clone(),
            }
        })
        .collect()
}

/// Runs one command against one stream.
#[tracing::instrument(
    name = "command",
    skip_all,
    fields(
        stream_id = %stream,
        command_id = %ctx.command_id,
        correlation_id = %ctx.metadata.correlation_id,
    )
)]
pub async fn execute<D: Decider, S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamId,
    ctx: &CommandContext,
    command: &D::Command,
) -> Result<Handled<D>, HandleError<D::Rejection>> {
    for attempt in 1..=COMMAND_ATTEMPTS_MAX {
        let loaded = load::<D, S>(store, stream).await?;
        let events = D::decide(&loaded.state, command).map_err(HandleError::Rejected)?;
        if events.is_empty() {
            debug!(version = ?loaded.version, "command already reflected; nothing to append");
            return Ok(Handled {
                state: loaded.state,
                events,
                appended: None,
                version: loaded.version,
            });
        }
        let mut state = loaded.state;
        for event in &events {
            // decide() and evolve() disagreeing is a core bug, not an input
            // error; surface it as invalid history rather than appending.
            state = D::evolve(state, event).map_err(|source| HandleError::InvalidHistory {
                stream: stream.clone(),
                version: loaded.version.unwrap_or(0) + 1,
                source,
            })?;
        }
        let expected = match loaded.version {
            Some(v) => ExpectedVersion::Exact(v),
            None => ExpectedVersion::NoStream,
        };
        let new_events = to_new_events::<D>(ctx, stream, &events);
        match store.append(stream, expected, &new_events).await {
            Ok(appended) if appended.already_existed => {
                // Our events were already stored (a previous run of this very
                // command). Re-fold so the caller sees the stored truth.
                let loaded = load::<D, S>(store, stream).await?;
                return Ok(Handled {
                    state: loaded.state,
                    events: Vec::new(),
                    appended: None,
                    version: loaded.version,
                });
            }
            Ok(appended) => {
                debug!(
                    first_version = appended.first_version,
                    last_version = appended.last_version,
                    "appended"
                );
                let version = Some(appended.last_version);
                return Ok(Handled {
                    state,
                    events,
                    appended: Some(appended),
                    version,
                });
            }
            Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                // Routine under concurrency and retried here; only running
                // out of attempts (`Contention`) is the caller's to report.
                debug!(
                    attempt,
                    ?expected,
                    ?actual,
                    "lost optimistic race; reloading"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(HandleError::Contention {
        stream: stream.clone(),
        attempts: COMMAND_ATTEMPTS_MAX,
    })
}
