//! Webhook-log retention: the seed's `CleanupHyperswitchWebhookLog` job.
//!
//! Rows of `hyperswitch_webhook_log` older than the retention period are
//! deleted in batches (oldest first, [`BATCH`] rows, [`PAUSE`] between
//! batches) so a large backlog never holds a long lock on the table.
//!
//! **Guarantees:**
//! - A row is deleted iff its `received_at` is strictly before
//!   `now - retention_days` (the cutoff); a row at the cutoff stays.
//! - `retention_days == 0` means [`DEFAULT_RETENTION_DAYS`], never "delete
//!   everything" (the seed's rule: a bad value cannot disable a safeguard or
//!   turn it into a wipe). `batch == 0` means [`BATCH`].
//! - Cancellation is observed before the first batch and between batches,
//!   deterministically (a cancelled token wins over the pause); a batch in
//!   flight always finishes, so a cancelled sweep stops between statements.
//! - One INFO line per sweep, with the deleted count.
//!
//! [`run_daily`] sweeps at start-up and then once per interval until
//! cancelled; a failed sweep is logged and retried at the next tick.
//!
//! **Idempotency records** are purged the same way ([`sweep_idempotency`],
//! [`run_idempotency_purge`]): completed records completed strictly before
//! `now - retention` go, in batches of [`BATCH`] with [`PAUSE`] between,
//! stopping on cancel. A claim in flight is never deleted, however old (the
//! port's guarantee).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ledger_store::StoreError;
use ledger_store::idempotency::IdempotencyStore;
use ledger_store::webhook_log::WebhookLogStore;
use tokio::time::MissedTickBehavior;
pub use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// Days a webhook-log row is kept: the seed's
/// `HYPERSWITCH_WEBHOOK_LOG_RETENTION_DAYS` default.
pub const DEFAULT_RETENTION_DAYS: u32 = 90;

/// Rows one delete statement removes: the seed's batch, small enough that a
/// statement holds its locks for milliseconds, big enough to clear a backlog.
pub const BATCH: u32 = 10_000;

/// Pause between batches: the seed's, so writers of new rows get the table
/// between two deletes.
pub const PAUSE: Duration = Duration::from_millis(100);

/// How often [`run_daily`] sweeps when not told otherwise: the seed's daily
/// tick.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// 0 means [`DEFAULT_RETENTION_DAYS`].
    pub retention_days: u32,
    /// Rows per delete; 0 means [`BATCH`].
    pub batch: u32,
    pub pause: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            retention_days: DEFAULT_RETENTION_DAYS,
            batch: BATCH,
            pause: PAUSE,
        }
    }
}

impl RetentionConfig {
    /// The retention period in force: `retention_days`, or the default for 0.
    pub fn effective_days(&self) -> u32 {
        if self.retention_days == 0 {
            DEFAULT_RETENTION_DAYS
        } else {
            self.retention_days
        }
    }

    /// The batch size in force: `batch`, or [`BATCH`] for 0 (a zero batch
    /// would never finish).
    pub fn effective_batch(&self) -> u32 {
        if self.batch == 0 { BATCH } else { self.batch }
    }

    /// Rows received strictly before this are deleted. A period reaching
    /// past the earliest representable time deletes nothing.
    pub fn cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        TimeDelta::try_days(i64::from(self.effective_days()))
            .and_then(|period| now.checked_sub_signed(period))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// What one sweep did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub cutoff: DateTime<Utc>,
    pub deleted: u64,
    /// Delete statements run (the last one deleted fewer than a batch, unless
    /// the sweep was cancelled).
    pub batches: u32,
    /// The token was cancelled before the sweep finished.
    pub cancelled: bool,
}

