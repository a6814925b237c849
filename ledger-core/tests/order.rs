//! Given/when/then for every order transition and rejection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ledger_core::decider::Decider;
use ledger_core::ids::{PaymentId, payment_id_for};
use ledger_core::order::{
    ORDER_LINES_MAX, Order, OrderCommand as C, OrderEvent as E, OrderLine, OrderRejection as R,
    OrderStatus, PaymentAnomalyKind, SellerShare,
};
use ledger_core::psp::PaymentStatus;
use ledger_core::refund::RefundLine;

fn pay_id() -> PaymentId {
    payment_id_for(order_id())
}

fn inputs() -> Vec<ledger_core::order::LineInput> {
    vec![
        line("p1", 1, 1_000, 2),
        line("p2", 2, 999, 1),
        line("p3", 1, 500, 1),
    ]
}

fn priced(p: &str, s: u32, unit: i64, qty: i64, total: i64, fee: i64, rem: i64) -> OrderLine {
    OrderLine {
        product_id: product(p),
        seller_id: seller(s),
        seller_account: acct(s),
        unit_amount_minor: unit,
        quantity: qty,
        total_minor: total,
        fee_minor: fee,
        seller_minor: total - fee,
        rounding_remainder: rem,
    }
}

fn placed() -> E {
    E::OrderPlaced {
        order_id: order_id(),
        buyer_id: buyer(),
        currency: usd(),
        fee_bps: fee_bps(),
        lines: vec![
            priced("p1", 1, 1_000, 2, 2_000, 200, 0),
            // 999 * 10% = 99.9: the fee floors to 99 and the 0.9 is recorded.
            priced("p2", 2, 999, 1, 999, 99, 9_000),
            priced("p3", 1, 500, 1, 500, 50, 0),
        ],
        total_minor: 3_499,
        fee_minor: 349,
        at: t(0),
    }
}

fn place() -> C {
    C::PlaceOrder {
        order_id: order_id(),
        buyer_id: buyer(),
        currency: usd(),
        lines: inputs(),
        fee_bps: fee_bps(),
        now: t(0),
    }
}

fn place_with(lines: Vec<ledger_core::order::LineInput>) -> C {
    C::PlaceOrder {
        order_id: order_id(),
        buyer_id: buyer(),
        currency: usd(),
        lines,
        fee_bps: fee_bps(),
        now: t(0),
    }
}

fn initiated() -> E {
    E::PaymentInitiated {
        payment_id: pay_id(),
        at: t(1),
    }
}

fn status(s: &str, amount_minor: Option<i64>, minute: i64) -> C {
    C::ApplyPaymentStatus {
        payment_id: pay_id(),
        status: PaymentStatus::parse(s),
        amount_minor,
        error_message: None,
        now: t(minute),
    }
}

fn succeeded_as(s: &str, minute: i64) -> E {
    E::PaymentSucceeded {
        order_id: order_id(),
        payment_id: pay_id(),
        status: PaymentStatus::parse(s),
        amount_minor: 3_499,
        currency: usd(),
        fee_minor: 349,
        sellers: vec![
            SellerShare {
                seller_id: seller(1),
                seller_account: acct(1),
                total_minor: 2_500,
                fee_minor: 250,
                seller_minor: 2_250,
            },
            SellerShare {
                seller_id: seller(2),
                seller_account: acct(2),
                total_minor: 999,
                fee_minor: 99,
                seller_minor: 900,
            },
        ],
        at: t(minute),
    }
}

fn succeeded() -> E {
    succeeded_as("succeeded", 2)
}

fn failed_as(s: &str, minute: i64) -> E {
    E::PaymentFailed {
        payment_id: pay_id(),
        status: PaymentStatus::parse(s),
        error_message: None,
        at: t(minute),
    }
}

fn cancelled_as(s: &str, minute: i64) -> E {
    E::PaymentCancelled {
        payment_id: pay_id(),
        status: PaymentStatus::parse(s),
        error_message: None,
        at: t(minute),
    }
}

