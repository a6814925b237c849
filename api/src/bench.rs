//! `ledger bench …`: throughput and latency, always beside a baseline
//! measured in the same run, because absolute numbers on shared machines mean
//! little.
//!
//! No floats: rates are integer events/s, latencies integer microseconds,
//! ratios printed from integer hundredths.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use ledger_core::ids::{EventId, StreamId};
use ledger_core::{ExpectedVersion, Metadata, NewEvent, Source};
use sqlx::Connection;
use uuid::Uuid;

use crate::cli::BenchStore;
use crate::store::{Backend, StoreUrl, redact_url};

/// Local Postgres used when no DATABASE_URL is given (CI and dev machines).
pub const DEFAULT_BENCH_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Scratch schema: the bench never writes into the real event tables.
pub const BENCH_SCHEMA: &str = "ledger_bench";
/// Each path runs in this many alternating rounds so drift on a noisy machine
/// hits both paths alike.
pub(crate) const ROUNDS: u32 = 2;
/// Untimed warm-up per path (fills the pool, warms caches and plans).
pub(crate) const WARMUP: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
pub struct AppendBenchOptions {
    pub writers: u32,
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    RawInsert,
    LedgerAppend,
}

/// Latencies (µs) and wall time of one path.
#[derive(Debug, Default)]
pub struct Stats {
    latencies_us: Vec<u64>,
    elapsed: Duration,
    errors: u64,
}

impl Stats {
    pub(crate) fn record(&mut self, latency: Duration) {
        self.latencies_us
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub(crate) fn error(&mut self) {
        self.errors += 1;
    }

    pub(crate) fn errors(&self) -> u64 {
        self.errors
    }

    pub(crate) fn set_elapsed(&mut self, elapsed: Duration) {
        self.elapsed = elapsed;
    }

    pub(crate) fn merge(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        self.elapsed += other.elapsed;
        self.errors += other.errors;
    }

    pub fn count(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    /// Operations per second, integer.
    pub fn per_second(&self) -> u64 {
        let micros = self.elapsed.as_micros().max(1);
        u64::try_from(u128::from(self.count()) * 1_000_000 / micros).unwrap_or(u64::MAX)
    }

    /// The `pct`-th percentile latency in µs (nearest rank).
    pub fn percentile_us(&mut self, pct: u64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        self.latencies_us.sort_unstable();
        let n = self.latencies_us.len() as u64;
        let rank = (n * pct).div_ceil(100).clamp(1, n);
        self.latencies_us[usize::try_from(rank - 1).unwrap_or(0)]
    }
}

/// `a / b` as a string with two decimals, from integers.
pub fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        return "n/a".to_owned();
    }
    let hundredths = u128::from(a) * 100 / u128::from(b);
    format!("{}.{:02}", hundredths / 100, hundredths % 100)
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{}.{:02}", us / 1000, (us % 1000) / 10)
}

/// An event shaped like a real `OrderPlaced` (two lines, two sellers).
fn sample_event() -> NewEvent {
    let order = Uuid::new_v4();
    let payload = serde_json::json!({
        "order_id": order,
        "buyer_id": "buyer-42",
        "currency": "USD",
        "fee_bps": 1000,
        "lines": [
            {"product_id": "track-1", "seller_id": "seller-a", "seller_account": "acct_1A",
             "unit_amount_minor": 1299, "quantity": 1, "line_total_minor": 1299,
             "fee_minor": 129, "seller_share_minor": 1170, "rounding_remainder": 9000},
            {"product_id": "course-7", "seller_id": "seller-b", "seller_account": "acct_2B",
             "unit_amount_minor": 4900, "quantity": 1, "line_total_minor": 4900,
             "fee_minor": 490, "seller_share_minor": 4410, "rounding_remainder": 0}
        ],
        "total_minor": 6199,
        "fee_minor": 619,
        "placed_at": "2026-11-27T12:00:00Z"
    });
    let metadata = Metadata {
        correlation_id: Uuid::new_v4(),
        causation_id: None,
        actor: "bench".to_owned(),
        source: Source::Api,
        request_id: None,
    };
    NewEvent {
        event_id: EventId(Uuid::new_v4()),
        event_type: "OrderPlaced".to_owned(),
        schema_version: 1,
        payload: payload.to_string(),
        metadata: metadata.to_canonical_json(),
    }
}

