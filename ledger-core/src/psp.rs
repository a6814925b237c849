//! PSP statuses as the domain sees them (not wire types).
//!
//! **Guarantees:** every Hyperswitch payment status parses to a named variant;
//! anything newer parses to [`PaymentStatus::Unknown`] instead of failing, so a
//! provider adding a status can never make a webhook undecodable. Parsing and
//! printing round-trip for every string.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Hyperswitch payment status (`GET /payments/{id}` `status`).
///
/// Construct from text with [`PaymentStatus::parse`]; `Unknown` must only
/// ever hold a string that `parse` does not recognise, otherwise it would not
/// survive a serialise/deserialise round trip.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum PaymentStatus {
    Succeeded,
    Failed,
    Cancelled,
    CancelledPostCapture,
    Processing,
    RequiresCustomerAction,
    RequiresMerchantAction,
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresCapture,
    PartiallyCaptured,
    PartiallyCapturedAndCapturable,
    PartiallyAuthorizedAndRequiresCapture,
    Conflicted,
    Expired,
    Unknown(String),
}

/// What a payment status means for an order, independent of its spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentOutcome {
    /// Money was captured (`succeeded`, `partially_captured`).
    Captured,
    /// The payment ended without money (`failed`, `expired`).
    Failed,
    /// The payment was voided (`cancelled`, `cancelled_post_capture`).
    Cancelled,
    /// Still moving at the PSP; nothing to record yet.
    InFlight,
    /// A status this build does not know. Never guessed at.
    Unrecognised,
}

impl PaymentStatus {
    /// Every named (non-`Unknown`) status, in the order psp.md lists them.
    pub const KNOWN: [PaymentStatus; 15] = [
        PaymentStatus::Succeeded,
        PaymentStatus::Failed,
        PaymentStatus::Cancelled,
        PaymentStatus::CancelledPostCapture,
        PaymentStatus::Processing,
        PaymentStatus::RequiresCustomerAction,
        PaymentStatus::RequiresMerchantAction,
        PaymentStatus::RequiresPaymentMethod,
        PaymentStatus::RequiresConfirmation,
        PaymentStatus::RequiresCapture,
        PaymentStatus::PartiallyCaptured,
        PaymentStatus::PartiallyCapturedAndCapturable,
        PaymentStatus::PartiallyAuthorizedAndRequiresCapture,
        PaymentStatus::Conflicted,
        PaymentStatus::Expired,
    ];

    /// Never fails: unknown text becomes `Unknown(text)`.
    pub fn parse(text: &str) -> PaymentStatus {
        match text {
            "succeeded" => PaymentStatus::Succeeded,
            "failed" => PaymentStatus::Failed,
            "cancelled" => PaymentStatus::Cancelled,
            "cancelled_post_capture" => PaymentStatus::CancelledPostCapture,
            "processing" => PaymentStatus::Processing,
            "requires_customer_action" => PaymentStatus::RequiresCustomerAction,
            "requires_merchant_action" => PaymentStatus::RequiresMerchantAction,
            "requires_payment_method" => PaymentStatus::RequiresPaymentMethod,
            "requires_confirmation" => PaymentStatus::RequiresConfirmation,
            "requires_capture" => PaymentStatus::RequiresCapture,
            "partially_captured" => PaymentStatus::PartiallyCaptured,
            "partially_captured_and_capturable" => PaymentStatus::PartiallyCapturedAndCapturable,
            "partially_authorized_and_requires_capture" => {
                PaymentStatus::PartiallyAuthorizedAndRequiresCapture
            }
            "conflicted" => PaymentStatus::Conflicted,
            "expired" => PaymentStatus::Expired,
            other => PaymentStatus::Unknown(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Cancelled => "cancelled",
            PaymentStatus::CancelledPostCapture => "cancelled_post_capture",
            PaymentStatus::Processing => "processing",
            PaymentStatus::RequiresCustomerAction => "requires_customer_action",
            PaymentStatus::RequiresMerchantAction => "requires_merchant_action",
            PaymentStatus::RequiresPaymentMethod => "requires_payment_method",
            PaymentStatus::RequiresConfirmation => "requires_confirmation",
            PaymentStatus::RequiresCapture => "requires_capture",
            PaymentStatus::PartiallyCaptured => "partially_captured",
            PaymentStatus::PartiallyCapturedAndCapturable => "partially_captured_and_capturable",
            PaymentStatus::PartiallyAuthorizedAndRequiresCapture => {
                "partially_authorized_and_requires_capture"
            }
            PaymentStatus::Conflicted => "conflicted",
            PaymentStatus::Expired => "expired",
            PaymentStatus::Unknown(text) => text,
        }
    }

    /// Terminal per Hyperswitch: the PSP will not move this payment again.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            PaymentStatus::Succeeded
                | PaymentStatus::Failed
                | PaymentStatus::Cancelled
                | PaymentStatus::CancelledPostCapture
                | PaymentStatus::PartiallyCaptured
                | PaymentStatus::Expired
        )
    }

    pub fn outcome(&self) -> PaymentOutcome {
        match self {
            PaymentStatus::Succeeded | PaymentStatus::PartiallyCaptured => PaymentOutcome::Captured,
            PaymentStatus::Failed | PaymentStatus::Expired => PaymentOutcome::Failed,
            PaymentStatus::Cancelled | PaymentStatus::CancelledPostCapture => {
                PaymentOutcome::Cancelled
            }
            // `conflicted` means Hyperswitch and the connector disagree; it is
            // resolved at the PSP, so the ledger waits like for `processing`.
            PaymentStatus::Processing
            | PaymentStatus::RequiresCustomerAction
            | PaymentStatus::RequiresMerchantAction
            | PaymentStatus::RequiresPaymentMethod
            | PaymentStatus::RequiresConfirmation
            | PaymentStatus::RequiresCapture
            | PaymentStatus::PartiallyCapturedAndCapturable
            | PaymentStatus::PartiallyAuthorizedAndRequiresCapture
            | PaymentStatus::Conflicted => PaymentOutcome::InFlight,
            PaymentStatus::Unknown(_) => PaymentOutcome::Unrecognised,
        }
    }
}

