//! Webhook-log retention cases every backend runs unchanged against its real
//! `WebhookLogStore` (included by `adapters/{postgres,sqlite}/tests/ports.rs`
//! with `#[macro_use]`, which then call [`retention_suite!`] with a factory
//! that yields a fresh, empty store). They live with the adapters' tests
//! because the adapters depend on `ledger-projections`, not the other way
//! round.
//!
//! Nothing sleeps to synchronise: the between-batches cancel is fired by the
//! store wrapper inside the first delete, so the sweep meets a cancelled
//! token at its first pause, every time.

#![allow(dead_code)]

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use ledger_projections::retention::{
    CancellationToken, DEFAULT_RETENTION_DAYS, RetentionConfig, SweepReport, sweep_webhook_log,
};
use ledger_store::StoreError;
use ledger_store::webhook_log::{WebhookLogEntry, WebhookLogStore};

/// A pause no case may wait out: if a cancel were missed, the case would
/// hit the runner's hang timeout and fail instead of passing late.
const UNWAITABLE_PAUSE: Duration = Duration::from_secs(3_600);

/// Runs every retention case as a `#[test]`, like `ports_suite!`.
macro_rules! retention_suite {
    ($holder:ident = $factory:expr, store = $project:expr $(,)?) => {
        retention_suite!(@list [store] [let $holder = $factory; let store = $project;]);
    };
    ($factory:expr $(,)?) => {
        retention_suite!(@list [store] [let store = $factory;]);
    };
    (@list [$store:ident] [$($bind:tt)*]) => {
        retention_suite!(@cases [$store] [{ $($bind)* }];
            sweep_deletes_older_rows_and_keeps_the_cutoff_and_newer,
            sweep_on_an_empty_log_is_a_noop,
            zero_retention_days_means_the_default_90,
            cancel_before_start_deletes_nothing,
            cancel_between_batches_stops_after_the_first,
            batches_are_respected,
        );
    };
    (@cases [$store:ident] [$bind:tt]; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                ledger_store::conformance::__run_case(::std::stringify!($case), async {
                    retention_suite!(@run [$store] $bind $case);
                });
            }
        )+
    };
    // Binds the store (a `{ let …; }` group, unpacked here so the bindings
    // stay in the case's scope) and runs one case.
    (@run [$store:ident] { $($bind:tt)* } $case:ident) => {
        $($bind)*
        crate::retention_cases::$case(&$store).await;
    };
}

fn now() -> DateTime<Utc> {
    // 2026-11-27T00:00:00Z.
    DateTime::from_timestamp(1_795_737_600, 0).unwrap()
}

fn entry(n: usize, received_at: DateTime<Utc>) -> WebhookLogEntry {
    WebhookLogEntry {
        payload: format!(r#"{{"n":{n}}}"#),
        signature_valid: true,
        processing_result: "ok".to_owned(),
        source_ip: None,
        user_agent: None,
        request_id: format!("req-{n}"),
        event_type: None,
        event_id: Some(format!("evt_{n}")),
        received_at,
        // Retention ignores it; none, so repeated `n`s stay separate rows.
        delivery_id: None,
        payload_sha256: None,
        payload_len: None,
    }
}

async fn insert_at<S: WebhookLogStore>(store: &S, times: &[DateTime<Utc>]) {
    for (n, t) in times.iter().enumerate() {
        store.insert_webhook_log(&entry(n, *t)).await.unwrap();
    }
}

/// `received_at` of every row left, oldest first.
async fn left<S: WebhookLogStore>(store: &S) -> Vec<DateTime<Utc>> {
    let mut times: Vec<_> = store
        .recent_webhook_log(1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.received_at)
        .collect();
    times.sort();
    times
}

fn days(n: i64) -> TimeDelta {
    TimeDelta::days(n)
}

fn config(retention_days: u32, batch: u32, pause: Duration) -> RetentionConfig {
    RetentionConfig {
        retention_days,
        batch,
        pause,
    }
}

/// Passes calls through to the real store, recording each delete's limit and
/// result; cancels `cancel_after_first` inside the first delete.
struct Observed<'a> {
    inner: &'a dyn WebhookLogStore,
    deletes: Mutex<Vec<(u32, u64)>>,
    cancel_after_first: Option<CancellationToken>,
}

impl<'a> Observed<'a> {
    fn new(inner: &'a dyn WebhookLogStore, cancel_after_first: Option<CancellationToken>) -> Self {
        Observed {
            inner,
            deletes: Mutex::new(Vec::new()),
            cancel_after_first,
        }
    }

    fn deletes(&self) -> Vec<(u32, u64)> {
        self.deletes.lock().unwrap().clone()
    }
}

