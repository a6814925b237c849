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
//! 4. indeterminate transfers and reversals (`indeterminate` /
//!    `reversal_indeterminate` longer than [`INDETERMINATE_SWEEP_AFTER`]:
//!    a create whose answer was lost) → Stripe's list read → found: recorded;
//!    proven absent: back to `pending` / `reversal_pending` under the next
//!    attempt, with its work queued (the reconciler itself never creates).
//!
//! A PSP read error leaves the row for the next tick; an answer that cannot
//! be read is recorded once as an anomaly and the row is left for an
//! operator (never read again by the sweep). Every action logs one line
//! whose message starts with `reconcile`, with `stream_id`, `from_status`,
//! `to_status`, `psp_status`, `stuck_for` and `cause`.
//!
//! [`Reconciler::reconcile_provider`] goes the other way: it lists Stripe's
//! transfers of a time window and their reversals and matches each against
//! the ledger. An object the ledger does not know, a second transfer for
//! one share, or another amount is a `TransferAnomalyRecorded` on the
//! share's stream (which `ledger verify` reports as a finding); an object
//! naming no share of the ledger is reported and logged.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use std::time::Duration;

use ledger_core::ids::{PspRefundId, StreamId, TransferId, psp_refund_id_for};
use ledger_core::order::{Order, OrderCommand, OrderStatus};
use ledger_core::refund::{Refund, RefundCommand, RefundStatus};
use ledger_core::transfer::{SellerTransfer, TransferAnomalyKind, TransferStatus};
use ledger_core::{Amount, Source};
use ledger_psp::{PayoutReader, PspStatusReader, TransferFilter, TransferView};
use ledger_store::work::WorkOrder;
use serde::Serialize;

use super::candidates::{StuckCandidates, StuckRow};
use super::config::{RECONCILE_BATCH_LIMIT_MAX, ReconcileSettings};
use super::refund::{has_unreadable, record_unreadable, settle_refund_on_order};
use super::resolve::{META_REFUND_ID, META_TRANSFER_ID, record_anomaly};
use super::reversal::{self, ReversalResolved};
use super::transfer::{self, Resolved};
use super::worker::WorkerKind;
use super::{Actor, Ctx, ManagerError, before, human_duration};

/// How long a transfer or reversal stays `indeterminate` before the sweep
/// reads Stripe for it: its own worker reads after
/// [`INDETERMINATE_READ_DELAY`](super::resolve::INDETERMINATE_READ_DELAY);
/// the sweep catches what a crash or a long outage left behind.
pub const INDETERMINATE_SWEEP_AFTER: Duration = Duration::from_secs(5 * 60);

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
    /// Indeterminate transfers and reversals.
    pub transfers: ClassReport,
}

