//! Shared by the `http_*` end-to-end tests: the real server
//! (`ledger_api::serve::start`: router, projector, retention) on a free port,
//! over a fresh Postgres schema or a temp SQLite file, with a manual clock;
//! plus request, webhook, counting and waiting helpers.
//!
//! Include with `#[macro_use] #[path = "common/http.rs"] mod http_common;`.
//! [`http_tests!`] turns each `async fn name(kind: Kind)` into a
//! `postgres::name` and a `sqlite::name` test.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use ledger_api::config::Config;
use ledger_api::http::AppState;
use ledger_api::serve::{self, RunningServer};
use ledger_api::store::Backend;
use ledger_core::RecordedEvent;
use ledger_core::Source;
use ledger_core::ids::{OrderId, RefundId, payment_id_for, psp_refund_id_for};
use ledger_core::order::{Order, OrderCommand};
use ledger_postgres::PgStore;
use ledger_projections::clock::{Clock, ManualClock};
use ledger_projections::managers::{Managers, RunReport};
use ledger_psp_fake::FakePsp;
use ledger_sqlite::SqliteStore;
use ledger_store::handle::{CommandContext, execute};
use ledger_store::webhook_log::WebhookLogEntry;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::net::TcpListener;
use uuid::Uuid;

/// Distinctive secrets: tests assert they never show up where they must not.
pub const API_TOKEN: &str = "apitok-E2E-4f1c9a7b2d";
pub const ADMIN_TOKEN: &str = "admtok-E2E-8e3b6d0c5a";
pub const WEBHOOK_SECRET: &str = "whsec-E2E-2a7d9f4e1b";
/// What Hyperswitch sends (psp.md).
pub const HYPERSWITCH_UA: &str = "Hyperswitch-Backend-Server";
/// Longest a test waits for the projector to reach the store head. Only a
/// transaction held open elsewhere on the Postgres cluster gets near it.
pub const SETTLE_MAX: Duration = Duration::from_secs(30);
/// Rounds `run_until_idle` tries before it declares a livelock; the longest
/// chain (refund → settle → sellers → reversal) needs about six.
pub const IDLE_ROUNDS_MAX: usize = 25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Sqlite,
}

/// Generates `postgres::$name` and `sqlite::$name` tests from
/// `async fn $name(kind: Kind)`.
#[macro_export]
macro_rules! http_tests {
    ($($name:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::http_common::Kind::Postgres).await;
                }
            )+
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::http_common::Kind::Sqlite).await;
                }
            )+
        }
    };
}

/// The test database (CI: `postgres://postgres@127.0.0.1:5432/test`).
pub fn pg_base() -> String {
    std::env::var("LEDGER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A migrated Postgres store in a schema of its own (`h_<uuid>`).
pub async fn fresh_pg_store() -> PgStore {
    let base = pg_base();
    let schema = format!("h_{}", Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&base)
        .await
        .expect("connect to the test database");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create schema {schema}")))
        .execute(&mut conn)
        .await
        .expect("create test schema");
    conn.close().await.unwrap();
    let options = PgConnectOptions::from_str(&base)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    PgStore::connect_with(options).await.expect("connect store")
}

/// A fresh schema in the test database, as a `DATABASE_URL` for the binary.
pub async fn fresh_pg_store_url() -> String {
    let base = pg_base();
    let schema = format!("h_{}", Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&base)
        .await
        .expect("connect to the test database");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create schema {schema}")))
        .execute(&mut conn)
        .await
        .expect("create test schema");
    conn.close().await.unwrap();
    format!("{base}?options[search_path]={schema}")
}

/// The instant the manual clock starts at.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()
}

/// One HTTP response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub bytes: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status and that the body is exactly
    /// `{"error":{"code":<code>,"message":<non-empty>}}`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        let body = self.json();
        let obj = body
            .as_object()
            .unwrap_or_else(|| panic!("not a JSON object: {}", self.text()));
        assert_eq!(obj.len(), 1, "{body}");
        let err = body["error"]
            .as_object()
            .unwrap_or_else(|| panic!("no error object: {body}"));
        assert_eq!(err.len(), 2, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.trim().is_empty(), "{body}");
        for secret in [API_TOKEN, ADMIN_TOKEN, WEBHOOK_SECRET] {
            assert!(!message.contains(secret), "{body}");
        }
    }
}

