//! Postings per domain.md "Bookkeeping", event by event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ledger_core::events::AnyEvent;
use ledger_core::ids::{
    EventId, StripeReversalId, StripeTransferId, payment_id_for, psp_refund_id_for, transfer_id,
};
use ledger_core::order::{OrderEvent, SellerShare};
use ledger_core::postings::{Account, JournalEntry, Posting, Side, entry_id, postings};
use ledger_core::psp::PaymentStatus;
use ledger_core::refund::{RefundEvent, RefundLine};
use ledger_core::transfer::TransferEvent;
use uuid::Uuid;

fn eid() -> EventId {
    EventId(Uuid::from_u128(42))
}

fn leg(account: Account, side: Side, amount_minor: i64) -> Posting {
    Posting {
        account,
        side,
        amount_minor,
    }
}

fn payable(n: u32) -> Account {
    Account::SellerPayable(seller(n))
}

fn only_entry(event: AnyEvent) -> JournalEntry {
    let entries = postings(eid(), &event);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let entry = entries.into_iter().next().unwrap();
    assert!(entry.is_balanced(), "{entry:#?}");
    assert_eq!(entry.entry_id, entry_id(eid(), 0));
    assert_eq!(entry.source_event_id, eid());
    entry
}

fn share(n: u32, total: i64, fee: i64) -> SellerShare {
    SellerShare {
        seller_id: seller(n),
        seller_account: acct(n),
        total_minor: total,
        fee_minor: fee,
        seller_minor: total - fee,
    }
}

#[test]
fn payment_succeeded_debits_clearing_and_credits_sellers_and_fees() {
    let entry = only_entry(AnyEvent::Order(OrderEvent::PaymentSucceeded {
        order_id: order_id(),
        payment_id: payment_id_for(order_id()),
        status: PaymentStatus::Succeeded,
        amount_minor: 3_499,
        currency: usd(),
        fee_minor: 349,
        sellers: vec![share(1, 2_500, 250), share(2, 999, 99)],
        at: t(0),
    }));
    assert_eq!(entry.currency, usd());
    assert_eq!(
        entry.postings,
        vec![
            leg(Account::PspClearing, Side::Debit, 3_499),
            leg(payable(1), Side::Credit, 2_250),
            leg(payable(2), Side::Credit, 900),
            leg(Account::PlatformFees, Side::Credit, 349),
        ]
    );
}

#[test]
fn zero_fee_leaves_out_the_fee_leg() {
    let entry = only_entry(AnyEvent::Order(OrderEvent::PaymentSucceeded {
        order_id: order_id(),
        payment_id: payment_id_for(order_id()),
        status: PaymentStatus::Succeeded,
        amount_minor: 100,
        currency: usd(),
        fee_minor: 0,
        sellers: vec![share(1, 100, 0)],
        at: t(0),
    }));
    assert_eq!(
        entry.postings,
        vec![
            leg(Account::PspClearing, Side::Debit, 100),
            leg(payable(1), Side::Credit, 100)
        ]
    );
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

#[test]
fn refund_succeeded_debits_sellers_and_fees_and_credits_clearing() {
    let entry = only_entry(AnyEvent::Refund(RefundEvent::RefundSucceeded {
        refund_id: refund_id(1),
        order_id: order_id(),
        payment_id: payment_id_for(order_id()),
        psp_refund_id: psp_refund_id_for(refund_id(1)),
        amount_minor: 3_499,
        currency: usd(),
        lines: vec![
            rline("p1", 1, 2_000, 200),
            rline("p2", 2, 999, 99),
            rline("p3", 1, 500, 50),
        ],
        at: t(0),
    }));
    assert_eq!(
        entry.postings,
        vec![
            leg(payable(1), Side::Debit, 2_250),
            leg(payable(2), Side::Debit, 900),
            leg(Account::PlatformFees, Side::Debit, 349),
            leg(Account::PspClearing, Side::Credit, 3_499),
        ]
    );
}

#[test]
fn transfer_completed_moves_the_payable_out_of_clearing() {
    let entry = only_entry(AnyEvent::Transfer(TransferEvent::TransferCompleted {
        transfer_id: transfer_id(order_id(), &seller(1)),
        order_id: order_id(),
        seller_id: seller(1),
        stripe_transfer_id: Some(StripeTransferId::new("tr_1").unwrap()),
        amount: usd_amount(2_250),
        amount_due: usd_amount(2_250),
        attempt: 1,
        at: t(0),
    }));
    assert_eq!(
        entry.postings,
        vec![
            leg(payable(1), Side::Debit, 2_250),
            leg(Account::PspClearing, Side::Credit, 2_250)
        ]
    );
}

#[test]
fn transfer_reversed_moves_it_back() {
    let expected = vec![
        leg(Account::PspClearing, Side::Debit, 450),
        leg(payable(1), Side::Credit, 450),
    ];
    let entry = only_entry(AnyEvent::Transfer(TransferEvent::TransferReversed {
        refund_id: refund_id(1),
        seller_id: seller(1),
        stripe_reversal_id: StripeReversalId::new("trr_1").unwrap(),
        amount: usd_amount(450),
        reversed_total_minor: 450,
        fully_reversed: false,
        at: t(0),
    }));
    assert_eq!(entry.postings, expected);
    let entry = only_entry(AnyEvent::Transfer(TransferEvent::TransferAlreadyReversed {
        refund_id: refund_id(1),
        seller_id: seller(1),
        amount: usd_amount(450),
        reversed_total_minor: 450,
        fully_reversed: false,
        at: t(0),
    }));
    assert_eq!(entry.postings, expected);
}

#[test]
fn already_reversed_with_nothing_new_books_nothing() {
    let event = AnyEvent::Transfer(TransferEvent::TransferAlreadyReversed {
        refund_id: refund_id(1),
        seller_id: seller(1),
        amount: usd_amount(0),
        reversed_total_minor: 2_250,
        fully_reversed: true,
        at: t(0),
    });
    assert!(postings(eid(), &event).is_empty());
}

#[test]
fn events_that_move_no_money_book_nothing() {
    for event in [
        AnyEvent::Order(OrderEvent::PaymentInitiated {
            payment_id: payment_id_for(order_id()),
            at: t(0),
        }),
        AnyEvent::Order(OrderEvent::RefundCompleted {
            refund_id: refund_id(1),
            order_id: order_id(),
            amount_minor: 999,
            currency: usd(),
            lines: vec![rline("p2", 2, 999, 99)],
            fully_refunded: false,
            at: t(0),
        }),
        AnyEvent::Refund(RefundEvent::RefundSubmitted {
            psp_refund_id: psp_refund_id_for(refund_id(1)),
            at: t(0),
        }),
        AnyEvent::Transfer(TransferEvent::TransferReversalRequested {
            refund_id: refund_id(1),
            amount: usd_amount(5),
            at: t(0),
        }),
    ] {
        assert!(postings(eid(), &event).is_empty(), "{event:?}");
    }
}

#[test]
fn entry_ids_depend_only_on_the_source_event() {
    let event = AnyEvent::Transfer(TransferEvent::TransferAlreadyReversed {
        refund_id: refund_id(1),
        seller_id: seller(1),
        amount: usd_amount(1),
        reversed_total_minor: 1,
        fully_reversed: false,
        at: t(0),
    });
    assert_eq!(postings(eid(), &event), postings(eid(), &event));
    assert_ne!(
        postings(eid(), &event)[0].entry_id,
        postings(EventId(Uuid::from_u128(43)), &event)[0].entry_id
    );
}
