//! `ledger reconcile [--once]`: the reconciler (seed item C) outside the
//! server — one pass and a report, or a pass every `RECONCILE_INTERVAL`
//! until Ctrl-C. Each action logs its own `reconcile …` line.
//!
//! `ledger reconcile --provider [--since 24h | --from T --to T]`: Stripe's
//! transfers of a window matched against the ledger, one `ANOMALY` line
//! each and a summary; exit 0 clean, 1 with anomalies, 2 on a usage or
//! operational error.
//!
//! The reconciler reads the PSPs through the read-only status trait only:
//! it can never create a payment or a refund.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use ledger_projections::clock::{Clock, SystemClock};
use ledger_projections::managers::{ProviderReport, ReconcileReport};
use ledger_projections::readmodel::{ReadModel, ReadModelProjection};
use ledger_projections::runtime::Projector;

use crate::config::PspMode;
use crate::managers::{PspLink, WorkerMode};
use crate::serve::{Ports, load_config};
use crate::store::{Backend, StoreUrl};

/// The window a provider reconcile lists when none is given.
pub const PROVIDER_WINDOW_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest window one provider reconcile may list.
pub const PROVIDER_WINDOW_MAX: Duration = Duration::from_secs(31 * 24 * 60 * 60);

/// `[from, to)` of a provider reconcile: `to` defaults to the end of
/// `now`'s second (Stripe's `created` is whole seconds and `to` is
/// exclusive, so a transfer made this second is in), `from` to `to − since`
/// (`since` defaults to [`PROVIDER_WINDOW_DEFAULT`]). `Err`
/// says why the window is refused: `from` not before `to`, or longer than
/// [`PROVIDER_WINDOW_MAX`].
pub fn provider_window(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    since: Option<Duration>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    let max = TimeDelta::from_std(PROVIDER_WINDOW_MAX).unwrap_or(TimeDelta::MAX);
    let to = match to {
        Some(to) => to,
        None => {
            let second = DateTime::<Utc>::from_timestamp(now.timestamp(), 0).unwrap_or(now);
            second
                .checked_add_signed(TimeDelta::seconds(1))
                .unwrap_or(now)
        }
    };
    let from = match from {
        Some(from) => from,
        None => {
            let since = since.unwrap_or(PROVIDER_WINDOW_DEFAULT);
            let back = TimeDelta::from_std(since)
                .ok()
                .filter(|d| *d <= max)
                .ok_or_else(|| "the window is longer than 31 days".to_owned())?;
            to.checked_sub_signed(back)
                .ok_or_else(|| "the window starts before any representable time".to_owned())?
        }
    };
    if from >= to {
        return Err(format!(
            "from ({}) must be before to ({})",
            from.to_rfc3339(),
            to.to_rfc3339()
        ));
    }
    if to - from > max {
        return Err(format!(
            "the window from {} to {} is longer than 31 days; reconcile it in parts",
            from.to_rfc3339(),
            to.to_rfc3339()
        ));
    }
    Ok((from, to))
}

/// What `--provider` was asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderArgs {
    pub since: Option<Duration>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

