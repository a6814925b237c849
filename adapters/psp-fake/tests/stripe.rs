//! The fake Stripe over real HTTP: documented idempotency (stored 500s,
//! replay headers, 409, 429, pruning on the fake clock), after-effect
//! faults, list endpoints and the nullable destination.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{control_post, stripe_get, stripe_post, stripe_post_raw, transfer_form};
use ledger_psp_fake::{Endpoint, FakeConfig, FakeHandle, FakePsp, Fault, ManualClock};
use serde_json::json;

async fn start() -> (FakeHandle, ManualClock) {
    let clock = ManualClock::starting_now();
    let fake = FakePsp::start(FakeConfig {
        clock: Arc::new(clock.clone()),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    (fake, clock)
}

#[tokio::test]
async fn a_stored_500_is_replayed_with_the_replay_header_and_no_retry_verdict() {
    let (fake, _) = start().await;
    fake.inject_fault(Endpoint::CreateTransfer, Fault::SucceedThenStatus(500), 1);
    let form = transfer_form("order-1", 500);
    let first = stripe_post(&fake, "/v1/transfers", &form, Some("k1")).await;
    assert_eq!(first.status, 500);
    assert_eq!(first.body["error"]["type"], "api_error");
    assert_eq!(first.header("Stripe-Should-Retry"), Some("false"));
    assert_eq!(first.header("Idempotent-Replayed"), None);
    // The transfer happened although the answer was a 500.
    assert_eq!(fake.transfers().len(), 1);

    let retry = stripe_post(&fake, "/v1/transfers", &form, Some("k1")).await;
    assert_eq!(retry.status, 500);
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(retry.header("Stripe-Should-Retry"), Some("false"));
    assert_eq!(fake.counters().transfers_created, 1);
}

#[tokio::test]
async fn a_2xx_is_replayed_and_other_parameters_are_an_idempotency_error_not_stored() {
    let (fake, _) = start().await;
    let first = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 100), Some("k")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("Idempotent-Replayed"), None);
    let replay = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 100), Some("k")).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.body["id"], first.body["id"]);
    assert_eq!(replay.header("Idempotent-Replayed"), Some("true"));
    let other = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 101), Some("k")).await;
    assert_eq!(other.status, 400);
    assert_eq!(other.body["error"]["type"], "idempotency_error");
    // The mismatch was not stored: the original still replays.
    let again = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 100), Some("k")).await;
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(fake.counters().transfers_created, 1);
}

#[tokio::test]
async fn a_front_status_fault_is_not_stored_and_has_no_provider_verdict() {
    let (fake, _) = start().await;
    fake.inject_fault(Endpoint::CreateTransfer, Fault::Status(503), 1);
    let form = transfer_form("g", 100);
    let failed = stripe_post(&fake, "/v1/transfers", &form, Some("k")).await;
    assert_eq!(failed.status, 503);
    assert_eq!(failed.header("Stripe-Should-Retry"), None);
    assert!(fake.transfers().is_empty());
    let retry = stripe_post(&fake, "/v1/transfers", &form, Some("k")).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.header("Idempotent-Replayed"), None);
}

#[tokio::test]
async fn a_429_carries_retry_after_and_should_retry_true() {
    let (fake, _) = start().await;
    fake.inject_fault(Endpoint::CreateTransfer, Fault::RateLimited, 1);
    let limited = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 1), Some("k")).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("Retry-After"), Some("1"));
    assert_eq!(limited.header("Stripe-Should-Retry"), Some("true"));
    assert_eq!(limited.body["error"]["code"], "rate_limit");
}

#[tokio::test]
async fn a_key_still_in_flight_is_a_409_that_may_be_retried() {
    let (fake, _) = start().await;
    fake.hold_idempotency_key("busy");
    let busy = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 1), Some("busy")).await;
    assert_eq!(busy.status, 409);
    assert_eq!(busy.body["error"]["type"], "idempotency_error");
    assert_eq!(busy.body["error"]["code"], "idempotency_key_in_use");
    assert_eq!(busy.header("Stripe-Should-Retry"), Some("true"));
    assert!(fake.transfers().is_empty());
    fake.finish_idempotency_key("busy");
    let done = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 1), Some("busy")).await;
    assert_eq!(done.status, 200);
    assert_eq!(done.header("Idempotent-Replayed"), None);
}

