//! The reconciler (seed item C): a sweep for orders and refunds whose
//! terminal webhook never arrived. It reads live PSP state for each stuck
//! row and feeds it through the same core commands a webhook would (the
//! "synthetic webhook"), with command ids derived from the observation
//! (`reconcile:{psp_id}:{status}`); the core's guards make it idempotent
//! against real webhooks, and a late webhook after it is a no-op.
//!
//! Three classes, each at most `batch_limit` rows per tick:
//! 1. stuck orders (`pending` longer than `order_stuck_after`, with a
//!    payment id) → `GET /payments/{id}` → `ApplyPaymentStatus`;
//! 2. stuck refunds (`submitted` longer than `refund_stuck_after`) →
//!    `GET /refunds/{id}` → `ApplyPspStatus` (error message passed on), then
//!    the order settles;
//! 3. orphan refunds (`requested` longer than `refund_orphan_after`, no PSP
//!    id: the app crashed between phase 1 and phase 2) → `failed`, the order
//!    released back to its previous status, ERROR for an operator.
//!    *Deviation from the seed:* the orphan's derived PSP id is looked up
//!    first; if Hyperswitch has it (phase 2 happened but was not recorded),
//!    its status is applied instead, so an outage of the `refund` worker can
//!    never make the ledger release lines the PSP is refunding.
//!
//! A PSP read error leaves the row for the next tick. Every action logs one
//! line whose message starts with `reconcile`, with `stream_id`,
//! `from_status`, `to_status`, `psp_status`, `stuck_for` and `cause`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ledger_core::Source;
use ledger_core::ids::{PspRefundId, StreamId, psp_refund_id_for};
use ledger_core::order::{Order, OrderCommand, OrderStatus};
use ledger_core::refund::{Refund, RefundCommand, RefundStatus};
use ledger_psp::PspStatusReader;
use serde::Serialize;

use super::candidates::{StuckCandidates, StuckRow};
use super::config::{RECONCILE_BATCH_LIMIT_MAX, ReconcileSettings};
use super::refund::settle_refund_on_order;
use super::{Actor, Ctx, ManagerError, before, human_duration};

const ACTOR: Actor = Actor {
    source: Source::Reconciler,
    name: "reconcile",
};

/// What one pass did, per class. Serialisable for the admin endpoint and
/// `ledger reconcile --once`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub at: Option<DateTime<Utc>>,
    pub orders: ClassReport,
    pub refunds: ClassReport,
    pub orphans: ClassReport,
}

