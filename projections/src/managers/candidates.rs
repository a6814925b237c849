//! Where the reconciler finds its rows. The port is [`StuckCandidates`];
//! [`QueryCandidates`] reads the read models through the [`QueryStore`]
//! (production), [`StreamScanCandidates`] folds every stream from the event
//! store (tests and stores without read models).
//!
//! A candidate is only a hint: the reconciler re-loads its stream and acts
//! on what the stream says, so a lagging read model can never make it act
//! on a terminal order or refund.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_core::Checkpoint;
use ledger_core::events::StreamKind;
use ledger_core::ids::StreamId;
use ledger_core::order::{Order, OrderStatus};
use ledger_core::refund::{Refund, RefundStatus};
use ledger_core::transfer::{SellerTransfer, TransferStatus};
use ledger_store::handle::load;
use ledger_store::{EventStore, READ_BATCH_MAX};
use serde::{Deserialize, Serialize};

use super::ManagerError;
use crate::query::{QueryStore, SqlParam};
use crate::readmodel::Dialect;
use crate::readmodel::fold::format_ts;

/// One stuck row as the read side sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckRow {
    /// `order-{id}` or `refund-{id}`.
    pub stream_id: String,
    pub status: String,
    pub status_since: DateTime<Utc>,
    /// The order's `payment_id` or the refund's Hyperswitch refund id.
    pub psp_id: Option<String>,
}

