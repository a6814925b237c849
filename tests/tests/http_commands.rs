//! End-to-end: the command routes over real HTTP on both backends. Bad
//! input of every class gets the right 4xx with the one error shape and
//! writes nothing; idempotency replays byte for byte and executes once under
//! concurrency; refunds run their whole path (request → PSP webhook → order).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
#[path = "common/http.rs"]
mod http_common;

use chrono::Duration;
use http_common::*;
use ledger_api::http::COMMAND_BODY_MAX;
use ledger_api::http::idempotency::LEASE;
use ledger_psp_fake::{Endpoint, Fault};
use ledger_store::idempotency::Begin;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

http_tests!(
    bad_order_input_is_refused_with_its_code_and_writes_nothing,
    bad_credentials_and_keys_are_refused_and_write_nothing,
    bad_refunds_are_refused_and_write_nothing,
    same_key_same_body_replays_byte_identical_without_executing,
    concurrent_requests_with_one_key_execute_exactly_once,
    refunds_complete_through_the_psp_webhook,
    one_refund_key_on_two_orders_never_answers_for_the_other_order,
    a_claim_left_by_a_crashed_process_blocks_retries_for_one_lease_at_most,
    a_client_that_disconnects_mid_request_frees_its_key,
);

fn key() -> String {
    format!("k-{}", Uuid::new_v4())
}

/// `POST /v1/orders` with raw bytes, expecting `status`/`code` and no write.
async fn refused_order(app: &TestApp, body: &[u8], status: u16, code: &str) {
    let before = app.counts().await;
    let r = app.command("/v1/orders", Some(&key()), body.to_vec()).await;
    r.assert_error(status, code);
    assert_eq!(
        app.counts().await,
        before,
        "a refused order ({code}) wrote something"
    );
}

async fn refused_json(app: &TestApp, body: &Value, status: u16, code: &str) {
    refused_order(app, &serde_json::to_vec(body).unwrap(), status, code).await;
}