fn anomaly(
    kind: PaymentAnomalyKind,
    s: &str,
    amount: Option<i64>,
    current: OrderStatus,
    minute: i64,
) -> E {
    E::PaymentAnomalyRecorded {
        kind,
        payment_id: pay_id(),
        observed_status: PaymentStatus::parse(s),
        observed_amount_minor: amount,
        current_status: current,
        error_message: None,
        at: t(minute),
    }
}

fn rline(p: &str, s: u32, total: i64, fee: i64) -> RefundLine {
    RefundLine {
        product_id: product(p),
        seller_id: seller(s),
        seller_account: acct(s),
        total_minor: total,
        fee_minor: fee,
        seller_minor: total - fee,
    }
}

fn all_rlines() -> Vec<RefundLine> {
    vec![
        rline("p1", 1, 2_000, 200),
        rline("p2", 2, 999, 99),
        rline("p3", 1, 500, 50),
    ]
}

fn refund_requested(n: u128, lines: Vec<RefundLine>, previous: OrderStatus, minute: i64) -> E {
    E::RefundRequested {
        refund_id: refund_id(n),
        order_id: order_id(),
        payment_id: pay_id(),
        amount_minor: lines.iter().map(|l| l.total_minor).sum(),
        currency: usd(),
        lines,
        reason: "damaged".into(),
        reason_code: None,
        previous_status: previous,
        at: t(minute),
    }
}

fn refund_completed(n: u128, lines: Vec<RefundLine>, fully: bool, minute: i64) -> E {
    E::RefundCompleted {
        refund_id: refund_id(n),
        order_id: order_id(),
        amount_minor: lines.iter().map(|l| l.total_minor).sum(),
        currency: usd(),
        lines,
        fully_refunded: fully,
        at: t(minute),
    }
}

fn request_refund(n: u128, products: Option<&[&str]>, minute: i64) -> C {
    C::RequestRefund {
        refund_id: refund_id(n),
        product_ids: products.map(|ps| ps.iter().map(|p| product(p)).collect()),
        reason: "damaged".into(),
        reason_code: None,
        now: t(minute),
    }
}

fn paid() -> Vec<E> {
    vec![placed(), initiated(), succeeded()]
}

fn with(mut base: Vec<E>, more: impl IntoIterator<Item = E>) -> Vec<E> {
    base.extend(more);
    base
}

fn invalid(from: OrderStatus, command: &'static str) -> R {
    R::InvalidTransition { from, command }
}

// ---- placement ----

#[test]
fn place_order_prices_lines_and_freezes_fee_and_rounding() {
    check::<Order>(&[], place(), Ok(vec![placed()]));
}

#[test]
fn place_order_twice_is_a_no_op() {
    check::<Order>(&[placed()], place(), Ok(vec![]));
}

#[test]
fn place_order_twice_ignores_a_changed_fee_rate() {
    let mut cmd = place();
    if let C::PlaceOrder { fee_bps, .. } = &mut cmd {
        *fee_bps = ledger_core::money::FeeBps::new(2_500).unwrap();
    }
    check::<Order>(&[placed()], cmd, Ok(vec![]));
}

#[test]
fn place_different_order_under_same_id_is_rejected() {
    check::<Order>(
        &[placed()],
        place_with(vec![line("p1", 1, 1_000, 3)]),
        Err(R::OrderAlreadyPlaced {
            order_id: order_id(),
        }),
    );
}