#[tokio::test]
async fn pruning_an_old_key_lets_the_same_key_create_a_second_transfer() {
    let (fake, clock) = start().await;
    let form = transfer_form("order-9", 700);
    let first = stripe_post(&fake, "/v1/transfers", &form, Some("transfer:9:0")).await;
    clock.advance(Duration::from_secs(23 * 3600));
    assert_eq!(
        fake.prune_idempotency_keys_older_than(Duration::from_secs(24 * 3600)),
        0
    );
    let replay = stripe_post(&fake, "/v1/transfers", &form, Some("transfer:9:0")).await;
    assert_eq!(replay.body["id"], first.body["id"]);

    clock.advance(Duration::from_secs(3600));
    let pruned = control_post(
        &fake,
        "/stripe/idempotency/prune",
        Some(&json!({"older_than_secs": 24 * 3600})),
    )
    .await;
    assert_eq!(pruned.status, 200);
    assert_eq!(pruned.body, json!({"pruned": 1}));
    let second = stripe_post(&fake, "/v1/transfers", &form, Some("transfer:9:0")).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("Idempotent-Replayed"), None);
    assert_ne!(second.body["id"], first.body["id"]);
    let group = stripe_get(&fake, "/v1/transfers?transfer_group=order-9").await;
    assert_eq!(group.body["data"].as_array().unwrap().len(), 2);

    // Without a body every key goes.
    let all = control_post(&fake, "/stripe/idempotency/prune", None).await;
    assert_eq!(all.body, json!({"pruned": 1}));
    assert_eq!(fake.prune_idempotency_keys(), 0);
}

#[tokio::test]
async fn succeed_then_drop_is_a_transport_error_and_the_transfer_exists() {
    let (fake, _) = start().await;
    fake.inject_fault(Endpoint::CreateTransfer, Fault::SucceedThenDrop, 1);
    let form = transfer_form("g", 250);
    let started = std::time::Instant::now();
    let error = stripe_post_raw(&fake, "/v1/transfers", &form, Some("drop"))
        .await
        .expect_err("no HTTP response at all");
    assert!(!error.is_timeout(), "{error:?}");
    assert!(error.status().is_none(), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let transfers = fake.transfers();
    assert_eq!(transfers.len(), 1);
    // The 2xx was stored: the retry replays it.
    let retry = stripe_post(&fake, "/v1/transfers", &form, Some("drop")).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(retry.body["id"], transfers[0].id.as_str());
}

#[tokio::test]
async fn succeed_then_status_on_a_reversal_reverses_and_stores_the_error() {
    let (fake, _) = start().await;
    let transfer = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 900), Some("t")).await;
    let id = transfer.body["id"].as_str().unwrap().to_owned();
    fake.inject_fault(Endpoint::CreateReversal, Fault::SucceedThenStatus(502), 1);
    let path = format!("/v1/transfers/{id}/reversals");
    let form = "amount=300&metadata[refund_id]=r-1";
    let first = stripe_post(&fake, &path, form, Some("rev")).await;
    assert_eq!(first.status, 502);
    assert_eq!(fake.transfer(&id).unwrap().amount_reversed_minor, 300);
    let retry = stripe_post(&fake, &path, form, Some("rev")).await;
    assert_eq!(retry.status, 502);
    assert_eq!(retry.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(fake.transfer(&id).unwrap().amount_reversed_minor, 300);
}

#[tokio::test]
async fn transfers_list_by_group_and_created_window_newest_first_with_pagination() {
    let (fake, clock) = start().await;
    let today = clock.now_unix();
    clock.rewind(Duration::from_secs(86_400));
    let yesterday_id = stripe_post(&fake, "/v1/transfers", &transfer_form("o-1", 1), Some("y"))
        .await
        .body["id"]
        .clone();
    clock.advance(Duration::from_secs(86_400));
    let mut today_ids = Vec::new();
    for n in 0..5 {
        let t = stripe_post(
            &fake,
            "/v1/transfers",
            &format!("{}&metadata[order_id]=o-1", transfer_form("o-1", 10 + n)),
            Some(&format!("t{n}")),
        )
        .await;
        today_ids.push(t.body["id"].clone());
    }
    stripe_post(
        &fake,
        "/v1/transfers",
        &transfer_form("o-2", 5),
        Some("other"),
    )
    .await;

    let all = stripe_get(&fake, "/v1/transfers?transfer_group=o-1").await;
    assert_eq!(all.status, 200);
    assert_eq!(all.body["object"], "list");
    assert_eq!(all.body["url"], "/v1/transfers");
    assert_eq!(all.body["has_more"], false);
    let ids: Vec<_> = all.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    let mut expected: Vec<_> = today_ids.iter().rev().cloned().collect();
    expected.push(yesterday_id.clone());
    assert_eq!(ids, expected, "newest first");

    let window = stripe_get(
        &fake,
        &format!(
            "/v1/transfers?transfer_group=o-1&created[gte]={}",
            today - 3600
        ),
    )
    .await;
    assert_eq!(window.body["data"].as_array().unwrap().len(), 5);
    let old = stripe_get(
        &fake,
        &format!(
            "/v1/transfers?transfer_group=o-1&created[lt]={}",
            today - 3600
        ),
    )
    .await;
    assert_eq!(old.body["data"][0]["id"], yesterday_id);
    assert_eq!(old.body["data"].as_array().unwrap().len(), 1);

    let page1 = stripe_get(&fake, "/v1/transfers?transfer_group=o-1&limit=2").await;
    assert_eq!(page1.body["has_more"], true);
    assert_eq!(page1.body["data"][1]["id"], expected[1]);
    let after = page1.body["data"][1]["id"].as_str().unwrap();
    let page2 = stripe_get(
        &fake,
        &format!("/v1/transfers?transfer_group=o-1&limit=2&starting_after={after}"),
    )
    .await;
    assert_eq!(page2.body["data"][0]["id"], expected[2]);
    assert_eq!(page2.body["data"][1]["id"], expected[3]);
    assert_eq!(page2.body["has_more"], true);
    let before = page2.body["data"][0]["id"].as_str().unwrap();
    let back = stripe_get(
        &fake,
        &format!("/v1/transfers?transfer_group=o-1&limit=1&ending_before={before}"),
    )
    .await;
    assert_eq!(back.body["data"][0]["id"], expected[1]);
    assert_eq!(back.body["has_more"], true);

    assert_eq!(fake.transfers_with_metadata("order_id", "o-1").len(), 5);
    assert_eq!(fake.transfers().len(), 7);
    assert_eq!(fake.counters().requests_to(Endpoint::ListTransfers), 6);
}

