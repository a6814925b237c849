//! Double-entry bookkeeping: a pure map from one event to journal entries.
//!
//! **Guarantees:**
//! - [`postings`] reads nothing but the event (fat events carry every share,
//!   fee and seller id), so replaying a stream rebuilds the same journal.
//! - Every entry it returns is in one currency and balances: the sum of debits
//!   equals the sum of credits ([`JournalEntry::is_balanced`]).
//! - Entry ids derive from the source event id and the entry's index, so a
//!   re-projected event never books twice under a new id.
//! - No posting has a zero or negative amount; zero legs are left out.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::AnyEvent;
use crate::ids::{EventId, SellerId};
use crate::money::Currency;
use crate::order::{OrderEvent, SellerShare};
use crate::refund::{RefundEvent, RefundLine};
use crate::transfer::TransferEvent;

/// Namespace for journal entry ids. A storage contract: changing it renames
/// every entry.
pub const JOURNAL_NAMESPACE: Uuid = Uuid::from_u128(0x6c65_6467_6572_4a4f_5552_4e41_4c00_0004);

/// A ledger account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Account {
    /// Money held for us by the PSP (asset).
    PspClearing,
    /// Our fee income.
    PlatformFees,
    /// What we owe one seller.
    SellerPayable(SellerId),
}

impl Account {
    const SELLER_PREFIX: &'static str = "seller_payable:";
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::PspClearing => f.write_str("psp_clearing"),
            Account::PlatformFees => f.write_str("platform_fees"),
            Account::SellerPayable(seller) => write!(f, "{}{seller}", Account::SELLER_PREFIX),
        }
    }
}

