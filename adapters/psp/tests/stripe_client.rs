//! StripeClient against the PSP fake on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{Receiver, SHORT_TIMEOUT, stripe, usd};
use ledger_core::ids::{SellerAccount, StripeTransferId, TransferId};
use ledger_psp::stripe::transfer_idempotency_key;
use ledger_psp::{CreateTransfer, PayoutGateway, PspError, ReversalOutcome, Secret, StripeClient};
use ledger_psp_fake::{Endpoint, FAKE_STRIPE_SECRET_KEY, FakeConfig, FakePsp, Fault};
use uuid::Uuid;

fn transfer(n: u128, attempt: u32, minor: i64) -> CreateTransfer {
    CreateTransfer {
        transfer_id: TransferId(Uuid::from_u128(n)),
        attempt,
        amount: usd(minor),
        destination: SellerAccount::new("acct_seller1").unwrap(),
        transfer_group: Some("order-1".into()),
        metadata: BTreeMap::from([("order_id".to_owned(), "o-1".to_owned())]),
    }
}

fn reversal_key(n: u128) -> TransferId {
    TransferId(Uuid::from_u128(n))
}

#[tokio::test]
async fn create_and_get_transfer() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = stripe(&fake);
    let view = client.create_transfer(&transfer(1, 0, 875)).await.unwrap();
    assert!(view.id.as_str().starts_with("tr_"));
    assert_eq!(view.amount, usd(875));
    assert_eq!(view.amount_reversed, usd(0));
    assert!(!view.reversed);
    assert_eq!(view.destination.as_ref().unwrap().as_str(), "acct_seller1");
    assert_eq!(client.get_transfer(&view.id).await.unwrap(), view);

    let stored = fake.transfer(view.id.as_str()).unwrap();
    assert_eq!(stored.currency, "usd", "currency is sent lowercase");
    let counters = fake.counters();
    assert_eq!(counters.transfers_created, 1);
    assert_eq!(counters.stripe_posts_without_idempotency_key, 0);
}

#[tokio::test]
async fn requests_are_form_encoded_with_bearer_and_the_documented_key() {
    let stub = Receiver::start().await;
    stub.respond(
        200,
        r#"{"id":"tr_1","object":"transfer","amount":875,"amount_reversed":0,"currency":"usd","destination":"acct_seller1","reversed":false}"#,
    );
    let client =
        StripeClient::new(&stub.url, Secret::new("sk_test_x"), common::TEST_TIMEOUT).unwrap();
    let request = transfer(7, 3, 875);
    client.create_transfer(&request).await.unwrap();
    let captured = &stub.captured()[0];
    assert_eq!(captured.uri.path(), "/v1/transfers");
    assert_eq!(captured.headers["authorization"], "Bearer sk_test_x");
    assert_eq!(
        captured.headers["idempotency-key"],
        format!("transfer:{}:3", Uuid::from_u128(7)).as_str()
    );
    assert_eq!(
        captured.headers["idempotency-key"],
        transfer_idempotency_key(request.transfer_id, 3).as_str()
    );
    assert_eq!(
        captured.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        String::from_utf8(captured.body.clone()).unwrap(),
        "amount=875&currency=usd&destination=acct_seller1&transfer_group=order-1&metadata%5Border_id%5D=o-1"
    );

    stub.respond(
        200,
        r#"{"id":"trr_1","object":"transfer_reversal","amount":100,"currency":"usd","transfer":"tr_1"}"#,
    );
    let id = StripeTransferId::new("tr_1").unwrap();
    client
        .create_reversal(&id, &rev(reversal_key(9), 2, Some(usd(100))))
        .await
        .unwrap();
    let captured = &stub.captured()[1];
    assert_eq!(captured.uri.path(), "/v1/transfers/tr_1/reversals");
    assert_eq!(
        captured.headers["idempotency-key"],
        format!("reversal:{}:2", Uuid::from_u128(9)).as_str()
    );
    assert_eq!(
        String::from_utf8(captured.body.clone()).unwrap(),
        "amount=100"
    );
}

#[tokio::test]
async fn the_same_key_replays_the_first_transfer() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = stripe(&fake);
    let first = client.create_transfer(&transfer(2, 0, 500)).await.unwrap();
    let again = client.create_transfer(&transfer(2, 0, 500)).await.unwrap();
    assert_eq!(again, first);
    let counters = fake.counters();
    assert_eq!(counters.transfers_created, 1, "exactly one transfer");
    assert_eq!(counters.requests_to(Endpoint::CreateTransfer), 2);
}

