//! Given/when/then for every refund transition and rejection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ledger_core::decider::Decider;
use ledger_core::ids::{PspRefundId, payment_id_for, psp_refund_id_for};
use ledger_core::order::ORDER_LINES_MAX;
use ledger_core::psp::RefundPspStatus as P;
use ledger_core::refund::{
    Refund, RefundAnomalyKind, RefundCommand as C, RefundEvent as E, RefundFailureKind, RefundLine,
    RefundReasonCode, RefundRejection as R, RefundStatus,
};

fn rid() -> ledger_core::ids::RefundId {
    refund_id(1)
}

fn psp_id() -> PspRefundId {
    psp_refund_id_for(rid())
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

fn lines() -> Vec<RefundLine> {
    vec![rline("p1", 1, 2_000, 200), rline("p2", 2, 999, 99)]
}

fn request_with(amount_minor: i64, lines: Vec<RefundLine>) -> C {
    C::Request {
        refund_id: rid(),
        order_id: order_id(),
        payment_id: payment_id_for(order_id()),
        amount_minor,
        currency: usd(),
        lines,
        reason: "damaged".into(),
        reason_code: None,
        now: t(0),
    }
}

fn request() -> C {
    request_with(2_999, lines())
}

fn requested() -> E {
    E::RefundRequested {
        refund_id: rid(),
        order_id: order_id(),
        payment_id: payment_id_for(order_id()),
        amount_minor: 2_999,
        currency: usd(),
        lines: lines(),
        reason: "damaged".into(),
        reason_code: None,
        at: t(0),
    }
}

fn submitted(minute: i64) -> E {
    E::RefundSubmitted {
        psp_refund_id: psp_id(),
        at: t(minute),
    }
}

fn succeeded(minute: i64) -> E {
    E::RefundSucceeded {
        refund_id: rid(),
        order_id: order_id(),
        payment_id: payment_id_for(order_id()),
        psp_refund_id: psp_id(),
        amount_minor: 2_999,
        currency: usd(),
        lines: lines(),
        at: t(minute),
    }
}

fn failed(failure: RefundFailureKind, error: Option<&str>, minute: i64) -> E {
    E::RefundFailed {
        refund_id: rid(),
        order_id: order_id(),
        failure,
        error_message: error.map(str::to_owned),
        at: t(minute),
    }
}

fn anomaly(kind: RefundAnomalyKind, observed: &str, current: RefundStatus, minute: i64) -> E {
    E::RefundAnomalyRecorded {
        kind,
        observed: observed.into(),
        current_status: current,
        error_message: None,
        at: t(minute),
    }
}

fn psp(status: P, with_id: bool, minute: i64) -> C {
    C::ApplyPspStatus {
        psp_refund_id: with_id.then(psp_id),
        status,
        error_message: None,
        now: t(minute),
    }
}

fn submit(minute: i64) -> C {
    C::Submit {
        psp_refund_id: psp_id(),
        now: t(minute),
    }
}

fn orphan(minute: i64) -> C {
    C::MarkOrphaned { now: t(minute) }
}

fn invalid(from: RefundStatus, command: &'static str) -> R {
    R::InvalidTransition { from, command }
}

fn is_submitted() -> Vec<E> {
    vec![requested(), submitted(1)]
}

fn is_succeeded() -> Vec<E> {
    vec![requested(), submitted(1), succeeded(2)]
}

fn is_failed() -> Vec<E> {
    vec![
        requested(),
        submitted(1),
        failed(RefundFailureKind::PspFailed, Some("declined"), 2),
    ]
}

fn is_orphaned() -> Vec<E> {
    vec![requested(), failed(RefundFailureKind::Orphaned, None, 6)]
}

// ---- request (phase 1) ----

#[test]
fn request_records_phase_one() {
    check::<Refund>(&[], request(), Ok(vec![requested()]));
}

#[test]
fn a_reason_code_is_recorded_on_the_event_and_the_state() {
    let mut command = request();
    if let C::Request { reason_code, .. } = &mut command {
        *reason_code = Some(RefundReasonCode::Fraudulent);
    }
    let mut event = requested();
    if let E::RefundRequested { reason_code, .. } = &mut event {
        *reason_code = Some(RefundReasonCode::Fraudulent);
    }
    check::<Refund>(&[], command, Ok(vec![event.clone()]));
    round_trips(&event);
    let encoded = ledger_core::codec::encode(&event);
    assert!(
        encoded.payload.contains(r#""reason_code":"fraudulent""#),
        "{}",
        encoded.payload
    );
    let state = state_after::<Refund>(&[event]);
    assert_eq!(
        state.refund.unwrap().reason_code,
        Some(RefundReasonCode::Fraudulent)
    );
}

#[test]
fn events_without_a_reason_code_keep_their_bytes_and_old_ones_still_decode() {
    let encoded = ledger_core::codec::encode(&requested());
    assert!(
        !encoded.payload.contains("reason_code"),
        "{}",
        encoded.payload
    );
    // A payload written before reason codes existed decodes with `None`.
    let decoded: E = ledger_core::codec::decode(
        &encoded.event_type,
        encoded.schema_version,
        &encoded.payload,
    )
    .unwrap();
    assert_eq!(decoded, requested());
    let state = state_after::<Refund>(&[decoded]);
    assert_eq!(state.refund.unwrap().reason_code, None);
}

#[test]
fn reason_codes_parse_exactly_the_psp_set() {
    for code in RefundReasonCode::ALL {
        assert_eq!(RefundReasonCode::parse(code.as_str()), Some(code));
        assert!(RefundReasonCode::ALLOWED.contains(code.as_str()));
    }
    for bad in ["", "Duplicate", "other", "requested_by_customer "] {
        assert_eq!(RefundReasonCode::parse(bad), None, "{bad:?}");
    }
    assert_eq!(
        RefundReasonCode::default(),
        RefundReasonCode::RequestedByCustomer
    );
}

#[test]
fn request_twice_is_a_no_op_and_another_refund_on_the_stream_is_rejected() {
    check::<Refund>(&[requested()], request(), Ok(vec![]));
    let mut other = request();
    if let C::Request { refund_id: r, .. } = &mut other {
        *r = refund_id(2);
    }
    check::<Refund>(
        &[requested()],
        other,
        Err(R::RefundIdMismatch {
            expected: rid(),
            got: refund_id(2),
        }),
    );
}

#[test]
fn request_rejects_inconsistent_amounts_and_lines() {
    let cases = [
        (request_with(0, lines()), R::NonPositiveAmount),
        (request_with(-1, lines()), R::NonPositiveAmount),
        (request_with(2_999, vec![]), R::NoLines),
        (
            request_with(2_998, lines()),
            R::LinesDoNotSumToAmount {
                amount_minor: 2_998,
                lines_minor: 2_999,
            },
        ),
        (
            request_with(
                4_000,
                vec![rline("p1", 1, 2_000, 200), rline("p1", 1, 2_000, 200)],
            ),
            R::DuplicateProduct {
                product_id: product("p1"),
            },
        ),
        (
            request_with(
                2_000,
                vec![RefundLine {
                    seller_minor: 1_000,
                    ..rline("p1", 1, 2_000, 200)
                }],
            ),
            R::LineSplitMismatch {
                product_id: product("p1"),
            },
        ),
        (
            request_with(100, vec![rline("p1", 1, 100, -1)]),
            R::LineSplitMismatch {
                product_id: product("p1"),
            },
        ),
        (
            request_with(
                i64::MAX,
                vec![rline("p1", 1, i64::MAX, 0), rline("p2", 1, 1, 0)],
            ),
            R::AmountOverflow,
        ),
        (
            request_with(
                ORDER_LINES_MAX as i64 + 1,
                (0..=ORDER_LINES_MAX)
                    .map(|i| rline(&format!("p{i}"), 1, 1, 0))
                    .collect(),
            ),
            R::TooManyLines {
                count: ORDER_LINES_MAX + 1,
                max: ORDER_LINES_MAX,
            },
        ),
    ];
    for (cmd, rejection) in cases {
        check::<Refund>(&[], cmd, Err(rejection));
    }
}

#[test]
fn commands_before_request_are_rejected() {
    for cmd in [submit(1), psp(P::Succeeded, true, 1), orphan(1)] {
        check::<Refund>(&[], cmd, Err(R::RefundNotRequested));
    }
}

// ---- submit (phase 2) ----

#[test]
fn submit_moves_requested_to_submitted() {
    check::<Refund>(&[requested()], submit(1), Ok(vec![submitted(1)]));
}

#[test]
fn submit_again_or_after_the_outcome_is_a_no_op() {
    for given in [is_submitted(), is_succeeded(), is_failed()] {
        check::<Refund>(&given, submit(3), Ok(vec![]));
    }
}

#[test]
fn submit_with_a_foreign_psp_id_is_rejected() {
    let other = PspRefundId::new("ref_other").unwrap();
    check::<Refund>(
        &[requested()],
        C::Submit {
            psp_refund_id: other.clone(),
            now: t(1),
        },
        Err(R::PspRefundIdMismatch {
            expected: psp_id(),
            got: other.clone(),
        }),
    );
    check::<Refund>(
        &is_submitted(),
        C::ApplyPspStatus {
            psp_refund_id: Some(other.clone()),
            status: P::Succeeded,
            error_message: None,
            now: t(2),
        },
        Err(R::PspRefundIdMismatch {
            expected: psp_id(),
            got: other,
        }),
    );
}

#[test]
fn submit_after_orphaning_is_an_anomaly_once() {
    let recorded = anomaly(
        RefundAnomalyKind::SubmittedAfterFailure,
        "submitted",
        RefundStatus::Failed,
        7,
    );
    check::<Refund>(&is_orphaned(), submit(7), Ok(vec![recorded.clone()]));
    check::<Refund>(
        &[is_orphaned(), vec![recorded]].concat(),
        submit(8),
        Ok(vec![]),
    );
}

// ---- PSP status ----

#[test]
fn psp_outcome_on_a_submitted_refund() {
    check::<Refund>(
        &is_submitted(),
        psp(P::Succeeded, true, 2),
        Ok(vec![succeeded(2)]),
    );
    check::<Refund>(
        &is_submitted(),
        psp(P::Succeeded, false, 2),
        Ok(vec![succeeded(2)]),
    );
    check::<Refund>(
        &is_submitted(),
        C::ApplyPspStatus {
            psp_refund_id: Some(psp_id()),
            status: P::Failed,
            error_message: Some("declined".into()),
            now: t(2),
        },
        Ok(vec![failed(
            RefundFailureKind::PspFailed,
            Some("declined"),
            2,
        )]),
    );
}

#[test]
fn pending_and_review_change_nothing_once_submitted() {
    for s in [P::Pending, P::Review] {
        check::<Refund>(&is_submitted(), psp(s, true, 2), Ok(vec![]));
    }
}

#[test]
fn psp_rejecting_phase_two_fails_a_requested_refund() {
    check::<Refund>(
        &[requested()],
        C::ApplyPspStatus {
            psp_refund_id: None,
            status: P::Failed,
            error_message: Some("IR_13 over-refund".into()),
            now: t(1),
        },
        Ok(vec![failed(
            RefundFailureKind::PspFailed,
            Some("IR_13 over-refund"),
            1,
        )]),
    );
}

#[test]
fn psp_knowing_a_requested_refund_records_phase_two_first() {
    check::<Refund>(
        &[requested()],
        psp(P::Succeeded, true, 2),
        Ok(vec![submitted(2), succeeded(2)]),
    );
    for s in [P::Pending, P::Review] {
        check::<Refund>(&[requested()], psp(s, true, 2), Ok(vec![submitted(2)]));
        // Without an id there is no evidence the PSP holds it.
        check::<Refund>(&[requested()], psp(s, false, 2), Ok(vec![]));
    }
}

#[test]
fn same_or_stale_status_after_terminal_is_a_no_op() {
    for (given, s) in [
        (is_succeeded(), P::Succeeded),
        (is_succeeded(), P::Pending),
        (is_succeeded(), P::Review),
        (is_failed(), P::Failed),
        (is_failed(), P::Pending),
        (is_orphaned(), P::Failed),
    ] {
        check::<Refund>(&given, psp(s, true, 9), Ok(vec![]));
    }
}

#[test]
fn conflicting_status_after_terminal_is_an_anomaly_once() {
    for (given, s, current) in [
        (is_succeeded(), P::Failed, RefundStatus::Succeeded),
        (is_failed(), P::Succeeded, RefundStatus::Failed),
        (is_orphaned(), P::Succeeded, RefundStatus::Failed),
        // The PSP holds a refund we gave up on.
        (is_orphaned(), P::Pending, RefundStatus::Failed),
    ] {
        let recorded = anomaly(RefundAnomalyKind::ConflictingStatus, s.as_str(), current, 9);
        check::<Refund>(&given, psp(s, true, 9), Ok(vec![recorded.clone()]));
        let again = [given, vec![recorded]].concat();
        check::<Refund>(&again, psp(s, true, 10), Ok(vec![]));
        assert_eq!(state_after::<Refund>(&again).status(), Some(current));
    }
}

// ---- orphan sweep ----

#[test]
fn orphan_sweep_fails_a_requested_refund() {
    check::<Refund>(
        &[requested()],
        orphan(6),
        Ok(vec![failed(RefundFailureKind::Orphaned, None, 6)]),
    );
    check::<Refund>(&is_orphaned(), orphan(7), Ok(vec![]));
    check::<Refund>(&is_failed(), orphan(7), Ok(vec![]));
}

#[test]
fn orphan_sweep_leaves_submitted_and_succeeded_refunds_alone() {
    check::<Refund>(
        &is_submitted(),
        orphan(6),
        Err(invalid(RefundStatus::Submitted, "MarkOrphaned")),
    );
    check::<Refund>(
        &is_succeeded(),
        orphan(6),
        Err(invalid(RefundStatus::Succeeded, "MarkOrphaned")),
    );
}

#[test]
fn state_records_failure_kind_and_error_message() {
    let r = state_after::<Refund>(&is_failed()).refund.unwrap();
    assert_eq!(r.status, RefundStatus::Failed);
    assert_eq!(r.failure, Some(RefundFailureKind::PspFailed));
    assert_eq!(r.error_message.as_deref(), Some("declined"));
    assert_eq!(r.psp_refund_id, Some(psp_id()));
}

#[test]
fn impossible_history_is_invalid_not_a_panic() {
    for events in [
        vec![submitted(1)],
        vec![requested(), requested()],
        vec![requested(), succeeded(1)],
        vec![requested(), submitted(1), submitted(1)],
        vec![
            requested(),
            submitted(1),
            succeeded(2),
            failed(RefundFailureKind::PspFailed, None, 3),
        ],
    ] {
        assert!(Refund::fold(&events).is_err(), "{events:#?}");
    }
}