#[async_trait]
pub trait StuckCandidates: Send + Sync + std::fmt::Debug {
    /// `pending` orders with a non-empty `payment_id`, `status_since <
    /// older_than`, oldest first, at most `limit`.
    async fn stuck_orders(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError>;
    /// `submitted` refunds (they have a Hyperswitch refund id),
    /// `status_since < older_than`, oldest first, at most `limit`.
    async fn stuck_refunds(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError>;
    /// `requested` refunds with no Hyperswitch refund id, `status_since <
    /// older_than`, oldest first, at most `limit`.
    async fn orphan_refunds(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError>;
    /// `indeterminate` and `reversal_indeterminate` transfers (a Stripe
    /// create whose answer was lost), `status_since < older_than`, oldest
    /// first, at most `limit`.
    async fn indeterminate_transfers(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError>;
}

/// Candidates from `order_view` / `refund_view` (indexed on
/// `(status, status_since)`).
#[derive(Debug, Clone)]
pub struct QueryCandidates {
    query: Arc<dyn QueryStore>,
}

impl QueryCandidates {
    pub fn new(query: Arc<dyn QueryStore>) -> QueryCandidates {
        QueryCandidates { query }
    }

    async fn rows(
        &self,
        table_sql: &Sql,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError> {
        let dialect = self.query.dialect();
        let sql = table_sql.render(dialect);
        let cutoff = match dialect {
            // Fixed-width text, as the SQLite read models store it.
            Dialect::Sqlite => format_ts(&older_than),
            Dialect::Postgres => older_than.to_rfc3339(),
        };
        let params = [SqlParam::Text(cutoff), SqlParam::Int(i64::from(limit))];
        let rows = self
            .query
            .query_json(&sql, &params)
            .await
            .map_err(|e| ManagerError::ReadModel(e.to_string()))?;
        rows.iter()
            .map(|text| {
                let raw: RawRow = serde_json::from_str(text)
                    .map_err(|e| ManagerError::ReadModel(format!("{e}: {text}")))?;
                raw.into_row(table_sql.prefix)
            })
            .collect()
    }
}

/// A row as the query returns it.
#[derive(Deserialize)]
struct RawRow {
    id: String,
    status: String,
    status_since: String,
    psp_id: Option<String>,
}

impl RawRow {
    fn into_row(self, prefix: &str) -> Result<StuckRow, ManagerError> {
        let status_since = DateTime::parse_from_rfc3339(&self.status_since)
            .or_else(|_| DateTime::parse_from_str(&self.status_since, "%Y-%m-%d %H:%M:%S%.f%#z"))
            .map_err(|e| {
                ManagerError::ReadModel(format!("status_since {:?}: {e}", self.status_since))
            })?
            .with_timezone(&Utc);
        Ok(StuckRow {
            stream_id: format!("{prefix}-{}", self.id),
            status: self.status,
            status_since,
            psp_id: self.psp_id,
        })
    }
}

/// One candidate query, both dialects.
struct Sql {
    prefix: &'static str,
    table: &'static str,
    id: &'static str,
    psp_id: &'static str,
    /// Condition after `where`, without the time bound.
    filter: &'static str,
}

impl Sql {
    fn render(&self, dialect: Dialect) -> String {
        let Sql {
            table,
            id,
            psp_id,
            filter,
            ..
        } = self;
        match dialect {
            Dialect::Postgres => format!(
                "select json_build_object('id', {id}, 'status', status, 'status_since', status_since, 'psp_id', {psp_id})::text \
                 from {table} where {filter} and status_since < ($1::text)::timestamptz \
                 order by status_since, {id} limit $2"
            ),
            Dialect::Sqlite => format!(
                "select json_object('id', {id}, 'status', status, 'status_since', status_since, 'psp_id', {psp_id}) \
                 from {table} where {filter} and status_since < ?1 \
                 order by status_since, {id} limit ?2"
            ),
        }
    }
}

const STUCK_ORDERS: Sql = Sql {
    prefix: "order",
    table: "order_view",
    id: "order_id",
    psp_id: "payment_id",
    filter: "status = 'pending' and payment_id is not null and payment_id <> ''",
};

const STUCK_REFUNDS: Sql = Sql {
    prefix: "refund",
    table: "refund_view",
    id: "refund_id",
    psp_id: "hyperswitch_refund_id",
    filter: "status = 'submitted' and hyperswitch_refund_id is not null and hyperswitch_refund_id <> ''",
};

const INDETERMINATE_TRANSFERS: Sql = Sql {
    prefix: "transfer",
    table: "seller_transfer_view",
    id: "transfer_id",
    psp_id: "stripe_transfer_id",
    filter: "status in ('indeterminate', 'reversal_indeterminate')",
};

const ORPHAN_REFUNDS: Sql = Sql {
    prefix: "refund",
    table: "refund_view",
    id: "refund_id",
    psp_id: "hyperswitch_refund_id",
    filter: "status = 'requested' and (hyperswitch_refund_id is null or hyperswitch_refund_id = '')",
};

#[async_trait]
impl StuckCandidates for QueryCandidates {
    async fn stuck_orders(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError> {
        self.rows(&STUCK_ORDERS, older_than, limit).await
    }

    async fn stuck_refunds(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError> {
        self.rows(&STUCK_REFUNDS, older_than, limit).await
    }

    async fn orphan_refunds(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError> {
        self.rows(&ORPHAN_REFUNDS, older_than, limit).await
    }

    async fn indeterminate_transfers(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError> {
        self.rows(&INDETERMINATE_TRANSFERS, older_than, limit).await
    }
}

/// Candidates found by folding every order and refund stream from the event
/// store on each call: O(events) per tick, so for tests and small stores
/// only. Same filters and order as [`QueryCandidates`].
#[derive(Clone)]
pub struct StreamScanCandidates {
    events: Arc<dyn EventStore>,
}

impl std::fmt::Debug for StreamScanCandidates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamScanCandidates")
            .finish_non_exhaustive()
    }
}

impl StreamScanCandidates {
    pub fn new(events: Arc<dyn EventStore>) -> StreamScanCandidates {
        StreamScanCandidates { events }
    }

    /// Every stream of `kind`, in first-seen order.
    async fn streams(&self, kind: StreamKind) -> Result<Vec<StreamId>, ManagerError> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        let mut after = Checkpoint::START;
        loop {
            let page = self.events.read_all(after, READ_BATCH_MAX).await?;
            let Some(last) = page.last() else {
                return Ok(out);
            };
            after = last.checkpoint();
            for e in &page {
                if StreamKind::of(&e.stream_id).ok() == Some(kind)
                    && seen.insert(e.stream_id.clone())
                {
                    out.push(e.stream_id.clone());
                }
            }
        }
    }

    async fn refunds(
        &self,
        status: RefundStatus,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError> {
        let mut rows = Vec::new();
        for stream in self.streams(StreamKind::Refund).await? {
            let loaded = load::<Refund, _>(&*self.events, &stream)
                .await
                .map_err(|e| super::handle_error(&stream, "load", e))?;
            if let Some(r) = loaded.state.refund
                && r.status == status
                && r.status_since < older_than
            {
                rows.push(StuckRow {
                    stream_id: stream.to_string(),
                    status: r.status.as_str().to_owned(),
                    status_since: r.status_since,
                    psp_id: r.psp_refund_id.map(|p| p.to_string()),
                });
            }
        }
        Ok(oldest(rows, limit))
    }
}

fn oldest(mut rows: Vec<StuckRow>, limit: u32) -> Vec<StuckRow> {
    rows.sort_by(|a, b| (a.status_since, &a.stream_id).cmp(&(b.status_since, &b.stream_id)));
    rows.truncate(limit as usize);
    rows
}

#[async_trait]
impl StuckCandidates for StreamScanCandidates {
    async fn stuck_orders(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError> {
        let mut rows = Vec::new();
        for stream in self.streams(StreamKind::Order).await? {
            let loaded = load::<Order, _>(&*self.events, &stream)
                .await
                .map_err(|e| super::handle_error(&stream, "load", e))?;
            if let Some(o) = loaded.state.order
                && o.status == OrderStatus::Pending
                && o.status_since < older_than
                && let Some(payment_id) = o.payment_id.filter(|p| !p.as_str().is_empty())
            {
                rows.push(StuckRow {
                    stream_id: stream.to_string(),
                    status: o.status.as_str().to_owned(),
                    status_since: o.status_since,
                    psp_id: Some(payment_id.to_string()),
                });
            }
        }
        Ok(oldest(rows, limit))
    }

    async fn stuck_refunds(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError> {
        self.refunds(RefundStatus::Submitted, older_than, limit)
            .await
    }

    async fn orphan_refunds(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError> {
        self.refunds(RefundStatus::Requested, older_than, limit)
            .await
    }

    async fn indeterminate_transfers(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StuckRow>, ManagerError> {
        let mut rows = Vec::new();
        for stream in self.streams(StreamKind::Transfer).await? {
            let loaded = load::<SellerTransfer, _>(&*self.events, &stream)
                .await
                .map_err(|e| super::handle_error(&stream, "load", e))?;
            if let Some(t) = loaded.state.transfer
                && matches!(
                    t.status,
                    TransferStatus::Indeterminate | TransferStatus::ReversalIndeterminate
                )
                && t.status_since < older_than
            {
                rows.push(StuckRow {
                    stream_id: stream.to_string(),
                    status: t.status.as_str().to_owned(),
                    status_since: t.status_since,
                    psp_id: t.stripe_transfer_id.map(|p| p.to_string()),
                });
            }
        }
        Ok(oldest(rows, limit))
    }
}
