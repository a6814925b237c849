//! The PSP process managers and the reconciler: everything that turns
//! ledger events into PSP calls and PSP answers back into core commands.
//!
//! **Guarantees:**
//! - *Exactly-once scheduling.* Each feed handler (`pm.payments`,
//!   `pm.transfers`, `pm.refunds`, `pm.reversals`) turns a batch of events
//!   into [`WorkOrder`]s and saves them together with its checkpoint in one
//!   [`WorkStore::enqueue`]; a feed position schedules its work once.
//! - *At-least-once execution, safe by construction.* A worker claims due
//!   rows with a lease, re-loads the stream (the stream is the truth, the row
//!   only a hint), calls the PSP with ids and keys derived from ledger ids
//!   (`payment_id_for`, `psp_refund_id_for`, `transfer:{id}:{attempt}`,
//!   `reversal:{uuid_v5(transfer, refund)}:1`) and records the outcome as a
//!   core command whose id is derived from its cause, so re-running any step
//!   after a crash makes no second PSP object and appends nothing twice.
//! - *A PSP error never loses work.* Transient errors (timeouts, 5xx, 409,
//!   429) leave the row for a later try with capped backoff and record
//!   nothing, so the same id/key is reused; definitive answers go through the
//!   core (`RecordFailed`, `RecordReversalFailed`, refund `failed`), which owns
//!   the retry budget and moves Stripe's `attempt` on.
//! - *One log line per action*, whose message starts with the manager's name
//!   (`payment`, `transfer`, `transfer_retry`, `refund_open`, `refund`,
//!   `refund_settle`, `refund_sellers`, `reversal`, `reconcile`) and carries
//!   `stream_id`, so `grep <name>` tells that manager's story.
//! - The reconciler depends on [`PspStatusReader`] only: it can read PSP
//!   state, never move money.
//!
//! **Architecture Invariant:** nothing here changes state except through
//! `ledger_store::handle::execute` and the pure core; the work table holds
//! no business state, so deleting every row loses timers, not money (the
//! reconciler and a feed replay recreate them).

mod candidates;
mod config;
mod facade;
mod feed;
mod payment;
mod reconcile;
mod refund;
mod resolve;
mod reversal;
#[cfg(feature = "testkit")]
pub mod testkit;
mod transfer;
mod worker;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use ledger_core::ids::StreamId;
use ledger_core::transfer::backoff_delay;
use ledger_core::{Decider, Source};
use ledger_psp::{PaymentGateway, PayoutGateway, PspError};
use ledger_store::handle::{CommandContext, HandleError, Handled, Loaded, execute, load};
use ledger_store::work::WorkStore;
use ledger_store::{EventStore, StoreError};

use crate::clock::Clock;

pub use candidates::{QueryCandidates, StreamScanCandidates, StuckCandidates, StuckRow};
pub use config::*;
pub use facade::{
    FEED_ATTEMPTS_MAX, ManagerDeps, Managers, PROVIDER_SWEEP_INTERVAL, PROVIDER_SWEEP_WINDOW,
    RunReport,
};
pub use feed::{FEED_BATCH, FeedKind, WorkFeed};
pub use ledger_store::work::{MemoryWorkStore, WorkItem, WorkOrder};
pub use reconcile::{
    ClassReport, INDETERMINATE_SWEEP_AFTER, ProviderAnomaly, ProviderReport, ReconcileAction,
    ReconcileFailure, ReconcileReport, Reconciler,
};
pub use resolve::{INDETERMINATE_READ_DELAY, KEY_TRUSTED_FOR};
pub use reversal::{REVERSAL_ATTEMPT, reversal_key_id};
pub use transfer::{ResolvedAnomaly, RetriedTransfer};
pub use worker::{
    CLAIM_LEASE, CLAIM_LIMIT, PAYMENT_START_GRACE, REFUND_OPEN_GRACE, WorkerKind, WorkerReport,
};

/// Why a manager step failed. A worker reschedules the item with backoff
/// and logs it; `run_all_once` and the admin paths return it.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The core refused a command (the state moved in a way the step did
    /// not expect, or an operator asked for an impossible transition).
    #[error("{stream}: the core refused {command}: {reason}")]
    Rejected {
        stream: String,
        command: &'static str,
        reason: String,
    },
    /// The stream cannot be folded (undecodable event, invalid history) or
    /// is too contended.
    #[error("{stream}: {reason}")]
    Stream { stream: String, reason: String },
    /// A feed met an event it cannot apply and stopped (see the runtime).
    #[error("feed {feed} stalled at {stream}: {reason}")]
    FeedStalled {
        feed: String,
        stream: String,
        reason: String,
    },
    #[error(transparent)]
    Psp(#[from] PspError),
    #[error("read model: {0}")]
    ReadModel(String),
    #[error("{0} does not exist")]
    NotFound(String),
    /// A read of the provider found nothing, but too soon after the lost
    /// answer to prove absence (the call may still be running there).
    #[error("{stream}: {reason}")]
    TooEarly { stream: String, reason: String },
}

