//! HyperswitchClient against the PSP fake on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{Receiver, SHORT_TIMEOUT, hs, usd};
use ledger_core::ids::{PaymentId, PspRefundId};
use ledger_core::psp::{PaymentStatus, RefundPspStatus};
use ledger_psp::{
    CreatePayment, CreateRefund, HyperswitchClient, PspError, PspStatusReader, Secret,
};
use ledger_psp_fake::{Endpoint, FakeConfig, FakePsp, Fault, ResourceBehaviour};

fn payment(id: &str, minor: i64) -> CreatePayment {
    CreatePayment {
        payment_id: PaymentId::new(id).unwrap(),
        amount: usd(minor),
        customer_id: Some("buyer-1".into()),
        description: Some("order".into()),
        metadata: BTreeMap::from([("order_id".to_owned(), "o-1".to_owned())]),
    }
}

fn refund(id: &str, payment_id: &str, minor: i64) -> CreateRefund {
    CreateRefund {
        refund_id: PspRefundId::new(id).unwrap(),
        payment_id: PaymentId::new(payment_id).unwrap(),
        amount: usd(minor),
        reason_code: ledger_core::refund::RefundReasonCode::RequestedByCustomer,
        reason: Some("customer request".into()),
    }
}

#[tokio::test]
async fn create_payment_returns_status_amounts_and_client_secret() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let view = hs(&fake)
        .create_payment(&payment("pay_happy", 6540))
        .await
        .unwrap();
    assert_eq!(view.payment_id.as_str(), "pay_happy");
    assert_eq!(view.status, PaymentStatus::Succeeded);
    assert_eq!(view.amount, usd(6540));
    assert_eq!(view.amount_received, Some(usd(6540)));
    assert!(view.client_secret.unwrap().starts_with("pay_happy_secret_"));
    assert_eq!(view.error_code, None);
    assert!(!view.already_existed);
    assert_eq!(fake.counters().payments_created, 1);
}

#[tokio::test]
async fn duplicate_payment_id_he_01_gets_the_existing_payment() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = hs(&fake);
    let first = client
        .create_payment(&payment("pay_dup", 100))
        .await
        .unwrap();
    let second = client
        .create_payment(&payment("pay_dup", 100))
        .await
        .unwrap();
    assert!(second.already_existed);
    assert_eq!(second.client_secret, first.client_secret);
    assert_eq!(second.status, first.status);
    let counters = fake.counters();
    assert_eq!(counters.payments_created, 1, "exactly one payment");
    assert_eq!(counters.requests_to(Endpoint::CreatePayment), 2);
    assert_eq!(counters.requests_to(Endpoint::GetPayment), 1);
}

#[tokio::test]
async fn duplicate_payment_id_with_another_amount_is_refused() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = hs(&fake);
    client
        .create_payment(&payment("pay_amt", 100))
        .await
        .unwrap();
    let error = client
        .create_payment(&payment("pay_amt", 999))
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        PspError::ExistsWithDifferentParameters {
            field: "amount",
            ..
        }
    ));
    assert!(!error.is_transient());
}

#[tokio::test]
async fn http_200_with_error_code_is_surfaced_not_success() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = hs(&fake);
    let fault = Fault::ProcessingWithError {
        code: "CE_04".into(),
        message: "connector timeout".into(),
    };
    fake.inject_fault(Endpoint::CreatePayment, fault.clone(), 1);
    let created = client
        .create_payment(&payment("pay_err", 100))
        .await
        .unwrap();
    assert_eq!(created.status, PaymentStatus::Processing);
    assert_eq!(created.error_code.as_deref(), Some("CE_04"));
    assert_eq!(created.error_message.as_deref(), Some("connector timeout"));
    assert!(
        fake.emitted_webhooks().is_empty(),
        "no webhook for a stuck payment"
    );

    // A GET can report the same thing for a payment that is fine at rest.
    client
        .create_payment(&payment("pay_ok", 100))
        .await
        .unwrap();
    fake.inject_fault(Endpoint::GetPayment, fault, 1);
    let id = PaymentId::new("pay_ok").unwrap();
    let polled = client.get_payment(&id).await.unwrap();
    assert_eq!(polled.status, PaymentStatus::Processing);
    assert_eq!(polled.error_code.as_deref(), Some("CE_04"));
    assert_eq!(
        client.get_payment(&id).await.unwrap().status,
        PaymentStatus::Succeeded
    );
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_transient_and_retrying_creates_once() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = hs(&fake);
    let request = payment("pay_flaky", 100);
    for fault in [Fault::Status(500), Fault::Status(503), Fault::RateLimited] {
        fake.inject_fault(Endpoint::CreatePayment, fault.clone(), 1);
        let error = client.create_payment(&request).await.unwrap_err();
        assert!(error.is_transient(), "{fault:?} → {error}");
    }
    let view = client.create_payment(&request).await.unwrap();
    assert!(!view.already_existed, "faults happened in front of the API");
    assert_eq!(fake.counters().payments_created, 1);
}

