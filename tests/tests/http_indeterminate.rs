#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Payouts whose Stripe answer was lost, resolved over the real server on
//! Postgres and SQLite: the transfer waits `indeterminate`, the operator's
//! retry reads Stripe before anything is sent again (found → completed,
//! proven absent → one new attempt), a transient read failure is a 503 with
//! `Retry-After`, and the provider reconcile finds a second transfer for one
//! share, which `ledger verify` (the real binary) then reports. The
//! managers run only when a test calls them, on the server's manual clock.

#[path = "common/http.rs"]
#[macro_use]
mod http_common;
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use http_common::*;
use ledger_core::ids::{SellerAccount, TransferId};
use ledger_core::{Amount, Currency};
use ledger_psp::{CreateTransfer, Secret, StripeClient};
use ledger_psp_fake::{Endpoint, FAKE_STRIPE_SECRET_KEY, Fault};
use reqwest::Method;
use serde_json::{Value, json};

/// A one-seller order: one transfer, 1 350 after the 10 % fee.
fn one_seller_order(buyer: &str) -> Value {
    order_body(buyer, vec![item("p-a", "s-1", 1_500, 1)])
}

/// `POST` to an admin route with the admin token, a fresh key and `body`.
async fn admin_with(app: &TestApp, path: &str, body: &str) -> Resp {
    app.send(
        app.anon(Method::POST, path)
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", new_event_id())
            .header("content-type", "application/json")
            .body(body.to_owned()),
    )
    .await
}

/// The order's only transfer, from `GET /v1/transfers/{id}`.
async fn the_transfer(app: &TestApp, order_id: &str) -> Value {
    app.settle().await;
    let all = app.get_json("/v1/transfers?limit=200").await;
    let ours: Vec<&Value> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["order_id"] == order_id)
        .collect();
    assert_eq!(ours.len(), 1, "{all}");
    let id = ours[0]["transfer_id"].as_str().unwrap();
    app.get_json(&format!("/v1/transfers/{id}")).await
}

/// Places a paid one-seller order whose payout ran once, and returns the
/// order id.
async fn paid_order(app: &TestApp, key: &str) -> String {
    let (order_id, _) = app.place_order(key, &one_seller_order("buyer-i")).await;
    app.run_until_idle().await;
    order_id.0.to_string()
}

