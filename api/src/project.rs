//! `ledger project [--once]`: runs every read-model projection, tailing the
//! feed until Ctrl-C, logging its lag; `--once` catches up and exits.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ledger_projections::readmodel::{ReadModel, ReadModelProjection};
use ledger_projections::runtime::Projector;
use tokio::sync::{Notify, watch};

use crate::rebuild::ports;
use crate::store::Backend;

/// How often the running projector logs its lag.
const LAG_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub async fn run(backend: &Backend, once: bool) -> anyhow::Result<ExitCode> {
    let (events, store) = ports(backend);
    let handler = ReadModelProjection::new(store, &ReadModel::ALL, false);
    let mut projector = Projector::new(events, handler);
    if once {
        let n = projector.catch_up().await.context("projecting")?;
        let status = projector.status();
        println!(
            "projected {n} events; checkpoint position {}; lag {}",
            status.checkpoint.position,
            status.lag().unwrap_or(0)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut status = projector.subscribe();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LAG_LOG_INTERVAL);
        loop {
            tick.tick().await;
            let s = status.borrow_and_update().clone();
            tracing::info!(projection = %s.name, position = s.checkpoint.position, lag = ?s.lag(), health = ?s.health, applied = s.applied, "projector status");
            if status.has_changed().is_err() {
                return;
            }
        }
    });
    projector
        .run(Arc::new(Notify::new()), stop_rx)
        .await
        .context("projection stopped")?;
    println!(
        "stopped at position {}",
        projector.status().checkpoint.position
    );
    Ok(ExitCode::SUCCESS)
}
