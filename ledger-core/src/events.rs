//! Any event of any stream, and decoding by stream id.
//!
//! **Guarantees:** the stream id alone chooses the event set, so two streams'
//! events of the same name (`RefundRequested` on an order and on a refund)
//! never decode as each other. An unknown stream kind is a typed error.

use crate::codec::{self, CodecError, Encoded};
use crate::ids::StreamId;
use crate::order::OrderEvent;
use crate::refund::RefundEvent;
use crate::transfer::TransferEvent;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyEvent {
    Order(OrderEvent),
    Refund(RefundEvent),
    Transfer(TransferEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Order,
    Refund,
    Transfer,
}

impl StreamKind {
    /// `order-…` → `Order`, and so on.
    pub fn of(stream_id: &StreamId) -> Result<StreamKind, CodecError> {
        let id = stream_id.as_str();
        if id.starts_with("order-") {
            Ok(StreamKind::Order)
        } else if id.starts_with("refund-") {
            Ok(StreamKind::Refund)
        } else if id.starts_with("transfer-") {
            Ok(StreamKind::Transfer)
        } else {
            Err(CodecError::UnknownStreamKind(id.to_owned()))
        }
    }
}

impl AnyEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            AnyEvent::Order(e) => e.event_type(),
            AnyEvent::Refund(e) => e.event_type(),
            AnyEvent::Transfer(e) => e.event_type(),
        }
    }

    pub fn encode(&self) -> Encoded {
        match self {
            AnyEvent::Order(e) => codec::encode(e),
            AnyEvent::Refund(e) => codec::encode(e),
            AnyEvent::Transfer(e) => codec::encode(e),
        }
    }
}

/// Decodes a stored event, choosing the event set by the stream id prefix.
pub fn decode_any(
    stream_id: &StreamId,
    event_type: &str,
    schema_version: u32,
    payload: &str,
) -> Result<AnyEvent, CodecError> {
    Ok(match StreamKind::of(stream_id)? {
        StreamKind::Order => AnyEvent::Order(codec::decode(event_type, schema_version, payload)?),
        StreamKind::Refund => AnyEvent::Refund(codec::decode(event_type, schema_version, payload)?),
        StreamKind::Transfer => {
            AnyEvent::Transfer(codec::decode(event_type, schema_version, payload)?)
        }
    })
}
