//! The fake Hyperswitch over real HTTP: request rules (profile_id,
//! customer_id, refund_type, reason), after-effect faults and statuses no
//! document lists yet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{control_post, hs_get, hs_post, hs_post_raw};
use ledger_psp_fake::{Endpoint, FakeConfig, FakeHandle, FakePsp, Fault};
use serde_json::{Value, json};

async fn start() -> FakeHandle {
    FakePsp::start(FakeConfig::default()).await.unwrap()
}

fn payment(id: &str) -> Value {
    json!({"amount": 6540, "currency": "USD", "payment_id": id, "confirm": false})
}

#[tokio::test]
async fn a_required_profile_id_must_be_sent_and_must_match() {
    let fake = start().await;
    fake.require_profile_id(Some("pro_main"));
    let missing = hs_post(&fake, "/payments", &payment("pay_1")).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.body["error"]["code"], "IR_04");
    assert_eq!(missing.body["error"]["type"], "invalid_request");
    assert!(fake.payment("pay_1").is_none());

    let mut wrong = payment("pay_1");
    wrong["profile_id"] = json!("pro_other");
    let wrong = hs_post(&fake, "/payments", &wrong).await;
    assert_eq!(wrong.status, 404);
    assert_eq!(wrong.body["error"]["code"], "HE_02");

    let mut right = payment("pay_1");
    right["profile_id"] = json!("pro_main");
    let created = hs_post(&fake, "/payments", &right).await;
    assert_eq!(created.status, 200);
    assert_eq!(created.body["profile_id"], "pro_main");
    let got = hs_get(&fake, "/payments/pay_1").await;
    assert_eq!(got.body["profile_id"], "pro_main");

    fake.require_profile_id(None);
    let any = hs_post(&fake, "/payments", &payment("pay_2")).await;
    assert_eq!(any.status, 200);
}

