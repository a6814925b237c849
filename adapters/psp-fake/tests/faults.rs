//! Faults queued over the fake's HTTP control surface (`/_fake/faults`), as
//! an operator of the dev server would: each kind acts like the in-process
//! `inject_fault`, bad bodies are a 400 with a JSON error and queue nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Answer, control_post, http, stripe_get, stripe_post, transfer_form};
use ledger_psp_fake::{Endpoint, FAULT_TIMES_MAX, FakeConfig, FakeHandle, FakePsp};
use serde_json::{Value, json};

async fn start() -> FakeHandle {
    FakePsp::start(FakeConfig::default()).await.unwrap()
}

async fn faults(fake: &FakeHandle, body: &Value) -> Answer {
    control_post(fake, "/faults", Some(body)).await
}

async fn clear(fake: &FakeHandle) -> u16 {
    http()
        .delete(format!("{}/_fake/faults", fake.base_url()))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn succeed_then_status_makes_the_transfer_and_answers_that_status_once() {
    let fake = start().await;
    let r = faults(
        &fake,
        &json!({"endpoint": "create_transfer", "fault": "succeed_then_status", "status": 500, "times": 1}),
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let lost = stripe_post(
        &fake,
        "/v1/transfers",
        &transfer_form("g1", 700),
        Some("k1"),
    )
    .await;
    assert_eq!(lost.status, 500, "{:?}", lost.body);
    assert_eq!(lost.body["error"]["type"], "api_error");
    // The work was done although the answer was an error.
    assert_eq!(fake.transfers().len(), 1);
    assert_eq!(fake.transfers()[0].amount_minor, 700);
    // `times: 1`: the next create is answered normally.
    let next = stripe_post(
        &fake,
        "/v1/transfers",
        &transfer_form("g2", 800),
        Some("k2"),
    )
    .await;
    assert_eq!(next.status, 200, "{:?}", next.body);
    assert_eq!(fake.counters().transfers_created, 2);
}

#[tokio::test]
async fn a_front_status_does_nothing_and_times_defaults_to_one_or_counts() {
    let fake = start().await;
    let r = faults(
        &fake,
        &json!({"endpoint": "create_transfer", "fault": "status", "status": 503}),
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let failed = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 100), Some("k")).await;
    assert_eq!(failed.status, 503);
    assert!(fake.transfers().is_empty());
    let ok = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 100), Some("k")).await;
    assert_eq!(ok.status, 200);

    let r = faults(
        &fake,
        &json!({"endpoint": "list_transfers", "fault": "rate_limited", "times": 2}),
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    for _ in 0..2 {
        let limited = stripe_get(&fake, "/v1/transfers").await;
        assert_eq!(limited.status, 429);
        assert!(limited.header("Retry-After").is_some());
    }
    assert_eq!(stripe_get(&fake, "/v1/transfers").await.status, 200);
}

#[tokio::test]
async fn every_endpoint_is_named_in_snake_case_and_delete_clears_them_all() {
    let fake = start().await;
    for endpoint in Endpoint::ALL {
        let name = serde_json::to_value(endpoint).unwrap();
        let r = faults(
            &fake,
            &json!({"endpoint": name, "fault": "status", "status": 500, "times": 3}),
        )
        .await;
        assert_eq!(r.status, 204, "{name}: {:?}", r.body);
    }
    assert_eq!(
        stripe_get(&fake, "/v1/transfers").await.status,
        500,
        "the list fault is queued"
    );
    assert_eq!(clear(&fake).await, 204);
    assert_eq!(stripe_get(&fake, "/v1/transfers").await.status, 200);
    let made = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 100), Some("k")).await;
    assert_eq!(made.status, 200, "{:?}", made.body);
    // Clearing nothing is fine too.
    assert_eq!(clear(&fake).await, 204);
}

#[tokio::test]
async fn bad_bodies_are_a_400_with_a_json_error_and_queue_nothing() {
    let fake = start().await;
    let bad = [
        json!({"endpoint": "create_transfers", "fault": "status", "status": 500}),
        json!({"endpoint": "create_transfer", "fault": "explode"}),
        json!({"endpoint": "create_transfer", "fault": "status"}),
        json!({"endpoint": "create_transfer", "fault": "succeed_then_status"}),
        json!({"endpoint": "create_transfer", "fault": "status", "status": 200}),
        json!({"endpoint": "create_transfer", "fault": "status", "status": 70000}),
        json!({"endpoint": "create_transfer", "fault": "hang", "status": 500}),
        json!({"endpoint": "create_transfer", "fault": "rate_limited", "times": 0}),
        json!({"endpoint": "create_transfer", "fault": "rate_limited", "times": FAULT_TIMES_MAX + 1}),
        json!({"endpoint": "create_transfer", "fault": "rate_limited", "times": -1}),
        json!({"endpoint": "create_transfer", "fault": "rate_limited", "extra": true}),
        json!({"fault": "rate_limited"}),
        json!(["create_transfer"]),
    ];
    for body in &bad {
        let r = faults(&fake, body).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert!(
            r.body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}: {:?}",
            r.body
        );
    }
    let garbage = http()
        .post(format!("{}/_fake/faults", fake.base_url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status().as_u16(), 400);
    let body: Value = garbage.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");

    let made = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 100), Some("k")).await;
    assert_eq!(made.status, 200, "nothing was queued: {:?}", made.body);
}
