//! Properties of `ids::hyperswitch_customer_id`: every buyer id the API
//! accepts maps to a valid Hyperswitch `customer_id`, deterministically, and
//! different buyers to different customers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ledger_core::ids::{
    BuyerId, CUSTOMER_ID_HASH_HEX, HYPERSWITCH_ID_MAX, TEXT_ID_MAX, hyperswitch_customer_id,
    is_hyperswitch_id,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Buyer ids as `BuyerId::new` accepts them: ids that already fit, long
/// ASCII ids, and any printable Unicode (e-mails, accents, emoji).
fn buyer_id() -> impl Strategy<Value = BuyerId> {
    prop_oneof![
        "[A-Za-z0-9_-]{1,64}",
        "[A-Za-z0-9_-]{65,200}",
        "[a-z0-9.+@:/|]{1,120}",
        "\\PC{1,200}",
    ]
    .prop_filter_map("not a buyer id", |s| BuyerId::new(s).ok())
}

/// Two different buyer ids that share a long common prefix, so their
/// readable prefixes are identical and only the hash can tell them apart.
fn near_pair() -> impl Strategy<Value = (BuyerId, BuyerId)> {
    ("[a-z.@]{31,100}", "\\PC{0,40}", "\\PC{0,40}").prop_filter_map(
        "same or invalid",
        |(prefix, a, b)| {
            if a == b {
                return None;
            }
            let a = BuyerId::new(format!("{prefix}{a}")).ok()?;
            let b = BuyerId::new(format!("{prefix}{b}")).ok()?;
            Some((a, b))
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn output_is_always_a_valid_hyperswitch_id(buyer in buyer_id()) {
        let id = hyperswitch_customer_id(&buyer);
        prop_assert!(!id.is_empty());
        prop_assert!(id.len() <= HYPERSWITCH_ID_MAX, "{} is {} long", id, id.len());
        prop_assert!(
            id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "{id}"
        );
        prop_assert!(is_hyperswitch_id(&id));
    }

    #[test]
    fn same_buyer_same_customer(buyer in buyer_id()) {
        let again = BuyerId::new(buyer.as_str()).unwrap();
        prop_assert_eq!(hyperswitch_customer_id(&buyer), hyperswitch_customer_id(&again));
    }

    #[test]
    fn fitting_ids_are_unchanged_and_others_are_hashed(buyer in buyer_id()) {
        let id = hyperswitch_customer_id(&buyer);
        if is_hyperswitch_id(buyer.as_str()) {
            prop_assert_eq!(id, buyer.as_str());
        } else {
            // readable prefix, '-', 32 lowercase hex digits
            let (prefix, hash) = id.split_at(id.len() - CUSTOMER_ID_HASH_HEX);
            prop_assert!(prefix.ends_with('-'), "{id}");
            prop_assert!(hash.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
            let readable = &prefix[..prefix.len() - 1];
            prop_assert_eq!(
                readable.chars().count(),
                buyer.as_str().chars().count().min(HYPERSWITCH_ID_MAX - 1 - CUSTOMER_ID_HASH_HEX)
            );
        }
    }

    #[test]
    fn different_buyers_get_different_customers(a in buyer_id(), b in buyer_id()) {
        prop_assume!(a != b);
        prop_assert_ne!(hyperswitch_customer_id(&a), hyperswitch_customer_id(&b));
    }

    #[test]
    fn buyers_sharing_a_long_prefix_still_differ((a, b) in near_pair()) {
        prop_assert_ne!(hyperswitch_customer_id(&a), hyperswitch_customer_id(&b));
    }
}

#[test]
fn the_longest_accepted_buyer_id_fits() {
    let buyer = BuyerId::new("é".repeat(TEXT_ID_MAX)).unwrap();
    let id = hyperswitch_customer_id(&buyer);
    assert_eq!(id.len(), HYPERSWITCH_ID_MAX);
    assert!(is_hyperswitch_id(&id));
}
