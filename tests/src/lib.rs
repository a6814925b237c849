//! End-to-end tests live in `tests/tests/`; this library only hosts the
//! shared helpers.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
