//! Shared fixtures and the one given/when/then helper.
#![allow(dead_code)]

use std::fmt::Debug;

use chrono::{DateTime, Duration, TimeZone, Utc};
use ledger_core::codec::{self, EventSet};
use ledger_core::decider::Decider;
use ledger_core::ids::{BuyerId, OrderId, ProductId, RefundId, SellerAccount, SellerId};
use ledger_core::money::{Amount, Currency, FeeBps};
use ledger_core::order::LineInput;
use uuid::Uuid;

/// given `given`, when `when`, then `then` — and, when `then` is `Ok`, every
/// decided event must evolve the state and survive the codec byte-exactly.
pub fn check<D: Decider>(
    given: &[D::Event],
    when: D::Command,
    then: Result<Vec<D::Event>, D::Rejection>,
) {
    let state =
        D::fold(given).unwrap_or_else(|e| panic!("given history is invalid: {e}\n{given:#?}"));
    let got = D::decide(&state, &when);
    assert_eq!(got, then, "\ngiven: {given:#?}\nwhen: {when:#?}");
    if let Ok(events) = got {
        let mut s = state;
        for e in &events {
            round_trips(e);
            s = D::evolve(s, e)
                .unwrap_or_else(|err| panic!("decided event does not evolve: {err}\n{e:#?}"));
        }
    }
}

/// State after `given` (which must be a valid history).
pub fn state_after<D: Decider>(given: &[D::Event]) -> D::State {
    D::fold(given).unwrap_or_else(|e| panic!("given history is invalid: {e}"))
}

pub fn round_trips<E: EventSet + PartialEq + Debug>(event: &E) {
    let encoded = codec::encode(event);
    let decoded: E = codec::decode(
        &encoded.event_type,
        encoded.schema_version,
        &encoded.payload,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&decoded, event);
    assert_eq!(
        codec::encode(&decoded),
        encoded,
        "re-encoding changed the bytes"
    );
}

pub fn t(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap() + Duration::minutes(minutes)
}

pub fn secs(base: DateTime<Utc>, s: i64) -> DateTime<Utc> {
    base + Duration::seconds(s)
}

pub fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

pub fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

pub fn usd_amount(minor: i64) -> Amount {
    Amount::new(minor, usd())
}

pub fn order_id() -> OrderId {
    OrderId(Uuid::from_u128(0x0a))
}

pub fn refund_id(n: u128) -> RefundId {
    RefundId(Uuid::from_u128(0x1000 + n))
}

pub fn buyer() -> BuyerId {
    BuyerId::new("buyer-1").unwrap()
}

pub fn seller(n: u32) -> SellerId {
    SellerId::new(format!("seller-{n}")).unwrap()
}

pub fn acct(n: u32) -> SellerAccount {
    SellerAccount::new(format!("acct_{n}")).unwrap()
}

pub fn product(name: &str) -> ProductId {
    ProductId::new(name).unwrap()
}

pub fn fee_bps() -> FeeBps {
    FeeBps::new(1_000).unwrap()
}

pub fn line(p: &str, seller_n: u32, unit_amount_minor: i64, quantity: i64) -> LineInput {
    LineInput {
        product_id: product(p),
        seller_id: seller(seller_n),
        seller_account: acct(seller_n),
        unit_amount_minor,
        quantity,
    }
}
