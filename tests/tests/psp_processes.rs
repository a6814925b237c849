#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The PSP process managers across real processes: two `ledger serve`
//! processes on one Postgres schema sharing one PSP fake (which both reach
//! over loopback as if it were Hyperswitch and Stripe), and
//! `ledger reconcile --once` run as its own process.

#[path = "common/http.rs"]
mod http_common;
#[path = "common/process.rs"]
mod process;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use http_common::{fresh_pg_store_url, two_seller_order};
use ledger_core::ids::{
    BuyerId, OrderId, ProductId, SellerAccount, SellerId, order_id_from_idempotency_key,
    payment_id_for,
};
use ledger_core::order::{LineInput, Order, OrderCommand};
use ledger_core::psp::PaymentStatus;
use ledger_core::{Amount, Currency, FeeBps, Source};
use ledger_postgres::PgStore;
use ledger_psp::{CreatePayment, HyperswitchClient, Secret};
use ledger_psp_fake::{
    Endpoint, FAKE_HYPERSWITCH_API_KEY, FAKE_STRIPE_SECRET_KEY, FakeConfig, FakeHandle, FakePsp,
    ResourceBehaviour,
};
use ledger_store::handle::{CommandContext, execute, load};
use process::{ServeProcess, free_port, ledger_cmd};
use serde_json::{Value, json};

const API_TOKEN: &str = "apitok-PSPPROC-1";
const ADMIN_TOKEN: &str = "admtok-PSPPROC-2";
const WEBHOOK_SECRET: &str = "whsec-PSPPROC-3";
/// Longest the two servers get to finish all the work of the test.
const CONVERGE_MAX: Duration = Duration::from_secs(90);
/// How often the test looks at the fake's counters while it waits.
const POLL: Duration = Duration::from_millis(100);

