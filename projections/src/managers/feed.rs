//! The feed side of the managers: [`WorkFeed`] handlers on the projector
//! runtime, each with its own checkpoint, turning events into work.
//!
//! | feed | event | work |
//! |---|---|---|
//! | `pm.payments` | `OrderPlaced` | `payment` (order), after [`PAYMENT_START_GRACE`] |
//! | `pm.transfers` | `PaymentSucceeded` | `Schedule` each seller's transfer (direct, idempotent), then `transfer` (transfer), now |
//! | | `TransferFailed` | `transfer_retry`, at `next_retry_at` |
//! | | `TransferRetried`, `TransferCompleted` over the amount due | `transfer`, now |
//! | `pm.refunds` | `RefundRequested` (order) | `refund_open` (order), after [`REFUND_OPEN_GRACE`] |
//! | | `RefundRequested` (refund) | `refund` (refund), now |
//! | | `RefundSucceeded` / `RefundFailed` | `refund_settle` (refund), now |
//! | | `RefundCompleted` (order) | `refund_sellers` (order), now |
//! | `pm.reversals` | `TransferReversalRequested` | `reversal` (transfer), now |
//! | | `TransferReversalRetryScheduled` | `reversal`, at `next_retry_at` |
//!
//! **Guarantees:** a batch's orders and its checkpoint are saved in one
//! [`WorkStore::enqueue`], so each feed position schedules its work once; the
//! direct `Schedule` commands run before it and are idempotent, so a batch
//! retried after a crash schedules nothing twice. Events of other types are
//! never decoded, so a new event type cannot stall a feed.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_core::events::AnyEvent;
use ledger_core::order::OrderEvent;
use ledger_core::refund::RefundEvent;
use ledger_core::transfer::TransferEvent;
use ledger_core::{Checkpoint, RecordedEvent, decode_any};
use ledger_store::work::{WorkOrder, WorkStore};

use super::transfer::schedule_transfers;
use super::worker::{PAYMENT_START_GRACE, REFUND_OPEN_GRACE, WorkerKind};
use super::{Actor, Ctx, ManagerError, after};
use crate::runtime::{Handler, HandlerError};

/// Events per feed batch: every relevant event may cost a command (a
/// `Schedule`) before the batch commits, so batches stay small enough to
/// commit every few hundred milliseconds under load.
pub const FEED_BATCH: u32 = 500;

/// Which events a feed turns into work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedKind {
    Payments,
    Transfers,
    Refunds,
    Reversals,
}

impl FeedKind {
    pub const ALL: [FeedKind; 4] = [
        FeedKind::Payments,
        FeedKind::Transfers,
        FeedKind::Refunds,
        FeedKind::Reversals,
    ];

    /// The checkpoint name.
    pub fn name(self) -> &'static str {
        match self {
            FeedKind::Payments => "pm.payments",
            FeedKind::Transfers => "pm.transfers",
            FeedKind::Refunds => "pm.refunds",
            FeedKind::Reversals => "pm.reversals",
        }
    }

    fn wants(self, event_type: &str) -> bool {
        let types: &[&str] = match self {
            FeedKind::Payments => &["OrderPlaced"],
            FeedKind::Transfers => &[
                "PaymentSucceeded",
                "TransferFailed",
                "TransferRetried",
                "TransferCompleted",
                "TransferOutcomeUnknown",
                "TransferAttemptAbsent",
            ],
            FeedKind::Refunds => &[
                "RefundRequested",
                "RefundSucceeded",
                "RefundFailed",
                "RefundCompleted",
            ],
            FeedKind::Reversals => &[
                "TransferReversalRequested",
                "TransferReversalRetryScheduled",
                "TransferReversalOutcomeUnknown",
                "TransferReversalAttemptAbsent",
            ],
        };
        types.contains(&event_type)
    }
}

/// One feed handler.
pub struct WorkFeed {
    kind: FeedKind,
    ctx: Arc<Ctx>,
    /// The stored checkpoint, once loaded (`Some(None)`: none stored yet).
    stored: Option<Option<Checkpoint>>,
}

impl std::fmt::Debug for WorkFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkFeed")
            .field("name", &self.kind.name())
            .field("stored", &self.stored)
            .finish_non_exhaustive()
    }
}

impl WorkFeed {
    pub(crate) fn new(kind: FeedKind, ctx: Arc<Ctx>) -> WorkFeed {
        WorkFeed {
            kind,
            ctx,
            stored: None,
        }
    }

    fn work(&self) -> &dyn WorkStore {
        &*self.ctx.work
    }

