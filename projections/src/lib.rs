//! The projector runtime and everything projected from events: read models,
//! the double-entry journal, the audit verifier, process managers.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod clock;
pub mod generator;
pub mod journal;
pub mod managers;
pub mod query;
pub mod readmodel;
pub mod retention;
pub mod runtime;
pub mod verify;