#[tokio::test]
async fn he_00_is_transient_even_on_a_4xx() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let body = r#"{"error":{"type":"api","message":"Resource is busy","code":"HE_00"}}"#;
    fake.inject_fault(
        Endpoint::CreatePayment,
        Fault::Canned {
            status: 400,
            body: body.into(),
        },
        1,
    );
    let error = hs(&fake)
        .create_payment(&payment("pay_busy", 1))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("HE_00"));
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_timeout_is_transient_and_the_retry_finds_the_payment_it_made() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let impatient = HyperswitchClient::new(
        fake.hyperswitch_base_url(),
        Secret::new(ledger_psp_fake::FAKE_HYPERSWITCH_API_KEY),
        SHORT_TIMEOUT,
    )
    .unwrap();
    let request = payment("pay_slow", 100);

    fake.inject_fault(Endpoint::CreatePayment, Fault::Hang, 1);
    let error = impatient.create_payment(&request).await.unwrap_err();
    assert!(matches!(error, PspError::Timeout { .. }), "{error}");
    assert!(error.is_transient());
    assert_eq!(fake.counters().payments_created, 0);

    fake.inject_fault(Endpoint::CreatePayment, Fault::HangAfterCommit, 1);
    let error = impatient.create_payment(&request).await.unwrap_err();
    assert!(error.is_transient());
    assert_eq!(
        fake.counters().payments_created,
        1,
        "it happened despite the timeout"
    );

    let view = impatient.create_payment(&request).await.unwrap();
    assert!(view.already_existed);
    assert_eq!(fake.counters().payments_created, 1, "still exactly one");
}

#[tokio::test]
async fn unknown_payment_is_not_found_and_a_bare_404_is_not() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let id = PaymentId::new("pay_nope").unwrap();
    let error = hs(&fake).get_payment(&id).await.unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert!(!error.is_transient());

    // A wrong base URL answers 404 without Hyperswitch's error body: that
    // must not be read as "the payment does not exist".
    let misconfigured = HyperswitchClient::new(
        format!("{}/wrong-prefix", fake.base_url()),
        Secret::new(ledger_psp_fake::FAKE_HYPERSWITCH_API_KEY),
        common::TEST_TIMEOUT,
    )
    .unwrap();
    let error = misconfigured.get_payment(&id).await.unwrap_err();
    assert!(!error.is_not_found(), "{error}");
    assert_eq!(error.http_status(), Some(404));
}

#[tokio::test]
async fn a_bad_api_key_is_unauthorized_and_never_printed() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let key = "hs_wrong_SUPERSECRET_1234";
    let client = HyperswitchClient::new(
        fake.hyperswitch_base_url(),
        Secret::new(key),
        common::TEST_TIMEOUT,
    )
    .unwrap();
    let error = client
        .create_payment(&payment("pay_auth", 1))
        .await
        .unwrap_err();
    assert!(matches!(error, PspError::Unauthorized { .. }), "{error}");
    assert_eq!(error.code(), Some("IR_01"));
    assert!(!error.is_transient());
    for text in [
        format!("{error}"),
        format!("{error:?}"),
        format!("{client:?}"),
    ] {
        assert!(!text.contains(key), "key leaked into {text}");
    }
    assert_eq!(fake.counters().payments_created, 0);
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = HyperswitchClient::new(
        format!("http://{addr}"),
        Secret::new("k"),
        common::TEST_TIMEOUT,
    )
    .unwrap();
    let error = client
        .get_payment(&PaymentId::new("pay_x").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, PspError::Connect { .. }), "{error}");
    assert!(error.is_transient());
}