/// Deletes webhook-log rows received before `now - retention`, in batches,
/// until a batch deletes fewer than `batch` rows or `cancel` fires.
pub async fn sweep_webhook_log(
    store: &dyn WebhookLogStore,
    now: DateTime<Utc>,
    cfg: &RetentionConfig,
    cancel: &CancellationToken,
) -> Result<SweepReport, StoreError> {
    if cfg.retention_days == 0 {
        tracing::warn!(
            default = DEFAULT_RETENTION_DAYS,
            "webhook log retention_days is 0; using the default"
        );
    }
    let cutoff = cfg.cutoff(now);
    let report = sweep_batches(
        |cutoff, limit| store.delete_webhook_log_before(cutoff, limit),
        cutoff,
        cfg.effective_batch(),
        cfg.pause,
        cancel,
    )
    .await
    .inspect_err(|(e, partial)| {
        tracing::warn!(
            deleted = partial.deleted,
            batches = partial.batches,
            error = %e,
            "webhook log retention sweep failed"
        );
    })
    .map_err(|(e, _)| e)?;
    tracing::info!(
        deleted = report.deleted,
        batches = report.batches,
        cutoff = %report.cutoff,
        retention_days = cfg.effective_days(),
        cancelled = report.cancelled,
        "webhook log retention sweep"
    );
    Ok(report)
}