impl From<Account> for String {
    fn from(value: Account) -> String {
        value.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an account name")]
pub struct UnknownAccount(pub String);

impl TryFrom<String> for Account {
    type Error = UnknownAccount;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "psp_clearing" => Ok(Account::PspClearing),
            "platform_fees" => Ok(Account::PlatformFees),
            other => other
                .strip_prefix(Account::SELLER_PREFIX)
                .and_then(|s| SellerId::new(s).ok())
                .map(Account::SellerPayable)
                .ok_or(UnknownAccount(value)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Debit,
    Credit,
}

/// One leg of an entry. `amount_minor > 0` for every posting [`postings`]
/// produces; the currency is the entry's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub account: Account,
    pub side: Side,
    pub amount_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// `uuid_v5(JOURNAL_NAMESPACE, source event id ‖ index)`.
    pub entry_id: Uuid,
    pub source_event_id: EventId,
    pub currency: Currency,
    pub postings: Vec<Posting>,
    pub description: String,
}

impl JournalEntry {
    /// Debits equal credits and every leg is positive. Sums in i128, so no
    /// set of i64 legs can overflow the check itself.
    pub fn is_balanced(&self) -> bool {
        let mut debits: i128 = 0;
        let mut credits: i128 = 0;
        for p in &self.postings {
            if p.amount_minor <= 0 {
                return false;
            }
            match p.side {
                Side::Debit => debits += i128::from(p.amount_minor),
                Side::Credit => credits += i128::from(p.amount_minor),
            }
        }
        !self.postings.is_empty() && debits == credits
    }
}

/// The id of the `index`-th entry booked from `event_id`.
pub fn entry_id(event_id: EventId, index: u32) -> Uuid {
    let mut name = [0u8; 20];
    name[..16].copy_from_slice(event_id.0.as_bytes());
    name[16..].copy_from_slice(&index.to_be_bytes());
    Uuid::new_v5(&JOURNAL_NAMESPACE, &name)
}

/// Collects legs, dropping zero ones.
#[derive(Default)]
struct Legs(Vec<Posting>);

impl Legs {
    fn push(&mut self, account: Account, side: Side, amount_minor: i64) {
        if amount_minor != 0 {
            self.0.push(Posting {
                account,
                side,
                amount_minor,
            });
        }
    }
}

/// Journal entries for one event, exactly per domain.md "Bookkeeping":
///
/// | event | debit | credit |
/// |---|---|---|
/// | `PaymentSucceeded` | `psp_clearing` total | each `seller_payable:{s}` share, `platform_fees` fees |
/// | `TransferCompleted` | `seller_payable:{s}` | `psp_clearing` |
/// | `RefundSucceeded` for lines L | each `seller_payable:{s}` share of L, `platform_fees` fees of L | `psp_clearing` amount |
/// | `TransferReversed` / `TransferAlreadyReversed` a | `psp_clearing` | `seller_payable:{s}` |
///
/// Every other event books nothing.
pub fn postings(event_id: EventId, event: &AnyEvent) -> Vec<JournalEntry> {
    let mut legs = Legs::default();
    let (currency, description) = match event {
        AnyEvent::Order(OrderEvent::PaymentSucceeded {
            amount_minor,
            currency,
            fee_minor,
            sellers,
            payment_id,
            ..
        }) => {
            legs.push(Account::PspClearing, Side::Debit, *amount_minor);
            for SellerShare {
                seller_id,
                seller_minor,
                ..
            } in sellers
            {
                legs.push(
                    Account::SellerPayable(seller_id.clone()),
                    Side::Credit,
                    *seller_minor,
                );
            }
            legs.push(Account::PlatformFees, Side::Credit, *fee_minor);
            (*currency, format!("payment {payment_id} captured"))
        }
        AnyEvent::Refund(RefundEvent::RefundSucceeded {
            refund_id,
            amount_minor,
            currency,
            lines,
            ..
        }) => {
            let mut fee_minor: i64 = 0;
            for (seller_id, seller_minor, fees) in by_seller(lines) {
                legs.push(Account::SellerPayable(seller_id), Side::Debit, seller_minor);
                fee_minor = fee_minor.saturating_add(fees);
            }
            legs.push(Account::PlatformFees, Side::Debit, fee_minor);
            legs.push(Account::PspClearing, Side::Credit, *amount_minor);
            (*currency, format!("refund {refund_id} succeeded"))
        }
        AnyEvent::Transfer(TransferEvent::TransferCompleted {
            transfer_id,
            seller_id,
            amount,
            ..
        }) => {
            legs.push(
                Account::SellerPayable(seller_id.clone()),
                Side::Debit,
                amount.minor,
            );
            legs.push(Account::PspClearing, Side::Credit, amount.minor);
            (amount.currency, format!("transfer {transfer_id} paid out"))
        }
        AnyEvent::Transfer(
            TransferEvent::TransferReversed {
                refund_id,
                seller_id,
                amount,
                ..
            }
            | TransferEvent::TransferAlreadyReversed {
                refund_id,
                seller_id,
                amount,
                ..
            },
        ) => {
            legs.push(Account::PspClearing, Side::Debit, amount.minor);
            legs.push(
                Account::SellerPayable(seller_id.clone()),
                Side::Credit,
                amount.minor,
            );
            (
                amount.currency,
                format!("transfer reversed for refund {refund_id}"),
            )
        }
        _ => return Vec::new(),
    };
    if legs.0.is_empty() {
        return Vec::new();
    }
    vec![JournalEntry {
        entry_id: entry_id(event_id, 0),
        source_event_id: event_id,
        currency,
        postings: legs.0,
        description,
    }]
}

/// `(seller, share, fee)` per seller, in order of first appearance.
fn by_seller(lines: &[RefundLine]) -> Vec<(SellerId, i64, i64)> {
    let mut out: Vec<(SellerId, i64, i64)> = Vec::new();
    for line in lines {
        match out.iter_mut().find(|(s, _, _)| *s == line.seller_id) {
            Some((_, share, fee)) => {
                // Lines were validated (checked sums) when the refund was
                // requested, so these cannot saturate for a decided event.
                *share = share.saturating_add(line.seller_minor);
                *fee = fee.saturating_add(line.fee_minor);
            }
            None => out.push((line.seller_id.clone(), line.seller_minor, line.fee_minor)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_round_trip() {
        for a in [
            Account::PspClearing,
            Account::PlatformFees,
            Account::SellerPayable(SellerId::new("s-1").unwrap()),
        ] {
            let text = a.to_string();
            assert_eq!(Account::try_from(text).unwrap(), a);
        }
        assert_eq!(
            Account::SellerPayable(SellerId::new("s-1").unwrap()).to_string(),
            "seller_payable:s-1"
        );
        assert!(Account::try_from("cash".to_owned()).is_err());
        assert!(Account::try_from("seller_payable:".to_owned()).is_err());
    }

    #[test]
    fn balance_check_rejects_lopsided_and_empty_entries() {
        let e = |postings| JournalEntry {
            entry_id: Uuid::nil(),
            source_event_id: EventId(Uuid::nil()),
            currency: Currency::parse("USD").unwrap(),
            postings,
            description: String::new(),
        };
        let p = |account, side, amount_minor| Posting {
            account,
            side,
            amount_minor,
        };
        assert!(
            e(vec![
                p(Account::PspClearing, Side::Debit, 5),
                p(Account::PlatformFees, Side::Credit, 5)
            ])
            .is_balanced()
        );
        assert!(
            !e(vec![
                p(Account::PspClearing, Side::Debit, 5),
                p(Account::PlatformFees, Side::Credit, 4)
            ])
            .is_balanced()
        );
        assert!(!e(vec![]).is_balanced());
        assert!(
            !e(vec![
                p(Account::PspClearing, Side::Debit, -5),
                p(Account::PlatformFees, Side::Credit, -5)
            ])
            .is_balanced()
        );
        assert_ne!(
            entry_id(EventId(Uuid::nil()), 0),
            entry_id(EventId(Uuid::nil()), 1)
        );
    }
}
