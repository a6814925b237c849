//! Bearer-token authentication.
//!
//! **Guarantees:** the server never holds a token in plain text after
//! start-up, only its SHA-256; a presented token is hashed and compared in
//! constant time, so neither timing nor length leaks; tokens never reach a
//! log line or an error body.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// The SHA-256 of a configured token.
#[derive(Clone)]
pub struct TokenDigest([u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(***)")
    }
}

impl TokenDigest {
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// The rate limiter's key for this token: its digest, never the token.
    pub fn limiter_key(&self) -> [u8; 32] {
        self.0
    }

    fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(self.0.ct_eq(&presented))
    }
}

/// Which tokens guard the API. `None` for both means authentication is off,
/// which `ledger serve` only allows outside production, with a WARN.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub api: Option<TokenDigest>,
    pub admin: Option<TokenDigest>,
}

impl Tokens {
    pub fn is_open(&self) -> bool {
        self.api.is_none() && self.admin.is_none()
    }
}

/// Who a request authenticated as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Api,
    Admin,
    /// No tokens configured (development only).
    Anonymous,
}

impl Principal {
    pub fn as_str(self) -> &'static str {
        match self {
            Principal::Api => "api",
            Principal::Admin => "admin",
            Principal::Anonymous => "anonymous",
        }
    }
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

fn authenticate(tokens: &Tokens, request: &Request) -> Result<Principal, ApiError> {
    if tokens.is_open() {
        return Ok(Principal::Anonymous);
    }
    let Some(presented) = bearer(request) else {
        return Err(ApiError::Unauthorized {
            code: "missing_token",
            message: "send Authorization: Bearer <token> (LEDGER_API_TOKEN)".to_owned(),
        });
    };
    // Check both so the time taken does not reveal which one matched.
    let admin = tokens.admin.as_ref().is_some_and(|t| t.matches(presented));
    let api = tokens.api.as_ref().is_some_and(|t| t.matches(presented));
    match (admin, api) {
        (true, _) => Ok(Principal::Admin),
        (false, true) => Ok(Principal::Api),
        (false, false) => Err(ApiError::Unauthorized {
            code: "invalid_token",
            message: "the bearer token is not valid for this ledger".to_owned(),
        }),
    }
}

/// Guards `/v1`: the API or the admin token.
pub async fn require_api(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state.settings.tokens, &request)?;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// Guards `/v1/admin`: only the admin token.
pub async fn require_admin(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match authenticate(&state.settings.tokens, &request)? {
        Principal::Api => Err(ApiError::Forbidden {
            message: "this route needs the admin token (LEDGER_ADMIN_TOKEN)".to_owned(),
        }),
        principal => {
            request.extensions_mut().insert(principal);
            Ok(next.run(request).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_only_the_same_token() {
        let d = TokenDigest::of("s3cret-token");
        assert!(d.matches("s3cret-token"));
        assert!(!d.matches("s3cret-token "));
        assert!(!d.matches("s3cret"));
        assert!(!d.matches(""));
        assert_eq!(format!("{d:?}"), "TokenDigest(***)");
    }
}
