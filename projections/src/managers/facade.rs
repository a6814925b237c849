//! [`Managers`]: the feeds, the workers and the reconciler behind one
//! handle — `run_all_once` for tests and one-shot CLI commands, `spawn` for
//! the server.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ledger_core::ids::TransferId;
use ledger_core::order::PlacedOrder;
use ledger_psp::{PaymentGateway, PayoutGateway, PayoutReader, PspStatusReader};
use ledger_store::EventStore;
use ledger_store::work::WorkStore;
use serde::Serialize;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::candidates::StuckCandidates;
use super::config::ManagerConfig;
use super::feed::{FEED_BATCH, FeedKind, WorkFeed};
use super::reconcile::{ProviderReport, ReconcileReport, Reconciler};
use super::transfer::{ResolvedAnomaly, RetriedTransfer};
use super::worker::{CLAIM_LIMIT, WorkerKind, WorkerReport, run_pass};
use super::{Ctx, ManagerError, payment, transfer};
use crate::clock::Clock;
use crate::runtime::{POLL_INTERVAL, Projector, RETRY_DELAY, RuntimeError, Status};

/// How often the running reconciler matches Stripe's transfers against the
/// ledger (`Managers::reconcile_provider`).
pub const PROVIDER_SWEEP_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// The window each of those sweeps lists: two intervals back, so a sweep
/// that failed or an object created while one ran is seen by the next.
pub const PROVIDER_SWEEP_WINDOW: Duration = Duration::from_secs(2 * 60 * 60);

/// Tries of one feed's catch-up in `catch_up_feeds` when a batch fails
/// transiently. A checkpoint moved by another process is settled by one
/// reload; more failures mean the store is down, and the caller should know.
pub const FEED_ATTEMPTS_MAX: u32 = 3;

/// What the managers run against.
pub struct ManagerDeps {
    pub events: Arc<dyn EventStore>,
    pub work: Arc<dyn WorkStore>,
    /// The reconciler's rows: `QueryCandidates::new(query_store)` in
    /// production, `StreamScanCandidates` where no read models exist.
    pub candidates: Arc<dyn StuckCandidates>,
    pub payments: Arc<dyn PaymentGateway>,
    pub payouts: Arc<dyn PayoutGateway>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ManagerDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerDeps").finish_non_exhaustive()
    }
}

/// What one `run_all_once` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunReport {
    /// Events the feeds read.
    pub feed_events: u64,
    pub workers: Vec<WorkerReport>,
    /// `None` when the reconciler is disabled.
    pub reconcile: Option<ReconcileReport>,
}

impl RunReport {
    /// Nothing was read, claimed or changed: the system is idle.
    pub fn is_idle(&self) -> bool {
        self.feed_events == 0
            && self.workers.iter().all(|w| w.claimed == 0)
            && self.reconcile.as_ref().is_none_or(|r| r.changed() == 0)
    }
}

/// The process managers and the reconciler of one process. Cheap to clone.
#[derive(Clone)]
pub struct Managers {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<Ctx>,
    feeds: Vec<Mutex<Projector<WorkFeed>>>,
    feed_status: Vec<watch::Receiver<Status>>,
    reconciler: Reconciler,
}

impl std::fmt::Debug for Managers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Managers")
            .field("owner", &self.inner.ctx.owner)
            .field("config", &self.inner.ctx.config)
            .finish_non_exhaustive()
    }
}

impl Managers {
    /// `owner` names this process in work-row claims (host, pid, a UUID):
    /// two processes must not share one.
    pub fn new(deps: ManagerDeps, config: ManagerConfig, owner: impl Into<String>) -> Managers {
        let ManagerDeps {
            events,
            work,
            candidates,
            payments,
            payouts,
            clock,
        } = deps;
        let reader: Arc<dyn PspStatusReader> = payments.clone();
        let ctx = Arc::new(Ctx {
            events: events.clone(),
            work,
            payments,
            payouts,
            clock,
            config,
            owner: owner.into(),
        });
        let projectors: Vec<Projector<WorkFeed>> = FeedKind::ALL
            .iter()
            .map(|kind| {
                Projector::new(events.clone(), WorkFeed::new(*kind, ctx.clone()))
                    .with_batch(FEED_BATCH)
            })
            .collect();
        let feed_status = projectors.iter().map(Projector::subscribe).collect();
        let payouts_reader: Arc<dyn PayoutReader> = ctx.payouts.clone();
        let reconciler = Reconciler::new(
            ctx.clone(),
            reader,
            payouts_reader,
            candidates,
            config.reconcile,
        );
        Managers {
            inner: Arc::new(Inner {
                ctx,
                feeds: projectors.into_iter().map(Mutex::new).collect(),
                feed_status,
                reconciler,
            }),
        }
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.inner.ctx.config
    }

