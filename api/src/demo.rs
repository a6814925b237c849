//! `ledger demo`: one marketplace day through the whole system — the real
//! server on a loopback port, every command over HTTP with its
//! Idempotency-Key, the PSP fake creating payments and refunds and
//! delivering signed webhooks to the server's webhook route, Stripe
//! transfers and reversals, the reconciler resolving a lost webhook — then
//! the trial balance and `verify`.
//!
//! Time is a manual clock that starts two hours ago, so the "31 minutes
//! later" of the lost-webhook step needs no waiting and no recorded time is
//! in the future. Keys derive from `--day`: running the same day again
//! replays every stored response and moves no money.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{TimeDelta, Utc};
use ledger_core::ids::{OrderId, order_id_from_idempotency_key, payment_id_for};
use ledger_core::psp::PaymentStatus;
use ledger_projections::clock::{Clock, ManualClock};
use ledger_projections::managers::Managers;
use ledger_psp_fake::{DeliveryMode, FakeError, FakePsp, ResourceBehaviour};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::config::Config;
use crate::managers::WorkerMode;
use crate::serve::{self, RunningServer};
use crate::store::Backend;

/// Rounds of "deliver webhooks, run every manager" before the demo gives up.
const SETTLE_ROUNDS_MAX: usize = 25;
/// How far back the demo's clock starts.
const DAY_STARTS_AGO: Duration = Duration::from_secs(2 * 60 * 60);

/// The running system the demo drives.
struct Day {
    server: RunningServer,
    client: reqwest::Client,
    base: String,
    api_token: String,
    admin_token: String,
    clock: Arc<ManualClock>,
    day: String,
}

impl Day {
    fn fake(&self) -> anyhow::Result<&FakePsp> {
        self.server.fake().context("the demo runs the PSP fake")
    }

    fn managers(&self) -> anyhow::Result<&Managers> {
        self.server.managers().context("the demo runs the managers")
    }

    fn key(&self, what: &str) -> String {
        format!("demo:{}:{what}", self.day)
    }

