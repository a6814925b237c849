//! The due-time work queue the process managers run on (`pm_work`): one row
//! per `(manager, stream_id)` saying "look at this stream at or after
//! `due_at`", claimed with a lease by one worker at a time.
//!
//! **Guarantees** (every backend, checked by
//! [`work_suite!`](crate::work_suite)):
//! - [`WorkStore::enqueue`] moves the manager's feed checkpoint and upserts
//!   its orders in one transaction: a feed position schedules its work
//!   exactly once, and a stale `from` writes nothing
//!   ([`checkpoint_moved`]).
//! - An upsert of an existing row replaces `due_at` and bumps `version`;
//!   `attempts`, `last_error` and a live claim are kept. Orders for the same
//!   row within one call collapse to the last one (one upsert, one bump).
//! - Of any number of concurrent [`WorkStore::claim_due`] callers (tasks or
//!   processes), each due row goes to exactly one until its lease expires.
//!   A claim is live while `claimed_until >= now`.
//! - [`WorkStore::finish`] and [`WorkStore::reschedule`] act only while the
//!   item's claim (`owner` and `claimed_until`, as `claim_due` returned
//!   them) still holds the row; a claim lost to an expired lease is a no-op
//!   with a WARN, and the new holder's outcome stands. A re-enqueue that
//!   landed while the work ran (`version` moved) is never lost.
//! - Timestamps are stored and returned at microsecond precision: finer
//!   input is truncated (towards the past) before it is stored or compared.
//!
//! An unclaimed row reads back with `owner` [`UNCLAIMED_OWNER`] and
//! `claimed_until` [`UNCLAIMED_UNTIL`] (the tables hold `null`s).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use ledger_core::Checkpoint;
use ledger_core::ids::TEXT_ID_MAX;

use crate::StoreError;

/// Longest manager name, in characters. Names are code constants such as
/// `transfer_retry`; the bound keeps the primary-key index small.
pub const WORK_MANAGER_MAX: usize = 100;
/// Longest `stream_id`, in characters: a stream id's own limit.
pub const WORK_STREAM_ID_MAX: usize = TEXT_ID_MAX;
/// Longest claim owner, in characters: room for host, pid and a UUID.
pub const WORK_OWNER_MAX: usize = 200;
/// Longest stored `last_error`, in characters; longer messages are clipped
/// (ending in `…`). Enough for a PSP error summary, small enough that a
/// queue of failing rows stays cheap to list.
pub const WORK_LAST_ERROR_MAX: usize = 2_000;
/// Most rows one [`WorkStore::claim_due`] returns; larger limits are
/// clamped. Bounds one claimer's batch (and its statement) whatever the
/// caller asks for.
pub const WORK_CLAIM_MAX: u32 = 1_000;

/// `owner` of an unclaimed row as [`WorkStore::pending`] returns it. Owners
/// are never empty, so it cannot name a real claimer.
pub const UNCLAIMED_OWNER: &str = "";
/// `claimed_until` of an unclaimed row as [`WorkStore::pending`] returns it.
pub const UNCLAIMED_UNTIL: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// A request that `manager` look at `stream_id` at or after `due_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkOrder {
    pub manager: String,
    pub stream_id: String,
    pub due_at: DateTime<Utc>,
}

/// A claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    pub manager: String,
    pub stream_id: String,
    pub due_at: DateTime<Utc>,
    pub attempts: u32,
    pub version: i64,
    pub last_error: Option<String>,
    pub claimed_until: DateTime<Utc>,
    pub owner: String,
}

impl WorkItem {
    /// True when some owner holds a claim on the row (live or expired).
    pub fn is_claimed(&self) -> bool {
        self.owner != UNCLAIMED_OWNER
    }
}

