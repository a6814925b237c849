//! The fake's webhooks (headers, signing, envelope shape, delivery modes)
//! and its in-process router and control surface.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Receiver, hs, usd};
use ledger_core::ids::{PaymentId, PspRefundId};
use ledger_core::psp::{PaymentStatus, RefundPspStatus};
use ledger_psp::{
    CreatePayment, CreateRefund, EventType, WebhookObject, parse_envelope, verify_hyperswitch,
};
use ledger_psp_fake::{DeliveryMode, FakeConfig, FakeHandle, FakePsp, ResourceBehaviour};
use tower::ServiceExt;

const KEY: &str = "payment_response_hash_key";

async fn fake_with_receiver(behaviour: ResourceBehaviour) -> (FakeHandle, Receiver) {
    let fake = FakePsp::start(FakeConfig {
        payment_behaviour: behaviour,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let receiver = Receiver::start().await;
    fake.set_webhook_target(
        format!("{}/webhooks/hyperswitch", receiver.url),
        Some(KEY.to_owned()),
    );
    (fake, receiver)
}

async fn create(fake: &FakeHandle, id: &str) -> PaymentId {
    let payment_id = PaymentId::new(id).unwrap();
    hs(fake)
        .create_payment(&CreatePayment {
            payment_id: payment_id.clone(),
            amount: usd(6540),
            customer_id: None,
            description: None,
            metadata: BTreeMap::new(),
        })
        .await
        .unwrap();
    payment_id
}

#[tokio::test]
async fn webhooks_carry_real_headers_a_valid_signature_and_the_psp_md_envelope() {
    let (fake, receiver) = fake_with_receiver(ResourceBehaviour::AutoSucceed).await;
    create(&fake, "pay_hook").await;
    let deliveries = fake.deliver_pending_webhooks().await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].status, Some(200));
    assert_eq!(deliveries[0].event_type, "payment_succeeded");

    let captured = &receiver.captured()[0];
    assert_eq!(captured.method, "POST");
    assert_eq!(captured.uri.path(), "/webhooks/hyperswitch");
    assert_eq!(captured.headers["content-type"], "application/json");
    assert_eq!(captured.headers["user-agent"], "Hyperswitch-Backend-Server");
    let signature = captured.headers["x-webhook-signature-512"]
        .to_str()
        .unwrap();
    assert_eq!(signature.len(), 128);
    assert_eq!(
        verify_hyperswitch(KEY.as_bytes(), &captured.body, Some(signature)),
        Ok(())
    );
    assert!(verify_hyperswitch(b"other", &captured.body, Some(signature)).is_err());

    let text = String::from_utf8(captured.body.clone()).unwrap();
    assert!(
        !text.contains(' ') && !text.contains('\n'),
        "compact JSON: {text}"
    );
    let order = [
        "\"merchant_id\"",
        "\"event_id\"",
        "\"event_type\"",
        "\"content\"",
        "\"timestamp\"",
    ];
    let positions: Vec<usize> = order.iter().map(|f| text.find(f).unwrap()).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "psp.md field order: {text}"
    );
    assert!(text.starts_with(r#"{"merchant_id":"merchant_fake","event_id":"evt_"#));

    let envelope = parse_envelope(&captured.body).unwrap();
    assert_eq!(envelope.event_id, deliveries[0].event_id);
    assert_eq!(envelope.event_id.len(), "evt_".len() + 32);
    assert_eq!(envelope.event_type, EventType::PaymentSucceeded);
    let WebhookObject::Payment(object) = envelope.object else {
        panic!("expected a payment object");
    };
    assert_eq!(object.payment_id.as_str(), "pay_hook");
    assert_eq!(object.status, PaymentStatus::Succeeded);
    assert_eq!(object.amount_received, Some(6540));
    assert!(object.updated.is_some());
}

#[tokio::test]
async fn held_resources_send_nothing_until_completed_and_event_ids_are_time_ordered() {
    let (fake, receiver) = fake_with_receiver(ResourceBehaviour::Hold).await;
    let id = create(&fake, "pay_hold").await;
    assert!(
        fake.deliver_pending_webhooks().await.is_empty(),
        "processing sends no webhook"
    );
    assert_eq!(
        fake.payment_status(id.as_str()).as_deref(),
        Some("processing")
    );

    fake.complete_payment(id.as_str(), PaymentStatus::Processing.as_str())
        .unwrap();
    fake.complete_payment(id.as_str(), PaymentStatus::Succeeded.as_str())
        .unwrap();
    let deliveries = fake.deliver_pending_webhooks().await;
    let types: Vec<&str> = deliveries.iter().map(|d| d.event_type.as_str()).collect();
    assert_eq!(types, ["payment_processing", "payment_succeeded"]);
    assert!(
        deliveries[0].event_id < deliveries[1].event_id,
        "time-ordered ids"
    );

    let bodies = receiver.captured();
    let updated = |i: usize| match parse_envelope(&bodies[i].body).unwrap().object {
        WebhookObject::Payment(p) => p.updated.unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    assert!(updated(0) < updated(1), "`updated` orders the changes");
}

#[tokio::test]
async fn duplicate_mode_delivers_identical_bytes_twice() {
    let (fake, receiver) = fake_with_receiver(ResourceBehaviour::AutoSucceed).await;
    fake.set_delivery_mode(DeliveryMode::Duplicate);
    create(&fake, "pay_twice").await;
    let deliveries = fake.deliver_pending_webhooks().await;
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0].event_id, deliveries[1].event_id);
    let captured = receiver.captured();
    assert_eq!(captured.len(), 2);
    assert_eq!(captured[0].body, captured[1].body);
    assert_eq!(
        captured[0].headers["x-webhook-signature-512"],
        captured[1].headers["x-webhook-signature-512"]
    );
    assert_eq!(
        fake.counters().webhooks_emitted,
        1,
        "one event, two deliveries"
    );
}