async fn bad_order_input_is_refused_with_its_code_and_writes_nothing(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    // Some history first, so "unchanged" is not trivially "empty".
    app.place_simple_order().await;

    // Syntax.
    refused_order(
        &app,
        br#"{"buyer_id":"b","currency":"USD","items":["#,
        400,
        "malformed_json",
    )
    .await;
    refused_order(&app, b"", 400, "malformed_json").await;
    refused_order(&app, b"not json at all", 400, "malformed_json").await;

    // Types and shape.
    let mut wrong_type = two_seller_order("b");
    wrong_type["items"][0]["unit_amount_minor"] = json!("1500");
    refused_json(&app, &wrong_type, 400, "invalid_request").await;
    let mut fractional = two_seller_order("b");
    fractional["items"][0]["quantity"] = json!(1.5);
    refused_json(&app, &fractional, 400, "invalid_request").await;
    refused_json(
        &app,
        &json!({"buyer_id": "b", "currency": "USD", "items": {}}),
        400,
        "invalid_request",
    )
    .await;
    refused_json(
        &app,
        &json!({"buyer_id": "b", "currency": "USD"}),
        400,
        "invalid_request",
    )
    .await;
    refused_json(&app, &json!([1, 2]), 400, "invalid_request").await;

    // Unknown fields, top level and per item.
    let mut unknown = two_seller_order("b");
    unknown["discount"] = json!(10);
    refused_json(&app, &unknown, 400, "invalid_request").await;
    let mut unknown_item = two_seller_order("b");
    unknown_item["items"][1]["colour"] = json!("red");
    refused_json(&app, &unknown_item, 400, "invalid_request").await;

    // Amounts: zero, negative, above i64::MAX, and a sum that overflows.
    refused_json(
        &app,
        &order_body("b", vec![item("p", "s", 0, 1)]),
        422,
        "non_positive_amount",
    )
    .await;
    refused_json(
        &app,
        &order_body("b", vec![item("p", "s", -5, 1)]),
        422,
        "non_positive_amount",
    )
    .await;
    refused_order(
        &app,
        br#"{"buyer_id":"b","currency":"USD","items":[{"product_id":"p","seller_id":"s","seller_account":"acct_s","unit_amount_minor":9223372036854775808,"quantity":1}]}"#,
        400,
        "invalid_request",
    )
    .await;
    refused_json(
        &app,
        &order_body("b", vec![item("p", "s", i64::MAX, 2)]),
        422,
        "amount_overflow",
    )
    .await;
    refused_json(
        &app,
        &order_body(
            "b",
            vec![
                item("p", "s", i64::MAX / 2 + 1, 1),
                item("q", "s", i64::MAX / 2 + 1, 1),
            ],
        ),
        422,
        "amount_overflow",
    )
    .await;

    // Quantities.
    refused_json(
        &app,
        &order_body("b", vec![item("p", "s", 100, 0)]),
        422,
        "zero_quantity",
    )
    .await;
    refused_json(
        &app,
        &order_body("b", vec![item("p", "s", 100, -1)]),
        422,
        "negative_quantity",
    )
    .await;

    // Currencies: an item in another currency, a currency that is not ISO.
    let mut mixed = two_seller_order("b");
    mixed["items"][1]["currency"] = json!("EUR");
    refused_json(&app, &mixed, 422, "mixed_currencies").await;
    let mut same = two_seller_order("b");
    same["items"][1]["currency"] = json!("USD");
    let before = app.counts().await;
    let r = app.post_order(&key(), &same).await;
    assert_eq!(
        r.status,
        201,
        "an item currency equal to the order's is fine: {}",
        r.text()
    );
    assert_eq!(app.counts().await.events, before.events + 1);
    let mut bad_currency = two_seller_order("b");
    bad_currency["currency"] = json!("DOLLARS");
    refused_json(&app, &bad_currency, 422, "invalid_field").await;

    // Lines: none, too many (101), the same product twice.
    refused_json(&app, &order_body("b", vec![]), 422, "empty_order").await;
    let many: Vec<Value> = (0..101)
        .map(|i| item(&format!("p-{i}"), "s", 100, 1))
        .collect();
    refused_json(&app, &order_body("b", many), 422, "too_many_lines").await;
    let hundred: Vec<Value> = (0..100)
        .map(|i| item(&format!("p-{i}"), "s", 100, 1))
        .collect();
    let r = app.post_order(&key(), &order_body("b", hundred)).await;
    assert_eq!(r.status, 201, "exactly the limit is accepted: {}", r.text());
    refused_json(
        &app,
        &order_body("b", vec![item("p", "s", 100, 1), item("p", "s", 100, 1)]),
        422,
        "duplicate_product",
    )
    .await;

    // Ids.
    let mut bad_account = two_seller_order("b");
    bad_account["items"][0]["seller_account"] = json!("s-1");
    refused_json(&app, &bad_account, 422, "invalid_field").await;
    let mut empty_buyer = two_seller_order("b");
    empty_buyer["buyer_id"] = json!("");
    refused_json(&app, &empty_buyer, 422, "invalid_field").await;

    // Oversize: the declared length alone is refused.
    let mut big = two_seller_order("b");
    big["pad"] = json!("x".repeat(COMMAND_BODY_MAX));
    refused_json(&app, &big, 413, "payload_too_large").await;
}