#[async_trait]
pub trait WorkStore: Send + Sync + std::fmt::Debug {
    /// The checkpoint saved under `name` (shares the `projection_checkpoint`
    /// table with projections: name, commit_id, position, updated_at).
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError>;
    /// ONE transaction: compare-and-set the checkpoint `name` from `from` to
    /// `to` (mismatch → error, nothing written), and upsert every order: a
    /// new row, or an existing row's due_at := order.due_at, version += 1,
    /// attempts kept. Exactly-once scheduling per feed position.
    async fn enqueue(
        &self,
        name: &str,
        from: Option<Checkpoint>,
        to: Checkpoint,
        orders: &[WorkOrder],
    ) -> Result<(), StoreError>;
    /// Upsert without a checkpoint (operator retry, inline paths). Same
    /// upsert rule.
    async fn schedule(&self, orders: &[WorkOrder]) -> Result<(), StoreError>;
    /// Claims up to `limit` rows of `manager` with due_at <= now whose claim
    /// is absent or expired (claimed_until < now), oldest due first, setting
    /// owner and claimed_until = now + lease. On Postgres: `for update skip
    /// locked` in the selecting subquery so concurrent claimers (other
    /// processes) never get the same row. Of N concurrent claimers each row
    /// goes to exactly one. `limit` is clamped to [`WORK_CLAIM_MAX`].
    async fn claim_due(
        &self,
        manager: &str,
        owner: &str,
        now: DateTime<Utc>,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<WorkItem>, StoreError>;
    /// The work is done: delete the row if its version is still
    /// `item.version` and `item.owner` still holds it; if the row was
    /// re-enqueued meanwhile (version moved), keep it and only clear the
    /// claim so it runs again.
    async fn finish(&self, item: &WorkItem) -> Result<(), StoreError>;
    /// Not done yet: release the claim, attempts += 1, last_error = error;
    /// due_at := `due_at` unless the row was re-enqueued meanwhile (version
    /// moved), in which case keep the earlier of the two.
    async fn reschedule(
        &self,
        item: &WorkItem,
        due_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Rows of `manager` (claimed or not), ordered by due_at (then
    /// stream_id) — for tests, metrics and the admin surface.
    async fn pending(&self, manager: &str) -> Result<Vec<WorkItem>, StoreError>;
}

// ---------------------------------------------------------------------------
// Rules every backend shares.
// ---------------------------------------------------------------------------

/// The error [`WorkStore::enqueue`] returns when the stored checkpoint is
/// not `expected`. It is a [`StoreError::Backend`], hence transient: the
/// runner reloads the checkpoint and reads on from there, as it does when a
/// projection's checkpoint moves under it.
pub fn checkpoint_moved(
    name: &str,
    expected: Option<Checkpoint>,
    found: Option<Checkpoint>,
) -> StoreError {
    let show = |c: Option<Checkpoint>| match c {
        Some(c) => format!("commit {} position {}", c.commit, c.position),
        None => "none".to_owned(),
    };
    StoreError::Backend(format!(
        "process-manager checkpoint {name:?} moved: this batch expected {}, the store has {}; \
         another process runs this manager or it was reset, so the batch was not applied",
        show(expected),
        show(found)
    ))
}

fn check_text(what: &str, value: &str, max: usize) -> Result<(), StoreError> {
    let chars = value.chars().count();
    if chars == 0 || chars > max || value.contains('\0') {
        return Err(StoreError::Backend(format!(
            "work queue {what} must be 1..={max} characters without NUL, got {chars}: {:?}",
            clip(value, 40)
        )));
    }
    Ok(())
}

/// Refuses a manager name the tables cannot hold.
pub fn check_manager(manager: &str) -> Result<(), StoreError> {
    check_text("manager", manager, WORK_MANAGER_MAX)
}

/// Refuses a claim owner the tables cannot hold (or that reads as
/// [`UNCLAIMED_OWNER`]).
pub fn check_owner(owner: &str) -> Result<(), StoreError> {
    check_text("owner", owner, WORK_OWNER_MAX)
}

/// Refuses an item whose identity or claim the tables cannot hold.
pub fn check_item(item: &WorkItem) -> Result<(), StoreError> {
    check_manager(&item.manager)?;
    check_text("stream_id", &item.stream_id, WORK_STREAM_ID_MAX)?;
    check_owner(&item.owner)
}

/// A timestamp as every backend stores it: whole microseconds, truncated.
pub fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// Checks every order and collapses orders for the same row into the last
/// one (in first-seen order), timestamps truncated to microseconds. What
/// every backend upserts.
pub fn collapse_orders(orders: &[WorkOrder]) -> Result<Vec<WorkOrder>, StoreError> {
    let mut out: Vec<WorkOrder> = Vec::with_capacity(orders.len());
    let mut index: HashMap<(&str, &str), usize> = HashMap::with_capacity(orders.len());
    for o in orders {
        check_manager(&o.manager)?;
        check_text("stream_id", &o.stream_id, WORK_STREAM_ID_MAX)?;
        let due_at = to_micros(o.due_at);
        match index.get(&(o.manager.as_str(), o.stream_id.as_str())) {
            Some(&i) => out[i].due_at = due_at,
            None => {
                index.insert((&o.manager, &o.stream_id), out.len());
                out.push(WorkOrder {
                    manager: o.manager.clone(),
                    stream_id: o.stream_id.clone(),
                    due_at,
                });
            }
        }
    }
    Ok(out)
}

/// `claimed_until` for a claim at `now`, in microseconds.
pub fn claim_deadline(
    now: DateTime<Utc>,
    lease: std::time::Duration,
) -> Result<DateTime<Utc>, StoreError> {
    TimeDelta::from_std(lease)
        .ok()
        .and_then(|lease| to_micros(now).checked_add_signed(lease))
        .map(to_micros)
        .ok_or_else(|| {
            StoreError::Backend(format!(
                "a work lease of {lease:?} from {now} is past the representable time range"
            ))
        })
}

/// The row count one claim asks for: `limit` clamped to [`WORK_CLAIM_MAX`].
pub fn claim_limit(limit: u32) -> u32 {
    limit.min(WORK_CLAIM_MAX)
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `last_error` as every backend stores it: NUL (which Postgres `text`
/// cannot hold) as U+FFFD, clipped to [`WORK_LAST_ERROR_MAX`] characters.
pub fn storable_error(error: Option<&str>) -> Option<String> {
    error.map(|e| clip(&e.replace('\0', "\u{FFFD}"), WORK_LAST_ERROR_MAX))
}

/// `attempts` after one more failed try; saturates rather than wraps.
pub fn next_attempts(attempts: u32) -> u32 {
    attempts.saturating_add(1)
}

/// Logs a `finish`/`reschedule` whose claim another owner holds now.
pub fn warn_claim_lost(action: &str, item: &WorkItem) {
    tracing::warn!(
        manager = %item.manager,
        stream_id = %item.stream_id,
        owner = %item.owner,
        "work item claim lost before {action} (lease expired); the current holder's outcome stands"
    );
}

// ---------------------------------------------------------------------------
// In-memory implementation, for unit tests.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Row {
    due_at: DateTime<Utc>,
    attempts: u32,
    version: i64,
    last_error: Option<String>,
    /// `(owner, claimed_until)` while claimed.
    claim: Option<(String, DateTime<Utc>)>,
}

impl Row {
    fn item(&self, manager: &str, stream_id: &str) -> WorkItem {
        let (owner, claimed_until) = match &self.claim {
            Some((owner, until)) => (owner.clone(), *until),
            None => (UNCLAIMED_OWNER.to_owned(), UNCLAIMED_UNTIL),
        };
        WorkItem {
            manager: manager.to_owned(),
            stream_id: stream_id.to_owned(),
            due_at: self.due_at,
            attempts: self.attempts,
            version: self.version,
            last_error: self.last_error.clone(),
            claimed_until,
            owner,
        }
    }

    fn held_by(&self, item: &WorkItem) -> bool {
        self.claim
            .as_ref()
            .is_some_and(|(o, until)| *o == item.owner && *until == item.claimed_until)
    }
}

#[derive(Debug, Default)]
struct State {
    checkpoints: HashMap<String, Checkpoint>,
    /// Keyed `(manager, stream_id)`.
    rows: BTreeMap<(String, String), Row>,
}

impl State {
    fn upsert(&mut self, orders: Vec<WorkOrder>) {
        for o in orders {
            match self.rows.get_mut(&(o.manager.clone(), o.stream_id.clone())) {
                Some(row) => {
                    row.due_at = o.due_at;
                    row.version += 1;
                }
                None => {
                    self.rows.insert(
                        (o.manager, o.stream_id),
                        Row {
                            due_at: o.due_at,
                            attempts: 0,
                            version: 1,
                            last_error: None,
                            claim: None,
                        },
                    );
                }
            }
        }
    }
}

/// [`WorkStore`] in memory: one mutex, so every call is atomic. Cloning
/// shares the state.
#[derive(Debug, Clone, Default)]
pub struct MemoryWorkStore {
    state: Arc<Mutex<State>>,
}

impl MemoryWorkStore {
    pub fn new() -> MemoryWorkStore {
        MemoryWorkStore::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::Backend("memory work store poisoned by a panic".to_owned()))
    }
}

#[async_trait]
impl WorkStore for MemoryWorkStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.lock()?.checkpoints.get(name).copied())
    }

