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
    // Straight from the payload text into the typed event: the enum sees the
    // envelope `{"type": event_type, "data": <payload>}` as a map whose
    // `data` value is read by serde_json from `payload` itself. No
    // `serde_json::Value` tree is built (it was most of a decode's cost), and
    // the payload must still be exactly one JSON value (trailing text is an
    // error), as before.
    let mut data = serde_json::Deserializer::from_str(payload);
    let event = E::deserialize(serde::de::value::MapAccessDeserializer::new(Envelope {
        event_type,
        data: &mut data,
        next: EnvelopeKey::Type,
    }))
    .map_err(|e| malformed(e.to_string()))?;
    data.end().map_err(|e| malformed(e.to_string()))?;
    Ok(event)
}

/// Which envelope key [`Envelope`] yields next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvelopeKey {
    Type,
    TypeValue,
    Data,
    DataValue,
    Done,
}

/// The adjacently tagged envelope of a stored event as a serde map: `type`
/// (the stored `event_type`), then `data` (deserialized from the payload
/// text in place). Tag first, so serde's adjacently tagged enums decode the
/// content directly, without buffering it.
struct Envelope<'a, 'de> {
    event_type: &'a str,
    data: &'a mut serde_json::Deserializer<serde_json::de::StrRead<'de>>,
    next: EnvelopeKey,
}

impl<'de> serde::de::MapAccess<'de> for Envelope<'_, 'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        use serde::de::IntoDeserializer as _;
        let key = match self.next {
            EnvelopeKey::Type => {
                self.next = EnvelopeKey::TypeValue;
                "type"
            }
            EnvelopeKey::Data => {
                self.next = EnvelopeKey::DataValue;
                "data"
            }
            _ => return Ok(None),
        };
        let key: serde::de::value::StrDeserializer<'_, serde_json::Error> = key.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        use serde::de::IntoDeserializer as _;
        match self.next {
            EnvelopeKey::TypeValue => {
                self.next = EnvelopeKey::Data;
                let tag: serde::de::value::StrDeserializer<'_, serde_json::Error> =
                    self.event_type.into_deserializer();
                seed.deserialize(tag)
            }
            EnvelopeKey::DataValue => {
                self.next = EnvelopeKey::Done;
                seed.deserialize(&mut *self.data)
            }
            _ => Err(serde::de::Error::custom(
                "envelope value requested before its key",
            )),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(2)
    }
}
