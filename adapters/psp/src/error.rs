//! The one error type of both PSP clients.
//!
//! **Guarantees:**
//! - [`PspError::create_outcome`] is the one place that decides what a
//!   failed create means for its object (retry the same key, read first,
//!   refused, unreadable, needs an operator); [`PspError::is_transient`]
//!   says whether a *read* may succeed later. An unreadable 2xx body is
//!   neither: retrying would read the same thing.
//! - `NotFound` is only returned for a PSP-shaped "no such object" answer, so
//!   a misconfigured base URL (a bare 404) is never read as "object missing".
//! - No variant holds request headers, so no message can contain an API key;
//!   PSP-provided messages are truncated to [`PSP_MESSAGE_MAX`].

use std::time::Duration;

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
    #[error("{op}: HTTP {status} ({code}): {message}{replayed}", code = display_code(code), replayed = if signals.replayed { " [replayed]" } else { "" })]
    Api {
        op: &'static str,
        status: u16,
        /// `error.type` (`invalid_request`, `api_error`, `idempotency_error`…).
        error_type: Option<String>,
        code: Option<String>,
        message: String,
        /// What the answer's headers said about retrying.
        signals: Signals,
    },
    /// A 2xx whose body could not be read as the documented shape (an
    /// unknown status, a null where a value is required, a broken body).
    /// Retrying would read the same thing: an operator must look. A create
    /// that answers this may have taken effect.
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

/// What an answer's headers say about retrying (Stripe documents all
/// three; Hyperswitch sends none of them, so they stay empty there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    /// `Idempotent-Replayed: true`: this is the stored answer of an earlier
    /// request with the same key, not a new execution.
    pub replayed: bool,
    /// `Stripe-Should-Retry`: the provider's own word on whether retrying
    /// the same request can succeed.
    pub should_retry: Option<bool>,
    /// `Retry-After` in seconds.
    pub retry_after: Option<Duration>,
}

/// What a failed *create* (a call that moves money) means for its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The request did not execute, or the provider asked for the same
    /// request again: send it again later with the same key, not before
    /// `after` when the provider said so.
    RetrySameKey { after: Option<Duration> },
    /// It may or may not have taken effect (a 5xx, a timeout, a dropped
    /// connection, a replayed error, a key met with other parameters).
    /// Read the provider before any new write.
    Unknown,
    /// A definitive refusal of this request: nothing was created.
    Refused,
    /// The answer cannot be read: record an anomaly and leave the object
    /// for an operator; retrying would read the same thing.
    Unreadable,
    /// The deployment is wrong (bad API key, client setup): nothing to do
    /// with this object.
    NeedsOperator,
}

impl PspError {
    /// True when a *read* may succeed if tried again later (the PSP was
    /// unreachable, busy or failing). False for every definitive answer,
    /// and for an answer that cannot be read (it would read the same).
    pub fn is_transient(&self) -> bool {
        match self {
            PspError::Timeout { .. } | PspError::Connect { .. } | PspError::Transport { .. } => {
                true
            }
            PspError::Api {
                status,
                code,
                signals,
                ..
            } => {
                signals.should_retry != Some(false)
                    && (*status >= 500
                        || *status == 409
                        || *status == 429
                        || code.as_deref() == Some(HYPERSWITCH_BUSY))
            }
            PspError::Decode { .. }
            | PspError::NotFound { .. }
            | PspError::Unauthorized { .. }
            | PspError::ExistsWithDifferentParameters { .. }
            | PspError::InvalidRequest { .. }
            | PspError::Config(_) => false,
        }
    }

    /// What this error says about the object a create call was making
    /// (Stripe "Idempotent requests" and "Errors": a stored answer is
    /// replayed for every retry with its key, 500s included, so a replayed
    /// error is never retried with that key; `Stripe-Should-Retry: false`
    /// means the same request cannot succeed).
    pub fn create_outcome(&self) -> CreateOutcome {
        match self {
            PspError::Connect { .. } => CreateOutcome::RetrySameKey { after: None },
            PspError::Timeout { .. } | PspError::Transport { .. } => CreateOutcome::Unknown,
            PspError::Decode { .. } => CreateOutcome::Unreadable,
            // The object exists with other parameters: not a refusal, a
            // broken invariant an operator must look at.
            PspError::Unauthorized { .. }
            | PspError::Config(_)
            | PspError::ExistsWithDifferentParameters { .. } => CreateOutcome::NeedsOperator,
            PspError::NotFound { .. } | PspError::InvalidRequest { .. } => CreateOutcome::Refused,
            PspError::Api {
                status,
                error_type,
                code,
                signals,
                ..
            } => {
                let retry = CreateOutcome::RetrySameKey {
                    after: signals.retry_after,
                };
                if signals.replayed {
                    // A stored answer: a stored 5xx says nothing about the
                    // effect, a stored 4xx is a definitive refusal.
                    return if *status >= 500 {
                        CreateOutcome::Unknown
                    } else {
                        CreateOutcome::Refused
                    };
                }
                match *status {
                    429 => retry,
                    409 if signals.should_retry != Some(false) => retry,
                    409 => CreateOutcome::Unknown,
                    s if s >= 500 && signals.should_retry == Some(true) => retry,
                    s if s >= 500 => CreateOutcome::Unknown,
                    // The key was used before with other parameters:
                    // something ran under it.
                    _ if error_type.as_deref() == Some(IDEMPOTENCY_ERROR) => CreateOutcome::Unknown,
                    _ if code.as_deref() == Some(HYPERSWITCH_BUSY) => CreateOutcome::Unknown,
                    _ => CreateOutcome::Refused,
                }
            }
        }
    }

