//! The conformance suite against the in-memory store.

mod memory {
    ledger_store::conformance_suite!(ledger_store::MemoryStore::new());
}
