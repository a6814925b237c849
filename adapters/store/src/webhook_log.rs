//! The webhook-log port: one row per PSP webhook delivery, written once with
//! its final state (the seed's `hyperswitch_webhook_log`), kept for forensics
//! and for delivery dedupe, and swept by the retention job.
//!
//! **Guarantees** (every backend, checked by
//! [`ports_suite!`](crate::ports_suite)):
//! - Every field round-trips, `None`s and empty strings included, except that
//!   a NUL character (which Postgres `text` cannot hold) is stored as U+FFFD
//!   on every backend (see [`storable_text`]), so such a delivery still lands.
//! - `processing_result` is one of [`RESULT_OK`], [`RESULT_SIGNATURE_INVALID`],
//!   [`RESULT_SKIPPED`], [`RESULT_DUPLICATE`] or starts with
//!   [`RESULT_ERROR_PREFIX`]; the tables refuse anything else (named check).
//! - Deletes go oldest first (`received_at`, then id) and never touch a row
//!   at or after the cutoff.

use std::borrow::Cow;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use ledger_core::RecordedEvent;
use ledger_core::ids::StreamId;

use crate::{AppendResult, StoreError, StreamAppend, validate_batch};

/// The delivery was processed.
pub const RESULT_OK: &str = "ok";
/// The signature did not verify; nothing was processed.
pub const RESULT_SIGNATURE_INVALID: &str = "signature_invalid";
/// A valid delivery of an event type with no handler.
pub const RESULT_SKIPPED: &str = "skipped";
/// A re-delivery of an event id already processed `ok`.
pub const RESULT_DUPLICATE: &str = "duplicate";
/// Processing failed: `error: <message>`.
pub const RESULT_ERROR_PREFIX: &str = "error: ";

/// Most rows one [`WebhookLogStore::recent_webhook_log`] returns; larger
/// requests are clamped. Payloads are up to 64 KiB each, so this bounds one
/// admin read to about 64 MiB.
pub const RECENT_WEBHOOK_LOG_MAX: u32 = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookLogEntry {
    /// Invalid UTF-8 body → empty string (caller does that).
    pub payload: String,
    pub signature_valid: bool,
    /// ok | error: <msg> | signature_invalid | skipped | duplicate
    pub processing_result: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: String,
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    pub received_at: DateTime<Utc>,
    /// The delivery's own id (the server makes one per request). Writing an
    /// entry whose `delivery_id` is already stored writes nothing and
    /// answers the stored row's id, so a write retried after a lost answer
    /// never adds a second row. `None` (rows from before the column) never
    /// conflicts.
    pub delivery_id: Option<uuid::Uuid>,
    /// SHA-256 of the whole body as received, lowercase hex, when `payload`
    /// keeps only part of it (a signature-invalid delivery: see
    /// [`UNSIGNED_PAYLOAD_KEPT_MAX`]); `None` when `payload` is the body.
    pub payload_sha256: Option<String>,
    /// The whole body's length in bytes, on the same rows as
    /// `payload_sha256`.
    pub payload_len: Option<i64>,
}

/// Most bytes of a signature-invalid body a row keeps: anyone can send
/// those, so the log keeps enough to recognise one (with its headers, hash
/// and length), not the body.
pub const UNSIGNED_PAYLOAD_KEPT_MAX: usize = 4 * 1024;

/// The longest prefix of `text` of at most `max` bytes that ends on a char
/// boundary.
pub fn prefix_on_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[async_trait]
pub trait WebhookLogStore: Send + Sync {
    /// Writes one row (its final state); returns its id.
    async fn insert_webhook_log(&self, entry: &WebhookLogEntry) -> Result<i64, StoreError>;
    /// Writes several rows in one transaction (all or none), in order;
    /// returns their ids in that order (an entry whose `delivery_id` is
    /// stored already is not written again: its id is the stored row's).
    /// One refused entry
    /// ([`check_webhook_log`]) refuses the call before anything is written.
    async fn insert_webhook_logs(
        &self,
        entries: &[WebhookLogEntry],
    ) -> Result<Vec<i64>, StoreError>;
    /// True when a row with this event_id and processing_result 'ok' exists (delivery dedupe).
    async fn webhook_event_processed(&self, event_id: &str) -> Result<bool, StoreError>;
    /// Deletes at most `limit` rows with received_at < cutoff (oldest first); returns rows deleted.
    async fn delete_webhook_log_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;
    /// For tests and the admin surface: newest first (`received_at`, then
    /// insertion order), at most [`RECENT_WEBHOOK_LOG_MAX`].
    async fn recent_webhook_log(&self, limit: u32) -> Result<Vec<WebhookLogEntry>, StoreError>;
}