impl ReconcileReport {
    /// Rows whose stream this pass changed.
    pub fn changed(&self) -> usize {
        [&self.orders, &self.refunds, &self.orphans, &self.transfers]
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
    payouts: Arc<dyn PayoutReader>,
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
        payouts: Arc<dyn PayoutReader>,
        candidates: Arc<dyn StuckCandidates>,
        settings: ReconcileSettings,
    ) -> Reconciler {
        Reconciler {
            ctx,
            psp,
            payouts,
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
        let rows = self
            .candidates
            .indeterminate_transfers(before(now, INDETERMINATE_SWEEP_AFTER), limit)
            .await?;
        report.transfers.looked_at = count(&rows);
        for row in rows {
            self.indeterminate(&row, now, &mut report.transfers).await?;
        }
        Ok(report)
    }

    /// Reads Stripe for one indeterminate transfer or reversal and records
    /// what it found; queues the next attempt's work when it proved absence.
    async fn indeterminate(
        &self,
        row: &StuckRow,
        now: DateTime<Utc>,
        class: &mut ClassReport,
    ) -> Result<(), ManagerError> {
        let Some(stream) = parse_stream(row, class) else {
            return Ok(());
        };
        let Some(t) = self
            .ctx
            .load::<SellerTransfer>(&stream)
            .await?
            .state
            .transfer
        else {
            class.skipped += 1;
            return Ok(());
        };
        let unreadable = t.has_open_anomaly(TransferAnomalyKind::UnreadableAnswer);
        let indeterminate = matches!(
            t.status,
            TransferStatus::Indeterminate | TransferStatus::ReversalIndeterminate
        );
        if !indeterminate || unreadable {
            class.skipped += 1;
            return Ok(());
        }
        let stuck_for = human_duration(now - t.status_since);
        let (outcome, manager) = if t.status == TransferStatus::Indeterminate {
            let resolved =
                transfer::resolve(&self.ctx, &*self.payouts, "reconcile", ACTOR, &t, now).await;
            let outcome = resolved.map(|r| match r {
                Resolved::Found(id) => (Some(id), "found".to_owned()),
                Resolved::Absent { attempt } => (None, format!("absent; attempt {attempt}")),
                Resolved::Anomaly(kind) => (None, format!("anomaly {}", kind.as_str())),
                Resolved::NotIndeterminate => (None, "not indeterminate".to_owned()),
            });
            (outcome, WorkerKind::Transfer)
        } else {
            let resolved = reversal::resolve(&self.ctx, &*self.payouts, ACTOR, &t, now).await;
            let outcome = resolved.map(|r| match r {
                ReversalResolved::Found(id) => (Some(id), "found".to_owned()),
                ReversalResolved::Absent { attempt } => {
                    (None, format!("absent; attempt {attempt}"))
                }
                ReversalResolved::Anomaly(kind) => (None, format!("anomaly {}", kind.as_str())),
                ReversalResolved::NotIndeterminate => (None, "not indeterminate".to_owned()),
            });
            (outcome, WorkerKind::Reversal)
        };
        let (found, what) = match outcome {
            Ok(o) => o,
            Err(e @ (ManagerError::Psp(_) | ManagerError::TooEarly { .. })) => {
                tracing::warn!(
                    stream_id = %stream, from_status = %t.status, stuck_for = %stuck_for,
                    error = %e, "reconcile transfer: reading Stripe failed; row left for the next tick"
                );
                class.failures.push(ReconcileFailure {
                    stream_id: stream.to_string(),
                    error: e.to_string(),
                });
                return Ok(());
            }
            Err(other) => return Err(other),
        };
        let after = self
            .ctx
            .load::<SellerTransfer>(&stream)
            .await?
            .state
            .status()
            .unwrap_or(t.status);
        if matches!(
            after,
            TransferStatus::Pending | TransferStatus::ReversalPending
        ) {
            self.ctx
                .work
                .schedule(&[WorkOrder {
                    manager: manager.name().to_owned(),
                    stream_id: stream.to_string(),
                    due_at: now,
                }])
                .await?;
        }
        let action = ReconcileAction {
            stream_id: stream.to_string(),
            from_status: t.status.as_str().to_owned(),
            to_status: after.as_str().to_owned(),
            psp_status: found,
            stuck_for,
            cause: format!("reconcile:{}:read:{what}", t.transfer_id),
            changed: after != t.status,
        };
        log_action(&action, "transfer");
        class.actions.push(action);
        Ok(())
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
        // An answer about it could not be read: it waits for an operator.
        if has_unreadable(&r) {
            class.skipped += 1;
            return Ok(());
        }
        let stuck_for = human_duration(now - r.status_since);
        let psp_refund_id: PspRefundId = r
            .psp_refund_id
            .clone()
            .unwrap_or_else(|| psp_refund_id_for(r.refund_id));
        let view = match self.psp.get_refund_status(&psp_refund_id).await {
            Ok(view) => Some(view),
            Err(e) if orphan_class && e.is_not_found() => None,
            Err(e) if !e.is_transient() && !e.is_not_found() => {
                record_unreadable(&self.ctx, &stream, ACTOR, "get_refund", &e.to_string(), now)
                    .await?;
                class.failures.push(ReconcileFailure {
                    stream_id: stream.to_string(),
                    error: e.to_string(),
                });
                return Ok(());
            }
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

/// What one provider sweep found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProviderReport {
    /// `created[gte]` of the window, unix seconds.
    pub from: i64,
    /// `created[lt]` of the window, unix seconds.
    pub to: i64,
    pub transfers_listed: u32,
    pub reversals_listed: u32,
    /// Objects that match what the ledger records.
    pub matched: u32,
    /// Objects the ledger has not recorded yet but is still working on (a
    /// payout or reversal in flight): not anomalies.
    pub in_flight: u32,
    /// Disagreements, each recorded on its share's stream (or, for an
    /// object naming no share, only here and in the log).
    pub anomalies: Vec<ProviderAnomaly>,
}

impl ProviderReport {
    pub fn is_clean(&self) -> bool {
        self.anomalies.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderAnomaly {
    /// `tr_…` or `trr_…`.
    pub provider_id: String,
    /// The share's stream, when the object names one the ledger has.
    pub stream_id: Option<String>,
    pub kind: String,
    pub detail: String,
    /// False when this anomaly was already recorded by an earlier sweep.
    pub new: bool,
}

impl Reconciler {
    /// Lists Stripe's transfers created in `[from, to)` and the reversals of
    /// each, and matches every object against the ledger (see the module
    /// docs). Read-only at the provider.
    pub async fn reconcile_provider(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<ProviderReport, ManagerError> {
        let mut report = ProviderReport {
            from: from.timestamp(),
            to: to.timestamp(),
            ..ProviderReport::default()
        };
        let filter = TransferFilter {
            transfer_group: None,
            created_gte: Some(report.from),
            created_lt: Some(report.to),
        };
        let listed = self.payouts.list_transfers(&filter).await?;
        report.transfers_listed = count_of(listed.len());
        for view in &listed {
            self.match_transfer(view, now, &mut report).await?;
        }
        let status = if report.is_clean() {
            "clean"
        } else {
            "anomalies"
        };
        tracing::info!(
            from = %from, to = %to, transfers = report.transfers_listed,
            reversals = report.reversals_listed, matched = report.matched,
            in_flight = report.in_flight, anomalies = report.anomalies.len(),
            "reconcile provider: stripe transfers of the window matched against the ledger ({status})"
        );
        Ok(report)
    }

    async fn match_transfer(
        &self,
        view: &TransferView,
        now: DateTime<Utc>,
        report: &mut ProviderReport,
    ) -> Result<(), ManagerError> {
        let named = view
            .metadata
            .get(META_TRANSFER_ID)
            .and_then(|id| id.parse::<uuid::Uuid>().ok())
            .map(TransferId);
        let loaded = match named {
            Some(id) => {
                self.ctx
                    .load::<SellerTransfer>(&id.stream_id())
                    .await?
                    .state
                    .transfer
            }
            None => None,
        };
        let Some(t) = loaded else {
            let detail = format!(
                "stripe transfer {} ({}) names no transfer of this ledger (metadata transfer_id {:?})",
                view.id,
                view.amount,
                view.metadata.get(META_TRANSFER_ID)
            );
            tracing::error!(
                provider_id = %view.id, amount_minor = view.amount.minor,
                "reconcile provider: {detail}; an operator must look"
            );
            report.anomalies.push(ProviderAnomaly {
                provider_id: view.id.to_string(),
                stream_id: None,
                kind: TransferAnomalyKind::UnknownAtProvider.as_str().to_owned(),
                detail,
                new: true,
            });
            return Ok(());
        };
        let stream = t.transfer_id.stream_id();
        let anomaly = |kind: TransferAnomalyKind, provider_id: String, detail: String| {
            (kind, provider_id, detail)
        };
        let mut found = Vec::new();
        match &t.stripe_transfer_id {
            Some(recorded) if *recorded == view.id => {
                let transferred = Amount::new(t.transferred_minor, t.amount.currency);
                if view.amount != transferred {
                    found.push(anomaly(
                        TransferAnomalyKind::AmountMismatch,
                        view.id.to_string(),
                        format!(
                            "stripe transfer {} moved {}, the ledger records {transferred}",
                            view.id, view.amount
                        ),
                    ));
                } else {
                    report.matched += 1;
                }
                if view.amount_reversed.minor > 0 {
                    let reversals = self.payouts.list_reversals(&view.id).await?;
                    report.reversals_listed += count_of(reversals.len());
                    for r in reversals {
                        if t.stripe_reversal_ids.contains(&r.id) {
                            report.matched += 1;
                            continue;
                        }
                        let pending_for_it = t.pending_reversal.as_ref().is_some_and(|p| {
                            r.metadata.get(META_REFUND_ID) == Some(&p.refund_id.to_string())
                        });
                        if pending_for_it {
                            report.in_flight += 1;
                            continue;
                        }
                        // Recorded without its id (`TransferAlreadyReversed`):
                        // the money is accounted for when the totals agree.
                        if view.amount_reversed.minor == t.reversed_minor {
                            report.matched += 1;
                            continue;
                        }
                        found.push(anomaly(
                            TransferAnomalyKind::UnknownAtProvider,
                            r.id.to_string(),
                            format!(
                                "stripe reversal {} ({}) of {} is not recorded by the ledger",
                                r.id, r.amount, view.id
                            ),
                        ));
                    }
                }
            }
            Some(recorded) => found.push(anomaly(
                TransferAnomalyKind::DuplicateAtProvider,
                view.id.to_string(),
                format!(
                    "stripe holds a second transfer {} ({}) for this share; the ledger records {recorded}",
                    view.id, view.amount
                ),
            )),
            None if matches!(
                t.status,
                TransferStatus::Pending | TransferStatus::Indeterminate
            ) =>
            {
                report.in_flight += 1;
            }
            None => found.push(anomaly(
                TransferAnomalyKind::UnknownAtProvider,
                view.id.to_string(),
                format!(
                    "stripe transfer {} ({}) exists but the ledger's transfer is {}",
                    view.id, view.amount, t.status
                ),
            )),
        }
        for (kind, provider_id, detail) in found {
            // An operator resolved it already (reversed the second payout,
            // say): it no longer disagrees with the ledger's books.
            if t.resolved_anomalies
                .contains(&(kind, Some(provider_id.clone())))
            {
                report.matched += 1;
                continue;
            }
            let new = record_anomaly(&self.ctx, &t, ACTOR, kind, Some(&provider_id), &detail, now)
                .await?;
            report.anomalies.push(ProviderAnomaly {
                provider_id,
                stream_id: Some(stream.to_string()),
                kind: kind.as_str().to_owned(),
                detail,
                new,
            });
        }
        Ok(())
    }
}

fn count_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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