async fn bad_credentials_and_keys_are_refused_and_write_nothing(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    app.place_simple_order().await;
    let body = serde_json::to_vec(&two_seller_order("b")).unwrap();
    let before = app.counts().await;

    let send = |rb: reqwest::RequestBuilder| async { app.send(rb).await };
    let post = |token: Option<&str>, key: Option<&str>| {
        let mut rb = app
            .anon(Method::POST, "/v1/orders")
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(k) = key {
            rb = rb.header("idempotency-key", k);
        }
        rb
    };

    // Tokens.
    let r = send(post(None, Some(&key()))).await;
    r.assert_error(401, "missing_token");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    send(post(Some("not-the-token"), Some(&key())))
        .await
        .assert_error(401, "invalid_token");
    send(post(Some(&format!("{API_TOKEN}x")), Some(&key())))
        .await
        .assert_error(401, "invalid_token");
    let r = send(
        app.anon(Method::POST, "/v1/orders")
            .header("authorization", format!("Basic {API_TOKEN}"))
            .header("idempotency-key", key())
            .body(body.clone()),
    )
    .await;
    r.assert_error(401, "missing_token");
    send(app.anon(Method::GET, "/v1/orders"))
        .await
        .assert_error(401, "missing_token");
    send(
        app.anon(Method::GET, "/v1/ledger/trial-balance")
            .bearer_auth("nope"),
    )
    .await
    .assert_error(401, "invalid_token");

    // Admin routes: the user token is not enough; no token is 401.
    for path in [
        "/v1/admin/reconcile".to_owned(),
        format!("/v1/admin/transfers/{}/retry", Uuid::new_v4()),
    ] {
        send(
            app.req(Method::POST, &path)
                .header("idempotency-key", key()),
        )
        .await
        .assert_error(403, "forbidden");
        send(
            app.anon(Method::POST, &path)
                .header("idempotency-key", key()),
        )
        .await
        .assert_error(401, "missing_token");
        // The admin token reaches the handler, which has no managers yet.
        send(
            app.anon(Method::POST, &path)
                .bearer_auth(ADMIN_TOKEN)
                .header("idempotency-key", key()),
        )
        .await
        .assert_error(501, "not_implemented");
    }

    // Idempotency keys: missing, empty, blank, too long, not visible ASCII.
    send(post(Some(API_TOKEN), None))
        .await
        .assert_error(400, "idempotency_key_required");
    send(post(Some(API_TOKEN), Some("")))
        .await
        .assert_error(400, "idempotency_key_required");
    send(post(Some(API_TOKEN), Some("   ")))
        .await
        .assert_error(400, "idempotency_key_required");
    send(post(Some(API_TOKEN), Some(&"k".repeat(256))))
        .await
        .assert_error(400, "idempotency_key_invalid");
    send(post(Some(API_TOKEN), Some("two words")))
        .await
        .assert_error(400, "idempotency_key_invalid");

    assert_eq!(
        app.counts().await,
        before,
        "a refused request wrote something"
    );

    // The admin token is also valid on user routes.
    let r = send(post(Some(ADMIN_TOKEN), Some(&key()))).await;
    assert_eq!(r.status, 201, "{}", r.text());
}

