//! The one error type of both PSP clients.
//!
//! **Guarantees:**
//! - [`PspError::is_transient`] is the single place that decides whether a
//!   failed call may have an unknown outcome and must be retried with the
//!   *same* id or Idempotency-Key (timeouts, connect errors, 5xx, 409, 429,
//!   Hyperswitch `HE_00`, unreadable 2xx bodies), or is a definitive answer.
//! - `NotFound` is only returned for a PSP-shaped "no such object" answer, so
//!   a misconfigured base URL (a bare 404) is never read as "object missing".
//! - No variant holds request headers, so no message can contain an API key;
//!   PSP-provided messages are truncated to [`PSP_MESSAGE_MAX`].

/// Longest PSP error message kept: enough for any real message, bounded so a
/// hostile or broken upstream cannot bloat logs and events.
pub const PSP_MESSAGE_MAX: usize = 512;

/// A failed PSP call. `op` names the call, e.g. `"hyperswitch create_payment"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PspError {
    /// No complete answer within the request timeout. Outcome unknown.
    #[error("{op}: timed out")]
    Timeout { op: &'static str },
    /// Could not reach the PSP; the request was most likely never sent.
    #[error("{op}: could not connect: {reason}")]
    Connect { op: &'static str, reason: String },
    /// The connection broke mid-call. Outcome unknown.
    #[error("{op}: transport error: {reason}")]
    Transport { op: &'static str, reason: String },
    /// The PSP says the object does not exist (Hyperswitch 404, Stripe
    /// `resource_missing`).
    #[error("{op}: not found ({code}): {message}", code = display_code(code))]
    NotFound {
        op: &'static str,
        code: Option<String>,
        message: String,
    },
    /// The API key was refused (401, Hyperswitch `IR_01`). Definitive.
    #[error("{op}: unauthorized ({code}): {message}", code = display_code(code))]
    Unauthorized {
        op: &'static str,
        code: Option<String>,
        message: String,
    },
    /// Any other non-2xx answer.
    #[error("{op}: HTTP {status} ({code}): {message}", code = display_code(code))]
    Api {
        op: &'static str,
        status: u16,
        /// `error.type` (`invalid_request`, `api_error`, `idempotency_error`…).
        error_type: Option<String>,
        code: Option<String>,
        message: String,
    },
    /// A 2xx whose body could not be read as the documented shape. The call
    /// may have taken effect, so it is transient: retry with the same key.
    #[error("{op}: unreadable response (HTTP {status}): {reason}")]
    Decode {
        op: &'static str,
        status: u16,
        reason: String,
    },
    /// The object already exists at the PSP with different parameters
    /// (e.g. `exists_with_different_amount`). Ids are derived, so this is a
    /// broken invariant upstream; never retried.
    #[error("{op}: {id} already exists with a different {field}")]
    ExistsWithDifferentParameters {
        op: &'static str,
        id: String,
        field: &'static str,
    },
    /// Refused before sending: the request breaks a documented PSP limit.
    #[error("{op}: invalid request: {reason}")]
    InvalidRequest { op: &'static str, reason: String },
    /// The HTTP client could not be built.
    #[error("PSP client setup failed: {0}")]
    Config(String),
}

fn display_code(code: &Option<String>) -> &str {
    code.as_deref().unwrap_or("no code")
}

impl PspError {
    /// True when the outcome is unknown or the PSP asked to come back later:
    /// retry later with the same id / Idempotency-Key. False when the PSP
    /// gave a definitive answer (only then may a caller move to a new key).
    pub fn is_transient(&self) -> bool {
        match self {
            PspError::Timeout { .. }
            | PspError::Connect { .. }
            | PspError::Transport { .. }
            | PspError::Decode { .. } => true,
            PspError::Api { status, code, .. } => {
                *status >= 500
                    || *status == 409
                    || *status == 429
                    || code.as_deref() == Some(HYPERSWITCH_BUSY)
            }
            PspError::NotFound { .. }
            | PspError::Unauthorized { .. }
            | PspError::ExistsWithDifferentParameters { .. }
            | PspError::InvalidRequest { .. }
            | PspError::Config(_) => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, PspError::NotFound { .. })
    }

    /// The PSP's error code, when it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            PspError::NotFound { code, .. }
            | PspError::Unauthorized { code, .. }
            | PspError::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status, when the PSP answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            PspError::Api { status, .. } | PspError::Decode { status, .. } => Some(*status),
            PspError::NotFound { .. } => Some(404),
            PspError::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }

    /// Stripe's "The transfer tr_… is already fully reversed": it has no
    /// error code, so the message is the only signal (psp.md).
    pub fn is_already_fully_reversed(&self) -> bool {
        match self {
            PspError::Api {
                status, message, ..
            } => {
                (400..500).contains(status)
                    && message
                        .to_ascii_lowercase()
                        .contains(ALREADY_FULLY_REVERSED)
            }
            _ => false,
        }
    }
}

/// Hyperswitch "Resource is busy" / internal error: transient at any status.
pub(crate) const HYPERSWITCH_BUSY: &str = "HE_00";
const ALREADY_FULLY_REVERSED: &str = "is already fully reversed";

/// Truncates a PSP-provided message to [`PSP_MESSAGE_MAX`] characters.
pub(crate) fn bounded(message: &str) -> String {
    message.chars().take(PSP_MESSAGE_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<&str>) -> PspError {
        PspError::Api {
            op: "t",
            status,
            error_type: None,
            code: code.map(str::to_owned),
            message: "m".into(),
        }
    }

    #[test]
    fn transience_follows_the_idempotency_rules() {
        for transient in [500, 502, 503, 409, 429] {
            assert!(api(transient, None).is_transient(), "{transient}");
        }
        for definitive in [400, 402, 403, 422] {
            assert!(!api(definitive, None).is_transient(), "{definitive}");
        }
        assert!(api(400, Some("HE_00")).is_transient());
        assert!(PspError::Timeout { op: "t" }.is_transient());
        assert!(
            !PspError::NotFound {
                op: "t",
                code: None,
                message: String::new()
            }
            .is_transient()
        );
    }

    #[test]
    fn already_reversed_is_read_from_the_message_of_a_4xx_only() {
        let mut e = api(400, None);
        if let PspError::Api { message, .. } = &mut e {
            *message = "The transfer tr_1 is already fully reversed".into();
        }
        assert!(e.is_already_fully_reversed());
        assert!(!api(400, None).is_already_fully_reversed());
    }
}
