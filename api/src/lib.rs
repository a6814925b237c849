//! The `ledger` CLI (and, later, the HTTP server).
//!
//! API Boundary: everything here is the outer edge. DTOs, argument parsing and
//! presentation live here; decisions live in `ledger-core`, storage in the
//! adapters.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
pub mod bench_http;
pub mod cli;
pub mod config;
pub mod demo;
pub mod export;
pub mod http;
pub mod logging;
pub mod managers;
pub mod project;
pub mod rebuild;
pub mod reconcile;
pub mod replay;
pub mod serve;
pub mod store;
pub mod trial_balance;
pub mod verify;

use std::process::ExitCode;

use clap::Parser;

/// The whole program: parse, set up logging, run, map the outcome to an exit
/// code. Shared by the `ledger` binary and the end-to-end test binary.
pub fn main_entry() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
