//! The conformance suite: one set of behaviour tests every backend runs
//! unchanged, through [`conformance_suite!`](crate::conformance_suite).
//!
//! A backend's test file does:
//!
//! ```ignore
//! mod postgres {
//!     ledger_store::conformance_suite!(crate::fresh_store().await);
//! }
//! ```
//!
//! and every case shows up by name (`postgres::read_all_is_gap_safe…`).

use async_trait::async_trait;
use ledger_core::ids::StreamId;
use ledger_core::{ExpectedVersion, NewEvent};

use crate::{AppendResult, EventStore, StoreError};

/// An append whose transaction has written its rows but not yet committed.
#[async_trait]
pub trait HeldAppend: Send {
    async fn commit(self: Box<Self>) -> Result<AppendResult, StoreError>;
    async fn rollback(self: Box<Self>) -> Result<(), StoreError>;
}

/// What the suite needs beyond [`EventStore`] to inject faults.
#[async_trait]
pub trait ConformanceBackend: EventStore + Sized {
    /// Starts an append in its own transaction and returns once its rows are
    /// written but uncommitted (on backends with a single writer, once it
    /// holds the write lock). Other writers may proceed or queue, as the
    /// backend allows; readers must not see the held events until commit.
    async fn begin_held_append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Box<dyn HeldAppend>, StoreError>;

    /// Flips one byte of the stored payload of `stream`@`version`, bypassing
    /// every check (simulates disk or operator tampering).
    async fn tamper_payload(&self, stream: &StreamId, version: u64) -> Result<(), StoreError>;

    /// Deletes the stored row of `stream`@`version`, bypassing every check.
    async fn delete_event(&self, stream: &StreamId, version: u64) -> Result<(), StoreError>;


    /// Whether concurrent writers really run concurrently (Postgres) or queue
    /// behind one write lock (SQLite, memory). The gap test adapts its
    /// schedule, never its assertions.
    fn concurrent_writers(&self) -> bool;
}
