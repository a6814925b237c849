//! Bad input gives typed errors, never panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ledger_core::codec::{self, CodecError};
use ledger_core::events::{AnyEvent, decode_any};
use ledger_core::ids::StreamId;
use ledger_core::money::{Amount, MoneyError};
use ledger_core::order::OrderEvent;
use ledger_core::refund::RefundEvent;
use ledger_core::transfer::TransferEvent;

fn stream(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

#[test]
fn unknown_event_type_is_a_typed_error() {
    assert_eq!(
        codec::decode::<OrderEvent>("NoSuchEvent", 1, "{}"),
        Err(CodecError::UnknownEventType("NoSuchEvent".into()))
    );
    for s in ["order-1", "refund-1", "transfer-1"] {
        assert_eq!(
            decode_any(&stream(s), "NoSuchEvent", 1, "{}"),
            Err(CodecError::UnknownEventType("NoSuchEvent".into()))
        );
    }
    // An event type of another stream kind is unknown on this one.
    assert_eq!(
        decode_any(&stream("order-1"), "TransferScheduled", 1, "{}"),
        Err(CodecError::UnknownEventType("TransferScheduled".into()))
    );
}

#[test]
fn unknown_stream_kind_is_a_typed_error() {
    for s in ["widget-1", "orders-1", "order", "ORDER-1"] {
        assert_eq!(
            decode_any(&stream(s), "OrderPlaced", 1, "{}"),
            Err(CodecError::UnknownStreamKind(s.into()))
        );
    }
}

#[test]
fn unsupported_schema_version_is_a_typed_error() {
    assert!(matches!(
        decode_any(
            &stream("order-1"),
            "OrderCancelled",
            2,
            r#"{"reason":"x","at":"2026-01-01T00:00:00Z"}"#
        ),
        Err(CodecError::UnsupportedSchemaVersion {
            found: 2,
            supported: 1,
            ..
        })
    ));
}

#[test]
fn malformed_payloads_are_typed_errors() {
    let at = "\"2026-01-01T00:00:00Z\"";
    let cases = [
        ("order-1", "OrderCancelled", "{not json".to_owned()),
        ("order-1", "OrderCancelled", "[]".to_owned()),
        ("order-1", "OrderCancelled", "null".to_owned()),
        (
            "order-1",
            "OrderCancelled",
            format!(r#"{{"reason":7,"at":{at}}}"#),
        ),
        (
            "order-1",
            "OrderCancelled",
            r#"{"reason":"x","at":"yesterday"}"#.to_owned(),
        ),
        (
            "order-1",
            "PaymentInitiated",
            format!(r#"{{"payment_id":"","at":{at}}}"#),
        ),
        (
            "order-1",
            "PaymentInitiated",
            format!(r#"{{"payment_id":"has space","at":{at}}}"#),
        ),
        (
            "transfer-1",
            "TransferCancelled",
            format!(r#"{{"reason":"x","at":{at},"extra":[1,2,3],"reason2":{{}}}}"#)
                .replace("\"reason\":\"x\",", ""),
        ),
        (
            "transfer-1",
            "TransferReduced",
            format!(
                r#"{{"refund_id":"00000000-0000-0000-0000-000000000001","by":{{"minor":1,"currency":"usd"}},"remaining":{{"minor":1,"currency":"USD"}},"at":{at}}}"#
            ),
        ),
        (
            "transfer-1",
            "TransferReduced",
            format!(
                r#"{{"refund_id":"not-a-uuid","by":{{"minor":1,"currency":"USD"}},"remaining":{{"minor":1,"currency":"USD"}},"at":{at}}}"#
            ),
        ),
        (
            "transfer-1",
            "TransferReduced",
            format!(
                r#"{{"refund_id":"00000000-0000-0000-0000-000000000001","by":{{"minor":1e99,"currency":"USD"}},"remaining":{{"minor":1,"currency":"USD"}},"at":{at}}}"#
            ),
        ),
        (
            "order-1",
            "OrderPlaced",
            format!(
                r#"{{"order_id":"00000000-0000-0000-0000-00000000000a","buyer_id":"b","currency":"USD","fee_bps":20000,"lines":[],"total_minor":0,"fee_minor":0,"at":{at}}}"#
            ),
        ),
        (
            "refund-1",
            "RefundFailed",
            format!(
                r#"{{"refund_id":"00000000-0000-0000-0000-000000000001","order_id":"00000000-0000-0000-0000-00000000000a","failure":"gave_up","error_message":null,"at":{at}}}"#
            ),
        ),
    ];
    for (s, event_type, payload) in cases {
        match decode_any(&stream(s), event_type, 1, &payload) {
            Err(CodecError::MalformedPayload {
                event_type: got, ..
            }) => assert_eq!(got, event_type),
            other => panic!("{event_type} {payload}: expected MalformedPayload, got {other:?}"),
        }
    }
}

#[test]
fn decode_any_routes_by_stream_kind() {
    let order_event = OrderEvent::OrderCancelled {
        reason: "x".into(),
        at: t(0),
    };
    let enc = codec::encode(&order_event);
    assert_eq!(
        decode_any(
            &stream("order-1"),
            &enc.event_type,
            enc.schema_version,
            &enc.payload
        ),
        Ok(AnyEvent::Order(order_event))
    );
    let refund_event = RefundEvent::RefundSubmitted {
        psp_refund_id: ledger_core::ids::psp_refund_id_for(refund_id(1)),
        at: t(0),
    };
    let enc = codec::encode(&refund_event);
    assert_eq!(
        decode_any(
            &stream("refund-1"),
            &enc.event_type,
            enc.schema_version,
            &enc.payload
        ),
        Ok(AnyEvent::Refund(refund_event))
    );
    let transfer_event = TransferEvent::TransferCancelled {
        reason: "x".into(),
        at: t(0),
    };
    let any = AnyEvent::Transfer(transfer_event);
    let enc = any.encode();
    assert_eq!(enc.event_type, any.event_type());
    assert_eq!(
        decode_any(
            &stream("transfer-1"),
            &enc.event_type,
            enc.schema_version,
            &enc.payload
        ),
        Ok(any)
    );
}

#[test]
fn encoding_is_canonical() {
    let e = OrderEvent::OrderCancelled {
        reason: "x".into(),
        at: t(0),
    };
    let enc = codec::encode(&e);
    assert_eq!(enc.event_type, "OrderCancelled");
    assert_eq!(enc.payload, r#"{"at":"2026-03-01T12:00:00Z","reason":"x"}"#);
}

#[test]
fn amount_arithmetic_reports_mismatch_and_overflow() {
    assert_eq!(
        usd_amount(1).checked_add(Amount::new(1, eur())),
        Err(MoneyError::CurrencyMismatch {
            left: usd(),
            right: eur()
        })
    );
    assert_eq!(
        usd_amount(1).checked_sub(Amount::new(1, eur())),
        Err(MoneyError::CurrencyMismatch {
            left: usd(),
            right: eur()
        })
    );
    assert_eq!(
        usd_amount(i64::MAX).checked_add(usd_amount(1)),
        Err(MoneyError::Overflow)
    );
    assert_eq!(
        usd_amount(i64::MIN).checked_sub(usd_amount(1)),
        Err(MoneyError::Overflow)
    );
    assert_eq!(
        usd_amount(i64::MAX).checked_mul(2),
        Err(MoneyError::Overflow)
    );
}

#[test]
fn overlong_free_text_is_clipped_not_rejected() {
    use ledger_core::decider::Decider;
    use ledger_core::order::{Order, OrderCommand};
    use ledger_core::text::TEXT_CHARS_MAX;
    let placed = Order::decide(
        &Default::default(),
        &OrderCommand::PlaceOrder {
            order_id: order_id(),
            buyer_id: buyer(),
            currency: usd(),
            lines: vec![line("p1", 1, 100, 1)],
            fee_bps: fee_bps(),
            now: t(0),
        },
    )
    .unwrap();
    let state = Order::fold(&placed).unwrap();
    let events = Order::decide(
        &state,
        &OrderCommand::CancelOrder {
            reason: "x".repeat(10 * TEXT_CHARS_MAX),
            now: t(1),
        },
    )
    .unwrap();
    match &events[..] {
        [OrderEvent::OrderCancelled { reason, .. }] => {
            assert_eq!(reason.chars().count(), TEXT_CHARS_MAX)
        }
        other => panic!("{other:?}"),
    }
}

/// The payload is exactly one JSON value, read straight into the event:
/// surrounding whitespace is fine, anything after the value is malformed
/// (nothing can smuggle in a second `data` or tag).
#[test]
fn payload_is_exactly_one_json_value() {
    let ok = r#"{"reason":"x","at":"2026-01-01T00:00:00Z"}"#;
    let plain = decode_any(&stream("order-1"), "OrderCancelled", 1, ok).unwrap();
    let padded = decode_any(
        &stream("order-1"),
        "OrderCancelled",
        1,
        &format!(" \n{ok}\t "),
    )
    .unwrap();
    assert_eq!(plain, padded);
    for bad in [
        format!("{ok}x"),
        format!("{ok}{ok}"),
        format!(r#"{ok},"data":{ok}"#),
        format!("{ok}}}"),
        String::new(),
        "null".to_owned(),
    ] {
        assert!(
            matches!(
                decode_any(&stream("order-1"), "OrderCancelled", 1, &bad),
                Err(CodecError::MalformedPayload { .. })
            ),
            "{bad:?} decoded"
        );
    }
}
