//! Shared test helpers: a capturing HTTP receiver on port 0 and client
//! constructors pointed at the fake.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use ledger_core::{Amount, Currency};
use ledger_psp::{HyperswitchClient, Secret, StripeClient};
use ledger_psp_fake::{FAKE_HYPERSWITCH_API_KEY, FAKE_STRIPE_SECRET_KEY, FakeHandle};

/// Generous for loopback; tests that need a timeout build their own client.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Short enough to keep hang tests fast, long enough for a loaded CI box to
/// answer a healthy loopback call.
pub const SHORT_TIMEOUT: Duration = Duration::from_millis(400);

pub fn usd(minor: i64) -> Amount {
    Amount::new(minor, Currency::parse("USD").unwrap())
}

pub fn hs(fake: &FakeHandle) -> HyperswitchClient {
    HyperswitchClient::new(
        fake.hyperswitch_base_url(),
        Secret::new(FAKE_HYPERSWITCH_API_KEY),
        TEST_TIMEOUT,
    )
    .unwrap()
}

pub fn stripe(fake: &FakeHandle) -> StripeClient {
    StripeClient::new(
        fake.stripe_base_url(),
        Secret::new(FAKE_STRIPE_SECRET_KEY),
        TEST_TIMEOUT,
    )
    .unwrap()
}

/// One captured request.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

#[derive(Clone)]
struct ReceiverState {
    captured: Arc<Mutex<Vec<Captured>>>,
    status: Arc<AtomicU16>,
    body: Arc<Mutex<String>>,
}

/// A tiny axum server on 127.0.0.1:0 that records every request and answers
/// a configurable status and JSON body.
pub struct Receiver {
    pub url: String,
    state: ReceiverState,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = ReceiverState {
            captured: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            body: Arc::new(Mutex::new("{}".to_owned())),
        };
        let app = Router::new().fallback(capture).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, state }
    }

    pub fn respond(&self, status: u16, body: &str) {
        self.state.status.store(status, Ordering::SeqCst);
        *self.state.body.lock().unwrap() = body.to_owned();
    }

    pub fn captured(&self) -> Vec<Captured> {
        self.state.captured.lock().unwrap().clone()
    }
}

async fn capture(
    State(state): State<ReceiverState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    state.captured.lock().unwrap().push(Captured {
        method,
        uri,
        headers,
        body: body.to_vec(),
    });
    let status = StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap();
    let body = state.body.lock().unwrap().clone();
    (status, [("content-type", "application/json")], body)
}