/// How a test webhook is signed.
#[derive(Debug, Clone, Copy)]
pub enum Sig<'a> {
    Valid,
    Missing,
    /// A given header value.
    Header(&'a str),
    /// The right key over a different body.
    OtherBody(&'a [u8]),
}

/// Row counts that a refused request must leave unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub events: i64,
    pub idempotency: i64,
    pub webhook_log: i64,
}

pub struct TestApp {
    pub kind: Kind,
    pub base_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub webhook_key: Vec<u8>,
    pub clock: Arc<ManualClock>,
    pub backend: Backend,
    /// The store as a `DATABASE_URL` for the real binary (`ledger verify`).
    pub database_url: String,
    server: Option<RunningServer>,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// The env of every test app: both tokens and the webhook secret, so every
/// guard is on but the rate limits. `overrides` add or replace; an empty value removes.
pub fn test_env(overrides: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("LEDGER_API_TOKEN", API_TOKEN),
        ("LEDGER_ADMIN_TOKEN", ADMIN_TOKEN),
        ("HYPERSWITCH_WEBHOOK_SECRET", WEBHOOK_SECRET),
        // Suites send requests as fast as they can; the limits' own tests
        // turn them back on (`("DISABLE_RATE_LIMIT_FOR_TESTS", "")`).
        ("DISABLE_RATE_LIMIT_FOR_TESTS", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in overrides {
        if v.is_empty() {
            env.remove(*k);
        } else {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
    }
    env
}

/// Starts the real server on `127.0.0.1:0` over a fresh store, with the
/// PSP process managers off (`HYPERSWITCH_ENABLED=false`): the HTTP edge
/// alone, where an order stays `created` until a test moves it. The
/// `http_psp` suite runs the whole system with [`spawn_app_with_psp`].
pub async fn spawn_app(kind: Kind, overrides: &[(&str, &str)]) -> TestApp {
    let mut all = vec![("HYPERSWITCH_ENABLED", "false")];
    all.extend_from_slice(overrides);
    start_app(kind, &all).await
}

/// The real server with the PSP process managers wired to its in-process
/// PSP fake (development without PSP keys). The managers run only when a
/// test calls them; the fake's webhooks wait for `deliver_pending_webhooks`.
pub async fn spawn_app_with_psp(kind: Kind, overrides: &[(&str, &str)]) -> TestApp {
    start_app(kind, overrides).await
}

async fn start_app(kind: Kind, overrides: &[(&str, &str)]) -> TestApp {
    let env = test_env(overrides);
    let (config, _warnings) =
        Config::from_env(&|k| env.get(k).cloned()).expect("the test config is valid");
    let (backend, dir, database_url) = match kind {
        Kind::Postgres => {
            let url = fresh_pg_store_url().await;
            let store = PgStore::connect(&url).await.expect("connect store");
            (Backend::Postgres(store), None, url)
        }
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ledger.db");
            let store = SqliteStore::open(&path).await.unwrap();
            let url = format!("sqlite://{}", path.display());
            (Backend::Sqlite(store), Some(dir), url)
        }
    };
    backend.migrate().await.expect("migrate");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let server = serve::start(
        &config,
        &backend,
        listener,
        clock.clone(),
        ledger_api::managers::WorkerMode::Manual,
    )
    .await
    .expect("serve::start");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    TestApp {
        kind,
        base_url: format!("http://{}", server.addr),
        client,
        state: server.state.clone(),
        webhook_key: env
            .get("HYPERSWITCH_WEBHOOK_SECRET")
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_default(),
        clock,
        backend,
        database_url,
        server: Some(server),
        _dir: dir,
    }
}

pub async fn read(resp: reqwest::Response) -> Resp {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("read the response body").to_vec();
    Resp {
        status,
        headers,
        bytes,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A request with no credentials.
    pub fn anon(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A request with the API token.
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.anon(method, path).bearer_auth(API_TOKEN)
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        read(rb.send().await.expect("send request")).await
    }

    /// `GET path` with the API token.
    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.req(Method::GET, path)).await
    }

    /// `GET path`, asserting 200, as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    /// A command: `POST path` with the API token, JSON content type, and
    /// the Idempotency-Key when given.
    pub async fn command(
        &self,
        path: &str,
        key: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Resp {
        let mut rb = self
            .req(Method::POST, path)
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            rb = rb.header("idempotency-key", key);
        }
        self.send(rb).await
    }

    pub async fn post_order(&self, key: &str, body: &Value) -> Resp {
        self.command("/v1/orders", Some(key), serde_json::to_vec(body).unwrap())
            .await
    }

    /// Places an order, asserting 201; returns the id and the response body.
    pub async fn place_order(&self, key: &str, body: &Value) -> (OrderId, Value) {
        let r = self.post_order(key, body).await;
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        let id = OrderId(Uuid::parse_str(v["order_id"].as_str().unwrap()).unwrap());
        (id, v)
    }

    /// A fresh two-line, two-seller order (total 2 × 1500 + 2500 = 5500).
    pub async fn place_simple_order(&self) -> (OrderId, i64) {
        let key = format!("order-{}", Uuid::new_v4());
        let (id, v) = self.place_order(&key, &two_seller_order("buyer-1")).await;
        (id, v["total_minor"].as_i64().unwrap())
    }

    /// Records `InitiatePayment` as the payment manager does: a no-op (zero
    /// events) when `POST /v1/orders` already started the payment inline.
    pub async fn initiate_payment(&self, order_id: OrderId) {
        let ctx =
            CommandContext::from_cause(&format!("test:initiate:{order_id}"), "e2e", Source::Worker);
        let command = OrderCommand::InitiatePayment {
            payment_id: payment_id_for(order_id),
            now: ledger_projections::clock::Clock::now(&*self.clock),
        };
        execute::<Order, _>(&*self.state.events, &order_id.stream_id(), &ctx, &command)
            .await
            .expect("initiate payment");
        self.state.wake.notify_one();
    }

    /// `POST /webhooks/hyperswitch` as Hyperswitch sends it.
    pub async fn deliver(&self, body: &[u8], sig: Sig<'_>, request_id: Option<&str>) -> Resp {
        let mut rb = self
            .anon(Method::POST, "/webhooks/hyperswitch")
            .header("content-type", "application/json")
            .header("user-agent", HYPERSWITCH_UA)
            .body(body.to_vec());
        let signature = match sig {
            Sig::Valid => Some(ledger_psp::sign_hyperswitch(&self.webhook_key, body)),
            Sig::Missing => None,
            Sig::Header(h) => Some(h.to_owned()),
            Sig::OtherBody(other) => Some(ledger_psp::sign_hyperswitch(&self.webhook_key, other)),
        };
        if let Some(s) = signature {
            rb = rb.header("x-webhook-signature-512", s);
        }
        if let Some(id) = request_id {
            rb = rb.header("x-request-id", id);
        }
        self.send(rb).await
    }

    /// Delivers a signed webhook and asserts `200 {"status": expected}`.
    pub async fn deliver_ok(&self, body: &[u8], expected: &str) {
        let r = self.deliver(body, Sig::Valid, None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!({"status": expected}), "{}", r.text());
    }

    /// Initiates the payment and delivers a signed `payment_succeeded` for
    /// the whole total: the order becomes `completed`.
    pub async fn pay(&self, order_id: OrderId, total: i64) {
        self.initiate_payment(order_id).await;
        let body = payment_webhook(
            &new_event_id(),
            "payment_succeeded",
            order_id,
            "succeeded",
            total,
            Some(total),
        );
        self.deliver_ok(&body, "ok").await;
    }

    /// `POST /v1/orders/{id}/refunds`.
    pub async fn request_refund(&self, order_id: OrderId, key: &str, body: &Value) -> Resp {
        self.command(
            &format!("/v1/orders/{order_id}/refunds"),
            Some(key),
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    /// The order stream as stored.
    pub async fn order_events(&self, order_id: OrderId) -> Vec<RecordedEvent> {
        self.state
            .events
            .read_stream(&order_id.stream_id(), 1, 10_000)
            .await
            .unwrap()
    }

    pub async fn order_event_types(&self, order_id: OrderId) -> Vec<String> {
        self.order_events(order_id)
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    /// The newest `n` webhook log rows, newest first.
    pub async fn webhook_log(&self, n: u32) -> Vec<WebhookLogEntry> {
        self.state.webhook_log.recent_webhook_log(n).await.unwrap()
    }

    async fn scalar(&self, sql: &'static str) -> Option<i64> {
        match &self.backend {
            Backend::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
            Backend::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
        }
    }

    pub async fn counts(&self) -> Counts {
        Counts {
            events: self.scalar("select count(*) from event").await.unwrap_or(0),
            idempotency: self
                .scalar("select count(*) from idempotency_record")
                .await
                .unwrap_or(0),
            webhook_log: self
                .scalar("select count(*) from hyperswitch_webhook_log")
                .await
                .unwrap_or(0),
        }
    }

    /// The highest stored global position (0 for an empty store).
    pub async fn head_position(&self) -> u64 {
        self.scalar("select max(global_position) from event")
            .await
            .map_or(0, |p| u64::try_from(p).unwrap())
    }

    /// Waits until the read-model projector has applied every event stored
    /// now. Watches the projector's own status (it reports after every
    /// batch, and at least every poll interval), never a fixed delay.
    pub async fn settle(&self) {
        let head = self.head_position().await;
        let mut rx = self.state.projections[0].clone();
        let deadline = Instant::now() + SETTLE_MAX;
        loop {
            self.state.wake.notify_one();
            let status = rx.borrow_and_update().clone();
            if status.checkpoint.position >= head {
                return;
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("projector stuck below position {head}: {status:?}"));
            let _ = tokio::time::timeout(left, rx.changed()).await;
        }
    }

    /// Stops the server gracefully (in-flight requests finish).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        match self.server.take() {
            Some(s) => s.shutdown().await,
            None => Ok(()),
        }
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("server running")
    }

    /// The server's PSP process managers (run only when a test calls them).
    pub fn managers(&self) -> &Managers {
        self.server().managers().expect("the managers are wired")
    }

    /// The server's in-process PSP fake.
    pub fn fake(&self) -> &FakePsp {
        self.server().fake().expect("the server runs the PSP fake")
    }

    /// Moves the manual clock.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(chrono::TimeDelta::from_std(by).unwrap());
    }

    /// Drives the whole system until it rests: the fake delivers every
    /// queued webhook to the server, the read models catch up, then every
    /// manager runs one pass at the manual clock's now. Repeats until a
    /// round delivers nothing and the managers report idle.
    pub async fn run_until_idle(&self) -> Vec<RunReport> {
        let mut reports = Vec::new();
        for _ in 0..IDLE_ROUNDS_MAX {
            let delivered = self.fake().deliver_pending_webhooks().await;
            self.settle().await;
            let report = self
                .managers()
                .run_all_once(Clock::now(&*self.clock))
                .await
                .expect("run_all_once");
            let idle = delivered.is_empty() && report.is_idle();
            reports.push(report);
            if idle {
                return reports;
            }
        }
        panic!("the system did not come to rest in {IDLE_ROUNDS_MAX} rounds: {reports:#?}");
    }

    pub fn take_server(&mut self) -> RunningServer {
        self.server.take().expect("server running")
    }
}

pub fn new_event_id() -> String {
    format!("evt_{}", Uuid::new_v4().simple())
}

/// One order item in the request shape.
pub fn item(product: &str, seller: &str, unit_amount_minor: i64, quantity: i64) -> Value {
    json!({
        "product_id": product,
        "seller_id": seller,
        "seller_account": format!("acct_{seller}"),
        "unit_amount_minor": unit_amount_minor,
        "quantity": quantity,
    })
}

pub fn order_body(buyer: &str, items: Vec<Value>) -> Value {
    json!({"buyer_id": buyer, "currency": "USD", "items": items})
}

/// Two sellers, two lines: `p-a` (s-1, 2 × 1500) and `p-b` (s-2, 2500).
pub fn two_seller_order(buyer: &str) -> Value {
    order_body(
        buyer,
        vec![item("p-a", "s-1", 1500, 2), item("p-b", "s-2", 2500, 1)],
    )
}

/// A payment webhook shaped exactly like psp.md's example body.
pub fn payment_webhook(
    event_id: &str,
    event_type: &str,
    order_id: OrderId,
    status: &str,
    amount: i64,
    amount_received: Option<i64>,
) -> Vec<u8> {
    let payment_id = payment_id_for(order_id);
    let received = amount_received.map_or("null".to_owned(), |a| a.to_string());
    format!(
        r#"{{"merchant_id":"merchant_1710609960","event_id":"{event_id}","event_type":"{event_type}","content":{{"type":"payment_details","object":{{"payment_id":"{payment_id}","merchant_id":"merchant_1710609960","status":"{status}","amount":{amount},"net_amount":{amount},"amount_received":{received},"connector":"stripe","created":"2024-03-16T19:55:45.335Z","currency":"USD","customer_id":"StripeCustomer","metadata":null,"error_code":null,"error_message":null,"updated":"2024-03-16T19:55:46.001Z"}}}},"timestamp":"2024-03-16T19:55:46.000Z"}}"#,
        payment_id = payment_id.as_str(),
    )
    .into_bytes()
}

/// A fresh delivery (new event id) of `payment_succeeded` for the whole
/// `amount`.
pub fn payment_succeeded_webhook(order_id: OrderId, amount: i64) -> Vec<u8> {
    payment_webhook(
        &new_event_id(),
        "payment_succeeded",
        order_id,
        "succeeded",
        amount,
        Some(amount),
    )
}

/// A refund webhook (psp.md's refund object) for the ledger's refund.
pub fn refund_webhook(
    event_id: &str,
    event_type: &str,
    refund_id: RefundId,
    order_id: OrderId,
    amount: i64,
    status: &str,
) -> Vec<u8> {
    let psp_refund_id = psp_refund_id_for(refund_id);
    let payment_id = payment_id_for(order_id);
    format!(
        r#"{{"merchant_id":"merchant_1710609960","event_id":"{event_id}","event_type":"{event_type}","content":{{"type":"refund_details","object":{{"refund_id":"{r}","payment_id":"{p}","amount":{amount},"currency":"USD","status":"{status}","reason":"e2e","metadata":{{}},"error_message":null,"error_code":null,"created_at":"2024-03-16T20:00:00.000Z","updated_at":"2024-03-16T20:00:01.000Z","connector":"adyen","profile_id":"pro_e2e","connector_refund_id":"re_e2e"}}}},"timestamp":"2024-03-16T20:00:01.000Z"}}"#,
        r = psp_refund_id.as_str(),
        p = payment_id.as_str(),
    )
    .into_bytes()
}

/// An envelope of a type the ledger does not act on (disputes, mandates,
/// payouts, unknown types).
pub fn other_webhook(event_id: &str, event_type: &str, content_type: &str) -> Vec<u8> {
    format!(
        r#"{{"merchant_id":"merchant_1710609960","event_id":"{event_id}","event_type":"{event_type}","content":{{"type":"{content_type}","object":{{"id":"x_1","status":"whatever"}}}},"timestamp":"2024-03-16T19:55:46.000Z"}}"#
    )
    .into_bytes()
}

pub fn refund_id_of(v: &Value) -> RefundId {
    RefundId(Uuid::parse_str(v["refund_id"].as_str().unwrap()).unwrap())
}
