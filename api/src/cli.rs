//! Command-line interface.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bench::{self, AppendBenchOptions};
use crate::logging::LogFormat;
use crate::replay;
use crate::store::open_migrated;

#[derive(Debug, Parser)]
#[command(
    name = "ledger",
    version,
    about = "Event-sourced ledger for a digital-goods marketplace"
)]
pub struct Cli {
    /// Where events live: unset → embedded SQLite at ./data/ledger.db;
    /// postgres://user@host/db → Postgres; sqlite://path → that SQLite file.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Log format on stderr.
    #[arg(long, env = "LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations (also done at start-up).
    Migrate,
    /// Print a stream's history and the folded state after each event.
    Replay(ReplayArgs),
    /// Record one small marketplace day through the real command path
    /// (simulated PSP outcomes), then print the trial balance.
    Demo(DemoArgs),
    /// Measure throughput and latency against a same-run baseline.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Stream id, e.g. order-0d9c…, refund-…, transfer-….
    pub stream_id: String,
    /// Print JSON lines instead of the human layout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Names the day; ids derive from it, so re-running the same day writes
    /// nothing new. Defaults to today's date.
    #[arg(long)]
    pub day: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Ledger append path vs raw single-row INSERT through the same pool.
    Append(AppendArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchStore {
    Postgres,
    Sqlite,
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// Backend to measure. Postgres uses --database-url (or the local test
    /// server) in a scratch schema `ledger_bench`; SQLite a scratch file.
    #[arg(long, value_enum)]
    pub store: BenchStore,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub writers: u32,
    /// Seconds per measured path (split into two alternating rounds).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let database_url = cli.database_url.as_deref();
    match cli.command {
        Command::Migrate => {
            let (url, _backend) = open_migrated(database_url).await?;
            tracing::info!(store = %url.describe(), "migrations applied");
            println!("migrations applied to {}", url.describe());
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(args) => {
            let (_, backend) = open_migrated(database_url).await?;
            replay::run(backend.events(), &args.stream_id, args.json).await
        }
        Command::Demo(args) => {
            let (url, backend) = open_migrated(database_url).await?;
            let day = args
                .day
                .unwrap_or_else(|| chrono::Utc::now().format("%Y-%m-%d").to_string());
            println!("store: {}", url.describe());
            crate::demo::run(backend.events(), &day).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Append(args)) => {
            let options = AppendBenchOptions {
                writers: args.writers,
                duration: Duration::from_secs(args.duration),
            };
            bench::append(args.store, database_url, options).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
