//! In-memory event store (placeholder until the store helper lands it).

/// In-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore;
