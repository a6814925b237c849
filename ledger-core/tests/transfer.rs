//! Given/when/then for every seller transfer transition and rejection, and
//! the backoff schedule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use ledger_core::decider::Decider;
use ledger_core::ids::{StripeReversalId, StripeTransferId, TransferId, transfer_id};
use ledger_core::money::Amount;
use ledger_core::transfer::{
    RetryPolicy, ReversalFailureKind, SellerTransfer, TransferCommand as C, TransferEvent as E,
    TransferRejection as R, TransferStatus as S, backoff_delay,
};

fn tid() -> TransferId {
    transfer_id(order_id(), &seller(1))
}

fn tr() -> StripeTransferId {
    StripeTransferId::new("tr_1").unwrap()
}

fn trr(n: u32) -> StripeReversalId {
    StripeReversalId::new(format!("trr_{n}")).unwrap()
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_secs(1),
        max: Duration::from_secs(10),
        max_retries: 5,
    }
}

fn schedule() -> C {
    C::Schedule {
        transfer_id: tid(),
        order_id: order_id(),
        seller_id: seller(1),
        destination: acct(1),
        amount: usd_amount(2_250),
        now: t(0),
    }
}

fn scheduled() -> E {
    E::TransferScheduled {
        transfer_id: tid(),
        order_id: order_id(),
        seller_id: seller(1),
        destination: acct(1),
        amount: usd_amount(2_250),
        at: t(0),
    }
}

fn completed_for(amount: i64, due: i64, attempt: u32, minute: i64) -> E {
    E::TransferCompleted {
        transfer_id: tid(),
        order_id: order_id(),
        seller_id: seller(1),
        stripe_transfer_id: Some(tr()),
        amount: usd_amount(amount),
        amount_due: usd_amount(due),
        attempt,
        at: t(minute),
    }
}

fn completed() -> E {
    completed_for(2_250, 2_250, 1, 1)
}

fn record_succeeded(amount: i64, minute: i64) -> C {
    C::RecordSucceeded {
        stripe_transfer_id: tr(),
        amount: usd_amount(amount),
        now: t(minute),
    }
}

fn record_failed(definitive: bool, minute: i64) -> C {
    C::RecordFailed {
        error: "boom".into(),
        definitive,
        policy: policy(),
        now: t(minute),
    }
}

fn failed_event(definitive: bool, attempt: u32, retry_count: u32, minute: i64, delay_s: i64) -> E {
    E::TransferFailed {
        error: "boom".into(),
        definitive,
        attempt,
        retry_count,
        next_retry_at: secs(t(minute), delay_s),
        at: t(minute),
    }
}

fn retried(attempt: u32, by_operator: bool, minute: i64) -> E {
    E::TransferRetried {
        attempt,
        by_operator,
        at: t(minute),
    }
}

fn retry(by_operator: bool, minute: i64) -> C {
    C::Retry {
        now: t(minute),
        by_operator,
    }
}

fn reversal_requested(n: u128, amount: i64, minute: i64) -> E {
    E::TransferReversalRequested {
        refund_id: refund_id(n),
        amount: usd_amount(amount),
        at: t(minute),
    }
}

fn request_reversal(n: u128, amount: i64, minute: i64) -> C {
    C::RequestReversal {
        refund_id: refund_id(n),
        amount: usd_amount(amount),
        now: t(minute),
    }
}

fn reversed(n: u128, rev: u32, amount: i64, total: i64, minute: i64) -> E {
    E::TransferReversed {
        refund_id: refund_id(n),
        seller_id: seller(1),
        stripe_reversal_id: trr(rev),
        amount: usd_amount(amount),
        reversed_total_minor: total,
        fully_reversed: total == 2_250,
        at: t(minute),
    }
}

fn reversal_failed(failure: ReversalFailureKind, error: &str, minute: i64) -> E {
    E::TransferReversalFailed {
        refund_id: refund_id(1),
        failure,
        error: error.into(),
        at: t(minute),
    }
}

fn reversal_fail_cmd(transient: bool, at: chrono::DateTime<chrono::Utc>) -> C {
    C::RecordReversalFailed {
        transient,
        error: "503".into(),
        policy: policy(),
        now: at,
    }
}

fn invalid(from: S, command: &'static str) -> R {
    R::InvalidTransition { from, command }
}

fn is_completed() -> Vec<E> {
    vec![scheduled(), completed()]
}

fn is_failed() -> Vec<E> {
    vec![scheduled(), failed_event(false, 1, 1, 1, 1)]
}

fn is_permanently_failed() -> Vec<E> {
    vec![
        scheduled(),
        E::TransferPermanentlyFailed {
            error: "boom".into(),
            definitive: true,
            attempt: 1,
            retry_count: 5,
            at: t(1),
        },
    ]
}

fn is_reversal_pending(amount: i64) -> Vec<E> {
    vec![scheduled(), completed(), reversal_requested(1, amount, 2)]
}

fn is_cancelled() -> Vec<E> {
    vec![
        scheduled(),
        E::TransferCancelled {
            reason: "refunded".into(),
            at: t(1),
        },
    ]
}