#[test]
fn place_order_rejects_bad_lines() {
    let cases: Vec<(Vec<ledger_core::order::LineInput>, R)> = vec![
        (vec![], R::EmptyOrder),
        (
            (0..=ORDER_LINES_MAX)
                .map(|i| line(&format!("p{i}"), 1, 1, 1))
                .collect(),
            R::TooManyLines {
                count: ORDER_LINES_MAX + 1,
                max: ORDER_LINES_MAX,
            },
        ),
        (
            vec![line("p1", 1, 100, 0)],
            R::ZeroQuantity {
                product_id: product("p1"),
            },
        ),
        (
            vec![line("p1", 1, 100, -2)],
            R::NegativeQuantity {
                product_id: product("p1"),
            },
        ),
        (
            vec![line("p1", 1, 0, 1)],
            R::NonPositiveAmount {
                product_id: product("p1"),
            },
        ),
        (
            vec![line("p1", 1, -5, 1)],
            R::NonPositiveAmount {
                product_id: product("p1"),
            },
        ),
        (
            vec![line("p1", 1, 100, 1), line("p1", 2, 200, 1)],
            R::DuplicateProduct {
                product_id: product("p1"),
            },
        ),
        // unit * quantity overflows i64
        (vec![line("p1", 1, i64::MAX / 2 + 1, 2)], R::AmountOverflow),
        // each line fits, their sum does not
        (
            vec![line("p1", 1, i64::MAX, 1), line("p2", 1, 1, 1)],
            R::AmountOverflow,
        ),
    ];
    for (lines, rejection) in cases {
        check::<Order>(&[], place_with(lines), Err(rejection));
    }
}

#[test]
fn exactly_the_line_limit_is_accepted() {
    let lines = (0..ORDER_LINES_MAX)
        .map(|i| line(&format!("p{i}"), 1, 1, 1))
        .collect();
    let state = state_after::<Order>(&[]);
    let events = Order::decide(&state, &place_with(lines)).unwrap();
    assert_eq!(events.len(), 1);
}

#[test]
fn commands_before_placement_are_rejected() {
    for cmd in [
        C::InitiatePayment {
            payment_id: pay_id(),
            now: t(1),
        },
        status("succeeded", None, 1),
        C::CancelOrder {
            reason: "x".into(),
            now: t(1),
        },
        request_refund(1, None, 1),
        C::CompleteRefund {
            refund_id: refund_id(1),
            now: t(1),
        },
        C::ReleaseRefund {
            refund_id: refund_id(1),
            reason: "x".into(),
            now: t(1),
        },
    ] {
        check::<Order>(&[], cmd, Err(R::OrderNotPlaced));
    }
}

// ---- payment initiation ----

#[test]
fn initiate_payment_moves_created_to_pending() {
    check::<Order>(
        &[placed()],
        C::InitiatePayment {
            payment_id: pay_id(),
            now: t(1),
        },
        Ok(vec![initiated()]),
    );
}

#[test]
fn initiate_payment_again_is_a_no_op() {
    for given in [vec![placed(), initiated()], paid()] {
        check::<Order>(
            &given,
            C::InitiatePayment {
                payment_id: pay_id(),
                now: t(5),
            },
            Ok(vec![]),
        );
    }
}

#[test]
fn initiate_payment_with_a_foreign_payment_id_is_rejected() {
    check::<Order>(
        &[placed()],
        C::InitiatePayment {
            payment_id: PaymentId::new("pay_someone_else").unwrap(),
            now: t(1),
        },
        Err(R::PaymentIdMismatch {
            expected: pay_id(),
            got: PaymentId::new("pay_someone_else").unwrap(),
        }),
    );
}

#[test]
fn initiate_payment_after_cancel_is_rejected() {
    check::<Order>(
        &[
            placed(),
            E::OrderCancelled {
                reason: "buyer left".into(),
                at: t(1),
            },
        ],
        C::InitiatePayment {
            payment_id: pay_id(),
            now: t(2),
        },
        Err(invalid(OrderStatus::Cancelled, "InitiatePayment")),
    );
}

// ---- payment status while pending ----

#[test]
fn in_flight_statuses_while_pending_change_nothing() {
    for s in [
        "processing",
        "requires_customer_action",
        "requires_merchant_action",
        "requires_payment_method",
        "requires_confirmation",
        "requires_capture",
        "partially_captured_and_capturable",
        "partially_authorized_and_requires_capture",
        "conflicted",
    ] {
        check::<Order>(&[placed(), initiated()], status(s, None, 2), Ok(vec![]));
    }
}

