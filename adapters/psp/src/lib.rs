//! PSP adapters: Hyperswitch (payments, refunds) and Stripe Connect (seller
//! transfers) HTTP clients, webhook signature checks and envelope parsing.
//! The fake of both APIs is its own crate, `ledger-psp-fake`.
//!
//! **Guarantees:**
//! - Wire types are private; the boundary speaks `ledger-core` domain types
//!   (`PaymentId`, `PspRefundId`, `TransferId`, `StripeTransferId`,
//!   `Amount`, `PaymentStatus`, `RefundPspStatus`).
//! - Every money-moving call is idempotent by construction: Hyperswitch by
//!   the caller's derived ids (duplicate → GET), Stripe by
//!   `Idempotency-Key: {kind}:{id}:{attempt}`. [`PspError::is_transient`]
//!   tells the caller whether to retry with the same key.
//! - Webhooks are verified over raw bytes in constant time and fail closed.
//! - Secrets are [`Secret`]s: never printed, never in an error message.
//!
//! **Architecture Invariant:** no database access and no dependency on sqlx
//! or any ledger store; callers persist what this crate returns.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod error;
pub mod gateway;
mod http;
pub mod hyperswitch;
pub mod secret;
pub mod signature;
pub mod stripe;
pub mod webhook;

pub use error::{CreateOutcome, PspError, Signals};
pub use gateway::{PaymentGateway, PayoutGateway, PayoutReader, PspStatusReader};
pub use http::{CONNECT_TIMEOUT_MAX, REQUEST_TIMEOUT_DEFAULT, RESPONSE_BODY_MAX};
pub use hyperswitch::{CreatePayment, CreateRefund, HyperswitchClient, PaymentView, RefundView};
pub use secret::Secret;
pub use signature::{
    SignatureError, sign_hyperswitch, sign_stripe, verify_hyperswitch, verify_stripe,
};
pub use stripe::{
    CreateReversal, CreateTransfer, ReversalOutcome, ReversalView, StripeClient, TransferFilter,
    TransferView,
};
pub use webhook::{
    ContentType, Envelope, EnvelopeError, EventClass, EventType, PaymentObject, RefundObject,
    WebhookObject, event_type_best_effort, parse_envelope,
};
