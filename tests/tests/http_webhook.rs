//! End-to-end: `POST /webhooks/hyperswitch` over real HTTP on both backends.
//! Every delivery is logged once with its fields (the seed's item E); bad
//! ones are refused and change no stream; duplicates and out-of-order
//! deliveries converge on the state one in-order delivery leaves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
#[path = "common/http.rs"]
mod http_common;

use chrono::Duration;
use http_common::*;
use ledger_api::http::WEBHOOK_BODY_MAX;
use ledger_core::ids::{OrderId, payment_id_for};
use ledger_projections::clock::Clock;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

http_tests!(
    every_delivery_is_logged_with_its_fields,
    refused_deliveries_are_logged_and_change_no_stream,
    oversize_webhooks_are_refused_before_any_write,
    event_types_are_extracted_and_routed,
    duplicate_and_out_of_order_deliveries_converge,
    without_a_secret_every_delivery_is_refused,
    a_failing_webhook_log_never_costs_the_delivery,
    an_unsigned_64_kib_body_keeps_4_kib_its_hash_and_length,
);

/// A pending order (placed, payment initiated) and its total.
async fn pending_order(app: &TestApp) -> (OrderId, i64) {
    let (order, total) = app.place_simple_order().await;
    app.initiate_payment(order).await;
    (order, total)
}

async fn every_delivery_is_logged_with_its_fields(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let (order, total) = pending_order(&app).await;
    let event_id = new_event_id();
    let body = payment_webhook(
        &event_id,
        "payment_succeeded",
        order,
        "succeeded",
        total,
        Some(total),
    );

    let r = app.deliver(&body, Sig::Valid, Some("req-e2e-first")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"status": "ok"}));
    assert_eq!(r.header("x-request-id"), Some("req-e2e-first"));
    let log = app.webhook_log(10).await;
    assert_eq!(log.len(), 1);
    let row = &log[0];
    assert_eq!(row.payload.as_bytes(), &body[..]);
    assert!(row.signature_valid);
    assert_eq!(row.processing_result, "ok");
    assert_eq!(row.source_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(row.user_agent.as_deref(), Some(HYPERSWITCH_UA));
    assert_eq!(row.request_id, "req-e2e-first");
    assert_eq!(row.event_type.as_deref(), Some("payment_succeeded"));
    assert_eq!(row.event_id.as_deref(), Some(event_id.as_str()));
    assert_eq!(
        row.received_at,
        t0(),
        "received_at comes from the injected clock"
    );

    // The retry (same bytes, same event id), a minute later, with no id.
    app.clock.advance(Duration::minutes(1));
    let r = app.deliver(&body, Sig::Valid, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "duplicate"}));
    let generated = r.header("x-request-id").unwrap().to_owned();
    Uuid::parse_str(&generated).expect("a generated request id is a UUID");
    let row = &app.webhook_log(1).await[0];
    assert_eq!(row.processing_result, "duplicate");
    assert_eq!(row.request_id, generated);
    assert_eq!(row.received_at, t0() + Duration::minutes(1));
    assert_eq!(row.event_id.as_deref(), Some(event_id.as_str()));

    // An X-Request-Id that is not sane (too long) is replaced, not stored.
    let r = app.deliver(&body, Sig::Valid, Some(&"r".repeat(200))).await;
    let replaced = r.header("x-request-id").unwrap().to_owned();
    Uuid::parse_str(&replaced).expect("replaced by a UUID");
    assert_eq!(app.webhook_log(1).await[0].request_id, replaced);

    // A User-Agent is kept up to 512 characters.
    let r = app
        .send(
            app.anon(reqwest::Method::POST, "/webhooks/hyperswitch")
                .header("user-agent", "u".repeat(600))
                .header(
                    "x-webhook-signature-512",
                    ledger_psp::sign_hyperswitch(WEBHOOK_SECRET.as_bytes(), &body),
                )
                .body(body.clone()),
        )
        .await;
    assert_eq!(r.json(), json!({"status": "duplicate"}));
    assert_eq!(
        app.webhook_log(1).await[0].user_agent,
        Some("u".repeat(512))
    );

    assert_eq!(app.counts().await.webhook_log, 4, "one row per delivery");
    assert_eq!(
        app.order_event_types(order).await,
        ["OrderPlaced", "PaymentInitiated", "PaymentSucceeded"]
    );
    app.settle().await;
    assert_eq!(
        app.get_json(&format!("/v1/orders/{order}")).await["status"],
        "completed"
    );
}