#[test]
fn succeeded_completes_the_order_with_per_seller_shares() {
    check::<Order>(
        &[placed(), initiated()],
        status("succeeded", None, 2),
        Ok(vec![succeeded()]),
    );
    check::<Order>(
        &[placed(), initiated()],
        status("succeeded", Some(3_499), 2),
        Ok(vec![succeeded()]),
    );
}

#[test]
fn partially_captured_for_the_full_total_completes_the_order() {
    check::<Order>(
        &[placed(), initiated()],
        status("partially_captured", Some(3_499), 2),
        Ok(vec![succeeded_as("partially_captured", 2)]),
    );
}

#[test]
fn captured_amount_other_than_total_is_an_anomaly_not_a_completion() {
    check::<Order>(
        &[placed(), initiated()],
        status("succeeded", Some(3_000), 2),
        Ok(vec![anomaly(
            PaymentAnomalyKind::AmountMismatch,
            "succeeded",
            Some(3_000),
            OrderStatus::Pending,
            2,
        )]),
    );
    check::<Order>(
        &[placed(), initiated()],
        status("partially_captured", None, 2),
        Ok(vec![anomaly(
            PaymentAnomalyKind::AmountMismatch,
            "partially_captured",
            None,
            OrderStatus::Pending,
            2,
        )]),
    );
}

#[test]
fn the_same_amount_anomaly_twice_yields_nothing() {
    let given = vec![
        placed(),
        initiated(),
        anomaly(
            PaymentAnomalyKind::AmountMismatch,
            "succeeded",
            Some(3_000),
            OrderStatus::Pending,
            2,
        ),
    ];
    check::<Order>(&given, status("succeeded", Some(3_000), 3), Ok(vec![]));
    // ... and the order can still complete when the right amount shows up.
    check::<Order>(
        &given,
        status("succeeded", Some(3_499), 2),
        Ok(vec![succeeded()]),
    );
}

#[test]
fn failed_and_expired_fail_the_order() {
    check::<Order>(
        &[placed(), initiated()],
        status("failed", None, 2),
        Ok(vec![failed_as("failed", 2)]),
    );
    check::<Order>(
        &[placed(), initiated()],
        status("expired", None, 2),
        Ok(vec![failed_as("expired", 2)]),
    );
}

#[test]
fn failure_carries_the_psp_error_message() {
    let cmd = C::ApplyPaymentStatus {
        payment_id: pay_id(),
        status: PaymentStatus::Failed,
        amount_minor: None,
        error_message: Some("card declined".into()),
        now: t(2),
    };
    check::<Order>(
        &[placed(), initiated()],
        cmd,
        Ok(vec![E::PaymentFailed {
            payment_id: pay_id(),
            status: PaymentStatus::Failed,
            error_message: Some("card declined".into()),
            at: t(2),
        }]),
    );
}

#[test]
fn cancelled_statuses_cancel_the_order() {
    check::<Order>(
        &[placed(), initiated()],
        status("cancelled", None, 2),
        Ok(vec![cancelled_as("cancelled", 2)]),
    );
    check::<Order>(
        &[placed(), initiated()],
        status("cancelled_post_capture", None, 2),
        Ok(vec![cancelled_as("cancelled_post_capture", 2)]),
    );
}

#[test]
fn unknown_status_is_recorded_once_not_guessed() {
    let recorded = anomaly(
        PaymentAnomalyKind::UnrecognisedStatus,
        "teleported",
        None,
        OrderStatus::Pending,
        2,
    );
    check::<Order>(
        &[placed(), initiated()],
        status("teleported", None, 2),
        Ok(vec![recorded.clone()]),
    );
    // Seen again: nothing new, and still not guessed at.
    check::<Order>(
        &[placed(), initiated(), recorded],
        status("teleported", None, 3),
        Ok(vec![]),
    );
}

#[test]
fn status_for_a_foreign_payment_is_rejected() {
    let other = PaymentId::new("pay_other").unwrap();
    for given in [vec![placed()], vec![placed(), initiated()], paid()] {
        check::<Order>(
            &given,
            C::ApplyPaymentStatus {
                payment_id: other.clone(),
                status: PaymentStatus::Succeeded,
                amount_minor: None,
                error_message: None,
                now: t(3),
            },
            Err(R::PaymentIdMismatch {
                expected: pay_id(),
                got: other.clone(),
            }),
        );
    }
}

