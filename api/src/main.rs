//! `ledger`: thin by design; everything lives in the library.

/// mimalloc instead of the system (glibc) allocator, for Rust allocations
/// and (feature `override`) for the bundled SQLite's `malloc` too. The bulk
/// paths (a read-model rebuild, `verify`, the feed readers) allocate in one
/// thread and free in another (pages decoded on a reader task, rows bound on
/// the SQLite worker thread), and SQLite mixes small value copies with
/// page-sized buffers; glibc spent about a quarter of a rebuild's CPU in
/// `malloc_consolidate`/`unlink_chunk`/`_int_malloc` (perf, 2-core box).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ledger_api::main_entry()
}
