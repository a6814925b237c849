//! Free text that ends up inside events (reasons, PSP error messages).
//!
//! **Guarantees:** text stored in an event is at most [`TEXT_CHARS_MAX`]
//! characters, so one verbose PSP error can never push an event past
//! [`crate::envelope::PAYLOAD_BYTES_MAX`]. Clipping is deterministic, so
//! re-deciding the same command yields byte-identical events.

/// Longest reason or error message kept in an event. A human reads it; the
/// rest of a longer text adds nothing but bytes.
pub const TEXT_CHARS_MAX: usize = 1_000;

/// The first [`TEXT_CHARS_MAX`] characters of `text`.
pub fn clip(text: &str) -> String {
    text.chars().take(TEXT_CHARS_MAX).collect()
}

/// [`clip`] for optional text.
pub fn clip_opt(text: Option<&String>) -> Option<String> {
    text.map(|t| clip(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_on_characters() {
        assert_eq!(clip("ok"), "ok");
        let long = "é".repeat(TEXT_CHARS_MAX + 5);
        assert_eq!(clip(&long).chars().count(), TEXT_CHARS_MAX);
    }
}