#[tokio::test]
async fn requests_carry_the_api_key_and_force_sync_and_only_documented_fields() {
    let stub = Receiver::start().await;
    stub.respond(
        200,
        r#"{"payment_id":"pay_1","status":"requires_payment_method","amount":5,"amount_received":null,"currency":"EUR","client_secret":null,"error_code":null,"error_message":null,"some_new_field":true}"#,
    );
    let client =
        HyperswitchClient::new(&stub.url, Secret::new("hs_k"), common::TEST_TIMEOUT).unwrap();
    let view = client
        .get_payment(&PaymentId::new("pay_1").unwrap())
        .await
        .unwrap();
    assert_eq!(view.status, PaymentStatus::RequiresPaymentMethod);
    assert_eq!(view.amount_received, None);
    assert_eq!(view.amount.currency.as_str(), "EUR");
    client.create_payment(&payment("pay_1", 5)).await.unwrap();

    let captured = stub.captured();
    assert_eq!(
        captured[0].uri.to_string(),
        "/payments/pay_1?force_sync=true"
    );
    assert_eq!(captured[0].headers["api-key"], "hs_k");
    assert_eq!(captured[1].uri.path(), "/payments");
    assert_eq!(captured[1].headers["api-key"], "hs_k");
    let body: serde_json::Value = serde_json::from_slice(&captured[1].body).unwrap();
    let mut fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "amount",
            "capture_method",
            "confirm",
            "currency",
            "customer_id",
            "description",
            "metadata",
            "payment_id"
        ]
    );
    assert_eq!(body["currency"], "USD");
    assert_eq!(body["amount"], 5);
}

#[tokio::test]
async fn limits_are_checked_before_sending() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = hs(&fake);
    let long_id = payment(&"p".repeat(31), 1);
    assert!(matches!(
        client.create_payment(&long_id).await,
        Err(PspError::InvalidRequest { .. })
    ));
    let mut many_keys = payment("pay_meta", 1);
    many_keys.metadata = (0..51).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    assert!(matches!(
        client.create_payment(&many_keys).await,
        Err(PspError::InvalidRequest { .. })
    ));
    assert!(matches!(
        client.create_payment(&payment("pay_zero", 0)).await,
        Err(PspError::InvalidRequest { .. })
    ));
    assert_eq!(fake.counters().requests_to(Endpoint::CreatePayment), 0);
}

#[tokio::test]
async fn refunds_succeed_dedupe_and_report_hyperswitch_errors() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = hs(&fake);
    client
        .create_payment(&payment("pay_r", 1000))
        .await
        .unwrap();

    let created = client
        .create_refund(&refund("ref_1", "pay_r", 600))
        .await
        .unwrap();
    assert_eq!(created.status, RefundPspStatus::Succeeded);
    assert_eq!(created.amount, usd(600));
    assert!(!created.already_existed);

    let again = client
        .create_refund(&refund("ref_1", "pay_r", 600))
        .await
        .unwrap();
    assert!(again.already_existed, "HE_01 → GET");
    assert_eq!(fake.counters().refunds_created, 1);

    let mismatch = client
        .create_refund(&refund("ref_1", "pay_r", 500))
        .await
        .unwrap_err();
    assert!(matches!(
        mismatch,
        PspError::ExistsWithDifferentParameters {
            field: "amount",
            ..
        }
    ));

    let over = client
        .create_refund(&refund("ref_2", "pay_r", 401))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Some("IR_13"));
    assert!(!over.is_transient());

    let missing = client
        .create_refund(&refund("ref_3", "pay_missing", 1))
        .await
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing}");

    let error = client
        .get_refund(&PspRefundId::new("ref_nope").unwrap())
        .await
        .unwrap_err();
    assert!(error.is_not_found());
    assert_eq!(error.code(), Some("HE_02"));
}

#[tokio::test]
async fn refund_before_the_payment_succeeded_is_he_03() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    fake.set_payment_behaviour(ResourceBehaviour::Hold);
    let client = hs(&fake);
    let view = client
        .create_payment(&payment("pay_held", 100))
        .await
        .unwrap();
    assert_eq!(view.status, PaymentStatus::Processing);
    let error = client
        .create_refund(&refund("ref_early", "pay_held", 100))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("HE_03"));
    assert!(!error.is_transient());
    assert_eq!(fake.counters().refunds_created, 0);
}

#[tokio::test]
async fn pending_refunds_are_found_by_polling_through_the_reader_trait() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    fake.set_refund_behaviour(ResourceBehaviour::Hold);
    let client = hs(&fake);
    client.create_payment(&payment("pay_p", 100)).await.unwrap();
    let created = client
        .create_refund(&refund("ref_p", "pay_p", 100))
        .await
        .unwrap();
    assert_eq!(created.status, RefundPspStatus::Pending);

    let reader: &dyn PspStatusReader = &client;
    let id = PspRefundId::new("ref_p").unwrap();
    assert_eq!(
        reader.get_refund_status(&id).await.unwrap().status,
        RefundPspStatus::Pending
    );
    fake.complete_refund(id.as_str(), RefundPspStatus::Succeeded.as_str())
        .unwrap();
    assert_eq!(
        reader.get_refund_status(&id).await.unwrap().status,
        RefundPspStatus::Succeeded
    );
    let payment = reader
        .get_payment_status(&PaymentId::new("pay_p").unwrap())
        .await
        .unwrap();
    assert_eq!(payment.status, PaymentStatus::Succeeded);
}