pub async fn run(database_url: Option<&str>, once: bool) -> anyhow::Result<ExitCode> {
    let config = match load_config(database_url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ledger reconcile refuses to start:\n{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let Some(link) =
        PspLink::connect(&config, None, WorkerMode::Manual, Arc::new(SystemClock)).await?
    else {
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

/// `ledger reconcile --provider`: one window, one report; never a loop.
pub async fn run_provider(database_url: Option<&str>, args: ProviderArgs) -> ExitCode {
    let (from, to) = match provider_window(args.from, args.to, args.since, SystemClock.now()) {
        Ok(window) => window,
        Err(e) => {
            eprintln!("ledger reconcile --provider: {e}");
            return ExitCode::from(2);
        }
    };
    match provider_pass(database_url, from, to).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ledger reconcile --provider failed: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn provider_pass(
    database_url: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<ExitCode> {
    let config = match load_config(database_url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ledger reconcile refuses to start:\n{e}");
            return Ok(ExitCode::from(2));
        }
    };
    if config.hyperswitch.enabled && config.psp_mode == PspMode::Fake {
        eprintln!("{PROVIDER_FAKE_REFUSAL}");
        return Ok(ExitCode::from(2));
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let Some(link) = PspLink::connect(&config, None, WorkerMode::Manual, clock.clone()).await?
    else {
        eprintln!(
            "ledger reconcile --provider needs Stripe to ask: set HYPERSWITCH_API_KEY and STRIPE_SECRET_KEY \
             (and HYPERSWITCH_ENABLED=true)"
        );
        return Ok(ExitCode::from(2));
    };
    if link.fake.is_some() {
        eprintln!("{PROVIDER_FAKE_REFUSAL}");
        return Ok(ExitCode::from(2));
    }
    let url = StoreUrl::parse(config.database_url.as_deref())?;
    let backend = Backend::open(&url).await?;
    backend.migrate().await?;
    let ports = Ports::of(&backend);
    let managers = link.managers(&ports, &config, clock.clone(), "reconcile");
    let report = managers
        .reconcile_provider(from, to, clock.now())
        .await
        .context("provider reconcile")?;
    print!("{}", provider_lines(&report, from, to));
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Why `--provider` does not ask the in-process fake, and what to do.
const PROVIDER_FAKE_REFUSAL: &str = "ledger reconcile --provider: no PSP keys are set, so this would ask an empty PSP fake. \
    In development the fake's transfers live inside the running `ledger serve`; ask it instead:\n  \
    curl -X POST -H \"Authorization: Bearer $LEDGER_ADMIN_TOKEN\" -H 'Idempotency-Key: provider-'$(date +%s) \
    http://127.0.0.1:8080/v1/admin/reconcile/provider\n\
    (optional body {\"from\": RFC3339, \"to\": RFC3339}), or set HYPERSWITCH_API_KEY, HYPERSWITCH_BASE_URL, \
    STRIPE_SECRET_KEY and STRIPE_BASE_URL.";

/// One `ANOMALY` line per anomaly, then the summary line.
pub fn provider_lines(report: &ProviderReport, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let mut out = String::new();
    for a in &report.anomalies {
        out.push_str(&format!(
            "ANOMALY {} {} stream={} {}: {}\n",
            a.kind,
            a.provider_id,
            a.stream_id.as_deref().unwrap_or("-"),
            if a.new { "new" } else { "already recorded" },
            a.detail
        ));
    }
    let new = report.anomalies.iter().filter(|a| a.new).count();
    out.push_str(&format!(
        "provider reconcile {} .. {}: {} transfers and {} reversals listed at Stripe; {} matched, {} in flight, {} anomalies ({} new)\n",
        from.to_rfc3339(),
        to.to_rfc3339(),
        report.transfers_listed,
        report.reversals_listed,
        report.matched,
        report.in_flight,
        report.anomalies.len(),
        new
    ));
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 8, h, 0, 0).unwrap()
    }

    #[test]
    fn the_window_defaults_to_the_last_24_hours_and_is_bounded() {
        let now = at(12);
        // `to` is exclusive: the end of now's second.
        let end = now + TimeDelta::seconds(1);
        assert_eq!(
            provider_window(None, None, None, now),
            Ok((end - TimeDelta::hours(24), end))
        );
        assert_eq!(
            provider_window(None, None, None, now + TimeDelta::milliseconds(250)),
            Ok((end - TimeDelta::hours(24), end))
        );
        assert_eq!(
            provider_window(None, None, Some(Duration::from_secs(3_600)), now),
            Ok((at(11) + TimeDelta::seconds(1), end))
        );
        assert_eq!(
            provider_window(Some(at(1)), Some(at(2)), None, now),
            Ok((at(1), at(2)))
        );
        // Only `to`: the 24 hours before it.
        assert_eq!(
            provider_window(None, Some(at(2)), None, now),
            Ok((at(2) - TimeDelta::hours(24), at(2)))
        );
        assert!(provider_window(Some(at(2)), Some(at(2)), None, now).is_err());
        assert!(provider_window(Some(at(3)), Some(at(2)), None, now).is_err());
        let long = at(2) - TimeDelta::days(31) - TimeDelta::seconds(1);
        assert!(provider_window(Some(long), Some(at(2)), None, now).is_err());
        assert!(provider_window(Some(at(2) - TimeDelta::days(31)), Some(at(2)), None, now).is_ok());
        assert!(provider_window(None, None, Some(PROVIDER_WINDOW_MAX * 2), now).is_err());
    }
}