    async fn post(
        &self,
        path: &str,
        token: &str,
        key: &str,
        body: &Value,
    ) -> anyhow::Result<Value> {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let replayed = resp.headers().contains_key("idempotent-replayed");
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("POST {path}: body"))?;
        if !status.is_success() {
            bail!("POST {path} answered {status}: {body}");
        }
        if replayed {
            println!("      (replayed: this day was recorded before; nothing re-executed)");
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.api_token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("GET {path}: body"))?;
        if !status.is_success() {
            bail!("GET {path} answered {status}: {body}");
        }
        Ok(body)
    }

    async fn place(&self, name: &str, buyer: &str, items: Value) -> anyhow::Result<OrderId> {
        let key = self.key(name);
        let body = json!({"buyer_id": buyer, "currency": "USD", "items": items});
        let placed = self
            .post("/v1/orders", &self.api_token, &key, &body)
            .await?;
        println!(
            "    POST /v1/orders → {} total {} USD minor, fee {}, payment {} {}",
            placed["status"].as_str().unwrap_or("?"),
            placed["total_minor"],
            placed["fee_minor"],
            placed["payment_id"].as_str().unwrap_or("-"),
            if placed["client_secret"].is_string() {
                "(client_secret returned to the buyer)"
            } else {
                ""
            },
        );
        Ok(order_id_from_idempotency_key(&key))
    }

    /// The buyer completes (or fails) the payment in the browser; Hyperswitch
    /// then sends its webhook.
    fn buyer_pays(&self, order: OrderId, status: PaymentStatus) -> anyhow::Result<()> {
        match self
            .fake()?
            .complete_payment(payment_id_for(order).as_str(), status.as_str())
        {
            Ok(_) => Ok(()),
            // A re-run of a recorded day creates no payment in this
            // process's fake: there is nothing to pay, and nothing to do.
            Err(FakeError::UnknownPayment(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn refund(&self, name: &str, order: OrderId, body: Value) -> anyhow::Result<()> {
        let key = self.key(name);
        let r = self
            .post(
                &format!("/v1/orders/{order}/refunds"),
                &self.api_token,
                &key,
                &body,
            )
            .await?;
        println!(
            "    POST /v1/orders/…/refunds → refund {} {} of {} minor",
            r["refund_id"].as_str().unwrap_or("?"),
            r["status"].as_str().unwrap_or("?"),
            r["amount_minor"]
        );
        Ok(())
    }

    /// The fake delivers its webhooks, the read models catch up, every
    /// manager runs one pass — until nothing happens.
    async fn settle(&self) -> anyhow::Result<()> {
        for _ in 0..SETTLE_ROUNDS_MAX {
            let delivered = self.fake()?.deliver_pending_webhooks().await;
            for d in &delivered {
                println!(
                    "    webhook {} → {}",
                    d.event_type,
                    d.status.map_or("unreachable".to_owned(), |s| s.to_string())
                );
            }
            self.wait_for_read_models().await?;
            let report = self
                .managers()?
                .run_all_once(self.clock.now())
                .await
                .context("running the process managers")?;
            if delivered.is_empty() && report.is_idle() {
                return self.wait_for_read_models().await;
            }
        }
        bail!("the managers did not come to rest in {SETTLE_ROUNDS_MAX} rounds")
    }

    /// Until the read-model projector has applied everything stored now:
    /// nothing committed lies beyond its checkpoint.
    async fn wait_for_read_models(&self) -> anyhow::Result<()> {
        let state = &self.server.state;
        let mut rx = state.projections[0].clone();
        loop {
            state.wake.notify_one();
            let checkpoint = rx.borrow_and_update().checkpoint;
            let beyond = state
                .events
                .read_all(checkpoint, 1)
                .await
                .context("reading the store")?;
            if beyond.is_empty() {
                return Ok(());
            }
            tokio::time::timeout(Duration::from_secs(30), rx.changed())
                .await
                .context("the read-model projector stopped moving")?
                .context("the read-model projector stopped")?;
        }
    }

    fn advance(&self, by: Duration) -> anyhow::Result<()> {
        self.clock.advance(TimeDelta::from_std(by)?);
        Ok(())
    }

    async fn show_order(&self, label: &str, order: OrderId) -> anyhow::Result<()> {
        let o = self.get(&format!("/v1/orders/{order}")).await?;
        println!(
            "    {label}: {} captured {} refunded {}",
            o["status"].as_str().unwrap_or("?"),
            o["captured_minor"],
            o["refunded_minor"]
        );
        Ok(())
    }
}

fn item(product: &str, seller: &str, unit: i64, quantity: i64) -> Value {
    json!({
        "product_id": product,
        "seller_id": seller,
        "seller_account": format!("acct_{}", seller.replace('-', "_")),
        "unit_amount_minor": unit,
        "quantity": quantity,
    })
}

/// Runs the day on `backend` and returns `verify`'s exit code.
pub async fn run(backend: &Backend, day: &str) -> anyhow::Result<ExitCode> {
    let api_token = format!("demo-api-{}", Uuid::new_v4().simple());
    let admin_token = format!("demo-admin-{}", Uuid::new_v4().simple());
    let env: HashMap<&str, String> = HashMap::from([
        ("APP_ENV", "development".to_owned()),
        ("LEDGER_API_TOKEN", api_token.clone()),
        ("LEDGER_ADMIN_TOKEN", admin_token.clone()),
        (
            "HYPERSWITCH_WEBHOOK_SECRET",
            format!("demo-whsec-{}", Uuid::new_v4().simple()),
        ),
        ("LEDGER_PSP_FAKE", "true".to_owned()),
    ]);
    let (config, _) = Config::from_env(&|k: &str| env.get(k).cloned())
        .map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    let start = Utc::now() - TimeDelta::from_std(DAY_STARTS_AGO)?;
    let clock = Arc::new(ManualClock::new(start));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")?;
    let server = serve::start(
        &config,
        backend,
        listener,
        clock.clone(),
        WorkerMode::Manual,
    )
    .await?;
    let d = Day {
        base: format!("http://{}", server.addr),
        server,
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("HTTP client")?,
        api_token,
        admin_token,
        clock,
        day: day.to_owned(),
    };
    println!(
        "demo day {day:?}: ledger on {} with the PSP fake at {}",
        d.base,
        d.server.fake_base_url().unwrap_or_default()
    );

    // Payments wait for the buyer, as with a real checkout.
    d.fake()?.set_payment_behaviour(ResourceBehaviour::Hold);

    println!("\n1. ana buys a track (lumen-records) and a course (kora-academy)");
    let a = d
        .place(
            "order-ana",
            "ana",
            json!([
                item("track-aurora", "lumen-records", 1_299, 1),
                item("course-rust-101", "kora-academy", 4_900, 1)
            ]),
        )
        .await?;
    d.buyer_pays(a, PaymentStatus::Succeeded)?;
    d.settle().await?;
    d.show_order("ana's order", a).await?;

    println!("\n2. ben buys the course");
    let b = d
        .place(
            "order-ben",
            "ben",
            json!([item("course-rust-101", "kora-academy", 4_900, 1)]),
        )
        .await?;
    d.buyer_pays(b, PaymentStatus::Succeeded)?;
    d.settle().await?;
    d.show_order("ben's order", b).await?;

    println!("\n3. cai's card is declined");
    let c = d
        .place(
            "order-cai",
            "cai",
            json!([item("track-nocturne", "lumen-records", 999, 1)]),
        )
        .await?;
    d.buyer_pays(c, PaymentStatus::Failed)?;
    d.settle().await?;
    d.show_order("cai's order", c).await?;

    println!("\n4. dee buys two tracks and pays; Hyperswitch's webhook is lost");
    let dee = d
        .place(
            "order-dee",
            "dee",
            json!([item("track-aurora", "lumen-records", 1_299, 2)]),
        )
        .await?;
    d.fake()?.set_delivery_mode(DeliveryMode::Drop);
    d.buyer_pays(dee, PaymentStatus::Succeeded)?;
    d.fake()?.set_delivery_mode(DeliveryMode::Normal);
    d.settle().await?;
    d.show_order("dee's order", dee).await?;
    println!("    … 31 minutes later the reconciler asks Hyperswitch:");
    d.advance(Duration::from_secs(31 * 60))?;
    d.wait_for_read_models().await?;
    let report = d
        .post(
            "/v1/admin/reconcile",
            &d.admin_token,
            &d.key("reconcile"),
            &json!({}),
        )
        .await?;
    for a in report["orders"]["actions"].as_array().into_iter().flatten() {
        println!(
            "    reconcile {} {} → {} (PSP says {}, stuck {})",
            a["stream_id"].as_str().unwrap_or("?"),
            a["from_status"].as_str().unwrap_or("?"),
            a["to_status"].as_str().unwrap_or("?"),
            a["psp_status"].as_str().unwrap_or("?"),
            a["stuck_for"].as_str().unwrap_or("?"),
        );
    }
    d.settle().await?;
    d.show_order("dee's order", dee).await?;

    println!(
        "\n5. ana returns the track: Hyperswitch refunds it, lumen-records gives its share back"
    );
    d.advance(Duration::from_secs(10 * 60))?;
    d.refund(
        "refund-ana-track",
        a,
        json!({"reason": "bought by mistake", "product_ids": ["track-aurora"]}),
    )
    .await?;
    d.settle().await?;
    d.show_order("ana's order", a).await?;

    println!("\n6. ben returns the course: a full refund, kora-academy's payout reversed");
    d.refund(
        "refund-ben",
        b,
        json!({"reason": "course not as described"}),
    )
    .await?;
    d.settle().await?;
    d.show_order("ben's order", b).await?;

    println!("\nseller transfers:");
    let transfers = d.get("/v1/transfers?limit=100").await?;
    for t in transfers["items"].as_array().into_iter().flatten() {
        println!(
            "  {:<14} {:<18} paid {:>5} reversed {:>5}   transfer {}",
            t["seller_id"].as_str().unwrap_or("?"),
            t["status"].as_str().unwrap_or("?"),
            t["transferred_minor"],
            t["amount_reversed_minor"],
            t["transfer_id"].as_str().unwrap_or("?"),
        );
    }
    println!("streams (replay any of them with `ledger replay <stream>`):");
    for (label, order) in [("ana", a), ("ben", b), ("cai", c), ("dee", dee)] {
        println!("  {}   ({label})", order.stream_id());
    }
    if let Ok(fake) = d.fake() {
        let n = fake.counters();
        println!(
            "PSP fake, this run: {} payments, {} refunds, {} transfers, {} reversals created",
            n.payments_created, n.refunds_created, n.transfers_created, n.reversals_created
        );
    }
    d.server.shutdown().await?;

    println!();
    crate::trial_balance::run(backend.events(), None, false).await?;
    println!();
    crate::verify::run(backend, &[]).await
}
