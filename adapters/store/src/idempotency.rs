//! The idempotency-record port: one row per `(scope, key)` so a retried HTTP
//! command replays its first response instead of executing twice.
//!
//! **Guarantees** (every backend, checked by
//! [`ports_suite!`](crate::ports_suite)):
//! - Of any number of concurrent [`IdempotencyStore::begin`] calls on one
//!   `(scope, key)`, exactly one gets [`Begin::Started`]; the others see
//!   [`Begin::InProgress`] (same hash) or [`Begin::Mismatch`].
//! - A stale claim (its lease started strictly before `now - lease`) is taken
//!   over by exactly one caller, by a compare-and-set on the claim's
//!   `locked_at`.
//! - A claim carries its owner (an opaque token, unique per claim). Only its
//!   owner can renew it ([`IdempotencyStore::renew`], the heartbeat that keeps
//!   a live request's lease short) or release it
//!   ([`IdempotencyStore::release`]): a late release of a claim that was
//!   taken over, completed or purged changes nothing.
//! - The first [`IdempotencyStore::complete`] wins: completing a record that
//!   is no longer in progress (already completed, released or purged) changes
//!   nothing.
//! - A completed response replays byte for byte (status, content type, body).

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_core::NewEvent;
use ledger_core::ids::StreamId;

use crate::{AppendResult, StoreError, validate_events};

/// Longest `Idempotency-Key`, in characters: Stripe's limit. The HTTP layer
/// rejects longer keys with a 400; the store refuses them with an error so a
/// caller that forgot cannot grow the primary-key index without bound.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;

/// Longest scope (route + principal), in characters. Scopes are built by the
/// server, so this only guards against a bug, with the same bound as the key.
pub const IDEMPOTENCY_SCOPE_MAX: usize = 255;

/// Rounds of "insert or read, then maybe take over" one `begin` tries before
/// giving up. A round is only repeated when another caller changed the record
/// between two statements (released or purged it, or won a takeover race),
/// so a second round almost always settles it.
pub const BEGIN_ATTEMPTS_MAX: usize = 8;

/// Longest claim owner token, in characters (a process id and a claim id).
pub const OWNER_MAX: usize = 128;

/// A stored HTTP response, replayed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// This caller owns the key and must execute, then `complete` (or `release` on a 5xx/crash-free failure).
    Started,
    /// Same key, same request hash, finished: replay this.
    Completed(StoredResponse),
    /// Same key, different request hash (whether finished or not).
    Mismatch,
    /// Same key + same hash, another request holds it and its lease has not
    /// expired. `lease_ends` is when it expires unless renewed (the HTTP
    /// edge's `Retry-After`).
    InProgress { lease_ends: DateTime<Utc> },
}

/// A command that creates a new stream under a key never used before: the
/// common case of `POST /v1/orders`, written by
/// [`IdempotencyStore::execute_fresh`] in one transaction with others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshCommand {
    pub scope: String,
    pub key: String,
    pub request_hash: [u8; 32],
    /// The claim's owner (see [`IdempotencyStore::begin`]), kept when the
    /// command is written without a response.
    pub owner: String,
    /// The stream the command creates (derived from the key).
    pub stream: StreamId,
    /// Its events, versions `1..=n`.
    pub events: Vec<NewEvent>,
    /// Stored as the key's completed response in the same transaction.
    /// `None` leaves the key claimed (in progress, locked at `now`) for a
    /// later [`IdempotencyStore::complete`] or
    /// [`IdempotencyStore::release`].
    pub response: Option<StoredResponse>,
}

