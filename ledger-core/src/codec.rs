//! Canonical event bytes: how a typed event becomes `(event_type,
//! schema_version, payload)` and back.
//!
//! **Guarantees:** encoding is deterministic (object keys sorted, no
//! insignificant whitespace), so the same event always hashes the same.
//! Decoding an unknown `event_type` or a malformed payload is a typed error,
//! never a panic.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// A closed set of events for one stream kind (one enum).
///
/// The enum must be `#[serde(tag = "type", content = "data")]` so the variant
/// name is the stable `event_type`.
pub trait EventSet: Serialize + DeserializeOwned + Clone {
    /// Every `event_type` this set can decode.
    const EVENT_TYPES: &'static [&'static str];
    /// Current schema version of every event in the set. Older versions are
    /// upcast at the edge before decoding.
    const SCHEMA_VERSION: u32 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("unknown event type {0:?}")]
    UnknownEventType(String),
    #[error("unsupported schema version {found} for {event_type} (this build reads {supported})")]
    UnsupportedSchemaVersion {
        event_type: String,
        found: u32,
        supported: u32,
    },
    #[error("malformed payload for {event_type}: {reason}")]
    MalformedPayload { event_type: String, reason: String },
    #[error("stream {0:?} is of no known kind (order-, refund-, transfer-)")]
    UnknownStreamKind(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub event_type: String,
    pub schema_version: u32,
    pub payload: String,
}

pub fn encode<E: EventSet>(event: &E) -> Encoded {
    // serde_json's Value map is ordered by key (no `preserve_order`), which is
    // what makes the output canonical.
    let value = serde_json::to_value(event).unwrap_or(Value::Null);
    let (event_type, data) = match value {
        Value::Object(mut map) => (
            map.remove("type")
                .and_then(|t| t.as_str().map(str::to_owned))
                .unwrap_or_default(),
            map.remove("data").unwrap_or(Value::Null),
        ),
        _ => (String::new(), Value::Null),
    };
    assert!(
        E::EVENT_TYPES.contains(&event_type.as_str()),
        "event enum must be adjacently tagged and list {event_type:?} in EVENT_TYPES"
    );
    Encoded {
        event_type,
        schema_version: E::SCHEMA_VERSION,
        payload: data.to_string(),
    }
}

pub fn decode<E: EventSet>(
    event_type: &str,
    schema_version: u32,
    payload: &str,
) -> Result<E, CodecError> {
    if !E::EVENT_TYPES.contains(&event_type) {
        return Err(CodecError::UnknownEventType(event_type.to_owned()));
    }
    if schema_version != E::SCHEMA_VERSION {
        return Err(CodecError::UnsupportedSchemaVersion {
            event_type: event_type.to_owned(),
            found: schema_version,
            supported: E::SCHEMA_VERSION,
        });
    }
    let malformed = |reason: String| CodecError::MalformedPayload {
        event_type: event_type.to_owned(),
        reason,
    };
    let data: Value = serde_json::from_str(payload).map_err(|e| malformed(e.to_string()))?;
    let mut envelope = serde_json::Map::new();
    envelope.insert("type".into(), Value::String(event_type.to_owned()));
    envelope.insert("data".into(), data);
    serde_json::from_value(Value::Object(envelope)).map_err(|e| malformed(e.to_string()))
}
