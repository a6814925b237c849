//! Hyperswitch webhook envelope parsing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ledger_core::Currency;
use ledger_core::psp::{PaymentStatus, RefundPspStatus};
use ledger_psp::{
    ContentType, EnvelopeError, EventClass, EventType, WebhookObject, event_type_best_effort,
    parse_envelope,
};

/// The psp.md example, verbatim.
const PAYMENT_BODY: &str = r#"{"merchant_id":"merchant_1710609960","event_id":"evt_018e48d5ad6c73d5a289342e6132b224","event_type":"payment_succeeded","content":{"type":"payment_details","object":{"payment_id":"pay_6AMmb6rtlPDarBLlotAH","merchant_id":"merchant_1710609960","status":"succeeded","amount":6540,"net_amount":6540,"amount_received":6540,"connector":"stripe","created":"2024-03-16T19:55:45.335Z","currency":"USD","customer_id":"StripeCustomer","metadata":null,"error_code":null,"error_message":null,"updated":"2024-03-16T19:55:46.001Z"}},"timestamp":"2024-03-16T19:55:46.000Z"}"#;

fn refund_body(status: &str) -> String {
    format!(
        r#"{{"merchant_id":"m","event_id":"evt_2","event_type":"refund_succeeded","content":{{"type":"refund_details","object":{{"refund_id":"ref_1","payment_id":"pay_1","amount":600,"currency":"USD","status":"{status}","reason":"r","metadata":{{}},"error_message":null,"error_code":null,"created_at":"2024-03-16T19:55:45.335Z","updated_at":"2024-03-16T19:56:00.000Z","connector":"adyen","profile_id":"pro_1","connector_refund_id":"x"}}}},"timestamp":"2024-03-16T19:56:00.000Z","processor_merchant_id":null}}"#
    )
}

#[test]
fn the_psp_md_payment_example_parses_to_typed_fields() {
    let envelope = parse_envelope(PAYMENT_BODY.as_bytes()).unwrap();
    assert_eq!(envelope.event_id, "evt_018e48d5ad6c73d5a289342e6132b224");
    assert_eq!(envelope.event_type, EventType::PaymentSucceeded);
    assert_eq!(envelope.event_type.class(), EventClass::Payment);
    assert_eq!(envelope.content_type, ContentType::PaymentDetails);
    assert_eq!(envelope.merchant_id.as_deref(), Some("merchant_1710609960"));
    let WebhookObject::Payment(payment) = envelope.object else {
        panic!("expected a payment object");
    };
    assert_eq!(payment.payment_id.as_str(), "pay_6AMmb6rtlPDarBLlotAH");
    assert_eq!(payment.status, PaymentStatus::Succeeded);
    assert_eq!(payment.amount, 6540);
    assert_eq!(payment.amount_received, Some(6540));
    assert_eq!(payment.currency, Currency::parse("USD").unwrap());
    assert_eq!(payment.error_code, None);
    assert_eq!(
        payment.updated.unwrap().to_rfc3339(),
        "2024-03-16T19:55:46.001+00:00"
    );
}

#[test]
fn refund_objects_keep_their_status_text_and_parse_it_on_demand() {
    let envelope = parse_envelope(refund_body("succeeded").as_bytes()).unwrap();
    assert_eq!(envelope.processor_merchant_id, None);
    let WebhookObject::Refund(refund) = envelope.object else {
        panic!("expected a refund object");
    };
    assert_eq!(refund.refund_id.as_str(), "ref_1");
    assert_eq!(refund.payment_id.as_str(), "pay_1");
    assert_eq!(refund.amount, 600);
    assert_eq!(refund.psp_status(), Ok(RefundPspStatus::Succeeded));
    assert!(refund.updated_at.is_some());

    let odd = parse_envelope(refund_body("teleported").as_bytes()).unwrap();
    let WebhookObject::Refund(refund) = odd.object else {
        panic!("expected a refund object");
    };
    assert!(
        refund.psp_status().is_err(),
        "unknown refund status is not guessed"
    );
}