impl ReconcileReport {
    /// Rows whose stream this pass changed.
    pub fn changed(&self) -> usize {
        [&self.orders, &self.refunds, &self.orphans]
            .iter()
            .map(|c| c.actions.iter().filter(|a| a.changed).count())
            .sum()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClassReport {
    /// Candidate rows read from the read side.
    pub looked_at: u32,
    /// Rows the PSP answered for (changed or not).
    pub actions: Vec<ReconcileAction>,
    /// Rows whose stream had already moved on (terminal, or no longer stuck).
    pub skipped: u32,
    /// Rows left for the next tick because the PSP read failed.
    pub failures: Vec<ReconcileFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileAction {
    pub stream_id: String,
    pub from_status: String,
    pub to_status: String,
    /// `None` for an orphan Hyperswitch has never seen.
    pub psp_status: Option<String>,
    pub stuck_for: String,
    pub cause: String,
    /// False when the PSP's status changed nothing (still in flight).
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileFailure {
    pub stream_id: String,
    pub error: String,
}

/// The sweep. Holds a read-only PSP port: it can never move money.
pub struct Reconciler {
    ctx: Arc<Ctx>,
    psp: Arc<dyn PspStatusReader>,
    candidates: Arc<dyn StuckCandidates>,
    settings: ReconcileSettings,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("settings", &self.settings)
            .field("candidates", &self.candidates)
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    pub(crate) fn new(
        ctx: Arc<Ctx>,
        psp: Arc<dyn PspStatusReader>,
        candidates: Arc<dyn StuckCandidates>,
        settings: ReconcileSettings,
    ) -> Reconciler {
        Reconciler {
            ctx,
            psp,
            candidates,
            settings,
        }
    }

    pub fn settings(&self) -> &ReconcileSettings {
        &self.settings
    }

    /// One pass over the three classes. Fails only when the read side or
    /// the event store fails; PSP errors are per row (left for next tick).
    pub async fn reconcile_once(
        &self,
        now: DateTime<Utc>,
    ) -> Result<ReconcileReport, ManagerError> {
        let limit = self
            .settings
            .batch_limit
            .clamp(1, RECONCILE_BATCH_LIMIT_MAX);
        let mut report = ReconcileReport {
            at: Some(now),
            ..ReconcileReport::default()
        };
        let rows = self
            .candidates
            .stuck_orders(before(now, self.settings.order_stuck_after), limit)
            .await?;
        report.orders.looked_at = count(&rows);
        for row in rows {
            self.order(&row, now, &mut report.orders).await?;
        }
        let rows = self
            .candidates
            .stuck_refunds(before(now, self.settings.refund_stuck_after), limit)
            .await?;
        report.refunds.looked_at = count(&rows);
        for row in rows {
            self.refund(&row, now, false, &mut report.refunds).await?;
        }
        let rows = self
            .candidates
            .orphan_refunds(before(now, self.settings.refund_orphan_after), limit)
            .await?;
        report.orphans.looked_at = count(&rows);
        for row in rows {
            self.refund(&row, now, true, &mut report.orphans).await?;
        }
        Ok(report)
    }

    async fn order(
        &self,
        row: &StuckRow,
        now: DateTime<Utc>,
        class: &mut ClassReport,
    ) -> Result<(), ManagerError> {
        let Some(stream) = parse_stream(row, class) else {
            return Ok(());
        };
        let order = self.ctx.load::<Order>(&stream).await?.state.order;
        let Some(o) = order.filter(|o| o.status == OrderStatus::Pending) else {
            class.skipped += 1;
            return Ok(());
        };
        let Some(payment_id) = o.payment_id.clone().filter(|p| !p.as_str().is_empty()) else {
            class.skipped += 1;
            return Ok(());
        };
        let stuck_for = human_duration(now - o.status_since);
        let view = match self.psp.get_payment_status(&payment_id).await {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(
                    stream_id = %stream, payment_id = %payment_id, stuck_for = %stuck_for,
                    error = %e, "reconcile: payment status read failed; row left for the next tick"
                );
                class.failures.push(ReconcileFailure {
                    stream_id: stream.to_string(),
                    error: e.to_string(),
                });
                return Ok(());
            }
        };
        let cause = format!("reconcile:{payment_id}:{}", view.status);
        let handled = self
            .ctx
            .run::<Order>(
                &stream,
                &cause,
                ACTOR,
                &OrderCommand::ApplyPaymentStatus {
                    payment_id: payment_id.clone(),
                    status: view.status.clone(),
                    amount_minor: view.amount_received.map(|a| a.minor),
                    error_message: view.error_message.clone(),
                    now,
                },
                "ApplyPaymentStatus",
            )
            .await;
        let handled = match handled {
            Ok(h) => h,
            // An unknown PSP status is refused by the core, never guessed at.
            Err(ManagerError::Rejected { reason, .. }) => {
                tracing::error!(
                    stream_id = %stream, payment_id = %payment_id, psp_status = %view.status,
                    stuck_for = %stuck_for, cause = %cause, reason = %reason,
                    "reconcile: the core refused the PSP's payment status; row left for an operator"
                );
                class.failures.push(ReconcileFailure {
                    stream_id: stream.to_string(),
                    error: reason,
                });
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let to = handled.state.status().unwrap_or(o.status);
        let action = ReconcileAction {
            stream_id: stream.to_string(),
            from_status: o.status.as_str().to_owned(),
            to_status: to.as_str().to_owned(),
            psp_status: Some(view.status.to_string()),
            stuck_for,
            cause,
            changed: handled.appended.is_some(),
        };
        log_action(&action, "order");
        class.actions.push(action);
        Ok(())
    }

    async fn refund(
        &self,
        row: &StuckRow,
        now: DateTime<Utc>,
        orphan_class: bool,
        class: &mut ClassReport,
    ) -> Result<(), ManagerError> {
        let Some(stream) = parse_stream(row, class) else {
            return Ok(());
        };
        let loaded = self.ctx.load::<Refund>(&stream).await?;
        let expected = if orphan_class {
            RefundStatus::Requested
        } else {
            RefundStatus::Submitted
        };
        let Some(r) = loaded.state.refund.filter(|r| r.status == expected) else {
            class.skipped += 1;
            return Ok(());
        };
        let stuck_for = human_duration(now - r.status_since);
        let psp_refund_id: PspRefundId = r
            .psp_refund_id
            .clone()
            .unwrap_or_else(|| psp_refund_id_for(r.refund_id));
        let view = match self.psp.get_refund_status(&psp_refund_id).await {
            Ok(view) => Some(view),
            Err(e) if orphan_class && e.is_not_found() => None,
            Err(e) => {
                tracing::warn!(
                    stream_id = %stream, hyperswitch_refund_id = %psp_refund_id,
                    stuck_for = %stuck_for, error = %e,
                    "reconcile: refund status read failed; row left for the next tick"
                );
                class.failures.push(ReconcileFailure {
                    stream_id: stream.to_string(),
                    error: e.to_string(),
                });
                return Ok(());
            }
        };
        let (cause, command, psp_status) = match &view {
            Some(view) => (
                format!("reconcile:{psp_refund_id}:{}", view.status),
                RefundCommand::ApplyPspStatus {
                    psp_refund_id: Some(psp_refund_id.clone()),
                    status: view.status,
                    error_message: view.error_message.clone(),
                    now,
                },
                Some(view.status.as_str().to_owned()),
            ),
            None => (
                format!("reconcile:{}:orphaned", r.refund_id),
                RefundCommand::MarkOrphaned { now },
                None,
            ),
        };
        let handled = self
            .ctx
            .run::<Refund>(&stream, &cause, ACTOR, &command, command.name())
            .await?;
        let refund_status = handled.state.status().unwrap_or(r.status);
        // Settle the order whatever this call appended: a crash after the
        // refund's own event must not leave the order reserved.
        let order_status = settle_refund_on_order(&self.ctx, &handled.state, ACTOR, now).await?;
        let action = ReconcileAction {
            stream_id: stream.to_string(),
            from_status: r.status.as_str().to_owned(),
            to_status: refund_status.as_str().to_owned(),
            psp_status,
            stuck_for,
            cause,
            changed: handled.appended.is_some(),
        };
        if view.is_none() {
            tracing::error!(
                stream_id = %action.stream_id, from_status = %action.from_status,
                to_status = %action.to_status, psp_status = "none", stuck_for = %action.stuck_for,
                cause = %action.cause, order_stream_id = %r.order_id.stream_id(),
                order_status = %order_status.map_or("unchanged", |s| s.as_str()),
                "reconcile orphan refund: never reached the PSP (crash between phase 1 and 2); failed, order rolled back; operator attention"
            );
        } else {
            log_action(&action, "refund");
        }
        class.actions.push(action);
        Ok(())
    }
}

fn count(rows: &[StuckRow]) -> u32 {
    u32::try_from(rows.len()).unwrap_or(u32::MAX)
}

fn parse_stream(row: &StuckRow, class: &mut ClassReport) -> Option<StreamId> {
    match StreamId::new(row.stream_id.clone()) {
        Ok(s) => Some(s),
        Err(e) => {
            class.failures.push(ReconcileFailure {
                stream_id: row.stream_id.clone(),
                error: e.to_string(),
            });
            None
        }
    }
}

fn log_action(a: &ReconcileAction, what: &'static str) {
    let psp_status = a.psp_status.as_deref().unwrap_or("none");
    if a.changed {
        tracing::info!(
            stream_id = %a.stream_id, from_status = %a.from_status, to_status = %a.to_status,
            psp_status, stuck_for = %a.stuck_for, cause = %a.cause,
            "reconcile {what} synced from live PSP status"
        );
    } else {
        tracing::info!(
            stream_id = %a.stream_id, from_status = %a.from_status, to_status = %a.to_status,
            psp_status, stuck_for = %a.stuck_for, cause = %a.cause,
            "reconcile {what} still in flight at the PSP; unchanged"
        );
    }
}