/// The env of a development process that treats the test's PSP fake as
/// the real Hyperswitch and Stripe (keys and base URLs set: `PspMode::Real`).
fn env_against(fake: &FakeHandle, database_url: &str) -> HashMap<String, String> {
    [
        ("APP_ENV", "development".to_owned()),
        ("DATABASE_URL", database_url.to_owned()),
        ("LEDGER_API_TOKEN", API_TOKEN.to_owned()),
        ("LEDGER_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("HYPERSWITCH_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("HYPERSWITCH_API_KEY", FAKE_HYPERSWITCH_API_KEY.to_owned()),
        ("HYPERSWITCH_BASE_URL", fake.hyperswitch_base_url()),
        ("STRIPE_SECRET_KEY", FAKE_STRIPE_SECRET_KEY.to_owned()),
        ("STRIPE_BASE_URL", fake.stripe_base_url()),
        ("LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
        // The seed's default polls reversals once a minute; ops shorten it.
        ("REVERSAL_CHECK_INTERVAL", "1s".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn post(client: &reqwest::Client, url: String, key: &str, body: &Value) -> Value {
    let r = client
        .post(&url)
        .bearer_auth(API_TOKEN)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert!(status.is_success(), "POST {url}: {status} {body}");
    body
}

async fn transfers(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let r = client
        .get(format!("{base}/v1/transfers?limit=200"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    body["items"].as_array().unwrap().clone()
}

/// Waits until `done` holds, or fails with `what` after [`CONVERGE_MAX`].
/// The servers run on their own timers in other processes; looking again
/// every [`POLL`] is the only way to see them finish.
async fn converge<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let deadline = Instant::now() + CONVERGE_MAX;
    loop {
        let Some(state) = done().await else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "{what} not reached in {CONVERGE_MAX:?}: {state}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Ten orders and four refunds through two servers on one Postgres, both
/// running every manager on their timers: every PSP object exists once and
/// every create request was made once — neither process repeated the
/// other's call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_never_double_act() {
    const ORDERS: usize = 10;
    const REFUNDS: usize = 4;
    let fake = FakePsp::start(FakeConfig {
        auto_deliver_webhooks: true,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let url = fresh_pg_store_url().await;
    let env = env_against(&fake, &url);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = tokio::join!(
        ServeProcess::spawn(&env, free_port(), dir.path()),
        ServeProcess::spawn(&env, free_port(), dir.path()),
    );
    fake.set_webhook_target(
        format!("{}/webhooks/hyperswitch", b.base),
        Some(WEBHOOK_SECRET.to_owned()),
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let servers = [&a.base, &b.base];

    let mut orders = Vec::new();
    for i in 0..ORDERS {
        let placed = post(
            &client,
            format!("{}/v1/orders", servers[i % 2]),
            &format!("two-{i}"),
            &two_seller_order(&format!("buyer-{i}")),
        )
        .await;
        orders.push(placed["order_id"].as_str().unwrap().to_owned());
    }
    converge("every transfer paid", || async {
        let n = fake.counters().transfers_created;
        (n < 2 * ORDERS as u64).then(|| format!("{n} transfers"))
    })
    .await;
    converge("the read models showing them", || async {
        let t = transfers(&client, &a.base).await;
        let done = t.iter().filter(|t| t["status"] == "completed").count();
        (done < 2 * ORDERS).then(|| format!("{done} completed"))
    })
    .await;

    for (i, order) in orders.iter().take(REFUNDS).enumerate() {
        post(
            &client,
            format!("{}/v1/orders/{order}/refunds", servers[(i + 1) % 2]),
            &format!("two-refund-{i}"),
            &json!({"reason": "two servers", "product_ids": ["p-a"]}),
        )
        .await;
    }
    converge("every refund reversed", || async {
        let t = transfers(&client, &b.base).await;
        let reversed = t.iter().filter(|t| t["status"] == "reversed").count();
        (reversed < REFUNDS).then(|| format!("{reversed} reversed"))
    })
    .await;

    let c = fake.counters();
    assert_eq!(
        [
            c.payments_created,
            c.refunds_created,
            c.transfers_created,
            c.reversals_created
        ],
        [
            ORDERS as u64,
            REFUNDS as u64,
            2 * ORDERS as u64,
            REFUNDS as u64
        ],
        "{c:?}"
    );
    assert_eq!(
        [
            c.requests_to(Endpoint::CreatePayment),
            c.requests_to(Endpoint::CreateRefund),
            c.requests_to(Endpoint::CreateTransfer),
            c.requests_to(Endpoint::CreateReversal),
        ],
        [
            ORDERS as u64,
            REFUNDS as u64,
            2 * ORDERS as u64,
            REFUNDS as u64
        ],
        "a create request was repeated: {c:?}"
    );
    let t = transfers(&client, &a.base).await;
    assert_eq!(t.len(), 2 * ORDERS);
    assert_eq!(
        t.iter().filter(|t| t["status"] == "completed").count(),
        2 * ORDERS - REFUNDS
    );

    let (a, b) = tokio::join!(a.stop(), b.stop());
    for (name, stopped) in [("a", &a), ("b", &b)] {
        assert!(
            stopped.status.success(),
            "{name}: {:?}\n{}",
            stopped.status,
            stopped.stderr
        );
    }
    fake.shutdown().await;
}

fn ctx(cause: &str) -> CommandContext {
    CommandContext::from_cause(cause, "e2e", Source::Api)
}

/// An order placed 40 minutes ago whose payment succeeded at Hyperswitch,
/// but whose webhook never came: `ledger reconcile --once` asks the PSP,
/// completes the order, logs one `reconcile` line, and never creates
/// anything; a second pass finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_once_completes_an_order_whose_webhook_was_lost() {
    let fake = FakePsp::start(FakeConfig {
        payment_behaviour: ResourceBehaviour::Hold,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let url = fresh_pg_store_url().await;
    let store = PgStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();

    let order_id: OrderId = order_id_from_idempotency_key("lost-webhook");
    let stream = order_id.stream_id();
    let usd = Currency::parse("USD").unwrap();
    let placed_at = Utc::now() - TimeDelta::minutes(40);
    execute::<Order, _>(
        &store,
        &stream,
        &ctx("place"),
        &OrderCommand::PlaceOrder {
            order_id,
            buyer_id: BuyerId::new("buyer-lost").unwrap(),
            currency: usd,
            lines: vec![LineInput {
                product_id: ProductId::new("p-1").unwrap(),
                seller_id: SellerId::new("s-1").unwrap(),
                seller_account: SellerAccount::new("acct_s1").unwrap(),
                unit_amount_minor: 1_000,
                quantity: 1,
            }],
            fee_bps: FeeBps::new(1_000).unwrap(),
            now: placed_at,
        },
    )
    .await
    .unwrap();
    // The payment manager created the payment and recorded it; the buyer
    // paid; Hyperswitch's webhook is lost (no target is configured).
    let hyperswitch = HyperswitchClient::new(
        fake.hyperswitch_base_url(),
        Secret::new(FAKE_HYPERSWITCH_API_KEY),
        Duration::from_secs(5),
    )
    .unwrap();
    hyperswitch
        .create_payment(&CreatePayment {
            payment_id: payment_id_for(order_id),
            amount: Amount::new(1_000, usd),
            customer_id: None,
            description: None,
            metadata: Default::default(),
        })
        .await
        .unwrap();
    execute::<Order, _>(
        &store,
        &stream,
        &ctx("initiate"),
        &OrderCommand::InitiatePayment {
            payment_id: payment_id_for(order_id),
            now: placed_at,
        },
    )
    .await
    .unwrap();
    fake.complete_payment(
        payment_id_for(order_id).as_str(),
        PaymentStatus::Succeeded.as_str(),
    )
    .unwrap();

    let env = env_against(&fake, &url);
    let dir = tempfile::tempdir().unwrap();
    let run = |env: HashMap<String, String>, path: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            ledger_cmd(&["reconcile", "--once"], &env)
                .current_dir(path)
                .output()
                .unwrap()
        })
    };
    let out = run(env.clone(), dir.path().to_owned()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("changed 1;"), "{stdout}");
    let report: Value =
        serde_json::from_str(&stdout[..stdout.rfind("\nreconcile pass:").expect("summary line")])
            .unwrap();
    let action = &report["orders"]["actions"][0];
    assert_eq!(action["stream_id"], stream.to_string());
    assert_eq!(
        (
            &action["from_status"],
            &action["to_status"],
            &action["psp_status"]
        ),
        (&json!("pending"), &json!("completed"), &json!("succeeded"))
    );
    // One structured line tells the ops story.
    let lines: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l.to_string().contains("reconcile") && l.to_string().contains(&stream.to_string())
        })
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0].to_string();
    for needle in ["pending", "completed", "succeeded", "stuck"] {
        assert!(line.contains(needle), "{needle} missing: {line}");
    }

    let order = load::<Order, _>(&store, &stream)
        .await
        .unwrap()
        .state
        .order
        .unwrap();
    assert_eq!(order.status.as_str(), "completed");
    let c = fake.counters();
    assert_eq!(c.payments_created, 1, "the reconciler never creates");
    assert_eq!(c.requests_to(Endpoint::CreatePayment), 1);
    assert!(c.requests_to(Endpoint::GetPayment) >= 1);

    let again = run(env, dir.path().to_owned()).await.unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(stdout.contains("changed 0;"), "{stdout}");
    fake.shutdown().await;
}

/// Without PSP keys there is nothing real to ask: the command says where the
/// development fake lives instead of reporting on an empty one.
#[test]
fn reconcile_without_psp_keys_names_the_admin_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let env: HashMap<String, String> = [
        ("APP_ENV", "development"),
        ("DATABASE_URL", "sqlite://./ledger.db"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let out = ledger_cmd(&["reconcile", "--once"], &env)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/v1/admin/reconcile"), "{stderr}");
    assert!(stderr.contains("HYPERSWITCH_API_KEY"), "{stderr}");
}
