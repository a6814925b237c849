//! Typed identifiers and deterministic id derivation.
//!
//! **Guarantees:** the same inputs always derive the same ids, so scheduling
//! twice, retrying a request, or replaying a webhook can never mint a second
//! object. PSP ids fit Hyperswitch's 30-character `payment_id` limit.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest text id accepted anywhere (stream ids, seller ids, product ids).
/// Long enough for any UUID-based id, short enough to index cheaply.
pub const TEXT_ID_MAX: usize = 200;

/// Hyperswitch rejects `payment_id`/`refund_id` longer than this.
pub const PSP_ID_MAX: usize = 30;

/// Namespaces for UUIDv5 derivations. Changing one changes every derived id:
/// these are a storage contract.
pub const ORDER_NAMESPACE: Uuid = Uuid::from_u128(0x6c65_6467_6572_4f52_4445_5200_0000_0001);
pub const REFUND_NAMESPACE: Uuid = Uuid::from_u128(0x6c65_6467_6572_5245_4655_4e44_0000_0002);
pub const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6c65_6467_6572_4556_454e_5400_0000_0003);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} contains whitespace or control characters")]
    BadCharacters { kind: &'static str },
    #[error("{kind} {value:?} must start with {prefix:?}")]
    BadPrefix {
        kind: &'static str,
        value: String,
        prefix: &'static str,
    },
}

fn check_text(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.chars().count() > TEXT_ID_MAX {
        return Err(IdError::TooLong {
            kind,
            max: TEXT_ID_MAX,
        });
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(IdError::BadCharacters { kind });
    }
    Ok(())
}

