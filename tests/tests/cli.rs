//! End-to-end: the real `ledger` program against a real SQLite file and the
//! real Postgres, driven exactly as a newcomer would from the README.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ledger, ok, pg_base, stderr, stdout};

use std::path::Path;

use sqlx::Connection;
use uuid::Uuid;

/// A fresh schema in the test database, as a DATABASE_URL.
async fn fresh_pg_url() -> String {
    let base = pg_base();
    let schema = format!("e2e_{}", Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create schema {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    format!("{base}?options[search_path]={schema}")
}

/// The order streams `ledger demo` listed, in order (ana, ben, cai, dee).
fn demo_streams(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("order-"))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

/// The trial balance block of `ledger demo`'s output (up to the blank line
/// before `verify`'s report).
fn trial_balance(out: &str) -> Vec<String> {
    out.lines()
        .skip_while(|l| !l.starts_with("trial balance"))
        .take_while(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// migrate → demo → replay → demo again (idempotent) on one store.
fn lifecycle(url: &str, cwd: &Path) {
    assert!(ok(&ledger(url, &["migrate"], cwd)).contains("migrations applied"));
    assert!(
        ok(&ledger(url, &["migrate"], cwd)).contains("migrations applied"),
        "migrate twice"
    );

    let first = ok(&ledger(url, &["demo", "--day", "d1"], cwd));
    let streams = demo_streams(&first);
    assert_eq!(streams.len(), 4, "{first}");
    // The whole system ran: payments and refunds at the PSP fake, transfers
    // and reversals at Stripe, the reconciler saving the lost webhook.
    assert!(
        first.contains("4 payments, 2 refunds, 4 transfers, 2 reversals created"),
        "{first}"
    );
    assert!(
        first.contains(&format!(
            "reconcile {} pending → completed (PSP says succeeded",
            streams[3]
        )),
        "{first}"
    );
    assert!(first.contains("verify: clean"), "{first}");
    let balance = trial_balance(&first);
    // The fees of the lines kept (ana's course 490, dee's tracks 259) stay
    // with the platform; every seller nets to zero.
    assert!(
        balance
            .iter()
            .any(|l| l.contains("platform_fees") && l.trim_end().ends_with(" 749")),
        "{balance:?}"
    );
    assert!(
        balance
            .iter()
            .any(|l| l.contains("psp_clearing") && l.trim_end().ends_with(" -749")),
        "{balance:?}"
    );
    let payables: Vec<&String> = balance
        .iter()
        .filter(|l| l.contains("seller_payable"))
        .collect();
    assert_eq!(payables.len(), 2, "{balance:?}");
    for l in payables {
        assert!(l.trim_end().ends_with(" 0"), "seller not settled: {l}");
    }

    let replay = ok(&ledger(url, &["replay", &streams[0]], cwd));
    assert!(replay.contains("5 events, hash chain intact"), "{replay}");
    assert!(
        replay.contains("\"status\": \"partially_refunded\""),
        "{replay}"
    );

    let json = ok(&ledger(url, &["replay", &streams[0], "--json"], cwd));
    let steps: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = steps
        .iter()
        .map(|s| s["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "OrderPlaced",
            "PaymentInitiated",
            "PaymentSucceeded",
            "RefundRequested",
            "RefundCompleted"
        ]
    );
    assert_eq!(steps[0]["state"]["order"]["status"], "created");
    assert_eq!(steps[2]["state"]["order"]["status"], "completed");
    assert_eq!(steps[4]["state"]["order"]["refunded_minor"], 1299);
    let versions: Vec<u64> = steps
        .iter()
        .map(|s| s["stream_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);

    let failed = ok(&ledger(url, &["replay", &streams[2], "--json"], cwd));
    let last: serde_json::Value = serde_json::from_str(failed.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"]["order"]["status"], "failed");

    // Same day again: deterministic ids make every command a duplicate.
    let again = ok(&ledger(url, &["demo", "--day", "d1"], cwd));
    assert_eq!(demo_streams(&again), streams);
    assert!(
        again.contains("0 payments, 0 refunds, 0 transfers, 0 reversals created"),
        "{again}"
    );
    assert!(again.contains("verify: clean"), "{again}");
    assert_eq!(
        trial_balance(&again),
        balance,
        "a re-run must not move money"
    );
    let replay_again = ok(&ledger(url, &["replay", &streams[0]], cwd));
    assert!(replay_again.contains("5 events, hash chain intact"));
}

#[test]
fn sqlite_file_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    lifecycle(&url, dir.path());
    assert!(dir.path().join("ledger.db").exists());
}

#[test]
fn embedded_default_needs_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&ledger("", &["demo", "--day", "x"], dir.path()));
    assert!(out.contains("store: sqlite ./data/ledger.db"), "{out}");
    assert!(dir.path().join("data/ledger.db").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_lifecycle() {
    let url = fresh_pg_url().await;
    let dir = tempfile::tempdir().unwrap();
    tokio::task::spawn_blocking(move || lifecycle(&url, dir.path()))
        .await
        .unwrap();
}

#[test]
fn replay_of_unknown_or_malformed_stream_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("l.db").display());
    let missing = ledger(
        &url,
        &["replay", &format!("order-{}", Uuid::new_v4())],
        dir.path(),
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("has no events; check the id"),
        "{}",
        stderr(&missing)
    );
    let bad = ledger(&url, &["replay", "order 1"], dir.path());
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("pass a stream id such as order-<uuid>"),
        "{}",
        stderr(&bad)
    );
    let kind = ledger(&url, &["replay", "invoice-1"], dir.path());
    assert_eq!(kind.status.code(), Some(1));
    assert!(stderr(&kind).contains("no known kind"), "{}", stderr(&kind));
}

#[test]
fn bad_database_url_is_refused_without_echoing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let o = ledger("mysql://admin:hunter2@db/x", &["migrate"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("use postgres://"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let o = ledger(
        "postgres://admin:hunter2@127.0.0.1:1/x",
        &["migrate"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_detects_a_tampered_byte_naming_stream_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let url = format!("sqlite://{}", db.display());
    let path = dir.path().to_owned();
    let u = url.clone();
    let out = tokio::task::spawn_blocking(move || ok(&ledger(&u, &["demo", "--day", "t"], &path)))
        .await
        .unwrap();
    let order = demo_streams(&out)[0].clone();

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let changed = sqlx::query(
        "update event set payload = replace(payload, '\"quantity\":1', '\"quantity\":2') \
         where stream_id = $1 and stream_version = 1",
    )
    .bind(&order)
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    conn.close().await.unwrap();

    let path = dir.path().to_owned();
    let o = tokio::task::spawn_blocking(move || ledger(&url, &["replay", &order], &path))
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("version 1"), "{err}");
    assert!(err.contains("order-"), "{err}");
}

#[test]
fn bench_append_reports_both_paths_and_the_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let o = ledger(
        "",
        &[
            "bench",
            "append",
            "--store",
            "sqlite",
            "--writers",
            "2",
            "--duration",
            "1",
        ],
        dir.path(),
    );
    let out = ok(&o);
    assert!(out.contains("raw single-row INSERT (baseline)"), "{out}");
    assert!(out.contains("ledger append"), "{out}");
    assert!(out.contains("ratio ledger/baseline throughput: "), "{out}");
    // The bench must not touch the real store.
    assert!(!dir.path().join("data/ledger.db").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_exits_0_clean_1_with_findings_2_when_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let url = format!("sqlite://{}", db.display());
    let path = dir.path().to_owned();
    let u = url.clone();
    let (demo, clean) = tokio::task::spawn_blocking(move || {
        let demo = ok(&ledger(&u, &["demo", "--day", "v"], &path));
        (demo, ledger(&u, &["verify"], &path))
    })
    .await
    .unwrap();
    assert_eq!(clean.status.code(), Some(0), "{}", stderr(&clean));
    assert!(
        stdout(&clean).contains("verify: clean"),
        "{}",
        stdout(&clean)
    );

    let order = demo_streams(&demo)[0].clone();
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let changed = sqlx::query(
        "update event set payload = replace(payload, '\"quantity\":1', '\"quantity\":2') \
         where stream_id = $1 and stream_version = 1",
    )
    .bind(&order)
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    conn.close().await.unwrap();

    let path = dir.path().to_owned();
    let (findings, unreachable, usage) = tokio::task::spawn_blocking(move || {
        (
            ledger(&url, &["verify"], &path),
            ledger("postgres://admin:hunter2@127.0.0.1:1/x", &["verify"], &path),
            ledger(&url, &["verify", "--no-such-flag"], &path),
        )
    })
    .await
    .unwrap();
    assert_eq!(findings.status.code(), Some(1), "{}", stderr(&findings));
    assert!(
        stdout(&findings)
            .lines()
            .any(|l| l.starts_with("FINDING") && l.contains(&order)),
        "{}",
        stdout(&findings)
    );

    // Not a finding: the audit did not run.
    assert_eq!(
        unreachable.status.code(),
        Some(2),
        "{}",
        stderr(&unreachable)
    );
    let err = stderr(&unreachable);
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(
        !stdout(&unreachable).contains("verify: "),
        "{}",
        stdout(&unreachable)
    );

    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    assert!(
        stderr(&usage).contains("--no-such-flag"),
        "{}",
        stderr(&usage)
    );
}
