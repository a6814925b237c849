//! The claim → step → finish/reschedule loop every worker shares.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ledger_store::work::WorkItem;
use serde::Serialize;
use tracing::Instrument;

use super::{Ctx, ManagerError, human_duration, payment, refund, reversal, transfer};

/// Rows one worker claims per pass. The seed's reversal worker used 20,
/// safely under Stripe's 25 req/s sandbox limit with one call per row; a
/// fuller backlog is drained by immediate further passes.
pub const CLAIM_LIMIT: u32 = 20;

/// How long a claim keeps other workers off a row. Longer than a whole
/// pass (each PSP call is bounded by the client's request timeout, and a
/// pass has at most [`CLAIM_LIMIT`] rows of a couple of calls each), so a
/// live worker never loses its rows; a crashed one's rows come back after it.
pub const CLAIM_LEASE: Duration = Duration::from_secs(10 * 60);

/// How long the payment worker leaves a new order to the API, which creates
/// the payment inline within its own (shorter) deadline. Acting earlier
/// would race that call: no second payment (the id is derived), but a
/// second create request. Past it, the worker finishes what the API could
/// not (PSP slow or down, process crashed).
pub const PAYMENT_START_GRACE: Duration = Duration::from_secs(10);

/// How long the `refund_open` check waits after a refund was reserved on
/// its order before creating the refund stream itself. The API writes that
/// stream right after the reservation; only a crash in between leaves it
/// missing, and acting earlier would race the API.
pub const REFUND_OPEN_GRACE: Duration = Duration::from_secs(60);

/// One kind of work; its `name` is the work table's `manager` column and
/// the first word of every log line the worker writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerKind {
    /// Create the order's Hyperswitch payment, record `PaymentInitiated`.
    Payment,
    /// Pay a `pending` seller transfer out through Stripe.
    Transfer,
    /// Send a `failed` transfer back to `pending` when due, and pay it.
    TransferRetry,
    /// Create the refund stream if a crash left only the order's
    /// reservation (phase-1 recovery).
    RefundOpen,
    /// Create the Hyperswitch refund of a `requested` refund (phase 2).
    Refund,
    /// Complete or release the order's lines once its refund is terminal.
    RefundSettle,
    /// Reduce or reverse the sellers' transfers after a refund completed.
    RefundSellers,
    /// Reverse a `reversal_pending` transfer through Stripe.
    Reversal,
}

impl WorkerKind {
    /// In the order `run_all_once` runs them.
    pub const ALL: [WorkerKind; 8] = [
        WorkerKind::Payment,
        WorkerKind::Transfer,
        WorkerKind::TransferRetry,
        WorkerKind::RefundOpen,
        WorkerKind::Refund,
        WorkerKind::RefundSettle,
        WorkerKind::RefundSellers,
        WorkerKind::Reversal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Payment => "payment",
            WorkerKind::Transfer => "transfer",
            WorkerKind::TransferRetry => "transfer_retry",
            WorkerKind::RefundOpen => "refund_open",
            WorkerKind::Refund => "refund",
            WorkerKind::RefundSettle => "refund_settle",
            WorkerKind::RefundSellers => "refund_sellers",
            WorkerKind::Reversal => "reversal",
        }
    }
}

impl std::fmt::Display for WorkerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What one step decided about its row.
#[derive(Debug)]
pub(crate) enum Step {
    /// Nothing left to do for this row (done, or not this worker's to do).
    Done,
    /// Look again at `due_at`; `error` is kept on the row for operators.
    Later {
        due_at: DateTime<Utc>,
        error: Option<String>,
    },
}

/// What one pass of one worker did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerReport {
    pub manager: &'static str,
    pub claimed: u32,
    pub finished: u32,
    pub rescheduled: u32,
    /// Steps that failed (rescheduled with backoff; each logged).
    pub failed: u32,
}

/// Claims the kind's due rows and runs one step on each.
pub(crate) async fn run_pass(
    ctx: &Ctx,
    kind: WorkerKind,
    now: DateTime<Utc>,
) -> Result<WorkerReport, ManagerError> {
    let items = ctx
        .work
        .claim_due(kind.name(), &ctx.owner, now, CLAIM_LIMIT, CLAIM_LEASE)
        .await?;
    let mut report = WorkerReport {
        manager: kind.name(),
        claimed: u32::try_from(items.len()).unwrap_or(u32::MAX),
        finished: 0,
        rescheduled: 0,
        failed: 0,
    };
    for item in &items {
        // Every line the step logs carries why it runs and how long the
        // row waited past its due time.
        let cause = match (&item.last_error, item.attempts) {
            (_, 0) => "new work".to_owned(),
            (Some(error), n) => format!("retry {n} after: {error}"),
            (None, n) => format!("retry {n}"),
        };
        let span = tracing::info_span!(
            "work",
            waited = %human_duration(now - item.due_at),
            cause = %cause,
        );
        match step(ctx, kind, item, now).instrument(span).await {
            Ok(Step::Done) => {
                ctx.work.finish(item).await?;
                report.finished += 1;
            }
            Ok(Step::Later { due_at, error }) => {
                ctx.work.reschedule(item, due_at, error.as_deref()).await?;
                report.rescheduled += 1;
            }
            Err(e) => {
                let due_at = ctx.work_retry_at(now, item.attempts);
                if e.is_transient() {
                    tracing::warn!(
                        manager = kind.name(), stream_id = %item.stream_id,
                        attempts = item.attempts, retry_at = %due_at, error = %e,
                        "{kind}: step failed; will retry"
                    );
                } else {
                    tracing::error!(
                        manager = kind.name(), stream_id = %item.stream_id,
                        attempts = item.attempts, retry_at = %due_at, error = %e,
                        "{kind}: step failed unexpectedly; will retry, an operator should look"
                    );
                }
                let error = e.to_string();
                ctx.work.reschedule(item, due_at, Some(&error)).await?;
                report.failed += 1;
            }
        }
    }
    Ok(report)
}

async fn step(
    ctx: &Ctx,
    kind: WorkerKind,
    item: &WorkItem,
    now: DateTime<Utc>,
) -> Result<Step, ManagerError> {
    match kind {
        WorkerKind::Payment => payment::step(ctx, item, now).await,
        WorkerKind::Transfer => transfer::step_transfer(ctx, item, now).await,
        WorkerKind::TransferRetry => transfer::step_retry(ctx, item, now).await,
        WorkerKind::RefundOpen => refund::step_open(ctx, item, now).await,
        WorkerKind::Refund => refund::step_refund(ctx, item, now).await,
        WorkerKind::RefundSettle => refund::step_settle(ctx, item, now).await,
        WorkerKind::RefundSellers => refund::step_sellers(ctx, item, now).await,
        WorkerKind::Reversal => reversal::step(ctx, item, now).await,
    }
}

/// The stream a work row names.
pub(crate) fn stream_of(item: &WorkItem) -> Result<ledger_core::ids::StreamId, ManagerError> {
    ledger_core::ids::StreamId::new(item.stream_id.clone()).map_err(|e| ManagerError::Stream {
        stream: item.stream_id.clone(),
        reason: e.to_string(),
    })
}
