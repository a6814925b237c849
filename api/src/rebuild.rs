//! `ledger rebuild <projection|all>`: rebuild read models from position 0
//! into shadow tables, then swap them in atomically. Live reads keep working
//! on the old tables until the swap's single transaction commits.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ledger_projections::readmodel::{ReadModel, ReadModelStore, rebuild_into_shadow, swap_shadow};
use ledger_store::EventStore;

use crate::store::Backend;

/// How often the progress bar redraws: smooth enough, cheap enough.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// The event feed and the read-model store of an opened backend (the same
/// database, so rows and checkpoints commit together).
pub fn ports(backend: &Backend) -> (Arc<dyn EventStore>, Arc<dyn ReadModelStore>) {
    match backend {
        Backend::Postgres(s) => (Arc::new(s.clone()), Arc::new(s.clone())),
        Backend::Sqlite(s) => (Arc::new(s.clone()), Arc::new(s.clone())),
    }
}

/// `all` or one projection name.
pub fn parse_models(name: &str) -> anyhow::Result<Vec<ReadModel>> {
    if name == "all" {
        return Ok(ReadModel::ALL.to_vec());
    }
    match ReadModel::parse(name) {
        Some(m) => Ok(vec![m]),
        None => bail!(
            "unknown projection {name:?}; use all or one of: {}",
            ReadModel::ALL.map(ReadModel::name).join(", ")
        ),
    }
}

pub async fn run(backend: &Backend, projection: &str) -> anyhow::Result<ExitCode> {
    let models = parse_models(projection)?;
    let (events, store) = ports(backend);
    let head = store
        .head_position()
        .await
        .context("reading the store head")?;
    let bar = ProgressBar::new(head);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} rebuild [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(PROGRESS_TICK);
    let started = Instant::now();
    let progress = {
        let bar = bar.clone();
        move |n: u64| bar.set_position(n)
    };
    let stats = rebuild_into_shadow(events, store.clone(), &models, None, &progress)
        .await
        .context("rebuilding into shadow tables")?;
    let loaded = started.elapsed();
    bar.set_message("swapping in");
    swap_shadow(store.as_ref(), &models)
        .await
        .context("swapping the shadow tables in")?;
    let total = started.elapsed();
    bar.finish_and_clear();
    let secs = total.as_secs_f64().max(f64::EPSILON);
    #[allow(clippy::float_arithmetic)] // a display rate, not money
    let rate = stats.events as f64 / secs;
    println!(
        "rebuilt {} from {} events in {:.2}s ({:.0} events/s: loaded in {:.2}s, swapped in {:.2}s; Postgres builds the indexes while loading, SQLite while swapping); checkpoint position {}",
        models
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", "),
        stats.events,
        secs,
        rate,
        loaded.as_secs_f64(),
        (total - loaded).as_secs_f64(),
        stats.checkpoint.position
    );
    Ok(ExitCode::SUCCESS)
}