/// Delivers and checks the response, the newest log row and that no stream
/// or idempotency record changed.
async fn refused(
    app: &TestApp,
    body: &[u8],
    sig: Sig<'_>,
    status: u16,
    code: &str,
) -> ledger_store::webhook_log::WebhookLogEntry {
    let before = app.counts().await;
    let r = app.deliver(body, sig, None).await;
    r.assert_error(status, code);
    let after = app.counts().await;
    assert_eq!(after.events, before.events, "{code}: events written");
    assert_eq!(after.idempotency, before.idempotency);
    assert_eq!(
        after.webhook_log,
        before.webhook_log + 1,
        "{code}: exactly one log row"
    );
    let row = app.webhook_log(1).await.remove(0);
    assert_eq!(Some(row.request_id.as_str()), r.header("x-request-id"));
    row
}

async fn refused_deliveries_are_logged_and_change_no_stream(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let (order, total) = pending_order(&app).await;
    let event_id = new_event_id();
    let body = payment_webhook(
        &event_id,
        "payment_succeeded",
        order,
        "succeeded",
        total,
        Some(total),
    );
    let good_sig = ledger_psp::sign_hyperswitch(WEBHOOK_SECRET.as_bytes(), &body);

    let bad_signatures: Vec<(&str, Sig<'_>)> = vec![
        ("missing", Sig::Missing),
        ("empty", Sig::Header("")),
        ("garbage", Sig::Header("deadbeef")),
        (
            "uppercase hex of the right MAC",
            Sig::Header(&*Box::leak(good_sig.to_uppercase().into_boxed_str())),
        ),
        (
            "sha256-length",
            Sig::Header(&*Box::leak("a".repeat(64).into_boxed_str())),
        ),
        (
            "another body's MAC",
            Sig::OtherBody(b"{\"event_id\":\"evt_other\"}"),
        ),
    ];
    for (what, sig) in bad_signatures {
        let row = refused(&app, &body, sig, 401, "signature_invalid").await;
        assert!(!row.signature_valid, "{what}");
        assert_eq!(row.processing_result, "signature_invalid", "{what}");
        assert_eq!(
            row.payload.as_bytes(),
            &body[..],
            "{what}: the attempt is kept for forensics"
        );
        assert_eq!(
            row.event_type.as_deref(),
            Some("payment_succeeded"),
            "{what}"
        );
        assert_eq!(row.event_id.as_deref(), Some(event_id.as_str()), "{what}");
        assert_eq!(row.user_agent.as_deref(), Some(HYPERSWITCH_UA));
        assert_eq!(row.payload_sha256, Some(sha256_hex(&body)), "{what}");
        assert_eq!(row.payload_len, Some(body.len() as i64), "{what}");
    }
    // Signed with another key.
    let foreign = ledger_psp::sign_hyperswitch(b"someone-elses-key", &body);
    let row = refused(&app, &body, Sig::Header(&foreign), 401, "signature_invalid").await;
    assert!(!row.signature_valid);

    // Signed, but not JSON: 400, and no event type could be read.
    let not_json = b"{\"event_id\": \"evt_1\", \"event_type\": ";
    let row = refused(&app, not_json, Sig::Valid, 400, "malformed_webhook").await;
    assert!(row.signature_valid);
    assert!(
        row.processing_result.starts_with("error: "),
        "{}",
        row.processing_result
    );
    assert_eq!(row.event_type, None);
    assert_eq!(row.event_id, None);

    // Signed JSON that is not an envelope, or whose type contradicts its
    // content.
    let row = refused(
        &app,
        br#"{"event_type":"payment_succeeded","event_id":"evt_x"}"#,
        Sig::Valid,
        400,
        "malformed_webhook",
    )
    .await;
    assert_eq!(row.event_type.as_deref(), Some("payment_succeeded"));
    let mismatch = String::from_utf8(body.clone())
        .unwrap()
        .replace(
            "\"event_type\":\"payment_succeeded\"",
            "\"event_type\":\"refund_succeeded\"",
        )
        .replace(&event_id, "evt_mismatch");
    let row = refused(
        &app,
        mismatch.as_bytes(),
        Sig::Valid,
        400,
        "malformed_webhook",
    )
    .await;
    assert_eq!(row.event_type.as_deref(), Some("refund_succeeded"));

    // Not UTF-8: the row is written with an empty payload.
    let binary = [0xff_u8, 0xfe, 0x00, 0x80, b'{', b'}'];
    let row = refused(&app, &binary, Sig::Valid, 400, "malformed_webhook").await;
    assert_eq!(row.payload, "");
    assert!(row.signature_valid);
    assert_eq!(row.event_type, None);
    let row = refused(&app, &binary, Sig::Missing, 401, "signature_invalid").await;
    assert_eq!(row.payload, "");
    assert!(!row.signature_valid);

    // NUL bytes, raw or JSON-escaped, still leave their row.
    let raw_nul = b"{\"event_id\":\"evt_nul\",\"event_type\":\"payment_succeeded\"\0}";
    let row = refused(&app, raw_nul, Sig::Valid, 400, "malformed_webhook").await;
    assert!(
        row.payload.starts_with("{\"event_id\":\"evt_nul\""),
        "{:?}",
        row.payload
    );
    let before = app.counts().await;
    let escaped = br#"{"merchant_id":"m","event_id":"evt_\u0000nul","event_type":"odd\u0000type","content":{"type":"odd_details","object":{}},"timestamp":"2024-03-16T19:55:46.000Z"}"#;
    app.deliver_ok(escaped, "skipped").await;
    assert_eq!(
        app.counts().await.webhook_log,
        before.webhook_log + 1,
        "the NUL row was not written"
    );
    let row = app.webhook_log(1).await.remove(0);
    let event_type = row.event_type.unwrap();
    assert!(
        event_type.starts_with("odd") && event_type.ends_with("type"),
        "{event_type:?}"
    );

    // None of that moved the order; the refused deliveries do not count as
    // processed, so the genuine one is applied, then deduplicated.
    assert_eq!(
        app.order_event_types(order).await,
        ["OrderPlaced", "PaymentInitiated"]
    );
    app.deliver_ok(&body, "ok").await;
    app.deliver_ok(&body, "duplicate").await;
    assert_eq!(
        app.order_event_types(order).await,
        ["OrderPlaced", "PaymentInitiated", "PaymentSucceeded"]
    );
}