/// Deletes in batches of `batch` until one deletes fewer or `cancel` fires
/// (observed before the first batch and, winning over the pause, between
/// batches). On an error, the error and what was done before it.
async fn sweep_batches<F, Fut>(
    mut delete: F,
    cutoff: DateTime<Utc>,
    batch: u32,
    pause: Duration,
    cancel: &CancellationToken,
) -> Result<SweepReport, (StoreError, SweepReport)>
where
    F: FnMut(DateTime<Utc>, u32) -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut report = SweepReport {
        cutoff,
        deleted: 0,
        batches: 0,
        cancelled: false,
    };
    if cancel.is_cancelled() {
        report.cancelled = true;
        return Ok(report);
    }
    loop {
        let deleted = match delete(report.cutoff, batch).await {
            Ok(deleted) => deleted,
            Err(e) => return Err((e, report)),
        };
        report.deleted += deleted;
        report.batches += 1;
        if deleted < u64::from(batch) {
            return Ok(report);
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                report.cancelled = true;
                return Ok(report);
            }
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Idempotency-record retention (`IDEMPOTENCY_RETENTION`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRetention {
    /// Completed records completed strictly before `now - retention` go.
    /// Zero means [`DEFAULT_IDEMPOTENCY_RETENTION`], never "delete
    /// everything".
    pub retention: Duration,
    /// Rows per delete; 0 means [`BATCH`].
    pub batch: u32,
    pub pause: Duration,
}

/// How long a completed idempotency record is kept by default.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How often the idempotency purge runs when not told otherwise: hourly, so
/// a record outlives its retention by at most an hour.
pub const IDEMPOTENCY_SWEEP_INTERVAL: Duration = Duration::from_secs(60 * 60);

impl Default for IdempotencyRetention {
    fn default() -> Self {
        IdempotencyRetention {
            retention: DEFAULT_IDEMPOTENCY_RETENTION,
            batch: BATCH,
            pause: PAUSE,
        }
    }
}

impl IdempotencyRetention {
    /// Records completed strictly before this are deleted. A period
    /// reaching past the earliest representable time deletes nothing.
    pub fn cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let retention = if self.retention.is_zero() {
            DEFAULT_IDEMPOTENCY_RETENTION
        } else {
            self.retention
        };
        TimeDelta::from_std(retention)
            .ok()
            .and_then(|period| now.checked_sub_signed(period))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// Deletes completed idempotency records completed before
/// `now - retention`, in batches, until a batch deletes fewer than `batch`
/// rows or `cancel` fires.
pub async fn sweep_idempotency(
    store: &dyn IdempotencyStore,
    now: DateTime<Utc>,
    cfg: &IdempotencyRetention,
    cancel: &CancellationToken,
) -> Result<SweepReport, StoreError> {
    let batch = if cfg.batch == 0 { BATCH } else { cfg.batch };
    let report = sweep_batches(
        |cutoff, limit| store.purge_before(cutoff, limit),
        cfg.cutoff(now),
        batch,
        cfg.pause,
        cancel,
    )
    .await
    .inspect_err(|(e, partial)| {
        tracing::warn!(
            deleted = partial.deleted,
            batches = partial.batches,
            error = %e,
            "idempotency purge failed"
        );
    })
    .map_err(|(e, _)| e)?;
    tracing::info!(
        deleted = report.deleted,
        batches = report.batches,
        cutoff = %report.cutoff,
        cancelled = report.cancelled,
        "idempotency purge"
    );
    Ok(report)
}

/// Purges at once, then every `interval` (0 means
/// [`IDEMPOTENCY_SWEEP_INTERVAL`]), until `cancel` fires; like
/// [`run_daily`].
pub async fn run_idempotency_purge(
    store: Arc<dyn IdempotencyStore>,
    clock: Arc<dyn Clock>,
    cfg: IdempotencyRetention,
    interval: Duration,
    cancel: CancellationToken,
) {
    let interval = if interval.is_zero() {
        IDEMPOTENCY_SWEEP_INTERVAL
    } else {
        interval
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match sweep_idempotency(store.as_ref(), clock.now(), &cfg, &cancel).await {
            Ok(report) if report.cancelled => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "idempotency purge failed; retrying at the next tick");
            }
        }
    }
}

/// Sweeps at once, then every `interval` (0 means [`SWEEP_INTERVAL`]),
/// until `cancel` fires. A failed sweep is logged and the loop goes on; a
/// late tick is not made up for with a burst.
pub async fn run_daily(
    store: Arc<dyn WebhookLogStore>,
    clock: Arc<dyn Clock>,
    cfg: RetentionConfig,
    interval: Duration,
    cancel: CancellationToken,
) {
    let interval = if interval.is_zero() {
        tracing::warn!("webhook log retention interval is 0; sweeping daily");
        SWEEP_INTERVAL
    } else {
        interval
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match sweep_webhook_log(store.as_ref(), clock.now(), &cfg, &cancel).await {
            Ok(report) if report.cancelled => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "webhook log retention sweep failed; retrying at the next tick");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use ledger_store::webhook_log::WebhookLogEntry;
    use tokio::sync::mpsc;

    use super::*;
    use crate::clock::ManualClock;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_737_600 + secs, 0).unwrap()
    }

    #[test]
    fn zero_means_default_and_cutoff_is_exact() {
        let now = at(0);
        let cfg = RetentionConfig {
            retention_days: 0,
            batch: 0,
            pause: Duration::ZERO,
        };
        assert_eq!(cfg.effective_days(), 90);
        assert_eq!(cfg.effective_batch(), BATCH);
        assert_eq!(cfg.cutoff(now), now - TimeDelta::days(90));
        let seven = RetentionConfig {
            retention_days: 7,
            ..RetentionConfig::default()
        };
        assert_eq!(seven.cutoff(now), now - TimeDelta::days(7));
        // Absurd periods delete nothing instead of overflowing.
        let forever = RetentionConfig {
            retention_days: u32::MAX,
            ..RetentionConfig::default()
        };
        assert_eq!(forever.cutoff(now), DateTime::<Utc>::MIN_UTC);
        assert_eq!(
            RetentionConfig::default(),
            RetentionConfig {
                retention_days: 90,
                batch: 10_000,
                pause: Duration::from_millis(100)
            }
        );
    }

    /// Records each delete call (virtual time, cutoff) and can fail some.
    #[derive(Debug)]
    struct Recorder {
        calls: mpsc::UnboundedSender<(tokio::time::Instant, DateTime<Utc>)>,
        fail_calls: Mutex<u32>,
    }

    #[async_trait]
    impl WebhookLogStore for Recorder {
        async fn insert_webhook_log(&self, _: &WebhookLogEntry) -> Result<i64, StoreError> {
            unreachable!("the sweep never inserts")
        }
        async fn insert_webhook_logs(&self, _: &[WebhookLogEntry]) -> Result<Vec<i64>, StoreError> {
            unreachable!("the sweep never inserts")
        }
        async fn webhook_event_processed(&self, _: &str) -> Result<bool, StoreError> {
            unreachable!("the sweep never looks up events")
        }
        async fn delete_webhook_log_before(
            &self,
            cutoff: DateTime<Utc>,
            _limit: u32,
        ) -> Result<u64, StoreError> {
            self.calls
                .send((tokio::time::Instant::now(), cutoff))
                .unwrap();
            let mut fail = self.fail_calls.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(StoreError::Backend("injected".to_owned()));
            }
            Ok(0)
        }
        async fn recent_webhook_log(&self, _: u32) -> Result<Vec<WebhookLogEntry>, StoreError> {
            unreachable!("the sweep never lists")
        }
    }

    fn recorder(
        fail_calls: u32,
    ) -> (
        Arc<Recorder>,
        mpsc::UnboundedReceiver<(tokio::time::Instant, DateTime<Utc>)>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Arc::new(Recorder {
            calls: tx,
            fail_calls: Mutex::new(fail_calls),
        });
        (store, rx)
    }

    // Paused time: the runtime jumps to the next timer when every task is
    // idle, so "a day later" is exact and instant.
    #[tokio::test(start_paused = true)]
    async fn run_daily_sweeps_at_start_then_once_per_interval_with_the_clock() {
        let (store, mut calls) = recorder(0);
        let clock = Arc::new(ManualClock::new(at(0)));
        let cancel = CancellationToken::new();
        let day = Duration::from_secs(86_400);
        let task = tokio::spawn(run_daily(
            store,
            clock.clone(),
            RetentionConfig::default(),
            day,
            cancel.clone(),
        ));
        let (t1, cutoff1) = calls.recv().await.unwrap();
        assert_eq!(cutoff1, at(0) - TimeDelta::days(90));
        clock.advance(TimeDelta::days(1));
        let (t2, cutoff2) = calls.recv().await.unwrap();
        assert_eq!(t2 - t1, day);
        assert_eq!(cutoff2, at(0) - TimeDelta::days(89));
        let (t3, _) = calls.recv().await.unwrap();
        assert_eq!(t3 - t2, day);
        cancel.cancel();
        task.await.unwrap();
        // Nothing swept after the cancel.
        assert!(calls.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn run_daily_keeps_going_after_a_failed_sweep() {
        let (store, mut calls) = recorder(1);
        let clock = Arc::new(ManualClock::new(at(0)));
        let cancel = CancellationToken::new();
        let hour = Duration::from_secs(3_600);
        let task = tokio::spawn(run_daily(
            store.clone(),
            clock,
            RetentionConfig::default(),
            hour,
            cancel.clone(),
        ));
        let (t1, _) = calls.recv().await.unwrap();
        let (t2, _) = calls.recv().await.unwrap();
        assert_eq!(t2 - t1, hour);
        assert_eq!(*store.fail_calls.lock().unwrap(), 0);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_daily_cancelled_before_start_never_sweeps() {
        let (store, mut calls) = recorder(0);
        let cancel = CancellationToken::new();
        cancel.cancel();
        run_daily(
            store,
            Arc::new(ManualClock::new(at(0))),
            RetentionConfig::default(),
            Duration::ZERO,
            cancel,
        )
        .await;
        assert!(calls.try_recv().is_err());
    }

    /// An idempotency store whose purge answers from a script, records each
    /// call (virtual time, cutoff, limit) and may cancel a token on a call.
    struct Purger {
        calls: mpsc::UnboundedSender<(tokio::time::Instant, DateTime<Utc>, u32)>,
        answers: Mutex<Vec<u64>>,
        cancel_on_call: Option<(usize, CancellationToken)>,
        seen: Mutex<usize>,
    }

    #[async_trait]
    impl IdempotencyStore for Purger {
        async fn begin(
            &self,
            _: &str,
            _: &str,
            _: &[u8; 32],
            _: &str,
            _: DateTime<Utc>,
            _: Duration,
        ) -> Result<ledger_store::idempotency::Begin, StoreError> {
            unreachable!("the purge never claims")
        }
        async fn complete(
            &self,
            _: &str,
            _: &str,
            _: &ledger_store::idempotency::StoredResponse,
            _: DateTime<Utc>,
        ) -> Result<(), StoreError> {
            unreachable!("the purge never completes")
        }
        async fn release(&self, _: &str, _: &str, _: &str) -> Result<(), StoreError> {
            unreachable!("the purge never releases")
        }
        async fn renew(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            unreachable!("the purge never renews")
        }
        async fn purge_before(&self, cutoff: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
            self.calls
                .send((tokio::time::Instant::now(), cutoff, limit))
                .unwrap();
            let mut seen = self.seen.lock().unwrap();
            *seen += 1;
            if let Some((n, token)) = &self.cancel_on_call
                && *n == *seen
            {
                token.cancel();
            }
            let mut answers = self.answers.lock().unwrap();
            Ok(if answers.is_empty() {
                0
            } else {
                answers.remove(0)
            })
        }
        async fn execute_fresh(
            &self,
            _: &[ledger_store::idempotency::FreshCommand],
            _: DateTime<Utc>,
        ) -> Result<Vec<ledger_store::idempotency::Fresh>, StoreError> {
            unreachable!("the purge never writes")
        }
    }

    fn purger(
        answers: Vec<u64>,
        cancel_on_call: Option<(usize, CancellationToken)>,
    ) -> (
        Purger,
        mpsc::UnboundedReceiver<(tokio::time::Instant, DateTime<Utc>, u32)>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Purger {
            calls: tx,
            answers: Mutex::new(answers),
            cancel_on_call,
            seen: Mutex::new(0),
        };
        (store, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn idempotency_purge_runs_full_batches_with_a_pause_until_a_short_one() {
        let (store, mut calls) = purger(vec![3, 3, 1, 3], None);
        let cfg = IdempotencyRetention {
            retention: Duration::from_secs(7 * 86_400),
            batch: 3,
            pause: Duration::from_millis(100),
        };
        let report = sweep_idempotency(&store, at(0), &cfg, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            report,
            SweepReport {
                cutoff: at(0) - TimeDelta::days(7),
                deleted: 7,
                batches: 3,
                cancelled: false,
            }
        );
        let mut times = Vec::new();
        while let Ok((t, cutoff, limit)) = calls.try_recv() {
            assert_eq!((cutoff, limit), (at(0) - TimeDelta::days(7), 3));
            times.push(t);
        }
        assert_eq!(times.len(), 3, "stops after the short batch");
        assert_eq!(times[1] - times[0], cfg.pause);
        assert_eq!(times[2] - times[1], cfg.pause);
    }

    #[tokio::test(start_paused = true)]
    async fn idempotency_purge_stops_between_batches_on_cancel_and_zero_is_the_default() {
        let cancel = CancellationToken::new();
        let (store, mut calls) = purger(vec![BATCH.into(); 5], Some((2, cancel.clone())));
        let cfg = IdempotencyRetention {
            retention: Duration::ZERO,
            batch: 0,
            pause: PAUSE,
        };
        let report = sweep_idempotency(&store, at(0), &cfg, &cancel)
            .await
            .unwrap();
        assert!(report.cancelled);
        assert_eq!(report.batches, 2, "the batch in flight finishes, no more");
        assert_eq!(report.deleted, 2 * u64::from(BATCH));
        let (_, cutoff, limit) = calls.recv().await.unwrap();
        assert_eq!(
            cutoff,
            at(0) - TimeDelta::days(7),
            "zero retention means the default"
        );
        assert_eq!(limit, BATCH);
        // Cancelled before it starts: nothing deleted.
        let (store, mut calls) = purger(vec![1], None);
        let report = sweep_idempotency(&store, at(0), &cfg, &cancel)
            .await
            .unwrap();
        assert_eq!((report.batches, report.cancelled), (0, true));
        assert!(calls.try_recv().is_err());
    }
}
