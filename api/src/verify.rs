//! `ledger verify`: the audit pass of [`ledger_projections::verify`] with a
//! progress bar, findings one per line on stdout and a summary.
//!
//! Exit status: 0 when clean (counts printed), 1 with findings, 2 when the
//! audit could not run (a usage error, an unreachable or unreadable store:
//! [`EXIT_ERROR`]), so a script can tell "the ledger is wrong" from "the check
//! did not happen". Every finding
//! is one line `FINDING stream=<id> version=<v> kind=<k> detail=<…>`, so
//! `ledger verify | grep '^FINDING'` lists them all.

use std::process::ExitCode;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use ledger_projections::verify::{ExtraCheck, VerifyOptions, VerifyReport, verify};
use ledger_store::EventStore;

use crate::store::Backend;

/// Exit status with findings.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit status when the audit could not run; clap's usage errors use it too.
pub const EXIT_ERROR: u8 = 2;

/// The backend's event store as a shared handle (the verifier reads the feed
/// on its own task).
pub fn shared_events(backend: &Backend) -> Arc<dyn EventStore> {
    match backend {
        Backend::Postgres(s) => Arc::new(s.clone()),
        Backend::Sqlite(s) => Arc::new(s.clone()),
    }
}

/// A spinner that shows events checked and the rate.
pub fn feed_spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {human_pos} events ({per_sec}) {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Runs the whole verification and prints it. Projection diffs join through
/// `extra` (none until the read-model rebuild API exists).
pub async fn run(backend: &Backend, extra: &[&dyn ExtraCheck]) -> anyhow::Result<ExitCode> {
    let bar = feed_spinner("verifying");
    let progress = {
        let bar = bar.clone();
        move |n: u64| bar.set_position(n)
    };
    let report = verify(
        shared_events(backend),
        VerifyOptions::default(),
        extra,
        &progress,
    )
    .await?;
    bar.finish_and_clear();
    print_report(&report);
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FINDINGS)
    })
}

pub fn print_report(report: &VerifyReport) {
    for f in &report.findings {
        println!("{f}");
    }
    let kept = report.findings.len() as u64;
    if report.findings_total > kept {
        println!(
            "… and {} more findings (only the first {kept} are listed)",
            report.findings_total - kept
        );
    }
    let extra = if report.extra_checks.is_empty() {
        "none".to_owned()
    } else {
        report.extra_checks.join(", ")
    };
    println!(
        "verify: {} events, {} streams, {} journal entries; feed pass {} ms ({} events/s); extra checks: {extra}",
        report.events,
        report.streams,
        report.entries,
        report.feed_elapsed.as_millis(),
        report.events_per_second(),
    );
    if report.is_clean() {
        println!("verify: clean (hash chains, history re-validation, journal invariants)");
    } else {
        println!("verify: {} findings", report.findings_total);
    }
}

/// The projection diff of `ledger verify --projections`: for each read model
/// that has a live checkpoint, rebuild it into its shadow tables up to that
/// very checkpoint and report every differing row. Models never built live
/// are skipped (there is nothing to compare).
pub struct ProjectionDiff {
    pub events: Arc<dyn EventStore>,
    pub store: Arc<dyn ledger_projections::readmodel::ReadModelStore>,
}

impl std::fmt::Debug for ProjectionDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProjectionDiff")
    }
}

impl ProjectionDiff {
    pub fn of(backend: &Backend) -> ProjectionDiff {
        let store: Arc<dyn ledger_projections::readmodel::ReadModelStore> = match backend {
            Backend::Postgres(s) => Arc::new(s.clone()),
            Backend::Sqlite(s) => Arc::new(s.clone()),
        };
        ProjectionDiff {
            events: shared_events(backend),
            store,
        }
    }
}

#[async_trait::async_trait]
impl ExtraCheck for ProjectionDiff {
    fn name(&self) -> &str {
        "projection_diff"
    }

    async fn findings(
        &self,
    ) -> Result<Vec<ledger_projections::verify::Finding>, ledger_projections::verify::VerifyError>
    {
        use ledger_projections::readmodel::{
            ReadModel, diff_shadow_against_live, rebuild_into_shadow,
        };
        use ledger_projections::verify::{Finding, FindingKind, VerifyError};
        let failed = |reason: String| VerifyError::Check {
            name: "projection_diff".to_owned(),
            reason,
        };
        let mut out = Vec::new();
        for model in ReadModel::ALL {
            let live = self
                .store
                .load_checkpoint(&model.checkpoint_name(false))
                .await
                .map_err(|e| failed(e.to_string()))?;
            let Some(live) = live else { continue };
            rebuild_into_shadow(
                Arc::clone(&self.events),
                Arc::clone(&self.store),
                &[model],
                Some(live),
                &|_| {},
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
            let diffs = diff_shadow_against_live(self.store.as_ref(), &[model])
                .await
                .map_err(|e| failed(e.to_string()))?;
            out.extend(diffs.into_iter().map(|d| Finding {
                stream: d.table.clone(),
                version: 0,
                kind: FindingKind::ProjectionDiff,
                detail: d.to_string(),
            }));
        }
        Ok(out)
    }
}