// ---- crash between PSP call and recording ----

#[test]
fn status_for_the_derived_payment_id_while_created_initiates_then_applies() {
    let init_at = |m| E::PaymentInitiated {
        payment_id: pay_id(),
        at: t(m),
    };
    check::<Order>(
        &[placed()],
        status("succeeded", None, 2),
        Ok(vec![init_at(2), succeeded()]),
    );
    check::<Order>(
        &[placed()],
        status("processing", None, 2),
        Ok(vec![init_at(2)]),
    );
    check::<Order>(
        &[placed()],
        status("failed", None, 2),
        Ok(vec![init_at(2), failed_as("failed", 2)]),
    );
}

// ---- payment status once terminal ----

#[test]
fn repeated_or_stale_status_after_terminal_is_a_no_op() {
    let failed = vec![placed(), initiated(), failed_as("failed", 2)];
    let cancelled = vec![placed(), initiated(), cancelled_as("cancelled", 2)];
    let refunded = with(
        paid(),
        [
            refund_requested(1, all_rlines(), OrderStatus::Completed, 3),
            refund_completed(1, all_rlines(), true, 4),
        ],
    );
    let cases = [
        (paid(), "succeeded"),
        (paid(), "partially_captured"),
        (paid(), "processing"),
        (failed.clone(), "failed"),
        (failed.clone(), "expired"),
        (failed, "processing"),
        (cancelled.clone(), "cancelled"),
        (cancelled, "cancelled_post_capture"),
        (refunded, "succeeded"),
    ];
    for (given, s) in cases {
        let amount = (s == "partially_captured").then_some(3_499);
        check::<Order>(&given, status(s, amount, 9), Ok(vec![]));
    }
}

#[test]
fn conflicting_status_after_terminal_is_recorded_as_an_anomaly_once() {
    let failed = vec![placed(), initiated(), failed_as("failed", 2)];
    let cancelled_by_us = vec![
        placed(),
        E::OrderCancelled {
            reason: "buyer left".into(),
            at: t(1),
        },
    ];
    let cases = [
        (paid(), "failed", OrderStatus::Completed),
        (paid(), "cancelled_post_capture", OrderStatus::Completed),
        (failed.clone(), "succeeded", OrderStatus::Failed),
        (failed, "cancelled", OrderStatus::Failed),
        (cancelled_by_us, "succeeded", OrderStatus::Cancelled),
    ];
    for (given, s, current) in cases {
        let recorded = anomaly(PaymentAnomalyKind::ConflictingStatus, s, None, current, 9);
        check::<Order>(&given, status(s, None, 9), Ok(vec![recorded.clone()]));
        check::<Order>(&with(given, [recorded]), status(s, None, 10), Ok(vec![]));
    }
}

#[test]
fn wrong_amount_after_completion_is_an_anomaly() {
    check::<Order>(
        &paid(),
        status("succeeded", Some(1), 9),
        Ok(vec![anomaly(
            PaymentAnomalyKind::AmountMismatch,
            "succeeded",
            Some(1),
            OrderStatus::Completed,
            9,
        )]),
    );
}

#[test]
fn an_anomaly_changes_no_status() {
    let given = with(
        paid(),
        [anomaly(
            PaymentAnomalyKind::ConflictingStatus,
            "failed",
            None,
            OrderStatus::Completed,
            9,
        )],
    );
    assert_eq!(
        state_after::<Order>(&given).status(),
        Some(OrderStatus::Completed)
    );
}

// ---- cancel ----

#[test]
fn cancel_from_created_or_pending() {
    for (given, minute) in [(vec![placed()], 1), (vec![placed(), initiated()], 2)] {
        check::<Order>(
            &given,
            C::CancelOrder {
                reason: "buyer left".into(),
                now: t(minute),
            },
            Ok(vec![E::OrderCancelled {
                reason: "buyer left".into(),
                at: t(minute),
            }]),
        );
    }
}

