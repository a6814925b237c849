//! Raw-HTTP helpers for the fake's own tests: reqwest on loopback, no client
//! crate in between.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use ledger_psp_fake::{FAKE_HYPERSWITCH_API_KEY, FAKE_STRIPE_SECRET_KEY, FakeHandle};
use serde_json::Value;

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

/// `POST {stripe}{path}` with a form body and an optional idempotency key.
pub async fn stripe_post(fake: &FakeHandle, path: &str, form: &str, key: Option<&str>) -> Answer {
    answer(stripe_post_raw(fake, path, form, key).await.unwrap()).await
}

pub async fn stripe_post_raw(
    fake: &FakeHandle,
    path: &str,
    form: &str,
    key: Option<&str>,
) -> reqwest::Result<reqwest::Response> {
    let mut request = http()
        .post(format!("{}{path}", fake.stripe_base_url()))
        .bearer_auth(FAKE_STRIPE_SECRET_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await
}

pub async fn stripe_get(fake: &FakeHandle, path_and_query: &str) -> Answer {
    let response = http()
        .get(format!("{}{path_and_query}", fake.stripe_base_url()))
        .bearer_auth(FAKE_STRIPE_SECRET_KEY)
        .send()
        .await
        .unwrap();
    answer(response).await
}

pub async fn hs_post(fake: &FakeHandle, path: &str, body: &Value) -> Answer {
    answer(hs_post_raw(fake, path, body).await.unwrap()).await
}

pub async fn hs_post_raw(
    fake: &FakeHandle,
    path: &str,
    body: &Value,
) -> reqwest::Result<reqwest::Response> {
    http()
        .post(format!("{}{path}", fake.hyperswitch_base_url()))
        .header("api-key", FAKE_HYPERSWITCH_API_KEY)
        .json(body)
        .send()
        .await
}

pub async fn hs_get(fake: &FakeHandle, path: &str) -> Answer {
    let response = http()
        .get(format!("{}{path}", fake.hyperswitch_base_url()))
        .header("api-key", FAKE_HYPERSWITCH_API_KEY)
        .send()
        .await
        .unwrap();
    answer(response).await
}

pub async fn control_post(fake: &FakeHandle, path: &str, body: Option<&Value>) -> Answer {
    let mut request = http().post(format!("{}/_fake{path}", fake.base_url()));
    if let Some(body) = body {
        request = request.json(body);
    }
    answer(request.send().await.unwrap()).await
}

pub fn transfer_form(group: &str, amount: i64) -> String {
    format!("amount={amount}&currency=usd&destination=acct_seller1&transfer_group={group}")
}