#[async_trait]
impl WebhookLogStore for Observed<'_> {
    async fn insert_webhook_log(&self, entry: &WebhookLogEntry) -> Result<i64, StoreError> {
        self.inner.insert_webhook_log(entry).await
    }
    async fn insert_webhook_logs(
        &self,
        entries: &[WebhookLogEntry],
    ) -> Result<Vec<i64>, StoreError> {
        self.inner.insert_webhook_logs(entries).await
    }
    async fn webhook_event_processed(&self, event_id: &str) -> Result<bool, StoreError> {
        self.inner.webhook_event_processed(event_id).await
    }
    async fn delete_webhook_log_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let deleted = self.inner.delete_webhook_log_before(cutoff, limit).await?;
        let first = {
            let mut deletes = self.deletes.lock().unwrap();
            deletes.push((limit, deleted));
            deletes.len() == 1
        };
        if first && let Some(token) = &self.cancel_after_first {
            token.cancel();
        }
        Ok(deleted)
    }
    async fn recent_webhook_log(&self, limit: u32) -> Result<Vec<WebhookLogEntry>, StoreError> {
        self.inner.recent_webhook_log(limit).await
    }
}

pub async fn sweep_deletes_older_rows_and_keeps_the_cutoff_and_newer<S: WebhookLogStore>(
    store: &S,
) {
    let cutoff = now() - days(90);
    let micro = TimeDelta::microseconds(1);
    insert_at(
        store,
        &[
            now(),
            cutoff - micro,
            cutoff,
            cutoff - days(400),
            cutoff + micro,
        ],
    )
    .await;
    let cfg = config(90, 10_000, UNWAITABLE_PAUSE);
    let report = sweep_webhook_log(store, now(), &cfg, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        report,
        SweepReport {
            cutoff,
            deleted: 2,
            batches: 1,
            cancelled: false
        }
    );
    assert_eq!(left(store).await, vec![cutoff, cutoff + micro, now()]);
}

pub async fn sweep_on_an_empty_log_is_a_noop<S: WebhookLogStore>(store: &S) {
    let cfg = config(90, 10_000, UNWAITABLE_PAUSE);
    let report = sweep_webhook_log(store, now(), &cfg, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        report,
        SweepReport {
            cutoff: now() - days(90),
            deleted: 0,
            batches: 1,
            cancelled: false
        }
    );
    // Only young rows: still nothing to delete.
    insert_at(store, &[now() - days(89), now()]).await;
    let report = sweep_webhook_log(store, now(), &cfg, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.deleted, 0);
    assert_eq!(left(store).await, vec![now() - days(89), now()]);
}

pub async fn zero_retention_days_means_the_default_90<S: WebhookLogStore>(store: &S) {
    insert_at(
        store,
        &[now() - days(91), now() - days(89), now() - days(1)],
    )
    .await;
    let cfg = config(0, 10_000, UNWAITABLE_PAUSE);
    let report = sweep_webhook_log(store, now(), &cfg, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        report.cutoff,
        now() - days(i64::from(DEFAULT_RETENTION_DAYS))
    );
    assert_eq!(report.deleted, 1);
    assert_eq!(left(store).await, vec![now() - days(89), now() - days(1)]);
}

pub async fn cancel_before_start_deletes_nothing<S: WebhookLogStore>(store: &S) {
    let old = [now() - days(300), now() - days(200), now() - days(100)];
    insert_at(store, &old).await;
    let observed = Observed::new(store, None);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let report = sweep_webhook_log(&observed, now(), &config(90, 1, UNWAITABLE_PAUSE), &cancel)
        .await
        .unwrap();
    assert!(report.cancelled);
    assert_eq!((report.deleted, report.batches), (0, 0));
    assert!(observed.deletes().is_empty());
    assert_eq!(left(store).await, old.to_vec());
}

pub async fn cancel_between_batches_stops_after_the_first<S: WebhookLogStore>(store: &S) {
    let old = [now() - days(300), now() - days(200), now() - days(100)];
    insert_at(store, &old).await;
    let cancel = CancellationToken::new();
    let observed = Observed::new(store, Some(cancel.clone()));
    // batch 1 with 3 old rows would run 4 deletes; the pause after the
    // first meets the cancelled token (and would otherwise last an hour).
    let report = sweep_webhook_log(&observed, now(), &config(90, 1, UNWAITABLE_PAUSE), &cancel)
        .await
        .unwrap();
    assert!(report.cancelled);
    assert_eq!((report.deleted, report.batches), (1, 1));
    assert_eq!(observed.deletes(), vec![(1, 1)]);
    // The oldest row went; the others wait for the next sweep.
    assert_eq!(left(store).await, old[1..].to_vec());
}

pub async fn batches_are_respected<S: WebhookLogStore>(store: &S) {
    let old: Vec<_> = (0..5).map(|i| now() - days(100 + i)).collect();
    let mut rows = old.clone();
    rows.push(now());
    insert_at(store, &rows).await;
    let observed = Observed::new(store, None);
    let report = sweep_webhook_log(
        &observed,
        now(),
        &config(90, 2, Duration::ZERO),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(observed.deletes(), vec![(2, 2), (2, 2), (2, 1)]);
    assert_eq!((report.deleted, report.batches), (5, 3));
    assert!(!report.cancelled);
    assert_eq!(left(store).await, vec![now()]);

    // An exact multiple of the batch needs one more, empty, batch to finish.
    insert_at(store, &old[..4]).await;
    let observed = Observed::new(store, None);
    let report = sweep_webhook_log(
        &observed,
        now(),
        &config(90, 2, Duration::ZERO),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(observed.deletes(), vec![(2, 2), (2, 2), (2, 0)]);
    assert_eq!((report.deleted, report.batches), (4, 3));
}
