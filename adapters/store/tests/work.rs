//! The shared work-queue cases against the in-memory work store.

mod memory {
    ledger_store::work_suite!(ledger_store::work::MemoryWorkStore::new());
}