async fn bad_refunds_are_refused_and_write_nothing(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let (unpaid, _) = app.place_simple_order().await;
    let (pending, _) = app.place_simple_order().await;
    app.initiate_payment(pending).await;
    let (paid, total) = app.place_simple_order().await;
    app.pay(paid, total).await;

    let refused = |order: String, body: Value, status: u16, code: &'static str| {
        let app = &app;
        async move {
            let before = app.counts().await;
            let r = app
                .command(
                    &format!("/v1/orders/{order}/refunds"),
                    Some(&key()),
                    serde_json::to_vec(&body).unwrap(),
                )
                .await;
            r.assert_error(status, code);
            assert_eq!(
                app.counts().await,
                before,
                "refused refund ({code}) wrote something"
            );
        }
    };
    let all = json!({"reason": "changed mind"});

    refused(
        Uuid::new_v4().to_string(),
        all.clone(),
        404,
        "order_not_found",
    )
    .await;
    refused("not-a-uuid".into(), all.clone(), 404, "order_not_found").await;
    refused(unpaid.to_string(), all.clone(), 409, "invalid_order_state").await;
    refused(pending.to_string(), all.clone(), 409, "invalid_order_state").await;
    refused(
        paid.to_string(),
        json!({"reason": "x", "product_ids": ["nope"]}),
        422,
        "unknown_product",
    )
    .await;
    refused(
        paid.to_string(),
        json!({"reason": "x", "product_ids": ["p-a", "p-a"]}),
        422,
        "duplicate_product",
    )
    .await;
    refused(
        paid.to_string(),
        json!({"reason": "x", "extra": 1}),
        400,
        "invalid_request",
    )
    .await;
    refused(
        paid.to_string(),
        json!({"product_ids": ["p-a"]}),
        400,
        "invalid_request",
    )
    .await;
    refused(
        paid.to_string(),
        json!({"reason": "x", "product_ids": "p-a"}),
        400,
        "invalid_request",
    )
    .await;
    // Only the PSP's reason codes, spelled exactly.
    for bad in ["other", "Duplicate", "", "requested_by_customer "] {
        refused(
            paid.to_string(),
            json!({"reason": "x", "reason_code": bad}),
            422,
            "invalid_field",
        )
        .await;
    }
    refused(
        paid.to_string(),
        json!({"reason": "x", "reason_code": 1}),
        400,
        "invalid_request",
    )
    .await;

    // One refund pending: a second is refused until it settles.
    let r = app
        .request_refund(
            paid,
            &key(),
            &json!({"reason": "x", "product_ids": ["p-a"]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let first = refund_id_of(&r.json());
    refused(
        paid.to_string(),
        json!({"reason": "y", "product_ids": ["p-b"]}),
        409,
        "refund_already_pending",
    )
    .await;

    // Settled: the refunded line cannot be refunded again.
    app.deliver_ok(
        &refund_webhook(
            &new_event_id(),
            "refund_succeeded",
            first,
            paid,
            3000,
            "succeeded",
        ),
        "ok",
    )
    .await;
    refused(
        paid.to_string(),
        json!({"reason": "x", "product_ids": ["p-a"]}),
        422,
        "line_already_refunded",
    )
    .await;

    // Everything refunded: nothing is left to refund.
    let r = app.request_refund(paid, &key(), &all).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["amount_minor"], 2500);
    let second = refund_id_of(&r.json());
    app.deliver_ok(
        &refund_webhook(
            &new_event_id(),
            "refund_succeeded",
            second,
            paid,
            2500,
            "succeeded",
        ),
        "ok",
    )
    .await;
    refused(paid.to_string(), all.clone(), 409, "invalid_order_state").await;
    refused(
        paid.to_string(),
        json!({"reason": "x", "product_ids": ["p-b"]}),
        409,
        "invalid_order_state",
    )
    .await;
}

async fn same_key_same_body_replays_byte_identical_without_executing(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let k = key();
    let body = two_seller_order("buyer-replay");
    let first = app.post_order(&k, &body).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    let after_first = app.counts().await;
    assert_eq!(after_first.events, 1);
    assert_eq!(after_first.idempotency, 1);

    for _ in 0..2 {
        let again = app.post_order(&k, &body).await;
        assert_eq!(again.status, 201);
        assert_eq!(again.bytes, first.bytes, "a replay must be byte-identical");
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.header("content-type"), Some("application/json"));
        assert_ne!(again.header("x-request-id"), first.header("x-request-id"));
    }
    assert_eq!(app.counts().await, after_first, "a replay wrote something");

    // The same key with another body.
    let r = app.post_order(&k, &two_seller_order("someone-else")).await;
    r.assert_error(422, "idempotency_key_reused");
    assert_eq!(app.counts().await, after_first);

    // The same key from the admin principal is another scope, but the order
    // id comes from the key: it can never become a second order.
    let r = app
        .send(
            app.anon(Method::POST, "/v1/orders")
                .bearer_auth(ADMIN_TOKEN)
                .header("idempotency-key", &k)
                .body(serde_json::to_vec(&body).unwrap()),
        )
        .await;
    assert!(
        r.status == 201 || r.status == 422,
        "{} {}",
        r.status,
        r.text()
    );
    assert_eq!(app.counts().await.events, 1, "one key, one order");

    // A refused request keeps nothing, so the fixed body may reuse the key.
    let k2 = key();
    let r = app
        .post_order(&k2, &order_body("b", vec![item("p", "s", 100, 0)]))
        .await;
    r.assert_error(422, "zero_quantity");
    let r = app
        .post_order(&k2, &order_body("b", vec![item("p", "s", 100, 1)]))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("idempotent-replayed"), None);

    // Refund requests replay too.
    let (order, total) = app.place_simple_order().await;
    app.pay(order, total).await;
    let rk = key();
    let refund = json!({"reason": "replay", "product_ids": ["p-b"]});
    let first = app.request_refund(order, &rk, &refund).await;
    assert_eq!(first.status, 202, "{}", first.text());
    let counts = app.counts().await;
    let again = app.request_refund(order, &rk, &refund).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.bytes, first.bytes);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.counts().await, counts);
    app.request_refund(order, &rk, &json!({"reason": "other"}))
        .await
        .assert_error(422, "idempotency_key_reused");
}

