//! Canonical event bytes and the per-stream hash chain.
//!
//! **Guarantees:** altering any stored byte of an event (payload, metadata,
//! type, version, id, time) or removing an event from the middle of a stream
//! changes a hash that verification recomputes, and the failure names the
//! stream and version.
//!
//! `content = sha256("ledger-event-v1" ‖ for each field: u64be(len) ‖ bytes)`
//! over stream id, event id, type, schema version, payload, metadata and
//! recorded-at (microseconds), and
//! `hash = sha256(prev_hash ‖ u64be(stream_version) ‖ content)`, with the
//! `prev_hash` of version 1 all zero.
//!
//! Splitting the content digest (computable before the version is known)
//! from the chain step lets a SQL backend extend the chain server-side in the
//! same statement that assigns the version — `sha256(prev ‖ int8send(v) ‖
//! content)`, one round trip — while the canonical field encoding lives only
//! here.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::envelope::RecordedEvent;
use crate::ids::{EventId, StreamId};

pub type Hash = [u8; 32];

/// `prev_hash` of every stream's first event.
pub const GENESIS: Hash = [0u8; 32];

const DOMAIN_TAG: &[u8] = b"ledger-event-v1";

/// The fields that identify an event's content, in canonical order.
#[derive(Debug, Clone, Copy)]
pub struct ContentFields<'a> {
    pub stream_id: &'a StreamId,
    pub event_id: EventId,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub payload: &'a str,
    pub metadata: &'a str,
    pub recorded_at: DateTime<Utc>,
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    // usize → u64 is lossless on every supported target.
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

pub fn content_digest(f: &ContentFields<'_>) -> Hash {
    let mut h = Sha256::new();
    field(&mut h, DOMAIN_TAG);
    field(&mut h, f.stream_id.as_str().as_bytes());
    field(&mut h, f.event_id.0.as_bytes());
    field(&mut h, f.event_type.as_bytes());
    field(&mut h, &f.schema_version.to_be_bytes());
    field(&mut h, f.payload.as_bytes());
    field(&mut h, f.metadata.as_bytes());
    field(&mut h, &f.recorded_at.timestamp_micros().to_be_bytes());
    h.finalize().into()
}

pub fn chain(prev: &Hash, stream_version: u64, content: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(stream_version.to_be_bytes());
    h.update(content);
    h.finalize().into()
}

/// Recomputes the hash of a stored event from its stored fields.
pub fn recompute(e: &RecordedEvent) -> Hash {
    chain(
        &e.prev_hash,
        e.stream_version,
        &content_digest(&fields_of(e)),
    )
}

pub fn fields_of(e: &RecordedEvent) -> ContentFields<'_> {
    ContentFields {
        stream_id: &e.stream_id,
        event_id: e.event_id,
        event_type: &e.event_type,
        schema_version: e.schema_version,
        payload: &e.payload,
        metadata: &e.metadata,
        recorded_at: e.recorded_at,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("stream {stream} version {version}: stored hash does not match its content")]
    ContentMismatch { stream: String, version: u64 },
    #[error("stream {stream} version {version}: prev_hash does not link to version {}", version.saturating_sub(1))]
    BrokenLink { stream: String, version: u64 },
    #[error(
        "stream {stream}: expected version {expected}, found {found} (event missing or reordered)"
    )]
    VersionGap {
        stream: String,
        expected: u64,
        found: u64,
    },
}

/// Incremental verifier for one stream, fed events in version order.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    stream: String,
    next_version: u64,
    prev: Hash,
}

impl ChainVerifier {
    pub fn new(stream: &StreamId) -> Self {
        ChainVerifier {
            stream: stream.as_str().to_owned(),
            next_version: 1,
            prev: GENESIS,
        }
    }

    pub fn push(&mut self, e: &RecordedEvent) -> Result<(), ChainError> {
        if e.stream_version != self.next_version {
            return Err(ChainError::VersionGap {
                stream: self.stream.clone(),
                expected: self.next_version,
                found: e.stream_version,
            });
        }
        if e.prev_hash != self.prev {
            return Err(ChainError::BrokenLink {
                stream: self.stream.clone(),
                version: e.stream_version,
            });
        }
        if recompute(e) != e.hash {
            return Err(ChainError::ContentMismatch {
                stream: self.stream.clone(),
                version: e.stream_version,
            });
        }
        self.prev = e.hash;
        self.next_version += 1;
        Ok(())
    }
}

/// Verifies a whole stream, given in version order.
pub fn verify_stream(stream: &StreamId, events: &[RecordedEvent]) -> Result<(), ChainError> {
    let mut v = ChainVerifier::new(stream);
    events.iter().try_for_each(|e| v.push(e))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use uuid::Uuid;

    use super::*;

    fn chain_of(stream: &StreamId, payloads: &[&str]) -> Vec<RecordedEvent> {
        let mut prev = GENESIS;
        let mut out = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            let version = i as u64 + 1;
            let mut e = RecordedEvent {
                global_position: version,
                commit: 0,
                stream_id: stream.clone(),
                stream_version: version,
                event_id: EventId(Uuid::from_u128(version as u128)),
                event_type: "OrderPlaced".into(),
                schema_version: 1,
                payload: (*payload).to_owned(),
                metadata: "{}".into(),
                recorded_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
                prev_hash: prev,
                hash: GENESIS,
            };
            e.hash = recompute(&e);
            prev = e.hash;
            out.push(e);
        }
        out
    }

    #[test]
    fn intact_chain_verifies() {
        let s = StreamId::new("order-1").unwrap();
        let events = chain_of(&s, &[r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]);
        assert_eq!(verify_stream(&s, &events), Ok(()));
    }

    #[test]
    fn flipped_payload_byte_is_a_content_mismatch_naming_stream_and_version() {
        let s = StreamId::new("order-1").unwrap();
        let mut events = chain_of(&s, &[r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]);
        events[1].payload = r#"{"b":3}"#.into();
        let err = verify_stream(&s, &events).unwrap_err();
        assert_eq!(
            err,
            ChainError::ContentMismatch {
                stream: "order-1".into(),
                version: 2
            }
        );
        assert!(err.to_string().contains("order-1") && err.to_string().contains("version 2"));
    }

    #[test]
    fn removed_middle_event_is_a_version_gap() {
        let s = StreamId::new("order-1").unwrap();
        let mut events = chain_of(&s, &[r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]);
        events.remove(1);
        assert_eq!(
            verify_stream(&s, &events),
            Err(ChainError::VersionGap {
                stream: "order-1".into(),
                expected: 2,
                found: 3
            })
        );
    }

    #[test]
    fn renumbered_event_after_removal_breaks_the_link() {
        // Hiding a removal by renumbering still fails: the link is hashed.
        let s = StreamId::new("order-1").unwrap();
        let mut events = chain_of(&s, &[r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]);
        events.remove(1);
        events[1].stream_version = 2;
        assert_eq!(
            verify_stream(&s, &events),
            Err(ChainError::BrokenLink {
                stream: "order-1".into(),
                version: 2
            })
        );
    }
}
