//! End-to-end: the real `ledger serve` process. Production refuses unsafe
//! configuration (one test per rule, through `Config::from_env`, and the
//! binary exiting non-zero with the sentence and no secret); a development
//! server logs at debug as JSON without ever printing a token, the webhook
//! secret or a signature, and exits 0 on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/http.rs"]
mod http_common;
#[path = "common/process.rs"]
mod process;

use std::collections::HashMap;

use http_common::{fresh_pg_store_url, item, order_body, payment_succeeded_webhook};
use ledger_api::config::{Config, ConfigError, ProductionRefusal};
use ledger_core::ids::OrderId;
use process::{ServeProcess, Stopped, free_port, ledger_cmd};
use uuid::Uuid;

const P_API_TOKEN: &str = "apitok-PROC-SENTINEL-3c5e7a9b1d0f2e4d";
const P_ADMIN_TOKEN: &str = "admtok-PROC-SENTINEL-2b4d6f8a0c1e3f5a";
const P_WEBHOOK_SECRET: &str = "whsec-PROC-SENTINEL-9e7c5a3b1f";
const P_HS_API_KEY: &str = "snd-hskey-PROC-SENTINEL-1234";
const P_STRIPE_KEY: &str = "sk_live_PROC-SENTINEL-5678";
const P_DB_PASSWORD: &str = "dbpass-PROC-SENTINEL-4242";
const P_WRONG_TOKEN: &str = "wrongtok-PROC-SENTINEL-7777";
const SECRETS: [&str; 7] = [
    P_API_TOKEN,
    P_ADMIN_TOKEN,
    P_WEBHOOK_SECRET,
    P_HS_API_KEY,
    P_STRIPE_KEY,
    P_DB_PASSWORD,
    P_WRONG_TOKEN,
];

