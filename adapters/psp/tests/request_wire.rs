//! What the clients put on the wire for the providers' request rules
//! (Hyperswitch `profile_id`, `customer_id`, refund `reason` /
//! `refund_type` / `metadata`; Stripe's `Stripe-Version`), checked against a
//! loopback listener defined here that records every request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use ledger_core::ids::{PaymentId, PspRefundId, SellerAccount, StripeTransferId, TransferId};
use ledger_core::refund::RefundReasonCode;
use ledger_core::{Amount, Currency};
use ledger_psp::stripe::{DEFAULT_API_VERSION, STRIPE_VERSION_HEADER};
use ledger_psp::{
    CreatePayment, CreateRefund, CreateTransfer, HyperswitchClient, PspError, Secret, StripeClient,
};
use serde_json::{Value, json};
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: &'static str,
}

/// Answers every request with 200 and `answer`, and records it.
struct Listener {
    url: String,
    shared: Shared,
}

impl Listener {
    async fn start(answer: &'static str) -> Listener {
        let shared = Shared {
            seen: Arc::default(),
            answer,
        };
        let app = Router::new().fallback(record).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Listener { url, shared }
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }
}

async fn record(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], &'static str) {
    shared.seen.lock().unwrap().push(Seen {
        path: uri.path().to_owned(),
        headers,
        body: body.to_vec(),
    });
    ([("content-type", "application/json")], shared.answer)
}

fn usd(minor: i64) -> Amount {
    Amount::new(minor, Currency::parse("USD").unwrap())
}

const PAYMENT: &str = r#"{"payment_id":"pay_1","status":"requires_payment_method","amount":6540,"amount_received":null,"currency":"USD","client_secret":"pay_1_secret_x","error_code":null,"error_message":null}"#;
const REFUND: &str = r#"{"refund_id":"ref_1","payment_id":"pay_1","amount":600,"currency":"USD","status":"pending","error_code":null,"error_message":null}"#;
const TRANSFER: &str = r#"{"id":"tr_1","object":"transfer","amount":875,"amount_reversed":0,"currency":"usd","destination":"acct_seller1","reversed":false}"#;
const REVERSAL: &str = r#"{"id":"trr_1","object":"transfer_reversal","amount":875,"currency":"usd","transfer":"tr_1"}"#;

fn payment(customer_id: &str) -> CreatePayment {
    CreatePayment {
        payment_id: PaymentId::new("pay_1").unwrap(),
        amount: usd(6540),
        customer_id: Some(customer_id.to_owned()),
        description: Some("order o-1".into()),
        metadata: BTreeMap::from([("order_id".to_owned(), "o-1".to_owned())]),
    }
}

fn hyperswitch(listener: &Listener) -> HyperswitchClient {
    HyperswitchClient::new(&listener.url, Secret::new("hs_k"), TIMEOUT).unwrap()
}

#[tokio::test]
async fn payment_create_carries_the_profile_id_and_the_customer_id() {
    let listener = Listener::start(PAYMENT).await;
    let client = hyperswitch(&listener)
        .with_profile_id("pro_2Xyz_biz-1")
        .unwrap();
    client.create_payment(&payment("buyer-1")).await.unwrap();
    let seen = listener.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/payments");
    assert_eq!(
        seen[0].json(),
        json!({
            "amount": 6540,
            "currency": "USD",
            "payment_id": "pay_1",
            "confirm": false,
            "capture_method": "automatic",
            "customer_id": "buyer-1",
            "description": "order o-1",
            "metadata": {"order_id": "o-1"},
            "profile_id": "pro_2Xyz_biz-1"
        })
    );
}

#[tokio::test]
async fn without_a_profile_id_none_is_sent() {
    let listener = Listener::start(PAYMENT).await;
    hyperswitch(&listener)
        .create_payment(&payment("buyer-1"))
        .await
        .unwrap();
    let body = listener.seen()[0].json();
    assert!(body.get("profile_id").is_none(), "{body}");
}

#[tokio::test]
async fn a_customer_id_hyperswitch_would_refuse_is_never_sent() {
    let listener = Listener::start(PAYMENT).await;
    let client = hyperswitch(&listener);
    for bad in ["jane@example.com", &"c".repeat(65)] {
        let error = client.create_payment(&payment(bad)).await.unwrap_err();
        assert!(matches!(error, PspError::InvalidRequest { .. }), "{error}");
        assert!(!error.is_transient());
    }
    assert!(listener.seen().is_empty());
}

#[tokio::test]
async fn refund_create_is_instant_with_the_psp_reason_and_the_text_in_metadata() {
    let listener = Listener::start(REFUND).await;
    let request = CreateRefund {
        refund_id: PspRefundId::new("ref_1").unwrap(),
        payment_id: PaymentId::new("pay_1").unwrap(),
        amount: usd(600),
        reason_code: RefundReasonCode::Duplicate,
        reason: Some("charged twice".into()),
    };
    hyperswitch(&listener)
        .create_refund(&request)
        .await
        .unwrap();
    let seen = listener.seen();
    assert_eq!(seen[0].path, "/refunds");
    assert_eq!(
        seen[0].json(),
        json!({
            "payment_id": "pay_1",
            "refund_id": "ref_1",
            "amount": 600,
            "reason": "duplicate",
            "refund_type": "instant",
            "metadata": {"reason_text": "charged twice"}
        })
    );
}

fn transfer() -> CreateTransfer {
    CreateTransfer {
        transfer_id: TransferId(Uuid::from_u128(7)),
        attempt: 0,
        amount: usd(875),
        destination: SellerAccount::new("acct_seller1").unwrap(),
        transfer_group: None,
        metadata: BTreeMap::new(),
    }
}

fn stripe(listener: &Listener) -> StripeClient {
    StripeClient::new(&listener.url, Secret::new("sk_test_x"), TIMEOUT).unwrap()
}

#[tokio::test]
async fn every_stripe_request_pins_the_default_api_version() {
    let listener = Listener::start(TRANSFER).await;
    let client = stripe(&listener);
    client.create_transfer(&transfer()).await.unwrap();
    client
        .get_transfer(&StripeTransferId::new("tr_1").unwrap())
        .await
        .unwrap();
    let seen = listener.seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(
            request.headers[STRIPE_VERSION_HEADER], DEFAULT_API_VERSION,
            "{}",
            request.path
        );
    }
}

#[tokio::test]
async fn a_configured_api_version_is_sent_on_reversals_too() {
    let listener = Listener::start(REVERSAL).await;
    let client = stripe(&listener).with_api_version("2024-06-20");
    client
        .create_reversal(
            &StripeTransferId::new("tr_1").unwrap(),
            &ledger_psp::CreateReversal {
                reversal_key_id: TransferId(Uuid::from_u128(9)),
                attempt: 0,
                amount: None,
                metadata: Default::default(),
            },
        )
        .await
        .unwrap();
    let seen = listener.seen();
    assert_eq!(seen[0].path, "/v1/transfers/tr_1/reversals");
    assert_eq!(seen[0].headers["stripe-version"], "2024-06-20");
}

#[tokio::test]
async fn an_unsendable_api_version_fails_before_sending() {
    let listener = Listener::start(TRANSFER).await;
    let client = stripe(&listener).with_api_version("2024-06-20 beta");
    let error = client.create_transfer(&transfer()).await.unwrap_err();
    assert!(matches!(error, PspError::InvalidRequest { .. }), "{error}");
    let error = client
        .get_transfer(&StripeTransferId::new("tr_1").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, PspError::InvalidRequest { .. }), "{error}");
    assert!(listener.seen().is_empty());
}