    /// Live status of each feed (`pm.*`), for readiness and lag metrics.
    pub fn feed_status(&self) -> Vec<watch::Receiver<Status>> {
        self.inner.feed_status.clone()
    }

    pub fn reconciler(&self) -> &Reconciler {
        &self.inner.reconciler
    }

    fn enabled(&self, kind: WorkerKind) -> bool {
        let c = &self.inner.ctx.config;
        match kind {
            WorkerKind::TransferRetry => c.transfer_retry.enabled,
            WorkerKind::Reversal => c.reversal.enabled,
            _ => true,
        }
    }

    /// Every feed reads to the head of the store. Returns the events read.
    /// A transient failure (another process moved the checkpoint) is
    /// retried from the stored checkpoint up to [`FEED_ATTEMPTS_MAX`] times.
    pub async fn catch_up_feeds(&self) -> Result<u64, ManagerError> {
        let mut total = 0;
        for feed in &self.inner.feeds {
            let mut feed = feed.lock().await;
            let mut attempt = 1;
            loop {
                match feed.catch_up().await {
                    Ok(n) => {
                        total += n;
                        break;
                    }
                    Err(RuntimeError::Transient { .. }) if attempt < FEED_ATTEMPTS_MAX => {
                        attempt += 1;
                    }
                    Err(e) => return Err(runtime_error(e)),
                }
            }
        }
        Ok(total)
    }

    /// One pass of one worker at `now` (regardless of its enabled flag).
    pub async fn run_worker(
        &self,
        kind: WorkerKind,
        now: DateTime<Utc>,
    ) -> Result<WorkerReport, ManagerError> {
        run_pass(&self.inner.ctx, kind, now).await
    }

    /// Feeds catch up, then every enabled worker runs one pass, then the
    /// reconciler (when enabled) runs one pass. What tests and one-shot CLI
    /// commands call; repeat until [`RunReport::is_idle`] to drain.
    pub async fn run_all_once(&self, now: DateTime<Utc>) -> Result<RunReport, ManagerError> {
        let mut report = RunReport {
            feed_events: self.catch_up_feeds().await?,
            ..RunReport::default()
        };
        for kind in WorkerKind::ALL {
            if self.enabled(kind) {
                report.workers.push(self.run_worker(kind, now).await?);
            }
        }
        if self.inner.ctx.config.reconcile.enabled {
            report.reconcile = Some(self.reconcile_once(now).await?);
        }
        Ok(report)
    }

    /// One reconciler pass (seed item C's `RunOnce`), whatever its enabled
    /// flag says: the admin endpoint and `ledger reconcile --once`.
    pub async fn reconcile_once(
        &self,
        now: DateTime<Utc>,
    ) -> Result<ReconcileReport, ManagerError> {
        self.inner.reconciler.reconcile_once(now).await
    }

    /// `ledger reconcile --provider` and `POST /v1/admin/reconcile/provider`:
    /// Stripe's transfers created in `[from, to)` matched against the
    /// ledger.
    pub async fn reconcile_provider(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<ProviderReport, ManagerError> {
        self.inner
            .reconciler
            .reconcile_provider(from, to, now)
            .await
    }

    /// `POST /v1/admin/transfers/{id}/anomalies/resolve`: an operator marks
    /// a recorded anomaly dealt with.
    pub async fn resolve_transfer_anomaly(
        &self,
        transfer_id: TransferId,
        kind: ledger_core::transfer::TransferAnomalyKind,
        provider_id: Option<String>,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<ResolvedAnomaly, ManagerError> {
        transfer::resolve_anomaly(&self.inner.ctx, transfer_id, kind, provider_id, note, now).await
    }

    /// `POST /v1/admin/transfers/{id}/retry`: an operator's retry. An
    /// `indeterminate` payout or reversal is read at Stripe first; a
    /// `failed` or `permanently_failed` one goes back to `pending`.
    pub async fn retry_transfer_now(
        &self,
        transfer_id: TransferId,
        now: DateTime<Utc>,
    ) -> Result<RetriedTransfer, ManagerError> {
        transfer::retry_now(&self.inner.ctx, transfer_id, now).await
    }

    /// `POST /v1/orders`: create the payment inline and return its
    /// `client_secret` if the PSP answers within `deadline`. Otherwise (or
    /// on any error) `None`, and the `payment` worker finishes the job; once
    /// this succeeded that worker finds the payment id recorded and makes no
    /// PSP call.
    pub async fn start_payment_inline(
        &self,
        order: &PlacedOrder,
        deadline: Duration,
    ) -> Option<String> {
        payment::start_inline(&self.inner.ctx, order, deadline).await
    }

    /// Runs every feed, every enabled worker and (when enabled) the
    /// reconciler on their intervals until `cancel` fires. Each loop checks
    /// the token between batches, so a batch in flight always finishes.
    pub fn spawn(&self, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        for index in 0..self.inner.feeds.len() {
            let this = self.clone();
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(
                async move { this.feed_loop(index, cancel).await },
            ));
        }
        for kind in WorkerKind::ALL {
            if !self.enabled(kind) {
                continue;
            }
            let this = self.clone();
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(
                async move { this.worker_loop(kind, cancel).await },
            ));
        }
        if self.inner.ctx.config.reconcile.enabled {
            let this = self.clone();
            tasks.push(tokio::spawn(
                async move { this.reconcile_loop(cancel).await },
            ));
        }
        tasks
    }