/// Appends and webhook-log rows in one transaction: a delivery's events and
/// its `ok` row commit together or not at all, for the price of one commit
/// (the webhook handler's write, through
/// [`GroupedAppends::append_logged`](crate::group_commit::GroupedAppends::append_logged)).
///
/// **Guarantees** (every backend, checked by
/// [`ports_suite!`](crate::ports_suite)): the appends behave as
/// [`EventStore::append_many`](crate::EventStore::append_many) (all or
/// nothing, one stale expected version fails the call) and the rows as
/// [`WebhookLogStore::insert_webhook_logs`]; when either part fails,
/// neither is written.
#[async_trait]
pub trait LoggedAppendStore: Send + Sync {
    /// Answers the appends' results in `batch` order and the rows' ids in
    /// `entries` order.
    async fn append_many_logged(
        &self,
        batch: &[StreamAppend],
        entries: &[WebhookLogEntry],
    ) -> Result<(Vec<AppendResult>, Vec<i64>), StoreError>;

    /// A delivery's dedupe and its stream's load, in one round trip where
    /// the backend allows: `None` when
    /// [`WebhookLogStore::webhook_event_processed`] holds for `event_id`,
    /// else `read_stream(stream, 1, max_count)`.
    async fn read_stream_unless_processed(
        &self,
        event_id: &str,
        stream: &StreamId,
        max_count: u32,
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError>;
}

/// Refuses a [`LoggedAppendStore::append_many_logged`] call whose appends or
/// rows a backend would refuse, before any statement runs.
pub fn check_logged_append(
    batch: &[StreamAppend],
    entries: &[WebhookLogEntry],
) -> Result<(), StoreError> {
    validate_batch(batch)?;
    entries.iter().try_for_each(check_webhook_log)
}

/// `text` as every backend stores it: NUL characters (valid UTF-8, but not
/// storable in Postgres `text`) become U+FFFD, the same on every backend.
pub fn storable_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Whether `result` is one of the values the tables accept.
pub fn is_processing_result(result: &str) -> bool {
    matches!(
        result,
        RESULT_OK | RESULT_SIGNATURE_INVALID | RESULT_SKIPPED | RESULT_DUPLICATE
    ) || result.starts_with(RESULT_ERROR_PREFIX)
}

/// Refuses an entry the tables would refuse, before any statement runs.
pub fn check_webhook_log(entry: &WebhookLogEntry) -> Result<(), StoreError> {
    if is_processing_result(&entry.processing_result) {
        Ok(())
    } else {
        Err(StoreError::Backend(format!(
            "webhook log processing_result {:?} is not one of the stored values",
            entry.processing_result
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_on_a_char_boundary() {
        assert_eq!(prefix_on_char_boundary("abc", 5), "abc");
        assert_eq!(prefix_on_char_boundary("abc", 2), "ab");
        // "é" is two bytes: a cut inside it drops it whole.
        assert_eq!(prefix_on_char_boundary("aé", 2), "a");
        assert_eq!(prefix_on_char_boundary("aé", 3), "aé");
        assert_eq!(prefix_on_char_boundary("☕☕", 4), "☕");
        assert_eq!(prefix_on_char_boundary("☕", 0), "");
    }

    #[test]
    fn nul_becomes_replacement_character_and_clean_text_is_borrowed() {
        assert_eq!(storable_text("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
        assert!(matches!(
            storable_text("clean ☕"),
            Cow::Borrowed("clean ☕")
        ));
    }

    #[test]
    fn processing_results() {
        for ok in [
            "ok",
            "signature_invalid",
            "skipped",
            "duplicate",
            "error: boom",
        ] {
            assert!(is_processing_result(ok), "{ok}");
        }
        for bad in ["", "OK", "error", "error:x", "failed"] {
            assert!(!is_processing_result(bad), "{bad}");
        }
    }
}