#[test]
fn cancel_twice_is_a_no_op_and_cancel_after_payment_is_rejected() {
    check::<Order>(
        &[placed(), initiated(), cancelled_as("cancelled", 2)],
        C::CancelOrder {
            reason: "again".into(),
            now: t(3),
        },
        Ok(vec![]),
    );
    for (given, from) in [
        (paid(), OrderStatus::Completed),
        (
            vec![placed(), initiated(), failed_as("failed", 2)],
            OrderStatus::Failed,
        ),
    ] {
        check::<Order>(
            &given,
            C::CancelOrder {
                reason: "late".into(),
                now: t(3),
            },
            Err(invalid(from, "CancelOrder")),
        );
    }
}

// ---- refunds on the order ----

#[test]
fn refund_everything_reserves_every_line() {
    check::<Order>(
        &paid(),
        request_refund(1, None, 3),
        Ok(vec![refund_requested(
            1,
            all_rlines(),
            OrderStatus::Completed,
            3,
        )]),
    );
}

#[test]
fn refund_chosen_lines_in_order_line_order() {
    check::<Order>(
        &paid(),
        request_refund(1, Some(&["p3", "p2"]), 3),
        Ok(vec![refund_requested(
            1,
            vec![rline("p2", 2, 999, 99), rline("p3", 1, 500, 50)],
            OrderStatus::Completed,
            3,
        )]),
    );
}

#[test]
fn refund_after_partial_refund_takes_what_is_left() {
    let given = with(
        paid(),
        [
            refund_requested(1, vec![rline("p2", 2, 999, 99)], OrderStatus::Completed, 3),
            refund_completed(1, vec![rline("p2", 2, 999, 99)], false, 4),
        ],
    );
    assert_eq!(
        state_after::<Order>(&given).status(),
        Some(OrderStatus::PartiallyRefunded)
    );
    check::<Order>(
        &given,
        request_refund(2, None, 5),
        Ok(vec![refund_requested(
            2,
            vec![rline("p1", 1, 2_000, 200), rline("p3", 1, 500, 50)],
            OrderStatus::PartiallyRefunded,
            5,
        )]),
    );
}

#[test]
fn refund_request_repeated_is_a_no_op() {
    let pending = with(
        paid(),
        [refund_requested(1, all_rlines(), OrderStatus::Completed, 3)],
    );
    check::<Order>(&pending, request_refund(1, None, 4), Ok(vec![]));
    let completed = with(
        pending.clone(),
        [refund_completed(1, all_rlines(), true, 4)],
    );
    check::<Order>(&completed, request_refund(1, None, 5), Ok(vec![]));
    let released = with(
        pending,
        [E::RefundReleased {
            refund_id: refund_id(1),
            reason: "psp failed".into(),
            restored_status: OrderStatus::Completed,
            at: t(4),
        }],
    );
    check::<Order>(&released, request_refund(1, None, 5), Ok(vec![]));
}

#[test]
fn a_second_refund_while_one_is_pending_is_rejected() {
    let pending = with(
        paid(),
        [refund_requested(
            1,
            vec![rline("p1", 1, 2_000, 200)],
            OrderStatus::Completed,
            3,
        )],
    );
    check::<Order>(
        &pending,
        request_refund(2, Some(&["p2"]), 4),
        Err(R::RefundAlreadyPending {
            pending: refund_id(1),
        }),
    );
}

#[test]
fn refund_before_payment_or_after_full_refund_is_rejected() {
    let refunded = with(
        paid(),
        [
            refund_requested(1, all_rlines(), OrderStatus::Completed, 3),
            refund_completed(1, all_rlines(), true, 4),
        ],
    );
    for (given, from) in [
        (vec![placed()], OrderStatus::Created),
        (vec![placed(), initiated()], OrderStatus::Pending),
        (
            vec![placed(), initiated(), failed_as("failed", 2)],
            OrderStatus::Failed,
        ),
        (refunded, OrderStatus::Refunded),
    ] {
        check::<Order>(
            &given,
            request_refund(2, None, 5),
            Err(invalid(from, "RequestRefund")),
        );
    }
}

