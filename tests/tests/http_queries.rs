//! End-to-end: the query routes over real HTTP on both backends: one order
//! with its lines, refunds, transfers and events; the order list's filters,
//! sorts and keyset pages; seller balances, the trial balance (now and as
//! of a position) and anomalies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
#[path = "common/http.rs"]
mod http_common;

use std::collections::HashSet;

use chrono::{Duration, Timelike};
use http_common::*;
use ledger_core::ids::{OrderId, payment_id_for};
use serde_json::{Value, json};
use uuid::Uuid;

http_tests!(
    one_order_with_lines_refunds_and_events,
    order_list_filters_sorts_and_pages_without_repeats_or_gaps,
    balances_trial_balance_and_anomalies,
);

fn ms(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn one_order_with_lines_refunds_and_events(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let placed = app
        .post_order("detail-1", &two_seller_order("buyer-d"))
        .await;
    assert_eq!(placed.status, 201, "{}", placed.text());
    let created = placed.json();
    let order = OrderId(Uuid::parse_str(created["order_id"].as_str().unwrap()).unwrap());
    assert_eq!(created["status"], "created");
    assert_eq!(created["total_minor"], 5500);
    assert_eq!(created["fee_minor"], 550);
    assert_eq!(created["currency"], "USD");
    let place_request_id = placed.header("x-request-id").unwrap().to_owned();

    app.settle().await;
    let v = app.get_json(&format!("/v1/orders/{order}")).await;
    assert_eq!(v["status"], "created");
    assert_eq!(v["status_since"], ms(t0()));

    app.clock.advance(Duration::minutes(5));
    app.pay(order, 5500).await;
    app.settle().await;
    let v = app.get_json(&format!("/v1/orders/{order}")).await;
    assert_eq!(v["order_id"], order.to_string());
    assert_eq!(v["status"], "completed");
    assert_eq!(v["buyer_id"], "buyer-d");
    assert_eq!(v["currency"], "USD");
    assert_eq!(v["total_minor"], 5500);
    assert_eq!(v["captured_minor"], 5500);
    assert_eq!(v["refunded_minor"], 0);
    assert_eq!(v["fee_minor"], 550);
    assert_eq!(v["payment_id"], payment_id_for(order).as_str());
    assert_eq!(v["created_at"], ms(t0()));
    assert_eq!(v["status_since"], ms(t0() + Duration::minutes(5)));
    assert_eq!(v["updated_at"], ms(t0() + Duration::minutes(5)));
    let lines = v["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["product_id"], "p-a");
    assert_eq!(lines[0]["seller_id"], "s-1");
    assert_eq!(lines[0]["seller_account"], "acct_s-1");
    assert_eq!(lines[0]["unit_amount_minor"], 1500);
    assert_eq!(lines[0]["quantity"], 2);
    assert_eq!(lines[0]["total_minor"], 3000);
    assert_eq!(lines[0]["fee_minor"], 300);
    assert_eq!(lines[0]["seller_minor"], 2700);
    assert_eq!(lines[1]["product_id"], "p-b");
    assert_eq!(lines[1]["total_minor"], 2500);
    assert_eq!(v["refunds"], json!([]));
    assert!(v["transfers"].is_array(), "{v}");

    // A refund shows up in the order's refunds.
    app.clock.advance(Duration::minutes(1));
    let r = app
        .request_refund(
            order,
            "detail-refund",
            &json!({"reason": "damaged", "product_ids": ["p-b"]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let refund = refund_id_of(&r.json());
    app.settle().await;
    let v = app.get_json(&format!("/v1/orders/{order}")).await;
    assert_eq!(v["status"], "refund_pending");
    let refunds = v["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0]["refund_id"], refund.to_string());
    assert_eq!(refunds[0]["amount_minor"], 2500);
    assert_eq!(refunds[0]["reason"], "damaged");
    assert_eq!(refunds[0]["requested_at"], ms(t0() + Duration::minutes(6)));
    assert_eq!(
        app.get_json(&format!("/v1/refunds/{refund}")).await,
        refunds[0],
        "the refund route and the order agree"
    );

    // The stream as stored, with hashes and metadata.
    let ev = app.get_json(&format!("/v1/orders/{order}/events")).await;
    assert_eq!(ev["stream_id"], format!("order-{order}"));
    let events = ev["events"].as_array().unwrap();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "OrderPlaced",
            "PaymentInitiated",
            "PaymentSucceeded",
            "RefundRequested"
        ]
    );
    let mut last_position = 0;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["stream_version"], i as u64 + 1);
        let p = e["global_position"].as_u64().unwrap();
        assert!(p > last_position, "positions ascend");
        last_position = p;
        let hash = e["hash"].as_str().unwrap();
        assert_eq!(hash.len(), 64);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(e["payload"].is_object());
    }
    assert_eq!(events[0]["payload"]["total_minor"], 5500, "{}", events[0]);
    assert_eq!(events[0]["metadata"]["source"], "api");
    assert_eq!(
        events[0]["metadata"]["request_id"],
        place_request_id.as_str()
    );
    assert_eq!(events[2]["metadata"]["source"], "webhook");
    assert_eq!(events[2]["metadata"]["actor"], "hyperswitch");

    // Unknown and malformed ids.
    let unknown = Uuid::new_v4();
    app.get(&format!("/v1/orders/{unknown}"))
        .await
        .assert_error(404, "order_not_found");
    app.get(&format!("/v1/orders/{unknown}/events"))
        .await
        .assert_error(404, "order_not_found");
    app.get("/v1/orders/not-a-uuid")
        .await
        .assert_error(404, "order_not_found");
    app.get("/v1/no-such-route")
        .await
        .assert_error(404, "route_not_found");
}

/// Every page of `query` (which must not carry `after`), as order ids.
async fn all_pages(app: &TestApp, query: &str) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(c) => format!("/v1/orders?{query}&after={c}"),
            None => format!("/v1/orders?{query}"),
        };
        let v = app.get_json(&path).await;
        pages += 1;
        assert!(pages <= 20, "paging does not end");
        ids.extend(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["order_id"].as_str().unwrap().to_owned()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => return (ids, pages),
        }
    }
}

