//! The one error type at the HTTP edge.
//!
//! **Guarantees:** every error body is `{"error":{"code","message"}}`; each
//! variant states its status; a 5xx body never carries the internal cause,
//! which is logged once, here, with the request's span.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// `Retry-After` (seconds) on every 503 [`ApiError::Unavailable`]: a
/// dependency (the database, a PSP) failed in a way a later try can fix.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u32 = 5;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case reason, e.g. `idempotency_key_required`.
    pub code: String,
    /// A human sentence; never contains internals or secrets.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request itself is malformed (syntax, types, headers).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401: missing or wrong credentials (token or webhook signature).
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// 403: valid credentials that do not reach this route.
    #[error("{message}")]
    Forbidden { message: String },
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// 409: the request conflicts with current state or a concurrent one.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    MethodNotAllowed { message: String },
    #[error("{message}")]
    PayloadTooLarge { message: String },
    /// 422: well-formed, but the ledger's rules refuse it.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("{message}")]
    NotImplemented { message: String },
    /// 503: a dependency is down; retrying later can succeed. Answered
    /// with `Retry-After`.
    #[error("{message}")]
    Unavailable { message: String },
    /// 429: this client (token or source IP) is over its rate; the
    /// response carries `Retry-After` (whole seconds, at least 1).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// 503: the server is at its in-flight cap and sheds the request at
    /// once; `Retry-After` says when to try again.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_secs: u64,
    },
    #[error("request timed out")]
    Timeout,
    /// 500: logged with its cause; the body says only that it failed.
    #[error("internal: {0:#}")]
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::NotFound {
            code,
            message: message.into(),
        }
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> ApiError {
        ApiError::Internal(e.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unauthorized { code, .. }
            | ApiError::NotFound { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. } => code,
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::NotImplemented { .. } => "not_implemented",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Timeout => "timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => {
                "the ledger could not complete the request; it is safe to retry with the same Idempotency-Key".to_owned()
            }
            ApiError::Timeout => {
                "the request took too long; it is safe to retry with the same Idempotency-Key"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }

    /// The body as bytes (stored by the idempotency layer too).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.public_message(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Overloaded { .. } = self {
            // Shedding is the server working as designed, not a failure.
            tracing::warn!(code = self.code(), "request shed");
        } else if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        } else {
            tracing::info!(
                code = self.code(),
                status = status.as_u16(),
                "request refused"
            );
        }
        let mut response = (status, Json(self.body())).into_response();
        match self {
            ApiError::Unauthorized { .. } => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable { .. } => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
                );
            }
            _ => {}
        }
        if let ApiError::RateLimited {
            retry_after_secs, ..
        }
        | ApiError::Overloaded {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}
