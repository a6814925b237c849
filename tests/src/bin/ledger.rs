//! The real `ledger` program, built inside this package so the end-to-end
//! tests can spawn it through `CARGO_BIN_EXE_ledger`.

fn main() -> std::process::ExitCode {
    ledger_api::main_entry()
}