fn fresh_stream() -> anyhow::Result<StreamId> {
    StreamId::new(format!("order-{}", Uuid::new_v4())).context("building a bench stream id")
}

async fn one_op(backend: &Backend, path: Path) -> anyhow::Result<()> {
    let stream = fresh_stream()?;
    let event = sample_event();
    match path {
        Path::RawInsert => backend.baseline().baseline_insert(&stream, &event).await?,
        Path::LedgerAppend => {
            backend
                .events()
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    std::slice::from_ref(&event),
                )
                .await?;
        }
    }
    Ok(())
}

pub(crate) async fn run_phase(
    backend: Arc<Backend>,
    path: Path,
    writers: u32,
    duration: Duration,
    record: bool,
) -> Stats {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(writers as usize);
    for _ in 0..writers {
        let backend = Arc::clone(&backend);
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                match one_op(&backend, path).await {
                    Ok(()) if record => stats
                        .latencies_us
                        .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)),
                    Ok(()) => {}
                    Err(e) => {
                        stats.errors += 1;
                        tracing::warn!(error = %e, ?path, "bench operation failed");
                    }
                }
            }
            stats
        }));
    }
    let mut total = Stats::default();
    for task in tasks {
        if let Ok(s) = task.await {
            total.merge(s);
        }
    }
    total.elapsed = started.elapsed();
    total
}

pub(crate) async fn open_bench_backend(
    store: BenchStore,
    database_url: Option<&str>,
) -> anyhow::Result<(Backend, String, Option<tempfile::TempDir>)> {
    match store {
        BenchStore::Postgres => {
            let base = database_url
                .filter(|u| u.starts_with("postgres"))
                .unwrap_or(DEFAULT_BENCH_POSTGRES_URL);
            let mut conn = sqlx::PgConnection::connect(base).await.with_context(|| {
                format!(
                    "cannot connect to {} (is Postgres running? set --database-url)",
                    redact_url(base)
                )
            })?;
            // Built from a constant, never from input.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "drop schema if exists {BENCH_SCHEMA} cascade; create schema {BENCH_SCHEMA};"
            )))
            .execute(&mut conn)
            .await
            .context("preparing the bench schema")?;
            conn.close().await.ok();
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}options[search_path]={BENCH_SCHEMA}");
            let backend = Backend::open(&StoreUrl::Postgres(url)).await?;
            Ok((
                backend,
                format!("postgres {} (schema {BENCH_SCHEMA})", redact_url(base)),
                None,
            ))
        }
        BenchStore::Sqlite => {
            let dir = tempfile::tempdir().context("creating a scratch directory")?;
            let path = dir.path().join("bench.db");
            let backend = Backend::open(&StoreUrl::Sqlite(path.clone())).await?;
            Ok((
                backend,
                format!("sqlite {} (scratch file)", path.display()),
                Some(dir),
            ))
        }
    }
}