#[tokio::test]
async fn list_parameters_are_checked_as_stripe_does() {
    let (fake, _) = start().await;
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("colour=red", "colour"),
        ("created[gte]=soon", "created[gte]"),
    ] {
        let refused = stripe_get(&fake, &format!("/v1/transfers?{query}")).await;
        assert_eq!(refused.status, 400, "{query}");
        assert_eq!(refused.body["error"]["type"], "invalid_request_error");
        assert_eq!(refused.body["error"]["param"], param, "{query}");
    }
    let both = stripe_get(&fake, "/v1/transfers?starting_after=a&ending_before=b").await;
    assert_eq!(both.status, 400);
    let missing = stripe_get(&fake, "/v1/transfers?starting_after=tr_nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["code"], "resource_missing");
    let empty = stripe_get(&fake, "/v1/transfers").await;
    assert_eq!(empty.body["data"], json!([]));
}

#[tokio::test]
async fn reversals_list_newest_first_with_their_metadata() {
    let (fake, _) = start().await;
    let transfer = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 900), Some("t")).await;
    let id = transfer.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/transfers/{id}/reversals");
    for n in 0..3 {
        let r = stripe_post(
            &fake,
            &path,
            &format!("amount=100&metadata[refund_id]=r-{n}"),
            Some(&format!("rev{n}")),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let list = stripe_get(&fake, &format!("{path}?limit=2")).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["url"], path);
    assert_eq!(list.body["has_more"], true);
    assert_eq!(list.body["data"][0]["metadata"]["refund_id"], "r-2");
    assert_eq!(list.body["data"][1]["metadata"]["refund_id"], "r-1");
    let after = list.body["data"][1]["id"].as_str().unwrap();
    let rest = stripe_get(&fake, &format!("{path}?starting_after={after}")).await;
    assert_eq!(rest.body["data"][0]["metadata"]["refund_id"], "r-0");
    assert_eq!(rest.body["has_more"], false);
    let snapshots = fake.reversals_of(&id);
    assert_eq!(snapshots.len(), 3);
    assert_eq!(snapshots[0].metadata["refund_id"], "r-0");
    let unknown = stripe_get(&fake, "/v1/transfers/tr_none/reversals").await;
    assert_eq!(unknown.status, 404);
    let bad = stripe_get(&fake, &format!("{path}?transfer_group=x")).await;
    assert_eq!(bad.status, 400);
    assert_eq!(fake.counters().requests_to(Endpoint::ListReversals), 4);
}

#[tokio::test]
async fn a_transfer_can_answer_a_null_destination() {
    let (fake, _) = start().await;
    let t = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 5), Some("t")).await;
    let id = t.body["id"].as_str().unwrap().to_owned();
    fake.set_transfer_destination_null(&id).unwrap();
    let got = stripe_get(&fake, &format!("/v1/transfers/{id}")).await;
    assert_eq!(got.status, 200);
    assert!(got.body["destination"].is_null());
    assert_eq!(fake.transfer(&id).unwrap().destination, None);
    let unknown = control_post(&fake, "/stripe/transfers/tr_x/destination_null", None).await;
    assert_eq!(unknown.status, 404);
    let t2 = stripe_post(&fake, "/v1/transfers", &transfer_form("g", 6), Some("t2")).await;
    let id2 = t2.body["id"].as_str().unwrap();
    let ok = control_post(
        &fake,
        &format!("/stripe/transfers/{id2}/destination_null"),
        None,
    )
    .await;
    assert_eq!(ok.status, 200);
    let got2 = stripe_get(&fake, &format!("/v1/transfers/{id2}")).await;
    assert!(got2.body["destination"].is_null());
}
