//! Webhook signatures: Hyperswitch (HMAC-SHA512) and Stripe (HMAC-SHA256).
//!
//! **Guarantees:**
//! - Verification runs over the raw body bytes, never re-serialised JSON.
//! - The MAC comparison is constant time (`hmac`'s `verify_slice`).
//! - It fails closed: a missing header, a header that is not exactly the
//!   expected lowercase hex, or a wrong MAC is an error with a named reason.
//!   There is no "no key configured, so accept" path here; a caller that has
//!   no key must refuse before calling (psp.md).
//! - Hyperswitch has no timestamp and is never rejected by age (retries
//!   re-send the original body for ~24 h); Stripe is checked against a
//!   tolerance window around an injected `now`.

use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

/// Header carrying the Hyperswitch signature.
pub const HYPERSWITCH_SIGNATURE_HEADER: &str = "X-Webhook-Signature-512";
/// Header carrying the Stripe signature.
pub const STRIPE_SIGNATURE_HEADER: &str = "Stripe-Signature";
/// Stripe's default tolerance between `t=` and now: 300 s (Stripe's libraries).
pub const STRIPE_TOLERANCE_S_DEFAULT: u64 = 300;
/// Hex length of an HMAC-SHA512 tag (64 bytes).
const SHA512_HEX_LEN: usize = 128;
/// Hex length of an HMAC-SHA256 tag (32 bytes).
const SHA256_HEX_LEN: usize = 64;
/// Most `v1=` entries read from one Stripe header: secret rotation sends two;
/// a bound stops a hostile header from costing unbounded MACs.
pub const STRIPE_SIGNATURES_MAX: usize = 8;

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header is missing")]
    Missing,
    #[error("signature header is malformed")]
    Malformed,
    #[error("signature does not match the body")]
    Mismatch,
    /// Stripe only: `t=` is further than the tolerance from now.
    #[error("signature timestamp is outside the tolerance window")]
    OutsideTolerance,
}

/// Lowercase hex of `HMAC-SHA512(key, body)`: the value Hyperswitch sends in
/// `X-Webhook-Signature-512`.
pub fn sign_hyperswitch(key: &[u8], body: &[u8]) -> String {
    hex::encode(hyperswitch_mac(key, body).finalize().into_bytes())
}

/// Checks a Hyperswitch signature header against the raw body.
///
/// The header must be exactly 128 lowercase hex characters (what
/// Hyperswitch sends); anything else is `Malformed`, not guessed at.
pub fn verify_hyperswitch(
    key: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let tag = decode_lower_hex(header, SHA512_HEX_LEN).ok_or(SignatureError::Malformed)?;
    hyperswitch_mac(key, body)
        .verify_slice(&tag)
        .map_err(|_| SignatureError::Mismatch)
}

/// A `Stripe-Signature` header value for `body` signed at `timestamp_unix`.
pub fn sign_stripe(secret: &[u8], body: &[u8], timestamp_unix: i64) -> String {
    let tag = stripe_mac(secret, timestamp_unix, body)
        .finalize()
        .into_bytes();
    format!("t={timestamp_unix},v1={}", hex::encode(tag))
}

/// Checks a `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]` header.
///
/// Accepts when any `v1` matches `HMAC-SHA256(secret, "<t>.<body>")` and
/// `|now_unix - t| <= tolerance_s`. Other schemes (`v0=`) are ignored.
/// The age check runs after the MAC check, so an unsigned old header is
/// reported as `Mismatch`, not as a timing problem.
pub fn verify_stripe(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
    now_unix: i64,
    tolerance_s: u64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp: Option<i64> = None;
    let mut tags: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let (name, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match name {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed);
                }
                timestamp = Some(value.parse().map_err(|_| SignatureError::Malformed)?);
            }
            "v1" => {
                if tags.len() >= STRIPE_SIGNATURES_MAX {
                    return Err(SignatureError::Malformed);
                }
                // A garbled v1 next to a good one must not block the good one.
                if let Some(tag) = decode_lower_hex(value, SHA256_HEX_LEN) {
                    tags.push(tag);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let matched = tags.iter().any(|tag| {
        stripe_mac(secret, timestamp, body)
            .verify_slice(tag)
            .is_ok()
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let age = (i128::from(now_unix) - i128::from(timestamp)).abs();
    if age > i128::from(tolerance_s) {
        return Err(SignatureError::OutsideTolerance);
    }
    Ok(())
}

fn hyperswitch_mac(key: &[u8], body: &[u8]) -> Hmac<Sha512> {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body);
    mac
}

fn stripe_mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Decodes exactly `len` lowercase hex characters; `None` otherwise.
fn decode_lower_hex(text: &str, len: usize) -> Option<Vec<u8>> {
    let well_formed = text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !well_formed {
        return None;
    }
    hex::decode(text).ok()
}
