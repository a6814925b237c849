//! Hyperswitch webhook envelope parsing.
//!
//! **Guarantees:**
//! - Parsing never depends on field order and tolerates unknown fields, so a
//!   newer Hyperswitch adding fields cannot make a webhook undecodable.
//! - Every `event_type` parses: unknown names become
//!   [`EventType::Unknown`] and keep their exact text.
//! - The object is typed by `content.type`; a payment or refund object whose
//!   ids, currency, status or timestamps do not parse is an error, never a
//!   half-filled value. An event whose type contradicts its content type
//!   (a refund event carrying a payment) is refused.
//! - Nothing here checks signatures: verify the raw bytes with
//!   [`crate::signature::verify_hyperswitch`] first.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};
use ledger_core::ids::{PaymentId, PspRefundId};
use ledger_core::psp::{PaymentStatus, RefundPspStatus, UnknownRefundStatus};
use ledger_core::{Amount, Currency};
use serde::Deserialize;

/// Longest `event_id` accepted. Hyperswitch sends `evt_` + 32 hex = 36; the
/// id becomes a de-duplication key, so a hostile body must not make it huge.
pub const EVENT_ID_MAX: usize = 128;

/// A Hyperswitch `event_type`. The list grows, so unknown names are kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventType {
    PaymentSucceeded,
    PaymentFailed,
    PaymentProcessing,
    PaymentCancelled,
    PaymentCancelledPostCapture,
    PaymentAuthorized,
    PaymentPartiallyAuthorized,
    PaymentCaptured,
    PaymentExpired,
    ActionRequired,
    RefundProcessing,
    RefundSucceeded,
    RefundFailed,
    DisputeOpened,
    DisputeExpired,
    DisputeAccepted,
    DisputeCancelled,
    DisputeChallenged,
    DisputeWon,
    DisputeLost,
    MandateActive,
    MandateRevoked,
    /// Any `payout_*` event (psp.md lists the family, not its members).
    Payout(String),
    /// Any `subscription_*` event (`subscription_details` content).
    Subscription(String),
    /// A name this build does not know. Holds only text `parse` cannot map.
    Unknown(String),
}

/// The family an event belongs to, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventClass {
    Payment,
    Refund,
    Dispute,
    Mandate,
    Payout,
    Subscription,
    Unknown,
}

impl EventType {
    /// Every fixed-name event type, in psp.md order.
    pub const KNOWN: [EventType; 22] = [
        EventType::PaymentSucceeded,
        EventType::PaymentFailed,
        EventType::PaymentProcessing,
        EventType::PaymentCancelled,
        EventType::PaymentCancelledPostCapture,
        EventType::PaymentAuthorized,
        EventType::PaymentPartiallyAuthorized,
        EventType::PaymentCaptured,
        EventType::PaymentExpired,
        EventType::ActionRequired,
        EventType::RefundProcessing,
        EventType::RefundSucceeded,
        EventType::RefundFailed,
        EventType::DisputeOpened,
        EventType::DisputeExpired,
        EventType::DisputeAccepted,
        EventType::DisputeCancelled,
        EventType::DisputeChallenged,
        EventType::DisputeWon,
        EventType::DisputeLost,
        EventType::MandateActive,
        EventType::MandateRevoked,
    ];

