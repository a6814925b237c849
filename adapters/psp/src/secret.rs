//! A masking newtype for API keys, tokens and webhook signing keys.
//!
//! **Guarantees:** `Debug` and `Display` print `***`, never the value, so a
//! secret inside any struct, error or log line stays hidden. The only way to
//! read it is the explicit [`Secret::expose`]. It is deliberately not
//! `Serialize`, and not `PartialEq` (comparing secrets belongs in a
//! constant-time MAC check, not `==`).

use std::fmt;

/// A secret string. Read it only with [`Secret::expose`], at the point of use.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call it where the value is put on the wire or into
    /// a MAC, never to log or format.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_masks_the_value() {
        let s = Secret::new("sk_live_topsecret");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "sk_live_topsecret");
    }
}