/// `ledger bench append`.
pub async fn append(
    store: BenchStore,
    database_url: Option<&str>,
    opts: AppendBenchOptions,
) -> anyhow::Result<()> {
    let (backend, label, _scratch) = open_bench_backend(store, database_url).await?;
    backend.migrate().await?;
    backend.baseline().prepare_baseline().await?;
    let backend = Arc::new(backend);

    let round = opts.duration / ROUNDS;
    let total_secs = opts.duration.as_secs() * 2;
    let bar = ProgressBar::new(total_secs.max(1));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {pos}/{len}s")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                bar.inc(1);
            }
        })
    };

    let mut raw = Stats::default();
    let mut ledger = Stats::default();
    for r in 1..=ROUNDS {
        for path in [Path::RawInsert, Path::LedgerAppend] {
            bar.set_message(format!("round {r}/{ROUNDS}: {path:?}"));
            run_phase(Arc::clone(&backend), path, opts.writers, WARMUP, false).await;
            let stats = run_phase(Arc::clone(&backend), path, opts.writers, round, true).await;
            match path {
                Path::RawInsert => raw.merge(stats),
                Path::LedgerAppend => ledger.merge(stats),
            }
        }
    }
    ticker.abort();
    bar.finish_and_clear();

    println!(
        "bench append: {label}, {} writers, {}s per path in {ROUNDS} alternating rounds",
        opts.writers,
        opts.duration.as_secs()
    );
    println!(
        "{:<34} {:>10} {:>10} {:>9} {:>9} {:>7}",
        "path", "events", "events/s", "p50 ms", "p99 ms", "errors"
    );
    for (name, s) in [
        ("raw single-row INSERT (baseline)", &mut raw),
        ("ledger append (hash chain, OCC)", &mut ledger),
    ] {
        let (p50, p99) = (s.percentile_us(50), s.percentile_us(99));
        println!(
            "{:<34} {:>10} {:>10} {:>9} {:>9} {:>7}",
            name,
            s.count(),
            s.per_second(),
            ms(p50),
            ms(p99),
            s.errors
        );
    }
    println!(
        "ratio ledger/baseline throughput: {}x",
        ratio(ledger.per_second(), raw.per_second())
    );
    if raw.errors + ledger.errors > 0 {
        anyhow::bail!(
            "{} operations failed; see the WARN lines above",
            raw.errors + ledger.errors
        );
    }
    Ok(())
}

