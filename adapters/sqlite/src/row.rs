//! Shared pieces of decoding stored rows: anything unreadable is
//! [`StoreError::Corrupt`], naming the stream and version when those are
//! themselves readable. (Events are decoded in `events_read`.)

use ledger_core::hash::Hash;
use ledger_store::StoreError;

/// A stored hash, or its wrong length.
pub(crate) fn hash_of(bytes: &[u8]) -> Result<Hash, usize> {
    bytes.try_into().map_err(|_| bytes.len())
}

pub(crate) fn corrupt(stream: &str, version: u64, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        stream: stream.to_owned(),
        version,
        reason: reason.to_string(),
    }
}