    /// Never fails.
    pub fn parse(text: &str) -> EventType {
        match text {
            "payment_succeeded" => EventType::PaymentSucceeded,
            "payment_failed" => EventType::PaymentFailed,
            "payment_processing" => EventType::PaymentProcessing,
            "payment_cancelled" => EventType::PaymentCancelled,
            "payment_cancelled_post_capture" => EventType::PaymentCancelledPostCapture,
            "payment_authorized" => EventType::PaymentAuthorized,
            "payment_partially_authorized" => EventType::PaymentPartiallyAuthorized,
            "payment_captured" => EventType::PaymentCaptured,
            "payment_expired" => EventType::PaymentExpired,
            "action_required" => EventType::ActionRequired,
            "refund_processing" => EventType::RefundProcessing,
            "refund_succeeded" => EventType::RefundSucceeded,
            "refund_failed" => EventType::RefundFailed,
            "dispute_opened" => EventType::DisputeOpened,
            "dispute_expired" => EventType::DisputeExpired,
            "dispute_accepted" => EventType::DisputeAccepted,
            "dispute_cancelled" => EventType::DisputeCancelled,
            "dispute_challenged" => EventType::DisputeChallenged,
            "dispute_won" => EventType::DisputeWon,
            "dispute_lost" => EventType::DisputeLost,
            "mandate_active" => EventType::MandateActive,
            "mandate_revoked" => EventType::MandateRevoked,
            other if other.starts_with("payout_") => EventType::Payout(other.to_owned()),
            other if other.starts_with("subscription_") => {
                EventType::Subscription(other.to_owned())
            }
            other => EventType::Unknown(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            EventType::PaymentSucceeded => "payment_succeeded",
            EventType::PaymentFailed => "payment_failed",
            EventType::PaymentProcessing => "payment_processing",
            EventType::PaymentCancelled => "payment_cancelled",
            EventType::PaymentCancelledPostCapture => "payment_cancelled_post_capture",
            EventType::PaymentAuthorized => "payment_authorized",
            EventType::PaymentPartiallyAuthorized => "payment_partially_authorized",
            EventType::PaymentCaptured => "payment_captured",
            EventType::PaymentExpired => "payment_expired",
            EventType::ActionRequired => "action_required",
            EventType::RefundProcessing => "refund_processing",
            EventType::RefundSucceeded => "refund_succeeded",
            EventType::RefundFailed => "refund_failed",
            EventType::DisputeOpened => "dispute_opened",
            EventType::DisputeExpired => "dispute_expired",
            EventType::DisputeAccepted => "dispute_accepted",
            EventType::DisputeCancelled => "dispute_cancelled",
            EventType::DisputeChallenged => "dispute_challenged",
            EventType::DisputeWon => "dispute_won",
            EventType::DisputeLost => "dispute_lost",
            EventType::MandateActive => "mandate_active",
            EventType::MandateRevoked => "mandate_revoked",
            EventType::Payout(text) | EventType::Subscription(text) | EventType::Unknown(text) => {
                text
            }
        }
    }

    pub fn class(&self) -> EventClass {
        match self {
            EventType::PaymentSucceeded
            | EventType::PaymentFailed
            | EventType::PaymentProcessing
            | EventType::PaymentCancelled
            | EventType::PaymentCancelledPostCapture
            | EventType::PaymentAuthorized
            | EventType::PaymentPartiallyAuthorized
            | EventType::PaymentCaptured
            | EventType::PaymentExpired
            | EventType::ActionRequired => EventClass::Payment,
            EventType::RefundProcessing | EventType::RefundSucceeded | EventType::RefundFailed => {
                EventClass::Refund
            }
            EventType::DisputeOpened
            | EventType::DisputeExpired
            | EventType::DisputeAccepted
            | EventType::DisputeCancelled
            | EventType::DisputeChallenged
            | EventType::DisputeWon
            | EventType::DisputeLost => EventClass::Dispute,
            EventType::MandateActive | EventType::MandateRevoked => EventClass::Mandate,
            EventType::Payout(_) => EventClass::Payout,
            EventType::Subscription(_) => EventClass::Subscription,
            EventType::Unknown(_) => EventClass::Unknown,
        }
    }

    /// The event Hyperswitch emits when a payment enters `status`, if any.
    pub fn for_payment_status(status: &PaymentStatus) -> Option<EventType> {
        Some(match status {
            PaymentStatus::Succeeded => EventType::PaymentSucceeded,
            PaymentStatus::Failed => EventType::PaymentFailed,
            PaymentStatus::Processing => EventType::PaymentProcessing,
            PaymentStatus::Cancelled => EventType::PaymentCancelled,
            PaymentStatus::CancelledPostCapture => EventType::PaymentCancelledPostCapture,
            PaymentStatus::RequiresCapture => EventType::PaymentAuthorized,
            PaymentStatus::PartiallyAuthorizedAndRequiresCapture => {
                EventType::PaymentPartiallyAuthorized
            }
            PaymentStatus::PartiallyCaptured => EventType::PaymentCaptured,
            PaymentStatus::Expired => EventType::PaymentExpired,
            PaymentStatus::RequiresCustomerAction => EventType::ActionRequired,
            _ => return None,
        })
    }

    /// The event Hyperswitch emits when a refund enters `status`, if any.
    /// `pending` and `review` never produce a webhook (psp.md).
    pub fn for_refund_status(status: RefundPspStatus) -> Option<EventType> {
        match status {
            RefundPspStatus::Succeeded => Some(EventType::RefundSucceeded),
            RefundPspStatus::Failed => Some(EventType::RefundFailed),
            RefundPspStatus::Pending | RefundPspStatus::Review => None,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `content.type` of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ContentType {
    PaymentDetails,
    RefundDetails,
    DisputeDetails,
    MandateDetails,
    PayoutDetails,
    SubscriptionDetails,
    Unknown(String),
}

impl ContentType {
    pub fn parse(text: &str) -> ContentType {
        match text {
            "payment_details" => ContentType::PaymentDetails,
            "refund_details" => ContentType::RefundDetails,
            "dispute_details" => ContentType::DisputeDetails,
            "mandate_details" => ContentType::MandateDetails,
            "payout_details" => ContentType::PayoutDetails,
            "subscription_details" => ContentType::SubscriptionDetails,
            other => ContentType::Unknown(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ContentType::PaymentDetails => "payment_details",
            ContentType::RefundDetails => "refund_details",
            ContentType::DisputeDetails => "dispute_details",
            ContentType::MandateDetails => "mandate_details",
            ContentType::PayoutDetails => "payout_details",
            ContentType::SubscriptionDetails => "subscription_details",
            ContentType::Unknown(text) => text,
        }
    }

    fn class(&self) -> EventClass {
        match self {
            ContentType::PaymentDetails => EventClass::Payment,
            ContentType::RefundDetails => EventClass::Refund,
            ContentType::DisputeDetails => EventClass::Dispute,
            ContentType::MandateDetails => EventClass::Mandate,
            ContentType::PayoutDetails => EventClass::Payout,
            ContentType::SubscriptionDetails => EventClass::Subscription,
            ContentType::Unknown(_) => EventClass::Unknown,
        }
    }
}

/// A payment object (the `GET /payments/{id}` shape), trimmed to what the
/// ledger reads. Amounts are minor units of `currency`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentObject {
    pub payment_id: PaymentId,
    pub status: PaymentStatus,
    pub amount: i64,
    /// `null` until money is captured.
    pub amount_received: Option<i64>,
    pub currency: Currency,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// The resource's own change time: order deliveries by this, not arrival.
    pub updated: Option<DateTime<Utc>>,
}

impl PaymentObject {
    pub fn amount_money(&self) -> Amount {
        Amount::new(self.amount, self.currency)
    }

    pub fn amount_received_money(&self) -> Option<Amount> {
        self.amount_received.map(|m| Amount::new(m, self.currency))
    }
}

/// A refund object (the `GET /refunds/{id}` shape), trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundObject {
    pub refund_id: PspRefundId,
    pub payment_id: PaymentId,
    pub amount: i64,
    pub currency: Currency,
    /// Raw status text; read it with [`RefundObject::psp_status`].
    pub status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl RefundObject {
    pub fn amount_money(&self) -> Amount {
        Amount::new(self.amount, self.currency)
    }

    pub fn psp_status(&self) -> Result<RefundPspStatus, UnknownRefundStatus> {
        RefundPspStatus::parse(&self.status)
    }
}

/// The typed `content.object`.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookObject {
    Payment(PaymentObject),
    Refund(RefundObject),
    /// Disputes, mandates, payouts, subscriptions and unknown content, kept
    /// as JSON: the ledger does not act on them yet.
    Other(serde_json::Value),
}

/// A parsed Hyperswitch webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub merchant_id: Option<String>,
    /// The de-duplication key: retries resend the same one.
    pub event_id: String,
    pub event_type: EventType,
    pub content_type: ContentType,
    pub object: WebhookObject,
    /// When the event was created (unchanged on retries). Never reject by it.
    pub timestamp: Option<DateTime<Utc>>,
    pub processor_merchant_id: Option<String>,
}

/// Why a webhook body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("webhook body is not a valid envelope: {0}")]
    InvalidJson(String),
    #[error("webhook event_id is empty or longer than {EVENT_ID_MAX} characters")]
    InvalidEventId,
    #[error("webhook {content_type} object is invalid: {reason}")]
    InvalidObject {
        content_type: String,
        reason: String,
    },
    #[error("webhook event_type {event_type} does not match content type {content_type}")]
    ContentMismatch {
        event_type: String,
        content_type: String,
    },
}

/// Parses a webhook body. Call only after the signature verified.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, EnvelopeError> {
    let raw: wire::Envelope =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::InvalidJson(e.to_string()))?;
    if raw.event_id.is_empty() || raw.event_id.chars().count() > EVENT_ID_MAX {
        return Err(EnvelopeError::InvalidEventId);
    }
    let event_type = EventType::parse(&raw.event_type);
    let content_type = ContentType::parse(&raw.content.kind);
    let (event_class, content_class) = (event_type.class(), content_type.class());
    if event_class != EventClass::Unknown
        && content_class != EventClass::Unknown
        && event_class != content_class
    {
        return Err(EnvelopeError::ContentMismatch {
            event_type: event_type.as_str().to_owned(),
            content_type: content_type.as_str().to_owned(),
        });
    }
    let invalid = |reason: String| EnvelopeError::InvalidObject {
        content_type: content_type.as_str().to_owned(),
        reason,
    };
    let object = match content_type {
        ContentType::PaymentDetails => {
            WebhookObject::Payment(payment_object(raw.content.object).map_err(invalid)?)
        }
        ContentType::RefundDetails => {
            WebhookObject::Refund(refund_object(raw.content.object).map_err(invalid)?)
        }
        _ => WebhookObject::Other(raw.content.object),
    };
    let timestamp = match raw.timestamp.as_deref() {
        Some(text) => Some(parse_timestamp(text).ok_or_else(|| {
            EnvelopeError::InvalidJson(format!("timestamp {text:?} is not ISO-8601"))
        })?),
        None => None,
    };
    Ok(Envelope {
        merchant_id: raw.merchant_id,
        event_id: raw.event_id,
        event_type,
        content_type,
        object,
        timestamp,
        processor_merchant_id: raw.processor_merchant_id,
    })
}