#[tokio::test]
async fn the_same_key_with_other_parameters_is_an_idempotency_error() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = stripe(&fake);
    client.create_transfer(&transfer(3, 0, 500)).await.unwrap();
    let error = client
        .create_transfer(&transfer(3, 0, 501))
        .await
        .unwrap_err();
    let PspError::Api {
        status, error_type, ..
    } = &error
    else {
        panic!("expected an API error, got {error}");
    };
    assert_eq!(*status, 400);
    assert_eq!(error_type.as_deref(), Some("idempotency_error"));
    assert!(!error.is_transient());
    assert_eq!(fake.counters().transfers_created, 1);
}

#[tokio::test]
async fn a_stored_definitive_error_replays_until_the_caller_moves_the_attempt() {
    let fake = FakePsp::start(FakeConfig {
        stripe_balance_minor: Some(100),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let client = stripe(&fake);
    let error = client
        .create_transfer(&transfer(4, 0, 500))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("balance_insufficient"));
    assert!(
        !error.is_transient(),
        "definitive: the caller may move to attempt 1"
    );

    fake.set_stripe_balance(Some(10_000));
    let replayed = client
        .create_transfer(&transfer(4, 0, 500))
        .await
        .unwrap_err();
    // Stripe stores the first response, errors included, and marks the
    // replay: a stored 4xx is still a definitive refusal of that key.
    let (
        ledger_psp::PspError::Api {
            status: first_status,
            code: first_code,
            signals: first_signals,
            ..
        },
        ledger_psp::PspError::Api {
            status,
            code,
            signals,
            ..
        },
    ) = (&error, &replayed)
    else {
        panic!("both answers are API errors: {error:?} / {replayed:?}");
    };
    assert_eq!((status, code), (first_status, first_code));
    assert!(!first_signals.replayed);
    assert!(signals.replayed, "Idempotent-Replayed: true");
    assert_eq!(
        replayed.create_outcome(),
        ledger_psp::CreateOutcome::Refused
    );

    let view = client.create_transfer(&transfer(4, 1, 500)).await.unwrap();
    assert_eq!(view.amount, usd(500));
    assert_eq!(fake.counters().transfers_created, 1);
}

#[tokio::test]
async fn server_errors_rate_limits_and_timeouts_are_transient_and_the_key_is_reused() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = StripeClient::new(
        fake.stripe_base_url(),
        Secret::new(FAKE_STRIPE_SECRET_KEY),
        SHORT_TIMEOUT,
    )
    .unwrap();
    let request = transfer(5, 0, 300);
    for fault in [
        Fault::Status(500),
        Fault::Status(503),
        Fault::RateLimited,
        Fault::Status(409),
        Fault::Hang,
    ] {
        fake.inject_fault(Endpoint::CreateTransfer, fault.clone(), 1);
        let error = client.create_transfer(&request).await.unwrap_err();
        assert!(error.is_transient(), "{fault:?} → {error}");
    }
    assert_eq!(fake.counters().transfers_created, 0);

    fake.inject_fault(Endpoint::CreateTransfer, Fault::HangAfterCommit, 1);
    let error = client.create_transfer(&request).await.unwrap_err();
    assert!(matches!(error, PspError::Timeout { .. }), "{error}");
    assert_eq!(
        fake.counters().transfers_created,
        1,
        "it happened despite the timeout"
    );

    let view = client.create_transfer(&request).await.unwrap();
    assert_eq!(
        fake.counters().transfers_created,
        1,
        "same key: no second transfer"
    );
    assert_eq!(fake.transfer(view.id.as_str()).unwrap().amount_minor, 300);
}

#[tokio::test]
async fn missing_transfer_is_not_found_and_bad_key_is_unauthorized() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let missing = StripeTransferId::new("tr_missing").unwrap();
    let error = stripe(&fake).get_transfer(&missing).await.unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert_eq!(error.code(), Some("resource_missing"));

    let error = stripe(&fake)
        .reverse_transfer(&missing, &rev(reversal_key(1), 0, None))
        .await
        .unwrap_err();
    assert!(error.is_not_found());

    let key = "sk_live_SUPERSECRET_99";
    let client = StripeClient::new(
        fake.stripe_base_url(),
        Secret::new(key),
        common::TEST_TIMEOUT,
    )
    .unwrap();
    let error = client
        .create_transfer(&transfer(6, 0, 1))
        .await
        .unwrap_err();
    assert!(matches!(error, PspError::Unauthorized { .. }), "{error}");
    assert!(!error.is_transient());
    for text in [
        format!("{error}"),
        format!("{error:?}"),
        format!("{client:?}"),
    ] {
        assert!(!text.contains(key), "key leaked into {text}");
    }
}

