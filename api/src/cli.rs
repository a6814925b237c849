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
    /// Run the HTTP API, the projectors and the workers (config from env:
    /// APP_ENV, LISTEN_ADDR, LEDGER_API_TOKEN, … — see README).
    Serve,
    /// Apply pending database migrations (also done at start-up).
    Migrate,
    /// Print a stream's history and the folded state after each event.
    Replay(ReplayArgs),
    /// One marketplace day through the whole system (HTTP API, PSP fake,
    /// process managers, reconciler), then the trial balance and `verify`.
    Demo(DemoArgs),
    /// Measure throughput and latency against a same-run baseline.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Audit every stream: hash chains, history re-validation through the
    /// current core, journal invariants. Exits 0 clean, 1 with findings (one
    /// FINDING line each), 2 when it could not run (usage, store unreachable).
    Verify(VerifyArgs),
    /// Stored events, byte-exact with their hashes, for auditors.
    Export(ExportArgs),
    /// The journal summed per account and currency.
    TrialBalance(TrialBalanceArgs),
    /// Rebuild read models from position 0 into shadow tables, then swap
    /// them in atomically (live reads keep working meanwhile).
    Rebuild(RebuildArgs),
    /// Run every read-model projection until Ctrl-C, logging lag.
    Project(ProjectArgs),
    /// Force-sync stuck orders and refunds with the PSP and fail orphan
    /// refunds (RECONCILE_*): one pass with `--once`, else every
    /// RECONCILE_INTERVAL until Ctrl-C. With `--provider`: match Stripe's
    /// transfers of a window against the ledger (exit 0 clean, 1 anomalies,
    /// 2 error). Needs real PSP keys.
    Reconcile(ReconcileArgs),
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Run one pass, print what it did, exit.
    #[arg(long, conflicts_with = "provider")]
    pub once: bool,
    /// List Stripe's transfers created in a window (default the last 24
    /// hours) and their reversals, and match each against the ledger: one
    /// ANOMALY line per disagreement (recorded on the share's stream), then
    /// a summary. Exit 0 clean, 1 anomalies, 2 error.
    #[arg(long)]
    pub provider: bool,
    /// With --provider: the window is this long, up to now (`24h`, `90m`;
    /// at most 31 days).
    #[arg(long, requires = "provider", conflicts_with_all = ["from", "to"], value_parser = parse_since)]
    pub since: Option<Duration>,
    /// With --provider: the window's start (RFC3339, inclusive); default
    /// 24 hours before --to.
    #[arg(long, requires = "provider", value_parser = parse_instant)]
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// With --provider: the window's end (RFC3339, exclusive); default now.
    #[arg(long, requires = "provider", value_parser = parse_instant)]
    pub to: Option<chrono::DateTime<chrono::Utc>>,
}

fn parse_since(value: &str) -> Result<Duration, String> {
    match crate::config::parse_go_duration(value) {
        Ok(d) if d.is_zero() => Err("the window cannot be empty".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (e.g. 24h, 90m)")),
    }
}

fn parse_instant(value: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("not an RFC3339 time ({e}), e.g. 2026-12-08T00:00:00Z"))
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// `all`, or one of: orders, refunds, transfers, journal, anomalies.
    pub projection: String,
}

#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// Catch up to the head, then exit.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Also rebuild each live read model into its shadow (up to its live
    /// checkpoint) and report every row that differs.
    #[arg(long)]
    pub projections: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub format: ExportFormat,
    /// Only this stream.
    #[arg(long)]
    pub stream: Option<String>,
    /// Only events at or after this global position.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
}

#[derive(Debug, Args)]
pub struct TrialBalanceArgs {
    /// A global position (inclusive) or an RFC3339 time (`recorded_at`,
    /// inclusive).
    #[arg(long)]
    pub as_of: Option<String>,
    /// Print JSON lines instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Stream id, e.g. order-0d9c…, refund-…, transfer-….
    pub stream_id: String,
    /// Print JSON lines instead of the human layout.
    #[arg(long)]
    pub json: bool,
    /// Only the state as of a global position or RFC3339 time.
    #[arg(long)]
    pub as_of: Option<String>,
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
    /// Generate a realistic history, then time a full read-model rebuild and
    /// a verify pass beside a raw batched INSERT of as many rows.
    Project(BenchProjectArgs),
    /// POST /v1/orders and signed webhooks over loopback HTTP vs raw
    /// single-row INSERT through the same pool, in the same run.
    Http(HttpBenchArgs),
}

#[derive(Debug, Args)]
pub struct HttpBenchArgs {
    /// Backend to measure (scratch schema or file, as for `bench append`).
    #[arg(long, value_enum)]
    pub store: BenchStore,
    /// Concurrent HTTP clients (and baseline writers).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,
    /// Seconds per timed path.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
}

#[derive(Debug, Args)]
pub struct BenchProjectArgs {
    /// About this many events are generated.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub events: u64,
    /// Backend to measure (scratch schema or file, as for `bench append`).
    #[arg(long, value_enum)]
    pub store: BenchStore,
    /// Seed of the generated history.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
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
            match args.as_of.as_deref() {
                Some(as_of) => {
                    replay::run_as_of(backend.events(), &args.stream_id, as_of, args.json).await
                }
                None => replay::run(backend.events(), &args.stream_id, args.json).await,
            }
        }
        Command::Verify(args) => {
            // 1 means findings, so an error that kept the audit from running
            // (no store, an unreadable feed) must not look like one.
            match verify(database_url, &args).await {
                Ok(code) => Ok(code),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    Ok(ExitCode::from(crate::verify::EXIT_ERROR))
                }
            }
        }
        Command::Export(args) => {
            let (_, backend) = open_migrated(database_url).await?;
            let ExportFormat::Jsonl = args.format;
            crate::export::run(backend.events(), args.stream.as_deref(), args.from).await
        }
        Command::Rebuild(args) => {
            let (_, backend) = open_migrated(database_url).await?;
            crate::rebuild::run(&backend, &args.projection).await
        }
        Command::Serve => crate::serve::run(database_url).await,
        Command::Reconcile(args) if args.provider => Ok(crate::reconcile::run_provider(
            database_url,
            crate::reconcile::ProviderArgs {
                since: args.since,
                from: args.from,
                to: args.to,
            },
        )
        .await),
        Command::Reconcile(args) => crate::reconcile::run(database_url, args.once).await,
        Command::Project(args) => {
            let (_, backend) = open_migrated(database_url).await?;
            crate::project::run(&backend, args.once).await
        }
        Command::TrialBalance(args) => {
            let (_, backend) = open_migrated(database_url).await?;
            crate::trial_balance::run(backend.events(), args.as_of.as_deref(), args.json).await
        }
        Command::Bench(BenchCommand::Http(args)) => {
            let opts = crate::bench_http::HttpBenchOptions {
                clients: args.clients,
                duration: Duration::from_secs(args.duration),
            };
            crate::bench_http::http(args.store, database_url, opts).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Project(args)) => {
            bench::project(args.store, database_url, args.events, args.seed).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let (url, backend) = open_migrated(database_url).await?;
            let day = args
                .day
                .unwrap_or_else(|| chrono::Utc::now().format("%Y-%m-%d").to_string());
            println!("store: {}", url.describe());
            crate::demo::run(&backend, &day).await
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

async fn verify(database_url: Option<&str>, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let (_, backend) = open_migrated(database_url).await?;
    if args.projections {
        let diff = crate::verify::ProjectionDiff::of(&backend);
        crate::verify::run(&backend, &[&diff]).await
    } else {
        crate::verify::run(&backend, &[]).await
    }
}
