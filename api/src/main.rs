//! `ledger`: thin by design; everything lives in the library.

fn main() -> std::process::ExitCode {
    ledger_api::main_entry()
}