    async fn enqueue(
        &self,
        name: &str,
        from: Option<Checkpoint>,
        to: Checkpoint,
        orders: &[WorkOrder],
    ) -> Result<(), StoreError> {
        let orders = collapse_orders(orders)?;
        let mut state = self.lock()?;
        let found = state.checkpoints.get(name).copied();
        if found != from {
            return Err(checkpoint_moved(name, from, found));
        }
        state.checkpoints.insert(name.to_owned(), to);
        state.upsert(orders);
        Ok(())
    }

    async fn schedule(&self, orders: &[WorkOrder]) -> Result<(), StoreError> {
        let orders = collapse_orders(orders)?;
        self.lock()?.upsert(orders);
        Ok(())
    }

    async fn claim_due(
        &self,
        manager: &str,
        owner: &str,
        now: DateTime<Utc>,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<WorkItem>, StoreError> {
        check_manager(manager)?;
        check_owner(owner)?;
        let now = to_micros(now);
        let until = claim_deadline(now, lease)?;
        let mut state = self.lock()?;
        let mut due: Vec<(DateTime<Utc>, String)> = state
            .rows
            .iter()
            .filter(|((m, _), row)| {
                m == manager
                    && row.due_at <= now
                    && row.claim.as_ref().is_none_or(|(_, until)| *until < now)
            })
            .map(|((_, s), row)| (row.due_at, s.clone()))
            .collect();
        due.sort();
        due.truncate(claim_limit(limit) as usize);
        let mut claimed = Vec::with_capacity(due.len());
        for (_, stream_id) in due {
            if let Some(row) = state.rows.get_mut(&(manager.to_owned(), stream_id.clone())) {
                row.claim = Some((owner.to_owned(), until));
                claimed.push(row.item(manager, &stream_id));
            }
        }
        Ok(claimed)
    }

    async fn finish(&self, item: &WorkItem) -> Result<(), StoreError> {
        check_item(item)?;
        let mut state = self.lock()?;
        let key = (item.manager.clone(), item.stream_id.clone());
        let Some(row) = state.rows.get_mut(&key) else {
            warn_claim_lost("finish", item);
            return Ok(());
        };
        if !row.held_by(item) {
            warn_claim_lost("finish", item);
        } else if row.version == item.version {
            state.rows.remove(&key);
        } else {
            row.claim = None;
        }
        Ok(())
    }

    async fn reschedule(
        &self,
        item: &WorkItem,
        due_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        check_item(item)?;
        let due_at = to_micros(due_at);
        let mut state = self.lock()?;
        match state
            .rows
            .get_mut(&(item.manager.clone(), item.stream_id.clone()))
        {
            Some(row) if row.held_by(item) => {
                row.due_at = if row.version == item.version {
                    due_at
                } else {
                    row.due_at.min(due_at)
                };
                row.attempts = next_attempts(row.attempts);
                row.last_error = storable_error(error);
                row.claim = None;
            }
            _ => warn_claim_lost("reschedule", item),
        }
        Ok(())
    }

    async fn pending(&self, manager: &str) -> Result<Vec<WorkItem>, StoreError> {
        check_manager(manager)?;
        let state = self.lock()?;
        let mut rows: Vec<WorkItem> = state
            .rows
            .iter()
            .filter(|((m, _), _)| m == manager)
            .map(|((m, s), row)| row.item(m, s))
            .collect();
        rows.sort_by(|a, b| (a.due_at, &a.stream_id).cmp(&(b.due_at, &b.stream_id)));
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_marks_clipped_text() {
        assert_eq!(storable_error(Some("short")).as_deref(), Some("short"));
        let long = "é".repeat(WORK_LAST_ERROR_MAX + 5);
        let stored = storable_error(Some(&long)).unwrap();
        assert_eq!(stored.chars().count(), WORK_LAST_ERROR_MAX);
        assert!(stored.ends_with('…'));
        assert_eq!(storable_error(Some("a\0b")).as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(storable_error(None), None);
    }

    #[test]
    fn collapse_keeps_first_position_and_last_due() {
        let t = |s| DateTime::from_timestamp(s, 0).unwrap();
        let o = |s: &str, at| WorkOrder {
            manager: "m".to_owned(),
            stream_id: s.to_owned(),
            due_at: t(at),
        };
        let out = collapse_orders(&[o("a", 1), o("b", 2), o("a", 3)]).unwrap();
        assert_eq!(out, vec![o("a", 3), o("b", 2)]);
        assert!(collapse_orders(&[o("", 1)]).is_err());
    }

    #[test]
    fn deadline_truncates_and_refuses_overflow() {
        let now = DateTime::from_timestamp(10, 1_999).unwrap();
        let until = claim_deadline(now, std::time::Duration::from_nanos(2_500)).unwrap();
        assert_eq!(until, DateTime::from_timestamp(10, 3_000).unwrap());
        assert!(claim_deadline(now, std::time::Duration::from_secs(u64::MAX)).is_err());
    }
}