impl From<String> for PaymentStatus {
    fn from(value: String) -> Self {
        PaymentStatus::parse(&value)
    }
}

impl From<PaymentStatus> for String {
    fn from(value: PaymentStatus) -> Self {
        match value {
            PaymentStatus::Unknown(text) => text,
            known => known.as_str().to_owned(),
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Hyperswitch refund status (`GET /refunds/{id}` `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundPspStatus {
    Succeeded,
    Failed,
    /// Never announced by webhook; only polling finds it.
    Pending,
    /// Never announced by webhook; only polling finds it.
    Review,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown refund status {0:?}")]
pub struct UnknownRefundStatus(pub String);

impl RefundPspStatus {
    pub const ALL: [RefundPspStatus; 4] = [
        RefundPspStatus::Succeeded,
        RefundPspStatus::Failed,
        RefundPspStatus::Pending,
        RefundPspStatus::Review,
    ];

    pub fn parse(text: &str) -> Result<RefundPspStatus, UnknownRefundStatus> {
        match text {
            "succeeded" => Ok(RefundPspStatus::Succeeded),
            "failed" => Ok(RefundPspStatus::Failed),
            "pending" => Ok(RefundPspStatus::Pending),
            "review" => Ok(RefundPspStatus::Review),
            other => Err(UnknownRefundStatus(other.to_owned())),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            RefundPspStatus::Succeeded => "succeeded",
            RefundPspStatus::Failed => "failed",
            RefundPspStatus::Pending => "pending",
            RefundPspStatus::Review => "review",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, RefundPspStatus::Succeeded | RefundPspStatus::Failed)
    }
}

impl fmt::Display for RefundPspStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_status_round_trips_and_unknown_is_kept() {
        for s in PaymentStatus::KNOWN {
            assert_eq!(PaymentStatus::parse(s.as_str()), s);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<PaymentStatus>(&json).unwrap(), s);
            assert_ne!(s.outcome(), PaymentOutcome::Unrecognised);
        }
        let u = PaymentStatus::parse("teleported");
        assert_eq!(u, PaymentStatus::Unknown("teleported".into()));
        assert_eq!(u.outcome(), PaymentOutcome::Unrecognised);
        assert!(!u.is_terminal());
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"teleported\"");
    }

    #[test]
    fn terminal_statuses_match_psp_md() {
        let terminal: Vec<&str> = PaymentStatus::KNOWN
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(
            terminal,
            [
                "succeeded",
                "failed",
                "cancelled",
                "cancelled_post_capture",
                "partially_captured",
                "expired"
            ]
        );
        for s in RefundPspStatus::ALL {
            assert_eq!(RefundPspStatus::parse(s.as_str()), Ok(s));
        }
        assert!(RefundPspStatus::parse("done").is_err());
        assert!(RefundPspStatus::Succeeded.is_terminal());
        assert!(!RefundPspStatus::Review.is_terminal());
    }
}
