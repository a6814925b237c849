//! Pure ledger core.
//!
//! Architecture Invariant: this crate does no IO, reads no clock and spawns
//! nothing. It can't fail for operational reasons; every error it returns is
//! a typed statement about its input.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod codec;
pub mod decider;
pub mod envelope;
pub mod hash;
pub mod ids;
pub mod money;

pub use decider::{Decider, InvalidHistory};
pub use envelope::{Checkpoint, ExpectedVersion, Metadata, NewEvent, RecordedEvent, Source};
pub use money::{Amount, Currency, FeeBps, MoneyError};