#[test]
fn refund_of_bad_product_lists_is_rejected() {
    check::<Order>(
        &paid(),
        request_refund(1, Some(&["nope"]), 3),
        Err(R::UnknownProduct {
            product_id: product("nope"),
        }),
    );
    check::<Order>(
        &paid(),
        request_refund(1, Some(&[]), 3),
        Err(R::NothingToRefund),
    );
    check::<Order>(
        &paid(),
        request_refund(1, Some(&["p1", "p1"]), 3),
        Err(R::DuplicateProduct {
            product_id: product("p1"),
        }),
    );
}

#[test]
fn a_refunded_line_cannot_be_refunded_again() {
    let given = with(
        paid(),
        [
            refund_requested(1, vec![rline("p2", 2, 999, 99)], OrderStatus::Completed, 3),
            refund_completed(1, vec![rline("p2", 2, 999, 99)], false, 4),
        ],
    );
    check::<Order>(
        &given,
        request_refund(2, Some(&["p1", "p2"]), 5),
        Err(R::LineAlreadyRefunded {
            product_id: product("p2"),
        }),
    );
}

#[test]
fn refund_beyond_what_was_captured_is_rejected() {
    // Imported history where less than the total was captured.
    let mut short = succeeded();
    if let E::PaymentSucceeded { amount_minor, .. } = &mut short {
        *amount_minor = 1_000;
    }
    check::<Order>(
        &[placed(), initiated(), short],
        request_refund(1, None, 3),
        Err(R::RefundExceedsCaptured {
            requested_minor: 3_499,
            refundable_minor: 1_000,
        }),
    );
}

#[test]
fn complete_refund_partially_or_fully() {
    let partial = vec![rline("p1", 1, 2_000, 200)];
    check::<Order>(
        &with(
            paid(),
            [refund_requested(
                1,
                partial.clone(),
                OrderStatus::Completed,
                3,
            )],
        ),
        C::CompleteRefund {
            refund_id: refund_id(1),
            now: t(4),
        },
        Ok(vec![refund_completed(1, partial, false, 4)]),
    );
    check::<Order>(
        &with(
            paid(),
            [refund_requested(1, all_rlines(), OrderStatus::Completed, 3)],
        ),
        C::CompleteRefund {
            refund_id: refund_id(1),
            now: t(4),
        },
        Ok(vec![refund_completed(1, all_rlines(), true, 4)]),
    );
}

#[test]
fn completing_the_last_lines_fully_refunds_the_order() {
    let first = vec![rline("p2", 2, 999, 99)];
    let rest = vec![rline("p1", 1, 2_000, 200), rline("p3", 1, 500, 50)];
    let given = with(
        paid(),
        [
            refund_requested(1, first.clone(), OrderStatus::Completed, 3),
            refund_completed(1, first, false, 4),
            refund_requested(2, rest.clone(), OrderStatus::PartiallyRefunded, 5),
        ],
    );
    check::<Order>(
        &given,
        C::CompleteRefund {
            refund_id: refund_id(2),
            now: t(6),
        },
        Ok(vec![refund_completed(2, rest.clone(), true, 6)]),
    );
    let done = with(given, [refund_completed(2, rest, true, 6)]);
    let state = state_after::<Order>(&done);
    let o = state.order.unwrap();
    assert_eq!(o.status, OrderStatus::Refunded);
    assert_eq!(o.refunded_minor, o.captured_minor);
}

#[test]
fn complete_refund_twice_is_a_no_op_and_unknown_refund_is_rejected() {
    let done = with(
        paid(),
        [
            refund_requested(1, all_rlines(), OrderStatus::Completed, 3),
            refund_completed(1, all_rlines(), true, 4),
        ],
    );
    check::<Order>(
        &done,
        C::CompleteRefund {
            refund_id: refund_id(1),
            now: t(5),
        },
        Ok(vec![]),
    );
    for (given, n) in [
        (paid(), 1),
        (
            with(
                paid(),
                [refund_requested(1, all_rlines(), OrderStatus::Completed, 3)],
            ),
            2,
        ),
    ] {
        check::<Order>(
            &given,
            C::CompleteRefund {
                refund_id: refund_id(n),
                now: t(5),
            },
            Err(R::RefundNotPending {
                refund_id: refund_id(n),
            }),
        );
    }
}