#[tokio::test]
async fn reverse_transfer_reverses_partially_then_the_rest() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = stripe(&fake);
    let created = client
        .create_transfer(&transfer(10, 0, 1000))
        .await
        .unwrap();

    let outcome = client
        .reverse_transfer(&created.id, &rev(reversal_key(10), 0, Some(usd(400))))
        .await
        .unwrap();
    let ReversalOutcome::Reversed(first) = outcome else {
        panic!("expected a reversal, got {outcome:?}");
    };
    assert!(first.id.as_str().starts_with("trr_"));
    assert_eq!(first.amount, usd(400));
    assert_eq!(first.transfer, created.id);

    let outcome = client
        .reverse_transfer(&created.id, &rev(reversal_key(11), 0, None))
        .await
        .unwrap();
    let ReversalOutcome::Reversed(rest) = outcome else {
        panic!("expected a reversal, got {outcome:?}");
    };
    assert_eq!(rest.amount, usd(600), "no amount reverses what remains");

    let view = client.get_transfer(&created.id).await.unwrap();
    assert!(view.reversed);
    assert_eq!(view.amount_reversed, usd(1000));
    assert_eq!(fake.counters().reversals_created, 2);
}

#[tokio::test]
async fn already_reversed_is_detected_by_get_without_posting() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = stripe(&fake);
    let created = client.create_transfer(&transfer(20, 0, 700)).await.unwrap();
    client
        .reverse_transfer(&created.id, &rev(reversal_key(20), 0, None))
        .await
        .unwrap();
    let posts_before = fake.counters().requests_to(Endpoint::CreateReversal);

    let outcome = client
        .reverse_transfer(&created.id, &rev(reversal_key(21), 0, None))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ReversalOutcome::AlreadyReversed {
            amount_reversed: usd(700)
        }
    );
    let counters = fake.counters();
    assert_eq!(
        counters.requests_to(Endpoint::CreateReversal),
        posts_before,
        "no POST"
    );
    assert_eq!(counters.reversals_created, 1);
}

#[tokio::test]
async fn already_reversed_falls_back_to_the_message_when_the_get_was_stale() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let client = stripe(&fake);
    let created = client.create_transfer(&transfer(30, 0, 900)).await.unwrap();
    client
        .reverse_transfer(&created.id, &rev(reversal_key(30), 0, None))
        .await
        .unwrap();

    // The GET races a reversal and still shows the transfer untouched.
    let stale = format!(
        r#"{{"id":"{}","object":"transfer","amount":900,"amount_reversed":0,"currency":"usd","destination":"acct_seller1","reversed":false}}"#,
        created.id
    );
    fake.inject_fault(
        Endpoint::GetTransfer,
        Fault::Canned {
            status: 200,
            body: stale,
        },
        1,
    );

    let direct = client
        .create_reversal(&created.id, &rev(reversal_key(31), 0, None))
        .await
        .unwrap_err();
    assert!(direct.is_already_fully_reversed(), "{direct}");
    assert!(!direct.is_transient());

    let outcome = client
        .reverse_transfer(&created.id, &rev(reversal_key(32), 0, None))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ReversalOutcome::AlreadyReversed {
            amount_reversed: usd(900)
        }
    );
    assert_eq!(fake.counters().reversals_created, 1);
}

#[tokio::test]
async fn the_payout_gateway_trait_drives_the_real_client() {
    let fake = FakePsp::start(FakeConfig::default()).await.unwrap();
    let gateway: Box<dyn PayoutGateway> = Box::new(stripe(&fake));
    let created = gateway.create_transfer(&transfer(40, 0, 50)).await.unwrap();
    let outcome = gateway
        .reverse_transfer(&created.id, &rev(reversal_key(40), 0, None))
        .await
        .unwrap();
    assert!(matches!(outcome, ReversalOutcome::Reversed(_)));
    assert!(gateway.get_transfer(&created.id).await.unwrap().reversed);
}

fn rev(
    key: TransferId,
    attempt: u32,
    amount: Option<ledger_core::Amount>,
) -> ledger_psp::CreateReversal {
    ledger_psp::CreateReversal {
        reversal_key_id: key,
        attempt,
        amount,
        metadata: Default::default(),
    }
}