async fn oversize_webhooks_are_refused_before_any_write(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let (order, total) = pending_order(&app).await;
    let before = app.counts().await;
    let body = payment_succeeded_webhook(order, total);
    // Valid JSON, validly signed, one byte over the limit.
    let mut big = body[..body.len() - 1].to_vec();
    big.extend_from_slice(b",\"pad\":\"");
    let fill = WEBHOOK_BODY_MAX + 1 - big.len() - 2;
    big.extend(std::iter::repeat_n(b'x', fill));
    big.extend_from_slice(b"\"}");
    assert_eq!(big.len(), WEBHOOK_BODY_MAX + 1);
    serde_json::from_slice::<Value>(&big).unwrap();
    for sig in [Sig::Valid, Sig::Missing] {
        let r = app.deliver(&big, sig, None).await;
        r.assert_error(413, "payload_too_large");
    }
    assert_eq!(app.counts().await, before, "a 413 webhook wrote something");

    // Without a Content-Length (chunked), the limit holds while reading.
    let mut stream = tokio::net::TcpStream::connect(app.server().addr)
        .await
        .unwrap();
    let sig = ledger_psp::sign_hyperswitch(WEBHOOK_SECRET.as_bytes(), &big);
    let mut request = format!(
        "POST /webhooks/hyperswitch HTTP/1.1\r\nhost: ledger\r\ntransfer-encoding: chunked\r\n\
         content-type: application/json\r\nx-webhook-signature-512: {sig}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in big.chunks(8 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
    assert_eq!(
        app.counts().await,
        before,
        "a chunked 413 webhook wrote something"
    );

    // A client waiting for `100 Continue` gets the 413 before it sends a
    // byte of its body (the timeout only bounds a failing run).
    let mut stream = tokio::net::TcpStream::connect(app.server().addr)
        .await
        .unwrap();
    let head = format!(
        "POST /webhooks/hyperswitch HTTP/1.1\r\nhost: ledger\r\ncontent-length: {}\r\n\
         expect: 100-continue\r\ncontent-type: application/json\r\n\
         x-webhook-signature-512: {sig}\r\nconnection: close\r\n\r\n",
        WEBHOOK_BODY_MAX + 1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert_eq!(
        app.counts().await,
        before,
        "a 100-continue 413 wrote something"
    );

    // Exactly at the limit is read and processed (and logged).
    let mut at_limit = big;
    at_limit.remove(at_limit.len() - 3);
    assert_eq!(at_limit.len(), WEBHOOK_BODY_MAX);
    app.deliver_ok(&at_limit, "ok").await;
    assert_eq!(app.counts().await.webhook_log, before.webhook_log + 1);
}

async fn event_types_are_extracted_and_routed(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let (order, total) = pending_order(&app).await;

    let body = payment_succeeded_webhook(order, total);
    app.deliver_ok(&body, "ok").await;
    let row = &app.webhook_log(1).await[0];
    assert_eq!(
        (row.event_type.as_deref(), row.processing_result.as_str()),
        (Some("payment_succeeded"), "ok")
    );

    // A refund the PSP failed: the order gets its lines back.
    let r = app
        .request_refund(order, "refund-to-fail", &json!({"reason": "x"}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let refund = refund_id_of(&r.json());
    app.deliver_ok(
        &refund_webhook(
            &new_event_id(),
            "refund_failed",
            refund,
            order,
            total,
            "failed",
        ),
        "ok",
    )
    .await;
    let row = &app.webhook_log(1).await[0];
    assert_eq!(row.event_type.as_deref(), Some("refund_failed"));
    assert_eq!(row.processing_result, "ok");
    assert_eq!(
        app.order_event_types(order).await,
        [
            "OrderPlaced",
            "PaymentInitiated",
            "PaymentSucceeded",
            "RefundRequested",
            "RefundReleased"
        ]
    );

    // Families the ledger does not act on are acknowledged and skipped.
    let before = app.counts().await;
    for (event_type, content) in [
        ("dispute_opened", "dispute_details"),
        ("dispute_lost", "dispute_details"),
        ("mandate_active", "mandate_details"),
        ("mandate_revoked", "mandate_details"),
        ("payout_success", "payout_details"),
        ("payout_failed", "payout_details"),
        ("teleported", "teleport_details"),
    ] {
        let event_id = new_event_id();
        app.deliver_ok(&other_webhook(&event_id, event_type, content), "skipped")
            .await;
        let row = &app.webhook_log(1).await[0];
        assert_eq!(row.event_type.as_deref(), Some(event_type));
        assert_eq!(row.event_id.as_deref(), Some(event_id.as_str()));
        assert_eq!(row.processing_result, "skipped", "{event_type}");
        assert!(row.signature_valid);
    }
    let after = app.counts().await;
    assert_eq!(after.events, before.events, "skipped types wrote events");
    assert_eq!(after.webhook_log, before.webhook_log + 7);

    // A payment the ledger never issued: acknowledged (so the PSP stops
    // retrying), refused, logged as an error.
    let foreign = String::from_utf8(payment_succeeded_webhook(order, total))
        .unwrap()
        .replace(payment_id_for(order).as_str(), "pay_6AMmb6rtlPDarBLlotAH");
    app.deliver_ok(foreign.as_bytes(), "refused").await;
    let row = &app.webhook_log(1).await[0];
    assert!(
        row.processing_result.starts_with("error: "),
        "{}",
        row.processing_result
    );
    assert_eq!(app.counts().await.events, after.events);
}

/// The order's events with its ids replaced, so two orders compare.
async fn normalised_events(app: &TestApp, order: OrderId) -> Vec<(String, Value)> {
    let order_text = order.to_string();
    let payment = payment_id_for(order).as_str().to_owned();
    app.order_events(order)
        .await
        .into_iter()
        .map(|e| {
            let payload = e
                .payload
                .replace(&order_text, "ORDER")
                .replace(&payment, "PAYMENT");
            (e.event_type, serde_json::from_str(&payload).unwrap())
        })
        .collect()
}

async fn normalised_view(app: &TestApp, order: OrderId) -> Value {
    let mut v = app.get_json(&format!("/v1/orders/{order}")).await;
    let obj = v.as_object_mut().unwrap();
    obj.remove("order_id");
    obj.remove("payment_id");
    v
}

async fn duplicate_and_out_of_order_deliveries_converge(kind: Kind) {
    let app = spawn_app(kind, &[]).await;

    #[derive(Clone, Copy, Debug)]
    enum D {
        Processing,
        Succeeded,
        /// Processing again, as a new event (a later poll of the same state).
        ProcessingAgain,
        /// Succeeded again under a new event id.
        SucceededAgain,
    }
    // Each delivery kind keeps its event id within one order, so a repeat
    // is byte-identical: what a Hyperswitch retry sends.
    let deliver_all = |order: OrderId, total: i64, steps: Vec<D>| {
        let app = &app;
        async move {
            let ids: Vec<String> = (0..4).map(|_| new_event_id()).collect();
            let mut results = Vec::new();
            for step in steps {
                let body = match step {
                    D::Processing => payment_webhook(
                        &ids[0],
                        "payment_processing",
                        order,
                        "processing",
                        total,
                        None,
                    ),
                    D::Succeeded => payment_webhook(
                        &ids[1],
                        "payment_succeeded",
                        order,
                        "succeeded",
                        total,
                        Some(total),
                    ),
                    D::ProcessingAgain => payment_webhook(
                        &ids[2],
                        "payment_processing",
                        order,
                        "processing",
                        total,
                        None,
                    ),
                    D::SucceededAgain => payment_webhook(
                        &ids[3],
                        "payment_succeeded",
                        order,
                        "succeeded",
                        total,
                        Some(total),
                    ),
                };
                let r = app.deliver(&body, Sig::Valid, None).await;
                assert_eq!(r.status, 200, "{step:?}: {}", r.text());
                results.push(r.json()["status"].as_str().unwrap().to_owned());
                assert_eq!(
                    app.webhook_log(1).await[0].processing_result,
                    results[results.len() - 1]
                );
            }
            results
        }
    };

    let (control, total) = pending_order(&app).await;
    let results = deliver_all(control, total, vec![D::Processing, D::Succeeded]).await;
    assert_eq!(results, ["ok", "ok"]);

    use D::*;
    let scenarios: Vec<(Vec<D>, Vec<&str>)> = vec![
        (vec![Succeeded, Processing], vec!["ok", "ok"]),
        (
            vec![Processing, Succeeded, ProcessingAgain],
            vec!["ok", "ok", "ok"],
        ),
        (vec![Succeeded, Succeeded], vec!["ok", "duplicate"]),
        (
            vec![Processing, Processing, Succeeded, Succeeded],
            vec!["ok", "duplicate", "ok", "duplicate"],
        ),
        (
            vec![
                Succeeded,
                ProcessingAgain,
                Processing,
                SucceededAgain,
                Succeeded,
                Processing,
            ],
            vec!["ok", "ok", "ok", "ok", "duplicate", "duplicate"],
        ),
    ];
    let mut orders = Vec::new();
    for (steps, expected) in scenarios {
        let (order, total) = pending_order(&app).await;
        let what = format!("{steps:?}");
        let results = deliver_all(order, total, steps).await;
        assert_eq!(results, expected, "{what}");
        orders.push((order, what));
    }

    let control_events = normalised_events(&app, control).await;
    assert_eq!(
        control_events
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>(),
        ["OrderPlaced", "PaymentInitiated", "PaymentSucceeded"]
    );
    app.settle().await;
    let control_view = normalised_view(&app, control).await;
    assert_eq!(control_view["status"], "completed");
    assert_eq!(control_view["captured_minor"], total);
    for (order, what) in orders {
        assert_eq!(
            normalised_events(&app, order).await,
            control_events,
            "{what}"
        );
        assert_eq!(normalised_view(&app, order).await, control_view, "{what}");
    }
    assert_eq!(app.clock.now(), t0());
}

async fn without_a_secret_every_delivery_is_refused(kind: Kind) {
    // Real PSP mode with no secret: no key at all, so nothing verifies.
    let app = spawn_app(
        kind,
        &[
            ("HYPERSWITCH_WEBHOOK_SECRET", ""),
            ("LEDGER_PSP_FAKE", "false"),
        ],
    )
    .await;
    let (order, total) = pending_order(&app).await;
    let body = payment_succeeded_webhook(order, total);
    let signed = ledger_psp::sign_hyperswitch(WEBHOOK_SECRET.as_bytes(), &body);
    let empty_key = ledger_psp::sign_hyperswitch(b"", &body);
    for sig in [Sig::Header(&signed), Sig::Header(&empty_key), Sig::Missing] {
        let row = refused(&app, &body, sig, 401, "signature_invalid").await;
        assert!(!row.signature_valid);
    }
    assert_eq!(
        app.order_event_types(order).await,
        ["OrderPlaced", "PaymentInitiated"]
    );
}

async fn a_failing_webhook_log_never_costs_the_delivery(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let (order, total) = pending_order(&app).await;
    // From now on the log table refuses every row. A payment delivery's row
    // normally commits with its events; refused there, the events go alone.
    match &app.backend {
        ledger_api::store::Backend::Postgres(s) => {
            sqlx::raw_sql(ledger_postgres::REFUSE_WEBHOOK_LOG_ROWS_SQL)
                .execute(s.pool())
                .await
                .unwrap();
        }
        ledger_api::store::Backend::Sqlite(s) => {
            sqlx::raw_sql(ledger_sqlite::REFUSE_WEBHOOK_LOG_ROWS_SQL)
                .execute(s.pool())
                .await
                .unwrap();
        }
    }
    let body = payment_succeeded_webhook(order, total);
    let r = app.deliver(&body, Sig::Valid, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"status": "ok"}));
    assert_eq!(
        app.order_event_types(order).await,
        ["OrderPlaced", "PaymentInitiated", "PaymentSucceeded"]
    );
    assert_eq!(app.counts().await.webhook_log, 0);
}

fn sha256_hex(body: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Anyone can send an unsigned body of up to 64 KiB: its row keeps the
/// headers, the body's SHA-256 and length, and at most its first 4 KiB (cut
/// on a char boundary), never the whole body. A signed delivery's row keeps
/// its whole body and no digest.
async fn an_unsigned_64_kib_body_keeps_4_kib_its_hash_and_length(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    // A JSON envelope padded to exactly the limit with three-byte
    // characters, so byte 4096 falls inside one.
    let head = format!(
        r#"{{"event_id":"{}","event_type":"payment_succeeded","pad":""#,
        new_event_id()
    );
    let mut text = head.clone();
    // Align the characters so byte 4096 is the second of one.
    while (4_096 - text.len()) % 3 != 1 {
        text.push('x');
    }
    while text.len() + 3 + 2 <= WEBHOOK_BODY_MAX {
        text.push('☕');
    }
    while text.len() + 2 < WEBHOOK_BODY_MAX {
        text.push('x');
    }
    text.push_str("\"}");
    assert_eq!(text.len(), WEBHOOK_BODY_MAX);
    assert!(!text.is_char_boundary(4_096), "the cut must land mid-char");
    let body = text.into_bytes();

    let row = refused(&app, &body, Sig::Missing, 401, "signature_invalid").await;
    assert!(!row.signature_valid);
    assert!(
        row.payload.len() <= 4_096,
        "{} bytes kept",
        row.payload.len()
    );
    assert!(row.payload.len() > 4_096 - 3, "as much as fits");
    assert!(
        body.starts_with(row.payload.as_bytes()),
        "a prefix of the body"
    );
    assert_eq!(row.payload_sha256, Some(sha256_hex(&body)));
    assert_eq!(row.payload_len, Some(WEBHOOK_BODY_MAX as i64));
    // The headers are kept.
    assert_eq!(row.user_agent.as_deref(), Some(HYPERSWITCH_UA));
    assert!(row.source_ip.is_some());

    // A signed delivery keeps its body whole, without a digest.
    let (order, total) = pending_order(&app).await;
    let signed = payment_succeeded_webhook(order, total);
    app.deliver_ok(&signed, "ok").await;
    let row = app.webhook_log(1).await.remove(0);
    assert_eq!(row.payload.as_bytes(), &signed[..]);
    assert_eq!((row.payload_sha256, row.payload_len), (None, None));
}
