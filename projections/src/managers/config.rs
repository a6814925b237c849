//! The managers' settings, typed. The binary maps env (`RECONCILE_*`,
//! `REVERSAL_*`, `TRANSFER_RETRY_*`) into [`ManagerConfig`]; the defaults
//! here are the seed's, so a test or a CLI command that builds
//! `ManagerConfig::default()` behaves like an unconfigured deployment.

use std::time::Duration;

use ledger_core::transfer::RetryPolicy;

/// Seed item B: `REVERSAL_MAX_RETRIES` / `TRANSFER_RETRY_MAX_RETRIES`.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// Seed item B: `REVERSAL_BACKOFF_BASE`.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(60);
/// Seed item B: `REVERSAL_BACKOFF_MAX` (caps the exponential growth).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60 * 60);
/// Seed item B: `REVERSAL_CHECK_INTERVAL`.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Seed item C: `RECONCILE_INTERVAL` (ops drop it to 5m during an incident).
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Seed item C: `RECONCILE_ORDER_STUCK_AFTER`.
pub const DEFAULT_ORDER_STUCK_AFTER: Duration = Duration::from_secs(30 * 60);
/// Seed item C: `RECONCILE_REFUND_STUCK_AFTER`.
pub const DEFAULT_REFUND_STUCK_AFTER: Duration = Duration::from_secs(30 * 60);
/// Seed item C: `RECONCILE_REFUND_ORPHAN_AFTER`; shorter, because "the app
/// crashed" is a different signal from "network hiccup".
pub const DEFAULT_REFUND_ORPHAN_AFTER: Duration = Duration::from_secs(5 * 60);
/// Seed item C: 50 rows per class per tick, so a 10k-row backlog doesn't
/// hammer Hyperswitch; the next tick picks up the rest.
pub const DEFAULT_RECONCILE_BATCH_LIMIT: u32 = 50;
/// Rows one reconcile class reads per tick at most, whatever the config
/// says: every row is a PSP read, and the PSPs allow 25–100 req/s.
pub const RECONCILE_BATCH_LIMIT_MAX: u32 = 1_000;
/// How often the event-driven workers (payment, transfer, refund, …) poll
/// for due work: new work waits at most this long, and a claim is one
/// indexed query.
pub const DEFAULT_WORK_INTERVAL: Duration = Duration::from_secs(1);
/// First wait after a transient failure of a work item (PSP 5xx/timeout,
/// store hiccup) that the core does not count: long enough not to hammer a
/// struggling PSP, short enough that a blip costs seconds.
pub const DEFAULT_WORK_BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest wait between two tries of a failing work item.
pub const DEFAULT_WORK_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);

/// A retrying Stripe worker (reversals, transfer retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// `*_WORKER_ENABLED`. A disabled worker is neither spawned nor run by
    /// `run_all_once`; its work stays queued.
    pub enabled: bool,
    /// Passed to the core in every failure command.
    pub policy: RetryPolicy,
    /// `*_CHECK_INTERVAL`: how often the worker looks for due work.
    pub interval: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            enabled: true,
            policy: RetryPolicy {
                base: DEFAULT_BACKOFF_BASE,
                max: DEFAULT_BACKOFF_MAX,
                max_retries: DEFAULT_MAX_RETRIES,
            },
            interval: DEFAULT_CHECK_INTERVAL,
        }
    }
}

/// The reconciler (seed item C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileSettings {
    pub enabled: bool,
    pub interval: Duration,
    /// A `pending` order older than this is force-synced.
    pub order_stuck_after: Duration,
    /// A `submitted` refund older than this is force-synced.
    pub refund_stuck_after: Duration,
    /// A `requested` refund with no PSP id older than this is an orphan.
    pub refund_orphan_after: Duration,
    /// Rows per class per tick (clamped to [`RECONCILE_BATCH_LIMIT_MAX`]).
    pub batch_limit: u32,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings {
            enabled: true,
            interval: DEFAULT_RECONCILE_INTERVAL,
            order_stuck_after: DEFAULT_ORDER_STUCK_AFTER,
            refund_stuck_after: DEFAULT_REFUND_STUCK_AFTER,
            refund_orphan_after: DEFAULT_REFUND_ORPHAN_AFTER,
            batch_limit: DEFAULT_RECONCILE_BATCH_LIMIT,
        }
    }
}

/// Everything the managers are tuned by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagerConfig {
    /// `TRANSFER_RETRY_*`: definitive Stripe transfer failures.
    pub transfer_retry: RetrySettings,
    /// `REVERSAL_*`: transfer reversals.
    pub reversal: RetrySettings,
    /// `RECONCILE_*`.
    pub reconcile: ReconcileSettings,
    /// Poll interval of the event-driven workers.
    pub work_interval: Duration,
    /// Backoff of work items after a failure the core does not record (a
    /// transient PSP error on a create call, a store error). Only `base`
    /// and `max` are used: such failures are retried until they stop.
    pub work_backoff: RetryPolicy,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            transfer_retry: RetrySettings::default(),
            reversal: RetrySettings::default(),
            reconcile: ReconcileSettings::default(),
            work_interval: DEFAULT_WORK_INTERVAL,
            work_backoff: RetryPolicy {
                base: DEFAULT_WORK_BACKOFF_BASE,
                max: DEFAULT_WORK_BACKOFF_MAX,
                max_retries: u32::MAX,
            },
        }
    }
}
