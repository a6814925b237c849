//! The storage envelope: what the event store writes and reads back.
//!
//! API Boundary: these types are shared by every store backend. The payload is
//! kept as the exact JSON text that was hashed; nothing re-serialises it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::hash::Hash;
use crate::ids::{EventId, StreamId};

/// Largest payload the store accepts. Events are small facts; a megabyte
/// means a bug upstream, not a legitimate order.
pub const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
/// Most events accepted in one append. Bounds transaction size and lock time.
pub const EVENTS_PER_APPEND_MAX: usize = 1_000;
/// Longest `event_type`.
pub const EVENT_TYPE_MAX: usize = 100;

/// Mirrors KurrentDB's `StreamState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check at all.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last version must be exactly this (versions start at 1).
    Exact(u64),
}

/// A position in the global feed. `read_all(after)` returns only events
/// strictly after it. `commit` orders transactions (the `xid8` on Postgres,
/// 0 where a single writer makes position order equal commit order).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Checkpoint {
    pub commit: u64,
    pub position: u64,
}

impl Checkpoint {
    pub const START: Checkpoint = Checkpoint {
        commit: 0,
        position: 0,
    };
}

/// Who caused an event to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Api,
    Webhook,
    Reconciler,
    Worker,
    Operator,
}

/// Recorded with every event; hashed along with the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub actor: String,
    pub source: Source,
    pub request_id: Option<String>,
}

impl Metadata {
    /// Canonical JSON text (fixed field order) as stored and hashed.
    pub fn to_canonical_json(&self) -> String {
        // Serialising a struct of plain fields cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An event on its way into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: EventId,
    pub event_type: String,
    pub schema_version: u32,
    /// Canonical JSON of the event body (see [`crate::codec`]).
    pub payload: String,
    /// Canonical JSON of [`Metadata`].
    pub metadata: String,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub global_position: u64,
    /// Transaction order key (see [`Checkpoint::commit`]).
    pub commit: u64,
    pub stream_id: StreamId,
    pub stream_version: u64,
    pub event_id: EventId,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: String,
    pub metadata: String,
    pub recorded_at: DateTime<Utc>,
    #[serde(with = "hex_hash")]
    pub prev_hash: Hash,
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

impl RecordedEvent {
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            commit: self.commit,
            position: self.global_position,
        }
    }
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::hash::Hash;

    pub fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(text).map_err(D::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| D::Error::custom("hash must be 32 bytes"))
    }
}
