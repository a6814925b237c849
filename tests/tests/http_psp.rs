#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The PSP process managers wired into the real server (`serve::start`), on
//! Postgres and SQLite: orders, refunds and admin commands over HTTP on
//! loopback, the in-process PSP fake creating payments and refunds and
//! delivering signed webhooks to the server's own webhook route, Stripe
//! transfers and reversals through the real client. Time is the server's
//! manual clock; the managers run only when a test calls them
//! (`run_until_idle`), never on a timer.

#[path = "common/http.rs"]
#[macro_use]
mod http_common;

use std::collections::BTreeMap;
use std::time::Duration;

use http_common::*;
use ledger_core::ids::{OrderId, payment_id_for};
use ledger_core::psp::PaymentStatus;
use ledger_projections::verify::{VerifyOptions, verify};
use ledger_psp_fake::{Counters, DeliveryMode, Endpoint, Fault, ResourceBehaviour};
use reqwest::Method;
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);

/// `POST` to an admin route with the admin token and a fresh key.
async fn admin(app: &TestApp, path: &str) -> Resp {
    app.send(
        app.anon(Method::POST, path)
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", new_event_id())
            .header("content-type", "application/json")
            .body("{}"),
    )
    .await
}

/// The money-moving PSP requests: create payment, refund, transfer, reversal.
fn posts(c: &Counters) -> [u64; 4] {
    [
        Endpoint::CreatePayment,
        Endpoint::CreateRefund,
        Endpoint::CreateTransfer,
        Endpoint::CreateReversal,
    ]
    .map(|e| c.requests_to(e))
}

/// Objects the PSPs hold: payments, refunds, transfers, reversals.
fn objects(c: &Counters) -> [u64; 4] {
    [
        c.payments_created,
        c.refunds_created,
        c.transfers_created,
        c.reversals_created,
    ]
}

async fn order_json(app: &TestApp, order_id: OrderId) -> Value {
    app.settle().await;
    app.get_json(&format!("/v1/orders/{order_id}")).await
}

/// Transfers of one order from the read model, keyed by seller.
async fn transfers_of(app: &TestApp, order_id: OrderId) -> BTreeMap<String, Value> {
    app.settle().await;
    let all = app.get_json("/v1/transfers?limit=200").await;
    all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["order_id"] == order_id.0.to_string())
        .map(|t| (t["seller_id"].as_str().unwrap().to_owned(), t.clone()))
        .collect()
}

/// Every account of the trial balance (read model) nets to zero per
/// currency, and debits equal credits overall.
async fn assert_books_net_to_zero(app: &TestApp) {
    app.settle().await;
    let tb = app.get_json("/v1/ledger/trial-balance").await;
    assert_eq!(tb["balanced"], true, "{tb}");
    for a in tb["accounts"].as_array().unwrap() {
        assert_eq!(
            a["debit_minor"], a["credit_minor"],
            "account {} does not net to zero: {tb}",
            a["account"]
        );
    }
}

async fn assert_verify_clean(app: &TestApp) {
    let report = verify(
        app.state.events.clone(),
        VerifyOptions::default(),
        &[],
        &|_| {},
    )
    .await
    .expect("verify runs");
    assert!(report.is_clean(), "{report:#?}");
}