#[test]
fn release_refund_restores_the_previous_status_and_the_lines() {
    let first = vec![rline("p2", 2, 999, 99)];
    let partial = with(
        paid(),
        [
            refund_requested(1, first.clone(), OrderStatus::Completed, 3),
            refund_completed(1, first, false, 4),
        ],
    );
    for (given, previous) in [
        (paid(), OrderStatus::Completed),
        (partial, OrderStatus::PartiallyRefunded),
    ] {
        let pending = with(
            given.clone(),
            [refund_requested(
                9,
                vec![rline("p1", 1, 2_000, 200)],
                previous,
                5,
            )],
        );
        let released = E::RefundReleased {
            refund_id: refund_id(9),
            reason: "orphaned".into(),
            restored_status: previous,
            at: t(6),
        };
        check::<Order>(
            &pending,
            C::ReleaseRefund {
                refund_id: refund_id(9),
                reason: "orphaned".into(),
                now: t(6),
            },
            Ok(vec![released.clone()]),
        );
        let after = with(pending, [released]);
        assert_eq!(state_after::<Order>(&after).status(), Some(previous));
        // The line is refundable again, by a new refund.
        check::<Order>(
            &after,
            request_refund(10, Some(&["p1"]), 7),
            Ok(vec![refund_requested(
                10,
                vec![rline("p1", 1, 2_000, 200)],
                previous,
                7,
            )]),
        );
    }
}

#[test]
fn release_refund_twice_is_a_no_op_and_unknown_refund_is_rejected() {
    let released = with(
        paid(),
        [
            refund_requested(1, all_rlines(), OrderStatus::Completed, 3),
            E::RefundReleased {
                refund_id: refund_id(1),
                reason: "x".into(),
                restored_status: OrderStatus::Completed,
                at: t(4),
            },
        ],
    );
    let release = |n| C::ReleaseRefund {
        refund_id: refund_id(n),
        reason: "x".into(),
        now: t(5),
    };
    check::<Order>(&released, release(1), Ok(vec![]));
    check::<Order>(
        &released,
        release(2),
        Err(R::RefundNotPending {
            refund_id: refund_id(2),
        }),
    );
    // A completed refund cannot be released.
    let completed = with(
        paid(),
        [
            refund_requested(1, all_rlines(), OrderStatus::Completed, 3),
            refund_completed(1, all_rlines(), true, 4),
        ],
    );
    check::<Order>(
        &completed,
        release(1),
        Err(R::RefundNotPending {
            refund_id: refund_id(1),
        }),
    );
}

#[test]
fn place_order_on_a_placed_stream_with_another_id_is_rejected() {
    let mut cmd = place();
    if let C::PlaceOrder { order_id, .. } = &mut cmd {
        *order_id = ledger_core::ids::OrderId(uuid::Uuid::from_u128(99));
    }
    check::<Order>(
        &[placed()],
        cmd,
        Err(R::OrderAlreadyPlaced {
            order_id: order_id(),
        }),
    );
}

// ---- history that decide could not have produced ----

#[test]
fn impossible_history_is_invalid_not_a_panic() {
    let cases: Vec<Vec<E>> = vec![
        vec![initiated()],
        vec![placed(), placed()],
        vec![placed(), succeeded()],
        vec![placed(), initiated(), initiated()],
        with(paid(), [refund_completed(1, all_rlines(), true, 4)]),
        with(
            paid(),
            [
                refund_requested(1, all_rlines(), OrderStatus::Completed, 3),
                refund_requested(2, all_rlines(), OrderStatus::Completed, 3),
            ],
        ),
    ];
    for events in cases {
        assert!(Order::fold(&events).is_err(), "{events:#?}");
    }
}