async fn order_list_filters_sorts_and_pages_without_repeats_or_gaps(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    // (buyer, seller, unit amount); two totals tie to exercise the tiebreak.
    let specs = [
        ("b-even", "s-0", 500),
        ("b-odd", "s-1", 700),
        ("b-even", "s-2", 500),
        ("b-odd", "s-0", 900),
        ("b-even", "s-1", 300),
        ("b-odd", "s-2", 700),
        ("b-even", "s-0", 100),
    ];
    let mut orders: Vec<(String, &str, &str, i64)> = Vec::new(); // id, buyer, seller, total
    for (i, (buyer, seller, amount)) in specs.iter().enumerate() {
        app.clock.advance(Duration::seconds(1));
        let (id, _) = app
            .place_order(
                &format!("list-{i}"),
                &order_body(buyer, vec![item(&format!("p-{i}"), seller, *amount, 1)]),
            )
            .await;
        orders.push((id.to_string(), buyer, seller, *amount));
    }
    // Two get paid later, so their updated_at is the newest.
    app.clock.advance(Duration::minutes(1));
    for i in [1, 4] {
        let id = OrderId(Uuid::parse_str(&orders[i].0).unwrap());
        app.pay(id, orders[i].3).await;
    }
    app.settle().await;

    let newest_first: Vec<String> = orders.iter().rev().map(|o| o.0.clone()).collect();

    // Default sort, 3 pages, with an order placed between pages: the pages
    // still hold exactly the orders that existed, once each, in order.
    let first = app.get_json("/v1/orders?limit=3").await;
    let mut seen: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen.len(), 3);
    for item in first["items"].as_array().unwrap() {
        assert!(
            item.get("_cursor").is_none(),
            "internal cursor key leaked: {item}"
        );
        for key in [
            "order_id",
            "status",
            "buyer_id",
            "total_minor",
            "created_at",
            "status_since",
        ] {
            assert!(item.get(key).is_some(), "{key} missing: {item}");
        }
    }
    app.clock.advance(Duration::seconds(1));
    let (late, _) = app
        .place_order(
            "list-late",
            &order_body("b-even", vec![item("p-late", "s-0", 50, 1)]),
        )
        .await;
    app.settle().await;
    let mut cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let mut pages = 1;
    loop {
        let v = app
            .get_json(&format!("/v1/orders?limit=3&after={cursor}"))
            .await;
        pages += 1;
        seen.extend(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["order_id"].as_str().unwrap().to_owned()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, newest_first, "no repeats, no gaps, created_at desc");

    // Now with the late order; the same query twice gives the same pages.
    let mut all_newest_first = vec![late.to_string()];
    all_newest_first.extend(newest_first.iter().cloned());
    let (ids, pages) = all_pages(&app, "limit=3").await;
    assert_eq!((ids.clone(), pages), (all_newest_first.clone(), 3));
    assert_eq!(all_pages(&app, "limit=3").await.0, ids, "stable");
    // Unknown sorts fall back to created_at desc.
    assert_eq!(
        all_pages(&app, "limit=3&sort=amount%3B%20drop%20table%20order_view")
            .await
            .0,
        all_newest_first
    );
    assert_eq!(
        all_pages(&app, "sort=created_at_desc").await,
        (all_newest_first.clone(), 1)
    );
    let mut oldest_first = all_newest_first.clone();
    oldest_first.reverse();
    assert_eq!(
        all_pages(&app, "limit=2&sort=created_at_asc").await.0,
        oldest_first
    );

    // total_minor, ties broken by order id, in both directions.
    let mut by_total: Vec<(i64, String)> = orders.iter().map(|o| (o.3, o.0.clone())).collect();
    by_total.push((50, late.to_string()));
    by_total.sort();
    let asc: Vec<String> = by_total.iter().map(|(_, id)| id.clone()).collect();
    let desc: Vec<String> = asc.iter().rev().cloned().collect();
    assert_eq!(all_pages(&app, "limit=3&sort=total_minor_asc").await.0, asc);
    assert_eq!(
        all_pages(&app, "limit=3&sort=total_minor_desc").await.0,
        desc
    );

    // updated_at desc: the late order, then the two paid ones.
    let (by_updated, _) = all_pages(&app, "limit=2&sort=updated_at_desc").await;
    assert_eq!(by_updated[0], late.to_string());
    let paid: HashSet<&String> = [&orders[1].0, &orders[4].0].into_iter().collect();
    assert_eq!(by_updated[1..3].iter().collect::<HashSet<_>>(), paid);
    let (by_updated_asc, _) = all_pages(&app, "limit=2&sort=updated_at_asc").await;
    assert_eq!(
        by_updated_asc.iter().rev().cloned().collect::<Vec<_>>(),
        by_updated
    );

    // Filters.
    let (completed, _) = all_pages(&app, "status=completed").await;
    assert_eq!(completed, [orders[4].0.clone(), orders[1].0.clone()]);
    let (created, _) = all_pages(&app, "status=created&limit=2").await;
    assert_eq!(created.len(), 6);
    assert!(created.iter().all(|id| !paid.contains(id)));
    let expected_odd: Vec<String> = orders
        .iter()
        .rev()
        .filter(|o| o.1 == "b-odd")
        .map(|o| o.0.clone())
        .collect();
    assert_eq!(
        all_pages(&app, "buyer_id=b-odd&limit=1").await.0,
        expected_odd
    );
    let expected_s0: Vec<String> = std::iter::once(late.to_string())
        .chain(
            orders
                .iter()
                .rev()
                .filter(|o| o.2 == "s-0")
                .map(|o| o.0.clone()),
        )
        .collect();
    assert_eq!(
        all_pages(&app, "seller_id=s-0&limit=2").await.0,
        expected_s0
    );
    assert_eq!(
        all_pages(&app, "status=completed&buyer_id=b-even").await.0,
        [orders[4].0.clone()]
    );
    assert_eq!(all_pages(&app, "buyer_id=nobody").await, (vec![], 1));
    assert_eq!(
        all_pages(&app, "status=completed' or '1'='1").await,
        (vec![], 1)
    );

    // Bad parameters.
    for bad in ["limit=0", "limit=201", "limit=abc", "limit=-1", "limit=3.5"] {
        app.get(&format!("/v1/orders?{bad}"))
            .await
            .assert_error(400, "invalid_query");
    }
    assert_eq!(
        app.get_json("/v1/orders?limit=200").await["items"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    app.get("/v1/orders?after=zz")
        .await
        .assert_error(400, "invalid_cursor");
    app.get(&format!("/v1/orders?after={}", hex_of("not json")))
        .await
        .assert_error(400, "invalid_cursor");
    // A total_minor cursor does not fit a created_at sort.
    let by_total_page = app
        .get_json("/v1/orders?limit=1&sort=total_minor_asc")
        .await;
    let total_cursor = by_total_page["next_cursor"].as_str().unwrap();
    app.get(&format!("/v1/orders?after={total_cursor}"))
        .await
        .assert_error(400, "invalid_cursor");
    // A forged cursor is the client's error, never a 500.
    for forged in [
        r#"["not a time","x"]"#,
        r#"["2026-13-45T99:00:00Z","x"]"#,
        r#"[null,"x"]"#,
        r#"["x"]"#,
    ] {
        app.get(&format!("/v1/orders?after={}", hex_of(forged)))
            .await
            .assert_error(400, "invalid_cursor");
        app.get(&format!(
            "/v1/orders?sort=updated_at_asc&after={}",
            hex_of(forged)
        ))
        .await
        .assert_error(400, "invalid_cursor");
    }
    app.get(&format!(
        "/v1/orders?sort=total_minor_desc&after={}",
        hex_of(r#"["x","y"]"#)
    ))
    .await
    .assert_error(400, "invalid_cursor");
}

fn hex_of(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

async fn balances_trial_balance_and_anomalies(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let empty = app.get_json("/v1/ledger/trial-balance").await;
    assert_eq!(empty["accounts"], json!([]));
    assert_eq!(empty["balanced"], true);

    let (order, total) = app.place_simple_order().await;
    app.pay(order, total).await;
    app.settle().await;
    let paid_at = app.head_position().await;

    let s1 = app.get_json("/v1/sellers/s-1/balance").await;
    assert_eq!(s1["seller_id"], "s-1");
    assert_eq!(
        s1["balances"],
        json!([{"currency": "USD", "payable_minor": 2700, "credit_minor": 2700, "debit_minor": 0}])
    );
    let s2 = app.get_json("/v1/sellers/s-2/balance").await;
    assert_eq!(s2["balances"][0]["payable_minor"], 2250);
    assert_eq!(
        app.get_json("/v1/sellers/nobody/balance").await["balances"],
        json!([])
    );

    let tb = app.get_json("/v1/ledger/trial-balance").await;
    assert_eq!(tb["balanced"], true, "{tb}");
    assert_eq!(
        tb["totals"]["USD"],
        json!({"debit_minor": 5500, "credit_minor": 5500})
    );
    let account = |tb: &Value, name: &str| {
        tb["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["account"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {tb}"))
    };
    assert_eq!(account(&tb, "psp_clearing")["debit_minor"], 5500);
    assert_eq!(account(&tb, "platform_fees")["credit_minor"], 550);
    assert_eq!(account(&tb, "seller_payable:s-1")["credit_minor"], 2700);

    // as_of a time: inclusive at the event's recorded_at (µs), exclusive
    // just before it, and a whole second before it is before it.
    let paid_event = app
        .order_events(order)
        .await
        .into_iter()
        .find(|e| e.event_type == "PaymentSucceeded")
        .unwrap();
    let at = paid_event.recorded_at;
    let micros =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let as_of = |t: String| {
        let app = &app;
        async move {
            app.get_json(&format!("/v1/ledger/trial-balance?as_of={t}"))
                .await["accounts"]
                .clone()
        }
    };
    assert_eq!(as_of(micros(at)).await, tb["accounts"]);
    assert_eq!(
        as_of(micros(at - Duration::microseconds(1))).await,
        json!([])
    );
    let whole_second = at.with_nanosecond(0).unwrap();
    if whole_second < at {
        assert_eq!(
            as_of(whole_second.format("%Y-%m-%dT%H:%M:%SZ").to_string()).await,
            json!([]),
            "as_of={whole_second} includes an event recorded at {}",
            micros(at)
        );
    }

    // A refund moves money; as_of the earlier position still shows then.
    let r = app
        .request_refund(
            order,
            "tb-refund",
            &json!({"reason": "x", "product_ids": ["p-a"]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let refund = refund_id_of(&r.json());
    app.deliver_ok(
        &refund_webhook(
            &new_event_id(),
            "refund_succeeded",
            refund,
            order,
            3000,
            "succeeded",
        ),
        "ok",
    )
    .await;
    app.settle().await;
    let now = app.get_json("/v1/ledger/trial-balance").await;
    assert_eq!(now["balanced"], true, "{now}");
    assert_eq!(
        now["totals"]["USD"],
        json!({"debit_minor": 8500, "credit_minor": 8500})
    );
    assert_eq!(account(&now, "psp_clearing")["credit_minor"], 3000);
    assert_eq!(
        app.get_json("/v1/sellers/s-1/balance").await["balances"][0]["payable_minor"],
        0
    );

    let then = app
        .get_json(&format!("/v1/ledger/trial-balance?as_of={paid_at}"))
        .await;
    assert_eq!(then["as_of"], paid_at.to_string());
    assert_eq!(
        then["accounts"], tb["accounts"],
        "as_of shows the ledger at that position"
    );
    assert_eq!(then["balanced"], true);
    let head = app.head_position().await;
    assert_eq!(
        app.get_json(&format!("/v1/ledger/trial-balance?as_of={head}"))
            .await["accounts"],
        now["accounts"]
    );
    assert_eq!(
        app.get_json("/v1/ledger/trial-balance?as_of=0").await["accounts"],
        json!([])
    );
    assert_eq!(
        app.get_json("/v1/ledger/trial-balance?as_of=2000-01-01T00:00:00Z")
            .await["accounts"],
        json!([])
    );
    assert_eq!(
        app.get_json("/v1/ledger/trial-balance?as_of=2999-01-01T00:00:00Z")
            .await["accounts"],
        now["accounts"]
    );
    app.get("/v1/ledger/trial-balance?as_of=yesterday")
        .await
        .assert_error(400, "invalid_query");

    // A capture of the wrong amount is never success: an anomaly instead.
    assert_eq!(app.get_json("/v1/anomalies").await["items"], json!([]));
    let (odd, odd_total) = app.place_simple_order().await;
    app.initiate_payment(odd).await;
    let body = payment_webhook(
        &new_event_id(),
        "payment_succeeded",
        odd,
        "succeeded",
        odd_total,
        Some(odd_total - 1),
    );
    app.deliver_ok(&body, "ok").await;
    app.settle().await;
    assert_eq!(
        app.get_json(&format!("/v1/orders/{odd}")).await["status"],
        "pending"
    );
    let anomalies = app.get_json("/v1/anomalies").await;
    let items = anomalies["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{anomalies}");
    assert_eq!(items[0]["stream_id"], format!("order-{odd}"));
    assert_eq!(items[0]["event_type"], "PaymentAnomalyRecorded");
    assert_eq!(items[0]["at"], ms(t0()));
    app.get("/v1/anomalies?limit=0")
        .await
        .assert_error(400, "invalid_query");

    // Transfers: no transfer manager runs yet, so none, but the route works.
    assert_eq!(
        app.get_json("/v1/transfers?seller_id=s-1").await["items"],
        json!([])
    );
    app.get("/v1/transfers?limit=x")
        .await
        .assert_error(400, "invalid_query");
}