async fn concurrent_requests_with_one_key_execute_exactly_once(kind: Kind) {
    const CONCURRENT: usize = 16;
    let app = spawn_app(kind, &[]).await;
    let k = key();
    let body = serde_json::to_vec(&two_seller_order("buyer-race")).unwrap();
    let responses = futures::future::join_all(
        (0..CONCURRENT).map(|_| app.command("/v1/orders", Some(&k), body.clone())),
    )
    .await;

    let executed: Vec<&Resp> = responses
        .iter()
        .filter(|r| r.status == 201 && r.header("idempotent-replayed").is_none())
        .collect();
    assert_eq!(
        executed.len(),
        1,
        "statuses: {:?}",
        responses
            .iter()
            .map(|r| (r.status, r.text()))
            .collect::<Vec<_>>()
    );
    for r in &responses {
        match r.status {
            201 => assert_eq!(r.bytes, executed[0].bytes, "a replay differs"),
            409 => r.assert_error(409, "idempotency_key_in_progress"),
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }

    let order_id = executed[0].json()["order_id"].as_str().unwrap().to_owned();
    let order_id = ledger_core::ids::OrderId(Uuid::parse_str(&order_id).unwrap());
    assert_eq!(app.order_event_types(order_id).await, ["OrderPlaced"]);
    let counts = app.counts().await;
    assert_eq!(counts.events, 1, "exactly one event in the whole store");
    assert_eq!(counts.idempotency, 1);
    app.settle().await;
    let list = app.get_json("/v1/orders").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

async fn refunds_complete_through_the_psp_webhook(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let (order, total) = app.place_simple_order().await;
    assert_eq!(total, 5500);
    app.pay(order, total).await;

    // Partial: one line by product id.
    let r = app
        .request_refund(
            order,
            &key(),
            &json!({"reason": "damaged", "product_ids": ["p-a"], "reason_code": "duplicate"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(v["amount_minor"], 3000);
    assert_eq!(v["currency"], "USD");
    assert_eq!(v["status"], "requested");
    assert_eq!(v["order_id"], order.to_string());
    let first = refund_id_of(&v);

    app.settle().await;
    let refund = app.get_json(&format!("/v1/refunds/{first}")).await;
    assert_eq!(refund["status"], "requested");
    assert_eq!(refund["amount_minor"], 3000);
    assert_eq!(refund["order_id"], order.to_string());
    let o = app.get_json(&format!("/v1/orders/{order}")).await;
    assert_eq!(o["status"], "refund_pending");

    app.deliver_ok(
        &refund_webhook(
            &new_event_id(),
            "refund_succeeded",
            first,
            order,
            3000,
            "succeeded",
        ),
        "ok",
    )
    .await;
    app.settle().await;
    let refund = app.get_json(&format!("/v1/refunds/{first}")).await;
    assert_eq!(refund["status"], "succeeded");
    assert_eq!(
        refund["hyperswitch_refund_id"],
        ledger_core::ids::psp_refund_id_for(first).as_str()
    );
    let o = app.get_json(&format!("/v1/orders/{order}")).await;
    assert_eq!(o["status"], "partially_refunded");
    assert_eq!(o["refunded_minor"], 3000);
    assert_eq!(o["refunds"].as_array().unwrap().len(), 1);

    // The rest: no product ids means everything still refundable.
    let r = app
        .request_refund(order, &key(), &json!({"reason": "all"}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["amount_minor"], 2500);
    // The code is recorded when given, and absent (not null) when not.
    let requested: Vec<String> = app
        .order_events(order)
        .await
        .into_iter()
        .filter(|e| e.event_type == "RefundRequested")
        .map(|e| e.payload)
        .collect();
    assert_eq!(requested.len(), 2);
    assert!(
        requested[0].contains(r#""reason_code":"duplicate""#),
        "{}",
        requested[0]
    );
    assert!(!requested[1].contains("reason_code"), "{}", requested[1]);
    let second = refund_id_of(&r.json());
    app.deliver_ok(
        &refund_webhook(
            &new_event_id(),
            "refund_succeeded",
            second,
            order,
            2500,
            "succeeded",
        ),
        "ok",
    )
    .await;
    app.settle().await;
    let o = app.get_json(&format!("/v1/orders/{order}")).await;
    assert_eq!(o["status"], "refunded");
    assert_eq!(o["refunded_minor"], 5500);
    assert_eq!(o["refunds"].as_array().unwrap().len(), 2);
    assert_eq!(
        app.order_event_types(order).await,
        [
            "OrderPlaced",
            "PaymentInitiated",
            "PaymentSucceeded",
            "RefundRequested",
            "RefundCompleted",
            "RefundRequested",
            "RefundCompleted"
        ]
    );

    // A failed PSP refund releases the lines: the order is refundable again.
    let (o2, t2) = app.place_simple_order().await;
    app.pay(o2, t2).await;
    let r = app
        .request_refund(o2, &key(), &json!({"reason": "x"}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let failed = refund_id_of(&r.json());
    app.deliver_ok(
        &refund_webhook(&new_event_id(), "refund_failed", failed, o2, t2, "failed"),
        "ok",
    )
    .await;
    app.settle().await;
    assert_eq!(
        app.get_json(&format!("/v1/refunds/{failed}")).await["status"],
        "failed"
    );
    assert_eq!(
        app.get_json(&format!("/v1/orders/{o2}")).await["status"],
        "completed"
    );
    let r = app
        .request_refund(o2, &key(), &json!({"reason": "again"}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());

    // Unknown refund ids are 404 with the error shape.
    app.get(&format!("/v1/refunds/{}", Uuid::new_v4()))
        .await
        .assert_error(404, "refund_not_found");
}

async fn one_refund_key_on_two_orders_never_answers_for_the_other_order(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let (a, ta) = app.place_simple_order().await;
    app.pay(a, ta).await;
    let (b, tb) = app.place_simple_order().await;
    app.pay(b, tb).await;
    // A client that numbers its refund keys per order ("refund-1") and
    // sends the same reason: two different commands.
    let body = json!({"reason": "customer request"});
    let ra = app.request_refund(a, "refund-1", &body).await;
    assert_eq!(ra.status, 202, "{}", ra.text());
    assert_eq!(ra.json()["order_id"], a.to_string());

    let rb = app.request_refund(b, "refund-1", &body).await;
    // Either B's own refund, or a refusal; never A's refund replayed as B's.
    if rb.status == 202 {
        assert_eq!(
            rb.json()["order_id"],
            b.to_string(),
            "the refund for order B answered with order A's refund (replayed: {:?})",
            rb.header("idempotent-replayed")
        );
        assert_eq!(
            app.order_event_types(b).await.last().map(String::as_str),
            Some("RefundRequested")
        );
    } else {
        rb.assert_error(422, "idempotency_key_reused");
    }
}

/// What the server hashes for a request (`idempotency::request_hash`).
fn request_hash(scope: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(scope.as_bytes());
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

/// Longest a test waits for the server to reach a state it is driven to
/// (polled, never slept on blindly).
const CONDITION_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Polls `check` until it holds or [`CONDITION_MAX`] passes.
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + CONDITION_MAX;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The crash bound: a claim whose process died (written here with another
/// process's owner, never renewed) answers 409 with `Retry-After` counting
/// down to the end of its lease, and the first retry after [`LEASE`] runs.
async fn a_claim_left_by_a_crashed_process_blocks_retries_for_one_lease_at_most(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let body = serde_json::to_vec(&two_seller_order("buyer-lease")).unwrap();
    let scope = "api:POST /v1/orders";
    // A process that claimed the key and was killed before answering.
    let claimed = app
        .state
        .idempotency
        .begin(
            scope,
            "lease-1",
            &request_hash(scope, &body),
            "crashed-process/claim-1",
            t0(),
            LEASE,
        )
        .await
        .unwrap();
    assert!(matches!(claimed, Begin::Started), "{claimed:?}");

    let r = app
        .command("/v1/orders", Some("lease-1"), body.clone())
        .await;
    r.assert_error(409, "idempotency_key_in_progress");
    let lease_secs = LEASE.as_secs().to_string();
    assert_eq!(r.header("retry-after"), Some(lease_secs.as_str()));
    assert!(LEASE <= std::time::Duration::from_secs(10), "a few seconds");
    app.clock
        .advance(Duration::from_std(LEASE).unwrap() - Duration::milliseconds(1_500));
    let r = app
        .command("/v1/orders", Some("lease-1"), body.clone())
        .await;
    r.assert_error(409, "idempotency_key_in_progress");
    assert_eq!(r.header("retry-after"), Some("2"), "rounded up");
    app.clock.advance(Duration::milliseconds(1_000));
    let r = app
        .command("/v1/orders", Some("lease-1"), body.clone())
        .await;
    r.assert_error(409, "idempotency_key_in_progress");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(app.counts().await.events, 0);
    // A different body under the claimed key is a reuse, lease or not.
    let r = app
        .post_order("lease-1", &two_seller_order("someone-else"))
        .await;
    r.assert_error(422, "idempotency_key_reused");

    // Past the lease, the retry takes the claim over and executes once.
    app.clock.advance(Duration::milliseconds(501));
    let r = app
        .command("/v1/orders", Some("lease-1"), body.clone())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("idempotent-replayed"), None);
    let again = app.command("/v1/orders", Some("lease-1"), body).await;
    assert_eq!(again.bytes, r.bytes);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.counts().await.events, 1);
}

/// A request whose client goes away while it waits on the PSP releases its
/// claim when the server drops it: a retry with the same key then runs
/// (no 409, no waiting for a lease). While it was in flight, the same key
/// answered 409 with `Retry-After`.
async fn a_client_that_disconnects_mid_request_frees_its_key(kind: Kind) {
    let app = spawn_app_with_psp(kind, &[]).await;
    let fake = app.fake();
    // The payment start hangs (until the server's start deadline).
    fake.inject_fault(Endpoint::CreatePayment, Fault::Hang, 1);
    let body = serde_json::to_vec(&two_seller_order("buyer-gone")).unwrap();
    let request = app
        .req(Method::POST, "/v1/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", "gone-1")
        .body(body.clone());
    let in_flight = tokio::spawn(request.send());
    wait_for("the payment start to reach the PSP", || async {
        fake.counters().requests_to(Endpoint::CreatePayment) >= 1
    })
    .await;

    let busy = app
        .command("/v1/orders", Some("gone-1"), body.clone())
        .await;
    busy.assert_error(409, "idempotency_key_in_progress");
    let retry_after: u64 = busy
        .header("retry-after")
        .expect("Retry-After on a 409 in flight")
        .parse()
        .unwrap();
    assert!(
        (1..=LEASE.as_secs()).contains(&retry_after),
        "{retry_after}"
    );

    // The client gives up: its connection closes, the server drops the
    // request and releases the claim (before the start deadline would have
    // answered and stored a response).
    in_flight.abort();
    wait_for("the dropped request's claim to be released", || async {
        app.counts().await.idempotency == 0
    })
    .await;
    let retry = app.command("/v1/orders", Some("gone-1"), body).await;
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert_eq!(retry.header("idempotent-replayed"), None);
    assert_eq!(app.counts().await.idempotency, 1);
}
