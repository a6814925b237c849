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

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ledger_store::StoreError;
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
    let batch = cfg.effective_batch();
    let mut report = SweepReport {
        cutoff: cfg.cutoff(now),
        deleted: 0,
        batches: 0,
        cancelled: false,
    };
    if cancel.is_cancelled() {
        report.cancelled = true;
    } else {
        loop {
            let deleted = match store.delete_webhook_log_before(report.cutoff, batch).await {
                Ok(deleted) => deleted,
                Err(e) => {
                    tracing::warn!(
                        deleted = report.deleted,
                        batches = report.batches,
                        error = %e,
                        "webhook log retention sweep failed"
                    );
                    return Err(e);
                }
            };
            report.deleted += deleted;
            report.batches += 1;
            if deleted < u64::from(batch) {
                break;
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    report.cancelled = true;
                    break;
                }
                () = tokio::time::sleep(cfg.pause) => {}
            }
        }
    }
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
}