#[tokio::test]
async fn customer_id_is_at_most_64_characters_of_the_documented_alphabet() {
    let fake = start().await;
    for (n, bad) in [
        "c".repeat(65),
        "has space".to_owned(),
        "é".to_owned(),
        String::new(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = payment(&format!("pay_bad{n}"));
        body["customer_id"] = json!(bad);
        let refused = hs_post(&fake, "/payments", &body).await;
        assert_eq!(refused.status, 400, "{bad:?}");
        assert_eq!(refused.body["error"]["code"], "IR_06", "{bad:?}");
    }
    let mut body = payment("pay_ok");
    body["customer_id"] = json!(format!("{}-_9", "c".repeat(60)));
    let ok = hs_post(&fake, "/payments", &body).await;
    assert_eq!(ok.status, 200);
    assert_eq!(fake.counters().payments_created, 1);
}

async fn paid(fake: &FakeHandle, id: &str) {
    assert_eq!(hs_post(fake, "/payments", &payment(id)).await.status, 200);
}

#[tokio::test]
async fn refund_type_must_be_instant_or_scheduled_and_is_stored() {
    let fake = start().await;
    paid(&fake, "pay_r").await;
    let bad = hs_post(
        &fake,
        "/refunds",
        &json!({"payment_id": "pay_r", "refund_id": "ref_1", "amount": 10, "refund_type": "later"}),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"]["code"], "IR_06");
    assert!(fake.refund("ref_1").is_none());
    for (id, kind) in [("ref_i", "instant"), ("ref_s", "scheduled")] {
        let ok = hs_post(
            &fake,
            "/refunds",
            &json!({"payment_id": "pay_r", "refund_id": id, "amount": 10, "refund_type": kind,
                    "metadata": {"order": "o-1"}}),
        )
        .await;
        assert_eq!(ok.status, 200, "{kind}");
        let snapshot = fake.refund(id).unwrap();
        assert_eq!(snapshot.refund_type.as_deref(), Some(kind));
        assert_eq!(snapshot.metadata, Some(json!({"order": "o-1"})));
        let got = hs_get(&fake, &format!("/refunds/{id}")).await;
        assert_eq!(got.body["metadata"], json!({"order": "o-1"}));
        assert_eq!(got.body["profile_id"], "pro_fake");
    }
}

#[tokio::test]
async fn reason_is_free_text_but_the_stripe_connector_takes_only_its_three() {
    let fake = start().await;
    paid(&fake, "pay_x").await;
    let free = hs_post(
        &fake,
        "/refunds",
        &json!({"payment_id": "pay_x", "refund_id": "ref_free", "amount": 1,
                "reason": "Customer returned product"}),
    )
    .await;
    assert_eq!(free.status, 200);
    assert_eq!(free.body["reason"], "Customer returned product");
    let long = hs_post(
        &fake,
        "/refunds",
        &json!({"payment_id": "pay_x", "refund_id": "ref_long", "amount": 1,
                "reason": "r".repeat(256)}),
    )
    .await;
    assert_eq!(long.status, 400);
    assert_eq!(long.body["error"]["code"], "IR_06");

    fake.set_connector("stripe");
    let refused = hs_post(
        &fake,
        "/refunds",
        &json!({"payment_id": "pay_x", "refund_id": "ref_no", "amount": 1,
                "reason": "Customer returned product"}),
    )
    .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.body["error"]["code"], "IR_07");
    for (n, reason) in ["duplicate", "fraudulent", "requested_by_customer"]
        .into_iter()
        .enumerate()
    {
        let ok = hs_post(
            &fake,
            "/refunds",
            &json!({"payment_id": "pay_x", "refund_id": format!("ref_ok{n}"), "amount": 1,
                    "reason": reason, "refund_type": "instant"}),
        )
        .await;
        assert_eq!(ok.status, 200, "{reason}");
        assert_eq!(ok.body["reason"], reason);
        assert_eq!(ok.body["connector"], "stripe");
    }
}

#[tokio::test]
async fn an_unknown_status_is_returned_by_get_as_set() {
    let fake = start().await;
    paid(&fake, "pay_m").await;
    let refund = json!({"payment_id": "pay_m", "refund_id": "ref_m", "amount": 1});
    assert_eq!(hs_post(&fake, "/refunds", &refund).await.status, 200);
    fake.set_payment_status("pay_m", "partially_captured_and_processing")
        .unwrap();
    let got = hs_get(&fake, "/payments/pay_m").await;
    assert_eq!(got.body["status"], "partially_captured_and_processing");
    let set = control_post(
        &fake,
        "/payments/pay_m/status",
        Some(&json!({"status": "mystery"})),
    )
    .await;
    assert_eq!(set.status, 200);
    assert_eq!(
        hs_get(&fake, "/payments/pay_m").await.body["status"],
        "mystery"
    );

    let set = control_post(
        &fake,
        "/refunds/ref_m/status",
        Some(&json!({"status": "mystery"})),
    )
    .await;
    assert_eq!(set.status, 200);
    assert_eq!(
        hs_get(&fake, "/refunds/ref_m").await.body["status"],
        "mystery"
    );
    assert_eq!(fake.refund_status("ref_m").as_deref(), Some("mystery"));
    // No webhook for an arbitrary status; a documented completion still
    // refuses anything else.
    assert_eq!(fake.counters().webhooks_emitted, 2);
    assert!(fake.complete_refund("ref_m", "mystery").is_err());
    let refused = control_post(
        &fake,
        "/refunds/ref_m/complete",
        Some(&json!({"status": "mystery"})),
    )
    .await;
    assert_eq!(refused.status, 400);
    let unknown = control_post(
        &fake,
        "/payments/pay_none/status",
        Some(&json!({"status": "x"})),
    )
    .await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn succeed_then_status_creates_and_a_re_create_is_the_duplicate_error() {
    let fake = start().await;
    fake.inject_fault(Endpoint::CreatePayment, Fault::SucceedThenStatus(500), 1);
    let first = hs_post(&fake, "/payments", &payment("pay_s")).await;
    assert_eq!(first.status, 500);
    assert_eq!(first.body["error"]["code"], "HE_00");
    assert_eq!(fake.payment_status("pay_s").as_deref(), Some("succeeded"));
    assert_eq!(
        fake.counters().webhooks_emitted,
        1,
        "the webhook went as usual"
    );
    let again = hs_post(&fake, "/payments", &payment("pay_s")).await;
    assert_eq!(again.status, 400);
    assert_eq!(again.body["error"]["code"], "HE_01");

    fake.inject_fault(Endpoint::CreateRefund, Fault::SucceedThenStatus(502), 1);
    let refund = json!({"payment_id": "pay_s", "refund_id": "ref_s", "amount": 5});
    assert_eq!(hs_post(&fake, "/refunds", &refund).await.status, 502);
    assert_eq!(fake.refund_status("ref_s").as_deref(), Some("succeeded"));
    assert_eq!(
        hs_post(&fake, "/refunds", &refund).await.body["error"]["code"],
        "HE_01"
    );
}

#[tokio::test]
async fn succeed_then_drop_is_a_transport_error_and_the_refund_exists() {
    let fake = start().await;
    paid(&fake, "pay_d").await;
    fake.inject_fault(Endpoint::CreateRefund, Fault::SucceedThenDrop, 1);
    let error = hs_post_raw(
        &fake,
        "/refunds",
        &json!({"payment_id": "pay_d", "refund_id": "ref_d", "amount": 5}),
    )
    .await
    .expect_err("no HTTP response");
    assert!(!error.is_timeout(), "{error:?}");
    assert_eq!(fake.refund_status("ref_d").as_deref(), Some("succeeded"));
    fake.inject_fault(Endpoint::CreatePayment, Fault::SucceedThenDrop, 1);
    assert!(
        hs_post_raw(&fake, "/payments", &payment("pay_d2"))
            .await
            .is_err()
    );
    assert!(fake.payment("pay_d2").is_some());
}