#[tokio::test]
async fn drop_mode_delivers_nothing() {
    let (fake, receiver) = fake_with_receiver(ResourceBehaviour::AutoSucceed).await;
    fake.set_delivery_mode(DeliveryMode::Drop);
    create(&fake, "pay_drop").await;
    assert!(fake.deliver_pending_webhooks().await.is_empty());
    assert!(receiver.captured().is_empty());
    let counters = fake.counters();
    assert_eq!(counters.webhooks_emitted, 1);
    assert_eq!(counters.webhooks_dropped, 1);
    assert_eq!(fake.emitted_webhooks().len(), 1, "still inspectable");
}

#[tokio::test]
async fn delay_mode_holds_until_released() {
    let (fake, receiver) = fake_with_receiver(ResourceBehaviour::AutoSucceed).await;
    fake.set_delivery_mode(DeliveryMode::Delay);
    create(&fake, "pay_late").await;
    assert!(fake.deliver_pending_webhooks().await.is_empty());
    assert!(receiver.captured().is_empty());
    assert_eq!(fake.release_held_webhooks(), 1);
    let deliveries = fake.deliver_pending_webhooks().await;
    assert_eq!(deliveries.len(), 1);
    assert!(deliveries[0].is_success());
    assert_eq!(receiver.captured().len(), 1);
}

#[tokio::test]
async fn reorder_mode_delivers_newest_first() {
    let (fake, receiver) = fake_with_receiver(ResourceBehaviour::Hold).await;
    let id = create(&fake, "pay_order").await;
    fake.set_delivery_mode(DeliveryMode::Reorder);
    fake.complete_payment(id.as_str(), PaymentStatus::Processing.as_str())
        .unwrap();
    fake.complete_payment(id.as_str(), PaymentStatus::RequiresCapture.as_str())
        .unwrap();
    fake.complete_payment(id.as_str(), PaymentStatus::Succeeded.as_str())
        .unwrap();
    let emitted: Vec<String> = fake
        .emitted_webhooks()
        .into_iter()
        .map(|w| w.event_id)
        .collect();

    let deliveries = fake.deliver_pending_webhooks().await;
    let delivered: Vec<String> = deliveries.into_iter().map(|d| d.event_id).collect();
    let mut reversed = emitted.clone();
    reversed.reverse();
    assert_eq!(delivered, reversed);
    let types: Vec<String> = receiver
        .captured()
        .iter()
        .map(|c| parse_envelope(&c.body).unwrap().event_type.to_string())
        .collect();
    assert_eq!(
        types,
        [
            "payment_succeeded",
            "payment_authorized",
            "payment_processing"
        ]
    );
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_the_same_bytes() {
    let (fake, receiver) = fake_with_receiver(ResourceBehaviour::AutoSucceed).await;
    receiver.respond(500, "{}");
    create(&fake, "pay_retry").await;
    let first = fake.deliver_pending_webhooks().await;
    assert_eq!(first[0].status, Some(500));
    assert!(!first[0].is_success());

    receiver.respond(200, "{}");
    assert_eq!(fake.retry_failed_webhooks(), 1);
    let second = fake.deliver_pending_webhooks().await;
    assert_eq!(second[0].status, Some(200));
    assert_eq!(second[0].event_id, first[0].event_id);
    let captured = receiver.captured();
    assert_eq!(captured[0].body, captured[1].body);
    assert_eq!(fake.retry_failed_webhooks(), 0, "nothing left to retry");
}

#[tokio::test]
async fn a_profile_without_a_key_sends_no_signature_header() {
    let (fake, receiver) = fake_with_receiver(ResourceBehaviour::AutoSucceed).await;
    fake.set_webhook_target(&receiver.url, None);
    create(&fake, "pay_unsigned").await;
    fake.deliver_pending_webhooks().await;
    let captured = &receiver.captured()[0];
    assert!(captured.headers.get("x-webhook-signature-512").is_none());
    assert_eq!(
        verify_hyperswitch(KEY.as_bytes(), &captured.body, None),
        Err(ledger_psp::SignatureError::Missing)
    );
}

#[tokio::test]
async fn refund_webhooks_only_for_terminal_statuses() {
    let (fake, receiver) = fake_with_receiver(ResourceBehaviour::AutoSucceed).await;
    fake.set_refund_behaviour(ResourceBehaviour::Hold);
    let payment_id = create(&fake, "pay_refund").await;
    fake.deliver_pending_webhooks().await;
    let refund_id = PspRefundId::new("ref_hook").unwrap();
    hs(&fake)
        .create_refund(&CreateRefund {
            refund_id: refund_id.clone(),
            payment_id,
            amount: usd(100),
            reason_code: ledger_core::refund::RefundReasonCode::RequestedByCustomer,
            reason: None,
        })
        .await
        .unwrap();
    assert_eq!(
        fake.complete_refund(refund_id.as_str(), RefundPspStatus::Review.as_str())
            .unwrap(),
        None
    );
    assert!(
        fake.deliver_pending_webhooks().await.is_empty(),
        "review is silent"
    );
    let event_id = fake
        .complete_refund(refund_id.as_str(), RefundPspStatus::Failed.as_str())
        .unwrap()
        .unwrap();
    let deliveries = fake.deliver_pending_webhooks().await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].event_id, event_id);
    let envelope = parse_envelope(&receiver.captured()[1].body).unwrap();
    assert_eq!(envelope.event_type, EventType::RefundFailed);
    let WebhookObject::Refund(refund) = envelope.object else {
        panic!("expected a refund object");
    };
    assert_eq!(refund.psp_status(), Ok(RefundPspStatus::Failed));
    assert!(refund.error_code.is_some());
}

