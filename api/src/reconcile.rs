//! `ledger reconcile [--once]`: the reconciler (seed item C) outside the
//! server — one pass and a report, or a pass every `RECONCILE_INTERVAL`
//! until Ctrl-C. Each action logs its own `reconcile …` line.
//!
//! The reconciler reads the PSPs through the read-only status trait only:
//! it can never create a payment or a refund.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use ledger_projections::clock::{Clock, SystemClock};
use ledger_projections::managers::ReconcileReport;
use ledger_projections::readmodel::{ReadModel, ReadModelProjection};
use ledger_projections::runtime::Projector;

use crate::managers::{PspLink, WorkerMode};
use crate::serve::{Ports, load_config};
use crate::store::{Backend, StoreUrl};

pub async fn run(database_url: Option<&str>, once: bool) -> anyhow::Result<ExitCode> {
    let config = match load_config(database_url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ledger reconcile refuses to start:\n{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let Some(link) = PspLink::connect(&config, None, WorkerMode::Manual).await? else {
        eprintln!(
            "ledger reconcile needs a PSP to ask: set HYPERSWITCH_API_KEY and STRIPE_SECRET_KEY \
             (and HYPERSWITCH_ENABLED=true)"
        );
        return Ok(ExitCode::from(2));
    };
    if link.fake.is_some() {
        eprintln!(
            "ledger reconcile: no PSP keys are set, so this would ask an empty PSP fake. In development \
             the fake's payments live inside the running `ledger serve`; ask it instead:\n  \
             curl -X POST -H \"Authorization: Bearer $LEDGER_ADMIN_TOKEN\" -H 'Idempotency-Key: reconcile-'$(date +%s) \
             http://127.0.0.1:8080/v1/admin/reconcile\n\
             or set HYPERSWITCH_API_KEY, HYPERSWITCH_BASE_URL, STRIPE_SECRET_KEY and STRIPE_BASE_URL."
        );
        return Ok(ExitCode::from(2));
    }
    let url = StoreUrl::parse(config.database_url.as_deref())?;
    let backend = Backend::open(&url).await?;
    backend.migrate().await?;
    let ports = Ports::of(&backend);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let managers = link.managers(&ports, &config, clock.clone(), "reconcile");
    let mut projector = Projector::new(
        ports.events.clone(),
        ReadModelProjection::new(ports.read_models.clone(), &ReadModel::ALL, false),
    );
    loop {
        // The candidates come from the read models: bring them to the head
        // first so a row that moved since the last projection is not
        // mistaken for a stuck one (the reconciler re-checks the stream
        // anyway, so this only saves PSP reads).
        projector
            .catch_up()
            .await
            .context("bringing the read models up to date")?;
        let report = managers
            .reconcile_once(clock.now())
            .await
            .context("reconcile pass")?;
        print_report(&report)?;
        if once {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(config.reconcile.interval) => {}
        }
    }
}

fn print_report(report: &ReconcileReport) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(report).context("serialising the report")?
    );
    println!(
        "reconcile pass: looked at {} stuck orders, {} stuck refunds, {} orphan refunds; changed {}; left for next tick {}",
        report.orders.looked_at,
        report.refunds.looked_at,
        report.orphans.looked_at,
        report.changed(),
        report.orders.failures.len()
            + report.refunds.failures.len()
            + report.orphans.failures.len(),
    );
    Ok(())
}