impl ManagerError {
    /// Worth retrying as is (the store or PSP may answer next time).
    pub fn is_transient(&self) -> bool {
        match self {
            ManagerError::Store(e) => e.is_transient(),
            ManagerError::Psp(e) => e.is_transient(),
            ManagerError::ReadModel(_) => true,
            ManagerError::Stream { .. } | ManagerError::TooEarly { .. } => true,
            ManagerError::Rejected { .. }
            | ManagerError::NotFound(_)
            | ManagerError::FeedStalled { .. } => false,
        }
    }
}

/// Maps the command path's error, naming the stream and the command.
fn handle_error<R: std::error::Error + 'static>(
    stream: &StreamId,
    command: &'static str,
    e: HandleError<R>,
) -> ManagerError {
    match e {
        HandleError::Rejected(r) => ManagerError::Rejected {
            stream: stream.to_string(),
            command,
            reason: r.to_string(),
        },
        HandleError::Store(s) => ManagerError::Store(s),
        other => ManagerError::Stream {
            stream: stream.to_string(),
            reason: other.to_string(),
        },
    }
}

/// Who a manager command is recorded as.
#[derive(Debug, Clone, Copy)]
struct Actor {
    source: Source,
    name: &'static str,
}

impl Actor {
    const fn worker(name: &'static str) -> Actor {
        Actor {
            source: Source::Worker,
            name,
        }
    }
}

/// Command context whose id (and so its events' ids) is derived from
/// `cause`: re-running the same cause can never append twice.
fn command_context(cause: &str, actor: Actor) -> CommandContext {
    CommandContext::from_cause(cause, actor.name, actor.source)
}

/// What the managers share.
pub(crate) struct Ctx {
    pub events: Arc<dyn EventStore>,
    pub work: Arc<dyn WorkStore>,
    pub payments: Arc<dyn PaymentGateway>,
    pub payouts: Arc<dyn PayoutGateway>,
    pub clock: Arc<dyn Clock>,
    pub config: ManagerConfig,
    pub owner: String,
}

impl Ctx {
    async fn load<D: Decider>(&self, stream: &StreamId) -> Result<Loaded<D::State>, ManagerError> {
        load::<D, _>(&*self.events, stream)
            .await
            .map_err(|e| handle_error(stream, "load", e))
    }

    async fn run<D: Decider>(
        &self,
        stream: &StreamId,
        cause: &str,
        actor: Actor,
        command: &D::Command,
        name: &'static str,
    ) -> Result<Handled<D>, ManagerError> {
        execute::<D, _>(
            &*self.events,
            stream,
            &command_context(cause, actor),
            command,
        )
        .await
        .map_err(|e| handle_error(stream, name, e))
    }

    /// When a work item that failed `attempts` times may run again.
    fn work_retry_at(&self, now: DateTime<Utc>, attempts: u32) -> DateTime<Utc> {
        after(now, backoff_delay(&self.config.work_backoff, attempts))
    }

    /// When a work item whose create failed with `outcome` runs again: an
    /// unknown outcome is read after [`resolve::INDETERMINATE_READ_DELAY`];
    /// anything else backs off, never before the provider's `Retry-After`.
    fn due_after(
        &self,
        now: DateTime<Utc>,
        attempts: u32,
        outcome: ledger_psp::CreateOutcome,
    ) -> DateTime<Utc> {
        match outcome {
            ledger_psp::CreateOutcome::Unknown => after(now, resolve::INDETERMINATE_READ_DELAY),
            ledger_psp::CreateOutcome::RetrySameKey { after: Some(wait) } => {
                self.work_retry_at(now, attempts).max(after(now, wait))
            }
            _ => self.work_retry_at(now, attempts),
        }
    }
}

/// `now + delay`, saturating.
fn after(now: DateTime<Utc>, delay: std::time::Duration) -> DateTime<Utc> {
    TimeDelta::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `now - delay`, saturating.
fn before(now: DateTime<Utc>, delay: std::time::Duration) -> DateTime<Utc> {
    TimeDelta::from_std(delay)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// "42m", "1h5m", "3d2h", "12s": how long something was stuck, for humans.
pub fn human_duration(d: TimeDelta) -> String {
    let secs = d.num_seconds().max(0);
    let (days, hours, minutes) = (secs / 86_400, (secs % 86_400) / 3_600, (secs % 3_600) / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_read_like_an_operator_writes_them() {
        assert_eq!(human_duration(TimeDelta::seconds(12)), "12s");
        assert_eq!(human_duration(TimeDelta::minutes(42)), "42m");
        assert_eq!(human_duration(TimeDelta::minutes(65)), "1h5m");
        assert_eq!(human_duration(TimeDelta::hours(2)), "2h");
        assert_eq!(human_duration(TimeDelta::hours(50)), "2d2h");
        assert_eq!(human_duration(TimeDelta::days(3)), "3d");
        assert_eq!(human_duration(TimeDelta::seconds(-5)), "0s");
    }
}