/// What [`IdempotencyStore::execute_fresh`] did with one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fresh {
    /// The key was claimed (and completed, with a response) and the stream
    /// created, atomically.
    Written(AppendResult),
    /// The key already has a record, or the stream already has events, or
    /// an earlier command of the same batch took either: nothing was written
    /// for this command. The caller takes the general path
    /// ([`IdempotencyStore::begin`], then the command against the stream).
    NotFresh,
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// scope = route + principal (e.g. "POST /v1/orders"), key = the Idempotency-Key header.
    /// Atomic: of N concurrent callers with one (scope,key) exactly one gets Started.
    /// A row InProgress whose lease started before `now - lease` is taken over (Started) — the holder crashed.
    ///
    /// A claim made (or taken over) here carries `owner`, which
    /// [`IdempotencyStore::renew`] and [`IdempotencyStore::release`] must
    /// present: a token unique per claim, at most [`OWNER_MAX`] characters.
    ///
    /// A key longer than [`IDEMPOTENCY_KEY_MAX`] characters, an empty key or
    /// an over-long scope or owner is refused with [`StoreError::Backend`]
    /// (see [`check_scope_and_key`]); nothing is written.
    async fn begin(
        &self,
        scope: &str,
        key: &str,
        request_hash: &[u8; 32],
        owner: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Begin, StoreError>;

    /// Stores the response of an in-progress record. A record that is not in
    /// progress (completed already, released, purged, absent) is left as is:
    /// the first completion wins.
    async fn complete(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Drops an in-progress claim held by `owner` so a retry can execute
    /// (execution failed, or the request was dropped before it answered).
    /// Idempotent and owner-checked: a completed record, a claim taken over
    /// by another owner and an absent record are left as they are.
    async fn release(&self, scope: &str, key: &str, owner: &str) -> Result<(), StoreError>;

    /// Renews the lease of an in-progress claim held by `owner`: its lease
    /// now starts at `now`. `false` when `owner` no longer holds it (taken
    /// over, completed, released or purged); nothing changes then.
    async fn renew(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Deletes completed records completed strictly before `cutoff`, oldest
    /// first, at most `limit`; returns rows deleted. In-progress claims are
    /// never deleted, however old.
    async fn purge_before(&self, cutoff: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// Group commit of fresh commands: for each command, in batch order,
    /// claims its key and appends its events as a new stream (and stores its
    /// response), or writes nothing for it and answers [`Fresh::NotFresh`]
    /// (see there). Every written command commits in **one** transaction:
    /// all of them or, on an error, none. Answers are in batch order.
    ///
    /// The events go to this backend's own event store (the one the same
    /// database serves), with the chain, positions and read-all order of
    /// any append.
    ///
    /// Input is checked first ([`check_fresh_batch`]): a bad key, scope or
    /// event list refuses the whole call and writes nothing. So does any
    /// error, including a stream created by a concurrent writer between a
    /// backend's check and its insert when the backend cannot tell which
    /// command it hit; the caller may then write the commands one by one
    /// ([`crate::group_commit`] does).
    async fn execute_fresh(
        &self,
        batch: &[FreshCommand],
        now: DateTime<Utc>,
    ) -> Result<Vec<Fresh>, StoreError>;
}

/// Refuses a fresh batch with a bad key, scope or event list before any
/// statement runs.
pub fn check_fresh_batch(batch: &[FreshCommand]) -> Result<(), StoreError> {
    for command in batch {
        check_scope_and_key(&command.scope, &command.key)?;
        check_owner(&command.owner)?;
        validate_events(&command.events).map_err(StoreError::from)?;
    }
    Ok(())
}

/// Which commands of a batch may be written: the first to name a
/// `(scope, key)` and the first to name a stream. A later one would only
/// meet the earlier one's claim or stream, so it is [`Fresh::NotFresh`]
/// without asking the backend.
pub fn first_claims(batch: &[FreshCommand]) -> Vec<bool> {
    let mut keys = HashSet::with_capacity(batch.len());
    let mut streams = HashSet::with_capacity(batch.len());
    batch
        .iter()
        .map(|c| {
            let new_key = keys.insert((c.scope.as_str(), c.key.as_str()));
            let new_stream = streams.insert(&c.stream);
            new_key && new_stream
        })
        .collect()
}

/// Refuses an empty or over-long key and an empty or over-long scope before
/// any statement runs (the migrations hold the same bounds as named checks).
pub fn check_scope_and_key(scope: &str, key: &str) -> Result<(), StoreError> {
    let key_chars = key.chars().count();
    if key_chars == 0 || key_chars > IDEMPOTENCY_KEY_MAX {
        return Err(StoreError::Backend(format!(
            "idempotency key must be 1..={IDEMPOTENCY_KEY_MAX} characters, got {key_chars}"
        )));
    }
    let scope_chars = scope.chars().count();
    if scope_chars == 0 || scope_chars > IDEMPOTENCY_SCOPE_MAX {
        return Err(StoreError::Backend(format!(
            "idempotency scope must be 1..={IDEMPOTENCY_SCOPE_MAX} characters, got {scope_chars}"
        )));
    }
    Ok(())
}

/// Refuses an empty or over-long claim owner.
pub fn check_owner(owner: &str) -> Result<(), StoreError> {
    let chars = owner.chars().count();
    if chars == 0 || chars > OWNER_MAX {
        return Err(StoreError::Backend(format!(
            "idempotency claim owner must be 1..={OWNER_MAX} characters, got {chars}"
        )));
    }
    Ok(())
}

/// What a backend read back for an existing `(scope, key)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingRecord {
    pub request_hash: Vec<u8>,
    /// `Some` once completed.
    pub response: Option<StoredResponse>,
    pub locked_at: DateTime<Utc>,
}

/// What `begin` does about an existing record, decided the same way on every
/// backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// Answer the caller with this.
    Answer(Begin),
    /// The claim is stale: try to take it over with a compare-and-set on
    /// this `locked_at`.
    TakeOver { observed_locked_at: DateTime<Utc> },
}

/// Judges an existing record: a different hash is a mismatch (finished or
/// not), a completed record replays, a claim whose lease started strictly
/// before `now - lease` is stale, anything else is in progress.
pub fn judge_existing(
    existing: ExistingRecord,
    request_hash: &[u8; 32],
    now: DateTime<Utc>,
    lease: std::time::Duration,
) -> Existing {
    if existing.request_hash.as_slice() != request_hash.as_slice() {
        return Existing::Answer(Begin::Mismatch);
    }
    if let Some(response) = existing.response {
        return Existing::Answer(Begin::Completed(response));
    }
    let stale = chrono::TimeDelta::from_std(lease)
        .ok()
        .and_then(|lease| now.checked_sub_signed(lease))
        // A lease too long to subtract never expires.
        .is_some_and(|expiry| existing.locked_at < expiry);
    if stale {
        Existing::TakeOver {
            observed_locked_at: existing.locked_at,
        }
    } else {
        Existing::Answer(Begin::InProgress {
            lease_ends: lease_end(existing.locked_at, lease),
        })
    }
}

/// When a lease started at `locked_at` ends (the latest representable
/// time for one too long to add).
pub fn lease_end(locked_at: DateTime<Utc>, lease: std::time::Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(lease)
        .ok()
        .and_then(|lease| locked_at.checked_add_signed(lease))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The error `begin` returns when [`BEGIN_ATTEMPTS_MAX`] rounds did not
/// settle. Transient: the record kept changing under it.
pub fn begin_contended(scope: &str) -> StoreError {
    StoreError::Backend(format!(
        "idempotency record in {scope:?} kept changing: {BEGIN_ATTEMPTS_MAX} attempts did not settle"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn record(hash: [u8; 32], locked: i64, response: Option<StoredResponse>) -> ExistingRecord {
        ExistingRecord {
            request_hash: hash.to_vec(),
            response,
            locked_at: at(locked),
        }
    }

    #[test]
    fn judge_orders_mismatch_before_replay_and_lease() {
        let lease = Duration::from_secs(60);
        let done = StoredResponse {
            status: 201,
            content_type: "application/json".into(),
            body: b"{}".to_vec(),
        };
        assert_eq!(
            judge_existing(
                record([1; 32], 0, Some(done.clone())),
                &[2; 32],
                at(1000),
                lease
            ),
            Existing::Answer(Begin::Mismatch)
        );
        assert_eq!(
            judge_existing(record([1; 32], 0, None), &[2; 32], at(1000), lease),
            Existing::Answer(Begin::Mismatch)
        );
        assert_eq!(
            judge_existing(
                record([1; 32], 0, Some(done.clone())),
                &[1; 32],
                at(1000),
                lease
            ),
            Existing::Answer(Begin::Completed(done))
        );
        // Lease started exactly `lease` ago: still held.
        assert_eq!(
            judge_existing(record([1; 32], 940, None), &[1; 32], at(1000), lease),
            Existing::Answer(Begin::InProgress {
                lease_ends: at(1000)
            })
        );
        assert_eq!(
            judge_existing(record([1; 32], 939, None), &[1; 32], at(1000), lease),
            Existing::TakeOver {
                observed_locked_at: at(939)
            }
        );
        // A lease too long to represent never expires.
        assert_eq!(
            judge_existing(record([1; 32], 0, None), &[1; 32], at(1000), Duration::MAX),
            Existing::Answer(Begin::InProgress {
                lease_ends: DateTime::<Utc>::MAX_UTC
            })
        );
    }

    #[test]
    fn key_and_scope_bounds() {
        assert!(check_scope_and_key("s", &"k".repeat(IDEMPOTENCY_KEY_MAX)).is_ok());
        // Characters, not bytes.
        assert!(check_scope_and_key("s", &"é".repeat(IDEMPOTENCY_KEY_MAX)).is_ok());
        assert!(check_scope_and_key("s", &"k".repeat(IDEMPOTENCY_KEY_MAX + 1)).is_err());
        assert!(check_scope_and_key("s", "").is_err());
        assert!(check_scope_and_key("", "k").is_err());
        assert!(check_scope_and_key(&"s".repeat(IDEMPOTENCY_SCOPE_MAX + 1), "k").is_err());
        assert!(check_owner("o").is_ok());
        assert!(check_owner(&"o".repeat(OWNER_MAX)).is_ok());
        assert!(check_owner(&"o".repeat(OWNER_MAX + 1)).is_err());
        assert!(check_owner("").is_err());
    }
}
