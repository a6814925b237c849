//! Pure ledger core.
//!
//! Architecture Invariant: this crate does no IO, reads no clock and spawns
//! nothing. It can't fail for operational reasons; every error it returns is
//! a typed statement about its input.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod codec;
pub mod decider;
pub mod envelope;
pub mod events;
pub mod hash;
pub mod ids;
pub mod money;
pub mod order;
pub mod postings;
pub mod psp;
pub mod refund;
pub mod text;
pub mod transfer;

pub use decider::{Decider, InvalidHistory};
pub use envelope::{Checkpoint, ExpectedVersion, Metadata, NewEvent, RecordedEvent, Source};
pub use events::{AnyEvent, decode_any};
pub use money::{Amount, Currency, FeeBps, MoneyError};