/// Place → pay (the fake's webhook) → transfers → refund one line →
/// reversal → refund the rest: every step through the real server, every
/// PSP object created exactly once, the books net to zero, verify clean.
async fn full_marketplace_lifecycle(kind: Kind) {
    let app = spawn_app_with_psp(kind, &[]).await;
    // Payments wait for the buyer (`processing`) until the test pays.
    app.fake().set_payment_behaviour(ResourceBehaviour::Hold);
    let (order_id, placed) = app
        .place_order("life-1", &two_seller_order("buyer-1"))
        .await;
    // The payment was created inside the request: pending, with the
    // client secret the buyer's browser needs.
    assert_eq!(placed["status"], "pending", "{placed}");
    assert_eq!(placed["payment_id"], payment_id_for(order_id).as_str());
    assert!(
        placed["client_secret"]
            .as_str()
            .is_some_and(|s| s.starts_with(payment_id_for(order_id).as_str())),
        "{placed}"
    );
    let total = placed["total_minor"].as_i64().unwrap();
    let fee = placed["fee_minor"].as_i64().unwrap();
    assert_eq!((total, fee), (5_500, 550));
    app.run_until_idle().await;
    assert_eq!(order_json(&app, order_id).await["status"], "pending");

    // The buyer pays; Hyperswitch's `payment_succeeded` webhook completes it.
    app.fake()
        .complete_payment(
            payment_id_for(order_id).as_str(),
            PaymentStatus::Succeeded.as_str(),
        )
        .unwrap();
    app.run_until_idle().await;
    let order = order_json(&app, order_id).await;
    assert_eq!(order["status"], "completed", "{order}");
    assert_eq!(order["captured_minor"], total);
    let t = transfers_of(&app, order_id).await;
    assert_eq!(t.len(), 2, "{t:?}");
    // Seller shares after the 10 % fee: s-1 2 × 1500 → 2700, s-2 2500 → 2250.
    for (seller, share) in [("s-1", 2_700), ("s-2", 2_250)] {
        assert_eq!(
            t[seller]["status"], "completed",
            "{seller}: {:?}",
            t[seller]
        );
        assert_eq!(t[seller]["transferred_minor"], share, "{seller}");
        let at_stripe = app
            .fake()
            .transfer(t[seller]["stripe_transfer_id"].as_str().unwrap())
            .expect("the transfer exists at Stripe");
        assert_eq!(at_stripe.amount_minor, share);
        assert_eq!(at_stripe.destination, Some(format!("acct_{seller}")));
    }

    // Refund seller 1's line: phase 2, the PSP's webhook, then seller 1
    // gives back that line's share.
    let r = app
        .request_refund(
            order_id,
            "refund-1",
            &json!({"reason": "duplicate purchase", "product_ids": ["p-a"]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    app.run_until_idle().await;
    let order = order_json(&app, order_id).await;
    assert_eq!(order["status"], "partially_refunded", "{order}");
    assert_eq!(order["refunded_minor"], 3_000);
    let refund = app
        .get_json(&format!("/v1/refunds/{}", refund_id_of(&r.json()).0))
        .await;
    assert_eq!(refund["status"], "succeeded", "{refund}");
    let t = transfers_of(&app, order_id).await;
    assert_eq!(t["s-1"]["status"], "reversed", "{:?}", t["s-1"]);
    assert_eq!(t["s-1"]["amount_reversed_minor"], 2_700);
    assert_eq!(t["s-2"]["status"], "completed");

    // Refund the rest.
    let r = app
        .request_refund(order_id, "refund-2", &json!({"reason": "changed mind"}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    app.run_until_idle().await;
    let order = order_json(&app, order_id).await;
    assert_eq!(order["status"], "refunded", "{order}");
    assert_eq!(order["refunded_minor"], total);
    let t = transfers_of(&app, order_id).await;
    for (seller, share) in [("s-1", 2_700), ("s-2", 2_250)] {
        assert_eq!(t[seller]["status"], "reversed", "{seller}");
        assert_eq!(t[seller]["amount_reversed_minor"], share, "{seller}");
        let at_stripe = app
            .fake()
            .transfer(t[seller]["stripe_transfer_id"].as_str().unwrap())
            .unwrap();
        assert_eq!(at_stripe.amount_reversed_minor, share, "{seller}");
        let balance = app.get_json(&format!("/v1/sellers/{seller}/balance")).await;
        assert_eq!(balance["balances"][0]["payable_minor"], 0, "{balance}");
    }

    // Exactly once: one payment, two refunds, two transfers, two reversals,
    // each created by one request (no retries were needed).
    let c = app.fake().counters();
    assert_eq!(objects(&c), [1, 2, 2, 2], "{c:?}");
    assert_eq!(posts(&c), [1, 2, 2, 2], "{c:?}");
    assert_eq!(c.stripe_posts_without_idempotency_key, 0);

    // Much later nothing is left to do: the reconciler finds nothing and
    // no PSP object is created again.
    app.advance(120 * MINUTE);
    app.run_until_idle().await;
    let r = admin(&app, "/v1/admin/reconcile").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["orders"]["actions"], json!([]), "{}", r.text());
    assert_eq!(posts(&app.fake().counters()), [1, 2, 2, 2]);

    assert_books_net_to_zero(&app).await;
    assert_verify_clean(&app).await;
    app.shutdown().await.unwrap();
}

/// The payment's terminal webhook never arrives: after 30 minutes the
/// reconciler asks Hyperswitch and completes the order; the webhook that
/// finally arrives later changes nothing.
async fn dropped_webhook_resolved_by_the_reconciler(kind: Kind) {
    let app = spawn_app_with_psp(kind, &[]).await;
    app.fake().set_payment_behaviour(ResourceBehaviour::Hold);
    let (order_id, placed) = app
        .place_order("late-1", &two_seller_order("buyer-2"))
        .await;
    assert_eq!(placed["status"], "pending");
    // The buyer pays, but the webhook is held back (lost, as far as anyone
    // can tell).
    app.fake().set_delivery_mode(DeliveryMode::Delay);
    app.fake()
        .complete_payment(
            payment_id_for(order_id).as_str(),
            PaymentStatus::Succeeded.as_str(),
        )
        .unwrap();
    app.run_until_idle().await;
    assert_eq!(order_json(&app, order_id).await["status"], "pending");

    // Not stuck yet: the reconciler leaves a 29-minute-old order alone.
    app.advance(29 * MINUTE);
    app.settle().await;
    let r = admin(&app, "/v1/admin/reconcile").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["orders"]["looked_at"], 0, "{}", r.text());

    app.advance(2 * MINUTE);
    let r = admin(&app, "/v1/admin/reconcile").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let actions = r.json()["orders"]["actions"].clone();
    assert_eq!(actions.as_array().unwrap().len(), 1, "{}", r.text());
    assert_eq!(actions[0]["stream_id"], order_id.stream_id().to_string());
    assert_eq!(actions[0]["from_status"], "pending");
    assert_eq!(actions[0]["to_status"], "completed");
    assert_eq!(actions[0]["psp_status"], "succeeded");
    assert_eq!(actions[0]["changed"], true);
    app.run_until_idle().await;
    assert_eq!(order_json(&app, order_id).await["status"], "completed");
    let version = app.order_events(order_id).await.len();
    let before = app.fake().counters();

    // The late webhook: acknowledged, logged `ok`, and a no-op.
    let released = app.fake().release_held_webhooks();
    assert!(released >= 1, "the payment's webhook was held");
    let delivered = app.fake().deliver_pending_webhooks().await;
    assert_eq!(delivered.len(), released, "{delivered:?}");
    app.run_until_idle().await;
    assert_eq!(app.order_events(order_id).await.len(), version);
    let log = app.webhook_log(1).await;
    assert_eq!(log[0].processing_result, "ok", "{log:?}");
    assert_eq!(objects(&app.fake().counters()), objects(&before));
    assert_verify_clean(&app).await;
}

/// A small xorshift generator: the storm is random but the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Twelve orders, half of them partly refunded, while the fake duplicates
/// and reorders every webhook, stale webhooks arrive late, and about 30 %
/// of PSP requests fail (5xx, 429, or "done but the answer was lost").
/// Every order ends right and no money moves twice.
async fn webhook_storm_with_psp_faults(kind: Kind) {
    const ORDERS: usize = 12;
    let app = spawn_app_with_psp(kind, &[("PSP_TIMEOUT", "300ms")]).await;
    let fake = app.fake();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let faults = [
        Fault::Status(503),
        Fault::Status(500),
        Fault::RateLimited,
        Fault::HangAfterCommit,
    ];
    let inject = |rng: &mut Rng| {
        for endpoint in Endpoint::ALL {
            if rng.chance(30) {
                let fault = faults[(rng.next() % faults.len() as u64) as usize].clone();
                fake.inject_fault(endpoint, fault, 1);
            }
        }
    };

    let mut orders = Vec::new();
    for i in 0..ORDERS {
        fake.set_delivery_mode(if i % 2 == 0 {
            DeliveryMode::Duplicate
        } else {
            DeliveryMode::Reorder
        });
        inject(&mut rng);
        let key = format!("storm-{i}");
        if i % 2 == 1 {
            // Odd orders: the buyer pays a while later, so the webhook
            // (duplicated, reordered) is what completes them.
            let payment = payment_id_for(ledger_core::ids::order_id_from_idempotency_key(&key));
            fake.behave_payment(payment.as_str(), ResourceBehaviour::Hold);
        }
        let (order_id, _) = app
            .place_order(&key, &two_seller_order(&format!("buyer-{i}")))
            .await;
        orders.push(order_id);
    }
    let mut unpaid: Vec<OrderId> = orders.iter().skip(1).step_by(2).copied().collect();

    // Rounds of: faults, deliveries, one pass of every manager, a minute.
    let mut refunded = Vec::new();
    for round in 0..40 {
        inject(&mut rng);
        if round >= 3 {
            // Pay what the PSP knows of (a create may still be failing).
            unpaid.retain(|order_id| {
                fake.complete_payment(
                    payment_id_for(*order_id).as_str(),
                    PaymentStatus::Succeeded.as_str(),
                )
                .is_err()
            });
        }
        fake.release_held_webhooks();
        fake.retry_failed_webhooks();
        fake.deliver_pending_webhooks().await;
        app.settle().await;
        app.managers()
            .run_all_once(ledger_projections::clock::Clock::now(&*app.clock))
            .await
            .expect("run_all_once");
        // Once an order is paid, refund seller 1's line of every other one.
        if round % 5 == 4 {
            for (i, order_id) in orders.iter().enumerate() {
                if i % 2 == 1 || refunded.contains(order_id) {
                    continue;
                }
                if order_json(&app, *order_id).await["status"] == "completed" {
                    let r = app
                        .request_refund(
                            *order_id,
                            &format!("storm-refund-{i}"),
                            &json!({"reason": "storm", "product_ids": ["p-a"]}),
                        )
                        .await;
                    assert_eq!(r.status, 202, "{}", r.text());
                    refunded.push(*order_id);
                }
            }
        }
        app.advance(MINUTE);
    }
    // The storm passes; the backlog drains (backoffs are due within an
    // hour), and stale copies of every payment webhook arrive last.
    fake.clear_faults();
    for _ in 0..6 {
        fake.release_held_webhooks();
        fake.retry_failed_webhooks();
        app.advance(15 * MINUTE);
        app.run_until_idle().await;
    }
    for order_id in &orders {
        let stale = payment_webhook(
            &new_event_id(),
            "payment_processing",
            *order_id,
            "processing",
            5_500,
            None,
        );
        app.deliver_ok(&stale, "ok").await;
    }
    app.run_until_idle().await;

    assert_eq!(unpaid, Vec::<OrderId>::new(), "every held payment was paid");
    assert_eq!(refunded.len(), ORDERS / 2, "every even order was refunded");
    for (i, order_id) in orders.iter().enumerate() {
        let order = order_json(&app, *order_id).await;
        let t = transfers_of(&app, *order_id).await;
        assert_eq!(t["s-2"]["status"], "completed", "order {i}: {t:?}");
        if i % 2 == 0 {
            assert_eq!(order["status"], "partially_refunded", "order {i}: {order}");
            assert_eq!(order["refunded_minor"], 3_000, "order {i}");
            assert_eq!(t["s-1"]["status"], "reversed", "order {i}: {t:?}");
            assert_eq!(t["s-1"]["amount_reversed_minor"], 2_700, "order {i}");
        } else {
            assert_eq!(order["status"], "completed", "order {i}: {order}");
            assert_eq!(t["s-1"]["status"], "completed", "order {i}: {t:?}");
        }
    }
    // No money moved twice, however often a request was retried.
    let c = fake.counters();
    assert_eq!(
        objects(&c),
        [
            ORDERS as u64,
            ORDERS as u64 / 2,
            2 * ORDERS as u64,
            ORDERS as u64 / 2
        ],
        "{c:?}"
    );
    assert!(
        posts(&c).iter().sum::<u64>() > objects(&c).iter().sum::<u64>(),
        "the storm injected no fault on a create call: {c:?}"
    );
    assert_eq!(c.stripe_posts_without_idempotency_key, 0);
    assert_verify_clean(&app).await;
}

/// A definitive Stripe refusal fails the transfer; the operator's retry over
/// the admin route pays it out; unknown and completed transfers are refused
/// with the error shape.
async fn operator_retries_a_failed_transfer(kind: Kind) {
    let app = spawn_app_with_psp(kind, &[]).await;
    app.fake().set_stripe_balance(Some(0));
    let (order_id, _) = app
        .place_order("retry-1", &two_seller_order("buyer-3"))
        .await;
    app.run_until_idle().await;
    let t = transfers_of(&app, order_id).await;
    assert_eq!(t["s-1"]["status"], "failed", "{t:?}");
    assert_eq!(t["s-2"]["status"], "failed", "{t:?}");
    assert!(
        t["s-1"]["last_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("insufficient")),
        "{t:?}"
    );

    app.fake().set_stripe_balance(None);
    let id = t["s-1"]["transfer_id"].as_str().unwrap().to_owned();
    let r = admin(&app, &format!("/v1/admin/transfers/{id}/retry")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["from_status"], "failed", "{}", r.text());
    assert_eq!(r.json()["status"], "pending", "{}", r.text());
    app.run_until_idle().await;
    let t = transfers_of(&app, order_id).await;
    assert_eq!(t["s-1"]["status"], "completed", "{t:?}");
    // s-2 waits for its backoff (a minute), then the retry worker pays it.
    assert_eq!(t["s-2"]["status"], "failed", "{t:?}");
    assert_eq!(app.fake().counters().transfers_created, 1);
    app.advance(MINUTE);
    app.run_until_idle().await;
    let t = transfers_of(&app, order_id).await;
    assert_eq!(t["s-2"]["status"], "completed", "{t:?}");
    assert_eq!(app.fake().counters().transfers_created, 2);

    let r = admin(&app, &format!("/v1/admin/transfers/{id}/retry")).await;
    r.assert_error(409, "transfer_not_retryable");
    let r = admin(
        &app,
        &format!("/v1/admin/transfers/{}/retry", uuid::Uuid::new_v4()),
    )
    .await;
    r.assert_error(404, "transfer_not_found");
    let r = app
        .send(
            app.req(Method::POST, "/v1/admin/reconcile")
                .header("idempotency-key", "k"),
        )
        .await;
    r.assert_error(403, "forbidden");
}

http_tests!(
    full_marketplace_lifecycle,
    dropped_webhook_resolved_by_the_reconciler,
    webhook_storm_with_psp_faults,
    operator_retries_a_failed_transfer,
);