/// The `event_type` string of a body, if it is JSON with a string
/// `event_type`; `None` otherwise. For logging deliveries that fail to parse
/// or verify, so it never errors.
pub fn event_type_best_effort(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        event_type: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body).ok()?;
    match probe.event_type? {
        serde_json::Value::String(text) => Some(text),
        _ => None,
    }
}

fn payment_object(value: serde_json::Value) -> Result<PaymentObject, String> {
    let raw: wire::Payment = serde_json::from_value(value).map_err(|e| e.to_string())?;
    Ok(PaymentObject {
        payment_id: PaymentId::new(raw.payment_id).map_err(|e| e.to_string())?,
        status: PaymentStatus::parse(&raw.status),
        amount: raw.amount,
        amount_received: raw.amount_received,
        currency: Currency::parse(&raw.currency).map_err(|e| e.to_string())?,
        error_code: raw.error_code,
        error_message: raw.error_message,
        updated: optional_timestamp(raw.updated.as_deref())?,
    })
}

fn refund_object(value: serde_json::Value) -> Result<RefundObject, String> {
    let raw: wire::Refund = serde_json::from_value(value).map_err(|e| e.to_string())?;
    Ok(RefundObject {
        refund_id: PspRefundId::new(raw.refund_id).map_err(|e| e.to_string())?,
        payment_id: PaymentId::new(raw.payment_id).map_err(|e| e.to_string())?,
        amount: raw.amount,
        currency: Currency::parse(&raw.currency).map_err(|e| e.to_string())?,
        status: raw.status,
        error_code: raw.error_code,
        error_message: raw.error_message,
        updated_at: optional_timestamp(raw.updated_at.as_deref())?,
    })
}

