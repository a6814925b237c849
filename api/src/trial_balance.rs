//! `ledger trial-balance [--as-of <position|RFC3339>]`: the journal summed
//! per account and currency over the feed, or its prefix.

use std::process::ExitCode;

use ledger_projections::journal::{AsOf, TrialBalance, trial_balance};
use ledger_store::EventStore;
use serde::Serialize;

use crate::verify::feed_spinner;

/// One account line, as printed with `--json`.
#[derive(Debug, Serialize)]
struct Line<'a> {
    account: String,
    currency: &'a str,
    debit_minor: i64,
    credit_minor: i64,
    net_credit_minor: Option<i64>,
}

/// Folds and returns the trial balance, with a spinner on long feeds.
pub async fn compute(store: &dyn EventStore, as_of: Option<AsOf>) -> anyhow::Result<TrialBalance> {
    let bar = feed_spinner("reading the journal");
    let progress = {
        let bar = bar.clone();
        move |n: u64| bar.set_position(n)
    };
    let tb = trial_balance(store, as_of, &progress).await?;
    bar.finish_and_clear();
    Ok(tb)
}

pub fn title(as_of: Option<AsOf>) -> String {
    match as_of {
        None => "trial balance (all events, minor units):".to_owned(),
        Some(a) => format!("trial balance (as of {a}, minor units):"),
    }
}

/// Prints the trial balance (the table, or JSON lines).
pub fn print(tb: &TrialBalance, as_of: Option<AsOf>, json: bool) -> anyhow::Result<()> {
    if json {
        for ((account, currency), b) in &tb.balances {
            let line = Line {
                account: account.to_string(),
                currency: currency.as_str(),
                debit_minor: b.debit_minor,
                credit_minor: b.credit_minor,
                net_credit_minor: b.net_credit_minor(),
            };
            println!("{}", serde_json::to_string(&line)?);
        }
        return Ok(());
    }
    print!("{}", tb.render(&title(as_of)));
    println!(
        "  {} events, {} entries; debits equal credits per currency: {}",
        tb.events,
        tb.entries,
        if tb.imbalance().values().all(|v| *v == 0) {
            "yes"
        } else {
            "NO"
        }
    );
    Ok(())
}

pub async fn run(
    store: &dyn EventStore,
    as_of: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let as_of = as_of.map(AsOf::parse).transpose()?;
    let tb = compute(store, as_of).await?;
    print(&tb, as_of, json)?;
    Ok(ExitCode::SUCCESS)
}