/// `ledger bench project`: generate a realistic history of about `events`
/// events into a scratch store, then time one full pass over it (read,
/// hash-chain check, re-fold through the core, journal) beside a raw batched
/// `INSERT` of as many rows of the event shape through the same pool.
///
/// Two passes are timed: the read-model rebuild (every model into shadow
/// tables from position 0, indexed, then swapped in) and the `verify` feed
/// pass.
pub async fn project(
    store: BenchStore,
    database_url: Option<&str>,
    events: u64,
    seed: u64,
) -> anyhow::Result<()> {
    use ledger_projections::generator::{generate, orders_for_events, write_history};
    use ledger_projections::verify::{VerifyOptions, verify};
    use ledger_store::{BASELINE_BATCH_ROWS_MAX, EVENTS_PER_BATCH_MAX};

    // Generated before the store opens: nothing idles in the pool meanwhile.
    let orders = orders_for_events(events);
    let generating = Instant::now();
    let parts = generate(seed, orders);
    let total: u64 = parts.iter().map(|p| p.events.len() as u64).sum();
    let generate_ms = generating.elapsed().as_millis();

    let (backend, label, _scratch) = open_bench_backend(store, database_url).await?;
    backend.migrate().await?;
    backend.baseline().prepare_baseline().await?;

    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<24} [{bar:30}] {human_pos}/{human_len} ({per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message("writing the history");
    let writing = Instant::now();
    let progress = {
        let bar = bar.clone();
        move |n: u64| bar.set_position(n)
    };
    write_history(backend.events(), &parts, EVENTS_PER_BATCH_MAX, &progress).await?;
    let write_elapsed = writing.elapsed();

    // Baseline: the same rows, multi-row INSERTs of BASELINE_BATCH_ROWS_MAX.
    bar.set_position(0);
    bar.set_message("raw batched INSERT");
    let rows: Vec<(StreamId, NewEvent)> = parts
        .iter()
        .flat_map(|p| p.events.iter().map(|e| (p.stream.clone(), e.clone())))
        .collect();
    drop(parts);
    let inserting = Instant::now();
    let mut done: u64 = 0;
    for batch in rows.chunks(BASELINE_BATCH_ROWS_MAX) {
        backend.baseline().baseline_insert_batch(batch).await?;
        done += batch.len() as u64;
        bar.set_position(done);
    }
    let baseline = Stats {
        latencies_us: Vec::new(),
        elapsed: inserting.elapsed(),
        errors: 0,
    };
    drop(rows);

    bar.set_position(0);
    bar.set_message("verify pass");
    let progress = {
        let bar = bar.clone();
        move |n: u64| bar.set_position(n)
    };
    let report = verify(
        crate::verify::shared_events(&backend),
        VerifyOptions { check_heads: false },
        &[],
        &progress,
    )
    .await?;
    // The read-model rebuild (all models, into shadow tables from 0, then
    // the swap).
    bar.set_position(0);
    bar.set_message("read-model rebuild");
    let rm_store: Arc<dyn ledger_projections::readmodel::ReadModelStore> = match &backend {
        Backend::Postgres(s) => Arc::new(s.clone()),
        Backend::Sqlite(s) => Arc::new(s.clone()),
    };
    let rebuilding = Instant::now();
    let rebuilt = ledger_projections::readmodel::rebuild_into_shadow(
        crate::verify::shared_events(&backend),
        Arc::clone(&rm_store),
        &ledger_projections::readmodel::ReadModel::ALL,
        None,
        &progress,
    )
    .await?;
    let load_elapsed = rebuilding.elapsed();
    // The swap is part of a rebuild: on SQLite it builds the indexes.
    bar.set_message("read-model swap");
    ledger_projections::readmodel::swap_shadow(
        rm_store.as_ref(),
        &ledger_projections::readmodel::ReadModel::ALL,
    )
    .await?;
    let rebuild_elapsed = rebuilding.elapsed();
    bar.finish_and_clear();

    let rate = |n: u64, d: Duration| {
        u64::try_from(u128::from(n) * 1_000_000 / d.as_micros().max(1)).unwrap_or(u64::MAX)
    };
    let baseline_rate = rate(total, baseline.elapsed);
    let pass_rate = report.events_per_second();
    println!(
        "bench project: {label}, seed {seed}: {orders} orders → {total} events ({} streams, {} journal entries), generated in {generate_ms} ms",
        report.streams, report.entries
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10}",
        "path", "events", "ms", "events/s"
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10}",
        format!("raw batched INSERT ({BASELINE_BATCH_ROWS_MAX} rows/statement, baseline)"),
        total,
        baseline.elapsed.as_millis(),
        baseline_rate
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10}",
        "read-model rebuild (all models: load, index, swap)",
        rebuilt.events,
        rebuild_elapsed.as_millis(),
        rate(rebuilt.events, rebuild_elapsed)
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10}",
        "  of which loading (Postgres: and indexing)",
        rebuilt.events,
        load_elapsed.as_millis(),
        rate(rebuilt.events, load_elapsed)
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10}",
        "verify feed pass: read + chain + re-fold + journal",
        report.events,
        report.feed_elapsed.as_millis(),
        pass_rate
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10}",
        format!("(setup) append_many, {EVENTS_PER_BATCH_MAX} events/transaction"),
        total,
        write_elapsed.as_millis(),
        rate(total, write_elapsed)
    );
    println!(
        "ratio rebuild/baseline throughput: {}x; verify/baseline: {}x",
        ratio(rate(rebuilt.events, rebuild_elapsed), baseline_rate),
        ratio(pass_rate, baseline_rate)
    );
    if !report.is_clean() {
        anyhow::bail!(
            "the generated history has {} findings (a generator or core bug): {}",
            report.findings_total,
            report
                .findings
                .first()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_formatting() {
        assert_eq!(ratio(93, 100), "0.93");
        assert_eq!(ratio(250, 100), "2.50");
        assert_eq!(ratio(1, 0), "n/a");
        assert_eq!(ms(12_345), "12.34");
        assert_eq!(ms(999), "0.99");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut s = Stats {
            latencies_us: (1..=100).rev().collect(),
            elapsed: Duration::from_secs(2),
            errors: 0,
        };
        assert_eq!(s.percentile_us(50), 50);
        assert_eq!(s.percentile_us(99), 99);
        assert_eq!(s.percentile_us(100), 100);
        assert_eq!(s.per_second(), 50);
        assert_eq!(Stats::default().percentile_us(99), 0);
    }
}