// ---- backoff ----

#[test]
fn backoff_doubles_and_is_capped() {
    let p = policy();
    let delays: Vec<u64> = (0..6).map(|n| backoff_delay(&p, n).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
    // The seed's case: base 1s, max 10s, retry 4 → 10s, not 16s.
    assert_eq!(backoff_delay(&p, 4), Duration::from_secs(10));
}

#[test]
fn backoff_saturates_instead_of_overflowing() {
    let p = RetryPolicy {
        base: Duration::MAX,
        max: Duration::from_secs(3_600),
        max_retries: 5,
    };
    assert_eq!(backoff_delay(&p, 0), Duration::from_secs(3_600));
    assert_eq!(backoff_delay(&policy(), u32::MAX), Duration::from_secs(10));
    assert_eq!(backoff_delay(&policy(), 40), Duration::from_secs(10));
}

// ---- schedule ----

#[test]
fn schedule_creates_a_pending_transfer() {
    check::<SellerTransfer>(&[], schedule(), Ok(vec![scheduled()]));
    assert_eq!(
        state_after::<SellerTransfer>(&[scheduled()]).status(),
        Some(S::Pending)
    );
}

#[test]
fn schedule_twice_is_a_no_op() {
    check::<SellerTransfer>(&[scheduled()], schedule(), Ok(vec![]));
    check::<SellerTransfer>(&is_completed(), schedule(), Ok(vec![]));
}

#[test]
fn schedule_rejects_a_non_derived_id_and_non_positive_amounts() {
    let mut wrong = schedule();
    if let C::Schedule { transfer_id, .. } = &mut wrong {
        *transfer_id = TransferId(uuid::Uuid::from_u128(7));
    }
    check::<SellerTransfer>(
        &[],
        wrong,
        Err(R::TransferIdMismatch {
            expected: tid(),
            got: TransferId(uuid::Uuid::from_u128(7)),
        }),
    );
    for minor in [0, -1] {
        let mut cmd = schedule();
        if let C::Schedule { amount, .. } = &mut cmd {
            *amount = usd_amount(minor);
        }
        check::<SellerTransfer>(&[], cmd, Err(R::NonPositiveAmount));
    }
}

#[test]
fn commands_before_scheduling_are_rejected() {
    for cmd in [
        record_succeeded(1, 1),
        record_failed(false, 1),
        retry(true, 1),
        request_reversal(1, 1, 1),
        C::FailReversalWithoutTransferId { now: t(1) },
    ] {
        check::<SellerTransfer>(&[], cmd, Err(R::TransferNotScheduled));
    }
}

// ---- payout ----

#[test]
fn success_completes_and_carries_what_postings_need() {
    check::<SellerTransfer>(
        &[scheduled()],
        record_succeeded(2_250, 1),
        Ok(vec![completed()]),
    );
    let t = state_after::<SellerTransfer>(&is_completed())
        .transfer
        .unwrap();
    assert_eq!(t.transferred_minor, 2_250);
    assert_eq!(t.stripe_transfer_id, Some(tr()));
}

#[test]
fn success_recorded_twice_is_a_no_op_and_another_stripe_id_is_rejected() {
    check::<SellerTransfer>(&is_completed(), record_succeeded(2_250, 2), Ok(vec![]));
    check::<SellerTransfer>(
        &is_completed(),
        C::RecordSucceeded {
            stripe_transfer_id: StripeTransferId::new("tr_2").unwrap(),
            amount: usd_amount(2_250),
            now: t(2),
        },
        Err(R::StripeTransferIdMismatch {
            expected: Some(tr()),
            got: StripeTransferId::new("tr_2").unwrap(),
        }),
    );
}

#[test]
fn success_with_bad_amounts_is_rejected() {
    check::<SellerTransfer>(
        &[scheduled()],
        record_succeeded(2_251, 1),
        Err(R::AmountExceedsScheduled {
            amount_minor: 2_251,
            scheduled_minor: 2_250,
        }),
    );
    check::<SellerTransfer>(
        &[scheduled()],
        record_succeeded(0, 1),
        Err(R::NonPositiveAmount),
    );
    check::<SellerTransfer>(
        &[scheduled()],
        C::RecordSucceeded {
            stripe_transfer_id: tr(),
            amount: Amount::new(2_250, eur()),
            now: t(1),
        },
        Err(R::CurrencyMismatch {
            expected: usd(),
            got: eur(),
        }),
    );
}

#[test]
fn success_while_not_pending_is_rejected() {
    for (given, from) in [(is_failed(), S::Failed), (is_cancelled(), S::Cancelled)] {
        check::<SellerTransfer>(
            &given,
            record_succeeded(2_250, 3),
            Err(invalid(from, "RecordSucceeded")),
        );
    }
}

#[test]
fn failure_schedules_a_retry_with_backoff() {
    check::<SellerTransfer>(
        &[scheduled()],
        record_failed(false, 1),
        Ok(vec![failed_event(false, 1, 1, 1, 1)]),
    );
}

#[test]
fn backoff_grows_with_each_failure() {
    // Four failures: delays 1, 2, 4, 8 seconds after each.
    let mut given = vec![scheduled()];
    for (n, delay) in [1, 2, 4, 8].into_iter().enumerate() {
        let n = n as u32;
        let minute = i64::from(n) * 10 + 1;
        let expected = failed_event(false, 1, n + 1, minute, delay);
        check::<SellerTransfer>(
            &given,
            record_failed(false, minute),
            Ok(vec![expected.clone()]),
        );
        given.push(expected);
        given.push(retried(1, false, minute + 1));
    }
}

#[test]
fn failure_reaching_max_retries_is_permanent() {
    let mut given = vec![scheduled()];
    for n in 1..=4u32 {
        let minute = i64::from(n) * 10;
        given.push(failed_event(false, 1, n, minute, 1));
        given.push(retried(1, false, minute + 1));
    }
    check::<SellerTransfer>(
        &given,
        record_failed(true, 60),
        Ok(vec![E::TransferPermanentlyFailed {
            error: "boom".into(),
            definitive: true,
            attempt: 1,
            retry_count: 5,
            at: t(60),
        }]),
    );
}

#[test]
fn failure_recorded_twice_is_a_no_op() {
    check::<SellerTransfer>(&is_failed(), record_failed(false, 2), Ok(vec![]));
    check::<SellerTransfer>(
        &is_permanently_failed(),
        record_failed(false, 2),
        Ok(vec![]),
    );
}

#[test]
fn failure_after_completion_is_rejected() {
    check::<SellerTransfer>(
        &is_completed(),
        record_failed(false, 2),
        Err(invalid(S::Completed, "RecordFailed")),
    );
}

// ---- retry ----

#[test]
fn worker_retry_when_due_keeps_the_key_after_a_transient_error() {
    check::<SellerTransfer>(
        &is_failed(),
        retry(false, 2),
        Ok(vec![retried(1, false, 2)]),
    );
}

#[test]
fn retry_after_a_definitive_error_moves_to_a_new_key() {
    let given = vec![scheduled(), failed_event(true, 1, 1, 1, 1)];
    check::<SellerTransfer>(&given, retry(false, 2), Ok(vec![retried(2, false, 2)]));
    let after = [given, vec![retried(2, false, 2)]].concat();
    let state = state_after::<SellerTransfer>(&after);
    assert_eq!(
        state.idempotency_key(),
        Some(format!("transfer:{}:2", tid()))
    );
}

#[test]
fn worker_retry_before_it_is_due_is_rejected_but_an_operator_may() {
    let given = vec![scheduled(), failed_event(false, 1, 1, 1, 1)];
    let early = C::Retry {
        now: t(1),
        by_operator: false,
    };
    check::<SellerTransfer>(
        &given,
        early,
        Err(R::RetryNotDue {
            next_retry_at: secs(t(1), 1),
        }),
    );
    check::<SellerTransfer>(
        &given,
        C::Retry {
            now: t(1),
            by_operator: true,
        },
        Ok(vec![E::TransferRetried {
            attempt: 1,
            by_operator: true,
            at: t(1),
        }]),
    );
}

#[test]
fn operator_retry_revives_a_permanently_failed_transfer_with_a_fresh_budget() {
    check::<SellerTransfer>(
        &is_permanently_failed(),
        retry(true, 9),
        Ok(vec![retried(2, true, 9)]),
    );
    check::<SellerTransfer>(
        &is_permanently_failed(),
        retry(false, 9),
        Err(invalid(S::PermanentlyFailed, "Retry")),
    );
    let after = [is_permanently_failed(), vec![retried(2, true, 9)]].concat();
    assert_eq!(
        state_after::<SellerTransfer>(&after)
            .transfer
            .unwrap()
            .retry_count,
        0
    );
}

#[test]
fn retry_while_pending_is_a_no_op_and_after_completion_is_rejected() {
    check::<SellerTransfer>(&[scheduled()], retry(false, 1), Ok(vec![]));
    check::<SellerTransfer>(
        &is_completed(),
        retry(true, 2),
        Err(invalid(S::Completed, "Retry")),
    );
}

// ---- cancel and reduce (before the payout) ----

#[test]
fn cancel_an_unpaid_transfer() {
    for given in [vec![scheduled()], is_failed(), is_permanently_failed()] {
        check::<SellerTransfer>(
            &given,
            C::Cancel {
                reason: "refunded".into(),
                now: t(1),
            },
            Ok(vec![E::TransferCancelled {
                reason: "refunded".into(),
                at: t(1),
            }]),
        );
    }
    check::<SellerTransfer>(
        &is_cancelled(),
        C::Cancel {
            reason: "again".into(),
            now: t(2),
        },
        Ok(vec![]),
    );
    check::<SellerTransfer>(
        &is_completed(),
        C::Cancel {
            reason: "late".into(),
            now: t(2),
        },
        Err(invalid(S::Completed, "Cancel")),
    );
}

fn reduce(n: u128, by: i64, minute: i64) -> C {
    C::Reduce {
        by: usd_amount(by),
        refund_id: refund_id(n),
        now: t(minute),
    }
}

fn reduced(n: u128, by: i64, remaining: i64, minute: i64) -> E {
    E::TransferReduced {
        refund_id: refund_id(n),
        by: usd_amount(by),
        remaining: usd_amount(remaining),
        at: t(minute),
    }
}

#[test]
fn reduce_lowers_the_payout() {
    for given in [vec![scheduled()], is_failed()] {
        check::<SellerTransfer>(
            &given,
            reduce(1, 450, 2),
            Ok(vec![reduced(1, 450, 1_800, 2)]),
        );
    }
    let after = vec![scheduled(), reduced(1, 450, 1_800, 2)];
    assert_eq!(
        state_after::<SellerTransfer>(&after)
            .transfer
            .unwrap()
            .amount,
        usd_amount(1_800)
    );
}

#[test]
fn reduce_to_zero_cancels() {
    check::<SellerTransfer>(
        &[scheduled(), reduced(1, 450, 1_800, 2)],
        reduce(2, 1_800, 3),
        Ok(vec![
            reduced(2, 1_800, 0, 3),
            E::TransferCancelled {
                reason: format!("reduced to zero by refund {}", refund_id(2)),
                at: t(3),
            },
        ]),
    );
}

#[test]
fn reduce_for_the_same_refund_twice_is_a_no_op() {
    check::<SellerTransfer>(
        &[scheduled(), reduced(1, 450, 1_800, 2)],
        reduce(1, 450, 3),
        Ok(vec![]),
    );
}

#[test]
fn reduce_rejects_bad_amounts_and_paid_transfers() {
    check::<SellerTransfer>(
        &[scheduled()],
        reduce(1, 2_251, 2),
        Err(R::ReductionExceedsAmount {
            by_minor: 2_251,
            remaining_minor: 2_250,
        }),
    );
    check::<SellerTransfer>(&[scheduled()], reduce(1, 0, 2), Err(R::NonPositiveAmount));
    check::<SellerTransfer>(
        &[scheduled()],
        C::Reduce {
            by: Amount::new(5, eur()),
            refund_id: refund_id(1),
            now: t(2),
        },
        Err(R::CurrencyMismatch {
            expected: usd(),
            got: eur(),
        }),
    );
    check::<SellerTransfer>(
        &is_completed(),
        reduce(1, 5, 2),
        Err(invalid(S::Completed, "Reduce")),
    );
    check::<SellerTransfer>(
        &is_cancelled(),
        reduce(1, 5, 2),
        Err(invalid(S::Cancelled, "Reduce")),
    );
}

#[test]
fn a_payout_racing_a_reduction_records_what_actually_moved() {
    check::<SellerTransfer>(
        &[scheduled(), reduced(1, 450, 1_800, 2)],
        record_succeeded(2_250, 3),
        Ok(vec![completed_for(2_250, 1_800, 1, 3)]),
    );
}

// ---- reversal ----

#[test]
fn reversal_request_on_a_completed_or_partially_reversed_transfer() {
    check::<SellerTransfer>(
        &is_completed(),
        request_reversal(1, 450, 2),
        Ok(vec![reversal_requested(1, 450, 2)]),
    );
    let partial = [is_reversal_pending(450), vec![reversed(1, 1, 450, 450, 3)]].concat();
    assert_eq!(
        state_after::<SellerTransfer>(&partial).status(),
        Some(S::PartiallyReversed)
    );
    check::<SellerTransfer>(
        &partial,
        request_reversal(2, 1_800, 4),
        Ok(vec![reversal_requested(2, 1_800, 4)]),
    );
}

#[test]
fn reversal_request_for_the_same_refund_twice_is_a_no_op() {
    check::<SellerTransfer>(
        &is_reversal_pending(450),
        request_reversal(1, 450, 3),
        Ok(vec![]),
    );
    let done = [is_reversal_pending(450), vec![reversed(1, 1, 450, 450, 3)]].concat();
    check::<SellerTransfer>(&done, request_reversal(1, 450, 4), Ok(vec![]));
}

#[test]
fn reversal_beyond_what_was_transferred_is_rejected() {
    check::<SellerTransfer>(
        &is_completed(),
        request_reversal(1, 2_251, 2),
        Err(R::ReversalExceedsTransferred {
            requested_minor: 2_251,
            available_minor: 2_250,
        }),
    );
    let partial = [is_reversal_pending(450), vec![reversed(1, 1, 450, 450, 3)]].concat();
    check::<SellerTransfer>(
        &partial,
        request_reversal(2, 1_801, 4),
        Err(R::ReversalExceedsTransferred {
            requested_minor: 1_801,
            available_minor: 1_800,
        }),
    );
    check::<SellerTransfer>(
        &is_completed(),
        request_reversal(1, 0, 2),
        Err(R::NonPositiveAmount),
    );
}

#[test]
fn reversal_while_another_is_pending_or_before_payout_is_rejected() {
    check::<SellerTransfer>(
        &is_reversal_pending(450),
        request_reversal(2, 100, 3),
        Err(R::ReversalAlreadyPending {
            pending: refund_id(1),
        }),
    );
    for (given, from) in [
        (vec![scheduled()], S::Pending),
        (is_failed(), S::Failed),
        (is_cancelled(), S::Cancelled),
    ] {
        check::<SellerTransfer>(
            &given,
            request_reversal(1, 100, 3),
            Err(invalid(from, "RequestReversal")),
        );
    }
    let full = [
        is_reversal_pending(2_250),
        vec![reversed(1, 1, 2_250, 2_250, 3)],
    ]
    .concat();
    check::<SellerTransfer>(
        &full,
        request_reversal(2, 1, 4),
        Err(invalid(S::Reversed, "RequestReversal")),
    );
}

fn reversal_ok(rev: u32, amount: i64, minute: i64) -> C {
    C::RecordReversalSucceeded {
        stripe_reversal_id: trr(rev),
        reversed_amount: usd_amount(amount),
        now: t(minute),
    }
}

#[test]
fn reversal_success_partially_or_fully_reverses() {
    check::<SellerTransfer>(
        &is_reversal_pending(450),
        reversal_ok(1, 450, 3),
        Ok(vec![reversed(1, 1, 450, 450, 3)]),
    );
    check::<SellerTransfer>(
        &is_reversal_pending(2_250),
        reversal_ok(1, 2_250, 3),
        Ok(vec![reversed(1, 1, 2_250, 2_250, 3)]),
    );
    let full = [
        is_reversal_pending(2_250),
        vec![reversed(1, 1, 2_250, 2_250, 3)],
    ]
    .concat();
    assert_eq!(
        state_after::<SellerTransfer>(&full).status(),
        Some(S::Reversed)
    );
}

#[test]
fn reversal_success_twice_is_a_no_op_and_bad_ones_are_rejected() {
    let done = [is_reversal_pending(450), vec![reversed(1, 1, 450, 450, 3)]].concat();
    check::<SellerTransfer>(&done, reversal_ok(1, 450, 4), Ok(vec![]));
    check::<SellerTransfer>(
        &done,
        reversal_ok(2, 450, 4),
        Err(invalid(S::PartiallyReversed, "RecordReversalSucceeded")),
    );
    check::<SellerTransfer>(
        &is_reversal_pending(450),
        reversal_ok(1, 2_251, 3),
        Err(R::ReversalExceedsTransferred {
            requested_minor: 2_251,
            available_minor: 2_250,
        }),
    );
    check::<SellerTransfer>(
        &is_reversal_pending(450),
        reversal_ok(1, 0, 3),
        Err(R::NonPositiveAmount),
    );
}

#[test]
fn already_reversed_at_stripe_is_recorded_as_reversed() {
    let already = |amount: i64, total: i64, minute: i64| E::TransferAlreadyReversed {
        refund_id: refund_id(1),
        seller_id: seller(1),
        amount: usd_amount(amount),
        reversed_total_minor: total,
        fully_reversed: total == 2_250,
        at: t(minute),
    };
    let cmd = |total: i64, minute: i64| C::RecordAlreadyReversed {
        amount_reversed: usd_amount(total),
        now: t(minute),
    };
    check::<SellerTransfer>(
        &is_reversal_pending(2_250),
        cmd(2_250, 3),
        Ok(vec![already(2_250, 2_250, 3)]),
    );
    // Part was already recorded: only the rest is new.
    let partial = [
        is_reversal_pending(450),
        vec![reversed(1, 1, 450, 450, 3), reversal_requested(2, 1_800, 4)],
    ]
    .concat();
    let mut expected = already(1_800, 2_250, 5);
    if let E::TransferAlreadyReversed { refund_id: r, .. } = &mut expected {
        *r = refund_id(2);
    }
    check::<SellerTransfer>(&partial, cmd(2_250, 5), Ok(vec![expected.clone()]));
    let done = [partial.clone(), vec![expected]].concat();
    assert_eq!(
        state_after::<SellerTransfer>(&done).status(),
        Some(S::Reversed)
    );
    check::<SellerTransfer>(&done, cmd(2_250, 6), Ok(vec![]));
    check::<SellerTransfer>(
        &partial,
        cmd(100, 5),
        Err(R::ReversedAmountDecreased {
            reported_minor: 100,
            recorded_minor: 450,
        }),
    );
    check::<SellerTransfer>(
        &partial,
        cmd(2_251, 5),
        Err(R::ReversalExceedsTransferred {
            requested_minor: 2_251,
            available_minor: 2_250,
        }),
    );
    check::<SellerTransfer>(
        &is_completed(),
        cmd(2_250, 5),
        Err(invalid(S::Completed, "RecordAlreadyReversed")),
    );
}

#[test]
fn transient_reversal_failure_bumps_the_retry_count_with_backoff() {
    check::<SellerTransfer>(
        &is_reversal_pending(450),
        reversal_fail_cmd(true, t(3)),
        Ok(vec![E::TransferReversalRetryScheduled {
            refund_id: refund_id(1),
            error: "503".into(),
            retry_count: 1,
            next_retry_at: secs(t(3), 1),
            at: t(3),
        }]),
    );
}

#[test]
fn reversal_backoff_is_capped_at_max() {
    // Four transient failures recorded (retry_count 4): the next delay is
    // min(1s * 2^4, 10s) = 10s.
    let mut given = is_reversal_pending(450);
    for n in 1..=4u32 {
        given.push(E::TransferReversalRetryScheduled {
            refund_id: refund_id(1),
            error: "503".into(),
            retry_count: n,
            next_retry_at: t(i64::from(n) * 10),
            at: t(i64::from(n) * 10 - 1),
        });
    }
    let policy = RetryPolicy {
        max_retries: 10,
        ..policy()
    };
    check::<SellerTransfer>(
        &given,
        C::RecordReversalFailed {
            transient: true,
            error: "503".into(),
            policy,
            now: t(40),
        },
        Ok(vec![E::TransferReversalRetryScheduled {
            refund_id: refund_id(1),
            error: "503".into(),
            retry_count: 5,
            next_retry_at: secs(t(40), 10),
            at: t(40),
        }]),
    );
}

#[test]
fn the_same_transient_failure_reported_again_before_it_is_due_is_a_no_op() {
    let given = [
        is_reversal_pending(450),
        vec![E::TransferReversalRetryScheduled {
            refund_id: refund_id(1),
            error: "503".into(),
            retry_count: 1,
            next_retry_at: secs(t(3), 1),
            at: t(3),
        }],
    ]
    .concat();
    check::<SellerTransfer>(&given, reversal_fail_cmd(true, t(3)), Ok(vec![]));
}

#[test]
fn exhausted_or_definitive_reversal_failure_is_reversal_failed() {
    let mut given = is_reversal_pending(450);
    for n in 1..=4u32 {
        given.push(E::TransferReversalRetryScheduled {
            refund_id: refund_id(1),
            error: "503".into(),
            retry_count: n,
            next_retry_at: t(i64::from(n) * 10),
            at: t(i64::from(n) * 10 - 1),
        });
    }
    check::<SellerTransfer>(
        &given,
        reversal_fail_cmd(true, t(50)),
        Ok(vec![reversal_failed(
            ReversalFailureKind::Exhausted,
            "503",
            50,
        )]),
    );
    check::<SellerTransfer>(
        &is_reversal_pending(450),
        C::RecordReversalFailed {
            transient: false,
            error: "No such transfer: 'tr_1'".into(),
            policy: policy(),
            now: t(3),
        },
        Ok(vec![reversal_failed(
            ReversalFailureKind::Definitive,
            "No such transfer: 'tr_1'",
            3,
        )]),
    );
    let failed = [
        is_reversal_pending(450),
        vec![reversal_failed(ReversalFailureKind::Definitive, "x", 3)],
    ]
    .concat();
    assert_eq!(
        state_after::<SellerTransfer>(&failed).status(),
        Some(S::ReversalFailed)
    );
    check::<SellerTransfer>(&failed, reversal_fail_cmd(false, t(4)), Ok(vec![]));
    check::<SellerTransfer>(
        &is_completed(),
        reversal_fail_cmd(true, t(4)),
        Err(invalid(S::Completed, "RecordReversalFailed")),
    );
}

#[test]
fn reversal_without_a_stripe_transfer_id_fails_without_stripe() {
    // Imported history: a completed transfer with no Stripe id.
    let mut no_id = completed();
    if let E::TransferCompleted {
        stripe_transfer_id, ..
    } = &mut no_id
    {
        *stripe_transfer_id = None;
    }
    let given = vec![scheduled(), no_id, reversal_requested(1, 450, 2)];
    let cmd = C::FailReversalWithoutTransferId { now: t(3) };
    let failed = E::TransferReversalFailed {
        refund_id: refund_id(1),
        failure: ReversalFailureKind::MissingStripeTransferId,
        error: "transfer has no stripe_transfer_id".into(),
        at: t(3),
    };
    check::<SellerTransfer>(&given, cmd.clone(), Ok(vec![failed.clone()]));
    check::<SellerTransfer>(&[given, vec![failed]].concat(), cmd.clone(), Ok(vec![]));
    check::<SellerTransfer>(
        &is_reversal_pending(450),
        cmd.clone(),
        Err(R::StripeTransferIdPresent(tr())),
    );
    check::<SellerTransfer>(
        &is_completed(),
        cmd,
        Err(invalid(S::Completed, "FailReversalWithoutTransferId")),
    );
}

#[test]
fn next_retry_at_is_exposed_for_the_worker() {
    let given = [
        is_reversal_pending(450),
        vec![E::TransferReversalRetryScheduled {
            refund_id: refund_id(1),
            error: "503".into(),
            retry_count: 1,
            next_retry_at: t(9),
            at: t(3),
        }],
    ]
    .concat();
    let t = state_after::<SellerTransfer>(&given).transfer.unwrap();
    assert_eq!(t.status, S::ReversalPending);
    assert_eq!(t.next_retry_at, Some(common::t(9)));
    assert_eq!(t.reversal_retry_count, 1);
}

#[test]
fn impossible_history_is_invalid_not_a_panic() {
    for events in [
        vec![completed()],
        vec![scheduled(), scheduled()],
        vec![scheduled(), reversal_requested(1, 5, 1)],
        vec![scheduled(), completed(), completed()],
        vec![scheduled(), completed(), reversed(1, 1, 5, 5, 2)],
        vec![scheduled(), retried(2, true, 1)],
    ] {
        assert!(SellerTransfer::fold(&events).is_err(), "{events:#?}");
    }
}

// ---- indeterminate outcomes: read before writing again ----

fn unknown_event(attempt: u32, minute: i64) -> E {
    E::TransferOutcomeUnknown {
        attempt,
        error: "HTTP 500 [replayed]".into(),
        at: t(minute),
    }
}

fn record_unknown(minute: i64) -> C {
    C::RecordOutcomeUnknown {
        error: "HTTP 500 [replayed]".into(),
        now: t(minute),
    }
}

fn is_indeterminate() -> Vec<E> {
    vec![scheduled(), unknown_event(1, 1)]
}

#[test]
fn an_unknown_outcome_makes_the_payout_indeterminate_once() {
    check::<SellerTransfer>(
        &[scheduled()],
        record_unknown(1),
        Ok(vec![unknown_event(1, 1)]),
    );
    check::<SellerTransfer>(&is_indeterminate(), record_unknown(2), Ok(vec![]));
    // A racing worker recorded the answer: nothing to do.
    check::<SellerTransfer>(&is_completed(), record_unknown(2), Ok(vec![]));
    check::<SellerTransfer>(
        &is_cancelled(),
        record_unknown(2),
        Err(invalid(S::Cancelled, "RecordOutcomeUnknown")),
    );
    let state = SellerTransfer::fold(&is_indeterminate()).unwrap();
    let t_ = state.transfer.unwrap();
    assert_eq!(t_.status, S::Indeterminate);
    assert_eq!(t_.status_since, t(1));
}

#[test]
fn an_indeterminate_payout_is_never_retried_or_cancelled_blind() {
    check::<SellerTransfer>(
        &is_indeterminate(),
        retry(true, 2),
        Err(invalid(S::Indeterminate, "Retry")),
    );
    check::<SellerTransfer>(
        &is_indeterminate(),
        record_failed(true, 2),
        Err(invalid(S::Indeterminate, "RecordFailed")),
    );
    check::<SellerTransfer>(
        &is_indeterminate(),
        C::Cancel {
            reason: "x".into(),
            now: t(2),
        },
        Err(invalid(S::Indeterminate, "Cancel")),
    );
}

#[test]
fn found_at_the_provider_completes_with_its_id_and_amount() {
    check::<SellerTransfer>(
        &is_indeterminate(),
        record_succeeded(2_250, 3),
        Ok(vec![completed_for(2_250, 2_250, 1, 3)]),
    );
}

#[test]
fn proven_absent_moves_to_a_new_key() {
    let absent = E::TransferAttemptAbsent {
        absent_attempt: 1,
        attempt: 2,
        at: t(3),
    };
    check::<SellerTransfer>(
        &is_indeterminate(),
        C::RecordAbsent {
            attempt: 1,
            now: t(3),
        },
        Ok(vec![absent.clone()]),
    );
    let mut history = is_indeterminate();
    history.push(absent);
    let state = SellerTransfer::fold(&history).unwrap();
    assert_eq!(state.status(), Some(S::Pending));
    assert_eq!(
        state.idempotency_key().unwrap(),
        format!("transfer:{}:2", tid())
    );
    // The same proof again, or a proof for an older attempt: nothing.
    check::<SellerTransfer>(
        &history,
        C::RecordAbsent {
            attempt: 1,
            now: t(4),
        },
        Ok(vec![]),
    );
    // Absence cannot be claimed for a transfer whose call is not unknown.
    check::<SellerTransfer>(
        &[scheduled()],
        C::RecordAbsent {
            attempt: 1,
            now: t(4),
        },
        Err(invalid(S::Pending, "RecordAbsent")),
    );
}

#[test]
fn a_refund_while_indeterminate_reduces_and_absence_then_cancels() {
    check::<SellerTransfer>(
        &is_indeterminate(),
        reduce(1, 2_250, 2),
        Ok(vec![reduced(1, 2_250, 0, 2)]),
    );
    let mut history = is_indeterminate();
    history.push(reduced(1, 2_250, 0, 2));
    check::<SellerTransfer>(
        &history,
        C::RecordAbsent {
            attempt: 1,
            now: t(3),
        },
        Ok(vec![
            E::TransferAttemptAbsent {
                absent_attempt: 1,
                attempt: 2,
                at: t(3),
            },
            E::TransferCancelled {
                reason: "reduced to zero while its payout was indeterminate".into(),
                at: t(3),
            },
        ]),
    );
    // Found instead: what moved is recorded, owing nothing (the excess is
    // then reversed by the manager).
    check::<SellerTransfer>(
        &history,
        record_succeeded(2_250, 3),
        Ok(vec![completed_for(2_250, 0, 1, 3)]),
    );
}

#[test]
fn anomalies_are_recorded_once_per_kind_and_provider_object() {
    use ledger_core::transfer::TransferAnomalyKind as K;
    let cmd = |id: &str| C::RecordAnomaly {
        kind: K::DuplicateAtProvider,
        provider_id: Some(id.into()),
        detail: "second payout".into(),
        now: t(5),
    };
    let event = |id: &str| E::TransferAnomalyRecorded {
        kind: K::DuplicateAtProvider,
        provider_id: Some(id.into()),
        detail: "second payout".into(),
        at: t(5),
    };
    check::<SellerTransfer>(&is_completed(), cmd("tr_2"), Ok(vec![event("tr_2")]));
    let mut history = is_completed();
    history.push(event("tr_2"));
    check::<SellerTransfer>(&history, cmd("tr_2"), Ok(vec![]));
    check::<SellerTransfer>(&history, cmd("tr_3"), Ok(vec![event("tr_3")]));
    // The status is untouched.
    assert_eq!(
        SellerTransfer::fold(&history).unwrap().status(),
        Some(S::Completed)
    );
    assert!(K::DuplicateAtProvider.is_provider_mismatch());
    assert!(!K::UnreadableAnswer.is_provider_mismatch());
}

fn reversal_unknown(attempt: u32, minute: i64) -> E {
    E::TransferReversalOutcomeUnknown {
        refund_id: refund_id(1),
        attempt,
        error: "timed out".into(),
        at: t(minute),
    }
}

#[test]
fn a_reversal_whose_answer_was_lost_is_indeterminate_until_read() {
    check::<SellerTransfer>(
        &is_reversal_pending(1_000),
        C::RecordReversalOutcomeUnknown {
            error: "timed out".into(),
            now: t(3),
        },
        Ok(vec![reversal_unknown(1, 3)]),
    );
    let mut history = is_reversal_pending(1_000);
    history.push(reversal_unknown(1, 3));
    assert_eq!(
        SellerTransfer::fold(&history).unwrap().status(),
        Some(S::ReversalIndeterminate)
    );
    // Never failed blind.
    check::<SellerTransfer>(
        &history,
        reversal_fail_cmd(true, t(4)),
        Err(invalid(S::ReversalIndeterminate, "RecordReversalFailed")),
    );
    // Found: recorded as reversed.
    check::<SellerTransfer>(
        &history,
        C::RecordReversalSucceeded {
            stripe_reversal_id: trr(1),
            reversed_amount: usd_amount(1_000),
            now: t(4),
        },
        Ok(vec![reversed(1, 1, 1_000, 1_000, 4)]),
    );
    // Absent: back to pending under the next attempt.
    let absent = E::TransferReversalAttemptAbsent {
        refund_id: refund_id(1),
        absent_attempt: 1,
        attempt: 2,
        at: t(4),
    };
    check::<SellerTransfer>(
        &history,
        C::RecordReversalAbsent {
            attempt: 1,
            now: t(4),
        },
        Ok(vec![absent.clone()]),
    );
    history.push(absent);
    let state = SellerTransfer::fold(&history).unwrap();
    let t_ = state.transfer.unwrap();
    assert_eq!(t_.status, S::ReversalPending);
    assert_eq!(t_.pending_reversal.unwrap().attempt, 2);
}

#[test]
fn an_operator_resolves_a_recorded_anomaly_once() {
    use ledger_core::transfer::TransferAnomalyKind as K;
    let recorded = E::TransferAnomalyRecorded {
        kind: K::DuplicateAtProvider,
        provider_id: Some("tr_2".into()),
        detail: "second payout".into(),
        at: t(5),
    };
    let resolve = |id: &str| C::ResolveAnomaly {
        kind: K::DuplicateAtProvider,
        provider_id: Some(id.into()),
        note: "reversed at Stripe".into(),
        now: t(6),
    };
    let resolved = E::TransferAnomalyResolved {
        kind: K::DuplicateAtProvider,
        provider_id: Some("tr_2".into()),
        note: "reversed at Stripe".into(),
        at: t(6),
    };
    let mut history = is_completed();
    history.push(recorded);
    check::<SellerTransfer>(&history, resolve("tr_2"), Ok(vec![resolved.clone()]));
    check::<SellerTransfer>(
        &history,
        resolve("tr_9"),
        Err(R::AnomalyNotRecorded {
            kind: K::DuplicateAtProvider,
            provider_id: Some("tr_9".into()),
        }),
    );
    history.push(resolved);
    check::<SellerTransfer>(&history, resolve("tr_2"), Ok(vec![]));
    let t_ = SellerTransfer::fold(&history).unwrap().transfer.unwrap();
    assert!(!t_.has_open_anomaly(K::DuplicateAtProvider));
    // Seen again by a sweep: not recorded again.
    check::<SellerTransfer>(
        &history,
        C::RecordAnomaly {
            kind: K::DuplicateAtProvider,
            provider_id: Some("tr_2".into()),
            detail: "second payout".into(),
            now: t(7),
        },
        Ok(vec![]),
    );
}