#[test]
fn unknown_event_types_and_fields_are_tolerated() {
    let body = r#"{"event_id":"evt_3","event_type":"payment_teleported","brand_new":1,"content":{"type":"hologram_details","object":{"x":1}},"timestamp":"2024-03-16T19:55:46"}"#;
    let envelope = parse_envelope(body.as_bytes()).unwrap();
    assert_eq!(
        envelope.event_type,
        EventType::Unknown("payment_teleported".into())
    );
    assert_eq!(envelope.event_type.class(), EventClass::Unknown);
    assert_eq!(
        envelope.content_type,
        ContentType::Unknown("hologram_details".into())
    );
    assert!(matches!(envelope.object, WebhookObject::Other(_)));
    assert_eq!(envelope.merchant_id, None);

    let payout = r#"{"event_id":"evt_4","event_type":"payout_success","content":{"type":"payout_details","object":{}}}"#;
    let envelope = parse_envelope(payout.as_bytes()).unwrap();
    assert_eq!(envelope.event_type.class(), EventClass::Payout);
    assert_eq!(envelope.event_type.as_str(), "payout_success");
}

#[test]
fn every_psp_md_event_type_is_classified() {
    let expected = [
        ("payment_succeeded", EventClass::Payment),
        ("payment_failed", EventClass::Payment),
        ("payment_processing", EventClass::Payment),
        ("payment_cancelled", EventClass::Payment),
        ("payment_cancelled_post_capture", EventClass::Payment),
        ("payment_authorized", EventClass::Payment),
        ("payment_partially_authorized", EventClass::Payment),
        ("payment_captured", EventClass::Payment),
        ("payment_expired", EventClass::Payment),
        ("action_required", EventClass::Payment),
        ("refund_processing", EventClass::Refund),
        ("refund_succeeded", EventClass::Refund),
        ("refund_failed", EventClass::Refund),
        ("dispute_opened", EventClass::Dispute),
        ("dispute_expired", EventClass::Dispute),
        ("dispute_accepted", EventClass::Dispute),
        ("dispute_cancelled", EventClass::Dispute),
        ("dispute_challenged", EventClass::Dispute),
        ("dispute_won", EventClass::Dispute),
        ("dispute_lost", EventClass::Dispute),
        ("mandate_active", EventClass::Mandate),
        ("mandate_revoked", EventClass::Mandate),
        ("payout_initiated", EventClass::Payout),
        ("subscription_created", EventClass::Subscription),
        ("", EventClass::Unknown),
    ];
    for (text, class) in expected {
        let parsed = EventType::parse(text);
        assert_eq!(parsed.class(), class, "{text}");
        assert_eq!(parsed.as_str(), text, "{text} round-trips");
    }
}

#[test]
fn invalid_envelopes_are_refused_with_a_reason() {
    assert!(matches!(
        parse_envelope(b"{not json"),
        Err(EnvelopeError::InvalidJson(_))
    ));
    assert!(matches!(
        parse_envelope(br#"{"event_type":"payment_succeeded"}"#),
        Err(EnvelopeError::InvalidJson(_))
    ));
    let empty_id = PAYMENT_BODY.replace("evt_018e48d5ad6c73d5a289342e6132b224", "");
    assert_eq!(
        parse_envelope(empty_id.as_bytes()),
        Err(EnvelopeError::InvalidEventId)
    );
    let bad_currency = PAYMENT_BODY.replace(r#""currency":"USD""#, r#""currency":"usd""#);
    assert!(matches!(
        parse_envelope(bad_currency.as_bytes()),
        Err(EnvelopeError::InvalidObject { .. })
    ));
    let bad_time = PAYMENT_BODY.replace("2024-03-16T19:55:46.001Z", "yesterday");
    assert!(matches!(
        parse_envelope(bad_time.as_bytes()),
        Err(EnvelopeError::InvalidObject { .. })
    ));
    let mismatch = PAYMENT_BODY.replace("payment_succeeded", "refund_succeeded");
    assert!(matches!(
        parse_envelope(mismatch.as_bytes()),
        Err(EnvelopeError::ContentMismatch { .. })
    ));
}

#[test]
fn event_type_best_effort_never_fails() {
    assert_eq!(
        event_type_best_effort(PAYMENT_BODY.as_bytes()).as_deref(),
        Some("payment_succeeded")
    );
    assert_eq!(
        event_type_best_effort(br#"{"event_type":"whatever","x":[1,2]}"#).as_deref(),
        Some("whatever")
    );
    assert_eq!(event_type_best_effort(b"{not json"), None);
    assert_eq!(event_type_best_effort(b""), None);
    assert_eq!(event_type_best_effort(br#"{"event_type":42}"#), None);
    assert_eq!(event_type_best_effort(br#"{"other":1}"#), None);
    assert_eq!(event_type_best_effort(br#"[1]"#), None);
}