#[tokio::test]
async fn counters_count_objects_and_requests_per_endpoint() {
    let (fake, _receiver) = fake_with_receiver(ResourceBehaviour::AutoSucceed).await;
    create(&fake, "pay_c1").await;
    create(&fake, "pay_c2").await;
    create(&fake, "pay_c1").await;
    let counters = fake.counters();
    assert_eq!(counters.payments_created, 2);
    assert_eq!(
        counters.requests_to(ledger_psp_fake::Endpoint::CreatePayment),
        3
    );
    assert_eq!(
        counters.requests_to(ledger_psp_fake::Endpoint::GetPayment),
        1
    );
    assert_eq!(counters.refunds_created, 0);
    assert_eq!(counters.transfers_created, 0);
}

#[tokio::test]
async fn the_router_works_in_process_with_psp_shaped_errors() {
    let psp = FakePsp::new(FakeConfig::default());
    let app = psp.router();
    let unauthorised = app
        .clone()
        .oneshot(
            Request::post("/hs/payments")
                .header("content-type", "application/json")
                .body(Body::from(r#"{"amount":1,"currency":"USD"}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), StatusCode::UNAUTHORIZED);
    let body = axum::body::to_bytes(unauthorised.into_body(), 1 << 16)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "IR_01");
    assert_eq!(json["error"]["type"], "invalid_request");

    let unknown_field = app
        .oneshot(
            Request::post("/hs/payments")
                .header("api-key", ledger_psp_fake::FAKE_HYPERSWITCH_API_KEY)
                .body(Body::from(
                    r#"{"amount":1,"currency":"USD","surprise":true}"#,
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        unknown_field.status(),
        StatusCode::BAD_REQUEST,
        "unknown fields are rejected"
    );
    assert_eq!(psp.counters().payments_created, 0);
}

#[tokio::test]
async fn the_http_control_surface_completes_and_delivers() {
    let (fake, receiver) = fake_with_receiver(ResourceBehaviour::Hold).await;
    create(&fake, "pay_ctl").await;
    let http = reqwest::Client::new();
    let base = fake.base_url();
    let response = http
        .post(format!("{base}/_fake/payments/pay_ctl/complete"))
        .json(&serde_json::json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let deliveries: serde_json::Value = http
        .post(format!("{base}/_fake/webhooks/deliver"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deliveries[0]["status"], 200);
    assert_eq!(receiver.captured().len(), 1);
    let counters: serde_json::Value = http
        .get(format!("{base}/_fake/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["payments_created"], 1);
    assert_eq!(counters["requests"]["create_payment"], 1);
    let missing = http
        .post(format!("{base}/_fake/payments/pay_missing/complete"))
        .json(&serde_json::json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
