//! Shared HTTP plumbing for the PSP clients.
//!
//! **Guarantees:** every call has a connect timeout and a whole-request
//! timeout; response bodies are read up to [`RESPONSE_BODY_MAX`] and no
//! further; redirects are never followed (a redirect would carry the API key
//! to another host); transport failures map onto [`PspError`] without ever
//! formatting request headers.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{PspError, Signals, bounded};

/// Default whole-request timeout: PSP calls normally answer in well under a
/// second; ten seconds leaves room for a slow connector without stalling a
/// worker tick.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Longest TCP/TLS connect: a healthy PSP connects in milliseconds, and a
/// dead host must not eat the whole request budget.
pub const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(3);
/// Largest PSP response read: real objects are a few KiB.
pub const RESPONSE_BODY_MAX: usize = 1024 * 1024;

pub(crate) fn build_client(timeout: Duration) -> Result<reqwest::Client, PspError> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(CONNECT_TIMEOUT_MAX))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| PspError::Config(error_chain(&e)))
}

/// Strips trailing slashes so `{base}/path` never doubles them.
pub(crate) fn normalise_base(base_url: impl Into<String>) -> String {
    base_url.into().trim_end_matches('/').to_owned()
}

/// A complete HTTP answer.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub signals: Signals,
}

/// Reads `Idempotent-Replayed`, `Stripe-Should-Retry` and `Retry-After`
/// (delta-seconds; the HTTP-date form is ignored, so it reads as absent).
fn signals(headers: &reqwest::header::HeaderMap) -> Signals {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
    };
    let flag = |name: &str| match text(name).as_deref() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    };
    Signals {
        replayed: flag("idempotent-replayed") == Some(true),
        should_retry: flag("stripe-should-retry"),
        retry_after: text("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs.min(RETRY_AFTER_MAX_SECS))),
    }
}

/// Longest `Retry-After` honoured: a broken or hostile value must not park
/// a payout for days.
pub const RETRY_AFTER_MAX_SECS: u64 = 3_600;

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends and reads the whole (bounded) body. Only transport problems are
/// errors here; HTTP error statuses come back as an `Answer`.
pub(crate) async fn send(
    op: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<Answer, PspError> {
    let mut response = request.send().await.map_err(|e| transport(op, &e))?;
    let status = response.status().as_u16();
    let signals = signals(response.headers());
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(op, &e))? {
        if body.len() + chunk.len() > RESPONSE_BODY_MAX {
            return Err(PspError::Decode {
                op,
                status,
                reason: format!("response body exceeds {RESPONSE_BODY_MAX} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        body,
        signals,
    })
}

fn transport(op: &'static str, e: &reqwest::Error) -> PspError {
    if e.is_timeout() {
        PspError::Timeout { op }
    } else if e.is_connect() {
        PspError::Connect {
            op,
            reason: error_chain(e),
        }
    } else {
        PspError::Transport {
            op,
            reason: error_chain(e),
        }
    }
}

/// `e` and its sources, joined. reqwest errors carry the URL, never headers.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    bounded(&text)
}

/// `{"error":{"type","message","code",…}}`, shared by Hyperswitch and Stripe.
#[derive(Debug, Default)]
pub(crate) struct ErrorBody {
    pub error_type: Option<String>,
    pub code: Option<String>,
    pub message: String,
}

impl ErrorBody {
    /// The PSP-shaped error in `body`, or `None` when the body is not one
    /// (an HTML 404 from a proxy, an empty 502).
    pub fn parse(body: &[u8]) -> Option<ErrorBody> {
        #[derive(Deserialize)]
        struct Outer {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(rename = "type")]
            error_type: Option<String>,
            code: Option<String>,
            message: Option<String>,
        }
        let outer: Outer = serde_json::from_slice(body).ok()?;
        Some(ErrorBody {
            error_type: outer.error.error_type,
            code: outer.error.code,
            message: bounded(outer.error.message.as_deref().unwrap_or("")),
        })
    }

    /// For a non-PSP-shaped body: a bounded lossy excerpt.
    pub fn opaque(body: &[u8]) -> ErrorBody {
        ErrorBody {
            message: bounded(&String::from_utf8_lossy(body)),
            ..ErrorBody::default()
        }
    }
}

/// Decodes a 2xx body; an unreadable one is a `Decode` error (not transient: the same body would be read again).
pub(crate) fn decode<T: DeserializeOwned>(
    op: &'static str,
    answer: &Answer,
) -> Result<T, PspError> {
    serde_json::from_slice(&answer.body).map_err(|e| PspError::Decode {
        op,
        status: answer.status,
        reason: e.to_string(),
    })
}

/// A `Decode` error for a body that parsed but holds an invalid value.
pub(crate) fn invalid(op: &'static str, answer: &Answer, reason: impl ToString) -> PspError {
    PspError::Decode {
        op,
        status: answer.status,
        reason: bounded(&reason.to_string()),
    }
}

/// The generic non-2xx mapping. `not_found` decides whether a PSP-shaped
/// body means "object missing" for this API.
pub(crate) fn api_error(
    op: &'static str,
    answer: &Answer,
    not_found: impl Fn(u16, &ErrorBody) -> bool,
) -> PspError {
    let (parsed, error) = match ErrorBody::parse(&answer.body) {
        Some(error) => (true, error),
        None => (false, ErrorBody::opaque(&answer.body)),
    };
    if parsed && not_found(answer.status, &error) {
        return PspError::NotFound {
            op,
            code: error.code,
            message: error.message,
        };
    }
    if answer.status == 401 {
        return PspError::Unauthorized {
            op,
            code: error.code,
            message: error.message,
        };
    }
    PspError::Api {
        op,
        status: answer.status,
        error_type: error.error_type,
        code: error.code,
        message: error.message,
        signals: answer.signals,
    }
}