macro_rules! uuid_id {
    ($name:ident, $prefix:literal) => {
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
            /// The stream that holds this aggregate.
            pub fn stream_id(&self) -> StreamId {
                StreamId(format!(concat!($prefix, "-{}"), self.0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }
    };
}

uuid_id!(OrderId, "order");
uuid_id!(RefundId, "refund");
uuid_id!(TransferId, "transfer");

macro_rules! text_id {
    ($name:ident, $kind:literal) => {
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_text($kind, &value)?;
                Ok($name(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                $name::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.0)
            }
        }
    };
}

text_id!(StreamId, "stream id");
text_id!(SellerId, "seller id");
text_id!(ProductId, "product id");
text_id!(BuyerId, "buyer id");
text_id!(PaymentId, "payment id");
text_id!(PspRefundId, "hyperswitch refund id");
text_id!(StripeTransferId, "stripe transfer id");
text_id!(StripeReversalId, "stripe reversal id");

/// A seller's Stripe Connect account, always `acct_…`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SellerAccount(String);

impl SellerAccount {
    pub const PREFIX: &'static str = "acct_";

    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        check_text("seller account", &value)?;
        if !value.starts_with(Self::PREFIX) || value.len() == Self::PREFIX.len() {
            return Err(IdError::BadPrefix {
                kind: "seller account",
                value,
                prefix: Self::PREFIX,
            });
        }
        Ok(SellerAccount(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SellerAccount {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        SellerAccount::new(value)
    }
}

impl From<SellerAccount> for String {
    fn from(value: SellerAccount) -> String {
        value.0
    }
}

impl fmt::Display for SellerAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SellerAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SellerAccount({:?})", self.0)
    }
}

/// A globally unique event id. Derived from the event's cause wherever one
/// exists, so re-deciding the same cause yields the same ids and the store's
/// de-duplication (idempotency layer 3) applies.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// The `index`-th event produced by command `command_id` on `stream`.
    pub fn derive(command_id: Uuid, stream: &StreamId, index: u32) -> EventId {
        let mut name = Vec::with_capacity(16 + stream.as_str().len() + 5);
        name.extend_from_slice(command_id.as_bytes());
        name.extend_from_slice(stream.as_str().as_bytes());
        name.push(b'#');
        name.extend_from_slice(&index.to_be_bytes());
        EventId(Uuid::new_v5(&EVENT_NAMESPACE, &name))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

/// A command id derived from a textual cause: an Idempotency-Key, a webhook
/// `event_id`, a reconciler's `(payment_id, status)` observation.
pub fn command_id_from_cause(cause: &str) -> Uuid {
    Uuid::new_v5(&EVENT_NAMESPACE, cause.as_bytes())
}

/// `order_id` for a client's Idempotency-Key, so that even a lost
/// idempotency record cannot create a second order.
pub fn order_id_from_idempotency_key(key: &str) -> OrderId {
    OrderId(Uuid::new_v5(&ORDER_NAMESPACE, key.as_bytes()))
}

/// `refund_id` for a client's Idempotency-Key on a given order.
pub fn refund_id_from_idempotency_key(order: OrderId, key: &str) -> RefundId {
    let mut name = Vec::with_capacity(16 + key.len());
    name.extend_from_slice(order.0.as_bytes());
    name.extend_from_slice(key.as_bytes());
    RefundId(Uuid::new_v5(&REFUND_NAMESPACE, &name))
}

/// `transfer_id = uuid_v5(order_id, seller_id)`: scheduling twice is a no-op.
pub fn transfer_id(order: OrderId, seller: &SellerId) -> TransferId {
    TransferId(Uuid::new_v5(&order.0, seller.as_str().as_bytes()))
}

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Crockford base32 (lower-case) of a UUID's 128 bits: 26 characters.
fn base32_uuid(id: Uuid) -> String {
    let mut value = id.as_u128();
    let mut out = [b'0'; 26];
    for slot in out.iter_mut().rev() {
        // Index is masked to 0..32, so it is always in range.
        *slot = ALPHABET[(value & 0x1f) as usize];
        value >>= 5;
    }
    out.iter().map(|b| char::from(*b)).collect()
}

/// The inverse of [`base32_uuid`]: `None` unless `text` is exactly what
/// `base32_uuid` prints for some UUID (26 alphabet characters, top 2 bits
/// zero), so foreign ids never alias a ledger id.
fn uuid_from_base32(text: &str) -> Option<Uuid> {
    if text.len() != 26 {
        return None;
    }
    let mut value: u128 = 0;
    for (i, b) in text.bytes().enumerate() {
        let digit = ALPHABET.iter().position(|a| *a == b)? as u128;
        // 26 * 5 = 130 bits: the first digit may only carry the top 3 bits.
        if i == 0 && digit > 0b111 {
            return None;
        }
        value = (value << 5) | digit;
    }
    Some(Uuid::from_u128(value))
}

/// The order a Hyperswitch `payment_id` belongs to, when the ledger made it
/// with [`payment_id_for`]; `None` for any other id.
pub fn order_id_from_payment_id(payment_id: &str) -> Option<OrderId> {
    payment_id
        .strip_prefix("pay_")
        .and_then(uuid_from_base32)
        .map(OrderId)
}

/// The refund a Hyperswitch `refund_id` belongs to, when the ledger made it
/// with [`psp_refund_id_for`]; `None` for any other id.
pub fn refund_id_from_psp_refund_id(psp_refund_id: &str) -> Option<RefundId> {
    psp_refund_id
        .strip_prefix("ref_")
        .and_then(uuid_from_base32)
        .map(RefundId)
}

/// Hyperswitch `payment_id` for an order: `pay_` + 26 = 30 characters.
pub fn payment_id_for(order: OrderId) -> PaymentId {
    PaymentId(format!("pay_{}", base32_uuid(order.0)))
}

/// Hyperswitch `refund_id` for a refund: `ref_` + 26 = 30 characters.
pub fn psp_refund_id_for(refund: RefundId) -> PspRefundId {
    PspRefundId(format!("ref_{}", base32_uuid(refund.0)))
}

/// Hyperswitch's limit for merchant-chosen ids other than `payment_id` /
/// `refund_id` (`customer_id`, `profile_id`, …): at most 64 characters of
/// `[A-Za-z0-9_-]` (`crates/common_utils/src/id_type.rs`,
/// `MAX_ALLOWED_MERCHANT_REFERENCE_ID_LENGTH`).
pub const HYPERSWITCH_ID_MAX: usize = 64;

/// Hex digits of SHA-256 kept in a hashed [`hyperswitch_customer_id`]: 128
/// bits, so two different buyer ids share a suffix only by a hash collision.
pub const CUSTOMER_ID_HASH_HEX: usize = 32;

fn is_hyperswitch_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// True when `value` is a valid Hyperswitch id: 1 to [`HYPERSWITCH_ID_MAX`]
/// characters, each `[A-Za-z0-9_-]`.
pub fn is_hyperswitch_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= HYPERSWITCH_ID_MAX
        && value.chars().all(is_hyperswitch_id_char)
}

/// The Hyperswitch `customer_id` of a buyer.
///
/// **Guarantees:**
/// - The result is always a valid Hyperswitch id ([`is_hyperswitch_id`]).
/// - Deterministic: the same buyer is always the same customer.
/// - A buyer id that already is a valid Hyperswitch id is returned unchanged.
/// - Any other buyer id becomes a readable prefix (its first characters, each
///   one outside `[A-Za-z0-9_-]` replaced by `_`) plus `-` and the first
///   [`CUSTOMER_ID_HASH_HEX`] hex digits of SHA-256 of the whole buyer id, so
///   two such buyers share a customer only by a 128-bit hash collision. A
///   buyer id that fits could spell out another buyer's hashed form only by
///   copying that hash on purpose.
pub fn hyperswitch_customer_id(buyer: &BuyerId) -> String {
    use sha2::{Digest, Sha256};

    let raw = buyer.as_str();
    if is_hyperswitch_id(raw) {
        return raw.to_owned();
    }
    let prefix_max = HYPERSWITCH_ID_MAX - 1 - CUSTOMER_ID_HASH_HEX;
    let mut out: String = raw
        .chars()
        .take(prefix_max)
        .map(|c| if is_hyperswitch_id_char(c) { c } else { '_' })
        .collect();
    out.push('-');
    let digest = hex::encode(Sha256::digest(raw.as_bytes()));
    out.push_str(digest.get(..CUSTOMER_ID_HASH_HEX).unwrap_or(&digest));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_ids_keep_fitting_buyers_and_hash_the_rest() {
        let keep = BuyerId::new("buyer_42-A").unwrap();
        assert_eq!(hyperswitch_customer_id(&keep), "buyer_42-A");
        let exact = BuyerId::new("b".repeat(HYPERSWITCH_ID_MAX)).unwrap();
        assert_eq!(hyperswitch_customer_id(&exact), exact.as_str());

        let email = BuyerId::new("jane@example.com").unwrap();
        let id = hyperswitch_customer_id(&email);
        // The prefix is readable; the suffix is SHA-256("jane@example.com").
        assert_eq!(id, "jane_example_com-8c87b489ce35cf2e2f39f80e282cb2e8");
        assert!(is_hyperswitch_id(&id));

        let long = BuyerId::new("b".repeat(HYPERSWITCH_ID_MAX + 1)).unwrap();
        let id = hyperswitch_customer_id(&long);
        assert_eq!(id.len(), HYPERSWITCH_ID_MAX);
        assert!(id.starts_with(&format!("{}-", "b".repeat(31))), "{id}");

        let accented = BuyerId::new("zoë").unwrap();
        assert!(hyperswitch_customer_id(&accented).starts_with("zo_-"));
    }

    #[test]
    fn hyperswitch_id_rule_is_charset_and_length() {
        assert!(is_hyperswitch_id("pro_abc-123"));
        assert!(!is_hyperswitch_id(""));
        assert!(!is_hyperswitch_id("a.b"));
        assert!(!is_hyperswitch_id("é"));
        assert!(!is_hyperswitch_id(&"a".repeat(HYPERSWITCH_ID_MAX + 1)));
    }

    #[test]
    fn psp_ids_fit_hyperswitch_limit_and_are_deterministic() {
        let order = OrderId(Uuid::from_u128(u128::MAX));
        let p = payment_id_for(order);
        assert_eq!(p.as_str().len(), PSP_ID_MAX);
        assert_eq!(p, payment_id_for(order));
        assert_ne!(p, payment_id_for(OrderId(Uuid::from_u128(1))));
        let r = psp_refund_id_for(RefundId(Uuid::from_u128(7)));
        assert_eq!(r.as_str().len(), PSP_ID_MAX);
        assert!(r.as_str().starts_with("ref_"));
    }

    #[test]
    fn psp_ids_decode_back_to_ledger_ids_and_nothing_else() {
        for n in [0u128, 1, 7, u128::MAX, u128::MAX / 3] {
            let order = OrderId(Uuid::from_u128(n));
            assert_eq!(
                order_id_from_payment_id(payment_id_for(order).as_str()),
                Some(order)
            );
            let refund = RefundId(Uuid::from_u128(n));
            assert_eq!(
                refund_id_from_psp_refund_id(psp_refund_id_for(refund).as_str()),
                Some(refund)
            );
        }
        assert_eq!(order_id_from_payment_id("pay_6AMmb6rtlPDarBLlotAH"), None);
        assert_eq!(
            order_id_from_payment_id("ref_00000000000000000000000000"),
            None
        );
        // Top digit over 0b111 would need 131 bits.
        assert_eq!(
            order_id_from_payment_id("pay_80000000000000000000000000"),
            None
        );
        assert_eq!(
            order_id_from_payment_id("pay_0000000000000000000000000u"),
            None
        );
    }

    #[test]
    fn transfer_id_is_uuid_v5_of_order_and_seller() {
        let order = order_id_from_idempotency_key("k1");
        let seller = SellerId::new("seller-1").unwrap();
        let t = transfer_id(order, &seller);
        assert_eq!(t.0, Uuid::new_v5(&order.0, b"seller-1"));
        assert_eq!(t, transfer_id(order, &seller));
        assert_ne!(t, transfer_id(order, &SellerId::new("seller-2").unwrap()));
    }

    #[test]
    fn text_ids_reject_bad_input() {
        assert_eq!(StreamId::new(""), Err(IdError::Empty { kind: "stream id" }));
        assert!(StreamId::new("a b").is_err());
        assert!(StreamId::new("x".repeat(TEXT_ID_MAX + 1)).is_err());
        assert!(SellerAccount::new("acct_").is_err());
        assert!(SellerAccount::new("bank_1").is_err());
        assert!(SellerAccount::new("acct_1").is_ok());
        assert!(serde_json::from_str::<SellerId>("\"\"").is_err());
    }

    #[test]
    fn event_ids_depend_on_command_stream_and_index() {
        let c = Uuid::from_u128(5);
        let s = StreamId::new("order-1").unwrap();
        assert_eq!(EventId::derive(c, &s, 0), EventId::derive(c, &s, 0));
        assert_ne!(EventId::derive(c, &s, 0), EventId::derive(c, &s, 1));
        assert_ne!(
            EventId::derive(c, &s, 0),
            EventId::derive(c, &StreamId::new("order-2").unwrap(), 0)
        );
    }
}
