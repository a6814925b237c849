//! The conformance suite against the in-memory store.

mod memory {
    ledger_store::conformance_suite!(ledger_store::MemoryStore::new());
}

/// The same suite with every append going through the group commit.
mod memory_grouped {
    ledger_store::conformance_suite!(ledger_store::conformance::Grouped::new(
        ledger_store::MemoryStore::new()
    ));
}