/// `create_transfer` did the transfer, then answered 500: the ledger records
/// `indeterminate` and sends nothing again; the operator's retry reads
/// Stripe, finds it and completes the payout with that id.
async fn a_lost_answer_is_found_by_the_operator_retry(kind: Kind) {
    let app = spawn_app_with_psp(kind, &[]).await;
    app.fake()
        .inject_fault(Endpoint::CreateTransfer, Fault::SucceedThenStatus(500), 1);
    let order_id = paid_order(&app, "lost-1").await;
    let t = the_transfer(&app, &order_id).await;
    assert_eq!(t["status"], "indeterminate", "{t}");
    assert!(t["status_since"].is_string(), "{t}");
    assert_eq!(t["stripe_transfer_id"], Value::Null, "{t}");
    let waiting = app.get_json("/v1/transfers?status=indeterminate").await;
    assert_eq!(
        waiting["items"][0]["transfer_id"], t["transfer_id"],
        "{waiting}"
    );
    app.get("/v1/transfers?status=unknown")
        .await
        .assert_error(400, "invalid_status");
    let at_stripe = app.fake().transfers();
    assert_eq!(at_stripe.len(), 1, "the transfer happened at Stripe");
    let c = app.fake().counters();
    assert_eq!(
        c.requests_to(Endpoint::CreateTransfer),
        1,
        "never sent again"
    );

    let id = t["transfer_id"].as_str().unwrap();
    let r = admin_with(&app, &format!("/v1/admin/transfers/{id}/retry"), "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["from_status"], "indeterminate", "{answer}");
    assert_eq!(answer["status"], "completed", "{answer}");
    assert_eq!(answer["found"], at_stripe[0].id.as_str(), "{answer}");
    assert!(answer["found"].as_str().unwrap().starts_with("tr_"));
    assert!(answer.get("absent").is_none(), "{answer}");
    assert!(answer.get("anomaly").is_none(), "{answer}");

    app.run_until_idle().await;
    let t = the_transfer(&app, &order_id).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stripe_transfer_id"], at_stripe[0].id.as_str(), "{t}");
    assert_eq!(t["transferred_minor"], 1_350, "{t}");
    assert_eq!(app.fake().transfers().len(), 1, "exactly one transfer");
    assert_eq!(app.fake().counters().transfers_created, 1);
    assert_eq!(
        app.fake().counters().requests_to(Endpoint::CreateTransfer),
        1
    );
    app.shutdown().await.unwrap();
}

/// `create_transfer` answered 500 having done nothing: the retry reads
/// Stripe, finds nothing, and the next attempt (a new key) pays once. A
/// read that fails first is a 503 with `Retry-After`, and decides nothing.
async fn a_create_that_did_nothing_is_proven_absent_then_paid_once(kind: Kind) {
    let app = spawn_app_with_psp(kind, &[]).await;
    app.fake()
        .inject_fault(Endpoint::CreateTransfer, Fault::Status(500), 1);
    let order_id = paid_order(&app, "absent-1").await;
    let t = the_transfer(&app, &order_id).await;
    assert_eq!(t["status"], "indeterminate", "{t}");
    assert!(app.fake().transfers().is_empty());
    let id = t["transfer_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/admin/transfers/{id}/retry");

    // Stripe cannot be read right now: 503, Retry-After, nothing recorded.
    app.fake()
        .inject_fault(Endpoint::ListTransfers, Fault::Status(503), 1);
    let key = new_event_id();
    let retry = |key: String| {
        app.anon(Method::POST, &path)
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body("{}")
    };
    let r = app.send(retry(key.clone())).await;
    r.assert_error(503, "unavailable");
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(after > 0, "{after}");
    assert_eq!(
        the_transfer(&app, &order_id).await["status"],
        "indeterminate"
    );

    // Stripe answers now, but the lost answer is seconds old: finding
    // nothing proves nothing yet (the call may still be running there).
    let r = app.send(retry(key.clone())).await;
    r.assert_error(503, "unavailable");
    assert!(
        r.text().contains("absence is provable from"),
        "{}",
        r.text()
    );
    assert_eq!(
        the_transfer(&app, &order_id).await["status"],
        "indeterminate"
    );

    // The same key again, a minute later: absent, attempt 2.
    app.advance(Duration::from_secs(60));
    let r = app.send(retry(key)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["absent"], true, "{answer}");
    assert_eq!(answer["attempt"], 2, "{answer}");
    assert!(answer.get("found").is_none(), "{answer}");
    assert_eq!(answer["from_status"], "indeterminate", "{answer}");

    app.run_until_idle().await;
    let t = the_transfer(&app, &order_id).await;
    assert_eq!(t["status"], "completed", "{t}");
    let at_stripe = app.fake().transfers();
    assert_eq!(at_stripe.len(), 1, "exactly one transfer: {at_stripe:?}");
    assert_eq!(t["stripe_transfer_id"], at_stripe[0].id.as_str(), "{t}");
    assert_eq!(at_stripe[0].metadata.get("attempt").unwrap(), "2");
    app.shutdown().await.unwrap();
}

/// A second transfer for a paid share, made at Stripe behind the ledger's
/// back (another key, the same `metadata[transfer_id]`): the provider
/// reconcile reports it as `duplicate_at_provider`, the anomaly read model
/// lists it, and `ledger verify` exits non-zero with a `provider_mismatch`
/// finding. Windows the route refuses are a 4xx with the error shape.
async fn a_duplicate_at_stripe_is_an_anomaly_verify_reports(kind: Kind) {
    let app = spawn_app_with_psp(kind, &[]).await;
    let order_id = paid_order(&app, "dup-1").await;
    let t = the_transfer(&app, &order_id).await;
    assert_eq!(t["status"], "completed", "{t}");
    let transfer_id =
        TransferId(uuid::Uuid::parse_str(t["transfer_id"].as_str().unwrap()).unwrap());

    // A minute later, nothing to report yet.
    app.advance(Duration::from_secs(60));
    let r = admin_with(&app, "/v1/admin/reconcile/provider", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["anomalies"], json!([]), "{}", r.text());
    assert_eq!(r.json()["matched"], 1, "{}", r.text());

    let stripe = StripeClient::new(
        format!("{}/stripe", app.server().fake_base_url().unwrap()),
        Secret::new(FAKE_STRIPE_SECRET_KEY),
        Duration::from_secs(10),
    )
    .unwrap();
    let second = stripe
        .create_transfer(&CreateTransfer {
            transfer_id,
            attempt: 99,
            amount: Amount::new(1_350, Currency::parse("USD").unwrap()),
            destination: SellerAccount::new("acct_s-1").unwrap(),
            transfer_group: Some(format!("order_{order_id}")),
            metadata: BTreeMap::from([
                ("transfer_id".to_owned(), transfer_id.to_string()),
                ("attempt".to_owned(), "99".to_owned()),
            ]),
        })
        .await
        .unwrap();
    assert_eq!(app.fake().transfers().len(), 2);
    app.advance(Duration::from_secs(60));

    let r = admin_with(&app, "/v1/admin/reconcile/provider", "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["transfers_listed"], 2, "{report}");
    let anomalies = report["anomalies"].as_array().unwrap();
    assert_eq!(anomalies.len(), 1, "{report}");
    assert_eq!(anomalies[0]["kind"], "duplicate_at_provider", "{report}");
    assert_eq!(anomalies[0]["provider_id"], second.id.as_str(), "{report}");
    assert_eq!(
        anomalies[0]["stream_id"],
        transfer_id.stream_id().to_string(),
        "{report}"
    );
    assert_eq!(anomalies[0]["new"], true, "{report}");
    app.settle().await;
    let listed = app.get_json("/v1/anomalies").await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "transfer_duplicate_at_provider"),
        "{listed}"
    );

    // Windows the route refuses.
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z").unwrap();
    for body in [
        json!({"from": "2026-11-27T10:00:00Z", "to": "2026-11-27T10:00:00Z"}),
        json!({"from": "2026-11-27T11:00:00Z", "to": "2026-11-27T10:00:00Z"}),
        json!({"from": "2026-10-01T00:00:00Z", "to": "2026-11-27T10:00:00Z"}),
    ] {
        admin_with(&app, "/v1/admin/reconcile/provider", &body.to_string())
            .await
            .assert_error(422, "invalid_window");
    }
    admin_with(
        &app,
        "/v1/admin/reconcile/provider",
        &json!({"from": "yesterday"}).to_string(),
    )
    .await
    .assert_error(400, "invalid_request");
    admin_with(&app, "/v1/admin/reconcile/provider", r#"{"since":"24h"}"#)
        .await
        .assert_error(400, "invalid_request");
    admin_with(&app, "/v1/admin/reconcile/provider", "{")
        .await
        .assert_error(400, "malformed_json");
    // A window that holds the server's now but not the duplicate: clean.
    let r = admin_with(
        &app,
        "/v1/admin/reconcile/provider",
        &json!({"from": (now - chrono::TimeDelta::days(3)).to_rfc3339(),
                "to": (now - chrono::TimeDelta::days(2)).to_rfc3339()})
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["transfers_listed"], 0, "{}", r.text());

    // `ledger reconcile --provider` (the real binary) against this Stripe:
    // the anomaly again (already recorded), exit 1. Without keys it refuses
    // the empty fake and names the route, exit 2.
    let fake_url = app.server().fake_base_url().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let cli = |keys: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ledger-e2e"));
        cmd.args([
            "reconcile",
            "--provider",
            "--from",
            "2026-11-27T00:00:00Z",
            "--to",
            "2026-11-28T00:00:00Z",
        ])
        .env("DATABASE_URL", &app.database_url)
        .env("RUST_LOG", "warn")
        .current_dir(cwd.path());
        if keys {
            cmd.env(
                "HYPERSWITCH_API_KEY",
                ledger_psp_fake::FAKE_HYPERSWITCH_API_KEY,
            )
            .env("HYPERSWITCH_BASE_URL", format!("{fake_url}/hs"))
            .env("STRIPE_SECRET_KEY", FAKE_STRIPE_SECRET_KEY)
            .env("STRIPE_BASE_URL", format!("{fake_url}/stripe"));
        }
        cmd.output().expect("spawn ledger")
    };
    let found = cli(true);
    let out = common::stdout(&found);
    assert_eq!(
        found.status.code(),
        Some(1),
        "{out}\n{}",
        common::stderr(&found)
    );
    assert!(
        out.lines().any(|l| l.starts_with(&format!(
            "ANOMALY duplicate_at_provider {}",
            second.id.as_str()
        ))),
        "{out}"
    );
    assert!(out.contains("1 anomalies (0 new)"), "{out}");
    let refused = cli(false);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "{}",
        common::stdout(&refused)
    );
    assert!(
        common::stderr(&refused).contains("/v1/admin/reconcile/provider"),
        "{}",
        common::stderr(&refused)
    );

    // Resolving an anomaly: the route reaches the core, which refuses one
    // that was never recorded; bad bodies are refused before it.
    let resolve = |body: Value| {
        let path = format!("/v1/admin/transfers/{transfer_id}/anomalies/resolve");
        let app = &app;
        async move { admin_with(app, &path, &body.to_string()).await }
    };
    resolve(json!({"kind": "duplicate_at_provider", "provider_id": "tr_never_made", "note": "x"}))
        .await
        .assert_error(409, "anomaly_not_recorded");
    resolve(
        json!({"kind": "duplicate_at_provider", "provider_id": second.id.as_str(), "note": "  "}),
    )
    .await
    .assert_error(422, "invalid_field");
    resolve(json!({"kind": "teleported", "note": "x"}))
        .await
        .assert_error(400, "invalid_request");
    admin_with(
        &app,
        "/v1/admin/transfers/not-a-uuid/anomalies/resolve",
        &json!({"kind": "duplicate_at_provider", "note": "x"}).to_string(),
    )
    .await
    .assert_error(404, "transfer_not_found");

    // The server stops; its store (and SQLite file) stays for the binary.
    let mut app = app;
    app.take_server().shutdown().await.unwrap();
    let database_url = app.database_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let verify = common::ledger(&database_url, &["verify"], dir.path());
    let out = common::stdout(&verify);
    assert!(
        !verify.status.success(),
        "verify must fail: {out}\n{}",
        common::stderr(&verify)
    );
    assert!(
        out.lines().any(|l| l.starts_with("FINDING ")
            && l.contains("kind=provider_mismatch")
            && l.contains(second.id.as_str())),
        "{out}"
    );
}

http_tests!(
    a_lost_answer_is_found_by_the_operator_retry,
    a_create_that_did_nothing_is_proven_absent_then_paid_once,
    a_duplicate_at_stripe_is_an_anomaly_verify_reports,
);