/// A production env that passes every check.
fn production_env() -> HashMap<String, String> {
    [
        ("APP_ENV", "production".to_owned()),
        (
            "DATABASE_URL",
            format!("postgres://ledger:{P_DB_PASSWORD}@127.0.0.1:1/ledger"),
        ),
        ("LEDGER_API_TOKEN", P_API_TOKEN.to_owned()),
        ("LEDGER_ADMIN_TOKEN", P_ADMIN_TOKEN.to_owned()),
        ("HYPERSWITCH_ENABLED", "true".to_owned()),
        (
            "HYPERSWITCH_BASE_URL",
            "https://api.hyperswitch.io".to_owned(),
        ),
        ("HYPERSWITCH_API_KEY", P_HS_API_KEY.to_owned()),
        ("HYPERSWITCH_WEBHOOK_SECRET", P_WEBHOOK_SECRET.to_owned()),
        ("STRIPE_SECRET_KEY", P_STRIPE_KEY.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `production_env()` with `var` removed (`None`) or set.
fn production_with(var: &str, value: Option<&str>) -> HashMap<String, String> {
    let mut env = production_env();
    match value {
        Some(v) => env.insert(var.to_owned(), v.to_owned()),
        None => env.remove(var),
    };
    env
}

fn assert_no_secret(text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "secret {s} leaked into:\n{text}");
    }
}

/// The refusals of `env`, checking the error text names each one and
/// shows no secret.
fn refusals(env: &HashMap<String, String>) -> Vec<ProductionRefusal> {
    match Config::from_env(&|k| env.get(k).cloned()) {
        Err(e @ ConfigError::Production { .. }) => {
            let text = e.to_string();
            assert_no_secret(&text);
            let ConfigError::Production { refusals, .. } = e else {
                unreachable!()
            };
            for r in &refusals {
                assert!(text.contains(&r.to_string()), "{text}");
            }
            refusals
        }
        Err(other) => panic!("expected a production refusal, got {other}"),
        Ok((config, _)) => panic!("expected a production refusal, got {config:?}"),
    }
}

#[test]
fn complete_production_config_starts() {
    let env = production_env();
    let (config, warnings) = Config::from_env(&|k| env.get(k).cloned()).expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(config.check_production().is_ok());
    assert_no_secret(&config.redacted_summary());
    assert_no_secret(&format!("{config:?}"));
}

#[test]
fn production_refuses_payments_disabled() {
    let r = refusals(&production_with("HYPERSWITCH_ENABLED", Some("false")));
    assert_eq!(r, [ProductionRefusal::PaymentsDisabled]);
    assert!(r[0].to_string().contains("giving away products"));
}

#[test]
fn production_refuses_a_missing_webhook_secret() {
    let r = refusals(&production_with("HYPERSWITCH_WEBHOOK_SECRET", None));
    assert_eq!(r, [ProductionRefusal::WebhookSecretMissing]);
    assert!(
        r[0].to_string()
            .contains("HYPERSWITCH_WEBHOOK_SECRET is not set")
    );
}

#[test]
fn production_refuses_a_missing_api_token() {
    let r = refusals(&production_with("LEDGER_API_TOKEN", None));
    assert_eq!(r, [ProductionRefusal::ApiTokenMissing]);
    assert!(r[0].to_string().contains("LEDGER_API_TOKEN is not set"));
}

#[test]
fn production_refuses_a_missing_admin_token() {
    let r = refusals(&production_with("LEDGER_ADMIN_TOKEN", None));
    assert_eq!(r, [ProductionRefusal::AdminTokenMissing]);
    // The same value for both is no admin token at all.
    let r = refusals(&production_with("LEDGER_ADMIN_TOKEN", Some(P_API_TOKEN)));
    assert_eq!(r, [ProductionRefusal::AdminTokenSameAsApiToken]);
}

#[test]
fn production_refuses_the_sqlite_store() {
    for url in [None, Some("sqlite://./data/ledger.db"), Some("./ledger.db")] {
        let r = refusals(&production_with("DATABASE_URL", url));
        assert_eq!(r, [ProductionRefusal::SqliteStore], "{url:?}");
    }
}

#[test]
fn production_refuses_the_psp_fake() {
    let r = refusals(&production_with("LEDGER_PSP_FAKE", Some("true")));
    assert_eq!(r, [ProductionRefusal::PspFake]);
}

#[test]
fn production_refuses_the_bypass_flag() {
    let r = refusals(&production_with(
        "DISABLE_RATE_LIMIT_FOR_TESTS",
        Some("true"),
    ));
    assert_eq!(
        r,
        [ProductionRefusal::BypassFlag {
            var: "DISABLE_RATE_LIMIT_FOR_TESTS"
        }]
    );
}

#[test]
fn the_binary_refuses_unsafe_production_config_without_printing_secrets() {
    for (var, value, sentence) in [
        ("LEDGER_API_TOKEN", None, "LEDGER_API_TOKEN is not set"),
        ("LEDGER_ADMIN_TOKEN", None, "LEDGER_ADMIN_TOKEN is not set"),
        (
            "HYPERSWITCH_WEBHOOK_SECRET",
            None,
            "HYPERSWITCH_WEBHOOK_SECRET is not set",
        ),
        (
            "HYPERSWITCH_ENABLED",
            Some("false"),
            "HYPERSWITCH_ENABLED=false",
        ),
        (
            "DATABASE_URL",
            Some("sqlite://./never.db"),
            "embedded SQLite file",
        ),
        ("LEDGER_PSP_FAKE", Some("true"), "LEDGER_PSP_FAKE=true"),
        (
            "DISABLE_RATE_LIMIT_FOR_TESTS",
            Some("true"),
            "DISABLE_RATE_LIMIT_FOR_TESTS is set",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = ledger_cmd(&["serve"], &production_with(var, value))
            .current_dir(dir.path())
            .output()
            .expect("spawn ledger serve");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{var}: started anyway\n{stdout}\n{stderr}"
        );
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert!(stderr.contains("refuses to start"), "{var}: {stderr}");
        assert!(stderr.contains(sentence), "{var}: {stderr}");
        assert!(!stdout.contains("listening"), "{var}: {stdout}");
        assert_no_secret(&stdout);
        assert_no_secret(&stderr);
        assert!(
            !dir.path().join("never.db").exists(),
            "refused before touching a store"
        );
    }
}

async fn logs_never_show_secrets_and_sigterm_exits_zero(database_url: String) {
    let dir = tempfile::tempdir().unwrap();
    let env: HashMap<String, String> = [
        ("DATABASE_URL", database_url.as_str()),
        ("LEDGER_API_TOKEN", P_API_TOKEN),
        ("LEDGER_ADMIN_TOKEN", P_ADMIN_TOKEN),
        ("HYPERSWITCH_WEBHOOK_SECRET", P_WEBHOOK_SECRET),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let server = ServeProcess::spawn(&env, free_port(), dir.path()).await;

    let base = server.base.clone();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = client
        .post(format!("{base}/v1/orders"))
        .bearer_auth(P_API_TOKEN)
        .header("idempotency-key", "proc-1")
        .json(&order_body("buyer-proc", vec![item("p-1", "s-1", 1000, 1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let order: serde_json::Value = r.json().await.unwrap();
    let order = OrderId(Uuid::parse_str(order["order_id"].as_str().unwrap()).unwrap());
    let r = client
        .get(format!("{base}/v1/orders"))
        .bearer_auth(P_ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{base}/v1/orders"))
        .bearer_auth(P_WRONG_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{base}/v1/admin/reconcile"))
        .bearer_auth(P_API_TOKEN)
        .header("idempotency-key", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let body = payment_succeeded_webhook(order, 1000);
    let right = ledger_psp::sign_hyperswitch(P_WEBHOOK_SECRET.as_bytes(), &body);
    let wrong = ledger_psp::sign_hyperswitch(b"not-the-secret", &body);
    for (sig, status) in [(&wrong, 401), (&right, 200), (&right, 200)] {
        let r = client
            .post(format!("{base}/webhooks/hyperswitch"))
            .header("content-type", "application/json")
            .header("x-webhook-signature-512", sig.as_str())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
    }
    drop(client);

    let Stopped {
        status,
        stdout,
        stderr,
    } = server.stop().await;
    assert!(status.success(), "exit {status:?}\n{stdout}\n{stderr}");

    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
    // Debug logging really ran, covering the requests and the webhooks.
    assert!(stderr.contains("\"level\":\"DEBUG\""), "{stderr}");
    assert!(stderr.contains("request_id"), "{stderr}");
    assert!(stderr.contains("webhook"), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    for text in [&stdout, &stderr] {
        assert_no_secret(text);
        assert!(!text.contains(&right), "the signature leaked:\n{text}");
        assert!(
            !text.contains(&wrong),
            "the presented signature leaked:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_serve_logs_never_show_secrets_and_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    logs_never_show_secrets_and_sigterm_exits_zero(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_serve_logs_never_show_secrets_and_sigterm_exits_zero() {
    logs_never_show_secrets_and_sigterm_exits_zero(fresh_pg_store_url().await).await;
}