    /// The call that failed (`"stripe create_transfer"`, …).
    pub fn op(&self) -> Option<&'static str> {
        match self {
            PspError::Timeout { op }
            | PspError::Connect { op, .. }
            | PspError::Transport { op, .. }
            | PspError::NotFound { op, .. }
            | PspError::Unauthorized { op, .. }
            | PspError::Api { op, .. }
            | PspError::Decode { op, .. }
            | PspError::ExistsWithDifferentParameters { op, .. }
            | PspError::InvalidRequest { op, .. } => Some(op),
            PspError::Config(_) => None,
        }
    }

    /// The provider's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PspError::Api { signals, .. } => signals.retry_after,
            _ => None,
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
/// Stripe's `error.type` for a key reused with other parameters (400) or
/// still in use by a concurrent request (409).
pub const IDEMPOTENCY_ERROR: &str = "idempotency_error";
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
            signals: Signals::default(),
        }
    }

    fn with(mut e: PspError, set: impl FnOnce(&mut Signals)) -> PspError {
        if let PspError::Api { signals, .. } = &mut e {
            set(signals);
        }
        e
    }

    #[test]
    fn a_replayed_500_is_unknown_and_never_retried_with_its_key() {
        let replayed = with(api(500, None), |s| s.replayed = true);
        assert_eq!(replayed.create_outcome(), CreateOutcome::Unknown);
        let refused = with(api(400, None), |s| s.replayed = true);
        assert_eq!(refused.create_outcome(), CreateOutcome::Refused);
    }

    #[test]
    fn stripe_should_retry_decides_between_same_key_and_read_first() {
        assert_eq!(api(500, None).create_outcome(), CreateOutcome::Unknown);
        let retry = with(api(503, None), |s| s.should_retry = Some(true));
        assert_eq!(
            retry.create_outcome(),
            CreateOutcome::RetrySameKey { after: None }
        );
        let no = with(api(500, None), |s| s.should_retry = Some(false));
        assert_eq!(no.create_outcome(), CreateOutcome::Unknown);
        assert!(!no.is_transient());
        let conflict = with(api(409, None), |s| s.should_retry = Some(false));
        assert_eq!(conflict.create_outcome(), CreateOutcome::Unknown);
    }

    #[test]
    fn rate_limits_wait_for_retry_after_with_the_same_key() {
        let limited = with(api(429, None), |s| {
            s.retry_after = Some(Duration::from_secs(7));
        });
        assert_eq!(
            limited.create_outcome(),
            CreateOutcome::RetrySameKey {
                after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(
            api(409, None).create_outcome(),
            CreateOutcome::RetrySameKey { after: None }
        );
    }

    #[test]
    fn a_key_met_with_other_parameters_means_read_first() {
        let mut e = api(400, None);
        if let PspError::Api { error_type, .. } = &mut e {
            *error_type = Some(IDEMPOTENCY_ERROR.to_owned());
        }
        assert_eq!(e.create_outcome(), CreateOutcome::Unknown);
    }

    #[test]
    fn lost_answers_are_unknown_and_unreadable_ones_stop() {
        assert_eq!(
            PspError::Timeout { op: "t" }.create_outcome(),
            CreateOutcome::Unknown
        );
        let dropped = PspError::Transport {
            op: "t",
            reason: "reset".into(),
        };
        assert_eq!(dropped.create_outcome(), CreateOutcome::Unknown);
        let never_sent = PspError::Connect {
            op: "t",
            reason: "refused".into(),
        };
        assert_eq!(
            never_sent.create_outcome(),
            CreateOutcome::RetrySameKey { after: None }
        );
        let unreadable = PspError::Decode {
            op: "t",
            status: 200,
            reason: "unknown status".into(),
        };
        assert_eq!(unreadable.create_outcome(), CreateOutcome::Unreadable);
        assert!(!unreadable.is_transient());
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
