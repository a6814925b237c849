//! Money: integer minor units with a currency attached.
//!
//! **Guarantees:** no floats; every arithmetic step is checked; mixing
//! currencies is an error, never a silent conversion.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Basis points in one whole (100%).
pub const BPS_DENOMINATOR: i64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency {0:?} is not a three-letter upper-case ISO-4217 code")]
    InvalidCurrency(String),
    #[error("currency mismatch: {left} vs {right}")]
    CurrencyMismatch { left: Currency, right: Currency },
    #[error("amount overflows a 64-bit minor-unit total")]
    Overflow,
    #[error("fee of {0} bps is outside 0..=10000")]
    InvalidFeeBps(i64),
}

/// An ISO-4217 alphabetic code, always three ASCII upper-case letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        match code.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => {
                Ok(Currency([*a, *b, *c]))
            }
            _ => Err(MoneyError::InvalidCurrency(code.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        // Construction guarantees ASCII, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Currency::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money in minor units (cents) of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Amount {
    pub minor: i64,
    pub currency: Currency,
}

impl Amount {
    pub fn new(minor: i64, currency: Currency) -> Self {
        Amount { minor, currency }
    }

    pub fn zero(currency: Currency) -> Self {
        Amount { minor: 0, currency }
    }

    pub fn is_positive(&self) -> bool {
        self.minor > 0
    }

    fn same_currency(&self, other: &Amount) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }

    pub fn checked_add(self, other: Amount) -> Result<Amount, MoneyError> {
        self.same_currency(&other)?;
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Amount { minor, ..self })
    }

    pub fn checked_sub(self, other: Amount) -> Result<Amount, MoneyError> {
        self.same_currency(&other)?;
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Amount { minor, ..self })
    }

    pub fn checked_mul(self, factor: i64) -> Result<Amount, MoneyError> {
        let minor = self.minor.checked_mul(factor).ok_or(MoneyError::Overflow)?;
        Ok(Amount { minor, ..self })
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.minor, self.currency)
    }
}

/// Sums minor units with overflow checking.
pub fn checked_sum(values: impl IntoIterator<Item = i64>) -> Result<i64, MoneyError> {
    values.into_iter().try_fold(0i64, |acc, v| {
        acc.checked_add(v).ok_or(MoneyError::Overflow)
    })
}

/// A platform fee rate, frozen into an order when it is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct FeeBps(u16);

impl FeeBps {
    pub fn new(bps: i64) -> Result<Self, MoneyError> {
        if (0..=BPS_DENOMINATOR).contains(&bps) {
            // Range-checked above, so the cast is lossless.
            Ok(FeeBps(
                u16::try_from(bps).map_err(|_| MoneyError::InvalidFeeBps(bps))?,
            ))
        } else {
            Err(MoneyError::InvalidFeeBps(bps))
        }
    }

    pub fn get(&self) -> i64 {
        i64::from(self.0)
    }
}

impl TryFrom<i64> for FeeBps {
    type Error = MoneyError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        FeeBps::new(value)
    }
}

impl From<FeeBps> for i64 {
    fn from(value: FeeBps) -> Self {
        value.get()
    }
}

/// How one line total splits between the platform and the seller.
///
/// `fee_minor = floor(total * bps / 10_000)`. The discarded fraction is kept
/// as `rounding_remainder` (numerator over 10_000) so an auditor can see the
/// rounding that happened, and nobody ever recomputes it with a newer rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeSplit {
    pub fee_minor: i64,
    pub seller_minor: i64,
    pub rounding_remainder: i64,
}

pub fn split_fee(line_total_minor: i64, fee_bps: FeeBps) -> Result<FeeSplit, MoneyError> {
    if line_total_minor < 0 {
        return Err(MoneyError::Overflow);
    }
    // i128 cannot overflow: |i64| * 10_000 < 2^78.
    let numerator = i128::from(line_total_minor) * i128::from(fee_bps.get());
    let denominator = i128::from(BPS_DENOMINATOR);
    let fee = numerator / denominator; // floor, numerator is non-negative
    let remainder = numerator % denominator;
    let fee_minor = i64::try_from(fee).map_err(|_| MoneyError::Overflow)?;
    let rounding_remainder = i64::try_from(remainder).map_err(|_| MoneyError::Overflow)?;
    let seller_minor = line_total_minor
        .checked_sub(fee_minor)
        .ok_or(MoneyError::Overflow)?;
    Ok(FeeSplit {
        fee_minor,
        seller_minor,
        rounding_remainder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    #[test]
    fn currency_rejects_bad_codes() {
        for bad in ["", "usd", "US", "USDD", "U$D", "ÜSD"] {
            assert!(Currency::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(usd().as_str(), "USD");
    }

    #[test]
    fn arithmetic_is_checked() {
        let a = Amount::new(i64::MAX, usd());
        assert_eq!(
            a.checked_add(Amount::new(1, usd())),
            Err(MoneyError::Overflow)
        );
        assert_eq!(a.checked_mul(2), Err(MoneyError::Overflow));
        let eur = Currency::parse("EUR").unwrap();
        assert!(matches!(
            Amount::new(1, usd()).checked_add(Amount::new(1, eur)),
            Err(MoneyError::CurrencyMismatch { .. })
        ));
        assert_eq!(checked_sum([i64::MAX, 1]), Err(MoneyError::Overflow));
    }

    #[test]
    fn fee_split_floors_and_records_remainder() {
        let bps = FeeBps::new(1_250).unwrap(); // 12.5%
        let s = split_fee(999, bps).unwrap();
        // 999 * 1250 = 1_248_750 → fee 124, remainder 8_750
        assert_eq!(
            s,
            FeeSplit {
                fee_minor: 124,
                seller_minor: 875,
                rounding_remainder: 8_750
            }
        );
        let s = split_fee(i64::MAX, FeeBps::new(10_000).unwrap()).unwrap();
        assert_eq!(s.fee_minor, i64::MAX);
        assert_eq!(s.seller_minor, 0);
        assert!(FeeBps::new(10_001).is_err());
        assert!(FeeBps::new(-1).is_err());
    }
}