    async fn feed_loop(&self, index: usize, cancel: CancellationToken) {
        let Some(feed) = self.inner.feeds.get(index) else {
            return;
        };
        while !cancel.is_cancelled() {
            let result = feed.lock().await.run_once().await;
            let wait = match result {
                Ok(0) => POLL_INTERVAL,
                Ok(_) => continue,
                // The runtime logged it at ERROR and marked the status
                // Stalled; it stays stalled until a fix and a restart.
                Err(RuntimeError::Stalled { .. }) => return,
                Err(RuntimeError::Transient { .. }) => RETRY_DELAY,
            };
            if !pause(&cancel, wait).await {
                return;
            }
        }
    }

    fn interval(&self, kind: WorkerKind) -> Duration {
        let c = &self.inner.ctx.config;
        match kind {
            WorkerKind::TransferRetry => c.transfer_retry.interval,
            WorkerKind::Reversal => c.reversal.interval,
            _ => c.work_interval,
        }
    }

    async fn worker_loop(&self, kind: WorkerKind, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let now = self.inner.ctx.clock.now();
            let wait = match self.run_worker(kind, now).await {
                // A full batch means a backlog: go again at once.
                Ok(report) if report.claimed >= CLAIM_LIMIT => continue,
                Ok(_) => self.interval(kind),
                Err(e) => {
                    tracing::warn!(manager = kind.name(), error = %e, "{kind}: pass failed; will retry");
                    self.interval(kind)
                }
            };
            if !pause(&cancel, wait).await {
                return;
            }
        }
    }

    async fn reconcile_loop(&self, cancel: CancellationToken) {
        let interval = self.inner.ctx.config.reconcile.interval;
        let mut provider_swept_at: Option<DateTime<Utc>> = None;
        while !cancel.is_cancelled() {
            let now = self.inner.ctx.clock.now();
            // Stripe's records against the ledger's, once per
            // `PROVIDER_SWEEP_INTERVAL`, over a window that overlaps the
            // last one (an object created during a sweep is seen by the next).
            let due = provider_swept_at.is_none_or(|at| {
                now - at >= TimeDelta::from_std(PROVIDER_SWEEP_INTERVAL).unwrap_or(TimeDelta::MAX)
            });
            if due {
                let from = super::before(now, PROVIDER_SWEEP_WINDOW);
                match self.reconcile_provider(from, now, now).await {
                    Ok(_) => provider_swept_at = Some(now),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "reconcile provider: sweep failed; will retry next tick"
                    ),
                }
            }
            match self.reconcile_once(now).await {
                // Each action already logged its own line; the summary only
                // shows the sweep is alive.
                Ok(report) => tracing::debug!(
                    orders = report.orders.looked_at,
                    refunds = report.refunds.looked_at,
                    orphans = report.orphans.looked_at,
                    changed = report.changed(),
                    "reconcile pass done"
                ),
                Err(e) => tracing::warn!(error = %e, "reconcile pass failed; will retry next tick"),
            }
            if !pause(&cancel, interval).await {
                return;
            }
        }
    }
}

/// Waits `d` unless `cancel` fires first; false when cancelled.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

fn runtime_error(e: RuntimeError) -> ManagerError {
    match e {
        RuntimeError::Stalled {
            name,
            stream,
            version,
            reason,
        } => ManagerError::FeedStalled {
            feed: name,
            stream: format!("{stream} v{version}"),
            reason,
        },
        RuntimeError::Transient { name, error } => ManagerError::Stream {
            stream: name,
            reason: error,
        },
    }
}