    /// The work one event asks for (running its direct commands first).
    async fn route(
        &self,
        e: &RecordedEvent,
        event: &AnyEvent,
        now: DateTime<Utc>,
    ) -> Result<Vec<WorkOrder>, ManagerError> {
        let order = |kind: WorkerKind, stream_id: String, due_at: DateTime<Utc>| WorkOrder {
            manager: kind.name().to_owned(),
            stream_id,
            due_at,
        };
        let here = e.stream_id.to_string();
        Ok(match event {
            AnyEvent::Order(OrderEvent::OrderPlaced { at, .. }) => {
                vec![order(
                    WorkerKind::Payment,
                    here,
                    after(*at, PAYMENT_START_GRACE),
                )]
            }
            AnyEvent::Order(OrderEvent::PaymentSucceeded {
                order_id,
                currency,
                sellers,
                at,
                ..
            }) => {
                let actor = Actor::worker(WorkerKind::Transfer.name());
                let ids = schedule_transfers(&self.ctx, *order_id, *currency, sellers, *at, actor)
                    .await?;
                ids.iter()
                    .map(|id| order(WorkerKind::Transfer, id.stream_id().to_string(), now))
                    .collect()
            }
            AnyEvent::Transfer(TransferEvent::TransferFailed { next_retry_at, .. }) => {
                vec![order(WorkerKind::TransferRetry, here, *next_retry_at)]
            }
            // Back to `pending` under a new key (a read proved the last
            // attempt made nothing), whoever recorded it: pay it.
            AnyEvent::Transfer(
                TransferEvent::TransferRetried { .. } | TransferEvent::TransferAttemptAbsent { .. },
            ) => {
                vec![order(WorkerKind::Transfer, here, now)]
            }
            // A lost answer is read once it is old enough, even if the
            // process that recorded it died before rescheduling its row.
            AnyEvent::Transfer(TransferEvent::TransferOutcomeUnknown { at, .. }) => {
                vec![order(
                    WorkerKind::Transfer,
                    here,
                    super::after(*at, super::resolve::INDETERMINATE_READ_DELAY),
                )]
            }
            AnyEvent::Transfer(TransferEvent::TransferReversalOutcomeUnknown { at, .. }) => {
                vec![order(
                    WorkerKind::Reversal,
                    here,
                    super::after(*at, super::resolve::INDETERMINATE_READ_DELAY),
                )]
            }
            AnyEvent::Transfer(TransferEvent::TransferReversalAttemptAbsent { .. }) => {
                vec![order(WorkerKind::Reversal, here, now)]
            }
            AnyEvent::Transfer(TransferEvent::TransferCompleted {
                amount, amount_due, ..
            }) if amount.minor > amount_due.minor => vec![order(WorkerKind::Transfer, here, now)],
            AnyEvent::Order(OrderEvent::RefundRequested { at, .. }) => {
                vec![order(
                    WorkerKind::RefundOpen,
                    here,
                    after(*at, REFUND_OPEN_GRACE),
                )]
            }
            AnyEvent::Refund(RefundEvent::RefundRequested { .. }) => {
                vec![order(WorkerKind::Refund, here, now)]
            }
            AnyEvent::Refund(
                RefundEvent::RefundSucceeded { .. } | RefundEvent::RefundFailed { .. },
            ) => {
                vec![order(WorkerKind::RefundSettle, here, now)]
            }
            AnyEvent::Order(OrderEvent::RefundCompleted { .. }) => {
                vec![order(WorkerKind::RefundSellers, here, now)]
            }
            AnyEvent::Transfer(TransferEvent::TransferReversalRequested { .. }) => {
                vec![order(WorkerKind::Reversal, here, now)]
            }
            AnyEvent::Transfer(TransferEvent::TransferReversalRetryScheduled {
                next_retry_at,
                ..
            }) => vec![order(WorkerKind::Reversal, here, *next_retry_at)],
            _ => Vec::new(),
        })
    }
}

#[async_trait]
impl Handler for WorkFeed {
    fn name(&self) -> String {
        self.kind.name().to_owned()
    }

    async fn checkpoint(&mut self) -> Result<Checkpoint, HandlerError> {
        let stored = match self.stored {
            Some(stored) => stored,
            None => {
                let stored = self.work().load_checkpoint(self.kind.name()).await?;
                self.stored = Some(stored);
                stored
            }
        };
        Ok(stored.unwrap_or(Checkpoint::START))
    }

    async fn handle(&mut self, events: &[RecordedEvent]) -> Result<(), HandlerError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let from = match self.stored {
            Some(stored) => stored,
            None => self.work().load_checkpoint(self.kind.name()).await?,
        };
        let now = self.ctx.clock.now();
        let mut orders = Vec::new();
        for e in events.iter().filter(|e| self.kind.wants(&e.event_type)) {
            let event = decode_any(&e.stream_id, &e.event_type, e.schema_version, &e.payload)
                .map_err(|err| HandlerError::Poison {
                    stream: e.stream_id.to_string(),
                    version: e.stream_version,
                    reason: err.to_string(),
                })?;
            match self.route(e, &event, now).await {
                Ok(more) => orders.extend(more),
                Err(err) if err.is_transient() => {
                    self.stored = None;
                    return Err(HandlerError::Transient(err.to_string()));
                }
                Err(err) => {
                    return Err(HandlerError::Poison {
                        stream: e.stream_id.to_string(),
                        version: e.stream_version,
                        reason: err.to_string(),
                    });
                }
            }
        }
        let to = last.checkpoint();
        match self
            .work()
            .enqueue(self.kind.name(), from, to, &orders)
            .await
        {
            Ok(()) => {
                self.stored = Some(Some(to));
                Ok(())
            }
            Err(e) => {
                // Someone else moved the checkpoint (or the store failed):
                // reload it before the next batch.
                self.stored = None;
                Err(HandlerError::Transient(e.to_string()))
            }
        }
    }
}