fn optional_timestamp(text: Option<&str>) -> Result<Option<DateTime<Utc>>, String> {
    match text {
        None => Ok(None),
        Some(text) => parse_timestamp(text)
            .map(Some)
            .ok_or_else(|| format!("timestamp {text:?} is not ISO-8601")),
    }
}

/// ISO-8601 with an offset (`…Z`), or without one, which Hyperswitch's
/// primitive date-times sometimes produce; those are UTC.
pub(crate) fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

/// Wire shapes: private, permissive (unknown fields are ignored).
mod wire {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct Envelope {
        pub merchant_id: Option<String>,
        pub event_id: String,
        pub event_type: String,
        pub content: Content,
        pub timestamp: Option<String>,
        #[serde(default)]
        pub processor_merchant_id: Option<String>,
    }

    #[derive(Deserialize)]
    pub(super) struct Content {
        #[serde(rename = "type")]
        pub kind: String,
        pub object: serde_json::Value,
    }

    #[derive(Deserialize)]
    pub(super) struct Payment {
        pub payment_id: String,
        pub status: String,
        pub amount: i64,
        pub amount_received: Option<i64>,
        pub currency: String,
        pub error_code: Option<String>,
        pub error_message: Option<String>,
        pub updated: Option<String>,
    }

    #[derive(Deserialize)]
    pub(super) struct Refund {
        pub refund_id: String,
        pub payment_id: String,
        pub amount: i64,
        pub currency: String,
        pub status: String,
        pub error_code: Option<String>,
        pub error_message: Option<String>,
        pub updated_at: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_event_type_round_trips() {
        for t in EventType::KNOWN {
            assert_eq!(EventType::parse(t.as_str()), t);
            assert_ne!(t.class(), EventClass::Unknown);
        }
        assert_eq!(
            EventType::parse("payout_success").class(),
            EventClass::Payout
        );
        let u = EventType::parse("teleported");
        assert_eq!(u, EventType::Unknown("teleported".into()));
        assert_eq!(u.as_str(), "teleported");
    }

    #[test]
    fn timestamps_with_and_without_offset_parse_as_utc() {
        let a = parse_timestamp("2024-03-16T19:55:46.001Z").unwrap();
        let b = parse_timestamp("2024-03-16T19:55:46.001").unwrap();
        assert_eq!(a, b);
        assert!(parse_timestamp("yesterday").is_none());
    }
}
